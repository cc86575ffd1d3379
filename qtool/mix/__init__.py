"""Per-tensor type choice ("mix") of llama-quantize, as a pure library.

`plan(tensors, info, ftype, opts)` returns a Plan: one Decision (type + reason) per tensor, in the
order llama-quantize writes them. Mainline llama.cpp's rules (src/llama-quant.cpp) are the
default; `MixOptions(flavour="ik")` uses ik_llama.cpp's (src/llama-quantize.cpp). docs/mix.md
describes every rule source and their precedence.
"""

from .decision import Decision, Plan
from .ftypes import FLAVOURS, IK, MAINLINE, FType, FTypeError, ftype_names, ftype_table, parse_ftype
from .model import ModelInfo, TensorSpec, specs_from_gguf
from .options import (
    MixError,
    MixOptions,
    TypeRule,
    filter_imatrix_names,
    parse_custom_q,
    parse_ggml_type,
    parse_prune_layers,
    parse_tensor_type,
    parse_tensor_type_file,
)
from .plan import check_plan, plan
from .recipe import Recipe, load_recipe, parse_recipe

__all__ = [
    "FLAVOURS", "IK", "MAINLINE", "Decision", "FType", "FTypeError", "MixError", "MixOptions",
    "ModelInfo", "Plan", "Recipe", "TensorSpec", "TypeRule", "check_plan", "filter_imatrix_names", "ftype_names",
    "ftype_table", "load_recipe", "parse_custom_q", "parse_ftype", "parse_ggml_type",
    "parse_prune_layers", "parse_recipe", "parse_tensor_type", "parse_tensor_type_file", "plan",
    "specs_from_gguf",
]
