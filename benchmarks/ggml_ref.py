"""ctypes access to ggml's reference quantizer, `ggml_quantize_chunk`, in libggml-base.so.

The library is the mainline llama.cpp build under /work/ref (not part of the repo); set
QTOOL_GGML_LIB to use another copy. `ggml_quantize_chunk` is single-threaded plain C, so what it
returns is the reference both for bytes (byte-exactness checks) and for single-thread speed.

    from benchmarks.ggml_ref import load, quantize_chunk
    out = quantize_chunk(type_id, rows, imatrix)   # uint8[nrows, row_bytes]

Only the type ids that mainline's `ggml_quantize_chunk` handles are accepted (anything else hits
an assert in C and kills the process), and types that need an importance matrix are refused
without one, for the same reason.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

DEFAULT_LIB = Path("/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/libggml-base.so")
ENV_VAR = "QTOOL_GGML_LIB"

# enum ggml_type ids of mainline ggml that ggml_quantize_chunk's switch handles (ggml/src/ggml.c).
MAINLINE_IDS: dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
    "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14,
    "IQ2_XXS": 16, "IQ2_XS": 17, "IQ3_XXS": 18, "IQ1_S": 19, "IQ4_NL": 20, "IQ3_S": 21,
    "IQ2_S": 22, "IQ4_XS": 23, "IQ1_M": 29, "BF16": 30, "TQ1_0": 34, "TQ2_0": 35,
    "MXFP4": 39, "NVFP4": 40, "Q1_0": 41, "Q2_0": 42,
}
SUPPORTED_IDS = frozenset(MAINLINE_IDS.values())

_lib: ctypes.CDLL | None = None
_lib_error: str | None = None


def lib_path() -> Path:
    """Where the library is looked for: $QTOOL_GGML_LIB, else the /work/ref build."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_LIB)


def load() -> ctypes.CDLL | None:
    """Load libggml-base.so once; None (see `load_error()`) when it is missing or unusable."""
    global _lib, _lib_error
    if _lib is not None or _lib_error is not None:
        return _lib
    path = lib_path()
    try:
        lib = ctypes.CDLL(str(path))
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
        ]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        lib.ggml_blck_size.restype = ctypes.c_int64
        lib.ggml_blck_size.argtypes = [ctypes.c_int]
        lib.ggml_type_name.restype = ctypes.c_char_p
        lib.ggml_type_name.argtypes = [ctypes.c_int]
        lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
        lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        lib.ggml_quantize_init.restype = None
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    except (OSError, AttributeError) as e:
        _lib_error = f"cannot load ggml reference library {path}: {e}"
        return None
    _lib = lib
    return lib


def load_error() -> str | None:
    """Why `load()` returned None, if it did."""
    load()
    return _lib_error


def available() -> bool:
    return load() is not None


def _need() -> ctypes.CDLL:
    lib = load()
    if lib is None:
        raise RuntimeError(_lib_error or "ggml reference library unavailable")
    return lib


def type_id(name: str) -> int:
    """Mainline ggml type id of a type name (case-insensitive); KeyError if ggml_quantize_chunk lacks it."""
    try:
        return MAINLINE_IDS[name.upper()]
    except KeyError:
        raise KeyError(f"ggml_quantize_chunk has no type {name!r}; it has {', '.join(MAINLINE_IDS)}") from None


def type_name(qtype_id: int) -> str:
    """ggml's own name for a type id (as llama.cpp prints it, e.g. 'q4_K')."""
    return _need().ggml_type_name(qtype_id).decode()


def row_size(qtype_id: int, n_per_row: int) -> int:
    """ggml_row_size: bytes of one row of n_per_row values."""
    return int(_need().ggml_row_size(qtype_id, n_per_row))


def requires_imatrix(qtype_id: int) -> bool:
    """ggml_quantize_requires_imatrix (IQ2_XXS, IQ2_XS, IQ1_S in mainline)."""
    return bool(_need().ggml_quantize_requires_imatrix(qtype_id))


def init(qtype_id: int) -> None:
    """ggml_quantize_init: build the type's lookup tables now, so they are not timed later."""
    _need().ggml_quantize_init(qtype_id)


def quantize_chunk(qtype_id: int, rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk on rows float32[nrows, n] (imatrix float32[n] or None) -> uint8[nrows, row_bytes]."""
    lib = _need()
    if qtype_id not in SUPPORTED_IDS:
        raise ValueError(f"type id {qtype_id} is not handled by mainline ggml_quantize_chunk")
    x = np.ascontiguousarray(rows, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"rows must be 2-D (nrows, n_per_row), got shape {x.shape}")
    nrows, n = x.shape
    blck = int(lib.ggml_blck_size(qtype_id))
    if n % blck:
        raise ValueError(f"{type_name(qtype_id)}: row length {n} is not a multiple of {blck}")
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if qw.shape[0] != n:
            raise ValueError(f"imatrix has {qw.shape[0]} values, rows have {n}")
    elif requires_imatrix(qtype_id):
        raise ValueError(f"{type_name(qtype_id)} requires an importance matrix")
    rb = row_size(qtype_id, n)
    out = np.empty((nrows, rb), dtype=np.uint8)
    if nrows == 0:
        return out
    written = lib.ggml_quantize_chunk(qtype_id, x.ctypes.data, out.ctypes.data, 0, nrows, n,
                                      None if qw is None else qw.ctypes.data)
    if written != nrows * rb:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {nrows * rb}")
    return out
