"""The Keras side of the IMDB job, in a process of its own (no torch imported here: Keras's
backend and torch keep thread pools of their own, and in one process they slow each other).

    python -m fastrnn._keras_worker SPEC.json

SPEC names an ``.npz`` with the data (``x_train``, ``y_train``, ``x_test``, ``y_test``,
``warm``: the warm-up batch's indices, ``order{e}``: epoch e's reviews in batch order) and
one with the model's weights (``fastrnn.keras_models.keras_weights``), and the settings
(backend, threads, jit_compile, batch sizes, learning rate and schedule, clipping, epochs,
``probe_steps``). It trains and tests the model as the torch side does (the same batches in
the same order, Adam with torch's defaults, global-norm clipping, the same loss) and writes
``out`` (JSON): per-epoch seconds, loss and training accuracy, test accuracy, inference
seconds, the initial logits of the warm-up batch. With ``probe_steps`` it only times that
many training steps after a warm-up step (the backend and jit_compile choice).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def _configure_threads(backend, threads):
    if not threads:
        return
    if backend == "jax":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_cpu_multi_thread_eigen=true"
                                   f" intra_op_parallelism_threads={threads}").strip()
    else:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


def _reset_optimizer(optimizer):
    """Adam's moments and step count back to zero (after the untimed warm-up step)."""
    for v in optimizer.variables:
        v.assign(np.zeros(v.shape, dtype=v.dtype))


def run(spec):
    backend = spec["backend"]
    _configure_threads(backend, spec.get("threads"))
    from .keras_models import build_keras_model, import_keras

    keras = import_keras(backend)
    if backend == "tensorflow" and spec.get("threads"):
        import tensorflow as tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialised
            pass
    data = np.load(spec["data"])
    weights = dict(np.load(spec["weights"]))
    maxlen = data["x_train"].shape[1]
    keras.utils.set_random_seed(spec.get("seed", 0))
    model = build_keras_model(keras, weights, maxlen)
    initial = [w.copy() for w in model.get_weights()]
    lr = spec["lr"]
    if spec.get("lr_schedule") == "cosine" and spec.get("total_steps"):
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=spec["total_steps"])
    optimizer = keras.optimizers.Adam(learning_rate=lr, epsilon=1e-8,
                                      global_clipnorm=spec.get("clip") or None)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)],
                  jit_compile=bool(spec.get("jit_compile")))
    x_train = data["x_train"].astype("int32")
    y_train = data["y_train"].astype("float32")
    warm = data["warm"]
    result = {"backend": backend, "keras": keras.__version__,
              "jit_compile": bool(spec.get("jit_compile")),
              "initial_logits": np.asarray(model.predict_on_batch(x_train[warm])).tolist()}
    if spec.get("probe_steps"):
        model.train_on_batch(x_train[warm], y_train[warm])  # tracing/compilation
        n = spec["probe_steps"]
        t0 = time.perf_counter()
        for _ in range(n):
            model.train_on_batch(x_train[warm], y_train[warm])
        result["step_seconds"] = (time.perf_counter() - t0) / n
        return result
    # warm-up, untimed: tracing/compilation of the training and prediction functions for
    # each batch shape the timed runs meet (a full batch and the epoch's last, shorter one;
    # JAX compiles per shape); then the initial weights and a fresh optimizer state again
    x_test = data["x_test"].astype("int32")
    t0 = time.perf_counter()
    bs, ebs = spec["batch_size"], spec["eval_batch_size"]
    n = len(data["order1"])
    n_warm = min(n, bs + n % bs)
    model.fit(x_train[:n_warm], y_train[:n_warm], batch_size=bs, epochs=1, shuffle=False,
              verbose=0)
    n_warm = min(len(x_test), ebs + len(x_test) % ebs)
    model.predict(x_test[:n_warm], batch_size=ebs, verbose=0)
    result["warmup_seconds"] = time.perf_counter() - t0
    model.set_weights(initial)
    _reset_optimizer(optimizer)
    epochs = []
    for e in range(1, spec["epochs"] + 1):
        order = data[f"order{e}"]
        xs, ys = x_train[order], y_train[order]
        t0 = time.perf_counter()
        hist = model.fit(xs, ys, batch_size=spec["batch_size"], epochs=1, shuffle=False,
                         verbose=0)
        seconds = time.perf_counter() - t0
        epochs.append({"epoch": e, "seconds": seconds, "samples": len(order),
                       "samples_per_s": len(order) / seconds,
                       "loss": float(hist.history["loss"][-1]),
                       "train_accuracy": float(hist.history["binary_accuracy"][-1])})
        print(f"  keras {backend} epoch {e}/{spec['epochs']}: loss {epochs[-1]['loss']:.4f}"
              f"  train acc {epochs[-1]['train_accuracy']:.4f}  {seconds:.1f} s",
              file=sys.stderr)
    result["epochs"] = epochs
    t0 = time.perf_counter()
    logits = np.asarray(model.predict(x_test, batch_size=spec["eval_batch_size"], verbose=0))
    result["infer_seconds"] = time.perf_counter() - t0
    result["test_accuracy"] = float(((logits > 0) == (data["y_test"] > 0.5)).mean())
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        spec = json.load(fh)
    result = run(spec)
    with open(spec["out"], "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
