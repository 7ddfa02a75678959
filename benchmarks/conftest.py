"""pytest configuration of the benchmark suites (``pytest benchmarks/``).

Options (also see ``pytest benchmarks/ --help``):
  --quick / FASTRNN_BENCH_QUICK=1   small T, 2 shapes, few rounds: what CI runs
  --bench-shapes imdb,n1,...        shapes to run (default: all; quick: imdb,n1)
  --bench-threads N / FASTRNN_BENCH_THREADS=N   torch (and onnxruntime) threads
  --no-bench-paired                 time fastrnn without its peers between rounds
  --fastrnn-backend NAME            backend= for the fastrnn modules (default: auto,
                                    or $FASTRNN_BACKEND)
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def _make_fastrnn_importable():
    # Prefer an installed fastrnn (it carries the compiled extension); fall back to the
    # source tree this folder sits in.
    import importlib.util

    if importlib.util.find_spec("fastrnn") is None:
        sys.path.insert(0, os.path.dirname(HERE))


_make_fastrnn_importable()

import pytest  # noqa: E402
import torch  # noqa: E402

import benchutil  # noqa: E402

_QUICK_BENCH_OPTIONS = {  # pytest-benchmark option -> value in quick mode
    "benchmark_min_rounds": 3,
    "benchmark_max_time": "0.05",
    "benchmark_min_time": "0.000005",
}


def pytest_addoption(parser):
    group = parser.getgroup("fastrnn benchmarks")
    group.addoption("--quick", action="store_true", default=False,
                    help="quick mode (also $FASTRNN_BENCH_QUICK=1): T=20, shapes imdb and "
                         "n1, 3 rounds; checks that the suites run, not how fast")
    group.addoption("--bench-shapes", default=None,
                    help="comma-separated shapes to run: " + ",".join(benchutil.FULL_SHAPES))
    group.addoption("--bench-threads", type=int, default=None,
                    help="torch.set_num_threads (and onnxruntime intra-op threads); "
                         "also $FASTRNN_BENCH_THREADS")
    group.addoption("--no-bench-paired", action="store_true", default=False,
                    help="time fastrnn alone; by default each fastrnn case also times its "
                         "peers between its rounds (paired per-round speedups)")
    group.addoption("--fastrnn-backend", default=None,
                    help="backend= for the fastrnn modules (cpu, cuda, numba, reference, auto)")


def pytest_configure(config):
    threads = config.getoption("--bench-threads") or os.environ.get("FASTRNN_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    if benchutil.is_quick(config):
        # Runs before pytest-benchmark's own (trylast) configure, so these become the
        # defaults of every benchmark; values given on the command line are kept.
        from pytest_benchmark.utils import SecondsDecimal

        given = " ".join(str(a) for a in config.invocation_params.args)
        for name, value in _QUICK_BENCH_OPTIONS.items():
            flag = "--" + name.replace("_", "-")
            if flag in given or not hasattr(config.option, name):
                continue
            setattr(config.option, name,
                    value if isinstance(value, int) else SecondsDecimal(value))


def pytest_report_header(config):
    fr = benchutil.FASTRNN_MISSING
    if fr is None:
        fr = os.path.dirname(benchutil.FASTRNN.__file__)
        try:
            fr += " backends=" + ",".join(benchutil.FASTRNN.available_backends())
        except Exception:
            pass
    return [f"fastrnn benchmarks: quick={benchutil.is_quick(config)} "
            f"threads={torch.get_num_threads()} shapes="
            + ",".join(f"{k}={benchutil.shape_id(*v)}"
                       for k, v in benchutil.selected_shapes(config).items())
            + f" fastrnn={fr} onnxruntime={benchutil.onnx_missing() or 'ok'}"]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        kind = getattr(metafunc.module, "BENCH_KIND", "layer")
        all_cases = benchutil.cases(metafunc.config, kind)
        metafunc.parametrize("case", all_cases, ids=[c.id for c in all_cases])


def pytest_benchmark_update_machine_info(config, machine_info):
    # Stable facts only: pytest-benchmark warns on --benchmark-compare when these differ.
    machine_info["fastrnn_torch"] = torch.__version__
    machine_info["fastrnn_threads"] = torch.get_num_threads()
    machine_info["fastrnn_quick"] = benchutil.is_quick(config)
    try:
        import onnxruntime

        machine_info["fastrnn_onnxruntime"] = onnxruntime.__version__
    except Exception:
        machine_info["fastrnn_onnxruntime"] = None
    if torch.cuda.is_available():
        machine_info["fastrnn_cuda_device"] = torch.cuda.get_device_name()
    fr = benchutil.FASTRNN
    if fr is not None:
        # Which fastrnn ran (an installed build or the checkout) and what it could use.
        machine_info["fastrnn_path"] = os.path.dirname(fr.__file__)
        try:
            machine_info["fastrnn_backends"] = list(fr.available_backends())
        except Exception as exc:
            machine_info["fastrnn_backends"] = f"? ({type(exc).__name__})"


@pytest.fixture(scope="session")
def fastrnn_backend(request):
    return request.config.getoption("--fastrnn-backend")


@pytest.fixture(scope="session")
def paired(request):
    return not request.config.getoption("--no-bench-paired")


@pytest.fixture(scope="session")
def gemm_gflops():
    """Per device, the fp32 GFLOP/s of a 1024^3 torch.mm, measured once per session and
    stored in every benchmark's extra_info (the table's GEMM-limit column uses it)."""
    from speedup_table import measure_gemm_gflops

    cache = {}

    def get(device):
        dev = torch.device(device).type
        if dev not in cache:
            cache[dev] = measure_gemm_gflops(dev)
        return cache[dev]

    return get


@pytest.fixture(scope="session")
def cache_gbps():
    """L2 read bandwidth (GB/s, speedup_table.measure_cache_gbps), measured once per
    session; recorded for batch-1 CPU inference cases (the table's W_hh stream limit)."""
    from speedup_table import measure_cache_gbps

    cache = []

    def get():
        if not cache:
            cache.append(measure_cache_gbps())
        return cache[0]

    return get


@pytest.fixture
def case_setup(case, benchmark, gemm_gflops, cache_gbps):
    """Skip a case whose implementation is unavailable; set its group; return a function
    that records extra_info for the backend that ran."""
    reason = benchutil.skip_reason(case.impl)
    if reason:
        pytest.skip(reason)
    benchmark.group = case.group

    def record(backend):
        benchmark.extra_info.update(case.extra_info(backend))
        benchmark.extra_info["gemm_gflops"] = round(gemm_gflops(case.device), 1)
        if case.shape[1] == 1 and case.mode == "infer" and case.device == "cpu":
            benchmark.extra_info["cache_gbps"] = round(cache_gbps(), 1)

    return record
