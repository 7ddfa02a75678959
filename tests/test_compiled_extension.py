"""The compiled CPU kernels (fastrnn._C): they are what runs by default, every
instruction-set build agrees with torch.nn, and thread counts do not change results.

In CI (FASTRNN_REQUIRE_EXTENSION=1) a missing extension is a failure, not a skip: the
suite must prove the fused kernels ran, not a fallback."""
import os

import pytest
import torch

import fastrnn
from fastrnn import backends

REQUIRED = os.environ.get("FASTRNN_REQUIRE_EXTENSION", "") not in ("", "0")
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
