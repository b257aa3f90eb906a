"""Chapter 7's results across seeds: the character GPT (`utils.gpt.SHAKESPEARE_CPU`, a fixed number of steps,
no time cap) and chapter 3's LSTM at the same number of steps, each trained with seeds 0, 1, 2.

For each seed it prints the validation loss over the whole validation split (`utils.rnn.evaluate_lm`, as the
chapter scores it), the steps, the training time and the time per step, and the fixed-window validation loss
at every evaluation of the GPT (to see where the curve flattens). The chapter's asserted target is set below
the worst seed with a margin these numbers support; run this after changing the recipe.

    python benchmarks/gpt_seeds.py [--seeds 0 1 2] [--lstm-only] [--json out.json]

Takes ~3 minutes per GPT seed and ~0.5 minute per LSTM seed on the book's 2-core CPU.

Measured 2026-12-03 on the book's 2-core CPU (quiet): GPT 1.6507 / 1.6582 / 1.6513 for seeds 0 / 1 / 2 (worst
1.6582, spread 0.0075; 107-110 ms/step), LSTM 1.5869 / 1.5902 / 1.5821 (30-35 ms/step). Chapter 7 asserts
<= 1.68: 0.022 above the worst seed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from utils.data import tiny_shakespeare, train_val_split  # noqa: E402
from utils.gpt import SHAKESPEARE_CPU, train_gpt, validation_windows  # noqa: E402
from utils.rnn import CharRNN, CharRNNConfig, evaluate_lm, random_lm_batch  # noqa: E402
from utils.runtime import seed_everything  # noqa: E402
from utils.text import CharVocab  # noqa: E402
from utils.train import TrainConfig, train  # noqa: E402


def train_lstm(train_ids, val_ids, vocab_size, steps, seed, block_size):
    """Chapter 3's LSTM and recipe (one layer of 256, Adam 3e-3, batches of 32 windows of 64) for `steps` steps."""
    torch.manual_seed(seed)
    lstm = CharRNN(CharRNNConfig(vocab_size=vocab_size, kind="lstm", embed_dim=64, hidden_size=256))
    gen = torch.Generator().manual_seed(seed)
    history = train(lstm, lambda step: random_lm_batch(train_ids, 32, 64, generator=gen), lambda m, b: m.loss(*b),
                    optimizer=torch.optim.Adam(lstm.parameters(), lr=3e-3),
                    val_batches=validation_windows(val_ids, block_size),
                    config=TrainConfig(max_steps=steps, eval_every=200, log_every=200, progress=False))
    return lstm, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lstm-only", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    text = tiny_shakespeare()
    train_text, val_text = train_val_split(text, 0.9)
    chars = CharVocab.from_text(text)
    train_ids, val_ids = chars.encode(train_text), chars.encode(val_text)
    recipe = replace(SHAKESPEARE_CPU, max_seconds=None)
    results = []
    for seed in args.seeds:
        row = {"seed": seed}
        if not args.lstm_only:
            seed_everything(seed)
            t0 = time.perf_counter()
            model, history = train_gpt(recipe, train_ids, val_ids, len(chars), seed=seed)
            row["gpt"] = {"val_loss": evaluate_lm(model, val_ids, block_size=recipe.block_size),
                          "steps": history.steps, "seconds": history.seconds,
                          "ms_per_step": 1e3 * history.seconds / history.steps,
                          "wall": time.perf_counter() - t0,
                          "curve": [(r.step, round(r.metrics["val_loss"], 4)) for r in history.eval]}
            print(f"seed {seed} GPT : {row['gpt']['val_loss']:.4f} nats/char after {history.steps} steps, "
                  f"{history.seconds:.0f} s ({row['gpt']['ms_per_step']:.0f} ms/step); curve {row['gpt']['curve']}",
                  flush=True)
        seed_everything(seed)
        lstm, lh = train_lstm(train_ids, val_ids, len(chars), recipe.max_steps, seed, recipe.block_size)
        row["lstm"] = {"val_loss": evaluate_lm(lstm, val_ids, block_size=recipe.block_size), "steps": lh.steps,
                       "seconds": lh.seconds, "ms_per_step": 1e3 * lh.seconds / lh.steps,
                       "curve": [(r.step, round(r.metrics["val_loss"], 4)) for r in lh.eval]}
        print(f"seed {seed} LSTM: {row['lstm']['val_loss']:.4f} nats/char after {lh.steps} steps, {lh.seconds:.0f} s "
              f"({row['lstm']['ms_per_step']:.1f} ms/step); curve {row['lstm']['curve']}", flush=True)
        results.append(row)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    for kind in ("gpt", "lstm"):
        losses = [r[kind]["val_loss"] for r in results if kind in r]
        if losses:
            print(f"{kind}: seeds {args.seeds}: " + ", ".join(f"{v:.4f}" for v in losses)
                  + f"; worst {max(losses):.4f}, spread {max(losses) - min(losses):.4f}")


if __name__ == "__main__":
    main()
