"""i-quants of mainline ggml: the engine's registry for this family.

Sections (one module each, registered here):
- non-linear 4-bit IQ4_NL, IQ4_XS: `qtool.quants.nonlinear`.
- lattice i-quants IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S: (not ported yet).
"""

from __future__ import annotations

from . import nonlinear

# --- IQ4_NL / IQ4_XS (non-linear 4-bit) ---
QUANTIZE: dict = {**nonlinear.QUANTIZE}
DEQUANTIZE: dict = {**nonlinear.DEQUANTIZE}

# --- lattice i-quants: add their QUANTIZE / DEQUANTIZE entries below ---
