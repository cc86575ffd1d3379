"""`qtool imatrix collect` (qtool.imatrix.collect): which tensors are recorded, the sums against
an independent sum of the observed activations, counts and chunk metadata, per-expert counts of
the MoE fixture against a direct count of its routing, --in-file, --save-frequency, .dat output;
with QTOOL_LLAMA_BIN and QTOOL_REF_OUT, llama-imatrix on a real model (slow)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qtool.commands.collect_cmd import collect
from qtool.eval import Forward, Tokenizer, bos_id, tokenize_file
from qtool.eval.perplexity import chunk_batches
from qtool.gguf_io import GGUFModel
from qtool.imatrix import read_imatrix
from qtool.imatrix.collect import Collector
from tests import refs
from tests.eval_fixtures import TEXT, make_model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("collect")
    t = d / "text.txt"
    t.write_text(TEXT)
    return {"dir": d, "text": t, "llama": make_model(d / "llama.gguf"), "moe": make_model(d / "moe.gguf", moe=True)}


class Recorder:
    """Wraps a Collector: keeps an independent float64 sum of every observed input and the routing."""

    def __init__(self, inner: Collector) -> None:
        self.inner = inner
        self.sums: dict[str, np.ndarray] = {}
        self.routing: dict[str, list[np.ndarray]] = {}

    def dense(self, name: str, x: np.ndarray) -> None:
        if name.startswith("blk."):
            self.sums[name] = self.sums.get(name, 0) + (x.astype(np.float64) ** 2).sum(0)
        self.inner.dense(name, x)

    def experts(self, name: str, x: np.ndarray, ids: np.ndarray, n_expert: int) -> None:
        self.routing.setdefault(name, []).append(ids.copy())
        self.inner.experts(name, x, ids, n_expert)


def record(model: Path, text: Path, n_ctx: int = 32, n_chunks: int = 4, n_seq: int = 2) -> tuple[Collector, Recorder]:
    """Run the chunks collect would run, with a Recorder in front of a Collector."""
    m = GGUFModel(model)
    tok = Tokenizer.from_model(m)
    ids = tokenize_file(tok, str(text))
    col = Collector(n_ctx)
    rec = Recorder(col)
    fwd = Forward(m, observer=rec)
    for _, batch in chunk_batches(ids, n_ctx, n_chunks, n_seq, bos_id(tok)):
        fwd.hidden(batch)
    return col, rec


def test_dense_tensors_counts_and_sums(files: dict[str, Path]) -> None:
    out = files["dir"] / "dense.gguf"
    res = CliRunner().invoke(collect, ["-m", str(files["llama"]), "-f", str(files["text"]), "-o", str(out),
                                       "-c", "32", "--chunks", "4", "-b", "64", "-q"])
    assert res.exit_code == 0, res.output
    d = read_imatrix(out)
    names = [f"blk.{i}.{t}.weight" for i in range(2) for t in
             ("attn_k", "attn_output", "attn_q", "attn_v", "ffn_down", "ffn_gate", "ffn_up")]
    assert d.names() == sorted(names)
    assert all(e.counts.tolist() == [128] for e in d.entries.values())
    assert (d.chunk_count, d.chunk_size, d.datasets) == (4, 32, [str(files["text"])])
    assert d.entries["blk.0.ffn_down.weight"].n_per_row == 96

    # the sums are those of the activations the forward pass feeds the matmuls
    _, rec = record(files["llama"], files["text"])
    for name in names:
        np.testing.assert_allclose(d.entries[name].sums[0], rec.sums[name], rtol=1e-6)


def test_moe_per_expert_counts_match_routing(files: dict[str, Path]) -> None:
    col, rec = record(files["moe"], files["text"])
    d = col.result(["t"])
    for il in range(2):
        up = f"blk.{il}.ffn_up_exps.weight"
        direct = np.bincount(np.concatenate(rec.routing[up]).reshape(-1), minlength=4)
        for t in ("up", "gate", "down"):
            e = d.entries[f"blk.{il}.ffn_{t}_exps.weight"]
            assert e.counts.tolist() == direct.tolist()
            assert e.sums.shape == (4, 96 if t == "down" else 64)
            assert not e.sums[3].any()  # expert 3 is never routed to: partial data
        assert direct[0] == 128 and direct[3] == 0 and direct[1] > 0 and direct[2] > 0
        assert d.entries[f"blk.{il}.ffn_gate_inp.weight"].counts.tolist() == [128]
    assert d.chunk_count == 4


def test_moe_cli_partial_data_and_dat(files: dict[str, Path]) -> None:
    for ext in ("gguf", "dat"):
        out = files["dir"] / f"moe-imatrix.{ext}"
        res = CliRunner().invoke(collect, ["-m", str(files["moe"]), "-f", str(files["text"]), "-o", str(out),
                                           "-c", "32", "--chunks", "2", "-b", "64", "-q", "--no-ppl"])
        assert res.exit_code == 0, res.output
        d = read_imatrix(out)
        assert "blk.0.ffn_down_exps.weight" in d.entries
        if ext == "gguf":
            assert d.entries["blk.0.ffn_down_exps.weight"].counts[3] == 0


def test_in_file_save_frequency_process_output(files: dict[str, Path]) -> None:
    d0 = files["dir"]
    first = d0 / "first.gguf"
    args = ["-m", str(files["llama"]), "-f", str(files["text"]), "-c", "32", "-b", "64", "-q"]
    assert CliRunner().invoke(collect, [*args, "-o", str(first), "--chunks", "2"]).exit_code == 0
    out = d0 / "more.gguf"
    res = CliRunner().invoke(collect, [*args, "-o", str(out), "--chunks", "4", "--in-file", str(first),
                                       "--save-frequency", "2", "--process-output", "--json"])
    assert res.exit_code == 0, res.output
    d = read_imatrix(out)
    assert d.entries["blk.0.attn_q.weight"].counts.tolist() == [6 * 32]
    assert d.chunk_count == 6 and d.datasets == [str(files["text"])] * 2
    assert d.entries["output.weight"].counts.tolist() == [4 * 32]
    assert sorted(p.name for p in d0.glob("more.gguf.at_*")) == ["more.gguf.at_4", "more.gguf.at_6"]


def test_too_little_text(files: dict[str, Path], tmp_path: Path) -> None:
    t = tmp_path / "short.txt"
    t.write_text("just a few words")
    res = CliRunner().invoke(collect, ["-m", str(files["llama"]), "-f", str(t), "-o", str(tmp_path / "x.gguf")])
    assert res.exit_code != 0
    assert "tokens" in str(res.exception or res.output)


@pytest.mark.slow
def test_matches_llama_imatrix(tmp_path: Path) -> None:
    """Same model, text, context and chunks as llama-imatrix: tensor list, counts, chunk metadata
    equal; per-column means: median relative difference < 1e-3, worst cosine > 0.9999."""
    tool, model = refs.llama_bin("llama-imatrix"), refs.ref_out("smol-f16.gguf")
    if tool is None or model is None:
        pytest.skip(refs.why("QTOOL_LLAMA_BIN and QTOOL_REF_OUT"))
    from pydoc_data.topics import topics

    (tmp_path / "pydoc.txt").write_text("\n\n".join(topics[k] for k in sorted(topics)))
    n = os.environ.get("QTOOL_COLLECT_CHUNKS", "4")
    common = ["-f", "pydoc.txt", "-c", "512", "--chunks", n]
    subprocess.run([str(tool), "-m", str(model), *common, "-o", "ref.gguf", "--no-ppl"], cwd=tmp_path,
                   check=True, capture_output=True)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        res = CliRunner().invoke(collect, ["-m", str(model), *common, "-o", "ours.gguf", "-q", "--no-ppl"])
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    ref, ours = read_imatrix(tmp_path / "ref.gguf"), read_imatrix(tmp_path / "ours.gguf")
    assert ours.names() == ref.names()
    assert (ours.chunk_count, ours.chunk_size, ours.datasets) == (ref.chunk_count, ref.chunk_size, ref.datasets)
    rel, cos = [], []
    for name in ref.names():
        a, b = ours.entries[name], ref.entries[name]
        assert a.counts.tolist() == b.counts.tolist()
        ma, mb = a.sums / a.counts[:, None], b.sums / b.counts[:, None]
        rel.append(np.abs(ma - mb) / np.maximum(np.abs(mb), 1e-30))
        cos.append(float((ma * mb).sum() / np.sqrt((ma * ma).sum() * (mb * mb).sum())))
    assert float(np.median(np.concatenate([r.reshape(-1) for r in rel]))) < 1e-3
    assert min(cos) > 0.9999
