"""Quantization (chapter 11): storing a model's numbers in fewer bits, and computing with them.

- Round-to-nearest (RTN; Jacob et al. 2018, "Quantization and training of neural networks for efficient
  integer-arithmetic-only inference", section 2.1, eq. (1): r = S (q - Z)): a weight r is stored as an
  integer q with a scale S and a zero point Z  →  `quantize`, `Quantized.dequantize`. Symmetric (Z = 0,
  S = max|r| / (2^(b-1) - 1)) or asymmetric (S = (max - min) / (2^b - 1), Z = round(-min / S)), one
  (S, Z) per tensor, per output channel (row), or per group of `group_size` consecutive weights of a row
  (the layout GPTQ and AWQ checkpoints use). `fake_quantize_` replaces a GPT's weights by their quantized
  values (what the model computes with, in float), `quantized_nbytes` counts what storing them takes, and
  `pack_int4` / `unpack_int4` put two 4-bit values in one byte.
- Activations and integer arithmetic (Jacob et al. 2018, section 2.2-2.4, eqs. (4)-(9)): `observe_inputs`
  records the range of every Linear's input over a calibration set (min/max, as torch.ao's MinMaxObserver,
  and each input channel's largest |x|, where outlier features show, Dettmers et al. 2022, "LLM.int8()";
  Xiao et al. 2023, "SmoothQuant"); `activation_qparams` turns a range into a scale and zero point;
  `quantize_per_token` gives every token (row) its own scale at run time. `integer_linear` is the integer
  matmul: int8 × int8 products summed in int32, the zero-point cross terms, then the rescale by s_x s_w;
  `requantize` maps the result back to 8 bits. `Int8Linear` / `int8_linears_` compute a GPT's Linears
  that way, with static (calibrated), dynamic (per batch) or per-token activation scales.
- GPTQ (Frantar et al. 2023, "GPTQ: accurate post-training quantization for generative pre-trained
  transformers", Algorithm 1): quantize a weight matrix one input column at a time and spread each
  column's rounding error over the columns not yet quantized, weighted by the inverse Hessian
  H = 2 X Xᵀ of the layer's inputs (its Cholesky factor, with damping and lazy blocks)  →  `gptq_quantize`;
  `input_hessian` collects H on calibration batches, `gptq_quantize_model_` quantizes a GPT layer by
  layer, each layer seeing the already quantized ones before it.
- Quantization-aware training (Jacob et al. 2018, section 3; the straight-through estimator of Bengio
  et al. 2013): `fake_quantize_ste` rounds in the forward pass and passes the gradient through unchanged
  inside the representable range (zero outside); `qat_prepare_` makes a GPT's weights fake-quantized
  while it trains, `qat_finalize_` stores the quantized values.

Letter legend (shape comments):
    N  tokens (rows of activations)    O  output rows    I  input columns    G  groups per row (I / group_size)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .gpt import GPT

__all__ = [
    "Quantized", "quantize", "fake_quantize_", "quantized_nbytes", "pack_int4", "unpack_int4", "SUPPORTED_BITS",
    "compressible_weights", "block_linears",
    "InputStats", "observe_inputs", "activation_qparams", "quantize_activation", "quantize_per_token",
    "integer_linear", "requantize", "Int8Linear", "int8_linears_",
    "gptq_quantize", "input_hessian", "gptq_quantize_model_",
    "fake_quantize_ste", "WeightFakeQuant", "qat_prepare_", "qat_finalize_",
]

SUPPORTED_BITS = (2, 3, 4, 8)


# ----------------------------------------------------------------------------------------------
# Round-to-nearest weights

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


def _levels(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer range: [-(2^(b-1) - 1), 2^(b-1) - 1] (symmetric, restricted: 0 in the middle) or [0, 2^b - 1]."""
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


def _grid(lo: Tensor, hi: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Scale and zero point of the b-bit grid that covers [lo, hi] stretched to include 0 (so that 0 is
    exact). Symmetric: scale = max(|lo|, |hi|) / (2^(b-1) - 1), zero point 0; affine: scale = (hi - lo) /
    (2^b - 1), zero point round(-lo / scale). A range of width 0 gets scale 1 (any scale represents 0)."""
    qmin, qmax = _levels(bits, symmetric)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.zeros_like(scale) if symmetric else torch.clamp(torch.round(-lo / scale), qmin, qmax)
    return scale, zero


def _round(x: Tensor, scale: Tensor, zero: Tensor, bits: int, symmetric: bool) -> Tensor:
    """clamp(round(x / scale) + zero, qmin, qmax), rounding half to even as torch's quantizers (float result)."""
    qmin, qmax = _levels(bits, symmetric)
    return torch.clamp(torch.round(x / scale) + zero, qmin, qmax)


def _int_dtype(bits: int, symmetric: bool) -> torch.dtype:
    return torch.int8 if symmetric or bits < 8 else torch.uint8


def _check_weight(w: object, who: str) -> None:
    if not isinstance(w, Tensor) or w.dim() != 2 or not w.is_floating_point():
        got = f"shape {tuple(w.shape)}, dtype {w.dtype}" if isinstance(w, Tensor) else type(w).__name__
        raise ValueError(f"{who}: w must be a 2-D float tensor (O, I), got {got}")


def _check_granularity(granularity: str | int, I: int, who: str) -> None:
    if granularity in ("tensor", "channel"):
        return
    if isinstance(granularity, int) and not isinstance(granularity, bool) and granularity > 0:
        if I % granularity:
            raise ValueError(f"{who}: group size {granularity} does not divide the row length I={I}; "
                             f"pick a divisor of {I} (e.g. {math.gcd(I, 32)}) or granularity='channel'")
        return
    raise ValueError(f"{who}: granularity must be 'tensor', 'channel' or a positive int group size, "
                     f"got {granularity!r}")


def _groups(x: Tensor, granularity: str | int) -> Tensor:
    """View a weight (O, I) as the groups that share a scale: (1, 1, O I), (O, 1, I) or (O, G, g)."""
    O, I = x.shape
    if granularity == "tensor":
        return x.reshape(1, 1, O * I)  # one group
    if granularity == "channel":
        return x.reshape(O, 1, I)  # one group per row
    return rearrange(x, "o (g k) -> o g k", k=granularity)  # (O, G, g)


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
    _check_weight(w, "quantize")
    _check_granularity(granularity, w.shape[1], "quantize")
    x = _groups(w.detach().float(), granularity)  # (…, g): one scale per row of x
    scale, zero = _grid(x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True), bits, symmetric)  # (…, 1)
    q = _round(x, scale, zero, bits, symmetric)
    return Quantized(q.to(_int_dtype(bits, symmetric)), scale, zero, bits, w.shape)


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
    lo, hi = torch.where(lo > 7, lo - 16, lo), torch.where(hi > 7, hi - 16, hi)  # back to signed, still int8
    return torch.stack([lo, hi], dim=-1).flatten(-2)


def _check_gpt(model: object) -> None:
    if not isinstance(model, GPT):
        raise TypeError(f"expected a GPT, got {type(model).__name__}")


def block_linears(model: GPT) -> dict[str, nn.Linear]:
    """The nn.Linear layers of a GPT's blocks, in the order the forward pass meets them (per block:
    attn.in_proj, attn.out_proj, mlp.c_fc, mlp.c_proj), by their names in the model."""
    _check_gpt(model)
    return {f"transformer.h.{name}": m for name, m in model.transformer.h.named_modules() if isinstance(m, nn.Linear)}


def compressible_weights(model: GPT) -> dict[str, nn.Parameter]:
    """The matrices a GPT's size is made of: the token table (also the tied output head), the position
    table and every Linear weight of the blocks. Biases and LayerNorms (under 1% here) stay in float."""
    _check_gpt(model)
    out = {"transformer.wte.weight": model.transformer.wte.weight,
           "transformer.wpe.weight": model.transformer.wpe.weight}
    for name, m in block_linears(model).items():
        out[f"{name}.weight"] = m.weight
    return out


def fake_quantize_(model: GPT, bits: int = 8, granularity: str | int = "channel", symmetric: bool = True,
                   blocks_only: bool = False) -> GPT:
    """Replace every compressible weight of `model` (in place) by dequantize(quantize(w)); returns it.
    blocks_only: only the blocks' Linear weights (the embeddings stay in float), the set GPTQ quantizes."""
    with torch.no_grad():
        for name, w in compressible_weights(model).items():
            if not blocks_only or name.startswith("transformer.h."):
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


# ----------------------------------------------------------------------------------------------
# Activations: observers, integer matmul

@dataclass
class InputStats:
    """What `observe_inputs` saw of one layer's inputs x (..., I) over a calibration set: the smallest and
    largest value (`lo`, `hi`: what torch.ao's MinMaxObserver keeps), every input channel's largest |x|
    (`channel_absmax`, (I,)) and the number of tokens (rows) seen."""

    lo: Tensor
    hi: Tensor
    channel_absmax: Tensor
    n_tokens: int

    def outlier_ratio(self) -> float:
        """Largest channel's max |x| over the median channel's: ≫ 1 means a few outlier features dominate
        the per-tensor range (LLM.int8() reports outlier features up to 20x larger than the other
        dimensions in large models)."""
        return float(self.channel_absmax.max() / self.channel_absmax.median().clamp(min=1e-12))


def _default_linears(model: nn.Module) -> dict[str, nn.Module]:
    if isinstance(model, GPT):
        return dict(block_linears(model))
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _run(model: Callable[[Tensor], object], batches: Iterable[Tensor], who: str) -> int:
    """Run `model` (an nn.Module in eval mode, or any callable; no gradients) on every batch; returns how
    many there were."""
    was, n = getattr(model, "training", False), 0
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                try:
                    model(x)
                except _Stop:
                    pass
                n += 1
    finally:
        if isinstance(model, nn.Module):
            model.train(was)
    if not n:
        raise ValueError(f"{who}: the calibration batches are empty")
    return n


class _Stop(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is not needed."""


def observe_inputs(model: nn.Module, batches: Iterable[Tensor],
                   modules: dict[str, nn.Module] | None = None) -> dict[str, InputStats]:
    """Run `model` on the calibration `batches` (each what model(x) takes, e.g. token ids (B, T)) and record
    the inputs of `modules` (default: a GPT's block Linears, else every nn.Linear): {name: InputStats}."""
    with torch.no_grad():
        modules = _default_linears(model) if modules is None else modules
        if not modules:
            raise ValueError("observe_inputs: no modules to observe (the model has no nn.Linear)")
        stats: dict[str, list] = {}

        def hook_for(name: str):
            def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
                x = inputs[0].detach().flatten(0, -2).float()  # (N, I)
                lo, hi, cmax = x.min(), x.max(), x.abs().amax(dim=0)  # (), (), (I,)
                if name in stats:
                    s = stats[name]
                    s[0], s[1], s[2] = torch.minimum(s[0], lo), torch.maximum(s[1], hi), torch.maximum(s[2], cmax)
                    s[3] += x.shape[0]
                else:
                    stats[name] = [lo, hi, cmax, x.shape[0]]
            return hook

        handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in modules.items()]
        try:
            _run(model, batches, "observe_inputs")
        finally:
            for h in handles:
                h.remove()
        missing = [name for name in modules if name not in stats]
        if missing:
            raise ValueError(f"observe_inputs: the forward pass never called {missing}")
        return {name: InputStats(*s) for name, s in stats.items()}


def activation_qparams(lo: Tensor | float, hi: Tensor | float, bits: int = 8,
                       symmetric: bool = False) -> tuple[Tensor, Tensor]:
    """Scale and zero point for activations in [lo, hi] (the range is stretched to include 0, so a zero input,
    e.g. padding, is exact). Affine (default, uint8 for 8 bits): scale = (hi - lo) / (2^b - 1), zero point
    round(-lo / scale), torch.ao's MinMaxObserver formula; symmetric: max(|lo|, |hi|) / (2^(b-1) - 1), 0."""
    _check_bits(bits)
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    if bool((lo > hi).any()):
        raise ValueError(f"activation_qparams: lo must be ≤ hi, got lo={lo.tolist()}, hi={hi.tolist()}")
    return _grid(lo, hi, bits, symmetric)


def quantize_activation(x: Tensor, scale: Tensor | float, zero_point: Tensor | float, bits: int = 8,
                        symmetric: bool = False) -> Tensor:
    """The integers clamp(round(x / scale) + zero_point, qmin, qmax) of activations x (any shape), with a
    fixed (static) scale and zero point: uint8 for 8-bit affine, else int8. Values outside the calibrated
    range are clipped to its ends."""
    _check_bits(bits)
    scale, zero = torch.as_tensor(scale, dtype=torch.float32), torch.as_tensor(zero_point, dtype=torch.float32)
    return _round(x.float(), scale, zero, bits, symmetric).to(_int_dtype(bits, symmetric))


def quantize_per_token(x: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """Dynamic symmetric quantization with one scale per token (row of the last axis): x (..., I) →
    (q (..., I) int8, scale (..., 1)) with scale = max_i |x_i| / (2^(b-1) - 1) computed from x itself.
    An outlier token then costs precision to itself only."""
    _check_bits(bits)
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise ValueError(f"quantize_per_token: x must be a float tensor (..., I), got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    x = x.float()
    absmax = x.abs().amax(dim=-1, keepdim=True)  # (..., 1)
    scale, zero = _grid(-absmax, absmax, bits, symmetric=True)
    return _round(x, scale, zero, bits, True).to(torch.int8), scale


def _column(t: Tensor | float, n: int, who: str, name: str, dtype: torch.dtype) -> Tensor:
    """A per-tensor value as (1, 1) or a per-row value as (n, 1)."""
    t = torch.as_tensor(t)
    if t.numel() == 1:
        return t.reshape(1, 1).to(dtype)
    if t.numel() != n:
        raise ValueError(f"{who}: {name} must hold 1 value (per tensor) or {n} (one per row), got shape "
                         f"{tuple(t.shape)}")
    return t.reshape(n, 1).to(dtype)


def _int_products(xq: Tensor, wq: Tensor) -> Tensor:
    """Σ_k x_q[n, k] w_q[o, k] (N, O) summed in int32. 8-bit inputs go to the int8 × int8 → int32 kernel
    (torch._int_mm); uint8 activations are shifted into int8 first, x_q = (x_q - 128) + 128, which adds
    128 Σ_k w_q[o, k]. Other integer types (or no such kernel): an int32 matrix product."""
    if xq.dtype in (torch.int8, torch.uint8) and wq.dtype == torch.int8 and hasattr(torch, "_int_mm"):
        shift = 128 if xq.dtype == torch.uint8 else 0
        x8 = (xq.to(torch.int16) - shift).to(torch.int8)  # (N, I)
        try:
            acc = torch._int_mm(x8, wq.T)  # (N, O) int32
            return acc + shift * wq.sum(dim=1, dtype=torch.int32)[None, :] if shift else acc
        except RuntimeError:  # a device or shape the kernel does not take
            pass
    return xq.to(torch.int32) @ wq.to(torch.int32).T  # (N, O)


def integer_linear(xq: Tensor, x_scale: Tensor | float, x_zero: Tensor | int, wq: Tensor, w_scale: Tensor | float,
                   w_zero: Tensor | int = 0, bias: Tensor | None = None) -> Tensor:
    """y = s_x s_w Σ_k (x_q - z_x)(w_q - z_w) + b, the Linear of Jacob et al. (2018), eqs. (4)-(8), with
    the sum over k (I terms) done in int32 and expanded into the integer product and its cross terms:

        acc[n, o] = Σ_k x_q[n,k] w_q[o,k] - z_w[o] Σ_k x_q[n,k] - z_x[n] Σ_k w_q[o,k] + I z_x[n] z_w[o]

    so the main product runs on the raw 8-bit integers. xq (N, I) and wq (O, I) integer tensors;
    x_scale, x_zero one value or one per token (N,); w_scale, w_zero one value or one per output row (O,);
    bias (O,) float. Returns y (N, O) float32: acc to float, times s_x s_w, plus b."""
    who = "integer_linear"
    for name, t in (("xq", xq), ("wq", wq)):
        if not isinstance(t, Tensor) or t.dim() != 2 or t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"{who}: {name} must be a 2-D integer tensor, got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
    (N, I), (O, I2) = xq.shape, wq.shape
    if I != I2:
        raise ValueError(f"{who}: xq has {I} input columns but wq has {I2}: wq must be (O, I) for xq (N, I)")
    if bias is not None and bias.shape != (O,):
        raise ValueError(f"{who}: bias must have shape (O,) = ({O},), got {tuple(bias.shape)}")
    xz = _column(x_zero, N, who, "x_zero", torch.int32)  # (N, 1) or (1, 1)
    wz = _column(w_zero, O, who, "w_zero", torch.int32).T  # (1, O) or (1, 1)
    x_sum = xq.sum(dim=1, keepdim=True, dtype=torch.int32)  # (N, 1) Σ_k x_q
    w_sum = wq.sum(dim=1, dtype=torch.int32)[None, :]  # (1, O) Σ_k w_q
    acc = _int_products(xq, wq)  # (N, O) Σ_k x_q w_q, int32: |x_q w_q| ≤ 255 · 128, I of them fit for I < 65,000
    acc += I * xz * wz - wz * x_sum - xz * w_sum  # (N, O) the zero-point cross terms
    scale = _column(x_scale, N, who, "x_scale", torch.float32) * _column(w_scale, O, who, "w_scale", torch.float32).T
    y = acc.to(torch.float32) * scale  # (N, O)
    return y if bias is None else y + bias.to(torch.float32)


def requantize(y: Tensor, scale: Tensor | float, zero_point: Tensor | int, bits: int = 8) -> Tensor:
    """The output of an integer layer back to b bits for the next one: clamp(round(y / scale) + zero_point,
    0, 2^b - 1) as uint8 (8 bits); y float (any shape)."""
    return quantize_activation(y, scale, zero_point, bits, symmetric=False)


ACTIVATION_MODES = ("static", "dynamic", "token")


class Int8Linear(nn.Module):
    """A Linear computed with 8-bit integers (`integer_linear`): weights int8 symmetric per output row
    (zero point 0), activations quantized on the way in by one of three rules:

    - "static": uint8 affine, one scale and zero point fixed in advance from a calibration range (`stats`);
    - "dynamic": uint8 affine, one scale and zero point from each call's own min/max (torch.ao's
      quantize_dynamic);
    - "token": int8 symmetric, one scale per token (row), from each call's own rows.

    The output is float (s_x s_w acc + bias); x (..., I) → (..., O)."""

    def __init__(self, linear: nn.Linear, mode: str = "static", stats: InputStats | None = None) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear wraps an nn.Linear, got {type(linear).__name__}")
        if mode not in ACTIVATION_MODES:
            raise ValueError(f"Int8Linear: mode must be one of {ACTIVATION_MODES}, got {mode!r}")
        if mode == "static" and stats is None:
            raise ValueError("Int8Linear: mode 'static' needs the calibration range (stats from observe_inputs)")
        self.in_features, self.out_features, self.mode = linear.in_features, linear.out_features, mode
        w = quantize(linear.weight, 8, "channel", symmetric=True)
        self.register_buffer("wq", w.q.reshape(self.out_features, self.in_features))  # (O, I) int8
        self.register_buffer("w_scale", w.scale.flatten())  # (O,)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        if mode == "static":
            x_scale, x_zero = activation_qparams(stats.lo, stats.hi, 8)
            self.register_buffer("x_scale", x_scale)
            self.register_buffer("x_zero", x_zero)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear: input must end in in_features={self.in_features}, got {tuple(x.shape)}")
        lead, x2 = x.shape[:-1], x.reshape(-1, self.in_features)  # (N, I)
        if self.mode == "token":
            xq, x_scale = quantize_per_token(x2)  # (N, I) int8, (N, 1)
            x_zero = 0
        else:
            if self.mode == "static":
                x_scale, x_zero = self.x_scale, self.x_zero
            else:
                x_scale, x_zero = activation_qparams(x2.min(), x2.max(), 8)
            xq = quantize_activation(x2, x_scale, x_zero)  # (N, I) uint8
        y = integer_linear(xq, x_scale, x_zero, self.wq, self.w_scale, 0, self.bias)  # (N, O)
        return y.to(x.dtype).reshape(*lead, self.out_features)  # (..., O)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activations={self.mode}"


def int8_linears_(model: GPT, mode: str = "static", batches: Iterable[Tensor] | None = None) -> GPT:
    """Replace every Linear of a GPT's blocks (in place) by an `Int8Linear` with activations `mode`
    ("static": scales from `observe_inputs` on the calibration `batches`, token ids (B, T), run on the float
    model first; "dynamic" or "token": no calibration). The embeddings and the output head stay in float.
    Returns the model."""
    with torch.no_grad():
        linears = block_linears(model)
        if mode not in ACTIVATION_MODES:
            raise ValueError(f"int8_linears_: mode must be one of {ACTIVATION_MODES}, got {mode!r}")
        if mode == "static" and batches is None:
            raise ValueError("int8_linears_: mode 'static' needs calibration batches (token ids (B, T))")
        stats = observe_inputs(model, batches, linears) if mode == "static" else {}
        for name, lin in linears.items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, Int8Linear(lin, mode, stats.get(name)))
        return model


# ----------------------------------------------------------------------------------------------
# GPTQ

def gptq_quantize(w: Tensor, H: Tensor, bits: int = 4, granularity: str | int = "channel", symmetric: bool = True,
                  damp: float = 0.01, block_size: int = 128) -> Quantized:
    """GPTQ (Frantar et al. 2023, Algorithm 1): quantize w (O, I) column by column, minimising
    ‖W X - Ŵ X‖² for the layer inputs X whose Hessian is H = 2 X Xᵀ (I, I).

    After column j is rounded, its error e = (w_j - ŵ_j) / [H⁻¹]_jj is spread over the columns k > j not yet
    quantized, w_k -= e [H⁻¹]_jk: the optimal brain surgeon update (eq. (2)) with H⁻¹ of the columns still
    free, whose rows are those of the upper Cholesky factor U of H⁻¹ = Uᵀ U (section 3, step 3). The
    updates are applied lazily: inside a block of `block_size` columns at once, to the later columns once
    per block. `damp` adds damp · mean(diag H) to the diagonal (a Hessian of inputs that never vary is
    singular); a column whose input is always 0 (H_jj = 0) is set to 0.
    The grid is round-to-nearest's (`quantize`'s): per tensor or per row from the original weights, or, for
    groups of g columns, from the group's weights as updated when GPTQ reaches it. Returns a `Quantized`
    laid out as `quantize`'s (same `dequantize`, `nbytes`)."""
    who = "gptq_quantize"
    _check_bits(bits)
    _check_weight(w, who)
    O, I = w.shape
    _check_granularity(granularity, I, who)
    if not isinstance(H, Tensor) or H.shape != (I, I) or not H.is_floating_point():
        raise ValueError(f"{who}: H must be a float (I, I) = ({I}, {I}) matrix, the Hessian 2 X Xᵀ of the layer's "
                         f"inputs, got {getattr(H, 'dtype', type(H).__name__)} {tuple(getattr(H, 'shape', ()))}")
    if not damp >= 0:
        raise ValueError(f"{who}: damp must be ≥ 0 (a fraction of H's mean diagonal), got {damp}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{who}: block_size must be a positive int, got {block_size!r}")
    W = w.detach().to(torch.float64).clone()  # (O, I), updated as columns are quantized
    H = H.detach().to(torch.float64).clone()  # (I, I)
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0  # inputs that are always zero: their weights are never used
    W[:, dead] = 0.0
    H += damp * torch.diagonal(H).mean() * torch.eye(I, dtype=H.dtype, device=H.device)
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)  # (I, I), H⁻¹ = UᵀU
    except torch.linalg.LinAlgError as err:
        raise ValueError(f"{who}: H is not positive definite even after damping ({damp}); raise damp") from err
    group = granularity if isinstance(granularity, int) else None
    if group is not None:
        block_size = max(group, block_size - block_size % group)  # whole groups in a block
    else:
        whole = W.reshape(1, O * I) if granularity == "tensor" else W  # (1, OI) or (O, I)
        scale, zero = _grid(whole.amin(1, keepdim=True), whole.amax(1, keepdim=True), bits, symmetric)  # (O|1, 1)
    Q = torch.zeros_like(W)  # (O, I) the integers
    scales, zeros = [], []
    for i1 in range(0, I, block_size):
        i2 = min(i1 + block_size, I)
        W1 = W[:, i1:i2].clone()  # (O, b) this block's columns, updated in place
        E1 = torch.zeros_like(W1)  # (O, b) the scaled errors e
        U1 = U[i1:i2, i1:i2]  # (b, b)
        for j in range(i2 - i1):
            if group is not None and (i1 + j) % group == 0:
                g = W1[:, j:j + group]  # (O, g) the group's current weights
                scale, zero = _grid(g.amin(1, keepdim=True), g.amax(1, keepdim=True), bits, symmetric)  # (O, 1)
                scales.append(scale)
                zeros.append(zero)
            col = W1[:, j:j + 1]  # (O, 1)
            q = _round(col, scale, zero, bits, symmetric)  # (O, 1)
            Q[:, i1 + j:i1 + j + 1] = q
            e = (col - scale * (q - zero)) / U1[j, j]  # (O, 1)
            W1[:, j:] -= e * U1[j:j + 1, j:]  # (O, b - j): the columns after j in this block
            E1[:, j:j + 1] = e
        W[:, i2:] -= E1 @ U[i1:i2, i2:]  # (O, I - i2): the lazy update of the later blocks
    if group is not None:
        scale, zero = torch.stack(scales, 1), torch.stack(zeros, 1)  # (O, G, 1) each
        Qg = rearrange(Q, "o (g k) -> o g k", k=group)  # (O, G, g)
    else:
        scale, zero = scale[:, None], zero[:, None]  # (O|1, 1, 1)
        Qg = _groups(Q, granularity)  # (1, 1, OI) or (O, 1, I)
    return Quantized(Qg.to(_int_dtype(bits, symmetric)), scale.float(), zero.float(), bits, w.shape)


def input_hessian(model: Callable[[Tensor], object], module: nn.Module, batches: Iterable[Tensor]) -> Tensor:
    """H = (2 / N) Σ_n x_n x_nᵀ (I, I) over the N input vectors x_n (rows of module's input (..., I)) that
    `module` receives while `model` (a module or any callable containing it) runs on `batches` (GPTQ's
    Hessian of ‖W X - Ŵ X‖², averaged). The forward pass stops at `module` (what comes after it is not
    needed)."""
    with torch.no_grad():
        acc: list = []

        def hook(m: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].detach().flatten(0, -2).to(torch.float64)  # (N, I)
            if acc:
                acc[0] += x.T @ x
                acc[1] += x.shape[0]
            else:
                acc.extend([x.T @ x, x.shape[0]])
            raise _Stop

        handle = module.register_forward_pre_hook(hook)
        try:
            _run(model, batches, "input_hessian")
        finally:
            handle.remove()
        if not acc:
            raise ValueError("input_hessian: the forward pass never called the module")
        return 2 * acc[0] / acc[1]


def gptq_quantize_model_(model: GPT, batches: list[Tensor], bits: int = 4, granularity: str | int = "channel",
                         symmetric: bool = True, damp: float = 0.01, block_size: int = 128) -> GPT:
    """GPTQ every Linear of a GPT's blocks (in place), one after another in the order of the forward pass:
    each layer's Hessian is collected on the calibration `batches` (token ids (B, T)) with every earlier
    layer already quantized, so it corrects the errors made before it (the paper's sequential
    quantization). The inputs of each block are kept between layers (the forward pass of `GPT.forward`:
    embeddings, then the blocks one by one), so the model is not rerun from the start for every layer.
    The weights are replaced by their dequantized values (fake quantization, like
    `fake_quantize_(..., blocks_only=True)`); the embeddings and the output head stay in float. Returns it."""
    with torch.no_grad():
        _check_gpt(model)
        _check_bits(bits)
        batches = list(batches)
        if not batches:
            raise ValueError("gptq_quantize_model_: the calibration batches are empty")
        was = model.training
        model.eval()
        try:
            for idx in batches:
                model._check_ids(idx)
            hidden = [model._embed(idx, 0) for idx in batches]  # each (B, T, C)
            for block in model.transformer.h:
                for lin in (m for m in block.modules() if isinstance(m, nn.Linear)):
                    H = input_hessian(lambda x: block(x, is_causal=True), lin, hidden)  # (I, I)
                    q = gptq_quantize(lin.weight, H, bits, granularity, symmetric, damp, block_size)
                    lin.weight.copy_(q.dequantize().to(lin.weight.dtype))
                hidden = [block(x, is_causal=True) for x in hidden]  # the next block's inputs, this one quantized
        finally:
            model.train(was)
        return model


# ----------------------------------------------------------------------------------------------
# Quantization-aware training

class _FakeQuantSTE(torch.autograd.Function):
    """Forward: scale (clamp(round(x / scale) + zero, qmin, qmax) - zero). Backward: the straight-through
    estimator, gradient 1 where round(x / scale) + zero lies in [qmin, qmax], 0 where it was clipped."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero: Tensor, qmin: int, qmax: int) -> Tensor:
        q = torch.round(x / scale) + zero
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return scale * (torch.clamp(q, qmin, qmax) - zero)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize_ste(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Fake quantization with a straight-through gradient (Bengio et al. 2013; Jacob et al. 2018, section 3):
    the value scale (clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point), whose gradient with
    respect to x is 1 inside the range and 0 where the value was clipped (round has gradient 0 almost
    everywhere, so the STE pretends it is the identity). scale, zero_point broadcast to x; no gradient
    flows to them."""
    if not isinstance(qmin, int) or not isinstance(qmax, int) or qmin >= qmax:
        raise ValueError(f"fake_quantize_ste: need integers qmin < qmax, got {qmin!r}, {qmax!r}")
    scale, zero_point = torch.as_tensor(scale).to(x), torch.as_tensor(zero_point).to(x)
    if bool((scale <= 0).any()):
        raise ValueError("fake_quantize_ste: every scale must be > 0")
    return _FakeQuantSTE.apply(x, scale.detach(), zero_point.detach(), qmin, qmax)


class WeightFakeQuant(nn.Module):
    """A parametrization (torch.nn.utils.parametrize) that shows a layer its weight w (O, I) as
    `quantize(w, bits, granularity, symmetric).dequantize()`, with round-to-nearest's scales recomputed
    from w at every call and the straight-through gradient: the weights train in float, the model computes
    with their quantized values."""

    def __init__(self, bits: int, granularity: str | int = "channel", symmetric: bool = True) -> None:
        super().__init__()
        _check_bits(bits)
        self.bits, self.granularity, self.symmetric = bits, granularity, symmetric

    def forward(self, w: Tensor) -> Tensor:
        _check_granularity(self.granularity, w.shape[1], "WeightFakeQuant")
        x = _groups(w, self.granularity)  # (…, g)
        with torch.no_grad():
            scale, zero = _grid(x.amin(-1, keepdim=True), x.amax(-1, keepdim=True), self.bits, self.symmetric)
        qmin, qmax = _levels(self.bits, self.symmetric)
        return _FakeQuantSTE.apply(x, scale, zero, qmin, qmax).reshape(w.shape)  # (O, I)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, granularity={self.granularity!r}, symmetric={self.symmetric}"


def qat_prepare_(model: GPT, bits: int = 4, granularity: str | int = "channel", symmetric: bool = True,
                 blocks_only: bool = False) -> GPT:
    """Make `model` compute with fake-quantized weights while it trains (in place): a `WeightFakeQuant` on
    every compressible weight (the blocks' Linears, and unless `blocks_only` the token table, tied to the
    output head, and the position table), so `fake_quantize_`'s quantization is what the loss sees.
    Train it as usual, then `qat_finalize_`. Returns the model."""
    _check_gpt(model)
    if parametrize.is_parametrized(model.transformer.wte) or any(
            parametrize.is_parametrized(m) for m in block_linears(model).values()):
        raise ValueError("qat_prepare_: the model is already prepared (call qat_finalize_ first)")
    fq = WeightFakeQuant(bits, granularity, symmetric)
    modules = list(block_linears(model).values())
    if not blocks_only:
        tied = model.lm_head.weight is model.transformer.wte.weight
        modules += [model.transformer.wte, model.transformer.wpe] + ([model.lm_head] if tied else [])
    for m in modules:
        parametrize.register_parametrization(m, "weight", fq)
    return model


def qat_finalize_(model: GPT) -> GPT:
    """Undo `qat_prepare_` keeping the quantized values: every parametrized weight becomes a plain parameter
    holding its fake-quantized value (the tied token table and output head stay one tensor). Returns it."""
    with torch.no_grad():
        _check_gpt(model)
        head, wte = model.lm_head, model.transformer.wte
        if parametrize.is_parametrized(head) and parametrize.is_parametrized(wte) and \
                head.parametrizations.weight.original is wte.parametrizations.weight.original:
            parametrize.remove_parametrizations(head, "weight", leave_parametrized=False)  # back to the shared tensor
            parametrize.remove_parametrizations(wte, "weight", leave_parametrized=True)  # quantized in place
            head.weight = wte.weight
        for m in [wte, model.transformer.wpe, *block_linears(model).values()]:
            if parametrize.is_parametrized(m):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        return model
