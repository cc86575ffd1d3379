"""ik_llama.cpp's per-tensor type choice, ported from its src/llama-quantize.cpp (commit 8337e4cd).

ik_llama.cpp's rules differ from mainline's even for the ftypes both have (for example attn_v
of a 4-to-8-expert model becomes Q8_0, n_gqa >= 4 bumps attn_v one step, the fallback table
maps Q5_K to Q6_0), so this is a separate port: `change_type_if_necessary`,
`llama_tensor_get_type` (one helper per branch of its if-chain, `--custom-q` applied after the
mix rules and before the fallback) and the per-tensor part of `llama_model_quantize_internal`.
Tensors are visited in file order. The counters and shared helpers are in state.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..quants.types import IK, QK_K, get_type
from .decision import Decision, Plan
from .ftypes import FType
from .model import ModelInfo, TensorSpec
from .options import MixError, MixOptions, TypeRule
from .state import QuantizeState, is_quantized, name_ends_with_weight, plain_type, use_more_bits

EMBD_NAMES = ("token_embd.weight", "per_layer_token_embd.weight")

# change_type_if_necessary's switch: the fallback of a type whose block does not fit the row
_FALLBACK: dict[str, str] = {
    **dict.fromkeys((
        "IQ2_XXS", "IQ2_XXS_R4", "IQ2_XS", "IQ2_XS_R4", "IQ2_KS", "IQ2_S", "IQ2_S_R4", "IQ3_XXS",
        "IQ3_XXS_R4", "IQ3_S", "IQ3_S_R4", "IQ1_S", "IQ1_M", "Q2_K", "Q2_K_R4", "Q3_K", "Q3_K_R4",
        "IQ2_K", "IQ2_K_R4", "IQ2_KL", "IQ3_KS", "IQ3_K", "IQ3_K_R4", "IQ4_KSS", "IQ4_KS", "IQ4_KS_R4",
        "IQ4_XS_R8", "IQ1_KT", "IQ2_KT", "IQ3_KT", "IQ4_KT", "IQ4_XS"), "IQ4_NL"),
    **dict.fromkeys(("IQ4_K", "IQ4_K_R4", "Q4_K_R4", "IQ5_KS", "IQ5_KS_R4", "Q4_K"), "Q5_0"),
    **dict.fromkeys(("IQ5_K", "IQ5_K_R4", "Q5_K_R4", "Q5_K"), "Q6_0"),
    **dict.fromkeys(("IQ6_K", "Q6_K_R4", "Q8_K_R8", "Q6_K"), "Q8_0"),
}
# checked like the types above (rows of QK_IQ1BN) but without a fallback: an error
_BITNET = ("IQ1_BN", "IQ2_BN", "IQ2_BN_R4")


def change_type_if_necessary(new_type: str, nx: int) -> str:
    """ik's fallback when the row length nx is not a multiple of the type's block.

    Only the types of its two lists are checked (every type of the switch has blocks of QK_K,
    the Bitnet ones of QK_IQ1BN); block sizes come from the type table.
    """
    if new_type not in _FALLBACK and new_type not in _BITNET:
        return new_type
    if nx % get_type(new_type).block_size == 0:
        return new_type
    if new_type in _FALLBACK:
        return _FALLBACK[new_type]
    raise MixError(f"Unsupported tensor size encountered: row length {nx} for {new_type.lower()}")


def _fallback(qs: QuantizeState, new_type: str, nx: int) -> tuple[str, str | None]:
    """change_type_if_necessary, counted in qs.n_fallback: (type, fallback note or None)."""
    working = change_type_if_necessary(new_type, nx)
    if working == new_type:
        qs.step("fallback", f"row length {nx} fits {new_type.lower()}: no fallback")
        return new_type, None
    qs.n_fallback += 1
    note = f"fallback: row length {nx} does not fit {new_type.lower()} -> {working.lower()}"
    qs.fallback_from = new_type
    qs.step("fallback", note.removeprefix("fallback: "), working, True)
    return working, note


def _large_vocab_8b_70b(qs: QuantizeState) -> bool:
    """n_vocab >= 127999 && (model.type == MODEL_8B || model.type == MODEL_70B)."""
    return qs.info.n_vocab >= 127999 and qs.info.ik_model_type() in ("8B", "70B")


# --- llama_tensor_get_type (src/llama-quantize.cpp), one helper per branch of its if-chain ------
# Each docstring quotes the branch's condition. A helper takes (state, the type so far, tensor)
# and returns (type, reason or None for "the ftype's default"); those of a per-tensor branch
# advance its counter as the C++ does.

Choice = tuple[str, str | None]

_OUT_IQ_LOW = {"IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M", "IQ2_K", "IQ3_K",
               "IQ2_KS", "IQ3_K_R4", "IQ3_KS", "IQ2_K_R4", "IQ3_XXS_R4", "IQ2_KL", "IQ2_M_R4",
               "IQ1_S_R4", "IQ1_M_R4", "IQ2_KT", "IQ3_KT", "IQ1_KT"}
_OUT_IQ5 = {"IQ3_S", "IQ3_M", "IQ3_KL", "IQ4_XS", "IQ3_S_R4", "IQ4_KS", "IQ4_KSS", "IQ4_KS_R4"}
_OUT_KEEP = {"Q8_0", "Q8_0_R8", "IQ6_K", "Q6_K_R4", "Q8_K_R8", "Q8_KV", "Q8_KV_R8"}


def _output(qs: QuantizeState, new_type: str, t: TensorSpec) -> Choice:
    """`name == tn(LLM_TENSOR_OUTPUT, "weight") || (!qs.has_output && name == token_embd)`."""
    what = "output" if t.name == "output.weight" else "token_embd (tied: no output.weight)"
    ft, fn = qs.ftype, qs.ftype_name
    if qs.opts.output_tensor_type is not None:
        return qs.opts.output_tensor_type, f"{what}: --output-tensor-type"
    if qs.info.arch == "falcon" or t.shape[0] % QK_K != 0:
        return "Q8_0", f"{what}: falcon or row length not a multiple of 256 -> Q8_0"
    if ft in _OUT_IQ_LOW:
        new_type = "IQ4_K" if not qs.has_output else "Q5_K"
        return new_type, f"{what}: {fn} uses {new_type}"
    if ft in ("IQ2_XXS_R4", "IQ2_XS_R4"):
        new_type = "IQ4_K_R4" if not qs.has_output else "Q5_K_R4"
        return new_type, f"{what}: {fn} uses {new_type}"
    if ft in _OUT_IQ5 and not qs.has_output:
        return "IQ5_K", f"{what}: {fn} uses IQ5_K"
    if new_type not in _OUT_KEEP:
        return "Q6_K", f"{what}: uses Q6_K"
    return new_type, None


_EMBD_TYPE = {
    **dict.fromkeys(("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M", "IQ2_XXS_R4", "IQ2_XS_R4", "IQ1_S_R4", "IQ1_M_R4"),
                    "Q2_K"),
    **dict.fromkeys(("IQ2_S", "IQ2_M", "IQ2_M_R4", "IQ3_XXS", "IQ3_KT"), "IQ3_S"),
    "IQ3_XXS_R4": "IQ3_K",
    **dict.fromkeys(("IQ1_BN", "IQ2_BN", "IQ2_BN_R4"), "IQ4_NL"),
}


def _token_embd(qs: QuantizeState, new_type: str, t: TensorSpec) -> Choice:
    """`name == "token_embd.weight"` and `name == "per_layer_token_embd.weight"` (same rules)."""
    if t.name == "token_embd.weight":
        opt, flag = qs.opts.token_embedding_type, "--token-embedding-type"
    else:
        opt, flag = qs.opts.per_layer_token_embedding_type, "--per-layer-token-embedding-type"
    if opt is not None:
        return opt, f"{flag} {opt.lower()}"
    r = _EMBD_TYPE.get(qs.ftype)
    if r is not None:
        return r, f"{t.name.split('.')[0]}: {qs.ftype_name} uses {r}"
    return new_type, None


@dataclass(frozen=True)
class _LowBitTypes:
    """The types of one of the IQ1_S_R4 / IQ1_M_R4 and IQ2_KT branches (same structure)."""

    attn_v: tuple[str, str, str]  # n_expert >= 4 or n_gqa >= 4; n_gqa >= 2; else
    attn_k_q: str  # attn_k / attn_q with >= 8 experts
    layer0_ffn: str  # blk.0.ffn_down / ffn_gate / ffn_up with >= 8 experts
    attn_qkv: str
    shexp: str
    ffn_down: str  # the first 1/8 of the layers
    attn_output: tuple[str, str]  # >= 4 experts; else


_IQ1_R4 = _LowBitTypes(("IQ4_K_R4", "IQ3_K_R4", "Q2_K_R4"), "Q4_K_R4", "IQ3_K_R4", "IQ2_K_R4", "IQ4_K_R4",
                       "Q2_K_R4", ("Q5_K_R4", "IQ2_K_R4"))
_LOW_BIT = {"IQ1_S_R4": _IQ1_R4, "IQ1_M_R4": _IQ1_R4,
            "IQ2_KT": _LowBitTypes(("IQ4_K", "IQ3_K", "Q2_K"), "Q4_K", "IQ3_K", "IQ3_K", "IQ4_K", "IQ3_K",
                                   ("Q5_K", "IQ3_K"))}


def _low_bit_ftype(qs: QuantizeState, new_type: str, t: TensorSpec) -> Choice:
    """`ftype == IQ1_S_R4 || ftype == IQ1_M_R4` and `ftype == IQ2_KT`: every role in one branch."""
    lt, name, fn = _LOW_BIT[qs.ftype], t.name, qs.ftype_name
    n_exp, n_gqa = qs.info.n_expert, qs.info.n_gqa
    if "attn_v.weight" in name:
        qs.next_attention_wv()
        new_type = lt.attn_v[0] if n_exp >= 4 or n_gqa >= 4 else lt.attn_v[1] if n_gqa >= 2 else lt.attn_v[2]
        return new_type, f"attn_v: {fn} uses {new_type}"
    if n_exp >= 8 and "attn_k" in name:
        return lt.attn_k_q, f"attn_k: {fn} with >= 8 experts"
    if n_exp >= 8 and any(f"blk.0.{s}" in name for s in ("ffn_down", "ffn_gate", "ffn_up")):
        return lt.layer0_ffn, f"layer 0 ffn: {fn} with >= 8 experts"
    if n_exp >= 8 and "attn_q" in name:
        return lt.attn_k_q, f"attn_q: {fn} with >= 8 experts"
    if "attn_qkv.weight" in name:
        return lt.attn_qkv, f"attn_qkv: {fn}"
    if "_shexp.weight" in name:
        return lt.shexp, f"shared expert: {fn}"
    if "ffn_down" in name:
        i_layer, n_layer = qs.next_ffn_down(name)
        if qs.opts.ffn_down_type is not None:
            return qs.opts.ffn_down_type, "--ffn-down-type"
        if i_layer < n_layer // 8:
            return lt.ffn_down, f"ffn_down layer {i_layer} of {n_layer}: first 1/8 -> {lt.ffn_down}"
        return new_type, None
    if "attn_output.weight" in name:
        new_type = lt.attn_output[0] if n_exp >= 4 else lt.attn_output[1]
        return new_type, f"attn_output: {fn} uses {new_type}"
    return new_type, None


_IQ1_IQ2 = {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M", "IQ2_KS", "IQ2_XXS_R4", "IQ2_XS_R4",
            "IQ2_M_R4"}


def _iq1_iq2_ftype(qs: QuantizeState, new_type: str, t: TensorSpec) -> Choice:
    """`ftype == IQ2_XXS || ... || ftype == IQ2_M_R4` (the IQ1 / IQ2 ftypes): every role in one branch."""
    ft, fn, name = qs.ftype, qs.ftype_name, t.name
    n_exp, n_gqa = qs.info.n_expert, qs.info.n_gqa
    s_or_m = ft in ("IQ2_S", "IQ2_M", "IQ2_M_R4")
    if "attn_v.weight" in name:
        qs.next_attention_wv()
        if n_gqa >= 4 or n_exp >= 4:
            new_type = "IQ4_K"
        elif n_gqa >= 2 or n_exp >= 2:
            new_type = "IQ3_K"
        else:
            new_type = "IQ3_S" if s_or_m else "Q2_K"
        return new_type, f"attn_v: {fn} uses {new_type} (n_gqa {n_gqa}, n_expert {n_exp})"
    if n_exp >= 8 and "attn_k" in name:
        return "Q4_K", f"attn_k: {fn} with >= 8 experts"
    if n_exp >= 8 and "attn_q" in name:
        return "Q4_K", f"attn_q: {fn} with >= 8 experts"
    if "attn_qkv.weight" in name:
        new_type = "IQ3_XXS" if s_or_m else "IQ2_K"
        return new_type, f"attn_qkv: {fn} uses {new_type}"
    if "ffn_down" in name:
        i, n = qs.next_ffn_down()
        if i < n // 8:
            new_type = "IQ3_S" if s_or_m else "Q2_K"
            return new_type, f"ffn_down #{i} in the first 1/8 of {n}: {fn} uses {new_type}"
        return new_type, None
    if "attn_output.weight" in name:
        if qs.opts.attn_output_type is not None:
            return qs.opts.attn_output_type, "--attn-output-type"
        if n_exp >= 4:
            return "Q5_K", f"attn_output: {fn} with >= 4 experts"
        if ft in ("IQ1_S", "IQ1_M"):
            return "IQ2_K", f"attn_output: {fn} uses IQ2_K"
        if s_or_m:
            return "IQ3_S", f"attn_output: {fn} uses IQ3_S"
    return new_type, None


# attn_v: ftype -> type for n_gqa >= 4, n_gqa >= 2, else without an imatrix, else with one
_ATTN_V_BY_GQA = {
    "Q2_K": ("Q4_K", "Q3_K", "Q3_K", "Q3_K"),
    "IQ2_K": ("IQ4_K", "IQ4_K", "IQ3_K", "IQ3_K"),
    "IQ2_K_R4": ("IQ4_K_R4", "IQ4_K_R4", "IQ3_K_R4", "IQ3_K_R4"),
    "IQ3_XXS": ("Q4_K", "IQ3_K", "IQ3_S", "IQ3_XXS"),
    "IQ3_KT": ("IQ4_K", "IQ3_K", "IQ3_K", "IQ3_K"),
    "IQ4_KT": ("IQ5_K", "IQ4_K", "IQ4_K", "IQ4_K"),
    "IQ3_XXS_R4": ("Q4_K_R4", "IQ3_K_R4", "IQ3_K_R4", "IQ3_XXS_R4"),
    "IQ3_KL": ("IQ5_K", "IQ5_K", "IQ4_K", "IQ4_K"),
    "IQ3_M": ("IQ5_K", "IQ5_K", "IQ4_K", "IQ4_K"),
    "Q3_K_L": ("Q5_K", "Q5_K", "Q5_K", "Q5_K"),
}
# attn_v: ftype -> (least n_gqa, type); below it the branch does not apply (the chain goes on)
_ATTN_V_MIN_GQA = {
    "Q2_K_S": (4, "Q4_K"), "Q2_K_R4": (4, "Q4_K_R4"),
    "IQ3_XS": (2, "IQ4_K"), "IQ3_S": (2, "IQ4_K"), "IQ3_S_R4": (2, "IQ4_K_R4"), "IQ3_K": (2, "IQ4_K"),
    "IQ3_KS": (2, "IQ4_KS"), "IQ2_KL": (2, "IQ4_KS"), "IQ3_K_R4": (2, "IQ4_K_R4"),
    **dict.fromkeys(("IQ4_NL", "IQ4_XS", "IQ4_NL_R4", "IQ4_XS_R8", "IQ4_KS", "IQ4_KSS"), (2, "IQ5_K")),
    "IQ4_KS_R4": (2, "IQ5_K_R4"), "IQ4_K": (2, "IQ5_K"), "IQ4_K_R4": (2, "IQ5_K"),
}
# attn_v with n_gqa >= 4, for the ftypes the chain above leaves alone: one step up
_GQA4_BUMP = {
    "Q2_K": "IQ3_S", "IQ3_XXS": "IQ3_S", "Q2_K_R4": "IQ3_K_R4", "IQ3_XXS_R4": "IQ3_K_R4",
    "Q3_K": "Q4_K", "IQ3_S": "Q4_K", "IQ3_K": "IQ4_K", "IQ3_KS": "IQ4_KS", "IQ2_KL": "IQ4_KS",
    "IQ3_S_R4": "Q4_K_R4", "Q3_K_R4": "Q4_K_R4", "Q4_K": "Q5_K", "IQ4_XS": "Q5_K", "IQ4_NL": "Q5_K",
    "IQ4_K": "IQ5_K", "IQ4_KS": "IQ5_K", "IQ4_NL_R4": "Q5_K", "IQ4_XS_R8": "Q5_K", "Q5_K": "Q6_K",
    "IQ5_K": "IQ6_K", "IQ5_KS": "IQ6_K",
}


# attn_v of ik's MODEL_70B (8 heads share attn_v: more bits for little size)
_ATTN_V_70B = {"Q3_K": "Q5_K", "Q4_K": "Q5_K", "IQ3_K": "IQ5_K"}


def _attn_v_ftype(qs: QuantizeState, new_type: str, i: int, n: int, tag: str) -> Choice | None:
    """The ftype tests of the attn_v branch; None where none applies (the n_gqa >= 4 bump follows)."""
    ft, fn, n_gqa = qs.ftype, qs.ftype_name, qs.info.n_gqa
    by_gqa = _ATTN_V_BY_GQA.get(ft)
    if by_gqa is not None:
        return by_gqa[0 if n_gqa >= 4 else 1 if n_gqa >= 2 else 3 if qs.has_imatrix else 2], None
    least = _ATTN_V_MIN_GQA.get(ft)
    if least is not None:
        return (least[1], None) if n_gqa >= least[0] else None
    if ft == "Q3_K_M":
        return ("Q5_K" if i < 2 else "Q4_K"), None
    if ft in ("Q4_K_M", "Q5_K_M"):
        return ("Q6_K", f"{tag}: {fn} uses Q6_K for use_more_bits layers") if use_more_bits(i, n) else None
    if ft in ("Q4_K_S", "Q4_K_R4"):
        return ("Q5_K", f"{tag}: {fn} uses Q5_K for the first four") if i < 4 else None
    if ft == "Q5_K_S":
        return ("Q6_K" if _large_vocab_8b_70b(qs) else new_type), None
    if ft in ("IQ5_K", "IQ5_KS"):
        return ("IQ6_K" if _large_vocab_8b_70b(qs) else new_type), None
    return None


def _attn_v(qs: QuantizeState, new_type: str, t: TensorSpec) -> Choice:
    """`name.find("attn_v.weight") != npos`."""
    i, n = qs.next_attention_wv()
    tag = f"attn_v #{i} of {n}"
    n_gqa = qs.info.n_gqa
    if qs.opts.attn_v_type is not None:
        return qs.opts.attn_v_type, "--attn-v-type"
    if qs.info.n_expert >= 4:
        return "Q8_0", f"{tag}: model with >= 4 experts uses Q8_0"
    if qs.info.ik_model_type() == "70B":
        return _ATTN_V_70B.get(new_type, new_type), f"{tag}: 70B model bumps attn_v"
    chosen = _attn_v_ftype(qs, new_type, i, n, tag)
    if chosen is not None:
        out, why = chosen
    elif (n_gqa >= 4 and not (qs.info.arch == "dflash-draft" and qs.ftype in ("Q4_K_M", "Q5_K_M"))
          and new_type in _GQA4_BUMP):
        out = _GQA4_BUMP[new_type]
        why = f"{tag}: n_gqa {n_gqa} >= 4 bumps {new_type.lower()} to {out.lower()}"
    else:
        out, why = new_type, None
    if why is None and out != new_type:
        why = f"{tag}: {qs.ftype_name} uses {out} (n_gqa {n_gqa})"
    return out, why


def _attn_k(qs: QuantizeState, new_type: str, t: TensorSpec) -> Choice:
    """`name.find("attn_k") != npos`."""
    ft = qs.ftype
    if qs.opts.attn_k_type is not None:
        return qs.opts.attn_k_type, "--attn-k-type"
    if qs.info.n_expert >= 4:
        return "Q8_0", "attn_k: model with >= 4 experts uses Q8_0"
    if ft == "IQ3_XS":
        return "IQ3_XXS", "attn_k: IQ3_XS uses IQ3_XXS"
    if ft in ("IQ3_XXS", "IQ3_XXS_R4"):
        return "IQ2_S", f"attn_k: {qs.ftype_name} uses IQ2_S"
    return new_type, None


_ATTN_Q_LARGE_VOCAB = {"Q5_K_S": "Q4_K", "IQ5_K": "IQ4_K", "IQ5_KS": "IQ4_KS"}


def _attn_q(qs: QuantizeState, new_type: str, t: TensorSpec) -> Choice:
    """`name.find("attn_q") != npos` (attn_qkv.weight too: ik's attn_qkv branch is never reached)."""
    ft = qs.ftype
    if qs.opts.attn_q_type is not None:
        return qs.opts.attn_q_type, "--attn-q-type"
    if ft == "IQ3_XS":
        return "IQ3_XXS", "attn_q: IQ3_XS uses IQ3_XXS"
    if ft in ("IQ3_XXS", "IQ3_XXS_R4"):
        return "IQ2_S", f"attn_q: {qs.ftype_name} uses IQ2_S"
    if ft in _ATTN_Q_LARGE_VOCAB and _large_vocab_8b_70b(qs):
        return _ATTN_Q_LARGE_VOCAB[ft], f"attn_q: {ft} on an 8B/70B model with a large vocab"
    return new_type, None


_FFN_DOWN_IQ4 = ("IQ4_NL", "IQ4_XS", "IQ4_KS", "IQ4_KSS", "IQ4_NL_R4", "IQ4_XS_R8")


def _ffn_down_ftype(qs: QuantizeState, new_type: str, i_layer: int, n_layer: int) -> str:
    """The ftype tests of the ffn_down branch, in the C++ order."""
    ft, arch, im = qs.ftype, qs.info.arch, qs.has_imatrix
    first8 = i_layer < n_layer // 8
    umb = use_more_bits(i_layer, n_layer)
    if ft == "Q2_K":
        return "Q3_K"
    if ft in ("Q2_K_S", "Q2_K_R4"):
        return ("Q4_K" if ft == "Q2_K_S" else "Q4_K_R4") if first8 else new_type
    if ft == "IQ3_XXS" and not im:
        return "Q4_K" if first8 else "Q3_K"
    if ft == "IQ3_KT" and not im:
        return "IQ4_K" if first8 else "IQ3_K"
    if ft == "IQ3_XXS_R4" and not im:
        return "Q4_K_R4" if first8 else "IQ3_K_R4"
    if ft == "Q3_K_M":
        return "Q5_K" if i_layer < n_layer // 16 else "Q4_K" if arch != "falcon" or umb else "Q3_K"
    if ft == "IQ3_M" and (first8 or (qs.info.n_expert >= 4 and umb)):
        return "IQ4_K"
    if ft == "Q3_K_L":
        return "Q4_K" if arch == "falcon" else "Q5_K"
    if ft == "IQ3_KL":
        return "IQ4_KS" if umb else "IQ3_K"
    if ft == "Q4_K_M":
        if arch == "falcon":
            return "Q6_K" if i_layer < n_layer // 16 else "Q5_K" if umb else "Q4_K"
        return "Q6_K" if umb else new_type
    if first8 and not im and ft in _FFN_DOWN_IQ4:
        return "Q5_K"
    if ft == "IQ4_KS_R4" and first8 and not im:
        return "Q5_K_R4"
    if ft == "Q5_K_M" and umb:
        return "Q6_K"
    if ft in ("Q4_K_S", "Q4_K_R4") and arch != "falcon" and first8:
        return "Q5_K"
    if ft in ("Q4_0", "Q5_0") and im and first8:
        return "Q4_1" if ft == "Q4_0" else "Q5_1"
    if ft == "Q4_0_R8" and im and first8:
        return "IQ4_NL_R4"
    return new_type


def _ffn_down(qs: QuantizeState, new_type: str, t: TensorSpec) -> Choice:
    """`name.find("ffn_down") != npos`."""
    i_layer, n_layer = qs.next_ffn_down(t.name)
    if qs.opts.ffn_down_type is not None:
        return qs.opts.ffn_down_type, "--ffn-down-type"
    out = _ffn_down_ftype(qs, new_type, i_layer, n_layer)
    if out == new_type:
        return new_type, None
    return out, f"ffn_down layer {i_layer} of {n_layer}: {qs.ftype_name} uses {out}"


_ATTN_OUT_EXPERT = {
    "Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M",
    "IQ4_XS", "IQ4_K", "IQ4_KSS", "IQ4_KS", "IQ4_KS_R4", "IQ5_KS", "IQ5_KS_R4", "IQ2_K", "IQ3_K",
    "IQ3_KL", "Q4_K_R4", "IQ4_NL_R4", "IQ4_XS_R8", "Q3_K_R4", "IQ3_KT", "IQ3_KS", "Q2_K_R4",
    "IQ4_K_R4", "IQ3_K_R4", "IQ2_K_R4", "IQ3_XXS_R4", "IQ3_S_R4",
}
_ATTN_OUT = {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "IQ3_XXS_R4": "IQ3_K_R4", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K",
             "IQ3_M": "IQ4_K", "IQ2_K": "IQ3_K", "IQ2_K_R4": "IQ3_K_R4", "IQ3_KL": "IQ4_KS"}


def _attn_output(qs: QuantizeState, new_type: str, t: TensorSpec) -> Choice:
    """`name.find("attn_output.weight") != npos`."""
    ft = qs.ftype
    if qs.opts.attn_output_type is not None:
        return qs.opts.attn_output_type, "--attn-output-type"
    out = new_type
    if qs.info.arch != "falcon":
        if qs.info.n_expert >= 4:
            out = "Q5_K" if ft in _ATTN_OUT_EXPERT else "IQ4_KS" if ft == "IQ2_KL" else new_type
        elif ft == "IQ3_KT" and qs.info.n_gqa >= 4:
            out = "IQ3_K"
        else:
            out = _ATTN_OUT.get(ft, new_type)
    elif ft == "Q3_K_L":
        out = "Q4_K"
    return out, (f"attn_output: {qs.ftype_name} uses {out}" if out != new_type else None)


def _ffn_gate_up(qs: QuantizeState, new_type: str, t: TensorSpec) -> Choice:
    """`name.find("ffn_gate") != npos` and `name.find("ffn_up") != npos` (same rules, own counters)."""
    gate = "ffn_gate" in t.name
    i_layer, n_layer = qs.next_ffn_gate(t.name) if gate else qs.next_ffn_up(t.name)
    opt, role = (qs.opts.ffn_gate_type, "gate") if gate else (qs.opts.ffn_up_type, "up")
    tag = f"ffn_{role} layer {i_layer} of {n_layer}"
    if opt is not None:
        return opt, f"--ffn-{role}-type"
    if qs.ftype == "IQ3_XS" and n_layer // 8 <= i_layer < 7 * n_layer // 8:
        return "IQ3_XXS", f"{tag}: IQ3_XS uses IQ3_XXS in the middle layers"
    if qs.ftype == "IQ3_KL" and use_more_bits(i_layer, n_layer):
        return "IQ4_KS", f"{tag}: IQ3_KL uses IQ4_KS for use_more_bits layers"
    return new_type, None


# the per-role branches after the ftype-wide ones, in the C++ order (first substring found wins).
# Its attn_qkv.weight branch is left out: such names contain "attn_q" and take that branch.
_ROLE_BRANCHES: tuple[tuple[str, Callable[[QuantizeState, str, TensorSpec], Choice]], ...] = (
    ("attn_v.weight", _attn_v), ("attn_k", _attn_k), ("attn_q", _attn_q), ("ffn_down", _ffn_down),
    ("attn_output.weight", _attn_output), ("ffn_gate", _ffn_gate_up), ("ffn_up", _ffn_gate_up),
)


def _mix_rule(qs: QuantizeState, new_type: str, t: TensorSpec) -> Choice:
    """The if-chain of llama_tensor_get_type: the first branch that applies decides."""
    name = t.name
    if (qs.output_name is not None and name == qs.output_name) or (not qs.has_output and name == "token_embd.weight"):
        return _output(qs, new_type, t)
    if name in EMBD_NAMES:
        return _token_embd(qs, new_type, t)
    if qs.ftype in _LOW_BIT:
        return _low_bit_ftype(qs, new_type, t)
    if qs.ftype in _IQ1_IQ2:
        return _iq1_iq2_ftype(qs, new_type, t)
    for sub, branch in _ROLE_BRANCHES:
        if sub in name:
            return branch(qs, new_type, t)
    return new_type, None


def llama_tensor_get_type(qs: QuantizeState, new_type: str, t: TensorSpec) -> tuple[str, str, str | None]:
    """(type, reason, fallback note): ik's mix rules, then --custom-q, then the fallback, then
    no row-interleaved type for the token embeddings."""
    idx = qs.first_rule_index(t.name)
    new_type, why = _mix_rule(qs, new_type, t)
    if why is None:
        why = f"{qs.ftype_name} default type {new_type.lower()}"
    qs.step("ftype mix", why, new_type, True)
    if idx is not None:
        custom = qs.rules[idx][1]
        qs.rule_hit = idx
        new_type, why = custom.type, custom.describe()
        qs.step("rules", f"rule #{idx + 1} matched first: it replaces the mix's choice", new_type, True)
    else:
        qs.step("rules", "no rule matched")
    new_type, note = _fallback(qs, new_type, t.shape[0])
    if t.name in EMBD_NAMES:
        plain = plain_type(new_type)[0]
        if plain != new_type:
            why += f"; token embeddings cannot use row-interleaved {new_type.lower()} -> {plain.lower()}"
            qs.step("row-interleaved", f"token embeddings cannot use {new_type.lower()}", plain, True)
            new_type = plain
    return new_type, why, note


def tensor_allows_quantization(t: TensorSpec, opts: MixOptions, only_copy: bool,
                               arch: str = "llama") -> tuple[bool, str]:
    """ik's `quantize` flag before the type is chosen, and why not."""
    name = t.name
    if t.type in ("I32", "I64", "I16", "I8"):
        return False, "integer tensor"
    if not name_ends_with_weight(name):
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


def _count_tensors(qs: QuantizeState, ordered: list[TensorSpec]) -> None:
    """llama_model_quantize_internal's first pass: n_attention_wv, has_output and its sanity check."""
    for t in ordered:
        if "attn_v.weight" in t.name or "attn_qkv.weight" in t.name:
            qs.n_attention_wv += 1
        elif qs.output_name is not None and t.name == qs.output_name:
            qs.has_output = True
    info = qs.info
    qs.n_ffn_down = qs.n_ffn_gate = qs.n_ffn_up = info.n_layer
    n_wv, n_l = qs.n_attention_wv, info.n_layer
    if not (n_wv in (0, n_l, 3 * n_l) or info.arch in ("deci", "gemma4") or info.arch not in IK_ARCHS):
        raise MixError(f"n_attention_wv is unexpected: {n_wv} attn_v/attn_qkv tensors for {n_l} layers "
                       f"(ik_llama.cpp's sanity check)")


def _choose_type(qs: QuantizeState, t: TensorSpec, ftype: FType) -> tuple[str, str, str | None]:
    """The type of a tensor that allows quantization: (type, reason, fallback note).

    --pure or the mix rules, then the options llama_model_quantize_internal applies after them,
    then no row-interleaved token embeddings.
    """
    opts, name = qs.opts, t.name
    new_type, note = ftype.default_type, None
    if opts.pure:
        reason = f"--pure: {ftype.name} default type {new_type.lower()}"
        qs.step("--pure", f"neither the mix nor the rules are consulted: default type {new_type.lower()}",
                new_type, True)
        qs.skip_rules("--pure: ik_llama.cpp consults no --custom-q rule")
        new_type, note = _fallback(qs, new_type, t.shape[0])
    elif is_quantized(new_type):
        new_type, reason, note = llama_tensor_get_type(qs, new_type, t)
    else:
        reason = f"{ftype.name}: every quantizable tensor becomes {new_type.lower()}"
        qs.step("float base type", reason, new_type, True)
        qs.skip_rules(f"float base type {ftype.name}: ik_llama.cpp applies no rule")
    for opt, applies, what in (
        (opts.token_embedding_type, name == "token_embd.weight", "--token-embedding-type"),
        (opts.per_layer_token_embedding_type, name == "per_layer_token_embd.weight",
         "--per-layer-token-embedding-type"),
        (opts.output_tensor_type, name == "output.weight", "--output-tensor-type"),
        (opts.ffn_gate_inp_type, "ffn_gate_inp.weight" in name, "--ffn-gate-inp-type"),
    ):
        if opt is not None and applies:
            new_type, reason, note = opt, f"{what} {opt.lower()}", None
            qs.step(what, f"{opt.lower()} overrides the choice so far (no fallback)", opt, True)
            qs.skip_rules(f"{what} overrides any rule for {name}")
            qs.fallback_from = None
    if name == "token_embd.weight":
        plain = plain_type(new_type)[0]
        if plain != new_type:
            reason += f"; token embeddings cannot use row-interleaved {new_type.lower()}"
            qs.step("row-interleaved", f"token embeddings cannot use {new_type.lower()}", plain, True)
            new_type = plain
    return new_type, reason, note


def _decide(qs: QuantizeState, t: TensorSpec, ftype: FType) -> Decision:
    """One tensor of llama_model_quantize_internal's main loop."""
    allows, why_not = tensor_allows_quantization(t, qs.opts, ftype.is_copy, qs.info.arch)
    new_type, reason, note = t.type, "", None
    qs.begin()
    if allows:
        qs.step("quantizable", "yes")
        qs.step("ftype default", f"the default type of {ftype.name}", ftype.default_type, True)
        new_type, reason, note = _choose_type(qs, t, ftype)
    else:
        qs.step("quantizable", f"no: {why_not}", t.type, True)
    quantize = allows and new_type != t.type
    if not quantize:
        reason = (f"kept as {t.type.lower()}: chosen type equals the input type ({reason})" if allows
                  else f"kept as {t.type.lower()}: {why_not}")
        if allows:
            qs.step("copy", f"the chosen type equals the input type {t.type.lower()}: copied", t.type)
        new_type = t.type
    else:
        working, num_rows = plain_type(new_type)
        if t.ne(1) % num_rows != 0:
            reason += f"; {t.ne(1)} rows not a multiple of {num_rows} -> {working.lower()}"
            qs.step("row-interleaved", f"{t.ne(1)} rows not a multiple of {num_rows}", working, True)
            new_type = working
    if note:
        reason = f"{reason}; {note}"
    return Decision(name=t.name, source_name=t.name, shape=tuple(t.shape), src_type=t.type, type=new_type,
                    reason=reason, allows_quantization=allows, category="", fallback=note is not None,
                    requires_imatrix=quantize and tensor_requires_imatrix(t.name, new_type, ftype.key),
                    imatrix_name=t.name, rule=qs.rule_hit, rules_skipped=qs.rules_skipped,
                    fallback_from=qs.fallback_from if note is not None else None, steps=qs.steps)


def plan_ik(tensors: list[TensorSpec], info: ModelInfo, ftype: FType, opts: MixOptions,
            rules: list[TypeRule]) -> Plan:
    """Decide every tensor's type as ik_llama.cpp's llama_model_quantize_internal does."""
    if opts.prune_layers:
        raise MixError("--prune-layers is a mainline llama-quantize option; ik_llama.cpp has none")
    qs = QuantizeState(info=info, opts=opts, ftype=ftype.key, ftype_name=ftype.name,
                       rules=[(r.compile(), r) for r in rules], has_imatrix=opts.uses_imatrix,
                       output_name=ik_output_name(info.arch))
    plan = Plan(ftype=ftype, flavour=IK, default_type=ftype.default_type)
    ordered = sorted(tensors, key=lambda t: (t.split, t.offset)) if opts.keep_split else list(tensors)
    _count_tensors(qs, ordered)
    plan.file_type = int(info.kv.get("general.file_type", 0)) if ftype.is_copy else ftype.id
    plan.decisions = [_decide(qs, t, ftype) for t in ordered]
    plan.rules = list(rules)
    if qs.n_fallback:
        plan.warnings.append(f"{qs.n_fallback} tensor(s) required fallback quantization")
    return plan
