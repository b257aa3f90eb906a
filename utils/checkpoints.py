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

`SHAPES_CLIP` is chapter 9's CLIP with its CPU recipe (a 4-layer ViT with 8-pixel patches and the 3-layer text
tower, batches of 128 captioned shapes) trained four times as long, 2,000 steps instead of 500, which chapter 12
uses to rerank its drawings and whose text tower conditions its diffusion model (with 500 steps, CLIP's best of
16 of chapter 12's GPT drawings was right about 80% of the time in one run; with 2,000 steps, 86%). Its weights are stored in float16 (the text tower's 49,408-token embedding is
most of them: 7 MB instead of 14) and loaded as float32. Retrain it with

    python -m scripts.train_shapes_clip         # about 3 minutes on a 2-core CPU; rewrites the file
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

__all__ = ["PretrainedSpec", "CHAR_GPT", "char_data", "train_char_gpt", "load_char_gpt", "sha256_file",
           "ShapesClipSpec", "SHAPES_CLIP", "shapes_clip_config", "train_shapes_clip", "load_shapes_clip"]

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
        with safe_open(str(path), framework="pt") as f:  # onto the CPU
            meta = f.metadata() or {}
            for name in sorted(f.keys()):
                t = f.get_tensor(name).contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d and empty tensors too
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a readable safetensors file ({err}); restore it from git or retrain it "
                         "with its script (python -m scripts.train_char_gpt or scripts.train_shapes_clip)") from err
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def _checked_file(path: str | Path, sha256: str, retrain: str, check_hash: bool) -> Path:
    """`path` as a Path, after checking that it exists and (with `check_hash`) that its sha256 is `sha256`;
    otherwise an error that says how to get the file back (`retrain`: the command)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; produce it with {retrain}")
    if check_hash:
        digest = sha256_file(path)
        if digest != sha256:
            raise ValueError(f"{path} has sha256 {digest}, expected {sha256}: the file is corrupt or from "
                             f"another run; restore it from git or retrain it with {retrain}")
    return path


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
    path = _checked_file(spec.path, spec.sha256, "python -m scripts.train_char_gpt (about 3 minutes on a CPU)",
                         check_hash)
    chars, _, _ = char_data()
    model = GPT(spec.recipe.gpt_config(len(chars)))
    info = load_checkpoint(path, model)
    if info.metadata.get("vocab") != "".join(chars.itos):
        raise ValueError(f"{path} was trained on another character vocabulary than Tiny Shakespeare's")
    return model.to(device).eval(), chars


# ----------------------------------------------------------------------------- chapter 9's CLIP, for chapter 12

@dataclass(frozen=True)
class ShapesClipSpec:
    """Chapter 9's CLIP on the captioned shapes, as a checkpoint: where it is, its sha256, and its recipe
    (chapter 9's on a CPU, with `steps`: `train_images` scenes of `utils.shapes.captioned_shapes(n, seed=0)`, one random
    caption per image per step, AdamW with weight decay on the matrices, warm-up for a tenth of the steps
    then cosine, gradients clipped at 1, the logit scale clamped after every step)."""

    path: Path
    sha256: str
    steps: int = 2000  # chapter 9 trains 500
    batch_size: int = 128
    lr: float = 2e-3
    train_images: int = 10_000
    seed: int = 0
    threads: int = 1


SHAPES_CLIP = ShapesClipSpec(
    path=ROOT / "checkpoints" / "clip_shapes.safetensors",
    sha256="9d41dfbba0f0680073a620013e441c8bba4d65ce38ed91ac284ea963025d844e",
)


def shapes_clip_config():
    """Chapter 9's CPU CLIP: `CLIPConfig.small()`'s ViT with 8-pixel patches (16 patches of a 32×32 image)."""
    from .clip import CLIPConfig, CLIPVisionConfig
    return CLIPConfig.small(vision=CLIPVisionConfig(image_size=32, layers=4, width=64, patch_size=8, head_width=16))


def _shapes_clip_batches(spec: ShapesClipSpec):
    import numpy as np

    from .shapes import captioned_shapes
    from .text import CLIPTokenizer
    data, tokenizer, rows = captioned_shapes(spec.train_images, seed=0), CLIPTokenizer(), {}
    images_g, captions_g = torch.Generator().manual_seed(spec.seed), np.random.default_rng(spec.seed)

    def ids(captions):  # (B, T) CLIP ids, cut after the longest caption's end-of-text token
        for c in captions:
            if c not in rows:
                rows[c] = tokenizer(c, context_length=32)[0]
        out = torch.stack([rows[c] for c in captions])
        return out[:, : int(out.argmax(dim=1).max()) + 1]

    def get_batch(step):
        index = torch.randint(len(data), (spec.batch_size,), generator=images_g)
        return data.pixels(index), ids(data.random_captions(index, captions_g))
    return get_batch


def train_shapes_clip(spec: ShapesClipSpec = SHAPES_CLIP, path: str | Path | None = None):
    """Train chapter 9's CPU CLIP exactly as `spec` says (on the CPU, `spec.threads` threads) and save it in
    float16 to `path` (default `spec.path`). Returns the trained float32 model, its History and the path."""
    from .clip import CLIP, clip_loss
    from .train import TrainConfig, adamw, train, warmup_cosine
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        torch.manual_seed(spec.seed)
        model = CLIP(shapes_clip_config())
        optimizer = adamw(model, spec.lr, fused=True)
        history = train(model, _shapes_clip_batches(spec), lambda m, b: clip_loss(*m(*b)), optimizer,
                        scheduler=warmup_cosine(optimizer, spec.steps // 10, spec.steps),
                        config=TrainConfig(max_steps=spec.steps, grad_clip=1.0, progress=False), device="cpu",
                        after_step=model.clamp_logit_scale_)
    finally:
        torch.set_num_threads(threads)
    recipe = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("path", "sha256")}
    half = CLIP(shapes_clip_config())
    half.load_state_dict(model.state_dict())
    out = save_checkpoint(path or spec.path, half.half(), step=history.steps,
                          metadata={"recipe": recipe, "loss": history.last_loss, "dtype": "float16"})
    return model.eval(), history, Path(out)


def load_shapes_clip(spec: ShapesClipSpec = SHAPES_CLIP, device: str | torch.device = "cpu",
                     check_hash: bool = True):
    """Chapter 9's trained CPU CLIP (float32, eval mode, frozen, on `device`). The file's sha256 must equal
    `spec.sha256`; a missing or different file raises an error that says how to retrain."""
    from .clip import CLIP
    path = _checked_file(spec.path, spec.sha256, "python -m scripts.train_shapes_clip (about 3 minutes on a CPU)",
                         check_hash)
    model = CLIP(shapes_clip_config()).half()
    load_checkpoint(path, model)
    return model.float().to(device).eval().requires_grad_(False)
