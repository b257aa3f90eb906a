"""Quantization (chapter 11): storing a model's numbers in fewer bits, and computing with them.

- Round-to-nearest (Jacob et al. 2018, "Quantization and training of neural networks for efficient
  integer-arithmetic-only inference", section 2.1, eq. (1): r = S (q - Z)): a weight r is stored as an
  integer q with a scale S and a zero point Z  →  `quantize`, `Quantized.dequantize`. Symmetric (Z = 0,
  S = max|r| / (2^(b-1) - 1)) or asymmetric (S = (max - min) / (2^b - 1), Z = round(-min / S)), one
  (S, Z) per tensor, per output channel (row), or per group of `group_size` consecutive weights of a row
  (group-wise weight-only int4, as in GPTQ, Frantar et al. 2023, and AWQ). `fake_quantize_` replaces a
  GPT's weights by their quantized values (what the model computes with, in float), `quantized_nbytes`
  counts what storing them takes, and `pack_int4` / `unpack_int4` put two 4-bit values in one byte.

Letter legend (shape comments):
    O  output rows    I  input columns       G  groups per row (I / group_size)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from .gpt import GPT

__all__ = [
    "Quantized", "quantize", "fake_quantize_", "quantized_nbytes", "pack_int4", "unpack_int4", "SUPPORTED_BITS",
    "compressible_weights",
]

SUPPORTED_BITS = (2, 3, 4, 8)



@dataclass
class Quantized:
    """An integer tensor `q` (int8 storage, shape (O, I) or (O, G, g)) with its `scale` and `zero_point`
    (broadcastable to q); r ≈ scale * (q - zero_point). `shape` is the original weight's."""

    q: Tensor
    scale: Tensor
    zero_point: Tensor
    bits: int
    shape: torch.Size

    def dequantize(self) -> Tensor:
        """scale * (q - zero_point), in the scale's dtype, reshaped to the original weight's shape."""
        return (self.scale * (self.q.to(self.scale.dtype) - self.zero_point)).reshape(self.shape)

    def nbytes(self, scale_bytes: int = 2) -> int:
        """Bytes to store it: `bits` per weight (packed) plus each scale (and non-zero zero point) at
        `scale_bytes` bytes (2: float16, as GPTQ/AWQ checkpoints store them)."""
        n_params = self.scale.numel() * (1 if bool((self.zero_point == 0).all()) else 2)
        return math.ceil(self.q.numel() * self.bits / 8) + n_params * scale_bytes


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r} (int8 storage holds at most 8 bits; "
                         "below 2 bits symmetric quantization has no non-zero level)")


def quantize(w: Tensor, bits: int = 8, granularity: str | int = "channel", symmetric: bool = True) -> Quantized:
    """Quantize a weight matrix w (O, I) to `bits`-bit integers with round-to-nearest.

    granularity: "tensor" (one scale), "channel" (one per output row, as torch.quantize_per_channel with
    axis 0) or an int g (one per group of g consecutive weights of a row; g must divide I).
    symmetric: q in [-(2^(b-1) - 1), 2^(b-1) - 1] and zero point 0, scale = max|w| / (2^(b-1) - 1);
    else q in [0, 2^b - 1], scale = (max - min) / (2^b - 1) over a range that includes 0, and
    zero point round(-min / scale). Rounding is half to even (torch.round), as torch's quantizers.
    Every element satisfies |w - dequantize| ≤ scale / 2.
    """
    _check_bits(bits)
    if not isinstance(w, Tensor) or w.dim() != 2 or not w.is_floating_point():
        got = f"shape {tuple(w.shape)}, dtype {w.dtype}" if isinstance(w, Tensor) else type(w).__name__
        raise ValueError(f"quantize: w must be a 2-D float tensor (O, I), got {got}")
    O, I = w.shape
    x = w.detach().float()
    if granularity == "tensor":
        x = x.reshape(1, 1, O * I)  # one group
    elif granularity == "channel":
        x = x.reshape(O, 1, I)  # one group per row
    elif isinstance(granularity, int) and not isinstance(granularity, bool) and granularity > 0:
        if I % granularity:
            raise ValueError(f"quantize: group size {granularity} does not divide the row length I={I}; "
                             f"pick a divisor of {I} (e.g. {math.gcd(I, 32)}) or granularity='channel'")
        x = rearrange(x, "o (g k) -> o g k", k=granularity)  # (O, G, g)
    else:
        raise ValueError(f"quantize: granularity must be 'tensor', 'channel' or a positive int group size, "
                         f"got {granularity!r}")
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = x.abs().amax(dim=-1, keepdim=True) / qmax  # (…, 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale works
        q = torch.clamp(torch.round(x / scale), -qmax, qmax)
        zero = torch.zeros_like(scale)
    else:
        qmax = 2 ** bits - 1
        lo = x.amin(dim=-1, keepdim=True).clamp(max=0)  # the range includes 0, so 0 is exact
        hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
        q = torch.clamp(torch.round(x / scale) + zero, 0, qmax)
    return Quantized(q.to(torch.int8 if symmetric or bits < 8 else torch.uint8), scale, zero, bits, w.shape)


def pack_int4(q: Tensor) -> Tensor:
    """Two 4-bit values per byte: q (..., 2n) ints in [-8, 7] → uint8 (..., n), low nibble first."""
    if q.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64) or q.shape[-1] % 2:
        raise ValueError(f"pack_int4: need an integer tensor with an even last dimension, got dtype {q.dtype}, "
                         f"shape {tuple(q.shape)}")
    if int(q.min()) < -8 or int(q.max()) > 7:
        raise ValueError(f"pack_int4: values must be in [-8, 7], got [{int(q.min())}, {int(q.max())}]")
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)  # two's complement nibbles
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """Inverse of `pack_int4`: uint8 (..., n) → int8 (..., 2n) in [-8, 7]."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4: need a uint8 tensor, got {packed.dtype}")
    lo, hi = (packed & 0xF).to(torch.int8), (packed >> 4).to(torch.int8)
    lo, hi = lo - 16 * (lo > 7), hi - 16 * (hi > 7)  # back to signed
    return torch.stack([lo, hi], dim=-1).flatten(-2)


def compressible_weights(model: GPT) -> dict[str, nn.Parameter]:
    """The matrices a GPT's size is made of: the token table (also the tied output head), the position
    table and every Linear weight of the blocks. Biases and LayerNorms (under 1% here) stay in float."""
    if not isinstance(model, GPT):
        raise TypeError(f"expected a GPT, got {type(model).__name__}")
    out = {"transformer.wte.weight": model.transformer.wte.weight,
           "transformer.wpe.weight": model.transformer.wpe.weight}
    for name, m in model.transformer.h.named_modules():
        if isinstance(m, nn.Linear):
            out[f"transformer.h.{name}.weight"] = m.weight
    return out


@torch.no_grad()
def fake_quantize_(model: GPT, bits: int = 8, granularity: str | int = "channel", symmetric: bool = True) -> GPT:
    """Replace every compressible weight of `model` (in place) by dequantize(quantize(w)); returns it."""
    for w in compressible_weights(model).values():
        w.copy_(quantize(w, bits, granularity, symmetric).dequantize().to(w.dtype))
    return model


def quantized_nbytes(model: GPT, bits: int | None = None, granularity: str | int = "channel",
                     symmetric: bool = True, float_bytes: int = 4) -> int:
    """Bytes to store `model` with its compressible weights quantized (`bits`=None: all in float at
    `float_bytes` per number); everything else (biases, LayerNorms) at `float_bytes`."""
    weights = compressible_weights(model)
    ids = {id(w) for w in weights.values()}
    rest = sum(p.numel() for p in model.parameters() if id(p) not in ids) * float_bytes
    if bits is None:
        return rest + sum(w.numel() for w in weights.values()) * float_bytes
    return rest + sum(quantize(w, bits, granularity, symmetric).nbytes() for w in weights.values())
