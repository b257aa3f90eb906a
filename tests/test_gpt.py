"""utils.gpt: GPT equals Hugging Face's GPT2LMHeadModel (same, scrambled weights, both directions of the
converter), is causal, its KV cache changes nothing (logits, greedy and sampled tokens), sampling
filters equal transformers' warpers, checkpoints round-trip, and bad input fails clearly."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from utils import gpt as G
from utils.train import CheckpointError, load_checkpoint, save_checkpoint
from weights import scramble_

TOL = {torch.float64: dict(atol=1e-10, rtol=0), torch.float32: dict(atol=1e-5, rtol=1e-5)}
DTYPES = [torch.float64, torch.float32]
V, BLOCK, L, H, C = 50, 32, 2, 2, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def ids(*shape, seed=0, high=V):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def tiny_config(**kw) -> G.GPTConfig:
    return G.GPTConfig(**{**dict(vocab_size=V, block_size=BLOCK, n_layer=L, n_head=H, n_embd=C), **kw})


def tiny_hf(dtype=torch.float64, seed=0, attn_implementation="sdpa", **kw) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=V, n_positions=BLOCK, n_layer=L, n_head=H, n_embd=C, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                        attn_implementation=attn_implementation, **kw)
    return scramble_(GPT2LMHeadModel(config), seed).to(dtype).eval()


def tiny_gpt(dtype=torch.float64, seed=0, **kw) -> G.GPT:
    return scramble_(G.GPT(tiny_config(**kw)), seed).to(dtype).eval()


def generating_gpt(dtype=torch.float64) -> tuple[G.GPT, GPT2LMHeadModel]:
    """A scrambled pair whose greedy continuations vary: positions scaled up ×3, so that the position and
    not only the last token decides the next one (a random tied model otherwise repeats one token)."""
    hf = tiny_hf(dtype, seed=0)
    with torch.no_grad():
        hf.transformer.wpe.weight.mul_(3.0)
    return G.GPT.from_hf(hf), hf


# ---------------------------------------------------------------------------------------------- equal to HF GPT-2

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_matches_hf_gpt2(dtype, attn_implementation):
    hf = tiny_hf(dtype, attn_implementation=attn_implementation)
    ours = G.GPT(tiny_config()).to(dtype).eval()
    ours.load_state_dict(G.from_hf_gpt2_state_dict(hf.state_dict()), strict=True)
    x = ids(3, 11, seed=1)
    with torch.no_grad():
        ref = hf(x, labels=x, output_attentions=attn_implementation == "eager")
        logits = ours(x)
        _, loss = ours(x[:, :-1], targets=x[:, 1:])  # HF shifts the labels inside
        again, attn = ours(x, return_attn=True)
    torch.testing.assert_close(logits, ref.logits, **TOL[dtype])
    torch.testing.assert_close(loss.float(), ref.loss, **TOL[torch.float32])  # HF's loss is computed in float32
    torch.testing.assert_close(again, ref.logits, **TOL[dtype])  # the explicit attention path
    assert attn.shape == (3, L, H, 11, 11) and (attn.triu(diagonal=1) == 0).all()
    if attn_implementation == "eager":  # HF returns the maps from its eager path
        torch.testing.assert_close(attn, torch.stack(ref.attentions, dim=1), **TOL[dtype])
    assert ours.num_params() == hf.num_parameters() == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("dtype", DTYPES)
def test_our_weights_load_into_hf_gpt2(dtype):
    ours = tiny_gpt(dtype, seed=3)
    hf = tiny_hf(dtype, seed=4)
    hf.load_state_dict(G.to_hf_gpt2_state_dict(ours.state_dict()), strict=True)
    x = ids(2, 9, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x), **TOL[dtype])
    back = G.from_hf_gpt2_state_dict(G.to_hf_gpt2_state_dict(ours.state_dict()))
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_generation_matches_hf(dtype):
    ours, hf = generating_gpt(dtype)
    prompt = ids(3, 5, seed=1)
    expected = hf.generate(prompt, do_sample=False, max_new_tokens=20, pad_token_id=0)
    assert expected.shape == (3, 25)
    new = expected[:, 5:]
    assert all(len(set(row.tolist())) >= 5 for row in new) and (new[0] != new[1]).sum() > 5  # varied output
    for use_cache in (True, False):
        assert torch.equal(G.generate(ours, prompt, 20, greedy=True, use_cache=use_cache), expected)
    assert torch.equal(G.generate(ours, prompt, 20, temperature=0), expected)  # temperature 0 = greedy


# ---------------------------------------------------------------------------------------------- the model

def test_causality():
    m = tiny_gpt(seed=1)
    x = ids(2, 12, seed=2)
    with torch.no_grad():
        logits = m(x)
        for t in range(x.shape[1] - 1):  # changing tokens after t never changes the logits at 0..t
            changed = x.clone()
            changed[:, t + 1:] = (changed[:, t + 1:] + 1 + t) % V
            again = m(changed)
            torch.testing.assert_close(again[:, :t + 1], logits[:, :t + 1], atol=1e-12, rtol=0)
            assert not torch.allclose(again[:, t + 1:], logits[:, t + 1:])


def test_tied_head_init_and_num_params():
    torch.manual_seed(0)
    m = G.GPT(tiny_config(n_embd=64, n_head=4, n_layer=4, vocab_size=500, block_size=64))
    assert m.lm_head.weight is m.transformer.wte.weight
    assert "lm_head.weight" in m.state_dict()  # the checkpoint key GPT-2 has, the same tensor
    for name, p in m.named_parameters():
        if name.endswith(("attn.out_proj.weight", "mlp.c_proj.weight")):  # residual projections
            assert p.std().item() == pytest.approx(0.02 / (2 * 4) ** 0.5, rel=0.1), name
        elif name.endswith(("wte.weight", "wpe.weight", "in_proj.weight", "c_fc.weight")):
            assert p.std().item() == pytest.approx(0.02, rel=0.1), name
        elif "ln_" in name and name.endswith("weight"):
            assert (p == 1).all(), name
        else:
            assert name.endswith("bias") and (p == 0).all(), name
    tables = (500 + 64) * 64  # wte (shared with the head) and wpe
    per_block = 2 * 2 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64)
    assert m.num_params() == tables + 4 * per_block + 2 * 64
    assert m.num_params(non_embedding=True) == m.num_params() - 64 * 64


def test_every_parameter_gets_a_gradient():
    m = tiny_gpt(torch.float32, dropout=0.1).train()
    x = ids(3, 10, seed=3)
    logits, loss = m(x[:, :-1], targets=x[:, 1:])
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    ignored = x[:, 1:].clone()
    ignored[0] = -100  # positions to ignore
    m.eval()
    _, partial = m(x[:, :-1], targets=ignored)
    torch.testing.assert_close(partial, m.loss(m(x[1:, :-1]), x[1:, 1:]))


def test_without_biases():
    m = tiny_gpt(bias=False, seed=4)
    assert not [n for n, _ in m.named_parameters() if n.endswith("bias")]
    biases = (2 * C + 3 * C + C + 4 * C + C) * L + C  # per block ln_1, ln_2, in_proj, out_proj, c_fc, c_proj; ln_f
    assert m.num_params() == tiny_gpt().num_params() - biases
    x = ids(2, 7, seed=6)
    with torch.no_grad():
        logits, _ = m.forward_cached(x)
        torch.testing.assert_close(logits, m(x), **TOL[torch.float64])
    with pytest.raises(KeyError, match=r"missing keys \[.*'transformer.h.0.attn.in_proj.bias'"):
        G.to_hf_gpt2_state_dict(m.state_dict())


# ---------------------------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("dtype", DTYPES)
def test_kv_cache_gives_the_logits_of_the_full_pass(dtype):
    m = tiny_gpt(dtype, seed=5)
    x = ids(3, 11, seed=4)
    with torch.no_grad():
        full = m(x)
        cache, pieces, start = None, [], 0
        for n in (4, 1, 3, 1, 2):  # a prompt, then single tokens and chunks
            logits, new = m.forward_cached(x[:, start:start + n], cache)
            if cache is not None:
                assert cache[0][0].shape[2] == start  # the input cache is not modified
            cache, start = new, start + n
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL[dtype])
    assert len(cache) == L and all(k.shape == v.shape == (3, H, 11, C // H) for k, v in cache)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kv_cache_equals_hf_past_key_values(dtype):
    """The cache forward_cached returns (EncoderLayer's past_kv path) holds exactly the keys and values Hugging
    Face's GPT-2 caches (past_key_values), layer by layer, after a prompt and after one more token."""
    hf = tiny_hf(dtype, seed=2)
    m = G.GPT.from_hf(hf)
    x = ids(2, 9, seed=5)
    with torch.no_grad():
        _, ours = m.forward_cached(x[:, :8])
        logits, ours = m.forward_cached(x[:, 8:], ours)
        out = hf(x[:, :8], use_cache=True)
        out = hf(x[:, 8:], past_key_values=out.past_key_values, use_cache=True)
    torch.testing.assert_close(logits, out.logits, **TOL[dtype])
    for (k, v), layer in zip(ours, out.past_key_values.layers, strict=True):
        assert k.shape == (2, H, 9, C // H)
        torch.testing.assert_close(k, layer.keys, **TOL[dtype])
        torch.testing.assert_close(v, layer.values, **TOL[dtype])


def test_forward_cached_runs_the_blocks_own_attention(monkeypatch):
    """No second copy of the attention flow: every cached step goes through MultiHeadAttention.forward with
    the layer's past keys and values."""
    m = tiny_gpt(seed=6)
    calls = []
    forward = G.MultiHeadAttention.forward
    monkeypatch.setattr(G.MultiHeadAttention, "forward",
                        lambda self, *a, **k: calls.append(k.get("past_kv") is not None) or forward(self, *a, **k))
    _, cache = m.forward_cached(ids(1, 4))
    m.forward_cached(ids(1, 1), cache)
    assert calls == [False] * L + [True] * L


@pytest.mark.parametrize("dtype", DTYPES)
def test_generation_with_and_without_cache_is_identical(dtype, monkeypatch):
    """Greedy and sampled (fixed seed), within the context window and past it (45 tokens > block_size 32),
    where the window slides and both modes rerun it. The spy proves the cache is used until then."""
    m, _ = generating_gpt(dtype)
    prompt = ids(2, 5, seed=7)
    full_passes = []
    forward = G.GPT.forward
    monkeypatch.setattr(G.GPT, "forward", lambda self, *a, **k: full_passes.append(1) or forward(self, *a, **k))
    for kw in (dict(greedy=True), dict(temperature=0.8, top_k=20, top_p=0.9), dict(temperature=1.5)):
        runs = {}
        for use_cache in (True, False):
            full_passes.clear()
            g = torch.Generator().manual_seed(3)
            runs[use_cache] = G.generate(m, prompt, 40, generator=g, use_cache=use_cache, **kw)
            # without the cache every step is a full pass; with it only those past the window (lengths 33..44)
            assert len(full_passes) == (12 if use_cache else 40)
        assert runs[True].shape == (2, 45) and torch.equal(runs[True][:, :5], prompt)
        assert torch.equal(runs[True], runs[False]), kw
    again = G.generate(m, prompt, 40, temperature=1.5, generator=torch.Generator().manual_seed(3))
    other = G.generate(m, prompt, 40, temperature=1.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(again, runs[True]) and not torch.equal(other, again)  # the seed decides
    single = G.generate(m, prompt[0], 4, greedy=True)  # a 1-D prompt gives a 1-D result
    assert single.shape == (9,)
    assert torch.equal(single, G.generate(m, prompt[:1], 4, greedy=True)[0])


# ---------------------------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("top_k, top_p", [(None, 0.9), (10, None), (10, 0.8), (None, 0.3), (3, 1.0)])
def test_top_k_top_p_equal_transformers_warpers(top_k, top_p):
    logits = 2 * torch.randn(4, V, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = logits
    if top_k is not None:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p is not None:
        expected = TopPLogitsWarper(top_p)(None, expected)
    got = G.top_k_top_p_filter(logits, top_k, top_p)
    assert torch.equal(got.isinf(), expected.isinf())
    assert 0 < (~got.isinf()).sum() < logits.numel()  # something kept, something dropped
    torch.testing.assert_close(got[~got.isinf()], logits[~got.isinf()], atol=0, rtol=0)
    assert (~G.top_k_top_p_filter(logits, top_p=1e-6).isinf()).sum(-1).tolist() == [1] * 4  # the top token stays


def test_sampling_follows_the_filtered_distribution():
    logits = torch.randn(1, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    draws = G._next_token(logits.expand(20000, 8), 0.7, 5, None, False, g)[:, 0]  # (20000,)
    freq = torch.bincount(draws, minlength=8).double() / 20000
    expected = G.top_k_top_p_filter(logits / 0.7, top_k=5)[0].softmax(-1)
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)
    assert (freq[expected == 0] == 0).all()


# ---------------------------------------------------------------------------------------------- converter, checkpoints

def test_converter_lists_missing_and_unknown_keys():
    sd = tiny_hf().state_dict()
    hub = {k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"}
    hub["h.0.attn.bias"] = torch.ones(1, 1, BLOCK, BLOCK)  # old checkpoints' causal-mask buffer
    converted = G.from_hf_gpt2_state_dict(hub)  # the Hub file's keys: no prefix, no head
    assert converted.keys() == G.GPT(tiny_config()).state_dict().keys()
    assert converted["lm_head.weight"] is converted["transformer.wte.weight"]
    assert torch.equal(converted["transformer.h.1.mlp.c_fc.weight"], sd["transformer.h.1.mlp.c_fc.weight"].t())
    missing = {k: v for k, v in sd.items() if k != "transformer.h.1.ln_2.bias"}
    with pytest.raises(KeyError, match=r"unknown keys \[\], missing keys \['transformer.h.1.ln_2.bias'\]"):
        G.from_hf_gpt2_state_dict(missing)
    extra = {**sd, "transformer.h.0.attn.q_attn.weight": torch.zeros(C, C)}
    with pytest.raises(KeyError, match=r"unknown keys \['transformer.h.0.attn.q_attn.weight'\], missing keys \[\]"):
        G.from_hf_gpt2_state_dict(extra)
    untied = {**sd, "lm_head.weight": sd["lm_head.weight"] + 1}
    with pytest.raises(ValueError, match="lm_head.weight differs from transformer.wte.weight"):
        G.from_hf_gpt2_state_dict(untied)
    with pytest.raises(KeyError, match=r"to_hf_gpt2_state_dict: unknown keys \['extra'\]"):
        G.to_hf_gpt2_state_dict({**tiny_gpt().state_dict(), "extra": torch.zeros(1)})


def test_unsupported_hf_configs_are_rejected():
    with pytest.raises(ValueError, match=r"activation_function='relu' \(need GPT-2's tanh GELU"):
        G.GPT.from_hf(tiny_hf(activation_function="relu"))
    with pytest.raises(ValueError, match="attention scaling other than 1/sqrt"):
        G.config_from_hf(GPT2Config(scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match=r"n_inner=24 \(need 4 \* n_embd = 64\)"):
        G.config_from_hf(GPT2Config(n_embd=16, n_inner=24))
    config = G.config_from_hf(GPT2Config(), dropout=0.1)  # GPT-2 small
    assert config == G.GPTConfig(dropout=0.1)


def test_checkpoint_round_trip_and_mismatched_keys(tmp_path):
    m = tiny_gpt(torch.float32, seed=6)
    path = save_checkpoint(tmp_path / "gpt.safetensors", m)
    fresh = G.GPT(tiny_config())
    load_checkpoint(path, fresh)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight  # still tied after loading
    x = ids(2, 6)
    torch.testing.assert_close(fresh(x), m(x), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match=r"key\(s\) missing from the checkpoint: transformer\.h\.2\.ln_1\.weight"):
        load_checkpoint(path, G.GPT(tiny_config(n_layer=3)))
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) in the checkpoint: transformer\.h\.1\."):
        load_checkpoint(path, G.GPT(tiny_config(n_layer=1)))


# ---------------------------------------------------------------------------------------------- pretrained weights

def test_from_pretrained_offline_fails_fast_and_clearly(tmp_path):
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"could not load 'gpt2': offline mode is on .* Check the name .* and the "
                                      "internet connection") as info:
        G.GPT.from_pretrained("gpt2", cache_dir=tmp_path, local_files_only=True)
    assert time.perf_counter() - start < 5
    assert isinstance(info.value.__cause__, OSError)  # transformers' own error is chained


def test_from_pretrained_through_transformers(monkeypatch):
    """The online path without the network: transformers' loader is replaced by one returning a tiny model."""
    hf = tiny_hf(seed=8)
    asked = []
    monkeypatch.setattr(G, "reachable", lambda url, timeout=3.0: True)  # pretend to be online
    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained",
                        lambda name, **kw: asked.append((name, kw["local_files_only"])) or hf)
    m = G.GPT.from_pretrained("gpt2-medium", dropout=0.1)
    assert asked == [("gpt2-medium", False)] and m.config.dropout == 0.1 and m.config.block_size == BLOCK
    x = ids(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), hf(x).logits, **TOL[torch.float64])

    def unreachable(name, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(OSError, match="could not load 'gpt2': the Hugging Face Hub could not be reached"):
        G.GPT.from_pretrained("gpt2")


def test_from_pretrained_unreachable_hub_reads_the_cache_only(monkeypatch):
    """Offline without HF_HUB_OFFLINE: one quick connection test, then the cache only (no 30 s of retries)."""
    asked = []

    def cache_only(name, **kw):
        asked.append(kw["local_files_only"])
        raise OSError("Cannot find the requested files in the local cache")
    monkeypatch.setattr(G, "reachable", lambda url, timeout=3.0: False)
    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", cache_only)
    with pytest.raises(OSError, match=r"could not load 'gpt2': https://huggingface.co is not reachable from this "
                                      r"machine and the weights are not in the local cache"):
        G.GPT.from_pretrained("gpt2")
    assert asked == [True]


# ---------------------------------------------------------------------------------------------- bad input

def test_bad_config():
    with pytest.raises(ValueError, match="n_embd=30 is not divisible by n_head=4"):
        tiny_config(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="block_size must be a positive int, got 0"):
        tiny_config(block_size=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        tiny_config(dropout=1.0)
    with pytest.raises(ValueError, match="eps must be > 0"):
        tiny_config(eps=0.0)
    with pytest.raises(TypeError, match="GPT takes a GPTConfig, got dict"):
        G.GPT(dict(vocab_size=V))


def test_bad_model_input():
    m = tiny_gpt()
    with pytest.raises(ValueError, match=r"idx is empty \(T=0\); give at least one token id"):
        m(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"idx has 33 tokens, more than the context window block_size=32; keep the "
                                         r"last 32 \(idx\[:, -32:\]\)"):
        m(ids(1, 33))
    with pytest.raises(ValueError, match=r"token ids outside the vocabulary \[0, 50\): min 0, max 50"):
        m(torch.tensor([[0, 50]]))
    with pytest.raises(ValueError, match=r"idx must be a \(B, T\) tensor of int64 token ids, got shape \(4,\)"):
        m(ids(4))
    with pytest.raises(ValueError, match="int64 token ids, got shape .*torch.float32"):
        m(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"targets must be an int64 tensor of the input's shape \(B, T\) = \(2, 5\)"):
        m(ids(2, 5), targets=ids(2, 4))
    with pytest.raises(ValueError, match=r"targets hold ids outside the vocabulary \[0, 50\) .*: \[-1, 77\]"):
        m(ids(1, 3), targets=torch.tensor([[-1, 77, -100]]))
    _, cache = m.forward_cached(ids(1, 30))
    with pytest.raises(ValueError, match="the KV cache holds 30 tokens and idx adds 3: positions up to 32 do not fit "
                                         "the context window block_size=32"):
        m.forward_cached(ids(1, 3), cache)
    with pytest.raises(ValueError, match="cache must be a list of 2 .* got a list of length 1"):
        m.forward_cached(ids(1, 1), cache[:1])
    with pytest.raises(ValueError, match="the cache holds a batch of 1 sequences but idx has B=2"):
        m.forward_cached(ids(2, 1), cache)


def test_bad_generate_input():
    m = tiny_gpt()
    with pytest.raises(ValueError, match=r"prompt is empty \(T=0\)"):
        G.generate(m, torch.zeros(0, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="prompt has 40 tokens, more than the context window block_size=32"):
        G.generate(m, ids(1, 40), 5)
    with pytest.raises(ValueError, match=r"prompt has token ids outside the vocabulary \[0, 50\): min -3"):
        G.generate(m, torch.tensor([[-3, 4]]), 5)
    for kw, match in [(dict(max_new_tokens=-1), "max_new_tokens must be an int ≥ 0, got -1"),
                      (dict(temperature=-0.5), r"temperature must be ≥ 0 \(0 = greedy\), got -0.5"),
                      (dict(top_k=0), r"top_k must be an int in \[1, 50\] or None, got 0"),
                      (dict(top_k=51), "top_k must be an int in .* got 51"),
                      (dict(top_p=0.0), r"top_p must be in \(0, 1\] or None, got 0.0"),
                      (dict(top_p=1.5), "top_p must be .* got 1.5")]:
        with pytest.raises(ValueError, match=match):
            G.generate(m, ids(1, 3), **{"max_new_tokens": 2, **kw})
    with pytest.raises(TypeError, match="generate: model must be a GPT, got Linear"):
        G.generate(torch.nn.Linear(2, 2), ids(1, 3), 2)
    m.train()
    assert G.generate(m, ids(1, 3), 0).shape == (1, 3) and m.training  # nothing to add; the mode is restored


# ---------------------------------------------------------------------------------------------- training recipes

def test_train_gpt_runs_a_recipe_reproducibly():
    recipe = G.Recipe(n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=4, lr=3e-3, min_lr=3e-4, warmup=2,
                      max_steps=6, eval_every=3)
    data = torch.randint(0, 11, (300,), generator=torch.Generator().manual_seed(0))
    runs = [G.train_gpt(recipe, data[:200], data[200:], vocab_size=11, val_windows=10) for _ in range(2)]
    (m1, h1), (m2, h2) = runs
    assert h1.steps == 6 and [r.step for r in h1.eval] == [0, 3, 6]
    assert [r.metrics["val_loss"] for r in h1.eval] == [r.metrics["val_loss"] for r in h2.eval]
    torch.testing.assert_close(m1.state_dict(), m2.state_dict(), rtol=0, atol=0)
    assert m1.config.block_size == 8 and m1.config.vocab_size == 11 and recipe.tokens_per_step() == 32
    with pytest.raises(ValueError, match=r"train_gpt: val_ids must be a 1-D int64 tensor of more than block_size=8"):
        G.train_gpt(recipe, data, data[:5], vocab_size=11)
    with pytest.raises(ValueError, match="validation_windows: a window starting at 95 does not fit 100"):
        G.train_gpt(recipe, data, data[:100], vocab_size=11, val_starts=torch.tensor([0, 95]))
    with pytest.raises(TypeError, match="train_gpt takes a Recipe"):
        G.train_gpt(G.GPTConfig(), data, data, vocab_size=11)


def test_evaluate_lm_reads_a_gpt():
    from utils.rnn import evaluate_lm
    model = G.GPT(tiny_config()).double().eval()
    data = ids(1, 41)[0]  # 40 targets: 5 windows of 8
    x, y = data[:40].view(5, 8), data[1:41].view(5, 8)
    with torch.no_grad():
        expected = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    assert abs(evaluate_lm(model, data, block_size=8, batch_size=2) - expected) < 1e-5  # it sums in float32
