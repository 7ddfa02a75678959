"""The Keras side of the IMDB job (fastrnn.keras_models, fastrnn._keras_worker): Keras's own
layers with torch.nn's weights reproduce torch.nn's outputs, final states and the models'
logits; a quick job run with --impl keras. Keras runs in subprocesses (its backend is fixed
per process, and TensorFlow's thread pools stay out of the test process). Skipped where
Keras or a backend is not installed (pip install 'fastrnn[keras]')."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fastrnn import imdb as job
from fastrnn.keras_models import KERAS_BACKENDS, keras_missing, keras_weights
from fastrnn.models import MODEL_NAMES, build_model

BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(bool(keras_missing(b)),
                                                     reason=keras_missing(b) or ""))
            for b in KERAS_BACKENDS]
SMALL = dict(vocab_size=50, embed_dim=6, hidden_size=5)
T = 12


def _keras(backend, script, tmp_path):
    """Run ``script`` (Python; ``keras`` imported on ``backend``) in a subprocess."""
    path = tmp_path / "k.py"
    path.write_text("from fastrnn.keras_models import import_keras\n"
                    f"keras = import_keras({backend!r})\n" + textwrap.dedent(script))
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          cwd=tmp_path, env=dict(__import__("os").environ,
                                                 TF_CPP_MIN_LOG_LEVEL="2"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _ids():
    torch.manual_seed(0)
    ids = torch.randint(1, SMALL["vocab_size"], (4, T))
    ids[0, :5] = 0   # pre-padded reviews of different lengths
    ids[1, :T - 1] = 0
    ids[2, :] = 0    # an empty review
    return ids


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_models_with_copied_weights_give_torch_logits(backend, tmp_path):
    """Every model of the assignment: the Keras model built from the torch.nn model's
    weights gives its logits (float32 tolerance)."""
    ids = _ids()
    expected = {}
    for name in MODEL_NAMES:
        model = build_model(name, "torch", seed=1, **SMALL).eval()
        np.savez(tmp_path / f"{name}.npz", **keras_weights(model))
        with torch.no_grad():
            expected[name] = model(ids).numpy()
    np.save(tmp_path / "ids.npy", ids.numpy())
    _keras(backend, f"""
        import numpy as np
        from fastrnn.keras_models import build_keras_model
        ids = np.load("ids.npy").astype("int32")
        out = {{}}
        for name in {list(MODEL_NAMES)!r}:
            m = build_keras_model(keras, dict(np.load(name + ".npz")), {T})
            out[name] = np.asarray(m(ids))
        np.savez("out.npz", **out)
    """, tmp_path)
    got = np.load(tmp_path / "out.npz")
    for name in MODEL_NAMES:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_layers_with_copied_weights_give_torch_outputs_and_states(backend, tmp_path):
    """The layer mapping alone: Keras's SimpleRNN, LSTM and GRU(reset_after=True) with the
    weights of torch.nn's layer return its outputs and final states."""
    from fastrnn.keras_models import _rnn_weights

    torch.manual_seed(0)
    x = torch.randn(3, 7, 4)  # [N, T, I]
    expected, arrays = {}, {"x": x.numpy()}
    for kind in ("RNN", "LSTM", "GRU"):
        layer = getattr(torch.nn, kind)(4, 5, batch_first=True)
        with torch.no_grad():
            y, h = layer(x)
        expected[kind] = [y.numpy()] + ([h[0][0].numpy(), h[1][0].numpy()]
                                         if kind == "LSTM" else [h[0].numpy()])
        for k, w in enumerate(_rnn_weights(kind, layer, "_l0")):
            arrays[f"{kind}_{k}"] = w
    np.savez(tmp_path / "w.npz", **arrays)
    _keras(backend, """
        import numpy as np
        a = np.load("w.npz")
        out = {}
        for kind, cls in (("RNN", keras.layers.SimpleRNN), ("LSTM", keras.layers.LSTM),
                          ("GRU", keras.layers.GRU)):
            kw = {"reset_after": True} if kind == "GRU" else {}
            layer = cls(5, return_sequences=True, return_state=True, **kw)
            layer.build((None, 7, 4))
            layer.set_weights([a[f"{kind}_{k}"] for k in range(3)])
            res = layer(a["x"])
            for i, t in enumerate(res):
                out[f"{kind}_{i}"] = np.asarray(t)
        np.savez("out.npz", **out)
    """, tmp_path)
    got = np.load(tmp_path / "out.npz")
    for kind, tensors in expected.items():
        for i, t in enumerate(tensors):  # Keras: output, h (, c)
            np.testing.assert_allclose(got[f"{kind}_{i}"], t, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{kind} #{i}")


@pytest.mark.skipif(bool(keras_missing()), reason=keras_missing() or "")
def test_quick_job_with_keras(tmp_path):
    """fastrnn, torch.nn and Keras on the same batches from the same weights: the same
    training losses (float32 arithmetic of three frameworks), a report section, JSON."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_imdb_job import make_reviews, write_tar

    archive = write_tar(tmp_path / "aclImdb_v1.tar.gz", make_reviews(per_class=16, seed=2))
    backend = next(b for b in KERAS_BACKENDS if not keras_missing(b))
    out = tmp_path / "k"
    assert job.main(["--quick", "--data", str(archive), "--models", "lstm,bigru", "--impl",
                     "fastrnn,torch,keras", "--keras-backend", backend, "--keras-jit", "off",
                     "--device", "cpu", "--hidden-size", "8", "--maxlen", "32",
                     "--batch-size", "8", "--eval-batch-size", "16", "--epochs", "2",
                     "--out", str(out), "--no-progress", "--seed", "1", "--threads",
                     "1"]) == 0
    summary = json.loads((out / "results.json").read_text())
    by = {(r["model"], r["impl"]): r for r in summary["results"]}
    for name in ("lstm", "bigru"):
        k, t = by[(name, "keras")], by[(name, "torch")]
        assert backend in k["backend"]
        for ek, et in zip(k["epochs"], t["epochs"]):
            assert ek["samples"] == et["samples"]
            assert abs(ek["loss"] - et["loss"]) < 1e-4, (name, ek, et)
    comps = {c["model"]: c for c in summary["keras_comparisons"]}
    assert set(comps) == {"lstm", "bigru"}
    assert all(c["initial_logit_max_abs_diff"] < 1e-5 for c in comps.values())
    assert all(c["fastrnn_train_speedup"] > 0 for c in comps.values())
    assert "## Against Keras" in (out / "report.md").read_text()


def test_keras_missing_is_one_line_before_data(tmp_path, monkeypatch):
    """--impl keras without Keras: what to install, before any data preparation."""
    import fastrnn.keras_models as km

    monkeypatch.setattr(km.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"--impl keras: Keras is not installed: "
                                         r"pip install 'fastrnn\[keras\]'"):
        job.main(["--quick", "--data", str(tmp_path / "missing.tar.gz"), "--impl",
                  "fastrnn,keras", "--device", "cpu", "--out", str(tmp_path / "o")])


def test_keras_side_is_float32_and_padded_only(tmp_path):
    if keras_missing():
        pytest.skip(keras_missing())
    with pytest.raises(SystemExit, match="--impl keras runs in float32 only"):
        job.main(["--quick", "--data", str(tmp_path / "missing.tar.gz"), "--impl", "keras",
                  "--precision", "bf16", "--device", "cpu", "--out", str(tmp_path / "o")])
