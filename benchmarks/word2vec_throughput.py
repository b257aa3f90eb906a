"""Skip-gram throughput: this book's trainer (utils.word2vec) against gensim, side by side.

Same corpus (Tiny Shakespeare's speech bodies, lower-cased words, as chapter 1 reads them) and settings: skip-gram, negative 5, window 5,
dim 100, min_count 5, sample 1e-3, 5 epochs, one worker thread per core for both (lock-free
"Hogwild" updates, gensim's own scheme); ours with a single worker is shown too, for reference. Only training is timed (not vocabulary
building). "Effective words" are the tokens left after sub-sampling, summed over epochs, the
figure gensim itself reports. Prints words/s of each and the ratio; target: ratio >= 0.5.

    python benchmarks/word2vec_throughput.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from utils.data import speeches, tiny_shakespeare  # noqa: E402
from utils.text import Vocab, words  # noqa: E402
from utils.word2vec import Word2VecConfig, most_similar, train_word2vec  # noqa: E402

SETTINGS = dict(dim=100, window=5, negative=5, min_count=5, sample=1e-3, epochs=5)
TARGET = 0.5


def run_gensim(tokens: list[str], workers: int, seed: int) -> tuple[float, int, object]:
    from gensim.models import Word2Vec as GensimWord2Vec

    # gensim caps a "sentence" at 10,000 words; the corpus is one stream, so feed it in 1,000-word pieces
    chunks = [tokens[i:i + 1000] for i in range(0, len(tokens), 1000)]
    model = GensimWord2Vec(vector_size=SETTINGS["dim"], window=SETTINGS["window"], negative=SETTINGS["negative"],
                           min_count=SETTINGS["min_count"], sample=SETTINGS["sample"], sg=1,
                           workers=workers, seed=seed)
    model.build_vocab(chunks)
    start = time.perf_counter()
    effective, _raw = model.train(chunks, total_examples=model.corpus_count, epochs=SETTINGS["epochs"])
    return time.perf_counter() - start, effective, model


def run_ours(ids: torch.Tensor, vocab: Vocab, seed: int, workers: int):
    config = Word2VecConfig(**{k: v for k, v in SETTINGS.items() if k != "min_count"}, sg=True, workers=workers)
    model, history = train_word2vec(ids, vocab.counts, config, seed=seed)
    return history.seconds, history.words, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each; the fastest counts")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    tokens = [w for _, body in speeches(tiny_shakespeare()) for w in words(body)]  # chapter 1's stream: no speaker headings
    vocab = Vocab.from_tokens(tokens, min_count=SETTINGS["min_count"])
    ids = torch.tensor([vocab.stoi[t] for t in tokens if t in vocab.stoi])
    print(f"corpus: {len(tokens):,} words, vocabulary {len(vocab):,} (min_count 5); {cores} cores; "
          f"settings {SETTINGS}")
    best = {"gensim": 0.0, "ours": 0.0, "ours, 1 worker": 0.0}
    for r in range(args.repeats):  # interleaved, so all see the same machine state
        sec, eff, g_model = run_gensim(tokens, workers=cores, seed=r)
        best["gensim"] = max(best["gensim"], eff / sec)
        print(f"  run {r}: gensim, {cores} workers  {eff:,} effective words in {sec:.2f} s = {eff / sec:,.0f} words/s")
        for name, workers in (("ours", cores), ("ours, 1 worker", 1)):
            sec, eff, model = run_ours(ids, vocab, seed=r, workers=workers)
            best[name] = max(best[name], eff / sec)
            label = f"{name}, {workers} workers" if workers > 1 else name
            print(f"  run {r}: {label:<18}{eff:,} effective words in {sec:.2f} s = {eff / sec:,.0f} words/s")
            if name == "ours":
                o_model = model
    ratio = best["ours"] / best["gensim"]
    print("neighbours of 'king':  gensim", [w for w, _ in g_model.wv.most_similar("king", topn=5)],
          "| ours", [w for w, _ in most_similar(o_model.vectors, vocab, "king", 5)])
    print(f"gensim {best['gensim']:,.0f} words/s | ours {best['ours']:,.0f} words/s "
          f"(1 worker: {best['ours, 1 worker']:,.0f}) | ratio ours/gensim = {ratio:.2f} (target >= {TARGET})")


if __name__ == "__main__":
    main()
