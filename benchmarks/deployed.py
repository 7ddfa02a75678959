#!/usr/bin/env python
"""Inference latency as deployed: each runtime ALONE in a process of its own.

onnxruntime is normally deployed without torch in the process; inside a torch process its
spinning worker threads and torch's OpenMP pool slow each other, which flatters or hurts
either side depending on who ran last. Here every measurement is a fresh process running
one implementation only:

* ``onnxruntime``: imports numpy and onnxruntime, nothing else, and runs the ONNX export of
  the torch.nn layer (the standard RNN/LSTM/GRU operator);
* ``fastrnn`` / ``torch``: import torch (and fastrnn), load the same weights, run under
  ``torch.inference_mode()``.

The ``peephole`` cases: torch.nn has no peephole LSTM, so the ONNX file is fastrnn.PeepholeLSTM's
export (the standard LSTM operator with its peephole input P), and the "torch" side is the
step loop in torch ops a user writes (``fastrnn.models.PeepholeLSTMLoop``).

Each process makes ``--warmup`` untimed calls, then ``--calls`` timed ones, and reports their
median. The processes alternate (onnxruntime, fastrnn, torch, onnxruntime, ...) for
``--rounds`` rounds, so a drift of the machine's speed touches all sides alike; the speedup of
fastrnn over a peer is the median over rounds of peer/fastrnn, with its lowest and highest
round. Threads: ``--threads`` for every runtime (intra-op; onnxruntime runs sequentially).

    python benchmarks/deployed.py --threads 2 --rounds 5            # all cases
    python benchmarks/deployed.py --cases lstm-uni-N64 --rounds 9   # one
    python benchmarks/deployed.py --quick                           # T=20, 1 round (CI)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CELLS = ("rnn", "lstm", "gru", "peephole")
IMPLS = ("onnxruntime", "fastrnn", "torch")


def _case_names():
    return [f"{c}-{d}-N{n}" for n in (64, 1) for c in CELLS for d in ("uni", "bi")]


def _parse_case(name):
    cell, direction, n = name.split("-")
    return cell, direction == "bi", int(n[1:])


# ------------------------------------------------------------------------- workers ---
def _time_calls(run, warmup, calls):
    for _ in range(warmup):
        run()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _worker_onnxruntime(args):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(os.path.join(args.dir, "model.onnx"), so,
                                providers=["CPUExecutionProvider"])
    feed = {"x": np.load(os.path.join(args.dir, "x.npy"))}
    out = sess.run(None, feed)[0]
    np.save(os.path.join(args.dir, "y_onnxruntime.npy"), out)
    return _time_calls(lambda: sess.run(None, feed), args.warmup, args.calls)


def _worker_torch(args, use_fastrnn):
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    cell, bi, _ = _parse_case(args.case)
    meta = json.load(open(os.path.join(args.dir, "meta.json")))
    if use_fastrnn:
        import fastrnn
        cls = fastrnn.PeepholeLSTM if cell == "peephole" else getattr(fastrnn, cell.upper())
        mod = cls(meta["I"], meta["H"], bidirectional=bi)
    elif cell == "peephole":
        from fastrnn.models import PeepholeLSTMLoop
        mod = PeepholeLSTMLoop(meta["I"], meta["H"], bidirectional=bi)
    else:
        mod = getattr(torch.nn, cell.upper())(meta["I"], meta["H"], bidirectional=bi)
    mod.load_state_dict(torch.load(os.path.join(args.dir, "state.pt")))
    mod.eval()
    x = torch.from_numpy(np.load(os.path.join(args.dir, "x.npy")))
    with torch.inference_mode():
        y = mod(x)[0]
        np.save(os.path.join(args.dir, f"y_{args.impl}.npy"), y.numpy())
        return _time_calls(lambda: mod(x), args.warmup, args.calls)


def worker(args):
    if args.impl == "onnxruntime":
        t = _worker_onnxruntime(args)
    else:
        t = _worker_torch(args, args.impl == "fastrnn")
    print(json.dumps({"median_s": t}))


# -------------------------------------------------------------------------- driver ---
def _export(case, T, I, H, folder):
    """The torch.nn layer (seed 0), its ONNX export, state_dict and input, into ``folder``."""
    import io
    import warnings

    import numpy as np
    import torch

    cell, bi, N = _parse_case(case)
    torch.manual_seed(0)
    if cell == "peephole":
        import fastrnn
        ref = fastrnn.PeepholeLSTM(I, H, bidirectional=bi).eval()
    else:
        ref = getattr(torch.nn, cell.upper())(I, H, bidirectional=bi).eval()
    x = torch.randn(T, N, I, generator=torch.Generator().manual_seed(1))

    class SequenceOnly(torch.nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            return self.rnn(x)[0]

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SequenceOnly(ref), (x,), buf, dynamo=False, input_names=["x"],
                          output_names=["y"])
    with open(os.path.join(folder, "model.onnx"), "wb") as fh:
        fh.write(buf.getvalue())
    torch.save(ref.state_dict(), os.path.join(folder, "state.pt"))
    np.save(os.path.join(folder, "x.npy"), x.numpy())
    with open(os.path.join(folder, "meta.json"), "w") as fh:
        json.dump({"T": T, "N": N, "I": I, "H": H}, fh)


def _run_worker(impl, case, folder, opts):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--case", case,
           "--dir", folder, "--threads", str(opts.threads), "--warmup", str(opts.warmup),
           "--calls", str(opts.calls)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{impl} worker failed for {case}:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["median_s"]


def _check_outputs(folder, impls):
    import numpy as np

    ref = np.load(os.path.join(folder, "y_torch.npy")) if "torch" in impls else None
    for impl in impls:
        y = np.load(os.path.join(folder, f"y_{impl}.npy"))
        if ref is not None and not np.allclose(y, ref, atol=1e-4, rtol=1e-3):
            raise AssertionError(f"{impl} disagrees with torch.nn: max abs difference "
                                 f"{float(np.abs(y - ref).max()):.3g}")


def drive(opts):
    cases = opts.cases.split(",") if opts.cases else _case_names()
    unknown = [c for c in cases if c not in _case_names()]
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; known: {_case_names()}")
    T = 20 if opts.quick else opts.T
    impls = [i for i in IMPLS if i in opts.impls.split(",")]
    rows = []
    for case in cases:
        with tempfile.TemporaryDirectory() as folder:
            _export(case, T, opts.I, opts.H, folder)
            times = {impl: [] for impl in impls}
            for _ in range(opts.rounds):
                for impl in impls:
                    times[impl].append(_run_worker(impl, case, folder, opts))
            _check_outputs(folder, impls)
        rows.append((case, times))
        if opts.progress:
            print(_row(case, T, opts, times), file=sys.stderr, flush=True)
    return T, rows


def _ms(s):
    return f"{s * 1e3:.3g}"


def _row(case, T, opts, times):
    cells = [f"{case.replace('-N', ' N=')} T={T}"]
    fast = times.get("fastrnn")
    for impl in IMPLS:
        if impl in times:
            cells.append(_ms(statistics.median(times[impl])))
    for peer in ("onnxruntime", "torch"):
        if fast and peer in times:
            r = sorted(p / f for p, f in zip(times[peer], fast))
            cells.append(f"{statistics.median(r):.2f}x ({r[0]:.2f}-{r[-1]:.2f})")
    return "| " + " | ".join(cells) + " |"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", choices=IMPLS, dest="impl", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--cases", default=None, help="comma-separated, e.g. lstm-uni-N64,gru-bi-N1")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--T", type=int, default=500)
    p.add_argument("--I", type=int, default=100)
    p.add_argument("--H", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="T=20, one round: checks that it runs")
    p.add_argument("--progress", action="store_true", help="print each row as it is done")
    opts = p.parse_args(argv)
    if opts.impl:
        worker(opts)
        return
    if opts.quick:
        opts.rounds, opts.calls, opts.warmup = 1, 2, 1
    header = ["case"] + [f"{i} ms" for i in IMPLS if i in opts.impls.split(",")]
    if "fastrnn" in opts.impls:
        header += [f"fastrnn vs {p} (lowest-highest round)" for p in ("onnxruntime", "torch")
                   if p in opts.impls]
    T, rows = drive(opts)
    print(f"Each implementation alone in its own process; {opts.rounds} rounds alternating, "
          f"{opts.calls} timed calls per process (median); threads {opts.threads}; "
          f"I={opts.I} H={opts.H}.\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for case, times in rows:
        print(_row(case, T, opts, times))


if __name__ == "__main__":
    main()
