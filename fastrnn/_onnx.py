"""ONNX export of ``fastrnn.PeepholeLSTM`` (both exporters): each layer becomes the standard ONNX ``LSTM`` operator with its peephole input ``P`` filled, so
onnxruntime (and any ONNX runtime) runs it without fastrnn.

ONNX's LSTM orders the gates i, o, f, c (torch: i, f, g, o) and the peepholes i, o, f
(fastrnn: i, f, o); ``W`` [D, 4H, I], ``R`` [D, 4H, H], ``B`` [D, 8H] (input biases, then
recurrent), ``P`` [D, 3H]; outputs ``Y`` [T, D, N, H], ``Y_h``/``Y_c`` [D, N, H]. Its
equations are the peephole LSTM's: i and f see c_{t-1}, o sees c_t.
"""
import torch
from torch.nn.utils.rnn import PackedSequence

__all__ = ["peephole_lstm"]

_DOMAIN_OP = "::LSTM"  # the default ONNX domain

_ONNX_GATES = (0, 3, 1, 2)  # ONNX gate k is torch gate _ONNX_GATES[k] (i, o, f, c)
_ONNX_PEEPHOLES = (0, 2, 1)  # ONNX peephole k is fastrnn's (i, f, o) index


def _reorder(w, order, H):
    return torch.cat([w[k * H:(k + 1) * H] for k in order], 0)


class _LSTMOperator(torch.autograd.Function):
    """One layer, both directions, as ONNX ``LSTM``. ``forward`` computes what the
    operator computes (the values the tracer sees); ``symbolic`` emits the operator."""

    @staticmethod
    def forward(ctx, x, w, r, b, h0, c0, p, hidden_size, direction):
        H = hidden_size
        ys, hs, cs = [], [], []
        for d in range(w.shape[0]):
            pre_x = x @ w[d].t() + b[d, :4 * H] + b[d, 4 * H:]  # [T, N, 4H], gates i o f c
            h, c = h0[d], c0[d]
            steps = range(x.shape[0] - 1, -1, -1) if d == 1 else range(x.shape[0])
            out = [None] * x.shape[0]
            for t in steps:
                a = pre_x[t] + h @ r[d].t()
                i = torch.sigmoid(a[:, :H] + p[d, :H] * c)
                f = torch.sigmoid(a[:, 2 * H:3 * H] + p[d, 2 * H:] * c)
                c = f * c + i * torch.tanh(a[:, 3 * H:])
                o = torch.sigmoid(a[:, H:2 * H] + p[d, H:2 * H] * c)
                h = o * torch.tanh(c)
                out[t] = h
            ys.append(torch.stack(out))
            hs.append(h)
            cs.append(c)
        return torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)

    @staticmethod
    def symbolic(g, x, w, r, b, h0, c0, p, hidden_size, direction):
        from torch.onnx._internal.torchscript_exporter.symbolic_opset9 import unused
        return g.op("LSTM", x, w, r, b, unused(g), h0, c0, p, hidden_size_i=hidden_size,
                    direction_s=direction, outputs=3)


def peephole_lstm(module, input, hx):
    """``module``'s forward (a PeepholeLSTM) as ONNX LSTM operators, one per layer."""
    name = "PeepholeLSTM ONNX export"
    if isinstance(input, PackedSequence):
        raise RuntimeError(f"{name}: PackedSequence input is not supported; export with a "
                           f"padded tensor")
    if module.proj_size > 0:
        raise RuntimeError(f"{name}: proj_size > 0 is not supported: the ONNX LSTM operator "
                           f"has no projection")
    if not module.bias:
        raise RuntimeError(f"{name}: bias=False is not supported; export a module with "
                           f"bias=True and zero biases")
    batched = input.dim() == 3
    x = input if batched else input.unsqueeze(1)
    if batched and module.batch_first:
        x = x.transpose(0, 1)  # [T, N, I]
    L, D, H = module.num_layers, 2 if module.bidirectional else 1, module.hidden_size
    if hx is None:
        h0 = c0 = x.new_zeros(L * D, x.shape[1], H)
    else:
        h0, c0 = hx
        if not batched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
    hns, cns = [], []
    direction = "bidirectional" if D == 2 else "forward"
    for layer in range(L):
        ws, rs, bs, ps = [], [], [], []
        for d in range(D):
            sfx = f"_l{layer}{'_reverse' if d else ''}"
            p = {n: getattr(module, n + sfx) for n in ("weight_ih", "weight_hh", "bias_ih",
                                                        "bias_hh", "weight_ch")}
            ws.append(_reorder(p["weight_ih"], _ONNX_GATES, H))
            rs.append(_reorder(p["weight_hh"], _ONNX_GATES, H))
            bs.append(torch.cat([_reorder(p["bias_ih"], _ONNX_GATES, H),
                                 _reorder(p["bias_hh"], _ONNX_GATES, H)]))
            ps.append(_reorder(p["weight_ch"], _ONNX_PEEPHOLES, H))
        k = slice(layer * D, (layer + 1) * D)
        args = (x, torch.stack(ws), torch.stack(rs), torch.stack(bs), h0[k], c0[k],
                torch.stack(ps))
        if torch.compiler.is_compiling():  # the dynamo exporter (torch.export)
            T, N = x.shape[0], x.shape[1]
            y, hn, cn = torch.onnx.ops.symbolic_multi_out(
                _DOMAIN_OP, args[:4] + (None,) + args[4:],
                dict(hidden_size=H, direction=direction), dtypes=(x.dtype,) * 3,
                shapes=([T, D, N, H], [D, N, H], [D, N, H]))
        else:  # the TorchScript exporter
            y, hn, cn = _LSTMOperator.apply(*args, H, direction)
        x = y.permute(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], D * H)  # [T, N, D*H]
        hns.append(hn)
        cns.append(cn)
    hn, cn = torch.cat(hns), torch.cat(cns)
    if not batched:
        return x.squeeze(1), (hn.squeeze(1), cn.squeeze(1))
    if module.batch_first:
        x = x.transpose(0, 1)
    return x, (hn, cn)
