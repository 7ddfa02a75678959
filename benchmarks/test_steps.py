"""Step-by-step benchmarks: what decoders, samplers and streaming models do, fastrnn vs
torch.nn in the same run (paired rounds, per-round ratios).

One pytest-benchmark group per case, e.g. ``step-lstmcell-infer-cpu-N1-I100-H128``:
* ``<cell>cell`` infer: ``STEPS`` calls of the cell, the state fed back (a decoder's loop),
  under ``torch.inference_mode()``; train: ``TRAIN_STEPS`` calls with autograd on, then
  ``backward()`` of the sum of every step's output (gradients set to None before).
* ``<cell>-t1``: the layer (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``) called with one time step
  per call, the state fed back; infer and train as above.
* ``gru-decoder``: greedy decoding, N=1: embedding -> GRU (T=1) -> Linear -> argmax -> next
  token, ``STEPS`` steps (the model a seq2seq user swaps fastrnn into).
* ``<cell>-t20``: one inference call over T=20 at N=1.
Every implementation of a case uses the same weights and inputs; each fastrnn case first
checks that its outputs equal torch.nn's. Threads: ``--bench-threads`` (run once with 1 and
once with 2 for the full picture).
"""
from __future__ import annotations

import pytest
import torch

import benchutil

I, H = 100, 128
STEPS = 50
TRAIN_STEPS = 20
VOCAB = 1000


def _cases():
    out = []
    for cell in ("lstm", "gru", "rnn"):
        for n in (1, 64):
            out.append((f"{cell}cell", "infer", n))
        out.append((f"{cell}cell", "train", 1))
    for cell in ("lstm", "gru", "rnn"):
        out.append((f"{cell}-t1", "infer", 1))
        out.append((f"{cell}-t1", "train", 1))
    out.append(("gru-decoder", "infer", 1))
    for cell in ("lstm", "gru", "rnn"):
        out.append((f"{cell}-t20", "infer", 1))
    return out


CASES = _cases()


def _group(name, mode, n):
    return f"step-{name}-{mode}-cpu-N{n}-I{I}-H{H}"


class _Decoder(torch.nn.Module):
    """Greedy decoder: embedding -> GRU (one step) -> Linear -> argmax."""

    def __init__(self, gru):
        super().__init__()
        torch.manual_seed(1)
        self.emb = torch.nn.Embedding(VOCAB, I)
        self.gru = gru
        self.out = torch.nn.Linear(H, VOCAB)

    def forward(self, token, h, steps):
        tokens = []
        for _ in range(steps):
            y, h = self.gru(self.emb(token).unsqueeze(0), h)  # [1, N, H]
            token = self.out(y[0]).argmax(-1)
            tokens.append(token)
        return torch.stack(tokens), h


def _modules(name, fastrnn_backend):
    """(torch.nn module, fastrnn module with the same weights)."""
    fr = benchutil.FASTRNN
    kw = {} if not fastrnn_backend else {"backend": fastrnn_backend}
    base = name.split("-")[0]
    if base.endswith("cell"):
        cls = {"lstmcell": "LSTMCell", "grucell": "GRUCell", "rnncell": "RNNCell"}[base]
        torch.manual_seed(0)
        ref = getattr(torch.nn, cls)(I, H)
        fast = getattr(fr, cls)(I, H, **kw)
    else:
        cls = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[base]
        torch.manual_seed(0)
        ref = getattr(torch.nn, cls)(I, H)
        fast = getattr(fr, cls)(I, H, **kw)
    fast.load_state_dict(ref.state_dict())
    if name == "gru-decoder":
        ref, fast = _Decoder(ref), _Decoder(fast)
        fast.load_state_dict(ref.state_dict())
    return ref, fast


def _state(name, n):
    gen = torch.Generator().manual_seed(2)
    shape = (n, H) if "cell" in name else (1, n, H)
    h = torch.randn(*shape, generator=gen)
    if name.startswith("lstm"):
        return (h, torch.randn(*shape, generator=gen))
    return h


def _step_fn(mod, name, mode, n):
    """The timed function of one implementation, and one that returns its outputs."""
    gen = torch.Generator().manual_seed(3)
    is_lstm = name.startswith("lstm")
    if name == "gru-decoder":
        token = torch.zeros(n, dtype=torch.long)
        h0 = _state(name, n)

        def run():
            with torch.inference_mode():
                return mod(token, h0, STEPS)
        return run, run
    if name.endswith("-t20"):
        x = torch.randn(20, n, I, generator=gen)

        def run():
            with torch.inference_mode():
                return mod(x)
        return run, run
    cell = "cell" in name
    steps = STEPS if mode == "infer" else TRAIN_STEPS
    xs = torch.randn(steps, n, I, generator=gen)
    if not cell:
        xs = xs.unsqueeze(1)  # [steps, 1, n, I]: one time step per call
    state0 = _state(name, n)

    def loop():
        state, outs = state0, []
        for t in range(steps):
            if cell:
                state = mod(xs[t], state)
                outs.append(state[0] if is_lstm else state)
            else:
                y, state = mod(xs[t], state)
                outs.append(y)
        return torch.stack(outs), state

    if mode == "infer":
        def run():
            with torch.inference_mode():
                return loop()
        return run, run
    params = list(mod.parameters())

    def train():
        for p in params:
            p.grad = None
        out, _ = loop()
        out.sum().backward()

    def result():
        for p in params:
            p.grad = None
        out, _ = loop()
        out.sum().backward()
        return out.detach(), [p.grad.clone() for p in params]
    return train, result


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        if a.dtype == torch.long:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
        return
    assert len(a) == len(b)
    for x, y in zip(a, b):
        _assert_same(x, y)


@pytest.mark.parametrize("name,mode,n", CASES, ids=[_group(*c) for c in CASES])
def test_step(benchmark, name, mode, n, fastrnn_backend):
    reason = benchutil.skip_reason("fastrnn")
    if reason:
        pytest.skip(reason)
    benchmark.group = _group(name, mode, n)
    ref, fast = _modules(name, fastrnn_backend)
    fast_step, fast_result = _step_fn(fast, name, mode, n)
    ref_step, ref_result = _step_fn(ref, name, mode, n)
    _assert_same(fast_result(), ref_result())  # never time a wrong answer
    inner = fast.gru if name == "gru-decoder" else fast

    def record(backend):
        benchmark.extra_info.update({
            "kind": "step", "impl": "fastrnn", "cell": name, "direction": "uni",
            "mode": mode, "device": "cpu", "dtype": "float32",
            "shape": f"N{n}-I{I}-H{H}", "N": n, "I": I, "H": H,
            "steps": 20 if name.endswith("-t20") else (STEPS if mode == "infer" else TRAIN_STEPS),
            "threads": torch.get_num_threads(), "backend": backend})

    benchutil.run_paired(benchmark, fast_step, {"torch": ref_step}, record,
                         benchutil.fastrnn_last_backend(inner, "?"))
