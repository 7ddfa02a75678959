"""Layer benchmarks: fastrnn vs torch.nn (and onnxruntime for CPU inference).

One pytest-benchmark group per case, e.g. ``lstm-bi-train-cpu-T500-N64-I100-H128``, holding
``...-fastrnn``, ``...-torch`` and (inference on CPU) ``...-onnxruntime``. Every
implementation of a case uses the same weights (seeded torch.nn layer; fastrnn loads its
state_dict; onnxruntime runs its ONNX export) and the same input tensor.

* infer: ``module(x)`` under ``torch.inference_mode()``.
* train: one forward + backward of ``output.sum()`` with ``x.requires_grad`` (as for a
  layer above an embedding or another layer); gradients set to None before each step.
* CUDA cases (when available) synchronise inside the timed function.
"""
from __future__ import annotations

import torch

import benchutil

BENCH_KIND = "layer"


def _inputs(case):
    T, N, I, H = case.shape
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, I, generator=gen).to(case.device)
    return x


def _tolerances(device):
    # cuDNN may run RNNs in TF32 (torch.backends.cudnn.allow_tf32 defaults to True)
    return dict(atol=5e-3, rtol=5e-3) if device == "cuda" else dict(atol=1e-4, rtol=1e-3)


def _reference_output(ref, x):
    with torch.inference_mode():
        return benchutil.unwrap_output(ref(x)).float().cpu()


def _layer_step(mod, x, mode, sync):
    """The timed function of one implementation: an inference forward or a training step."""
    if mode == "infer":
        mod.eval()

        def step():
            with torch.inference_mode():
                mod(x)
            sync()
        return step
    mod.train()
    xg = x.clone().requires_grad_(True)
    params = [p for p in mod.parameters() if p.requires_grad]

    def step():
        for p in params:
            p.grad = None
        xg.grad = None
        benchutil.unwrap_output(mod(xg)).sum().backward()
        sync()
    return step


#: pause before each side's untimed call when fastrnn_alone alternates with onnxruntime:
#: longer than either runtime's worker threads spin after a run (onnxruntime's kept one
#: core busy for ~50 ms after each run here: 48.8 ms of process CPU time during a 100 ms
#: sleep).
ORT_SETTLE_S = 0.1


def _ort_run(ref, x):
    run, version = benchutil.ort_session(ref.eval(), x)
    torch.testing.assert_close(torch.from_numpy(run()), _reference_output(ref, x),
                               **_tolerances("cpu"))
    return run, f"onnxruntime-{version}"


def test_layer(benchmark, case, case_setup, fastrnn_backend, paired):
    T, N, I, H = case.shape
    ref = benchutil.torch_layer(case.cell, I, H, case.bidirectional).to(case.device)
    x = _inputs(case)
    sync = benchutil.sync_fn(case.device)
    warmup = 2 if case.device == "cuda" else 1

    if case.impl == "onnxruntime":
        run, name = _ort_run(ref, x)
        benchutil.run_benchmark(benchmark, run, case_setup, name)
        return
    if case.impl == "torch":
        step = _layer_step(ref, x, case.mode, sync)
        benchutil.run_benchmark(benchmark, step, case_setup,
                                benchutil.torch_backend_name(case.cell, case.device), warmup)
        return

    mod, resolved = benchutil.fastrnn_layer_from(ref, case.cell, fastrnn_backend)
    backend = benchutil.fastrnn_last_backend(mod, resolved)
    if case.mode == "infer":  # never time a wrong answer
        mod.eval()
        torch.testing.assert_close(_reference_output(mod, x), _reference_output(ref, x),
                                   **_tolerances(case.device))
    step = _layer_step(mod, x, case.mode, sync)
    if case.impl == "fastrnn_alone" and paired:
        # fastrnn and onnxruntime in alternation, each timed after a pause and an untimed
        # call of its own (ORT_SETTLE_S): per-round ratios, which the load drift of a shared
        # machine hardly moves; the separate onnxruntime case keeps its own times.
        run, _ = _ort_run(ref, x)
        benchutil.run_paired(benchmark, step, {"onnxruntime": run}, case_setup, backend,
                             warmup, settle=ORT_SETTLE_S)
        return
    if not paired or case.impl == "fastrnn_alone":
        benchutil.run_benchmark(benchmark, step, case_setup, backend, warmup)
        return
    # Paired: the peers run (and are timed) between fastrnn's rounds, same inputs/weights.
    # torch.nn is the paired peer; onnxruntime is timed in its own case, never between
    # fastrnn's rounds: its worker threads keep spinning after each run (its default) and
    # slow whatever runs next in the process. Measured at T500 N1 H128, 2 threads, paired
    # with it: fastrnn's RNN 3.3 ms and torch.nn's 8.4 ms, against 0.55 and 3.2 unpaired.
    peers = {"torch": _layer_step(ref, x, case.mode, sync)}
    benchutil.run_paired(benchmark, step, peers, case_setup, backend, warmup)
