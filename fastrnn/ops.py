"""torch.library custom ops (namespace ``fastrnn``) and their autograd.

The general path to the backends (``fastrnn.fastpath`` is the other: plain eager cells and
one-step calls straight to the compiled step kernel). Each op runs the recurrence of one
layer in one direction by calling ``fastrnn.backends.get(backend).<fn>`` with the backend
name already resolved by the caller (``fastrnn.backends.resolve``), so the ops stay pure
functions of their arguments (what torch.compile and opcheck need). ``*_forward_eager`` are
the forward ops' bodies without the dispatcher, for eager inference on arguments the caller
has validated.

Forward ops (differentiable, autograd registered here):
  fastrnn::lstm_forward(xg, h0, c0, w_hh, w_hr?, lengths?, reverse, training, backend)
      -> (y, cn, gates, cs)
  fastrnn::gru_forward(xg, h0, w_hh, b_hh, lengths?, reverse, training, backend)
      -> (y, saved)
  fastrnn::rnn_forward(xg, h0, w_hh, lengths?, reverse, relu, backend) -> y
  fastrnn::peephole_lstm_forward(xg, h0, c0, w_hh, w_hr?, w_ch, lengths?, reverse, training,
                                 backend) -> (y, cn, gates, cs)   (w_ch [3H]: p_i, p_f, p_o)
Backward ops (the recurrent part of the gradient, called from the forward ops' backward):
  fastrnn::lstm_backward(dy, dcn, h0, c0, w_hh, w_hr?, lengths?, reverse, y, gates, cs,
                         backend) -> (dgates, dh0, dc0, dr)
  fastrnn::gru_backward(dy, h0, w_hh, lengths?, reverse, y, saved, backend) -> (dxg, dh0)
  fastrnn::rnn_backward(dy, h0, w_hh, lengths?, reverse, relu, y, backend) -> (dxg, dh0)
  fastrnn::peephole_lstm_backward(dy, dcn, h0, c0, w_hh, w_hr?, w_ch, lengths?, reverse, y,
                                  gates, cs, backend) -> (dgates, dh0, dc0, dr)

The weight gradients are computed here, after the backend's backward loop, as one GEMM
over all steps each: dW_hh = dgates^T @ h_prev (h_prev is y shifted by one step, h0 first),
dW_hr = dr^T @ m (m = o * tanh(c)), GRU db_hh = sum of dhg (dhg = dxg with its n block * r,
as two GEMMs/sums over the r,z block and the n block).
The saved activations (gates, cs, saved) are outputs marked non-differentiable; with
``training=False`` they are empty tensors and nothing is saved (fastrnn.functional passes
training=False when no gradient can be needed; if one is asked for anyway, backward
recomputes the activations from the saved inputs). The peephole weights' gradient is
reduced here too: dW_ch = sums of dgates_i * c_prev, dgates_f * c_prev and dgates_o * c.

Second derivatives: with ``create_graph=True`` a forward op's backward differentiates the
reference backend's forward (torch ops) replayed on the saved inputs instead of calling the
backward op (``_gradient_graph``); the input projection xg is kept for that on the CPU.

torch.func and batched gradients (section "batching" at the end): under a torch.func
transform each op is its reference backend's torch ops, except a vmap over per-sample
tensors with shared weights, which runs the kernels once over the batch folded into N.
Batched gradients (``torch.autograd.grad(is_grads_batched=True)``, ``jacobian``/``hessian``
with ``vectorize=True``, gradcheck's ``check_batched_grad``) run the backward kernels the
same way (``batched_call``).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _memory
from . import _validation as V
from . import backends
from .backends import reference
from .backends._common import transformed, valid_mask

__all__ = ["lstm_forward", "lstm_backward", "peephole_lstm_forward", "peephole_lstm_backward",
           "gru_forward", "gru_backward",
           "rnn_forward", "rnn_backward", "OPS"]


# ----------------------------------------------------------------------------- helpers

def _contig(*ts):
    return [t.contiguous() if t is not None else None for t in ts]


def _fresh(outs: List[Tensor], ins: List[Optional[Tensor]]) -> List[Tensor]:
    """Custom ops must return new tensors: clone any output that shares memory with an
    input or an earlier output (a backend may return e.g. ``cs[-1]`` as ``cn``)."""
    seen = {t.untyped_storage().data_ptr() for t in ins
            if t is not None and t.numel() > 0}
    res = []
    for o in outs:
        if o.numel() > 0:
            ptr = o.untyped_storage().data_ptr()
            if ptr in seen:
                o = o.clone()
                ptr = o.untyped_storage().data_ptr()
            seen.add(ptr)
        res.append(o)
    return res


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


def _grad_w_hh(dg: Tensor, y: Tensor, h0: Tensor, reverse: bool, bf16: bool = False) -> Tensor:
    """sum over steps of dg[t]^T h_prev[t], h_prev being the state carried into step t
    (contract: y shifted by one step, h0 first). Two GEMMs over views, no [T, N, R] copy.
    ``bf16`` (a float32 call under CPU autocast to bfloat16, ``_memory.bf16_projections``):
    the large GEMM's operands rounded to bfloat16 as autocast rounds a matmul's, fp32
    accumulation, at the bf16 GEMM rate."""
    if bf16 and dg.shape[0] > 1 and not transformed(dg):
        dg2 = dg.reshape(dg.shape[0], -1, dg.shape[-1])
        body, first, inner = (dg2[:-1], dg2[-1], y[1:]) if reverse else (dg2[1:], dg2[0], y[:-1])
        d16 = _memory.as_bf16(dg).reshape(dg2.shape)
        a = (d16[:-1] if reverse else d16[1:]).reshape(-1, dg.shape[-1])
        b = inner.reshape(-1, y.shape[-1]).to(torch.bfloat16)
        return first.t().mm(h0).add_(a.t().mm(b))
    dg2 = dg.reshape(dg.shape[0], -1, dg.shape[-1])
    if reverse:
        body, first, inner = dg2[:-1], dg2[-1], y[1:]
    else:
        body, first, inner = dg2[1:], dg2[0], y[:-1]
    out = first.t().mm(h0)
    if body.shape[0] > 0:
        a, b = body.reshape(-1, dg.shape[-1]).t(), inner.reshape(-1, y.shape[-1])
        # batched gradients: out of place (vmap runs an in-place addmm once per vector)
        out = out + a.mm(b) if transformed(dg) else out.addmm_(a, b)
    return out


def _mask(x: Tensor, valid: Optional[Tensor]) -> Tensor:
    # torch.where, not a product: values on invalid steps are unspecified (may be NaN)
    if valid is None:
        return x
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _gemm_tn(a: Tensor, b: Tensor) -> Tensor:
    """sum over steps and batch of a[t,n,:]^T b[t,n,:]: [T,N,P], [T,N,Q] -> [P,Q]."""
    return a.reshape(-1, a.shape[-1]).t().mm(b.reshape(-1, b.shape[-1]))


def _mul(a: Tensor, b: Tensor, backend: str) -> Tensor:
    """a * b; on the CPU kernels in eager mode into pooled memory (a fresh [T, N, H] product
    pays first-touch page faults on every training step, which costs more than writing
    into a reused buffer)."""
    plain = type(a) is torch.Tensor and type(b) is torch.Tensor  # not traced (fake/functional)
    if not plain or torch.is_grad_enabled() or not _memory.use_pool(backend, a):
        return a * b
    return torch.mul(a, b, out=_memory.pooled_empty(*a.shape, like=a, backend=backend))


def _zeros_if_none(g: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


def _keeps_input(xg: Tensor, training: bool, backend: str) -> bool:
    """Whether a forward op saves its input projection ``xg`` for backward. Without
    training it is the only thing saved (backward recomputes the activations from it).
    With training it is kept only for a second derivative (``_gradient_graph``): on the
    CPU, where torch.nn's layers have one too (cuDNN's have none, and on the GPU memory is
    what limits the batch), and never while compiling (a compiled backward is first-order)."""
    if not training:
        return True
    return ((xg.device.type == "cpu" or backend == "reference")
            and not torch.compiler.is_compiling())


def _gradient_graph(ctx, forward, inputs, grads, n_args):
    """The first-order gradients as a differentiable graph, for ``create_graph=True``
    (gradient penalties, Hessian-vector products): torch's autograd differentiates the
    reference backend's forward (torch ops) replayed on the saved inputs. The fused backward
    kernels have no derivative of their own; this costs a replay in torch ops and runs only
    when a graph of the gradient is asked for. ``inputs``: the op's tensor arguments in
    order, ``grads``: the incoming gradients of ``forward``'s outputs (None: unused)."""
    if inputs[0] is None:
        raise RuntimeError(
            "fastrnn: a second derivative (backward through a gradient computed with "
            "create_graph=True) of a multi-step fastrnn layer on the GPU is not supported "
            "(nor by torch.nn's cuDNN layers): the fused kernels' backward has no derivative "
            "and the input projection it would need is not kept. Run the layer with "
            "backend='reference' (torch ops) where a second derivative is needed.")
    need = ctx.needs_input_grad
    wrt = [i for i, t in enumerate(inputs) if need[i] and t is not None]
    pairs = [(o, g) for o, g in zip(forward(*inputs), grads) if g is not None]
    result = [None] * n_args
    if not wrt or not pairs:
        return tuple(result)
    got = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wrt],
                              [g for _, g in pairs], create_graph=True, allow_unused=True)
    for i, g in zip(wrt, got):
        result[i] = g
    return tuple(result)


# ----------------------------------------------------------------------------- LSTM
# The peephole LSTM (``fastrnn::peephole_lstm_*``) is the LSTM with one more argument,
# w_ch [3H] (p_i, p_f, p_o): both ops share the bodies below (w_ch None: plain LSTM).

def _check_lstm_args(op, xg, h0, c0, w_hh, w_hr, w_ch, lengths):
    T, N, G = xg.shape if xg.dim() == 3 else (0, 0, 0)
    H, R = G // 4, h0.shape[-1]
    V.check_op_args(op, xg, [
        ("xg", xg, (T, N, 4 * H)), ("h0", h0, (N, R)), ("c0", c0, (N, H)),
        ("w_hh", w_hh, (4 * H, R)), ("w_hr", w_hr, (R, H)), ("w_ch", w_ch, (3 * H,))], lengths)
    if w_hr is None and R != H:
        raise RuntimeError(f"fastrnn::{op}: h0 must have shape {[N, H]} without "
                           f"w_hr, got {list(h0.shape)}")


def _peep(w_ch):
    """The backend call's keyword for the peephole weights (none for a plain LSTM: the
    backends without peepholes take no such argument)."""
    return {} if w_ch is None else {"w_ch": w_ch}


@torch.library.custom_op("fastrnn::lstm_forward", mutates_args=())
def lstm_forward(xg: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                 lengths: Optional[Tensor], reverse: bool, training: bool,
                 backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_lstm_args("lstm_forward", xg, h0, c0, w_hh, w_hr, None, lengths)
    return lstm_forward_eager(xg, h0, c0, w_hh, w_hr, lengths, reverse, training, backend)


@torch.library.custom_op("fastrnn::peephole_lstm_forward", mutates_args=())
def peephole_lstm_forward(xg: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor,
                          w_hr: Optional[Tensor], w_ch: Tensor, lengths: Optional[Tensor],
                          reverse: bool, training: bool,
                          backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_lstm_args("peephole_lstm_forward", xg, h0, c0, w_hh, w_hr, w_ch, lengths)
    return lstm_forward_eager(xg, h0, c0, w_hh, w_hr, lengths, reverse, training, backend,
                              w_ch)


def lstm_forward_eager(xg, h0, c0, w_hh, w_hr, lengths, reverse, training, backend,
                       w_ch=None):
    """``fastrnn::lstm_forward`` (``peephole_lstm_forward`` with ``w_ch``) without the
    dispatcher and its checks, for eager inference with arguments validated by the caller
    (the dispatcher's per-call overhead is significant for short sequences)."""
    xg, h0, c0, w_hh, w_hr, w_ch, lengths = _contig(xg, h0, c0, w_hh, w_hr, w_ch, lengths)
    y, cn, gates, cs = backends.get(backend).lstm_forward(
        xg, h0, c0, w_hh, w_hr, lengths, reverse, training, **_peep(w_ch))
    if not training:
        gates, cs = _empty(xg), _empty(xg)
    return tuple(_fresh([y, cn, gates, cs], [xg, h0, c0, w_hh, w_hr, w_ch, lengths]))


def _lstm_forward_fake(xg, h0, c0, w_hh, w_hr, lengths, reverse, training, backend,
                       w_ch=None):
    T, N, G = xg.shape
    H = G // 4
    R = h0.shape[-1]
    y = xg.new_empty(T, N, R)
    cn = xg.new_empty(N, H)
    if training:
        return y, cn, xg.new_empty(T, N, G), xg.new_empty(T, N, H)
    return y, cn, xg.new_empty(0), xg.new_empty(0)


lstm_forward.register_fake(_lstm_forward_fake)


@peephole_lstm_forward.register_fake
def _(xg, h0, c0, w_hh, w_hr, w_ch, lengths, reverse, training, backend):
    return _lstm_forward_fake(xg, h0, c0, w_hh, w_hr, lengths, reverse, training, backend)


def _check_lstm_backward_args(op, dy, dcn, h0, c0, w_hh, w_hr, w_ch, lengths, y, gates, cs):
    T, N, R = dy.shape if dy.dim() == 3 else (0, 0, 0)
    H = c0.shape[-1]
    V.check_op_args(op, dy, [
        ("dcn", dcn, (N, H)), ("h0", h0, (N, R)), ("c0", c0, (N, H)),
        ("w_hh", w_hh, (4 * H, R)), ("w_hr", w_hr, (R, H)), ("w_ch", w_ch, (3 * H,)),
        ("y", y, (T, N, R)), ("gates", gates, (T, N, 4 * H)), ("cs", cs, (T, N, H))], lengths)


def _lstm_backward_body(dy, dcn, h0, c0, w_hh, w_hr, w_ch, lengths, reverse, y, gates, cs,
                        backend):
    ins = _contig(dy, dcn, h0, c0, w_hh, w_hr, w_ch, y, gates, cs)
    lengths = None if lengths is None else lengths.contiguous()
    dy, dcn, h0, c0, w_hh, w_hr, w_ch, y, gates, cs = ins
    dgates, dh0, dc0, dr = backends.get(backend).lstm_backward(
        dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates, cs, **_peep(w_ch))
    if w_hr is None:
        dr = _empty(dy)
    return tuple(_fresh([dgates, dh0, dc0, dr], ins + [lengths]))


@torch.library.custom_op("fastrnn::lstm_backward", mutates_args=())
def lstm_backward(dy: Tensor, dcn: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor,
                  w_hr: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
                  y: Tensor, gates: Tensor, cs: Tensor,
                  backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_lstm_backward_args("lstm_backward", dy, dcn, h0, c0, w_hh, w_hr, None, lengths,
                              y, gates, cs)
    return _lstm_backward_body(dy, dcn, h0, c0, w_hh, w_hr, None, lengths, reverse, y, gates,
                               cs, backend)


@torch.library.custom_op("fastrnn::peephole_lstm_backward", mutates_args=())
def peephole_lstm_backward(dy: Tensor, dcn: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor,
                           w_hr: Optional[Tensor], w_ch: Tensor, lengths: Optional[Tensor],
                           reverse: bool, y: Tensor, gates: Tensor, cs: Tensor,
                           backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_lstm_backward_args("peephole_lstm_backward", dy, dcn, h0, c0, w_hh, w_hr, w_ch,
                              lengths, y, gates, cs)
    return _lstm_backward_body(dy, dcn, h0, c0, w_hh, w_hr, w_ch, lengths, reverse, y, gates,
                               cs, backend)


def _lstm_backward_fake(dy, c0, h0, w_hr):
    T, N, R = dy.shape
    H = c0.shape[-1]
    dr = dy.new_empty(T, N, R) if w_hr is not None else dy.new_empty(0)
    return dy.new_empty(T, N, 4 * H), h0.new_empty(h0.shape), c0.new_empty(c0.shape), dr


@lstm_backward.register_fake
def _(dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates, cs, backend):
    return _lstm_backward_fake(dy, c0, h0, w_hr)


@peephole_lstm_backward.register_fake
def _(dy, dcn, h0, c0, w_hh, w_hr, w_ch, lengths, reverse, y, gates, cs, backend):
    return _lstm_backward_fake(dy, c0, h0, w_hr)


def _lstm_setup(ctx, inputs, output):
    if len(inputs) == 10:  # peephole_lstm_forward
        xg, h0, c0, w_hh, w_hr, w_ch, lengths, reverse, training, backend = inputs
    else:
        (xg, h0, c0, w_hh, w_hr, lengths, reverse, training, backend), w_ch = inputs, None
    y, cn, gates, cs = output
    ctx.mark_non_differentiable(gates, cs)
    # No zero-filled [T, N, 4H] gradients for the saved activations (nor a zero dy/dcn
    # when unused): backward gets None and fills only what it needs, since materialising
    # those zeros is a noticeable share of an LSTM training step.
    ctx.set_materialize_grads(False)
    ctx.reverse, ctx.training, ctx.backend = reverse, training, backend
    ctx.bf16 = _memory.bf16_projections_on()
    ctx.save_for_backward(h0, c0, w_hh, w_hr, w_ch, lengths, y, gates, cs,
                          xg if _keeps_input(xg, training, backend) else None)


def _peephole_grad(dgates, cs, c0, reverse):
    """dw_ch [3H]: i's and f's peepholes read the cell state carried into a step (cs shifted
    by one step, c0 first), o's the step's own; sums over steps and batch (invalid steps
    have zero gate gradients)."""
    H = c0.shape[-1]
    if reverse:
        body, first, inner = dgates[:-1], dgates[-1], cs[1:]
    else:
        body, first, inner = dgates[1:], dgates[0], cs[:-1]
    d_if = [(first[:, k * H:(k + 1) * H] * c0).sum(0) for k in (0, 1)]
    if body.shape[0] > 0:
        d_if = [d + (body[..., k * H:(k + 1) * H] * inner).sum((0, 1))
                for k, d in zip((0, 1), d_if)]
    return torch.cat(d_if + [(dgates[..., 3 * H:] * cs).sum((0, 1))])


def _lstm_backward_fn(ctx, dy, dcn, _dgates_unused, _dcs_unused):
    h0, c0, w_hh, w_hr, w_ch, lengths, y, gates, cs, xg = ctx.saved_tensors
    peep = w_ch is not None
    n_args = 10 if peep else 9
    if torch.is_grad_enabled():  # create_graph=True
        rev = ctx.reverse
        if peep:
            return _gradient_graph(
                ctx, lambda *a: reference.lstm_forward(*a[:5], lengths, rev, False, a[5])[:2],
                (xg, h0, c0, w_hh, w_hr, w_ch), (dy, dcn), n_args)
        return _gradient_graph(
            ctx, lambda *a: reference.lstm_forward(*a, lengths, rev, False)[:2],
            (xg, h0, c0, w_hh, w_hr), (dy, dcn), n_args)
    if not ctx.training:  # nothing saved: recompute the activations
        if peep:
            y, _, gates, cs = torch.ops.fastrnn.peephole_lstm_forward(
                xg, h0, c0, w_hh, w_hr, w_ch, lengths, ctx.reverse, True, ctx.backend)
        else:
            y, _, gates, cs = torch.ops.fastrnn.lstm_forward(
                xg, h0, c0, w_hh, w_hr, lengths, ctx.reverse, True, ctx.backend)
    dy = _zeros_if_none(dy, y)
    dcn = _zeros_if_none(dcn, c0)
    if peep:
        dgates, dh0, dc0, dr = batched_call(
            "peephole_lstm_backward", dy, dcn, h0, c0, w_hh, w_hr, w_ch, lengths, ctx.reverse,
            y, gates, cs, ctx.backend)
    else:
        dgates, dh0, dc0, dr = batched_call(
            "lstm_backward", dy, dcn, h0, c0, w_hh, w_hr, lengths, ctx.reverse, y, gates, cs,
            ctx.backend)
    need = ctx.needs_input_grad
    dw_hh = dw_hr = dw_ch = None
    if need[3]:
        dw_hh = _grad_w_hh(dgates, y, h0, ctx.reverse, ctx.bf16)  # [4H, R]
    if w_hr is not None and need[4]:
        H = c0.shape[-1]
        m = gates[..., 3 * H:] * torch.tanh(cs)  # [T, N, H]
        dw_hr = _gemm_tn(dr, _mask(m, valid_mask(lengths, y.shape[0])))  # [R, H]
    if peep and need[5]:
        dw_ch = _peephole_grad(dgates, cs, c0, ctx.reverse)  # [3H]
    grads = [dgates if need[0] else None, dh0 if need[1] else None,
             dc0 if need[2] else None, dw_hh, dw_hr]
    return tuple(grads + ([dw_ch] if peep else []) + [None] * 4)


def _flushing(backward_fn):
    """``backward_fn`` run with denormals flushed in torch's threads (CPU kernels, eager):
    its GEMMs consume the kernels' gate gradients (``_memory.denormals_flushed``); and in the
    bf16 mode its forward ran in (``ctx.bf16``: the backend's bf16 backward kernels)."""
    def backward(ctx, *grads):
        # and with the forward's bf16 GEMM mode (the backend's backward follows its forward)
        with _memory.denormals_flushed(ctx.backend, *grads), \
                _memory.bf16_projections(getattr(ctx, "bf16", False)):
            return backward_fn(ctx, *grads)
    backward.__name__ = backward_fn.__name__
    backward.__doc__ = backward_fn.__doc__
    return backward


lstm_forward.register_autograd(_flushing(_lstm_backward_fn), setup_context=_lstm_setup)
peephole_lstm_forward.register_autograd(_flushing(_lstm_backward_fn), setup_context=_lstm_setup)


# ----------------------------------------------------------------------------- GRU

def _check_gru_args(xg, h0, w_hh, b_hh, lengths):
    T, N, G = xg.shape if xg.dim() == 3 else (0, 0, 0)
    H = G // 3
    V.check_op_args("gru_forward", xg, [
        ("xg", xg, (T, N, 3 * H)), ("h0", h0, (N, H)), ("w_hh", w_hh, (3 * H, H)),
        ("b_hh", b_hh, (3 * H,))], lengths)


@torch.library.custom_op("fastrnn::gru_forward", mutates_args=())
def gru_forward(xg: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor,
                lengths: Optional[Tensor], reverse: bool, training: bool,
                backend: str) -> Tuple[Tensor, Tensor]:
    _check_gru_args(xg, h0, w_hh, b_hh, lengths)
    return gru_forward_eager(xg, h0, w_hh, b_hh, lengths, reverse, training, backend)


def gru_forward_eager(xg, h0, w_hh, b_hh, lengths, reverse, training, backend):
    """``fastrnn::gru_forward`` without the dispatcher (see ``lstm_forward_eager``)."""
    xg, h0, w_hh, b_hh, lengths = _contig(xg, h0, w_hh, b_hh, lengths)
    y, saved = backends.get(backend).gru_forward(xg, h0, w_hh, b_hh, lengths, reverse, training)
    if not training:
        saved = _empty(xg)
    return tuple(_fresh([y, saved], [xg, h0, w_hh, b_hh, lengths]))


@gru_forward.register_fake
def _(xg, h0, w_hh, b_hh, lengths, reverse, training, backend):
    T, N, G = xg.shape
    H = G // 3
    saved = xg.new_empty(T, N, 4 * H) if training else xg.new_empty(0)
    return xg.new_empty(T, N, H), saved


def _check_gru_backward_args(dy, h0, w_hh, lengths, y, saved):
    T, N, H = dy.shape if dy.dim() == 3 else (0, 0, 0)
    V.check_op_args("gru_backward", dy, [
        ("h0", h0, (N, H)), ("w_hh", w_hh, (3 * H, H)), ("y", y, (T, N, H)),
        ("saved", saved, (T, N, 4 * H))], lengths)


@torch.library.custom_op("fastrnn::gru_backward", mutates_args=())
def gru_backward(dy: Tensor, h0: Tensor, w_hh: Tensor, lengths: Optional[Tensor],
                 reverse: bool, y: Tensor, saved: Tensor,
                 backend: str) -> Tuple[Tensor, Tensor]:
    _check_gru_backward_args(dy, h0, w_hh, lengths, y, saved)
    ins = _contig(dy, h0, w_hh, y, saved)
    lengths = None if lengths is None else lengths.contiguous()
    dy, h0, w_hh, y, saved = ins
    dxg, dh0 = backends.get(backend).gru_backward(dy, h0, w_hh, lengths, reverse, y, saved)
    return tuple(_fresh([dxg, dh0], ins + [lengths]))


@gru_backward.register_fake
def _(dy, h0, w_hh, lengths, reverse, y, saved, backend):
    T, N, H = dy.shape
    return dy.new_empty(T, N, 3 * H), h0.new_empty(h0.shape)


def _gru_setup(ctx, inputs, output):
    xg, h0, w_hh, b_hh, lengths, reverse, training, backend = inputs
    y, saved = output
    ctx.mark_non_differentiable(saved)
    ctx.set_materialize_grads(False)  # see _lstm_setup
    ctx.bf16 = _memory.bf16_projections_on()
    ctx.reverse, ctx.training, ctx.backend = reverse, training, backend
    keep = _keeps_input(xg, training, backend)
    ctx.save_for_backward(h0, w_hh, lengths, y, saved, xg if keep else None,
                          b_hh if keep else None)


def _gru_backward_fn(ctx, dy, _dsaved_unused):
    h0, w_hh, lengths, y, saved, xg, b_hh = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True
        rev = ctx.reverse
        return _gradient_graph(
            ctx, lambda *a: reference.gru_forward(*a, lengths, rev, False)[:1],
            (xg, h0, w_hh, b_hh), (dy,), 8)
    if not ctx.training:  # nothing saved: recompute the activations
        y, saved = torch.ops.fastrnn.gru_forward(
            xg, h0, w_hh, b_hh, lengths, ctx.reverse, True, ctx.backend)
    dy = _zeros_if_none(dy, y)
    dxg, dh0 = batched_call("gru_backward", dy, h0, w_hh, lengths, ctx.reverse, y, saved,
                            ctx.backend)
    need = ctx.needs_input_grad
    dw_hh = db_hh = None
    if need[2] or need[3]:
        # The hidden side's pre-activation gradient is dxg for r and z, dxg_n * r for n.
        # Two GEMMs over views (dxg's r,z block read in place) instead of one over a
        # concatenated [T, N, 3H] copy, which saves writing and re-reading that copy.
        H = h0.shape[-1]
        r = saved[..., :H]  # zero on invalid steps (the contract), as are dxg's rows there
        d_rz, d_n = dxg[..., :2 * H], _mul(dxg[..., 2 * H:], r, ctx.backend)  # view, [T, N, H]
        if need[2]:
            dw_hh = torch.cat([_grad_w_hh(d_rz, y, h0, ctx.reverse, ctx.bf16),
                               _grad_w_hh(d_n, y, h0, ctx.reverse, ctx.bf16)], dim=0)  # [3H, H]
        if need[3]:
            db_hh = _memory.recorded_sum(dxg, "h")  # (summed by a bf16 backward kernel)
            if db_hh is None:
                db_hh = torch.cat([d_rz.sum(dim=(0, 1)), d_n.sum(dim=(0, 1))])
    return (dxg if need[0] else None, dh0 if need[1] else None, dw_hh, db_hh,
            None, None, None, None)


gru_forward.register_autograd(_flushing(_gru_backward_fn), setup_context=_gru_setup)


# ----------------------------------------------------------------------------- Elman RNN

def _check_rnn_args(xg, h0, w_hh, lengths):
    T, N, H = xg.shape if xg.dim() == 3 else (0, 0, 0)
    V.check_op_args("rnn_forward", xg, [("h0", h0, (N, H)), ("w_hh", w_hh, (H, H))],
                    lengths)


@torch.library.custom_op("fastrnn::rnn_forward", mutates_args=())
def rnn_forward(xg: Tensor, h0: Tensor, w_hh: Tensor, lengths: Optional[Tensor],
                reverse: bool, relu: bool, backend: str) -> Tensor:
    _check_rnn_args(xg, h0, w_hh, lengths)
    return rnn_forward_eager(xg, h0, w_hh, lengths, reverse, relu, backend)


def rnn_forward_eager(xg, h0, w_hh, lengths, reverse, relu, backend):
    """``fastrnn::rnn_forward`` without the dispatcher (see ``lstm_forward_eager``)."""
    xg, h0, w_hh, lengths = _contig(xg, h0, w_hh, lengths)
    y = backends.get(backend).rnn_forward(xg, h0, w_hh, lengths, reverse, relu)
    return _fresh([y], [xg, h0, w_hh, lengths])[0]


@rnn_forward.register_fake
def _(xg, h0, w_hh, lengths, reverse, relu, backend):
    return xg.new_empty(xg.shape)


def _check_rnn_backward_args(dy, h0, w_hh, lengths, y):
    T, N, H = dy.shape if dy.dim() == 3 else (0, 0, 0)
    V.check_op_args("rnn_backward", dy, [
        ("h0", h0, (N, H)), ("w_hh", w_hh, (H, H)), ("y", y, (T, N, H))], lengths)


@torch.library.custom_op("fastrnn::rnn_backward", mutates_args=())
def rnn_backward(dy: Tensor, h0: Tensor, w_hh: Tensor, lengths: Optional[Tensor],
                 reverse: bool, relu: bool, y: Tensor,
                 backend: str) -> Tuple[Tensor, Tensor]:
    _check_rnn_backward_args(dy, h0, w_hh, lengths, y)
    ins = _contig(dy, h0, w_hh, y)
    lengths = None if lengths is None else lengths.contiguous()
    dy, h0, w_hh, y = ins
    dxg, dh0 = backends.get(backend).rnn_backward(dy, h0, w_hh, lengths, reverse, relu, y)
    return tuple(_fresh([dxg, dh0], ins + [lengths]))


@rnn_backward.register_fake
def _(dy, h0, w_hh, lengths, reverse, relu, y, backend):
    return dy.new_empty(dy.shape), h0.new_empty(h0.shape)


def _rnn_setup(ctx, inputs, output):
    xg, h0, w_hh, lengths, reverse, relu, backend = inputs
    ctx.reverse, ctx.relu, ctx.backend = reverse, relu, backend
    ctx.set_materialize_grads(False)  # see _lstm_setup
    ctx.bf16 = _memory.bf16_projections_on()
    ctx.save_for_backward(h0, w_hh, lengths, output,
                          xg if _keeps_input(xg, True, backend) else None)


def _rnn_backward_fn(ctx, dy):
    h0, w_hh, lengths, y, xg = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True
        rev, relu = ctx.reverse, ctx.relu
        return _gradient_graph(
            ctx, lambda *a: (reference.rnn_forward(*a, lengths, rev, relu),),
            (xg, h0, w_hh), (dy,), 7)
    dy = _zeros_if_none(dy, y)
    dxg, dh0 = batched_call("rnn_backward", dy, h0, w_hh, lengths, ctx.reverse, ctx.relu, y,
                            ctx.backend)
    need = ctx.needs_input_grad
    dw_hh = _grad_w_hh(dxg, y, h0, ctx.reverse, ctx.bf16) if need[2] else None  # [H, H]
    return (dxg if need[0] else None, dh0 if need[1] else None, dw_hh,
            None, None, None, None)


rnn_forward.register_autograd(_flushing(_rnn_backward_fn), setup_context=_rnn_setup)


def _no_second_derivative(ctx, *grads):
    raise RuntimeError(
        "fastrnn: the backward ops (fastrnn::*_backward) are first-order and have no "
        "derivative of their own. Differentiate the forward ops instead: with "
        "create_graph=True their autograd builds the gradient's graph itself.")


for _op in (lstm_backward, peephole_lstm_backward, gru_backward, rnn_backward):
    _op.register_autograd(_no_second_derivative, setup_context=lambda ctx, inputs, output: None)


OPS = {
    "lstm_forward": torch.ops.fastrnn.lstm_forward,
    "lstm_backward": torch.ops.fastrnn.lstm_backward,
    "peephole_lstm_forward": torch.ops.fastrnn.peephole_lstm_forward,
    "peephole_lstm_backward": torch.ops.fastrnn.peephole_lstm_backward,
    "gru_forward": torch.ops.fastrnn.gru_forward,
    "gru_backward": torch.ops.fastrnn.gru_backward,
    "rnn_forward": torch.ops.fastrnn.rnn_forward,
    "rnn_backward": torch.ops.fastrnn.rnn_backward,
}


# ----------------------------------------------------------------------------- batching
# torch.func transforms and batched gradients.
#
# Under a torch.func transform (vmap, grad, jvp, jacrev, ...) an op is its reference
# backend's torch ops, which functorch differentiates and batches: a custom op's autograd
# has no functorch support (``_under_functorch``). One case keeps the kernels: vmap over
# per-sample tensors (inputs, states, their gradients) with the weights shared, where the
# vmapped dimension folds into the batch: one kernel call over B*N rows (``_folded``).
# Batched gradients (``torch.autograd.grad(is_grads_batched=True)``, autograd.functional's
# ``jacobian``/``hessian(vectorize=True)``, gradcheck's ``check_batched_grad``) reach the
# forward ops' backward as legacy vmap BatchedTensors; the backward ops fold them the same
# way (``batched_call``).

# Per op: what each argument is, then each output. "TN": per-sample [T, N, ...]; "N":
# per-sample [N, ...]; "W": a weight, shared by every sample; None: not a tensor.
_ROLES = {
    "lstm_forward": (("TN", "N", "N", "W", "W", "N", None, None, None),
                     ("TN", "N", "TN", "TN")),
    "peephole_lstm_forward": (("TN", "N", "N", "W", "W", "W", "N", None, None, None),
                              ("TN", "N", "TN", "TN")),
    "lstm_backward": (("TN", "N", "N", "N", "W", "W", "N", None, "TN", "TN", "TN", None),
                      ("TN", "N", "N", "TN")),
    "peephole_lstm_backward": (("TN", "N", "N", "N", "W", "W", "W", "N", None, "TN", "TN",
                                "TN", None), ("TN", "N", "N", "TN")),
    "gru_forward": (("TN", "N", "W", "W", "N", None, None, None), ("TN", "TN")),
    "gru_backward": (("TN", "N", "W", "N", None, "TN", "TN", None), ("TN", "N")),
    "rnn_forward": (("TN", "N", "W", "N", None, None, None), ("TN",)),
    "rnn_backward": (("TN", "N", "W", "N", None, None, "TN", None), ("TN", "N")),
}
_N_AXIS = {"TN": 1, "N": 0}


def _placeholder(t: Tensor) -> bool:
    """The empty tensor an op takes or returns for something it does not use or compute
    (``gates`` without training, ``dr`` without projection)."""
    return t.dim() == 1 and t.numel() == 0


def _fold(t: Tensor, bdim: Optional[int], B: int, role: str) -> Tensor:
    """A per-sample tensor as a batch of B*N: its batch dimension ``bdim`` (None: one tensor
    for every batch entry) merged into N, batch entry major: [B, T, N, X] -> [T, B*N, X]."""
    if _placeholder(t) or (bdim is not None and _placeholder(t.select(bdim, 0))):
        return t if bdim is None else t.select(bdim, 0)
    ax = _N_AXIS[role]
    if bdim is None:
        t = t.unsqueeze(ax).expand(*t.shape[:ax], B, *t.shape[ax:])
    else:
        t = t.movedim(bdim, ax)
    return t.flatten(ax, ax + 1)


def _folded(name: str, args, bdims, B: int):
    """Op ``name`` on ``args`` whose per-sample tensors carry a batch dimension (``bdims``,
    None where not; the weights must have none) as one call over B*N rows. Returns the
    outputs as (tensor, its batch dimension or None): [B, ...], dense (the batched ops that
    follow reshape them, which would copy a batch dimension left between T and N)."""
    roles, out_roles = _ROLES[name]
    args = [a if r is None or r == "W" or a is None else _fold(a, d, B, r)
            for a, d, r in zip(args, bdims, roles)]
    outs = OPS[name](*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    res = []
    for o, r in zip(outs, out_roles):
        if _placeholder(o):
            res.append((o, None))
        else:
            ax = _N_AXIS[r]
            res.append((o.unflatten(ax, (B, o.shape[ax] // B)).movedim(ax, 0).contiguous(), 0))
    return res


def _weights_batched(name: str, bdims) -> bool:
    return any(d is not None for d, r in zip(bdims, _ROLES[name][0]) if r == "W")


_legacy_batched = torch._C._functorch.is_legacy_batchedtensor
# Legacy vmap levels count up from 1 per nesting; batched gradients use one or two.
_MAX_LEGACY_LEVEL = 64


def _legacy_unwrap(t: Tensor):
    """(level, [B, ...] tensor) of a BatchedTensor of legacy vmap (``torch._vmap_internals``)
    batched at one level, or (None, None) when it is nested in several. The level is not
    exposed: removing the batch dimension of any other level leaves a BatchedTensor."""
    for level in range(1, _MAX_LEGACY_LEVEL + 1):
        p = torch._remove_batch_dim(t, level, 1, 0)
        if not _legacy_batched(p):
            return level, p
    return None, None


def batched_call(name: str, *args):
    """``OPS[name](*args)``, also where some arguments are legacy vmap BatchedTensors (the
    batched gradients a backward receives): the per-sample ones then fold into the batch
    (``_folded``), one kernel call for every batch entry, the results batched again. Where
    that does not apply (weights batched, several vmap levels) torch's own fallback runs the
    op once per batch entry."""
    op = OPS[name]
    level, B, phys, bdims = None, 0, [], []
    for a in args:
        if isinstance(a, Tensor) and _legacy_batched(a):
            lv, p = _legacy_unwrap(a)
            if lv is None or (level is not None and lv != level):
                return op(*args)
            level, B = lv, p.shape[0]
            phys.append(p)
            bdims.append(0)
        else:
            phys.append(a)
            bdims.append(None)
    if level is None or _weights_batched(name, bdims):
        return op(*args)
    outs = [o if d is None else torch._add_batch_dim(o, d, level)
            for o, d in _folded(name, phys, bdims, B)]
    return tuple(outs) if len(outs) > 1 else outs[0]


def _lstm_forward_ref(xg, h0, c0, w_hh, w_hr, lengths, reverse, training, backend):
    _check_lstm_args("lstm_forward", xg, h0, c0, w_hh, w_hr, None, lengths)
    return reference.lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, reverse, training)


def _peephole_lstm_forward_ref(xg, h0, c0, w_hh, w_hr, w_ch, lengths, reverse, training,
                               backend):
    _check_lstm_args("peephole_lstm_forward", xg, h0, c0, w_hh, w_hr, w_ch, lengths)
    return reference.lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, reverse, training, w_ch)


def _lstm_backward_ref(dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates, cs, backend):
    _check_lstm_backward_args("lstm_backward", dy, dcn, h0, c0, w_hh, w_hr, None, lengths,
                              y, gates, cs)
    return reference.lstm_backward(dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates,
                                   cs)


def _peephole_lstm_backward_ref(dy, dcn, h0, c0, w_hh, w_hr, w_ch, lengths, reverse, y,
                                gates, cs, backend):
    _check_lstm_backward_args("peephole_lstm_backward", dy, dcn, h0, c0, w_hh, w_hr, w_ch,
                              lengths, y, gates, cs)
    return reference.lstm_backward(dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates,
                                   cs, w_ch)


def _gru_forward_ref(xg, h0, w_hh, b_hh, lengths, reverse, training, backend):
    _check_gru_args(xg, h0, w_hh, b_hh, lengths)
    return reference.gru_forward(xg, h0, w_hh, b_hh, lengths, reverse, training)


def _gru_backward_ref(dy, h0, w_hh, lengths, reverse, y, saved, backend):
    _check_gru_backward_args(dy, h0, w_hh, lengths, y, saved)
    return reference.gru_backward(dy, h0, w_hh, lengths, reverse, y, saved)


def _rnn_forward_ref(xg, h0, w_hh, lengths, reverse, relu, backend):
    _check_rnn_args(xg, h0, w_hh, lengths)
    return reference.rnn_forward(xg, h0, w_hh, lengths, reverse, relu)


def _rnn_backward_ref(dy, h0, w_hh, lengths, reverse, relu, y, backend):
    _check_rnn_backward_args(dy, h0, w_hh, lengths, y)
    return reference.rnn_backward(dy, h0, w_hh, lengths, reverse, relu, y)


# each op as the reference backend's torch ops (the op's checks first)
_TORCH_OPS = {
    "lstm_forward": _lstm_forward_ref, "peephole_lstm_forward": _peephole_lstm_forward_ref,
    "lstm_backward": _lstm_backward_ref, "peephole_lstm_backward": _peephole_lstm_backward_ref,
    "gru_forward": _gru_forward_ref, "gru_backward": _gru_backward_ref,
    "rnn_forward": _rnn_forward_ref, "rnn_backward": _rnn_backward_ref,
}


def _under_functorch(name: str):
    """The op's kernel for the key functorch dispatches on first while a torch.func transform
    is active (so calls outside transforms never see it): a vmap over per-sample tensors
    with shared weights runs the op at the level below on the folded batch; everything else
    (grad, jvp, batched weights) runs the op's torch ops, which functorch handles itself."""
    from torch._C._functorch import TransformType, _add_batch_dim, _unwrap_batched
    from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

    def kernel(*args):
        interpreter = retrieve_current_functorch_interpreter()
        if interpreter.key() == TransformType.Vmap:
            level = interpreter.level()
            phys, bdims = [], []
            for a in args:
                p, d = _unwrap_batched(a, level) if isinstance(a, Tensor) else (a, None)
                phys.append(p)
                bdims.append(d)
            if not _weights_batched(name, bdims):
                with interpreter.lower():
                    if all(d is None for d in bdims):
                        return OPS[name](*phys)
                    outs = _folded(name, phys, bdims, interpreter.batch_size())
                outs = [o if d is None else _add_batch_dim(o, d, level) for o, d in outs]
                return tuple(outs) if len(outs) > 1 else outs[0]
        return _TORCH_OPS[name](*args)
    return kernel


_functorch_lib = torch.library.Library("fastrnn", "IMPL")
for _name in OPS:
    _functorch_lib.impl(_name, _under_functorch(_name), "FuncTorchDynamicLayerFrontMode")
