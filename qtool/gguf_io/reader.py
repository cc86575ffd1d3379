"""Read GGUF files read-only and memory-mapped, including split sets and type ids the `gguf`
package does not know (ik_llama.cpp's 133-158 ...).

The header is parsed by the format layer (format.py: ggml's checks, every key/value pair with
its raw bytes, so that the writer copies them unchanged, as llama-quantize's gguf_set_kv does);
this module adds the checks of a whole file and the split-set handling.
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..quants.types import MAINLINE, type_by_id
from .format import KV, Cursor, GGUFError, Header, TensorInfo, ValueType, first_kv_value, read_header

# the value types under their old names, for importers of this module (new code: ValueType)
T_UINT8, T_INT8, T_UINT16, T_INT16 = ValueType.UINT8, ValueType.INT8, ValueType.UINT16, ValueType.INT16
T_UINT32, T_INT32, T_UINT64, T_INT64 = ValueType.UINT32, ValueType.INT32, ValueType.UINT64, ValueType.INT64
T_FLOAT32, T_FLOAT64, T_BOOL = ValueType.FLOAT32, ValueType.FLOAT64, ValueType.BOOL
T_STRING, T_ARRAY = ValueType.STRING, ValueType.ARRAY

_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<n>\d{5})\.gguf$")


@dataclass
class GGUFFile:
    """One parsed GGUF file (one part of a split set)."""

    path: str
    header: Header
    mm: np.memmap

    @property
    def tensors(self) -> list[TensorInfo]:
        return self.header.tensors


def read_gguf_file(path: str | os.PathLike[str], part: int = 0, flavour: str = MAINLINE) -> GGUFFile:
    """Parse one GGUF file's header; tensor data stays memory-mapped read-only.

    Beyond the header's checks (format.read_header): the padding before the data must be zero
    and nothing may follow the last tensor's padded data (either means a wrong tensor count).
    """
    p = str(path)
    if not os.path.exists(p):
        raise GGUFError(f"{p}: no such file", path=p)
    if os.path.isdir(p):
        raise GGUFError(f"{p}: is a directory, not a GGUF file", path=p)
    size = os.path.getsize(p)
    if size < 24:
        raise GGUFError(f"{p}: not a GGUF file (only {size} bytes)", path=p)
    mm = np.memmap(p, dtype=np.uint8, mode="r")
    c = Cursor(mm.data, p)
    h = read_header(c, partial(type_by_id, flavour=flavour), part=part)
    # a file without tensor data may end unpadded right after its header (gguf.cpp seeks past the
    # end then; llama.cpp's vocab-only models/ggml-vocab-*.gguf are such files)
    if (h.data_offset > size and h.data_size) or any(bytes(c.buf[h.info_end:min(h.data_offset, size)])):
        raise c.err(f"corrupt header: the padding at offsets {h.info_end}..{h.data_offset} before the tensor data "
                    "is not zero (wrong tensor or key count?)")
    end = h.data_offset + h.data_size
    if size - end >= h.alignment:
        raise c.err(f"{size - end} bytes after the last tensor's data at offset {end}: the header does not "
                    "describe the whole file (wrong tensor count?)")
    return GGUFFile(p, h, mm)


def split_paths(path: str) -> list[str]:
    """All parts of a split set given its first part; [path] for a single file."""
    m = _SPLIT_RE.match(os.path.basename(path))
    if not m:
        return [path]
    n = int(m.group("n"))
    d = os.path.dirname(path)
    prefix = m.group("prefix")
    return [os.path.join(d, f"{prefix}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]


class GGUFModel:
    """A GGUF model, single file or split set, opened read-only and memory-mapped.

    `kvs` are the first part's key/value pairs; `tensors` are all tensors of all parts in file
    order; `tensor_data(t)` is a read-only view of a tensor's bytes (no copy).
    """

    def __init__(self, path: str | os.PathLike[str], flavour: str = MAINLINE) -> None:
        self.path = str(path)
        first = read_gguf_file(self.path, 0, flavour)
        self.parts = [first]
        n_split = first_kv_value(first.header.kvs, "split.count")
        if n_split and int(n_split) > 1:
            paths = split_paths(self.path)
            if len(paths) != int(n_split):
                raise GGUFError(f"{self.path}: split.count is {n_split} but the name does not follow "
                                f"the NAME-00001-of-0000N.gguf pattern", path=self.path)
            if Path(paths[0]).resolve() != Path(self.path).resolve():
                raise GGUFError(f"{self.path}: open the first part of a split set ({paths[0]})", path=self.path)
            for i, pp in enumerate(paths[1:], start=1):
                self.parts.append(read_gguf_file(pp, i, flavour))
        self.kvs: list[KV] = first.header.kvs
        self.tensors: list[TensorInfo] = [t for part in self.parts for t in part.tensors]
        self.alignment = first.header.alignment

    def kv(self, key: str, default: Any = None) -> Any:
        return first_kv_value(self.kvs, key, default)

    @property
    def arch(self) -> str:
        return str(self.kv("general.architecture", ""))

    def tensor_data(self, t: TensorInfo) -> np.ndarray:
        mm = self.parts[t.part].mm
        return mm[t.offset:t.offset + t.n_bytes]

    def tensor_rows(self, t: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Bytes of rows [start, stop) as uint8[nrows, row_bytes] (a view)."""
        rb = t.qtype.row_bytes(t.n_per_row)
        mm = self.parts[t.part].mm
        return mm[t.offset + start * rb:t.offset + stop * rb].reshape(stop - start, rb)

    def check_size(self, t: TensorInfo) -> None:
        """Before reading a tensor: its file must still hold it (a file truncated under a run
        would otherwise kill the process with SIGBUS when the mapped pages are touched)."""
        p = self.parts[t.part]
        size = _size_now(p.path)
        if size < t.offset + t.n_bytes:
            raise GGUFError(f"{p.path}: the file changed during the run: it has {size} bytes now, tensor "
                            f"{t.name!r} needs bytes {t.offset}..{t.offset + t.n_bytes}", path=p.path)

    def check_files(self) -> None:
        """Every part still as large as when it was opened (GGUFError otherwise)."""
        for p in self.parts:
            if p.tensors:
                self.check_size(p.tensors[-1])

    def release(self, t: TensorInfo, start: int = 0, stop: int | None = None) -> None:
        """Drop the mapped pages of rows [start, stop) of `t` from this process's memory.

        Reading a memory map keeps every touched page resident (it counts in RSS until the kernel
        needs it back); releasing what was processed keeps a run's footprint at about a slab
        instead of the whole model. Only whole pages inside the range are released; the data
        is read again from the file if touched later.
        """
        mmo = getattr(self.parts[t.part].mm, "_mmap", None)
        if mmo is None or not hasattr(mmo, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        rb = t.qtype.row_bytes(t.n_per_row)
        lo = t.offset + start * rb
        hi = t.offset + (t.n_rows if stop is None else stop) * rb
        lo = -(-lo // mmap.PAGESIZE) * mmap.PAGESIZE
        hi = hi // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo:
            try:
                mmo.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        for p in self.parts:
            mm = p.mm
            p.mm = None  # type: ignore[assignment]
            del mm

    def __enter__(self) -> GGUFModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _size_now(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1

