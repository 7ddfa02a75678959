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
    for cell, dtype, T, N, I, H, mode, cudnn_ms, fast_ms in cd.MEASURED_PACKED:
        name = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN_TANH"}[cell]
        side, why = cd.choose(name, getattr(torch, dtype), H, packed=True)
        assert "packed input" in why
        if side == "fastrnn":
            assert fast_ms < cudnn_ms, (cell, dtype, H, mode)


@pytest.mark.parametrize("mode,dtype,H,side", [
    ("LSTM", F32, 128, "fastrnn"), ("GRU", F32, 64, "fastrnn"), ("RNN_TANH", F32, 256, "fastrnn"),
    ("RNN_RELU", BF16, 128, "fastrnn"),
    ("LSTM", F32, 512, "cudnn"), ("GRU", F32, 1024, "cudnn"),  # no packed rows near: padded rule
    ("LSTM", F16, 128, "fastrnn"), ("GRU", F64, 128, "cudnn")])
def test_packed_rule_follows_its_rows(mode, dtype, H, side):
    """cuDNN has no persistent kernel for packed input: the packed rows (fastrnn faster at
    H 128 and 256) decide near them, the padded rows elsewhere."""
    got, why = cd.choose(mode, dtype, H, packed=True)
    assert got == side, why


def test_autocast_looks_up_the_dtype_the_call_computes_in(monkeypatch):
    """Under CUDA autocast the dispatch looks up float16 while cuDNN is enabled (torch's
    cuDNN autocast computes in float16 whatever the autocast dtype), the autocast dtype
    otherwise; without autocast the parameters' dtype."""
    assert cd.call_dtype(F32) == F32 and cd.call_dtype(BF16) == BF16
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda dev="cuda": dev == "cuda")
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda dev: BF16)
    with torch.backends.cudnn.flags(enabled=True):
        assert cd.call_dtype(F32) == F16 and cd.call_dtype(BF16) == F16
    with torch.backends.cudnn.flags(enabled=False):
        assert cd.call_dtype(F32) == BF16
    assert cd.call_dtype(F64) == F64


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


@pytest.mark.parametrize("H,side", [(8, "fastrnn"), (600, "cudnn")])
def test_packed_input_routes_too(cpu_as_cuda, H, side):
    torch.manual_seed(0)
    ref = torch.nn.GRU(3, H)
    fast = fastrnn.GRU(3, H)
    fast.load_state_dict(ref.state_dict())
    seq = torch.nn.utils.rnn.pack_sequence([torch.randn(4, 3), torch.randn(2, 3)])
    out, hn = fast(seq)
    from fastrnn import backends
    assert fast.last_backend == ("cudnn" if side == "cudnn" else backends.resolve("auto", "cpu"))
    assert ("packed input" in fast.last_dispatch) == (side == "fastrnn")
    assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
    want, want_hn = ref(seq)
    torch.testing.assert_close(out.data, want.data)
    torch.testing.assert_close(hn, want_hn)


def test_cpu_tensors_are_not_dispatched():
    fast = fastrnn.LSTM(3, 8)
    fast(torch.randn(4, 2, 3))
    assert fast.last_backend != "cudnn"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind,H,dtype,packed,side", [("LSTM", 128, F32, False, "cudnn"),
                                                      ("GRU", 256, F32, False, "cuda"),
                                                      ("RNN", 128, BF16, False, "cuda"),
                                                      ("LSTM", 128, F32, True, "cuda"),
                                                      ("GRU", 512, F32, True, "cudnn")])
def test_auto_on_a_gpu_runs_the_side_of_the_table(kind, H, dtype, packed, side):
    """On a GPU: the auto backend runs cuDNN or fastrnn's kernels as the table says, with
    torch.nn's numbers either way (TF32 off)."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(16, H).to("cuda", dtype)
    fast = getattr(fastrnn, kind)(16, H).to("cuda", dtype)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(20, 4, 16, device="cuda", dtype=dtype)
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, [20, 7, 13, 1], enforce_sorted=False)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), torch.no_grad():
        want, got = ref(x)[0], fast(x)[0]
    if packed:
        want, got = want.data, got.data
    assert fast.last_backend == side, fast.last_dispatch
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == BF16 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.float(), want.float(), **tol)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("packed", [False, True])
def test_autocast_on_a_gpu_routes_by_float16(packed):
    """Under bf16 autocast on a GPU, torch.nn's LSTM computes (and returns) float16; the
    dispatch decides by float16's rows, and either side returns torch.nn's float16."""
    side = {"fastrnn": "cuda", "cudnn": "cudnn"}[cd.choose("LSTM", F16, 128, packed)[0]]
    torch.manual_seed(0)
    ref, fast = torch.nn.LSTM(16, 128).cuda(), fastrnn.LSTM(16, 128).cuda()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(20, 4, 16, device="cuda")
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, [20, 7, 13, 1], enforce_sorted=False)
    with torch.autocast("cuda", dtype=BF16), torch.no_grad():
        want, got = ref(x)[0], fast(x)[0]
    if packed:
        want, got = want.data, got.data
    assert fast.last_backend == side, fast.last_dispatch
    assert got.dtype == want.dtype == F16
    torch.testing.assert_close(got.float(), want.float(), atol=2e-3, rtol=2e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_routed_calls_use_the_flat_cudnn_buffer(kind):
    """A module moved to the GPU keeps its weights in one cuDNN buffer, as torch.nn's does:
    the calls routed to cuDNN neither copy the weights nor warn about their layout, and a
    state_dict loaded afterwards lands in that buffer."""
    import warnings
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(16, 128, num_layers=2).cuda()
    fast = getattr(fastrnn, kind)(16, 128, num_layers=2).cuda()
    fast.load_state_dict(ref.state_dict())
    ptrs = {p.untyped_storage().data_ptr() for p in fast.parameters()}
    assert len(ptrs) == 1, "weights are not one buffer"
    x = torch.randn(20, 4, 16, device="cuda")
    with warnings.catch_warnings(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        warnings.simplefilter("error")
        got, want = fast(x)[0], ref(x)[0]
    assert fast.last_backend == "cudnn", fast.last_dispatch
    torch.testing.assert_close(got, want)
    peep = fastrnn.PeepholeLSTM(16, 32).cuda()  # no cuDNN buffer; its kernels run
    assert peep(x)[0].shape == (20, 4, 32)
