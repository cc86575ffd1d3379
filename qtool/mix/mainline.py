"""Mainline llama.cpp's per-tensor type choice, ported from src/llama-quant.cpp.

Functions keep the C++ names: `tensor_get_category`, `tensor_allows_quantization`,
`tensor_type_fallback`, `llama_tensor_get_type_impl`, `llama_tensor_get_type`,
`tensor_requires_imatrix`; `plan_mainline` is the part of `llama_model_quantize_impl` that
decides per tensor (order, pruning, counters, tied embeddings, file type).

Order matters: the attn_v / ffn_* counters advance tensor by tensor, in the order llama.cpp
walks `ml.weights_map` (a std::map sorted by layer number, then by name; tensors outside blk.N
first), or by split index and offset with --keep-split. That is also the order it writes them.
"""

from __future__ import annotations

from collections.abc import Callable

from ..imatrix.weights import BLK_LAYER, remap_imatrix
from ..quants.types import MAINLINE, get_type
from .decision import Decision, Plan
from .ftypes import FType, parse_ftype
from .model import ModelInfo, TensorSpec, sscanf_layer
from .options import MixError, MixOptions, TypeRule
from .state import QuantizeState, is_quantized, name_ends_with_weight, use_more_bits, use_more_bits_reason

# ---------------------------------------------------------------------------------------------
# categories

OUTPUT = "output"
TOKEN_EMBD = "token_embd"
ATTENTION_QKV = "attn_qkv"
ATTENTION_KV_B = "attn_kv_b"
ATTENTION_V = "attn_v"
ATTENTION_K = "attn_k"
ATTENTION_Q = "attn_q"
ATTENTION_OUTPUT = "attn_output"
FFN_UP = "ffn_up"
FFN_GATE = "ffn_gate"
FFN_DOWN = "ffn_down"
OTHER = "other"


def tensor_name_match_token_embd(name: str) -> bool:
    return name in ("token_embd.weight", "per_layer_token_embd.weight")


def tensor_get_category(name: str) -> str:
    """Broad category by name (substring tests in llama.cpp's order)."""
    if name == "output.weight":
        return OUTPUT
    if tensor_name_match_token_embd(name):
        return TOKEN_EMBD
    for sub, cat in (("attn_qkv.weight", ATTENTION_QKV), ("attn_kv_b.weight", ATTENTION_KV_B),
                     ("attn_v.weight", ATTENTION_V), ("attn_k.weight", ATTENTION_K),
                     ("attn_q.weight", ATTENTION_Q), ("attn_output.weight", ATTENTION_OUTPUT),
                     ("ffn_up", FFN_UP), ("ffn_gate", FFN_GATE), ("ffn_down", FFN_DOWN)):
        if sub in name:
            return cat
    return OTHER


def category_is_attn_v(cat: str) -> bool:
    return cat in (ATTENTION_V, ATTENTION_QKV, ATTENTION_KV_B)


# ---------------------------------------------------------------------------------------------
# which tensors are quantized at all

_NOT_QUANTIZED_SUBSTRINGS: tuple[tuple[str, str], ...] = (
    ("ffn_gate_inp.weight", "expert gating (router) tensor"),
    ("ffn_gate_tid2eid.weight", "token-id -> expert-id routing table"),
    ("altup", "altup tensor (very small)"),
    ("laurel", "laurel tensor (very small)"),
    ("per_layer_model_proj", "per_layer_model_proj (kept as is)"),
)
_NOT_QUANTIZED_LATE: tuple[tuple[str, str], ...] = (
    ("ssm_conv1d", "Mamba/Kimi conv1d weight"),
    ("shortconv.conv.weight", "short conv weight"),
    ("indexer.k_proj.weight", "MiniMax indexer projection"),
    ("indexer.q_proj.weight", "MiniMax indexer projection"),
)
_GLM5_NEXT: tuple[str, ...] = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)
_RWKV: tuple[str, ...] = tuple(f"time_mix_{s}.weight" for s in (
    "first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1", "a2", "g1", "g2", "decay_w1",
    "decay_w2", "lerp_fused"))
_MULTIMODAL: tuple[str, ...] = (".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_",
                                ".rel_pos", ".patch_embd", ".patch_merger")


def tensor_allows_quantization(t: TensorSpec, arch: str, opts: MixOptions,
                               only_copy: bool = False) -> tuple[bool, str]:
    """Whether llama.cpp quantizes this tensor at all, and if not, the first reason why."""
    if only_copy:
        return False, "COPY: tensors are copied unchanged"
    if t.n_dims < 2:
        return False, "1-D tensor (only 2-D and 3-D tensors are quantized)"
    name = t.name
    if not name_ends_with_weight(name):
        return False, "name does not end in 'weight'"
    if "_norm.weight" in name:
        return False, "norm tensor"
    if opts.leave_output_tensor and name == "output.weight":
        return False, "--leave-output-tensor"
    for sub, why in _NOT_QUANTIZED_SUBSTRINGS:
        if sub in name:
            return False, why
    if name == "position_embd.weight":
        return False, "positional embeddings"
    if name == "token_types.weight":
        return False, "token types (BERT)"
    for sub, why in _NOT_QUANTIZED_LATE:
        if sub in name:
            return False, why
    if arch == "glm5-next":
        for sub in _GLM5_NEXT:
            if sub in name:
                return False, f"glm5-next: {sub} tensors are kept as is"
    for sub in _RWKV:
        if sub in name:
            return False, "RWKV small 2-D weight"
    if "attn_rel_b.weight" in name:
        return False, "relative position bias (T5)"
    for sub in _MULTIMODAL:
        if sub in name:
            return False, f"multimodal tensor ({sub.strip('.')})"
    if "a.rvq.codebook" in name or "mm.a.code_embd" in name:
        return False, "audio codebook"
    return True, ""


# ---------------------------------------------------------------------------------------------
# row-length fallback

_FALLBACK_IQ4_NL = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS"}
_FALLBACK_Q4_0 = {"Q2_0", "Q2_K", "Q3_K", "TQ1_0", "TQ2_0"}
_FALLBACK_OTHER = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def tensor_type_fallback(t: TensorSpec, target: str) -> tuple[str, str | None]:
    """(type, fallback note or None): a type whose block fits the row length (ne[0])."""
    ncols = t.shape[0]
    qk = get_type(target).block_size
    if ncols % qk == 0:
        return target, None
    if target in _FALLBACK_IQ4_NL:
        ret = "IQ4_NL"
    elif target in _FALLBACK_Q4_0:
        ret = "Q4_0"
    elif target in _FALLBACK_OTHER:
        ret = _FALLBACK_OTHER[target]
    elif qk <= 32:
        ret = target
    else:
        raise MixError(f"no tensor type fallback is defined for type {target.lower()} "
                       f"(tensor {t.name}, row length {ncols} not divisible by {qk})")
    note = f"fallback: row length {ncols} not divisible by {qk} ({target.lower()})"
    if ncols % get_type(ret).block_size != 0:
        ret = "F16"
        note += ", must use F16 due to unusual shape"
    return ret, note + f" -> {ret.lower()}"


# ---------------------------------------------------------------------------------------------
# type choice: llama_tensor_get_type_impl (src/llama-quant.cpp), one helper per branch of its
# if-chain; each docstring quotes the branch's condition. A helper takes (state, the type so far,
# tensor, category) and returns (type, reason or None for "the ftype's default"); those of a
# per-tensor branch advance its counter as the C++ does.

Choice = tuple[str, str | None]

_IQ_LOW_OUT = {"IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"}
_IQ_LOW = {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"}


def _glm5_next_q8(qs: QuantizeState, new_type: str, name: str) -> bool:
    """glm5-next keeps attn_q_a / attn_q_b / nextn.eh_proj at Q8_0 (or a float type)."""
    return (qs.info.arch == "glm5-next" and ("attn_q_a" in name or "attn_q_b" in name or "nextn.eh_proj" in name)
            and new_type not in ("F32", "BF16", "F16"))


def _output(qs: QuantizeState, new_type: str, t: TensorSpec, cat: str) -> Choice:
    """`category == OUTPUT || (qs.has_tied_embeddings && category == TOKEN_EMBD)` (tied: no output.weight)."""
    what = "output" if cat == OUTPUT else "token_embd (tied to the output: no output.weight)"
    ft = qs.ftype
    if qs.opts.output_tensor_type is not None:
        out = qs.opts.output_tensor_type
        return out, f"{what}: --output-tensor-type {out.lower()}"
    nx, qk = t.shape[0], get_type(new_type).block_size
    if ft == "MXFP4_MOE":
        return "Q8_0", f"{what}: MXFP4_MOE uses Q8_0"
    if qs.info.arch == "falcon":
        return "Q8_0", f"{what}: falcon uses Q8_0"
    if nx % qk != 0:
        return "Q8_0", f"{what}: row length {nx} not divisible by {qk} ({new_type.lower()}), uses Q8_0"
    if ft in _IQ_LOW_OUT:
        return "Q5_K", f"{what}: {qs.ftype_name} uses Q5_K"
    if new_type != "Q8_0":
        return "Q6_K", f"{what}: uses Q6_K"
    return new_type, f"{what}: stays Q8_0"


def _mxfp4_moe(qs: QuantizeState, new_type: str, t: TensorSpec, cat: str) -> Choice:
    """`ftype == LLAMA_FTYPE_MOSTLY_MXFP4_MOE`: 3-D expert tensors MXFP4, the rest Q8_0."""
    arch = qs.info.arch
    is_bailing_expert = arch == "bailingmoe3" and cat in (FFN_UP, FFN_GATE, FFN_DOWN)
    if t.ne(2) > 1 and (arch != "bailingmoe3" or is_bailing_expert):
        return "MXFP4", "MXFP4_MOE: expert tensor (3-D) -> MXFP4"
    return "Q8_0", "MXFP4_MOE: non-expert tensor -> Q8_0"


_EMBD_TYPE = {
    **dict.fromkeys(("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"), "Q2_K"),
    **dict.fromkeys(("IQ2_S", "IQ2_M", "IQ3_XXS"), "IQ3_S"),
    **dict.fromkeys(("TQ1_0", "TQ2_0", "Q2_0"), "Q4_K"),
}


def _token_embd(qs: QuantizeState, new_type: str, t: TensorSpec, cat: str) -> Choice:
    """`category == TOKEN_EMBD` (token_embd and per_layer_token_embd, not tied to the output)."""
    if qs.opts.token_embedding_type is not None:
        out = qs.opts.token_embedding_type
        return out, f"--token-embedding-type {out.lower()}"
    out = _EMBD_TYPE.get(qs.ftype, new_type)
    return out, (f"token_embd: {qs.ftype_name} uses {out}" if qs.ftype in _EMBD_TYPE else None)


def _iq1_iq2_ftype(qs: QuantizeState, new_type: str, t: TensorSpec, cat: str) -> Choice:
    """`ftype == IQ2_XXS || IQ2_XS || IQ1_S || IQ2_S || IQ2_M || IQ1_M`: every role in one branch."""
    ft, fn = qs.ftype, qs.ftype_name
    n_gqa, n_exp = qs.info.n_gqa, qs.info.n_expert
    iq2sm = ft in ("IQ2_S", "IQ2_M")
    if category_is_attn_v(cat):
        qs.next_attention_wv()
        if n_gqa >= 4 or n_exp >= 4:
            return "Q4_K", (f"{cat}: {fn} uses Q4_K when n_gqa >= 4 or n_expert >= 4 "
                            f"(n_gqa {n_gqa}, n_expert {n_exp})")
        out = "IQ3_S" if iq2sm else "Q2_K"
        return out, f"{cat}: {fn} uses {out} (n_gqa {n_gqa} < 4)"
    if n_exp == 8 and cat == ATTENTION_K:
        return "Q4_K", f"attn_k: {fn} with 8 experts uses Q4_K"
    if cat == FFN_DOWN:
        i, n = qs.next_ffn_down()
        if i < n // 8:
            out = "IQ3_S" if iq2sm else "Q2_K"
            return out, f"ffn_down #{i} in the first 1/8 of {n} layers: {fn} uses {out}"
        return new_type, None
    if cat == ATTENTION_OUTPUT:
        if n_exp == 8:
            return "Q5_K", f"attn_output: {fn} with 8 experts uses Q5_K"
        if ft in ("IQ1_S", "IQ1_M"):
            return "IQ2_XXS", f"attn_output: {fn} uses IQ2_XXS"
        if iq2sm:
            return "IQ3_S", f"attn_output: {fn} uses IQ3_S"
    return new_type, None


def _attn_v_ftype(qs: QuantizeState, new_type: str, i: int, n: int, tag: str) -> Choice:
    """The ftype tests of the attn_v branch, before its 70B and 8-expert overrides."""
    ft, fn, n_gqa, im = qs.ftype, qs.ftype_name, qs.info.n_gqa, qs.has_imatrix
    if ft == "Q2_K":
        out = "Q4_K" if n_gqa >= 4 else "Q3_K"
        return out, f"{tag}: Q2_K uses {out} (n_gqa {n_gqa})"
    if ft == "Q2_K_S" and n_gqa >= 4:
        return "Q4_K", f"{tag}: Q2_K_S uses Q4_K when n_gqa >= 4"
    if ft == "IQ3_XXS":
        out = "Q4_K" if n_gqa >= 4 else ("IQ3_S" if not im else "IQ3_XXS")
        return out, f"{tag}: IQ3_XXS uses {out} (n_gqa {n_gqa}, {'with' if im else 'no'} imatrix)"
    if ft in ("IQ3_XS", "IQ3_S") and n_gqa >= 4:
        return "Q4_K", f"{tag}: {fn} uses Q4_K when n_gqa >= 4"
    if ft == "IQ3_M":
        return "Q4_K", f"{tag}: IQ3_M uses Q4_K"
    if ft == "Q3_K_M":
        out = "Q5_K" if i < 2 else "Q4_K"
        return out, f"{tag}: Q3_K_M uses {out} ({'first two' if i < 2 else 'after the first two'})"
    if ft == "Q3_K_L":
        return "Q5_K", f"{tag}: Q3_K_L uses Q5_K"
    if ft in ("IQ4_NL", "IQ4_XS") and n_gqa >= 4:
        return "Q5_K", f"{tag}: {fn} uses Q5_K when n_gqa >= 4"
    if ft in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
        return "Q6_K", f"{tag}: {fn} uses Q6_K {use_more_bits_reason(i, n)}"
    if ft == "Q4_K_S" and i < 4:
        return "Q5_K", f"{tag}: Q4_K_S uses Q5_K for the first four"
    if ft in ("Q4_K_M", "Q5_K_M"):
        return new_type, f"{tag}: not a use_more_bits layer, {fn} default {new_type.lower()}"
    return new_type, None


def _attn_v(qs: QuantizeState, new_type: str, t: TensorSpec, cat: str) -> Choice:
    """`category_is_attn_v(category)` (attn_v, attn_qkv, attn_kv_b)."""
    i, n = qs.next_attention_wv()
    tag = f"{cat} #{i} of {n}"
    out, why = _attn_v_ftype(qs, new_type, i, n, tag)
    if qs.info.is_70b_mainline() and out in ("Q3_K", "Q4_K"):
        out, why = "Q5_K", f"{tag}: 70B model (8 heads share attn_v) bumps Q3_K/Q4_K to Q5_K"
    if qs.info.n_expert == 8:
        out, why = "Q8_0", f"{tag}: 8-expert model uses Q8_0"
    return out, why


def _attn_k(qs: QuantizeState, new_type: str, t: TensorSpec, cat: str) -> Choice:
    """`category == ATTENTION_K`."""
    if qs.info.n_expert == 8:
        return "Q8_0", "attn_k: 8-expert model uses Q8_0"
    if qs.ftype == "IQ3_XS":
        return "IQ3_XXS", "attn_k: IQ3_XS uses IQ3_XXS"
    if qs.ftype == "IQ3_XXS":
        return "IQ2_S", "attn_k: IQ3_XXS uses IQ2_S"
    return new_type, None


def _attn_q(qs: QuantizeState, new_type: str, t: TensorSpec, cat: str) -> Choice:
    """`category == ATTENTION_Q`."""
    if qs.ftype == "IQ3_XS":
        return "IQ3_XXS", "attn_q: IQ3_XS uses IQ3_XXS"
    if qs.ftype == "IQ3_XXS":
        return "IQ2_S", "attn_q: IQ3_XXS uses IQ2_S"
    return new_type, None


def _ffn_down_ftype(qs: QuantizeState, new_type: str, i_layer: int, n_layer: int, tag: str) -> Choice:
    """The ftype tests of the ffn_down branch, in the C++ order."""
    ft, fn, arch, im = qs.ftype, qs.ftype_name, qs.info.arch, qs.has_imatrix
    first8 = i_layer < n_layer // 8
    umb = use_more_bits(i_layer, n_layer)
    if ft == "Q2_K":
        return "Q3_K", f"{tag}: Q2_K uses Q3_K"
    if ft == "Q2_K_S":
        return ("Q4_K", f"{tag}: Q2_K_S uses Q4_K in the first 1/8 of layers") if first8 else (new_type, None)
    if ft == "IQ3_XXS" and not im:
        out = "Q4_K" if first8 else "Q3_K"
        return out, f"{tag}: IQ3_XXS without imatrix uses {out}" + (" in the first 1/8 of layers" if first8 else "")
    if ft == "Q3_K_M":
        if i_layer < n_layer // 16:
            return "Q5_K", f"{tag}: Q3_K_M uses Q5_K in the first 1/16 of layers"
        if arch != "falcon" or umb:
            return "Q4_K", f"{tag}: Q3_K_M uses Q4_K"
        return "Q3_K", f"{tag}: Q3_K_M on falcon uses Q3_K outside use_more_bits layers"
    if ft == "IQ3_M" and (first8 or (qs.info.n_expert == 8 and umb)):
        return "Q4_K", f"{tag}: IQ3_M uses Q4_K " + ("in the first 1/8 of layers" if first8
                                                    else "for use_more_bits layers of 8-expert models")
    if ft == "Q3_K_L":
        out = "Q4_K" if arch == "falcon" else "Q5_K"
        return out, f"{tag}: Q3_K_L uses {out}"
    if ft == "Q4_K_M":
        if arch == "falcon":
            out = "Q6_K" if i_layer < n_layer // 16 else "Q5_K" if umb else "Q4_K"
            return out, f"{tag}: Q4_K_M on falcon uses {out}"
        if umb:
            return "Q6_K", f"{tag}: Q4_K_M uses Q6_K {use_more_bits_reason(i_layer, n_layer)}"
        return new_type, f"{tag}: not a use_more_bits layer, Q4_K_M default q4_k"
    if first8 and ft in ("IQ4_NL", "IQ4_XS") and not im:
        return "Q5_K", f"{tag}: {fn} without imatrix uses Q5_K in the first 1/8 of layers"
    if ft == "Q5_K_M" and umb:
        return "Q6_K", f"{tag}: Q5_K_M uses Q6_K {use_more_bits_reason(i_layer, n_layer)}"
    if ft == "Q4_K_S" and arch != "falcon" and first8:
        return "Q5_K", f"{tag}: Q4_K_S uses Q5_K in the first 1/8 of layers"
    if ft in ("Q4_0", "Q5_0") and im and first8:
        out = "Q4_1" if ft == "Q4_0" else "Q5_1"
        return out, f"{tag}: {fn} with imatrix uses {out} in the first 1/8 of layers"
    return new_type, None


def _ffn_down(qs: QuantizeState, new_type: str, t: TensorSpec, cat: str) -> Choice:
    """`category == FFN_DOWN`."""
    i_layer, n_layer = qs.next_ffn_down(t.name)
    return _ffn_down_ftype(qs, new_type, i_layer, n_layer, f"ffn_down layer {i_layer} of {n_layer}")


_EXPERT8_ATTN_OUT = {"Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M",
                     "IQ3_S", "IQ3_M", "IQ4_XS"}
_ATTN_OUT = {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}


def _attn_output(qs: QuantizeState, new_type: str, t: TensorSpec, cat: str) -> Choice:
    """`category == ATTENTION_OUTPUT`."""
    ft, fn = qs.ftype, qs.ftype_name
    if qs.info.arch == "falcon":
        return ("Q4_K", "attn_output: Q3_K_L on falcon uses Q4_K") if ft == "Q3_K_L" else (new_type, None)
    if qs.info.n_expert == 8:
        return ("Q5_K", f"attn_output: {fn} with 8 experts uses Q5_K") if ft in _EXPERT8_ATTN_OUT else (new_type, None)
    if ft in _ATTN_OUT:
        return _ATTN_OUT[ft], f"attn_output: {fn} uses {_ATTN_OUT[ft]}"
    return new_type, None


def _ffn_gate_up(qs: QuantizeState, new_type: str, t: TensorSpec, cat: str) -> Choice:
    """`category == FFN_GATE || category == FFN_UP` (same rules, own counters)."""
    i_layer, n_layer = qs.next_ffn_gate(t.name) if cat == FFN_GATE else qs.next_ffn_up(t.name)
    if qs.ftype == "IQ3_XS" and n_layer // 8 <= i_layer < 7 * n_layer // 8:
        return "IQ3_XXS", (f"{cat} layer {i_layer} of {n_layer}: IQ3_XS uses IQ3_XXS outside the first/last 1/8 "
                           "of layers")
    return new_type, None


# the per-category branches after the ftype-wide ones. llama.cpp's ATTENTION_QKV branch after
# ffn_down is unreachable (attn_qkv is attn_v-like) and left out.
_CATEGORY_BRANCHES: dict[str, Callable[[QuantizeState, str, TensorSpec, str], Choice]] = {
    ATTENTION_V: _attn_v, ATTENTION_QKV: _attn_v, ATTENTION_KV_B: _attn_v, ATTENTION_K: _attn_k,
    ATTENTION_Q: _attn_q, FFN_DOWN: _ffn_down, ATTENTION_OUTPUT: _attn_output, FFN_GATE: _ffn_gate_up,
    FFN_UP: _ffn_gate_up,
}


def llama_tensor_get_type_impl(qs: QuantizeState, new_type: str, t: TensorSpec, cat: str) -> tuple[str, str]:
    """The ftype's mix rules for one tensor: (type, reason); the first branch that applies decides."""
    if _glm5_next_q8(qs, new_type, t.name):
        return "Q8_0", "glm5-next: attn_q_a / attn_q_b / nextn.eh_proj are kept at Q8_0 or above"
    if cat == OUTPUT or (not qs.has_output and cat == TOKEN_EMBD):
        out, why = _output(qs, new_type, t, cat)
    elif qs.ftype == "MXFP4_MOE":
        out, why = _mxfp4_moe(qs, new_type, t, cat)
    elif cat == TOKEN_EMBD:
        out, why = _token_embd(qs, new_type, t, cat)
    elif qs.ftype in _IQ_LOW:
        out, why = _iq1_iq2_ftype(qs, new_type, t, cat)
    elif cat in _CATEGORY_BRANCHES:
        out, why = _CATEGORY_BRANCHES[cat](qs, new_type, t, cat)
    else:
        out, why = new_type, None
    return out, why if why is not None else f"{qs.ftype_name} default type {out.lower()}"


def llama_tensor_get_type(qs: QuantizeState, t: TensorSpec, default_type: str, cat: str) -> tuple[str, str, str | None]:
    """(type, reason, fallback note) for a tensor that allows quantization."""
    opts = qs.opts
    name = t.name
    if opts.token_embedding_type is not None and cat == TOKEN_EMBD:
        # per_layer_token_embd follows --token-embedding-type unless a --tensor-type names it
        if name != "per_layer_token_embd.weight" or qs.first_rule(name) is None:
            out = opts.token_embedding_type
            qs.step("--token-embedding-type", f"{out.lower()} for the token embeddings (no fallback)", out, True)
            qs.skip_rules("--token-embedding-type decides the token embeddings")
            return out, f"--token-embedding-type {out.lower()}", None
    if opts.output_tensor_type is not None and cat == OUTPUT:
        out = opts.output_tensor_type
        qs.step("--output-tensor-type", f"{out.lower()} for output.weight (no fallback)", out, True)
        qs.skip_rules("--output-tensor-type decides output.weight")
        return out, f"--output-tensor-type {out.lower()}", None

    new_type = default_type
    if not is_quantized(default_type):
        qs.step("float base type", f"{qs.ftype_name}: every quantizable tensor becomes {new_type.lower()}",
                new_type, True)
        qs.skip_rules(f"float base type {qs.ftype_name}: llama-quantize applies no rule")
        return new_type, f"{qs.ftype_name}: every quantizable tensor becomes {new_type.lower()}", None

    idx = qs.first_rule_index(name)
    if idx is not None:
        rule = qs.rules[idx][1]
        qs.rule_hit = idx
        new_type, reason = rule.type, rule.describe()
        qs.step("rules", f"rule #{idx + 1} matched first", new_type, True)
        qs.step("ftype mix", "not consulted: a rule decided (its layer counters do not advance for this tensor)")
    elif opts.pure:
        reason = f"--pure: {qs.ftype_name} default type {new_type.lower()}"
        qs.step("rules", "no rule matched")
        qs.step("--pure", f"the ftype's mix is not used: default type {new_type.lower()}", new_type, True)
    else:
        qs.step("rules", "no rule matched")
        new_type, reason = llama_tensor_get_type_impl(qs, new_type, t, cat)
        qs.step("ftype mix", reason, new_type, True)
    chosen = new_type
    new_type, note = tensor_type_fallback(t, new_type)
    if note is not None:
        qs.fallback_from = chosen
        qs.step("fallback", note.removeprefix("fallback: "), new_type, True)
    else:
        qs.step("fallback", f"row length {t.shape[0]} fits {new_type.lower()}: no fallback")
    return new_type, reason, note


def tensor_requires_imatrix(name: str, dst_type: str, ftype_key: str) -> bool:
    """llama.cpp refuses these targets without imatrix data (not token_embd / output)."""
    if tensor_name_match_token_embd(name) or name == "output.weight":
        return False
    if dst_type in ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"):
        return True
    if dst_type == "Q2_K":
        return ftype_key == "Q2_K_S"
    return False


# ---------------------------------------------------------------------------------------------
# the driver


def _name_key(name: str) -> tuple[int, bytes]:
    """weight_name_comparer: by sscanf'd layer (-1 when none), then bytewise by name."""
    il = sscanf_layer(name)
    return (-1 if il is None else il, name.encode())


def remap_layer(name: str, prune: list[int], mapped: dict[int, str], next_id: list[int]) -> str:
    """--prune-layers renaming; "" means the tensor is pruned. next_id is a one-element box."""
    if not prune:
        return name
    m = BLK_LAYER.search(name)
    if not m:
        return name
    blk = int(m.group(1))
    if blk in mapped:
        pass
    elif blk in prune:
        mapped[blk] = ""
    elif blk < prune[0]:
        mapped[blk] = str(blk)
        next_id[0] = blk + 1
    else:
        mapped[blk] = str(next_id[0])
        next_id[0] += 1
    if not mapped[blk]:
        return ""
    return name[:m.start(1)] + mapped[blk] + name[m.end(1):]


# llama_model_loader's guess when general.file_type is absent: the most common tensor type T gives
# LLAMA_FTYPE_MOSTLY_T (Q3_K / Q4_K / Q5_K: their _M mix, F32: ALL_F32), ids from the ftype table;
# a type not listed gives ALL_F32
_GUESSABLE = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
              "Q6_K", "TQ1_0", "TQ2_0", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ1_S", "IQ1_M", "IQ4_NL",
              "IQ4_XS", "IQ3_S", "NVFP4", "Q1_0", "Q2_0")
LLAMA_FTYPE_MOSTLY_NVFP4 = 39  # in enum llama_ftype, not in llama-quantize's table
LLAMA_FTYPE_GUESSED = 1024


def loader_ftype(ordered: list[TensorSpec], kv: dict[str, object]) -> int:
    """llama_model_loader's ftype: general.file_type if present, else guessed | GUESSED."""
    if "general.file_type" in kv:
        return int(kv["general.file_type"])  # type: ignore[call-overload]
    counts: dict[str, int] = {}
    best, best_n = "F32", 0
    for t in ordered:
        counts[t.type] = counts.get(t.type, 0) + 1
        if best_n < counts[t.type]:
            best_n, best = counts[t.type], t.type
    if best == "NVFP4":
        guess = LLAMA_FTYPE_MOSTLY_NVFP4
    else:
        guess = parse_ftype(best, MAINLINE).id if best in _GUESSABLE else 0
    return guess | LLAMA_FTYPE_GUESSED


def order_tensors(tensors: list[TensorSpec], keep_split: bool) -> list[TensorSpec]:
    """llama.cpp's processing (and write) order."""
    if keep_split:
        return sorted(tensors, key=lambda t: (t.split, t.offset))
    return sorted(tensors, key=lambda t: _name_key(t.name))


def _kept_tensors(tensors: list[TensorSpec], opts: MixOptions,
                  plan: Plan) -> tuple[list[tuple[str, TensorSpec]], dict[int, str]]:
    """(source name, renamed tensor) of those --prune-layers keeps, in processing order; and the
    layer mapping (original layer -> new layer string, "" when pruned)."""
    prune = sorted(set(opts.prune_layers))
    mapped: dict[int, str] = {}
    next_id = [0]
    kept: list[tuple[str, TensorSpec]] = []
    for t in order_tensors(tensors, False):  # ml.weights_map order
        new_name = remap_layer(t.name, prune, mapped, next_id)
        if not new_name:
            plan.pruned.append(t.name)
            continue
        kept.append((t.name, TensorSpec(new_name, tuple(t.shape), t.type, t.split, t.offset)))
    if prune:
        plan.block_count = next_id[0]
    if opts.keep_split:  # keep_split sorts the weights by split index, then offset
        kept.sort(key=lambda st: (st[1].split, st[1].offset))
    return kept, mapped


def _count_tensors(qs: QuantizeState, kept: list[tuple[str, TensorSpec]]) -> list[str]:
    """llama_model_quantize_impl's first pass: the categories, n_attention_wv and tied embeddings."""
    cats = [tensor_get_category(t.name) for _, t in kept]
    qs.n_attention_wv = sum(category_is_attn_v(c) for c in cats)
    qs.has_output = OUTPUT in cats
    qs.n_ffn_down = qs.n_ffn_gate = qs.n_ffn_up = qs.info.n_layer
    return cats


def plan_mainline(tensors: list[TensorSpec], info: ModelInfo, ftype: FType, opts: MixOptions,
                  rules: list[TypeRule]) -> Plan:
    """Decide every tensor's type as llama_model_quantize_impl does (rules: --tensor-type order)."""
    qs = QuantizeState(info=info, opts=opts, ftype=ftype.key, ftype_name=ftype.name,
                       rules=[(r.compile(), r) for r in rules], has_imatrix=opts.uses_imatrix)
    plan = Plan(ftype=ftype, flavour=MAINLINE, default_type=ftype.default_type)
    kept, mapped = _kept_tensors(tensors, opts, plan)
    cats = _count_tensors(qs, kept)
    plan.file_type = loader_ftype(order_tensors(tensors, False), info.kv) if ftype.is_copy else ftype.id

    for (src_name, t), cat in zip(kept, cats, strict=True):
        allows, why_not = tensor_allows_quantization(t, info.arch, opts, ftype.is_copy)
        note = None
        qs.begin()
        if allows:
            qs.step("quantizable", f"yes (category {cat})")
            qs.step("ftype default", f"the default type of {ftype.name}", ftype.default_type, True)
            new_type, reason, note = llama_tensor_get_type(qs, t, ftype.default_type, cat)
            if note:
                reason = f"{reason}; {note}"
        else:
            new_type, reason = t.type, f"kept as {t.type.lower()}: {why_not}"
            qs.step("quantizable", f"no: {why_not}", t.type, True)
        plan.decisions.append(Decision(
            name=t.name, source_name=src_name, shape=tuple(t.shape), src_type=t.type, type=new_type,
            reason=reason, allows_quantization=allows, category=cat, fallback=note is not None,
            requires_imatrix=tensor_requires_imatrix(t.name, new_type, ftype.key),
            imatrix_name=remap_imatrix(t.name, mapped) if opts.uses_imatrix else t.name,
            rule=qs.rule_hit, rules_skipped=qs.rules_skipped, fallback_from=qs.fallback_from, steps=qs.steps))

    plan.rules = list(rules)
    if plan.n_fallback:
        plan.warnings.append(f"{plan.n_fallback} of {len(tensors)} tensor(s) required fallback quantization")
    return plan
