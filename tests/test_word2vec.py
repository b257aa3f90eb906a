import math

import pytest
import torch

from utils.text import Vocab
from utils.word2vec import (Word2Vec, Word2VecConfig, analogy, cbow_windows, keep_probabilities,
                            most_similar, noise_distribution, skipgram_pairs, subsample, train_word2vec,
                            unigram_table)


def scrambled(V=7, D=4, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = Word2Vec(V, D).to(dtype)
    with torch.no_grad():
        m.in_embed.weight.normal_(0, 0.5)
        m.out_embed.weight.normal_(0, 0.5)
    return m


def manual_sgd(model, lr, *batch, mask=None):
    """The reference: autograd on the summed loss, then torch.optim.SGD."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    loss = model.loss(*batch, mask=mask, reduction="sum")
    loss.backward()
    opt.step()
    return loss.detach()


def test_loss_matches_hand_computation():
    m = scrambled()
    centre, ctx, neg = torch.tensor([2]), torch.tensor([5]), torch.tensor([[1, 3]])
    v, u = m.in_embed.weight.detach()[2], m.out_embed.weight.detach()
    expected = -math.log(torch.sigmoid(u[5] @ v)) - math.log(torch.sigmoid(-u[1] @ v)) - math.log(torch.sigmoid(-u[3] @ v))
    assert abs(m.loss(centre, ctx, neg).item() - expected) < 1e-12


def test_skipgram_sparse_step_equals_autograd_sgd():
    # duplicated ids in the batch (centre 1 twice, word 4 as target and negative) must accumulate
    centres = torch.tensor([1, 1, 3, 0])
    targets = torch.tensor([4, 2, 4, 6])
    negatives = torch.tensor([[4, 5], [0, 0], [6, 1], [2, 4]])
    fast, ref = scrambled(), scrambled()
    loss_fast = fast.sgd_step(centres, targets, negatives, lr=0.3)
    loss_ref = manual_sgd(ref, 0.3, centres, targets, negatives)
    torch.testing.assert_close(loss_fast, loss_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(fast.in_embed.weight, ref.in_embed.weight, atol=1e-12, rtol=0)
    torch.testing.assert_close(fast.out_embed.weight, ref.out_embed.weight, atol=1e-12, rtol=0)


def test_cbow_sparse_step_equals_autograd_sgd():
    contexts = torch.tensor([[1, 2, 2, 0], [3, 4, 5, 6], [0, 0, 1, 1]])
    mask = torch.tensor([[True, True, True, False], [False, True, True, True], [True, False, False, True]])
    targets = torch.tensor([3, 2, 3])
    negatives = torch.tensor([[4, 5], [3, 0], [6, 2]])
    fast, ref = scrambled(), scrambled()
    fast.sgd_step(contexts, targets, negatives, lr=0.2, mask=mask)
    manual_sgd(ref, 0.2, contexts, targets, negatives, mask=mask)
    torch.testing.assert_close(fast.in_embed.weight, ref.in_embed.weight, atol=1e-12, rtol=0)
    torch.testing.assert_close(fast.out_embed.weight, ref.out_embed.weight, atol=1e-12, rtol=0)


def test_sparse_step_float32():
    centres, targets, negatives = torch.tensor([1, 2]), torch.tensor([3, 3]), torch.tensor([[0, 4], [5, 3]])
    fast, ref = scrambled(dtype=torch.float32), scrambled(dtype=torch.float32)
    fast.sgd_step(centres, targets, negatives, lr=0.1)
    manual_sgd(ref, 0.1, centres, targets, negatives)
    torch.testing.assert_close(fast.in_embed.weight, ref.in_embed.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fast.out_embed.weight, ref.out_embed.weight, atol=1e-6, rtol=1e-5)


def gensim_model(sentences, **kw):
    gensim = pytest.importorskip("gensim")
    return gensim.models.Word2Vec(sentences, vector_size=8, min_count=1, workers=1, seed=0, epochs=1, **kw)


def test_subsampling_probabilities_equal_gensims():
    g = torch.Generator().manual_seed(0)
    ranks = (1 / torch.rand(20000, generator=g)).floor().clamp(max=300).long()  # Zipf-like counts
    stream = [f"w{int(r)}" for r in ranks]
    model = gensim_model([stream[i:i + 1000] for i in range(0, len(stream), 1000)], sample=1e-3)
    vocab = Vocab.from_tokens(stream)
    ours = keep_probabilities(vocab.counts, 1e-3)
    theirs = torch.tensor([model.wv.get_vecattr(w, "sample_int") / 2**32 for w in vocab.itos], dtype=torch.float64)
    torch.testing.assert_close(ours, theirs, atol=1e-8, rtol=0)
    assert ours.min() < 0.5  # frequent words really are dropped


def test_noise_distribution_equals_gensims_cumulative_table():
    stream = ["a"] * 50 + ["b"] * 20 + ["c"] * 5 + ["d"]
    model = gensim_model([stream], negative=5)
    vocab = Vocab.from_tokens(stream)
    cum = torch.tensor(model.cum_table, dtype=torch.float64)
    theirs = torch.diff(cum, prepend=torch.zeros(1)) / cum[-1]
    order = [model.wv.key_to_index[w] for w in vocab.itos]
    torch.testing.assert_close(noise_distribution(vocab.counts), theirs[order], atol=1e-9, rtol=0)


def test_unigram_table_follows_noise_distribution():
    counts = torch.tensor([100, 10, 1, 0, 37])
    table = unigram_table(counts, size=100_000)
    share = torch.bincount(table, minlength=5).double() / table.numel()
    torch.testing.assert_close(share, noise_distribution(counts), atol=2e-5, rtol=0)
    assert share[3] == 0


def test_skipgram_pairs_stay_in_window_and_are_symmetric():
    ids = torch.arange(50)
    centres, contexts = skipgram_pairs(ids, window=3, generator=torch.Generator().manual_seed(0))
    dist = (centres - contexts).abs()
    assert dist.min() >= 1 and dist.max() <= 3
    pairs = set(zip(centres.tolist(), contexts.tolist()))
    assert {(i, i + 1) for i in range(49)} <= pairs and {(i + 1, i) for i in range(49)} <= pairs  # b >= 1 always
    # nearer words are more likely: distance 1 is always in, distance 3 only when b == 3
    assert (dist == 1).sum() > (dist == 2).sum() > (dist == 3).sum() > 0


def test_cbow_windows_mask_marks_real_neighbours():
    ids = torch.tensor([10, 11, 12, 13])
    centres, contexts, mask = cbow_windows(ids, window=2, generator=torch.Generator().manual_seed(1))
    for c, ctx, m in zip(centres.tolist(), contexts.tolist(), mask.tolist()):
        real = [x for x, keep in zip(ctx, m) if keep]
        assert real and all(1 <= abs(x - c) <= 2 for x in real)


def test_subsample_keeps_rare_words():
    ids = torch.tensor([0] * 1000 + [1] * 3)
    keep = keep_probabilities(torch.tensor([1000, 3]), 1e-3)
    kept = subsample(ids, keep, torch.Generator().manual_seed(0))
    assert (kept == 1).sum() == 3 and (kept == 0).sum() < 300


def test_training_learns_topics():
    # two topics whose words never meet: after training, a word's neighbours are from its own topic
    g = torch.Generator().manual_seed(0)
    topic = torch.randint(0, 2, (400,), generator=g).repeat_interleave(20)  # runs of 20 words per topic
    ids = topic * 5 + torch.randint(0, 5, topic.shape, generator=g)
    vocab = Vocab([f"{'ab'[i // 5]}{i % 5}" for i in range(10)], torch.bincount(ids, minlength=10).tolist())
    model, history = train_word2vec(ids, vocab.counts, Word2VecConfig(dim=16, epochs=3, sample=0, batch_size=256))
    assert history.words == 3 * ids.numel() and history.loss[-1] < history.loss[0]
    for word in ("a0", "b3"):
        assert all(w[0] == word[0] for w, _ in most_similar(model.vectors, vocab, word, topn=4))


def test_analogy_and_neighbours_exclude_inputs():
    vocab = Vocab(["man", "woman", "king", "queen"])
    vectors = torch.tensor([[1.0, 0, 0], [1.0, 1, 0], [1.0, 0, 1], [1.0, 1, 1]])
    assert analogy(vectors, vocab, "man", "woman", "king", topn=1)[0][0] == "queen"
    assert "king" not in [w for w, _ in most_similar(vectors, vocab, "king")]


def test_bad_input_is_named():
    m = scrambled()
    with pytest.raises(ValueError, match="batch sizes differ"):
        m.loss(torch.tensor([1, 2]), torch.tensor([1]), torch.tensor([[0, 1], [2, 3]]))
    with pytest.raises(IndexError, match="outside 0..6"):
        m.sgd_step(torch.tensor([9]), torch.tensor([1]), torch.tensor([[0, 1]]), lr=0.1)
    with pytest.raises(ValueError, match="need a mask"):
        m.loss(torch.tensor([[1, 2]]), torch.tensor([1]), torch.tensor([[0, 1]]))
    with pytest.raises(KeyError, match="'zebra' is not in the vocabulary"):
        most_similar(m.vectors, Vocab([str(i) for i in range(7)]), "zebra")
    with pytest.raises(ValueError, match="window must be >= 1"):
        Word2VecConfig(window=0)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        Word2VecConfig(workers=0)
    with pytest.raises(ValueError, match="1-D stream"):
        train_word2vec(torch.tensor([1]), torch.ones(7), Word2VecConfig())
    with pytest.raises(IndexError, match=r"0\.\.6"):
        train_word2vec(torch.tensor([1, 8]), torch.ones(7), Word2VecConfig())


def test_parallel_workers_learn_the_same_topics():
    g = torch.Generator().manual_seed(0)
    topic = torch.randint(0, 2, (400,), generator=g).repeat_interleave(20)
    ids = topic * 5 + torch.randint(0, 5, topic.shape, generator=g)
    vocab = Vocab([f"{'ab'[i // 5]}{i % 5}" for i in range(10)], torch.bincount(ids, minlength=10).tolist())
    threads_before = torch.get_num_threads()
    model, history = train_word2vec(ids, vocab.counts,
                                    Word2VecConfig(dim=16, epochs=3, sample=0, batch_size=128, workers=2))
    assert torch.get_num_threads() == threads_before  # restored after the workers finish
    late = history.loss[-len(history.loss) // 3:]
    assert history.steps == sorted(history.steps) and sum(late) / len(late) < history.loss[0]
    for word in ("a0", "b3"):
        assert all(w[0] == word[0] for w, _ in most_similar(model.vectors, vocab, word, topn=4))


def test_one_worker_is_deterministic():
    ids = torch.randint(0, 10, (3000,), generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(ids, minlength=10)
    config = Word2VecConfig(dim=8, epochs=1, batch_size=64)
    a, _ = train_word2vec(ids, counts, config, seed=3)
    b, _ = train_word2vec(ids, counts, config, seed=3)
    torch.testing.assert_close(a.vectors, b.vectors, rtol=0, atol=0)


@pytest.mark.parametrize("cbow", [False, True], ids=["skipgram", "cbow"])
def test_compiled_update_equals_eager(cbow):
    # the torch.compile'd kernel (config.compile) makes the same step as the eager one, duplicates included
    from utils.word2vec import _compiled_update, _update_tables
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 7, (16, 4) if cbow else (16,), generator=g)
    mask = torch.rand(16, 4, generator=g) < 0.7 if cbow else None
    out_ids = torch.randint(0, 7, (16, 3), generator=g)
    eager, fused = scrambled(dtype=torch.float32), scrambled(dtype=torch.float32)
    tables = lambda m: (m.in_embed.weight.detach(), m.out_embed.weight.detach())  # noqa: E731
    loss_eager = _update_tables(*tables(eager), inputs, out_ids, 0.2, mask, True)
    loss_fused = _compiled_update()(*tables(fused), inputs, out_ids, torch.tensor(0.2), mask)
    torch.testing.assert_close(loss_fused, loss_eager)
    for a, b in zip(tables(fused), tables(eager)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not torch.equal(tables(fused)[1], scrambled(dtype=torch.float32).out_embed.weight)  # it did change


def test_compiled_parallel_training_learns_topics():
    # compile + two forked workers: the kernel is compiled once before the fork (a child that had to
    # compile again fails), and the workers' updates land in the parent's shared tables
    g = torch.Generator().manual_seed(0)
    topic = torch.randint(0, 2, (400,), generator=g).repeat_interleave(20)
    ids = topic * 5 + torch.randint(0, 5, topic.shape, generator=g)
    vocab = Vocab([f"{'ab'[i // 5]}{i % 5}" for i in range(10)], torch.bincount(ids, minlength=10).tolist())
    config = Word2VecConfig(dim=16, epochs=3, sample=0, batch_size=128, workers=2, compile=True)
    model, history = train_word2vec(ids, vocab.counts, config)
    assert history.loss[-1] < history.loss[0]
    for word in ("a0", "b3"):
        assert all(w[0] == word[0] for w, _ in most_similar(model.vectors, vocab, word, topn=4))


@pytest.mark.parametrize("processes", [True, False], ids=["processes", "threads"])
def test_workers_return_in_order_and_report_errors(processes):
    from utils.word2vec import _run_workers

    def work(k):
        return [(k, float(k))]

    assert _run_workers(work, 3, processes) == [[(0, 0.0)], [(1, 1.0)], [(2, 2.0)]]

    def failing(k):
        if k == 1:
            raise ValueError("boom in worker")
        return []

    expected = RuntimeError if processes else ValueError
    with pytest.raises(expected, match="boom in worker"):
        _run_workers(failing, 2, processes)
