"""The IMDB models in Keras 3, as the assignment writes them, with the torch models' weights.

``build_keras_model(torch_model)`` returns a Keras model computing what
``fastrnn.models.SentimentRNN`` computes, from a copy of its weights:
Embedding(V, E) -> SimpleRNN / LSTM / GRU(reset_after=True), or Bidirectional of one
-> Dense(1) (logits). Keras's own layers; only the weights and two details of the torch
model are carried over, so that both frameworks train the same network:

* the weights, in Keras's layouts: ``kernel = W_ih^T``, ``recurrent_kernel = W_hh^T``; the
  LSTM's single ``bias = b_ih + b_hh`` (gate order i, f, g(c), o in both); the GRU's
  columns reordered from torch's r, z, n to Keras's z, r, h, its ``bias`` [2, 3H] the input
  and the recurrent bias (reset_after=True is torch's GRU: the reset gate multiplies the
  recurrent product including its bias); Dense ``kernel = W^T``;
* the padding word's embedding stays zero (torch's ``padding_idx=0``: a constraint resets
  row 0 after every update);
* bidirectional: the reverse direction is read at the review's first word (the state after
  the review, not after the padding in front of it), as SentimentRNN does.

Keras is imported here only; ``keras_missing()`` says what to install without importing
it into a torch process for more than a check.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

KERAS_BACKENDS = ("tensorflow", "jax")


def keras_missing(backend=None):
    """None when Keras 3 (and ``backend``, if given) is installed, else what to install."""
    if importlib.util.find_spec("keras") is None:
        return "Keras is not installed: pip install 'fastrnn[keras]' (Keras 3 with TensorFlow and JAX)"
    if backend is not None and importlib.util.find_spec(backend) is None:
        return (f"the Keras backend {backend!r} is not installed: pip install "
                f"{'tensorflow' if backend == 'tensorflow' else 'jax'}")
    return None


def import_keras(backend):
    """Keras 3 on ``backend`` (set before the first import, as Keras requires)."""
    os.environ["KERAS_BACKEND"] = backend
    import keras
    if keras.backend.backend() != backend:
        raise RuntimeError(f"Keras was already imported with the {keras.backend.backend()!r} "
                           f"backend; start a new process for {backend!r}")
    return keras


def _np(t):
    return t.detach().cpu().float().numpy()


def _rnn_weights(kind, layer, suffix):
    """Keras's weights [kernel, recurrent_kernel, bias] for the torch layer's direction
    ``suffix`` ("_l0" or "_l0_reverse")."""
    w_ih, w_hh = _np(getattr(layer, "weight_ih" + suffix)), _np(getattr(layer, "weight_hh" + suffix))
    b_ih, b_hh = _np(getattr(layer, "bias_ih" + suffix)), _np(getattr(layer, "bias_hh" + suffix))
    if kind == "GRU":
        H = w_hh.shape[1]
        order = np.r_[H:2 * H, 0:H, 2 * H:3 * H]  # torch r, z, n -> Keras z, r, h
        return [w_ih[order].T.copy(), w_hh[order].T.copy(), np.stack([b_ih[order], b_hh[order]])]
    return [w_ih.T.copy(), w_hh.T.copy(), b_ih + b_hh]


def keras_weights(torch_model):
    """The arrays of a Keras model equal to ``torch_model`` (a SentimentRNN), by name:
    ``meta`` (kind code, bidirectional, H), ``embedding``, ``rnn{d}_{k}`` for direction d
    and Keras weight k, ``dense_kernel``, ``dense_bias``. Plain numpy: the Keras process
    builds its model from them without importing torch."""
    kind = torch_model.kind
    if not keras_supports(kind):
        raise ValueError(f"Keras has no {kind} layer")
    out = {"meta": np.array([("RNN", "LSTM", "GRU").index(kind),
                             int(torch_model.bidirectional), torch_model.rnn.hidden_size]),
           "embedding": _np(torch_model.embedding.weight),
           "dense_kernel": _np(torch_model.classifier.weight).T.copy(),
           "dense_bias": _np(torch_model.classifier.bias)}
    suffixes = ("_l0", "_l0_reverse") if torch_model.bidirectional else ("_l0",)
    for d, sfx in enumerate(suffixes):
        for k, w in enumerate(_rnn_weights(kind, torch_model.rnn, sfx)):
            out[f"rnn{d}_{k}"] = w
    return out


def _recurrent_layer(keras, kind, H, **kw):
    if kind == "RNN":
        return keras.layers.SimpleRNN(H, **kw)
    if kind == "LSTM":
        return keras.layers.LSTM(H, **kw)
    return keras.layers.GRU(H, reset_after=True, **kw)


def keras_supports(kind):
    """Whether Keras has a layer for this recurrent kind (not the peephole LSTM)."""
    return kind in ("RNN", "LSTM", "GRU")


def build_keras_model(keras, weights, maxlen):
    """The Keras model for ids [N, maxlen] with the arrays of ``keras_weights``."""
    code, bi, H = (int(v) for v in weights["meta"])
    kind = ("RNN", "LSTM", "GRU")[code]
    emb = weights["embedding"]
    V, E = emb.shape

    class ZeroPaddingRow(keras.constraints.Constraint):
        """Row 0 (the padding word) stays zero, as torch's padding_idx keeps it."""

        def __call__(self, w):
            keep = keras.ops.concatenate([keras.ops.zeros((1, 1), dtype=w.dtype),
                                          keras.ops.ones((V - 1, 1), dtype=w.dtype)])
            return w * keep

    ids = keras.Input(shape=(maxlen,), dtype="int32")
    embedding = keras.layers.Embedding(V, E, embeddings_constraint=ZeroPaddingRow())
    x = embedding(ids)
    if not bi:
        rnn = _recurrent_layer(keras, kind, H)
        features = rnn(x)
        directions = [rnn]
    else:
        fwd = _recurrent_layer(keras, kind, H, return_sequences=True)
        bwd = _recurrent_layer(keras, kind, H, return_sequences=True, go_backwards=True)
        rnn = keras.layers.Bidirectional(fwd, backward_layer=bwd)
        seq = rnn(x)  # [N, T, 2H], the backward half aligned with time
        # the reverse direction at each review's first word (pre-padded: T - words)
        words = keras.ops.sum(keras.ops.cast(keras.ops.not_equal(ids, 0), "int32"), axis=1)
        first = keras.ops.minimum(maxlen - words, maxlen - 1)
        reverse = keras.ops.take_along_axis(
            seq[:, :, H:], keras.ops.reshape(first, (-1, 1, 1)), axis=1)[:, 0, :]
        features = keras.ops.concatenate([seq[:, -1, :H], reverse], axis=1)
        directions = [rnn.forward_layer, rnn.backward_layer]
    dense = keras.layers.Dense(1)
    logits = keras.ops.squeeze(dense(features), axis=1)
    model = keras.Model(ids, logits)
    embedding.set_weights([emb])
    for d, layer in enumerate(directions):
        layer.set_weights([weights[f"rnn{d}_{k}"] for k in range(3)])
    dense.set_weights([weights["dense_kernel"], weights["dense_bias"]])
    return model
