"""utils.speculative (chapter 11): greedy speculative decoding gives the target's greedy output token for
token (against utils.gpt.generate, for drafts that disagree often, sometimes, and never); speculative
sampling draws sequences distributed as the target's (against the exact distribution enumerated from the
target's own forward pass, with a chi-square test that notices a wrong residual distribution); the
residual against the paper's identity; the statistics against hand counts; clear errors."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chi2

import utils.speculative as S
from utils.gpt import GPT, GPTConfig, generate
from utils.speculative import (SpeculativeStats, compare_speed, expected_speedup, expected_tokens_per_round,
                               residual_distribution, speculative_generate, verify_greedy, verify_sampling)


def scrambled_gpt(seed: int, vocab_size: int = 11, n_embd: int = 16, n_layer: int = 2, std: float = 0.3,
                  pos_std: float = 3.0, dtype: torch.dtype = torch.float64) -> GPT:
    """A small GPT with every parameter redrawn (LayerNorms and biases too). Large position embeddings make
    the greedy continuation vary instead of repeating one token, so a wrong cache position shows."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=n_layer, n_head=2, n_embd=n_embd))
    model = model.to(dtype).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * (pos_std if "wpe" in name else std))
    return model


def noisy_copy(model: GPT, seed: int, noise: float) -> GPT:
    """The same GPT with Gaussian noise on every parameter: a draft that agrees with it part of the time."""
    twin = scrambled_gpt(0, model.config.vocab_size, model.config.n_embd, model.config.n_layer)
    twin.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * noise)
    return twin


TARGET = scrambled_gpt(0)
DRAFTS = {"independent": scrambled_gpt(1), "noisy copy": noisy_copy(TARGET, 5, 0.1), "the target itself": TARGET}
PROMPT = torch.tensor([1, 2, 3, 4])


# ------------------------------------------------------------------------------------------ greedy

@pytest.mark.parametrize("draft_name", list(DRAFTS))
@pytest.mark.parametrize("k", range(1, 9))
def test_greedy_speculative_decoding_is_the_targets_greedy_output(draft_name, k):
    draft = DRAFTS[draft_name]
    n = 40
    expected = generate(TARGET, PROMPT, n, greedy=True)  # (N0 + n,) one token per target call
    assert len(set(expected[len(PROMPT):].tolist())) >= 4  # the continuation varies (not one repeated token)
    out, stats = speculative_generate(TARGET, draft, PROMPT, n, k, greedy=True)
    assert torch.equal(out, expected)
    assert stats.new_tokens == n and stats.new_tokens == stats.accepted + stats.rounds
    assert stats.accepted <= stats.checked <= stats.proposed == stats.draft_forwards
    assert stats.checked - stats.accepted <= stats.rounds  # at most one rejection a round
    if draft_name == "the target itself":  # every proposal accepted: k + 1 tokens per target call
        assert stats.acceptance_rate == 1.0 and stats.rounds == math.ceil(n / (k + 1))
        assert stats.checked == stats.proposed
    elif draft_name == "independent":  # rejected most of the time: the rollback path is taken often
        assert stats.acceptance_rate < 0.3 and stats.rounds > n / 2
    else:  # both branches, many times
        assert 0.3 < stats.per_token_acceptance < 0.95


def test_greedy_with_a_batch_dimension_and_temperature_zero():
    draft = DRAFTS["noisy copy"]
    expected = generate(TARGET, PROMPT[None], 25, greedy=True)  # (1, N0 + 25)
    out, _ = speculative_generate(TARGET, draft, PROMPT[None], 25, 3, temperature=0.0)
    assert out.shape == (1, len(PROMPT) + 25) and torch.equal(out, expected)


def test_greedy_in_float32():
    target = scrambled_gpt(3, dtype=torch.float32)
    draft = noisy_copy(target, 7, 0.05).float()
    expected = generate(target, PROMPT, 30, greedy=True)
    out, stats = speculative_generate(target, draft, PROMPT, 30, 4, greedy=True)
    assert torch.equal(out, expected) and stats.accepted > 0


def test_verify_greedy_by_hand():
    logits = torch.full((4, 10), -1.0)
    for i, best in enumerate([3, 1, 5, 9]):  # the target's argmax after each position
        logits[i, best] = 2.0
    n, new = verify_greedy(torch.tensor([3, 1, 4]), logits)  # two agree, the third does not
    assert n == 2 and new.tolist() == [3, 1, 5]
    n, new = verify_greedy(torch.tensor([3, 1, 5]), logits)  # all agree: the bonus token
    assert n == 3 and new.tolist() == [3, 1, 5, 9]
    n, new = verify_greedy(torch.tensor([0, 1, 5]), logits)  # a later agreement does not count
    assert n == 0 and new.tolist() == [3]
    n, new = verify_greedy(torch.tensor([], dtype=torch.long), logits[:1])  # nothing proposed
    assert n == 0 and new.tolist() == [3]


# ------------------------------------------------------------------------------------------ sampling

def test_residual_distribution_by_hand_and_when_p_equals_q():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.2, 0.5, 0.1, 0.2])
    torch.testing.assert_close(residual_distribution(p, q), torch.tensor([0.75, 0.0, 0.25, 0.0]))
    torch.testing.assert_close(residual_distribution(p, p), p)
    both = residual_distribution(torch.stack([p, p]), torch.stack([q, p]))  # row-wise, (2, V)
    torch.testing.assert_close(both, torch.stack([torch.tensor([0.75, 0.0, 0.25, 0.0]), p]))


def test_accept_or_resample_gives_p_exactly():
    # Leviathan et al. (2023), Appendix A.1, written out: P(x) = q(x) min(1, p(x)/q(x)) + (1 - beta) r(x),
    # with beta = sum_x min(p(x), q(x)) the probability of accepting and r the residual.
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, 9, generator=g, dtype=torch.float64) * 2, -1)  # rows of different shapes
    q = torch.softmax(torch.randn(6, 9, generator=g, dtype=torch.float64) * 2, -1)
    beta = torch.minimum(p, q).sum(-1, keepdim=True)  # (6, 1)
    emitted = q * torch.clamp(p / q, max=1) + (1 - beta) * residual_distribution(p, q)  # (6, 9)
    torch.testing.assert_close(emitted, p, rtol=0, atol=1e-12)
    wrong = q * torch.clamp(p / q, max=1) + (1 - beta) * p  # resampling from p instead: not p
    assert (wrong - p).abs().max() > 0.01


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square test of counts against probabilities (cells with probability 0 must be empty)."""
    assert counts[probs == 0].sum() == 0
    keep = probs > 0
    expected = counts.sum() * probs[keep]
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    return float(chi2.sf(stat, int(keep.sum()) - 1))


def test_verify_sampling_emits_tokens_distributed_as_p():
    V, N = 5, 20000
    p = torch.tensor([[0.05, 0.4, 0.05, 0.3, 0.2], [0.1, 0.1, 0.6, 0.1, 0.1]], dtype=torch.float64)  # (k + 1, V)
    q = torch.tensor([[0.5, 0.1, 0.2, 0.1, 0.1]], dtype=torch.float64)  # (k, V), far from p
    g = torch.Generator().manual_seed(0)
    first = torch.zeros(V, dtype=torch.float64)
    second = torch.zeros(V, dtype=torch.float64)  # the bonus token, when the proposal is kept
    accepted = 0
    for _ in range(N):
        x = torch.multinomial(q[0], 1, generator=g)  # (1,) the draft's proposal
        n, new = verify_sampling(x, q, p, generator=g)
        assert new.shape == (n + 1,) and (n == 0 or new[0] == x[0])
        first[new[0]] += 1
        if n == 1:
            second[new[1]] += 1
            accepted += 1
    assert chi_square_p_value(first, p[0]) > 1e-4
    assert chi_square_p_value(second, p[1]) > 1e-4
    beta = float(torch.minimum(p[0], q[0]).sum())  # the probability of keeping a proposal
    assert abs(accepted / N - beta) < 4 * math.sqrt(beta * (1 - beta) / N)


def exact_sequence_distribution(target: GPT, prompt: torch.Tensor, n: int, temperature: float,
                                top_k: int | None) -> torch.Tensor:
    """P(the next n tokens) for every one of the V^n sequences (in itertools.product order), from one
    plain forward pass of the target over all of them: the product of its next-token probabilities."""
    V = target.config.vocab_size
    seqs = torch.tensor(list(itertools.product(range(V), repeat=n)))  # (V^n, n)
    idx = torch.cat([prompt.expand(len(seqs), -1), seqs], dim=1)  # (V^n, N0 + n)
    with torch.no_grad():
        logits = target(idx)[:, len(prompt) - 1:-1] / temperature  # (V^n, n, V) the logits that chose each token
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (V^n, n, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    logp = F.log_softmax(logits, dim=-1).gather(-1, seqs[..., None])[..., 0]  # (V^n, n)
    return logp.sum(-1).exp()  # (V^n,)


def sample_counts(target: GPT, draft: GPT, prompt: torch.Tensor, n: int, k: int, N: int, temperature: float,
                  top_k: int | None, seed: int) -> tuple[torch.Tensor, SpeculativeStats]:
    V = target.config.vocab_size
    counts = torch.zeros(V ** n, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    total = SpeculativeStats(k=k)
    for _ in range(N):
        out, stats = speculative_generate(target, draft, prompt, n, k, temperature=temperature, top_k=top_k,
                                          generator=g)
        counts[sum(int(t) * V ** (n - 1 - i) for i, t in enumerate(out[len(prompt):]))] += 1
        total.accepted += stats.accepted
        total.proposed += stats.proposed
    return counts, total


def small_pair(vocab_size: int) -> tuple[GPT, GPT]:
    """A target and an unrelated draft over a vocabulary small enough to enumerate every continuation."""
    return (scrambled_gpt(10, vocab_size=vocab_size, std=0.6, pos_std=1.0),
            scrambled_gpt(11, vocab_size=vocab_size, std=0.6, pos_std=1.0))


@pytest.mark.parametrize("V, n, k, temperature, top_k", [
    (3, 4, 3, 1.0, None),  # 81 continuations; a round of 3 proposals, then the bonus token, then a round of 0
    (4, 3, 1, 0.8, 3),  # 64 continuations, the draft and target both filtered to their top 3 at temperature 0.8
])
def test_speculative_sampling_draws_the_targets_sequence_distribution(V, n, k, temperature, top_k):
    target, draft = small_pair(V)
    prompt = PROMPT[:2] % V
    probs = exact_sequence_distribution(target, prompt, n, temperature, top_k)  # (V^n,)
    counts, stats = sample_counts(target, draft, prompt, n, k, 1200, temperature, top_k, seed=k)
    assert 0.2 < stats.acceptance_rate < 0.9  # both branches (accept, resample) are taken many times
    assert chi_square_p_value(counts, probs) > 1e-4


def test_the_distribution_test_notices_a_wrong_residual(monkeypatch):
    # Resampling from p after a rejection (instead of norm(max(0, p - q))) over-weights the tokens the
    # draft likes; the same chi-square test as above, on half the samples, must reject it.
    target, draft = small_pair(3)
    prompt = PROMPT[:2] % 3
    probs = exact_sequence_distribution(target, prompt, 4, 1.0, None)
    monkeypatch.setattr(S, "residual_distribution", lambda p, q: p)
    counts, _ = sample_counts(target, draft, prompt, 4, 3, 600, 1.0, None, seed=3)
    assert chi_square_p_value(counts, probs) < 1e-6


def test_sampling_with_the_target_as_draft_accepts_everything():
    out, stats = speculative_generate(TARGET, TARGET, PROMPT, 20, 4, temperature=1.0,
                                      generator=torch.Generator().manual_seed(0))
    assert out.shape == (len(PROMPT) + 20,) and stats.acceptance_rate == 1.0 and stats.rounds == 4


# ------------------------------------------------------------------------------------------ statistics

def test_statistics_by_hand():
    s = SpeculativeStats(k=4, rounds=3, proposed=12, accepted=6, checked=8, new_tokens=9)
    assert s.acceptance_rate == 0.5 and s.per_token_acceptance == 0.75 and s.tokens_per_target_forward == 3.0
    assert math.isnan(SpeculativeStats(k=1).acceptance_rate)


def test_expected_tokens_and_speedup_by_hand():
    assert expected_tokens_per_round(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)  # sum of alpha^i, i = 0..k
    assert expected_tokens_per_round(0.8, 3) == pytest.approx(1 + 0.8 + 0.64 + 0.512)
    assert expected_tokens_per_round(1.0, 5) == 6 and expected_tokens_per_round(0.0, 5) == 1
    assert expected_speedup(0.5, 2, 0.1) == pytest.approx(1.75 / 1.2)
    assert expected_speedup(0.0, 3, 0.5) == pytest.approx(1 / 2.5)  # nothing accepted: only the draft's cost


def test_compare_speed_reports_the_statistics_of_each_draft_length():
    draft = DRAFTS["noisy copy"]
    rows = compare_speed(TARGET, draft, PROMPT, 20, ks=[1, 3], rounds=1)
    assert [r.k for r in rows] == [0, 1, 3] and rows[0].speedup == 1.0
    for r in rows[1:]:
        stats = speculative_generate(TARGET, draft, PROMPT, 20, r.k, greedy=True)[1]
        assert r.acceptance_rate == stats.acceptance_rate
        assert r.tokens_per_target_forward == stats.tokens_per_target_forward
        assert r.tokens_per_s == pytest.approx(20 / r.seconds)


def test_compare_speed_arithmetic_on_a_fake_clock(monkeypatch):
    # Every call advances a fake clock: the target alone by 2, 6, 2, ... seconds (a busy moment every other
    # round), speculative decoding with draft length k by k / 2 seconds, or 3 k / 2 when the machine is busy.
    clock = {"now": 0.0, "busy": False}
    monkeypatch.setattr(S, "time", type("FakeTime", (), {"perf_counter": staticmethod(lambda: clock["now"])}))

    def fake_generate(*args, **kwargs):
        clock["busy"] = not clock["busy"]
        clock["now"] += 6.0 if clock["busy"] else 2.0

    def fake_speculative(target, draft, prompt, n, k, **kwargs):
        clock["now"] += k * (1.5 if clock["busy"] else 0.5)
        return None, SpeculativeStats(k=k, rounds=4, proposed=4 * k, accepted=k, checked=k + 2, new_tokens=n)

    monkeypatch.setattr(S, "generate", fake_generate)
    monkeypatch.setattr(S, "speculative_generate", fake_speculative)
    rows = compare_speed(TARGET, TARGET, PROMPT, 20, ks=[1, 2, 4], rounds=3)
    alone, one, two, four = rows
    assert (alone.name, alone.k, alone.speedup, alone.tokens_per_target_forward) == ("target alone", 0, 1.0, 1.0)
    assert math.isnan(alone.acceptance_rate)
    assert alone.seconds == 2.0 and alone.tokens_per_s == 10.0  # median of 2, 6, 2, 6, 2, 6, 2, 6, 2
    assert one.speedup == 4.0 and two.speedup == 2.0 and four.speedup == 1.0  # each pair: 2 / (k / 2), 6 / (3 k / 2)
    assert (one.seconds, two.seconds, four.seconds) == (0.5, 3.0, 2.0)  # medians of 0.5 1.5 0.5, 3 1 3, 2 6 2
    assert two.tokens_per_s == 20 / 3.0 and two.name == "speculative, k = 2" and two.k == 2
    assert one.acceptance_rate == 0.25 and four.tokens_per_target_forward == 5.0


# ------------------------------------------------------------------------------------------ bad input

def test_clear_errors():
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(TARGET, scrambled_gpt(1, vocab_size=12), PROMPT, 5, 2)
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="draft length k"):
            speculative_generate(TARGET, TARGET, PROMPT, 5, bad_k)
    with pytest.raises(ValueError, match="one sequence at a time"):
        speculative_generate(TARGET, TARGET, PROMPT.expand(2, -1), 5, 2)
    with pytest.raises(ValueError, match="context window"):
        speculative_generate(TARGET, TARGET, PROMPT, 62, 2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        speculative_generate(TARGET, TARGET, torch.tensor([1, 11]), 5, 2)
    with pytest.raises(TypeError, match="draft must be a utils.gpt.GPT"):
        speculative_generate(TARGET, torch.nn.Linear(2, 2), PROMPT, 5, 2)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(TARGET, TARGET, PROMPT, 5, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="shape"):
        residual_distribution(torch.ones(3) / 3, torch.ones(4) / 4)
    with pytest.raises(ValueError, match="k \\+ 1"):
        verify_greedy(torch.tensor([1, 2]), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens_per_round(1.5, 2)
    with pytest.raises(ValueError, match="cost_ratio"):
        expected_speedup(0.5, 2, -0.1)
    for kwargs, what in ((dict(top_k=0), "top_k"), (dict(top_k=12), "top_k"), (dict(top_p=0.0), "top_p"),
                         (dict(top_p=1.5), "top_p")):
        with pytest.raises(ValueError, match=what):
            speculative_generate(TARGET, TARGET, PROMPT, 5, 2, **kwargs)
    for bad_n in (-1, 2.0, True):
        with pytest.raises(ValueError, match="max_new_tokens"):
            speculative_generate(TARGET, TARGET, PROMPT, bad_n, 2)
    with pytest.raises(ValueError, match="rounds"):
        compare_speed(TARGET, TARGET, PROMPT, 5, ks=[1], rounds=0)
    with pytest.raises(ValueError, match="draft length k"):
        compare_speed(TARGET, TARGET, PROMPT, 5, ks=[1, 0])
    with pytest.raises(ValueError, match="q \\(k, V\\)"):
        verify_sampling(torch.tensor([1, 2]), torch.ones(2, 5) / 5, torch.ones(2, 5) / 5)


def test_edges_no_new_tokens_the_last_position_and_the_global_generator():
    out, stats = speculative_generate(TARGET, TARGET, PROMPT, 0, 3)
    assert torch.equal(out, PROMPT) and stats.rounds == 0
    n = 64 - len(PROMPT) + 1  # the last token needs no forward pass: positions up to 63 are read
    out, _ = speculative_generate(TARGET, DRAFTS["independent"], PROMPT, n, 8, greedy=True)
    assert torch.equal(out, generate(TARGET, PROMPT, n, greedy=True))
    torch.manual_seed(0)
    out, stats = speculative_generate(TARGET, DRAFTS["noisy copy"], PROMPT, 12, 3, temperature=1.0, top_p=0.9)
    assert out.shape == (len(PROMPT) + 12,) and stats.new_tokens == 12
