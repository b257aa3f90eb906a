"""utils.quantize (chapter 11): round-to-nearest equal to torch's quantizers, scales and zero points equal to
torch.ao's observers and torchao's affine primitives, the integer matmul equal to torch's quantized Linear,
GPTQ equal to the optimal-brain-surgeon update written out and better than round-to-nearest, the
straight-through gradient equal to torch's fake quantization, and clear errors for bad input."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

from utils.quantize import (SUPPORTED_BITS, Int8Linear, WeightFakeQuant, activation_qparams, block_linears,
                            compressible_weights, fake_quantize_, fake_quantize_ste, gptq_quantize,
                            gptq_quantize_model_, input_hessian, int8_linears_, integer_linear, observe_inputs,
                            pack_int4, qat_finalize_, qat_prepare_, quantize, quantize_activation, quantize_per_token,
                            quantized_nbytes, requantize, unpack_int4)
from weights import rows_of_different_ranges, tiny_gpt

# torch's quantized tensors (the reference here) are themselves deprecated; the integers are what we compare
TORCH_QUANTIZED_DEPRECATED = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")


@pytest.fixture
def w():
    return rows_of_different_ranges()


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


# ------------------------------------------------------------------------------------------ scales vs torch/torchao

def test_scale_and_zero_point_equal_torch_observers(w):
    """Our scales against torch.ao's observers on the same tensor (not handed our scales)."""
    w = w + 0.2  # lopsided rows: the zero points differ from row to row
    obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    obs(w)
    scale, zero = obs.calculate_qparams()
    q = quantize(w, 8, "tensor", symmetric=False)
    assert torch.equal(q.scale.flatten(), scale) and torch.equal(q.zero_point.flatten(), zero.float())
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine)
    obs(w)
    scale, zero = obs.calculate_qparams()
    q = quantize(w, 8, "channel", symmetric=False)
    assert len(set(zero.tolist())) > 5  # rows really differ
    assert torch.equal(q.scale.flatten(), scale) and torch.equal(q.zero_point.flatten(), zero.float())
    # symmetric: torch's observer with the restricted range [-127, 127] is max|w| / 127
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                   quant_min=-127, quant_max=127)
    obs(w)
    scale, zero = obs.calculate_qparams()
    q = quantize(w, 8, "channel")
    assert torch.equal(q.scale.flatten(), scale) and not bool(zero.any())


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_group_quantizer_equals_torchao_affine_primitives(w, bits, symmetric):
    """torchao's choose_qparams_affine + quantize_affine with block (1, g) are group quantization."""
    prims = pytest.importorskip("torchao.quantization.quant_primitives")
    w = w + 0.1 * torch.arange(96) / 96  # groups of a row differ
    qmin, qmax = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    mapping = prims.MappingType.SYMMETRIC if symmetric else prims.MappingType.ASYMMETRIC
    dtype = torch.int8 if symmetric else torch.uint8
    scale, zero = prims.choose_qparams_affine(w, mapping, (1, 16), dtype, quant_min=qmin, quant_max=qmax)
    ref = prims.quantize_affine(w, (1, 16), scale, zero, dtype, quant_min=qmin, quant_max=qmax)
    q = quantize(w, bits, 16, symmetric)
    assert q.scale.shape == (48, 6, 1)
    assert torch.equal(q.scale.reshape(scale.shape), scale)
    assert torch.equal(q.zero_point.reshape(zero.shape), zero.float())
    assert torch.equal(q.q.reshape(w.shape).long(), ref.long())


def test_activation_qparams_equal_minmax_observer_over_batches():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 8, generator=g) * 3 + 1, torch.randn(4, 8, generator=g) - 2]
    obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    for b in batches:
        obs(b)
    scale, zero = obs.calculate_qparams()
    ours = activation_qparams(torch.cat(batches).min(), torch.cat(batches).max())
    assert torch.equal(ours[0].reshape(1), scale) and torch.equal(ours[1].reshape(1), zero.float())
    s, z = activation_qparams(0.5, 2.0)  # all positive: the range is stretched down to 0
    assert float(z) == 0 and float(s) == pytest.approx(2.0 / 255)
    with pytest.raises(ValueError, match="lo must be ≤ hi"):
        activation_qparams(1.0, -1.0)


def test_quantize_per_token_equals_torchao_per_row_scales():
    prims = pytest.importorskip("torchao.quantization.quant_primitives")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 32, generator=g) * torch.tensor([0.1, 1.0, 10.0, 3.0, 0.5])[:, None]  # tokens differ
    q, scale = quantize_per_token(x)
    x2 = x.reshape(10, 32)
    ref_s, ref_z = prims.choose_qparams_affine(x2, prims.MappingType.SYMMETRIC, (1, 32), torch.int8,
                                               quant_min=-127, quant_max=127)
    ref_q = prims.quantize_affine(x2, (1, 32), ref_s, ref_z, torch.int8, quant_min=-127, quant_max=127)
    assert scale.shape == (2, 5, 1) and torch.equal(scale.reshape(10), ref_s.reshape(10))
    assert torch.equal(q.reshape(10, 32), ref_q)


# ------------------------------------------------------------------------------------------ integer matmul

def _torch_quantized_linear(x, xs, xz, wq_t, bias, out_scale, out_zero, engine):
    torch.backends.quantized.engine = engine
    lin = torch.ao.nn.quantized.Linear(x.shape[1], wq_t.shape[0])
    lin.set_weight_bias(wq_t, bias)
    lin.scale, lin.zero_point = out_scale, out_zero
    return lin(torch.quantize_per_tensor(x, xs, xz, torch.quint8)).int_repr()


ENGINES = [e for e in ("x86", "fbgemm") if e in torch.backends.quantized.supported_engines]


@TORCH_QUANTIZED_DEPRECATED
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("engine", ENGINES)
def test_integer_linear_equals_torch_quantized_linear(engine):
    """Static int8: uint8 activations with a calibrated zero point, int8 per-channel weights, int32 sums,
    requantized output: the same integers as torch.ao.nn.quantized.Linear."""
    g = torch.Generator().manual_seed(3)
    calib = torch.randn(64, 96, generator=g) * 2 + 0.7
    x = torch.randn(40, 96, generator=g) * 2 + 0.7
    x[0, :3] = 30.0  # beyond the calibrated range: clipped by both
    w = torch.randn(24, 96, generator=g) * torch.rand(24, 1, generator=g)
    bias = torch.randn(24, generator=g)
    xs, xz = activation_qparams(calib.min(), calib.max())
    assert 0 < float(xz) < 255
    wq = quantize(w, 8, "channel")
    ref_w = torch.quantize_per_channel(w, wq.scale.flatten().double(), torch.zeros(24, dtype=torch.long), 0,
                                       torch.qint8)
    y = integer_linear(quantize_activation(x, xs, xz), xs, xz, wq.q.reshape(24, 96), wq.scale.flatten(), 0, bias)
    out_s, out_z = activation_qparams(y.min(), y.max())
    ours = requantize(y, out_s, out_z)
    ref = _torch_quantized_linear(x, float(xs), int(xz), ref_w, bias, float(out_s), int(out_z), engine)
    assert torch.equal(ours, ref)
    # a weight zero point (per-tensor affine weights) takes the other cross term
    ref_w = torch.quantize_per_tensor(w, 0.01, 5, torch.qint8)
    y = integer_linear(quantize_activation(x, xs, xz), xs, xz, ref_w.int_repr(), 0.01, 5, bias)
    ref = _torch_quantized_linear(x, float(xs), int(xz), ref_w, bias, float(out_s), int(out_z), engine)
    assert torch.equal(requantize(y, out_s, out_z), ref)


def test_integer_linear_is_the_dequantized_product_per_token_and_per_channel():
    """The int32 sum with its cross terms equals (s_x (x_q - z_x)) (s_w (w_q - z_w))ᵀ + b written out in
    float64, with a scale and zero point per token and per output row."""
    g = torch.Generator().manual_seed(4)
    xq = torch.randint(0, 256, (7, 50), generator=g, dtype=torch.int32).to(torch.uint8)
    wq = torch.randint(-127, 128, (9, 50), generator=g, dtype=torch.int32).to(torch.int8)
    xs, xz = torch.rand(7, generator=g) + 0.1, torch.randint(0, 256, (7,), generator=g)
    ws, wz = torch.rand(9, generator=g) + 0.1, torch.randint(-20, 20, (9,), generator=g)
    b = torch.randn(9, generator=g)
    ref = (xs[:, None].double() * (xq.double() - xz[:, None])) @ (ws[:, None].double() * (wq.double() - wz[:, None])).T \
        + b.double()
    torch.testing.assert_close(integer_linear(xq, xs, xz, wq, ws, wz, b), ref.float(), rtol=1e-6, atol=1e-5)
    # the int8 kernel (uint8 shifted by 128) and the plain int32 product agree
    assert torch.equal(integer_linear(xq.int(), xs, xz, wq.int(), ws, wz, b), integer_linear(xq, xs, xz, wq, ws, wz, b))
    x8 = (xq.int() - 128).to(torch.int8)  # the same activations as int8 with zero point z - 128
    assert torch.equal(integer_linear(x8, xs, xz - 128, wq, ws, wz, b), integer_linear(xq, xs, xz, wq, ws, wz, b))
    with pytest.raises(ValueError, match="xq has 50 input columns but wq has 49"):
        integer_linear(xq, xs, xz, wq[:, :49], ws, wz)
    with pytest.raises(ValueError, match="2-D integer tensor"):
        integer_linear(xq.float(), xs, xz, wq, ws, wz)
    with pytest.raises(ValueError, match=r"x_scale must hold 1 value \(per tensor\) or 7"):
        integer_linear(xq, xs[:3], xz, wq, ws, wz)


def test_observe_inputs_sees_each_layers_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(4, 6, generator=g) * 2, torch.randn(3, 6, generator=g) + 1]
    stats = observe_inputs(model, batches)
    assert set(stats) == {"0", "2"}
    x = torch.cat(batches)
    h = torch.relu(model[0](x)).detach()  # what the second layer receives
    assert float(stats["0"].lo) == float(x.min()) and float(stats["0"].hi) == float(x.max())
    assert float(stats["2"].lo) == 0.0 and float(stats["2"].hi) == float(h.max())
    torch.testing.assert_close(stats["2"].channel_absmax, h.abs().amax(0), rtol=0, atol=0)
    assert stats["0"].n_tokens == 7
    assert stats["0"].outlier_ratio() == pytest.approx(float(x.abs().amax(0).max() / x.abs().amax(0).median()))
    with pytest.raises(ValueError, match="calibration batches are empty"):
        observe_inputs(model, [])


@TORCH_QUANTIZED_DEPRECATED
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_int8_linear_modes_against_torch_and_the_formula():
    g = torch.Generator().manual_seed(6)
    lin = nn.Linear(32, 16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(16, 32, generator=g))
    calib = [torch.randn(8, 32, generator=g) + 0.5]
    stats = observe_inputs(lin, calib, {"lin": lin})["lin"]
    x = torch.randn(2, 5, 32, generator=g) * torch.tensor([1.0, 1, 1, 1, 8])[:, None]  # token 4 out of range
    static, dynamic, token = (Int8Linear(lin, m, stats) for m in ("static", "dynamic", "token"))
    # static = torch's quantized Linear with the calibrated input qparams (and per-channel weights)
    ys = static(x)
    assert ys.shape == (2, 5, 16)
    out_s, out_z = activation_qparams(ys.min(), ys.max())
    xs, xz = activation_qparams(stats.lo, stats.hi)
    wq = quantize(lin.weight, 8, "channel")
    ref_w = torch.quantize_per_channel(lin.weight.detach(), wq.scale.flatten().double(),
                                       torch.zeros(16, dtype=torch.long), 0, torch.qint8)
    ref = _torch_quantized_linear(x.reshape(10, 32), float(xs), int(xz), ref_w, lin.bias.detach(), float(out_s),
                                  int(out_z), ENGINES[0] if ENGINES else "qnnpack")
    diff = (requantize(ys, out_s, out_z).reshape(10, 16).int() - ref.int()).abs()
    assert int(diff.max()) <= (0 if ENGINES else 1)
    # all three are close to float where x is in range; static clips the outlier token, per-token does not
    y = lin(x).detach()
    err = {m: (mod(x) - y).abs().amax(-1) for m, mod in (("static", static), ("dynamic", dynamic), ("token", token))}
    assert float(err["token"][:, 4].max()) < 0.2 * float(err["static"][:, 4].max())
    top = float(y[:, :4].abs().max())
    assert max(float(e[:, :4].max()) for e in err.values()) < 0.03 * top
    with pytest.raises(ValueError, match="needs the calibration range"):
        Int8Linear(lin, "static")
    with pytest.raises(ValueError, match="mode must be one of"):
        Int8Linear(lin, "weird", stats)
    with pytest.raises(ValueError, match="in_features=32"):
        token(torch.zeros(3, 31))


@TORCH_QUANTIZED_DEPRECATED
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("engine", ENGINES)
def test_int8_linear_dynamic_equals_torch_dynamic_quantized_linear(engine):
    """Dynamic int8 (activation scale and zero point from each call's min/max) = torch's
    quantized.linear_dynamic with the same per-channel int8 weights and full 8-bit activations."""
    torch.backends.quantized.engine = engine
    g = torch.Generator().manual_seed(11)
    lin = nn.Linear(64, 32)
    x = torch.randn(3, 10, 64, generator=g) + 0.3
    ours = Int8Linear(lin, "dynamic")(x)
    wq = quantize(lin.weight, 8, "channel")
    qw = torch.quantize_per_channel(lin.weight.detach(), wq.scale.flatten().double(), torch.zeros(32, dtype=torch.long),
                                    0, torch.qint8)
    ref = torch.ops.quantized.linear_dynamic(x, torch.ops.quantized.linear_prepack(qw, lin.bias.detach()), False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert (ours - lin(x)).abs().max() > 1e-3  # and it is not the float layer


def test_int8_linears_replace_the_gpt_blocks_and_stay_close():
    model = tiny_gpt()
    idx = torch.randint(0, 11, (3, 16), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(idx)
        for mode in ("static", "dynamic", "token"):
            m = int8_linears_(copy.deepcopy(model), mode, [idx])
            assert sum(isinstance(x, Int8Linear) for x in m.modules()) == 8 and not block_linears(m)
            assert (m(idx) - ref).abs().max() < 0.05 * ref.abs().max()
    with pytest.raises(ValueError, match="needs calibration batches"):
        int8_linears_(copy.deepcopy(model), "static")


# ------------------------------------------------------------------------------------------ GPTQ

def _obs_reference(w, H, bits, group=None, symmetric=True, damp=0.01):
    """GPTQ as the paper's eq. (2)-(3) state it, with none of its tricks: quantize column q, then update the
    columns F still free by -e / [H_F^-1]_qq · (H_F^-1)_{:, q}, with H_F^-1 recomputed by a matrix inverse
    of the free columns' Hessian every step (no Cholesky, no lazy blocks)."""
    O, I = w.shape
    W, H = w.double().clone(), H.double().clone()
    H += damp * torch.diagonal(H).mean() * torch.eye(I, dtype=torch.float64)
    qmin, qmax = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)

    def grid(block):  # round-to-nearest's grid over the columns of `block` (O, k)
        lo, hi = block.amin(1).clamp(max=0), block.amax(1).clamp(min=0)
        scale = torch.maximum(-lo, hi) / qmax if symmetric else (hi - lo) / (qmax - qmin)
        zero = torch.zeros_like(scale) if symmetric else torch.round(-lo / scale).clamp(qmin, qmax)
        return scale, zero

    scale, zero = grid(W)
    out = torch.zeros_like(W)
    for q in range(I):
        if group and q % group == 0:
            scale, zero = grid(W[:, q:q + group])
        out[:, q] = scale * (torch.clamp(torch.round(W[:, q] / scale) + zero, qmin, qmax) - zero)
        Hinv = torch.linalg.inv(H[q:, q:])  # the free columns q, q+1, ...
        W[:, q:] -= ((W[:, q] - out[:, q]) / Hinv[0, 0])[:, None] * Hinv[0][None, :]
    return out


def _correlated_inputs(n, I, seed):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(I, I, generator=g) / I**0.5 + torch.eye(I)
    return (torch.randn(n, I, generator=g) * torch.linspace(0.2, 3.0, I)) @ mix  # (n, I): columns correlated


@pytest.mark.parametrize("block_size", [1, 5, 128])
@pytest.mark.parametrize("group,symmetric", [(None, True), (None, False), (8, True)])
def test_gptq_equals_the_obs_update_written_out(block_size, group, symmetric):
    X = _correlated_inputs(200, 24, 0)
    H = 2 * X.T.double() @ X.double() / 200
    w = torch.randn(10, 24, generator=torch.Generator().manual_seed(1))
    ours = gptq_quantize(w, H, 3, group or "channel", symmetric, block_size=block_size)
    torch.testing.assert_close(ours.dequantize().double(), _obs_reference(w, H, 3, group, symmetric),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("granularity", ["channel", 16])
def test_gptq_beats_round_to_nearest_on_correlated_inputs(bits, granularity):
    X = _correlated_inputs(512, 64, 2)  # (n, I)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    H = 2 * X.T @ X / 512
    rtn = quantize(w, bits, granularity).dequantize()
    gptq = gptq_quantize(w, H, bits, granularity).dequantize()

    def err(wq):
        return float((X @ w.T - X @ wq.T).norm())

    assert err(gptq) < 0.9 * err(rtn), (err(gptq), err(rtn))
    assert not torch.equal(gptq, rtn)


@pytest.mark.parametrize("granularity", ["channel", "tensor", 8])
def test_gptq_with_nothing_to_compensate_is_round_to_nearest(granularity):
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(4))
    rtn = quantize(w, 3, granularity)
    for H in (torch.eye(16) * 2.5, torch.diag(torch.rand(16) + 0.5)):  # uncorrelated inputs: H diagonal
        q = gptq_quantize(w, H, 3, granularity, damp=0.0)
        assert torch.equal(q.q, rtn.q) and torch.equal(q.scale, rtn.scale)
    col = w[:, :1].contiguous()  # a single column has no later column to pass its error to
    X = torch.randn(50, 1)
    q = gptq_quantize(col, 2 * X.T @ X, 4)
    assert torch.equal(q.dequantize(), quantize(col, 4).dequantize())


def test_gptq_zeroes_dead_inputs_and_rejects_bad_input():
    X = _correlated_inputs(100, 12, 5)
    X[:, 3] = 0  # an input that is always zero
    w = torch.randn(4, 12)
    q = gptq_quantize(w, 2 * X.T @ X, 4)
    assert bool((q.dequantize()[:, 3] == 0).all())
    assert q.q.shape == (4, 1, 12) and q.scale.shape == (4, 1, 1)
    with pytest.raises(ValueError, match=r"H must be a float \(I, I\) = \(12, 12\)"):
        gptq_quantize(w, torch.eye(11), 4)
    with pytest.raises(ValueError, match="not positive definite"):
        gptq_quantize(w, -torch.eye(12), 4, damp=0.0)
    with pytest.raises(ValueError, match="bits must be one of"):
        gptq_quantize(w, torch.eye(12), 5)
    with pytest.raises(ValueError, match="group size 5 does not divide"):
        gptq_quantize(w, torch.eye(12), 4, 5)
    with pytest.raises(ValueError, match="damp must be ≥ 0"):
        gptq_quantize(w, torch.eye(12), 4, damp=-1.0)


def test_input_hessian_is_two_x_xt_over_n_of_the_layers_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3))
    batches = [torch.randn(5, 4), torch.randn(2, 3, 4)]
    x = torch.cat([torch.nn.functional.gelu(model[0](b)).reshape(-1, 6) for b in batches]).detach().double()
    torch.testing.assert_close(input_hessian(model, model[2], batches), 2 * x.T @ x / 11)


def test_gptq_model_is_sequential_and_leaves_the_embeddings():
    model = tiny_gpt(1)
    g = torch.Generator().manual_seed(8)
    batches = [torch.randint(0, 11, (4, 16), generator=g) for _ in range(2)]
    out = gptq_quantize_model_(copy.deepcopy(model), batches, 3)
    changed = {k for k, v in out.state_dict().items() if not torch.equal(v, model.state_dict()[k])}
    assert changed == {f"{name}.weight" for name in block_linears(model)}  # embeddings, biases, norms untouched
    # by hand, through the whole model each time: every layer's Hessian taken with the earlier ones quantized
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for lin in block_linears(ref).values():
            lin.weight.copy_(gptq_quantize(lin.weight, input_hessian(ref, lin, batches), 3).dequantize())
        stale = gptq_quantize(model.transformer.h[1].mlp.c_fc.weight,
                              input_hessian(model, model.transformer.h[1].mlp.c_fc, batches), 3).dequantize()
    for (name, a), b in zip(block_linears(out).items(), block_linears(ref).values()):
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-6, msg=name)
    assert not torch.allclose(out.transformer.h[1].mlp.c_fc.weight, stale)  # the float model's Hessian differs
    with pytest.raises(ValueError, match="calibration batches are empty"):
        gptq_quantize_model_(copy.deepcopy(model), [], 3)
    with pytest.raises(TypeError, match="expected a GPT"):
        gptq_quantize_model_(nn.Linear(3, 3), batches, 3)


# ------------------------------------------------------------------------------------------ QAT

def test_ste_gradient_equals_torch_fake_quantize():
    """Forward and gradient against torch.fake_quantize_per_channel_affine (gradient 1 inside the range,
    0 where clipped), with scales small enough that some values clip."""
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(5, 20, generator=g) * torch.tensor([0.5, 1, 2, 4, 8])[:, None]).requires_grad_()
    scale, zero = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.5]), torch.tensor([0, 1, -1, 0, 2])
    x_ref = x.detach().clone().requires_grad_()
    ours = fake_quantize_ste(x, scale[:, None], zero[:, None].float(), -7, 7)
    ref = torch.fake_quantize_per_channel_affine(x_ref, scale, zero.int(), 0, -7, 7)
    torch.testing.assert_close(ours, ref)
    upstream = torch.randn(5, 20, generator=g)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    assert torch.equal(x.grad, x_ref.grad)
    clipped = x.grad == 0
    assert 0 < int(clipped.sum()) < x.numel()  # both branches taken
    with pytest.raises(ValueError, match="qmin < qmax"):
        fake_quantize_ste(x, scale[:, None], 0.0, 7, -7)


def test_weight_fake_quant_is_rtn_with_an_identity_gradient(w):
    fq = WeightFakeQuant(4, 32)
    wp = w.clone().requires_grad_()
    out = fq(wp)
    torch.testing.assert_close(out, quantize(w, 4, 32).dequantize(), rtol=0, atol=0)
    out.pow(2).sum().backward()
    torch.testing.assert_close(wp.grad, 2 * out.detach())  # absmax scales never clip: d out / d w = 1


def test_qat_prepare_trains_the_quantized_model_and_finalize_keeps_it():
    model = tiny_gpt(2)
    idx = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(10))
    n_params = len(list(model.parameters()))
    qat = qat_prepare_(copy.deepcopy(model), 4, "channel")
    assert len(list(qat.parameters())) == n_params  # the tied table is still one parameter
    expected = fake_quantize_(copy.deepcopy(model), 4, "channel")
    torch.testing.assert_close(qat(idx), expected(idx))
    _, loss = qat(idx, idx)
    loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in qat.named_parameters()
               if n.endswith("original")), "every quantized weight gets a gradient"
    with pytest.raises(ValueError, match="already prepared"):
        qat_prepare_(qat, 4)
    qat_finalize_(qat)
    assert qat.lm_head.weight is qat.transformer.wte.weight
    assert set(qat.state_dict()) == set(model.state_dict())
    torch.testing.assert_close(qat(idx), expected(idx))
    only = qat_prepare_(copy.deepcopy(model), 4, blocks_only=True)
    torch.testing.assert_close(only(idx), fake_quantize_(copy.deepcopy(model), 4, blocks_only=True)(idx))
