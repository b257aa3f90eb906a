"""Diffusion: noise an image step by step, learn to predict the noise, and run the chain backwards from pure
noise to an image, conditioned on a caption and steered by classifier-free guidance.

- Ho, Jain & Abbeel (2020), "Denoising diffusion probabilistic models" (DDPM):
  the forward process q(x_t | x_{t-1}) = N(sqrt(1 - β_t) x_{t-1}, β_t I) with β linear from 1e-4 to 0.02
  over T = 1000 steps (section 4), closed form q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I),
  ᾱ_t = Π_{s ≤ t} (1 - β_s) (eq. 4)  →  `NoiseSchedule`, `NoiseSchedule.add_noise`;
  the simplified loss ||ε - ε_θ(sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, t)||² with t uniform (eq. 14, Algorithm 1)
  →  `diffusion_loss`;
  ancestral sampling: x_0's estimate from ε_θ, then the posterior q(x_{t-1} | x_t, x_0) = N(μ̃, β̃ I) with
  μ̃ = sqrt(ᾱ_{t-1}) β_t / (1 - ᾱ_t) x_0 + sqrt(α_t) (1 - ᾱ_{t-1}) / (1 - ᾱ_t) x_t and
  β̃ = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) β_t (eq. 6-7; Algorithm 2 is the same step written with ε)
  →  `NoiseSchedule.ddpm_step`. With fewer steps than T (t → t' < t - 1), α_t and β_t are those of the
  jump: α = ᾱ_t / ᾱ_{t'}, β = 1 - α.
- Nichol & Dhariwal (2021), "Improved denoising diffusion probabilistic models", eq. (17): the cosine
  schedule ᾱ_t = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2), s = 0.008, β clipped at 0.999
  →  `NoiseSchedule(schedule="cosine")`.
- Song, Meng & Ermon (2021), "Denoising diffusion implicit models" (DDIM), eq. (12):
  x_{t'} = sqrt(ᾱ_{t'}) x̂_0 + sqrt(1 - ᾱ_{t'} - σ²) ε_θ + σ z, σ = η sqrt((1 - ᾱ_{t'}) / (1 - ᾱ_t))
  sqrt(1 - ᾱ_t / ᾱ_{t'})  →  `NoiseSchedule.ddim_step`; η = 0 is deterministic.
  **Why DDIM as the few-step sampler.** It needs no other training: the same ε-prediction network trained
  with DDPM's loss samples in 25-50 steps instead of 1,000, because DDIM's non-Markovian process has the
  same marginals q(x_t | x_0) (section 4.1); and with η = 0 the path from noise to image is deterministic,
  so a denoising-step explorer and a guidance-scale comparison start from the same noise and differ only
  by what is compared. Flow matching with Euler steps (Lipman et al. 2023; Liu et al. 2023; Stable
  Diffusion 3) would need its own training objective (velocity prediction) and its own network.
- Timesteps for fewer steps: "leading" (DDIM's and diffusers' default: 0, k, 2k, ... with k = T // n,
  largest first) or "trailing" (T - 1, T - 1 - T/n, ...: Lin et al. 2024, "Common diffusion noise schedules
  and sample steps are flawed", table 2), which starts where the model was trained on the noisiest images
  →  `NoiseSchedule.timesteps`.
- Ho & Salimans (2022), "Classifier-free diffusion guidance": train one network with the condition
  replaced by a null condition a fraction p_uncond of the time (Algorithm 1), and sample with
  ε̃ = ε_θ(x_t, ∅) + s (ε_θ(x_t, c) - ε_θ(x_t, ∅)) (eq. 6 with w = s - 1), as diffusers' pipelines do
  →  `guide`, `guided_epsilon`. s = 1 is the conditional model, s > 1 trades diversity for fidelity.
- What the network predicts: ε (DDPM's choice, `prediction="epsilon"`) or the clean image x_0
  (`prediction="sample"`, diffusers' name; the loss is then ||x_0 - x̂_0||²). Both give the sampler an ε
  (ε̂ = (x_t - sqrt(ᾱ_t) x̂_0) / sqrt(1 - ᾱ_t), `NoiseSchedule.epsilon_from_x0`). Predicting x_0 matters when
  a token is wider than the network: a DiT with 8×8 patches of 3 colours must output 192 numbers per token
  from a 128-wide token, and the noise (full-rank) cannot pass through it while the clean image (a few
  flat shapes) can (Li & He 2025, "Back to basics: let denoising generative models denoise"). Even with
  4×4 patches, in chapter 12's prototype (1,200 steps of 32 captioned shapes) the ε-predicting DiT sampled
  noise, while the x_0-predicting one drew the right colour in the right place (as blobs: the kind came
  last). In the VQ-VAE's 4×4 latent (1,300 steps of 64) ε prediction drew shapes but ignored the caption
  (2% match, cosine or linear schedule) and x_0 prediction matched 25-45%: predicting ε, the caption only
  changes the target at high noise, and there the x̂_0 implied by ε̂ is off by ε's error / sqrt(ᾱ_t).
- The denoiser is a small DiT (Peebles & Xie 2023, "Scalable diffusion models with Transformers"): the
  noisy image cut into P×P patches as in chapter 8's ViT, a timestep embedding (the Transformer's
  sinusoids, DDPM appendix B) and the caption's tokens (Stable Diffusion conditions on CLIP's text
  features; here chapter 9's text tower, `clip_text_features`) placed in the same sequence as the patches
  (DiT's "in-context conditioning", section 3.2), chapter 6's pre-norm `EncoderLayer`s, and a linear
  head that predicts the noise of each patch  →  `Denoiser`.

Letter legend (shape comments):
    B  batch size      C_in image channels     S  image side in pixels     P  patch side
    G  patches per side (S / P)     N  patches (G²)     C  the denoiser's width     H  heads
    T_c caption tokens     E  caption feature size     T  training timesteps (num_train_timesteps)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .transformer import EncoderLayer

__all__ = [
    "NoiseSchedule", "timestep_embedding", "sincos_2d", "DenoiserConfig", "Denoiser", "diffusion_loss", "guide",
    "guided_epsilon", "sample", "clip_text_features",
]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ----------------------------------------------------------------------------------------------
# The noise schedule, the forward process and the two samplers' steps

class NoiseSchedule:
    """β_1..β_T (`betas`), α_t = 1 - β_t (`alphas`) and ᾱ_t = Π α_s (`alphas_cumprod`), float32 tensors of
    length T, indexed 0 .. T-1 (index t is the paper's t + 1). schedule "linear" (DDPM: β evenly spaced from
    beta_start to beta_end) or "cosine" (Nichol & Dhariwal 2021, eq. 17)."""

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 schedule: str = "linear") -> None:
        if not _is_int(num_train_timesteps) or num_train_timesteps < 2:
            raise ValueError(f"NoiseSchedule: num_train_timesteps must be an int ≥ 2, got {num_train_timesteps!r}")
        T = self.num_train_timesteps = num_train_timesteps
        if schedule == "linear":
            if not 0.0 < beta_start <= beta_end < 1.0:
                raise ValueError(f"NoiseSchedule: need 0 < beta_start ≤ beta_end < 1, got {beta_start}, {beta_end}")
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)  # (T,)
        elif schedule == "cosine":
            f = [math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]  # f(0) .. f(T)
            betas = torch.tensor([min(1 - f[t + 1] / f[t], 0.999) for t in range(T)], dtype=torch.float32)  # (T,)
        else:
            raise ValueError(f"NoiseSchedule: schedule must be 'linear' or 'cosine', got {schedule!r}")
        self.schedule = schedule
        self.betas = betas
        self.alphas = 1.0 - betas  # (T,)
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # (T,) ᾱ_t

    def __repr__(self) -> str:
        return f"NoiseSchedule(T={self.num_train_timesteps}, {self.schedule})"

    def _abar(self, t: int) -> Tensor:
        """ᾱ_t for an int t in [-1, T); t = -1 (one step past the last) is ᾱ = 1: the clean image."""
        if not _is_int(t) or not -1 <= t < self.num_train_timesteps:
            raise ValueError(f"timestep must be an int in [-1, {self.num_train_timesteps}) (-1: the clean image), "
                             f"got {t!r}")
        return self.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)

    def _check_t(self, t: Any, B: int) -> Tensor:
        if _is_int(t):
            t = torch.full((B,), t)
        if not isinstance(t, Tensor) or t.dtype not in (torch.int64, torch.int32) or t.shape not in ((B,), ()):
            got = f"shape {tuple(t.shape)}, dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"timesteps must be an int or an integer tensor (B,) = ({B},), got {got}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps}), got min {int(t.min())}, max "
                             f"{int(t.max())}")
        return t.expand(B).long()

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """q(x_t | x_0), eq. (4): sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) noise; x0 and noise (B, ...), t (B,) or an int."""
        if not isinstance(x0, Tensor) or not isinstance(noise, Tensor) or x0.shape != noise.shape or x0.dim() < 1:
            raise ValueError(f"add_noise: x0 and noise must be tensors of one shape (B, ...), got "
                             f"{tuple(getattr(x0, 'shape', ()))} and {tuple(getattr(noise, 'shape', ()))}")
        t = self._check_t(t, x0.shape[0])  # (B,)
        abar = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype)  # (B,): t on x0's device or the CPU
        abar = abar.view(-1, *[1] * (x0.dim() - 1))  # (B, 1, ...)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def timesteps(self, steps: int, spacing: str = "trailing") -> list[int]:
        """The `steps` timesteps a sampler visits, noisiest first: "leading" [k(n-1), ..., k, 0] with
        k = T // n, or "trailing" [T-1, ...] (T - 1 - i·T/n rounded). Each step goes from one to the next,
        the last to -1 (the clean image). (diffusers' DDIMScheduler.step always jumps back T // n, which is
        the next timestep of a trailing list only when n divides T.)"""
        T = self.num_train_timesteps
        if not _is_int(steps) or not 1 <= steps <= T:
            raise ValueError(f"timesteps: steps must be an int in [1, T={T}], got {steps!r}")
        if spacing == "leading":
            return [i * (T // steps) for i in reversed(range(steps))]
        if spacing == "trailing":
            return [round(T - i * T / steps) - 1 for i in range(steps)]
        raise ValueError(f"timesteps: spacing must be 'leading' or 'trailing', got {spacing!r}")

    def epsilon_from_x0(self, x0: Tensor, t: int, x_t: Tensor) -> Tensor:
        """ε̂ = (x_t - sqrt(ᾱ_t) x̂_0) / sqrt(1 - ᾱ_t): the noise a predicted clean image implies (the inverse of
        `predict_x0`)."""
        abar = self._abar(t).to(x_t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    def predict_x0(self, eps: Tensor, t: int, x_t: Tensor) -> Tensor:
        """x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t): the clean image the predicted noise implies."""
        abar = self._abar(t).to(x_t)
        return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()

    def _check_step(self, eps: Any, t: int, x_t: Any, prev_t: int, who: str) -> None:
        if not isinstance(eps, Tensor) or not isinstance(x_t, Tensor) or eps.shape != x_t.shape:
            raise ValueError(f"{who}: eps and x_t must be tensors of one shape, got "
                             f"{tuple(getattr(eps, 'shape', ()))} and {tuple(getattr(x_t, 'shape', ()))}")
        self._abar(t), self._abar(prev_t)
        if not (t >= 0 and prev_t < t):
            raise ValueError(f"{who}: a step goes from t ≥ 0 to an earlier prev_t < t, got t={t}, prev_t={prev_t}")

    def ddpm_step(self, eps: Tensor, t: int, x_t: Tensor, prev_t: int | None = None, noise: Tensor | None = None,
                  generator: torch.Generator | None = None, clip_x0: bool = False) -> Tensor:
        """One ancestral step x_t → x_{prev_t} (default prev_t = t - 1), eq. (6-7): the posterior mean given
        x̂_0 (clamped to [-1, 1] if `clip_x0`) plus sqrt(β̃) z, z = `noise` or drawn with `generator`; no noise
        at t = 0."""
        prev_t = t - 1 if prev_t is None else prev_t
        self._check_step(eps, t, x_t, prev_t, "ddpm_step")
        abar_t, abar_prev = self._abar(t).to(x_t), self._abar(prev_t).to(x_t)
        alpha = abar_t / abar_prev  # α of the jump t → prev_t
        beta = 1 - alpha
        x0 = self.predict_x0(eps, t, x_t)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        mean = (abar_prev.sqrt() * beta / (1 - abar_t)) * x0 + (alpha.sqrt() * (1 - abar_prev) / (1 - abar_t)) * x_t
        if t == 0:
            return mean
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
        variance = ((1 - abar_prev) / (1 - abar_t) * beta).clamp_min(1e-20)  # β̃
        return mean + variance.sqrt() * noise

    def ddim_step(self, eps: Tensor, t: int, x_t: Tensor, prev_t: int, eta: float = 0.0,
                  noise: Tensor | None = None, generator: torch.Generator | None = None,
                  clip_x0: bool = False) -> Tensor:
        """One DDIM step x_t → x_{prev_t}, eq. (12): sqrt(ᾱ') x̂_0 + sqrt(1 - ᾱ' - σ²) ε + σ z; η = 0 (the
        default) is deterministic. x̂_0 is clamped to [-1, 1] if `clip_x0` (ε itself is kept)."""
        self._check_step(eps, t, x_t, prev_t, "ddim_step")
        if not eta >= 0:
            raise ValueError(f"ddim_step: eta must be ≥ 0, got {eta}")
        abar_t, abar_prev = self._abar(t).to(x_t), self._abar(prev_t).to(x_t)
        x0 = self.predict_x0(eps, t, x_t)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
        x_prev = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma ** 2).sqrt() * eps
        if eta > 0:
            if noise is None:
                noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
            x_prev = x_prev + sigma * noise
        return x_prev


# ----------------------------------------------------------------------------------------------
# The denoiser

def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """t (B,) → (B, dim): [sin(t ω_0) .. sin(t ω_{dim/2-1}), cos(t ω_0) ..], ω_i = max_period^(-i / (dim/2)):
    the Transformer's sinusoidal positions, with the timestep as the position (DDPM, appendix B)."""
    if not _is_int(dim) or dim < 2 or dim % 2:
        raise ValueError(f"timestep_embedding: dim must be an even int ≥ 2, got {dim!r}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)  # (dim/2,)
    angles = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (B, dim)


def sincos_2d(G: int, dim: int) -> Tensor:
    """(G², dim) positions of a G×G grid, row by row: the first dim/2 channels the sinusoids of the column
    index, the last dim/2 those of the row (the fixed 2-D embedding of MAE and DiT, in their order). A
    transformer that starts from them knows which patches are neighbours before it has learned anything."""
    if not _is_int(dim) or dim % 4:
        raise ValueError(f"sincos_2d: dim must be a multiple of 4, got {dim!r}")
    rows, cols = torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij")  # (G, G) each
    return torch.cat([timestep_embedding(cols.flatten(), dim // 2), timestep_embedding(rows.flatten(), dim // 2)], 1)


@dataclass
class DenoiserConfig:
    """Sizes of the DiT denoiser. The defaults: 32×32 RGB in patches of 4 (64 tokens), width 128, 4 blocks."""

    image_size: int = 32  # S
    channels: int = 3  # C_in
    patch_size: int = 4  # P
    width: int = 128  # C
    layers: int = 4
    heads: int = 4  # H
    cond_dim: int = 64  # E: the caption features' size (CLIP's text width)
    max_cond_len: int = 32  # T_c at most
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "patch_size", "width", "layers", "heads", "cond_dim", "max_cond_len"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"DenoiserConfig: {name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"DenoiserConfig: image_size={self.image_size} is not divisible by patch_size="
                             f"{self.patch_size}")
        if self.width % self.heads or self.width % 4:
            raise ValueError(f"DenoiserConfig: width={self.width} must be a multiple of 4 and of heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DenoiserConfig: dropout must be in [0, 1), got {self.dropout}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


class Denoiser(nn.Module):
    """ε_θ(x_t, t, caption): a DiT with in-context conditioning.

        tokens = [time token; caption tokens; patch tokens + time]     (B, 1 + T_c + N, C)
        tokens = block(tokens) for each EncoderLayer (pre-norm, GELU, no causal mask)
        ε = unpatchify(head(ln_f(patch tokens)))                       (B, C_in, S, S)

    The caption arrives as features `cond` (B, T_c, E) with `cond_mask` (B, T_c), True on real tokens;
    `drop` (B,) True replaces a row's caption by the learned null token `null_cond` (and masks the rest):
    the unconditional model of classifier-free guidance. The head starts at zero (DiT's adaLN-Zero idea:
    the untrained network predicts ε = 0).
    """

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        if not isinstance(config, DenoiserConfig):
            raise TypeError(f"Denoiser takes a DenoiserConfig, got {type(config).__name__}")
        c = self.config = config
        C = c.width
        self.patch_embed = nn.Conv2d(c.channels, C, c.patch_size, stride=c.patch_size)  # chapter 8's conv1
        self.pos_embed = nn.Parameter(sincos_2d(c.grid_size, C)[None])  # (1, N, C) learned, from DiT's fixed start
        self.time_mlp = nn.Sequential(nn.Linear(C, C), nn.SiLU(), nn.Linear(C, C))
        self.cond_proj = nn.Linear(c.cond_dim, C)
        self.cond_pos = nn.Parameter(torch.randn(1, c.max_cond_len, C) * 0.02)  # (1, T_c max, C)
        self.null_cond = nn.Parameter(torch.randn(C) * 0.02)  # (C,) the caption ∅
        self.blocks = nn.ModuleList(EncoderLayer(C, c.heads, 4 * C, c.dropout, "gelu", norm_first=True)
                                    for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(C)
        self.head = nn.Linear(C, c.channels * c.patch_size ** 2)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _check(self, x_t: Any, t: Any, cond: Any, cond_mask: Any, drop: Any) -> tuple[Tensor, Tensor, Tensor]:
        c = self.config
        want = (c.channels, c.image_size, c.image_size)
        if not isinstance(x_t, Tensor) or not x_t.is_floating_point() or x_t.dim() != 4 or tuple(x_t.shape[1:]) != want:
            got = f"shape {tuple(x_t.shape)}, dtype {x_t.dtype}" if isinstance(x_t, Tensor) else type(x_t).__name__
            raise ValueError(f"Denoiser: x_t must be a float tensor (B, {', '.join(map(str, want))}), got {got}")
        B = x_t.shape[0]
        if _is_int(t):
            t = torch.full((B,), t, device=x_t.device)
        if not isinstance(t, Tensor) or t.is_floating_point() or t.shape != (B,):
            raise ValueError(f"Denoiser: t must be an int or an integer tensor ({B},), got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if not isinstance(cond, Tensor) or cond.dim() != 3 or cond.shape[0] != B or cond.shape[2] != c.cond_dim \
                or not 1 <= cond.shape[1] <= c.max_cond_len:
            raise ValueError(f"Denoiser: cond must be caption features ({B}, T_c, E={c.cond_dim}) with 1 ≤ T_c ≤ "
                             f"{c.max_cond_len}, got {tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__}")
        T_c = cond.shape[1]
        if cond_mask is None:
            cond_mask = torch.ones(B, T_c, dtype=torch.bool, device=x_t.device)
        if not isinstance(cond_mask, Tensor) or cond_mask.dtype != torch.bool or cond_mask.shape != (B, T_c):
            raise ValueError(f"Denoiser: cond_mask must be a bool tensor ({B}, {T_c}), True on real caption tokens")
        if not bool(cond_mask.any(dim=1).all()):
            raise ValueError("Denoiser: every caption needs at least one real token (cond_mask all False in a row); "
                             "use drop=True for the null caption")
        if drop is None:
            drop = torch.zeros(B, dtype=torch.bool, device=x_t.device)
        if not isinstance(drop, Tensor) or drop.dtype != torch.bool or drop.shape != (B,):
            raise ValueError(f"Denoiser: drop must be a bool tensor ({B},) (True: the null caption), or None")
        return t, cond_mask, drop

    def forward(self, x_t: Tensor, t: Tensor | int, cond: Tensor, cond_mask: Tensor | None = None,
                drop: Tensor | None = None) -> Tensor:
        """x_t (B, C_in, S, S), t (B,), cond (B, T_c, E) → the predicted noise (B, C_in, S, S)."""
        t, cond_mask, drop = self._check(x_t, t, cond, cond_mask, drop)
        c, (B, T_c) = self.config, cond.shape[:2]
        time = self.time_mlp(timestep_embedding(t, c.width).to(x_t.dtype))  # (B, C)
        patches = rearrange(self.patch_embed(x_t), "b w h v -> b (h v) w") + self.pos_embed  # (B, N, C)
        caption = self.cond_proj(cond.to(x_t.dtype)) + self.cond_pos[:, :T_c]  # (B, T_c, C)
        first = torch.zeros(T_c, dtype=torch.bool, device=x_t.device)
        first[0] = True
        caption = torch.where(drop[:, None, None], torch.where(first[None, :, None], self.null_cond, 0.0), caption)
        keep = torch.where(drop[:, None], first[None], cond_mask)  # (B, T_c) the null caption is one token
        x = torch.cat([time[:, None], caption, patches + time[:, None]], dim=1)  # (B, 1 + T_c + N, C)
        padding = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=x.device), ~keep,
                             torch.zeros(B, patches.shape[1], dtype=torch.bool, device=x.device)], dim=1)
        for block in self.blocks:
            x = block(x, key_padding_mask=padding)  # (B, 1 + T_c + N, C)
        out = self.head(self.ln_f(x[:, 1 + T_c:]))  # (B, N, C_in·P·P)
        G, P = c.grid_size, c.patch_size
        return rearrange(out, "b (h v) (ch p q) -> b ch (h p) (v q)", h=G, p=P, q=P)  # (B, C_in, S, S)


# ----------------------------------------------------------------------------------------------
# Training and guidance

EpsModel = Callable[..., Tensor]  # model(x_t, t, cond, cond_mask, drop=...) → ε (x_t's shape)


def diffusion_loss(model: EpsModel, schedule: NoiseSchedule, x0: Tensor, cond: Tensor,
                   cond_mask: Tensor | None = None, p_uncond: float = 0.1, generator: torch.Generator | None = None,
                   t: Tensor | None = None, noise: Tensor | None = None, drop: Tensor | None = None,
                   prediction: str = "epsilon") -> Tensor:
    """DDPM's simplified loss (eq. 14) with condition dropout (Ho & Salimans 2022, Algorithm 1): the mean of
    (ε - model(sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, t, cond, cond_mask, drop=drop))². Unless given, t (B,) is
    uniform in [0, T), ε standard normal and drop (B,) True with probability p_uncond, drawn from
    `generator` in that order. prediction="sample": the model predicts x0 and the loss is (x0 - model(...))²."""
    _check_prediction(prediction, "diffusion_loss")
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"diffusion_loss: p_uncond is a probability in [0, 1], got {p_uncond}")
    if not isinstance(x0, Tensor) or x0.dim() < 2:
        raise ValueError(f"diffusion_loss: x0 must be a batch of images (B, C_in, S, S), got "
                         f"{tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__}")
    B = x0.shape[0]
    if t is None:
        t = torch.randint(schedule.num_train_timesteps, (B,), generator=generator).to(x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    if drop is None:
        drop = (torch.rand(B, generator=generator) < p_uncond).to(x0.device)
    x_t = schedule.add_noise(x0, noise, t)
    return F.mse_loss(model(x_t, t, cond, cond_mask, drop=drop), noise if prediction == "epsilon" else x0)


def _check_prediction(prediction: str, who: str) -> None:
    if prediction not in ("epsilon", "sample"):
        raise ValueError(f"{who}: prediction must be 'epsilon' (the model predicts the noise) or 'sample' (the clean "
                         f"image), got {prediction!r}")


def guide(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: ε_∅ + s (ε_c - ε_∅). s = 0 is the unconditional model, s = 1 the conditional."""
    if not isinstance(eps_uncond, Tensor) or not isinstance(eps_cond, Tensor) or eps_uncond.shape != eps_cond.shape:
        raise ValueError(f"guide: eps_uncond and eps_cond must be tensors of one shape, got "
                         f"{tuple(getattr(eps_uncond, 'shape', ()))} and {tuple(getattr(eps_cond, 'shape', ()))}")
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guided_epsilon(model: EpsModel, x_t: Tensor, t: int, cond: Tensor, cond_mask: Tensor | None = None,
                   scale: float = 1.0, schedule: NoiseSchedule | None = None, prediction: str = "epsilon") -> Tensor:
    """The guided noise prediction for x_t (B, ...) at timestep t: one batch of 2B through the model, the
    B captions and then B null captions; scale 1 runs the conditional half only. prediction="sample": the model's
    x̂_0 is turned into ε̂ by `schedule` first (guiding x̂_0 or ε̂ is the same: they are affine in each other)."""
    _check_prediction(prediction, "guided_epsilon")
    if prediction == "sample" and schedule is None:
        raise ValueError("guided_epsilon: prediction='sample' needs the schedule, to turn x̂_0 into ε̂")
    B = x_t.shape[0]
    tt = torch.full((B,), t, dtype=torch.long, device=x_t.device)
    as_eps = (lambda out, x: out) if prediction == "epsilon" else (lambda out, x: schedule.epsilon_from_x0(out, t, x))
    if scale == 1.0:
        return as_eps(model(x_t, tt, cond, cond_mask, drop=torch.zeros(B, dtype=torch.bool, device=x_t.device)), x_t)
    mask = None if cond_mask is None else cond_mask.repeat(2, 1)
    drop = torch.arange(2 * B, device=x_t.device) >= B  # (2B,) cond first, then null
    eps = model(x_t.repeat(2, *[1] * (x_t.dim() - 1)), tt.repeat(2), cond.repeat(2, *[1] * (cond.dim() - 1)), mask,
                drop=drop)  # (2B, ...)
    eps = as_eps(eps, x_t.repeat(2, *[1] * (x_t.dim() - 1)))  # (2B, ...)
    return guide(eps[B:], eps[:B], scale)


def sample(model: EpsModel, schedule: NoiseSchedule, cond: Tensor, shape: tuple[int, ...],
           cond_mask: Tensor | None = None, steps: int = 50, sampler: str = "ddim", guidance_scale: float = 1.0,
           spacing: str = "trailing", clip_x0: bool = True, generator: torch.Generator | None = None,
           x_T: Tensor | None = None, return_trajectory: bool = False, prediction: str = "epsilon") -> Tensor | tuple[Tensor, list[tuple[int, Tensor, Tensor]]]:
    """Images (B, ...) = `shape` for the captions `cond` (B, T_c, E): start from x_T (default: standard normal
    noise drawn with `generator`), then `steps` steps of `sampler` ("ddim", η = 0, or "ddpm", ancestral) over
    `schedule.timesteps(steps, spacing)`, each with the guided noise prediction. With `return_trajectory`
    also [(t, x_t, x̂_0)] at every step, for a denoising-step explorer. The model runs in eval mode.
    `prediction`: what the model predicts, "epsilon" or "sample" (x_0), as it was trained."""
    with torch.no_grad():
        _check_prediction(prediction, "sample")
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sample: sampler must be 'ddim' or 'ddpm', got {sampler!r}")
        device = cond.device
        x = torch.randn(shape, generator=generator).to(device) if x_T is None else x_T.clone()
        if x.shape[0] != cond.shape[0]:
            raise ValueError(f"sample: {cond.shape[0]} captions but a batch of {x.shape[0]} images")
        ts = schedule.timesteps(steps, spacing)
        trajectory = []
        was_training = isinstance(model, nn.Module) and model.training
        if isinstance(model, nn.Module):
            model.eval()
        try:
            for i, t in enumerate(ts):
                prev_t = ts[i + 1] if i + 1 < len(ts) else -1
                eps = guided_epsilon(model, x, t, cond, cond_mask, guidance_scale, schedule, prediction)
                if return_trajectory:
                    x0 = schedule.predict_x0(eps, t, x)
                    trajectory.append((t, x.clone(), x0.clamp(-1, 1) if clip_x0 else x0))
                if sampler == "ddim":
                    x = schedule.ddim_step(eps, t, x, prev_t, clip_x0=clip_x0)
                else:
                    x = schedule.ddpm_step(eps, t, x, prev_t, generator=generator, clip_x0=clip_x0)
        finally:
            if was_training:
                model.train()
        return (x, trajectory) if return_trajectory else x


def clip_text_features(clip: nn.Module, text: Tensor) -> tuple[Tensor, Tensor]:
    """Chapter 9's text tower read at every position: CLIP ids (B, T) → features (B, T, C) after `ln_final`
    (before the projection) and a mask (B, T), True up to and including the end-of-text token. The feature
    at the end token, times `text_projection`, is `CLIP.encode_text`."""
    clip._check_text(text)
    T = text.shape[1]
    x = clip.token_embedding(text) + clip.positional_embedding[:T]  # (B, T, C)
    x = clip.ln_final(clip.transformer(x))  # (B, T, C)
    eot = text.argmax(dim=-1)  # (B,) the end-of-text token has the largest id
    mask = torch.arange(T, device=text.device)[None] <= eot[:, None]  # (B, T)
    return x, mask
