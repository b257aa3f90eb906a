"""CLIP: an image tower and a text tower trained to agree, with OpenAI's checkpoint names.

- Radford et al. (2021), "Learning transferable visual models from natural language supervision":
  section 2.3 (figure 3), the contrastive objective: embed a batch of B images and their B captions,
  L2-normalise, take all B×B cosine similarities times a learned temperature, and apply cross-entropy
  in both directions (each image must pick its caption among the B, each caption its image)
  →  `CLIP.forward`, `clip_loss`;
  section 2.4, the image towers: a ResNet-50 with the "ResNet-D" changes of He et al. (2019, "Bag of
  tricks for image classification with convolutional neural networks"), the anti-aliased downsampling
  of Zhang (2019, "Making convolutional networks shift-invariant again") and attention pooling instead
  of global average pooling  →  `ModifiedResNet`, `Bottleneck`, `AttentionPool2d`; or a Vision
  Transformer with an extra LayerNorm before the blocks  →  chapter 8's `utils.vit.VisionTransformer`
  with `ViTConfig(patch_bias=False, ln_pre=True, activation="quick_gelu", eps=1e-5, output_dim=E)`;
  and the text tower: a GPT-2-style causal Transformer over lower-cased byte-level BPE ids (chapter 7's
  blocks, `utils.transformer.EncoderLayer`), read at the end-of-text token, LayerNorm, linear
  projection  →  `CLIP.encode_text`; the tokenizer is `utils.text.CLIPTokenizer`;
  section 2.5, the temperature: initialised to 0.07 (logit_scale = ln(1/0.07)) and clipped so that
  the logits are never scaled by more than 100  →  `CLIP.logit_scale`, used as exp(logit_scale) in the
  forward pass (as OpenAI's model does) and clamped in place to [0, ln 100] after every optimizer step
  by `CLIP.clamp_logit_scale_` (as open_clip's training loop does).

Checkpoint names. Every parameter is named as in OpenAI's released CLIP models (and open_clip's
"-quickgelu" models, which share them), so `CLIP.load_state_dict(openai_state_dict, strict=True)`
works with no renaming, and `build_model(state_dict)` reads every size off the tensors' shapes. The
one name that differs inside the book's blocks is the fused attention projection: chapter 6's
`MultiHeadAttention` holds it in a Linear `in_proj` (keys `attn.in_proj.weight/.bias`), OpenAI's
nn.MultiheadAttention as `attn.in_proj_weight/_bias`. CLIP registers state-dict hooks on its
attention modules, so `state_dict()` writes OpenAI's keys and `load_state_dict` accepts either.

Converter. Hugging Face's `CLIPModel` (ViT towers only) stores q, k, v as three Linears and both
projections as bias-free Linears (weight (E, C), where OpenAI's Parameter is (C, E)); `_HF_TOP` and
`_HF_BLOCK` are the whole table. HF's text pooling differs in one detail: with a config whose
`eos_token_id` is not 2, it takes the *first* position holding `eos_token_id`, where OpenAI takes the
(first) argmax of the ids; the two agree whenever no id in a text is larger than the end token's, as
with the CLIP tokenizer, whose end token is the largest id of the vocabulary.

Two numerical details of OpenAI's model are kept and explained where they live: QuickGELU
(x·σ(1.702x), `utils.transformer.quick_gelu`; OpenAI trained with it, so the exact GELU gives
slightly different features from the same weights) and `LayerNorm` computed in float32.

Letter legend (shape comments):
    B  batch size (images or texts)   B_i, B_t  images, texts       S  image side in pixels
    G  feature-map side (S/32 ResNet, S/P ViT)   N  G² positions    C  channels / width
    H  heads     D  head dim (C = H * D)     T  text positions (≤ context_length)
    V  vocabulary size     E  embed_dim, the shared embedding      L  layers
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .attention import MultiHeadAttention, scaled_dot_product_attention
from .data import reachable
from .text import CLIPTokenizer
from .transformer import ACTIVATIONS, Transformer
from .vit import VisionTransformer, ViTConfig

__all__ = [
    "CLIPVisionConfig", "CLIPTextConfig", "CLIPConfig", "LayerNorm", "Bottleneck", "AttentionPool2d",
    "ModifiedResNet", "CLIP", "clip_loss", "config_from_state_dict", "build_model",
    "from_hf_clip_state_dict", "to_hf_clip_state_dict", "OPENAI_MODELS", "CLIPTokenizer",
]

LOGIT_SCALE_MAX = math.log(100.0)  # the logits are never multiplied by more than 100 (section 2.5)


# ----------------------------------------------------------------------------------------------
# Configuration

def _check_int(who: str, **values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{who}: {name} must be a positive int, got {value!r}")


def _heads(who: str, width: int, head_width: int) -> int:
    if width % head_width:
        raise ValueError(f"{who}: width {width} is not divisible by head_width={head_width}; heads = width / "
                         "head_width must be whole (OpenAI's models use 64-wide heads)")
    return width // head_width


@dataclass
class CLIPVisionConfig:
    """The image tower: a Vision Transformer when `layers` is an int, a ModifiedResNet when it is four ints
    (blocks per stage). Defaults: OpenAI's ViT-B/32."""

    image_size: int = 224  # S
    layers: int | tuple[int, int, int, int] = 12  # ViT: L blocks; ResNet: blocks in each of the 4 stages
    width: int = 768  # ViT: C; ResNet: the stem's channels (stage k has width·2^k·4 outputs, the last 32·width)
    patch_size: int = 32  # ViT only: P
    head_width: int = 64  # D: heads = width / D (ViT), 32·width / D (the ResNet's attention pool)

    def __post_init__(self) -> None:
        who = "CLIPVisionConfig"
        if isinstance(self.layers, list):
            self.layers = tuple(self.layers)
        if isinstance(self.layers, tuple):
            if len(self.layers) != 4:
                raise ValueError(f"{who}: a ModifiedResNet has 4 stages, so layers must be 4 ints, got {self.layers}")
            _check_int(who, **{f"layers[{k}]": n for k, n in enumerate(self.layers)})
        else:
            _check_int(who, layers=self.layers)
        _check_int(who, image_size=self.image_size, width=self.width, patch_size=self.patch_size,
                   head_width=self.head_width)
        if self.kind == "resnet" and self.image_size % 32:
            raise ValueError(f"{who}: a ModifiedResNet shrinks images 32-fold, so image_size must be a multiple of "
                             f"32, got {self.image_size} (e.g. {max(32, self.image_size - self.image_size % 32)})")
        if self.kind == "vit" and self.image_size % self.patch_size:
            raise ValueError(f"{who}: image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        _heads(who, self.embed_width, self.head_width)

    @property
    def kind(self) -> str:
        """"vit" or "resnet"."""
        return "resnet" if isinstance(self.layers, tuple) else "vit"

    @property
    def embed_width(self) -> int:
        """Width of the tokens that the last attention reads: C (ViT) or 32·width (ResNet, after layer4)."""
        return self.width if self.kind == "vit" else 32 * self.width

    @property
    def heads(self) -> int:
        return self.embed_width // self.head_width

    @property
    def grid_size(self) -> int:
        """G: the side of the last feature map, whose G² + 1 positions the position embedding covers."""
        return self.image_size // (self.patch_size if self.kind == "vit" else 32)


@dataclass
class CLIPTextConfig:
    """The text tower. Defaults: OpenAI's RN50, RN101, ViT-B/32 and ViT-B/16 (larger models: wider towers)."""

    context_length: int = 77  # positions, the start and end tokens included
    vocab_size: int = 49408  # V: CLIPTokenizer's vocabulary
    width: int = 512  # C
    layers: int = 12  # L
    head_width: int = 64  # D: heads = width / D

    def __post_init__(self) -> None:
        who = "CLIPTextConfig"
        _check_int(who, context_length=self.context_length, vocab_size=self.vocab_size, width=self.width,
                   layers=self.layers, head_width=self.head_width)
        if self.context_length < 2:
            raise ValueError(f"{who}: context_length must be ≥ 2 (the start and end tokens), "
                             f"got {self.context_length}")
        _heads(who, self.width, self.head_width)

    @property
    def heads(self) -> int:
        return self.width // self.head_width


@dataclass
class CLIPConfig:
    """A CLIP model's sizes. Defaults: OpenAI's ViT-B/32; `CLIPConfig.small()` trains on a CPU in minutes.

    `activation` is the MLP non-linearity of every Transformer block: "quick_gelu" for OpenAI's weights
    (and open_clip's "-quickgelu" configs), "gelu" for open_clip's others. `vision` and `text` accept
    dicts of their fields.
    """

    embed_dim: int = 512  # E: the shared image-text embedding
    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    activation: str = "quick_gelu"
    eps: float = 1e-5  # LayerNorm epsilon (torch's default, OpenAI's)
    init_logit_scale: float = math.log(1 / 0.07)  # temperature 0.07 (section 2.5)

    def __post_init__(self) -> None:
        if isinstance(self.vision, Mapping):
            self.vision = CLIPVisionConfig(**self.vision)
        if isinstance(self.text, Mapping):
            self.text = CLIPTextConfig(**self.text)
        if not isinstance(self.vision, CLIPVisionConfig) or not isinstance(self.text, CLIPTextConfig):
            raise TypeError("CLIPConfig: vision must be a CLIPVisionConfig (or dict) and text a CLIPTextConfig "
                            f"(or dict), got {type(self.vision).__name__} and {type(self.text).__name__}")
        _check_int("CLIPConfig", embed_dim=self.embed_dim)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"CLIPConfig: unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if not self.eps > 0:
            raise ValueError(f"CLIPConfig: eps must be > 0, got {self.eps}")
        if not math.isfinite(self.init_logit_scale) or not 0 <= self.init_logit_scale <= LOGIT_SCALE_MAX:
            raise ValueError(f"CLIPConfig: init_logit_scale must be finite and in [0, ln 100 = {LOGIT_SCALE_MAX:.4f}] "
                             f"(the range clamp_logit_scale_ keeps it in), got {self.init_logit_scale}")

    @classmethod
    def small(cls, tower: str = "vit", **changes: Any) -> CLIPConfig:
        """A CLIP that trains on a CPU: 32×32 images through a 4-layer ViT (patches of 4, width 64), or 64×64
        images through a one-block-per-stage ModifiedResNet of width 16 (`tower="resnet"`, a 512-wide attention
        pool with 32 heads, as RN50's); a 3-layer text tower of width 64 over 32 positions of the real CLIP
        vocabulary; heads 16 wide everywhere; E = 64. `changes` override fields."""
        if tower not in ("vit", "resnet"):
            raise ValueError(f"CLIPConfig.small: tower must be 'vit' or 'resnet', got {tower!r}")
        vision = (CLIPVisionConfig(image_size=32, layers=4, width=64, patch_size=4, head_width=16) if tower == "vit"
                  else CLIPVisionConfig(image_size=64, layers=(1, 1, 1, 1), width=16, head_width=16))
        text = CLIPTextConfig(context_length=32, width=64, layers=3, head_width=16)
        return cls(**{**dict(embed_dim=64, vision=vision, text=text), **changes})


# ----------------------------------------------------------------------------------------------
# LayerNorm in float32

class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm computed in float32 (or float64) whatever the input's dtype; returns the input's dtype.

    Why: in half precision LayerNorm is the fragile layer. Its variance squares the activations, and
    float16 overflows at 65,504, i.e. as soon as one feature lies more than 256 from the token's mean:
    a LayerNorm written out in float16 (mean, then mean of squares, as chapter 6 teaches it) then
    returns zeros (or NaN) for that token, and trained Transformers are known to carry a few outlier
    features that large. torch's fused kernel accumulates in float32 internally and is safe (measured
    on CPU, torch 2.14), but a model should not depend on which kernel runs: with this class the
    statistics and the affine map are float32 everywhere, and the parameters may stay float32 while the
    rest of the model is float16 (OpenAI's fp16 recipe). For float32 and float64 inputs it is exactly
    nn.LayerNorm.
    """

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)  # float16/bfloat16 → float32; float64 stays
        weight = None if self.weight is None else self.weight.to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def _float32_layernorms_(module: nn.Module) -> None:
    """Replace every nn.LayerNorm inside `module` by `LayerNorm` (same parameters, same name)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.LayerNorm:
                ln = LayerNorm(child.normalized_shape, eps=child.eps, elementwise_affine=child.elementwise_affine,
                               bias=child.bias is not None, device=child.weight.device, dtype=child.weight.dtype)
                ln.load_state_dict(child.state_dict())
                setattr(parent, name, ln)


# ----------------------------------------------------------------------------------------------
# Image tower A: the ModifiedResNet

class Bottleneck(nn.Module):
    """A ResNet bottleneck (1×1 → 3×3 → 1×1 convolutions, 4× expansion) that never strides a convolution.

    Where a plain ResNet downsamples with a strided convolution, CLIP averages 2×2 blocks instead:
        main path   conv1 1×1 → conv2 3×3 → avgpool(stride) → conv3 1×1
        shortcut    avgpool(stride) → 1×1 conv → BN  (`downsample.-1`, `.0`, `.1`)
    Pitfalls of a naive re-implementation:
    - Stride placement: torchvision's ResNet-50 (v1.5) strides conv2, the original ResNet conv1; CLIP
      strides neither, and pools *after* conv2, *before* conv3. Every convolution has stride 1.
    - The shortcut's pooling: a 1×1 convolution with stride 2 reads one pixel in four and throws the
      other three away (aliasing); averaging first keeps them all (ResNet-D; Zhang 2019's anti-aliasing).
      Dropping `downsample.-1` makes the shortcut's map twice the main path's and the sum fails at the
      first block of layer2; striding the 1×1 convolution instead runs and loads OpenAI's weights
      without complaint, but computes something else: only a comparison with a reference shows it.
    - The shortcut is a projection wherever the shape changes, including layer1's first block, which
      only changes channels (`downsample.-1` is then a 1×1 pool, the identity); `downsample` is absent
      otherwise.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        _check_int("Bottleneck", inplanes=inplanes, planes=planes, stride=stride)
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride > 1 or inplanes != out:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                ("1", nn.BatchNorm2d(out)),
            ]))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, inplanes, G, G) → (B, 4·planes, G/stride, G/stride)."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)  # (B, planes, G, G)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)  # (B, planes, G, G)
        out = self.bn3(self.conv3(self.avgpool(out)))  # (B, 4·planes, G/s, G/s)
        out += x if self.downsample is None else self.downsample(x)  # the shortcut, (B, 4·planes, G/s, G/s)
        return F.relu(out, inplace=True)  # in place, as torchvision: BatchNorm's backward does not need its output


class AttentionPool2d(nn.Module):
    """Attention pooling: one multi-head attention whose only query is the mean of the feature map.

        tokens = [mean of the G×G features; the G² features] + positional_embedding     (B, N+1, C)
        out    = c_proj(MultiHead(q = q_proj(tokens[0]), k = k_proj(tokens), v = v_proj(tokens)))   (B, E)

    Global average pooling weighs every position equally; here the mean is only the query, and the
    softmax decides which positions (the mean token among them) make up the image's embedding. The
    position embedding (N + 1 rows, N = G²) ties the pool to one feature-map size: G = S / 32, 7 for
    OpenAI's 224-pixel models. Parameters as OpenAI's: `positional_embedding` (N+1, C), `q_proj`,
    `k_proj`, `v_proj` (C → C) and `c_proj` (C → E), all with biases.
    """

    def __init__(self, spatial_dim: int, embed_dim: int, num_heads: int, output_dim: int | None = None) -> None:
        super().__init__()
        _check_int("AttentionPool2d", spatial_dim=spatial_dim, embed_dim=embed_dim, num_heads=num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"AttentionPool2d: embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.spatial_dim, self.num_heads = spatial_dim, num_heads
        self.positional_embedding = nn.Parameter(torch.randn(spatial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)

    def forward(self, x: Tensor, return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, C, G, G) → (B, E); with `return_attn` also the weights (B, H, N+1) of the mean token's query
        over [mean token, positions row by row]."""
        G = self.spatial_dim
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.positional_embedding.shape[1], G, G):
            raise ValueError(f"AttentionPool2d: expected a feature map (B, {self.positional_embedding.shape[1]}, {G}, "
                             f"{G}), got {tuple(x.shape)}; its position embedding has {G}×{G} + 1 rows, so the "
                             f"ModifiedResNet's input must be {32 * G}×{32 * G} pixels")
        x = rearrange(x, "b c h w -> b (h w) c")  # (B, N, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, N+1, C)
        x = x + self.positional_embedding.to(x.dtype)  # (B, N+1, C)
        q = rearrange(self.q_proj(x[:, :1]), "b t (h d) -> b h t d", h=self.num_heads)  # (B, H, 1, D)
        k = rearrange(self.k_proj(x), "b n (h d) -> b h n d", h=self.num_heads)  # (B, H, N+1, D)
        v = rearrange(self.v_proj(x), "b n (h d) -> b h n d", h=self.num_heads)  # (B, H, N+1, D)
        if return_attn:
            out, attn = scaled_dot_product_attention(q, k, v, return_attn=True)  # (B, H, 1, D), (B, H, 1, N+1)
        else:
            out, attn = F.scaled_dot_product_attention(q, k, v), None  # (B, H, 1, D)
        out = self.c_proj(rearrange(out, "b h 1 d -> b (h d)"))  # (B, E)
        return (out, attn[:, :, 0]) if return_attn else out


class ModifiedResNet(nn.Module):
    """CLIP's ResNet (Radford et al. 2021, section 2.4): a ResNet-50-like tower whose output is attention-pooled.

        stem     conv1 3×3/2 → conv2 3×3 → conv3 3×3 (each BN, ReLU) → avgpool 2   (B, width, S/4, S/4)
        layer1   Bottleneck × layers[0], width·4 channels                           (B, 4w, S/4, S/4)
        layer2-4 Bottleneck × layers[k], first block pooling by 2, channels doubling (B, 32w, S/32, S/32)
        attnpool AttentionPool2d over the (S/32)² positions                         (B, E)

    Differences from torchvision's ResNet-50 (He et al. 2019, "ResNet-C/D"): three 3×3 stem convolutions
    instead of one 7×7, average instead of max pooling after the stem, downsampling by average pooling
    inside each `Bottleneck`, and attention instead of global average pooling. Images must be exactly
    `image_size` pixels on each side: the pool's position embedding has (image_size / 32)² + 1 rows.
    """

    def __init__(self, layers: tuple[int, int, int, int], output_dim: int, heads: int, image_size: int = 224,
                 width: int = 64) -> None:
        super().__init__()
        _check_int("ModifiedResNet", output_dim=output_dim, heads=heads, image_size=image_size, width=width)
        if len(layers) != 4:
            raise ValueError(f"ModifiedResNet: layers must be 4 ints (blocks per stage), got {layers}")
        if image_size % 32:
            raise ValueError(f"ModifiedResNet: image_size must be a multiple of 32 (the tower shrinks images 32-fold), "
                             f"got {image_size}")
        self.image_size, self.output_dim = image_size, output_dim
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        for k, blocks in enumerate(layers):
            planes = width * 2 ** k
            stage = [Bottleneck(inplanes, planes, stride=1 if k == 0 else 2)]
            stage += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{k + 1}", nn.Sequential(*stage))
            inplanes = planes * Bottleneck.expansion
        self.attnpool = AttentionPool2d(image_size // 32, inplanes, heads, output_dim)

    def stem(self, x: Tensor) -> Tensor:
        """x (B, 3, S, S) → (B, width, S/4, S/4)."""
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)  # (B, width/2, S/2, S/2)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)  # (B, width/2, S/2, S/2)
        x = F.relu(self.bn3(self.conv3(x)), inplace=True)  # (B, width, S/2, S/2)
        return self.avgpool(x)  # (B, width, S/4, S/4)

    def forward_features(self, images: Tensor) -> Tensor:
        """images (B, 3, S, S) → the last feature map (B, 32·width, S/32, S/32), before the attention pool."""
        S = self.image_size
        if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() != 4 \
                or images.shape[1] != 3:
            got = f"shape {tuple(images.shape)}, dtype {images.dtype}" if isinstance(images, Tensor) else \
                type(images).__name__
            raise ValueError(f"ModifiedResNet: images must be a float tensor (B, 3, {S}, {S}), got {got}")
        if tuple(images.shape[2:]) != (S, S):
            raise ValueError(f"ModifiedResNet: expected {S}×{S} images, got {images.shape[2]}×{images.shape[3]}; the "
                             f"attention pool's position embedding has ({S}/32)² + 1 = {(S // 32) ** 2 + 1} rows, one "
                             f"per position of the {S // 32}×{S // 32} map that {S}-pixel images leave. Resize the "
                             "images, or build the model with a matching image_size")
        x = self.stem(images)  # (B, width, S/4, S/4)
        x = self.layer1(x)  # (B, 4·width, S/4, S/4)
        x = self.layer2(x)  # (B, 8·width, S/8, S/8)
        x = self.layer3(x)  # (B, 16·width, S/16, S/16)
        return self.layer4(x)  # (B, 32·width, S/32, S/32)

    def forward(self, images: Tensor, return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """images (B, 3, S, S) → (B, E); with `return_attn` also the pool's weights (B, H, N+1)."""
        return self.attnpool(self.forward_features(images), return_attn=return_attn)


# ----------------------------------------------------------------------------------------------
# The text tower's blocks

# ----------------------------------------------------------------------------------------------
# OpenAI's names for the fused attention projection (hooks on every MultiHeadAttention inside CLIP)

_OPENAI_ATTN = {"in_proj.weight": "in_proj_weight", "in_proj.bias": "in_proj_bias"}  # ours → OpenAI's


def _write_openai_keys(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: `…attn.in_proj.weight` → `…attn.in_proj_weight` (in place, order kept)."""
    rename = {prefix + ours: prefix + theirs for ours, theirs in _OPENAI_ATTN.items()}
    if not any(k in state_dict for k in rename):
        return
    items = list(state_dict.items())
    state_dict.clear()
    state_dict.update((rename.get(k, k), v) for k, v in items)


def _read_openai_keys(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: accept `…attn.in_proj_weight` as `…attn.in_proj.weight`."""
    for ours, theirs in _OPENAI_ATTN.items():
        if prefix + theirs in state_dict and prefix + ours not in state_dict:
            state_dict[prefix + ours] = state_dict.pop(prefix + theirs)


def _openai_key(key: str) -> str:
    for ours, theirs in _OPENAI_ATTN.items():
        if key.endswith(".attn." + ours):
            return key[: -len(ours)] + theirs
    return key


# ----------------------------------------------------------------------------------------------
# CLIP

class CLIP(nn.Module):
    """Contrastive Language-Image Pre-training (Radford et al. 2021) with OpenAI's module names.

        image features  = visual(images)                                          (B_i, E)
        text features   = ln_final(transformer(token_embedding(ids) + positional_embedding))
                          at each text's end-of-text token (the largest id), @ text_projection   (B_t, E)
        logits_per_image = exp(logit_scale) · normalise(image features) @ normalise(text features)^T
                                                                                   (B_i, B_t)
    exp(logit_scale) is used as it is; training keeps it at most 100 by calling `clamp_logit_scale_` after
    every optimizer step (open_clip's rule: the parameter is clamped in place to [0, ln 100]). The text tower is
    causal, so positions after the end token (padding) never influence the features; a batch of ids may
    be shorter than `context_length` (the first T position embeddings are used) but not longer.
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        if not isinstance(config, CLIPConfig):
            raise TypeError(f"CLIP takes a CLIPConfig, got {type(config).__name__}")
        c = self.config = config
        v, t = c.vision, c.text
        if v.kind == "resnet":
            self.visual: nn.Module = ModifiedResNet(v.layers, c.embed_dim, v.heads, v.image_size, v.width)
        else:
            self.visual = VisionTransformer(ViTConfig(
                image_size=v.image_size, patch_size=v.patch_size, in_channels=3, width=v.width, layers=v.layers,
                heads=v.heads, mlp_ratio=4.0, output_dim=c.embed_dim, patch_bias=False, ln_pre=True,
                activation=c.activation, eps=c.eps))
        self.transformer = Transformer(t.width, t.layers, t.heads, activation=c.activation, eps=c.eps, is_causal=True)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.ln_final = nn.LayerNorm(t.width, eps=c.eps)
        self.text_projection = nn.Parameter(torch.empty(t.width, c.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(c.init_logit_scale))
        _float32_layernorms_(self)
        for m in self.modules():
            if isinstance(m, MultiHeadAttention):
                m.register_state_dict_post_hook(_write_openai_keys)
                m.register_load_state_dict_pre_hook(_read_openai_keys)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """OpenAI's initialisation for the text tower and the ModifiedResNet (a ViT tower keeps utils.vit's,
        OpenAI's too): token embeddings N(0, 0.02²), positions N(0, 0.01²); in each block std C^-½ for attn.in_proj,
        (2C)^-½ for mlp.c_fc, and C^-½ (2L)^-½ for the two projections that end a residual branch;
        text_projection std C^-½; the attention pool's projections std C^-½; every Bottleneck's bn3 scale
        zero, so each residual block starts as the identity; logit_scale = init_logit_scale."""
        t = self.config.text
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        branch_std = t.width ** -0.5 * (2 * t.layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj.weight, std=t.width ** -0.5)
            nn.init.zeros_(block.attn.in_proj.bias)
            nn.init.normal_(block.attn.out_proj.weight, std=branch_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * t.width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=branch_std)
        nn.init.normal_(self.text_projection, std=t.width ** -0.5)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(proj.weight, std=pool.c_proj.in_features ** -0.5)
            for m in self.visual.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
        with torch.no_grad():
            self.logit_scale.fill_(self.config.init_logit_scale)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (images are cast to it)."""
        return self.text_projection.dtype

    # -- the two towers --------------------------------------------------------------------------

    def encode_image(self, images: Tensor, normalize: bool = False,
                     return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """images (B_i, 3, S, S) → image features (B_i, E) (unit length if `normalize`). With `return_attn`
        also the attention maps: ViT (B_i, L, H, N+1, N+1), ModifiedResNet's pool (B_i, H, N+1)."""
        if not isinstance(images, Tensor) or not images.is_floating_point():
            got = f"a {images.dtype} tensor" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"encode_image: images must be a float tensor (B, 3, S, S), got {got}")
        out = self.visual(images.to(self.dtype), return_attn=return_attn)
        features, attn = out if return_attn else (out, None)  # (B_i, E)
        if normalize:
            features = F.normalize(features, dim=-1)
        return (features, attn) if return_attn else features

    def _check_text(self, text: Any) -> None:
        t = self.config.text
        if not isinstance(text, Tensor) or text.dim() != 2 or text.dtype not in (torch.int64, torch.int32):
            got = f"shape {tuple(text.shape)}, dtype {text.dtype}" if isinstance(text, Tensor) else type(text).__name__
            raise ValueError(f"encode_text: text must be int64 (or int32) token ids of shape (B, T), as CLIPTokenizer "
                             f"returns them, got {got}")
        if text.shape[1] > t.context_length or text.shape[1] == 0:
            raise ValueError(f"encode_text: the ids have {text.shape[1]} positions, but this model reads 1 to "
                             f"context_length={t.context_length} (one position embedding each); tokenize with "
                             f"CLIPTokenizer(context_length={t.context_length}), which truncates longer texts and "
                             "ends them with <end_of_text>")
        lo, hi = int(text.min()), int(text.max())
        if lo < 0 or hi >= t.vocab_size:
            raise ValueError(f"encode_text: token ids must lie in [0, {t.vocab_size}), got min {lo}, max {hi}")

    def encode_text(self, text: Tensor, normalize: bool = False,
                    return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """text (B_t, T) token ids, T ≤ context_length, each row ending in its end-of-text token (the
        largest id of the row) → text features (B_t, E) (unit length if `normalize`). With `return_attn`
        also every layer's causal attention (B_t, L, H, T, T)."""
        self._check_text(text)
        T = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:T]  # (B_t, T, C)
        out = self.transformer(x, return_attn=return_attn)
        x, attn = out if return_attn else (out, None)  # (B_t, T, C)
        x = self.ln_final(x)  # (B_t, T, C)
        eot = text.argmax(dim=-1)  # (B_t,) the end-of-text token has the largest id
        features = x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection  # (B_t, E)
        if normalize:
            features = F.normalize(features, dim=-1)
        return (features, attn) if return_attn else features

    def forward(self, images: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """images (B_i, 3, S, S), text (B_t, T) → logits_per_image (B_i, B_t), logits_per_text (B_t, B_i):
        cosine similarities times exp(logit_scale)."""
        image_features = self.encode_image(images, normalize=True)  # (B_i, E)
        text_features = self.encode_text(text, normalize=True)  # (B_t, E)
        scale = self.logit_scale.exp()
        logits_per_image = scale * image_features @ text_features.t()  # (B_i, B_t)
        return logits_per_image, logits_per_image.t()

    def clamp_logit_scale_(self) -> None:
        """Clamp logit_scale in place to [0, ln 100], so exp(logit_scale) stays in [1, 100]: call it after every
        optimizer step (`utils.train.train(..., after_step=model.clamp_logit_scale_)`), as open_clip's training
        loop does. Clamping the parameter, not its use in the forward pass, keeps the gradient: a scale that
        overshoots the cap is pulled back to it and can still move down again."""
        with torch.no_grad():
            self.logit_scale.clamp_(0, LOGIT_SCALE_MAX)

    # -- checkpoints ----------------------------------------------------------------------------

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """nn.Module.load_state_dict, accepting OpenAI's and this module's attention keys; with strict=True a
        state dict of another architecture raises RuntimeError naming the first missing and unexpected keys."""
        if strict:
            expected = list(self.state_dict())
            given = {_openai_key(k): k for k in state_dict}
            missing = [k for k in expected if k not in given]
            known = set(expected)
            unexpected = [given[k] for k in given if k not in known]
            if missing or unexpected:
                raise RuntimeError(_mismatch_message(self.config, missing, unexpected, set(given)))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_pretrained(cls, name: str = "ViT-B/32", cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False) -> CLIP:
        """OpenAI's released weights (`OPENAI_MODELS`: "RN50", "ViT-B/32", ...) in float32, eval mode.

        The weights come from the Hugging Face Hub repositories where open_clip keeps OpenAI's checkpoints
        (OpenAI's key names), downloaded once and cached (ViT-B/32 has 151 million parameters), and go
        through `build_model`. Offline, or with `local_files_only=True` and nothing cached, raises OSError
        saying so, within seconds.
        """
        if name not in OPENAI_MODELS:
            raise ValueError(f"CLIP.from_pretrained: unknown model {name!r}; OpenAI's CLIP models are "
                             f"{sorted(OPENAI_MODELS)}")
        path = _download_openai(name, cache_dir, local_files_only)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state_dict = load_file(str(path))
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        return build_model(state_dict)


def _mismatch_message(config: CLIPConfig, missing: list[str], unexpected: list[str], given: set[str]) -> str:
    kind = config.vision.kind
    theirs = "vit" if "visual.proj" in given else "resnet" if "visual.attnpool.positional_embedding" in given else None
    build = "build the model from the checkpoint itself with build_model(state_dict)"
    hint = build[0].upper() + build[1:]
    if theirs and theirs != kind:
        hint = (f"The state dict has a {'ViT' if theirs == 'vit' else 'ModifiedResNet'} image tower and this model a "
                f"{'ViT' if kind == 'vit' else 'ModifiedResNet'}; {build}")
    elif any(k.startswith(("text_model.", "vision_model.")) for k in given):
        hint = "It looks like a Hugging Face CLIPModel's: convert it with from_hf_clip_state_dict first"
    return (f"CLIP.load_state_dict: the state dict does not fit this model ({len(missing)} missing, {len(unexpected)} "
            f"unexpected keys). First missing: {missing[:5]}; first unexpected: {unexpected[:5]}. {hint}")


# ----------------------------------------------------------------------------------------------
# The contrastive loss (section 2.3, figure 3)

def clip_loss(logits_per_image: Tensor, logits_per_text: Tensor | None = None) -> Tensor:
    """Symmetric cross-entropy: image i's caption is text i, and text i's image is image i.

        loss = ( CE(logits_per_image, [0..B-1]) + CE(logits_per_text, [0..B-1]) ) / 2

    logits_per_image (B, B); logits_per_text defaults to its transpose (what CLIP.forward returns).
    When every logit is equal, each softmax is uniform over B and the loss is ln B.
    """
    if not isinstance(logits_per_image, Tensor) or logits_per_image.dim() != 2 \
            or logits_per_image.shape[0] != logits_per_image.shape[1] or logits_per_image.shape[0] == 0:
        got = tuple(logits_per_image.shape) if isinstance(logits_per_image, Tensor) else type(logits_per_image).__name__
        raise ValueError(f"clip_loss: logits_per_image must be a square (B, B) matrix, image i paired with text i, "
                         f"got {got}")
    if logits_per_text is None:
        logits_per_text = logits_per_image.t()
    elif logits_per_text.shape != logits_per_image.shape:
        raise ValueError(f"clip_loss: logits_per_text has shape {tuple(logits_per_text.shape)}, expected "
                         f"{tuple(logits_per_image.shape)}")
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)  # (B,) pair i is (i, i)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


# ----------------------------------------------------------------------------------------------
# build_model: every size read off the tensors

_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")  # scalars in OpenAI's JIT archives
_TEXT_KEYS = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection", "logit_scale")


def _count_blocks(keys: Any, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix)})


def config_from_state_dict(state_dict: Mapping[str, Tensor], head_width: int = 64,
                           text_head_width: int | None = None, activation: str = "quick_gelu") -> CLIPConfig:
    """The CLIPConfig of an OpenAI-named CLIP state dict, read off its tensors' shapes.

    Everything is in the shapes but the number of heads, which no tensor records: heads = width /
    `head_width` in the image tower and width / `text_head_width` (default: `head_width`) in the text
    tower; every OpenAI model uses 64. ViT: width and patch size from visual.conv1.weight
    (C, 3, P, P), the image size from the position table (G² + 1 rows, S = P·G), the depth from the
    block count. ModifiedResNet: blocks per stage counted, width from layer1.0.conv1, S = 32·G from the
    attention pool's position table. Text: context, vocabulary, width and depth; E from text_projection.
    """
    sd = state_dict
    missing = [k for k in _TEXT_KEYS if k not in sd]
    vit, resnet = "visual.proj" in sd, "visual.attnpool.positional_embedding" in sd
    if missing or not (vit or resnet):
        if not (vit or resnet):
            missing.append("visual.proj (ViT) or visual.attnpool.positional_embedding (ModifiedResNet)")
        hint = ("; it looks like a Hugging Face CLIPModel's: convert it with from_hf_clip_state_dict first"
                if any(k.startswith(("text_model.", "vision_model.")) for k in sd) else "")
        raise KeyError(f"config_from_state_dict: not an OpenAI CLIP state dict, missing {missing}; its first keys are "
                       f"{list(sd)[:5]}{hint}")
    if vit:
        width, _, patch, _ = sd["visual.conv1.weight"].shape
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = CLIPVisionConfig(image_size=patch * grid, layers=_count_blocks(sd, "visual.transformer.resblocks."),
                                  width=width, patch_size=patch, head_width=head_width)
    else:
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        layers = tuple(_count_blocks(sd, f"visual.layer{k}.") for k in (1, 2, 3, 4))
        vision = CLIPVisionConfig(image_size=32 * grid, layers=layers,
                                  width=sd["visual.layer1.0.conv1.weight"].shape[0], head_width=head_width)
    text = CLIPTextConfig(context_length=sd["positional_embedding"].shape[0],
                          vocab_size=sd["token_embedding.weight"].shape[0], width=sd["ln_final.weight"].shape[0],
                          layers=_count_blocks(sd, "transformer.resblocks."),
                          head_width=head_width if text_head_width is None else text_head_width)
    return CLIPConfig(embed_dim=sd["text_projection"].shape[1], vision=vision, text=text, activation=activation)


def build_model(state_dict: Mapping[str, Tensor], head_width: int = 64, text_head_width: int | None = None,
                activation: str = "quick_gelu") -> CLIP:
    """A CLIP holding `state_dict` (OpenAI's key names, e.g. an OpenAI or open_clip "-quickgelu" checkpoint),
    its config inferred by `config_from_state_dict` (heads: width / head_width); float32, eval mode.
    OpenAI's scalar entries input_resolution, context_length and vocab_size are ignored. Raises KeyError for a
    state dict that is not a CLIP's, and RuntimeError naming the first mismatched keys when it does not fit the
    inferred model."""
    sd = {k: v for k, v in state_dict.items() if k not in _OPENAI_EXTRAS}
    model = CLIP(config_from_state_dict(sd, head_width, text_head_width, activation))
    model.load_state_dict(sd, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Hugging Face CLIPModel (ViT towers) ↔ OpenAI names

_HF_TOP = {  # HF key → (OpenAI key, transposed?)
    "logit_scale": ("logit_scale", False),
    "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", False),
    "text_model.embeddings.position_embedding.weight": ("positional_embedding", False),
    "text_model.final_layer_norm.weight": ("ln_final.weight", False),
    "text_model.final_layer_norm.bias": ("ln_final.bias", False),
    "text_projection.weight": ("text_projection", True),  # Linear (E, C) → Parameter (C, E)
    "vision_model.embeddings.class_embedding": ("visual.class_embedding", False),
    "vision_model.embeddings.patch_embedding.weight": ("visual.conv1.weight", False),
    "vision_model.embeddings.position_embedding.weight": ("visual.positional_embedding", False),
    "vision_model.pre_layrnorm.weight": ("visual.ln_pre.weight", False),  # (sic: HF's spelling)
    "vision_model.pre_layrnorm.bias": ("visual.ln_pre.bias", False),
    "vision_model.post_layernorm.weight": ("visual.ln_post.weight", False),
    "vision_model.post_layernorm.bias": ("visual.ln_post.bias", False),
    "visual_projection.weight": ("visual.proj", True),  # Linear (E, C) → Parameter (C, E)
}
_HF_BLOCK = {  # inside every block: HF's → OpenAI's (q_proj, k_proj, v_proj are stacked into in_proj)
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "layer_norm2": "ln_2",
}
_HF_TOWERS = {"text_model.encoder.layers.": "transformer.resblocks.",
              "vision_model.encoder.layers.": "visual.transformer.resblocks."}


def _hf_table(depths: tuple[int, int]) -> tuple[list[tuple[str, str, bool]], list[tuple[list[str], str]]]:
    """For a CLIP with `depths` = (text blocks, vision blocks): every (HF key, OpenAI key, transposed?) pair,
    and every fused projection ([HF q, k, v keys], OpenAI key)."""
    pairs = [(hf, openai, t) for hf, (openai, t) in _HF_TOP.items()]
    fused = []
    for (hf_prefix, prefix), n in zip(_HF_TOWERS.items(), depths):
        for i in range(n):
            src, dst = f"{hf_prefix}{i}.", f"{prefix}{i}."
            for leaf in ("weight", "bias"):
                pairs += [(f"{src}{hf}.{leaf}", f"{dst}{openai}.{leaf}", False) for hf, openai in _HF_BLOCK.items()]
                fused.append(([f"{src}self_attn.{x}_proj.{leaf}" for x in "qkv"], f"{dst}attn.in_proj_{leaf}"))
    return pairs, fused


def _reject_unused(sd: Mapping[str, Tensor], used: set[str], who: str, where: str) -> None:
    unused = sorted(set(sd) - used)
    if unused:
        raise KeyError(f"{who}: keys with no place in {where}: {unused[:8]}"
                       + (f" (and {len(unused) - 8} more)" if len(unused) > 8 else "")
                       + "; supported: CLIPModel with ViT towers, biases in every attention projection")


def from_hf_clip_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face `CLIPModel` state dict → OpenAI's names (load with `build_model` or CLIP.load_state_dict).

    q_proj, k_proj, v_proj are stacked, in that order, into the fused `attn.in_proj_weight` (3C, C) and
    `in_proj_bias`; the two projections are transposed. The `position_ids` buffers of older checkpoints are
    dropped. Keys with no place in OpenAI's CLIP raise KeyError listing them."""
    sd = {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}
    pairs, fused = _hf_table(tuple(_count_blocks(sd, p) for p in _HF_TOWERS))
    out = {openai: sd[hf].t() if t else sd[hf] for hf, openai, t in pairs if hf in sd}
    used = {hf for hf, _, _ in pairs if hf in sd}
    for parts, openai in fused:
        if all(p in sd for p in parts):
            out[openai] = torch.cat([sd[p] for p in parts])  # (3C, ...): rows of q, then k, then v
            used.update(parts)
    _reject_unused(sd, used, "from_hf_clip_state_dict", "OpenAI's CLIP")
    return out


def to_hf_clip_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI-named CLIP state dict (ViT tower) → Hugging Face `CLIPModel`'s (inverse of from_hf_clip_state_dict)."""
    sd = {_openai_key(k): v for k, v in state_dict.items()}
    if "visual.proj" not in sd:
        raise KeyError("to_hf_clip_state_dict: Hugging Face's CLIPModel has a ViT image tower only; this state dict "
                       "has no visual.proj (a ModifiedResNet tower?)")
    pairs, fused = _hf_table(tuple(_count_blocks(sd, p) for p in _HF_TOWERS.values()))
    out = {hf: sd[openai].t() if t else sd[openai] for hf, openai, t in pairs if openai in sd}
    used = {openai for _, openai, _ in pairs if openai in sd}
    for parts, openai in fused:
        if openai in sd:
            out.update(zip(parts, sd[openai].chunk(3)))  # rows of q, k, v
            used.add(openai)
    _reject_unused(sd, used, "to_hf_clip_state_dict", "Hugging Face's CLIPModel")
    return out


# ----------------------------------------------------------------------------------------------
# OpenAI's weights

OPENAI_MODELS = {  # OpenAI's model name → the Hugging Face Hub repository of its weights (OpenAI's key names)
    "RN50": "timm/resnet50_clip.openai",
    "RN101": "timm/resnet101_clip.openai",
    "RN50x4": "timm/resnet50x4_clip.openai",
    "RN50x16": "timm/resnet50x16_clip.openai",
    "RN50x64": "timm/resnet50x64_clip.openai",
    "ViT-B/32": "timm/vit_base_patch32_clip_224.openai",
    "ViT-B/16": "timm/vit_base_patch16_clip_224.openai",
    "ViT-L/14": "timm/vit_large_patch14_clip_224.openai",
    "ViT-L/14@336px": "timm/vit_large_patch14_clip_336.openai",
}
_OPENAI_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # safetensors preferred


def _download_openai(name: str, cache_dir: str | os.PathLike | None, local_files_only: bool) -> Path:
    """The cached or downloaded weights file of OpenAI model `name`; OSError with the reason if there is none."""
    from huggingface_hub import hf_hub_download
    repo = OPENAI_MODELS[name]
    hub = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    unreachable = not offline and not reachable(hub)  # seconds, not the Hub client's minute of retries
    errors = []
    for filename in _OPENAI_FILES:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=offline or unreachable))
        except Exception as err:  # huggingface_hub raises several error types for "not there"
            errors.append(f"{filename}: {type(err).__name__}")
    how = (f"{hub} is not reachable from this machine and the weights are not in the local cache" if unreachable else
           "offline mode is on (local_files_only=True or HF_HUB_OFFLINE=1) and the weights are not in the local cache"
           if offline else "the Hugging Face Hub did not deliver the file")
    raise OSError(f"CLIP.from_pretrained could not load {name!r} ({repo}): {how}. Connect to the internet and run "
                  "again: the weights are downloaded once and cached. Everything else in the chapter works without "
                  f"them. ({'; '.join(errors)})")
