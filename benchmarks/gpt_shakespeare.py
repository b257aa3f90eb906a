"""Char-level GPT on Tiny Shakespeare: the chapter's CPU recipe against nanoGPT's CPU recipe, side by side.

Both are trained with utils.gpt and utils.train on nanoGPT's split (first 90% train, last 10% validation),
with AdamW (weight decay 0.1 on matrices only, betas 0.9/0.99), linear warm-up + cosine decay
(`warmup_cosine`), gradient clipping at 1.0 and no dropout (`utils.gpt.train_gpt`):
- reference  `utils.gpt.NANOGPT_CPU`, nanoGPT's CPU command (README): 4 layers, 4 heads, 128 dims, block 64, batch 12,
             lr 1e-3 → 1e-4, 100 warm-up steps, 2000 iterations
- chapter    `utils.gpt.SHAKESPEARE_CPU` (what chapter 7 trains)
Every `eval_every` steps each model is scored on a fixed set of validation windows (the same start offsets
for both; each model reads them with its own block size, as nanoGPT evaluates). Evaluation stops
utils.train's clock, so the times are training time only. Prints, for each, the training time at the
first evaluation with val loss ≤ 1.88 and the final val loss, then the ratio chapter/reference;
target: ratio ≤ 0.4. The recipes run one after the other (reference first): training runs of minutes
cannot be interleaved the way the micro-benchmarks are, so run it on a quiet machine.

Measured on the book's 2-core CPU (torch 2.14.1, 2 threads, quiet machine), with the chapter's earlier recipe
(block 64, batch 32, 2000 steps): the reference ends at val loss 1.900 after 2000 steps (69.5 s training,
34.8 ms/step) without reaching 1.88; the chapter's recipe reached 1.88 after 70.1 s and ended at 1.646 after
2000 steps (177.8 s, 88.9 ms/step). So the ratio is below 1.01 but the 0.4 target is NOT met: reaching 1.88
takes ~800 steps of 2,048 characters (~1.6M characters) at any of the batch sizes and learning rates tried
(batch 32-64, peak lr 3e-3 to 6e-3), and the model's throughput (~22-24k characters/s, two thirds of it in
matmuls) varies little with the batch size. The current recipe (block 128, batch 16, 1800 steps) reads the
same characters per step with twice the context: at equal steps its validation loss was about 0.02 lower
(1.629 against 1.646 after 2000 steps), which does not change the picture at 1.88.

    python benchmarks/gpt_shakespeare.py [--max-seconds 180] [--threads 0]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from utils.data import tiny_shakespeare, train_val_split  # noqa: E402
from utils.gpt import NANOGPT_CPU, SHAKESPEARE_CPU, Recipe, train_gpt  # noqa: E402
from utils.text import CharVocab  # noqa: E402
from utils.train import History  # noqa: E402

TARGET_LOSS = 1.88  # nanoGPT's published CPU result is 1.8857 after 2000 iterations
TARGET_RATIO = 0.4
VAL_WINDOWS = 256  # fixed validation windows (the same start offsets for both recipes)
REFERENCE_RECIPE = NANOGPT_CPU
CHAPTER_RECIPE = SHAKESPEARE_CPU


def run_recipe(recipe: Recipe, train_ids: torch.Tensor, val_ids: torch.Tensor, vocab_size: int,
               val_starts: torch.Tensor, seed: int = 0, target: float = TARGET_LOSS) -> tuple[History, float | None]:
    """Train `recipe` from scratch; returns its History and the training time (s) of the first evaluation
    with val_loss ≤ target (None if never reached)."""
    _, history = train_gpt(recipe, train_ids, val_ids, vocab_size, val_starts=val_starts, seed=seed)
    reached = [r.seconds for r in history.eval if r.metrics["val_loss"] <= target]
    return history, (reached[0] if reached else None)


def describe(recipe: Recipe) -> str:
    return (f"L{recipe.n_layer} H{recipe.n_head} C{recipe.n_embd} block {recipe.block_size} "
            f"batch {recipe.batch_size} lr {recipe.lr:g}→{recipe.min_lr:g} warmup {recipe.warmup} "
            f"steps {recipe.max_steps}" + (f" max {recipe.max_seconds:g} s" if recipe.max_seconds else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="training-time budget per recipe (default: the recipe's own; reference: none)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    text = tiny_shakespeare()
    vocab = CharVocab.from_text(text)
    train_text, val_text = train_val_split(text, 0.9)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    block_max = max(REFERENCE_RECIPE.block_size, CHAPTER_RECIPE.block_size)
    val_starts = torch.randint(len(val_ids) - block_max, (VAL_WINDOWS,), generator=torch.Generator().manual_seed(1234))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"{len(train_ids):,} train / {len(val_ids):,} val chars, vocab {len(vocab)}; "
          f"val loss on {VAL_WINDOWS} fixed windows; target val loss {TARGET_LOSS}")
    results = {}
    for name, recipe in (("reference", REFERENCE_RECIPE), ("chapter", CHAPTER_RECIPE)):
        if args.max_seconds is not None:
            recipe = replace(recipe, max_seconds=args.max_seconds)
        print(f"{name:<10} {describe(recipe)}", flush=True)
        start = time.perf_counter()
        history, t = run_recipe(recipe, train_ids, val_ids, len(vocab), val_starts, seed=args.seed)
        wall = time.perf_counter() - start
        final = history.eval[-1].metrics["val_loss"]
        results[name] = (t, history.seconds)
        shown = f"{t:.1f} s" if t is not None else "not reached"
        print(f"{name:<10} {history.steps} steps in {history.seconds:.1f} s training ({wall:.1f} s with evaluation, "
              f"{history.seconds / history.steps * 1e3:.1f} ms/step); val loss {final:.4f} at the end, "
              f"≤ {TARGET_LOSS} after {shown}", flush=True)
    (ref, ref_total), (ours, _) = results["reference"], results["chapter"]
    if ours is None:
        print(f"ratio chapter/reference: undefined, the chapter's recipe did not reach {TARGET_LOSS} "
              f"(target ≤ {TARGET_RATIO}: NOT met)")
    elif ref is None:  # the reference needs more than all its training time: the ratio is below a bound
        bound = ours / ref_total
        verdict = "met" if bound <= TARGET_RATIO else "NOT met"
        print(f"time to val loss {TARGET_LOSS}: reference > {ref_total:.1f} s (not reached in its "
              f"{REFERENCE_RECIPE.max_steps} steps) | chapter {ours:.1f} s | ratio chapter/reference < {bound:.2f} "
              f"(target ≤ {TARGET_RATIO}: {verdict})")
    else:
        ratio = ours / ref
        verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
        print(f"time to val loss {TARGET_LOSS}: reference {ref:.1f} s | chapter {ours:.1f} s | "
              f"ratio chapter/reference = {ratio:.2f} (target ≤ {TARGET_RATIO}: {verdict})")

if __name__ == "__main__":
    main()
