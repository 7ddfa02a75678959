"""Layer-normalised LSTM and GRU (Ba, Kiros and Hinton 2016): ``LayerNormLSTM``,
``LayerNormGRU`` and their cells, with torch.nn's constructor, inputs and outputs.

The equations are in ``fastrnn.regularized`` (the loop that runs them, in torch ops).
Parameters per layer k (``_reverse`` appended for the reverse direction), G = 4H (LSTM) or
3H (GRU), gate order torch.nn's (LSTM i, f, g, o; GRU r, z, n)::

    weight_ih_l{k}      [G, input_size] (layer 0) or [G, D * H]   uniform(+-1/sqrt(H))
    weight_hh_l{k}      [G, H]                                      uniform(+-1/sqrt(H))
    ln_ih_weight_l{k}   [G]  gain of LN(W_ih x_t)                   1
    ln_ih_bias_l{k}     [G]  shift of LN(W_ih x_t)                  0 (LSTM: forget_bias on f)
    ln_hh_weight_l{k}   [G]  gain of LN(W_hh h_{t-1})               1
    ln_hh_bias_l{k}     [G]  shift of LN(W_hh h_{t-1})              0
    ln_c_weight_l{k}    [H]  gain of LN(c_t) (LSTM)                 1
    ln_c_bias_l{k}      [H]  shift of LN(c_t) (LSTM)                0

The shifts replace the layer's biases, so there is no ``bias_ih``/``bias_hh``: ``bias``
keeps its place in the constructor (torch.nn's positional order) and must be True. The
LSTM's keyword ``forget_bias=1.0`` is where the forget-gate part of ``ln_ih_bias`` starts
(a positive start keeps the cell state early in training, Jozefowicz et al. 2015;
``forget_bias=0.0`` gives every shift 0).

Options (keyword-only, off by default): ``zoneout`` (LSTM: a float or a pair (p_h, p_c)),
``recurrent_dropout``, ``weight_drop`` on the layers; ``zoneout`` on the cells (recurrent
dropout and weight drop keep one mask per sequence; a cell sees one step).

Inference (no gradient asked for, no masks drawn) runs a fused LayerNorm kernel where the
compiled CPU kernels are built (``last_backend`` "cpu"); training, the cells and other
devices run the step loop of ``fastrnn.regularized`` in torch ops ("torch-ops").
"""
import math
import numbers
import warnings

import torch
from torch import nn

from . import functional as F_
from . import regularized as R
from .nn import _Regularized, _Zoneout

__all__ = ["LayerNormLSTM", "LayerNormGRU", "LayerNormLSTMCell", "LayerNormGRUCell"]


def _param_shapes(gates, H, in_size, cell_norm):
    G = gates * H
    shapes = [("weight_ih", (G, in_size)), ("weight_hh", (G, H)), ("ln_ih_weight", (G,)),
              ("ln_ih_bias", (G,)), ("ln_hh_weight", (G,)), ("ln_hh_bias", (G,))]
    if cell_norm:
        shapes += [("ln_c_weight", (H,)), ("ln_c_bias", (H,))]
    return shapes


def _check_bias(cls, bias):
    if bias is not True:
        raise ValueError(f"{cls}: bias must be True: the LayerNorm shifts (ln_*_bias) replace "
                         f"the biases, got bias={bias!r}")


def _init(module, names, H, forget_bias):
    """torch.nn's uniform(+-1/sqrt(H)) for the weights, gains 1, shifts 0, the LSTM's
    forget-gate shift of ln_ih_bias ``forget_bias``."""
    stdv = 1.0 / math.sqrt(H) if H > 0 else 0
    with torch.no_grad():
        for name in names:
            w = getattr(module, name)
            if name.startswith("weight_"):
                nn.init.uniform_(w, -stdv, stdv)
            elif name.startswith(("ln_ih_weight", "ln_hh_weight", "ln_c_weight")):
                nn.init.ones_(w)
            else:
                nn.init.zeros_(w)
                if forget_bias and name.startswith("ln_ih_bias"):
                    w[H:2 * H] = forget_bias


class _LayerNormRNNBase(_Regularized, nn.Module):
    _kind = None
    _gates = None
    last_backend = None

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, zoneout=0.0,
                 recurrent_dropout=0.0, weight_drop=0.0, forget_bias=0.0):
        super().__init__()
        name = type(self).__name__
        # torch.nn.RNNBase's argument checks, in its words
        if (not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1
                or isinstance(dropout, bool)):
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             "probability of an element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, "
                          f"so non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}")
        if not isinstance(hidden_size, int):
            raise TypeError(f"hidden_size should be of type int, got: "
                            f"{type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        _check_bias(name, bias)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = True, batch_first, bidirectional
        self.dropout = float(dropout)
        self.proj_size = 0
        self.forget_bias = forget_bias
        D = 2 if bidirectional else 1
        factory = dict(device=device, dtype=dtype)
        self._all_weights = []
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else D * hidden_size
            for d in range(D):
                sfx = f"_l{layer}{'_reverse' if d else ''}"
                names = []
                for base, shape in _param_shapes(self._gates, hidden_size, in_size,
                                                 self._two_states):
                    setattr(self, base + sfx, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(base + sfx)
                self._all_weights.append(names)
        self._flat_weights_names = [n for names in self._all_weights for n in names]
        self.reset_parameters()
        self._set_options(zoneout, recurrent_dropout, weight_drop)

    def reset_parameters(self):
        _init(self, self._flat_weights_names, self.hidden_size, self.forget_bias)

    @property
    def all_weights(self):
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self._two_states and self.forget_bias != 1.0:
            s += f", forget_bias={self.forget_bias}"
        return s + self._options_repr()

    def to_torch(self):
        raise TypeError(f"{type(self).__name__} has no torch.nn counterpart")

    def __prepare_scriptable__(self):
        raise RuntimeError(f"torch.jit.script cannot compile {type(self).__name__} "
                           f"(fastrnn's Python); use torch.jit.trace or torch.compile")

    def forward(self, input, hx=None):
        params = self._parameters
        weights = [params[n] if n in params else getattr(self, n)
                   for n in self._flat_weights_names]
        train = self.training
        if train and self._weight_drop:
            weights = R.drop_weights(weights, len(self._all_weights[0]), self._weight_drop)
        result = R.rnn(self._kind, input, hx, weights, True, self.num_layers, self.dropout,
                       train, self.bidirectional, self.batch_first, 0,
                       (self._zoneout_h, self._zoneout_c), self._recurrent_dropout)
        if not torch.compiler.is_compiling():
            self.__dict__["last_backend"] = R.last_path()
        return result


class LayerNormLSTM(_LayerNormRNNBase):
    """Layer-normalised LSTM (see the module docstring): torch.nn.LSTM's arguments
    (``bias`` True only, no ``proj_size``), inputs and outputs; keyword-only ``zoneout``,
    ``recurrent_dropout``, ``weight_drop``, ``forget_bias=1.0``."""

    _kind = "LN_LSTM"
    _gates = 4
    _two_states = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, zoneout=0.0,
                 recurrent_dropout=0.0, weight_drop=0.0, forget_bias=1.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, zoneout=zoneout,
                         recurrent_dropout=recurrent_dropout, weight_drop=weight_drop,
                         forget_bias=forget_bias)


class LayerNormGRU(_LayerNormRNNBase):
    """Layer-normalised GRU (see the module docstring): torch.nn.GRU's arguments (``bias``
    True only), inputs and outputs; keyword-only ``zoneout``, ``recurrent_dropout``,
    ``weight_drop``."""

    _kind = "LN_GRU"
    _gates = 3

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, zoneout=0.0,
                 recurrent_dropout=0.0, weight_drop=0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, zoneout=zoneout,
                         recurrent_dropout=recurrent_dropout, weight_drop=weight_drop)


# ----------------------------------------------------------------------------- cells

class _LayerNormCellBase(_Zoneout, nn.Module):
    _gates = None
    last_backend = None

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 zoneout=0.0, forget_bias=0.0):
        super().__init__()
        _check_bias(type(self).__name__, bias)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, True
        self.forget_bias = forget_bias
        self._names = []
        for base, shape in _param_shapes(self._gates, hidden_size, input_size,
                                         self._two_states):
            setattr(self, base, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
            self._names.append(base)
        self.reset_parameters()
        self.zoneout = zoneout

    def reset_parameters(self):
        _init(self, self._names, self.hidden_size, self.forget_bias)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self._two_states and self.forget_bias != 1.0:
            s += f", forget_bias={self.forget_bias}"
        return s + self._options_repr()

    def to_torch(self):
        raise TypeError(f"{type(self).__name__} has no torch.nn counterpart")

    def _weights(self):
        params = self._parameters
        return [params[n] if n in params else getattr(self, n) for n in self._names]

    def _record(self):
        if not torch.compiler.is_compiling():
            self.__dict__["last_backend"] = F_.TORCH_OPS


class LayerNormLSTMCell(_LayerNormCellBase):
    """One step of :class:`LayerNormLSTM`: torch.nn.LSTMCell's arguments (``bias`` True
    only), inputs and outputs; parameters ``weight_ih``, ``weight_hh``, ``ln_ih_weight``,
    ``ln_ih_bias``, ``ln_hh_weight``, ``ln_hh_bias``, ``ln_c_weight``, ``ln_c_bias``;
    keyword-only ``zoneout`` (a float or a pair (p_h, p_c)), ``forget_bias=1.0``."""

    _gates = 4
    _two_states = True

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 zoneout=0.0, forget_bias=1.0):
        super().__init__(input_size, hidden_size, bias, device, dtype, zoneout=zoneout,
                         forget_bias=forget_bias)

    def forward(self, input, hx=None):
        out = R.layer_norm_lstm_cell(input, hx, self._weights(),
                                     (self._zoneout_h, self._zoneout_c), self.training)
        self._record()
        return out


class LayerNormGRUCell(_LayerNormCellBase):
    """One step of :class:`LayerNormGRU`: torch.nn.GRUCell's arguments (``bias`` True
    only), inputs and outputs; parameters ``weight_ih``, ``weight_hh``, ``ln_ih_weight``,
    ``ln_ih_bias``, ``ln_hh_weight``, ``ln_hh_bias``; keyword-only ``zoneout``."""

    _gates = 3

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 zoneout=0.0):
        super().__init__(input_size, hidden_size, bias, device, dtype, zoneout=zoneout)

    def forward(self, input, hx=None):
        out = R.layer_norm_gru_cell(input, hx, self._weights(), self._zoneout_h,
                                    self.training)
        self._record()
        return out
