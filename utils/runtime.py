"""Runtime set-up shared by every chapter: seeding and device choice.

`setup()` is what the notebooks' setup cell calls, `time_per_call()` is how chapters time code and
`bytes_saved_for_backward()` how they measure the memory autograd keeps. `setup()` seeds every random number
generator the book uses, picks the best available device (cuda, then mps, then cpu) and returns it.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy and PyTorch (CPU and every CUDA device)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def pick_device(prefer: str | None = None) -> torch.device:
    """The device to run on: `prefer` if given, else cuda, then mps, then cpu.

    The environment variable ONEHOT_DEVICE overrides the automatic choice (e.g. to force `cpu`).
    """
    prefer = prefer or os.environ.get("ONEHOT_DEVICE")
    if prefer:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {prefer!r} was requested but CUDA is not available here")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device {prefer!r} was requested but MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


SEED_SHIFT_ENV = "ONEHOT_SEED_SHIFT"
_ORIGINAL_SEEDERS = {"torch.manual_seed": torch.manual_seed, "torch.Generator": torch.Generator,
                     "np.random.seed": np.random.seed, "np.random.default_rng": np.random.default_rng,
                     "random.seed": random.seed, "random.Random": random.Random}


def shift_seeds(shift: int) -> None:
    """From now on in this process, add `shift` to every integer seed that is set: `torch.manual_seed`,
    `torch.Generator().manual_seed`, NumPy's `seed` and `default_rng`, Python's `random.seed` and
    `random.Random`. Shift 0 restores the originals.

    For robustness runs only (`make seeds`, through the environment variable ONEHOT_SEED_SHIFT, which
    `setup()` reads): a chapter run with shift 1 draws other data, other initial weights and other batches,
    so its asserts show whether a target holds beyond the one seed the text reports.
    """
    if not isinstance(shift, int) or isinstance(shift, bool) or shift < 0:
        raise ValueError(f"shift must be a non-negative int, got {shift!r}")
    o = _ORIGINAL_SEEDERS
    if shift == 0:
        torch.manual_seed, torch.Generator = o["torch.manual_seed"], o["torch.Generator"]
        np.random.seed, np.random.default_rng = o["np.random.seed"], o["np.random.default_rng"]
        random.seed, random.Random = o["random.seed"], o["random.Random"]
        return

    def moved(seed):
        return seed + shift if isinstance(seed, int) and not isinstance(seed, bool) else seed

    class ShiftedGenerator(o["torch.Generator"]):
        def manual_seed(self, seed):
            return super().manual_seed(moved(seed))

    class ShiftedRandom(o["random.Random"]):
        def seed(self, a=None, version=2):
            super().seed(moved(a), version)

    torch.manual_seed = lambda seed: o["torch.manual_seed"](moved(seed))
    torch.Generator = ShiftedGenerator
    np.random.seed = lambda seed=None: o["np.random.seed"](moved(seed))
    np.random.default_rng = lambda seed=None: o["np.random.default_rng"](moved(seed))
    random.seed = lambda a=None, version=2: o["random.seed"](moved(a), version)
    random.Random = ShiftedRandom


def setup(seed: int = 0, device: str | None = None, quiet: bool = False) -> torch.device:
    """Seed everything, pick the device, print one line about both, and return the device.

    With the environment variable ONEHOT_SEED_SHIFT=N (a robustness run, `make seeds`), every seed the
    process sets from here on is N larger (`shift_seeds`), and the line says so.
    """
    shift = os.environ.get(SEED_SHIFT_ENV, "0").strip() or "0"
    if not shift.isdigit():
        raise ValueError(f"{SEED_SHIFT_ENV} must be a non-negative integer, got {shift!r}")
    shift_seeds(int(shift))
    seed_everything(seed)
    dev = pick_device(device)
    if not quiet:
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
        note = f" (every seed shifted by {shift}: a robustness run)" if int(shift) else ""
        print(f"torch {torch.__version__.split('+')[0]} | device: {name} | seed: {seed}{note}")
    return dev


def time_per_call(fn: Callable[[], object], repeats: int = 10, warmup: int = 1) -> float:
    """Mean wall-clock seconds of `fn()` over `repeats` calls, after `warmup` untimed calls.

    CUDA work is asynchronous, so the device is synchronised before the clock starts and stops;
    otherwise a GPU timing would only measure how fast the work was queued.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def bytes_saved_for_backward(fn: Callable[[torch.Tensor], object], x: torch.Tensor,
                             exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while `fn(x)` runs, not counting `x` and
    the tensors in `exclude` (e.g. the weights), which exist anyway.

    Every tensor an operation saves for its gradient passes through a `saved_tensors_hooks` pack hook;
    each distinct storage is counted once (views of one tensor share it).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"bytes_saved_for_backward: x must be a tensor, got {type(x).__name__}")
    known = {t.untyped_storage().data_ptr() for t in (x, *exclude)}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in known:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(kept.values())
