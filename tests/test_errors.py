"""Bad input raises what torch.nn raises: the same exception type and message, and of
several bad arguments the one torch.nn reports first. Every expected error is torch.nn's
own, raised in the test by torch.nn on the same input. Where torch.nn accepts what fastrnn
cannot run (a malformed PackedSequence, an LSTM cell state of another dtype), fastrnn's own
error names the argument. No bad input reaches a fastrnn kernel."""
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import fastrnn
from fastrnn import functional as F_
from rnn_cases import module_classes

I, H, N, T = 3, 4, 2, 5
F64 = torch.float64
z = torch.zeros


def assert_raises_like_torch(torch_call, fastrnn_call):
    """torch.nn's error for the call, then fastrnn's: the same type and message, no backend
    resolved (so no kernel ran). (A case that is an error for some modules only, e.g. a
    list of states, is run for all: where torch.nn accepts it, fastrnn must too.)"""
    try:
        torch_call()
    except Exception as err:
        expected = err
    else:
        fastrnn_call()
        return
    F_._last["backend"] = None
    with pytest.raises(Exception) as got:
        fastrnn_call()
    assert type(got.value) is type(expected), (got.value, expected)
    assert str(got.value) == str(expected)
    assert F_.last_backend() is None


# ----------------------------------------------------------------------------- layers

LAYER_KINDS = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU", "PEEPHOLE"]


def _layer_pair(kind, **kw):
    """torch.nn's layer and fastrnn's (the peephole LSTM's counterpart: nn.LSTM)."""
    if kind == "PEEPHOLE":
        return torch.nn.LSTM(I, H, **kw), fastrnn.PeepholeLSTM(I, H, backend="reference", **kw)
    tcls, fcls, extra = module_classes(kind)
    return tcls(I, H, **extra, **kw), fcls(I, H, **extra, backend="reference", **kw)


class _Args:
    """Builds a layer call's arguments: the input in the layer's layout, states (a pair for
    the LSTMs)."""

    def __init__(self, kind, batch_first):
        self.two = kind in ("LSTM", "PEEPHOLE")
        self.batch_first = batch_first

    def x(self, T=T, N=N, I=I, **kw):
        return torch.randn((N, T, I) if self.batch_first else (T, N, I), **kw)

    def hx(self, *shape, **kw):
        return (z(*shape, **kw), z(*shape, **kw)) if self.two else z(*shape, **kw)

    def other_structure(self):
        """A tensor where an LSTM takes a pair, a pair where a GRU/RNN takes a tensor."""
        return z(1, N, H) if self.two else (z(1, N, H), z(1, N, H))


LAYER_CASES = {
    "not-a-tensor": lambda a: ([[1.0, 2.0, 3.0]],),
    "input-0d": lambda a: (torch.tensor(1.0),),
    "input-1d": lambda a: (torch.randn(I),),
    "input-4d": lambda a: (torch.randn(1, T, N, I),),
    "input_size": lambda a: (a.x(I=I + 2),),
    "input_size-unbatched": lambda a: (torch.randn(T, I + 2),),
    "input_size-issue": lambda a: (torch.randn(3, 5, 11),),
    "input-f64": lambda a: (a.x(dtype=F64),),
    "input-int": lambda a: (torch.ones(T, N, I, dtype=torch.int64),),
    "input-f16": lambda a: (a.x(dtype=torch.float16),),
    "input-f64-and-input_size": lambda a: (a.x(I=I + 1, dtype=F64),),
    "input_size-and-hx-batch": lambda a: (a.x(I=I + 1), a.hx(1, N + 1, H)),
    "hx-batch": lambda a: (a.x(), a.hx(1, N + 1, H)),
    "hx-hidden": lambda a: (a.x(), a.hx(1, N, H + 1)),
    "hx-layers": lambda a: (a.x(), a.hx(2, N, H)),
    "hx-unbatched-hidden": lambda a: (torch.randn(T, I), a.hx(1, H + 1)),
    "hx-unbatched-layers": lambda a: (torch.randn(T, I), a.hx(2, H)),
    "hx-rank2-batched": lambda a: (a.x(), a.hx(N, H)),
    "hx-rank3-unbatched": lambda a: (torch.randn(T, I), a.hx(1, 1, H)),
    "hx-rank4": lambda a: (a.x(), a.hx(1, 1, N, H)),
    "hx-f64": lambda a: (a.x(), a.hx(1, N, H, dtype=F64)),
    "hx-int": lambda a: (a.x(), a.hx(1, N, H, dtype=torch.int64)),
    "hx-f64-unbatched": lambda a: (torch.randn(T, I), a.hx(1, H, dtype=F64)),
    "hx-f64-and-hx-batch": lambda a: (a.x(), a.hx(1, N + 1, H, dtype=F64)),
    "hx-meta": lambda a: (a.x(), a.hx(1, N, H, device="meta")),
    "input-meta": lambda a: (a.x(device="meta"),),
    "hx-other-structure": lambda a: (a.x(), a.other_structure()),
    "hx-other-structure-unbatched": lambda a: (torch.randn(T, I), z(1, H) if a.two else
                                               (z(1, H), z(1, H))),
    "hx-list": lambda a: (a.x(), [z(1, N, H), z(1, N, H)]),
    "hx-1-tuple": lambda a: (a.x(), (z(1, N, H),)),
    "hx-3-tuple": lambda a: (a.x(), (z(1, N, H),) * 3),
    "hx-with-None": lambda a: (a.x(), (z(1, N, H), None)),
    "hx-None-first": lambda a: (a.x(), (None, z(1, N, H))),
    "hx-float": lambda a: (a.x(), 1.0),
    "hx-stacked-4d": lambda a: (a.x(), z(2, 1, N, H)),
    "c-hidden": lambda a: (a.x(), (z(1, N, H), z(1, N, H + 1))),
    "c-batch": lambda a: (a.x(), (z(1, N, H), z(1, N + 1, H))),
    "c-rank": lambda a: (a.x(), (z(1, N, H), z(N, H))),
    "c-f64": lambda a: (a.x(), (z(1, N, H), z(1, N, H, dtype=F64))),
    "seq-len-0": lambda a: (a.x(T=0),),
    "seq-len-0-unbatched": lambda a: (torch.randn(0, I),),
    "seq-len-0-and-hx-batch": lambda a: (a.x(T=0), a.hx(1, N + 1, H)),
    "seq-len-0-and-input_size": lambda a: (a.x(T=0, I=I + 1),),
    "seq-len-0-and-hx-meta": lambda a: (a.x(T=0), a.hx(1, N, H, device="meta")),
}


@pytest.mark.parametrize("kind", LAYER_KINDS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_errors_are_torch_nn_errors(kind, batch_first, case):
    ref, fast = _layer_pair(kind, batch_first=batch_first)
    args = LAYER_CASES[case](_Args(kind, batch_first))
    assert_raises_like_torch(lambda: ref(*args), lambda: fast(*args))


STATE_CONFIGS = {"2-layers-bidirectional": dict(num_layers=2, bidirectional=True),
                 "3-layers-batch_first": dict(num_layers=3, batch_first=True),
                 "proj": dict(proj_size=2), "proj-bidirectional": dict(proj_size=2,
                                                                       bidirectional=True)}
STATE_CASES = [(kind, cfg, state) for kind in LAYER_KINDS for cfg in STATE_CONFIGS
               for state in ("h", "c")
               if kind in ("LSTM", "PEEPHOLE") or ("proj" not in cfg and state == "h")]


@pytest.mark.parametrize("kind,cfg,state", STATE_CASES, ids=map("-".join, STATE_CASES))
@pytest.mark.parametrize("wrong", [0, 1, 2])
def test_layer_state_shape_errors(kind, cfg, state, wrong):
    """A state off in one dimension (layers, batch, size) under several configurations."""
    two = kind in ("LSTM", "PEEPHOLE")
    cfg = STATE_CONFIGS[cfg]
    ref, fast = _layer_pair(kind, **cfg)
    D = 2 if cfg.get("bidirectional") else 1
    h_shape = [cfg.get("num_layers", 1) * D, N, cfg.get("proj_size") or H]
    c_shape = [cfg.get("num_layers", 1) * D, N, H]
    bad = h_shape if state == "h" else c_shape
    bad[wrong] += 1
    h, c = z(*(bad if state == "h" else h_shape)), z(*(bad if state == "c" else c_shape))
    x = torch.randn((N, T, I) if cfg.get("batch_first") else (T, N, I))
    hx = (h, c) if two else h
    assert_raises_like_torch(lambda: ref(x, hx), lambda: fast(x, hx))


PACKED_CASES = {
    "input_size": lambda two: (PackedSequence(torch.randn(3, I + 1), torch.tensor([2, 1])),),
    "data-3d": lambda two: (PackedSequence(torch.randn(3, 1, I), torch.tensor([2, 1])),),
    "hx-batch": lambda two: (_seqs(), _h(two, 1, 3, H)),
    "hx-hidden": lambda two: (_seqs(), _h(two, 1, 2, H + 1)),
    "c-hidden": lambda two: (_seqs(), (z(1, 2, H), z(1, 2, H + 1)) if two else z(1, 2, H)),
    "hx-rank2": lambda two: (_seqs(), _h(two, 2, H)),
    "hx-rank2-unsorted": lambda two: (_seqs(sort=False), _h(two, 2, H)),
    # (the sizes above; nn.LSTM checks none of them in a packed call)
    "data-f64": lambda two: (PackedSequence(torch.randn(3, I, dtype=F64),
                                            torch.tensor([2, 1])),),
    "data-int": lambda two: (PackedSequence(torch.ones(3, I, dtype=torch.int64),
                                            torch.tensor([2, 1])),),
    "hx-f64": lambda two: (_seqs(), _h(two, 1, 2, H, dtype=F64)),
    "hx-meta": lambda two: (_seqs(), _h(two, 1, 2, H, device="meta")),
    "hx-other-structure": lambda two: (_seqs(), z(1, 2, H) if two else (z(1, 2, H),) * 2),
    "hx-other-structure-unsorted": lambda two: (_seqs(sort=False), z(1, 2, H) if two else
                                                (z(1, 2, H),) * 2),
    "hx-stacked-4d": lambda two: (_seqs(), z(2, 1, 2, H)),
    "hx-1-tuple": lambda two: (_seqs(), (z(1, 2, H),)),
    "hx-1-tuple-unsorted": lambda two: (_seqs(sort=False), (z(1, 2, H),)),
    "hx-3-tuple": lambda two: (_seqs(), (z(1, 2, H),) * 3),
    "hx-with-None": lambda two: (_seqs(), (z(1, 2, H), None)),
}
PACKED_SIZE_CASES = list(PACKED_CASES)[:list(PACKED_CASES).index("data-f64")]


def _seqs(sort=True):
    lengths = (3, 2) if sort else (2, 3)
    return pack_sequence([torch.randn(n, I) for n in lengths], enforce_sorted=sort)


def _h(two, *shape, **kw):
    return (z(*shape, **kw), z(*shape, **kw)) if two else z(*shape, **kw)


@pytest.mark.parametrize("kind", LAYER_KINDS)
@pytest.mark.parametrize("case", list(PACKED_CASES))
def test_packed_errors_are_torch_nn_errors(kind, case):
    """A well-formed PackedSequence with a bad input or state: torch.nn's GRU and RNN check
    it as they check a tensor, and so does fastrnn. torch.nn's LSTM checks nothing there,
    and its op fails inside or misreads the sizes: for bad sizes fastrnn's LSTMs raise what
    nn.LSTM's own check (``check_forward_args``, which it runs for a tensor input) raises
    for these arguments; for the rest, what nn.LSTM raises."""
    ref, fast = _layer_pair(kind)
    args = PACKED_CASES[case](kind in ("LSTM", "PEEPHOLE"))
    torch_call = lambda: ref(*args)  # noqa: E731
    if kind in ("LSTM", "PEEPHOLE") and case in PACKED_SIZE_CASES:
        def torch_call():
            packed = args[0]
            if len(args) == 1:
                hx = (z(ref.get_expected_hidden_size(packed.data, packed.batch_sizes)),
                      z(ref.get_expected_cell_size(packed.data, packed.batch_sizes)))
            else:
                hx = ref.permute_hidden(args[1], packed.sorted_indices)
            ref.check_forward_args(packed.data, hx, packed.batch_sizes)
    assert_raises_like_torch(torch_call, lambda: fast(*args))


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_packed_state_torch_would_truncate(kind):
    """torch.nn permutes a packed batch's states before checking them, so a state with too
    many rows passes its check (the permutation keeps some of them); fastrnn checks the
    state as given."""
    ref, fast = _layer_pair(kind)
    two = kind in ("LSTM", "PEEPHOLE")
    p, hx = _seqs(sort=False), _h(two, 1, 3, H)
    ref(p, hx)  # accepted
    name = r"hidden\[0\]" if two else "hidden"
    with pytest.raises(RuntimeError, match=fr"Expected {name} size \(1, 2, 4\), got \[1, 3, 4\]"):
        fast(p, hx)


def _packed(data_rows, batch_sizes, sorted_indices=None, unsorted_indices=None):
    return PackedSequence(torch.randn(data_rows, I), torch.tensor(batch_sizes),
                          sorted_indices, unsorted_indices)


@pytest.mark.parametrize("packed,fragment", [
    (lambda: _packed(3, [1, 2]), "non-increasing"),
    (lambda: _packed(2, [2, 0]), "positive"),
    (lambda: _packed(4, [2, 1]), "sum to 3 but data has 4 rows"),
    (lambda: _packed(3, [2, 1], torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])),
     "sorted_indices must be a 1-D int64 tensor of size 2"),
    (lambda: _packed(3, [2, 1], torch.tensor([0, 0]), torch.tensor([0, 1])),
     "sorted_indices must be a permutation"),
    (lambda: _packed(3, [2, 1], torch.tensor([1, 0]), torch.tensor([0, 1])),
     "inverse permutation"),
    (lambda: PackedSequence(torch.randn(3, I), torch.tensor([2.0, 1.0]), None, None),
     "batch_sizes must be a 1-D int64 CPU tensor"),
    (lambda: PackedSequence(torch.randn(3, I), torch.tensor([], dtype=torch.int64), None,
                            None), "batch_sizes is empty"),
])
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_bad_packed_sequence(packed, fragment, kind):
    """A malformed PackedSequence: torch.nn checks none of this (its op misreads it, fails
    deep inside or computes garbage); fastrnn says what is wrong."""
    _, fast = _layer_pair(kind)
    with pytest.raises(ValueError, match=fragment):
        fast(packed())


# ----------------------------------------------------------------------------- constructors

CONSTRUCTOR_CASES = [
    ("LSTM", (3, 0), {}), ("LSTM", (3, -2), {}), ("LSTM", (0, 4), {}), ("LSTM", (-1, 4), {}),
    ("LSTM", (3, 4, 0), {}), ("LSTM", (3, 4, -1), {}),
    ("LSTM", (3, 4), dict(dropout=1.5)), ("LSTM", (3, 4), dict(dropout=-0.1)),
    ("LSTM", (3, 4), dict(dropout=True)), ("LSTM", (3, 4), dict(dropout="a")),
    ("LSTM", (3, 4), dict(proj_size=4)), ("LSTM", (3, 4), dict(proj_size=-1)),
    ("LSTM", (3.0, 4), {}), ("LSTM", (3, 4.0), {}), ("LSTM", (3, 4), dict(bias=1)),
    ("LSTM", (3, 4), dict(batch_first=None)), ("LSTM", (3, 4), dict(foo=1)),
    ("GRU", (3, 0), {}), ("GRU", (0, 4), {}), ("GRU", (3, 4, 0), {}),
    ("GRU", (3, 4), dict(dropout=2)), ("GRU", (3, 4), dict(proj_size=2)),
    ("GRU", (3, 4), dict(proj_size=0)), ("GRU", (3, 4), dict(foo=1)),
    ("RNN", (3, 0), {}), ("RNN", (3, 4), dict(num_layers=0, dropout=0.5)),
    ("RNN", (3, 4), dict(proj_size=2)), ("RNN", (3, 4), dict(nonlinearity="gelu")),
    ("RNN", (3, 4, 1, "gelu"), {}), ("RNN", (3, 4), dict(nonlinearity="gelu", proj_size=1)),
    ("RNN", (3, 4), dict(nonlinearity="relu", hidden_size=0)), ("RNN", (3, 4), dict(foo=1)),
    ("LSTMCell", (3, -1), {}), ("LSTMCell", (-1, 4), {}), ("GRUCell", (3, -2), {}),
    ("GRUCell", (3.5, 4), {}), ("RNNCell", (3, -1), {}),
]


def _constructor_id(case):
    kind, args, kw = case
    return f"{kind}-{'-'.join(map(str, args))}-{'-'.join(f'{k}{v}' for k, v in kw.items())}"


@pytest.mark.parametrize("case", CONSTRUCTOR_CASES, ids=map(_constructor_id, CONSTRUCTOR_CASES))
def test_constructor_errors_are_torch_nn_errors(case):
    kind, args, kw = case
    if "hidden_size" in kw:
        args = args[:1]
    assert_raises_like_torch(lambda: getattr(torch.nn, kind)(*args, **kw),
                             lambda: getattr(fastrnn, kind)(*args, **kw))
    if kind == "LSTM":
        assert_raises_like_torch(lambda: torch.nn.LSTM(*args, **kw),
                                 lambda: fastrnn.PeepholeLSTM(*args, **kw))


def test_unknown_cell_nonlinearity_after_the_rank_checks():
    """nn.RNNCell takes any nonlinearity and refuses an unknown one in forward, after its
    rank checks and before its op's."""
    ref = torch.nn.RNNCell(I, H, nonlinearity="gelu")
    fast = fastrnn.RNNCell(I, H, nonlinearity="gelu")
    for args in [(torch.randn(N, I),), (torch.randn(1, N, I),), (torch.randn(N, I + 1),),
                 (torch.randn(N, I), z(1, N, H))]:
        assert_raises_like_torch(lambda: ref(*args), lambda: fast(*args))


# ----------------------------------------------------------------------------- cells

CELL_KINDS = ["LSTMCell", "GRUCell", "RNNCell-tanh", "RNNCell-relu", "PeepholeLSTMCell"]


def _cell_pair(kind, dtype=None, bias=True):
    """torch.nn's cell and fastrnn's (the peephole cell's counterpart: nn.LSTMCell)."""
    name, _, nl = kind.partition("-")
    extra = {"nonlinearity": nl} if nl else {}
    if name == "PeepholeLSTMCell":
        return (torch.nn.LSTMCell(I, H, bias=bias, dtype=dtype),
                fastrnn.PeepholeLSTMCell(I, H, bias=bias, dtype=dtype, backend="reference"))
    return (getattr(torch.nn, name)(I, H, bias=bias, dtype=dtype, **extra),
            getattr(fastrnn, name)(I, H, bias=bias, dtype=dtype, backend="reference", **extra))


class _CellArgs:
    def __init__(self, kind):
        self.two = kind.startswith(("LSTM", "Peephole"))

    def hx(self, *shape, c=None, **kw):
        """States of ``shape`` (the cell state of ``c``'s shape if given)."""
        if self.two:
            return z(*shape, **kw), z(*(c or shape), **kw)
        return z(*shape, **kw)

    def other_structure(self):
        return z(N, H) if self.two else (z(N, H), z(N, H))


r = torch.randn
CELL_CASES = {
    "not-a-tensor": lambda a: ([[1.0, 2.0, 3.0]],),
    "input-0d": lambda a: (torch.tensor(1.0),),
    "input-3d": lambda a: (r(1, N, I),),
    "input_size": lambda a: (r(N, I + 1),),
    "input_size-unbatched": lambda a: (r(I + 1),),
    "input-f64": lambda a: (r(N, I, dtype=F64),),
    "input-f64-unbatched": lambda a: (r(I, dtype=F64),),
    "input-int64": lambda a: (torch.ones(N, I, dtype=torch.int64),),
    "input-int32": lambda a: (torch.ones(N, I, dtype=torch.int32),),
    "input-f16": lambda a: (r(N, I, dtype=torch.float16),),
    # the order: sizes before dtypes, the input's size first, then each state's batch and
    # size; of two dtypes, the operand the op multiplies first
    "input-f64-and-input_size": lambda a: (r(N, I + 1, dtype=F64),),
    "input-f64-and-hx-batch": lambda a: (r(N, I, dtype=F64), a.hx(N + 1, H)),
    "input-f64-and-hx-hidden": lambda a: (r(N, I, dtype=F64), a.hx(N, H + 1)),
    "input_size-and-hx-batch": lambda a: (r(N, I + 1), a.hx(N + 1, H)),
    "hx-batch-and-hidden": lambda a: (r(N, I), a.hx(N + 1, H + 1)),
    "input-f64-and-hx-f16": lambda a: (r(N, I, dtype=F64), a.hx(N, H, dtype=torch.float16)),
    "input-f64-and-hx-f64": lambda a: (r(N, I, dtype=F64), a.hx(N, H, dtype=F64)),
    "hx-f64": lambda a: (r(N, I), a.hx(N, H, dtype=F64)),
    "hx-int": lambda a: (r(N, I), a.hx(N, H, dtype=torch.int64)),
    "hx-f64-unbatched": lambda a: (r(I), a.hx(H, dtype=F64)),
    "hx-f64-and-hx-batch": lambda a: (r(N, I), a.hx(N + 1, H, dtype=F64)),
    "hx-batch": lambda a: (r(N, I), a.hx(N + 1, H)),
    "hx-hidden": lambda a: (r(N, I), a.hx(N, H + 1)),
    "hx-3d": lambda a: (r(N, I), a.hx(1, N, H)),
    "hx-1d-batched": lambda a: (r(N, I), a.hx(H)),
    "hx-1d-batched-N-is-H": lambda a: (r(H, I), a.hx(H)),
    "hx-2d-unbatched": lambda a: (r(I), a.hx(1, H)),
    "hx-2d-unbatched-batch-2": lambda a: (r(I), a.hx(2, H)),
    "hx-0d": lambda a: (r(N, I), (torch.tensor(0.0),) * 2 if a.two else torch.tensor(0.0)),
    "hx-meta": lambda a: (r(N, I), a.hx(N, H, device="meta")),
    "input-meta": lambda a: (r(N, I, device="meta"),),
    "hx-other-structure": lambda a: (r(N, I), a.other_structure()),
    "hx-tensor-2-N-H": lambda a: (r(N, I), z(2, N, H)),
    "hx-1-tuple": lambda a: (r(N, I), (z(N, H),)),
    "hx-1-tuple-unbatched": lambda a: (r(I), (z(H),)),
    "hx-3-tuple": lambda a: (r(N, I), (z(N, H),) * 3),
    "hx-with-None": lambda a: (r(N, I), (z(N, H), None)),
    "hx-float": lambda a: (r(N, I), 1.0),
    "c-batch": lambda a: (r(N, I), (z(N, H), z(N + 1, H))),
    "c-hidden": lambda a: (r(N, I), (z(N, H), z(N, H + 1))),
    "c-3d": lambda a: (r(N, I), (z(N, H), z(1, N, H))),
    "c-int-and-h-f64": lambda a: (r(N, I), (z(N, H, dtype=F64), z(N, H, dtype=torch.int64))),
}


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("case", list(CELL_CASES))
def test_cell_errors_are_torch_nn_errors(kind, case):
    ref, fast = _cell_pair(kind)
    args = CELL_CASES[case](_CellArgs(kind))
    assert_raises_like_torch(lambda: ref(*args), lambda: fast(*args))


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("module_dtype,bias", [(F64, True), (None, False)])
@pytest.mark.parametrize("case", ["input", "hx", "both"])
def test_cell_dtype_errors_per_module(kind, module_dtype, bias, case):
    """torch's message names the operation that meets the bad operand (a matmul with or
    without a bias): a float64 cell given float32, a cell without biases."""
    ref, fast = _cell_pair(kind, module_dtype, bias)
    other = torch.float32 if module_dtype == F64 else F64
    x_dtype = other if case in ("input", "both") else module_dtype
    h_dtype = other if case in ("hx", "both") else module_dtype
    h = z(N, H, dtype=h_dtype)
    args = (r(N, I, dtype=x_dtype), (h, h) if kind.startswith(("LSTM", "Peep")) else h)
    assert_raises_like_torch(lambda: ref(*args), lambda: fast(*args))


def test_lstm_cell_state_of_another_dtype_stays_an_error():
    """torch.nn's LSTMCell promotes a cell state of another dtype (and returns float64);
    fastrnn's kernels take one dtype, and it says so."""
    ref, fast = _cell_pair("LSTMCell")
    args = (r(N, I), (z(N, H), z(N, H, dtype=F64)))
    assert ref(*args)[1].dtype == F64
    with pytest.raises(RuntimeError, match=r"LSTMCell: hx\[1\] dtype \(torch.float64\) does "
                                           r"not match input dtype \(torch.float32\)"):
        fast(*args)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_unbatched_cell_call_with_2d_state(kind):
    """An unbatched call with a [1, H] state of hidden size 1 passes the size checks of
    torch's cell ops, which then misread it (nn.RNNCell returns a [1, 1] result;
    nn.GRUCell corrupts memory, so it is not called here); fastrnn refuses the state."""
    name, _, nl = kind.partition("-")
    extra = {"nonlinearity": nl} if nl else {}
    if name == "RNNCell":
        assert torch.nn.RNNCell(I, 1, **extra)(r(I), z(1, 1)).shape == (1, 1)
    fast = getattr(fastrnn, name)(I, 1, **extra)
    two = name in ("LSTMCell", "PeepholeLSTMCell")
    F_._last["backend"] = None
    with pytest.raises(RuntimeError, match=r"hx(\[0\])? must be 1-D like the input, got 2-D"):
        fast(r(I), (z(1, 1), z(1, 1)) if two else z(1, 1))
    assert F_.last_backend() is None


# ----------------------------------------------------------------------------- ops

def test_op_rejects_inconsistent_shapes():
    xg = torch.randn(T, N, 4 * H)
    with pytest.raises(RuntimeError, match=r"fastrnn::lstm_forward: c0 must have shape \[2, 4\]"):
        torch.ops.fastrnn.lstm_forward(xg, torch.zeros(N, H), torch.zeros(N + 1, H),
                                       torch.zeros(4 * H, H), None, None, False, False,
                                       "reference")
    with pytest.raises(RuntimeError, match=r"every length must be in \[1, 5\]"):
        torch.ops.fastrnn.rnn_forward(torch.randn(T, N, H), torch.zeros(N, H),
                                      torch.zeros(H, H), torch.tensor([6, 1]), False, False,
                                      "reference")
    with pytest.raises(RuntimeError, match="lengths must be an int64"):
        torch.ops.fastrnn.gru_forward(torch.randn(T, N, 3 * H), torch.zeros(N, H),
                                      torch.zeros(3 * H, H), torch.zeros(3 * H),
                                      torch.tensor([1, 2], dtype=torch.int32), False, False,
                                      "reference")
    with pytest.raises(RuntimeError, match="w_hh must be torch.float32"):
        torch.ops.fastrnn.rnn_forward(torch.randn(T, N, H), torch.zeros(N, H),
                                      torch.zeros(H, H, dtype=torch.float64), None, False,
                                      False, "reference")
