"""float16 / bfloat16 and autocast at the functional boundary.

Two cases reach fastrnn's layers and cells in low precision:

* **Tensors in float16/bfloat16 on the CPU** (a module cast with ``.bfloat16()``): the
  compiled CPU kernels and the numba kernels compute in float32, so the call runs on
  float32 copies of the input, states and weights and its outputs are rounded back to the
  input's dtype. Storage and results stay low precision; the gate pre-activations, the
  nonlinearities, the cell state and every accumulation are float32 (more accurate than a
  bf16 step loop, never the slow reference). Autograd goes through the casts, so
  gradients reach the low-precision parameters in their dtype.

* **torch.autocast** (CPU or CUDA): the output dtypes are torch.nn's. torch.nn's recurrent
  layers take part in autocast through the matmuls inside them, and their output dtypes
  follow from that (checked against torch 2.13 on the CPU, ``tests/test_precision.py``;
  ``L`` is the autocast dtype, ``d_h``/``d_c`` the dtype of the states passed in (any of
  float32, float16, bfloat16, whatever the input's: autocast casts them for the matmuls),
  the input's when none is):

  ==============================  ==============================  ====================
  module (CPU autocast)           h, output                       c
  ==============================  ==============================  ====================
  RNN, RNNCell                    L                               --
  GRU, GRUCell                    promote(L, d_h)                 --
  LSTM, not packed, no proj_size  L (oneDNN's bf16 LSTM)          L
  LSTM packed, LSTMCell           promote(L, d_c)                 promote(L, d_c)
  LSTM with proj_size             L                               promote(L, d_c)
  ==============================  ==============================  ====================

  (The peephole LSTM follows the LSTM.) On CUDA the three cells return L (they are on CUDA
  autocast's lower-precision list), and the layers return **float16 whatever L is**: torch
  runs cuDNN's RNN under CUDA autocast through a wrapper of its own that casts the input,
  states and weights to float16 (measured on an H200 with torch 2.11: LSTM, packed LSTM,
  LSTM with proj_size, GRU and RNN all return float16 under
  ``torch.autocast("cuda", dtype=torch.bfloat16)``; ``tests/test_precision.py``). So a
  fastrnn layer on CUDA computes in float16 under autocast while cuDNN is enabled
  (``torch.backends.cudnn.enabled``), in L otherwise. fastrnn casts the input and the
  weights to the computing dtype for the call (the rounding autocast applies to a matmul's
  operands), computes with autocast off in float32 on the CPU (in that dtype on CUDA,
  whose kernels take it), and returns the table's dtypes. The parameters stay float32 and
  receive float32 gradients.

A float64 input is left alone by autocast, as torch.nn's is.
"""
import contextlib
import weakref

import torch
from torch.nn.utils.rnn import PackedSequence

from . import backends

# Converted weights for calls that need no gradient through them: id(weight) -> (a weak
# reference to it, its version counter, dtypes, a copy of its values, the converted tensor).
# A step-by-step loop then converts each weight once and hands the kernels the same tensor
# every step (whose packed panels the pack cache keeps). A hit needs the same version AND
# the same bytes as the saved copy: version counters miss some writes (torch's fused
# optimizers, e.g. Adam(fused=True), and writes through ``.data`` leave them unchanged), so
# they only tell a change early, never vouch for none. Keyed by id with the reference's
# callback removing the entry when the weight is freed (what WeakIdKeyDictionary does,
# without building a reference per lookup: a bfloat16 cell call looks up four weights per
# step).
_converted = {}
_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _memcmp():
    try:
        from .backends import cpu
        return None if cpu._C is None else cpu._C.same_bytes
    except Exception:
        return None


_MEMCMP = []


def _same_bytes(a, b):
    """Bitwise equality of two contiguous CPU tensors of one dtype and shape (NaNs
    included): a memcmp in the compiled extension (a few microseconds for a cell's weights),
    else torch.equal on their bits."""
    if not _MEMCMP:
        _MEMCMP.append(_memcmp())
    if _MEMCMP[0] is not None and a.device.type == "cpu":
        return _MEMCMP[0](a.data_ptr(), b.data_ptr(), a.numel() * a.element_size())
    bits = _BITS.get(a.element_size())
    if bits is None:
        return torch.equal(a, b)
    return torch.equal(a.view(bits), b.view(bits))


def _forget(key):
    def drop(_):
        _converted.pop(key, None)
    return drop

LOW = (torch.float16, torch.bfloat16)
_AUTOCASTABLE = (torch.float32, torch.float16, torch.bfloat16)


def _autocast_dtype(device_type, dtype):
    """autocast's lower-precision dtype for a call on ``device_type`` with floating inputs
    of ``dtype``, or None when autocast does not apply."""
    if dtype not in _AUTOCASTABLE or device_type not in ("cpu", "cuda"):
        return None
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _promote(a, b):
    return torch.promote_types(a, b)


class Plan:
    """How one call runs: the dtype its inputs are rounded to (``round_to``, or None), the
    dtype it computes in, and its outputs' dtypes (h and output; c)."""

    def __init__(self, device_type, round_to, compute, out_h, out_c):
        self.device_type, self.round_to, self.compute = device_type, round_to, compute
        self.out_h, self.out_c = out_h, out_c

    def tensor(self, t):
        """An input (sequence, weight) as the computation takes it."""
        if t is None:
            return None
        if self.round_to is not None and t.dtype != self.round_to:
            t = t.to(self.round_to)
        return t.to(self.compute)

    def weight(self, t):
        """A weight as the computation takes it: converted once while it is unchanged, when
        no gradient flows through the conversion."""
        if t is None or (t.requires_grad and torch.is_grad_enabled()) or \
                torch.compiler.is_compiling() or t.is_inference() or not t.is_contiguous():
            return self.tensor(t)
        key = (self.round_to, self.compute)
        hit = _converted.get(id(t))
        if hit is not None and hit[0]() is t:
            if hit[1] == t._version and hit[2] == key and _same_bytes(t.detach(), hit[3]):
                return hit[4]
            ref = hit[0]
        else:
            ref = weakref.ref(t, _forget(id(t)))
        out = self.tensor(t)
        if out is not t:  # (a value holding its own key would never be freed)
            with torch.no_grad():
                _converted[id(t)] = (ref, t._version, key, t.detach().clone(), out)
        return out

    def state(self, t):
        """A state passed in: not rounded (the state keeps its own precision)."""
        if t is None or t.dtype == self.compute:
            return t
        return t.to(self.compute)

    def sequence(self, x):
        if isinstance(x, PackedSequence):
            return x._replace(data=self.tensor(x.data))
        return self.tensor(x)

    def output(self, t, dtype):
        if isinstance(t, PackedSequence):
            return t._replace(data=t.data.to(dtype))
        return t.to(dtype)

    def context(self):
        """Autocast off for the computation (its dtypes are this plan's)."""
        if self.round_to is None:  # not under autocast
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)


@torch.compiler.assume_constant_result
def _cpu_kernels_run(backend):
    """Whether ``backend`` (None, "auto" or a name) runs fp32-only kernels on the CPU."""
    try:
        return backends.resolve_cached(backend, "cpu") in ("cpu", "numba")
    except Exception:  # an unavailable backend asked for by name: the call will say so
        return False


def _cuda_layer_dtype(low):
    """The dtype torch.nn's layers compute and return in under CUDA autocast to ``low``:
    cuDNN's autocast wrapper casts to float16 whatever the autocast dtype is."""
    return torch.float16 if torch.backends.cudnn.enabled else low


def plan(kind, x, h, c, weight, backend, packed=False, proj=False, layer=False):
    """The Plan for a call of ``kind`` ("RNN", "GRU", "LSTM" for the RNN/GRU layers and
    cells and the LSTM cells, "LSTM-layer" for the LSTM layers, with ``packed``/``proj``)
    on input ``x`` (a tensor: a PackedSequence's data) with states ``h``/``c`` (or None)
    and weights like ``weight`` (``layer``: a layer's call, not a cell's); None when the
    call runs as it is."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        return None
    states = [t for t in (h, c) if t is not None]
    if any(not isinstance(t, torch.Tensor) for t in states):
        return None  # the validation raises torch.nn's error
    dev = x.device.type
    low = _autocast_dtype(dev, x.dtype) if weight.dtype in _AUTOCASTABLE else None
    if low is not None:
        # under autocast torch.nn takes states of any autocast-able dtype (the matmuls cast
        # them); the outputs follow the dtype of the state the update blends in
        if any(t.dtype not in _AUTOCASTABLE for t in states):
            return None
        if dev == "cuda" and layer:
            low = _cuda_layer_dtype(low)
        compute = low if dev == "cuda" else torch.float32
        if dev == "cuda":
            out_h = out_c = low
        else:
            d_h = x.dtype if h is None else h.dtype
            d_c = x.dtype if c is None else c.dtype
            if kind == "RNN":
                out_h = out_c = low
            elif kind == "GRU":
                out_h = out_c = _promote(low, d_h)
            elif kind == "LSTM-layer" and not packed and not proj:
                out_h = out_c = low
            elif kind == "LSTM-layer" and proj:
                out_h, out_c = low, _promote(low, d_c)
            else:  # LSTM cell, packed LSTM layer
                out_h = out_c = _promote(low, d_c)
        return Plan(dev, low, compute, out_h, out_c)
    if any(t.dtype != x.dtype for t in states):
        return None
    if dev == "cpu" and x.dtype in LOW and weight.dtype == x.dtype and _cpu_kernels_run(backend):
        return Plan(dev, None, torch.float32, x.dtype, x.dtype)
    return None
