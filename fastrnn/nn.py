"""Drop-in replacements for torch.nn.LSTM, GRU, RNN and their cells.

The sequence modules subclass ``torch.nn.RNNBase`` (not ``nn.LSTM`` etc.: torch.compile
refuses to trace subclasses of those), so parameter names, shapes, registration order,
default initialisation, attributes, ``extra_repr`` and (un)pickling are torch.nn's own.
Only ``forward`` differs: it runs ``fastrnn.functional``, i.e. the fastrnn ops and the
chosen backend; while traced (``torch.jit.trace``) or exported to ONNX it runs torch.nn's own
forward on the same parameters (the graph then holds the standard recurrent ops). Under
torch.func transforms the ops run as torch ops (grad, vjp, jvp, vmap work).
``flatten_parameters()`` is torch.nn's (on CUDA the cuDNN weight buffer, which the calls the
CUDA dispatch routes to cuDNN use; a no-op for PeepholeLSTM and on the CPU).

Extra, keyword-only: ``backend=None`` (None: the global default, see
``fastrnn.set_backend``; or "auto", "cpu", "cuda", "numba", "reference"). After each
eager forward, ``module.last_backend`` names the backend that ran.

Regularisation, keyword-only, all off (0.0) by default, and then nothing changes:
``zoneout``, ``recurrent_dropout`` and ``weight_drop`` on the layers, ``zoneout`` on the
cells (``fastrnn.regularized`` has the equations and the order of the random masks).
``weight_drop`` alone runs the backend's fused kernels on the masked W_hh; zoneout (training
and eval) and recurrent dropout (training) run the fused regularised CPU kernels where the
compiled kernels are chosen (``last_backend`` "cpu"; LSTM without projection, GRU, RNN),
else the step loop of ``fastrnn.regularized`` in torch ops ("torch-ops"); in eval recurrent
dropout and weight drop do nothing.
"""
import math

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import backends as _backends
from . import functional as F_
from . import regularized as R
from .backends import cuda_dispatch as _cuda_dispatch

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "PeepholeLSTM",
           "PeepholeLSTMCell"]


_onnx_flags = None


def _onnx_exporting():
    """Inside either ONNX exporter (``torch.onnx.is_in_onnx_export()``, read without its
    per-call imports: ~1.4 us, a visible share of a cell step)."""
    global _onnx_flags
    if _onnx_flags is None:
        try:
            from torch.onnx._internal.exporter import _flags
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
            _onnx_flags = lambda: GLOBALS.in_onnx_export or _flags._is_onnx_exporting  # noqa: E731
        except ImportError:  # another torch layout: the public (slower) call
            _onnx_flags = torch.onnx.is_in_onnx_export
    return _onnx_flags()


def _torch_native():
    """Whether this call is being traced (``torch.jit.trace``, the TorchScript ONNX exporter)
    or exported to ONNX: then torch.nn's own forward runs on the same parameters, so the
    graph holds torch's standard recurrent ops (ONNX RNN/LSTM/GRU, which every runtime
    knows). (Under torch.func transforms fastrnn's ops run as torch ops, which functorch
    differentiates and batches; torch.nn's layers have no vmap rule. Under torch.compile
    the public ONNX check, which Dynamo evaluates; the fast read is not traceable.)"""
    if torch.compiler.is_compiling():
        return torch.onnx.is_in_onnx_export()
    return torch.jit.is_tracing() or _onnx_exporting()


def _check_backend(backend):
    if backend is not None and backend != "auto" and backend not in _backends.BACKENDS:
        raise ValueError(f"backend must be None or one of {('auto',) + _backends.BACKENDS}, "
                         f"got {backend!r}")
    return backend


class _BackendMixin:
    backend = None
    last_backend = None
    last_dispatch = None  # on CUDA tensors: why fastrnn's kernels or torch's (cuDNN) ran
    _torch_class = None  # the torch.nn class this module replaces

    def _torch_kwargs(self):
        raise NotImplementedError

    def to_torch(self):
        """The torch.nn module with a copy of these parameters (same device, dtype and
        train/eval mode): for tools that need torch.nn's own class, e.g.
        ``torch.ao.quantization.quantize_dynamic`` or ``isinstance(m, nn.LSTM)`` checks
        (fastrnn's modules are not instances of it)."""
        p = next(self.parameters())
        mod = self._torch_class(**self._torch_kwargs(), device=p.device, dtype=p.dtype)
        mod.load_state_dict(self.state_dict())
        return mod.train(self.training)

    def __prepare_scriptable__(self):
        """``torch.jit.script`` scripts torch.nn's module holding these very parameters
        (shared, not copied): TorchScript cannot compile fastrnn's Python, and a scripted
        torch.nn layer behaves as scripting it always has (cells run; torch 2.13's scripted
        nn.LSTM/GRU/RNN have no usable forward)."""
        p = next(self.parameters())
        mod = self._torch_class(**self._torch_kwargs(), device="meta", dtype=p.dtype)
        for name, param in self.named_parameters(recurse=False):
            setattr(mod, name, param)
        return mod.train(self.training)

    @classmethod
    def from_torch(cls, module, *, backend=None):
        """The fastrnn module with a copy of ``module``'s parameters (a torch.nn module of
        the class this one replaces)."""
        if not isinstance(module, cls._torch_class):
            raise TypeError(f"{cls.__name__}.from_torch needs a torch.nn.{cls._torch_class.__name__}, "
                            f"got {type(module).__name__}")
        p = next(module.parameters())
        kwargs = cls._torch_kwargs(module)
        mod = cls(**kwargs, device=p.device, dtype=p.dtype, backend=backend)
        mod.load_state_dict(module.state_dict())
        return mod.train(module.training)

    def _record_backend(self):
        if not torch.compiler.is_compiling():
            # not through nn.Module.__setattr__ (~1 us, a visible share of a cell step)
            self.__dict__["last_backend"] = F_.last_backend()

    def _param(self, name):
        """A parameter by name; the dict lookup nn.Module.__getattr__ makes, without its
        ~0.5 us (falls back to getattr for parametrized or replaced weights)."""
        params = self._parameters
        return params[name] if name in params else getattr(self, name)

    def _backend_repr(self):
        return "" if self.backend is None else f", backend={self.backend!r}"


class _Zoneout:
    """The ``zoneout`` option (a probability; for a layer with a cell state also a pair
    (p_h, p_c)), checked whenever it is set. Class-level defaults: a module pickled before
    the options existed loads with them off."""
    _zoneout_arg = 0.0
    _zoneout_h = 0.0
    _zoneout_c = 0.0
    _zoneout_on = False
    _recurrent_dropout = 0.0
    _weight_drop = 0.0
    _reg_on = False  # any option on (read first in forward: the default path pays one check)
    _two_states = False  # has a cell state (LSTM)

    @property
    def zoneout(self):
        return self._zoneout_arg

    @zoneout.setter
    def zoneout(self, value):
        self._zoneout_h, self._zoneout_c = R.check_zoneout(value, self._two_states)
        self._zoneout_arg = tuple(value) if isinstance(value, (tuple, list)) else float(value)
        self._options_changed()

    def _options_changed(self):
        self._zoneout_on = bool(self._zoneout_h or self._zoneout_c)
        self._reg_on = bool(self._zoneout_on or self._recurrent_dropout or self._weight_drop)

    def _options_repr(self):
        s = ""
        for name in ("zoneout", "recurrent_dropout", "weight_drop"):
            value = getattr(self, name, 0.0)
            if value:
                s += f", {name}={value!r}"
        return s

    def _check_torch_counterpart(self):
        if self._zoneout_on:  # (recurrent dropout and weight drop act in training only)
            raise TypeError(f"{type(self).__name__} with zoneout has no torch.nn counterpart "
                            f"(its eval output mixes each state with the previous one)")

    def to_torch(self):
        """``_BackendMixin.to_torch``; recurrent_dropout and weight_drop, which act only in
        training, are not carried over; with zoneout it is an error."""
        self._check_torch_counterpart()
        return super().to_torch()

    def __prepare_scriptable__(self):
        self._check_torch_counterpart()
        return super().__prepare_scriptable__()

    def _zoneout_states(self, hx, out):
        """The states a cell's output mixes with: hx, or zeros when it was not given."""
        if hx is not None:
            return hx
        if self._two_states:
            return torch.zeros_like(out[0]), torch.zeros_like(out[1])
        return torch.zeros_like(out)

    def _zoneout_forward(self, input, hx):
        """A cell's step, then zoneout (``fastrnn.regularized.zoneout``; the h mask drawn
        first, then the c mask)."""
        if _torch_native():
            self.__dict__["last_backend"] = "torch"
            out = self._torch_class.forward(self, input, hx)
        else:
            out = self._cell_call(input, hx)
            self._record_backend()
        prev = self._zoneout_states(hx, out)
        train = self.training
        if self._two_states:
            return (R.zoneout(prev[0], out[0], self._zoneout_h, train),
                    R.zoneout(prev[1], out[1], self._zoneout_c, train))
        return R.zoneout(prev, out, self._zoneout_h, train)


class _Regularized(_Zoneout):
    """The layers' options: ``zoneout``, ``recurrent_dropout``, ``weight_drop``."""

    @property
    def recurrent_dropout(self):
        return self._recurrent_dropout

    @recurrent_dropout.setter
    def recurrent_dropout(self, value):
        self._recurrent_dropout = R.check_probability("recurrent_dropout", value)
        self._options_changed()

    @property
    def weight_drop(self):
        return self._weight_drop

    @weight_drop.setter
    def weight_drop(self, value):
        self._weight_drop = R.check_probability("weight_drop", value)
        self._options_changed()

    def _set_options(self, zoneout, recurrent_dropout, weight_drop):
        self.zoneout = zoneout
        self.recurrent_dropout = recurrent_dropout
        self.weight_drop = weight_drop

    def _regularized_forward(self, input, hx):
        """The forward with an option on (training, or eval with zoneout)."""
        weights = self._weights()
        train = self.training
        if train and self._weight_drop:
            # DropConnect as a masked W_hh (a torch mul): the fused kernels run it unchanged
            # and autograd takes W_hh's gradient through the mask
            weights = R.drop_weights(weights, len(self._all_weights[0]), self._weight_drop)
        if self._zoneout_on or (train and self._recurrent_dropout):
            result = R.rnn(self.mode, input, hx, weights, self.bias, self.num_layers,
                           self.dropout, train, self.bidirectional, self.batch_first,
                           self.proj_size, (self._zoneout_h, self._zoneout_c),
                           self._recurrent_dropout, self.backend)
            if not torch.compiler.is_compiling():
                self.__dict__["last_backend"] = R.last_path()
            return result
        result = F_.rnn(self.mode, input, hx, weights, self.bias, self.num_layers,
                        self.dropout, train, self.bidirectional, self.batch_first,
                        self.proj_size, self.backend)
        self._record_backend()
        return result


class _RNNBase(_BackendMixin, nn.RNNBase):
    _reg_on = False  # (the regularisation options: _Regularized)

    def flatten_parameters(self):
        """torch.nn's: on CUDA with cuDNN the parameters become views of one buffer in
        cuDNN's layout (a no-op on the CPU). fastrnn's kernels read the parameters as they
        are either way; the calls the CUDA dispatch routes to cuDNN need the buffer, or
        cuDNN copies every weight on every call (and torch warns that the weights are not
        one contiguous chunk)."""
        nn.RNNBase.flatten_parameters(self)

    def _torch_kwargs(self):
        kw = dict(input_size=self.input_size, hidden_size=self.hidden_size,
                  num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                  dropout=self.dropout, bidirectional=self.bidirectional)
        if self.mode == "LSTM":
            kw["proj_size"] = self.proj_size
        elif self.mode.startswith("RNN"):
            kw["nonlinearity"] = self.nonlinearity
        return kw

    def _weights(self):
        return [self._param(name) for name in self._flat_weights_names]

    def extra_repr(self):
        return super().extra_repr() + self._backend_repr() + (
            self._options_repr() if self._reg_on else "")

    def forward(self, input, hx=None):
        if self._reg_on and (self.training or self._zoneout_on):
            return self._regularized_forward(input, hx)
        mode = self.mode
        if _torch_native():
            self.__dict__["last_backend"] = "torch"
            return _TORCH_FORWARD[mode](self, input, hx)
        data = input.data if isinstance(input, PackedSequence) else input
        if isinstance(data, torch.Tensor) and _cuda_dispatch.applies(data):
            dtype = _cuda_dispatch.call_dtype(self._param(self._flat_weights_names[0]).dtype)
            packed = isinstance(input, PackedSequence)
            if _cuda_dispatch.routes_to_torch(mode, dtype, self.hidden_size, self.backend,
                                              packed):
                if not torch.compiler.is_compiling():
                    self.__dict__["last_backend"] = "cudnn"
                    self.__dict__["last_dispatch"] = _cuda_dispatch.choose(
                        mode, dtype, self.hidden_size, packed)[1]
                return _TORCH_FORWARD[mode](self, input, hx)
            if not torch.compiler.is_compiling():
                self.__dict__["last_dispatch"] = _cuda_dispatch.choose(
                    mode, dtype, self.hidden_size, packed)[1]
        result = F_.rnn(mode, input, hx, self._weights(), self.bias, self.num_layers,
                        self.dropout, self.training, self.bidirectional, self.batch_first,
                        self.proj_size, self.backend)
        self._record_backend()
        return result


_TORCH_FORWARD = {"LSTM": nn.LSTM.forward, "GRU": nn.GRU.forward, "RNN_TANH": nn.RNN.forward,
                  "RNN_RELU": nn.RNN.forward}


class _LSTMBase(_RNNBase):
    """nn.LSTM's constructor and state checks, for LSTM and PeepholeLSTM."""

    # nn.LSTM's own argument checks for its (h_0, c_0) state, which nn.LSTM.forward calls
    # (it runs while traced or exported)
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 backend=None, **kwargs):
        _check_backend(backend)
        # (other keywords: nn.RNNBase's own TypeError, as torch.nn raises it)
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device, dtype, **kwargs)
        self.backend = backend


def _no_proj_size(kwargs):
    """torch.nn's GRU and RNN refuse proj_size with a ValueError (other keywords reach
    nn.RNNBase, whose TypeError names them)."""
    if "proj_size" in kwargs:
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")


class LSTM(_Regularized, _LSTMBase):
    """Drop-in for ``torch.nn.LSTM`` (same arguments, parameters and outputs). Keyword-only
    ``zoneout`` (a float, or a pair (p_h, p_c) for h and the cell state),
    ``recurrent_dropout``, ``weight_drop``: see the module docstring."""

    _torch_class = nn.LSTM
    _two_states = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 backend=None, zoneout=0.0, recurrent_dropout=0.0, weight_drop=0.0,
                 **kwargs):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, backend=backend, **kwargs)
        self._set_options(zoneout, recurrent_dropout, weight_drop)


class GRU(_Regularized, _RNNBase):
    """Drop-in for ``torch.nn.GRU`` (same arguments, parameters and outputs). Keyword-only
    ``zoneout``, ``recurrent_dropout``, ``weight_drop``: see the module docstring."""

    _torch_class = nn.GRU

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend=None,
                 zoneout=0.0, recurrent_dropout=0.0, weight_drop=0.0, **kwargs):
        _check_backend(backend)
        _no_proj_size(kwargs)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype, **kwargs)
        self.backend = backend
        self._set_options(zoneout, recurrent_dropout, weight_drop)


class RNN(_Regularized, _RNNBase):
    """Drop-in for ``torch.nn.RNN`` (same arguments, parameters and outputs). Keyword-only
    ``zoneout``, ``recurrent_dropout``, ``weight_drop``: see the module docstring."""

    _torch_class = nn.RNN

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None,
                 *, backend=None, zoneout=0.0, recurrent_dropout=0.0, weight_drop=0.0,
                 **kwargs):
        _check_backend(backend)
        _no_proj_size(kwargs)
        if nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(
                f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype, **kwargs)
        self.backend = backend
        self._set_options(zoneout, recurrent_dropout, weight_drop)


class PeepholeLSTM(_LSTMBase):
    r"""LSTM with diagonal peephole connections (Gers, Schraudolph and Schmidhuber, 2002;
    the ONNX ``LSTM`` operator's ``P``): the input and forget gates see the previous cell
    state, the output gate the new one::

        i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi + p_i * c_{t-1})
        f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf + p_f * c_{t-1})
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        c_t = f_t * c_{t-1} + i_t * g_t
        o_t = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho + p_o * c_t)
        h_t = o_t * tanh(c_t)            (then W_hr h_t when proj_size > 0)

    ``*`` is elementwise. Arguments, parameters, inputs and outputs are ``torch.nn.LSTM``'s,
    plus one parameter per layer and direction: ``weight_ch_l{k}`` (``_reverse`` for the
    reverse direction), shape ``[3 * hidden_size]``, holding ``p_i, p_f, p_o`` in that
    order, initialised like the other weights (uniform in +-1/sqrt(hidden_size)). With the
    peephole weights at zero it is ``torch.nn.LSTM``: ``from_torch(lstm)`` copies an
    ``nn.LSTM``'s parameters and zeroes the peepholes.

    Backends: every one: cpu, numba and cuda (the fused kernels, peephole terms in their step
    epilogues), reference. Exported to ONNX (either
    exporter) it becomes the standard ``LSTM`` operator with ``P`` (no proj_size there);
    traced, the trace records fastrnn's op; under torch.func it runs as torch ops.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 backend=None, **kwargs):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, backend=backend, **kwargs)
        bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0
        D = 2 if bidirectional else 1
        for layer in range(num_layers):
            for d in range(D):
                name = f"weight_ch_l{layer}{'_reverse' if d else ''}"
                w = nn.Parameter(torch.empty(3 * hidden_size, device=device, dtype=dtype))
                nn.init.uniform_(w, -bound, bound)
                setattr(self, name, w)
                self._all_weights[layer * D + d].append(name)
        self._flat_weights_names = [n for names in self._all_weights for n in names]
        self._init_flat_weights()

    def flatten_parameters(self):
        """No-op: cuDNN has no peephole LSTM (never routed there), and its flat buffer has
        no place for the peephole weights."""

    def to_torch(self):
        raise TypeError("PeepholeLSTM has no torch.nn counterpart (torch.nn.LSTM has no "
                        "peepholes)")

    def __prepare_scriptable__(self):
        raise RuntimeError("torch.jit.script cannot compile PeepholeLSTM (fastrnn's Python); "
                           "use torch.jit.trace, torch.export or ONNX export")

    @classmethod
    def from_torch(cls, module, *, backend=None):
        """A PeepholeLSTM with a copy of ``module``'s parameters (a ``torch.nn.LSTM``) and
        zero peephole weights: the same function as ``module`` until trained."""
        if not isinstance(module, nn.LSTM):
            raise TypeError(f"PeepholeLSTM.from_torch needs a torch.nn.LSTM, got "
                            f"{type(module).__name__}")
        p = next(module.parameters())
        mod = cls(**_RNNBase._torch_kwargs(module), device=p.device, dtype=p.dtype, backend=backend)
        state = dict(module.state_dict())
        for name in mod._flat_weights_names:
            if name.startswith("weight_ch_"):
                state[name] = torch.zeros_like(getattr(mod, name))
        mod.load_state_dict(state)
        return mod.train(module.training)

    def forward(self, input, hx=None):
        backend = self.backend
        if torch.onnx.is_in_onnx_export() if torch.compiler.is_compiling() else _onnx_exporting():
            from . import _onnx
            self.__dict__["last_backend"] = "onnx"
            return _onnx.peephole_lstm(self, input, hx)
        result = F_.rnn("PEEPHOLE", input, hx, self._weights(), self.bias, self.num_layers,
                        self.dropout, self.training, self.bidirectional, self.batch_first,
                        self.proj_size, backend)
        self._record_backend()
        return result


# ----------------------------------------------------------------------------- cells

class LSTMCell(_Zoneout, _BackendMixin, nn.LSTMCell):
    """Drop-in for ``torch.nn.LSTMCell``; keyword-only ``zoneout`` (see the module
    docstring; a float or a pair (p_h, p_c))."""

    _torch_class = nn.LSTMCell
    _two_states = True

    def _torch_kwargs(self):
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias)

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend=None, zoneout=0.0):
        _check_backend(backend)
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.backend = backend
        self.zoneout = zoneout

    def extra_repr(self):
        return super().extra_repr() + self._backend_repr() + self._options_repr()

    def forward(self, input, hx=None):
        if self._zoneout_on:
            return self._zoneout_forward(input, hx)
        if _torch_native():
            self.__dict__["last_backend"] = "torch"
            return nn.LSTMCell.forward(self, input, hx)
        p = self._param
        out = F_.lstm_cell(input, hx, p("weight_ih"), p("weight_hh"), p("bias_ih"), p("bias_hh"),
                        self.backend)
        self._record_backend()
        return out

    def _cell_call(self, input, hx):
        p = self._param
        out = F_.lstm_cell(input, hx, p("weight_ih"), p("weight_hh"), p("bias_ih"), p("bias_hh"),
                        self.backend)
        return out


class GRUCell(_Zoneout, _BackendMixin, nn.GRUCell):
    """Drop-in for ``torch.nn.GRUCell``; keyword-only ``zoneout`` (see the module
    docstring)."""

    _torch_class = nn.GRUCell

    def _torch_kwargs(self):
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias)

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend=None, zoneout=0.0):
        _check_backend(backend)
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.backend = backend
        self.zoneout = zoneout

    def extra_repr(self):
        return super().extra_repr() + self._backend_repr() + self._options_repr()

    def forward(self, input, hx=None):
        if self._zoneout_on:
            return self._zoneout_forward(input, hx)
        if _torch_native():
            self.__dict__["last_backend"] = "torch"
            return nn.GRUCell.forward(self, input, hx)
        p = self._param
        out = F_.gru_cell(input, hx, p("weight_ih"), p("weight_hh"), p("bias_ih"), p("bias_hh"),
                        self.backend)
        self._record_backend()
        return out

    def _cell_call(self, input, hx):
        p = self._param
        out = F_.gru_cell(input, hx, p("weight_ih"), p("weight_hh"), p("bias_ih"), p("bias_hh"),
                        self.backend)
        return out


class RNNCell(_Zoneout, _BackendMixin, nn.RNNCell):
    """Drop-in for ``torch.nn.RNNCell``; keyword-only ``zoneout`` (see the module
    docstring)."""

    _torch_class = nn.RNNCell

    def _torch_kwargs(self):
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias,
                    nonlinearity=self.nonlinearity)

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype=None, *, backend=None, zoneout=0.0):
        _check_backend(backend)
        super().__init__(input_size, hidden_size, bias, nonlinearity, device, dtype)
        self.backend = backend
        self.zoneout = zoneout

    def extra_repr(self):
        return super().extra_repr() + self._backend_repr() + self._options_repr()

    def forward(self, input, hx=None):
        if self._zoneout_on:
            return self._zoneout_forward(input, hx)
        if _torch_native():
            self.__dict__["last_backend"] = "torch"
            return nn.RNNCell.forward(self, input, hx)
        p = self._param
        out = F_.rnn_cell(input, hx, p("weight_ih"), p("weight_hh"), p("bias_ih"), p("bias_hh"),
                          self.nonlinearity, self.backend)
        self._record_backend()
        return out

    def _cell_call(self, input, hx):
        p = self._param
        out = F_.rnn_cell(input, hx, p("weight_ih"), p("weight_hh"), p("bias_ih"), p("bias_hh"),
                          self.nonlinearity, self.backend)
        return out


class PeepholeLSTMCell(_BackendMixin, nn.RNNCellBase):
    """One step of :class:`PeepholeLSTM`: ``torch.nn.LSTMCell``'s arguments, parameters,
    inputs and outputs, plus ``weight_ch`` [3 * hidden_size] (p_i, p_f, p_o). Not an
    ``nn.LSTMCell`` (tools that replace those, e.g. ``quantize_dynamic``, would drop the
    peepholes)."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend=None):
        _check_backend(backend)
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device,
                         dtype=dtype)
        self.weight_ch = nn.Parameter(torch.empty(3 * hidden_size, device=device, dtype=dtype))
        bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0
        nn.init.uniform_(self.weight_ch, -bound, bound)
        self.backend = backend

    def to_torch(self):
        raise TypeError("PeepholeLSTMCell has no torch.nn counterpart")

    @classmethod
    def from_torch(cls, module, *, backend=None):
        """A PeepholeLSTMCell with a copy of an ``nn.LSTMCell``'s parameters and zero
        peephole weights."""
        if not isinstance(module, nn.LSTMCell):
            raise TypeError(f"PeepholeLSTMCell.from_torch needs a torch.nn.LSTMCell, got "
                            f"{type(module).__name__}")
        p = next(module.parameters())
        mod = cls(module.input_size, module.hidden_size, module.bias, device=p.device,
                  dtype=p.dtype, backend=backend)
        state = dict(module.state_dict(), weight_ch=torch.zeros_like(mod.weight_ch))
        mod.load_state_dict(state)
        return mod.train(module.training)

    def extra_repr(self):
        return super().extra_repr() + self._backend_repr()

    def forward(self, input, hx=None):
        native = _torch_native()
        p = self._param
        out = F_.peephole_lstm_cell(input, hx, p("weight_ih"), p("weight_hh"), p("weight_ch"),
                                    p("bias_ih"), p("bias_hh"),
                                    "reference" if native else self.backend)
        if native:
            self.__dict__["last_backend"] = "torch"
        else:
            self._record_backend()
        return out
