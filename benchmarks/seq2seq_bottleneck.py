"""Chapter 4's bottleneck at an equal training budget: the encoder-decoder without attention on inputs of one
or two dates, with the state size H and the number of steps varied.

Each model trains from scratch with chapter 4's recipe (embedding 32, one LSTM layer of H units each side,
teacher forcing, Adam at 3e-3 with no schedule, batches of 128, gradients clipped at 1) on
`make_date_dataset(max_dates=2)`; every `--eval-every` steps it prints the greedy exact match on the
held-out two-date lines and on the one-date lines. With a constant learning rate, the score after k steps
of a longer run is the score of a k-step run. Two dates are about 32 bits: if the fixed-size state were the
limit, a larger H would be needed; if learning to pack two dates into it is the limit, more steps help.

    python benchmarks/seq2seq_bottleneck.py [--sizes 64 128 256] [--steps 1500] [--eval-every 250]

Takes ~7 minutes with the defaults on the book's 2-core CPU (H = 64, 128, 256: 49, 74, 156 ms/step).

Measured 2026-12-03 on the book's 2-core CPU, two-date exact match after 500 / 1,000 / 1,500 steps:
H = 64: 0.0 / 2.3 / 6.7%; H = 128: 4.3 / 33.2 / 59.0% (2,000 / 2,500 / 3,000 steps with --steps 3000:
65.0 / 74.3 / 84.0%); H = 256: 31.7 / 75.0 / 84.3%. One-date lines after 1,500 steps: 86.3 / 98.3 / 99.7%.
Chapter 4 quotes these.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from utils.seq2seq import (Seq2Seq, Seq2SeqConfig, date_vocabs, exact_match, make_batch,  # noqa: E402
                           make_date_dataset, seq2seq_loss, translate)
from utils.train import TrainConfig, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="hidden sizes H")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--test", type=int, default=600, help="held-out lines of each kind scored")
    args = parser.parse_args()
    data = make_date_dataset(n_train=20_000, n_val=1_000, n_test=2_000, seed=0, max_dates=2)
    src_vocab, tgt_vocab = date_vocabs(multi_date=True)
    by_count = {k: [p for p in data.test if p.target.count(";") == k - 1][:args.test] for k in (1, 2)}
    print(f"test lines: {len(by_count[1])} with one date, {len(by_count[2])} with two; "
          f"{args.steps} steps per size, scored every {args.eval_every}")

    def scores(model):
        return {f"{k} date{'s' if k > 1 else ''}": exact_match(
            translate(model, [p.source for p in pairs], src_vocab, tgt_vocab, max_len=40),
            [p.target for p in pairs]) for k, pairs in by_count.items()}

    rows = []
    for H in args.sizes:
        torch.manual_seed(0)
        model = Seq2Seq(Seq2SeqConfig(len(src_vocab), len(tgt_vocab), embed_dim=32, hidden_size=H))
        generator = torch.Generator().manual_seed(0)

        def get_batch(step):
            index = torch.randint(len(data.train), (128,), generator=generator)
            return make_batch([data.train[i] for i in index], src_vocab, tgt_vocab)

        start = time.perf_counter()
        history = train(model, get_batch, lambda m, b: seq2seq_loss(m(b.src, b.src_len, b.tgt_in), b.tgt_out),
                        torch.optim.Adam(model.parameters(), lr=3e-3), evaluate=scores,
                        config=TrainConfig(max_steps=args.steps, grad_clip=1.0, eval_every=args.eval_every,
                                           progress=False))
        seconds = time.perf_counter() - start
        for record in history.eval:
            rows.append((H, record.step, record.metrics["1 date"], record.metrics["2 dates"]))
            print(f"H {H:>4}  step {record.step:>5}  one date {record.metrics['1 date']:6.1%}  "
                  f"two dates {record.metrics['2 dates']:6.1%}", flush=True)
        print(f"H {H:>4}: {sum(p.numel() for p in model.parameters()):,} parameters, {seconds:.0f} s "
              f"({1e3 * history.seconds / history.steps:.0f} ms/step)", flush=True)
    print("\ntwo-date exact match (rows: H, columns: steps)")
    steps = sorted({s for _, s, _, _ in rows})
    print("     H " + "".join(f"{s:>8}" for s in steps))
    for H in args.sizes:
        print(f"{H:>6} " + "".join(f"{two:>8.1%}" for h, s, _, two in rows if h == H))


if __name__ == "__main__":
    main()
