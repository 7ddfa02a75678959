"""Review text -> words -> frequency ranks.

Tokenisation (``TOKENIZER_VERSION`` is part of every cache key; bump it on any change):

1. HTML line breaks (``<br />``, ``<br/>``, ``<br>``, any case) and any other HTML tag
   (``<`` + optional ``/`` + a letter, up to the next ``>``) become a space; HTML character references
   (``&amp;``, ``&#39;``, ...) are unescaped.
2. The text is lower-cased (``str.lower``, Unicode aware).
3. Words are maximal runs of Unicode letters and digits, optionally joined by single
   apostrophes inside the word: ``"Don't"`` -> ``don't``, ``"it's"`` -> ``it's``,
   ``"'quoted'"`` -> ``quoted``, ``"well-made"`` -> ``well``, ``made``, ``"10/10"`` ->
   ``10``, ``10``, ``"café"`` -> ``café``. Everything else (punctuation, symbols,
   underscores, whitespace) separates words and is dropped.

Vocabulary: words ranked by their count in the *training* reviews, most frequent first,
ties broken alphabetically; rank 1 is the most frequent word (Keras's convention; 0 is
left for padding). Words seen only in test reviews get no rank and are skipped, as in
Keras's ``imdb.npz``.
"""
from __future__ import annotations

import html
import re
from collections import Counter

import numpy as np

__all__ = ["TOKENIZER_VERSION", "tokenize", "rank_words", "encode"]

TOKENIZER_VERSION = 1

_TAG = re.compile(r"</?[A-Za-z][^<>]{0,200}>")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize(text: str) -> list:
    """Split one review into lower-case words (see the module docstring)."""
    text = _TAG.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
    return _WORD.findall(text.lower())


def rank_words(token_lists) -> list:
    """Words of ``token_lists`` ordered by descending count, ties alphabetically."""
    counts = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    return sorted(counts, key=lambda w: (-counts[w], w))


def encode(token_lists, word_rank: dict):
    """Encode reviews as ranks: ``(flat int32 [total], offsets int64 [n + 1])``.

    Review ``i`` is ``flat[offsets[i]:offsets[i + 1]]``; unranked words are skipped.
    """
    lengths = np.zeros(len(token_lists) + 1, dtype=np.int64)
    chunks = []
    get = word_rank.get
    for i, tokens in enumerate(token_lists):
        ids = [r for r in map(get, tokens) if r is not None]
        lengths[i + 1] = len(ids)
        chunks.append(ids)
    offsets = np.cumsum(lengths)
    flat = np.fromiter((r for ids in chunks for r in ids), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets
