"""utils.compress (chapter 11): pruning masks equal to torch.nn.utils.prune, structured pruning that keeps
the function of the kept neurons, Hinton's distillation loss, linear attention in both forms, KV-cache bytes,
and clear errors for bad input."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from utils.attention import MultiHeadAttention
from utils.compress import (GroupedQueryAttention, LinearAttention, causal_linear_attention, distillation_loss,
                            grouped_query_gpt_, head_ablation_scores, kv_cache_bytes, linear_attention_gpt,
                            linear_attention_recurrent, magnitude_mask, mlp_neuron_scores, prune_mlp_neurons_,
                            prune_unstructured_, sparsity, train_student)
from utils.gpt import GPT, GPTConfig, Recipe
from utils.quantize import quantize
from weights import rows_of_different_ranges, tiny_gpt


@pytest.fixture
def w():
    return rows_of_different_ranges()


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


def test_train_student_is_reproducible_and_a_teacher_changes_what_it_learns():
    recipe = Recipe(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, lr=3e-3, min_lr=3e-4, warmup=2,
                    max_steps=10)
    cfg = recipe.gpt_config(11)
    ids = torch.randint(11, (2000,), generator=torch.Generator().manual_seed(0))
    val = [(ids[:16][None], ids[1:17][None])]
    a, ha = train_student(cfg, recipe, ids, val, steps=6, seed=3)
    b, hb = train_student(cfg, recipe, ids, val, steps=6, seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)  # reproducible
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


# ---------------------------------------------------------------------------------------------- GQA

def _mha(C=24, H=4, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    attn = MultiHeadAttention(C, H).to(dtype)
    with torch.no_grad():  # scrambled: every weight and bias matters, every head different
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
    return attn.eval()


@pytest.mark.parametrize("n_kv", [1, 2, 4])
def test_gqa_equals_torch_sdpa_with_enable_gqa_on_mean_pooled_heads(n_kv):
    """The reference: torch's own grouped-query attention (F.scaled_dot_product_attention(enable_gqa=True)),
    fed with key/value heads pooled as Ainslie et al. describe, the mean written out head by head."""
    C, H, B, T = 24, 4, 3, 7
    D, r = C // H, H // n_kv
    mha = _mha(C, H)
    gqa = GroupedQueryAttention.from_mha(mha, n_kv).eval()
    x = torch.randn(B, T, C, dtype=torch.float64)
    Wq, Wk, Wv = mha.in_proj.weight.split(C)
    bq, bk, bv = mha.in_proj.bias.split(C)
    Wk_g = torch.cat([sum(Wk[(g * r + j) * D:(g * r + j + 1) * D] for j in range(r)) / r for g in range(n_kv)])
    Wv_g = torch.cat([sum(Wv[(g * r + j) * D:(g * r + j + 1) * D] for j in range(r)) / r for g in range(n_kv)])
    bk_g = torch.cat([sum(bk[(g * r + j) * D:(g * r + j + 1) * D] for j in range(r)) / r for g in range(n_kv)])
    bv_g = torch.cat([sum(bv[(g * r + j) * D:(g * r + j + 1) * D] for j in range(r)) / r for g in range(n_kv)])
    q = (x @ Wq.T + bq).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
    k = (x @ Wk_g.T + bk_g).view(B, T, n_kv, D).transpose(1, 2)  # (B, Hkv, T, D)
    v = (x @ Wv_g.T + bv_g).view(B, T, n_kv, D).transpose(1, 2)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (B, H, T, D)
    ref = mha.out_proj(ref.transpose(1, 2).reshape(B, T, C))
    out, _ = gqa(x, is_causal=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    out2, attn = gqa(x, is_causal=True, return_attn=True)  # the explicit path agrees too
    torch.testing.assert_close(out2, ref, rtol=1e-10, atol=1e-10)
    assert attn.shape == (B, H, T, T) and torch.allclose(attn.sum(-1), torch.ones(B, H, T, dtype=torch.float64))
    assert gqa.in_proj.weight.shape == (C + 2 * n_kv * D, C)


def test_gqa_with_as_many_kv_heads_as_heads_is_the_original_attention():
    mha = _mha()
    x = torch.randn(2, 6, 24, dtype=torch.float64)
    torch.testing.assert_close(GroupedQueryAttention.from_mha(mha, 4)(x, is_causal=True)[0], mha(x, is_causal=True)[0],
                               rtol=1e-10, atol=1e-10)
    # and with fewer KV heads it is not (the pooling changed something): the test above can fail
    assert not torch.allclose(GroupedQueryAttention.from_mha(mha, 1)(x, is_causal=True)[0], mha(x, is_causal=True)[0])


def test_gqa_cache_holds_kv_heads_and_decoding_equals_the_full_forward():
    gqa = GroupedQueryAttention.from_mha(_mha(), 2).eval()
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    full, _ = gqa(x, is_causal=True)
    out, _, (k, v) = gqa(x[:, :5], is_causal=True, use_cache=True)
    assert k.shape == v.shape == (2, 2, 5, 6)  # (B, H_kv, P, D): half the heads of MHA's cache
    steps = [out]
    out, _, (k, v) = gqa(x[:, 5:7], is_causal=True, past_kv=(k, v), use_cache=True)  # two at once
    steps.append(out)
    for t in (7, 8):  # then one at a time
        out, _, (k, v) = gqa(x[:, t:t + 1], is_causal=True, past_kv=(k, v), use_cache=True)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)


def test_grouped_query_gpt_converts_every_block_and_shrinks_the_cache():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=4, n_embd=16)).eval()
    ids = torch.randint(11, (2, 10))
    before = model(ids)
    grouped_query_gpt_(model, 1)
    assert all(isinstance(b.attn, GroupedQueryAttention) and b.attn.num_kv_heads == 1 for b in model.transformer.h)
    after = model(ids)
    assert after.shape == before.shape and not torch.allclose(after, before)
    _, cache = model.forward_cached(ids)
    assert cache[0][0].shape == (2, 1, 10, 4)  # one KV head
    logits_cached, _ = model.forward_cached(ids[:, -1:], model.forward_cached(ids[:, :-1])[1])
    torch.testing.assert_close(logits_cached[:, -1], after[:, -1], rtol=1e-5, atol=1e-5)


def test_gqa_rejects_bad_input():
    with pytest.raises(ValueError, match="num_kv_heads"):
        GroupedQueryAttention(24, 4, 3)
    with pytest.raises(TypeError, match="MultiHeadAttention"):
        GroupedQueryAttention.from_mha(nn.Linear(3, 3), 1)
    gqa = GroupedQueryAttention(24, 4, 2)
    with pytest.raises(ValueError, match="causal self-attention only"):
        gqa(torch.randn(1, 3, 24))
    with pytest.raises(ValueError, match=r"\(B, H_kv, P, D\)"):
        gqa(torch.randn(1, 3, 24), is_causal=True, past_kv=(torch.randn(1, 4, 2, 6), torch.randn(1, 4, 2, 6)))
