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


def test_bytes_saved_for_backward_counts_what_autograd_keeps():
    from torch import nn

    from utils.runtime import bytes_saved_for_backward
    from utils.vit import patchify

    torch.manual_seed(0)
    w = torch.randn(8, 5, requires_grad=True)
    x = torch.randn(4, 8)
    # the matmul keeps x and w (both excluded); exp keeps its own output, 4 x 5 float32
    assert bytes_saved_for_backward(lambda t: (t @ w).exp(), x, [w]) == 4 * 5 * 4
    # x needs no gradient, so the matmul keeps only x, not w; once x needs one, w is kept too (and counted)
    assert bytes_saved_for_backward(lambda t: (t @ w).exp(), x.requires_grad_()) == 4 * 5 * 4 + w.numel() * 4
    x.requires_grad_(False)
    with torch.no_grad():
        assert bytes_saved_for_backward(lambda t: (t @ w).exp(), x, [w]) == 0  # no graph, nothing kept
    # chapter 8's claim: a patch embedding as unfold + Linear keeps a copy of the images, the convolution none
    images = torch.rand(2, 3, 32, 32)
    conv, linear = nn.Conv2d(3, 16, kernel_size=8, stride=8), nn.Linear(3 * 8 * 8, 16)
    assert bytes_saved_for_backward(conv, images, conv.parameters()) == 0
    assert bytes_saved_for_backward(lambda im: linear(patchify(im, 8)), images,
                                    linear.parameters()) == images.numel() * 4
    with pytest.raises(TypeError, match="must be a tensor"):
        bytes_saved_for_backward(conv, [images])


def _draws(seed: int):
    torch.manual_seed(seed)
    return (torch.rand(2).tolist(), torch.rand(2, generator=torch.Generator().manual_seed(seed)).tolist(),
            np.random.default_rng(seed).random(), random.Random(seed).random())


def test_shift_seeds_moves_every_seeder_and_zero_restores_them():
    from utils.runtime import shift_seeds
    plain_0, plain_1 = _draws(0), _draws(1)
    try:
        shift_seeds(1)
        assert _draws(0) == plain_1            # seed 0 now draws what seed 1 drew
        np.random.seed(0)
        a = np.random.rand()
        random.seed(0)
        b = random.random()
    finally:
        shift_seeds(0)
    np.random.seed(1)
    random.seed(1)
    assert (a, b) == (np.random.rand(), random.random())
    assert _draws(0) == plain_0 and torch.Generator is torch._C.Generator
    with pytest.raises(ValueError, match="non-negative"):
        shift_seeds(-1)


def test_setup_reads_the_seed_shift_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("ONEHOT_SEED_SHIFT", "2")
    try:
        setup(seed=0)
        shifted = torch.rand(3)
        assert "shifted by 2" in capsys.readouterr().out
    finally:
        monkeypatch.delenv("ONEHOT_SEED_SHIFT")
        setup(seed=2)  # no shift any more: restores the seeders, and seed 2 draws what 0 + 2 drew
    torch.testing.assert_close(torch.rand(3), shifted)
    monkeypatch.setenv("ONEHOT_SEED_SHIFT", "one")
    with pytest.raises(ValueError, match="ONEHOT_SEED_SHIFT"):
        setup(seed=0)
