"""Decoding speed at batch 1 of a GPT-2-small-sized model in float32 and with int8 weights, side by side.

A GPT with GPT-2 small's sizes (12 layers, 12 heads, 768 channels, 50,257-token vocabulary, 124M
parameters; random weights: speed does not depend on what the weights say) continues a 16-token prompt
by 64 tokens, greedily, with the KV cache (`utils.gpt.generate`). At batch 1 every new token reads every
weight once, so decoding is limited by memory traffic and a 4x smaller weight should be faster. Variants:

- fp32: the model as it is;
- int8 dynamic (torch.ao.quantization.quantize_dynamic, fbgemm): with its default configuration, int8
  weights with one scale per tensor (symmetric), activations quantized per tensor on the fly (unsigned,
  with fbgemm's reduce_range), int8 matrix products (torch.ao.quantization is deprecated in favour of
  torchao, but it is the CPU kernel that is fast here);
- torchao Int8WeightOnlyConfig and Int8DynamicActivationInt8WeightConfig (`torchao.quantization.quantize_`),
  when torchao is installed, in eager mode (no torch.compile);
- torchao Int4WeightOnlyConfig is tried and reported if it refuses (it needs a kernel package on CPU);
- speculative decoding (utils.speculative, Leviathan et al. 2023) with the int8 dynamic model as the
  draft of the fp32 model, greedy, k = 4: its output is checked to be the fp32 model's greedy output, token
  for token, and the draft's acceptance rate is printed. With random weights the two models' argmaxes
  often differ, so this row measures the machinery's cost more than a trained draft's benefit.

Runs are interleaved (one of each, then again) and the best of `--repeats` counts. Also prints the bytes
of each model's state (what a checkpoint would hold). Prints the int8 / fp32 tokens-per-second ratio.

    python benchmarks/quantized_decode.py [--repeats 3] [--new-tokens 64] [--threads 0]

One run on the book's 2-core CPU machine (2026-12-03, torch 2.14.1, torchao 0.18.0): fp32 33.9 tokens/s,
int8 dynamic (torch.ao) 103.4 (3.04x), torchao int8 weight-only 12.5 (0.37x), torchao int8 dynamic
activations 9.1 (0.27x), torchao int4 refused ("Requires mslk >= 1.0.0"). Checkpoints 498 MB and 282 MB:
quantize_dynamic converts the nn.Linear layers only, and the 50,257 x 768 token table stays in float32.
A run with the speculative row (2026-12-07, --threads 1, another job running on the other core): fp32
20.0 tokens/s, int8 dynamic 91.7 (4.58x), speculative decoding with the int8 model as the fp32 model's
draft, k = 4, 30.0 (1.50x fp32): every draft token accepted, the output the fp32 model's greedy output.
It is slower than the int8 model alone, since every round still runs the fp32 model once.
"""
from __future__ import annotations

import copy
import io
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import decoding_args  # noqa: E402
from utils.gpt import GPT, GPTConfig, generate  # noqa: E402
from utils.speculative import speculative_generate  # noqa: E402


def state_bytes(model: nn.Module) -> int:
    """Bytes of torch.save(model.state_dict()) (quantized tensors included), a checkpoint's size."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def variants(model: GPT) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {"fp32": model}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out["int8 dynamic (torch.ao)"] = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    try:
        from torchao.quantization import (Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                                          Int8WeightOnlyConfig, quantize_)
    except ImportError:
        print("torchao is not installed: its variants are skipped (pip install -r requirements.txt)")
        return out
    for name, config in (("int8 weight-only (torchao)", Int8WeightOnlyConfig()),
                         ("int8 dyn. act. (torchao)", Int8DynamicActivationInt8WeightConfig()),
                         ("int4 weight-only (torchao)", Int4WeightOnlyConfig(group_size=128))):
        m = copy.deepcopy(model)
        try:
            quantize_(m, config)
            out[name] = m
        except Exception as err:  # noqa: BLE001 - report what a reader would meet
            print(f"{name}: refused on this machine: {type(err).__name__}: {str(err).splitlines()[0][:150]}")
    return out


def main() -> None:
    args = decoding_args(__doc__, new_tokens=64)
    config = GPTConfig()  # GPT-2 small
    model = GPT(config).eval()
    prompt = torch.randint(config.vocab_size, (1, args.prompt_tokens))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; GPT-2-small-sized "
          f"GPT ({model.num_params() / 1e6:.0f}M parameters, random weights), {args.prompt_tokens}-token prompt + "
          f"{args.new_tokens} new tokens, batch 1, greedy with the KV cache, best of {args.repeats} interleaved rounds")
    models = variants(model)
    draft = models["int8 dynamic (torch.ao)"]
    spec = "speculative, int8 draft, k=4"
    runs = {name: (lambda m=m: generate(m, prompt, args.new_tokens, greedy=True)) for name, m in models.items()}
    runs[spec] = lambda: speculative_generate(model, draft, prompt, args.new_tokens, k=4, greedy=True)
    best = {name: float("inf") for name in runs}
    with torch.inference_mode():
        for name, m in models.items():  # warm-up: first calls allocate and pick kernels
            generate(m, prompt, 4, greedy=True)
        reference = generate(model, prompt, args.new_tokens, greedy=True)
        out, stats = speculative_generate(model, draft, prompt, args.new_tokens, k=4, greedy=True)
        if not torch.equal(out, reference):
            raise AssertionError("speculative decoding changed the fp32 model's greedy output")
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - start)
    rate = {name: args.new_tokens / t for name, t in best.items()}
    for name in runs:
        size = f"state {state_bytes(models[name]) / 1e6:6.0f} MB" if name in models else \
            f"{stats.acceptance_rate:.0%} of the draft's tokens accepted; output = fp32's greedy output"
        print(f"{name:>28}: {rate[name]:7.1f} tokens/s   {rate[name] / rate['fp32']:4.2f}x fp32   {size}")
    ratio = rate["int8 dynamic (torch.ao)"] / rate["fp32"]
    print(f"int8 (torch.ao dynamic) / fp32 decoding speed: {ratio:.2f}x")


if __name__ == "__main__":
    main()
