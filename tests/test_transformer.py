"""utils.transformer: the layers equal nn.TransformerEncoderLayer / nn.TransformerDecoderLayer (same,
scrambled weights), positions follow the formula, the decoder is causal and ignores source padding,
chapter 4's decoders run the encoder-decoder unchanged, it trains, and bad input fails clearly."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from decoding import check_beam_agrees_with_greedy
from utils import seq2seq as S
from utils import transformer as X
from utils.attention import causal_mask
from weights import scramble_

TOL = {torch.float64: dict(atol=1e-10, rtol=0), torch.float32: dict(atol=1e-5, rtol=1e-5)}
DTYPES = [torch.float64, torch.float32]
B, T, SRC, C, H, FF = 3, 5, 7, 12, 2, 20  # H even, so torch's eval fast path is eligible


def randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def padding(lengths, length):
    """(B, length) bool, True = padding (torch's key_padding_mask convention)."""
    return torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vocabs() -> tuple[S.Seq2SeqVocab, S.Seq2SeqVocab]:
    return S.date_vocabs()


@pytest.fixture(scope="module")
def pairs() -> list[S.DatePair]:
    return S.make_date_dataset(n_train=16, n_val=0, n_test=0, seed=0).train


def tiny_config(vocabs, **kw) -> X.TransformerConfig:
    src_vocab, tgt_vocab = vocabs
    base = dict(d_model=16, num_heads=2, num_encoder_layers=2, num_decoder_layers=2, d_ff=24, dropout=0.0,
                max_len=40)
    return X.TransformerConfig(len(src_vocab), len(tgt_vocab), **{**base, **kw})


def tiny_model(vocabs, dtype=torch.float64, seed=2, **kw) -> X.TransformerSeq2Seq:
    """Scrambled weights (every parameter matters), the <eos> logit nudged so that greedy rows of the
    default model end at different steps (two not within 14 steps)."""
    m = scramble_(X.TransformerSeq2Seq(tiny_config(vocabs, **kw)), seed).to(dtype).eval()
    with torch.no_grad():
        m.decoder.head.bias[S.EOS] += 1.0
    return m


# ---------------------------------------------------------------------------------------------- layers vs torch

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("torch_path", ["math", "fastpath"])
def test_encoder_layer_matches_torch(dtype, norm_first, activation, torch_path, monkeypatch):
    """torch runs its layer in Python ("math": train mode, dropout 0, so no fast path) or, in eval mode
    without grad, through its fused kernel torch._transformer_encoder_layer_fwd ("fastpath"; the spy
    proves it ran). Ours equals both, on the fused and the explicit (return_attn) attention path."""
    ref = scramble_(nn.TransformerEncoderLayer(C, H, FF, dropout=0.0, activation=activation, batch_first=True,
                                               norm_first=norm_first), seed=1).to(dtype)
    ours = X.EncoderLayer(C, H, FF, activation=activation, norm_first=norm_first).to(dtype).eval()
    ours.load_state_dict(X.from_torch_encoder_layer_state_dict(ref.state_dict()), strict=True)
    x, pad = randn(B, T, C, dtype=dtype, seed=2), padding([T, 3, 1], T)
    fused = []
    if torch_path == "fastpath":
        kernel = torch._transformer_encoder_layer_fwd
        monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", lambda *a: fused.append(1) or kernel(*a))
        with torch.no_grad():
            expected = ref.eval()(x, src_key_padding_mask=pad)
        assert fused, "torch's fast path did not run; this case would compare nothing new"
    else:
        expected = ref.train()(x, src_key_padding_mask=pad)
    torch.testing.assert_close(ours(x, key_padding_mask=pad), expected, **TOL[dtype])
    out, attn = ours(x, key_padding_mask=pad, return_attn=True)
    torch.testing.assert_close(out, expected, **TOL[dtype])
    assert attn.shape == (B, H, T, T) and (attn[2, :, :, 1:] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_decoder_layer_matches_torch(dtype, norm_first, activation):
    ref = scramble_(nn.TransformerDecoderLayer(C, H, FF, dropout=0.0, activation=activation, batch_first=True,
                                               norm_first=norm_first), seed=3).to(dtype).train()
    ours = X.DecoderLayer(C, H, FF, activation=activation, norm_first=norm_first).to(dtype).eval()
    ours.load_state_dict(X.from_torch_decoder_layer_state_dict(ref.state_dict()), strict=True)
    x, memory = randn(B, T, C, dtype=dtype, seed=4), randn(B, SRC, C, dtype=dtype, seed=5)
    tgt_pad, mem_pad = padding([T, 4, 2], T), padding([SRC, 5, 1], SRC)
    expected = ref(x, memory, tgt_mask=~causal_mask(T), tgt_key_padding_mask=tgt_pad,  # torch: True = blocked
                   memory_key_padding_mask=mem_pad)
    got = ours(x, memory, memory_key_padding_mask=mem_pad, tgt_key_padding_mask=tgt_pad)
    torch.testing.assert_close(got, expected, **TOL[dtype])
    out, self_attn, cross_attn = ours(x, memory, memory_key_padding_mask=mem_pad, tgt_key_padding_mask=tgt_pad,
                                      return_attn=True)
    torch.testing.assert_close(out, expected, **TOL[dtype])
    assert self_attn.shape == (B, H, T, T) and cross_attn.shape == (B, H, T, SRC)
    assert (self_attn.triu(diagonal=1) == 0).all() and (self_attn[2, :, :, 2:] == 0).all()
    assert (cross_attn[2, :, :, 1:] == 0).all()
    no_causal = ref(x, memory, memory_key_padding_mask=mem_pad)  # causal=False: full self-attention
    torch.testing.assert_close(ours(x, memory, memory_key_padding_mask=mem_pad, causal=False), no_causal,
                               **TOL[dtype])


def test_converters_reject_unknown_and_missing_keys():
    enc = nn.TransformerEncoderLayer(C, H, FF, batch_first=True).state_dict()
    dec = nn.TransformerDecoderLayer(C, H, FF, batch_first=True).state_dict()
    ours = X.from_torch_decoder_layer_state_dict(dec)
    assert set(ours) == set(X.DecoderLayer(C, H, FF).state_dict())
    assert ours["cross_attn.in_proj.weight"] is dec["multihead_attn.in_proj_weight"]  # same tensors, renamed
    assert ours["mlp.c_fc.bias"] is dec["linear1.bias"] and ours["ln_3.weight"] is dec["norm3.weight"]
    with pytest.raises(KeyError, match=r"unknown keys \['self_attn.bias_k'\], missing keys \[\]"):
        X.from_torch_encoder_layer_state_dict({**enc, "self_attn.bias_k": torch.zeros(1)})
    missing = {k: v for k, v in enc.items() if k != "norm2.bias"}
    with pytest.raises(KeyError, match=r"unknown keys \[\], missing keys \['norm2.bias'\]"):
        X.from_torch_encoder_layer_state_dict(missing)
    with pytest.raises(KeyError, match=r"missing keys \['multihead_attn.in_proj_bias', .*'norm3.weight'\]"):
        X.from_torch_decoder_layer_state_dict(enc)  # an encoder layer is not a decoder layer


def test_feed_forward_activations_and_dropout():
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    torch.testing.assert_close(X.quick_gelu(x), x / (1 + torch.exp(-1.702 * x)), atol=1e-15, rtol=0)
    torch.testing.assert_close(X.ACTIVATIONS["gelu"](x), x * 0.5 * (1 + torch.erf(x / math.sqrt(2))),
                               atol=1e-15, rtol=0)
    tanh = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))  # GPT-2's gelu
    torch.testing.assert_close(X.ACTIVATIONS["gelu_tanh"](x), tanh, atol=1e-15, rtol=0)
    ff = scramble_(X.FeedForward(C, FF, dropout=0.5, activation="quick_gelu"), seed=6).double()
    h = randn(B, T, C, seed=7)
    expected = ff.c_proj(X.quick_gelu(ff.c_fc(h)))
    torch.testing.assert_close(ff.eval()(h), expected, atol=0, rtol=0)
    torch.manual_seed(0)
    dropped = ff.train()(h)
    assert not torch.allclose(dropped, expected)  # dropout acts in training only
    # ... and where torch's layer puts it: after the activation and after c_proj (same seed, same masks)
    ref = nn.TransformerEncoderLayer(C, H, FF, dropout=0.5, activation=X.quick_gelu, batch_first=True).double()
    ref.linear1.load_state_dict(ff.c_fc.state_dict()), ref.linear2.load_state_dict(ff.c_proj.state_dict())
    torch.manual_seed(0)
    torch.testing.assert_close(ref.train()._ff_block(h), dropped, atol=1e-15, rtol=0)


# ---------------------------------------------------------------------------------------------- positions

def test_sinusoidal_positions_by_hand():
    pe = X.sinusoidal_positions(50, 8, dtype=torch.float64)
    assert pe.shape == (50, 8) and pe.dtype == torch.float64
    for p, i in [(0, 0), (1, 0), (3, 1), (17, 2), (49, 3)]:
        angle = p / 10000 ** (2 * i / 8)
        assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-12)
        assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-12)
    assert pe[0].tolist() == [0.0, 1.0] * 4
    small_base = X.sinusoidal_positions(4, 4, base=100.0, dtype=torch.float64)
    assert small_base[3, 2].item() == pytest.approx(math.sin(3 / 100 ** 0.5), abs=1e-12)
    assert X.sinusoidal_positions(3, 4).dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="C .* must be a positive even int, got 7"):
        X.sinusoidal_positions(10, 7)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_positions_in_the_model(vocabs, positions):
    m = X.TransformerSeq2Seq(tiny_config(vocabs, positions=positions))
    keys = set(m.state_dict())
    assert ("encoder.embed.wpe.weight" in keys) == ("decoder.embed.wpe.weight" in keys) == (positions == "learned")
    assert not any(k.endswith(".pe") for k in keys)  # the sinusoidal table is recomputed, never saved
    if positions == "sinusoidal":
        torch.testing.assert_close(m.encoder.embed.pe, X.sinusoidal_positions(40, 16))
    # the embedding is wte(ids) * sqrt(C) + position
    ids = torch.tensor([[5, 6, 7]])
    pos = m.encoder.embed.wpe.weight[:3] if positions == "learned" else m.encoder.embed.pe[:3]
    torch.testing.assert_close(m.encoder.embed(ids), m.encoder.embed.wte(ids) * 4.0 + pos)


# ---------------------------------------------------------------------------------------------- the model

def test_causality_and_source_padding(vocabs, pairs):
    src_vocab, tgt_vocab = vocabs
    m = tiny_model(vocabs)
    b = S.make_batch(pairs[:4], src_vocab, tgt_vocab)
    logits = m(b.src, b.src_len, b.tgt_in)  # (B, T, V)
    Tt = b.tgt_in.shape[1]
    for t in range(Tt - 1):  # changing target tokens after t never changes the logits at 0..t
        changed = b.tgt_in.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1 + t) % len(tgt_vocab)
        again = m(b.src, b.src_len, changed)
        torch.testing.assert_close(again[:, :t + 1], logits[:, :t + 1], atol=1e-12, rtol=0)
        assert not torch.allclose(again[:, t + 1:], logits[:, t + 1:])
    assert int(b.src_len.min()) < b.src.shape[1]  # the batch has padding
    pad = torch.arange(b.src.shape[1])[None, :] >= b.src_len[:, None]  # (B, S)
    noisy = b.src.masked_fill(pad, 7)  # any tokens at padded positions
    longer = torch.cat([noisy, torch.full_like(noisy[:, :3], 9)], dim=1)  # and more padding
    for src in (noisy, longer):
        torch.testing.assert_close(m(src, b.src_len, b.tgt_in), logits, atol=1e-12, rtol=0)
        mem = m.encode(src, b.src_len)
        torch.testing.assert_close(mem.outputs[:, :b.src.shape[1]], m.encode(b.src, b.src_len).outputs,
                                   atol=1e-12, rtol=0)
        assert (mem.outputs[~mem.mask] == 0).all()


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_every_parameter_gets_a_gradient(vocabs, pairs, norm_first, positions):
    src_vocab, tgt_vocab = vocabs
    m = tiny_model(vocabs, norm_first=norm_first, positions=positions, dropout=0.1).train()
    b = S.make_batch(pairs[:4], src_vocab, tgt_vocab)
    S.seq2seq_loss(m(b.src, b.src_len, b.tgt_in), b.tgt_out).backward()
    assert isinstance(m.encoder.ln_f, nn.LayerNorm) == norm_first  # post-norm ends with a LayerNorm already
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_attention_maps_and_return_attn(vocabs, pairs):
    src_vocab, tgt_vocab = vocabs
    m = tiny_model(vocabs, dropout=0.3).train()
    b = S.make_batch(pairs[:4], src_vocab, tgt_vocab)
    (Bb, Ss), Tt, L, Hh = b.src.shape, b.tgt_in.shape[1], 2, 2
    maps = m.attention_maps(b.src, b.src_len, b.tgt_in)
    assert m.training  # the mode is restored
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "encoder self-attention": (Bb, L, Hh, Ss, Ss), "decoder self-attention": (Bb, L, Hh, Tt, Tt),
        "cross-attention": (Bb, L, Hh, Tt, Ss)}
    for name, a in maps.items():
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1], dtype=a.dtype), atol=1e-12, rtol=0)
        assert not a.requires_grad, name
    real = (torch.arange(Ss)[None, :] < b.src_len[:, None])[:, None, None, None, :]  # (B, 1, 1, 1, S)
    assert (maps["encoder self-attention"].masked_select(~real) == 0).all()
    assert (maps["cross-attention"].masked_select(~real) == 0).all()
    assert (maps["decoder self-attention"].triu(diagonal=1) == 0).all()
    m.eval()
    logits, cross = m.decoder(b.tgt_in, m.encode(b.src, b.src_len), return_attn=True)  # as Decoder.forward
    assert logits.shape == (Bb, Tt, len(tgt_vocab))
    torch.testing.assert_close(cross, maps["cross-attention"][:, -1].mean(dim=1), atol=1e-12, rtol=0)
    memory, enc = m.encoder(b.src, b.src_len, return_attn=True)
    torch.testing.assert_close(enc, maps["encoder self-attention"], atol=1e-12, rtol=0)
    assert memory.state == ()
    tensors_on_self = [type(mod).__name__ for mod in m.modules()
                       if any(isinstance(v, torch.Tensor) for v in vars(mod).values())]
    assert tensors_on_self == []  # no maps stashed on self


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_loop_equals_the_parallel_pass(vocabs, pairs, dtype):
    """Decoder.forward's loop (init_state, then step per token, the prefix rerun each time) gives the
    logits and attention of the one causal pass, for the same input tokens."""
    src_vocab, tgt_vocab = vocabs
    m = tiny_model(vocabs, dtype=dtype)
    b = S.make_batch(pairs[:4], src_vocab, tgt_vocab)
    memory = m.encode(b.src, b.src_len)
    parallel, parallel_attn = m.decoder(b.tgt_in, memory, return_attn=True)
    looped, looped_attn = S.Decoder.forward(m.decoder, b.tgt_in, memory, return_attn=True)
    torch.testing.assert_close(looped, parallel, **TOL[dtype])
    torch.testing.assert_close(looped_attn, parallel_attn, **TOL[dtype])
    mixed = m(b.src, b.src_len, b.tgt_in, teacher_forcing=0.5, generator=torch.Generator().manual_seed(0))
    assert mixed.shape == parallel.shape  # teacher_forcing < 1 runs the step loop
    free = m(b.src, b.src_len, b.tgt_in, teacher_forcing=0.0)
    fed = torch.cat([b.tgt_in[:, :1], free.argmax(-1)[:, :-1]], dim=1)  # what it fed itself
    torch.testing.assert_close(m(b.src, b.src_len, fed), free, **TOL[dtype])


def test_greedy_and_beam_search_run_unchanged(vocabs, pairs):
    src_vocab, tgt_vocab = vocabs
    m = tiny_model(vocabs)
    src, src_len = S.encode_sources([p.source for p in pairs[:6]], src_vocab)
    greedy = S.greedy_decode(m, src, src_len, max_len=14, return_attn=True)
    lengths = (greedy.tokens != S.PAD).sum(1).tolist()
    assert len(set(lengths)) > 2 and max(lengths) == 14  # rows end at different steps, some never: <eos> handling
    assert greedy.attn.shape == (6, greedy.tokens.shape[1], src.shape[1])
    torch.testing.assert_close(S.sequence_log_prob(m, src, src_len, greedy.tokens), greedy.log_prob,
                               atol=1e-10, rtol=0)
    check_beam_agrees_with_greedy(m, src, src_len)
    out = S.translate(m, ["3 March 1998", "04/05/21"], src_vocab, tgt_vocab, max_len=14)
    assert len(out) == 2 and all(set(o) <= set("0123456789-") for o in out)


def test_a_tiny_model_overfits_a_handful_of_dates(vocabs, pairs):
    src_vocab, tgt_vocab = vocabs
    torch.manual_seed(0)
    m = X.TransformerSeq2Seq(tiny_config(vocabs, d_model=32, num_heads=2, num_encoder_layers=1,
                                         num_decoder_layers=1, d_ff=64, dropout=0.0))
    b = S.make_batch(pairs[:8], src_vocab, tgt_vocab)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = S.seq2seq_loss(m(b.src, b.src_len, b.tgt_in), b.tgt_out)
        opt.zero_grad(), loss.backward(), opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.02 and losses[0] > 2.0
    assert S.translate(m, [p.source for p in pairs[:8]], src_vocab, tgt_vocab, max_len=12) == \
        [p.target for p in pairs[:8]]


# ---------------------------------------------------------------------------------------------- bad input

def test_bad_config(vocabs):
    with pytest.raises(ValueError, match="d_model=30 is not divisible by num_heads=4"):
        tiny_config(vocabs, d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="sinusoidal positions need an even d_model, got 15"):
        tiny_config(vocabs, d_model=15, num_heads=3)
    assert tiny_config(vocabs, d_model=15, num_heads=3, positions="learned").d_model == 15
    with pytest.raises(ValueError, match=r"unknown activation 'swish'; choose one of \['gelu', 'gelu_tanh'"):
        tiny_config(vocabs, activation="swish")
    with pytest.raises(ValueError, match="positions must be one of"):
        tiny_config(vocabs, positions="rotary")
    with pytest.raises(ValueError, match="num_encoder_layers must be a positive int, got 0"):
        tiny_config(vocabs, num_encoder_layers=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        tiny_config(vocabs, dropout=1.0)
    with pytest.raises(TypeError, match="takes a TransformerConfig, got Seq2SeqConfig"):
        X.TransformerSeq2Seq(S.Seq2SeqConfig(10, 10))


def test_bad_layer_input():
    with pytest.raises(ValueError, match="C=10 is not divisible by H=4"):
        X.EncoderLayer(10, 4, FF)
    with pytest.raises(ValueError, match="FeedForward: unknown activation 'tanh'"):
        X.FeedForward(C, FF, activation="tanh")
    with pytest.raises(ValueError, match="DecoderLayer: unknown activation 'elu'"):
        X.DecoderLayer(C, H, FF, activation="elu")
    enc, dec = X.EncoderLayer(C, H, FF), X.DecoderLayer(C, H, FF)
    x, memory = torch.randn(B, T, C), torch.randn(B, SRC, C)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, S\) = \(3, 5\), got \(3, 7\)"):
        enc(x, key_padding_mask=torch.zeros(B, SRC, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, S\) = \(3, 7\), got \(3, 5\)"):
        dec(x, memory, memory_key_padding_mask=torch.zeros(B, T, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"EncoderLayer: x must be a float tensor of shape \(B, length, C\) "
                                         r"with C=12, got \(3, 5, 8\)"):
        enc(torch.randn(B, T, 8))
    with pytest.raises(ValueError, match=r"DecoderLayer: memory must be .* C=12, got \(3, 7\)"):
        dec(x, memory[..., 0])


def test_bad_model_input(vocabs, pairs):
    src_vocab, tgt_vocab = vocabs
    m = X.TransformerSeq2Seq(tiny_config(vocabs, max_len=12))
    src, src_len = S.encode_sources(["Tuesday, March 3, 1998"], src_vocab)  # 22 characters
    with pytest.raises(ValueError, match="the source has length 22, longer than max_len=12 positions; "
                                         r"raise TransformerConfig.max_len \(to ≥ 22\)"):
        m.encode(src, src_len)
    src, src_len = S.encode_sources(["3.3.98"], src_vocab)
    with pytest.raises(ValueError, match="the target has length 13, longer than max_len=12"):
        m(src, src_len, torch.full((1, 13), S.SOS))
    with pytest.raises(ValueError, match=r"target token id out of range \[0, 15\)"):
        m(src, src_len, torch.tensor([[S.SOS, 99]]))
    with pytest.raises(ValueError, match="source id out of range"):  # Seq2Seq.encode's checks, reused
        m.encode(torch.tensor([[1000]]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"src_len must be a \(1,\) tensor"):
        m.attention_maps(src, torch.tensor([6, 6]), torch.tensor([[S.SOS]]))
    with pytest.raises(ValueError, match=r"teacher_forcing must be in \[0, 1\], got 1.5"):
        m(src, src_len, torch.tensor([[S.SOS]]), teacher_forcing=1.5)


def test_transformer_stack_is_its_blocks_in_order_causal_or_not():
    from utils.transformer import Transformer
    torch.manual_seed(0)
    stack = Transformer(16, 3, 4, mlp_width=24, activation="quick_gelu").double().eval()
    assert [k for k in stack.state_dict() if k.endswith("mlp.c_fc.weight")] == \
        [f"resblocks.{i}.mlp.c_fc.weight" for i in range(3)] and stack.resblocks[0].mlp.c_fc.out_features == 24
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    for causal in (False, True):
        stack.is_causal = causal
        y = x
        for block in stack.resblocks:
            y = block(y, is_causal=causal)
        out, attn = stack(x, return_attn=True)
        torch.testing.assert_close(stack(x), y, rtol=0, atol=0)
        torch.testing.assert_close(out, y)
        assert attn.shape == (2, 3, 4, 5, 5)
        assert (attn.triu(1) == 0).all() == causal  # causal: no weight on a later position
    with pytest.raises(ValueError, match="layers"):
        Transformer(16, 0, 4)


# ---------------------------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_layer_past_kv_equals_the_full_causal_pass(dtype, norm_first):
    """A causal layer run chunk by chunk with its key/value cache gives the outputs (and attention rows)
    of one causal pass over the whole sequence: the path GPT's generation takes (utils.gpt.forward_cached)."""
    layer = scramble_(X.EncoderLayer(C, H, FF, activation="gelu_tanh", norm_first=norm_first), seed=6).to(dtype)
    layer.eval()
    x = randn(B, 8, C, dtype=dtype, seed=7)
    full, full_attn = layer(x, is_causal=True, return_attn=True)
    past, outs, start = None, [], 0
    for size in (2, 1, 4, 1):
        out, attn, past = layer(x[:, start:start + size], is_causal=True, return_attn=True, past_kv=past,
                                use_cache=True)
        torch.testing.assert_close(attn, full_attn[:, :, start:start + size, :start + size], **TOL[dtype])
        start += size
        assert past[0].shape == past[1].shape == (B, H, start, C // H)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **TOL[dtype])
    y, kv = layer(x[:, :3], is_causal=True, use_cache=True)  # without return_attn: (x, cache)
    torch.testing.assert_close(y, full[:, :3], **TOL[dtype])
    last = layer(x[:, 3:], is_causal=True, past_kv=kv)  # a past without use_cache: the output only
    torch.testing.assert_close(last, full[:, 3:], **TOL[dtype])
