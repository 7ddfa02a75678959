"""The CUDA backend (fastrnn/backends/cuda.py, csrc/cuda/).

Three layers of tests, from what any machine can run to what needs a GPU:

1. Python side, CPU only: availability and its reasons, the weight re-layouts, tile
   choice, argument checks, and that the runner hands the kernels the right pointers
   (with a recording fake library).
2. The kernel code itself on the CPU, through ``fastrnn._cuda_emu`` (the same tile
   phases and step epilogues that tile_kernel runs, executed block by block and thread
   by thread on the host): every contract function against the reference backend, and
   whole multi-layer / bidirectional / packed modules against torch.nn. Skipped when
   the emulator was not built (it is built wherever the CUDA module is).
3. On a GPU (skipped without one): every contract function against the reference
   backend in all four dtypes, and fastrnn modules with backend="cuda" against torch.nn
   (cuDNN): outputs and every gradient, packed sequences, layers, directions; streams.
"""
import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from fastrnn import backends
from fastrnn.backends import cuda as cb
from fastrnn.backends import reference as ref

HAS_GPU = torch.cuda.is_available() and cb.unavailable_reason() is None
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and fastrnn._cuda")
EMU = cb.emulator()
needs_emu = pytest.mark.skipif(EMU is None, reason="fastrnn._cuda_emu not built (no nvcc)")

CELLS = ("lstm", "lstm_proj", "peephole", "peephole_proj", "gru", "rnn_tanh", "rnn_relu")


# ============================================================ 1. Python side, CPU only

def test_import_and_reason_on_this_machine():
    reason = cb.unavailable_reason()
    if HAS_GPU:
        assert reason is None
        assert backends.availability()["cuda"] is None
    else:
        assert isinstance(reason, str) and reason
        assert backends.availability()["cuda"] == reason
        with pytest.raises(backends.BackendUnavailableError):
            backends.resolve("cuda", "cuda")
        # auto on CUDA tensors must still resolve to something that runs
        assert backends.resolve("auto", "cuda") == "reference"


def test_cuda_backend_refuses_cpu_tensors():
    with pytest.raises(backends.BackendUnavailableError, match="CUDA tensors"):
        backends.resolve("cuda", "cpu")


def test_extension_imports_without_gpu():
    """The module links cudart statically: it imports and answers with no driver."""
    if cb._lib is None:
        pytest.skip(f"fastrnn._cuda not built: {cb._IMPORT_ERROR}")
    n, err = cb._lib.device_count()
    assert isinstance(n, int) and isinstance(err, str)
    assert (n > 0) == (err == "")
    assert cb._lib.runtime_version() >= 12000


def test_extension_links_cudart_statically():
    import shutil
    import subprocess
    if cb._lib is None:
        pytest.skip("fastrnn._cuda not built")
    if shutil.which("ldd") is None:
        pytest.skip("no ldd")
    deps = subprocess.run(["ldd", cb._lib.__file__], capture_output=True, text=True).stdout
    assert "libcudart" not in deps and "libcuda." not in deps, deps


def test_reason_when_the_runtime_sees_no_device(monkeypatch):
    class NoDevice:
        def device_count(self):
            return 0, "CUDA driver version is insufficient for CUDA runtime version"

        def runtime_version(self):
            return 13000

    monkeypatch.setattr(cb, "_lib", NoDevice())
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    reason = cb.unavailable_reason()
    assert "13.0" in reason and "driver" in reason


def test_extension_rejects_bad_arguments_before_touching_the_gpu():
    if cb._lib is None:
        pytest.skip("fastrnn._cuda not built")
    kw = dict(dtype=0, T=2, N=2, H=4, R=4, xg=0, h0=8, w_hh=8, w_hr=0, lengths=0,
              reverse=False, y=8, c=8, gates=0, cs=0, m=0, tile=0, stream=0)
    with pytest.raises(ValueError, match="xg must not be null"):
        cb._lib.lstm_forward(**kw)
    with pytest.raises(ValueError, match="dtype"):
        cb._lib.lstm_forward(**{**kw, "xg": 8, "dtype": 7})
    with pytest.raises(ValueError, match="sizes"):
        cb._lib.lstm_forward(**{**kw, "xg": 8, "T": 0})
    with pytest.raises(ValueError, match="gates and cs"):
        cb._lib.lstm_forward(**{**kw, "xg": 8, "gates": 8})
    with pytest.raises(ValueError, match="R must equal H"):
        cb._lib.lstm_forward(**{**kw, "xg": 8, "R": 3})
    with pytest.raises(ValueError, match="tile"):
        cb._lib.rnn_forward(dtype=0, T=1, N=1, H=1, xg=8, h0=8, w_hh=8, lengths=0,
                            reverse=False, relu=False, y=8, tile=5, stream=0)


@pytest.mark.parametrize("gates", [1, 3, 4])
def test_unit_major_layout(gates):
    H, K = 5, 7
    w = torch.randn(gates * H, K)
    u = cb.unit_major(w, gates)
    assert u.shape == (H, gates, K) and u.is_contiguous()
    for j, g in itertools.product(range(H), range(gates)):
        assert torch.equal(u[j, g], w[g * H + j])
    # flat row j*G + g of the kernel's view is torch's row g*H + j
    flat = u.reshape(H * gates, K)
    assert torch.equal(flat[3 * gates + gates - 1], w[(gates - 1) * H + 3])


def test_unit_major_rejects_bad_rows():
    with pytest.raises(ValueError, match="multiple"):
        cb.unit_major(torch.zeros(10, 3), 4)


def test_transposed_layout():
    w = torch.randn(12, 5)
    t = cb.transposed(w)
    assert t.shape == (5, 12) and t.is_contiguous() and torch.equal(t, w.t())


def test_acc_dtype():
    assert cb.acc_dtype(torch.float64) == torch.float64
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        assert cb.acc_dtype(dt) == torch.float32


def test_choose_tile(monkeypatch):
    monkeypatch.delenv(cb.TILE_ENV, raising=False)
    assert cb.choose_tile(1, 128) == cb.TILE_SMALL
    assert cb.choose_tile(64, 128) == cb.TILE_SMALL
    assert cb.choose_tile(256, 512) == cb.TILE_LARGE
    monkeypatch.setenv(cb.TILE_ENV, "large")
    assert cb.choose_tile(1, 8) == cb.TILE_LARGE
    monkeypatch.setenv(cb.TILE_ENV, "small")
    assert cb.choose_tile(4096, 4096) == cb.TILE_SMALL
    monkeypatch.setenv(cb.TILE_ENV, "huge")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_TILE"):
        cb.choose_tile(1, 1)


class RecordingLib:
    """Stands in for fastrnn._cuda: records each call's keyword arguments."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda **kw: self.calls.append((name, kw))


def _lstm_args(T=3, N=2, H=4, R=None, dtype=torch.float32, lengths=None):
    R = R or H
    return (torch.randn(T, N, 4 * H, dtype=dtype), torch.randn(N, R, dtype=dtype),
            torch.randn(N, H, dtype=dtype), torch.randn(4 * H, R, dtype=dtype),
            torch.randn(R, H, dtype=dtype) if R != H else None, lengths)


def test_runner_passes_pointers_and_flags():
    lib = RecordingLib()
    run = cb.KernelRunner(lib, "cpu", tile=cb.TILE_LARGE)
    xg, h0, c0, w_hh, w_hr, _ = _lstm_args(H=4, R=3, dtype=torch.float64)
    lengths = torch.tensor([3, 1])
    y, cn, gates, cs = run.lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, True, False)
    name, kw = lib.calls[-1]
    assert name == "lstm_forward"
    assert (kw["T"], kw["N"], kw["H"], kw["R"]) == (3, 2, 4, 3)
    assert kw["dtype"] == 1 and kw["tile"] == cb.TILE_LARGE and kw["stream"] == 0
    assert kw["reverse"] is True
    assert kw["xg"] == xg.data_ptr() and kw["h0"] == h0.data_ptr()
    assert kw["w_hr"] == w_hr.data_ptr() and kw["lengths"] == lengths.data_ptr()
    assert kw["y"] == y.data_ptr() and kw["m"] != 0
    assert kw["gates"] == 0 and kw["cs"] == 0  # inference: nothing saved
    assert gates.numel() == 0 and cs.numel() == 0
    assert kw["w_hh"] not in (0, w_hh.data_ptr())  # the unit-major copy
    assert cn.dtype == torch.float64 and y.shape == (3, 2, 3)


def test_runner_passes_the_peepholes():
    lib = RecordingLib()
    run = cb.KernelRunner(lib, "cpu")
    xg, h0, c0, w_hh, w_hr, _ = _lstm_args(H=4)
    w_ch = torch.randn(12)
    y, cn, gates, cs = run.lstm_forward(xg, h0, c0, w_hh, w_hr, None, False, True, w_ch=w_ch)
    assert lib.calls[-1][1]["w_ch"] == w_ch.data_ptr()
    run.lstm_backward(torch.randn_like(y), torch.randn_like(cn), h0, c0, w_hh, w_hr, None,
                      False, y, gates, cs, w_ch=w_ch)
    assert lib.calls[-1][0] == "lstm_backward" and lib.calls[-1][1]["w_ch"] == w_ch.data_ptr()
    run.lstm_forward(xg, h0, c0, w_hh, w_hr, None, False, True)
    assert lib.calls[-1][1]["w_ch"] == 0  # plain LSTM
    with pytest.raises(ValueError, match="w_ch has shape"):
        run.lstm_forward(xg, h0, c0, w_hh, w_hr, None, False, True, w_ch=torch.randn(16))


def test_runner_half_state_is_float32():
    lib = RecordingLib()
    run = cb.KernelRunner(lib, "cpu")
    xg, h0, c0, w_hh, w_hr, _ = _lstm_args(dtype=torch.float16)
    y, cn, gates, cs = run.lstm_forward(xg, h0, c0, w_hh, w_hr, None, False, True)
    assert cn.dtype == torch.float16 and gates.shape == (3, 2, 16) and cs.shape == (3, 2, 4)
    assert lib.calls[-1][1]["dtype"] == 2 and lib.calls[-1][1]["lengths"] == 0


def test_runner_empty_batch_makes_no_call():
    lib = RecordingLib()
    run = cb.KernelRunner(lib, "cpu")
    xg, h0, c0, w_hh, w_hr, _ = _lstm_args(N=0)
    y, cn, _, _ = run.lstm_forward(xg, h0, c0, w_hh, w_hr, None, False, True)
    assert lib.calls == [] and y.shape == (3, 0, 4) and cn.shape == (0, 4)


@pytest.mark.parametrize("bad, match", [
    ("device", "expected"),
    ("dtype", "dtype"),
    ("shape", "shape"),
    ("contig", "contiguous"),
    ("lengths", "lengths"),
    ("int_dtype", "unsupported dtype"),
])
def test_runner_argument_checks(bad, match):
    run = cb.KernelRunner(RecordingLib(), "cpu")
    xg, h0, c0, w_hh, w_hr, lengths = _lstm_args()
    if bad == "device":
        run = cb.KernelRunner(RecordingLib(), "cuda")  # CPU tensors to the GPU runner
    elif bad == "dtype":
        h0 = h0.double()
    elif bad == "shape":
        c0 = torch.randn(2, 5)
    elif bad == "contig":
        w_hh = torch.randn(4, 16).t()
    elif bad == "lengths":
        lengths = torch.tensor([1, 2], dtype=torch.int32)
    elif bad == "int_dtype":
        xg, h0, c0, w_hh = (t.to(torch.int32) for t in (xg, h0, c0, w_hh))
    with pytest.raises((ValueError, TypeError), match=match):
        run.lstm_forward(xg, h0, c0, w_hh, w_hr, lengths, False, True)


def test_runner_lstm_without_projection_needs_R_equal_H():
    run = cb.KernelRunner(RecordingLib(), "cpu")
    xg, h0, c0, w_hh, _, _ = _lstm_args(H=4, R=3)
    with pytest.raises(ValueError, match="projection"):
        run.lstm_forward(xg, h0, c0, w_hh, None, None, False, True)


# ============================================= 2. the kernel code, emulated on the CPU

def _rand(*shape, dtype, device, scale=1.0, gen=None):
    return (torch.randn(*shape, dtype=torch.float64, generator=gen) * scale).to(
        device=device, dtype=dtype)


def _is_lstm(cell):
    return cell.startswith(("lstm", "peephole"))


def _peep(c):
    """The peephole keyword of the LSTM contract functions, when the case has one."""
    return {"w_ch": c["w_ch"]} if "w_ch" in c else {}


def make_case(cell, T, N, H, dtype, device, packed, seed=0, proj=3):
    """Random contract inputs for one cell, plus the backward's upstream gradients."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: _rand(*s, dtype=dtype, device=device, scale=scale, gen=g)  # noqa: E731
    lengths = None
    if packed:
        lengths = torch.randint(1, T + 1, (N,), generator=g)
        lengths[0] = T
        lengths = lengths.to(device)
    ws = 1.0 / H ** 0.5
    if _is_lstm(cell):
        projected = cell.endswith("_proj")
        R = proj if projected else H
        case = dict(xg=r(T, N, 4 * H), h0=r(N, R), c0=r(N, H), w_hh=r(4 * H, R, scale=ws),
                    w_hr=r(R, H, scale=ws) if projected else None,
                    lengths=lengths, dy=r(T, N, R), dcn=r(N, H))
        if cell.startswith("peephole"):
            case["w_ch"] = r(3 * H, scale=0.5)
        return case
    if cell == "gru":
        return dict(xg=r(T, N, 3 * H), h0=r(N, H), w_hh=r(3 * H, H, scale=ws), b_hh=r(3 * H),
                    lengths=lengths, dy=r(T, N, H))
    return dict(xg=r(T, N, H), h0=r(N, H), w_hh=r(H, H, scale=ws), lengths=lengths,
                dy=r(T, N, H), relu=cell == "rnn_relu")


def run_contract(be, cell, c, reverse):
    """Forward (training) + backward of one cell through backend ``be``; every output."""
    if _is_lstm(cell):
        y, cn, gates, cs = be.lstm_forward(c["xg"], c["h0"], c["c0"], c["w_hh"], c["w_hr"],
                                           c["lengths"], reverse, True, **_peep(c))
        grads = be.lstm_backward(c["dy"], c["dcn"], c["h0"], c["c0"], c["w_hh"], c["w_hr"],
                                 c["lengths"], reverse, y, gates, cs, **_peep(c))
        outs = dict(y=y, cn=cn, gates=gates, cs=cs)
        names = ("dgates", "dh0", "dc0", "dr")
    elif cell == "gru":
        y, saved = be.gru_forward(c["xg"], c["h0"], c["w_hh"], c["b_hh"], c["lengths"],
                                  reverse, True)
        grads = be.gru_backward(c["dy"], c["h0"], c["w_hh"], c["lengths"], reverse, y, saved)
        outs = dict(y=y, saved=saved)
        names = ("dxg", "dh0")
    else:
        y = be.rnn_forward(c["xg"], c["h0"], c["w_hh"], c["lengths"], reverse, c["relu"])
        grads = be.rnn_backward(c["dy"], c["h0"], c["w_hh"], c["lengths"], reverse,
                                c["relu"], y)
        outs = dict(y=y)
        names = ("dxg", "dh0")
    outs.update(zip(names, grads))
    return outs


def run_inference(be, cell, c, reverse):
    if _is_lstm(cell):
        y, cn, gates, cs = be.lstm_forward(c["xg"], c["h0"], c["c0"], c["w_hh"], c["w_hr"],
                                           c["lengths"], reverse, False, **_peep(c))
        return dict(y=y, cn=cn)
    if cell == "gru":
        y, _ = be.gru_forward(c["xg"], c["h0"], c["w_hh"], c["b_hh"], c["lengths"], reverse,
                              False)
        return dict(y=y)
    return dict(y=be.rnn_forward(c["xg"], c["h0"], c["w_hh"], c["lengths"], reverse,
                                 c["relu"]))


def assert_outputs_close(got, want, rtol, atol, scaled=False):
    assert got.keys() == want.keys()
    for k in want:
        a, b = got[k], want[k]
        assert a.shape == b.shape and a.dtype == b.dtype, k
        if b.numel() == 0:
            continue
        a, b = a.double().cpu(), b.double().cpu()
        tol = atol * (1 + b.abs().max().item()) if scaled else atol
        torch.testing.assert_close(a, b, rtol=rtol, atol=tol, msg=lambda m: f"{k}: {m}")


# Sizes: tiny (T=5, N=3, H=6: under one tile), and H=70, N=20 (J, N and K not multiples
# of any tile dimension; K spans several shared-memory chunks: 70 > KC, 4H = 280).
EMU_SIZES = [(5, 3, 6), (3, 20, 70)]


# Paths: the per-step kernels with either tile, and the persistent (one-launch) kernel.
PATHS = {"small": dict(tile=cb.TILE_SMALL, persistent=cb.PERSIST_NONE),
         "large": dict(tile=cb.TILE_LARGE, persistent=cb.PERSIST_NONE),
         "persistent": dict(tile=cb.TILE_SMALL, persistent=cb.PERSIST_GRID),
         "persistent_cluster": dict(tile=cb.TILE_SMALL, persistent=cb.PERSIST_CLUSTER)}


@needs_emu
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("size", EMU_SIZES, ids=lambda s: "T%d-N%d-H%d" % s)
@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell", CELLS)
def test_emulated_kernels_match_reference(cell, reverse, packed, size, path):
    T, N, H = size
    c = make_case(cell, T, N, H, torch.float64, "cpu", packed, seed=T * 7 + N)
    emu = cb.emulator(**PATHS[path])
    got = run_contract(emu, cell, c, reverse)
    want = run_contract(ref, cell, c, reverse)
    assert_outputs_close(got, want, rtol=1e-10, atol=1e-12)
    assert_outputs_close(run_inference(emu, cell, c, reverse),
                         run_inference(ref, cell, c, reverse), rtol=1e-10, atol=1e-12)


@needs_emu
@pytest.mark.parametrize("persistent", [0, 1, 2], ids=["per_step", "persistent",
                                                      "persistent_cluster"])
@pytest.mark.parametrize("cell", CELLS)
def test_emulated_kernels_float32(cell, persistent):
    c = make_case(cell, 6, 5, 33, torch.float32, "cpu", packed=True, seed=1)
    emu = cb.emulator(persistent=persistent)
    assert_outputs_close(run_contract(emu, cell, c, False), run_contract(ref, cell, c, False),
                         rtol=1e-5, atol=2e-5)


@needs_emu
@pytest.mark.parametrize("cell, per_step", [("lstm", 1), ("lstm_proj", 2), ("gru", 1),
                                            ("rnn_tanh", 1)])
def test_one_launch_per_step(cell, per_step):
    """Forward: one fused launch per step (two with a projection); backward: one per
    step (two with a projection) plus one that finishes dh0."""
    from fastrnn import _cuda_emu
    T = 4
    c = make_case(cell, T, 2, 8, torch.float64, "cpu", packed=False)
    run_inference(EMU, cell, c, False)
    assert _cuda_emu.last_launch_count() == per_step * T
    run_contract(EMU, cell, c, False)  # the last call is the backward
    assert _cuda_emu.last_launch_count() == per_step * T + 1


@needs_emu
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_persistent_is_one_launch(cell):
    from fastrnn import _cuda_emu
    emu = cb.emulator(persistent=True)
    c = make_case(cell, 4, 2, 8, torch.float64, "cpu", packed=False)
    run_inference(emu, cell, c, False)
    assert _cuda_emu.last_launch_count() == 1
    run_contract(emu, cell, c, False)
    assert _cuda_emu.last_launch_count() == 1


@needs_emu
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_persistent_cluster_is_one_cluster_launch(cell):
    from fastrnn import _cuda_emu
    emu = cb.emulator(persistent=cb.PERSIST_CLUSTER)
    c = make_case(cell, 4, 9, 8, torch.float64, "cpu", packed=True)  # 3 row tiles
    run_contract(emu, cell, c, False)
    assert _cuda_emu.last_launch_count() == 1
    assert _cuda_emu.last_cluster_launch_count() == 1


@needs_emu
def test_persistent_cluster_falls_back_to_grid_above_16_unit_tiles():
    """H = 136 needs 17 tiles of 8 units: more than a cluster holds. The grid kernel runs
    instead, still as one launch, with the same results."""
    from fastrnn import _cuda_emu
    c = make_case("rnn_tanh", 3, 2, 136, torch.float64, "cpu", packed=False)
    got = run_contract(cb.emulator(persistent=cb.PERSIST_CLUSTER), "rnn_tanh", c, False)
    assert _cuda_emu.last_launch_count() == 1
    assert _cuda_emu.last_cluster_launch_count() == 0
    assert_outputs_close(got, run_contract(ref, "rnn_tanh", c, False), rtol=1e-9, atol=1e-10)


@needs_emu
def test_persistent_falls_back_per_step_with_projection():
    from fastrnn import _cuda_emu
    c = make_case("lstm_proj", 4, 2, 8, torch.float64, "cpu", packed=False)
    run_contract(cb.emulator(persistent=True), "lstm_proj", c, False)
    assert _cuda_emu.last_launch_count() == 2 * 4 + 1


def test_schedule_env(monkeypatch):
    monkeypatch.delenv(cb.PERSISTENT_ENV, raising=False)
    monkeypatch.delenv(cb.SCHEDULE_ENV, raising=False)
    assert cb.persistent_mode() == cb.PERSIST_DEFAULT
    for word, mode in [("auto", cb.PERSIST_DEFAULT), ("step", cb.PERSIST_NONE),
                       ("grid", cb.PERSIST_GRID), ("cluster", cb.PERSIST_CLUSTER),
                       (" Cluster ", cb.PERSIST_CLUSTER)]:
        monkeypatch.setenv(cb.SCHEDULE_ENV, word)
        assert cb.persistent_mode() == mode, word
    monkeypatch.setenv(cb.SCHEDULE_ENV, "1")  # the old spellings are not schedule names
    with pytest.raises(ValueError, match="FASTRNN_CUDA_SCHEDULE.*step, grid, cluster"):
        cb.persistent_mode()
    lib = RecordingLib()
    xg, h0, c0, w_hh, w_hr, _ = _lstm_args()
    monkeypatch.setenv(cb.SCHEDULE_ENV, "cluster")
    cb.KernelRunner(lib, "cpu").lstm_forward(xg, h0, c0, w_hh, w_hr, None, False, True)
    assert lib.calls[-1][1]["persistent"] == 2


def test_former_persistent_env_still_read_with_a_deprecation_warning(monkeypatch):
    monkeypatch.delenv(cb.SCHEDULE_ENV, raising=False)
    monkeypatch.setattr(cb, "_deprecation_warned", False)
    monkeypatch.setenv(cb.PERSISTENT_ENV, "0")
    with pytest.warns(DeprecationWarning, match="FASTRNN_CUDA_SCHEDULE"):
        assert cb.persistent_mode() == cb.PERSIST_NONE
    for word, mode in [("step", cb.PERSIST_NONE), ("grid", cb.PERSIST_GRID),
                       ("cluster", cb.PERSIST_CLUSTER), ("1", cb.PERSIST_GRID)]:
        monkeypatch.setenv(cb.PERSISTENT_ENV, word)
        assert cb.persistent_mode() == mode, word
    monkeypatch.setenv(cb.SCHEDULE_ENV, "step")  # the new name wins
    monkeypatch.setenv(cb.PERSISTENT_ENV, "cluster")
    assert cb.persistent_mode() == cb.PERSIST_NONE
    monkeypatch.delenv(cb.SCHEDULE_ENV)
    monkeypatch.setenv(cb.PERSISTENT_ENV, "1")
    assert cb.persistent_mode() == cb.PERSIST_GRID
    lib = RecordingLib()
    xg, h0, c0, w_hh, w_hr, _ = _lstm_args()
    cb.KernelRunner(lib, "cpu").lstm_forward(xg, h0, c0, w_hh, w_hr, None, False, True)
    assert lib.calls[-1][1]["persistent"] == 1
    cb.KernelRunner(lib, "cpu", persistent=False).lstm_forward(xg, h0, c0, w_hh, w_hr, None,
                                                               False, True)
    assert lib.calls[-1][1]["persistent"] == 0
    monkeypatch.setenv(cb.PERSISTENT_ENV, "maybe")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_PERSISTENT"):
        cb.persistent_mode()
    monkeypatch.delenv(cb.PERSISTENT_ENV)
    monkeypatch.setenv(cb.SCHEDULE_ENV, "maybe")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_SCHEDULE"):
        cb.persistent_mode()


@needs_emu
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("cell", CELLS)
def test_emulated_kernels_have_no_order_dependence(cell, path):
    """Blocks of a launch and threads between barriers run in any order on a GPU: the
    emulator shuffles both, and the results must stay bit-identical (else: a race)."""
    from fastrnn import _cuda_emu
    c = make_case(cell, 4, 20, 70, torch.float64, "cpu", packed=True, seed=2)
    emu = cb.emulator(**PATHS[path])
    want = run_contract(emu, cell, c, True)
    try:
        for seed in (1, 2):
            _cuda_emu.set_shuffle(seed)
            got = run_contract(emu, cell, c, True)
            for k in want:
                assert torch.equal(got[k], want[k]), (k, seed)
    finally:
        _cuda_emu.set_shuffle(0)


@needs_emu
def test_emulator_rejects_half():
    c = make_case("rnn_tanh", 2, 2, 4, torch.float16, "cpu", packed=False)
    with pytest.raises(ValueError, match="float32 and float64"):
        EMU.rnn_forward(c["xg"], c["h0"], c["w_hh"], None, False, False)


# Whole modules (layers, directions, packing, weight-gradient GEMMs in fastrnn.ops) with
# the emulated kernels standing in for the "reference" backend, against torch.nn.
MODULE_GRID = [
    dict(kind="LSTM", layers=2, bidir=True, packed=True, proj=0),
    dict(kind="LSTM", layers=2, bidir=True, packed=True, proj=3),
    dict(kind="LSTM", layers=1, bidir=False, packed=False, proj=0),
    dict(kind="GRU", layers=2, bidir=True, packed=True, proj=0),
    dict(kind="GRU", layers=1, bidir=False, packed=False, proj=0),
    dict(kind="RNN_TANH", layers=2, bidir=True, packed=True, proj=0),
    dict(kind="RNN_RELU", layers=3, bidir=False, packed=True, proj=0),
]


def _module_pair(kind, I, H, layers, bidir, proj, dtype, device, backend):
    kw = dict(num_layers=layers, bidirectional=bidir, dtype=dtype, device=device)
    if kind == "LSTM":
        tcls, fcls = torch.nn.LSTM, fastrnn.LSTM
        if proj:
            kw["proj_size"] = proj
    elif kind == "GRU":
        tcls, fcls = torch.nn.GRU, fastrnn.GRU
    else:
        tcls, fcls = torch.nn.RNN, fastrnn.RNN
        kw["nonlinearity"] = "tanh" if kind == "RNN_TANH" else "relu"
    torch.manual_seed(0)
    tmod = tcls(I, H, **kw)
    fmod = fcls(I, H, backend=backend, **kw)
    fmod.load_state_dict(tmod.state_dict(), strict=True)
    return tmod, fmod


def _run_module(mod, x, lengths, hx):
    if lengths is not None:
        out, hn = mod(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
        out = pad_packed_sequence(out)[0]
    else:
        out, hn = mod(x, hx)
    hn = list(hn) if isinstance(hn, tuple) else [hn]
    return out, hn


def _case_inputs(case, H, R):
    """x [6, 4, 5], h0, c0 (float64, CPU) and the packed lengths of a module case."""
    T, N, I = 6, 4, 5
    D = 2 if case["bidir"] else 1
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, I, generator=g, dtype=torch.float64)
    h0 = torch.randn(case["layers"] * D, N, R, generator=g, dtype=torch.float64)
    c0 = torch.randn(case["layers"] * D, N, H, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5, 1]) if case["packed"] else None
    return x, h0, c0, lengths


def _outputs_and_grads(mod, x, h0, c0, lengths, dtype, device):
    """[out, final states..., grads of x, h0 (, c0) and every parameter] of a weighted loss
    over the output and the final states; c0 is None for GRU/RNN."""
    def leaf(t):
        return t.to(device=device, dtype=dtype).requires_grad_()

    xs, hs = leaf(x), leaf(h0)
    cs = None if c0 is None else leaf(c0)
    out, hn = _run_module(mod, xs, lengths, hs if cs is None else (hs, cs))
    loss = (out.double() * torch.linspace(-1, 1, out.numel(), dtype=torch.float64,
                                          device=device).view_as(out)).sum()
    loss = loss + sum((h.double() ** 2).sum() for h in hn)
    ins = [xs, hs] + ([] if cs is None else [cs])
    return [out] + hn + list(torch.autograd.grad(loss, ins + list(mod.parameters())))


def _assert_all_close(names, got, want, tol):
    assert len(got) == len(want)
    for name, a, b in zip(names, got, want):
        a, b = a.double().cpu(), b.double().cpu()
        torch.testing.assert_close(a, b, rtol=tol["rtol"],
                                   atol=tol["atol"] * (1 + b.abs().max().item()),
                                   msg=lambda m: f"{name}: {m}")


def compare_modules(case, dtype, device, backend, tol, ref_dtype=None):
    """fastrnn (backend) vs torch.nn: outputs, final states, grads of x, hx and weights."""
    ref_dtype = ref_dtype or dtype
    kind, proj = case["kind"], case["proj"]
    H = 7
    tmod, fmod = _module_pair(kind, 5, H, case["layers"], case["bidir"], proj, ref_dtype,
                              device, backend)
    fmod = fmod.to(dtype)
    x, h0, c0, lengths = _case_inputs(case, H, proj or H)
    c0 = c0 if kind == "LSTM" else None
    want = _outputs_and_grads(tmod, x, h0, c0, lengths, ref_dtype, device)
    got = _outputs_and_grads(fmod, x, h0, c0, lengths, dtype, device)
    _assert_all_close(["out"] + [f"hn{i}" for i in range(len(want) - 1)], got, want, tol)
    return fmod


@needs_emu
@pytest.mark.parametrize("persistent", [0, 1, 2], ids=["per_step", "persistent",
                                                      "persistent_cluster"])
@pytest.mark.parametrize("case", MODULE_GRID, ids=lambda c: "-".join(
    f"{k}{v}" for k, v in c.items()))
def test_emulated_modules_match_torch_nn(case, persistent, monkeypatch):
    monkeypatch.setitem(backends._cache, "reference",
                        (cb.emulator(persistent=persistent), None))
    compare_modules(case, torch.float64, "cpu", "reference", dict(rtol=1e-9, atol=1e-10))


PEEPHOLE_GRID = [dict(layers=2, bidir=True, packed=True, proj=0),
                 dict(layers=1, bidir=False, packed=False, proj=3),
                 dict(layers=2, bidir=False, packed=True, proj=2)]


def compare_peephole_modules(case, dtype, device, backend, tol):
    """fastrnn.PeepholeLSTM with ``backend`` on ``device`` against the same module on CPU
    float64 with the CPU kernels (numba where the extension is off): outputs, final states
    and the gradients of x, hx and every parameter (the peepholes' included)."""
    oracle = backends.resolve("auto", "cpu")
    if oracle == "reference":
        pytest.skip("needs the CPU kernels or numba as the oracle")
    H = 7
    kw = dict(num_layers=case["layers"], bidirectional=case["bidir"], proj_size=case["proj"])
    torch.manual_seed(0)
    want_mod = fastrnn.PeepholeLSTM(5, H, dtype=torch.float64, backend=oracle, **kw)
    with torch.no_grad():  # peepholes large enough to matter
        for name, p in want_mod.named_parameters():
            if name.startswith("weight_ch"):
                p.uniform_(-0.8, 0.8)
    got_mod = fastrnn.PeepholeLSTM(5, H, dtype=dtype, device=device, backend=backend, **kw)
    got_mod.load_state_dict(want_mod.state_dict())
    x, h0, c0, lengths = _case_inputs(case, H, case["proj"] or H)
    want = _outputs_and_grads(want_mod, x, h0, c0, lengths, torch.float64, "cpu")
    got = _outputs_and_grads(got_mod, x, h0, c0, lengths, dtype, device)
    names = ["out", "hn", "cn", "dx", "dh0", "dc0"] + [n for n, _ in want_mod.named_parameters()]
    _assert_all_close(names, got, want, tol)
    return got_mod


@needs_emu
@pytest.mark.parametrize("persistent", [0, 1, 2], ids=["per_step", "persistent",
                                                      "persistent_cluster"])
@pytest.mark.parametrize("case", PEEPHOLE_GRID, ids=lambda c: "-".join(
    f"{k}{v}" for k, v in c.items()))
def test_emulated_peephole_modules_match_cpu_kernels(case, persistent, monkeypatch):
    """The whole PeepholeLSTM (layers, directions, packing, projection, the op layer's dW_ch
    reduction) on the CUDA kernel code, emulated, standing in for the "reference" backend."""
    monkeypatch.setitem(backends._cache, "reference",
                        (cb.emulator(persistent=persistent), None))
    compare_peephole_modules(case, torch.float64, "cpu", "reference",
                             dict(rtol=1e-9, atol=1e-10))


@needs_emu
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_emulated_nan_inf_propagate_like_torch(kind, bad, monkeypatch):
    monkeypatch.setitem(backends._cache, "reference", (cb.emulator(), None))
    nan_inf_like_torch(kind, bad, "cpu", "reference")


def nan_inf_like_torch(kind, bad, device, backend):
    tmod, fmod = _module_pair(kind, 3, 4, 2, True, 0, torch.float64, device, backend)
    x = torch.randn(6, 2, 3, dtype=torch.float64, device=device)
    x[2, 0, 1] = bad
    outs = []
    for mod in (fmod, tmod):
        out, hn = mod(x)
        outs.append([out] + (list(hn) if isinstance(hn, tuple) else [hn]))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, equal_nan=True)
        assert torch.equal(torch.isnan(a), torch.isnan(b))


# ======================================================================= 3. on a GPU

TOL = {  # fastrnn(dtype) vs the float32/float64 result, atol scaled by the magnitude
    torch.float64: dict(rtol=1e-9, atol=1e-10),
    torch.float32: dict(rtol=2e-4, atol=2e-5),
    torch.float16: dict(rtol=3e-2, atol=2e-2),
    torch.bfloat16: dict(rtol=1e-1, atol=6e-2),
}
DTYPES = list(TOL)


@pytest.fixture
def no_tf32():
    """cuDNN and cuBLAS in true float32 (TF32 would loosen the comparison)."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@needs_gpu
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_kernels_match_reference(dtype, cell, reverse, packed, path, no_tf32):
    T, N, H = 7, 5, 37
    c = make_case(cell, T, N, H, dtype, "cuda", packed, seed=3)
    runner = cb.KernelRunner(cb._lib, "cuda", **PATHS[path])
    got = run_contract(runner, cell, c, reverse)
    # The reference in float64 (float32/float64 inputs) is the oracle for every dtype.
    c64 = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v)
           for k, v in c.items()}
    want = run_contract(ref, cell, c64, reverse)
    want = {k: v.to(dtype) for k, v in want.items()}
    assert_outputs_close(got, want, **TOL[dtype], scaled=True)
    inf = run_inference(runner, cell, c, reverse)
    assert_outputs_close(inf, {k: got[k] for k in inf}, rtol=0, atol=0)  # same numbers


@needs_gpu
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("H", [128, 256, 512])
def test_gpu_kernels_large_shapes(cell, H, no_tf32):
    c = make_case(cell, 20, 64, H, torch.float32, "cuda", packed=True, seed=4)
    for path in PATHS.values():
        got = run_contract(cb.KernelRunner(cb._lib, "cuda", **path), cell, c, False)
        want = run_contract(ref, cell, c, False)
        assert_outputs_close(got, want, rtol=1e-3, atol=1e-4, scaled=True)


GPU_MODULE_GRID = [
    dict(kind=k, layers=L, bidir=b, packed=p, proj=0)
    for k in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
    for L, b, p in ((1, False, False), (2, True, True), (2, False, True), (1, True, False))
] + [dict(kind="LSTM", layers=2, bidir=True, packed=True, proj=3),
     dict(kind="LSTM", layers=1, bidir=False, packed=False, proj=4)]


@needs_gpu
@pytest.mark.parametrize("persistent", ["step", "grid", "cluster"],
                         ids=["per_step", "persistent", "persistent_cluster"])
@pytest.mark.parametrize("case", GPU_MODULE_GRID, ids=lambda c: "-".join(
    f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_modules_match_cudnn(dtype, case, persistent, no_tf32, monkeypatch):
    monkeypatch.setenv(cb.SCHEDULE_ENV, persistent)
    # torch.nn runs cuDNN on CUDA for float32/float64; half types are compared against
    # the float32 cuDNN result.
    ref_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    fmod = compare_modules(case, dtype, "cuda", "cuda", TOL[dtype], ref_dtype=ref_dtype)
    assert fmod.last_backend == "cuda"


@needs_gpu
@pytest.mark.parametrize("persistent", ["step", "grid", "cluster"],
                         ids=["per_step", "persistent", "persistent_cluster"])
@pytest.mark.parametrize("case", PEEPHOLE_GRID, ids=lambda c: "-".join(
    f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_peephole_modules_match_cpu(dtype, case, persistent, no_tf32, monkeypatch):
    """PeepholeLSTM has no cuDNN twin: the CUDA kernels in every dtype against the CPU
    kernels in float64; auto picks the CUDA kernels."""
    monkeypatch.setenv(cb.SCHEDULE_ENV, persistent)
    fmod = compare_peephole_modules(case, dtype, "cuda", "cuda", TOL[dtype])
    assert fmod.last_backend == "cuda"
    fmod.backend = "auto"
    fmod(torch.randn(3, 2, 5, device="cuda", dtype=dtype))
    assert fmod.last_backend == "cuda"


@needs_gpu
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_gpu_nan_inf_propagate_like_torch(kind, bad):
    nan_inf_like_torch(kind, bad, "cuda", "cuda")


@needs_gpu
def test_gpu_gradcheck():
    from fastrnn import ops  # noqa: F401
    torch.manual_seed(0)
    mod = fastrnn.LSTM(3, 4, num_layers=1, bidirectional=True, dtype=torch.float64,
                       device="cuda", backend="cuda")
    x = torch.randn(4, 2, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: mod(x)[0], (x,))


@needs_gpu
def test_gpu_runs_on_the_current_stream(no_tf32):
    c = make_case("lstm", 30, 8, 64, torch.float32, "cuda", packed=True, seed=5)
    want = run_contract(cb, "lstm", c, False)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = run_contract(cb, "lstm", c, False)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    assert_outputs_close(got, want, rtol=0, atol=0)


@needs_gpu
@pytest.mark.parametrize("persistent", ["step", "grid", "cluster"],
                         ids=["per_step", "persistent", "persistent_cluster"])
def test_gpu_cuda_graph_capture(persistent, no_tf32, monkeypatch):
    """No allocation or sync inside the kernels: the recurrence captures into a graph."""
    monkeypatch.setenv(cb.SCHEDULE_ENV, persistent)
    c = make_case("gru", 10, 4, 32, torch.float32, "cuda", packed=False, seed=6)
    want = cb.gru_forward(c["xg"], c["h0"], c["w_hh"], c["b_hh"], None, False, False)[0]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up outside the graph
        cb.gru_forward(c["xg"], c["h0"], c["w_hh"], c["b_hh"], None, False, False)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = cb.gru_forward(c["xg"], c["h0"], c["w_hh"], c["b_hh"], None, False, False)[0]
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, want)


@needs_gpu
def test_gpu_backend_on_second_device_or_current():
    """Tensors on a non-current device run on their own device."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    c = make_case("rnn_tanh", 4, 2, 16, torch.float32, "cuda:1", packed=False)
    y = cb.rnn_forward(c["xg"], c["h0"], c["w_hh"], None, False, False)
    assert y.device == torch.device("cuda:1")
    torch.testing.assert_close(y, ref.rnn_forward(c["xg"], c["h0"], c["w_hh"], None, False,
                                                  False), rtol=1e-4, atol=1e-5)
