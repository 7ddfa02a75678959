"""Pure-PyTorch reference backend: the oracle every other backend is checked against.

It implements the backend contract of ``fastrnn.backends`` (read its docstring) with a
plain Python step loop over torch ops, and with the backward math written out by hand
(not autograd), so that a test comparing it with torch.nn checks the formulas that the
fused kernels implement. Clarity over speed: one line per equation, shapes in comments.

Sizes: T steps, N batch, H hidden, R recurrent width (proj_size or H).
"""
import torch

from ._common import valid_mask


PEEPHOLES = True  # lstm_forward/lstm_backward take w_ch (the backend contract)


def unavailable_reason():
    return None  # needs nothing but torch


# ----------------------------------------------------------------------------- helpers

def _steps(T, reverse):
    """Time indices in processing order."""
    return range(T - 1, -1, -1) if reverse else range(T)


def _prev(seq, t, first, reverse):
    """State carried into step t: seq[t-1] (forward) / seq[t+1] (reverse), or ``first``."""
    T = seq.shape[0]
    if reverse:
        return seq[t + 1] if t + 1 < T else first
    return seq[t - 1] if t > 0 else first


def _stack(per_step, reverse, empty):
    """Per-step results listed in processing order -> [T, ...] in time order. Built with
    torch.stack, not written into a preallocated tensor, so that these functions are also an
    efficient differentiable replay (the ops' double backward differentiates the forwards)
    and run under vmap as they are (batched results cannot be written into a tensor made
    before them: the ops' batched gradients and torch.func transforms run them)."""
    if not per_step:
        return empty  # T == 0
    return torch.stack(per_step[::-1] if reverse else per_step)


def _stack_backward(per_step, reverse, empty):
    """``_stack`` for a backward loop, which visits the steps in reverse processing order."""
    return _stack(per_step, not reverse, empty)


def _d_sigmoid(s):  # from the activated value
    return s * (1 - s)


def _d_tanh(th):  # from the activated value
    return 1 - th * th


# ----------------------------------------------------------------------------- LSTM

def lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, reverse, training, w_ch=None):
    T, N, G = xg.shape
    H = G // 4
    R = h0.shape[-1]
    valid = valid_mask(lengths, T)
    ys, cs, gates = [], [], []  # h, c and the activated gates after each step
    h, c = h0, c0
    for t in _steps(T, reverse):
        pre = xg[t] + h @ w_hh.t()  # [N, 4H]
        pre_i, pre_f, pre_o = pre[:, 0 * H:1 * H], pre[:, 1 * H:2 * H], pre[:, 3 * H:4 * H]
        if w_ch is not None:  # peepholes: i and f see c_{t-1}
            pre_i = pre_i + w_ch[0 * H:1 * H] * c
            pre_f = pre_f + w_ch[1 * H:2 * H] * c
        i = torch.sigmoid(pre_i)
        f = torch.sigmoid(pre_f)
        g = torch.tanh(pre[:, 2 * H:3 * H])
        c_new = f * c + i * g  # [N, H]
        if w_ch is not None:  # o sees c_t
            pre_o = pre_o + w_ch[2 * H:3 * H] * c_new
        o = torch.sigmoid(pre_o)
        m = o * torch.tanh(c_new)  # [N, H]
        h_new = m if w_hr is None else m @ w_hr.t()  # [N, R]
        act = torch.cat([i, f, g, o], dim=1)
        if valid is not None:  # frozen state on invalid steps
            v = valid[t]
            c_new = torch.where(v, c_new, c)
            h_new = torch.where(v, h_new, h)
            act = torch.where(v, act, torch.zeros_like(act))
        ys.append(h_new)
        cs.append(c_new)
        gates.append(act)
        h, c = h_new, c_new
    y, cn = _stack(ys, reverse, xg.new_empty(0, N, R)), c.clone()
    if not training:
        return y, cn, xg.new_empty(0), xg.new_empty(0)
    return (y, cn, _stack(gates, reverse, xg.new_empty(0, N, 4 * H)),
            _stack(cs, reverse, xg.new_empty(0, N, H)))


def lstm_backward(dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates, cs, w_ch=None):
    T, N, R = dy.shape
    H = c0.shape[-1]
    valid = valid_mask(lengths, T)
    dgates, dr = [], []  # per step, in the order visited
    dh = torch.zeros_like(h0)  # gradient w.r.t. the state carried into the step just done
    dc = dcn
    for t in reversed(_steps(T, reverse)):
        dh_t = dh + dy[t]  # total gradient w.r.t. h after step t
        i = gates[t, :, 0 * H:1 * H]
        f = gates[t, :, 1 * H:2 * H]
        g = gates[t, :, 2 * H:3 * H]
        o = gates[t, :, 3 * H:4 * H]
        c_prev = _prev(cs, t, c0, reverse)
        tc = torch.tanh(cs[t])
        dm = dh_t if w_hr is None else dh_t @ w_hr  # [N, H]
        do = dm * tc * _d_sigmoid(o)
        dc_t = dc + dm * o * _d_tanh(tc)  # total gradient w.r.t. c after step t
        if w_ch is not None:  # c_t also feeds o's pre-activation
            dc_t = dc_t + do * w_ch[2 * H:3 * H]
        di = dc_t * g * _d_sigmoid(i)
        df = dc_t * c_prev * _d_sigmoid(f)
        dpre = torch.cat([di, df, dc_t * i * _d_tanh(g), do], dim=1)  # [N, 4H]
        dh_prev = dpre @ w_hh  # [N, R]
        dc_prev = dc_t * f
        if w_ch is not None:  # c_{t-1} also feeds i's and f's pre-activations
            dc_prev = dc_prev + di * w_ch[0 * H:1 * H] + df * w_ch[1 * H:2 * H]
        if valid is None:
            dgates.append(dpre)
            dr.append(dh_t)
            dh, dc = dh_prev, dc_prev
        else:  # invalid steps pass dh, dc through and contribute nothing
            v = valid[t]
            dgates.append(torch.where(v, dpre, torch.zeros_like(dpre)))
            dr.append(torch.where(v, dh_t, torch.zeros_like(dh_t)))
            dh = torch.where(v, dh_prev, dh_t)
            dc = torch.where(v, dc_prev, dc)
    dgates = _stack_backward(dgates, reverse, dy.new_zeros(0, N, 4 * H))
    dr = _stack_backward(dr, reverse, dy.new_zeros(0, N, R)) if w_hr is not None \
        else dy.new_empty(0)
    return dgates, dh, dc, dr


# ----------------------------------------------------------------------------- GRU

def gru_forward(xg, h0, w_hh, b_hh, lengths, reverse, training):
    T, N, G = xg.shape
    H = G // 3
    valid = valid_mask(lengths, T)
    ys, saved = [], []  # h and the activations [r, z, n, hn] after each step
    h = h0
    for t in _steps(T, reverse):
        hg = h @ w_hh.t() + b_hh  # [N, 3H]
        r = torch.sigmoid(xg[t, :, 0 * H:1 * H] + hg[:, 0 * H:1 * H])
        z = torch.sigmoid(xg[t, :, 1 * H:2 * H] + hg[:, 1 * H:2 * H])
        hn = hg[:, 2 * H:3 * H]
        n = torch.tanh(xg[t, :, 2 * H:3 * H] + r * hn)
        h_new = (1 - z) * n + z * h
        act = torch.cat([r, z, n, hn], dim=1)
        if valid is not None:
            v = valid[t]
            h_new = torch.where(v, h_new, h)
            act = torch.where(v, act, torch.zeros_like(act))
        ys.append(h_new)
        saved.append(act)
        h = h_new
    y = _stack(ys, reverse, xg.new_empty(0, N, H))
    return y, _stack(saved, reverse, xg.new_empty(0, N, 4 * H)) if training else xg.new_empty(0)


def gru_backward(dy, h0, w_hh, lengths, reverse, y, saved):
    T, N, H = dy.shape
    valid = valid_mask(lengths, T)
    dxg = []  # per step, in the order visited
    dh = torch.zeros_like(h0)
    for t in reversed(_steps(T, reverse)):
        dh_t = dh + dy[t]
        r = saved[t, :, 0 * H:1 * H]
        z = saved[t, :, 1 * H:2 * H]
        n = saved[t, :, 2 * H:3 * H]
        hn = saved[t, :, 3 * H:4 * H]
        h_prev = _prev(y, t, h0, reverse)
        dn_pre = dh_t * (1 - z) * _d_tanh(n)  # w.r.t. the argument of tanh
        dz_pre = dh_t * (h_prev - n) * _d_sigmoid(z)
        dr_pre = dn_pre * hn * _d_sigmoid(r)
        dx = torch.cat([dr_pre, dz_pre, dn_pre], dim=1)  # w.r.t. xg[t]
        dhg = torch.cat([dr_pre, dz_pre, dn_pre * r], dim=1)  # w.r.t. hg
        dh_prev = dh_t * z + dhg @ w_hh
        if valid is None:
            dh = dh_prev
        else:
            v = valid[t]
            dx = torch.where(v, dx, torch.zeros_like(dx))
            dh = torch.where(v, dh_prev, dh_t)
        dxg.append(dx)
    return _stack_backward(dxg, reverse, dy.new_zeros(0, N, 3 * H)), dh


# ----------------------------------------------------------------------------- Elman RNN

def rnn_forward(xg, h0, w_hh, lengths, reverse, relu):
    T, N, H = xg.shape
    valid = valid_mask(lengths, T)
    ys = []
    h = h0
    for t in _steps(T, reverse):
        pre = xg[t] + h @ w_hh.t()
        h_new = torch.relu(pre) if relu else torch.tanh(pre)
        if valid is not None:
            h_new = torch.where(valid[t], h_new, h)
        ys.append(h_new)
        h = h_new
    return _stack(ys, reverse, xg.new_empty(0, N, H))


def rnn_backward(dy, h0, w_hh, lengths, reverse, relu, y):
    T, N, H = dy.shape
    valid = valid_mask(lengths, T)
    dxg = []  # per step, in the order visited
    dh = torch.zeros_like(h0)
    for t in reversed(_steps(T, reverse)):
        dh_t = dh + dy[t]
        if relu:
            dpre = torch.where(y[t] > 0, dh_t, torch.zeros_like(dh_t))
        else:
            dpre = dh_t * _d_tanh(y[t])
        dh_prev = dpre @ w_hh
        if valid is None:
            dh = dh_prev
        else:
            v = valid[t]
            dpre = torch.where(v, dpre, torch.zeros_like(dpre))
            dh = torch.where(v, dh_prev, dh_t)
        dxg.append(dpre)
    return _stack_backward(dxg, reverse, dy.new_zeros(0, N, H)), dh
