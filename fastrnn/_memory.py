"""Memory for the layers' large tensors: reused scratch, pooled outputs, and the autograd
helpers that put their results there.

Why: a fresh multi-MB tensor pays first-touch page faults on every call, which costs
several times more than refilling a reused one. Inference projections go into a
per-thread scratch buffer; in eager training on the CPU kernels (compiled or numba), the
projection, its input gradient, the final state's gradient and the GRU's hidden-side
gradient come from a buffer pool (the compiled extension's, or ``fastrnn._pool``).

Below the op layer: ``fastrnn.ops`` and ``fastrnn.functional`` both use it.
"""
import contextlib
import functools
import threading
import weakref

import torch
import torch.nn.functional as F

from .backends._common import transformed

__all__ = ["needs_grad", "linear", "projection_buffer", "pooled_empty", "use_pool", "PooledLinear", "linear_into",
           "FinalState", "POOLED_BACKENDS", "Bf16Linear", "bf16_projections",
           "bf16_projections_on", "remember_bf16", "as_bf16"]

def needs_grad(*ts):
    """Whether autograd will want a gradient through any of ``ts`` (None entries allowed)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


_scratch = threading.local()


def projection_buffer(numel, like, slot):
    """A reusable buffer for an inference-time input projection (never returned to the
    caller: the recurrence op consumes it). A fresh multi-MB tensor costs first-touch
    page faults on every call (several times the cost of refilling a reused one), which
    is what the ops would otherwise pay per layer and direction.
    One buffer per thread, dtype, device and slot (the two directions of a layer are
    projected before either runs), grown when needed."""
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    # inference tensors cannot be written outside inference mode, nor normal ones inside
    key = (like.dtype, like.device, slot, torch.is_inference_mode_enabled())
    buf = bufs.get(key)
    if buf is None or buf.numel() < numel:
        buf = bufs[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel]


POOLED_BACKENDS = ("cpu", "numba")


def pooled_empty(*shape, like, backend):
    """Uninitialised memory from the compiled extension's pool (backend "cpu") or
    ``fastrnn._pool`` (numba): reused across training steps instead of page-faulted in."""
    if backend == "cpu":
        from .backends import cpu as cpu_backend
        return cpu_backend._empty(*shape, like=like)
    from . import _pool
    return _pool.empty(*shape, dtype=like.dtype)


def denormals_flushed(backend, *tensors):
    """The context fastrnn's backward runs its GEMMs in: denormals flushed in torch's
    intra-op threads with the compiled CPU kernels (``backends.cpu.DenormalsFlushed``), on
    plain tensors only (not while tracing or compiling); otherwise a no-op."""
    if backend != "cpu" or not all(type(t) is torch.Tensor for t in tensors if t is not None):
        return contextlib.nullcontext()
    from .backends import cpu as cpu_backend
    return cpu_backend.DenormalsFlushed()


class PooledLinear(torch.autograd.Function):
    """F.linear over [T, N, I] for training with the CPU kernels, whose output (the
    [T, N, G*H] projection) and input gradient come from a buffer pool instead of fresh
    memory. A fresh projection costs first-touch page faults each step (a noticeable
    share of an LSTM training step); the pool hands back the block the previous step freed."""

    @staticmethod
    def forward(ctx, x, weight, bias, backend):
        T, N, _ = x.shape
        out = pooled_empty(T * N, weight.shape[0], like=x, backend=backend)
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.backend = bias is not None, backend
        return linear_into(x, weight, bias, out)

    @staticmethod
    def backward(ctx, g):
        with denormals_flushed(ctx.backend, g):
            return PooledLinear._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g):
        x, weight = ctx.saved_tensors
        T, N, I = x.shape
        g2 = g.reshape(T * N, g.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            # create_graph=True (out= ops are not differentiable) or batched gradients
            if torch.is_grad_enabled() or transformed(g):
                dx = g2.mm(weight).view(T, N, I)
            else:
                dx = pooled_empty(T * N, I, like=x, backend=ctx.backend)
                torch.mm(g2, weight, out=dx)
                dx = dx.view(T, N, I)
        if ctx.needs_input_grad[1]:
            dw = g2.t().mm(x.reshape(T * N, I))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g2.sum(0)
        return dx, dw, db, None


@functools.cache
def _widen_add():
    """The compiled one-pass ``out = float32(bf16) + bias`` (``_C.bf16_widen_add``), or None
    (looked up once)."""
    try:
        from .backends import cpu
    except Exception:
        return None
    return getattr(cpu._C, "bf16_widen_add", None) if cpu._C is not None else None


class Bf16Linear(torch.autograd.Function):
    """F.linear over [T, N, I] for a float32 training call under CPU autocast to bfloat16
    whose input and weight hold bfloat16 values (autocast rounded them): the GEMMs in
    bfloat16 (fp32 accumulation, torch's oneDNN GEMM at several times the float32 rate where
    the CPU has bf16 instructions), as autocast runs a matmul: the forward's result, the
    incoming gradient for the backward's two products and their results are rounded to
    bf16. The bias is added, and its gradient summed, in float32. Output and input gradient
    float32 in pooled memory (the recurrence kernels take float32)."""

    @staticmethod
    def forward(ctx, x, weight, bias, backend):
        T, N, I = x.shape
        x16 = x.reshape(T * N, I).to(torch.bfloat16)
        w16 = weight.to(torch.bfloat16)
        out = pooled_empty(T * N, weight.shape[0], like=x, backend=backend)
        y16 = torch.mm(x16, w16.t())
        widen = _widen_add()
        if widen is not None:  # one pass: widened, the bias added
            b = None if bias is None else bias.detach().to(torch.float32).contiguous()
            widen(y16.data_ptr(), 0 if b is None else b.data_ptr(), out.data_ptr(),
                  T * N, weight.shape[0], max(1, torch.get_num_threads()))
        else:
            out.copy_(y16)  # (a mixed-dtype add into out is several times slower)
            if bias is not None:
                out.add_(bias)
        ctx.save_for_backward(x16, w16)
        ctx.has_bias, ctx.backend, ctx.shape = bias is not None, backend, (T, N, I)
        return out.view(T, N, weight.shape[0])

    @staticmethod
    def backward(ctx, g):
        with denormals_flushed(ctx.backend, g):
            x16, w16 = ctx.saved_tensors
            T, N, I = ctx.shape
            g2 = g.reshape(T * N, g.shape[-1])
            g16 = as_bf16(g).reshape(T * N, g.shape[-1])
            dx = dw = db = None
            if ctx.needs_input_grad[0]:
                dx = g16.mm(w16).to(torch.float32).view(T, N, I)
            if ctx.needs_input_grad[1]:
                dw = g16.t().mm(x16).to(torch.float32)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                db = recorded_sum(g)  # (summed by the recurrence's backward kernel)
                if db is None:
                    db = g2.sum(0)
            return dx, dw, db, None


_bf16_gemms = threading.local()


@contextlib.contextmanager
def bf16_projections(on):
    """While on: ``linear`` runs its training-time GEMMs in bfloat16 (``Bf16Linear``)."""
    old = getattr(_bf16_gemms, "on", False)
    _bf16_gemms.on = bool(on)
    try:
        yield
    finally:
        _bf16_gemms.on = old


def bf16_projections_on():
    """Whether ``bf16_projections`` is on (the ops' autograd setup records it for their
    backward's weight-gradient GEMM)."""
    return getattr(_bf16_gemms, "on", False)


_bf16_twins = {}  # id(float32 tensor) -> (weakref to it, its version, its bf16 rounding)


def remember_bf16(t, t16):
    """Records that ``t16`` is ``t`` rounded to bfloat16 (a kernel wrote both), for
    ``as_bf16`` while ``t`` lives and is not modified."""
    key = id(t)
    _bf16_twins[key] = (weakref.ref(t, lambda _r: _bf16_twins.pop(key, None)), t._version, t16)


def as_bf16(t):
    """``t.to(torch.bfloat16)``: the recorded rounding when ``t`` is a tensor a kernel wrote
    one for (the same object, unmodified since), else the conversion."""
    e = _bf16_twins.get(id(t))
    if e is not None and e[0]() is t and e[1] == t._version:
        return e[2]
    return t.to(torch.bfloat16)


_sums = {}  # id(tensor) -> (weakref to it, its version, {name: a sum a kernel computed})


def remember_sums(t, **sums):
    """Records sums over all but the last dimension of what a kernel wrote into ``t``
    (``x``: of ``t`` itself; ``h``: the GRU's hidden part's gradients), for ``recorded_sum``
    while ``t`` lives and is not modified."""
    key = id(t)
    _sums[key] = (weakref.ref(t, lambda _r: _sums.pop(key, None)), t._version, sums)


def recorded_sum(t, name="x"):
    """The sum ``name`` recorded for ``t`` (the same object, unmodified since), or None."""
    e = _sums.get(id(t))
    if e is not None and e[0]() is t and e[1] == t._version:
        return e[2].get(name)
    return None


def linear_into(x, weight, bias, out):
    """F.linear of x [T, N, I] written into ``out`` [T*N, G] -> [T, N, G] (no autograd).
    The product, then the bias added in place: ``addmm(out=)`` would first copy the
    broadcast bias into ``out`` for the GEMM to read back, a slower pass over it."""
    T, N, I = x.shape
    x2 = x.reshape(T * N, I)
    torch.mm(x2, weight.t(), out=out)
    if bias is not None:
        out.add_(bias)
    return out.view(T, N, weight.shape[0])


def use_pool(backend, t):
    """Whether autograd helpers put ``t``-sized training tensors in a buffer pool: eager
    mode (no torch.func transform either, nor ``t`` batched: these autograd.Functions write
    into memory they allocate, which vmap cannot batch), the CPU kernels (compiled or numba),
    float32/float64."""
    return (backend in POOLED_BACKENDS and t.device.type == "cpu"
            and t.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and torch._C._functorch.peek_interpreter_stack() is None and not transformed(t))


def linear(x, weight, bias, slot, backend=None):
    """F.linear over [T, N, I]; outside autograd and compilation, into a reused buffer;
    in eager training on the CPU kernels, into pooled memory. Under vmap (the buffer cannot
    hold a batch) and other torch.func transforms, F.linear."""
    if (x.device.type != "cpu" or torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._functorch.peek_interpreter_stack() is not None or transformed(x)):
        return F.linear(x, weight, bias)
    if needs_grad(x, weight, bias):
        if use_pool(backend, x):
            if getattr(_bf16_gemms, "on", False) and x.dtype == torch.float32:
                return Bf16Linear.apply(x, weight, bias, backend)
            return PooledLinear.apply(x, weight, bias, backend)
        return F.linear(x, weight, bias)
    T, N, _ = x.shape
    G = weight.shape[0]
    return linear_into(x, weight, bias, projection_buffer(T * N * G, x, slot).view(T * N, G))



class FinalState(torch.autograd.Function):
    """``y[index]`` (the final state) whose gradient ``dy`` is built in pooled memory.

    ``y[index]``'s own backward allocates a fresh zero [T, N, R] tensor, paying first-touch
    page faults every training step when a model reads only h_n,
    as the IMDB classifiers do; the pool hands back last step's block instead."""

    @staticmethod
    def forward(ctx, y, index, backend):
        ctx.index, ctx.shape, ctx.backend = index, y.shape, backend
        return y[index].clone()

    @staticmethod
    def backward(ctx, g):
        if transformed(g):  # batched gradients: y[index]'s own backward, which vmap batches
            return torch.ops.aten.select_backward(g, ctx.shape, 0, ctx.index), None, None
        dy = pooled_empty(*ctx.shape, like=g, backend=ctx.backend)
        dy.zero_()
        dy[ctx.index].copy_(g)
        return dy, None, None
