"""Recurrence backends and the one place that chooses between them.

THE BACKEND CONTRACT
====================
A backend is a module exposing the six functions below. Each runs the recurrent
loop of ONE layer in ONE direction; everything around it (input projection, the
weight-gradient GEMMs, layers, directions, dropout, packing) is done once, in
``fastrnn.ops`` / ``fastrnn.functional``, for every backend alike.

Sizes: ``T`` steps, ``N`` batch, ``H`` hidden, ``R`` recurrent width (``R = proj_size``
for a projected LSTM, else ``R = H``). Every tensor argument is contiguous, of one
floating dtype (float32/float64; CUDA also float16/bfloat16) and on one device;
the op layer has validated shapes, dtypes and devices before calling.

``lengths``: ``None`` (every sequence is ``T`` long) or an int64 tensor ``[N]`` on the
same device as ``xg``, each value in ``[1, T]``, any order. Step ``t`` of sequence
``n`` is *valid* when ``t < lengths[n]``. On an invalid step the state is frozen:
nothing is computed and ``y[t, n]`` (and ``cs[t, n]``) repeat the state carried in.
Consequences the op layer relies on:
  * the state before step t is ``y[t-1]`` (forward) / ``y[t+1]`` (reverse), or ``h0``;
  * the final hidden state is ``y[T-1]`` (forward) or ``y[0]`` (reverse);
  * in backward, an invalid step passes ``dh`` (and ``dc``) through unchanged and
    writes ZEROS to its rows of the gate gradients (they feed weight-gradient GEMMs);
  * GRU: a training forward writes ZEROS to an invalid step's rows of ``saved`` (the
    backward's dW_hh multiplies dxg by r unmasked).
``reverse``: process ``t = T-1, ..., 0`` instead of ``0, ..., T-1``.
``training``: when False, the saved tensors (``gates``, ``cs``, ``saved``) may be
returned as empty tensors (numel 0) and need not be computed.

LSTM (gate order i, f, g, o as torch.nn):
  lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, reverse, training) -> (y, cn, gates, cs)
    xg    [T, N, 4H]  x @ W_ih^T + b_ih + b_hh (both biases already added)
    h0    [N, R]      c0 [N, H]
    w_hh  [4H, R]     w_hr [R, H] or None (no projection)
    y     [T, N, R]   h after step t (frozen on invalid steps)
    cn    [N, H]      c after the last processed step
    gates [T, N, 4H]  activated gates sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
    cs    [T, N, H]   c after step t (frozen on invalid steps)
    math: c' = f*c + i*g ; m = o*tanh(c') ; h' = m (no proj) or m @ w_hr^T
  lstm_backward(dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates, cs)
      -> (dgates, dh0, dc0, dr)
    dy     [T, N, R]  gradient w.r.t. y (the caller has folded dhn into it)
    dcn    [N, H]     gradient w.r.t. cn
    dgates [T, N, 4H] gradient w.r.t. the gate pre-activations (= w.r.t. xg)
    dh0    [N, R]     dc0 [N, H]
    dr     [T, N, R]  total gradient w.r.t. h after step t (only with w_hr, used
                      for dW_hr = dr^T m); empty tensor when w_hr is None
GRU (gate order r, z, n as torch.nn):
  gru_forward(xg, h0, w_hh, b_hh, lengths, reverse, training) -> (y, saved)
    xg    [T, N, 3H]  x @ W_ih^T + b_ih (NOT b_hh)
    h0    [N, H]      w_hh [3H, H]   b_hh [3H] (zeros when bias=False)
    y     [T, N, H]
    saved [T, N, 4H]  r, z, n and hn = (h @ W_hn^T + b_hn) of each step
    math: hg = h @ w_hh^T + b_hh ; r = sig(xg_r + hg_r) ; z = sig(xg_z + hg_z)
          n = tanh(xg_n + r * hg_n) ; h' = (1 - z) * n + z * h
  gru_backward(dy, h0, w_hh, lengths, reverse, y, saved) -> (dxg, dh0)
    dxg   [T, N, 3H]  gradient w.r.t. xg (pre-activations of r, z and of n's input
                      part); the gradient w.r.t. hg is dxg with its n block * r
    dh0   [N, H]
Peephole LSTM (backends with ``PEEPHOLES = True``: all four built-in ones): the LSTM
  functions with one more keyword argument, ``w_ch`` [3H] (p_i, p_f, p_o; None: plain LSTM)
    math: i = sig(pre_i + p_i*c) ; f = sig(pre_f + p_f*c) ; c' = f*c + i*g ;
          o = sig(pre_o + p_o*c') ; m = o*tanh(c')
    dgates includes the peepholes' terms; dW_ch is reduced by the op layer from dgates and cs.
Elman RNN (nonlinearity tanh or relu):
  rnn_forward(xg, h0, w_hh, lengths, reverse, relu) -> y
    xg [T, N, H] = x @ W_ih^T + b_ih + b_hh ; h' = act(xg + h @ w_hh^T)
  rnn_backward(dy, h0, w_hh, lengths, reverse, relu, y) -> (dxg, dh0)

Threads: CPU backends use ``torch.get_num_threads()`` threads.

CHOOSING A BACKEND
==================
Names: ``"cpu"`` (compiled fused C++ kernels, fastrnn._C), ``"cuda"`` (compiled
CUDA kernels, fastrnn._cuda), ``"numba"``, ``"reference"`` (pure PyTorch loop) and
``"auto"`` (the fastest available for the tensor's device: cuda for CUDA tensors;
cpu, then numba for CPU tensors; reference otherwise).

Precedence: the ``backend=`` argument of a module/call, then ``set_backend()``, then
``$FASTRNN_BACKEND``, then ``"auto"``. Asking for an unavailable backend raises
``BackendUnavailableError`` saying why and what to do; ``auto`` never raises.

``$FASTRNN_DISABLE_EXTENSION=1`` makes the compiled extensions (``cpu`` and
``cuda``) count as unavailable, so that the whole test suite runs on numba (CI does).
"""
from __future__ import annotations

import importlib
import os
import threading

from .. import _env

BACKENDS = ("cpu", "cuda", "numba", "reference")
ENV_VAR = "FASTRNN_BACKEND"

_MODULES = {
    "cpu": "fastrnn.backends.cpu",
    "cuda": "fastrnn.backends.cuda",
    "numba": "fastrnn.backends.numba_backend",
    "reference": "fastrnn.backends.reference",
}

_state = threading.local()
_global_default = None  # set by set_backend(); None -> environment -> "auto"


class BackendUnavailableError(RuntimeError):
    """Raised when a backend was asked for explicitly and cannot be used."""


_cache = {}  # name -> (module, None) or (None, reason); tests may monkeypatch entries

DISABLE_ENV = "FASTRNN_DISABLE_EXTENSION"
_EXTENSIONS = ("cpu", "cuda")

# What to do when a backend module cannot even be imported (its own
# unavailable_reason() says it otherwise).
_FIX = {
    "cpu": "reinstall fastrnn with `pip install .` from its source tree (needs a C++17 "
           "compiler and CMake) to build the compiled extension fastrnn._C",
    "cuda": "reinstall fastrnn with `pip install --no-build-isolation .` on a machine with "
            "the CUDA toolkit (nvcc) to build fastrnn._cuda",
    "numba": "install numba (`pip install numba`)",
    "reference": "reinstall fastrnn",
}


def extension_disabled():
    """True when $FASTRNN_DISABLE_EXTENSION asks to ignore the compiled extensions."""
    return _env.flag(DISABLE_ENV)


def _disabled_reason():
    return (f"disabled by the environment variable {DISABLE_ENV}="
            f"{os.environ.get(DISABLE_ENV)!r}; unset it to use the compiled kernels")


def _load(name):
    """Import a backend module; return (module, None) or (None, reason).

    Cached, except that the disable switch is read on every call: with it on, an
    extension backend reports its own reason when it has one (not built, no GPU),
    else that it is disabled.
    """
    if name in _EXTENSIONS and extension_disabled():
        if name in _cache:
            mod, why = _cache[name]
        else:
            mod, why = _import(name)
            if mod is not None:
                why = getattr(mod, "unavailable_reason", lambda: None)()
        if why is None or DISABLE_ENV in why:  # the module may know the switch too
            why = _disabled_reason()
        return None, why
    if name not in _cache:
        _cache[name] = _load_uncached(name)
    return _cache[name]


def _import(name):
    try:
        return importlib.import_module(_MODULES[name]), None
    except Exception as exc:  # the module itself may be absent or broken
        return None, (f"{_MODULES[name]} failed to import ({type(exc).__name__}: {exc}); "
                      f"{_FIX[name]}")


def _load_uncached(name):
    mod, why = _import(name)
    if mod is None:
        return None, why
    reason = getattr(mod, "unavailable_reason", lambda: None)()
    if reason:
        return None, reason
    return mod, None


def availability():
    """Map each backend name to ``None`` (available) or the reason it is not."""
    return {name: _load(name)[1] for name in BACKENDS}


def available_backends():
    return [name for name, why in availability().items() if why is None]


def _normalise(name):
    return name.strip().lower() if isinstance(name, str) else name


def set_backend(name):
    """Set the process-wide default backend (``None`` or "auto" to go back to auto).

    Raises ``BackendUnavailableError`` (saying why and what to do) when the backend
    cannot run on this machine at all.
    """
    global _global_default
    name = _normalise(name)
    if name is not None and name != "auto" and name not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    if name not in (None, "auto"):
        mod, why = _load(name)
        if mod is None:
            raise BackendUnavailableError(f"cannot set the default fastrnn backend to {name!r}: "
                                          f"it is unavailable: {why}")
    _global_default = None if name == "auto" else name


def get_default_backend():
    """The default backend name: set_backend(), else $FASTRNN_BACKEND, else "auto"."""
    return _default_and_source()[0]


def _default_and_source():
    if _global_default is not None:
        return _global_default, "fastrnn.set_backend()"
    env = _normalise(os.environ.get(ENV_VAR, ""))
    if env and env != "auto":
        if env not in BACKENDS:
            raise ValueError(
                f"environment variable {ENV_VAR}={env!r} is not one of {('auto',) + BACKENDS}; "
                f"fix or unset it")
        return env, f"${ENV_VAR}"
    return "auto", "auto"


_AUTO_ORDER = {"cpu": ("cpu", "numba", "reference"), "cuda": ("cuda", "reference")}


_warned = set()


def _warn_fallback(why):
    """Warn once per process when ``auto`` falls back from the compiled CPU kernels for a
    reason the user did not choose: a checkout shadowing an installed build."""
    if why and "shadows the installed build" in why and "shadow" not in _warned:
        _warned.add("shadow")
        import warnings
        warnings.warn(f"fastrnn: running the slower fallback backends because {why}",
                      RuntimeWarning, stacklevel=3)


def resolve(name, device_type):
    """Return the backend *name* that will run for tensors on ``device_type``.

    ``name`` None means the default (set_backend, then $FASTRNN_BACKEND, then auto).
    """
    if name is None:
        name, source = _default_and_source()
    else:
        name, source = _normalise(name), "backend= argument"
    if name == "auto":
        for cand in _AUTO_ORDER.get(device_type, ("reference",)):
            mod, why = _load(cand)
            if mod is not None:
                return cand
            if cand == "cpu":
                _warn_fallback(why)
        return "reference"
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    if name in ("cpu", "numba") and device_type != "cpu":
        raise BackendUnavailableError(
            f"backend {name!r} (from {source}) runs on CPU tensors only, got tensors on "
            f"{device_type!r}; use backend='auto' or move the module to the CPU")
    if name == "cuda" and device_type != "cuda":
        raise BackendUnavailableError(
            f"backend 'cuda' (from {source}) needs CUDA tensors, got tensors on "
            f"{device_type!r}; move the module and inputs to a GPU or use backend='auto'")
    mod, why = _load(name)
    if mod is None:
        raise BackendUnavailableError(
            f"fastrnn backend {name!r} (from {source}) is unavailable: {why}. "
            f"Use backend='auto' to fall back to the fastest available one.")
    return name


_ENV_DATA = getattr(os.environ, "_data", None) if os.name == "posix" else None
_resolved = {}


def _env_raw(name):
    """The raw value of an environment variable, cheaply: ``os.environ.get`` costs ~0.6 us
    (it decodes), too much for a per-step call; CPython keeps ``os.environ``'s bytes in a
    dict that every change through ``os.environ`` updates."""
    if isinstance(_ENV_DATA, dict):
        return _ENV_DATA.get(name.encode())
    return os.environ.get(name)


def resolve_cached(name, device_type):
    """``resolve(name, device_type)``, memoised on everything it depends on (the name,
    ``set_backend``, $FASTRNN_BACKEND, $FASTRNN_DISABLE_EXTENSION and whether the compiled
    CPU kernels loaded): for per-step calls, which only go on when it says "cpu"."""
    key = (name, device_type, _global_default, _env_raw(ENV_VAR), _env_raw(DISABLE_ENV),
           _cache.get("cpu"))
    hit = _resolved.get(key)
    if hit is None:
        hit = _resolved[key] = resolve(name, device_type)
    return hit


def has_peepholes(name):
    """Whether backend ``name`` runs the peephole LSTM (its lstm_forward/lstm_backward take
    ``w_ch``; module attribute ``PEEPHOLES``)."""
    return getattr(get(name), "PEEPHOLES", False)


def get(name):
    """The backend module for an already-resolved name."""
    mod, why = _load(name)
    if mod is None:
        raise BackendUnavailableError(f"fastrnn backend {name!r} is unavailable: {why}")
    return mod
