"""The peephole LSTM (fastrnn.PeepholeLSTM / PeepholeLSTMCell, fastrnn::peephole_lstm_*):
every CPU backend against an autograd step loop written here from the cell's equations
(outputs, final states, every gradient), zero peepholes against torch.nn.LSTM, gradcheck
and gradgradcheck, opcheck and torch.compile, torch.func and jit.trace, ONNX export (the
standard LSTM operator with P) run by onnxruntime."""
import io
import warnings

import pytest
import torch
from torch.library import opcheck
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from rnn_cases import TOL

F32, F64 = torch.float32, torch.float64


def _oracle(module, x, hx=None, lengths=None):
    """The peephole LSTM from its equations, as a plain autograd step loop over ``module``'s
    parameters; x [T, N, I] time-major; lengths: per-sequence lengths (state frozen after).
    Returns (y [T, N, D*R], h_n, c_n) like torch.nn.LSTM (zeros past each length in y)."""
    L, D, H = module.num_layers, 2 if module.bidirectional else 1, module.hidden_size
    R = module.proj_size or H
    T, N = x.shape[:2]
    if hx is None:
        hx = (x.new_zeros(L * D, N, R), x.new_zeros(L * D, N, H))
    hns, cns = [], []
    for layer in range(L):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}{'_reverse' if d else ''}"
            p = {k: getattr(module, k + sfx, None) for k in (
                "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_ch")}
            h, c = hx[0][layer * D + d], hx[1][layer * D + d]
            ys = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                a = x[t] @ p["weight_ih"].t() + h @ p["weight_hh"].t()
                if p["bias_ih"] is not None:
                    a = a + p["bias_ih"] + p["bias_hh"]
                ai, af, ag, ao = a.chunk(4, 1)
                pi, pf, po = p["weight_ch"].chunk(3)
                i = torch.sigmoid(ai + pi * c)
                f = torch.sigmoid(af + pf * c)
                c_new = f * c + i * torch.tanh(ag)
                o = torch.sigmoid(ao + po * c_new)
                h_new = o * torch.tanh(c_new)
                if p["weight_hr"] is not None:
                    h_new = h_new @ p["weight_hr"].t()
                if lengths is not None:
                    valid = (t < lengths).unsqueeze(1)
                    c_new = torch.where(valid, c_new, c)
                    h_new = torch.where(valid, h_new, h)
                    ys[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
                else:
                    ys[t] = h_new
                h, c = h_new, c_new
            outs.append(torch.stack(ys))
            hns.append(h)
            cns.append(c)
        x = torch.cat(outs, -1)
    return x, torch.stack(hns), torch.stack(cns)


def _module(dtype=F64, seed=0, **kw):
    torch.manual_seed(seed)
    return fastrnn.PeepholeLSTM(5, 6, dtype=dtype, **kw)


CONFIGS = [dict(), dict(num_layers=2, bidirectional=True), dict(proj_size=3),
           dict(bidirectional=True, proj_size=4, num_layers=2), dict(bias=False)]


def _grads(module, x, outs):
    loss = sum((o * torch.linspace(-1, 2, o.numel(), dtype=o.dtype).view_as(o)).sum()
               for o in outs)
    return torch.autograd.grad(loss, [x] + list(module.parameters()))


@pytest.mark.parametrize("kw", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_matches_equations(cpu_backend, kw, dtype):
    module = _module(dtype, **kw)
    module.backend = cpu_backend
    x = torch.randn(7, 3, 5, dtype=dtype, requires_grad=True)
    hx = tuple(torch.randn(s, dtype=dtype) for s in (
        (module.num_layers * (1 + module.bidirectional), 3, module.proj_size or 6),
        (module.num_layers * (1 + module.bidirectional), 3, 6)))
    y, (hn, cn) = module(x, hx)
    assert module.last_backend == cpu_backend
    want = _oracle(module, x, hx)
    names = ["output", "h_n", "c_n"]
    for name, a, b in zip(names, (y, hn, cn), want):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{name}: {m}")
    got_g, want_g = _grads(module, x, (y, hn, cn)), _grads(module, x, want)
    names = ["input"] + [n for n, _ in module.named_parameters()]
    assert any(n.startswith("weight_ch") for n in names)
    for name, a, b in zip(names, got_g, want_g):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_and_batch_first(cpu_backend, batch_first):
    module = _module(F64, num_layers=2, bidirectional=True, batch_first=batch_first,
                     backend=cpu_backend)
    lengths = torch.tensor([7, 2, 5])
    x = torch.randn(7, 3, 5, dtype=F64, requires_grad=True)
    xin = x.transpose(0, 1) if batch_first else x
    packed = pack_padded_sequence(xin, lengths, batch_first=batch_first, enforce_sorted=False)
    out, (hn, cn) = module(packed)
    y, _ = pad_packed_sequence(out, batch_first=batch_first)
    y = y.transpose(0, 1) if batch_first else y
    want = _oracle(module, x, lengths=lengths)
    for a, b in zip((y, hn, cn), want):
        torch.testing.assert_close(a, b, **TOL[F64])
    for a, b in zip(_grads(module, x, (y, hn, cn)), _grads(module, x, want)):
        torch.testing.assert_close(a, b, **TOL[F64])
    with torch.no_grad():  # inference: the fused steps with lengths on the cpu backend
        out, (hn, cn) = module(packed)
    y, _ = pad_packed_sequence(out, batch_first=batch_first)
    y = y.transpose(0, 1) if batch_first else y
    for a, b in zip((y, hn, cn), want):
        torch.testing.assert_close(a, b.detach(), **TOL[F64])


def test_unbatched(cpu_backend):
    module = _module(F64, backend=cpu_backend)
    x = torch.randn(4, 5, dtype=F64)
    y, (hn, cn) = module(x)
    want = _oracle(module, x.unsqueeze(1))
    torch.testing.assert_close(y, want[0].squeeze(1))
    torch.testing.assert_close(hn, want[1].squeeze(1))
    torch.testing.assert_close(cn, want[2].squeeze(1))


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True, proj_size=3)],
                         ids=str)
def test_zero_peepholes_is_torch_lstm(cpu_backend, kw):
    """An nn.LSTM's state_dict with the peepholes at zero: nn.LSTM's outputs and gradients."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 6, dtype=F64, **kw)
    module = fastrnn.PeepholeLSTM.from_torch(lstm, backend=cpu_backend)
    assert all(not p.any() for n, p in module.named_parameters() if n.startswith("weight_ch"))
    x = torch.randn(6, 2, 5, dtype=F64, requires_grad=True)
    ours, theirs = module(x), lstm(x)
    flat = lambda o: [o[0], *o[1]]  # noqa: E731
    for a, b in zip(flat(ours), flat(theirs)):
        torch.testing.assert_close(a, b, **TOL[F64])
    g_ours, g_theirs = _grads(module, x, flat(ours)), _grads(lstm, x, flat(theirs))
    for a, b in zip(g_ours, g_theirs):  # every torch.nn parameter, in torch.nn's order
        torch.testing.assert_close(a, b, **TOL[F64])
    with pytest.raises(RuntimeError, match="weight_ch"):  # strict load names what is missing
        fastrnn.PeepholeLSTM(5, 6, dtype=F64, **kw).load_state_dict(lstm.state_dict())


def test_parameters_and_init():
    module = fastrnn.PeepholeLSTM(5, 8, num_layers=2, bidirectional=True)
    names = [n for n, _ in module.named_parameters()]
    lstm_names = [n for n, _ in torch.nn.LSTM(5, 8, num_layers=2, bidirectional=True)
                  .named_parameters()]
    assert names[:len(lstm_names)] == lstm_names
    assert names[len(lstm_names):] == ["weight_ch_l0", "weight_ch_l0_reverse", "weight_ch_l1",
                                       "weight_ch_l1_reverse"]
    for n in names[len(lstm_names):]:
        w = getattr(module, n)
        assert w.shape == (24,)
        assert w.abs().max() <= 8 ** -0.5 and w.std() > 0.05
    assert not isinstance(module, torch.nn.LSTM)
    with pytest.raises(TypeError, match="no torch.nn counterpart"):
        module.to_torch()


@pytest.mark.parametrize("lengths,reverse", [(None, False), (torch.tensor([4, 1, 3]), True)],
                         ids=["plain", "lengths-rev"])
@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
def test_op_gradcheck(cpu_backend, lengths, reverse, proj):
    T, N, H, R = 4, 3, 4, 3 if proj else 4
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, dtype=F64, generator=gen).requires_grad_()  # noqa: E731
    args = (r(T, N, 4 * H), r(N, R), r(N, H), r(4 * H, R), r(R, H) if proj else None,
            r(3 * H))

    def f(*a):
        return torch.ops.fastrnn.peephole_lstm_forward(*a, lengths, reverse, True,
                                                       cpu_backend)[:2]
    inputs = tuple(a for a in args if a is not None)
    if not proj:
        wrap = lambda xg, h0, c0, w_hh, w_ch: f(xg, h0, c0, w_hh, None, w_ch)  # noqa: E731
    else:
        wrap = f
    assert torch.autograd.gradcheck(wrap, inputs)
    assert torch.autograd.gradgradcheck(wrap, inputs)


@pytest.mark.parametrize("lengths,reverse", [(None, False), (torch.tensor([4, 1, 3]), True)],
                         ids=["plain", "lengths-rev"])
def test_opcheck(lengths, reverse):
    T, N, H = 4, 3, 4
    r = lambda *s: torch.randn(*s, dtype=F64, requires_grad=True)  # noqa: E731
    args = (r(T, N, 4 * H), r(N, H), r(N, H), r(4 * H, H), None, r(3 * H), lengths, reverse,
            True, "reference")
    opcheck(torch.ops.fastrnn.peephole_lstm_forward.default, args)
    y, cn, gates, cs = torch.ops.fastrnn.peephole_lstm_forward(*args)
    d = lambda t: t.detach()  # noqa: E731
    bargs = (torch.randn_like(y), torch.randn_like(cn), d(args[1]), d(args[2]), d(args[3]), None,
             d(args[5]), lengths, reverse, d(y), gates, cs, "reference")
    opcheck(torch.ops.fastrnn.peephole_lstm_backward.default, bargs)


def test_op_checks_peephole_shape():
    T, N, H = 3, 2, 4
    z = torch.zeros
    with pytest.raises(RuntimeError, match="w_ch must have shape \\[12\\]"):
        torch.ops.fastrnn.peephole_lstm_forward(z(T, N, 4 * H), z(N, H), z(N, H), z(4 * H, H),
                                                None, z(4 * H), None, False, False, "reference")


def test_torch_compile_fullgraph():
    module = _module(F32, num_layers=2, bidirectional=True)
    x = torch.randn(6, 2, 5, requires_grad=True)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    want = module(x)
    torch.testing.assert_close(got[0], want[0])
    g1 = torch.autograd.grad(got[0].sum(), [x] + list(module.parameters()))
    g2 = torch.autograd.grad(want[0].sum(), [x] + list(module.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_double_backward_of_a_sequence():
    module = _module(F64, bidirectional=True)
    x = torch.randn(4, 2, 5, dtype=F64, requires_grad=True)
    names = [n for n, _ in module.named_parameters()]

    def f(x, *ps):
        y, (h, c) = torch.func.functional_call(module, dict(zip(names, ps)), (x,))
        return y, h, c
    # functional_call outside a transform: the module's own kernels (not torch ops)
    f(x, *module.parameters())
    assert module.last_backend not in ("torch", "reference")
    assert torch.autograd.gradgradcheck(f, (x,) + tuple(module.parameters()))


def test_torch_func_grad_and_trace():
    module = _module(F32, num_layers=2, bidirectional=True).eval()
    x = torch.randn(6, 3, 5)
    params = {k: v.detach() for k, v in module.named_parameters()}
    g = torch.func.grad(lambda p: torch.func.functional_call(module, p, (x,))[0].sum())(params)
    module.zero_grad()
    module(x)[0].sum().backward()
    for k, p in module.named_parameters():
        torch.testing.assert_close(g[k], p.grad)
    traced = torch.jit.trace(module, (x,))
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x2 = torch.randn(9, 4, 5)  # another length and batch: the trace holds the op, not a loop
    torch.testing.assert_close(loaded(x2)[0], module(x2)[0])


def test_cell_matches_equations_and_torch(cpu_backend):
    torch.manual_seed(0)
    cell = fastrnn.PeepholeLSTMCell(5, 6, dtype=F64, backend=cpu_backend)
    assert [n for n, _ in cell.named_parameters()] == [
        "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ch"]
    x = torch.randn(3, 5, dtype=F64, requires_grad=True)
    h, c = torch.randn(3, 6, dtype=F64), torch.randn(3, 6, dtype=F64)
    h1, c1 = cell(x, (h, c))
    a = x @ cell.weight_ih.t() + cell.bias_ih + h @ cell.weight_hh.t() + cell.bias_hh
    ai, af, ag, ao = a.chunk(4, 1)
    pi, pf, po = cell.weight_ch.chunk(3)
    i, f = torch.sigmoid(ai + pi * c), torch.sigmoid(af + pf * c)
    c_want = f * c + i * torch.tanh(ag)
    h_want = torch.sigmoid(ao + po * c_want) * torch.tanh(c_want)
    torch.testing.assert_close(h1, h_want)
    torch.testing.assert_close(c1, c_want)
    g1 = torch.autograd.grad((h1 * h1).sum() + c1.sum(), [x] + list(cell.parameters()))
    g2 = torch.autograd.grad((h_want * h_want).sum() + c_want.sum(),
                             [x] + list(cell.parameters()))
    for a_, b_ in zip(g1, g2):
        torch.testing.assert_close(a_, b_)
    # unbatched, no state; zero peepholes is nn.LSTMCell
    ref = torch.nn.LSTMCell(5, 6, dtype=F64)
    zero = fastrnn.PeepholeLSTMCell.from_torch(ref, backend=cpu_backend)
    for a_, b_ in zip(zero(x[0]), ref(x[0])):
        torch.testing.assert_close(a_, b_)


def test_clear_errors():
    module = _module(F32)
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        module(torch.randn(3, 2, 4))
    with pytest.raises(ValueError, match="backend must be"):
        fastrnn.PeepholeLSTM(5, 6, backend="gpu")
    with pytest.raises(TypeError, match="needs a torch.nn.LSTM"):
        fastrnn.PeepholeLSTM.from_torch(torch.nn.GRU(5, 6))
    cell = fastrnn.PeepholeLSTMCell(5, 6)
    with pytest.raises(RuntimeError, match="weight_ch must have shape \\[18\\]"):
        fastrnn.functional.peephole_lstm_cell(torch.randn(2, 5), None, cell.weight_ih,
                                              cell.weight_hh, torch.zeros(6))


def test_peephole_backend_choice(monkeypatch):
    """A backend without peephole kernels: "auto" runs the reference, a pinned one errs."""
    from fastrnn import backends, functional
    monkeypatch.setattr(backends, "has_peepholes", lambda name: name == "reference")
    x = torch.randn(3, 2, 5)
    assert functional.resolve_backend("auto", x, peephole=True) == "reference"
    pinned = [b for b in backends.available_backends() if b != "reference"]
    if pinned:
        with pytest.raises(ValueError, match="no peephole LSTM kernels"):
            functional.resolve_backend(pinned[0], x, peephole=True)



@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True, batch_first=True)],
                         ids=str)
def test_onnx_export_runs_in_onnxruntime(dynamo, kw):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    module = _module(F32, **kw).eval()
    bf = module.batch_first
    x = torch.randn(3, 7, 5) if bf else torch.randn(7, 3, 5)
    h0 = torch.randn(module.num_layers * (1 + module.bidirectional), 3, 6)
    c0 = torch.randn_like(h0)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, x, h0, c0):
            y, (h, c) = self.m(x, (h0, c0))
            return y, h, c

    ax = {0: "N", 1: "T"} if bf else {0: "T", 1: "N"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            T, N = torch.export.Dim("T", min=2), torch.export.Dim("N", min=2)
            shapes = ({0: N, 1: T} if bf else {0: T, 1: N}, {1: N}, {1: N})
            data = torch.onnx.export(Wrap(), (x, h0, c0), dynamo=True,
                                     dynamic_shapes=shapes).model_proto.SerializeToString()
        else:
            buf = io.BytesIO()
            torch.onnx.export(Wrap(), (x, h0, c0), buf, dynamo=False,
                              input_names=["x", "h0", "c0"], output_names=["y", "h", "c"],
                              dynamic_axes={"x": ax, "y": ax, "h0": {1: "N"}, "c0": {1: "N"},
                                            "h": {1: "N"}, "c": {1: "N"}})
            data = buf.getvalue()
    model = onnx.load_from_string(data)
    lstms = [n for n in model.graph.node if n.op_type == "LSTM"]
    assert len(lstms) == module.num_layers
    assert all(len(n.input) == 8 and n.input[7] for n in lstms)  # P is filled
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x2 = torch.randn(4, 9, 5) if bf else torch.randn(9, 4, 5)  # other T and N
    h2, c2 = torch.randn(h0.shape[0], 4, 6), torch.randn(h0.shape[0], 4, 6)
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, dict(zip(names, (x2.numpy(), h2.numpy(), c2.numpy()))))
    y, (h, c) = module(x2, (h2, c2))
    for a, b in zip(got, (y, h, c)):
        torch.testing.assert_close(torch.from_numpy(a), b.detach(), rtol=1e-4, atol=1e-5)


def test_onnx_export_limits_are_clear_errors():
    module = _module(F32, proj_size=3).eval()
    with pytest.raises(Exception, match="proj_size > 0 is not supported"):
        torch.onnx.export(module, (torch.randn(4, 2, 5),), io.BytesIO(), dynamo=False)


@pytest.mark.parametrize("T,N", [(1, 1), (1, 5), (6, 2), (6, 33)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_step_by_step_paths(cpu_backend, T, N, batch_first):
    """One-step calls (fused cell steps, with autograd) and inference over short or wide
    sequences (fused steps in one call) give the equations' numbers."""
    module = _module(F64, num_layers=2, bidirectional=True, batch_first=batch_first,
                     backend=cpu_backend)
    x = torch.randn(T, N, 5, dtype=F64, requires_grad=True)
    hx = (torch.randn(4, N, 6, dtype=F64), torch.randn(4, N, 6, dtype=F64))
    want = _oracle(module, x, hx)
    with torch.no_grad():
        y, (hn, cn) = module(x.transpose(0, 1) if batch_first else x, hx)
    y = y.transpose(0, 1) if batch_first else y
    for a, b in zip((y, hn, cn), want):
        torch.testing.assert_close(a, b.detach(), **TOL[F64])
    y, (hn, cn) = module(x.transpose(0, 1) if batch_first else x, hx)
    y = y.transpose(0, 1) if batch_first else y
    for a, b in zip(_grads(module, x, (y, hn, cn)), _grads(module, x, want)):
        torch.testing.assert_close(a, b, **TOL[F64])


@pytest.mark.parametrize("N", [1, 7])
def test_cell_double_backward(cpu_backend, N):
    cell = fastrnn.PeepholeLSTMCell(4, 5, dtype=F64, backend=cpu_backend)
    x = torch.randn(N, 4, dtype=F64, requires_grad=True)
    h = torch.randn(N, 5, dtype=F64, requires_grad=True)
    c = torch.randn(N, 5, dtype=F64, requires_grad=True)
    names = [n for n, _ in cell.named_parameters()]

    def f(x, h, c, *ps):
        return torch.func.functional_call(cell, dict(zip(names, ps)), (x, (h, c)))
    assert torch.autograd.gradcheck(f, (x, h, c) + tuple(cell.parameters()))
    assert torch.autograd.gradgradcheck(f, (x, h, c) + tuple(cell.parameters()))
