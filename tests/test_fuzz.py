"""Randomised shapes (hypothesis): every CPU backend's layers against the reference backend
(the oracle of the backend contract) over random T, N, H, layers, directions, lengths,
dtypes and cell kinds, outputs, final states and every gradient."""
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

import fastrnn  # noqa: E402
from rnn_cases import CPU_BACKENDS, TOL  # noqa: E402

KINDS = ("LSTM", "GRU", "RNN", "PeepholeLSTM")
FAST = [b for b in CPU_BACKENDS if b != "reference"]


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(KINDS))
    T = draw(st.integers(1, 9))
    N = draw(st.integers(1, 6))
    lengths = None
    if draw(st.booleans()):
        lengths = draw(st.lists(st.integers(1, T), min_size=N, max_size=N))
    return dict(
        kind=kind, T=T, N=N, I=draw(st.integers(1, 7)), H=draw(st.integers(1, 20)),
        layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])), lengths=lengths,
        seed=draw(st.integers(0, 2 ** 16)))


def _run(case, backend):
    torch.manual_seed(case["seed"])
    cls = getattr(fastrnn, case["kind"])
    m = cls(case["I"], case["H"], num_layers=case["layers"], bidirectional=case["bidirectional"],
            dtype=case["dtype"], backend=backend)
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    x = torch.randn(case["T"], case["N"], case["I"], dtype=case["dtype"], generator=gen,
                    requires_grad=True)
    inp = x
    if case["lengths"] is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(case["lengths"]),
                                                      enforce_sorted=False)
    out, h = m(inp)
    if case["lengths"] is not None:
        out = torch.nn.utils.rnn.pad_packed_sequence(out)[0]
    outs = [out] + (list(h) if isinstance(h, tuple) else [h])
    loss = sum((o * torch.cos(torch.arange(o.numel(), dtype=o.dtype)).view_as(o)).sum()
               for o in outs)
    grads = torch.autograd.grad(loss, [x] + list(m.parameters()))
    return outs, grads


@pytest.mark.skipif(not FAST, reason="no compiled or numba backend here")
@settings(max_examples=40, deadline=None, derandomize=True)
@given(case=cases())
def test_backends_agree_with_the_reference_on_random_shapes(case):
    want_outs, want_grads = _run(case, "reference")
    tol = {torch.float32: dict(rtol=2e-4, atol=2e-5), torch.float64: TOL[torch.float64]}[case["dtype"]]
    for backend in FAST:
        outs, grads = _run(case, backend)
        for a, b in zip(outs + list(grads), want_outs + list(want_grads)):
            torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{backend} {case}: {m}")
