"""Imatrix pre-flight: `qtool imatrix check` and the check `qtool quantize --imatrix` runs before any
tensor is processed (missing tensors, unrouted experts with counts, size mismatches, types that
require an imatrix), on the llama-imatrix fixtures of tests/data/imatrix and tiny models."""

from __future__ import annotations

import json
import lzma
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from qtool.api import QuantizeError, imatrix_check
from qtool.cli import cli
from qtool.imatrix import read_imatrix, write_imatrix

DATA = Path(__file__).parent / "data"
MOE_A = str(DATA / "imatrix" / "moe-a.gguf")  # per-expert counts [100 0 37 2048], [0 0 0 0], [512 600 0 1]
MOE_A_DAT = str(DATA / "imatrix" / "moe-a-conv.dat")
IM256 = str(DATA / "quantize" / "tiny-256.imatrix.gguf")
IM320 = str(DATA / "quantize" / "tiny-320.imatrix.gguf")


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer 4-expert qwen3moe whose tensors match moe-a.gguf's entries (rows of 64)."""
    path = tmp_path_factory.mktemp("moe") / "moe.gguf"
    w = gguf.GGUFWriter(str(path), "qwen3moe")
    for k, v in (("qwen3moe.block_count", 2), ("qwen3moe.expert_count", 4), ("qwen3moe.expert_used_count", 2),
                 ("qwen3moe.attention.head_count", 4), ("qwen3moe.attention.head_count_kv", 4),
                 ("qwen3moe.embedding_length", 64)):
        w.add_uint32(k, v)
    w.add_file_type(1)
    ts: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (64, 32)), ("output_norm.weight", (64,))]
    for i in range(2):
        p = f"blk.{i}."
        ts += [(p + "attn_norm.weight", (64,)), (p + "attn_q.weight", (64, 64)),
               (p + "ffn_gate_inp.weight", (64, 4)), (p + "ffn_down_exps.weight", (64, 32, 4)),
               (p + "ffn_up_exps.weight", (64, 32, 4))]
    rng = np.random.default_rng(1)
    for name, ne in ts:
        dt = np.float32 if len(ne) == 1 else np.float16
        w.add_tensor(name, rng.standard_normal(tuple(reversed(ne))).astype(dt))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def m256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("t256") / "tiny-256.gguf"
    p.write_bytes(lzma.open(DATA / "quantize" / "tiny-256.gguf.xz").read())
    return p


def test_moe_expert_coverage(moe: Path) -> None:
    res = imatrix_check(MOE_A, moe, "Q8_0")
    assert res.ok and res.errors == []
    assert (res.format, res.datasets, res.chunk_count, res.chunk_size) == ("gguf", ["a.txt", "b.txt"], 5, 512)
    by = {t.name: t for t in res.tensors}
    assert by["blk.0.ffn_down_exps.weight"].counts == [100, 0, 37, 2048]
    assert by["blk.0.ffn_down_exps.weight"].status == "partial" and by["blk.0.ffn_down_exps.weight"].unrouted == [1]
    assert by["blk.1.ffn_down_exps.weight"].unrouted == [2]
    assert by["blk.0.ffn_up_exps.weight"].status == "empty" and by["blk.0.ffn_up_exps.weight"].unrouted == [0, 1, 2, 3]
    assert by["blk.1.ffn_up_exps.weight"].status == "missing"
    assert by["blk.0.attn_q.weight"].status == "ok" and by["blk.0.attn_q.weight"].counts == [1500]
    assert res.missing == ["token_embd.weight", "blk.1.ffn_up_exps.weight"]
    assert "blk.0.ffn_down_exps.weight: 1 of 4 experts never routed (experts 1); the others saw 37..2048 tokens" \
        in " ".join(res.warnings)
    assert "none of its 4 experts was routed" in " ".join(res.warnings)
    # entries for tensors this model does not have
    assert res.unused == ["blk.1.ffn_gate.weight", "blk.2.attn_k.weight", "blk.2.attn_q.weight", "output.weight"]


def test_check_cli_json_and_text(moe: Path) -> None:
    r = run("imatrix", "check", MOE_A, str(moe), "Q8_0", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["ok"] is True and d["chunk_size"] == 512 and d["datasets"] == ["a.txt", "b.txt"]
    t = {x["name"]: x for x in d["tensors"]}
    assert t["blk.1.ffn_down_exps.weight"]["counts"] == [512, 600, 0, 1]
    assert t["blk.1.ffn_down_exps.weight"]["unrouted_experts"] == [2]
    r = run("imatrix", "check", MOE_A, str(moe))  # no FTYPE: what a quantized ftype converts
    assert r.exit_code == 0, r.output
    assert "5 chunks of 512 tokens, dataset(s): a.txt, b.txt" in " ".join(r.stdout.split())
    assert "never routed" in r.stderr


def test_legacy_dat_has_no_expert_counts(moe: Path) -> None:
    res = imatrix_check(MOE_A_DAT, moe, "Q8_0")
    by = {t.name: t for t in res.tensors}
    assert res.format == "dat" and by["blk.0.ffn_down_exps.weight"].counts is None
    assert by["blk.0.ffn_down_exps.weight"].status == "ok"


def _drop(src: str, name: str, out: Path) -> str:
    d = read_imatrix(src)
    del d.entries[name]
    write_imatrix(d, out)
    return str(out)


def test_type_requiring_imatrix_fails_up_front(m256: Path, tmp_path: Path) -> None:
    im = _drop(IM256, "blk.1.ffn_up.weight", tmp_path / "im.gguf")
    res = imatrix_check(im, m256, "IQ2_XXS")
    assert not res.ok
    assert res.errors == ["blk.1.ffn_up.weight: iq2_xxs requires an importance matrix and the imatrix has no "
                          "entry for it"]
    r = run("imatrix", "check", im, str(m256), "IQ2_XXS")
    assert r.exit_code == 1 and "blk.1.ffn_up.weight: iq2_xxs requires an importance matrix" in r.output
    assert imatrix_check(im, m256, "Q4_K_M").ok  # the same gap is only a warning for Q4_K_M
    out = tmp_path / "o.gguf"
    r = run("quantize", "--imatrix", im, str(m256), str(out), "IQ2_XXS", "1")
    assert r.exit_code == 1 and "blk.1.ffn_up.weight" in r.output and not out.exists()


def test_filtered_entries(m256: Path) -> None:
    res = imatrix_check(IM256, m256, "IQ2_XXS", exclude_weights=["ffn_down"])
    assert not res.ok and len(res.errors) == 2
    assert "filtered out by --include/--exclude-weights" in res.errors[0]


def test_size_mismatch(m256: Path, tmp_path: Path) -> None:
    res = imatrix_check(IM320, m256, "Q4_K_M")
    assert not res.ok
    assert any("imatrix size 320 is different from tensor size 256 for blk.0.attn_k.weight" in e for e in res.errors)
    out = tmp_path / "o.gguf"
    r = run("quantize", "--imatrix", IM320, str(m256), str(out), "Q4_K_M", "1")
    assert r.exit_code == 1 and "imatrix pre-flight" in r.output and not out.exists()


def test_quantize_warns_unrouted_experts_before_work(moe: Path, tmp_path: Path) -> None:
    r = run("quantize", "--imatrix", MOE_A, "--dry-run", "--json", str(moe), str(tmp_path / "o.gguf"), "Q8_0")
    assert r.exit_code == 0, r.output
    warns = json.loads(r.stdout)["warnings"]
    assert any("blk.1.ffn_down_exps.weight: 1 of 4 experts never routed (experts 2)" in w for w in warns)


def test_dense_imatrix_adds_no_warning(m256: Path) -> None:
    res = imatrix_check(IM256, m256, "Q4_K_M")
    assert res.ok and res.coverage_warnings == [] and res.missing == ["output.weight", "token_embd.weight"]


def test_missing_file(m256: Path) -> None:
    with pytest.raises(QuantizeError, match="no such imatrix file"):
        imatrix_check("/nonexistent.gguf", m256, "Q4_K_M")


def test_kernel_that_needs_weights_without_entry(m256: Path, tmp_path: Path) -> None:
    """output.weight is exempt from llama-quantize's imatrix requirement, but IQ2_XXS's kernel needs
    weights: with no entry for it the run would abort mid-way, so the pre-flight refuses it."""
    res = imatrix_check(IM256, m256, "Q4_K_M", tensor_type=[r"^output\.weight=iq2_xxs"])
    assert res.errors == ["output.weight: iq2_xxs cannot be quantized without imatrix weights (ggml's kernel "
                          "asserts on them) and the imatrix has no entry for it"]
    out = tmp_path / "o.gguf"
    r = run("quantize", "--imatrix", IM256, "--tensor-type", r"^output\.weight=iq2_xxs", str(m256), str(out),
            "Q4_K_M", "1")
    assert r.exit_code == 1 and "imatrix pre-flight" in r.output and "output.weight: iq2_xxs" in r.output
    assert not out.exists()
