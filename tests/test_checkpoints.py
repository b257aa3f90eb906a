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
