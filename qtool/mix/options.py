"""Mix options and the parsers for llama-quantize's rule arguments.

Parsers follow tools/quantize/quantize.cpp (mainline) and examples/quantize/quantize.cpp
(ik_llama.cpp): `parse_tensor_type` (--tensor-type NAME=TYPE: the name part is lower-cased, the
type is a GGML type name, case-insensitive), `parse_tensor_type_file` (whitespace-separated
NAME=TYPE words), `parse_layer_prune` (comma-separated ids, sorted, duplicates dropped) and
ik's `parse_custom_quants` (--custom-q "REGEX=TYPE,REGEX=TYPE": split on commas, pattern kept
as typed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import QtoolError
from ..quants.types import type_names
from .ftypes import IK, MAINLINE

if TYPE_CHECKING:
    from .recipe import Recipe


class MixError(QtoolError, ValueError):
    """A rule or option the type choice cannot use, or a failure llama-quantize would report."""


# ik_llama.cpp types that qtool's type table does not list (row-interleaved "repacked" types and
# a few others from ik's ggml.h). The mix can choose them; the engine refuses them.
IK_EXTRA_TYPES: dict[str, int] = {
    "Q4_0_4_4": 31, "Q4_0_4_8": 32, "Q4_0_8_8": 33,
    "Q8_0_X4": 97, "Q8_1_X4": 98, "Q8_2_X4": 99,
    "Q8_K16": 147, "Q8_K32": 148, "Q8_KR8": 149, "Q8_KV": 151,
    "Q4_0_R8": 202, "Q5_0_R4": 206, "Q8_0_R8": 208, "Q2_K_R4": 210, "Q3_K_R4": 211,
    "Q4_K_R4": 212, "Q5_K_R4": 213, "Q6_K_R4": 214, "IQ2_XXS_R4": 216, "IQ2_XS_R4": 217,
    "IQ3_XXS_R4": 218, "IQ1_S_R4": 219, "IQ4_NL_R4": 220, "IQ3_S_R4": 221, "IQ2_S_R4": 222,
    "IQ4_XS_R8": 223, "IQ1_M_R4": 229, "BF16_R16": 230, "Q6_0_R4": 233, "IQ2_BN_R4": 335,
    "IQ2_K_R4": 337, "IQ3_K_R4": 338, "IQ4_K_R4": 339, "IQ5_K_R4": 340, "IQ4_KS_R4": 344,
    "IQ5_KS_R4": 352, "MXFP4_R8": 353, "Q8_K_R16": 397, "Q8_KV_R8": 398, "Q8_K_R8": 399,
}
# ggml_type_name spellings that differ from the upper-cased qtool name
_IK_ALIASES = {"Q4_0_4X4": "Q4_0_4_4", "Q4_0_4X8": "Q4_0_4_8", "Q4_0_8X8": "Q4_0_8_8"}


def valid_type_names(flavour: str = MAINLINE) -> list[str]:
    """GGML type names a rule may name in this flavour."""
    names = type_names(flavour)
    if flavour == IK:
        names = names + [n for n in IK_EXTRA_TYPES if n not in names]
    return names


def parse_ggml_type(name: str, flavour: str = MAINLINE) -> str:
    """A GGML type name as typed (any case) -> qtool's upper-case name; MixError lists valid ones.

    Mainline's parse_ggml_type compares case-insensitively; ik_llama.cpp's compares exactly with
    ggml_type_name ("q4_K", "iq4_k_r4"): qtool accepts any case for both.
    """
    up = name.strip().upper()
    if flavour == IK:
        up = _IK_ALIASES.get(up, up)
    valid = valid_type_names(flavour)
    if up not in valid:
        raise MixError(f"invalid ggml_type {name!r}; valid types: {', '.join(n.lower() for n in valid)}")
    return up


@dataclass(frozen=True)
class TypeRule:
    """One REGEX=TYPE rule. source says where it came from (shown in reasons)."""

    pattern: str
    type: str
    source: str = "--tensor-type"

    def compile(self) -> re.Pattern[str]:
        try:
            return re.compile(self.pattern)
        except re.error as e:
            raise MixError(f"{self.source}: invalid regular expression {self.pattern!r}: {e}") from None

    def describe(self) -> str:
        return f"{self.source} {self.pattern}={self.type.lower()}"


def parse_tensor_type(arg: str, flavour: str = MAINLINE, source: str = "--tensor-type") -> TypeRule:
    """--tensor-type NAME=TYPE: split at the first '=', lower-case the name (as quantize.cpp does)."""
    if "=" not in arg:
        raise MixError(f"{source}: malformed tensor type {arg!r} (expected REGEX=TYPE)")
    name, qt = arg.split("=", 1)
    if not name:
        raise MixError(f"{source}: missing tensor name in {arg!r}")
    if not qt:
        raise MixError(f"{source}: missing quantization type in {arg!r}")
    return TypeRule(name.lower(), parse_ggml_type(qt, flavour), source)


def parse_tensor_type_file(path: str | Path, flavour: str = MAINLINE) -> list[TypeRule]:
    """--tensor-type-file: NAME=TYPE words separated by spaces or newlines."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise MixError(f"--tensor-type-file: failed to open file '{path}': {e.strerror}") from None
    return [parse_tensor_type(w, flavour, source=f"--tensor-type-file {Path(path).name}:")
            for w in text.split()]


def parse_custom_q(arg: str, flavour: str = IK) -> list[TypeRule]:
    """ik's --custom-q "REGEX=TYPE,REGEX=TYPE": comma-separated, split at the first '='."""
    rules = []
    for item in arg.split(","):
        if "=" not in item:
            raise MixError(f"--custom-q: invalid custom quantization input {arg!r}")
        pat, qt = item.split("=", 1)
        try:
            t = parse_ggml_type(qt, flavour)
        except MixError as e:
            raise MixError(f"--custom-q: invalid quantization type {qt!r} in {item!r}: {e}") from None
        rules.append(TypeRule(pat, t, "--custom-q"))
    return rules


def parse_prune_layers(arg: str) -> list[int]:
    """--prune-layers L0,L1,...: non-negative ids, sorted, duplicates removed."""
    ids = []
    for part in arg.split(","):
        m = re.match(r"\s*([+-]?\d+)", part)
        val = int(m.group(1)) if m else -1
        if val < 0:
            raise MixError(f"--prune-layers: invalid layer id {part!r}")
        ids.append(val)
    return sorted(set(ids))


def filter_imatrix_names(names: list[str], include: list[str] | None = None,
                        exclude: list[str] | None = None) -> list[str]:
    """--include-weights / --exclude-weights (substring matches) as quantize.cpp's prepare_imatrix.

    Mainline refuses both together (usage error). The mix sees an imatrix only if entries are
    left (`has_imatrix`), so filtering everything out changes the Q4_0 / IQ4_XS / ... mixes.
    """
    if include and exclude:
        raise MixError("--include-weights and --exclude-weights cannot be used together")
    kept = list(names)
    for sub in exclude or []:
        kept = [n for n in kept if sub not in n]
    if include:
        kept = [n for n in kept if any(sub in n for sub in include)]
    return kept


@dataclass
class MixOptions:
    """Everything besides the tensors, the model and the ftype that decides the tensor types.

    Option names are llama-quantize's. tensor_types: --tensor-type / --tensor-type-file rules in
    command-line order (first match wins). custom_q: ik_llama.cpp's --custom-q rules. recipe: a
    loaded --recipe (its rules come after tensor_types; its options fill the ones left unset).
    has_imatrix: an importance matrix with at least one entry is used (it changes some mixes).
    imatrix_names: the imatrix's entry names, if known (for the missing-entry checks).
    The ik_* type options are ik_llama.cpp's --attn-q-type ... --ffn-up-type.
    """

    flavour: str = MAINLINE
    pure: bool = False
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    leave_output_tensor: bool = False
    tensor_types: list[TypeRule] = field(default_factory=list)
    custom_q: list[TypeRule] = field(default_factory=list)
    recipe: Recipe | None = None
    prune_layers: list[int] = field(default_factory=list)
    allow_requantize: bool = False
    has_imatrix: bool = False
    imatrix_names: frozenset[str] | None = None
    keep_split: bool = False
    dry_run: bool = False
    # ik_llama.cpp only
    per_layer_token_embedding_type: str | None = None
    ffn_gate_inp_type: str | None = None
    attn_q_type: str | None = None
    attn_k_type: str | None = None
    attn_v_type: str | None = None
    attn_qkv_type: str | None = None
    attn_output_type: str | None = None
    ffn_gate_type: str | None = None
    ffn_down_type: str | None = None
    ffn_up_type: str | None = None
    ignore_imatrix_rules: bool = False

    @property
    def uses_imatrix(self) -> bool:
        return self.has_imatrix or bool(self.imatrix_names)
