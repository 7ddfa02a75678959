"""Argument checks run before any kernel.

Where torch.nn raises for an argument, fastrnn raises the same exception with the same
message, and of several bad arguments the one torch.nn reports first, so that code catching
or matching torch.nn's errors keeps working:

* torch.nn's modules check ranks, the input's dtype and size and the states' sizes in
  Python (the layers' ``forward`` and ``RNNBase.check_forward_args``, the cells'
  ``forward``): the same checks here, in the same order and words. They call ``.dim()`` and
  ``.size()`` on what they are given, as torch.nn does, so that a state of the wrong kind
  (a tuple for a GRU, a tensor for an LSTM) fails as it fails there.
* torch's recurrent ops check the rest inside. Their size checks (the cells') are made here
  in their words. The others (devices, the states' dtypes, the sequence length, the LSTM's
  pair of states) raise messages that depend on the path torch takes (oneDNN, cuDNN, which
  matmul meets the bad operand first): once every size is one torch's op takes, a call
  that fastrnn's kernels cannot run goes to ``raise_as_torch``, which calls torch's op on
  the same arguments to raise its error. (Never with sizes torch's op does not check: given
  those, torch's ops compute garbage, fail deep inside, or crash; nn.GRUCell(3, 1) called
  with an input [3] and a state [1, 1] ends the process.)

Where torch accepts what fastrnn cannot run, fastrnn raises its own error, naming the
argument and what was expected: a cell state of another dtype (torch promotes it), an
unbatched cell call with a 2-D state (torch's cells misread it), a malformed
PackedSequence, and the sizes in a packed LSTM call (nn.LSTM checks no packed input; here
they get the words nn.LSTM uses for a tensor input).
"""
import torch


def raise_as_torch(torch_call, error):
    """Raise torch's own error for arguments fastrnn cannot run: ``torch_call`` runs
    torch's op on them (its checks raise); ``error`` when torch accepts them."""
    torch_call()
    raise error


# ----------------------------------------------------------------------------- layers

def check_layer_input(name, input):
    """torch.nn's layers (input not packed): 2-D (unbatched) or 3-D."""
    dim = input.dim()
    if dim not in (2, 3):
        unit = "D tensor" if name == "RNN" else "D"  # (nn.RNN's own wording)
        raise ValueError(f"{name}: Expected input to be 2D or 3D, got {dim}{unit} instead")


def layer_states(hx, two, batched):
    """torch.nn's check of a layer's hx rank (input not packed). Returns hx as torch.nn
    hands it to its op: unbatched states unsqueezed to [L*D, 1, R] (an LSTM's as a pair),
    batched ones as given."""
    want, what = (3, "batched 3-D") if batched else (2, "unbatched 2-D")
    if two:
        if hx[0].dim() != want or hx[1].dim() != want:
            raise RuntimeError(f"For {what} input, hx and cx should also be {want}-D but got "
                               f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
        return hx if batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
    if hx.dim() != want:
        raise RuntimeError(f"For {what} input, hx should also be {want}-D but got "
                           f"{hx.dim()}-D tensor")
    return hx if batched else hx.unsqueeze(1)


def permute_states(hx, permutation, two):
    """torch.nn's ``permute_hidden`` for a PackedSequence's sorted order (before its
    checks, as torch.nn does)."""
    if two:
        return hx[0].index_select(1, permutation), hx[1].index_select(1, permutation)
    return hx.index_select(1, permutation)


def forward_args_error(x, h, c, weight, packed, h_shape, c_shape, check_dtype=True):
    """torch.nn's ``RNNBase.check_forward_args`` (``nn.LSTM``'s for a pair of states): the
    error for the input ``x`` (batched, or a PackedSequence's data) and states ``h``, ``c``
    (None: not given), or None. ``weight``: layer 0's w_ih."""
    if check_dtype and x.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
        return ValueError(f"RNN input dtype ({x.dtype}) does not match weight dtype "
                          f"({weight.dtype}). Convert input: input.to({weight.dtype}), or "
                          f"convert model: model.to({x.dtype})")
    rank = 2 if packed else 3
    if x.dim() != rank:
        return RuntimeError(f"input must have {rank} dimensions, got {x.dim()}")
    if x.size(-1) != weight.shape[1]:
        return RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                            f"{weight.shape[1]}, got {x.size(-1)}")
    names = ("hidden", None) if c is None else ("hidden[0]", "hidden[1]")
    for name, t, shape in ((names[0], h, h_shape), (names[1], c, c_shape)):
        if t is not None and t.size() != shape:
            return RuntimeError(f"Expected {name} size {tuple(shape)}, got {list(t.size())}")
    return None


def layer_error(x, T, hx, two, h_shape, c_shape, weight, packed):
    """fastrnn's own checks of a layer call, past torch.nn's: the error, or None when the
    kernels can run it. ``x``: the batched input or a PackedSequence's data; ``hx``: as
    given (None, a tensor, or for an LSTM a pair)."""
    if T == 0:
        return RuntimeError("Expected sequence length to be larger than 0 in RNN")
    error = input_error(x, weight, 2 if packed else 3)
    if error is not None or hx is None:
        return error
    if two:
        error = pair_error(hx)
        if error is not None:
            return error
        states = (("hidden[0]", hx[0], h_shape), ("hidden[1]", hx[1], c_shape))
    else:
        states = (("hidden", hx, h_shape),)
    for name, t, shape in states:
        error = state_error(name, t, shape, x, weight)
        if error is not None:
            return error
    return None


def pair_error(hx):
    """An LSTM's hx must be a pair (h_0, c_0) of tensors."""
    if isinstance(hx, (tuple, list)) and len(hx) == 2 and all(
            isinstance(t, torch.Tensor) for t in hx):
        return None
    got = (f"a {type(hx).__name__} of length {len(hx)}" if isinstance(hx, (tuple, list))
           else type(hx).__name__)
    return RuntimeError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {got}")


def input_error(x, weight, rank):
    """The input (``rank``-D, after unbatched inputs are unsqueezed) must be a floating
    tensor of the weights' dtype, size and device."""
    if not isinstance(x, torch.Tensor):
        return TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.dtype != weight.dtype:
        return RuntimeError(f"input dtype ({x.dtype}) does not match weight dtype "
                            f"({weight.dtype}). Convert input: input.to({weight.dtype}), or "
                            f"convert the module: module.to({x.dtype})")
    if x.dim() != rank:
        return RuntimeError(f"input must have {rank} dimensions, got {x.dim()}")
    if x.shape[-1] != weight.shape[1]:
        return RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                            f"{weight.shape[1]}, got {x.shape[-1]}")
    return device_error("input", x, weight)


def state_error(name, t, shape, x, weight):
    """A state must be a tensor of ``shape`` with the input's dtype and device."""
    if not isinstance(t, torch.Tensor):
        return TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        return RuntimeError(f"Expected {name} size {tuple(shape)}, got {list(t.shape)}")
    if t.dtype != x.dtype:
        return RuntimeError(f"{name} dtype ({t.dtype}) does not match input dtype "
                            f"({x.dtype}); expected {weight.dtype}")
    return device_error(name, t, weight)


def device_error(name, t, weight):
    if t.device != weight.device:
        return RuntimeError(f"{name} is on {t.device} but the weights are on "
                            f"{weight.device}; input, hx and weights must be on one device")
    return None


# ----------------------------------------------------------------------------- packed

def check_packed(packed):
    """A PackedSequence must describe a valid batch: batch_sizes a 1-D int64 CPU tensor,
    positive, non-increasing, summing to data.size(0); the index tensors permutations."""
    data, batch_sizes, sorted_indices, unsorted_indices = packed
    if not isinstance(data, torch.Tensor) or data.dim() == 0:
        # (its rank is checked as torch.nn checks it, with the input's size and dtype)
        got = "a 0-D tensor" if isinstance(data, torch.Tensor) else type(data).__name__
        raise RuntimeError(f"PackedSequence.data must be a 2-D tensor (sum of lengths, "
                           f"H_in), got {got}")
    if (not isinstance(batch_sizes, torch.Tensor) or batch_sizes.dim() != 1
            or batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu"):
        raise ValueError("PackedSequence.batch_sizes must be a 1-D int64 CPU tensor, got "
                         f"{batch_sizes!r}")
    if batch_sizes.numel() == 0:
        raise ValueError("PackedSequence.batch_sizes is empty: sequence length must be >= 1")
    if bool((batch_sizes <= 0).any()):
        raise ValueError("PackedSequence.batch_sizes must be positive (every length >= 1), "
                         f"got {batch_sizes.tolist()}")
    if batch_sizes.numel() > 1 and bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
        raise ValueError("PackedSequence.batch_sizes must be non-increasing (lengths sorted "
                         f"in decreasing order), got {batch_sizes.tolist()}")
    total = int(batch_sizes.sum())
    if total != data.shape[0]:
        raise ValueError(f"PackedSequence.batch_sizes sum to {total} but data has "
                         f"{data.shape[0]} rows")
    n = int(batch_sizes[0])
    for name, idx in (("sorted_indices", sorted_indices), ("unsorted_indices", unsorted_indices)):
        if idx is None:
            continue
        if idx.dim() != 1 or idx.numel() != n or idx.dtype != torch.int64:
            raise ValueError(f"PackedSequence.{name} must be a 1-D int64 tensor of size "
                             f"{n} (the batch size), got shape {list(idx.shape)}, {idx.dtype}")
        if not torch.equal(idx.sort().values.cpu(), torch.arange(n)):
            raise ValueError(f"PackedSequence.{name} must be a permutation of 0..{n - 1}")
    if (sorted_indices is None) != (unsorted_indices is None):
        raise ValueError("PackedSequence: sorted_indices and unsorted_indices must both be "
                         "given or both be None")
    if sorted_indices is not None and not torch.equal(
            unsorted_indices[sorted_indices].cpu(), torch.arange(n)):
        raise ValueError("PackedSequence.unsorted_indices must be the inverse permutation "
                         "of sorted_indices")


# ----------------------------------------------------------------------------- cells

def check_cell_input(name, input, hx, two):
    """torch.nn's cells: input 1-D or 2-D, each state 1-D or 2-D (an LSTMCell's named
    "hx[i]", the others' "hidden", as torch.nn names them)."""
    dim = input.dim()
    if dim not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {dim}D instead")
    if hx is None:
        return
    if two:
        for idx, value in enumerate(hx):
            if value.dim() not in (1, 2):
                raise ValueError(f"{name}: Expected hx[{idx}] to be 1D or 2D, got "
                                 f"{value.dim()}D instead")
    elif hx.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")


def cell_states(hx, two, batched):
    """A cell's hx as torch.nn hands it to its op: unbatched states unsqueezed to [1, H]."""
    if batched or hx is None:
        return hx
    if two:
        return hx[0].unsqueeze(0), hx[1].unsqueeze(0)
    return hx.unsqueeze(0)


def check_cell_sizes(name, x, hx, two, w_ih, w_hh):
    """The size checks of torch's cell ops (``lstm_cell`` and the others, in C++) in their
    order and words, then fastrnn's of the states' rank (an unbatched call's 2-D state
    passes torch's checks, and its op misreads it). ``x`` [N, I] and ``hx`` as torch.nn
    hands them to its op (for the LSTM cells a tuple or list)."""
    if two and len(hx) != 2:
        raise RuntimeError("lstm_cell expects two hidden states")
    if x.size(1) != w_ih.shape[1]:
        raise RuntimeError(f"input has inconsistent input_size: got {x.size(1)} expected "
                           f"{w_ih.shape[1]}")
    states = hx if two else (hx,)
    H = w_hh.shape[1]
    for label, h in enumerate(states):
        if x.size(0) != h.size(0):
            raise RuntimeError(f"Input batch size {x.size(0)} doesn't match hidden{label} "
                               f"batch size {h.size(0)}")
        if h.size(1) != H:  # (a 1-D state: the IndexError torch's size(1) raises)
            raise RuntimeError(f"hidden{label} has inconsistent hidden_size: got "
                               f"{h.size(1)}, expected {H}")
    for label, h in enumerate(states):
        if h.dim() != 2:  # (only an unbatched call's 2-D state gets here, unsqueezed)
            nm = f"hx[{label}]" if two else "hx"
            raise RuntimeError(f"{name}: {nm} must be 1-D like the input, got "
                               f"{h.dim() - 1}-D")


def cell_error(name, x, hx, two, w_ih):
    """fastrnn's own checks of a cell call past the sizes (its kernels' dtype and device):
    the error, or None when the kernels can run it."""
    error = input_error(x, w_ih, 2)
    if error is not None:
        return error
    for label, h in enumerate(hx if two else (hx,)):
        nm = f"hx[{label}]" if two else "hx"
        if h.dtype != x.dtype:
            return RuntimeError(f"{name}: {nm} dtype ({h.dtype}) does not match input dtype "
                                f"({x.dtype})")
        error = device_error(nm, h, w_ih)
        if error is not None:
            return error
    return None


# ----------------------------------------------------------------------------- ops

def check_op_args(op, ref, specs, lengths=None):
    """Shape/dtype/device checks at the op boundary (the ops are public too, and a
    compiled kernel trusts its sizes). ``specs``: (name, tensor or None, expected shape)."""
    if ref.dim() != 3:
        raise RuntimeError(f"fastrnn::{op}: expected a 3-D [T, N, G] first argument, got "
                           f"shape {list(ref.shape)}")
    if not ref.is_floating_point():
        raise RuntimeError(f"fastrnn::{op}: expected floating-point tensors, got {ref.dtype}")
    for name, t, shape in specs:
        if t is None:
            continue
        if tuple(t.shape) != tuple(shape):
            raise RuntimeError(f"fastrnn::{op}: {name} must have shape {list(shape)}, got "
                               f"{list(t.shape)}")
        if t.dtype != ref.dtype or t.device != ref.device:
            raise RuntimeError(f"fastrnn::{op}: {name} must be {ref.dtype} on {ref.device} "
                               f"like the other arguments, got {t.dtype} on {t.device}")
    if lengths is not None:
        T, N = ref.shape[0], ref.shape[1]
        if lengths.dtype != torch.int64 or tuple(lengths.shape) != (N,):
            raise RuntimeError(f"fastrnn::{op}: lengths must be an int64 tensor of shape "
                               f"[{N}], got {lengths.dtype} of shape {list(lengths.shape)}")
        if lengths.device != ref.device:
            raise RuntimeError(f"fastrnn::{op}: lengths must be on {ref.device}, got "
                               f"{lengths.device}")
        if N > 0 and (bool((lengths < 1).any()) or bool((lengths > T).any())):
            raise RuntimeError(f"fastrnn::{op}: every length must be in [1, {T}], got "
                               f"{lengths.tolist()}")


def require_tensors(fn, **tensors):
    """The compiled kernels take raw pointers: a missing required tensor must be an error
    naming it here, never a null pointer in a kernel."""
    for name, t in tensors.items():
        if t is None:
            raise TypeError(f"{fn}: {name} is required (a tensor), got None")
