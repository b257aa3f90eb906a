"""Word2Vec: skip-gram and CBOW with negative sampling (Mikolov, Chen et al., 2013; Mikolov, Sutskever et al., 2013).

Letter legend for shapes: B pairs (or windows) in a batch, K negatives per pair, D embedding
dimension, V vocabulary size, W window size, N tokens in the corpus.

Two embedding tables, as in the original C tool and gensim:
- `in_embed` (gensim's `syn0` / `wv`): the vector of a word when it is the *input*
  (the centre word in skip-gram, a context word in CBOW). These are the word vectors we keep.
- `out_embed` (gensim's `syn1neg`): the vector of a word when it is the *output* being predicted,
  for the true word and for the K noise words drawn from the unigram distribution raised to 0.75.

The loss for one input vector h and output word o with negatives n_1..n_K is
    -log σ(u_o · h) - Σ_k log σ(-u_{n_k} · h)                     (Mikolov, Sutskever et al. 2013, eq. 4)
`loss()` computes it with autograd (the teaching form); `sgd_step()` applies the same SGD update
by hand, touching only the rows in the batch, which is what makes training fast on a CPU.
`train_word2vec` can run several lock-free workers (forked processes on a CPU) and fuse the update
into one kernel with torch.compile (`Word2VecConfig(workers=2, compile=True)`); the speed of each
against gensim is measured by benchmarks/word2vec_throughput.py.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
import time
import traceback
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
    workers: int = 1         # 1: deterministic; more: lock-free parallel workers, like gensim's
    noise_power: float = 0.75
    compile: bool = False    # fuse each update into one kernel with torch.compile (see `_compiled_update`)

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
        """Negative-sampling loss, eq. 4 of Mikolov, Sutskever et al. (2013), averaged (or summed) over the batch."""
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
        return _update_tables(self.in_embed.weight, self.out_embed.weight, inputs, out_ids, lr, mask, with_loss)


@torch.no_grad()
def _update_tables(W: torch.Tensor, U: torch.Tensor, inputs: torch.Tensor, out_ids: torch.Tensor,
                   lr: float | torch.Tensor, mask: torch.Tensor | None, with_loss: bool) -> torch.Tensor | None:
    """The SGD step of `Word2Vec.sgd_step` on the tables W (inputs) and U (outputs), in place."""
    (B, K1), D = out_ids.shape, W.shape[1]
    out_ids = out_ids.reshape(-1)  # (B*(1+K),)
    if inputs.dim() == 1:
        h = W.index_select(0, inputs)  # (B, D)
    else:  # CBOW: the mean of the real context words
        m = mask.unsqueeze(-1).to(W.dtype)  # (B, 2W, 1)
        h = (W.index_select(0, inputs.reshape(-1)).view(*inputs.shape, D) * m).sum(1) / m.sum(1).clamp(min=1)
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
    else:  # CBOW: h is a mean, so each real context word gets dh / (number of context words); padding gets 0
        share = (dh / m.sum(1).clamp(min=1)).unsqueeze(1) * m  # (B, 2W, D)
        W.index_add_(0, inputs.reshape(-1), share.view(-1, D))
    return loss


_compiled: dict[str, object] = {}


def _compiled_update():
    """`_update_tables` compiled once per process with torch.compile: the ten or so passes over the
    (B, 1+K, D) temporaries become one fused loop (C++ on a CPU, Triton on a GPU). Shapes are fixed
    (a batch of another size takes the eager path) and the loss is always computed."""
    if "update" not in _compiled:
        def update(W, U, inputs, out_ids, lr, mask):
            return _update_tables(W, U, inputs, out_ids, lr, mask, True)
        _compiled["update"] = torch.compile(update, dynamic=False, fullgraph=True)
    return _compiled["update"]


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
    # several CPU workers run as forked processes sharing the two tables (threads elsewhere)
    processes = config.workers > 1 and device.type == "cpu" and "fork" in mp.get_all_start_methods()
    if processes:
        model.share_memory()
    W, U = model.in_embed.weight.detach(), model.out_embed.weight.detach()
    update = _compiled_update() if config.compile else None
    done, step = 0, 0
    start = time.perf_counter()
    for epoch in range(config.epochs):
        kept = subsample(ids, keep, gen)  # (N',)
        history.words += kept.numel()
        if config.sg:
            inputs, targets = skipgram_pairs(kept, config.window, gen)  # (P,), (P,)
            mask = None
        else:
            targets, inputs, mask = cbow_windows(kept, config.window, gen)  # (P,), (P, 2W), (P, 2W)
        order = torch.randperm(targets.numel(), generator=gen)  # index_select: faster than inputs[order]
        inputs, targets = inputs.index_select(0, order).to(device), targets.index_select(0, order).to(device)
        mask = mask.index_select(0, order).to(device) if mask is not None else None
        P, B, workers = targets.numel(), config.batch_size, config.workers
        seeds = torch.randint(0, 2**62, (workers,), generator=gen).tolist()
        if update is not None and epoch == 0 and P >= B:  # compile now, on copies, so forked workers inherit it
            dummy = torch.zeros(B, 1 + config.negative, dtype=targets.dtype, device=device)
            with _num_threads(1):  # the fused kernel runs best on one thread; one is compiled per thread count
                update(W.clone(), U.clone(), inputs[:B], dummy, torch.tensor(config.lr, device=device),
                       None if mask is None else mask[:B])

        def work(k: int, step0: int = step, done0: int = done) -> list[tuple[int, float]]:
            # worker k trains on its share of the shuffled examples, drawing their negatives itself
            lo, hi = k * P // workers, (k + 1) * P // workers
            draws = torch.randint(0, table.numel(), (hi - lo, config.negative), dtype=torch.int32,
                                  generator=torch.Generator().manual_seed(seeds[k]))
            out_ids = torch.empty(hi - lo, 1 + config.negative, dtype=targets.dtype, device=device)  # (pairs in this chunk, 1+K)
            out_ids[:, 0] = targets[lo:hi]
            out_ids[:, 1:] = table.index_select(0, draws.view(-1)).view(draws.shape).to(device)
            logged = []
            for i in range(0, hi - lo, B):
                sl = slice(lo + i, min(lo + i + B, hi))
                # all workers advance together, so the whole epoch has seen about i * workers examples
                lr = max(config.min_lr, config.lr - (config.lr - config.min_lr) * (done0 + i * workers) / total)
                step_id = step0 + (i // B) * workers + k
                log = step_id % log_every == 0
                batch, batch_mask = out_ids[i:i + B], None if mask is None else mask[sl]
                if update is not None and batch.shape[0] == B:
                    loss = update(W, U, inputs[sl], batch, torch.tensor(lr, device=device), batch_mask)
                else:
                    loss = _update_tables(W, U, inputs[sl], batch, lr, batch_mask, log)
                if log:  # the loss of this batch, before its update
                    logged.append((step_id, float(loss) / batch.shape[0]))
            return logged

        with _num_threads(1 if update is not None else torch.get_num_threads()):
            parts = _run_workers(work, workers, processes)
        for s, value in sorted(x for part in parts for x in part):
            history.steps.append(s)
            history.loss.append(value)
        step += -(-P // B) * workers
        done += P
        history.examples += targets.numel()
    history.seconds = time.perf_counter() - start
    return model, history


def _run_workers(work, workers: int, processes: bool = False) -> list:
    """Return [work(k) for k < workers]. With one worker: in this process, with torch's usual
    intra-op threads. With more: "Hogwild" (Recht et al., 2011), as word2vec.c and gensim do it,
    each worker updating the shared tables without locks and running its tensor operations
    single-threaded. Results then depend on timing. Workers are forked processes when `processes`
    (each has its own interpreter lock, so the Python between kernels, and a compiled kernel, which
    holds the lock, run in parallel; the tables must be in shared memory), else threads (torch
    releases the lock inside its eager operations)."""
    if workers == 1:
        return [work(0)]
    with _num_threads(1):
        return _run_processes(work, workers) if processes else _run_threads(work, workers)


@contextlib.contextmanager
def _num_threads(n: int):
    """torch's intra-op threads set to n inside the block, restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_threads(work, workers: int) -> list:
    results: list = [None] * workers
    errors: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            results[k] = work(k)
        except BaseException as err:  # re-raised in the calling thread
            errors.append(err)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _run_processes(work, workers: int) -> list:
    ctx = mp.get_context("fork")
    procs, pipes, finished = [], [], False
    try:
        for k in range(workers):
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_process_worker, args=(work, k, send), daemon=True)
            proc.start()
            send.close()  # the child holds the sending end; EOF then means it died
            procs.append(proc)
            pipes.append(receive)
        results = []
        for k, (proc, receive) in enumerate(zip(procs, pipes)):
            try:
                status, value = receive.recv()
            except EOFError:
                proc.join()
                raise RuntimeError(f"word2vec worker {k} died without a result (exit code {proc.exitcode})") from None
            if status == "error":
                raise RuntimeError(f"word2vec worker {k} failed:\n{value}")
            results.append(value)
        finished = True
        return results
    finally:  # on an error (or an interrupt) the other workers are stopped, not waited for
        for proc in procs:
            if not finished:
                proc.terminate()
            proc.join()
        for receive in pipes:
            receive.close()


def _process_worker(work, k: int, send) -> None:
    torch.compiler.set_stance("fail_on_recompile")  # compiling in a forked child can hang: fail instead
    try:
        send.send(("ok", work(k)))
    except BaseException:  # reported to the parent, which raises it
        send.send(("error", traceback.format_exc()))
    finally:
        send.close()


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
