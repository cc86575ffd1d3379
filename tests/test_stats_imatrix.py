"""stats --imatrix: the weights llama-quantize derives from GGUF and legacy .dat imatrix files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.gguf_io import GGUFModel, GGUFStreamWriter, OutTensor, kv_str
from qtool.quants import get_type
from qtool.stats.imatrix_weights import ImatrixError, load_weights, read_dat_imatrix, read_gguf_imatrix
from tests.stats_helpers import small_model


def write_gguf_imatrix(path: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """entries: name -> (sums float32[n_mats, n], counts float32[n_mats])."""
    outs, data = [], []
    for name, (sums, counts) in entries.items():
        outs.append(OutTensor(name + ".in_sum2", (sums.shape[1], sums.shape[0]), get_type("F32")))
        outs.append(OutTensor(name + ".counts", (1, counts.shape[0]), get_type("F32")))
        data += [sums.astype("<f4"), counts.astype("<f4")]
    with GGUFStreamWriter(path, [kv_str("general.type", "imatrix")], outs) as w:
        for d in data:
            w.write_tensor_chunk(d)
    return path


def write_dat_imatrix(path: Path, entries: dict[str, tuple[np.ndarray, int]]) -> Path:
    b = struct.pack("<i", len(entries))
    for name, (vals, ncall) in entries.items():
        nb = name.encode()
        b += struct.pack("<i", len(nb)) + nb + struct.pack("<ii", ncall, vals.size) + vals.astype("<f4").tobytes()
    b += struct.pack("<i", 10)  # last call; no dataset name
    path.write_bytes(b)
    return path


def test_gguf_imatrix_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    sums = rng.uniform(0, 50, (3, 8)).astype(np.float32)
    counts = np.array([10.4, 0.0, 3.0], np.float32)  # rounded to 10, 0 (-> weights 1), 3
    p = write_gguf_imatrix(tmp_path / "im.gguf", {"blk.0.ffn_up_exps.weight": (sums, counts)})
    w = read_gguf_imatrix(str(p))["blk.0.ffn_up_exps.weight"]
    assert w.dtype == np.float32 and w.shape == (3, 8)
    assert np.array_equal(w[0], sums[0] / np.float32(10)) and np.all(w[1] == 1)
    assert np.array_equal(w[2], sums[2] / np.float32(3))


def test_dat_imatrix_weights_and_errors(tmp_path: Path) -> None:
    vals = np.arange(1, 9, dtype=np.float32) * 7
    p = write_dat_imatrix(tmp_path / "im.dat", {"a.weight": (vals, 4), "b.weight": (vals, 0)})
    t = read_dat_imatrix(str(p))
    assert np.array_equal(t["a.weight"], vals / np.float32(4)) and np.array_equal(t["b.weight"], vals)
    (tmp_path / "bad.dat").write_bytes(p.read_bytes()[:30])
    with pytest.raises(ImatrixError, match="truncated"):
        read_dat_imatrix(str(tmp_path / "bad.dat"))


def test_stats_with_imatrix_cli(tmp_path: Path) -> None:
    model = small_model(tmp_path / "m.gguf")
    m = GGUFModel(model)
    rng = np.random.default_rng(2)
    entries = {t.name: (rng.uniform(0.1, 9, (1, t.n_per_row)).astype(np.float32), np.array([5.0], np.float32))
               for t in m.tensors if t.name.startswith("blk.") and len(t.shape) == 2}
    im = write_gguf_imatrix(tmp_path / "im.gguf", entries)
    fn = load_weights(str(im))
    t0 = next(t for t in m.tensors if t.name == "blk.0.ffn_up.weight")
    assert np.array_equal(fn(t0), entries[t0.name][0] / np.float32(5))
    assert fn(next(t for t in m.tensors if t.name == "token_embd.weight")) is None
    r = CliRunner().invoke(cli, ["stats", str(model), "--type", "bf16", "--imatrix", str(im), "--json",
                                 "--svd-rank", "4"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["imatrix"] == str(im)
    ty = doc["types"][0]
    by = {t["name"]: t for t in ty["tensors"]}
    assert by["token_embd.weight"]["weighted_rmse"] is None and not by["token_embd.weight"]["imatrix"]
    assert by["blk.0.ffn_up.weight"]["weighted_rmse"] > 0 and by["blk.0.ffn_up.weight"]["imatrix"]
    assert ty["weighted_rmse"] > 0 and ty["svd"][0]["l2qer_weighted_rmse"] <= ty["svd"][0]["weighted_rmse"] * 1.000001
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x05\x00")
    r = CliRunner().invoke(cli, ["stats", str(model), "--type", "bf16", "--imatrix", str(bad)])
    assert r.exit_code == 1 and "--imatrix" in r.output and "Traceback" not in r.output
