"""pytest fixtures: the ``cpu_backend`` parametrisation (every available CPU backend).

Where a test goes (one oracle per contract: torch.nn for what the modules promise, the
reference backend for what a backend promises):
  modules against torch.nn ........ test_modules.py (layers), test_equivalence.py (grids
                                     of configurations), test_partial_grads.py (subsets of
                                     inputs needing a gradient), test_fastpath.py (cells,
                                     one-step calls, fused inference steps)
  the peephole LSTM ............... test_peephole.py (against its equations)
  LayerNorm layers, zoneout,
  recurrent dropout, weight drop .. test_regularized.py (against their equations, masks
                                     drawn in the documented order)
  ops and backends ................ test_ops.py (opcheck, gradcheck, backends against the
                                     reference), test_backend_contract.py, test_backends.py
                                     (choice, settings), test_fuzz.py (random shapes)
  compiled pieces ................. test_compiled_extension.py, test_pack_cache.py,
                                     test_buffer_pool.py, test_pool.py
  CUDA ............................ test_cuda.py, test_cuda_dispatch.py (skip without a GPU)
  deployment ...................... test_export.py (ONNX, TorchScript, torch.func, AOTI,
                                     second derivatives)
  batched gradients and vmap ...... test_batched_grads.py (is_grads_batched, vectorised
                                     jacobians, vmap over modules and ensembles)
  errors .......................... test_errors.py (bad input: torch.nn's errors, no kernel
                                     run), test_zero_sizes.py (empty batches and sizes)
  low precision, autocast ......... test_precision.py (dtypes and numbers against torch.nn)
  batched gradients, vmap ......... test_batched_grads.py
  IMDB data and job ............... test_datasets.py, test_imdb_job.py, test_keras.py (the
                                     Keras implementation); test_info.py
Helpers shared by several files live in rnn_cases.py; fixture data is built by the tests
(fixtures/), nothing is downloaded.
"""
import pytest

from rnn_cases import CPU_BACKENDS


def pytest_generate_tests(metafunc):
    if "cpu_backend" in metafunc.fixturenames:
        metafunc.parametrize("cpu_backend", CPU_BACKENDS)


@pytest.fixture
def cpu_backends():
    return list(CPU_BACKENDS)
