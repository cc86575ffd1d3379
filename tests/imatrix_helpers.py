"""Helpers shared by the imatrix tests: reference files, and imatrix files built without qtool.

`dat_bytes` / `parse_dat` and `gguf_bytes` / `imatrix_gguf` encode and parse both formats with
struct alone (independent of qtool.imatrix), so the tests can build well-formed and malformed
files and check qtool's reader against a second reading. tests/test_imatrix_helpers.py checks
those helpers against the files llama-imatrix wrote.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .refs import llama_bin

DATA = Path(__file__).parent / "data" / "imatrix"
LLAMA_IMATRIX = llama_bin("llama-imatrix") or Path("/nonexistent/QTOOL_LLAMA_BIN/llama-imatrix")

# GGUF value types
T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)
_FMT = {T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I", T_I32: "<i", T_F32: "<f", T_BOOL: "<?",
        T_U64: "<Q", T_I64: "<q", T_F64: "<d"}
F32, F16 = 0, 1


def ref(name: str) -> Path:
    return DATA / name


def ref_bytes(name: str) -> bytes:
    return (DATA / name).read_bytes()


class Warnings(list):
    """A warn callback that keeps the messages."""

    def __call__(self, msg: str) -> None:
        self.append(msg)


def quiet(msg: str) -> None:
    """A warn callback that drops the messages."""


# ---------------------------------------------------------------- legacy .dat, by hand

def _b(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")


def dat_bytes(entries: Sequence[tuple[str | bytes, int, np.ndarray | Sequence[float]]],
              trailer: tuple[int, str | bytes] | int | None = (0, b"")) -> bytes:
    """A legacy .dat file: entries (name, ncall, values); trailer (chunk, dataset), a bare chunk int, or None."""
    out = struct.pack("<i", len(entries))
    for name, ncall, vals in entries:
        v = np.asarray(vals, dtype="<f4").reshape(-1)
        nb = _b(name)
        out += struct.pack("<i", len(nb)) + nb + struct.pack("<ii", ncall, v.size) + v.tobytes()
    if isinstance(trailer, int):
        out += struct.pack("<i", trailer)
    elif trailer is not None:
        ds = _b(trailer[1])
        out += struct.pack("<ii", trailer[0], len(ds)) + ds
    return out


def parse_dat(raw: bytes) -> tuple[list[tuple[bytes, int, np.ndarray]], int | None, bytes | None]:
    """(entries (name, ncall, float32 values), trailer chunk or None, dataset or None) of a well-formed file."""
    (n,) = struct.unpack_from("<i", raw, 0)
    pos, entries = 4, []
    for _ in range(n):
        (ln,) = struct.unpack_from("<i", raw, pos)
        name = raw[pos + 4:pos + 4 + ln]
        pos += 4 + ln
        ncall, nval = struct.unpack_from("<ii", raw, pos)
        pos += 8
        entries.append((name, ncall, np.frombuffer(raw, "<f4", nval, pos).astype(np.float32)))
        pos += 4 * nval
    chunk = dataset = None
    if pos < len(raw):
        (chunk,) = struct.unpack_from("<i", raw, pos)
        pos += 4
        if pos < len(raw):
            (ln,) = struct.unpack_from("<i", raw, pos)
            dataset = raw[pos + 4:pos + 4 + ln]
    return entries, chunk, dataset


# ---------------------------------------------------------------- GGUF, by hand

def _gstr(s: str | bytes) -> bytes:
    b = _b(s)
    return struct.pack("<Q", len(b)) + b


def gguf_value(vtype: int, value: Any) -> bytes:
    """The bytes of one GGUF value; arrays are (element type, list)."""
    if vtype == T_STR:
        return _gstr(value)
    if vtype == T_ARR:
        atype, items = value
        return struct.pack("<IQ", atype, len(items)) + b"".join(gguf_value(atype, x) for x in items)
    return struct.pack(_FMT[vtype], value)


def _pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def gguf_bytes(kvs: Sequence[tuple[str | bytes, int, Any]],
               tensors: Sequence[tuple[str | bytes, Sequence[int], int, bytes]], *, version: int = 3,
               alignment: int = 32, n_tensors: int | None = None, n_kv: int | None = None,
               offsets: Sequence[int] | None = None, magic: bytes = b"GGUF") -> bytes:
    """A GGUF file: kvs (key, type, value), tensors (name, ne (written as given), ggml type, data bytes).

    Data are laid out as ggml does (each tensor padded to `alignment`) unless `offsets` are given;
    the counts can be overridden to build broken headers.
    """
    head = magic + struct.pack("<Iqq", version, len(tensors) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    for key, vt, v in kvs:
        head += _gstr(key) + struct.pack("<I", vt) + gguf_value(vt, v)
    off, offs = 0, []
    for _, _, _, data in tensors:
        offs.append(off)
        off += _pad(len(data), alignment)
    offs = list(offsets) if offsets is not None else offs
    for (name, ne, ttype, _), o in zip(tensors, offs, strict=True):
        head += _gstr(name) + struct.pack(f"<I{len(ne)}qiQ", len(ne), *ne, ttype, o)
    out = head + b"\0" * (_pad(len(head), alignment) - len(head))
    for _, _, _, data in tensors:
        out += data + b"\0" * (_pad(len(data), alignment) - len(data))
    return out


def imatrix_kvs(datasets: Sequence[str] = ("d.txt",), chunk_count: int = 1, chunk_size: int = 512) -> list:
    return [("general.type", T_STR, "imatrix"), ("imatrix.datasets", T_ARR, (T_STR, list(datasets))),
            ("imatrix.chunk_count", T_U32, chunk_count), ("imatrix.chunk_size", T_U32, chunk_size)]


def imatrix_tensors(entries: dict[str, tuple[np.ndarray, Sequence[float]]]) -> list:
    """llama-imatrix's tensors for entries name -> (sums float32[n_mat, n], counts[n_mat]), names sorted."""
    out = []
    for name in sorted(entries, key=_b):
        sums, counts = entries[name]
        sums = np.asarray(sums, "<f4")
        sums = sums.reshape(len(counts), -1)
        n_mat, n = sums.shape
        out.append((name + ".in_sum2", (n, n_mat) if n_mat > 1 else (n,), F32, sums.tobytes()))
        out.append((name + ".counts", (1, n_mat) if n_mat > 1 else (1,), F32,
                    np.asarray(counts, "<f4").tobytes()))
    return out


def imatrix_gguf(entries: dict[str, tuple[np.ndarray, Sequence[float]]], datasets: Sequence[str] = ("d.txt",),
                 chunk_count: int = 1, chunk_size: int = 512) -> bytes:
    """A GGUF imatrix laid out as llama-imatrix's save_imatrix writes it."""
    return gguf_bytes(imatrix_kvs(datasets, chunk_count, chunk_size), imatrix_tensors(entries))


def read_gguf_py(path: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """A GGUF imatrix read by gguf-py: entries name -> (sums float32[n_mat, n], raw float counts), kv values."""
    import gguf

    r = gguf.GGUFReader(str(path))
    kv: dict[str, Any] = {}
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        kv[f.name] = f.contents()
    t = {x.name: x for x in r.tensors}
    out = {}
    for name, x in t.items():
        if name.endswith(".in_sum2"):
            base = name[:-len(".in_sum2")]
            c = np.array(t[base + ".counts"].data, dtype=np.float32).reshape(-1)
            out[base] = (np.array(x.data, dtype=np.float32).reshape(c.size, -1), c)
    return out, kv


# ---------------------------------------------------------------- the helpers against llama-imatrix's files


_LOG = re.compile(r"^\d+\.\d+\.\d+\.\d+ ([IWED]) ", re.M)


def parse_llama_log(text: str) -> tuple[str, list[str]]:
    """(the info text without log prefixes, the error / warning lines) of a llama.cpp log."""
    parts = _LOG.split(text)
    recs = list(zip(parts[1::2], parts[2::2], strict=True))
    return "".join(t for lv, t in recs if lv == "I"), [t.rstrip("\n") for lv, t in recs if lv != "I"]
