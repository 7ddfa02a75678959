"""On CUDA tensors with the ``auto`` backend: fastrnn's CUDA kernels or torch's own (cuDNN),
whichever measured faster for the call.

The rule is read off one table of measurements (``MEASURED``: cuDNN and fastrnn's default
CUDA schedule, same run, same weights; see ``benchmarks/results/2026-11-26-gpu-h200.md``).
For a layer (cell, dtype, hidden size H), the rows of that cell and dtype at the measured H
nearest to H (log scale) decide: fastrnn runs where it was faster than cuDNN in every one of
those rows (inference and training, every batch measured), cuDNN otherwise. A dtype with no
rows runs cuDNN (torch's default). What the table (H200, fp32, TF32 off) gives:
LSTM/GRU at H <= 181 cuDNN (its persistent small-H kernel is faster), at H 182-362
fastrnn, above cuDNN; RNN cuDNN everywhere; bfloat16 fastrnn everywhere (torch's bf16
RNNs run far slower than its fp32 ones); float16 cuDNN (measured at H=128), float64 cuDNN
(no rows).

Packed input (a ``PackedSequence``) has rows of its own (``MEASURED_PACKED``, measured by
``benchmarks/gpu_user.py``): torch cannot run cuDNN's persistent kernel on packed input, so
there fastrnn's kernels (which skip the finished rows) were faster for every cell in float32
(H = 128 and 256), bfloat16 and float16 (H = 128): 1.2-2.4x. A packed call uses those rows when the measured H nearest
to its own has packed rows, the rows above otherwise.

Under ``torch.autocast("cuda")`` the dtype looked up is the one the call computes in, not
the parameters': float16 while cuDNN is enabled (torch runs cuDNN's RNN in float16 under
CUDA autocast, whatever the autocast dtype; ``fastrnn._precision``): padded calls keep
cuDNN, packed ones run fastrnn's kernels in float16.

``FASTRNN_CUDA_DISPATCH`` = ``auto`` (this rule; the default), ``fastrnn`` (always fastrnn's
kernels) or ``cudnn`` (always torch's). An explicit ``backend="cuda"`` (module argument,
``set_backend`` or ``$FASTRNN_BACKEND``) always runs fastrnn's kernels: benchmarks and the
IMDB job pin it so that they compare kernels, not this dispatch. After a call,
``module.last_backend`` is ``"cuda"`` or ``"cudnn"``, and ``module.last_dispatch`` says why.

Verified only on a GPU; without one, the tests exercise the rule and the routing on CPU
tensors (torch's CPU implementation standing in for cuDNN).
"""
from __future__ import annotations

import math
import os

import torch

__all__ = ["ENV", "POLICIES", "MEASURED", "MEASURED_PACKED", "policy", "choose", "call_dtype",
           "routes_to_torch", "applies"]

ENV = "FASTRNN_CUDA_DISPATCH"
POLICIES = ("auto", "fastrnn", "cudnn")

# (cell, dtype, T, N, I, H, mode, cuDNN ms, fastrnn ms): NVIDIA H200, torch 2.11.0+cu130,
# 2026-11-26, `python benchmarks/gpu_timing.py`, fastrnn's cluster schedule, TF32 off.
MEASURED = [
    ("lstm", "float32", 500, 64, 100, 128, "infer", 1.378, 2.495),
    ("lstm", "float32", 500, 64, 100, 128, "train", 3.079, 6.815),
    ("gru", "float32", 500, 64, 100, 128, "infer", 0.580, 2.450),
    ("gru", "float32", 500, 64, 100, 128, "train", 2.754, 6.319),
    ("rnn", "float32", 500, 64, 100, 128, "infer", 0.474, 1.816),
    ("rnn", "float32", 500, 64, 100, 128, "train", 1.342, 3.659),
    ("lstm", "float32", 500, 1, 100, 128, "infer", 1.047, 1.918),
    ("lstm", "float32", 500, 1, 100, 128, "train", 2.112, 3.997),
    ("gru", "float32", 500, 1, 100, 128, "infer", 0.526, 1.705),
    ("gru", "float32", 500, 1, 100, 128, "train", 1.238, 3.580),
    ("rnn", "float32", 500, 1, 100, 128, "infer", 0.390, 1.204),
    ("rnn", "float32", 500, 1, 100, 128, "train", 1.050, 2.428),
    ("lstm", "float32", 500, 64, 100, 256, "infer", 7.304, 5.204),
    ("lstm", "float32", 500, 64, 100, 256, "train", 21.450, 15.081),
    ("gru", "float32", 500, 64, 100, 256, "infer", 8.536, 5.310),
    ("gru", "float32", 500, 64, 100, 256, "train", 19.952, 12.999),
    ("rnn", "float32", 500, 64, 100, 256, "infer", 1.128, 3.520),
    ("rnn", "float32", 500, 64, 100, 256, "train", 2.539, 7.110),
    ("lstm", "float32", 500, 64, 100, 512, "infer", 9.666, 15.341),
    ("lstm", "float32", 500, 64, 100, 512, "train", 24.475, 49.846),
    ("gru", "float32", 500, 64, 100, 512, "infer", 9.466, 16.453),
    ("gru", "float32", 500, 64, 100, 512, "train", 21.478, 44.290),
    ("rnn", "float32", 500, 64, 100, 512, "infer", 9.917, 10.156),
    ("rnn", "float32", 500, 64, 100, 512, "train", 20.222, 19.672),
    ("lstm", "float32", 100, 64, 512, 512, "infer", 2.331, 3.538),
    ("lstm", "float32", 100, 64, 512, 512, "train", 5.594, 11.052),
    ("gru", "float32", 100, 64, 512, 512, "infer", 2.096, 3.714),
    ("gru", "float32", 100, 64, 512, 512, "train", 5.180, 9.788),
    ("rnn", "float32", 100, 64, 512, 512, "infer", 2.050, 2.334),
    ("rnn", "float32", 100, 64, 512, 512, "train", 4.667, 4.505),
    ("lstm", "bfloat16", 500, 64, 100, 128, "infer", 9.360, 2.472),
    ("lstm", "bfloat16", 500, 64, 100, 128, "train", 18.468, 6.819),
    ("gru", "bfloat16", 500, 64, 100, 128, "infer", 9.032, 2.559),
    ("gru", "bfloat16", 500, 64, 100, 128, "train", 19.224, 6.048),
    ("rnn", "bfloat16", 500, 64, 100, 128, "infer", 9.300, 1.674),
    ("rnn", "bfloat16", 500, 64, 100, 128, "train", 19.433, 3.526),
    ("lstm", "bfloat16", 500, 1, 100, 128, "infer", 9.167, 1.875),
    ("lstm", "bfloat16", 500, 1, 100, 128, "train", 20.114, 4.056),
    ("gru", "bfloat16", 500, 1, 100, 128, "infer", 9.117, 1.664),
    ("gru", "bfloat16", 500, 1, 100, 128, "train", 19.519, 3.544),
    ("rnn", "bfloat16", 500, 1, 100, 128, "infer", 8.980, 1.178),
    ("rnn", "bfloat16", 500, 1, 100, 128, "train", 18.645, 2.382),
    # float16: H200, torch 2.11.0+cu130, 2026-12-04, `python benchmarks/gpu_user.py`
    # ("kernels" column); also what bf16 autocast runs on CUDA (cuDNN computes in float16)
    ("lstm", "float16", 500, 64, 100, 128, "infer", 0.986, 2.513),
    ("lstm", "float16", 500, 64, 100, 128, "train", 2.688, 6.859),
    ("gru", "float16", 500, 64, 100, 128, "infer", 1.058, 2.662),
    ("gru", "float16", 500, 64, 100, 128, "train", 2.884, 6.164),
    ("rnn", "float16", 500, 64, 100, 128, "infer", 0.588, 1.659),
    ("rnn", "float16", 500, 64, 100, 128, "train", 1.201, 3.545),
    ("lstm", "float16", 500, 1, 100, 128, "infer", 1.120, 1.857),
    ("lstm", "float16", 500, 1, 100, 128, "train", 2.381, 4.101),
    ("gru", "float16", 500, 1, 100, 128, "infer", 0.619, 1.727),
    ("gru", "float16", 500, 1, 100, 128, "train", 1.515, 3.671),
    ("rnn", "float16", 500, 1, 100, 128, "infer", 0.470, 1.234),
    ("rnn", "float16", 500, 1, 100, 128, "train", 1.357, 2.523),
]

# The same columns for packed input: T=500, N=64, I=100, lengths uniform in [100, 500]
# (IMDB-like), unsorted; H200, torch 2.11.0+cu130, 2026-12-04,
# `python benchmarks/gpu_user.py` ("kernels" column: fastrnn's kernels, backend="cuda").
MEASURED_PACKED = [
    ("lstm", "float32", 500, 64, 100, 128, "infer", 11.250, 6.735),
    ("lstm", "float32", 500, 64, 100, 128, "train", 44.236, 28.730),
    ("gru", "float32", 500, 64, 100, 128, "infer", 13.308, 10.796),
    ("gru", "float32", 500, 64, 100, 128, "train", 45.904, 25.763),
    ("rnn", "float32", 500, 64, 100, 128, "infer", 10.778, 7.196),
    ("rnn", "float32", 500, 64, 100, 128, "train", 42.969, 29.471),
    ("lstm", "float32", 500, 64, 100, 256, "infer", 12.695, 10.024),
    ("lstm", "float32", 500, 64, 100, 256, "train", 41.236, 32.803),
    ("gru", "float32", 500, 64, 100, 256, "infer", 12.316, 8.378),
    ("gru", "float32", 500, 64, 100, 256, "train", 38.488, 28.622),
    ("rnn", "float32", 500, 64, 100, 256, "infer", 11.935, 10.286),
    ("rnn", "float32", 500, 64, 100, 256, "train", 39.825, 25.447),
    ("lstm", "bfloat16", 500, 64, 100, 128, "infer", 11.095, 4.732),
    ("lstm", "bfloat16", 500, 64, 100, 128, "train", 48.525, 27.694),
    ("gru", "bfloat16", 500, 64, 100, 128, "infer", 12.081, 7.263),
    ("gru", "bfloat16", 500, 64, 100, 128, "train", 43.272, 28.567),
    ("rnn", "bfloat16", 500, 64, 100, 128, "infer", 12.863, 4.634),
    ("rnn", "bfloat16", 500, 64, 100, 128, "train", 42.876, 26.340),
    ("lstm", "float16", 500, 64, 100, 128, "infer", 10.134, 5.138),
    ("lstm", "float16", 500, 64, 100, 128, "train", 33.366, 22.263),
    ("gru", "float16", 500, 64, 100, 128, "infer", 11.203, 5.415),
    ("gru", "float16", 500, 64, 100, 128, "train", 38.414, 21.640),
    ("rnn", "float16", 500, 64, 100, 128, "infer", 9.057, 3.920),
    ("rnn", "float16", 500, 64, 100, 128, "train", 36.598, 23.123),
]

_CELLS = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn", "RNN_RELU": "rnn"}


def policy():
    """``$FASTRNN_CUDA_DISPATCH`` (``auto`` when unset); a bad value is an error naming it."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in POLICIES:
        raise ValueError(f"environment variable {ENV}={value!r} is not one of {POLICIES}; "
                         f"fix or unset it")
    return value


_choices = {}


def choose(mode, dtype, hidden_size, packed=False):
    """("fastrnn" or "cudnn", why) for a layer of ``mode`` (LSTM, GRU, RNN_TANH, RNN_RELU)
    computing in ``dtype`` with ``hidden_size`` units (``packed``: on a PackedSequence),
    under the current policy."""
    pol = policy()
    if pol != "auto":
        return ("fastrnn" if pol == "fastrnn" else "cudnn"), f"{ENV}={pol}"
    key = (mode, dtype, hidden_size, bool(packed))
    hit = _choices.get(key)
    if hit is None:
        hit = _choices[key] = _from_table(_CELLS[mode], str(dtype).replace("torch.", ""),
                                          hidden_size, bool(packed))
    return hit


def _from_table(cell, dtype, H, packed=False):
    rows = [r for r in MEASURED if r[0] == cell and r[1] == dtype]
    prows = [r for r in MEASURED_PACKED if r[0] == cell and r[1] == dtype] if packed else []
    if not rows and not prows:
        return "cudnn", f"{cell} {dtype} not measured: torch's own (cuDNN) by default"
    nearest = min({r[5] for r in rows + prows}, key=lambda h: abs(math.log(h / H)))
    near = [r for r in prows if r[5] == nearest]
    what = "packed input" if near else "padded input"
    near = near or [r for r in rows if r[5] == nearest]
    ratios = [r[7] / r[8] for r in near]  # cuDNN / fastrnn: > 1 means fastrnn faster
    side = "fastrnn" if min(ratios) > 1.0 else "cudnn"
    return side, (f"{cell} {dtype}, {what} measured at H={nearest}: fastrnn at "
                  f"{min(ratios):.2f}-{max(ratios):.2f}x of cuDNN's speed over "
                  f"{len(near)} cases")


def call_dtype(dtype):
    """The dtype a CUDA layer call with parameters in ``dtype`` computes in: under CUDA
    autocast float16 while cuDNN is enabled (torch's cuDNN autocast casts to float16
    whatever the autocast dtype), the autocast dtype otherwise; ``dtype`` outside it."""
    if dtype in (torch.float32, torch.float16, torch.bfloat16) and \
            torch.is_autocast_enabled("cuda"):
        return torch.float16 if torch.backends.cudnn.enabled else \
            torch.get_autocast_dtype("cuda")
    return dtype


@torch.compiler.assume_constant_result
def routes_to_torch(mode, dtype, hidden_size, backend, packed=False):
    """Whether a layer call on CUDA tensors runs torch's own implementation: only for the
    ``auto`` backend (an explicit one pins it), by ``choose``."""
    if backend is None:
        from . import get_default_backend
        backend = get_default_backend()
    if backend != "auto":
        return False
    return choose(mode, dtype, hidden_size, packed)[0] == "cudnn"


def applies(x):
    """Whether the dispatch concerns this call's input (CUDA tensors; the tests route CPU
    tensors through it by replacing this predicate)."""
    return x.is_cuda
