"""Batched gradients and vmap: ``torch.autograd.grad(is_grads_batched=True)``,
``autograd.functional.jacobian/hessian(vectorize=True)``, gradcheck's batched-gradient
check, and ``torch.func.vmap`` over modules (per-sample inputs, per-sample gradients,
ensembles stacked with ``torch.func.stack_module_state``), for every layer and cell, each
against torch.nn with the same parameters (computed here; where torch.nn cannot vmap, its
per-sample loop). The peephole modules are checked with zero peepholes against
torch.nn.LSTM(Cell), and with random ones against their own per-sample results."""
import copy

import pytest
import torch
from torch.func import functional_call, grad, stack_module_state, vmap
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from fastrnn import backends, fastpath, ops

F64 = torch.float64
BACKEND = backends.resolve("auto", "cpu")  # the kernels fastrnn's CPU modules run
T, N, I, H, B = 3, 2, 2, 3, 4

# name: (torch.nn class, fastrnn class, keyword arguments); "Peephole*": fastrnn's peephole
# module built from torch.nn's with zero peepholes
LAYERS = {
    "LSTM": (torch.nn.LSTM, fastrnn.LSTM, {}),
    "LSTM-proj": (torch.nn.LSTM, fastrnn.LSTM, {"proj_size": 2}),
    "PeepholeLSTM": (torch.nn.LSTM, fastrnn.PeepholeLSTM, {}),
    "GRU": (torch.nn.GRU, fastrnn.GRU, {}),
    "RNN-tanh": (torch.nn.RNN, fastrnn.RNN, {}),
    "RNN-relu": (torch.nn.RNN, fastrnn.RNN, {"nonlinearity": "relu"}),
    "LSTM-2-layer-bidirectional": (torch.nn.LSTM, fastrnn.LSTM,
                                   {"num_layers": 2, "bidirectional": True}),
    "GRU-2-layer-bidirectional-batch-first": (
        torch.nn.GRU, fastrnn.GRU, {"num_layers": 2, "bidirectional": True, "batch_first": True}),
}
CELLS = {
    "LSTMCell": (torch.nn.LSTMCell, fastrnn.LSTMCell, {}),
    "PeepholeLSTMCell": (torch.nn.LSTMCell, fastrnn.PeepholeLSTMCell, {}),
    "GRUCell": (torch.nn.GRUCell, fastrnn.GRUCell, {}),
    "RNNCell-tanh": (torch.nn.RNNCell, fastrnn.RNNCell, {}),
    "RNNCell-relu": (torch.nn.RNNCell, fastrnn.RNNCell, {"nonlinearity": "relu"}),
}
KINDS = {**LAYERS, **CELLS}
PACKED = ["LSTM", "LSTM-proj", "GRU", "RNN-tanh", "LSTM-2-layer-bidirectional"]


def _pair(kind, seed=0):
    """(torch.nn module, fastrnn module) with the same parameters, float64."""
    tcls, fcls, kw = KINDS[kind]
    torch.manual_seed(seed)
    ref = tcls(I, H, dtype=F64, **kw)
    if fcls in (fastrnn.PeepholeLSTM, fastrnn.PeepholeLSTMCell):
        return ref, fcls.from_torch(ref)
    fast = fcls(I, H, dtype=F64, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _is_cell(kind):
    return kind in CELLS


def _two_states(kind):
    return "LSTM" in kind


def _inputs(kind, seed=1, requires_grad=True):
    """(x, states): states the tuple of initial state tensors."""
    gen = torch.Generator().manual_seed(seed)
    _, _, kw = KINDS[kind]

    def rnd(*shape):
        return torch.randn(*shape, dtype=F64, generator=gen).requires_grad_(requires_grad)

    if _is_cell(kind):
        x = rnd(N, I)
        states = (rnd(N, H),) + ((rnd(N, H),) if _two_states(kind) else ())
        return x, states
    D = 2 if kw.get("bidirectional") else 1
    L = kw.get("num_layers", 1) * D
    x = rnd(N, T, I) if kw.get("batch_first") else rnd(T, N, I)
    R = kw.get("proj_size") or H
    states = (rnd(L, N, R),) + ((rnd(L, N, H),) if _two_states(kind) else ())
    return x, states


def _flat(out):
    """A module's outputs as a flat tuple of tensors (a packed output: its data)."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, PackedSequence):
        return (out.data,)
    return tuple(t for o in out for t in _flat(o))


def _call(mod, x, states, packed=False, params=None):
    """``mod(x, hx)`` (with ``params``: through functional_call), flat outputs."""
    hx = states if len(states) == 2 else states[0]
    if packed:
        x = pack_padded_sequence(x, torch.tensor([T, T - 1]), enforce_sorted=False)
    if params is None:
        return _flat(mod(x, hx))
    return _flat(functional_call(mod, params, (x, hx)))


def _shared_params(ref, fast):
    """The fastrnn module's parameters with torch.nn's names, in torch.nn's order."""
    fp = dict(fast.named_parameters())
    names = [n for n, _ in ref.named_parameters()]
    return [p for _, p in ref.named_parameters()], [fp[n] for n in names]


@pytest.fixture
def fast_steps(monkeypatch):
    """Counts the fused cell steps of the fast path (``fastpath.cell``)."""
    count = {"n": 0}
    real = fastpath.cell

    def counting(*args):
        count["n"] += 1
        return real(*args)

    monkeypatch.setattr(fastpath, "cell", counting)
    return count


@pytest.fixture
def folded(monkeypatch):
    """Counts the kernel calls over a folded batch (``ops._folded``)."""
    count = {"n": 0}
    real = ops._folded

    def counting(*args):
        count["n"] += 1
        return real(*args)

    monkeypatch.setattr(ops, "_folded", counting)
    return count


# ----------------------------------------------------------------------------- autograd

@pytest.mark.parametrize("kind", list(KINDS))
def test_is_grads_batched_matches_torch_nn(kind, folded, fast_steps):
    """B gradient vectors at once: every input's, state's and parameter's gradient. Layers
    run their backward kernels once for all B; cells run the fast path's step, whose
    backward replays it in torch ops."""
    ref, fast = _pair(kind)
    got, want = [], []
    for mod, out in ((ref, want), (fast, got)):
        x, states = _inputs(kind)
        outs = _call(mod, x, states)
        gen = torch.Generator().manual_seed(2)
        vs = [torch.randn(B, *o.shape, dtype=F64, generator=gen) for o in outs]
        params = _shared_params(ref, fast)[mod is fast]
        out.extend(torch.autograd.grad(outs, [x, *states, *params], vs, is_grads_batched=True))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape[0] == B
        torch.testing.assert_close(g, w)
    if _is_cell(kind):
        # the fast path runs the compiled CPU kernels; without them cells take the op path
        assert fast_steps["n"] == (1 if BACKEND == "cpu" else 0)
    else:
        assert folded["n"] > 0


@pytest.mark.parametrize("kind", PACKED)
def test_is_grads_batched_packed_matches_torch_nn(kind, folded):
    ref, fast = _pair(kind)
    got, want = [], []
    for mod, out in ((ref, want), (fast, got)):
        x, states = _inputs(kind)
        outs = _call(mod, x, states, packed=True)
        gen = torch.Generator().manual_seed(3)
        vs = [torch.randn(B, *o.shape, dtype=F64, generator=gen) for o in outs]
        params = _shared_params(ref, fast)[mod is fast]
        out.extend(torch.autograd.grad(outs, [x, *states, *params], vs, is_grads_batched=True))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert folded["n"] > 0


@pytest.mark.parametrize("kind", ["PeepholeLSTM", "PeepholeLSTMCell"])
def test_is_grads_batched_with_peepholes_matches_one_at_a_time(kind):
    """Random peepholes (no torch.nn counterpart): the batched gradients are the B
    single ones."""
    _, fast = _pair(kind)
    with torch.no_grad():
        for name, p in fast.named_parameters():
            if name.startswith("weight_ch"):
                p.uniform_(-0.5, 0.5)
    x, states = _inputs(kind)
    wrt = [x, *states, *fast.parameters()]
    outs = _call(fast, x, states)
    gen = torch.Generator().manual_seed(4)
    vs = [torch.randn(B, *o.shape, dtype=F64, generator=gen) for o in outs]
    got = torch.autograd.grad(outs, wrt, vs, is_grads_batched=True, retain_graph=True)
    for b in range(B):
        one = torch.autograd.grad(outs, wrt, [v[b] for v in vs], retain_graph=True)
        for g, w in zip(got, one):
            torch.testing.assert_close(g[b], w)


def _first_output(mod, states):
    return lambda x: _call(mod, x, states)[0]


@pytest.mark.parametrize("kind", list(KINDS))
def test_jacobian_vectorize_matches_torch_nn(kind):
    ref, fast = _pair(kind)
    x, states = _inputs(kind, requires_grad=False)
    want = torch.autograd.functional.jacobian(_first_output(ref, states), x, vectorize=True)
    got = torch.autograd.functional.jacobian(_first_output(fast, states), x, vectorize=True)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN-tanh", "LSTMCell", "GRUCell"])
def test_hessian_vectorize_matches_torch_nn(kind):
    ref, fast = _pair(kind)
    x, states = _inputs(kind, requires_grad=False)

    def total(mod):
        return lambda x: sum((o * o).sum() for o in _call(mod, x, states))

    want = torch.autograd.functional.hessian(total(ref), x, vectorize=True)
    got = torch.autograd.functional.hessian(total(fast), x, vectorize=True)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kind,packed", [(k, False) for k in KINDS] + [(k, True) for k in PACKED])
def test_gradcheck_with_batched_grad(kind, packed):
    """Every input, state and parameter; the outputs equal torch.nn's."""
    ref, fast = _pair(kind)
    x, states = _inputs(kind)
    names = [n for n, _ in fast.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in fast.parameters())
    k = len(states)

    def f(x, *rest):
        return _call(fast, x, rest[:k], packed, dict(zip(names, rest[k:])))

    assert torch.autograd.gradcheck(f, (x, *states, *params), check_batched_grad=True)
    with torch.no_grad():
        for g, w in zip(_call(fast, x, states, packed), _call(ref, x, states, packed)):
            torch.testing.assert_close(g, w)


# ----------------------------------------------------------------------------- torch.func

def _per_sample_inputs(kind, seed=5):
    """B samples of (x, states), stacked on a new leading dimension."""
    samples = [_inputs(kind, seed + b, requires_grad=False) for b in range(B)]
    xs = torch.stack([s[0] for s in samples])
    states = tuple(torch.stack(list(s)) for s in zip(*[s[1] for s in samples]))
    return xs, states


@pytest.mark.parametrize("kind", list(KINDS))
def test_vmap_over_functional_call_matches_torch_nn_per_sample(kind, folded):
    """vmap over per-sample inputs and states, shared parameters (torch.nn's layers and
    LSTMCell have no vmap rule: their per-sample loop is the expectation). Inference
    with shared weights runs the kernels once over the folded batch."""
    ref, fast = _pair(kind)
    params = {k: v.detach() for k, v in fast.named_parameters()}
    xs, states = _per_sample_inputs(kind)

    def one(x, *states):
        return _call(fast, x, states, params=params)

    got = vmap(one)(xs, *states)
    with torch.no_grad():
        per_sample = [_call(ref, xs[b], tuple(s[b] for s in states)) for b in range(B)]
    for g, w in zip(got, zip(*per_sample)):
        torch.testing.assert_close(g, torch.stack(w))
    assert folded["n"] > 0


@pytest.mark.parametrize("kind", list(KINDS))
def test_vmap_grad_per_sample_gradients_match_torch_nn(kind):
    """Per-sample parameter gradients, vmap(grad(loss)) over the samples."""
    ref, fast = _pair(kind)
    xs, states = _per_sample_inputs(kind)
    names = [n for n, _ in ref.named_parameters()]
    params = {n: p.detach() for n, p in fast.named_parameters()}

    def loss(params, x, *states):
        return sum(o.sin().sum() for o in _call(fast, x, states, params=params))

    got = vmap(grad(loss), in_dims=(None, 0) + (0,) * len(states))(params, xs, *states)
    for b in range(B):
        outs = _call(ref, xs[b], tuple(s[b] for s in states))
        want = torch.autograd.grad(sum(o.sin().sum() for o in outs), list(ref.parameters()))
        for n, w in zip(names, want):
            torch.testing.assert_close(got[n][b], w)


@pytest.mark.parametrize("shared_input", [True, False])
@pytest.mark.parametrize("kind", list(KINDS))
def test_vmap_over_an_ensemble_matches_torch_nn(kind, shared_input):
    """Models stacked with stack_module_state, vmapped over their parameters (and over one
    input each, or one input for all)."""
    pairs = [_pair(kind, seed) for seed in range(3)]
    params, buffers = stack_module_state([f for _, f in pairs])
    base = copy.deepcopy(pairs[0][1])
    if shared_input:
        x, states = _inputs(kind, requires_grad=False)
        in_dims = (0, 0, None) + (None,) * len(states)
        args = (x, *states)
    else:
        xs, states = _per_sample_inputs(kind)
        xs, states = xs[:3], tuple(s[:3] for s in states)
        in_dims = (0, 0, 0) + (0,) * len(states)
        args = (xs, *states)

    def one(params, buffers, x, *states):
        return _call(base, x, states, params=(params, buffers))

    got = vmap(one, in_dims=in_dims)(params, buffers, *args)
    with torch.no_grad():
        want = []
        for m, (ref, _) in enumerate(pairs):
            x = args[0] if shared_input else args[0][m]
            st = tuple(s if shared_input else s[m] for s in args[1:])
            want.append(_call(ref, x, st))
    for g, w in zip(got, zip(*want)):
        torch.testing.assert_close(g, torch.stack(w))


def test_vmap_over_direct_op_calls_folds_into_the_batch(folded):
    """The op itself under vmap (weights shared): one kernel call over the folded batch,
    the same numbers as one call per sample; with batched weights, its torch ops."""
    gen = torch.Generator().manual_seed(0)
    xg = torch.randn(B, T, N, 4 * H, dtype=F64, generator=gen)
    h0 = torch.randn(N, H, dtype=F64, generator=gen)
    c0 = torch.randn(B, N, H, dtype=F64, generator=gen)
    w_hh = torch.randn(4 * H, H, dtype=F64, generator=gen)
    lengths = torch.tensor([T, T - 1])

    def op(xg, h0, c0, w_hh):
        return torch.ops.fastrnn.lstm_forward(xg, h0, c0, w_hh, None, lengths, False, False,
                                              BACKEND)[:2]

    y, cn = vmap(op, in_dims=(0, None, 0, None))(xg, h0, c0, w_hh)
    assert folded["n"] == 1
    for b in range(B):
        yb, cb = op(xg[b], h0, c0[b], w_hh)
        torch.testing.assert_close(y[b], yb)
        torch.testing.assert_close(cn[b], cb)
    ws = torch.randn(B, 4 * H, H, dtype=F64, generator=gen)
    y, cn = vmap(op, in_dims=(0, None, 0, 0))(xg, h0, c0, ws)
    assert folded["n"] == 1
    for b in range(B):
        yb, cb = op(xg[b], h0, c0[b], ws[b])
        torch.testing.assert_close(y[b], yb)
        torch.testing.assert_close(cn[b], cb)


@pytest.mark.parametrize("kind", list(KINDS))
def test_vmapped_forward_under_autograd_matches_torch_nn(kind):
    """vmap over the forward with autograd outside it (the parameters' gradient summed over
    the samples), and torch.func.vmap over torch.autograd.grad (functorch's batched
    gradients reaching the backward)."""
    ref, fast = _pair(kind)
    xs, states = _per_sample_inputs(kind)
    vmapped = vmap(lambda x, *states: _call(fast, x, states)[0])(xs, *states)
    got = torch.autograd.grad(vmapped.sin().sum(), list(fast.parameters()))
    loss = sum(_call(ref, xs[b], tuple(s[b] for s in states))[0].sin().sum() for b in range(B))
    want = torch.autograd.grad(loss, list(ref.parameters()))
    names = [n for n, _ in ref.named_parameters()]
    got = dict(zip([n for n, _ in fast.named_parameters()], got))
    for n, w in zip(names, want):
        torch.testing.assert_close(got[n], w)

    x, states = _inputs(kind)
    res = []
    for mod in (ref, fast):
        y = _call(mod, x, states)[0]
        vs = torch.randn(B, *y.shape, dtype=F64, generator=torch.Generator().manual_seed(6))
        wrt = [x, *states, *_shared_params(ref, fast)[mod is fast]]
        res.append(vmap(lambda v: torch.autograd.grad(y, wrt, v, retain_graph=True))(vs))
    for g, w in zip(res[1], res[0]):
        torch.testing.assert_close(g, w)
