"""``fastrnn.info()`` / ``python -m fastrnn info``: what this installation can run and why.

Answers the questions of a bug report in one place: versions, which backends are
available (and, for each one that is not, why and what to do), which CPU instruction
set the compiled kernels use, numba's version and threading layer, thread counts and
CUDA devices. Nothing here compiles a kernel or touches a GPU beyond asking torch.
"""
from __future__ import annotations

import os
import platform
import sys

import torch

__all__ = ["info", "Info"]


class Info(dict):
    """The report as a dict (stable keys, for programs); ``str()`` is the readable text."""

    def __str__(self):
        return format_info(self)

    def __repr__(self):  # the REPL shows the text, not a dict dump
        return format_info(self)


def _version():
    try:
        from . import __version__
        return __version__
    except Exception:  # a broken package import should not break the diagnosis
        try:
            from importlib.metadata import version
            return version("fastrnn")
        except Exception:
            return "unknown"


def _cpu_isa():
    """(isa in use, supported isas) of the compiled CPU kernels, or (None, []) without them."""
    try:
        from .backends import cpu
    except Exception:
        return None, []
    try:
        isa = cpu.isa()
    except Exception:
        isa = None
    try:
        supported = list(cpu.supported_isas())
    except Exception:
        supported = []
    return isa, supported


def _numba_info():
    try:
        import numba
    except Exception as exc:
        return {"version": None, "error": f"{type(exc).__name__}: {exc}"}
    try:  # before anything starts numba's pool (get_num_threads does): the layer
        from .backends.numba_backend import _choose_threading_layer  # fastrnn would pick
        _choose_threading_layer()
    except Exception:
        pass
    out = {"version": numba.__version__,
           "threading_layer": None,
           "configured_threading_layer": numba.config.THREADING_LAYER,
           "num_threads": numba.get_num_threads(),
           "max_threads": numba.config.NUMBA_NUM_THREADS}
    try:
        out["threading_layer"] = numba.threading_layer()
    except ValueError:
        # not chosen until the first parallel kernel runs; starting the pool picks it
        # without compiling anything (an internal function: tolerate its absence)
        try:
            from numba.np.ufunc.parallel import _launch_threads
            _launch_threads()
            out["threading_layer"] = numba.threading_layer()
        except Exception as exc:
            out["threading_layer_error"] = f"{type(exc).__name__}: {exc}"
    return out


def _cuda_info():
    out = {"torch_cuda": torch.version.cuda, "available": False, "devices": []}
    try:
        out["available"] = bool(torch.cuda.is_available())
        if out["available"]:
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                out["devices"].append(f"{p.name} (sm_{p.major}{p.minor}, "
                                      f"{p.total_memory / 2**30:.0f} GiB)")
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def info() -> Info:
    """Collect the report. ``print(fastrnn.info())`` prints it; keys for programs:

    version, torch, python, platform, backends (name -> None or the reason it is
    unavailable), default_backend, auto (device -> backend auto picks), cpu_isa,
    cpu_isas_supported, numba (version, threading_layer, num_threads...), threads
    (torch intra/inter-op), cuda (available, torch_cuda, devices), cuda_dispatch (policy,
    choices for common float32 layers, each (side, why)), environment.
    """
    from . import backends

    avail = backends.availability()
    try:
        default = backends.get_default_backend()
    except ValueError as exc:  # a bad $FASTRNN_BACKEND
        default = f"invalid: {exc}"
    auto = {}
    for dev in ("cpu", "cuda"):
        try:
            auto[dev] = backends.resolve("auto", dev)
        except Exception as exc:
            auto[dev] = f"error: {exc}"
    isa, isas = _cpu_isa()
    if avail.get("cpu") is not None:
        isa = None  # the kernels are not in use
    env_names = (backends.ENV_VAR, getattr(backends, "DISABLE_ENV", "FASTRNN_DISABLE_EXTENSION"),
                 "FASTRNN_CPU_ISA", "FASTRNN_CUDA_TILE", "FASTRNN_CUDA_SCHEDULE",
                 "FASTRNN_CUDA_PERSISTENT",
                 "FASTRNN_CUDA_DISPATCH", "FASTRNN_CPU_POOL_MB", "FASTRNN_CPU_PACK_CACHE_MB",
                 "FASTRNN_POOL_MB", "FASTRNN_CACHE", "FASTRNN_IMDB_PATH", "FASTRNN_OFFLINE",
                 "NUMBA_NUM_THREADS",
                 "NUMBA_THREADING_LAYER", "NUMBA_CACHE_DIR", "OMP_NUM_THREADS")
    return Info(
        version=_version(),
        torch=torch.__version__,
        python=sys.version.split()[0],
        platform=f"{platform.system()} {platform.machine()}",
        backends=avail,
        default_backend=default,
        auto=auto,
        cpu_isa=isa,
        cpu_isas_supported=isas,
        numba=_numba_info(),
        threads={"torch": torch.get_num_threads(),
                 "torch_interop": torch.get_num_interop_threads(),
                 "cpu_count": os.cpu_count()},
        cuda=_cuda_info(),
        cuda_dispatch=_cuda_dispatch_info(),
        environment={k: os.environ[k] for k in env_names if k in os.environ},
    )


def _cuda_dispatch_info():
    """The CUDA dispatch's setting and what it picks for the common float32 layers."""
    from .backends import cuda_dispatch as cd
    try:
        pol = cd.policy()
    except ValueError as exc:
        return {"policy": f"invalid: {exc}", "choices": {}}
    choices = {}
    for mode in ("LSTM", "GRU", "RNN_TANH"):
        for H in (128, 256, 512):
            choices[f"{mode} float32 H={H}"] = cd.choose(mode, torch.float32, H)
    return {"policy": pol, "choices": choices}


def format_info(d) -> str:
    lines = [f"fastrnn {d['version']}",
             f"  torch {d['torch']}, Python {d['python']}, {d['platform']}",
             "backends:"]
    for name, why in d["backends"].items():
        lines.append(f"  {name:<10} " + ("available" if why is None else f"unavailable: {why}"))
    lines.append(f"  default: {d['default_backend']}; auto picks "
                 + ", ".join(f"{v!r} for {k.upper()} tensors" for k, v in d["auto"].items()))
    if d["cpu_isa"]:
        sup = ", ".join(d["cpu_isas_supported"]) or "?"
        lines.append(f"compiled CPU kernels: {d['cpu_isa']} (this CPU supports: {sup})")
    else:
        lines.append("compiled CPU kernels: not in use")
    nb = d["numba"]
    if nb.get("version"):
        layer = nb.get("threading_layer") or f"unknown ({nb.get('threading_layer_error')})"
        lines.append(f"numba {nb['version']}: threading layer {layer}, "
                     f"{nb['num_threads']} of {nb['max_threads']} threads")
    else:
        lines.append(f"numba: not importable ({nb.get('error')})")
    th = d["threads"]
    lines.append(f"threads: torch {th['torch']} (inter-op {th['torch_interop']}), "
                 f"{th['cpu_count']} logical CPUs")
    cu = d["cuda"]
    if cu["available"]:
        lines.append(f"CUDA {cu['torch_cuda']}: " + "; ".join(cu["devices"]))
    elif cu["torch_cuda"] is None:
        lines.append("CUDA: this torch build has no CUDA support")
    else:
        lines.append(f"CUDA {cu['torch_cuda']} build, no GPU available"
                     + (f" ({cu['error']})" if cu.get("error") else ""))
    dis = d.get("cuda_dispatch")
    if dis:
        lines.append(f"CUDA dispatch (auto backend, CUDA tensors): {dis['policy']} "
                     f"($FASTRNN_CUDA_DISPATCH=auto|fastrnn|cudnn)")
        for case, (side, why) in dis["choices"].items():
            lines.append(f"  {case}: {side} ({why})")
    if d["environment"]:
        lines.append("environment: " + " ".join(f"{k}={v}" for k, v in d["environment"].items()))
    return "\n".join(lines)
