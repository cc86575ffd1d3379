"""`--device cuda` for the forward-pass commands (imatrix collect, perplexity, kld) without a GPU:
the CuPy path of qtool.eval runs on tests/fake_cupy.py in strict mode (numpy memory as device
memory; a host numpy array mixed with a device array, or a numpy function called on one, raises
as CuPy refuses implicit transfers), so these tests check that the GPU path keeps its work on
the device and gives the CPU's figures (the fake computes with numpy: equal up to float
summation order). Also: the device numerics equal the CPU's element-wise steps exactly where the
formulas are the same, and --device cuda without CuPy is a clean error."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import qtool.gpu.cuda as qcuda
from qtool.cli import cli
from qtool.eval import Forward
from qtool.eval import numerics as nm
from qtool.eval.perplexity import n_packed, read_logits_header
from qtool.gguf_io import GGUFModel
from qtool.imatrix import read_imatrix
from tests import fake_cupy
from tests.eval_fixtures import TEXT, make_model

N_CTX, CHUNKS, BATCH = "32", "3", "64"  # two sequences per batch, then one


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("device")
    t = d / "text.txt"
    t.write_text(TEXT)
    return {"dir": d, "text": t, "llama": make_model(d / "llama.gguf"),
            "other": make_model(d / "other.gguf", seed=1),
            "moe": make_model(d / "moe.gguf", moe=True), "qwen2": make_model(d / "qwen2.gguf", arch="qwen2"),
            "gemma3": make_model(d / "gemma3.gguf", arch="gemma3")}


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The strict fake CuPy in place of cupy for one test."""
    return fake_cupy.install(monkeypatch, strict=True)


def _run(args: list[str], device: str | None = None) -> dict[str, Any]:
    extra = ["--device", device] if device else []
    r = CliRunner().invoke(cli, [*args, *extra, "--json", "-q"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, (r.output, r.exception)
    return json.loads(r.output.strip().splitlines()[-1])  # type: ignore[no-any-return]  # after any warnings


def _eval_args(files: dict[str, Path], name: str) -> list[str]:
    return ["-m", str(files[name]), "-f", str(files["text"]), "-c", N_CTX, "--chunks", CHUNKS, "-b", BATCH]


@pytest.mark.parametrize("name", ["llama", "moe", "qwen2", "gemma3"])
def test_perplexity_on_the_device_equals_the_cpu(files: dict[str, Path], name: str, gpu: Any) -> None:
    args = ["perplexity", *_eval_args(files, name)]
    cpu = _run(args)
    dev = _run(args, "cuda")
    assert (dev["tokens"], dev["chunks"], dev["n_ctx"]) == (cpu["tokens"], cpu["chunks"], cpu["n_ctx"])
    assert dev["ppl"] == pytest.approx(cpu["ppl"], rel=1e-5)
    assert dev["ppl_error"] == pytest.approx(cpu["ppl_error"], rel=1e-4)
    assert dev["running"] == pytest.approx(cpu["running"], rel=1e-5)


def test_save_logits_on_the_device(files: dict[str, Path], gpu: Any) -> None:
    """--save-logits packs the log-probabilities on the device: the CPU's file up to the last
    step of a few packed values."""
    d = files["dir"]
    a, b = d / "cpu.logits", d / "gpu.logits"
    args = ["perplexity", *_eval_args(files, "gemma3")]
    cpu = _run([*args, "--save-logits", str(a)])
    dev = _run([*args, "--save-logits", str(b)], "cuda")
    assert dev["ppl"] == pytest.approx(cpu["ppl"], rel=1e-5)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        ha, hb = read_logits_header(fa, str(a)), read_logits_header(fb, str(b))
        assert (ha.n_ctx, ha.n_vocab, ha.n_chunk) == (hb.n_ctx, hb.n_vocab, hb.n_chunk)
        assert np.array_equal(ha.tokens, hb.tokens)
        ra = np.frombuffer(fa.read(), "<u2").reshape(-1, n_packed(ha.n_vocab))
        rb = np.frombuffer(fb.read(), "<u2").reshape(-1, n_packed(ha.n_vocab))
    assert ra.shape == rb.shape and len(ra) == ha.n_chunk * (ha.n_ctx - 1 - ha.n_ctx // 2)
    sa, sb = (np.ascontiguousarray(r[:, :4]).view(np.float32) for r in (ra, rb))
    np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-6)
    assert np.abs(ra[:, 4:].astype(np.int64) - rb[:, 4:]).max() <= 2


@pytest.mark.parametrize("source", ["base", "logits"])
def test_kld_on_the_device_equals_the_cpu(files: dict[str, Path], source: str, gpu: Any) -> None:
    """kld with a base model run on the device too, and with a base file (rows uploaded per slice)."""
    if source == "base":
        args = ["kld", "-m", str(files["other"]), "--base", str(files["llama"]), "-f", str(files["text"]),
                "-c", N_CTX, "--chunks", CHUNKS, "-b", BATCH]
    else:
        lg = files["dir"] / "base.logits"
        _run(["perplexity", *_eval_args(files, "llama"), "--save-logits", str(lg)])
        args = ["kld", "-m", str(files["other"]), "--logits", str(lg), "-b", BATCH]
    cpu = _run(args)
    dev = _run(args, "cuda")
    assert dev["tokens"] == cpu["tokens"] and dev["tokens"] > 0
    assert cpu["kld_mean"] > 1e-3  # two different models
    for key in ("ppl", "ppl_base", "kld_mean", "kld_max", "kld_median", "dp_rms", "same_top_p"):
        assert dev[key] == pytest.approx(cpu[key], rel=1e-4, abs=1e-7), key


def test_kld_saved_base_file_from_the_device(files: dict[str, Path], gpu: Any) -> None:
    """kld --base --save-logits on the device writes a file a CPU run reads to the same figures."""
    lg = files["dir"] / "dev_base.logits"
    args = ["kld", "-m", str(files["other"]), "--base", str(files["llama"]), "-f", str(files["text"]),
            "-c", N_CTX, "--chunks", CHUNKS, "-b", BATCH]
    dev = _run([*args, "--save-logits", str(lg)], "cuda")
    cpu = _run(["kld", "-m", str(files["other"]), "--logits", str(lg), "-b", BATCH])
    assert dev["tokens"] == cpu["tokens"]
    assert dev["kld_mean"] == pytest.approx(cpu["kld_mean"], rel=1e-4)


@pytest.mark.parametrize("name", ["llama", "moe"])
def test_collect_on_the_device_equals_the_cpu(files: dict[str, Path], name: str, gpu: Any) -> None:
    d = files["dir"]
    a, b = d / f"{name}_cpu.gguf", d / f"{name}_gpu.gguf"
    args = ["imatrix", "collect", *_eval_args(files, name), "--process-output"]
    cpu = _run([*args, "-o", str(a)])
    dev = _run([*args, "-o", str(b)], "cuda")
    assert dev["ppl"] == pytest.approx(cpu["ppl"], rel=1e-5)
    assert (dev["entries"], dev["chunks"], dev["tokens"]) == (cpu["entries"], cpu["chunks"], cpu["tokens"])
    ia, ib = read_imatrix(a), read_imatrix(b)
    assert list(ia.entries) == list(ib.entries) and len(ia.entries) > 0
    assert (ia.chunk_count, ia.chunk_size, ia.datasets) == (ib.chunk_count, ib.chunk_size, ib.datasets)
    for n, ea in ia.entries.items():
        eb = ib.entries[n]
        assert np.array_equal(ea.counts, eb.counts), n
        np.testing.assert_allclose(eb.sums, ea.sums, rtol=1e-5, err_msg=n)
    if name == "moe":
        assert any(e.counts.size == 4 for e in ib.entries.values())


def test_collect_in_file_and_save_frequency_on_the_device(files: dict[str, Path], gpu: Any) -> None:
    """--in-file sums (read on the host) are moved to the device and added to there; --save-frequency
    fetches the sums mid-run."""
    d = files["dir"]
    first = d / "first.gguf"
    base = ["imatrix", "collect", "-m", str(files["llama"]), "-f", str(files["text"]), "-c", N_CTX, "-b", BATCH]
    _run([*base, "--chunks", "2", "-o", str(first)])
    out = {dev: d / f"in_{dev}.gguf" for dev in ("cpu", "cuda")}
    for dev, o in out.items():
        _run([*base, "--chunks", "4", "--in-file", str(first), "--save-frequency", "2", "-o", str(o)], dev)
        assert Path(f"{o}.at_2").exists() or Path(f"{o}.at_4").exists()
    ia, ib = read_imatrix(out["cpu"]), read_imatrix(out["cuda"])
    assert ia.chunk_count == ib.chunk_count == 6
    for n, ea in ia.entries.items():
        assert np.array_equal(ea.counts, ib.entries[n].counts)
        np.testing.assert_allclose(ib.entries[n].sums, ea.sums, rtol=1e-5)


def test_weights_and_sums_live_on_the_device(files: dict[str, Path], gpu: Any) -> None:
    """The weight cache holds device arrays (F16 matrices as float16, others as float32), the
    hidden states and the collector's sums are device arrays until result()."""
    from qtool.imatrix.collect import Collector

    col = Collector(32)
    fwd = Forward(GGUFModel(files["llama"]), observer=col, device="cuda")
    h = fwd.hidden(np.arange(64, dtype=np.int32).reshape(2, 32) + 5)
    assert isinstance(h, fake_cupy.ndarray)
    cache = fwd.w._cache
    assert cache and all(isinstance(a, fake_cupy.ndarray) for a in cache.values())
    assert cache["blk.0.attn_q.weight#f16"].dtype == np.float16  # F16: uploaded as stored
    assert cache["blk.0.attn_output.weight"].dtype == np.float32  # Q8_0: dequantized, then uploaded
    assert "blk.0.attn_q.weight" not in cache
    assert col.sums and all(isinstance(s, fake_cupy.ndarray) for s in col.sums.values())
    res = col.result([])
    assert all(type(e.sums) is np.ndarray for e in res.entries.values())


def test_transfers_per_batch_are_small(files: dict[str, Path], gpu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """perplexity on the device fetches per-token figures only (no activations or logits)."""
    fetched: list[int] = []
    get = fake_cupy.ndarray.get

    def counting_get(self: Any, *a: Any, **k: Any) -> np.ndarray:
        fetched.append(self.nbytes)
        return get(self, *a, **k)

    monkeypatch.setattr(fake_cupy.ndarray, "get", counting_get)
    r = _run(["perplexity", *_eval_args(files, "llama")], "cuda")
    assert fetched and max(fetched) <= 8 * r["tokens"]
    assert sum(fetched) <= 8 * r["tokens"]


def _edge_values() -> np.ndarray:
    rng = np.random.default_rng(3)
    v = np.concatenate([rng.standard_normal(4096) * s for s in (1e-6, 1e-3, 1.0, 30.0, 3e4)]).astype(np.float32)
    special = np.array([0.0, -0.0, 2.0 ** -14, 2.0 ** -24, 3e-8, 65504.0, 65519.0, 65520.0, 7e4, -1e6,
                        9.999, 10.0, -10.0, -10.5, 5e-5], np.float32)
    return np.concatenate([v, special, -special])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # numpy's float16 cast in the fake
@pytest.mark.parametrize("fn", ["round_f16", "gelu_f16", "round_q8_0_x86", "round_q8_k", "round_bf16", "silu"])
def test_device_numerics_equal_the_cpu(fn: str, gpu: Any) -> None:
    """Where the device formula is the CPU's or an exact equivalent of it (float16 rounding by a
    cast instead of Veltkamp's split, the GELU table by the cast), the values are bit-identical."""
    x = _edge_values()
    x = x[: len(x) // 256 * 256].reshape(-1, 256)
    f = getattr(nm, fn)
    want = f(x)
    got = f(gpu.asarray(x))
    assert isinstance(got, fake_cupy.ndarray)
    np.testing.assert_array_equal(nm.to_host(got), want)


def test_rms_norm_and_helpers_on_the_device(gpu: Any) -> None:
    x = np.random.default_rng(4).standard_normal((7, 96)).astype(np.float32)
    got = nm.rms_norm(gpu.asarray(x), 1e-5)
    np.testing.assert_allclose(nm.to_host(got), nm.rms_norm(x, 1e-5), rtol=2e-7)
    assert nm.array_module(x) is np and nm.array_module(gpu.asarray(x)) is gpu
    assert nm.to_host(x) is x and type(nm.to_host(gpu.asarray(x))) is np.ndarray
    np.testing.assert_allclose(nm.sum_squares(gpu.asarray(x), 0).get(), (x.astype(np.float64) ** 2).sum(0))


def test_strict_fake_refuses_host_arrays(gpu: Any) -> None:
    """The checks these tests rely on: mixing a host array into device work raises."""
    d = gpu.asarray(np.ones(4, np.float32))
    with pytest.raises(TypeError):
        d + np.ones(4, np.float32)
    with pytest.raises(TypeError):
        d[np.array([0, 1])]
    with pytest.raises(TypeError):
        np.concatenate([d, d])
    assert float((d * np.float32(2)).sum()) == 8.0


@pytest.mark.parametrize("cmd", ["perplexity", "kld", "collect"])
def test_device_cuda_without_cupy_is_a_clean_error(files: dict[str, Path], cmd: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    monkeypatch.setattr(qcuda, "_CUPY", None)
    out = files["dir"] / f"nocupy_{cmd}.gguf"
    common = ["-f", str(files["text"]), "-c", N_CTX, "--chunks", "2"]
    args = {"perplexity": ["perplexity", "-m", str(files["llama"]), *common, "--save-logits", str(out)],
            "kld": ["kld", "-m", str(files["other"]), "--base", str(files["llama"]), *common],
            "collect": ["imatrix", "collect", "-m", str(files["llama"]), *common, "-o", str(out)]}[cmd]
    r = CliRunner().invoke(cli, [*args, "--device", "cuda"], env={"COLUMNS": "200"})
    assert r.exit_code == 1, r.output
    assert "CuPy" in r.output and "Traceback" not in r.output, r.output
    assert isinstance(r.exception, SystemExit)
    assert not out.exists()
    # the CPU path never asks for CuPy
    r = CliRunner().invoke(cli, [*args, "-q", "--json"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output


def test_device_choice_is_checked(files: dict[str, Path]) -> None:
    r = CliRunner().invoke(cli, ["perplexity", *_eval_args(files, "llama"), "--device", "tpu"])
    assert r.exit_code == 2 and "tpu" in r.output
    with pytest.raises(ValueError, match="unknown device"):
        nm.device_module("tpu")



def test_score_rows_blocks_on_the_device(files: dict[str, Path], gpu: Any) -> None:
    """The online log-sum-exp over vocabulary blocks (targets in every block, a short last block)
    on the device equals the CPU's whole-row figure."""
    from qtool.eval.perplexity import score_rows

    tokens = (np.arange(64, dtype=np.int32).reshape(2, 32) * 7) % 250 + 3
    targets = ((np.arange(62) * 13) % 280).astype(np.int64)
    m = GGUFModel(files["llama"])
    h_cpu = Forward(m).hidden(tokens).reshape(64, -1)[:62]
    want = score_rows(Forward(m), h_cpu, targets, block=10 ** 6)
    dev = Forward(m, device="cuda")
    h_dev = dev.hidden(tokens).reshape(64, -1)[:62]
    for block in (None, 64, 100):
        got = score_rows(dev, h_dev, targets, block=block)
        assert type(got) is np.ndarray
        np.testing.assert_allclose(got, want, rtol=1e-5)
