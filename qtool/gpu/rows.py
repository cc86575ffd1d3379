"""Rows in memory quantized on a GPU where the type has a kernel, else by the numpy engine: the
engine's `quantize(rows, qtype, imatrix, flavour=...)` contract, for commands that quantize rows
they hold (`stats --device cuda`) rather than stream a file (quantize's pipeline). Same bytes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..quants import engine
from ..quants.types import MAINLINE, QType, get_type
from .kernels import gpu_kernel

Quantizer = Callable[..., np.ndarray]


def gpu_quantizer(device: int = 0) -> Quantizer:
    """A quantize function running on CUDA device `device` (CuPy; GpuUnavailable, a user error,
    where it is missing) for the types and variants with a kernel, on the CPU for the others."""
    from .cuda import CudaKernels

    kernels = CudaKernels(device)

    def quantize(rows: np.ndarray, qtype: str | QType, imatrix: np.ndarray | None = None,
                 flavour: str = MAINLINE) -> np.ndarray:
        qt = get_type(qtype)
        if gpu_kernel(qt, imatrix is not None, flavour) is None:
            return engine.quantize(rows, qt, imatrix, flavour=flavour)
        return kernels.quantize(rows, qt, imatrix, flavour=flavour)

    return quantize
