"""Losses that use only part of a layer's outputs (only c_n, only h_n, only the output
sequence): the ops do not materialise zero gradients for unused outputs (autograd hands
them None), so every combination must still give torch.nn's gradients."""
import pytest
import torch

from rnn_cases import assert_close, make_pair

LOSSES = {
    "output": lambda out, hn, cn: out.pow(2).sum(),
    "h_n": lambda out, hn, cn: (hn * 3).sum(),
    "c_n": lambda out, hn, cn: cn.sin().sum(),
    "h_n+c_n": lambda out, hn, cn: hn.sum() + cn.pow(2).sum(),
}


def _run(mod, x, h0, c0, kind, loss):
    hx = (h0, c0) if kind == "LSTM" else h0
    out, h = mod(x, hx)
    hn, cn = h if kind == "LSTM" else (h, None)
    value = loss(out, hn, cn)
    leaves = [x, h0] + ([c0] if kind == "LSTM" else []) + list(mod.parameters())
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    return [torch.zeros_like(l) if g is None else g for g, l in zip(grads, leaves)]


@pytest.mark.parametrize("kind,loss", [("LSTM", k) for k in LOSSES] +
                         [(k, l) for k in ("GRU", "RNN_TANH", "RNN_RELU") for l in ("output", "h_n")])
@pytest.mark.parametrize("bidir", [False, True])
def test_partial_losses_match_torch(cpu_backend, kind, loss, bidir):
    ref, mod = make_pair(kind, 4, 6, backend=cpu_backend, num_layers=2, bidirectional=bidir)
    g = torch.Generator().manual_seed(7)
    D = 2 if bidir else 1
    x = torch.randn(5, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    h0 = torch.randn(2 * D, 3, 6, dtype=torch.float64, generator=g, requires_grad=True)
    c0 = torch.randn(2 * D, 3, 6, dtype=torch.float64, generator=g, requires_grad=True)
    expected = _run(ref, x, h0, c0, kind, LOSSES[loss])
    actual = _run(mod, x, h0, c0, kind, LOSSES[loss])
    assert mod.last_backend == cpu_backend
    for a, e in zip(actual, expected):
        assert_close(a, e, torch.float64, what=f"{kind} {loss}")
