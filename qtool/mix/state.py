"""What both trees' `llama_tensor_get_type` share: the per-run counters and the small helpers.

Mainline's `quantize_state_impl` (src/llama-quant.cpp) and ik_llama.cpp's
`quantize_state_internal` (src/llama-quantize.cpp) hold the same counters; the lambdas
`use_more_bits` and `layer_info` of both `llama_tensor_get_type`s are the same code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..quants.types import get_type
from .decision import Step
from .model import ModelInfo, sscanf_layer
from .options import MixError, MixOptions, TypeRule

_SIZE_T = 1 << 64


@dataclass
class QuantizeState:
    """quantize_state_impl / quantize_state_internal: counters that advance tensor by tensor.

    ftype: the llama_ftype key ("Q4_K_M"); ftype_name: the name the user typed (may be an alias,
    shown in reasons). rules: the compiled REGEX=TYPE rules, first match wins. has_output: the
    model has an output tensor (otherwise token_embd is tied to it and gets the output rules).
    output_name: ik's tn(LLM_TENSOR_OUTPUT, "weight"), None where the arch has none.
    """

    info: ModelInfo
    opts: MixOptions
    ftype: str
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
    n_fallback: int = 0
    has_imatrix: bool = False
    has_output: bool = False
    output_name: str | None = "output.weight"
    # the record of the tensor being decided (reset by begin(), copied into its Decision)
    steps: list[Step] = field(default_factory=list)
    rule_hit: int | None = None
    rules_skipped: str | None = None
    fallback_from: str | None = None

    def first_rule(self, name: str) -> TypeRule | None:
        """The first REGEX=TYPE rule whose pattern is found in name (std::regex_search)."""
        i = self.first_rule_index(name)
        return None if i is None else self.rules[i][1]

    def first_rule_index(self, name: str) -> int | None:
        """The index of the first REGEX=TYPE rule whose pattern is found in name."""
        for i, (pat, _) in enumerate(self.rules):
            if pat.search(name):
                return i
        return None

    def begin(self) -> None:
        """Start the record of a new tensor."""
        self.steps = []
        self.rule_hit = self.rules_skipped = self.fallback_from = None

    def step(self, source: str, detail: str, type_name: str | None = None, decided: bool = False) -> None:
        """Record one source consulted for the current tensor (Decision.steps)."""
        self.steps.append(Step(source, detail, type_name, decided))

    def skip_rules(self, why: str) -> None:
        """The REGEX=TYPE rules are not consulted (or are overridden) for the current tensor: why."""
        if self.rules and self.rules_skipped is None:
            self.rules_skipped = why

    def layer_info(self, i_layer: int, n_layer: int, name: str) -> tuple[int, int]:
        """The `layer_info` lambda: with experts the layer comes from the name (experts are not
        stored in layer order), else the counter."""
        if max(1, self.info.n_expert) > 1:
            il = sscanf_layer(name)
            if il is None:
                raise MixError(f"Failed to determine layer for tensor {name}")
            if il < 0 or il >= n_layer:
                raise MixError(f"Bad layer {il} for tensor {name}. Must be in [0, {n_layer})")
            i_layer = il
        return i_layer, n_layer

    def next_attention_wv(self) -> tuple[int, int]:
        """(i_attention_wv, n_attention_wv) for this tensor; the counter advances."""
        self.i_attention_wv += 1
        return self.i_attention_wv - 1, self.n_attention_wv

    def next_ffn_down(self, name: str | None = None) -> tuple[int, int]:
        """(layer, n_layer) of this ffn_down tensor, by layer_info when name is given, else the
        bare counter; the counter advances (not when layer_info fails)."""
        i, n = self.i_ffn_down, self.n_ffn_down
        if name is not None:
            i, n = self.layer_info(i, n, name)
        self.i_ffn_down += 1
        return i, n

    def next_ffn_gate(self, name: str) -> tuple[int, int]:
        """(layer, n_layer) of this ffn_gate tensor by layer_info; the counter advances."""
        i, n = self.layer_info(self.i_ffn_gate, self.n_ffn_gate, name)
        self.i_ffn_gate += 1
        return i, n

    def next_ffn_up(self, name: str) -> tuple[int, int]:
        """(layer, n_layer) of this ffn_up tensor by layer_info; the counter advances."""
        i, n = self.layer_info(self.i_ffn_up, self.n_ffn_up, name)
        self.i_ffn_up += 1
        return i, n


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The `use_more_bits` lambda: first and last 1/8 of the layers, and every third in between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def use_more_bits_reason(i: int, n: int) -> str:
    """Why use_more_bits(i, n) holds."""
    if i < n // 8:
        return "in the first 1/8 of layers"
    if i >= 7 * n // 8:
        return "in the last 1/8 of layers"
    return "every third layer in between"


def name_ends_with_weight(name: str) -> bool:
    """`name.rfind("weight") == name.size() - 6`, with size_t arithmetic (npos, wrap-around)."""
    pos = name.rfind("weight")
    return (pos if pos >= 0 else _SIZE_T - 1) == (len(name) - 6) % _SIZE_T


def plain_type(type_name: str) -> tuple[str, int]:
    """ik's `interleaved_properties`: (the plain type, rows interleaved) of a row-interleaved
    repack (Q4_K_R4 -> Q4_K, 4), (type, 1) for any other type; from the type table."""
    qt = get_type(type_name)
    if qt.repack_of is not None:
        return qt.repack_of, qt.rows_interleaved
    return qt.name, 1


def is_quantized(type_name: str) -> bool:
    """ggml_is_quantized; a row-interleaved repack is quantized when its plain type is (BF16_R16 is not)."""
    return get_type(plain_type(type_name)[0]).quantized
