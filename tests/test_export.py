"""Deployment of models with fastrnn layers: ONNX export (both exporters) to the standard
RNN/LSTM/GRU operators, run by onnxruntime; torch.jit.trace round trips; torch.func
transforms. The modules run torch.nn's own forward while traced or exported, on the same
parameters, so the exported graph is what torch.nn's layers export to."""
import io
import warnings

import pytest
import torch

import fastrnn

F32, F64 = torch.float32, torch.float64


class _Seq(torch.nn.Module):
    """Output and final state(s) of a layer, as plain tensors (what an exporter returns)."""

    def __init__(self, rnn, with_state):
        super().__init__()
        self.rnn, self.with_state = rnn, with_state

    def forward(self, x, *state):
        if self.with_state:
            hx = tuple(state) if len(state) == 2 else state[0]
            y, hn = self.rnn(x, hx)
        else:
            y, hn = self.rnn(x)
        return (y,) + (hn if isinstance(hn, tuple) else (hn,))


def _model(kind, layers, bidirectional, batch_first, seed=0):
    torch.manual_seed(seed)
    return getattr(fastrnn, kind)(5, 7, num_layers=layers, bidirectional=bidirectional,
                                  batch_first=batch_first).eval()


def _inputs(kind, layers, bidirectional, batch_first, T, N, with_state):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*((N, T, 5) if batch_first else (T, N, 5)), generator=gen)
    if not with_state:
        return (x,)
    D = 2 if bidirectional else 1
    h = torch.randn(layers * D, N, 7, generator=gen)
    return (x, h, torch.randn(layers * D, N, 7, generator=gen)) if kind == "LSTM" else (x, h)


def _onnx_names(kind, n_inputs):
    ins = ["x", "h0", "c0"][:n_inputs]
    outs = ["y", "hn"] + (["cn"] if kind == "LSTM" else [])
    return ins, outs


CONFIGS = [(k, l, d, bf, s) for k in ("LSTM", "GRU", "RNN") for (l, d, bf, s) in
           [(1, False, False, False), (2, True, False, True), (1, True, True, True),
            (2, False, True, False)]]


@pytest.mark.parametrize("kind,layers,bidirectional,batch_first,with_state", CONFIGS)
def test_onnx_export_runs_in_onnxruntime(kind, layers, bidirectional, batch_first, with_state):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    m = _Seq(_model(kind, layers, bidirectional, batch_first), with_state)
    args = _inputs(kind, layers, bidirectional, batch_first, 6, 3, with_state)
    ins, outs = _onnx_names(kind, len(args))
    seq_axis, batch_axis = (1, 0) if batch_first else (0, 1)
    dyn = {"x": {seq_axis: "T", batch_axis: "N"}}
    for name in ins[1:]:
        dyn[name] = {1: "N"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, args, buf, dynamo=False, input_names=ins, output_names=outs,
                          dynamic_axes=dyn)
    ops = {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    assert {"LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN"}[kind] in ops
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    # other batch and sequence sizes than the export's (dynamic axes)
    args = _inputs(kind, layers, bidirectional, batch_first, 9, 2, with_state)
    got = sess.run(None, {n: a.numpy() for n, a in zip(ins, args)})
    with torch.no_grad():
        want = m(*args)
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_onnx_dynamo_export_runs_in_onnxruntime(kind):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    m = _Seq(_model(kind, 1, True, False), False)
    (x,) = _inputs(kind, 1, True, False, 6, 3, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(m, (x,), dynamo=True)
    data = program.model_proto.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = m(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-5, rtol=1e-4)


REG_MODELS = {
    "LayerNormLSTM": lambda: fastrnn.LayerNormLSTM(5, 7, bidirectional=True),
    "LayerNormGRU": lambda: fastrnn.LayerNormGRU(5, 7, num_layers=2),
    "LSTM-zoneout": lambda: fastrnn.LSTM(5, 7, zoneout=(0.2, 0.1), recurrent_dropout=0.3,
                                         weight_drop=0.3),
    "GRU-zoneout": lambda: fastrnn.GRU(5, 7, bidirectional=True, zoneout=0.2),
}


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", list(REG_MODELS))
def test_onnx_export_of_layer_norm_and_regularized_layers(name, dynamo):
    """The LayerNorm layers and the regularisation options export in eval (zoneout its
    expectation, dropout and weight drop nothing) as standard ONNX operators, the steps
    unrolled for the sequence length of the example input; onnxruntime gives the module's
    outputs and final states."""
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    m = _Seq(REG_MODELS[name](), False).eval()
    x = torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            data = torch.onnx.export(m, (x,), dynamo=True).model_proto.SerializeToString()
        else:
            buf = io.BytesIO()
            torch.onnx.export(m, (x,), buf, dynamo=False, input_names=["x"])
            data = buf.getvalue()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = m(x)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_trace_and_export(kind):
    torch.manual_seed(0)
    cell = getattr(fastrnn, kind)(5, 7).eval()
    x, h = torch.randn(3, 5), torch.randn(3, 7)
    hx = (h, torch.randn(3, 7)) if kind == "LSTMCell" else h
    traced = torch.jit.trace(cell, (x, hx))
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    with torch.no_grad():
        want = cell(x, hx)
        got = loaded(x, hx)
    for g, w in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("kind,layers,bidirectional,batch_first,with_state", CONFIGS[:6])
def test_jit_trace_save_load_round_trip(kind, layers, bidirectional, batch_first, with_state):
    m = _Seq(_model(kind, layers, bidirectional, batch_first), with_state)
    args = _inputs(kind, layers, bidirectional, batch_first, 6, 3, with_state)
    traced = torch.jit.trace(m, args)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    args = _inputs(kind, layers, bidirectional, batch_first, 4, 3, with_state)
    with torch.no_grad():
        for g, w in zip(loaded(*args), m(*args)):
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_torch_func_grad_vjp_jvp(kind):
    """torch.func over functional_call of a model with a fastrnn layer: the general path
    (the fast path stays out of functorch transforms), same values as torch.nn's."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(4, 5, dtype=F64)
    fast = getattr(fastrnn, kind)(4, 5, dtype=F64)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 2, 4, dtype=F64)
    params = {k: v.detach() for k, v in ref.named_parameters()}

    def loss(mod):
        def f(p, x):
            return torch.func.functional_call(mod, p, (x,))[0].sin().sum()
        return f

    g_ref = torch.func.grad(loss(ref))(params, x)
    g_fast = torch.func.grad(loss(fast))(params, x)
    for k in params:
        torch.testing.assert_close(g_fast[k], g_ref[k])
    _, vjp_ref = torch.func.vjp(lambda x: loss(ref)(params, x), x)
    _, vjp_fast = torch.func.vjp(lambda x: loss(fast)(params, x), x)
    one = torch.ones((), dtype=F64)
    torch.testing.assert_close(vjp_fast(one)[0], vjp_ref(one)[0])
    t = torch.randn_like(x)
    _, jvp_ref = torch.func.jvp(lambda x: loss(ref)(params, x), (x,), (t,))
    _, jvp_fast = torch.func.jvp(lambda x: loss(fast)(params, x), (x,), (t,))
    torch.testing.assert_close(jvp_fast, jvp_ref)


KINDS_KW = [("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3)),
            ("GRU", dict(batch_first=True, bias=False)), ("RNN", dict(nonlinearity="relu")),
            ("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", dict(nonlinearity="relu"))]


@pytest.mark.parametrize("kind,kw", KINDS_KW)
def test_to_torch_and_from_torch(kind, kw):
    fast = getattr(fastrnn, kind)(4, 5, **kw).double().eval()
    ref = fast.to_torch()
    assert type(ref) is getattr(torch.nn, kind) and not ref.training
    assert next(ref.parameters()).dtype == F64
    back = getattr(fastrnn, kind).from_torch(ref, backend="reference")
    assert back.backend == "reference" and not back.training
    for (n1, p1), (n2, p2), (n3, p3) in zip(fast.named_parameters(), ref.named_parameters(),
                                            back.named_parameters()):
        assert n1 == n2 == n3 and torch.equal(p1, p2) and torch.equal(p1, p3)
        assert p1.data_ptr() != p2.data_ptr()  # copies
    x = torch.randn(3, 4, dtype=F64) if kind.endswith("Cell") else torch.randn(2, 3, 4, dtype=F64)
    with torch.no_grad():
        a, b = fast(x), ref(x)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    torch.testing.assert_close(a, b)
    with pytest.raises(TypeError, match="from_torch needs a torch.nn"):
        getattr(fastrnn, kind).from_torch(torch.nn.Linear(2, 2))


def test_quantize_dynamic_through_to_torch():
    model = torch.nn.Sequential(fastrnn.LSTM(4, 5))
    model[0] = model[0].to_torch()
    q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.LSTM}, dtype=torch.qint8)
    assert type(q[0]).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert not isinstance(fastrnn.LSTM(4, 5), torch.nn.LSTM)  # as documented


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_jit_script_cells_share_the_parameters(kind):
    cell = getattr(fastrnn, kind)(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(cell)
    assert scripted.weight_ih.data_ptr() == cell.weight_ih.data_ptr()
    x = torch.randn(2, 3)
    with torch.no_grad():
        a, b = scripted(x), cell(x)
    torch.testing.assert_close(a[0] if isinstance(a, tuple) else a, b[0] if isinstance(b, tuple) else b)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_jit_script_layers_behave_like_torch_nn(kind):
    """torch 2.13 scripts nn.LSTM/GRU/RNN into a module without a usable forward; fastrnn's
    layers script into the very same thing (torch.nn's module on the same parameters)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = torch.jit.script(getattr(fastrnn, kind)(3, 4))
        theirs = torch.jit.script(getattr(torch.nn, kind)(3, 4))
    assert ours.original_name == theirs.original_name == kind
    assert hasattr(ours, "forward") == hasattr(theirs, "forward")


_SECOND_ORDER = [  # kind, extra constructor arguments, packed
    ("LSTM", {}, False), ("LSTM", dict(num_layers=2, bidirectional=True), False),
    ("LSTM", dict(proj_size=3), False), ("LSTM", dict(bidirectional=True), True),
    ("GRU", {}, False), ("GRU", dict(num_layers=2, bidirectional=True), True),
    ("RNN", {}, False), ("RNN", dict(nonlinearity="relu", bidirectional=True), True),
]


def _second_order_case(kind, kw, packed, batch_first=False):
    torch.manual_seed(0)
    layer = getattr(fastrnn, kind)(3, 4, dtype=F64, batch_first=batch_first, **kw)
    x = torch.randn(*((2, 5, 3) if batch_first else (5, 2, 3)), dtype=F64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]

    def run(module, x, *ps):
        inp = x
        if packed:
            inp = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3]),
                                                          batch_first=batch_first)
        out, hn = torch.func.functional_call(module, dict(zip(names, ps)), (inp,)) \
            if ps else module(inp)
        if packed:
            out = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first)[0]
        hn = hn if isinstance(hn, tuple) else (hn,)
        return (out,) + hn
    return layer, x, run


@pytest.mark.parametrize("kind,kw,packed", _SECOND_ORDER)
def test_sequence_double_backward_gradgradcheck(kind, kw, packed):
    """create_graph=True through a whole sequence gives differentiable gradients: float64
    gradgradcheck over the input and every parameter, the fused kernels' path."""
    layer, x, run = _second_order_case(kind, kw, packed)
    assert torch.autograd.gradgradcheck(lambda *a: run(layer, *a), (x,) + tuple(layer.parameters()))
    assert layer.last_backend not in ("torch", "reference")  # fastrnn's kernels ran


@pytest.mark.parametrize("kind,kw,packed", _SECOND_ORDER)
@pytest.mark.parametrize("batch_first", [False, True])
def test_sequence_gradient_penalty_matches_torch_nn(kind, kw, packed, batch_first):
    """A gradient penalty (the gradient's norm, differentiated again) gives torch.nn's
    second-order gradients for the input and every parameter."""
    layer, x, run = _second_order_case(kind, kw, packed, batch_first)
    theirs = layer.to_torch()
    results = []
    for module in (layer, theirs):
        xi = x.detach().clone().requires_grad_()
        outs = run(module, xi)
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=F64).view_as(o)).sum()
                   for o in outs)
        params = list(module.parameters())
        grads = torch.autograd.grad(loss, [xi] + params, create_graph=True)
        penalty = sum((g ** 2).sum() for g in grads)
        results.append(torch.autograd.grad(penalty, [xi] + params))
    for name, a, b in zip(["input"] + [n for n, _ in layer.named_parameters()], *results):
        torch.testing.assert_close(a, b, msg=lambda m: f"{name}: {m}")


def test_backward_op_has_no_derivative_of_its_own():
    T, N, H = 3, 2, 4
    args = [torch.randn(T, N, H, dtype=F64, requires_grad=True), torch.zeros(N, H, dtype=F64),
            torch.randn(H, H, dtype=F64), None, False, False,
            torch.randn(T, N, H, dtype=F64), "reference"]
    dxg, _ = torch.ops.fastrnn.rnn_backward(*args)
    with pytest.raises(RuntimeError, match="first-order.*forward ops"):
        dxg.sum().backward()


def test_torch_func_hessian_of_a_sequence():
    """torch.func's transforms run torch's own op: Hessians match torch.nn's."""
    layer = fastrnn.GRU(3, 4, dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    hess = torch.func.hessian(lambda x: torch.func.functional_call(layer, params, (x,))[0].sum())
    theirs = layer.to_torch()
    want = torch.func.hessian(lambda x: theirs(x)[0].sum())
    torch.testing.assert_close(hess(x[:2]), want(x[:2]))


def test_torch_export_and_aotinductor_package_round_trip(tmp_path):
    """torch.export keeps fastrnn's ops in the program; AOTInductor compiles it into a
    package that loads and runs (in a Python process: fastrnn's ops are Python ops) with the
    eager outputs."""
    torch.manual_seed(0)
    m = fastrnn.LSTM(5, 7, bidirectional=True).eval()
    x = torch.randn(6, 3, 5)
    program = torch.export.export(m, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "fastrnn.lstm_forward.default" in targets
    path = torch._inductor.aoti_compile_and_package(program,
                                                    package_path=str(tmp_path / "lstm.pt2"))
    loaded = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        want = m(x)
    got = loaded(x)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1][0], want[1][0])
    torch.testing.assert_close(got[1][1], want[1][1])
