"""Images as tokens: a VQ-VAE that turns an image into a small grid of codes, and the helpers that let
chapter 7's GPT draw images as [caption tokens; image codes] (DALL·E in small).

- van den Oord, Vinyals & Kavukcuoglu (2017), "Neural discrete representation learning" (VQ-VAE),
  section 3.1: the encoder's output z_e(x) at every grid position is replaced by its nearest codebook
  vector e_k, k = argmin_j ||z_e(x) - e_j||₂ (eq. 1-2)  →  `VectorQuantizer.nearest`;
  section 3.2: the quantization has no gradient, so the decoder's gradient with respect to z_q is copied
  to z_e unchanged (the straight-through estimator, Bengio et al. 2013), written
  z_q = z_e + sg[e_k - z_e]; and eq. (3), the loss
        L = log p(x | z_q(x)) + ||sg[z_e(x)] - e||²  +  β ||z_e(x) - sg[e]||²
  with the codebook term (moves the codes towards the encoder's outputs) and the commitment term
  (keeps the encoder near its codes), β = 0.25. Here the squared norms are means over the elements
  (as most implementations take them) and the log-likelihood is the mean squared error of the pixels
  →  `VectorQuantizer.forward`, `VQVAE.forward`.
- Codebook use. A code that no encoder output picks gets no gradient from the codebook term and stays
  dead. Usage is tracked as an exponential moving average of each code's share of the assignments, its
  perplexity exp(H) (H the entropy of that share; perplexity = K when all K codes are used equally) and
  the fraction of codes used in a batch are reported, and `restart_dead_codes_` moves every code whose
  share has fallen below a threshold onto a random encoder output of the current batch (the "codebook
  reset" of Dhariwal et al. 2020, "Jukebox", section 3.2 / appendix, and Williams et al. 2020)
  →  `VectorQuantizer.usage`, `VQOutput.perplexity`, `VQOutput.used`, `VectorQuantizer.restart_dead_codes_`.
- Ramesh et al. (2021), "Zero-shot text-to-image generation" (DALL·E), section 2.2: a Transformer models
  the caption's tokens followed by the image's codes as one stream, autoregressively; sampling draws the
  codes one by one given the caption; section 2.6: the samples are reranked by a CLIP score and the best
  kept  →  `joint_sequence`, `sample_image_codes`, `best_of_k`. Classifier-free guidance on the logits
  (Gafni et al. 2022, "Make-A-Scene"; Yu et al. 2022, "Parti", section 2.3: logits = uncond + s(cond -
  uncond)) needs the model also trained on captions replaced by a null caption  →  `drop_captions`.

The token layout of the joint stream: ids 0 .. V_text - 1 are the caption's tokens, V_text .. V_text + K - 1
the K image codes (code k is token V_text + k), so one `utils.gpt.GPT` with vocab_size = V_text + K reads
both. The caption has a fixed length T_c (pad it), so the image always starts at position T_c.

Letter legend (shape comments):
    B  batch size    C_in image channels   S  image side in pixels    C  hidden channels
    D  code dim      K   codebook size     G  code grid side (S / 2^downsample)   N  G² codes per image
    T_c caption tokens    V_text caption vocabulary    k  samples per caption (best of k)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .gpt import GPT, top_k_top_p_filter
from .seq2seq import eval_mode

__all__ = [
    "VQVAEConfig", "VQOutput", "VectorQuantizer", "VQVAE", "VQVAEOutput", "vqvae_loss",
    "joint_sequence", "drop_captions", "sample_image_codes", "best_of_k",
]


def _check_pos_int(who: str, **values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{who}: {name} must be a positive int, got {value!r}")


# ----------------------------------------------------------------------------------------------
# The quantizer

class VQOutput(NamedTuple):
    """What `VectorQuantizer.forward` returns."""

    z_q: Tensor  # (B, D, G, G) the quantized vectors, straight-through: value e_k, gradient to z_e
    codes: Tensor  # (B, G, G) int64, the index k of each position's code
    loss: Tensor  # codebook_loss + β · commitment_loss
    codebook_loss: Tensor  # mean ||sg[z_e] - e||²: trains the codebook
    commitment_loss: Tensor  # mean ||z_e - sg[e]||²: trains the encoder
    perplexity: Tensor  # exp(entropy of the codes' shares in this batch): K when all are used equally
    used: Tensor  # the fraction of the K codes used at least once in this batch


class VectorQuantizer(nn.Module):
    """K learned D-vectors (`embedding.weight`, (K, D)); every D-vector of the input is replaced by its nearest.

    `usage` (K,) is a buffer: the moving average (factor `decay`) of each code's share of the assignments,
    updated by every forward pass in training mode; `restart_dead_codes_` reads it.
    """

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25, decay: float = 0.99) -> None:
        super().__init__()
        _check_pos_int("VectorQuantizer", codebook_size=codebook_size, code_dim=code_dim)
        if not beta >= 0:
            raise ValueError(f"VectorQuantizer: beta (the commitment weight) must be ≥ 0, got {beta}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"VectorQuantizer: decay must be in [0, 1), got {decay}")
        self.codebook_size, self.code_dim, self.beta, self.decay = codebook_size, code_dim, beta, decay
        self.embedding = nn.Embedding(codebook_size, code_dim)  # (K, D)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("usage", torch.full((codebook_size,), 1.0 / codebook_size))  # (K,) shares

    def _check_z(self, z: Any, who: str) -> None:
        if not isinstance(z, Tensor) or not z.is_floating_point() or z.dim() != 4 or z.shape[1] != self.code_dim:
            got = f"shape {tuple(z.shape)}, dtype {z.dtype}" if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"{who}: z must be a float tensor (B, D={self.code_dim}, G, G), got {got}")

    def nearest(self, z: Tensor) -> Tensor:
        """z (..., D) → (...,) int64: the index of the nearest code in Euclidean distance (eq. 2), ties to the lowest."""
        e = self.embedding.weight  # (K, D)
        d = z.pow(2).sum(-1, keepdim=True) - 2 * z @ e.T + e.pow(2).sum(-1)  # (..., K) squared distances
        return d.argmin(dim=-1)  # (...,)

    def lookup(self, codes: Tensor) -> Tensor:
        """codes (B, G, G) int64 in [0, K) → their vectors (B, D, G, G)."""
        if not isinstance(codes, Tensor) or codes.dtype != torch.long or codes.dim() != 3:
            got = f"shape {tuple(codes.shape)}, dtype {codes.dtype}" if isinstance(codes, Tensor) else \
                type(codes).__name__
            raise ValueError(f"lookup: codes must be an int64 tensor (B, G, G), got {got}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"lookup: codes must lie in [0, K={self.codebook_size}), got min {int(codes.min())}, "
                             f"max {int(codes.max())}; image codes from a joint stream are token ids minus V_text")
        return rearrange(self.embedding(codes), "b h w d -> b d h w")  # (B, D, G, G)

    def forward(self, z_e: Tensor) -> VQOutput:
        """z_e (B, D, G, G), the encoder's output → `VQOutput` (eq. 1-3 of van den Oord et al. 2017)."""
        self._check_z(z_e, "VectorQuantizer")
        codes = self.nearest(rearrange(z_e, "b d h w -> b h w d"))  # (B, G, G)
        e = self.lookup(codes)  # (B, D, G, G)
        codebook_loss = F.mse_loss(e, z_e.detach())  # ||sg[z_e] - e||²
        commitment_loss = F.mse_loss(z_e, e.detach())  # ||z_e - sg[e]||²
        z_q = z_e + (e - z_e).detach()  # (B, D, G, G) forward: e; backward: identity to z_e
        counts = torch.bincount(codes.flatten(), minlength=self.codebook_size).to(z_e.dtype)  # (K,)
        share = counts / counts.sum().clamp_min(1)  # (K,)
        perplexity = torch.exp(-(share * torch.log(share.clamp_min(1e-12))).sum())
        if self.training:
            with torch.no_grad():
                self.usage.mul_(self.decay).add_(share.to(self.usage.dtype), alpha=1 - self.decay)
        return VQOutput(z_q, codes, codebook_loss + self.beta * commitment_loss, codebook_loss, commitment_loss,
                        perplexity, (counts > 0).to(z_e.dtype).mean())

    def restart_dead_codes_(self, z_e: Tensor, threshold: float | None = None,
                            generator: torch.Generator | None = None) -> int:
        """Move every code whose `usage` share is below `threshold` (default 1 / (10 K): a tenth of a fair
        share) onto a random encoder output among z_e (B, D, G, G) (drawn without replacement while there
        are enough), and reset its share to 1 / K. Returns the number of codes restarted."""
        with torch.no_grad():
            self._check_z(z_e, "restart_dead_codes_")
            K = self.codebook_size
            threshold = 0.1 / K if threshold is None else threshold
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"restart_dead_codes_: threshold is a share of the assignments in [0, 1], got {threshold}")
            dead = torch.nonzero(self.usage < threshold).flatten()  # (n,)
            n = len(dead)
            if n == 0:
                return 0
            vectors = rearrange(z_e, "b d h w -> (b h w) d")  # (B·N, D)
            M = len(vectors)
            pick = (torch.randperm(M, generator=generator)[:n] if M >= n else
                    torch.randint(M, (n,), generator=generator)).to(vectors.device)  # (n,)
            self.embedding.weight[dead.to(vectors.device)] = vectors[pick].to(self.embedding.weight.dtype)
            self.usage[dead] = 1.0 / K
            return n


# ----------------------------------------------------------------------------------------------
# The VQ-VAE

@dataclass
class VQVAEConfig:
    """Sizes of a VQ-VAE. The defaults: 32×32 RGB → a 4×4 grid of codes from a codebook of 512, 16 numbers
    each: 16 codes per image, a short sequence for chapter 12's GPT. (In chapter 12's prototype an 8×8 grid of
    128 codes made the GPT 2-3 times slower per step. With 4×4, the captioned shapes' places lie on the cells'
    borders, so a small shape is split over several codes and often decodes as a blob: the reader read the kind
    of 55% of small shapes' reconstructions right, 89% of large ones', in chapter 12's run.)"""

    image_size: int = 32  # S
    channels: int = 3  # C_in
    hidden: int = 64  # C: the convolutions' width
    downsample: int = 3  # stride-2 convolutions: G = S / 2^downsample
    res_blocks: int = 1  # residual blocks at the grid's resolution, in the encoder and in the decoder
    codebook_size: int = 512  # K
    code_dim: int = 16  # D
    beta: float = 0.25  # commitment weight β
    decay: float = 0.99  # moving average of the codes' usage

    def __post_init__(self) -> None:
        _check_pos_int("VQVAEConfig", image_size=self.image_size, channels=self.channels, hidden=self.hidden,
                       downsample=self.downsample, codebook_size=self.codebook_size, code_dim=self.code_dim)
        if not isinstance(self.res_blocks, int) or isinstance(self.res_blocks, bool) or self.res_blocks < 0:
            raise ValueError(f"VQVAEConfig: res_blocks must be an int ≥ 0, got {self.res_blocks!r}")
        if self.image_size % 2 ** self.downsample:
            raise ValueError(f"VQVAEConfig: image_size={self.image_size} is not divisible by 2^downsample="
                             f"{2 ** self.downsample}; pick a size or a downsample that divide")

    @property
    def grid_size(self) -> int:
        """G: codes per side."""
        return self.image_size // 2 ** self.downsample


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): the residual block of the VQ-VAE paper (section 4.1)."""

    def __init__(self, C: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(C, C, 3, padding=1)
        self.conv2 = nn.Conv2d(C, C, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))  # (B, C, G, G)


class VQVAEOutput(NamedTuple):
    """What `VQVAE.forward` returns."""

    recon: Tensor  # (B, C_in, S, S) the decoded image
    codes: Tensor  # (B, G, G) int64
    loss: Tensor  # recon_loss + vq_loss: what training minimises
    recon_loss: Tensor  # mean squared error of the pixels
    vq_loss: Tensor  # codebook + β · commitment
    perplexity: Tensor
    used: Tensor


class VQVAE(nn.Module):
    """encoder: `downsample` stride-2 4×4 convolutions (ReLU), residual blocks, a 1×1 convolution to D;
    quantizer: `VectorQuantizer`; decoder: the mirror image with transposed convolutions.

        images (B, C_in, S, S) → z_e (B, D, G, G) → codes (B, G, G) → z_q (B, D, G, G) → images (B, C_in, S, S)
    """

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        if not isinstance(config, VQVAEConfig):
            raise TypeError(f"VQVAE takes a VQVAEConfig, got {type(config).__name__}")
        c = self.config = config
        down: list[nn.Module] = []
        for i in range(c.downsample):
            down += [nn.Conv2d(c.channels if i == 0 else c.hidden, c.hidden, 4, stride=2, padding=1), nn.ReLU()]
        self.encoder = nn.Sequential(*down, *[ResBlock(c.hidden) for _ in range(c.res_blocks)], nn.ReLU(),
                                     nn.Conv2d(c.hidden, c.code_dim, 1))
        self.quantizer = VectorQuantizer(c.codebook_size, c.code_dim, c.beta, c.decay)
        up: list[nn.Module] = []
        for i in range(c.downsample):
            last = i == c.downsample - 1
            up += [nn.ReLU(), nn.ConvTranspose2d(c.hidden, c.channels if last else c.hidden, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(nn.Conv2d(c.code_dim, c.hidden, 3, padding=1),
                                     *[ResBlock(c.hidden) for _ in range(c.res_blocks)], *up)

    def _check_images(self, images: Any, who: str) -> None:
        c = self.config
        want = (c.channels, c.image_size, c.image_size)
        if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() != 4 or \
                tuple(images.shape[1:]) != want:
            got = f"shape {tuple(images.shape)}, dtype {images.dtype}" if isinstance(images, Tensor) else \
                type(images).__name__
            raise ValueError(f"{who}: images must be a float tensor (B, {', '.join(map(str, want))}) "
                             f"(e.g. CaptionedShapes.pixels(), in [-1, 1]), got {got}")

    def _check_codes(self, codes: Any, who: str) -> None:
        G, K = self.config.grid_size, self.config.codebook_size
        if not isinstance(codes, Tensor) or codes.dtype != torch.long or codes.dim() != 3 or \
                tuple(codes.shape[1:]) != (G, G):
            got = f"shape {tuple(codes.shape)}, dtype {codes.dtype}" if isinstance(codes, Tensor) else \
                type(codes).__name__
            raise ValueError(f"{who}: codes must be an int64 tensor (B, {G}, {G}), got {got}; a flat (B, {G * G}) "
                             f"row becomes a grid with codes.view(-1, {G}, {G})")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= K):
            raise ValueError(f"{who}: codes must lie in [0, K={K}), got min {int(codes.min())}, max "
                             f"{int(codes.max())}; image codes from a joint stream are token ids minus V_text")

    def encode_continuous(self, images: Tensor) -> Tensor:
        """images (B, C_in, S, S) → z_e (B, D, G, G), before quantization."""
        self._check_images(images, "encode")
        return self.encoder(images)  # (B, D, G, G)

    def encode(self, images: Tensor) -> Tensor:
        """images (B, C_in, S, S) → codes (B, G, G) int64: each position's nearest code."""
        z_e = self.encode_continuous(images)  # (B, D, G, G)
        return self.quantizer.nearest(rearrange(z_e, "b d h w -> b h w d"))  # (B, G, G)

    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, G, G) int64 in [0, K) → images (B, C_in, S, S)."""
        self._check_codes(codes, "decode")
        return self.decoder(self.quantizer.lookup(codes))  # (B, C_in, S, S)

    def forward(self, images: Tensor) -> VQVAEOutput:
        """images (B, C_in, S, S) → `VQVAEOutput`: reconstruction, codes and the losses of eq. (3)."""
        z_e = self.encode_continuous(images)  # (B, D, G, G)
        q = self.quantizer(z_e)
        recon = self.decoder(q.z_q)  # (B, C_in, S, S)
        recon_loss = F.mse_loss(recon, images)
        return VQVAEOutput(recon, q.codes, recon_loss + q.loss, recon_loss, q.loss, q.perplexity, q.used)


def vqvae_loss(model: VQVAE, images: Tensor) -> Tensor:
    """The training loss for `utils.train.train`: `model(images).loss` (a batch is a tensor of images)."""
    return model(images).loss


# ----------------------------------------------------------------------------------------------
# GPT on [caption tokens; image codes]

def _check_ids(ids: Any, who: str, name: str, high: int) -> None:
    if not isinstance(ids, Tensor) or ids.dtype != torch.long or ids.dim() != 2 or ids.shape[1] == 0:
        got = f"shape {tuple(ids.shape)}, dtype {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"{who}: {name} must be a non-empty int64 tensor (B, length), got {got}")
    if int(ids.min()) < 0 or int(ids.max()) >= high:
        raise ValueError(f"{who}: {name} must lie in [0, {high}), got min {int(ids.min())}, max {int(ids.max())}")


def joint_sequence(text_ids: Tensor, codes: Tensor, text_vocab: int, codebook_size: int,
                   text_loss: bool = False) -> tuple[Tensor, Tensor]:
    """The GPT's input and targets for captions text_ids (B, T_c) (ids in [0, V_text), padded to one length)
    and image codes (B, G, G) or (B, N) (in [0, K)).

    The stream is [text_ids; V_text + codes] (B, T_c + N); the input is all but its last token and the
    targets all but its first (next-token prediction), both (B, T_c + N - 1). Targets that are caption
    tokens are -100 (ignored by the loss) unless `text_loss`: the model learns p(image | caption) only.
    """
    _check_pos_int("joint_sequence", text_vocab=text_vocab, codebook_size=codebook_size)
    _check_ids(text_ids, "joint_sequence", "text_ids", text_vocab)
    if isinstance(codes, Tensor) and codes.dim() == 3:
        codes = codes.flatten(1)  # (B, N) row by row
    _check_ids(codes, "joint_sequence", "codes (B, G, G) or (B, N)", codebook_size)
    if len(codes) != len(text_ids):
        raise ValueError(f"joint_sequence: {len(text_ids)} captions but {len(codes)} images")
    stream = torch.cat([text_ids, codes + text_vocab], dim=1)  # (B, T_c + N)
    targets = stream[:, 1:].clone()  # (B, T_c + N - 1)
    if not text_loss:
        targets[:, : text_ids.shape[1] - 1] = -100  # positions whose next token is a caption token
    return stream[:, :-1], targets


def drop_captions(text_ids: Tensor, null_ids: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Each caption of text_ids (B, T_c) replaced by the null caption null_ids (T_c,) with probability p:
    the condition dropout that makes one model both conditional and unconditional (for guidance)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop_captions: p is a probability in [0, 1], got {p}")
    if not isinstance(null_ids, Tensor) or null_ids.dim() != 1 or not isinstance(text_ids, Tensor) or \
            text_ids.dim() != 2 or null_ids.shape[0] != text_ids.shape[1]:
        raise ValueError(f"drop_captions: text_ids must be (B, T_c) and null_ids (T_c,), got "
                         f"{tuple(getattr(text_ids, 'shape', ()))} and {tuple(getattr(null_ids, 'shape', ()))}")
    drop = torch.rand(len(text_ids), generator=generator) < p  # (B,)
    return torch.where(drop.to(text_ids.device)[:, None], null_ids.to(text_ids)[None], text_ids)  # (B, T_c)


def sample_image_codes(model: GPT, text_ids: Tensor, n_codes: int, text_vocab: int, codebook_size: int,
                       temperature: float = 1.0, top_k: int | None = None, guidance_scale: float = 1.0,
                       null_ids: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Draw `n_codes` image codes for each caption of text_ids (B, T_c), one at a time with the KV cache:
    codes (B, n_codes) int64 in [0, K). Only image tokens can be drawn (the caption tokens' logits are
    masked); sampling is from softmax(logits / temperature), restricted to the `top_k` most likely codes.

    guidance_scale s ≠ 1: classifier-free guidance on the logits, logits_u + s (logits_c - logits_u), where
    logits_u continue the null caption `null_ids` (T_c,) with the same codes (the model must have been
    trained with `drop_captions`). s = 1 is the plain conditional model."""
    with torch.no_grad():
        if not isinstance(model, GPT):
            raise TypeError(f"sample_image_codes: model must be a GPT, got {type(model).__name__}")
        _check_pos_int("sample_image_codes", n_codes=n_codes, text_vocab=text_vocab, codebook_size=codebook_size)
        _check_ids(text_ids, "sample_image_codes", "text_ids", text_vocab)
        V = model.config.vocab_size
        if text_vocab + codebook_size > V:
            raise ValueError(f"sample_image_codes: V_text + K = {text_vocab + codebook_size} tokens do not fit the "
                             f"model's vocab_size={V}")
        if text_ids.shape[1] + n_codes - 1 > model.config.block_size:
            raise ValueError(f"sample_image_codes: T_c + n_codes - 1 = {text_ids.shape[1] + n_codes - 1} positions do "
                             f"not fit the context window block_size={model.config.block_size}")
        if not temperature > 0:
            raise ValueError(f"sample_image_codes: temperature must be > 0, got {temperature}")
        if top_k is not None and (not isinstance(top_k, int) or not 1 <= top_k <= codebook_size):
            raise ValueError(f"sample_image_codes: top_k must be an int in [1, K={codebook_size}] or None, got {top_k!r}")
        guided = guidance_scale != 1.0
        B = len(text_ids)
        if guided:
            if null_ids is None or not isinstance(null_ids, Tensor) or null_ids.shape != (text_ids.shape[1],):
                raise ValueError(f"sample_image_codes: guidance_scale={guidance_scale} needs null_ids, the null caption "
                                 f"(T_c={text_ids.shape[1]},) the model was trained with (drop_captions)")
            _check_ids(null_ids[None], "sample_image_codes", "null_ids", text_vocab)
            text_ids = torch.cat([text_ids, null_ids.to(text_ids)[None].expand(B, -1)])  # (2B, T_c): cond, then null
        with eval_mode(model):
            logits, cache = model.forward_cached(text_ids)  # (B', T_c, V)
            codes = []
            for i in range(n_codes):
                last = logits[:, -1, text_vocab:text_vocab + codebook_size].float()  # (B', K) image tokens only
                if guided:
                    last = last[B:] + guidance_scale * (last[:B] - last[B:])  # (B, K)
                last = top_k_top_p_filter(last / temperature, top_k=top_k)
                probs = last.softmax(dim=-1)  # (B, K)
                nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(probs.device)  # (B, 1)
                codes.append(nxt)
                if i + 1 < n_codes:
                    step = nxt.repeat(2, 1) if guided else nxt  # (B', 1)
                    logits, cache = model.forward_cached(step + text_vocab, cache)  # (B', 1, V)
        return torch.cat(codes, dim=1)  # (B, n_codes)


def best_of_k(candidates: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """DALL·E's reranking: candidates (B, k, ...) (k samples for each of B captions) and their scores (B, k)
    (e.g. CLIP's similarity of each sample to its caption) → (the highest-scoring sample of each row
    (B, ...), its index (B,)). Ties go to the first."""
    if not isinstance(scores, Tensor) or scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(f"best_of_k: scores must be (B, k) with k ≥ 1, got "
                         f"{tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}")
    if not isinstance(candidates, Tensor) or tuple(candidates.shape[:2]) != tuple(scores.shape):
        raise ValueError(f"best_of_k: candidates must be (B, k, ...) with (B, k) = {tuple(scores.shape)}, got "
                         f"{tuple(candidates.shape) if isinstance(candidates, Tensor) else type(candidates).__name__}")
    if torch.isnan(scores).any():
        raise ValueError("best_of_k: scores hold NaN")
    index = scores.argmax(dim=1)  # (B,)
    rows = torch.arange(len(scores))  # CPU index tensors index a tensor on any device
    return candidates[rows, index.cpu()], index
