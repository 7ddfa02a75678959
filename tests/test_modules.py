"""Module-level behaviour: drop-in API (constructor, parameters, repr, state_dict both ways),
PackedSequence, unbatched input, cells, dropout, NaN/inf, copying/pickling, torch.compile."""
import copy
import inspect
import io
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from fastrnn import backends
from rnn_cases import KINDS, assert_close, flat, make_pair, module_classes

F64 = torch.float64


# ----------------------------------------------------------------------------- API

@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_constructor_signature_matches_torch(kind):
    fcls = getattr(fastrnn, kind)
    tcls = getattr(torch.nn, kind)
    # (**kwargs: other keywords reach torch.nn's errors, e.g. GRU's ValueError for proj_size;
    # fastrnn's own options are keyword-only)
    ours = [p for p in inspect.signature(fcls.__init__).parameters.values()
            if p.name not in ("self", "backend") and p.kind not in (
                inspect.Parameter.VAR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    names = [p.name for p in ours]
    expected = ["input_size", "hidden_size", "num_layers"]
    if kind == "RNN":
        expected.append("nonlinearity")
    expected += ["bias", "batch_first", "dropout", "bidirectional"]
    if kind == "LSTM":
        expected.append("proj_size")
    expected += ["device", "dtype"]
    assert names == expected
    # defaults are torch.nn's (read them off an instance built with defaults)
    a, b = fcls(3, 4), tcls(3, 4)
    for attr in ("num_layers", "bias", "batch_first", "dropout", "bidirectional", "proj_size",
                 "mode", "input_size", "hidden_size"):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert inspect.signature(fcls.__init__).parameters["backend"].kind == \
        inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cfg", [dict(), dict(num_layers=2, bidirectional=True, bias=False),
                                 dict(num_layers=3, batch_first=True, dropout=0.5)])
def test_parameters_repr_state_dict(kind, cfg):
    tcls, fcls, extra = module_classes(kind)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tcls(4, 6, **extra, **cfg)
        torch.manual_seed(0)
        fast = fcls(4, 6, **extra, **cfg)
    # same names, shapes, order, and the same default init from the same seed
    assert [(n, p.shape) for n, p in fast.named_parameters()] == \
        [(n, p.shape) for n, p in ref.named_parameters()]
    for (n, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n
    assert repr(fast) == repr(ref)
    assert fast._flat_weights_names == ref._flat_weights_names
    # state_dict both ways, strict
    ref2 = tcls(4, 6, **extra, **cfg)
    ref2.load_state_dict(fast.state_dict(), strict=True)
    fast2 = fcls(4, 6, **extra, **cfg)
    fast2.load_state_dict(ref.state_dict(), strict=True)
    for (n, a), (_, b) in zip(fast2.named_parameters(), ref2.named_parameters()):
        assert torch.equal(a, b), n
    fast.flatten_parameters()  # no-op, must exist


def test_default_init_range():
    m = fastrnn.LSTM(3, 16, num_layers=2, proj_size=4)
    bound = 1 / 16 ** 0.5
    for p in m.parameters():
        assert float(p.detach().abs().max()) <= bound


def test_proj_size_and_nonlinearity_errors_match_torch():
    with pytest.raises(ValueError, match="proj_size has to be smaller"):
        fastrnn.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        fastrnn.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="backend must be"):
        fastrnn.GRU(3, 4, backend="fortran")
    assert "backend='reference'" in repr(fastrnn.GRU(3, 4, backend="reference"))


def test_rnn_positional_nonlinearity():
    m = fastrnn.RNN(3, 4, 2, "relu")
    assert m.nonlinearity == "relu" and m.mode == "RNN_RELU" and m.num_layers == 2


# ----------------------------------------------------------------------------- backends

def test_last_backend_and_global_default(cpu_backend):
    m = fastrnn.LSTM(2, 3)
    x = torch.randn(3, 2, 2)
    try:
        fastrnn.set_backend(cpu_backend)
        m(x)
        assert m.last_backend == cpu_backend
        assert fastrnn.functional.last_backend() == cpu_backend
    finally:
        fastrnn.set_backend(None)
    m(x)
    assert m.last_backend == backends.resolve("auto", "cpu")


def test_unavailable_backend_error():
    if "cuda" in backends.available_backends() and torch.cuda.is_available():
        pytest.skip("cuda available")
    m = fastrnn.LSTM(2, 3, backend="cuda")
    with pytest.raises(backends.BackendUnavailableError, match="cuda"):
        m(torch.randn(3, 1, 2))


# ----------------------------------------------------------------------------- packed

def _grads(outputs, leaves, gen):
    outs = flat(outputs)
    cots = [torch.randn(o.shape, dtype=o.dtype, generator=gen) for o in outs]
    return torch.autograd.grad(outs, leaves, cots, retain_graph=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("with_hx", [False, True])
def test_packed_sequence(cpu_backend, kind, enforce_sorted, with_hx):
    torch.manual_seed(0)
    bidir, layers = True, 2
    ref, fast = make_pair(kind, 3, 4, backend=cpu_backend, num_layers=layers,
                          bidirectional=bidir, **({"proj_size": 2} if kind == "LSTM" and
                                                  with_hx else {}))
    lengths = [5, 3, 3, 1] if enforce_sorted else [3, 5, 1, 4]
    x = torch.randn(5, 4, 3, dtype=F64, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=enforce_sorted)
    hx = None
    leaves = [x]
    if with_hx:
        R = ref.proj_size or 4
        h0 = torch.randn(layers * 2, 4, R, dtype=F64, requires_grad=True)
        if kind == "LSTM":
            c0 = torch.randn(layers * 2, 4, 4, dtype=F64, requires_grad=True)
            hx, leaves = (h0, c0), [x, h0, c0]
        else:
            hx, leaves = h0, [x, h0]
    out_r, h_r = ref(packed, hx)
    out_f, h_f = fast(packed, hx)
    assert fast.last_backend == cpu_backend
    assert isinstance(out_f, torch.nn.utils.rnn.PackedSequence)
    assert torch.equal(out_f.batch_sizes, out_r.batch_sizes)
    for a, b in ((out_f.sorted_indices, out_r.sorted_indices),
                 (out_f.unsorted_indices, out_r.unsorted_indices)):
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip(flat((out_f, h_f)), flat((out_r, h_r))):
        assert_close(a, b, F64, "packed outputs")
    # padded view agrees too
    pad_f, len_f = pad_packed_sequence(out_f)
    pad_r, len_r = pad_packed_sequence(out_r)
    assert torch.equal(len_f, len_r)
    assert_close(pad_f, pad_r, F64, "padded")
    leaves_r = leaves + list(ref.parameters())
    leaves_f = leaves + list(fast.parameters())
    g_r = _grads((out_r, h_r), leaves_r, torch.Generator().manual_seed(3))
    g_f = _grads((out_f, h_f), leaves_f, torch.Generator().manual_seed(3))
    for a, b in zip(g_f, g_r):
        assert_close(a, b, F64, "packed grads")


# ----------------------------------------------------------------------------- unbatched

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_unbatched(cpu_backend, kind, batch_first, with_hx):
    torch.manual_seed(0)
    ref, fast = make_pair(kind, 3, 4, backend=cpu_backend, num_layers=2, bidirectional=True,
                          batch_first=batch_first)
    x = torch.randn(6, 3, dtype=F64, requires_grad=True)
    hx = None
    if with_hx:
        h = torch.randn(4, 4, dtype=F64)
        hx = (h, torch.randn(4, 4, dtype=F64)) if kind == "LSTM" else h
    out_r, h_r = ref(x, hx)
    out_f, h_f = fast(x, hx)
    assert out_f.shape == out_r.shape == (6, 8)
    for a, b in zip(flat((out_f, h_f)), flat((out_r, h_r))):
        assert a.shape == b.shape
        assert_close(a, b, F64, "unbatched")
    g_r = _grads((out_r, h_r), [x], torch.Generator().manual_seed(1))
    g_f = _grads((out_f, h_f), [x], torch.Generator().manual_seed(1))
    assert_close(g_f[0], g_r[0], F64, "unbatched grad")


# ----------------------------------------------------------------------------- cells

@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell-tanh", "RNNCell-relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [False, True])
def test_cells(cpu_backend, kind, bias, batched, with_hx):
    name, _, nl = kind.partition("-")
    extra = {"nonlinearity": nl} if nl else {}
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(3, 5, bias=bias, dtype=F64, **extra)
    fast = getattr(fastrnn, name)(3, 5, bias=bias, dtype=F64, backend=cpu_backend, **extra)
    fast.load_state_dict(ref.state_dict(), strict=True)
    assert repr(fast).replace(", backend='%s'" % cpu_backend, "") == repr(ref)
    shape = (4, 3) if batched else (3,)
    hshape = (4, 5) if batched else (5,)
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    leaves = [x]
    hx = None
    if with_hx:
        h = torch.randn(hshape, dtype=F64, requires_grad=True)
        if name == "LSTMCell":
            c = torch.randn(hshape, dtype=F64, requires_grad=True)
            hx, leaves = (h, c), [x, h, c]
        else:
            hx, leaves = h, [x, h]
    out_r = ref(x, hx)
    out_f = fast(x, hx)
    assert fast.last_backend == cpu_backend
    for a, b in zip(flat(out_f), flat(out_r)):
        assert a.shape == b.shape
        assert_close(a, b, F64, "cell output")
    g_r = _grads(out_r, leaves + list(ref.parameters()), torch.Generator().manual_seed(2))
    g_f = _grads(out_f, leaves + list(fast.parameters()), torch.Generator().manual_seed(2))
    for a, b in zip(g_f, g_r):
        assert_close(a, b, F64, "cell grads")


# ----------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_dropout_only_between_layers_in_training(kind):
    torch.manual_seed(0)
    ref, fast = make_pair(kind, 3, 4, backend="reference", num_layers=3, dropout=0.5)
    x = torch.randn(5, 2, 3, dtype=F64)
    ref.eval()
    fast.eval()
    for a, b in zip(flat(fast(x)), flat(ref(x))):
        assert_close(a, b, F64, "eval with dropout")
    fast.train()
    out_train = fast(x)[0]
    assert not torch.allclose(out_train, ref(x)[0])  # dropout acted in training
    # p=1 drops everything between layers: the last layer then sees zeros
    fast.dropout = 1.0
    out_all_dropped = fast(x)[0]
    last_only = copy.deepcopy(fast)
    last_only.dropout = 0.0
    sd = {k: v for k, v in fast.state_dict().items()}
    one = type(fast)(4, 4, dtype=F64, backend="reference")
    one.load_state_dict({k.replace("_l2", "_l0"): v for k, v in sd.items() if "_l2" in k})
    expected = one(torch.zeros(5, 2, 4, dtype=F64))[0]
    assert_close(out_all_dropped, expected, F64, "p=1 dropout")
    # a single layer never applies dropout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref1, fast1 = make_pair(kind, 3, 4, backend="reference", dropout=0.9)
    fast1.train()
    assert_close(fast1(x)[0], ref1(x)[0], F64, "one layer, dropout ignored")


# ----------------------------------------------------------------------------- NaN / inf

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_propagate_like_torch(cpu_backend, kind, bad):
    torch.manual_seed(0)
    ref, fast = make_pair(kind, 3, 4, backend=cpu_backend, num_layers=2, bidirectional=True)
    x = torch.randn(6, 2, 3, dtype=F64)
    x[2, 0, 1] = bad
    for a, b in zip(flat(fast(x)), flat(ref(x))):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, equal_nan=True)
        assert torch.equal(torch.isnan(a), torch.isnan(b))


# ----------------------------------------------------------------------------- copies

@pytest.mark.parametrize("kind", ["LSTM", "GRUCell"])
def test_deepcopy_pickle_to(kind):
    m = getattr(fastrnn, kind)(3, 4, backend="reference")
    x = torch.randn(2, 3)
    if kind == "LSTM":
        x = x.unsqueeze(1)
    expected = flat(m(x))
    m2 = copy.deepcopy(m)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    m3 = torch.load(buf, weights_only=False)
    for mm in (m2, m3):
        assert mm.backend == "reference"
        for a, b in zip(flat(mm(x)), expected):
            assert torch.equal(a, b)
    m4 = copy.deepcopy(m).double()
    for a, b in zip(flat(m4(x.double())), expected):
        assert a.dtype == F64
        torch.testing.assert_close(a.float(), b, rtol=1e-5, atol=1e-6)


def test_optimizer_step_changes_output():
    m = fastrnn.GRU(3, 4, backend="reference")
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    x = torch.randn(4, 2, 3)
    before = m(x)[0].detach()
    m(x)[0].pow(2).sum().backward()
    opt.step()
    assert not torch.allclose(m(x)[0], before)


# ----------------------------------------------------------------------------- compile

def test_torch_compile_fullgraph_lstm():
    torch._dynamo.reset()
    torch.manual_seed(0)
    ref, fast = make_pair("LSTM", 3, 4, backend=None, dtype=torch.float32)
    compiled = torch.compile(fast, fullgraph=True)
    x = torch.randn(3, 2, 3, requires_grad=True)
    out_c, (h_c, c_c) = compiled(x)
    out_r, (h_r, c_r) = ref(x)
    for a, b in ((out_c, out_r), (h_c, h_r), (c_c, c_r)):
        assert_close(a, b, torch.float32, "compiled")
    gx_c, = torch.autograd.grad(out_c.sum() + c_c.sum(), [x])
    gx_r, = torch.autograd.grad(out_r.sum() + c_r.sum(), [x])
    assert_close(gx_c, gx_r, torch.float32, "compiled grad")


def test_torch_compile_cell_and_gru_eval():
    torch._dynamo.reset()
    cell = fastrnn.GRUCell(3, 4, backend="reference")
    x = torch.randn(2, 3)
    expected = cell(x)
    got = torch.compile(cell, fullgraph=True)(x)
    torch.testing.assert_close(got, expected)
