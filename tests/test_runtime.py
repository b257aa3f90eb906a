import random

import numpy as np
import pytest
import torch

from utils.runtime import pick_device, seed_everything, setup, time_per_call


def test_seed_everything_repeats_every_generator():
    seed_everything(123)
    first = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(123)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1]
    torch.testing.assert_close(first[2], second[2])


def test_setup_prints_device_and_returns_it(capsys):
    device = setup(seed=1)
    out = capsys.readouterr().out
    assert isinstance(device, torch.device) and f"device: " in out and "seed: 1" in out


def test_pick_device_honours_environment(monkeypatch):
    monkeypatch.setenv("ONEHOT_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="machine has CUDA")
def test_requesting_missing_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        pick_device("cuda")


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_bad_seed_rejected(bad):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        seed_everything(bad)


def test_time_per_call_counts_calls_and_measures_time():
    import time

    calls = []
    seconds = time_per_call(lambda: (calls.append(1), time.sleep(0.01)), repeats=3, warmup=2)
    assert len(calls) == 5 and 0.009 < seconds < 0.5
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_per_call(lambda: None, repeats=0)
