"""fastrnn-imdb: train six IMDB sentiment models on fastrnn and on torch.nn and compare them.

    fastrnn-imdb [--models lstm,gru,...] [--impl fastrnn,torch] [--epochs 5] [--out DIR] ...
    python -m fastrnn.imdb --help

For every model (RNN, LSTM, GRU, Bi-RNN, Bi-LSTM, Bi-GRU) both implementations start
from identical weights (see :mod:`fastrnn.models`), see the same batches in the same
order, and are trained epoch by epoch in alternation (so machine noise hits both alike).
Reported per model and implementation: parameters, training seconds per epoch and
samples/s, inference samples/s, test accuracy; per model the fastrnn/torch speed ratios
and the accuracy difference. Written to ``--out``: ``results.json``, ``report.md`` and
two PNG charts; the table is also printed. While it runs, ``partial-results.json`` holds the
models finished so far.

Several processes: ``torchrun --standalone --nproc_per_node N -m fastrnn.imdb ...`` trains
each model with DistributedDataParallel (gloo on the CPU, nccl on GPUs, one GPU per
process): every process takes every N-th batch of each epoch's batch list, so a step's
global batch is N x ``--batch-size`` (the list's trailing batches that do not fill a step
on every process are skipped); the learning rate is used as given (to follow the
linear-scaling rule, pass N x the single-process rate). Rank 0 evaluates and writes the
report; samples/s count all processes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backends import BACKENDS
from .keras_models import KERAS_BACKENDS
from .models import ALL_MODEL_NAMES, DISPLAY, IMPLS, MODEL_NAMES, MODELS, OPTIONS, \
    build_model, count_parameters, fastrnn_layers_available, torch_side_label

ACCURACY_TOLERANCE_PP = 0.5
LR_SCHEDULES = ("constant", "cosine")
QUICK = {"train_size": 512, "test_size": 512, "epochs": 1, "maxlen": 100,
         "lr_schedule": "cosine"}
# 5 epochs with a cosine decay: measured on the full data (fastrnn Bi-LSTM, seed 0), test
# accuracy 86.97% with 4 epochs at a constant 1e-3, 87.20% with these (per epoch 79.6,
# 84.8, 86.6, 87.0, 87.2%): the last epochs at a small rate settle instead of overfitting.
DEFAULTS = {"train_size": None, "test_size": None, "epochs": 5, "maxlen": 500,
            "lr_schedule": "cosine"}
LENGTHS_MODES = {"off": (False,), "on": (True,), "both": (False, True)}
# Length-aware batches: an epoch's shuffled reviews are sorted by length within chunks of
# this many batches, cut into batches, and the batches shuffled (seeded): each batch pads to
# its own longest review, and the batches still mix across the whole training set.
BUCKET_BATCHES = 50
BACKEND_CHOICES = ("auto",) + BACKENDS
CHART_SPEED_ACCURACY = "imdb_speed_accuracy.png"
CHART_SPEEDUP = "imdb_speedup.png"


def display(key):
    """A result's model key (``lstm``, or ``lstm+len`` for its length-aware run) as shown."""
    name, _, variant = key.partition("+")
    return DISPLAY[name] + (" (lengths)" if variant else "")


def _csv_choice(allowed):
    def parse(text):
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(allowed)}, got {text!r}")
        return list(dict.fromkeys(items))
    return parse


def build_parser():
    p = argparse.ArgumentParser(
        prog="fastrnn-imdb",
        description="Train RNN/LSTM/GRU (uni- and bidirectional) IMDB sentiment classifiers "
                    "with fastrnn and with torch.nn; compare speed and accuracy.")
    p.add_argument("--models", type=_csv_choice(ALL_MODEL_NAMES), default=list(MODEL_NAMES),
                   help="comma-separated models (default: the assignment's six, %(default)s; "
                        "also peephole, bipeephole: the peephole LSTM; lnlstm, bilnlstm, lngru, "
                        "bilngru: the layer-normalised LSTM and GRU; the torch side of these is "
                        "a step loop in torch ops)" % {"default": ",".join(MODEL_NAMES)})
    p.add_argument("--impl", type=_csv_choice(IMPLS + ("keras",)), default=list(IMPLS),
                   help="implementations to run, comma-separated: fastrnn, torch, keras "
                        "(default fastrnn,torch; keras needs pip install 'fastrnn[keras]')")
    p.add_argument("--backend", default=None, type=str.lower, choices=BACKEND_CHOICES,
                   help="fastrnn backend (%s; default: fastrnn's default, i.e. "
                        "$FASTRNN_BACKEND or auto; on a CUDA device: cuda, fastrnn's own "
                        "kernels)" % ", ".join(BACKEND_CHOICES))
    p.add_argument("--device", default="auto",
                   help="auto (cuda if a GPU is available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 5; quick 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--embed-dim", type=int, default=100)
    p.add_argument("--maxlen", type=int, default=None,
                   help="reviews are pre-padded/pre-truncated to this length (default 500; "
                        "quick 100)")
    p.add_argument("--num-words", type=int, default=10000, help="vocabulary size (ids < this)")
    p.add_argument("--data", default=None,
                   help="aclImdb_v1.tar.gz, an extracted aclImdb/ folder, Keras's imdb.npz, "
                        "Kaggle's 'IMDB Dataset.csv' (or its zip) or a folder holding one "
                        "(default: $FASTRNN_IMDB_PATH, else the cache folder, else a download "
                        "unless $FASTRNN_OFFLINE=1)")
    p.add_argument("--no-download", action="store_true",
                   help="never download the data (as $FASTRNN_OFFLINE=1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 512 train/512 test reviews, 1 epoch, maxlen 100 (each "
                        "overridable by its own option)")
    p.add_argument("--train-size", type=int, default=None, help="use the first N training reviews")
    p.add_argument("--test-size", type=int, default=None, help="use the first N test reviews")
    p.add_argument("--seed", type=int, default=0, help="weights and batch order")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="learning rate over the run: constant, or cosine (from --lr down to 0 "
                        "at the last batch, per batch; default %s)" % DEFAULTS["lr_schedule"])
    p.add_argument("--forget-bias", type=float, default=1.0,
                   help="LSTM forget-gate bias at init, both implementations (default "
                        "%(default)s; 'nan' keeps torch's init)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: off)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default="imdb_results", help="output folder (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--val-size", type=int, default=0,
                   help="hold out the last N training reviews as a validation split, scored "
                        "after every epoch (default 0: none)")
    p.add_argument("--export-onnx", action="store_true",
                   help="also export each trained fastrnn model to ONNX (<out>/<model>.onnx) "
                        "and score the test set with onnxruntime, alone in a process of its "
                        "own (needs onnx and onnxruntime: pip install 'fastrnn[onnx]')")
    p.add_argument("--lengths", choices=tuple(LENGTHS_MODES), default="off",
                   help="length-aware training and inference: each review runs over its own "
                        "words only (up to maxlen), batches from length buckets; fastrnn "
                        "through its in-kernel lengths, torch.nn through pack_padded_sequence. "
                        "off (default: padded to maxlen, the assignment's), on, or both "
                        "(every model twice, side by side)")
    p.add_argument("--save-models", action="store_true",
                   help="write each trained model's state_dict to <out>/<model>-<impl>.pt")
    p.add_argument("--keras-backend", choices=("auto",) + KERAS_BACKENDS, default="auto",
                   help="Keras's backend for --impl keras: auto (default: time a few training "
                        "steps on each installed one, with and without XLA jit_compile, and "
                        "run the fastest), tensorflow or jax")
    p.add_argument("--keras-jit", choices=("auto", "on", "off"), default="auto",
                   help="Keras's jit_compile (XLA): auto (the faster, timed), on or off")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                   help="arithmetic of both implementations: fp32 (default); bf16 (autocast "
                        "to bfloat16 for the forward pass, parameters and optimizer in float32, "
                        "the mixed precision torch recommends); fp64 (model and loss in "
                        "float64: reproducible to ~1e-12 whatever the summation order)")
    for flag, what in (("--zoneout", "zoneout: each unit keeps its previous h (and the "
                                      "LSTM's c) with this probability per step"),
                       ("--recurrent-dropout", "variational dropout of h where it enters the "
                                               "recurrent product"),
                       ("--weight-drop", "DropConnect on W_hh")):
        p.add_argument(flag, type=float, default=0.0,
                       help=f"{what} (docs/regularized.md), a probability in [0, 1); default 0: "
                            "off. LSTM, GRU and the LayerNorm models; the torch side becomes a "
                            "step loop in torch ops (torch.nn has no such option)")
    p.add_argument("--select-epoch", choices=("last", "best-val"), default="last",
                   help="weights tested at the end: the last epoch's (default) or the epoch "
                        "with the best validation accuracy (needs --val-size)")
    return p


def resolve_config(args):
    """Fill the quick/default values that depend on --quick."""
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("epochs", "batch_size", "eval_batch_size", "hidden_size", "embed_dim",
                "maxlen", "num_words"):
        if getattr(args, key) < 1:
            raise SystemExit(f"fastrnn-imdb: --{key.replace('_', '-')} must be >= 1")
    if getattr(args, "val_size", 0) < 0:
        raise SystemExit("fastrnn-imdb: --val-size must be >= 0")
    for key in OPTIONS:
        value = getattr(args, key, 0.0) or 0.0
        if not 0 <= value < 1:
            raise SystemExit(f"fastrnn-imdb: --{key.replace('_', '-')} must be in [0, 1), "
                             f"got {value}")
    if _options(args):
        bad = [m for m in getattr(args, "models", []) or []
               if MODELS[m][0] not in ("LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU")]
        if bad:
            raise SystemExit("fastrnn-imdb: --zoneout, --recurrent-dropout and --weight-drop "
                             "are for the LSTM, GRU and LayerNorm models, not "
                             + ", ".join(bad))
    if getattr(args, "select_epoch", "last") == "best-val" and not getattr(args, "val_size", 0):
        raise SystemExit("fastrnn-imdb: --select-epoch best-val needs a validation split "
                         "(--val-size N)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(args.device)
    check_backend(args)
    check_keras(args)
    return args


def check_keras(args):
    """With --impl keras: exit with one line saying what to install when Keras (or the
    backend asked for) is missing, and what --impl keras cannot run."""
    if "keras" not in getattr(args, "impl", ()):
        return
    from .keras_models import keras_missing

    backend = getattr(args, "keras_backend", "auto")
    why = keras_missing(None if backend == "auto" else backend)
    if why:
        raise SystemExit(f"fastrnn-imdb: --impl keras: {why}")
    if backend == "auto" and all(keras_missing(b) for b in KERAS_BACKENDS):
        raise SystemExit("fastrnn-imdb: --impl keras: no Keras backend is installed: "
                         "pip install 'fastrnn[keras]'")
    if getattr(args, "precision", "fp32") != "fp32":
        raise SystemExit("fastrnn-imdb: --impl keras runs in float32 only; use "
                         "--precision fp32")


def check_device(text):
    """Exit with one line naming --device and what this machine has unless ``text`` is a
    device the job can run on (cpu, cuda, cuda:N)."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise SystemExit(f"fastrnn-imdb: --device {text!r} is not one of auto, cpu, cuda, "
                         "cuda:N")
    if device.type != "cuda":
        return
    if not torch.backends.cuda.is_built():
        raise SystemExit(f"fastrnn-imdb: --device {text}: this torch ({torch.__version__}) was "
                         f"built without CUDA; the only device here is cpu (--device cpu)")
    if not torch.cuda.is_available():
        raise SystemExit(f"fastrnn-imdb: --device {text}: torch sees no CUDA GPU "
                         f"(torch.cuda.is_available() is False); use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise SystemExit(f"fastrnn-imdb: --device {text}: this machine has {count} CUDA "
                         f"GPU(s): cuda:0" + (f" to cuda:{count - 1}" if count > 1 else ""))


def check_backend(args):
    """Exit with one line naming --backend (or what chose the backend) and why unless the
    fastrnn backend the run will use can run on ``args.device``; nothing to check without
    --impl fastrnn. ``_run`` pins ``cuda`` on a CUDA device when no backend is given."""
    from .backends import BackendUnavailableError, available_backends, get, \
        get_default_backend

    if "fastrnn" not in args.impl:
        return
    device_type = torch.device(args.device).type
    if args.backend is not None:
        name, origin = args.backend, f"--backend {args.backend}"
    elif device_type == "cuda":
        name, origin = "cuda", f"--device {args.device} (runs fastrnn's own CUDA kernels)"
    else:
        try:
            name = get_default_backend()  # $FASTRNN_BACKEND, else auto
        except ValueError as exc:
            raise SystemExit(f"fastrnn-imdb: {exc}") from exc
        origin = f"$FASTRNN_BACKEND={name}"
    if name == "auto":  # auto never fails: the fastest available for the device
        return
    if name in ("cpu", "numba") and device_type != "cpu":
        raise SystemExit(f"fastrnn-imdb: {origin} runs on the CPU, not on --device "
                         f"{args.device}: use --backend cuda or auto, or --device cpu")
    if name == "cuda" and device_type != "cuda":
        raise SystemExit(f"fastrnn-imdb: {origin} needs a CUDA device, got --device "
                         f"{args.device}: use --device cuda, or --backend auto")
    try:
        get(name)
    except BackendUnavailableError as exc:
        usable = [b for b in available_backends() if b in _DEVICE_BACKENDS[device_type]]
        raise SystemExit(f"fastrnn-imdb: {origin}: {exc}. Backends that run on "
                         f"{device_type} here: {', '.join(['auto'] + usable)}; or measure "
                         f"torch.nn alone with --impl torch") from exc


_DEVICE_BACKENDS = {"cpu": ("cpu", "numba", "reference"), "cuda": ("cuda", "reference")}


# --------------------------------------------------------------------------- data

def prepare_data(args, progress=True):
    """Load, pad and tensorise; returns (x_train, y_train, x_test, y_test, info)."""
    from tqdm.auto import tqdm

    from .datasets import load_data, pad_sequences
    from .datasets.imdb import find_source, load_corpus

    t0 = time.perf_counter()
    # the data located (or downloaded, or the error explaining how to get it) before any bar
    source = find_source(args.data, download_missing=not args.no_download, progress=progress)
    args_data = str(source)
    with tqdm(total=4, desc="prepare data", unit="step", disable=not progress) as bar:
        corpus = load_corpus(args_data, download=not args.no_download, progress=progress)
        bar.update(1)
        (xtr, ytr), (xte, yte) = load_data(args_data, num_words=args.num_words, seed=args.seed,
                                           download=not args.no_download, progress=progress)
        bar.update(1)
        xtr, ytr = xtr[:args.train_size], ytr[:args.train_size]
        xte, yte = xte[:args.test_size], yte[:args.test_size]
        xtr = pad_sequences(xtr, maxlen=args.maxlen)
        xte = pad_sequences(xte, maxlen=args.maxlen)
        bar.update(1)
        tensors = [torch.from_numpy(xtr).long(), torch.from_numpy(np.asarray(ytr)).float(),
                   torch.from_numpy(xte).long(), torch.from_numpy(np.asarray(yte)).float()]
        bar.update(1)
    info = {
        "source": corpus.source,
        "corpus_stats": corpus.stats,
        "train_reviews": int(len(ytr)),
        "test_reviews": int(len(yte)),
        "train_positive_fraction": float(np.mean(ytr)) if len(ytr) else math.nan,
        "test_positive_fraction": float(np.mean(yte)) if len(yte) else math.nan,
        "maxlen": args.maxlen,
        "num_words": args.num_words,
        "prepare_seconds": time.perf_counter() - t0,
    }
    return (*tensors, info)


def review_lengths(ids):
    """[N] int64: the words of each pre-padded row (ids > 0; at least 1)."""
    return (ids != 0).sum(1).clamp(min=1)


def post_padded(ids, lengths):
    """Pre-padded rows [N, T] (padding first) -> the same words first, padding after."""
    T = ids.shape[1]
    t = torch.arange(T, device=ids.device)
    src = ((T - lengths)[:, None] + t[None, :]).clamp(max=T - 1)
    return torch.where(t[None, :] < lengths[:, None], ids.gather(1, src), 0)


def bucketed_batches(lengths, batch_size, generator):
    """Training batches (index tensors) of reviews of similar length: a random permutation,
    sorted by length within chunks of ``BUCKET_BATCHES`` batches, cut into batches, the
    batches in random order. Reproducible from ``generator``."""
    order = torch.randperm(len(lengths), generator=generator)
    batches = []
    for chunk in order.split(batch_size * BUCKET_BATCHES):
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches += list(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


class Split:
    """One data split on the device: pre-padded ids x [N, maxlen], labels y [N]; for
    length-aware runs also the post-padded ids and each review's length (CPU)."""

    def __init__(self, x, y, with_lengths):
        self.x, self.y = x, y
        self.lengths = self.x_post = None
        if with_lengths:
            self.lengths = review_lengths(x).cpu()
            self.x_post = post_padded(x, self.lengths.to(x.device))

    def __len__(self):
        return len(self.y)

    def batch(self, idx, lengths):
        """(ids, labels, lengths or None) of the reviews ``idx`` (a CPU index tensor); with
        ``lengths`` the post-padded ids cut at the batch's longest review."""
        dev = self.x.device
        if not lengths:
            i = idx.to(dev)
            return self.x[i], self.y[i], None
        lb = self.lengths[idx]
        order = torch.argsort(lb, descending=True, stable=True)  # packs without reordering
        idx, lb = idx[order], lb[order]
        i = idx.to(dev)
        return self.x_post[i, :int(lb[0])], self.y[i], lb

    def eval_batches(self, batch_size, lengths):
        """Inference batches in order; length-aware: sorted by length (each batch pads to
        its own longest review)."""
        order = torch.argsort(self.lengths, stable=True) if lengths else \
            torch.arange(len(self.y))
        return list(order.split(batch_size))


# --------------------------------------------------------------------------- processes

class Processes:
    """The processes of a run: one, or those torchrun started (``WORLD_SIZE`` > 1), joined in
    a process group (gloo on the CPU, nccl on GPUs: one per process, ``LOCAL_RANK``)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world > 1
        self.main = self.rank == 0

    def start(self, device):
        """Join the process group; returns this process's device."""
        if not self.active:
            return device
        import torch.distributed as dist
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
            backend = "nccl"
        else:
            backend = "gloo"
            # torchrun --standalone: every process on this host; gloo otherwise picks the
            # interface of the host name, where the rendezvous can hang
            if os.environ.get("MASTER_ADDR", "") in ("localhost", "127.0.0.1") and \
                    sys.platform.startswith("linux"):
                os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        if not dist.is_initialized():
            dist.init_process_group(backend)
        return device

    def stop(self):
        if self.active:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()

    def wrap(self, model, device):
        """``model`` for training: under DistributedDataParallel with several processes."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                       else None)

    def shard(self, batches):
        """This process's batches: every ``world``-th, the trailing ones that would not give
        every process a batch left out (all processes run the same number of steps)."""
        if not self.active:
            return batches
        n = len(batches) // self.world * self.world
        return batches[self.rank:n:self.world]

    def total(self, value):
        """``value`` (a tensor) summed over the processes."""
        if self.active:
            import torch.distributed as dist
            value = value.clone()
            dist.all_reduce(value)
        return value


# --------------------------------------------------------------------------- train / eval

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _adam(params, lr):
    """Adam, torch's fused implementation (one kernel over all parameters instead of the
    default loop of small ops per tensor; the same for both implementations), or the
    default where fused Adam is not available."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


class Precision:
    """The arithmetic of a run (``--precision``): the dtype of the parameters and labels, and
    the autocast dtype of the forward pass (None: no autocast)."""

    def __init__(self, name):
        self.name = name
        self.dtype = torch.float64 if name == "fp64" else torch.float32
        self.autocast_dtype = torch.bfloat16 if name == "bf16" else None

    def forward(self, device):
        """The context the forward pass runs in."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)


PRECISIONS = ("fp32", "bf16", "fp64")


def _precision(args):
    return Precision(getattr(args, "precision", "fp32") or "fp32")


def _forget_bias(args):
    fb = getattr(args, "forget_bias", 1.0)
    return None if fb is None or fb != fb else fb  # nan: torch's own init


def _options(args):
    """The regularisation options asked for ({name: p}, only those on), from the parsed
    arguments or the results' ``config``."""
    get = args.get if isinstance(args, dict) else (lambda k, d: getattr(args, k, d))
    return {k: float(get(k, 0.0) or 0.0) for k in OPTIONS if get(k, 0.0)}


def _model(name, impl, args, backend=True):
    """``build_model`` with the job's settings (``backend``: pass --backend to fastrnn)."""
    return build_model(name, impl, seed=args.seed, vocab_size=args.num_words,
                       embed_dim=args.embed_dim, hidden_size=args.hidden_size,
                       backend=args.backend if impl == "fastrnn" and backend else None,
                       forget_bias=_forget_bias(args), **_options(args))


class Run:
    """One (model, implementation) pair being trained."""

    def __init__(self, name, impl, args, device, total_steps=None, lengths=False,
                 procs=None):
        self.name, self.impl, self.device, self.lengths = name, impl, device, lengths
        self.procs = procs or Processes()
        self.key = name + ("+len" if lengths else "")
        self.model = _model(name, impl, args)
        self.precision = _precision(args)
        self.model.to(device, dtype=self.precision.dtype)
        self.train_model = self.procs.wrap(self.model, device)  # DDP under torchrun
        self.optimizer = _adam(self.model.parameters(), args.lr)
        self.lr, self.steps_done, self.total_steps = args.lr, 0, total_steps
        self.cosine = getattr(args, "lr_schedule", "constant") == "cosine" and bool(total_steps)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.clip = args.clip
        self.epochs = []
        self.result = {"model": self.key, "display": display(self.key), "impl": impl,
                       "lengths": lengths, "parameters": count_parameters(self.model)}
        if impl == "fastrnn":
            self.result["backend"] = _fastrnn_backend_name(args.backend, device)

    def step(self, xb, yb, lb=None):
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.logits(self.train_model, xb, lb)
        loss = self.loss_fn(logits, yb)
        loss.backward()
        if self.clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        if self.cosine:  # batch s of S (s from 0) runs at lr * (1 + cos(pi s / S)) / 2
            frac = min(self.steps_done, self.total_steps) / self.total_steps
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
        self.optimizer.step()
        self.steps_done += 1
        return loss.detach(), ((logits.detach() > 0).float() == yb).sum()

    def logits(self, model, xb, lb):
        """The model's logits, its forward pass in the run's precision; the loss and the
        decision take them in the labels' dtype."""
        with self.precision.forward(self.device):
            logits = model(xb, lb)
        return logits.to(self.precision.dtype)

    def warmup(self, xb, yb, lb=None):
        """One forward+backward (no update) and one inference pass, timed apart: JIT
        compilation, allocator growth and library initialisation stay out of the timings.
        Returns None, or why this implementation cannot run the run's precision here
        (torch.nn's bf16 LSTM under CPU autocast is oneDNN's, which needs the CPU's bf16
        instructions and raises without them)."""
        t0 = time.perf_counter()
        self.model.train()
        try:
            loss = self.loss_fn(self.logits(self.train_model, xb, lb), yb)
        except RuntimeError as exc:
            if self.precision.autocast_dtype is None or "primitive descriptor" not in str(exc):
                raise
            return (f"torch.nn cannot run {self.precision.name} autocast for this model on "
                    f"this CPU: {str(exc).splitlines()[0]}")
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        with torch.inference_mode():
            self.logits(self.model, xb, lb)
        _sync(self.device)
        self.result["warmup_seconds"] = time.perf_counter() - t0
        ran = getattr(self.model.rnn, "last_backend", None)  # fastrnn layers record it
        if ran:
            self.result["backend"] = ran

    def train_epoch(self, epoch, split, batches, progress):
        """One epoch over ``batches`` (CPU index tensors into ``split``)."""
        from tqdm.auto import tqdm

        self.model.train()
        batches = self.procs.shard(batches)
        n = sum(len(b) for b in batches)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        bar = tqdm(batches, desc=f"train {display(self.key):7s} {self.impl:7s} "
                                 f"epoch {epoch}", unit="batch", leave=False, mininterval=1.0,
                   disable=not progress or not self.procs.main)
        _sync(self.device)
        t0 = time.perf_counter()
        for idx in bar:
            xb, yb, lb = split.batch(idx, self.lengths)
            loss, corr = self.step(xb, yb, lb)
            loss_sum += loss * len(idx)
            correct += corr
        _sync(self.device)
        seconds = time.perf_counter() - t0
        # every process's samples (the processes run in step: their epochs take as long)
        totals = self.procs.total(torch.stack([loss_sum, correct,
                                               torch.tensor(float(n), device=self.device)]))
        loss_sum, correct, n = float(totals[0]), float(totals[1]), int(totals[2])
        rec = {"epoch": epoch, "seconds": seconds, "samples": n, "samples_per_s": n / seconds,
               "loss": loss_sum / n, "train_accuracy": correct / n}
        self.epochs.append(rec)
        if not math.isfinite(rec["loss"]) and self.procs.main:
            print(f"fastrnn-imdb: {display(self.key)} ({self.impl}), epoch {epoch}: the training "
                  f"loss is not finite: training diverged (the report's notes say more)",
                  file=sys.stderr)
        return rec

    @torch.inference_mode()
    def evaluate(self, split, batch_size, progress):
        from tqdm.auto import tqdm

        self.model.eval()
        n = len(split)
        correct = torch.zeros((), device=self.device)
        bar = tqdm(split.eval_batches(batch_size, self.lengths),
                   desc=f"eval  {display(self.key):7s} {self.impl:7s}", unit="batch",
                   leave=False, mininterval=1.0, disable=not progress)
        _sync(self.device)
        t0 = time.perf_counter()
        for idx in bar:
            xb, yb, lb = split.batch(idx, self.lengths)
            logits = self.logits(self.model, xb, lb)
            correct += ((logits > 0).float() == yb).sum()
        _sync(self.device)
        seconds = time.perf_counter() - t0
        return float(correct) / n, seconds

    def keep_if_best(self, epoch, val_accuracy):
        """Remember these weights if no earlier epoch scored higher on validation."""
        if self.result.get("selected_epoch") is None or \
                val_accuracy > self.result["selected_val_accuracy"]:
            self.result["selected_epoch"] = epoch
            self.result["selected_val_accuracy"] = val_accuracy
            self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore_best(self):
        """Load the best-validation epoch's weights (--select-epoch best-val)."""
        self.model.load_state_dict(self._best_state)

    def finish(self, accuracy, infer_seconds, n_train, n_test):
        secs = [e["seconds"] for e in self.epochs]
        self.result.update({
            "epochs": self.epochs,
            "train_seconds_per_epoch": float(np.mean(secs)),
            "train_seconds_per_epoch_min": float(np.min(secs)),
            "train_samples_per_s": float(self.epochs[-1]["samples"] / np.mean(secs)),
            "inference_seconds": infer_seconds,
            "inference_samples_per_s": n_test / infer_seconds,
            "test_accuracy": accuracy,
            "final_train_loss": self.epochs[-1]["loss"],
        })
        return self.result


# A run's speedups mean little when the machine's speed moved under it (another job, a
# noisy neighbour): the report flags a spread of the GEMM rate beyond this factor.
MACHINE_SPREAD_LIMIT = 1.25


def _sample_machine(machine, device, size=512, repeats=5):
    """Append the machine's current fp32 GEMM rate (GFLOP/s, best of ``repeats``
    ``size``^3 products on ``device``, a few ms) and the 1-minute load average."""
    a = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        a @ a
        _sync(device)
        best = min(best, time.perf_counter() - t)
    machine["gemm_gflops"].append(2 * size ** 3 / best / 1e9)
    if hasattr(os, "getloadavg"):
        machine["load_average"].append(os.getloadavg()[0])


def machine_notes(summary):
    """Warnings about the machine's speed during the run (from its GEMM-rate samples)."""
    m = summary.get("environment", {}).get("machine_samples") or {}
    rates = [r for r in m.get("gemm_gflops", []) if r > 0]
    notes = []
    if len(rates) >= 2 and max(rates) / min(rates) > MACHINE_SPREAD_LIMIT:
        notes.append(f"The machine's speed moved during the run: a 512^3 fp32 GEMM ran at "
                     f"{min(rates):.0f}-{max(rates):.0f} GFLOP/s across the models "
                     f"({max(rates) / min(rates):.2f}x apart), so the speed figures, and the "
                     f"speedups of models measured at different times, are unreliable; rerun on "
                     f"a quiet machine.")
    env = summary.get("environment", {})
    loads = m.get("load_average", [])
    ours = env.get("torch_threads", 1) * env.get("processes", 1)  # this run's own threads
    if loads and max(loads) > ours + 1:
        notes.append(f"The load average reached {max(loads):.1f} while this run kept {ours} "
                     f"thread(s) busy: other processes competed for the CPUs, and the speed "
                     f"figures are unreliable.")
    return notes


def _fastrnn_backend_name(backend, device):
    try:
        from .backends import resolve
        return resolve(backend, device.type)
    except Exception as exc:  # report, don't fail: the layer itself will say more
        return f"unresolved ({exc})"


def _initial_agreement(name, args, device, batch):
    """Max |logit difference| of the two implementations before training (same weights)."""
    precision = _precision(args)
    models = {impl: _model(name, impl, args).to(device, precision.dtype) for impl in IMPLS}
    sd_t, sd_f = models["torch"].state_dict(), models["fastrnn"].state_dict()
    same_weights = sd_t.keys() == sd_f.keys() and all(torch.equal(sd_t[k], sd_f[k]) for k in sd_t)
    xb, _, lb = batch
    with torch.inference_mode(), precision.forward(device):
        out = {impl: m.eval()(xb, lb).float() for impl, m in models.items()}
    return same_weights, float((out["torch"] - out["fastrnn"]).abs().max())


def run(args, progress=True, procs=None):
    """Run the comparison; returns the results dict (also what results.json holds; under
    torchrun, rank 0's, the other processes' being None)."""
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    procs = procs or Processes()
    try:
        summary = _run(args, progress, procs)
        return summary if procs.main else None
    finally:
        procs.stop()
        torch.set_num_threads(threads)


def _export_and_score_onnx(run, x_test, y_test, args):
    """Export ``run``'s trained model to ONNX (the standard recurrent operators) and score
    the test set with onnxruntime in a process of its own (``fastrnn/_ort_worker.py``: no
    torch imported there). Records accuracy, samples/s and agreement with PyTorch."""
    import subprocess
    import tempfile
    import warnings

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{run.key}.onnx"
    model = run.model.eval()
    example = x_test[:2].cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.cpu(), (example,), str(path), dynamo=False,
                          input_names=["ids"], output_names=["logits"],
                          dynamic_axes={"ids": {0: "N"}, "logits": {0: "N"}})
    model.to(run.device)
    with tempfile.TemporaryDirectory() as tmp:
        ids_path, logits_path = Path(tmp) / "ids.npy", Path(tmp) / "logits.npy"
        np.save(ids_path, x_test.cpu().numpy().astype(np.int64))
        worker = Path(__file__).with_name("_ort_worker.py")
        res = subprocess.run([sys.executable, str(worker), str(path), str(ids_path),
                              str(logits_path), str(args.threads or torch.get_num_threads()),
                              str(args.eval_batch_size)], capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"fastrnn-imdb: onnxruntime could not run {path}:\n"
                             f"{res.stderr[-1500:]}")
        timing = json.loads(res.stdout.strip().splitlines()[-1])
        logits = torch.from_numpy(np.load(logits_path))
    with torch.inference_mode():
        ref = torch.cat([model(x_test[i:i + args.eval_batch_size]).cpu()
                         for i in range(0, len(y_test), args.eval_batch_size)])
    y = y_test.cpu()
    n = len(y)
    run.result.update({
        "onnx_file": path.name,
        "onnxruntime_test_accuracy": float(((logits > 0).float() == y).sum()) / n,
        "onnxruntime_inference_seconds": timing["seconds"],
        "onnxruntime_samples_per_s": n / timing["seconds"],
        "onnxruntime_same_predictions": bool(torch.equal(logits > 0, ref > 0)),
        "onnxruntime_max_abs_logit_diff": float((logits - ref).abs().max()),
    })


class KerasSide:
    """The Keras implementation of the job's models (``fastrnn._keras_worker``, one process
    per model): the same pre-padded data, the same batches in the same order, the same
    initial weights (``fastrnn.keras_models.keras_weights`` of the torch.nn model), Adam with
    torch's defaults, the same schedule, clipping and loss."""

    PROBE_STEPS = 3

    def __init__(self, args, train, test, n_train):
        import tempfile

        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="fastrnn-keras-"))
        self.data = self.dir / "data.npz"
        arrays = {"x_train": train.x.cpu().numpy(), "y_train": train.y.float().cpu().numpy(),
                  "x_test": test.x.cpu().numpy(), "y_test": test.y.float().cpu().numpy(),
                  "warm": np.arange(min(args.batch_size, n_train))}
        for epoch in range(1, args.epochs + 1):  # the torch side's batch order (_run)
            g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
            arrays[f"order{epoch}"] = torch.randperm(n_train, generator=g).numpy()
        np.savez(self.data, **arrays)
        self.choice = None  # (backend, jit_compile)
        self.probes = []

    def unavailable_reason(self, name, lengths, procs, device):
        if MODELS[name][0] == "PeepholeLSTM":
            return "Keras has no peephole LSTM layer (n/a)"
        if MODELS[name][0].startswith("LayerNorm"):
            return "Keras has no layer-normalised LSTM/GRU layer (n/a)"
        if _options(self.args):
            return "the Keras side runs without zoneout, recurrent dropout and weight drop (n/a)"
        if lengths:
            return "the Keras side runs the padded reviews only (n/a for length-aware runs)"
        if procs.world > 1:
            return "the Keras side runs in single-process runs only"
        if device.type != "cpu":
            return "the Keras side runs on the CPU only"
        return None

    def _worker(self, name, spec):
        import subprocess

        weights = self.dir / f"{name}-weights.npz"
        if not weights.exists():
            from .keras_models import keras_weights
            a = self.args
            model = build_model(name, "torch", seed=a.seed, vocab_size=a.num_words,
                                embed_dim=a.embed_dim, hidden_size=a.hidden_size,
                                forget_bias=_forget_bias(a))
            np.savez(weights, **keras_weights(model))
        out = self.dir / f"{name}-{spec.get('backend')}-{spec.get('jit_compile')}.json"
        spec = dict(spec, data=str(self.data), weights=str(weights), out=str(out),
                    threads=self.args.threads or torch.get_num_threads(), seed=self.args.seed)
        spec_path = self.dir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run([sys.executable, "-m", "fastrnn._keras_worker", str(spec_path)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise SystemExit(f"fastrnn-imdb: the Keras process failed for {name}:\n{tail}")
        for line in proc.stderr.splitlines():
            if line.startswith("  keras "):
                print(f"  {display(name):7s} {line.strip()}", file=sys.stderr)
        return json.loads(out.read_text())

    def _choose(self, name):
        """The Keras backend and jit_compile setting to run: as asked, or the fastest of a
        few timed training steps of each (on the first model)."""
        if self.choice is not None:
            return self.choice
        from .keras_models import keras_missing

        a = self.args
        backends = [a.keras_backend] if a.keras_backend != "auto" else \
            [b for b in KERAS_BACKENDS if not keras_missing(b)]
        jits = {"on": [True], "off": [False]}.get(a.keras_jit, [False, True])
        if len(backends) * len(jits) == 1:
            self.choice = (backends[0], jits[0])
            return self.choice
        for b in backends:
            for j in jits:
                r = self._worker(name, {"backend": b, "jit_compile": j,
                                        "probe_steps": self.PROBE_STEPS,
                                        "batch_size": a.batch_size, "lr": a.lr, "epochs": 0,
                                        "clip": a.clip})
                self.probes.append({"model": name, "backend": b, "jit_compile": j,
                                    "step_seconds": r["step_seconds"]})
                print(f"  Keras probe ({display(name)}): {b}, jit_compile={j}: "
                      f"{1e3 * r['step_seconds']:.0f} ms per training step", file=sys.stderr)
        best = min(self.probes, key=lambda p: p["step_seconds"])
        self.choice = (best["backend"], best["jit_compile"])
        return self.choice

    def run(self, name, args, total_steps, n_test):
        backend, jit = self._choose(name)
        r = self._worker(name, {
            "backend": backend, "jit_compile": jit, "batch_size": args.batch_size,
            "eval_batch_size": args.eval_batch_size, "lr": args.lr,
            "lr_schedule": args.lr_schedule, "total_steps": total_steps, "clip": args.clip,
            "epochs": args.epochs})
        secs = [e["seconds"] for e in r["epochs"]]
        return {"model": name, "display": display(name), "impl": "keras", "lengths": False,
                "parameters": count_parameters(build_model(
                    name, "torch", vocab_size=args.num_words, embed_dim=args.embed_dim,
                    hidden_size=args.hidden_size)),
                "backend": f"keras {r['keras']} / {backend}" + (" (XLA)" if jit else ""),
                "warmup_seconds": r["warmup_seconds"], "epochs": r["epochs"],
                "train_seconds_per_epoch": float(np.mean(secs)),
                "train_seconds_per_epoch_min": float(np.min(secs)),
                "train_samples_per_s": float(r["epochs"][-1]["samples"] / np.mean(secs)),
                "inference_seconds": r["infer_seconds"],
                "inference_samples_per_s": n_test / r["infer_seconds"],
                "test_accuracy": r["test_accuracy"],
                "final_train_loss": r["epochs"][-1]["loss"],
                "initial_logits": r["initial_logits"]}

    def summary(self):
        return {"backend": self.choice[0] if self.choice else None,
                "jit_compile": self.choice[1] if self.choice else None,
                "probes": self.probes}


def _keras_comparison(name, kres, by_impl, args, device, warm_batch):
    """fastrnn (and torch.nn) against Keras for one model; the initial logits of the warm-up
    batch, Keras's against torch.nn's (identical weights: only the frameworks' arithmetic
    differs)."""
    ref = build_model(name, "torch", seed=args.seed, vocab_size=args.num_words,
                      embed_dim=args.embed_dim, hidden_size=args.hidden_size,
                      forget_bias=_forget_bias(args)).to(device).eval()
    with torch.inference_mode():
        logits = ref(warm_batch[0]).float().cpu()
    diff = float((torch.tensor(kres.pop("initial_logits")) - logits).abs().max())
    comp = {"model": name, "display": display(name), "keras_backend": kres["backend"],
            "initial_logit_max_abs_diff": diff, "keras_test_accuracy": kres["test_accuracy"]}
    for impl, r in by_impl.items():
        comp[f"{impl}_train_speedup"] = r["train_samples_per_s"] / kres["train_samples_per_s"]
        comp[f"{impl}_inference_speedup"] = \
            r["inference_samples_per_s"] / kres["inference_samples_per_s"]
        comp[f"{impl}_accuracy_diff_pp"] = 100.0 * (r["test_accuracy"] - kres["test_accuracy"])
    return comp


def _run(args, progress, procs):
    device = procs.start(torch.device(args.device))
    progress = progress and procs.main
    if device.type == "cuda" and args.backend is None and "fastrnn" in args.impl:
        # fastrnn's own CUDA kernels against torch.nn: `auto` would hand some layers to
        # cuDNN (fastrnn.backends.cuda_dispatch), and the comparison would be cuDNN with itself
        args.backend = "cuda"
    if getattr(args, "export_onnx", False):
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise SystemExit(f"fastrnn-imdb: --export-onnx needs onnx and onnxruntime "
                             f"(pip install 'fastrnn[onnx]'): {exc}") from exc
    if "fastrnn" in args.impl:
        why = fastrnn_layers_available()
        if why:
            raise SystemExit(f"fastrnn-imdb: --impl fastrnn needs fastrnn's layers: {why}\n"
                             f"(run with --impl torch to measure torch.nn alone)")
    x_train, y_train, x_test, y_test, data_info = prepare_data(args, progress)
    label_dtype = _precision(args).dtype  # the loss's dtype
    x_train, y_train = x_train.to(device), y_train.to(device, label_dtype)
    x_test, y_test = x_test.to(device), y_test.to(device, label_dtype)
    n_val = getattr(args, "val_size", 0)
    if n_val >= len(y_train):
        raise SystemExit(f"fastrnn-imdb: --val-size {n_val} leaves no training reviews "
                         f"(there are {len(y_train)})")
    if n_val:  # the last reviews of the (already shuffled) training set
        x_val, y_val = x_train[-n_val:], y_train[-n_val:]
        x_train, y_train = x_train[:-n_val], y_train[:-n_val]
        data_info["train_reviews"], data_info["val_reviews"] = len(y_train), n_val
    n_train, n_test = len(y_train), len(y_test)
    if n_train == 0 or n_test == 0:
        raise SystemExit("fastrnn-imdb: no training or no test reviews to use")
    best_val = getattr(args, "select_epoch", "last") == "best-val"

    variants = LENGTHS_MODES[getattr(args, "lengths", "off")]
    with_lengths = any(variants)
    train = Split(x_train, y_train, with_lengths)
    test = Split(x_test, y_test, with_lengths)
    val_split = Split(x_val, y_val, with_lengths) if n_val else None
    if with_lengths:
        data_info["mean_train_length"] = float(train.lengths.float().mean())
    results, comparisons, unavailable, keras_comparisons = [], [], [], []
    keras = KerasSide(args, train, test, n_train) if "keras" in args.impl and procs.main \
        else None
    t_start = time.perf_counter()
    machine = {"gemm_gflops": [], "load_average": []}  # the machine's speed, per model and at the end

    def summary():
        env = _environment(device, args)
        env["processes"] = procs.world  # torchrun: DistributedDataParallel over this many
        env["machine_samples"] = machine
        return {
            "config": {k: v for k, v in vars(args).items()},
            "environment": env,
            "data": data_info,
            "results": results,
            "comparisons": comparisons,
            "unavailable": unavailable,
            "keras_comparisons": keras_comparisons,
            "keras": keras.summary() if keras else None,
            "accuracy_tolerance_pp": ACCURACY_TOLERANCE_PP,
            "total_seconds": time.perf_counter() - t_start,
        }

    for name, lengths in ((m, v) for m in args.models for v in variants):
        _sample_machine(machine, device)
        key = name + ("+len" if lengths else "")
        total_steps = args.epochs * (math.ceil(n_train / args.batch_size) // procs.world)
        runs = [Run(name, impl, args, device, total_steps, lengths, procs)
                for impl in args.impl if impl in IMPLS]
        warm = torch.arange(min(args.batch_size, n_train))
        for r in list(runs):
            why = r.warmup(*train.batch(warm, lengths))
            if why:  # this implementation cannot run the precision on this machine
                runs.remove(r)
                unavailable.append({"model": key, "display": display(key), "impl": r.impl,
                                    "reason": why})
                if procs.main:
                    print(f"  {display(key):7s} {r.impl:7s} skipped: {why}", file=sys.stderr)
        for epoch in range(1, args.epochs + 1):
            # the same batches, in the same order, for every implementation
            g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
            if lengths:
                batches = bucketed_batches(train.lengths, args.batch_size, g)
            else:
                batches = list(torch.randperm(n_train, generator=g).split(args.batch_size))
            for r in runs:
                rec = r.train_epoch(epoch, train, batches, progress)
                val = ""
                if n_val:
                    rec["val_accuracy"] = r.evaluate(val_split, args.eval_batch_size,
                                                     progress)[0]
                    val = f"  val acc {rec['val_accuracy']:.4f}"
                    if best_val:
                        r.keep_if_best(epoch, rec["val_accuracy"])
                if not procs.main:
                    continue
                print(f"  {display(key):7s} {r.impl:7s} epoch {epoch}/{args.epochs}: "
                      f"loss {rec['loss']:.4f}  train acc {rec['train_accuracy']:.4f}{val}  "
                      f"{rec['seconds']:.1f} s ({rec['samples_per_s']:.0f} samples/s)",
                      file=sys.stderr)
        if not procs.main:  # rank 0 tests and reports
            continue
        by_impl = {}
        for r in runs:
            if best_val:
                r.restore_best()
            if getattr(args, "save_models", False):
                Path(args.out).mkdir(parents=True, exist_ok=True)
                torch.save(r.model.state_dict(), Path(args.out) / f"{r.key}-{r.impl}.pt")
            acc, secs = r.evaluate(test, args.eval_batch_size, progress)
            by_impl[r.impl] = r.finish(acc, secs, n_train, n_test)
            # (a length-aware model is not exported: ONNX's padded LSTM is not what it learnt)
            if r.impl == "fastrnn" and getattr(args, "export_onnx", False) and not lengths:
                _export_and_score_onnx(r, x_test, y_test, args)
            results.append(by_impl[r.impl])
        if "keras" in args.impl:
            why = keras.unavailable_reason(name, lengths, procs, device)
            if why:
                unavailable.append({"model": key, "display": display(key), "impl": "keras",
                                    "reason": why})
            else:
                kres = keras.run(name, args, total_steps, n_test)
                results.append(kres)
                keras_comparisons.append(_keras_comparison(name, kres, by_impl, args, device,
                                                           train.batch(warm, False)))
        if len(by_impl) == 2:
            same, diff = _initial_agreement(name, args, device, train.batch(warm, lengths))
            f, t = by_impl["fastrnn"], by_impl["torch"]
            acc_diff = 100.0 * (f["test_accuracy"] - t["test_accuracy"])
            comparisons.append({
                "model": key, "display": display(key),
                "train_speedup": f["train_samples_per_s"] / t["train_samples_per_s"],
                "inference_speedup": f["inference_samples_per_s"] / t["inference_samples_per_s"],
                "accuracy_diff_pp": acc_diff,
                "accuracy_within_tolerance": abs(acc_diff) <= ACCURACY_TOLERANCE_PP,
                "identical_initial_weights": same,
                "initial_logit_max_abs_diff": diff,
                "final_train_loss_diff": f["final_train_loss"] - t["final_train_loss"],
            })
        # what is finished so far, so that an interrupted run keeps its finished models
        _write_partial(args.out, summary())
    _sample_machine(machine, device)
    return summary()


def _environment(device, args):
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "platform": platform.platform(), "device": str(device),
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        import fastrnn
        env["fastrnn"] = getattr(fastrnn, "__version__", "?")
        if "fastrnn" in args.impl:
            from .backends import available_backends
            env["fastrnn_backends_available"] = available_backends()
    except Exception as exc:
        env["fastrnn"] = f"unavailable ({exc})"
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        # torch.nn's cuDNN RNNs may run their matmuls in TF32 (torch's default); fastrnn's
        # CUDA kernels compute in float32.
        env["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    return env


# --------------------------------------------------------------------------- reporting

def _fmt_ratio(x):
    return "" if x is None else f"{x:.2f}x"


def table_rows(summary):
    """Rows (list of str lists) of the main table, with a header row first."""
    comp = {c["model"]: c for c in summary["comparisons"]}
    head = ["model", "impl", "backend", "params", "train s/epoch", "train samples/s",
            "infer samples/s", "test acc %", "train speedup", "infer speedup"]
    ort = any("onnxruntime_samples_per_s" in r for r in summary["results"])
    if ort:  # --export-onnx: the exported model under onnxruntime, alone in its process
        head += ["onnxruntime infer samples/s", "onnxruntime test acc %"]
    rows = [head]
    for r in summary["results"]:
        c = comp.get(r["model"]) if r["impl"] == "fastrnn" else None
        row = [r["display"], r["impl"],
               r.get("backend", torch_side_label(r["model"], _options(summary["config"]))),
               f"{r['parameters']:,}", f"{r['train_seconds_per_epoch']:.1f}",
               f"{r['train_samples_per_s']:.0f}", f"{r['inference_samples_per_s']:.0f}",
               f"{100 * r['test_accuracy']:.2f}",
               _fmt_ratio(c and c["train_speedup"]),
               _fmt_ratio(c and c["inference_speedup"])]
        if ort:
            row += ([f"{r['onnxruntime_samples_per_s']:.0f}",
                     f"{100 * r['onnxruntime_test_accuracy']:.2f}"]
                    if "onnxruntime_samples_per_s" in r else ["", ""])
        rows.append(row)
    return rows


def format_table(summary):
    rows = table_rows(summary)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows):
    out = ["| " + " | ".join(rows[0]) + " |",
           "|" + "|".join("---" if i < 3 else "---:" for i in range(len(rows[0]))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def _validation_text(summary):
    """The report's sentence on the validation split and the epoch tested, if any."""
    cfg = summary["config"]
    if not cfg.get("val_size"):
        return ""
    text = (f" {cfg['val_size']} training reviews were held out as a validation split, "
            f"scored after every epoch")
    if cfg.get("select_epoch") != "best-val":
        return text + "; the last epoch's weights were tested."
    picks = ", ".join(f"{r['display']} {r['impl']} epoch {r['selected_epoch']}"
                      for r in summary["results"] if r.get("selected_epoch"))
    return text + f"; each model was tested with its best-validation epoch's weights ({picks})."


FULL_TRAIN_REVIEWS = 25000


def full_data(summary):
    """Whether the run trained on the whole training set (validation split included), so
    that its accuracies compare with full-data results."""
    data = summary["data"]
    return not summary["config"].get("quick") and \
        data["train_reviews"] + data.get("val_reviews", 0) >= FULL_TRAIN_REVIEWS


def accuracy_notes(summary):
    notes = machine_notes(summary)
    cfg = summary["config"]
    for u in summary.get("unavailable", []):
        notes.append(f"{u['display']} ({u['impl']}): not run: {u['reason']}.")
    if not full_data(summary):
        notes.append(
            f"This run used {summary['data']['train_reviews']} training and "
            f"{summary['data']['test_reviews']} test reviews, {cfg['epochs']} epoch(s), maxlen "
            f"{cfg['maxlen']}: accuracies are not comparable with full-data results.")
    for c in summary["comparisons"]:
        if not c["identical_initial_weights"]:
            notes.append(f"{c['display']}: the two implementations did NOT start from identical "
                         "weights (state_dict copy failed): the comparison is invalid.")
        if not c["accuracy_within_tolerance"]:
            notes.append(
                f"{c['display']}: fastrnn and torch.nn test accuracy differ by "
                f"{c['accuracy_diff_pp']:+.2f} pp (more than {ACCURACY_TOLERANCE_PP} pp). They "
                f"started from identical weights (initial logits differ by at most "
                f"{c['initial_logit_max_abs_diff']:.2e}) and saw the same batches; the kernels "
                f"sum in a different order, and training amplifies such rounding differences "
                f"(final training loss differs by {c['final_train_loss_diff']:+.4f})"
                + (" and torch.nn's cuDNN layers ran in TF32 (torch.backends.cudnn.allow_tf32),"
                   " fastrnn's in float32"
                   if summary.get("environment", {}).get("cudnn_allow_tf32") else "")
                + ". Over hundreds of steps per epoch the two runs follow different "
                f"trajectories, so a gap of this size says how far such runs spread, not that "
                f"a gradient is wrong (the tests compare every gradient); rerun with another "
                f"--seed to see the spread.")
    for r in summary["results"]:
        if "onnxruntime_same_predictions" in r and not r["onnxruntime_same_predictions"]:
            notes.append(f"{r['display']}: onnxruntime's predictions from {r['onnx_file']} differ "
                         f"from PyTorch's for some reviews (largest logit difference "
                         f"{r['onnxruntime_max_abs_logit_diff']:.2e}).")
    for r in summary["results"]:
        diverged = [e["epoch"] for e in r.get("epochs") or []
                    if e.get("loss") is None or not math.isfinite(e["loss"])]
        if diverged:
            hint = ""
            if MODELS.get(r["model"], ("",))[0].startswith("LayerNorm") and not r.get("lengths"):
                hint = (" LayerNorm of the state the padding steps hold at zero multiplies the "
                        "gradient by about 1/sqrt(eps) per step, which overflows over the "
                        "pre-padded reviews: rerun with --lengths on (docs/imdb.md).")
            notes.append(f"{r['display']} ({r['impl']}): training diverged: the loss was not "
                         f"finite from epoch {diverged[0]} on, so its accuracy "
                         f"({100 * r['test_accuracy']:.1f}%) says nothing about the model." + hint)
    for r in summary["results"]:
        if r["model"] in ("rnn", "birnn") and r["test_accuracy"] < 0.75 and \
                summary["data"]["maxlen"] >= 200:
            notes.append(f"{r['display']} ({r['impl']}): {100 * r['test_accuracy']:.1f}%: a "
                         "plain tanh RNN over this many steps suffers from vanishing gradients "
                         "(the reason LSTM and GRU exist).")
    return list(dict.fromkeys(notes))


# The accuracy panel's reference line: what the gated models reach on the full data with the
# job's defaults (docs/imdb.md, "Results": 87.1-88.3%). Drawn only for full-data runs.
REFERENCE_ACCURACY_PCT = 87
# A speedup chart's bar beyond this many times the median of the bars is cut at the scale of
# the others (its value written on it), when only a few bars are that far out: one ratio
# measured under load must not flatten the rest.
OUTLIER_FACTOR = 3.0


def speedup_axis_limit(values):
    """The speedup chart's y-axis top: None (scale to the tallest bar) unless at most a
    quarter of ``values`` (at least one) exceed ``OUTLIER_FACTOR`` x their median; then 1.25x
    the tallest of the others."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    if len(vals) < 3:
        return None
    med = float(np.median(vals))
    rest = [v for v in vals if v <= OUTLIER_FACTOR * med]
    outliers = len(vals) - len(rest)
    if outliers == 0 or outliers > max(1, len(vals) // 4):
        return None
    return 1.25 * max(rest)


def _add_notes(fig, notes, width):
    """Write ``notes`` under the plot of ``fig``, wrapped to ``width`` characters; returns the
    fraction of the figure's height they take (for tight_layout's rect)."""
    import textwrap

    if not notes:
        return 0.0
    lines = []
    for n in notes:
        lines += textwrap.wrap("Warning: " + n, width)
    height_in = fig.get_figheight()
    frac = min(0.45, (0.16 * len(lines) + 0.1) / height_in)
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=8, color="#b00000", ha="left",
             va="bottom")
    return frac


def speed_accuracy_figure(summary):
    """The Figure of training samples/s | inference samples/s | test accuracy per model."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg output

    results = summary["results"]
    models = list(dict.fromkeys(r["model"] for r in results))
    impls = list(dict.fromkeys(r["impl"] for r in results))
    labels = [display(m) for m in models]
    get = {(r["model"], r["impl"]): r for r in results}
    colors = {"fastrnn": "#1f77b4", "torch": "#ff7f0e"}
    x = np.arange(len(models))
    width = 0.8 / max(len(impls), 1)

    fig = Figure(figsize=(15, 4.8), dpi=100)
    panels = [("train_samples_per_s", "training samples/s"),
              ("inference_samples_per_s", "inference samples/s"),
              ("test_accuracy", "test accuracy (%)")]
    for k, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        top = 0.0
        for j, impl in enumerate(impls):
            vals = [get[(m, impl)][key] * (100 if key == "test_accuracy" else 1)
                    if (m, impl) in get else 0 for m in models]
            bars = ax.bar(x + (j - (len(impls) - 1) / 2) * width, vals, width, label=impl,
                          color=colors.get(impl))
            ax.bar_label(bars, fmt="%.1f" if key == "test_accuracy" else "%.0f", fontsize=7)
            top = max([top] + [v for v in vals if math.isfinite(v)])
        ax.set_xticks(x, labels, rotation=20)
        ax.set_title(title)
        if key == "test_accuracy":
            if full_data(summary):  # a smaller run's accuracies are not comparable with it
                ax.axhline(REFERENCE_ACCURACY_PCT, color="gray", lw=0.8, ls="--",
                           label=f"{REFERENCE_ACCURACY_PCT}%: gated models, full data, "
                                 f"defaults (docs/imdb.md)")
            ax.set_ylim(0, 130)  # room above 100% for the legend
            ax.set_yticks(range(0, 101, 20))
        elif top > 0:
            ax.set_ylim(0, 1.3 * top)  # room for the bar labels and the legend
        ax.legend(fontsize=7, loc="upper center",
                  ncol=1 if key == "test_accuracy" else len(impls))
    dev = summary["environment"]["device"]
    title = (f"IMDB: fastrnn vs torch.nn on {dev} "
             f"({summary['data']['train_reviews']} train / "
             f"{summary['data']['test_reviews']} test reviews, maxlen "
             f"{summary['data']['maxlen']})")
    notes = machine_notes(summary)  # the report's warnings on the machine's speed
    if notes:
        title += "; speed figures unreliable (see below)"
    fig.suptitle(title)
    fig.tight_layout(rect=(0, _add_notes(fig, notes, 190), 1, 1))
    return fig


def speedup_figure(summary):
    """The Figure of fastrnn/torch.nn speed ratios per model (training, inference), its scale
    kept from a lone outlier (:func:`speedup_axis_limit`)."""
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r["model"] for r in summary["results"]))
    comp = {c["model"]: c for c in summary["comparisons"]}
    cm = [m for m in models if m in comp]
    series = [("train_speedup", "training"), ("inference_speedup", "inference")]
    limit = speedup_axis_limit([comp[m][key] for m in cm for key, _ in series])

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    xc = np.arange(len(cm))
    for j, (key, title) in enumerate(series):
        vals = [comp[m][key] for m in cm]
        cut = [limit is not None and v > limit for v in vals]
        bars = ax.bar(xc + (j - 0.5) * 0.4, [limit if c else v for v, c in zip(vals, cut)],
                      0.4, label=title)
        for bar, c in zip(bars, cut):
            if c:
                bar.set_hatch("//")
        ax.bar_label(bars, labels=[f"{v:.2f}x" + (" (cut)" if c else "")
                                   for v, c in zip(vals, cut)], fontsize=8)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    drawn = [min(comp[m][key], limit or math.inf) for m in cm for key, _ in series]
    top = max([1.0] + [v for v in drawn if math.isfinite(v)])
    ax.set_ylim(0, 1.25 * top)  # room for the bar labels and the legend above the bars
    if limit is not None:
        ax.set_xlabel(f"hatched bars are cut at {limit:.2f}x (far above the others); their "
                      f"values are written on them", fontsize=8)
    ax.set_xticks(xc, [display(m) for m in cm])
    ax.set_ylabel("fastrnn / torch.nn speed")
    ax.set_title("fastrnn speed relative to torch.nn (> 1: fastrnn faster)")
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, _add_notes(fig, machine_notes(summary), 110), 1, 1))
    return fig


def write_charts(summary, out):
    """Two PNGs: speed and accuracy side by side; fastrnn/torch speed ratios. Both carry the
    report's warnings on the machine's speed."""
    paths = {"speed_accuracy": out / CHART_SPEED_ACCURACY, "speedup": out / CHART_SPEEDUP}
    speed_accuracy_figure(summary).savefig(paths["speed_accuracy"], format="png")
    speedup_figure(summary).savefig(paths["speedup"], format="png")
    return paths


def _schedule_text(cfg):
    if cfg.get("lr_schedule", "constant") == "cosine":
        return " with a cosine decay to 0 over the run (per batch)"
    return " (constant)"


def _precision_text(cfg):
    return {"bf16": "bfloat16 autocast (float32 parameters and optimizer)",
            "fp64": "float64"}.get(cfg.get("precision", "fp32"), "float32")


def _keras_report(summary):
    """The report's Keras section: speed ratios against Keras (its own process, measured
    alone), accuracies, and the initial logits' agreement with torch.nn."""
    comps = summary.get("keras_comparisons") or []
    if not comps:
        return []
    k = summary.get("keras") or {}
    probes = k.get("probes") or []
    lines = ["## Against Keras", "",
             "Keras runs in a process of its own, after the model's torch runs, on the same "
             "pre-padded data, batches, initial weights (torch.nn's, in Keras's layouts), "
             "optimizer settings, schedule, clipping and loss. Backend: "
             f"{k.get('backend')}, jit_compile {k.get('jit_compile')}"
             + ("; chosen as the fastest of " + ", ".join(
                 f"{p['backend']}{' (XLA)' if p['jit_compile'] else ''} "
                 f"{1e3 * p['step_seconds']:.0f} ms" for p in probes)
                + " per training step" if probes else "") + ".", "",
             "| model | Keras | fastrnn train / Keras | fastrnn infer / Keras | "
             "torch.nn train / Keras | Keras acc % | fastrnn - Keras (pp) | "
             "initial logits vs torch.nn |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in comps:
        lines.append(
            f"| {c['display']} | {c['keras_backend']} | "
            f"{_fmt_ratio(c.get('fastrnn_train_speedup'))} | "
            f"{_fmt_ratio(c.get('fastrnn_inference_speedup'))} | "
            f"{_fmt_ratio(c.get('torch_train_speedup'))} | "
            f"{100 * c['keras_test_accuracy']:.2f} | "
            + (f"{c['fastrnn_accuracy_diff_pp']:+.2f}" if "fastrnn_accuracy_diff_pp" in c
               else "") + f" | {c['initial_logit_max_abs_diff']:.2e} |")
    return lines + [""]


def write_report(summary, out, charts):
    cfg, env, data = summary["config"], summary["environment"], summary["data"]
    lines = [
        "# IMDB sentiment: fastrnn vs torch.nn", "",
        f"Device: **{env['device']}**" + (f" ({env['gpu']})" if "gpu" in env else "") +
        f", torch {env['torch']}, {env['torch_threads']} CPU threads, fastrnn "
        f"{env.get('fastrnn', '?')}.", "",
        f"Data: {data['train_reviews']} training / {data['test_reviews']} test reviews from "
        f"`{data['source']}`, vocabulary {cfg['num_words']}, pre-padded/truncated to "
        f"{cfg['maxlen']} steps"
        + (f"; the length-aware runs ((lengths) rows) take each review over its own words "
           f"only (mean {data['mean_train_length']:.0f} steps in training), in batches of "
           f"similar lengths" if data.get("mean_train_length") else "") + ".", "",
        f"Training: {cfg['epochs']} epoch(s), Adam lr {cfg['lr']}"
        f"{_schedule_text(cfg)}, batch {cfg['batch_size']}"
        + (f" per process x {env['processes']} processes (DistributedDataParallel, "
           f"global batch {cfg['batch_size'] * env['processes']})"
           if env.get("processes", 1) > 1 else "")
        + ", "
        f"gradient clipping {cfg['clip'] or 'off'}, LSTM forget-gate bias "
        f"{cfg.get('forget_bias', 1.0)} at init, hidden {cfg['hidden_size']}, embedding "
        f"{cfg['embed_dim']}, seed {cfg['seed']}, {_precision_text(cfg)}. "
        f"Inference batch {cfg['eval_batch_size']}. "
        f"Both implementations of a model start from identical weights and see the same "
        f"batches; their epochs alternate." + _validation_text(summary), "",
        "## Results", "",
        markdown_table(table_rows(summary)), "",
        "Speedup = fastrnn samples/s / torch.nn samples/s (> 1: fastrnn faster). Training "
        "time excludes a warm-up step (JIT compilation, first allocations).", "",
    ]
    options = _options(cfg)
    if options:
        lines += ["Regularisation: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                                  for k, v in options.items())
                  + " (docs/regularized.md).", ""]
    if any(torch_side_label(r["model"], options) != "torch.nn" for r in summary["results"]):
        lines += ["torch.nn has no peephole LSTM, no layer-normalised LSTM/GRU and none of "
                  "the regularisation options: the torch side of those is the step loop in "
                  "torch ops a user would write (`fastrnn.models.PeepholeLSTMLoop`, "
                  "`RegularizedLoop`; labelled `torch step loop`).", ""]
    if summary["comparisons"]:
        lines += ["## Agreement", "",
                  "| model | accuracy diff (pp) | within 0.5 pp | identical initial weights | "
                  "initial max abs logit diff |", "|---|---:|---|---|---:|"]
        for c in summary["comparisons"]:
            lines.append(f"| {c['display']} | {c['accuracy_diff_pp']:+.2f} | "
                         f"{'yes' if c['accuracy_within_tolerance'] else 'NO'} | "
                         f"{'yes' if c['identical_initial_weights'] else 'NO'} | "
                         f"{c['initial_logit_max_abs_diff']:.2e} |")
        lines.append("")
    lines += _keras_report(summary)
    notes = accuracy_notes(summary)
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Charts", "", f"![speed and accuracy]({charts['speed_accuracy'].name})", "",
              f"![speedup]({charts['speedup'].name})", "",
              f"Total run time {summary['total_seconds']:.0f} s; data preparation "
              f"{data['prepare_seconds']:.1f} s. Raw numbers: `results.json`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


PARTIAL = "partial-results.json"


def _write_partial(out, summary):
    """``<out>/partial-results.json``: results.json's contents for the models finished so
    far (written after each model; ``write_outputs`` removes it once the run is complete)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = dict(summary, complete=False)
    tmp = out / (PARTIAL + ".tmp")
    tmp.write_text(json.dumps(_jsonable(summary), indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / PARTIAL)


def write_outputs(summary, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTIAL).unlink(missing_ok=True)
    charts = write_charts(summary, out)
    summary["files"] = {"json": "results.json", "report": "report.md",
                        **{k: p.name for k, p in charts.items()}}
    (out / "results.json").write_text(json.dumps(_jsonable(summary), indent=2) + "\n",
                                      encoding="utf-8")
    write_report(summary, out, charts)
    return out


def main(argv=None):
    from .datasets import ImdbFormatError, ImdbNotFoundError

    args = resolve_config(build_parser().parse_args(argv))
    progress = not args.no_progress
    try:
        summary = run(args, progress=progress)
    except (ImdbNotFoundError, ImdbFormatError) as exc:
        raise SystemExit(f"fastrnn-imdb: {exc}") from exc
    if summary is None:  # not rank 0 of a torchrun job: rank 0 reports
        return 0
    out = write_outputs(summary, args.out)
    print(format_table(summary))
    for note in accuracy_notes(summary):
        print(f"note: {note}")
    print(f"wrote {out / 'results.json'}, {out / 'report.md'} and charts in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
