"""Zero sizes behave as in torch.nn: batch 0 for layers and cells, hidden size 0 and input
size 0 for cells (torch.nn's layers refuse those at construction, and so do fastrnn's),
sequence length 0 an error for layers as there. Forward: shapes, dtypes, values; backward:
the gradients of the input, the states and every parameter (zeros where torch.nn's are),
each compared with torch.nn's own, computed in the test."""
import pytest
import torch

import fastrnn
from rnn_cases import assert_close, flat, make_pair

F64 = torch.float64
LAYER_KINDS = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU", "PEEPHOLE"]
CELL_KINDS = ["LSTMCell", "GRUCell", "RNNCell-tanh", "RNNCell-relu", "PeepholeLSTMCell"]


def _layer_pair(kind, I, H, backend, **kw):
    """torch.nn's layer and fastrnn's with the same weights (the peephole LSTM with zero
    peepholes is nn.LSTM)."""
    if kind == "PEEPHOLE":
        ref = torch.nn.LSTM(I, H, dtype=F64, **kw)
        return ref, fastrnn.PeepholeLSTM.from_torch(ref, backend=backend)
    return make_pair(kind, I, H, backend=backend, **kw)


def _cell_pair(kind, I, H, backend, bias=True):
    name, _, nl = kind.partition("-")
    extra = {"nonlinearity": nl} if nl else {}
    if name == "PeepholeLSTMCell":
        ref = torch.nn.LSTMCell(I, H, bias=bias, dtype=F64)
        return ref, fastrnn.PeepholeLSTMCell.from_torch(ref, backend=backend)
    ref = getattr(torch.nn, name)(I, H, bias=bias, dtype=F64, **extra)
    fast = getattr(fastrnn, name)(I, H, bias=bias, dtype=F64, backend=backend, **extra)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return ref, fast


def _states(two, shape, gen):
    h = torch.randn(shape, dtype=F64, generator=gen).requires_grad_()
    if two:
        return (h, torch.randn(shape, dtype=F64, generator=gen).requires_grad_())
    return h


def _run(module, x, hx, gen_seed):
    """Outputs and the gradients of x, hx and every torch.nn-named parameter for random
    cotangents (the same for both modules)."""
    x = x.detach().clone().requires_grad_()
    if hx is not None:
        hx = (tuple(h.detach().clone().requires_grad_() for h in hx) if isinstance(hx, tuple)
              else hx.detach().clone().requires_grad_())
    out = module(x) if hx is None else module(x, hx)
    outs = flat(out)
    gen = torch.Generator().manual_seed(gen_seed)
    cots = [torch.randn(o.shape, dtype=o.dtype, generator=gen) for o in outs]
    params = [p for n, p in module.named_parameters() if not n.startswith("weight_ch")]
    leaves = [x] + flat(hx if hx is not None else ()) + params
    grads = torch.autograd.grad(outs, leaves, cots, allow_unused=True)
    return outs, grads


def _assert_same(fast_run, ref_run):
    (outs_f, grads_f), (outs_r, grads_r) = fast_run, ref_run
    assert len(outs_f) == len(outs_r)
    for a, b in zip(outs_f, outs_r):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert_close(a, b, F64, "output")
    assert len(grads_f) == len(grads_r)
    for a, b in zip(grads_f, grads_r):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.shape == b.shape and a.dtype == b.dtype
            assert_close(a, b, F64, "gradient")


# ----------------------------------------------------------------------------- layers

LAYER_CASES = [
    dict(),
    dict(batch_first=True),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, dropout=0.5),
    dict(bias=False),
    dict(proj_size=2),
]


LAYER_PARAMS = [(kind, cfg) for kind in LAYER_KINDS for cfg in LAYER_CASES
                if "proj_size" not in cfg or kind in ("LSTM", "PEEPHOLE")]


@pytest.mark.parametrize("kind,cfg", LAYER_PARAMS, ids=[
    f"{kind}-" + ("-".join(f"{k}{v}" for k, v in cfg.items()) or "default")
    for kind, cfg in LAYER_PARAMS])
@pytest.mark.parametrize("with_hx", [False, True])
def test_layer_batch_zero(cpu_backend, kind, cfg, with_hx):
    I, H, T = 3, 4, 5
    ref, fast = _layer_pair(kind, I, H, cpu_backend, **cfg)
    x = torch.randn((0, T, I) if cfg.get("batch_first") else (T, 0, I), dtype=F64)
    hx = None
    if with_hx:
        D = 2 if cfg.get("bidirectional") else 1
        L = cfg.get("num_layers", 1) * D
        two = kind in ("LSTM", "PEEPHOLE")
        gen = torch.Generator().manual_seed(1)
        hx = _states(two, (L, 0, cfg.get("proj_size") or H), gen)
        if two:
            hx = (hx[0], torch.randn(L, 0, H, dtype=F64, generator=gen))
    _assert_same(_run(fast, x, hx, 2), _run(ref, x, hx, 2))


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_layer_batch_zero_backward_reaches_parameters(kind):
    """``fastrnn.LSTM(3, 4)(torch.zeros(5, 0, 3))[0].sum().backward()``: every parameter
    gets a zero gradient, as from torch.nn."""
    ref, fast = _layer_pair(kind, 3, 4, None)
    for module in (ref, fast):
        module(torch.zeros(5, 0, 3, dtype=F64))[0].sum().backward()
    for (n, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
        assert a.grad is not None and torch.equal(a.grad, b.grad), n
    for n, p in fast.named_parameters():
        if n.startswith("weight_ch"):
            assert torch.equal(p.grad, torch.zeros_like(p)), n


@pytest.mark.parametrize("kind", LAYER_KINDS)
@pytest.mark.parametrize("shape,batch_first", [
    ((0, 2, 3), False), ((2, 0, 3), True), ((0, 0, 3), False), ((0, 3), False),
    ((0, 3), True)])
def test_layer_sequence_length_zero_raises_as_torch(kind, shape, batch_first):
    ref, fast = _layer_pair(kind, 3, 4, None, batch_first=batch_first)
    x = torch.randn(shape, dtype=F64)
    with pytest.raises(Exception) as expected:
        ref(x)
    with pytest.raises(type(expected.value)) as got:
        fast(x)
    assert str(got.value) == str(expected.value)


# ----------------------------------------------------------------------------- cells

# (N, I, H), N None: unbatched
CELL_SIZES = [(0, 3, 4), (3, 0, 4), (3, 3, 0), (0, 0, 4), (0, 3, 0), (3, 0, 0), (0, 0, 0),
              (None, 0, 4), (None, 3, 0), (None, 0, 0)]


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("sizes", CELL_SIZES, ids=lambda s: "N{}-I{}-H{}".format(*s))
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_zero_sizes(cpu_backend, kind, sizes, with_hx, bias):
    N, I, H = sizes
    ref, fast = _cell_pair(kind, I, H, cpu_backend, bias)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((I,) if N is None else (N, I), dtype=F64, generator=gen)
    hx = None
    if with_hx:
        hx = _states(kind.startswith(("LSTM", "Peephole")), (H,) if N is None else (N, H), gen)
    _assert_same(_run(fast, x, hx, 3), _run(ref, x, hx, 3))


def test_gru_cell_hidden_zero_from_the_issue():
    out = fastrnn.GRUCell(10, 0)(torch.randn(3, 10), torch.randn(3, 0))
    assert out.shape == (3, 0) and out.dtype == torch.float32
