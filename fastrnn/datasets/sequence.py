"""Padding variable-length sequences into one array, with Keras's semantics.

``pad_sequences`` follows ``keras.utils.pad_sequences`` (documented behaviour):

* the result has shape ``(len(sequences), maxlen) + sample_shape``; ``maxlen=None`` means
  the length of the longest sequence; ``sample_shape`` is the shape of one element of the
  first non-empty sequence (``()`` for sequences of scalars) and every other sequence must
  agree with it;
* shorter sequences are padded with ``value`` at the start (``padding='pre'``, the default)
  or the end (``'post'``);
* longer ones lose their first (``truncating='pre'``, the default: the *last* ``maxlen``
  items are kept) or last (``'post'``) items;
* empty sequences become rows of ``value``;
* a string ``value`` needs ``dtype=object`` or a string dtype.

Where Keras has no defined result we choose one and say so: an empty list gives an array
of shape ``(0, maxlen or 0)`` (Keras fails on ``max([])``); ``maxlen=0`` gives rows of
width 0 (Keras would keep the whole sequence through ``s[-0:]`` and then fail); a negative
``maxlen`` and an unknown ``padding``/``truncating`` raise ``ValueError`` up front, even when
no sequence needed padding or truncating (Keras raises only when it meets one).
"""
from __future__ import annotations

import numpy as np

__all__ = ["pad_sequences"]

_SIDES = ("pre", "post")


def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre",
                  value=0.0):
    """Pad (and truncate) ``sequences`` to a ``(num_samples, maxlen)`` NumPy array.

    Args:
        sequences: a sized iterable of sequences (lists, tuples, 1-D or N-D arrays).
        maxlen: ``None`` (longest sequence) or a non-negative int.
        dtype: NumPy dtype of the result (``"int32"`` by default, ``object`` for strings).
        padding: ``"pre"`` or ``"post"``: where ``value`` is inserted.
        truncating: ``"pre"`` or ``"post"``: which end loses items beyond ``maxlen``.
        value: the padding value.

    Returns:
        ``np.ndarray`` of shape ``(len(sequences), maxlen) + sample_shape``.
    """
    if padding not in _SIDES:
        raise ValueError(f'Padding type "{padding}" not understood; use "pre" or "post"')
    if truncating not in _SIDES:
        raise ValueError(f'Truncating type "{truncating}" not understood; use "pre" or "post"')
    if not hasattr(sequences, "__len__"):
        raise ValueError("`sequences` must be iterable (a list of sequences)")
    if maxlen is not None:
        if isinstance(maxlen, bool) or int(maxlen) != maxlen:
            raise ValueError(f"`maxlen` must be None or a non-negative int, got {maxlen!r}")
        maxlen = int(maxlen)
        if maxlen < 0:
            raise ValueError(f"`maxlen` must be None or a non-negative int, got {maxlen}")

    dtype_obj = np.dtype(dtype)
    if isinstance(value, str) and dtype_obj != np.dtype(object) and dtype_obj.kind not in "US":
        raise ValueError(
            f"`dtype` {dtype} is not compatible with `value`'s type: {type(value)}\n"
            "You should set `dtype=object` for variable length strings.")

    lengths = []
    sample_shape = None
    for seq in sequences:
        try:
            n = len(seq)
        except TypeError as exc:
            raise ValueError(
                f"`sequences` must be a list of iterables. Found non-iterable: {seq!r}") from exc
        lengths.append(n)
        if sample_shape is None and n:
            sample_shape = np.asarray(seq, dtype=object if dtype_obj == object else None).shape[1:]
    if sample_shape is None:
        sample_shape = ()

    if maxlen is None:
        maxlen = max(lengths) if lengths else 0

    out = np.full((len(lengths), maxlen) + tuple(sample_shape), value, dtype=dtype_obj)
    if maxlen == 0:
        return out
    for row, (seq, n) in enumerate(zip(sequences, lengths)):
        if n == 0:
            continue
        if n > maxlen:
            seq = seq[n - maxlen:] if truncating == "pre" else seq[:maxlen]
        arr = np.asarray(seq, dtype=dtype_obj)
        if arr.shape[1:] != tuple(sample_shape):
            raise ValueError(
                f"Shape of sample {arr.shape[1:]} of sequence at position {row} is different "
                f"from expected shape {tuple(sample_shape)}")
        k = arr.shape[0]
        if padding == "post":
            out[row, :k] = arr
        else:
            out[row, maxlen - k:] = arr
    return out
