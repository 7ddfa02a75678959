"""fastrnn.info() and `python -m fastrnn info`."""
import subprocess
import sys

import pytest
import torch

import fastrnn
from fastrnn import backends
from fastrnn.info import Info, info


def test_info_keys_and_values():
    d = info()
    assert isinstance(d, Info) and isinstance(d, dict)
    assert d["version"] == fastrnn.__version__
    assert d["torch"] == torch.__version__
    assert set(d["backends"]) == set(backends.BACKENDS)
    assert d["backends"] == backends.availability()
    assert d["auto"]["cpu"] == backends.resolve("auto", "cpu")
    assert d["threads"]["torch"] == torch.get_num_threads()
    assert d["cuda"]["available"] == torch.cuda.is_available()
    if d["backends"]["cpu"] is None:
        assert d["cpu_isa"] in ("amxbf16", "avx512bf16", "avx512", "avx2", "generic")
        assert d["cpu_isa"] in d["cpu_isas_supported"]
    else:
        assert d["cpu_isa"] is None
    if d["backends"]["numba"] is None:
        import numba
        assert d["numba"]["version"] == numba.__version__
        assert d["numba"]["threading_layer"] in ("tbb", "omp", "workqueue")


def test_info_text_names_everything():
    d = info()
    text = str(d)
    assert repr(d) == text
    assert f"fastrnn {fastrnn.__version__}" in text and torch.__version__ in text
    for name, why in d["backends"].items():
        assert name in text
        if why is not None:
            assert why in text
    assert "numba" in text and "threads" in text and "CUDA" in text


def test_info_shows_disable_switch(monkeypatch):
    monkeypatch.setenv(backends.DISABLE_ENV, "1")
    d = info()
    assert backends.DISABLE_ENV in d["backends"]["cpu"]
    assert d["cpu_isa"] is None
    assert d["environment"][backends.DISABLE_ENV] == "1"
    assert backends.DISABLE_ENV in str(d)


def test_info_survives_bad_environment(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "turbo")
    monkeypatch.setattr(backends, "_global_default", None)
    d = info()
    assert "invalid" in d["default_backend"]


@pytest.mark.parametrize("args", [["info"], []])
def test_python_m_fastrnn_info(args):
    out = subprocess.run([sys.executable, "-m", "fastrnn", *args], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"fastrnn {fastrnn.__version__}")
    assert "backends:" in out.stdout and "reference" in out.stdout


def test_python_m_fastrnn_unknown_command():
    from fastrnn.__main__ import main
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0
