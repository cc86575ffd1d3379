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

import re
from dataclasses import dataclass, field

from ..quants.types import get_type
from .decision import Decision, Plan
from .ftypes import MAINLINE, FType
from .model import ModelInfo, TensorSpec, sscanf_layer
from .options import MixError, MixOptions, TypeRule

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

_SIZE_T = 1 << 64

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
    # name.rfind("weight") == name.size() - 6, with size_t arithmetic
    pos = name.rfind("weight")
    if (pos if pos >= 0 else _SIZE_T - 1) != (len(name) - 6) % _SIZE_T:
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


def block_size(type_name: str) -> int:
    return get_type(type_name).block_size


def is_quantized(type_name: str) -> bool:
    return get_type(type_name).quantized


def tensor_type_fallback(t: TensorSpec, target: str) -> tuple[str, str | None]:
    """(type, fallback note or None): a type whose block fits the row length (ne[0])."""
    ncols = t.shape[0]
    qk = block_size(target)
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
    if ncols % block_size(ret) != 0:
        ret = "F16"
        note += ", must use F16 due to unusual shape"
    return ret, note + f" -> {ret.lower()}"


# ---------------------------------------------------------------------------------------------
# type choice


@dataclass
class _State:
    """quantize_state_impl: counters that advance tensor by tensor."""

    info: ModelInfo
    opts: MixOptions
    ftype: str  # enum key, e.g. "Q4_K_M"
    ftype_name: str
    rules: list[tuple[re.Pattern[str], TypeRule]] = field(default_factory=list)
    n_attention_wv: int = 0
    n_ffn_down: int = 0
    n_ffn_gate: int = 0
    n_ffn_up: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    has_imatrix: bool = False
    has_tied_embeddings: bool = True


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


_IQ_LOW_OUT = {"IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"}
_IQ_LOW = {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"}
_EXPERT8_ATTN_OUT = {"Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M",
                     "IQ3_S", "IQ3_M", "IQ4_XS"}


def _layer_info(qs: _State, i_layer: int, n_layer: int, name: str) -> tuple[int, int]:
    """layer_info: with experts, the layer comes from the name (experts are not in order)."""
    if max(1, qs.info.n_expert) > 1:
        il = sscanf_layer(name)
        if il is None:
            raise MixError(f"Failed to determine layer for tensor {name}")
        if il < 0 or il >= n_layer:
            raise MixError(f"Bad layer {il} for tensor {name}. Must be in [0, {n_layer})")
        i_layer = il
    return i_layer, n_layer


def _umb(i: int, n: int) -> str:
    """Why use_more_bits(i, n) holds."""
    if i < n // 8:
        return "in the first 1/8 of layers"
    if i >= 7 * n // 8:
        return "in the last 1/8 of layers"
    return "every third layer in between"


def llama_tensor_get_type_impl(qs: _State, new_type: str, t: TensorSpec, cat: str) -> tuple[str, str]:
    """The ftype's mix rules for one tensor: (type, reason). Advances the counters."""
    name = t.name
    arch = qs.info.arch
    ft = qs.ftype
    fn = qs.ftype_name
    hp = qs.info
    n_gqa = hp.n_gqa
    default = new_type
    why: str | None = None

    if arch == "glm5-next" and ("attn_q_a" in name or "attn_q_b" in name or "nextn.eh_proj" in name):
        if new_type not in ("F32", "BF16", "F16"):
            return "Q8_0", "glm5-next: attn_q_a / attn_q_b / nextn.eh_proj are kept at Q8_0 or above"

    if cat == OUTPUT or (qs.has_tied_embeddings and cat == TOKEN_EMBD):
        what = "output" if cat == OUTPUT else "token_embd (tied to the output: no output.weight)"
        if qs.opts.output_tensor_type is not None:
            new_type = qs.opts.output_tensor_type
            why = f"{what}: --output-tensor-type {new_type.lower()}"
        else:
            nx = t.shape[0]
            qk = block_size(new_type)
            if ft == "MXFP4_MOE":
                new_type, why = "Q8_0", f"{what}: MXFP4_MOE uses Q8_0"
            elif arch == "falcon" or nx % qk != 0:
                new_type = "Q8_0"
                why = (f"{what}: falcon uses Q8_0" if arch == "falcon"
                       else f"{what}: row length {nx} not divisible by {qk} ({default.lower()}), uses Q8_0")
            elif ft in _IQ_LOW_OUT:
                new_type, why = "Q5_K", f"{what}: {fn} uses Q5_K"
            elif new_type != "Q8_0":
                new_type, why = "Q6_K", f"{what}: uses Q6_K"
            else:
                why = f"{what}: stays Q8_0"
    elif ft == "MXFP4_MOE":
        is_bailing_expert = arch == "bailingmoe3" and cat in (FFN_UP, FFN_GATE, FFN_DOWN)
        if t.ne(2) > 1 and (arch != "bailingmoe3" or is_bailing_expert):
            new_type, why = "MXFP4", "MXFP4_MOE: expert tensor (3-D) -> MXFP4"
        else:
            new_type, why = "Q8_0", "MXFP4_MOE: non-expert tensor -> Q8_0"
    elif cat == TOKEN_EMBD:
        if qs.opts.token_embedding_type is not None:
            new_type = qs.opts.token_embedding_type
            why = f"--token-embedding-type {new_type.lower()}"
        elif ft in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            new_type, why = "Q2_K", f"token_embd: {fn} uses Q2_K"
        elif ft in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            new_type, why = "IQ3_S", f"token_embd: {fn} uses IQ3_S"
        elif ft in ("TQ1_0", "TQ2_0", "Q2_0"):
            new_type, why = "Q4_K", f"token_embd: {fn} uses Q4_K"
    elif ft in _IQ_LOW:
        iq2sm = ft in ("IQ2_S", "IQ2_M")
        if category_is_attn_v(cat):
            if n_gqa >= 4 or hp.n_expert >= 4:
                new_type = "Q4_K"
                why = f"{cat}: {fn} uses Q4_K when n_gqa >= 4 or n_expert >= 4 (n_gqa {n_gqa}, n_expert {hp.n_expert})"
            else:
                new_type = "IQ3_S" if iq2sm else "Q2_K"
                why = f"{cat}: {fn} uses {new_type} (n_gqa {n_gqa} < 4)"
            qs.i_attention_wv += 1
        elif hp.n_expert == 8 and cat == ATTENTION_K:
            new_type, why = "Q4_K", f"attn_k: {fn} with 8 experts uses Q4_K"
        elif cat == FFN_DOWN:
            if qs.i_ffn_down < qs.n_ffn_down // 8:
                new_type = "IQ3_S" if iq2sm else "Q2_K"
                why = f"ffn_down #{qs.i_ffn_down} in the first 1/8 of {qs.n_ffn_down} layers: {fn} uses {new_type}"
            qs.i_ffn_down += 1
        elif cat == ATTENTION_OUTPUT:
            if hp.n_expert == 8:
                new_type, why = "Q5_K", f"attn_output: {fn} with 8 experts uses Q5_K"
            elif ft in ("IQ1_S", "IQ1_M"):
                new_type, why = "IQ2_XXS", f"attn_output: {fn} uses IQ2_XXS"
            elif iq2sm:
                new_type, why = "IQ3_S", f"attn_output: {fn} uses IQ3_S"
    elif category_is_attn_v(cat):
        i, n = qs.i_attention_wv, qs.n_attention_wv
        tag = f"{cat} #{i} of {n}"
        if ft == "Q2_K":
            new_type = "Q4_K" if n_gqa >= 4 else "Q3_K"
            why = f"{tag}: Q2_K uses {new_type} (n_gqa {n_gqa})"
        elif ft == "Q2_K_S" and n_gqa >= 4:
            new_type, why = "Q4_K", f"{tag}: Q2_K_S uses Q4_K when n_gqa >= 4"
        elif ft == "IQ3_XXS":
            new_type = "Q4_K" if n_gqa >= 4 else ("IQ3_S" if not qs.has_imatrix else "IQ3_XXS")
            why = f"{tag}: IQ3_XXS uses {new_type} (n_gqa {n_gqa}, {'with' if qs.has_imatrix else 'no'} imatrix)"
        elif ft in ("IQ3_XS", "IQ3_S") and n_gqa >= 4:
            new_type, why = "Q4_K", f"{tag}: {fn} uses Q4_K when n_gqa >= 4"
        elif ft == "IQ3_M":
            new_type, why = "Q4_K", f"{tag}: IQ3_M uses Q4_K"
        elif ft == "Q3_K_M":
            new_type = "Q5_K" if i < 2 else "Q4_K"
            why = f"{tag}: Q3_K_M uses {new_type} ({'first two' if i < 2 else 'after the first two'})"
        elif ft == "Q3_K_L":
            new_type, why = "Q5_K", f"{tag}: Q3_K_L uses Q5_K"
        elif ft in ("IQ4_NL", "IQ4_XS") and n_gqa >= 4:
            new_type, why = "Q5_K", f"{tag}: {fn} uses Q5_K when n_gqa >= 4"
        elif ft in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            new_type, why = "Q6_K", f"{tag}: {fn} uses Q6_K {_umb(i, n)}"
        elif ft == "Q4_K_S" and i < 4:
            new_type, why = "Q5_K", f"{tag}: Q4_K_S uses Q5_K for the first four"
        elif ft in ("Q4_K_M", "Q5_K_M"):
            why = f"{tag}: not a use_more_bits layer, {fn} default {new_type.lower()}"
        if hp.is_70b_mainline() and new_type in ("Q3_K", "Q4_K"):
            new_type = "Q5_K"
            why = f"{tag}: 70B model (8 heads share attn_v) bumps Q3_K/Q4_K to Q5_K"
        if hp.n_expert == 8:
            new_type, why = "Q8_0", f"{tag}: 8-expert model uses Q8_0"
        qs.i_attention_wv += 1
    elif cat == ATTENTION_K:
        if hp.n_expert == 8:
            new_type, why = "Q8_0", "attn_k: 8-expert model uses Q8_0"
        elif ft == "IQ3_XS":
            new_type, why = "IQ3_XXS", "attn_k: IQ3_XS uses IQ3_XXS"
        elif ft == "IQ3_XXS":
            new_type, why = "IQ2_S", "attn_k: IQ3_XXS uses IQ2_S"
    elif cat == ATTENTION_Q:
        if ft == "IQ3_XS":
            new_type, why = "IQ3_XXS", "attn_q: IQ3_XS uses IQ3_XXS"
        elif ft == "IQ3_XXS":
            new_type, why = "IQ2_S", "attn_q: IQ3_XXS uses IQ2_S"
    elif cat == FFN_DOWN:
        i_layer, n_layer = _layer_info(qs, qs.i_ffn_down, qs.n_ffn_down, name)
        tag = f"ffn_down layer {i_layer} of {n_layer}"
        if ft == "Q2_K":
            new_type, why = "Q3_K", f"{tag}: Q2_K uses Q3_K"
        elif ft == "Q2_K_S":
            if i_layer < n_layer // 8:
                new_type, why = "Q4_K", f"{tag}: Q2_K_S uses Q4_K in the first 1/8 of layers"
        elif ft == "IQ3_XXS" and not qs.has_imatrix:
            new_type = "Q4_K" if i_layer < n_layer // 8 else "Q3_K"
            why = f"{tag}: IQ3_XXS without imatrix uses {new_type}" + (
                " in the first 1/8 of layers" if i_layer < n_layer // 8 else "")
        elif ft == "Q3_K_M":
            if i_layer < n_layer // 16:
                new_type, why = "Q5_K", f"{tag}: Q3_K_M uses Q5_K in the first 1/16 of layers"
            elif arch != "falcon" or use_more_bits(i_layer, n_layer):
                new_type, why = "Q4_K", f"{tag}: Q3_K_M uses Q4_K"
            else:
                new_type, why = "Q3_K", f"{tag}: Q3_K_M on falcon uses Q3_K outside use_more_bits layers"
        elif ft == "IQ3_M" and (i_layer < n_layer // 8 or (hp.n_expert == 8 and use_more_bits(i_layer, n_layer))):
            new_type = "Q4_K"
            why = f"{tag}: IQ3_M uses Q4_K " + ("in the first 1/8 of layers" if i_layer < n_layer // 8
                                                else "for use_more_bits layers of 8-expert models")
        elif ft == "Q3_K_L":
            new_type = "Q4_K" if arch == "falcon" else "Q5_K"
            why = f"{tag}: Q3_K_L uses {new_type}"
        elif ft == "Q4_K_M":
            if arch == "falcon":
                new_type = ("Q6_K" if i_layer < n_layer // 16
                            else "Q5_K" if use_more_bits(i_layer, n_layer) else "Q4_K")
                why = f"{tag}: Q4_K_M on falcon uses {new_type}"
            elif use_more_bits(i_layer, n_layer):
                new_type, why = "Q6_K", f"{tag}: Q4_K_M uses Q6_K {_umb(i_layer, n_layer)}"
            else:
                why = f"{tag}: not a use_more_bits layer, Q4_K_M default q4_k"
        elif i_layer < n_layer // 8 and ft in ("IQ4_NL", "IQ4_XS") and not qs.has_imatrix:
            new_type, why = "Q5_K", f"{tag}: {fn} without imatrix uses Q5_K in the first 1/8 of layers"
        elif ft == "Q5_K_M" and use_more_bits(i_layer, n_layer):
            new_type, why = "Q6_K", f"{tag}: Q5_K_M uses Q6_K {_umb(i_layer, n_layer)}"
        elif ft == "Q4_K_S" and arch != "falcon" and i_layer < n_layer // 8:
            new_type, why = "Q5_K", f"{tag}: Q4_K_S uses Q5_K in the first 1/8 of layers"
        elif ft in ("Q4_0", "Q5_0") and qs.has_imatrix and i_layer < n_layer // 8:
            new_type = "Q4_1" if ft == "Q4_0" else "Q5_1"
            why = f"{tag}: {fn} with imatrix uses {new_type} in the first 1/8 of layers"
        qs.i_ffn_down += 1
    elif cat == ATTENTION_OUTPUT:
        if arch != "falcon":
            if hp.n_expert == 8:
                if ft in _EXPERT8_ATTN_OUT:
                    new_type, why = "Q5_K", f"attn_output: {fn} with 8 experts uses Q5_K"
            else:
                m = {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}
                if ft in m:
                    new_type, why = m[ft], f"attn_output: {fn} uses {m[ft]}"
        elif ft == "Q3_K_L":
            new_type, why = "Q4_K", "attn_output: Q3_K_L on falcon uses Q4_K"
    elif cat == ATTENTION_QKV:  # unreachable: attn_qkv is attn_v-like above (kept as in llama.cpp)
        if ft in ("Q3_K_M", "Q3_K_L", "IQ3_M"):
            new_type = "Q4_K"
        elif ft == "Q4_K_M":
            new_type = "Q5_K"
        elif ft == "Q5_K_M":
            new_type = "Q6_K"
    elif cat in (FFN_GATE, FFN_UP):
        if cat == FFN_GATE:
            i_layer, n_layer = _layer_info(qs, qs.i_ffn_gate, qs.n_ffn_gate, name)
        else:
            i_layer, n_layer = _layer_info(qs, qs.i_ffn_up, qs.n_ffn_up, name)
        if ft == "IQ3_XS" and n_layer // 8 <= i_layer < 7 * n_layer // 8:
            new_type = "IQ3_XXS"
            why = f"{cat} layer {i_layer} of {n_layer}: IQ3_XS uses IQ3_XXS outside the first/last 1/8 of layers"
        if cat == FFN_GATE:
            qs.i_ffn_gate += 1
        else:
            qs.i_ffn_up += 1

    if why is None:
        why = f"{fn} default type {new_type.lower()}"
    return new_type, why


def llama_tensor_get_type(qs: _State, t: TensorSpec, default_type: str, cat: str) -> tuple[str, str, str | None]:
    """(type, reason, fallback note) for a tensor that allows quantization."""
    opts = qs.opts
    name = t.name
    if opts.token_embedding_type is not None and cat == TOKEN_EMBD:
        # per_layer_token_embd follows --token-embedding-type unless a --tensor-type names it
        named = name == "per_layer_token_embd.weight" and any(p.search(name) for p, _ in qs.rules)
        if not named:
            return opts.token_embedding_type, f"--token-embedding-type {opts.token_embedding_type.lower()}", None
    if opts.output_tensor_type is not None and cat == OUTPUT:
        return opts.output_tensor_type, f"--output-tensor-type {opts.output_tensor_type.lower()}", None

    new_type = default_type
    if not is_quantized(default_type):
        return new_type, f"{qs.ftype_name}: every quantizable tensor becomes {new_type.lower()}", None

    reason = ""
    manual = False
    for pat, rule in qs.rules:
        if pat.search(name):
            new_type = rule.type
            reason = rule.describe()
            manual = True
            break
    if not manual:
        if opts.pure:
            reason = f"--pure: {qs.ftype_name} default type {new_type.lower()}"
        else:
            new_type, reason = llama_tensor_get_type_impl(qs, new_type, t, cat)
    new_type, note = tensor_type_fallback(t, new_type)
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


_BLK_ANY = re.compile(r"blk\.(\d+)\.")


def remap_layer(name: str, prune: list[int], mapped: dict[int, str], next_id: list[int]) -> str:
    """--prune-layers renaming; "" means the tensor is pruned. next_id is a one-element box."""
    if not prune:
        return name
    m = _BLK_ANY.search(name)
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


def remap_imatrix(name: str, mapped: dict[int, str]) -> str:
    """The imatrix entry name of a renamed tensor: its original layer number."""
    if not mapped:
        return name
    m = _BLK_ANY.search(name)
    if not m:
        return name
    blk = m.group(1)
    for orig in sorted(mapped):
        if mapped[orig] == blk:
            return name[:m.start(1)] + str(orig) + name[m.end(1):]
    raise MixError(f"imatrix mapping error for {name}")


# llama_model_loader: the file type guessed from the most common tensor type
_GUESS_FTYPE = {
    "F32": 0, "F16": 1, "BF16": 32, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q8_0": 7,
    "Q2_K": 10, "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "TQ1_0": 36, "TQ2_0": 37,
    "IQ2_XXS": 19, "IQ2_XS": 20, "IQ2_S": 28, "IQ3_XXS": 23, "IQ1_S": 24, "IQ1_M": 31,
    "IQ4_NL": 25, "IQ4_XS": 30, "IQ3_S": 26, "NVFP4": 39, "Q1_0": 40, "Q2_0": 41,
}
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
    return _GUESS_FTYPE.get(best, 0) | LLAMA_FTYPE_GUESSED


def order_tensors(tensors: list[TensorSpec], keep_split: bool) -> list[TensorSpec]:
    """llama.cpp's processing (and write) order."""
    if keep_split:
        return sorted(tensors, key=lambda t: (t.split, t.offset))
    return sorted(tensors, key=lambda t: _name_key(t.name))


def plan_mainline(tensors: list[TensorSpec], info: ModelInfo, ftype: FType, opts: MixOptions,
                  rules: list[TypeRule]) -> Plan:
    """Decide every tensor's type as llama_model_quantize_impl does (rules: --tensor-type order)."""
    compiled = [(r.compile(), r) for r in rules]
    qs = _State(info=info, opts=opts, ftype=ftype.key, ftype_name=ftype.name, rules=compiled,
                has_imatrix=opts.uses_imatrix)
    default_type = ftype.default_type
    only_copy = ftype.is_copy
    plan = Plan(ftype=ftype, flavour=MAINLINE, default_type=default_type)

    prune = sorted(set(opts.prune_layers))
    mapped: dict[int, str] = {}
    next_id = [0]
    kept: list[tuple[str, TensorSpec]] = []
    for t in order_tensors(tensors, False):  # ml.weights_map order
        new_name = remap_layer(t.name, prune, mapped, next_id)
        if not new_name:
            plan.pruned.append(t.name)
            continue
        kept.append((new_name, t))
    if prune:
        plan.block_count = next_id[0]
    if opts.keep_split:  # keep_split sorts the weights by split index, then offset
        kept.sort(key=lambda nt: (nt[1].split, nt[1].offset))

    cats = []
    for new_name, _t in kept:
        cat = tensor_get_category(new_name)
        cats.append(cat)
        if category_is_attn_v(cat):
            qs.n_attention_wv += 1
        if cat == OUTPUT:
            qs.has_tied_embeddings = False
    qs.n_ffn_down = qs.n_ffn_gate = qs.n_ffn_up = info.n_layer

    plan.file_type = loader_ftype(order_tensors(tensors, False), info.kv) if only_copy else ftype.id

    for (new_name, src), cat in zip(kept, cats, strict=True):
        t = TensorSpec(new_name, tuple(src.shape), src.type, src.split, src.offset)
        allows, why_not = tensor_allows_quantization(t, info.arch, opts, only_copy)
        fallback = False
        if allows:
            new_type, reason, note = llama_tensor_get_type(qs, t, default_type, cat)
            if note:
                fallback = True
                reason = f"{reason}; {note}"
        else:
            new_type, reason = src.type, f"kept as {src.type.lower()}: {why_not}"
        d = Decision(name=new_name, source_name=src.name, shape=tuple(src.shape), src_type=src.type,
                     type=new_type, reason=reason, allows_quantization=allows, category=cat,
                     fallback=fallback,
                     requires_imatrix=tensor_requires_imatrix(new_name, new_type, ftype.key),
                     imatrix_name=remap_imatrix(new_name, mapped) if opts.uses_imatrix else new_name)
        plan.decisions.append(d)

    if plan.n_fallback:
        plan.warnings.append(f"{plan.n_fallback} of {len(tensors)} tensor(s) required fallback quantization")
    return plan
