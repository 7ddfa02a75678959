"""Keeps ``benchmarks/deployed.py`` (each runtime alone in its own process) from rotting: one
case in quick mode, outputs checked against torch.nn by the script itself."""
import importlib.util
import os

import pytest

import benchutil

HERE = os.path.dirname(os.path.abspath(__file__))


def test_deployed_quick(capsys):
    if benchutil.onnx_missing():
        pytest.skip(benchutil.onnx_missing())
    if benchutil.FASTRNN is None:
        pytest.skip(benchutil.FASTRNN_MISSING)
    spec = importlib.util.spec_from_file_location("deployed", os.path.join(HERE, "deployed.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--quick", "--cases", "lstm-bi-N1,peephole-bi-N1", "--threads", "1"])
    out = capsys.readouterr().out
    assert "| lstm-bi N=1 T=20 |" in out
    assert "| peephole-bi N=1 T=20 |" in out
