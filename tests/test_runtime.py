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


def test_seeds_above_numpy_s_range_wrap_modulo_2_to_the_32(monkeypatch):
    # NumPy accepts seeds in [0, 2**32); a larger seed is reduced modulo 2**32 (the Mersenne Twister's state word)
    seed_everything(2**32 + 5)
    assert np.random.rand() == np.random.RandomState(5).rand()
    assert random.random() == random.Random(2**32 + 5).random()  # Python's random takes any int as is


def test_pick_device_order_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("ONEHOT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")


def test_pick_device_checks_a_requested_mps_and_reads_onehot_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="MPS is not available"):
        pick_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("mps") == torch.device("mps")
    monkeypatch.setenv("ONEHOT_DEVICE", "meta")  # overrides the automatic choice (cuda here)
    assert pick_device() == torch.device("meta")
    assert pick_device("cpu") == torch.device("cpu")  # an explicit argument wins over the variable


def test_setup_prints_exactly_one_line(monkeypatch, capsys):
    from packaging.version import Version
    monkeypatch.delenv("ONEHOT_DEVICE", raising=False)
    monkeypatch.setenv("ONEHOT_SEED_SHIFT", " ")  # blank: no shift
    release = Version(torch.__version__).public  # '2.5.1' of '2.5.1+cpu'
    assert setup(seed=3, device="cpu") == torch.device("cpu")
    assert capsys.readouterr().out == f"torch {release} | device: cpu | seed: 3\n"
    assert setup(seed=3, device="meta", quiet=True) == torch.device("meta")  # the device argument is used
    assert capsys.readouterr().out == ""
    # on a GPU the line names the card
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: f"Fake GPU on {d}")
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: None)
    setup(seed=4, device="cuda")
    assert capsys.readouterr().out == f"torch {release} | device: Fake GPU on cuda | seed: 4\n"


def test_time_per_call_divides_by_repeats_and_syncs_cuda(monkeypatch):
    import utils.runtime as rt
    clock = [100.0]
    monkeypatch.setattr(rt.time, "perf_counter", lambda: clock[0])

    def work():  # each call takes 0.5 s of the fake clock
        clock[0] += 0.5

    assert time_per_call(work, repeats=4, warmup=0) == 0.5
    assert time_per_call(work, repeats=1, warmup=0) == 0.5  # the smallest valid arguments
    syncs, clock[0] = [], 100.0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: syncs.append(clock[0]))
    time_per_call(work, repeats=2, warmup=1)
    assert syncs == [100.5, 101.5]  # after the warm-up and after the timed calls


def test_bytes_saved_for_backward_lets_fn_run_the_backward_pass():
    from utils.runtime import bytes_saved_for_backward
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    w = torch.tensor([[0.1, -0.2], [0.3, 0.0]], requires_grad=True)
    saved = bytes_saved_for_backward(lambda t: (t @ w).exp().sum().backward(), x, [w])
    assert saved == 2 * 2 * 4  # exp's output, float32
    torch.testing.assert_close(w.grad, x.T @ (x @ w.detach()).exp())  # d/dw sum(exp(xw)) = xᵀ exp(xw)


def test_shift_seeds_leaves_non_integer_seeds_and_the_version_alone():
    from utils.runtime import shift_seeds
    plain = (random.Random("abc").random(), np.random.default_rng([1, 2]).random())
    r = random.Random()
    r.seed("abc", version=1)
    random.seed("abc", version=1)
    plain_v1 = (r.random(), random.random())
    try:
        shift_seeds(1)
        # strings and sequences are not shifted, and a version is passed on (a str seed under version 2 is
        # hashed with sha512: reproducible; under another version it would be hashed by Python's hash())
        assert (random.Random("abc").random(), np.random.default_rng([1, 2]).random()) == plain
        r = random.Random()
        r.seed("abc", version=1)
        random.seed("abc", version=1)
        assert (r.random(), random.random()) == plain_v1
        random.seed("abc")
        assert random.random() == plain[0]
        np.random.rand(3)  # move NumPy's global state away from any fresh seed
        np.random.seed(0)  # seeds with 0 + 1
        assert np.random.rand() == np.random.RandomState(1).rand()
        random.seed(None)  # fresh entropy, as without the shift
        np.random.default_rng(None)
        random.Random(None)
        np.random.seed(None)
    finally:
        shift_seeds(0)
    for bad in (True, 1.5):
        with pytest.raises(ValueError, match="non-negative"):
            shift_seeds(bad)


def test_setup_seeds_zero_by_default(monkeypatch):
    """setup() with no seed is setup(seed=0): every chapter's set-up cell relies on it."""
    monkeypatch.delenv("ONEHOT_SEED_SHIFT", raising=False)
    setup(quiet=True)
    assert torch.initial_seed() == 0
    first = torch.rand(3)
    setup(seed=0, quiet=True)
    assert torch.equal(first, torch.rand(3))


def test_time_per_call_defaults_one_warmup_and_ten_repeats():
    calls = []
    time_per_call(lambda: calls.append(1))
    assert len(calls) == 11
