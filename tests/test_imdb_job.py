"""The six models (and the two peephole ones) and the fastrnn-imdb job, end to end in quick
mode on a tiny fixture (CPU)."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from fastrnn import imdb as job
from fastrnn.backends import available_backends
from fastrnn.datasets import download as dl
from fastrnn.datasets import imdb as imdb_data
from fastrnn.models import ALL_MODEL_NAMES, MODEL_NAMES, build_model, build_pair, \
    count_parameters, fastrnn_layers_available, torch_side_label

from fixtures.imdb_fixture import make_reviews, write_tar

NO_FASTRNN = fastrnn_layers_available()
needs_fastrnn = pytest.mark.skipif(NO_FASTRNN is not None, reason=f"fastrnn layers: {NO_FASTRNN}")
# The compiled CPU backend when built, else the pure-PyTorch reference (always present, no
# JIT warm-up, unlike numba); the job's speed is measured by running the job, not here.
BACKEND = "cpu" if "cpu" in available_backends() else "reference"
SMALL = dict(vocab_size=50, embed_dim=6, hidden_size=5)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTRNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTRNN_IMDB_PATH", raising=False)
    monkeypatch.setattr(imdb_data, "_memo", {})
    monkeypatch.setattr(imdb_data, "_key_memo", {})

    def no_network(url, timeout):
        raise AssertionError(f"a test tried to download {url}")
    monkeypatch.setattr(dl, "_urlopen", no_network)


@pytest.fixture
def archive(tmp_path):
    return write_tar(tmp_path / "aclImdb_v1.tar.gz", make_reviews(per_class=16, seed=2))


# ----------------------------------------------------------------------------- models

@pytest.mark.parametrize("name", ALL_MODEL_NAMES)
def test_torch_model_shapes(name):
    model = build_model(name, "torch", **SMALL)
    bi = name.startswith("bi")
    assert model.classifier.in_features == 5 * (2 if bi else 1)
    assert model.rnn.bidirectional == bi
    assert model.embedding.num_embeddings == 50 and model.embedding.embedding_dim == 6
    out = model(torch.randint(0, 50, (4, 9)))
    assert out.shape == (4,)


def test_same_seed_same_weights_and_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_model("bilstm", "torch", seed=5, **SMALL)
    after = torch.rand(3)
    assert torch.equal(before, after)  # building never consumed the caller's RNG
    b = build_model("bilstm", "torch", seed=5, **SMALL)
    c = build_model("bilstm", "torch", seed=6, **SMALL)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.rnn.weight_hh_l0, c.rnn.weight_hh_l0)


def test_bad_names():
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("transformer", "torch")
    with pytest.raises(ValueError, match="impl must be one of"):
        build_model("lstm", "keras")


@needs_fastrnn
@pytest.mark.parametrize("name", ALL_MODEL_NAMES)
def test_fastrnn_model_matches_torch(name):
    pair = build_pair(name, seed=3, backend=BACKEND, **SMALL)
    sd_t, sd_f = pair["torch"].state_dict(), pair["fastrnn"].state_dict()
    assert sd_t.keys() == sd_f.keys()
    assert all(torch.equal(sd_t[k], sd_f[k]) for k in sd_t)
    assert type(pair["fastrnn"].rnn).__module__.startswith("fastrnn")
    assert count_parameters(pair["torch"]) == count_parameters(pair["fastrnn"])
    x = torch.randint(0, 50, (3, 11))
    x[:, :4] = 0  # pre-padding
    outs = {}
    for impl, m in pair.items():
        out = m(x)
        out.sum().backward()
        outs[impl] = (out, m.embedding.weight.grad) + tuple(p.grad for p in m.rnn.parameters())
    # (the LayerNorm models' fused kernels sum in another order than their torch twin's step
    # loop; a padding step's zero row, normalised with 1/sqrt(eps), makes some gradients
    # ~1e15 with small entries beside them: the tolerance scales with each tensor's largest
    # value; both sides are within 2e-6 of it from float64)
    for a, b in zip(outs["torch"], outs["fastrnn"]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * max(1.0, float(a.abs().max())))


# ----------------------------------------------------------------------------- CLI

def test_parser_defaults_and_quick():
    args = job.resolve_config(job.build_parser().parse_args([]))
    assert args.models == list(MODEL_NAMES) and args.impl == ["fastrnn", "torch"]
    assert (args.epochs, args.batch_size, args.hidden_size, args.maxlen, args.num_words,
            args.lr, args.lr_schedule) == (5, 64, 128, 500, 10000, 1e-3, "cosine")
    assert args.device in ("cpu", "cuda")
    quick = job.resolve_config(job.build_parser().parse_args(["--quick", "--epochs", "2"]))
    assert (quick.epochs, quick.train_size, quick.maxlen) == (2, 512, 100)


def test_parser_rejects_unknown_models(capsys):
    with pytest.raises(SystemExit):
        job.build_parser().parse_args(["--models", "lstm,cnn"])
    assert "subset of" in capsys.readouterr().err
    args = job.build_parser().parse_args(["--models", "GRU, lstm,gru", "--impl", "torch"])
    assert args.models == ["gru", "lstm"] and args.impl == ["torch"]


def test_missing_data_is_a_clean_exit(tmp_path):
    with pytest.raises(SystemExit) as err:
        job.main(["--data", str(tmp_path / "nope.tar.gz"), "--impl", "torch", "--no-progress",
                  "--out", str(tmp_path / "out")])
    assert "IMDB data not found" in str(err.value.code)
    with pytest.raises(SystemExit) as err:
        job.main(["--no-download", "--impl", "torch", "--no-progress",
                  "--out", str(tmp_path / "out")])
    assert "FASTRNN_IMDB_PATH" in str(err.value.code)


def test_module_help_runs():
    res = subprocess.run([sys.executable, "-m", "fastrnn.imdb", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "--models" in res.stdout and "--quick" in res.stdout


# ----------------------------------------------------------------------------- end to end

def _run_quick(archive, out, impls, models=",".join(MODEL_NAMES)):
    return job.main(["--quick", "--data", str(archive), "--models", models, "--impl", impls,
                     "--device", "cpu", "--backend", BACKEND, "--hidden-size", "8",
                     "--maxlen", "32", "--batch-size", "8", "--eval-batch-size", "16",
                     "--epochs", "2", "--out", str(out), "--no-progress", "--seed", "1",
                     "--lr", "0.01",
                     # one thread: on a busy machine, two spinning threads per process
                     # multiply this tiny job's wall time
                     "--threads", "1"])


def test_bf16_precision_runs_autocast_for_both_implementations(tmp_path, archive):
    """--precision bf16: each implementation's forward under CPU autocast, float32
    parameters. Where torch.nn cannot run a model's bf16 autocast on this CPU (its oneDNN
    LSTM needs bf16 instructions), that run is reported as not run, never a crash."""
    out = tmp_path / "bf16"
    assert job.main(["--quick", "--data", str(archive), "--models", "lstm,gru", "--device",
                     "cpu", "--backend", BACKEND, "--hidden-size", "8", "--maxlen", "32",
                     "--batch-size", "8", "--eval-batch-size", "16", "--epochs", "1", "--out",
                     str(out), "--no-progress", "--seed", "1", "--threads", "1",
                     "--precision", "bf16", "--save-models"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["config"]["precision"] == "bf16"
    ran = {(r["model"], r["impl"]) for r in summary["results"]}
    skipped = {(u["model"], u["impl"]) for u in summary["unavailable"]}
    assert {("lstm", "fastrnn"), ("gru", "fastrnn"), ("gru", "torch")} <= ran
    assert skipped <= {("lstm", "torch")} and ran | skipped == {
        (m, i) for m in ("lstm", "gru") for i in ("fastrnn", "torch")}
    for r in summary["results"]:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and math.isfinite(r["final_train_loss"])
    state = torch.load(out / "lstm-fastrnn.pt")
    assert all(v.dtype == torch.float32 for v in state.values())  # parameters stay float32
    report = (out / "report.md").read_text()
    assert "bfloat16 autocast" in report
    if skipped:
        assert "not run: torch.nn cannot run bf16 autocast" in report


def test_threads_restored(tmp_path, archive):
    before = torch.get_num_threads()
    _run_quick(archive, tmp_path / "o", "torch", models="rnn")
    assert torch.get_num_threads() == before


def _check_outputs(out, models, impls):
    summary = json.loads((out / "results.json").read_text())
    for key in ("config", "environment", "data", "results", "comparisons",
                "accuracy_tolerance_pp", "total_seconds", "files"):
        assert key in summary, key
    assert summary["data"]["train_reviews"] == 32 and summary["data"]["test_reviews"] == 32
    assert [(r["model"], r["impl"]) for r in summary["results"]] == \
        [(m, i) for m in models for i in impls]
    for r in summary["results"]:
        for key in ("parameters", "train_seconds_per_epoch", "train_samples_per_s",
                    "inference_samples_per_s", "test_accuracy", "epochs", "warmup_seconds"):
            assert key in r, key
        assert len(r["epochs"]) == 2 and 0.0 <= r["test_accuracy"] <= 1.0
        assert r["train_samples_per_s"] > 0 and r["inference_samples_per_s"] > 0
    for name in (summary["files"]["speed_accuracy"], summary["files"]["speedup"]):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| model | impl | backend | params |" in report
    assert "|---|---|---|---:|" in report
    for m in models:
        assert f"| {job.DISPLAY[m]} |" in report
    assert "![speed and accuracy](imdb_speed_accuracy.png)" in report
    assert "cosine decay" in report  # the default schedule is stated
    return summary


@needs_fastrnn
def test_job_end_to_end_quick(tmp_path, archive, capsys):
    out = tmp_path / "out"
    assert _run_quick(archive, out, "fastrnn,torch") == 0
    summary = _check_outputs(out, list(MODEL_NAMES), ["fastrnn", "torch"])
    assert len(summary["comparisons"]) == 6
    for c in summary["comparisons"]:
        assert c["identical_initial_weights"]
        assert c["initial_logit_max_abs_diff"] < 1e-5
        assert c["accuracy_within_tolerance"], c
        assert abs(c["final_train_loss_diff"]) < 1e-3
        assert c["train_speedup"] > 0 and c["inference_speedup"] > 0
    assert all(r.get("backend") == BACKEND for r in summary["results"] if r["impl"] == "fastrnn")
    printed = capsys.readouterr().out
    assert "train speedup" in printed and "Bi-GRU" in printed and "results.json" in printed
    # the synthetic task is easy: the gated models learn it
    best = max(r["test_accuracy"] for r in summary["results"])
    assert best > 0.6


@needs_fastrnn
def test_job_peephole_models(tmp_path, archive):
    """--models peephole,bipeephole: the torch side is the step loop, labelled so."""
    out = tmp_path / "peephole"
    assert _run_quick(archive, out, "fastrnn,torch", models="peephole,bipeephole") == 0
    summary = _check_outputs(out, ["peephole", "bipeephole"], ["fastrnn", "torch"])
    for c in summary["comparisons"]:
        assert c["identical_initial_weights"] and c["initial_logit_max_abs_diff"] < 1e-5
        assert abs(c["final_train_loss_diff"]) < 1e-3
    report = (out / "report.md").read_text()
    assert "| Peephole | torch | torch step loop |" in report
    assert "| Bi-Peephole | fastrnn | " + BACKEND + " |" in report


def test_job_regularized_models(tmp_path, archive):
    """--models lnlstm,gru with --zoneout/--recurrent-dropout/--weight-drop: the torch side
    is the step loop (labelled so) with the same masks, the options stated in the report."""
    out = tmp_path / "reg"
    argv = ["--quick", "--data", str(archive), "--models", "lnlstm,gru", "--impl",
            "fastrnn,torch", "--device", "cpu", "--backend", BACKEND, "--hidden-size", "8",
            "--maxlen", "32", "--batch-size", "8", "--eval-batch-size", "16", "--epochs", "2",
            "--out", str(out), "--no-progress", "--seed", "1", "--lr", "0.01", "--threads",
            "1", "--zoneout", "0.1", "--recurrent-dropout", "0.2", "--weight-drop", "0.3"]
    assert job.main(argv) == 0
    summary = _check_outputs(out, ["lnlstm", "gru"], ["fastrnn", "torch"])
    for c in summary["comparisons"]:
        assert c["identical_initial_weights"] and c["initial_logit_max_abs_diff"] < 1e-5
    report = (out / "report.md").read_text()
    assert "| LN-LSTM | torch | torch step loop |" in report
    assert "| GRU | torch | torch step loop |" in report
    assert "Regularisation: zoneout 0.1, recurrent dropout 0.2, weight drop 0.3" in report


@pytest.mark.parametrize("name", ["lstm", "gru", "bilstm", "lnlstm", "bilngru"])
def test_regularized_models_match_their_step_loops(name):
    """build_model with the options: the torch side (RegularizedLoop) and fastrnn draw the
    same masks and give the same logits and gradients, in training and in eval."""
    opts = dict(zoneout=0.2, recurrent_dropout=0.3, weight_drop=0.25)
    pair = build_pair(name, seed=3, backend=BACKEND, **SMALL, **opts)
    assert type(pair["torch"].rnn).__name__ == "RegularizedLoop"
    assert torch_side_label(name, opts) == "torch step loop"
    assert torch_side_label(name) == ("torch.nn" if name in MODEL_NAMES else "torch step loop")
    x = torch.randint(0, 50, (3, 11))
    x[:, :4] = 0
    for train in (True, False):
        outs = {}
        for impl, m in pair.items():
            m.train(train)
            m.zero_grad()
            torch.manual_seed(5)
            out = m(x)
            out.sum().backward()
            outs[impl] = (out,) + tuple(p.grad for p in m.parameters())
        for a, b in zip(outs["torch"], outs["fastrnn"]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_regularization_options_are_checked(tmp_path, archive):
    base = ["--quick", "--data", str(archive), "--impl", "torch", "--device", "cpu",
            "--out", str(tmp_path / "o"), "--no-progress"]
    with pytest.raises(SystemExit, match="--zoneout must be in \\[0, 1\\)"):
        job.main(base + ["--models", "lstm", "--zoneout", "1.0"])
    with pytest.raises(SystemExit, match="not rnn, peephole"):
        job.main(base + ["--models", "rnn,lstm,peephole", "--weight-drop", "0.5"])
    with pytest.raises(ValueError, match="regularisation options"):
        build_model("rnn", "torch", zoneout=0.1, **SMALL)


def test_default_models_are_the_assignments_six():
    args = job.resolve_config(job.build_parser().parse_args([]))
    assert args.models == ["rnn", "lstm", "gru", "birnn", "bilstm", "bigru"]


def test_job_torch_only(tmp_path, archive):
    out = tmp_path / "torch-only"
    assert _run_quick(archive, out, "torch", models="gru,birnn") == 0
    summary = _check_outputs(out, ["gru", "birnn"], ["torch"])
    assert summary["comparisons"] == []


def test_interrupted_run_keeps_its_finished_models(tmp_path, archive, monkeypatch):
    """partial-results.json holds the models finished so far while the job runs (an
    interrupted run keeps them); a complete run removes it and writes results.json."""
    out = tmp_path / "partial"
    warmup = job.Run.warmup

    def interrupt_gru(self, *a):
        if self.name == "gru":
            raise KeyboardInterrupt
        return warmup(self, *a)

    monkeypatch.setattr(job.Run, "warmup", interrupt_gru)
    with pytest.raises(KeyboardInterrupt):
        _run_quick(archive, out, "torch", models="rnn,gru")
    partial = json.loads((out / job.PARTIAL).read_text())
    assert partial["complete"] is False and not (out / "results.json").exists()
    assert [(r["model"], r["impl"]) for r in partial["results"]] == [("rnn", "torch")]
    assert 0.0 <= partial["results"][0]["test_accuracy"] <= 1.0
    monkeypatch.setattr(job.Run, "warmup", warmup)
    assert _run_quick(archive, out, "torch", models="rnn,gru") == 0
    assert not (out / job.PARTIAL).exists()
    _check_outputs(out, ["rnn", "gru"], ["torch"])


def test_forget_bias_init_is_shared_by_both_implementations():
    from fastrnn.models import init_forget_bias
    pair = build_pair("bilstm", seed=4, backend=BACKEND, forget_bias=1.0, **SMALL)
    H = SMALL["hidden_size"]
    for model in pair.values():
        for sfx in ("l0", "l0_reverse"):
            b_ih = getattr(model.rnn, f"bias_ih_{sfx}")
            b_hh = getattr(model.rnn, f"bias_hh_{sfx}")
            assert torch.all(b_ih[H:2 * H] == 1.0) and torch.all(b_hh[H:2 * H] == 0.0)
    sd_t, sd_f = pair["torch"].state_dict(), pair["fastrnn"].state_dict()
    assert all(torch.equal(sd_t[k], sd_f[k]) for k in sd_t)
    # torch's init is kept with None, and GRU layers are left alone
    plain = build_model("lstm", "torch", seed=4, forget_bias=None, **SMALL)
    assert not torch.all(plain.rnn.bias_ih_l0[H:2 * H] == 1.0)
    gru = build_model("gru", "torch", seed=4, **SMALL)
    before = gru.rnn.bias_ih_l0.clone()
    init_forget_bias(gru.rnn, 5.0)
    assert torch.equal(before, gru.rnn.bias_ih_l0)


@pytest.mark.parametrize("name", ["birnn", "bilstm", "bigru"])
def test_bidirectional_reverse_feature_ignores_the_padding(name):
    """The reverse direction's feature is its output at the review's first word: the same
    however much pre-padding precedes the review (it never runs over the padding)."""
    model = build_model(name, "torch", seed=1, **SMALL).double()
    review = torch.randint(1, 50, (1, 6))
    short = torch.cat([torch.zeros(1, 3, dtype=torch.long), review], dim=1)
    long = torch.cat([torch.zeros(1, 11, dtype=torch.long), review], dim=1)
    H = SMALL["hidden_size"]
    with torch.no_grad():
        a, b = model.features(short), model.features(long)
        torch.testing.assert_close(a[:, H:], b[:, H:])
        # and it is the reverse direction's output at the first word, not its final state
        y, _ = model.rnn(model.embedding(long.t()))
        torch.testing.assert_close(b[:, H:], y[11, :, H:])
    # a batch of reviews of different lengths, including an empty one
    batch = torch.zeros(3, 8, dtype=torch.long)
    batch[0, 2:] = torch.randint(1, 50, (6,))
    batch[1, :] = torch.randint(1, 50, (8,))
    out = model(batch)
    assert out.shape == (3,) and torch.isfinite(out).all()


@pytest.mark.parametrize("tf32", [False, True])
def test_disagreement_note_states_its_causes(tf32):
    """A pair more than 0.5 pp apart gets a note with the measured facts (initial logits,
    final loss) and, on a GPU whose cuDNN ran in TF32, that too."""
    summary = {
        "config": {"quick": False, "epochs": 4, "maxlen": 500},
        "data": {"train_reviews": 25000, "test_reviews": 25000, "maxlen": 500},
        "environment": {"device": "cuda" if tf32 else "cpu", "cudnn_allow_tf32": tf32},
        "comparisons": [{"display": "Bi-LSTM", "identical_initial_weights": True,
                         "accuracy_within_tolerance": False, "accuracy_diff_pp": 0.53,
                         "initial_logit_max_abs_diff": 8e-5, "final_train_loss_diff": -0.0081}],
        "results": [],
    }
    notes = job.accuracy_notes(summary)
    assert len(notes) == 1
    assert "Bi-LSTM" in notes[0] and "+0.53 pp" in notes[0] and "8.00e-05" in notes[0]
    assert "-0.0081" in notes[0]
    assert ("TF32" in notes[0]) is tf32


@pytest.mark.parametrize("model,lengths,loss", [("lnlstm", False, float("nan")),
                                                 ("bilngru", False, None),
                                                 ("lnlstm", True, float("inf")),
                                                 ("lstm", False, float("nan"))])
def test_diverged_training_gets_a_note(model, lengths, loss):
    """A model whose epoch loss was not finite (NaN in memory, null in results.json) gets a
    note saying its accuracy means nothing; a LayerNorm model on pre-padded reviews also the
    remedy (--lengths on). A finite run gets none."""
    def summary(bad):
        epochs = [{"epoch": 1, "loss": 0.69}, {"epoch": 2, "loss": loss if bad else 0.5}]
        return {"config": {"quick": False, "epochs": 2, "maxlen": 500},
                "data": {"train_reviews": 25000, "test_reviews": 25000, "maxlen": 500},
                "environment": {"device": "cpu"}, "comparisons": [],
                "results": [{"model": model, "display": "X", "impl": "fastrnn",
                             "lengths": lengths, "test_accuracy": 0.5, "epochs": epochs}]}
    assert job.accuracy_notes(summary(False)) == []
    notes = job.accuracy_notes(summary(True))
    assert len(notes) == 1 and "diverged" in notes[0] and "from epoch 2" in notes[0]
    assert ("--lengths on" in notes[0]) is (model.startswith(("ln", "biln")) and not lengths)


def test_validation_split_and_best_epoch(tmp_path, archive):
    """--val-size holds out the last training reviews and scores them every epoch;
    --select-epoch best-val tests the weights of the epoch that scored best there."""
    out = tmp_path / "val"
    args = ["--quick", "--data", str(archive), "--models", "gru", "--impl", "fastrnn,torch",
            "--device", "cpu", "--backend", BACKEND, "--hidden-size", "8", "--maxlen", "32",
            "--batch-size", "8", "--eval-batch-size", "16", "--epochs", "3", "--out", str(out),
            "--no-progress", "--seed", "1", "--lr", "0.01", "--threads", "1",
            "--val-size", "8", "--select-epoch", "best-val"]
    assert job.main(args) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["data"]["val_reviews"] == 8 and summary["data"]["train_reviews"] > 8
    for r in summary["results"]:
        vals = [e["val_accuracy"] for e in r["epochs"]]
        assert len(vals) == 3 and all(0.0 <= v <= 1.0 for v in vals)
        assert r["selected_epoch"] == 1 + vals.index(max(vals))  # first of the best
        assert r["selected_val_accuracy"] == max(vals)
    report = (out / "report.md").read_text()
    assert "8 training reviews were held out" in report and "best-validation epoch" in report


def test_validation_options_are_checked(tmp_path, archive):
    base = ["--quick", "--data", str(archive), "--models", "rnn", "--impl", "torch",
            "--device", "cpu", "--out", str(tmp_path / "o"), "--no-progress"]
    with pytest.raises(SystemExit, match="needs a validation split"):
        job.main(base + ["--select-epoch", "best-val"])
    with pytest.raises(SystemExit, match="--val-size must be >= 0"):
        job.main(base + ["--val-size", "-1"])
    with pytest.raises(SystemExit, match="leaves no training reviews"):
        job.main(base + ["--val-size", "100000"])


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_schedule(schedule):
    """cosine: batch s of S runs at lr * (1 + cos(pi s / S)) / 2, from lr down towards 0;
    constant: lr throughout."""
    args = job.resolve_config(job.build_parser().parse_args(
        ["--lr", "0.1", "--lr-schedule", schedule, "--hidden-size", "4", "--embed-dim", "3",
         "--num-words", "20", "--device", "cpu", "--impl", "torch"]))
    r = job.Run("gru", "torch", args, torch.device("cpu"), total_steps=4)
    xb, yb = torch.randint(0, 20, (2, 5)), torch.tensor([0.0, 1.0])
    used = []
    for _ in range(4):
        r.step(xb, yb)
        used.append(r.optimizer.param_groups[0]["lr"])
    if schedule == "cosine":
        expected = [0.1 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    else:
        expected = [0.1] * 4
    assert used == pytest.approx(expected, rel=1e-12)


@needs_fastrnn
def test_export_onnx_scores_the_test_set_with_onnxruntime(tmp_path, archive):
    """--export-onnx: each trained fastrnn model is written as ONNX and onnxruntime (alone in
    its own process) scores the test set with PyTorch's predictions."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path / "onnx"
    job.main(["--quick", "--data", str(archive), "--models", "lstm,bigru,bipeephole",
              "--impl", "fastrnn",
              "--device", "cpu", "--backend", BACKEND, "--hidden-size", "8", "--maxlen", "32",
              "--batch-size", "8", "--eval-batch-size", "16", "--epochs", "1", "--out",
              str(out), "--no-progress", "--threads", "1", "--export-onnx"])
    summary = json.loads((out / "results.json").read_text())
    for r in summary["results"]:
        assert (out / r["onnx_file"]).stat().st_size > 0
        assert r["onnxruntime_same_predictions"]
        assert r["onnxruntime_max_abs_logit_diff"] < 1e-4
        assert r["onnxruntime_test_accuracy"] == r["test_accuracy"]
        assert r["onnxruntime_samples_per_s"] > 0
    assert "onnxruntime infer samples/s" in (out / "report.md").read_text()


# ----------------------------------------------------------------------------- length-aware

def test_post_padding_and_lengths():
    pre = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 9], [0, 0, 0, 0, 8]])
    lengths = job.review_lengths(pre)
    assert lengths.tolist() == [3, 5, 1]
    assert job.post_padded(pre, lengths).tolist() == [[5, 6, 7, 0, 0], [1, 2, 3, 4, 9],
                                                      [8, 0, 0, 0, 0]]
    assert job.review_lengths(torch.zeros(1, 4, dtype=torch.long)).tolist() == [1]


def test_bucketed_batches_cover_every_review_once_and_are_reproducible():
    lengths = torch.randint(1, 500, (1000,), generator=torch.Generator().manual_seed(0))
    a = job.bucketed_batches(lengths, 8, torch.Generator().manual_seed(3))
    b = job.bucketed_batches(lengths, 8, torch.Generator().manual_seed(3))
    c = job.bucketed_batches(lengths, 8, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b) == 125
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert sorted(torch.cat(a).tolist()) == list(range(1000))
    # similar lengths per batch: far less padding than random batches of the same size
    padded = sum(len(i) * int(lengths[i].max()) for i in a)
    random_batches = torch.randperm(1000, generator=torch.Generator().manual_seed(5)).split(8)
    assert padded < 0.6 * sum(len(i) * int(lengths[i].max()) for i in random_batches)


@pytest.mark.parametrize("name", ALL_MODEL_NAMES)
@pytest.mark.parametrize("impl", ["torch", "fastrnn"])
def test_lengths_run_each_review_over_its_own_words(name, impl):
    """With lengths, a batch's logits are each review's alone, without any padding."""
    if impl == "fastrnn" and NO_FASTRNN:
        pytest.skip(NO_FASTRNN)
    model = build_model(name, impl, seed=2, backend=BACKEND if impl == "fastrnn" else None,
                        **SMALL).eval()
    gen = torch.Generator().manual_seed(1)
    pre = torch.randint(1, 50, (4, 9), generator=gen)
    for n, k in enumerate([0, 3, 8, 5]):
        pre[n, :k] = 0  # pre-padding: lengths 9, 6, 1, 4
    lengths = job.review_lengths(pre)
    post = job.post_padded(pre, lengths)[:, :int(lengths.max())]
    with torch.no_grad():
        batch = model(post, lengths)
        alone = torch.stack([model(pre[n:n + 1, 9 - int(lengths[n]):])[0] for n in range(4)])
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-6)


@needs_fastrnn
def test_job_lengths_both(tmp_path, archive):
    out = tmp_path / "lengths"
    assert job.main(["--quick", "--data", str(archive), "--models", "lstm,bigru", "--impl",
                     "fastrnn,torch", "--device", "cpu", "--backend", BACKEND, "--hidden-size",
                     "8", "--maxlen", "32", "--batch-size", "8", "--eval-batch-size", "16",
                     "--epochs", "2", "--out", str(out), "--no-progress", "--seed", "1",
                     "--threads", "1", "--lengths", "both"]) == 0
    summary = json.loads((out / "results.json").read_text())
    keys = [(r["model"], r["impl"], r["lengths"]) for r in summary["results"]]
    assert keys == [(m + s, i, bool(s)) for m in ("lstm", "bigru") for s in ("", "+len")
                    for i in ("fastrnn", "torch")]
    for c in summary["comparisons"]:
        assert c["identical_initial_weights"] and c["initial_logit_max_abs_diff"] < 1e-5
        assert abs(c["final_train_loss_diff"]) < 1e-3
    assert summary["data"]["mean_train_length"] < 32
    report = (out / "report.md").read_text()
    assert "| Bi-GRU (lengths) | fastrnn |" in report and "| LSTM | torch |" in report


# ----------------------------------------------------------------------------- torchrun

@needs_fastrnn
def test_torchrun_two_processes_train_like_one_process(tmp_path, archive):
    """torchrun with 2 processes (gloo, DistributedDataParallel), batch 4 per process, gives
    the weights of one process over the same global batches of 8.

    In float64: the two runs sum the same gradients in different orders (two half-batch
    GEMMs and an all-reduce against one full-batch GEMM, whose blocking depends on the CPU's
    vector width), so they agree only to the rounding of that order. In float32 that was
    3.2e-6 after two epochs of Adam on AMD hosts (about 50 float32 ulps of amplification);
    in float64 it is 7e-15 there, far below the 1e-9 asserted here, while training on the
    wrong batches (batch 4 instead of 8) moves every tensor by more than 9e-3."""
    common = ["--quick", "--data", str(archive), "--models", "bilstm", "--impl", "fastrnn",
              "--device", "cpu", "--backend", BACKEND, "--hidden-size", "8", "--maxlen", "32",
              "--eval-batch-size", "16", "--epochs", "2", "--no-progress", "--seed", "1",
              "--lr", "0.01", "--threads", "1", "--save-models", "--precision", "fp64"]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "fastrnn.imdb"] + common + ["--batch-size", "4", "--out", str(tmp_path / "two")],
        # from outside the checkout: `-m` would import the source tree (no compiled extension
        # in it) ahead of the installed package
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert job.main(common + ["--batch-size", "8", "--out", str(tmp_path / "one")]) == 0
    a = torch.load(tmp_path / "two" / "bilstm-fastrnn.pt")
    b = torch.load(tmp_path / "one" / "bilstm-fastrnn.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == torch.float64, k
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-9, msg=lambda m: f"{k}: {m}")
    summary = json.loads((tmp_path / "two" / "results.json").read_text())
    assert summary["environment"]["processes"] == 2
    assert summary["results"][0]["epochs"][0]["samples"] == 32  # both processes' reviews
    assert "per process x 2 processes" in (tmp_path / "two" / "report.md").read_text()


def test_machine_speed_moving_is_flagged():
    quiet = {"environment": {"torch_threads": 2, "machine_samples": {
        "gemm_gflops": [200.0, 210.0, 195.0], "load_average": [1.2, 2.1, 2.0]}}}
    assert job.machine_notes(quiet) == []
    noisy = {"environment": {"torch_threads": 2, "machine_samples": {
        "gemm_gflops": [200.0, 120.0], "load_average": [2.0, 4.3]}}}
    notes = job.machine_notes(noisy)
    assert any("120-200 GFLOP/s" in n and "unreliable" in n for n in notes)
    assert any("load average reached 4.3" in n for n in notes)


def test_results_record_the_machine_speed(tmp_path, archive):
    out = tmp_path / "m"
    assert _run_quick(archive, out, "torch", models="gru") == 0
    samples = json.loads((out / "results.json").read_text())["environment"]["machine_samples"]
    assert len(samples["gemm_gflops"]) == 2 and all(r > 0 for r in samples["gemm_gflops"])


# ----------------------------------------------------------------------------- argument errors

@pytest.fixture
def no_data_preparation(monkeypatch):
    """Fail the test if the job reaches data preparation."""
    def prepare(*args, **kwargs):
        raise AssertionError("the job prepared data before reporting the argument error")
    monkeypatch.setattr(job, "prepare_data", prepare)


def _job_error(tmp_path, *argv):
    """The job's exit message for ``argv``, with a --data path that does not exist (the
    argument error must come before the data is looked for)."""
    with pytest.raises(SystemExit) as err:
        job.main(["--quick", "--no-progress", "--data", str(tmp_path / "missing.tar.gz"),
                  "--out", str(tmp_path / "out"), *argv])
    msg = err.value.code
    assert isinstance(msg, str), msg
    assert "IMDB data not found" not in msg
    assert "\n" not in msg and msg.startswith("fastrnn-imdb: "), msg
    return msg


def _torch_without_cuda(monkeypatch, built):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: built)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _torch_with_gpus(monkeypatch, count):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.usefixtures("no_data_preparation")
def test_cuda_device_on_a_torch_without_cuda(tmp_path, monkeypatch):
    _torch_without_cuda(monkeypatch, built=False)
    msg = _job_error(tmp_path, "--device", "cuda")
    assert "--device cuda" in msg and "built without CUDA" in msg and "--device cpu" in msg
    _torch_without_cuda(monkeypatch, built=True)
    msg = _job_error(tmp_path, "--device", "cuda:0", "--impl", "torch")
    assert "--device cuda:0" in msg and "no CUDA GPU" in msg and "--device cpu" in msg


@pytest.mark.usefixtures("no_data_preparation")
def test_cuda_device_index_and_unknown_devices(tmp_path, monkeypatch):
    _torch_with_gpus(monkeypatch, 2)
    msg = _job_error(tmp_path, "--device", "cuda:2", "--impl", "torch")
    assert "--device cuda:2" in msg and "2 CUDA GPU(s): cuda:0 to cuda:1" in msg
    for bad in ("tpu", "gpu0", "meta"):
        msg = _job_error(tmp_path, "--device", bad, "--impl", "torch")
        assert f"--device {bad!r}" in msg and "auto, cpu, cuda, cuda:N" in msg


@pytest.mark.usefixtures("no_data_preparation")
def test_unknown_backend_is_a_parser_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        job.main(["--quick", "--backend", "bogus", "--data", str(tmp_path / "missing.tar.gz"),
                  "--no-progress", "--out", str(tmp_path / "out")])
    assert err.value.code == 2
    text = capsys.readouterr().err
    assert "argument --backend: invalid choice: 'bogus'" in text
    assert all(f"'{b}'" in text for b in job.BACKEND_CHOICES)
    assert job.build_parser().parse_args(["--backend", "Reference"]).backend == "reference"


@pytest.mark.usefixtures("no_data_preparation")
def test_backend_for_the_wrong_device(tmp_path, monkeypatch):
    msg = _job_error(tmp_path, "--device", "cpu", "--backend", "cuda")
    assert "--backend cuda needs a CUDA device" in msg and "--device cpu" in msg
    _torch_with_gpus(monkeypatch, 1)
    msg = _job_error(tmp_path, "--device", "cuda", "--backend", "numba")
    assert "--backend numba runs on the CPU" in msg and "--device cuda" in msg
    # --impl torch alone: no fastrnn backend runs, nothing to check
    args = job.resolve_config(job.build_parser().parse_args(
        ["--device", "cpu", "--backend", "cuda", "--impl", "torch"]))
    assert args.backend == "cuda"


@pytest.mark.usefixtures("no_data_preparation")
def test_unavailable_backend_says_why(tmp_path, monkeypatch):
    from fastrnn import backends
    monkeypatch.setitem(backends._cache, "numba", (None, "numba is not installed (test)"))
    msg = _job_error(tmp_path, "--device", "cpu", "--backend", "numba")
    assert "--backend numba" in msg and "numba is not installed (test)" in msg
    assert "reference" in msg and "--impl torch" in msg
    # on a CUDA device the job runs fastrnn's own kernels unless told otherwise
    _torch_with_gpus(monkeypatch, 1)
    monkeypatch.setitem(backends._cache, "cuda", (None, "built without CUDA kernels (test)"))
    msg = _job_error(tmp_path, "--device", "cuda")
    assert "--device cuda" in msg and "unavailable" in msg and "--impl torch" in msg
    # a $FASTRNN_BACKEND that is no backend is named too
    _torch_without_cuda(monkeypatch, built=False)
    monkeypatch.setenv("FASTRNN_BACKEND", "bogus")
    msg = _job_error(tmp_path, "--device", "cpu")
    assert "FASTRNN_BACKEND" in msg and "bogus" in msg


def test_data_help_and_not_found_name_the_kaggle_csv_and_offline_switch(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTRNN_OFFLINE", raising=False)
    help_text = " ".join(job.build_parser().format_help().split())
    assert "Kaggle's 'IMDB Dataset.csv'" in help_text and "$FASTRNN_OFFLINE=1" in help_text
    with pytest.raises(SystemExit) as err:
        job.main(["--data", str(tmp_path / "nope.tar.gz"), "--impl", "torch", "--device", "cpu",
                  "--no-progress", "--out", str(tmp_path / "out")])
    msg = str(err.value.code)
    assert "IMDB data not found" in msg and "IMDB Dataset.csv" in msg
    assert "FASTRNN_OFFLINE=1" in msg and "set now" not in msg
    monkeypatch.setenv("FASTRNN_OFFLINE", "1")
    with pytest.raises(SystemExit) as err:
        job.main(["--impl", "torch", "--device", "cpu", "--no-progress",
                  "--out", str(tmp_path / "out")])
    assert "FASTRNN_OFFLINE is set now: unset it" in str(err.value.code)


def test_job_reads_kaggle_csv(tmp_path):
    """The CSV the --data help names: first half of the records training, second test."""
    import csv
    reviews = make_reviews(per_class=4, seed=3)
    path = tmp_path / "IMDB Dataset.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["review", "sentiment"])
        for split in ("train", "test"):
            for label, word in (("neg", "negative"), ("pos", "positive")):
                w.writerows((data.decode("utf-8"), word) for _, data in reviews[(split, label)])
    args = job.resolve_config(job.build_parser().parse_args(
        ["--quick", "--data", str(tmp_path), "--impl", "torch", "--device", "cpu",
         "--maxlen", "16"]))
    x_train, y_train, x_test, y_test, info = job.prepare_data(args, progress=False)
    assert info["source"].endswith("IMDB Dataset.csv")
    assert (x_train.shape, x_test.shape) == ((8, 16), (8, 16))  # 4 per split and label
    assert int(y_train.sum()) == 4 and int(y_test.sum()) == 4


# ----------------------------------------------------------------------------- charts

def _chart_summary(speedups, quick, noisy):
    """A summary as the job writes it, for the chart functions."""
    results, comparisons = [], []
    for i, (model, train_speedup) in enumerate(speedups.items()):
        for impl in ("fastrnn", "torch"):
            results.append({"model": model, "display": job.display(model), "impl": impl,
                            "train_samples_per_s": 100.0 + 10 * i,
                            "inference_samples_per_s": 300.0 + i,
                            "test_accuracy": 0.52 if quick else 0.87})
        comparisons.append({"model": model, "display": job.display(model),
                            "train_speedup": train_speedup, "inference_speedup": 1.8})
    samples = ({"gemm_gflops": [200.0, 120.0], "load_average": [2.0, 4.3]} if noisy else
               {"gemm_gflops": [200.0, 205.0], "load_average": [1.0, 1.5]})
    n = 512 if quick else 25000
    return {"config": {"quick": quick},
            "data": {"train_reviews": n, "test_reviews": n, "maxlen": 100 if quick else 500},
            "environment": {"device": "cpu", "torch_threads": 2, "machine_samples": samples},
            "results": results, "comparisons": comparisons}


SPEEDUPS = {"rnn": 27.8, "lstm": 1.5, "gru": 2.2, "birnn": 2.0, "bilstm": 1.4, "bigru": 2.3}


def _texts(fig):
    return [t.get_text() for t in fig.texts] + \
        [t.get_text() for ax in fig.axes for t in ax.texts]


def test_speedup_axis_limit_ignores_a_lone_outlier():
    assert job.speedup_axis_limit([1.5, 2.2, 2.0, 1.4, 2.3, 1.8]) is None  # none far out
    limit = job.speedup_axis_limit(list(SPEEDUPS.values()) + [1.8] * 6)
    assert limit == pytest.approx(1.25 * 2.3)
    assert job.speedup_axis_limit([27.8, 1.5]) is None  # too few bars to call one an outlier
    # many bars far above the median are no outliers: the peephole models' 80x
    assert job.speedup_axis_limit([80.0, 81.0, 79.0, 1.5, 2.0, 1.6, 1.8]) is None


def test_charts_carry_the_load_warning_and_cut_the_outlier(tmp_path):
    pytest.importorskip("matplotlib")
    summary = _chart_summary(SPEEDUPS, quick=True, noisy=True)
    fig = job.speedup_figure(summary)
    ax = fig.axes[0]
    assert ax.get_ylim()[1] < 5  # the 27.8x bar does not set the scale
    texts = _texts(fig)
    assert "27.80x (cut)" in texts and "2.30x" in texts
    assert "cut at 2.88x" in ax.get_xlabel()
    assert any("unreliable" in t and "load average reached 4.3" in t for t in texts)
    fig = job.speed_accuracy_figure(summary)
    assert "speed figures unreliable" in fig._suptitle.get_text()
    assert any("120-200 GFLOP/s" in t for t in _texts(fig))
    paths = job.write_charts(summary, tmp_path)
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_reference_line_only_for_full_data_runs():
    pytest.importorskip("matplotlib")
    quick = job.speed_accuracy_figure(_chart_summary(SPEEDUPS, quick=True, noisy=False))
    acc = quick.axes[2]
    assert acc.get_title() == "test accuracy (%)" and not acc.get_lines()
    assert not any("Warning" in t for t in _texts(quick))  # a quiet machine: no warning
    full = job.speed_accuracy_figure(_chart_summary(SPEEDUPS, quick=False, noisy=False))
    (line,) = full.axes[2].get_lines()
    assert line.get_ydata()[0] == job.REFERENCE_ACCURACY_PCT
    assert "full data" in line.get_label()
    labels = [t.get_text() for t in full.axes[2].get_legend().get_texts()]
    assert any("full data" in t for t in labels)
