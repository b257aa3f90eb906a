"""What the decoding benchmarks share: their command line (rounds, prompt and new tokens, threads)."""
from __future__ import annotations

import argparse

import torch


def decoding_args(doc: str, new_tokens: int) -> argparse.Namespace:
    """Parse --repeats, --new-tokens, --prompt-tokens and --threads (0 = torch's default), apply the
    thread count, and seed torch with 0 so every run builds the same random model."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best counts")
    parser.add_argument("--new-tokens", type=int, default=new_tokens)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return args
