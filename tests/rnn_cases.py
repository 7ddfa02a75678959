"""Test helpers (imported by the test files): backends to test, module pairs, tolerances,
pairwise grids. Fixtures live in conftest.py."""
import itertools

import torch

import fastrnn
from fastrnn import backends

# Every backend that runs on CPU tensors and is available here (numba / compiled "cpu"
# join automatically once they import).
CPU_BACKENDS = [b for b in backends.available_backends() if b != "cuda"]
HAS_CUDA = torch.cuda.is_available()

TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-7, atol=1e-9),
}

KINDS = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


def module_classes(kind):
    """(torch.nn class, fastrnn class, extra constructor kwargs) for a cell kind."""
    if kind == "LSTM":
        return torch.nn.LSTM, fastrnn.LSTM, {}
    if kind == "GRU":
        return torch.nn.GRU, fastrnn.GRU, {}
    nl = "tanh" if kind == "RNN_TANH" else "relu"
    return torch.nn.RNN, fastrnn.RNN, {"nonlinearity": nl}


def make_pair(kind, input_size, hidden_size, backend=None, dtype=torch.float64, **kw):
    """A torch.nn module and a fastrnn module with identical weights (strict load)."""
    tcls, fcls, extra = module_classes(kind)
    kw = {**extra, **kw}
    ref = tcls(input_size, hidden_size, dtype=dtype, **kw)
    fast = fcls(input_size, hidden_size, dtype=dtype, backend=backend, **kw)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return ref, fast


def flat(out):
    """Flatten nested (output, hidden) structures into a list of tensors."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        return [out.data]
    res = []
    for o in out:
        res.extend(flat(o))
    return res


def assert_close(actual, expected, dtype, what="", scaled=False):
    """Within TOL[dtype]; ``scaled``: atol times (1 + the largest |expected|), for
    comparisons with cuDNN, whose float32 sums run in another order (its gradients of a
    2-layer bidirectional RNN differ from any float32 step loop's, the reference
    backend's included, by ~2e-5 at magnitudes ~5)."""
    tol = dict(TOL[dtype])
    if scaled and expected.numel():
        tol["atol"] = tol["atol"] * (1 + expected.detach().abs().max().item())
    torch.testing.assert_close(actual, expected, **tol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def pairwise(factors, valid=lambda case: True):
    """A small list of cases covering every feasible pair of factor values (greedy).

    ``factors`` maps name -> list of values; ``valid(case_dict)`` rules out impossible
    combinations (their pairs are then not required either).
    """
    names = list(factors)
    cands = [dict(zip(names, vals)) for vals in itertools.product(*factors.values())]
    cands = [c for c in cands if valid(c)]

    def pairs(c):
        return {((a, c[a]), (b, c[b])) for a, b in itertools.combinations(names, 2)}

    uncovered = set().union(*(pairs(c) for c in cands))
    chosen = []
    while uncovered:
        best = max(cands, key=lambda c: len(pairs(c) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


def case_id(case):
    return "-".join(f"{k}{v}" if not isinstance(v, torch.dtype) else str(v).split(".")[-1]
                    for k, v in case.items())
