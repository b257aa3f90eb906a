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
from torch.nn.utils import parametrize

from utils.quantize import (SUPPORTED_BITS, InputStats, Int8Linear, Quantized, WeightFakeQuant, activation_qparams,
                            block_linears, compressible_weights, fake_quantize_, fake_quantize_ste, gptq_quantize,
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

def _obs_reference(w, H, bits, group=None, symmetric=True, damp=0.01, per_tensor=False):
    """GPTQ as the paper's eq. (2)-(3) state it, with none of its tricks: quantize column q, then update the
    columns F still free by -e / [H_F^-1]_qq · (H_F^-1)_{:, q}, with H_F^-1 recomputed by a matrix inverse
    of the free columns' Hessian every step (no Cholesky, no lazy blocks). per_tensor: one grid for all of w."""
    O, I = w.shape
    W, H = w.double().clone(), H.double().clone()
    H += damp * torch.diagonal(H).mean() * torch.eye(I, dtype=torch.float64)
    qmin, qmax = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)

    def grid(block):  # round-to-nearest's grid over the columns of `block` (O, k)
        lo, hi = block.amin(1).clamp(max=0), block.amax(1).clamp(min=0)
        scale = torch.maximum(-lo, hi) / qmax if symmetric else (hi - lo) / (qmax - qmin)
        zero = torch.zeros_like(scale) if symmetric else torch.round(-lo / scale).clamp(qmin, qmax)
        return scale, zero

    scale, zero = grid(W.reshape(1, -1) if per_tensor else W)  # (1,) or (O,)
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


# ------------------------------------------------------------------------------------------ edges, defaults, dtypes
# Each test below pins one behaviour against a hand-computed value, a formula written out here, or torch: the
# bounds of every check on both sides, every default argument, the dtypes promised, and ties and clipping.

def _rtn_reference(w, bits, symmetric=True, k=None):
    """Round-to-nearest written out: rows of k consecutive weights (k=None: a weight row; k=w.numel(): the
    whole tensor) each get lo = min(min, 0), hi = max(max, 0), the scale and zero point of the docstring, and
    the weights come back as scale (clamp(round(w / scale) + zero) - zero), in float32."""
    x = w.detach().float().reshape(-1, k or w.shape[1])
    lo, hi = x.amin(1, keepdim=True).clamp(max=0), x.amax(1, keepdim=True).clamp(min=0)
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        scale, zero = torch.maximum(-lo, hi) / qmax, torch.zeros_like(lo)
    else:
        qmin, qmax = 0, 2**bits - 1
        scale = (hi - lo) / qmax
        zero = torch.round(-lo / torch.where(scale > 0, scale, 1.0))
    scale = torch.where(scale > 0, scale, 1.0)  # an all-zero row: any scale
    return (scale * (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero)).reshape(w.shape)


def test_quantize_hand_computed_grid_with_ties_and_both_ends():
    # symmetric 3 bits: levels -3..3, scale max|w| / 3 = 1; 0.5 and 2.5 tie and go to the even level
    w = torch.tensor([[3.0, 0.5, 2.5, -1.5, -3.0, 0.0]], dtype=torch.float64)
    q = quantize(w, 3, "channel")
    assert q.q.flatten().tolist() == [3, 0, 2, -2, -3, 0]
    assert q.scale.flatten().tolist() == [1.0] and q.zero_point.flatten().tolist() == [0.0]
    # affine 2 bits: levels 0..3 over [-1, 2]: scale 1, zero point round(1 / 1) = 1
    qa = quantize(torch.tensor([[-1.0, 2.0, 0.5, 1.5]]), 2, "channel", symmetric=False)
    assert qa.q.flatten().tolist() == [0, 3, 1, 3]  # 0.5 + 1 → 1 (tie to even 0, plus 1); 1.5 → 2 + 1
    assert qa.scale.flatten().tolist() == [1.0] and qa.zero_point.flatten().tolist() == [1.0]
    # an all-negative row is stretched up to 0: zero point at the top level
    qn = quantize(torch.tensor([[-3.0, -1.0, -2.0]]), 2, "channel", symmetric=False)
    assert qn.scale.flatten().tolist() == [1.0] and qn.zero_point.flatten().tolist() == [3.0]
    assert qn.q.flatten().tolist() == [0, 2, 1]


def test_quantize_defaults_are_8_bit_symmetric_per_channel(w):
    q = quantize(w)
    assert q.bits == 8 and q.q.dtype == torch.int8 and q.scale.shape == (48, 1, 1)
    assert not bool(q.zero_point.any())
    torch.testing.assert_close(q.dequantize(), _rtn_reference(w, 8), rtol=0, atol=0)
    assert torch.equal(quantize(w, 4).q, quantize(w, 4, "channel", True).q)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity,k", [("tensor", 48 * 96), ("channel", None), (16, 16), (1, 1), (96, 96)])
def test_quantize_equals_the_formula_for_every_layout(w, bits, symmetric, granularity, k):
    w = w + 0.05  # lopsided: affine zero points are not all 0
    q = quantize(w, bits, granularity, symmetric)
    torch.testing.assert_close(q.dequantize(), _rtn_reference(w, bits, symmetric, k), rtol=0, atol=0)
    assert q.bits == bits and q.shape == w.shape
    # storage: int8 (symmetric, or affine below 8 bits), uint8 for 8-bit affine (levels up to 255)
    assert q.q.dtype == (torch.uint8 if bits == 8 and not symmetric else torch.int8)
    groups = {"tensor": (1, 1, 48 * 96), "channel": (48, 1, 96)}.get(granularity, (48, 96 // (k or 1), k))
    assert q.q.shape == groups and q.scale.shape == groups[:2] + (1,) and q.zero_point.shape == q.scale.shape


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_quantize_keeps_float32_scales_and_does_not_modify_w(w, dtype):
    wd = w.to(dtype)
    before = wd.clone()
    q = quantize(wd, 4, 16)
    assert torch.equal(wd, before)  # the weight itself is left alone
    assert q.scale.dtype == torch.float32 and q.dequantize().dtype == torch.float32
    torch.testing.assert_close(q.dequantize(), _rtn_reference(wd, 4, True, 16), rtol=0, atol=0)


def test_all_zero_rows_get_scale_one_and_come_back_exact():
    w = torch.zeros(2, 4)
    w[1] = torch.tensor([0.0, 1.0, -2.0, 0.5])
    for symmetric in (True, False):
        q = quantize(w, 4, "channel", symmetric)
        assert float(q.scale[0]) == 1.0 and float(q.zero_point[0]) == 0.0  # a range of width 0
        assert bool((q.dequantize()[0] == 0).all())


def test_dequantize_is_in_the_scales_dtype_and_reshapes():
    q = torch.tensor([[[1, -2]], [[3, 0]]], dtype=torch.int8)  # (O=2, G=1, g=2)
    scale = torch.tensor([[[0.5]], [[0.25]]], dtype=torch.float64)
    zero = torch.tensor([[[1.0]], [[-1.0]]], dtype=torch.float64)
    out = Quantized(q, scale, zero, 4, torch.Size([2, 2])).dequantize()
    assert out.dtype == torch.float64 and out.shape == (2, 2)
    assert out.tolist() == [[0.0, -1.5], [1.0, 0.25]]  # 0.5 (1 - 1), 0.5 (-2 - 1), 0.25 (3 + 1), 0.25 (0 + 1)


def test_nbytes_rounds_up_the_packed_bits_and_counts_scale_bytes():
    # 2 x 3 weights at 3 bits = 18 bits → 3 bytes; one symmetric scale (zero point 0 is not stored)
    q = quantize(torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]]), 3, "tensor")
    assert q.nbytes() == 3 + 2 and q.nbytes(4) == 3 + 4 and q.nbytes(scale_bytes=1) == 3 + 1
    qa = quantize(torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]]), 3, "channel", symmetric=False)
    assert qa.nbytes() == 3 + 2 * 2 * 2  # two rows, a scale and a non-zero zero point each
    # affine zero points that all happen to be 0 (every row ≥ 0) are not stored either
    assert quantize(torch.tensor([[1.0, 2.0]]), 8, "channel", symmetric=False).nbytes() == 2 + 2


@pytest.mark.parametrize("granularity", [1, 96, 32])
def test_quantize_accepts_group_sizes_from_1_to_the_row_length(w, granularity):
    q = quantize(w, 8, granularity)
    assert q.scale.shape == (48, 96 // granularity, 1)


@pytest.mark.parametrize("bad", [0, -4, True, False, 32.0, "row", "Channel", None])
def test_quantize_rejects_every_other_granularity(w, bad):
    with pytest.raises(ValueError, match="granularity must be"):
        quantize(w, 4, bad)


@pytest.mark.parametrize("bad", [[[1.0, 2.0]], torch.zeros(4), torch.zeros(2, 3, 4),
                                 torch.zeros(2, 3, dtype=torch.int32),
                                 torch.zeros(2, 3, dtype=torch.bool)])
def test_quantize_rejects_anything_but_a_2d_float_tensor(bad):
    with pytest.raises(ValueError, match="2-D float tensor"):
        quantize(bad, 8)
    with pytest.raises(ValueError, match="2-D float tensor"):
        gptq_quantize(bad, torch.eye(3), 4)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_every_supported_bit_width_is_accepted(w, bits):
    assert quantize(w, bits).bits == bits
    assert WeightFakeQuant(bits).bits == bits
    assert quantize_per_token(w, bits)[0].abs().max() == 2 ** (bits - 1) - 1


@pytest.mark.parametrize("bad_bits", [1, 5, 6, 7, 9, 16])
def test_every_entry_point_rejects_unsupported_bits(w, bad_bits):
    for call in (lambda: WeightFakeQuant(bad_bits), lambda: activation_qparams(-1.0, 1.0, bad_bits),
                 lambda: quantize_activation(w, 0.1, 0, bad_bits), lambda: quantize_per_token(w, bad_bits),
                 lambda: gptq_quantize_model_(tiny_gpt(), [torch.zeros(1, 4, dtype=torch.long)], bad_bits)):
        with pytest.raises(ValueError, match="bits must be one of"):
            call()


# ------------------------------------------------------------------------------------------ int4 packing

def test_pack_int4_puts_the_low_nibble_first_in_twos_complement():
    q = torch.tensor([[1, 2, -1, 0, 0, -8, 7, -2]], dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.tolist() == [[0x21, 0x0F, 0x80, 0xE7]]  # (1, 2), (-1 → F, 0), (0, -8 → 8), (7, -2 → E)
    assert unpack_int4(packed).tolist() == q.tolist()


def test_unpack_int4_returns_int8():  # it returned int64 (lo - 16 * (lo > 7) promotes int8) until this test
    assert unpack_int4(torch.tensor([0x21, 0xE7], dtype=torch.uint8)).dtype == torch.int8


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64])
def test_pack_int4_takes_any_signed_integer_type_and_any_leading_shape(dtype):
    q = torch.arange(-8, 8).reshape(2, 2, 4).to(dtype)  # both ends of the range
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 2, 2)
    out = unpack_int4(packed)
    assert out.shape == (2, 2, 4) and out.dtype == torch.int8 and out.tolist() == q.tolist()
    assert unpack_int4(pack_int4(torch.tensor([5, -3], dtype=dtype))).tolist() == [5, -3]  # 1-D


@pytest.mark.parametrize("bad", [[-9, 0], [0, 8], [-100, 100]])
def test_pack_int4_rejects_values_just_outside_minus_8_to_7(bad):
    with pytest.raises(ValueError, match=r"values must be in \[-8, 7\]"):
        pack_int4(torch.tensor(bad, dtype=torch.int16))


@pytest.mark.parametrize("bad", [torch.zeros(2, 4, dtype=torch.uint8), torch.zeros(2, 4),
                                 torch.zeros(2, 4, dtype=torch.bool),
                                 torch.zeros(2, 3, dtype=torch.int8), torch.zeros(1, dtype=torch.int64)])
def test_pack_int4_rejects_other_types_and_odd_lengths(bad):
    with pytest.raises(ValueError, match="even last dimension"):
        pack_int4(bad)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.float32])
def test_unpack_int4_needs_uint8(dtype):
    with pytest.raises(ValueError, match="need a uint8 tensor"):
        unpack_int4(torch.zeros(3, dtype=dtype))


# ------------------------------------------------------------------------------------------ GPT weights, bytes

def test_block_linears_and_compressible_weights_are_named_in_forward_order():
    model = tiny_gpt()
    names = [f"transformer.h.{i}.{n}" for i in range(2)
             for n in ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")]
    lins = block_linears(model)
    assert list(lins) == names and all(lins[n] is model.get_submodule(n) for n in names)
    weights = compressible_weights(model)
    assert list(weights) == ["transformer.wte.weight", "transformer.wpe.weight"] + [f"{n}.weight" for n in names]
    assert all(weights[n] is model.get_parameter(n) for n in weights)
    for fn in (block_linears, compressible_weights, fake_quantize_, quantized_nbytes, qat_prepare_, qat_finalize_):
        with pytest.raises(TypeError, match="expected a GPT"):
            fn(nn.Linear(2, 2))


@pytest.mark.parametrize("args,bits,symmetric,k", [((), 8, True, None), ((4, 8, False), 4, False, 8),
                                                   ((3, "tensor"), 3, True, -1)])
def test_fake_quantize_replaces_each_weight_by_the_formula(args, bits, symmetric, k):
    model = tiny_gpt()
    before = {n: p.detach().clone() for n, p in compressible_weights(model).items()}
    assert fake_quantize_(model, *args) is model  # defaults: 8 bits, per channel, symmetric
    for n, p in compressible_weights(model).items():
        kk = before[n].numel() if k == -1 else k
        torch.testing.assert_close(p.detach(), _rtn_reference(before[n], bits, symmetric, kk), rtol=0, atol=0, msg=n)


def test_fake_quantize_blocks_only_leaves_the_embeddings_in_float():
    model, ref = tiny_gpt(), tiny_gpt()
    fake_quantize_(model, 4, blocks_only=True)
    for n, p in compressible_weights(model).items():
        p0 = ref.get_parameter(n)
        expected = _rtn_reference(p0, 4) if n.startswith("transformer.h.") else p0
        torch.testing.assert_close(p.detach(), expected.detach(), rtol=0, atol=0, msg=n)


def test_quantized_nbytes_hand_counted_for_the_tiny_gpt():
    """tiny_gpt: 6576 compressible weights in 315 rows (wte 11x16, wpe 16x16, per block 48x16, 16x16, 64x16,
    16x64), and 7024 - 6576 = 448 other parameters (biases, LayerNorms) at 4 bytes = 1792."""
    model = tiny_gpt()
    assert quantized_nbytes(model) == 7024 * 4 and quantized_nbytes(model, float_bytes=2) == 7024 * 2
    assert quantized_nbytes(model, 8) == 6576 + 315 * 2 + 1792  # defaults: per channel, symmetric, float32 rest
    assert quantized_nbytes(model, 4) == 3288 + 315 * 2 + 1792 == quantized_nbytes(model, 4, "channel", True, 4)
    assert quantized_nbytes(model, 4, symmetric=False) == 3288 + 315 * 2 * 2 + 1792  # zero points stored too
    assert quantized_nbytes(model, 4, 8) == 3288 + 822 * 2 + 1792  # 822 groups of 8
    assert quantized_nbytes(model, 4, "tensor") == 3288 + 10 * 2 + 1792  # one scale per matrix
    assert quantized_nbytes(model, 3) == 2466 + 315 * 2 + 1792  # ceil(O I 3 / 8) per matrix
    assert quantized_nbytes(model, 4, float_bytes=2) == 3288 + 315 * 2 + 448 * 2


# ------------------------------------------------------------------------------------------ activations

def test_outlier_ratio_is_largest_over_median_channel():
    def ratio(values):
        return InputStats(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(values), 1).outlier_ratio()

    assert ratio([1.0, 2.0, 10.0]) == pytest.approx(5.0)
    assert ratio([0.25, 0.5, 4.0]) == pytest.approx(8.0)  # a median below 1 is not clamped
    assert ratio([1.0, 2.0, 3.0, 10.0]) == pytest.approx(5.0)  # even count: torch's median is the lower middle
    assert ratio([0.0, 0.0, 3.0]) == pytest.approx(3e12)  # a zero median: divided by 1e-12, not by 0


def test_observe_inputs_accumulates_over_batches_of_any_shape():
    lin = nn.Linear(2, 1)
    batches = [torch.tensor([[[1.0, -5.0], [2.0, 0.0]]]),  # (1, 2, 2): the lowest value, channel 1's largest |x|
               torch.tensor([[-3.0, 4.0]]),  # (1, 2): the highest value, channel 0's largest |x|
               torch.tensor([[0.5, 0.5]])]
    s = observe_inputs(lin, batches, {"lin": lin})["lin"]
    assert float(s.lo) == -5.0 and float(s.hi) == 4.0 and s.channel_absmax.tolist() == [3.0, 5.0]
    assert s.n_tokens == 4
    assert not lin._forward_pre_hooks  # the hooks are removed


def test_observe_inputs_defaults_to_a_gpts_block_linears():
    model = tiny_gpt()
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(12))
    stats = observe_inputs(model, [idx])
    assert list(stats) == list(block_linears(model))  # not lm_head
    seen = {}
    hook = model.transformer.h[1].mlp.c_proj.register_forward_pre_hook(lambda m, i: seen.setdefault("x", i[0].detach()))
    model(idx)
    hook.remove()
    s = stats["transformer.h.1.mlp.c_proj"]
    assert float(s.lo) == float(seen["x"].min()) and float(s.hi) == float(seen["x"].max()) and s.n_tokens == 16


def test_observe_inputs_rejects_missing_and_uncalled_modules():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no modules to observe"):
        observe_inputs(nn.Sequential(nn.ReLU()), [torch.zeros(1, 2)])
    with pytest.raises(ValueError, match="no modules to observe"):
        observe_inputs(model, [torch.zeros(1, 2)], {})
    with pytest.raises(ValueError, match="never called"):
        observe_inputs(model, [torch.zeros(1, 2)], {"0": model[0], "other": nn.Linear(2, 2)})


class _ModeRecorder(nn.Module):
    """A Linear that records whether it ran in training mode and under autograd."""

    def __init__(self):
        super().__init__()
        self.lin, self.seen = nn.Linear(3, 2), []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.lin(x)


@pytest.mark.parametrize("training", [True, False])
def test_calibration_runs_in_eval_mode_without_gradients_and_restores_the_mode(training):
    model = _ModeRecorder().train(training)
    observe_inputs(model, [torch.zeros(1, 3)])
    input_hessian(model, model.lin, [torch.zeros(1, 3), torch.ones(2, 3)])
    assert model.seen == [(False, False)] * 3 and model.training == training and model.lin.training == training
    assert not model.lin._forward_pre_hooks


def test_activation_qparams_hand_computed_for_every_option():
    s, z = activation_qparams(-1.0, 3.0, 4)  # 16 levels over [-1, 3]: scale 4 / 15, zero round(3.75) = 4
    assert float(s) == pytest.approx(4 / 15) and float(z) == 4.0
    s, z = activation_qparams(-1.0, 3.0)  # default 8 bits affine
    assert float(s) == pytest.approx(4 / 255) and float(z) == 64.0  # round(63.75)
    s, z = activation_qparams(-1.0, 3.0, 8, symmetric=True)
    assert float(s) == pytest.approx(3 / 127) and float(z) == 0.0
    s, z = activation_qparams(-2.0, -0.5)  # all negative: stretched up to 0, zero point at the top
    assert float(s) == pytest.approx(2 / 255) and float(z) == 255.0
    s, z = activation_qparams(2.0, 2.0)  # lo == hi is allowed
    assert float(s) == pytest.approx(2 / 255) and float(z) == 0.0
    s, z = activation_qparams(0.0, 0.0)
    assert float(s) == 1.0 and float(z) == 0.0
    s, z = activation_qparams(torch.tensor([-1.0, 0.0], dtype=torch.float64),
                              torch.tensor([3.0, 5.1], dtype=torch.float64))
    assert s.dtype == torch.float32 and z.dtype == torch.float32  # float32, as torch.ao's observers
    assert s.tolist() == pytest.approx([4 / 255, 5.1 / 255]) and z.tolist() == [64.0, 0.0]  # one per element
    with pytest.raises(ValueError, match="lo must be ≤ hi"):
        activation_qparams(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5]))


def test_quantize_activation_rounds_ties_to_even_and_clips_both_ends():
    x = torch.tensor([-100.0, -5.25, -5.0, 0.25, 0.75, 1.25, 0.0, 122.5, 123.0, 200.0], dtype=torch.float64)
    q = quantize_activation(x, 0.5, 10)  # default: 8-bit affine, uint8
    assert q.dtype == torch.uint8
    assert q.tolist() == [0, 0, 0, 10, 12, 12, 10, 255, 255, 255]  # x / 0.5 + 10; 0.5 → 0, 1.5 → 2, 2.5 → 2
    q4 = quantize_activation(x, torch.tensor(0.5), torch.tensor(10.0), 4)
    assert q4.dtype == torch.int8 and q4.tolist() == [0, 0, 0, 10, 12, 12, 10, 15, 15, 15]
    qs = quantize_activation(x, 0.5, 0, 8, symmetric=True)
    assert qs.dtype == torch.int8 and qs.tolist() == [-127, -10, -10, 0, 2, 2, 0, 127, 127, 127]
    # requantize: the same, always affine, 8 bits unless told
    assert requantize(x, 0.5, 10).tolist() == q.tolist() and requantize(x, 0.5, 10).dtype == torch.uint8
    assert requantize(x, 0.5, 10, 4).tolist() == q4.tolist()


def test_quantize_per_token_hand_computed():
    x = torch.tensor([[63.5, -127.0, 31.75, 0.5], [0.0, 0.0, 0.0, 0.0], [2.0, -254.0, 1.0, 3.0]], dtype=torch.float64)
    q, scale = quantize_per_token(x)  # default 8 bits: scale max|x| / 127
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (3, 1)
    assert scale.flatten().tolist() == [1.0, 1.0, 2.0]  # an all-zero token: scale 1
    assert q.tolist() == [[64, -127, 32, 0], [0, 0, 0, 0], [1, -127, 0, 2]]  # ties to even: 63.5 → 64, 0.5 → 0
    q4, s4 = quantize_per_token(torch.tensor([[1.25, -3.5, 0.75]]), 4)  # 4 bits: scale 3.5 / 7
    assert s4.tolist() == [[0.5]] and q4.tolist() == [[2, -7, 2]]  # 2.5 → 2, 1.5 → 2
    q1, s1 = quantize_per_token(torch.tensor([63.5, -127.0]))  # a single token (I,)
    assert q1.tolist() == [64, -127] and s1.tolist() == [1.0]


@pytest.mark.parametrize("bad", [torch.tensor(1.0), torch.zeros(2, 3, dtype=torch.int32), [[1.0, 2.0]]])
def test_quantize_per_token_rejects_scalars_integers_and_non_tensors(bad):
    with pytest.raises(ValueError, match="x must be a float tensor"):
        quantize_per_token(bad)


# ------------------------------------------------------------------------------------------ integer matmul edges

def _dequantized_product(xq, xs, xz, wq, ws, wz, b=None):
    """(s_x (x_q - z_x)) (s_w (w_q - z_w))ᵀ + b in float64, the definition integer_linear computes."""
    def col(t, n):
        t = torch.as_tensor(t, dtype=torch.float64).flatten()
        return t.expand(n)[:, None] if t.numel() == 1 else t[:, None]

    N, O = xq.shape[0], wq.shape[0]
    y = (col(xs, N) * (xq.double() - col(xz, N))) @ (col(ws, O) * (wq.double() - col(wz, O))).T
    return y if b is None else y + b.double()


def test_integer_linear_defaults_dtypes_and_scalar_forms():
    g = torch.Generator().manual_seed(13)
    xq = torch.randint(0, 256, (3, 6), generator=g).to(torch.uint8)
    wq = torch.randint(-127, 128, (4, 6), generator=g).to(torch.int8)
    ref = _dequantized_product(xq, 0.1, 7, wq, 0.2, 0)
    y = integer_linear(xq, 0.1, 7, wq, 0.2)  # default: w_zero 0, no bias
    assert y.dtype == torch.float32 and y.shape == (3, 4)
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-5)
    # one value given as a 0-d, (1,) or (1, 1) tensor, per-row values as (N,) or (N, 1), float64 scales and a
    # float zero point: the same float32 result
    xs = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    ref = _dequantized_product(xq, xs, torch.tensor(7.0), wq, torch.tensor([0.5]), 2, b)
    for xs_form, ws_form, wz_form in ((xs, torch.tensor([0.5], dtype=torch.float64), 2),
                                       (xs[:, None], torch.tensor(0.5), torch.tensor([[2]])),
                                       (xs, 0.5, torch.tensor(2.0))):
        y = integer_linear(xq, xs_form, torch.tensor(7.0), wq, ws_form, wz_form, b)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-5)


def test_integer_linear_int32_activations_with_int8_weights_use_the_int32_product():
    g = torch.Generator().manual_seed(14)
    xq = torch.randint(0, 256, (5, 8), generator=g, dtype=torch.int32)  # values above 127: not int8
    wq = torch.randint(-127, 128, (3, 8), generator=g).to(torch.int8)
    for x_form, w_form in ((xq, wq), (xq.to(torch.int16), wq), (xq.to(torch.uint8), wq.int()), (xq.long(), wq.long())):
        torch.testing.assert_close(integer_linear(x_form, 0.5, 3, w_form, 0.25, 1).double(),
                                   _dequantized_product(xq, 0.5, 3, wq, 0.25, 1), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("which", ["xq", "wq"])
@pytest.mark.parametrize("bad", [torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.bool),
                                 torch.zeros(4, dtype=torch.int8),
                                 torch.zeros(1, 3, 4, dtype=torch.int8), [[1, 2, 3, 4]]])
def test_integer_linear_rejects_non_integer_or_non_2d_operands(which, bad):
    ok = torch.zeros(3, 4, dtype=torch.int8)
    args = (bad, 1.0, 0, ok, 1.0) if which == "xq" else (ok, 1.0, 0, bad, 1.0)
    with pytest.raises(ValueError, match=f"^integer_linear: {which} must be a 2-D integer tensor"):
        integer_linear(*args)


def test_integer_linear_checks_bias_and_per_row_lengths():
    xq, wq = torch.ones(3, 4, dtype=torch.int8), torch.ones(2, 4, dtype=torch.int8)
    for bad_bias in (torch.zeros(3), torch.zeros(2, 1), torch.zeros(1)):
        with pytest.raises(ValueError, match=r"bias must have shape \(O,\) = \(2,\)"):
            integer_linear(xq, 1.0, 0, wq, 1.0, 0, bad_bias)
    assert integer_linear(xq, 1.0, 0, wq, 1.0, 0, torch.tensor([1.0, -1.0])).tolist() == [[5.0, 3.0]] * 3
    for kw, bad in (("x_zero", torch.zeros(2)), ("x_scale", torch.ones(2)), ("w_scale", torch.ones(3)),
                    ("w_zero", torch.zeros(3))):
        args = dict(x_scale=1.0, x_zero=0, w_scale=1.0, w_zero=0) | {kw: bad}
        with pytest.raises(ValueError, match=f"^integer_linear: {kw} must hold 1 value"):
            integer_linear(xq, wq=wq, **args)
    # a single token (N = 1) with one value per token is fine
    assert integer_linear(xq[:1], torch.tensor([2.0]), torch.tensor([1]), wq, 1.0).tolist() == [[0.0, 0.0]]


# ------------------------------------------------------------------------------------------ Int8Linear edges

def test_int8_linear_token_mode_is_per_token_symmetric_written_out():
    g = torch.Generator().manual_seed(15)
    lin = nn.Linear(8, 5)
    x = torch.randn(2, 3, 8, generator=g) * torch.tensor([1.0, 10.0, 0.1])[:, None]
    y = Int8Linear(lin, "token")(x)
    x2, w = x.reshape(6, 8), lin.weight.detach()
    xs, ws = x2.abs().amax(1, keepdim=True) / 127, w.abs().amax(1, keepdim=True) / 127  # float32, as stored
    xq, wq = torch.round(x2 / xs), torch.round(w / ws)
    ref = (xs.double() * xq.double()) @ (ws.double() * wq.double()).T + lin.bias.detach().double()
    assert y.shape == (2, 3, 5)
    torch.testing.assert_close(y.reshape(6, 5).double(), ref, rtol=1e-6, atol=1e-6)


def test_int8_linear_buffers_default_mode_and_no_bias():
    g = torch.Generator().manual_seed(16)
    lin = nn.Linear(6, 4, bias=False)
    calib = [torch.randn(5, 6, generator=g) + 0.5]
    stats = observe_inputs(lin, calib, {"lin": lin})["lin"]
    m = Int8Linear(lin, stats=stats)  # default mode: static
    assert m.mode == "static" and m.bias is None
    obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    obs(calib[0])
    scale, zero = obs.calculate_qparams()
    assert torch.equal(m.x_scale.reshape(1), scale) and torch.equal(m.x_zero.reshape(1), zero.float())
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                   quant_min=-127, quant_max=127)
    obs(lin.weight.detach())
    assert m.wq.dtype == torch.int8 and m.wq.shape == (4, 6) and torch.equal(m.w_scale, obs.calculate_qparams()[0])
    assert set(m.state_dict()) == {"wq", "w_scale", "x_scale", "x_zero"}
    x = torch.randn(3, 6, generator=g)
    ref = integer_linear(quantize_activation(x, scale, zero), scale, zero, m.wq, m.w_scale)
    assert torch.equal(m(x), ref)
    assert repr(m).endswith("(in_features=6, out_features=4, activations=static)")


def test_int8_linear_copies_the_bias():
    lin = nn.Linear(3, 2)
    m = Int8Linear(lin, "dynamic")
    bias = lin.bias.detach().clone()
    with torch.no_grad():
        lin.bias.add_(1.0)  # the float layer changes later: the int8 one keeps its own copy
    assert torch.equal(m.bias, bias)


@pytest.mark.parametrize("mode", ["static", "dynamic", "token"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_int8_linear_returns_the_input_dtype(mode, dtype):
    lin = nn.Linear(4, 3)
    stats = observe_inputs(lin, [torch.randn(5, 4)], {"l": lin})["l"]
    y = Int8Linear(lin, mode, stats)(torch.randn(2, 4).to(dtype))
    assert y.dtype == dtype and y.shape == (2, 3)


def test_int8_linear_rejects_non_linears_and_wrong_widths():
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        Int8Linear(nn.Conv1d(2, 2, 1), "dynamic")
    m = Int8Linear(nn.Linear(4, 3), "dynamic")
    for bad in (torch.zeros(2, 5), torch.zeros(2, 3)):
        with pytest.raises(ValueError, match="in_features=4"):
            m(bad)


def test_int8_linears_static_scales_are_the_float_models_minmax():
    model = tiny_gpt()
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(17))
    observers, hooks = {}, []
    for name, lin in block_linears(model).items():
        observers[name] = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
        hooks.append(lin.register_forward_pre_hook(lambda m, i, o=observers[name]: o(i[0])))
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    out = int8_linears_(copy.deepcopy(model), batches=[idx])  # default mode: static
    for name, obs in observers.items():
        m = out.get_submodule(name)
        scale, zero = obs.calculate_qparams()
        assert isinstance(m, Int8Linear) and m.mode == "static", name
        assert torch.equal(m.x_scale.reshape(1), scale) and torch.equal(m.x_zero.reshape(1), zero.float()), name
    assert isinstance(out.lm_head, nn.Linear) and not isinstance(out.lm_head, Int8Linear)
    for mode in ("dynamic", "token"):
        m = int8_linears_(copy.deepcopy(model), mode)  # no calibration needed
        assert all(x.mode == mode for x in m.modules() if isinstance(x, Int8Linear))
    with pytest.raises(ValueError, match="mode must be one of"):
        int8_linears_(copy.deepcopy(model), "Static", [idx])
    with pytest.raises(ValueError, match="needs calibration batches"):
        int8_linears_(copy.deepcopy(model))


# ------------------------------------------------------------------------------------------ GPTQ edges

def test_gptq_defaults_are_4_bit_symmetric_per_channel_with_1_percent_damping():
    X = _correlated_inputs(100, 16, 18)
    H = 2 * X.T.double() @ X.double() / 100
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(19))
    q = gptq_quantize(w, H)
    assert q.bits == 4 and q.q.dtype == torch.int8 and q.scale.shape == (6, 1, 1) and not bool(q.zero_point.any())
    torch.testing.assert_close(q.dequantize().double(), _obs_reference(w, H, 4, None, True, 0.01), rtol=0, atol=1e-6)
    # damping matters here: 10x more changes the result
    assert not torch.allclose(q.dequantize().double(), _obs_reference(w, H, 4, None, True, 0.1), atol=1e-6)


@pytest.mark.parametrize("block_size", [3, 10, 19])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_groups_are_whole_whatever_the_block_size(block_size, symmetric):
    """Lazy blocks that are not a multiple of the group size are rounded to whole groups: the result is
    the OBS update written out, group by group."""
    X = _correlated_inputs(200, 24, 0)
    H = 2 * X.T.double() @ X.double() / 200
    w = torch.randn(10, 24, generator=torch.Generator().manual_seed(1))
    ours = gptq_quantize(w, H, 3, 8, symmetric, block_size=block_size)
    assert ours.q.shape == (10, 3, 8) and ours.scale.shape == (10, 3, 1)
    torch.testing.assert_close(ours.dequantize().double(), _obs_reference(w, H, 3, 8, symmetric), rtol=0, atol=1e-6)


def test_gptq_per_tensor_grid_is_from_the_whole_original_matrix():
    X = _correlated_inputs(200, 12, 20)
    H = 2 * X.T.double() @ X.double() / 200
    w = torch.randn(5, 12, generator=torch.Generator().manual_seed(21)).double()
    q = gptq_quantize(w, H, 4, "tensor", block_size=5)
    scale = float(w.abs().max()) / 7
    assert q.scale.shape == (1, 1, 1) and float(q.scale) == pytest.approx(scale, rel=1e-6)
    assert q.q.shape == (1, 1, 60)
    torch.testing.assert_close(q.dequantize().double(), _obs_reference(w, H, 4, per_tensor=True), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits,symmetric", [(8, False), (8, True), (2, False)])
def test_gptq_output_has_the_layout_of_quantize_and_leaves_w_and_h_alone(bits, symmetric):
    X = _correlated_inputs(50, 8, 22)
    w = torch.randn(3, 8, generator=torch.Generator().manual_seed(23)).double()
    H = (2 * X.T @ X / 50).double()
    w0, H0 = w.clone(), H.clone()
    q = gptq_quantize(w, H, bits, 4, symmetric)
    assert torch.equal(w, w0) and torch.equal(H, H0)  # inputs left alone (float64: no copy on the way in)
    rtn = quantize(w, bits, 4, symmetric)
    assert q.q.dtype == rtn.q.dtype and q.q.shape == rtn.q.shape and q.bits == bits and q.shape == w.shape
    assert q.scale.dtype == torch.float32 and q.zero_point.dtype == torch.float32
    assert q.nbytes() == rtn.nbytes()


def test_gptq_dead_inputs_get_unit_hessian_before_damping():
    """As GPTQ's reference code: H_jj = 1 for an input that is always 0, then the damping is a fraction of the
    mean diagonal (that 1 included); the column's weights are 0. Inputs small so the 1 weighs in the mean."""
    X = _correlated_inputs(100, 12, 5) * 0.02
    X[:, 3] = 0
    H = 2 * X.T.double() @ X.double() / 100
    w = torch.randn(64, 12, generator=torch.Generator().manual_seed(24))
    q = gptq_quantize(w, H, 3, damp=0.1)
    w0, H1, H2 = w.clone(), H.clone(), H.clone()
    w0[:, 3] = 0
    H1[3, 3], H2[3, 3] = 1.0, 2.0
    ref = _obs_reference(w0, H1, 3, damp=0.1)
    torch.testing.assert_close(q.dequantize().double(), ref, rtol=0, atol=1e-6)
    assert not torch.allclose(ref, _obs_reference(w0, H2, 3, damp=0.1), atol=1e-6)  # the 1 matters here


@pytest.mark.parametrize("bad", [{"damp": float("nan")}, {"damp": -1e-9}, {"block_size": 0}, {"block_size": -3},
                                 {"block_size": 2.0}, {"block_size": None}])
def test_gptq_rejects_bad_damping_and_block_sizes(bad):
    with pytest.raises(ValueError, match="must be"):
        gptq_quantize(torch.randn(2, 4), torch.eye(4), 4, **bad)


@pytest.mark.parametrize("bad_H", [torch.eye(4)[:3], torch.eye(4, dtype=torch.long), torch.eye(5), torch.eye(4)[None],
                                   [[1.0]]])
def test_gptq_rejects_a_hessian_of_the_wrong_shape_or_type(bad_H):
    with pytest.raises(ValueError, match="H must be a float"):
        gptq_quantize(torch.randn(2, 4), bad_H, 4)


def test_gptq_accepts_the_smallest_damping_and_block():
    q = gptq_quantize(torch.randn(2, 4), torch.eye(4), 4, damp=0.0, block_size=1)
    assert q.q.shape == (2, 1, 4)
    with pytest.raises(ValueError, match="bits must be one of"):
        gptq_quantize(torch.randn(2, 4), torch.eye(4), 1)
    with pytest.raises(ValueError, match="granularity must be"):
        gptq_quantize(torch.randn(2, 4), torch.eye(4), 4, 0)


def test_input_hessian_through_a_callable_stops_at_the_module_and_is_float64():
    lin, after = nn.Linear(3, 2), nn.Linear(2, 2)
    calls = []
    after.register_forward_pre_hook(lambda m, i: calls.append(1))
    batches = [torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[[0.0, 1.0, -1.0], [1.0, 1.0, 1.0]]])]
    H = input_hessian(lambda x: after(lin(x)), lin, batches)
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    assert H.dtype == torch.float64 and torch.equal(H, 2 * x.T @ x / 3)
    assert not calls and not lin._forward_pre_hooks  # the rest of the pass skipped, the hook removed
    with pytest.raises(ValueError, match="never called the module"):
        input_hessian(lin, after, batches)
    with pytest.raises(ValueError, match="calibration batches are empty"):
        input_hessian(lin, lin, [])


def test_gptq_model_defaults_and_options_match_layer_by_layer_gptq():
    model = tiny_gpt(3).train()
    g = torch.Generator().manual_seed(25)
    batches = [torch.randint(0, 11, (2, 8), generator=g)]
    default = gptq_quantize_model_(copy.deepcopy(model), batches)
    explicit = gptq_quantize_model_(copy.deepcopy(model), batches, 4, "channel", True, 0.01, 128)
    assert default.training  # the mode is restored, train or eval
    assert not gptq_quantize_model_(copy.deepcopy(model).eval(), batches, 3).training
    for a, b in zip(block_linears(default).values(), block_linears(explicit).values()):
        assert torch.equal(a.weight, b.weight)
    # the options reach gptq_quantize: by hand through the whole model, 3 bits, groups of 8, affine, damp 0.1
    out = gptq_quantize_model_(copy.deepcopy(model), batches, 3, 8, False, 0.1, 4)
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for lin in block_linears(ref).values():
            H = input_hessian(ref, lin, batches)
            lin.weight.copy_(gptq_quantize(lin.weight, H, 3, 8, False, 0.1, 4).dequantize())
    for (name, a), b in zip(block_linears(out).items(), block_linears(ref).values()):
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-6, msg=name)
    with pytest.raises(ValueError):  # ids out of the vocabulary
        gptq_quantize_model_(copy.deepcopy(model), [torch.full((1, 4), 11)], 4)


# ------------------------------------------------------------------------------------------ QAT edges

def test_ste_forward_and_gradient_at_the_range_ends_and_ties():
    # scale 1, zero 0, levels [-2, 2]: 2.5 rounds to 2 (inside, gradient 1), 2.6 to 3 (clipped, gradient 0)
    x = torch.tensor([-3.0, -2.6, -2.5, -2.0, 0.5, 2.0, 2.5, 2.6, 3.0], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    y = fake_quantize_ste(x, scale, 0.0, -2, 2)
    assert y.tolist() == [-2.0, -2.0, -2.0, -2.0, 0.0, 2.0, 2.0, 2.0, 2.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert scale.grad is None  # no gradient to the scale
    x32 = x.detach().float().requires_grad_()
    ref = torch.fake_quantize_per_tensor_affine(x32, 1.0, 0, -2, 2)
    ref.sum().backward()
    assert x32.grad.tolist() == x.grad.tolist()
    # a zero point shifts the range: levels [-2, 2] with zero 1 hold x in [-3, 1]
    x = torch.tensor([-3.4, -3.6, 1.4, 1.6], requires_grad=True)
    y = fake_quantize_ste(x, 1.0, 1.0, -2, 2)
    assert y.tolist() == [-3.0, -3.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_ste_output_has_the_inputs_dtype_whatever_the_scales():
    x = torch.tensor([0.3, -0.7, 1.9])
    y = fake_quantize_ste(x, torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64), -4, 4)
    assert y.dtype == torch.float32 and y.tolist() == [0.5, -0.5, 1.5]  # 1.9 / 0.5 + 1 → 5, clipped to 4
    # (1-D float64 scales or zero points would promote a float32 result to float64)
    y = fake_quantize_ste(x, torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64), torch.tensor([1, 1, 1]), -4, 4)
    assert y.dtype == torch.float32
    y = fake_quantize_ste(x, 0.5, torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), -4, 4)
    assert y.dtype == torch.float32 and y.tolist() == [0.5, -0.5, 1.5]


@pytest.mark.parametrize("qmin,qmax", [(0, 0), (3, 2), (0.0, 7), (0, 7.0), (None, 7), ("0", 7)])
def test_ste_needs_integer_qmin_below_qmax(qmin, qmax):
    with pytest.raises(ValueError, match="qmin < qmax"):
        fake_quantize_ste(torch.zeros(3), 1.0, 0.0, qmin, qmax)


@pytest.mark.parametrize("scale", [0.0, -0.1, torch.tensor([0.1, 0.0]), torch.tensor([-1.0, 1.0])])
def test_ste_rejects_scales_that_are_not_positive(scale):
    with pytest.raises(ValueError, match="every scale must be > 0"):
        fake_quantize_ste(torch.zeros(2), scale, 0.0, -7, 7)


def test_ste_accepts_a_two_level_range_and_tiny_scales():
    tiny = 2.0**-100
    assert fake_quantize_ste(torch.tensor([-1.0, 0.4, 0.6]), tiny, 0.0, 0, 1).tolist() == [0.0, tiny, tiny]


@pytest.mark.parametrize("kwargs,k,symmetric", [({}, None, True), ({"granularity": "tensor"}, -1, True),
                                               ({"granularity": 8, "symmetric": False}, 8, False)])
def test_weight_fake_quant_equals_the_formula(w, kwargs, k, symmetric):
    fq = WeightFakeQuant(3, **kwargs)  # default: per channel, symmetric
    torch.testing.assert_close(fq(w), _rtn_reference(w, 3, symmetric, w.numel() if k == -1 else k), rtol=0, atol=0)
    assert repr(fq) == (f"WeightFakeQuant(bits=3, granularity={kwargs.get('granularity', 'channel')!r}, "
                        f"symmetric={symmetric})")
    with pytest.raises(ValueError, match="group size 40 does not divide"):
        WeightFakeQuant(3, 40)(w)


def test_qat_prepare_defaults_and_options_quantize_as_documented():
    model = tiny_gpt(4)
    qat = qat_prepare_(copy.deepcopy(model))  # default: 4 bits, per channel, symmetric, embeddings too
    for n, p in compressible_weights(model).items():
        mod = qat.get_submodule(n.rpartition(".")[0])
        torch.testing.assert_close(mod.weight, _rtn_reference(p, 4), rtol=0, atol=0, msg=n)
    assert torch.equal(qat.lm_head.weight, qat.transformer.wte.weight)  # the tied head sees the quantized table
    qat = qat_prepare_(copy.deepcopy(model), 3, 8, False)
    for n, p in compressible_weights(model).items():
        mod = qat.get_submodule(n.rpartition(".")[0])
        torch.testing.assert_close(mod.weight, _rtn_reference(p, 3, False, 8), rtol=0, atol=0, msg=n)


def test_qat_prepare_leaves_an_untied_head_in_float():
    model = tiny_gpt()
    model.lm_head.weight = nn.Parameter(model.transformer.wte.weight.detach().clone())  # untied
    head = model.lm_head.weight.detach().clone()
    qat_prepare_(model, 4)
    assert not parametrize.is_parametrized(model.lm_head) and torch.equal(model.lm_head.weight, head)
    assert parametrize.is_parametrized(model.transformer.wte)


def test_qat_prepare_refuses_a_model_with_any_prepared_weight():
    only_blocks = qat_prepare_(tiny_gpt(), 4, blocks_only=True)
    assert not parametrize.is_parametrized(only_blocks.transformer.wte)
    with pytest.raises(ValueError, match="already prepared"):
        qat_prepare_(only_blocks, 4)
    only_table = tiny_gpt()
    parametrize.register_parametrization(only_table.transformer.wte, "weight", WeightFakeQuant(4))
    with pytest.raises(ValueError, match="already prepared"):
        qat_prepare_(only_table, 4)


def test_qat_finalize_blocks_only_and_unprepared_models():
    model = tiny_gpt(5)
    qat = qat_finalize_(qat_prepare_(copy.deepcopy(model), 3, blocks_only=True))
    assert not any(parametrize.is_parametrized(m) for m in qat.modules())
    assert set(qat.state_dict()) == set(model.state_dict())
    for n, p in compressible_weights(model).items():
        expected = _rtn_reference(p, 3) if n.startswith("transformer.h.") else p
        torch.testing.assert_close(qat.get_parameter(n), expected.detach(), rtol=0, atol=0, msg=n)
    plain = copy.deepcopy(model)
    assert qat_finalize_(plain) is plain  # nothing prepared: nothing changes
    for k, v in plain.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


@pytest.mark.parametrize("x_dtype", [torch.int8, torch.uint8])
def test_int_products_are_the_int32_matrix_product_in_int32(x_dtype):
    """Σ_k x[n, k] w[o, k] in int32 as the docstring says, by the int8 kernel (uint8 shifted by 128 and back)
    or the plain product: the same integers and the same dtype either way."""
    from utils.quantize import _int_products
    g = torch.Generator().manual_seed(0)
    lo, hi = (-128, 128) if x_dtype == torch.int8 else (0, 256)
    x = torch.randint(lo, hi, (32, 16), generator=g).to(x_dtype)
    w = torch.randint(-127, 128, (24, 16), generator=g).to(torch.int8)
    got = _int_products(x, w)
    assert got.dtype == torch.int32
    assert torch.equal(got, x.to(torch.int32) @ w.to(torch.int32).T)


# ---- from the mutation run of utils.quantize at dbe8619
# Each test pins a behaviour a surviving mutant changed, against torch, a formula or values worked out by hand.

@TORCH_QUANTIZED_DEPRECATED
def test_dequantize_takes_q_minus_zero_point_in_the_scales_dtype():
    """Zero points kept in the storage type (uint8, as torch's quint8 and checkpoints keep them) do not wrap around:
    0 - 128 is -128, not 128 in uint8. Reference: torch's quantized tensor holding the same integers."""
    ref = torch.quantize_per_tensor(torch.tensor([-64.0, 63.5, 0.0, 1.0]), 0.5, 128, torch.quint8)
    q = Quantized(ref.int_repr()[None, None], torch.tensor([[[0.5]]]), torch.tensor([[[128]]], dtype=torch.uint8), 8,
                  torch.Size([1, 4]))
    out = q.dequantize()
    assert out.dtype == torch.float32 and out.tolist() == [ref.dequantize().tolist()] == [[-64.0, 63.5, 0.0, 1.0]]


def test_affine_zero_point_stays_on_the_grid_when_the_scale_is_subnormal():
    """A range so narrow that its scale is subnormal: -lo / scale can round past 2^b - 1, and the zero point is clamped
    to the top level (as torch.ao's observers clamp it), so that 0 stays exact. By hand: lo = -256 · 2^-149, hi = 0 at
    8 bits: scale 256 / 255 · 2^-149 is stored as 2^-149, -lo / scale = 256, clamped to 255."""
    tiny = 2.0**-149
    if float(torch.tensor(tiny) * 1.0) == 0.0:
        pytest.skip("this process flushes subnormal floats to zero")
    s, z = activation_qparams(-256 * tiny, 0.0)
    assert float(s) == tiny and float(z) == 255.0
    assert float(activation_qparams(-16 * tiny, 0.0, 4)[1]) == 15.0
    q = quantize(torch.tensor([[-256 * tiny, 0.0]]), 8, "channel", symmetric=False)
    assert q.zero_point.flatten().tolist() == [255.0] and q.q.flatten().tolist() == [0, 255]
    assert q.dequantize()[0, 1] == 0.0


@pytest.mark.parametrize("bad,got", [(torch.zeros(3, 4, 5), r"shape \(3, 4, 5\), dtype torch.float32"),
                                     (torch.zeros(2, 3, dtype=torch.int32), r"shape \(2, 3\), dtype torch.int32"),
                                     ([[1.0, 2.0, 3.0]], "list")])
def test_weight_errors_name_the_function_and_what_they_got(bad, got):
    for who, call in (("quantize", lambda: quantize(bad, 8)), ("gptq_quantize", lambda: gptq_quantize(bad, torch.eye(3)))):
        with pytest.raises(ValueError, match=rf"^{who}: w must be a 2-D float tensor \(O, I\), got {got}$"):
            call()


@pytest.mark.parametrize("who", ["quantize", "gptq_quantize", "WeightFakeQuant"])
def test_granularity_errors_name_the_function(who):
    w = torch.ones(4, 6)
    call = {"quantize": lambda g: quantize(w, 4, g), "gptq_quantize": lambda g: gptq_quantize(w, torch.eye(6), 4, g),
            "WeightFakeQuant": lambda g: WeightFakeQuant(4, g)(w)}[who]
    with pytest.raises(ValueError, match=rf"^{who}: group size 4 does not divide the row length I=6; pick a divisor "
                                         r"of 6 \(e.g. 2\) or granularity='channel'$"):
        call(4)
    with pytest.raises(ValueError, match=rf"^{who}: granularity must be 'tensor', 'channel' or a positive int group "
                                         r"size, got 'row'$"):
        call("row")


@pytest.mark.parametrize("H,kwargs,message", [
    (torch.eye(3), {}, r"H must be a float \(I, I\) = \(4, 4\) matrix"),
    (torch.eye(4), {"damp": -1.0}, "damp must be ≥ 0"),
    (torch.eye(4), {"block_size": 0}, "block_size must be a positive int, got 0$"),
    (-torch.eye(4), {"damp": 0.0}, r"H is not positive definite even after damping \(0.0\); raise damp$")])
def test_gptq_errors_name_the_function(H, kwargs, message):
    with pytest.raises(ValueError, match=f"^gptq_quantize: {message}"):
        gptq_quantize(torch.ones(2, 4), H, 4, **kwargs)


def test_empty_calibration_errors_name_the_function():
    lin = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="^observe_inputs: the calibration batches are empty$"):
        observe_inputs(lin, [], {"lin": lin})
    with pytest.raises(ValueError, match="^input_hessian: the calibration batches are empty$"):
        input_hessian(lin, lin, iter([]))


def test_run_returns_how_many_batches_ran_stopped_ones_included():
    from utils.quantize import _run, _Stop
    seen = []

    def model(x):
        seen.append(x)
        if x == 2:
            raise _Stop

    assert _run(model, iter([1, 2, 3]), "some_fn") == 3 and seen == [1, 2, 3]
    assert _run(model, [7], "some_fn") == 1
    with pytest.raises(ValueError, match="^some_fn: the calibration batches are empty$"):
        _run(model, [], "some_fn")


def test_observe_inputs_takes_the_lowest_value_from_any_batch():
    """The range of every batch counts, not only the first one's: as torch.ao's MinMaxObserver over the same batches."""
    lin = nn.Linear(2, 1)
    batches = [torch.tensor([[1.0, 2.0]]), torch.tensor([[-3.0, 0.5], [0.0, 0.25]]), torch.tensor([[0.0, 9.0]])]
    s = observe_inputs(lin, batches, {"lin": lin})["lin"]
    obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    for b in batches:
        obs(b)
    assert float(s.lo) == float(obs.min_val) == -3.0 and float(s.hi) == float(obs.max_val) == 9.0
    assert s.channel_absmax.tolist() == [3.0, 9.0] and s.n_tokens == 4


@TORCH_QUANTIZED_DEPRECATED
def test_quantize_activation_takes_scale_and_zero_point_in_float32():
    """A float64 scale is used at float32 precision, as torch's quantizers use it: 1 + 2^-30 is 1 in float32, so 3.5 and
    -1.5 are ties (rounded to even), not just below and above them. A zero point a hair below 3 in float64 is 3."""
    x = torch.tensor([[3.5, 2.5, -1.5, 0.5]])
    s = torch.tensor([1 + 2**-30], dtype=torch.float64)
    ref = torch.quantize_per_channel(x, s, torch.tensor([10]), 0, torch.quint8).int_repr()
    assert ref.tolist() == [[14, 12, 8, 10]]
    for scale in (s, s[:, None]):  # one per token, (N,) or (N, 1)
        assert torch.equal(quantize_activation(x, scale, 10), ref)
    z = torch.tensor([[3 - 2**-30]], dtype=torch.float64)  # float32: 3.0
    assert quantize_activation(torch.zeros(1, 3), 1.0, z).tolist() == [[3, 3, 3]]


@pytest.mark.filterwarnings("error")
def test_integer_linear_with_single_scales_and_zero_points_warns_nothing():
    """One value per tensor is held as a (1, 1) column: transposing it is not the 1-D `.T` that torch deprecates
    (a UserWarning, once per process unless warn_always is set, as here)."""
    xq, wq = torch.full((2, 3), 3, dtype=torch.int8), torch.ones(4, 3, dtype=torch.int8)
    always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        for ws, wz in ((0.25, 2), (torch.tensor(0.25), torch.tensor([2])), (torch.tensor([[0.25]]), torch.tensor(2))):
            y = integer_linear(xq, 0.5, 1, wq, ws, wz)
            torch.testing.assert_close(y.double(), _dequantized_product(xq, 0.5, 1, wq, 0.25, 2), rtol=0, atol=0)
    finally:
        torch.set_warn_always(always)
    assert y.tolist() == [[-0.75] * 4] * 2  # 0.5 · 0.25 · 3 · (3 - 1)(1 - 2)


def test_gptq_damping_is_a_fraction_of_the_mean_diagonal_in_float64():
    """damp · mean(diag H) is added in float64. By hand: diag(201 + 2e-9, -1) has mean 100 + 1e-9, 1% of it is
    1 + 1e-11, which leaves a pivot of 1e-11 > 0 (in float32 the 1e-11 would be lost: a zero pivot); diag(201, -1)
    gets exactly 1 and a zero pivot. A diagonal H spreads no error: the result is round-to-nearest."""
    w = torch.tensor([[0.3, -0.7]])
    q = gptq_quantize(w, torch.diag(torch.tensor([201 + 2e-9, -1.0], dtype=torch.float64)), 4, "tensor")
    assert torch.equal(q.dequantize(), quantize(w, 4, "tensor").dequantize())
    with pytest.raises(ValueError, match=r"^gptq_quantize: H is not positive definite even after damping \(0.01\)"):
        gptq_quantize(w, torch.diag(torch.tensor([201.0, -1.0], dtype=torch.float64)), 4, "tensor")


def test_gptq_default_block_size_is_128_where_the_block_boundary_changes_the_rounding():
    """Lazy blocks change only the order of a float64 sum: column 128 gets an error of 4 to 5 from column 0 and
    one of 4e-16 from column 1. Summed first (column 128 opens the second block of 128) the small one is lost, under
    half an ulp of the large one; subtracted one column at a time (one block of 129, or blocks of 1) it moves a
    weight sitting exactly on a tie (2.5) of the grid. Each row holds another weight next to the tie, so that some
    row is exactly on it whatever the last bits of the Cholesky factors. The default must round as 128 does."""
    import math

    def around(x, n=32):  # n consecutive doubles around x
        out = [x]
        while len(out) < n // 2:
            out.insert(0, math.nextafter(out[0], -math.inf))
        while len(out) < n:
            out.append(math.nextafter(out[-1], math.inf))
        return out

    I, c = 130, 128
    Hinv = torch.eye(I, dtype=torch.float64)  # H⁻¹: column 128 coupled to columns 0 and 1 only
    Hinv[0, c] = Hinv[c, 0] = 16.5
    Hinv[1, c] = Hinv[c, 1] = -1.6e-15
    Hinv[c, c] = 16.5**2 + 1.0
    H = torch.linalg.inv(Hinv)
    H = (H + H.T) / 2
    rows = []
    for err in (0.25, 0.28125, 0.3125):  # column 0's rounding error (scale 1): 16.5 err is in [4, 5.5)
        for wc in around(16.5 * err + 2.5):
            row = torch.zeros(I, dtype=torch.float64)
            row[0], row[1], row[2], row[c] = err, 0.25, 127.0, wc  # column 2 sets the 8-bit scale to 1
            rows.append(row)
    w = torch.stack(rows)
    default = gptq_quantize(w, H, 8, damp=0.0)
    assert torch.equal(default.q, gptq_quantize(w, H, 8, damp=0.0, block_size=128).q)
    assert not torch.equal(default.q, gptq_quantize(w, H, 8, damp=0.0, block_size=1).q)  # the rows do reach the tie


def test_gptq_model_hands_every_option_to_gptq_quantize(monkeypatch):
    """The options reach gptq_quantize as given, the defaults included (blocks of 128, gptq_quantize's own): recorded
    by wrapping gptq_quantize. A bad block size is refused, not ignored."""
    import inspect

    import utils.quantize as uq
    real, seen = uq.gptq_quantize, []

    def spy(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs)
        bound.apply_defaults()  # what gptq_quantize runs with, passed or not
        seen.append(bound.arguments)
        return real(*args, **kwargs)

    monkeypatch.setattr(uq, "gptq_quantize", spy)
    batches = [torch.randint(0, 11, (1, 4), generator=torch.Generator().manual_seed(26))]
    gptq_quantize_model_(tiny_gpt(6), batches)
    gptq_quantize_model_(tiny_gpt(6), batches, 3, 8, False, 0.1, 5)
    options = [tuple(a[k] for k in ("bits", "granularity", "symmetric", "damp", "block_size")) for a in seen]
    assert options == [(4, "channel", True, 0.01, 128)] * 8 + [(3, 8, False, 0.1, 5)] * 8
    with pytest.raises(ValueError, match="^gptq_quantize: block_size must be a positive int, got 0$"):
        gptq_quantize_model_(tiny_gpt(6), batches, block_size=0)


def test_qat_finalize_of_a_tied_model_quantizes_the_shared_table_once():
    """The tied table is quantized once, as the formula says: quantizing affine groups twice moves some values."""
    model = tiny_gpt(5)
    qat = qat_finalize_(qat_prepare_(copy.deepcopy(model), 3, 8, False))
    assert qat.lm_head.weight is qat.transformer.wte.weight
    assert not any(parametrize.is_parametrized(m) for m in qat.modules())
    for n, p in compressible_weights(model).items():
        torch.testing.assert_close(qat.get_parameter(n), _rtn_reference(p, 3, False, 8), rtol=0, atol=0, msg=n)


def test_qat_finalize_of_an_untied_model_leaves_the_head_in_float():
    model = tiny_gpt()
    model.lm_head.weight = nn.Parameter(model.transformer.wte.weight.detach().clone())  # untied
    head, wte = model.lm_head.weight.detach().clone(), model.transformer.wte.weight.detach().clone()
    out = qat_finalize_(qat_prepare_(model, 4))
    assert not any(parametrize.is_parametrized(m) for m in out.modules())
    assert out.lm_head.weight is not out.transformer.wte.weight and torch.equal(out.lm_head.weight, head)
    torch.testing.assert_close(out.transformer.wte.weight, _rtn_reference(wte, 4), rtol=0, atol=0)


def test_gptq_makes_everything_on_the_device_of_its_inputs():
    """Nothing is created on torch's default device (here meta, standing in for a GPU default with CPU tensors): the
    damping term included, without which this H (an input seen twice: singular) has no Cholesky factor."""
    w = torch.tensor([[0.349, 0.33], [1.4, 0.0]])
    H = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    ref = gptq_quantize(w, H, 4, "tensor")
    with torch.device("meta"):
        q = gptq_quantize(w, H, 4, "tensor")
    assert q.q.device.type == "cpu" and torch.equal(q.q, ref.q) and torch.equal(q.dequantize(), ref.dequantize())
    # by hand: scale 1.4 / 7 = 0.2; damping 1% of 1 gives H⁻¹ ∝ [[1.01, -1], [-1, 1.01]]. Row 0: 0.349 → 2 (error
    # -0.051), which moves 0.33 by -0.051 / 1.01 to 0.2795 → 1 (round-to-nearest would give 2)
    assert q.q.reshape(2, 2).tolist() == [[2, 1], [7, 0]]
    assert quantize(w, 4, "tensor").q.reshape(2, 2).tolist() == [[2, 2], [7, 0]]
