"""The compiled CPU kernels (fastrnn._C): they are what runs by default, every
instruction-set build agrees with torch.nn, and thread counts do not change results.

In CI (FASTRNN_REQUIRE_EXTENSION=1) a missing extension is a failure, not a skip: the
suite must prove the fused kernels ran, not a fallback."""

import pytest
import torch

import fastrnn
from fastrnn import _env, backends

REQUIRED = _env.flag("FASTRNN_REQUIRE_EXTENSION")
AVAILABLE = backends.availability()["cpu"] is None

if not AVAILABLE and not REQUIRED:
    pytest.skip(f"compiled CPU backend unavailable: {backends.availability()['cpu']}",
                allow_module_level=True)


def test_extension_is_available():
    assert AVAILABLE, backends.availability()["cpu"]


def test_auto_runs_the_compiled_kernels():
    from fastrnn.backends import cpu
    assert cpu.isa() in cpu.supported_isas()
    for cls in (fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN):
        m = cls(3, 4)
        m(torch.randn(2, 1, 3))
        assert m.last_backend == "cpu"


@pytest.fixture
def restore_isa():
    from fastrnn.backends import cpu
    old = cpu.isa()
    yield cpu
    cpu.set_isa(old)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_every_isa_build_matches_torch(mode, restore_isa):
    cpu = restore_isa
    torch.manual_seed(0)
    kw = dict(proj_size=3) if mode == "LSTM" else {}
    ref = getattr(torch.nn, mode)(5, 19, num_layers=2, bidirectional=True, **kw).double()
    x = torch.randn(6, 3, 5, dtype=torch.float64, requires_grad=True)
    want = ref(x)[0]
    want_grads = torch.autograd.grad(want.sum(), [x, *ref.parameters()])
    assert cpu.supported_isas()[-1] == "generic"
    for isa in cpu.supported_isas():
        cpu.set_isa(isa)
        assert cpu.isa() == isa
        fast = getattr(fastrnn, mode)(5, 19, num_layers=2, bidirectional=True, backend="cpu",
                                      **kw).double()
        fast.load_state_dict(ref.state_dict())
        got = fast(x)[0]
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10, msg=isa)
        grads = torch.autograd.grad(got.sum(), [x, *fast.parameters()])
        for g, w in zip(grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10, msg=isa)


def test_set_isa_rejects_unknown(restore_isa):
    with pytest.raises(ValueError, match="isa must be"):
        restore_isa.set_isa("sse9")


@pytest.mark.parametrize("batch", [11, 40])  # threads split the units / the batch rows
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_count_does_not_change_results(threads, batch):
    torch.manual_seed(1)
    m = fastrnn.GRU(7, 33, backend="cpu").double()
    x = torch.randn(9, batch, 7, dtype=torch.float64)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = m(x)[0]
        torch.set_num_threads(threads)
        got = m(x)[0]
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["LSTM", "LSTM_PROJ", "GRU", "RNN"])
@pytest.mark.parametrize("threads", [2, 3, 5])  # 5: more threads than a small machine's cores
@pytest.mark.parametrize("reverse", [False, True])
def test_phase_barrier_across_thread_counts(mode, threads, reverse):
    """At batch 1 the threads split the weight panels and meet at the phase barrier every
    step (twice with a projection), forward and backward. Each output is computed by one
    thread in a fixed order, so any thread count gives the 1-thread result bit for bit; a
    barrier that let a thread read a stale state would not. (The kernels are called
    directly: a module's projection GEMM may round differently with other thread counts.)"""
    from fastrnn.backends import cpu as B
    torch.manual_seed(2)
    T, N, H, R = 30, 1, 37, 19
    f64 = dict(dtype=torch.float64)
    h0, c0 = torch.randn(N, H, **f64), torch.randn(N, H, **f64)
    lengths = None
    if mode.startswith("LSTM"):
        w_hr = torch.randn(R, H, **f64) * 0.3 if mode == "LSTM_PROJ" else None
        Rr = R if w_hr is not None else H
        h0 = torch.randn(N, Rr, **f64)
        xg, w_hh = torch.randn(T, N, 4 * H, **f64), torch.randn(4 * H, Rr, **f64) * 0.3
        dy = torch.randn(T, N, Rr, **f64)

        def run():
            y, cn, gates, cs = B.lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, reverse, True)
            return (y, cn) + tuple(B.lstm_backward(dy, torch.zeros_like(c0), h0, c0, w_hh, w_hr, lengths,
                                                   reverse, y, gates, cs))
    elif mode == "GRU":
        xg, w_hh = torch.randn(T, N, 3 * H, **f64), torch.randn(3 * H, H, **f64) * 0.3
        b_hh, dy = torch.randn(3 * H, **f64), torch.randn(T, N, H, **f64)

        def run():
            y, saved = B.gru_forward(xg, h0, w_hh, b_hh, lengths, reverse, True)
            return (y,) + tuple(B.gru_backward(dy, h0, w_hh, lengths, reverse, y, saved))
    else:
        xg, w_hh = torch.randn(T, N, H, **f64), torch.randn(H, H, **f64) * 0.3
        dy = torch.randn(T, N, H, **f64)

        def run():
            y = B.rnn_forward(xg, h0, w_hh, lengths, reverse, False)
            return (y,) + tuple(B.rnn_backward(dy, h0, w_hh, lengths, reverse, False, y))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = [t.clone() for t in run() if t is not None]
        torch.set_num_threads(threads)
        got = [t.clone() for t in run() if t is not None]
    finally:
        torch.set_num_threads(old)
    assert len(got) == len(want) >= 3
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_backend_rejects_missing_required_tensors():
    """The kernels take raw pointers: None for a required tensor is a TypeError naming it
    (it was a null pointer and a segmentation fault)."""
    from fastrnn.backends import cpu as B
    T, N, H = 3, 2, 4
    xg, h0, c0 = torch.randn(T, N, 4 * H), torch.randn(N, H), torch.randn(N, H)
    w_hh = torch.randn(4 * H, H)
    y, cn, gates, cs = B.lstm_forward(xg, h0, c0, w_hh, None, None, False, True)
    with pytest.raises(TypeError, match="lstm_backward: dcn is required"):
        B.lstm_backward(torch.randn(T, N, H), None, h0, c0, w_hh, None, None, False, y, gates,
                        cs)
    with pytest.raises(TypeError, match="gru_forward: b_hh is required"):
        B.gru_forward(torch.randn(T, N, 3 * H), h0, torch.randn(3 * H, H), None, None, False,
                      False)
    with pytest.raises(TypeError, match="rnn_backward: y is required"):
        B.rnn_backward(torch.randn(T, N, H), h0, torch.randn(H, H), None, False, False, None)


def test_cuda_kernel_runner_rejects_missing_required_tensors():
    """The same for the CUDA kernels' runner, on the host emulator of their code."""
    from fastrnn.backends import cuda as C
    emu = C.emulator()
    if emu is None:
        pytest.skip("fastrnn._cuda_emu not built")
    T, N, H = 3, 2, 4
    xg, h0, c0 = torch.randn(T, N, 4 * H), torch.randn(N, H), torch.randn(N, H)
    w_hh = torch.randn(4 * H, H)
    y, cn, gates, cs = emu.lstm_forward(xg, h0, c0, w_hh, None, None, False, True)
    with pytest.raises(TypeError, match="lstm_backward: dcn is required"):
        emu.lstm_backward(torch.randn(T, N, H), None, h0, c0, w_hh, None, None, False, y,
                          gates, cs)
    with pytest.raises(TypeError, match="gru_backward: saved is required"):
        emu.gru_backward(torch.randn(T, N, H), h0, torch.randn(3 * H, H), None, False,
                         torch.randn(T, N, H), None)
