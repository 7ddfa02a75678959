"""Run an ONNX classifier on token ids with onnxruntime, alone in its process.

    python /path/to/fastrnn/_ort_worker.py MODEL.onnx IDS.npy OUT.npy THREADS BATCH

Run as a script (never imported through the fastrnn package, which imports torch): the
process holds numpy and onnxruntime only, as a deployment would, so onnxruntime's thread
pool has the machine to itself. Writes the logits of every row of IDS (int64 [N, T]) to OUT
and prints one JSON line: {"seconds": time of the batched pass, "warmup_seconds": ...}.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main(model, ids_path, out_path, threads, batch):
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    ids = np.load(ids_path)
    batch = int(batch)
    t0 = time.perf_counter()
    sess.run(None, {name: ids[:batch]})  # first run: session initialisation
    warm = time.perf_counter() - t0
    outs = []
    t0 = time.perf_counter()
    for start in range(0, len(ids), batch):
        outs.append(sess.run(None, {name: ids[start:start + batch]})[0])
    seconds = time.perf_counter() - t0
    np.save(out_path, np.concatenate(outs))
    print(json.dumps({"seconds": seconds, "warmup_seconds": warm}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
