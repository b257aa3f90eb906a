"""utils.vit: patches by unfold + Linear equal the strided convolution; the VisionTransformer equals
Hugging Face's ViTModel / ViTForImageClassification, timm's VisionTransformer and (with CLIP's options)
open_clip's image tower, with the same scrambled weights; every parameter learns; shapes hold for several
image sizes; attention rollout is what the paper defines; bad input fails clearly."""
from __future__ import annotations

import re

import open_clip.transformer as oc
import pytest
import timm.models.vision_transformer as timm_vit
import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViTConfig as HFViTConfig
from transformers import ViTForImageClassification, ViTModel

from utils import vit as V
from weights import scramble_

TOL = {torch.float64: dict(atol=1e-10, rtol=0), torch.float32: dict(atol=1e-5, rtol=1e-5)}
DTYPES = [torch.float64, torch.float32]
S, P, C_IN, C, L, H, K = 12, 4, 3, 16, 2, 2, 5  # 3×3 grid of patches, T = 10 tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def images(B=3, channels=C_IN, size=S, dtype=torch.float64, seed=0, width=None):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, channels, size, width or size, generator=g, dtype=torch.float64).to(dtype)


def tiny(dtype=torch.float64, seed=0, **kw) -> V.VisionTransformer:
    config = V.ViTConfig(**{**dict(image_size=S, patch_size=P, in_channels=C_IN, width=C, layers=L, heads=H), **kw})
    return scramble_(V.VisionTransformer(config), seed).to(dtype).eval()


# ---------------------------------------------------------------------------------------------- patches

@pytest.mark.parametrize("channels, height, width, patch",
                         [(3, 12, 12, 4), (1, 8, 16, 2), (3, 10, 10, 5), (2, 6, 6, 6)])
def test_unfold_and_linear_equal_the_strided_convolution(channels, height, width, patch):
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, 7, kernel_size=patch, stride=patch).double()
    linear = nn.Linear(channels * patch * patch, 7).double()
    with torch.no_grad():
        linear.weight.copy_(V.conv_to_linear_weight(conv.weight))
        linear.bias.copy_(conv.bias)
    x = images(2, channels, height, width=width)
    expected = conv(x).flatten(2).transpose(1, 2)  # (B, N, C), patches row by row
    torch.testing.assert_close(linear(V.patchify(x, patch)), expected, atol=1e-12, rtol=0)
    assert torch.equal(V.linear_to_conv_weight(linear.weight, channels, patch), conv.weight)


def test_patchify_numbers_patches_row_by_row_and_flattens_channel_major():
    x = images(2, 3, 8, width=12)
    patches = V.patchify(x, 4)  # 2 rows × 3 columns of patches
    assert patches.shape == (2, 6, 3 * 4 * 4)
    for n in range(6):
        r, c = divmod(n, 3)
        assert torch.equal(patches[:, n], x[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4].flatten(1))


def test_patchify_rejects_bad_input():
    with pytest.raises(ValueError, match=r"image size 10×12 is not divisible by the patch size 4"):
        V.patchify(images(1, 3, 10, width=12), 4)
    with pytest.raises(ValueError, match=r"shape \(B, C_in, height, width\), got shape \(3, 8, 8\).*images\[None\]"):
        V.patchify(torch.zeros(3, 8, 8), 4)
    with pytest.raises(ValueError, match="patch_size must be a positive int, got 0"):
        V.patchify(images(), 0)
    with pytest.raises(ValueError, match=r"\(C, C_in·P·P\) = \(C, 48\).*got \(7, 16\)"):
        V.linear_to_conv_weight(torch.zeros(7, 16), 3, 4)
    with pytest.raises(ValueError, match=r"Conv2d weight of shape \(C, C_in, P, P\), got \(7, 48\)"):
        V.conv_to_linear_weight(torch.zeros(7, 48))


# ---------------------------------------------------------------------------------------------- equal to the references

def hf_config(**kw) -> HFViTConfig:
    return HFViTConfig(**{**dict(hidden_size=C, num_hidden_layers=L, num_attention_heads=H, intermediate_size=37,
                                 image_size=S, patch_size=P, num_channels=C_IN, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0, attn_implementation="sdpa"), **kw})


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_hf_vit_model(dtype):
    hf = scramble_(ViTModel(hf_config(), add_pooling_layer=False), 0).to(dtype).eval()
    ours = V.VisionTransformer(V.config_from_hf(hf.config)).to(dtype).eval()
    ours.load_state_dict(V.from_hf_vit_state_dict(hf.state_dict()), strict=True)
    assert ours.config.eps == 1e-12 and ours.config.mlp_width == 37 and ours.head is None and ours.proj is None
    x = images(dtype=dtype)
    with torch.no_grad():
        expected = hf(x).last_hidden_state  # (B, T, C)
        torch.testing.assert_close(ours.forward_features(x), expected, **TOL[dtype])
        torch.testing.assert_close(ours(x), expected[:, 0], **TOL[dtype])  # no head: the class token
        tokens, attn = ours.forward_features(x, return_attn=True)  # the explicit attention path
    torch.testing.assert_close(tokens, expected, **TOL[dtype])
    assert attn.shape == (3, L, H, 10, 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_hf_vit_for_image_classification(dtype):
    hf = scramble_(ViTForImageClassification(hf_config(num_labels=K)), 1).to(dtype).eval()
    ours = V.VisionTransformer.from_hf(hf).eval()
    assert ours.config.num_classes == K and next(ours.parameters()).dtype == dtype
    x = images(dtype=dtype, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, **TOL[dtype])
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def test_attention_maps_match_hf_eager():
    hf = scramble_(ViTModel(hf_config(attn_implementation="eager"), add_pooling_layer=False), 2).double().eval()
    ours = V.VisionTransformer.from_hf(hf).eval()
    x = images(seed=2)
    with torch.no_grad():
        ref = hf(x, output_attentions=True)
        _, attn = ours(x, return_attn=True)
    # HF's eager path takes the softmax in float32 even for float64 inputs: float32 tolerance
    torch.testing.assert_close(attn, torch.stack(ref.attentions, dim=1), **TOL[torch.float32])


def tiny_timm(dtype=torch.float64, seed=0, **kw) -> nn.Module:
    model = timm_vit.VisionTransformer(**{**dict(img_size=S, patch_size=P, in_chans=C_IN, num_classes=K, embed_dim=C,
                                                 depth=L, num_heads=H, mlp_ratio=2.0, class_token=True,
                                                 global_pool="token"), **kw})
    return scramble_(model, seed).to(dtype).eval()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", [{}, {"pre_norm": True}, {"num_classes": 0}], ids=["plain", "pre_norm", "no_head"])
def test_matches_timm(dtype, variant):
    ref = tiny_timm(dtype, seed=3, **variant)
    ours = V.VisionTransformer(V.config_from_timm(ref)).to(dtype).eval()
    ours.load_state_dict(V.from_timm_state_dict(ref.state_dict()), strict=True)
    c = ours.config
    assert c.eps == 1e-6 and c.ln_pre == bool(variant.get("pre_norm"))
    assert c.patch_bias != c.ln_pre  # timm's pre_norm drops the patch bias, as CLIP does
    x = images(dtype=dtype, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), **TOL[dtype])
        torch.testing.assert_close(ours(x), ref(x), **TOL[dtype])
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_options_match_open_clip_image_tower(dtype):
    """ln_pre, no patch bias, quick_gelu, eps 1e-5 and `proj`: OpenAI CLIP's image tower as open_clip builds it.
    The only key that differs is the fused attention's name (theirs nn.MultiheadAttention's in_proj_weight)."""
    ref = oc.VisionTransformer(image_size=S, patch_size=P, width=C, layers=L, heads=H, mlp_ratio=4.0, output_dim=8,
                               act_layer=oc.QuickGELU)
    ref = scramble_(ref, 4).to(dtype).eval()
    ours = tiny(dtype, output_dim=8, patch_bias=False, ln_pre=True, activation="quick_gelu", eps=1e-5)
    renamed = {re.sub(r"in_proj_(weight|bias)$", r"in_proj.\1", k): v for k, v in ref.state_dict().items()}
    assert renamed.keys() == ours.state_dict().keys()
    ours.load_state_dict(renamed, strict=True)
    x = images(dtype=dtype, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), **TOL[dtype])


# ---------------------------------------------------------------------------------------------- the model

@pytest.mark.parametrize("head", [dict(num_classes=K), dict(output_dim=6, ln_pre=True, patch_bias=False)])
def test_every_parameter_gets_a_gradient(head):
    model = tiny(torch.float32, seed=5, dropout=0.1, **head).train()
    out = model(images(4, dtype=torch.float32, seed=5))
    assert out.shape == (4, head.get("num_classes") or head["output_dim"])
    (out ** 2).mean().backward()  # every output unit matters
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.eval()
    x = images(2, dtype=torch.float32, seed=6)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # dropout is off in eval mode


@pytest.mark.parametrize("size, patch, channels", [(32, 4, 3), (28, 7, 1), (8, 8, 3), (24, 2, 2)])
def test_shapes_for_several_image_sizes(size, patch, channels):
    G = size // patch
    T = G * G + 1
    model = tiny(torch.float32, image_size=size, patch_size=patch, in_channels=channels, num_classes=K)
    x = images(2, channels, size, dtype=torch.float32)
    assert model.positional_embedding.shape == (T, C) and model.class_embedding.shape == (C,)
    with torch.no_grad():
        tokens, attn = model.forward_features(x, return_attn=True)
        assert tokens.shape == (2, T, C) and attn.shape == (2, L, H, T, T)
        assert model(x).shape == (2, K) and model.forward_head(tokens).shape == (2, K)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, L, H, T))
        assert V.attention_rollout(attn).shape == (2, T, T)


def test_default_config_and_initialisation():
    torch.manual_seed(0)
    model = V.VisionTransformer(V.ViTConfig(num_classes=10))
    c = model.config
    assert (c.grid_size, c.num_patches, c.mlp_width, c.eps) == (8, 64, 256, 1e-6)
    assert isinstance(model.ln_pre, nn.Identity) and model.proj is None
    assert list(model.transformer.children()) == [model.transformer.resblocks]
    keys = set(model.state_dict())
    assert {"conv1.weight", "conv1.bias", "class_embedding", "positional_embedding", "ln_post.weight", "head.weight",
            "transformer.resblocks.3.ln_1.weight", "transformer.resblocks.0.attn.in_proj.weight",
            "transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.c_proj.bias"} <= keys
    for p in (model.positional_embedding, model.class_embedding):  # OpenAI CLIP's scale C^-1/2
        assert p.std().item() == pytest.approx(64 ** -0.5, rel=0.15)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            assert (m.weight == 1).all() and (m.bias == 0).all()
    for block in model.transformer.resblocks:  # nn.MultiheadAttention's init: Xavier-uniform in_proj, zero biases
        assert block.attn.in_proj.weight.std().item() == pytest.approx((2 / (64 + 3 * 64)) ** 0.5, rel=0.05)
        assert (block.attn.in_proj.bias == 0).all() and (block.attn.out_proj.bias == 0).all()
    torch.manual_seed(1)
    again = V.VisionTransformer(V.ViTConfig(num_classes=10)).state_dict()
    assert all(not torch.equal(v, again[k]) for k, v in model.state_dict().items()
               if "ln_" not in k and "attn.in_proj.bias" not in k and "attn.out_proj.bias" not in k)  # all random
    clip = V.VisionTransformer(V.ViTConfig(output_dim=32, ln_pre=True, patch_bias=False))
    assert clip.proj.shape == (64, 32) and clip.conv1.bias is None and isinstance(clip.ln_pre, nn.LayerNorm)
    assert clip.proj.std().item() == pytest.approx(64 ** -0.5, rel=0.1)


# ---------------------------------------------------------------------------------------------- attention rollout

def test_attention_rollout_is_the_product_of_residual_mixed_layer_maps():
    g = torch.Generator().manual_seed(0)
    attn = torch.softmax(torch.randn(2, 3, 4, 6, 6, generator=g, dtype=torch.float64), dim=-1)  # (B, L, H, T, T)
    eye = torch.eye(6, dtype=torch.float64)
    expected = []
    for b in range(2):
        r = eye
        for layer in range(3):
            a = 0.5 * attn[b, layer].mean(0) + 0.5 * eye  # rows still sum to 1
            r = a @ r
        expected.append(r)
    rollout = V.attention_rollout(attn)
    torch.testing.assert_close(rollout, torch.stack(expected), atol=1e-12, rtol=0)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 6, dtype=torch.float64))
    torch.testing.assert_close(V.attention_rollout(attn[0]), rollout[0])  # unbatched
    torch.testing.assert_close(V.attention_rollout(attn[:, :1], residual=0.0), attn[:, 0].mean(1))  # one layer
    mx = V.attention_rollout(attn[:, :1], head_fusion="max", residual=0.0)
    torch.testing.assert_close(mx, attn[:, 0].amax(1) / attn[:, 0].amax(1).sum(-1, keepdim=True))
    identity = eye.expand(2, 3, 4, 6, 6)
    torch.testing.assert_close(V.attention_rollout(identity), eye.expand(2, 6, 6))  # nothing flows anywhere


def test_attention_rollout_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, L, H, T, T\) or \(L, H, T, T\), got \(4, 6, 6\)"):
        V.attention_rollout(torch.ones(4, 6, 6))
    with pytest.raises(ValueError, match="head_fusion must be 'mean', 'max' or 'min'"):
        V.attention_rollout(torch.ones(1, 1, 6, 6), head_fusion="sum")
    with pytest.raises(ValueError, match=r"residual must be in \[0, 1\)"):
        V.attention_rollout(torch.ones(1, 1, 6, 6), residual=1.0)


# ---------------------------------------------------------------------------------------------- bad input

def test_bad_images_fail_with_expected_and_got():
    model = tiny(torch.float32, num_classes=K)
    with pytest.raises(ValueError, match=r"image size 13×13 is not divisible by the patch size 4; crop or resize"):
        model(images(1, size=13, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"expected images with 3 channel\(s\), got 1.*expand"):
        model(images(1, channels=1, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"channels come second \(NCHW\)"):
        model(images(1, dtype=torch.float32).permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"expected 12×12 images, got 16×16; the position embedding has 10 rows, "
                                         r"one per patch of a 3×3 grid"):
        model(images(1, size=16, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"got shape \(3, 12, 12\).*images\[None\]"):
        model(images(1, dtype=torch.float32)[0])
    with pytest.raises(ValueError, match="float tensor"):
        model(torch.zeros(1, 3, 12, 12, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, T, C\) with C=16"):
        model.forward_head(torch.zeros(2, 16))


def test_position_embedding_length_mismatch_when_loading():
    small = tiny(torch.float32)  # 12×12 images of 4-pixel patches: 3×3 + 1 = 10 positions
    big = tiny(torch.float32, image_size=16)  # 4×4 + 1 = 17
    message = ("positional_embedding: the checkpoint has shape (17, 16) (a 4×4 grid plus the class token), this model "
               "expects (10, 16) = (9 patches of a 3×3 grid + 1, C=16)")
    with pytest.raises(ValueError, match=re.escape(message)):
        small.load_state_dict(big.state_dict())
    ref = tiny_timm(img_size=16)
    with pytest.raises(ValueError, match=r"checkpoint has shape \(17, 16\)"):
        small.load_state_dict(V.from_timm_state_dict(ref.state_dict()), strict=False)


def test_bad_configs_fail_clearly():
    with pytest.raises(ValueError, match="image_size=30 is not divisible by patch_size=4.*image_size=28"):
        V.ViTConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="width=30 is not divisible by heads=4"):
        V.ViTConfig(width=30)
    with pytest.raises(ValueError, match="not both"):
        V.ViTConfig(num_classes=10, output_dim=16)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        V.ViTConfig(activation="swish")
    with pytest.raises(ValueError, match="in_channels must be a positive int, got 0"):
        V.ViTConfig(in_channels=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        V.ViTConfig(dropout=1.0)
    with pytest.raises(TypeError, match="takes a ViTConfig, got dict"):
        V.VisionTransformer({"width": 64})


def test_converters_reject_what_they_cannot_place():
    hf = ViTModel(hf_config(), add_pooling_layer=True)
    with pytest.raises(KeyError, match=r"pooler.dense.weight.*add_pooling_layer=False"):
        V.from_hf_vit_state_dict(hf.state_dict())
    state = tiny_timm().state_dict()
    with pytest.raises(KeyError, match=r"missing 'cls_token'"):
        V.from_timm_state_dict({k: v for k, v in state.items() if k != "cls_token"})
    with pytest.raises(KeyError, match=r"keys with no place in VisionTransformer: \['blocks.0.ls1.gamma'\]"):
        V.from_timm_state_dict({**state, "blocks.0.ls1.gamma": torch.ones(C)})
    with pytest.raises(ValueError, match="global_pool='token'"):
        V.config_from_timm(tiny_timm(global_pool="avg", fc_norm=False))
    model = tiny(torch.float64)
    with pytest.raises(RuntimeError, match="Missing key"):  # a block left out of the checkpoint
        model.load_state_dict({k: v for k, v in V.from_timm_state_dict(tiny_timm(num_classes=0).state_dict()).items()
                               if "resblocks.1." not in k}, strict=True)
