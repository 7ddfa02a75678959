#!/usr/bin/env python
"""What a user who swaps fastrnn in gets on a GPU: fastrnn's modules as they come (the
default backend, which routes each call to fastrnn's CUDA kernels or to torch's own cuDNN by
``fastrnn.backends.cuda_dispatch``) against torch.nn, in float32, in bfloat16 and float16
modules and under ``torch.autocast("cuda", dtype=torch.bfloat16)``, padded and packed input.

    python benchmarks/gpu_user.py --json rows.json --markdown table.md
    python benchmarks/gpu_user.py --device cpu --T 20 --reps 2   # a dry run without a GPU

Each case: one single-layer unidirectional module pair with the same weights; the outputs
are checked against torch.nn's first, then a forward (inference: eval, no_grad) or a forward
+ backward of a sum loss (train) is timed, interleaved, CUDA events, median over --reps
after --warmup. ``fastrnn`` is the module as a user gets it, ``kernels`` the same module
pinned to fastrnn's CUDA kernels (backend="cuda"). Ratio = torch.nn / fastrnn (> 1: faster).
The rule the table checks: ``fastrnn`` (the default) is never slower than torch.nn beyond
noise (ratio >= 0.95).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

# (run as a script, this folder is on sys.path)
from gpu_timing import _import_fastrnn, make_modules

SHAPES = {"imdb": (500, 64, 100, 128), "n1": (500, 1, 100, 128), "h256": (500, 64, 100, 256)}
# (shape, precisions, inputs): bf16/autocast and packed input at the IMDB shape.
PLAN = [("imdb", ("fp32", "bf16", "fp16", "autocast"), ("padded", "packed")),
        ("n1", ("fp32", "bf16", "fp16", "autocast"), ("padded",)),
        ("h256", ("fp32",), ("padded", "packed"))]
CELLS = ("lstm", "gru", "rnn")
TOL = {"fp32": 2e-3, "bf16": 6e-2, "fp16": 1e-2, "autocast": 6e-2}


def _input(T, N, I, dtype, device, packed):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, I, generator=g).to(device=device, dtype=dtype)
    if not packed:
        return x
    # IMDB-like lengths: 1/5 of T to T, unsorted
    lengths = torch.randint(max(1, T // 5), T + 1, (N,), generator=g)
    lengths[0] = T
    return x, lengths


def _call(mod, inp, grad):
    if isinstance(inp, tuple):
        x, lengths = inp
        x = x.detach().requires_grad_(grad)
        out = mod(pack_padded_sequence(x, lengths, enforce_sorted=False))[0]
        return pad_packed_sequence(out)[0]
    return mod(inp.detach().requires_grad_(grad))[0]


def _runner(mod, inp, mode, autocast):
    ctx = (lambda: torch.autocast(next(mod.parameters()).device.type, dtype=torch.bfloat16)) \
        if autocast else contextlib.nullcontext
    if mode == "infer":
        mod.eval()

        def run():
            with torch.no_grad(), ctx():
                return _call(mod, inp, False)
    else:
        mod.train()

        def run():
            with ctx():
                out = _call(mod, inp, True)
            out.float().sum().backward()
            return out
    return run


def _time(fns, warmup, reps, cuda):
    """Median ms of each function, interleaved round by round."""
    for f in fns:
        for _ in range(warmup):
            f()
    times = [[] for _ in fns]
    for _ in range(reps):
        for f, ts in zip(fns, times):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                a.record()
                f()
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b))
            else:
                import time
                t0 = time.perf_counter()
                f()
                ts.append((time.perf_counter() - t0) * 1e3)
    return [(statistics.median(ts), min(ts), max(ts)) for ts in times]


def run(args):
    fastrnn = _import_fastrnn()
    cuda = args.device.startswith("cuda")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for shape, precs, inputs in PLAN:
        if args.shapes and shape not in args.shapes.split(","):
            continue
        T, N, I, H = SHAPES[shape]
        T = args.T or T
        for prec in precs:
            if args.precisions and prec not in args.precisions.split(","):
                continue
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec, torch.float32)
            for cell in args.cells.split(","):
                ref, fast = make_modules(fastrnn, cell, I, H, dtype, args.device, None)
                _, kern = make_modules(fastrnn, cell, I, H, dtype, args.device,
                                "cuda" if cuda else None)
                for kind in inputs:
                    inp = _input(T, N, I, dtype, args.device, kind == "packed")
                    for mode in ("infer", "train"):
                        row = dict(shape=shape, T=T, N=N, I=I, H=H, precision=prec, cell=cell,
                                   input=kind, mode=mode)
                        try:
                            ac = prec == "autocast"
                            # the outputs first (a forward in the mode's autocast state)
                            chk = [_runner(m, inp, "infer", ac) for m in (ref, fast, kern)]
                            want = chk[0]()
                            row["torch_dtype"] = str(want.dtype).replace("torch.", "")
                            want = want.float()
                            for name, f in (("fastrnn", chk[1]), ("kernels", chk[2])):
                                got = f()
                                row[f"{name}_dtype"] = str(got.dtype).replace("torch.", "")
                                err = (got.float() - want).abs().max().item()
                                if not err <= TOL[prec] * (1 + want.abs().max().item()):
                                    raise AssertionError(f"{name} differs from torch.nn "
                                                         f"by {err:.3g}")
                            row["routed_to"] = fast.last_backend
                            fns = [_runner(m, inp, mode, ac) for m in (ref, fast, kern)]
                            (t, tlo, thi), (f, flo, fhi), (k, klo, khi) = _time(
                                fns, args.warmup, args.reps, cuda)
                            row.update(torch_ms=t, torch_range=[tlo, thi], fastrnn_ms=f,
                                       fastrnn_range=[flo, fhi], kernels_ms=k,
                                       kernels_range=[klo, khi], ratio=t / f,
                                       kernels_ratio=t / k)
                        except Exception as e:  # noqa: BLE001 - recorded, the table goes on
                            row["error"] = f"{type(e).__name__}: {e}"
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    return rows


def table(rows, gpu):
    head = ["shape", "precision", "cell", "input", "mode", "torch.nn ms", "fastrnn ms (route)",
            "ratio", "kernels ms", "kernels ratio", "out dtype (torch / fastrnn)"]
    lines = [f"GPU: {gpu}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['precision']} | {r['cell']} | {r['input']} | "
                         f"{r['mode']} | FAILED: {r['error']} |")
            continue
        lines.append(
            f"| {r['shape']} | {r['precision']} | {r['cell']} | {r['input']} | {r['mode']} | "
            f"{r['torch_ms']:.3f} | {r['fastrnn_ms']:.3f} ({r['routed_to']}) | "
            f"{r['ratio']:.2f}x | {r['kernels_ms']:.3f} | {r['kernels_ratio']:.2f}x | "
            f"{r['torch_dtype']} / {r['fastrnn_dtype']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", help=f"comma-separated subset of {list(SHAPES)}")
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--precisions", help="comma-separated subset of fp32,bf16,fp16,autocast")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--T", type=int, help="override every shape's T")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA GPU (torch.cuda.is_available() is False)")
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none (dry run)"
    rows = run(args)
    md = table(rows, gpu)
    print()
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=gpu, torch=torch.__version__, rows=rows), f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + "\n")
    bad = [r for r in rows if "error" in r]
    slow = [r for r in rows if "ratio" in r and r["ratio"] < 0.95]
    print(f"\n{len(rows)} cases, {len(bad)} failed, {len(slow)} with fastrnn < 0.95x torch.nn")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
