"""The bfloat16 sequence kernels (csrc/cpu/bf16.h): inference of bfloat16 layers, and of
layers under CPU autocast to bfloat16 where torch.nn's outputs are bfloat16, on AVX512-BF16
dot products. Run where the CPU has AVX512-BF16 (the 'avx512bf16' build); skipped elsewhere.

Numerics. Against the same module in float32 on the bfloat16-rounded weights and input
(exact products, float32 arithmetic: the reference). The kernels add up to three roundings
to bfloat16's unit roundoff u = 2^-8, each relative u/2: the previous h as the GEMM operand
(|h| <= 1 for LSTM/GRU/tanh), the output, and for the GRU (whose projection is computed
first) the projection xg (|xg| a few units at the default init). A pre-activation error e moves h by at most e (tanh' <= 1, sigmoid' <= 1/4),
and the default init's recurrences are contractive, so the error stays a few u at any
length: ``TOL_U`` u is asserted (``MEASURED`` has the largest errors seen), and 500 steps
must not grow it.
"""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import backends
from rnn_cases import CPU_BACKENDS, flat as _flat

U = 2.0 ** -8
TOL_U = 8
# largest errors measured (AMD EPYC Zen 4): 1.3 u (relu RNN, 60 steps, its h unbounded),
# 0.3 / 0.7 / 0.7 u (LSTM / GRU / tanh RNN) over 500 steps, the same in the first and last 100
MEASURED = {"relu RNN, 60 steps": 1.3, "LSTM, 500": 0.3, "GRU, 500": 0.7, "RNN, 500": 0.7}

if "cpu" in CPU_BACKENDS:
    from fastrnn.backends import cpu as _cpu
    HAVE = _cpu.bf16_available()
else:
    _cpu = None
    HAVE = False

pytestmark = pytest.mark.skipif(
    not HAVE, reason="the bfloat16 kernels need the compiled CPU kernels on a CPU with "
                     "AVX512-BF16 ('avx512bf16' in fastrnn.backends.cpu.supported_isas())")

# Every test runs on each build of the bf16 kernels: 'avx512bf16' (vdpbf16ps dot products)
# and 'amxbf16' (the recurrent GEMMs on AMX-BF16 tiles, Intel Sapphire Rapids and later;
# calls of 4 rows and more), each where this CPU has it.
BF16_ISAS = ("amxbf16", "avx512bf16")


@pytest.fixture(autouse=True, params=BF16_ISAS)
def bf16_isa(request):
    if not HAVE:
        yield None
        return
    isa = request.param
    if isa not in _cpu.supported_isas():
        pytest.skip(f"the '{isa}' build needs a CPU with "
                    f"{'AMX-BF16 (and the kernel permitting AMX)' if isa == 'amxbf16' else 'AVX512-BF16'}"
                    f"; this one supports {_cpu.supported_isas()}")
    old = _cpu.isa()
    _cpu.set_isa(isa)
    try:
        yield isa
    finally:
        _cpu.set_isa(old)


@pytest.fixture
def spy(monkeypatch):
    """Counts the calls of the bfloat16 sequence kernels."""
    calls = []
    real = _cpu.bf16_seq_forward

    def counted(*args, **kw):
        calls.append(args[0])
        return real(*args, **kw)
    monkeypatch.setattr(_cpu, "bf16_seq_forward", counted)
    return calls


def _modules(name, I, H, **kw):
    torch.manual_seed(0)
    m = getattr(fastrnn, name)(I, H, **kw)
    with torch.no_grad():  # weights exactly representable in bfloat16
        for p in m.parameters():
            p.copy_(p.bfloat16().float())
    m32 = getattr(fastrnn, name)(I, H, **kw)
    m32.load_state_dict(m.state_dict())
    return m, m32


CASES = [
    ("LSTM", {}), ("LSTM", dict(num_layers=2, bidirectional=True)), ("LSTM", dict(bias=False)),
    ("GRU", {}), ("GRU", dict(num_layers=2, bidirectional=True)), ("GRU", dict(bias=False)),
    ("RNN", {}), ("RNN", dict(nonlinearity="relu", bidirectional=True)),
    ("PeepholeLSTM", {}), ("PeepholeLSTM", dict(bidirectional=True)),
]


@pytest.mark.parametrize("I", [12, 7])
@pytest.mark.parametrize("H", [37, 128])
@pytest.mark.parametrize("N", [1, 5, 70])
@pytest.mark.parametrize("name,kw", CASES, ids=str)
def test_bf16_module_inference_runs_the_bf16_kernels(name, kw, N, H, I, spy):
    """(The LSTM and RNN fuse the input projection into each step's GEMM, an odd input
    size padded to whole bf16 pairs; the GRU projects first.)"""
    m, m32 = _modules(name, I, H, **kw)
    x = torch.randn(60, N, I).bfloat16()
    with torch.no_grad():
        want = _flat(m32(x.float()))
        m.bfloat16()
        got = _flat(m(x))
    D = 2 if kw.get("bidirectional") else 1
    assert len(spy) == kw.get("num_layers", 1) * D
    assert m.last_backend == "cpu"
    assert all(g.dtype == torch.bfloat16 for g in got)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g.float(), w, rtol=0, atol=TOL_U * U)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "PeepholeLSTM"])
def test_states_batch_first_unbatched_and_packed(name, spy):
    m, m32 = _modules(name, 6, 9, num_layers=2, bidirectional=True, batch_first=True)
    lstm = name in ("LSTM", "PeepholeLSTM")
    x = torch.randn(4, 11, 6).bfloat16()
    h0 = torch.randn(4, 4, 9).bfloat16()
    hx = (h0, torch.randn(4, 4, 9).bfloat16()) if lstm else h0
    hx32 = tuple(h.float() for h in hx) if lstm else h0.float()
    lengths = torch.tensor([11, 3, 7, 1])
    with torch.no_grad():
        want = [_flat(m32(x.float(), hx32)), _flat(m32(x[0].float())),
                _flat(m32(pack_padded_sequence(x.float(), lengths, batch_first=True,
                                               enforce_sorted=False), hx32))]
        m.bfloat16()
        got = [_flat(m(x, hx)), _flat(m(x[0])),
               _flat(m(pack_padded_sequence(x, lengths, batch_first=True,
                                            enforce_sorted=False), hx))]
    assert len(spy) == 3 * 4
    for gs, ws in zip(got, want):
        for g, w in zip(gs, ws):
            assert g.dtype == torch.bfloat16 and g.shape == w.shape
            torch.testing.assert_close(g.float(), w, rtol=0, atol=TOL_U * U)


@pytest.mark.parametrize("name", ["LSTM", "RNN", "PeepholeLSTM"])
def test_projection_first_path(name, spy, monkeypatch):
    """The LSTM and RNN with the input projection computed first (a bf16 GEMM, its result
    rounded to bf16), as the GRU runs: the kernels' xg path."""
    from fastrnn import functional
    monkeypatch.setattr(functional, "_BF16_FUSED_PROJECTION", False)
    m, m32 = _modules(name, 9, 20, bidirectional=True)
    x = torch.randn(40, 3, 9).bfloat16()
    with torch.no_grad():
        want = _flat(m32(x.float()))
        got = _flat(m.bfloat16()(x))
    assert len(spy) == 2
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w, rtol=0, atol=TOL_U * U)


def test_autocast_inference_matches_torch_nn_and_runs_the_bf16_kernels(spy):
    torch.manual_seed(0)
    ref = nn.LSTM(10, 32, num_layers=2, bidirectional=True)
    fast = fastrnn.LSTM(10, 32, num_layers=2, bidirectional=True)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(40, 3, 10)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = _flat(ref(x))
        got = _flat(fast(x))
    assert len(spy) == 4
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == torch.bfloat16
        # both round the input and weights to bf16; torch.nn's oneDNN LSTM keeps its own
        # intermediates: twice the tolerance against another bf16 implementation
        torch.testing.assert_close(g.float(), w.float(), rtol=0, atol=2 * TOL_U * U)


def test_float32_results_under_autocast_stay_on_the_float32_kernels(spy):
    """Where torch.nn returns float32 under autocast (GRU and packed LSTM with float32
    states) the call keeps float32 precision: no bfloat16 kernel."""
    torch.manual_seed(0)
    gru = fastrnn.GRU(4, 8)
    lstm = fastrnn.LSTM(4, 8)
    x = torch.randn(7, 2, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = gru(x)
        p, _ = lstm(pack_padded_sequence(x, torch.tensor([7, 4])))
    assert y.dtype == p.data.dtype == torch.float32
    assert spy == []


def test_training_and_other_isas_do_not_take_the_bf16_kernels(spy):
    m = fastrnn.LSTM(4, 8).bfloat16()
    x = torch.randn(5, 2, 4).bfloat16()
    y, _ = m(x)  # parameters need gradients: the autograd path
    assert y.requires_grad and spy == []
    y.float().sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    old = _cpu.isa()
    try:
        _cpu.set_isa("avx512")
        assert not _cpu.bf16_available()
        with torch.no_grad():
            m(x)
        assert spy == []
    finally:
        _cpu.set_isa(old)
    with torch.no_grad():
        m(x)
    assert len(spy) == 1


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_500_steps_do_not_drift(name):
    m, m32 = _modules(name, 16, 64)
    x = torch.randn(500, 4, 16).bfloat16()
    with torch.no_grad():
        want, _ = m32(x.float())
        got, _ = m.bfloat16()(x)
    err = (got.float() - want).abs()
    assert float(err.max()) <= TOL_U * U
    assert float(err[-100:].max()) <= 2 * float(err[:100].max()) + U


def test_nan_propagates_and_zeros_stay_zero():
    m = fastrnn.LSTM(3, 5).bfloat16()
    x = torch.zeros(4, 2, 3).bfloat16()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        y, (h, c) = m(x)
        assert torch.equal(y, torch.zeros_like(y)) and torch.equal(c, torch.zeros_like(c))
        x[1, 0, 0] = float("nan")
        m.weight_ih_l0.fill_(0.5)
        y, _ = m(x)
    assert torch.isnan(y[1:, 0]).all() and not torch.isnan(y[:, 1]).any()


def test_kernel_arguments_are_checked():
    xg = torch.zeros(3, 2, 8, dtype=torch.bfloat16)
    w = torch.zeros(8, 2, dtype=torch.bfloat16)
    h0 = torch.zeros(2, 2)
    with pytest.raises(TypeError, match="xg must be a torch.bfloat16"):
        _cpu.bf16_seq_forward("LSTM", xg.float(), h0, h0, w, None, None, None, False)
    with pytest.raises(TypeError, match="h0 must be a torch.float32"):
        _cpu.bf16_seq_forward("LSTM", xg, h0.bfloat16(), h0, w, None, None, None, False)
    with pytest.raises(ValueError, match="lengths"):
        _cpu.bf16_seq_forward("LSTM", xg, h0, h0, w, None, None, torch.tensor([4, 1]), False)
    with pytest.raises(ValueError, match="c0"):
        _cpu.bf16_seq_forward("LSTM", xg, h0, None, w, None, None, None, False)


@pytest.mark.parametrize("name,kw", [("LSTM", dict(num_layers=2, bidirectional=True)),
                                     ("GRU", {}), ("RNN", {}), ("PeepholeLSTM", {})],
                         ids=str)
@pytest.mark.parametrize("N", [5, 37])
@pytest.mark.parametrize("how", ["autocast", "bf16 module"])
def test_autocast_training_runs_its_gemms_in_bf16(name, kw, N, how, monkeypatch):
    """Under autocast to bf16 (and in a module cast to bfloat16, whose operands are bf16
    already), a training call's input projections (forward and both backward products), its
    recurrence forward (the bf16 kernels, writing the backward's float32 records), its
    recurrence backward (bf16 GEMMs, fp32 gate gradients) and W_hh's gradient GEMM run in
    bfloat16 where the CPU has bf16 instructions; every gradient within the bf16 tolerance
    of the same call in float32 (the 'avx512' build), scaled by the gradient's size (a sum
    over T*N products). The bf16 module's gradients are bfloat16 (its parameters' dtype)."""
    from fastrnn import _memory
    applied, recurrences = [], []
    real = _memory.Bf16Linear.apply
    monkeypatch.setattr(_memory.Bf16Linear, "apply",
                        staticmethod(lambda *a: applied.append(1) or real(*a)))
    real_forward = _cpu._bf16_forward
    monkeypatch.setattr(_cpu, "_bf16_forward",
                        lambda *a: recurrences.append(a[0]) or real_forward(*a))
    backwards, hits = [], []
    real_backward = _cpu._bf16_backward
    monkeypatch.setattr(_cpu, "_bf16_backward",
                        lambda *a: backwards.append(a[0]) or real_backward(*a))
    real_as_bf16 = _memory.as_bf16

    def as_bf16(t):  # whether the kernel's bf16 rounding of the gate gradients is reused
        e = _memory._bf16_twins.get(id(t))
        hits.append(e is not None and e[0]() is t)
        return real_as_bf16(t)
    monkeypatch.setattr(_memory, "as_bf16", as_bf16)
    torch.manual_seed(0)
    m = getattr(fastrnn, name)(12, 24, **kw)
    x = torch.randn(30, N, 12)
    if how == "bf16 module":
        m, x = m.bfloat16(), x.bfloat16()
    weights = torch.linspace(-1, 1, 30 * N * 24 * (2 if kw.get("bidirectional") else 1))

    def grads():
        xr = x.clone().requires_grad_()
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "autocast"):
            y = _flat(m(xr))[0]
        (y.float().flatten() * weights).sum().backward()
        return [xr.grad] + [p.grad.clone() for p in m.parameters()]

    got = grads()
    layers_dirs = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    assert len(applied) == len(recurrences) == len(backwards) == layers_dirs
    # each input projection's backward (and the LSTM's and RNN's W_hh gradient) reads the
    # backward kernel's bf16 gate gradients instead of converting them again
    assert sum(hits) >= layers_dirs * (1 if name == "GRU" else 2)
    old = _cpu.isa()
    try:
        _cpu.set_isa("avx512")
        want = grads()
    finally:
        _cpu.set_isa(old)
    # not on the 'avx512' build
    assert len(applied) == len(recurrences) == len(backwards) == layers_dirs
    for g, w in zip(got, want):
        assert g.dtype == (torch.float32 if how == "autocast" else torch.bfloat16)
        torch.testing.assert_close(g.float(), w.float(), rtol=0,
                                   atol=TOL_U * U * float(w.float().abs().max()))


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "PeepholeLSTM"])
def test_autocast_training_bias_gradients_are_the_kernels_sums(name, monkeypatch):
    """The bf16 backward kernels sum the gate gradients over steps and rows as they write
    them (the GRU also its hidden part's, dn * r); the bias gradients are those sums (used
    once per kernel call, then torch's sums again): within float32 rounding of torch's sums
    of the same gradients, packed sequences of different lengths included."""
    from fastrnn import _memory
    used = []
    real = _memory.recorded_sum
    torch.manual_seed(0)
    m = getattr(fastrnn, name)(12, 24)
    x = torch.randn(40, 6, 12)
    lengths = [40, 33, 20, 20, 7, 1]

    def grads(recorded):
        monkeypatch.setattr(_memory, "recorded_sum", lambda t, n="x": used.append(n) or real(t, n)
                            if recorded else None)
        xr = x.clone().requires_grad_()
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = m(torch.nn.utils.rnn.pack_padded_sequence(xr, lengths))
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if n.startswith("bias")}

    got = grads(True)
    assert used.count("x") == 1 and used.count("h") == (1 if name == "GRU" else 0)
    want = grads(False)
    for n, w in want.items():
        torch.testing.assert_close(got[n], w, rtol=0, atol=1e-5 * float(w.abs().max()),
                                   msg=lambda msg: f"{n}: {msg}")


def test_remembered_bf16_rounding_is_used_only_while_valid():
    """``_memory.as_bf16`` returns a kernel's recorded bf16 rounding of a tensor only for that
    tensor object, unmodified; otherwise (and once it is gone) the conversion."""
    from fastrnn import _memory
    t = torch.randn(4, 6)
    t16 = t.bfloat16()
    _memory.remember_bf16(t, t16)
    assert _memory.as_bf16(t) is t16
    assert _memory.as_bf16(t.clone()) is not t16  # equal values, another tensor
    t.add_(1.0)
    got = _memory.as_bf16(t)
    assert got is not t16 and torch.equal(got, t.bfloat16())
    key = id(t)
    del t
    assert key not in _memory._bf16_twins


def test_backward_kernel_arguments_are_checked():
    C = _cpu._C
    z = torch.zeros(8)
    p = z.data_ptr()
    args = dict(kind=0, T=2, N=1, H=2, dy=p, dcn=p, h0=p, c0=p, w_hh=p, w_ch=0, lengths=0,
                reverse=False, y=p, gates=p, cs=p, dxg=p, dxg16=p, dh0=p, dc0=p, num_threads=1)
    with pytest.raises(ValueError, match="kind must be"):
        C.bf16_seq_backward(**{**args, "kind": 7})
    with pytest.raises(ValueError, match="T, N, H and R must all be >= 1"):
        C.bf16_seq_backward(**{**args, "T": 0})
    with pytest.raises(ValueError, match="cs \\(LSTM\\) is required"):
        C.bf16_seq_backward(**{**args, "cs": 0})
    with pytest.raises(ValueError, match="y \\(GRU, RNN\\) is required"):
        C.bf16_seq_backward(**{**args, "kind": 2, "y": 0})
    with pytest.raises(ValueError, match="peepholes"):
        C.bf16_seq_backward(**{**args, "kind": 1, "w_ch": p})
