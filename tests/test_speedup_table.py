"""benchmarks/speedup_table.py on small synthetic pytest-benchmark JSON (no timing here)."""
from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "speedup_table.py"
_spec = importlib.util.spec_from_file_location("speedup_table", _PATH)
st = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(st)


def _bench(case, impl, median, *, iqr=0.001, kind="layer", gemm=None, cache=None, **info):
    cell, direction, mode, device, *shape = case.split("-")
    extra = {"kind": kind, "impl": impl, "cell": cell, "direction": direction, "mode": mode,
             "device": device, "dtype": "float32", "shape": "-".join(shape),
             "backend": {"fastrnn": "cpu", "torch": "aten"}.get(impl, "onnxruntime-1.0")}
    if gemm:
        extra["gemm_gflops"] = gemm
    if cache:
        extra["cache_gbps"] = cache
    extra.update(info)
    group = ("imdb-" if kind == "imdb-model" else "") + case
    return {"group": group, "name": f"test_layer[{case}-{impl}]",
            "fullname": f"benchmarks/test_layers.py::test_layer[{case}-{impl}]",
            "params": {"case": f"{case}-{impl}"}, "param": f"{case}-{impl}",
            "extra_info": extra,
            "stats": {"median": median, "iqr": iqr, "stddev": iqr / 2, "mean": median,
                      "min": median, "max": median, "rounds": 5}}


def _write(tmp_path, benches, name="run.json", machine_info=None):
    path = tmp_path / name
    path.write_text(json.dumps({"machine_info": machine_info or {"fastrnn_threads": 2},
                                "benchmarks": benches}))
    return str(path)


IMDB = "T500-N64-I100-H128"


def test_case_flops_from_shape():
    # The LSTM inference GEMM limit's FLOPs: 2*T*N*(I+H)*4H at T500-N64-I100-H128.
    lstm = st.case_flops("lstm", 500, 64, 100, 128)
    assert lstm == 2 * 500 * 64 * 228 * 512
    assert st.case_flops("lstm", 500, 64, 100, 128, mode="train") == 3 * lstm
    assert st.case_flops("lstm", 500, 64, 100, 128, bidirectional=True) == 2 * lstm
    assert st.case_flops("gru", 500, 64, 100, 128) * 4 == lstm * 3
    assert st.case_flops("rnn", 500, 64, 100, 128) * 4 == lstm
    # a second layer reads D*H inputs
    two = st.case_flops("gru", 10, 2, 8, 4, bidirectional=True, layers=2)
    assert two == 2 * 2 * 10 * 2 * 3 * 4 * ((8 + 4) + (8 + 4))
    assert st.parse_shape("lstm-uni-infer-cpu-T20-N1-I100-H128") == (20, 1, 100, 128)
    assert st.parse_shape("nothing") is None


def test_rows_speedup_peer_and_gemm_fraction(tmp_path):
    case = f"lstm-uni-infer-cpu-{IMDB}"
    path = _write(tmp_path, [_bench(case, "fastrnn", 0.050, gemm=180.0),
                             _bench(case, "torch", 0.060, gemm=180.0),
                             _bench(case, "onnxruntime", 0.052, gemm=180.0)])
    cases, info = st.load_runs([path])
    assert list(cases) == [case]
    assert info["fastrnn_threads"] == 2
    (row,) = st.build_rows(cases)
    assert row["fastrnn ms"] == "50.0 ± 1.00"
    assert row["torch.nn ms"] == "60.0"
    assert row["onnxruntime ms"] == "52.0"
    assert row["speedup vs torch.nn"] == "1.20x"
    assert row["speedup vs best peer"] == "1.04x"  # best peer is onnxruntime (52 ms)
    assert row["backend"] == "cpu"
    # limit = 7.47 GFLOP / 180 GFLOP/s = 41.5 ms, fastrnn at 50 ms -> 83%
    assert row["GEMM limit ms"] == "41.5"
    assert row["fastrnn % of GEMM limit"] == "83%"
    # a rate given on the command line wins over the recorded one
    (row,) = st.build_rows(cases, gemm_rates={"cpu": 83.0})
    assert row["fastrnn % of GEMM limit"] == "180%"


def test_onnxruntime_is_compared_with_fastrnn_alone(tmp_path):
    """onnxruntime (timed back to back) is set against fastrnn_alone (timed the same way),
    not against the paired fastrnn time that torch.nn's rounds leave cold."""
    case = f"gru-uni-infer-cpu-T500-N1-I100-H128"
    path = _write(tmp_path, [_bench(case, "fastrnn", 0.0022),
                             _bench(case, "torch", 0.0110),
                             _bench(case, "onnxruntime", 0.0019),
                             _bench(case, "fastrnn_alone", 0.0017)])
    cases, _ = st.load_runs([path])
    assert set(cases[case]["impls"]) == {"fastrnn", "torch", "onnxruntime", "fastrnn_alone"}
    (row,) = st.build_rows(cases, targets=True)
    assert row["fastrnn ms"].startswith("2.20")
    assert row["fastrnn alone ms"] == "1.70"
    assert row["speedup vs torch.nn"] == "5.00x"
    assert row["speedup vs best peer"] == f"{0.0019 / 0.0017:.2f}x"
    assert row["target"] == "≥2x torch.nn: met; < ort: met"
    # without fastrnn_alone the paired time is all there is
    path = _write(tmp_path, [_bench(case, "fastrnn", 0.0022), _bench(case, "torch", 0.0110),
                             _bench(case, "onnxruntime", 0.0019)], name="old.json")
    (row,) = st.build_rows(st.load_runs([path])[0], targets=True)
    assert row["speedup vs best peer"] == f"{0.0019 / 0.0022:.2f}x"
    assert row["target"].endswith("< ort: MISSED")


def test_onnxruntime_alternated_with_fastrnn_alone_uses_per_round_ratios(tmp_path):
    """When fastrnn_alone alternated with onnxruntime, the speedup is the median of the
    per-round ratios and the times are those rounds' medians: a slow spell that hits both
    sides of a round leaves the ratio alone, while the separate cases' medians would not."""
    case = "lstm-uni-infer-cpu-T500-N1-I100-H128"
    fast = [0.0010, 0.0011, 0.0030, 0.0012, 0.0010]  # round 3: the machine slowed down
    ort = [0.0012, 0.0013, 0.0036, 0.0015, 0.0011]
    alone = _bench(case, "fastrnn_alone", 0.0011, paired={"fastrnn": fast, "onnxruntime": ort})
    path = _write(tmp_path, [_bench(case, "fastrnn", 0.0014), _bench(case, "torch", 0.0020),
                             _bench(case, "onnxruntime", 0.0030), alone])
    cases, _ = st.load_runs([path])
    (row,) = st.build_rows(cases, targets=True)
    ratios = sorted(o / f for f, o in zip(fast, ort))
    assert row["speedup vs best peer"] == f"{ratios[2]:.2f}x"  # not 0.0030 / 0.0011
    assert row["fastrnn alone ms"] == "1.10" and row["onnxruntime ms"] == "1.30"
    assert row["target"].endswith("< ort: met")
    (row,) = st.build_rows(cases, targets=True, use_pairs=False)  # the separate cases
    assert row["fastrnn alone ms"] == "1.10" and row["onnxruntime ms"] == "3.00"


def test_targets_met_and_missed(tmp_path):
    train = f"gru-bi-train-cpu-{IMDB}"
    infer = f"rnn-uni-infer-cpu-{IMDB}"
    other = "rnn-uni-infer-cpu-T500-N64-I100-H512"  # no target at this shape
    path = _write(tmp_path, [
        _bench(train, "fastrnn", 0.100), _bench(train, "torch", 0.300),
        _bench(infer, "fastrnn", 0.020), _bench(infer, "torch", 0.040),
        _bench(infer, "onnxruntime", 0.060),
        _bench(other, "fastrnn", 0.5), _bench(other, "torch", 0.6)])
    cases, _ = st.load_runs([path])
    rows = {r["case"]: r for r in st.build_rows(cases, targets=True)}
    assert rows[train]["target"] == "≥2.5x torch.nn: met"
    assert rows[infer]["target"] == "≥3x torch.nn: MISSED; < ort: met"
    assert rows[other]["target"] == ""
    assert st.target_for({"device": "cpu", "mode": "infer", "cell": "lstm",
                          "shape": "T500-N1-I100-H128"}) == (2.0, True)
    assert st.target_for({"device": "cuda", "mode": "infer", "cell": "lstm",
                          "shape": IMDB}) is None


def test_batch1_stream_limit(tmp_path):
    case = "gru-bi-infer-cpu-T500-N1-I100-H128"
    path = _write(tmp_path, [_bench(case, "fastrnn", 0.004, cache=100.0),
                             _bench(case, "torch", 0.008, cache=100.0)])
    cases, _ = st.load_runs([path])
    (row,) = st.build_rows(cases)
    nbytes = st.weight_stream_bytes("gru", 500, 128, bidirectional=True)
    assert nbytes == 2 * 500 * 3 * 128 * 128 * 4
    assert row["W_hh stream limit ms"] == f"{nbytes / 100e9 * 1e3:.2f}"
    assert row["fastrnn / stream limit"] == f"{0.004 / (nbytes / 100e9):.1f}x"


def test_markdown_sections_order_and_empty_columns(tmp_path):
    benches = [
        _bench(f"lstm-uni-train-cpu-{IMDB}", "fastrnn", 0.2),
        _bench(f"lstm-uni-train-cpu-{IMDB}", "torch", 0.3),
        _bench(f"gru-uni-infer-cpu-{IMDB}", "torch", 0.09),
        _bench(f"gru-uni-infer-cpu-{IMDB}", "fastrnn", 0.03),
        _bench(f"rnn-uni-infer-cpu-{IMDB}", "fastrnn", 0.01),
        _bench(f"rnn-uni-infer-cpu-{IMDB}", "torch", 0.04),
        _bench(f"lstm-bi-infer-cpu-{IMDB}", "fastrnn", 0.1, kind="imdb-model"),
        _bench(f"lstm-bi-infer-cpu-{IMDB}", "torch", 0.1, kind="imdb-model"),
    ]
    cases, _ = st.load_runs([_write(tmp_path, benches)])
    md = st.render(cases)
    titles = [line for line in md.splitlines() if line.startswith("### ")]
    assert titles == ["### Layers, CPU, inference",
                      "### Layers, CPU, training step (forward + backward)",
                      "### IMDB models, CPU, inference"]
    lines = md.splitlines()
    # rnn sorts before gru within a section; no onnxruntime and no GEMM rate -> no columns
    assert lines.index(next(ln for ln in lines if ln.startswith(f"| rnn-uni-infer"))) < \
        lines.index(next(ln for ln in lines if ln.startswith(f"| gru-uni-infer")))
    assert "onnxruntime" not in md and "GEMM" not in md
    header = next(ln for ln in lines if ln.startswith("| case"))
    assert header.count("|") - 1 == len(lines[lines.index(header) + 1].split("|")) - 2
    assert f"| gru-uni-infer-cpu-{IMDB} | cpu | 30.0 ± 1.00 | 90.0 | 3.00x |" in md
    assert st.to_markdown([]).startswith("_no benchmark cases")


def test_main_writes_file_and_later_runs_override(tmp_path):
    case = f"rnn-bi-train-cpu-{IMDB}"
    first = _write(tmp_path, [_bench(case, "fastrnn", 0.1), _bench(case, "torch", 0.2)], "a.json")
    # a second run re-timed only fastrnn; a benchmark without extra_info impl is
    # recognised from its name
    late = _bench(case, "fastrnn", 0.05)
    del late["extra_info"]["impl"]
    second = _write(tmp_path, [late], "b.json")
    out = tmp_path / "table.md"
    assert st.main([first, second, "--gemm-gflops", "180", "--targets", "-o", str(out)]) == 0
    text = out.read_text()
    assert "GEMM rate (1024^3 fp32 torch.mm): cpu 180 GFLOP/s" in text
    assert "| 4.00x |" in text  # 0.2 / 0.05
    assert "≥2.5x torch.nn: met" in text
    assert st.main([first, "--spread", "none", "-k", "lstm", "-o", str(out)]) == 0
    assert "_no benchmark cases" in out.read_text()


def test_case_key_without_group():
    bench = {"name": "test_layer[gru-uni-infer-cpu-T5-N1-I3-H2-torch]", "stats": {}}
    assert st._impl_of(bench) == "torch"
    assert st._case_of(bench) == "test_layer[gru-uni-infer-cpu-T5-N1-I3-H2]"


@pytest.mark.parametrize("seconds,text", [(0.1234, "123"), (0.01234, "12.3"),
                                          (0.001234, "1.23"), (0.0001234, "0.123")])
def test_ms_format(seconds, text):
    assert st._ms(seconds) == text


def test_paired_rounds_give_median_of_ratios(tmp_path):
    case = f"gru-uni-infer-cpu-{IMDB}"
    fast = _bench(case, "fastrnn", 0.030)
    # five rounds; the machine slowed down in rounds 3-5 for both sides alike
    fast["extra_info"]["paired"] = {
        "fastrnn": [0.010, 0.010, 0.030, 0.030, 0.030],
        "torch": [0.030, 0.030, 0.090, 0.090, 0.090],
        "onnxruntime": [0.020, 0.020, 0.060, 0.060, 0.060],
    }
    # the peers' own (unpaired) runs happened later, on a quieter machine
    path = _write(tmp_path, [fast, _bench(case, "torch", 0.030),
                             _bench(case, "onnxruntime", 0.020)])
    cases, _ = st.load_runs([path])
    assert "paired" not in cases[case]["info"]
    (row,) = st.build_rows(cases)
    assert row["speedup vs torch.nn"] == "3.00x"
    assert row["speedup vs best peer"] == "2.00x"
    assert row["rounds"] == "5"
    assert row["torch.nn ms"] == "90.0"  # median of the paired torch rounds
    (row,) = st.build_rows(cases, use_pairs=False)
    assert row["speedup vs torch.nn"] == "1.00x"  # 30 ms / 30 ms, the separate medians
    assert row["rounds"] == ""
    # malformed pairs (lengths differ) are ignored
    fast["extra_info"]["paired"]["torch"] = [0.1]
    cases, _ = st.load_runs([_write(tmp_path, [fast, _bench(case, "torch", 0.06)], "c.json")])
    (row,) = st.build_rows(cases)
    assert row["speedup vs torch.nn"] == "2.00x"
    assert st.paired_speedups({"fastrnn": [1.0, 2.0], "torch": [3.0, 2.0]}) == {"torch": 2.0}


def test_measure_cache_gbps_runs_and_restores_numba_threads():
    numba = pytest.importorskip("numba")
    before = numba.get_num_threads()
    gbps = st.measure_cache_gbps(threads=1, kb_per_thread=16, iters=20, repeats=2)
    assert 0.1 < gbps < 10_000  # GB/s: any real machine
    assert numba.get_num_threads() == before


def test_step_cases_have_their_own_section_and_targets():
    def info(cell, mode, n):
        return {"kind": "step", "cell": cell, "mode": mode, "N": n, "device": "cpu",
                "dtype": "float32", "shape": f"N{n}-I100-H128"}
    assert st.target_for(info("lstmcell", "infer", 1)) == (1.5, False)
    assert st.target_for(info("lstmcell", "infer", 64)) == (1.0, False)
    assert st.target_for(info("gru-t1", "train", 1)) == (1.2, False)
    assert st.target_for(info("gru-decoder", "infer", 1)) == (1.0, False)
    assert st.section_title(info("rnncell", "infer", 1)) == "Step by step, CPU, inference"


def test_low_precision_cases_use_their_gemm_rate_and_own_sections(tmp_path):
    """Low-precision cases: a section per mode, the bf16 GEMM rate for their limit, the
    fp32 rate still in the header, and the paired fastrnn fp32 peer's ratio."""
    case = f"lstm-uni-infer-cpu-{IMDB}"
    flops = st.case_flops("lstm", 500, 64, 100, 128)
    paired = {"fastrnn": [0.010, 0.010, 0.010], "torch": [0.020, 0.030, 0.020],
              "fastrnn_fp32": [0.015, 0.015, 0.015]}
    benches = [
        _bench(case, "fastrnn", 0.01, kind="precision", gemm=800.0, dtype="autocast-bf16",
               gemm_dtype="bfloat16", gemm_gflops_fp32=200.0, paired=paired),
        _bench(f"gru-uni-infer-cpu-{IMDB}", "fastrnn", 0.01, gemm=200.0),
    ]
    for b in benches[:1]:
        b["group"] = f"lstm-uni-autocast-bf16-infer-cpu-{IMDB}"
    path = _write(tmp_path, benches)
    cases, machine = st.load_runs([path])
    md = st.render(cases)
    assert "### Low precision (autocast-bf16), CPU, inference" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| lstm-uni-autocast"))
    assert "| 2.00x |" in row and "| 1.50x |" in row  # vs torch.nn, vs fastrnn fp32
    assert f"| {st._ms(flops / 800e9)} |" in row  # the bf16 rate's limit
    head = st.header(machine, {}, [path], cases)
    assert "cpu 200 GFLOP/s" in head and "cpu bfloat16 800 GFLOP/s" in head
