"""utils.attention: explicit attention equals F.scaled_dot_product_attention and nn.MultiheadAttention
(same, scrambled weights), masks do what they say, and bad input fails with a clear error."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils import attention as A
from weights import scramble_

TOL = {torch.float64: dict(atol=1e-10, rtol=0), torch.float32: dict(atol=1e-5, rtol=1e-5)}
DTYPES = [torch.float64, torch.float32]
B, T, S, C, H = 3, 5, 7, 12, 3




def randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def padding(lengths, S):
    """(B, S) bool, True = padding (nn.MultiheadAttention's key_padding_mask convention)."""
    return torch.arange(S)[None, :] >= torch.tensor(lengths)[:, None]


def mha_pair(dtype, bias=True, seed=1):
    ref = scramble_(nn.MultiheadAttention(C, H, bias=bias, batch_first=True), seed).to(dtype).eval()
    ours = A.MultiHeadAttention(C, H, bias=bias).to(dtype).eval()
    ours.load_state_dict(A.from_torch_mha_state_dict(ref.state_dict()), strict=True)
    return ours, ref


# ----------------------------------------------------------------------------------------------
# scaled_dot_product_attention vs F.scaled_dot_product_attention

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["plain", "bool", "float", "causal", "causal_rect", "broadcast"])
def test_sdpa_matches_torch(dtype, case):
    q, k, v = randn(B, H, T, 4, dtype=dtype, seed=1), randn(B, H, S, 4, dtype=dtype, seed=2), \
        randn(B, H, S, 6, dtype=dtype, seed=3)
    kw = {}
    if case == "bool":
        kw["mask"] = randn(B, H, T, S, seed=4) > -0.5
        kw["mask"][..., 0] = True  # every row keeps a key
    elif case == "float":
        kw["mask"] = randn(B, 1, T, S, dtype=dtype, seed=5)
    elif case == "broadcast":
        kw["mask"] = ~padding([7, 3, 1], S)[:, None, None, :]  # (B, 1, 1, S), True = may attend
    elif case == "causal":
        k, v = k[..., :T, :], v[..., :T, :]
    if case.startswith("causal"):
        kw["is_causal"] = True
    ours, attn = A.scaled_dot_product_attention(q, k, v, return_attn=True, **kw)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=kw.get("mask"), is_causal=kw.get("is_causal", False))
    torch.testing.assert_close(ours, ref, **TOL[dtype])
    assert ours.shape == (B, H, T, 6) and attn.shape == (B, H, T, k.shape[-2])
    torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn[..., 0]), **TOL[dtype])
    if case == "broadcast":
        assert (attn[1, :, :, 3:] == 0).all() and (attn[2, :, :, 1:] == 0).all()
    if case.startswith("causal"):
        assert (attn.triu(diagonal=1) == 0).all()
    assert torch.equal(A.scaled_dot_product_attention(q, k, v, **kw), ours)  # return_attn only adds the map


def test_sdpa_mask_and_causal_combine():
    q, k, v = randn(2, T, 4, seed=1), randn(2, T, 4, seed=2), randn(2, T, 4, seed=3)
    keep = ~padding([5, 2], T)[:, None, :]  # (B, 1, S)
    ours = A.scaled_dot_product_attention(q, k, v, mask=keep, is_causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep & A.causal_mask(T))
    torch.testing.assert_close(ours, ref, **TOL[torch.float64])


def test_sdpa_dropout_only_in_training():
    q = randn(2, T, 4, seed=1)
    torch.manual_seed(0)
    eval_out = A.scaled_dot_product_attention(q, q, q, dropout_p=0.5, training=False)
    assert torch.equal(eval_out, A.scaled_dot_product_attention(q, q, q))
    train_out, attn = A.scaled_dot_product_attention(q, q, q, dropout_p=0.5, training=True, return_attn=True)
    assert not torch.allclose(train_out, eval_out)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, T, dtype=q.dtype))  # the map is pre-dropout


def test_causal_mask():
    m = A.causal_mask(4)
    assert m.dtype == torch.bool and m.shape == (4, 4)
    assert m.tolist() == [[True, False, False, False], [True, True, False, False],
                          [True, True, True, False], [True, True, True, True]]


def test_sqrt_d_scaling_by_hand():
    # one query, two keys, D = 4: scores (q·k) / 2 = [2, 0] / 2 = [1, 0]; weights = softmax([1, 0])
    q = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    k = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([[10.0], [0.0]], dtype=torch.float64)
    out, attn = A.scaled_dot_product_attention(q, k, v, return_attn=True)
    w = math.e / (math.e + 1)
    torch.testing.assert_close(attn, torch.tensor([[w, 1 - w]], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out, torch.tensor([[10 * w]], dtype=torch.float64), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------
# MultiHeadAttention vs nn.MultiheadAttention

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["self", "self_pad", "causal", "causal_pad", "cross", "cross_pad_kv",
                                  "float_mask_pad", "no_bias"])
def test_mha_matches_torch(dtype, case):
    ours, ref = mha_pair(dtype, bias=case != "no_bias")
    x = randn(B, T, C, dtype=dtype, seed=2)
    key = value = x
    if case.startswith("cross"):
        key = randn(B, S, C, dtype=dtype, seed=3)
        value = key if case == "cross_pad_kv" else randn(B, S, C, dtype=dtype, seed=4)
    Sk = key.shape[1]
    pad = padding([Sk, 4, 2], Sk) if "pad" in case else None  # True = padding, both modules
    ours_mask = ref_mask = None
    causal = case.startswith("causal")
    if causal:
        ours_mask, ref_mask = A.causal_mask(T), ~A.causal_mask(T)  # torch's bool attn_mask: True = blocked
    if case == "float_mask_pad":
        ours_mask = ref_mask = randn(T, T, dtype=dtype, seed=5)
    ref_pad = pad
    if case == "float_mask_pad":  # torch wants both masks of one type; same meaning as the bool one
        ref_pad = torch.zeros(pad.shape, dtype=dtype).masked_fill(pad, float("-inf"))
    ref_out, ref_w = ref(x, key, value, key_padding_mask=ref_pad, attn_mask=ref_mask, need_weights=True,
                         average_attn_weights=False)
    for return_attn in (False, True):  # fused F.scaled_dot_product_attention path and explicit path
        out, attn = ours(x, key, value, key_padding_mask=pad, attn_mask=ours_mask, return_attn=return_attn)
        torch.testing.assert_close(out, ref_out, **TOL[dtype])
        if return_attn:
            assert attn.shape == (B, H, T, Sk)
            torch.testing.assert_close(attn, ref_w, **TOL[dtype])
        else:
            assert attn is None
    if causal:  # is_causal=True is the same as passing the causal mask
        out_c, attn_c = ours(x, key_padding_mask=pad, is_causal=True, return_attn=True)
        torch.testing.assert_close(out_c, ref_out, **TOL[dtype])
        torch.testing.assert_close(ours(x, key_padding_mask=pad, is_causal=True)[0], ref_out, **TOL[dtype])


def test_converter_both_ways():
    ours, ref = mha_pair(torch.float64)
    scramble_(ours, seed=7)
    back = nn.MultiheadAttention(C, H, batch_first=True).double()
    back.load_state_dict(A.to_torch_mha_state_dict(ours.state_dict()), strict=True)
    x = randn(B, T, C, seed=2)
    torch.testing.assert_close(ours(x)[0], back(x, x, x, need_weights=False)[0], **TOL[torch.float64])
    assert set(A.to_torch_mha_state_dict(ours.state_dict())) == set(ref.state_dict())
    with pytest.raises(KeyError, match="bias_k"):
        A.from_torch_mha_state_dict({**ref.state_dict(), "bias_k": torch.zeros(1)})
    with pytest.raises(KeyError, match="unexpected keys"):
        A.to_torch_mha_state_dict({"qkv.weight": torch.zeros(1)})


def test_mha_causality_and_masked_entries():
    ours, _ = mha_pair(torch.float64)
    x = randn(2, T, C, seed=2)
    pad = padding([T, 3], T)
    out, attn = ours(x, key_padding_mask=pad, is_causal=True, return_attn=True)
    assert (attn.triu(diagonal=1) == 0).all()  # no query sees a later key
    assert (attn[1, :, :, 3:] == 0).all()  # nor a padding key
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, H, T, dtype=x.dtype), atol=1e-12, rtol=0)
    for t in range(T - 1):  # changing token t+1.. never changes outputs 0..t
        x2 = x.clone()
        x2[:, t + 1:] += randn(2, T - t - 1, C, seed=10 + t)
        out2 = ours(x2, is_causal=True)[0]
        out1 = ours(x, is_causal=True)[0]
        torch.testing.assert_close(out2[:, :t + 1], out1[:, :t + 1], atol=1e-12, rtol=0)
        assert not torch.allclose(out2[:, t + 1:], out1[:, t + 1:])
    # changing a padding key never changes any output of that sequence
    x3 = x.clone()
    x3[1, 3:] += 5.0
    torch.testing.assert_close(ours(x3, key_padding_mask=pad)[0][1, :3], ours(x, key_padding_mask=pad)[0][1, :3],
                               atol=1e-12, rtol=0)


def test_mha_every_parameter_gets_a_gradient():
    ours = scramble_(A.MultiHeadAttention(C, H), seed=3).double()
    x, key = randn(B, T, C, seed=2), randn(B, S, C, seed=3)
    for return_attn in (False, True):
        ours.zero_grad()
        ours(x, key, key, return_attn=return_attn)[0].square().sum().backward()
        for name, p in ours.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mha_dropout_train_vs_eval():
    ours = A.MultiHeadAttention(C, H, dropout=0.5).double()
    x = randn(B, T, C, seed=2)
    ours.train()
    torch.manual_seed(0)
    assert not torch.allclose(ours(x)[0], ours.eval()(x)[0])
    ours.eval()
    assert torch.equal(ours(x)[0], ours(x)[0])


# ----------------------------------------------------------------------------------------------
# Chapter 5: additive (Bahdanau) and dot-product (Luong) attention

QD, KD, AD = 4, 6, 5
every_seq2seq_attention = pytest.mark.parametrize(
    "make", [lambda: A.AdditiveAttention(QD, KD, AD), lambda: A.DotProductAttention(QD, KD),
             lambda: A.DotProductAttention(KD, KD, kind="dot")], ids=["additive", "general", "dot"])


@every_seq2seq_attention
def test_seq2seq_attention_shapes_and_masking(make):
    att = scramble_(make(), seed=4).double()
    query, keys = randn(B, att.query_dim, seed=1), randn(B, S, KD, seed=2)
    mask = ~padding([S, 3, 1], S)  # True = real token
    context, weights = att(query, keys, mask)
    assert context.shape == (B, KD) and weights.shape == (B, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (weights[~mask] == 0).all() and (weights[mask] > 0).all()
    torch.testing.assert_close(context, (weights[:, :, None] * keys).sum(1), atol=1e-12, rtol=0)
    keys2 = keys.clone()
    keys2[~mask] = 100.0  # padding keys change nothing
    torch.testing.assert_close(att(query, keys2, mask)[0], context, atol=1e-12, rtol=0)
    _, unmasked = att(query, keys)
    assert (unmasked > 0).all()
    params = list(att.parameters())
    if params:
        att(query, keys, mask)[0].sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


@every_seq2seq_attention
def test_projected_keys_computed_once_give_the_same_result(make):
    att = scramble_(make(), seed=5).double()
    query, keys = randn(B, att.query_dim, seed=1), randn(B, S, KD, seed=2)
    mask = ~padding([S, 3, 1], S)
    expected = att(query, keys, mask)
    got = att(query, keys, mask, projected=att.project_keys(keys))
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"projected keys must have shape \(B, S, \d+\) = \(3, 7, \d+\)"):
        att(query, keys, mask, projected=att.project_keys(keys)[:, :-1])


def test_additive_by_hand():
    # Q = K = A = 1: score(q, k) = v tanh(w_q q + w_k k) with w_q = 1, w_k = 2, v = 3
    att = A.AdditiveAttention(1, 1, 1).double()
    with torch.no_grad():
        att.w_q.weight.fill_(1.0), att.w_k.weight.fill_(2.0), att.v.weight.fill_(3.0)
    query = torch.tensor([[0.5]], dtype=torch.float64)
    keys = torch.tensor([[[1.0], [-1.0], [9.0]]], dtype=torch.float64)
    context, weights = att(query, keys, torch.tensor([[True, True, False]]))
    s1, s2 = 3 * math.tanh(0.5 + 2.0), 3 * math.tanh(0.5 - 2.0)
    w1 = math.exp(s1) / (math.exp(s1) + math.exp(s2))
    torch.testing.assert_close(weights, torch.tensor([[w1, 1 - w1, 0.0]], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(context, torch.tensor([[w1 - (1 - w1)]], dtype=torch.float64), atol=1e-12, rtol=0)


def test_dot_and_general_by_hand():
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)  # (1, 2, 2)
    query = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    _, weights = A.DotProductAttention(2, 2, kind="dot").double()(query, keys)
    w = math.exp(2) / (math.exp(2) + 1)  # scores [2, 0]
    torch.testing.assert_close(weights, torch.tensor([[w, 1 - w]], dtype=torch.float64), atol=1e-12, rtol=0)
    gen = A.DotProductAttention(2, 2, kind="general").double()
    with torch.no_grad():
        gen.w.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # W swaps: q^T W k1 = 0, q^T W k2 = 2
    context, weights = gen(query, keys)
    torch.testing.assert_close(weights, torch.tensor([[1 - w, w]], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(context, torch.tensor([[1 - w, w]], dtype=torch.float64), atol=1e-12, rtol=0)


def test_seq2seq_attention_float32_and_no_state():
    att = A.AdditiveAttention(QD, KD, AD)
    query, keys = randn(B, QD, dtype=torch.float32), randn(B, S, KD, dtype=torch.float32)
    context, weights = att(query, keys)
    assert context.dtype == weights.dtype == torch.float32
    assert not any(isinstance(v, torch.Tensor) for v in vars(att).values())  # nothing stashed on self


# ----------------------------------------------------------------------------------------------
# Bad input → clear errors

def test_bad_input_seq2seq_attention():
    att = A.AdditiveAttention(QD, KD, AD)
    query, keys = torch.randn(B, QD), torch.randn(B, S, KD)
    with pytest.raises(ValueError, match=r"query must have shape \(B, Q\) = \(batch, 4\), got \(3, 5\)"):
        att(torch.randn(B, 5), keys)
    with pytest.raises(ValueError, match=r"keys must have shape \(B, S, K\)"):
        att(query, torch.randn(B, S, 3))
    with pytest.raises(ValueError, match="batch size mismatch"):
        att(query, torch.randn(B + 1, S, KD))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, S\) = \(3, 7\), got \(3, 6\)"):
        att(query, keys, torch.ones(B, S - 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        att(query, keys, torch.ones(B, S))
    dead = torch.ones(B, S, dtype=torch.bool)
    dead[1] = False
    with pytest.raises(ValueError, match=r"mask rows \[1\] have no real token"):
        att(query, keys, dead)
    with pytest.raises(TypeError, match="floating point"):
        att(query, torch.ones(B, S, KD, dtype=torch.long))
    with pytest.raises(ValueError, match="query_dim == key_dim, got 4 and 6"):
        A.DotProductAttention(QD, KD, kind="dot")
    with pytest.raises(ValueError, match="kind must be one of"):
        A.DotProductAttention(QD, KD, kind="concat")
    with pytest.raises(ValueError, match="hidden_dim must be a positive int"):
        A.AdditiveAttention(QD, KD, 0)


def test_bad_input_sdpa():
    q, k, v = torch.randn(2, T, 4), torch.randn(2, S, 4), torch.randn(2, S, 4)
    with pytest.raises(ValueError, match="key/value length mismatch, k has S=7 positions but v has 6"):
        A.scaled_dot_product_attention(q, k, v[:, :6])
    with pytest.raises(ValueError, match="share the head dim"):
        A.scaled_dot_product_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match=r"mask of shape \(4, 7\) does not broadcast .* \(2, 5, 7\)"):
        A.scaled_dot_product_attention(q, k, v, mask=torch.ones(4, S, dtype=torch.bool))
    dead = torch.ones(T, S, dtype=torch.bool)
    dead[2] = False
    with pytest.raises(ValueError, match="may attend to no key"):
        A.scaled_dot_product_attention(q, k, v, mask=dead)
    with pytest.raises(ValueError, match="may attend to no key"):
        A.scaled_dot_product_attention(q, k, v, mask=torch.zeros(T, S).masked_fill(~dead, float("-inf")))
    with pytest.raises(TypeError, match="mask must be bool .* or float"):
        A.scaled_dot_product_attention(q, k, v, mask=torch.ones(T, S, dtype=torch.long))
    with pytest.raises(ValueError, match="dropout_p must be in"):
        A.scaled_dot_product_attention(q, k, v, dropout_p=1.5)


def test_bad_input_mha():
    with pytest.raises(ValueError, match="embed_dim=10 is not divisible by num_heads=3"):
        A.MultiHeadAttention(10, 3)
    mha = A.MultiHeadAttention(C, H)
    x, kv = torch.randn(B, T, C), torch.randn(B, S, C)
    with pytest.raises(ValueError, match="key/value length mismatch, key has S=7 positions but value has 6"):
        mha(x, kv, kv[:, :6])
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, S\) = \(3, 7\), got \(3, 5\)"):
        mha(x, kv, kv, key_padding_mask=torch.zeros(B, T, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"key_padding_mask must be a bool tensor \(True = padding\)"):
        mha(x, key_padding_mask=torch.zeros(B, T))
    with pytest.raises(ValueError, match=r"attn_mask must have shape \(T, S\) = \(5, 7\) .* got \(7, 5\)"):
        mha(x, kv, kv, attn_mask=torch.ones(S, T, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"query must have shape \(B, length, C\) with C=12, got \(3, 5, 8\)"):
        mha(torch.randn(B, T, 8))
    with pytest.raises(ValueError, match="batch size mismatch"):
        mha(x, kv[:2], kv[:2])
    with pytest.raises(ValueError, match="may attend to no key"):
        mha(x, key_padding_mask=torch.ones(B, T, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------
# The key/value cache (past_kv, use_cache): chunks of a causal pass equal the whole pass

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("return_attn", [False, True])  # the fused and the explicit attention path
def test_mha_past_kv_equals_the_full_causal_pass(dtype, return_attn):
    mha, _ = mha_pair(dtype, seed=7)
    x, n = randn(B, 9, C, dtype=dtype, seed=8), 9
    full, full_attn = mha(x, is_causal=True, return_attn=return_attn)
    past, outs, start = None, [], 0
    for size in (3, 1, 4, 1):  # a prompt, then single positions and chunks
        out, attn, new = mha(x[:, start:start + size], is_causal=True, return_attn=return_attn, past_kv=past,
                             use_cache=True)
        if past is not None:
            assert past[0].shape[2] == start  # the given cache is not modified
        if return_attn:  # the new rows of the full map: queries start.., keys 0 .. start + size - 1
            torch.testing.assert_close(attn, full_attn[:, :, start:start + size, :start + size], **TOL[dtype])
        assert new[0].shape == new[1].shape == (B, H, start + size, C // H)
        past, start = new, start + size
        outs.append(out)
    assert start == n
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **TOL[dtype])
    _, _, (k, v) = mha(x, use_cache=True)  # the cache holds the projected keys and values, head by head
    w_k, w_v = mha.in_proj.weight.chunk(3)[1:]
    b_k, b_v = mha.in_proj.bias.chunk(3)[1:]
    torch.testing.assert_close(k, (x @ w_k.T + b_k).unflatten(-1, (H, C // H)).transpose(1, 2), **TOL[dtype])
    torch.testing.assert_close(v, (x @ w_v.T + b_v).unflatten(-1, (H, C // H)).transpose(1, 2), **TOL[dtype])


def test_mha_past_kv_with_masks_over_all_keys():
    """With a past the masks cover S = P + T keys: padding a cached key removes it from the new queries too."""
    mha, _ = mha_pair(torch.float64, seed=9)
    x = randn(B, 6, C, seed=10)
    pad = padding([6, 6, 6], 6)
    pad[1, 1] = True  # sequence 1 ignores key 1 (a cached one, for the last two queries)
    full, _ = mha(x, key_padding_mask=pad, is_causal=True)
    _, _, past = mha(x[:, :4], key_padding_mask=pad[:, :4], is_causal=True, use_cache=True)
    last, _ = mha(x[:, 4:], key_padding_mask=pad, is_causal=True, past_kv=past)
    torch.testing.assert_close(last, full[:, 4:], **TOL[torch.float64])
    float_mask = torch.zeros(2, 6, dtype=torch.float64).masked_fill(pad[1, None, :].expand(2, 6), float("-inf"))
    got, _ = mha(x[1:2, 4:], attn_mask=float_mask, is_causal=True, past_kv=(past[0][1:2], past[1][1:2]))
    torch.testing.assert_close(got, full[1:2, 4:], **TOL[torch.float64])


def test_bad_past_kv():
    mha = A.MultiHeadAttention(C, H)
    x = torch.randn(B, T, C)
    _, _, past = mha(x, use_cache=True)
    with pytest.raises(ValueError, match="past_kv caches self-attention only"):
        mha(x, torch.randn(B, S, C), past_kv=past)
    with pytest.raises(ValueError, match=r"past_kv must be a \(keys, values\) pair"):
        mha(x, past_kv=past[0])
    with pytest.raises(ValueError, match=r"past_kv keys must have shape \(B, H, P, D\) = \(3, 3, P, 4\)"):
        mha(x, past_kv=(past[0][:2], past[1][:2]))
    with pytest.raises(ValueError, match=r"with one P for keys and values"):
        mha(x, past_kv=(past[0], past[1][:, :, :2]))
    with pytest.raises(ValueError, match="past_kv keys are torch.float64 .* keep the cache with the model"):
        mha(x, past_kv=(past[0].double(), past[1]))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, S\) = \(3, 10\), got \(3, 5\)"):
        mha(x, past_kv=past, key_padding_mask=torch.zeros(B, T, dtype=torch.bool))
