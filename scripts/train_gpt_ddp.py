"""Data-parallel training of the character-level GPT with PyTorch's DistributedDataParallel (chapter 7).

Launch it from the repository root, with torchrun starting one process ("rank") per CPU group or GPU:

    torchrun --standalone --nproc_per_node=2 -m scripts.train_gpt_ddp --steps 100
    torchrun --standalone --nproc_per_node=4 -m scripts.train_gpt_ddp --steps 2000 --batch-size 64 \\
        --block-size 128 --n-layer 4 --n-head 4 --n-embd 128 --save runs/gpt_ddp.safetensors

(`torchrun` is `python -m torch.distributed.run`; `--standalone` starts the rendezvous on this machine,
on a free local port, so no address or port is needed.) Without torchrun the same script trains in one
process, world size 1, with no process group at all:

    python -m scripts.train_gpt_ddp --steps 100

Set OMP_NUM_THREADS (torchrun sets it to 1 if unset) so the ranks do not fight over the CPU cores.
The text is Tiny Shakespeare (`utils.data`, read from $ONEHOT_DATA_DIR when set), or any UTF-8 file
given with --text-file.

What data parallelism does (Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training"):
1. Every rank holds a full copy of the model. The copies start equal: every rank builds the model from
   the same seed, and DistributedDataParallel (DDP) also broadcasts rank 0's weights when it wraps it.
2. The global batch of B sequences is split into W shards of B / W, one per rank (W = world size).
   Here every rank draws the *whole* global batch of step s from a generator seeded with (seed, s), so
   all ranks agree on it without talking, and rank r keeps its contiguous slice [r B/W, (r+1) B/W).
3. Each rank runs forward and backward on its shard only. During backward DDP all-reduces the
   gradients (sums them over the ranks and divides by W), bucket by bucket, while later layers are
   still being differentiated. Each rank's loss is the mean over its B/W sequences, so the average of
   the W shard gradients is exactly the gradient of the mean loss over all B sequences:
       (1/W) sum_r grad (1/(B/W)) sum_{i in shard r} l_i  =  grad (1/B) sum_i l_i.
4. Every rank now holds the same gradient, so the optimizer (AdamW, gradient clipping, schedule) takes
   the same step everywhere and the copies stay identical, with no parameter ever sent again.

So W processes on a global batch B compute what one process computes on the same B, W times faster in
the ideal case; `tests/test_ddp.py` checks that the parameters agree after a few steps. (Equal up to
float rounding: the all-reduce adds the shard gradients in a different order than one backward pass.
One exception is instructive: the attention key biases. Adding b_k to every key adds the same q . b_k to
every score of a query, which the softmax ignores, so their true gradient is exactly 0 and what backward
returns is rounding noise (about 1e-10). Adam divides each gradient by its running size (+ eps = 1e-8), so
the noise still moves them, far less than lr but far more than rounding, and differently in the two runs.
They stay near 0, their exact value, in both.)
With dropout > 0 the ranks draw different dropout masks (seeded seed + rank), so the runs then differ.

The training loop is the book's `utils.train.train`, unchanged: DDP needs nothing from it but calling
the wrapped model. Every rank evaluates its shard of the validation batches and one all-reduce adds them
up; rank 0 alone shows the progress bar, prints and saves. The progress bar shows rank 0's loss on its
own shard (the loop logs the local loss); the validation loss covers the whole validation batches.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from utils.data import tiny_shakespeare, train_val_split
from utils.gpt import GPT, GPTConfig
from utils.text import CharVocab
from utils.train import TrainConfig, adamw, save_checkpoint, train, warmup_cosine

TRAIN_STREAM, VAL_STREAM = 0, 1  # independent random streams for training and validation batches


# ----------------------------------------------------------------------------------------------
# who am I: rank and world size as torchrun passes them (environment variables)

def world_from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) when not launched by it."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as err:
        raise RuntimeError(f"WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers ({err}); launch "
                           "with torchrun, or unset WORLD_SIZE to train in one process") from None
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world, local_rank


def pick_device(requested: str | None, local_rank: int, world: int) -> torch.device:
    """--device, or cuda:<local rank> when CUDA is available, else cpu. Each rank gets its own GPU."""
    if requested is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested} was requested but CUDA is not available; use --device cpu")
        if device.index is None:  # "cuda": one GPU per rank on this node
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"{device} does not exist: this machine has {torch.cuda.device_count()} GPU(s); launch "
                             "at most that many processes per node (--nproc_per_node)")
    elif device.type != "cpu" and world > 1:
        raise ValueError(f"--device {requested}: DDP here runs on cpu (gloo) or cuda (nccl), not {device.type}")
    return device


# ----------------------------------------------------------------------------------------------
# data: the same global batch on every rank, then each rank's slice

def generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, stream, index): every rank, and a single process, draws
    the same numbers for the same step, whatever happened before (NumPy's SeedSequence mixes the three)."""
    state = np.random.SeedSequence([seed, stream, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def global_batch(data: Tensor, step: int, batch_size: int, block_size: int, seed: int,
                 stream: int = TRAIN_STREAM) -> tuple[Tensor, Tensor]:
    """The global batch of `step`: inputs x and next-token targets y, each (B, T), from random windows
    of the 1-D token tensor `data` (nanoGPT's get_batch, with a generator seeded by step)."""
    if len(data) < block_size + 2:
        raise ValueError(f"the text has {len(data)} tokens, too few for windows of block_size + 1 = "
                         f"{block_size + 1}; use a longer text or a smaller --block-size")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator(seed, stream, step))  # (B,)
    x = torch.stack([data[i:i + block_size] for i in starts.tolist()])  # (B, T)
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in starts.tolist()])  # (B, T)
    return x, y


def shard(batch: tuple[Tensor, Tensor], rank: int, world: int) -> tuple[Tensor, Tensor]:
    """Rank `rank`'s contiguous slice of a global batch: sequences [rank b, (rank+1) b), b = B / world."""
    B = batch[0].shape[0]
    if B % world:
        raise ValueError(f"a global batch of {B} cannot be split evenly over {world} ranks")
    b = B // world
    return tuple(t[rank * b:(rank + 1) * b] for t in batch)  # each (b, T)


# ----------------------------------------------------------------------------------------------
# model, loss, evaluation

def make_model(config: GPTConfig, seed: int) -> GPT:
    """The GPT every rank starts from: its initial weights depend only on `seed`."""
    torch.manual_seed(seed)
    return GPT(config)


def lm_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean next-token cross-entropy over the batch. `model` is the DDP wrapper: calling it (not
    model.module) is what lets DDP all-reduce the gradients during backward."""
    x, y = batch
    _, loss = model(x, y)
    return loss


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model


@torch.no_grad()
def global_val_loss(model: nn.Module, data: Tensor, n_batches: int, batch_size: int, block_size: int,
                    seed: int, rank: int, world: int) -> float:
    """Mean loss over `n_batches` fixed validation batches (the same ones at every evaluation): each
    rank scores its shard, then one all-reduce sums the shard means. Needs no gradient sync, so it
    runs the unwrapped module."""
    net = unwrap(model)
    device = next(net.parameters()).device
    total = torch.zeros((), device=device, dtype=torch.float64)
    for i in range(n_batches):
        x, y = shard(global_batch(data, i, batch_size, block_size, seed, VAL_STREAM), rank, world)
        total += lm_loss(net, (x.to(device), y.to(device))).double()
    if world > 1:
        dist.all_reduce(total)  # sum over ranks of the sums of shard means
    return total.item() / (n_batches * world)


def replicas_identical(model: nn.Module) -> bool:
    """True when every rank holds bit-for-bit the same parameters as rank 0 (they took the same steps)."""
    flat = torch.cat([p.detach().flatten() for p in unwrap(model).parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    same = torch.tensor(int(torch.equal(flat, ref)), device=flat.device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item())


# ----------------------------------------------------------------------------------------------
# command line

def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.train_gpt_ddp",
                                description="Train the char-level GPT on Tiny Shakespeare, data-parallel under "
                                            "torchrun (DistributedDataParallel) or in one process.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=positive_int, default=100, help="optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="GLOBAL batch (sequences per step, summed over ranks); must be divisible by the world size")
    p.add_argument("--block-size", type=positive_int, default=64, help="context length T")
    p.add_argument("--n-layer", type=positive_int, default=2)
    p.add_argument("--n-head", type=positive_int, default=4)
    p.add_argument("--n-embd", type=positive_int, default=64)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of AdamW")
    p.add_argument("--warmup-steps", type=non_negative_int, default=0,
                   help="linear warm-up, then cosine decay to 0.1 x lr (utils.train.warmup_cosine)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max total gradient norm; 0 disables clipping")
    p.add_argument("--seed", type=non_negative_int, default=0, help="model initialisation and batch order")
    p.add_argument("--eval-every", type=non_negative_int, default=0,
                   help="evaluate every N steps (0: only at the end)")
    p.add_argument("--eval-batches", type=non_negative_int, default=10,
                   help="global validation batches per evaluation (0: no evaluation)")
    p.add_argument("--log-every", type=positive_int, default=10)
    p.add_argument("--text-file", type=Path, default=None,
                   help="train on this UTF-8 text instead of Tiny Shakespeare")
    p.add_argument("--save", type=Path, default=None,
                   help="rank 0 writes the final weights here (safetensors, atomically)")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: cuda:<local rank> when CUDA is available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    args = p.parse_args(argv)
    if not 0.0 <= args.dropout < 1.0:
        p.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if args.grad_clip < 0:
        p.error(f"--grad-clip must be >= 0 (0 disables clipping), got {args.grad_clip}")
    if args.warmup_steps >= args.steps:
        p.error(f"--warmup-steps {args.warmup_steps} must be smaller than --steps {args.steps}")
    if args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} is not divisible by --n-head {args.n_head}")
    if args.text_file is not None and not args.text_file.is_file():
        p.error(f"--text-file {args.text_file} does not exist")
    args.error = p.error
    return args


def load_text(path: Path | None) -> str:
    return tiny_shakespeare() if path is None else path.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# main

def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rank, world, local_rank = world_from_env()
    # Check before starting the process group, so every rank stops at once with the same message.
    if args.batch_size % world:
        lower, upper = args.batch_size // world * world, (args.batch_size // world + 1) * world
        options = f"{lower} or {upper}" if lower else f"{upper}"
        args.error(f"--batch-size {args.batch_size} is the global batch and must be divisible by the world size "
                   f"{world} (each of the {world} ranks trains on batch_size / world_size sequences); use a "
                   f"multiple of {world}, e.g. {options}")
    try:
        device = pick_device(args.device, local_rank, world)
    except ValueError as err:
        args.error(str(err))
    distributed = world > 1
    if distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # gloo runs the collectives on CPU tensors, nccl on CUDA tensors; torchrun's environment
        # (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) tells every rank where to meet.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        run(args, rank, world, device)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


def run(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> None:
    main_rank = rank == 0
    say = print if main_rank and not args.quiet else (lambda *a, **k: None)

    if main_rank and args.text_file is None:
        load_text(None)  # rank 0 downloads Tiny Shakespeare once if needed; the others wait, then read it
    if world > 1:
        dist.barrier()
    text = load_text(args.text_file)
    vocab = CharVocab.from_text(text)
    train_text, val_text = train_val_split(text, 0.9)
    train_data, val_data = vocab.encode(train_text), vocab.encode(val_text)  # 1-D int64 token ids
    for name, data in (("training", train_data), ("validation", val_data)):
        if len(data) < args.block_size + 2:
            raise ValueError(f"the {name} split has {len(data)} characters, too few for --block-size "
                             f"{args.block_size}; use a longer text or a smaller --block-size")

    config = GPTConfig(vocab_size=len(vocab), block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout)
    model = make_model(config, args.seed).to(device)  # the same initial weights on every rank
    torch.manual_seed(args.seed + rank)  # dropout masks: different on each rank
    if world > 1:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = adamw(model, lr=args.lr, weight_decay=0.1, betas=(0.9, 0.99))  # decay on matrices only, as nanoGPT
    scheduler = warmup_cosine(optimizer, args.warmup_steps, args.steps)

    local_batch = args.batch_size // world
    say(f"{world} process(es) on {device.type} ({dist.get_backend() if world > 1 else 'no process group'}) | "
        f"global batch {args.batch_size} = {world} x {local_batch} sequences of {args.block_size} characters | "
        f"GPT {unwrap(model).num_params():,} parameters, vocabulary {len(vocab)}")

    def get_batch(step: int) -> tuple[Tensor, Tensor]:
        return shard(global_batch(train_data, step, args.batch_size, args.block_size, args.seed), rank, world)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"val_loss": global_val_loss(m, val_data, args.eval_batches, args.batch_size, args.block_size,
                                            args.seed, rank, world)}

    history = train(model, get_batch, lm_loss, optimizer=optimizer, scheduler=scheduler,
                    evaluate=evaluate if args.eval_batches else None,
                    config=TrainConfig(max_steps=args.steps, grad_clip=args.grad_clip or None,
                                       eval_every=args.eval_every or None, log_every=args.log_every,
                                       progress=main_rank and not args.quiet))

    if world > 1 and not replicas_identical(model):
        raise RuntimeError("the model replicas differ between ranks after training; they must take identical "
                           "steps (same initial weights, all-reduced gradients, same optimizer settings)")
    summary = f"{history.steps} steps in {history.seconds:.1f} s | train loss (rank 0's shard) {history.last_loss:.4f}"
    if history.eval:
        summary += f" | val loss {history.last_eval['val_loss']:.4f}"
    say(summary + (" | replicas identical on all ranks" if world > 1 else ""))

    if main_rank and args.save is not None:
        metadata = {"gpt_config": asdict(config), "vocab": vocab.itos, "world_size": world,
                    "global_batch": args.batch_size, "seed": args.seed, "lr": args.lr,
                    "text": "tiny_shakespeare" if args.text_file is None else str(args.text_file)}
        path = save_checkpoint(args.save, unwrap(model), step=history.steps, metadata=metadata)
        say(f"saved {path}")


if __name__ == "__main__":
    sys.exit(main())
