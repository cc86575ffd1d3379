"""Per-tensor sensitivity for budgeted mixes (`qtool mix solve`, `quantize --target-bpw`).

The solver minimizes sum_t sensitivity_t * error_t, where error_t is tensor t's imatrix-weighted
squared quantization error. The default ("role") encodes what llama.cpp's own mixes
(llama_tensor_get_type_impl in src/llama-quant.cpp) say by spending more bits there:

- output.weight, and token_embd.weight when it is tied to the output (no output.weight): 4.
  Every k-quant ftype gives the output Q6_K (two steps above Q4_K_M's base).
- attn_v / attn_qkv / attn_kv_b and ffn_down: 2. Q3_K_M / Q4_K_M / Q5_K_M raise them one or two
  steps in the `use_more_bits` layers, Q2_K / Q3_K_S raise attn_v.
- attn_output: 1.5 (Q2_K, Q3_K_M, Q3_K_L, IQ3_M raise it one step).
- attn_q, attn_k, ffn_gate, ffn_up: 1 (never raised, IQ3_XS lowers them).
- token_embd.weight of a model with its own output: 0.5 (a row lookup, not a matrix product;
  llama.cpp leaves it at the base type or lowers it).
- other matrices: 1.

Layer factor (use_more_bits' first and last eighth of the layers): x2 for the first 1/16 of the
layers (Q3_K_M's Q5_K ffn_down), x1.5 for the rest of the first 1/8 and for the last 1/8. One
k-quant step (about +1 bpw) divides a tensor's squared error by 3-4, so a factor 2 is worth about
half a step. "flat" sets every sensitivity to 1: then the solver minimizes the plain total
imatrix-weighted error.
"""

from __future__ import annotations

from .mainline import (
    ATTENTION_KV_B,
    ATTENTION_OUTPUT,
    ATTENTION_QKV,
    ATTENTION_V,
    FFN_DOWN,
    OUTPUT,
    TOKEN_EMBD,
    tensor_get_category,
)
from .model import sscanf_layer

SENSITIVITY_MODES = ("role", "flat")
ROLE_WEIGHTS: dict[str, float] = {
    OUTPUT: 4.0, ATTENTION_V: 2.0, ATTENTION_QKV: 2.0, ATTENTION_KV_B: 2.0, FFN_DOWN: 2.0, ATTENTION_OUTPUT: 1.5,
}
TIED_EMBD_WEIGHT = 4.0
UNTIED_EMBD_WEIGHT = 0.5


def layer_factor(i_layer: int | None, n_layer: int) -> float:
    """x2 in the first 1/16 of the layers, x1.5 in the rest of the first 1/8 and the last 1/8."""
    if i_layer is None or n_layer <= 0:
        return 1.0
    if i_layer < n_layer // 16:
        return 2.0
    if i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8:
        return 1.5
    return 1.0


def role_sensitivity(name: str, n_layer: int, has_output: bool) -> float:
    """The default sensitivity of tensor `name` in a model of n_layer layers (see the module doc)."""
    cat = tensor_get_category(name)
    if cat == TOKEN_EMBD:
        base = UNTIED_EMBD_WEIGHT if has_output else TIED_EMBD_WEIGHT
    else:
        base = ROLE_WEIGHTS.get(cat, 1.0)
    return base * layer_factor(sscanf_layer(name), n_layer)


def sensitivity(name: str, n_layer: int, has_output: bool, mode: str = "role") -> float:
    """The sensitivity of one tensor for a mode of SENSITIVITY_MODES."""
    if mode == "flat":
        return 1.0
    if mode == "role":
        return role_sensitivity(name, n_layer, has_output)
    raise ValueError(f"unknown sensitivity mode {mode!r}; valid: {', '.join(SENSITIVITY_MODES)}")


__all__ = ["ROLE_WEIGHTS", "SENSITIVITY_MODES", "layer_factor", "role_sensitivity", "sensitivity"]
