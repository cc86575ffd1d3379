"""`qtool perplexity` and `qtool kld` (qtool.eval.perplexity / kld): llama-perplexity's method
checked against a direct computation, the --kl-divergence-base file round trip, KLD of a model
with itself and of a perturbed model (from the file and from --base alike); with
QTOOL_LLAMA_BIN and QTOOL_REF_OUT, llama-perplexity's final estimate on a real model (slow)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qtool.commands.eval_cmd import kld_cmd, perplexity_cmd
from qtool.eval import Forward, Tokenizer, tokenize_file
from qtool.eval.kld import percentile
from qtool.eval.perplexity import pack_log_probs, read_logits_header
from qtool.gguf_io import GGUFModel
from tests import refs
from tests.eval_fixtures import TEXT, make_model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ppl")
    t = d / "text.txt"
    t.write_text(TEXT)
    return {"dir": d, "text": t, "llama": make_model(d / "llama.gguf"),
            "other": make_model(d / "other.gguf", seed=0, q8_attn_output=False),
            "gemma3": make_model(d / "gemma3.gguf", arch="gemma3")}


def _json(args: list[str], cmd=perplexity_cmd) -> dict:  # type: ignore[no-untyped-def]
    res = CliRunner().invoke(cmd, [*args, "--json", "-q"])
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads(res.output)


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_perplexity_equals_direct_computation(files: dict[str, Path], name: str) -> None:
    n_ctx, n_chunks = 32, 3
    r = _json(["-m", str(files[name]), "-f", str(files["text"]), "-c", str(n_ctx), "--chunks", str(n_chunks)])
    assert (r["chunks"], r["n_ctx"], r["tokens"]) == (n_chunks, n_ctx, n_chunks * (n_ctx - 1 - n_ctx // 2))
    m = GGUFModel(files[name])
    tok = Tokenizer.from_model(m)
    ids = tokenize_file(tok, str(files["text"]))
    fwd = Forward(m)
    nll = []
    for c in range(n_chunks):
        seq = ids[c * n_ctx:(c + 1) * n_ctx].copy()
        if tok.vocab.add_bos:
            seq[0] = tok.vocab.bos
        h = fwd.hidden(seq[None, :])[0]
        lg = fwd.logits(h).astype(np.float64)
        lp = lg - lg.max(1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(1, keepdims=True))
        for j in range(n_ctx // 2, n_ctx - 1):
            nll.append(-lp[j, ids[c * n_ctx + j + 1]])
    v = np.array(nll)
    # batched vs one sequence at a time: float32 summation order only
    assert r["ppl"] == pytest.approx(math.exp(v.mean()), rel=5e-4)
    err = math.sqrt((np.mean(v * v) - v.mean() ** 2) / (len(v) - 1)) * math.exp(v.mean())
    assert r["ppl_error"] == pytest.approx(err, rel=5e-3)


def test_kld_self_is_zero_and_file_equals_base(files: dict[str, Path]) -> None:
    d = files["dir"]
    base_file = d / "base.kld"
    common = ["-f", str(files["text"]), "-c", "32", "--chunks", "3"]
    p = _json(["-m", str(files["llama"]), *common, "--save-logits", str(base_file)])
    with open(base_file, "rb") as f:
        hdr = read_logits_header(f, str(base_file))
        assert (hdr.n_ctx, hdr.n_chunk) == (32, 3)
        rest = f.read()
    nv = 2 * ((hdr.n_vocab + 1) // 2) + 4
    assert len(rest) == 3 * 15 * nv * 2
    s = _json(["-m", str(files["llama"]), "--logits", str(base_file)], kld_cmd)
    assert s["same_top_p"] == 1.0 and abs(s["kld_mean"]) < 1e-4
    assert s["ppl_base"] == pytest.approx(p["ppl"], rel=1e-3)
    # a different model: the same figures from the file and from --base
    a = _json(["-m", str(files["other"]), "--logits", str(base_file)], kld_cmd)
    b = _json(["-m", str(files["other"]), "--base", str(files["llama"]), *common], kld_cmd)
    assert a["kld_mean"] > 1e-5  # attn_output F16 vs Q8_0: a small, non-zero divergence
    for k in ("kld_mean", "kld_median", "kld_p99", "same_top_p", "ppl", "ppl_base"):
        assert a[k] == pytest.approx(b[k], rel=1e-6), k


def test_pack_log_probs_layout() -> None:
    rng = np.random.default_rng(0)
    lg = (rng.standard_normal((3, 11)) * 5).astype(np.float32)
    lg[2] = 1.0
    rows = pack_log_probs(lg, 2 * 6 + 4)
    hdr = rows[:, :4].copy().view(np.float32)
    assert hdr[2, 0] == 0 and not rows[2, 4:].any()
    lp = hdr[:1, 0:1] * rows[:1, 4:15] + hdr[:1, 1:2]
    ref = lg[0] - lg[0].max() - np.log(np.exp(lg[0] - lg[0].max()).sum())
    keep = ref > ref.max() - 16
    np.testing.assert_allclose(lp[0][keep], ref[keep], atol=float(hdr[0, 0]))
    assert percentile(np.arange(11, dtype=np.float32), 0.5) == 5.0


def test_usage_errors(files: dict[str, Path]) -> None:
    r = CliRunner().invoke(kld_cmd, ["-m", str(files["llama"])])
    assert r.exit_code == 2
    r = CliRunner().invoke(perplexity_cmd, ["-m", str(files["llama"]), "-f", str(files["text"]), "-c", "4096"])
    assert r.exit_code != 0 and "tokens" in str(r.exception)


@pytest.mark.slow
def test_matches_llama_perplexity() -> None:
    """Final estimate within 0.1% of llama-perplexity's (same model, text, context, chunks)."""
    tool, model = refs.llama_bin("llama-perplexity"), refs.ref_out("smol-f16.gguf")
    if tool is None or model is None:
        pytest.skip(refs.why("QTOOL_LLAMA_BIN and QTOOL_REF_OUT"))
    from pydoc_data.topics import topics

    text = Path(os.environ.get("TMPDIR", "/tmp")) / "qtool-pydoc.txt"
    text.write_text("\n\n".join(topics[k] for k in sorted(topics)))
    args = ["-m", str(model), "-f", str(text), "-c", "512", "--chunks", os.environ.get("QTOOL_PPL_CHUNKS", "4")]
    log = subprocess.run([str(tool), *args], capture_output=True, text=True, check=True)
    ref = float(re.search(r"Final estimate: PPL = ([0-9.]+)", log.stdout + log.stderr).group(1))  # type: ignore[union-attr]
    ours = _json(args)["ppl"]
    assert abs(ours / ref - 1) < 1e-3
