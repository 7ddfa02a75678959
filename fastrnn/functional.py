"""Multi-layer, bidirectional RNN driver over the ``fastrnn`` ops.

Per layer and direction: the input projection of all steps as ONE ``F.linear``
(xg = x W_ih^T + b_ih (+ b_hh for LSTM/RNN)), then one recurrence op
(``torch.ops.fastrnn.*_forward``), whose backend does the step loop. Directions are
concatenated; dropout is applied between layers in training only. PackedSequence input
runs as a padded batch with per-sequence lengths (the backends freeze the state past each
sequence's end) and goes back to a PackedSequence with the same indices.

``weights`` is torch.nn's flat list (``RNNBase._flat_weights`` order): per layer and
direction ``w_ih, w_hh[, b_ih, b_hh][, w_hr]``.
"""

import os
import threading

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from . import _validation as V
from . import backends
from . import fastpath
from . import ops  # noqa: F401  (registers torch.ops.fastrnn.*)

__all__ = ["rnn", "lstm", "gru", "rnn_tanh", "rnn_relu",
           "lstm_cell", "gru_cell", "rnn_cell", "last_backend", "resolve_backend"]

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
_last = {"backend": None}


def last_backend():
    """Name of the backend that ran the most recent fastrnn op call (eager mode)."""
    return _last["backend"]


@torch.compiler.assume_constant_result
def _resolve(backend, device_type, low_precision):
    # Evaluated eagerly even under torch.compile (it imports modules, reads the
    # environment); the compiled graph keeps the resulting name as a constant.
    name = backends.resolve(backend, device_type)
    if name in ("cpu", "numba") and low_precision:
        requested = backends.get_default_backend() if backend is None else backend
        if requested == "auto":
            return "reference"  # compiled CPU kernels: float32/float64 only
        raise TypeError(f"backend {name!r} supports float32 and float64 only; use "
                        f"backend='reference' for other dtypes")
    return name


def resolve_backend(backend, x):
    """Resolve ``backend`` (None, "auto" or a name) for tensors like ``x``; records it."""
    name = _resolve(backend, x.device.type, x.dtype not in (torch.float32, torch.float64))
    if not torch.compiler.is_compiling():
        _last["backend"] = name
    return name


def _needs_grad(*ts):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _split_weights(weights, num_layers, num_directions, has_biases, proj_size):
    per = 2 + 2 * bool(has_biases) + (1 if proj_size > 0 else 0)
    if len(weights) != per * num_layers * num_directions:
        raise ValueError(f"expected {per * num_layers * num_directions} weight tensors "
                         f"({per} per layer and direction), got {len(weights)}")
    groups = []
    for k in range(num_layers * num_directions):
        w = list(weights[k * per:(k + 1) * per])
        w_ih, w_hh = w[0], w[1]
        b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
        w_hr = w[-1] if proj_size > 0 else None
        groups.append((w_ih, w_hh, b_ih, b_hh, w_hr))
    return groups


_scratch = threading.local()


def _projection_buffer(numel, like, slot):
    """A reusable buffer for an inference-time input projection (never returned to the
    caller: the recurrence op consumes it). A fresh multi-MB tensor costs first-touch
    page faults on every call (measured here: 26 ms for 65 MB against a 4 ms fill of a
    reused one), which is what the ops would otherwise pay per layer and direction.
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


_POOLED_BACKENDS = ("cpu", "numba")


def _pooled_empty(*shape, like, backend):
    """Uninitialised memory from the compiled extension's pool (backend "cpu") or
    ``fastrnn._pool`` (numba): reused across training steps instead of page-faulted in."""
    if backend == "cpu":
        from .backends import cpu as cpu_backend
        return cpu_backend._empty(*shape, like=like)
    from . import _pool
    return _pool.empty(*shape, dtype=like.dtype)


class _PooledLinear(torch.autograd.Function):
    """F.linear over [T, N, I] for training with the CPU kernels, whose output (the
    [T, N, G*H] projection) and input gradient come from a buffer pool instead of fresh
    memory. A fresh projection costs first-touch page faults each step
    (measured here: ~15 ms of a ~205 ms LSTM training step at T500 N64 H128, 2 threads);
    the pool hands back the block the previous step freed."""

    @staticmethod
    def forward(ctx, x, weight, bias, backend):
        T, N, _ = x.shape
        out = _pooled_empty(T * N, weight.shape[0], like=x, backend=backend)
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.backend = bias is not None, backend
        return _linear_into(x, weight, bias, out)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        T, N, I = x.shape
        g2 = g.reshape(T * N, g.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            if torch.is_grad_enabled():  # create_graph=True: out= ops are not differentiable
                dx = g2.mm(weight).view(T, N, I)
            else:
                dx = _pooled_empty(T * N, I, like=x, backend=ctx.backend)
                torch.mm(g2, weight, out=dx)
                dx = dx.view(T, N, I)
        if ctx.needs_input_grad[1]:
            dw = g2.t().mm(x.reshape(T * N, I))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g2.sum(0)
        return dx, dw, db, None


def _linear_into(x, weight, bias, out):
    """F.linear of x [T, N, I] written into ``out`` [T*N, G] -> [T, N, G] (no autograd)."""
    T, N, I = x.shape
    x2 = x.reshape(T * N, I)
    if bias is None:
        torch.mm(x2, weight.t(), out=out)
    else:
        torch.addmm(bias, x2, weight.t(), out=out)
    return out.view(T, N, weight.shape[0])


def _use_pool(backend, t):
    """Whether autograd helpers put ``t``-sized training tensors in a buffer pool: eager
    mode, the CPU kernels (compiled or numba), float32/float64."""
    return (backend in _POOLED_BACKENDS and t.device.type == "cpu"
            and t.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling())


def _linear(x, weight, bias, slot, backend=None):
    """F.linear over [T, N, I]; outside autograd and compilation, into a reused buffer;
    in eager training on the CPU kernels, into pooled memory."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.linear(x, weight, bias)
    if _needs_grad(x, weight, bias):
        if _use_pool(backend, x):
            return _PooledLinear.apply(x, weight, bias, backend)
        return F.linear(x, weight, bias)
    T, N, _ = x.shape
    G = weight.shape[0]
    return _linear_into(x, weight, bias, _projection_buffer(T * N * G, x, slot).view(T * N, G))


def _project(mode, x, w, slot=0, backend=None):
    """The input projection of all steps as ONE GEMM: xg [T, N, G*H] (and GRU's b_hh)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = w
    if mode == "GRU":
        if b_hh is None:
            b_hh = w_hh.new_zeros(w_hh.shape[0])
        return _linear(x, w_ih, b_ih, slot, backend), b_hh  # b_hh stays inside the reset gate's product
    bias = None if b_ih is None else b_ih + b_hh
    return _linear(x, w_ih, bias, slot, backend), None


def _recur(mode, xg, b_hh, h0, c0, w, lengths, reverse, backend):
    """The recurrence of one layer and direction -> (y [T, N, R], h_n [N, R], c_n|None)."""
    w_hh, w_hr = w[1], w[4]
    cn = None
    if mode == "GRU":
        training = _needs_grad(xg, h0, w_hh, b_hh)
        y, _ = torch.ops.fastrnn.gru_forward(xg, h0, w_hh, b_hh, lengths, reverse,
                                             training, backend)
    elif mode == "LSTM":
        training = _needs_grad(xg, h0, c0, w_hh, w_hr)
        y, cn, _, _ = torch.ops.fastrnn.lstm_forward(xg, h0, c0, w_hh, w_hr, lengths,
                                                     reverse, training, backend)
    else:
        y = torch.ops.fastrnn.rnn_forward(xg, h0, w_hh, lengths, reverse,
                                          mode == "RNN_RELU", backend)
    # frozen past each sequence's end: the final state is the last step's output
    index = 0 if reverse else y.shape[0] - 1
    if y.requires_grad and _use_pool(backend, y):
        hn = _FinalState.apply(y, index, backend)
    else:
        hn = y[index]
    return y, hn, cn


class _FinalState(torch.autograd.Function):
    """``y[index]`` (the final state) whose gradient ``dy`` is built in pooled memory.

    ``y[index]``'s own backward allocates a fresh zero [T, N, R] tensor, paying first-touch
    page faults every training step (~6 ms for 16 MB here) when a model reads only h_n,
    as the IMDB classifiers do; the pool hands back last step's block instead."""

    @staticmethod
    def forward(ctx, y, index, backend):
        ctx.index, ctx.shape, ctx.backend = index, y.shape, backend
        return y[index].clone()

    @staticmethod
    def backward(ctx, g):
        dy = _pooled_empty(*ctx.shape, like=g, backend=ctx.backend)
        dy.zero_()
        dy[ctx.index].copy_(g)
        return dy, None, None


def _layer_direction(mode, x, h0, c0, w, lengths, reverse, backend):
    """One layer, one direction. x [T, N, I] -> (y [T, N, R], h_n [N, R], c_n [N, H]|None)."""
    xg, b_hh = _project(mode, x, w, slot=int(reverse), backend=backend)
    return _recur(mode, xg, b_hh, h0, c0, w, lengths, reverse, backend)


_side = {"pool": None}


def _side_thread():
    """One long-lived worker that runs a bidirectional layer's reverse direction."""
    if _side["pool"] is None:
        from concurrent.futures import ThreadPoolExecutor
        _side["pool"] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastrnn-reverse")
    return _side["pool"]


CONCURRENT_ENV = "FASTRNN_CONCURRENT_DIRECTIONS"


def _concurrent_directions(backend, *tensors):
    """Run the two directions of a layer at once (each on half the threads)? Opt-in
    (``FASTRNN_CONCURRENT_DIRECTIONS=1``), and only for the compiled CPU kernels, in eager
    inference (autograd runs the backward passes one after the other anyway), with at
    least two threads.

    Off by default because it measured slower everywhere here (2 cores, T500 I100 H128,
    inference, ms, concurrent / one direction after the other): RNN N=64 37.2 / 28.8,
    LSTM N=64 106 / 100, GRU N=64 76.5 / 69.8, LSTM N=1 3.90 / 2.73, GRU N=1 3.11 / 2.09.
    At N=64 the row-split kernels already scale to both cores (1.95x), so there is
    nothing to gain; and the side thread's kernel competes with torch's OpenMP workers,
    which spin after the projection GEMM. Doing it right means one OpenMP team in C++
    running both directions, half the team each."""
    if os.environ.get(CONCURRENT_ENV, "").strip().lower() in ("", "0", "false", "no"):
        return False
    return (backend == "cpu" and torch.get_num_threads() >= 2
            and not torch.compiler.is_compiling() and not _needs_grad(*tensors))


def _both_directions(mode, x, h0, c0, ws, lengths, backend):
    """Both directions of one layer: the projections one after the other (each GEMM uses
    every thread), then the two recurrences concurrently: the kernels release the GIL and
    run barrier-free on their own thread share, each direction's W_hh in its own core's
    cache."""
    from .backends import cpu as cpu_backend

    (xg0, b0), (xg1, b1) = _project(mode, x, ws[0], 0), _project(mode, x, ws[1], 1)
    nt = torch.get_num_threads()
    n_rev = nt // 2
    inference = torch.is_inference_mode_enabled()

    def reverse_direction():
        with torch.inference_mode(inference), torch.no_grad(), \
                cpu_backend.thread_budget(n_rev):
            return _recur(mode, xg1, b1, h0[1], None if c0 is None else c0[1], ws[1],
                          lengths, True, backend)

    future = _side_thread().submit(reverse_direction)
    with cpu_backend.thread_budget(nt - n_rev):
        fwd = _recur(mode, xg0, b0, h0[0], None if c0 is None else c0[0], ws[0], lengths,
                     False, backend)
    return fwd, future.result()


def _run_layers(mode, x, h0, c0, groups, num_layers, bidirectional, dropout, train,
                lengths, backend):
    """x [T, N, I]; h0 [L*D, N, R]; c0 [L*D, N, H] or None."""
    D = 2 if bidirectional else 1
    hns, cns = [], []
    for layer in range(num_layers):
        k = layer * D
        ws = groups[k:k + D]
        if D == 2 and _concurrent_directions(backend, x, h0, c0, *[t for w in ws for t in w]):
            results = _both_directions(mode, x, h0[k:k + 2],
                                       None if c0 is None else c0[k:k + 2], ws, lengths,
                                       backend)
        else:
            results = [_layer_direction(mode, x, h0[k + d], None if c0 is None else c0[k + d],
                                        ws[d], lengths, d == 1, backend) for d in range(D)]
        ys = []
        for y, hn, cn in results:
            ys.append(y)
            hns.append(hn)
            cns.append(cn)
        x = torch.cat(ys, dim=-1) if D == 2 else ys[0]
        if dropout > 0 and train and layer < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)
    hn = torch.stack(hns, 0)
    cn = torch.stack(cns, 0) if mode == "LSTM" else None
    return x, hn, cn


def _packed_to_padded(data, batch_sizes):
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
    fast = _fast_one_step(mode, input, hx, weights, has_biases, num_layers, dropout, train,
                          bidirectional, batch_first, proj_size, backend)
    if fast is not None:
        return fast
    is_lstm = mode == "LSTM"
    name = {"LSTM": "LSTM", "GRU": "GRU"}.get(mode, "RNN")
    D = 2 if bidirectional else 1
    groups = _split_weights(weights, num_layers, D, has_biases, proj_size)
    w0 = groups[0][0]
    input_size = w0.shape[1]
    hidden_size = groups[0][1].shape[1] if proj_size == 0 else groups[0][4].shape[1]
    R = proj_size if proj_size > 0 else hidden_size

    packed = isinstance(input, PackedSequence)
    lengths = None
    if packed:
        V.check_packed(input)
        data, batch_sizes, sorted_indices, unsorted_indices = input
        V.check_floating("input", data, w0, ValueError)
        V.check_device("input", data, w0)
        x, lengths_cpu, pack_mask = _packed_to_padded(data, batch_sizes)
        if int(lengths_cpu[-1]) < x.shape[0]:  # some sequence shorter than T
            lengths = lengths_cpu.to(x.device)
        batched = True
    else:
        V.check_rank(name, input)
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(0 if batch_first else 1)
        if batch_first:
            x = x.transpose(0, 1)  # [T, N, I]
        sorted_indices = unsorted_indices = None
    V.check_sequence_input(name, x, input_size, w0)
    T, N = x.shape[0], x.shape[1]

    h_shape = (num_layers * D, N, R)
    c_shape = (num_layers * D, N, hidden_size)
    if hx is None:
        h0 = x.new_zeros(h_shape)
        c0 = x.new_zeros(c_shape) if is_lstm else None
    else:
        V.check_hx_structure(name, hx, is_lstm, batched or packed)
        h0, c0 = (hx[0], hx[1]) if is_lstm else (hx, None)
        if not batched:
            h0 = h0.unsqueeze(1)
            c0 = c0.unsqueeze(1) if is_lstm else None
        V.check_hidden("hx[0]" if is_lstm else "hx", h0, h_shape, x, w0)
        if is_lstm:
            V.check_hidden("hx[1]", c0, c_shape, x, w0)
        if sorted_indices is not None:  # hx is in the user's order; data in sorted order
            h0 = h0.index_select(1, sorted_indices)
            c0 = c0.index_select(1, sorted_indices) if is_lstm else None

    if N == 0:  # nothing to run; keep the graph connected for autograd
        out = x.new_zeros(T, 0, D * R) + 0 * x.sum()
        hn, cn = h0 + 0, (c0 + 0 if is_lstm else None)
    else:
        name_resolved = resolve_backend(backend, x)
        out, hn, cn = _run_layers(mode, x, h0, c0, groups, num_layers, bidirectional,
                                  dropout, train, lengths, name_resolved)

    if packed:
        out = PackedSequence(out[pack_mask], batch_sizes, sorted_indices, unsorted_indices)
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


def _fast_backend(backend):
    """Whether ``backend`` resolves to the compiled CPU kernels for CPU tensors (recorded
    as the last backend when it does)."""
    if backends.resolve_cached(backend, "cpu") != "cpu":
        return False
    _last["backend"] = "cpu"
    return True


def _fast_one_step(mode, input, hx, weights, has_biases, num_layers, dropout, train,
                   bidirectional, batch_first, proj_size, backend):
    """A one-step call (T = 1, no projection, not packed) in plain eager mode on the
    compiled CPU kernels: each layer and direction is one fused cell step
    (``fastrnn.fastpath``). Returns None whenever the general path must run (which also
    raises every error for bad arguments)."""
    if proj_size or not isinstance(input, torch.Tensor) or not fastpath.eager():
        return None
    dim = input.dim()
    if dim == 3:
        if input.shape[1 if batch_first else 0] != 1:
            return None
        x = input[:, 0] if batch_first else input[0]
    elif dim == 2:
        if input.shape[0] != 1:
            return None
        x = input
    else:
        return None
    D = 2 if bidirectional else 1
    per = 2 + 2 * bool(has_biases)
    LD = num_layers * D
    is_lstm = mode == "LSTM"
    G = fastpath.CELL_GATES[mode]
    N = x.shape[0]
    if len(weights) != per * LD or N == 0:
        return None
    w_hh0 = weights[1]
    H = w_hh0.shape[1]
    if x.shape[1] != weights[0].shape[1]:
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
                k >= D and w_ih.shape[1] != D * H):
            return None
    if not fastpath.usable((x, h0, c0) + tuple(weights)) or not _fast_backend(backend):
        return None
    if h0 is None:
        h0 = x.new_zeros((LD, N, H))
        c0 = x.new_zeros((LD, N, H)) if is_lstm else None
    hns, cns = [], []
    for layer in range(num_layers):
        ys = []
        for d in range(D):
            k = layer * D + d
            w = weights[k * per:(k + 1) * per]
            b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
            out = fastpath.cell(mode, x, h0[k], c0[k] if is_lstm else None, w[0], w[1],
                                b_ih, b_hh)
            h1 = out[0] if is_lstm else out
            ys.append(h1)
            hns.append(h1)
            if is_lstm:
                cns.append(out[1])
        x = torch.cat(ys, dim=-1) if D == 2 else ys[0]
        if dropout > 0 and train and layer < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)
    hn = torch.stack(hns, 0)
    cn = torch.stack(cns, 0) if is_lstm else None
    if dim == 3:
        out = x.unsqueeze(1 if batch_first else 0)
    else:
        hn = hn.squeeze(1)
        cn = cn.squeeze(1) if is_lstm else None
        out = x
    return (out, (hn, cn)) if is_lstm else (out, hn)


def lstm(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
         batch_first, proj_size=0, backend=None):
    return rnn("LSTM", input, hx, weights, has_biases, num_layers, dropout, train,
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

def _cell_prepare(kind, input, hx, w_ih, w_hh, n_states):
    """Validate a cell call; return batched input [N, I], states [N, H] and is_batched."""
    V.check_cell_input(kind, input, hx, w_ih.shape[1], w_hh.shape[1], w_ih, n_states == 2)
    batched = input.dim() == 2
    x = input if batched else input.unsqueeze(0)
    H = w_hh.shape[1]
    if hx is None:
        states = [x.new_zeros(x.shape[0], H) for _ in range(n_states)]
    else:
        states = list(hx) if n_states == 2 else [hx]
        if n_states == 2 and len(states) != 2:
            raise RuntimeError(f"{kind}: hx must be a tuple (h_0, c_0) of two tensors, got "
                               f"{len(states)}")
        names = ["hx[0]", "hx[1]"] if n_states == 2 else ["hx"]
        for i, (nm, h) in enumerate(zip(names, states)):
            if not isinstance(h, torch.Tensor):
                raise TypeError(f"{kind}: {nm} must be a torch.Tensor, got {type(h).__name__}")
            if h.dim() not in (1, 2):
                raise ValueError(f"{kind}: Expected {nm} to be 1D or 2D, got {h.dim()}D "
                                 f"instead")
            if h.dim() != input.dim():
                raise RuntimeError(f"{kind}: {nm} must be {input.dim()}-D like the input, "
                                   f"got {h.dim()}-D")
            h = h if batched else h.unsqueeze(0)
            V.check_cell_hidden(kind, nm, h, x.shape[0], H, x, w_ih)
            states[i] = h
    return x, states, batched


def _fast_cell(mode, input, hx, w_ih, w_hh, b_ih, b_hh, backend):
    """A cell call in plain eager mode on the compiled CPU kernels: one fused step
    (``fastrnn.fastpath``). None whenever the general path must run (which also raises
    every error for bad arguments)."""
    if not isinstance(input, torch.Tensor) or not fastpath.eager():
        return None
    dim = input.dim()
    if dim not in (1, 2) or input.shape[-1] != w_ih.shape[1]:
        return None
    is_lstm = mode == "LSTM"
    H = w_hh.shape[1]
    GH = fastpath.CELL_GATES[mode] * H
    if w_hh.shape[0] != GH or w_ih.shape[0] != GH:
        return None
    if (b_ih is not None and b_ih.shape != (GH,)) or (b_hh is not None and b_hh.shape != (GH,)):
        return None
    x = input if dim == 2 else input.unsqueeze(0)
    N = x.shape[0]
    if N == 0:
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
    if not fastpath.usable((x, h, c, w_ih, w_hh, b_ih, b_hh)) or not _fast_backend(backend):
        return None
    if h is None:
        h = x.new_zeros((N, H))
        c = x.new_zeros((N, H)) if is_lstm else None
    out = fastpath.cell(mode, x, h, c, w_ih, w_hh, b_ih, b_hh)
    if dim == 2:
        return out
    return (out[0].squeeze(0), out[1].squeeze(0)) if is_lstm else out.squeeze(0)


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, backend=None):
    fast = _fast_cell("LSTM", input, hx, w_ih, w_hh, b_ih, b_hh, backend)
    if fast is not None:
        return fast
    x, (h, c), batched = _cell_prepare("LSTMCell", input, hx, w_ih, w_hh, 2)
    bias = None if b_ih is None else b_ih + b_hh
    xg = F.linear(x, w_ih, bias).unsqueeze(0)  # [1, N, 4H]
    name = resolve_backend(backend, x)
    y, cn, _, _ = torch.ops.fastrnn.lstm_forward(xg, h, c, w_hh, None, None, False,
                                                 _needs_grad(xg, h, c, w_hh), name)
    h1 = y[0]
    return (h1, cn) if batched else (h1.squeeze(0), cn.squeeze(0))


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, backend=None):
    fast = _fast_cell("GRU", input, hx, w_ih, w_hh, b_ih, b_hh, backend)
    if fast is not None:
        return fast
    x, (h,), batched = _cell_prepare("GRUCell", input, hx, w_ih, w_hh, 1)
    xg = F.linear(x, w_ih, b_ih).unsqueeze(0)  # [1, N, 3H]
    if b_hh is None:
        b_hh = w_hh.new_zeros(w_hh.shape[0])
    name = resolve_backend(backend, x)
    y, _ = torch.ops.fastrnn.gru_forward(xg, h, w_hh, b_hh, None, False,
                                         _needs_grad(xg, h, w_hh, b_hh), name)
    return y[0] if batched else y[0].squeeze(0)


def rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", backend=None):
    if nonlinearity not in ("tanh", "relu"):
        raise RuntimeError(f"Unknown nonlinearity: {nonlinearity}")
    fast = _fast_cell("RNN_RELU" if nonlinearity == "relu" else "RNN_TANH", input, hx, w_ih,
                      w_hh, b_ih, b_hh, backend)
    if fast is not None:
        return fast
    x, (h,), batched = _cell_prepare("RNNCell", input, hx, w_ih, w_hh, 1)
    bias = None if b_ih is None else b_ih + b_hh
    xg = F.linear(x, w_ih, bias).unsqueeze(0)  # [1, N, H]
    name = resolve_backend(backend, x)
    y = torch.ops.fastrnn.rnn_forward(xg, h, w_hh, None, False, nonlinearity == "relu", name)
    return y[0] if batched else y[0].squeeze(0)
