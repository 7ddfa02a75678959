"""Low precision on the CPU: fastrnn against torch.nn in the same mode, and against fastrnn's
own float32, in paired rounds (per-round ratios).

Modes (``precision`` in the group name):
* ``autocast-bf16``: float32 modules under ``torch.autocast("cpu", dtype=torch.bfloat16)``,
  inference and a training step (forward under autocast, ``output.float().sum()``
  backward outside it, as a mixed-precision training loop does);
* ``bf16``: modules cast to bfloat16 (``module.bfloat16()``), inference and a training
  step (``output.float().sum()`` backward; the gradients bfloat16, the parameters' dtype);
* ``autocast-fp16`` and ``fp16``: the same with float16, inference, at the n1 shape only
  (torch.nn's float16 layers run ATen's step loop, seconds per call at N=64; its LSTM under
  float16 autocast raises on CPUs without oneDNN's fp16 LSTM). fastrnn computes float16
  calls in float32 (its float32 kernels on rounded copies), so these cases carry the
  float32 GEMM rate.

Groups ``<cell>-<uni|bi>-<precision>-<infer|train>-cpu-<shape>`` for the shapes imdb and n1
(the selected ones), and ``<cell>cell-<precision>-infer-cpu-N<n>-I100-H128``: 50 cell calls,
the state fed back. Each case first checks fastrnn's outputs against its float32 outputs
(within 8 units of bfloat16 roundoff). Where torch.nn cannot run a mode on this CPU (its
oneDNN bf16 LSTM needs the CPU's bf16 instructions and raises without them), the case is
timed without it and says so in ``extra_info["torch_error"]``.
The bf16 GEMM rate (a 512^3 bfloat16 torch.mm) is recorded with each case; the table's GEMM
limit column for these cases uses it.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

import benchutil

I, H = 100, 128
CELL_STEPS = 50
LOW = torch.bfloat16
PRECISIONS = [("autocast-bf16", "infer"), ("autocast-bf16", "train"), ("bf16", "infer"),
              ("bf16", "train")]
FP16_PRECISIONS = [("autocast-fp16", "infer"), ("fp16", "infer")]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _dtype(prec):
    """The low-precision dtype of a mode name (``autocast-bf16``, ``fp16``, ...)."""
    return DTYPES[prec.rsplit("-", 1)[-1]]
CELLS = ("rnn", "lstm", "gru")
TORCH_CELLS = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}


def _seq_cases(config):
    """The shapes imdb and n1 (those selected), uni- and bidirectional; quick mode: the
    first of them, unidirectional (torch.nn's bf16 layers take seconds where the CPU has no
    bf16 instructions)."""
    shapes = [v for k, v in benchutil.selected_shapes(config).items() if k in ("imdb", "n1")]
    quick = benchutil.is_quick(config)
    directions = ("uni",) if quick else ("uni", "bi")
    n1 = benchutil.selected_shapes(config).get("n1")
    return ([(cell, d, prec, mode, shape) for shape in shapes[:1 if quick else None]
             for cell in CELLS for d in directions for prec, mode in PRECISIONS]
            + ([(cell, "uni", prec, mode, n1) for cell in CELLS
                for prec, mode in FP16_PRECISIONS] if n1 is not None else []))


def _seq_group(cell, direction, prec, mode, shape):
    return f"{cell}-{direction}-{prec}-{mode}-cpu-{benchutil.shape_id(*shape)}"


def _cell_cases(config):
    return [(cell, prec, n) for cell in CELLS for prec in ("autocast-bf16", "bf16")
            for n in ((1,) if benchutil.is_quick(config) else (1, 64))]


def _cell_group(cell, prec, n):
    return f"{cell}cell-{prec}-infer-cpu-N{n}-I{I}-H{H}"


def pytest_generate_tests(metafunc):
    if "seq_case" in metafunc.fixturenames:
        cases = _seq_cases(metafunc.config)
        metafunc.parametrize("seq_case", cases, ids=[_seq_group(*c) for c in cases])
    if "cell_case" in metafunc.fixturenames:
        cases = _cell_cases(metafunc.config)
        metafunc.parametrize("cell_case", cases, ids=[_cell_group(*c) for c in cases])


_BF16_RATE = []


def _bf16_gemm_gflops():
    if not _BF16_RATE:
        from speedup_table import measure_gemm_gflops
        # 512^3: where the CPU has no bf16 instructions torch's bf16 GEMM runs at ~1 GFLOP/s
        _BF16_RATE.append(measure_gemm_gflops("cpu", size=512, repeats=5, dtype=torch.bfloat16))
    return _BF16_RATE[0]


def _record(benchmark, gemm_gflops, info):
    def record(backend):
        benchmark.extra_info.update(dict(info, impl="fastrnn", device="cpu", backend=backend,
                                         threads=torch.get_num_threads()))
        benchmark.extra_info["gemm_gflops_fp32"] = round(gemm_gflops("cpu"), 1)
        if _dtype(info["dtype"]) == torch.bfloat16:
            benchmark.extra_info["gemm_gflops"] = round(_bf16_gemm_gflops(), 1)
            benchmark.extra_info["gemm_dtype"] = "bfloat16"
        else:  # float16 runs in float32
            benchmark.extra_info["gemm_gflops"] = round(gemm_gflops("cpu"), 1)
        try:  # the kernel build in use (avx512bf16: the bf16 kernels run)
            from fastrnn.backends import cpu
            benchmark.extra_info["cpu_isa"] = cpu.isa()
        except Exception:
            pass
    return record


def _context(prec):
    if prec.startswith("autocast"):
        return torch.autocast("cpu", dtype=_dtype(prec))
    return contextlib.nullcontext()


def _first(out):
    return benchutil.unwrap_output(out)


def _layer_fn(mod, x, prec, mode):
    if mode == "infer":
        def run():
            with torch.inference_mode(), _context(prec):
                return _first(mod(x))
        return run
    xg = x.clone().requires_grad_(True)
    params = list(mod.parameters())

    def run():
        for p in params:
            p.grad = None
        xg.grad = None
        with _context(prec):
            y = _first(mod(xg))
        y.float().sum().backward()
    return run


def _skip_without_fastrnn():
    reason = benchutil.skip_reason("fastrnn")
    if reason:
        pytest.skip(reason)


def _torch_peer(run):
    """``run`` if torch.nn runs this mode on this CPU, else (None, the reason)."""
    try:
        run()
        return run, None
    except RuntimeError as exc:
        if "primitive descriptor" in str(exc):
            return None, f"torch.nn cannot run this mode on this CPU: {exc}".split("\n")[0]
        raise


def _check(got, full):
    # never time a wrong answer: within 8 units of bfloat16 roundoff of fastrnn's float32
    # (float16's roundoff is 8 times smaller)
    torch.testing.assert_close(got.float(), full.float(), rtol=0, atol=8 * 2.0 ** -8)


def _run(benchmark, fast_fn, torch_fn, fp32_fn, record, backend):
    peers = {}
    run, why = _torch_peer(torch_fn)
    if run is not None:
        peers["torch"] = run
    else:
        benchmark.extra_info["torch_error"] = why
    peers["fastrnn_fp32"] = fp32_fn
    benchutil.run_paired(benchmark, fast_fn, peers, record, backend)


def test_precision_layer(benchmark, seq_case, fastrnn_backend, gemm_gflops):
    _skip_without_fastrnn()
    cell, direction, prec, mode, (T, N, I_, H_) = seq_case
    ref = benchutil.torch_layer(cell, I_, H_, direction == "bi")
    fast, _ = benchutil.fastrnn_layer_from(ref, cell, fastrnn_backend)
    fast32, _ = benchutil.fastrnn_layer_from(ref, cell, fastrnn_backend)
    x = torch.randn(T, N, I_, generator=torch.Generator().manual_seed(1))
    x_low = x
    if not prec.startswith("autocast"):
        ref, fast, x_low = ref.to(_dtype(prec)), fast.to(_dtype(prec)), x.to(_dtype(prec))
    with torch.no_grad():
        _check(_layer_fn(fast, x_low, prec, "infer")(), fast32(x)[0])
    benchmark.group = _seq_group(*seq_case)
    record = _record(benchmark, gemm_gflops, {
        "kind": "precision", "cell": cell, "direction": direction, "mode": mode,
        "dtype": prec, "shape": benchutil.shape_id(T, N, I_, H_), "T": T, "N": N, "I": I_,
        "H": H_, "layers": 1})
    _run(benchmark, _layer_fn(fast, x_low, prec, mode), _layer_fn(ref, x_low, prec, mode),
         _layer_fn(fast32, x, "fp32", mode), record,
         benchutil.fastrnn_last_backend(fast, "?"))


def _cell_fn(cell, xs, prec):
    def run():
        with torch.inference_mode(), _context(prec):
            state = None
            for t in range(xs.shape[0]):
                state = cell(xs[t], state)
            return state[0] if isinstance(state, tuple) else state
    return run


def test_precision_cell(benchmark, cell_case, fastrnn_backend, gemm_gflops):
    _skip_without_fastrnn()
    cell, prec, n = cell_case
    fr = benchutil.FASTRNN
    kw = {"backend": fastrnn_backend} if fastrnn_backend else {}
    torch.manual_seed(0)
    ref = TORCH_CELLS[cell](I, H)
    fast = getattr(fr, type(ref).__name__)(I, H, **kw)
    fast.load_state_dict(ref.state_dict())
    fast32 = getattr(fr, type(ref).__name__)(I, H, **kw)
    fast32.load_state_dict(ref.state_dict())
    xs = torch.randn(CELL_STEPS, n, I, generator=torch.Generator().manual_seed(3))
    xs_low = xs
    if prec == "bf16":
        ref, fast, xs_low = ref.to(LOW), fast.to(LOW), xs.to(LOW)
    _check(_cell_fn(fast, xs_low, prec)(), _cell_fn(fast32, xs, "fp32")())
    benchmark.group = _cell_group(*cell_case)
    record = _record(benchmark, gemm_gflops, {
        "kind": "precision", "cell": f"{cell}cell", "direction": "uni", "mode": "infer",
        "dtype": prec, "shape": f"N{n}-I{I}-H{H}", "N": n, "steps": CELL_STEPS})
    _run(benchmark, _cell_fn(fast, xs_low, prec), _cell_fn(ref, xs_low, prec),
         _cell_fn(fast32, xs, "fp32"), record, benchutil.fastrnn_last_backend(fast, "?"))
