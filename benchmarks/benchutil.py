"""Shared pieces of the benchmark suites: shapes, case ids, module builders, peers.

Not a test module (pytest collects only ``test_*.py``). ``conftest.py`` puts this folder
on ``sys.path`` so the suites can ``import benchutil`` under any import mode.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import torch

from speedup_table import case_flops

QUICK_ENV = "FASTRNN_BENCH_QUICK"
# Developing the suites before fastrnn's modules exist: FASTRNN_BENCH_STANDIN=1 makes the
# "fastrnn" side a torch.nn module (extra_info backend "torch-standin"). Never for results.
STANDIN_ENV = "FASTRNN_BENCH_STANDIN"

CELLS = ("rnn", "lstm", "gru")
DIRECTIONS = ("uni", "bi")
MODES = ("infer", "train")

# name -> (T, N, I, H). "imdb" is the shape of the IMDB task and of the project's CPU speed targets.
FULL_SHAPES = {
    "imdb": (500, 64, 100, 128),
    "n1": (500, 1, 100, 128),
    "n256": (500, 256, 100, 128),
    "h64": (500, 64, 100, 64),
    "h256": (500, 64, 100, 256),
    "h512": (500, 64, 100, 512),
    "fastrnns": (100, 64, 512, 512),  # PyTorch's benchmarks/fastrnns default
}
QUICK_T = 20
QUICK_SHAPES = ("imdb", "n1")


def is_quick(config):
    env = os.environ.get(QUICK_ENV, "").strip().lower()
    return bool(config.getoption("--quick")) or env not in ("", "0", "false", "no")


def selected_shapes(config):
    """Ordered {name: (T, N, I, H)} for this session (quick mode shortens T)."""
    quick = is_quick(config)
    opt = config.getoption("--bench-shapes")
    names = [s.strip() for s in opt.split(",") if s.strip()] if opt else (
        list(QUICK_SHAPES) if quick else list(FULL_SHAPES))
    unknown = [n for n in names if n not in FULL_SHAPES]
    if unknown:
        raise ValueError(f"--bench-shapes: unknown {unknown}; known: {list(FULL_SHAPES)}")
    out = {}
    for n in names:
        T, N, I, H = FULL_SHAPES[n]
        out[n] = (min(T, QUICK_T) if quick else T, N, I, H)
    return out


def shape_id(T, N, I, H):
    return f"T{T}-N{N}-I{I}-H{H}"


def devices():
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    return devs


def sync_fn(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


# --------------------------------------------------------------------- availability ---
def _load_fastrnn():
    """(module, None) or (None, reason)."""
    if os.environ.get(STANDIN_ENV, "").strip() not in ("", "0"):
        return None, "stand-in"
    try:
        import fastrnn
    except Exception as exc:  # not built / not yet written: benchmarks skip, never error
        return None, f"import fastrnn failed: {type(exc).__name__}: {exc}"
    if not all(hasattr(fastrnn, n) for n in ("RNN", "LSTM", "GRU")):
        return None, "fastrnn has no RNN/LSTM/GRU modules yet"
    return fastrnn, None


FASTRNN, FASTRNN_MISSING = _load_fastrnn()
STANDIN = FASTRNN_MISSING == "stand-in"


def onnx_missing():
    """None when onnx + onnxruntime are importable, else the reason."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except Exception as exc:
        return f"onnxruntime peer needs `pip install onnx onnxruntime` (extra 'bench'): {exc}"
    return None


def impls_for(mode, device):
    """Implementations timed for a case, fastrnn first so it sits on top of its group.

    CPU inference adds onnxruntime and ``fastrnn_alone``: fastrnn timed like onnxruntime,
    back to back with nothing between its rounds (its ``fastrnn`` case has torch.nn run
    between rounds, which leaves caches and threads cold), so that the onnxruntime
    comparison sets like against like."""
    impls = ["fastrnn", "torch"]
    if mode == "infer" and device == "cpu":
        impls += ["onnxruntime", "fastrnn_alone"]
    return impls


def skip_reason(impl):
    if impl in ("fastrnn", "fastrnn_alone") and FASTRNN is None and not STANDIN:
        return FASTRNN_MISSING
    if impl in ("onnxruntime", "fastrnn_alone"):  # the latter only serves that comparison
        return onnx_missing()
    return None


# ------------------------------------------------------------------------ builders ---
TORCH_CLASSES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def torch_layer(cell, I, H, bidirectional, seed=0, **kwargs):
    """The torch.nn layer whose weights every implementation of a case shares."""
    torch.manual_seed(seed)
    return TORCH_CLASSES[cell](I, H, bidirectional=bidirectional, **kwargs)


def fastrnn_layer_from(ref, cell, backend=None):
    """A fastrnn layer with ``ref``'s constructor arguments and weights.

    Returns (module, backend name that runs on ``ref``'s device).
    """
    kwargs = dict(input_size=ref.input_size, hidden_size=ref.hidden_size,
                  num_layers=ref.num_layers, bias=ref.bias, batch_first=ref.batch_first,
                  dropout=ref.dropout, bidirectional=ref.bidirectional)
    if cell == "rnn":
        kwargs["nonlinearity"] = ref.nonlinearity
    device = next(ref.parameters()).device
    if STANDIN:
        mod = TORCH_CLASSES[cell](**kwargs)
        mod.load_state_dict(ref.state_dict())
        return mod.to(device), "torch-standin"
    cls = getattr(FASTRNN, cell.upper())
    if not backend and device.type == "cuda":
        # fastrnn's own kernels: `auto` would hand some shapes to cuDNN
        # (fastrnn.backends.cuda_dispatch) and time cuDNN against itself
        backend = "cuda"
    if backend:
        kwargs["backend"] = backend
    mod = cls(**kwargs)
    mod.load_state_dict(ref.state_dict())
    mod = mod.to(device)
    return mod, resolved_backend(mod, device)


def resolved_backend(mod, device):
    """Name of the fastrnn backend that runs ``mod`` on ``device`` ("?" if unknown)."""
    if STANDIN or FASTRNN is None:
        return "torch-standin" if STANDIN else "?"
    try:
        from fastrnn import backends
        name = getattr(mod, "backend", None)
        return backends.resolve(name, torch.device(device).type)
    except Exception as exc:  # the module layer may spell this differently
        return f"? ({type(exc).__name__})"


def torch_backend_name(cell, device):
    if torch.device(device).type == "cuda":
        return "cudnn" if torch.backends.cudnn.is_available() else "aten-cuda"
    if cell == "lstm" and torch.backends.mkldnn.is_available():
        return "onednn"
    return "aten"


def unwrap_output(out):
    """The sequence output of an RNN module's (output, state) pair."""
    return out[0] if isinstance(out, tuple) else out


# ------------------------------------------------------------------- onnxruntime ---
class _SequenceOnly(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


def ort_session(ref, x, threads=None):
    """Export ``ref`` (a CPU torch.nn RNN/LSTM/GRU) with the TorchScript exporter to ONNX's
    native RNN/LSTM/GRU op and open an onnxruntime session on it.

    Returns (callable running the session on ``x``, onnxruntime version).
    """
    import onnxruntime as ort

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_SequenceOnly(ref).eval(), (x,), buf, dynamo=False,
                          input_names=["x"], output_names=["y"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    feed = {"x": x.detach().cpu().numpy()}

    def run():
        return sess.run(None, feed)[0]

    return run, ort.__version__


# ------------------------------------------------------------------------- record ---
@dataclass
class Case:
    kind: str        # "layer" or "imdb-model"
    cell: str
    direction: str
    mode: str
    device: str
    shape: tuple     # (T, N, I, H)
    impl: str
    dtype: str = "float32"

    @property
    def bidirectional(self):
        return self.direction == "bi"

    @property
    def group(self):
        prefix = "imdb-" if self.kind == "imdb-model" else ""
        return f"{prefix}{self.cell}-{self.direction}-{self.mode}-{self.device}-{shape_id(*self.shape)}"

    @property
    def id(self):
        return f"{self.cell}-{self.direction}-{self.mode}-{self.device}-{shape_id(*self.shape)}-{self.impl}"

    def extra_info(self, backend):
        T, N, I, H = self.shape
        return {
            "kind": self.kind, "impl": self.impl, "cell": self.cell,
            "direction": self.direction, "mode": self.mode, "device": self.device,
            "dtype": self.dtype, "shape": shape_id(*self.shape),
            "T": T, "N": N, "I": I, "H": H, "layers": 1,
            "threads": torch.get_num_threads(), "backend": backend,
            "flops": case_flops(self.cell, T, N, I, H, self.bidirectional, self.mode),
        }


def cases(config, kind):
    """Every case of a suite, in the order they run (fastrnn next to its peers).

    Layer cases cover the selected shapes; IMDB-model cases the IMDB shape only
    (T shortened in quick mode)."""
    if kind == "layer":
        shapes = list(selected_shapes(config).values())
    else:
        T, N, I, H = FULL_SHAPES["imdb"]
        shapes = [(min(T, QUICK_T) if is_quick(config) else T, N, I, H)]
    out = []
    for device in devices():
        for shape in shapes:
            for cell in CELLS:
                for direction in DIRECTIONS:
                    for mode in MODES:
                        impls = impls_for(mode, device) if kind == "layer" else ["fastrnn", "torch"]
                        for impl in impls:
                            out.append(Case(kind, cell, direction, mode, device, shape, impl))
    return out


def run_benchmark(benchmark, fn, record, backend, warmup=1):
    """Time ``fn`` with pytest-benchmark after untimed warm-up calls (JIT compilation,
    thread-pool start, allocator and cuDNN plan caches).

    ``record(name)`` stores extra_info; ``backend`` is the backend's name or a callable
    returning it, asked after the warm-up (fastrnn modules know which ran only then).
    """
    if not getattr(benchmark, "disabled", False):
        for _ in range(warmup):
            fn()
    record(backend() if callable(backend) else backend)
    return benchmark(fn)


def run_paired(benchmark, fn, peers, record, backend, warmup=1, settle=0.0):
    """Time ``fn`` (fastrnn) with its ``peers`` ({impl: fn}) run between its rounds.

    Each round first runs every peer once, timed here (pytest-benchmark's untimed
    ``setup``), then ``fn``, timed by pytest-benchmark. The per-round times go into
    ``extra_info["paired"]`` so the speedup can be the median of per-round ratios, which
    load drift on a shared machine hardly moves (it shifts both sides of a round alike).
    Rounds: ``--benchmark-min-rounds`` at least, more while ``--benchmark-max-time``
    allows, from the warm-up's time of one round.

    ``settle`` (seconds): before each timed call of either side, sleep that long and make
    one untimed call, so that neither side is timed while the other's worker threads still
    spin or its caches are cold (onnxruntime's threads spin after every run by default).
    """
    import time

    if getattr(benchmark, "disabled", False):
        record(backend() if callable(backend) else backend)
        return benchmark(fn)
    t0 = time.perf_counter()
    for _ in range(warmup):
        for peer in peers.values():
            peer()
        fn()
    per_round = (time.perf_counter() - t0) / max(warmup, 1)
    if settle:  # the pauses and the untimed calls of every round
        per_round = 2 * per_round + settle * (len(peers) + 1)
    record(backend() if callable(backend) else backend)
    min_rounds = int(getattr(benchmark, "_min_rounds", 5))  # pytest-benchmark's settings
    max_time = float(getattr(benchmark, "_max_time", 1.0))
    rounds = max(min_rounds, min(200, int(max_time / max(per_round, 1e-9))))
    peer_times = {name: [] for name in peers}

    def setup():
        for name, peer in peers.items():
            if settle:
                time.sleep(settle)
                peer()
            t = time.perf_counter()
            peer()
            peer_times[name].append(time.perf_counter() - t)
        if settle:
            time.sleep(settle)
            fn()

    result = benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
    fast = list(benchmark.stats.stats.data) if getattr(benchmark, "stats", None) else []
    benchmark.extra_info["paired"] = {"fastrnn": fast, **peer_times}
    return result


def fastrnn_last_backend(mod, fallback):
    """A callable naming the backend the fastrnn module ran last (``module.last_backend``)."""
    def get():
        return getattr(mod, "last_backend", None) or fallback
    return get
