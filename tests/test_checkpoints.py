"""utils.checkpoints: the shared char-GPT and CLIP checkpoints load only with their sha256, say how to retrain
when missing or altered, and (slow: a full training run each, about 3 minutes on a 2-core CPU) are reproduced bit
for bit by their scripts' recipes; the training functions, run in miniature, do what their docstrings say."""
from __future__ import annotations

import dataclasses
import os
import shutil

import pytest
import torch

from utils.checkpoints import CHAR_GPT, load_char_gpt, sha256_file, train_char_gpt

pytestmark = pytest.mark.skipif(not CHAR_GPT.path.is_file(), reason="the checkpoint is not in this checkout")


def _threads_seen(owner, name, run):
    """run() with owner.<name> wrapped to record the thread count each call of it runs under:
    (run's result, the counts)."""
    real, seen = getattr(owner, name), []

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    patch = pytest.MonkeyPatch()
    patch.setattr(owner, name, spy)
    try:
        return run(), seen
    finally:
        patch.undo()


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
    spec = PretrainedSpec(path=tmp_path / "default.safetensors", sha256="", recipe=TINY, seed=3,
                          threads=before + 1)
    import utils.checkpoints as ck
    (model, history, path), seen = _threads_seen(ck, "train_gpt",
                                                 lambda: train_char_gpt(spec, tmp_path / "asked.safetensors"))
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
    # chance: 1/64. The checkpoint reads 58 of these 64; its weights in a vision tower with one 64-wide head
    # instead of four 16-wide ones (CLIPConfig.small: heads 16 wide everywhere; same weight shapes) read 33.
    assert accuracy > 0.75, accuracy


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


def test_loaded_shapes_clip_is_moved_to_the_device_asked_for():
    from utils.checkpoints import load_shapes_clip
    model = load_shapes_clip(device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"} and not model.training


def test_check_hash_false_loads_a_checkpoint_whose_hash_differs():
    """check_hash=False skips the sha256 check (and only that: the file must still exist); the default checks."""
    from utils.checkpoints import SHAPES_CLIP, load_shapes_clip
    wrong_gpt = dataclasses.replace(CHAR_GPT, sha256="0" * 64)
    wrong_clip = dataclasses.replace(SHAPES_CLIP, sha256="0" * 64)
    with pytest.raises(ValueError, match="expected 0{64}"):
        load_char_gpt(wrong_gpt)
    with pytest.raises(ValueError, match="expected 0{64}"):
        load_shapes_clip(wrong_clip)
    model, chars = load_char_gpt(wrong_gpt, check_hash=False)
    assert len(chars) == 65 and not model.training
    clip = load_shapes_clip(wrong_clip, check_hash=False)
    assert not clip.training and {p.dtype for p in clip.parameters()} == {torch.float32}


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


# ----------------------------------------------------------------------------- train_shapes_clip in miniature

def _tiny_clip_spec(path, **changes):
    """A ShapesClipSpec small enough to train in a fraction of a second: 2 steps of 4 of 16 images."""
    from utils.checkpoints import ShapesClipSpec
    return ShapesClipSpec(path=path, sha256="", **{**dict(steps=2, batch_size=4, train_images=16, seed=3,
                                                            threads=torch.get_num_threads()), **changes})


def test_shapes_clip_batches_are_seeded_draws_of_images_with_one_of_their_own_captions(tmp_path):
    """get_batch(step): batch_size images of captioned_shapes(train_images, seed=0) drawn by a torch Generator
    seeded with spec.seed (successive calls continue it), and the CLIP ids (32 positions) of one of each image's
    own captions, cut right after the longest caption's end-of-text token; the captions are drawn from the seed too."""
    from utils.checkpoints import _shapes_clip_batches
    from utils.shapes import ONE_SHAPE_TEMPLATES, TWO_SHAPE_TEMPLATES, caption, captioned_shapes
    from utils.text import CLIPTokenizer
    spec = _tiny_clip_spec(tmp_path / "unused.safetensors", batch_size=8)
    data, tokenizer, g = captioned_shapes(16, seed=0), CLIPTokenizer(), torch.Generator().manual_seed(3)
    get_batch = _shapes_clip_batches(spec)
    batches = [get_batch(step) for step in range(3)]
    complete = 0  # rows holding an image's complete description (template 0)
    for images, ids in batches:
        index = torch.randint(16, (8,), generator=g)
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
        torch.testing.assert_close(images, data.pixels(index), rtol=0, atol=0)
        assert ids.dtype == torch.int64 and ids.shape[0] == 8
        width = ids.shape[1]
        assert (ids[:, -1] == tokenizer.eot_token_id).any()  # no column after the longest caption's end token
        for row, i in zip(ids, index.tolist()):
            scene = data.scenes[i]
            n = len(ONE_SHAPE_TEMPLATES if len(scene) == 1 else TWO_SHAPE_TEMPLATES)
            own = tokenizer([caption(scene, t) for t in range(n)], context_length=32)  # (n, 32)
            # one of its own captions, with nothing but padding cut off (its end token kept)
            assert any(torch.equal(full[:width], row) and not full[width:].any() for full in own), (i, row)
            complete += torch.equal(own[0, :width], row)
    assert complete < 24  # random templates, not always the complete description
    again = _shapes_clip_batches(spec)
    for step, (images, ids) in enumerate(batches):
        images2, ids2 = again(step)
        assert torch.equal(images2, images) and torch.equal(ids2, ids)  # the same spec draws the same batches


@pytest.fixture(scope="module")
def tiny_clip_run(tmp_path_factory):
    """train_shapes_clip of a tiny spec, saved to a path of its own, with the thread counts seen by the training
    (utils.train.train, which train_shapes_clip imports when it runs) and after it."""
    import types
    import utils.train as ut
    from utils.checkpoints import train_shapes_clip
    tmp = tmp_path_factory.mktemp("clip")
    before = torch.get_num_threads()
    spec = _tiny_clip_spec(tmp / "default.safetensors", threads=before + 1)
    (model, history, path), seen = _threads_seen(ut, "train", lambda: train_shapes_clip(spec, tmp / "asked.safetensors"))
    return types.SimpleNamespace(spec=spec, model=model, history=history, path=path, asked=tmp / "asked.safetensors",
                                 seen=seen, before=before, after=torch.get_num_threads())


def test_train_shapes_clip_saves_float16_weights_its_recipe_and_loss_where_asked(tiny_clip_run):
    import json
    from safetensors import safe_open
    from utils.checkpoints import load_shapes_clip
    run = tiny_clip_run
    assert run.seen == [run.before + 1] and run.after == run.before  # spec.threads threads, then restored
    assert run.path == run.asked and run.path.is_file() and not run.spec.path.exists()
    assert run.history.steps == 2 and run.history.stopped_by == "max_steps"
    with safe_open(str(run.path), framework="pt") as f:
        header = f.metadata()
        stored = {name: f.get_tensor(name) for name in f.keys()}
    assert header["step"] == "2"
    recipe = {"steps": 2, "batch_size": 4, "lr": 2e-3, "train_images": 16, "seed": 3, "threads": run.before + 1}
    assert json.loads(header["metadata"]) == {"recipe": recipe, "loss": run.history.last_loss, "dtype": "float16"}
    assert 0.5 < run.history.last_loss < 3.0  # about ln 4 = 1.39 for 4 pairs
    # the returned model: float32, eval mode; the file: the same weights rounded to float16
    model = run.model
    assert not model.training and {p.dtype for p in model.parameters()} == {torch.float32}
    weights = model.state_dict()
    assert set(stored) == set(weights) and {t.dtype for t in stored.values()} == {torch.float16}
    for name, t in stored.items():
        torch.testing.assert_close(t, weights[name].half(), rtol=0, atol=0)
    loaded = load_shapes_clip(dataclasses.replace(run.spec, path=run.path), check_hash=False)  # sha256 "": no hash
    for name, t in loaded.state_dict().items():
        torch.testing.assert_close(t, weights[name].half().float(), rtol=0, atol=0)


def test_train_shapes_clip_is_deterministic_for_a_seed(tmp_path):
    """The same spec trains the same weights (its seed draws the initial weights, the images and the captions);
    another seed, other weights. (The current thread count: a second thread would be slow on a busy machine.)"""
    from utils.checkpoints import train_shapes_clip
    spec = _tiny_clip_spec(tmp_path / "default.safetensors")
    first = train_shapes_clip(spec, tmp_path / "first.safetensors")[0].state_dict()
    same = train_shapes_clip(spec, tmp_path / "same.safetensors")[0].state_dict()
    for name, t in same.items():
        torch.testing.assert_close(t, first[name], rtol=0, atol=0)
    other = train_shapes_clip(dataclasses.replace(spec, seed=4), tmp_path / "other.safetensors")[0].state_dict()
    assert any(not torch.equal(t, first[name]) for name, t in other.items())


def test_train_shapes_clip_runs_the_documented_recipe_on_the_cpu(monkeypatch, tmp_path):
    """What train_shapes_clip hands utils.train.train (stopped there): the ShapesClipSpec docstring's recipe (AdamW
    at spec.lr with weight decay on the matrices, a tenth of the steps of warm-up then cosine, gradients clipped
    at 1, the logit scale clamped after every step), spec.steps steps, on the CPU under spec.threads threads."""
    import inspect
    import math
    import torch.nn.functional as F
    import utils.train as ut
    from utils.checkpoints import train_shapes_clip
    from utils.shapes import captioned_shapes
    before = torch.get_num_threads()
    spec = _tiny_clip_spec(tmp_path / "x.safetensors", steps=50, lr=1e-3, threads=before + 1)
    real_train, seen = ut.train, {}

    class Stop(Exception):
        pass

    def fake_train(*args, **kwargs):
        seen.update(inspect.signature(real_train).bind(*args, **kwargs).arguments, threads=torch.get_num_threads())
        raise Stop

    monkeypatch.setattr(ut, "train", fake_train)
    with pytest.raises(Stop):
        train_shapes_clip(spec)
    assert seen["threads"] == before + 1 and torch.get_num_threads() == before  # restored after an error too
    assert not spec.path.exists()
    assert torch.device(seen["device"]) == torch.device("cpu")  # bit-for-bit reproduction: never a GPU
    config, model, optimizer = seen["config"], seen["model"], seen["optimizer"]
    assert (config.max_steps, config.grad_clip, config.progress, config.max_seconds) == (50, 1.0, False, None)
    # AdamW with torch's fused kernel (it rounds differently from the for-each one: the checkpoint's bytes
    # depend on it), every parameter once, weight decay on the matrices only
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    groups = optimizer.param_groups
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    assert all((g["weight_decay"] > 0) == (p.dim() >= 2) for g in groups for p in g["params"])
    # the lr of update s: spec.lr × warmup_cosine's documented multiplier, warm-up 50 // 10 = 5, end ratio 0.1
    warmup, total, r = 5, 50, 0.1

    def multiplier(s):
        if s < warmup:
            return (s + 1) / warmup
        return r + (1 - r) * (1 + math.cos(math.pi * min(1.0, (s - warmup) / (total - warmup)))) / 2

    scheduler = seen["scheduler"]
    assert scheduler.optimizer is optimizer
    for s in range(total + 3):
        assert [g["lr"] for g in groups] == pytest.approx([1e-3 * multiplier(s)] * len(groups)), s
        optimizer.step()  # no gradients yet: nothing moves
        scheduler.step()
    # after every step: the logit scale clamped to [0, ln 100]
    with torch.no_grad():
        for value, clamped in ((10.0, math.log(100)), (-2.0, 0.0), (1.5, 1.5)):
            model.logit_scale.fill_(value)
            seen["after_step"]()
            assert model.logit_scale.item() == pytest.approx(clamped)
    # the batches: spec's (its seed draws the images); the loss: CLIP's symmetric cross-entropy, written out
    images, ids = seen["batches"](0)
    index = torch.randint(16, (4,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(images, captioned_shapes(16, seed=0).pixels(index))
    loss = seen["loss_fn"](model, (images, ids))
    logits_per_image, logits_per_text = model(images, ids)
    labels = torch.arange(4)
    torch.testing.assert_close(loss, (F.cross_entropy(logits_per_image, labels)
                                      + F.cross_entropy(logits_per_text, labels)) / 2)
