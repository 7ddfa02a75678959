"""The torch.library ops: opcheck on every op, gradcheck through them, and every CPU
backend against the reference backend on the raw backend contract (lengths, reverse,
projection, frozen steps)."""
import pytest
import torch
from torch.library import opcheck

import fastrnn
import fastrnn.ops  # noqa: F401
from fastrnn import backends
from rnn_cases import TOL, assert_close

T, N, H, R = 4, 3, 4, 3
LENGTHS = torch.tensor([4, 1, 3])  # unsorted, one full, one of length 1


def _rand(*shape, dtype, grad=False, gen):
    return torch.randn(*shape, dtype=dtype, generator=gen).requires_grad_(grad)


def lstm_args(dtype, proj, lengths, reverse, training=True, grad=False, backend="reference"):
    gen = torch.Generator().manual_seed(0)
    RR = R if proj else H
    return (_rand(T, N, 4 * H, dtype=dtype, grad=grad, gen=gen),
            _rand(N, RR, dtype=dtype, grad=grad, gen=gen),
            _rand(N, H, dtype=dtype, grad=grad, gen=gen),
            _rand(4 * H, RR, dtype=dtype, grad=grad, gen=gen) * 0.5,
            (_rand(RR, H, dtype=dtype, grad=grad, gen=gen) * 0.5) if proj else None,
            lengths, reverse, training, backend)


def gru_args(dtype, lengths, reverse, training=True, grad=False, backend="reference"):
    gen = torch.Generator().manual_seed(1)
    return (_rand(T, N, 3 * H, dtype=dtype, grad=grad, gen=gen),
            _rand(N, H, dtype=dtype, grad=grad, gen=gen),
            _rand(3 * H, H, dtype=dtype, grad=grad, gen=gen) * 0.5,
            _rand(3 * H, dtype=dtype, grad=grad, gen=gen),
            lengths, reverse, training, backend)


def rnn_args(dtype, lengths, reverse, relu, grad=False, backend="reference"):
    gen = torch.Generator().manual_seed(2)
    return (_rand(T, N, H, dtype=dtype, grad=grad, gen=gen),
            _rand(N, H, dtype=dtype, grad=grad, gen=gen),
            _rand(H, H, dtype=dtype, grad=grad, gen=gen) * 0.5,
            lengths, reverse, relu, backend)


def _leafify(args):
    """Make the tensor arguments leaves (``* 0.5`` above made some non-leaves)."""
    return tuple(a.detach().requires_grad_(a.requires_grad)
                 if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)


DTYPES = [torch.float32, torch.float64]
VARIANTS = [(None, False), (LENGTHS, False), (LENGTHS, True), (None, True)]
VARIANT_IDS = ["plain", "lengths", "lengths-rev", "rev"]
# opcheck is slow (it traces with dynamic shapes): the two extreme variants suffice
OPCHECK_VARIANTS = [(None, False), (LENGTHS, True)]
OPCHECK_IDS = ["plain", "lengths-rev"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lengths,reverse", OPCHECK_VARIANTS, ids=OPCHECK_IDS)
@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
def test_opcheck_lstm(dtype, lengths, reverse, proj):
    # training=False (nothing saved) only once: backward then recomputes
    for training in ((True, False) if dtype == torch.float64 and not proj else (True,)):
        args = _leafify(lstm_args(dtype, proj, lengths, reverse, training, grad=True))
        opcheck(torch.ops.fastrnn.lstm_forward.default, args)
    y, cn, gates, cs = torch.ops.fastrnn.lstm_forward(*args[:7], True, "reference")
    xg, h0, c0, w_hh, w_hr = (a.detach() if a is not None else None for a in args[:5])
    bargs = (torch.randn_like(y), torch.randn_like(cn), h0, c0, w_hh, w_hr, lengths,
             reverse, y.detach(), gates, cs, "reference")
    opcheck(torch.ops.fastrnn.lstm_backward.default, bargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lengths,reverse", OPCHECK_VARIANTS, ids=OPCHECK_IDS)
def test_opcheck_gru(dtype, lengths, reverse):
    for training in ((True, False) if dtype == torch.float64 else (True,)):
        args = _leafify(gru_args(dtype, lengths, reverse, training, grad=True))
        opcheck(torch.ops.fastrnn.gru_forward.default, args)
    y, saved = torch.ops.fastrnn.gru_forward(*args[:6], True, "reference")
    bargs = (torch.randn_like(y), args[1].detach(), args[2].detach(), lengths, reverse,
             y.detach(), saved, "reference")
    opcheck(torch.ops.fastrnn.gru_backward.default, bargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lengths,reverse", OPCHECK_VARIANTS, ids=OPCHECK_IDS)
@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
def test_opcheck_rnn(dtype, lengths, reverse, relu):
    args = _leafify(rnn_args(dtype, lengths, reverse, relu, grad=True))
    opcheck(torch.ops.fastrnn.rnn_forward.default, args)
    y = torch.ops.fastrnn.rnn_forward(*args)
    bargs = (torch.randn_like(y), args[1].detach(), args[2].detach(), lengths, reverse, relu,
             y.detach(), "reference")
    opcheck(torch.ops.fastrnn.rnn_backward.default, bargs)


# ----------------------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("lengths,reverse", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
def test_gradcheck_lstm_op(cpu_backend, lengths, reverse, proj):
    args = _leafify(lstm_args(torch.float64, proj, lengths, reverse, grad=True,
                              backend=cpu_backend))
    tensors = [a for a in args[:5] if a is not None]

    def f(*ts):
        xg, h0, c0, w_hh = ts[:4]
        w_hr = ts[4] if proj else None
        y, cn, _, _ = torch.ops.fastrnn.lstm_forward(xg, h0, c0, w_hh, w_hr, *args[5:])
        return y, cn

    assert torch.autograd.gradcheck(f, tensors, fast_mode=True)


@pytest.mark.parametrize("lengths,reverse", VARIANTS, ids=VARIANT_IDS)
def test_gradcheck_gru_op(cpu_backend, lengths, reverse):
    args = _leafify(gru_args(torch.float64, lengths, reverse, grad=True, backend=cpu_backend))
    f = lambda *ts: torch.ops.fastrnn.gru_forward(*ts, *args[4:])[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, args[:4], fast_mode=True)


@pytest.mark.parametrize("lengths,reverse", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
def test_gradcheck_rnn_op(cpu_backend, lengths, reverse, relu):
    args = _leafify(rnn_args(torch.float64, lengths, reverse, relu, grad=True,
                             backend=cpu_backend))
    f = lambda *ts: torch.ops.fastrnn.rnn_forward(*ts, *args[3:])  # noqa: E731
    assert torch.autograd.gradcheck(f, args[:3], fast_mode=True)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_gradcheck_module_packed_bidirectional(cpu_backend, kind):
    torch.manual_seed(0)
    cls = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN": fastrnn.RNN}[kind]
    m = cls(2, 2, num_layers=2, bidirectional=True, dtype=torch.float64, backend=cpu_backend)
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 4, 1])
    names = [n for n, _ in m.named_parameters()]
    ps_leaf = tuple(p.detach().clone().requires_grad_() for p in m.parameters())

    def g(x, *ps):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        o, h = torch.func.functional_call(m, dict(zip(names, ps)), (packed,))
        return (o.data,) + (tuple(h) if isinstance(h, tuple) else (h,))

    assert torch.autograd.gradcheck(g, (x,) + ps_leaf, fast_mode=True)


# ----------------------------------------------------------------------------- backends

def _backend_pair(name):
    return backends.get("reference"), backends.get(name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lengths,reverse", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
def test_backend_contract_lstm(cpu_backend, dtype, lengths, reverse, proj):
    ref, be = _backend_pair(cpu_backend)
    xg, h0, c0, w_hh, w_hr = (a.detach() if a is not None else None
                              for a in lstm_args(dtype, proj, lengths, reverse)[:5])
    out_r = ref.lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, reverse, True)
    out_b = be.lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, reverse, True)
    for name, a, b in zip(("y", "cn", "gates", "cs"), out_b, out_r):
        if lengths is not None and name == "gates":  # unspecified on frozen steps
            valid = (torch.arange(T)[:, None] < lengths[None, :]).unsqueeze(-1)
            a, b = a * valid, b * valid
        assert_close(a, b, dtype, f"lstm_forward {name}")
    y, cn, gates, cs = out_r
    gen = torch.Generator().manual_seed(5)
    dy = torch.randn(y.shape, dtype=dtype, generator=gen)
    dcn = torch.randn(cn.shape, dtype=dtype, generator=gen)
    grads_r = ref.lstm_backward(dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates, cs)
    grads_b = be.lstm_backward(dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates, cs)
    for name, a, b in zip(("dgates", "dh0", "dc0", "dr"), grads_b, grads_r):
        if name == "dr" and w_hr is None:
            continue
        if name == "dr" and lengths is not None:
            valid = (torch.arange(T)[:, None] < lengths[None, :]).unsqueeze(-1)
            a, b = a * valid, b * valid
        assert_close(a, b, dtype, f"lstm_backward {name}")
    if lengths is not None:  # frozen steps write zeros to the gate gradients
        invalid = torch.arange(T)[:, None] >= lengths[None, :]
        assert bool((grads_b[0][invalid] == 0).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lengths,reverse", VARIANTS, ids=VARIANT_IDS)
def test_backend_contract_gru(cpu_backend, dtype, lengths, reverse):
    ref, be = _backend_pair(cpu_backend)
    xg, h0, w_hh, b_hh = (a.detach() for a in gru_args(dtype, lengths, reverse)[:4])
    y_r, saved_r = ref.gru_forward(xg, h0, w_hh, b_hh, lengths, reverse, True)
    y_b, saved_b = be.gru_forward(xg, h0, w_hh, b_hh, lengths, reverse, True)
    assert_close(y_b, y_r, dtype, "gru_forward y")
    valid = 1 if lengths is None else (torch.arange(T)[:, None] < lengths[None, :]).unsqueeze(-1)
    assert_close(saved_b * valid, saved_r * valid, dtype, "gru_forward saved")
    dy = torch.randn(y_r.shape, dtype=dtype, generator=torch.Generator().manual_seed(6))
    g_r = ref.gru_backward(dy, h0, w_hh, lengths, reverse, y_r, saved_r)
    g_b = be.gru_backward(dy, h0, w_hh, lengths, reverse, y_r, saved_r)
    for name, a, b in zip(("dxg", "dh0"), g_b, g_r):
        assert_close(a, b, dtype, f"gru_backward {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lengths,reverse", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
def test_backend_contract_rnn(cpu_backend, dtype, lengths, reverse, relu):
    ref, be = _backend_pair(cpu_backend)
    xg, h0, w_hh = (a.detach() for a in rnn_args(dtype, lengths, reverse, relu)[:3])
    y_r = ref.rnn_forward(xg, h0, w_hh, lengths, reverse, relu)
    y_b = be.rnn_forward(xg, h0, w_hh, lengths, reverse, relu)
    assert_close(y_b, y_r, dtype, "rnn_forward y")
    dy = torch.randn(y_r.shape, dtype=dtype, generator=torch.Generator().manual_seed(7))
    g_r = ref.rnn_backward(dy, h0, w_hh, lengths, reverse, relu, y_r)
    g_b = be.rnn_backward(dy, h0, w_hh, lengths, reverse, relu, y_r)
    for name, a, b in zip(("dxg", "dh0"), g_b, g_r):
        assert_close(a, b, dtype, f"rnn_backward {name}")


def test_reference_frozen_steps_semantics():
    """Contract: y repeats the carried state on invalid steps; final state y[T-1]/y[0]."""
    ref = backends.get("reference")
    xg, h0, c0, w_hh, _ = (a.detach() if a is not None else None
                           for a in lstm_args(torch.float64, False, LENGTHS, False)[:5])
    y, cn, _, cs = ref.lstm_forward(xg, h0, c0, w_hh, None, LENGTHS, False, True)
    # sequence 1 has length 1: every later step repeats step 0
    assert torch.equal(y[1:, 1], y[0, 1].expand(T - 1, -1))
    assert torch.equal(cn[1], cs[0, 1])
    yr, _, _, _ = ref.lstm_forward(xg, h0, c0, w_hh, None, LENGTHS, True, True)
    # reverse: steps >= length are skipped with the state frozen at h0
    assert torch.equal(yr[1:, 1], h0[1].expand(T - 1, -1))
    # and the reversed short sequence equals running it alone from step 0
    alone, _, _, _ = ref.lstm_forward(xg[:1, 1:2], h0[1:2], c0[1:2], w_hh, None, None, True,
                                      True)
    torch.testing.assert_close(yr[0, 1], alone[0, 0], **TOL[torch.float64])


def test_no_grad_saves_nothing():
    args = lstm_args(torch.float32, False, None, False, training=False)
    _, _, gates, cs = torch.ops.fastrnn.lstm_forward(*args)
    assert gates.numel() == 0 and cs.numel() == 0
    m = fastrnn.LSTM(3, 4, backend="reference")
    with torch.no_grad():
        out, _ = m(torch.randn(2, 1, 3))
    assert out.grad_fn is None
    with torch.inference_mode():
        out, _ = m(torch.randn(2, 1, 3))
    assert out.shape == (2, 1, 4)


def test_backend_resolution_outside_op():
    """The op receives the resolved name; 'auto' never reaches a backend lookup."""
    m = fastrnn.GRU(2, 3, backend="auto")
    m(torch.randn(2, 1, 2))
    assert m.last_backend in backends.available_backends()
    assert m.last_backend == backends.resolve("auto", "cpu")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_opcheck_each_backend(cpu_backend, cell):
    """Every backend's outputs must satisfy the op schema (fresh, contiguous tensors of the
    fake's shapes/dtypes); one variant per backend keeps this quick."""
    if cpu_backend == "reference":
        pytest.skip("the reference backend is covered by the test_opcheck_* grid above")
    lengths, reverse = LENGTHS, True
    if cell == "lstm":
        args = _leafify(lstm_args(torch.float32, True, lengths, reverse, grad=True,
                                  backend=cpu_backend))
        opcheck(torch.ops.fastrnn.lstm_forward.default, args)
        y, cn, gates, cs = torch.ops.fastrnn.lstm_forward(*args)
        d = [a.detach() for a in args[1:5]]
        opcheck(torch.ops.fastrnn.lstm_backward.default,
                (torch.randn_like(y), torch.randn_like(cn), *d, lengths, reverse,
                 y.detach(), gates, cs, cpu_backend))
    elif cell == "gru":
        args = _leafify(gru_args(torch.float32, lengths, reverse, grad=True,
                                 backend=cpu_backend))
        opcheck(torch.ops.fastrnn.gru_forward.default, args)
        y, saved = torch.ops.fastrnn.gru_forward(*args)
        opcheck(torch.ops.fastrnn.gru_backward.default,
                (torch.randn_like(y), args[1].detach(), args[2].detach(), lengths, reverse,
                 y.detach(), saved, cpu_backend))
    else:
        args = _leafify(rnn_args(torch.float32, lengths, reverse, True, grad=True,
                                 backend=cpu_backend))
        opcheck(torch.ops.fastrnn.rnn_forward.default, args)
        y = torch.ops.fastrnn.rnn_forward(*args)
        opcheck(torch.ops.fastrnn.rnn_backward.default,
                (torch.randn_like(y), args[1].detach(), args[2].detach(), lengths, reverse,
                 True, y.detach(), cpu_backend))
