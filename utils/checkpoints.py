"""Trained checkpoints shared between chapters: produced by a script from the book's own recipe, small,
deterministic, and checked by sha256 before they are loaded.

`CHAR_GPT` is chapter 7's character-level GPT on Tiny Shakespeare (recipe `utils.gpt.SHAKESPEARE_CPU`,
all its steps, no time cap), which chapter 11 compresses. Retrain it with

    python -m scripts.train_char_gpt            # about 3 minutes on a 2-core CPU; rewrites the file

Training is made reproducible by a fixed seed and a fixed number of torch threads (the order in which a
matrix product adds its terms depends on how the work is split between threads, so a different thread
count gives a slightly different float result, and after 1,800 steps different bytes). The sha256 of
the file's tensors and metadata (`sha256_file`) is written here; `load_char_gpt` refuses a file whose hash differs, and
`tests/test_checkpoints.py` retrains the model and compares the hash.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .data import tiny_shakespeare, train_val_split
from .gpt import GPT, SHAKESPEARE_CPU, Recipe, train_gpt
from .text import CharVocab
from .train import History, load_checkpoint, save_checkpoint

__all__ = ["PretrainedSpec", "CHAR_GPT", "char_data", "train_char_gpt", "load_char_gpt", "sha256_file"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PretrainedSpec:
    """A checkpoint in the repository: where it is, its sha256, and how it was made."""

    path: Path
    sha256: str
    recipe: Recipe
    seed: int
    threads: int  # torch.set_num_threads during training: part of what makes the run reproducible


# Chapter 7's recipe with its wall-time cap removed: always exactly max_steps steps.
CHAR_GPT = PretrainedSpec(
    path=ROOT / "checkpoints" / "char_gpt_shakespeare.safetensors",
    sha256="028b3cc55c5d71dff83d402517ab4e699de0e4805942798f9035771dc50236c9",
    recipe=dataclasses.replace(SHAKESPEARE_CPU, max_seconds=None),
    seed=0,
    threads=2,
)


def sha256_file(path: str | Path) -> str:
    """sha256 of what a safetensors checkpoint holds, in a canonical order: every tensor (sorted by name:
    name, dtype, shape, bytes) and the metadata (as JSON with sorted keys). Not the file's own bytes: the
    safetensors writer puts its metadata header in hash-map order, which changes from run to run, so two
    identical trainings give files that differ in the header only."""
    h = hashlib.sha256()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            for name in sorted(f.keys()):
                t = f.get_tensor(name).contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a readable safetensors file ({err}); restore it from git or retrain it "
                         "with python -m scripts.train_char_gpt") from err
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def char_data() -> tuple[CharVocab, torch.Tensor, torch.Tensor]:
    """Chapter 7's data: the character vocabulary of Tiny Shakespeare and the train / validation ids
    (the first 90% of the text / the rest)."""
    text = tiny_shakespeare()
    train_text, val_text = train_val_split(text, 0.9)
    chars = CharVocab.from_text(text)
    return chars, chars.encode(train_text), chars.encode(val_text)


def train_char_gpt(spec: PretrainedSpec = CHAR_GPT, path: str | Path | None = None) -> tuple[GPT, History, Path]:
    """Train the checkpoint's model on the CPU exactly as `spec` says and save it to `path` (default:
    `spec.path`). Returns the model, its History and the path. Restores torch's thread count after."""
    chars, train_ids, val_ids = char_data()
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        model, history = train_gpt(spec.recipe, train_ids, val_ids, len(chars), seed=spec.seed, device="cpu")
    finally:
        torch.set_num_threads(threads)
    out = save_checkpoint(path or spec.path, model, step=history.steps,
                          metadata={"vocab": "".join(chars.itos), "recipe": dataclasses.asdict(spec.recipe),
                                    "seed": spec.seed, "threads": spec.threads,
                                    "val_loss": history.last_eval["val_loss"]})
    return model, history, Path(out)


def load_char_gpt(spec: PretrainedSpec = CHAR_GPT, device: str | torch.device = "cpu",
                  check_hash: bool = True) -> tuple[GPT, CharVocab]:
    """The trained GPT of `spec` (in eval mode, on `device`) and its character vocabulary. The file's
    sha256 must equal `spec.sha256`; a missing or different file raises an error that says how to retrain."""
    path = Path(spec.path)
    retrain = "python -m scripts.train_char_gpt (about 3 minutes on a CPU)"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; produce it with {retrain}")
    if check_hash:
        digest = sha256_file(path)
        if digest != spec.sha256:
            raise ValueError(f"{path} has sha256 {digest}, expected {spec.sha256}: the file is corrupt or from "
                             f"another run; restore it from git or retrain it with {retrain}")
    chars, _, _ = char_data()
    model = GPT(spec.recipe.gpt_config(len(chars)))
    info = load_checkpoint(path, model)
    if info.metadata.get("vocab") != "".join(chars.itos):
        raise ValueError(f"{path} was trained on another character vocabulary than Tiny Shakespeare's")
    return model.to(device).eval(), chars
