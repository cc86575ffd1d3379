"""Bad input: every case through the library (ImatrixError naming the file and the offset or tensor)
and through the CLI (exit code 1 or 2, a clear message, no traceback, no output file written)."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.gguf_io import GGUFError
from qtool.imatrix import (
    ImatrixData,
    ImatrixEntry,
    ImatrixError,
    encode_dat,
    encode_gguf,
    read_imatrix,
    write_imatrix,
)
from tests.imatrix_helpers import (
    F16,
    F32,
    T_ARR,
    T_I32,
    T_STR,
    T_U32,
    dat_bytes,
    gguf_bytes,
    imatrix_gguf,
    imatrix_kvs,
    imatrix_tensors,
    ref,
    ref_bytes,
)

NAN = float("nan")
INF = float("inf")
V4 = np.float32([1, 2, 3, 4])
GOOD_GGUF = imatrix_gguf({"blk.0.attn_q.weight": (np.ones((1, 8)), [512])})


def _dat_trunc_values() -> bytes:
    return ref_bytes("odd.dat")[:100]


def _gguf_with(kvs=None, tensors=None, **kw) -> bytes:
    ents = {"blk.0.attn_q.weight": (np.ones((1, 8)), [512])}
    return gguf_bytes(imatrix_kvs() if kvs is None else kvs, imatrix_tensors(ents) if tensors is None else tensors,
                      **kw)


def _sums(name: str, ne: tuple, vals: list | np.ndarray, ttype: int = F32) -> tuple:
    return (name + ".in_sum2", ne, ttype, np.asarray(vals, "<f4").tobytes())


def _counts(name: str, vals: list) -> tuple:
    return (name + ".counts", (1, len(vals)) if len(vals) > 1 else (1,), F32, np.asarray(vals, "<f4").tobytes())


def model_gguf(path: Path, general_type: str | None = None) -> None:
    """A tiny llama model written by gguf-py (not an imatrix)."""
    w = gguf.GGUFWriter(str(path), "llama")
    if general_type:
        w.add_type(general_type)
    w.add_uint32("llama.block_count", 1)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.zeros((32, 32), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# name -> (file bytes, regex the message must match (after the file name))
CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    # ---- legacy .dat
    "empty": (lambda: b"", r"0 bytes is too short"),
    "three-bytes": (lambda: b"\x01\x00\x00", r"3 bytes is too short"),
    "text-file": (lambda: b"hello, this is not an imatrix\n", r"not an imatrix file.*no GGUF magic"),
    "dat-zero-entries": (lambda: struct.pack("<i", 0) + b"\0" * 40, r"legacy entry count 0 at offset 0"),
    "dat-negative-entries": (lambda: struct.pack("<i", -5) + b"\0" * 40, r"legacy entry count -5 at offset 0"),
    "dat-huge-entries": (lambda: struct.pack("<i", 2**31 - 1) + b"\0" * 40,
                         r"legacy entry count 2147483647 at offset 0 needs at least"),
    "dat-truncated-values": (_dat_trunc_values, r"truncated.*'output\.weight': value count 48 at offset 25"),
    "dat-truncated-name": (lambda: dat_bytes([("a" * 40, 1, V4)])[:30], r"truncated.*name length 40 at offset 4"),
    "dat-truncated-entry": (lambda: ref_bytes("odd.dat")[:1200], r"truncated"),
    "dat-truncated-trailer": (lambda: ref_bytes("odd.dat")[:-3], r"dataset name length 7 at offset 1956"),
    "dat-negative-name-length": (lambda: struct.pack("<ii", 2, -3) + b"\0" * 60,
                                 r"entry 1: bad name length -3 at offset 4"),
    "dat-huge-name-length": (lambda: struct.pack("<ii", 1, 2**31 - 1) + b"\0" * 60,
                             r"entry 1: name length 2147483647 at offset 4 exceeds"),
    "dat-negative-ncall": (lambda: dat_bytes([("t.weight", -1, V4)]), r"'t\.weight': negative ncall -1 at offset 16"),
    "dat-zero-nval": (lambda: dat_bytes([("t.weight", 1, V4)]).replace(struct.pack("<ii", 1, 4), struct.pack(
        "<ii", 1, 0)), r"'t\.weight': bad value count 0 at offset 20"),
    "dat-negative-nval": (lambda: dat_bytes([("t.weight", 1, V4)]).replace(struct.pack("<ii", 1, 4), struct.pack(
        "<ii", 1, -4)), r"'t\.weight': bad value count -4 at offset 20"),
    "dat-huge-nval": (lambda: dat_bytes([("t.weight", 1, V4)]).replace(struct.pack("<ii", 1, 4), struct.pack(
        "<ii", 1, 2**30)), r"'t\.weight': value count 1073741824 at offset 20 needs 4294967296 bytes"),
    "dat-nan": (lambda: dat_bytes([("a.weight", 1, V4), ("t.weight", 1, [1, 2, NAN, 4])]),
                r"'t\.weight': non-finite value nan at offset 68 \(column 2\)"),
    "dat-inf": (lambda: dat_bytes([("t.weight", 1, [-INF, 2])]), r"'t\.weight': non-finite value -inf at offset 24"),
    "dat-duplicate": (lambda: dat_bytes([("t.weight", 1, V4), ("u", 1, V4), ("t.weight", 2, V4)]),
                      r"duplicate entry name 't\.weight' at offset 69"),
    "dat-nul-in-name": (lambda: dat_bytes([(b"t\0x", 1, V4)]), r"entry 1: name at offset 8 contains a NUL byte"),
    "dat-garbage-after-dataset": (lambda: dat_bytes([("t", 1, V4)], (3, "d.txt")) + b"xyz",
                                  r"3 unexpected bytes after the dataset name at offset 46"),
    "dat-negative-chunk": (lambda: dat_bytes([("t", 1, V4)], (-2, "d")), r"negative chunk count -2 at offset 33"),
    "dat-negative-dataset-length": (lambda: dat_bytes([("t", 1, V4)], 1) + struct.pack("<i", -9),
                                    r"bad dataset name length -9 at offset 37"),
    # ---- GGUF
    "gguf-magic-only": (lambda: b"GGUF", r"truncated \(file size 4\): the GGUF version needs 4 bytes, 0 left "
                                         r"at offset 4"),
    "wrong-magic": (lambda: b"GGUX" + GOOD_GGUF[4:], r"not an imatrix file.*no GGUF magic"),
    "gguf-version-1": (lambda: _gguf_with(version=1), r"unsupported GGUF version 1 at offset 4"),
    "gguf-version-4": (lambda: _gguf_with(version=4), r"unsupported GGUF version 4 at offset 4"),
    "gguf-negative-tensor-count": (lambda: _gguf_with(n_tensors=-1), r"bad tensor count -1 at offset 8"),
    "gguf-huge-kv-count": (lambda: _gguf_with(n_kv=2**40), r"1099511627776 key/value pairs cannot fit in the "
                                                          r"\d+ bytes left at offset 16"),
    "gguf-truncated-header": (lambda: GOOD_GGUF[:60], r"truncated or corrupt: 2 tensors cannot fit "
                                                     r"in the 36 bytes left at offset 8"),
    "gguf-truncated-kv": (lambda: GOOD_GGUF[:120], r"truncated \(file size 120\): the length of key 2 needs 8 bytes, "
                                                   r"4 left at offset 116"),
    "gguf-truncated-infos": (lambda: ref_bytes("moe-a-resave.gguf")[:800],
                             r"truncated \(file size 800\): the length of the name of tensor 9 needs 8 bytes, "
                             r"4 left at offset 796"),
    "gguf-truncated-data": (lambda: ref_bytes("smol-imatrix.gguf")[:-100],
                            r"truncated: the tensor data end at offset 631360, the file has 631260 bytes"),
    "gguf-huge-string": (lambda: GOOD_GGUF[:24] + struct.pack("<Q", 2**63) + GOOD_GGUF[32:],
                         r"key 0: string length 9223372036854775808 exceeds the \d+ bytes left at offset 24"),
    "gguf-huge-array": (lambda: _gguf_with(kvs=[("imatrix.datasets", T_ARR, (T_STR, ["a"]))])
                        .replace(struct.pack("<IQ", T_STR, 1), struct.pack("<IQ", T_STR, 2**50)),
                        r"key 'imatrix\.datasets': array of 1125899906842624 elements does not fit"),
    "gguf-bad-value-type": (lambda: _gguf_with(kvs=[("general.type", T_STR, "imatrix")])
                            .replace(struct.pack("<I", T_STR) + struct.pack("<Q", 7) + b"imatrix",
                                     struct.pack("<I", 99) + struct.pack("<Q", 7) + b"imatrix"),
                            r"key 'general\.type' has invalid GGUF type 99"),
    "gguf-duplicate-key": (lambda: _gguf_with(kvs=[*imatrix_kvs(), ("imatrix.chunk_size", T_U32, 512)]),
                           r"duplicate key 'imatrix\.chunk_size' at offset \d+"),
    "gguf-duplicate-tensor": (lambda: _gguf_with(tensors=[_sums("t", (4,), V4), _counts("t", [1]),
                                                          _sums("t", (4,), V4)]),
                              r"duplicate tensor name 't\.in_sum2' at offset \d+"),
    "gguf-sums-without-counts": (lambda: _gguf_with(tensors=[_sums("blk.0.attn_q.weight", (4,), V4)]),
                                 r"tensor 'blk\.0\.attn_q\.weight\.in_sum2' has no matching "
                                 r"'blk\.0\.attn_q\.weight\.counts'"),
    "gguf-counts-without-sums": (lambda: _gguf_with(tensors=[_counts("t.weight", [1])]),
                                 r"tensor 't\.weight\.counts' has no matching 't\.weight\.in_sum2'"),
    "gguf-f16-sums": (lambda: _gguf_with(tensors=[("t.in_sum2", (4,), F16, b"\0" * 8), _counts("t", [1])]),
                      r"tensor 't\.in_sum2' must be F32, not F16"),
    "gguf-sums-not-split": (lambda: _gguf_with(tensors=[_sums("t", (10,), np.ones(10)), _counts("t", [1, 2, 3])]),
                            r"entry 't': 10 sums do not split into 3 matrices"),
    "gguf-nan-sum": (lambda: _gguf_with(tensors=[_sums("t", (4,), [1, NAN, 3, 4]), _counts("t", [1])]),
                     r"tensor 't\.in_sum2': non-finite value nan at offset \d+ \(element 1\)"),
    "gguf-inf-sum": (lambda: _gguf_with(tensors=[_sums("t", (4,), [1, 2, 3, INF]), _counts("t", [1])]),
                     r"tensor 't\.in_sum2': non-finite value inf at offset \d+ \(element 3\)"),
    "gguf-nan-count": (lambda: _gguf_with(tensors=[_sums("t", (4, 2), np.ones(8)), _counts("t", [1, NAN])]),
                       r"tensor 't\.counts': invalid count nan at offset \d+"),
    "gguf-negative-count": (lambda: _gguf_with(tensors=[_sums("t", (4,), V4), _counts("t", [-3])]),
                            r"tensor 't\.counts': invalid count -3\.0 at offset \d+"),
    "gguf-long-name": (lambda: _gguf_with(tensors=[_sums("x" * 60, (4,), V4), _counts("x" * 60, [1])]),
                       r"tensor 0 name 'x{60}\.in_sum2' is 68 bytes \(must be < 64\) at offset \d+"),
    "gguf-5-dims": (lambda: _gguf_with(tensors=[_sums("t", (4, 1, 1, 1, 1), V4), _counts("t", [1])]),
                    r"tensor 't\.in_sum2' has 5 dimensions \(at most 4\) at offset \d+"),
    "gguf-negative-dim": (lambda: _gguf_with(tensors=[_sums("t", (4, -1), V4), _counts("t", [1])]),
                          r"tensor 't\.in_sum2' dimension 1 is negative \(-1\) at offset \d+"),
    "gguf-bad-ggml-type": (lambda: _gguf_with(tensors=[("t.in_sum2", (4,), 99, b"\0" * 16), _counts("t", [1])]),
                           r"tensor 't\.in_sum2' has invalid ggml type 99 at offset \d+"),
    "gguf-block-size": (lambda: _gguf_with(tensors=[("t.in_sum2", (33,), 2, b"\0" * 18), _counts("t", [1])]),
                        r"tensor 't\.in_sum2': 33 elements per row is not a multiple of the block size 32"),
    "gguf-bad-offset": (lambda: _gguf_with(tensors=[_sums("t", (4,), V4), _counts("t", [1])], offsets=[0, 64]),
                        r"tensor 't\.counts' has data offset 64, expected 32"),
    "gguf-bad-alignment": (lambda: _gguf_with(kvs=[*imatrix_kvs(), ("general.alignment", T_U32, 24)]),
                           r"general\.alignment must be a power of 2 \(u32\), got 24"),
    "gguf-chunk-count-type": (lambda: _gguf_with(kvs=[("general.type", T_STR, "imatrix"),
                                                      ("imatrix.chunk_count", T_I32, 3)]),
                              r"imatrix\.chunk_count must be u32, not i32"),
    "gguf-datasets-type": (lambda: _gguf_with(kvs=[("imatrix.datasets", T_STR, "a.txt")]),
                           r"imatrix\.datasets must be an array of strings"),
    "gguf-empty-key": (lambda: _gguf_with(kvs=[("", T_U32, 1)]), r"key 0 is empty at offset 24"),
    "gguf-no-tensors": (lambda: _gguf_with(tensors=[]), r"a GGUF file with 0 tensors and no <name>\.in_sum2"),
    "gguf-other-type": (lambda: _gguf_with(kvs=[("general.type", T_STR, "adapter")]),
                        r"a GGUF 'adapter' file \(general\.type\), not an imatrix"),
}


def _model(general_type: str | None) -> Callable[[], bytes]:
    def make() -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "m.gguf"
            model_gguf(p, general_type)
            return p.read_bytes()
    return make


CASES["gguf-model"] = (_model(None), r"a GGUF model \(architecture llama, 2 tensors\), not an imatrix")
CASES["gguf-model-typed"] = (_model("model"), r"a GGUF 'model' file \(general\.type\), not an imatrix "
                                              r"\(architecture llama\)")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    out = {}
    for name, (make, _) in CASES.items():
        p = d / f"{name}.{'gguf' if name.startswith('gguf') else 'dat'}"
        p.write_bytes(make())
        out[name] = p
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_library_error(case: str, bad_files: dict[str, Path]) -> None:
    path = bad_files[case]
    with pytest.raises(ImatrixError) as ei:
        read_imatrix(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: "), msg
    assert re.search(CASES[case][1], msg), msg
    assert isinstance(ei.value, GGUFError) and isinstance(ei.value, ValueError)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["convert", "merge", "show"])
def test_cli_error(case: str, command: str, bad_files: dict[str, Path], tmp_path: Path) -> None:
    path = bad_files[case]
    out = tmp_path / "out.gguf"
    args = {"convert": ["convert", str(path), str(out)],
            "merge": ["merge", str(ref("moe-a.gguf")), str(path), "-o", str(out)],
            "show": ["show", str(path)]}[command]
    r = CliRunner().invoke(cli, ["imatrix", *args])
    assert r.exit_code == 1, r.output
    assert f"Error: {path}: " in r.stderr and "Traceback" not in r.output
    assert re.search(CASES[case][1], r.stderr), r.stderr
    assert r.stdout == "" and list(tmp_path.iterdir()) == []


def test_cli_debug_shows_the_exception(bad_files: dict[str, Path]) -> None:
    r = CliRunner().invoke(cli, ["--debug", "imatrix", "show", str(bad_files["dat-nan"])])
    assert r.exit_code == 1 and isinstance(r.exception, ImatrixError)


# ---------------------------------------------------------------- CLI usage errors and writing failures

def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_output_is_input(tmp_path: Path) -> None:
    src = tmp_path / "a.gguf"
    src.write_bytes(ref_bytes("moe-a.gguf"))
    run = CliRunner()
    for args in (["convert", str(src), str(src)], ["merge", str(ref("moe-b.gguf")), str(src), "-o", str(src)],
                 ["convert", str(src), str(tmp_path / "." / "a.gguf"), "--to", "dat"]):
        r = run.invoke(cli, ["imatrix", *args])
        assert r.exit_code == 1 and "is the input" in r.stderr and "Traceback" not in r.output
    assert src.read_bytes() == ref_bytes("moe-a.gguf") and _files(tmp_path) == ["a.gguf"]


def test_output_is_input_through_a_link(tmp_path: Path) -> None:
    src = tmp_path / "a.dat"
    src.write_bytes(ref_bytes("odd.dat"))
    (tmp_path / "link.dat").symlink_to(src)
    r = CliRunner().invoke(cli, ["imatrix", "convert", str(tmp_path / "link.dat"), str(src)])
    assert r.exit_code == 1 and "is the input" in r.stderr
    assert src.read_bytes() == ref_bytes("odd.dat")


def test_unknown_output_extension(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["imatrix", "convert", str(ref("odd.dat")), str(tmp_path / "x.bin")])
    assert r.exit_code == 2 and "--to dat|gguf" in r.stderr and _files(tmp_path) == []
    r = CliRunner().invoke(cli, ["imatrix", "convert", str(ref("odd.dat")), str(tmp_path / "x.bin"), "--to", "gguf"])
    assert r.exit_code == 0 and (tmp_path / "x.bin").read_bytes() == ref_bytes("odd-rt.gguf")
    with pytest.raises(ImatrixError, match="cannot tell the output format"):
        write_imatrix(read_imatrix(ref("odd.dat")), tmp_path / "y.bin")


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(ImatrixError, match=r"nope\.dat: cannot read: No such file"):
        read_imatrix(tmp_path / "nope.dat")
    r = CliRunner().invoke(cli, ["imatrix", "convert", str(tmp_path / "nope.dat"), str(tmp_path / "x.gguf")])
    assert r.exit_code == 1 and "nope.dat: cannot read: No such file" in r.stderr and _files(tmp_path) == []
    r = CliRunner().invoke(cli, ["imatrix", "show", str(tmp_path)])
    assert r.exit_code == 2 and "Traceback" not in r.output  # a directory


def test_bad_chunk_size_option(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["imatrix", "convert", str(ref("odd.dat")), str(tmp_path / "x.gguf"), "-c", "0"])
    assert r.exit_code == 2 and "chunk-size" in r.stderr and _files(tmp_path) == []


def test_unwritable_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "x.gguf"
    r = CliRunner().invoke(cli, ["imatrix", "convert", str(ref("odd.dat")), str(out)])
    assert r.exit_code == 1 and "does not exist" in r.stderr and "Traceback" not in r.output


def test_failure_while_writing_leaves_nothing_and_keeps_old_output(tmp_path: Path) -> None:
    """The data fail only when encoded (inside the atomic write): no temporary file stays, OUT is untouched."""
    long_name = "blk.0." + "x" * 54 + ".weight"  # fine in .dat, too long for a GGUF tensor name
    (tmp_path / "long.dat").write_bytes(dat_bytes([(long_name, 1, V4)]))
    (tmp_path / "zero.gguf").write_bytes(imatrix_gguf({"t.weight": (np.ones((2, 4)), [0, 0])}))
    (tmp_path / "out.gguf").write_bytes(b"old output")
    (tmp_path / "out.dat").write_bytes(b"old output")
    run = CliRunner()
    r = run.invoke(cli, ["imatrix", "convert", str(tmp_path / "long.dat"), str(tmp_path / "out.gguf")])
    assert r.exit_code == 1 and "names must be shorter than 64" in r.stderr and long_name in r.stderr
    r = run.invoke(cli, ["imatrix", "convert", str(tmp_path / "zero.gguf"), str(tmp_path / "out.dat")])
    assert r.exit_code == 1 and "no imatrix entry has any data" in r.stderr
    r = run.invoke(cli, ["imatrix", "merge", str(ref("moe-a.gguf")), str(ref("moe-b.gguf")),
                         "-o", str(tmp_path / "out.gguf")])
    assert r.exit_code == 1
    assert (tmp_path / "out.gguf").read_bytes() == b"old output" == (tmp_path / "out.dat").read_bytes()
    assert _files(tmp_path) == ["long.dat", "out.dat", "out.gguf", "zero.gguf"]


def test_success_replaces_existing_output(tmp_path: Path) -> None:
    (tmp_path / "out.dat").write_bytes(b"old output")
    r = CliRunner().invoke(cli, ["imatrix", "convert", str(ref("odd.dat")), str(tmp_path / "out.dat")])
    assert r.exit_code == 0 and (tmp_path / "out.dat").read_bytes() == ref_bytes("odd-resave.dat")
    assert _files(tmp_path) == ["out.dat"]


def test_show_without_any_data(tmp_path: Path) -> None:
    p = tmp_path / "zero.gguf"
    p.write_bytes(imatrix_gguf({"t.weight": (np.ones((2, 4)), [0, 0])}))
    r = CliRunner().invoke(cli, ["imatrix", "show", str(p)])
    assert r.exit_code == 1 and f"cannot compute statistics for {p}: no tensor has data" in r.stderr
    assert "all counts are zero for tensor t.weight" in r.stderr


# ---------------------------------------------------------------- writers refuse what the formats cannot hold

def test_writers_refuse_unstorable_data() -> None:
    empty = ImatrixData({}, [], 0, 512)
    with pytest.raises(ImatrixError, match="no entries"):
        encode_gguf(empty)
    with pytest.raises(ImatrixError, match="no imatrix entry has any data"):
        encode_dat(empty)
    legacy = ImatrixData({"t": ImatrixEntry(np.ones((1, 4)), [1])}, [], 0, 0, legacy=True)
    with pytest.raises(ImatrixError, match="must be combined first"):
        encode_gguf(legacy)
    with pytest.raises(ImatrixError, match="chunk size 0 must be at least 1"):
        encode_dat(ImatrixData({"t": ImatrixEntry(np.ones((1, 4)), [1])}, [], 0, 0))
    with pytest.raises(ImatrixError, match="cannot store entry name 'a\\\\x00b'"):
        encode_dat(ImatrixData({"a\0b": ImatrixEntry(np.ones((1, 4)), [1])}, [], 0, 0, legacy=True))
    with pytest.raises(ImatrixError, match="chunk_count 4294967296 does not fit in u32"):
        encode_gguf(ImatrixData({"t": ImatrixEntry(np.ones((1, 4)), [1])}, [], 2**32, 512))
    with pytest.raises(ImatrixError, match="5 sums do not split into 2 matrices"):
        ImatrixEntry(np.ones(5), [1, 2])
