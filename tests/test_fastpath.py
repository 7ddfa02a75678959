"""The eager fast path (fastrnn.fastpath): cells and one-step layer calls through one fused
kernel call. It must give the op path's numbers (outputs, final states, every gradient) and
torch.nn's, be taken exactly when nothing needs the op layer, and never change an error."""
import itertools

import platform

import pytest
import torch

import fastrnn
from fastrnn import backends, fastpath

pytestmark = pytest.mark.skipif(
    "cpu" not in backends.available_backends(),
    reason="the fast path runs the compiled CPU kernels (extension not built or disabled)")

F32, F64 = torch.float32, torch.float64
CELLS = {"LSTMCell": "LSTM", "GRUCell": "GRU", "RNNCell": "RNN_TANH"}


def _count_calls(monkeypatch, name):
    """Replace ``fastpath.<name>`` by a wrapper counting its calls; returns the counter."""
    count = {"n": 0}
    real = getattr(fastpath, name)

    def counting(*args):
        count["n"] += 1
        return real(*args)

    monkeypatch.setattr(fastpath, name, counting)
    return count


@pytest.fixture
def calls(monkeypatch):
    """Counts fused cell steps taken by the fast path."""
    return _count_calls(monkeypatch, "cell")


@pytest.fixture
def op_path(monkeypatch):
    """Switch the fast path off: every call goes through the custom ops."""
    def off():
        monkeypatch.setattr(fastpath, "eager", lambda: False)
    return off


def _tol(dtype):
    return dict(atol=1e-5, rtol=1e-4) if dtype == F32 else dict(atol=1e-10, rtol=1e-9)


def _cell_pair(kind, I, H, dtype, bias=True, nonlinearity=None, seed=0):
    torch.manual_seed(seed)
    kw = {} if nonlinearity is None else {"nonlinearity": nonlinearity}
    ref = getattr(torch.nn, kind)(I, H, bias=bias, dtype=dtype, **kw)
    fast = getattr(fastrnn, kind)(I, H, bias=bias, dtype=dtype, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _cell_run(mod, x, hx, grads_of):
    out = mod(x, hx)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(5)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    params = [p for p in mod.parameters()]
    grads = torch.autograd.grad(loss, list(grads_of) + params)
    return [o.detach() for o in outs], grads


def _assert_all_close(a, b, tol):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, **tol)


# N: 1 and 4 take the dot-product path, 5 and 33 the packed GEMM; H=29, I=37 leave partial
# vectors; H=256 at N=1 splits the dot products over threads; N=48, I=H=64 is past the
# one-pass backward (fastpath._ONE_PASS_MACS, for LSTM and GRU): torch's GEMMs there.
@pytest.mark.parametrize("kind,N,I,H,dtype,bias", [
    (k, n, i, h, d, b) for k in CELLS for (n, i, h) in
    [(1, 37, 29), (4, 37, 29), (5, 37, 29), (33, 16, 32), (1, 100, 256), (48, 64, 64)]
    for d in (F32, F64) for b in (True, False) if not (h == 256 and d == F64)])
def test_cell_matches_torch_nn_and_op_path(kind, N, I, H, dtype, bias, calls, op_path):
    ref, fast = _cell_pair(kind, I, H, dtype, bias)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, I, dtype=dtype, generator=gen, requires_grad=True)
    h = torch.randn(N, H, dtype=dtype, generator=gen, requires_grad=True)
    c = torch.randn(N, H, dtype=dtype, generator=gen, requires_grad=True)
    hx, ins = ((h, c), (x, h, c)) if kind == "LSTMCell" else (h, (x, h))
    want = _cell_run(ref, x, hx, ins)
    got = _cell_run(fast, x, hx, ins)
    assert calls["n"] == 1 and fast.last_backend == "cpu"
    op_path()
    via_ops = _cell_run(fast, x, hx, ins)
    assert calls["n"] == 1  # the op path ran
    tol = _tol(dtype)
    _assert_all_close(got[0], want[0], tol)
    _assert_all_close(got[1], want[1], tol)
    _assert_all_close(got[0], via_ops[0], tol)
    _assert_all_close(got[1], via_ops[1], tol)


@pytest.mark.parametrize("N", [1, 7])
def test_relu_cell_and_unbatched_and_no_state(N, calls):
    ref, fast = _cell_pair("RNNCell", 10, 12, F64, nonlinearity="relu")
    x = torch.randn(N, 10, dtype=F64)
    torch.testing.assert_close(fast(x), ref(x), **_tol(F64))
    for kind in CELLS:
        ref, fast = _cell_pair(kind, 10, 12, F64)
        xu = torch.randn(10, dtype=F64)
        hu = torch.randn(12, dtype=F64)
        hx = (hu, torch.randn(12, dtype=F64)) if kind == "LSTMCell" else hu
        a, b = fast(xu, hx), ref(xu, hx)
        _assert_all_close(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,),
                          _tol(F64))
        a = fast(xu)
        assert (a[0] if isinstance(a, tuple) else a).shape == (12,)
    assert calls["n"] == 1 + 2 * len(CELLS)


@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_gradcheck_float64(kind):
    _, fast = _cell_pair(kind, 5, 6, F64)
    x = torch.randn(3, 5, dtype=F64, requires_grad=True)
    h = torch.randn(3, 6, dtype=F64, requires_grad=True)
    c = torch.randn(3, 6, dtype=F64, requires_grad=True)
    params = tuple(fast.parameters())

    def f(x, h, c, *ps):
        out = torch.func.functional_call(fast, dict(zip([n for n, _ in fast.named_parameters()], ps)),
                                         (x, (h, c) if kind == "LSTMCell" else h))
        return out

    # functional_call swaps the parameters in; the fast path still runs (plain tensors)
    assert torch.autograd.gradcheck(f, (x, h, c) + params)


@pytest.mark.parametrize("kind", list(CELLS) + ["RNNCell-relu"])
def test_cell_double_backward(kind, calls):
    """create_graph=True gives differentiable gradients (gradgradcheck in float64)."""
    nl = "relu" if kind.endswith("relu") else None
    _, fast = _cell_pair(kind.split("-")[0], 4, 5, F64, nonlinearity=nl)
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    h = torch.randn(3, 5, dtype=F64, requires_grad=True)
    c = torch.randn(3, 5, dtype=F64, requires_grad=True)
    names = [n for n, _ in fast.named_parameters()]

    def f(x, h, c, *ps):
        hx = (h, c) if kind == "LSTMCell" else h
        return torch.func.functional_call(fast, dict(zip(names, ps)), (x, hx))

    assert torch.autograd.gradgradcheck(f, (x, h, c) + tuple(fast.parameters()))
    assert calls["n"] > 0


def _layer_pair(kind, I, H, layers, bidirectional, batch_first, dtype, dropout=0.0, bias=True):
    torch.manual_seed(0)
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
              dtype=dtype, dropout=dropout, bias=bias)
    ref = getattr(torch.nn, kind)(I, H, **kw)
    fast = getattr(fastrnn, kind)(I, H, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _layer_run(mod, x, hx, grads_of):
    y, hn = mod(x, hx)
    states = hn if isinstance(hn, tuple) else (hn,)
    outs = (y,) + tuple(states)
    gen = torch.Generator().manual_seed(5)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, list(grads_of) + list(mod.parameters()))
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("kind,layers,bidirectional,batch_first,N,dtype,bias", [
    (k, l, d, bf, n, dt, b) for k, l, d, bf, n, dt, b in itertools.product(
        ["LSTM", "GRU", "RNN"], [1, 2], [False, True], [False, True], [1, 6], [F32, F64],
        [True, False]) if b or (l == 2 and d and n == 6)])
def test_one_step_layer_matches_torch_nn_and_op_path(kind, layers, bidirectional, batch_first,
                                                      N, dtype, bias, calls, op_path):
    I, H = 11, 13
    ref, fast = _layer_pair(kind, I, H, layers, bidirectional, batch_first, dtype, bias=bias)
    D = 2 if bidirectional else 1
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*((N, 1, I) if batch_first else (1, N, I)), dtype=dtype, generator=gen,
                    requires_grad=True)
    h = torch.randn(layers * D, N, H, dtype=dtype, generator=gen, requires_grad=True)
    c = torch.randn(layers * D, N, H, dtype=dtype, generator=gen, requires_grad=True)
    hx, ins = ((h, c), (x, h, c)) if kind == "LSTM" else (h, (x, h))
    want = _layer_run(ref, x, hx, ins)
    got = _layer_run(fast, x, hx, ins)
    assert calls["n"] == layers * D and fast.last_backend == "cpu"
    op_path()
    via_ops = _layer_run(fast, x, hx, ins)
    assert calls["n"] == layers * D
    tol = _tol(dtype)
    for a, b in ((got, want), (got, via_ops)):
        _assert_all_close(a[0], b[0], tol)
        _assert_all_close(a[1], b[1], tol)


@pytest.mark.parametrize("kind,batch_first,N", [
    (k, bf, n) for k in ["LSTM", "GRU", "RNN"] for bf in (False, True) for n in (1, 5, 33)])
def test_one_step_layer_on_a_slice_of_a_series(kind, batch_first, N, calls):
    """A layer fed one time step sliced out of a longer series (``series[:, t:t+1]``
    batch-first: rows T*I apart) stays on the fast path; outputs, states and gradients (the
    series' included) are torch.nn's."""
    T, I, H = 6, 7, 9
    ref, fast = _layer_pair(kind, I, H, 2, True, batch_first, F64)
    gen = torch.Generator().manual_seed(3)
    series = torch.randn(*((N, T, I) if batch_first else (T, N, I)), dtype=F64, generator=gen)
    res = []
    for mod in (ref, fast):
        s = series.clone().requires_grad_()
        x = s[:, 2:3] if batch_first else s[2:3]
        outs, grads = _layer_run(mod, x, None, [s])
        res.append((outs, grads))
    assert calls["n"] == 4 and fast.last_backend == "cpu"
    _assert_all_close(res[1][0], res[0][0], _tol(F64))
    _assert_all_close(res[1][1], res[0][1], _tol(F64))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_one_step_layer_unbatched_and_default_state(kind, calls):
    ref, fast = _layer_pair(kind, 4, 5, 2, True, False, F64)
    x = torch.randn(1, 4, dtype=F64)  # unbatched, one step
    a, b = fast(x), ref(x)
    torch.testing.assert_close(a[0], b[0])
    sa, sb = (a[1], b[1]) if kind != "LSTM" else (a[1][1], b[1][1])
    torch.testing.assert_close(sa, sb)
    assert calls["n"] == 4


def test_one_step_dropout_draws_like_the_op_path(calls, op_path):
    _, fast = _layer_pair("GRU", 6, 7, 3, True, False, F64, dropout=0.5)
    fast.train()
    x = torch.randn(1, 4, 6, dtype=F64)
    torch.manual_seed(11)
    y_fast = fast(x)[0]
    assert calls["n"] == 6
    op_path()
    torch.manual_seed(11)
    y_ops = fast(x)[0]
    torch.testing.assert_close(y_fast, y_ops)


@pytest.mark.parametrize("case", ["T2", "packed", "proj", "noncontig", "bfloat16-ref",
                                  "compile", "trace", "numba"])
def test_general_path_where_the_fast_path_does_not_apply(case, calls):
    torch.manual_seed(0)
    if case == "T2":
        fast = fastrnn.GRU(3, 4)
        fast(torch.randn(2, 1, 3))
    elif case == "packed":
        fast = fastrnn.GRU(3, 4)
        seq = torch.nn.utils.rnn.pack_sequence([torch.randn(1, 3)])
        fast(seq)
    elif case == "proj":
        fast = fastrnn.LSTM(3, 4, proj_size=2)
        fast(torch.randn(1, 1, 3))
    elif case == "noncontig":
        ref, fast = _cell_pair("GRUCell", 3, 4, F64)
        x = torch.randn(3, 5, dtype=F64)[:, ::2].clone()[:, :3].t().contiguous().t()
        assert not x.is_contiguous()
        torch.testing.assert_close(fast(x), ref(x))
    elif case == "bfloat16-ref":  # the reference asked for by name runs in bfloat16 itself
        fast = fastrnn.GRUCell(3, 4, dtype=torch.bfloat16, backend="reference")
        assert fast(torch.randn(2, 3, dtype=torch.bfloat16)).dtype == torch.bfloat16
    elif case == "compile":
        fast = fastrnn.LSTMCell(3, 4)
        compiled = torch.compile(fast, fullgraph=True, backend="eager")
        x = torch.randn(2, 3)
        torch.testing.assert_close(compiled(x)[0], fast(x)[0])
        calls["n"] -= 1  # the eager call above
    elif case == "trace":
        fast = fastrnn.GRUCell(3, 4)
        try:  # whether tracing succeeds is the op layer's business; the fast path stays out
            torch.jit.trace(fast, (torch.randn(2, 3),), check_trace=False)
        except Exception:
            pass
    elif case == "numba":
        if "numba" not in backends.available_backends():
            pytest.skip("numba not installed")
        fast = fastrnn.LSTMCell(3, 4, backend="numba")
        fast(torch.randn(2, 3))
        assert fast.last_backend == "numba"
    assert calls["n"] == 0


@pytest.mark.parametrize("kind", list(CELLS))
def test_bad_input_keeps_the_op_paths_errors(kind):
    _, fast = _cell_pair(kind, 5, 6, F32)
    with pytest.raises(RuntimeError, match="input_size|inconsistent"):
        fast(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="batch size|hx|hidden"):
        h = torch.randn(3, 6)
        fast(torch.randn(2, 5), (h, h) if kind == "LSTMCell" else h)
    with pytest.raises((RuntimeError, ValueError), match="dtype"):
        fast(torch.randn(2, 5, dtype=F64))


def test_training_loop_matches_torch_nn(calls):
    """A decoder-style loop: 20 steps, the state fed back, one backward at the end."""
    for kind in CELLS:
        ref, fast = _cell_pair(kind, 8, 9, F64)
        xs = torch.randn(20, 2, 8, dtype=F64)
        res = []
        for mod in (ref, fast):
            state, outs = None, []
            for t in range(20):
                state = mod(xs[t], state)
                outs.append(state[0] if kind == "LSTMCell" else state)
            torch.stack(outs).sin().sum().backward()
            res.append([p.grad for p in mod.parameters()])
        _assert_all_close(res[1], res[0], _tol(F64))
    assert calls["n"] == 20 * len(CELLS)


# I=1: the univariate ``series[:, t:t+1]``; N 5 and 33: the dot-product and packed paths
# (N=1 rows are contiguous whatever their stride)
@pytest.mark.parametrize("kind,N,I,dtype", [
    (k, n, i, d) for k in CELLS for (n, i) in [(1, 7), (5, 7), (33, 16), (5, 1)]
    for d in (F32, F64)])
def test_cell_on_slices_of_a_series_takes_the_fast_path(kind, N, I, dtype, calls):
    """A cell fed ``series[:, t]`` (rows T*I apart, not contiguous) reads it in place: every
    step on the fast path, outputs and gradients (the series' included) torch.nn's."""
    T, H = 6, 9
    ref, fast = _cell_pair(kind, I, H, dtype)
    gen = torch.Generator().manual_seed(2)
    series = torch.randn(N, T, I, dtype=dtype, generator=gen)
    assert N == 1 or not series[:, 0].is_contiguous()
    res = []
    for mod in (ref, fast):
        xs = series.clone().requires_grad_()
        state, outs = None, []
        for t in range(T):
            state = mod(xs[:, t], state)
            outs.append(state[0] if kind == "LSTMCell" else state)
        y = torch.stack(outs)
        grads = torch.autograd.grad(y.sin().sum(), [xs] + list(mod.parameters()))
        res.append([y.detach(), *grads])
    assert calls["n"] == T
    _assert_all_close(res[1], res[0], _tol(dtype))


@pytest.mark.parametrize("kind", list(CELLS))
def test_vmapped_cells_step_aside(kind, calls):
    """Under torch.func.vmap, and legacy vmap (whose BatchedTensors eager() cannot see), the
    fast path stays out; the numbers are torch.nn's per-sample ones."""
    from torch._vmap_internals import _vmap
    ref, fast = _cell_pair(kind, 4, 5, F64)
    xs = torch.randn(3, 2, 4, dtype=F64)
    with torch.no_grad():
        want = [ref(x) for x in xs]
        want = torch.stack([w[0] if kind == "LSTMCell" else w for w in want])
        for vmap in (torch.func.vmap, _vmap):
            out = vmap(fast)(xs)
            torch.testing.assert_close(out[0] if kind == "LSTMCell" else out, want)
    assert calls["n"] == 0


@pytest.fixture
def step_calls(monkeypatch):
    """Counts the multi-step inference calls the fast path makes."""
    return _count_calls(monkeypatch, "steps")


@pytest.mark.parametrize("kind,layers,bidirectional,batch_first,T,N,dtype", [
    (k, l, d, bf, t, n, dt) for k, l, d, bf, t, n, dt in itertools.product(
        ["LSTM", "GRU", "RNN"], [1, 2], [False, True], [False, True], [2, 7],
        [1, 4, 5, 33], [F32, F64])])
def test_sequence_inference_matches_torch_nn_and_op_path(
        kind, layers, bidirectional, batch_first, T, N, dtype, step_calls, op_path):
    """T > 1 in inference: one fused-steps call per layer and direction where they pay
    (N <= 4 on the dot-product path, N >= 32 on packed panels, batch-first input read in
    place); the general path otherwise (N = 5)."""
    ref, fast = _layer_pair(kind, 11, 13, layers, bidirectional, batch_first, dtype)
    D = 2 if bidirectional else 1
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*((N, T, 11) if batch_first else (T, N, 11)), dtype=dtype, generator=gen)
    h = torch.randn(layers * D, N, 13, dtype=dtype, generator=gen)
    hx = (h, torch.randn(h.shape, dtype=dtype, generator=gen)) if kind == "LSTM" else h
    with torch.inference_mode():
        want = _flat_out(ref(x, hx))
        got = _flat_out(fast(x, hx))
        got_default = _flat_out(fast(x))
        want_default = _flat_out(ref(x))
    assert step_calls["n"] == (2 * layers * D if fastpath.steps_pay(T, N) else 0)
    op_path()
    with torch.inference_mode():
        via_ops = _flat_out(fast(x, hx))
    tol = _tol(dtype)
    _assert_all_close(got, want, tol)
    _assert_all_close(got, via_ops, tol)
    _assert_all_close(got_default, want_default, tol)


def _flat_out(res):
    y, hn = res
    return [y] + (list(hn) if isinstance(hn, tuple) else [hn])


@pytest.mark.parametrize("case", ["grad", "long", "unbatched"])
def test_short_sequence_where_it_applies(case, step_calls):
    ref, fast = _layer_pair("LSTM", 3, 4, 1, True, False, F64)
    if case == "grad":  # autograd needs the op path (saved activations)
        x = torch.randn(3, 2, 3, dtype=F64, requires_grad=True)
        fast(x)[0].sum().backward()
        assert step_calls["n"] == 0 and x.grad is not None
    elif case == "long":
        with torch.no_grad():
            fast(torch.randn(fastpath.MAX_STEPS + 1, 1, 3, dtype=F64))
        assert step_calls["n"] == 0
    else:
        x = torch.randn(5, 3, dtype=F64)
        with torch.no_grad():
            got, want = _flat_out(fast(x)), _flat_out(ref(x))
        _assert_all_close(got, want, _tol(F64))
        assert step_calls["n"] == 2


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
@pytest.mark.parametrize("N", [3, 9])
def test_kernel_steps_both_paths(kind, N):
    """The multi-step kernel entry on its dot-product (N <= 4) and packed (N > 4) paths,
    in both directions, against torch.nn."""
    from fastrnn.backends import cpu
    mode = {"LSTM": "LSTM", "GRU": "GRU"}.get(kind, "RNN")
    kw = {"nonlinearity": "relu"} if kind == "RNN_RELU" else {}
    torch.manual_seed(0)
    ref = getattr(torch.nn, mode)(6, 20, bidirectional=True, dtype=F64, **kw)
    x = torch.randn(5, N, 6, dtype=F64)
    h0 = torch.randn(2, N, 20, dtype=F64)
    c0 = torch.randn(2, N, 20, dtype=F64)
    with torch.no_grad():
        y, hn = ref(x, (h0, c0) if mode == "LSTM" else h0)
        for d, sfx in ((0, ""), (1, "_reverse")):
            w = [getattr(ref, f"{n}_l0{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            yd, cn = cpu.cell_forward_seq(cpu.CELL_KINDS[kind], x, h0[d].contiguous(),
                                          c0[d].contiguous() if mode == "LSTM" else None,
                                          *w, reverse=bool(d))
            torch.testing.assert_close(yd, y[..., d * 20:(d + 1) * 20])
            if mode == "LSTM":
                torch.testing.assert_close(cn, hn[1][d])


@pytest.mark.parametrize("T,N", [(1, 1), (3, 2), (200, 1), (3, 40)])
def test_kernels_flush_denormals_and_restore_the_callers_mode(T, N):
    """Denormal inputs count as zero inside the CPU kernels (x86 FTZ/DAZ, which keeps
    vanishing gradients from running many times slower) and the caller's floating-point mode is
    restored afterwards."""
    tiny = 1e-39  # a float32 denormal
    layer = fastrnn.RNN(1, 1, bias=False, nonlinearity="relu")  # relu(denormal) != 0
    with torch.no_grad():
        layer.weight_ih_l0.fill_(1.0)
        layer.weight_hh_l0.fill_(0.0)
        y = layer(torch.full((T, N, 1), tiny))[0]
    assert layer.last_backend == "cpu"
    assert torch.all(y == 0)  # relu(0 * 0 + 1 * denormal) computed as relu(0)
    assert float(torch.tensor([tiny]) * 1.0) != 0.0  # this thread's mode is back


def _tiny_product():
    """A [64, 64] GEMM whose every product is a float32 denormal (1e-25 * 1e-16) and whose
    sums stay denormal: all zero where the running thread flushes denormals."""
    a = torch.full((64, 256), 1e-25)
    b = torch.full((256, 64), 1e-16)
    return a @ b


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 FTZ/DAZ")
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_backward_gemms_flush_denormals_in_every_torch_thread(threads):
    """fastrnn's backward runs its GEMMs with denormals flushed in every thread of torch's
    team (their products would otherwise be denormals), and restores each thread's mode."""
    from fastrnn.backends import cpu
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert _tiny_product().abs().min() > 0  # denormals, every entry (every thread)
        with cpu.DenormalsFlushed():
            assert torch.all(_tiny_product() == 0)
            with cpu.DenormalsFlushed():  # nests
                assert torch.all(_tiny_product() == 0)
            assert torch.all(_tiny_product() == 0)
        assert _tiny_product().abs().min() > 0  # every thread's mode is back
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "PeepholeLSTM"])
def test_sequence_backward_runs_with_denormals_flushed(kind, monkeypatch):
    from fastrnn.backends import cpu
    calls = []
    real = cpu._C.team_flush_denormals
    monkeypatch.setattr(cpu._C, "team_flush_denormals",
                        lambda threads, on: (calls.append(on), real(threads, on)))
    layer = getattr(fastrnn, kind)(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    out = layer(x)[0]
    assert calls == []
    out.sum().backward()
    assert layer.last_backend == "cpu"
    # the op's backward and the input projection's, each entered and left
    assert calls.count(True) == calls.count(False) >= 2 and calls[0] is True
    assert _tiny_product().abs().min() > 0


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("N", [3, 40])
def test_packed_inference_runs_fused_steps_with_lengths(kind, N, monkeypatch):
    """PackedSequence inference (per-sequence lengths) runs the fused steps, the state frozen
    past each sequence's end: outputs and final states equal torch.nn's packed ones."""
    n_steps = _count_calls(monkeypatch, "steps")
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(5, 6, num_layers=2, bidirectional=True, dtype=F64)
    fast = getattr(fastrnn, kind)(5, 6, num_layers=2, bidirectional=True, dtype=F64)
    fast.load_state_dict(ref.state_dict())
    lengths = torch.randint(1, 10, (N,), generator=torch.Generator().manual_seed(1))
    lengths[0] = 9
    x = torch.randn(9, N, 5, dtype=F64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.no_grad():
        ours, theirs = fast(packed), ref(packed)
    assert n_steps["n"] == 4  # 2 layers x 2 directions
    torch.testing.assert_close(ours[0].data, theirs[0].data)
    for a, b in zip(ours[1] if kind == "LSTM" else (ours[1],),
                    theirs[1] if kind == "LSTM" else (theirs[1],)):
        torch.testing.assert_close(a, b)
