"""Pure-PyTorch reference backend: the oracle every other backend is checked against.

It implements the backend contract of ``fastrnn.backends`` (read its docstring) with a
plain Python step loop over torch ops, and with the backward math written out by hand
(not autograd), so that a test comparing it with torch.nn checks the formulas that the
fused kernels implement. Clarity over speed: one line per equation, shapes in comments.

Sizes: T steps, N batch, H hidden, R recurrent width (proj_size or H).
"""
import torch


def unavailable_reason():
    return None  # needs nothing but torch


# ----------------------------------------------------------------------------- helpers

def _steps(T, reverse):
    """Time indices in processing order."""
    return range(T - 1, -1, -1) if reverse else range(T)


def _valid_mask(lengths, T):
    """[T, N, 1] bool, True where step t of sequence n is valid; None when all are."""
    if lengths is None:
        return None
    t = torch.arange(T, device=lengths.device)
    return (t[:, None] < lengths[None, :]).unsqueeze(-1)


def _prev(seq, t, first, reverse):
    """State carried into step t: seq[t-1] (forward) / seq[t+1] (reverse), or ``first``."""
    T = seq.shape[0]
    if reverse:
        return seq[t + 1] if t + 1 < T else first
    return seq[t - 1] if t > 0 else first


def _d_sigmoid(s):  # from the activated value
    return s * (1 - s)


def _d_tanh(th):  # from the activated value
    return 1 - th * th


# ----------------------------------------------------------------------------- LSTM

def lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, reverse, training):
    T, N, G = xg.shape
    H = G // 4
    R = h0.shape[-1]
    valid = _valid_mask(lengths, T)
    y = xg.new_empty(T, N, R)  # h after each step
    cs = xg.new_empty(T, N, H)  # c after each step
    gates = xg.new_empty(T, N, 4 * H) if training else xg.new_empty(0)
    h, c = h0, c0
    for t in _steps(T, reverse):
        pre = xg[t] + h @ w_hh.t()  # [N, 4H]
        i = torch.sigmoid(pre[:, 0 * H:1 * H])
        f = torch.sigmoid(pre[:, 1 * H:2 * H])
        g = torch.tanh(pre[:, 2 * H:3 * H])
        o = torch.sigmoid(pre[:, 3 * H:4 * H])
        c_new = f * c + i * g  # [N, H]
        m = o * torch.tanh(c_new)  # [N, H]
        h_new = m if w_hr is None else m @ w_hr.t()  # [N, R]
        act = torch.cat([i, f, g, o], dim=1)
        if valid is not None:  # frozen state on invalid steps
            v = valid[t]
            c_new = torch.where(v, c_new, c)
            h_new = torch.where(v, h_new, h)
            act = torch.where(v, act, torch.zeros_like(act))
        y[t] = h_new
        cs[t] = c_new
        if training:
            gates[t] = act
        h, c = h_new, c_new
    cn = c.clone()
    if not training:
        cs = xg.new_empty(0)
    return y, cn, gates, cs


def lstm_backward(dy, dcn, h0, c0, w_hh, w_hr, lengths, reverse, y, gates, cs):
    T, N, R = dy.shape
    H = c0.shape[-1]
    valid = _valid_mask(lengths, T)
    dgates = dy.new_zeros(T, N, 4 * H)
    dr = dy.new_zeros(T, N, R) if w_hr is not None else dy.new_empty(0)
    dh = torch.zeros_like(h0)  # gradient w.r.t. the state carried into the step just done
    dc = dcn.clone()
    for t in reversed(_steps(T, reverse)):
        dh_t = dh + dy[t]  # total gradient w.r.t. h after step t
        i = gates[t, :, 0 * H:1 * H]
        f = gates[t, :, 1 * H:2 * H]
        g = gates[t, :, 2 * H:3 * H]
        o = gates[t, :, 3 * H:4 * H]
        c_prev = _prev(cs, t, c0, reverse)
        tc = torch.tanh(cs[t])
        dm = dh_t if w_hr is None else dh_t @ w_hr  # [N, H]
        dc_t = dc + dm * o * _d_tanh(tc)  # total gradient w.r.t. c after step t
        dpre = torch.cat([
            dc_t * g * _d_sigmoid(i),
            dc_t * c_prev * _d_sigmoid(f),
            dc_t * i * _d_tanh(g),
            dm * tc * _d_sigmoid(o),
        ], dim=1)  # [N, 4H]
        dh_prev = dpre @ w_hh  # [N, R]
        dc_prev = dc_t * f
        if valid is None:
            dgates[t] = dpre
            if w_hr is not None:
                dr[t] = dh_t
            dh, dc = dh_prev, dc_prev
        else:  # invalid steps pass dh, dc through and contribute nothing
            v = valid[t]
            dgates[t] = torch.where(v, dpre, torch.zeros_like(dpre))
            if w_hr is not None:
                dr[t] = torch.where(v, dh_t, torch.zeros_like(dh_t))
            dh = torch.where(v, dh_prev, dh_t)
            dc = torch.where(v, dc_prev, dc)
    return dgates, dh, dc, dr


# ----------------------------------------------------------------------------- GRU

def gru_forward(xg, h0, w_hh, b_hh, lengths, reverse, training):
    T, N, G = xg.shape
    H = G // 3
    valid = _valid_mask(lengths, T)
    y = xg.new_empty(T, N, H)
    saved = xg.new_empty(T, N, 4 * H) if training else xg.new_empty(0)
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
        y[t] = h_new
        if training:
            saved[t] = act
        h = h_new
    return y, saved


def gru_backward(dy, h0, w_hh, lengths, reverse, y, saved):
    T, N, H = dy.shape
    valid = _valid_mask(lengths, T)
    dxg = dy.new_zeros(T, N, 3 * H)
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
            dxg[t] = dx
            dh = dh_prev
        else:
            v = valid[t]
            dxg[t] = torch.where(v, dx, torch.zeros_like(dx))
            dh = torch.where(v, dh_prev, dh_t)
    return dxg, dh


# ----------------------------------------------------------------------------- Elman RNN

def rnn_forward(xg, h0, w_hh, lengths, reverse, relu):
    T, N, H = xg.shape
    valid = _valid_mask(lengths, T)
    y = xg.new_empty(T, N, H)
    h = h0
    for t in _steps(T, reverse):
        pre = xg[t] + h @ w_hh.t()
        h_new = torch.relu(pre) if relu else torch.tanh(pre)
        if valid is not None:
            h_new = torch.where(valid[t], h_new, h)
        y[t] = h_new
        h = h_new
    return y


def rnn_backward(dy, h0, w_hh, lengths, reverse, relu, y):
    T, N, H = dy.shape
    valid = _valid_mask(lengths, T)
    dxg = dy.new_zeros(T, N, H)
    dh = torch.zeros_like(h0)
    for t in reversed(_steps(T, reverse)):
        dh_t = dh + dy[t]
        if relu:
            dpre = torch.where(y[t] > 0, dh_t, torch.zeros_like(dh_t))
        else:
            dpre = dh_t * _d_tanh(y[t])
        dh_prev = dpre @ w_hh
        if valid is None:
            dxg[t] = dpre
            dh = dh_prev
        else:
            v = valid[t]
            dxg[t] = torch.where(v, dpre, torch.zeros_like(dpre))
            dh = torch.where(v, dh_prev, dh_t)
    return dxg, dh
