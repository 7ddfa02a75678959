"""The CUDA dispatch (fastrnn.backends.cuda_dispatch): its rule read off the measured table,
the setting that forces either side, and the routing in the modules. Without a GPU the
routing is exercised on CPU tensors (the ``applies`` predicate replaced), torch's CPU
implementation standing in for cuDNN; on a GPU it runs for real."""
import pytest
import torch

import fastrnn
from fastrnn.backends import cuda_dispatch as cd

F32, BF16, F16, F64 = torch.float32, torch.bfloat16, torch.float16, torch.float64


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(cd.ENV, raising=False)
    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    fastrnn.set_backend("auto")
    yield
    fastrnn.set_backend("auto")


@pytest.mark.parametrize("mode,dtype,H,side", [
    ("LSTM", F32, 128, "cudnn"), ("GRU", F32, 128, "cudnn"), ("RNN_TANH", F32, 128, "cudnn"),
    ("LSTM", F32, 256, "fastrnn"), ("GRU", F32, 256, "fastrnn"), ("RNN_RELU", F32, 256, "cudnn"),
    ("LSTM", F32, 512, "cudnn"), ("GRU", F32, 1024, "cudnn"), ("RNN_TANH", F32, 512, "cudnn"),
    ("LSTM", BF16, 128, "fastrnn"), ("GRU", BF16, 512, "fastrnn"), ("RNN_TANH", BF16, 64, "fastrnn"),
    ("LSTM", F16, 128, "cudnn"), ("GRU", F64, 256, "cudnn")])
def test_rule_follows_the_table(mode, dtype, H, side):
    got, why = cd.choose(mode, dtype, H)
    assert got == side, why
    assert why


def test_rule_is_faster_side_of_every_nearest_row():
    """Every measured row agrees with the side the rule picks for its own H (nothing
    chosen against a measurement)."""
    for cell, dtype, T, N, I, H, mode, cudnn_ms, fast_ms in cd.MEASURED:
        name = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN_TANH"}[cell]
        side, _ = cd.choose(name, getattr(torch, dtype), H)
        if side == "fastrnn":
            assert fast_ms < cudnn_ms, (cell, dtype, H, mode)


@pytest.mark.parametrize("value,side", [("fastrnn", "fastrnn"), ("cudnn", "cudnn"),
                                        (" CUDNN ", "cudnn"), ("auto", "cudnn")])
def test_setting_forces_either_side(monkeypatch, value, side):
    monkeypatch.setenv(cd.ENV, value)
    assert cd.choose("LSTM", F32, 128)[0] == side


def test_bad_setting_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv(cd.ENV, "fastest")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_DISPATCH"):
        cd.choose("LSTM", F32, 128)


def test_explicit_backend_pins_fastrnn():
    assert cd.routes_to_torch("LSTM", F32, 128, "auto")
    assert cd.routes_to_torch("LSTM", F32, 128, None)
    assert not cd.routes_to_torch("LSTM", F32, 128, "cuda")
    assert not cd.routes_to_torch("LSTM", F32, 128, "reference")
    fastrnn.set_backend("reference")
    assert not cd.routes_to_torch("LSTM", F32, 128, None)


@pytest.fixture
def cpu_as_cuda(monkeypatch):
    """Route CPU tensors through the dispatch (torch's CPU implementation is 'cudnn')."""
    monkeypatch.setattr(cd, "applies", lambda x: True)


@pytest.mark.parametrize("kind,H,side", [("LSTM", 8, "cudnn"), ("GRU", 200, "fastrnn"),
                                         ("RNN", 8, "cudnn")])
def test_modules_route_and_say_why(cpu_as_cuda, kind, H, side):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(3, H, bidirectional=True)
    fast = getattr(fastrnn, kind)(3, H, bidirectional=True)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, requires_grad=True)
    y, _ = fast(x)
    from fastrnn import backends
    assert fast.last_backend == ("cudnn" if side == "cudnn" else backends.resolve("auto", "cpu"))
    assert fast.last_dispatch and ("H=" in fast.last_dispatch)
    y_ref, _ = ref(x)
    torch.testing.assert_close(y, y_ref)
    g = torch.autograd.grad(y.sum(), [x] + list(fast.parameters()))
    g_ref = torch.autograd.grad(y_ref.sum(), [x] + list(ref.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_pinned_module_never_routes(cpu_as_cuda):
    fast = fastrnn.LSTM(3, 8, backend="reference")
    fast(torch.randn(4, 2, 3))
    assert fast.last_backend == "reference"


def test_packed_input_routes_too(cpu_as_cuda):
    fast = fastrnn.GRU(3, 8)
    seq = torch.nn.utils.rnn.pack_sequence([torch.randn(4, 3), torch.randn(2, 3)])
    out, _ = fast(seq)
    assert fast.last_backend == "cudnn"
    assert isinstance(out, torch.nn.utils.rnn.PackedSequence)


def test_cpu_tensors_are_not_dispatched():
    fast = fastrnn.LSTM(3, 8)
    fast(torch.randn(4, 2, 3))
    assert fast.last_backend != "cudnn"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind,H,dtype,side", [("LSTM", 128, F32, "cudnn"),
                                               ("GRU", 256, F32, "cuda"),
                                               ("RNN", 128, BF16, "cuda")])
def test_auto_on_a_gpu_runs_the_side_of_the_table(kind, H, dtype, side):
    """On a GPU: the auto backend runs cuDNN or fastrnn's kernels as the table says, with
    torch.nn's numbers either way (TF32 off)."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(16, H).to("cuda", dtype)
    fast = getattr(fastrnn, kind)(16, H).to("cuda", dtype)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(20, 4, 16, device="cuda", dtype=dtype)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), torch.no_grad():
        want, got = ref(x)[0], fast(x)[0]
    assert fast.last_backend == side, fast.last_dispatch
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == BF16 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.float(), want.float(), **tol)
