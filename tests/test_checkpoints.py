"""utils.checkpoints: the shared char-GPT checkpoint loads only with its sha256, says how to retrain when it
is missing or altered, and (slow: a full training run, about 3 minutes on a 2-core CPU) is reproduced bit for
bit by `scripts/train_char_gpt.py`'s recipe."""
from __future__ import annotations

import dataclasses
import os
import shutil

import pytest
import torch

from utils.checkpoints import CHAR_GPT, load_char_gpt, sha256_file, train_char_gpt

pytestmark = pytest.mark.skipif(not CHAR_GPT.path.is_file(), reason="the checkpoint is not in this checkout")


def test_checkpoint_loads_with_its_hash_and_is_chapter_7s_model():
    assert sha256_file(CHAR_GPT.path) == CHAR_GPT.sha256
    model, chars = load_char_gpt()
    assert len(chars) == 65 and model.config.n_layer == 4 and model.config.n_embd == 128
    assert CHAR_GPT.recipe.max_seconds is None  # a fixed number of steps, never a time budget
    assert CHAR_GPT.path.stat().st_size < 5e6  # a few MB
    assert not model.training


def test_altered_or_missing_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "x.safetensors"
    shutil.copy(CHAR_GPT.path, bad)
    with open(bad, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="expected .*retrain it with python -m scripts.train_char_gpt"):
        load_char_gpt(dataclasses.replace(CHAR_GPT, path=bad))
    with pytest.raises(FileNotFoundError, match="produce it with python -m scripts.train_char_gpt"):
        load_char_gpt(dataclasses.replace(CHAR_GPT, path=tmp_path / "missing.safetensors"))


@pytest.mark.skipif(not os.environ.get("ONEHOT_SLOW_TESTS"),
                    reason="a full training run (about 3 minutes quiet); set ONEHOT_SLOW_TESTS=1 to reproduce the checkpoint")
def test_the_script_reproduces_the_checkpoint_bit_for_bit(tmp_path):
    """SLOW (a full training run: about 3 minutes on the book's 2-core CPU, more on a busy machine)."""
    _, history, path = train_char_gpt(CHAR_GPT, tmp_path / "again.safetensors")
    assert history.steps == CHAR_GPT.recipe.max_steps
    assert sha256_file(path) == CHAR_GPT.sha256, (
        "retraining gave different bytes: a different torch version or CPU can change float rounding; if the "
        "recipe changed on purpose, run python -m scripts.train_char_gpt and update CHAR_GPT.sha256")
    assert torch.get_num_threads() >= 1


def test_loaded_model_is_moved_to_the_device_asked_for():
    # "meta" is a device every machine has: the weights must follow the `device` argument, not stay on the CPU
    model, _ = load_char_gpt(device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"} and not model.training


def test_sha256_file_follows_its_documented_recipe(tmp_path):
    """The hash written out from sha256_file's docstring: tensors sorted by name (name|dtype|shape| then the
    raw bytes, nothing for an empty tensor), then the metadata as JSON with sorted keys."""
    from safetensors.torch import save_file
    import hashlib
    import json
    b = torch.tensor([[1.5, -2.0]], dtype=torch.float32)  # bytes of 1.5 and -2.0 in little-endian float32
    e = torch.zeros(0, 3, dtype=torch.int64)  # an empty tensor: contributes its header only
    path = tmp_path / "t.safetensors"
    save_file({"b": b, "a_empty": e}, str(path), metadata={"z": "1", "step": "7"})
    h = hashlib.sha256()
    h.update(b"a_empty|torch.int64|(0, 3)|")
    h.update(b"b|torch.float32|(1, 2)|" + bytes.fromhex("0000c03f") + bytes.fromhex("000000c0"))
    h.update(json.dumps({"step": "7", "z": "1"}).encode())
    h.update(b"")  # (the json above already has its keys sorted)
    assert sha256_file(path) == h.hexdigest()
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        sha256_file(tmp_path / "absent.safetensors")


TINY = dataclasses.replace(CHAR_GPT.recipe, n_layer=1, n_head=1, n_embd=8, block_size=8, batch_size=2,
                           warmup=1, max_steps=2, eval_every=1)


@pytest.mark.skipif(not os.environ.get("ONEHOT_DATA_DIR") and not os.environ.get("CI"),
                    reason="set ONEHOT_DATA_DIR to a folder holding tinyshakespeare/input.txt")
def test_train_char_gpt_trains_the_spec_saves_its_metadata_and_restores_threads(tmp_path):
    """A 2-step run of a tiny recipe: what the file holds is what the spec and the history say."""
    import json
    from safetensors import safe_open
    from utils.checkpoints import PretrainedSpec, char_data
    from utils.data import tiny_shakespeare
    from utils.gpt import train_gpt
    before = torch.get_num_threads()
    seen = []
    spec = PretrainedSpec(path=tmp_path / "default.safetensors", sha256="", recipe=TINY, seed=3,
                          threads=before + 1)
    import utils.checkpoints as ck
    real = ck.train_gpt

    def spy(*a, **k):  # the thread count the training runs under
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    ck_train = pytest.MonkeyPatch()
    ck_train.setattr(ck, "train_gpt", spy)
    try:
        model, history, path = train_char_gpt(spec, tmp_path / "asked.safetensors")
    finally:
        ck_train.undo()
    assert seen == [before + 1] and torch.get_num_threads() == before
    assert path == tmp_path / "asked.safetensors" and path.is_file() and not spec.path.exists()
    assert history.steps == 2
    text = tiny_shakespeare(allow_download=False)
    vocab = "".join(sorted(set(text)))  # nanoGPT's char vocabulary: the distinct characters, by code point
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        stored = {name: f.get_tensor(name) for name in f.keys()}
    assert header["step"] == "2"
    meta = json.loads(header["metadata"])
    assert meta["vocab"] == vocab and len(vocab) == 65
    assert meta["recipe"] == json.loads(json.dumps(dataclasses.asdict(TINY)))
    assert meta["seed"] == 3 and meta["threads"] == before + 1
    assert meta["val_loss"] == history.last_eval["val_loss"] and 3.0 < meta["val_loss"] < 5.0  # ~ln 65 = 4.17
    for name, t in stored.items():
        torch.testing.assert_close(t, model.state_dict()[name], rtol=0, atol=0)
    # the run is train_gpt's on chapter 7's split with the spec's seed: the same weights
    _, train_ids, val_ids = char_data()
    n = int(len(text) * 0.9)
    assert len(train_ids) == n and len(val_ids) == len(text) - n
    torch.set_num_threads(before + 1)  # the thread count changes float rounding (module docstring)
    try:
        ref, _ = train_gpt(TINY, train_ids, val_ids, 65, seed=3)
    finally:
        torch.set_num_threads(before)
    for name, t in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], t, rtol=0, atol=0)


def test_train_char_gpt_trains_on_the_cpu_whatever_the_machine(monkeypatch, tmp_path):
    """The checkpoint is reproduced bit for bit only on the CPU: train_gpt must be told so, not left to pick a GPU."""
    import utils.checkpoints as ck

    seen = {}

    class Stop(Exception):
        pass

    def fake_train_gpt(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(ck, "char_data", lambda: (list("ab"), torch.zeros(10, dtype=torch.long), torch.zeros(10, dtype=torch.long)))
    monkeypatch.setattr(ck, "train_gpt", fake_train_gpt)
    with pytest.raises(Stop):
        train_char_gpt(path=tmp_path / "x.safetensors")
    assert seen["device"] == "cpu" and seen["seed"] == CHAR_GPT.seed


# ----------------------------------------------------------------------------- chapter 9's CLIP (chapter 12)

def test_shapes_clip_loads_with_its_hash_and_is_chapter_9s_cpu_model():
    from utils.checkpoints import SHAPES_CLIP, load_shapes_clip, shapes_clip_config
    assert sha256_file(SHAPES_CLIP.path) == SHAPES_CLIP.sha256
    model = load_shapes_clip()
    cfg = shapes_clip_config()
    assert model.config == cfg and cfg.vision.patch_size == 8 and cfg.vision.image_size == 32
    assert (SHAPES_CLIP.steps, SHAPES_CLIP.batch_size, SHAPES_CLIP.lr, SHAPES_CLIP.train_images) == (2000, 128, 2e-3, 10_000)
    assert SHAPES_CLIP.path.stat().st_size < 8e6  # float16: a few MB
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_shapes_clip_reads_the_captioned_shapes():
    """The loaded CLIP is a trained one: it matches fresh renders to their own complete captions far above chance."""
    from utils.checkpoints import load_shapes_clip
    from utils.shapes import captioned_shapes
    from utils.text import CLIPTokenizer
    model, data = load_shapes_clip(), captioned_shapes(64, seed=99, pairs=0.0)
    ids = CLIPTokenizer()(data.captions(0), context_length=32)
    with torch.no_grad():
        logits, _ = model(data.pixels(), ids[:, : int(ids.argmax(1).max()) + 1])
    accuracy = (logits.argmax(1) == torch.arange(64)).float().mean().item()
    assert accuracy > 0.3, accuracy  # chance: 1/64


def test_altered_or_missing_shapes_clip_is_refused(tmp_path):
    from utils.checkpoints import SHAPES_CLIP, load_shapes_clip
    bad = tmp_path / "x.safetensors"
    shutil.copy(SHAPES_CLIP.path, bad)
    with open(bad, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="expected .*retrain it with python -m scripts.train_shapes_clip"):
        load_shapes_clip(dataclasses.replace(SHAPES_CLIP, path=bad))
    with pytest.raises(FileNotFoundError, match="produce it with python -m scripts.train_shapes_clip"):
        load_shapes_clip(dataclasses.replace(SHAPES_CLIP, path=tmp_path / "missing.safetensors"))


def test_sha256_file_hashes_zero_dimensional_half_tensors(tmp_path):
    """A 0-d float16 tensor (CLIP's logit scale) is hashed by its two bytes, as a 1-element tensor would be."""
    from safetensors.torch import save_file
    import hashlib
    import json
    path = tmp_path / "s.safetensors"
    save_file({"s": torch.tensor(1.0, dtype=torch.float16)}, str(path))
    h = hashlib.sha256()
    h.update(b"s|torch.float16|()|" + bytes.fromhex("003c"))
    h.update(json.dumps({}).encode())
    assert sha256_file(path) == h.hexdigest()


@pytest.mark.skipif(not os.environ.get("ONEHOT_SLOW_TESTS"),
                    reason="a full training run (about 3 minutes); set ONEHOT_SLOW_TESTS=1 to reproduce the checkpoint")
def test_the_script_reproduces_the_shapes_clip_bit_for_bit(tmp_path):
    from utils.checkpoints import SHAPES_CLIP, train_shapes_clip
    _, history, path = train_shapes_clip(SHAPES_CLIP, tmp_path / "again.safetensors")
    assert history.steps == SHAPES_CLIP.steps
    assert sha256_file(path) == SHAPES_CLIP.sha256, (
        "retraining gave different bytes: a different torch version or CPU can change float rounding; if the "
        "recipe changed on purpose, run python -m scripts.train_shapes_clip and update SHAPES_CLIP.sha256")
