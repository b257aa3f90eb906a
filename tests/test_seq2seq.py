"""utils.seq2seq: the date task, the encoder-decoder, greedy and beam decoding."""
from __future__ import annotations

import time
from datetime import date

import pytest
import torch

from decoding import check_beam_agrees_with_greedy
from utils import seq2seq as S


def peaked_(m: S.Seq2Seq) -> S.Seq2Seq:
    """Scale an untrained model's weights up so its outputs (and attention) are far from uniform, and
    nudge the <eos> logit so greedy rows end at different steps (some never, within 14 steps)."""
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
        m.decoder.head.bias[S.EOS] += 0.6
    return m


@pytest.fixture(scope="module")
def splits() -> S.DateSplits:
    return S.make_date_dataset(n_train=3000, n_val=300, n_test=600, seed=0)


@pytest.fixture(scope="module")
def vocabs() -> tuple[S.Seq2SeqVocab, S.Seq2SeqVocab]:
    return S.date_vocabs()


@pytest.fixture(scope="module")
def model(vocabs) -> S.Seq2Seq:
    """A small untrained model in float64, weights scaled up so its outputs are far from uniform, and the
    <eos> logit nudged so greedy rows end at different steps (some never, within 14 steps)."""
    src_vocab, tgt_vocab = vocabs
    torch.manual_seed(0)
    m = S.Seq2Seq(S.Seq2SeqConfig(len(src_vocab), len(tgt_vocab), embed_dim=8, hidden_size=16,
                                  num_layers=2)).double().eval()
    return peaked_(m)


# ---------------------------------------------------------------------------------------------- the task

def test_render_examples_from_the_issue():
    d = date(1998, 3, 3)
    assert S.render_date(d, "{Do} of {Month} {YYYY}") == "3rd of March 1998"
    assert S.render_date(d, "{MM}/{DD}/{YY}") == "03/03/98"
    assert S.render_date(d, "{Weekday}, {Month} {D}, {YYYY}") == "Tuesday, March 3, 1998"
    assert S.render_date(d, "{D} {mon} {YYYY}") == "3 mar 1998"
    assert S.render_date(d, "{YYYY}.{MM}.{DD}") == "1998.03.03"
    assert S.render_date(d, "{Month} {Do}, {YY}") == "March 3rd, 98"
    assert [S.render_date(date(2001, 1, n), "{Do}") for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd"]
    with pytest.raises(ValueError, match="two-digit year"):
        S.render_date(date(1950, 1, 1), "{MM}/{DD}/{YY}")


def test_dataset_is_deterministic_under_a_seed(splits):
    again = S.make_date_dataset(n_train=3000, n_val=300, n_test=600, seed=0)
    other = S.make_date_dataset(n_train=3000, n_val=300, n_test=600, seed=1)
    assert again == splits
    assert other.train != splits.train
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3000, 300, 600)


def test_every_input_parses_back_to_its_target(splits):
    """Python's datetime.strptime, an independent parser, recovers each target from its input."""
    for p in splits.train + splits.val + splits.test:
        assert S.parse_date(p.source, p.template).isoformat() == p.target, p
        if "eekday" in p.template or "Wkd" in p.template:  # strptime doesn't check weekdays: we do
            d = date.fromisoformat(p.target)
            assert S.WEEKDAYS[d.weekday()].lower()[:3] in p.source.lower()


def test_formats_are_unambiguous(splits):
    """A string that parses under several formats parses to the same date under all of them."""
    for p in splits.test[:300]:
        parsed = set()
        for template in S.DATE_FORMATS:
            try:
                parsed.add(S.parse_date(p.source, template))
            except ValueError:
                pass
        assert parsed == {date.fromisoformat(p.target)}, (p, parsed)


def test_all_formats_and_range_are_used(splits):
    pairs = splits.train
    assert {p.template for p in pairs} == set(S.DATE_FORMATS)
    years = [int(p.target[:4]) for p in pairs]
    assert min(years) < 1910 and max(years) > 2090
    for p in pairs:
        if "{YY}" in p.template:
            assert 1969 <= int(p.target[:4]) <= 2068


def test_test_dates_are_held_out(splits):
    train_dates = {p.target for p in splits.train}
    assert not train_dates & {p.target for p in splits.test}
    assert not train_dates & {p.target for p in splits.val}
    assert not {p.target for p in splits.val} & {p.target for p in splits.test}
    assert not {p.source for p in splits.train} & {p.source for p in splits.test}


def test_vocabularies(vocabs, splits):
    src_vocab, tgt_vocab = vocabs
    assert src_vocab.itos[:4] == ["<pad>", "<sos>", "<eos>", "<unk>"]
    assert (S.PAD, S.SOS, S.EOS, S.UNK) == (0, 1, 2, 3)
    assert tgt_vocab.chars == "-0123456789"
    for p in splits.train[:500]:
        assert src_vocab.decode(src_vocab.encode(p.source)) == p.source
        ids = tgt_vocab.encode(p.target, sos=True, eos=True).tolist()
        assert ids[0] == S.SOS and ids[-1] == S.EOS and tgt_vocab.decode(ids) == p.target
    assert tgt_vocab.decode([5, 6, S.EOS, 7]) == "01"
    assert tgt_vocab.decode([S.SOS, 5, S.EOS], keep_special=True) == "<sos>0<eos>"
    with pytest.raises(IndexError, match="outside the vocabulary"):
        tgt_vocab.decode([99])


def test_unknown_character_is_a_clear_error(vocabs):
    src_vocab, _ = vocabs
    with pytest.raises(S.UnknownCharacterError, match=r"unknown character 'q' at position 0 of 'q3 March 1998'"):
        src_vocab.encode("q3 March 1998")
    with pytest.raises(ValueError, match=r"unknown character '\?'"):
        S.encode_sources(["3 March 1998?"], src_vocab)
    ids = src_vocab.encode("3 March 1998?", unknown="unk").tolist()
    assert ids[-1] == S.UNK and len(ids) == 13
    with pytest.raises(S.UnknownCharacterError, match="unknown character '<'"):
        src_vocab.encode("<eos>")  # special tokens are not characters
    with pytest.raises(ValueError, match="text 1 is empty"):
        S.encode_sources(["3 March 1998", ""], src_vocab)
    with pytest.raises(ValueError, match="empty batch"):
        S.encode_sources([], src_vocab)


# ---------------------------------------------------------------------------------------------- the model

def test_shapes_padding_and_gradients(vocabs, splits):
    src_vocab, tgt_vocab = vocabs
    torch.manual_seed(0)
    m = S.Seq2Seq(S.Seq2SeqConfig(len(src_vocab), len(tgt_vocab), embed_dim=8, hidden_size=16, num_layers=2))
    batch = S.make_batch(splits.train[:6], src_vocab, tgt_vocab)
    B, Smax = batch.src.shape
    assert batch.tgt_in.shape == batch.tgt_out.shape == (6, 11)
    assert (batch.tgt_in[:, 0] == S.SOS).all() and (batch.tgt_out[:, -1] == S.EOS).all()
    memory = m.encode(batch.src, batch.src_len)
    assert memory.outputs.shape == (6, Smax, 16) and memory.mask.shape == (6, Smax)
    assert memory.state[0].shape == memory.state[1].shape == (2, 6, 16)
    assert (memory.outputs[~memory.mask] == 0).all()
    # padding is skipped: each source encodes the same alone as in the padded batch
    i = int(batch.src_len.argmin())
    alone = m.encode(batch.src[i:i + 1, :batch.src_len[i]], batch.src_len[i:i + 1])
    torch.testing.assert_close(alone.state[0][:, 0], memory.state[0][:, i])
    logits = m(batch.src, batch.src_len, batch.tgt_in)
    assert logits.shape == (6, 11, len(tgt_vocab))
    S.seq2seq_loss(logits, batch.tgt_out).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_fused_teacher_forcing_equals_step_by_step(model, vocabs, splits):
    src_vocab, tgt_vocab = vocabs
    b = S.make_batch(splits.val[:5], src_vocab, tgt_vocab)
    memory = model.encode(b.src, b.src_len)
    fused = model.decoder(b.tgt_in, memory)
    stepped = S.Decoder.forward(model.decoder, b.tgt_in, memory)  # the generic loop over `step`
    torch.testing.assert_close(fused, stepped, atol=1e-10, rtol=0)


def test_free_running_feeds_back_predictions(model, vocabs, splits):
    src_vocab, tgt_vocab = vocabs
    b = S.make_batch(splits.val[:5], src_vocab, tgt_vocab)
    free = model(b.src, b.src_len, b.tgt_in, teacher_forcing=0.0)
    greedy = S.greedy_decode(model, b.src, b.src_len, max_len=11)
    # with no teacher forcing the inputs are the model's own argmaxes: the greedy decode (until <eos>)
    pred = free.argmax(-1)
    for row in range(5):
        toks = greedy.tokens[row]
        n = int((toks != S.PAD).sum())
        assert torch.equal(pred[row, :n], toks[:n])
    g = torch.Generator().manual_seed(0)
    half = model(b.src, b.src_len, b.tgt_in, teacher_forcing=0.5, generator=g)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(half, model(b.src, b.src_len, b.tgt_in, teacher_forcing=0.5, generator=g))
    with pytest.raises(ValueError, match=r"teacher_forcing must be in \[0, 1\]"):
        model(b.src, b.src_len, b.tgt_in, teacher_forcing=1.5)


# ---------------------------------------------------------------------------------------------- decoding

def _sources(splits, src_vocab, n=12):
    return S.encode_sources([p.source for p in splits.test[:n]], src_vocab)


def test_beam_width_one_equals_greedy(model, vocabs, splits):
    src_vocab, _ = vocabs
    src, src_len = _sources(splits, src_vocab)
    greedy = S.greedy_decode(model, src, src_len, max_len=14)
    for i in range(src.shape[0]):
        (best,) = S.beam_search(model, src[i, :src_len[i]], beam_width=1, max_len=14)
        expected = [t for t in greedy.tokens[i].tolist() if t != S.PAD]
        assert best.tokens == expected
        assert best.log_prob == pytest.approx(greedy.log_prob[i].item(), abs=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_beam_scores_are_sorted_and_equal_recomputed_log_probs(model, vocabs, splits, alpha):
    src_vocab, _ = vocabs
    src, src_len = _sources(splits, src_vocab, n=6)
    for i in range(src.shape[0]):
        one = src[i, :src_len[i]]
        cands = S.beam_search(model, one, beam_width=5, max_len=14, alpha=alpha)
        assert 1 <= len(cands) <= 5
        scores = [c.score for c in cands]
        assert scores == sorted(scores, reverse=True)
        for c in cands:
            recomputed = S.sequence_log_prob(model, one[None], src_len[i:i + 1], torch.tensor([c.tokens]))
            assert c.log_prob == pytest.approx(recomputed.item(), abs=1e-9)
            assert c.score == pytest.approx(c.log_prob / len(c.tokens) ** alpha, abs=1e-12)
        assert all(c.finished for c in cands) or not any(c.finished for c in cands)


def test_wider_beam_never_scores_worse_than_greedy(model, vocabs, splits):
    src_vocab, _ = vocabs
    src, src_len = _sources(splits, src_vocab)
    greedy = S.greedy_decode(model, src, src_len, max_len=14)
    for i in range(src.shape[0]):
        g_toks = [t for t in greedy.tokens[i].tolist() if t != S.PAD]
        (best, *_) = S.beam_search(model, src[i, :src_len[i]], beam_width=4, max_len=14)
        if g_toks[-1] == S.EOS and best.finished:
            assert best.log_prob >= greedy.log_prob[i].item() - 1e-9


class BigramDecoder(S.Decoder):
    """A decoder whose next-token distribution depends only on the previous token: a known table.

    Also exercises the extension point: a `Decoder` subclass with its own state plugs into
    Seq2Seq, greedy_decode and beam_search unchanged.
    """

    def __init__(self, probs: dict[int, dict[int, float]], vocab_size: int) -> None:
        super().__init__()
        table = torch.full((vocab_size, vocab_size), 1e-6, dtype=torch.float64)
        for prev, row in probs.items():
            for tok, p in row.items():
                table[prev, tok] = p
        self.register_buffer("log_table", (table / table.sum(1, keepdim=True)).log())
        self.vocab_size = vocab_size

    def init_state(self, memory):
        return (memory.state[0][:1] * 0,)  # (1, B, H): unused, but reordered like a real state

    def step(self, y_prev, state, memory):
        return self.log_table[y_prev], state, None


def test_beam_search_on_a_known_distribution(vocabs):
    """Greedy is short-sighted here and beam search is not: p(a …) starts higher, p(b <eos>) ends higher.

    p(a|<sos>)=.5, p(b|<sos>)=.4; after a: a .36, b .34, <eos> .30; after b: <eos> .9.
    Greedy says a a a … forever; the best sequence is b <eos> (p = .36 > p(a <eos>) = .15).
    """
    src_vocab, tgt_vocab = vocabs
    a, b = tgt_vocab.stoi["1"], tgt_vocab.stoi["2"]
    table = {S.SOS: {a: 0.5, b: 0.4, S.EOS: 0.1}, a: {a: 0.36, b: 0.34, S.EOS: 0.30},
             b: {S.EOS: 0.9, a: 0.05, b: 0.05}}
    config = S.Seq2SeqConfig(len(src_vocab), len(tgt_vocab), embed_dim=4, hidden_size=4)
    m = S.Seq2Seq(config, decoder=BigramDecoder(table, len(tgt_vocab))).double().eval()
    src = src_vocab.encode("3 March 1998")
    src_b, len_b = src[None], torch.tensor([len(src)])
    greedy = S.greedy_decode(m, src_b, len_b, max_len=6)
    assert greedy.tokens[0].tolist() == [a] * 6
    (one,) = S.beam_search(m, src, beam_width=1, max_len=6)
    assert one.tokens == [a] * 6 and not one.finished  # an <eos> ranked 2nd must not end a width-1 beam
    best, second = S.beam_search(m, src, beam_width=2, max_len=6)
    assert best.tokens == [b, S.EOS] and best.finished
    assert best.log_prob == pytest.approx(torch.tensor(0.36 / (1 + 9 * 1e-6)).log().item(), abs=1e-4)
    assert second.tokens == [a, b, S.EOS]  # p = .5 · .34 · .9 = .153 beats a <eos> (.15)
    torch.testing.assert_close(S.sequence_log_prob(m, src_b, len_b, torch.tensor([best.tokens])),
                               torch.tensor([best.log_prob], dtype=torch.float64), atol=1e-10, rtol=0)
    # <eos> ranked second after a (a .40, <eos> .35): greedy and a width-1 beam still go on with a
    table[a] = {a: 0.40, S.EOS: 0.35, b: 0.25}
    m = S.Seq2Seq(config, decoder=BigramDecoder(table, len(tgt_vocab))).double().eval()
    (one,) = S.beam_search(m, src, beam_width=1, max_len=6)
    assert one.tokens == S.greedy_decode(m, src_b, len_b, max_len=6).tokens[0].tolist() == [a] * 6
    # width 2, step 2 ranks: b <eos> .36, a a .20, a <eos> .175, a b .125. Only the 2 best extensions
    # survive, so a <eos> (3rd) is pruned like any other; a b <eos> (.1125) finishes next step.
    best, second = S.beam_search(m, src, beam_width=2, max_len=6)
    assert (best.tokens, second.tokens) == ([b, S.EOS], [a, b, S.EOS])


def test_greedy_decode_stops_at_eos_and_pads_after(model, vocabs, splits):
    src_vocab, _ = vocabs
    src, src_len = _sources(splits, src_vocab)
    out = S.greedy_decode(model, src, src_len, max_len=14)
    assert out.tokens.shape[0] == src.shape[0] and out.tokens.shape[1] <= 14 and out.attn is None
    ends = set()
    for row in out.tokens.tolist():
        if S.EOS in row:
            assert all(t == S.PAD for t in row[row.index(S.EOS) + 1:])
        assert S.PAD not in row[:row.index(S.EOS) if S.EOS in row else len(row)]
        ends.add(row.index(S.EOS) if S.EOS in row else None)
    assert None in ends and len(ends) >= 3  # rows end at different steps: the test means something
    recomputed = S.sequence_log_prob(model, src, src_len, out.tokens)  # each row's own log p
    torch.testing.assert_close(out.log_prob, recomputed, atol=1e-10, rtol=0)


def test_exact_match_and_translate(model, vocabs, splits):
    src_vocab, tgt_vocab = vocabs
    assert S.exact_match(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 0.5
    with pytest.raises(ValueError, match="3 predictions but 2 targets"):
        S.exact_match(["a", "b", "c"], ["a", "b"])
    texts = [p.source for p in splits.test[:7]]
    out = S.translate(model, texts, src_vocab, tgt_vocab, max_len=12, batch_size=3)
    src, src_len = S.encode_sources(texts, src_vocab)
    assert out == [tgt_vocab.decode(r) for r in S.greedy_decode(model, src, src_len, 12).tokens]
    with pytest.raises(S.UnknownCharacterError, match="unknown character 'q'"):
        S.translate(model, ["quarter past 3"], src_vocab, tgt_vocab)


def test_bad_input_to_the_model(model, vocabs):
    src_vocab, _ = vocabs
    src, src_len = S.encode_sources(["3 March 1998"], src_vocab)
    with pytest.raises(ValueError, match="empty batch"):
        model.encode(src[:0], src_len[:0])
    with pytest.raises(ValueError, match="sequence length 0"):
        model.encode(src[:, :0], src_len)
    with pytest.raises(ValueError, match=r"source lengths must be in \[1, 12\]"):
        model.encode(src, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"source id out of range \[0, 63\)"):
        model.encode(torch.tensor([[99]]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"src must be a \(B, S\) tensor"):
        model.encode(src[0], src_len)
    with pytest.raises(ValueError, match="sequence length 0: the source is empty"):
        S.beam_search(model, [], beam_width=3)
    with pytest.raises(ValueError, match="beam_width must be a positive int"):
        S.beam_search(model, src[0], beam_width=0)
    with pytest.raises(ValueError, match="beam_search decodes one source"):
        S.beam_search(model, torch.cat([src, src]), beam_width=2)


def test_a_few_training_steps_reduce_the_loss(vocabs, splits):
    src_vocab, tgt_vocab = vocabs
    torch.manual_seed(0)
    m = S.Seq2Seq(S.Seq2SeqConfig(len(src_vocab), len(tgt_vocab), embed_dim=16, hidden_size=32))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    b = S.make_batch(splits.train[:64], src_vocab, tgt_vocab)
    start = time.perf_counter()
    losses = []
    for _ in range(15):
        loss = S.seq2seq_loss(m(b.src, b.src_len, b.tgt_in), b.tgt_out)
        opt.zero_grad(), loss.backward(), opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert time.perf_counter() - start < 30  # generous: the CI machine is shared


# ---------------------------------------------------------------------------------------------- multi-date inputs

@pytest.fixture(scope="module")
def multi() -> S.DateSplits:
    return S.make_date_dataset(n_train=1500, n_val=150, n_test=300, seed=0, max_dates=3)


def test_single_date_dataset_is_unchanged_by_the_max_dates_option():
    """max_dates=1 (the default) draws exactly the dataset of before the option existed (pinned hash)."""
    import hashlib
    default = S.make_date_dataset()
    assert default == S.make_date_dataset(max_dates=1)
    assert hashlib.sha256(repr(default).encode()).hexdigest() == \
        "7d4d339b6a95e40ac6f26debab67fe333b9934a7932ff6bb67bce2ffeecba309"


def test_multi_date_dataset_is_deterministic(multi):
    assert S.make_date_dataset(n_train=1500, n_val=150, n_test=300, seed=0, max_dates=3) == multi
    assert S.make_date_dataset(n_train=1500, n_val=150, n_test=300, seed=1, max_dates=3).train != multi.train
    assert (len(multi.train), len(multi.val), len(multi.test)) == (1500, 150, 300)


def test_multi_date_pairs_parse_back_and_use_one_to_three_dates(multi):
    counts = {1: 0, 2: 0, 3: 0}
    for p in multi.train + multi.val + multi.test:
        dates = S.parse_dates(p.source, p.template)
        assert S.DATE_SEPARATOR.join(d.isoformat() for d in dates) == p.target, p
        counts[len(dates)] += 1
    assert all(c > 0.25 * sum(counts.values()) for c in counts.values()), counts  # ~uniform over 1..3
    with pytest.raises(ValueError, match="2 dates but .* 1 formats"):
        S.parse_dates("3 March 1998; 4 March 1998", "{D} {Month} {YYYY}")


def test_multi_date_splits_are_disjoint(multi):
    def days(pairs):
        return {d for p in pairs for d in p.target.split(S.DATE_SEPARATOR)}
    train, val, test = days(multi.train), days(multi.val), days(multi.test)
    assert not (train & test) and not (train & val) and not (val & test)


def test_multi_date_vocabularies_and_batches(multi):
    src_vocab, tgt_vocab = S.date_vocabs(multi_date=True)
    assert set(S.DATE_SEPARATOR) <= set(src_vocab.chars) and set(S.DATE_SEPARATOR) <= set(tgt_vocab.chars)
    assert ";" not in S.date_vocabs()[0].chars and " " not in S.date_vocabs()[1].chars
    b = S.make_batch(multi.test, src_vocab, tgt_vocab)
    assert b.tgt_out.shape[1] == max(len(p.target) for p in multi.test) + 1
    with pytest.raises(S.UnknownCharacterError, match="';'"):
        S.make_batch(multi.test, *S.date_vocabs())
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_dates must be an int"):
            S.make_date_dataset(n_train=1, n_val=1, n_test=1, max_dates=bad)


# ---------------------------------------------------------------------------------------------- chapter 5: attention decoder

@pytest.fixture(scope="module", params=["additive", "general", "dot"])
def attn_model(request, vocabs) -> S.Seq2Seq:
    """A small untrained attention model in float64, weights scaled up so attention is far from uniform."""
    src_vocab, tgt_vocab = vocabs
    torch.manual_seed(0)
    config = S.Seq2SeqConfig(len(src_vocab), len(tgt_vocab), embed_dim=8, hidden_size=16, num_layers=2)
    m = S.Seq2Seq(config, decoder=S.AttentionDecoder(len(tgt_vocab), 8, 16, attention=request.param,
                                                     num_layers=2)).double().eval()
    return peaked_(m)


def test_attention_decoder_shapes_and_weights(attn_model, vocabs, splits):
    src_vocab, tgt_vocab = vocabs
    b = S.make_batch(splits.test[:10], src_vocab, tgt_vocab)
    B, Ssrc = b.src.shape
    T = b.tgt_in.shape[1]
    memory = attn_model.encode(b.src, b.src_len)
    logits, attn = attn_model.decoder(b.tgt_in, memory, return_attn=True)
    assert logits.shape == (B, T, len(tgt_vocab)) and attn.shape == (B, T, Ssrc)
    torch.testing.assert_close(logits, attn_model(b.src, b.src_len, b.tgt_in))
    mask = memory.mask[:, None, :].expand(-1, T, -1)  # (B, T, S)
    assert (attn[~mask] == 0).all()  # exactly zero on padding
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, T, dtype=attn.dtype))  # sums to 1 over real positions
    assert (attn.amax(-1) < 0.99).any()  # not a degenerate one-hot everywhere
    out = S.greedy_decode(attn_model, b.src, b.src_len, max_len=14, return_attn=True)
    assert out.attn.shape == (B, out.tokens.shape[1], Ssrc)
    assert (out.attn[~memory.mask[:, None, :].expand_as(out.attn)] == 0).all()


def test_attention_decoder_ignores_extra_padding(attn_model, vocabs, splits):
    src_vocab, tgt_vocab = vocabs
    b = S.make_batch(splits.test[:10], src_vocab, tgt_vocab)
    padded = torch.cat([b.src, torch.full((b.src.shape[0], 7), S.PAD)], dim=1)  # (B, S + 7)
    logits = attn_model(b.src, b.src_len, b.tgt_in)
    torch.testing.assert_close(attn_model(padded, b.src_len, b.tgt_in), logits, rtol=0, atol=1e-12)
    a = S.greedy_decode(attn_model, b.src, b.src_len, max_len=14, return_attn=True)
    p = S.greedy_decode(attn_model, padded, b.src_len, max_len=14, return_attn=True)
    assert torch.equal(a.tokens, p.tokens)
    torch.testing.assert_close(p.attn[..., :b.src.shape[1]], a.attn, rtol=0, atol=1e-12)
    assert (p.attn[..., b.src.shape[1]:] == 0).all()


def test_attention_beam_width_one_equals_greedy(attn_model, vocabs, splits):
    src_vocab, _ = vocabs
    src, src_len = _sources(splits, src_vocab, n=6)
    check_beam_agrees_with_greedy(attn_model, src, src_len)
    assert len(S.translate(attn_model, ["3 March 1998", "04/05/21"], *vocabs, max_len=14)) == 2


def test_attention_decoder_every_parameter_gets_a_gradient(vocabs, splits):
    src_vocab, tgt_vocab = vocabs
    for kind in S.ATTENTION_KINDS:
        torch.manual_seed(0)
        m = S.Seq2Seq(S.Seq2SeqConfig(len(src_vocab), len(tgt_vocab), embed_dim=8, hidden_size=16),
                      decoder=S.AttentionDecoder(len(tgt_vocab), 8, 16, attention=kind))
        b = S.make_batch(splits.train[:16], src_vocab, tgt_vocab)
        S.seq2seq_loss(m(b.src, b.src_len, b.tgt_in), b.tgt_out).backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (kind, name)


def test_attention_decoder_bad_kind_is_a_clear_error(vocabs):
    with pytest.raises(ValueError, match=r"attention must be one of \('additive', 'dot', 'general'\), got 'luong'"):
        S.AttentionDecoder(10, 8, 16, attention="luong")
    with pytest.raises(ValueError, match="dot attention needs hidden_size == encoder_size"):
        S.AttentionDecoder(10, 8, 16, attention="dot", encoder_size=32)
    S.AttentionDecoder(10, 8, 16, attention="general", encoder_size=32)  # general maps 16 → 32: fine


# ---------------------------------------------------------------------------------------------- bidirectional encoder

def _bi_encoder(vocab_size: int, num_layers: int = 2) -> S.Encoder:
    """A bidirectional encoder (H = 16, 8 units per direction) in float64 with random weights, the <pad>
    embedding included, so a padding step that was not skipped would change the results."""
    torch.manual_seed(0)
    enc = S.Encoder(vocab_size, 8, 16, num_layers=num_layers, bidirectional=True).double().eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0.0, 0.5)
    return enc


def test_bidirectional_encoder_equals_torch_sequence_by_sequence(vocabs, splits):
    """The padded, packed batch gives each source what torch's bidirectional LSTM gives it alone."""
    src_vocab, _ = vocabs
    enc = _bi_encoder(len(src_vocab))
    assert enc.rnn.bidirectional and enc.rnn.hidden_size == 8 and enc.rnn.num_layers == 2
    src, src_len = _sources(splits, src_vocab, n=8)
    B, Smax = src.shape
    assert len(set(src_len.tolist())) >= 3  # different lengths: padding matters
    with torch.no_grad():
        memory = enc(src, src_len)
    assert memory.outputs.shape == (B, Smax, 16) and memory.mask.shape == (B, Smax)
    assert memory.state[0].shape == memory.state[1].shape == (2, B, 16)  # (L, B, H) as unidirectional
    assert (memory.outputs[~memory.mask] == 0).all()  # exactly zero at padding
    for i in range(B):
        n = int(src_len[i])
        with torch.no_grad():  # one source alone: no padding, no packing, the same nn.LSTM
            out, (h, c) = enc.rnn(enc.embed(src[i:i + 1, :n]))  # (1, n, 16); h, c each (2L, 1, 8)
        torch.testing.assert_close(memory.outputs[i, :n], out[0], rtol=0, atol=1e-12)
        for name, mine, ref in (("h", memory.state[0], h), ("c", memory.state[1], c)):
            # torch's order: layer 0 forward, layer 0 backward, layer 1 forward, layer 1 backward
            expected = torch.stack([torch.cat([ref[2 * layer, 0], ref[2 * layer + 1, 0]]) for layer in range(2)])
            torch.testing.assert_close(mine[:, i], expected, rtol=0, atol=1e-12, msg=f"{name}, source {i}")
        # top layer's final h: the forward state at the last character, the backward state at the first
        torch.testing.assert_close(memory.state[0][-1, i], torch.cat([out[0, n - 1, :8], out[0, 0, 8:]]),
                                   rtol=0, atol=1e-12)


def _bidirectional_from_definition(enc: S.Encoder, x: torch.Tensor) -> torch.Tensor:
    """Outputs (1, n, H) of one source's embeddings x (1, n, E), from two plain one-way LSTMs per layer:
    one reads x_1..x_n, the other (torch's `_reverse` weights) reads x_n..x_1, its outputs flipped back."""
    for layer in range(enc.rnn.num_layers):
        halves = []
        for suffix, flip in (("", False), ("_reverse", True)):
            one_way = torch.nn.LSTM(x.shape[-1], enc.rnn.hidden_size, batch_first=True).double()
            one_way.load_state_dict({f"{w}_l0": getattr(enc.rnn, f"{w}_l{layer}{suffix}")
                                     for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
            out, _ = one_way(x.flip(1) if flip else x)  # (1, n, H/2)
            halves.append(out.flip(1) if flip else out)
        x = torch.cat(halves, dim=-1)  # (1, n, H): the next layer's input
    return x


@torch.no_grad()
def test_bidirectional_encoder_backward_half_reads_from_the_last_character(vocabs, splits):
    """The backward LSTM starts at each source's last character x_n, not at padding. With one layer, output
    s is [forward after x_1..x_s; backward after x_n..x_s]: changing x_k changes the forward half from k on
    and the backward half up to k, nothing else. With two, layer 2 reads both halves of layer 1."""
    src_vocab, _ = vocabs
    src, src_len = _sources(splits, src_vocab, n=8)
    i = int(src_len.argmin())  # the shortest source: the most padding after it
    n = int(src_len[i])
    assert n < src.shape[1]
    k = n // 2
    changed = src.clone()
    changed[i, k] = 4 if int(src[i, k]) != 4 else 5  # another character
    fwd, bwd = slice(0, 8), slice(8, 16)
    enc = _bi_encoder(len(src_vocab), num_layers=2)
    memory = enc(src, src_len)
    reference = _bidirectional_from_definition(enc, enc.embed(src[i:i + 1, :n]))  # (1, n, 16)
    torch.testing.assert_close(memory.outputs[i, :n], reference[0], rtol=0, atol=1e-12)
    # two layers: the top forward half at position 0 has seen x_k through layer 1's backward half
    assert (memory.outputs[i, 0, fwd] - enc(changed, src_len).outputs[i, 0, fwd]).abs().amax() > 1e-6
    enc = _bi_encoder(len(src_vocab), num_layers=1)
    memory = enc(src, src_len)
    reference = _bidirectional_from_definition(enc, enc.embed(src[i:i + 1, :n]))  # (1, n, 16)
    torch.testing.assert_close(memory.outputs[i, :n], reference[0], rtol=0, atol=1e-12)
    a, b = memory.outputs, enc(changed, src_len).outputs  # (B, S, 16)
    assert torch.equal(a[i, :k, fwd], b[i, :k, fwd])  # forward before k: has not read x_k yet
    assert torch.equal(a[i, k + 1:, bwd], b[i, k + 1:, bwd])  # backward after k: has not read x_k yet
    assert ((a[i, k:n, fwd] - b[i, k:n, fwd]).abs().amax(-1) > 1e-6).all()
    assert ((a[i, :k + 1, bwd] - b[i, :k + 1, bwd]).abs().amax(-1) > 1e-6).all()  # position 0 included
    others = torch.arange(src.shape[0]) != i
    assert torch.equal(a[others], b[others])


@pytest.mark.parametrize("attention", [None, "additive"])
def test_bidirectional_seq2seq_trains_and_decodes(vocabs, splits, attention):
    src_vocab, tgt_vocab = vocabs
    torch.manual_seed(0)
    config = S.Seq2SeqConfig(len(src_vocab), len(tgt_vocab), embed_dim=8, hidden_size=16, num_layers=2,
                             bidirectional=True)
    decoder = None if attention is None else S.AttentionDecoder(len(tgt_vocab), 8, 16, attention=attention,
                                                                num_layers=2)
    m = S.Seq2Seq(config, decoder=decoder)
    assert m.encoder.rnn.bidirectional and m.encoder.rnn.hidden_size == 8
    b = S.make_batch(splits.train[:32], src_vocab, tgt_vocab)
    memory = m.encode(b.src, b.src_len)
    assert memory.outputs.shape == (32, b.src.shape[1], 16)
    assert memory.state[0].shape == memory.state[1].shape == (2, 32, 16)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for step in range(8):
        logits = m(b.src, b.src_len, b.tgt_in)
        assert logits.shape == (32, b.tgt_in.shape[1], len(tgt_vocab))
        loss = S.seq2seq_loss(logits, b.tgt_out)
        opt.zero_grad()
        loss.backward()
        if step == 0:  # both directions of both encoder layers learn
            for name, p in m.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    m = m.double().eval()
    src, src_len = _sources(splits, src_vocab, n=5)
    greedy = check_beam_agrees_with_greedy(m, src, src_len, max_len=12)  # greedy_decode and beam_search
    assert greedy.tokens.shape[0] == 5 and greedy.tokens.shape[1] <= 12
    if attention:
        assert greedy.attn.shape == (5, greedy.tokens.shape[1], src.shape[1])
    else:
        assert greedy.attn is None
    assert len(S.translate(m, ["3 March 1998", "04/05/21"], src_vocab, tgt_vocab, max_len=12)) == 2


def test_bidirectional_needs_an_even_hidden_size():
    with pytest.raises(ValueError, match="even hidden_size"):
        S.Encoder(10, 8, 15, bidirectional=True)
    with pytest.raises(ValueError, match=r"even hidden_size .* got hidden_size=15"):
        S.Seq2Seq(S.Seq2SeqConfig(10, 10, embed_dim=8, hidden_size=15, bidirectional=True))
    assert not S.Seq2SeqConfig(10, 10).bidirectional
    enc = S.Encoder(10, 8, 15)  # one direction: any size, as before
    assert not enc.rnn.bidirectional and enc.rnn.hidden_size == 15


def test_beam_search_equals_huggingface_generate(vocabs):
    """Against a production beam search: transformers' `generate(num_beams=K, early_stopping=True)`.

    Both searches are given the same next-token log-probabilities: a random bigram table, which our
    BigramDecoder returns and which a logits processor writes over the output of a tiny GPT-2 in
    `generate`. Their settings match ours: the 2K best extensions, an <eos> counts only among the K
    best, stop once K candidates have finished, scores log p / |y|^alpha with <eos> counted. The one
    difference, at `max_len` (transformers finalises the live beams when fewer than K finished,
    ours only when none did; at the last step it counts every one of the K best as finished), is kept out:
    the cases whose search reaches `max_len` are skipped (and counted).
    """
    transformers = pytest.importorskip("transformers")
    src_vocab, tgt_vocab = vocabs
    V = len(tgt_vocab)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_positions=32, n_embd=8, n_layer=1, n_head=1, bos_token_id=S.SOS, eos_token_id=S.EOS,
        pad_token_id=S.PAD)).eval()

    class TableLogits(transformers.LogitsProcessor):
        def __init__(self, log_table):
            self.log_table = log_table.float()

        def __call__(self, input_ids, scores):
            return self.log_table[input_ids[:, -1]]  # (K, V): the bigram row of each beam's last token

    src = src_vocab.encode("3 March 1998")
    compared = 0
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        logits = 2.5 * torch.randn(V, V, generator=g, dtype=torch.float64)
        logits[:, [S.PAD, S.SOS]] = -30.0  # never produced: plain tokens to one search, special to the other
        logits[:, S.EOS] += 1.0  # candidates finish within a few steps
        probs = logits.softmax(-1)
        table = {prev: dict(enumerate(probs[prev].tolist())) for prev in range(V)}
        m = S.Seq2Seq(S.Seq2SeqConfig(len(src_vocab), V, embed_dim=4, hidden_size=4),
                      decoder=BigramDecoder(table, V)).double().eval()
        for K, alpha in ((2, 0.0), (3, 1.0), (4, 0.6)):
            ours = S.beam_search(m, src, beam_width=K, max_len=12, alpha=alpha)
            if len(ours) < K or max(len(c.tokens) for c in ours) == 12:  # the search reached max_len: skip
                continue
            out = hf.generate(torch.tensor([[S.SOS]]), num_beams=K, num_return_sequences=K, max_new_tokens=12,
                              early_stopping=True, length_penalty=alpha, do_sample=False, eos_token_id=S.EOS,
                              pad_token_id=S.PAD, logits_processor=transformers.LogitsProcessorList(
                                  [TableLogits(m.decoder.log_table)]),
                              return_dict_in_generate=True, output_scores=True)
            theirs = [[t for t in seq.tolist()[1:]] for seq in out.sequences]
            theirs = [seq[: seq.index(S.EOS) + 1] for seq in theirs]  # cut the padding after <eos>
            assert [c.tokens for c in ours] == theirs
            torch.testing.assert_close(torch.tensor([c.score for c in ours], dtype=torch.float64),
                                       out.sequences_scores.double(),
                                       atol=1e-5, rtol=0)
            compared += 1
            assert max(len(t) for t in theirs) > 2  # not only one-step answers
    assert compared == 13  # of 18: the other 5 reach max_len
