"""A vision-language model: CLIP's image tower joined to a GPT, by a prefix of visual tokens or by gated
cross-attention.

- Liu et al. (2023), "Visual instruction tuning" (LLaVA), section 4.1 and figure 1: a frozen CLIP image
  tower gives one feature per patch (the class token dropped, read from the second-to-last layer in
  LLaVA-1.5); a projection W (LLaVA-1.5: two Linear layers with a GELU between them) maps them to the
  language model's width, H_v = W · Z_v; these "visual tokens" stand in the text where the image goes,
  and the language model is trained to predict the answer tokens only (eq. 3: the loss is taken over
  the answer, the instruction is given)  →  `image_features`, `MultiModalProjector`,
  `merge_image_tokens`, `VisionLanguageModel(fusion="prefix")`, `answer_targets`.
- Alayrac et al. (2022), "Flamingo: a visual language model for few-shot learning", section 2.2 and
  figure 4: the language model is left untouched (frozen) and new "gated xattn-dense" layers are put in
  front of its blocks: y = y + tanh(α)·attn(y, x), then y = y + tanh(β)·ffw(y), where x are the visual
  tokens and α, β start at 0, so that at initialisation the model is exactly the language model
  →  `GatedCrossAttention`, `VisionLanguageModel(fusion="cross")`. Flamingo first resamples the
  features into 64 latents with a Perceiver (Jaegle et al. 2021); here the projector's patch tokens
  are attended directly (there are only a few). Flamingo's texts interleave several images (section 2.3,
  figure 7): each text token cross-attends only to the visual tokens of the image just before it
  →  `GatedCrossAttention(..., image_index)`, images (B, M, 3, S, S) with one marker per image.

Names follow Hugging Face's `LlavaForConditionalGeneration` where it has them (`vision_tower`,
`multi_modal_projector.linear_1/linear_2`, `language_model`, `vision_feature_layer`,
`vision_feature_select_strategy` "default" = drop the class token / "full", `image_token_id`), and the
tests prove the image path and the merge equal to it. The image tower is chapter 8's
`utils.vit.VisionTransformer` (CLIP's `visual`), the language model chapter 7's `utils.gpt.GPT`.

Letter legend (shape comments):
    B  batch size           T  text positions (image tokens included in "prefix" fusion)
    M  images per sequence (interleaved text; 1 by default)
    N  visual tokens per image (patches, patches + 1, or 1)     G  patch-grid side (N = G² by default)
    C  language-model width  C_v  image-tower width  E  CLIP's embedding size ("pooled")
    H  heads    L  language-model layers    V  vocabulary size    P  positions held in the KV cache
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .attention import MultiHeadAttention
from .gpt import GPT, KVCache, _block_step
from .seq2seq import eval_mode
from .transformer import FeedForward
from .vit import VisionTransformer

__all__ = ["VLMConfig", "MultiModalProjector", "GatedCrossAttention", "VisionLanguageModel", "image_features",
           "merge_image_tokens", "answer_targets", "token_f1", "IGNORE", "PARTS", "STAGES", "set_trainable",
           "set_stage", "count_parameters", "answer_attention"]

IGNORE = -100  # a target F.cross_entropy skips: every position that is not an answer token
STRATEGIES = ("default", "full", "pooled")
PARTS = ("vision_tower", "multi_modal_projector", "cross_attn", "language_model")  # the model's submodules
# Training stages: the parts that learn (the others are frozen). The image tower is frozen in every named stage.
STAGES = {
    "align": ("multi_modal_projector",),  # LLaVA stage 1, feature alignment: the projector against a frozen LM
    "instruct": ("multi_modal_projector", "language_model"),  # LLaVA stage 2, instruction tuning
    "xattn": ("multi_modal_projector", "cross_attn"),  # Flamingo: the new layers learn, the LM stays frozen
    "all": ("multi_modal_projector", "cross_attn", "language_model"),  # everything but the tower, from scratch
}


# ----------------------------------------------------------------------------------------------
# The image path: which layer, which tokens, the projector

def _check_images(tower: VisionTransformer, images: Any, who: str) -> None:
    c = tower.config
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() != 4:
        got = f"shape {tuple(images.shape)}, dtype {images.dtype}" if isinstance(images, Tensor) else \
            type(images).__name__
        raise ValueError(f"{who}: images must be a float tensor (B, {c.in_channels}, {c.image_size}, {c.image_size}), "
                         f"got {got}")
    tower._check_images(images)  # the image size, with the tower's own message (sizes and the fix)


def image_features(tower: VisionTransformer, images: Tensor, layer: int = -2, strategy: str = "default") -> Tensor:
    """The tower's features that become visual tokens: images (B, 3, S, S) → (B, N, C_v) (or (B, 1, E)).

    `layer` counts as Hugging Face's `hidden_states`: 0 is the embedded patches (after `ln_pre`), l the
    output of block l, -1 the last block's, -2 the one before (LLaVA-1.5's choice): no `ln_post`.
    `strategy`: "default" drops the class token (N = G² patch tokens, LLaVA), "full" keeps it (G² + 1),
    "pooled" ignores `layer` and gives CLIP's one image embedding (the class token after `ln_post` and
    `proj`, (B, 1, E)): the ablation "one vector instead of every patch".
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"image_features: strategy must be one of {STRATEGIES}, got {strategy!r}")
    _check_images(tower, images, "image_features")
    if strategy == "pooled":
        return tower(images)[:, None]  # (B, 1, E)
    L = tower.config.layers
    if not isinstance(layer, int) or not -(L + 1) <= layer <= L:
        raise ValueError(f"image_features: layer must be an int in [{-(L + 1)}, {L}] for a {L}-block tower "
                         f"(0 = the embedded patches, -1 = the last block), got {layer!r}")
    x = tower.embed(images)  # (B, 1 + G², C_v), hidden state 0
    for block in tower.transformer.resblocks[: layer % (L + 1)]:
        x = block(x)  # (B, 1 + G², C_v)
    return x[:, 1:] if strategy == "default" else x  # (B, N, C_v)


class MultiModalProjector(nn.Module):
    """LLaVA-1.5's projector: visual features (..., C_v) → Linear → GELU → Linear → (..., C), the LM's width."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_features, out_features)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(features)))  # (..., C)


def merge_image_tokens(embeds: Tensor, ids: Tensor, image_token_id: int, visual: Tensor) -> Tensor:
    """The text embeddings with the visual tokens written where the ids hold `image_token_id` (LLaVA's merge).

    embeds (B, T, C) the token embeddings of ids (B, T); visual (B_i, N, C) visual tokens, filled in order:
    image 0's N tokens into the first N image positions (row by row), and so on. Every sequence must hold
    N image tokens per image it is paired with (one row of visual tokens per sequence, B_i = B; M images per
    sequence are passed as their M·N tokens in order). Returns (B, T, C);
    `embeds` is not modified.
    """
    if visual.dim() != 3 or visual.shape[-1] != embeds.shape[-1]:
        raise ValueError(f"merge_image_tokens: visual must be (B_i, N, C) with C={embeds.shape[-1]}, got "
                         f"{tuple(visual.shape)}")
    mask = ids == image_token_id  # (B, T)
    per_row = mask.sum(dim=1)  # (B,)
    B_i, N = visual.shape[:2]
    if B_i != ids.shape[0] or bool((per_row != N).any()):
        raise ValueError(f"merge_image_tokens: the ids hold {per_row.tolist()} image tokens (id {image_token_id}) "
                         f"per sequence, but {B_i} image(s) of {N} visual tokens each were given for "
                         f"{ids.shape[0]} sequence(s): each sequence needs exactly {N} image tokens, one per "
                         f"visual token, and one image")
    return embeds.masked_scatter(mask[..., None], visual.to(embeds.dtype))  # (B, T, C)


def token_f1(said: str, expected: str) -> float:
    """The token F1 of a generated text against the expected one (SQuAD's answer score): the words they share,
    counted with multiplicity, as a harmonic mean of precision (share of `said`) and recall (share of
    `expected`). Word order does not count; exact match is the stricter score. Two empty texts score 1."""
    a, b = said.split(), expected.split()
    if not a or not b:
        return float(a == b)
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def answer_targets(ids: Tensor, answer_start: Tensor | list[int], pad_id: int | None = None) -> Tensor:
    """Next-token targets that score the answer only: ids (B, T) → (B, T), where position t predicts ids[t+1]
    only if t + 1 ≥ answer_start[b] (the answer and its end token), and IGNORE (-100) elsewhere: the image
    tokens and the question are given, not predicted (LLaVA eq. 3). Padding (`pad_id`) is ignored too."""
    start = torch.as_tensor(answer_start, device=ids.device).reshape(-1, 1)  # (B, 1)
    if ids.dim() != 2 or start.shape[0] != ids.shape[0]:
        raise ValueError(f"answer_targets: ids must be (B, T) and answer_start have B entries, got "
                         f"{tuple(ids.shape)} and {start.shape[0]}")
    targets = torch.full_like(ids, IGNORE)  # (B, T)
    targets[:, :-1] = ids[:, 1:]  # position t predicts token t + 1
    predicts = torch.arange(ids.shape[1], device=ids.device)[None] + 1  # (1, T) the position each one predicts
    keep = (predicts >= start) & (predicts < ids.shape[1])  # (B, T)
    if pad_id is not None:
        keep &= targets != pad_id
    return targets.masked_fill(~keep, IGNORE)


# ----------------------------------------------------------------------------------------------
# Flamingo's gated cross-attention

class GatedCrossAttention(nn.Module):
    """Flamingo's gated xattn-dense layer (Alayrac et al. 2022, figure 4), put before a language-model block:

        y = y + tanh(attn_gate) · attn(ln_1(y), visual)      text queries, visual keys and values
        y = y + tanh(ff_gate)   · mlp(ln_2(y))

    Both gates start at 0: the layer is then the identity, exactly, and the model the language model.
    `attn` is chapter 6's MultiHeadAttention, `mlp` its FeedForward (GELU).

    Interleaved images (Flamingo section 2.3, figure 7): with M images per sequence, text position t attends
    only to the visual tokens of the image it follows, `image_index[b, t]` (the last image whose marker is at
    or before t); a position before every image (index -1) attends to nothing, so its attention term is 0
    (its map a row of zeros) and only the feed-forward branch acts on it."""

    def __init__(self, C: int, H: int, F_: int | None = None) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(C)
        self.attn = MultiHeadAttention(C, H)
        self.ln_2 = nn.LayerNorm(C)
        self.mlp = FeedForward(C, 4 * C if F_ is None else F_, activation="gelu")
        self.attn_gate = nn.Parameter(torch.zeros(()))  # α
        self.ff_gate = nn.Parameter(torch.zeros(()))  # β

    def forward(self, x: Tensor, visual: Tensor, image_index: Tensor | None = None,
                return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, T, C) text states and visual (B, N, C), one image that every position sees → (B, T, C), with
        `return_attn` also (B, H, T, N); or visual (B, M, N, C) and image_index (B, T) in [-1, M), the image each
        position sees (-1: none) → (B, T, C), with `return_attn` also (B, H, T, M·N), zero off that image."""
        mask, seen = None, None
        if image_index is not None or visual.dim() == 4:
            if visual.dim() != 4 or image_index is None or tuple(image_index.shape) != tuple(x.shape[:2]):
                raise ValueError(f"GatedCrossAttention: several images need visual (B, M, N, C) and image_index "
                                 f"(B, T) = {tuple(x.shape[:2])}, got visual {tuple(visual.shape)} and image_index "
                                 f"{None if image_index is None else tuple(image_index.shape)}")
            B, M, N, C = visual.shape
            if bool(((image_index < -1) | (image_index >= M)).any()):
                raise ValueError(f"GatedCrossAttention: image_index must lie in [-1, {M}) for {M} image(s), got "
                                 f"values {sorted(set(image_index.flatten().tolist()))}")
            owner = torch.arange(M, device=visual.device).repeat_interleave(N)  # (M·N,) the image of each key
            seen = image_index >= 0  # (B, T) positions that follow an image
            mask = (image_index[..., None] == owner) | ~seen[..., None]  # (B, T, M·N); an unseen row is all True
            mask = mask[:, None]  # (B, 1, T, M·N); (an all-False row would give softmax 0/0 = NaN: it is zeroed below)
            visual = visual.reshape(B, M * N, C)  # (B, M·N, C) every image's tokens, in order
        a, attn = self.attn(self.ln_1(x), visual, attn_mask=mask, return_attn=return_attn)  # (B, T, C), (B, H, T, S)
        if seen is not None:
            a = a * seen[..., None].to(a.dtype)  # (B, T, C): no image yet, nothing from the images
            if return_attn:
                attn = attn * seen[:, None, :, None].to(attn.dtype)  # (B, H, T, M·N)
        x = x + torch.tanh(self.attn_gate) * a  # (B, T, C)
        x = x + torch.tanh(self.ff_gate) * self.mlp(self.ln_2(x))  # (B, T, C)
        return (x, attn) if return_attn else x


# ----------------------------------------------------------------------------------------------
# The model

@dataclass
class VLMConfig:
    """How the image joins the language model.

    fusion: "prefix" (LLaVA: visual tokens in the text, at the `image_token_id` positions) or "cross"
        (Flamingo: gated cross-attention before every block; the text holds no visual tokens).
    vision_feature_layer, vision_feature_select_strategy: as `image_features` (HF Llava's names).
    image_token_id: the id that marks where an image goes. "prefix" (required): N of them per image, replaced by
        its visual tokens. "cross" (optional): one marker per image, kept in the text as a token (Flamingo's
        <image>); each position sees the last image marked at or before it. A one-image text may go without.
    freeze_vision: the image tower gets no gradient (LLaVA, Flamingo).
    """

    fusion: str = "prefix"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    image_token_id: int | None = None
    freeze_vision: bool = True

    def __post_init__(self) -> None:
        if self.fusion not in ("prefix", "cross"):
            raise ValueError(f"VLMConfig: fusion must be 'prefix' (LLaVA) or 'cross' (Flamingo), got {self.fusion!r}")
        if self.vision_feature_select_strategy not in STRATEGIES:
            raise ValueError(f"VLMConfig: vision_feature_select_strategy must be one of {STRATEGIES}, got "
                             f"{self.vision_feature_select_strategy!r}")
        if self.fusion == "prefix" and not isinstance(self.image_token_id, int):
            raise ValueError("VLMConfig: prefix fusion needs image_token_id, the vocabulary id that marks where the "
                             "visual tokens go (e.g. the id of '<image>')")


class VisionLanguageModel(nn.Module):
    """An image tower, a projector and a decoder-only language model, joined by `config.fusion`:

        prefix (LLaVA)   x = merge(wte(ids), projector(features(image))) + wpe;  x = block(x) for each block
        cross (Flamingo) x = wte(ids) + wpe;  x = block(xattn_l(x, projector(features(image)))) for each block
        logits = lm_head(ln_f(x))                                                   (B, T, V)

    `vision_tower` is a `utils.vit.VisionTransformer` (CLIP's `visual`), `language_model` a `utils.gpt.GPT`;
    both are used as they are, only read (their parameters are shared, not copied).
    """

    def __init__(self, vision_tower: VisionTransformer, language_model: GPT, config: VLMConfig | None = None) -> None:
        super().__init__()
        if not isinstance(vision_tower, VisionTransformer) or not isinstance(language_model, GPT):
            raise TypeError("VisionLanguageModel takes a utils.vit.VisionTransformer (e.g. CLIP's .visual) and a "
                            f"utils.gpt.GPT, got {type(vision_tower).__name__} and {type(language_model).__name__}")
        c = self.config = config or VLMConfig()
        self.vision_tower, self.language_model = vision_tower, language_model
        lm = language_model.config
        pooled = c.vision_feature_select_strategy == "pooled"
        if pooled and vision_tower.proj is None:
            raise ValueError("VisionLanguageModel: the 'pooled' strategy needs a tower with an output projection "
                             "(CLIP's proj: ViTConfig(output_dim=E))")
        in_features = vision_tower.proj.shape[1] if pooled else vision_tower.config.width
        self.multi_modal_projector = MultiModalProjector(in_features, lm.n_embd)
        self.cross_attn = (nn.ModuleList(GatedCrossAttention(lm.n_embd, lm.n_head) for _ in range(lm.n_layer))
                           if c.fusion == "cross" else None)
        if c.fusion == "prefix":
            if not 0 <= c.image_token_id < lm.vocab_size:  # (checked for "cross" below)
                raise ValueError(f"VLMConfig: image_token_id={c.image_token_id} is outside the language model's "
                                 f"vocabulary [0, {lm.vocab_size})")
            if self.num_image_tokens >= lm.block_size:
                raise ValueError(f"VisionLanguageModel: {self.num_image_tokens} image tokens leave no room for text "
                                 f"in the context window block_size={lm.block_size}; build the GPT with a larger "
                                 "block_size, use larger patches, or the 'pooled' strategy (1 token)")
        if c.fusion == "cross" and c.image_token_id is not None and not 0 <= c.image_token_id < lm.vocab_size:
            raise ValueError(f"VLMConfig: image_token_id={c.image_token_id} (the image marker) is outside the "
                             f"language model's vocabulary [0, {lm.vocab_size})")
        self.frozen_parts: tuple[str, ...] = ()
        set_trainable(self, [p for p in self.parts if p != "vision_tower" or not c.freeze_vision])

    @property
    def parts(self) -> dict[str, nn.Module]:
        """The model's parts by name, in `PARTS` order: those it has ("cross_attn" only in "cross" fusion)."""
        return {name: getattr(self, name) for name in PARTS if getattr(self, name) is not None}

    @property
    def num_image_tokens(self) -> int:
        """N: visual tokens per image."""
        strategy, G = self.config.vision_feature_select_strategy, self.vision_tower.config.grid_size
        return {"default": G * G, "full": G * G + 1, "pooled": 1}[strategy]

    def train(self, mode: bool = True) -> VisionLanguageModel:
        """As nn.Module.train, but the frozen parts (`frozen_parts`, e.g. the image tower) stay in eval mode: a
        frozen module is a fixed function, so its dropout stays off."""
        super().train(mode)
        for name in self.frozen_parts:
            getattr(self, name).eval()
        return self

    # -- the image path ------------------------------------------------------------------------

    def encode_images(self, images: Tensor) -> Tensor:
        """images (B, 3, S, S) → visual tokens (B, N, C) in the language model's width; images (B, M, 3, S, S),
        M per sequence → (B, M, N, C)."""
        c = self.config
        if isinstance(images, Tensor) and images.dim() == 5:
            B, M = images.shape[:2]
            return self.encode_images(images.flatten(0, 1)).unflatten(0, (B, M))  # (B, M, N, C)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not c.freeze_vision):
            features = image_features(self.vision_tower, images, c.vision_feature_layer,
                                      c.vision_feature_select_strategy)  # (B, N, C_v)
        return self.multi_modal_projector(features)  # (B, N, C)

    # -- checks ----------------------------------------------------------------------------------

    def _check_text(self, ids: Any, start: int = 0) -> None:
        self.language_model._check_ids(ids, "ids", start=start)  # shape, dtype, vocabulary, context window

    def _check_markers(self, ids: Tensor, M: int, N: int, new: bool = False) -> None:
        """The image tokens in ids: "prefix" M·N per sequence; "cross" M markers per sequence (or none in the whole
        batch when M = 1: every position then sees the image); after the prompt (`new`) none."""
        c = self.config
        if c.image_token_id is None:
            return
        n = (ids == c.image_token_id).sum(dim=1)  # (B,)
        if new:
            if bool(n.any()):
                raise ValueError(f"ids hold {n.tolist()} image tokens (id {c.image_token_id}) per sequence; tokens "
                                 "after the prompt must not be image tokens")
            return
        if c.fusion == "cross" and M == 1 and not bool(n.any()):
            return  # one image, no marker: the single-image model, every position sees the image
        want = M * N if c.fusion == "prefix" else M
        if bool((n != want).any()):
            what = (f"exactly {want}, one per visual token of its {M} image(s) ({N} each)" if c.fusion == "prefix"
                    else f"exactly {M}, one marker where each of its {M} image(s) comes in the text")
            raise ValueError(f"ids hold {n.tolist()} image tokens (id {c.image_token_id}) per sequence; each sequence "
                             f"must hold {what}")

    def _visual(self, images: Tensor | None, visual: Tensor | None, B: int) -> Tensor:
        """The visual tokens as (B, M, N, C), from images (B, 3, S, S) / (B, M, 3, S, S) or given ones."""
        if visual is None:
            if images is None:
                raise ValueError("give the images (B, 3, S, S) or (B, M, 3, S, S) (or their visual tokens from "
                                 "encode_images)")
            if not isinstance(images, Tensor) or images.dim() not in (4, 5):
                _check_images(self.vision_tower, images, "VisionLanguageModel")  # names what was given
            visual = self.encode_images(images)  # (B, N, C) or (B, M, N, C)
        C = self.language_model.config.n_embd
        if not isinstance(visual, Tensor) or visual.dim() not in (3, 4) or visual.shape[-1] != C:
            got = tuple(visual.shape) if isinstance(visual, Tensor) else type(visual).__name__
            raise ValueError(f"visual tokens must be (B, N, C) or (B, M, N, C) with C={C}, got {got}")
        if visual.dim() == 3:
            visual = visual[:, None]  # (B, 1, N, C)
        if visual.shape[0] != B:
            raise ValueError(f"{visual.shape[0]} image(s) for {B} text(s): give one image (or one row of M images) "
                             "per sequence")
        return visual  # (B, M, N, C)

    def _image_index(self, ids: Tensor, M: int, cached: bool) -> Tensor | None:
        """"cross" fusion: the image each text position sees, (B, T) in [-1, M) (-1: before every image), or None
        when every position sees the one image (M = 1 and no markers). Positions after the prompt (`cached`) see
        the last image: the prompt holds all M markers."""
        c = self.config
        if c.fusion != "cross":
            return None
        if cached:
            return None if M == 1 else torch.full_like(ids, M - 1)  # (B, T)
        markers = (ids == c.image_token_id) if c.image_token_id is not None else torch.zeros_like(ids, dtype=torch.bool)
        if not bool(markers.any()):
            if M > 1:
                raise ValueError(f"{M} images per sequence need markers in the text: set VLMConfig(image_token_id=...) "
                                 "and put that token where each image comes (Flamingo's <image>)")
            return None
        return markers.cumsum(dim=1) - 1  # (B, T) the index of the last marker at or before t

    # -- forward passes --------------------------------------------------------------------------

    def _layers(self, x: Tensor, visual: Tensor, image_index: Tensor | None, cache: KVCache | None, use_cache: bool,
                return_attn: bool) -> tuple[Tensor, KVCache, list[Tensor], list[Tensor]]:
        """The language model's blocks (each after its gated cross-attention in "cross" fusion), then ln_f and
        the head: x (B, T, C), visual (B, M, N, C) → logits (B, T, V), the extended cache, self- and
        cross-attention weights."""
        lm = self.language_model
        new_cache, self_attn, cross_attn = [], [], []
        seen = visual[:, 0] if image_index is None else visual  # (B, N, C): one image for all, or (B, M, N, C)
        for i, block in enumerate(lm.transformer.h):
            if self.cross_attn is not None:
                out = self.cross_attn[i](x, seen, image_index, return_attn=return_attn)
                x = out[0] if return_attn else out  # (B, T, C)
                if return_attn:
                    cross_attn.append(out[1])  # (B, H, T, N) or (B, H, T, M·N)
            if use_cache:
                x, kv = _block_step(block, x, None if cache is None else cache[i])  # (B, T, C), 2 × (B, H, P+T, D)
                new_cache.append(kv)
            elif return_attn:
                x, a = block(x, is_causal=True, return_attn=True)  # (B, T, C), (B, H, T, T)
                self_attn.append(a)
            else:
                x = block(x, is_causal=True)  # (B, T, C)
        return lm.lm_head(lm.transformer.ln_f(x)), new_cache, self_attn, cross_attn  # (B, T, V)

    def _embed(self, ids: Tensor, visual: Tensor, start: int, merge: bool) -> Tensor:
        """ids (B, T) at positions start .. start+T-1, visual (B, M, N, C) → (B, T, C); `merge`: the M·N visual
        tokens written in order into the image-token positions (prefix fusion)."""
        t = self.language_model.transformer
        x = t.wte(ids)  # (B, T, C)
        if merge:
            x = merge_image_tokens(x, ids, self.config.image_token_id, visual.flatten(1, 2))  # (B, T, C)
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)  # (T,)
        return t.drop(x + t.wpe(pos))  # (B, T, C)

    def forward(self, images: Tensor | None, ids: Tensor, targets: Tensor | None = None, return_attn: bool = False,
                visual: Tensor | None = None) -> Tensor | tuple[Tensor, ...]:
        """images (B, 3, S, S) and ids (B, T) → logits (B, T, V); position t has seen the image and ids[:, :t+1].

        Several images per sequence (Flamingo's interleaved text, section 2.3): images (B, M, 3, S, S), in the
        order of their places in the text. "prefix": ids hold N `image_token_id`s per image where its visual
        tokens go (M·N in all, filled in order). "cross": ids hold one marker (`image_token_id`) per image and
        position t cross-attends only to the last image whose marker is at or before t (none before the first:
        no image term); with one image and no marker every position sees it.
        With `targets` (B, T) also the mean cross-entropy over the positions whose target is not -100
        (`answer_targets`). With `return_attn` also a dict: "self" (B, L, H, T, T) and, for "cross", "cross"
        (B, L, H, T, N) (one image without markers) or (B, L, H, T, M·N) (zero off each position's image).
        `visual`: visual tokens (B, N, C) or (B, M, N, C) from `encode_images` (or any N), instead of the images.
        """
        self._check_text(ids)
        visual = self._visual(images, visual, ids.shape[0])  # (B, M, N, C)
        M, N = visual.shape[1:3]
        self._check_markers(ids, M, N)
        x = self._embed(ids, visual, 0, merge=self.config.fusion == "prefix")  # (B, T, C)
        image_index = self._image_index(ids, M, cached=False)  # (B, T) or None
        logits, _, self_attn, cross_attn = self._layers(x, visual, image_index, None, False, return_attn)  # (B, T, V)
        out: tuple[Any, ...] = (logits,)
        if targets is not None:
            out += (self.language_model.loss(logits, targets),)
        if return_attn:
            maps = {"self": torch.stack(self_attn, dim=1)}  # (B, L, H, T, T)
            if cross_attn:
                maps["cross"] = torch.stack(cross_attn, dim=1)  # (B, L, H, T, N) or (B, L, H, T, M·N)
            out += (maps,)
        return out[0] if len(out) == 1 else out

    def forward_cached(self, ids: Tensor, visual: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """Incremental forward for generation: ids (B, T) at positions P .. P+T-1, P the positions `cache` holds
        (None: P = 0, and ids is the prompt with its image tokens or markers). visual (B, N, C) or (B, M, N, C)
        from `encode_images`. Returns logits (B, T, V) = forward(all P + T ids)[:, P:] and the extended cache."""
        P = 0 if cache is None else cache[0][0].shape[2]
        self._check_text(ids, start=P)
        visual = self._visual(None, visual, ids.shape[0])  # (B, M, N, C)
        M, N = visual.shape[1:3]
        self._check_markers(ids, M, N, new=cache is not None)
        x = self._embed(ids, visual, P, merge=cache is None and self.config.fusion == "prefix")  # (B, T, C)
        image_index = self._image_index(ids, M, cached=cache is not None)
        logits, cache, _, _ = self._layers(x, visual, image_index, cache, True, False)
        return logits, cache

    def generate(self, images: Tensor | None, ids: Tensor, max_new_tokens: int, eos_id: int | None = None,
                 use_cache: bool = True, visual: Tensor | None = None) -> Tensor:
        """Greedy answers: images (B, 3, S, S) or (B, M, 3, S, S) (or their `visual` tokens), prompts ids (B, T0)
        (all of one length) → the new tokens (B, ≤ max_new_tokens). Generation stops when every sequence has
        produced `eos_id`; after its end a sequence is continued with `eos_id`. use_cache=True feeds one new token
        per step through `forward_cached`; use_cache=False reruns the whole sequence: both give the same tokens.
        The image token (or marker) is never chosen: it marks where visual tokens go and cannot be an answer. The
        last new token is never fed back, so prompt + max_new_tokens may exceed block_size by one."""
        with torch.no_grad():
            if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
                raise ValueError(f"generate: max_new_tokens must be an int ≥ 1, got {max_new_tokens!r}")
            self._check_text(ids)
            bs = self.language_model.config.block_size
            if ids.shape[1] + max_new_tokens - 1 > bs:  # the model reads prompt + all new tokens but the last
                raise ValueError(f"generate: a prompt of {ids.shape[1]} tokens (image tokens included) plus "
                                 f"{max_new_tokens} new ones does not fit the context window block_size={bs}; shorten "
                                 "the question or ask for fewer tokens")
            with eval_mode(self):
                visual = self._visual(images, visual, ids.shape[0])  # (B, M, N, C)
                self._check_markers(ids, *visual.shape[1:3])
                logits, cache = self.forward_cached(ids, visual) if use_cache else (self(None, ids, visual=visual), None)
                out = ids
                done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)  # (B,)
                image_id = self.config.image_token_id
                for step in range(max_new_tokens):
                    last = logits[:, -1]  # (B, V)
                    if image_id is not None:  # an early checkpoint may rank the image token first
                        last = last.index_fill(-1, torch.tensor([image_id], device=last.device), float("-inf"))
                    nxt = last.argmax(dim=-1, keepdim=True)  # (B, 1)
                    if eos_id is not None:
                        nxt = nxt.masked_fill(done[:, None], eos_id)
                        done |= nxt[:, 0] == eos_id
                    out = torch.cat([out, nxt], dim=1)  # (B, T0 + step + 1)
                    if step == max_new_tokens - 1 or bool(done.all()):
                        break
                    if use_cache:
                        logits, cache = self.forward_cached(nxt, visual, cache)  # (B, 1, V)
                    else:
                        logits = self(None, out, visual=visual)  # (B, T, V)
            return out[:, ids.shape[1]:]

    def num_params(self, trainable: bool = False) -> int:
        """Parameters (each tied tensor counted once); `trainable`: only those that get a gradient."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable)


# ----------------------------------------------------------------------------------------------
# Training stages: which parts learn

def set_trainable(model: VisionLanguageModel, parts: Any) -> dict[str, int]:
    """Let exactly the named parts of `model` learn and freeze the rest; returns the trainable parameters per part.

    parts: names from `PARTS` that the model has ("vision_tower", "multi_modal_projector", "cross_attn" in
    "cross" fusion, "language_model"). A frozen part gets requires_grad=False (no gradient, so an optimizer
    skips it, weight decay included) and is kept in eval mode by `model.train()` (no dropout: a frozen module
    is a fixed function); gradients still flow through it to the parts before it (LLaVA's stage 1 trains the
    projector through the frozen language model). `config.freeze_vision` follows the tower. Gradients already
    stored on parameters that become frozen are cleared.
    """
    if not isinstance(model, VisionLanguageModel):
        raise TypeError(f"set_trainable: expected a VisionLanguageModel, got {type(model).__name__}")
    if isinstance(parts, str):
        parts = [parts]
    parts = list(parts)
    has = model.parts
    for name in parts:
        if name not in PARTS:
            raise ValueError(f"set_trainable: unknown part {name!r}; the parts are {PARTS}")
        if name not in has:
            raise ValueError(f"set_trainable: this {model.config.fusion!r} model has no {name!r} (its parts: "
                             f"{tuple(has)}); gated cross-attention layers exist only with fusion='cross'")
    for name, module in has.items():
        learns = name in parts
        for p in module.parameters():
            p.requires_grad_(learns)
            if not learns:
                p.grad = None
    model.frozen_parts = tuple(name for name in has if name not in parts)
    model.config.freeze_vision = "vision_tower" in model.frozen_parts
    model.train(model.training)  # frozen parts to eval mode now
    return {name: n for name, (n, _) in count_parameters(model).items()}


def set_stage(model: VisionLanguageModel, stage: str) -> dict[str, int]:
    """Freeze `model` for a training stage of `STAGES` and return the trainable parameters per part:

        "align"     the projector only: LLaVA's stage 1, feature alignment (Liu et al. 2023, section 4.2)
        "instruct"  projector + language model: LLaVA's stage 2, fine-tuning end to end (tower frozen)
        "xattn"     gated cross-attention layers + projector, the language model frozen (Alayrac et al. 2022,
                    section 2.2; "cross" fusion only)
        "all"       every part but the image tower (joint training from scratch)

    "all" skips "cross_attn" in a "prefix" model; "xattn" on a "prefix" model is an error."""
    if stage not in STAGES:
        raise ValueError(f"set_stage: unknown stage {stage!r}; the stages are {tuple(STAGES)} "
                         "(or call set_trainable with the parts that should learn)")
    parts = STAGES[stage]
    if stage == "all":
        parts = tuple(p for p in parts if p in model.parts)
    return set_trainable(model, parts)


def count_parameters(model: VisionLanguageModel) -> dict[str, tuple[int, int]]:
    """(trainable, total) parameters of each part the model has, in `PARTS` order; a tensor shared within a part
    (the GPT's token embedding, which is also its output head) counts once. The totals add up to
    `model.num_params()`."""
    counts = {}
    for name, module in model.parts.items():
        params = list(module.parameters())  # unique tensors: the tied head is not listed twice
        counts[name] = (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
    return counts


# ----------------------------------------------------------------------------------------------
# Where the answer looked: the explorer's maps

def answer_attention(model: VisionLanguageModel, images: Tensor, ids: Tensor, answer_start: int
                     ) -> tuple[Tensor, Tensor]:
    """Where each answer token looked on the image, layer by layer: images (1, 3, S, S) and ids (1, T), the prompt
    and the answer from position `answer_start` on → maps (L, n, G, G) and share (L, n), n = max(1, T - answer_start).

    Answer token i was produced at position p = answer_start - 1 + i (the position that predicts it; with no
    answer tokens, the one that produced the first token after the prompt). Means over the heads.
    "prefix": the maps are p's self-attention on the N = G² image positions (patch by patch, row-major) and
        the share is their sum: the part of p's attention that goes to the image (the rest goes to text).
    "cross": the maps are p's cross-attention, which always sums to 1 over the image, and the share is
        |tanh(α_l)|, layer l's attention gate: how much of that attention's output enters the residual stream
        (Flamingo's tanh gating, Alayrac et al. 2022, figure 4), the same for every token.
    One image per text, "default" visual tokens (one per patch).
    """
    with torch.no_grad():
        if not isinstance(model, VisionLanguageModel):
            raise TypeError(f"answer_attention: expected a VisionLanguageModel, got {type(model).__name__}")
        c, G = model.config, model.vision_tower.config.grid_size
        if c.vision_feature_select_strategy != "default":
            raise ValueError(f"answer_attention: the maps need one visual token per patch (strategy 'default'), this "
                             f"model uses {c.vision_feature_select_strategy!r}")
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.shape[0] != 1 or not isinstance(images, Tensor) or \
                images.dim() != 4 or images.shape[0] != 1:
            raise ValueError("answer_attention: give one text ids (1, T) and its image (1, 3, S, S), got "
                             f"{tuple(getattr(ids, 'shape', ()))} and {tuple(getattr(images, 'shape', ()))}")
        T = ids.shape[1]
        if not isinstance(answer_start, int) or not 1 <= answer_start <= T:
            raise ValueError(f"answer_attention: answer_start must be an int in [1, {T}] (the answer's first position, "
                             f"T if there is no answer), got {answer_start!r}")
        n = max(1, T - answer_start)
        positions = torch.arange(answer_start - 1, answer_start - 1 + n, device=ids.device)  # (n,)
        with eval_mode(model):
            _, maps = model(images, ids, return_attn=True)
        if c.fusion == "prefix":
            image_positions = (ids[0] == c.image_token_id).nonzero().flatten()  # (N,)
            rows = maps["self"][0].mean(dim=1)[:, positions]  # (L, n, T)
            on_image = rows[..., image_positions]  # (L, n, N)
            share = on_image.sum(dim=-1)  # (L, n)
        else:
            on_image = maps["cross"][0].mean(dim=1)[:, positions]  # (L, n, N)
            gates = torch.stack([layer.attn_gate for layer in model.cross_attn]).tanh().abs()  # (L,)
            share = gates[:, None].expand(-1, n).to(on_image.dtype)  # (L, n)
        return on_image.unflatten(-1, (G, G)), share  # (L, n, G, G), (L, n)
