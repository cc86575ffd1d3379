"""Which types the GPU dequantizes: every `dequantize_<type>` kernel of the source (discovered by
qtool.gpu.source.kernel_modules, so a new kernel file needs no entry here), and how it is called.

A dequantize kernel reads rows of blocks as a GGUF file stores them (`q`, no row header of its
own: types with a per-row header read it in their own kernel) and writes float32 rows (`y`):
`dequantize_<type>(const uint8_t *q, float *y, int64_t nrows, int64_t n_per_row)`, launched
with one thread per block (kernels working per row ignore the threads past their rows). Its
float32 bits are the numpy engine's (`qtool.quants.engine.dequantize`), NaN included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from ..quants.engine import can_dequantize
from ..quants.types import QType, get_type
from .source import MODULES, kernel_modules
from .tables import TABLES

_PREFIX = "dequantize_"
_QTABLE = re.compile(r"^\s*QTABLE\(\s*\w+\s*,\s*(\w+)\s*\)", re.M)


@dataclass(frozen=True)
class DequantKernel:
    """One type's dequantize kernel."""

    type_name: str
    kernel: str
    module: str
    tables: tuple[str, ...] = ()
    """lookup tables (qtool.gpu.tables) its module's own files declare with QTABLE."""

    @property
    def qtype(self) -> QType:
        return get_type(self.type_name)

    def threads(self, nrows: int, n_per_row: int) -> int:
        """Threads of one launch over nrows rows (one per block)."""
        return nrows * (n_per_row // self.qtype.block_size)


@cache
def _module_tables(module: str) -> tuple[str, ...]:
    """QTABLE names declared in the module's own files that tables.py builds."""
    names: list[str] = []
    for f in MODULES[module][1]:
        text = (resources.files("qtool.gpu") / "cuda" / f).read_text(encoding="utf-8")
        names += [n for n in _QTABLE.findall(text) if n in TABLES and n not in names]
    return tuple(names)


@cache
def dequant_kernels() -> dict[str, DequantKernel]:
    """type name -> its dequantize kernel, for every `dequantize_<type>` kernel of the source."""
    out: dict[str, DequantKernel] = {}
    for name, module in sorted(kernel_modules().items()):
        if name.startswith(_PREFIX):
            qt = get_type(name[len(_PREFIX):].upper())
            out[qt.name] = DequantKernel(qt.name, name, module, _module_tables(module))
    return out


def dequant_kernel(qtype: str | QType) -> DequantKernel | None:
    """The kernel dequantizing this type on the GPU, or None (the CPU engine dequantizes it). A
    kernel serves a type of the other flavour with the same name only where their blocks are the
    same (ik_llama.cpp's Q8_K is not mainline's) and the engine reads that type too."""
    qt = get_type(qtype)
    k = dequant_kernels().get(qt.name)
    if k is None or not can_dequantize(qt):
        return None
    ref = k.qtype
    if (ref.block_size, ref.type_size) != (qt.block_size, qt.type_size):
        return None
    return k


def dequant_call(data: np.ndarray, qtype: str | QType, n_per_row: int) -> tuple[DequantKernel, np.ndarray, int]:
    """What the backends' dequantize (engine.dequantize's contract) launches: the type's kernel, the
    rows' bytes as one contiguous uint8 array, and the row count. ValueError where the type has no
    kernel, n_per_row is not whole blocks or the bytes are not whole rows."""
    qt = get_type(qtype)
    k = dequant_kernel(qt)
    if k is None:
        raise ValueError(f"no GPU dequantize kernel for {qt.name}")
    if n_per_row <= 0 or n_per_row % qt.block_size:
        raise ValueError(f"{qt.name}: {n_per_row} values per row is not a multiple of {qt.block_size}")
    q = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    nrb = qt.row_bytes(n_per_row)
    if q.nbytes % nrb:
        raise ValueError(f"{qt.name}: {q.nbytes} bytes are not whole rows of {nrb} bytes")
    return k, q, q.nbytes // nrb
