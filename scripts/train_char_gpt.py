"""Train chapter 7's character-level GPT and save it as the checkpoint chapter 11 compresses.

    python -m scripts.train_char_gpt            # writes checkpoints/char_gpt_shakespeare.safetensors
    python -m scripts.train_char_gpt --out x.safetensors

The recipe, seed and thread count are those of `utils.checkpoints.CHAR_GPT`, so the run is reproducible:
on the same torch version and CPU the file has the sha256 written there (the script prints both).
About 3 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import time

from utils.checkpoints import CHAR_GPT, sha256_file, train_char_gpt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help=f"output file (default {CHAR_GPT.path.name} in checkpoints/)")
    args = parser.parse_args()
    start = time.perf_counter()
    _, history, path = train_char_gpt(CHAR_GPT, args.out)
    digest = sha256_file(path)
    print(f"{history.steps} steps in {time.perf_counter() - start:.0f} s, val loss {history.last_eval['val_loss']:.4f}")
    print(f"{path}: sha256 {digest} ({'matches' if digest == CHAR_GPT.sha256 else 'differs from'} "
          f"utils.checkpoints.CHAR_GPT.sha256)")


if __name__ == "__main__":
    main()
