"""The peephole LSTM: fastrnn.PeepholeLSTM against the step loop in torch ops a user writes
without fastrnn (``fastrnn.models.PeepholeLSTMLoop``; torch.nn has no peephole LSTM) and
against fastrnn.LSTM of the same size (the cost of the peepholes), in the same run (paired
rounds, per-round ratios).

Groups ``peephole-<uni|bi>-<infer|train>-cpu-<shape>`` for the shapes imdb and n1 (the
selected ones), and ``peepholecell-<infer|train>-cpu-N<n>-I100-H128``: 50 calls of the cell,
the state fed back (20 with autograd and one backward for train), against a cell written in
torch ops and fastrnn.LSTMCell. Each case first checks that fastrnn's outputs equal the
loop's. onnxruntime's peephole LSTM runs alone in its own process:
``python benchmarks/deployed.py --cases peephole-uni-N64,peephole-uni-N1``.
"""
from __future__ import annotations

import pytest
import torch

import benchutil

I, H = 100, 128
STEPS, TRAIN_STEPS = 50, 20


def _seq_cases(config):
    shapes = {k: v for k, v in benchutil.selected_shapes(config).items() if k in ("imdb", "n1")}
    return [(d, mode, name, shape) for name, shape in shapes.items()
            for d in ("uni", "bi") for mode in ("infer", "train")]


def pytest_generate_tests(metafunc):
    if "seq_case" in metafunc.fixturenames:
        cases = _seq_cases(metafunc.config)
        metafunc.parametrize("seq_case", cases, ids=[_seq_group(*c) for c in cases])


def _seq_group(direction, mode, _name, shape):
    return f"peephole-{direction}-{mode}-cpu-{benchutil.shape_id(*shape)}"


def _skip_without_fastrnn():
    reason = benchutil.skip_reason("fastrnn")
    if reason:
        pytest.skip(reason)


def _record(benchmark, cell, direction, mode, shape, N, steps=None):
    def record(backend):
        info = {"kind": "peephole", "impl": "fastrnn", "cell": cell, "direction": direction,
                "mode": mode, "device": "cpu", "dtype": "float32", "shape": shape,
                "threads": torch.get_num_threads(), "backend": backend, "N": N}
        if steps:
            info["steps"] = steps
        benchmark.extra_info.update(info)
    return record


def _layer_fn(mod, x, mode):
    params = list(mod.parameters())
    if mode == "infer":
        def run():
            with torch.inference_mode():
                return mod(x)[0]
        return run

    def run():
        for p in params:
            p.grad = None
        y, (h, c) = mod(x)
        (y.sum() + h.sum()).backward()
    return run


def test_peephole_layer(benchmark, seq_case, fastrnn_backend):
    _skip_without_fastrnn()
    direction, mode, _name, (T, N, I_, H_) = seq_case
    fr = benchutil.FASTRNN
    from fastrnn.models import PeepholeLSTMLoop

    bi = direction == "bi"
    torch.manual_seed(0)
    loop = PeepholeLSTMLoop(I_, H_, bidirectional=bi)
    kw = {"backend": fastrnn_backend} if fastrnn_backend else {}
    fast = fr.PeepholeLSTM(I_, H_, bidirectional=bi, **kw)
    fast.load_state_dict(loop.state_dict())
    lstm = fr.LSTM(I_, H_, bidirectional=bi, **kw)
    lstm.load_state_dict({k: v for k, v in loop.state_dict().items() if "weight_ch" not in k})
    x = torch.randn(T, N, I_, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # never time a wrong answer
        torch.testing.assert_close(fast(x)[0], loop(x)[0], atol=1e-4, rtol=1e-3)
    benchmark.group = _seq_group(*seq_case)
    benchutil.run_paired(benchmark, _layer_fn(fast, x, mode),
                         {"torch_loop": _layer_fn(loop, x, mode),
                          "fastrnn_lstm": _layer_fn(lstm, x, mode)},
                         _record(benchmark, "lstm", direction, mode,
                                 benchutil.shape_id(T, N, I_, H_), N),
                         benchutil.fastrnn_last_backend(fast, "?"))


class _TorchPeepholeCell(torch.nn.Module):
    """The peephole LSTM cell in torch ops, as a user writes it (PeepholeLSTMCell's
    parameters)."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x, state):
        h, c = state
        m = self.cell
        a = torch.nn.functional.linear(x, m.weight_ih, m.bias_ih) + \
            torch.nn.functional.linear(h, m.weight_hh, m.bias_hh)
        i, f, g, o = a.chunk(4, 1)
        p_i, p_f, p_o = m.weight_ch.chunk(3)
        i = torch.sigmoid(i + p_i * c)
        f = torch.sigmoid(f + p_f * c)
        c = f * c + i * torch.tanh(g)
        return torch.sigmoid(o + p_o * c) * torch.tanh(c), c


CELL_CASES = [("infer", 1), ("infer", 64), ("train", 1)]


def _cell_loop(cell, xs, state0, mode):
    params = list(cell.parameters())

    def loop():
        state, outs = state0, []
        for t in range(xs.shape[0]):
            state = cell(xs[t], state)
            outs.append(state[0])
        return torch.stack(outs)

    if mode == "infer":
        def run():
            with torch.inference_mode():
                return loop()
        return run

    def run():
        for p in params:
            p.grad = None
        loop().sum().backward()
    return run


@pytest.mark.parametrize("mode,n", CELL_CASES,
                         ids=[f"peepholecell-{m}-cpu-N{n}-I{I}-H{H}" for m, n in CELL_CASES])
def test_peephole_cell(benchmark, mode, n, fastrnn_backend):
    _skip_without_fastrnn()
    fr = benchutil.FASTRNN
    kw = {"backend": fastrnn_backend} if fastrnn_backend else {}
    torch.manual_seed(0)
    fast = fr.PeepholeLSTMCell(I, H, **kw)
    ours = _TorchPeepholeCell(fast)
    lstm = fr.LSTMCell(I, H, **kw)
    lstm.load_state_dict({k: v for k, v in fast.state_dict().items() if k != "weight_ch"})
    gen = torch.Generator().manual_seed(3)
    xs = torch.randn(STEPS if mode == "infer" else TRAIN_STEPS, n, I, generator=gen)
    state0 = (torch.randn(n, H, generator=gen), torch.randn(n, H, generator=gen))
    with torch.no_grad():
        torch.testing.assert_close(fast(xs[0], state0)[0], ours(xs[0], state0)[0],
                                   atol=1e-5, rtol=1e-4)
    benchmark.group = f"peepholecell-{mode}-cpu-N{n}-I{I}-H{H}"
    benchutil.run_paired(benchmark, _cell_loop(fast, xs, state0, mode),
                         {"torch_loop": _cell_loop(ours, xs, state0, mode),
                          "fastrnn_lstm": _cell_loop(lstm, xs, state0, mode)},
                         _record(benchmark, "peepholecell", "uni", mode, f"N{n}-I{I}-H{H}", n,
                                 xs.shape[0]),
                         benchutil.fastrnn_last_backend(fast, "?"))
