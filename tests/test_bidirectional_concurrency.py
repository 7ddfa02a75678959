"""With FASTRNN_CONCURRENT_DIRECTIONS=1 the compiled CPU backend runs the two directions
of a bidirectional layer at once in inference (fastrnn.functional._both_directions). Same
answers as torch.nn, and the path really runs; without the variable it never runs."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import backends, functional

pytestmark = pytest.mark.skipif("cpu" not in backends.available_backends(),
                                reason="compiled CPU backend not available")


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def spy(monkeypatch):
    monkeypatch.setenv(functional.CONCURRENT_ENV, "1")
    calls = []
    real = functional._both_directions

    def wrapped(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(functional, "_both_directions", wrapped)
    return calls


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("grad_mode", ["inference_mode", "no_grad"])
def test_concurrent_directions_match_torch(mode, grad_mode, two_threads, spy):
    torch.manual_seed(0)
    kwargs = dict(num_layers=2, bidirectional=True, batch_first=True)
    if mode == "LSTM":
        kwargs["proj_size"] = 5
    ref = getattr(torch.nn, mode)(6, 11, **kwargs).double()
    fast = getattr(fastrnn, mode)(6, 11, backend="cpu", **kwargs).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 13, 6, dtype=torch.float64)
    ctx = torch.inference_mode if grad_mode == "inference_mode" else torch.no_grad
    with ctx():
        want, got = ref(x), fast(x)
    torch.testing.assert_close(got[0], want[0], rtol=1e-9, atol=1e-10)
    for g, w in zip(*(s if isinstance(s, tuple) else (s,) for s in (got[1], want[1]))):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)
    assert spy == [mode if mode != "RNN" else "RNN_TANH"] * 2  # both layers took the path
    assert not torch.is_inference_mode_enabled()


def test_packed_concurrent_matches_torch(two_threads, spy):
    torch.manual_seed(1)
    ref = torch.nn.GRU(4, 7, bidirectional=True).double()
    fast = fastrnn.GRU(4, 7, bidirectional=True, backend="cpu").double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(8, 5, 4, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([8, 3, 5, 1, 8]), enforce_sorted=False)
    with torch.inference_mode():
        (want, wh), (got, gh) = ref(packed), fast(packed)
    torch.testing.assert_close(got.data, want.data, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gh, wh, rtol=1e-9, atol=1e-10)
    assert spy == ["GRU"]


def test_training_runs_directions_in_turn(two_threads, spy):
    fast = fastrnn.LSTM(4, 6, bidirectional=True, backend="cpu")
    y, _ = fast(torch.randn(5, 2, 4, requires_grad=True))
    y.sum().backward()
    assert spy == []  # autograd needs the ordinary path
    assert all(p.grad is not None for p in fast.parameters())


def test_one_thread_runs_directions_in_turn(spy):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            fastrnn.RNN(4, 6, bidirectional=True, backend="cpu")(torch.randn(5, 2, 4))
    finally:
        torch.set_num_threads(old)
    assert spy == []


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_inference_outputs_survive_later_calls(mode):
    """Inference reuses one projection buffer per thread; what a call returned must not
    change when the next call (other shape, other mode) reuses that buffer."""
    torch.manual_seed(2)
    ref = getattr(torch.nn, mode)(5, 8, bidirectional=True)
    fast = getattr(fastrnn, mode)(5, 8, bidirectional=True)
    fast.load_state_dict(ref.state_dict())
    x1, x2 = torch.randn(7, 3, 5), torch.randn(4, 2, 5)
    with torch.inference_mode():
        first = fast(x1)[0]
        kept = first.clone()
        fast(x2)
        fast(x1 * 2)
    with torch.no_grad():
        fast(x2)
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    torch.testing.assert_close(first, ref(x1)[0].detach(), rtol=1e-5, atol=1e-6)


def test_off_by_default(two_threads, monkeypatch):
    calls = []
    real = functional._both_directions
    monkeypatch.delenv(functional.CONCURRENT_ENV, raising=False)
    monkeypatch.setattr(functional, "_both_directions",
                        lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    fast = fastrnn.GRU(4, 7, bidirectional=True, backend="cpu")
    with torch.inference_mode():
        fast(torch.randn(5, 2, 4))
    assert calls == []
