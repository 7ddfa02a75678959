"""The compiled CPU backend: fastrnn._C's fused kernels behind the backend contract.

The kernels take raw pointers; this module allocates every output with torch,
makes sure each input is a dense tensor of the dtype the kernel reads, and passes
``tensor.data_ptr()``. See ``fastrnn.backends`` for the contract and
``csrc/common/rnn_params.h`` for the kernels' view of the same shapes.
"""
from __future__ import annotations

import os
import threading

import torch
import torch.utils.dlpack

from .. import _env
from ._common import ptr
from .._validation import require_tensors

_C = None
_IMPORT_ERROR = None
DISABLE_ENV = "FASTRNN_DISABLE_EXTENSION"
ISA_ENV = "FASTRNN_CPU_ISA"
_POOL_ENV = "FASTRNN_CPU_POOL_MB"

try:
    from .. import _C  # noqa: F811
except Exception as exc:  # not built, or built for another platform
    _IMPORT_ERROR = exc
else:
    _isa = os.environ.get(ISA_ENV, "").strip().lower()
    if _isa and _isa != "auto":
        _C.set_isa(_isa)
    if os.environ.get(_POOL_ENV, "").strip():
        _C.pool_set_limit(int(float(os.environ[_POOL_ENV]) * 2**20))


PEEPHOLES = True  # lstm_forward/lstm_backward take w_ch (the backend contract)


def _disabled():
    return _env.flag(DISABLE_ENV)


def shadowed_build():
    """Where an installed fastrnn with a compiled ``_C`` lives when the fastrnn imported here
    (e.g. a source checkout, first on sys.path when Python starts in it) has none: the
    imported tree shadows that build. None otherwise."""
    if _C is not None:
        return None
    try:
        from importlib import metadata
        dist = metadata.distribution("fastrnn")
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # fastrnn/
        for f in dist.files or ():
            name = str(f)
            if name.startswith("fastrnn/_C") and name.endswith((".so", ".pyd")):
                installed = os.path.dirname(os.path.abspath(str(dist.locate_file(f))))
                if installed != here and os.path.exists(os.path.join(installed, os.path.basename(name))):
                    return installed
    except Exception:  # no installed distribution, or unreadable metadata
        return None
    return None


def unavailable_reason():
    if _disabled():
        return f"disabled by the environment variable {DISABLE_ENV}"
    if _C is None:
        shadow = shadowed_build()
        if shadow:
            here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            return (f"fastrnn was imported from {here}, which has no compiled extension, "
                    f"while the installed fastrnn at {shadow} has one: the source tree shadows "
                    "the installed build (Python started in the checkout puts it first on "
                    "sys.path). Run from outside the checkout (`pytest`, not `python -m "
                    "pytest`), or install for development in editable mode: "
                    "`pip install --no-build-isolation -e .`")
        return ("the compiled extension fastrnn._C is not built or failed to import "
                f"({_IMPORT_ERROR}); reinstall with `pip install .` from the fastrnn source tree "
                "(needs a C++17 compiler; CMake and pybind11 come from the build requirements)")
    return None


def isa():
    """The instruction-set build of the kernels in use: 'amxbf16' (the 'avx512bf16' build with
    the bfloat16 kernels' recurrent GEMMs on AMX-BF16 tiles), 'avx512bf16' (the AVX-512 build
    plus the bfloat16 sequence kernels on AVX512-BF16), 'avx512', 'avx2' or 'generic'."""
    return _C.isa() if _C is not None else None


def supported_isas():
    return list(_C.supported_isas()) if _C is not None else []


def set_isa(name):
    """Force one instruction-set build ('auto' restores the best)."""
    _C.set_isa(name)


_DTYPES = (torch.float32, torch.float64)


def _check(*tensors):
    dtype = tensors[0].dtype
    for t in tensors:
        if t is None:
            continue
        if t.dtype != dtype:
            raise TypeError(f"the cpu backend needs one dtype for all tensors, got {dtype} and {t.dtype}")
        if t.device.type != "cpu":
            raise ValueError(f"the cpu backend needs CPU tensors, got one on {t.device}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"the cpu backend supports float32 and float64, got {t.dtype}")


def _dense(t):
    """A contiguous ``t``; a copy goes into pooled memory (e.g. the expanded ones that
    ``output.sum()`` backpropagates: a fresh copy would pay page faults every step)."""
    if t is None or t.is_contiguous():
        return t
    if t.dtype not in _DTYPES:
        return t.contiguous()  # rejected by _check with a clear message
    out = _empty(*t.shape, like=t)
    out.copy_(t)
    return out




def _lengths(lengths, T, N):
    if lengths is None:
        return None
    lengths = lengths.to(device="cpu", dtype=torch.int64).contiguous()
    if lengths.shape != (N,):
        raise ValueError(f"lengths must have shape ({N},), got {tuple(lengths.shape)}")
    return lengths


def _threads():
    return max(1, torch.get_num_threads())


class DenormalsFlushed:
    """Context: denormals flushed to zero (x86 FTZ/DAZ) in every thread of the caller's
    OpenMP team, the threads torch's intra-op work and BLAS run on, restored on exit.
    fastrnn's backward runs its weight- and input-gradient GEMMs on the gate gradients of
    its kernels inside it: gradients that vanish back through a long sequence are tiny, and
    their products in a GEMM land in the denormal range, where every instruction costs
    ~100 cycles on Intel cores (the kernels themselves flush; see docs/cpu-backend.md)."""

    __slots__ = ("threads",)

    def __enter__(self):
        self.threads = _threads()
        _C.team_flush_denormals(self.threads, True)
        return self

    def __exit__(self, *exc):
        _C.team_flush_denormals(self.threads, False)
        return False


def _empty(*shape, like):
    """Uninitialised output memory from the extension's buffer pool (blocks come back
    when torch frees the tensor, so a training loop stops paying first-touch page
    faults for its saved activations and gate gradients every step)."""
    return torch.utils.dlpack.from_dlpack(_C.pooled_empty(list(shape), like.element_size()))


_POOL_MIN_BYTES = 1 << 20


def _out(*shape, like):
    """Output memory: from the pool (``_empty``) when it is large enough for first-touch page
    faults to matter, else plain ``torch.empty`` (malloc reuses small blocks itself, and the
    pool's DLPack hand-over costs a few microseconds a tensor: a visible share of a short call)."""
    numel = 1
    for s in shape:
        numel *= s
    if numel * like.element_size() < _POOL_MIN_BYTES:
        return torch.empty(shape, dtype=like.dtype)
    return _empty(*shape, like=like)


def pool_cached_bytes():
    """Bytes of freed output blocks the CPU kernels keep for reuse."""
    return _C.pool_cached_bytes() if _C is not None else 0


def empty_cache():
    """Give every cached output block and every cached packed weight back to the
    operating system."""
    if _C is not None:
        _C.pack_cache_release()  # first: its packed buffers go back to the pool
        _C.pool_release()


def pack_cache_info():
    """The packed-weight cache: ``bytes`` held (packed weights plus the source copies a
    hit is checked against), ``entries``, ``limit``, and ``hits``/``misses`` since the
    last release. The kernels pack W_hh (and W_hr) for their fused GEMM on every call; a
    hit skips that when the weights' bytes equal those of an earlier call. Limit from
    ``$FASTRNN_CPU_PACK_CACHE_MB`` (default 64)."""
    if _C is None:
        return {"bytes": 0, "entries": 0, "limit": 0, "hits": 0, "misses": 0}
    return dict(_C.pack_cache_info())


def set_pack_cache_limit(megabytes):
    """Keep at most this many MB of packed weights across calls (0 turns the cache off)."""
    _C.pack_cache_set_limit(int(megabytes * 2**20))


def set_pool_limit(megabytes):
    """Keep at most this many MB of freed output blocks (0 disables the pool's caching)."""
    _C.pool_set_limit(int(megabytes * 2**20))


def _bf16_recurrence(xg, w_hr=None):
    """Whether a float32 forward (or its backward: ``xg`` is then dy) runs its recurrence on
    the bfloat16 kernels (training records in the float32 kernels' layout): a call under CPU
    autocast to bfloat16
    (``_memory.bf16_projections``; autocast rounds the recurrent matmul's operands, as
    torch.nn's layers do under it), the 'avx512bf16' or 'amxbf16' build, no projection."""
    from .. import _memory
    return (xg.dtype == torch.float32 and w_hr is None and _memory.bf16_projections_on()
            and bf16_available())


def _bf16_forward(kind, xg, h0, c0, w_hh, b_hh, w_ch, lengths, reverse, y, cn, gates, cs):
    T, N, _ = xg.shape
    H = w_hh.shape[1]
    w16 = w_hh.to(torch.bfloat16)
    hn = torch.empty((N, H), dtype=torch.float32)
    _C.bf16_seq_forward(kind, T, N, H, ptr(xg), False, ptr(h0), _opt_ptr(c0), ptr(w16),
                        _opt_ptr(b_hh), _opt_ptr(w_ch), ptr(lengths), bool(reverse), 0,
                        ptr(hn), _opt_ptr(cn), _threads(), ptr(y), _opt_ptr(gates),
                        _opt_ptr(cs))


def _bf16_backward(kind, dy, dcn, h0, c0, w_hh, w_ch, lengths, reverse, y, gates, cs, G):
    """The backward of a layer-direction whose forward ran ``_bf16_forward`` (the caller's
    ``_bf16_recurrence``): bf16 recurrent GEMMs, fp32 epilogue (csrc/cpu/bf16.h). The gate
    gradients' bf16 rounding, which the kernels write beside them, is remembered for the
    weight-gradient GEMMs that follow (``_memory.remember_bf16``), and their sums over steps
    and rows for the bias gradients (``_memory.remember_sums``)."""
    from .. import _memory
    T, N, H = dy.shape
    w16 = w_hh.to(torch.bfloat16)
    dxg = _out(T, N, G * H, like=dy)
    dxg16 = torch.empty((T, N, G * H), dtype=torch.bfloat16)
    dh0 = _out(N, H, like=dy)
    dc0 = _out(N, H, like=dy) if kind == 0 else None
    db = torch.empty(G * H, dtype=torch.float32)  # the bias gradients, summed in the kernel
    db_h = torch.empty(G * H, dtype=torch.float32) if kind == 1 else None
    _C.bf16_seq_backward(kind, T, N, H, ptr(dy), _opt_ptr(dcn), ptr(h0), _opt_ptr(c0), ptr(w16),
                         _opt_ptr(w_ch), ptr(lengths), bool(reverse), ptr(y), _opt_ptr(gates),
                         _opt_ptr(cs), ptr(dxg), ptr(dxg16), ptr(dh0), _opt_ptr(dc0),
                         _threads(), ptr(db), _opt_ptr(db_h))
    _memory.remember_bf16(dxg, dxg16)
    _memory.remember_sums(dxg, x=db, h=db_h)
    return dxg, dh0, dc0


def lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, reverse, training, w_ch=None):
    require_tensors("lstm_forward", xg=xg, h0=h0, c0=c0, w_hh=w_hh)
    xg, h0, c0, w_hh, w_hr, w_ch = map(_dense, (xg, h0, c0, w_hh, w_hr, w_ch))
    _check(xg, h0, c0, w_hh, w_hr, w_ch)
    T, N, G = xg.shape
    H = G // 4
    R = w_hh.shape[1]
    lengths = _lengths(lengths, T, N)
    y = _out(T, N, R, like=xg)
    cn = _out(N, H, like=xg)
    gates = _out(T, N, 4 * H, like=xg) if training else xg.new_empty(0)
    cs = _out(T, N, H, like=xg) if training else xg.new_empty(0)
    if _bf16_recurrence(xg, w_hr):
        _bf16_forward(0, xg, h0, c0, w_hh, None, w_ch, lengths, reverse, y, cn,
                      gates if training else None, cs if training else None)
        return y, cn, gates, cs
    _C.lstm_forward(xg.element_size(), T, N, H, R, ptr(xg), ptr(h0), ptr(c0), ptr(w_hh),
                    ptr(w_hr), ptr(lengths), bool(reverse), ptr(y), ptr(cn), ptr(gates),
                    ptr(cs), _threads(), ptr(w_ch))
    return y, cn, gates, cs


def lstm_backward(dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates, cs, w_ch=None):
    require_tensors("lstm_backward", dy=dy, dcn=dcn, h0=h0, c0=c0, w_hh=w_hh, y=y, gates=gates, cs=cs)
    dy, dcn, h0, c0, w_hh, w_hr, y, gates, cs, w_ch = map(
        _dense, (dy, dcn, h0, c0, w_hh, w_hr, y, gates, cs, w_ch))
    _check(dy, dcn, h0, c0, w_hh, w_hr, y, gates, cs, w_ch)
    T, N, R = dy.shape
    H = c0.shape[1]
    lengths = _lengths(lengths, T, N)
    dgates = _out(T, N, 4 * H, like=dy)
    dh0 = _out(N, R, like=dy)
    dc0 = _out(N, H, like=dy)
    if T and N and _bf16_recurrence(dy, w_hr):
        dgates, dh0, dc0 = _bf16_backward(0, dy, dcn, h0, c0, w_hh, w_ch, lengths, reverse, y,
                                          gates, cs, 4)
        return dgates, dh0, dc0, dy.new_empty(0)
    dr = _out(T, N, R, like=dy) if w_hr is not None else dy.new_empty(0)
    _C.lstm_backward(dy.element_size(), T, N, H, R, ptr(dy), ptr(dcn), ptr(h0), ptr(c0),
                     ptr(w_hh), ptr(w_hr), ptr(lengths), bool(reverse), ptr(y), ptr(gates),
                     ptr(cs), ptr(dgates), ptr(dh0), ptr(dc0), ptr(dr), _threads(), ptr(w_ch))
    return dgates, dh0, dc0, dr


def gru_forward(xg, h0, w_hh, b_hh, lengths, reverse, training):
    require_tensors("gru_forward", xg=xg, h0=h0, w_hh=w_hh, b_hh=b_hh)
    xg, h0, w_hh, b_hh = map(_dense, (xg, h0, w_hh, b_hh))
    _check(xg, h0, w_hh, b_hh)
    T, N, G = xg.shape
    H = G // 3
    lengths = _lengths(lengths, T, N)
    y = _out(T, N, H, like=xg)
    saved = _out(T, N, 4 * H, like=xg) if training else xg.new_empty(0)
    if _bf16_recurrence(xg):
        _bf16_forward(1, xg, h0, None, w_hh, b_hh, None, lengths, reverse, y, None,
                      saved if training else None, None)
        return y, saved
    _C.gru_forward(xg.element_size(), T, N, H, ptr(xg), ptr(h0), ptr(w_hh), ptr(b_hh),
                   ptr(lengths), bool(reverse), ptr(y), ptr(saved), _threads())
    return y, saved


def gru_backward(dy, h0, w_hh, lengths, reverse, y, saved):
    require_tensors("gru_backward", dy=dy, h0=h0, w_hh=w_hh, y=y, saved=saved)
    dy, h0, w_hh, y, saved = map(_dense, (dy, h0, w_hh, y, saved))
    _check(dy, h0, w_hh, y, saved)
    T, N, H = dy.shape
    lengths = _lengths(lengths, T, N)
    if T and N and _bf16_recurrence(dy):
        return _bf16_backward(1, dy, None, h0, None, w_hh, None, lengths, reverse, y, saved, None,
                              3)[:2]
    dxg = _out(T, N, 3 * H, like=dy)
    dh0 = _out(N, H, like=dy)
    _C.gru_backward(dy.element_size(), T, N, H, ptr(dy), ptr(h0), ptr(w_hh), ptr(lengths),
                    bool(reverse), ptr(y), ptr(saved), ptr(dxg), ptr(dh0), _threads())
    return dxg, dh0


def rnn_forward(xg, h0, w_hh, lengths, reverse, relu):
    require_tensors("rnn_forward", xg=xg, h0=h0, w_hh=w_hh)
    xg, h0, w_hh = map(_dense, (xg, h0, w_hh))
    _check(xg, h0, w_hh)
    T, N, H = xg.shape
    lengths = _lengths(lengths, T, N)
    y = _out(T, N, H, like=xg)
    if _bf16_recurrence(xg):
        _bf16_forward(3 if relu else 2, xg, h0, None, w_hh, None, None, lengths, reverse, y,
                      None, None, None)
        return y
    _C.rnn_forward(xg.element_size(), T, N, H, ptr(xg), ptr(h0), ptr(w_hh), ptr(lengths),
                   bool(reverse), bool(relu), ptr(y), _threads())
    return y


def rnn_backward(dy, h0, w_hh, lengths, reverse, relu, y):
    require_tensors("rnn_backward", dy=dy, h0=h0, w_hh=w_hh, y=y)
    dy, h0, w_hh, y = map(_dense, (dy, h0, w_hh, y))
    _check(dy, h0, w_hh, y)
    T, N, H = dy.shape
    lengths = _lengths(lengths, T, N)
    if T and N and _bf16_recurrence(dy):
        return _bf16_backward(3 if relu else 2, dy, None, h0, None, w_hh, None, lengths, reverse,
                              y, None, None, 1)[:2]
    dxg = _out(T, N, H, like=dy)
    dh0 = _out(N, H, like=dy)
    _C.rnn_backward(dy.element_size(), T, N, H, ptr(dy), ptr(h0), ptr(w_hh), ptr(lengths),
                    bool(reverse), bool(relu), ptr(y), ptr(dxg), ptr(dh0), _threads())
    return dxg, dh0


# ------------------------------------------------------------------ regularised recurrences
# Not part of the backend contract: fastrnn.regularized calls these for zoneout and
# recurrent dropout (csrc/common/rnn_params.h, RegForwardParams).

REG_KINDS = {"LSTM": 0, "GRU": 1, "RNN_TANH": 2, "RNN_RELU": 3}


def reg_forward(kind, xg, h0, c0, w_hh, b_hh, rd, zh, zc, zh_p, zc_p, lengths, reverse,
                training):
    """One layer-direction with zoneout / recurrent dropout on the fused kernels ->
    (y, c_n|None, gates|None, cs|None, cand|None): the last three are the backward's
    records (``training``). ``kind`` a key of ``REG_KINDS``; masks dense, the layer's dtype
    (rd [N, H] scaled, zh/zc [T, N, H] of 0/1) or None (then zh_p/zc_p mix, 0: off)."""
    k = REG_KINDS[kind]
    T, N, GH = xg.shape
    H = w_hh.shape[1]
    lstm = k == 0
    y = _out(T, N, H, like=xg)
    cn = _out(N, H, like=xg) if lstm else None
    gates = _out(T, N, 4 * H, like=xg) if training and k <= 1 else None
    cs = _out(T, N, H, like=xg) if training and lstm else None
    cand = _out(T, N, H, like=xg) if training and k != 1 else None
    _C.reg_forward(xg.element_size(), k, T, N, H, ptr(xg), ptr(h0), _opt_ptr(c0), ptr(w_hh),
                   _opt_ptr(b_hh), _opt_ptr(rd), _opt_ptr(zh), _opt_ptr(zc), float(zh_p),
                   float(zc_p), _opt_ptr(lengths), bool(reverse), ptr(y), _opt_ptr(cn),
                   _opt_ptr(gates), _opt_ptr(cs), _opt_ptr(cand), _threads())
    return y, cn, gates, cs, cand


def reg_backward(kind, dy, dcn, h0, c0, w_hh, rd, zh, zc, zh_p, zc_p, lengths, reverse, y,
                 gates, cs, cand):
    """The backward of ``reg_forward`` -> (dxg [T, N, G*H], dhg [T, N, 3H] (GRU: the hidden
    part's gradient) or None, dh0, dc0|None)."""
    k = REG_KINDS[kind]
    T, N, H = dy.shape
    G = (4, 3, 1, 1)[k]
    dxg = _out(T, N, G * H, like=dy)
    dhg = _out(T, N, 3 * H, like=dy) if k == 1 else None
    dh0 = _out(N, H, like=dy)
    dc0 = _out(N, H, like=dy) if k == 0 else None
    _C.reg_backward(dy.element_size(), k, T, N, H, ptr(dy), _opt_ptr(dcn), ptr(h0),
                    _opt_ptr(c0), ptr(w_hh), _opt_ptr(rd), _opt_ptr(zh), _opt_ptr(zc),
                    float(zh_p), float(zc_p), _opt_ptr(lengths), bool(reverse), ptr(y),
                    _opt_ptr(gates), _opt_ptr(cs), _opt_ptr(cand), ptr(dxg), _opt_ptr(dhg),
                    ptr(dh0), _opt_ptr(dc0), _threads())
    return dxg, dhg, dh0, dc0


# ------------------------------------------------------------------ one fused cell step
# Not part of the backend contract: fastrnn.fastpath calls these for cells and one-step
# layer calls in plain eager mode (see csrc/common/rnn_params.h, CellForwardParams).

CELL_KINDS = {"LSTM": 0, "GRU": 1, "RNN_TANH": 2, "RNN_RELU": 3}
_LSTM, _GRU = CELL_KINDS["LSTM"], CELL_KINDS["GRU"]


def _opt_ptr(t):
    """``ptr`` for the step path's tensors, never empty: no numel() call per argument."""
    return 0 if t is None else t.data_ptr()


def cell_forward(kind, x, h, c, w_ih, w_hh, b_ih, b_hh, training, w_ch=None, round_bf16=False):
    """One step, input projection fused in. x [N, I] (rows at any stride, its last
    dimension dense), h/c [N, H] (c: LSTM only), w_ch [3H] (LSTM peepholes, or None), the
    others contiguous, CPU, one float dtype. Returns (h_out, c_out|None, saved|None);
    ``saved`` ([N, 4H], LSTM and GRU) only when ``training``. ``round_bf16`` (float32):
    the products read x, w_ih and w_hh rounded to bfloat16 (autocast's operands)."""
    N, I = x.shape
    # Rows read in place (e.g. series[:, t] of a batch-first series): no copy to allocate
    # and write; measured 3-8% faster than a contiguous copy first at N=64, I=100, H=128.
    x_row = x.stride(0) if N > 1 else I
    if x.stride(1) != 1 or x_row < I:  # (broadcast or overlapping rows: made dense)
        x = x.contiguous()
        x_row = I
    H = w_hh.shape[1]
    dtype = x.dtype
    h_out = torch.empty((N, H), dtype=dtype)
    c_out = torch.empty((N, H), dtype=dtype) if kind == _LSTM else None
    saved = torch.empty((N, 4 * H), dtype=dtype) if training and kind <= _GRU else None
    _C.cell_forward(x.element_size(), kind, N, I, H, x.data_ptr(), h.data_ptr(),
                    0 if c is None else c.data_ptr(), w_ih.data_ptr(), w_hh.data_ptr(),
                    0 if b_ih is None else b_ih.data_ptr(), 0 if b_hh is None else b_hh.data_ptr(),
                    h_out.data_ptr(), 0 if c_out is None else c_out.data_ptr(),
                    0 if saved is None else saved.data_ptr(), max(1, torch.get_num_threads()),
                    1, False, 0, x_row, _opt_ptr(w_ch), 0, round_bf16)
    return h_out, c_out, saved


def cell_forward_bf16(kind, x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch=None):
    """``cell_forward`` for inference on bfloat16 x (rows at any stride, its last dimension
    dense), h and c with float32 weights, or bfloat16 ones (all of them: a bfloat16
    module's parameters, read widened in the kernel): the kernel reads the activations
    into float32 and rounds its results back (one call, no tensor conversions) ->
    (h_out, c_out|None) in bfloat16."""
    N, I = x.shape
    x_row = x.stride(0) if N > 1 else I
    if x.stride(1) != 1 or x_row < I:
        x = x.contiguous()
        x_row = I
    H = w_hh.shape[1]
    h_out = torch.empty((N, H), dtype=torch.bfloat16)
    c_out = torch.empty((N, H), dtype=torch.bfloat16) if kind == _LSTM else None
    _C.cell_forward_bf16(kind, N, I, H, x.data_ptr(), h.data_ptr(), _opt_ptr(c),
                         w_ih.data_ptr(), w_hh.data_ptr(), _opt_ptr(b_ih), _opt_ptr(b_hh),
                         h_out.data_ptr(), _opt_ptr(c_out), max(1, torch.get_num_threads()),
                         1, False, 0, x_row, _opt_ptr(w_ch), 0, w_hh.dtype == torch.bfloat16)
    return h_out, c_out


def bf16_available():
    """Whether the bfloat16 sequence kernels run: built in, and the 'avx512bf16' build (a CPU
    with AVX512-BF16) or the 'amxbf16' one (AMX-BF16 too) in use (``FASTRNN_CPU_ISA`` / ``set_isa`` can turn them off)."""
    return _C is not None and hasattr(_C, "bf16_available") and bool(_C.bf16_available())


_BF16_KINDS = {"LSTM": 0, "PEEPHOLE": 0, "GRU": 1, "RNN_TANH": 2, "RNN_RELU": 3}


def bf16_seq_forward(mode, xg, h0, c0, w_hh, b_hh, w_ch, lengths, reverse, x=None, w_ih=None,
                     bias=None):
    """Inference of one layer-direction on the bfloat16 kernels (csrc/cpu/bf16.h): xg
    [T, N, G*H] bfloat16 (the input projection with its biases; GRU's b_hh apart), or
    instead x [T, N, I] and w_ih [G*H, I] bfloat16 with bias [G*H] float32 (LSTM, RNN:
    b_ih + b_hh; GRU: b_ih) for the projection fused into each step's GEMM; h0/c0 [N, H]
    float32, w_hh [G*H, H] bfloat16, b_hh [3H] (GRU) and w_ch [3H] (peepholes) float32 ->
    (y [T, N, H] bfloat16, h_n [N, H] float32, c_n [N, H] float32 or None)."""
    H = w_hh.shape[1]
    kind = _BF16_KINDS[mode]
    lstm = kind == 0
    for name, t, dtype in (("xg", xg, torch.bfloat16), ("x", x, torch.bfloat16),
                           ("w_ih", w_ih, torch.bfloat16), ("w_hh", w_hh, torch.bfloat16),
                           ("h0", h0, torch.float32), ("c0", c0, torch.float32),
                           ("b_hh", b_hh, torch.float32), ("w_ch", w_ch, torch.float32),
                           ("bias", bias, torch.float32)):
        if t is not None and (t.dtype != dtype or t.device.type != "cpu"):
            raise TypeError(f"bf16_seq_forward: {name} must be a {dtype} CPU tensor, got "
                            f"{t.dtype} on {t.device}")
    if (xg is None) == (x is None) or (x is None) != (w_ih is None):
        raise ValueError("bf16_seq_forward: give xg, or x with w_ih")
    I = 0
    if x is not None and x.shape[-1] % 2:  # whole bf16 pairs: a zero column on both
        x = torch.nn.functional.pad(x, (0, 1))
        w_ih = torch.nn.functional.pad(w_ih, (0, 1))
    xg, x, w_ih, bias, h0, c0, w_hh, b_hh, w_ch = (
        None if t is None else t.contiguous()
        for t in (xg, x, w_ih, bias, h0, c0, w_hh, b_hh, w_ch))
    T, N = (xg if x is None else x).shape[:2]
    if x is not None:
        I = x.shape[-1]
    lengths = _lengths(lengths, T, N)
    y = torch.empty((T, N, H), dtype=torch.bfloat16)
    hn = torch.empty((N, H), dtype=torch.float32)
    cn = torch.empty((N, H), dtype=torch.float32) if lstm else None
    _C.bf16_seq_forward(kind, T, N, H, _opt_ptr(xg), True, h0.data_ptr(), _opt_ptr(c0),
                        w_hh.data_ptr(), _opt_ptr(b_hh), _opt_ptr(w_ch), _opt_ptr(lengths),
                        bool(reverse), y.data_ptr(), hn.data_ptr(), _opt_ptr(cn), _threads(),
                        0, 0, 0, _opt_ptr(x), I, _opt_ptr(w_ih), _opt_ptr(bias))
    return y, hn, cn


def cell_forward_seq(kind, x, h, c, w_ih, w_hh, b_ih, b_hh, reverse, w_ch=None, lengths=None,
                     zh_p=0.0, zc_p=0.0):
    """``T`` inference steps of ``cell_forward`` in one call, the state carried: x [T, N, I]
    (any strides over T and N; its last dimension dense) -> (y [T, N, H], c_n [N, H] or
    None). zh_p, zc_p: zoneout's eval expectation (0: none)."""
    T, N, I = x.shape
    x_step, x_row = x.stride(0) if T > 1 else N * I, x.stride(1) if N > 1 else I
    if x.stride(2) != 1 or x_step <= 0 or x_row < I:  # (broadcast or overlapping: made dense)
        x = x.contiguous()
        x_step, x_row = N * I, I
    H = w_hh.shape[1]
    dtype = x.dtype
    y = torch.empty((T, N, H), dtype=dtype)
    c_out = torch.empty((N, H), dtype=dtype) if kind == _LSTM else None
    _C.cell_forward(x.element_size(), kind, N, I, H, x.data_ptr(), h.data_ptr(),
                    0 if c is None else c.data_ptr(), w_ih.data_ptr(), w_hh.data_ptr(),
                    0 if b_ih is None else b_ih.data_ptr(), 0 if b_hh is None else b_hh.data_ptr(),
                    y.data_ptr(), 0 if c_out is None else c_out.data_ptr(), 0,
                    max(1, torch.get_num_threads()), T, bool(reverse), x_step, x_row, _opt_ptr(w_ch),
                    ptr(_lengths(lengths, T, N)), zh_p=float(zh_p), zc_p=float(zc_p))
    return y, c_out


def cell_backward(kind, dh_out, dc_out, h, c, h_out, c_out, saved, G, w_ch=None):
    """The pointwise backward of ``cell_forward``: (dpre_x [N, G*H], dpre_h [N, G*H] (GRU;
    else the same tensor as dpre_x), dc [N, H] (LSTM) or None, dh_direct [N, H] (GRU) or
    None, dw_ch [3H] (with w_ch) or None). The products with the weights are left to the
    caller (``cell_backward_all`` does them too)."""
    N, H = dh_out.shape
    dpre_x = dh_out.new_empty((N, G * H))
    gru = kind == _GRU
    dpre_h = dh_out.new_empty((N, G * H)) if gru else dpre_x
    dc = dh_out.new_empty((N, H)) if kind == _LSTM else None
    dh_direct = dh_out.new_empty((N, H)) if gru else None
    dw_ch = None if w_ch is None else dh_out.new_empty((3 * H,))
    _C.cell_backward(dh_out.element_size(), kind, N, H, dh_out.data_ptr(), _opt_ptr(dc_out),
                     _opt_ptr(h), _opt_ptr(c), _opt_ptr(h_out), _opt_ptr(c_out), _opt_ptr(saved),
                     dpre_x.data_ptr(), dpre_h.data_ptr() if gru else 0, _opt_ptr(dc),
                     _opt_ptr(dh_direct), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, _opt_ptr(w_ch),
                     _opt_ptr(dw_ch))
    return dpre_x, dpre_h, dc, dh_direct, dw_ch


_scratch = threading.local()


def _scratch_ptr(numel, dtype):
    """The address of a per-thread scratch buffer of at least ``numel`` elements (kernel
    workspace that never leaves the call)."""
    key = (dtype, "scratch")
    buf = getattr(_scratch, "bufs", None)
    if buf is None:
        buf = _scratch.bufs = {}
    t = buf.get(key)
    if t is None or t.numel() < numel:
        t = buf[key] = torch.empty((max(numel, 4096),), dtype=dtype)
    return t.data_ptr()


def cell_backward_all(kind, dh_out, dc_out, x, h, c, w_ih, w_hh, h_out, c_out, saved, G,
                      need_dx, has_bias, w_ch=None):
    """The whole backward of ``cell_forward`` in one call, one pass over the weights (for
    few rows): (dx [N, I] or None, dh [N, H], dc [N, H] or None, dw_ih, dw_hh, db_ih|None,
    db_hh|None, dw_ch|None)."""
    N, H = dh_out.shape
    I = x.shape[1]
    GH = G * H
    dtype = dh_out.dtype
    sp = _scratch_ptr(2 * N * GH + 2 * N * H, dtype)  # dpre_x, dpre_h, dh_direct
    es = dh_out.element_size()
    gru = kind == _GRU
    dx = torch.empty((N, I), dtype=dtype) if need_dx else None
    dh = torch.empty((N, H), dtype=dtype)
    dc = torch.empty((N, H), dtype=dtype) if kind == _LSTM else None
    dw_ih = torch.empty((GH, I), dtype=dtype)
    dw_hh = torch.empty((GH, H), dtype=dtype)
    db_ih = torch.empty((GH,), dtype=dtype) if has_bias else None
    # LSTM and RNN: both biases get the same gradient. One tensor serves both (autograd
    # copies a gradient it is handed twice before keeping it as a .grad).
    db_hh = (torch.empty((GH,), dtype=dtype) if gru else db_ih) if has_bias else None
    dw_ch = None if w_ch is None else torch.empty((3 * H,), dtype=dtype)
    _C.cell_backward(es, kind, N, H, dh_out.data_ptr(), _opt_ptr(dc_out), h.data_ptr(),
                     _opt_ptr(c), h_out.data_ptr(), _opt_ptr(c_out), _opt_ptr(saved),
                     sp, sp + N * GH * es if gru else 0, _opt_ptr(dc),
                     sp + 2 * N * GH * es if gru else 0, I, x.data_ptr(), w_ih.data_ptr(),
                     w_hh.data_ptr(), _opt_ptr(dx), dh.data_ptr(), dw_ih.data_ptr(),
                     dw_hh.data_ptr(), _opt_ptr(db_ih), _opt_ptr(db_hh), _opt_ptr(w_ch),
                     _opt_ptr(dw_ch))
    return dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_ch
