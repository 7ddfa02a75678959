"""Every available backend against the backend contract (fastrnn/backends/__init__.py).

The contract functions are called directly (no op layer, no modules) on small random
inputs and compared with an oracle written here: a plain step loop of torch ops whose
gradients come from autograd, so it shares no code (and no hand-written derivative)
with any backend. Covered: LSTM with and without projection, GRU, RNN tanh/relu;
float64 and float32; no lengths and unsorted lengths with some == T and some == 1;
forward and reverse; training and inference. Backward outputs are checked too, and
the gate-gradient rows of invalid (padded) steps must be exactly zero.

Shapes are fixed (N = 6: one full 4-row block and a 2-row tail for the numba kernels;
H = 5: odd gate widths) so that numba compiles each kernel once per dtype (cached).
"""
import numpy as np
import pytest
import torch

from fastrnn import backends

BACKENDS = [b for b in backends.available_backends()
            if b != "cuda" or torch.cuda.is_available()]
CELLS = ("lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu")
DTYPES = (torch.float64, torch.float32)
T, N, H, P = 7, 6, 5, 3  # P: proj_size
LENGTHS = [7, 1, 4, 7, 2, 5]  # unsorted, some == T, one == 1

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10),
       torch.float32: dict(rtol=2e-5, atol=2e-5)}


def _device(backend):
    return "cuda" if backend == "cuda" else "cpu"


# ----------------------------------------------------------------------------- oracle

def _valid(lengths, t):
    """[N, 1] bool: is step t valid for each sequence (all True without lengths)."""
    if lengths is None:
        return None
    return (t < lengths).unsqueeze(1)


def _order(reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def oracle_lstm(xg, h0, c0, w_hh, w_hr, lengths, reverse):
    """-> y [T,N,R], cn, gates [T,N,4H] (activated), cs [T,N,H], hproj (per-step h before
    the validity select, to read dr from)."""
    Hh = c0.shape[1]
    h, c = h0, c0
    y, gates, cs, hnew = [None] * T, [None] * T, [None] * T, [None] * T
    for t in _order(reverse):
        pre = xg[t] + h @ w_hh.t()
        i, f, g, o = pre.split(Hh, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        m = o * torch.tanh(c_new)
        h_new = m if w_hr is None else m @ w_hr.t()
        if h_new.requires_grad:
            h_new.retain_grad()
        hnew[t] = h_new
        gates[t] = torch.cat([i, f, g, o], dim=1)
        v = _valid(lengths, t)
        if v is not None:
            h_new = torch.where(v, h_new, h)
            c_new = torch.where(v, c_new, c)
        h, c = h_new, c_new
        y[t], cs[t] = h, c
    return torch.stack(y), c, torch.stack(gates), torch.stack(cs), hnew


def oracle_gru(xg, h0, w_hh, b_hh, lengths, reverse):
    """-> y [T,N,H], saved [T,N,4H] (r, z, n, hn)."""
    Hh = h0.shape[1]
    h = h0
    y, saved = [None] * T, [None] * T
    for t in _order(reverse):
        hg = h @ w_hh.t() + b_hh
        xr, xz, xn = xg[t].split(Hh, dim=1)
        hr, hz, hn = hg.split(Hh, dim=1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h_new = (1 - z) * n + z * h
        saved[t] = torch.cat([r, z, n, hn], dim=1)
        v = _valid(lengths, t)
        h = h_new if v is None else torch.where(v, h_new, h)
        y[t] = h
    return torch.stack(y), torch.stack(saved)


def oracle_rnn(xg, h0, w_hh, lengths, reverse, relu):
    h = h0
    y = [None] * T
    for t in _order(reverse):
        pre = xg[t] + h @ w_hh.t()
        h_new = torch.relu(pre) if relu else torch.tanh(pre)
        v = _valid(lengths, t)
        h = h_new if v is None else torch.where(v, h_new, h)
        y[t] = h
    return torch.stack(y)


# ----------------------------------------------------------------------------- inputs

def _inputs(cell, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)

    gates = {"lstm": 4, "lstm_proj": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}[cell]
    R = P if cell == "lstm_proj" else H
    d = dict(xg=rnd(T, N, gates * H), h0=rnd(N, R, scale=0.5), w_hh=rnd(gates * H, R, scale=0.6),
             dy=rnd(T, N, R))
    if cell.startswith("lstm"):
        d["c0"] = rnd(N, H, scale=0.5)
        d["dcn"] = rnd(N, H)
        d["w_hr"] = rnd(P, H, scale=0.6) if cell == "lstm_proj" else None
    if cell == "gru":
        d["b_hh"] = rnd(3 * H, scale=0.3)
    return d


def _leaf(t):
    return None if t is None else t.detach().double().cpu().requires_grad_()


def _close(actual, expected, dtype, what):
    torch.testing.assert_close(actual.detach().double().cpu(), expected.detach().double().cpu(),
                               **TOL[dtype], msg=lambda m: f"{what}: {m}")


def _valid_mask(lengths):
    """[T, N] bool, True on valid steps."""
    if lengths is None:
        return torch.ones(T, N, dtype=torch.bool)
    return torch.arange(T)[:, None] < lengths.cpu()[None, :]


def _assert_zero_on_invalid(grad, lengths, what):
    invalid = ~_valid_mask(lengths)
    rows = grad.detach().cpu()[invalid]
    assert torch.count_nonzero(rows) == 0, f"{what}: nonzero rows on invalid steps"


# ----------------------------------------------------------------------------- tests

CASES = [(cell, dtype, with_len, reverse)
         for cell in CELLS for dtype in DTYPES for with_len in (False, True)
         for reverse in (False, True)]


def _case_id(c):
    cell, dtype, with_len, reverse = c
    return f"{cell}-{str(dtype).split('.')[-1]}-{'len' if with_len else 'full'}-" \
           f"{'rev' if reverse else 'fwd'}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_contract_matches_autograd_oracle(backend, case):
    cell, dtype, with_len, reverse = case
    device = _device(backend)
    mod = backends.get(backend)
    seed = CASES.index(case)
    d = _inputs(cell, dtype, device, seed)
    lengths = torch.tensor(LENGTHS, dtype=torch.int64, device=device) if with_len else None
    lengths_cpu = None if lengths is None else lengths.cpu()

    if cell.startswith("lstm"):
        y, cn, gates, cs = mod.lstm_forward(d["xg"], d["h0"], d["c0"], d["w_hh"], d["w_hr"],
                                            lengths, reverse, True)
        xg, h0, c0, w_hh, w_hr = map(_leaf, (d["xg"], d["h0"], d["c0"], d["w_hh"], d["w_hr"]))
        ry, rcn, rgates, rcs, hnew = oracle_lstm(xg, h0, c0, w_hh, w_hr, lengths_cpu, reverse)
        _close(y, ry, dtype, "y")
        _close(cn, rcn, dtype, "cn")
        _close(cs, rcs, dtype, "cs")  # frozen on invalid steps too
        valid = _valid_mask(lengths)
        _close(gates.cpu()[valid], rgates[valid], dtype, "gates (valid steps)")

        loss = (ry * d["dy"].double().cpu()).sum() + (rcn * d["dcn"].double().cpu()).sum()
        loss.backward()
        dgates, dh0, dc0, dr = mod.lstm_backward(d["dy"], d["dcn"], d["h0"], d["c0"], d["w_hh"],
                                                 d["w_hr"], lengths, reverse, y, gates, cs)
        _close(dgates, xg.grad, dtype, "dgates")
        _close(dh0, h0.grad, dtype, "dh0")
        _close(dc0, c0.grad, dtype, "dc0")
        _assert_zero_on_invalid(dgates, lengths, "dgates")
        if w_hr is not None:
            rdr = torch.stack([hn.grad if hn.grad is not None else torch.zeros_like(hn)
                               for hn in hnew])
            _close(dr, rdr, dtype, "dr")
            _assert_zero_on_invalid(dr, lengths, "dr")
        else:
            assert dr.numel() == 0

        # inference: same outputs, saved tensors may be empty
        y2, cn2, _, _ = mod.lstm_forward(d["xg"], d["h0"], d["c0"], d["w_hh"], d["w_hr"],
                                         lengths, reverse, False)
        _close(y2, ry, dtype, "y (training=False)")
        _close(cn2, rcn, dtype, "cn (training=False)")

    elif cell == "gru":
        y, saved = mod.gru_forward(d["xg"], d["h0"], d["w_hh"], d["b_hh"], lengths, reverse, True)
        xg, h0, w_hh, b_hh = map(_leaf, (d["xg"], d["h0"], d["w_hh"], d["b_hh"]))
        ry, rsaved = oracle_gru(xg, h0, w_hh, b_hh, lengths_cpu, reverse)
        _close(y, ry, dtype, "y")
        valid = _valid_mask(lengths)
        _close(saved.cpu()[valid], rsaved[valid], dtype, "saved (valid steps)")
        _assert_zero_on_invalid(saved, lengths, "saved")
        (ry * d["dy"].double().cpu()).sum().backward()
        dxg, dh0 = mod.gru_backward(d["dy"], d["h0"], d["w_hh"], lengths, reverse, y, saved)
        _close(dxg, xg.grad, dtype, "dxg")
        _close(dh0, h0.grad, dtype, "dh0")
        _assert_zero_on_invalid(dxg, lengths, "dxg")
        # the contract: dL/dhg is dxg with its n block times r; check it against autograd
        # through db_hh (= sum over steps and batch of dL/dhg)
        r = saved[..., :H]
        dhg = torch.cat([dxg[..., :2 * H], dxg[..., 2 * H:] * r], dim=-1)
        _close(dhg.sum((0, 1)), b_hh.grad, dtype, "db_hh from dxg")
        y2, _ = mod.gru_forward(d["xg"], d["h0"], d["w_hh"], d["b_hh"], lengths, reverse, False)
        _close(y2, ry, dtype, "y (training=False)")

    else:
        relu = cell == "rnn_relu"
        y = mod.rnn_forward(d["xg"], d["h0"], d["w_hh"], lengths, reverse, relu)
        xg, h0, w_hh = map(_leaf, (d["xg"], d["h0"], d["w_hh"]))
        ry = oracle_rnn(xg, h0, w_hh, lengths_cpu, reverse, relu)
        _close(y, ry, dtype, "y")
        (ry * d["dy"].double().cpu()).sum().backward()
        dxg, dh0 = mod.rnn_backward(d["dy"], d["h0"], d["w_hh"], lengths, reverse, relu, y)
        _close(dxg, xg.grad, dtype, "dxg")
        _close(dh0, h0.grad, dtype, "dh0")
        _assert_zero_on_invalid(dxg, lengths, "dxg")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_frozen_state_and_final_state(backend, dtype):
    """y repeats the carried state on invalid steps; the final state sits in y[T-1]
    (forward) / y[0] (reverse) and equals the state after step lengths-1."""
    device = _device(backend)
    mod = backends.get(backend)
    d = _inputs("lstm", dtype, device, 1234)
    lengths = torch.tensor(LENGTHS, dtype=torch.int64, device=device)
    for reverse in (False, True):
        y, cn, _, cs = mod.lstm_forward(d["xg"], d["h0"], d["c0"], d["w_hh"], None,
                                        lengths, reverse, True)
        for n, L in enumerate(LENGTHS):
            if reverse:
                # reverse: invalid steps t >= L come first, carrying h0
                for t in range(L, T):
                    assert torch.equal(y[t, n], d["h0"][n])
                final = y[0, n]
            else:
                for t in range(L, T):
                    assert torch.equal(y[t, n], y[L - 1, n])
                    assert torch.equal(cs[t, n], cs[L - 1, n])
                final = y[T - 1, n]
                assert torch.equal(cn[n], cs[L - 1, n])
            assert torch.isfinite(final).all()


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba unavailable")
@pytest.mark.parametrize("which,ref", [(0, torch.sigmoid), (1, torch.tanh)],
                         ids=["sigmoid", "tanh"])
def test_numba_float32_activations_accurate(which, ref):
    """The vectorisable float32 sigmoid/tanh of the numba kernels are within 1 ulp of
    the correctly rounded result (computed in float64) across the float32 range."""
    from fastrnn.backends import _numba_kernels as k
    x = torch.cat([torch.linspace(-100, 100, 200001, dtype=torch.float64),
                   torch.logspace(-30, 2, 20001, dtype=torch.float64),
                   -torch.logspace(-30, 2, 20001, dtype=torch.float64),
                   torch.tensor([0.0, -0.0, float("inf"), float("-inf")], dtype=torch.float64)])
    x = x.float()
    got = torch.from_numpy(k.activations_for_test(x.numpy(), which)).double()
    exact = ref(x.double())
    rounded = exact.float().double()
    normal = rounded.abs() >= torch.finfo(torch.float32).tiny
    ulp = torch.from_numpy(np.spacing(rounded.abs().float().numpy())).double()
    err = ((got - rounded).abs() / ulp)[normal]
    assert err.max().item() <= 1.0
    # outside the normal range (sigmoid of very negative x): absolute error below tiny
    assert ((got - exact).abs()[~normal] <= torch.finfo(torch.float32).tiny).all()
    nan = torch.tensor([float("nan")], dtype=torch.float32)
    assert torch.isnan(torch.from_numpy(k.activations_for_test(nan.numpy(), which))).all()
