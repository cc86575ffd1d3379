"""ik_llama.cpp types and ik_llama.cpp's own flavour of mainline types.

IK_QUANTIZE: quantizers used with flavour "ik" instead of mainline's, keyed by type name.
IK_UNPORTED: (type, with imatrix) variants that ik_llama.cpp quantizes with its own algorithm
and qtool has not ported yet; the engine refuses them for flavour "ik" rather than write
mainline's bytes (measured on the golden vectors: most rows differ).
"""

from . import iq4_ik, legacy_ik, q6_0, q6_k_ik

IK_QUANTIZE: dict = {**q6_k_ik.QUANTIZE, **iq4_ik.QUANTIZE, **legacy_ik.QUANTIZE, **q6_0.QUANTIZE}
IK_DEQUANTIZE: dict = {**q6_0.DEQUANTIZE}

IK_UNPORTED: frozenset[tuple[str, bool]] = frozenset(
    (t, True) for t in ("Q4_1", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K"))
