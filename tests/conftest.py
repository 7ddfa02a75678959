"""pytest fixtures: the ``cpu_backend`` parametrisation (every available CPU backend)."""
import pytest

from rnn_cases import CPU_BACKENDS


def pytest_generate_tests(metafunc):
    if "cpu_backend" in metafunc.fixturenames:
        metafunc.parametrize("cpu_backend", CPU_BACKENDS)


@pytest.fixture
def cpu_backends():
    return list(CPU_BACKENDS)
