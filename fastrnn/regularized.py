"""Layer-normalised and regularised recurrences, written as plain torch ops (autograd by torch).

The step loops of ``fastrnn.LayerNormLSTM``/``LayerNormGRU`` (Ba, Kiros and Hinton 2016) and
of ``fastrnn.LSTM``/``GRU``/``RNN`` with zoneout (Krueger et al. 2016) or variational
recurrent dropout (Gal and Ghahramani 2016). DropConnect on W_hh (Merity et al. 2018) is a
mask on the weight (``drop_weights``): a layer with only that option runs the fused kernels
on the masked weight; here it combines with the others. One equation per line; the same
loop serves training, inference, packed sequences, torch.compile and double backward.

Kinds and their weights, per layer and direction (the modules' ``_flat_weights`` order):
  LSTM      w_ih [4H, I], w_hh [4H, R][, b_ih [4H], b_hh [4H]][, w_hr [R, H]]
  GRU       w_ih [3H, I], w_hh [3H, H][, b_ih [3H], b_hh [3H]]
  RNN_TANH, RNN_RELU   w_ih [H, I], w_hh [H, H][, b_ih [H], b_hh [H]]
  LN_LSTM   w_ih, w_hh, g_ih [4H], s_ih [4H], g_hh [4H], s_hh [4H], g_c [H], s_c [H]
  LN_GRU    w_ih, w_hh, g_ih [3H], s_ih [3H], g_hh [3H], s_hh [3H]
(g: LayerNorm gain, s: its shift; the shifts replace the biases.)

Equations, LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-5) over the whole vector v:
  LN_LSTM  a = LN(W_ih x_t) g_ih + s_ih + LN(W_hh h_{t-1}) g_hh + s_hh;  i, f, g, o = split(a)
           c_t = sig(f) c_{t-1} + sig(i) tanh(g);  h_t = sig(o) tanh(LN(c_t) g_c + s_c)
  LN_GRU   a_x = LN(W_ih x_t) g_ih + s_ih;  a_h = LN(W_hh h_{t-1}) g_hh + s_hh
           r = sig(a_x^r + a_h^r);  z = sig(a_x^z + a_h^z);  n = tanh(a_x^n + r a_h^n)
           h_t = (1 - z) n + z h_{t-1}
  the others: torch.nn's.
Options (each off at 0):
  zoneout p (p_c for the LSTM's cell state): training h_t = d h_{t-1} + (1 - d) h~_t with
      d ~ Bernoulli(p) per step, sequence and unit; eval h_t = p h_{t-1} + (1 - p) h~_t.
  recurrent_dropout p: training only, h_{t-1} * m / (1 - p) where it enters W_hh h_{t-1}
      (the state itself carries on unmasked), m ~ Bernoulli(1 - p) one per sequence and unit,
      the same at every step.
  weight_drop p: training only, W_hh * M / (1 - p), M ~ Bernoulli(1 - p) per element, one
      per forward call; the gradient reaches W_hh through the mask.

Mask order (every draw from torch's default generator for the tensors' device, so
``torch.manual_seed`` reproduces a run; an option at 0 draws nothing): first the weight-drop
masks, one per layer and direction in the weights' order (``drop_weights``); then per layer,
per direction (forward, then reverse): the recurrent-dropout mask [N, R], the zoneout mask of
h [T, N, R], the LSTM's zoneout mask of c [T, N, H]; after each layer but the last, torch.nn's
inter-layer dropout of its output [T, N, D*R] (``F.dropout``). Each mask is
``bernoulli_mask(shape, q, dtype, device)`` in the layer's dtype, q the probability of a 1
(keep for dropout, 1 - p, then divided by 1 - p; zone out for zoneout, p): one seed s =
``torch.randint(0, 2**62, ())`` from the default generator of the device, and element i
(row-major) is 1 where ``_mask_bits(s, i) < round(q * 2**32)``, a keyed 32-bit hash of i
(the compiled CPU kernels and torch ops compute the same bits). N is the batch in its packed (sorted)
order for a PackedSequence, T the longest length; steps past a sequence's end draw too.
A cell draws its zoneout masks (h, then c) [N, H] per call.
"""
import functools

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from . import _validation as V
from . import fastpath
from . import functional as _functional

__all__ = ["EPS", "KINDS", "bernoulli_mask", "check_probability", "check_zoneout", "drop_weights", "rnn", "last_path",
           "zoneout", "layer_norm_lstm_cell", "layer_norm_gru_cell"]

EPS = 1e-5  # torch.nn.LayerNorm's
KINDS = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU", "LN_LSTM", "LN_GRU")
_TWO_STATES = ("LSTM", "LN_LSTM")
_GATES = {"LSTM": 4, "LN_LSTM": 4, "GRU": 3, "LN_GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_NAMES = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN",
          "LN_LSTM": "LayerNormLSTM", "LN_GRU": "LayerNormGRU"}


# ----------------------------------------------------------------------------- options

def check_probability(name, value):
    """An option's probability: a real number in [0, 1) (1 would drop or freeze everything);
    returned as a float. A ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


def check_zoneout(value, two_states):
    """``zoneout``: a probability, or for a layer with a cell state (LSTM) a pair
    (p_h, p_c). Returns (p_h, p_c) (p_c = p_h for a single number; 0 without a cell state)."""
    if isinstance(value, (tuple, list)):
        if not two_states or len(value) != 2:
            what = "a pair (p_h, p_c)" if two_states else "a single float (no cell state)"
            raise ValueError(f"zoneout must be a float in [0, 1) or {what}, got {value!r}")
        return (check_probability("zoneout (p_h)", value[0]),
                check_probability("zoneout (p_c)", value[1]))
    p = check_probability("zoneout", value)
    return p, (p if two_states else 0.0)


# ----------------------------------------------------------------------------- masks

_SEEDS = 2 ** 62  # a mask's seed: torch.randint(0, _SEEDS, ()) on the tensors' device


def _mul32(x, c):
    """x * c mod 2^32 for int64 x in [0, 2^32) and a 32-bit constant c (no int64 overflow:
    c in two 16-bit halves)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & 0xFFFFFFFF


def _mix32(x):
    """A 32-bit mixer (xor-shift-multiply, the "lowbias32" constants) on int64 tensors
    holding uint32 values: a bijection whose every output bit depends on every input bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mask_bits(seed, n, device, offset=0):
    """The 32 random bits of elements offset .. offset+n-1 of a mask with ``seed`` (an int or an int64
    tensor in [0, 2^62)), as int64: mix(mix(mix(lo(i) ^ k0) ^ k1) ^ hi(i)) with k0, k1 the
    seed's low and high 32 bits and lo(i), hi(i) the index's. The compiled CPU kernels
    compute the same bits (``_C.bernoulli_mask``, csrc/cpu/masks.cpp)."""
    i = torch.arange(offset, offset + n, dtype=torch.int64, device=device)
    k0, k1 = seed & 0xFFFFFFFF, seed >> 32
    return _mix32(_mix32(_mix32((i & 0xFFFFFFFF) ^ k0) ^ k1) ^ (i >> 32))


def _threshold(q):
    """A mask element is 1 where its bits < round(q * 2^32): probability q within 2^-33."""
    return int(round(float(q) * 2 ** 32))


def _mask_kernel(like):
    """``_C.bernoulli_mask`` where it can fill a mask of ``like``'s kind: a plain CPU
    float32/float64 tensor or parameter (weight drop's W_hh) in eager mode, the compiled
    kernels built; else None (tensor subclasses, e.g. under torch.func, take torch ops)."""
    if like.device.type != "cpu" or like.dtype not in (torch.float32, torch.float64):
        return None
    from . import fastpath
    from .backends import cpu
    if cpu._C is None or not fastpath.eager() or type(like) not in (torch.Tensor, torch.nn.Parameter):
        return None
    return getattr(cpu._C, "bernoulli_mask", None)


def _bernoulli(like, shape, q):
    """A mask of ``like``'s dtype and device, 1 with probability ``q``: one seed from torch's
    generator for the device, each element's bits from ``_mask_bits`` (so every backend and
    device computes the same mask from the same seed; on the CPU the compiled kernels fill
    it, in torch ops elsewhere)."""
    shape = tuple(shape)
    n = 1
    for s in shape:
        n *= s
    seed = torch.randint(0, _SEEDS, (), device=like.device)
    fill = _mask_kernel(like)
    if fill is not None:
        from .backends import cpu
        out = cpu._out(*shape, like=like)  # (large ones from the pool: no page faults)
        fill(out.element_size(), int(seed), 0, n, _threshold(q), 1.0, out.data_ptr(),
             cpu._threads())
        return out
    return (_mask_bits(seed, n, like.device) < _threshold(q)).to(like.dtype).reshape(shape)


def bernoulli_mask(shape, q, dtype=torch.float32, device="cpu"):
    """The mask fastrnn's layers draw for zoneout (q = p), recurrent dropout and weight drop
    (q = 1 - p, then divided by 1 - p): 1 with probability ``q``, else 0, from torch's
    default generator for ``device`` (one draw per mask). For step loops that should see
    fastrnn's masks (``torch.manual_seed`` before both, masks drawn in the documented
    order)."""
    return _bernoulli(torch.empty((), dtype=dtype, device=device), shape, q)


def _keep(like, shape, p):
    """A dropout mask: 1 / (1 - p) with probability 1 - p, else 0."""
    return _bernoulli(like, shape, 1 - p).div_(1 - p)


def drop_weights(weights, per, p):
    """DropConnect: the flat weight list with every W_hh (second of each group of ``per``)
    times a fresh mask (``_keep``), drawn in the list's order. Autograd takes the gradient
    through the product, so the fused kernels can run on the masked weight unchanged."""
    weights = list(weights)
    for k in range(1, len(weights), per):
        w_hh = weights[k]
        weights[k] = w_hh * _keep(w_hh, w_hh.shape, p)
    return weights


def zoneout(prev, new, p, train, mask=None):
    """h_t from the previous state and the candidate: in training the units where the mask
    (drawn here, 1 with probability p, unless given as a bool tensor) is set keep ``prev``;
    in eval the expectation p * prev + (1 - p) * new."""
    if not p:
        return new
    if train:
        if mask is None:
            mask = _bernoulli(new, new.shape, p).bool()
        return torch.where(mask, prev, new)
    return p * prev + (1 - p) * new


# ----------------------------------------------------------------------------- steps

def _ln(v, gain, shift):
    return F.layer_norm(v, (v.shape[-1],), gain, shift, EPS)


def _group(kind, w, has_biases, proj):
    """One layer-direction's weights as a dict (see the module docstring)."""
    if kind.startswith("LN_"):
        names = ("w_ih", "w_hh", "g_ih", "s_ih", "g_hh", "s_hh", "g_c", "s_c")
        return dict(zip(names, w))
    p = {"w_ih": w[0], "w_hh": w[1], "b_ih": None, "b_hh": None, "w_hr": None}
    if has_biases:
        p["b_ih"], p["b_hh"] = w[2], w[3]
    if proj:
        p["w_hr"] = w[-1]
    return p


def _linear(x, w, b=None, pooled=False):
    """F.linear; ``pooled`` (x [T, N, I] for the compiled CPU kernels): the result in the
    kernels' buffer pool (a fresh [T, N, G*H] costs first-touch page faults every call)."""
    if pooled:
        from . import _memory
        return _memory.PooledLinear.apply(x, w, b, "cpu")
    return F.linear(x, w, b)


def _project(kind, x, p, pooled=False):
    """The input part of every step at once: [..., G*H] (a GEMM, and its LayerNorm);
    ``pooled`` as ``_linear``'s."""
    linear = functools.partial(_linear, pooled=pooled)
    if kind.startswith("LN_"):
        return _ln(linear(x, p["w_ih"]), p["g_ih"], p["s_ih"])
    b_ih, b_hh = p["b_ih"], p["b_hh"]
    if kind == "GRU" or b_ih is None:  # (GRU: b_hh stays inside the reset gate's product)
        return linear(x, p["w_ih"], b_ih)
    return linear(x, p["w_ih"], b_ih + b_hh)


def _step(kind, ax, h_in, h, c, p):
    """One step -> (h~ [N, R], c~ [N, H] or None). ``ax`` the input part [N, G*H],
    ``h_in`` the previous state as it enters the recurrent product (masked by recurrent
    dropout), ``h`` and ``c`` the previous states."""
    if kind in _TWO_STATES:
        hh = F.linear(h_in, p["w_hh"])  # [N, 4H]
        a = ax + (_ln(hh, p["g_hh"], p["s_hh"]) if kind == "LN_LSTM" else hh)
        i, f, g, o = a.chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        c_out = _ln(c_new, p["g_c"], p["s_c"]) if kind == "LN_LSTM" else c_new
        h_new = torch.sigmoid(o) * torch.tanh(c_out)
        if p.get("w_hr") is not None:
            h_new = F.linear(h_new, p["w_hr"])  # [N, R]
        return h_new, c_new
    if kind in ("GRU", "LN_GRU"):
        ah = F.linear(h_in, p["w_hh"], p.get("b_hh"))  # [N, 3H]
        if kind == "LN_GRU":
            ah = _ln(ah, p["g_hh"], p["s_hh"])
        xr, xz, xn = ax.chunk(3, 1)
        hr, hz, hn = ah.chunk(3, 1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, None
    pre = ax + F.linear(h_in, p["w_hh"])
    return (torch.relu(pre) if kind == "RNN_RELU" else torch.tanh(pre)), None


def _loop(kind, ax, h0, c0, p, rd, zh, zc, zh_p, zc_p, lengths, reverse, train):
    """The step loop of one layer-direction on the input part ``ax`` [T, N, G*H], with the
    masks given (rd [N, R] scaled; zh/zc bool [T, N, *] or None) -> (y, h_n, c_n|None)."""
    T = ax.shape[0]
    two = kind in _TWO_STATES
    valid = None if lengths is None else \
        (torch.arange(T, device=ax.device)[:, None] < lengths[None, :]).unsqueeze(-1)
    h, c = h0, c0
    ys = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h_new, c_new = _step(kind, ax[t], h if rd is None else h * rd, h, c, p)
        h_new = zoneout(h, h_new, zh_p, train, None if zh is None else zh[t])
        if two:
            c_new = zoneout(c, c_new, zc_p, train, None if zc is None else zc[t])
        if valid is not None:  # frozen past each sequence's end
            h_new = torch.where(valid[t], h_new, h)
            c_new = torch.where(valid[t], c_new, c) if two else None
        ys[t] = h_new
        h, c = h_new, c_new
    y = torch.stack(ys) if T else ax.new_empty((0,) + tuple(h0.shape))
    return y, h, c


def _direction(kind, x, h0, c0, p, lengths, reverse, opts, train, fused):
    """One layer, one direction. x [T, N, I] -> (y [T, N, R], h_n [N, R], c_n [N, H]|None).
    ``opts``: (zoneout_h, zoneout_c, recurrent_dropout); ``fused``: the recurrence on the
    compiled CPU kernels (``_Fused``), else the step loop in torch ops."""
    zh_p, zc_p, rd_p = opts
    T = x.shape[0]
    two = kind in _TWO_STATES
    # the masks of this layer and direction, in the documented order
    rd = _keep(h0, h0.shape, rd_p) if train and rd_p else None  # [N, R]
    # zoneout masks as 0/1 in the layer's dtype (what the fused kernels read; the loop
    # takes them as bool)
    zh = _bernoulli(h0, (T,) + tuple(h0.shape), zh_p) if train and zh_p else None
    zc = _bernoulli(c0, (T,) + tuple(c0.shape), zc_p) if train and two and zc_p else None
    if fused and kind.startswith("LN_") and T > 0 and x.shape[1] > 0 and h0.shape[-1] > 0:
        # the LayerNorm kernels take the projection and normalise it themselves
        proj = _linear(x, p["w_ih"], pooled=True)  # [T, N, G*H]
        if _wants_grad(proj, h0, c0, p):
            if not train:  # zoneout's expectation as a mask of p (the backward reads a mask)
                zh = proj.new_full((T,) + tuple(h0.shape), zh_p) if zh_p else None
                zc = proj.new_full((T,) + tuple(c0.shape), zc_p) if two and zc_p else None
            y, cn = _LnFused.apply(kind, proj, h0, c0, p["w_hh"], p["g_ih"], p["s_ih"],
                                   p["g_hh"], p["s_hh"], p.get("g_c"), p.get("s_c"), rd, zh, zc,
                                   (zh_p, zc_p, train), lengths, reverse)
            return y, y[0 if reverse else T - 1], (cn if two else None)
        return _ln_fused(kind, proj, h0, c0, p, 0.0 if train else zh_p,
                         0.0 if train or not two else zc_p, lengths, reverse, rd, zh, zc)
    if fused and not train and T > 0 and x.shape[1] > 0 and h0.shape[-1] > 0 \
            and fastpath.steps_pay(T, x.shape[1]) and not _wants_grad(x, h0, c0, p):
        # zoneout's expectation in inference: the fused steps (each step's projection in
        # its recurrent product, as the plain layers' inference), the mix in their epilogue
        from .backends import cpu
        y, cn = cpu.cell_forward_seq(
            fastpath._KINDS[kind], x, h0.contiguous(), None if c0 is None else c0.contiguous(),
            *(None if t is None else t.detach().contiguous()
              for t in (p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])),
            reverse, lengths=lengths, zh_p=zh_p, zc_p=zc_p if two else 0.0)
        return y, y[0 if reverse else T - 1], cn
    use_kernels = fused and T > 0 and x.shape[1] > 0 and h0.shape[-1] > 0  # (the kernels take no 0)
    ax = _project(kind, x, p, pooled=use_kernels)  # [T, N, G*H]
    if use_kernels:
        f = ax.dtype  # masks as the kernels read them: the layer's dtype
        b_hh = p["b_hh"] if kind == "GRU" else None
        args = (kind, ax, h0, c0, p["w_hh"], b_hh, rd, None if zh is None else zh.to(f),
                None if zc is None else zc.to(f), zh_p, zc_p if two else 0.0, train, lengths,
                reverse)
        if _wants_grad(ax, h0, c0, p["w_hh"], b_hh):
            y, cn = _Fused.apply(*args)
        else:  # no gradient can be asked for: no records (the parameters still require
            # grad under no_grad/inference_mode, so the Function could not tell)
            y, cn = _reg_forward(*args, records=False)[3][:2]
        return y, y[0 if reverse else T - 1], (cn if two else None)
    return _loop(kind, ax, h0, c0, p, rd, None if zh is None else zh.bool(),
                 None if zc is None else zc.bool(), zh_p, zc_p, lengths, reverse, train)


def _replay_grads(out, dy, dcn, inputs, need, res):
    """The backward of a fused layer-direction when a graph of the gradient is asked for:
    ``out`` is ``_loop``'s (y, h_n, c_n) replayed on the saved inputs; the incoming gradients
    dy (and dcn, None where the cell has no c) flow back to each of ``inputs`` (the
    Function's arguments from the second on) that ``need`` asks for, into ``res``."""
    pairs = [(o, g) for o, g in ((out[0], dy), (out[2], dcn)) if g is not None]
    wrt = [i for i in range(1, len(inputs) + 1) if inputs[i - 1] is not None and need[i]]
    if wrt and pairs:
        got = torch.autograd.grad([o for o, _ in pairs], [inputs[i - 1] for i in wrt],
                                  [g for _, g in pairs], create_graph=True, allow_unused=True)
        for i, g in zip(wrt, got):
            res[i] = g
    return tuple(res)


def _reg_forward(kind, ax, h0, c0, w_hh, b_hh, rd, zh, zc, zh_p, zc_p, train, lengths,
                 reverse, records):
    """``backends.cpu.reg_forward`` on ``_Fused``'s arguments -> (the contiguous (ax, h0,
    c0, w_hh, b_hh), the masks, the kernels' lengths, (y, c_n, gates, cs, cand)); the
    records only with ``records``."""
    from .backends import cpu
    lengths_c = cpu._lengths(lengths, ax.shape[0], ax.shape[1])
    args = [t if t is None else t.contiguous() for t in (ax, h0, c0, w_hh, b_hh)]
    masks = [t if t is None else t.contiguous() for t in (rd, zh, zc)]
    out = cpu.reg_forward(kind, *args, *masks, 0.0 if train else zh_p, 0.0 if train else zc_p,
                          lengths_c, reverse, records)
    return args, masks, lengths_c, out


class _Fused(torch.autograd.Function):
    """A layer-direction's recurrence with zoneout / recurrent dropout on the compiled CPU
    kernels (``backends.cpu.reg_forward``; csrc/cpu/regularized.cpp): ax [T, N, G*H] (the
    input part: LSTM/RNN with both biases, GRU with b_ih) -> (y [T, N, H], c_n or an empty
    tensor). rd, zh, zc: the masks ``_direction`` drew (zh/zc as 0/1 in the layer's dtype),
    or None; in eval zoneout mixes with zh_p/zc_p. A gradient asked for with
    ``create_graph=True`` replays ``_loop`` on the saved inputs and masks."""

    @staticmethod
    def forward(ctx, kind, ax, h0, c0, w_hh, b_hh, rd, zh, zc, zh_p, zc_p, train, lengths,
                reverse):
        args, masks, lengths_c, (y, cn, gates, cs, cand) = _reg_forward(
            kind, ax, h0, c0, w_hh, b_hh, rd, zh, zc, zh_p, zc_p, train, lengths, reverse,
            records=any(ctx.needs_input_grad[1:6]))
        ctx.kind, ctx.reverse, ctx.opts = kind, reverse, (zh_p, zc_p, train)
        ctx.save_for_backward(*args, *masks, lengths_c, y, gates, cs, cand)
        if cn is None:
            cn = ax.new_empty(0)
            ctx.mark_non_differentiable(cn)
        return y, cn

    @staticmethod
    def backward(ctx, dy, dcn):
        from .backends import cpu
        from .ops import _grad_w_hh
        ax, h0, c0, w_hh, b_hh, rd, zh, zc, lengths, y, gates, cs, cand = ctx.saved_tensors
        kind, reverse = ctx.kind, ctx.reverse
        zh_p, zc_p, train = ctx.opts
        need = ctx.needs_input_grad  # (kind, ax, h0, c0, w_hh, b_hh, ...)
        inputs = (ax, h0, c0, w_hh, b_hh)
        res = [None] * 14
        if torch.is_grad_enabled():
            # a graph of the gradient: differentiate the torch-ops loop on the same masks
            with torch.enable_grad():
                out = _loop(kind, ax, h0, c0, {"w_hh": w_hh, "b_hh": b_hh}, rd,
                            None if zh is None else zh.bool(), None if zc is None else zc.bool(),
                            zh_p, zc_p, lengths, reverse, train)
            return _replay_grads(out, dy, dcn if c0 is not None else None, inputs, need, res)
        dy = torch.zeros_like(y) if dy is None else dy.contiguous()
        dcn = None if c0 is None else (torch.zeros_like(c0) if dcn is None else dcn.contiguous())
        kz_h, kz_c = (0.0, 0.0) if train else (zh_p, zc_p)
        dxg, dhg, dh0, dc0 = cpu.reg_backward(kind, dy, dcn, h0, c0, w_hh, rd, zh, zc, kz_h,
                                              kz_c, lengths, reverse, y, gates, cs, cand)
        rec = dhg if kind == "GRU" else dxg  # the recurrent product's output gradient
        if need[4]:  # that product read h * rd: the weight gradient pairs with the same
            res[4] = _grad_w_hh(rec, y if rd is None else y * rd,
                                h0 if rd is None else h0 * rd, reverse)
        if need[5] and b_hh is not None:
            res[5] = rec.sum((0, 1))
        res[1] = dxg if need[1] else None
        res[2] = dh0 if need[2] else None
        res[3] = dc0 if need[3] else None
        return tuple(res)


def _wants_grad(*tensors):
    """Whether autograd records through any of ``tensors`` (dicts of them included)."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        for u in (t.values() if isinstance(t, dict) else (t,)):
            if u is not None and u.requires_grad:
                return True
    return False


class _LnFused(torch.autograd.Function):
    """A layer-normalised LSTM/GRU layer-direction, forward and backward on the compiled CPU
    kernels (``_C.ln_forward`` with its training records, ``_C.ln_backward``;
    csrc/cpu/regularized.cpp): proj [T, N, G*H] (W_ih x; the kernels apply the input
    side's LayerNorm, g_ih and s_ih) -> (y [T, N, H], c_n or an empty tensor). rd, zh, zc:
    the masks ``_direction`` drew (zh/zc as 0/1 in the layer's dtype; in eval, zoneout's p
    as a full mask), or None; ``opts`` (zh_p, zc_p, train) for the replay. The backward
    kernel sums the gains' and shifts' gradients; W_hh's is one GEMM over its dah (and the
    masked h). A gradient asked for with ``create_graph=True`` replays ``_loop`` on the
    saved inputs and masks."""

    @staticmethod
    def forward(ctx, kind, proj, h0, c0, w_hh, g_ih, s_ih, g_hh, s_hh, g_c, s_c, rd, zh, zc,
                opts, lengths, reverse):
        from .backends import cpu
        lstm = kind == "LN_LSTM"
        T, N, GH = proj.shape
        H = h0.shape[-1]
        args = [None if t is None else t.contiguous()
                for t in (proj, h0, c0, w_hh, g_ih, s_ih, g_hh, s_hh, g_c, s_c, rd, zh, zc)]
        proj, h0, c0, w_hh, g_ih, s_ih, g_hh, s_hh, g_c, s_c, rd, zh, zc = args
        lengths_c = cpu._lengths(lengths, T, N)
        e = functools.partial(cpu._out, like=proj)  # the records from the buffer pool
        y, zhat, gates, zhat_x = e(T, N, H), e(T, N, GH), e(T, N, GH), e(T, N, GH)
        rstd_h, rstd_x = e(T, N), e(T, N)
        cn, chat, cs, rstd_c = (e(N, H), e(T, N, H), e(T, N, H), e(T, N)) if lstm else \
            (None, None, None, None)
        o = cpu._opt_ptr
        cpu._C.ln_forward(proj.element_size(), 0 if lstm else 1, T, N, H, proj.data_ptr(),
                          h0.data_ptr(), o(c0), w_hh.data_ptr(), g_hh.data_ptr(), s_hh.data_ptr(),
                          o(g_c), o(s_c), 0.0, 0.0, EPS, o(lengths_c), bool(reverse), y.data_ptr(),
                          o(cn), cpu._threads(), zhat.data_ptr(), rstd_h.data_ptr(),
                          gates.data_ptr(), o(chat), o(rstd_c), o(cs), g_ih.data_ptr(),
                          s_ih.data_ptr(), zhat_x.data_ptr(), rstd_x.data_ptr(), o(rd), o(zh),
                          o(zc))
        ctx.kind, ctx.reverse, ctx.opts = kind, reverse, opts
        ctx.save_for_backward(proj, h0, c0, w_hh, g_ih, s_ih, g_hh, s_hh, g_c, s_c, rd, zh, zc,
                              lengths_c, y, zhat, rstd_h, gates, chat, rstd_c, cs, zhat_x, rstd_x)
        if cn is None:
            cn = proj.new_empty(0)
            ctx.mark_non_differentiable(cn)
        return y, cn

    @staticmethod
    def backward(ctx, dy, dcn):
        from .backends import cpu
        from .ops import _grad_w_hh
        (proj, h0, c0, w_hh, g_ih, s_ih, g_hh, s_hh, g_c, s_c, rd, zh, zc, lengths, y, zhat,
         rstd_h, gates, chat, rstd_c, cs, zhat_x, rstd_x) = ctx.saved_tensors
        kind, reverse = ctx.kind, ctx.reverse
        zh_p, zc_p, train = ctx.opts
        lstm = kind == "LN_LSTM"
        # (kind, proj, h0, c0, w_hh, g_ih, s_ih, g_hh, s_hh, g_c, s_c, rd, zh, zc, opts,
        #  lengths, reverse)
        need = ctx.needs_input_grad
        inputs = (proj, h0, c0, w_hh, g_ih, s_ih, g_hh, s_hh, g_c, s_c)
        res = [None] * 17
        if torch.is_grad_enabled():
            # a graph of the gradient: differentiate the torch-ops loop on the same masks
            p = {"w_hh": w_hh, "g_hh": g_hh, "s_hh": s_hh, "g_c": g_c, "s_c": s_c}
            masks = (rd, None if zh is None else zh.bool(), None if zc is None else zc.bool()) \
                if train else (None, None, None)
            with torch.enable_grad():
                out = _loop(kind, _ln(proj, g_ih, s_ih), h0, c0, p, *masks, zh_p, zc_p, lengths,
                            reverse, train)
            return _replay_grads(out, dy, dcn if lstm else None, inputs, need, res)
        T, N, GH = proj.shape
        H = h0.shape[-1]
        dy = torch.zeros_like(y) if dy is None else dy.contiguous()
        if lstm:
            dcn = torch.zeros_like(c0) if dcn is None else dcn.contiguous()
        e = functools.partial(cpu._out, like=proj)
        dproj, dah, dh0 = e(T, N, GH), e(T, N, GH), e(N, H)
        dc0 = e(N, H) if lstm else None
        sums = [e(GH), e(GH), e(GH), e(GH)] + ([e(H), e(H)] if lstm else [None, None])
        o = cpu._opt_ptr
        cpu._C.ln_backward(proj.element_size(), 0 if lstm else 1, T, N, H, dy.data_ptr(),
                           o(dcn), h0.data_ptr(), o(c0), w_hh.data_ptr(), g_ih.data_ptr(),
                           g_hh.data_ptr(), s_hh.data_ptr(), o(g_c), o(s_c), o(lengths),
                           bool(reverse), y.data_ptr(), zhat.data_ptr(), rstd_h.data_ptr(),
                           gates.data_ptr(), o(chat), o(rstd_c), o(cs), zhat_x.data_ptr(),
                           rstd_x.data_ptr(), dproj.data_ptr(), dah.data_ptr(), dh0.data_ptr(),
                           o(dc0), *map(o, sums), cpu._threads(), o(rd), o(zh), o(zc))
        if need[4]:  # the recurrent product read h * rd: the weight gradient pairs with it
            res[4] = _grad_w_hh(dah, y if rd is None else y * rd,
                                h0 if rd is None else h0 * rd, reverse)
        res[1] = dproj if need[1] else None
        res[2] = dh0 if need[2] else None
        res[3] = dc0 if need[3] else None
        for i, g in zip(range(5, 11), sums):  # g_ih, s_ih, g_hh, s_hh, g_c, s_c
            res[i] = g if need[i] else None
        return tuple(res)


def _ln_fused(kind, proj, h0, c0, p, zh_p, zc_p, lengths, reverse, rd=None, zh=None, zc=None):
    """A LayerNorm layer-direction without gradients on the compiled CPU kernels
    (``_C.ln_forward``; proj = W_ih x, normalised there) -> (y, h_n, c_n|None): zoneout
    with zh_p/zc_p (eval) or the masks zh/zc (training), recurrent dropout with rd."""
    from .backends import cpu
    T, N, _ = proj.shape
    H = h0.shape[-1]
    lstm = kind == "LN_LSTM"
    args = [None if t is None else t.detach().contiguous() for t in (
        proj, h0, c0, p["w_hh"], p["g_hh"], p["s_hh"], p.get("g_c"), p.get("s_c"), p["g_ih"],
        p["s_ih"], rd, zh, zc)]
    ax, h0, c0, w_hh, g_hh, s_hh, g_c, s_c, g_ih, s_ih, rd, zh, zc = args
    y = cpu._out(T, N, H, like=ax)
    cn = ax.new_empty(N, H) if lstm else None
    lengths = cpu._lengths(lengths, T, N)
    cpu._C.ln_forward(ax.element_size(), 0 if lstm else 1, T, N, H, ax.data_ptr(),
                      h0.data_ptr(), cpu._opt_ptr(c0), w_hh.data_ptr(), g_hh.data_ptr(),
                      s_hh.data_ptr(), cpu._opt_ptr(g_c), cpu._opt_ptr(s_c), float(zh_p),
                      float(zc_p), EPS, cpu._opt_ptr(lengths), bool(reverse), y.data_ptr(),
                      cpu._opt_ptr(cn), cpu._threads(), g_ih=g_ih.data_ptr(),
                      s_ih=s_ih.data_ptr(), rd=cpu._opt_ptr(rd), zh=cpu._opt_ptr(zh),
                      zc=cpu._opt_ptr(zc))
    return y, y[0 if reverse else T - 1], cn


def _ln_fused_ok(kind, x, h0):
    """Whether a LayerNorm layer runs on the compiled CPU kernels (``_ln_fused`` without
    gradients, ``_LnFused`` with them; zoneout and recurrent dropout inside them): the
    conditions of ``_fused_ok`` for the compiled CPU kernels."""
    return kind.startswith("LN_") and _fused_ok(kind[3:], x, h0, False, None)


def _fused_ok(kind, x, h0, proj, backend):
    """Whether a layer-direction of ``kind`` runs ``_Fused``: the compiled CPU kernels chosen
    for these tensors (float32/float64 on the CPU), no projection, plain eager mode (not
    compiled, traced or under a torch.func transform)."""
    if kind.startswith("LN_") or proj or x.device.type != "cpu" \
            or x.dtype not in (torch.float32, torch.float64):
        return False
    from .backends._common import transformed
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or transformed(x) \
            or transformed(h0):
        return False
    try:
        from . import backends as _b
        return _b.resolve_cached(backend, "cpu") == "cpu"
    except Exception:
        return False


# ----------------------------------------------------------------------------- layers

_last = {"path": "torch-ops"}


def last_path():
    """Where the last ``rnn`` call's recurrences ran: "cpu" (the fused kernels) or
    "torch-ops" (the step loop)."""
    return _last["path"]


def rnn(kind, input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
        batch_first, proj_size=0, zoneout=(0.0, 0.0), recurrent_dropout=0.0, backend=None):
    """torch.nn-style forward of a layer of ``kind`` (``KINDS``) as torch ops: ``input``
    [T, N, I] ([N, T, I] batch first; [T, I] unbatched) or a PackedSequence, ``hx`` as
    torch.nn takes it. ``weights``: the flat list (weight drop already applied: see
    ``drop_weights``); ``zoneout`` (p_h, p_c); options act as the module docstring says,
    the random ones only with ``train``. ``backend``: where the compiled CPU kernels are
    chosen (None/"auto" resolves to them for CPU tensors when built), LSTM (no projection),
    GRU and RNN run their recurrences fused (``last_path()`` then says "cpu"; otherwise
    "torch-ops"). Returns (output, h_n) or (output, (h_n, c_n))."""
    two = kind in _TWO_STATES
    name = _NAMES[kind]
    D = 2 if bidirectional else 1
    proj = proj_size > 0
    per = len(weights) // (num_layers * D)
    groups = [_group(kind, weights[k * per:(k + 1) * per], has_biases, proj)
              for k in range(num_layers * D)]
    w0 = groups[0]["w_ih"]
    H = groups[0]["w_hh"].shape[1] if not proj else groups[0]["w_hr"].shape[1]
    R = proj_size if proj else H

    packed = isinstance(input, PackedSequence)
    if packed:
        V.check_packed(input)
        data, batch_sizes, sorted_indices, unsorted_indices = input
        x, N, T = data, int(batch_sizes[0]), batch_sizes.numel()
        given = hx
        if hx is not None and sorted_indices is not None:
            hx = V.permute_states(hx, sorted_indices, two)
    else:
        V.check_layer_input(name, input)
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(0 if batch_first else 1)
        N, T = (x.shape[0], x.shape[1]) if batch_first else (x.shape[1], x.shape[0])
        if hx is not None:
            hx = V.layer_states(hx, two, batched)
        given = hx
    h_shape, c_shape = (num_layers * D, N, R), (num_layers * D, N, H)
    h, c = (None, None) if hx is None else (hx[0], hx[1]) if two else (hx, None)
    for error in (V.forward_args_error(x, h, c, w0, packed, h_shape, c_shape),
                  V.layer_error(x, T, given, two, h_shape, c_shape, w0, packed)):
        if error is not None:
            raise error

    lengths = None
    if packed:
        x, lengths_cpu, repack = _functional._packed_to_padded(data, batch_sizes)
        if int(lengths_cpu[-1]) < x.shape[0]:  # some sequence shorter than T
            lengths = lengths_cpu.to(x.device)
    elif batch_first:
        x = x.transpose(0, 1)  # [T, N, I]
    h0 = x.new_zeros(h_shape) if h is None else h
    c0 = (x.new_zeros(c_shape) if c is None else c) if two else None

    opts = (zoneout[0], zoneout[1], recurrent_dropout)
    fused = _fused_ok(kind, x, h0, proj, backend) or _ln_fused_ok(kind, x, h0)
    _last["path"] = "cpu" if fused else "torch-ops"
    hns, cns = [], []
    for layer in range(num_layers):
        ys = []
        for d in range(D):
            k = layer * D + d
            y, hn, cn = _direction(kind, x, h0[k], None if c0 is None else c0[k], groups[k],
                                   lengths, d == 1, opts, train, fused)
            ys.append(y)
            hns.append(hn)
            cns.append(cn)
        x = torch.cat(ys, dim=-1) if D == 2 else ys[0]
        if dropout > 0 and train and layer < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)
    hn = torch.stack(hns, 0)
    cn = torch.stack(cns, 0) if two else None

    if packed:
        out = PackedSequence(repack(x), batch_sizes, sorted_indices, unsorted_indices)
        if unsorted_indices is not None:
            hn = hn.index_select(1, unsorted_indices)
            cn = cn.index_select(1, unsorted_indices) if two else None
    else:
        out = x.transpose(0, 1) if batch_first else x
        if not batched:
            out = out.squeeze(0 if batch_first else 1)
            hn = hn.squeeze(1)
            cn = cn.squeeze(1) if two else None
    return (out, (hn, cn)) if two else (out, hn)


# ----------------------------------------------------------------------------- cells

def _cell(kind, input, hx, weights, zoneout_hc, train):
    two = kind in _TWO_STATES
    name = _NAMES[kind] + "Cell"
    w_ih, w_hh = weights[0], weights[1]
    V.check_cell_input(name, input, hx, two)
    batched = input.dim() == 2
    x = input if batched else input.unsqueeze(0)
    hx = V.cell_states(hx, two, batched)
    if hx is None:
        shape = (x.shape[0], w_hh.shape[1])
        hx = (x.new_zeros(shape), x.new_zeros(shape)) if two else x.new_zeros(shape)
    if two and V.pair_error(hx) is not None:
        raise V.pair_error(hx)
    V.check_cell_sizes(name, x, hx, two, w_ih, w_hh)
    error = V.cell_error(name, x, hx, two, w_ih)
    if error is not None:
        raise error
    h, c = (hx[0], hx[1]) if two else (hx, None)
    p = _group(kind, weights, False, False)
    h_new, c_new = _step(kind, _project(kind, x, p), h, h, c, p)
    h_new = zoneout(h, h_new, zoneout_hc[0], train)
    if two:
        c_new = zoneout(c, c_new, zoneout_hc[1], train)
        return (h_new, c_new) if batched else (h_new.squeeze(0), c_new.squeeze(0))
    return h_new if batched else h_new.squeeze(0)


def layer_norm_lstm_cell(input, hx, weights, zoneout=(0.0, 0.0), train=False):
    """One step of ``LayerNormLSTM``: input [N, I] or [I]; hx (h, c) or None; ``weights``
    w_ih, w_hh, g_ih, s_ih, g_hh, s_hh, g_c, s_c. Returns (h_1, c_1)."""
    return _cell("LN_LSTM", input, hx, weights, zoneout, train)


def layer_norm_gru_cell(input, hx, weights, zoneout=0.0, train=False):
    """One step of ``LayerNormGRU``: ``weights`` w_ih, w_hh, g_ih, s_ih, g_hh, s_hh."""
    return _cell("LN_GRU", input, hx, weights, (zoneout, 0.0), train)
