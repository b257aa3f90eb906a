"""utils.speculative (chapter 11): greedy speculative decoding gives the target's greedy output token for
token (against utils.gpt.generate, for drafts that disagree often, sometimes, and never); speculative
sampling draws sequences distributed as the target's (against the exact distribution enumerated from the
target's own forward pass, with a chi-square test that notices a wrong residual distribution); the
residual against the paper's identity; the statistics against hand counts; clear errors."""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

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
    with pytest.raises(TypeError, match=r"^speculative_generate: draft must be a utils\.gpt\.GPT, got Linear$"):
        speculative_generate(TARGET, torch.nn.Linear(2, 2), PROMPT, 5, 2)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(TARGET, TARGET, PROMPT, 5, 2, temperature=-1.0)
    with pytest.raises(ValueError, match=r"^residual_distribution: p and q must have the same shape"):
        residual_distribution(torch.ones(3) / 3, torch.ones(4) / 4)
    with pytest.raises(ValueError, match=r"^verify_greedy: need proposal \(k,\) and target_logits \(k \+ 1, V\)"):
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
    with pytest.raises(ValueError, match=r"^verify_sampling: need proposal \(k,\), q \(k, V\) and p \(k \+ 1, V\)"):
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


# ------------------------------------------------------------------------------------------ bounds and messages

def test_each_bound_of_speculative_generate_on_both_sides():
    V = TARGET.config.vocab_size
    with pytest.raises(TypeError, match=r"^speculative_generate: target must be a utils\.gpt\.GPT, got Linear$"):
        speculative_generate(torch.nn.Linear(2, 2), TARGET, PROMPT, 5, 2)
    with pytest.raises(ValueError, match=r"^prompt has token ids outside the vocabulary \[0, 11\)"):
        speculative_generate(TARGET, TARGET, torch.tensor([1, 11]), 5, 2)
    # 4 prompt tokens + 61 new ones read positions 0 .. 63 (the last token needs no forward pass): allowed
    # (test_edges_...); one more is refused up front, not halfway by the model's own position check.
    with pytest.raises(ValueError, match=r"^a prompt of 4 tokens plus 62 new ones needs positions up to 64, "):
        speculative_generate(TARGET, TARGET, PROMPT, 62, 2)

    def sample(**filters):
        return speculative_generate(TARGET, DRAFTS["independent"], PROMPT, 12, 3, temperature=1.0,
                                    generator=torch.Generator().manual_seed(0), **filters)[0]

    greedy, unfiltered = generate(TARGET, PROMPT, 12, greedy=True), sample()
    assert not torch.equal(unfiltered, greedy)  # this sample is not the greedy output, so the checks below bite
    # top_k = 1 (the smallest allowed) keeps only the argmax, and so does a tiny top_p (the most likely
    # token is always kept): speculative sampling becomes greedy decoding.
    assert torch.equal(sample(top_k=1), greedy) and torch.equal(sample(top_p=1e-9), greedy)
    # top_k = V and top_p = 1 (the largest allowed) filter nothing: the same draws as no filter.
    assert torch.equal(sample(top_k=V), unfiltered) and torch.equal(sample(top_p=1.0), unfiltered)


def test_verify_errors_name_the_function_for_each_shape_condition():
    logits = torch.zeros(3, 5)
    for proposal, target_logits in ((torch.tensor([[1], [2]]), logits),  # proposal not (k,)
                                    (torch.tensor([1, 2]), logits[..., None])):  # logits not (k + 1, V)
        with pytest.raises(ValueError, match=r"^verify_greedy: need proposal \(k,\) and target_logits"):
            verify_greedy(proposal, target_logits)
    u5, u4 = torch.ones(5) / 5, torch.ones(4) / 4
    for proposal, q, p in ((torch.tensor([[1]]), u5[None], u5.expand(2, 5)),  # proposal not (k,)
                           (torch.tensor([1, 2]), u5.expand(3, 5), u5.expand(3, 5)),  # q has 3 rows, k = 2
                           (torch.tensor([1]), u5[None, :, None], u5.expand(2, 5)[..., None]),  # q not 2-D
                           (torch.tensor([1]), u5[None], u4.expand(2, 4))):  # p over another vocabulary
        with pytest.raises(ValueError, match=r"^verify_sampling: need proposal \(k,\), q \(k, V\) and p"):
            verify_sampling(proposal, q, p)


def test_speedup_with_a_free_draft_is_the_expected_tokens_per_round():
    # Theorem 3.8 at c = 0 (the bound is c ≥ 0): eq. (1) alone, (1 - alpha^(k+1)) / (1 - alpha).
    assert expected_speedup(0.6, 3, 0.0) == pytest.approx((1 - 0.6 ** 4) / (1 - 0.6))
    with pytest.raises(ValueError, match=r"^cost_ratio \(draft time / target time per forward\) must be ≥ 0"):
        expected_speedup(0.6, 3, -1e-9)


# ------------------------------------------------------------------------------------------ randomness

def test_verify_sampling_accepts_when_u_q_is_below_p_with_u_the_generators_draw():
    # The rule as the docstring states it: accept x iff u q(x) < p(x), u ~ U[0, 1) the next draw of the
    # caller's generator, at p's precision (float64 here). p(x) / q(x) = 1/2: half the seeds accept.
    q = torch.tensor([[0.1, 0.6, 0.3]], dtype=torch.float64)
    p = torch.tensor([[0.4, 0.3, 0.3], [0.2, 0.5, 0.3]], dtype=torch.float64)
    decisions = []
    for seed in range(60):
        n, _ = verify_sampling(torch.tensor([1]), q, p, generator=torch.Generator().manual_seed(seed))
        u = torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert n == int(u * 0.6 < 0.3), seed
        decisions.append(n)
    assert 10 < sum(decisions) < 50  # both outcomes occur


def test_a_token_the_target_never_emits_is_rejected_even_when_u_is_zero(monkeypatch):
    # min(1, p(x) / q(x)) = 0 when p(x) = 0; u = 0 is a possible draw of U[0, 1) and must not accept it.
    monkeypatch.setattr(S, "_uniform", lambda generator, device, dtype: torch.zeros((), dtype=dtype))
    q = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    p = torch.tensor([[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    n, new = verify_sampling(torch.tensor([0]), q, p, generator=torch.Generator().manual_seed(0))
    assert n == 0 and new.tolist() == [2]  # rejected; the residual max(0, p - q) ∝ (0, 0, 0.5) gives token 2


def test_verify_sampling_with_a_generator_ignores_the_global_random_state():
    # Accept/reject decisions, residual draws and bonus draws all come from the caller's generator.
    q = torch.tensor([[0.1, 0.6, 0.2, 0.1]], dtype=torch.float64)  # (k, V), proposing token 1
    p = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.25] * 4], dtype=torch.float64)  # accept 1 w.p. 0.3 / 0.6
    # residual after a rejection: max(0, p - q) = (0.2, 0, 0, 0.1) → (2/3, 0, 0, 1/3); bonus: uniform

    def run(global_seed):
        torch.manual_seed(global_seed)
        gen = torch.Generator().manual_seed(1)
        return [verify_sampling(torch.tensor([1]), q, p, generator=gen) for _ in range(100)]

    first, second = run(0), run(1)
    assert [n for n, _ in first] == [n for n, _ in second]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, second))
    resampled = [int(new[0]) for n, new in first if n == 0]
    bonus = [int(new[1]) for n, new in first if n == 1]
    assert set(resampled) == {0, 3} and set(bonus) == {0, 1, 2, 3}  # both draws vary, so both are checked
    assert min(len(resampled), len(bonus)) > 20


def test_uniform_draws_from_the_generator_on_its_device_and_returns_on_the_asked_device():
    # The meta device stands in for an accelerator: its draws do not touch the CPU's random state.
    u = S._uniform(torch.Generator().manual_seed(4), torch.device("cpu"), torch.float64)
    assert u.dtype == torch.float64 and u.shape == ()
    assert u == torch.rand((), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    u = S._uniform(g, torch.device("meta"), torch.float32)
    assert u.device.type == "meta" and u.dtype == torch.float32
    fresh = torch.Generator().manual_seed(4)
    torch.rand((), generator=fresh)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=fresh))  # g gave one draw
    torch.manual_seed(5)
    u = S._uniform(None, torch.device("meta"), torch.float64)  # no generator: the meta device's own
    assert u.device.type == "meta" and u.dtype == torch.float64
    after = torch.rand(())
    torch.manual_seed(5)
    assert after == torch.rand(())  # the CPU's global generator was not used


def test_probs_computes_in_float32_at_least_and_applies_the_nucleus():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.25]], dtype=torch.bfloat16)
    got = S._probs(logits, 0.5, None, None)
    assert got.dtype == torch.float32  # as utils.gpt.generate: softmax of float32 logits / temperature
    torch.testing.assert_close(got, torch.softmax(logits.float() / 0.5, dim=-1), rtol=0, atol=1e-7)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    # top_p = 0.7: the mass ranked above each token is 0, 0.5, 0.8, 0.95; tokens with ≥ 0.7 above are dropped.
    got = S._probs(probs.log(), 1.0, None, 0.7)
    torch.testing.assert_close(got, torch.tensor([0.625, 0.375, 0.0, 0.0], dtype=torch.float64))


# ------------------------------------------------------------------------------------------ compare_speed

def spy_on_runs(monkeypatch) -> list[list]:
    """Record [k, output] of every generation compare_speed starts (k = 0: the target alone), real ones
    (the output stays None if the call raises)."""
    calls = []
    real_generate, real_speculative = S.generate, S.speculative_generate

    def spy_generate(*args, **kwargs):
        calls.append([0, None])
        calls[-1][1] = real_generate(*args, **kwargs)
        return calls[-1][1]

    def spy_speculative(target, draft, prompt, n, k, **kwargs):
        calls.append([k, None])
        calls[-1][1], stats = real_speculative(target, draft, prompt, n, k, **kwargs)
        return calls[-1][1], stats

    monkeypatch.setattr(S, "generate", spy_generate)
    monkeypatch.setattr(S, "speculative_generate", spy_speculative)
    return calls


SPREAD_TARGET, SPREAD_DRAFT = small_pair(11)  # next-token distributions far from one-hot: samples vary


def test_compare_speed_greedy_runs_all_give_the_targets_greedy_output(monkeypatch):
    calls = spy_on_runs(monkeypatch)
    greedy = generate(SPREAD_TARGET, PROMPT, 12, greedy=True)
    compare_speed(SPREAD_TARGET, SPREAD_DRAFT, PROMPT, 12, ks=[1, 3], rounds=1)  # greedy by default
    # warm-up: 0, 1, 3; then one round: 0, 1, 0, 3
    assert [k for k, _ in calls] == [0, 1, 3, 0, 1, 0, 3]
    assert all(torch.equal(out, greedy) for _, out in calls)
    # Sampling whose only choice is the argmax: top_k = 1, a tiny nucleus, or a temperature near 0.
    for options in (dict(top_k=1), dict(top_p=1e-9), dict(temperature=1e-6)):
        calls.clear()
        compare_speed(SPREAD_TARGET, SPREAD_DRAFT, PROMPT, 12, ks=[2], rounds=1, greedy=False, **options)
        assert len(calls) == 4 and all(torch.equal(out, greedy) for _, out in calls), options


def test_compare_speed_samples_with_a_generator_seeded_by_seed_default_0_at_temperature_1(monkeypatch):
    calls = spy_on_runs(monkeypatch)
    target, draft = SPREAD_TARGET, SPREAD_DRAFT

    def reference(seed, temperature=1.0):  # the target alone and k = 2, each from a fresh seeded generator
        return (generate(target, PROMPT, 12, temperature=temperature, generator=torch.Generator().manual_seed(seed)),
                speculative_generate(target, draft, PROMPT, 12, 2, temperature=temperature,
                                     generator=torch.Generator().manual_seed(seed))[0])

    compare_speed(target, draft, PROMPT, 12, ks=[2], rounds=1, greedy=False)
    alone, spec = reference(0)
    assert [k for k, _ in calls] == [0, 2, 0, 2]  # every call reseeds: the same tokens in every round
    assert all(torch.equal(out, alone if k == 0 else spec) for k, out in calls)
    # the references are told apart by the seed and by the temperature, so the check above pins both
    for other in (reference(1), reference(0, temperature=2.0)):
        assert not torch.equal(other[0], alone) and not torch.equal(other[1], spec)


def test_compare_speed_with_no_draft_lengths_times_the_target_alone_five_times(monkeypatch):
    calls = spy_on_runs(monkeypatch)
    rows = compare_speed(TARGET, TARGET, PROMPT, 4, ks=[])
    assert [k for k, _ in calls] == [0] * 6  # warm-up, then the default rounds = 5
    assert len(rows) == 1 and (rows[0].name, rows[0].k, rows[0].speedup) == ("target alone", 0, 1.0)
    assert rows[0].tokens_per_s == pytest.approx(4 / rows[0].seconds)


def test_compare_speed_checks_every_argument_before_running_anything(monkeypatch):
    calls = spy_on_runs(monkeypatch)
    V = TARGET.config.vocab_size
    for kwargs, message in ((dict(rounds=0), r"^rounds must be an int ≥ 1, got 0$"),
                            (dict(rounds=True), r"^rounds must be an int ≥ 1, got True$"),
                            (dict(rounds=2.0), r"^rounds must be an int ≥ 1, got 2\.0$"),
                            (dict(temperature=-0.5), r"^temperature must be ≥ 0"),
                            (dict(top_k=0), r"^top_k must be an int in \[1, 11\] or None, got 0$"),
                            (dict(top_k=V + 1), r"^top_k must be an int in \[1, 11\] or None, got 12$"),
                            (dict(top_p=0.0), r"^top_p must be in \(0, 1\] or None, got 0\.0$"),
                            (dict(top_p=1.5), r"^top_p must be in \(0, 1\] or None, got 1\.5$")):
        with pytest.raises(ValueError, match=message):
            compare_speed(TARGET, TARGET, PROMPT, 4, ks=[1], greedy=False, **kwargs)
    assert calls == []  # refused before the warm-up
    for kwargs in (dict(top_k=V, top_p=1.0), dict(top_k=1, temperature=0.0)):  # the other side of each bound
        rows = compare_speed(TARGET, TARGET, PROMPT, 4, ks=[1], rounds=1, greedy=False, **kwargs)
        assert [r.k for r in rows] == [0, 1]
    assert len(calls) == 8


def test_compare_speed_waits_for_the_gpu_around_every_timed_call(monkeypatch):
    # A GPU is faked: the model reports a cuda device, S.torch is a stand-in holding torch.cuda.synchronize
    # and torch.Generator, and the generations only log themselves (as in the fake-clock test).
    events = []
    model = scrambled_gpt(0, n_layer=1)
    cuda = torch.device("cuda")
    model.parameters = lambda recurse=True: iter([SimpleNamespace(device=cuda)])

    class FakeGenerator:
        def __init__(self, device):
            events.append(("generator", device))

        def manual_seed(self, seed):
            events.append(("seed", seed))
            return self

    fake_cuda = SimpleNamespace(synchronize=lambda: events.append("sync"))
    monkeypatch.setattr(S, "torch", SimpleNamespace(Generator=FakeGenerator, cuda=fake_cuda))
    monkeypatch.setattr(S, "generate", lambda *args, **kwargs: events.append("alone"))

    def fake_speculative(target, draft, prompt, n, k, **kwargs):
        events.append(f"k = {k}")
        return None, SpeculativeStats(k=k, rounds=1, proposed=k, accepted=k, checked=k, new_tokens=n)

    monkeypatch.setattr(S, "speculative_generate", fake_speculative)
    compare_speed(model, model, PROMPT, 4, ks=[1, 2], rounds=2)
    runs = [e for e in events if isinstance(e, str)]
    warm_up = ["alone", "k = 1", "k = 2"]
    timed = ["sync", "alone", "sync", "sync", "k = 1", "sync", "sync", "alone", "sync", "sync", "k = 2", "sync"]
    assert runs == warm_up + 2 * timed
    assert {e for e in events if isinstance(e, tuple)} == {("generator", cuda), ("seed", 0)}


def test_no_forward_pass_records_a_graph(monkeypatch):
    """Decoding never trains: every forward pass of both models runs with autograd off (no graph, no saved
    activations), also when the models' parameters require gradients."""
    target, draft = scrambled_gpt(0), scrambled_gpt(1)
    assert all(p.requires_grad for p in target.parameters())
    seen = []
    for model in (target, draft):
        real = model.forward_cached

        def spy(*a, _real=real, **k):
            seen.append(torch.is_grad_enabled())
            return _real(*a, **k)
        monkeypatch.setattr(model, "forward_cached", spy)
    speculative_generate(target, draft, PROMPT, 12, 3, greedy=True)
    assert len(seen) > 3 and not any(seen)
    assert torch.is_grad_enabled()  # and autograd is on again after


def test_defaults_are_four_proposals_at_temperature_one():
    draft = DRAFTS["noisy copy"]

    def run(**kwargs):
        return speculative_generate(TARGET, draft, PROMPT, 30, generator=torch.Generator().manual_seed(3), **kwargs)
    out, stats = run()
    same, same_stats = run(k=4, temperature=1.0)
    assert stats.k == 4 and torch.equal(out, same) and stats == same_stats
    assert not torch.equal(run(temperature=2.0)[0], out)  # the seed is one where the temperature shows


@pytest.mark.parametrize("nucleus", [dict(top_k=1), dict(top_p=1e-6)])
def test_the_draft_proposes_from_the_same_filtered_distribution(nucleus):
    # the target as its own draft: with the same filter on both sides q = p, so nothing is rejected; a filter that
    # keeps one token makes both one-hot, and the result is the greedy continuation
    out, stats = speculative_generate(TARGET, TARGET, PROMPT, 20, 4, temperature=1.0,
                                      generator=torch.Generator().manual_seed(0), **nucleus)
    assert stats.acceptance_rate == 1.0 and stats.rounds == 4
    assert torch.equal(out, generate(TARGET, PROMPT, 20, greedy=True))


@pytest.mark.parametrize("k", [1, 3])
def test_each_cache_holds_exactly_the_kept_tokens_but_the_last(monkeypatch, k):
    """Every round the draft feeds only what its cache lacks, then one token per proposal, and the target
    feeds the last kept token and the proposals: after each round both caches are cut back to the kept
    tokens but the last (the draft's may hold one fewer: it never fed its last proposal)."""
    target, draft = scrambled_gpt(0), noisy_copy(TARGET, 5, 0.1)  # a draft that is right some of the time
    events = []
    for name, model in (("draft", draft), ("target", target)):
        real = model.forward_cached

        def spy(idx, cache=None, _real=real, _name=name):
            events.append((_name, idx.shape[1], 0 if cache is None else cache[0][0].shape[2]))
            return _real(idx, cache)
        monkeypatch.setattr(model, "forward_cached", spy)
    real_verify = S.verify_greedy

    def verify(prop, z):
        n, new = real_verify(prop, z)
        events.append(("verify", n, len(prop)))
        return n, new
    monkeypatch.setattr(S, "verify_greedy", verify)
    out, stats = speculative_generate(target, draft, PROMPT, 30, k, greedy=True)

    N, t_len, d_len = len(PROMPT), 0, 0  # tokens kept, positions in each cache
    fully = partly = 0
    rounds, current = [], []
    for e in events:
        current.append(e)
        if e[0] == "verify":
            rounds.append(current)
            current = []
    assert not current and len(rounds) == stats.rounds
    for r in rounds:
        drafts, (_, fed_t, P_t), (_, n, kk) = r[:-2], r[-2], r[-1]
        assert [e[0] for e in drafts] == ["draft"] * kk
        if drafts:
            assert drafts[0][2] == d_len and drafts[0][1] == N - d_len  # reads all it has not read
            assert [(fed, P) for _, fed, P in drafts[1:]] == [(1, N + i) for i in range(kk - 1)]  # one each
            d_len = N + kk - 1  # it never feeds its last proposal
        assert (P_t, fed_t) == (t_len, N + kk - t_len)  # the target reads what its cache lacks and the proposals
        N += n + 1
        t_len, d_len = N - 1, min(d_len, N - 1)  # both cut back to the kept tokens but the last
        fully += n == kk and kk > 0
        partly += n < kk
    assert fully and partly  # both kinds of round happened
    assert torch.equal(out, generate(target, PROMPT, 30, greedy=True))


def test_one_layer_models_as_target_and_draft():
    """A one-layer draft is the usual case (and a one-layer target works too): the cache of a single layer."""
    one_layer = scrambled_gpt(2, n_layer=1)
    for target, draft in ((TARGET, one_layer), (one_layer, TARGET)):
        out, stats = speculative_generate(target, draft, PROMPT, 20, 3, greedy=True)
        assert stats.rounds > 1 and torch.equal(out, generate(target, PROMPT, 20, greedy=True))
