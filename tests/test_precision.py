"""float16 / bfloat16 modules and torch.autocast on the CPU (fastrnn._precision).

The oracle for output dtypes is torch.nn itself, called in the same mode in each test.
Numerics: against fastrnn in float32 on the same (float32) weights, and against torch.nn in
the same mode, with tolerances from the low dtype's unit roundoff u (2^-8 for bfloat16,
2^-11 for float16): the inputs, weights and outputs are each rounded once (relative error
u/2 each), the recurrence itself runs in float32, and the layers here are contractive (the
default init), so the error is a few u at any length. ``TOL_U`` u is asserted; the largest
errors measured against float32 were 1.4 u over 6 steps (RNN) and, over 500 steps, 0.8 u
(LSTM, GRU) and 1.5 u (RNN), the same in the first and the last 100 steps.
"""
import contextlib
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from fastrnn import backends
from rnn_cases import CPU_BACKENDS

LOW = (torch.bfloat16, torch.float16)
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
TOL_U = 8
KERNEL_BACKENDS = [b for b in CPU_BACKENDS if b in ("cpu", "numba")]


def _atol(dtype, factor=1):
    return factor * TOL_U * UNIT_ROUNDOFF[dtype]


def _flat(out):
    res = []

    def rec(t):
        if isinstance(t, PackedSequence):
            res.append(t.data)
        elif isinstance(t, torch.Tensor):
            res.append(t)
        else:
            for u in t:
                rec(u)
    rec(out)
    return res


def _pair(name, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    ref = getattr(nn, name)(4, 5, dtype=dtype, **kw)
    fast = getattr(fastrnn, name)(4, 5, dtype=dtype, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


LAYER_CASES = [
    ("RNN", {}), ("RNN", dict(nonlinearity="relu", num_layers=2, bidirectional=True)),
    ("GRU", {}), ("GRU", dict(num_layers=2, bidirectional=True)),
    ("LSTM", {}), ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=3)),
]


def _layer_input(case, x):
    if case == "packed":
        return pack_padded_sequence(x, [6, 4, 2])
    return x


def _torch_in_mode(ref, inp, low):
    """torch.nn's outputs under CPU autocast, or None where torch.nn cannot run that mode on
    this CPU (its oneDNN bf16/fp16 LSTM needs the CPU's bf16/fp16 instructions)."""
    with torch.autocast("cpu", dtype=low):
        try:
            return _flat(ref(*inp))
        except RuntimeError as exc:
            if "primitive descriptor" in str(exc):
                return None
            raise


@pytest.mark.parametrize("low", LOW, ids=str)
@pytest.mark.parametrize("case", ["plain", "packed", "hx"])
@pytest.mark.parametrize("name,kw", LAYER_CASES, ids=lambda v: str(v))
def test_layer_under_autocast_matches_torch_dtypes_and_numbers(name, kw, case, low):
    ref, fast = _pair(name, **kw)
    x = torch.randn(6, 3, 4)
    inp = [_layer_input(case, x)]
    if case == "hx":
        D = ref.num_layers * (2 if ref.bidirectional else 1)
        h = torch.randn(D, 3, ref.proj_size or 5)
        inp.append((h, torch.randn(D, 3, 5)) if name == "LSTM" else h)
    with torch.autocast("cpu", dtype=low):
        got = _flat(fast(*inp))
    expected = _torch_in_mode(ref, inp, low)
    full = _flat(fast(*inp))  # float32, autocast off
    if expected is None:
        # torch.nn's oneDNN LSTM (not packed, no projection) returns the autocast dtype
        assert name == "LSTM" and case != "packed" and not kw.get("proj_size"), \
            "torch.nn failed under autocast where it has no oneDNN path"
        expected_dtypes = [low] * 3
    else:
        expected_dtypes = [t.dtype for t in expected]
    assert [t.dtype for t in got] == expected_dtypes
    for g, f in zip(got, full):
        torch.testing.assert_close(g.float(), f, rtol=0, atol=_atol(low))
    if expected is not None:
        for g, e in zip(got, expected):
            torch.testing.assert_close(g.float(), e.float(), rtol=0, atol=_atol(low, 2))


@pytest.mark.parametrize("low", LOW, ids=str)
@pytest.mark.parametrize("name", ["RNNCell", "GRUCell", "LSTMCell"])
@pytest.mark.parametrize("input_dtype", ["float32", "low"])
def test_cell_under_autocast_matches_torch(name, input_dtype, low):
    ref, fast = _pair(name)
    x = torch.randn(3, 4)
    if input_dtype == "low":
        x = x.to(low)
    with torch.autocast("cpu", dtype=low):
        got, expected = _flat(fast(x)), _flat(ref(x))
    assert [t.dtype for t in got] == [t.dtype for t in expected]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.float(), e.float(), rtol=0, atol=_atol(low, 2))


STATE_CASES = [("RNNCell", 1), ("GRUCell", 1), ("LSTMCell", 2), ("GRU", 1), ("RNN", 1)]


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("name,n_states", STATE_CASES)
def test_states_of_another_dtype_under_autocast(name, n_states, state_dtype):
    """Under autocast torch.nn takes states of any autocast-able dtype, whatever the
    input's (a loop feeding a cell's bf16 output back with float32 inputs): same dtypes."""
    ref, fast = _pair(name)
    layer = not name.endswith("Cell")
    x = torch.randn(6, 3, 4) if layer else torch.randn(3, 4)
    h = torch.randn((1, 3, 5) if layer else (3, 5)).to(state_dtype)
    hx = (h, torch.randn(3, 5)) if n_states == 2 else h  # LSTMCell: c stays float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = _flat(fast(x, hx)), _flat(ref(x, hx))
    assert [t.dtype for t in got] == [t.dtype for t in expected]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.float(), e.float(), rtol=0, atol=_atol(torch.bfloat16, 2))


def test_peephole_lstm_under_autocast_follows_the_lstm():
    torch.manual_seed(0)
    fast = fastrnn.PeepholeLSTM(4, 5)
    cell = fastrnn.PeepholeLSTMCell(4, 5)
    x = torch.randn(6, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = fast(x)
        packed, _ = fast(pack_padded_sequence(x, [6, 4, 2]))
        h1, c1 = cell(x[0])
    assert (y.dtype, h.dtype, c.dtype) == (torch.bfloat16,) * 3
    assert packed.data.dtype == torch.float32  # as torch.nn's packed LSTM
    assert (h1.dtype, c1.dtype) == (torch.float32,) * 2  # as torch.nn's LSTMCell
    y32, _ = fast(x)
    torch.testing.assert_close(y.float(), y32, rtol=0, atol=_atol(torch.bfloat16))


@pytest.mark.parametrize("name,kw", [("LSTM", dict(bidirectional=True)),
                                     ("GRU", dict(bidirectional=True)), ("RNN", {})],
                         ids=lambda v: str(v))
def test_autocast_training_gradients_reach_float32_parameters(name, kw):
    """Packed, bidirectional: every parameter's and the input's gradient, float32, within
    the bf16 tolerance of the float32 run's."""
    _, fast = _pair(name, **kw)
    x = torch.randn(6, 3, 4)
    lengths = [6, 4, 2]

    def grads(autocast):
        xr = x.clone().requires_grad_()
        fast.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = _flat(fast(pack_padded_sequence(xr, lengths)))
        sum((o.float() * torch.linspace(-1, 1, o.numel()).view_as(o)).sum()
            for o in out).backward()
        return [xr.grad] + [p.grad.clone() for p in fast.parameters()]

    low_grads, full_grads = grads(True), grads(False)
    for g, f in zip(low_grads, full_grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, f, rtol=0, atol=_atol(torch.bfloat16, 2))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("low", LOW, ids=str)
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "PeepholeLSTM"])
def test_low_precision_module_runs_the_float32_kernels(name, low, backend, recwarn):
    """A module cast to bf16/fp16 runs the compiled (or numba) kernels on float32 copies,
    never the reference, without a warning; outputs and gradients in its dtype."""
    torch.manual_seed(0)
    fast = getattr(fastrnn, name)(4, 5, num_layers=2, bidirectional=True, backend=backend)
    x = torch.randn(6, 3, 4)
    full = _flat(fast(x))
    fast.to(low)
    xl = x.to(low).requires_grad_()
    got = _flat(fast(xl))
    assert fast.last_backend == backend
    assert not [w for w in recwarn if "reference" in str(w.message)]
    assert all(t.dtype == low for t in got)
    for g, f in zip(got, full):  # the weights and the input rounded to `low`
        torch.testing.assert_close(g.float(), f, rtol=0, atol=_atol(low))
    sum(t.float().sum() for t in got).backward()
    assert xl.grad.dtype == low and all(p.grad.dtype == low for p in fast.parameters())


@pytest.mark.parametrize("low", LOW, ids=str)
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell", "PeepholeLSTMCell"])
def test_low_precision_cell_runs_the_compiled_kernels(name, low):
    if "cpu" not in backends.available_backends():
        pytest.skip("the compiled CPU kernels are not built")
    torch.manual_seed(0)
    fast = getattr(fastrnn, name)(4, 5)
    x = torch.randn(3, 4)
    full = _flat(fast(x))
    fast.to(low)
    got = _flat(fast(x.to(low)))
    assert fast.last_backend == "cpu"
    assert all(t.dtype == low for t in got)
    for g, f in zip(got, full):
        torch.testing.assert_close(g.float(), f, rtol=0, atol=_atol(low))


def _compiled_cell(name, kw, dtype=torch.float32):
    """A cell of the compiled backend, seeded, every parameter ~ N(0, 0.5) (peepholes too:
    zero at construction), in ``dtype``; skips where the compiled kernels are not built."""
    if "cpu" not in backends.available_backends():
        pytest.skip("the compiled CPU kernels are not built")
    torch.manual_seed(0)
    fast = getattr(fastrnn, name)(7, 9, **kw)
    with torch.no_grad():
        for p in fast.parameters():
            p.normal_(0, 0.5)
    return fast.to(dtype)


@pytest.mark.parametrize("N,strided", [(1, False), (5, False), (5, True), (40, True)])
@pytest.mark.parametrize("name,kw", [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}),
                                     ("RNNCell", {"nonlinearity": "relu"}),
                                     ("PeepholeLSTMCell", {}), ("LSTMCell", {"bias": False}),
                                     ("GRUCell", {"bias": False})])
def test_bf16_cell_inference_step_reads_bf16(name, kw, N, strided, monkeypatch):
    """A bfloat16 cell's inference step runs one kernel call on the bfloat16 activations and
    weights (read into float32 in the kernel, results rounded back as torch rounds): bit for
    bit what the float32 kernel gives on converted copies, unbatched and on rows of a series
    too, at few rows (dot products) and many (packed panels)."""
    fast = _compiled_cell(name, kw, torch.bfloat16)
    from fastrnn import fastpath
    from fastrnn.backends import cpu
    series = torch.randn(N, 4, 7).to(torch.bfloat16)
    x = series[:, 1] if strided else series[:, 1].contiguous()
    assert strided == (N > 1 and not x.is_contiguous())
    two = "LSTM" in name
    h = torch.randn(N, 9).to(torch.bfloat16)
    hx = (h, torch.randn(N, 9).to(torch.bfloat16)) if two else h
    calls = {"n": 0}
    real = cpu.cell_forward_bf16

    def counting(*args):
        calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(cpu, "cell_forward_bf16", counting)
    from fastrnn import _precision
    with torch.no_grad():
        got = _flat(fast(x, hx))
        got_unbatched = _flat(fast(x[0], tuple(t[0] for t in hx) if two else hx[0]))
        assert calls["n"] == 2
        # the kernel read the bf16 weights themselves: no float32 copies were made
        assert not any(id(p) in _precision._converted for p in fast.parameters())
        monkeypatch.setattr(fastpath, "usable_bf16", lambda *a: False)  # the float32 copies
        want = _flat(fast(x, hx))
        want_unbatched = _flat(fast(x[0], tuple(t[0] for t in hx) if two else hx[0]))
    assert calls["n"] == 2
    for g, w in zip(got + got_unbatched, want + want_unbatched):
        assert g.dtype == torch.bfloat16
        assert torch.equal(g, w)
    # training (a gradient asked for) runs the float32 copies with autograd
    out = _flat(fast(x, hx))
    assert calls["n"] == 2 and all(t.requires_grad for t in out)


@pytest.mark.parametrize("N,strided", [(1, False), (5, True), (40, False), (40, True)])
@pytest.mark.parametrize("name,kw", [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}),
                                     ("RNNCell", {"nonlinearity": "relu"}),
                                     ("PeepholeLSTMCell", {}), ("LSTMCell", {"bias": False})])
def test_autocast_cell_inference_rounds_in_the_kernel(name, kw, N, strided, monkeypatch):
    """A cell's inference step under CPU autocast is one float32 kernel call that rounds x
    and the weights (biases and peepholes too) to bfloat16 as it reads them (the dot
    products at few rows, the packed panels at many): bit for bit the float32 kernel on
    copies rounded by torch, ties and NaN included, and float32 calls on the same weights
    afterwards still read them unrounded."""
    fast = _compiled_cell(name, kw)
    from fastrnn import fastpath
    with torch.no_grad():
        # values on bfloat16 ties (nearest even decides)
        ties = torch.tensor([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, -(1 + 2.0 ** -8), 2.0 ** -9 * 3])
        fast.weight_ih[0, :4] = ties
        fast.weight_hh[1, :4] = ties
    series = torch.randn(N, 4, 7)
    series[..., 3] = 1 + 2.0 ** -8  # x on a tie too
    x = series[:, 1] if strided else series[:, 1].contiguous()
    two = "LSTM" in name
    h = torch.randn(N, 9)
    hx = (h, torch.randn(N, 9)) if two else h
    with torch.no_grad():
        fp32_before = _flat(fast(x, hx))
    rounded = copy.deepcopy(fast)
    with torch.no_grad():  # every weight rounded, as autocast rounds a linear's operands
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    calls = {"round": 0}
    real = fastpath.cell

    def counting(*args):
        calls["round"] += bool(args[-1]) if len(args) == 10 else 0
        return real(*args)

    monkeypatch.setattr(fastpath, "cell", counting)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = _flat(fast(x, hx))
    assert calls["round"] == 1
    with torch.no_grad():
        want = _flat(rounded(x.to(torch.bfloat16).float(), hx))
        fp32_after = _flat(fast(x, hx))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected_dtypes = [t.dtype for t in _flat(getattr(nn, name.replace("Peephole", ""))(
            7, 9, **kw)(x, hx))]
    assert [t.dtype for t in got] == expected_dtypes
    for g, w in zip(got, want):
        assert torch.equal(g, w.to(g.dtype))
    for a, b in zip(fp32_after, fp32_before):
        assert torch.equal(a, b)
    with torch.no_grad():  # a NaN weight: NaN where torch's rounding keeps it
        fast.weight_hh[0, 0] = float("nan")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isnan(_flat(fast(x, hx))[0]).any()


def test_bf16_rounding_of_the_step_kernel_is_torchs():
    """The kernel's float32 -> bfloat16 rounding (nearest even, NaN kept) gives torch's bits,
    ties and NaN included: an RNN cell with identity-like weights passes values through."""
    if "cpu" not in backends.available_backends():
        pytest.skip("the compiled CPU kernels are not built")
    from fastrnn.backends import cpu
    H = 8
    # relu(x W_ih^T + b): W_ih = I, b chosen so that the float32 sums fall on bf16 ties
    # (the NaN in the bias: in x it would reach every output through the zeros of W_ih)
    x = torch.tensor([[1.0, 2.0, 3.0, 0.5, 0.25, 7.0, 100.0, 0.0]]).to(torch.bfloat16)
    b = torch.tensor([2.0 ** -8, 2.0 ** -7 * 3, 2.0 ** -6, 2.0 ** -9 * 3, 1e-3, 2.0 ** -6 * 3,
                      0.25, float("nan")])
    w_ih, w_hh = torch.eye(H), torch.zeros(H, H)
    h = torch.zeros(1, H, dtype=torch.bfloat16)
    got, _ = cpu.cell_forward_bf16(cpu.CELL_KINDS["RNN_RELU"], x, h, None, w_ih, w_hh, b,
                                   None)
    want = torch.relu(x.float() + b).to(torch.bfloat16)
    assert torch.equal(got[:, :7], want[:, :7]) and torch.isnan(got[0, 7])


@pytest.mark.parametrize("with_bias", [True, False])
def test_bf16_widen_add_is_copy_then_add(with_bias):
    """The one-pass widening of a bfloat16 GEMM result with its bias (autocast training's
    input projection) gives the bits of out.copy_(y16) then out.add_(bias)."""
    if "cpu" not in backends.available_backends():
        pytest.skip("the compiled CPU kernels are not built")
    from fastrnn.backends import cpu
    torch.manual_seed(0)
    y16 = torch.randn(700, 37).to(torch.bfloat16)
    y16[0, :3] = torch.tensor([float("inf"), float("nan"), -0.0])
    bias = torch.randn(37) if with_bias else None
    out = torch.empty(700, 37)
    cpu._C.bf16_widen_add(y16.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(),
                          700, 37, 2)
    want = torch.empty(700, 37).copy_(y16)
    if bias is not None:
        want.add_(bias)
    assert torch.equal(out.view(torch.int32)[1:], want.view(torch.int32)[1:])
    assert torch.equal(out[0, :3].isnan(), want[0, :3].isnan())
    assert out[0, 0] == want[0, 0] and (out[0, 2] == want[0, 2])
    with pytest.raises(ValueError, match="rows and cols"):
        cpu._C.bf16_widen_add(y16.data_ptr(), 0, out.data_ptr(), -1, 37, 1)


def test_bf16_long_sequence_does_not_drift():
    """500 steps in bfloat16 storage: the state is carried in float32, so the error stays
    at the rounding of the inputs and outputs instead of growing with the length."""
    torch.manual_seed(0)
    fast = fastrnn.LSTM(16, 32)
    x = torch.randn(500, 4, 16)
    y32, (h32, c32) = fast(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = fast(x)
    err = (y.float() - y32).abs().detach()
    assert float(err.max()) <= _atol(torch.bfloat16)
    # no growth: the last 100 steps are not worse than 2x the first 100
    assert float(err[-100:].max()) <= 2 * float(err[:100].max()) + UNIT_ROUNDOFF[torch.bfloat16]


def test_fp64_is_left_alone_by_autocast():
    ref, fast = _pair("GRU", dtype=torch.float64)
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = fast(x), ref(x)
    assert got[0].dtype == expected[0].dtype == torch.float64
    torch.testing.assert_close(got[0], expected[0])


def test_dtype_errors_stay_torch_errors_under_autocast():
    """A state whose dtype differs from the input's is an error under autocast too."""
    _, fast = _pair("GRU")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="dtype"):
            fast(torch.randn(5, 2, 4), torch.zeros(1, 2, 5, dtype=torch.float64))


def test_torch_compile_fullgraph_under_autocast():
    torch._dynamo.reset()
    _, fast = _pair("LSTM")
    x = torch.randn(6, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _flat(fast(x))
        got = _flat(torch.compile(fast, fullgraph=True)(x))
    assert [t.dtype for t in got] == [t.dtype for t in expected]
    for g, e in zip(got, expected):  # inductor may skip a rounding round trip
        torch.testing.assert_close(g.float(), e.float(), rtol=0, atol=_atol(torch.bfloat16))


def test_converted_weights_follow_in_place_updates():
    """Inference reuses a low-precision weight's float32 copy while the weight is
    unchanged; an in-place update (optimizer step, load_state_dict) is seen at once."""
    torch.manual_seed(0)
    cell = fastrnn.LSTMCell(4, 5).to(torch.bfloat16)
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    with torch.no_grad():
        first = cell(x)[0]
        assert torch.equal(cell(x)[0], first)
        cell.weight_ih.mul_(-1)
        flipped = cell(x)[0]
        cell.load_state_dict({k: v * 0 for k, v in cell.state_dict().items()})
        zero = cell(x)[0]
    fresh = fastrnn.LSTMCell(4, 5, dtype=torch.bfloat16)
    fresh.load_state_dict(cell.state_dict())
    assert not torch.equal(flipped, first)
    assert torch.equal(zero, torch.zeros_like(zero))  # all-zero weights: h = 0.5 * tanh(0)
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], zero)


@pytest.mark.parametrize("how", ["fused_adam", "data", "adam"])
@pytest.mark.parametrize("name,mode", [("LSTM", "autocast"), ("GRU", "autocast"),
                                       ("LSTMCell", "bf16"), ("LSTM", "bf16")])
def test_converted_weights_follow_writes_that_keep_the_version(name, mode, how):
    """Inference in low precision after training steps: the weights' converted copies follow
    every write, including those that leave the version counter alone (torch's fused Adam,
    writes through ``.data``), as a fresh module with the same state_dict computes."""
    torch.manual_seed(0)
    fast = getattr(fastrnn, name)(4, 5)
    if mode == "bf16":
        fast.to(torch.bfloat16)
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    x = torch.randn(6, 3, 4, dtype=dtype) if "Cell" not in name else torch.randn(3, 4, dtype=dtype)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mode == "autocast" else \
        contextlib.nullcontext

    def infer(m):
        with torch.no_grad(), ctx():
            return _flat(m(x))

    infer(fast)  # converts and caches the initial weights
    if how == "data":
        for p in fast.parameters():
            p.data.mul_(-1.5)
    else:
        opt = torch.optim.Adam(fast.parameters(), lr=0.5, **({"fused": True} if how == "fused_adam" else {}))
        for _ in range(2):
            opt.zero_grad()
            with ctx():
                loss = sum(t.float().sum() for t in _flat(fast(x)))
            loss.backward()
            opt.step()
    got = infer(fast)
    fresh = getattr(fastrnn, name)(4, 5, dtype=fast.weight_hh_l0.dtype if hasattr(fast, "weight_hh_l0")
                                   else fast.weight_hh.dtype)
    fresh.load_state_dict(fast.state_dict())
    for g, w in zip(got, infer(fresh)):
        assert torch.equal(g, w)


CUDA_CASES = [("RNN", {}), ("GRU", {}), ("LSTM", {}), ("LSTM", dict(bidirectional=True)),
              ("LSTM", dict(proj_size=3)), ("RNNCell", {}), ("GRUCell", {}), ("LSTMCell", {})]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dispatch", ["fastrnn", "auto"])
@pytest.mark.parametrize("low", LOW, ids=str)
@pytest.mark.parametrize("name,kw", CUDA_CASES, ids=lambda v: str(v))
def test_cuda_autocast_matches_torch(name, kw, low, dispatch, monkeypatch):
    """CUDA autocast: fastrnn's CUDA kernels (dispatch forced to fastrnn) and the dispatch's
    own choice return torch.nn's (cuDNN's) output dtypes and numbers, and the float32
    parameters get float32 gradients."""
    monkeypatch.setenv("FASTRNN_CUDA_DISPATCH", dispatch)
    ref, fast = _pair(name, **kw)
    ref, fast = ref.cuda(), fast.cuda()
    layer = not name.endswith("Cell")
    x = torch.randn((6, 3, 4) if layer else (3, 4), device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=low):
        got, expected = _flat(fast(x)), _flat(ref(x))
    assert [t.dtype for t in got] == [t.dtype for t in expected]
    for g, e in zip(got, expected):  # cuDNN may use TF32 and its own rounding
        torch.testing.assert_close(g.float(), e.float(), rtol=0, atol=_atol(low, 2))
    sum(t.float().sum() for t in got).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fast.parameters())
