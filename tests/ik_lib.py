"""ik_llama.cpp's libggml through ctypes, for the tests that compare with it (QTOOL_IK_LIB): one
loader (ggml_init run so the fp16 tables are filled; ggml_quantize_chunk with ik's extra
trailing pointer; the type traits for to_float), ggml_quantize_chunk on float rows, and to_float
on quantized rows (R rows at a time for interleaved types, as ggml calls it)."""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from qtool.quants.types import get_type

from . import refs

F32 = np.float32


class TypeTraits(ctypes.Structure):
    """ik's struct ggml_type_traits (ggml/include/ggml.h)."""
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64), ("blck_size_interleave", ctypes.c_int64),
                ("type_size", ctypes.c_size_t), ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p),
                ("from_float_to_mat", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p), ("vec_dot_type", ctypes.c_int),
                ("nrows", ctypes.c_int64), ("ncols", ctypes.c_int64), ("gemv", ctypes.c_void_p),
                ("gemm", ctypes.c_void_p), ("row_meta_size", ctypes.c_int64)]


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@functools.cache
def load() -> ctypes.CDLL:
    """The library QTOOL_IK_LIB names (which must be set), ready to use; loaded once."""
    lib = ctypes.CDLL(str(refs.ik_lib()))
    lib.ggml_init.restype = ctypes.c_void_p
    lib.ggml_init.argtypes = [_InitParams]
    lib.ggml_init(_InitParams(1 << 20, None, False))  # fills the fp16 tables quantizers and to_float read
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_internal_get_type_traits.restype = TypeTraits
    lib.ggml_internal_get_type_traits.argtypes = [ctypes.c_int]
    return lib


def quantize(lib: ctypes.CDLL, qtype: str, x: np.ndarray, im: np.ndarray | None) -> np.ndarray:
    """ggml_quantize_init(type) then ggml_quantize_chunk(type, rows, ..., imatrix, NULL) -> uint8 (nrows, row_bytes)."""
    t = get_type(qtype)
    x = np.ascontiguousarray(x, F32)
    imp = None if im is None else np.ascontiguousarray(im, F32)
    lib.ggml_quantize_init(t.id)
    out = np.zeros((x.shape[0], t.row_bytes(x.shape[1])), np.uint8)
    got = lib.ggml_quantize_chunk(t.id, x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1],
                                  None if imp is None else imp.ctypes.data, None)
    assert got == out.size
    return out


def to_float(lib: ctypes.CDLL, qtype: str, q: np.ndarray, n: int, rows: int = 1) -> np.ndarray:
    """The type's to_float on each group of `rows` rows (k = rows*n, as ggml calls it for an
    interleaved type) -> float32 (nrows, n)."""
    f = TO_FLOAT(lib.ggml_internal_get_type_traits(get_type(qtype).id).to_float)
    y = np.zeros((q.shape[0], n), F32)
    for g in range(0, q.shape[0], rows):
        blk = np.ascontiguousarray(q[g:g + rows])
        out = np.zeros((rows, n), F32)
        f(blk.ctypes.data, out.ctypes.data, rows * n)
        y[g:g + rows] = out
    return y
