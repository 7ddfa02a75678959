"""Every bad input raises before any kernel runs, with a message naming the argument and
what was expected; where torch.nn raises for the same input, the exception type matches."""
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

import fastrnn
from rnn_cases import module_classes

I, H, N, T = 3, 4, 2, 5


def _pair(kind, **kw):
    tcls, fcls, extra = module_classes(kind)
    return tcls(I, H, **extra, **kw), fcls(I, H, **extra, backend="reference", **kw)


def _hx(kind, *shape, **kw):
    h = torch.zeros(*shape, **kw)
    return (h, torch.zeros(*shape, **kw)) if kind == "LSTM" else h


def _raises_like_torch(kind, make_args, exc, fragment, compare_type=True, **kw):
    ref, fast = _pair(kind, **kw)
    args = make_args()
    with pytest.raises(exc, match=fragment):
        fast(*args)
    if compare_type:
        with pytest.raises(exc):
            ref(*args)


KINDS = ["LSTM", "GRU", "RNN_TANH"]


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_input_size(kind):
    _raises_like_torch(kind, lambda: (torch.randn(T, N, I + 2),), RuntimeError,
                       r"input.size\(-1\) must be equal to input_size. Expected 3, got 5")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(I,), (1, T, N, I)])
def test_wrong_rank(kind, shape):
    _raises_like_torch(kind, lambda: (torch.randn(*shape),), ValueError,
                       r"Expected input to be 2D .* or 3D")


@pytest.mark.parametrize("kind", KINDS)
def test_hx_wrong_batch(kind):
    _raises_like_torch(kind, lambda: (torch.randn(T, N, I), _hx(kind, 1, N + 1, H)),
                       RuntimeError, r"Expected hx(\[0\])? size \(1, 2, 4\), got \[1, 3, 4\]")


@pytest.mark.parametrize("kind", KINDS)
def test_hx_wrong_layers(kind):
    _raises_like_torch(kind, lambda: (torch.randn(T, N, I), _hx(kind, 1, N, H)),
                       RuntimeError, r"Expected hx(\[0\])? size \(4, 2, 4\)",
                       num_layers=2, bidirectional=True)


@pytest.mark.parametrize("kind", KINDS)
def test_hx_wrong_rank(kind):
    _raises_like_torch(kind, lambda: (torch.randn(T, N, I), _hx(kind, N, H)),
                       RuntimeError, "should also be 3-D")
    _raises_like_torch(kind, lambda: (torch.randn(T, I), _hx(kind, 1, 1, H)),
                       RuntimeError, "should also be 2-D")


def test_lstm_cell_state_wrong_hidden_size():
    _raises_like_torch("LSTM", lambda: (torch.randn(T, N, I),
                                        (torch.zeros(1, N, H), torch.zeros(1, N, H + 1))),
                       RuntimeError, r"Expected hx\[1\] size \(1, 2, 4\)")


def test_lstm_needs_pair():
    _, fast = _pair("LSTM")
    x = torch.randn(T, N, I)
    with pytest.raises(RuntimeError, match=r"tuple \(h_0, c_0\)"):
        fast(x, torch.zeros(1, N, H))
    with pytest.raises(RuntimeError, match=r"tuple \(h_0, c_0\) of two tensors, got a tuple of length 1"):
        fast(x, (torch.zeros(1, N, H),))
    with pytest.raises(RuntimeError, match="length 3"):
        fast(x, (torch.zeros(1, N, H),) * 3)


@pytest.mark.parametrize("kind", ["GRU", "RNN_TANH"])
def test_single_state_modules_reject_pair(kind):
    _, fast = _pair(kind)
    with pytest.raises(RuntimeError, match="hx must be a single tensor"):
        fast(torch.randn(T, N, I), (torch.zeros(1, N, H), torch.zeros(1, N, H)))


@pytest.mark.parametrize("kind", KINDS)
def test_input_dtype_mismatch(kind):
    _raises_like_torch(kind, lambda: (torch.randn(T, N, I, dtype=torch.float64),),
                       ValueError, r"input dtype \(torch.float64\) does not match weight "
                                   r"dtype \(torch.float32\)")


@pytest.mark.parametrize("kind", KINDS)
def test_integer_input(kind):
    _raises_like_torch(kind, lambda: (torch.ones(T, N, I, dtype=torch.int64),), ValueError,
                       "input must be a floating-point tensor of dtype torch.float32")


@pytest.mark.parametrize("kind", KINDS)
def test_hx_dtype_mismatch(kind):
    _raises_like_torch(kind, lambda: (torch.randn(T, N, I),
                                      _hx(kind, 1, N, H, dtype=torch.float64)),
                       RuntimeError, r"dtype \(torch.float64\) does not match input dtype")


@pytest.mark.parametrize("kind", KINDS)
def test_hx_device_mismatch(kind):
    _raises_like_torch(kind, lambda: (torch.randn(T, N, I), _hx(kind, 1, N, H, device="meta")),
                       RuntimeError, "is on meta but the weights are on cpu")


def test_input_device_mismatch():
    _, fast = _pair("GRU")
    with pytest.raises(RuntimeError, match="input is on meta but the weights are on cpu"):
        fast(torch.randn(T, N, I, device="meta"))


def test_empty_sequence():
    _raises_like_torch("LSTM", lambda: (torch.randn(0, N, I),), RuntimeError,
                       "sequence length to be larger than 0")


def test_not_a_tensor():
    _, fast = _pair("GRU")
    with pytest.raises(TypeError, match="Tensor or a PackedSequence"):
        fast([[1.0, 2.0, 3.0]])


# ----------------------------------------------------------------------------- packed

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
def test_bad_packed_sequence(packed, fragment):
    _, fast = _pair("LSTM")
    with pytest.raises(ValueError, match=fragment):
        fast(packed())


def test_packed_wrong_feature_size():
    _, fast = _pair("GRU")
    p = PackedSequence(torch.randn(3, I + 1), torch.tensor([2, 1]), None, None)
    with pytest.raises(RuntimeError, match="input_size"):
        fast(p)


def test_packed_hx_wrong_batch():
    _, fast = _pair("GRU")
    p = torch.nn.utils.rnn.pack_sequence([torch.randn(3, I), torch.randn(2, I)])
    with pytest.raises(RuntimeError, match=r"Expected hx size \(1, 2, 4\), got \[1, 3, 4\]"):
        fast(p, torch.zeros(1, 3, H))


# ----------------------------------------------------------------------------- cells

def _cell_pair(name):
    return (getattr(torch.nn, name)(I, H),
            getattr(fastrnn, name)(I, H, backend="reference"))


def _cell_hx(name, *shape, **kw):
    h = torch.zeros(*shape, **kw)
    return (h, torch.zeros(*shape, **kw)) if name == "LSTMCell" else h


CELLS = ["LSTMCell", "GRUCell", "RNNCell"]


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("make,exc,fragment", [
    (lambda n: (torch.randn(1, N, I),), ValueError, "Expected input to be 1D or 2D"),
    (lambda n: (torch.randn(N, I + 1),), RuntimeError, "inconsistent input_size: got 4"),
    (lambda n: (torch.randn(N, I), _cell_hx(n, N + 1, H)), RuntimeError,
     "Input batch size 2 doesn't match"),
    (lambda n: (torch.randn(N, I), _cell_hx(n, N, H + 1)), RuntimeError,
     "inconsistent hidden_size"),
    (lambda n: (torch.randn(N, I), _cell_hx(n, 1, N, H)), ValueError,
     "to be 1D or 2D, got 3D"),
    (lambda n: (torch.randn(N, I, dtype=torch.float64),), RuntimeError,
     r"input dtype \(torch.float64\) does not match weight dtype"),
    (lambda n: (torch.ones(N, I, dtype=torch.int32),), RuntimeError,
     "must be a floating-point tensor"),
    (lambda n: (torch.randn(N, I), _cell_hx(n, N, H, dtype=torch.float64)), RuntimeError,
     r"dtype \(torch.float64\) does not match input dtype"),
])
def test_cell_errors(name, make, exc, fragment):
    ref, fast = _cell_pair(name)
    args = make(name)
    with pytest.raises(exc, match=fragment):
        fast(*args)
    with pytest.raises(exc):
        ref(*args)


def test_cell_hx_rank_differs_from_input():
    _, fast = _cell_pair("GRUCell")
    with pytest.raises(RuntimeError, match="must be 2-D like the input"):
        fast(torch.randn(N, I), torch.zeros(H))


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
