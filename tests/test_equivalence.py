"""fastrnn.LSTM/GRU/RNN against torch.nn: outputs, final states and the gradients of the
input, the initial states and every parameter, over a pairwise grid of configurations,
for every available CPU backend (the test asserts that backend is the one that ran)."""
import pytest
import torch

import fastrnn
from rnn_cases import KINDS, assert_close, case_id, make_pair, pairwise

INPUT_SIZE, HIDDEN_SIZE, PROJ_SIZE = 3, 5, 2

GRID = pairwise(
    {
        "kind": list(KINDS),
        "layers": [1, 2, 3],
        "bidir": [False, True],
        "batch_first": [False, True],
        "bias": [True, False],
        "proj": [False, True],
        "hx": [False, True],
        "T": [1, 2, 7],
        "N": [1, 3],
        "dtype": [torch.float64, torch.float32],
    },
    valid=lambda c: not c["proj"] or c["kind"] == "LSTM",
)
# Plus the "everything on" configuration for every kind and dtype.
GRID += [dict(kind=k, layers=2, bidir=True, batch_first=False, bias=True, proj=False,
              hx=True, T=5, N=3, dtype=dt)
         for k in KINDS for dt in (torch.float64, torch.float32)]
GRID += [dict(kind="LSTM", layers=2, bidir=True, batch_first=True, bias=True, proj=True,
              hx=True, T=5, N=3, dtype=dt) for dt in (torch.float64, torch.float32)]


def _inputs(case, generator):
    dtype = case["dtype"]
    T, N = case["T"], case["N"]
    shape = (N, T, INPUT_SIZE) if case["batch_first"] else (T, N, INPUT_SIZE)
    x = torch.randn(shape, dtype=dtype, generator=generator, requires_grad=True)
    hx = None
    if case["hx"]:
        D = 2 if case["bidir"] else 1
        R = PROJ_SIZE if case["proj"] else HIDDEN_SIZE
        h0 = torch.randn(case["layers"] * D, N, R, dtype=dtype, generator=generator,
                         requires_grad=True)
        if case["kind"] == "LSTM":
            c0 = torch.randn(case["layers"] * D, N, HIDDEN_SIZE, dtype=dtype,
                             generator=generator, requires_grad=True)
            hx = (h0, c0)
        else:
            hx = h0
    return x, hx


def _hx_leaves(hx):
    if hx is None:
        return []
    return list(hx) if isinstance(hx, tuple) else [hx]


@pytest.mark.parametrize("case", GRID, ids=[case_id(c) for c in GRID])
def test_matches_torch_nn(case, cpu_backend):
    gen = torch.Generator().manual_seed(1234)
    torch.manual_seed(0)
    ref, fast = make_pair(
        case["kind"], INPUT_SIZE, HIDDEN_SIZE, backend=cpu_backend, dtype=case["dtype"],
        num_layers=case["layers"], bidirectional=case["bidir"],
        batch_first=case["batch_first"], bias=case["bias"],
        **({"proj_size": PROJ_SIZE} if case["proj"] else {}))
    x, hx = _inputs(case, gen)

    out_ref, h_ref = ref(x, hx)
    out_fast, h_fast = fast(x, hx)
    assert fast.last_backend == cpu_backend

    dtype = case["dtype"]
    assert out_fast.shape == out_ref.shape
    assert_close(out_fast, out_ref, dtype, "output")
    states_ref = list(h_ref) if isinstance(h_ref, tuple) else [h_ref]
    states_fast = list(h_fast) if isinstance(h_fast, tuple) else [h_fast]
    for i, (a, b) in enumerate(zip(states_fast, states_ref)):
        assert a.shape == b.shape
        assert_close(a, b, dtype, f"final state {i}")

    # One random cotangent for every output, so all paths carry gradient.
    outs_ref = [out_ref] + states_ref
    outs_fast = [out_fast] + states_fast
    cots = [torch.randn(o.shape, dtype=dtype, generator=gen) for o in outs_ref]
    leaves_ref = [x] + _hx_leaves(hx) + list(ref.parameters())
    leaves_fast = [x] + _hx_leaves(hx) + list(fast.parameters())
    g_ref = torch.autograd.grad(outs_ref, leaves_ref, cots)
    g_fast = torch.autograd.grad(outs_fast, leaves_fast, cots)
    names = ["input"] + [f"hx[{i}]" for i in range(len(_hx_leaves(hx)))] + \
        [n for n, _ in fast.named_parameters()]
    for name, a, b in zip(names, g_fast, g_ref):
        assert_close(a, b, dtype, f"grad of {name}")


CUDA_BACKENDS = [b for b in ("cuda", "reference")
                 if torch.cuda.is_available() and b in fastrnn.available_backends()]
CUDA_GRID = [c for c in GRID if c["layers"] == 2 and c["bidir"] and c["T"] == 5]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", CUDA_BACKENDS or ["cuda"])
@pytest.mark.parametrize("case", CUDA_GRID, ids=[case_id(c) for c in CUDA_GRID])
def test_matches_torch_nn_cuda(case, backend):
    """The same comparison on the GPU (torch.nn there is cuDNN; TF32 off)."""
    gen = torch.Generator().manual_seed(1234)
    torch.manual_seed(0)
    ref, fast = make_pair(
        case["kind"], INPUT_SIZE, HIDDEN_SIZE, backend=backend, dtype=case["dtype"],
        num_layers=case["layers"], bidirectional=case["bidir"],
        batch_first=case["batch_first"], bias=case["bias"],
        **({"proj_size": PROJ_SIZE} if case["proj"] else {}))
    ref, fast = ref.cuda(), fast.cuda()
    x, hx = _inputs(case, gen)
    x = x.detach().cuda().requires_grad_()
    if hx is not None:
        hx = tuple(h.detach().cuda().requires_grad_() for h in _hx_leaves(hx))
        hx = hx if case["kind"] == "LSTM" else hx[0]
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        out_ref, h_ref = ref(x, hx)
    out_fast, h_fast = fast(x, hx)
    assert fast.last_backend == backend
    outs_ref = [out_ref] + (list(h_ref) if isinstance(h_ref, tuple) else [h_ref])
    outs_fast = [out_fast] + (list(h_fast) if isinstance(h_fast, tuple) else [h_fast])
    dtype = case["dtype"]
    for a, b in zip(outs_fast, outs_ref):
        assert_close(a, b, dtype, "cuda output", scaled=True)
    cots = [torch.randn(o.shape, dtype=dtype, generator=gen).cuda() for o in outs_ref]
    leaves_ref = [x] + _hx_leaves(hx) + list(ref.parameters())
    leaves_fast = [x] + _hx_leaves(hx) + list(fast.parameters())
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        g_ref = torch.autograd.grad(outs_ref, leaves_ref, cots)
    g_fast = torch.autograd.grad(outs_fast, leaves_fast, cots)
    for a, b in zip(g_fast, g_ref):
        assert_close(a, b, dtype, "cuda grad", scaled=True)
