"""The training loop every chapter uses, its history, learning-rate schedules and checkpoints.

One loop, written out once (in the spirit of nanoGPT's `train.py`):

    for step in range(max_steps):
        batch = next batch, moved to the model's device
        loss = loss_fn(model, batch)          # a scalar tensor
        optimizer.zero_grad(); loss.backward()
        clip the total gradient norm          # optional, Pascanu et al. 2013
        optimizer.step(); scheduler.step()
        every eval_every steps: evaluate under torch.no_grad() in eval mode

`train` returns a `History` (train loss, gradient norm and learning rate over steps and seconds,
plus every evaluation), which `utils.viz.loss_curves` plots. The clock counts training time only:
evaluation pauses it, so `max_seconds` compares models "at equal training time" fairly.

Checkpoints store the model's weights as safetensors (no code is executed on load) and, if asked,
the optimizer and scheduler state next to them (`<name>.optim.pt`, read back with
`torch.load(weights_only=True)`). Every file is written to a temporary file and renamed into place,
so a crash mid-save never leaves a half-written checkpoint under the real name.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

Batch = Any  # a tensor, or a tuple/list/dict of tensors (nested), or anything loss_fn accepts
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
Evaluate = Callable[[nn.Module], Mapping[str, float]]


# ----------------------------------------------------------------------------------------------
# configuration and history

@dataclass
class TrainConfig:
    """How long to train and how to log.

    max_steps:   number of optimizer updates (the run's total, counting any `start_step`).
    max_seconds: optional wall-clock budget for training (evaluation time excluded); the loop stops
                 after the first step that reaches it. Use it to compare models at equal time.
    lr:          learning rate of the default optimizer, AdamW with torch's defaults
                 (betas 0.9/0.999, weight decay 0.01), used when `train` gets no optimizer.
                 Leave it None when you pass your own optimizer.
    grad_clip:   None, or the max total L2 norm of the gradients (`clip_grad_norm_`).
    eval_every:  evaluate after every `eval_every` steps and before the first; None: only at the end.
    eval_batches: how many validation batches `train(..., val_batches=...)` averages per evaluation
                 (None: all of them; required when they come from an endless iterator or a function).
    log_every:   record the mean train loss (and grad norm, lr) over every `log_every` steps.
    progress:    show a tqdm progress bar; False prints nothing at all.
    """

    max_steps: int = 1000
    max_seconds: float | None = None
    lr: float | None = None
    grad_clip: float | None = None
    eval_every: int | None = None
    eval_batches: int | None = None
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        def positive_int(name: str, value: Any, optional: bool) -> None:
            if value is None and optional:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                hint = " or None" if optional else ""
                raise ValueError(f"TrainConfig.{name} must be a positive int{hint}, got {value!r}")

        def positive_float(name: str, value: Any, hint: str = "") -> None:
            if value is None:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"TrainConfig.{name} must be a positive number or None, got {value!r}{hint}")

        positive_int("max_steps", self.max_steps, optional=False)
        positive_int("eval_every", self.eval_every, optional=True)
        positive_int("eval_batches", self.eval_batches, optional=True)
        positive_int("log_every", self.log_every, optional=False)
        positive_float("max_seconds", self.max_seconds)
        positive_float("lr", self.lr, " (typical values: 1e-3 for small models, 3e-4 for transformers)")
        positive_float("grad_clip", self.grad_clip, " (typical value: 1.0)")


class TrainRecord(NamedTuple):
    """The train loss, gradient norm (before clipping) and learning rate, averaged over the
    `log_every` steps that end at `step`; `seconds` is the training time at `step`."""

    step: int
    seconds: float
    loss: float
    grad_norm: float
    lr: float


class EvalRecord(NamedTuple):
    """The metrics `evaluate` returned after `step` updates (step 0: before training)."""

    step: int
    seconds: float
    metrics: dict[str, float]


@dataclass
class History:
    """Everything a training run recorded; `utils.viz.loss_curves` plots it.

    `steps` and `seconds` are the totals at the end; `stopped_by` is "max_steps", "max_seconds"
    or "data" (a one-shot iterator of batches ran out).
    """

    train: list[TrainRecord] = field(default_factory=list)
    eval: list[EvalRecord] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped_by: str = ""

    @property
    def last_loss(self) -> float:
        """The last recorded (window-averaged) train loss."""
        if not self.train:
            raise ValueError("this History has no train records (no step was logged)")
        return self.train[-1].loss

    @property
    def last_eval(self) -> dict[str, float]:
        """The metrics of the last evaluation."""
        if not self.eval:
            raise ValueError("this History has no evaluations; pass evaluate= or val_batches= to train()")
        return self.eval[-1].metrics

    def best(self, metric: str = "val_loss", mode: str = "min") -> EvalRecord:
        """The evaluation with the lowest (`mode="min"`) or highest (`"max"`) value of `metric`."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        records = [r for r in self.eval if metric in r.metrics]
        if not records:
            known = sorted({k for r in self.eval for k in r.metrics})
            raise KeyError(f"no evaluation recorded {metric!r}; recorded metrics: {known}")
        pick = min if mode == "min" else max
        return pick(records, key=lambda r: r.metrics[metric])

    def series(self, name: str = "loss", x: str = "step") -> tuple[list[float], list[float]]:
        """(xs, ys) of one quantity over `x` ("step" or "seconds"), ready to plot.

        `name` is a train field ("loss", "grad_norm", "lr") or an evaluation metric ("val_loss", ...).
        """
        if x not in ("step", "seconds"):
            raise ValueError(f"x must be 'step' or 'seconds', got {x!r}")
        if name in ("loss", "grad_norm", "lr"):
            return ([getattr(r, x) for r in self.train], [getattr(r, name) for r in self.train])
        records = [r for r in self.eval if name in r.metrics]
        return [getattr(r, x) for r in records], [r.metrics[name] for r in records]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; `History.from_dict` reads it back."""
        return {"train": [r._asdict() for r in self.train],
                "eval": [{"step": r.step, "seconds": r.seconds, **r.metrics} for r in self.eval],
                "steps": self.steps, "seconds": self.seconds, "stopped_by": self.stopped_by}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        """The inverse of `to_dict`."""
        try:
            train = [TrainRecord(**r) for r in data["train"]]
            evals = [EvalRecord(r["step"], r["seconds"],
                                {k: v for k, v in r.items() if k not in ("step", "seconds")})
                     for r in data["eval"]]
            return cls(train, evals, data["steps"], data["seconds"], data["stopped_by"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a History.to_dict() dict ({err!r}); expected keys "
                             "train, eval, steps, seconds, stopped_by") from err


class NonFiniteLossError(FloatingPointError):
    """The loss (or the gradient norm) became NaN or infinite during training."""


# ----------------------------------------------------------------------------------------------
# the loop

def to_device(batch: Batch, device: torch.device) -> Batch:
    """`batch` with every tensor moved to `device`; tuples, lists and dicts are walked recursively."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _model_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    param = next(model.parameters(), None)
    if param is None:
        raise ValueError(f"{type(model).__name__} has no parameters to train")
    if device is None:
        return param.device
    device = torch.device(device)
    if param.device.type != device.type or (device.index is not None and param.device != device):
        raise ValueError(f"the model is on {param.device} but device={device}; call model.to(device) "
                         "before creating the optimizer, then train")
    return param.device


def _batch_stream(batches: Iterable[Batch] | Callable[[int], Batch], start_step: int) -> Iterator[Batch]:
    """An endless stream of batches: `get_batch(step)` for a function, new epochs for re-iterable
    data (a list, a DataLoader), and the end of the data for a one-shot iterator."""
    if callable(batches) and not isinstance(batches, Iterable):
        step = start_step
        while True:
            yield batches(step)
            step += 1
    if not isinstance(batches, Iterable):
        raise TypeError(f"batches must be an iterable of batches or a function get_batch(step), "
                        f"got {type(batches).__name__}")
    one_shot = isinstance(batches, Iterator)
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("the batch iterator yielded no batches; check the dataset is not empty "
                             "and that the iterator was not already used up")
        if one_shot:
            return


def _is_endless(batches: Any) -> bool:
    """True for a function get_batch(i) or a one-shot iterator: sources that may never run out."""
    return isinstance(batches, Iterator) or (callable(batches) and not isinstance(batches, Iterable))


def _check_loss(loss: Any, step: int) -> None:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} at step {step}")
    if loss.ndim != 0:
        raise ValueError(f"loss_fn must return a scalar (0-d) tensor, got shape {tuple(loss.shape)} at "
                         f"step {step}; reduce it, e.g. with .mean() or F.cross_entropy(reduction='mean')")
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on any trainable parameter (requires_grad=False); "
                         "was it computed under torch.no_grad(), detached, or are all parameters frozen?")


def estimate_loss(model: nn.Module, batches: Iterable[Batch] | Callable[[int], Batch], loss_fn: LossFn,
                  max_batches: int | None = None, device: str | torch.device | None = None) -> float:
    """The mean of `loss_fn` over `batches` (at most `max_batches`), in eval mode and without gradients
    (nanoGPT's `estimate_loss`). The model's train/eval mode is restored afterwards."""
    with torch.no_grad():
        if max_batches is not None and (not isinstance(max_batches, int) or max_batches <= 0):
            raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
        if max_batches is None and _is_endless(batches):
            raise ValueError("these validation batches come from a function or an iterator that may never end; "
                             "set max_batches (TrainConfig.eval_batches) to say how many to average")
        if callable(batches) and not isinstance(batches, Iterable):
            get_batch = batches
            batches = (get_batch(i) for i in range(max_batches))
        device = _model_device(model, device)
        was_training = model.training
        model.eval()
        try:
            total, count = 0.0, 0
            for batch in batches:
                if max_batches is not None and count >= max_batches:
                    break
                loss = loss_fn(model, to_device(batch, device))
                if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                    raise ValueError("loss_fn must return a scalar (0-d) tensor; reduce it with .mean()")
                total += loss.item()
                count += 1
        finally:
            model.train(was_training)
        if count == 0:
            raise ValueError("the validation batches yielded no batches; check the validation set is not empty")
        return total / count


def _evaluate(model: nn.Module, evaluate: Evaluate | None, val: Callable[[], float] | None) -> dict[str, float]:
    """Run the evaluations under torch.no_grad() in eval mode, then restore train mode."""
    model.eval()
    try:
        with torch.no_grad():
            metrics = {"val_loss": val()} if val is not None else {}
            if evaluate is not None:
                out = evaluate(model)
                if not isinstance(out, Mapping):
                    raise TypeError(f"evaluate(model) must return a dict of metric name -> number, "
                                    f"got {type(out).__name__}")
                for name, value in out.items():
                    try:
                        metrics[str(name)] = float(value)
                    except (TypeError, ValueError, RuntimeError) as err:
                        raise TypeError(f"evaluate(model) returned {name!r}: {value!r}, which is not a "
                                        "number; return floats (or 1-element tensors)") from err
    finally:
        model.train()
    return metrics


def _fmt(metrics: Mapping[str, float]) -> dict[str, str]:
    return {k: f"{v:.4g}" for k, v in metrics.items()}


def train(model: nn.Module, batches: Iterable[Batch] | Callable[[int], Batch], loss_fn: LossFn,
          optimizer: torch.optim.Optimizer | None = None, config: TrainConfig | None = None,
          scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, evaluate: Evaluate | None = None,
          val_batches: Iterable[Batch] | Callable[[int], Batch] | None = None,
          device: str | torch.device | None = None, start_step: int = 0,
          after_step: Callable[[], None] | None = None) -> History:
    """Train `model` by minimising `loss_fn(model, batch)` and return the `History`.

    batches:     an iterable of batches (a list or DataLoader is re-iterated epoch after epoch; a
                 one-shot iterator ends training when it runs out) or a function `get_batch(step)`.
                 Tensors in a batch (also inside tuples, lists, dicts) are moved to the model's device.
    loss_fn:     `loss_fn(model, batch) -> scalar tensor`, e.g. the mean cross-entropy in nats.
    optimizer:   defaults to AdamW(model.parameters(), lr=config.lr).
    scheduler:   stepped once after every optimizer step (e.g. `warmup_cosine`).
    evaluate:    `evaluate(model) -> {"name": value}`, run every `config.eval_every` steps (and before
                 the first) and at the end, under torch.no_grad() in eval mode; train mode is restored.
    val_batches: optional validation batches; adds "val_loss" = `estimate_loss` over
                 `config.eval_batches` of them to every evaluation.
    start_step:  the number of steps already done (resuming from a checkpoint); training runs until
                 step `config.max_steps`.
    after_step:  called with no arguments right after every optimizer step, before the scheduler's, e.g.
                 `CLIP.clamp_logit_scale_` (open_clip clamps CLIP's temperature there).
    Raises NonFiniteLossError naming the step and the last finite loss as soon as the loss (or the
    gradient norm) is NaN or infinite, before that step changes the parameters.
    """
    config = config if config is not None else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(start_step, int) or not 0 <= start_step < config.max_steps:
        raise ValueError(f"start_step must be an int in [0, max_steps={config.max_steps}), got {start_step!r}")
    device = _model_device(model, device)
    if optimizer is None:
        if config.lr is None:
            raise ValueError("pass an optimizer, or set TrainConfig.lr to use the default AdamW")
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    elif config.lr is not None:
        raise ValueError(f"TrainConfig.lr={config.lr} is only for the default optimizer, but an optimizer "
                         "was given (its own lr is used); leave TrainConfig.lr as None")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    val = None
    if val_batches is not None:
        if config.eval_batches is None and _is_endless(val_batches):  # fail now, not at the first eval
            raise ValueError("val_batches is a function or a one-shot iterator; set TrainConfig.eval_batches "
                             "to say how many batches each evaluation averages")
        val = lambda: estimate_loss(model, val_batches, loss_fn, config.eval_batches, device)  # noqa: E731
    do_eval = evaluate is not None or val is not None

    history = History(steps=start_step)
    was_training = model.training
    model.train()
    stream = _batch_stream(batches, start_step)
    seconds = 0.0  # training time only: evaluation stops the clock
    window: list[tuple[float, float, float]] = []  # (loss, grad norm, lr) since the last log
    last_good = math.nan
    bar = tqdm(total=config.max_steps, initial=start_step, disable=not config.progress,
               dynamic_ncols=True, leave=True)

    def run_eval(step: int) -> None:
        metrics = _evaluate(model, evaluate, val)
        history.eval.append(EvalRecord(step, seconds, metrics))
        bar.set_postfix(**({} if math.isnan(last_good) else {"loss": f"{last_good:.4g}"}), **_fmt(metrics))

    try:
        if do_eval and config.eval_every is not None and start_step == 0:
            run_eval(0)
        step = start_step
        history.stopped_by = "max_steps"
        while step < config.max_steps:
            t0 = time.perf_counter()
            try:
                batch = next(stream)
            except StopIteration:
                history.stopped_by = "data"
                break
            batch = to_device(batch, device)
            loss = loss_fn(model, batch)
            _check_loss(loss, step + 1)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"the loss is {loss_value} at step {step + 1} (last finite loss: {last_good:.6g}); "
                    "the parameters were not updated. Try a lower learning rate, grad_clip=1.0, or check "
                    "the inputs and the loss for log(0) or division by zero")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:  # rescale all gradients so their total norm is <= grad_clip
                grad_norm = nn.utils.clip_grad_norm_(params, config.grad_clip).item()
            else:
                grads = [p.grad for p in params if p.grad is not None]
                grad_norm = nn.utils.get_total_norm(grads).item() if grads else 0.0
            if not math.isfinite(grad_norm):
                raise NonFiniteLossError(
                    f"the gradient norm is {grad_norm} at step {step + 1} (loss {loss_value:.6g}; the last "
                    f"step's loss {last_good:.6g}); the parameters were not updated. Try grad_clip, a "
                    "lower learning rate, or float32 instead of float16")
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            if after_step is not None:
                after_step()
            if scheduler is not None:
                scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - t0
            step += 1
            last_good = loss_value
            history.steps, history.seconds = step, seconds
            window.append((loss_value, grad_norm, lr))
            bar.update(1)

            out_of_time = config.max_seconds is not None and seconds >= config.max_seconds
            if step % config.log_every == 0 or step == config.max_steps or out_of_time:
                mean = [sum(col) / len(window) for col in zip(*window)]
                history.train.append(TrainRecord(step, seconds, *mean))
                window.clear()
                bar.set_postfix(loss=f"{mean[0]:.4g}", **_fmt(history.eval[-1].metrics if history.eval else {}))
            if do_eval and config.eval_every is not None and step % config.eval_every == 0:
                run_eval(step)
            if out_of_time:
                history.stopped_by = "max_seconds"
                break
        if window:  # the data ran out mid-window
            mean = [sum(col) / len(window) for col in zip(*window)]
            history.train.append(TrainRecord(history.steps, seconds, *mean))
        if do_eval and (not history.eval or history.eval[-1].step != history.steps):
            run_eval(history.steps)
    finally:
        bar.close()
        model.train(was_training)
    return history


# ----------------------------------------------------------------------------------------------
# optimizer

def adamw(model: nn.Module, lr: float, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.999),
          **kwargs: Any) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) with weight decay on the matrices only (GPT-2/3, nanoGPT).

    Parameters with 2 or more dimensions (linear weights, embeddings, convolution kernels) decay; biases
    and LayerNorm gains and shifts (1-D) do not: shrinking a gain towards 0 would fight the normalisation
    rather than regularise. A tied weight (a GPT's token embedding and output head) is one parameter and
    is listed once. Frozen parameters (requires_grad=False) are left out.
    """
    if not weight_decay >= 0:
        raise ValueError(f"adamw: weight_decay must be >= 0, got {weight_decay!r}")
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() lists a tied weight once
    if not params:
        raise ValueError(f"adamw: {type(model).__name__} has no trainable parameters")
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, **kwargs)


# ----------------------------------------------------------------------------------------------
# learning-rate schedule

def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to `min_lr_ratio` x the base lr (GPT-2/3, nanoGPT).

    The multiplier of the base lr for update s (0-based; the scheduler is stepped after each update):
        s < warmup_steps:          (s + 1) / warmup_steps          (never a wasted update at lr 0)
        warmup_steps <= s <= total: r + (1 - r) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2
        s > total_steps:           r = min_lr_ratio
    """
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if not isinstance(total_steps, int) or total_steps <= warmup_steps:
        raise ValueError(f"total_steps must be an int > warmup_steps={warmup_steps}, got {total_steps!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        progress = min(1.0, (s - warmup_steps) / (total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------------------------
# checkpoints

@dataclass
class CheckpointInfo:
    """What `load_checkpoint` read besides the weights."""

    path: Path
    step: int | None
    metadata: dict[str, Any]
    missing_keys: list[str] = field(default_factory=list)  # only with strict=False
    unexpected_keys: list[str] = field(default_factory=list)  # only with strict=False


class CheckpointError(RuntimeError):
    """A checkpoint does not fit the model (or optimizer) it is loaded into, or is incomplete."""


def optimizer_path(path: str | os.PathLike) -> Path:
    """Where the optimizer/scheduler state of the checkpoint `path` lives: `<name>.optim.pt`."""
    return Path(path).with_suffix(".optim.pt")


def _aliases(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """{name: earlier name} for every entry that is the very same tensor as an earlier one (tied
    weights, e.g. GPT's token embedding and output head); safetensors stores each tensor once."""
    first: dict[tuple, str] = {}
    aliases = {}
    for name, t in state.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
               t.stride(), t.dtype)
        if t.numel() > 0 and key in first:
            aliases[name] = first[key]
        else:
            first.setdefault(key, name)
    return aliases


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary file next to `path`, then rename it to `path` (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, step: int | None = None,
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """Save `model`'s weights to `path` (safetensors) and, if given, the optimizer and scheduler state
    to `optimizer_path(path)`. Tied weights are stored once and re-tied on load. `metadata` must be
    JSON-serialisable. Returns `path`.

    Each file is written atomically (temporary file + os.replace); the weights file is written last and
    names the optimizer file it belongs to, so a crash between the two renames is detected on load.
    """
    path = Path(path)
    if step is not None and (not isinstance(step, int) or step < 0):
        raise ValueError(f"step must be an int >= 0 or None, got {step!r}")
    try:
        meta_json = json.dumps(dict(metadata or {}))
    except TypeError as err:
        raise TypeError(f"metadata must be JSON-serialisable (str, numbers, lists, dicts): {err}") from err
    state = model.state_dict()
    aliases = _aliases(state)
    tensors = {name: t.detach().contiguous() for name, t in state.items() if name not in aliases}
    # tensors that overlap in memory without being the same tensor cannot be stored as views
    ptrs: dict[int, str] = {}
    for name, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in ptrs:
            tensors[name] = t.clone()
        ptrs.setdefault(ptr, name)
    state_id = uuid.uuid4().hex
    header = {"format": "pt", "step": "" if step is None else str(step), "metadata": meta_json,
              "aliases": json.dumps(aliases), "optimizer_state": state_id if optimizer is not None else ""}
    opt_file = optimizer_path(path)
    if optimizer is not None:
        payload = {"id": state_id, "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict() if scheduler is not None else None}
        _atomic_write(opt_file, lambda tmp: torch.save(payload, tmp))
    elif scheduler is not None:
        raise ValueError("a scheduler without its optimizer cannot be resumed; pass optimizer= as well")
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    if optimizer is None:
        opt_file.unlink(missing_ok=True)  # a stale state from an earlier save would not match
    return path


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    strict: bool = True) -> CheckpointInfo:
    """Load a `save_checkpoint` file into `model` (and `optimizer`, `scheduler` if given).

    strict=True: the checkpoint's keys must equal the model's; otherwise a CheckpointError lists the
    missing and unexpected keys. Shapes must always match. A tied weight counts as present when any
    tensor it is tied to is present (so checkpoints from `safetensors.torch.save_model` load too).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; save one with save_checkpoint(path, model)")
    device = _model_device(model, None)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); "
                              "it may be truncated or not a checkpoint") from err
    for name, target in json.loads(header.get("aliases") or "{}").items():
        if target in state:
            state[name] = state[target]

    expected = model.state_dict()
    model_aliases = _aliases(expected)
    tied: dict[str, set[str]] = {}
    for name, target in model_aliases.items():
        group = tied.setdefault(target, {target}) | {name}
        for member in group:
            tied[member] = group
    for name in expected:  # fill a tied weight from whichever partner the file has
        if name not in state:
            partner = next((p for p in sorted(tied.get(name, ())) if p in state), None)
            if partner is not None:
                state[name] = state[partner]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatch(es): {_listing(wrong_shape, 5)}")
    if strict and missing:
        problems.append(f"{len(missing)} key(s) missing from the checkpoint: {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) in the checkpoint: {_listing(unexpected)}")
    if problems:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: " + "; ".join(problems) +
                              ". Build the model with the config the checkpoint was saved with"
                              + (", or load with strict=False to skip missing/unexpected keys." if not
                                 wrong_shape else "."))
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=strict)

    if optimizer is not None or scheduler is not None:
        if optimizer is None:
            raise ValueError("a scheduler is resumed together with its optimizer; pass optimizer= as well")
        opt_file = optimizer_path(path)
        state_id = header.get("optimizer_state", "")
        if not state_id:
            raise CheckpointError(f"{path} was saved without optimizer state; save it with "
                                  "save_checkpoint(..., optimizer=optimizer) or load without optimizer=")
        if not opt_file.is_file():
            raise CheckpointError(f"the optimizer state {opt_file} of checkpoint {path} is missing")
        payload = torch.load(opt_file, map_location=device, weights_only=True)
        if payload.get("id") != state_id:
            raise CheckpointError(f"{opt_file} belongs to a different save than {path} (an interrupted "
                                  "save?); load the weights only, or save again")
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"the optimizer state in {opt_file} does not fit this optimizer ({err}); "
                                  "create the same optimizer over the same parameters first") from err
        if scheduler is not None:
            if payload.get("scheduler") is None:
                raise CheckpointError(f"{opt_file} has no scheduler state; save it with scheduler=")
            scheduler.load_state_dict(payload["scheduler"])

    step = int(header["step"]) if header.get("step") else None
    return CheckpointInfo(path, step, json.loads(header.get("metadata") or "{}"),
                          missing if not strict else [], unexpected if not strict else [])
