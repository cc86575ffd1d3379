"""Read GGUF files read-only and memory-mapped, including split sets and type ids the `gguf`
package does not know (ik_llama.cpp's 133-158 ...).

We parse the header ourselves (the format is small) so that every key/value pair keeps its raw
bytes: the writer copies them unchanged, as llama-quantize's gguf_set_kv does.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QtoolError
from ..quants.types import MAINLINE, QType, type_by_id

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF value types
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY, \
    T_UINT64, T_INT64, T_FLOAT64 = range(13)
SCALAR_FMT = {T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h", T_UINT32: "<I", T_INT32: "<i",
              T_FLOAT32: "<f", T_BOOL: "<?", T_UINT64: "<Q", T_INT64: "<q", T_FLOAT64: "<d"}
SCALAR_DTYPE = {T_UINT8: "<u1", T_INT8: "<i1", T_UINT16: "<u2", T_INT16: "<i2", T_UINT32: "<u4",
                T_INT32: "<i4", T_FLOAT32: "<f4", T_BOOL: "?", T_UINT64: "<u8", T_INT64: "<i8",
                T_FLOAT64: "<f8"}

_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<n>\d{5})\.gguf$")
MAX_DIMS = 4
GGML_MAX_NAME = 64
INT64_MAX = (1 << 63) - 1
_MIN_TENSOR_INFO = 8 + 4 + 4 + 8  # empty name, n_dims, type, offset
_MIN_KV = 8 + 4 + 1  # empty key, value type, a one-byte value


def _check_shape(path: str, name: str, at: int, shape: tuple[int, ...]) -> None:
    """ggml's checks of a tensor's ne: no negative dimension and no int64 overflow of the element
    count; qtool also refuses empty tensors (a zero dimension), which no model has."""
    n = 1
    for d in shape:
        if d < 0:
            raise GGUFError(f"{path}: tensor {name!r} at offset {at} has a negative dimension in shape {list(shape)}")
        if d == 0:
            raise GGUFError(f"{path}: tensor {name!r} at offset {at} has a zero dimension in shape {list(shape)}")
        if n > INT64_MAX // d:
            raise GGUFError(f"{path}: tensor {name!r} at offset {at}: shape {list(shape)} overflows int64")
        n *= d


class GGUFError(QtoolError):
    """A file is not a readable GGUF file; the message says which file, what and where."""


@dataclass
class KV:
    """One key/value pair: parsed value plus the raw bytes of the whole entry."""

    key: str
    vtype: int
    value: Any
    raw: bytes
    atype: int | None = None  # element type for arrays


@dataclass
class TensorInfo:
    """A tensor of a (possibly split) GGUF model. shape is ggml's ne order: shape[0] = row length."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int  # absolute offset in its file
    part: int  # index of the split file holding it
    qtype: QType = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def n_per_row(self) -> int:
        return self.shape[0]

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_bytes(self) -> int:
        return self.qtype.row_bytes(self.n_per_row) * self.n_rows


class _Cursor:
    def __init__(self, buf: memoryview, path: str) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated at offset {self.pos} while reading {what} "
                            f"(need {n} bytes, file has {len(self.buf)})")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str, strict: bool = False) -> str:
        """A u64-length-prefixed string; strict: invalid UTF-8 is an error (keys and tensor
        names), else replaced (values, as ggml keeps their bytes)."""
        at = self.pos
        n = self.scalar("<Q", what + " length")
        if n > len(self.buf) - self.pos:
            raise GGUFError(f"{self.path}: truncated at offset {at} while reading {what} (it claims {n} bytes, "
                            f"{len(self.buf) - self.pos} remain in the file)")
        raw = bytes(self.take(n, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            if strict:
                raise GGUFError(f"{self.path}: {what} at offset {at} is not valid UTF-8") from None
            return raw.decode("utf-8", errors="replace")


_U64 = struct.Struct("<Q")


def _string_array(c: _Cursor, n: int, what: str) -> list[str]:
    """n strings (u64 length + UTF-8 bytes each): the tokenizer's vocabulary is ~100k of them, so
    this is the header's hot loop; any irregular item goes through _Cursor.string for its error."""
    buf, pos, end = c.buf, c.pos, len(c.buf)
    out: list[str] = []
    append = out.append
    unpack = _U64.unpack_from
    try:
        for _ in range(n):
            if pos + 8 > end:
                break
            ln = unpack(buf, pos)[0]
            stop = pos + 8 + ln
            if ln > (1 << 30) or stop > end:
                break
            append(str(buf[pos + 8:stop], "utf-8"))
            pos = stop
    except UnicodeDecodeError:
        pass
    c.pos = pos
    while len(out) < n:  # the slow path: errors and replacement characters as _Cursor.string gives them
        out.append(c.string(what))
    return out


def _read_value(c: _Cursor, vtype: int, what: str) -> tuple[Any, int | None]:
    if vtype in SCALAR_FMT:
        return c.scalar(SCALAR_FMT[vtype], what), None
    if vtype == T_STRING:
        return c.string(what), None
    if vtype == T_ARRAY:
        atype = c.scalar("<I", what + " array type")
        n = c.scalar("<Q", what + " array length")
        if atype in SCALAR_DTYPE:
            itemsize = np.dtype(SCALAR_DTYPE[atype]).itemsize
            if n * itemsize > len(c.buf):
                raise GGUFError(f"{c.path}: array of {n} items at offset {c.pos} is larger than the file ({what})")
            arr = np.frombuffer(c.take(n * itemsize, what), dtype=SCALAR_DTYPE[atype]).copy()
            return arr, atype
        if atype == T_STRING:
            if n > len(c.buf):
                raise GGUFError(f"{c.path}: array of {n} strings at offset {c.pos} is larger than the file ({what})")
            return _string_array(c, n, what), atype
        raise GGUFError(f"{c.path}: unsupported array element type {atype} at offset {c.pos} ({what})")
    raise GGUFError(f"{c.path}: unknown value type {vtype} at offset {c.pos} ({what})")


@dataclass
class GGUFFile:
    """One parsed GGUF file (one part of a split set)."""

    path: str
    version: int
    kvs: list[KV]
    tensors: list[TensorInfo]
    alignment: int
    data_offset: int
    mm: np.memmap


def read_gguf_file(path: str | os.PathLike[str], part: int = 0, flavour: str = MAINLINE) -> GGUFFile:
    """Parse one GGUF file's header; tensor data stays memory-mapped read-only."""
    p = str(path)
    if not os.path.exists(p):
        raise GGUFError(f"{p}: no such file")
    if os.path.isdir(p):
        raise GGUFError(f"{p}: is a directory, not a GGUF file")
    size = os.path.getsize(p)
    if size < 24:
        raise GGUFError(f"{p}: not a GGUF file (only {size} bytes)")
    mm = np.memmap(p, dtype=np.uint8, mode="r")
    c = _Cursor(memoryview(mm), p)
    magic = bytes(c.take(4, "magic"))
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{p}: not a GGUF file (magic {magic!r} at offset 0, expected b'GGUF')")
    version = c.scalar("<I", "version")
    if version not in (2, 3):
        raise GGUFError(f"{p}: unsupported GGUF version {version} at offset 4 (qtool reads 2 and 3)")
    n_tensors = c.scalar("<Q", "tensor count")
    n_kv = c.scalar("<Q", "key/value count")
    need = n_tensors * _MIN_TENSOR_INFO + n_kv * _MIN_KV
    if need > size - c.pos:
        raise GGUFError(f"{p}: truncated or corrupt header: {n_tensors} tensors and {n_kv} keys need at least "
                        f"{need} bytes after offset {c.pos}, the file has {size - c.pos}")
    kvs: list[KV] = []
    seen: set[str] = set()
    for i in range(n_kv):
        start = c.pos
        key = c.string(f"key #{i}", strict=True)
        if not key:
            raise GGUFError(f"{p}: key #{i} at offset {start} is empty")
        vtype = c.scalar("<I", f"type of {key!r}")
        value, atype = _read_value(c, vtype, f"value of {key!r}")
        if key in seen:
            raise GGUFError(f"{p}: duplicate key {key!r} at offset {start}")
        seen.add(key)
        kvs.append(KV(key, vtype, value, bytes(c.buf[start:c.pos]), atype))
    alignment = DEFAULT_ALIGNMENT
    for kv in kvs:
        if kv.key == "general.alignment":
            if kv.vtype != T_UINT32:
                raise GGUFError(f"{p}: general.alignment has value type {kv.vtype}, ggml requires uint32 ({T_UINT32})")
            alignment = int(kv.value)
            if alignment <= 0 or alignment & (alignment - 1):
                raise GGUFError(f"{p}: general.alignment {alignment} is not a power of two")
    infos: list[tuple[str, tuple[int, ...], int, int, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        at = c.pos
        name = c.string(f"tensor #{i} name", strict=True)
        if not name or len(name.encode()) >= GGML_MAX_NAME:
            raise GGUFError(f"{p}: tensor #{i} at offset {at}: name {name!r} is empty or longer than "
                            f"{GGML_MAX_NAME - 1} bytes")
        if name in names:
            raise GGUFError(f"{p}: tensor #{i} at offset {at}: duplicate tensor name {name!r}")
        names.add(name)
        n_dims = c.scalar("<I", f"n_dims of {name!r}")
        if n_dims > MAX_DIMS:
            raise GGUFError(f"{p}: tensor {name!r} at offset {at} has {n_dims} dimensions (max {MAX_DIMS})")
        shape = tuple(int(c.scalar("<q", f"shape of {name!r}")) for _ in range(n_dims))
        _check_shape(p, name, at, shape)
        type_id = c.scalar("<I", f"type of {name!r}")
        offset = c.scalar("<Q", f"offset of {name!r}")
        infos.append((name, shape, type_id, offset, at))
    data_offset = (c.pos + alignment - 1) // alignment * alignment
    if data_offset > size or any(bytes(c.buf[c.pos:data_offset])):
        raise GGUFError(f"{p}: corrupt header: the padding at offsets {c.pos}..{data_offset} before the tensor data "
                        "is not zero (wrong tensor or key count?)")
    tensors: list[TensorInfo] = []
    expected = 0
    for name, shape, type_id, offset, at in infos:
        try:
            qt = type_by_id(type_id, flavour)
        except KeyError:
            raise GGUFError(f"{p}: tensor {name!r} at offset {at} has unknown type id {type_id}") from None
        t = TensorInfo(name, shape if shape else (1,), type_id, data_offset + offset, part, qt)
        if t.n_per_row % qt.block_size:
            raise GGUFError(f"{p}: tensor {name!r} row length {t.n_per_row} is not a multiple of "
                            f"{qt.name}'s block size {qt.block_size}")
        if offset != expected:  # ggml (gguf_init_from_file_impl): tensors in order, each at the padded end of the last
            raise GGUFError(f"{p}: tensor {name!r} has data offset {offset}, expected {expected} (ggml requires "
                            f"tensor data in order, aligned to {alignment}, without gaps or overlaps)")
        end = t.offset + t.n_bytes
        if end > size:
            raise GGUFError(f"{p}: truncated: tensor {name!r} needs bytes {t.offset}..{end}, "
                            f"file has {size}")
        expected += (t.n_bytes + alignment - 1) // alignment * alignment
        tensors.append(t)
    if size - (data_offset + expected) >= alignment:
        raise GGUFError(f"{p}: {size - data_offset - expected} bytes after the last tensor's data at offset "
                        f"{data_offset + expected}: the header does not describe the whole file (wrong tensor count?)")
    return GGUFFile(p, version, kvs, tensors, alignment, data_offset, mm)


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
        n_split = first_kv_value(first.kvs, "split.count")
        if n_split and int(n_split) > 1:
            paths = split_paths(self.path)
            if len(paths) != int(n_split):
                raise GGUFError(f"{self.path}: split.count is {n_split} but the name does not follow "
                                f"the NAME-00001-of-0000N.gguf pattern")
            if Path(paths[0]).resolve() != Path(self.path).resolve():
                raise GGUFError(f"{self.path}: open the first part of a split set ({paths[0]})")
            for i, pp in enumerate(paths[1:], start=1):
                self.parts.append(read_gguf_file(pp, i, flavour))
        self.kvs: list[KV] = first.kvs
        self.tensors: list[TensorInfo] = [t for part in self.parts for t in part.tensors]
        self.alignment = first.alignment

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
                            f"{t.name!r} needs bytes {t.offset}..{t.offset + t.n_bytes}")

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


def first_kv_value(kvs: list[KV], key: str, default: Any = None) -> Any:
    for kv in kvs:
        if kv.key == key:
            return kv.value
    return default
