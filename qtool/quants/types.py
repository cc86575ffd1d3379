"""The GGML type table: one record per type of mainline llama.cpp and of ik_llama.cpp.

Sizes come from ggml's `type_traits` (ggml/src/ggml.c) and the block structs of
ggml-common.h in both trees. A few ids mean different things in the two trees (41 is Q1_0 in
mainline and Q1_0_G128 in ik_llama.cpp, both 18 bytes per 128 values), so lookups by id take a
flavour. Some ik_llama.cpp types carry per-row metadata (a float or fp16 row scale) before the
blocks: `row_meta` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Flavour(StrEnum):
    """Whose bytes: mainline llama.cpp's ggml or ik_llama.cpp's (equal to the plain strings)."""

    MAINLINE = "mainline"
    IK = "ik"


MAINLINE = Flavour.MAINLINE
IK = Flavour.IK
BOTH = "both"  # a type record that both trees define
FLAVOURS: tuple[str, ...] = tuple(f.value for f in Flavour)  # plain strings (click.Choice shows enum names)

QK_K = 256


@dataclass(frozen=True)
class QType:
    """One GGML tensor type."""

    name: str
    id: int
    block_size: int
    type_size: int
    flavour: str = BOTH
    needs_imatrix: bool = False
    row_meta: int = 0
    quantized: bool = True
    repack_of: str | None = None
    """ik_llama.cpp's row-interleaved types (_R4, _R8, ...): the plain type whose rows they
    interleave. Runtime repacks for its CPU kernels: qtool reads them and does not write them."""
    rows_interleaved: int = 1
    internal: bool = False
    """A type ggml uses for activations (Q8_K, Q8_K64, Q8_KV, ...), not for stored weights."""

    def row_bytes(self, n_per_row: int) -> int:
        """Bytes of one row of n_per_row values (ggml_row_size plus ik's row meta)."""
        if n_per_row % self.block_size:
            raise ValueError(f"{self.name}: row length {n_per_row} is not a multiple of {self.block_size}")
        return self.row_meta + (n_per_row // self.block_size) * self.type_size

    @property
    def bpw(self) -> float:
        """Bits per weight, ignoring row metadata."""
        return 8.0 * self.type_size / self.block_size

    @property
    def lname(self) -> str:
        """Lower-case name, as llama.cpp prints types."""
        return self.name.lower()

    def available_in(self, flavour: str) -> bool:
        return self.flavour in (BOTH, flavour)


def _t(name: str, id: int, bs: int, ts: int, fl: str = BOTH, **kw: object) -> QType:
    return QType(name, id, bs, ts, fl, **kw)  # type: ignore[arg-type]


_ALL: tuple[QType, ...] = (
    _t("F32", 0, 1, 4, quantized=False),
    _t("F16", 1, 1, 2, quantized=False),
    _t("Q4_0", 2, 32, 18),
    _t("Q4_1", 3, 32, 20),
    _t("Q5_0", 6, 32, 22),
    _t("Q5_1", 7, 32, 24),
    _t("Q8_0", 8, 32, 34),
    _t("Q8_1", 9, 32, 36),
    _t("Q2_K", 10, QK_K, 84),
    _t("Q3_K", 11, QK_K, 110),
    _t("Q4_K", 12, QK_K, 144),
    _t("Q5_K", 13, QK_K, 176),
    _t("Q6_K", 14, QK_K, 210),
    _t("Q8_K", 15, QK_K, 292, MAINLINE),
    _t("IQ2_XXS", 16, QK_K, 66, needs_imatrix=True),
    _t("IQ2_XS", 17, QK_K, 74, needs_imatrix=True),
    _t("IQ3_XXS", 18, QK_K, 98),
    _t("IQ1_S", 19, QK_K, 50, needs_imatrix=True),
    _t("IQ4_NL", 20, 32, 18),
    _t("IQ3_S", 21, QK_K, 110),
    _t("IQ2_S", 22, QK_K, 82),
    _t("IQ4_XS", 23, QK_K, 136),
    _t("I8", 24, 1, 1, quantized=False),
    _t("I16", 25, 1, 2, quantized=False),
    _t("I32", 26, 1, 4, quantized=False),
    _t("I64", 27, 1, 8, quantized=False),
    _t("F64", 28, 1, 8, quantized=False),
    _t("IQ1_M", 29, QK_K, 56),
    _t("BF16", 30, 1, 2, quantized=False),
    _t("TQ1_0", 34, QK_K, 54, MAINLINE),
    _t("TQ2_0", 35, QK_K, 66, MAINLINE),
    _t("I2_S", 36, 1, 1, IK),
    _t("MXFP4", 39, 32, 17),
    _t("NVFP4", 40, 64, 36, MAINLINE),
    _t("Q1_0", 41, 128, 18, MAINLINE),
    _t("Q1_0_G128", 41, 128, 18, IK),
    _t("Q2_0", 42, 64, 18, MAINLINE),
    # ik_llama.cpp types
    _t("Q6_0", 133, 32, 26, IK),
    _t("IQ1_BN", 134, 64, 13, IK, row_meta=2),
    _t("IQ2_BN", 135, 64, 16, IK, row_meta=4),
    _t("Q8_K64", 136, 64, 68, IK, internal=True),
    _t("IQ2_K", 137, QK_K, 76, IK),
    _t("IQ3_K", 138, QK_K, 110, IK),
    _t("IQ4_K", 139, QK_K, 144, IK),
    _t("IQ5_K", 140, QK_K, 176, IK),
    _t("IQ6_K", 141, QK_K, 212, IK),
    _t("IQ4_KS", 144, QK_K, 136, IK, row_meta=4),
    _t("IQ2_KS", 145, QK_K, 70, IK, row_meta=2),
    _t("IQ4_KSS", 146, QK_K, 128, IK, row_meta=4),
    _t("Q8_K128", 150, 128, 140, IK, internal=True),
    _t("IQ5_KS", 152, QK_K, 168, IK, row_meta=4),
    _t("IQ2_KT", 153, QK_K, 68, IK, row_meta=4),
    _t("IQ3_KT", 154, QK_K, 100, IK, row_meta=4),
    _t("IQ4_KT", 155, QK_K, 128, IK, row_meta=4),
    _t("IQ3_KS", 156, QK_K, 102, IK, row_meta=2),
    _t("IQ2_KL", 157, QK_K, 86, IK, row_meta=2),
    _t("IQ1_KT", 158, QK_K, 56, IK, row_meta=4),
    # ik_llama.cpp's activation types (never stored weights)
    _t("Q8_K", 15, QK_K, 296, IK, internal=True),  # ik's block_q8_K has 16 more bytes of sums
    _t("Q8_0_X4", 97, 32, 34, IK, internal=True),
    _t("Q8_1_X4", 98, 32, 36, IK, internal=True),
    _t("Q8_2_X4", 99, 32, 36, IK, internal=True),
    _t("Q8_K16", 147, 64, 64, IK, row_meta=20, internal=True),
    _t("Q8_K32", 148, QK_K, 296, IK, internal=True),
    _t("Q8_KR8", 149, QK_K, 296, IK, internal=True),
    _t("Q8_KV", 151, 32, 32, IK, row_meta=8),  # also an ftype of ik's llama-quantize
    # ik_llama.cpp's row-interleaved repacks (ids and sizes from its ggml_type_size / ggml_row_size)
    _t("Q4_0_4_4", 31, 32, 18, IK, repack_of="Q4_0", rows_interleaved=4),
    _t("Q4_0_4_8", 32, 32, 18, IK, repack_of="Q4_0", rows_interleaved=4),
    _t("Q4_0_8_8", 33, 32, 18, IK, repack_of="Q4_0", rows_interleaved=8),
    _t("Q4_0_R8", 202, 32, 18, IK, repack_of="Q4_0", rows_interleaved=8),
    _t("Q5_0_R4", 206, 32, 22, IK, repack_of="Q5_0", rows_interleaved=4),
    _t("Q8_0_R8", 208, 32, 34, IK, repack_of="Q8_0", rows_interleaved=8),
    _t("Q2_K_R4", 210, QK_K, 84, IK, repack_of="Q2_K", rows_interleaved=4),
    _t("Q3_K_R4", 211, QK_K, 110, IK, repack_of="Q3_K", rows_interleaved=4),
    _t("Q4_K_R4", 212, QK_K, 144, IK, repack_of="Q4_K", rows_interleaved=4),
    _t("Q5_K_R4", 213, QK_K, 176, IK, repack_of="Q5_K", rows_interleaved=4),
    _t("Q6_K_R4", 214, QK_K, 210, IK, repack_of="Q6_K", rows_interleaved=4),
    _t("IQ2_XXS_R4", 216, QK_K, 66, IK, repack_of="IQ2_XXS", rows_interleaved=4),
    _t("IQ2_XS_R4", 217, QK_K, 74, IK, repack_of="IQ2_XS", rows_interleaved=4),
    _t("IQ3_XXS_R4", 218, QK_K, 98, IK, repack_of="IQ3_XXS", rows_interleaved=4),
    _t("IQ1_S_R4", 219, 32, 6, IK, row_meta=2, repack_of="IQ1_S", rows_interleaved=4),
    _t("IQ4_NL_R4", 220, 32, 18, IK, repack_of="IQ4_NL", rows_interleaved=4),
    _t("IQ3_S_R4", 221, QK_K, 110, IK, repack_of="IQ3_S", rows_interleaved=4),
    _t("IQ2_S_R4", 222, QK_K, 82, IK, repack_of="IQ2_S", rows_interleaved=4),
    _t("IQ4_XS_R8", 223, QK_K, 136, IK, repack_of="IQ4_XS", rows_interleaved=8),
    _t("IQ1_M_R4", 229, 32, 7, IK, row_meta=2, repack_of="IQ1_M", rows_interleaved=4),
    _t("BF16_R16", 230, 1, 2, IK, quantized=False, repack_of="BF16", rows_interleaved=16),
    _t("Q6_0_R4", 233, 32, 26, IK, repack_of="Q6_0", rows_interleaved=4),
    _t("IQ2_BN_R4", 335, 64, 16, IK, row_meta=4, repack_of="IQ2_BN", rows_interleaved=4),
    _t("IQ2_K_R4", 337, QK_K, 76, IK, repack_of="IQ2_K", rows_interleaved=4),
    _t("IQ3_K_R4", 338, QK_K, 110, IK, repack_of="IQ3_K", rows_interleaved=4),
    _t("IQ4_K_R4", 339, QK_K, 144, IK, repack_of="IQ4_K", rows_interleaved=4),
    _t("IQ5_K_R4", 340, QK_K, 176, IK, repack_of="IQ5_K", rows_interleaved=4),
    _t("IQ4_KS_R4", 344, QK_K, 136, IK, row_meta=4, repack_of="IQ4_KS", rows_interleaved=4),
    _t("IQ5_KS_R4", 352, QK_K, 168, IK, row_meta=4, repack_of="IQ5_KS", rows_interleaved=4),
    _t("MXFP4_R8", 353, 32, 17, IK, repack_of="MXFP4", rows_interleaved=8),
    _t("Q8_K_R16", 397, QK_K, 258, IK, internal=True, rows_interleaved=16),
    _t("Q8_KV_R8", 398, 32, 32, IK, row_meta=4, repack_of="Q8_KV", rows_interleaved=8),
    _t("Q8_K_R8", 399, QK_K, 258, IK, repack_of="Q8_0", rows_interleaved=8),
)

_BY_NAME: dict[str, QType] = {}
for _q in _ALL:  # the first record of a name wins (Q8_K: mainline's 292-byte block)
    _BY_NAME.setdefault(_q.name, _q)


def all_types(flavour: str | None = None) -> list[QType]:
    """Every type, or those available in one flavour, in id order."""
    ts = [t for t in _ALL if flavour is None or t.available_in(flavour)]
    return sorted(ts, key=lambda t: (t.id, t.name))


def type_names(flavour: str | None = None) -> list[str]:
    return [t.name for t in all_types(flavour)]


def get_type(name: str | QType) -> QType:
    """Look a type up by name, case-insensitively; KeyError lists the valid names."""
    if isinstance(name, QType):
        return name
    t = _BY_NAME.get(name.upper())
    if t is None:
        raise KeyError(f"unknown type {name!r}; valid types: {', '.join(type_names())}")
    return t


def type_by_id(type_id: int, flavour: str = MAINLINE) -> QType:
    """The type with this id in the given flavour (ids 41 and 36 differ between trees)."""
    for t in _ALL:
        if t.id == type_id and t.available_in(flavour):
            return t
    for t in _ALL:  # an id the other tree knows: still readable
        if t.id == type_id:
            return t
    raise KeyError(f"unknown GGML type id {type_id}")
