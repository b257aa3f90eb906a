"""GPT: a decoder-only Transformer language model, GPT-2's weights, and generation with a KV cache.

- Radford et al. (2018), "Improving language understanding by generative pre-training", section 3.1,
  eq. (2): h_0 = U W_e + W_p;  h_l = block(h_{l-1});  P(u) = softmax(h_n W_e^T)  →  `GPT`: token plus
  learned position embeddings, a stack of causal blocks, and an output head that is the token
  embedding itself (weight tying, Press & Wolf 2017, "Using the output embedding to improve language models").
- Radford et al. (2019), "Language models are unsupervised multitask learners" (GPT-2), section 2.3:
  LayerNorm at the input of each sub-block (pre-norm), one more after the last block (`ln_f`), and
  residual projections initialised with std 0.02 / sqrt(N) for N residual layers (2 per block).
- Holtzman et al. (2020), "The curious case of neural text degeneration": nucleus (top-p) sampling
  →  `top_k_top_p_filter`, used by `generate`.
- The key/value cache of autoregressive decoding (Pope et al. 2022, "Efficiently scaling Transformer
  inference", section 2): the keys and values of past positions never change under a causal mask, so
  each new token computes only its own q, k, v and attends to the stored ones  →  `GPT.forward_cached`.

The blocks are chapter 6's `utils.transformer.EncoderLayer` with norm_first=True and activation
"gelu_tanh" (GPT-2's gelu_new), run with is_causal=True. Module names follow GPT-2's checkpoint
(transformer.wte, .wpe, .h.{i}.ln_1/attn/ln_2/mlp.c_fc/mlp.c_proj, .ln_f, lm_head), so the converter
from Hugging Face's `GPT2LMHeadModel` is the short table `_HF_BLOCK`: HF's Conv1D stores a weight as
(in, out), nn.Linear as (out, in), so those weights are transposed; `attn.c_attn` (q, k, v side by
side) is our fused `attn.in_proj`, `attn.c_proj` our `attn.out_proj`.

Letter legend (shape comments):
    B  batch size            T  new tokens in this call     P  past tokens held in the KV cache
    S  keys attended (P + T) C  channels (n_embd)           H  heads
    D  head dim (C = H * D)  L  layers (n_layer)            V  vocabulary size
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadAttention
from .data import reachable
from .rnn import random_lm_batch
from .seq2seq import eval_mode
from .train import History, TrainConfig, adamw, train, warmup_cosine
from .transformer import EncoderLayer

__all__ = [
    "GPTConfig", "GPT", "KVCache", "generate", "top_k_top_p_filter",
    "from_hf_gpt2_state_dict", "to_hf_gpt2_state_dict", "config_from_hf",
    "Recipe", "NANOGPT_CPU", "SHAKESPEARE_CPU", "SHAKESPEARE_GPU", "train_gpt", "validation_windows",
]

KVCache = list[tuple[Tensor, Tensor]]  # one (keys, values) pair per layer, each (B, H, P, D)


# ----------------------------------------------------------------------------------------------
# Configuration

@dataclass
class GPTConfig:
    """Sizes of a GPT. The defaults are GPT-2 small (124M parameters)."""

    vocab_size: int = 50257  # V (GPT-2's byte-level BPE)
    block_size: int = 1024  # context window: positions 0 .. block_size - 1
    n_layer: int = 12  # L
    n_head: int = 12  # H
    n_embd: int = 768  # C
    dropout: float = 0.0  # training only: embeddings, attention weights, residual branches
    bias: bool = True  # biases in the Linear layers and LayerNorms (GPT-2 has them)
    eps: float = 1e-5  # LayerNorm epsilon

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig: {name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}; pick "
                             f"n_head dividing n_embd (head dim = n_embd / n_head)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"GPTConfig: bias must be True or False, got {self.bias!r}")
        if not self.eps > 0:
            raise ValueError(f"GPTConfig: eps must be > 0, got {self.eps}")


# ----------------------------------------------------------------------------------------------
# The model

def _remove_biases_(module: nn.Module) -> None:
    """bias=False: drop the bias of every Linear and LayerNorm (nanoGPT's option; both modules accept None)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.LayerNorm)):
            m.bias = None
        if isinstance(m, MultiHeadAttention):
            m.bias = False


def _block_step(block: EncoderLayer, x: Tensor, past: tuple[Tensor, Tensor] | None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One causal block for T new positions P .. P+T-1, given the keys and values of positions 0 .. P-1
    (`past`, each (B, H, P, D); None when P = 0): x (B, T, C) → (B, T, C), and the keys and values of all
    S = P + T positions, each (B, H, S, D). The block's own `past_kv` path (`EncoderLayer`, `MultiHeadAttention`)."""
    return block(x, is_causal=True, past_kv=past, use_cache=True)  # (B, T, C), 2 × (B, H, S, D)


class GPT(nn.Module):
    """A decoder-only Transformer language model (GPT-2's architecture, Radford et al. 2019).

        x = drop(wte(idx) + wpe(positions))            (B, T, C)
        x = block(x) for each of the L blocks           pre-norm, causal self-attention + MLP
        logits = lm_head(ln_f(x))                       (B, T, V), lm_head.weight is wte.weight

    Submodules `transformer.{wte, wpe, drop, h, ln_f}` and `lm_head`, as in GPT-2's checkpoint.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT takes a GPTConfig, got {type(config).__name__}")
        c = self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd),  # W_e
            wpe=nn.Embedding(c.block_size, c.n_embd),  # W_p
            drop=nn.Dropout(c.dropout),
            h=nn.ModuleList(EncoderLayer(c.n_embd, c.n_head, 4 * c.n_embd, c.dropout, "gelu_tanh", norm_first=True,
                                         eps=c.eps) for _ in range(c.n_layer)),
            ln_f=nn.LayerNorm(c.n_embd, eps=c.eps),
        ))
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one (V, C) matrix reads and writes tokens
        if not c.bias:
            _remove_biases_(self)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02²) weights and embeddings, zero biases, LayerNorm (1, 0), and the
        projections that end a residual branch (attn.out_proj, mlp.c_proj) N(0, (0.02 / sqrt(2 L))²)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, (nn.Linear, nn.LayerNorm)) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
        for name, p in self.named_parameters():
            if name.endswith(("attn.out_proj.weight", "mlp.c_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters, the tied head counted once; `non_embedding` leaves out the position table
        (nanoGPT's convention; the token table still counts, as it is also the output head)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    # -- input checks ----------------------------------------------------------------------------

    def _check_ids(self, idx: Any, what: str = "idx", start: int = 0) -> None:
        """idx must be (B, T) int64 ids in [0, V), 1 ≤ T, and start + T ≤ block_size."""
        V, bs = self.config.vocab_size, self.config.block_size
        if not isinstance(idx, Tensor) or idx.dtype != torch.long or idx.dim() != 2:
            got = f"shape {tuple(idx.shape)}, dtype {idx.dtype}" if isinstance(idx, Tensor) else type(idx).__name__
            raise ValueError(f"{what} must be a (B, T) tensor of int64 token ids, got {got}")
        T = idx.shape[1]
        if T == 0:
            raise ValueError(f"{what} is empty (T=0); give at least one token id to condition on (e.g. the "
                             "tokenizer's end-of-text token, which GPT-2 uses as a start token)")
        if start == 0 and T > bs:
            raise ValueError(f"{what} has {T} tokens, more than the context window block_size={bs}; keep the last "
                             f"{bs} ({what}[:, -{bs}:]) or build a model with a larger block_size")
        if start + T > bs:
            raise ValueError(f"the KV cache holds {start} tokens and {what} adds {T}: positions up to {start + T - 1} "
                             f"do not fit the context window block_size={bs} (positions 0 .. {bs - 1}); start again "
                             f"from the last tokens without a cache")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"{what} has token ids outside the vocabulary [0, {V}): min {lo}, max {hi}; encode "
                             f"with the tokenizer this model was built for (vocab_size={V})")

    # -- forward passes --------------------------------------------------------------------------

    def _embed(self, idx: Tensor, start: int) -> Tensor:
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)  # (T,)
        return self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)

    def forward(self, idx: Tensor, targets: Tensor | None = None,
                return_attn: bool = False) -> Tensor | tuple[Tensor, ...]:
        """idx (B, T) token ids → logits (B, T, V), where position t has seen idx[:, :t+1] only.

        With `targets` (B, T) (the next token at every position; -100 = ignore, as F.cross_entropy)
        also the mean cross-entropy loss; with `return_attn` also every layer's attention weights
        (B, L, H, T, T). Returns logits, (logits, loss), (logits, attn) or (logits, loss, attn).
        """
        self._check_ids(idx)
        x = self._embed(idx, 0)  # (B, T, C)
        attns = []
        for block in self.transformer.h:
            if return_attn:
                x, attn = block(x, is_causal=True, return_attn=True)  # (B, T, C), (B, H, T, T)
                attns.append(attn)
            else:
                x = block(x, is_causal=True)  # (B, T, C)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        out: tuple[Tensor, ...] = (logits,)
        if targets is not None:
            out += (self.loss(logits, targets),)
        if return_attn:
            out += (torch.stack(attns, dim=1),)  # (B, L, H, T, T)
        return out[0] if len(out) == 1 else out

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy of logits (B, T, V) against targets (B, T); -100 marks positions to ignore."""
        if not isinstance(targets, Tensor) or targets.dtype != torch.long or targets.shape != logits.shape[:2]:
            got = f"shape {tuple(targets.shape)}, dtype {targets.dtype}" if isinstance(targets, Tensor) else \
                type(targets).__name__
            raise ValueError(f"targets must be an int64 tensor of the input's shape (B, T) = "
                             f"{tuple(logits.shape[:2])}, got {got}")
        bad = (targets != -100) & ((targets < 0) | (targets >= self.config.vocab_size))
        if bool(bad.any()):
            raise ValueError(f"targets hold ids outside the vocabulary [0, {self.config.vocab_size}) (other than "
                             f"-100 = ignore): {sorted(set(targets[bad].tolist()))[:8]}")
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

    def forward_cached(self, idx: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """Incremental forward: idx (B, T) are the tokens at positions P .. P+T-1, where P is the number
        of tokens whose keys and values `cache` holds (None: P = 0). Returns their logits (B, T, V), equal
        to forward(all P + T tokens)[:, P:], and the cache extended by them (each (B, H, P+T, D)).
        The input cache is not modified."""
        L = self.config.n_layer
        P = 0
        if cache is not None:
            if not isinstance(cache, (list, tuple)) or len(cache) != L:
                got = type(cache).__name__ + (f" of length {len(cache)}" if isinstance(cache, (list, tuple)) else "")
                raise ValueError(f"cache must be a list of {L} (keys, values) pairs, one per layer, as returned by "
                                 f"forward_cached; got a {got}")
            P = cache[0][0].shape[2]
            if isinstance(idx, Tensor) and idx.dim() == 2 and cache[0][0].shape[0] != idx.shape[0]:
                raise ValueError(f"the cache holds a batch of {cache[0][0].shape[0]} sequences but idx has "
                                 f"B={idx.shape[0]}")
        self._check_ids(idx, start=P)
        x = self._embed(idx, P)  # (B, T, C)
        new_cache = []
        for block, past in zip(self.transformer.h, cache if cache is not None else [None] * L):
            x, kv = _block_step(block, x, past)  # (B, T, C), 2 × (B, H, P+T, D)
            new_cache.append(kv)
        return self.lm_head(self.transformer.ln_f(x)), new_cache  # (B, T, V)

    # -- pretrained weights ----------------------------------------------------------------------

    @classmethod
    def from_hf(cls, hf_model: nn.Module, dropout: float = 0.0) -> GPT:
        """A GPT with the weights of a Hugging Face `GPT2LMHeadModel` (strict: every key must match),
        in its dtype and on its device. `dropout` applies to fine-tuning only."""
        config = config_from_hf(hf_model.config, dropout=dropout)
        ref = next(hf_model.parameters())
        model = cls(config).to(dtype=ref.dtype, device=ref.device)
        model.load_state_dict(from_hf_gpt2_state_dict(hf_model.state_dict()), strict=True)
        return model

    @classmethod
    def from_pretrained(cls, name: str = "gpt2", dropout: float = 0.0, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False) -> GPT:
        """OpenAI's GPT-2 weights ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl") from the Hugging Face Hub,
        through `transformers` (downloaded once, then read from its cache). Needs the network the first time;
        offline, or when the download fails, raises OSError naming the problem."""
        try:
            from transformers import GPT2LMHeadModel
        except ImportError as err:  # pragma: no cover - transformers is in requirements.txt
            raise ImportError("GPT.from_pretrained needs the transformers package: pip install transformers") from err
        hub = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        unreachable = not local_files_only and not reachable(hub)  # seconds, not the Hub client's 30 s of retries
        try:
            hf_model = GPT2LMHeadModel.from_pretrained(name, cache_dir=cache_dir,
                                                       local_files_only=local_files_only or unreachable)
        except OSError as err:
            offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
            how = (f"{hub} is not reachable from this machine and the weights are not in the local cache"
                   if unreachable else
                   "offline mode is on (local_files_only=True or HF_HUB_OFFLINE=1) and the weights are not in the "
                   "local cache" if offline else "the Hugging Face Hub could not be reached or has no such model")
            raise OSError(f"GPT.from_pretrained could not load {name!r}: {how}. Check the name (gpt2, gpt2-medium, "
                          "gpt2-large, gpt2-xl) and the internet connection, then run again: the weights are "
                          "downloaded once (about 0.5 GB for gpt2) and cached. Everything else in the chapter works "
                          f"without them. (transformers said: {err})") from err
        return cls.from_hf(hf_model.eval(), dropout=dropout)


# ----------------------------------------------------------------------------------------------
# Converters: Hugging Face GPT-2 state_dict ↔ ours

# Inside every block transformer.h.{i}: HF's key → (our key, transposed?). Conv1D weights are (in, out).
_HF_BLOCK = {
    "ln_1.weight": ("ln_1.weight", False),
    "ln_1.bias": ("ln_1.bias", False),
    "attn.c_attn.weight": ("attn.in_proj.weight", True),  # (C, 3C) columns [q | k | v] → rows [W^Q; W^K; W^V]
    "attn.c_attn.bias": ("attn.in_proj.bias", False),
    "attn.c_proj.weight": ("attn.out_proj.weight", True),
    "attn.c_proj.bias": ("attn.out_proj.bias", False),
    "ln_2.weight": ("ln_2.weight", False),
    "ln_2.bias": ("ln_2.bias", False),
    "mlp.c_fc.weight": ("mlp.c_fc.weight", True),  # (C, 4C) → (4C, C)
    "mlp.c_fc.bias": ("mlp.c_fc.bias", False),
    "mlp.c_proj.weight": ("mlp.c_proj.weight", True),  # (4C, C) → (C, 4C)
    "mlp.c_proj.bias": ("mlp.c_proj.bias", False),
}
_HF_TOP = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"]
_HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older GPT-2 checkpoints, not weights


def _hf_table(n_layer: int) -> dict[str, tuple[str, bool]]:
    """Every HF key of an n_layer GPT-2 (lm_head aside) → (our key, transposed?)."""
    table = {key: (key, False) for key in _HF_TOP}
    for i in range(n_layer):
        for theirs, (ours, transpose) in _HF_BLOCK.items():
            table[f"transformer.h.{i}.{theirs}"] = (f"transformer.h.{i}.{ours}", transpose)
    return table


def _n_layer(keys: list[str], prefix: str) -> int:
    layers = {int(k[len(prefix):].split(".")[0]) for k in keys if k.startswith(prefix)}
    return max(layers) + 1 if layers else 0


def _check_keys(got: set[str], expected: set[str], who: str, what: str) -> None:
    unknown, missing = sorted(got - expected), sorted(expected - got)
    if unknown or missing:
        raise KeyError(f"{who}: unknown keys {unknown}, missing keys {missing}; expected the state_dict of {what}")


def from_hf_gpt2_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face GPT2LMHeadModel state_dict → `GPT`'s. Keys may lack the "transformer." prefix (as in
    the Hub's model.safetensors, saved from GPT2Model). lm_head.weight, if present, must equal the token
    embedding (GPT-2 ties them). Raises KeyError listing unknown and missing keys."""
    sd = {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v for k, v in state_dict.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith(_HF_BUFFERS)}
    head = sd.pop("lm_head.weight", None)
    table = _hf_table(_n_layer(list(sd), "transformer.h."))
    _check_keys(set(sd), set(table), "from_hf_gpt2_state_dict", "a Hugging Face GPT2LMHeadModel (bias=True)")
    if head is not None and not torch.equal(head, sd["transformer.wte.weight"]):
        raise ValueError("from_hf_gpt2_state_dict: lm_head.weight differs from transformer.wte.weight; GPT ties "
                         "the output head to the token embedding (as GPT-2 does) and cannot load an untied head")
    out = {ours: sd[theirs].t() if transpose else sd[theirs] for theirs, (ours, transpose) in table.items()}
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def to_hf_gpt2_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """`GPT` state_dict → Hugging Face GPT2LMHeadModel's (inverse of `from_hf_gpt2_state_dict`)."""
    sd = dict(state_dict)
    sd.pop("lm_head.weight", None)  # the same tensor as transformer.wte.weight
    table = _hf_table(_n_layer(list(sd), "transformer.h."))
    back = {ours: (theirs, transpose) for theirs, (ours, transpose) in table.items()}
    _check_keys(set(sd), set(back), "to_hf_gpt2_state_dict", "a GPT with bias=True")
    out = {theirs: sd[ours].t() if transpose else sd[ours] for ours, (theirs, transpose) in back.items()}
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def config_from_hf(hf_config: Any, dropout: float = 0.0) -> GPTConfig:
    """GPTConfig of a Hugging Face GPT2Config; rejects the variants this GPT does not compute."""
    c = hf_config
    unsupported = []
    if getattr(c, "model_type", None) != "gpt2":
        unsupported.append(f"model_type={getattr(c, 'model_type', None)!r} (need 'gpt2')")
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        unsupported.append(f"activation_function={c.activation_function!r} (need GPT-2's tanh GELU, 'gelu_new')")
    if c.n_inner not in (None, 4 * c.n_embd):
        unsupported.append(f"n_inner={c.n_inner} (need 4 * n_embd = {4 * c.n_embd})")
    if not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx:
        unsupported.append("attention scaling other than 1/sqrt(head dim)")
    if getattr(c, "add_cross_attention", False):
        unsupported.append("add_cross_attention=True")
    if not getattr(c, "tie_word_embeddings", True):
        unsupported.append("tie_word_embeddings=False")
    if unsupported:
        raise ValueError(f"config_from_hf: this GPT2Config is not GPT-2 as GPT computes it: {'; '.join(unsupported)}")
    return GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head,
                     n_embd=c.n_embd, dropout=dropout, bias=True, eps=c.layer_norm_epsilon)


# ----------------------------------------------------------------------------------------------
# Generation

def top_k_top_p_filter(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """logits (B, V) with every token outside the `top_k` most likely and outside the nucleus set to -inf.

    The nucleus (Holtzman et al. 2020) is the smallest set of most likely tokens whose probabilities sum
    to at least `top_p`: a token is dropped when the tokens ranked above it already hold ≥ top_p. The most
    likely token is always kept. Same result as transformers' TopKLogitsWarper then TopPLogitsWarper."""
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, V)
    if top_p is not None and top_p < 1.0:
        ranked, order = logits.sort(dim=-1, descending=True)  # (B, V), most likely first
        probs = ranked.softmax(dim=-1)  # (B, V)
        drop_ranked = probs.cumsum(dim=-1) - probs >= top_p  # (B, V) mass strictly above ≥ top_p
        drop = drop_ranked.scatter(-1, order, drop_ranked)  # (B, V) back in vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _next_token(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, greedy: bool,
                generator: torch.Generator | None) -> Tensor:
    """logits (B, V) of the next token → its id (B, 1): the argmax, or a draw from
    softmax(filtered logits / temperature)."""
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # (B, V)
    probs = top_k_top_p_filter(logits, top_k, top_p).softmax(dim=-1)  # (B, V)
    if generator is not None and generator.device != probs.device:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, 1, generator=generator).to(logits.device)  # (B, 1)


def generate(model: GPT, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, greedy: bool = False, generator: torch.Generator | None = None,
             use_cache: bool = True) -> Tensor:
    """Continue the prompt idx (T0,) or (B, T0) by `max_new_tokens` tokens; returns (T0 + n,) or (B, T0 + n)
    ids, prompt included. Runs in eval mode (dropout off) and restores the model's mode.

    Each next token is the argmax (`greedy=True`, or temperature 0) or is drawn from
    softmax(logits / temperature) restricted by `top_k` / `top_p` (`top_k_top_p_filter`); pass a seeded
    `generator` for reproducible samples.

    use_cache=True: the prompt runs once through `forward_cached`, then each step feeds only the new token
    (its keys and values are appended to the cache). use_cache=False: each step reruns the model on the
    whole sequence so far. Both give the same tokens. Past the context window (more than block_size
    tokens) the model only sees the last block_size tokens; every position then shifts at each step, so
    the cached keys (computed at other positions) no longer apply, and both modes rerun the cropped window.
    """
    with torch.no_grad():
        if not isinstance(model, GPT):
            raise TypeError(f"generate: model must be a GPT, got {type(model).__name__}")
        single = isinstance(idx, Tensor) and idx.dim() == 1
        idx = idx[None] if single else idx  # (B, T0)
        model._check_ids(idx, "prompt")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int ≥ 0, got {max_new_tokens!r}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be ≥ 0 (0 = greedy), got {temperature}")
        V = model.config.vocab_size
        if top_k is not None and (not isinstance(top_k, int) or not 1 <= top_k <= V):
            raise ValueError(f"top_k must be an int in [1, {V}] or None, got {top_k!r}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
        greedy = greedy or temperature == 0
        block_size = model.config.block_size
        with eval_mode(model):
            if use_cache:
                logits, cache = model.forward_cached(idx)  # (B, T0, V)
            else:
                logits = model(idx)  # (B, T0, V)
            out = idx
            for step in range(max_new_tokens):
                nxt = _next_token(logits[:, -1], temperature, top_k, top_p, greedy, generator)  # (B, 1)
                out = torch.cat([out, nxt], dim=1)  # (B, T0 + step + 1)
                if step == max_new_tokens - 1:
                    break  # the last token's logits are not needed
                if use_cache and out.shape[1] <= block_size:
                    logits, cache = model.forward_cached(nxt, cache)  # (B, 1, V)
                else:
                    logits = model(out[:, -block_size:])  # (B, ≤ block_size, V)
        return out[0] if single else out


# ----------------------------------------------------------------------------------------------
# Training recipes: a character-level GPT on Tiny Shakespeare (chapter 7, benchmarks/gpt_shakespeare.py)

@dataclass(frozen=True)
class Recipe:
    """Everything that defines a training run of a GPT on a token stream (vocab_size comes from the data).

    AdamW with weight decay on the matrices only (`utils.train.adamw`), linear warm-up to `lr` then cosine
    decay to `min_lr` at `max_steps` (`utils.train.warmup_cosine`), gradient clipping, and batches of
    random windows (`utils.rnn.random_lm_batch`, nanoGPT's get_batch)."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    lr: float  # peak learning rate, reached after `warmup` steps
    min_lr: float  # end of the cosine decay, at `max_steps`
    warmup: int
    max_steps: int
    max_seconds: float | None = None  # optional training-time budget (evaluation excluded)
    weight_decay: float = 0.1  # on 2-D parameters (matrices, embeddings) only
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    dropout: float = 0.0
    eval_every: int = 100  # steps between validation-loss estimates

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout)

    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size


# nanoGPT's README command for a CPU (config/train_shakespeare_char.py with --device=cpu ...): 0.8M parameters,
# val loss 1.8857 after 2000 iterations. The reference of benchmarks/gpt_shakespeare.py.
NANOGPT_CPU = Recipe(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, lr=1e-3, min_lr=1e-4,
                     warmup=100, max_steps=2000, eval_every=50)

# Chapter 7's CPU recipe: nanoGPT's CPU model (4 layers, 4 heads, 128 channels), a context of 128 characters
# instead of 64, batch 16 (the same 2,048 characters per step as batch 32 of 64; the longer context lowered the
# validation loss by about 0.02 at equal steps), peak lr 6e-3 instead of 1e-3 after 50 warm-up steps, and exactly
# 1,800 steps whatever the machine's speed (no time cap: a cap cut the cosine schedule short on a slower machine
# and moved the result). About 155-170 s on the book's quiet 2-core CPU (~90 ms/step with torch's 2 threads);
# 2,000 steps ended at the same validation loss (1.642 against 1.641). Seeds: benchmarks/gpt_seeds.py.
SHAKESPEARE_CPU = Recipe(n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=16, lr=6e-3, min_lr=6e-4,
                         warmup=50, max_steps=1800, eval_every=100)

# On a GPU: nanoGPT's config/train_shakespeare_char.py (10.7M parameters, block 256, dropout 0.2, 5000 steps;
# nanoGPT reports val loss 1.4697 after about 3 minutes on an A100).
SHAKESPEARE_GPU = Recipe(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, lr=1e-3, min_lr=1e-4,
                         warmup=100, max_steps=5000, dropout=0.2, eval_every=250)


def validation_windows(val_ids: Tensor, block_size: int, starts: Tensor | None = None, n: int = 256,
                       batch_size: int = 64, seed: int = 1234) -> list[tuple[Tensor, Tensor]]:
    """Fixed validation batches for a language model: the windows of `val_ids` (N,) starting at `starts`
    (default: `n` starts drawn with `seed`), as (inputs, next-token targets) pairs of at most `batch_size`
    windows, each (b, block_size). Score every model on the same windows to compare them."""
    if (not isinstance(val_ids, Tensor) or val_ids.dtype != torch.long or val_ids.dim() != 1
            or len(val_ids) <= block_size):
        got = f"shape {tuple(val_ids.shape)}, dtype {val_ids.dtype}" if isinstance(val_ids, Tensor) else \
            type(val_ids).__name__
        raise ValueError(f"validation_windows: val_ids must be a 1-D int64 tensor of more than block_size="
                         f"{block_size} token ids, got {got}")
    if starts is None:
        starts = torch.randint(len(val_ids) - block_size, (n,), generator=torch.Generator().manual_seed(seed))
    if int(starts.min()) < 0 or int(starts.max()) + block_size + 1 > len(val_ids):
        raise ValueError(f"validation_windows: a window starting at {int(starts.max())} does not fit "
                         f"{len(val_ids)} validation ids with block_size={block_size}")
    idx = starts[:, None] + torch.arange(block_size)  # (W, T)
    x, y = val_ids[idx], val_ids[idx + 1]  # (W, T) each
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


def train_gpt(recipe: Recipe, train_ids: Tensor, val_ids: Tensor, vocab_size: int, val_starts: Tensor | None = None,
              val_windows: int = 256, seed: int = 0, device: str | torch.device | None = None,
              progress: bool = False) -> tuple[GPT, History]:
    """Train a GPT from scratch with `recipe` on the token stream `train_ids` (N,); returns it and its History.

    Every `recipe.eval_every` steps (and at the end) the History records `val_loss`, the mean loss on
    fixed windows of `val_ids` (`validation_windows`: those starting at `val_starts`, default `val_windows`
    starts drawn with seed 1234), read with the recipe's block size, the same at every evaluation.
    Evaluation pauses the training clock. Same seed, same machine, same threads → the same run."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"train_gpt takes a Recipe, got {type(recipe).__name__}")
    T = recipe.block_size
    for name, ids in (("train_ids", train_ids), ("val_ids", val_ids)):
        if not isinstance(ids, Tensor) or ids.dtype != torch.long or ids.dim() != 1 or len(ids) <= T:
            got = f"shape {tuple(ids.shape)}, dtype {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"train_gpt: {name} must be a 1-D int64 tensor of more than block_size={T} token ids, "
                             f"got {got}")
    val = validation_windows(val_ids, T, val_starts, n=val_windows)
    torch.manual_seed(seed)
    model = GPT(recipe.gpt_config(vocab_size))
    if device is not None:
        model.to(device)
    optimizer = adamw(model, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=recipe.betas)
    scheduler = warmup_cosine(optimizer, recipe.warmup, recipe.max_steps, min_lr_ratio=recipe.min_lr / recipe.lr)
    gen = torch.Generator().manual_seed(seed)
    config = TrainConfig(max_steps=recipe.max_steps, max_seconds=recipe.max_seconds, grad_clip=recipe.grad_clip,
                         eval_every=recipe.eval_every, log_every=max(1, recipe.eval_every // 4), progress=progress)
    history = train(model, lambda step: random_lm_batch(train_ids, recipe.batch_size, T, generator=gen),
                    lambda m, batch: m(*batch)[1], optimizer, config, scheduler=scheduler, val_batches=val)
    return model, history
