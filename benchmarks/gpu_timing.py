#!/usr/bin/env python
"""fastrnn (backend="cuda") against torch.nn (cuDNN) on one GPU: a timing table.

    python benchmarks/gpu_timing.py                 # all shapes, cells, modes, fp32 + bf16
    python benchmarks/gpu_timing.py --quick         # T=50, imdb + n1 only
    python benchmarks/gpu_timing.py --json out.json --variants auto,small,large

Each case times what a user waits for, interleaved in one process: a forward
(inference: torch.no_grad, eval) or a forward + backward of a sum loss (train), of a
single-layer unidirectional module with the same weights, synchronised, median over
--reps after --warmup runs, CUDA-event timed. Speedup = cuDNN / fastrnn (> 1: fastrnn
is faster); "target" is the project's GPU speed target for that case (fwd+bwd: 1.5x
LSTM/GRU, 2x RNN; inference: 2x, at the IMDB shape T=500 N=64 I=100 H=128 and at N=1).

Variants (--variants): ``auto`` (the defaults: the cluster schedule on sm_90),
``small`` / ``large`` (per-step launches with that FASTRNN_CUDA_TILE),
``step`` (FASTRNN_CUDA_SCHEDULE=step, the tile chosen by size), ``persistent`` (FASTRNN_CUDA_SCHEDULE=grid: one cooperative launch per
layer-direction, grid barrier per step), ``cluster`` (=cluster: one launch of
thread-block clusters, cluster barrier per step). Every fastrnn result is checked against cuDNN's before it is timed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

SHAPES = {  # name -> (T, N, I, H)
    "imdb": (500, 64, 100, 128),
    "n1": (500, 1, 100, 128),
    "h256": (500, 64, 100, 256),
    "h512": (500, 64, 100, 512),
    "fastrnns": (100, 64, 512, 512),
}
CELLS = ("lstm", "gru", "rnn", "peephole")
VARIANTS = {
    "auto": {},
    "small": {"FASTRNN_CUDA_TILE": "small", "FASTRNN_CUDA_SCHEDULE": "step"},
    "large": {"FASTRNN_CUDA_TILE": "large", "FASTRNN_CUDA_SCHEDULE": "step"},
    "persistent": {"FASTRNN_CUDA_SCHEDULE": "grid"},
    "cluster": {"FASTRNN_CUDA_SCHEDULE": "cluster"},
    "step": {"FASTRNN_CUDA_SCHEDULE": "step"},
}
TARGETS = {("train", "lstm"): 1.5, ("train", "gru"): 1.5, ("train", "rnn"): 2.0,
           ("infer", "lstm"): 2.0, ("infer", "gru"): 2.0, ("infer", "rnn"): 2.0}
# cuDNN has no peephole LSTM: the ``peephole`` cell is fastrnn.PeepholeLSTM (peepholes zero,
# so its outputs are checked against cuDNN's) timed against cuDNN's plain LSTM; its aim is
# the cost of the peepholes, at most 1.1x an LSTM's time (a speedup of at least 1/1.1).
TARGETS.update({("train", "peephole"): round(1 / 1.1, 2), ("infer", "peephole"): round(1 / 1.1, 2)})


def _import_fastrnn():
    try:
        import fastrnn
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import fastrnn
    return fastrnn


def make_modules(fastrnn, cell, I, H, dtype, device, backend):
    torch.manual_seed(0)
    tcls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN,
            "peephole": torch.nn.LSTM}[cell]
    ref = tcls(I, H, device=device, dtype=dtype)
    if cell == "peephole":  # zero peepholes: the same function as ref, all the extra work
        return ref, fastrnn.PeepholeLSTM.from_torch(ref, backend=backend)
    fcls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN}[cell]
    fast = fcls(I, H, device=device, dtype=dtype, backend=backend)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return ref, fast


def step_fn(mod, x, mode):
    if mode == "infer":
        mod.eval()

        def run():
            with torch.no_grad():
                return mod(x)[0]
    else:
        mod.train()
        xs = x.detach().requires_grad_()

        def run():
            out = mod(xs)[0]
            out.float().sum().backward()
            return out
    return run


def time_ms(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():  # --device cpu (a dry run of this script)
        import time
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def check_close(a, b, dtype, what):
    tol = {torch.float32: 2e-3, torch.bfloat16: 1e-1, torch.float16: 3e-2}.get(dtype, 1e-6)
    err = (a.float() - b.float()).abs().max().item()
    scale = 1 + b.float().abs().max().item()
    if not err <= tol * scale:
        raise AssertionError(f"{what}: fastrnn differs from cuDNN by {err:.3g} "
                             f"(tolerance {tol * scale:.3g})")


def run(args):
    fastrnn = _import_fastrnn()
    from fastrnn.backends import cuda as cb
    reason = cb.unavailable_reason()
    if reason and args.backend == "cuda":
        sys.exit(f"fastrnn CUDA backend unavailable: {reason}")
    torch.backends.cudnn.allow_tf32 = False  # compare true float32 with true float32
    torch.backends.cuda.matmul.allow_tf32 = False
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
              "fp64": torch.float64}
    rows = []
    for shape in shapes:
        T, N, I, H = SHAPES[shape]
        if args.quick:
            T = min(T, 50)
        if args.T:
            T = args.T
        for dname in args.dtypes.split(","):
            dtype = dtypes[dname]
            if dname != "fp32" and shape not in ("imdb", "n1") and not args.all_dtypes:
                continue  # other dtypes at the IMDB shapes only, unless asked
            for cell in args.cells.split(","):
                ref, fast = make_modules(fastrnn, cell, I, H, dtype, args.device, args.backend)
                x = torch.randn(T, N, I, device=args.device, dtype=dtype)
                for mode in ("infer", "train"):
                    t_ref = time_ms(step_fn(ref, x, mode), args.warmup, args.reps)
                    with torch.no_grad():
                        want = ref(x)[0]
                    row = dict(shape=shape, T=T, N=N, I=I, H=H, dtype=dname, cell=cell,
                               mode=mode, cudnn_ms=t_ref, target=TARGETS[(mode, cell)])
                    for var in args.variants.split(","):
                        saved = {k: os.environ.get(k) for k in VARIANTS[var]}
                        os.environ.update(VARIANTS[var])
                        try:
                            with torch.no_grad():
                                check_close(fast(x)[0], want, dtype, f"{shape} {cell} {var}")
                            row[f"{var}_ms"] = time_ms(step_fn(fast, x, mode), args.warmup,
                                                       args.reps)
                        except Exception as e:  # noqa: BLE001 - recorded, the table goes on
                            row[f"{var}_ms"] = float("nan")
                            row.setdefault("errors", []).append(f"{var}: {type(e).__name__}: {e}")
                            print(f"FAILED {shape} {dname} {cell} {mode} {var}: {e}",
                                  file=sys.stderr, flush=True)
                        finally:
                            for k, v in saved.items():
                                if v is None:
                                    os.environ.pop(k, None)
                                else:
                                    os.environ[k] = v
                    times = [row[f"{v}_ms"] for v in args.variants.split(",")
                             if row[f"{v}_ms"] == row[f"{v}_ms"]]  # NaN: that variant failed
                    row["speedup"] = t_ref / min(times) if times else float("nan")
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def table(rows, variants, gpu):
    vs = variants.split(",")
    head = ["shape (T,N,I,H)", "dtype", "cell", "mode", "cuDNN ms"] + [f"fastrnn {v} ms" for v in vs] \
        + ["speedup", "target", "met"]
    lines = [f"GPU: {gpu}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in rows:
        shp = f"{r['shape']} ({r['T']},{r['N']},{r['I']},{r['H']})"
        met = "yes" if r["speedup"] >= r["target"] else ("FAILED" if r.get("errors") else "no")
        cells = [shp, r["dtype"], r["cell"], r["mode"], f"{r['cudnn_ms']:.3f}"] + \
            [f"{r[f'{v}_ms']:.3f}" for v in vs] + [f"{r['speedup']:.2f}x", f"{r['target']}x", met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--all-dtypes", action="store_true", help="non-fp32 dtypes at every shape")
    p.add_argument("--variants", default="auto,small,large,persistent",
                   help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, from {list(CELLS)}")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="T <= 50, imdb and n1 shapes")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: dry run
    p.add_argument("--backend", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--T", type=int, help="override every shape's T")
    p.add_argument("--markdown", help="write the table here")
    args = p.parse_args(argv)
    if args.quick and args.shapes == ",".join(SHAPES):
        args.shapes = "imdb,n1"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU (torch.cuda.is_available() is False)")
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else f"none ({args.device} dry run)"
    rows = run(args)
    md = table(rows, args.variants, gpu)
    failed = [e for r in rows for e in r.get("errors", [])]
    print()
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=gpu, torch=torch.__version__, rows=rows), f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + "\n")
    if failed:
        sys.exit(f"{len(failed)} fastrnn case(s) failed their check against cuDNN:\n  "
                 + "\n  ".join(failed))


if __name__ == "__main__":
    main()
