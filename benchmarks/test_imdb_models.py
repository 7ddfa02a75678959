"""IMDB task benchmarks: the six sentiment models, fastrnn vs torch.nn.

Each model is Embedding(10000, 100) -> RNN/LSTM/GRU (H=128, uni- or bidirectional) ->
Linear(D*H, 1) on the final hidden state, fed a batch of 64 reviews of 500 word ids (the
IMDB job's padded length). The models come from ``fastrnn.models.build_model`` (the IMDB
job's own builder) when it is there, else from the same network defined below; both
implementations share weights and the batch.

* infer: one batch forward under ``torch.inference_mode()``.
* train: one optimisation step: zero grads (set to None), forward, BCE-with-logits loss,
  backward, Adam step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import benchutil

BENCH_KIND = "imdb-model"
VOCAB, EMBED = 10000, 100


class _SentimentRNN(torch.nn.Module):
    """Fallback of fastrnn.models.SentimentRNN: ``[N, T]`` ids -> ``[N]`` logits."""

    def __init__(self, rnn):
        super().__init__()
        self.embedding = torch.nn.Embedding(VOCAB, EMBED, padding_idx=0)
        self.rnn = rnn
        self.classifier = torch.nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 1)

    def forward(self, ids):
        _, h = self.rnn(self.embedding(ids.t()))
        h = h[0] if isinstance(h, tuple) else h
        feat = torch.cat([h[-2], h[-1]], dim=1) if self.rnn.bidirectional else h[-1]
        return self.classifier(feat).squeeze(1)


def _builder():
    if benchutil.STANDIN or benchutil.FASTRNN is None:
        return None
    try:
        from fastrnn.models import build_model
    except ImportError:
        return None
    return build_model


def _model(case, backend):
    """(model for case.impl, backend name or callable); same weights for both impls."""
    T, N, I, H = case.shape
    if not backend and case.device == "cuda":
        backend = "cuda"  # fastrnn's own kernels, never the cuDNN dispatch (cuda_dispatch)
    build_model = _builder()
    name = ("bi" if case.bidirectional else "") + case.cell
    if build_model is not None:
        model = build_model(name, case.impl, seed=0, vocab_size=VOCAB, embed_dim=I,
                            hidden_size=H, backend=backend if case.impl == "fastrnn" else None)
    else:
        ref_rnn = benchutil.torch_layer(case.cell, I, H, case.bidirectional)
        torch.manual_seed(2)
        model = _SentimentRNN(ref_rnn)
        if case.impl == "fastrnn":
            fast_rnn, _ = benchutil.fastrnn_layer_from(ref_rnn, case.cell, backend)
            ref_state = model.state_dict()
            model = _SentimentRNN(fast_rnn)
            model.load_state_dict(ref_state)
    model = model.to(case.device)
    if case.impl == "torch":
        return model, benchutil.torch_backend_name(case.cell, case.device)
    return model, benchutil.fastrnn_last_backend(
        model.rnn, benchutil.resolved_backend(model.rnn, case.device))


def _model_step(model, ids, labels, mode, sync):
    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode():
                model(ids)
            sync()
        return step
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(ids), labels).backward()
        opt.step()
        sync()
    return step


def test_imdb_model(benchmark, case, case_setup, fastrnn_backend, paired):
    T, N, I, H = case.shape
    model, backend = _model(case, fastrnn_backend)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (N, T), generator=gen).to(case.device)
    labels = torch.randint(0, 2, (N,), generator=gen).float().to(case.device)
    sync = benchutil.sync_fn(case.device)
    warmup = 2 if case.device == "cuda" else 1
    step = _model_step(model, ids, labels, case.mode, sync)
    if case.impl == "fastrnn" and paired:
        peer, _ = _model(benchutil.Case(**{**case.__dict__, "impl": "torch"}), None)
        peers = {"torch": _model_step(peer, ids, labels, case.mode, sync)}
        benchutil.run_paired(benchmark, step, peers, case_setup, backend, warmup)
    else:
        benchutil.run_benchmark(benchmark, step, case_setup, backend, warmup)
