"""qtool: quantize GGUF models and build importance matrices, byte-compatible with llama.cpp.

Python API (the CLI is a thin layer over it):
    qtool.quantize(rows, "Q4_0", imatrix) / qtool.dequantize(data, "Q4_0", n_per_row)
    qtool.quantize_file(...), qtool.plan(...)
"""

from __future__ import annotations

from typing import Any

from .quants import dequantize, quantize

__version__ = "0.1.0"
__all__ = ["dequantize", "plan", "quantize", "quantize_file", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: keep `import qtool` light
    if name in ("quantize_file", "plan"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
