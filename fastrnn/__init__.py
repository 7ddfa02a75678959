"""fastrnn: fused CPU/CUDA kernels for Elman RNN, LSTM and GRU, drop-in for torch.nn, and a
peephole LSTM."""
__version__ = "0.1.0"

from .nn import (GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell,  # noqa: E402,F401
                 PeepholeLSTM, PeepholeLSTMCell)
from .backends import available_backends, set_backend  # noqa: E402,F401
from .info import info  # noqa: E402,F401
from . import functional  # noqa: E402,F401

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "PeepholeLSTM",
           "PeepholeLSTMCell",
           "available_backends", "set_backend", "functional", "info", "__version__"]
