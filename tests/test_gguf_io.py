"""GGUF reading/writing: round trips, unknown type ids, split sets, malformed files."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from qtool.gguf_io import GGUFError, GGUFModel, GGUFStreamWriter, OutTensor, ValueType, kv_str, kv_u16, kv_u32, make_kv
from qtool.gguf_io.format import SCALAR_FMT, Cursor, header_bytes, read_header, read_kvs
from qtool.gguf_io.reader import T_ARRAY, T_FLOAT32, T_STRING, T_UINT32
from qtool.quants import get_type


def write_model(path: Path, tensors: dict[str, tuple[tuple[int, ...], str, np.ndarray]],
                extra_kvs: list | None = None) -> None:
    kvs = [kv_str("general.architecture", "llama"), kv_u32("llama.block_count", 1),
           make_kv("tokenizer.ggml.tokens", T_ARRAY, ["a", "b", "c"], T_STRING),
           make_kv("llama.some_floats", T_ARRAY, [1.0, 2.5], T_FLOAT32)] + (extra_kvs or [])
    outs = [OutTensor(n, s, get_type(t)) for n, (s, t, _) in tensors.items()]
    with GGUFStreamWriter(path, kvs, outs) as w:
        for _, (_, _, data) in tensors.items():
            w.write_tensor_chunk(data)


def test_round_trip_and_ik_type_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 64)).astype(np.float32)
    ik = rng.integers(0, 255, size=(2 * 144,), dtype=np.uint8)  # IQ4_K: 2 rows of 256
    p = tmp_path / "m.gguf"
    write_model(p, {"a.weight": ((64, 3), "F32", a), "b.weight": ((256, 2), "IQ4_K", ik)})
    m = GGUFModel(p, flavour="ik")
    assert [t.name for t in m.tensors] == ["a.weight", "b.weight"]
    assert m.tensors[1].qtype.name == "IQ4_K" and m.tensors[1].type_id == 139
    assert np.array_equal(m.tensor_data(m.tensors[0]).view(np.float32).reshape(3, 64), a)
    assert np.array_equal(m.tensor_data(m.tensors[1]), ik)
    assert m.kv("tokenizer.ggml.tokens") == ["a", "b", "c"]
    assert m.kv("llama.block_count") == 1
    # identity rewrite is byte-identical
    q = tmp_path / "copy.gguf"
    with GGUFStreamWriter(q, m.kvs, [OutTensor(t.name, t.shape, t.qtype) for t in m.tensors], m.alignment) as w:
        for t in m.tensors:
            w.write_tensor_chunk(m.tensor_data(t))
    assert p.read_bytes() == q.read_bytes()
    assert p.stat().st_size % 32 == 0


def test_split_set(tmp_path: Path) -> None:
    x = np.arange(32, dtype=np.float32)
    for i in range(2):
        kvs = [kv_u16("split.no", i), kv_u16("split.count", 2), kv_u32("split.tensors.count", 2)]
        write_model(tmp_path / f"m-{i + 1:05d}-of-00002.gguf", {f"t{i}": ((32,), "F32", x + i)}, kvs)
    m = GGUFModel(tmp_path / "m-00001-of-00002.gguf")
    assert [t.name for t in m.tensors] == ["t0", "t1"]
    assert m.tensor_data(m.tensors[1]).view(np.float32)[0] == 1.0
    with pytest.raises(GGUFError, match="first part"):
        GGUFModel(tmp_path / "m-00002-of-00002.gguf")


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="no such file"):
        GGUFModel(tmp_path / "nope.gguf")
    f = tmp_path / "foreign.gguf"
    f.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUFModel(f)


def test_truncated_files_say_where(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    write_model(p, {"a": ((64, 4), "F32", np.zeros((4, 64), np.float32))})
    data = p.read_bytes()
    for cut in (30, 60, len(data) // 2, len(data) - 1):
        t = tmp_path / f"cut{cut}.gguf"
        t.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match="truncated|not a GGUF"):
            GGUFModel(t)


def test_atomic_output_removed_on_error(tmp_path: Path) -> None:
    p = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError), GGUFStreamWriter(p, [kv_u32("x", 1)],
                                                       [OutTensor("a", (32,), get_type("F32"))]) as w:
        w.write_tensor_chunk(np.zeros(16, np.float32))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_kv_scalar_types_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    write_model(p, {"a": ((32,), "F32", np.zeros(32, np.float32))},
                [make_kv("x.f", T_FLOAT32, 0.5), make_kv("x.u", T_UINT32, 7)])
    m = GGUFModel(p)
    assert m.kv("x.f") == 0.5 and m.kv("x.u") == 7


def test_string_arrays_fast_path_and_its_errors(tmp_path: Path) -> None:
    """Arrays of strings (the tokenizer vocabulary) are read by a fast loop; invalid UTF-8 gets
    replacement characters and a cut inside the array names the offset, as single strings do."""
    p = tmp_path / "m.gguf"
    words = [f"w{i}" for i in range(1000)] + ["", "é" * 3, "\U0001f600"]
    write_model(p, {"a": ((32,), "F32", np.zeros(32, np.float32))},
                [make_kv("x.words", T_ARRAY, words, T_STRING), make_kv("x.bad", T_ARRAY, ["ok", "XY", "z"], T_STRING)])
    data = bytearray(p.read_bytes())
    i = data.index(b"XY")
    data[i:i + 2] = b"\xff\xfe"  # invalid UTF-8 in the second item
    p.write_bytes(bytes(data))
    m = GGUFModel(p)
    assert m.kv("x.words") == words
    assert m.kv("x.bad") == ["ok", "\ufffd\ufffd", "z"]
    j = bytes(data).index(b"w500")
    t = tmp_path / "cut.gguf"
    t.write_bytes(bytes(data[:j + 2]))
    with pytest.raises(GGUFError, match=r"truncated at offset \d+ while reading"):
        GGUFModel(t)


# ---------------------------------------------------------------- the format layer

def test_value_types_are_the_gguf_packages() -> None:
    assert ValueType is gguf.GGUFValueType and T_ARRAY is ValueType.ARRAY and T_UINT32 == 4
    assert set(SCALAR_FMT) == set(ValueType) - {ValueType.STRING, ValueType.ARRAY}


def test_kv_codec_round_trip_keeps_raw_bytes() -> None:
    """Every value type through make_kv (the encoder) and read_kvs (the decoder): same values,
    and the decoder's raw bytes are the encoder's."""
    kvs = [make_kv(f"k.{t.name.lower()}", t, 1) for t in SCALAR_FMT]
    kvs += [make_kv("k.str", ValueType.STRING, "é\U0001f600"), make_kv("k.strs", ValueType.ARRAY, ["a", "", "bc"],
                                                                       ValueType.STRING),
            make_kv("k.f32s", ValueType.ARRAY, [0.5, -2.0], ValueType.FLOAT32)]
    buf = b"".join(kv.raw for kv in kvs)
    c = Cursor(buf, "<kvs>")
    got = read_kvs(c, len(kvs))
    assert c.pos == len(buf)
    for a, b in zip(kvs, got, strict=True):
        assert (b.key, b.vtype, b.atype, b.raw) == (a.key, a.vtype, a.atype, a.raw)
        assert np.array_equal(np.asarray(b.value), np.asarray(a.value))


def test_header_round_trip_and_ggml_checks() -> None:
    f32 = get_type("F32")
    tensors = [("a", (32, 2), f32.id, 256), ("b", (64,), f32.id, 256)]
    raw = header_bytes([kv_u32("x", 7)], tensors, 32)
    h = read_header(Cursor(raw + b"\0" * 512, "<h>"))
    assert h.data_offset == len(raw) and h.data_size == 512 and [t.name for t in h.tensors] == ["a", "b"]
    assert [(t.shape, t.offset - h.data_offset, t.n_bytes) for t in h.tensors] == [((32, 2), 0, 256), ((64,), 256, 256)]
    with pytest.raises(GGUFError, match=r"truncated: the tensor data end at offset \d+, the file has \d+ bytes "
                                        r"\(tensor 'b' needs bytes"):
        read_header(Cursor(raw + b"\0" * 300, "<h>"))
    with pytest.raises(GGUFError, match=r"<h>: truncated \(file size 20\): the key/value count needs 8 bytes, 4 "
                                        r"left at offset 16"):
        read_header(Cursor(raw[:20], "<h>"))
    dup = header_bytes([kv_u32("x", 7), kv_u32("x", 8)], [], 32)
    with pytest.raises(GGUFError, match=r"duplicate key 'x' at offset \d+"):
        read_header(Cursor(dup, "<h>"))
