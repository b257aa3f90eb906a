"""Train chapter 9's CLIP (its CPU recipe, 2,000 steps instead of 500) and save it as the checkpoint chapter 12 uses.

    python -m scripts.train_shapes_clip            # writes checkpoints/clip_shapes.safetensors
    python -m scripts.train_shapes_clip --out x.safetensors

The recipe, seed and thread count are those of `utils.checkpoints.SHAPES_CLIP`, so the run is reproducible:
on the same torch version and CPU the file has the sha256 written there (the script prints both).
About 3 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import time

from utils.checkpoints import SHAPES_CLIP, sha256_file, train_shapes_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help=f"output file (default {SHAPES_CLIP.path.name} in checkpoints/)")
    args = parser.parse_args()
    start = time.perf_counter()
    _, history, path = train_shapes_clip(SHAPES_CLIP, args.out)
    digest = sha256_file(path)
    print(f"{history.steps} steps in {time.perf_counter() - start:.0f} s, loss {history.last_loss:.4f}")
    print(f"{path}: sha256 {digest} ({'matches' if digest == SHAPES_CLIP.sha256 else 'differs from'} "
          f"utils.checkpoints.SHAPES_CLIP.sha256)")


if __name__ == "__main__":
    main()
