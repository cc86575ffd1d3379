"""The GGUF imatrix format of llama-imatrix, read and written byte for byte.

A GGUF imatrix (tools/imatrix/imatrix.cpp `save_imatrix`) is a GGUF v3 file with exactly these
key/value pairs, in this order: `general.type` = "imatrix" (string), `imatrix.datasets` (array of
strings), `imatrix.chunk_count` (u32), `imatrix.chunk_size` (u32); and for each entry, names
sorted bytewise, two F32 tensors: `<name>.in_sum2` with ne = (n_per_row, n_mat) (the raw sums of
squared activations) and `<name>.counts` with ne = (1, n_mat) (tokens seen per matrix, as float).
Trailing dimensions of size 1 are not written (ggml_n_dims), the alignment is 32, the tensor data
follow the tensor infos padded with zeros, each tensor padded to 32 bytes.

The `gguf` package's GGUFWriter cannot produce these bytes: it always writes a
`general.architecture` key first. This module writes the file itself.

Reading checks what ggml's gguf reader checks (magic, version 2 or 3, key and tensor counts,
string and array lengths against the bytes left, duplicate keys and tensor names, names shorter
than 64 bytes, at most 4 dimensions, known tensor types, contiguous aligned offsets, the data
section inside the file) and what common_imatrix_load needs (each `.in_sum2` has its `.counts`
and both are F32), and more: a file whose `general.type` is not "imatrix" or that has no imatrix
tensors is refused as a model, sums and counts must be finite, counts non-negative, the sums must
split into the counts' matrices. Counts are rounded with lround, as llama.cpp does.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from .data import (
    ImatrixData,
    ImatrixEntry,
    ImatrixError,
    Warn,
    atomic_write,
    default_warn,
    name_bytes,
    name_str,
    sorted_names,
)

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32
GGML_MAX_NAME = 64
GGML_MAX_DIMS = 4
GGUF_MAX_ARRAY_ELEMENTS = 1024 * 1024 * 1024
F32 = 0
KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUFFIX_SUMS = ".in_sum2"
SUFFIX_COUNTS = ".counts"

T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY, T_UINT64, T_INT64, \
    T_FLOAT64 = range(13)
_SCALAR = {T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h", T_UINT32: "<I", T_INT32: "<i",
           T_FLOAT32: "<f", T_BOOL: "<?", T_UINT64: "<Q", T_INT64: "<q", T_FLOAT64: "<d"}
_TYPE_NAME = {T_UINT8: "u8", T_INT8: "i8", T_UINT16: "u16", T_INT16: "i16", T_UINT32: "u32", T_INT32: "i32",
              T_FLOAT32: "f32", T_BOOL: "bool", T_STRING: "str", T_ARRAY: "arr", T_UINT64: "u64", T_INT64: "i64",
              T_FLOAT64: "f64"}
_TYPE_SIZES = {int(t): v for t, v in GGML_QUANT_SIZES.items()}


def _pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


class _Cursor:
    def __init__(self, mv: memoryview, source: str) -> None:
        self.mv, self.source, self.pos, self.size = mv, source, 0, len(mv)

    def fail(self, msg: str, at: int | None = None) -> ImatrixError:
        return ImatrixError(f"{self.source}: {msg} at offset {self.pos if at is None else at}")

    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n > self.left():
            raise self.fail(f"truncated (file size {self.size}): {what} needs {n} bytes, {self.left()} left")
        b = self.mv[self.pos:self.pos + n]
        self.pos += n
        return b

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(n, what))[0]

    def string(self, what: str) -> str:
        at = self.pos
        n = self.scalar("<Q", f"the length of {what}")
        if n > self.left():
            raise self.fail(f"{what}: string length {n} exceeds the {self.left()} bytes left", at)
        return name_str(bytes(self.take(n, what)))


def _read_value(c: _Cursor, vtype: int, key: str) -> tuple[Any, int | None]:
    if vtype == T_STRING:
        return c.string(f"the value of {key!r}"), None
    if vtype in _SCALAR:
        return c.scalar(_SCALAR[vtype], f"the value of {key!r}"), None
    if vtype == T_ARRAY:
        at = c.pos
        atype = c.scalar("<I", f"the array type of {key!r}")
        n = c.scalar("<Q", f"the array length of {key!r}")
        if atype == T_STRING:
            elem = 8
        elif atype in _SCALAR:
            elem = struct.calcsize(_SCALAR[atype])
        else:
            raise c.fail(f"key {key!r}: invalid array element type {atype}", at)
        if n > GGUF_MAX_ARRAY_ELEMENTS or n * elem > c.left():
            raise c.fail(f"key {key!r}: array of {n} elements does not fit in the {c.left()} bytes left", at)
        if atype == T_STRING:
            return [c.string(f"element {i} of {key!r}") for i in range(n)], atype
        fmt = _SCALAR[atype]
        raw = c.take(n * elem, f"the array {key!r}")
        return list(np.frombuffer(raw, dtype=np.dtype(fmt.replace("?", "b1")), count=n)), atype
    raise c.fail(f"key {key!r} has invalid GGUF type {vtype}")


def decode_gguf(buf: bytes | memoryview, source: str = "<bytes>") -> ImatrixData:
    """Parse a GGUF imatrix from bytes (see the module docstring for what is checked)."""
    mv = memoryview(buf).cast("B")
    c = _Cursor(mv, source)
    if bytes(mv[:4]) != GGUF_MAGIC:
        raise ImatrixError(f"{source}: no GGUF magic at offset 0 (found {bytes(mv[:4])!r})")
    c.pos = 4
    version = c.scalar("<I", "the GGUF version")
    if version == 0 or (version & 0xFFFF) == 0 or version == 1 or version > GGUF_VERSION:
        raise c.fail(f"unsupported GGUF version {version}", 4)
    n_tensors = c.scalar("<q", "the tensor count")
    n_kv = c.scalar("<q", "the key/value count")
    if n_tensors < 0:
        raise c.fail(f"bad tensor count {n_tensors}", 8)
    if n_tensors > c.left() // 29:  # name length, 1-byte name, n_dims, ne0, type, offset
        raise c.fail(f"truncated or corrupt: {n_tensors} tensors cannot fit in the {c.left()} bytes left", 8)
    if n_kv < 0:
        raise c.fail(f"bad key/value count {n_kv}", 16)
    if n_kv > c.left() // 13:  # key length, 1-byte key, type, 1-byte value
        raise c.fail(f"truncated or corrupt: {n_kv} key/value pairs cannot fit in the {c.left()} bytes left", 16)

    kv: dict[str, tuple[int, Any, int | None]] = {}
    for i in range(n_kv):
        at = c.pos
        key = c.string(f"key {i}")
        if not key:
            raise c.fail(f"key {i} is empty", at)
        if key in kv:
            raise c.fail(f"duplicate key {key!r}", at)
        vtype = c.scalar("<I", f"the type of {key!r}")
        value, atype = _read_value(c, vtype, key)
        kv[key] = (vtype, value, atype)

    alignment = ALIGNMENT
    if "general.alignment" in kv:
        vt, v, _ = kv["general.alignment"]
        if vt != T_UINT32 or v == 0 or (v & (v - 1)):
            raise ImatrixError(f"{source}: general.alignment must be a power of 2 (u32), got {v!r}")
        alignment = int(v)

    gtype = kv.get(KEY_TYPE)
    if gtype is not None and (gtype[0] != T_STRING or gtype[1] != "imatrix"):
        arch = kv.get("general.architecture", (None, None, None))[1]
        raise ImatrixError(f"{source}: a GGUF {gtype[1]!r} file (general.type), not an imatrix"
                           + (f" (architecture {arch})" if arch else ""))

    infos: list[tuple[str, tuple[int, ...], int, int, int]] = []  # name, ne, type, offset, nbytes
    seen: set[str] = set()
    for i in range(n_tensors):
        at = c.pos
        name = c.string(f"the name of tensor {i}")
        if len(name_bytes(name)) >= GGML_MAX_NAME:
            raise c.fail(f"tensor {i} name {name!r} is {len(name_bytes(name))} bytes (must be < {GGML_MAX_NAME})", at)
        if name in seen:
            raise c.fail(f"duplicate tensor name {name!r}", at)
        seen.add(name)
        at = c.pos
        n_dims = c.scalar("<I", f"the dimension count of {name!r}")
        if n_dims > GGML_MAX_DIMS:
            raise c.fail(f"tensor {name!r} has {n_dims} dimensions (at most {GGML_MAX_DIMS})", at)
        ne = [1] * GGML_MAX_DIMS
        for j in range(n_dims):
            at = c.pos
            ne[j] = c.scalar("<q", f"dimension {j} of {name!r}")
            if ne[j] < 0:
                raise c.fail(f"tensor {name!r} dimension {j} is negative ({ne[j]})", at)
        n_el = 1
        for d in ne:
            n_el *= d
        if n_el > 2**62:
            raise c.fail(f"tensor {name!r} shape {tuple(ne)} is too large", at)
        at = c.pos
        ttype = c.scalar("<i", f"the type of {name!r}")
        if ttype not in _TYPE_SIZES:
            raise c.fail(f"tensor {name!r} has invalid ggml type {ttype}", at)
        blck, tsize = _TYPE_SIZES[ttype]
        if ne[0] % blck:
            raise c.fail(f"tensor {name!r}: {ne[0]} elements per row is not a multiple of the block size {blck}", at)
        offset = c.scalar("<Q", f"the data offset of {name!r}")
        infos.append((name, tuple(ne), ttype, offset, n_el // blck * tsize))

    data_start = _pad(c.pos, alignment) if n_tensors > 0 else c.pos
    total = 0
    for name, _ne, _t, offset, nbytes in infos:
        if offset != total:
            raise ImatrixError(f"{source}: tensor {name!r} has data offset {offset}, expected {total}")
        total += _pad(nbytes, alignment)
    if data_start + total > c.size:
        raise ImatrixError(f"{source}: truncated: the tensor data end at offset {data_start + total}, "
                           f"the file has {c.size} bytes")

    by_base: dict[str, list[tuple[str, tuple[int, ...], int, int, int] | None]] = {}
    for info in infos:
        name = info[0]
        for k, suffix in enumerate((SUFFIX_SUMS, SUFFIX_COUNTS)):
            if name.endswith(suffix):
                base = name[: -len(suffix)]
                if not base:
                    raise ImatrixError(f"{source}: tensor {name!r} has an empty entry name")
                by_base.setdefault(base, [None, None])[k] = info
    if not by_base:
        arch = kv.get("general.architecture", (None, None, None))[1]
        what = f"a GGUF model (architecture {arch}, {n_tensors} tensors)" if arch else \
            f"a GGUF file with {n_tensors} tensors and no <name>.in_sum2 / <name>.counts pair"
        raise ImatrixError(f"{source}: {what}, not an imatrix")

    entries: dict[str, ImatrixEntry] = {}
    for base in sorted_names(by_base):
        s_info, c_info = by_base[base]
        if s_info is None or c_info is None:
            have, miss = (SUFFIX_SUMS, SUFFIX_COUNTS) if c_info is None else (SUFFIX_COUNTS, SUFFIX_SUMS)
            raise ImatrixError(f"{source}: tensor {base + have!r} has no matching {base + miss!r} "
                               "(sums and counts come in pairs)")
        for info in (s_info, c_info):
            if info[2] != F32:
                raise ImatrixError(f"{source}: tensor {info[0]!r} must be F32, "
                                   f"not {GGMLQuantizationType(info[2]).name}")
        nval = s_info[4] // 4
        ncounts = c_info[4] // 4
        if nval < 1 or ncounts < 1 or nval % ncounts:
            raise ImatrixError(f"{source}: entry {base!r}: {nval} sums do not split into {ncounts} matrices "
                               f"(tensors {s_info[0]!r}, {c_info[0]!r})")
        s_off = data_start + s_info[3]
        sums = np.frombuffer(mv, dtype="<f4", count=nval, offset=s_off)
        bad = ~np.isfinite(sums)
        if bad.any():
            k = int(np.argmax(bad))
            raise ImatrixError(f"{source}: tensor {s_info[0]!r}: non-finite value {float(sums[k])} "
                               f"at offset {s_off + 4 * k} (element {k})")
        c_off = data_start + c_info[3]
        cnt = np.frombuffer(mv, dtype="<f4", count=ncounts, offset=c_off).astype(np.float64)
        bad = ~np.isfinite(cnt) | (cnt < 0) | (cnt > 2.0**62)
        if bad.any():
            k = int(np.argmax(bad))
            raise ImatrixError(f"{source}: tensor {c_info[0]!r}: invalid count {cnt[k]} at offset {c_off + 4 * k} "
                               "(counts are non-negative token counts)")
        counts = np.trunc(cnt + 0.5).astype(np.int64)  # lround; counts are >= 0
        entries[base] = ImatrixEntry(sums.astype(np.float32).reshape(ncounts, nval // ncounts), counts)

    datasets: list[str] = []
    if KEY_DATASETS in kv:
        vt, v, at_ = kv[KEY_DATASETS]
        if vt != T_ARRAY or at_ != T_STRING:
            raise ImatrixError(f"{source}: {KEY_DATASETS} must be an array of strings")
        datasets = list(v)
    meta: dict[str, int] = {}
    for key in (KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
        if key in kv:
            vt, v, _ = kv[key]
            if vt != T_UINT32:
                raise ImatrixError(f"{source}: {key} must be u32, not {_TYPE_NAME.get(vt, vt)}")
            meta[key] = int(v)
    has_metadata = KEY_DATASETS in kv and KEY_CHUNK_COUNT in kv and KEY_CHUNK_SIZE in kv
    return ImatrixData(entries, datasets, meta.get(KEY_CHUNK_COUNT, 0), meta.get(KEY_CHUNK_SIZE, 0),
                       legacy=False, has_metadata=has_metadata, source=source)


def read_gguf(path: str | os.PathLike[str]) -> ImatrixData:
    """Read a GGUF imatrix file (read whole: the decoded arrays are copies, and a memory map could
    not be closed while an error's traceback still holds a view of it)."""
    src = os.fspath(path)
    with open(src, "rb") as f:
        return decode_gguf(f.read(), src)


def _str(s: str | bytes) -> bytes:
    b = s if isinstance(s, bytes) else name_bytes(s)
    return struct.pack("<Q", len(b)) + b


def _n_dims(ne: tuple[int, ...]) -> int:
    """ggml_n_dims: dimensions up to the last one larger than 1 (at least 1)."""
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def dump_gguf(data: ImatrixData, f: BinaryIO, warn: Warn | None = None) -> None:
    """Write the collected form of `data` as llama-imatrix's save_imatrix does."""
    warn = default_warn if warn is None else warn
    if data.legacy:
        raise ImatrixError("a legacy (.dat) imatrix must be combined first (qtool.imatrix.combine) to get "
                           "raw sums and counts for a GGUF file")
    for name, e in data.entries.items():
        n_zeros = int(np.count_nonzero(e.counts == 0))
        if n_zeros:
            pct = np.float32(100.0) * np.float32(e.n_mat - n_zeros) / np.float32(e.n_mat)
            warn(f"save_imatrix: entry '{name:>40}' has partial data ({float(pct):.2f}%)")
    names = [n for n in sorted_names(data.entries) if data.entries[n].nval > 0 and data.entries[n].n_mat > 0]
    if not names:
        raise ImatrixError("the imatrix has no entries; nothing to write")
    for key in ("chunk_count", "chunk_size"):
        v = int(getattr(data, key))
        if not 0 <= v < 2**32:
            raise ImatrixError(f"{key} {v} does not fit in u32")
    kvs = [
        _str(KEY_TYPE) + struct.pack("<I", T_STRING) + _str("imatrix"),
        _str(KEY_DATASETS) + struct.pack("<IIQ", T_ARRAY, T_STRING, len(data.datasets))
        + b"".join(_str(d) for d in data.datasets),
        _str(KEY_CHUNK_COUNT) + struct.pack("<II", T_UINT32, data.chunk_count),
        _str(KEY_CHUNK_SIZE) + struct.pack("<II", T_UINT32, data.chunk_size),
    ]
    infos = []
    blobs: list[np.ndarray] = []
    offset = 0
    for name in names:
        e = data.entries[name]
        for suffix, ne, arr in ((SUFFIX_SUMS, (e.n_per_row, e.n_mat, 1, 1), e.sums),
                                (SUFFIX_COUNTS, (1, e.n_mat, 1, 1), e.counts.astype(np.float32))):
            tname = name_bytes(name) + suffix.encode()
            if len(tname) >= GGML_MAX_NAME:
                raise ImatrixError(f"entry {name!r}: tensor name {name + suffix!r} is {len(tname)} bytes; GGUF "
                                   f"(ggml) names must be shorter than {GGML_MAX_NAME}")
            nd = _n_dims(ne)
            infos.append(_str(tname) + struct.pack(f"<I{nd}qiQ", nd, *ne[:nd], F32, offset))
            blobs.append(np.ascontiguousarray(arr, dtype="<f4"))
            offset += _pad(arr.size * 4, ALIGNMENT)
    head = GGUF_MAGIC + struct.pack("<Iqq", GGUF_VERSION, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    f.write(head + b"\0" * (_pad(len(head), ALIGNMENT) - len(head)))
    for arr in blobs:
        n = arr.size * 4
        f.write(arr.tobytes())
        f.write(b"\0" * (_pad(n, ALIGNMENT) - n))


def encode_gguf(data: ImatrixData, warn: Warn | None = None) -> bytes:
    """The bytes of `data` as a GGUF imatrix."""
    b = io.BytesIO()
    dump_gguf(data, b, warn)
    return b.getvalue()


def write_gguf(data: ImatrixData, path: str | os.PathLike[str], warn: Warn | None = None,
               inputs: Sequence[str | os.PathLike[str]] = ()) -> None:
    """Write a GGUF imatrix (temporary file in the target folder, renamed when complete)."""
    atomic_write(path, lambda f: dump_gguf(data, f, warn), inputs)
