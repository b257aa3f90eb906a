"""Multi-head self-attention, forward + backward: utils.attention against torch.nn, side by side.

Three blocks with the same weights, batch 12, 4 heads, d_model 128 and 384, T 64 and 256, float32:
- utils   utils.attention.MultiHeadAttention (fused F.scaled_dot_product_attention core)
- nn      nn.MultiheadAttention(batch_first=True), need_weights=False
- naive   the same projections with the core written as matmul → softmax → matmul
Each timing is one forward and backward of sum(out²) with respect to the input and all parameters.
Repeats are interleaved (utils, nn, naive, utils, ...) so all see the same machine state; the best
of them counts. Prints ms per step and the ratio utils/nn; target: utils ≤ 0.85 × nn at every size.

Measured on the book's 2-core CPU (torch 2.14.1, quiet machine): utils/nn 0.89-0.95, so the target is not
met. A profile explains why: at C=384, T=256 both blocks spend about 60% of the step in the same four
projection matmuls (forward and backward) and about 28% in the same fused CPU flash-attention kernel;
nn.MultiheadAttention's batch-first path adds only a few copies on top, which is all there is to win.

    python benchmarks/attention_block.py [--repeats 10] [--iters 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from utils.attention import MultiHeadAttention, from_torch_mha_state_dict  # noqa: E402

BATCH, HEADS = 12, 4
SIZES = [(128, 64), (128, 256), (384, 64), (384, 256)]  # (d_model C, length T)
TARGET = 0.85


class NaiveAttention(nn.Module):
    """The textbook block: project, split heads with view/transpose, softmax(QK^T/sqrt(D)) V, merge, project."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.in_proj(x).view(B, T, 3, self.num_heads, self.head_dim)  # (B, T, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 × (B, H, T, D)
        attn = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, dim=-1)  # (B, H, T, T)
        out = (attn @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out_proj(out)


def step_ms(fn, x: torch.Tensor, params: list[torch.Tensor], iters: int) -> float:
    """Mean ms of `iters` forward+backward steps."""
    start = time.perf_counter()
    for _ in range(iters):
        for p in params:
            p.grad = None
        x.grad = None
        fn(x).square().sum().backward()
    return (time.perf_counter() - start) / iters * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds; the best counts")
    parser.add_argument("--iters", type=int, default=3, help="steps per timing")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 = torch's default); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"batch {BATCH}, {HEADS} heads, float32, forward+backward, best of {args.repeats} × {args.iters} steps")
    print(f"{'C':>5} {'T':>5} {'utils ms':>10} {'nn ms':>10} {'naive ms':>10} {'utils/nn':>9} {'naive/nn':>9}")
    ratios = []
    for C, T in SIZES:
        ref = nn.MultiheadAttention(C, HEADS, batch_first=True)
        ours = MultiHeadAttention(C, HEADS)
        ours.load_state_dict(from_torch_mha_state_dict(ref.state_dict()), strict=True)
        naive = NaiveAttention(C, HEADS)
        naive.load_state_dict(ours.state_dict(), strict=True)
        x = torch.randn(BATCH, T, C, requires_grad=True)
        with torch.no_grad():  # same weights → same outputs (checked once, not timed)
            assert torch.allclose(ours(x)[0], ref(x, x, x, need_weights=False)[0], atol=1e-5)
            assert torch.allclose(naive(x), ref(x, x, x, need_weights=False)[0], atol=1e-5)
        blocks = {
            "utils": (lambda x: ours(x)[0], list(ours.parameters())),
            "nn": (lambda x: ref(x, x, x, need_weights=False)[0], list(ref.parameters())),
            "naive": (naive, list(naive.parameters())),
        }
        for fn, params in blocks.values():  # warm-up
            step_ms(fn, x, params, 1)
        best = {name: float("inf") for name in blocks}
        for _ in range(args.repeats):
            for name, (fn, params) in blocks.items():
                best[name] = min(best[name], step_ms(fn, x, params, args.iters))
        ratio = best["utils"] / best["nn"]
        ratios.append(ratio)
        print(f"{C:>5} {T:>5} {best['utils']:>10.2f} {best['nn']:>10.2f} {best['naive']:>10.2f} "
              f"{ratio:>9.2f} {best['naive'] / best['nn']:>9.2f}")
    verdict = "met" if max(ratios) <= TARGET else "NOT met"
    print(f"utils/nn: worst {max(ratios):.2f}, best {min(ratios):.2f} (target ≤ {TARGET} at every size: {verdict})")


if __name__ == "__main__":
    main()
