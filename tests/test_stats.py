"""qtool stats: metrics against hand-computed values and quantize-stats' scalar loop, the report
runner (selection, layouts, threads, imatrix weighting), JSON / CSV / ik output, plots."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.quants import dequantize, get_type, quantize
from qtool.stats import ErrorStats, run_stats
from qtool.stats import report as report_mod
from qtool.stats.metrics import HISTOGRAM_BUCKETS, normalized_weights
from qtool.stats.plot import POINTS_KEY, Point, plot_png, plot_text, report_points
from tests.stats_helpers import quantizable, small_model, write_gguf

REPO = Path(__file__).resolve().parents[1]


# --- metrics ---------------------------------------------------------------------------------

def test_metrics_hand_computed() -> None:
    x = np.array([[1, 2], [3, 4]], np.float32)
    q = np.array([[1, 2.5], [2, 4]], np.float32)  # errors 0, -0.5, 1, 0
    s = ErrorStats()
    s.update(x, q, normalized_weights(np.array([1.0, 3.0])))  # -> [0.5, 1.5]
    assert s.n == 4
    assert s.rmse == pytest.approx(math.sqrt(1.25 / 4), rel=1e-15)
    assert s.rms_x == pytest.approx(math.sqrt(30 / 4), rel=1e-15)
    assert s.rel_rmse == pytest.approx(math.sqrt(1.25 / 30), rel=1e-15)
    assert s.max_error == 1.0 and s.rel_max_error == pytest.approx(1 / math.sqrt(7.5))
    # |error| 0, 0 -> bucket 0; 0.5, 1 -> far past 0.03 -> last bucket
    assert s.hist[0] == 2 and s.hist[HISTOGRAM_BUCKETS - 1] == 2 and s.hist.sum() == 4
    assert s.median == pytest.approx(0.0002) and s.p95 == pytest.approx(0.03)
    assert s.cosine == pytest.approx(28 / math.sqrt(30 * 27.25), rel=1e-15)
    # weighted: (1.5 * 0.25 + 0.5 * 1) / (0.5 + 1.5 + 0.5 + 1.5)
    assert s.weighted_rmse == pytest.approx(math.sqrt(0.875 / 4), rel=1e-15)
    assert ErrorStats().weighted_rmse is None


def _ik_scalar(x: np.ndarray, q: np.ndarray) -> tuple[float, float, float, list[int]]:
    """quantize-stats' update_error_stats, element by element with Python floats (= C doubles)."""
    total = mx = sx2 = 0.0
    hist = [0] * 150
    for xi, qi in zip(x.reshape(-1), q.reshape(-1), strict=True):
        diff = float(np.float32(xi) - np.float32(qi))
        total += diff * diff
        mx = max(abs(diff), mx)
        sx2 += float(np.float32(xi) * np.float32(xi))
        hist[max(min(int(math.floor(abs(diff) / 0.03 * 150)), 149), 0)] += 1
    return total, mx, sx2, hist


def _ik_quantile(hist: list[int], quantile: float) -> float:
    total = float(sum(hist))
    acc = 0.0
    for i, h in enumerate(hist):
        acc += h
        if acc >= total * quantile:
            return (i + 1) * 0.03 / 150
    return math.inf


def test_histogram_binning_matches_quantize_stats_loop() -> None:
    # errors on and next to every bucket edge, plus random ones
    edges = np.array([k * 0.0002 for k in range(0, 160)], np.float32)
    d = np.concatenate([edges, np.nextafter(edges, np.float32(1)), np.nextafter(edges, np.float32(-1)),
                        np.random.default_rng(1).exponential(0.004, 2000).astype(np.float32)])
    x = (np.random.default_rng(2).standard_normal(d.size) * 0.02).astype(np.float32)
    q = (x - d * np.sign(np.random.default_rng(3).standard_normal(d.size))).astype(np.float32)
    s = ErrorStats()
    s.update(x[:1000], q[:1000])
    s2 = ErrorStats()
    s2.update(x[1000:], q[1000:])
    s.merge(s2)
    total, mx, sx2, hist = _ik_scalar(x, q)
    assert s.hist.tolist() == hist
    assert s.max_error == mx
    assert s.sum_err2 == pytest.approx(total, rel=1e-13)
    assert s.sum_x2 == pytest.approx(sx2, rel=1e-13)
    for qq in (0.5, 0.95, 0.99):
        assert s.quantile(qq) == _ik_quantile(hist, qq)


def test_ik_line_format() -> None:
    s = ErrorStats()
    s.update(np.array([0.1, -0.2, 0.3], np.float32), np.array([0.1, -0.1, 0.3], np.float32))
    line = s.ik_line("q4_0")
    assert line.startswith("q4_0" + " " * 36 + ": rmse ")
    rmse = math.sqrt(float(np.float32(-0.2) - np.float32(-0.1)) ** 2 / 3)
    assert f"rmse {rmse:.8f}, " in line and "95pct<0.0300,  median<0.0002" in line


# --- the runner ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_model(tmp_path_factory.mktemp("stats") / "small.gguf")


def _types(*names: str):
    return [get_type(n) for n in names]


def test_selection_and_json_shape(model: Path) -> None:
    rep = run_stats(str(model), _types("F16", "BF16"))
    doc = rep.to_json()
    assert doc["model"] == str(model) and doc["reference"] == "original"
    assert [t["type"] for t in doc["types"]] == ["f16", "bf16"]
    names = [t["name"] for t in doc["types"][0]["tensors"]]
    # norms (1-D) are never tested, as in quantize-stats; file order is kept
    assert names == ["token_embd.weight"] + [f"blk.{i}.{n}.weight" for i in range(2)
                                             for n in ("attn_q", "attn_k", "ffn_up", "ffn_down")]
    t = doc["types"][1]
    for k in ("type", "bpw", "rmse", "rel_rmse", "max_error", "p95", "median", "cosine", "weighted_rmse",
              "tensors"):
        assert k in t
    assert t["bpw"] == 16.0 and t["weighted_rmse"] is None
    for k in ("name", "n", "rmse", "max_error", "rel_rmse", "p95", "median", "cosine", "bpw", "layout"):
        assert k in t["tensors"][0]
    json.dumps(doc)  # serialisable
    # F16 -> F16 is exact; F32 -> F16 is not; totals are element-weighted
    f16 = {x["name"]: x for x in doc["types"][0]["tensors"]}
    assert f16["blk.0.attn_q.weight"]["rmse"] == 0.0 and f16["blk.0.ffn_up.weight"]["rmse"] > 0
    n = sum(x["n"] for x in f16.values())
    assert doc["types"][0]["n"] == n
    mse = sum(x["rmse"] ** 2 * x["n"] for x in f16.values()) / n
    assert doc["types"][0]["rmse"] == pytest.approx(math.sqrt(mse), rel=1e-12)


def test_round_trip_figures_match_direct_computation(model: Path) -> None:
    """The report's per-tensor figures equal quantize -> dequantize done by hand."""
    from qtool.gguf_io import GGUFModel

    names = quantizable("Q8_0", "Q4_0") or ["BF16"]
    rep = run_stats(str(model), _types(*names), include=[r"ffn_up"])
    m = GGUFModel(model)
    t = next(x for x in m.tensors if x.name == "blk.1.ffn_up.weight")
    x = m.tensor_rows(t, 0, t.n_rows).view("<f4").reshape(t.n_rows, t.n_per_row)
    for tr in rep.types:
        got = next(r for r in tr.tensors if r.name == t.name)
        q = dequantize(quantize(x, tr.qtype), tr.qtype, t.n_per_row)
        d = (x - q).astype(np.float64)
        assert got.stats.rmse == pytest.approx(math.sqrt((d * d).mean()), rel=1e-12)
        assert got.stats.max_error == np.abs(d).max()
        assert got.bpw == pytest.approx(tr.qtype.bpw)


def test_include_exclude(model: Path) -> None:
    rep = run_stats(str(model), _types("BF16"), include=[r"attn_", "token"], exclude=[r"attn_k"])
    assert [t.name for t in rep.types[0].tensors] == ["token_embd.weight", "blk.0.attn_q.weight",
                                                      "blk.1.attn_q.weight"]
    with pytest.raises(report_mod.StatsError, match="invalid include regex"):
        run_stats(str(model), _types("BF16"), include=["("])
    with pytest.raises(report_mod.StatsError, match="no tensor selected"):
        run_stats(str(model), _types("BF16"), include=["nothing-matches"])


def test_quantized_source_is_dequantized_reference(tmp_path: Path) -> None:
    import gguf

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((8, 64)) * 0.1).astype(np.float32)
    raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)  # written by the gguf package
    p = write_gguf(tmp_path / "q.gguf", {"blk.0.attn_q.weight": ((64, 8), "Q8_0", raw)})
    rep = run_stats(str(p), _types("F16"))
    assert rep.reference == "dequantized" and rep.to_json()["source_types"] == {"q8_0": 1}
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0).reshape(8, 64)
    d = (ref - ref.astype(np.float16).astype(np.float32)).astype(np.float64)
    assert rep.types[0].total.rmse == pytest.approx(math.sqrt((d * d).mean()), rel=1e-12)


def test_flat_layout_like_quantize_stats(tmp_path: Path) -> None:
    """Row length not a multiple of the block: quantize-stats quantizes the flat array."""
    names = quantizable("Q4_0", "Q4_K", "Q5_K", "Q2_K")
    if not names:
        pytest.skip("no block type implemented yet")
    qt = get_type(names[0])
    bs = qt.block_size
    n = bs + bs // 2  # 1.5 blocks per row
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((64, n)) * 0.05).astype(np.float32)
    p = write_gguf(tmp_path / "f.gguf", {"blk.0.attn_q.weight": ((n, 64), "F32", x)})
    rep = run_stats(str(p), [qt])
    tr = rep.types[0].tensors[0]
    assert tr.layout == "flat"
    q = dequantize(quantize(x.reshape(-1, bs), qt), qt, bs).reshape(64, n)
    d = (x - q).astype(np.float64)
    assert tr.stats.sum_err2 == pytest.approx(float((d * d).sum()), rel=1e-12)
    assert tr.stats.max_error == np.abs(d).max()
    assert tr.bits == 64 * n // bs * qt.type_size * 8
    # with an imatrix the real rows are needed: skipped with a reason
    rep = run_stats(str(p), [qt], weights_fn=lambda t: np.ones(t.n_per_row, np.float32))
    assert rep.types[0].tensors == [] and "not a multiple" in rep.types[0].skipped[0][1]


def test_ik_chunks_layout_equals_rows_for_block_local_types(model: Path) -> None:
    names = quantizable("Q8_0", "Q4_0") or ["BF16"]
    a = run_stats(str(model), _types(*names))
    b = run_stats(str(model), _types(*names), ik_chunks=True)
    assert {t.layout for tr in b.types for t in tr.tensors} == {"chunks"}
    for ta, tb in zip(a.types, b.types, strict=True):
        assert ta.total.hist.tolist() == tb.total.hist.tolist()
        assert ta.total.sum_err2 == pytest.approx(tb.total.sum_err2, rel=1e-12)
        assert ta.bits == tb.bits


@pytest.mark.parametrize("flavour", ["mainline", "ik"])
def test_ik_chunks_use_quantize_stats_row_quantizer_for_iq4_nl(model: Path, flavour: str) -> None:
    """--ik-chunks measures IQ4_NL with quantize_row_iq4_nl_ref (as llama-quantize-stats does),
    the default layout with ggml_quantize_chunk's quantizer (as llama-quantize writes)."""
    from qtool.gguf_io import GGUFModel
    from qtool.quants.rowref import quantize_row_ref

    qt = get_type("IQ4_NL")
    rows = run_stats(str(model), [qt], include=[r"blk\.0\.ffn_up"], flavour=flavour)
    chunks = run_stats(str(model), [qt], include=[r"blk\.0\.ffn_up"], flavour=flavour, ik_chunks=True)
    m = GGUFModel(model)
    t = next(x for x in m.tensors if x.name == "blk.0.ffn_up.weight")
    x = m.tensor_rows(t, 0, t.n_rows).view("<f4").reshape(t.n_rows, t.n_per_row)
    flat = x.reshape(1, -1)  # smaller than one 16384-value chunk: one row
    for rep, q in ((rows, quantize(x, qt, flavour=flavour)), (chunks, quantize_row_ref(flat, "IQ4_NL", flavour))):
        d = (x - dequantize(q, qt, q.shape[1] // 18 * 32).reshape(x.shape)).astype(np.float64)
        got = rep.types[0].tensors[0].stats
        assert got.rmse == pytest.approx(math.sqrt((d * d).mean()), rel=1e-12)
    assert rows.types[0].tensors[0].stats.rmse != chunks.types[0].tensors[0].stats.rmse


def test_threads_do_not_change_results(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_mod, "SLAB_ELEMENTS", 1024)  # many slabs, and enough work for a pool
    one = run_stats(str(model), _types("BF16", "F16"), svd_ranks=[2])
    two = run_stats(str(model), _types("BF16", "F16"), svd_ranks=[2], threads=2)
    assert json.dumps(one.to_json(per_layer=True, histogram=True)) == json.dumps(
        two.to_json(per_layer=True, histogram=True))


def test_imatrix_weighted_rmse(model: Path) -> None:
    rng = np.random.default_rng(11)
    w = {128: rng.uniform(0, 4, 128).astype(np.float32), 64: rng.uniform(0, 4, 64).astype(np.float32)}
    rep = run_stats(str(model), _types("BF16"), weights_fn=lambda t: None if "token" in t.name else w[t.n_per_row],
                    imatrix_path="fake.dat", include=["ffn_down", "token"])
    from qtool.gguf_io import GGUFModel

    m = GGUFModel(model)
    by = {t.name: t for t in rep.types[0].tensors}
    assert by["token_embd.weight"].stats.weighted_rmse is None and not by["token_embd.weight"].weighted
    num = den = 0.0
    for info in m.tensors:
        if "ffn_down" not in info.name:
            continue
        x = m.tensor_rows(info, 0, info.n_rows).view("<f2").astype(np.float32).reshape(info.n_rows, -1)
        q = dequantize(quantize(x, "BF16"), "BF16", info.n_per_row)
        e2 = (x - q).astype(np.float64) ** 2
        wn = w[128] / w[128].astype(np.float64).mean()
        assert by[info.name].stats.weighted_rmse == pytest.approx(
            math.sqrt((e2 * wn).sum() / (wn.sum() * info.n_rows)), rel=1e-12)
        num += (e2 * wn).sum()
        den += wn.sum() * info.n_rows
    assert rep.types[0].total.weighted_rmse == pytest.approx(math.sqrt(num / den), rel=1e-12)


def test_per_layer_and_histogram_json(model: Path) -> None:
    doc = run_stats(str(model), _types("BF16")).to_json(per_layer=True, histogram=True)
    t = doc["types"][0]
    assert [x["layer"] for x in t["layers"]] == ["other", "blk.0", "blk.1"]
    assert sum(x["n"] for x in t["layers"]) == t["n"]
    assert len(t["histogram"]["counts"]) == 150 and sum(t["histogram"]["counts"]) == t["n"]


# --- plots -----------------------------------------------------------------------------------

def _png_text_chunks(data: bytes) -> dict[str, str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"tEXt":
            k, v = body.split(b"\0", 1)
            out[k.decode()] = v.decode("latin-1")
        if kind == b"IHDR":
            out["_size"] = "{}x{}".format(*struct.unpack(">II", body[:8]))
        pos += 12 + length
    return out


def test_plot_png_has_one_point_per_type(model: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rep = run_stats(str(model), _types("BF16", "F16"), svd_ranks=[2, 4])
    pts = report_points(rep)
    assert [p.label for p in pts] == ["bf16", "f16", "bf16+r2", "bf16+r4", "f16+r2", "f16+r4"]
    out = tmp_path / "plot.png"
    n = plot_png(pts, str(out))
    chunks = _png_text_chunks(out.read_bytes())
    assert n == 6 and chunks[POINTS_KEY] == "6" and chunks["_size"] == "800x500"
    import matplotlib.image

    img = matplotlib.image.imread(str(out))
    assert img.shape[:2] == (500, 800)


def test_plot_text() -> None:
    pts = [Point("q4_0", 4.5, 0.1, "type"), Point("q8_0", 8.5, 0.004, "type"), Point("q4_0+r8", 5.0, 0.09, "low-rank")]
    txt = plot_text(pts)
    assert "a q4_0" in txt and "b q8_0" in txt and "A q4_0+r8" in txt
    grid = [ln.split("|", 1)[1] for ln in txt.splitlines() if "|" in ln]
    assert sum(row.count("a") + row.count("b") + row.count("A") for row in grid) == 3
    assert grid[0].startswith("a")  # the y-axis fits the data: q4_0 (the largest error) on the top row, left
    assert grid[-1].rstrip().endswith("b")  # q8_0 (the smallest) on the bottom row, right
    assert "(nothing to plot" in plot_text([])


# --- CLI -------------------------------------------------------------------------------------

def test_cli_json_csv_ik(model: Path) -> None:
    r = CliRunner().invoke(cli, ["stats", str(model), "--type", "bf16", "--type", "F16", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert [t["type"] for t in doc["types"]] == ["bf16", "f16"]
    r = CliRunner().invoke(cli, ["stats", str(model), "--type", "bf16,f16", "--csv", "--svd-rank", "2"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert len(rows) == 2 * (9 + 1)
    assert rows[9]["tensor"] == "*total*" and float(rows[9]["rmse"]) == pytest.approx(doc["types"][0]["rmse"])
    assert "svd_r2_rmse" in rows[0]
    r = CliRunner().invoke(cli, ["stats", str(model), "--type", "bf16", "--ik", "--per-tensor"])
    lines = r.output.splitlines()
    assert r.exit_code == 0 and lines[0].startswith("bf16::token_embd.weight") and lines[1] == lines[0]
    # quantize-stats' total counts the tied token_embd twice (no output.weight in this model)
    rep = run_stats(str(model), _types("BF16"))
    tot = ErrorStats()
    tot.merge(rep.types[0].total)
    tot.merge(rep.types[0].tensors[0].stats)
    assert lines[-1] == tot.ik_line("bf16") and len(lines) == 9 + 1 + 1


def test_ggml_type_names() -> None:
    from qtool.commands.stats_cmd import ggml_type_name

    assert [ggml_type_name(get_type(n)) for n in ("Q4_K", "Q8_K64", "IQ4_XS", "IQ4_K", "Q4_0", "BF16")] == [
        "q4_K", "q8_K64", "iq4_xs", "iq4_k", "q4_0", "bf16"]


def test_cli_tables_and_errors(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = CliRunner().invoke(cli, ["stats", str(model), "--type", "bf16", "--per-layer", "--per-tensor", "--histogram",
                                 "--svd-rank", "1", "--plot", "-"])
    assert r.exit_code == 0, r.output
    assert "Totals per type" in r.output and "bits per weight" in r.output and "blk.1" in r.output
    r = CliRunner().invoke(cli, ["stats", str(model), "--type", "nonsense"])
    assert r.exit_code == 2 and "unknown type" in r.output
    r = CliRunner().invoke(cli, ["stats", str(model), "--type", "bf16", "--svd-rank", "x"])
    assert r.exit_code == 2 and "not an integer" in r.output
    r = CliRunner().invoke(cli, ["stats", str(model), "--type", "bf16", "--include", "("])
    assert r.exit_code == 1 and "invalid include regex" in r.output
    r = CliRunner().invoke(cli, ["stats", str(tmp_path / "missing.gguf")])
    assert r.exit_code == 2
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 40)
    r = CliRunner().invoke(cli, ["stats", str(bad), "--type", "bf16"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extra were not installed
    r = CliRunner().invoke(cli, ["stats", str(model), "--type", "bf16", "--plot", str(tmp_path / "x.png")])
    assert r.exit_code == 1 and "pip install" in r.output


def test_cli_subprocess(model: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "qtool", "stats", str(model), "--type", "bf16", "--json"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["types"][0]["type"] == "bf16"
    assert p.stderr == ""  # no progress bar when stderr is not a terminal
