"""Tests of utils.train: the loop equals a hand-written loop, clips, stops, evaluates, checkpoints."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_model
from torch import nn
from torch.testing import assert_close

from utils import train as T
from utils.train import (CheckpointError, History, NonFiniteLossError, TrainConfig, load_checkpoint,
                         save_checkpoint, train, warmup_cosine)

torch.set_num_threads(1)


def mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x), y)


def regression_batches(n_batches: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w, b = torch.tensor([[1.5], [-2.0], [0.5]]), 0.3
    out = []
    for _ in range(n_batches):
        x = torch.randn(16, 3, generator=g)
        out.append((x, x @ w + b))
    return out


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))


def quiet(**kw) -> TrainConfig:
    return TrainConfig(progress=False, **kw)


# ---------------------------------------------------------------------------------------- the loop

def test_fits_a_linear_regression_to_near_zero_loss():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    history = train(model, regression_batches(), mse, config=quiet(max_steps=400, lr=0.05, log_every=50))
    first, last = history.train[0].loss, history.last_loss
    assert first > 1.0
    assert last < 1e-4, f"final loss {last}"
    assert history.steps == 400 and history.stopped_by == "max_steps"
    assert [r.step for r in history.train] == list(range(50, 401, 50))


def test_matches_a_hand_written_loop_step_for_step():
    batches = regression_batches(4)
    steps, clip = 12, 0.5

    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    sched = warmup_cosine(opt, warmup_steps=3, total_steps=steps)
    history = train(model, batches, mse, opt, quiet(max_steps=steps, grad_clip=clip, log_every=1),
                    scheduler=sched)

    ref = mlp()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.05)
    ref_sched = warmup_cosine(ref_opt, warmup_steps=3, total_steps=steps)
    losses, lrs = [], []
    for step in range(steps):
        x, y = batches[step % len(batches)]  # a list is re-iterated epoch after epoch
        loss = F.mse_loss(ref(x), y)
        ref_opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(ref.parameters(), clip)
        lrs.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref_sched.step()
        losses.append(loss.item())

    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert_close(p, q, rtol=0, atol=0)
    assert [r.loss for r in history.train] == losses
    assert [r.lr for r in history.train] == lrs
    assert [r.step for r in history.train] == list(range(1, steps + 1))


def test_grad_clip_caps_the_total_norm_like_clip_grad_norm():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), 100 * torch.randn(8, 1)  # large targets: a large gradient
    model, ref = mlp(), mlp()
    lr, clip = 1.0, 0.25
    before = [p.detach().clone() for p in model.parameters()]
    history = train(model, [(x, y)], mse, torch.optim.SGD(model.parameters(), lr=lr),
                    quiet(max_steps=1, grad_clip=clip, log_every=1))

    F.mse_loss(ref(x), y).backward()
    raw = nn.utils.clip_grad_norm_(ref.parameters(), clip)  # the norm before clipping
    assert raw.item() > 10 * clip
    assert history.train[0].grad_norm == pytest.approx(raw.item(), rel=1e-6)
    # SGD moved each parameter by -lr * clipped gradient: the total step is exactly lr * clip
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert step.norm().item() == pytest.approx(lr * clip, rel=1e-5)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert_close(p.detach(), q.detach() - lr * q.grad)


def test_without_clipping_the_gradient_norm_is_recorded_but_not_changed():
    x, y = torch.randn(8, 3), 100 * torch.randn(8, 1)
    model, ref = mlp(), mlp()
    history = train(model, [(x, y)], mse, torch.optim.SGD(model.parameters(), lr=0.01),
                    quiet(max_steps=1, log_every=1))
    F.mse_loss(ref(x), y).backward()
    norm = torch.cat([q.grad.flatten() for q in ref.parameters()]).norm().item()
    assert history.train[0].grad_norm == pytest.approx(norm, rel=1e-6)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert_close(p.detach(), q.detach() - 0.01 * q.grad)


def test_max_seconds_stops_early_and_evaluation_is_off_the_clock():
    def slow_mse(model, batch):
        time.sleep(0.02)
        return mse(model, batch)

    model = mlp()
    start = time.perf_counter()
    history = train(model, regression_batches(2), slow_mse,
                    config=quiet(max_steps=10_000, max_seconds=0.1, lr=1e-3))
    assert history.stopped_by == "max_seconds"
    # at least one step, and at most the 0.1 s / 0.02 s sleeps + the step that crosses the limit; a loaded machine
    # (CI's two workers beside a chapter) can take 0.05 s a step, so no lower bound beyond one
    assert 0.1 <= history.seconds < 1.0 and 1 <= history.steps <= 6
    assert history.train[-1].step == history.steps  # the last partial window is logged
    assert time.perf_counter() - start < 2.0

    def slow_eval(model):
        time.sleep(0.2)  # longer than four small steps take even on a loaded machine
        return {"score": 1.0}

    start = time.perf_counter()
    history = train(mlp(), regression_batches(2), mse, evaluate=slow_eval,
                    config=quiet(max_steps=4, eval_every=1, lr=1e-3))
    wall = time.perf_counter() - start
    assert wall >= 5 * 0.2 and history.seconds < 0.2  # five evaluations, not even one of them counted


def test_evaluate_runs_at_the_right_steps_in_eval_mode_without_grad():
    seen, modes_in_loss = [], []
    model = nn.Sequential(nn.Linear(3, 1), nn.Dropout(0.0))

    def evaluate(m):
        seen.append((m.training, torch.is_grad_enabled()))
        return {"val_loss": 1.0 / (len(seen)), "acc": torch.tensor(0.5)}

    def loss_fn(m, batch):
        modes_in_loss.append(m.training)
        return mse(m, batch)

    history = train(model, regression_batches(3), loss_fn, evaluate=evaluate,
                    config=quiet(max_steps=10, eval_every=3, lr=1e-2))
    history_steps = [r.step for r in history.eval]
    assert history_steps == [0, 3, 6, 9, 10]
    assert seen == [(False, False)] * 5
    assert all(modes_in_loss) and len(modes_in_loss) == 10  # back in train mode after every evaluation
    assert model.training
    assert history.last_eval == {"val_loss": 0.2, "acc": 0.5}
    assert history.best("val_loss").step == 10 and history.best("val_loss", mode="max").step == 0

    model.eval()  # the mode the model came in with is restored at the end
    train(model, regression_batches(3), mse, config=quiet(max_steps=2, lr=1e-2))
    assert not model.training


def test_val_batches_adds_the_mean_validation_loss():
    torch.manual_seed(0)
    model, val = mlp(), regression_batches(3, seed=1)
    history = train(model, regression_batches(), mse, val_batches=val,
                    config=quiet(max_steps=5, eval_every=5, lr=1e-2))
    expected = sum(mse(model, b).item() for b in val) / 3
    assert history.eval[-1].step == 5
    assert history.last_eval["val_loss"] == pytest.approx(expected, rel=1e-6)
    # a function or a generator of validation batches needs eval_batches
    with pytest.raises(ValueError, match="eval_batches"):
        train(model, regression_batches(), mse, val_batches=lambda i: val[i % 3],
              config=quiet(max_steps=2, lr=1e-2))
    history = train(model, regression_batches(), mse, val_batches=lambda i: val[i % 3],
                    config=quiet(max_steps=2, lr=1e-2, eval_batches=2))
    assert history.last_eval["val_loss"] == pytest.approx(
        sum(mse(model, b).item() for b in val[:2]) / 2, rel=1e-6)


def test_batches_from_a_function_an_epoch_list_and_a_one_shot_iterator():
    calls = []

    def get_batch(step):
        calls.append(step)
        return regression_batches(1, seed=step)[0]

    train(mlp(), get_batch, mse, config=quiet(max_steps=4, lr=1e-3))
    assert calls == [0, 1, 2, 3]
    calls.clear()
    train(mlp(), get_batch, mse, config=quiet(max_steps=6, lr=1e-3), start_step=4)
    assert calls == [4, 5]

    history = train(mlp(), iter(regression_batches(3)), mse, config=quiet(max_steps=10, lr=1e-3, log_every=2))
    assert history.steps == 3 and history.stopped_by == "data"
    assert [r.step for r in history.train] == [2, 3]


def test_batches_are_moved_to_the_device_structure_kept():
    from collections import namedtuple
    Pair = namedtuple("Pair", "x y")
    batch = {"a": [torch.zeros(2), (torch.ones(1), "text")], "b": Pair(torch.zeros(1), 3)}
    moved = T.to_device(batch, torch.device("cpu"))
    assert isinstance(moved["b"], Pair) and moved["b"].y == 3
    assert isinstance(moved["a"][1], tuple) and moved["a"][1][1] == "text"
    assert_close(moved["a"][0], torch.zeros(2))


def test_progress_false_prints_nothing(capsys):
    train(mlp(), regression_batches(), mse, evaluate=lambda m: {"x": 1.0},
          config=quiet(max_steps=3, eval_every=1, lr=1e-3))
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    train(mlp(), regression_batches(), mse, config=TrainConfig(max_steps=3, lr=1e-3, progress=True))
    assert "3/3" in capsys.readouterr().err  # the progress bar


def test_non_finite_loss_names_the_step_and_last_good_loss_and_does_not_update():
    model = mlp()
    seen = []

    def loss_fn(m, batch):
        loss = mse(m, batch)
        seen.append(loss.item())
        return loss * float("nan") if len(seen) == 3 else loss

    snapshot = {}

    def evaluate(m):
        snapshot.update({k: v.clone() for k, v in m.state_dict().items()})
        return {}

    with pytest.raises(NonFiniteLossError, match=r"nan at step 3 \(last finite loss: ") as err:
        train(model, regression_batches(), loss_fn, evaluate=evaluate,
              config=quiet(max_steps=10, eval_every=2, lr=1e-2))
    assert f"{seen[1]:.6g}" in str(err.value)
    for k, v in model.state_dict().items():  # parameters are as they were after step 2
        assert_close(v, snapshot[k], rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_steps": 0}, "max_steps must be a positive int"),
    ({"max_steps": 2.5}, "max_steps must be a positive int"),
    ({"lr": 0.0}, "lr must be a positive number"),
    ({"lr": -1e-3}, "lr must be a positive number"),
    ({"grad_clip": 0}, "grad_clip must be a positive number"),
    ({"max_seconds": -1}, "max_seconds must be a positive number"),
    ({"eval_every": 0}, "eval_every must be a positive int"),
    ({"log_every": 0}, "log_every must be a positive int"),
])
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_bad_input_is_rejected_with_a_clear_error():
    model = mlp()
    with pytest.raises(ValueError, match="the batch iterator yielded no batches"):
        train(model, [], mse, config=quiet(max_steps=3, lr=1e-3))
    with pytest.raises(ValueError, match="the batch iterator yielded no batches"):
        train(model, iter([]), mse, config=quiet(max_steps=3, lr=1e-3))
    with pytest.raises(ValueError, match=r"scalar \(0-d\) tensor, got shape \(16, 1\).*\.mean\(\)"):
        train(model, regression_batches(), lambda m, b: (m(b[0]) - b[1]) ** 2, config=quiet(lr=1e-3))
    with pytest.raises(TypeError, match="must return a scalar tensor, got float"):
        train(model, regression_batches(), lambda m, b: 1.0, config=quiet(lr=1e-3))
    with pytest.raises(ValueError, match="does not depend on any trainable parameter"):
        train(model, regression_batches(), lambda m, b: mse(m, b).detach(), config=quiet(lr=1e-3))
    with pytest.raises(ValueError, match="pass an optimizer, or set TrainConfig.lr"):
        train(model, regression_batches(), mse, config=quiet())
    with pytest.raises(ValueError, match="leave TrainConfig.lr as None"):
        train(model, regression_batches(), mse, torch.optim.SGD(model.parameters(), lr=0.1), quiet(lr=1e-3))
    with pytest.raises(TypeError, match="dict of metric name"):
        train(model, regression_batches(), mse, evaluate=lambda m: 0.5, config=quiet(max_steps=1, lr=1e-3))
    with pytest.raises(ValueError, match="no parameters"):
        train(nn.ReLU(), regression_batches(), mse, config=quiet(lr=1e-3))


def test_history_round_trips_through_json():
    history = train(mlp(), regression_batches(), mse, evaluate=lambda m: {"val_loss": 0.5},
                    config=quiet(max_steps=4, eval_every=2, lr=1e-3, log_every=2))
    again = History.from_dict(json.loads(json.dumps(history.to_dict())))
    assert again == history
    assert again.series("val_loss") == ([0, 2, 4], [0.5, 0.5, 0.5])
    with pytest.raises(KeyError, match="recorded metrics: \\['val_loss'\\]"):
        history.best("accuracy")


# ---------------------------------------------------------------------------------------- schedule

def test_warmup_cosine_at_key_steps():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    lrs = []
    for _ in range(150):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2.0 * 1 / 10)     # never a wasted step at lr 0
    assert lrs[4] == pytest.approx(2.0 * 5 / 10)
    assert lrs[9] == pytest.approx(2.0)                # peak at the end of warm-up
    assert lrs[10] == pytest.approx(2.0)
    assert lrs[60] == pytest.approx(2.0 * 0.55)        # half-way down the cosine: (1 + r) / 2
    assert lrs[35] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert lrs[110] == pytest.approx(0.2) and lrs[149] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warm-up
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(opt, 10, 10)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        warmup_cosine(opt, 1, 10, min_lr_ratio=1.5)


# ---------------------------------------------------------------------------------------- checkpoints

def test_checkpoint_resume_equals_uninterrupted_training(tmp_path):
    steps, half = 10, 5

    def get_batch(step):
        return regression_batches(1, seed=100 + step)[0]

    def fresh():
        model = mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=0.02)
        return model, opt, warmup_cosine(opt, 3, steps)

    model, opt, sched = fresh()
    full = train(model, get_batch, mse, opt, quiet(max_steps=steps, log_every=1), scheduler=sched)

    first, opt1, sched1 = fresh()
    train(first, get_batch, mse, opt1, quiet(max_steps=half, log_every=1), scheduler=sched1)
    path = save_checkpoint(tmp_path / "run.safetensors", first, opt1, sched1, step=half,
                           metadata={"config": {"lr": 0.02}})
    assert T.optimizer_path(path).is_file()

    resumed, opt2, sched2 = fresh()
    torch.nn.init.zeros_(resumed[0].weight)  # different from the checkpoint, to be overwritten
    info = load_checkpoint(path, resumed, opt2, sched2)
    assert info.step == half and info.metadata == {"config": {"lr": 0.02}}
    rest = train(resumed, get_batch, mse, opt2, quiet(max_steps=steps, log_every=1), scheduler=sched2,
                 start_step=info.step)

    for p, q in zip(model.parameters(), resumed.parameters()):
        assert_close(p, q, rtol=0, atol=0)
    assert [r.loss for r in rest.train] == [r.loss for r in full.train[half:]]
    assert [r.step for r in rest.train] == list(range(half + 1, steps + 1))


class TiedLM(nn.Module):
    """A tiny language model whose output head shares the embedding matrix (as GPT-2 does)."""

    def __init__(self, vocab: int = 7, dim: int = 4, tie: bool = True):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.ln = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        return self.lm_head(self.ln(self.wte(idx)))


def test_tied_weights_are_saved_once_and_stay_tied(tmp_path):
    torch.manual_seed(0)
    model = TiedLM()
    batches = [(torch.randint(0, 7, (4, 5)), torch.randint(0, 7, (4, 5)))]
    lm_loss = lambda m, b: F.cross_entropy(m(b[0]).flatten(0, 1), b[1].flatten())  # noqa: E731
    train(model, batches, lm_loss, config=quiet(max_steps=3, lr=0.1))
    path = save_checkpoint(tmp_path / "lm.safetensors", model)
    with safe_open(str(path), "pt") as f:
        assert sorted(f.keys()) == ["ln.bias", "ln.weight", "wte.weight"]

    torch.manual_seed(1)
    loaded = TiedLM()
    load_checkpoint(path, loaded)
    assert loaded.lm_head.weight is loaded.wte.weight
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2
        assert_close(v, v2, rtol=0, atol=0)
    untied = TiedLM(tie=False)  # the aliases in the file fill both matrices
    load_checkpoint(path, untied)
    assert_close(untied.lm_head.weight, model.wte.weight, rtol=0, atol=0)

    # a file written by safetensors' own save_model (no alias record) loads into the tied model too
    other = tmp_path / "other.safetensors"
    save_model(model, str(other))
    again = TiedLM()
    load_checkpoint(other, again)
    assert_close(again.wte.weight, model.wte.weight, rtol=0, atol=0)


def test_a_failed_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    old = mlp(0)
    opt = torch.optim.SGD(old.parameters(), lr=0.1, momentum=0.9)
    save_checkpoint(path, old, opt, step=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(T, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, mlp(1), step=2)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file left either
    restored = mlp(2)
    assert load_checkpoint(path, restored, torch.optim.SGD(restored.parameters(), lr=0.1, momentum=0.9)).step == 1
    for p, q in zip(old.parameters(), restored.parameters()):
        assert_close(p, q, rtol=0, atol=0)

    # a crash between the optimizer's rename and the weights' rename is detected on load
    real_replace, calls = os.replace, []

    def replace_then_crash(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(T.os, "replace", replace_then_crash)
    new = mlp(3)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(path, new, torch.optim.SGD(new.parameters(), lr=0.1, momentum=0.9), step=2)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="belongs to a different save"):
        load_checkpoint(path, mlp(4), torch.optim.SGD(mlp(4).parameters(), lr=0.1))
    assert load_checkpoint(path, restored).step == 1  # the weights alone are still the old, whole file


def test_mismatched_checkpoints_list_the_keys(tmp_path):
    path = save_checkpoint(tmp_path / "a.safetensors", nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)))

    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(2, 3)
            self.head = nn.Linear(3, 1)

    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, Named())
    msg = str(err.value)
    assert "4 key(s) missing" in msg and "encoder.weight" in msg and "head.bias" in msg
    assert "4 unexpected key(s)" in msg and "0.weight" in msg and "1.bias" in msg

    with pytest.raises(CheckpointError, match=r"0\.weight: checkpoint \(3, 2\) vs model \(4, 2\)"):
        load_checkpoint(path, nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 1)))

    bigger = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1), nn.Linear(1, 1))
    with pytest.raises(CheckpointError, match=r"2 key\(s\) missing from the checkpoint: 2\.weight, 2\.bias"):
        load_checkpoint(path, bigger)
    info = load_checkpoint(path, bigger, strict=False)
    assert info.missing_keys == ["2.weight", "2.bias"] and info.unexpected_keys == []

    with pytest.raises(CheckpointError, match="saved without optimizer state"):
        model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.safetensors", model)
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "bad.safetensors", model)


def test_adamw_decays_matrices_only_and_lists_tied_weights_once():
    from utils.train import adamw
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 10))
    model[2].weight = model[0].weight  # tied, as a GPT's head and token embedding
    model[1].bias.requires_grad_(False)  # frozen: left out
    opt = adamw(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [(10, 4)] and decay["weight_decay"] == 0.1
    assert {id(p) for p in no_decay["params"]} == {id(model[1].weight), id(model[2].bias)}
    assert no_decay["weight_decay"] == 0.0 and opt.defaults["betas"] == (0.9, 0.99)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        adamw(model, lr=1e-3, weight_decay=-1)
    with pytest.raises(ValueError, match="has no trainable parameters"):
        adamw(nn.ReLU(), lr=1e-3)
