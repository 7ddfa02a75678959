"""The two bf16 kernel builds side by side: bf16 module inference (``model.bfloat16()``,
T=500, I=100, H=128, one layer) on 'amxbf16' (AMX-BF16 tiles) and 'avx512bf16' (vdpbf16ps
dot products) over batch sizes, in interleaved rounds (each round times both builds), on a
CPU that has both. Prints a markdown table of medians with the interquartile range, the
ratio of the medians, and the machine's 1024^3 float32 and bfloat16 ``torch.mm`` rates
measured in the same run.

    python benchmarks/amx_rows.py [--rounds 15] [--threads 2] [--rows 64,16,8,4,2,1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastrnn
from fastrnn.backends import cpu

T, I, H = 500, 100, 128
BUILDS = ("amxbf16", "avx512bf16")


def _gflops(dtype, n=1024, reps=10):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(ts) / 1e9


def _quartiles(xs):
    q = statistics.quantiles(xs, n=4)
    return statistics.median(xs), q[2] - q[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="64,16,8,4,2,1")
    args = ap.parse_args()
    missing = [b for b in BUILDS if b not in cpu.supported_isas()]
    if missing:
        raise SystemExit(f"this CPU lacks the build(s) {missing} (it supports {cpu.supported_isas()})")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; torch.mm 1024^3: "
          f"fp32 {_gflops(torch.float32):.0f} GFLOP/s, bf16 {_gflops(torch.bfloat16):.0f} GFLOP/s")
    print()
    print("| layer | N | amxbf16 ms (IQR) | avx512bf16 ms (IQR) | ratio |")
    print("|---|---:|---:|---:|---:|")
    old = cpu.isa()
    try:
        for name in ("LSTM", "GRU", "RNN"):
            for n in (int(v) for v in args.rows.split(",")):
                torch.manual_seed(0)
                m = getattr(fastrnn, name)(I, H).bfloat16()
                x = torch.randn(T, n, I).bfloat16()
                times = {b: [] for b in BUILDS}
                with torch.no_grad():
                    for b in BUILDS:  # warm-up: weights packed for each build
                        cpu.set_isa(b)
                        m(x)
                    for _ in range(args.rounds):
                        for b in BUILDS:
                            cpu.set_isa(b)
                            t0 = time.perf_counter()
                            m(x)
                            times[b].append((time.perf_counter() - t0) * 1e3)
                (ma, ia), (md, idd) = _quartiles(times["amxbf16"]), _quartiles(times["avx512bf16"])
                print(f"| {name} | {n} | {ma:.2f} ({ia:.2f}) | {md:.2f} ({idd:.2f}) | {md / ma:.2f}x |",
                      flush=True)
    finally:
        cpu.set_isa(old)


if __name__ == "__main__":
    main()
