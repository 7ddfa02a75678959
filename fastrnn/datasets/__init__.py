"""Datasets for the examples: IMDB reviews (Keras-compatible API) and sequence padding."""
from . import imdb  # noqa: F401
from .download import cache_dir  # noqa: F401
from .imdb import ImdbFormatError, ImdbNotFoundError, get_word_index, load_data  # noqa: F401
from .sequence import pad_sequences  # noqa: F401

__all__ = ["imdb", "load_data", "get_word_index", "pad_sequences", "cache_dir",
           "ImdbNotFoundError", "ImdbFormatError"]
