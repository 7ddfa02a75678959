"""fastrnn: fused CPU/CUDA kernels for Elman RNN, LSTM and GRU, drop-in for torch.nn, a
peephole LSTM, layer-normalised LSTM and GRU, zoneout, recurrent dropout and weight drop."""
__version__ = "0.1.0"

from .nn import (GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell,  # noqa: E402,F401
                 PeepholeLSTM, PeepholeLSTMCell)
from .layer_norm import (LayerNormGRU, LayerNormGRUCell, LayerNormLSTM,  # noqa: E402,F401
                         LayerNormLSTMCell)
from .backends import available_backends, set_backend  # noqa: E402,F401
from .info import info  # noqa: E402,F401
from . import functional  # noqa: E402,F401

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "PeepholeLSTM",
           "PeepholeLSTMCell", "LayerNormLSTM", "LayerNormGRU", "LayerNormLSTMCell",
           "LayerNormGRUCell",
           "available_backends", "set_backend", "functional", "info", "__version__"]
