"""The Transformer: positions, the encoder and decoder layers, and an encoder-decoder for the date task.

- Vaswani et al. (2017), "Attention is all you need":
  section 3.1, encoder and decoder stacks, each sublayer wrapped as LayerNorm(x + Sublayer(x))
      →  `EncoderLayer`, `DecoderLayer` with `norm_first=False` (post-norm);
  section 3.2, (multi-head) attention  →  `utils.attention.MultiHeadAttention`, reused here;
  section 3.3, position-wise feed-forward FFN(x) = max(0, x W_1 + b_1) W_2 + b_2  →  `FeedForward`;
  section 3.4, embeddings multiplied by sqrt(d_model)  →  `TransformerEmbedding`;
  section 3.5, PE(p, 2i) = sin(p / 10000^(2i/C)), PE(p, 2i+1) = cos(p / 10000^(2i/C))  →  `sinusoidal_positions`.
- Xiong et al. (2020), "On layer normalization in the Transformer architecture": the pre-norm layer
  x + Sublayer(LayerNorm(x)) trains without warm-up and is what GPT-2, ViT and CLIP use; it needs one
  final LayerNorm (`ln_f`) after the stack. `norm_first=True` (the default) is pre-norm.

Dropout sits where nn.TransformerEncoderLayer/DecoderLayer put it (Vaswani et al. 2017, 5.4): on the
attention weights, on each sublayer's output before the residual sum, after the feed-forward
activation, and on the sum of embeddings and positions; the layers equal torch's (same weights,
through `from_torch_encoder_layer_state_dict` / `from_torch_decoder_layer_state_dict`), as the tests show.

`TransformerSeq2Seq` is a `utils.seq2seq.Seq2Seq`, so chapter 4's `greedy_decode`, `beam_search`,
`translate` and `sequence_log_prob` decode it unchanged: its decoder is a `utils.seq2seq.Decoder` whose
state is the prefix of tokens generated so far. Training runs the whole target in one causal pass.

Reuse in later chapters. `EncoderLayer` with `norm_first=True` is the pre-norm block
    x = x + attn(ln_1(x));  x = x + mlp(ln_2(x)),  mlp = c_proj(act(c_fc(x)))
with the submodule names of GPT-2 and OpenAI CLIP (ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj), so:
GPT (chapter 7) stacks it with `is_causal=True` and activation "gelu_tanh" (a decoder-only model needs
no cross-attention); ViT (chapter 8) stacks it over patch embeddings with "gelu"; CLIP (chapter 9)
stacks it in both towers with "quick_gelu" (the text tower causal). Their converters then rename only
the few checkpoint keys that differ.

Letter legend (shape comments):
    B  batch size            S  source length            T  target length (or any sequence length)
    C  model width (d_model) H  heads                    D  head dim (C = H * D)
    F  feed-forward width    L  layers                   V  vocabulary size
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .attention import MultiHeadAttention, from_torch_mha_state_dict
from .seq2seq import PAD, Decoder, Memory, Seq2Seq, eval_mode

__all__ = [
    "sinusoidal_positions", "quick_gelu", "ACTIVATIONS", "FeedForward", "EncoderLayer", "DecoderLayer", "Transformer",
    "from_torch_encoder_layer_state_dict", "from_torch_decoder_layer_state_dict",
    "TransformerConfig", "TransformerEmbedding", "TransformerEncoder", "TransformerDecoder", "TransformerSeq2Seq",
]


# ----------------------------------------------------------------------------------------------
# Positions (section 3.5)

def sinusoidal_positions(T: int, C: int, base: float = 10000.0, dtype: torch.dtype | None = None,
                         device: torch.device | str | None = None) -> Tensor:
    """(T, C) table: PE[p, 2i] = sin(p / base^(2i/C)), PE[p, 2i+1] = cos(p / base^(2i/C)).

    Column pair (2i, 2i+1) turns at angular frequency base^(-2i/C), from 1 rad per position (i = 0)
    down to 1/base, so PE[p + k] is a fixed rotation of PE[p] for each pair (Vaswani et al. 2017, 3.5).
    Computed in float64, returned in `dtype` (default: torch's default dtype).
    """
    if not isinstance(T, int) or isinstance(T, bool) or T < 0:
        raise ValueError(f"sinusoidal_positions: T (number of positions) must be an int ≥ 0, got {T!r}")
    if not isinstance(C, int) or isinstance(C, bool) or C < 2 or C % 2:
        raise ValueError(f"sinusoidal_positions: C (model width) must be a positive even int, got {C!r}; "
                         "sin and cos fill the columns in pairs (use an even d_model, or learned positions)")
    if not base > 1:
        raise ValueError(f"sinusoidal_positions: base must be > 1, got {base}")
    p = torch.arange(T, dtype=torch.float64)[:, None]  # (T, 1)
    inv_freq = base ** (-torch.arange(0, C, 2, dtype=torch.float64) / C)  # (C/2,)  base^(-2i/C)
    angles = p * inv_freq  # (T, C/2)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (T, C/2, 2)
    pe = rearrange(pe, "t i two -> t (i two)")  # (T, C): sin, cos, sin, cos, ...
    return pe.to(dtype=dtype or torch.get_default_dtype(), device=device)


# ----------------------------------------------------------------------------------------------
# The position-wise feed-forward network (section 3.3)

def quick_gelu(x: Tensor) -> Tensor:
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,  # Vaswani et al. 2017
    "gelu": F.gelu,  # exact, erf-based (BERT, ViT; nn.Transformer*Layer's "gelu")
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),  # GPT-2
    "quick_gelu": quick_gelu,  # OpenAI CLIP
}


def _check_activation(activation: str, who: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{who}: unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")


def _check_positive(who: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{who}: {name} must be a positive int, got {value!r}")


def _check_rate(dropout: float, who: str) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{who}: dropout must be in [0, 1), got {dropout}")


class FeedForward(nn.Module):
    """FFN(x) = drop(c_proj(drop(act(c_fc(x))))), applied to every position alike (section 3.3).

    `c_fc` = Linear(C, F) (W_1, b_1) and `c_proj` = Linear(F, C) (W_2, b_2), named as in GPT-2 and
    OpenAI CLIP. The two dropouts are nn.TransformerEncoderLayer's `dropout` and `dropout2`.
    """

    def __init__(self, C: int, F: int, dropout: float = 0.0, activation: str = "relu") -> None:
        super().__init__()
        _check_activation(activation, "FeedForward")
        _check_rate(dropout, "FeedForward")
        self.activation = activation
        self.c_fc = nn.Linear(C, F)  # W_1
        self.c_proj = nn.Linear(F, C)  # W_2
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., C) → (..., C)."""
        h = self.drop(ACTIVATIONS[self.activation](self.c_fc(x)))  # (..., F)
        return self.drop(self.c_proj(h))  # (..., C)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


# ----------------------------------------------------------------------------------------------
# Encoder and decoder layers (section 3.1)

class _ResidualBlock(nn.Module):
    """What the encoder and decoder layers share: sizes, checks, and the residual wrapper

        pre-norm  (norm_first=True,  Xiong et al. 2020):   x + drop(sublayer(ln(x)))
        post-norm (norm_first=False, Vaswani et al. 2017): ln(x + drop(sublayer(x)))

    written as `_in` (what the sublayer reads) and `_out` (the residual sum, then ln if post-norm).
    """

    def __init__(self, C: int, H: int, F: int, dropout: float, activation: str, norm_first: bool,
                 eps: float) -> None:
        super().__init__()
        who = type(self).__name__
        _check_positive(who, C=C, H=H, F=F)
        if C % H:
            raise ValueError(f"{who}: model width C={C} is not divisible by H={H} heads; pick H dividing C "
                             f"(head dim D = C / H)")
        _check_activation(activation, who)
        _check_rate(dropout, who)
        if not eps > 0:
            raise ValueError(f"{who}: eps must be > 0, got {eps}")
        self.C, self.H, self.norm_first = C, H, norm_first
        self.drop = nn.Dropout(dropout)  # on each attention sublayer's output (the FFN drops its own)

    def _in(self, x: Tensor, ln: nn.LayerNorm) -> Tensor:
        return ln(x) if self.norm_first else x

    def _out(self, x: Tensor, y: Tensor, ln: nn.LayerNorm) -> Tensor:
        return x + y if self.norm_first else ln(x + y)

    def _check_x(self, x: Tensor, name: str = "x") -> None:
        who = type(self).__name__
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 3 or x.shape[-1] != self.C:
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{who}: {name} must be a float tensor of shape (B, length, C) with C={self.C}, "
                             f"got {got}")

    def extra_repr(self) -> str:
        return f"norm_first={self.norm_first}"


class EncoderLayer(_ResidualBlock):
    """Self-attention then feed-forward, each a residual sublayer (section 3.1; pre- or post-norm).

    Submodules `ln_1`, `attn` (MultiHeadAttention), `ln_2`, `mlp` (FeedForward): GPT-2/CLIP names.
    Equals nn.TransformerEncoderLayer(C, H, F, dropout, activation, batch_first=True, norm_first=...)
    loaded with `from_torch_encoder_layer_state_dict`.
    """

    def __init__(self, C: int, H: int, F: int, dropout: float = 0.0, activation: str = "relu",
                 norm_first: bool = True, eps: float = 1e-5) -> None:
        super().__init__(C, H, F, dropout, activation, norm_first, eps)
        self.ln_1 = nn.LayerNorm(C, eps=eps)
        self.attn = MultiHeadAttention(C, H, dropout=dropout)
        self.ln_2 = nn.LayerNorm(C, eps=eps)
        self.mlp = FeedForward(C, F, dropout, activation)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None,
                return_attn: bool = False, is_causal: bool = False, past_kv: tuple[Tensor, Tensor] | None = None,
                use_cache: bool = False) -> Tensor | tuple[Tensor, ...]:
        """x (B, T, C) → (B, T, C), and the attention weights (B, H, T, T) if `return_attn`.

        Masks as `MultiHeadAttention`: key_padding_mask (B, T) bool True = padding; attn_mask (T, T)
        or (B, H, T, T), bool True = may attend, or float added to the scores. `is_causal` lets
        position t see positions ≤ t only (GPT, CLIP's text tower).

        Key/value cache (GPT's generation): `past_kv` = the (keys, values) of P earlier positions, each
        (B, H, P, D), makes x the positions P .. P+T-1 (masks then cover S = P + T keys); `use_cache=True`
        also returns the keys and values of all S positions, to pass as `past_kv` next time:
        (x, (keys, values)), or (x, attn, (keys, values)) with `return_attn`.
        """
        self._check_x(x)
        cache = {"past_kv": past_kv, "use_cache": True} if use_cache or past_kv is not None else {}
        a, attn, *kv = self.attn(self._in(x, self.ln_1), key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                                 is_causal=is_causal, return_attn=return_attn, **cache)  # (B, T, C), (B, H, T, S)
        x = self._out(x, self.drop(a), self.ln_1)  # (B, T, C)
        x = self._out(x, self.mlp(self._in(x, self.ln_2)), self.ln_2)  # (B, T, C)
        out = (x, attn) if return_attn else (x,)
        out += tuple(kv) if use_cache else ()  # 2 × (B, H, S, D)
        return out if len(out) > 1 else x


class DecoderLayer(_ResidualBlock):
    """Masked self-attention, cross-attention to the encoder's outputs, feed-forward (section 3.1).

    Submodules `ln_1`, `attn` (self), `ln_2`, `cross_attn`, `ln_3`, `mlp`. Equals
    nn.TransformerDecoderLayer(C, H, F, dropout, activation, batch_first=True, norm_first=...) loaded
    with `from_torch_decoder_layer_state_dict`.
    """

    def __init__(self, C: int, H: int, F: int, dropout: float = 0.0, activation: str = "relu",
                 norm_first: bool = True, eps: float = 1e-5) -> None:
        super().__init__(C, H, F, dropout, activation, norm_first, eps)
        self.ln_1 = nn.LayerNorm(C, eps=eps)
        self.attn = MultiHeadAttention(C, H, dropout=dropout)
        self.ln_2 = nn.LayerNorm(C, eps=eps)
        self.cross_attn = MultiHeadAttention(C, H, dropout=dropout)
        self.ln_3 = nn.LayerNorm(C, eps=eps)
        self.mlp = FeedForward(C, F, dropout, activation)

    def forward(self, x: Tensor, memory: Tensor, memory_key_padding_mask: Tensor | None = None,
                causal: bool = True, tgt_key_padding_mask: Tensor | None = None,
                return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """x (B, T, C) targets so far, memory (B, S, C) encoder outputs → (B, T, C);
        with `return_attn` also self-attention (B, H, T, T) and cross-attention (B, H, T, S) weights.

        memory_key_padding_mask (B, S) / tgt_key_padding_mask (B, T): bool, True = padding.
        `causal`: target position t sees targets ≤ t only (the decoder must not read ahead).
        """
        self._check_x(x)
        self._check_x(memory, "memory")
        a, self_attn = self.attn(self._in(x, self.ln_1), key_padding_mask=tgt_key_padding_mask,
                                 is_causal=causal, return_attn=return_attn)  # (B, T, C), (B, H, T, T)
        x = self._out(x, self.drop(a), self.ln_1)  # (B, T, C)
        a, cross_attn = self.cross_attn(self._in(x, self.ln_2), memory, key_padding_mask=memory_key_padding_mask,
                                        return_attn=return_attn)  # (B, T, C), (B, H, T, S)
        x = self._out(x, self.drop(a), self.ln_2)  # (B, T, C)
        x = self._out(x, self.mlp(self._in(x, self.ln_3)), self.ln_3)  # (B, T, C)
        return (x, self_attn, cross_attn) if return_attn else x


class Transformer(nn.Module):
    """A stack of L pre-norm `EncoderLayer`s named `resblocks`, as OpenAI CLIP's `Transformer`: the body of
    the Vision Transformer (chapter 8, bidirectional) and of CLIP's text tower (chapter 9, `is_causal`).
    No final LayerNorm: the towers add their own (`ln_post`, `ln_final`)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_width: int | None = None, dropout: float = 0.0,
                 activation: str = "gelu", eps: float = 1e-5, is_causal: bool = False) -> None:
        super().__init__()
        _check_positive("Transformer", width=width, layers=layers, heads=heads)
        self.is_causal = is_causal
        F_ = 4 * width if mlp_width is None else mlp_width
        self.resblocks = nn.ModuleList(EncoderLayer(width, heads, F_, dropout, activation, norm_first=True, eps=eps)
                                       for _ in range(layers))

    def forward(self, x: Tensor, return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, T, C) → (B, T, C); position t reads positions ≤ t only if `is_causal`. With `return_attn`
        also every layer's attention weights (B, L, H, T, T)."""
        attns = []
        for block in self.resblocks:
            out = block(x, is_causal=self.is_causal, return_attn=return_attn)
            x, attn = out if return_attn else (out, None)  # (B, T, C), (B, H, T, T)
            attns.append(attn)
        return (x, torch.stack(attns, dim=1)) if return_attn else x  # (B, T, C), (B, L, H, T, T)

    def extra_repr(self) -> str:
        return f"is_causal={self.is_causal}"


# ----------------------------------------------------------------------------------------------
# Converters: nn.TransformerEncoderLayer / nn.TransformerDecoderLayer state_dict → ours.
# Torch's submodule → ours; inside the attention modules `from_torch_mha_state_dict` renames the keys,
# the others keep theirs (weight, bias).

_TORCH_ENCODER_LAYER = {
    "self_attn": "attn",
    "linear1": "mlp.c_fc",
    "linear2": "mlp.c_proj",
    "norm1": "ln_1",
    "norm2": "ln_2",
}
_TORCH_DECODER_LAYER = {
    "self_attn": "attn",
    "multihead_attn": "cross_attn",
    "linear1": "mlp.c_fc",
    "linear2": "mlp.c_proj",
    "norm1": "ln_1",
    "norm2": "ln_2",
    "norm3": "ln_3",
}
_TORCH_ATTENTION = ("self_attn", "multihead_attn")


@functools.cache
def _torch_keys(reference: type[nn.Module]) -> frozenset[str]:
    """The state_dict keys of torch's layer (default bias=True), read off a parameter-free meta instance."""
    return frozenset(reference(2, 1, 2, device="meta").state_dict())


def _from_torch_layer(state_dict: dict[str, Tensor], table: dict[str, str], reference: type[nn.Module],
                      who: str) -> dict[str, Tensor]:
    expected = _torch_keys(reference)
    unknown, missing = sorted(set(state_dict) - expected), sorted(expected - set(state_dict))
    if unknown or missing:
        raise KeyError(f"{who}: unknown keys {unknown}, missing keys {missing}; expected the state_dict of "
                       f"nn.{reference.__name__} with bias=True: {sorted(expected)}")
    out = {}
    for theirs, ours in table.items():
        part = {k[len(theirs) + 1:]: v for k, v in state_dict.items() if k.startswith(theirs + ".")}
        if theirs in _TORCH_ATTENTION:
            part = from_torch_mha_state_dict(part)  # in_proj_weight → in_proj.weight, ...
        out.update({f"{ours}.{k}": v for k, v in part.items()})
    return out


def from_torch_encoder_layer_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """nn.TransformerEncoderLayer state_dict → EncoderLayer's. Unknown or missing keys: KeyError listing them."""
    return _from_torch_layer(state_dict, _TORCH_ENCODER_LAYER, nn.TransformerEncoderLayer,
                             "from_torch_encoder_layer_state_dict")


def from_torch_decoder_layer_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """nn.TransformerDecoderLayer state_dict → DecoderLayer's. Unknown or missing keys: KeyError listing them."""
    return _from_torch_layer(state_dict, _TORCH_DECODER_LAYER, nn.TransformerDecoderLayer,
                             "from_torch_decoder_layer_state_dict")


# ----------------------------------------------------------------------------------------------
# The encoder-decoder Transformer for the date task of utils.seq2seq

POSITIONS = ("sinusoidal", "learned")


@dataclass
class TransformerConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 128  # C
    num_heads: int = 4  # H
    num_encoder_layers: int = 2  # L (encoder)
    num_decoder_layers: int = 2  # L (decoder)
    d_ff: int = 512  # F
    dropout: float = 0.1  # training only
    max_len: int = 64  # longest source or target (positions 0 .. max_len - 1)
    positions: str = "sinusoidal"  # or "learned"
    norm_first: bool = True  # pre-norm (Xiong et al. 2020); False = post-norm (Vaswani et al. 2017)
    activation: str = "relu"  # a key of ACTIVATIONS
    eps: float = 1e-5  # LayerNorm epsilon

    def __post_init__(self) -> None:
        _check_positive("TransformerConfig", **{name: getattr(self, name) for name in (
            "src_vocab_size", "tgt_vocab_size", "d_model", "num_heads", "num_encoder_layers", "num_decoder_layers",
            "d_ff", "max_len")})
        if self.d_model % self.num_heads:
            raise ValueError(f"TransformerConfig: d_model={self.d_model} is not divisible by num_heads="
                             f"{self.num_heads}; pick num_heads dividing d_model (head dim = d_model / num_heads)")
        if self.positions not in POSITIONS:
            raise ValueError(f"TransformerConfig: positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"TransformerConfig: sinusoidal positions need an even d_model, got {self.d_model}; "
                             "use an even d_model or positions='learned'")
        _check_activation(self.activation, "TransformerConfig")
        _check_rate(self.dropout, "TransformerConfig")
        if not self.eps > 0:
            raise ValueError(f"TransformerConfig: eps must be > 0, got {self.eps}")


class TransformerEmbedding(nn.Module):
    """Token embedding × sqrt(C) + position, then dropout (Vaswani et al. 2017, 3.4, 3.5 and 5.4).

    `wte` = nn.Embedding(V, C) (row PAD is zero and stays zero), initialised N(0, 1/C) so that after
    the sqrt(C) scale each coordinate has unit scale, like the positions: the buffer `pe` =
    `sinusoidal_positions(max_len, C)` (not saved in the state_dict; computed once in torch's default
    dtype and cast with the module), or learned `wpe` = nn.Embedding(max_len, C) (N(0, 1), torch's default).
    """

    def __init__(self, vocab_size: int, C: int, max_len: int, positions: str = "sinusoidal",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"TransformerEmbedding: positions must be one of {POSITIONS}, got {positions!r}")
        self.vocab_size, self.C, self.max_len, self.positions = vocab_size, C, max_len, positions
        self.wte = nn.Embedding(vocab_size, C, padding_idx=PAD)
        nn.init.normal_(self.wte.weight, std=C ** -0.5)
        with torch.no_grad():
            self.wte.weight[PAD].zero_()
        if positions == "learned":
            self.wpe = nn.Embedding(max_len, C)
        else:
            self.register_buffer("pe", sinusoidal_positions(max_len, C), persistent=False)  # (max_len, C)
        self.drop = nn.Dropout(dropout)

    def forward(self, ids: Tensor, what: str = "sequence") -> Tensor:
        """ids (B, T) int64 → (B, T, C). `what` names the input in errors ("source", "target")."""
        if not isinstance(ids, Tensor) or ids.dtype != torch.long or ids.dim() != 2 or ids.shape[1] == 0:
            got = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"the {what} must be a (B, T) tensor of int64 token ids with T ≥ 1, got {got}")
        T = ids.shape[1]
        if T > self.max_len:
            raise ValueError(f"the {what} has length {T}, longer than max_len={self.max_len} positions; "
                             f"raise TransformerConfig.max_len (to ≥ {T}) or shorten the input")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"{what} token id out of range [0, {self.vocab_size}): min {int(ids.min())}, "
                             f"max {int(ids.max())}")
        pos = self.wpe.weight[:T] if self.positions == "learned" else self.pe[:T]  # (T, C)
        x = self.wte(ids) * math.sqrt(self.C) + pos  # (B, T, C)
        return self.drop(x)

    def extra_repr(self) -> str:
        return f"positions={self.positions!r}, max_len={self.max_len}"


class TransformerEncoder(nn.Module):
    """Embedding + positions → L `EncoderLayer`s (→ `ln_f` if pre-norm): the source read all at once,
    every position attending to every real (non-padding) position."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config
        self.embed = TransformerEmbedding(c.src_vocab_size, c.d_model, c.max_len, c.positions, c.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(c.d_model, c.num_heads, c.d_ff, c.dropout, c.activation, c.norm_first, c.eps)
            for _ in range(c.num_encoder_layers))
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.eps) if c.norm_first else nn.Identity()

    def forward(self, src: Tensor, src_len: Tensor, return_attn: bool = False) -> Memory | tuple[Memory, Tensor]:
        """src (B, S) ids, src_len (B,) → Memory(outputs (B, S, C) (zero at padding), mask (B, S) True = real,
        state=()), and the self-attention weights of every layer (B, L, H, S, S) if `return_attn`."""
        x = self.embed(src, what="source")  # (B, S, C)
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < src_len[:, None]  # (B, S) True = real
        attns = []
        for layer in self.layers:
            if return_attn:
                x, attn = layer(x, key_padding_mask=~mask, return_attn=True)  # (B, S, C), (B, H, S, S)
                attns.append(attn)
            else:
                x = layer(x, key_padding_mask=~mask)  # (B, S, C)
        x = self.ln_f(x).masked_fill(~mask[..., None], 0.0)  # (B, S, C), padding positions zeroed
        memory = Memory(x, mask, ())
        return (memory, torch.stack(attns, dim=1)) if return_attn else memory  # (B, L, H, S, S)


class TransformerDecoder(Decoder):
    """Embedding + positions → L `DecoderLayer`s (causal self-attention, cross-attention to the
    encoder's outputs) → `ln_f` if pre-norm → `head` Linear(C, V).

    Training (teacher_forcing == 1): one parallel causal pass over the whole target. Decoding with
    `utils.seq2seq` (greedy_decode, beam_search): the state is the prefix of tokens so far, (B, t)
    int64, and each `step` appends the new token and reruns the decoder on the whole prefix, keeping
    only the last position. That costs O(t²) per output, fine for outputs of a few dozen tokens; there
    is no KV cache here (chapter 7 adds one). teacher_forcing < 1 uses `Decoder.forward`'s step loop.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config
        self.vocab_size = c.tgt_vocab_size
        self.embed = TransformerEmbedding(c.tgt_vocab_size, c.d_model, c.max_len, c.positions, c.dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(c.d_model, c.num_heads, c.d_ff, c.dropout, c.activation, c.norm_first, c.eps)
            for _ in range(c.num_decoder_layers))
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.eps) if c.norm_first else nn.Identity()
        self.head = nn.Linear(c.d_model, c.tgt_vocab_size)

    def forward_all(self, y_in: Tensor, memory: Memory,
                    return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """One causal pass: y_in (B, T) → logits (B, T, V), where position t has seen y_in[:, :t+1] only;
        with `return_attn` also every layer's self-attention (B, L, H, T, T) and cross-attention (B, L, H, T, S)."""
        x = self.embed(y_in, what="target")  # (B, T, C)
        pad = ~memory.mask  # (B, S) True = padding
        self_attns, cross_attns = [], []
        for layer in self.layers:
            if return_attn:
                x, self_attn, cross_attn = layer(x, memory.outputs, memory_key_padding_mask=pad,
                                                 return_attn=True)  # (B, T, C), (B, H, T, T), (B, H, T, S)
                self_attns.append(self_attn)
                cross_attns.append(cross_attn)
            else:
                x = layer(x, memory.outputs, memory_key_padding_mask=pad)  # (B, T, C)
        logits = self.head(self.ln_f(x))  # (B, T, V)
        if not return_attn:
            return logits
        return logits, torch.stack(self_attns, dim=1), torch.stack(cross_attns, dim=1)  # (B, L, H, T, T|S)

    def forward(self, y_in: Tensor, memory: Memory, teacher_forcing: float = 1.0,
                generator: torch.Generator | None = None, return_attn: bool = False):
        """Logits (B, T, V) for every target position (and, if `return_attn`, the last layer's
        cross-attention averaged over heads (B, T, S), as `Decoder.forward` returns)."""
        if teacher_forcing != 1.0:  # Decoder.forward checks the ratio and runs the step loop
            return super().forward(y_in, memory, teacher_forcing, generator, return_attn)
        if not return_attn:
            return self.forward_all(y_in, memory)  # (B, T, V)
        logits, _, cross_attn = self.forward_all(y_in, memory, return_attn=True)  # (B, L, H, T, S)
        return logits, cross_attn[:, -1].mean(dim=1)  # (B, T, V), (B, T, S)

    def init_state(self, memory: Memory) -> Tensor:
        """The prefix of tokens fed so far: none yet, (B, 0) int64."""
        return torch.empty(memory.outputs.shape[0], 0, dtype=torch.long, device=memory.outputs.device)  # (B, 0)

    def step(self, y_prev: Tensor, state: Tensor, memory: Memory) -> tuple[Tensor, Tensor, Tensor]:
        """y_prev (B,) → logits (B, V) of the next token, the prefix (B, t+1), and the last layer's
        cross-attention of the new position averaged over heads (B, S)."""
        prefix = torch.cat([state, y_prev[:, None]], dim=1)  # (B, t+1)
        logits, _, cross_attn = self.forward_all(prefix, memory, return_attn=True)  # (B, t+1, V), (B, L, H, t+1, S)
        return logits[:, -1], prefix, cross_attn[:, -1, :, -1].mean(dim=1)  # (B, V), (B, t+1), (B, S)

    def reorder_state(self, state: Tensor, index: Tensor) -> Tensor:
        """The prefix has the batch on dimension 0: index (K,) → (K, t)."""
        return state.index_select(0, index)  # (K, t)


class TransformerSeq2Seq(Seq2Seq):
    """The encoder-decoder Transformer (Vaswani et al. 2017, figure 1) as a `utils.seq2seq.Seq2Seq`:
    `encode` checks the source batch as chapter 4's model does, and greedy_decode, beam_search,
    translate and sequence_log_prob decode it unchanged."""

    def __init__(self, config: TransformerConfig) -> None:
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"TransformerSeq2Seq takes a TransformerConfig, got {type(config).__name__}")
        super().__init__(config, encoder=TransformerEncoder(config), decoder=TransformerDecoder(config))

    def attention_maps(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> dict[str, Tensor]:
        """Every attention map of one teacher-forced pass, in eval mode (dropout off), without gradients:
        {"encoder self-attention": (B, L, H, S, S), "decoder self-attention": (B, L, H, T, T),
         "cross-attention": (B, L, H, T, S)}. The source is checked by `encode` (which runs the encoder
        once more; these maps are for figures, not for speed)."""
        with torch.no_grad():
            with eval_mode(self):
                self.encode(src, src_len)  # the source checks of Seq2Seq.encode
                memory, enc_attn = self.encoder(src, src_len, return_attn=True)  # (B, L, H, S, S)
                _, dec_attn, cross_attn = self.decoder.forward_all(tgt_in, memory, return_attn=True)
            return {"encoder self-attention": enc_attn, "decoder self-attention": dec_attn,
                    "cross-attention": cross_attn}
