"""Word2Vec: skip-gram and CBOW with negative sampling (Mikolov et al., 2013a; 2013b).

Letter legend for shapes: B pairs (or windows) in a batch, K negatives per pair, D embedding
dimension, V vocabulary size, W window size, N tokens in the corpus.

Two embedding tables, as in the original C tool and gensim:
- `in_embed` (gensim's `syn0` / `wv`): the vector of a word when it is the *input*
  (the centre word in skip-gram, a context word in CBOW). These are the word vectors we keep.
- `out_embed` (gensim's `syn1neg`): the vector of a word when it is the *output* being predicted,
  for the true word and for the K noise words drawn from the unigram distribution raised to 0.75.

The loss for one input vector h and output word o with negatives n_1..n_K is
    -log σ(u_o · h) - Σ_k log σ(-u_{n_k} · h)                     (Mikolov et al. 2013b, eq. 4)
`loss()` computes it with autograd (the teaching form); `sgd_step()` applies the same SGD update
by hand, touching only the rows in the batch, which is what makes training fast on a CPU.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from utils.text import Vocab


@dataclass
class Word2VecConfig:
    """Hyper-parameters, named and defaulted like gensim's `Word2Vec`."""

    dim: int = 100           # D, vector_size in gensim
    window: int = 5          # W: up to W words each side; the actual width is drawn from 1..W per word
    negative: int = 5        # K noise words per true pair
    sample: float = 1e-3     # sub-sampling threshold t for frequent words (0 disables it)
    epochs: int = 5
    lr: float = 0.025        # alpha: decays linearly to min_lr over training
    min_lr: float = 1e-4
    sg: bool = True          # True: skip-gram, False: CBOW (mean of the context vectors)
    batch_size: int = 512    # pairs (skip-gram) or windows (CBOW) per update
    workers: int = 1         # 1: deterministic; more: lock-free parallel threads, like gensim's workers
    noise_power: float = 0.75

    def __post_init__(self) -> None:
        for name in ("dim", "window", "negative", "epochs", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr or self.min_lr < 0:
            raise ValueError(f"lr must be > 0 and min_lr >= 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.sample < 0:
            raise ValueError(f"sample must be >= 0, got {self.sample}")


def keep_probabilities(counts: torch.Tensor, sample: float) -> torch.Tensor:
    """P(keep) for each word under sub-sampling, the formula of word2vec.c and gensim.

    With f the word's share of the corpus and t = `sample`: p = (sqrt(f/t) + 1) * t/f, capped at 1.
    Rare words are always kept; a word with f = 0.05 at t = 1e-3 is kept about 16% of the time.
    """
    counts = counts.double()
    if sample <= 0:
        return torch.ones_like(counts)
    ratio = sample * counts.sum() / counts.clamp(min=1)  # t / f
    return (ratio.sqrt() + ratio).clamp(max=1.0)  # (sqrt(f/t) + 1) * t/f


def noise_distribution(counts: torch.Tensor, power: float = 0.75) -> torch.Tensor:
    """The negative-sampling distribution: unigram counts raised to `power`, normalised."""
    weights = counts.double().clamp(min=0) ** power
    if weights.sum() <= 0:
        raise ValueError("noise distribution needs at least one word with a positive count")
    return weights / weights.sum()


def unigram_table(counts: torch.Tensor, power: float = 0.75, size: int = 1_000_000) -> torch.Tensor:
    """word2vec.c's trick for fast noise sampling: a table of `size` word ids in which each word fills
    a share of slots equal to its noise probability; a uniform random slot is then a noise word."""
    probs = noise_distribution(counts, power)  # (V,)
    slots = torch.round(probs.cumsum(0) * size).long()  # (V,) end slot of each word
    repeats = torch.diff(slots, prepend=torch.zeros(1, dtype=torch.long))  # (V,)
    return torch.repeat_interleave(torch.arange(counts.numel()), repeats)  # (size,)


def subsample(ids: torch.Tensor, keep_prob: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop each token with probability 1 - keep_prob[token]; returns the kept ids (N') in order."""
    keep = torch.rand(ids.shape, generator=generator, dtype=torch.float64) < keep_prob[ids]  # (N,)
    return ids[keep]


def skipgram_pairs(ids: torch.Tensor, window: int, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """All (centre, context) pairs of a token stream, each centre with its own width b drawn from 1..window.

    Like word2vec.c, a nearer word is more likely to be inside the drawn window, so near
    neighbours weigh more. Returns two (P,) tensors: centre ids and context ids.
    """
    n = ids.numel()
    b = torch.randint(1, window + 1, (n,), generator=generator)  # (N,) effective width of each centre
    centres, contexts = [], []
    for d in range(1, min(window, n - 1) + 1):
        right = b[:-d] >= d  # centre i sees i + d
        left = b[d:] >= d    # centre i + d sees i
        centres += [ids[:-d][right], ids[d:][left]]
        contexts += [ids[d:][right], ids[:-d][left]]
    if not centres:
        return ids[:0], ids[:0]
    return torch.cat(centres), torch.cat(contexts)  # (P,), (P,)


def cbow_windows(ids: torch.Tensor, window: int, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each token, its context window as a padded (N, 2W) id matrix with a (N, 2W) mask.

    Returns (centres (N,), contexts (N, 2W), mask (N, 2W)); tokens with no context are dropped.
    """
    n = ids.numel()
    b = torch.randint(1, window + 1, (n,), generator=generator)  # (N,)
    offsets = torch.tensor([d for d in range(-window, window + 1) if d != 0])  # (2W,)
    pos = torch.arange(n).unsqueeze(1) + offsets  # (N, 2W)
    mask = (pos >= 0) & (pos < n) & (offsets.abs() <= b.unsqueeze(1))  # (N, 2W)
    contexts = ids[pos.clamp(0, n - 1)]  # (N, 2W)
    has_context = mask.any(1)
    return ids[has_context], contexts[has_context], mask[has_context]


class Word2Vec(nn.Module):
    """The two embedding tables of word2vec and its negative-sampling loss."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        if vocab_size < 2 or dim < 1:
            raise ValueError(f"need vocab_size >= 2 and dim >= 1, got {vocab_size}, {dim}")
        self.in_embed = nn.Embedding(vocab_size, dim)   # (V, D) word vectors (syn0)
        self.out_embed = nn.Embedding(vocab_size, dim)  # (V, D) output vectors (syn1neg)
        # word2vec.c's initialisation: inputs uniform in ±0.5/D, outputs zero
        nn.init.uniform_(self.in_embed.weight, -0.5 / dim, 0.5 / dim)
        nn.init.zeros_(self.out_embed.weight)

    @property
    def vectors(self) -> torch.Tensor:
        """The word vectors (V, D), detached."""
        return self.in_embed.weight.detach()

    def hidden(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The input vector h: the centre word's vector (inputs (B,)), or the mean of a context window
        (inputs (B, 2W) with a boolean mask) for CBOW."""
        if inputs.dim() == 1:
            return self.in_embed(inputs)  # (B, D)
        if mask is None:
            raise ValueError("CBOW inputs (B, 2W) need a mask (B, 2W) marking real context words")
        m = mask.unsqueeze(-1).to(self.in_embed.weight.dtype)  # (B, 2W, 1)
        return (self.in_embed(inputs) * m).sum(1) / m.sum(1).clamp(min=1)  # (B, D)

    def scores(self, h: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Dot products of h with the true output word (column 0) and the K negatives: (B, 1+K)."""
        outputs = self.out_embed(torch.cat([targets.unsqueeze(1), negatives], 1))  # (B, 1+K, D)
        return torch.einsum("bkd,bd->bk", outputs, h)  # (B, 1+K)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
             mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        """Negative-sampling loss, eq. 4 of Mikolov et al. (2013b), averaged (or summed) over the batch."""
        _check_batch(inputs, targets, negatives, mask, self.in_embed.num_embeddings)
        s = self.scores(self.hidden(inputs, mask), targets, negatives)  # (B, 1+K)
        per_example = -F.logsigmoid(s[:, 0]) - F.logsigmoid(-s[:, 1:]).sum(1)  # (B,)
        return per_example.mean() if reduction == "mean" else per_example.sum()

    @torch.no_grad()
    def sgd_step(self, inputs: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                 lr: float, mask: torch.Tensor | None = None, with_loss: bool = True) -> torch.Tensor | None:
        """One SGD step on the *summed* loss of the batch, by hand: only the touched rows change.

        Equal to `loss(..., reduction="sum").backward()` followed by `torch.optim.SGD(lr)`, but with
        no autograd graph and no dense (V, D) gradient. Returns the summed loss before the step
        (or None with `with_loss=False`, which saves a little time).
        """
        _check_batch(inputs, targets, negatives, mask, self.in_embed.num_embeddings)
        return self._sgd_update(inputs, torch.cat([targets.unsqueeze(1), negatives], 1), lr, mask, with_loss)

    @torch.no_grad()
    def _sgd_update(self, inputs: torch.Tensor, out_ids: torch.Tensor, lr: float,
                    mask: torch.Tensor | None, with_loss: bool) -> torch.Tensor | None:
        """`sgd_step` without the input checks; `out_ids` (B, 1+K) holds the target, then the negatives."""
        W, U = self.in_embed.weight, self.out_embed.weight  # (V, D), (V, D)
        (B, K1), D = out_ids.shape, W.shape[1]
        out_ids = out_ids.reshape(-1)  # (B*(1+K),)
        h = self.hidden(inputs, mask)  # (B, D)
        u = U.index_select(0, out_ids).view(B, K1, D)  # (B, 1+K, D)
        s = (u * h.unsqueeze(1)).sum(2)  # (B, 1+K)
        loss = -(F.logsigmoid(s[:, 0]).sum() + F.logsigmoid(-s[:, 1:]).sum()) if with_loss else None
        g = torch.sigmoid(s).neg_()  # (B, 1+K): label - sigmoid(s), the label being 1 for column 0
        g[:, 0] += 1
        g.mul_(lr)  # -lr * dLoss/ds
        dh = (g.unsqueeze(2) * u).sum(1)  # (B, D)
        U.index_add_(0, out_ids, (g.unsqueeze(2) * h.unsqueeze(1)).view(-1, D))
        if inputs.dim() == 1:
            W.index_add_(0, inputs, dh)
        else:  # CBOW: h is a mean, so each context word gets dh / (number of context words)
            m = mask.to(W.dtype)  # (B, 2W)
            share = dh / m.sum(1, keepdim=True).clamp(min=1)  # (B, D)
            W.index_add_(0, inputs[mask], share.unsqueeze(1).expand(-1, inputs.shape[1], -1)[mask])
        return loss


def _check_batch(inputs, targets, negatives, mask, vocab_size) -> None:
    if inputs.dim() not in (1, 2) or targets.dim() != 1 or negatives.dim() != 2:
        raise ValueError(f"expected inputs (B,) or (B, 2W), targets (B,), negatives (B, K); got shapes "
                         f"{tuple(inputs.shape)}, {tuple(targets.shape)}, {tuple(negatives.shape)}")
    if not inputs.shape[0] == targets.shape[0] == negatives.shape[0]:
        raise ValueError(f"batch sizes differ: inputs {inputs.shape[0]}, targets {targets.shape[0]}, "
                         f"negatives {negatives.shape[0]}")
    if mask is not None and mask.shape != inputs.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal inputs shape {tuple(inputs.shape)}")
    for name, t in (("inputs", inputs), ("targets", targets), ("negatives", negatives)):
        if t.numel() and (t.min() < 0 or t.max() >= vocab_size):
            raise IndexError(f"{name} contain ids outside 0..{vocab_size - 1}")


@dataclass
class Word2VecHistory:
    """What training measured: loss per logged chunk, words trained, wall time."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)    # mean loss per example over the chunk
    words: int = 0                                      # effective words: tokens left after sub-sampling, all epochs
    examples: int = 0                                   # pairs (skip-gram) or windows (CBOW)
    seconds: float = 0.0

    @property
    def words_per_second(self) -> float:
        return self.words / self.seconds if self.seconds > 0 else float("nan")


def train_word2vec(ids: torch.Tensor, counts: torch.Tensor, config: Word2VecConfig, seed: int = 0,
                   log_every: int = 50, device: torch.device | str | None = None,
                   model: Word2Vec | None = None) -> tuple[Word2Vec, Word2VecHistory]:
    """Train word2vec on a token-id stream (N,) with the hand-written sparse SGD update.

    `counts` (V,) are the corpus counts of each id (sub-sampling and the noise distribution use
    them). The learning rate decays linearly from `lr` to `min_lr` over all batches of all epochs.
    """
    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError(f"ids must be a 1-D stream of at least 2 token ids, got shape {tuple(ids.shape)}")
    V = counts.numel()
    if ids.min() < 0 or ids.max() >= V:
        raise IndexError(f"ids must lie in 0..{V - 1} (the length of counts)")
    device = torch.device(device) if device is not None else ids.device
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = (model or Word2Vec(V, config.dim)).to(device)
    keep = keep_probabilities(counts, config.sample)
    table = unigram_table(counts, config.noise_power)
    history = Word2VecHistory()
    # the total number of examples is only known epoch by epoch; estimate it for the lr schedule
    expected_per_epoch = float(keep[ids].sum()) * (config.window + 1 if config.sg else 1)
    total = expected_per_epoch * config.epochs
    done, step = 0, 0
    start = time.perf_counter()
    for _ in range(config.epochs):
        kept = subsample(ids, keep, gen)  # (N',)
        history.words += kept.numel()
        if config.sg:
            inputs, targets = skipgram_pairs(kept, config.window, gen)  # (P,), (P,)
            mask = None
        else:
            targets, inputs, mask = cbow_windows(kept, config.window, gen)  # (P,), (P, 2W), (P, 2W)
        order = torch.randperm(targets.numel(), generator=gen)
        inputs, targets = inputs[order].to(device), targets[order].to(device)
        mask = mask[order].to(device) if mask is not None else None
        P, B, workers = targets.numel(), config.batch_size, config.workers
        seeds = torch.randint(0, 2**62, (workers,), generator=gen).tolist()

        def work(k: int, step0: int = step, done0: int = done) -> None:
            # worker k trains on its share of the shuffled examples, drawing their negatives itself
            lo, hi = k * P // workers, (k + 1) * P // workers
            draws = torch.randint(0, table.numel(), (hi - lo, config.negative), dtype=torch.int32,
                                  generator=torch.Generator().manual_seed(seeds[k]))
            out_ids = torch.cat([targets[lo:hi].unsqueeze(1), table[draws].to(device)], 1)  # (P_k, 1+K)
            for i in range(0, hi - lo, B):
                sl = slice(lo + i, min(lo + i + B, hi))
                # all workers advance together, so the whole epoch has seen about i * workers examples
                lr = max(config.min_lr, config.lr - (config.lr - config.min_lr) * (done0 + i * workers) / total)
                step_id = step0 + (i // B) * workers + k
                log = step_id % log_every == 0
                batch = out_ids[i:i + B]
                loss = model._sgd_update(inputs[sl], batch, lr, None if mask is None else mask[sl], log)
                if log:  # the loss of this batch, before its update
                    logged.append((step_id, float(loss) / batch.shape[0]))

        logged: list[tuple[int, float]] = []
        _run_workers(work, workers)
        for s, value in sorted(logged):
            history.steps.append(s)
            history.loss.append(value)
        step += -(-P // B) * workers
        done += P
        history.examples += targets.numel()
    history.seconds = time.perf_counter() - start
    return model, history


def _run_workers(work, workers: int) -> None:
    """Run work(k) for k < workers. With one worker: in this thread, with torch's usual
    intra-op threads. With more: "Hogwild" (Recht et al., 2011), as word2vec.c and gensim do it,
    each Python thread updating the shared tables without locks and running its tensor operations
    single-threaded (torch releases the GIL inside them). Results then depend on thread timing."""
    if workers == 1:
        work(0)
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    errors: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            work(k)
        except BaseException as err:  # re-raised in the calling thread
            errors.append(err)

    try:
        threads = [threading.Thread(target=guarded, args=(k,)) for k in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        torch.set_num_threads(previous)
    if errors:
        raise errors[0]


def most_similar(vectors: torch.Tensor, vocab: Vocab, word: str, topn: int = 10) -> list[tuple[str, float]]:
    """The `topn` words whose vectors have the highest cosine similarity with `word`'s (itself excluded)."""
    if word not in vocab:
        raise KeyError(f"{word!r} is not in the vocabulary ({len(vocab)} words with count >= min_count)")
    return nearest(vectors, vocab, vectors[vocab.index(word)], topn, exclude={word})


def nearest(vectors: torch.Tensor, vocab: Vocab, query: torch.Tensor, topn: int = 10,
            exclude: set[str] = frozenset()) -> list[tuple[str, float]]:
    """The `topn` words nearest to a query vector (D,) by cosine similarity, skipping `exclude`."""
    if vectors.shape[0] != len(vocab):
        raise ValueError(f"{vectors.shape[0]} vectors for a vocabulary of {len(vocab)} words")
    sims = F.normalize(vectors.float(), dim=1) @ F.normalize(query.float(), dim=0)  # (V,)
    order = sims.argsort(descending=True)
    out = []
    for i in order.tolist():
        if vocab.itos[i] not in exclude:
            out.append((vocab.itos[i], float(sims[i])))
        if len(out) == topn:
            break
    return out


def analogy(vectors: torch.Tensor, vocab: Vocab, a: str, b: str, c: str, topn: int = 5) -> list[tuple[str, float]]:
    """a is to b as c is to ?: the words nearest to b - a + c (unit vectors), inputs excluded."""
    for w in (a, b, c):
        if w not in vocab:
            raise KeyError(f"{w!r} is not in the vocabulary")
    unit = F.normalize(vectors.float(), dim=1)
    query = unit[vocab.index(b)] - unit[vocab.index(a)] + unit[vocab.index(c)]
    return nearest(vectors, vocab, query, topn, exclude={a, b, c})
