"""Unquantized float types: F32, F16, BF16 (no blocks; the imatrix is ignored, as in ggml)."""

from __future__ import annotations

import numpy as np

from .registry import register
from .rounding import bf16_bits_to_fp32, fp16_bits_ggml, fp32_to_bf16_bits


def _q_f32(x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray(x, dtype="<f4").view(np.uint8).reshape(x.shape[0], -1)


def _q_f16(x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """Round to nearest even as ggml_compute_fp32_to_fp16 (a NaN: 0x7E00 with its sign)."""
    return fp16_bits_ggml(x).view(np.uint8).reshape(x.shape[0], -1)


def _q_bf16(x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray(fp32_to_bf16_bits(x).astype("<u2")).view(np.uint8).reshape(x.shape[0], -1)


def _d_f32(d: np.ndarray, n: int) -> np.ndarray:
    return d.view("<f4").reshape(-1, n).astype(np.float32)


def _d_f16(d: np.ndarray, n: int) -> np.ndarray:
    return d.view("<f2").reshape(-1, n).astype(np.float32)


def _d_bf16(d: np.ndarray, n: int) -> np.ndarray:
    return bf16_bits_to_fp32(d.view("<u2")).reshape(-1, n)


QUANTIZE = {"F32": _q_f32, "F16": _q_f16, "BF16": _q_bf16}
DEQUANTIZE = {"F32": _d_f32, "F16": _d_f16, "BF16": _d_bf16}
for _name in QUANTIZE:
    register(_name, QUANTIZE[_name], DEQUANTIZE[_name])  # the same bytes in both trees
