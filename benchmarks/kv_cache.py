"""Generation with and without the key/value cache: utils.gpt.generate, side by side.

A GPT of chapter 7's CPU size (6 layers, 6 heads, 384 dims, context 512; random weights: speed does not
depend on what the weights say) continues a 16-token prompt by 256 tokens, greedily, once with
`use_cache=True` (the prompt runs once, then each step feeds only the new token and appends its keys and
values) and once with `use_cache=False` (each step reruns the whole sequence). Both must produce the same
tokens; this script checks it. Runs are interleaved (cached, uncached, cached, ...) and the best counts.
Prints tokens/s of each and the speed-up; target: ≥ 3× with the cache.

    python benchmarks/kv_cache.py [--repeats 3] [--new-tokens 256] [--threads 0]
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import decoding_args  # noqa: E402
from utils.gpt import GPT, GPTConfig, generate  # noqa: E402

TARGET = 3.0


def main() -> None:
    args = decoding_args(__doc__, new_tokens=256)
    config = GPTConfig(vocab_size=65, block_size=512, n_layer=6, n_head=6, n_embd=384)
    if args.prompt_tokens + args.new_tokens > config.block_size:
        raise SystemExit(f"prompt + new tokens must fit the context ({config.block_size}) for a fair comparison")
    model = GPT(config).eval()
    prompt = torch.randint(config.vocab_size, (1, args.prompt_tokens))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"GPT {config.n_layer}L/{config.n_head}H/{config.n_embd}C ({model.num_params() / 1e6:.1f}M parameters), "
          f"{args.prompt_tokens}-token prompt + {args.new_tokens} new tokens, greedy, best of {args.repeats}")
    best = {True: float("inf"), False: float("inf")}
    outputs = {}
    for _ in range(args.repeats):
        for use_cache in (True, False):
            start = time.perf_counter()
            outputs[use_cache] = generate(model, prompt, args.new_tokens, greedy=True, use_cache=use_cache)
            best[use_cache] = min(best[use_cache], time.perf_counter() - start)
    if not torch.equal(outputs[True], outputs[False]):
        raise SystemExit("the cached and uncached generations differ: the cache is wrong")
    rate = {k: args.new_tokens / v for k, v in best.items()}
    speedup = rate[True] / rate[False]
    print(f"{'with cache':>14}: {rate[True]:8.1f} tokens/s ({best[True]:.2f} s)")
    print(f"{'without cache':>14}: {rate[False]:8.1f} tokens/s ({best[False]:.2f} s)")
    print(f"speed-up {speedup:.1f}× (target ≥ {TARGET:.0f}×: {'met' if speedup >= TARGET else 'NOT met'}); "
          "identical tokens: yes")


if __name__ == "__main__":
    main()
