"""qtool.imatrix against the files mainline llama-imatrix wrote (tests/data/imatrix/README.md).

Every row of the README table and every smol-imatrix-* relation is reproduced byte for byte, by
the library and by `qtool imatrix convert / merge`; `--show-statistics` text is reproduced
exactly (`format_llama`, `qtool imatrix show --plain`), warnings included.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.imatrix import (
    combine,
    compute_statistics,
    decode_imatrix,
    encode_dat,
    encode_gguf,
    format_for_path,
    read_imatrix,
    write_imatrix,
)
from qtool.imatrix.stats import format_llama
from tests.imatrix_helpers import DATA, Warnings, parse_dat, parse_llama_log, quiet, read_gguf_py, ref, ref_bytes

# (output, inputs, llama-imatrix -c): `llama-imatrix --in-file IN1 [--in-file IN2] [-c N] -o OUT`
TABLE = [
    ("moe-a-resave.gguf", ["moe-a.gguf"], 512),
    ("moe-a-conv.dat", ["moe-a.gguf"], 512),
    ("moe-a-rt.gguf", ["moe-a-conv.dat"], 512),
    ("moe-ba.gguf", ["moe-b.gguf", "moe-a.gguf"], 512),
    ("odd-rt.gguf", ["odd.dat"], 512),
    ("odd-rt.dat", ["odd-rt.gguf"], 512),
    ("odd-resave.dat", ["odd.dat"], 512),
    ("odd-moe.gguf", ["odd.dat", "moe-a.gguf"], 512),
    ("moe-a-c256.dat", ["moe-a.gguf"], 256),
    ("odd-c1000.gguf", ["odd.dat"], 1000),
    ("smol-imatrix-conv.dat", ["smol-imatrix.gguf"], 512),
    ("smol-imatrix-rt.gguf", ["smol-imatrix-conv.dat"], 512),
    ("smol-imatrix-merged.gguf", ["smol-imatrix.gguf", "smol-imatrix-b.gguf"], 512),
    ("smol-imatrix-merged-mixed.gguf", ["smol-imatrix-conv.dat", "smol-imatrix-b.gguf"], 512),
]
# written by llama-imatrix (moe-a.gguf / moe-b.gguf were fabricated with gguf-py, odd.dat with struct)
WRITTEN_BY_LLAMA = sorted({t[0] for t in TABLE} | {"smol-imatrix.gguf", "smol-imatrix-b.gguf",
                                                    "smol-imatrix-b-native.dat"})
ALL_FILES = sorted(p.name for p in DATA.iterdir() if p.suffix in (".dat", ".gguf"))
STATS = [("smol-imatrix-stats.txt", "smol-imatrix.gguf"), ("moe-a-stats.txt", "moe-a.gguf"),
         ("odd-stats.txt", "odd.dat"), ("moe-ba-stats.txt", "moe-ba.gguf")]


def llama_log(name: str) -> tuple[str, list[str]]:
    """(the info text without log prefixes, the error / warning lines) of a --show-statistics log."""
    return parse_llama_log(ref(name).read_text(encoding="utf-8"))



# ---------------------------------------------------------------- reading

def test_every_reference_file_is_listed() -> None:
    assert {t[0] for t in TABLE} | {i for t in TABLE for i in t[1]} | {"smol-imatrix-b-native.dat"} == set(ALL_FILES)


@pytest.mark.parametrize("name", [n for n in ALL_FILES if n.endswith(".gguf")])
def test_read_gguf_matches_gguf_py(name: str) -> None:
    """Sums, counts (lround of the stored floats) and metadata as gguf-py's reader sees them."""
    d = read_imatrix(ref(name))
    entries, kv = read_gguf_py(ref(name))
    assert not d.legacy and d.has_metadata and d.source == str(ref(name))
    assert d.datasets == kv["imatrix.datasets"]
    assert (d.chunk_count, d.chunk_size) == (kv["imatrix.chunk_count"], kv["imatrix.chunk_size"])
    assert list(d.entries) == sorted(entries)
    for n, (sums, counts) in entries.items():
        e = d.entries[n]
        assert e.sums.dtype == np.float32 and np.array_equal(e.sums.view(np.int32), sums.view(np.int32))
        assert e.counts.dtype == np.int64 and e.counts.tolist() == [int(np.floor(c + 0.5)) for c in counts]


def test_read_gguf_rounds_counts_like_lround() -> None:
    d = read_imatrix(ref("moe-a.gguf"))
    assert d.entries["blk.2.attn_q.weight"].counts.tolist() == [11]  # stored 10.5
    assert d.entries["blk.2.attn_k.weight"].counts.tolist() == [3]  # stored 2.5
    assert d.entries["blk.0.ffn_down_exps.weight"].counts.tolist() == [100, 0, 37, 2048]
    assert d.entries["blk.0.ffn_down_exps.weight"].sums.shape == (4, 64)
    assert d.datasets == ["a.txt", "b.txt"] and d.chunk_count == 5 and d.chunk_size == 512


@pytest.mark.parametrize("name", [n for n in ALL_FILES if n.endswith(".dat")])
def test_read_dat_matches_struct(name: str) -> None:
    """Legacy form: values as stored, counts [ncall], the trailer's chunk number and dataset, file order."""
    d = read_imatrix(ref(name))
    entries, chunk, dataset = parse_dat(ref_bytes(name))
    assert d.legacy and d.has_metadata and d.chunk_size == 0
    assert d.chunk_count == chunk and d.datasets == ([dataset.decode()] if dataset else [])
    assert [n.encode() for n in d.entries] == [n for n, _, _ in entries]
    for n, ncall, vals in entries:
        e = d.entries[n.decode()]
        assert e.counts.tolist() == [ncall] and e.sums.shape == (1, vals.size)
        assert np.array_equal(e.sums.reshape(-1).view(np.int32), vals.view(np.int32))


def test_read_odd_dat_keeps_its_quirks() -> None:
    d = read_imatrix(ref("odd.dat"))
    assert list(d.entries) == ["output.weight", "blk.0.attn_q.weight", "blk.0.ffn_down_exps.weight",
                               "blk.1.attn_q.weight", "blk.3.attn_k.weight"]  # unsorted, as in the file
    assert [int(e.counts[0]) for e in d.entries.values()] == [7, 5, 3, 3, 0]
    assert d.chunk_count == 9 and d.datasets == ["odd.txt"]


# ---------------------------------------------------------------- writing

@pytest.mark.parametrize("name", WRITTEN_BY_LLAMA)
def test_reencode_as_read_is_byte_identical(name: str) -> None:
    """Any file llama-imatrix wrote, read and written again in its own format, gives the same bytes."""
    d = read_imatrix(ref(name))
    raw = encode_dat(d) if d.legacy else encode_gguf(d, quiet)
    assert raw == ref_bytes(name)
    assert decode_imatrix(raw).entries.keys() == d.entries.keys()


def test_reencode_legacy_as_read_covers_unsorted_and_zero_ncall() -> None:
    assert encode_dat(read_imatrix(ref("odd.dat"))) == ref_bytes("odd.dat")


@pytest.mark.parametrize(("out", "inputs", "chunk"), TABLE, ids=[t[0] for t in TABLE])
def test_library_reproduces_llama_imatrix(out: str, inputs: list[str], chunk: int, tmp_path: Path) -> None:
    """combine (= llama-imatrix --in-file ...) then write gives llama-imatrix's output byte for byte."""
    c = combine([read_imatrix(ref(i)) for i in inputs], chunk)
    fmt = format_for_path(out)
    assert (encode_dat(c, quiet) if fmt == "dat" else encode_gguf(c, quiet)) == ref_bytes(out)
    assert write_imatrix(c, tmp_path / out, warn=quiet) == fmt
    assert (tmp_path / out).read_bytes() == ref_bytes(out)


@pytest.mark.parametrize(("out", "inputs", "chunk"), TABLE, ids=[t[0] for t in TABLE])
def test_cli_reproduces_llama_imatrix(out: str, inputs: list[str], chunk: int, tmp_path: Path) -> None:
    """`qtool imatrix convert IN OUT` / `merge A B -o OUT`, with -c only where llama-imatrix had one."""
    dst = tmp_path / out
    c_opt = [] if chunk == 512 else ["-c", str(chunk)]
    if len(inputs) == 1:
        args = ["imatrix", "convert", str(ref(inputs[0])), str(dst), *c_opt]
    else:
        args = ["imatrix", "merge", *[str(ref(i)) for i in inputs], "-o", str(dst), *c_opt]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert dst.read_bytes() == ref_bytes(out)
    assert "wrote" in r.stderr and r.stdout == ""


def test_smol_dat_gguf_dat_cycle_is_stable(tmp_path: Path) -> None:
    """conv.dat -> rt.gguf -> .dat gives conv.dat again (the shared vectors' smol-imatrix-rt.dat)."""
    rt = combine([read_imatrix(ref("smol-imatrix-rt.gguf"))], 512)
    assert encode_dat(rt, quiet) == ref_bytes("smol-imatrix-conv.dat")


def test_save_warnings_as_llama_imatrix() -> None:
    """save_imatrix / save_imatrix_legacy's messages on partial MoE data (text as llama-imatrix logs it)."""
    w = Warnings()
    encode_dat(combine([read_imatrix(ref("moe-a.gguf"))]), w)
    assert w == [
        "save_imatrix_legacy: entry '              blk.0.ffn_down_exps.weight' has partial data (75.00%)",
        "save_imatrix_legacy: entry '                blk.0.ffn_up_exps.weight' has no data - skipping",
        "save_imatrix_legacy: entry '              blk.1.ffn_down_exps.weight' has partial data (75.00%)",
        "save_imatrix_legacy: storing only 8 out of 9 entries",
    ]
    w = Warnings()
    encode_gguf(combine([read_imatrix(ref("moe-a.gguf"))]), w)
    assert w == [
        "save_imatrix: entry '              blk.0.ffn_down_exps.weight' has partial data (75.00%)",
        "save_imatrix: entry '                blk.0.ffn_up_exps.weight' has partial data (0.00%)",
        "save_imatrix: entry '              blk.1.ffn_down_exps.weight' has partial data (75.00%)",
    ]


# ---------------------------------------------------------------- --show-statistics

@pytest.mark.parametrize(("txt", "src"), STATS)
def test_statistics_text_matches_llama_imatrix(txt: str, src: str) -> None:
    """format_llama gives llama-imatrix's --show-statistics text exactly, warnings included."""
    info, errors = llama_log(txt)
    w = Warnings()
    assert format_llama(src, compute_statistics(read_imatrix(ref(src)), 512, w)) == info
    # llama-imatrix first tries a .dat file as GGUF (gguf_init_from_reader: invalid magic ...)
    assert w == [e for e in errors if not e.startswith("gguf_init_from_reader")]


@pytest.mark.parametrize(("txt", "src"), STATS)
def test_show_plain_matches_llama_imatrix(txt: str, src: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)  # llama-imatrix printed the name as given
    r = CliRunner().invoke(cli, ["imatrix", "show", src, "--plain"])
    assert r.exit_code == 0, r.output
    assert r.stdout == llama_log(txt)[0]


_NUM = re.compile(r"-?\d+\.\d+|-?nan|-?inf|\b\d+\b")


@pytest.mark.parametrize(("txt", "src"), STATS)
def test_statistics_numbers_to_printed_precision(txt: str, src: str) -> None:
    """Each printed figure parsed from the log equals qtool's figure rounded to the printed digits."""
    info, _ = llama_log(txt)
    rows = [ln.split("\t") for ln in info.splitlines() if ln.count("\t") == 12 and "Tensor" not in ln]
    stats = compute_statistics(read_imatrix(ref(src)), 512, quiet)
    assert len(rows) == len(stats) > 0
    for cols, s in zip(rows, stats, strict=True):
        assert (cols[0].strip(), cols[1].strip()) == (s.layer, s.tensor)
        nums = [float(c.strip().rstrip("%")) for c in cols[2:]]
        mine = [s.total, s.min, s.max, s.mean, s.stddev, 100 * s.active, s.elements, s.entropy, s.entropy_norm,
                100 * s.zd, s.cossim]
        digits = [2, 4, 4, 2, 2, 2, 0, 4, 2, 2, 4]
        for got, want, d in zip(nums, mine, digits, strict=True):
            assert abs(got - want) <= 0.5 * 10.0**-d + 1e-9 * abs(want), (s.name, got, want)
