"""File types ("ftypes", the TYPE argument of llama-quantize) of mainline llama.cpp and ik_llama.cpp.

Mainline: tools/quantize/quantize.cpp `QUANT_OPTIONS` (names, order, descriptions), include/llama.h
`enum llama_ftype` (ids) and src/llama-quant.cpp `llama_ftype_get_default_type` (default tensor
type). ik_llama.cpp: examples/quantize/quantize.cpp `QUANT_OPTIONS`, its include/llama.h and the
`default_type` switch of `llama_model_quantize_internal` in src/llama-quantize.cpp.

Each entry keeps the table order, because a numeric TYPE ("15") resolves to the first entry with
that id (so "15" prints as "Q4_K", the alias listed before "Q4_K_M"), as `try_parse_ftype` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import QtoolError
from ..quants.types import FLAVOURS, IK, MAINLINE

__all__ = ["FLAVOURS", "IK", "MAINLINE", "FType", "FTypeError", "ftype_names", "ftype_table", "parse_ftype"]


class FTypeError(QtoolError, ValueError):
    """An unknown ftype name or id; the message lists the valid names."""


@dataclass(frozen=True)
class FType:
    """One row of llama-quantize's ftype table.

    name: what the user types (case-insensitive), e.g. "Q4_K_M" or the alias "Q4_K".
    key: the llama_ftype enum name without LLAMA_FTYPE_(MOSTLY_), e.g. "Q4_K_M"; aliases share it.
    id: the llama_ftype value written to general.file_type.
    default_type: GGML type most tensors get (llama_ftype_get_default_type).
    """

    name: str
    key: str
    id: int
    default_type: str
    description: str
    flavour: str

    @property
    def is_copy(self) -> bool:
        """COPY: tensors are copied unchanged (only_copy)."""
        return self.name == "COPY"


def _rows(flavour: str, rows: list[tuple[str, str, int, str, str]]) -> tuple[FType, ...]:
    return tuple(FType(n, k, i, d, desc, flavour) for n, k, i, d, desc in rows)


# (name, key, id, default type, description) in QUANT_OPTIONS order.
_MAINLINE: tuple[FType, ...] = _rows(MAINLINE, [
    ("Q1_0", "Q1_0", 40, "Q1_0", " 1.125 bpw quantization"),
    ("Q2_0", "Q2_0", 41, "Q2_0", " 2.25 bpw quantization (group 64)"),
    ("Q4_0", "Q4_0", 2, "Q4_0", " 4.34G, +0.4685 ppl @ Llama-3-8B"),
    ("Q4_1", "Q4_1", 3, "Q4_1", " 4.78G, +0.4511 ppl @ Llama-3-8B"),
    ("MXFP4_MOE", "MXFP4_MOE", 38, "MXFP4", " MXFP4 MoE"),
    ("Q5_0", "Q5_0", 8, "Q5_0", " 5.21G, +0.1316 ppl @ Llama-3-8B"),
    ("Q5_1", "Q5_1", 9, "Q5_1", " 5.65G, +0.1062 ppl @ Llama-3-8B"),
    ("IQ2_XXS", "IQ2_XXS", 19, "IQ2_XXS", " 2.06 bpw quantization"),
    ("IQ2_XS", "IQ2_XS", 20, "IQ2_XS", " 2.31 bpw quantization"),
    ("IQ2_S", "IQ2_S", 28, "IQ2_XS", " 2.5  bpw quantization"),
    ("IQ2_M", "IQ2_M", 29, "IQ2_S", " 2.7  bpw quantization"),
    ("IQ1_S", "IQ1_S", 24, "IQ1_S", " 1.56 bpw quantization"),
    ("IQ1_M", "IQ1_M", 31, "IQ1_M", " 1.75 bpw quantization"),
    ("TQ1_0", "TQ1_0", 36, "TQ1_0", " 1.69 bpw ternarization"),
    ("TQ2_0", "TQ2_0", 37, "TQ2_0", " 2.06 bpw ternarization"),
    ("Q2_K", "Q2_K", 10, "Q2_K", " 2.96G, +3.5199 ppl @ Llama-3-8B"),
    ("Q2_K_S", "Q2_K_S", 21, "Q2_K", " 2.96G, +3.1836 ppl @ Llama-3-8B"),
    ("IQ3_XXS", "IQ3_XXS", 23, "IQ3_XXS", " 3.06 bpw quantization"),
    ("IQ3_S", "IQ3_S", 26, "IQ3_S", " 3.44 bpw quantization"),
    ("IQ3_M", "IQ3_M", 27, "IQ3_S", " 3.66 bpw quantization mix"),
    ("Q3_K", "Q3_K_M", 12, "Q3_K", "alias for Q3_K_M"),
    ("IQ3_XS", "IQ3_XS", 22, "IQ3_S", " 3.3 bpw quantization"),
    ("Q3_K_S", "Q3_K_S", 11, "Q3_K", " 3.41G, +1.6321 ppl @ Llama-3-8B"),
    ("Q3_K_M", "Q3_K_M", 12, "Q3_K", " 3.74G, +0.6569 ppl @ Llama-3-8B"),
    ("Q3_K_L", "Q3_K_L", 13, "Q3_K", " 4.03G, +0.5562 ppl @ Llama-3-8B"),
    ("IQ4_NL", "IQ4_NL", 25, "IQ4_NL", " 4.50 bpw non-linear quantization"),
    ("IQ4_XS", "IQ4_XS", 30, "IQ4_XS", " 4.25 bpw non-linear quantization"),
    ("Q4_K", "Q4_K_M", 15, "Q4_K", "alias for Q4_K_M"),
    ("Q4_K_S", "Q4_K_S", 14, "Q4_K", " 4.37G, +0.2689 ppl @ Llama-3-8B"),
    ("Q4_K_M", "Q4_K_M", 15, "Q4_K", " 4.58G, +0.1754 ppl @ Llama-3-8B"),
    ("Q5_K", "Q5_K_M", 17, "Q5_K", "alias for Q5_K_M"),
    ("Q5_K_S", "Q5_K_S", 16, "Q5_K", " 5.21G, +0.1049 ppl @ Llama-3-8B"),
    ("Q5_K_M", "Q5_K_M", 17, "Q5_K", " 5.33G, +0.0569 ppl @ Llama-3-8B"),
    ("Q6_K", "Q6_K", 18, "Q6_K", " 6.14G, +0.0217 ppl @ Llama-3-8B"),
    ("Q8_0", "Q8_0", 7, "Q8_0", " 7.96G, +0.0026 ppl @ Llama-3-8B"),
    ("F16", "F16", 1, "F16", "14.00G, +0.0020 ppl @ Mistral-7B"),
    ("BF16", "BF16", 32, "BF16", "14.00G, -0.0050 ppl @ Mistral-7B"),
    ("F32", "ALL_F32", 0, "F32", "26.00G              @ 7B"),
    ("COPY", "ALL_F32", 0, "F32", "only copy tensors, no quantizing"),
])

_IK: tuple[FType, ...] = _rows(IK, [
    ("Q4_0", "Q4_0", 2, "Q4_0", " 3.56G, +0.2166 ppl @ LLaMA-v1-7B"),
    ("Q4_1", "Q4_1", 3, "Q4_1", " 3.90G, +0.1585 ppl @ LLaMA-v1-7B"),
    ("Q5_0", "Q5_0", 8, "Q5_0", " 4.33G, +0.0683 ppl @ LLaMA-v1-7B"),
    ("Q5_1", "Q5_1", 9, "Q5_1", " 4.70G, +0.0349 ppl @ LLaMA-v1-7B"),
    ("Q6_0", "Q6_0", 135, "Q6_0", " 6.5 bpw quantization"),
    ("MXFP4", "MXFP4", 38, "MXFP4", " 4.25 bpw 4-bit float quantization"),
    ("MXFP4_R8", "MXFP4_R8", 351, "MXFP4_R8", " MXFP4 repacked"),
    ("IQ2_XXS", "IQ2_XXS", 19, "IQ2_XXS", " 2.06 bpw quantization"),
    ("IQ2_XXS_R4", "IQ2_XXS_R4", 219, "IQ2_XXS_R4", "IQ2_XXS repacked"),
    ("IQ2_XS", "IQ2_XS", 20, "IQ2_XS", " 2.31 bpw quantization"),
    ("IQ2_XS_R4", "IQ2_XS_R4", 220, "IQ2_XS_R4", "IQ2_XS repacked"),
    ("IQ2_S", "IQ2_S", 28, "IQ2_XS", " 2.5  bpw quantization"),
    ("IQ2_M", "IQ2_M", 29, "IQ2_S", " 2.7  bpw quantization"),
    ("IQ2_M_R4", "IQ2_M_R4", 229, "IQ2_S_R4", " 2.7  bpw quantization"),
    ("IQ1_S", "IQ1_S", 24, "IQ1_S", " 1.56 bpw quantization"),
    ("IQ1_S_R4", "IQ1_S_R4", 224, "IQ1_S_R4", " 1.5 bpw quantization"),
    ("IQ1_M_R4", "IQ1_M_R4", 231, "IQ1_M_R4", " 1.75 bpw quantization"),
    ("IQ1_M", "IQ1_M", 31, "IQ1_M", " 1.75 bpw quantization"),
    ("IQ1_BN", "IQ1_BN", 136, "IQ1_BN", " 1.62 bpw quantization (Bitnet)"),
    ("IQ2_BN", "IQ2_BN", 137, "IQ2_BN", " 2.00 bpw quantization (Bitnet)"),
    ("IQ2_BN_R4", "IQ2_BN_R4", 337, "IQ2_BN_R4", " 2.00 bpw quantization (Bitnet)"),
    ("Q2_K", "Q2_K", 10, "Q2_K", " 2.63G, +0.6717 ppl @ LLaMA-v1-7B"),
    ("Q2_K_R4", "Q2_K_R4", 210, "Q2_K_R4", "Q2_K_S repacked"),
    ("Q2_K_S", "Q2_K_S", 21, "Q2_K", " 2.16G, +9.0634 ppl @ LLaMA-v1-7B"),
    ("IQ3_XXS", "IQ3_XXS", 23, "IQ3_XXS", " 3.06 bpw quantization"),
    ("IQ3_KT", "IQ3_KT", 152, "IQ3_KT", " 3.125 bpw trellis quantization"),
    ("IQ4_KT", "IQ4_KT", 153, "IQ4_KT", " 4.0 bpw trellis quantization"),
    ("IQ3_XXS_R4", "IQ3_XXS_R4", 223, "IQ3_XXS_R4", "IQ3_XXS repacked"),
    ("IQ3_S", "IQ3_S", 26, "IQ3_S", " 3.44 bpw quantization"),
    ("IQ3_S_R4", "IQ3_S_R4", 226, "IQ3_S_R4", "IQ3_S repacked"),
    ("IQ3_M", "IQ3_M", 27, "IQ3_S", " 3.66 bpw quantization mix"),
    ("Q3_K", "Q3_K_M", 12, "Q3_K", "alias for Q3_K_M"),
    ("Q3_K_R4", "Q3_K_R4", 211, "Q3_K_R4", "Q3_K_S repacked"),
    ("IQ3_XS", "IQ3_XS", 22, "IQ3_S", " 3.3 bpw quantization"),
    ("Q3_K_S", "Q3_K_S", 11, "Q3_K", " 2.75G, +0.5551 ppl @ LLaMA-v1-7B"),
    ("Q3_K_M", "Q3_K_M", 12, "Q3_K", " 3.07G, +0.2496 ppl @ LLaMA-v1-7B"),
    ("Q3_K_L", "Q3_K_L", 13, "Q3_K", " 3.35G, +0.1764 ppl @ LLaMA-v1-7B"),
    ("IQ4_NL", "IQ4_NL", 25, "IQ4_NL", " 4.50 bpw non-linear quantization"),
    ("IQ4_NL_R4", "IQ4_NL_R4", 225, "IQ4_NL_R4", " 4.50 bpw non-linear quantization"),
    ("IQ4_XS_R8", "IQ4_XS_R8", 230, "IQ4_XS_R8", " 4.25 bpw non-linear quantization"),
    ("Q4_0_R8", "Q4_0_R8", 202, "Q4_0_R8", " 4.50 bpw quantization"),
    ("Q5_0_R4", "Q5_0_R4", 208, "Q5_0_R4", " 5.50 bpw quantization"),
    ("Q6_0_R4", "Q6_0_R4", 335, "Q6_0_R4", " 6.50 bpw quantization"),
    ("Q8_0_R8", "Q8_0_R8", 207, "Q8_0_R8", " 8.50 bpw quantization"),
    ("Q8_KV", "Q8_KV", 149, "Q8_KV", " 8.00 bpw quantization"),
    ("IQ4_XS", "IQ4_XS", 30, "IQ4_XS", " 4.25 bpw non-linear quantization"),
    ("IQ4_KS", "IQ4_KS", 145, "IQ4_KS", " 4.25 bpw non-linear quantization"),
    ("IQ4_KS_R4", "IQ4_KS_R4", 345, "IQ4_KS_R4", "IQ4_KS repacked"),
    ("IQ5_KS_R4", "IQ5_KS_R4", 350, "IQ5_KS_R4", "IQ5_KS repacked"),
    ("IQ4_KSS", "IQ4_KSS", 148, "IQ4_KSS", " 4.0 bpw non-linear quantization"),
    ("IQ5_KS", "IQ5_KS", 150, "IQ5_KS", " 5.25 bpw non-linear quantization"),
    ("IQ2_K", "IQ2_K", 138, "IQ2_K", " 2.375 bpw non-linear quantization"),
    ("IQ2_K_R4", "IQ2_K_R4", 338, "IQ2_K_R4", "IQ2_K repacked"),
    ("IQ2_KS", "IQ2_KS", 147, "IQ2_KS", " 2.1875 bpw non-linear quantization"),
    ("IQ1_KT", "IQ1_KT", 156, "IQ1_KT", " 1.75 bpw trellis quantization"),
    ("IQ2_KT", "IQ2_KT", 151, "IQ2_KT", " 2.125 bpw trellis quantization"),
    ("IQ2_KL", "IQ2_KL", 155, "IQ2_KL", " 2.69 bpw non-linear quantization"),
    ("IQ3_KS", "IQ3_KS", 154, "IQ3_KS", " 3.19 bpw non-linear quantization"),
    ("IQ3_K", "IQ3_K", 139, "IQ3_K", " 3.44 bpw non-linear quantization"),
    ("IQ3_K_R4", "IQ3_K_R4", 339, "IQ3_K_R4", "IQ3_K repacked"),
    ("IQ3_KL", "IQ3_KL", 146, "IQ3_K", " 4 bpw non-linear quantization mix"),
    ("IQ4_K", "IQ4_K", 140, "IQ4_K", " 4.5 bpw non-linear quantization"),
    ("IQ4_K_R4", "IQ4_K_R4", 340, "IQ4_K_R4", "IQ4_K repacked"),
    ("IQ5_K", "IQ5_K", 141, "IQ5_K", " 5.5 bpw non-linear quantization"),
    ("IQ5_K_R4", "IQ5_K_R4", 341, "IQ5_K_R4", "IQ5_K repacked"),
    ("IQ6_K", "IQ6_K", 142, "IQ6_K", " 6.6 bpw non-linear quantization"),
    ("Q4_K", "Q4_K_M", 15, "Q4_K", "alias for Q4_K_M"),
    ("Q4_K_R4", "Q4_K_R4", 214, "Q4_K_R4", "Q4_K_S repacked"),
    ("Q4_K_S", "Q4_K_S", 14, "Q4_K", " 3.59G, +0.0992 ppl @ LLaMA-v1-7B"),
    ("Q4_K_M", "Q4_K_M", 15, "Q4_K", " 3.80G, +0.0532 ppl @ LLaMA-v1-7B"),
    ("Q5_K", "Q5_K_M", 17, "Q5_K", "alias for Q5_K_M"),
    ("Q5_K_R4", "Q5_K_R4", 216, "Q5_K_R4", "Q5_K_S repacked"),
    ("Q5_K_S", "Q5_K_S", 16, "Q5_K", " 4.33G, +0.0400 ppl @ LLaMA-v1-7B"),
    ("Q5_K_M", "Q5_K_M", 17, "Q5_K", " 4.45G, +0.0122 ppl @ LLaMA-v1-7B"),
    ("Q6_K", "Q6_K", 18, "Q6_K", " 5.15G, +0.0008 ppl @ LLaMA-v1-7B"),
    ("Q6_K_R4", "Q6_K_R4", 218, "Q6_K_R4", "Q6_K repacked"),
    ("Q8_K_R8", "Q8_K_R8", 399, "Q8_K_R8", "Q8_K repacked"),
    ("Q8_KV_R8", "Q8_KV_R8", 398, "Q8_KV_R8", "Q8_KV repacked"),
    ("Q8_0", "Q8_0", 7, "Q8_0", " 6.70G, +0.0004 ppl @ LLaMA-v1-7B"),
    ("Q4_0_4_4", "Q4_0_4_4", 33, "Q4_0_4_4", " 4.34G, +0.4685 ppl @ Llama-3-8B"),
    ("Q4_0_4_8", "Q4_0_4_8", 34, "Q4_0_4_8", " 4.34G, +0.4685 ppl @ Llama-3-8B"),
    ("Q4_0_8_8", "Q4_0_8_8", 35, "Q4_0_8_8", " 4.34G, +0.4685 ppl @ Llama-3-8B"),
    ("F16", "F16", 1, "F16", "14.00G, -0.0020 ppl @ Mistral-7B"),
    ("BF16", "BF16", 32, "BF16", "14.00G, -0.0050 ppl @ Mistral-7B"),
    ("BF16_R16", "BF16_R16", 232, "BF16_R16", "14.00G, -0.0050 ppl @ Mistral-7B"),
    ("F32", "ALL_F32", 0, "F32", "26.00G              @ 7B"),
    ("COPY", "ALL_F32", 0, "F32", "only copy tensors, no quantizing"),
])

# ik_llama.cpp ftypes that exist in its enum but are not offered by its llama-quantize
# (Q1_0_G128 = 41 has a default type but no QUANT_OPTIONS row): not accepted here either.

_TABLES: dict[str, tuple[FType, ...]] = {MAINLINE: _MAINLINE, IK: _IK}


def ftype_table(flavour: str = MAINLINE) -> list[FType]:
    """Every ftype the flavour's llama-quantize accepts, in its table order (aliases included)."""
    if flavour not in _TABLES:
        raise ValueError(f"unknown flavour {flavour!r}; valid: {', '.join(FLAVOURS)}")
    return list(_TABLES[flavour])


def ftype_names(flavour: str = MAINLINE) -> list[str]:
    return [f.name for f in _TABLES[flavour]]


_INT_PREFIX = re.compile(r"\s*([+-]?\d+)")


def implied_flavour(words: Iterable[str | None]) -> str | None:
    """IK when one of the words is, by name, an ftype only ik_llama.cpp's llama-quantize knows
    (IQ4_K, IQ2_KS, IQ1_BN, ...): such a TYPE implies --flavour ik. None otherwise (numeric
    ids mean different ftypes in the two trees, so they imply nothing)."""
    main = set(ftype_names(MAINLINE))
    ik_only = set(ftype_names(IK)) - main
    for w in words:
        if w is not None and w.upper() in ik_only:
            return IK
    return None


def parse_ftype(name: str | int, flavour: str = MAINLINE) -> FType:
    """Resolve what a user typed as TYPE: a name (case-insensitive) or a numeric ftype id.

    Follows `try_parse_ftype`: names first, then `std::stoi` (a leading integer, so "15" and
    "15abc" both mean id 15), resolved to the first table row with that id.
    """
    table = ftype_table(flavour)
    if isinstance(name, int):
        text = str(name)
    else:
        text = name
    up = text.upper()
    for f in table:
        if f.name == up:
            return f
    m = _INT_PREFIX.match(text)
    if m:
        val = int(m.group(1))
        for f in table:
            if f.id == val:
                return f
    raise FTypeError(f"invalid ftype {text!r} for {flavour} llama-quantize; valid types: "
                     f"{', '.join(ftype_names(flavour))} (or their numeric ids)")

