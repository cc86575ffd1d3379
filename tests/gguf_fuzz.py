"""Structure-aware mutation of GGUF files, for the fuzz tests.

`fields(buf)` walks a GGUF file's header and returns every structural field with its byte
offset and size (counts, key and name strings, value types, array lengths, tensor n_dims, dims,
type ids, data offsets). `mutations(buf, rng)` yields (description, mutated bytes): boundary
values in every numeric field, invalid UTF-8 and duplicated names in strings, counts one off,
truncation at every field boundary, and random byte flips. The mutator knows the format but
not qtool's reader, so it also makes files that are valid (and must then be processed).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


@dataclass(frozen=True)
class Field:
    offset: int
    size: int
    kind: str  # count | str_len | str | vtype | value | atype | alen | ndims | dim | ttype | toffset
    what: str


def fields(buf: bytes) -> list[Field]:
    """Every header field of a well-formed GGUF file (raises on a malformed one)."""
    out: list[Field] = []
    pos = 8
    n_t, n_kv = struct.unpack_from("<QQ", buf, pos)
    out += [Field(8, 8, "count", "tensor count"), Field(16, 8, "count", "kv count")]
    pos = 24

    def string(what: str) -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        out.append(Field(pos, 8, "str_len", what))
        out.append(Field(pos + 8, n, "str", what))
        s = buf[pos + 8:pos + 8 + n].decode("utf-8", "replace")
        pos += 8 + n
        return s

    for i in range(n_kv):
        key = string(f"key #{i}")
        (vt,) = struct.unpack_from("<I", buf, pos)
        out.append(Field(pos, 4, "vtype", key))
        pos += 4
        if vt in _SCALAR_SIZE:
            out.append(Field(pos, _SCALAR_SIZE[vt], "value", key))
            pos += _SCALAR_SIZE[vt]
        elif vt == 8:
            string(key + " value")
        elif vt == 9:
            at, n = struct.unpack_from("<IQ", buf, pos)
            out += [Field(pos, 4, "atype", key), Field(pos + 4, 8, "alen", key)]
            pos += 12
            if at == 8:
                for j in range(n):
                    string(f"{key}[{j}]")
            else:
                pos += _SCALAR_SIZE[at] * n
    for i in range(n_t):
        name = string(f"tensor #{i} name")
        (nd,) = struct.unpack_from("<I", buf, pos)
        out.append(Field(pos, 4, "ndims", name))
        pos += 4
        for d in range(nd):
            out.append(Field(pos, 8, "dim", f"{name} ne{d}"))
            pos += 8
        out += [Field(pos, 4, "ttype", name), Field(pos + 4, 8, "toffset", name)]
        pos += 12
    return out


def _put(buf: bytes, f: Field, value: int) -> bytes:
    fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[f.size]
    v = value % (1 << (8 * f.size))
    return buf[:f.offset] + struct.pack(fmt, v) + buf[f.offset + f.size:]


def _get(buf: bytes, f: Field) -> int:
    fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[f.size]
    return int(struct.unpack_from(fmt, buf, f.offset)[0])


_BOUNDARY = (0, 1, 2, 3, 7, 13, 255, 256, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63,
             2**64 - 1)


def mutations(buf: bytes, rng: np.random.Generator, n_random: int = 0) -> Iterator[tuple[str, bytes]]:
    """Mutants of buf: deterministic structural ones first, then n_random random ones."""
    fs = fields(buf)
    numeric = [f for f in fs if f.kind not in ("str",) and f.size in (1, 2, 4, 8)]
    for f in numeric:
        v = _get(buf, f)
        cands = {v - 1, v + 1, 2 * v} | {b for b in _BOUNDARY if b < (1 << (8 * f.size))}
        if f.kind == "toffset":
            cands |= {v + 1, v + 16, v - 32, v + 32}
        if f.kind in ("vtype", "atype"):
            cands |= set(range(14))
        if f.kind == "ttype":
            cands |= {0, 1, 2, 8, 12, 14, 15, 20, 31, 39, 41, 133, 139, 159, 200}
        for c in sorted(x for x in cands if x >= 0):
            if c != v:
                yield f"{f.what}: {f.kind} {v} -> {c}", _put(buf, f, c)
    names = [f for f in fs if f.kind == "str" and f.what.startswith("tensor #")]
    strings = [f for f in fs if f.kind == "str" and f.size > 0]
    for f in strings:
        yield f"{f.what}: invalid UTF-8", buf[:f.offset] + b"\xff" + buf[f.offset + 1:]
    for a, b in zip(names, names[1:], strict=False):  # a duplicated tensor name (same length only)
        if a.size == b.size:
            dup = buf[:b.offset] + buf[a.offset:a.offset + a.size] + buf[b.offset + b.size:]
            yield f"{b.what}: duplicate of {a.what}", dup
    cuts = sorted({f.offset for f in fs} | {f.offset + f.size for f in fs} | {0, 4, 8, 30, len(buf) - 1})
    for c in cuts:
        if 0 <= c < len(buf):
            yield f"truncated at {c}", buf[:c]
    yield "one tensor fewer in the count", _put(buf, fs[0], _get(buf, fs[0]) - 1)
    yield "one kv fewer in the count", _put(buf, fs[1], _get(buf, fs[1]) - 1)
    yield "appended garbage", buf + bytes(rng.integers(0, 256, 100, dtype=np.uint8))
    arr = np.frombuffer(buf, dtype=np.uint8)
    hdr_end = max(f.offset + f.size for f in fs)
    for k in range(n_random):
        m = arr.copy()
        n_flip = int(rng.integers(1, 5))
        where = rng.integers(0, hdr_end if k % 2 == 0 else len(buf), n_flip)
        m[where] = rng.integers(0, 256, n_flip, dtype=np.uint8)
        yield f"random bytes #{k} at {where.tolist()}", m.tobytes()
