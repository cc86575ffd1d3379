"""The GGUF format, once: value types, a bounds-checked cursor, the key/value codec, the header
with ggml's checks, tensor infos and padding.

Mirrors mainline ggml/src/gguf.cpp: `gguf_init_from_file_impl` (what a reader must refuse) and
`gguf_write_to_buf` (the byte layout: magic, version, tensor and key counts, key/value pairs,
tensor infos, padding to the alignment, each tensor's data padded to the alignment). Schemas build
on it: the model reader and streaming writer of this package, and the imatrix GGUF file
(qtool/imatrix/gguf_format.py). Every key/value pair keeps its raw bytes, so a writer copies it
unchanged, as llama-quantize's gguf_set_kv does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf.constants import GGUFValueType as ValueType

from ..errors import QtoolError
from ..quants.types import QType, type_by_id

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32
GGML_MAX_NAME = 64
GGML_MAX_DIMS = 4
INT64_MAX = (1 << 63) - 1

SCALAR_FMT: dict[int, str] = {  # keys are ValueType members
    ValueType.UINT8: "<B", ValueType.INT8: "<b", ValueType.UINT16: "<H", ValueType.INT16: "<h",
    ValueType.UINT32: "<I", ValueType.INT32: "<i", ValueType.FLOAT32: "<f", ValueType.BOOL: "<?",
    ValueType.UINT64: "<Q", ValueType.INT64: "<q", ValueType.FLOAT64: "<d"}
SCALAR_DTYPE: dict[int, np.dtype[Any]] = {t: np.dtype(f) for t, f in SCALAR_FMT.items()}
TYPE_NAME: dict[int, str] = {
    ValueType.UINT8: "u8", ValueType.INT8: "i8", ValueType.UINT16: "u16", ValueType.INT16: "i16",
    ValueType.UINT32: "u32", ValueType.INT32: "i32", ValueType.FLOAT32: "f32", ValueType.BOOL: "bool",
    ValueType.STRING: "str", ValueType.ARRAY: "arr", ValueType.UINT64: "u64", ValueType.INT64: "i64",
    ValueType.FLOAT64: "f64"}
_SCALAR: dict[int, struct.Struct] = {t: struct.Struct(f) for t, f in SCALAR_FMT.items()}
_U32, _I32, _U64, _I64 = (struct.Struct(f) for f in ("<I", "<i", "<Q", "<q"))
# the smallest tensor info (8-byte length, 1-byte name, n_dims, no dims, type, offset) and
# key/value pair (8-byte length, 1-byte key, type, 1-byte value): bounds for the header's counts
_MIN_TENSOR_INFO = 8 + 1 + 4 + 4 + 8
_MIN_KV = 8 + 1 + 4 + 1


class GGUFError(QtoolError):
    """A file is not a readable GGUF file; the message says which file, what and where."""


def pad(n: int, alignment: int) -> int:
    """n rounded up to a multiple of the alignment (GGML_PAD)."""
    return (n + alignment - 1) // alignment * alignment


def padding(n: int, alignment: int) -> bytes:
    """The zero bytes that follow n bytes up to the alignment."""
    return b"\0" * (pad(n, alignment) - n)


class Cursor:
    """Bounds-checked reading of a buffer, little-endian as GGUF.

    Errors are `error("<source>: <what went wrong> at offset N")`. Invalid UTF-8 in keys and tensor
    names is decoded with `name_errors`, in string values with `value_errors` ("strict": an error;
    ggml keeps the bytes, so "replace" or "surrogateescape" read on).
    """

    def __init__(self, buf: bytes | memoryview, source: str, error: type[QtoolError] = GGUFError,
                 name_errors: str = "strict", value_errors: str = "replace") -> None:
        self.buf = memoryview(buf).cast("B")
        self.size = len(self.buf)
        self.pos = 0
        self.source, self.error = source, error
        self.name_errors, self.value_errors = name_errors, value_errors

    def err(self, msg: str) -> QtoolError:
        return self.error(f"{self.source}: {msg}", path=self.source)

    def fail(self, msg: str, at: int | None = None) -> QtoolError:
        return self.err(f"{msg} at offset {self.pos if at is None else at}")

    @property
    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.left:
            raise self.fail(f"truncated (file size {self.size}): {what} needs {n} bytes, {self.left} left")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, st: struct.Struct, what: str) -> Any:
        return st.unpack_from(self.take(st.size, what))[0]

    def u32(self, what: str) -> int:
        return int(self.unpack(_U32, what))

    def i32(self, what: str) -> int:
        return int(self.unpack(_I32, what))

    def u64(self, what: str) -> int:
        return int(self.unpack(_U64, what))

    def i64(self, what: str) -> int:
        return int(self.unpack(_I64, what))

    def string(self, what: str, errors: str = "strict") -> str:
        """A u64-length-prefixed string."""
        at = self.pos
        n = self.u64(f"the length of {what}")
        if n > self.left:
            raise self.fail(f"truncated or corrupt: {what}: string length {n} exceeds the {self.left} bytes left", at)
        raw = self.take(n, what)
        try:
            return str(raw, "utf-8", errors)
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8", at) from None

    def value(self, vtype: int, key: str) -> tuple[Any, ValueType | None]:
        """The value of `key` (type already read): (value, array element type or None).
        Arrays of numbers are numpy arrays, arrays of strings lists."""
        what = f"the value of {key!r}"
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype], what), None
        if vtype == ValueType.STRING:
            return self.string(what, self.value_errors), None
        if vtype != ValueType.ARRAY:
            raise self.fail(f"key {key!r} has invalid GGUF type {vtype}")
        at = self.pos
        atype = self.u32(f"the array type of {key!r}")
        n = self.u64(f"the array length of {key!r}")
        if atype in SCALAR_DTYPE:
            item = SCALAR_DTYPE[atype].itemsize
        elif atype == ValueType.STRING:
            item = 8  # at least its length
        else:
            raise self.fail(f"key {key!r}: invalid array element type {atype}", at)
        if n * item > self.left:
            raise self.err(f"truncated at offset {at} while reading key {key!r}: array of {n} elements does not fit "
                           f"in the {self.left} bytes left")
        if atype == ValueType.STRING:
            return self._strings(n, what), ValueType.STRING
        return np.frombuffer(self.take(n * item, what), dtype=SCALAR_DTYPE[atype]).copy(), ValueType(atype)

    def _strings(self, n: int, what: str) -> list[str]:
        """n strings: the tokenizer's vocabulary is ~100k of them, so this is the header's hot loop;
        an irregular item (invalid UTF-8, a bad length) goes through `string` for its error."""
        buf, pos, end = self.buf, self.pos, self.size
        out: list[str] = []
        append = out.append
        unpack = _U64.unpack_from
        try:
            for _ in range(n):
                if pos + 8 > end:
                    break
                ln = unpack(buf, pos)[0]
                stop = pos + 8 + ln
                if stop > end:
                    break
                append(str(buf[pos + 8:stop], "utf-8"))
                pos = stop
        except UnicodeDecodeError:
            pass
        self.pos = pos
        while len(out) < n:
            out.append(self.string(f"element {len(out)} of {what}", self.value_errors))
        return out


@dataclass
class KV:
    """One key/value pair: parsed value plus the raw bytes of the whole entry."""

    key: str
    vtype: ValueType
    value: Any
    raw: bytes
    atype: ValueType | None = None  # element type for arrays


def read_kvs(c: Cursor, n: int) -> list[KV]:
    """n key/value pairs: ggml refuses empty and duplicate keys."""
    kvs: list[KV] = []
    seen: set[str] = set()
    for i in range(n):
        start = c.pos
        key = c.string(f"key {i}", c.name_errors)
        if not key:
            raise c.fail(f"key {i} is empty", start)
        if key in seen:
            raise c.fail(f"duplicate key {key!r}", start)
        seen.add(key)
        vtype = c.u32(f"the type of {key!r}")
        value, atype = c.value(vtype, key)
        kvs.append(KV(key, ValueType(vtype), value, bytes(c.buf[start:c.pos]), atype))
    return kvs


def encode_str(s: str | bytes) -> bytes:
    """A GGUF string: u64 length and the bytes (names read with surrogate escapes round-trip)."""
    b = s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")
    return _U64.pack(len(b)) + b


def make_kv(key: str, vtype: int, value: Any, atype: int | None = None) -> KV:
    """A key/value pair with its serialized bytes; arrays are `value` items of type `atype`."""
    vt = ValueType(vtype)
    out = encode_str(key) + _U32.pack(vt)
    if vt in SCALAR_FMT:
        out += _SCALAR[vt].pack(value)
    elif vt == ValueType.STRING:
        out += encode_str(value if isinstance(value, bytes) else str(value))
    else:
        if atype is None:
            raise ValueError(f"{key}: an array needs its element type")
        at = ValueType(atype)
        out += _U32.pack(at) + _U64.pack(len(value))
        if at == ValueType.STRING:
            out += b"".join(encode_str(s) for s in value)
        else:
            out += np.asarray(value, dtype=SCALAR_DTYPE[at]).tobytes()
        return KV(key, vt, value, out, at)
    return KV(key, vt, value, out)


def kv_u32(key: str, v: int) -> KV:
    return make_kv(key, ValueType.UINT32, int(v))


def kv_u16(key: str, v: int) -> KV:
    return make_kv(key, ValueType.UINT16, int(v))


def kv_i32(key: str, v: int) -> KV:
    return make_kv(key, ValueType.INT32, int(v))


def kv_str(key: str, v: str) -> KV:
    return make_kv(key, ValueType.STRING, v)


def kv_f32(key: str, v: float) -> KV:
    return make_kv(key, ValueType.FLOAT32, float(v))


def first_kv_value(kvs: Sequence[KV], key: str, default: Any = None) -> Any:
    for kv in kvs:
        if kv.key == key:
            return kv.value
    return default


# ---------------------------------------------------------------- tensor infos and the header

def tensor_bytes(qtype: QType, shape: Sequence[int]) -> int:
    """The data bytes of a tensor: rows of shape[0] values times the other dimensions."""
    n_rows = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    return qtype.row_bytes(shape[0]) * n_rows


def n_dims(shape: Sequence[int]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 are not written."""
    for i in range(len(shape) - 1, 0, -1):
        if shape[i] > 1:
            return i + 1
    return 1


def tensor_info_bytes(name: str | bytes, shape: Sequence[int], type_id: int, offset: int) -> bytes:
    """A tensor info: name, n_dims, ne[0..n_dims), type, offset from the start of the data."""
    nd = n_dims(shape)
    return encode_str(name) + struct.pack(f"<I{nd}QIQ", nd, *shape[:nd], type_id, offset)


def header_bytes(kvs: Sequence[KV], tensors: Sequence[tuple[str | bytes, Sequence[int], int, int]],
                 alignment: int = DEFAULT_ALIGNMENT, version: int = GGUF_VERSION) -> bytes:
    """Magic, counts, the KVs' raw bytes and the infos of `tensors` (name, shape, type id, data
    bytes), each tensor's data at the padded end of the last, padded to the alignment."""
    parts = [GGUF_MAGIC, struct.pack("<IQQ", version, len(tensors), len(kvs))]
    parts += [kv.raw for kv in kvs]
    offset = 0
    for name, shape, type_id, nbytes in tensors:
        parts.append(tensor_info_bytes(name, shape, type_id, offset))
        offset += pad(nbytes, alignment)
    h = b"".join(parts)
    return h + padding(len(h), alignment)


@dataclass
class TensorInfo:
    """A tensor of a GGUF file (`part` of a split set). shape is ggml's ne order: shape[0] = row length."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int  # absolute offset in its file
    part: int = 0
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
        return tensor_bytes(self.qtype, self.shape)


@dataclass
class Header:
    """A parsed header: KVs, tensors, alignment, where the infos end and the data start."""

    version: int
    kvs: list[KV]
    tensors: list[TensorInfo]
    alignment: int
    info_end: int
    data_offset: int
    data_size: int  # the tensors' data, each padded to the alignment


def check_shape(c: Cursor, name: str, shape: tuple[int, ...], at: int) -> None:
    """ggml's checks of a tensor's ne: no negative dimension and no int64 overflow of the element
    count; qtool also refuses empty tensors (a zero dimension), which no model has."""
    n = 1
    for d in shape:
        if d < 0:
            raise c.err(f"tensor {name!r} at offset {at} has a negative dimension in shape {list(shape)}")
        if d == 0:
            raise c.err(f"tensor {name!r} at offset {at} has a zero dimension in shape {list(shape)}")
        if n > INT64_MAX // d:
            raise c.err(f"tensor {name!r} at offset {at}: shape {list(shape)} overflows int64")
        n *= d


ShapeCheck = Callable[[Cursor, str, tuple[int, ...], int], None]


def read_header(c: Cursor, type_of: Callable[[int], QType] = type_by_id, shape_check: ShapeCheck = check_shape,
                part: int = 0) -> Header:
    """Everything up to the tensor data, with gguf_init_from_file_impl's checks: magic, version
    2 or 3, counts that fit the file, keys (non-empty, unique), general.alignment (a u32 power of
    two), tensor names (unique, shorter than GGML_MAX_NAME), at most GGML_MAX_DIMS dimensions
    (`shape_check`), known types (`type_of` raises KeyError for others), rows of whole blocks, data offsets in
    order at the padded end of the last tensor, and every tensor's data inside the file."""
    magic = bytes(c.take(4, "the magic"))
    if magic != GGUF_MAGIC:
        raise c.err(f"not a GGUF file (magic {magic!r} at offset 0, expected {GGUF_MAGIC!r})")
    version = c.u32("the GGUF version")
    if version not in (2, 3):
        raise c.err(f"unsupported GGUF version {version} at offset 4 (qtool reads 2 and 3)")
    n_tensors = c.i64("the tensor count")
    n_kv = c.i64("the key/value count")
    for n, what, at, least in ((n_tensors, "tensor", 8, _MIN_TENSOR_INFO), (n_kv, "key/value", 16, _MIN_KV)):
        if n < 0:
            raise c.fail(f"bad {what} count {n}", at)
        if n > c.left // least:
            raise c.fail(f"truncated or corrupt: {n} {'tensors' if what == 'tensor' else 'key/value pairs'} "
                         f"cannot fit in the {c.left} bytes left", at)
    kvs = read_kvs(c, n_kv)
    alignment = DEFAULT_ALIGNMENT
    for kv in kvs:
        if kv.key == "general.alignment":
            v = kv.value
            if kv.vtype != ValueType.UINT32 or v == 0 or v & (v - 1):
                got = repr(v) if kv.vtype == ValueType.UINT32 else f"{v!r} ({TYPE_NAME[kv.vtype]})"
                raise c.err(f"general.alignment must be a power of 2 (u32), got {got}")
            alignment = int(v)
    tensors: list[TensorInfo] = []
    names: set[str] = set()
    expected = 0
    for i in range(n_tensors):
        at = c.pos
        name = c.string(f"the name of tensor {i}", c.name_errors)
        nb = len(name.encode("utf-8", "surrogateescape"))
        if not name:
            raise c.fail(f"tensor {i} has an empty name", at)
        if nb >= GGML_MAX_NAME:
            raise c.fail(f"tensor {i} name {name!r} is {nb} bytes (must be < {GGML_MAX_NAME})", at)
        if name in names:
            raise c.fail(f"duplicate tensor name {name!r}", at)
        names.add(name)
        nd_at = c.pos
        nd = c.u32(f"the dimension count of {name!r}")
        if nd > GGML_MAX_DIMS:
            raise c.fail(f"tensor {name!r} has {nd} dimensions (at most {GGML_MAX_DIMS})", nd_at)
        shape = tuple(c.i64(f"dimension {j} of {name!r}") for j in range(nd))
        shape_check(c, name, shape, at)
        type_at = c.pos
        type_id = c.u32(f"the type of {name!r}")
        try:
            qt = type_of(type_id)
        except KeyError:
            raise c.fail(f"tensor {name!r} has invalid ggml type {type_id}", type_at) from None
        shape = shape or (1,)
        if shape[0] % qt.block_size:
            raise c.fail(f"tensor {name!r}: {shape[0]} elements per row is not a multiple of the block size "
                         f"{qt.block_size} of {qt.name}", type_at)
        offset = c.u64(f"the data offset of {name!r}")
        if offset != expected:
            raise c.err(f"tensor {name!r} has data offset {offset}, expected {expected} (ggml requires tensor data "
                        f"in order, aligned to {alignment}, without gaps or overlaps)")
        t = TensorInfo(name, shape, type_id, offset, part, qt)
        expected += pad(t.n_bytes, alignment)
        tensors.append(t)
    data_offset = pad(c.pos, alignment)
    for t in tensors:  # as llama_model_loader: each tensor's data inside the file (padding may be cut)
        t.offset += data_offset
        if t.offset + t.n_bytes > c.size:
            raise c.err(f"truncated: the tensor data end at offset {data_offset + expected}, the file has {c.size} "
                        f"bytes (tensor {t.name!r} needs bytes {t.offset}..{t.offset + t.n_bytes})")
    return Header(version, kvs, tensors, alignment, c.pos, data_offset, expected)
