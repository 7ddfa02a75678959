"""Layer-normalised layers (fastrnn.LayerNormLSTM/GRU and their cells) and the options
zoneout, recurrent_dropout and weight_drop (fastrnn.LSTM/GRU/RNN and the LayerNorm layers):
against step loops written here from the equations, with the random masks drawn here in the
documented order (outputs, final states, every gradient), uni- and bidirectional, one and
two layers, batch first, packed; eval mode; options at 0 against torch.nn; seeded
reproducibility; gradcheck and gradgradcheck; torch.compile; bad option values."""
import copy
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from rnn_cases import CPU_BACKENDS, HAS_CUDA, TOL

F64 = torch.float64
KINDS = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU", "LN_LSTM", "LN_GRU")
TWO = ("LSTM", "LN_LSTM")
GATES = {"LSTM": 4, "LN_LSTM": 4, "GRU": 3, "LN_GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
I, H = 4, 5


@pytest.fixture(autouse=True)
def _one_thread():
    """Small shapes run on one thread: with the cores shared, a 2-thread GEMM of a few
    elements can wait a scheduler slice (~10 ms) at its barrier."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _make(kind, dtype=F64, seed=0, **kw):
    """A module of ``kind`` with random LayerNorm gains and shifts (not 1 and 0)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (dropout with one layer)
        if kind == "LN_LSTM":
            m = fastrnn.LayerNormLSTM(I, H, dtype=dtype, **kw)
        elif kind == "LN_GRU":
            m = fastrnn.LayerNormGRU(I, H, dtype=dtype, **kw)
        elif kind == "LSTM":
            m = fastrnn.LSTM(I, H, dtype=dtype, **kw)
        elif kind == "GRU":
            m = fastrnn.GRU(I, H, dtype=dtype, **kw)
        else:
            m = fastrnn.RNN(I, H, dtype=dtype, nonlinearity=kind[4:].lower(), **kw)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.startswith("ln_"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "_weight" in n else 0.0))
    return m


# ----------------------------------------------------------------------------- the oracle

def _ln(v, gain, shift):
    """LayerNorm over the whole vector, written out (eps 1e-5, biased variance)."""
    mu = v.mean(-1, keepdim=True)
    var = ((v - mu) ** 2).mean(-1, keepdim=True)
    return (v - mu) / torch.sqrt(var + 1e-5) * gain + shift


def _params(module, layer, d):
    sfx = f"_l{layer}{'_reverse' if d else ''}"
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "ln_ih_weight",
             "ln_ih_bias", "ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias")
    return {n: getattr(module, n + sfx, None) for n in names}


def _candidate(kind, p, w_hh, x_t, h_in, h, c):
    """One step from the equations -> (h~, c~): h_in enters the recurrent product, h the
    GRU's update."""
    if kind in ("LSTM", "LN_LSTM"):
        if kind == "LSTM":
            a = x_t @ p["weight_ih"].t() + h_in @ w_hh.t()
            if p["bias_ih"] is not None:
                a = a + p["bias_ih"] + p["bias_hh"]
        else:
            a = (_ln(x_t @ p["weight_ih"].t(), p["ln_ih_weight"], p["ln_ih_bias"])
                 + _ln(h_in @ w_hh.t(), p["ln_hh_weight"], p["ln_hh_bias"]))
        i, f, g, o = a.chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        cc = c_new if kind == "LSTM" else _ln(c_new, p["ln_c_weight"], p["ln_c_bias"])
        h_new = torch.sigmoid(o) * torch.tanh(cc)
        if p["weight_hr"] is not None:
            h_new = h_new @ p["weight_hr"].t()
        return h_new, c_new
    if kind in ("GRU", "LN_GRU"):
        if kind == "GRU":
            ax, ah = x_t @ p["weight_ih"].t(), h_in @ w_hh.t()
            if p["bias_ih"] is not None:
                ax, ah = ax + p["bias_ih"], ah + p["bias_hh"]
        else:
            ax = _ln(x_t @ p["weight_ih"].t(), p["ln_ih_weight"], p["ln_ih_bias"])
            ah = _ln(h_in @ w_hh.t(), p["ln_hh_weight"], p["ln_hh_bias"])
        xr, xz, xn = ax.chunk(3, 1)
        hr, hz, hn = ah.chunk(3, 1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, None
    pre = x_t @ p["weight_ih"].t() + h_in @ w_hh.t()
    if p["bias_ih"] is not None:
        pre = pre + p["bias_ih"] + p["bias_hh"]
    return (torch.relu(pre) if kind == "RNN_RELU" else torch.tanh(pre)), None


def _zone(p, mask, prev, new, train):
    if not p:
        return new
    if train:
        return torch.where(mask, prev, new)
    return p * prev + (1 - p) * new


def _ps(module):
    z = module.zoneout
    ph, pc = (z if isinstance(z, tuple) else (z, z))
    return ph, pc, module.recurrent_dropout, module.weight_drop


def _oracle(kind, module, x, hx, masks, train, lengths=None):
    """x [T, N, I] time-major; masks from ``_draw`` (in the batch's order). Returns
    (y [T, N, D*R] with zeros past each length, h_n, c_n or None)."""
    L, D = module.num_layers, 2 if module.bidirectional else 1
    R = getattr(module, "proj_size", 0) or H
    two = kind in TWO
    ph, pc, prd, pwd = _ps(module)
    T, N = x.shape[:2]
    if hx is None:
        hx = (x.new_zeros(L * D, N, R), x.new_zeros(L * D, N, H)) if two \
            else x.new_zeros(L * D, N, R)
    h0s, c0s = hx if two else (hx, None)
    hns, cns = [], []
    for layer in range(L):
        outs = []
        for d in range(D):
            k = layer * D + d
            p = _params(module, layer, d)
            w_hh = p["weight_hh"] * masks["wd"][k] if train and pwd else p["weight_hh"]
            h, c = h0s[k], (c0s[k] if two else None)
            ys = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                h_in = h * masks["rd"][k] if train and prd else h
                h_new, c_new = _candidate(kind, p, w_hh, x[t], h_in, h, c)
                h_new = _zone(ph, masks.get("zh", {}).get(k, [None] * T)[t], h, h_new, train)
                if two:
                    c_new = _zone(pc, masks.get("zc", {}).get(k, [None] * T)[t], c, c_new,
                                  train)
                if lengths is not None:
                    valid = (t < lengths).unsqueeze(1)
                    h_new = torch.where(valid, h_new, h)
                    c_new = torch.where(valid, c_new, c) if two else None
                    ys[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
                else:
                    ys[t] = h_new
                h, c = h_new, c_new
            outs.append(torch.stack(ys))
            hns.append(h)
            cns.append(c)
        x = torch.cat(outs, -1)
        if train and layer < L - 1 and module.dropout:
            x = x * masks["drop"][layer]
    return x, torch.stack(hns), (torch.stack(cns) if two else None)


def _draw(kind, module, T, N, train, seed, dtype=F64, device="cpu"):
    """The module's masks for a forward call after ``torch.manual_seed(seed)``, drawn in the
    documented order (weight drop per layer and direction; per layer and direction recurrent
    dropout [N, R], zoneout of h [T, N, R], of c [T, N, H]; inter-layer dropout)."""
    torch.manual_seed(seed)
    masks = {"wd": {}, "rd": {}, "zh": {}, "zc": {}, "drop": {}}
    if not train:
        return masks
    L, D = module.num_layers, 2 if module.bidirectional else 1
    R = getattr(module, "proj_size", 0) or H
    ph, pc, prd, pwd = _ps(module)
    e = lambda *s: torch.empty(s, dtype=dtype, device=device)  # noqa: E731 (F.dropout's)
    mask = lambda q, *s: fastrnn.regularized.bernoulli_mask(s, q, dtype, device)  # noqa: E731
    if pwd:
        for k in range(L * D):
            shape = _params(module, k // D, k % D)["weight_hh"].shape
            masks["wd"][k] = mask(1 - pwd, *shape) / (1 - pwd)
    for layer in range(L):
        for d in range(D):
            k = layer * D + d
            if prd:
                masks["rd"][k] = mask(1 - prd, N, R) / (1 - prd)
            if ph:
                masks["zh"][k] = mask(ph, T, N, R).bool()
            if kind in TWO and pc:
                masks["zc"][k] = mask(pc, T, N, H).bool()
        if module.dropout and layer < L - 1:
            q = module.dropout
            masks["drop"][layer] = e(T, N, D * R).bernoulli_(1 - q) / (1 - q)
    return masks


def _to_batch_order(masks, unsorted):
    """Masks drawn for a PackedSequence's sorted batch -> the batch's own order."""
    out = dict(masks)
    out["rd"] = {k: m[unsorted] for k, m in masks["rd"].items()}
    for key in ("zh", "zc", "drop"):
        out[key] = {k: m[:, unsorted] for k, m in masks[key].items()}
    return out


def _grads(params, x, outs, extra=()):
    outs = [o for o in outs if o is not None]
    weight = lambda o: torch.linspace(-1, 2, o.numel(), dtype=o.dtype,  # noqa: E731
                                      device=o.device).view_as(o)
    loss = sum((o * weight(o)).sum() for o in outs)
    return torch.autograd.grad(loss, [x, *extra] + list(params), allow_unused=True)


def _states(kind, module, N, dtype=F64):
    L = module.num_layers * (2 if module.bidirectional else 1)
    R = getattr(module, "proj_size", 0) or H
    h = torch.randn(L, N, R, dtype=dtype, requires_grad=True)
    if kind in TWO:
        return (h, torch.randn(L, N, H, dtype=dtype, requires_grad=True))
    return h


def _options(kind, which):
    zo = (0.3, 0.2) if kind in TWO else 0.3
    return {"none": {}, "zoneout": dict(zoneout=zo), "recurrent_dropout":
            dict(recurrent_dropout=0.4), "weight_drop": dict(weight_drop=0.5),
            "all": dict(zoneout=zo, recurrent_dropout=0.4, weight_drop=0.5)}[which]


def _check(got, want, names):
    for name, a, b in zip(names, got, want):
        if b is None:
            assert a is None or not a.any(), name
            continue
        torch.testing.assert_close(a, b, **TOL[F64], msg=lambda m: f"{name}: {m}")


CONFIGS = [dict(), dict(num_layers=2, bidirectional=True, dropout=0.3),
           dict(num_layers=2, batch_first=True), dict(num_layers=2, proj_size=3)]


def _cases():
    for kind in KINDS:
        for which in ("none", "zoneout", "recurrent_dropout", "weight_drop", "all"):
            if which == "none" and not kind.startswith("LN_"):
                continue  # (options off: torch.nn's numbers, test_options_off_is_torch_nn)
            for ci, cfg in enumerate(CONFIGS):
                if "proj_size" in cfg and kind != "LSTM":
                    continue
                yield kind, which, ci


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind,which,ci", list(_cases()))
def test_matches_equations(kind, which, ci, train):
    cfg = CONFIGS[ci]
    module = _make(kind, **cfg, **_options(kind, which)).train(train)
    T, N = 5, 3
    x = torch.randn(T, N, I, dtype=F64, requires_grad=True)
    hx = _states(kind, module, N)
    hxs = hx if kind in TWO else (hx,)
    bf = module.batch_first
    torch.manual_seed(11)
    y, hn = module(x.transpose(0, 1) if bf else x, hx)
    y = y.transpose(0, 1) if bf else y
    hn, cn = hn if kind in TWO else (hn, None)
    masks = _draw(kind, module, T, N, train, 11)
    want = _oracle(kind, module, x, hx, masks, train)
    _check((y, hn, cn), want, ("output", "h_n", "c_n"))
    names = ["input"] + [f"hx[{i}]" for i in range(len(hxs))] + \
        [n for n, _ in module.named_parameters()]
    got_g = _grads(module.parameters(), x, (y, hn, cn), hxs)
    want_g = _grads(module.parameters(), x, want, hxs)
    _check(got_g, want_g, names)
    regularised = train and which != "none" and which != "weight_drop" or (
        which in ("zoneout", "all")) or kind.startswith("LN_")
    if kind.startswith("LN_"):  # fused wherever the compiled kernels are built
        fused = "cpu" in CPU_BACKENDS
        assert module.last_backend == ("cpu" if fused else "torch-ops"), module.last_backend
    elif regularised:  # zoneout / recurrent dropout: fused where the compiled kernels run
        assert module.last_backend == _reg_path(kind, cfg), module.last_backend
    else:
        assert module.last_backend != "torch-ops", module.last_backend


def _reg_path(kind, cfg, backend=None):
    """Where a layer with zoneout or recurrent dropout runs: the fused CPU kernels for LSTM
    (no projection), GRU and RNN where the compiled kernels are chosen, else the step loop."""
    fused = ("cpu" in CPU_BACKENDS and backend in (None, "auto", "cpu")
             and not kind.startswith("LN_") and "proj_size" not in cfg)
    return "cpu" if fused else "torch-ops"


@pytest.mark.parametrize("N", [3, 8, 40])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_zoneout_inference_matches_equations(kind, N):
    """Zoneout's eval expectation with no gradient asked for (the fused steps at N = 3 and
    40, the regularised kernel at N = 8): the equations' outputs and final states, packed
    sequences of different lengths, two layers, both directions, float64."""
    zo = (0.3, 0.2) if kind in TWO else 0.3
    module = _make(kind, num_layers=2, bidirectional=True, zoneout=zo).eval()
    T = 7
    torch.manual_seed(N)
    lengths = sorted(torch.randint(1, T + 1, (N,)).tolist(), reverse=True)
    lengths[0] = T
    x = torch.randn(T, N, I, dtype=F64)
    hx = _states(kind, module, N)
    with torch.no_grad():
        out, hn = module(pack_padded_sequence(x, lengths), hx)
        y, _ = pad_packed_sequence(out)
        assert module.last_backend == _reg_path(kind, {})
        want = _oracle(kind, module, x, hx, _draw(kind, module, T, N, False, 0), False,
                       torch.tensor(lengths))
    hn, cn = hn if kind in TWO else (hn, None)
    _check((y, hn, cn), want, ("output", "h_n", "c_n"))


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="the compiled CPU kernels are not built")
@pytest.mark.parametrize("N", [8, 40])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_fused_inference_writes_no_records(kind, N, monkeypatch):
    """Zoneout's eval expectation on the fused kernels: where no gradient can be asked for
    (no_grad, inference_mode; the parameters still require grad) no backward records are
    written: the regularised kernel is told so (N = 8), or the fused steps run, the
    expectation in their epilogue (N = 40, where the plain layers' inference runs them:
    ``fastpath.steps_pay``); where a gradient can be asked for, the records are written.
    The outputs agree."""
    from fastrnn.backends import cpu
    calls = []
    real = cpu.reg_forward

    def spy(*args):
        calls.append(args[-1])  # ``training``: whether the records are written
        return real(*args)

    monkeypatch.setattr(cpu, "reg_forward", spy)
    module = _make(kind, dtype=torch.float32, bidirectional=True, zoneout=0.3).eval()
    x = torch.randn(6, N, I)
    want = module(x)[0]
    assert module.last_backend == "cpu" and calls == [True, True]
    steps = fastrnn.fastpath.steps_pay(6, N)
    assert steps == (N == 40)
    for mode in (torch.no_grad, torch.inference_mode):
        calls.clear()
        with mode():
            got = module(x)[0]
        assert calls == ([] if steps else [False, False]), mode.__name__
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_every_backend_matches_equations(kind, train, cpu_backend):
    """Each CPU backend the module can name: zoneout and recurrent dropout on the fused
    kernels ('cpu') or on the step loop in torch ops (the others); packed sequences of
    different lengths, two layers, both directions: outputs, final states, every gradient."""
    module = _make(kind, num_layers=2, bidirectional=True, dropout=0.3,
                   **_options(kind, "all")).train(train)
    module.backend = cpu_backend
    T, N = 6, 4
    lengths = [6, 5, 3, 1]
    x = torch.randn(T, N, I, dtype=F64, requires_grad=True)
    hx = _states(kind, module, N)
    hxs = hx if kind in TWO else (hx,)
    torch.manual_seed(13)
    out, hn = module(pack_padded_sequence(x, lengths), hx)
    y, _ = pad_packed_sequence(out)
    hn, cn = hn if kind in TWO else (hn, None)
    assert module.last_backend == _reg_path(kind, {}, cpu_backend)
    masks = _draw(kind, module, T, N, train, 13)
    want = _oracle(kind, module, x, hx, masks, train, torch.tensor(lengths))
    _check((y, hn, cn), want, ("output", "h_n", "c_n"))
    names = ["input"] + [f"hx[{i}]" for i in range(len(hxs))] + \
        [n for n, _ in module.named_parameters()]
    _check(_grads(module.parameters(), x, (y, hn, cn), hxs),
           _grads(module.parameters(), x, want, hxs), names)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_packed(kind, batch_first):
    """Unsorted lengths, 2 layers, bidirectional, given states: the masks are drawn for the
    packed (sorted) batch; outputs and final states at each sequence's last valid step."""
    module = _make(kind, num_layers=2, bidirectional=True, dropout=0.3, batch_first=batch_first,
                   **_options(kind, "all"))
    T, N = 6, 3
    lengths = torch.tensor([4, 6, 2])
    x = torch.randn(T, N, I, dtype=F64, requires_grad=True)
    hx = _states(kind, module, N)
    hxs = hx if kind in TWO else (hx,)
    packed = pack_padded_sequence(x.transpose(0, 1) if batch_first else x, lengths,
                                  batch_first=batch_first, enforce_sorted=False)
    torch.manual_seed(5)
    out, hn = module(packed, hx)
    assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
    y, _ = pad_packed_sequence(out, batch_first=batch_first)
    y = y.transpose(0, 1) if batch_first else y
    hn, cn = hn if kind in TWO else (hn, None)
    masks = _to_batch_order(_draw(kind, module, T, N, True, 5), packed.unsorted_indices)
    want = _oracle(kind, module, x, hx, masks, True, lengths)
    _check((y, hn, cn), want, ("output", "h_n", "c_n"))
    _check(_grads(module.parameters(), x, (y, hn, cn), hxs),
           _grads(module.parameters(), x, want, hxs),
           ["input"] + ["hx"] * len(hxs) + [n for n, _ in module.named_parameters()])
    module.eval()  # the zoneout expectation, packed
    y, hn = module(packed, hx)
    y, _ = pad_packed_sequence(y, batch_first=batch_first)
    y = y.transpose(0, 1) if batch_first else y
    want = _oracle(kind, module, x, hx, {}, False, lengths)
    _check((y, hn if kind not in TWO else hn[0]), want[:2], ("output", "h_n"))


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_and_no_state(kind):
    module = _make(kind, bidirectional=True, **_options(kind, "all"))
    x = torch.randn(5, I, dtype=F64)
    torch.manual_seed(3)
    y, hn = module(x)
    want = _oracle(kind, module, x.unsqueeze(1), None, _draw(kind, module, 5, 1, True, 3), True)
    torch.testing.assert_close(y, want[0].squeeze(1), **TOL[F64])
    torch.testing.assert_close(hn[0] if kind in TWO else hn, want[1].squeeze(1), **TOL[F64])


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_equations(kind):
    """On a GPU the masks come from the CUDA generator, in the same order. (No inter-layer
    dropout here: torch's CUDA dropout draws its mask in a fused kernel of its own.)"""
    module = _make(kind, num_layers=2, bidirectional=True, **_options(kind, "all")).cuda()
    T, N = 5, 3
    x = torch.randn(T, N, I, dtype=F64, device="cuda", requires_grad=True)
    torch.manual_seed(11)
    y, hn = module(x)
    hn, cn = hn if kind in TWO else (hn, None)
    masks = _draw(kind, module, T, N, True, 11, device="cuda")
    want = _oracle(kind, module, x, None, masks, True)
    _check((y, hn, cn), want, ("output", "h_n", "c_n"))
    _check(_grads(module.parameters(), x, (y, hn, cn)), _grads(module.parameters(), x, want),
           ["input"] + [n for n, _ in module.named_parameters()])


# ----------------------------------------------------------------------------- torch.nn

@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_options_off_is_torch_nn(kind):
    """Options at 0 (and recurrent dropout / weight drop in eval): torch.nn's numbers, on
    the same path and with the same bits as a module built without the options."""
    cls = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}.get(kind, torch.nn.RNN)
    extra = {} if kind in ("LSTM", "GRU") else {"nonlinearity": kind[4:].lower()}
    torch.manual_seed(0)
    ref = cls(I, H, num_layers=2, bidirectional=True, dtype=F64, **extra)
    x = torch.randn(5, 3, I, dtype=F64, requires_grad=True)
    plain = _make(kind, num_layers=2, bidirectional=True)
    plain.load_state_dict(ref.state_dict())
    for opts, mode in ((dict(zoneout=0.0, recurrent_dropout=0.0, weight_drop=0.0), True),
                       (dict(recurrent_dropout=0.3, weight_drop=0.4), False)):
        module = _make(kind, num_layers=2, bidirectional=True, **opts).train(mode)
        module.load_state_dict(ref.state_dict())
        ref.train(mode)
        plain.train(mode)
        got, want, same = module(x), ref(x), plain(x)
        assert module.last_backend != "torch-ops"
        flat = lambda o: [o[0], *(o[1] if kind == "LSTM" else (o[1],))]  # noqa: E731
        for a, b, c in zip(flat(got), flat(want), flat(same)):
            torch.testing.assert_close(a, b, **TOL[F64])
            assert torch.equal(a, c)
        for a, b in zip(_grads(module.parameters(), x, flat(got)),
                        _grads(ref.parameters(), x, flat(want))):
            torch.testing.assert_close(a, b, **TOL[F64])
    assert repr(_make(kind, zoneout=0.0)) == repr(_make(kind))


def test_weight_drop_on_the_fused_kernels(cpu_backend):
    """weight_drop alone runs the backend's kernels on the masked W_hh; every backend draws
    the same masks for one seed and gives the equations' numbers."""
    module = _make("LSTM", num_layers=2, bidirectional=True, weight_drop=0.5)
    module.backend = cpu_backend
    x = torch.randn(6, 3, I, dtype=F64, requires_grad=True)
    torch.manual_seed(7)
    y, (hn, cn) = module(x)
    assert module.last_backend == cpu_backend
    want = _oracle("LSTM", module, x, None, _draw("LSTM", module, 6, 3, True, 7), True)
    _check((y, hn, cn), want, ("output", "h_n", "c_n"))
    _check(_grads(module.parameters(), x, (y, hn, cn)), _grads(module.parameters(), x, want),
           ["input"] + [n for n, _ in module.named_parameters()])


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_runs_reproduce(kind):
    module = _make(kind, num_layers=2, dropout=0.2, **_options(kind, "all"))
    x = torch.randn(5, 3, I, dtype=F64)
    torch.manual_seed(1)
    a = module(x)[0]
    torch.manual_seed(1)
    b = module(x)[0]
    c = module(x)[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _documented_bits(seed, i):
    """docs/regularized.md's mask bits of element i, in Python integers."""
    def mix(v):
        v ^= v >> 16
        v = (v * 0x7FEB352D) & 0xFFFFFFFF
        v ^= v >> 15
        v = (v * 0x846CA68B) & 0xFFFFFFFF
        return v ^ (v >> 16)
    return mix(mix(mix((i & 0xFFFFFFFF) ^ (seed & 0xFFFFFFFF)) ^ (seed >> 32)) ^ (i >> 32))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_masks_are_the_documented_hash(dtype):
    """A mask: one seed torch.randint(0, 2**62, ()) from the generator, element i is 1 where
    bits(seed, i) < round(q 2^32); the compiled kernels (on the CPU) and torch ops (under
    torch.compile, on CUDA, without the extension) compute the same bits."""
    from fastrnn import regularized as R
    for q, shape in ((0.3, (3, 5, 7)), (0.5, (64, 9)), (0.0, (10,)), (0.999, (4, 4))):
        torch.manual_seed(7)
        got = R.bernoulli_mask(shape, q, dtype)
        after = torch.randint(0, 2 ** 62, ())  # the generator moved by exactly one draw
        torch.manual_seed(7)
        seed = int(torch.randint(0, 2 ** 62, ()))
        assert int(torch.randint(0, 2 ** 62, ())) == int(after)
        thr = round(q * 2 ** 32)
        want = torch.tensor([float(_documented_bits(seed, i) < thr)
                             for i in range(got.numel())], dtype=dtype).view(shape)
        assert got.dtype == dtype and torch.equal(got, want), q
        torch_ops = (R._mask_bits(seed, got.numel(), "cpu") < thr).to(dtype).view(shape)
        assert torch.equal(torch_ops, want)
    for offset in (2 ** 32 - 3, 2 ** 40 + 11):  # index words above 32 bits
        seed = 2 ** 61 + 12345
        assert R._mask_bits(seed, 6, "cpu", offset).tolist() == \
            [_documented_bits(seed, i) for i in range(offset, offset + 6)]
        if "cpu" in CPU_BACKENDS:
            from fastrnn.backends import cpu
            out = torch.empty(6, dtype=dtype)
            cpu._C.bernoulli_mask(out.element_size(), seed, offset, 6, 2 ** 31, 1.0,
                                  out.data_ptr(), 2)
            assert out.tolist() == [float(_documented_bits(seed, i) < 2 ** 31)
                                    for i in range(offset, offset + 6)]


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="the compiled CPU kernels are not built")
def test_weight_drop_masks_on_parameters_are_filled_by_the_kernel(monkeypatch):
    """Weight drop draws its mask like a parameter (W_hh): the compiled kernel fills it (the
    torch-ops hash costs ~1 ms per [512, 128] mask), with the same bits as torch ops."""
    from fastrnn import regularized as R
    from fastrnn.backends import cpu
    calls = []
    real = cpu._C.bernoulli_mask
    monkeypatch.setattr(cpu._C, "bernoulli_mask", lambda *a: calls.append(a[3]) or real(*a), raising=False)
    w = torch.nn.Parameter(torch.randn(512, 128))
    weights = [torch.randn(512, 100), w]
    torch.manual_seed(3)
    got = R.drop_weights(weights, 2, 0.3)[1]
    assert calls == [512 * 128]
    torch.manual_seed(3)
    seed = int(torch.randint(0, 2 ** 62, ()))
    scale = (R._mask_bits(seed, w.numel(), "cpu") < R._threshold(1 - 0.3)).view(512, 128).float()
    scale = scale / (1 - 0.3)
    assert torch.equal(got, w * scale)
    got.sum().backward()  # the gradient reaches W_hh through the mask
    assert torch.equal(w.grad, scale)


def test_masks_rate_and_independence():
    """Over a million elements: the rate within 5 standard deviations of q, no correlation
    between neighbours or between two masks drawn one after the other beyond 5 / sqrt(n)."""
    from fastrnn import regularized as R
    n = 1 << 20
    torch.manual_seed(0)
    for q in (0.05, 0.5, 0.9):
        a = R.bernoulli_mask((n,), q, F64)
        b = R.bernoulli_mask((n,), q, F64)
        sd = (q * (1 - q) / n) ** 0.5
        assert abs(float(a.mean()) - q) < 5 * sd, q
        for u, v in ((a[1:], a[:-1]), (a, b), (a[64:], a[:-64])):
            corr = float(torch.corrcoef(torch.stack([u, v]))[0, 1])
            assert abs(corr) < 5 / n ** 0.5, (q, corr)


def test_zoneout_masks_rate_and_eval_expectation():
    """Training: a unit keeps its previous value with probability p (h and c apart);
    eval: one step is p h_0 + (1 - p) h~ with h~ torch.nn's step."""
    torch.manual_seed(0)
    module = fastrnn.LSTM(8, 64, zoneout=(0.3, 0.6))
    x, T, N = torch.randn(40, 50, 8), 40, 50
    y, _ = module(x)
    kept = (y[1:] == y[:-1]).double().mean().item()
    assert abs(kept - 0.3) < 0.02, kept
    cell = fastrnn.LSTMCell(8, 64, zoneout=(0.3, 0.6))
    h, c = torch.randn(N, 64), torch.randn(N, 64)
    h1, c1 = cell(x[0], (h, c))
    assert abs((h1 == h).double().mean().item() - 0.3) < 0.03
    assert abs((c1 == c).double().mean().item() - 0.6) < 0.03
    # eval: the expectation
    ref = torch.nn.LSTM(8, 64)
    ref.load_state_dict(module.state_dict())
    module.eval()
    h0, c0 = torch.randn(1, N, 64), torch.randn(1, N, 64)
    y, (hn, cn) = module(x[:1], (h0, c0))
    _, (ht, ct) = ref(x[:1], (h0, c0))
    torch.testing.assert_close(hn, 0.3 * h0 + 0.7 * ht)
    torch.testing.assert_close(cn, 0.6 * c0 + 0.4 * ct)
    torch.testing.assert_close(y[0], hn[0])


# ----------------------------------------------------------------------------- cells

@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
def test_cells(kind, train):
    two = kind in TWO
    zo = (0.3, 0.5) if two else 0.4
    torch.manual_seed(0)
    cls = {"LSTM": fastrnn.LSTMCell, "GRU": fastrnn.GRUCell, "LN_LSTM": fastrnn.LayerNormLSTMCell,
           "LN_GRU": fastrnn.LayerNormGRUCell}.get(kind, fastrnn.RNNCell)
    extra = {"nonlinearity": kind[4:].lower()} if kind.startswith("RNN") else {}
    cell = cls(I, H, dtype=F64, zoneout=zo, **extra).train(train)
    with torch.no_grad():
        for n, p in cell.named_parameters():
            if n.startswith("ln_"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "_weight" in n else 0.0))
    N = 3
    x = torch.randn(N, I, dtype=F64, requires_grad=True)
    h = torch.randn(N, H, dtype=F64, requires_grad=True)
    c = torch.randn(N, H, dtype=F64, requires_grad=True)
    hx = (h, c) if two else h
    torch.manual_seed(9)
    out = cell(x, hx)
    torch.manual_seed(9)
    ph, pc = zo if two else (zo, 0)
    mh = fastrnn.regularized.bernoulli_mask((N, H), ph, F64).bool()
    mc = fastrnn.regularized.bernoulli_mask((N, H), pc, F64).bool() if two else None
    p = {n: getattr(cell, n, None) for n in (
        "weight_ih", "bias_ih", "bias_hh", "ln_ih_weight", "ln_ih_bias", "ln_hh_weight",
        "ln_hh_bias", "ln_c_weight", "ln_c_bias")}
    p["weight_hr"] = None
    h1, c1 = _candidate(kind, p, cell.weight_hh, x, h, h, c if two else None)
    want = [_zone(ph, mh, h, h1, train)] + ([_zone(pc, mc, c, c1, train)] if two else [])
    got = list(out) if two else [out]
    _check(got, want, ("h", "c"))
    _check(_grads(cell.parameters(), x, got, (h, c) if two else (h,)),
           _grads(cell.parameters(), x, want, (h, c) if two else (h,)),
           ["input", "h", "c"] + [n for n, _ in cell.named_parameters()])
    # unbatched, no state: the mix with zeros
    torch.manual_seed(2)
    out1 = cell(x[0].detach())
    torch.manual_seed(2)
    out2 = cell(x[:1].detach())
    for a, b in zip(out1 if two else [out1], out2 if two else [out2]):
        torch.testing.assert_close(a, b[0], **TOL[F64])
    assert "zoneout" in repr(cell)


# ----------------------------------------------------------------------------- autograd

def _functional(module, seed, with_states):
    names = [n for n, _ in module.named_parameters()]
    two = isinstance(module, (fastrnn.LSTM, fastrnn.LayerNormLSTM))

    def f(x, *rest):
        n = (2 if two else 1) if with_states else 0
        hx = (tuple(rest[:2]) if two else rest[0]) if n else None
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            y, hn = torch.func.functional_call(module, dict(zip(names, rest[n:])), (x, hx))
        return (y, *hn) if two else (y, hn)
    return f


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind):
    module = _make(kind, bidirectional=True, **_options(kind, "all"))
    x = torch.randn(3, 2, I, dtype=F64, requires_grad=True)
    hx = _states(kind, module, 2)
    hxs = hx if kind in TWO else (hx,)
    f = _functional(module, 4, True)
    assert torch.autograd.gradcheck(f, (x, *hxs, *module.parameters()))


@pytest.mark.parametrize("kind", ["LN_LSTM", "LN_GRU", "LSTM"])
def test_gradgradcheck(kind):
    torch.manual_seed(0)
    cls = {"LN_LSTM": fastrnn.LayerNormLSTM, "LN_GRU": fastrnn.LayerNormGRU,
           "LSTM": fastrnn.LSTM}[kind]
    module = cls(2, 3, dtype=F64, zoneout=0.3, recurrent_dropout=0.3, weight_drop=0.3)
    x = torch.randn(2, 2, 2, dtype=F64, requires_grad=True)
    f = _functional(module, 4, False)
    assert torch.autograd.gradgradcheck(f, (x, *module.parameters()))


@pytest.mark.parametrize("kind", ["LN_LSTM", "GRU"])
def test_torch_compile_fullgraph(kind):
    module = _make(kind, dtype=torch.float32, num_layers=2, bidirectional=True,
                   **_options(kind, "all"))
    x = torch.randn(3, 2, I, requires_grad=True)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    for train in (True, False):
        module.train(train)
        torch.manual_seed(3)
        got = compiled(x)[0]
        torch.manual_seed(3)
        want = module(x)[0]
        # (the compiled graph runs the step loop in torch ops, eager the fused kernels:
        # float32 rounding apart, relative to each tensor's largest value)
        close = lambda a, b: torch.testing.assert_close(  # noqa: E731
            a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max().clamp_min(1.0)))
        close(got, want)
        g1 = torch.autograd.grad(got.sum(), [x] + list(module.parameters()))
        g2 = torch.autograd.grad(want.sum(), [x] + list(module.parameters()))
        for a, b in zip(g1, g2):
            close(a, b)


# ----------------------------------------------------------------------------- API

def test_layer_norm_parameters_and_init():
    m = fastrnn.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True)
    names = [n for n, _ in m.named_parameters()]
    per = ["weight_ih", "weight_hh", "ln_ih_weight", "ln_ih_bias", "ln_hh_weight",
           "ln_hh_bias", "ln_c_weight", "ln_c_bias"]
    assert names == [f"{b}_l{k}{s}" for k in range(2) for s in ("", "_reverse") for b in per]
    assert m.weight_ih_l0.shape == (16, 3) and m.weight_ih_l1.shape == (16, 8)
    assert m.ln_ih_weight_l0.shape == (16,) and m.ln_c_bias_l1_reverse.shape == (4,)
    assert bool((m.ln_hh_weight_l0 == 1).all()) and bool((m.ln_c_weight_l0 == 1).all())
    assert not m.ln_hh_bias_l0.any() and not m.ln_c_bias_l0.any()
    want = torch.zeros(16)
    want[4:8] = 1.0  # the forget gate's shift: forget_bias
    assert torch.equal(m.ln_ih_bias_l0, want)
    assert float(m.weight_hh_l0.detach().abs().max()) <= 0.5
    assert not fastrnn.LayerNormLSTM(3, 4, forget_bias=0.0).ln_ih_bias_l0.any()
    g = fastrnn.LayerNormGRU(3, 4, bidirectional=True)
    assert [n for n, _ in g.named_parameters()][:6] == [f"{b}_l0" for b in per[:6]]
    assert g.ln_ih_weight_l0.shape == (12,) and not hasattr(g, "ln_c_weight_l0")
    assert [n for n, _ in fastrnn.LayerNormLSTMCell(3, 4).named_parameters()] == per
    assert [n for n, _ in fastrnn.LayerNormGRUCell(3, 4).named_parameters()] == per[:6]
    # state_dict round trip, repr, no torch.nn counterpart, bias must be True
    m2 = fastrnn.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True)
    m2.load_state_dict(m.state_dict(), strict=True)
    assert repr(m) == "LayerNormLSTM(3, 4, num_layers=2, bidirectional=True)"
    assert repr(fastrnn.LayerNormGRU(3, 4, zoneout=0.1)) == "LayerNormGRU(3, 4, zoneout=0.1)"
    with pytest.raises(TypeError, match="no torch.nn counterpart"):
        m.to_torch()
    with pytest.raises(ValueError, match="bias must be True"):
        fastrnn.LayerNormGRU(3, 4, bias=False)
    with pytest.raises(ValueError, match="bias must be True"):
        fastrnn.LayerNormLSTMCell(3, 4, bias=False)
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        m(torch.randn(5, 2, 4))


@pytest.mark.parametrize("name", ["zoneout", "recurrent_dropout", "weight_drop"])
@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN, fastrnn.LayerNormLSTM,
                                 fastrnn.LayerNormGRU])
def test_bad_options_raise(cls, name):
    for bad in (-0.1, 1.0, 1.5, "0.1", None, True, float("nan")):
        with pytest.raises(ValueError, match=name):
            cls(3, 4, **{name: bad})
    m = cls(3, 4)
    with pytest.raises(ValueError, match=name):
        setattr(m, name, 1.0)
    setattr(m, name, 0.25)
    assert getattr(m, name) == 0.25 and m._reg_on


def test_zoneout_pairs_and_cells():
    with pytest.raises(ValueError, match="zoneout"):
        fastrnn.GRU(3, 4, zoneout=(0.1, 0.2))
    with pytest.raises(ValueError, match="zoneout \\(p_c\\)"):
        fastrnn.LSTM(3, 4, zoneout=(0.1, 1.0))
    with pytest.raises(ValueError, match="zoneout"):
        fastrnn.LSTM(3, 4, zoneout=(0.1, 0.2, 0.3))
    assert fastrnn.LSTM(3, 4, zoneout=[0.1, 0.2]).zoneout == (0.1, 0.2)
    for cls in (fastrnn.LSTMCell, fastrnn.GRUCell, fastrnn.RNNCell, fastrnn.LayerNormLSTMCell,
                fastrnn.LayerNormGRUCell):
        with pytest.raises(ValueError, match="zoneout"):
            cls(3, 4, zoneout=1.0)
        with pytest.raises(TypeError):
            cls(3, 4, recurrent_dropout=0.1)
    with pytest.raises(TypeError, match="zoneout"):
        fastrnn.LSTM(3, 4, zoneout=0.1).to_torch()
    assert isinstance(fastrnn.LSTM(3, 4, weight_drop=0.1).to_torch(), torch.nn.LSTM)
    with pytest.raises(TypeError, match="zoneout"):
        fastrnn.GRUCell(3, 4, zoneout=0.1).to_torch()


def test_pickled_module_without_options_loads():
    """A module saved before the options existed (no option attributes): options off."""
    import pickle
    m = fastrnn.GRU(3, 4)
    state = dict(m.__dict__)
    for k in list(state):
        if k.startswith(("_zoneout", "_recurrent", "_weight_drop", "_reg_on")):
            del state[k]
    m2 = fastrnn.GRU.__new__(fastrnn.GRU)
    m2.__setstate__(state)
    assert not m2._reg_on and m2.zoneout == 0.0
    x = torch.randn(2, 1, 3)
    assert torch.equal(pickle.loads(pickle.dumps(m2))(x)[0], m(x)[0])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_zero_batch_with_options(kind):
    """An empty batch with zoneout and recurrent dropout: empty outputs, as without them."""
    module = _make(kind, **_options(kind, "all"))
    x = torch.randn(3, 0, I, dtype=F64, requires_grad=True)
    y, hn = module(x)
    hn, cn = hn if kind in TWO else (hn, None)
    assert y.shape == (3, 0, H) and hn.shape == (1, 0, H)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("which", ["weight_drop", "all"])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("N", [1, 4, 30])
@pytest.mark.parametrize("kind", ["LN_LSTM", "LN_GRU"])
def test_layer_norm_training_on_the_fused_kernels(kind, N, dtype, which, monkeypatch):
    """Training of the LayerNorm layers runs the fused forward and backward kernels where
    the compiled CPU kernels are built, with weight drop alone or with zoneout and recurrent
    dropout too (their masks inside the kernels): the equations' outputs, final states and
    every gradient (input, states, W_ih, W_hh, every gain and shift), packed sequences of
    different lengths, two layers, both directions, a row split per thread (N = 30) and a
    unit split (N = 1, 4). float32 against the float64 equations, within 4x the largest
    error of torch's own float32 step loop on the same masks (LayerNorm amplifies rounding:
    that loop is up to ~1e-4 of a gradient's largest value away here) or 2e-5."""
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the compiled CPU kernels are not built")
    opts = dict(weight_drop=0.3) if which == "weight_drop" else _options(kind, which)
    module = _make(kind, num_layers=2, bidirectional=True, **opts).train()
    T = 7
    torch.manual_seed(N)
    lengths = sorted(torch.randint(1, T + 1, (N,)).tolist(), reverse=True)
    lengths[0] = T
    x = torch.randn(T, N, I, dtype=F64, requires_grad=True)
    hx = _states(kind, module, N)
    hxs = hx if kind in TWO else (hx,)
    torch.manual_seed(5)
    seeds = [torch.randn(*t.shape, dtype=F64) for t in (x.new_empty(T, N, 2 * H), *hxs)]

    def low_run():
        """(outputs, gradients) of the module in ``dtype``, as float64."""
        low = copy.deepcopy(module).to(dtype)
        xl = x.detach().to(dtype).requires_grad_()
        hxl = tuple(h.detach().to(dtype).requires_grad_() for h in hxs)
        torch.manual_seed(3)
        out, hn = low(pack_padded_sequence(xl, lengths), hxl if kind in TWO else hxl[0])
        y, _ = pad_packed_sequence(out)
        outs = [y, *(hn if kind in TWO else (hn,))]
        got = torch.autograd.grad(outs, [xl, *hxl, *low.parameters()],
                                  [s.to(dtype) for s in seeds])
        return [t.double() for t in outs], [g.double() for g in got], low.last_backend

    outs, grads, path = low_run()
    assert path == "cpu"
    masks = _draw(kind, module, T, N, True, 3, dtype=dtype)  # (the draws of the low module)
    want = _oracle(kind, module, x, hx, masks, True, torch.tensor(lengths))
    want = [t for t in want if t is not None]
    wanted = torch.autograd.grad(want, [x, *hxs, *module.parameters()], seeds)
    want = [t.detach() for t in want]
    if dtype == F64:
        bound = [1e-9] * (len(want) + len(wanted))
    else:  # torch's float32 step loop, the same masks
        monkeypatch.setattr(fastrnn.regularized, "_ln_fused_ok", lambda *a: False)
        outs32, grads32, path = low_run()
        assert path == "torch-ops"
        noise = max(float(((a - b) / b.abs().max().clamp_min(1.0)).abs().max())
                    for a, b in zip(outs32 + grads32, want + list(wanted)))
        bound = [max(2e-5, 4 * noise)] * (len(want) + len(wanted))
    names = ["output", "h_n", "c_n"][:len(want)] + ["input"] + \
        [f"hx[{i}]" for i in range(len(hxs))] + [n for n, _ in module.named_parameters()]
    for name, a, b, tol in zip(names, outs + grads, want + list(wanted), bound):
        # (relative to the tensor's largest value)
        scale = b.abs().max().clamp_min(1.0)
        err = float(((a - b) / scale).abs().max())
        assert err <= tol, f"{name}: {err:.3g} of its largest value, allowed {tol:.3g}"


@pytest.mark.parametrize("kind", ["LN_LSTM", "LN_GRU"])
def test_layer_norm_fused_gradcheck(kind):
    """gradcheck and gradgradcheck (float64) of a LayerNorm layer on the fused training
    kernels (the second derivative replays the step loop), both directions."""
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the compiled CPU kernels are not built")
    module = _make(kind, bidirectional=True)
    x = torch.randn(3, 2, I, dtype=F64, requires_grad=True)
    hx = _states(kind, module, 2)
    hxs = hx if kind in TWO else (hx,)
    module(x, hx)
    assert module.last_backend == "cpu"
    f = _functional(module, 4, True)
    assert torch.autograd.gradcheck(f, (x, *hxs, *module.parameters()))
    assert torch.autograd.gradgradcheck(f, (x, *hxs, *module.parameters()))


@pytest.mark.parametrize("N", [1, 4, 30])
@pytest.mark.parametrize("kind", ["LN_LSTM", "LN_GRU"])
def test_layer_norm_inference_on_the_fused_kernels(kind, N):
    """Inference of the LayerNorm layers (no gradient asked for) runs the fused LayerNorm
    kernel where the compiled CPU kernels are built: the equations' outputs and final states,
    packed sequences of different lengths, two layers, both directions, zoneout's eval
    expectation (with a gradient asked for too: the training kernels on a mask of p)."""
    module = _make(kind, num_layers=2, bidirectional=True, zoneout=0.3).eval()
    T = 7
    lengths = sorted(torch.randint(1, T + 1, (N,)).tolist(), reverse=True)
    lengths[0] = T
    x = torch.randn(T, N, I, dtype=F64)
    hx = _states(kind, module, N)
    with torch.no_grad():
        out, hn = module(pack_padded_sequence(x, lengths), hx)
        y, _ = pad_packed_sequence(out)
        assert module.last_backend == _reg_path(kind[3:], {})
        want = _oracle(kind, module, x, hx, _draw(kind, module, T, N, False, 0), False,
                       torch.tensor(lengths))
    hn, cn = hn if kind in TWO else (hn, None)
    _check((y, hn, cn), want, ("output", "h_n", "c_n"))
    module(x.requires_grad_(), hx)  # (zoneout with a gradient: p as a mask, fused too)
    assert module.last_backend == _reg_path(kind[3:], {})
