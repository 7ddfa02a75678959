#!/usr/bin/env python
"""Turn a saved pytest-benchmark run into a Markdown speedup table.

    python benchmarks/speedup_table.py .benchmarks/<machine>/0001_<name>.json
    python benchmarks/speedup_table.py run.json --gemm-gflops 180 --targets -o table.md

One row per case (a pytest-benchmark *group*, e.g. ``lstm-bi-train-cpu-T500-N64-I100-H128``):
the fastrnn median and IQR, the torch.nn median, the onnxruntime median when the run has
one, the speedup torch.nn / fastrnn (>1 means fastrnn is faster), the speedup over the
best peer, and the fraction of the GEMM limit that fastrnn reached. onnxruntime is compared
with ``fastrnn_alone``: where that case alternated with onnxruntime round by round (the
suite's default), the speedup is the median of the per-round ratios and both times are
those rounds' medians; otherwise the medians of the two separate cases (or the paired
fastrnn time when the run has no ``fastrnn_alone``):

    GEMM limit (ms) = FLOPs of the case's matrix products / GEMM rate
    fraction        = GEMM limit / fastrnn median

The FLOPs come from the shape (see :func:`case_flops`); the GEMM rate is, in order of
preference, ``--gemm-gflops`` / ``--gemm-gflops-cuda``, a fresh 1024^3 ``torch.mm``
measurement (``--measure-gemm``), or the rate the benchmark session itself measured and
stored in each benchmark's ``extra_info`` (``gemm_gflops``, a 1024^3 ``torch.mm`` timed once
per session). Without any, those columns are left out.

The tool only reads the JSON (and imports torch only for ``--measure-gemm``).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import OrderedDict

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# peers besides torch.nn and onnxruntime, with their column labels (the peephole and
# regularised suites: the step loop in torch ops a user writes, fastrnn.LSTM of the same
# size, the plain fused layer without the options; the precision suite: fastrnn in float32)
EXTRA_PEERS = {"torch_loop": "torch step loop", "fastrnn_lstm": "fastrnn LSTM",
               "fastrnn_plain": "fastrnn plain layer", "fastrnn_fp32": "fastrnn fp32"}
IMPLS = ("fastrnn_alone", "fastrnn", "torch", "onnxruntime")
SHAPE_RE = re.compile(r"T(\d+)-N(\d+)-I(\d+)-H(\d+)")

# The project's CPU speed targets (fp32, 2 threads, the IMDB shape T500 I100 H128). Keyed by
# (mode, N); each entry: the minimum speedup over torch.nn per cell. In inference fastrnn must
# also beat onnxruntime (be faster than the best of torch.nn and onnxruntime; see target_for).
_TARGETS = {
    # (mode, N): {cell: min speedup over torch.nn}
    ("train", 64): {"rnn": 2.5, "lstm": 1.8, "gru": 2.5},
    ("infer", 64): {"rnn": 3.0, "lstm": 1.1, "gru": 2.5},
    ("infer", 1): {"rnn": 2.0, "lstm": 2.0, "gru": 2.0},
}


def parse_shape(shape):
    """``"T500-N64-I100-H128"`` -> (500, 64, 100, 128); None when it does not parse."""
    m = SHAPE_RE.search(shape or "")
    return tuple(int(g) for g in m.groups()) if m else None


def case_flops(cell, T, N, I, H, bidirectional=False, mode="infer", layers=1):
    """FLOPs of the matrix products of one recurrent layer stack (pointwise work ignored).

    Forward, per layer and direction: the input projection ``2*T*N*I*G*H`` plus the
    recurrent products ``2*T*N*H*G*H`` (G = 1, 4, 3 gate blocks for RNN, LSTM, GRU).
    A training step (forward + backward with the input requiring grad) is three times the
    forward: the gradients w.r.t. the inputs and the hidden state, and w.r.t. the weights,
    are each a product of the forward's size. Layers above the first take ``D*H`` inputs.
    """
    g = GATES[cell]
    dirs = 2 if bidirectional else 1
    total = 0
    for layer in range(layers):
        in_size = I if layer == 0 else dirs * H
        total += dirs * 2 * T * N * (in_size + H) * g * H
    return total * (3 if mode == "train" else 1)


def weight_stream_bytes(cell, T, H, bidirectional=False, dtype_bytes=4):
    """Bytes of W_hh read by a forward pass at batch 1: every step reads all of
    ``W_hh [G*H, H]`` once per direction (the numerator of the batch-1 cache-bandwidth
    limit)."""
    return (2 if bidirectional else 1) * T * GATES[cell] * H * H * dtype_bytes


_SWEEP = None


def _read_sweep():
    """A numba kernel: each thread sums its own row of ``buf`` ``iters`` times."""
    global _SWEEP
    if _SWEEP is None:
        import numpy as np
        from numba import njit, prange

        @njit(parallel=True, fastmath=True)
        def sweep(buf, iters):
            out = np.zeros(buf.shape[0], dtype=np.float32)
            for t in prange(buf.shape[0]):
                row = buf[t]
                s = np.float32(0)
                for _ in range(iters):
                    for i in range(row.shape[0]):
                        s += row[i]
                out[t] = s
            return out

        _SWEEP = sweep
    return _SWEEP


def measure_cache_gbps(threads=None, kb_per_thread=256, iters=1000, repeats=7):
    """L2 read bandwidth in GB/s: every thread reads its own ``kb_per_thread`` KB (past L1,
    inside L2 on current x86 cores) over and over, with vector loads (numba,
    fastmath: the sum vectorises); best of ``repeats``. ``threads`` defaults to torch's.

    This is the denominator of the batch-1 W_hh stream limit (the bytes of W_hh read per step
    over the L2 bandwidth). A plain sweep rather than a timed ``torch.mv``: MKL's gemv does
    not stream at L2 speed, so it would understate the bandwidth several-fold, while this
    sweep reaches what a hand-written vectorised loop does.
    """
    import time

    import numba
    import numpy as np

    if threads is None:
        import torch

        threads = torch.get_num_threads()
    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    old = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        sweep = _read_sweep()
        buf = np.random.default_rng(0).random((threads, kb_per_thread * 256), dtype=np.float32)
        sweep(buf, 1)  # compile, and warm the caches
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            sweep(buf, iters)
            best = max(best, buf.nbytes * iters / (time.perf_counter() - t0) / 1e9)
        return best
    finally:
        numba.set_num_threads(old)


def _impl_of(bench):
    info = bench.get("extra_info") or {}
    impl = info.get("impl") or (bench.get("params") or {}).get("impl")
    if impl:
        return impl
    name = bench.get("name", "")
    for cand in IMPLS:
        if name.rstrip("]").endswith(cand):
            return cand
    return None


def _case_of(bench):
    if bench.get("group"):
        return bench["group"]
    name = bench.get("name", "")
    impl = _impl_of(bench)
    if impl and name.rstrip("]").endswith("-" + impl):
        return name.rstrip("]")[: -len(impl) - 1] + ("]" if name.endswith("]") else "")
    return name


def load_runs(paths):
    """Read pytest-benchmark JSON files; return (cases, machine_info).

    ``cases`` maps case name -> {"info": extra_info of its first benchmark, "impls":
    {impl: stats}} in the order of first appearance. A later file's figures replace an
    earlier one's for the same case and impl.
    """
    cases = OrderedDict()
    machine_info = {}
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        machine_info.update(data.get("machine_info") or {})
        for bench in data.get("benchmarks", []):
            impl = _impl_of(bench)
            if impl is None:
                continue
            key = _case_of(bench)
            entry = cases.setdefault(key, {"info": {}, "impls": {}})
            info = dict(bench.get("extra_info") or {})
            paired = info.pop("paired", None)
            if impl == "fastrnn":
                entry["paired"] = paired if _valid_pairs(paired) else None
            elif impl == "fastrnn_alone":  # alternated with onnxruntime (round by round)
                entry["paired_ort"] = paired if _valid_pairs(paired) else None
            for k, v in info.items():
                if k not in ("impl", "backend") or not entry["info"].get(k):
                    entry["info"].setdefault(k, v)
            if impl == "fastrnn" and info.get("backend"):
                entry["info"]["fastrnn_backend"] = info["backend"]
            entry["impls"][impl] = bench.get("stats") or {}
    return cases, machine_info


def _valid_pairs(paired):
    if not isinstance(paired, dict) or not paired.get("fastrnn"):
        return False
    n = len(paired["fastrnn"])
    return all(isinstance(v, list) and len(v) == n for v in paired.values())


def _median(values):
    values = sorted(values)
    n = len(values)
    if n == 0:
        return None
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def paired_speedups(paired):
    """From a fastrnn case's per-round times ``{"fastrnn": [...], peer: [...]}``: the
    median over rounds of peer/fastrnn for each peer, and of best-peer/fastrnn."""
    fast = paired["fastrnn"]
    peers = [k for k in paired if k != "fastrnn"]
    out = {p: _median([b / a for a, b in zip(fast, paired[p]) if a > 0]) for p in peers}
    if len(peers) > 1:
        out["best"] = _median([min(paired[p][i] for p in peers) / a
                               for i, a in enumerate(fast) if a > 0])
    return out


def _flops_of(info):
    if info.get("flops"):
        return float(info["flops"])
    shape = parse_shape(info.get("shape", ""))
    cell = info.get("cell")
    if shape is None or cell not in GATES:
        return None
    return float(case_flops(cell, *shape, bidirectional=info.get("direction") == "bi",
                            mode=info.get("mode", "infer"), layers=int(info.get("layers", 1))))


def target_for(info):
    """The project's CPU speed target for a case: (min speedup over torch.nn, must beat onnxruntime)
    or None when the case has no target."""
    if info.get("device") != "cpu" or info.get("dtype", "float32") != "float32":
        return None
    if info.get("kind") == "step":  # never slower; cells at batch 1 >= 1.5x, training >= 1.2x
        if info.get("mode") == "train":
            return 1.2, False
        if info.get("cell", "").endswith("cell") and info.get("N") == 1:
            return 1.5, False
        return 1.0, False
    if info.get("kind", "layer") != "layer":
        return None
    shape = parse_shape(info.get("shape", ""))
    if shape is None or shape[0] != 500 or shape[2] != 100 or shape[3] != 128:
        return None
    per_cell = _TARGETS.get((info.get("mode"), shape[1]))
    if not per_cell or info.get("cell") not in per_cell:
        return None
    return per_cell[info["cell"]], info.get("mode") == "infer"


def measure_gemm_gflops(device="cpu", size=1024, repeats=20, threads=None, dtype=None):
    """Best GFLOP/s of ``repeats`` ``size``^3 torch.mm calls in ``dtype`` (default float32;
    imports torch)."""
    import time

    import torch

    if threads:
        torch.set_num_threads(threads)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        torch.mm(a, b)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        times.append(time.perf_counter() - t0)
    # The fastest repeat: a limit is the rate the machine reaches, not its typical one
    # (medians on a shared machine drift with the neighbours' load).
    return 2.0 * size ** 3 / min(times) / 1e9


def _ms(seconds):
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return ""
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _spread(stats, spread):
    if spread == "none":
        return ""
    val = stats.get(spread)
    return f" ± {_ms(val)}" if val is not None else ""


def build_rows(cases, gemm_rates=None, spread="iqr", targets=False, cache_gbps=None,
               use_pairs=True):
    """One dict per case with the table's cells already formatted."""
    gemm_rates = gemm_rates or {}
    rows = []
    for key, entry in cases.items():
        info, impls = entry["info"], entry["impls"]
        med = {impl: impls[impl].get("median") for impl in impls}
        paired = entry.get("paired") if use_pairs else None
        if paired:  # the peers' times from the same rounds as fastrnn's, for consistency
            for peer in paired:
                if peer != "fastrnn":
                    med[peer] = _median(paired[peer])
        fast = med.get("fastrnn")
        torch_t = med.get("torch")
        ort_t = med.get("onnxruntime")
        alone = med.get("fastrnn_alone")
        ratio = paired_speedups(paired) if paired else {}
        ratio.pop("onnxruntime", None)  # never a peer of the paired fastrnn case
        if torch_t and fast and "torch" not in ratio:
            ratio["torch"] = torch_t / fast
        paired_ort = entry.get("paired_ort") if use_pairs else None
        if paired_ort and paired_ort.get("onnxruntime"):  # alternated round by round
            alone, ort_t = _median(paired_ort["fastrnn"]), _median(paired_ort["onnxruntime"])
            ratio["onnxruntime"] = paired_speedups(paired_ort)["onnxruntime"]
        elif ort_t and (alone or fast):
            ratio["onnxruntime"] = ort_t / (alone or fast)
        if ratio.get("onnxruntime"):
            ratio["best"] = min(r for r in (ratio.get("torch"), ratio["onnxruntime"]) if r)
        row = OrderedDict()
        row["case"] = key
        row["backend"] = info.get("fastrnn_backend", "")
        row["fastrnn ms"] = (_ms(fast) + _spread(impls["fastrnn"], spread)) if fast else ""
        row["torch.nn ms"] = _ms(torch_t) if torch_t else ""
        row["fastrnn alone ms"] = _ms(alone) if alone else ""
        row["onnxruntime ms"] = _ms(ort_t) if ort_t else ""
        row["speedup vs torch.nn"] = f"{ratio['torch']:.2f}x" if ratio.get("torch") else ""
        row["speedup vs best peer"] = (f"{ratio['best']:.2f}x"
                                       if ratio.get("best") and ort_t else "")
        for peer in (paired or {}):  # other peers of the round (the peephole suite's)
            if peer in EXTRA_PEERS:
                label = EXTRA_PEERS[peer]
                row[f"{label} ms"] = _ms(med[peer]) if med.get(peer) else ""
                row[f"speedup vs {label}"] = f"{ratio[peer]:.2f}x" if ratio.get(peer) else ""
        row["rounds"] = str(len(paired["fastrnn"])) if paired else ""
        if info.get("gemm_dtype", "float32") != "float32":  # the case's own dtype's rate
            rate = info.get("gemm_gflops")
        else:
            rate = gemm_rates.get(info.get("device", "cpu")) or info.get("gemm_gflops")
        flops = _flops_of(info)
        if rate and flops:
            limit = flops / (rate * 1e9)
            row["GEMM limit ms"] = _ms(limit)
            row["fastrnn % of GEMM limit"] = f"{100 * limit / fast:.0f}%" if fast else ""
        else:
            row["GEMM limit ms"] = row["fastrnn % of GEMM limit"] = ""
        cache = cache_gbps or info.get("cache_gbps")
        shape = parse_shape(info.get("shape", ""))
        if (cache and shape and shape[1] == 1 and info.get("mode") == "infer"
                and info.get("cell") in GATES and info.get("device", "cpu") == "cpu"):
            limit = weight_stream_bytes(info["cell"], shape[0], shape[3],
                                        info.get("direction") == "bi") / (cache * 1e9)
            row["W_hh stream limit ms"] = _ms(limit)
            steady = alone or fast  # fastrnn alone runs warm; the paired time follows torch.nn
            row["fastrnn / stream limit"] = f"{steady / limit:.1f}x" if steady else ""
        else:
            row["W_hh stream limit ms"] = row["fastrnn / stream limit"] = ""
        if targets:
            tgt = target_for(info)
            text = ""
            if tgt is not None:
                need, vs_ort = tgt
                parts = []
                if ratio.get("torch"):
                    ok = ratio["torch"] >= need
                    parts.append(f"≥{need:g}x torch.nn: {'met' if ok else 'MISSED'}")
                else:
                    parts.append(f"≥{need:g}x torch.nn")
                if vs_ort:
                    if ratio.get("onnxruntime"):
                        vs = ratio["onnxruntime"]
                        parts.append(f"< ort: {'met' if vs > 1 else 'MISSED'}")
                    else:
                        parts.append("< ort: n/a")
                text = "; ".join(parts)
            row["target"] = text
        rows.append(row)
    return rows


def to_markdown(rows):
    """Render rows as a Markdown table, dropping columns that are empty in every row."""
    if not rows:
        return "_no benchmark cases found_\n"
    cols = [c for c in rows[0] if c == "case" or any(r.get(c) for r in rows)]
    out = ["| " + " | ".join(cols) + " |",
           "|" + "|".join("---" if c in ("case", "backend", "target") else "---:"
                          for c in cols) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out) + "\n"


def gemm_rates_from(args):
    """GEMM rates that override the ones each benchmark recorded (extra_info gemm_gflops)."""
    rates = {}
    if args.measure_gemm:
        rates["cpu"] = measure_gemm_gflops("cpu", threads=args.threads)
        try:
            import torch

            if torch.cuda.is_available():
                rates["cuda"] = measure_gemm_gflops("cuda")
        except ImportError:
            pass
    if args.gemm_gflops:
        rates["cpu"] = args.gemm_gflops
    if args.gemm_gflops_cuda:
        rates["cuda"] = args.gemm_gflops_cuda
    return rates


_CELL_ORDER = {c: i for i, c in enumerate(("rnn", "lstm", "gru"))}
_SHAPE_ORDER = {  # the suites' shapes (any T, for quick runs), in the order they are listed
    (N, I, H): i for i, (N, I, H) in enumerate(
        ((64, 100, 128), (1, 100, 128), (256, 100, 128), (64, 100, 64), (64, 100, 256),
         (64, 100, 512), (64, 512, 512)))}


def _sort_key(item):
    key, entry = item
    info = entry["info"]
    shape = parse_shape(info.get("shape", "")) or (0, 0, 0, 0)
    return (info.get("kind", "layer") != "layer", info.get("device", "cpu") != "cpu",
            info.get("device", ""), info.get("kind", "layer"), info.get("dtype", "float32"),
            info.get("mode", "") != "infer",
            _SHAPE_ORDER.get(shape[1:], len(_SHAPE_ORDER)), shape,
            _CELL_ORDER.get(info.get("cell"), 9), info.get("direction", "") != "uni", key)


def section_title(info):
    kind = {"imdb-model": "IMDB models", "step": "Step by step",
            "peephole": "Peephole LSTM",
            "regularized": "Layer norm and regularisation options",
            "precision": f"Low precision ({info.get('dtype', '?')})"}.get(info.get("kind"),
                                                                          "Layers")
    mode = {"infer": "inference", "train": "training step (forward + backward)"}.get(
        info.get("mode"), info.get("mode", "?"))
    return f"{kind}, {info.get('device', '?').upper()}, {mode}"


def render(cases, gemm_rates=None, spread="iqr", targets=False, sections=True,
           cache_gbps=None, use_pairs=True):
    """The Markdown for ``cases``: sorted, one table per (kind, device, mode) section."""
    ordered = sorted(cases.items(), key=_sort_key)
    if not sections:
        return to_markdown(build_rows(OrderedDict(ordered), gemm_rates, spread, targets,
                                           cache_gbps, use_pairs))
    out, current, bucket = [], None, OrderedDict()

    def flush():
        if bucket:
            out.append(f"### {current}\n\n"
                       + to_markdown(build_rows(bucket, gemm_rates, spread, targets,
                                                    cache_gbps, use_pairs)))

    for key, entry in ordered:
        title = section_title(entry["info"])
        if title != current:
            flush()
            current, bucket = title, OrderedDict()
        bucket[key] = entry
    flush()
    return "\n".join(out) if out else to_markdown([])


def header(machine_info, rates, files, cases, spread="iqr", cache_gbps=None):
    lines = []
    cpu = (machine_info.get("cpu") or {}).get("brand_raw") or machine_info.get("processor")
    bits = []
    if cpu:
        bits.append(f"CPU: {cpu}")
    if machine_info.get("fastrnn_cuda_device"):
        bits.append(f"GPU: {machine_info['fastrnn_cuda_device']}")
    for key, label in (("fastrnn_threads", "threads"), ("fastrnn_torch", "torch"),
                       ("fastrnn_onnxruntime", "onnxruntime"), ("fastrnn_quick", "quick mode")):
        if machine_info.get(key) not in (None, ""):
            bits.append(f"{label}: {machine_info[key]}")
    shown, low = dict(rates), {}
    for entry in cases.values():
        info = entry["info"]
        dev, rate = info.get("device"), info.get("gemm_gflops")
        if info.get("gemm_dtype", "float32") != "float32":
            if dev and rate:
                low.setdefault((dev, info["gemm_dtype"]), float(rate))
            rate = info.get("gemm_gflops_fp32")
        if dev and rate and dev not in shown:
            shown[dev] = float(rate)
    if shown:
        bits.append("GEMM rate (1024^3 fp32 torch.mm): "
                    + ", ".join(f"{d} {r:.0f} GFLOP/s" for d, r in shown.items()))
    if low:
        bits.append("low-precision GEMM rate (512^3 torch.mm; the GEMM limit of the "
                    "low-precision cases): " + ", ".join(
                        f"{d} {dt} {r:.0f} GFLOP/s" for (d, dt), r in low.items()))
    if bits:
        lines.append("_" + "; ".join(bits) + "_")
    if not cache_gbps:
        cache_gbps = next((e["info"]["cache_gbps"] for e in cases.values()
                           if e["info"].get("cache_gbps")), None)
    if cache_gbps:
        bits.append(f"L2 read bandwidth (each thread re-reading 256 KB): {cache_gbps:.0f} GB/s")
    spread_txt = {"iqr": " (± IQR)", "stddev": " (± stddev)"}.get(spread, "")
    lines.append(f"_Medians in ms{spread_txt}; speedup = peer time / fastrnn time (>1: "
                 "fastrnn faster), the median of per-round ratios where the peers ran between "
                 "fastrnn's rounds (`rounds` column), else the ratio of medians; onnxruntime "
                 "runs inside the torch process here (as deployed, alone in a process of its "
                 "own: `benchmarks/deployed.py`) and "
                 "is compared with `fastrnn alone`: the median of per-round ratios where the "
                 "two alternated (each after a pause and an untimed call of its own), else "
                 "the ratio of their medians; GEMM limit = matrix-product FLOPs of the case / GEMM "
                 "rate; W_hh stream limit (batch 1) = bytes of W_hh read over all steps / "
                 f"cache bandwidth; source: {', '.join(files)}_")
    return "\n\n".join(lines) + "\n\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s) "
                    "(--benchmark-autosave / --benchmark-json); later files override")
    ap.add_argument("--gemm-gflops", type=float, help="CPU fp32 GEMM rate in GFLOP/s")
    ap.add_argument("--gemm-gflops-cuda", type=float, help="CUDA fp32 GEMM rate in GFLOP/s")
    ap.add_argument("--measure-gemm", action="store_true",
                    help="measure the GEMM rate now with a 1024^3 torch.mm")
    ap.add_argument("--threads", type=int, help="torch threads for --measure-gemm/-cache")
    ap.add_argument("--cache-gbps", type=float,
                    help="cache bandwidth (GB/s) for the batch-1 W_hh stream limit")
    ap.add_argument("--measure-cache", action="store_true",
                    help="measure that bandwidth now (each thread re-reading 256 KB, numba)")
    ap.add_argument("--spread", choices=("iqr", "stddev", "none"), default="iqr")
    ap.add_argument("--targets", action="store_true",
                    help="add a column checking the project's CPU speed targets")
    ap.add_argument("--single", action="store_true", help="one table instead of sections")
    ap.add_argument("--unpaired", action="store_true",
                    help="speedups as ratios of the separate medians, ignoring per-round pairs")
    ap.add_argument("-k", "--filter", help="only cases whose name matches this regex")
    ap.add_argument("-o", "--output", help="write the Markdown here instead of stdout")
    args = ap.parse_args(argv)

    cases, machine_info = load_runs(args.json)
    if args.filter:
        rx = re.compile(args.filter)
        cases = OrderedDict((k, v) for k, v in cases.items() if rx.search(k))
    rates = gemm_rates_from(args)
    cache = args.cache_gbps or (measure_cache_gbps(args.threads) if args.measure_cache else None)
    text = (header(machine_info, rates, args.json, cases, args.spread, cache)
            + render(cases, rates, args.spread, args.targets, sections=not args.single,
                     cache_gbps=cache, use_pairs=not args.unpaired))
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
