"""utils.clip and utils.text.CLIPTokenizer: CLIP equals open_clip (ViT and ModifiedResNet towers, OpenAI's
keys loaded strict=True both ways with no conversion) and Hugging Face's CLIPModel (through the converter),
the tokenizer gives open_clip's ids, build_model reads every size off a state dict, the loss is the
symmetric cross-entropy, and bad input fails clearly. All offline, tiny configs, scrambled weights."""
from __future__ import annotations

import gzip
import math
import time

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPConfig as HFCLIPConfig
from transformers import CLIPModel

from utils import clip as C
from utils.text import CLIPTokenizer, clip_byte_order
from utils.train import load_checkpoint, save_checkpoint
from weights import scramble_

TOL = {torch.float64: dict(atol=1e-10, rtol=0), torch.float32: dict(atol=1e-5, rtol=1e-5)}
DTYPES = [torch.float64, torch.float32]
V, CTX, E = 60, 12, 16  # vocabulary, context, embedding of the tiny models; V - 1 is their end-of-text id
TEXT = dict(context_length=CTX, vocab_size=V, width=32, heads=4, layers=2)  # open_clip's text_cfg: heads 8 wide
VIT = dict(layers=2, width=32, head_width=8, patch_size=8, image_size=32)  # open_clip's vision_cfg (a ViT)
RESNET = dict(layers=(1, 2, 1, 1), width=8, head_width=16, image_size=64)  # a ModifiedResNet, 2×2 final map
TOWERS = {"vit": (VIT, 8), "resnet": (RESNET, 16)}  # vision_cfg, the image tower's head width

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- helpers

def scramble_all_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """scramble_ every parameter; give BatchNorm running statistics distinct values too (they are buffers), and
    scale convolutions by fan_in^-½ so that a scrambled ResNet's activations stay near unit size."""
    scramble_(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.5 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(2 * m.weight[0].numel() ** -0.5)
    return model


def tiny_open_clip(tower: str, dtype=torch.float64, seed=0, quick_gelu=True) -> open_clip.CLIP:
    model = open_clip.CLIP(E, TOWERS[tower][0], TEXT, quick_gelu=quick_gelu)
    return scramble_all_(model, seed).to(dtype).eval()


def tiny_config(tower: str, **kw) -> C.CLIPConfig:
    vision = {k: v for k, v in TOWERS[tower][0].items()}
    return C.CLIPConfig(embed_dim=E, vision=vision,
                        text=dict(context_length=CTX, vocab_size=V, width=32, layers=2, head_width=8), **kw)


def tiny_clip(tower: str, dtype=torch.float64, seed=0) -> C.CLIP:
    return scramble_all_(C.CLIP(tiny_config(tower)), seed).to(dtype).eval()


def token_ids(B: int, seed: int, lengths: list[int] | None = None) -> torch.Tensor:
    """(B, CTX) ids as a tokenizer frames them: random tokens below V - 1, the end token V - 1, zeros after."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V - 1, (B, CTX), generator=g)
    for i, n in enumerate(lengths or torch.randint(2, CTX + 1, (B,), generator=g).tolist()):
        x[i, n - 1] = V - 1
        x[i, n:] = 0
    return x


def images(B: int, tower: str, seed: int, dtype=torch.float64) -> torch.Tensor:
    S = TOWERS[tower][0]["image_size"]
    return torch.randn(B, 3, S, S, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def assert_same_state(a: dict, b: dict, ordered: bool = True) -> None:
    assert list(a) == list(b) if ordered else sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------- equal to open_clip

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tower", ["vit", "resnet"])
def test_matches_open_clip_with_openai_keys(tower, dtype):
    ref = tiny_open_clip(tower, dtype)
    ours = C.CLIP(tiny_config(tower)).to(dtype).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # OpenAI's keys, no conversion
    assert_same_state(ours.state_dict(), ref.state_dict())  # and ours writes the same keys, in the same order
    x, ids = images(3, tower, seed=1, dtype=dtype), token_ids(4, seed=2)
    with torch.no_grad():
        image_features, text_features, scale = ref(x, ids)  # open_clip returns normalised features
        torch.testing.assert_close(ours.encode_image(x), ref.encode_image(x), **TOL[dtype])
        torch.testing.assert_close(ours.encode_text(ids), ref.encode_text(ids), **TOL[dtype])
        torch.testing.assert_close(ours.encode_image(x, normalize=True), image_features, **TOL[dtype])
        logits_per_image, logits_per_text = ours(x, ids)
        torch.testing.assert_close(logits_per_image, scale * image_features @ text_features.t(), **TOL[dtype])
        torch.testing.assert_close(logits_per_text, logits_per_image.t(), atol=0, rtol=0)
        # the explicit attention path (return_attn) gives the same features
        features, attn = ours.encode_text(ids, return_attn=True)
        torch.testing.assert_close(features, ref.encode_text(ids), **TOL[dtype])
        assert attn.shape == (4, 2, 4, CTX, CTX) and (attn.triu(diagonal=1) == 0).all()  # causal
        features, attn = ours.encode_image(x, return_attn=True)
        torch.testing.assert_close(features, ref.encode_image(x), **TOL[dtype])
        N1 = 17 if tower == "vit" else 5  # 4×4 patches or the 2×2 map, plus the class / mean token
        assert attn.shape == ((3, 2, 4, N1, N1) if tower == "vit" else (3, 16, N1))  # the pool: 256 wide, 16 heads
        torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)), **TOL[dtype])
    # and back: our state dict loads into open_clip strict=True
    again = tiny_open_clip(tower, dtype, seed=7)
    again.load_state_dict(tiny_clip(tower, dtype, seed=3).state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_text(ids), tiny_clip(tower, dtype, seed=3).encode_text(ids),
                                   **TOL[dtype])


def test_resnet_in_training_mode_matches_open_clip():
    """BatchNorm on batch statistics, and the running statistics it updates, equal open_clip's."""
    ref, ours = tiny_open_clip("resnet").train(), C.CLIP(tiny_config("resnet")).double()
    ours.load_state_dict(ref.state_dict())
    ours.train()
    x = images(4, "resnet", seed=5)
    torch.testing.assert_close(ours.encode_image(x), ref.encode_image(x), **TOL[torch.float64])
    running = {k: v for k, v in ours.state_dict().items() if "running" in k}
    assert running and all(not torch.equal(v, tiny_open_clip("resnet").state_dict()[k]) for k, v in running.items())
    for k, v in running.items():  # updated from the batch, as open_clip's were
        torch.testing.assert_close(v, ref.state_dict()[k], **TOL[torch.float64])


def test_exact_gelu_variant_matches_open_clip():
    """activation="gelu" is open_clip's non-quickgelu CLIP; QuickGELU gives different features from the same weights."""
    ref = tiny_open_clip("vit", quick_gelu=False)
    ours = C.CLIP(tiny_config("vit", activation="gelu")).double().eval()
    ours.load_state_dict(ref.state_dict())
    x, ids = images(2, "vit", seed=3), token_ids(3, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(x), ref.encode_image(x), **TOL[torch.float64])
        torch.testing.assert_close(ours.encode_text(ids), ref.encode_text(ids), **TOL[torch.float64])
        quick = C.build_model(ref.state_dict(), head_width=8).double()
        assert (quick.encode_text(ids) - ref.encode_text(ids)).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- equal to HF CLIPModel

def tiny_hf(dtype=torch.float64, seed=0, eos_token_id=V - 1) -> CLIPModel:
    """HF pools text at the first `eos_token_id` (or, with the legacy eos_token_id=2, at the argmax of the ids,
    OpenAI's rule); our ids hold V - 1 once, as the largest id, so both rules pick the same position."""
    text = dict(vocab_size=V, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=CTX, eos_token_id=eos_token_id, bos_token_id=V - 2, pad_token_id=0,
                hidden_act="quick_gelu", layer_norm_eps=1e-5)
    vision = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    model = CLIPModel(HFCLIPConfig(text_config=text, vision_config=vision, projection_dim=E))
    return scramble_(model, seed).to(dtype).eval()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eos_token_id", [V - 1, 2])
def test_vit_clip_matches_hf_clipmodel(dtype, eos_token_id):
    hf = tiny_hf(dtype, eos_token_id=eos_token_id)
    ours = C.build_model(C.from_hf_clip_state_dict(hf.state_dict()), head_width=8).to(dtype)
    x, ids = images(3, "vit", seed=1, dtype=dtype), token_ids(4, seed=2, lengths=[3, CTX, 7, 2])
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=x)
        image_features = hf.get_image_features(pixel_values=x).pooler_output  # projected, not normalised
        text_features = hf.get_text_features(input_ids=ids).pooler_output
        torch.testing.assert_close(ours.encode_image(x), image_features, **TOL[dtype])
        torch.testing.assert_close(ours.encode_text(ids), text_features, **TOL[dtype])
        logits_per_image, logits_per_text = ours(x, ids)
        torch.testing.assert_close(logits_per_image, out.logits_per_image, **TOL[dtype])
        torch.testing.assert_close(logits_per_text, out.logits_per_text, **TOL[dtype])
    # and back: our weights load into HF strict=True through the inverse table
    other = tiny_clip("vit", dtype, seed=4)
    hf.load_state_dict(C.to_hf_clip_state_dict(other.state_dict()), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(hf.get_text_features(input_ids=ids).pooler_output, other.encode_text(ids),
                                   **TOL[dtype])
    assert_same_state(C.from_hf_clip_state_dict(C.to_hf_clip_state_dict(other.state_dict())), other.state_dict(),
                      ordered=False)


def test_hf_converter_rejects_what_it_cannot_place():
    sd = tiny_hf().state_dict()
    with pytest.raises(KeyError, match=r"no place in OpenAI.s CLIP: \[.text_model.encoder.layers.0.extra.weight.\]"):
        C.from_hf_clip_state_dict({**sd, "text_model.encoder.layers.0.extra.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="has a ViT image tower only; this state dict has no visual.proj"):
        C.to_hf_clip_state_dict(tiny_clip("resnet").state_dict())
    assert "text_model.embeddings.position_ids" not in C.from_hf_clip_state_dict(
        {**sd, "text_model.embeddings.position_ids": torch.arange(CTX)[None]})


# ---------------------------------------------------------------------------------------------- the tokenizer

@pytest.fixture(scope="module")
def tokenizers() -> tuple[CLIPTokenizer, SimpleTokenizer]:
    return CLIPTokenizer(), SimpleTokenizer()


TEXTS = [
    "a photo of a cat", "A Photo Of A CAT.", "", "   ", "Hello,   world!!!  ...",
    "it's 2021; I'll pay $3.50 (or 4,000€)", "they're / we've / you'd / she'll / I'm", "Ünïcödé café naïve façade",
    "東京タワー の 写真", "a 🐈‍⬛ and a 🐕‍🦺 🇫🇷", "Ελληνικά και русский текст", "x² + y² = z², ½ and Ⅻ",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp", "A &amp; B &lt;3 &#39;",
    "schÃ¶n (mojibake)", "\x00\x07 control bytes", "snake_case-and-kebab-case", "a<end_of_text>b", "hi!<start_of_text>",
    "<START_OF_TEXT>shout", "e-mail: someone@example.com, url https://example.org/a?b=c#d", "1234567890" * 3,
    "supercalifragilisticexpialidocious antidisestablishmentarianism", "'quoted' \"double\" `back`", "a" * 60,
    "the red circle is on the left of the big blue square " * 10,
]


def test_tokenizer_gives_open_clips_ids(tokenizers):
    ours, ref = tokenizers
    assert ours.vocab_size == len(ref.encoder) == 49408
    assert (ours.sot_token_id, ours.eot_token_id) == (ref.sot_token_id, ref.eot_token_id) == (49406, 49407)
    for text in TEXTS:
        assert ours.encode(text) == ref.encode(text), text
    assert torch.equal(ours(TEXTS), ref(TEXTS))
    assert torch.equal(ours(TEXTS), open_clip.tokenize(TEXTS))
    assert torch.equal(ours(TEXTS, context_length=8), ref(TEXTS, context_length=8))  # truncated, end token last
    assert torch.equal(ours("a photo of a dog"), open_clip.get_tokenizer("ViT-B-32-quickgelu")("a photo of a dog"))
    for text in TEXTS[:12]:
        assert ours.decode(ours.encode(text)) == ref.decode(ref.encode(text)), text


def test_tokenizer_on_random_unicode_matches_open_clip(tokenizers):
    """Random strings over letters, digits, punctuation, spaces, accents, CJK, emoji and control characters."""
    ours, ref = tokenizers
    alphabet = list("abcXYZ019 .,;'!?-_\t\n") + ["é", "ß", "東", "語", "🐈", "\u0301", "\x00", "'s", "'ll", "&amp;"]
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        picks = torch.randint(0, len(alphabet), (int(torch.randint(1, 30, (1,), generator=g)),), generator=g)
        text = "".join(alphabet[i] for i in picks)
        assert ours.encode(text) == ref.encode(text), repr(text)


def test_tokenizer_vocabulary_layout(tokenizers):
    """Ids 0..255 are bytes in GPT-2's printable order, 256..511 the same bytes word-final (`</w>`), then merges."""
    ours, ref = tokenizers
    order = clip_byte_order()
    assert sorted(order) == list(range(256)) and order[:3] == (ord("!"), ord('"'), ord("#"))
    assert ref.decoder[0] == "!" and ref.decoder[256] == "!</w>" and ref.decoder[511].endswith("</w>")
    assert ours.decode([0, 256]) == "!! " and ours.decode([ref.encoder["cat</w>"]]) == "cat "
    assert ours.encode("cat") == [ref.encoder["cat</w>"]] and ours.encode("category")[0] != ours.encode("cat")[0]
    assert ours.encode("2021") == [ref.encoder[d + "</w>"] for d in "2021"]  # one digit per word
    assert ours.decode(ours("a cat")[0, :4]) == "<start_of_text>a cat <end_of_text>"


def test_tokenizer_truncation_and_errors(tokenizers, tmp_path):
    ours, _ = tokenizers
    long = "a photo of " * 50  # 150 tokens
    ids = ours(long)
    assert ids.shape == (1, 77) and ids[0, 0] == ours.sot_token_id and ids[0, -1] == ours.eot_token_id
    assert ids[0, 1:76].tolist() == ours.encode(long)[:75]  # the first 75 tokens are kept
    assert torch.equal(ours(long, truncate=True), ids)
    with pytest.raises(ValueError, match=r"text 1 \('a photo of a photo of .*'\.\.\.\) needs 152 positions with its "
                                         r"start and end tokens, more than context_length=77; shorten it, or pass "
                                         "truncate=True"):
        ours(["short", long], truncate=False)
    assert ours(["exactly fits"], context_length=4, truncate=False).tolist() == [[49406, *ours.encode("exactly fits"),
                                                                                49407]]
    with pytest.raises(TypeError, match="encode needs a str, got bytes"):
        ours.encode(b"bytes")
    with pytest.raises(TypeError, match="takes a str or a sequence of str"):
        ours(["ok", 3])
    with pytest.raises(ValueError, match=r"context_length must be an int ≥ 2 \(room for the start and end tokens\), "
                                         "got 1"):
        ours("a", context_length=1)
    with pytest.raises(IndexError, match="token id 49408 is outside CLIP's vocabulary 0..49407"):
        ours.decode([49408])
    with pytest.raises(FileNotFoundError):
        CLIPTokenizer(tmp_path / "missing.txt.gz")
    corrupt = tmp_path / "corrupt.txt.gz"
    corrupt.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="is not a gzip-compressed UTF-8 merges file"):
        CLIPTokenizer(corrupt)
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress("version\ni n\nt h\n".encode()))
    with pytest.raises(ValueError, match="is not CLIP's merges file: it has 2 merge lines"):
        CLIPTokenizer(short)


# ---------------------------------------------------------------------------------------------- build_model

@pytest.mark.parametrize("tower", ["vit", "resnet"])
def test_build_model_reads_the_config_and_round_trips(tower):
    ref = tiny_open_clip(tower, torch.float32)
    sd = ref.state_dict()
    model = C.build_model({**sd, "input_resolution": torch.tensor(64), "context_length": torch.tensor(CTX),
                           "vocab_size": torch.tensor(V)}, head_width=TOWERS[tower][1], text_head_width=8)
    assert model.config == tiny_config(tower) and not model.training
    assert_same_state(model.state_dict(), sd)  # state_dict → model → state_dict: the same keys, order, tensors
    again = C.build_model(model.state_dict(), head_width=TOWERS[tower][1], text_head_width=8)
    assert_same_state(again.state_dict(), sd)


def test_small_configs_and_openai_shapes():
    for tower in ("vit", "resnet"):
        model = C.CLIP(C.CLIPConfig.small(tower))
        S = model.config.vision.image_size
        tok = CLIPTokenizer(context_length=model.config.text.context_length)
        with torch.no_grad():
            logits_per_image, _ = model(torch.randn(2, 3, S, S), tok(["a red circle", "a small blue square"]))
        assert logits_per_image.shape == (2, 2)
    # the sizes of OpenAI's ViT-B/32 and RN50, read back from state dicts of the right shapes (meta: no memory)
    for config in (C.CLIPConfig(), C.CLIPConfig(embed_dim=1024, vision=dict(layers=(3, 4, 6, 3), width=64))):
        with torch.device("meta"):
            sd = C.CLIP(config).state_dict()
        assert C.config_from_state_dict(sd) == config
    assert C.CLIPConfig().vision.heads == 12  # ViT-B/32: 768 / 64
    assert C.CLIPConfig(vision=dict(layers=(3, 4, 6, 3), width=64)).vision.heads == 32  # RN50's pool: 2048 / 64


def test_openai_attention_keys_and_checkpoints(tmp_path):
    model = tiny_clip("vit", torch.float32)
    sd = model.state_dict()
    assert "transformer.resblocks.0.attn.in_proj_weight" in sd
    assert "visual.transformer.resblocks.1.attn.in_proj_bias" in sd
    assert not [k for k in sd if "in_proj." in k]
    ours_names = {k.replace("in_proj_weight", "in_proj.weight").replace("in_proj_bias", "in_proj.bias"): v
                  for k, v in sd.items()}
    fresh = C.CLIP(tiny_config("vit"))
    fresh.load_state_dict(ours_names, strict=True)  # the book's own names load too
    assert_same_state(fresh.state_dict(), sd)
    path = save_checkpoint(tmp_path / "clip.safetensors", model)  # the book's checkpoints work unchanged
    fresh = C.CLIP(tiny_config("vit"))
    load_checkpoint(path, fresh)
    assert_same_state(fresh.state_dict(), sd)


# ---------------------------------------------------------------------------------------------- training pieces

@pytest.mark.parametrize("tower", ["vit", "resnet"])
def test_every_parameter_gets_a_gradient(tower):
    model = tiny_clip(tower, torch.float32).train()
    ids = token_ids(4, seed=1, lengths=[CTX, 5, 9, 3])  # one full-length text: every position embedding is used
    logits_per_image, logits_per_text = model(images(4, tower, seed=2, dtype=torch.float32), ids)
    C.clip_loss(logits_per_image, logits_per_text).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_loss_is_symmetric_cross_entropy_and_log_b_when_uniform():
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.arange(5)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(C.clip_loss(logits), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(C.clip_loss(logits, logits.t()), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(C.clip_loss(logits.t()), C.clip_loss(logits), atol=1e-12, rtol=0)  # symmetric
    assert C.clip_loss(logits) != pytest.approx(F.cross_entropy(logits, labels).item())  # both directions count
    for B in (1, 2, 7, 32):
        assert C.clip_loss(torch.full((B, B), 3.7, dtype=torch.float64)).item() == pytest.approx(math.log(B), abs=1e-12)
    perfect = 100 * torch.eye(4)
    assert C.clip_loss(perfect).item() < 1e-30
    with pytest.raises(ValueError, match=r"logits_per_image must be a square \(B, B\) matrix.* got \(2, 3\)"):
        C.clip_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"logits_per_text has shape \(3, 3\), expected \(2, 2\)"):
        C.clip_loss(torch.zeros(2, 2), torch.zeros(3, 3))


def test_logit_scale_starts_at_one_over_0_07_and_is_clamped_in_place():
    model = C.CLIP(tiny_config("vit")).double().eval()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    x, ids = images(2, "vit", seed=0), token_ids(2, seed=1)
    with torch.no_grad():
        cosine = model.encode_image(x, normalize=True) @ model.encode_text(ids, normalize=True).t()
        torch.testing.assert_close(model(x, ids)[0], cosine / 0.07, atol=0, rtol=1e-7)  # logit_scale is float32
        model.logit_scale.fill_(10.0)  # the forward pass uses exp(logit_scale) as it is, as OpenAI's model does
        torch.testing.assert_close(model(x, ids)[0], math.exp(10.0) * cosine, atol=0, rtol=1e-7)
    model.clamp_logit_scale_()  # what training calls after every optimizer step: into [0, ln 100]
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == 0.0
    with pytest.raises(ValueError, match=r"init_logit_scale must be finite and in \[0, ln 100"):
        tiny_config("vit", init_logit_scale=5.0)
    with pytest.raises(ValueError, match=r"init_logit_scale must be finite and in \[0, ln 100"):
        tiny_config("vit", init_logit_scale=-0.5)


def test_training_steps_equal_open_clips_with_the_temperature_clamped_after_the_step():
    """open_clip's training loop: loss on (image features, text features, exp(logit_scale)), optimizer step, then
    logit_scale.clamp_(0, ln 100) in place. utils.train.train with after_step=clamp_logit_scale_ gives the same
    parameters, step after step, also when a step takes the temperature out of range (random features make
    the loss want a smaller scale: started just above 0, every step pushes it below and the clamp pulls it back)."""
    from open_clip.loss import ClipLoss

    from utils.train import TrainConfig, train
    ref = tiny_open_clip("vit", torch.float64).train()
    ours = C.CLIP(tiny_config("vit")).double().train()
    ours.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        for model in (ref, ours):
            model.logit_scale.fill_(0.01)  # just above the lower bound, so a step crosses it
    x, ids = images(4, "vit", seed=1), token_ids(4, seed=2)
    steps, lr = 3, 0.05
    reference_loss = ClipLoss()
    optimizer = torch.optim.AdamW(ref.parameters(), lr=lr)
    crossed = []
    for _ in range(steps):
        image_features, text_features, scale = ref(x, ids)
        loss = reference_loss(image_features, text_features, scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        crossed.append(ref.logit_scale.item() < 0)
        with torch.no_grad():
            ref.logit_scale.clamp_(0, math.log(100))
    assert all(crossed)  # the temperature left [0, ln 100] at every step and was pulled back
    history = train(ours, [(x, ids)], lambda m, batch: C.clip_loss(*m(*batch)),
                    torch.optim.AdamW(ours.parameters(), lr=lr), TrainConfig(max_steps=steps, progress=False),
                    after_step=ours.clamp_logit_scale_)
    assert history.steps == steps
    for (name, p), q in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-10, rtol=0, msg=name)
    assert ours.logit_scale.item() == 0.0

def test_initialisation_follows_reset_parameters_docstring():
    """OpenAI's initialisation, checked the way test_gpt checks GPT's: loading reference weights overwrites it,
    so the reference-equivalence tests cannot see a mistake here (a bn3 that is not zeroed survived them)."""
    torch.manual_seed(0)
    width, layers = 64, 3
    config = C.CLIPConfig(embed_dim=E, vision=dict(RESNET, width=16),
                          text=dict(context_length=CTX, vocab_size=V, width=width, layers=layers, head_width=16))
    model = C.CLIP(config).eval()
    text_std = {"token_embedding.weight": 0.02, "positional_embedding": 0.01, "text_projection": width ** -0.5}
    branch = width ** -0.5 * (2 * layers) ** -0.5
    block_std = {"attn.in_proj.weight": width ** -0.5, "attn.out_proj.weight": branch,
                 "mlp.c_fc.weight": (2 * width) ** -0.5, "mlp.c_proj.weight": branch}
    for name, p in model.named_parameters():
        if name in text_std:
            assert p.std().item() == pytest.approx(text_std[name], rel=0.1), name
        elif name.startswith("transformer.") and name.endswith(tuple(block_std)):
            assert p.std().item() == pytest.approx(block_std[name.split(".", 3)[-1]], rel=0.1), name
        elif name.startswith("transformer.") and name.endswith(("attn.in_proj.bias", "attn.out_proj.bias")):
            assert (p == 0).all(), name
    pool = model.visual.attnpool
    for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
        assert proj.weight.std().item() == pytest.approx(pool.c_proj.in_features ** -0.5, rel=0.15)
    blocks = [m for m in model.visual.modules() if isinstance(m, C.Bottleneck)]
    assert blocks and all((b.bn3.weight == 0).all() for b in blocks)
    identity = next(b for b in blocks if b.downsample is None)  # a block without a downsampling shortcut
    x = torch.relu(torch.randn(2, identity.conv1.in_channels, 4, 4))  # a block's input comes out of a ReLU
    with torch.no_grad():
        torch.testing.assert_close(identity(x), x)  # each residual block starts as the identity
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_layernorm_computes_in_float32():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 3
    x[:, 5] = 300.0  # one large feature: x² overflows float16 (max 65504)
    ln = C.LayerNorm(64)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    for half in (torch.float16, torch.bfloat16):
        out = ln.to(half)(x.to(half))
        assert out.dtype == half
        expected = F.layer_norm(x.to(half).float(), (64,), ln.weight.float(), ln.bias.float(), ln.eps).to(half)
        assert torch.equal(out, expected)
        xh = x.to(torch.float16)  # the same LayerNorm written out in float16 loses the token entirely
        naive = (xh - xh.mean(-1, keepdim=True)) / ((xh - xh.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True).sqrt()
        assert (naive == 0).all() and out.isfinite().all()
    x64 = x.double()
    ln64 = ln.double()
    torch.testing.assert_close(ln64(x64), torch.nn.LayerNorm.forward(ln64, x64), atol=0, rtol=0)  # float64 kept
    model = C.CLIP(tiny_config("vit"))
    lns = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(lns) == (2 + 2 * 2) + (2 * 2 + 1) and all(type(m) is C.LayerNorm for m in lns)
    with torch.no_grad():
        bf16 = model.to(torch.bfloat16)(images(2, "vit", 0, torch.float32), token_ids(2, 0))[0]  # images cast to bf16
    assert bf16.dtype == torch.bfloat16 and bf16.isfinite().all()


def test_text_may_be_shorter_than_the_context():
    """Causal attention: the positions after a text's end token never change its features."""
    model = tiny_clip("vit")
    ids = token_ids(3, seed=0, lengths=[4, 6, 2])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids[:, :6]), model.encode_text(ids), atol=1e-12, rtol=0)
        padded = ids.clone()
        padded[0, 4:] = 17  # other tokens after the end token: the same features
        torch.testing.assert_close(model.encode_text(padded), model.encode_text(ids), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------- pretrained weights

def test_openai_models_table_matches_open_clips_registry():
    for name, repo in C.OPENAI_MODELS.items():
        cfg = open_clip.get_pretrained_cfg(name.replace("/", "-").replace("@336px", "-336"), "openai")
        assert cfg["hf_hub"].rstrip("/") == repo, name


def test_from_pretrained_offline_fails_fast_and_clearly(tmp_path, monkeypatch):
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"could not load 'ViT-B/32' \(timm/vit_base_patch32_clip_224.openai\): offline "
                                      "mode is on .* Connect to the internet"):
        C.CLIP.from_pretrained("ViT-B/32", cache_dir=tmp_path, local_files_only=True)
    monkeypatch.setattr(C, "reachable", lambda url, timeout=3.0: False)  # as on a machine with no network
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    with pytest.raises(OSError, match=r"could not load 'RN50' .*https://huggingface.co is not reachable from this "
                                      "machine and the weights are not in the local cache"):
        C.CLIP.from_pretrained("RN50", cache_dir=tmp_path)
    assert time.perf_counter() - start < 10
    with pytest.raises(ValueError, match=r"unknown model 'ViT-B-32'; OpenAI's CLIP models are \['RN101', 'RN50'"):
        C.CLIP.from_pretrained("ViT-B-32")


def test_from_pretrained_reads_a_downloaded_file(tmp_path, monkeypatch):
    """The online path without the network: the Hub download returns a file made here, in open_clip's format,
    of a tiny ModifiedResNet CLIP with OpenAI's 64-wide heads (which from_pretrained assumes)."""
    import huggingface_hub
    from safetensors.torch import save_file
    ref = open_clip.CLIP(E, dict(layers=(1, 1, 1, 1), width=8, head_width=64, image_size=64),
                         dict(context_length=CTX, vocab_size=V, width=64, heads=1, layers=1), quick_gelu=True)
    ref = scramble_all_(ref, seed=2).eval()
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    asked = []

    def fake_download(repo, filename, cache_dir=None, local_files_only=False):
        asked.append((repo, filename, local_files_only))
        return str(path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(C, "reachable", lambda url, timeout=3.0: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = C.CLIP.from_pretrained("RN50", cache_dir=tmp_path)
    assert asked == [("timm/resnet50_clip.openai", "open_clip_model.safetensors", False)]  # safetensors first
    assert model.dtype == torch.float32 and not model.training
    assert_same_state(model.state_dict(), ref.state_dict())
    x, ids = images(2, "resnet", seed=0, dtype=torch.float32), token_ids(2, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), ref.encode_image(x), **TOL[torch.float32])
        torch.testing.assert_close(model.encode_text(ids), ref.encode_text(ids), **TOL[torch.float32])


# ---------------------------------------------------------------------------------------------- bad input

def test_bad_images_and_text():
    vit, resnet = tiny_clip("vit"), tiny_clip("resnet")
    with pytest.raises(ValueError, match=r"expected 32×32 images, got 64×64; the position embedding has 17 rows"):
        vit.encode_image(torch.zeros(1, 3, 64, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"ModifiedResNet: expected 64×64 images, got 96×96; the attention pool's "
                                         r"position embedding has \(64/32\)² \+ 1 = 5 rows"):
        resnet.encode_image(torch.zeros(1, 3, 96, 96, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"ModifiedResNet: images must be a float tensor \(B, 3, 64, 64\), got shape "
                                         r"\(3, 64, 64\)"):
        resnet.encode_image(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="encode_image: images must be a float tensor"):
        vit.encode_image(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"the ids have 13 positions, but this model reads 1 to context_length=12 .* "
                                         r"CLIPTokenizer\(context_length=12\), which truncates"):
        vit.encode_text(torch.zeros(2, CTX + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 60\), got min 0, max 60"):
        vit.encode_text(torch.tensor([[0, V]]))
    with pytest.raises(ValueError, match=r"text must be int64 \(or int32\) token ids of shape \(B, T\)"):
        vit.encode_text(torch.zeros(2, 5))
    with torch.no_grad():  # int32 ids, as OpenAI's clip.tokenize returned them, work too
        torch.testing.assert_close(vit.encode_text(token_ids(2, 0).int()), vit.encode_text(token_ids(2, 0)))
    with pytest.raises(ValueError, match=r"AttentionPool2d: expected a feature map \(B, 256, 2, 2\), got "
                                         r"\(1, 256, 3, 3\)"):
        resnet.visual.attnpool(torch.zeros(1, 256, 3, 3, dtype=torch.float64))


def test_state_dict_of_another_architecture_names_the_keys():
    vit = C.CLIP(tiny_config("vit"))
    with pytest.raises(RuntimeError, match=r"does not fit this model \(31 missing, 140 unexpected keys\)\. "
                                           r"First missing: \['visual.class_embedding', 'visual.positional_embedding', "
                                           r"'visual.proj', 'visual.ln_pre.weight', 'visual.ln_pre.bias'\]; first "
                                           r"unexpected: "
                                           r"\['visual.bn1.weight', 'visual.bn1.bias', .*\]\. The state dict has a "
                                           "ModifiedResNet image tower and this model a ViT; build the model from the "
                                           r"checkpoint itself with build_model\(state_dict\)"):
        vit.load_state_dict(tiny_clip("resnet").state_dict())
    deeper = C.CLIP(C.CLIPConfig(embed_dim=E, vision=VIT | dict(layers=3), text=tiny_config("vit").text))
    with pytest.raises(RuntimeError, match=r"\(12 missing, 0 unexpected keys\). First missing: "
                                           r"\['visual.transformer.resblocks.2.ln_1.weight'"):
        deeper.load_state_dict(vit.state_dict())
    with pytest.raises(RuntimeError, match="It looks like a Hugging Face CLIPModel's: convert it with "
                                           "from_hf_clip_state_dict"):
        vit.load_state_dict(tiny_hf().state_dict())
    with pytest.raises(KeyError, match=r"not an OpenAI CLIP state dict, missing \['token_embedding.weight', "
                                       r"'positional_embedding', .*\]; its first keys are \['transformer.wte.weight'"):
        C.build_model({"transformer.wte.weight": torch.zeros(3, 2), "transformer.wpe.weight": torch.zeros(3, 2)})
    with pytest.raises(KeyError, match="convert it with from_hf_clip_state_dict first"):
        C.build_model(tiny_hf().state_dict())


def test_bad_configs():
    with pytest.raises(ValueError, match="a ModifiedResNet shrinks images 32-fold, so image_size must be a multiple "
                                         "of 32, got 48"):
        C.CLIPVisionConfig(image_size=48, layers=(1, 1, 1, 1), width=8)
    with pytest.raises(ValueError, match=r"a ModifiedResNet has 4 stages, so layers must be 4 ints, got \(1, 1, 1\)"):
        C.CLIPVisionConfig(layers=(1, 1, 1))
    with pytest.raises(ValueError, match="image_size=30 is not divisible by patch_size=8"):
        C.CLIPVisionConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="width 48 is not divisible by head_width=64"):
        C.CLIPTextConfig(width=48)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        C.CLIPConfig(activation="swish")
    with pytest.raises(TypeError, match="CLIP takes a CLIPConfig, got dict"):
        C.CLIP(dict(embed_dim=8))
    with pytest.raises(ValueError, match="tower must be 'vit' or 'resnet'"):
        C.CLIPConfig.small("convnext")
