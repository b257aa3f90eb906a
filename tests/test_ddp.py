"""Tests of scripts/train_gpt_ddp.py: two gloo processes under torchrun train exactly what one process
trains on the same global batch.

The reference is the same script run without torchrun (world size 1, no process group, no DDP). Both
draw the global batch of step s from a generator seeded by (seed, s); each of the two ranks trains on
its half, DDP averages the two half-batch gradients, and the average of two half-batch means is the
full-batch mean. So after the same steps the parameters must agree.

Agree, not be bitwise equal: one process sums the 8 sequences' gradient contributions in one order,
the two ranks sum 4 each and the all-reduce adds the two partial sums, so the floats round differently
(about 1e-8 here) and Adam carries that into the weights. float32 at atol 1e-6 leaves a wide margin over
that and is still far below what one step moves a weight (about lr = 1e-2).

The attention key biases are checked differently. Their true gradient is exactly 0 (adding b_k to every
key shifts all scores of a query by the same q . b_k, which the softmax ignores), so what backward returns
is rounding noise, different in the two runs, and Adam, which divides a gradient by its own running size,
turns that noise into small steps (about 1e-6 here). The right check is that both runs leave them at their
exact value, 0, up to that noise.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors import safe_open
from torch.testing import assert_close

from scripts.train_gpt_ddp import global_batch, make_model, shard
from utils.gpt import GPT, GPTConfig
from utils.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS, LR, SEED = 3, 1e-2, 0
TINY = ["--steps", str(STEPS), "--batch-size", "8", "--block-size", "16", "--n-layer", "2", "--n-head", "2",
        "--n-embd", "16", "--lr", str(LR), "--seed", str(SEED), "--eval-batches", "2", "--quiet"]
TIMEOUT = 120  # seconds per launch: a guard against a hung rendezvous, far above the few seconds it takes

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("this PyTorch build has no torch.distributed gloo backend, which the DDP test runs on",
                allow_module_level=True)


def launch(args: list[str], nproc: int | None = None) -> subprocess.CompletedProcess:
    """Run the script from the repository root: under torchrun with `nproc` CPU processes, or plainly."""
    env = {k: v for k, v in os.environ.items()  # a clean launch, even if pytest itself runs under torchrun
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # gloo on CPU, whatever the machine has
    runner = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    cmd = [sys.executable, *runner, "-m", "scripts.train_gpt_ddp", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def output(proc: subprocess.CompletedProcess) -> str:
    return f"exit code {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    """A small synthetic text, so the test needs no data file: 3000 random characters from 30."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("ddp") / "text.txt"
    path.write_text("".join(rng.choice("abcdefghijklmnopqrstuvwxyz .,\n") for _ in range(3000)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(text_file) -> dict[str, Path]:
    """Checkpoints after STEPS steps: 2 gloo ranks under torchrun, and 1 process on the same global batch."""
    paths = {}
    for name, nproc in (("ddp", 2), ("single", None)):
        paths[name] = text_file.parent / f"{name}.safetensors"
        start = time.perf_counter()
        proc = launch([*TINY, "--text-file", str(text_file), "--save", str(paths[name])], nproc)
        assert proc.returncode == 0, f"the {name} run failed after {time.perf_counter() - start:.1f} s:\n{output(proc)}"
        assert paths[name].is_file(), f"the {name} run saved no checkpoint:\n{output(proc)}"
    return paths


def load(path: Path) -> tuple[GPT, dict]:
    """The model stored at `path` (built from the config in its metadata) and the checkpoint's metadata."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["metadata"])
    model = GPT(GPTConfig(**meta["gpt_config"]))
    info = load_checkpoint(path, model)
    return model, {**info.metadata, "step": info.step}


def key_bias(name: str, param: torch.Tensor, n_embd: int) -> torch.Tensor | None:
    """The key part of a fused (q | k | v) attention bias, else None."""
    return param[n_embd:2 * n_embd] if name.endswith("attn.in_proj.bias") else None


def without_key_bias(name: str, param: torch.Tensor, n_embd: int) -> torch.Tensor:
    if name.endswith("attn.in_proj.bias"):
        return torch.cat([param[:n_embd], param[2 * n_embd:]])  # the query and value biases
    return param


# ------------------------------------------------------------------------------------ sharding

def test_the_shards_tile_the_global_batch_and_every_step_draws_its_own():
    data = torch.arange(500)
    x, y = global_batch(data, step=7, batch_size=8, block_size=16, seed=3)
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y[:, :-1], x[:, 1:]), "targets must be the inputs shifted by one token"
    again = global_batch(data, step=7, batch_size=8, block_size=16, seed=3)
    assert torch.equal(again[0], x), "the same (seed, step) must give the same batch (on every rank)"
    assert not torch.equal(global_batch(data, step=8, batch_size=8, block_size=16, seed=3)[0], x)
    shards = [shard((x, y), rank, 2) for rank in range(2)]
    assert torch.equal(torch.cat([s[0] for s in shards]), x) and torch.equal(torch.cat([s[1] for s in shards]), y)
    assert shards[0][0].shape == (4, 16)


# ------------------------------------------------------------------------------- DDP vs one process

def test_two_gloo_ranks_train_the_same_parameters_as_one_process(trained):
    ddp, meta_ddp = load(trained["ddp"])
    single, meta_single = load(trained["single"])
    assert (meta_ddp["world_size"], meta_single["world_size"]) == (2, 1)
    assert meta_ddp["step"] == meta_single["step"] == STEPS
    assert meta_ddp["gpt_config"] == meta_single["gpt_config"]
    C = ddp.config.n_embd
    initial = dict(make_model(ddp.config, SEED).named_parameters())
    single_params = dict(single.named_parameters())
    for name, p in ddp.named_parameters():
        got, want, init = (without_key_bias(name, t.detach(), C) for t in (p, single_params[name], initial[name]))
        assert_close(got, want, rtol=0, atol=1e-6,
                     msg=lambda m, name=name: f"{name}: 2 DDP ranks and 1 process disagree. {m}")
        moved = (want - init).abs().max().item()
        assert moved > 1e-3, f"{name} moved only {moved:.2e} from its initial value: the runs did not train it"
        kb = key_bias(name, p.detach(), C)
        if kb is not None:  # exactly 0 in exact arithmetic; only rounding noise (amplified by Adam) moves them
            for run, bias in (("ddp", kb), ("single", key_bias(name, single_params[name].detach(), C))):
                assert bias.abs().max().item() < 1e-4, f"{name} key bias of the {run} run is {bias}, expected ~0"


def test_a_global_batch_not_divisible_by_the_world_size_is_a_clear_error(text_file, tmp_path):
    proc = launch([*TINY, "--batch-size", "7", "--text-file", str(text_file),
                   "--save", str(tmp_path / "never.safetensors")], nproc=2)
    assert proc.returncode != 0, output(proc)
    assert "--batch-size 7 is the global batch and must be divisible by the world size 2" in proc.stderr, output(proc)
    assert "e.g. 6 or 8" in proc.stderr
    assert not (tmp_path / "never.safetensors").exists()
