"""Recurrent networks from the equations: RNN, LSTM and GRU cells, stacked layers, a char-level LM.

Everything here is written from the update equations with explicit loops over time, and uses the
same parameter names and layouts as `torch.nn` (`weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`,
`bias_hh_l{k}`; gate rows ordered i, f, g, o for the LSTM and r, z, n for the GRU), so
`load_state_dict(nn_module.state_dict(), strict=True)` works in both directions and the tests prove
the outputs, final states and gradients equal `nn.RNN`, `nn.LSTM` and `nn.GRU`.

- Elman (1990), "Finding structure in time": h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).
- Hochreiter & Schmidhuber (1997), "Long short-term memory", with the forget gate of
  Gers, Schmidhuber & Cummins (2000), "Learning to forget":
      i, f, o = σ(W_i[x, h] + b),  g = tanh(W_g[x, h] + b),  c_t = f ⊙ c_{t-1} + i ⊙ g,  h_t = o ⊙ tanh(c_t).
- Cho et al. (2014), "Learning phrase representations using RNN encoder-decoder":
      r, z = σ(W_r/z x + U_r/z h + b),  n = tanh(W_n x + b_in + r ⊙ (U_n h + b_hn)),  h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}.
  (torch.nn puts r inside the bracket with U_n h + b_hn; so do we, so the weights mean the same thing.)

Letter legend (shape comments):
    B  batch size                      T  time steps (sequence length)
    C  input features per step         H  hidden size
    L  stacked layers                  G  gate rows: H (RNN), 4H (LSTM: i, f, g, o), 3H (GRU: r, z, n)
    V  vocabulary size                 E  embedding size
Inputs are time-major (T, B, C) like torch.nn, or (B, T, C) with `batch_first=True`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "rnn_step", "lstm_step", "gru_step",
    "RNNCell", "LSTMCell", "GRUCell",
    "RNN", "LSTM", "GRU", "make_rnn",
    "CharRNNConfig", "CharRNN", "sample", "random_lm_batch", "evaluate_lm",
    "StatefulBatches", "detach_state", "evaluate_lm_stateful", "hidden_grad_norms",
]

RNN_KINDS = ("rnn", "lstm", "gru")


# ----------------------------------------------------------------------------------------------
# One time step of each recurrence, as plain functions of the weights (used by cells and layers).

def rnn_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None, nonlinearity: str = "tanh") -> Tensor:
    """Elman RNN step: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu.  x (B, C), h (B, H)."""
    pre = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, H)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def lstm_step(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
              b_hh: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """LSTM step (Hochreiter & Schmidhuber 1997; forget gate: Gers et al. 2000). Returns h', c', gates.

    gates = W_ih x + b_ih + W_hh h + b_hh, split in torch.nn's order i, f, g, o:
    i, f, o = sigmoid(.), g = tanh(.), c' = f * c + i * g, h' = o * tanh(c').
    """
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)  # 4 × (B, H)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g  # (B, H)
    h = o * torch.tanh(c)  # (B, H)
    return h, c, {"i": i, "f": f, "g": g, "o": o}


def gru_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """GRU step (Cho et al. 2014) in torch.nn's form and gate order r, z, n. Returns h', gates.

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr),  z = sigmoid(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h.
    """
    gi = F.linear(x, w_ih, b_ih)  # (B, 3H)
    gh = F.linear(h, w_hh, b_hh)  # (B, 3H)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)  # 3 × (B, H)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)  # 3 × (B, H)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    h = (1 - z) * n + z * h  # (B, H)
    return h, {"r": r, "z": z, "n": n}


# ----------------------------------------------------------------------------------------------
# Input checks shared by cells and layers: every error names what was expected and what came.

def _check_sizes(input_size: int, hidden_size: int) -> None:
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_nonlinearity(nonlinearity: str) -> None:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def _check_float(x: Tensor, who: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who} expects a floating-point input, got dtype {x.dtype}; token ids need an "
                        "embedding (nn.Embedding) or a one-hot encoding first")


def _check_state(h: Tensor, expected: tuple[int, ...], name: str, who: str, x: Tensor) -> None:
    if not isinstance(h, Tensor):
        raise TypeError(f"{who}: {name} must be a tensor of shape {expected}, got {type(h).__name__}")
    if tuple(h.shape) != expected:
        raise ValueError(f"{who}: {name} must have shape {expected}, got {tuple(h.shape)}")
    if h.dtype != x.dtype or h.device != x.device:
        raise ValueError(f"{who}: {name} is {h.dtype} on {h.device} but the input is {x.dtype} on "
                         f"{x.device}; move both to the same dtype and device")


# ----------------------------------------------------------------------------------------------
# Cells: one time step, parameters named like nn.RNNCell / nn.LSTMCell / nn.GRUCell.

class _Cell(nn.Module):
    gate_rows = 1  # how many H-sized blocks the weights stack: 1 (RNN), 4 (LSTM), 3 (GRU)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        _check_sizes(input_size, hidden_size)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        G = self.gate_rows * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))  # (gate_rows·H, C)
        self.weight_hh = nn.Parameter(torch.empty(G, hidden_size))  # (gate_rows·H, H)
        self.bias_ih = nn.Parameter(torch.empty(G)) if bias else None  # (gate_rows·H,)
        self.bias_hh = nn.Parameter(torch.empty(G)) if bias else None  # (gate_rows·H,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's initialisation: every parameter uniform in ±1/sqrt(H)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _check(self, x: Tensor) -> None:
        who = type(self).__name__
        _check_float(x, who)
        if x.dim() != 2:
            raise ValueError(f"{who} expects input of shape (B, C) = (batch, {self.input_size}), got "
                             f"{tuple(x.shape)}; for a whole sequence use {who.removesuffix('Cell')}")
        if x.shape[1] != self.input_size:
            raise ValueError(f"{who}: input size mismatch, expected C={self.input_size} features in the "
                             f"last dimension, got {x.shape[1]} (input shape {tuple(x.shape)})")
        if x.shape[0] == 0:
            raise ValueError(f"{who}: empty batch (B=0), input shape {tuple(x.shape)}")

    def _zeros(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.hidden_size)  # (B, H)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")


class RNNCell(_Cell):
    """Elman (1990) cell, h' = act(W_ih x + b_ih + W_hh h + b_hh); same parameters as nn.RNNCell."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh") -> None:
        _check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, bias)
        self.nonlinearity = nonlinearity

    def forward(self, x: Tensor, hx: Tensor | None = None) -> Tensor:
        """x (B, C), hx (B, H) or None for zeros → h' (B, H)."""
        self._check(x)
        h = self._zeros(x) if hx is None else hx
        _check_state(h, (x.shape[0], self.hidden_size), "hx", "RNNCell", x)
        return rnn_step(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity)


class LSTMCell(_Cell):
    """LSTM cell (Hochreiter & Schmidhuber 1997, forget gate Gers et al. 2000); same parameters as nn.LSTMCell."""

    gate_rows = 4

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None, return_gates: bool = False):
        """x (B, C), hx = (h, c) each (B, H) or None → (h', c'), plus the gates dict if `return_gates`."""
        self._check(x)
        h, c = (self._zeros(x), self._zeros(x)) if hx is None else hx
        for name, s in (("h", h), ("c", c)):
            _check_state(s, (x.shape[0], self.hidden_size), name, "LSTMCell", x)
        h, c, gates = lstm_step(x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return ((h, c), gates) if return_gates else (h, c)


class GRUCell(_Cell):
    """GRU cell (Cho et al. 2014); same parameters as nn.GRUCell (gate rows r, z, n)."""

    gate_rows = 3

    def forward(self, x: Tensor, hx: Tensor | None = None, return_gates: bool = False):
        """x (B, C), hx (B, H) or None → h' (B, H), plus the gates dict if `return_gates`."""
        self._check(x)
        h = self._zeros(x) if hx is None else hx
        _check_state(h, (x.shape[0], self.hidden_size), "hx", "GRUCell", x)
        h, gates = gru_step(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (h, gates) if return_gates else h


# ----------------------------------------------------------------------------------------------
# Stacked layers over a whole sequence, parameters named like nn.RNN / nn.LSTM / nn.GRU.

class _Recurrent(nn.Module):
    """L stacked recurrent layers unrolled over time. Layer k reads layer k-1's hidden states."""

    gate_rows = 1
    n_states = 1  # tensors in the recurrent state: h (RNN, GRU) or h and c (LSTM)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        _check_sizes(input_size, hidden_size)
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        G = self.gate_rows * hidden_size
        for k in range(num_layers):  # registered in torch.nn's order, so named_parameters() line up
            c_in = input_size if k == 0 else hidden_size
            setattr(self, f"weight_ih_l{k}", nn.Parameter(torch.empty(G, c_in)))  # (gate_rows·H, C or H)
            setattr(self, f"weight_hh_l{k}", nn.Parameter(torch.empty(G, hidden_size)))  # (gate_rows·H, H)
            if bias:
                setattr(self, f"bias_ih_l{k}", nn.Parameter(torch.empty(G)))  # (gate_rows·H,)
                setattr(self, f"bias_hh_l{k}", nn.Parameter(torch.empty(G)))  # (gate_rows·H,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's initialisation: every parameter uniform in ±1/sqrt(H)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def layer_weights(self, k: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(weight_ih, weight_hh, bias_ih, bias_hh) of layer k."""
        get = lambda name: getattr(self, f"{name}_l{k}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def _step(self, x: Tensor, state: tuple[Tensor, ...], k: int) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        raise NotImplementedError

    def _time_major(self, x: Tensor) -> Tensor:
        """Validate the input and return it as (T, B, C)."""
        who = type(self).__name__
        _check_float(x, who)
        layout = "(B, T, C)" if self.batch_first else "(T, B, C)"
        if x.dim() != 3:
            raise ValueError(f"{who} expects a 3-D input {layout} with C={self.input_size} "
                             f"(batch_first={self.batch_first}), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{who}: input size mismatch, expected C={self.input_size} features in the "
                             f"last dimension, got {x.shape[-1]} (input shape {tuple(x.shape)})")
        x = x.transpose(0, 1) if self.batch_first else x  # (T, B, C)
        T, B = x.shape[0], x.shape[1]
        if B == 0:
            raise ValueError(f"{who}: empty batch (B=0), input shape {tuple(x.shape)} in layout {layout}")
        if T == 0:
            raise ValueError(f"{who}: sequence length 0 (T=0), input shape {tuple(x.shape)} in layout "
                             f"{layout}; a recurrent layer needs at least one step")
        return x

    def _initial_state(self, hx, x: Tensor) -> tuple[Tensor, ...]:
        """Each state tensor as (L, B, H): zeros if hx is None, else hx checked."""
        who, B = type(self).__name__, x.shape[1]
        expected = (self.num_layers, B, self.hidden_size)
        if hx is None:
            return tuple(x.new_zeros(expected) for _ in range(self.n_states))  # each (L, B, H)
        states = (hx,) if self.n_states == 1 else tuple(hx)
        names = ("h_0",) if self.n_states == 1 else ("h_0", "c_0")
        if len(states) != self.n_states:
            raise ValueError(f"{who}: initial state must be (h_0, c_0), got {len(states)} tensors")
        for s, name in zip(states, names):
            _check_state(s, expected, name, who, x)
        return states

    def _unroll(self, x: Tensor, hx, return_gates: bool = False):
        """Run all layers over all steps. x (T, B, C) time-major.

        Returns the top layer's hidden states as a list of T tensors (B, H) (these are the graph nodes
        h_t themselves, which `hidden_grad_norms` differentiates against), the final states as a tuple
        of (L, B, H) tensors, and the top layer's gates stacked over time, each (T, B, H), or None.
        """
        states0 = self._initial_state(hx, x)  # each (L, B, H)
        layer_in, finals, gates_top = x, [], None
        for k in range(self.num_layers):
            state = tuple(s[k] for s in states0)  # each (B, H)
            hs, gates_seq = [], []
            for t in range(layer_in.shape[0]):
                state, gates = self._step(layer_in[t], state, k)  # each (B, H)
                hs.append(state[0])
                if return_gates and k == self.num_layers - 1:
                    gates_seq.append({**gates, **({"c": state[1]} if self.n_states == 2 else {})})
            finals.append(state)
            layer_in = torch.stack(hs)  # (T, B, H)
            if self.dropout > 0 and self.training and k < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, training=True)  # between layers only, like torch
        if return_gates:
            gates_top = {name: torch.stack([g[name] for g in gates_seq]) for name in gates_seq[0]}  # (T, B, H)
        final = tuple(torch.stack(s) for s in zip(*finals))  # each (L, B, H)
        return hs, final, gates_top

    def _run(self, x: Tensor, hx, return_gates: bool):
        x = self._time_major(x)  # (T, B, C)
        hs, final, gates = self._unroll(x, hx, return_gates)
        output = torch.stack(hs)  # (T, B, H)
        if self.batch_first:
            output = output.transpose(0, 1)  # (B, T, H)
            if gates is not None:
                gates = {name: g.transpose(0, 1) for name, g in gates.items()}  # each (B, T, H)
        return output, final, gates

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s


class RNN(_Recurrent):
    """Multi-layer Elman RNN (Elman 1990) with nn.RNN's parameters, arguments and return values."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0) -> None:
        _check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout)
        self.nonlinearity = nonlinearity

    def _step(self, x, state, k):
        return (rnn_step(x, state[0], *self.layer_weights(k), self.nonlinearity),), {}

    def forward(self, x: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (T, B, C) [(B, T, C) if batch_first], hx (L, B, H) or None → output (T, B, H), h_n (L, B, H)."""
        output, (h_n,), _ = self._run(x, hx, return_gates=False)
        return output, h_n

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.nonlinearity == "tanh" else ", nonlinearity='relu'")


class LSTM(_Recurrent):
    """Multi-layer LSTM (Hochreiter & Schmidhuber 1997; Gers et al. 2000) with nn.LSTM's parameters.

    Gate rows of every weight are stacked i, f, g, o, like torch.nn. Projections and
    bidirectionality are not implemented.
    """

    gate_rows, n_states = 4, 2

    def _step(self, x, state, k):
        h, c, gates = lstm_step(x, state[0], state[1], *self.layer_weights(k))
        return (h, c), gates

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None, return_gates: bool = False):
        """x (T, B, C) [(B, T, C) if batch_first], hx = (h_0, c_0) each (L, B, H) or None.

        Returns output (T, B, H), (h_n, c_n) each (L, B, H). With `return_gates=True` also a dict of the
        top layer's per-step activations 'i', 'f', 'g', 'o' and cell state 'c', each laid out like
        `output`: (T, B, H), or (B, T, H) with batch_first.
        """
        output, (h_n, c_n), gates = self._run(x, hx, return_gates)
        return (output, (h_n, c_n), gates) if return_gates else (output, (h_n, c_n))


class GRU(_Recurrent):
    """Multi-layer GRU (Cho et al. 2014) with nn.GRU's parameters (gate rows r, z, n)."""

    gate_rows = 3

    def _step(self, x, state, k):
        h, gates = gru_step(x, state[0], *self.layer_weights(k))
        return (h,), gates

    def forward(self, x: Tensor, hx: Tensor | None = None, return_gates: bool = False):
        """x (T, B, C) [(B, T, C) if batch_first], hx (L, B, H) or None → output (T, B, H), h_n (L, B, H).

        With `return_gates=True` also the top layer's 'r', 'z', 'n' per step, laid out like `output`.
        """
        output, (h_n,), gates = self._run(x, hx, return_gates)
        return (output, h_n, gates) if return_gates else (output, h_n)


_OURS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
_TORCH = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def make_rnn(kind: str, input_size: int, hidden_size: int, num_layers: int = 1, *, fused: bool = True,
             batch_first: bool = False, dropout: float = 0.0) -> nn.Module:
    """An 'rnn', 'lstm' or 'gru' layer stack: torch.nn's fused kernel if `fused`, else this module's loop.

    Both have identical parameters (names and shapes) and compute the same function.
    """
    if kind not in RNN_KINDS:
        raise ValueError(f"kind must be one of {RNN_KINDS}, got {kind!r}")
    cls = (_TORCH if fused else _OURS)[kind]
    return cls(input_size, hidden_size, num_layers=num_layers, batch_first=batch_first, dropout=dropout)


def _as_ours(rnn: nn.Module) -> _Recurrent:
    """This module's version of `rnn` (ours or torch.nn's), sharing the very same Parameter objects."""
    if isinstance(rnn, _Recurrent):
        return rnn
    kinds = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}
    kind = kinds.get(type(rnn))
    if kind is None:
        raise TypeError(f"expected an RNN, LSTM or GRU (torch.nn or utils.rnn), got {type(rnn).__name__}")
    if rnn.bidirectional or getattr(rnn, "proj_size", 0):
        raise ValueError("bidirectional RNNs and LSTM projections are not supported here")
    kwargs = {"nonlinearity": rnn.nonlinearity} if kind == "rnn" else {}
    with torch.device("meta"):  # no allocation: the parameters are replaced right below
        ours = _OURS[kind](rnn.input_size, rnn.hidden_size, num_layers=rnn.num_layers, bias=rnn.bias,
                           batch_first=rnn.batch_first, dropout=rnn.dropout, **kwargs)
    for name, p in rnn.named_parameters():
        setattr(ours, name, p)  # shared, so gradients reach the original module
    return ours.train(rnn.training)


# ----------------------------------------------------------------------------------------------
# Backpropagation through time, made visible.

def hidden_grad_norms(rnn: nn.Module, x: Tensor, hx=None,
                      loss_fn: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """‖∂loss/∂h_t‖ for every step t of the top layer: a (T,) tensor, the signal BPTT carries back.

    `rnn` is an RNN, LSTM or GRU (this module's or torch.nn's; a torch.nn module is unrolled by this
    module's loop with the same parameters). `loss_fn` maps the output (laid out like the module's
    output) to a scalar; the default is the sum of the last step's hidden state, so the gradient at
    step t has travelled T-1-t steps back. The norm is over the batch and the hidden units. The
    gradient is the total derivative through all later steps (Werbos 1990; Bengio et al. 1994 on why it
    vanishes or explodes with the recurrent weights' scale). Parameter gradients are not touched.
    """
    ours = _as_ours(rnn)
    xt = ours._time_major(x)  # (T, B, C)
    with torch.enable_grad():
        hs, _, _ = ours._unroll(xt, hx)  # T × (B, H), the graph nodes h_t
        output = torch.stack(hs)  # (T, B, H)
        if ours.batch_first:
            output = output.transpose(0, 1)  # (B, T, H)
        if loss_fn is None:
            loss = (output[:, -1] if ours.batch_first else output[-1]).sum()
        else:
            loss = loss_fn(output)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ValueError("loss_fn must return a scalar tensor")
        grads = torch.autograd.grad(loss, hs, allow_unused=True)
    return torch.stack([g.norm() if g is not None else hs[0].new_zeros(()) for g in grads]).detach()  # (T,)


# ----------------------------------------------------------------------------------------------
# A character-level language model (Karpathy's char-rnn, in PyTorch).

@dataclass
class CharRNNConfig:
    """Embedding → L recurrent layers → linear head over the V characters."""

    vocab_size: int
    kind: str = "lstm"  # 'rnn' | 'lstm' | 'gru'
    embed_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.0  # between recurrent layers, training only
    fused: bool = True  # torch.nn's fused kernel (fast); False: this module's loop (same weights)


class CharRNN(nn.Module):
    """Next-character model: logits for x_{t+1} from x_1..x_t (Karpathy 2015, "char-rnn").

    `rnn` is torch.nn's fused module or ours (`config.fused`); both have the same state_dict keys,
    so a model trained fused can be inspected with ours (see `gate_activations`).
    """

    def __init__(self, config: CharRNNConfig) -> None:
        super().__init__()
        if config.vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {config.vocab_size}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.rnn = make_rnn(config.kind, config.embed_dim, config.hidden_size, config.num_layers,
                            fused=config.fused, batch_first=True, dropout=config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def _check_ids(self, idx: Tensor) -> None:
        if not isinstance(idx, Tensor) or idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"CharRNN expects integer character ids (B, T), got "
                            f"{idx.dtype if isinstance(idx, Tensor) else type(idx).__name__}")
        if idx.dim() != 2:
            raise ValueError(f"CharRNN expects ids of shape (B, T), got {tuple(idx.shape)}")
        if idx.shape[0] == 0 or idx.shape[1] == 0:
            raise ValueError(f"CharRNN: empty input of shape {tuple(idx.shape)}; need B ≥ 1 and T ≥ 1")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"CharRNN: character id {hi if hi >= self.config.vocab_size else lo} is outside "
                             f"the vocabulary [0, {self.config.vocab_size})")

    def forward(self, idx: Tensor, state=None):
        """idx (B, T) ids, state from a previous call or None → logits (B, T, V), new state."""
        self._check_ids(idx)
        x = self.embed(idx)  # (B, T, E)
        out, state = self.rnn(x, state)  # (B, T, H)
        return self.head(out), state  # (B, T, V)

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy in nats per character of `targets` (B, T) given `idx` (B, T)."""
        logits, _ = self(idx)  # (B, T, V)
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def gate_activations(self, idx: Tensor) -> dict[str, Tensor]:
        """Per-character gate activations of the top layer for ids (T,) or (B, T).

        LSTM: 'i', 'f', 'g', 'o', 'c' (and 'h'); GRU: 'r', 'z', 'n' (and 'h'); each (B, T, H), or
        (T, H) for a single sequence. Computed by this module's from-scratch LSTM/GRU with the model's
        own weights (a fused torch.nn module cannot expose its gates).
        """
        with torch.no_grad():
            if self.config.kind == "rnn":
                raise ValueError("a plain RNN has no gates; use kind='lstm' or 'gru'")
            single = isinstance(idx, Tensor) and idx.dim() == 1
            idx = idx[None] if single else idx  # (B, T)
            self._check_ids(idx)
            out, _, gates = _as_ours(self.rnn)(self.embed(idx), return_gates=True)  # (B, T, H)
            gates = {**gates, "h": out}
            return {k: v[0] for k, v in gates.items()} if single else gates  # (T, H) or (B, T, H)


def sample(model: CharRNN, prompt: Tensor, num_chars: int, temperature: float = 1.0, top_k: int | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """Continue `prompt` ids (T0,) or (B, T0) by `num_chars` sampled characters.

    Each next character is drawn from softmax(logits / temperature), restricted to the `top_k` most
    likely if given; temperature 0 means greedy (argmax). Pass a seeded `torch.Generator` for
    reproducible samples. Returns (T0 + num_chars,) or (B, T0 + num_chars) ids, prompt included.
    """
    with torch.no_grad():
        if not isinstance(prompt, Tensor) or prompt.dim() not in (1, 2):
            raise ValueError("prompt must be a tensor of ids, shape (T0,) or (B, T0)")
        if prompt.shape[-1] == 0:
            raise ValueError("prompt is empty; give at least one character to condition on")
        if num_chars < 0:
            raise ValueError(f"num_chars must be ≥ 0, got {num_chars}")
        if temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {temperature}")
        V = model.config.vocab_size
        if top_k is not None and not 1 <= top_k <= V:
            raise ValueError(f"top_k must be in [1, {V}], got {top_k}")
        single = prompt.dim() == 1
        device = next(model.parameters()).device
        idx = (prompt[None] if single else prompt).to(device)  # (B, T0)
        was_training = model.training
        model.eval()
        try:
            out = [idx]
            logits, state = model(idx)  # (B, T0, V)
            for _ in range(num_chars):
                last = logits[:, -1].float()  # (B, V)
                if temperature == 0:
                    nxt = last.argmax(dim=-1, keepdim=True)  # (B, 1)
                else:
                    last = last / temperature
                    if top_k is not None:
                        kth = torch.topk(last, top_k, dim=-1).values[:, -1:]  # (B, 1)
                        last = last.masked_fill(last < kth, float("-inf"))
                    probs = F.softmax(last, dim=-1)  # (B, V)
                    if generator is not None and generator.device != probs.device:
                        probs = probs.to(generator.device)
                    nxt = torch.multinomial(probs, 1, generator=generator).to(device)  # (B, 1)
                out.append(nxt)
                logits, state = model(nxt, state)  # (B, 1, V)
        finally:
            model.train(was_training)
        ids = torch.cat(out, dim=1)  # (B, T0 + num_chars)
        return ids[0] if single else ids


def random_lm_batch(data: Tensor, batch_size: int, block_size: int,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """nanoGPT's `get_batch`: `batch_size` random windows of `data` (N,) → inputs, next-char targets, each (B, T)."""
    if data.dim() != 1 or len(data) < block_size + 1:
        raise ValueError(f"data must be a 1-D id tensor longer than block_size={block_size}, got shape "
                         f"{tuple(data.shape)}")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(block_size + 1)  # (T+1,)
    windows = data[starts[:, None] + offsets]  # (B, T+1)
    return windows[:, :-1], windows[:, 1:]  # (B, T), (B, T)


class StatefulBatches:
    """Batches for truncated BPTT with the state carried across batches ("stateful" training).

    `data` (N,) is cut into `batch_size` lanes of consecutive text, lane b starting at b·⌊(N-1)/B⌋; step s
    returns chunk s mod `chunks` of every lane: inputs x and next-token targets y, each (B, T), and `fresh`,
    True when the chunk is a lane's first (a new pass over the data: the state must start from zero).
    So row b of batch s+1 continues row b of batch s, and a model that keeps its final state (detached,
    `detach_state`) reads each lane as one long text, while the gradient still stops at the chunk's start."""

    def __init__(self, data: Tensor, batch_size: int, block_size: int) -> None:
        if not isinstance(data, Tensor) or data.dim() != 1:
            raise ValueError(f"StatefulBatches: data must be a 1-D id tensor, got "
                             f"{tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__}")
        if batch_size < 1 or block_size < 1:
            raise ValueError(f"StatefulBatches: batch_size and block_size must be positive, got {batch_size}, "
                             f"{block_size}")
        lane = (len(data) - 1) // batch_size  # characters per lane (each needs one more for its last target)
        self.chunks = lane // block_size  # chunks per pass
        if self.chunks < 1:
            raise ValueError(f"StatefulBatches: {len(data)} ids make lanes of {lane} for batch_size={batch_size}, "
                             f"shorter than one block of {block_size}")
        self.block_size = block_size
        n = self.chunks * block_size
        starts = torch.arange(batch_size) * lane  # (B,)
        self.lanes = data[starts[:, None] + torch.arange(n + 1)]  # (B, n + 1)

    def __call__(self, step: int) -> tuple[Tensor, Tensor, bool]:
        c = step % self.chunks
        a, T = c * self.block_size, self.block_size
        return self.lanes[:, a:a + T], self.lanes[:, a + 1:a + T + 1], c == 0  # (B, T), (B, T), fresh


def detach_state(state):
    """A recurrent state (None, h, or an LSTM's (h, c)) cut from the graph that made it: the next chunk
    starts from its values, and backpropagation stops there (truncated BPTT)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return tuple(s.detach() for s in state)


def _lm_windows(data: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """`data` (N,) cut into W = ⌊(N-1)/block_size⌋ consecutive windows: inputs and next-token targets, each
    (W, block_size); a final remainder shorter than a window is dropped."""
    n_windows = (len(data) - 1) // block_size
    if n_windows < 1:
        raise ValueError(f"data of {len(data)} ids is too short for one window of {block_size}")
    x = data[: n_windows * block_size].view(n_windows, block_size)  # (W, T)
    y = data[1: n_windows * block_size + 1].view(n_windows, block_size)  # (W, T)
    return x, y


def _first_rows(state, m: int):
    """The first m sequences of a recurrent state (h, or an LSTM's (h, c), each (L, B, H))."""
    return state[:, :m] if isinstance(state, Tensor) else tuple(s[:, :m] for s in state)


def evaluate_lm_stateful(model: nn.Module, data: Tensor, block_size: int = 256, lanes: int = 1) -> float:
    """Mean loss in nats per token over `data` (N,) read as a stream: the state is carried from each
    window of `block_size` into the next, so a token is predicted from all the text before it in its lane.
    With `lanes` = 1 that is the whole text (the windows only bound memory: the result equals one pass
    over it); `lanes` > 1 cuts the windows into that many consecutive runs read side by side as a batch
    (faster; each run starts from a zero state). Scores exactly the tokens `evaluate_lm` scores (a final
    remainder shorter than a window is dropped), so the two compare. `model(ids, state)` must return
    (logits, state), as a `CharRNN` does."""
    with torch.no_grad():
        x, y = _lm_windows(data, block_size)  # (W, T) each
        n_windows = len(x)
        if not 1 <= lanes <= n_windows:
            raise ValueError(f"lanes must be between 1 and the {n_windows} windows of {block_size}, got {lanes}")
        device = next(model.parameters()).device
        runs = torch.tensor_split(torch.arange(n_windows), lanes)  # consecutive windows; longer runs first
        was_training = model.training
        model.eval()
        total, state = 0.0, None
        try:
            for k in range(len(runs[0])):
                rows = torch.stack([r[k] for r in runs if len(r) > k])  # window k of every run still going (a prefix)
                if state is not None:
                    state = _first_rows(state, len(rows))
                logits, state = model(x[rows].to(device), state)  # (m, T, V)
                total += F.cross_entropy(logits.flatten(0, 1).float(), y[rows].flatten().to(device),
                                         reduction="sum").item()
        finally:
            model.train(was_training)
        return total / (n_windows * block_size)


def evaluate_lm(model: nn.Module, data: Tensor, block_size: int = 256, batch_size: int = 64) -> float:
    """Mean loss in nats per token over all of `data` (N,), cut into consecutive windows of
    `block_size` tokens, each read from a zero state (a recurrent model) or with no earlier context (a
    Transformer: every window starts afresh). Deterministic: every token counts once (except a final
    remainder shorter than a window, which is dropped). `model(ids)` may return the logits (B, T, V), as
    a GPT does, or (logits, state), as a `CharRNN` does."""
    with torch.no_grad():
        x, y = _lm_windows(data, block_size)  # (W, T) each
        n_windows = len(x)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        total = 0.0
        try:
            for s in range(0, n_windows, batch_size):
                xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)  # (b, T)
                out = model(xb)
                logits = out[0] if isinstance(out, tuple) else out  # (b, T, V)
                total += F.cross_entropy(logits.flatten(0, 1).float(), yb.flatten(), reduction="sum").item()
        finally:
            model.train(was_training)
        return total / (n_windows * block_size)
