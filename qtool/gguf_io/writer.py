"""Write GGUF files tensor by tensor, byte-compatible with ggml's gguf writer.

Layout (as gguf_write_to_file / llama-quantize): header, key/value pairs, tensor infos,
padding to the alignment, then each tensor's bytes padded to the alignment. The header is
written first because every output size is known from the plan; data is streamed after it.
The file is written through `atomic.AtomicOutput` (a temporary name in the target folder,
renamed when complete), so a failed or interrupted run leaves no partial output.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import OutputError
from ..quants.types import QType
from . import format as fmt
from .atomic import AtomicOutput
from .format import KV


def set_kv(kvs: list[KV], kv: KV) -> list[KV]:
    """ggml's gguf_set_val_*: remove the key if present, then append it."""
    return [k for k in kvs if k.key != kv.key] + [kv]


def remove_kv(kvs: list[KV], key: str) -> list[KV]:
    return [k for k in kvs if k.key != key]


@dataclass
class OutTensor:
    name: str
    shape: tuple[int, ...]
    qtype: QType

    @property
    def n_bytes(self) -> int:
        return fmt.tensor_bytes(self.qtype, self.shape)


def header_bytes(kvs: list[KV], tensors: list[OutTensor], alignment: int, version: int = fmt.GGUF_VERSION) -> bytes:
    """Header, KV pairs and tensor infos, padded to the alignment."""
    return fmt.header_bytes(kvs, [(t.name, t.shape, t.qtype.id, t.n_bytes) for t in tensors], alignment, version)


class GGUFStreamWriter:
    """Write one GGUF file: header at once, then tensors in order with write_tensor()."""

    def __init__(self, path: str | os.PathLike[str], kvs: list[KV], tensors: list[OutTensor],
                 alignment: int = fmt.DEFAULT_ALIGNMENT, version: int = fmt.GGUF_VERSION,
                 inputs: Sequence[str] = ()) -> None:
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
            self._write(fmt.padding(t.n_bytes, self.alignment))
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
        self._write(fmt.padding(t.n_bytes, self.alignment))
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
        (self.close if exc_type is None else self.abort)()
