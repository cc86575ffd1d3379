"""The quantization engine: pure numpy functions, no I/O."""

from .engine import (
    NotImplementedType,
    can_dequantize,
    can_quantize,
    dequantize,
    quantizable_types,
    quantize,
)
from .types import QType, all_types, get_type, type_by_id

__all__ = ["NotImplementedType", "QType", "all_types", "can_dequantize", "can_quantize", "dequantize",
           "get_type", "quantizable_types", "quantize", "type_by_id"]
