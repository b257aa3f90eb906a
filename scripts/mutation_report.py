"""Write tests/MUTATION.md from the mutation tool's results (`make mutate`; see scripts/mutate.py).

    python -m scripts.mutation_report          # after `make mutate`: reads mutants/, writes tests/MUTATION.md

Per module: mutants generated, killed, timed out, survived (no test noticed), without tests (no unit test calls
the function), not yet checked; the score is (killed + timed out) / (all − equivalent). Every survivor is
listed with its change; a survivor is "equivalent" only if it changes no behaviour, with a one-line reason in
EQUIVALENT below, keyed by mutant name and the hash of its function (an entry whose function has changed is
reported stale, never counted). Modules not yet run are listed as such, never scored. `mutants/` is
a scratch folder: a module that was run at an earlier sitting but not in this `mutants/` keeps its row and section
from the report it writes over (the row names the commit it was run at), so the report grows module by module.
"""
from __future__ import annotations

import ast
import difflib
import json
import re
import sys
from collections import Counter
from pathlib import Path

from scripts.setup_cell import ROOT

MUTANTS = ROOT / "mutants"
REPORT = ROOT / "tests" / "MUTATION.md"
TARGET, TARGET_ALL = 0.90, 0.95

# mutant name → (hash of its function when judged, why the mutant changes no behaviour)
EQUIVALENT: dict[str, tuple[str, str]] = {  # judged on the run at 60afb5b
    'utils.checkpoints.x_load_char_gpt__mutmut_14': ('8574b2dc0c75', "'CPU' to 'cpu' in the retraining hint of an error message: wording only"),
    'utils.checkpoints.x_load_shapes_clip__mutmut_14': ('a4558d000baf', "'CPU' to 'cpu' in the retraining hint of an error message: wording only"),
    'utils.checkpoints.x__shapes_clip_batches__mutmut_5': ('6810724989ee', "captioned_shapes's seed defaults to 0: the same call"),
    'utils.checkpoints.x__shapes_clip_batches__mutmut_13': ('6810724989ee', "ids are cut after the longest caption's end-of-text token (19 tokens at most): the padding length never shows"),
    'utils.checkpoints.x__shapes_clip_batches__mutmut_15': ('6810724989ee', "ids are cut after the longest caption's end-of-text token (19 tokens at most): the padding length never shows"),
    'utils.checkpoints.x__shapes_clip_batches__mutmut_16': ('6810724989ee', "ids are cut after the longest caption's end-of-text token (19 tokens at most): the padding length never shows"),
    'utils.speculative.x_verify_greedy__mutmut_15': ('5cab7ed5627d', 'target_logits is checked to be 2-D just above: axis 1 is the last axis'),
    'utils.speculative.x__probs__mutmut_25': ('ce8909597c88', 'applied to logits.reshape(-1, V), which is 2-D: axis 1 is the last axis'),
    'utils.speculative.x_compare_speed__mutmut_35': ('f299fd1b9685', 'the value sync() returns is never used'),
    'utils.checkpoints.x_char_data__mutmut_6': ('4df57462dd70', "train_val_split's default fraction is 0.9: the same call"),
    'utils.data.x__candidates__mutmut_4': ('dee5baa60e4a', 'paths is the empty list just before: += and = build the same list'),
    'utils.data.x_tiny_shakespeare__mutmut_8': ('4f7cc95273a2', "'UTF-8' and 'utf-8' name the same codec"),
    'utils.runtime.x_pick_device__mutmut_26': ('a52bc8272d63', "torch.backends has mps in every torch the book supports (>= 2.1): getattr's default is never used"),
    'utils.runtime.x_time_per_call__mutmut_12': ('925f7427eade', "the no-op sync's return value is never used"),
    'utils.shapes.x_captioned_shapes__mutmut_10': ('aeb9b82577a5', 'the name passed to _check_size appears only in its error message'),
    'utils.shapes.x_captioned_shapes__mutmut_13': ('aeb9b82577a5', 'the name passed to _check_size appears only in its error message'),
    'utils.shapes.x_captioned_shapes__mutmut_14': ('aeb9b82577a5', 'the name passed to _check_size appears only in its error message'),
    'utils.shapes.x_captioned_shapes__mutmut_50': ('aeb9b82577a5', 'rng.random() is continuous: a draw equal to `pairs` has probability zero (2**-53 at pairs = 0)'),
    'utils.shapes.x_captioned_shapes__mutmut_54': ('aeb9b82577a5', "numpy's choice reads replace as a truth value: None is False"),
    'utils.shapes.x_captioned_shapes__mutmut_67': ('aeb9b82577a5', 'rng.random() is continuous: a draw of exactly 0.5 has probability zero'),
    'utils.shapes.x_draw__mutmut_9': ('1fd2ad175cf8', 'the name passed to _check_size appears only in its error message'),
    'utils.shapes.x_draw__mutmut_12': ('1fd2ad175cf8', 'the name passed to _check_size appears only in its error message'),
    'utils.shapes.x_draw__mutmut_13': ('1fd2ad175cf8', 'the name passed to _check_size appears only in its error message'),
    'utils.shapes.xǁShapeǁ__post_init____mutmut_5': ('26d9e4b48954', "the field's name appears only in the error message"),
    'utils.shapes.xǁShapeǁ__post_init____mutmut_6': ('26d9e4b48954', "the field's name appears only in the error message"),
    'utils.shapes.xǁShapeǁ__post_init____mutmut_7': ('26d9e4b48954', "the field's name appears only in the error message"),
    'utils.shapes.xǁShapeǁ__post_init____mutmut_8': ('26d9e4b48954', "the field's name appears only in the error message"),
    'utils.shapes.x_draw__mutmut_92': ('1fd2ad175cf8', 'every colour component is >= 0.10 and the jitter at most 0.07: the lower clip never acts'),
    'utils.shapes.x_draw__mutmut_142': ('1fd2ad175cf8', 'the background is at most about 0.35 and each shape blends it convexly with a colour <= 1: the image exceeds 1 only on a 26-sigma noise draw'),
    'utils.shapes.x_draw__mutmut_147': ('1fd2ad175cf8', 'the background is at most about 0.35 and each shape blends it convexly with a colour <= 1: the image exceeds 1 only on a 26-sigma noise draw'),
    'utils.shapes.xǁCaptionedShapesǁrandom_captions__mutmut_2': ('f9f10fa2d1e8', 'a list indexed by a 0-d integer tensor uses __index__: the same scenes, the same captions'),
    # judged on the run at b4de10f
    'utils.vq.xǁVQVAEǁencode__mutmut_9': ('6b7243137fdf', 'einops axis names are any identifiers: upper case names the same permutation'),
    'utils.vq.xǁVectorQuantizerǁforward__mutmut_15': ('72b4f1011714', 'einops axis names are any identifiers: upper case names the same permutation'),
    'utils.vq.xǁVectorQuantizerǁlookup__mutmut_25': ('2739335eae64', 'einops axis names are any identifiers: upper case names the same permutation'),
    'utils.vq.xǁVectorQuantizerǁforward__mutmut_53': ('72b4f1011714', "add_ casts its argument to the buffer's dtype in place: the same sum"),
    'utils.vq.xǁVectorQuantizerǁnearest__mutmut_10': ('72761dfa4243', 'sum of z cubed is one number per vector, the same for all K distances: the same argmin'),
    'utils.vq.xǁVectorQuantizerǁnearest__mutmut_19': ('72761dfa4243', 'the codebook is (K, D): dim +1 is dim -1'),
    'utils.vq.x_drop_captions__mutmut_24': ('2223837f6254', 'torch.rand is continuous: a draw exactly equal to p has probability 2**-24 at most'),
    # judged on the run at b4de10f
    'utils.diffusion.x_clip_text_features__mutmut_12': ('274eebd4eac7', 'CLIP._check_text makes the ids (B, T): dim +1 is dim -1'),
    'utils.diffusion.x_diffusion_loss__mutmut_46': ('75411b7d786b', 'torch.rand is continuous: a draw exactly equal to p_uncond has probability 2**-24 at most'),
    'utils.diffusion.x_guided_epsilon__mutmut_20': ('c5cf686b6fe5', 't is an int (sample passes the ints of timesteps()): torch.full infers int64 from an int fill'),
    'utils.diffusion.x_guided_epsilon__mutmut_24': ('c5cf686b6fe5', 't is an int (sample passes the ints of timesteps()): torch.full infers int64 from an int fill'),
    'utils.diffusion.x_sincos_2d__mutmut_9': ('4f4e7a85d78f', "torch.meshgrid's default indexing is 'ij': the same grid (torch only adds a warn-once deprecation notice)"),
    'utils.diffusion.x_sincos_2d__mutmut_12': ('4f4e7a85d78f', "torch.meshgrid's default indexing is 'ij': the same grid (torch only adds a warn-once deprecation notice)"),
    'utils.diffusion.x_timestep_embedding__mutmut_11': ('d145ba2427ac', 'dim is checked even: arange(dim / 2) and division by dim / 2 give the same float32 values as dim // 2'),
    'utils.diffusion.x_timestep_embedding__mutmut_31': ('d145ba2427ac', 't is (B,) (Denoiser checks it, sincos_2d flattens): the angles are (B, dim/2), dim +1 is dim -1'),
    'utils.diffusion.xǁNoiseScheduleǁ__init____mutmut_47': ('288e10b5967b', 'the extra f(T+1) is never read: betas use f(0) .. f(T)'),
    # judged on the survivors' run at 6204203 (Denoiser's __init__ and forward changed there)
    'utils.diffusion.xǁDenoiserǁ__init____mutmut_68': ('0515bb87ca6c', "EncoderLayer's norm_first defaults to True: the same layer"),
    'utils.diffusion.xǁDenoiserǁforward__mutmut_29': ('ba0eac9981c7', 'einops axis names are any identifiers: upper case names the same permutation'),
    'utils.diffusion.xǁDenoiserǁforward__mutmut_57': ('ba0eac9981c7', "a dropped caption's tokens after the first are padding (keep = first): masked keys, never read, whatever their value"),
    # judged on the run at 17cb0bf
    'utils.compress.x_causal_linear_attention__mutmut_20': ('51da2017fc27', '_check_qkv makes k 4-D: axis +2 is axis -2'),
    'utils.compress.xǁLinearAttentionǁforward__mutmut_54': ('17def18e9e25', 'k is (B, H, T, D), 4-D: axis +2 is axis -2'),
    'utils.compress.x_distillation_loss__mutmut_33': ('745dd90b7f10', 'applied to a reshape(-1, V), which is 2-D: axis +1 is the last axis'),
    'utils.compress.x_distillation_loss__mutmut_48': ('745dd90b7f10', 'applied to a reshape(-1, V), which is 2-D: axis +1 is the last axis'),
    'utils.compress.x_linear_attention_recurrent__mutmut_21': ('df20d2a4f4d2', "the first step's S + k v^T broadcasts a (H, D, Dv) zero state to (B, H, D, Dv): the same sums (T = 0 fails in torch.stack either way)"),
    'utils.compress.x_linear_attention_recurrent__mutmut_31': ('df20d2a4f4d2', "the first step's z + k broadcasts a (H, D) zero state to (B, H, D): the same sums (T = 0 fails in torch.stack either way)"),
    'utils.compress.x_linear_attention_recurrent__mutmut_43': ('df20d2a4f4d2', 'the product is (B, H, 1, Dv), 4-D: axis +2 is axis -2'),
    'utils.compress.x_train_student__mutmut_65': ('f011c897debd', 'train reads progress only as disable=not progress: None and False both print nothing'),
    'utils.compress.xǁGroupedQueryAttentionǁforward__mutmut_41': ('acfe7307ea0e', 'the same and-chain requires past_kv[0].shape == past_kv[1].shape: equal shapes have equal dims'),
    'utils.compress.xǁGroupedQueryAttentionǁforward__mutmut_48': ('acfe7307ea0e', 'checked after past_kv[0].shape == past_kv[1].shape in the same and-chain: either tensor gives the same shape'),
    'utils.compress.xǁGroupedQueryAttentionǁforward__mutmut_51': ('acfe7307ea0e', 'checked after past_kv[0].shape == past_kv[1].shape in the same and-chain: either tensor gives the same shape'),
    'utils.compress.xǁGroupedQueryAttentionǁforward__mutmut_64': ('acfe7307ea0e', 'past_kv was just checked to hold two tensors of one shape: either gives the same P'),
    'utils.compress.xǁGroupedQueryAttentionǁforward__mutmut_193': ('acfe7307ea0e', 'einops axis names are any identifiers: upper case names the same permutation'),
    'utils.compress.xǁLinearAttentionǁforward__mutmut_73': ('17def18e9e25', 'einops axis names are any identifiers: upper case names the same permutation'),
    'utils.speculative.x_speculative_generate__mutmut_53': ('662485a4dc25', 'keys and values are cached for the same positions, (1, H, P, D) each: either gives P'),
    'utils.speculative.x_speculative_generate__mutmut_61': ('662485a4dc25', 'keys and values are cached for the same positions, (1, H, P, D) each: either gives P'),
    'utils.speculative.x_speculative_generate__mutmut_76': ('662485a4dc25', 'z is 1-D (V,): the argmax over all entries, kept as (1,), is the argmax over its one axis'),
    'utils.speculative.x_speculative_generate__mutmut_78': ('662485a4dc25', 'z is 1-D (V,): the argmax over all entries, kept as (1,), is the argmax over its one axis'),
    'utils.speculative.x_speculative_generate__mutmut_141': ('662485a4dc25', 'z = logits[0, -(kk + 1):] is 2-D: axis +1 is the last axis'),
    'utils.vq.x_sample_image_codes__mutmut_97': ('ea0f9a67168e', 'the image-token logits are (B, K), 2-D: axis +1 is the last axis'),
    'utils.vq.xǁVectorQuantizerǁrestart_dead_codes___mutmut_32': ('3627e2b5dadb', 'einops axis names are any identifiers: upper case names the same permutation'),
    'utils.vq.xǁVectorQuantizerǁrestart_dead_codes___mutmut_35': ('3627e2b5dadb', 'pick only indexes vectors, and an index tensor on the CPU indexes a tensor on any device: the same rows'),
    'utils.vq.xǁVectorQuantizerǁrestart_dead_codes___mutmut_50': ('3627e2b5dadb', "dead comes from the usage buffer, on the codebook's device already: moving it there again is a no-op"),
    'utils.compress.x_head_ablation_scores__mutmut_32': ('f9b1cf4cf226', 'columns set to a constant make the head write the same value to every channel of the residual stream, which every LayerNorm of the pre-LN GPT subtracts (ln_1, ln_2, ln_f): ablation by 1 is ablation by 0 (checked: equal losses)'),
    # utils.quantize, judged on the run at dbe8619
    'utils.quantize.x_pack_int4__mutmut_18': ('2d3c2480b573', "q.to(None) hands q back unchanged, and & 0xF takes the same low 4 bits (two's complement) from int8, int16, int32 or int64 alike, always 0..15, so the uint8 bytes are the same"),
    'utils.quantize.x_quantize_per_token__mutmut_27': ('7c1d9d7b4437', 'a symmetric grid uses only max(-min(lo, 0), max(hi, 0)); lo = +absmax (never negative) is clamped to 0, so the scale is still absmax / qmax (inf and NaN give the same too) and the zero point is 0 either way'),
    'utils.quantize.x__int_products__mutmut_19': ('0ca19ccbb27f', 'x + 128 and x - 128 differ by 256, so the wrap-around cast from int16 to int8 gives the same byte (x - 128) for every uint8 x, on CPU and GPU; int8 inputs have shift 0'),
    'utils.quantize.x__int_products__mutmut_20': ('0ca19ccbb27f', 'uint8 x minus 128 wraps in uint8 to the bit pattern the cast to int8 reads as x - 128, the value the int16 route gives; int8 inputs have shift 0 and stay int8'),
    'utils.quantize.x__int_products__mutmut_27': ('0ca19ccbb27f', 'with shift 0 the mutant adds 0 times the int32 row sums to the int32 accumulator: same values, same int32 dtype'),
    'utils.quantize.x_requantize__mutmut_6': ('8d55f98a5f6d', 'quantize_activation only tests symmetric for truth (the levels, and `symmetric or bits < 8` for the dtype); None is falsy like False'),
    'utils.quantize.x_requantize__mutmut_11': ('8d55f98a5f6d', "quantize_activation's default is symmetric=False"),
    'utils.quantize.xǁInt8Linearǁ__init____mutmut_18': ('2f8fc7438324', 'quantize\'s default granularity is "channel"'),
    'utils.quantize.xǁInt8Linearǁ__init____mutmut_19': ('2f8fc7438324', "quantize's default is symmetric=True"),
    'utils.quantize.xǁInt8Linearǁ__init____mutmut_58': ('2f8fc7438324', "activation_qparams's default is 8 bits"),
    'utils.quantize.xǁInt8Linearǁforward__mutmut_30': ('cdac991e5184', "activation_qparams's default is 8 bits"),
    'utils.quantize.x_int8_linears___mutmut_16': ('b642a18b3d7c', 'with modules=None observe_inputs takes block_linears(model) of the GPT, the same names and modules as `linears` (block_linears above already checked that it is a GPT)'),
    'utils.quantize.x_int8_linears___mutmut_19': ('b642a18b3d7c', "observe_inputs's default modules is None, which for a GPT is block_linears(model), the same dict as `linears`"),
    'utils.quantize.x_integer_linear__mutmut_50': ('63fa5a86c202', 'without a dtype the integer row sums are int64; the in-place add into the int32 accumulator wraps them mod 2^32, as the int32 sum does: the same int32 values (overflow included)'),
    'utils.quantize.x_integer_linear__mutmut_53': ('63fa5a86c202', "sum's default dtype for integer tensors is int64; the in-place add into the int32 accumulator folds it back mod 2^32: the same int32 values"),
    'utils.quantize.x_integer_linear__mutmut_58': ('63fa5a86c202', 'the weight row sums in int64 instead of int32, folded back mod 2^32 by the in-place add into the int32 accumulator: the same values'),
    'utils.quantize.x_integer_linear__mutmut_60': ('63fa5a86c202', "sum's default dtype for integer tensors is int64, folded back mod 2^32 into the int32 accumulator: the same values"),
    'utils.quantize.x_integer_linear__mutmut_103': ('63fa5a86c202', 'acc.to(None) is acc itself; int32 times the float32 scale converts it to float32 first, the same conversion .to(torch.float32) makes'),
    'utils.quantize.x_gptq_quantize_model___mutmut_49': ('02048590db1a', "copy_ converts the float32 dequantized weights to the weight's dtype itself, the same single cast .to(lin.weight.dtype) makes"),
    'utils.quantize.x__grid__mutmut_21': ('df1045dd640b', 'the line runs only for the affine grid, whose qmin is 0, so qmax + qmin equals qmax - qmin'),
    'utils.quantize.x__grid__mutmut_37': ('df1045dd640b', 'the lower clamp never acts: lo <= 0 and scale > 0 make -lo / scale >= 0 (clamp(-0.0, 0) is -0.0 as well) and a NaN stays NaN either way'),
    'utils.quantize.x_fake_quantize___mutmut_13': ('f24d6e9e8f31', "copy_ converts the float32 dequantized values to w's dtype itself, the same single cast .to(w.dtype) makes"),
    'utils.quantize.x__run__mutmut_4': ('acb5ba899f7b', '`was` is used only for an nn.Module, and every nn.Module has a `training` attribute, so the getattr default is never used'),
    'utils.quantize.x__run__mutmut_10': ('acb5ba899f7b', '`was` is used only for an nn.Module, and every nn.Module has a `training` attribute, so the getattr default is never used'),
    'utils.quantize.x_gptq_quantize__mutmut_134': ('15c68fcda093', "with groups block_size is a whole number of groups, so i1 is a multiple of the group size and (i1 - j) % g == 0 exactly when (i1 + j) % g == 0 (Python's % is never negative)"),
    'utils.quantize.x_gptq_quantize__mutmut_180': ('15c68fcda093', 'it also writes q into column j+1 of Q, which the next step overwrites before Q is read (the slice stops at I for the last column)'),
    'utils.quantize.x_gptq_quantize__mutmut_193': ('15c68fcda093', "it also writes e into column j+1 of E1, which step j+1 overwrites before E1 is used after the column loop (the slice stops at the block's end)"),
    'utils.quantize.x_qat_finalize___mutmut_10': ('524f5af6ae04', 'remove_parametrizations only tests leave_parametrized for truth, and None is falsy like False'),
    'utils.quantize.x_qat_finalize___mutmut_22': ('524f5af6ae04', "remove_parametrizations's default is leave_parametrized=True"),
    'utils.quantize.x_qat_finalize___mutmut_34': ('524f5af6ae04', "remove_parametrizations's default is leave_parametrized=True"),
}

# Survivors that differ from the code only where tensors sit on two devices (a CUDA GPU and the CPU): the
# unit tests run on a machine without a GPU, so none can kill them. They count as survived; the report says why.
CUDA_ONLY: dict[str, tuple[str, str]] = {  # mutant name → (hash of its function when judged, what differs on a GPU)
    'utils.speculative.x__draw__mutmut_3': ('013a3a9530ad', "probs is left where it is instead of moved to the generator's device: the same on one device; on a GPU with a CPU generator multinomial would refuse"),
    'utils.speculative.x__draw__mutmut_5': ('013a3a9530ad', "probs.to(None) leaves probs where they are instead of on the generator's device: differs only when the two devices differ"),
    'utils.speculative.x__draw__mutmut_6': ('013a3a9530ad', "the drawn index stays on the generator's device instead of returning to probs': differs only when the two devices differ"),
    'utils.speculative.x_verify_sampling__mutmut_25': ('b5a04ce771df', "the uniform draw is made on the generator's device, not p's: differs only when the two devices differ"),
    'utils.vq.x_sample_image_codes__mutmut_73': ('ea0f9a67168e', "the null caption is not moved to the captions' device (torch.cat promotes its integer dtype the same way): differs only when the two devices differ"),
    'utils.vq.x_sample_image_codes__mutmut_100': ('ea0f9a67168e', 'the drawn codes stay on the CPU where multinomial drew them: differs only when the logits are on a GPU'),
    # utils.quantize: CUDA has no integer matmul, so the int32 fallback fails there (a bug of the fallback, noted)
    'utils.quantize.x__int_products__mutmut_4': ('0ca19ccbb27f', 'int8 weights skip torch._int_mm for xq.to(int32) @ wq.to(int32).T: the same integers on CPU, but CUDA has no integer matmul ("addmm_cuda" not implemented for \'Int\', pytorch#44428), so on a GPU it raises where the original uses the int8 kernel'),
    'utils.quantize.x__int_products__mutmut_5': ('0ca19ccbb27f', 'hasattr(None, "_int_mm") is False, so the int32 matmul always runs: the same on CPU, a RuntimeError on CUDA (no integer matmul there) where the original uses torch._int_mm'),
    'utils.quantize.x__int_products__mutmut_9': ('0ca19ccbb27f', 'torch has no "XX_int_mmXX", so the int32 matmul always runs: the same on CPU, a RuntimeError on CUDA (no integer matmul there) where the original uses torch._int_mm'),
    'utils.quantize.x__int_products__mutmut_10': ('0ca19ccbb27f', 'torch has no "_INT_MM", so the int32 matmul always runs: the same on CPU, a RuntimeError on CUDA (no integer matmul there) where the original uses torch._int_mm'),
    'utils.quantize.x__int_products__mutmut_18': ('0ca19ccbb27f', 'x8 stays int16, which torch._int_mm refuses (a RuntimeError, caught), so the int32 matmul runs: the same on CPU, a RuntimeError on CUDA where the original uses torch._int_mm'),
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def status(code: int | None) -> str:
    return STATUS.get(code, "suspicious")  # a crash that is not a test failure: counted as not killed


def _function(mutant: str) -> str:
    return mutant.split(".")[-1].rsplit("__mutmut_", 1)[0]


_SPANS: dict[tuple[Path, float], dict[str, tuple[int, int]]] = {}


def _spans(path: Path) -> dict[str, tuple[int, int]]:
    """Every function in mutmut's rewritten module → its first and last line. Read from the file itself: mutmut's
    own .spans file is not rewritten when it mutates a changed module again, and then points at other lines."""
    key = (path, path.stat().st_mtime)
    if key not in _SPANS:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        _SPANS[key] = {node.name: (node.lineno, node.end_lineno) for node in ast.walk(tree)
                       if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return _SPANS[key]


def change(module: str, mutant: str) -> str:
    """The mutant's change, as a few diff lines against the original function (both found in mutmut's file)."""
    path = MUTANTS / "utils" / f"{module}.py"
    src = path.read_text(encoding="utf-8").splitlines()
    spans = _spans(path)
    name = mutant.split(".")[-1]
    orig, mut = spans[_function(mutant) + "__mutmut_orig"], spans[name]
    a = [re.sub(r"__mutmut_orig\(", "(", line) for line in src[orig[0] - 1:orig[1]]]
    b = [re.sub(r"__mutmut_\d+\(", "(", line) for line in src[mut[0] - 1:mut[1]]]
    lines = [d for d in difflib.unified_diff(a, b, lineterm="", n=0) if d[:1] in "+-" and d[:3] not in ("+++", "---")]
    return "\n".join(line.strip()[:1] + " " + line[1:].strip() for line in lines[:4]) or "(no textual change)"


def unmutated(source: str) -> list[str]:
    """The functions of a module's source that mutmut 3.8.1 generates no mutant for: those with a decorator
    other than a lone @staticmethod / @classmethod (@torch.no_grad(), @property, @contextmanager, @cache):
    their code is not measured by the module's score."""
    tree = ast.parse(source)
    out = []

    def visit(body, prefix=""):
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, prefix + node.name + ".")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.decorator_list:
                lone = node.decorator_list[0] if len(node.decorator_list) == 1 else None
                if not (isinstance(lone, ast.Name) and lone.id in ("staticmethod", "classmethod")):
                    out.append(prefix + node.name)
    visit(tree.body)
    return out


def collect() -> dict[str, dict]:
    runs = json.loads((MUTANTS / "onehot-runs.json").read_text()) if (MUTANTS / "onehot-runs.json").exists() else {}
    out = {}
    for meta_path in sorted((MUTANTS / "utils").glob("*.py.meta")):
        module = meta_path.name[:-len(".py.meta")]
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        codes = meta["exit_code_by_key"]
        if not codes:
            continue
        hashes = meta["hash_by_function_name"]
        counts, survivors, equivalent, stale, cuda_only = Counter(), [], [], [], {}
        for mutant, code in sorted(codes.items(), key=lambda kv: (_function(kv[0]), int(kv[0].rsplit("_", 1)[1]))):
            s = status(code)
            entry = EQUIVALENT.get(mutant)
            if entry and s in ("survived", "no tests"):
                if entry[0] == hashes.get(_function(mutant)):
                    equivalent.append((mutant, entry[1]))
                    continue
                stale.append(mutant)
            counts[s] += 1
            if s in ("survived", "no tests", "suspicious", "skipped"):
                survivors.append((mutant, s))
                gpu = CUDA_ONLY.get(mutant)
                if gpu and gpu[0] == hashes.get(_function(mutant)):
                    cuda_only[mutant] = gpu[1]
        out[module] = dict(counts=counts, total=len(codes), survivors=survivors, equivalent=equivalent, stale=stale,
                           run=runs.get(module), cuda_only=cuda_only)
    return out


ROW = re.compile(r"^\| `(?P<module>[\w]+)` \| (?P<run>[^|]*)\| (?P<total>\d+) \| (?P<killed>\d+) \| (?P<timeout>\d+) "
                 r"\| (?P<survived>\d+) \| (?P<none>\d+) \| (?P<equivalent>\d+) \| (?P<unchecked>\d+) \| (?P<score>[^|]+) \|$")


def earlier(text: str) -> dict[str, dict]:
    """The scored modules of an earlier report: module -> its table row, counts and section lines."""
    out: dict[str, dict] = {}
    lines = text.splitlines()
    for line in lines:
        m = ROW.match(line)
        if m and m["score"].strip() != "not run":
            out[m["module"]] = dict(row=line, section=[], total=int(m["total"]), equivalent=int(m["equivalent"]),
                                    killed=int(m["killed"]) + int(m["timeout"]))
    current = None
    for line in lines:
        head = re.match(r"^## `utils/(\w+)\.py`$", line)
        if head:
            current = head[1] if head[1] in out else None
        if current:
            out[current]["section"].append(line)
    for entry in out.values():  # the blank lines between sections belong to neither
        while entry["section"] and not entry["section"][-1].strip():
            entry["section"].pop()
    return out


def render(results: dict[str, dict], previous: dict[str, dict] | None = None) -> str:
    lines = ["# Mutation testing of `utils/`", "",
             "Written by `python -m scripts.mutation_report` from the results of `make mutate` (mutmut 3.8.1,",
             "configured in `setup.cfg`): do not edit by hand. A mutant is a copy of one function with one small",
             "change; the unit tests that call the function run against it. Score = (killed + timed out) /",
             "(mutants − equivalent); target ≥ 90% per module, ≥ 95% over all (issue 31). `utils/viz` (plotting)",
             "is not mutated, and statements that raise an error or warn are left whole (setup.cfg's",
             "`do_not_mutate_patterns`): a reworded message changes no behaviour a test should pin. Modules are run",
             "one sitting at a time: each row names the commit its module was mutated at.", "",
             "| module | commit | mutants | killed | timed out | survived | no tests | equivalent | not checked "
             "| score |", "|---|---|---|---|---|---|---|---|---|---|"]
    previous = previous or {}
    kept = {m for m, r in results.items() if r["counts"]["not checked"] == r["total"] and m in previous}
    kept |= set(previous) - set(results)
    done_all = killed_all = 0
    for module in sorted(set(results) | kept):
        if module in kept:
            p = previous[module]
            lines.append(p["row"])
            done_all, killed_all = done_all + p["total"] - p["equivalent"], killed_all + p["killed"]
            continue
        r = results[module]
        c = r["counts"]
        checked = r["total"] - c["not checked"]
        run = r["run"] or {}
        denominator = checked - len(r["equivalent"])
        killed = c["killed"] + c["timeout"]
        score = f"{killed / denominator:.1%}" if checked == r["total"] and denominator else "not run"
        if checked == r["total"]:
            done_all, killed_all = done_all + denominator, killed_all + killed
        again = run.get("survivors_again")
        when = f"{run.get('commit', '?')} {run.get('date', '')}" + (f"; survivors again at {again['commit']}" if again else "")
        lines.append(f"| `{module}` | {when} | {r['total']} | {c['killed']} "
                     f"| {c['timeout']} | {c['survived']} | {c['no tests']} | {len(r['equivalent'])} "
                     f"| {c['not checked']} | {score} |")
    if done_all:
        lines += ["", f"Over the modules run in full: {killed_all / done_all:.1%} of {done_all} non-equivalent mutants."]
    skipped = {module: unmutated((ROOT / "utils" / f"{module}.py").read_text(encoding="utf-8"))
               for module in sorted(set(results) | kept)
               if (ROOT / "utils" / f"{module}.py").exists()}
    lines += ["", "Not measured: mutmut 3.8.1 makes no mutant of a function that has a decorator (other than a lone",
              "`@staticmethod` or `@classmethod`), so the scores above say nothing about these functions of the",
              "code as it is now (a function moved out of the list by writing `with torch.no_grad():` in its body",
              "is measured from its module's next run):", ""]
    lines += [f"- `{module}`: " + ", ".join(f"`{f}`" for f in names) for module, names in skipped.items() if names]
    for module in sorted(set(results) | kept):
        if module in kept:
            if previous[module]["section"]:
                lines += ["", *previous[module]["section"]]
            continue
        r = results[module]
        if not (r["survivors"] or r["equivalent"] or r["stale"]):
            continue
        lines += ["", f"## `utils/{module}.py`"]
        if r["survivors"]:
            lines += ["", "Survivors (bugs no test notices: each needs a test, or a reason it changes nothing):", ""]
            for mutant, s in r["survivors"]:
                gpu = r.get("cuda_only", {}).get(mutant)
                lines.append(f"- `{mutant.split('.')[-1]}` ({s}" + (f"; only a CUDA device tells it apart: {gpu}" if gpu else "")
                             + "):")
                lines += ["  ```diff", *("  " + d for d in change(module, mutant).splitlines()), "  ```"]
        if r["equivalent"]:
            lines += ["", "Equivalent (change no behaviour):", ""]
            lines += [f"- `{m.split('.')[-1]}`: {why}" for m, why in r["equivalent"]]
        if r["stale"]:
            lines += ["", "Stale equivalence entries (their function changed; judge again): "
                      + ", ".join(f"`{m.split('.')[-1]}`" for m in r["stale"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not (MUTANTS / "utils").is_dir():
        raise SystemExit("scripts.mutation_report: no mutants/utils: run `make mutate` (or MODULE=...) first")
    previous = earlier(REPORT.read_text(encoding="utf-8")) if REPORT.exists() else {}
    REPORT.write_text(render(collect(), previous), encoding="utf-8")
    print(f"wrote {REPORT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
