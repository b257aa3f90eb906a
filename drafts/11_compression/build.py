"""Build chapters/11_compression.ipynb (run under flock /tmp/nb-locks/11.lock)."""
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

sys.path.insert(0, "/work/main")
from scripts.setup_cell import SETUP_TAGS, render  # noqa: E402

cells = []


def md(s):
    cells.append(new_markdown_cell(s.strip("\n")))


def code(s, tags=None):
    c = new_code_cell(s.strip("\n"))
    if tags:
        c.metadata["tags"] = list(tags)
    cells.append(c)


IGN = ["nbval-ignore-output"]

md(r"""
# Making models small and fast

How does a lab ship a "mini" model that keeps most of the big one's quality at a fraction of the cost?
The recipes of commercial models are not public, but the techniques are: store each weight in fewer
bits (**quantization**), remove the weights and neurons that matter least (**pruning**), train a small
model to imitate a big one (**distillation**), and make attention cheaper (**linear attention**,
**multi-query attention**). This chapter builds each one by hand on chapter 7's character GPT, proves it
equal to the library version, and measures what it buys (bytes, speed, validation loss) side by side.

```{admonition} Runtime
:class: note
About 3 minutes on a 2-core CPU; CI fails the chapter if it takes longer than **5 minutes**. The chapter
does not retrain chapter 7's GPT: it loads the checkpoint `checkpoints/char_gpt_shakespeare.safetensors`,
which `python -m scripts.train_char_gpt` reproduces bit for bit from chapter 7's recipe (about 3 minutes).
On a GPU the students and fine-tunes train longer by themselves.
```
""")

md(r"""
## Learning goals

By the end of this chapter you can:

- say where the cost of running a language model is (parameters, bytes, FLOPs, the KV cache) and why
  decoding one sequence at a time is limited by memory traffic rather than arithmetic;
- quantize weights by hand (symmetric and asymmetric, per tensor, per channel, per group), prove the
  integers equal to `torch.quantize_per_channel`, and measure the loss each choice costs;
- prune by magnitude (proven equal to `torch.nn.utils.prune`) and by structure, and explain why only
  the second makes a dense model faster;
- distil a teacher into a student four times smaller with Hinton's loss, and compare it honestly with
  the same student trained alone;
- write causal linear attention in its parallel and recurrent forms, and count the KV-cache bytes that
  multi-query and grouped-query attention save.
""")

cells.append(new_code_cell(render(), metadata={"tags": list(SETUP_TAGS)}))

code(r"""
import copy
import logging
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from utils import viz
from utils.checkpoints import CHAR_GPT, load_char_gpt
from utils.compress import (LinearAttention, causal_linear_attention, compressible_weights, distillation_loss,
                            fake_quantize_, head_ablation_scores, kv_cache_bytes, linear_attention_gpt,
                            linear_attention_recurrent, magnitude_mask, mlp_neuron_scores, prune_mlp_neurons_,
                            prune_unstructured_, quantize, quantized_nbytes, sparsity, train_student)
from utils.checkpoints import char_data
from utils.gpt import GPT, GPTConfig, generate, validation_windows
from utils.runtime import time_per_call
""")

md(r"""
## The model we compress

The model is chapter 7's character-level GPT: 4 layers, 4 heads, 128 channels, a context of 128
characters, trained with chapter 7's recipe for its full 1,800 steps. Training it again here would take
three of our five minutes, so a script trains it once and saves it as a checkpoint in the repository
(`safetensors`, 3 MB). Its sha256 is written in `utils.checkpoints`, and the loader refuses a file
that differs. To retrain it yourself:

```bash
python -m scripts.train_char_gpt      # chapter 7's recipe, seed 0, 2 threads: the same bytes
```

All the losses in this chapter are measured on the same 128 validation windows of 128 characters
(16,384 characters, drawn once with a fixed seed as in chapter 7), so every comparison is paired:
each variant reads exactly the same text. (On a GPU the chapter uses 1,024 windows.)
""")

code(r"""
teacher, chars = load_char_gpt(device=device)
_, train_ids, val_ids = char_data()
BLOCK = teacher.config.block_size
VAL_WINDOWS = 128 if device.type == "cpu" else 1024
val_batches = [(x.to(device), y.to(device)) for x, y in validation_windows(val_ids, BLOCK, n=VAL_WINDOWS)]


@torch.no_grad()
def val_loss(model):
    model.eval()
    return sum(F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten()).item() for x, y in val_batches) / len(val_batches)


def sample(model, prompt="ROMEO:\n", n=160, seed=0):
    ids = chars.encode(prompt).to(device)
    out = generate(model, ids, n, temperature=0.8, top_k=20, generator=torch.Generator(device).manual_seed(seed))
    return chars.decode(out.tolist())


base_loss = val_loss(teacher)
print(f"teacher: {teacher.num_params():,} parameters, validation loss {base_loss:.4f} nats/char")
print(sample(teacher))
""")

md(r"""
## Where the cost is

Three numbers describe what a model costs to run. Its **parameters**, and the **bytes** they take
(4 per parameter in float32, 2 in bfloat16). The **FLOPs per token**: each weight is used in one
multiply and one add per token, so a forward pass costs about 2 FLOPs per parameter, plus attention
over the context. And the **KV cache**: every layer keeps a key and a value vector for every past
token (chapter 7). On a GPU server the cache, not the weights, often limits how many sequences fit
in memory at once.
""")

code(r"""
def cost_table(config, n_params, context):
    C, L = config.n_embd, config.n_layer
    attn_flops = 2 * 2 * L * context * C  # q·k and weights·v over the context, per token
    kv = kv_cache_bytes(L, config.n_head, C // config.n_head, context, bytes_per_number=4)
    return (f"{n_params / 1e6:8.2f}M params  {4 * n_params / 1e6:8.1f} MB fp32  {2 * n_params / 1e6:8.1f} MB bf16  "
            f"{(2 * n_params + attn_flops) / 1e6:9.1f} MFLOP/token  KV cache {kv / 1e6:7.2f} MB per sequence")


gpt2 = GPTConfig()  # GPT-2 small, counted without building it
gpt2_params = (gpt2.vocab_size + gpt2.block_size) * gpt2.n_embd + gpt2.n_layer * (12 * gpt2.n_embd**2 + 13 * gpt2.n_embd) + 2 * gpt2.n_embd
print(f"{'our GPT (context 128)':>24}: {cost_table(teacher.config, teacher.num_params(), BLOCK)}")
print(f"{'GPT-2 small (context 1024)':>24}: {cost_table(gpt2, gpt2_params, 1024)}")
""")

md(r"""
How fast can this machine do arithmetic, and how fast can it read memory? Two measurements give the
two roofs of a **roofline** picture {footcite}`williams2009roofline`: a large matrix product
(compute-bound) and a large copy (memory-bound). A matrix-vector product, which is what decoding one
token does with every weight matrix, performs 2 FLOPs per weight it reads, 0.5 FLOP per byte in
float32. That is far below what the arithmetic units could sustain, so it runs at the speed of memory.
A batch of 32 tokens reuses each weight 32 times.
""")

code(r"""
n = 1024
a, b = torch.randn(n, n), torch.randn(n, n)
peak = 2 * n**3 / min(time_per_call(lambda: a @ b, repeats=5) for _ in range(3))  # FLOP/s
big = torch.randn(32 * 2**20)  # 128 MB, far larger than the caches
bandwidth = 2 * big.numel() * 4 / min(time_per_call(lambda: big.clone(), repeats=3) for _ in range(3))  # read + write B/s
del big

points = {}
for batch in (1, 8, 32, 256):
    layer = nn.Linear(768, 3072)  # GPT-2 small's first MLP matrix
    x = torch.randn(batch, 768)
    with torch.no_grad():
        t = min(time_per_call(lambda: layer(x), repeats=20) for _ in range(3))
    flops, bytes_ = 2 * batch * 768 * 3072, 4 * (768 * 3072 + batch * (768 + 3072))
    points[batch] = (flops / bytes_, flops / t)
print(f"this CPU: {peak / 1e9:.0f} GFLOP/s on a 1024² matmul, {bandwidth / 1e9:.1f} GB/s on a 128 MB copy")
for batch, (intensity, rate) in points.items():
    print(f"768→3072 Linear, batch {batch:>3}: {intensity:5.1f} FLOP/byte, {rate / 1e9:6.1f} GFLOP/s")
""", IGN)

code(r"""
with viz.style():
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = np.logspace(-1.5, 3, 200)
    ax.plot(xs, np.minimum(peak, bandwidth * xs) / 1e9, color="0.45", label="roofline: min(peak, bandwidth × intensity)")
    for batch, (intensity, rate) in points.items():
        ax.scatter(intensity, rate / 1e9, s=40, zorder=3)
        ax.annotate(f"batch {batch}", (intensity, rate / 1e9), textcoords="offset points", xytext=(6, -12))
    ax.axvline(peak / bandwidth, color="0.7", ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP per byte moved)", ylabel="GFLOP/s",
           title="Measured roofline of this CPU")
    ax.legend(loc="lower right")
    plt.show()
""", IGN)

md(r"""
At batch 1 the Linear layer sits on the sloping, memory-bound part of the roof: its speed is set by
how fast the weights stream in from memory, and the arithmetic units mostly wait. Larger batches
move right, towards the flat compute roof (the dotted line marks where the two roofs meet). So for
decoding one sequence, the cheapest speed-up is to **move fewer bytes per weight**, which is what
quantization does. The points are noisy on a shared machine; their positions relative to the roofs
are what matter.
""")

md(r"""
## Quantization

A quantized weight is an integer $q$ with a scale $s$ and a zero point $z$ {footcite}`jacob2018quantization`:

$$ w \approx \hat w = s\,(q - z), \qquad q = \operatorname{clamp}\!\big(\operatorname{round}(w / s) + z,\; q_{\min},\; q_{\max}\big). $$

**Symmetric** quantization fixes $z = 0$ and $s = \max|w| / (2^{b-1} - 1)$, so $b$ bits give the
integers $-127 \dots 127$ for $b = 8$. **Asymmetric** quantization maps $[\min w, \max w]$ (stretched to
include 0) onto $0 \dots 2^b - 1$, using every level when the values are lopsided. Rounding to the
nearest level makes an error of at most $s/2$ per weight. The other choice is **granularity**: one
scale for the whole tensor, one per output channel (row), or one per group of $g$ consecutive weights
in a row. A single large weight stretches the scale of everything that shares it. Here are both
schemes written out:
""")

code(r"""
def quantize_symmetric(w, bits, dim=None):
    # dim=None: one scale for the tensor; dim=1: one scale per row (output channel), reducing over columns
    qmax = 2 ** (bits - 1) - 1
    amax = w.abs().max() if dim is None else w.abs().amax(dim=dim, keepdim=True)  # () or (O, 1)
    scale = amax / qmax
    q = torch.clamp(torch.round(w / scale), -qmax, qmax)  # integers in [-qmax, qmax]
    return q.to(torch.int8), scale


def quantize_asymmetric(w, bits, dim=1):
    qmax = 2**bits - 1
    lo = w.amin(dim=dim, keepdim=True).clamp(max=0)  # (O, 1), the range includes 0
    hi = w.amax(dim=dim, keepdim=True).clamp(min=0)
    scale = (hi - lo) / qmax
    zero = torch.round(-lo / scale)  # the integer that stands for 0.0
    q = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
    return q.to(torch.uint8), scale, zero


w = teacher.transformer.h[0].mlp.c_fc.weight.detach().cpu()  # (512, 128)
q_t, s_t = quantize_symmetric(w, 8)
q_c, s_c = quantize_symmetric(w, 8, dim=1)
q_a, s_a, z_a = quantize_asymmetric(w, 8)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch's quantized tensors are deprecated too; the integers are what we compare
    ref_t = torch.quantize_per_tensor(w, s_t.item(), 0, torch.qint8)
    ref_c = torch.quantize_per_channel(w, s_c.flatten(), torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
    ref_a = torch.quantize_per_channel(w, s_a.flatten(), z_a.flatten().long(), 0, torch.quint8)
assert torch.equal(q_t, ref_t.int_repr()) and torch.equal(q_c, ref_c.int_repr()) and torch.equal(q_a, ref_a.int_repr())
ours = quantize(w, 8, "channel")
assert torch.equal(ours.q.reshape(w.shape), q_c) and torch.equal(quantize(w, 8, "channel", symmetric=False).q.reshape(w.shape), q_a)
for name, q, s, z in (("per tensor", q_t, s_t, 0), ("per channel", q_c, s_c, 0), ("asymmetric per channel", q_a, s_a, z_a)):
    err = (w - s * (q.float() - z)).abs()
    assert (err <= s / 2 + 1e-7).all()
    print(f"{name:>23}: max |error| {err.max():.2e}, mean |error| {err.mean():.2e}")
print("✓ integers equal to torch.quantize_per_tensor / quantize_per_channel (and utils.compress.quantize); |error| ≤ scale/2")
""")

md(r"""
The integers are exactly PyTorch's. Per channel, the error is smaller because each row gets a scale
that fits its own range. For 4 bits, one scale per row is too coarse: there are only 15 levels. The
weight-only 4-bit formats used for large language models (GPTQ {footcite}`frantar2023gptq`, AWQ, the
`Q4` formats of llama.cpp) keep a scale per **group** of 32 to 128 consecutive weights. The rows are
reshaped into groups and each group is quantized on its own:
""")

code(r"""
def quantize_groups(w, bits, group_size):
    O, I = w.shape
    groups = w.reshape(O, I // group_size, group_size)  # (O, G, g): each row cut into G groups
    q, scale = quantize_symmetric(groups, bits, dim=2)  # one scale per group: (O, G, 1)
    return (scale * q.float()).reshape(O, I)  # dequantized, back to (O, I)


for g in (128, 32):
    w4 = quantize_groups(w, 4, g)
    torch.testing.assert_close(w4, quantize(w, 4, g).dequantize(), rtol=0, atol=0)
    print(f"int4, groups of {g:>3}: max |error| {(w - w4).abs().max():.2e}, {w.shape[0] * w.shape[1] // g:,} scales")
print("✓ equal to utils.compress.quantize(w, 4, group_size)")
""")

md(r"""
To see what the model loses we **fake-quantize** it: every weight matrix (the token and position
tables and the four Linear layers of each block) is replaced by its dequantized values $\hat w$, and
the model runs in float as before. The loss is then exactly what an integer kernel with these weights
would compute, up to float rounding. The bytes are counted as they would be stored: $b$ bits per
weight, plus a 16-bit scale (and zero point, if any) per row or group, plus the biases and LayerNorms
in float32. bfloat16 keeps float32's exponent range with 8 bits of mantissa; float16 has more mantissa
but a narrow range, which is why chapter 9's CLIP computes its LayerNorms in float32: in float16 the
squares of large activations overflow.
""")

code(r"""
fp32_bytes = quantized_nbytes(teacher)
settings = {  # name: (bits, granularity, symmetric)
    "int8 per tensor": (8, "tensor", True),
    "int8 per channel": (8, "channel", True),
    "int8 asym. per channel": (8, "channel", False),
    "int4 per channel": (4, "channel", True),
    "int4 groups of 128": (4, 128, True),
    "int4 groups of 32": (4, 32, True),
}
quant = {"fp32": (base_loss, 1.0), "bf16": (val_loss(copy.deepcopy(teacher).to(torch.bfloat16)), 0.5)}
for name, (bits, gran, sym) in settings.items():
    model = fake_quantize_(copy.deepcopy(teacher), bits, gran, sym)
    quant[name] = (val_loss(model), quantized_nbytes(teacher, bits, gran, sym) / fp32_bytes)
print(f"{'':>24} {'val loss':>9} {'Δ vs fp32':>10} {'bytes':>7}")
for name, (loss, ratio) in quant.items():
    print(f"{name:>24} {loss:9.4f} {loss - base_loss:+10.4f} {ratio:6.3f}×")
""")

md(r"""
Read the table from the top. bfloat16 and every 8-bit variant cost almost nothing (a few thousandths
of a nat per character or less). Per tensor is already fine at 8 bits for a model this small, with
no outliers. At 4 bits the granularity matters. One scale per row loses visibly more, and groups of
32 recover most of it, for a few percent more bytes (one 16-bit scale per 32 weights adds half a bit
per weight). In large models this is where per-tensor int8 breaks down: a few feature dimensions
carry activations a hundred times larger than the rest, and LLM.int8() {footcite}`dettmers2022llmint8`
keeps those in 16 bits to quantize everything else. The bytes column is below the ideal 0.25× and 0.125× plus scales only by the float32
biases and LayerNorms.

### The library way

Writing the integers is half of the story: the speed comes from kernels that multiply int8 matrices.
PyTorch's older API, `torch.ao.quantization.quantize_dynamic`, replaces every `nn.Linear` by one with
int8 per-channel weights and quantizes the activations on the fly. PyTorch has deprecated
`torch.ao.quantization` in favour of **torchao** {footcite}`torchao2024`, whose `quantize_(model, config)`
does the same on any model. We try both on a layer of GPT-2 small's size, at batch 1:
""")

code(r"""
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # a torchao import-time notice
try:
    import torchao
    from torchao.quantization import Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
except ImportError:
    torchao = None
    print("torchao is not installed here (pip install torchao==0.18.0): only torch.ao is measured")

torch.manual_seed(0)
mlp = nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768)).eval()  # GPT-2 small's MLP
x1 = torch.randn(1, 768)
variants = {"fp32": mlp}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the deprecation notices of torch.ao.quantization
    variants["torch.ao quantize_dynamic int8"] = torch.ao.quantization.quantize_dynamic(copy.deepcopy(mlp), {nn.Linear}, torch.qint8)
if torchao is not None:
    for name, config in (("torchao int8 weight-only", Int8WeightOnlyConfig()),
                         ("torchao int8 dynamic act.", Int8DynamicActivationInt8WeightConfig()),
                         ("torchao int4 weight-only", Int4WeightOnlyConfig(group_size=128))):
        m = copy.deepcopy(mlp)
        try:
            quantize_(m, config)
            variants[name] = m
        except Exception as err:  # what a reader meets on a CPU without the extra kernel package
            print(f"{name}: refused: {type(err).__name__}: {str(err).splitlines()[0][:100]}")
times = {name: float("inf") for name in variants}
with torch.inference_mode():
    ref_out = mlp(x1)
    for _ in range(5):  # interleaved rounds, the best of each
        for name, m in variants.items():
            times[name] = min(times[name], time_per_call(lambda: m(x1), repeats=50, warmup=3))
    for name, m in variants.items():
        err = (m(x1) - ref_out).abs().max().item()
        print(f"{name:>30}: {times[name] * 1e3:6.3f} ms  ({times['fp32'] / times[name]:4.2f}× fp32), max |Δ output| {err:.1e}")
""", IGN)

md(r"""
What a reader meets with torch 2.14 on a CPU (the numbers above are this run's, on a shared machine):
the deprecated `quantize_dynamic` is the one that is clearly faster than float32 at batch 1, because
it calls fbgemm's int8 kernels. torchao's int8 configurations run in eager mode through generic
tensor-subclass code and are not faster here. They are built for `torch.compile` and for GPUs, and
compiling costs more time than this chapter has (`benchmarks/quantized_decode.py` measures the
eager numbers on the whole GPT-2-small-sized model). torchao's int4 weight-only path needs an extra
kernel package on CPU and refuses without it. The outputs differ from float32 by about the size of
the weight error times the activations, as they should.

## Pruning

Magnitude pruning {footcite}`han2015learning` sets the weights with the smallest $|w|$ to zero.
`torch.nn.utils.prune.l1_unstructured` does it with a mask; ours, by hand, sorts the magnitudes:
""")

code(r"""
def mask_by_hand(w, amount):
    k = round(amount * w.numel())  # how many weights to remove
    order = torch.argsort(w.abs().flatten(), stable=True)  # smallest |w| first
    keep = torch.ones(w.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    return keep.view_as(w)


layer = copy.deepcopy(teacher.transformer.h[0].mlp.c_fc).cpu()
prune.l1_unstructured(layer, "weight", amount=0.6)
assert torch.equal(mask_by_hand(w, 0.6), layer.weight_mask.bool()) and torch.equal(magnitude_mask(w, 0.6), layer.weight_mask.bool())
print(f"✓ mask equal to torch.nn.utils.prune.l1_unstructured; sparsity {1 - layer.weight_mask.mean():.3f}")
""")

code(r"""
sparsities = [0.0, 0.25, 0.5, 0.7, 0.8, 0.9]
pruned_loss = {}
for s in sparsities:
    model = prune_unstructured_(copy.deepcopy(teacher), s)
    pruned_loss[s] = val_loss(model)
    print(f"sparsity {s:4.0%} (measured {sparsity(model):.3f}): val loss {pruned_loss[s]:.4f} ({pruned_loss[s] - base_loss:+.4f})")
""")

code(r"""
with viz.style():
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot([100 * s for s in sparsities], list(pruned_loss.values()), marker="o", label="magnitude pruning, no fine-tune")
    ax.axhline(base_loss, color="0.5", ls="--", lw=1, label="teacher")
    ax.set(xlabel="weights of the blocks set to zero (%)", ylabel="validation loss (nats/char)",
           title="Loss against unstructured sparsity")
    ax.legend()
    plt.show()
""")

md(r"""
The small weights carry little: removing a quarter of them barely moves the loss, and half costs a
little. Beyond that the loss climbs fast, since the pruned model was never trained to do without
those weights. But does a matrix that is half zeros run faster? On a dense kernel it does not: the
zeros are multiplied like any other number.
""")

code(r"""
dense = torch.randn(3072, 768)
sparse_w = dense * magnitude_mask(dense, 0.5)
xb = torch.randn(32, 768)
t_dense = min(time_per_call(lambda: xb @ dense.T, repeats=30) for _ in range(3))
t_sparse = min(time_per_call(lambda: xb @ sparse_w.T, repeats=30) for _ in range(3))
print(f"768→3072 at batch 32: dense {t_dense * 1e3:.3f} ms, 50% zeros {t_sparse * 1e3:.3f} ms ({t_dense / t_sparse:.2f}×)")
""", IGN)

md(r"""
The same time, within the noise of a shared machine. Unstructured sparsity pays only with sparse
storage and kernels, which need far higher sparsity on a CPU, or with hardware built for a pattern
(NVIDIA's 2:4 sparsity). **Structured** pruning removes whole rows and columns instead, so the
matrices themselves get smaller. In an MLP, neuron $i$ is row $i$ of `c_fc` and column $i$ of
`c_proj`. We score each neuron by the average size of what it writes into the residual stream,
$\mathbb{E}|h_i| \cdot \lVert W^{\text{proj}}_{:,i} \rVert$, over a few training batches, and drop the
lowest-scoring ones. For the attention heads, the score of Michel et al. {footcite}`michel2019sixteen`
is the loss increase when the head is masked out:
""")

code(r"""
gen = torch.Generator().manual_seed(7)
score_batches = [torch.stack([train_ids[i:i + BLOCK] for i in torch.randint(len(train_ids) - BLOCK, (16,), generator=gen).tolist()]).to(device)
                 for _ in range(4)]
heads = head_ablation_scores(teacher, val_batches[:2])
with viz.style():
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    im = ax.imshow(heads.numpy(), cmap="viridis")
    for (l, h), v in np.ndenumerate(heads.numpy()):
        ax.text(h, l, f"{v:.2f}", ha="center", va="center", color="white" if v < heads.max() * 0.6 else "black", fontsize=9)
    ax.set(xlabel="head", ylabel="layer", title="loss increase when one head is masked", xticks=range(4), yticks=range(4))
    ax.grid(False)
    plt.show()
""")

md(r"""
Heads are not equally useful: masking some costs several tenths of a nat, others almost nothing.
With only 16 heads, though, each removed head is a big piece of the model, so we prune MLP neurons,
which come 512 to a layer. A quarter of them, and then half, removed from every layer:
""")

code(r"""
scores = mlp_neuron_scores(teacher, score_batches)
PRUNE = 0.25
structured = {}
for amount in (PRUNE, 0.5):
    model = prune_mlp_neurons_(copy.deepcopy(teacher), scores, amount)
    structured[amount] = model
    print(f"{amount:.0%} of MLP neurons removed: c_fc {tuple(model.transformer.h[0].mlp.c_fc.weight.shape)}, "
          f"{model.num_params():,} parameters ({model.num_params() / teacher.num_params():.2f}×), val loss "
          f"{val_loss(model):.4f} ({val_loss(model) - base_loss:+.4f}) before fine-tuning")
""")

md(r"""
A short fine-tune lets the remaining neurons take over the work of the removed ones: 150 steps of
chapter 7's optimizer at a tenth of its peak learning rate, on the same kind of batches:
""")

code(r"""
from dataclasses import replace

from utils.rnn import random_lm_batch
from utils.train import TrainConfig, adamw, train, warmup_cosine

FINETUNE_STEPS = 150 if device.type == "cpu" else 600
recipe = CHAR_GPT.recipe


def finetune(model, steps=FINETUNE_STEPS, lr=recipe.lr / 10, seed=0):
    opt = adamw(model, lr=lr, weight_decay=recipe.weight_decay, betas=recipe.betas)
    sched = warmup_cosine(opt, 10, steps, min_lr_ratio=0.1)
    g = torch.Generator().manual_seed(seed)
    return train(model.train(), lambda step: tuple(t.to(device) for t in random_lm_batch(train_ids, recipe.batch_size, BLOCK, generator=g)),
                 lambda m, b: m(*b)[1], opt, TrainConfig(max_steps=steps, grad_clip=recipe.grad_clip, progress=False), scheduler=sched)


finetuned = {}
for amount, model in structured.items():
    h = finetune(model)
    finetuned[amount] = val_loss(model)
    print(f"{amount:.0%} of MLP neurons removed + {FINETUNE_STEPS} fine-tuning steps: val loss {finetuned[amount]:.4f} "
          f"({finetuned[amount] - base_loss:+.4f})")
""", IGN)

code(r"""
x32 = torch.randint(len(chars), (32, BLOCK), device=device)
with torch.no_grad():
    t_full = min(time_per_call(lambda: teacher(x32), repeats=5) for _ in range(3))
    t_pruned = {a: min(time_per_call(lambda: m(x32), repeats=5) for _ in range(3)) for a, m in structured.items()}
for a, t in t_pruned.items():
    print(f"forward of 32 × {BLOCK} characters: teacher {t_full * 1e3:.1f} ms, {a:.0%} of neurons removed {t * 1e3:.1f} ms "
          f"({t_full / t:.2f}× faster)")
""", IGN)

md(r"""
The fine-tune recovers most of what the cut cost, and the pruned model is really faster, because its
MLP matrices are smaller. The MLP is two thirds of each block's weights, so removing a quarter of its
neurons removes about a sixth of the block. The speed-up is smaller than that, since attention,
LayerNorms and the output layer are untouched.

## Distillation

A small model trained on the text alone learns from one-hot targets: the right next character, and
nothing about the others. A trained teacher knows more. After "ROMEO:\nWhat light is this? I", it may
spread its probability over several plausible letters. Hinton et al. {footcite}`hinton2015distilling`
train the student to match the teacher's distribution softened by a temperature $T$:

$$ \mathcal{L} = \alpha\, T^2\, \mathrm{KL}\!\left(\operatorname{softmax}(z_t/T)\,\middle\|\,\operatorname{softmax}(z_s/T)\right) + (1-\alpha)\, \mathrm{CE}(z_s, y). $$

The gradient of the soft term scales as $1/T^2$, so the factor $T^2$ keeps its weight the same
whatever $T$ is. DistilBERT {footcite}`sanh2019distilbert` trained a 40% smaller BERT this way. The
formula by hand, against `F.kl_div` in `utils.compress.distillation_loss`:
""")

code(r"""
def kd_by_hand(z_s, z_t, y, T, alpha):
    log_p_t = torch.log_softmax(z_t / T, dim=-1)  # (B, T, V) teacher, softened
    log_p_s = torch.log_softmax(z_s / T, dim=-1)  # (B, T, V) student, softened
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()  # KL per position, averaged
    ce = -torch.log_softmax(z_s, dim=-1).gather(-1, y[..., None]).mean()
    return alpha * T**2 * kl + (1 - alpha) * ce


x, y = val_batches[0][0][:4], val_batches[0][1][:4]
with torch.no_grad():
    z_t = teacher(x).double()
z_s = torch.randn_like(z_t)
for T, alpha in ((1.0, 0.5), (2.0, 0.5), (4.0, 0.9)):
    torch.testing.assert_close(distillation_loss(z_s, z_t, y, T, alpha), kd_by_hand(z_s, z_t, y, T, alpha), rtol=1e-12, atol=1e-12)
assert distillation_loss(z_t, z_t, y, 2.0, 1.0).abs() < 1e-12  # a student equal to its teacher: no soft loss
print("✓ Hinton's loss by hand equals utils.compress.distillation_loss (F.kl_div), float64, 1e-12")
""")

md(r"""
The student has the teacher's depth and heads at half its width (64 channels): about a quarter of
the parameters. It is trained twice with the same seed, so the same initial weights and the same
batches: once on the data alone, once with the teacher's soft targets ($T = 2$, $\alpha = 0.5$).
Both use chapter 7's optimizer and schedule for the same number of steps. The difference between the
two is small, so we repeat it with a second seed.
""")

code(r"""
STUDENT_STEPS = 400 if device.type == "cpu" else 1800
SEEDS = (0, 1)
student_cfg = replace(teacher.config, n_embd=64)
student_recipe = replace(recipe, warmup=40)
students = {}
for seed in SEEDS:
    for kind in ("alone", "distilled"):
        start = time.perf_counter()
        model, hist = train_student(student_cfg, student_recipe, train_ids, val_batches, teacher=teacher if kind == "distilled" else None,
                                    temperature=2.0, alpha=0.5, steps=STUDENT_STEPS, seed=seed, device=device)
        students[kind, seed] = (model, val_loss(model))
        print(f"seed {seed}, {kind:>9}: val loss {students[kind, seed][1]:.4f} after {STUDENT_STEPS} steps "
              f"({(time.perf_counter() - start) / STUDENT_STEPS * 1e3:.0f} ms/step)")
student_params = students["alone", 0][0].num_params()
print(f"student: {student_params:,} parameters ({student_params / teacher.num_params():.2f}× the teacher)")
""", IGN)

code(r"""
gaps = [students["alone", s][1] - students["distilled", s][1] for s in SEEDS]
print("distilled better than alone by " + ", ".join(f"{g:+.4f}" for g in gaps) + " nats/char (seeds " +
      ", ".join(map(str, SEEDS)) + f"); teacher {base_loss:.4f}")
""", IGN)

md(r"""
The distilled student is ahead of the same student trained alone, with both seeds, at equal steps.
The teacher is still well ahead of both: a quarter of the parameters and a fifth of the steps do not
make a teacher. The gain is modest because a character model's targets are already "soft" in one
sense: the same context is followed by different characters across the text, so the data alone
shows the student a distribution. The teacher's soft targets show it at every position at once.

## Cheaper attention

Softmax attention compares every query with every key: $O(T^2)$ in the length. Linear attention
{footcite}`katharopoulos2020transformers` replaces $\exp(q \cdot k)$ by a product of feature maps
$\phi(q) \cdot \phi(k)$ with $\phi(x) = \mathrm{elu}(x) + 1 > 0$. The sums then factor:

$$ o_t = \frac{\sum_{s \le t} \phi(q_t)^\top \phi(k_s)\, v_s}{\sum_{s \le t} \phi(q_t)^\top \phi(k_s)}
= \frac{\phi(q_t)^\top S_t}{\phi(q_t)^\top z_t}, \qquad S_t = S_{t-1} + \phi(k_t) v_t^\top, \quad z_t = z_{t-1} + \phi(k_t). $$

The left form is parallel over $t$, like softmax attention. The right form is an RNN whose state
$S_t$ is a $D \times D$ matrix, so each new token costs the same whatever the length and needs no KV
cache. Both, by hand:
""")

code(r"""
def linear_parallel(q, k, v):
    q, k = F.elu(q) + 1, F.elu(k) + 1
    a = (q @ k.transpose(-2, -1)).tril()  # (B, H, T, T): φ(q_t)·φ(k_s), future zeroed
    return (a @ v) / a.sum(-1, keepdim=True)  # (B, H, T, D)


def linear_recurrent(q, k, v):
    q, k = F.elu(q) + 1, F.elu(k) + 1
    S = torch.zeros(*q.shape[:2], q.shape[-1], v.shape[-1], dtype=q.dtype)  # (B, H, D, D) state
    z = torch.zeros(*q.shape[:2], q.shape[-1], dtype=q.dtype)  # (B, H, D) normaliser
    out = []
    for t in range(q.shape[2]):
        S = S + k[:, :, t, :, None] * v[:, :, t, None, :]  # add φ(k_t) v_tᵀ
        z = z + k[:, :, t]
        out.append((q[:, :, t, None, :] @ S).squeeze(-2) / (q[:, :, t] * z).sum(-1, keepdim=True))
    return torch.stack(out, dim=2)  # (B, H, T, D)


q, k, v = torch.randn(3, 2, 4, 50, 16, dtype=torch.float64)
torch.testing.assert_close(linear_recurrent(q, k, v), linear_parallel(q, k, v), rtol=1e-10, atol=1e-10)
torch.testing.assert_close(causal_linear_attention(q, k, v), linear_parallel(q, k, v), rtol=1e-6, atol=1e-10)
torch.testing.assert_close(linear_attention_recurrent(q, k, v), linear_parallel(q, k, v), rtol=1e-6, atol=1e-10)
print("✓ recurrent form = parallel form = utils.compress (float64)")
""")

md(r"""
What does it buy? Generating token $t$ with softmax attention and a KV cache reads all $t$ stored
keys and values; with linear attention it updates and reads the fixed $D \times D$ state. One decoding
step of one layer (4 heads of 32 dimensions), timed at growing context lengths:
""")

code(r"""
H, D = 4, 32
state = torch.zeros(1, H, D, D)
zsum = torch.ones(1, H, D)
qn, kn, vn = (torch.randn(1, H, 1, D) for _ in range(3))
step_times = {}
for T in (64, 256, 1024, 4096, 16384):
    K, V = torch.randn(1, H, T, D), torch.randn(1, H, T, D)

    def softmax_step():
        return F.scaled_dot_product_attention(qn, torch.cat([K, kn], 2), torch.cat([V, vn], 2))  # append, attend

    def linear_step():
        fk = F.elu(kn[:, :, 0]) + 1
        s = state + fk[..., None] * vn[:, :, 0, None, :]
        fq = F.elu(qn[:, :, 0]) + 1
        return (fq[:, :, None] @ s).squeeze(-2) / (fq * (zsum + fk)).sum(-1, keepdim=True)

    step_times[T] = [min(time_per_call(f, repeats=20) for _ in range(3)) for f in (softmax_step, linear_step)]
    print(f"context {T:>6}: softmax + KV cache {step_times[T][0] * 1e6:8.1f} µs, linear (state) {step_times[T][1] * 1e6:6.1f} µs")
crossing = next((T for T, (s, l) in step_times.items() if s > l), None)
print(f"linear attention's step is the cheaper one from a context of {crossing} on" if crossing else "softmax stayed cheaper")
""", IGN)

md(r"""
Softmax attention's step grows with the context (it reads every cached key and value and, here,
copies them to append the new one), while the recurrent step stays flat. At short contexts the two
are within overheads of each other, so where they cross moves from run to run; at thousands of
tokens the difference is large. Speed is half of the question. Is the quality the same? We train the
distillation student's architecture with linear attention, on the data alone, for the same steps and
seed as its softmax twin above:
""")

code(r"""
lin_model, _ = train_student(student_cfg, student_recipe, train_ids, val_batches, steps=STUDENT_STEPS, seed=0,
                             make_model=linear_attention_gpt, device=device)
lin_loss = val_loss(lin_model)
print(f"same student, same {STUDENT_STEPS} steps and seed: softmax attention {students['alone', 0][1]:.4f}, "
      f"linear attention {lin_loss:.4f} ({lin_loss - students['alone', 0][1]:+.4f}) nats/char")
""", IGN)

md(r"""
Linear attention is worse at equal steps here. Its attention weights cannot be as sharp as a
softmax's (the feature map is smooth and positive), and sharp attention to the previous one or two
characters is exactly what chapter 7's first layer learned. This matches the paper's own finding of a
small quality cost, and it is why later work (e.g. state-space models and gated linear attention)
adds decay and gates to the state.

The other way to shrink the cost of attention at inference is to shrink the KV cache. **Multi-query
attention** {footcite}`shazeer2019fast` keeps all query heads but one key and one value head, shared
by all. **Grouped-query attention** {footcite}`ainslie2023gqa` keeps one key/value head per group of
query heads, which is what most recent open models use. For a 7B-parameter model of the Llama-2 shape
(32 layers, 32 heads of 128 dimensions) at a context of 4,096 tokens in bfloat16:
""")

code(r"""
for name, kv in (("multi-head (32 KV heads)", 32), ("grouped-query (8 KV heads)", 8), ("multi-query (1 KV head)", 1)):
    b = kv_cache_bytes(32, 32, 128, 4096, batch=1, n_kv_head=kv)
    print(f"{name:>28}: {b / 2**30:5.2f} GiB per sequence, {b / 2**30 * 32:6.1f} GiB for a batch of 32")
""")

md(r"""
A batch of 32 conversations needs 64 GiB of cache with full multi-head attention, more than the
weights (13 GiB in bfloat16), and 16 GiB with 8 key/value heads. The weights are read once per step
for the whole batch, but each sequence's cache is read for that sequence alone, which is why grouping
the keys and values speeds up batched decoding.

## Putting it together

Every variant side by side: its bytes relative to the float32 teacher, its validation loss on the
same windows, and the time of a forward pass over 32 × 128 characters. Fake-quantized and
unstructured-pruned models run the same dense float kernels as the teacher, so their speed column is
left empty: on this CPU only fewer parameters (the pruned and student models) or a real int8 kernel
(`quantize_dynamic`, last row) change the time.
""")

code(r"""
student = students["distilled", 0][0]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    student_int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(student).cpu(), {nn.Linear}, torch.qint8)
    teacher_int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(teacher).cpu(), {nn.Linear}, torch.qint8)
fake_student_int8 = fake_quantize_(copy.deepcopy(student), 8, "channel")


def forward_ms(model):
    xx = x32.cpu() if not next(model.parameters(), torch.empty(0)).is_cuda else x32
    with torch.no_grad():
        return min(time_per_call(lambda: model(xx), repeats=5) for _ in range(3)) * 1e3


rows = [  # name, bytes ratio, val loss, time (ms) or None
    ("fp32 teacher", 1.0, base_loss, forward_ms(teacher)),
    ("bf16", 0.5, quant["bf16"][0], None),
    ("int8 per channel", quant["int8 per channel"][1], quant["int8 per channel"][0], None),
    ("int4 groups of 32", quant["int4 groups of 32"][1], quant["int4 groups of 32"][0], None),
    ("50% unstructured", 0.5 + 0.5 / 32, pruned_loss[0.5], None),  # values + a bitmap of the mask
    (f"{PRUNE:.0%} MLP neurons + fine-tune", structured[PRUNE].num_params() / teacher.num_params(), finetuned[PRUNE],
     forward_ms(structured[PRUNE])),
    ("distilled student", student_params / teacher.num_params(), students["distilled", 0][1], forward_ms(student)),
    ("student + int8", quantized_nbytes(student, 8, "channel") / fp32_bytes, val_loss(fake_student_int8), forward_ms(student_int8)),
]
print(f"{'':>30} {'bytes':>7} {'val loss':>9} {'forward (ms)':>13}")
for name, ratio, loss, ms in rows:
    print(f"{name:>30} {ratio:6.3f}× {loss:9.4f} {'' if ms is None else f'{ms:13.1f}'}")
print(f"{'(teacher, int8 quantize_dynamic)':>30} {'':>7} {'':>9} {forward_ms(teacher_int8):13.1f}")
""", IGN)

code(r"""
with viz.style():
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name, ratio, loss, ms in rows:
        ax.scatter(ratio * fp32_bytes / 1e6, loss, s=60 if ms is None else 30 + 4 * ms, alpha=0.8, label=name)
    ax.set(xscale="log", xlabel="storage (MB, log scale)", ylabel="validation loss (nats/char)",
           title="Size and quality of every variant (marker area: measured forward time)")
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    plt.show()
""", IGN)

md(r"""
The lower left is where one wants to be. Quantization moves the teacher left almost for free: int8
at a quarter of the bytes, int4 with groups at about a seventh. Structured pruning and distillation
make models that are both smaller and faster, but cost more loss, because they remove capacity rather
than precision, and our fine-tunes and students are short. The two kinds combine: the student at int8
is the smallest model in the table, at the student's loss.

**What is known about GPT-4o mini.** OpenAI announced it in July 2024 as its "most cost-efficient small
model", with a 128K-token context, 82% on MMLU, and a price more than 60% below GPT-3.5 Turbo
{footcite}`openai2024gpt4omini`. OpenAI has not published its size, architecture or how it was trained.
Figures such as "about 8B parameters" circulate from a table of *estimates* in a Microsoft paper
{footcite}`abacha2025medec`, which says so itself. It is reasonable to guess that the techniques of this
chapter (distillation from a larger model, quantized serving, grouped-query attention) play a part,
since they are standard, but that is a guess, not a fact about GPT-4o mini.

## Look inside

Choose a method and a setting: the explorer shows the histogram of one weight matrix (the first
layer's `mlp.c_fc`, 512 × 128) before and after, the error of every weight on one colour scale,
the whole model's validation loss, and a sample from the compressed model. Every view is computed
in advance, so the controls work on the website without a kernel. Watch the histogram turn into a
few spikes at 2 bits, and how groups of 32 keep the error small where one scale per row cannot.
""")

code(r"""
name = "transformer.h.0.mlp.c_fc.weight"
w0 = compressible_weights(teacher)[name].detach().cpu()
q_views, p_views = {}, {}
for bits in (8, 4, 2):
    for label, gran in (("tensor", "tensor"), ("row", "channel"), ("group of 32", 32)):
        model = fake_quantize_(copy.deepcopy(teacher), bits, gran)
        q_views[bits, label] = dict(weights=compressible_weights(model)[name].detach().cpu(), val_loss=val_loss(model),
                                    bytes=quantized_nbytes(teacher, bits, gran) / fp32_bytes, sample=sample(model, n=120))
for s in (0.25, 0.5, 0.9):
    model = prune_unstructured_(copy.deepcopy(teacher), s)
    p_views[s] = dict(weights=compressible_weights(model)[name].detach().cpu(), val_loss=val_loss(model),
                      bytes=1 - s + 1 / 32, sample=sample(model, n=120))
viz.compression_explorer(w0, q_views, p_views, {"val_loss": base_loss, "sample": sample(teacher, n=120)},
                         default_bits=4, default_granularity="group of 32", default_sparsity=0.5,
                         matrix_name="layer 0 mlp.c_fc")
""", IGN)

md(r"""
## Results

The chapter's targets, measured on the same 16,384 validation characters for every model:

- int8 weights with one scale per channel: validation loss within **0.01** nats/char of float32, at
  ≤ 0.3× its bytes;
- int4 weights with groups of 32: within **0.05** nats/char;
- the distilled student beats the same student trained alone, at equal steps, for every seed;
- 25% of the MLP neurons removed (structured) and fine-tuned: within **0.05** nats/char of the teacher;
- and the hand-written quantizers, masks, distillation loss and linear attention equal their
  references (asserted where they were built).
""")

code(r"""
loss8, bytes8 = quant["int8 per channel"]
loss4 = quant["int4 groups of 32"][0]
print(f"int8 per channel: {loss8 - base_loss:+.4f} nats/char at {bytes8:.3f}× the bytes")
print(f"int4 groups of 32: {loss4 - base_loss:+.4f} nats/char")
print(f"distilled − alone: " + ", ".join(f"{-g:+.4f}" for g in gaps) + " nats/char")
print(f"{PRUNE:.0%} MLP neurons pruned + fine-tune: {finetuned[PRUNE] - base_loss:+.4f} nats/char")
assert abs(loss8 - base_loss) <= 0.01 and bytes8 <= 0.3, "int8 per-channel target missed"
assert loss4 - base_loss <= 0.05, "int4 g32 target missed"
assert all(g > 0 for g in gaps), "distillation did not beat the student alone"
assert finetuned[PRUNE] - base_loss <= 0.05, "structured pruning + fine-tune target missed"
print("✓ all targets met")
""")

md(r"""
## Exercises

1. **On paper: the bytes of a 7B model.** A model has 7 billion parameters. How many gigabytes do its
   weights take in float16, in int8 with one 16-bit scale per row of 4,096 weights, and in int4 with
   one 16-bit scale per group of 32? Which fits on a 16 GB GPU, with room for a KV cache?

   :::{admonition} Solution
   :class: dropdown
   float16: 2 bytes × 7e9 = 14 GB. int8: 7 GB of integers, plus 7e9 / 4096 × 2 bytes ≈ 3.4 MB of
   scales, so 7.0 GB. int4: 3.5 GB of integers, plus 7e9 / 32 × 2 bytes = 0.44 GB of scales, so
   about 3.9 GB (4.5 bits per weight). float16 leaves 2 GB on a 16 GB card, about half a sequence of
   4,096 tokens of a Llama-2-shaped cache (2 GiB each, computed in the chapter). int8 leaves about 9 GB
   and int4 about 12 GB, a few sequences with multi-head attention, or 4 times more with 8 key/value heads.
   :::

2. **Symmetric or asymmetric?** The output of a ReLU is never negative. If you quantize such a
   tensor (say, values in $[0, 6]$) to 8 bits, how many of the 255 levels does symmetric quantization
   use, and how large is its step compared with asymmetric quantization's? Check it with
   `utils.compress.quantize` on `torch.rand(4, 64) * 6`.

   :::{admonition} Solution
   :class: dropdown
   Symmetric uses $s = 6/127$ and only the levels $0 \dots 127$, half of them. Asymmetric maps
   $[0, 6]$ onto $0 \dots 255$ with $s = 6/255$, a step half as large, so half the error. For weights,
   which are roughly symmetric around 0, the two are nearly the same, and symmetric avoids the
   zero-point arithmetic in the kernel.
   ```python
   x = torch.rand(4, 64) * 6
   for sym in (True, False):
       q = quantize(x, 8, "tensor", symmetric=sym)
       print(sym, q.scale.item(), (x - q.dequantize()).abs().max().item())
   ```
   :::

3. **The temperature.** Train the distilled student with $T = 1$ and $T = 4$ (keep $\alpha = 0.5$ and
   the steps). What do you expect as $T$ grows very large? (Hint: expand the softmax for small
   logits; Hinton et al. section 2.1.)

   :::{admonition} Solution
   :class: dropdown
   For large $T$ the softened distributions are close to uniform, and $T^2\,\mathrm{KL}$ tends to
   $\frac{1}{2V}\sum_i \big((z_{s,i} - \bar z_s) - (z_{t,i} - \bar z_t)\big)^2$: matching the centred
   logits with a squared error, which `tests/test_compress.py` checks numerically. The student then
   learns about the unlikely characters too, which helps when the teacher's small probabilities carry
   information and hurts when they are noise. On this task $T$ between 1 and 4 gives similar results;
   differences of a few thousandths need several seeds to be trusted.
   :::

4. **Pruning heads.** Use `head_ablation_scores` to remove the two least important heads of the
   teacher (set their columns of `attn.out_proj.weight` to zero), measure the validation loss,
   fine-tune for 150 steps as in the chapter, and measure again. Is it cheaper than removing a
   quarter of the MLP neurons, for the same number of parameters?

   :::{admonition} Solution
   :class: dropdown
   A head owns 4 × 128 × 32 = 16,384 weights of `in_proj` and `out_proj` (its query, key and value
   rows and its output columns), so two heads are 32,768 weights, the same as a quarter of one layer's
   MLP neurons in every layer (4 × 128 × 128 × 2 × 0.25 ... per layer 32,768). In our runs the two
   least useful heads cost about as much loss before fine-tuning as the MLP cut, but the choice matters
   more: a wrong head removes a whole function (such as "look at the previous character").
   ```python
   scores_h = head_ablation_scores(teacher, val_batches[:2])
   model = copy.deepcopy(teacher)
   for flat in scores_h.flatten().argsort()[:2].tolist():
       l, h = divmod(flat, 4)
       with torch.no_grad():
           model.transformer.h[l].attn.out_proj.weight[:, h * 32:(h + 1) * 32] = 0
   print(val_loss(model)); finetune(model); print(val_loss(model))
   ```
   :::

5. **Where quantization hurts.** Quantize only one kind of matrix at a time to 3 bits per row (the
   token table, the attention projections, the MLP) and measure the loss. Which is the most sensitive?

   :::{admonition} Solution
   :class: dropdown
   Loop over `compressible_weights(model)` and quantize only the names that match
   (`"wte"`, `"attn"`, `"mlp"`). In our runs the token table, which is also the output layer, is the
   most sensitive per weight: every logit goes through it. This is why many schemes keep the embedding
   and output layer at 8 bits or more while the blocks go to 4.
   :::

## Summary

- Decoding one sequence reads every weight once per token: it is limited by memory bandwidth, so
  fewer bytes per weight means faster decoding, if a kernel exists for the format.
- Quantization stores $w \approx s(q - z)$. Our integers equal PyTorch's. At 8 bits per channel the
  loss is unchanged at a quarter of the bytes; at 4 bits, groups of 32 keep it close.
- Magnitude pruning (equal to `torch.nn.utils.prune`) removes many weights cheaply but saves no time
  on dense kernels; removing whole MLP neurons does, and a short fine-tune recovers most of the loss.
- Distillation with Hinton's loss gives a student a quarter of the size a better start than the data
  alone at equal steps.
- Linear attention turns attention into a recurrence with a constant cost per token, at some quality;
  multi-query and grouped-query attention cut the KV cache by the number of query heads per KV head.
- Next: these are the levers behind every "mini" model; the book's models are now small enough to
  take apart.

## References

```{footbibliography}
```
""")

nb = new_notebook(cells=cells)
nb.metadata.update({
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
    "onehot": {"cpu_budget_minutes": 5},
})
nbformat.write(nb, "/work/main/chapters/11_compression.ipynb")
print("written", len(cells), "cells")
