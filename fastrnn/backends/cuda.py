"""CUDA backend: the fused recurrence kernels of ``fastrnn._cuda`` (csrc/cuda/).

Implements the backend contract (see ``fastrnn.backends``) for CUDA tensors of dtype
float32, float64, float16 and bfloat16. Each time step is ONE fused computation: the
recurrent matmul for all gates of a tile of hidden units, fused with the bias, the
nonlinearities and the state update (backward: with the gate derivatives and the
recurrent gradient). By default the whole sequence is one launch (the schedules below);
per-step scheduling is one launch per step (two for a projected LSTM). Half types accumulate in float32 and carry
the cell state and the recurrent gradients in float32 between steps.

This module prepares what the kernels take and nothing else:
  * weight layouts, once per call: ``unit_major`` puts the gate rows of one hidden
    unit next to each other ([G*H, K] -> [H, G, K]) so that one thread owns every gate
    of its unit; ``transposed`` gives W^T for the backward's h-gradient matmul;
  * every output and workspace tensor, allocated here with torch (the C++ side
    allocates nothing, so the caching allocator and CUDA graphs work);
  * raw pointers and the caller's current stream.

Tile shape: ``$FASTRNN_CUDA_TILE`` = ``small`` | ``large`` | ``auto`` (default; see
``choose_tile``). ``$FASTRNN_CUDA_SCHEDULE`` picks how a layer-direction's steps are
scheduled (see ``persistent_mode``): ``step`` one launch per step; ``grid`` ONE
cooperative launch with the block's recurrent weights resident in shared memory and a
grid-wide barrier between steps; ``cluster`` one launch of thread-block clusters (sm_90+),
one cluster per tile of batch rows, so each step waits only for the blocks that produce
its rows. Each kind falls back to the next simpler one where it does not fit (weights
over shared memory, more than 16 unit tiles for a cluster, a grid that cannot be
co-resident); a projected LSTM always runs per step. Unset or ``auto``: ``cluster``.

``KernelRunner(lib, device_type)`` holds the logic; the module-level functions use
``fastrnn._cuda`` on CUDA tensors. ``emulator()`` returns a runner over
``fastrnn._cuda_emu``, the same kernel code executed on the CPU (float32/float64, CPU
tensors), which is how the kernels are tested on machines without a GPU.
"""
from __future__ import annotations

import contextlib
import os

import torch

from .._validation import require_tensors
from ._common import ptr

try:
    from fastrnn import _cuda as _lib
    _IMPORT_ERROR = None
except Exception as exc:  # built without nvcc, or a broken build
    _lib = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
TILE_ENV = "FASTRNN_CUDA_TILE"
TILE_SMALL, TILE_LARGE = 0, 1
SCHEDULE_ENV = "FASTRNN_CUDA_SCHEDULE"
PERSISTENT_ENV = "FASTRNN_CUDA_PERSISTENT"  # the former name (and spellings), deprecated
PERSIST_NONE, PERSIST_GRID, PERSIST_CLUSTER = 0, 1, 2
# The default: one launch for the whole sequence with a barrier per step only within a
# cluster (no grid-wide barrier, no launch per step), the fastest of the three in every case
# of benchmarks/gpu_timing.py on an H200 (README, "GPU"); it falls back by itself.
PERSIST_DEFAULT = PERSIST_CLUSTER


def unavailable_reason():
    """None when the CUDA kernels can run here, else why not (actionable)."""
    if _lib is None:
        return ("fastrnn was built without its CUDA kernels (fastrnn._cuda: "
                f"{_IMPORT_ERROR}); reinstall with the CUDA toolkit's nvcc on PATH: "
                "pip install --no-build-isolation .")
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA GPU available (torch.cuda.is_available() is False)"
    count, err = _lib.device_count()  # our own (static) CUDA runtime, not torch's
    if count == 0:
        v = _lib.runtime_version()
        return (f"fastrnn._cuda (CUDA runtime {v // 1000}.{v % 1000 // 10}) sees no GPU: "
                f"{err or 'no devices'}; a driver supporting that CUDA version is needed")
    return None


# ----------------------------------------------------------------------------- layouts

def unit_major(w, gates):
    """[G*H, K] -> [H, G, K] contiguous: row (j, g) is torch's row g*H + j."""
    GH, K = w.shape
    if GH % gates:
        raise ValueError(f"weight has {GH} rows, not a multiple of {gates} gates")
    return w.reshape(gates, GH // gates, K).transpose(0, 1).contiguous()


def transposed(w):
    """W^T as a contiguous [K, G*H] tensor (the backward reads columns of W as rows)."""
    return w.t().contiguous()


def acc_dtype(dtype):
    """Type of the state carried between steps: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def choose_tile(N, J):
    """Tile shape for N batch rows and J units per step (``$FASTRNN_CUDA_TILE`` wins).

    ``small`` (4 rows x 8 units per 256-thread block, dot products split 8 ways) keeps
    many blocks busy on the short, latency-bound steps of small batches; ``large``
    (16 x 16 per block) reuses each staged weight 16 times and pays off once a step has
    enough (n, unit) pairs to fill the GPU with 256-pair blocks.
    """
    env = os.environ.get(TILE_ENV, "auto").strip().lower()
    if env == "small":
        return TILE_SMALL
    if env == "large":
        return TILE_LARGE
    if env not in ("", "auto"):
        raise ValueError(f"{TILE_ENV}={env!r}: expected small, large or auto")
    return TILE_LARGE if N >= 64 and N * J >= 65536 else TILE_SMALL


_PERSIST_WORDS = {
    "0": PERSIST_NONE, "false": PERSIST_NONE, "no": PERSIST_NONE, "off": PERSIST_NONE,
    "step": PERSIST_NONE,
    "1": PERSIST_GRID, "true": PERSIST_GRID, "yes": PERSIST_GRID, "on": PERSIST_GRID,
    "grid": PERSIST_GRID,
    "2": PERSIST_CLUSTER, "cluster": PERSIST_CLUSTER,
}


SCHEDULES = {"step": PERSIST_NONE, "grid": PERSIST_GRID, "cluster": PERSIST_CLUSTER}
_deprecation_warned = False


def persistent_mode():
    """How ``$FASTRNN_CUDA_SCHEDULE`` (``step``, ``grid``, ``cluster``; unset or ``auto``:
    PERSIST_DEFAULT) asks the steps to be scheduled: PERSIST_NONE (one launch per step),
    PERSIST_GRID or PERSIST_CLUSTER. The former ``$FASTRNN_CUDA_PERSISTENT`` (0/1/cluster
    and on/off spellings) is still read, with a deprecation warning, when the new one is
    unset."""
    global _deprecation_warned
    env = os.environ.get(SCHEDULE_ENV, "").strip().lower()
    if env in ("", "auto"):
        old = os.environ.get(PERSISTENT_ENV, "").strip().lower()
        if old in ("", "auto"):
            return PERSIST_DEFAULT
        if not _deprecation_warned:
            _deprecation_warned = True
            import warnings
            warnings.warn(f"{PERSISTENT_ENV} is deprecated: use {SCHEDULE_ENV}=step|grid|cluster",
                          DeprecationWarning, stacklevel=2)
        if old in _PERSIST_WORDS:
            return _PERSIST_WORDS[old]
        raise ValueError(f"{PERSISTENT_ENV}={old!r}: expected auto, 0 (per step), 1 (grid) "
                         f"or cluster; it is deprecated: use {SCHEDULE_ENV}=step|grid|cluster")
    if env in SCHEDULES:
        return SCHEDULES[env]
    raise ValueError(f"{SCHEDULE_ENV}={env!r}: expected step, grid, cluster or auto")


# ----------------------------------------------------------------------------- runner



class KernelRunner:
    """The backend functions over one kernel library (``_cuda`` or ``_cuda_emu``)."""

    PEEPHOLES = True  # the LSTM functions take w_ch

    def __init__(self, lib, device_type, tile=None, persistent=None):
        self.lib = lib
        self.device_type = device_type
        self.tile = tile  # None: choose_tile()
        self.persistent = persistent  # None: persistent_mode(); bool or PERSIST_*

    # -- checks (cheap, no device sync): the kernels trust every pointer they get
    def _check(self, fn, shapes, ref, lengths=None, N=None):
        if ref.dtype not in DTYPE_CODES:
            raise TypeError(f"fastrnn cuda.{fn}: unsupported dtype {ref.dtype}; "
                            f"expected one of {list(DTYPE_CODES)}")
        for name, (t, shape) in shapes.items():
            if t is None:
                continue
            if t.device.type != self.device_type or t.device != ref.device:
                raise ValueError(f"fastrnn cuda.{fn}: {name} is on {t.device}, expected "
                                 f"{ref.device} ({self.device_type})")
            if t.dtype != ref.dtype:
                raise TypeError(f"fastrnn cuda.{fn}: {name} has dtype {t.dtype}, "
                                f"expected {ref.dtype}")
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"fastrnn cuda.{fn}: {name} has shape {tuple(t.shape)}, "
                                 f"expected {tuple(shape)}")
            if not t.is_contiguous():
                raise ValueError(f"fastrnn cuda.{fn}: {name} must be contiguous")
        if lengths is not None:
            if lengths.dtype != torch.int64 or tuple(lengths.shape) != (N,):
                raise ValueError(f"fastrnn cuda.{fn}: lengths must be int64 of shape ({N},), "
                                 f"got {lengths.dtype} {tuple(lengths.shape)}")
            if lengths.device != ref.device or not lengths.is_contiguous():
                raise ValueError(f"fastrnn cuda.{fn}: lengths must be contiguous on "
                                 f"{ref.device}, got {lengths.device}")

    def _common(self, ref, N, J):
        if self.device_type == "cuda":
            ctx = torch.cuda.device(ref.device)
            stream = torch.cuda.current_stream(ref.device).cuda_stream
        else:
            ctx, stream = contextlib.nullcontext(), 0
        tile = choose_tile(N, J) if self.tile is None else self.tile
        persistent = persistent_mode() if self.persistent is None else int(self.persistent)
        return ctx, dict(dtype=DTYPE_CODES[ref.dtype], tile=tile, stream=stream,
                         persistent=persistent)

    # -- LSTM (w_ch: the peephole LSTM's p_i, p_f, p_o; None: plain LSTM)
    def lstm_forward(self, xg, h0, c0, w_hh, w_hr, lengths, reverse, training, w_ch=None):
        require_tensors("lstm_forward", xg=xg, h0=h0, c0=c0, w_hh=w_hh)
        T, N, G = xg.shape
        H, R = G // 4, h0.shape[-1]
        self._check("lstm_forward", {
            "xg": (xg, (T, N, 4 * H)), "h0": (h0, (N, R)), "c0": (c0, (N, H)),
            "w_hh": (w_hh, (4 * H, R)), "w_hr": (w_hr, (R, H)), "w_ch": (w_ch, (3 * H,))},
            xg, lengths, N)
        if w_hr is None and R != H:
            raise ValueError(f"fastrnn cuda.lstm_forward: h0 has width {R} != H={H} "
                             f"without a projection")
        y = xg.new_empty(T, N, R)
        c = c0.to(acc_dtype(xg.dtype), copy=True)  # updated in place: c0 -> cn
        gates = xg.new_empty(T, N, 4 * H) if training else xg.new_empty(0)
        cs = xg.new_empty(T, N, H) if training else xg.new_empty(0)
        if T * N > 0:
            m = xg.new_zeros(N, H) if w_hr is not None else None
            w_l = unit_major(w_hh, 4)
            ctx, kw = self._common(xg, N, H)
            with ctx:
                self.lib.lstm_forward(
                    T=T, N=N, H=H, R=R, xg=ptr(xg), h0=ptr(h0), w_hh=ptr(w_l),
                    w_hr=ptr(w_hr), lengths=ptr(lengths), reverse=bool(reverse), y=ptr(y),
                    c=ptr(c), gates=ptr(gates), cs=ptr(cs), m=ptr(m), w_ch=ptr(w_ch), **kw)
        return y, c.to(xg.dtype), gates, cs

    def lstm_backward(self, dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates, cs,
                      w_ch=None):
        require_tensors("lstm_backward", dy=dy, dcn=dcn, h0=h0, c0=c0, w_hh=w_hh, y=y, gates=gates, cs=cs)
        T, N, R = dy.shape
        H = c0.shape[-1]
        self._check("lstm_backward", {
            "dy": (dy, (T, N, R)), "dcn": (dcn, (N, H)), "h0": (h0, (N, R)),
            "c0": (c0, (N, H)), "w_hh": (w_hh, (4 * H, R)), "w_hr": (w_hr, (R, H)),
            "gates": (gates, (T, N, 4 * H)), "cs": (cs, (T, N, H)), "w_ch": (w_ch, (3 * H,))},
            dy, lengths, N)
        acc = acc_dtype(dy.dtype)
        dgates = dy.new_empty(T, N, 4 * H)
        dh0 = dy.new_empty(N, R)
        dr = dy.new_empty(T, N, R) if w_hr is not None else dy.new_empty(0)
        dc = dcn.to(acc, copy=True)  # updated in place: dcn -> dc0
        if T * N == 0:
            return dgates, torch.zeros_like(dh0), dc.to(dy.dtype), dr
        carry = torch.zeros(N, R, dtype=acc, device=dy.device)
        w_t = transposed(w_hh)
        w_hr_t = transposed(w_hr) if w_hr is not None else None
        ctx, kw = self._common(dy, N, max(H, R))
        with ctx:
            self.lib.lstm_backward(
                T=T, N=N, H=H, R=R, dy=ptr(dy), c0=ptr(c0), w_hh_t=ptr(w_t),
                w_hr_t=ptr(w_hr_t), lengths=ptr(lengths), reverse=bool(reverse),
                gates=ptr(gates), cs=ptr(cs), dgates=ptr(dgates), dh0=ptr(dh0),
                dh_carry=ptr(carry), dc=ptr(dc), dr=ptr(dr), w_ch=ptr(w_ch), **kw)
        return dgates, dh0, dc.to(dy.dtype), dr

    # -- GRU
    def gru_forward(self, xg, h0, w_hh, b_hh, lengths, reverse, training):
        require_tensors("gru_forward", xg=xg, h0=h0, w_hh=w_hh, b_hh=b_hh)
        T, N, G = xg.shape
        H = G // 3
        self._check("gru_forward", {
            "xg": (xg, (T, N, 3 * H)), "h0": (h0, (N, H)), "w_hh": (w_hh, (3 * H, H)),
            "b_hh": (b_hh, (3 * H,))}, xg, lengths, N)
        y = xg.new_empty(T, N, H)
        saved = xg.new_empty(T, N, 4 * H) if training else xg.new_empty(0)
        if T * N > 0:
            w_l = unit_major(w_hh, 3)
            ctx, kw = self._common(xg, N, H)
            with ctx:
                self.lib.gru_forward(
                    T=T, N=N, H=H, xg=ptr(xg), h0=ptr(h0), w_hh=ptr(w_l), b_hh=ptr(b_hh),
                    lengths=ptr(lengths), reverse=bool(reverse), y=ptr(y), saved=ptr(saved),
                    **kw)
        return y, saved

    def gru_backward(self, dy, h0, w_hh, lengths, reverse, y, saved):
        require_tensors("gru_backward", dy=dy, h0=h0, w_hh=w_hh, y=y, saved=saved)
        T, N, H = dy.shape
        self._check("gru_backward", {
            "dy": (dy, (T, N, H)), "h0": (h0, (N, H)), "w_hh": (w_hh, (3 * H, H)),
            "y": (y, (T, N, H)), "saved": (saved, (T, N, 4 * H))}, dy, lengths, N)
        dxg = dy.new_empty(T, N, 3 * H)
        dh0 = dy.new_empty(N, H)
        if T * N == 0:
            return dxg, torch.zeros_like(dh0)
        carry = torch.zeros(N, H, dtype=acc_dtype(dy.dtype), device=dy.device)
        dhg = dy.new_empty(2, N, 3 * H)  # ping-pong: step s writes slot s % 2
        w_t = transposed(w_hh)
        ctx, kw = self._common(dy, N, H)
        with ctx:
            self.lib.gru_backward(
                T=T, N=N, H=H, dy=ptr(dy), h0=ptr(h0), w_hh_t=ptr(w_t),
                lengths=ptr(lengths), reverse=bool(reverse), y=ptr(y), saved=ptr(saved),
                dxg=ptr(dxg), dh0=ptr(dh0), dh_carry=ptr(carry), dhg=ptr(dhg), **kw)
        return dxg, dh0

    # -- Elman RNN
    def rnn_forward(self, xg, h0, w_hh, lengths, reverse, relu):
        require_tensors("rnn_forward", xg=xg, h0=h0, w_hh=w_hh)
        T, N, H = xg.shape
        self._check("rnn_forward", {
            "xg": (xg, (T, N, H)), "h0": (h0, (N, H)), "w_hh": (w_hh, (H, H))}, xg, lengths, N)
        y = xg.new_empty(T, N, H)
        if T * N > 0:
            w = w_hh.contiguous()  # [H, H] is already unit-major
            ctx, kw = self._common(xg, N, H)
            with ctx:
                self.lib.rnn_forward(
                    T=T, N=N, H=H, xg=ptr(xg), h0=ptr(h0), w_hh=ptr(w),
                    lengths=ptr(lengths), reverse=bool(reverse), relu=bool(relu), y=ptr(y),
                    **kw)
        return y

    def rnn_backward(self, dy, h0, w_hh, lengths, reverse, relu, y):
        require_tensors("rnn_backward", dy=dy, h0=h0, w_hh=w_hh, y=y)
        T, N, H = dy.shape
        self._check("rnn_backward", {
            "dy": (dy, (T, N, H)), "h0": (h0, (N, H)), "w_hh": (w_hh, (H, H)),
            "y": (y, (T, N, H))}, dy, lengths, N)
        dxg = dy.new_empty(T, N, H)
        dh0 = dy.new_empty(N, H)
        if T * N == 0:
            return dxg, torch.zeros_like(dh0)
        carry = torch.zeros(N, H, dtype=acc_dtype(dy.dtype), device=dy.device)
        w_t = transposed(w_hh)
        ctx, kw = self._common(dy, N, H)
        with ctx:
            self.lib.rnn_backward(
                T=T, N=N, H=H, dy=ptr(dy), w_hh_t=ptr(w_t), lengths=ptr(lengths),
                reverse=bool(reverse), relu=bool(relu), y=ptr(y), dxg=ptr(dxg),
                dh0=ptr(dh0), dh_carry=ptr(carry), **kw)
        return dxg, dh0


def emulator(tile=None, persistent=False):
    """A KernelRunner executing the CUDA kernel code on the CPU (CPU float32/float64
    tensors), or None when fastrnn._cuda_emu was not built."""
    try:
        from fastrnn import _cuda_emu
    except ImportError:
        return None
    return KernelRunner(_cuda_emu, "cpu", tile=tile, persistent=persistent)


_runner = KernelRunner(_lib, "cuda")
PEEPHOLES = KernelRunner.PEEPHOLES  # lstm_forward/lstm_backward take w_ch (the backend contract)


def lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, reverse, training, w_ch=None):
    return _runner.lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, reverse, training, w_ch=w_ch)


def lstm_backward(dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates, cs, w_ch=None):
    return _runner.lstm_backward(dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates, cs,
                                 w_ch=w_ch)


def gru_forward(xg, h0, w_hh, b_hh, lengths, reverse, training):
    return _runner.gru_forward(xg, h0, w_hh, b_hh, lengths, reverse, training)


def gru_backward(dy, h0, w_hh, lengths, reverse, y, saved):
    return _runner.gru_backward(dy, h0, w_hh, lengths, reverse, y, saved)


def rnn_forward(xg, h0, w_hh, lengths, reverse, relu):
    return _runner.rnn_forward(xg, h0, w_hh, lengths, reverse, relu)


def rnn_backward(dy, h0, w_hh, lengths, reverse, relu, y):
    return _runner.rnn_backward(dy, h0, w_hh, lengths, reverse, relu, y)
