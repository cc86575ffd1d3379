"""`qtool imatrix convert / merge / show` end to end (CliRunner): outputs, messages, --json schema,
--sort, --per-layer, --plain, the chunk-size option, names that are not UTF-8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.imatrix import compute_statistics, read_imatrix
from qtool.imatrix.stats import layer_statistics
from tests.imatrix_helpers import dat_bytes, ref, ref_bytes

TENSOR_KEYS = {"name", "layer", "tensor", "block", "total", "min", "max", "mean", "stddev", "active", "elements",
               "entropy", "entropy_norm", "zd", "cossim", "n_mat", "n_mat_used"}
LAYER_KEYS = {"layer", "sum_act2", "zd", "cossim", "elements"}


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["imatrix", *args])
    assert "Traceback" not in r.output, r.output
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def show_json(*args: str) -> dict:
    code, out, _ = run("show", *args, "--json")
    assert code == 0
    return json.loads(out)


# ---------------------------------------------------------------- convert / merge

def test_convert_reports_what_it_wrote(tmp_path: Path) -> None:
    code, out, err = run("convert", str(ref("smol-imatrix.gguf")), str(tmp_path / "s.dat"))
    assert code == 0 and out == ""
    assert f"wrote {tmp_path / 's.dat'} (dat: 210 entries, 40 chunks of 512 tokens, datasets ['pydoc.txt'])" in err
    code, _, err = run("convert", str(ref("moe-a.gguf")), str(tmp_path / "a.dat"))
    assert code == 0 and "(dat: 8 entries, 4 chunks of 512 tokens, datasets ['b.txt'])" in err  # 9 entries, 2 names


def test_convert_to_option_overrides_extension(tmp_path: Path) -> None:
    code, _, _ = run("convert", str(ref("odd.dat")), str(tmp_path / "odd.imatrix"), "--to", "dat")
    assert code == 0 and (tmp_path / "odd.imatrix").read_bytes() == ref_bytes("odd-resave.dat")
    code, _, _ = run("convert", str(ref("odd.dat")), str(tmp_path / "odd.dat"), "--to", "gguf")
    assert code == 0 and (tmp_path / "odd.dat").read_bytes() == ref_bytes("odd-rt.gguf")


def test_convert_chunk_size_option(tmp_path: Path) -> None:
    code, _, _ = run("convert", str(ref("odd.dat")), str(tmp_path / "o.gguf"), "-c", "1000")
    assert code == 0 and (tmp_path / "o.gguf").read_bytes() == ref_bytes("odd-c1000.gguf")
    code, _, err = run("convert", str(ref("moe-a.gguf")), str(tmp_path / "a.dat"), "--chunk-size", "256")
    assert code == 0 and (tmp_path / "a.dat").read_bytes() == ref_bytes("moe-a-c256.dat")
    assert "chunk size (256) is not stored" in err


def test_merge_three_inputs_mixed(tmp_path: Path) -> None:
    """A chain of merges equals one merge of all inputs (what llama-imatrix --in-file x3 gives)."""
    code, _, err = run("merge", str(ref("odd.dat")), str(ref("moe-b.gguf")), str(ref("moe-a.gguf")),
                       "-o", str(tmp_path / "m.gguf"))
    assert code == 0, err
    m = read_imatrix(tmp_path / "m.gguf")
    assert m.datasets == ["odd.txt", "c.txt", "a.txt", "b.txt"]
    # blk.0.ffn_down_exps: odd (3 chunks -> 1536, one count), b (300 -> 1836, one count), then a's 4 experts
    assert m.entries["blk.0.ffn_down_exps.weight"].counts.tolist() == [1936, 1836, 1873, 3884]


def test_merge_single_input_is_a_conversion(tmp_path: Path) -> None:
    code, _, _ = run("merge", str(ref("moe-a.gguf")), "-o", str(tmp_path / "x.gguf"))
    assert code == 0 and (tmp_path / "x.gguf").read_bytes() == ref_bytes("moe-a-resave.gguf")


def test_merge_needs_output_and_inputs(tmp_path: Path) -> None:
    code, _, err = run("merge", str(ref("moe-a.gguf")))
    assert code == 2 and "-o" in err
    code, _, err = run("merge", "-o", str(tmp_path / "x.gguf"))
    assert code == 2 and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- show

def test_show_json_schema() -> None:
    doc = show_json(str(ref("moe-a.gguf")))
    assert set(doc) == {"file", "tensors", "layers", "summary"} and doc["file"] == str(ref("moe-a.gguf"))
    assert len(doc["tensors"]) == 8  # blk.0.ffn_up_exps has no data
    for t in doc["tensors"]:
        assert set(t) == TENSOR_KEYS
        assert isinstance(t["elements"], int) and isinstance(t["block"], int)
        assert 0 <= t["active"] <= 1 and 0 <= t["zd"] <= 1 and t["n_mat_used"] <= t["n_mat"]
    for ls in doc["layers"]:
        assert set(ls) == LAYER_KEYS
    assert [ls["layer"] for ls in doc["layers"]] == [0, 1, 2]
    assert doc["summary"] == {"format": "gguf", "entries": 9, "matrices": 19, "datasets": ["a.txt", "b.txt"],
                              "chunk_count": 5, "chunk_size": 512}
    down = next(t for t in doc["tensors"] if t["name"] == "blk.0.ffn_down_exps.weight")
    assert (down["n_mat"], down["n_mat_used"], down["elements"]) == (4, 3, 192)


def test_show_json_values_match_library_and_llama_print() -> None:
    doc = show_json(str(ref("smol-imatrix.gguf")))
    stats = compute_statistics(read_imatrix(ref("smol-imatrix.gguf")))
    assert [t["name"] for t in doc["tensors"]] == [s.name for s in stats] and len(stats) == 210
    assert all(t["total"] == s.total and t["cossim"] == s.cossim for t, s in zip(doc["tensors"], stats, strict=True))
    first = doc["tensors"][0]  # llama-imatrix: "18 attn_k 95.55 0.0071 53.0563 0.17 2.22 100.00% 576 4.4070 ..."
    assert (first["layer"], first["tensor"], round(first["total"], 2), first["elements"]) == ("18", "attn_k", 95.55,
                                                                                              576)
    assert [ls["layer"] for ls in doc["layers"]] == list(range(30))


def test_show_json_nan_is_null(tmp_path: Path) -> None:
    """One-element tensors: E (norm) is 0/0 (llama prints -nan); JSON gets null."""
    p = tmp_path / "one.dat"
    p.write_bytes(dat_bytes([("blk.0.ffn_up.weight", 1, [0.5])], (1, "d")))
    doc = show_json(str(p))
    assert doc["tensors"][0]["entropy_norm"] is None and doc["tensors"][0]["elements"] == 1
    code, out, _ = run("show", str(p), "--plain")
    assert code == 0 and "  -nan%" in out


def test_show_per_layer() -> None:
    doc = show_json(str(ref("moe-a.gguf")), "--per-layer")
    assert doc["tensors"] == [] and len(doc["layers"]) == 3
    code, out, _ = run("show", str(ref("moe-a.gguf")), "--per-layer", "--plain")
    assert code == 0 and "Computing statistics" not in out and "Computing weighted average" in out
    assert "    0\t        180.56\t   10.1562%\t0.0000\n" in out
    code, out, _ = run("show", str(ref("moe-a.gguf")), "--per-layer")
    assert code == 0 and "Weighted averages per layer" in out and "ffn_down_exps" not in out
    assert "180.56" in out and "10.1562%" in out


def test_show_table() -> None:
    code, out, err = run("show", str(ref("moe-a.gguf")))
    assert code == 0
    assert "8 tensors" in out and "ffn_down_exps" in out and "218.28" in out and "84.24%" in out
    assert "Weighted averages per layer" in out
    assert "all counts are zero for tensor blk.0.ffn_up_exps.weight" in err


@pytest.mark.parametrize("key", ["sum", "min", "max", "mean", "std", "active", "n", "entropy", "enorm", "zd",
                                 "cossim"])
def test_show_sort_by_figure(key: str) -> None:
    field = {"sum": "total", "std": "stddev", "n": "elements", "enorm": "entropy_norm"}.get(key, key)
    for path in ("smol-imatrix.gguf", "moe-ba.gguf"):
        vals = [t[field] for t in show_json(str(ref(path)), "--sort", key)["tensors"]]
        assert vals == sorted(vals, reverse=True)
        rev = [t[field] for t in show_json(str(ref(path)), "--sort", key, "--reverse")["tensors"]]
        assert rev == vals[::-1]


def test_show_sort_name_layer_default() -> None:
    names = [t["name"] for t in show_json(str(ref("moe-ba.gguf")), "--sort", "name")["tensors"]]
    assert names == sorted(names)
    rows = show_json(str(ref("moe-ba.gguf")), "--sort", "layer")["tensors"]
    assert [(t["block"] < 0, t["block"]) for t in rows] == sorted((t["block"] < 0, t["block"]) for t in rows)
    assert rows[-1]["name"] == "output.weight"  # no layer: last
    default = [t["name"] for t in show_json(str(ref("moe-ba.gguf")))["tensors"]]
    kinds = [t["tensor"] for t in show_json(str(ref("moe-ba.gguf")))["tensors"]]
    assert kinds == sorted(kinds) and default[0] == "blk.2.attn_k.weight"  # llama's order: kind, then Σ(Act²) desc
    code, _, err = run("show", str(ref("moe-ba.gguf")), "--sort", "bogus")
    assert code == 2 and "bogus" in err


def test_show_layer_summary_weighted_by_n() -> None:
    stats = compute_statistics(read_imatrix(ref("moe-a.gguf")))
    layers = {ls.layer: ls for ls in layer_statistics(stats)}
    l1 = [s for s in stats if s.block == 1]
    n = sum(s.elements for s in l1)
    assert layers[1].elements == n == 64 + 192 + 64
    assert layers[1].sum_act2 == pytest.approx(sum(s.elements * s.total for s in l1) / n, rel=1e-6)
    assert layers[1].cossim == pytest.approx(sum(s.elements * s.cossim for s in l1) / n, rel=1e-6)


def test_show_legacy_chunk_size_option(tmp_path: Path) -> None:
    """Legacy input is scaled by the chunk size first: the means do not change, so neither do the figures."""
    a = show_json(str(ref("odd.dat")))["tensors"]
    b = show_json(str(ref("odd.dat")), "-c", "256")["tensors"]
    assert [t["name"] for t in a] == [t["name"] for t in b]
    assert all(x["total"] == pytest.approx(y["total"], rel=1e-6) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- names that are not UTF-8

@pytest.fixture
def non_utf8(tmp_path: Path) -> Path:
    p = tmp_path / "nu.dat"
    p.write_bytes(dat_bytes([(b"blk.0.\xff\xfe.weight", 3, np.float32([1, 2, 3, 4])),
                             (b"blk.1.\xff\xfe.weight", 3, np.float32([1, 2, 3, 5]))], (3, b"d\xe9.txt")))
    return p


def test_non_utf8_names_round_trip(non_utf8: Path, tmp_path: Path) -> None:
    code, _, _ = run("convert", str(non_utf8), str(tmp_path / "nu.gguf"))
    assert code == 0
    code, _, _ = run("convert", str(tmp_path / "nu.gguf"), str(tmp_path / "nu2.dat"))
    assert code == 0 and (tmp_path / "nu2.dat").read_bytes() == non_utf8.read_bytes()


def test_non_utf8_names_show(non_utf8: Path) -> None:
    """Plain text keeps the bytes (as llama-imatrix prints them); JSON escapes them; the table shows \\xff."""
    r = CliRunner().invoke(cli, ["imatrix", "show", str(non_utf8), "--plain"])
    assert r.exit_code == 0, r.output
    assert b"\t\xff\xfe                " in r.stdout_bytes
    r = CliRunner().invoke(cli, ["imatrix", "show", str(non_utf8), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout_bytes)
    assert doc["tensors"][0]["name"].encode("utf-8", "surrogateescape") in (b"blk.0.\xff\xfe.weight",
                                                                             b"blk.1.\xff\xfe.weight")
    assert doc["summary"]["datasets"] == ["d\udce9.txt"]
    r = CliRunner().invoke(cli, ["imatrix", "show", str(non_utf8)])
    assert r.exit_code == 0, r.output
    assert "\\xff\\xfe" in r.stdout
