"""The Vision Transformer: an image read as a sequence of patches by chapter 6's encoder layers.

- Dosovitskiy et al. (2021), "An image is worth 16x16 words: Transformers for image recognition at
  scale" (ICLR), section 3.1:
  eq. (1)  z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos: each P×P patch x_p^i, flattened, times a
           learned matrix E, a learned class token in front, learned positions added
           →  `conv1` (E as a Conv2d with kernel = stride = P), `class_embedding`, `positional_embedding`;
  eq. (2)  z'_l = MSA(LN(z_{l-1})) + z_{l-1}   and   eq. (3)  z_l = MLP(LN(z'_l)) + z'_l
           →  `transformer.resblocks`: `utils.transformer.Transformer`, a stack of chapter 6's pre-norm
           `EncoderLayer`s (GELU), the body CLIP's text tower shares;
  eq. (4)  y = LN(z_L^0), the class token after a final LayerNorm  →  `ln_post`, then a classifier `head`.
- Radford et al. (2021), "Learning transferable visual models from natural language supervision"
  (CLIP): the same tower with a LayerNorm after the positions (`ln_pre`), no bias in the patch
  convolution, quick_gelu, and a projection `proj` (C, output_dim) without bias instead of a classifier.
  Module and parameter names here are those of OpenAI CLIP's `VisionTransformer`.
- Abnar & Zuidema (2020), "Quantifying attention flow in transformers": attention rollout
  →  `attention_rollout`.

Patches. A patch embedding is a linear map of each flattened patch; `patchify` cuts images into
flattened patches with F.unfold (channel-major: all of channel 0's P×P pixels, then channel 1's, ...),
and that order is exactly how a Conv2d(C_in, C, kernel_size=P, stride=P) weight (C, C_in, P, P)
flattens, so nn.Linear(C_in·P·P, C) with weight `conv_to_linear_weight(conv.weight)` and the same bias
equals the convolution (`linear_to_conv_weight` maps back). The model uses the convolution: one call,
no copy of the image in patch order.

LayerNorm eps differs between implementations, and matters in a float64 comparison: timm's
VisionTransformer uses 1e-6 (this module's default), Hugging Face's ViT `layer_norm_eps` = 1e-12,
OpenAI CLIP torch's default 1e-5. The converters below read it off the reference model.

Converters: `from_timm_state_dict` (timm `VisionTransformer`, class token, global_pool="token") and
`from_hf_vit_state_dict` (Hugging Face `ViTModel` with add_pooling_layer=False, or
`ViTForImageClassification`, as transformers ≥ 5 names them) are short renaming tables;
`VisionTransformer.from_timm` / `.from_hf` also read the config off the reference model.

Letter legend (shape comments):
    B  batch size             C_in  image channels (3 RGB, 1 grey)     S  image side in pixels
    P  patch side in pixels   G     patches per side (S / P)           N  patches (G * G)
    T  tokens (N + 1, the class token first)                           C  width (hidden size)
    H  heads                  D     head dim (C = H * D)               F  MLP width
    L  layers                 K     classes                            E  output_dim (CLIP's embedding)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .transformer import ACTIVATIONS, Transformer

__all__ = [
    "ViTConfig", "VisionTransformer", "patchify", "conv_to_linear_weight", "linear_to_conv_weight",
    "attention_rollout", "from_timm_state_dict", "from_hf_vit_state_dict", "config_from_timm", "config_from_hf",
]


# ----------------------------------------------------------------------------------------------
# Patches

def _check_images(images: Any, who: str, channels: int | None = None) -> None:
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() != 4:
        got = f"shape {tuple(images.shape)}, dtype {images.dtype}" if isinstance(images, Tensor) else \
            type(images).__name__
        raise ValueError(f"{who}: images must be a float tensor of shape (B, C_in, height, width), got {got}"
                         + ("; add a batch axis with images[None]" if isinstance(images, Tensor) and images.dim() == 3
                            else ""))
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"{who}: expected images with {channels} channel(s), got {images.shape[1]} "
                         f"(shape {tuple(images.shape)}, read as (B, C_in, height, width)); "
                         + ("repeat a grey channel with images.expand(-1, 3, -1, -1)" if images.shape[1] == 1
                            and channels == 3 else "channels come second (NCHW); permute NHWC images with "
                            "images.permute(0, 3, 1, 2)" if images.shape[-1] == channels else
                            f"build the model with ViTConfig(in_channels={images.shape[1]})"))


def _check_divisible(height: int, width: int, P: int, who: str) -> None:
    if height % P or width % P:
        raise ValueError(f"{who}: image size {height}×{width} is not divisible by the patch size {P}; crop or "
                         f"resize to a multiple of {P} (e.g. {height - height % P or P}×{width - width % P or P}) "
                         "or choose a patch size that divides it")


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images (B, C_in, S_h, S_w) into non-overlapping P×P patches, flattened: (B, N, C_in·P·P).

    Patches are numbered row by row (left to right, top to bottom), N = (S_h / P)(S_w / P); each is
    flattened channel-major (channel, patch row, patch column), the order of a Conv2d weight's
    `weight.flatten(1)`. Raises ValueError if a side is not divisible by P.
    """
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1:
        raise ValueError(f"patchify: patch_size must be a positive int, got {patch_size!r}")
    _check_images(images, "patchify")
    _check_divisible(images.shape[2], images.shape[3], patch_size, "patchify")
    cols = F.unfold(images, kernel_size=patch_size, stride=patch_size)  # (B, C_in·P·P, N)
    return cols.transpose(1, 2)  # (B, N, C_in·P·P)


def conv_to_linear_weight(weight: Tensor) -> Tensor:
    """A patch convolution's weight (C, C_in, P, P) → the equivalent nn.Linear(C_in·P·P, C) weight."""
    if not isinstance(weight, Tensor) or weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"conv_to_linear_weight: expected a Conv2d weight of shape (C, C_in, P, P), got {got}")
    return weight.flatten(1)  # (C, C_in·P·P)


def linear_to_conv_weight(weight: Tensor, in_channels: int, patch_size: int) -> Tensor:
    """An nn.Linear(C_in·P·P, C) weight (C, C_in·P·P) → the equivalent patch Conv2d weight (C, C_in, P, P)."""
    expected = in_channels * patch_size * patch_size
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != expected:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"linear_to_conv_weight: expected a weight of shape (C, C_in·P·P) = (C, {expected}) for "
                         f"C_in={in_channels}, P={patch_size}; got {got}")
    return rearrange(weight, "c (ci ph pw) -> c ci ph pw", ci=in_channels, ph=patch_size)  # (C, C_in, P, P)


# ----------------------------------------------------------------------------------------------
# The model

@dataclass
class ViTConfig:
    """Sizes and variants of a Vision Transformer. Defaults: a small model for 32×32 images.

    Reference settings: timm/ViT paper: eps=1e-6, activation "gelu", patch_bias=True, ln_pre=False;
    Hugging Face ViT: the same with eps=1e-12; OpenAI CLIP: eps=1e-5, "quick_gelu", patch_bias=False,
    ln_pre=True, output_dim set, num_classes=0.
    """

    image_size: int = 32  # S: images are S×S pixels
    patch_size: int = 4  # P
    in_channels: int = 3  # C_in
    width: int = 64  # C
    layers: int = 4  # L
    heads: int = 4  # H
    mlp_ratio: float = 4.0  # F = int(mlp_ratio * C)
    num_classes: int = 0  # > 0: a classification head nn.Linear(C, num_classes) named `head`
    output_dim: int | None = None  # E: CLIP's `proj` Parameter (C, E), no bias
    patch_bias: bool = True  # CLIP's conv1 has no bias
    ln_pre: bool = False  # CLIP: a LayerNorm after adding the positions
    activation: str = "gelu"  # CLIP: "quick_gelu"
    eps: float = 1e-6  # LayerNorm epsilon: timm 1e-6, HF ViT 1e-12, OpenAI CLIP 1e-5
    dropout: float = 0.0  # training only: embeddings, attention weights, residual branches, MLP

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "in_channels", "width", "layers", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ViTConfig: {name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig: image_size={self.image_size} is not divisible by patch_size="
                             f"{self.patch_size}; the patches must tile the image (e.g. image_size="
                             f"{self.image_size - self.image_size % self.patch_size or self.patch_size})")
        if self.width % self.heads:
            raise ValueError(f"ViTConfig: width={self.width} is not divisible by heads={self.heads}; pick heads "
                             "dividing width (head dim = width / heads)")
        if not self.mlp_ratio > 0 or int(self.mlp_ratio * self.width) < 1:
            raise ValueError(f"ViTConfig: mlp_ratio must give an MLP width ≥ 1, got {self.mlp_ratio}")
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise ValueError(f"ViTConfig: num_classes must be an int ≥ 0 (0: no head), got {self.num_classes!r}")
        if self.output_dim is not None and (not isinstance(self.output_dim, int) or isinstance(self.output_dim, bool)
                                            or self.output_dim < 1):
            raise ValueError(f"ViTConfig: output_dim must be a positive int or None, got {self.output_dim!r}")
        if self.output_dim is not None and self.num_classes:
            raise ValueError(f"ViTConfig: set num_classes (a classifier head) or output_dim (CLIP's projection), "
                             f"not both; got num_classes={self.num_classes}, output_dim={self.output_dim}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"ViTConfig: unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if not self.eps > 0:
            raise ValueError(f"ViTConfig: eps must be > 0, got {self.eps}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ViTConfig: dropout must be in [0, 1), got {self.dropout}")

    @property
    def grid_size(self) -> int:
        """G: patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """N = G²."""
        return self.grid_size ** 2

    @property
    def mlp_width(self) -> int:
        """F = int(mlp_ratio · C)."""
        return int(self.mlp_ratio * self.width)


class VisionTransformer(nn.Module):
    """A Vision Transformer (Dosovitskiy et al. 2021, eqs. 1-4) with OpenAI CLIP's module names.

        x = conv1(images)                                 (B, C, G, G): one C-vector per P×P patch
        x = [class_embedding; patches] + positional_embedding,  ln_pre     (B, T, C)
        x = transformer.resblocks(x)                      L pre-norm blocks (utils.transformer.EncoderLayer)
        tokens = ln_post(x)                               (B, T, C)    ← forward_features
        y = tokens[:, 0] @ proj  |  head(tokens[:, 0])  |  tokens[:, 0]   ← forward_head

    Images must be S×S with C_in channels as configured: the position table has one row per patch of
    that grid (plus one for the class token).
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"VisionTransformer takes a ViTConfig, got {type(config).__name__}")
        c = self.config = config
        C, P = c.width, c.patch_size
        self.conv1 = nn.Conv2d(c.in_channels, C, kernel_size=P, stride=P, bias=c.patch_bias)  # E of eq. (1)
        self.class_embedding = nn.Parameter(torch.empty(C))  # x_class
        self.positional_embedding = nn.Parameter(torch.empty(c.num_patches + 1, C))  # E_pos, row 0: class token
        self.ln_pre = nn.LayerNorm(C, eps=c.eps) if c.ln_pre else nn.Identity()
        self.drop = nn.Dropout(c.dropout)
        self.transformer = Transformer(C, c.layers, c.heads, c.mlp_width, c.dropout, c.activation, c.eps)  # resblocks
        self.ln_post = nn.LayerNorm(C, eps=c.eps)
        if c.output_dim is not None:
            self.proj = nn.Parameter(torch.empty(C, c.output_dim))
        else:
            self.register_parameter("proj", None)
        self.head = nn.Linear(C, c.num_classes) if c.num_classes else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """OpenAI CLIP's initialisation of its image tower: class token, positions and `proj` N(0, 1/C)
        (scale C^-½); the patch convolution, the blocks and the head as torch initialises them
        (Linear: Kaiming-uniform; attention: Xavier-uniform in_proj, zero biases; LayerNorm (1, 0)).
        Positions of the same scale as the patch embeddings let a small model tell patches apart from the
        first step (timm's N(0, 0.02²), tuned for ImageNet-sized ViTs, trains a small one more slowly)."""
        scale = self.config.width ** -0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        for m in reversed(list(self.modules())):  # children before parents: attention resets its in_proj last
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if self.proj is not None:
            nn.init.normal_(self.proj, std=scale)

    # -- checks ------------------------------------------------------------------------------------

    def _check_images(self, images: Any) -> None:
        c = self.config
        _check_images(images, "VisionTransformer", c.in_channels)
        height, width = images.shape[2:]
        _check_divisible(height, width, c.patch_size, "VisionTransformer")
        if height != c.image_size or width != c.image_size:
            raise ValueError(f"VisionTransformer: expected {c.image_size}×{c.image_size} images, "
                             f"got {height}×{width}; "
                             f"the position embedding has {c.num_patches + 1} rows, one per patch of a "
                             f"{c.grid_size}×{c.grid_size} grid of {c.patch_size}-pixel patches plus the class token. "
                             f"Resize the images, or build the model with ViTConfig(image_size=...)")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        """Loading a position table of another length fails with the two grids named, not a bare size error."""
        key = prefix + "positional_embedding"
        if key in state_dict and state_dict[key].shape != self.positional_embedding.shape:
            got = tuple(state_dict[key].shape)
            c = self.config
            grid = round((got[0] - 1) ** 0.5) if got and got[0] > 1 else None
            guess = f" (a {grid}×{grid} grid plus the class token)" if grid and grid * grid == got[0] - 1 else ""
            raise ValueError(f"positional_embedding: the checkpoint has shape {got}{guess}, this model expects "
                             f"{tuple(self.positional_embedding.shape)} = ({c.num_patches} patches of a "
                             f"{c.grid_size}×{c.grid_size} grid + 1, C={c.width}); build the model with the "
                             "checkpoint's image_size, patch_size and width")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- forward passes ----------------------------------------------------------------------------

    def embed(self, images: Tensor) -> Tensor:
        """Eq. (1): images (B, C_in, S, S) → the token sequence z_0 (B, T, C) the blocks read (after ln_pre)."""
        self._check_images(images)
        x = self.conv1(images)  # (B, C, G, G)
        x = rearrange(x, "b c gh gw -> b (gh gw) c")  # (B, N, C), patches row by row
        cls = self.class_embedding.expand(x.shape[0], 1, -1)  # (B, 1, C)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding  # (B, T, C)
        return self.ln_pre(self.drop(x))  # (B, T, C)

    def forward_features(self, images: Tensor, return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """images (B, C_in, S, S) → every token after the blocks and `ln_post` (B, T, C), token 0 the class
        token; with `return_attn` also every layer's attention weights (B, L, H, T, T)."""
        x = self.embed(images)  # (B, T, C)
        if return_attn:
            x, attn = self.transformer(x, return_attn=True)  # (B, T, C), (B, L, H, T, T)
            return self.ln_post(x), attn
        return self.ln_post(self.transformer(x))  # (B, T, C)

    def forward_head(self, tokens: Tensor) -> Tensor:
        """tokens (B, T, C) from `forward_features` → the class token's output: (B, E) = x @ proj if
        output_dim, else logits (B, num_classes) = head(x) if num_classes, else the class token itself (B, C)."""
        C = self.config.width
        if not isinstance(tokens, Tensor) or tokens.dim() != 3 or tokens.shape[-1] != C:
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"forward_head: tokens must have shape (B, T, C) with C={C} (the output of "
                             f"forward_features), got {got}")
        x = tokens[:, 0]  # (B, C) the class token
        if self.proj is not None:
            return x @ self.proj  # (B, C) @ (C, E) -> (B, E)
        if self.head is not None:
            return self.head(x)  # (B, num_classes)
        return x  # (B, C)

    def forward(self, images: Tensor, return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """images (B, C_in, S, S) → forward_head(forward_features(images)), and the attention weights
        (B, L, H, T, T) if `return_attn`."""
        if return_attn:
            tokens, attn = self.forward_features(images, return_attn=True)
            return self.forward_head(tokens), attn
        return self.forward_head(self.forward_features(images))

    # -- reference models ----------------------------------------------------------------------------

    @classmethod
    def from_timm(cls, model: nn.Module) -> VisionTransformer:
        """A VisionTransformer with the config and weights of a timm `VisionTransformer` (strict loading)."""
        ours = cls(config_from_timm(model)).to(next(model.parameters()).dtype)
        ours.load_state_dict(from_timm_state_dict(model.state_dict()), strict=True)
        return ours

    @classmethod
    def from_hf(cls, model: nn.Module) -> VisionTransformer:
        """A VisionTransformer with the config and weights of a Hugging Face `ViTModel` (no pooler) or
        `ViTForImageClassification` (strict loading)."""
        num_classes = model.classifier.out_features if isinstance(getattr(model, "classifier", None), nn.Linear) else 0
        ours = cls(config_from_hf(model.config, num_classes)).to(next(model.parameters()).dtype)
        ours.load_state_dict(from_hf_vit_state_dict(model.state_dict()), strict=True)
        return ours


# ----------------------------------------------------------------------------------------------
# Attention rollout (Abnar & Zuidema 2020, section 3)

def attention_rollout(attn: Tensor, head_fusion: str = "mean", residual: float = 0.5) -> Tensor:
    """How much each input token flows into each output token through all layers' attention.

    attn (B, L, H, T, T) or (L, H, T, T), as `forward(..., return_attn=True)` returns it. Per layer the
    heads are fused ("mean", as in the paper, or "max"/"min"), the residual connection is accounted for
    as Â_l = residual·I + (1 - residual)·A_l with rows renormalised to sum to 1, and the layers are
    multiplied: R = Â_L ⋯ Â_2 Â_1. Returns R, (B, T, T) (or (T, T)); row 0, columns 1: is the class
    token's rollout over the patches.
    """
    if not isinstance(attn, Tensor) or attn.dim() not in (4, 5) or attn.shape[-1] != attn.shape[-2]:
        got = tuple(attn.shape) if isinstance(attn, Tensor) else type(attn).__name__
        raise ValueError(f"attention_rollout: attn must have shape (B, L, H, T, T) or (L, H, T, T), got {got}")
    if head_fusion not in ("mean", "max", "min"):
        raise ValueError(f"attention_rollout: head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")
    if not 0.0 <= residual < 1.0:
        raise ValueError(f"attention_rollout: residual must be in [0, 1), got {residual}")
    batched = attn.dim() == 5
    a = attn if batched else attn[None]  # (B, L, H, T, T)
    fused = {"mean": a.mean(dim=2), "max": a.amax(dim=2), "min": a.amin(dim=2)}[head_fusion]  # (B, L, T, T)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)  # (T, T)
    fused = residual * eye + (1.0 - residual) * fused  # (B, L, T, T)
    fused = fused / fused.sum(dim=-1, keepdim=True)  # rows sum to 1
    rollout = fused[:, 0]  # (B, T, T)
    for layer in range(1, fused.shape[1]):
        rollout = fused[:, layer] @ rollout  # (B, T, T)
    return rollout if batched else rollout[0]


# ----------------------------------------------------------------------------------------------
# Converters: timm's and Hugging Face's state_dicts → ours.
# Per block, their submodule → ours (inside each, the keys `weight` and `bias` are kept).

_TIMM_BLOCK = {
    "norm1": "ln_1",
    "attn.qkv": "attn.in_proj",  # rows [W^Q; W^K; W^V], the layout of our fused in_proj
    "attn.proj": "attn.out_proj",
    "norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_TIMM_TOP = {
    "patch_embed.proj": "conv1",
    "norm_pre": "ln_pre",
    "norm": "ln_post",
    "head": "head",
}
_HF_BLOCK = {
    "layernorm_before": "ln_1",
    "attention.o_proj": "attn.out_proj",
    "layernorm_after": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    # attention.q_proj, k_proj, v_proj: concatenated into attn.in_proj (below)
}
_HF_TOP = {
    "embeddings.patch_embeddings.projection": "conv1",
    "layernorm": "ln_post",
    "classifier": "head",
}


def _rename(state_dict: dict[str, Tensor], theirs: str, ours: str, table: dict[str, str], out: dict[str, Tensor],
            used: set[str]) -> None:
    """Copy `{theirs}{a}.weight|bias` to `{ours}{b}.weight|bias` for every a → b of `table` that is present."""
    for a, b in table.items():
        for leaf in ("weight", "bias"):
            key = f"{theirs}{a}.{leaf}"
            if key in state_dict:
                out[f"{ours}{b}.{leaf}"] = state_dict[key]
                used.add(key)


def _block_indices(state_dict: dict[str, Tensor], prefix: str) -> list[int]:
    return sorted({int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)})


def _reject_unused(state_dict: dict[str, Tensor], used: set[str], who: str, hint: str) -> None:
    unused = sorted(set(state_dict) - used)
    if unused:
        raise KeyError(f"{who}: keys with no place in VisionTransformer: {unused[:12]}"
                       + (f" (and {len(unused) - 12} more)" if len(unused) > 12 else "") + f"; {hint}")


def _tokens(state_dict: dict[str, Tensor], cls_key: str, pos_key: str, out: dict[str, Tensor], used: set[str],
            who: str) -> None:
    for key in (cls_key, pos_key):
        if key not in state_dict:
            raise KeyError(f"{who}: missing {key!r}; expected a model with a class token and learned positions")
    cls, pos = state_dict[cls_key], state_dict[pos_key]
    if cls.dim() != 3 or cls.shape[:2] != (1, 1):
        raise ValueError(f"{who}: {cls_key} must have shape (1, 1, C) (one class token), got {tuple(cls.shape)}")
    if pos.dim() != 3 or pos.shape[0] != 1:
        raise ValueError(f"{who}: {pos_key} must have shape (1, T, C), got {tuple(pos.shape)}")
    out["class_embedding"] = cls.reshape(-1)  # (1, 1, C) -> (C,)
    out["positional_embedding"] = pos[0]  # (1, T, C) -> (T, C)
    used.update((cls_key, pos_key))


def from_timm_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm `VisionTransformer` (class token, learned positions including the class token's, global_pool=
    "token", no fc_norm) state_dict → VisionTransformer's. Keys with no place here: KeyError listing them."""
    who = "from_timm_state_dict"
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    _tokens(state_dict, "cls_token", "pos_embed", out, used, who)
    _rename(state_dict, "", "", _TIMM_TOP, out, used)
    for i in _block_indices(state_dict, "blocks."):
        _rename(state_dict, f"blocks.{i}.", f"transformer.resblocks.{i}.", _TIMM_BLOCK, out, used)
    _reject_unused(state_dict, used, who, "supported: class token, no register tokens, no fc_norm "
                   "(global_pool='token'), no layer scale, no qk_norm")
    return out


def from_hf_vit_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face `ViTModel` (add_pooling_layer=False) or `ViTForImageClassification` state_dict
    (transformers ≥ 5 names) → VisionTransformer's. q_proj, k_proj, v_proj are stacked into our fused
    in_proj. Keys with no place here (e.g. the pooler): KeyError listing them."""
    who = "from_hf_vit_state_dict"
    sd = {k.removeprefix("vit."): v for k, v in state_dict.items()}  # ViTForImageClassification wraps a ViTModel
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    _tokens(sd, "embeddings.cls_token", "embeddings.position_embeddings", out, used, who)
    _rename(sd, "", "", _HF_TOP, out, used)
    for i in _block_indices(sd, "layers."):
        _rename(sd, f"layers.{i}.", f"transformer.resblocks.{i}.", _HF_BLOCK, out, used)
        for leaf in ("weight", "bias"):
            parts = [f"layers.{i}.attention.{x}_proj.{leaf}" for x in "qkv"]
            if all(p in sd for p in parts):
                out[f"transformer.resblocks.{i}.attn.in_proj.{leaf}"] = torch.cat([sd[p] for p in parts])  # (3C, ...)
                used.update(parts)
    _reject_unused(sd, used, who, "build ViTModel with add_pooling_layer=False (the pooler is not part of the "
                   "ViT paper's classifier) and qkv_bias=True; the mask token of masked image modelling is not "
                   "supported")
    return out


def config_from_timm(model: nn.Module) -> ViTConfig:
    """The ViTConfig of a timm `VisionTransformer` (checks the variant is one this module implements)."""
    pe = model.patch_embed
    img, patch = tuple(pe.img_size), tuple(pe.patch_size)
    if img[0] != img[1] or patch[0] != patch[1]:
        raise ValueError(f"config_from_timm: square images and patches only, got img_size {img}, patch_size {patch}")
    if getattr(model, "global_pool", "token") != "token" or getattr(model, "cls_token", None) is None:
        raise ValueError("config_from_timm: needs a class token and global_pool='token' (the ViT paper's classifier)")
    block = model.blocks[0]
    if not (isinstance(block.mlp.act, nn.GELU) and block.mlp.act.approximate == "none"):
        raise ValueError(f"config_from_timm: only the exact GELU is supported, got {block.mlp.act}")
    head = model.head
    C = model.embed_dim
    return _check_mlp(ViTConfig(image_size=img[0], patch_size=patch[0], in_channels=pe.proj.in_channels, width=C,
                     layers=len(model.blocks), heads=block.attn.num_heads,
                     mlp_ratio=block.mlp.fc1.out_features / C,
                     num_classes=head.out_features if isinstance(head, nn.Linear) else 0,
                     patch_bias=pe.proj.bias is not None, ln_pre=isinstance(model.norm_pre, nn.LayerNorm),
                     activation="gelu", eps=model.norm.eps), block.mlp.fc1.out_features, "config_from_timm")


def config_from_hf(config: Any, num_classes: int = 0) -> ViTConfig:
    """The ViTConfig of a Hugging Face `ViTConfig` (`num_classes`: the classifier's outputs, 0 for ViTModel)."""
    if not getattr(config, "qkv_bias", True):
        raise ValueError("config_from_hf: qkv_bias=False is not supported (our fused in_proj has a bias)")
    if config.hidden_act != "gelu":
        raise ValueError(f"config_from_hf: hidden_act {config.hidden_act!r} is not supported; the ViT uses 'gelu'")
    C = config.hidden_size
    return _check_mlp(ViTConfig(image_size=config.image_size, patch_size=config.patch_size,
                                in_channels=config.num_channels,
                     width=C, layers=config.num_hidden_layers, heads=config.num_attention_heads,
                     mlp_ratio=config.intermediate_size / C, num_classes=num_classes, activation="gelu",
                     eps=config.layer_norm_eps), config.intermediate_size, "config_from_hf")


def _check_mlp(config: ViTConfig, F_: int, who: str) -> ViTConfig:
    if config.mlp_width != F_:
        raise ValueError(f"{who}: MLP width {F_} is not int(mlp_ratio * width) for width {config.width}; "
                         f"got {config.mlp_width}")
    return config
