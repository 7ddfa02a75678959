"""Argument checks run before any kernel: every error names the argument and what was
expected. Exception types follow torch.nn where torch.nn raises (ValueError for the input's
rank and dtype, RuntimeError for sizes and for hidden states), so code that catches
torch.nn's errors keeps working."""
import torch

_KERNEL_DTYPES = (torch.float32, torch.float64)


def _shape(t):
    return tuple(t.shape)


def check_floating(name, t, weight, exc=ValueError):
    """``t`` must be a floating tensor of the weights' dtype."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise exc(f"{name} must be a floating-point tensor of dtype {weight.dtype} (the "
                  f"weights' dtype), got {t.dtype}; convert it with {name}.to({weight.dtype})")
    if t.dtype != weight.dtype:
        raise exc(f"{name} dtype ({t.dtype}) does not match weight dtype ({weight.dtype}). "
                  f"Convert {name}: {name}.to({weight.dtype}), or convert the module: "
                  f"module.to({t.dtype})")


def check_device(name, t, weight):
    if t.device != weight.device:
        raise RuntimeError(f"{name} is on {t.device} but the weights are on {weight.device}; "
                           f"input, hx and weights must be on one device")


def check_hidden(name, h, expected, input_, weight):
    """Hidden state ``h`` must have shape ``expected`` and the input's dtype and device."""
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(h).__name__}")
    if _shape(h) != tuple(expected):
        raise RuntimeError(f"Expected {name} size {tuple(expected)}, got {list(h.shape)}")
    if h.dtype != input_.dtype:
        raise RuntimeError(f"{name} dtype ({h.dtype}) does not match input dtype "
                           f"({input_.dtype}); expected {weight.dtype}")
    check_device(name, h, weight)


def check_sequence_input(mode, x, input_size, weight):
    """x: time-major, batched [T, N, I] (after unbatched/batch_first handling)."""
    check_floating("input", x, weight, ValueError)
    check_device("input", x, weight)
    if x.shape[-1] != input_size:
        raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                           f"{input_size}, got {x.shape[-1]} (input shape {list(x.shape)})")
    if x.shape[0] == 0:
        raise RuntimeError(f"{mode}: expected sequence length to be larger than 0, got "
                           f"input of shape {list(x.shape)}")


def check_rank(mode, input_):
    if not isinstance(input_, torch.Tensor):
        raise TypeError(f"{mode}: input must be a Tensor or a PackedSequence, got "
                        f"{type(input_).__name__}")
    if input_.dim() not in (2, 3):
        raise ValueError(f"{mode}: Expected input to be 2D (L, H_in) or 3D (L, N, H_in) / "
                         f"(N, L, H_in), got {input_.dim()}D tensor of shape "
                         f"{list(input_.shape)} instead")


def check_hx_structure(mode, hx, is_lstm, batched):
    """hx is a tensor (RNN, GRU) or a pair (h_0, c_0) (LSTM) of the right rank."""
    want = 3 if batched else 2
    what = "batched 3-D" if batched else "unbatched 2-D"
    if is_lstm:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            got = (f"a {type(hx).__name__} of length {len(hx)}"
                   if isinstance(hx, (tuple, list)) else type(hx).__name__)
            raise RuntimeError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {got}")
        for i, t in enumerate(hx):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"LSTM: hx[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if hx[0].dim() != want or hx[1].dim() != want:
            raise RuntimeError(f"For {what} input, hx and cx should also be {want}-D but got "
                               f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
    else:
        if not isinstance(hx, torch.Tensor):
            raise RuntimeError(f"{mode}: hx must be a single tensor, got {type(hx).__name__}")
        if hx.dim() != want:
            raise RuntimeError(f"For {what} input, hx should also be {want}-D but got "
                               f"{hx.dim()}-D tensor")


def check_packed(packed):
    """A PackedSequence must describe a valid batch: batch_sizes a 1-D int64 CPU tensor,
    positive, non-increasing, summing to data.size(0); the index tensors permutations."""
    data, batch_sizes, sorted_indices, unsorted_indices = packed
    if not isinstance(data, torch.Tensor) or data.dim() != 2:
        raise RuntimeError("PackedSequence.data must be 2-D (sum of lengths, H_in), got "
                           f"{'shape ' + str(list(data.shape)) if isinstance(data, torch.Tensor) else type(data).__name__}")
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


def check_cell_input(kind, input_, hx, input_size, hidden_size, weight, is_lstm):
    """Cells (after unbatched handling): input [N, I], hx [N, H] (or a pair for LSTM)."""
    if input_.dim() not in (1, 2):
        raise ValueError(f"{kind}: Expected input to be 1D or 2D, got {input_.dim()}D instead")
    check_floating("input", input_, weight, RuntimeError)
    check_device("input", input_, weight)
    if input_.shape[-1] != input_size:
        raise RuntimeError(f"{kind}: input has inconsistent input_size: got "
                           f"{input_.shape[-1]} expected {input_size}")


def check_cell_hidden(kind, name, h, batch, hidden_size, input_, weight):
    if h.shape[0] != batch:
        raise RuntimeError(f"{kind}: Input batch size {batch} doesn't match {name} batch "
                           f"size {h.shape[0]}")
    if h.shape[1] != hidden_size:
        raise RuntimeError(f"{kind}: {name} has inconsistent hidden_size: got {h.shape[1]}, "
                           f"expected {hidden_size}")
    if h.dtype != input_.dtype:
        raise RuntimeError(f"{kind}: {name} dtype ({h.dtype}) does not match input dtype "
                           f"({input_.dtype})")
    check_device(name, h, weight)


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
