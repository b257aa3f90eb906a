"""utils.quantize (chapter 11): quantization equal to torch's quantizers with bounded error, packing, the
bytes a quantized GPT takes, and clear errors for bad input."""
from __future__ import annotations

import copy

import pytest
import torch

from utils.gpt import GPT, GPTConfig
from utils.quantize import (SUPPORTED_BITS, compressible_weights, fake_quantize_, pack_int4, quantize,
                            quantized_nbytes, unpack_int4)

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
