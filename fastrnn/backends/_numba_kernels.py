"""numba kernels of the numba backend (imported only when numba is importable).

Kernels know nothing of torch: they take numpy arrays. Sizes: ``T`` steps, ``N``
batch, ``H`` hidden, ``R`` recurrent width (proj_size or H).

Parallelism: a sequence's recurrence only couples its own batch row, so the batch
is cut into blocks of ``_RB`` rows and the blocks into one contiguous chunk per
thread (``prange`` over chunks: no barrier per step). A thread steps all its blocks
through time together: per step and block, one register-blocked matmul for all
gates into a small scratch (in L1), then one vectorised pointwise pass
(nonlinearities + state update). Time outside the block loop makes each step read
one contiguous slab of ``xg``/``dy`` per thread (block-outer order would read small
pieces a whole step's slab apart, which is slower than streaming one slab).

Activations: numba here has no SVML, so ``math.exp``/``math.tanh`` are scalar
library calls that block vectorisation. For float32 the activations are
computed in float64 arithmetic from an ``expm1`` built of plain multiply-adds
(Taylor polynomial at x/256, then ``q <- q*(q+2)`` eight times, which doubles the
argument and keeps *relative* accuracy near 0). That stays within 1 ulp of the
correctly rounded sigmoid and tanh over the float32 range and, being vectorised,
costs a fraction of a scalar library call per element. float64 uses the
library (``math.exp``/``math.tanh``): full accuracy matters more there.
"""
import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

# No 'nnan'/'ninf': NaN and inf must propagate as in torch. 'reassoc' lets LLVM
# vectorise the dot-product reductions.
_FM = {"reassoc", "contract", "nsz", "arcp"}
# error_model='numpy': no ZeroDivisionError checks, which would stop vectorisation.
_JIT = dict(cache=True, fastmath=_FM, error_model="numpy", nogil=True)

_RB = 4  # batch rows per block (the matmul is register-blocked 4 rows x 2 columns)


# --------------------------------------------------------------------------- activations
def _expm1_poly(x):
    pass


@overload(_expm1_poly, jit_options=dict(fastmath=_FM, error_model="numpy"))
def _ov_expm1_poly(x):
    def impl(x):
        # x float64, |x| <= 88: expm1(x/256) by Taylor (error < 1e-11 relative for
        # |x/256| <= 0.35), then expm1(2a) = expm1(a) * (expm1(a) + 2), eight times.
        r = x * (1.0 / 256.0)
        q = r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (
            1.0 / 120 + r * (1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (
                1.0 / 362880)))))))))
        q = q * (q + 2.0)
        q = q * (q + 2.0)
        q = q * (q + 2.0)
        q = q * (q + 2.0)
        q = q * (q + 2.0)
        q = q * (q + 2.0)
        q = q * (q + 2.0)
        q = q * (q + 2.0)
        return q
    return impl


def sigmoid(x):
    pass


def tanh(x):
    pass


@overload(sigmoid, jit_options=dict(fastmath=_FM, error_model="numpy"))
def _ov_sigmoid(x):
    if x == types.float32:
        def impl(x):
            xd = np.float64(x)
            # clamp (selects, not min/max, which branch on NaN); NaN passes through
            xd = -88.0 if xd < -88.0 else xd
            xd = 88.0 if xd > 88.0 else xd
            return np.float32(1.0 / (2.0 + _expm1_poly(-xd)))
        return impl

    def impl(x):
        return 1.0 / (1.0 + math.exp(-x))
    return impl


@overload(tanh, jit_options=dict(fastmath=_FM, error_model="numpy"))
def _ov_tanh(x):
    if x == types.float32:
        def impl(x):
            xd = np.float64(x)
            xd = -9.5 if xd < -9.5 else xd  # tanh(9.5) rounds to 1 in float32
            xd = 9.5 if xd > 9.5 else xd
            q = _expm1_poly(2.0 * xd)
            return np.float32(q / (q + 2.0))
        return impl

    def impl(x):
        return math.tanh(x)
    return impl


@njit(**_JIT)
def activations_for_test(x, which):
    """Apply sigmoid (which=0) or tanh (which=1) elementwise: used by the tests."""
    out = np.empty_like(x)
    if which == 0:
        for i in range(x.size):
            out[i] = sigmoid(x[i])
    else:
        for i in range(x.size):
            out[i] = tanh(x[i])
    return out


# --------------------------------------------------------------------------- matmul
@njit(**_JIT)
def _mm_acc(A, nr, B, out):
    """out[r, j] += sum_k A[r, k] * B[j, k] for r < nr, j < J.

    A [RB, K], B [J, K], out [RB, J], all C-contiguous. Dot-product form so that
    the k loop is contiguous for both operands; 4 rows x 2 columns per pass keep
    8 accumulators (vectorised over k by LLVM) and load each B row once per 4
    rows.
    """
    J = B.shape[0]
    K = B.shape[1]
    z = out.dtype.type(0)
    if nr == 4:
        J2 = J - (J % 2)
        for j in range(0, J2, 2):
            s00 = z
            s01 = z
            s10 = z
            s11 = z
            s20 = z
            s21 = z
            s30 = z
            s31 = z
            for k in range(K):
                w0 = B[j, k]
                w1 = B[j + 1, k]
                a0 = A[0, k]
                a1 = A[1, k]
                a2 = A[2, k]
                a3 = A[3, k]
                s00 += a0 * w0
                s01 += a0 * w1
                s10 += a1 * w0
                s11 += a1 * w1
                s20 += a2 * w0
                s21 += a2 * w1
                s30 += a3 * w0
                s31 += a3 * w1
            out[0, j] += s00
            out[0, j + 1] += s01
            out[1, j] += s10
            out[1, j + 1] += s11
            out[2, j] += s20
            out[2, j + 1] += s21
            out[3, j] += s30
            out[3, j + 1] += s31
        for j in range(J2, J):
            for r in range(4):
                s = z
                for k in range(K):
                    s += A[r, k] * B[j, k]
                out[r, j] += s
    else:
        # tail block: one row at a time, 4 columns per pass
        J4 = J - (J % 4)
        for r in range(nr):
            for j in range(0, J4, 4):
                s0 = z
                s1 = z
                s2 = z
                s3 = z
                for k in range(K):
                    a = A[r, k]
                    s0 += a * B[j, k]
                    s1 += a * B[j + 1, k]
                    s2 += a * B[j + 2, k]
                    s3 += a * B[j + 3, k]
                out[r, j] += s0
                out[r, j + 1] += s1
                out[r, j + 2] += s2
                out[r, j + 3] += s3
            for j in range(J4, J):
                s = z
                for k in range(K):
                    s += A[r, k] * B[j, k]
                out[r, j] += s


# --------------------------------------------------------------------------- scheduling
@njit(**_JIT)
def _chunks(N, nthreads):
    """(number of row blocks, number of chunks): each chunk (one per thread) owns a
    contiguous run of blocks and steps them all through time together, so each step
    reads one contiguous slab of xg/dy per thread instead of one 4-row piece."""
    nblk = (N + _RB - 1) // _RB
    nch = min(nthreads, nblk)
    return nblk, max(nch, 1)


@njit(**_JIT)
def _rows_in(B, src, b0, b1, N):
    """Copy rows of src [N, K] into the chunk's blocks B [b1-b0, _RB, K]."""
    for b in range(b0, b1):
        n0 = b * _RB
        for r in range(min(_RB, N - n0)):
            B[b - b0, r, :] = src[n0 + r]


@njit(**_JIT)
def _rows_out(dst, B, b0, b1, N):
    """Write the chunk's blocks B back into the rows of dst [N, K]."""
    for b in range(b0, b1):
        n0 = b * _RB
        for r in range(min(_RB, N - n0)):
            dst[n0 + r, :] = B[b - b0, r]


@njit(**_JIT)
def _n_valid(lens, n0, nr, t):
    """How many of the block's rows n0 .. n0+nr-1 are still running at step t."""
    k = 0
    for r in range(nr):
        if t < lens[n0 + r]:
            k += 1
    return k


@njit(**_JIT)
def _keep_valid(dst, src, lens, n0, nr, t):
    """dst[r] = src[r] for the block's rows still running at step t (frozen rows keep
    what was carried past them)."""
    for r in range(nr):
        if t < lens[n0 + r]:
            dst[r, :] = src[r]


# --------------------------------------------------------------------------- LSTM
@njit(parallel=True, **_JIT)
def lstm_forward(xg, h0, c0, w_hh, w_hr, use_proj, w_ch, peep, lens, reverse, training,
                 y, cn, gates, cs, nthreads):
    """xg [T,N,4H], h0 [N,R], c0 [N,H], w_hh [4H,R], w_hr [R,H] (if use_proj),
    w_ch [3H] (peepholes p_i, p_f, p_o, if peep), lens [N] int64 -> y [T,N,R], cn [N,H],
    gates [T,N,4H] and cs [T,N,H] (if training)."""
    T = xg.shape[0]
    N = xg.shape[1]
    H = c0.shape[1]
    R = h0.shape[1]
    dt = xg.dtype
    one = dt.type(1)
    nblk, nch = _chunks(N, nthreads)
    for c in prange(nch):
        b0 = c * nblk // nch
        b1 = (c + 1) * nblk // nch
        HB = np.zeros((b1 - b0, _RB, R), dtype=dt)   # h carried in (rows >= nr stay 0)
        CB = np.zeros((b1 - b0, _RB, H), dtype=dt)   # c carried in
        MB = np.zeros((b1 - b0, _RB, H), dtype=dt)   # o * tanh(c) before the projection
        pre = np.zeros((_RB, 4 * H), dtype=dt)
        pb = np.zeros((_RB, R), dtype=dt)
        gscr = np.empty((_RB, 4 * H), dtype=dt)
        _rows_in(HB, h0, b0, b1, N)
        _rows_in(CB, c0, b0, b1, N)
        for s in range(T):
            t = T - 1 - s if reverse else s
            for b in range(b0, b1):
                n0 = b * _RB
                nr = min(_RB, N - n0)
                hb = HB[b - b0]
                cb = CB[b - b0]
                mb = MB[b - b0]
                nvalid = _n_valid(lens, n0, nr, t)
                if nvalid > 0:
                    for r in range(nr):
                        pre[r, :] = xg[t, n0 + r]
                    _mm_acc(hb, nr, w_hh, pre)
                    for r in range(nr):
                        n = n0 + r
                        if t < lens[n]:
                            g = gates[t, n] if training else gscr[r]
                            hm = mb[r] if use_proj else hb[r]
                            for u in range(H):
                                cp = cb[r, u]
                                pi_ = pre[r, u]
                                pf_ = pre[r, H + u]
                                po_ = pre[r, 3 * H + u]
                                if peep:  # i and f see c_{t-1}
                                    pi_ += w_ch[u] * cp
                                    pf_ += w_ch[H + u] * cp
                                i_ = sigmoid(pi_)
                                f_ = sigmoid(pf_)
                                g_ = tanh(pre[r, 2 * H + u])
                                cc = f_ * cp + i_ * g_
                                if peep:  # o sees c_t
                                    po_ += w_ch[2 * H + u] * cc
                                o_ = sigmoid(po_)
                                cb[r, u] = cc
                                hm[u] = o_ * tanh(cc)
                                g[u] = i_
                                g[H + u] = f_
                                g[2 * H + u] = g_
                                g[3 * H + u] = o_
                        elif training:
                            gates[t, n, :] = 0
                    if use_proj:
                        pb[:, :] = 0
                        _mm_acc(mb, nr, w_hr, pb)
                        for r in range(nr):
                            if t < lens[n0 + r]:
                                hb[r, :] = pb[r]
                elif training:
                    for r in range(nr):
                        gates[t, n0 + r, :] = 0
                for r in range(nr):
                    y[t, n0 + r, :] = hb[r]
                    if training:
                        cs[t, n0 + r, :] = cb[r]
        _rows_out(cn, CB, b0, b1, N)
    return one


@njit(parallel=True, **_JIT)
def lstm_backward(dy, dcn, c0, w_hhT, w_hrT, use_proj, w_ch, peep, lens, reverse, gates, cs,
                  dgates, dh0, dc0, dr, nthreads):
    """dy [T,N,R], dcn [N,H], c0 [N,H], w_hhT [R,4H] (= w_hh^T), w_hrT [H,R] (= w_hr^T),
    w_ch [3H] (if peep), gates [T,N,4H], cs [T,N,H] -> dgates [T,N,4H], dh0 [N,R],
    dc0 [N,H], dr [T,N,R]."""
    T = dy.shape[0]
    N = dy.shape[1]
    R = dy.shape[2]
    H = dcn.shape[1]
    dt = dy.dtype
    one = dt.type(1)
    nblk, nch = _chunks(N, nthreads)
    for c in prange(nch):
        b0 = c * nblk // nch
        b1 = (c + 1) * nblk // nch
        DH = np.zeros((b1 - b0, _RB, R), dtype=dt)   # dL/dh carried back (from later steps)
        DC = np.zeros((b1 - b0, _RB, H), dtype=dt)   # dL/dc carried back
        dht = np.zeros((_RB, R), dtype=dt)           # dy + dh at this step
        dm = np.zeros((_RB, H), dtype=dt)            # dL/d(o*tanh(c))
        dga = np.zeros((_RB, 4 * H), dtype=dt)
        dhn = np.zeros((_RB, R), dtype=dt)
        _rows_in(DC, dcn, b0, b1, N)
        for s in range(T):
            t = s if reverse else T - 1 - s       # processing order reversed
            tp = t + 1 if reverse else t - 1      # the step that produced the state carried in
            has_prev = 0 <= tp < T
            for b in range(b0, b1):
                n0 = b * _RB
                nr = min(_RB, N - n0)
                dh = DH[b - b0]
                dc = DC[b - b0]
                nvalid = 0
                for r in range(nr):
                    n = n0 + r
                    for k in range(R):
                        dht[r, k] = dy[t, n, k] + dh[r, k]
                    if t < lens[n]:
                        nvalid += 1
                        if use_proj:
                            dr[t, n, :] = dht[r]
                    else:
                        # frozen step: the gradient flows to the state carried in
                        dh[r, :] = dht[r]
                        dgates[t, n, :] = 0
                        dga[r, :] = 0
                        if use_proj:
                            dr[t, n, :] = 0
                if nvalid == 0:
                    continue
                if use_proj:
                    dm[:, :] = 0
                    _mm_acc(dht, nr, w_hrT, dm)
                for r in range(nr):
                    n = n0 + r
                    if t < lens[n]:
                        dmr = dm[r] if use_proj else dht[r]
                        cp = cs[tp, n] if has_prev else c0[n]
                        g = gates[t, n]
                        dg = dgates[t, n]
                        for u in range(H):
                            i_ = g[u]
                            f_ = g[H + u]
                            g_ = g[2 * H + u]
                            o_ = g[3 * H + u]
                            tc = tanh(cs[t, n, u])
                            dmu = dmr[u]
                            do = dmu * tc * o_ * (one - o_)
                            dcc = dc[r, u] + dmu * o_ * (one - tc * tc)
                            if peep:  # c_t feeds o's pre-activation
                                dcc += do * w_ch[2 * H + u]
                            a = dcc * g_ * i_ * (one - i_)
                            bf = dcc * cp[u] * f_ * (one - f_)
                            cg = dcc * i_ * (one - g_ * g_)
                            dc[r, u] = dcc * f_
                            if peep:  # c_{t-1} feeds i's and f's
                                dc[r, u] += a * w_ch[u] + bf * w_ch[H + u]
                            dg[u] = a
                            dg[H + u] = bf
                            dg[2 * H + u] = cg
                            dg[3 * H + u] = do
                            dga[r, u] = a
                            dga[r, H + u] = bf
                            dga[r, 2 * H + u] = cg
                            dga[r, 3 * H + u] = do
                dhn[:, :] = 0
                _mm_acc(dga, nr, w_hhT, dhn)
                _keep_valid(dh, dhn, lens, n0, nr, t)
        _rows_out(dh0, DH, b0, b1, N)
        _rows_out(dc0, DC, b0, b1, N)
    return one


# --------------------------------------------------------------------------- GRU
@njit(parallel=True, **_JIT)
def gru_forward(xg, h0, w_hh, b_hh, lens, reverse, training, y, saved, nthreads):
    """xg [T,N,3H], h0 [N,H], w_hh [3H,H], b_hh [3H] -> y [T,N,H], saved [T,N,4H]
    (r, z, n, hn) if training."""
    T = xg.shape[0]
    N = xg.shape[1]
    H = h0.shape[1]
    dt = xg.dtype
    one = dt.type(1)
    nblk, nch = _chunks(N, nthreads)
    for c in prange(nch):
        b0 = c * nblk // nch
        b1 = (c + 1) * nblk // nch
        HB = np.zeros((b1 - b0, _RB, H), dtype=dt)
        hg = np.zeros((_RB, 3 * H), dtype=dt)
        sscr = np.empty((_RB, 4 * H), dtype=dt)
        _rows_in(HB, h0, b0, b1, N)
        for s in range(T):
            t = T - 1 - s if reverse else s
            for b in range(b0, b1):
                n0 = b * _RB
                nr = min(_RB, N - n0)
                hb = HB[b - b0]
                nvalid = _n_valid(lens, n0, nr, t)
                if nvalid > 0:
                    for r in range(nr):
                        hg[r, :] = b_hh
                    _mm_acc(hb, nr, w_hh, hg)
                    for r in range(nr):
                        n = n0 + r
                        if t < lens[n]:
                            sv = saved[t, n] if training else sscr[r]
                            x = xg[t, n]
                            for u in range(H):
                                rr = sigmoid(x[u] + hg[r, u])
                                zz = sigmoid(x[H + u] + hg[r, H + u])
                                hn = hg[r, 2 * H + u]
                                nn = tanh(x[2 * H + u] + rr * hn)
                                hb[r, u] = (one - zz) * nn + zz * hb[r, u]
                                sv[u] = rr
                                sv[H + u] = zz
                                sv[2 * H + u] = nn
                                sv[3 * H + u] = hn
                        elif training:
                            saved[t, n, :] = 0
                elif training:
                    for r in range(nr):
                        saved[t, n0 + r, :] = 0
                for r in range(nr):
                    y[t, n0 + r, :] = hb[r]
    return one


@njit(parallel=True, **_JIT)
def gru_backward(dy, h0, w_hhT, lens, reverse, y, saved, dxg, dh0, nthreads):
    """dy [T,N,H], h0 [N,H], w_hhT [H,3H] (= w_hh^T), y [T,N,H], saved [T,N,4H]
    -> dxg [T,N,3H], dh0 [N,H]."""
    T = dy.shape[0]
    N = dy.shape[1]
    H = dy.shape[2]
    dt = dy.dtype
    one = dt.type(1)
    nblk, nch = _chunks(N, nthreads)
    for c in prange(nch):
        b0 = c * nblk // nch
        b1 = (c + 1) * nblk // nch
        DH = np.zeros((b1 - b0, _RB, H), dtype=dt)
        dhg = np.zeros((_RB, 3 * H), dtype=dt)   # dL/d(h @ w_hh^T + b_hh)
        dhn = np.zeros((_RB, H), dtype=dt)
        for s in range(T):
            t = s if reverse else T - 1 - s
            tp = t + 1 if reverse else t - 1
            has_prev = 0 <= tp < T
            for b in range(b0, b1):
                n0 = b * _RB
                nr = min(_RB, N - n0)
                dh = DH[b - b0]
                nvalid = 0
                for r in range(nr):
                    n = n0 + r
                    if t < lens[n]:
                        nvalid += 1
                        hp = y[tp, n] if has_prev else h0[n]
                        sv = saved[t, n]
                        dx = dxg[t, n]
                        dyt = dy[t, n]
                        for u in range(H):
                            d = dyt[u] + dh[r, u]
                            rr = sv[u]
                            zz = sv[H + u]
                            nn = sv[2 * H + u]
                            hn = sv[3 * H + u]
                            dnp = d * (one - zz) * (one - nn * nn)
                            dxr = dnp * hn * rr * (one - rr)
                            dxz = d * (hp[u] - nn) * zz * (one - zz)
                            dx[u] = dxr
                            dx[H + u] = dxz
                            dx[2 * H + u] = dnp
                            dhg[r, u] = dxr
                            dhg[r, H + u] = dxz
                            dhg[r, 2 * H + u] = dnp * rr
                            dhn[r, u] = d * zz
                    else:
                        for u in range(H):
                            dh[r, u] += dy[t, n, u]
                        dxg[t, n, :] = 0
                        dhg[r, :] = 0
                if nvalid == 0:
                    continue
                _mm_acc(dhg, nr, w_hhT, dhn)
                _keep_valid(dh, dhn, lens, n0, nr, t)
        _rows_out(dh0, DH, b0, b1, N)
    return one


# --------------------------------------------------------------------------- Elman RNN
@njit(parallel=True, **_JIT)
def rnn_forward(xg, h0, w_hh, lens, reverse, relu, y, nthreads):
    """xg [T,N,H], h0 [N,H], w_hh [H,H] -> y [T,N,H]."""
    T = xg.shape[0]
    N = xg.shape[1]
    H = h0.shape[1]
    dt = xg.dtype
    zero = dt.type(0)
    nblk, nch = _chunks(N, nthreads)
    for c in prange(nch):
        b0 = c * nblk // nch
        b1 = (c + 1) * nblk // nch
        HB = np.zeros((b1 - b0, _RB, H), dtype=dt)
        pre = np.zeros((_RB, H), dtype=dt)
        _rows_in(HB, h0, b0, b1, N)
        for s in range(T):
            t = T - 1 - s if reverse else s
            for b in range(b0, b1):
                n0 = b * _RB
                nr = min(_RB, N - n0)
                hb = HB[b - b0]
                nvalid = _n_valid(lens, n0, nr, t)
                if nvalid > 0:
                    for r in range(nr):
                        pre[r, :] = xg[t, n0 + r]
                    _mm_acc(hb, nr, w_hh, pre)
                    for r in range(nr):
                        if t < lens[n0 + r]:
                            if relu:
                                for u in range(H):
                                    p = pre[r, u]
                                    hb[r, u] = zero if p < zero else p  # NaN passes, as torch.relu
                            else:
                                for u in range(H):
                                    hb[r, u] = tanh(pre[r, u])
                for r in range(nr):
                    y[t, n0 + r, :] = hb[r]
    return zero


@njit(parallel=True, **_JIT)
def rnn_backward(dy, w_hhT, lens, reverse, relu, y, dxg, dh0, nthreads):
    """dy [T,N,H], w_hhT [H,H] (= w_hh^T), y [T,N,H] -> dxg [T,N,H], dh0 [N,H]."""
    T = dy.shape[0]
    N = dy.shape[1]
    H = dy.shape[2]
    dt = dy.dtype
    zero = dt.type(0)
    one = dt.type(1)
    nblk, nch = _chunks(N, nthreads)
    for c in prange(nch):
        b0 = c * nblk // nch
        b1 = (c + 1) * nblk // nch
        DH = np.zeros((b1 - b0, _RB, H), dtype=dt)
        dp = np.zeros((_RB, H), dtype=dt)
        dhn = np.zeros((_RB, H), dtype=dt)
        for s in range(T):
            t = s if reverse else T - 1 - s
            for b in range(b0, b1):
                n0 = b * _RB
                nr = min(_RB, N - n0)
                dh = DH[b - b0]
                nvalid = 0
                for r in range(nr):
                    n = n0 + r
                    if t < lens[n]:
                        nvalid += 1
                        yt = y[t, n]
                        dyt = dy[t, n]
                        dx = dxg[t, n]
                        if relu:
                            for u in range(H):
                                # as torch's threshold_backward: zero where y <= 0 (NaN y passes)
                                d = zero if yt[u] <= zero else (dyt[u] + dh[r, u])
                                dx[u] = d
                                dp[r, u] = d
                        else:
                            for u in range(H):
                                yu = yt[u]
                                d = (dyt[u] + dh[r, u]) * (one - yu * yu)
                                dx[u] = d
                                dp[r, u] = d
                    else:
                        for u in range(H):
                            dh[r, u] += dy[t, n, u]
                        dxg[t, n, :] = 0
                        dp[r, :] = 0
                if nvalid == 0:
                    continue
                dhn[:, :] = 0
                _mm_acc(dp, nr, w_hhT, dhn)
                _keep_valid(dh, dhn, lens, n0, nr, t)
        _rows_out(dh0, DH, b0, b1, N)
    return zero
