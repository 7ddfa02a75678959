"""numba backend: the CPU kernels when the compiled extension is absent.

Implements the backend contract of ``fastrnn.backends`` (read its docstring) on CPU
tensors of float32/float64. The kernels live in ``_numba_kernels`` (imported lazily,
so ``import fastrnn`` never needs numba); this module only converts torch tensors to
numpy views, allocates the outputs (large ones from ``fastrnn._pool``) and sets the
thread count.

Threads: numba's parallel kernels run on numba's thread pool, sized to
``torch.get_num_threads()``. Unless ``$NUMBA_THREADING_LAYER`` says otherwise, the
pool is numba's ``workqueue`` layer: its ``omp`` layer shares torch's bundled
libgomp, and once it has run, torch's own CPU ops get many times slower (its worker
threads compete with torch's). ``workqueue`` is not re-entrant, so kernel
launches are serialised with a lock (each launch uses every thread anyway).

Compilation: every kernel is ``@njit(cache=True)``: the first call on a machine
compiles it (seconds per kernel and dtype, so the first use of all of them takes
a while), later processes load it from numba's cache in ``__pycache__`` (or
``$NUMBA_CACHE_DIR``) far faster.

Each call has a fixed overhead (argument typing and the parallel launch), which
matters only for step-by-step use (cells in a Python loop) at tiny sizes.
"""
import os
import threading

import torch

from .. import _pool

_kernels = None
_lock = threading.Lock()
_launch_lock = threading.Lock()  # workqueue: one parallel launch at a time
_import_error = None


PEEPHOLES = True  # lstm_forward/lstm_backward take w_ch (the backend contract)


def _import_numba_reason():
    global _import_error
    if _import_error is None:
        try:
            import numba  # noqa: F401
            _import_error = ""
        except Exception as exc:  # ImportError, or a broken install (llvmlite ABI, ...)
            _import_error = (f"numba cannot be imported ({type(exc).__name__}: {exc}); "
                             f"install it with `pip install numba`")
    return _import_error or None


def unavailable_reason():
    """None when numba can be imported, else why not and what to do."""
    return _import_numba_reason()


def _k():
    """The kernels module, imported on first use."""
    global _kernels
    if _kernels is None:
        with _lock:
            if _kernels is None:
                reason = _import_numba_reason()
                if reason:
                    raise RuntimeError(reason)
                _choose_threading_layer()
                from . import _numba_kernels
                _kernels = _numba_kernels
    return _kernels


def _choose_threading_layer():
    import numba
    if "NUMBA_THREADING_LAYER" in os.environ or numba.config.THREADING_LAYER != "default":
        return  # the user chose
    try:
        numba.threading_layer()
        return  # already started by someone else's parallel code: too late to choose
    except ValueError:
        pass
    numba.config.THREADING_LAYER = "workqueue"


def _set_threads():
    import numba
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


def _run(kernel, *args):
    with _launch_lock:
        kernel(*args, _set_threads())


def _np(t):
    """numpy view of a CPU tensor (no copy when contiguous, as the contract promises;
    a non-contiguous one is copied into pooled memory)."""
    t = t.detach()
    if not t.is_contiguous():
        t = _pool.empty(*t.shape, dtype=t.dtype).copy_(t)
    return t.numpy()


def _out(*shape, like):
    """An output of the kernels: [T, N, ...] activations and gradients come from
    ``fastrnn._pool`` (no first-touch page faults every training step)."""
    return _pool.empty(*shape, dtype=like.dtype)


def _lens(lengths, T, N):
    if lengths is None:
        return torch.full((N,), T, dtype=torch.int64).numpy()
    return lengths.detach().to(torch.int64).contiguous().numpy()


def _dummy2(like):
    return like.new_empty(0, 0).numpy()


def _dummy3(like):
    return like.new_empty(0, 0, 0).numpy()


def _transposed(w):
    """w^T as a new contiguous numpy array (the backward matmuls read it row-wise)."""
    return w.detach().t().contiguous().numpy()


# ----------------------------------------------------------------------------- LSTM

def _peepholes(w_ch, like):
    """(array, flag) for the kernels: the [3H] peephole weights, or a dummy and False."""
    if w_ch is None:
        return like.new_zeros(1).numpy(), False
    return _np(w_ch), True


def lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, reverse, training, w_ch=None):
    k = _k()
    T, N, G = xg.shape
    H = G // 4
    R = h0.shape[-1]
    y = _out(T, N, R, like=xg)
    cn = xg.new_empty(N, H)
    if training:
        gates = _out(T, N, 4 * H, like=xg)
        cs = _out(T, N, H, like=xg)
        gates_np, cs_np = gates.numpy(), cs.numpy()
    else:
        gates = xg.new_empty(0)
        cs = xg.new_empty(0)
        gates_np, cs_np = _dummy3(xg), _dummy3(xg)
    use_proj = w_hr is not None
    _run(k.lstm_forward, _np(xg), _np(h0), _np(c0), _np(w_hh),
         _np(w_hr) if use_proj else _dummy2(xg), use_proj, *_peepholes(w_ch, xg),
         _lens(lengths, T, N), bool(reverse), bool(training),
         y.numpy(), cn.numpy(), gates_np, cs_np)
    return y, cn, gates, cs


def lstm_backward(dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates, cs, w_ch=None):
    k = _k()
    T, N, R = dy.shape
    H = c0.shape[-1]
    dgates = _out(T, N, 4 * H, like=dy)
    dh0 = dy.new_empty(N, R)
    dc0 = dy.new_empty(N, H)
    use_proj = w_hr is not None
    dr = _out(T, N, R, like=dy) if use_proj else dy.new_empty(0)
    _run(k.lstm_backward, _np(dy), _np(dcn), _np(c0), _transposed(w_hh),
         _transposed(w_hr) if use_proj else _dummy2(dy), use_proj, *_peepholes(w_ch, dy),
         _lens(lengths, T, N), bool(reverse), _np(gates), _np(cs),
         dgates.numpy(), dh0.numpy(), dc0.numpy(),
         dr.numpy() if use_proj else _dummy3(dy))
    return dgates, dh0, dc0, dr


# ----------------------------------------------------------------------------- GRU

def gru_forward(xg, h0, w_hh, b_hh, lengths, reverse, training):
    k = _k()
    T, N, G = xg.shape
    H = G // 3
    y = _out(T, N, H, like=xg)
    saved = _out(T, N, 4 * H, like=xg) if training else xg.new_empty(0)
    _run(k.gru_forward, _np(xg), _np(h0), _np(w_hh), _np(b_hh), _lens(lengths, T, N),
         bool(reverse), bool(training), y.numpy(),
         saved.numpy() if training else _dummy3(xg))
    return y, saved


def gru_backward(dy, h0, w_hh, lengths, reverse, y, saved):
    k = _k()
    T, N, H = dy.shape
    dxg = _out(T, N, 3 * H, like=dy)
    dh0 = dy.new_empty(N, H)
    _run(k.gru_backward, _np(dy), _np(h0), _transposed(w_hh), _lens(lengths, T, N),
         bool(reverse), _np(y), _np(saved), dxg.numpy(), dh0.numpy())
    return dxg, dh0


# ----------------------------------------------------------------------------- Elman RNN

def rnn_forward(xg, h0, w_hh, lengths, reverse, relu):
    k = _k()
    T, N, H = xg.shape
    y = _out(T, N, H, like=xg)
    _run(k.rnn_forward, _np(xg), _np(h0), _np(w_hh), _lens(lengths, T, N), bool(reverse),
         bool(relu), y.numpy())
    return y


def rnn_backward(dy, h0, w_hh, lengths, reverse, relu, y):
    k = _k()
    T, N, H = dy.shape
    dxg = _out(T, N, H, like=dy)
    dh0 = dy.new_empty(N, H)
    _run(k.rnn_backward, _np(dy), _transposed(w_hh), _lens(lengths, T, N), bool(reverse),
         bool(relu), _np(y), dxg.numpy(), dh0.numpy())
    return dxg, dh0
