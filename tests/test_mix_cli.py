"""`qtool mix show` / `qtool mix ftypes` on a small GGUF file written here."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer llama with an untied output, rows of 256 (ffn_down rows of 96: fallbacks)."""
    path = tmp_path_factory.mktemp("mix") / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in (("llama.block_count", 2), ("llama.attention.head_count", 4),
                 ("llama.attention.head_count_kv", 1), ("llama.embedding_length", 256)):
        w.add_uint32(k, v)
    w.add_file_type(1)
    ts = [("token_embd.weight", (256, 64)), ("output_norm.weight", (256,)), ("output.weight", (256, 64))]
    for i in range(2):
        p = f"blk.{i}."
        ts += [(p + "attn_norm.weight", (256,)), (p + "attn_q.weight", (256, 256)), (p + "attn_k.weight", (256, 64)),
               (p + "attn_v.weight", (256, 64)), (p + "attn_output.weight", (256, 256)),
               (p + "ffn_up.weight", (256, 96)), (p + "ffn_down.weight", (96, 256))]
    for name, ne in ts:
        dt = np.float32 if len(ne) == 1 else np.float16
        w.add_tensor(name, np.zeros(tuple(reversed(ne)), dtype=dt))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_show_json(model: Path) -> None:
    r = CliRunner().invoke(cli, ["mix", "show", str(model), "q4_k_m", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    types = {t["name"]: t["type"] for t in d["tensors"]}
    assert types["output.weight"] == "Q6_K"
    assert types["blk.0.ffn_down.weight"] == "Q5_0"  # Q4_K, rows of 96 -> Q5_0
    assert types["blk.1.ffn_down.weight"] == "Q8_0"  # last 1/8: Q6_K -> Q8_0
    assert d["ftype"] == "Q4_K_M" and d["file_type"] == 15
    assert d["totals"]["fallbacks"] == sum(t["fallback"] for t in d["tensors"]) > 0
    assert [t["name"] for t in d["tensors"]][:3] == ["output.weight", "output_norm.weight", "token_embd.weight"]


def test_show_options_and_errors(model: Path, tmp_path: Path) -> None:
    run = CliRunner().invoke
    r = run(cli, ["mix", "show", str(model), "Q4_K_M", "--json", "--tensor-type", "attn_q=q8_0",
                  "--output-tensor-type", "q4_0", "--pure"])
    d = {t["name"]: t for t in json.loads(r.output)["tensors"]}
    assert d["blk.1.attn_q.weight"]["type"] == "Q8_0"
    assert d["blk.1.attn_q.weight"]["reason"] == "--tensor-type attn_q=q8_0"
    assert d["output.weight"]["type"] == "Q4_0"
    assert d["blk.1.attn_v.weight"]["type"] == "Q4_K"
    recipe = tmp_path / "r.toml"
    recipe.write_text('base = "Q5_K_S"\n[[rules]]\npattern = "attn_v"\ntype = "q8_0"\n')
    r = run(cli, ["mix", "show", str(model), "--recipe", str(recipe), "--json"])
    d = json.loads(r.output)
    assert d["ftype"] == "Q5_K_S"
    assert {t["type"] for t in d["tensors"] if "attn_v" in t["name"]} == {"Q8_0"}
    r = run(cli, ["mix", "show", str(model), "Q4_K_X"])
    assert r.exit_code == 1 and "invalid ftype 'Q4_K_X'" in r.output and "Q4_K_M" in r.output
    r = run(cli, ["mix", "show", str(model), "Q4_K_M", "--tensor-type", "attn_q"])
    assert r.exit_code == 2 and "malformed tensor type" in r.output
    r = run(cli, ["mix", "show", str(model), "Q4_K_M", "--output-tensor-type", "q9_9"])
    assert r.exit_code == 2 and "invalid ggml_type" in r.output
    r = run(cli, ["mix", "show", str(tmp_path / "r.toml"), "Q4_K_M"])
    assert r.exit_code == 1
    r = run(cli, ["mix", "show", str(model), "Q4_K_M"])
    assert r.exit_code == 0 and "17 tensors, 14 converted, 2 fallback(s)" in " ".join(r.output.split())


def test_ftypes() -> None:
    r = CliRunner().invoke(cli, ["mix", "ftypes", "--json"])
    names = [f["name"] for f in json.loads(r.output)["ftypes"]]
    assert names[:3] == ["Q1_0", "Q2_0", "Q4_0"] and "COPY" in names
    r = CliRunner().invoke(cli, ["mix", "ftypes", "--flavour", "ik", "--json"])
    assert "IQ4_KS" in [f["name"] for f in json.loads(r.output)["ftypes"]]


@pytest.mark.skipif(shutil.which("qtool") is None, reason="qtool entry point not installed")
def test_entry_point(model: Path) -> None:
    p = subprocess.run(["qtool", "mix", "show", str(model), "Q8_0", "--json"], capture_output=True, text=True,
                       check=True)
    assert json.loads(p.stdout)["totals"]["tensors"] == 17
