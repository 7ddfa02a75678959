"""The eager fast path: cells, one-step layer calls and small inference runs straight to the
fused step kernel.

A decoder, sampler or streaming model calls a cell (or a layer with one time step) once per
step from Python. Through the op layer such a call pays more around the kernel than in it:
a separate input-projection GEMM, the custom-op dispatcher, and argument checks on every
layer boundary. Here one call does the projection, the recurrence and the gate epilogue
(``fastrnn._C.cell_forward``), and autograd goes through a plain ``autograd.Function``
whose backward is one kernel call too for small steps (the pointwise part and the weight
products in one pass over the weights; torch's GEMMs for large ones). Inference over a
sequence runs each layer-direction's steps in one such call where that pays (``steps_pay``).

It is taken only when nothing needs the op layer (``eager`` and ``usable``): plain eager
mode (not compiling, exporting, tracing or scripting; no torch-function or dispatch mode; no
functorch transform), plain CPU tensors of one float dtype (float32/float64), contiguous
(the input's rows may be strided: a cell fed ``series[:, t]`` reads them in place), and the
compiled ``cpu`` backend chosen. Everything else, including every input that
would be an error, goes the usual way, which validates and raises torch.nn's errors.
The numbers are the op path's (tests compare the two, and both against torch.nn). Batched
gradients reaching a step's backward (``is_grads_batched``, vectorised jacobians, gradcheck's
batched check), which the kernels cannot read, replay the step in torch's ops instead.
"""
from __future__ import annotations

import torch
from torch.overrides import has_torch_function

from .backends import cpu as _cpu
from .backends._common import transformed

__all__ = ["eager", "usable", "usable_bf16", "cell", "steps", "steps_pay", "CELL_GATES", "MAX_STEPS_ROWS",
           "MAX_STEPS", "MIN_PACKED_ROWS"]

_FLOATS = (torch.float32, torch.float64)
CELL_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1, "PEEPHOLE": 4}
# the kernel's cell kind ("PEEPHOLE": the LSTM cell with peephole weights w_ch)
_KINDS = {**_cpu.CELL_KINDS, "PEEPHOLE": _cpu.CELL_KINDS["LSTM"]}
_WITH_C = ("LSTM", "PEEPHOLE")

_is_compiling = torch.compiler.is_compiling
_is_tracing = torch.jit.is_tracing
_function_mode = torch._C._is_torch_function_mode_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_level = torch._C._functorch.peek_interpreter_stack
_legacy_batched = torch._C._functorch.is_legacy_batchedtensor


def eager():
    """Plain eager mode: not compiling, exporting, tracing or scripting, no torch-function
    or dispatch mode, no functorch transform. Asked first, before any look at shapes
    (which a tracer would record)."""
    return not (_is_compiling() or _is_tracing() or _function_mode() or _dispatch_modes()
                or _functorch_level() is not None)


def usable(tensors, strided_first=True):
    """Whether ``tensors`` (a tuple of the call's inputs and weights, the first a tensor,
    None entries allowed) may take the fast path in eager mode (``eager()``): plain CPU
    tensors of one float dtype, contiguous (with ``strided_first``, the first only along
    its last dimension: the kernels read the rows of ``series[:, t]`` in place), the first
    not a BatchedTensor of legacy vmap (``torch._vmap_internals.vmap``, which ``eager()``
    does not see, batches the input). About a microsecond for a cell's seven."""
    if has_torch_function(tensors):
        return False
    first = tensors[0]
    dtype = first.dtype
    if dtype not in _FLOATS or _legacy_batched(first):
        return False
    if strided_first:
        if first.stride(-1) != 1 or not first.is_cpu:
            return False
        tensors = tensors[1:]
    for t in tensors:
        if t is not None and (t.dtype != dtype or not t.is_cpu or not t.is_contiguous()):
            return False
    return True


def usable_bf16(acts, weights):
    """Whether a cell step on bfloat16 activations ``acts`` (x, h, c: the first a tensor,
    None entries allowed) with ``weights`` all float32 (float32 copies) or all bfloat16 (a
    bfloat16 module's own, which the kernel widens as it reads them) may run ``cell``'s
    bfloat16 inference kernel: CPU, the layouts of ``usable``, and no gradient asked for
    (training runs float32 copies with autograd)."""
    if has_torch_function(acts + weights) or _legacy_batched(acts[0]):
        return False
    grad = torch.is_grad_enabled()
    first = acts[0]
    if first.stride(-1) != 1 or not first.is_cpu or (grad and first.requires_grad):
        return False
    for t in acts[1:]:
        if t is not None and (t.dtype != torch.bfloat16 or not t.is_cpu or not t.is_contiguous()
                              or (grad and t.requires_grad)):
            return False
    wdtype = weights[0].dtype
    if wdtype not in (torch.float32, torch.bfloat16):
        return False
    for t in weights:
        if t is not None and (t.dtype != wdtype or not t.is_cpu or not t.is_contiguous()
                              or (grad and t.requires_grad)):
            return False
    return True


class _Cell(torch.autograd.Function):
    """One cell step with autograd: inputs (kind, x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch);
    outputs (h', c') for LSTM and PEEPHOLE, h' otherwise. The saved tensors are those the
    kernel's backward reads (for LSTM: the activated gates and c'; GRU: r, z, n and
    W_hn h + b_hn)."""

    @staticmethod
    def forward(ctx, kind, x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch):
        h1, c1, saved = _cpu.cell_forward(_KINDS[kind], x, h, c, w_ih, w_hh, b_ih, b_hh, True,
                                          w_ch)
        ctx.kind = kind
        ctx.save_for_backward(x, h, c, w_ih, w_hh, h1, c1, saved, w_ch)
        ctx.biases = (b_ih, b_hh)  # (None, None) without bias; the tensors only for a double backward
        return (h1, c1) if kind in _WITH_C else h1

    @staticmethod
    def backward(ctx, dh1, dc1=None):
        x, h, c, w_ih, w_hh, h1, c1, saved, w_ch = ctx.saved_tensors
        kind = ctx.kind
        has_bias = ctx.biases[0] is not None
        if torch.is_grad_enabled():  # create_graph=True: gradients that are differentiable
            return (None,) + _replay_grads(ctx, kind, x, h, c, w_ih, w_hh, w_ch, dh1, dc1)
        if transformed(dh1) or (dc1 is not None and transformed(dc1)):
            # batched gradients (vmap over backward): torch's ops, which vmap batches
            with torch.enable_grad():
                return (None,) + _replay_grads(ctx, kind, x, h, c, w_ih, w_hh, w_ch, dh1, dc1,
                                               create_graph=False)
        k = _KINDS[kind]
        dh1 = dh1.contiguous()
        dc1 = None if dc1 is None else dc1.contiguous()
        need = ctx.needs_input_grad
        G = CELL_GATES[kind]
        if x.shape[0] * G * w_hh.shape[1] * (x.shape[1] + w_hh.shape[1]) <= _ONE_PASS_MACS:
            dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_ch = _cpu.cell_backward_all(
                k, dh1, dc1, x.contiguous(), h, c, w_ih, w_hh, h1, c1, saved, G, need[1],
                has_bias, w_ch)  # (that kernel reads x's rows densely)
            return None, dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_ch
        dpre_x, dpre_h, dc, dh_direct, dw_ch = _cpu.cell_backward(
            k, dh1, dc1, h, c, h1, c1, saved, G, w_ch)
        dx = dpre_x.mm(w_ih) if need[1] else None
        dh = None
        if need[2]:
            dh = dpre_h.mm(w_hh)
            if dh_direct is not None:
                dh += dh_direct
        dw_ih = dpre_x.t().mm(x) if need[4] else None
        dw_hh = dpre_h.t().mm(h) if need[5] else None
        db_ih = db_hh = None
        if has_bias and (need[6] or need[7]):
            db_ih = dpre_x.sum(0)
            db_hh = dpre_h.sum(0) if dpre_h is not dpre_x else db_ih
        return None, dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_ch


_ATEN_CELLS = {"LSTM": torch._VF.lstm_cell, "GRU": torch._VF.gru_cell,
               "RNN_TANH": torch._VF.rnn_tanh_cell, "RNN_RELU": torch._VF.rnn_relu_cell}


def _peephole_cell(x, hx, w_ih, w_hh, b_ih, b_hh, w_ch):
    """The peephole LSTM step in torch ops (the reference backend's, one step)."""
    from .backends import reference
    xg = torch.nn.functional.linear(x, w_ih, None if b_ih is None else b_ih + b_hh)
    y, cn, _, _ = reference.lstm_forward(xg.unsqueeze(0), hx[0], hx[1], w_hh, None, None,
                                         False, False, w_ch)
    return y[0], cn


def _replay_grads(ctx, kind, x, h, c, w_ih, w_hh, w_ch, dh1, dc1, create_graph=True):
    """The step's gradients as a graph (double backward: gradient penalties, Hessian-vector
    products): torch's own cell op, which has a second derivative (the peephole cell: its
    torch ops), replayed on the saved inputs and differentiated with ``create_graph``.
    Costs one more step; only then, and for batched gradients (``create_graph=False``),
    which the kernels cannot read. Runs with gradients enabled."""
    b_ih, b_hh = ctx.biases
    ins = [x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch]
    want = [i for i, t in enumerate(ins) if t is not None and ctx.needs_input_grad[i + 1]]
    if kind == "PEEPHOLE":
        outs = _peephole_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh, w_ch)
        grad_outs = (dh1, dc1)
    elif kind == "LSTM":
        outs = _ATEN_CELLS[kind](x, (h, c), w_ih, w_hh, b_ih, b_hh)
        grad_outs = (dh1, dc1)
    else:
        outs = (_ATEN_CELLS[kind](x, h, w_ih, w_hh, b_ih, b_hh),)
        grad_outs = (dh1,)
    pairs = [(o, g) for o, g in zip(outs, grad_outs) if g is not None]
    got = torch.autograd.grad([o for o, _ in pairs], [ins[i] for i in want],
                              [g for _, g in pairs], create_graph=create_graph,
                              allow_unused=True)
    res = [None] * len(ins)
    for i, g in zip(want, got):
        res[i] = g
    return tuple(res)


# A step's backward does its weight products in the kernel (one pass over the weights)
# up to this many multiply-adds, where torch's GEMM calls would cost more in overhead than
# in arithmetic; beyond it, torch's multithreaded GEMMs.
_ONE_PASS_MACS = 1 << 20

# Function.apply's Python wrapper only adds functorch handling, which the fast path never
# needs (``eager()``): the C++ apply skips that Python layer's per-step overhead.
_cell_apply = super(torch.autograd.Function, _Cell).apply


def cell(kind, x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch=None, round_bf16=False):
    """One step of ``kind`` ("LSTM", "GRU", "RNN_TANH", "RNN_RELU", "PEEPHOLE" with the
    peephole weights w_ch [3H]): x [N, I], h (and c) [N, H]; returns (h', c') for LSTM and
    PEEPHOLE, else h'. Arguments already checked by the caller (``usable`` and the shapes).
    ``round_bf16`` (float32 inference under CPU autocast, no gradient asked for): the
    products read x and the weights rounded to bfloat16."""
    if round_bf16:
        h1, c1, _ = _cpu.cell_forward(_KINDS[kind], x, h, c, w_ih, w_hh, b_ih, b_hh, False,
                                      w_ch, round_bf16=True)
        return (h1, c1) if kind in _WITH_C else h1
    if torch.is_grad_enabled() and (x.requires_grad or h.requires_grad or w_ih.requires_grad
                                    or w_hh.requires_grad
                                    or (c is not None and c.requires_grad)
                                    or (b_ih is not None and b_ih.requires_grad)
                                    or (b_hh is not None and b_hh.requires_grad)
                                    or (w_ch is not None and w_ch.requires_grad)):
        return _cell_apply(kind, x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch)
    if x.dtype == torch.bfloat16:  # (``usable_bf16``: inference, float32 weights)
        h1, c1 = _cpu.cell_forward_bf16(_KINDS[kind], x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch)
    else:
        h1, c1, _ = _cpu.cell_forward(_KINDS[kind], x, h, c, w_ih, w_hh, b_ih, b_hh, False,
                                      w_ch)
    return (h1, c1) if kind in _WITH_C else h1


# Inference over a sequence: the steps of one layer and direction in one call, each step's
# projection fused into its recurrent product (``steps``), instead of the projection of all
# steps as one GEMM and then the recurrence kernel. Fused against separate:
#  * N <= MAX_STEPS_ROWS (dot products off the weights): faster on short sequences (it saves
#    the fixed cost of a projection call, a packed-weight check and the thread team), slower
#    on long ones, where its per-step cost outweighs that fixed saving (hence MAX_STEPS);
#  * N >= MIN_PACKED_ROWS (packed panels): faster at any T (the projection [T, N, G*H], tens
#    of MB for long sequences at large batch, is never written to memory and read back);
#  * between, neither is reliably faster: the sequence kernels stay.
MAX_STEPS_ROWS = 4
MAX_STEPS = 64
MIN_PACKED_ROWS = 32


def steps_pay(T, N):
    """Whether inference over T steps at batch N runs the fused steps (see above)."""
    return (N <= MAX_STEPS_ROWS and T <= MAX_STEPS) or N >= MIN_PACKED_ROWS


def steps(kind, x, h, c, w_ih, w_hh, b_ih, b_hh, reverse, w_ch=None, lengths=None):
    """Inference: ``kind``'s steps over x [T, N, I] (any strides over T and N) from h (and
    c) [N, H], backwards with ``reverse`` -> (y [T, N, H], c_n [N, H] or None). With
    ``lengths`` [N] the state is frozen past each sequence's end (the backend contract's
    semantics: y repeats it)."""
    return _cpu.cell_forward_seq(_KINDS[kind], x, h, c, w_ih, w_hh, b_ih, b_hh, reverse, w_ch,
                                 lengths)
