"""Multi-layer, bidirectional RNN driver over the ``fastrnn`` ops.

Per layer and direction: the input projection of all steps as ONE ``F.linear``
(xg = x W_ih^T + b_ih (+ b_hh for LSTM/RNN)), then one recurrence op
(``torch.ops.fastrnn.*_forward``), whose backend does the step loop. Directions are
concatenated; dropout is applied between layers in training only. PackedSequence input
runs as a padded batch with per-sequence lengths (the backends freeze the state past each
sequence's end) and goes back to a PackedSequence with the same indices.

Plain eager calls that need none of this (one time step; inference where fused steps pay,
``fastpath.steps_pay``) go to ``fastrnn.fastpath`` instead: one fused step kernel call per
layer and direction. Eager inference calls the ops' bodies without the dispatcher.

``weights`` is torch.nn's flat list (``RNNBase._flat_weights`` order): per layer and
direction ``w_ih, w_hh[, b_ih, b_hh][, w_hr]``.
"""

import torch
import torch.nn.functional as F
from torch import _VF
from torch.nn.utils.rnn import PackedSequence

from . import _memory
from . import _precision
from . import _validation as V
from . import backends
from . import fastpath
from . import ops  # registers torch.ops.fastrnn.*
from .backends import reference

__all__ = ["rnn", "lstm", "gru", "rnn_tanh", "rnn_relu", "peephole_lstm",
           "lstm_cell", "gru_cell", "rnn_cell", "peephole_lstm_cell", "last_backend", "resolve_backend"]

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU", "PEEPHOLE")
# backend= value for the recurrence as plain torch ops (the reference's forward, autograd by
# torch), for calls the kernels or the custom ops do not take: a zero size (batch, hidden or
# input). (Under torch.func transforms the custom ops run: see ``ops.batched_call``.)
TORCH_OPS = "torch-ops"
# backend= value inside a bfloat16 inference call routed to the bfloat16 sequence kernels
# (``_bf16_route``): each layer-direction runs ``_bf16_direction``.
BF16_KERNELS = "cpu-bf16"
_LSTM_MODES = ("LSTM", "PEEPHOLE")  # the modes with a cell state
_last = {"backend": None}


def last_backend():
    """Name of the backend that ran the most recent fastrnn op call (eager mode)."""
    return _last["backend"]


_warned = set()


def _warn_once(key, message):
    if key not in _warned:
        _warned.add(key)
        import warnings
        warnings.warn(message, RuntimeWarning, stacklevel=4)


@torch.compiler.assume_constant_result
def _resolve(backend, device_type, low_precision):
    # Evaluated eagerly even under torch.compile (it imports modules, reads the
    # environment); the compiled graph keeps the resulting name as a constant.
    name = backends.resolve(backend, device_type)
    if name in ("cpu", "numba") and low_precision:
        requested = backends.get_default_backend() if backend is None else backend
        if requested == "auto":
            _warn_once("low-precision-cpu",
                       "fastrnn: float16/bfloat16 tensors passed to fastrnn's ops directly "
                       "on the CPU run the reference backend (a step loop in torch ops); the "
                       "layers and cells run them through the float32 kernels")
            return "reference"  # compiled CPU kernels: float32/float64 only
        raise TypeError(f"backend {name!r} supports float32 and float64 only; use "
                        f"backend='reference' for other dtypes")
    return name


@torch.compiler.assume_constant_result
def _resolve_peephole(backend, name):
    """A backend without peephole LSTM kernels (every built-in one has them; a registered
    one may not): "auto" runs the reference (torch ops); asked for by name, an error."""
    requested = backends.get_default_backend() if backend is None else backend
    if requested == "auto":
        return "reference"
    raise ValueError(f"backend {name!r} has no peephole LSTM kernels; use backend='auto' "
                     f"or 'reference' for PeepholeLSTM")


def resolve_backend(backend, x, peephole=False):
    """Resolve ``backend`` (None, "auto" or a name) for tensors like ``x``; records it."""
    name = _resolve(backend, x.device.type, x.dtype not in (torch.float32, torch.float64))
    if peephole and not backends.has_peepholes(name):
        name = _resolve_peephole(backend, name)
    if not torch.compiler.is_compiling():
        _last["backend"] = name
    return name


_needs_grad = _memory.needs_grad


def _split_weights(weights, num_layers, num_directions, has_biases, proj_size, peephole=False):
    per = 2 + 2 * bool(has_biases) + (1 if proj_size > 0 else 0) + int(peephole)
    if len(weights) != per * num_layers * num_directions:
        raise ValueError(f"expected {per * num_layers * num_directions} weight tensors "
                         f"({per} per layer and direction), got {len(weights)}")
    groups = []
    for k in range(num_layers * num_directions):
        w = list(weights[k * per:(k + 1) * per])
        w_ih, w_hh = w[0], w[1]
        b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
        w_ch = w.pop() if peephole else None
        w_hr = w[-1] if proj_size > 0 else None
        groups.append((w_ih, w_hh, b_ih, b_hh, w_hr, w_ch))
    return groups


def _project(mode, x, w, slot=0, backend=None):
    """The input projection of all steps as ONE GEMM: xg [T, N, G*H] (and GRU's b_hh)."""
    w_ih, w_hh, b_ih, b_hh = w[:4]
    if mode == "GRU":
        if b_hh is None:
            b_hh = w_hh.new_zeros(w_hh.shape[0])
        return _memory.linear(x, w_ih, b_ih, slot, backend), b_hh  # b_hh stays inside the reset gate's product
    bias = None if b_ih is None else b_ih + b_hh
    return _memory.linear(x, w_ih, bias, slot, backend), None


_OPS = {"LSTM": torch.ops.fastrnn.lstm_forward, "GRU": torch.ops.fastrnn.gru_forward,
        "RNN": torch.ops.fastrnn.rnn_forward}
_EAGER_OPS = {"LSTM": ops.lstm_forward_eager, "GRU": ops.gru_forward_eager,
              "RNN": ops.rnn_forward_eager}


def _recur(mode, xg, b_hh, h0, c0, w, lengths, reverse, backend):
    """The recurrence of one layer and direction -> (y [T, N, R], h_n [N, R], c_n|None)."""
    w_hh, w_hr, w_ch = w[1], w[4], w[5]
    cn = None
    if backend == TORCH_OPS:
        if mode == "GRU":
            y, _ = reference.gru_forward(xg, h0, w_hh, b_hh, lengths, reverse, False)
        elif mode in _LSTM_MODES:
            y, cn, _, _ = reference.lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, reverse,
                                                 False, w_ch)
        else:
            y = reference.rnn_forward(xg, h0, w_hh, lengths, reverse, mode == "RNN_RELU")
        return y, y[0 if reverse else y.shape[0] - 1], cn
    # Inference in plain eager mode calls the op's body straight (arguments validated at
    # the module boundary); anything autograd, compile or export sees goes through the op.
    ops_ = _EAGER_OPS if fastpath.eager() and not _needs_grad(xg, h0, c0, w_hh, w_hr, b_hh) \
        else _OPS
    if mode == "GRU":
        training = _needs_grad(xg, h0, w_hh, b_hh)
        y, _ = ops_["GRU"](xg, h0, w_hh, b_hh, lengths, reverse, training, backend)
    elif mode == "LSTM":
        training = _needs_grad(xg, h0, c0, w_hh, w_hr)
        y, cn, _, _ = ops_["LSTM"](xg, h0, c0, w_hh, w_hr, lengths, reverse, training, backend)
    elif mode == "PEEPHOLE":
        # traced: one graph whether or not the trace's inputs needed a gradient
        training = _needs_grad(xg, h0, c0, w_hh, w_hr, w_ch) or torch.jit.is_tracing()
        if ops_ is _OPS:
            y, cn, _, _ = torch.ops.fastrnn.peephole_lstm_forward(
                xg, h0, c0, w_hh, w_hr, w_ch, lengths, reverse, training, backend)
        else:
            y, cn, _, _ = ops.lstm_forward_eager(xg, h0, c0, w_hh, w_hr, lengths, reverse,
                                                 training, backend, w_ch)
    else:
        y = ops_["RNN"](xg, h0, w_hh, lengths, reverse, mode == "RNN_RELU", backend)
    # frozen past each sequence's end: the final state is the last step's output
    index = 0 if reverse else y.shape[0] - 1
    if y.requires_grad and _memory.use_pool(backend, y):
        hn = _memory.FinalState.apply(y, index, backend)
    else:
        hn = y[index]
    return y, hn, cn


def _fused_steps_apply(mode, x, h0, c0, w, backend):
    """Whether a layer-direction's inference runs as fused steps (``fastpath.steps``, one
    kernel call, each step's projection fused in) on this general path: PackedSequence
    input (per-sequence lengths) and layers above the first reach it; unpacked input is
    routed earlier (``_fast_one_step``)."""
    w_ih, w_hh, b_ih, b_hh, w_hr, w_ch = w
    return (backend == "cpu" and w_hr is None and mode in fastpath.CELL_GATES
            and fastpath.eager() and fastpath.steps_pay(x.shape[0], x.shape[1])
            and not _needs_grad(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch)
            and fastpath.usable((x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch)))


def _bf16_route(plan, mode, input, hx, weights, proj_size, backend):
    """Whether a planned layer call runs on the bfloat16 sequence kernels (csrc/cpu/bf16.h):
    inference (no gradient asked of anything) in plain eager mode on the CPU, bfloat16
    results (a bfloat16 module, or autocast to bfloat16 where torch.nn's outputs are
    bfloat16), no projection, the compiled kernels chosen and the CPU's AVX512-BF16 build in
    use. Elsewhere the call runs the float32 kernels on converted tensors."""
    if (plan.device_type != "cpu" or plan.out_h != torch.bfloat16 or proj_size
            or plan.round_to not in (None, torch.bfloat16) or mode not in MODES):
        return False
    if plan.round_to is None and any(w.dtype != torch.bfloat16 for w in weights):
        return False
    if not fastpath.eager() or not _precision._cpu_kernels_run(backend):
        return False
    if backends.resolve_cached(backend, "cpu") != "cpu":
        return False
    from .backends import cpu
    if not cpu.bf16_available():
        return False
    x = input.data if isinstance(input, PackedSequence) else input
    if x.numel() == 0 or weights[1].numel() == 0:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)
                                    or any(t is not None and t.requires_grad for t in
                                           (_split_states(hx, mode in _LSTM_MODES) or ()))):
        return False
    return True


def _bf16_projections(plan, backend):
    """Whether a planned training call (float32 under CPU autocast to bfloat16, or a
    bfloat16 module's: both round their operands to bfloat16) runs its input projections'
    GEMMs in bfloat16 (``_memory.Bf16Linear``): plain eager mode, the compiled kernels, and
    a CPU whose bf16 GEMMs are fast (the 'avx512bf16' or 'amxbf16' build in use: without
    bf16 instructions torch's bf16 GEMM is slower than its float32 one)."""
    bf16_module = plan.round_to is None and plan.out_h == torch.bfloat16
    if (plan.round_to != torch.bfloat16 and not bf16_module) or plan.device_type != "cpu" \
            or not fastpath.eager():
        return False
    if not _precision._cpu_kernels_run(backend) or backends.resolve_cached(backend, "cpu") != "cpu":
        return False
    from .backends import cpu
    return cpu.bf16_available()


_TO_BF16 = _precision.Plan("cpu", None, torch.bfloat16, torch.bfloat16, torch.bfloat16)


def _bf16_direction(mode, x, h0, c0, w, lengths, reverse):
    """One layer-direction of a bfloat16 inference call: the input projection of all steps
    as one bfloat16 GEMM (torch's, fp32 accumulation, its result rounded to bf16), the
    recurrence on the bfloat16 kernels. x [T, N, I] and the weights bfloat16, h0/c0
    float32 -> (y [T, N, H] bf16, h_n bf16, c_n fp32)."""
    from .backends import cpu
    w_ih, w_hh, b_ih, b_hh, _, w_ch = w
    T, N, I = x.shape
    if mode == "GRU":
        bias = None if b_ih is None else b_ih.to(torch.float32)
        b_rec = w_hh.new_zeros(w_hh.shape[0]) if b_hh is None else b_hh
        b_rec = b_rec.to(torch.float32)
    else:
        bias = None if b_ih is None else b_ih.to(torch.float32) + b_hh.to(torch.float32)
        b_rec = None
    common = (h0.to(torch.float32), None if c0 is None else c0.to(torch.float32), w_hh, b_rec,
              None if w_ch is None else w_ch.to(torch.float32), lengths, reverse)
    # the projection fused into each step's GEMM (the GRU's n gate needs its x and h parts
    # apart: r multiplies only the latter, so the GRU projects first)
    if _BF16_FUSED_PROJECTION and mode != "GRU":
        y, _, cn = cpu.bf16_seq_forward(mode, None, *common, x=x, w_ih=w_ih, bias=bias)
    else:
        x2 = x.reshape(T * N, I)
        xg = (torch.mm(x2, w_ih.t()) if bias is None
              else torch.addmm(bias.to(torch.bfloat16), x2, w_ih.t()))
        y, _, cn = cpu.bf16_seq_forward(mode, xg.view(T, N, -1), *common)
    return y, y[0 if reverse else T - 1], cn


_BF16_FUSED_PROJECTION = True


def _layer_direction(mode, x, h0, c0, w, lengths, reverse, backend):
    """One layer, one direction. x [T, N, I] -> (y [T, N, R], h_n [N, R], c_n [N, H]|None)."""
    if backend == BF16_KERNELS:
        return _bf16_direction(mode, x, h0, c0, w, lengths, reverse)
    if _fused_steps_apply(mode, x, h0, c0, w, backend):
        y, cn = fastpath.steps(mode, x, h0, c0, w[0], w[1], w[2], w[3], reverse, w[5], lengths)
        return y, (y[0] if reverse else y[-1]), cn
    xg, b_hh = _project(mode, x, w, slot=int(reverse), backend=backend)
    return _recur(mode, xg, b_hh, h0, c0, w, lengths, reverse, backend)


def _stack_layers(mode, x, num_layers, D, dropout, train, direction):
    """Layers over x, each the concatenation of its D directions, dropout between layers in
    training; ``direction(x, k, reverse)`` runs layer-direction k -> (y, h_n, c_n|None).
    Returns (output, h_n [L*D, ...], c_n [L*D, ...] or None)."""
    hns, cns = [], []
    for layer in range(num_layers):
        ys = []
        for d in range(D):
            y, hn, cn = direction(x, layer * D + d, d == 1)
            ys.append(y)
            hns.append(hn)
            cns.append(cn)
        x = torch.cat(ys, dim=-1) if D == 2 else ys[0]
        if dropout > 0 and train and layer < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)
    hn = torch.stack(hns, 0)
    cn = torch.stack(cns, 0) if mode in _LSTM_MODES else None
    return x, hn, cn


def _run_layers(mode, x, h0, c0, groups, num_layers, bidirectional, dropout, train,
                lengths, backend):
    """x [T, N, I]; h0 [L*D, N, R]; c0 [L*D, N, H] or None."""
    def direction(x, k, reverse):
        return _layer_direction(mode, x, h0[k], None if c0 is None else c0[k], groups[k],
                                lengths, reverse, backend)
    return _stack_layers(mode, x, num_layers, 2 if bidirectional else 1, dropout, train,
                         direction)


def _packed_to_padded(data, batch_sizes):
    """Packed data [sum(len), I] -> (padded [T, N, I] in packed (sorted) order, lengths,
    a repacking function for the output [T, N, F]). Eager: one gather each way
    (index_select; its backward one scatter-add), the indices computed on the CPU from
    batch_sizes. (torch's own pad_packed_sequence copies slice by slice, and its backward
    copies the whole gradient once per distinct length.) Traced or compiled: masks and
    indexing, which the tracers know."""
    if not fastpath.eager():
        x, lengths, mask = _masked_packed_to_padded(data, batch_sizes)
        return x, lengths, lambda out: out[mask]
    T, N = batch_sizes.numel(), int(batch_sizes[0])
    mask = torch.arange(N).unsqueeze(0) < batch_sizes.unsqueeze(1)  # [T, N], CPU
    lengths = mask.sum(0)  # [N] int64, non-increasing
    valid = mask.view(-1).nonzero().squeeze(1)  # [sum(len)]: packed order is row-major
    pos = torch.full((T * N,), data.shape[0], dtype=torch.long)  # pads: an appended zero row
    pos[valid] = torch.arange(valid.numel())
    src = torch.cat([data, data.new_zeros(1, data.shape[-1])])
    padded = src.index_select(0, pos.to(data.device)).view(T, N, data.shape[-1])
    valid = valid.to(data.device)
    return padded, lengths, lambda out: out.reshape(T * N, out.shape[-1]).index_select(0, valid)


def _masked_packed_to_padded(data, batch_sizes):
    """Packed data [sum(len), I] -> padded [T, N, I] in packed (sorted) order, lengths."""
    T, N = batch_sizes.numel(), int(batch_sizes[0])
    mask = torch.arange(N).unsqueeze(0) < batch_sizes.unsqueeze(1)  # [T, N], CPU
    lengths = mask.sum(0)  # [N] int64, non-increasing
    mask = mask.to(data.device)
    padded = data.new_zeros(T, N, data.shape[-1]).index_put((mask,), data)
    return padded, lengths, mask


def rnn(mode, input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
        batch_first, proj_size=0, backend=None):
    """torch.nn-style RNN forward for ``mode`` in LSTM, GRU, RNN_TANH, RNN_RELU.

    Returns ``(output, h_n)``, or ``(output, (h_n, c_n))`` for LSTM, with torch.nn's shapes;
    ``output`` is a PackedSequence when ``input`` is one.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    plan = _layer_plan(mode, input, hx, weights, proj_size, backend)
    if plan is not None and _bf16_route(plan, mode, input, hx, weights, proj_size, backend):
        with plan.context():
            # states in bf16 too: torch.nn rounds them so in the routed cases (its autocast
            # casts the oneDNN LSTM's states and the RNN's matmul operands)
            out, hn = rnn(mode, _TO_BF16.sequence(input), _map_states(hx, _TO_BF16.tensor),
                          [_TO_BF16.weight(w) for w in weights], has_biases, num_layers,
                          dropout, train, bidirectional, batch_first, proj_size, BF16_KERNELS)
        if mode in _LSTM_MODES:
            return out, (hn[0], hn[1].to(plan.out_c))
        return out, hn
    if plan is not None:  # float16/bfloat16 on the CPU, autocast (fastrnn._precision)
        with plan.context(), _memory.bf16_projections(_bf16_projections(plan, backend)):
            out, hn = rnn(mode, plan.sequence(input), _map_states(hx, plan.state),
                          [plan.weight(w) for w in weights], has_biases, num_layers, dropout,
                          train, bidirectional, batch_first, proj_size, backend)
        out = plan.output(out, plan.out_h)
        if mode in _LSTM_MODES:
            return out, (hn[0].to(plan.out_h), hn[1].to(plan.out_c))
        return out, hn.to(plan.out_h)
    fast = _fast_one_step(mode, input, hx, weights, has_biases, num_layers, dropout, train,
                          bidirectional, batch_first, proj_size, backend)
    if fast is not None:
        return fast
    is_lstm = mode in _LSTM_MODES
    name = "LSTM" if is_lstm else ("GRU" if mode == "GRU" else "RNN")  # torch.nn's words
    D = 2 if bidirectional else 1
    groups = _split_weights(weights, num_layers, D, has_biases, proj_size, mode == "PEEPHOLE")
    w0 = groups[0][0]
    hidden_size = groups[0][1].shape[1] if proj_size == 0 else groups[0][4].shape[1]
    R = proj_size if proj_size > 0 else hidden_size

    # torch.nn's checks in its order, then fastrnn's (fastrnn._validation)
    packed = isinstance(input, PackedSequence)
    if packed:
        V.check_packed(input)
        data, batch_sizes, sorted_indices, unsorted_indices = input
        x, N, T = data, int(batch_sizes[0]), batch_sizes.numel()
        given = hx
        if hx is not None and sorted_indices is not None:
            hx = V.permute_states(hx, sorted_indices, is_lstm)
    else:
        V.check_layer_input(name, input)
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(0 if batch_first else 1)
        N, T = (x.shape[0], x.shape[1]) if batch_first else (x.shape[1], x.shape[0])
        if hx is not None:
            hx = V.layer_states(hx, is_lstm, batched)
        given = hx
    h_shape = (num_layers * D, N, R)
    c_shape = (num_layers * D, N, hidden_size)

    def torch_layer():
        return _torch_layer(mode, x, batch_sizes if packed else None, hx, h_shape, c_shape,
                            weights, has_biases, num_layers, dropout, train, bidirectional,
                            batch_first)

    # nn.LSTM checks no packed input: its op's errors for the states' structure and the
    # input's dtype, its checks for a tensor input for the sizes (its op, given those,
    # fails deep inside or misreads them)
    packed_lstm = packed and is_lstm
    if packed_lstm and hx is not None and V.pair_error(hx) is not None:
        V.raise_as_torch(torch_layer, V.pair_error(hx))
    h, c = (None, None) if hx is None else (hx[0], hx[1]) if is_lstm else (hx, None)
    error = V.forward_args_error(x, h, c, w0, packed, h_shape, c_shape,
                                 check_dtype=not packed_lstm)
    if error is not None:
        raise error
    error = V.layer_error(x, T, given, is_lstm, h_shape, c_shape, w0, packed)
    if error is not None:
        V.raise_as_torch(torch_layer, error)

    lengths = None
    if packed:
        x, lengths_cpu, repack = _packed_to_padded(data, batch_sizes)
        if int(lengths_cpu[-1]) < x.shape[0]:  # some sequence shorter than T
            lengths = lengths_cpu.to(x.device)
    elif batch_first:
        x = x.transpose(0, 1)  # [T, N, I]
    if hx is None:
        h0 = x.new_zeros(h_shape)
        c0 = x.new_zeros(c_shape) if is_lstm else None
    else:
        h0, c0 = (hx[0], hx[1]) if is_lstm else (hx, None)

    if N == 0 or hidden_size == 0 or x.shape[-1] == 0:
        name_resolved = TORCH_OPS
        if not torch.compiler.is_compiling():
            _last["backend"] = "reference"  # its forward, as torch ops
    elif backend in (TORCH_OPS, BF16_KERNELS):
        name_resolved = backend
        if backend == BF16_KERNELS and not torch.compiler.is_compiling():
            _last["backend"] = "cpu"
    else:
        name_resolved = resolve_backend(backend, x, peephole=mode == "PEEPHOLE")
    out, hn, cn = _run_layers(mode, x, h0, c0, groups, num_layers, bidirectional, dropout,
                              train, lengths, name_resolved)

    if packed:
        out = PackedSequence(repack(out), batch_sizes, sorted_indices, unsorted_indices)
        if unsorted_indices is not None:
            hn = hn.index_select(1, unsorted_indices)
            cn = cn.index_select(1, unsorted_indices) if is_lstm else None
    else:
        if batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(0 if batch_first else 1)
            hn = hn.squeeze(1)
            cn = cn.squeeze(1) if is_lstm else None
    return (out, (hn, cn)) if is_lstm else (out, hn)


_TORCH_LAYERS = {"LSTM": _VF.lstm, "PEEPHOLE": _VF.lstm, "GRU": _VF.gru,
                 "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}


def _torch_layer(mode, x, batch_sizes, hx, h_shape, c_shape, weights, has_biases, num_layers,
                 dropout, train, bidirectional, batch_first):
    """torch.nn's call of its op for these arguments (for the error it raises): ``x`` the
    batched input or a PackedSequence's data, ``hx`` as torch.nn passes it on, or None
    (zeros, as torch.nn makes them); a peephole LSTM's ``weights`` without the peepholes."""
    if hx is None:
        zeros = [x.new_zeros(h_shape)] + ([x.new_zeros(c_shape)] if mode in _LSTM_MODES else [])
        hx = tuple(zeros) if mode in _LSTM_MODES else zeros[0]
    if mode == "PEEPHOLE":  # w_ch closes each layer-direction's group
        per = len(weights) // (h_shape[0])
        weights = [w for i, w in enumerate(weights) if i % per != per - 1]
    if batch_sizes is not None:
        return _TORCH_LAYERS[mode](x, batch_sizes, hx, weights, has_biases, num_layers, dropout,
                                   train, bidirectional)
    return _TORCH_LAYERS[mode](x, hx, weights, has_biases, num_layers, dropout, train,
                               bidirectional, batch_first)


def _split_states(hx, two):
    """(h, c) of a well-formed ``hx`` (c None for one state), or None when it is not (the
    validation then raises torch.nn's error)."""
    if hx is None:
        return None, None
    if two:
        if isinstance(hx, (tuple, list)) and len(hx) == 2:
            return hx[0], hx[1]
        return None
    return hx, None


def _map_states(hx, fn):
    if hx is None:
        return None
    if isinstance(hx, (tuple, list)):
        return tuple(fn(h) for h in hx)
    return fn(hx)


def _layer_plan(mode, input, hx, weights, proj_size, backend):
    states = _split_states(hx, mode in _LSTM_MODES)
    if states is None or not weights:
        return None
    packed = isinstance(input, PackedSequence)
    kind = "LSTM-layer" if mode in _LSTM_MODES else ("GRU" if mode == "GRU" else "RNN")
    return _precision.plan(kind, input.data if packed else input, states[0], states[1],
                           weights[0], backend, packed=packed, proj=proj_size > 0, layer=True)


def _cell_plan(kind, input, hx, w_ih, backend):
    states = _split_states(hx, kind == "LSTM")
    if states is None:
        return None
    return _precision.plan(kind, input, states[0], states[1], w_ih, backend)


def _planned_cell(plan, fn, input, hx, weights, two_states, fast=None):
    """A cell call under ``plan``: the inputs cast, the outputs in the plan's dtypes.
    ``fast`` (the cell's ``_fast_cell`` on the same arguments) is tried first: a bfloat16
    step loop then pays the casts and one fused step, not a second plan and dispatch."""
    if fast is not None and plan.round_to is None and input.dtype == torch.bfloat16:
        # a bfloat16 module: its inference step runs on the bfloat16 activations and
        # weights as they are (the kernel reads them into float32; no converted copies)
        out = fast(input, hx, *weights)
        if out is not None:
            return out
    if fast is not None and plan.round_to == torch.bfloat16 and plan.compute == torch.float32 \
            and not _any_grad(input, hx, weights):
        # autocast inference on the CPU: the float32 kernel rounds x and the weights to
        # bfloat16 as it reads them (no converted copies of the weights, nor a check of such
        # copies, per call); the states keep their precision (plan.state)
        x = input if input.dtype == torch.float32 else input.to(torch.float32)
        out = fast(x, _map_states(hx, plan.state), *weights, round_bf16=True)
        if out is not None:
            if two_states:
                return _as(out[0], plan.out_h), _as(out[1], plan.out_c)
            return _as(out, plan.out_h)
    with plan.context():
        args = (plan.tensor(input), _map_states(hx, plan.state),
                *[plan.weight(w) for w in weights])
        out = None if fast is None else fast(*args)
        if out is None:
            out = fn(*args)
    if two_states:
        return out[0].to(plan.out_h), out[1].to(plan.out_c)
    return out.to(plan.out_h)


def _as(t, dtype):
    return t if t.dtype == dtype else t.to(dtype)


def _any_grad(input, hx, weights):
    """Whether a gradient is asked of a cell call on these arguments."""
    if not torch.is_grad_enabled():
        return False
    states = hx if isinstance(hx, (tuple, list)) else (hx,)
    return any(isinstance(t, torch.Tensor) and t.requires_grad
               for t in (input, *states, *weights))


def _fast_backend(backend):
    """Whether ``backend`` resolves to the compiled CPU kernels for CPU tensors (recorded
    as the last backend when it does)."""
    if backends.resolve_cached(backend, "cpu") != "cpu":
        return False
    _last["backend"] = "cpu"
    return True


def _fast_one_step(mode, input, hx, weights, has_biases, num_layers, dropout, train,
                   bidirectional, batch_first, proj_size, backend):
    """Plain eager calls on the compiled CPU kernels that need none of the general path's
    machinery (``fastrnn.fastpath``): one time step (each layer and direction one fused cell
    step, with autograd), or inference over a sequence where fused steps pay
    (``fastpath.steps_pay``: each layer and direction one call running its steps). No
    projection (proj_size), not packed. Returns None
    whenever the general path must run (which also raises every error for bad arguments)."""
    if proj_size or not isinstance(input, torch.Tensor) or backend == BF16_KERNELS \
            or not fastpath.eager():
        return None
    dim = input.dim()
    if dim == 3:
        T = input.shape[1 if batch_first else 0]
        x = input.transpose(0, 1) if batch_first else input  # [T, N, I]
    elif dim == 2:
        T = input.shape[0]
        x = input.unsqueeze(1)
    else:
        return None
    N = x.shape[1]
    if T == 1:
        x = x[0]
    elif T == 0 or not fastpath.steps_pay(T, N):
        return None
    D = 2 if bidirectional else 1
    peep = mode == "PEEPHOLE"
    per = 2 + 2 * bool(has_biases) + peep  # (w_ch last)
    LD = num_layers * D
    is_lstm = mode in _LSTM_MODES
    G = fastpath.CELL_GATES[mode]
    if len(weights) != per * LD or N == 0:
        return None
    H = weights[1].shape[1]
    if x.shape[-1] != weights[0].shape[1] or H == 0 or x.shape[-1] == 0:
        return None
    if hx is None:
        h0 = c0 = None
    else:
        if is_lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                return None
            h0, c0 = hx
            if not isinstance(c0, torch.Tensor) or c0.shape != ((LD, N, H) if dim == 3 else (LD, H)):
                return None
        else:
            h0, c0 = hx, None
        if not isinstance(h0, torch.Tensor) or h0.shape != ((LD, N, H) if dim == 3 else (LD, H)):
            return None
        if dim == 2:
            h0 = h0.unsqueeze(1)
            c0 = c0.unsqueeze(1) if is_lstm else None
    for k in range(LD):
        w_ih, w_hh = weights[k * per], weights[k * per + 1]
        if w_hh.shape != (G * H, H) or w_ih.shape[0] != G * H or (
                k >= D and w_ih.shape[1] != D * H) or (
                peep and weights[(k + 1) * per - 1].shape != (3 * H,)):
            return None
    if T > 1 and _needs_grad(input, h0, c0, *weights):
        return None
    if not fastpath.usable((x, h0, c0) + tuple(weights)) \
            or not _fast_backend(backend):
        return None
    if h0 is None:
        h0 = x.new_zeros((LD, N, H))
        c0 = x.new_zeros((LD, N, H)) if is_lstm else None
    def direction(x, k, reverse):
        w = weights[k * per:(k + 1) * per]
        b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
        w_ch = w[-1] if peep else None
        c_k = c0[k] if is_lstm else None
        if T == 1:
            out = fastpath.cell(mode, x, h0[k], c_k, w[0], w[1], b_ih, b_hh, w_ch)
            y, cn = out if is_lstm else (out, None)
            return y, y, cn
        y, cn = fastpath.steps(mode, x, h0[k], c_k, w[0], w[1], b_ih, b_hh, reverse, w_ch)
        return y, (y[0] if reverse else y[-1]), cn

    x, hn, cn = _stack_layers(mode, x, num_layers, D, dropout, train, direction)
    if T == 1:
        x = x.unsqueeze(0)
    if dim == 3:
        out = x.transpose(0, 1) if batch_first else x
    else:
        out = x.squeeze(1)
        hn = hn.squeeze(1)
        cn = cn.squeeze(1) if is_lstm else None
    return (out, (hn, cn)) if is_lstm else (out, hn)


def lstm(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
         batch_first, proj_size=0, backend=None):
    return rnn("LSTM", input, hx, weights, has_biases, num_layers, dropout, train,
               bidirectional, batch_first, proj_size, backend)


def peephole_lstm(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
                  batch_first, proj_size=0, backend=None):
    """``weights``: per layer and direction ``w_ih, w_hh[, b_ih, b_hh][, w_hr], w_ch``."""
    return rnn("PEEPHOLE", input, hx, weights, has_biases, num_layers, dropout, train,
               bidirectional, batch_first, proj_size, backend)


def gru(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
        batch_first, backend=None):
    return rnn("GRU", input, hx, weights, has_biases, num_layers, dropout, train,
               bidirectional, batch_first, 0, backend)


def rnn_tanh(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
             batch_first, backend=None):
    return rnn("RNN_TANH", input, hx, weights, has_biases, num_layers, dropout, train,
               bidirectional, batch_first, 0, backend)


def rnn_relu(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
             batch_first, backend=None):
    return rnn("RNN_RELU", input, hx, weights, has_biases, num_layers, dropout, train,
               bidirectional, batch_first, 0, backend)


# ----------------------------------------------------------------------------- cells

_TORCH_CELLS = {"LSTM": _VF.lstm_cell, "PEEPHOLE": _VF.lstm_cell, "GRU": _VF.gru_cell,
                "RNN_TANH": _VF.rnn_tanh_cell, "RNN_RELU": _VF.rnn_relu_cell}


def _cell_prepare(mode, input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity=None):
    """Validate a cell call (torch.nn's checks in its order, then fastrnn's); return the
    batched input [N, I], the states [N, H] and whether the input was batched. The peephole
    cell is checked as torch.nn's LSTMCell (its weight_ch by its caller)."""
    two = mode in _LSTM_MODES
    name = "LSTMCell" if two else ("GRUCell" if mode == "GRU" else "RNNCell")
    V.check_cell_input(name, input, hx, two)
    batched = input.dim() == 2
    x = input if batched else input.unsqueeze(0)
    hx = V.cell_states(hx, two, batched)
    if nonlinearity not in (None, "tanh", "relu"):  # (nn.RNNCell checks it here)
        raise RuntimeError(f"Unknown nonlinearity: {nonlinearity}")
    if hx is None:
        shape = (x.shape[0], w_hh.shape[1])
        hx = (x.new_zeros(shape), x.new_zeros(shape)) if two else x.new_zeros(shape)

    def torch_cell():
        return _TORCH_CELLS[mode](x, hx, w_ih, w_hh, b_ih, b_hh)

    if two and not isinstance(hx, (tuple, list)):  # (torch's argument parser refuses it)
        V.raise_as_torch(torch_cell, V.pair_error(hx))
    V.check_cell_sizes(name, x, hx, two, w_ih, w_hh)
    error = V.cell_error(name, x, hx, two, w_ih)
    if error is not None:
        V.raise_as_torch(torch_cell, error)
    return x, (list(hx) if two else [hx]), batched


def _cell_backend(backend, x, H, peephole=False):
    """The backend for one cell step: plain torch ops for a zero size (batch, input or
    hidden), which the kernels do not take."""
    if x.shape[0] == 0 or x.shape[1] == 0 or H == 0:
        if not torch.compiler.is_compiling():
            _last["backend"] = "reference"  # its forward, as torch ops
        return TORCH_OPS
    return resolve_backend(backend, x, peephole=peephole)


def _fast_cell(mode, input, hx, w_ih, w_hh, b_ih, b_hh, backend, w_ch=None, round_bf16=False):
    """A cell call in plain eager mode on the compiled CPU kernels: one fused step
    (``fastrnn.fastpath``). None whenever the general path must run (which also raises
    every error for bad arguments). ``round_bf16``: float32 inference whose products read x
    and the weights rounded to bfloat16 (CPU autocast; the caller has checked that no
    gradient is asked for)."""
    if not isinstance(input, torch.Tensor) or not fastpath.eager():
        return None
    dim = input.dim()
    if dim not in (1, 2) or input.shape[-1] != w_ih.shape[1]:
        return None
    is_lstm = mode in _LSTM_MODES
    H = w_hh.shape[1]
    if mode == "PEEPHOLE" and (not isinstance(w_ch, torch.Tensor) or w_ch.shape != (3 * H,)):
        return None
    GH = fastpath.CELL_GATES[mode] * H
    if w_hh.shape[0] != GH or w_ih.shape[0] != GH:
        return None
    if (b_ih is not None and b_ih.shape != (GH,)) or (b_hh is not None and b_hh.shape != (GH,)):
        return None
    x = input if dim == 2 else input.unsqueeze(0)
    N = x.shape[0]
    if N == 0 or H == 0 or x.shape[1] == 0:
        return None
    c = None
    if hx is None:
        h = None
    else:
        if is_lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                return None
            h, c = hx
            if not isinstance(c, torch.Tensor) or c.shape != input.shape[:-1] + (H,):
                return None
            c = c if dim == 2 else c.unsqueeze(0)
        else:
            h = hx
        if not isinstance(h, torch.Tensor) or h.shape != input.shape[:-1] + (H,):
            return None
        h = h if dim == 2 else h.unsqueeze(0)
    if round_bf16:
        if x.dtype != torch.float32 or not fastpath.usable((x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch)):
            return None
    elif x.dtype == torch.bfloat16:
        if not fastpath.usable_bf16((x, h, c), (w_ih, w_hh, b_ih, b_hh, w_ch)):
            return None
    elif not fastpath.usable((x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch)):
        return None
    if not _fast_backend(backend):
        return None
    if h is None:
        h = x.new_zeros((N, H))
        c = x.new_zeros((N, H)) if is_lstm else None
    out = fastpath.cell(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch, round_bf16)
    if dim == 2:
        return out
    return (out[0].squeeze(0), out[1].squeeze(0)) if is_lstm else out.squeeze(0)


def _torch_ops_step(mode, xg, h, c, w_hh, b_hh=None, w_ch=None):
    """One step as plain torch ops (``TORCH_OPS``) -> (h_1 [N, H], c_1 or None)."""
    y, _, cn = _recur(mode, xg, b_hh, h, c, (None, w_hh, None, None, None, w_ch), None, False,
                      TORCH_OPS)
    return y[0], cn


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, backend=None):
    plan = _cell_plan("LSTM", input, hx, w_ih, backend)
    if plan is not None:
        return _planned_cell(plan, lambda *a: lstm_cell(*a, backend=backend), input, hx,
                             (w_ih, w_hh, b_ih, b_hh), True,
                             lambda *a, **k: _fast_cell("LSTM", *a, backend, **k))
    fast = _fast_cell("LSTM", input, hx, w_ih, w_hh, b_ih, b_hh, backend)
    if fast is not None:
        return fast
    x, (h, c), batched = _cell_prepare("LSTM", input, hx, w_ih, w_hh, b_ih, b_hh)
    bias = None if b_ih is None else b_ih + b_hh
    xg = F.linear(x, w_ih, bias).unsqueeze(0)  # [1, N, 4H]
    name = _cell_backend(backend, x, w_hh.shape[1])
    if name == TORCH_OPS:
        h1, cn = _torch_ops_step("LSTM", xg, h, c, w_hh)
    else:
        y, cn, _, _ = torch.ops.fastrnn.lstm_forward(xg, h, c, w_hh, None, None, False,
                                                     _needs_grad(xg, h, c, w_hh), name)
        h1 = y[0]
    return (h1, cn) if batched else (h1.squeeze(0), cn.squeeze(0))


def peephole_lstm_cell(input, hx, w_ih, w_hh, w_ch, b_ih=None, b_hh=None, backend=None):
    """One step of the peephole LSTM (``fastrnn.PeepholeLSTMCell``); w_ch [3H]."""
    plan = _cell_plan("LSTM", input, hx, w_ih, backend)
    if plan is not None:
        return _planned_cell(plan, lambda *a: peephole_lstm_cell(*a, backend=backend), input,
                             hx, (w_ih, w_hh, w_ch, b_ih, b_hh), True,
                             lambda x, h, wi, wh, wc, bi, bh, **k: _fast_cell(
                                 "PEEPHOLE", x, h, wi, wh, bi, bh, backend, wc, **k))
    fast = _fast_cell("PEEPHOLE", input, hx, w_ih, w_hh, b_ih, b_hh, backend, w_ch)
    if fast is not None:
        return fast
    x, (h, c), batched = _cell_prepare("PEEPHOLE", input, hx, w_ih, w_hh, b_ih, b_hh)
    H = w_hh.shape[1]
    if not isinstance(w_ch, torch.Tensor) or w_ch.shape != (3 * H,):
        raise RuntimeError(f"PeepholeLSTMCell: weight_ch must have shape [{3 * H}], got "
                           f"{list(w_ch.shape) if isinstance(w_ch, torch.Tensor) else w_ch}")
    bias = None if b_ih is None else b_ih + b_hh
    xg = F.linear(x, w_ih, bias).unsqueeze(0)  # [1, N, 4H]
    name = _cell_backend(backend, x, H, peephole=True)
    if name == TORCH_OPS:
        h1, cn = _torch_ops_step("PEEPHOLE", xg, h, c, w_hh, w_ch=w_ch)
        return (h1, cn) if batched else (h1.squeeze(0), cn.squeeze(0))
    training = _needs_grad(xg, h, c, w_hh, w_ch)
    if fastpath.eager() and not training:
        y, cn, _, _ = ops.lstm_forward_eager(xg, h, c, w_hh, None, None, False, False, name,
                                             w_ch)
    else:
        y, cn, _, _ = torch.ops.fastrnn.peephole_lstm_forward(xg, h, c, w_hh, None, w_ch, None,
                                                              False, training, name)
    h1 = y[0]
    return (h1, cn) if batched else (h1.squeeze(0), cn.squeeze(0))


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, backend=None):
    plan = _cell_plan("GRU", input, hx, w_ih, backend)
    if plan is not None:
        return _planned_cell(plan, lambda *a: gru_cell(*a, backend=backend), input, hx,
                             (w_ih, w_hh, b_ih, b_hh), False,
                             lambda *a, **k: _fast_cell("GRU", *a, backend, **k))
    fast = _fast_cell("GRU", input, hx, w_ih, w_hh, b_ih, b_hh, backend)
    if fast is not None:
        return fast
    x, (h,), batched = _cell_prepare("GRU", input, hx, w_ih, w_hh, b_ih, b_hh)
    xg = F.linear(x, w_ih, b_ih).unsqueeze(0)  # [1, N, 3H]
    if b_hh is None:
        b_hh = w_hh.new_zeros(w_hh.shape[0])
    name = _cell_backend(backend, x, w_hh.shape[1])
    if name == TORCH_OPS:
        h1, _ = _torch_ops_step("GRU", xg, h, None, w_hh, b_hh)
    else:
        y, _ = torch.ops.fastrnn.gru_forward(xg, h, w_hh, b_hh, None, False,
                                             _needs_grad(xg, h, w_hh, b_hh), name)
        h1 = y[0]
    return h1 if batched else h1.squeeze(0)


def rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", backend=None):
    mode = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}.get(nonlinearity)
    if mode is not None:  # (an unknown one is an error after torch.nn's rank checks)
        plan = _cell_plan("RNN", input, hx, w_ih, backend)
        if plan is not None:
            return _planned_cell(
                plan, lambda x, h, *w: rnn_cell(x, h, *w, nonlinearity=nonlinearity,
                                                backend=backend),
                input, hx, (w_ih, w_hh, b_ih, b_hh), False,
                lambda *a, **k: _fast_cell(mode, *a, backend, **k))
        fast = _fast_cell(mode, input, hx, w_ih, w_hh, b_ih, b_hh, backend)
        if fast is not None:
            return fast
    x, (h,), batched = _cell_prepare(mode or "RNN_TANH", input, hx, w_ih, w_hh, b_ih, b_hh,
                                     nonlinearity)
    bias = None if b_ih is None else b_ih + b_hh
    xg = F.linear(x, w_ih, bias).unsqueeze(0)  # [1, N, H]
    name = _cell_backend(backend, x, w_hh.shape[1])
    if name == TORCH_OPS:
        h1, _ = _torch_ops_step(mode, xg, h, None, w_hh)
    else:
        h1 = torch.ops.fastrnn.rnn_forward(xg, h, w_hh, None, False, mode == "RNN_RELU",
                                           name)[0]
    return h1 if batched else h1.squeeze(0)
