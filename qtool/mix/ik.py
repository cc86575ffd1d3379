"""ik_llama.cpp's per-tensor type choice, ported from its src/llama-quantize.cpp (commit 8337e4cd).

ik_llama.cpp's rules differ from mainline's even for the ftypes both have (for example attn_v
of a 4-to-8-expert model becomes Q8_0, n_gqa >= 4 bumps attn_v one step, the fallback table
maps Q5_K to Q6_0), so this is a separate port: `change_type_if_necessary`,
`llama_tensor_get_type` (with `--custom-q` applied after the mix rules and before the fallback)
and the per-tensor part of `llama_model_quantize_internal`. Tensors are visited in file order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .decision import Decision, Plan
from .ftypes import IK, FType
from .model import ModelInfo, TensorSpec, sscanf_layer
from .options import MixError, MixOptions, TypeRule

QK_K = 256
QK_IQ1BN = 64

# types whose blocks span QK_K values (change_type_if_necessary's first list)
_QK_K_TYPES = {
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "IQ2_XS", "IQ2_XXS", "IQ2_S", "IQ3_XXS", "IQ1_S",
    "IQ3_S", "IQ1_M", "IQ4_K", "IQ2_K", "IQ5_K", "IQ3_K", "Q4_K_R4", "IQ6_K", "IQ4_KS", "IQ4_XS_R8",
    "IQ2_KS", "IQ4_KSS", "Q6_K_R4", "Q5_K_R4", "Q3_K_R4", "Q2_K_R4", "IQ4_K_R4", "Q8_K_R8",
    "IQ3_K_R4", "IQ2_K_R4", "IQ5_K_R4", "IQ4_KS_R4", "IQ3_XXS_R4", "IQ2_XXS_R4", "IQ2_XS_R4",
    "IQ2_S_R4", "IQ3_S_R4", "IQ3_KS", "IQ2_KT", "IQ3_KT", "IQ4_KT", "IQ5_KS", "IQ5_KS_R4", "IQ2_KL",
    "IQ1_KT",
}
_BN_TYPES = {"IQ1_BN", "IQ2_BN", "IQ2_BN_R4"}
_TO_IQ4_NL = {
    "IQ2_XXS", "IQ2_XXS_R4", "IQ2_XS", "IQ2_XS_R4", "IQ2_KS", "IQ2_S", "IQ2_S_R4", "IQ3_XXS",
    "IQ3_XXS_R4", "IQ3_S", "IQ3_S_R4", "IQ1_S", "IQ1_M", "Q2_K", "Q2_K_R4", "Q3_K", "Q3_K_R4",
    "IQ2_K", "IQ2_K_R4", "IQ2_KL", "IQ3_KS", "IQ3_K", "IQ3_K_R4", "IQ4_KSS", "IQ4_KS", "IQ4_KS_R4",
    "IQ4_XS_R8", "IQ1_KT", "IQ2_KT", "IQ3_KT", "IQ4_KT", "IQ4_XS",
}
_TO_Q5_0 = {"IQ4_K", "IQ4_K_R4", "Q4_K_R4", "IQ5_KS", "IQ5_KS_R4", "Q4_K"}
_TO_Q6_0 = {"IQ5_K", "IQ5_K_R4", "Q5_K_R4", "Q5_K"}
_TO_Q8_0 = {"IQ6_K", "Q6_K_R4", "Q8_K_R8", "Q6_K"}

# interleaved_properties: row-interleaved type -> (plain type, rows interleaved)
INTERLEAVED: dict[str, tuple[str, int]] = {
    "Q4_0_4_4": ("Q4_0", 4), "Q4_0_4_8": ("Q4_0", 4), "Q4_0_8_8": ("Q4_0", 8),
    "Q4_0_R8": ("Q4_0", 8), "Q5_0_R4": ("Q5_0", 4), "Q6_0_R4": ("Q6_0", 4), "Q8_0_R8": ("Q8_0", 8),
    "Q2_K_R4": ("Q2_K", 4), "Q3_K_R4": ("Q3_K", 4), "Q4_K_R4": ("Q4_K", 4), "Q5_K_R4": ("Q5_K", 4),
    "Q6_K_R4": ("Q6_K", 4), "IQ2_XXS_R4": ("IQ2_XXS", 4), "IQ2_XS_R4": ("IQ2_XS", 4),
    "IQ2_S_R4": ("IQ2_S", 4), "IQ3_XXS_R4": ("IQ3_XXS", 4), "IQ3_S_R4": ("IQ3_S", 4),
    "IQ4_XS_R8": ("IQ4_XS", 8), "IQ4_NL_R4": ("IQ4_NL", 4), "IQ1_S_R4": ("IQ1_S", 4),
    "IQ1_M_R4": ("IQ1_M", 4), "IQ2_BN_R4": ("IQ2_BN", 4), "IQ2_K_R4": ("IQ2_K", 4),
    "IQ3_K_R4": ("IQ3_K", 4), "IQ4_K_R4": ("IQ4_K", 4), "IQ4_KS_R4": ("IQ4_KS", 4),
    "IQ5_KS_R4": ("IQ5_KS", 4), "IQ5_K_R4": ("IQ5_K", 4), "MXFP4_R8": ("MXFP4", 8),
    "Q8_KV_R8": ("Q8_KV", 8), "Q8_K_R8": ("Q8_0", 8), "BF16_R16": ("BF16", 16),
}

_NOT_QUANTIZED_TYPES = {"F32", "F16", "BF16", "BF16_R16", "I8", "I16", "I32", "I64", "F64"}


def interleaved_properties(t: str) -> tuple[str, int]:
    return INTERLEAVED.get(t, (t, 1))


def is_quantized(t: str) -> bool:
    return t not in _NOT_QUANTIZED_TYPES


def change_type_if_necessary(new_type: str, nx: int) -> str:
    """ik's fallback when the row length does not fit the block (QK_K = 256, QK_IQ1BN = 64)."""
    bad = (new_type in _QK_K_TYPES and nx % QK_K != 0) or (new_type in _BN_TYPES and nx % QK_IQ1BN != 0)
    if not bad:
        return new_type
    if new_type in _TO_IQ4_NL:
        return "IQ4_NL"
    if new_type in _TO_Q5_0:
        return "Q5_0"
    if new_type in _TO_Q6_0:
        return "Q6_0"
    if new_type in _TO_Q8_0:
        return "Q8_0"
    raise MixError(f"Unsupported tensor size encountered: row length {nx} for {new_type.lower()}")


@dataclass
class _State:
    info: ModelInfo
    opts: MixOptions
    ftype: str
    ftype_name: str
    custom: list[tuple[re.Pattern[str], TypeRule]] = field(default_factory=list)
    n_attention_wv: int = 0
    n_ffn_down: int = 0
    n_ffn_gate: int = 0
    n_ffn_up: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    n_fallback: int = 0
    has_imatrix: bool = False
    has_output: bool = False
    output_name: str | None = "output.weight"


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _layer_info(qs: _State, i_layer: int, n_layer: int, name: str) -> tuple[int, int]:
    if max(1, qs.info.n_expert) > 1:
        il = sscanf_layer(name)
        if il is None:
            raise MixError(f"Failed to determine layer for tensor {name}")
        if il < 0 or il >= n_layer:
            raise MixError(f"Bad layer {il} for tensor {name}. Must be in [0, {n_layer})")
        i_layer = il
    return i_layer, n_layer


_OUT_IQ_LOW = {"IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M", "IQ2_K", "IQ3_K",
               "IQ2_KS", "IQ3_K_R4", "IQ3_KS", "IQ2_K_R4", "IQ3_XXS_R4", "IQ2_KL", "IQ2_M_R4",
               "IQ1_S_R4", "IQ1_M_R4", "IQ2_KT", "IQ3_KT", "IQ1_KT"}
_OUT_IQ5 = {"IQ3_S", "IQ3_M", "IQ3_KL", "IQ4_XS", "IQ3_S_R4", "IQ4_KS", "IQ4_KSS", "IQ4_KS_R4"}
_OUT_KEEP = {"Q8_0", "Q8_0_R8", "IQ6_K", "Q6_K_R4", "Q8_K_R8", "Q8_KV", "Q8_KV_R8"}
_EMB_Q2_K = {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M", "IQ2_XXS_R4", "IQ2_XS_R4", "IQ1_S_R4", "IQ1_M_R4"}
_EMB_IQ3_S = {"IQ2_S", "IQ2_M", "IQ2_M_R4", "IQ3_XXS", "IQ3_KT"}
_EMB_IQ4_NL = {"IQ1_BN", "IQ2_BN", "IQ2_BN_R4"}
_IQ2_FAMILY = {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M", "IQ2_KS", "IQ2_XXS_R4",
               "IQ2_XS_R4", "IQ2_M_R4"}
_ATTN_OUT_EXPERT = {
    "Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M",
    "IQ4_XS", "IQ4_K", "IQ4_KSS", "IQ4_KS", "IQ4_KS_R4", "IQ5_KS", "IQ5_KS_R4", "IQ2_K", "IQ3_K",
    "IQ3_KL", "Q4_K_R4", "IQ4_NL_R4", "IQ4_XS_R8", "Q3_K_R4", "IQ3_KT", "IQ3_KS", "Q2_K_R4",
    "IQ4_K_R4", "IQ3_K_R4", "IQ2_K_R4", "IQ3_XXS_R4", "IQ3_S_R4",
}
_GQA4_BUMP = {
    "Q2_K": "IQ3_S", "IQ3_XXS": "IQ3_S", "Q2_K_R4": "IQ3_K_R4", "IQ3_XXS_R4": "IQ3_K_R4",
    "Q3_K": "Q4_K", "IQ3_S": "Q4_K", "IQ3_K": "IQ4_K", "IQ3_KS": "IQ4_KS", "IQ2_KL": "IQ4_KS",
    "IQ3_S_R4": "Q4_K_R4", "Q3_K_R4": "Q4_K_R4", "Q4_K": "Q5_K", "IQ4_XS": "Q5_K", "IQ4_NL": "Q5_K",
    "IQ4_K": "IQ5_K", "IQ4_KS": "IQ5_K", "IQ4_NL_R4": "Q5_K", "IQ4_XS_R8": "Q5_K", "Q5_K": "Q6_K",
    "IQ5_K": "IQ6_K", "IQ5_KS": "IQ6_K",
}


def _embd_rule(ft: str) -> str | None:
    if ft in _EMB_Q2_K:
        return "Q2_K"
    if ft in _EMB_IQ3_S:
        return "IQ3_S"
    if ft == "IQ3_XXS_R4":
        return "IQ3_K"
    if ft in _EMB_IQ4_NL:
        return "IQ4_NL"
    return None


def llama_tensor_get_type(qs: _State, new_type: str, t: TensorSpec) -> tuple[str, str, str | None]:
    """(type, reason, fallback note): ik's mix rules, then --custom-q, then the fallback."""
    name = t.name
    arch = qs.info.arch
    ft = qs.ftype
    fn = qs.ftype_name
    hp = qs.info
    p = qs.opts
    n_gqa = hp.n_gqa
    n_exp = hp.n_expert
    mtype = hp.ik_model_type()
    why: str | None = None

    custom: TypeRule | None = None
    for pat, rule in qs.custom:
        if pat.search(name):
            custom = rule
            break

    def has(s: str) -> bool:
        return s in name

    if (qs.output_name is not None and name == qs.output_name) or (not qs.has_output and name == "token_embd.weight"):
        what = "output" if name == "output.weight" else "token_embd (tied: no output.weight)"
        if p.output_tensor_type is not None:
            new_type, why = p.output_tensor_type, f"{what}: --output-tensor-type"
        elif arch == "falcon" or t.shape[0] % QK_K != 0:
            new_type, why = "Q8_0", f"{what}: falcon or row length not a multiple of 256 -> Q8_0"
        elif ft in _OUT_IQ_LOW:
            new_type = "IQ4_K" if not qs.has_output else "Q5_K"
            why = f"{what}: {fn} uses {new_type}"
        elif ft in ("IQ2_XXS_R4", "IQ2_XS_R4"):
            new_type = "IQ4_K_R4" if not qs.has_output else "Q5_K_R4"
            why = f"{what}: {fn} uses {new_type}"
        elif ft in _OUT_IQ5 and not qs.has_output:
            new_type, why = "IQ5_K", f"{what}: {fn} uses IQ5_K"
        elif new_type not in _OUT_KEEP:
            new_type, why = "Q6_K", f"{what}: uses Q6_K"
    elif name in ("token_embd.weight", "per_layer_token_embd.weight"):
        opt = p.token_embedding_type if name == "token_embd.weight" else p.per_layer_token_embedding_type
        if opt is not None:
            flag = "--token-embedding-type" if name == "token_embd.weight" else "--per-layer-token-embedding-type"
            new_type, why = opt, f"{flag} {opt.lower()}"
        else:
            r = _embd_rule(ft)
            if r is not None:
                new_type, why = r, f"{name.split('.')[0]}: {fn} uses {r}"
    elif ft in ("IQ1_S_R4", "IQ1_M_R4"):
        if has("attn_v.weight"):
            new_type = "IQ4_K_R4" if n_exp >= 4 or n_gqa >= 4 else "IQ3_K_R4" if n_gqa >= 2 else "Q2_K_R4"
            why = f"attn_v: {fn} uses {new_type}"
            qs.i_attention_wv += 1
        elif n_exp >= 8 and has("attn_k"):
            new_type, why = "Q4_K_R4", f"attn_k: {fn} with >= 8 experts"
        elif n_exp >= 8 and (has("blk.0.ffn_down") or has("blk.0.ffn_gate") or has("blk.0.ffn_up")):
            new_type, why = "IQ3_K_R4", f"layer 0 ffn: {fn} with >= 8 experts"
        elif n_exp >= 8 and has("attn_q"):
            new_type, why = "Q4_K_R4", f"attn_q: {fn} with >= 8 experts"
        elif has("attn_qkv.weight"):
            new_type, why = "IQ2_K_R4", f"attn_qkv: {fn}"
        elif has("_shexp.weight"):
            new_type, why = "IQ4_K_R4", f"shared expert: {fn}"
        elif has("ffn_down"):
            i_layer, n_layer = _layer_info(qs, qs.i_ffn_down, qs.n_ffn_down, name)
            if p.ffn_down_type is not None:
                new_type, why = p.ffn_down_type, "--ffn-down-type"
            elif i_layer < n_layer // 8:
                new_type, why = "Q2_K_R4", f"ffn_down layer {i_layer} of {n_layer}: first 1/8 -> Q2_K_R4"
            qs.i_ffn_down += 1
        elif has("attn_output.weight"):
            new_type = "Q5_K_R4" if n_exp >= 4 else "IQ2_K_R4"
            why = f"attn_output: {fn} uses {new_type}"
    elif ft == "IQ2_KT":
        if has("attn_v.weight"):
            new_type = "IQ4_K" if n_exp >= 4 or n_gqa >= 4 else "IQ3_K" if n_gqa >= 2 else "Q2_K"
            why = f"attn_v: IQ2_KT uses {new_type}"
            qs.i_attention_wv += 1
        elif n_exp >= 8 and has("attn_k"):
            new_type, why = "Q4_K", "attn_k: IQ2_KT with >= 8 experts"
        elif n_exp >= 8 and (has("blk.0.ffn_down") or has("blk.0.ffn_gate") or has("blk.0.ffn_up")):
            new_type, why = "IQ3_K", "layer 0 ffn: IQ2_KT with >= 8 experts"
        elif n_exp >= 8 and has("attn_q"):
            new_type, why = "Q4_K", "attn_q: IQ2_KT with >= 8 experts"
        elif has("attn_qkv.weight"):
            new_type, why = "IQ3_K", "attn_qkv: IQ2_KT"
        elif has("_shexp.weight"):
            new_type, why = "IQ4_K", "shared expert: IQ2_KT"
        elif has("ffn_down"):
            i_layer, n_layer = _layer_info(qs, qs.i_ffn_down, qs.n_ffn_down, name)
            if p.ffn_down_type is not None:
                new_type, why = p.ffn_down_type, "--ffn-down-type"
            elif i_layer < n_layer // 8:
                new_type, why = "IQ3_K", f"ffn_down layer {i_layer} of {n_layer}: first 1/8 -> IQ3_K"
            qs.i_ffn_down += 1
        elif has("attn_output.weight"):
            new_type = "Q5_K" if n_exp >= 4 else "IQ3_K"
            why = f"attn_output: IQ2_KT uses {new_type}"
    elif ft in _IQ2_FAMILY:
        is_iq2_m = ft in ("IQ2_M", "IQ2_M_R4")
        s_or_m = ft == "IQ2_S" or is_iq2_m
        if has("attn_v.weight"):
            if n_gqa >= 4 or n_exp >= 4:
                new_type = "IQ4_K"
            elif n_gqa >= 2 or n_exp >= 2:
                new_type = "IQ3_K"
            else:
                new_type = "IQ3_S" if s_or_m else "Q2_K"
            why = f"attn_v: {fn} uses {new_type} (n_gqa {n_gqa}, n_expert {n_exp})"
            qs.i_attention_wv += 1
        elif n_exp >= 8 and has("attn_k"):
            new_type, why = "Q4_K", f"attn_k: {fn} with >= 8 experts"
        elif n_exp >= 8 and has("attn_q"):
            new_type, why = "Q4_K", f"attn_q: {fn} with >= 8 experts"
        elif has("attn_qkv.weight"):
            new_type = "IQ3_XXS" if s_or_m else "IQ2_K"
            why = f"attn_qkv: {fn} uses {new_type}"
        elif has("ffn_down"):
            if qs.i_ffn_down < qs.n_ffn_down // 8:
                new_type = "IQ3_S" if s_or_m else "Q2_K"
                why = f"ffn_down #{qs.i_ffn_down} in the first 1/8 of {qs.n_ffn_down}: {fn} uses {new_type}"
            qs.i_ffn_down += 1
        elif has("attn_output.weight"):
            if p.attn_output_type is not None:
                new_type, why = p.attn_output_type, "--attn-output-type"
            elif n_exp >= 4:
                new_type, why = "Q5_K", f"attn_output: {fn} with >= 4 experts"
            elif ft in ("IQ1_S", "IQ1_M"):
                new_type, why = "IQ2_K", f"attn_output: {fn} uses IQ2_K"
            elif s_or_m:
                new_type, why = "IQ3_S", f"attn_output: {fn} uses IQ3_S"
    elif has("attn_v.weight"):
        i, n = qs.i_attention_wv, qs.n_attention_wv
        tag = f"attn_v #{i} of {n}"
        before = new_type
        if p.attn_v_type is not None:
            new_type, why = p.attn_v_type, "--attn-v-type"
        elif n_exp >= 4:
            new_type, why = "Q8_0", f"{tag}: model with >= 4 experts uses Q8_0"
        elif mtype == "70B":
            if new_type in ("Q3_K", "Q4_K"):
                new_type = "Q5_K"
            if new_type == "IQ3_K":
                new_type = "IQ5_K"
            why = f"{tag}: 70B model bumps attn_v"
        elif ft == "Q2_K":
            new_type = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif ft == "IQ2_K":
            new_type = "IQ4_K" if n_gqa >= 2 else "IQ3_K"
        elif ft == "IQ2_K_R4":
            new_type = "IQ4_K_R4" if n_gqa >= 2 else "IQ3_K_R4"
        elif ft == "Q2_K_S" and n_gqa >= 4:
            new_type = "Q4_K"
        elif ft == "Q2_K_R4" and n_gqa >= 4:
            new_type = "Q4_K_R4"
        elif ft == "IQ3_XXS":
            new_type = ("Q4_K" if n_gqa >= 4 else "IQ3_K" if n_gqa >= 2
                        else "IQ3_S" if not qs.has_imatrix else "IQ3_XXS")
        elif ft == "IQ3_KT":
            new_type = "IQ4_K" if n_gqa >= 4 else "IQ3_K"
        elif ft == "IQ4_KT":
            new_type = "IQ5_K" if n_gqa >= 4 else "IQ4_K"
        elif ft == "IQ3_XXS_R4":
            new_type = ("Q4_K_R4" if n_gqa >= 4 else "IQ3_K_R4" if n_gqa >= 2
                        else "IQ3_K_R4" if not qs.has_imatrix else "IQ3_XXS_R4")
        elif ft in ("IQ3_XS", "IQ3_S") and n_gqa >= 2:
            new_type = "IQ4_K"
        elif ft == "IQ3_S_R4" and n_gqa >= 2:
            new_type = "IQ4_K_R4"
        elif ft == "IQ3_K" and n_gqa >= 2:
            new_type = "IQ4_K"
        elif ft == "IQ3_KS" and n_gqa >= 2:
            new_type = "IQ4_KS"
        elif ft == "IQ2_KL" and n_gqa >= 2:
            new_type = "IQ4_KS"
        elif ft == "IQ3_K_R4" and n_gqa >= 2:
            new_type = "IQ4_K_R4"
        elif ft in ("IQ3_KL", "IQ3_M"):
            new_type = "IQ5_K" if n_gqa >= 2 else "IQ4_K"
        elif ft == "Q3_K_M":
            new_type = "Q5_K" if i < 2 else "Q4_K"
        elif ft == "Q3_K_L":
            new_type = "Q5_K"
        elif ft in ("IQ4_NL", "IQ4_XS", "IQ4_NL_R4", "IQ4_XS_R8", "IQ4_KS", "IQ4_KSS") and n_gqa >= 2:
            new_type = "IQ5_K"
        elif ft == "IQ4_KS_R4" and n_gqa >= 2:
            new_type = "IQ5_K_R4"
        elif ft in ("IQ4_K", "IQ4_K_R4") and n_gqa >= 2:
            new_type = "IQ5_K"
        elif ft in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            new_type, why = "Q6_K", f"{tag}: {fn} uses Q6_K for use_more_bits layers"
        elif ft in ("Q4_K_S", "Q4_K_R4") and i < 4:
            new_type, why = "Q5_K", f"{tag}: {fn} uses Q5_K for the first four"
        elif ft == "Q5_K_S":
            if hp.n_vocab >= 127999 and mtype in ("8B", "70B"):
                new_type = "Q6_K"
        elif ft in ("IQ5_K", "IQ5_KS"):
            if hp.n_vocab >= 127999 and mtype in ("8B", "70B"):
                new_type = "IQ6_K"
        elif n_gqa >= 4 and not (arch == "dflash-draft" and ft in ("Q4_K_M", "Q5_K_M")):
            if new_type in _GQA4_BUMP:
                new_type = _GQA4_BUMP[new_type]
                why = f"{tag}: n_gqa {n_gqa} >= 4 bumps {before.lower()} to {new_type.lower()}"
        if why is None and new_type != before:
            why = f"{tag}: {fn} uses {new_type} (n_gqa {n_gqa})"
        qs.i_attention_wv += 1
    elif has("attn_k"):
        if p.attn_k_type is not None:
            new_type, why = p.attn_k_type, "--attn-k-type"
        elif n_exp >= 4:
            new_type, why = "Q8_0", "attn_k: model with >= 4 experts uses Q8_0"
        elif ft == "IQ3_XS":
            new_type, why = "IQ3_XXS", "attn_k: IQ3_XS uses IQ3_XXS"
        elif ft in ("IQ3_XXS", "IQ3_XXS_R4"):
            new_type, why = "IQ2_S", f"attn_k: {fn} uses IQ2_S"
    elif has("attn_q"):
        if p.attn_q_type is not None:
            new_type, why = p.attn_q_type, "--attn-q-type"
        elif ft == "IQ3_XS":
            new_type, why = "IQ3_XXS", "attn_q: IQ3_XS uses IQ3_XXS"
        elif ft in ("IQ3_XXS", "IQ3_XXS_R4"):
            new_type, why = "IQ2_S", f"attn_q: {fn} uses IQ2_S"
        elif ft == "Q5_K_S":
            if hp.n_vocab >= 127999 and mtype in ("8B", "70B"):
                new_type, why = "Q4_K", "attn_q: Q5_K_S on an 8B/70B model with a large vocab"
        elif ft == "IQ5_K":
            if hp.n_vocab >= 127999 and mtype in ("8B", "70B"):
                new_type, why = "IQ4_K", "attn_q: IQ5_K on an 8B/70B model with a large vocab"
        elif ft == "IQ5_KS":
            if hp.n_vocab >= 127999 and mtype in ("8B", "70B"):
                new_type, why = "IQ4_KS", "attn_q: IQ5_KS on an 8B/70B model with a large vocab"
    elif has("ffn_down"):
        i_layer, n_layer = _layer_info(qs, qs.i_ffn_down, qs.n_ffn_down, name)
        first8 = i_layer < n_layer // 8
        umb = use_more_bits(i_layer, n_layer)
        before = new_type
        if p.ffn_down_type is not None:
            new_type, why = p.ffn_down_type, "--ffn-down-type"
        elif ft == "Q2_K":
            new_type = "Q3_K"
        elif ft == "Q2_K_S":
            if first8:
                new_type = "Q4_K"
        elif ft == "Q2_K_R4":
            if first8:
                new_type = "Q4_K_R4"
        elif ft == "IQ3_XXS" and not qs.has_imatrix:
            new_type = "Q4_K" if first8 else "Q3_K"
        elif ft == "IQ3_KT" and not qs.has_imatrix:
            new_type = "IQ4_K" if first8 else "IQ3_K"
        elif ft == "IQ3_XXS_R4" and not qs.has_imatrix:
            new_type = "Q4_K_R4" if first8 else "IQ3_K_R4"
        elif ft == "Q3_K_M":
            new_type = ("Q5_K" if i_layer < n_layer // 16
                        else "Q4_K" if arch != "falcon" or umb else "Q3_K")
        elif ft == "IQ3_M" and (first8 or (n_exp >= 4 and umb)):
            new_type = "IQ4_K"
        elif ft == "Q3_K_L":
            new_type = "Q4_K" if arch == "falcon" else "Q5_K"
        elif ft == "IQ3_KL":
            new_type = "IQ4_KS" if umb else "IQ3_K"
        elif ft == "Q4_K_M":
            if arch == "falcon":
                new_type = "Q6_K" if i_layer < n_layer // 16 else "Q5_K" if umb else "Q4_K"
            elif umb:
                new_type = "Q6_K"
        elif first8 and not qs.has_imatrix and ft in ("IQ4_NL", "IQ4_XS", "IQ4_KS", "IQ4_KSS",
                                                       "IQ4_NL_R4", "IQ4_XS_R8"):
            new_type = "Q5_K"
        elif ft == "IQ4_KS_R4" and first8 and not qs.has_imatrix:
            new_type = "Q5_K_R4"
        elif ft == "Q5_K_M" and umb:
            new_type = "Q6_K"
        elif ft in ("Q4_K_S", "Q4_K_R4") and arch != "falcon" and first8:
            new_type = "Q5_K"
        elif ft in ("Q4_0", "Q5_0") and qs.has_imatrix and first8:
            new_type = "Q4_1" if ft == "Q4_0" else "Q5_1"
        elif ft == "Q4_0_R8" and qs.has_imatrix and first8:
            new_type = "IQ4_NL_R4"
        if why is None and new_type != before:
            why = f"ffn_down layer {i_layer} of {n_layer}: {fn} uses {new_type}"
        qs.i_ffn_down += 1
    elif has("attn_output.weight"):
        before = new_type
        if p.attn_output_type is not None:
            new_type, why = p.attn_output_type, "--attn-output-type"
        elif arch != "falcon":
            if n_exp >= 4:
                if ft in _ATTN_OUT_EXPERT:
                    new_type = "Q5_K"
                elif ft == "IQ2_KL":
                    new_type = "IQ4_KS"
            else:
                m = {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "IQ3_XXS_R4": "IQ3_K_R4", "Q3_K_M": "Q4_K",
                     "Q3_K_L": "Q5_K", "IQ3_M": "IQ4_K", "IQ2_K": "IQ3_K", "IQ2_K_R4": "IQ3_K_R4",
                     "IQ3_KL": "IQ4_KS"}
                if ft == "IQ3_KT" and n_gqa >= 4:
                    new_type = "IQ3_K"
                elif ft in m:
                    new_type = m[ft]
        elif ft == "Q3_K_L":
            new_type = "Q4_K"
        if why is None and new_type != before:
            why = f"attn_output: {fn} uses {new_type}"
    elif has("attn_qkv.weight"):  # reached only by names without "attn_q" (none): kept as in ik
        if p.attn_qkv_type is not None:
            new_type = p.attn_qkv_type
        elif ft in ("Q3_K_M", "Q3_K_L"):
            new_type = "Q4_K"
        elif ft == "IQ3_M":
            new_type = "IQ4_K"
        elif ft == "Q4_K_M":
            new_type = "Q5_K"
        elif ft == "Q5_K_M":
            new_type = "Q6_K"
    elif has("ffn_gate") or has("ffn_up"):
        gate = has("ffn_gate")
        if gate:
            i_layer, n_layer = _layer_info(qs, qs.i_ffn_gate, qs.n_ffn_gate, name)
            opt = p.ffn_gate_type
        else:
            i_layer, n_layer = _layer_info(qs, qs.i_ffn_up, qs.n_ffn_up, name)
            opt = p.ffn_up_type
        tag = f"{'ffn_gate' if gate else 'ffn_up'} layer {i_layer} of {n_layer}"
        if opt is not None:
            new_type, why = opt, f"--ffn-{'gate' if gate else 'up'}-type"
        elif ft == "IQ3_XS" and n_layer // 8 <= i_layer < 7 * n_layer // 8:
            new_type, why = "IQ3_XXS", f"{tag}: IQ3_XS uses IQ3_XXS in the middle layers"
        elif ft == "IQ3_KL" and use_more_bits(i_layer, n_layer):
            new_type, why = "IQ4_KS", f"{tag}: IQ3_KL uses IQ4_KS for use_more_bits layers"
        if gate:
            qs.i_ffn_gate += 1
        else:
            qs.i_ffn_up += 1

    if why is None:
        why = f"{fn} default type {new_type.lower()}"
    if custom is not None:
        new_type, why = custom.type, custom.describe()

    note = None
    working = change_type_if_necessary(new_type, t.shape[0])
    if working != new_type:
        qs.n_fallback += 1
        note = f"fallback: row length {t.shape[0]} does not fit {new_type.lower()} -> {working.lower()}"
        new_type = working

    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        plain = interleaved_properties(new_type)[0]
        if plain != new_type:
            why += f"; token embeddings cannot use row-interleaved {new_type.lower()} -> {plain.lower()}"
            new_type = plain
    return new_type, why, note


def _ends_with_weight(name: str) -> bool:
    pos = name.rfind("weight")
    return (pos if pos >= 0 else (1 << 64) - 1) == (len(name) - 6) % (1 << 64)


def tensor_allows_quantization(t: TensorSpec, opts: MixOptions, only_copy: bool,
                               arch: str = "llama") -> tuple[bool, str]:
    """ik's `quantize` flag before the type is chosen, and why not."""
    name = t.name
    if t.type in ("I32", "I64", "I16", "I8"):
        return False, "integer tensor"
    if not _ends_with_weight(name):
        return False, "name does not end in 'weight'"
    if t.n_dims < 2:
        return False, "1-D tensor (only 2-D and 3-D tensors are quantized)"
    if "_norm.weight" in name:
        return False, "norm tensor"
    if opts.leave_output_tensor and name == "output.weight":
        return False, "--leave-output-tensor"
    if only_copy:
        return False, "COPY: tensors are copied unchanged"
    if "ffn_gate_inp.weight" in name and (opts.ffn_gate_inp_type is None or opts.ffn_gate_inp_type == t.type):
        return False, "expert gating (router) tensor"
    if name == "position_embd.weight" and arch in IK_POS_EMBD_ARCHS:
        return False, "positional embeddings"
    if name == "token_types.weight" and arch in IK_TOKEN_TYPES_ARCHS:
        return False, "token types (BERT)"
    for sub in ("ssm_conv1d", "ssm_x.weight", "ssm_dt.weight"):
        if sub in name:
            return False, "Mamba small 2-D weight"
    if "attn_rel_b.weight" in name:
        return False, "relative position bias (T5)"
    return True, ""


def tensor_requires_imatrix(name: str, new_type: str, ftype_key: str) -> bool:
    """ik's is_very_low_bpw_quant test (not for token_embd.weight / output.weight)."""
    if name in ("token_embd.weight", "output.weight"):
        return False
    if new_type in ("IQ2_XXS", "IQ2_XXS_R4", "IQ2_XS", "IQ2_XS_R4", "IQ2_S", "IQ2_S_R4", "IQ1_S",
                    "IQ1_S_R4", "IQ1_M", "IQ1_M_R4", "IQ1_KT", "IQ2_KT"):
        return True
    return new_type == "Q2_K" and ftype_key == "Q2_K_S"


# LLM_ARCH_NAMES of ik_llama.cpp (src/llama-arch.cpp): other names load as LLM_ARCH_UNKNOWN
IK_ARCHS = frozenset((
    "llama llama4 deci falcon grok gpt2 gptj gptneox mpt baichuan starcoder refact bert nomic-bert "
    "jina-bert-v2 bloom stablelm qwen qwen2 qwen2moe qwen2vl qwen3 qwen3moe qwen3next qwen3vl "
    "qwen3vlmoe qwen35moe qwen35 mellum phi2 phi3 plamo codeshell orion internlm2 minicpm gemma "
    "gemma2 gemma3 starcoder2 mamba xverse command-r dbrx olmo openelm arctic deepseek2 deepseek4 "
    "chatglm glm4 glm4moe bitnet bitnet-25 bitnet-b1.58 t5 t5encoder jais granite granitemoe cohere2 "
    "cohere2_moe dots1 ernie4_5 ernie4_5-moe hunyuan-moe gpt-oss bailingmoe2 bailingmoe3 minimax-m2 "
    "minimax-m3 smollm3 mistral3 mimo2 seed_oss step35 laguna glm-dsa mistral4 gemma4 gemma4_mtp dflash "
    "dflash-draft gemma4-assistant openpangu muse-glimmer").split())

# ik's LLM_TN(arch)(tensor) is "__missing__" for tensors an arch's name map lacks, so these
# name tests only match in the archs listed (src/llama-model.cpp LLM_TENSOR_NAMES)
IK_POS_EMBD_ARCHS = frozenset(("gpt2", "mpt", "starcoder", "bert"))
IK_TOKEN_TYPES_ARCHS = frozenset(("bert", "nomic-bert", "jina-bert-v2"))
IK_NO_OUTPUT_ARCHS = frozenset(("gptj", "bert", "nomic-bert", "jina-bert-v2", "gemma", "gemma2", "gemma4_mtp",
                                "gemma4-assistant", "command-r", "openelm", "bitnet", "cohere2"))


def ik_output_name(arch: str) -> str | None:
    """tn(LLM_TENSOR_OUTPUT, "weight") in ik_llama.cpp, None where it is "__missing__"."""
    if arch not in IK_ARCHS or arch in IK_NO_OUTPUT_ARCHS:
        return None
    return "output.weight"


# ftypes that ik's llama-quantize refuses up front without an imatrix
IK_FTYPES_NEED_IMATRIX = {"IQ2_XS", "IQ2_XXS", "IQ2_S", "IQ2_XXS_R4", "Q2_K_S", "IQ2_XS_R4", "IQ1_S",
                          "IQ1_S_R4", "IQ1_M_R4", "IQ1_M"}


def plan_ik(tensors: list[TensorSpec], info: ModelInfo, ftype: FType, opts: MixOptions,
            rules: list[TypeRule]) -> Plan:
    """Decide every tensor's type as ik_llama.cpp's llama_model_quantize_internal does."""
    if opts.prune_layers:
        raise MixError("--prune-layers is a mainline llama-quantize option; ik_llama.cpp has none")
    qs = _State(info=info, opts=opts, ftype=ftype.key, ftype_name=ftype.name,
                custom=[(r.compile(), r) for r in rules], has_imatrix=opts.uses_imatrix,
                output_name=ik_output_name(info.arch))
    default_type = ftype.default_type
    only_copy = ftype.is_copy
    plan = Plan(ftype=ftype, flavour=IK, default_type=default_type)
    ordered = list(tensors)
    if opts.keep_split:
        ordered = sorted(tensors, key=lambda t: (t.split, t.offset))
    for t in ordered:
        if "attn_v.weight" in t.name or "attn_qkv.weight" in t.name:
            qs.n_attention_wv += 1
        elif qs.output_name is not None and t.name == qs.output_name:
            qs.has_output = True
    qs.n_ffn_down = qs.n_ffn_gate = qs.n_ffn_up = info.n_layer
    n_wv, n_l = qs.n_attention_wv, info.n_layer
    if not (n_wv in (0, n_l, 3 * n_l) or info.arch in ("deci", "gemma4") or info.arch not in IK_ARCHS):
        raise MixError(f"n_attention_wv is unexpected: {n_wv} attn_v/attn_qkv tensors for {n_l} layers "
                       f"(ik_llama.cpp's sanity check)")
    plan.file_type = int(info.kv.get("general.file_type", 0)) if only_copy else ftype.id

    for t in ordered:
        name = t.name
        allows, why_not = tensor_allows_quantization(t, opts, only_copy, info.arch)
        new_type, reason, note = t.type, "", None
        quantize = allows
        if allows:
            new_type = default_type
            if opts.pure:
                reason = f"--pure: {ftype.name} default type {new_type.lower()}"
                working = change_type_if_necessary(new_type, t.shape[0])
                if working != new_type:
                    qs.n_fallback += 1
                    note = f"fallback: row length {t.shape[0]} does not fit {new_type.lower()} -> {working.lower()}"
                    new_type = working
            elif is_quantized(default_type):
                new_type, reason, note = llama_tensor_get_type(qs, new_type, t)
            else:
                reason = f"{ftype.name}: every quantizable tensor becomes {new_type.lower()}"
            for opt, applies, what in (
                (opts.token_embedding_type, name == "token_embd.weight", "--token-embedding-type"),
                (opts.per_layer_token_embedding_type, name == "per_layer_token_embd.weight",
                 "--per-layer-token-embedding-type"),
                (opts.output_tensor_type, name == "output.weight", "--output-tensor-type"),
                (opts.ffn_gate_inp_type, "ffn_gate_inp.weight" in name, "--ffn-gate-inp-type"),
            ):
                if opt is not None and applies:
                    new_type, reason, note = opt, f"{what} {opt.lower()}", None
            if name == "token_embd.weight":
                plain = interleaved_properties(new_type)[0]
                if plain != new_type:
                    reason += f"; token embeddings cannot use row-interleaved {new_type.lower()}"
                    new_type = plain
            quantize = t.type != new_type
        if not quantize:
            if allows:
                reason = f"kept as {t.type.lower()}: chosen type equals the input type ({reason})"
            else:
                reason = f"kept as {t.type.lower()}: {why_not}"
            new_type = t.type
        else:
            working, num_rows = interleaved_properties(new_type)
            if t.ne(1) % num_rows != 0:
                reason += f"; {t.ne(1)} rows not a multiple of {num_rows} -> {working.lower()}"
                new_type = working
        if note:
            reason = f"{reason}; {note}"
        plan.decisions.append(Decision(
            name=name, source_name=name, shape=tuple(t.shape), src_type=t.type, type=new_type,
            reason=reason, allows_quantization=allows, category="", fallback=note is not None,
            requires_imatrix=quantize and tensor_requires_imatrix(name, new_type, ftype.key),
            imatrix_name=name))
    if qs.n_fallback:
        plan.warnings.append(f"{qs.n_fallback} tensor(s) required fallback quantization")
    return plan
