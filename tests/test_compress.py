"""utils.compress (chapter 11): quantization equal to torch's quantizers with bounded error, pruning masks
equal to torch.nn.utils.prune, structured pruning that keeps the function of the kept neurons, Hinton's
distillation loss, linear attention in both forms, KV-cache bytes, and clear errors for bad input."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from utils.compress import (SUPPORTED_BITS, LinearAttention, causal_linear_attention, compressible_weights,
                            distillation_loss, fake_quantize_, head_ablation_scores, kv_cache_bytes,
                            linear_attention_gpt, linear_attention_recurrent, magnitude_mask, mlp_neuron_scores,
                            pack_int4, prune_mlp_neurons_, prune_unstructured_, quantize, quantized_nbytes, sparsity,
                            train_student, unpack_int4)
from utils.gpt import GPT, GPTConfig, Recipe

# torch's quantized tensors (the reference here) are themselves deprecated; the integers are what we compare
TORCH_QUANTIZED_DEPRECATED = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")


@pytest.fixture
def w():
    g = torch.Generator().manual_seed(0)
    return torch.randn(48, 96, generator=g) * torch.rand(48, 1, generator=g)  # rows of different ranges


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


# ------------------------------------------------------------------------------------------ quantization

@TORCH_QUANTIZED_DEPRECATED
def test_int8_symmetric_equals_torch_quantize_per_channel_and_per_tensor(w):
    q = quantize(w, 8, "channel")
    ref = torch.quantize_per_channel(w, q.scale.flatten(), torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
    assert torch.equal(q.q.reshape(w.shape), ref.int_repr())
    torch.testing.assert_close(q.dequantize(), ref.dequantize(), rtol=0, atol=0)
    qt = quantize(w, 8, "tensor")
    ref_t = torch.quantize_per_tensor(w, float(qt.scale), 0, torch.qint8)
    assert torch.equal(qt.q.reshape(w.shape), ref_t.int_repr())


@TORCH_QUANTIZED_DEPRECATED
def test_int8_asymmetric_equals_torch_quint8(w):
    w = w + 0.3  # lopsided rows
    q = quantize(w, 8, "channel", symmetric=False)
    assert q.q.dtype == torch.uint8 and int(q.q.min()) >= 0
    ref = torch.quantize_per_channel(w, q.scale.flatten(), q.zero_point.flatten().long(), 0, torch.quint8)
    assert torch.equal(q.q.reshape(w.shape), ref.int_repr())


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("granularity", ["tensor", "channel", 32, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_error_is_at_most_half_a_step(w, bits, granularity, symmetric):
    q = quantize(w, bits, granularity, symmetric)
    scale = q.scale.expand(q.q.shape).reshape(w.shape)
    err = (w - q.dequantize()).abs()
    assert bool((err <= scale / 2 * (1 + 1e-6)).all()), float((err / scale).max())
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    assert lo <= int(q.q.min()) and int(q.q.max()) <= hi


def test_group_quantization_uses_one_scale_per_group_and_shrinks_the_error(w):
    q32 = quantize(w, 4, 32)
    assert q32.scale.shape == (48, 96 // 32, 1)
    q_row = quantize(w, 4, "channel")
    assert (w - q32.dequantize()).abs().mean() < (w - q_row.dequantize()).abs().mean()
    # a group is quantized exactly as a row of its own would be
    torch.testing.assert_close(q32.dequantize()[:, 32:64], quantize(w[:, 32:64].contiguous(), 4, "channel").dequantize(),
                               rtol=0, atol=0)


def test_zero_rows_and_bytes(w):
    w = w.clone()
    w[3] = 0
    assert bool((quantize(w, 4, 32).dequantize()[3] == 0).all())
    q = quantize(w, 4, 32)
    assert q.nbytes() == 48 * 96 // 2 + 48 * 3 * 2  # 4 bits per weight + a float16 scale per group
    assert quantize(w, 8, "channel", symmetric=False).nbytes() == 48 * 96 + 48 * 2 * 2  # scale and zero point


def test_pack_int4_round_trip():
    q = torch.randint(-8, 8, (5, 64), dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 32)
    assert torch.equal(unpack_int4(packed), q)
    with pytest.raises(ValueError, match=r"values must be in \[-8, 7\]"):
        pack_int4(torch.full((2, 2), 8, dtype=torch.int8))
    with pytest.raises(ValueError, match="even last dimension"):
        pack_int4(torch.zeros(3, dtype=torch.int8))


def test_fake_quantize_changes_only_the_compressible_weights_and_counts_bytes():
    model = tiny_gpt()
    before = copy.deepcopy(model.state_dict())
    fake_quantize_(model, 8, "channel")
    names = set(compressible_weights(model))
    assert "transformer.wte.weight" in names and "transformer.h.0.mlp.c_fc.weight" in names
    for k, v in model.state_dict().items():
        same = torch.equal(v, before[k])
        assert same == (k not in names and k != "lm_head.weight"), k
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    fp32 = quantized_nbytes(model)
    assert fp32 == 4 * model.num_params()
    assert 0.25 < quantized_nbytes(model, 8, "channel") / fp32 < 0.35


@pytest.mark.parametrize("bad_bits", [1, 5, 16, 0])
def test_quantize_rejects_unsupported_bits(w, bad_bits):
    with pytest.raises(ValueError, match="bits must be one of"):
        quantize(w, bad_bits)


def test_quantize_rejects_bad_granularity_and_shapes(w):
    with pytest.raises(ValueError, match="group size 40 does not divide the row length I=96"):
        quantize(w, 4, 40)
    with pytest.raises(ValueError, match="granularity must be"):
        quantize(w, 4, "row")
    with pytest.raises(ValueError, match="2-D float tensor"):
        quantize(torch.zeros(3, 4, 5), 8)
    with pytest.raises(ValueError, match="2-D float tensor"):
        quantize(torch.zeros(3, 4, dtype=torch.long), 8)


# ------------------------------------------------------------------------------------------ pruning

@pytest.mark.parametrize("amount", [0.0, 0.1, 0.5, 0.93])
def test_magnitude_mask_equals_torch_prune_and_has_the_requested_sparsity(w, amount):
    layer = nn.Linear(96, 48)
    layer.weight.data.copy_(w)
    prune.l1_unstructured(layer, "weight", amount=amount)
    mask = magnitude_mask(w, amount)
    assert torch.equal(mask, layer.weight_mask.bool())
    assert int((~mask).sum()) == round(amount * w.numel())
    assert w.abs()[~mask].max() <= w.abs()[mask].min() if amount else True  # the smallest went first


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "half"])
def test_sparsity_outside_0_1_is_rejected(w, bad):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        magnitude_mask(w, bad)
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        prune_unstructured_(tiny_gpt(), bad)


def test_prune_unstructured_reaches_the_sparsity_in_the_blocks_only():
    model = prune_unstructured_(tiny_gpt(), 0.5)
    assert sparsity(model) == pytest.approx(0.5, abs=1e-3)
    assert bool((model.transformer.wte.weight != 0).all())  # the embeddings are left alone


def test_structured_pruning_shrinks_the_mlp_and_keeps_the_kept_neurons():
    model = tiny_gpt()
    x = torch.randint(11, (3, 16))
    scores = mlp_neuron_scores(model, [x])
    assert [s.shape for s in scores] == [(64,), (64,)] and all(bool((s >= 0).all()) for s in scores)
    # removing zero neurons changes nothing
    same = prune_mlp_neurons_(copy.deepcopy(model), scores, 0.0)
    torch.testing.assert_close(same(x), model(x))
    # removing neurons whose output columns are zero changes nothing either, and they are the ones removed
    with torch.no_grad():
        for b in model.transformer.h:
            b.mlp.c_proj.weight[:, :16] = 0
    scores = mlp_neuron_scores(model, [x])
    assert all(bool((s[:16] == 0).all()) for s in scores)
    pruned = prune_mlp_neurons_(copy.deepcopy(model), scores, 0.25)
    assert pruned.transformer.h[0].mlp.c_fc.weight.shape == (48, 16)
    assert pruned.transformer.h[0].mlp.c_proj.weight.shape == (16, 48)
    torch.testing.assert_close(pruned(x), model(x))
    with pytest.raises(ValueError, match="one score tensor per block"):
        prune_mlp_neurons_(model, scores[:1], 0.25)


def test_head_ablation_scores_see_a_dead_head():
    model = tiny_gpt()
    with torch.no_grad():
        model.transformer.h[1].attn.out_proj.weight[:, 8:] = 0  # head 1 of layer 1 writes nothing
    batches = [(torch.randint(11, (2, 16)), torch.randint(11, (2, 16)))]
    s = head_ablation_scores(model, batches)
    assert s.shape == (2, 2) and s[1, 1] == 0 and bool((s.abs() > 0).sum() >= 2)
    assert torch.equal(model.transformer.h[1].attn.out_proj.weight[:, 8:], torch.zeros(16, 8))  # restored


# ------------------------------------------------------------------------------------------ distillation

def test_distillation_loss_equals_the_formula():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 7, generator=g, dtype=torch.float64), torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    y = torch.randint(7, (2, 5), generator=g)
    for T, alpha in ((1.0, 0.5), (3.0, 0.2), (0.5, 1.0)):
        p = torch.softmax(t / T, -1)
        kl = (p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1).mean()
        expected = alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(s.flatten(0, 1), y.flatten())
        torch.testing.assert_close(distillation_loss(s, t, y, T, alpha), expected, rtol=1e-12, atol=1e-12)


def test_distillation_loss_is_zero_for_the_teacher_and_t_scaled():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(4, 9, dtype=torch.float64, generator=g)
    s = torch.randn(4, 9, dtype=torch.float64, generator=g)
    y = torch.randint(9, (4,), generator=g)
    assert distillation_loss(t, t, None, 2.0, 1.0) == 0
    torch.testing.assert_close(distillation_loss(t, t, y, 2.0, 0.3), 0.7 * F.cross_entropy(t, y))  # only the hard part
    assert distillation_loss(s, t, None, 4.0, 1.0) == pytest.approx(
        16 * F.kl_div(torch.log_softmax(s / 4, -1), torch.log_softmax(t / 4, -1), log_target=True,
                      reduction="batchmean").item(), rel=1e-12)
    # high temperature: T² KL tends to half the mean squared difference of the centred logits (Hinton et al. 2.1)
    d = (t - t.mean(-1, keepdim=True)) - (s - s.mean(-1, keepdim=True))
    assert distillation_loss(s, t, None, 1000.0, 1.0).item() == pytest.approx(0.5 * (d**2).mean().item(), rel=1e-2)


def test_distillation_gradient_reaches_the_student_only():
    s = torch.randn(3, 6, requires_grad=True)
    t = torch.randn(3, 6, requires_grad=True)
    distillation_loss(s, t, torch.randint(6, (3,)), 2.0, 0.5).backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("T", [0.0, -1.0])
def test_distillation_rejects_bad_input(T):
    s = torch.randn(3, 6)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distillation_loss(s, s, None, T, 1.0)
    with pytest.raises(ValueError, match=r"alpha .* must be in \[0, 1\]"):
        distillation_loss(s, s, None, 2.0, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(s, torch.randn(3, 7), None, 2.0, 1.0)
    with pytest.raises(ValueError, match="targets must have"):
        distillation_loss(s, s, None, 2.0, 0.5)


def test_train_student_same_seed_same_start_and_teacher_helps_the_loss_move():
    recipe = Recipe(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, lr=3e-3, min_lr=3e-4, warmup=2,
                    max_steps=10)
    cfg = recipe.gpt_config(11)
    ids = torch.randint(11, (2000,), generator=torch.Generator().manual_seed(0))
    val = [(ids[:16][None], ids[1:17][None])]
    a, ha = train_student(cfg, recipe, ids, val, steps=6, seed=3)
    b, hb = train_student(cfg, recipe, ids, val, steps=6, seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)  # reproducible
    teacher = tiny_gpt()
    teacher = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16))
    c, hc = train_student(cfg, recipe, ids, val, teacher=teacher, steps=6, seed=3)
    assert hc.steps == 6 and not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


# ------------------------------------------------------------------------------------------ attention

def test_linear_attention_recurrent_equals_parallel():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(linear_attention_recurrent(q, k, v), causal_linear_attention(q, k, v), rtol=1e-10,
                               atol=1e-10)
    # causal: the output at t does not depend on later positions
    k2 = k.clone()
    k2[:, :, 10:] += 1
    torch.testing.assert_close(causal_linear_attention(q, k2, v)[:, :, :10], causal_linear_attention(q, k, v)[:, :, :10])
    with pytest.raises(ValueError, match=r"q, k must be \(B, H, T, D\)"):
        causal_linear_attention(q, k[..., :4], v)


def test_linear_attention_gpt_shares_the_gpt_parameters_and_is_causal():
    torch.manual_seed(0)
    ref = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16))
    torch.manual_seed(0)
    lin = linear_attention_gpt(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    assert isinstance(lin.transformer.h[0].attn, LinearAttention)
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), lin.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    x = torch.randint(11, (2, 16))
    x2 = x.clone()
    x2[:, 9:] = (x2[:, 9:] + 1) % 11
    torch.testing.assert_close(lin(x)[:, :9], lin(x2)[:, :9])
    _, attn = lin(x, return_attn=True)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 2, 16))
    with pytest.raises(ValueError, match="causal self-attention only"):
        lin.transformer.h[0].attn(torch.randn(1, 4, 16))


def test_kv_cache_bytes_and_bad_groups():
    assert kv_cache_bytes(32, 32, 128, 4096) == 2 * 32 * 32 * 128 * 4096 * 2  # Llama-2-7B shape, bf16: 2 GiB
    assert kv_cache_bytes(32, 32, 128, 4096) == 2 * 2**30
    assert kv_cache_bytes(32, 32, 128, 4096, n_kv_head=8) * 4 == kv_cache_bytes(32, 32, 128, 4096)
    with pytest.raises(ValueError, match="not a multiple of n_kv_head=5"):
        kv_cache_bytes(2, 8, 16, 10, n_kv_head=5)
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        kv_cache_bytes(2, 8, 16, 0)


# ------------------------------------------------------------------------------------------ the explorer

def explorer_views():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 32, generator=g)
    q = {(b, gran): dict(weights=quantize(w, b, 8 if gran == "group of 8" else "channel").dequantize(),
                         val_loss=2.0 + 1 / b, bytes=b / 32, sample=f"sample {b} {gran}")
         for b in (8, 4, 2) for gran in ("row", "group of 8")}
    del q[2, "row"]  # a combination not computed
    p = {s: dict(weights=w * magnitude_mask(w, s), val_loss=2.0 + s, bytes=1 - s, sample=f"pruned {s}")
         for s in (0.25, 0.5)}
    return w, q, p


def test_compression_explorer_switches_precomputed_pages_in_the_browser():
    import ipywidgets as widgets

    from utils import viz

    w, q, p = explorer_views()
    box = viz.compression_explorer(w, q, p, {"val_loss": 2.0, "sample": "ref"}, default_bits=4,
                                   default_granularity="group of 8", default_sparsity=0.5)
    mode, stack = box.children
    assert list(mode.options) == ["quantize", "prune"] and stack.selected_index == 0
    quant_box, prune_box = stack.children
    bits, gran, pages = quant_box.children
    assert [v for _, v in bits.options] == [8, 4, 2] and bits.value == 4 and gran.value == "group of 8"
    assert pages.selected_index == 1 and pages.children[1].selected_index == 1  # (4 bits, group of 8)
    shown = pages.children[1].children[1]
    assert "int4, scale per group of 8" in shown.children[0].value and "2.250" in shown.children[0].value
    assert shown.children[1].value[:4] == b"\x89PNG" and "sample 4 group of 8" in shown.children[2].value
    assert "was not computed" in pages.children[2].children[0].value  # (2 bits, row)
    links = {(l.source[0], l.target[0]) for l in box.links}
    assert (mode, stack) in links and (bits, pages) in links  # switched in the browser, without a kernel
    assert all(isinstance(l, widgets.widget_link.Link) for l in box.links)
    sp, sp_pages = prune_box.children
    assert sp.value == 0.5 and sp_pages.selected_index == 1
    assert "50% of weights pruned" in sp_pages.children[1].children[0].value


def test_compression_explorer_rejects_bad_input():
    from utils import viz

    w, q, p = explorer_views()
    ref = {"val_loss": 2.0, "sample": "ref"}
    with pytest.raises(ValueError, match="default_bits 3 is not among"):
        viz.compression_explorer(w, q, p, ref, default_bits=3)
    with pytest.raises(ValueError, match=r"lacks \['sample'\]"):
        viz.compression_explorer(w, {(8, "row"): {k: v for k, v in q[8, "row"].items() if k != "sample"}}, {}, ref,
                                 default_bits=8)
    with pytest.raises(ValueError, match="weights have shape"):
        viz.compression_explorer(w[:4], q, p, ref)
    with pytest.raises(ValueError, match=r"sparsities must be in \[0, 1\)"):
        viz.compression_explorer(w, q, {1.0: p[0.5]}, ref)
