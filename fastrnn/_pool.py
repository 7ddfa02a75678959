"""Reusable memory for large CPU outputs when the compiled extension's pool is absent.

Why: a fresh multi-MB tensor pays first-touch page faults on every training step, which
costs several times more than refilling a reused one, and glibc returns such blocks to the
system as soon as they are freed, so the next step faults them in again. The compiled CPU
backend has a caching pool in C++ (``fastrnn._C.pooled_empty``); this module gives the numba
backend and the op layer the same thing in Python.

How: the pool owns numpy byte arrays. A tensor handed out is ``torch.from_numpy`` of a view
of one of them; the tensor keeps that view (and so the block) alive, and the block is free
again exactly when nothing but the pool refers to it (CPython reference count), i.e. when
torch has released every tensor and view of it. Only requests of at least ``MIN_BYTES``
use the pool; the free blocks it keeps are capped at ``limit_bytes()``.
"""
from __future__ import annotations

import os
import sys
import threading

import numpy as np
import torch

__all__ = ["empty", "cached_bytes", "release", "MIN_BYTES"]

MIN_BYTES = 1 << 20  # smaller requests: plain torch.empty (malloc's heap reuses them)
_LIMIT_ENV = "FASTRNN_POOL_MB"
_lock = threading.Lock()
_blocks: list = []  # numpy uint8 arrays owned by the pool


def limit_bytes():
    """Most bytes of free blocks kept (``$FASTRNN_POOL_MB``, default 1024 MB)."""
    try:
        return int(float(os.environ.get(_LIMIT_ENV, "1024")) * 2**20)
    except ValueError:
        return 1024 * 2**20


def _refs(blocks, i):
    return sys.getrefcount(blocks[i])


def _baseline():
    """The count ``_refs`` gives for a block nothing but its list refers to (measured, as
    the interpreter's own references differ between Python versions)."""
    probe = [np.empty(1, dtype=np.uint8)]
    return _refs(probe, 0)


_FREE_REFS = _baseline()


def _is_free(i):
    return _refs(_blocks, i) == _FREE_REFS


def _take(nbytes, dtype, shape):
    """A view of a free block of at least ``nbytes`` (at most twice as large), or of a
    new one. The view is made under the lock, so no other thread can take the block."""
    with _lock:
        block = _find(nbytes)
        return torch.from_numpy(block[:nbytes].view(_NP[dtype]).reshape(shape))


def _find(nbytes):
    """(lock held) The smallest free block of nbytes..2*nbytes, or a new one."""
    best = None
    for i in range(len(_blocks)):
        size = _blocks[i].nbytes
        if nbytes <= size <= 2 * nbytes and _is_free(i):
            if best is None or size < _blocks[best].nbytes:
                best = i
    if best is not None:
        return _blocks[best]
    _trim(limit_bytes() - nbytes)
    block = np.empty(nbytes, dtype=np.uint8)
    _blocks.append(block)
    return block


def _trim(keep):
    """Drop free blocks, largest first, until the free ones total at most ``keep`` bytes."""
    free = sorted((i for i in range(len(_blocks)) if _is_free(i)),
                  key=lambda i: _blocks[i].nbytes, reverse=True)
    total = sum(_blocks[i].nbytes for i in free)
    drop = set()
    for i in free:
        if total <= max(keep, 0):
            break
        drop.add(i)
        total -= _blocks[i].nbytes
    if drop:
        _blocks[:] = [b for i, b in enumerate(_blocks) if i not in drop]


_NP = {torch.float32: np.float32, torch.float64: np.float64}


def empty(*shape, dtype):
    """An uninitialised CPU tensor of ``shape`` and ``dtype`` (float32/float64), from the
    pool when it is large enough to matter."""
    numel = 1
    for s in shape:
        numel *= int(s)
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = numel * itemsize
    if nbytes < MIN_BYTES or dtype not in _NP:
        return torch.empty(*shape, dtype=dtype)
    return _take(nbytes, dtype, tuple(int(x) for x in shape))


def cached_bytes():
    """Bytes of free blocks the pool keeps for reuse."""
    with _lock:
        return sum(_blocks[i].nbytes for i in range(len(_blocks)) if _is_free(i))


def release():
    """Give every free block back to the system."""
    with _lock:
        _trim(0)
