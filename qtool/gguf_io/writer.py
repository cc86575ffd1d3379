"""Write GGUF files tensor by tensor, byte-compatible with ggml's gguf writer.

Layout (as gguf_write_to_file / llama-quantize): header, key/value pairs, tensor infos,
padding to the alignment, then each tensor's bytes padded to the alignment. The header is
written first because every output size is known from the plan; data is streamed after it.
The file is written through `atomic.AtomicOutput` (a temporary name in the target folder,
renamed when complete), so a failed or interrupted run leaves no partial output.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import OutputError
from ..quants.types import QType
from .atomic import AtomicOutput
from .reader import (
    GGUF_MAGIC,
    KV,
    SCALAR_DTYPE,
    SCALAR_FMT,
    T_ARRAY,
    T_FLOAT32,
    T_INT32,
    T_STRING,
    T_UINT16,
    T_UINT32,
)


def _enc_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def make_kv(key: str, vtype: int, value: Any, atype: int | None = None) -> KV:
    """A key/value pair with its serialized bytes."""
    out = _enc_str(key) + struct.pack("<I", vtype)
    if vtype in SCALAR_FMT:
        out += struct.pack(SCALAR_FMT[vtype], value)
    elif vtype == T_STRING:
        out += _enc_str(str(value))
    elif vtype == T_ARRAY:
        assert atype is not None
        out += struct.pack("<IQ", atype, len(value))
        if atype == T_STRING:
            out += b"".join(_enc_str(s) for s in value)
        else:
            out += np.asarray(value, dtype=SCALAR_DTYPE[atype]).tobytes()
    else:
        raise ValueError(f"unknown GGUF value type {vtype}")
    return KV(key, vtype, value, out, atype)


def kv_u32(key: str, v: int) -> KV:
    return make_kv(key, T_UINT32, int(v))


def kv_u16(key: str, v: int) -> KV:
    return make_kv(key, T_UINT16, int(v))


def kv_i32(key: str, v: int) -> KV:
    return make_kv(key, T_INT32, int(v))


def kv_str(key: str, v: str) -> KV:
    return make_kv(key, T_STRING, v)


def kv_f32(key: str, v: float) -> KV:
    return make_kv(key, T_FLOAT32, float(v))


def set_kv(kvs: list[KV], kv: KV) -> list[KV]:
    """ggml's gguf_set_val_*: remove the key if present, then append it."""
    return [k for k in kvs if k.key != kv.key] + [kv]


def remove_kv(kvs: list[KV], key: str) -> list[KV]:
    return [k for k in kvs if k.key != key]


def n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 are not written."""
    for i in range(len(shape) - 1, 0, -1):
        if shape[i] > 1:
            return i + 1
    return 1


@dataclass
class OutTensor:
    name: str
    shape: tuple[int, ...]
    qtype: QType

    @property
    def n_bytes(self) -> int:
        n_rows = int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1
        return self.qtype.row_bytes(self.shape[0]) * n_rows


def _pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def header_bytes(kvs: list[KV], tensors: list[OutTensor], alignment: int, version: int = 3) -> bytes:
    """Header, KV pairs and tensor infos, padded to the alignment."""
    parts = [GGUF_MAGIC, struct.pack("<IQQ", version, len(tensors), len(kvs))]
    parts += [kv.raw for kv in kvs]
    offset = 0
    for t in tensors:
        nd = n_dims(t.shape)
        parts.append(_enc_str(t.name) + struct.pack("<I", nd)
                     + struct.pack(f"<{nd}Q", *t.shape[:nd]) + struct.pack("<IQ", t.qtype.id, offset))
        offset += _pad(t.n_bytes, alignment)
    h = b"".join(parts)
    return h + b"\0" * (_pad(len(h), alignment) - len(h))


class GGUFStreamWriter:
    """Write one GGUF file: header at once, then tensors in order with write_tensor()."""

    def __init__(self, path: str | os.PathLike[str], kvs: list[KV], tensors: list[OutTensor],
                 alignment: int = 32, version: int = 3, inputs: Sequence[str] = ()) -> None:
        header = header_bytes(kvs, tensors, alignment, version)  # may raise: before the temporary file exists
        self.out = AtomicOutput(path, inputs)
        self.tensors = tensors
        self.alignment = alignment
        self._next = 0
        self._written_in_tensor = 0
        try:
            self._write(header)
        except BaseException:
            self.out.abort()
            raise

    def _write(self, b: bytes | bytearray | memoryview) -> None:
        """Write to the temporary file; an OSError (disk full, I/O error) names the output."""
        try:
            self.out.f.write(b)
        except OSError as e:
            raise OutputError(f"{self.out.shown}: cannot write the output: {e.strerror or e}",
                              path=self.out.shown) from None

    def write_tensor_chunk(self, data: np.ndarray | bytes) -> None:
        """Append bytes of the current tensor; pads and moves on when the tensor is complete."""
        t = self.tensors[self._next]
        b = data if isinstance(data, bytes | bytearray | memoryview) else np.ascontiguousarray(data).data
        n = len(b) if not isinstance(b, memoryview) else b.nbytes
        self._write(b)
        self._written_in_tensor += n
        if self._written_in_tensor > t.n_bytes:
            raise RuntimeError(f"{t.name}: wrote {self._written_in_tensor} bytes, expected {t.n_bytes}")
        if self._written_in_tensor == t.n_bytes:
            self._write(b"\0" * (_pad(t.n_bytes, self.alignment) - t.n_bytes))
            self._next += 1
            self._written_in_tensor = 0

    @property
    def temp_path(self) -> str:
        """The temporary file being written (other processes may pwrite tensor data into it)."""
        return self.out.tmp

    def tensor_offset(self) -> int:
        """Absolute file offset of the current tensor's first byte (before any of it is written)."""
        if self._written_in_tensor:
            raise RuntimeError("tensor_offset() inside a partly written tensor")
        return self.out.f.tell()

    def skip_tensor(self) -> None:
        """Move past the current tensor, whose bytes someone else writes at tensor_offset(), and pad."""
        t = self.tensors[self._next]
        if self._written_in_tensor:
            raise RuntimeError(f"{t.name}: skip_tensor() inside a partly written tensor")
        self.out.f.seek(t.n_bytes, os.SEEK_CUR)
        self._write(b"\0" * (_pad(t.n_bytes, self.alignment) - t.n_bytes))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.tensors):
            self.out.abort()
            raise RuntimeError(f"only {self._next} of {len(self.tensors)} tensors written")
        self.out.commit()

    def abort(self) -> None:
        self.out.abort()

    def __enter__(self) -> GGUFStreamWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
