"""Speculative decoding: a small draft model guesses, the large target model checks (chapter 11).

Decoding a GPT token by token runs the whole target model once per token, and on small batches each
run is bound by reading the weights, not by arithmetic. Scoring k + 1 positions in one forward pass
costs about as much as scoring one. Speculative decoding spends that slack: a cheap draft model
proposes k tokens one by one, the target scores all of them in ONE forward pass, and every proposal
the target agrees with is kept.

- Leviathan, Kalman and Matias (2023), "Fast inference from transformers via speculative decoding",
  Algorithm 1 and section 3; Chen et al. (2023), "Accelerating large language model decoding with
  speculative sampling", Algorithm 2 (which names the two distributions the other way round). The draft samples x from its distribution q; the target's
  distribution there is p. x is accepted with probability min(1, p(x) / q(x)); at the first rejection
  the token is drawn instead from the residual norm(max(0, p - q)), and the round ends. When all k
  are accepted, the target's distribution after the last one gives a bonus token for free. Each
  emitted token is then distributed exactly as the target alone would draw it (proved in both
  papers: Leviathan et al., Appendix A.1; Chen et al.'s theorem on modified rejection sampling)  →  `verify_sampling`, `residual_distribution`.
- Greedy decoding is the case where p and q put all their mass on their argmax: keep the longest
  prefix of the proposals that equals the target's argmax, then add the target's own argmax after it.
  The output is the target's greedy output, token for token  →  `verify_greedy`.
- `speculative_generate` runs the loop with both models' KV caches (`utils.gpt.GPT.forward_cached`):
  the target reads the last accepted token and the k proposals in one call, and both caches are cut
  back to the accepted length after each round (rejected positions are dropped, nothing recomputed).
  `SpeculativeStats` counts proposals, acceptances and target calls; `expected_tokens_per_round` and
  `expected_speedup` are Leviathan et al.'s eq. (1) and Theorem 3.8; `compare_speed` times the target
  alone against speculative decoding for several draft lengths, side by side.

Letter legend (shape comments):
    B  batch size (1 here)   N  tokens so far (prompt + generated)   k  draft length (proposals per round)
    V  vocabulary size       P  positions held in a KV cache         H  heads     D  head dim
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from statistics import median

import torch
from torch import Tensor

from .gpt import GPT, KVCache, generate, top_k_top_p_filter
from .seq2seq import eval_mode

__all__ = [
    "SpeculativeStats", "speculative_generate", "verify_greedy", "verify_sampling", "residual_distribution",
    "expected_tokens_per_round", "expected_speedup", "SpeedRow", "compare_speed",
]


# ----------------------------------------------------------------------------------------------
# Statistics

@dataclass
class SpeculativeStats:
    """What one speculative generation did.

    rounds: target forward passes (one per round; the first also reads the prompt).
    proposed: draft tokens proposed (k per round, fewer in the last round if fewer tokens are left).
    accepted: proposed tokens the target kept.
    checked: proposed tokens the target judged: the accepted ones plus the first rejected one of a round
        (the proposals after a rejection are discarded unread).
    new_tokens: tokens emitted (accepted proposals plus one target token per round).
    draft_forwards: draft forward passes.
    """

    k: int
    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    checked: int = 0
    new_tokens: int = 0
    draft_forwards: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens / proposed draft tokens (nan if none was proposed)."""
        return self.accepted / self.proposed if self.proposed else math.nan

    @property
    def per_token_acceptance(self) -> float:
        """Accepted / checked: an estimate of Leviathan et al.'s alpha, the probability that the target
        keeps a draft token it looks at (nan if none was checked)."""
        return self.accepted / self.checked if self.checked else math.nan

    @property
    def tokens_per_target_forward(self) -> float:
        """New tokens per target forward pass: 1 for the target alone, up to k + 1 here."""
        return self.new_tokens / self.rounds if self.rounds else math.nan


def expected_tokens_per_round(alpha: float, k: int) -> float:
    """Leviathan et al. (2023), eq. (1): the expected number of tokens one round emits when each draft
    token is accepted independently with probability alpha, (1 - alpha^(k+1)) / (1 - alpha); k + 1 at
    alpha = 1, 1 at alpha = 0."""
    _check_k(k)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is a probability in [0, 1], got {alpha}")
    return float(k + 1) if alpha == 1.0 else (1 - alpha ** (k + 1)) / (1 - alpha)


def expected_speedup(alpha: float, k: int, cost_ratio: float) -> float:
    """Leviathan et al. (2023), Theorem 3.8: the expected wall-time improvement over the target alone,
    (1 - alpha^(k+1)) / ((1 - alpha)(k c + 1)), where c = `cost_ratio` is the time of one draft forward
    over one target forward (and a target call on k + 1 tokens is assumed to cost as much as on one)."""
    if not cost_ratio >= 0:
        raise ValueError(f"cost_ratio (draft time / target time per forward) must be ≥ 0, got {cost_ratio}")
    return expected_tokens_per_round(alpha, k) / (k * cost_ratio + 1)


# ----------------------------------------------------------------------------------------------
# Verification: one round's decision, given the proposals and both models' scores

def verify_greedy(proposal: Tensor, target_logits: Tensor) -> tuple[int, Tensor]:
    """Greedy verification: proposal (k,) draft token ids, target_logits (k + 1, V) the target's logits
    after the last accepted token and after each proposal. Returns n, the length of the longest prefix of
    `proposal` equal to the target's argmax, and the tokens to emit, (n + 1,): proposal[:n] and the
    target's argmax after them (a correction if n < k, the bonus token if n = k)."""
    k = proposal.shape[0]
    if proposal.dim() != 1 or target_logits.dim() != 2 or target_logits.shape[0] != k + 1:
        raise ValueError(f"verify_greedy: need proposal (k,) and target_logits (k + 1, V), got "
                         f"{tuple(proposal.shape)} and {tuple(target_logits.shape)}")
    best = target_logits.argmax(dim=-1)  # (k + 1,) the target's own choice at each position
    agree = (proposal == best[:k]).long()  # (k,) 1 where the draft guessed the target's token
    n = int(agree.cumprod(dim=0).sum())  # leading run of agreements
    return n, torch.cat([proposal[:n], best[n:n + 1]])  # (n + 1,)


def residual_distribution(p: Tensor, q: Tensor) -> Tensor:
    """norm(max(0, p - q)) over the last axis (Leviathan et al. 2023, section 2.3; Chen et al. 2023,
    Algorithm 2): where to draw from after rejecting a draft token, so that accepted and resampled tokens
    together are distributed as p. p, q (..., V) probabilities. Where p = q (nothing to correct; a
    rejection then has probability 0 and can only come from rounding), it returns p."""
    if p.shape != q.shape:
        raise ValueError(f"residual_distribution: p and q must have the same shape (..., V), got "
                         f"{tuple(p.shape)} and {tuple(q.shape)}")
    r = (p - q).clamp(min=0)  # (..., V)
    total = r.sum(dim=-1, keepdim=True)  # (..., 1)
    return torch.where(total > 0, r / total.clamp(min=torch.finfo(r.dtype).tiny), p)  # (..., V)


def verify_sampling(proposal: Tensor, q: Tensor, p: Tensor,
                    generator: torch.Generator | None = None) -> tuple[int, Tensor]:
    """Speculative sampling's verification (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023, Algorithm 2).

    proposal (k,) draft tokens, drawn from q (k, V), the draft's distributions; p (k + 1, V) the target's
    distributions after the last accepted token and after each proposal. Proposal i is accepted with
    probability min(1, p_i(x) / q_i(x)) (tested as u q_i(x) < p_i(x), u ~ U[0, 1)), in order; at the first
    rejection the next token is drawn from residual_distribution(p_i, q_i) and the rest are dropped; if
    all k are accepted, a bonus token is drawn from p_k. Returns n accepted and the tokens to emit (n + 1,)."""
    k = proposal.shape[0]
    if proposal.dim() != 1 or q.shape[0] != k or p.shape[0] != k + 1 or q.dim() != 2 or p.shape[1:] != q.shape[1:]:
        raise ValueError(f"verify_sampling: need proposal (k,), q (k, V) and p (k + 1, V), got "
                         f"{tuple(proposal.shape)}, {tuple(q.shape)} and {tuple(p.shape)}")
    for i in range(k):
        x = int(proposal[i])
        u = _uniform(generator, p.device, p.dtype)
        if u * q[i, x] < p[i, x]:  # accept with probability min(1, p(x) / q(x))
            continue
        nxt = _draw(residual_distribution(p[i], q[i]), generator)  # (1,)
        return i, torch.cat([proposal[:i], nxt])
    return k, torch.cat([proposal, _draw(p[k], generator)])  # all accepted: the bonus token


def _uniform(generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand((), generator=generator, device=gen_device, dtype=dtype).to(device)


def _draw(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token id (1,) drawn from probs (V,)."""
    src = probs if generator is None else probs.to(generator.device)  # multinomial draws on the generator's device
    return torch.multinomial(src, 1, generator=generator).to(probs.device)  # (1,)


# ----------------------------------------------------------------------------------------------
# The decoding loop

def _check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"the draft length k must be an int ≥ 1 (tokens proposed per round), got {k!r}")


def _crop(cache: KVCache | None, length: int) -> KVCache | None:
    """Keep the keys and values of the first `length` positions: drops the rejected proposals."""
    if cache is None:
        return None
    return [(k[:, :, :length], v[:, :, :length]) for k, v in cache]  # each (1, H, ≤ length, D)


def _probs(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    """logits (..., V) → the sampling distribution `utils.gpt.generate` draws from, (..., V)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # (..., V)
    shape = logits.shape
    return top_k_top_p_filter(logits.reshape(-1, shape[-1]), top_k, top_p).softmax(dim=-1).reshape(shape)


def _check_inputs(target: GPT, draft: GPT, idx: Tensor, max_new_tokens: int, temperature: float,
                  top_k: int | None, top_p: float | None) -> Tensor:
    for name, model in (("target", target), ("draft", draft)):
        if not isinstance(model, GPT):
            raise TypeError(f"speculative_generate: {name} must be a utils.gpt.GPT, got {type(model).__name__}")
    V, Vd = target.config.vocab_size, draft.config.vocab_size
    if V != Vd:
        raise ValueError(f"the draft's vocabulary ({Vd} tokens) differs from the target's ({V}): speculative "
                         "decoding needs both models to use the same tokenizer")
    dev_t, dev_d = next(target.parameters()).device, next(draft.parameters()).device
    if dev_t != dev_d:
        raise ValueError(f"target is on {dev_t} and draft on {dev_d}; put both on the same device")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int ≥ 0, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be ≥ 0 (0 = greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or not 1 <= top_k <= V):
        raise ValueError(f"top_k must be an int in [1, {V}] or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    idx = idx[None] if isinstance(idx, Tensor) and idx.dim() == 1 else idx  # (1, N)
    target._check_ids(idx, "prompt")
    if idx.shape[0] != 1:
        raise ValueError(f"speculative_generate decodes one sequence at a time (each row would accept a "
                         f"different number of tokens); got a batch of {idx.shape[0]} prompts: call it per row")
    window = min(target.config.block_size, draft.config.block_size)
    if idx.shape[1] + max_new_tokens - 1 > window:
        raise ValueError(f"a prompt of {idx.shape[1]} tokens plus {max_new_tokens} new ones needs positions up to "
                         f"{idx.shape[1] + max_new_tokens - 2}, beyond the context window ({window} positions, the "
                         f"smaller of the two models'); speculative decoding here stays inside the window: shorten "
                         f"the prompt or ask for fewer tokens")
    return idx


def speculative_generate(target: GPT, draft: GPT, idx: Tensor, max_new_tokens: int, k: int = 4,
                         temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                         greedy: bool = False, generator: torch.Generator | None = None
                         ) -> tuple[Tensor, SpeculativeStats]:
    """Continue the prompt idx (N0,) or (1, N0) by `max_new_tokens` tokens with speculative decoding
    (Leviathan et al. 2023; Chen et al. 2023); returns the ids (N0 + n,) or (1, N0 + n), prompt included,
    and the `SpeculativeStats`.

    Each round: the draft proposes k tokens one at a time; the target scores the last accepted token and
    all k proposals in one forward pass; `verify_greedy` (greedy=True or temperature 0: the result is
    `generate(target, idx, max_new_tokens, greedy=True)`, token for token) or `verify_sampling` (each
    token distributed as `generate(target, ..., temperature, top_k, top_p)` would draw it, the draft
    using the same temperature and filters) decides how many to keep, plus one token of the target's.
    Both models keep a KV cache, cut back to the accepted tokens after every round. The last round
    proposes fewer than k tokens if fewer are left, so exactly `max_new_tokens` come out.
    Both models run in eval mode (their modes are restored).

    "Token for token" is exact arithmetic's promise: the target reads k + 1 positions at once where
    `generate` reads one, and float32 may round the two differently, which could flip the argmax
    where two logits tie to the last bits (tests/test_speculative.py checks equality in float64 and
    float32)."""
    single = isinstance(idx, Tensor) and idx.dim() == 1
    _check_k(k)
    idx = _check_inputs(target, draft, idx, max_new_tokens, temperature, top_k, top_p)  # (1, N0)
    greedy = greedy or temperature == 0
    stats = SpeculativeStats(k=k)
    out = idx  # (1, N)
    t_cache: KVCache | None = None  # the target's keys and values of out[:, :P_t]
    d_cache: KVCache | None = None  # the draft's, of out[:, :P_d]
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(eval_mode(target))
        stack.enter_context(eval_mode(draft))
        while stats.new_tokens < max_new_tokens:
            kk = min(k, max_new_tokens - stats.new_tokens - 1)  # proposals this round: never overshoot
            P_t = 0 if t_cache is None else t_cache[0][0].shape[2]
            P_d = 0 if d_cache is None else d_cache[0][0].shape[2]
            # 1. The draft proposes kk tokens, one forward each (the first reads what its cache lacks).
            proposal, q_rows = [], []
            feed = out[:, P_d:]  # (1, N - P_d): 1 token, 2 after a fully accepted round, the prompt at first
            for _ in range(kk):
                logits, d_cache = draft.forward_cached(feed, d_cache)  # (1, ·, V)
                z = logits[0, -1]  # (V,) the draft's next-token logits
                if greedy:
                    tok = z.argmax(dim=-1, keepdim=True)  # (1,)
                else:
                    q_rows.append(_probs(z, temperature, top_k, top_p))  # (V,)
                    tok = _draw(q_rows[-1], generator)  # (1,)
                proposal.append(tok)
                feed = tok[None]  # (1, 1)
            stats.draft_forwards += kk
            prop = torch.cat(proposal) if proposal else out.new_empty(0)  # (kk,)
            # 2. The target scores everything after its cache, the proposals included, in one pass.
            logits, t_cache = target.forward_cached(torch.cat([out[:, P_t:], prop[None]], dim=1), t_cache)
            z = logits[0, -(kk + 1):]  # (kk + 1, V): after out[-1], after prop[0], ..., after prop[-1]
            stats.rounds += 1
            # 3. Keep the agreed prefix and one target token.
            if greedy:
                n, new = verify_greedy(prop, z)  # (n + 1,)
            else:
                q = torch.stack(q_rows) if q_rows else z.new_empty(0, z.shape[-1])  # (kk, V)
                n, new = verify_sampling(prop, q, _probs(z, temperature, top_k, top_p), generator)  # (n + 1,)
            stats.proposed += kk
            stats.accepted += n
            stats.checked += min(n + 1, kk)
            stats.new_tokens += n + 1
            out = torch.cat([out, new[None]], dim=1)  # (1, N + n + 1)
            # 4. Roll both caches back to the tokens kept (all but the last, which the next round feeds).
            t_cache = _crop(t_cache, out.shape[1] - 1)
            d_cache = _crop(d_cache, out.shape[1] - 1)
    return (out[0] if single else out), stats


# ----------------------------------------------------------------------------------------------
# Timing: the target alone against speculative decoding, side by side

@dataclass
class SpeedRow:
    """One line of `compare_speed`: k = 0 for the target alone (utils.gpt.generate with its KV cache)."""

    name: str
    k: int
    seconds: float  # median over the timed rounds, for max_new_tokens tokens
    tokens_per_s: float  # max_new_tokens / seconds
    speedup: float  # median over rounds of (target alone's time / this setting's time), timed back to back
    acceptance_rate: float  # accepted / proposed (nan for the target alone)
    tokens_per_target_forward: float


def compare_speed(target: GPT, draft: GPT, prompt: Tensor, max_new_tokens: int, ks: Iterable[int] = range(1, 9),
                  rounds: int = 5, greedy: bool = True, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, seed: int = 0) -> list[SpeedRow]:
    """Time the target alone (`generate` with the KV cache) and `speculative_generate` for each draft length
    in `ks`, generating `max_new_tokens` tokens after `prompt` (N0,), single sequence.

    Each of the `rounds` rounds times, for every k, the target alone and then speculative decoding right
    after it, so both see the same load on a shared machine; a setting's speed-up is the median over
    rounds of the ratio of the pair, its time the median of its times. Sampling (greedy=False) reseeds the
    generator with `seed` for every call, so every round draws the same tokens. For notebooks and
    benchmarks: the statistics are exact, the times are this machine's."""
    ks = list(ks)
    for k in ks:
        _check_k(k)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds must be an int ≥ 1, got {rounds!r}")
    _check_inputs(target, draft, prompt, max_new_tokens, temperature, top_k, top_p)
    device = next(target.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(k: int) -> SpeculativeStats | None:
        gen = torch.Generator(device).manual_seed(seed)
        if k == 0:
            generate(target, prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                     greedy=greedy, generator=gen)
            return None
        return speculative_generate(target, draft, prompt, max_new_tokens, k, temperature=temperature, top_k=top_k,
                                    top_p=top_p, greedy=greedy, generator=gen)[1]

    def seconds(k: int) -> float:
        sync()
        start = time.perf_counter()
        run(k)
        sync()
        return time.perf_counter() - start

    stats = {k: run(k) for k in [0] + ks}  # warm-up, and the statistics (the same in every round)
    alone: list[float] = []
    times: dict[int, list[float]] = {k: [] for k in ks}
    ratios: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(rounds):
        for k in ks:
            t0, t1 = seconds(0), seconds(k)
            alone.append(t0)
            times[k].append(t1)
            ratios[k].append(t0 / t1)
    if not ks:
        alone = [seconds(0) for _ in range(rounds)]
    rows = [SpeedRow("target alone", 0, median(alone), max_new_tokens / median(alone), 1.0, math.nan, 1.0)]
    for k in ks:
        s = stats[k]
        rows.append(SpeedRow(f"speculative, k = {k}", k, median(times[k]), max_new_tokens / median(times[k]),
                             median(ratios[k]), s.acceptance_rate, s.tokens_per_target_forward))
    return rows
