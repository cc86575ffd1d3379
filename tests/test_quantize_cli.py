"""`qtool quantize` end to end: the command line (CliRunner and real subprocesses), the Python
API's results, the files it writes, and every kind of bad input (clear message, no traceback, no
output or temporary file left, input untouched).

Inputs are the tiny fixture models of tests/data/quantize (see make_refs.py there); expected
bytes come from its llama-quantize manifest.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from click.testing import CliRunner, Result

import qtool
import qtool.runner
from qtool.api import QuantizeError, QuantizeResult, default_output, parse_override_kv, quantize_file
from qtool.cli import cli
from qtool.errors import QtoolError
from qtool.gguf_io import GGUFModel
from qtool.imatrix import read_imatrix, write_gguf

DATA = Path(__file__).parent / "data" / "quantize"
MANIFEST: dict[str, dict[str, Any]] = json.loads((DATA / "llama_quantize_sha256.json").read_text())
IM256 = str(DATA / "tiny-256.imatrix.gguf")
IM320 = str(DATA / "tiny-320.imatrix.gguf")

_spec = importlib.util.spec_from_file_location("quantize_make_refs", DATA / "make_refs.py")
assert _spec is not None and _spec.loader is not None
make_refs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_refs)


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The fixture models (decompressed once); at the end, checks that no test changed them."""
    d = tmp_path_factory.mktemp("quantize-cli-models")
    out = {}
    for name in make_refs.MODELS:
        out[name] = d / f"{name}.gguf"
        with lzma.open(make_refs.model_path(name)) as f:
            out[name].write_bytes(f.read())
    sums = {k: sha256(p) for k, p in out.items()}
    yield out
    assert {k: sha256(p) for k, p in out.items()} == sums
    assert sorted(os.listdir(d)) == sorted(p.name for p in out.values())


@pytest.fixture
def m256(models: dict[str, Path]) -> Path:
    return models["tiny-256"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["quantize", *args], env={"COLUMNS": "200"})  # rich: no folded names


def assert_refused(r: Result, pattern: str, out_dir: Path, code: int | None = None,
                   leftover: tuple[str, ...] = ()) -> None:
    """A clean refusal: non-zero exit, the message, no traceback, nothing written in out_dir."""
    assert r.exit_code != 0, r.output
    if code is not None:
        assert r.exit_code == code, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    assert re.search(pattern, r.output), r.output
    assert sorted(os.listdir(out_dir)) == sorted(leftover)


# --- positional form, names, numbers ------------------------------------------------------------

def test_default_output_name() -> None:
    assert default_output("models/x/m-f16.gguf", "Q4_0") == "models/x/ggml-model-Q4_0.gguf"
    assert default_output("m.gguf", "Q4_K_M") == "ggml-model-Q4_K_M.gguf"
    assert default_output("/a/b.gguf", "Q8_0", keep_split=True) == "/a/ggml-model-Q8_0"
    assert default_output("C:\\m\\f16.gguf", "F16") == "C:\\m\\ggml-model-F16.gguf"


def test_default_output_and_numeric_type(m256: Path, tmp_path: Path) -> None:
    """INPUT TYPE NTHREADS, TYPE as ftype id 2 (Q4_0): writes <dir>/ggml-model-Q4_0.gguf, llama-quantize's bytes."""
    inp = tmp_path / "m.gguf"
    shutil.copyfile(m256, inp)
    r = invoke("-q", str(inp), "2", "1")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path)) == ["ggml-model-Q4_0.gguf", "m.gguf"]
    assert sha256(tmp_path / "ggml-model-Q4_0.gguf") == MANIFEST["tiny-256-Q4_0"]["sha256"]


def test_default_output_relative_input(m256: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An input without a folder writes ggml-model-<canonical ftype name>.gguf in the current folder."""
    shutil.copyfile(m256, tmp_path / "m.gguf")
    monkeypatch.chdir(tmp_path)
    r = invoke("-q", "m.gguf", "q5_k_m")
    assert r.exit_code == 0, r.output
    assert sha256(tmp_path / "ggml-model-Q5_K_M.gguf") == MANIFEST["tiny-256-ftype-lower-q5_k_m"]["sha256"]


def test_keep_split_names(m256: Path, tmp_path: Path) -> None:
    """--keep-split on a one-file input: llama-quantize writes OUTPUT (less .gguf) + -00001-of-00001.gguf,
    and the default name gets the same suffix."""
    inp = tmp_path / "m.gguf"
    shutil.copyfile(m256, inp)
    ref = MANIFEST["tiny-256-keep-split-Q4_0"]
    assert ref["output_name"] == "out-00001-of-00001.gguf"
    r = invoke("-q", "--keep-split", str(inp), "Q4_0")
    assert r.exit_code == 0, r.output
    r = invoke("--json", "--keep-split", str(inp), str(tmp_path / "x.gguf"), "Q4_0", "2")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["output"] == str(tmp_path / "x-00001-of-00001.gguf")
    assert sorted(os.listdir(tmp_path)) == ["ggml-model-Q4_0-00001-of-00001.gguf", "m.gguf", "x-00001-of-00001.gguf"]
    assert sha256(tmp_path / "x-00001-of-00001.gguf") == sha256(tmp_path / "ggml-model-Q4_0-00001-of-00001.gguf") \
        == ref["sha256"] != MANIFEST["tiny-256-Q4_0"]["sha256"]  # file order, not llama's weight order


def test_positional_errors(m256: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    r = invoke(str(m256), str(out), "Q4_0", "two")
    assert_refused(r, r"NTHREADS.*not an integer", tmp_path, code=2)
    r = invoke(str(m256), str(out), "Q4_0", "1", "extra")
    assert_refused(r, r"too many arguments: extra", tmp_path, code=2)
    r = invoke(str(m256))
    assert_refused(r, r"missing TYPE", tmp_path, code=2)
    r = invoke()
    assert_refused(r, r"missing INPUT", tmp_path, code=2)


# --- dry run --------------------------------------------------------------------------------------

def test_dry_run_table(m256: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    r = invoke("--dry-run", str(m256), str(out), "Q4_K_M")
    assert r.exit_code == 0, r.output
    assert os.listdir(tmp_path) == []
    for word in ("blk.1.ffn_down.weight", "q6_k", "q4_k", "output: uses Q6_K", "21 tensors, 16 converted"):
        assert word in r.output
    # no TYPE-less default output is computed or written either
    r = invoke("--dry-run", str(m256), "Q8_0")
    assert r.exit_code == 0 and "q8_0" in r.output
    assert not (m256.parent / "ggml-model-Q8_0.gguf").exists()


def test_dry_run_json_is_the_plan(m256: Path, tmp_path: Path) -> None:
    r = invoke("--dry-run", "--json", "--imatrix", IM256, str(m256), str(tmp_path / "o.gguf"), "Q4_K_M")
    assert r.exit_code == 0, r.output
    assert os.listdir(tmp_path) == []
    d = json.loads(r.stdout)
    assert d["ftype"] == "Q4_K_M" and d["file_type"] == 15 and d["flavour"] == "mainline"
    p = qtool.plan(m256, "Q4_K_M", imatrix=IM256)
    assert [(t["name"], t["type"], t["reason"]) for t in d["tensors"]] == [(x.name, x.type, x.reason) for x in p]
    assert d["totals"]["bytes"] == sum(t["bytes"] for t in d["tensors"])
    assert d["totals"]["tensors"] == 21 and d["totals"]["quantized"] == 16
    # the plan matches the types llama-quantize wrote: the same as a real run's summary
    r2 = quantize_file(m256, tmp_path / "x.gguf", "Q4_K_M", nthreads=1, imatrix=IM256)
    assert [(t["name"], t["type"], t["bytes"]) for t in r2.to_json()["tensors"]] == \
        [(t["name"], t["type"], t["bytes"]) for t in d["tensors"]]
    assert d["totals"]["bytes"] == r2.size_out
    assert "did not find imatrix weights for output.weight" in d["warnings"]


def test_dry_run_shows_what_quantize_refuses(m256: Path, tmp_path: Path) -> None:
    """Types the engine lacks and types that need an imatrix are planned; quantize refuses them."""
    r = invoke("--dry-run", "--json", str(m256), "IQ2_XS")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert {t["type"] for t in d["tensors"] if t["quantize"]} >= {"IQ2_XS"}
    assert any(t["requires_imatrix"] for t in d["tensors"])
    assert "quantizing with this plan will require an imatrix" in d["warnings"]
    r = invoke("--dry-run", "--json", "--imatrix", IM256, str(m256), "IQ2_XXS")
    assert r.exit_code == 0, r.output
    assert "IQ2_XXS" in {t["type"] for t in json.loads(r.stdout)["tensors"]}
    assert os.listdir(tmp_path) == []


# --- real runs: summary, files -------------------------------------------------------------------

def test_json_summary_schema(m256: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    r = invoke("--json", "--imatrix", IM256, str(m256), str(out), "Q4_K_M", "1")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert set(d) == {"input", "output", "ftype", "file_type", "flavour", "nthreads", "imatrix", "imatrix_entries",
                      "dry_run", "n_tensors", "n_fallback", "size_in", "size_out", "bpw_in", "bpw_out", "seconds",
                      "warnings", "tensors"}
    assert d["input"] == str(m256) and d["output"] == str(out) and d["ftype"] == "Q4_K_M" and d["file_type"] == 15
    assert d["nthreads"] == 1 and d["imatrix"] == IM256 and d["imatrix_entries"] == 14 and d["dry_run"] is False
    assert d["n_tensors"] == len(d["tensors"]) == 21 and d["n_fallback"] == 0
    assert d["size_in"] == sum(t["bytes_in"] for t in d["tensors"])
    assert d["size_out"] == sum(t["bytes"] for t in d["tensors"])
    n_el = sum(int(np.prod(t["shape"])) for t in d["tensors"])
    assert d["bpw_in"] == pytest.approx(8 * d["size_in"] / n_el) and 16 < d["bpw_in"] < 16.1
    assert d["bpw_out"] == pytest.approx(8 * d["size_out"] / n_el) and 4 < d["bpw_out"] < 5.5
    assert d["seconds"] > 0
    assert d["warnings"] == ["did not find imatrix weights for output.weight",
                             "did not find imatrix weights for token_embd.weight"]
    t0 = d["tensors"][0]
    assert set(t0) == {"name", "shape", "type_in", "type", "bytes_in", "bytes", "reason"}
    assert (t0["name"], t0["type_in"], t0["type"], t0["shape"]) == ("output.weight", "F16", "Q6_K", [256, 128])
    with GGUFModel(out) as m:
        assert m.kv("quantize.imatrix.file") == IM256  # the path as given


def test_summary_table_and_quiet(m256: Path, tmp_path: Path) -> None:
    r = invoke(str(m256), str(tmp_path / "a.gguf"), "Q8_0", "1")
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # the table is a log: stderr
    for word in ("tensors", "size in", "size out", "bpw", "time", "16 converted"):
        assert word in r.stderr
    r = invoke("-q", str(m256), str(tmp_path / "b.gguf"), "Q8_0", "1")
    assert r.exit_code == 0 and r.output == ""
    assert sha256(tmp_path / "a.gguf") == sha256(tmp_path / "b.gguf") == MANIFEST["tiny-256-Q8_0"]["sha256"]


def _reader_kv(r: gguf.GGUFReader, key: str) -> Any:
    f = r.fields.get(key)
    return None if f is None else f.contents()


def test_output_loads_with_both_readers(m256: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    out = tmp_path / "o.gguf"
    res = quantize_file(m256, out, "Q4_K_M", nthreads=1, imatrix="tiny-256.imatrix.dat")
    assert sha256(out) == MANIFEST["tiny-256-Q4_K_M-imdat"]["sha256"]
    planned = {d.name: d.type for d in res.plan}
    with GGUFModel(out) as m:
        assert m.arch == "llama"
        assert m.kv("general.file_type") == 15 and m.kv("general.quantization_version") == 2
        assert m.kv("general.name") == "tiny-256"
        assert m.kv("quantize.imatrix.file") == "tiny-256.imatrix.dat"
        assert m.kv("quantize.imatrix.dataset") == "synthetic-tiny.txt"
        assert m.kv("quantize.imatrix.entries_count") == 14 and m.kv("quantize.imatrix.chunks_count") == 4
        assert {t.name: t.qtype.name for t in m.tensors} == planned
        assert [k.key for k in m.kvs][-6:] == ["general.quantization_version", "general.file_type",
                                                "quantize.imatrix.file", "quantize.imatrix.dataset",
                                                "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count"]
    rd = gguf.GGUFReader(out)
    src = gguf.GGUFReader(m256)
    assert _reader_kv(rd, "general.file_type") == 15 and _reader_kv(rd, "quantize.imatrix.entries_count") == 14
    assert {t.name: t.tensor_type.name for t in rd.tensors} == planned
    # the data decode to the input's weights within each type's error (gguf-py's dequantizers)
    orig = {t.name: np.asarray(t.data, np.float32) for t in src.tensors}
    for t in rd.tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type).reshape(orig[t.name].shape)
        ref = orig[t.name]
        rel = np.sqrt(np.mean((x - ref) ** 2) / np.mean(ref**2))
        assert rel < (0.12 if t.tensor_type.name.startswith("Q4") else 0.06), (t.name, t.tensor_type.name, rel)


def test_no_imatrix_keys_without_imatrix(m256: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    quantize_file(m256, out, "Q5_0", nthreads=1)
    with GGUFModel(out) as m:
        assert m.kv("general.file_type") == 8
        assert not [k.key for k in m.kvs if k.key.startswith("quantize.")]


def test_same_bytes_for_1_and_2_processes(models: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """1 and 2 workers, whole tensors and small slabs (many work items per tensor), one after the
    other in one process: the in-process runs leave pooled scratch memory that forked workers
    must not share (they did: an IndexError or wrong bytes)."""
    monkeypatch.chdir(DATA)
    ref = MANIFEST["tiny-320-Q4_K_M-imdat"]
    outs = []
    for n, slab in ((1, 1 << 20), (1, 5000), (2, 5000), (2, 1 << 20), (2, 20000)):
        monkeypatch.setattr(qtool.runner, "SLAB_ELEMENTS", slab)
        out = tmp_path / f"o{n}-{slab}.gguf"
        r = quantize_file(models["tiny-320"], out, "Q4_K_M", nthreads=n, imatrix="tiny-320.imatrix.dat")
        assert r.nthreads == n
        outs.append(sha256(out))
    assert outs == [ref["sha256"]] * 5


def test_results_through_the_parent_without_pwrite(models: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Where os.pwrite is missing, workers send their bytes back and the parent writes them in
    order: the same file."""
    monkeypatch.chdir(DATA)
    monkeypatch.setattr(qtool.runner, "_PWRITE", False)
    monkeypatch.setattr(qtool.runner, "SLAB_ELEMENTS", 5000)
    seen: list[str] = []
    quantize_file(models["tiny-320"], tmp_path / "o.gguf", "Q4_K_M", nthreads=2, imatrix="tiny-320.imatrix.dat",
                  on_progress=lambda name, n: seen.append(name))
    assert sha256(tmp_path / "o.gguf") == MANIFEST["tiny-320-Q4_K_M-imdat"]["sha256"]
    assert list(dict.fromkeys(seen)) == [t.name for t in GGUFModel(tmp_path / "o.gguf").tensors]


def test_progress_in_plan_order_with_workers(models: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers write into the file themselves and the parent does not wait at tensor ends; the
    progress callback still sees every tensor in plan order, each value counted once."""
    monkeypatch.setattr(qtool.runner, "SLAB_ELEMENTS", 3000)
    seen: list[tuple[str, int]] = []
    r = quantize_file(models["tiny-320"], tmp_path / "o.gguf", "Q4_K_M", nthreads=2,
                      on_progress=lambda name, n: seen.append((name, n)))
    assert list(dict.fromkeys(name for name, _ in seen)) == [d.name for d in r.plan]
    assert sum(n for _, n in seen) == sum(int(np.prod(d.shape)) for d in r.plan)
    assert sha256(tmp_path / "o.gguf") == MANIFEST["tiny-320-Q4_K_M"]["sha256"]


def test_subprocess_entry_point(m256: Path, tmp_path: Path) -> None:
    """`python -m qtool quantize` (and the `qtool` console script, when installed beside python)."""
    out = tmp_path / "o.gguf"
    p = subprocess.run([sys.executable, "-m", "qtool", "quantize", "--json", str(m256), str(out), "Q5_K_M", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["output"] == str(out)
    assert sha256(out) == MANIFEST["tiny-256-Q5_K_M"]["sha256"]
    script = Path(sys.executable).parent / "qtool"
    if script.exists():
        p = subprocess.run([str(script), "quantize", str(m256), "Q9_9"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "valid types" in p.stderr and "Traceback" not in p.stderr


# --- bad input ------------------------------------------------------------------------------------

def test_unknown_type(m256: Path, tmp_path: Path) -> None:
    r = invoke(str(m256), str(tmp_path / "o.gguf"), "Q9_9")
    assert_refused(r, r"invalid ftype 'Q9_9'.*valid types: .*IQ4_XS.*Q4_K_M", tmp_path, code=2)
    r = invoke(str(m256), "Q4_K_Q")  # INPUT WORD: WORD is read as OUTPUT, so TYPE is missing
    assert_refused(r, r"missing TYPE.*'Q4_K_Q' was read as OUTPUT.*valid types: .*Q8_0", tmp_path, code=2)
    r = invoke(str(m256), str(tmp_path / "o.gguf"), "99")
    assert_refused(r, r"invalid ftype '99'", tmp_path, code=2)
    with pytest.raises(QuantizeError, match=r"valid types: .*Q5_K_S"):
        quantize_file(m256, tmp_path / "o.gguf", "Q4_K_X")
    assert os.listdir(tmp_path) == []


def test_unknown_tensor_type(m256: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "o.gguf")
    r = invoke("--tensor-type", "attn_q=q9_x", str(m256), out, "Q4_0")
    assert_refused(r, r"--tensor-type.*'q9_x'.*valid types: .*q4_k.*iq4_nl", tmp_path, code=2)
    r = invoke("--tensor-type", "attn_q", str(m256), out, "Q4_0")
    assert_refused(r, r"--tensor-type", tmp_path, code=2)
    r = invoke("--output-tensor-type", "q3_kk", str(m256), out, "Q4_0")
    assert_refused(r, r"--output-tensor-type.*q3_kk.*valid types", tmp_path, code=2)
    r = invoke("--token-embedding-type", "int4", str(m256), out, "Q4_0")
    assert_refused(r, r"--token-embedding-type.*int4", tmp_path, code=2)
    with pytest.raises(QuantizeError, match=r"--tensor-type.*q9_x"):
        quantize_file(m256, out, "Q4_0", tensor_type=["ffn_up=q9_x"])
    assert os.listdir(tmp_path) == []


def test_missing_input(tmp_path: Path) -> None:
    r = invoke(str(tmp_path / "nope.gguf"), str(tmp_path / "o.gguf"), "Q4_0")
    assert_refused(r, r"nope\.gguf: no such file", tmp_path, code=1)
    r = invoke(str(tmp_path), str(tmp_path / "o.gguf"), "Q4_0")
    assert_refused(r, r"is a directory", tmp_path, code=1)


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"GGUF", b"GGUF\x03\x00\x00\x00" + b"\xff" * 16,
                                     b"\x00" * 4096])
def test_non_gguf_input(content: bytes, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    r = invoke(str(bad), str(tmp_path / "o.gguf"), "Q4_0")
    assert_refused(r, r"bad\.gguf", tmp_path, code=1, leftover=("bad.gguf",))
    assert bad.read_bytes() == content


def _data_offset(path: Path) -> int:
    """Where tensor data start (gguf-py's reader)."""
    return int(gguf.GGUFReader(path).data_offset)


@pytest.mark.parametrize("where", ["header", "kv", "tensor_infos", "data_start", "data_middle", "data_end"])
def test_truncated_input(where: str, m256: Path, tmp_path: Path) -> None:
    size = m256.stat().st_size
    data_start = _data_offset(m256)
    cut = {"header": 30, "kv": 200, "tensor_infos": data_start - 40, "data_start": data_start + 10,
           "data_middle": (data_start + size) // 2, "data_end": size - 1}[where]
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(m256.read_bytes()[:cut])
    before = sha256(bad)
    r = invoke(str(bad), str(tmp_path / "o.gguf"), "Q4_0", "2")
    assert_refused(r, r"cut\.gguf: truncated", tmp_path, code=1, leftover=("cut.gguf",))
    assert sha256(bad) == before


def test_output_is_input(m256: Path, tmp_path: Path) -> None:
    inp = tmp_path / "m.gguf"
    shutil.copyfile(m256, inp)
    before = sha256(inp)
    (tmp_path / "sub").mkdir()
    os.symlink(inp, tmp_path / "link.gguf")
    for out in (str(inp), str(tmp_path / "sub" / ".." / "m.gguf"), str(tmp_path / "link.gguf")):
        r = invoke(str(inp), out, "Q4_0")
        assert_refused(r, r"is the input file", tmp_path, code=1,
                       leftover=("link.gguf", "m.gguf", "sub"))
    with pytest.raises(QtoolError, match="is the input"):
        quantize_file(inp, inp, "Q8_0")
    assert sha256(inp) == before


def test_requantize(m256: Path, tmp_path: Path) -> None:
    q4 = tmp_path / "q4.gguf"
    assert invoke("-q", str(m256), str(q4), "Q4_0", "1").exit_code == 0
    before = sha256(q4)
    r = invoke(str(q4), str(tmp_path / "o.gguf"), "Q8_0")
    assert_refused(r, r"requantizing from type q\d_\w+ is disabled .*--allow-requantize", tmp_path, code=1,
                   leftover=("q4.gguf",))
    # the same ftype again: every tensor keeps its type and is copied (nothing to requantize)
    r = invoke("-q", str(q4), str(tmp_path / "same.gguf"), "Q4_0")
    assert r.exit_code == 0, r.output
    assert sha256(tmp_path / "same.gguf") == before
    r = invoke("-q", "--allow-requantize", str(q4), str(tmp_path / "o.gguf"), "Q8_0")
    assert r.exit_code == 0, r.output
    with GGUFModel(tmp_path / "o.gguf") as m:
        assert {t.qtype.name for t in m.tensors} == {"Q8_0", "F32"}
    assert sha256(q4) == before


@pytest.mark.parametrize("ftype", ["IQ2_XS", "IQ2_XXS", "IQ1_S", "IQ1_M", "IQ2_S", "Q2_K_S"])
def test_type_needs_imatrix(ftype: str, m256: Path, tmp_path: Path) -> None:
    """llama-quantize refuses these without an imatrix (tensor_requires_imatrix), before writing."""
    r = invoke(str(m256), str(tmp_path / "o.gguf"), ftype)
    assert_refused(r, r"requires an importance matrix \(--imatrix\): tensor blk\.0\.attn_k\.weight", tmp_path,
                   code=1)
    p = qtool.plan(m256, ftype)
    assert [d.name for d in p if d.requires_imatrix] and not any(
        d.requires_imatrix for d in p if d.name in ("output.weight", "token_embd.weight"))


@pytest.fixture(scope="module")
def imatrix_without_ffn_down(tmp_path_factory: pytest.TempPathFactory) -> str:
    data = read_imatrix(IM256)
    del data.entries["blk.0.ffn_down.weight"]
    path = tmp_path_factory.mktemp("imatrix") / "partial.gguf"
    write_gguf(data, path)
    return str(path)


def test_imatrix_missing_entry_warns(imatrix_without_ffn_down: str, m256: Path, tmp_path: Path) -> None:
    """As llama-quantize: 'did not find weights for X', X quantized without weights."""
    out = tmp_path / "o.gguf"
    r = invoke("--imatrix", imatrix_without_ffn_down, str(m256), str(out), "Q4_0", "1")
    assert r.exit_code == 0, r.output
    assert "warning: did not find imatrix weights for blk.0.ffn_down.weight" in r.stderr
    assert "blk.1.ffn_down.weight" not in r.stderr
    plain, full = tmp_path / "plain.gguf", tmp_path / "full.gguf"
    quantize_file(m256, plain, "Q4_0", nthreads=1)
    quantize_file(m256, full, "Q4_0", nthreads=1, imatrix=IM256)

    def data(path: Path, name: str) -> bytes:
        with GGUFModel(path) as m:
            return bytes(m.tensor_data(next(t for t in m.tensors if t.name == name)))

    assert data(out, "blk.0.ffn_down.weight") == data(plain, "blk.0.ffn_down.weight")
    assert data(out, "blk.1.ffn_down.weight") == data(full, "blk.1.ffn_down.weight")
    assert data(out, "blk.1.ffn_down.weight") != data(plain, "blk.1.ffn_down.weight")
    with GGUFModel(out) as m:
        assert m.kv("quantize.imatrix.entries_count") == 13


def test_imatrix_missing_entry_for_a_type_that_needs_one(imatrix_without_ffn_down: str, m256: Path,
                                                         tmp_path: Path) -> None:
    r = invoke("--imatrix", imatrix_without_ffn_down, str(m256), str(tmp_path / "o.gguf"), "Q2_K_S")
    assert_refused(r, r"Missing importance matrix for tensor blk\.0\.ffn_down\.weight", tmp_path, code=1)


def test_bad_imatrix(models: dict[str, Path], tmp_path: Path) -> None:
    out = str(tmp_path / "o.gguf")
    r = invoke("--imatrix", str(tmp_path / "none.dat"), str(models["tiny-256"]), out, "Q4_0")
    assert_refused(r, r"none\.dat: no such imatrix file", tmp_path, code=1)
    r = invoke("--imatrix", IM320, str(models["tiny-256"]), out, "Q4_0")  # another model's imatrix
    assert_refused(r, r"imatrix size 320 is different from tensor size 256 for blk\.0\.attn_k\.weight", tmp_path,
                   code=1)
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x01\x00\x00\x00\x05\x00")
    r = invoke("--imatrix", str(bad), str(models["tiny-256"]), out, "Q4_0")
    assert_refused(r, r"bad\.dat", tmp_path, code=1, leftover=("bad.dat",))
    r = invoke("--imatrix", IM256, "--include-weights", "attn", "--exclude-weights", "ffn", str(models["tiny-256"]),
               out, "Q4_0")
    assert_refused(r, r"cannot be used together", tmp_path, code=1, leftover=("bad.dat",))


@pytest.mark.parametrize("arg,pattern", [
    ("general.name", r"malformed KV override"),
    ("general.name=x", r"invalid type"),
    ("general.name=string:x", r"invalid type"),
    ("tiny.flag=bool:yes", r"invalid boolean value"),
    ("general.name=str:" + "x" * 128, r"malformed KV override.*cannot exceed 127"),
    ("k" * 128 + "=int:1", r"malformed KV override"),
])
def test_bad_override_kv(arg: str, pattern: str, m256: Path, tmp_path: Path) -> None:
    r = invoke("--override-kv", arg, str(m256), str(tmp_path / "o.gguf"), "Q4_0")
    assert_refused(r, r"--override-kv: " + pattern, tmp_path, code=1)


def test_override_kv_parsing() -> None:
    """common.cpp's string_parse_kv_override forms; qtool refuses what atol / atof would silently turn
    into 0 or wrap (issue 9, item 7), and writes int as u32 of |v|, as llama-quantize does."""
    assert parse_override_kv("a=int:-7").to_kv().value == 7
    assert parse_override_kv("a=float:2.5e1").value == 25.0
    assert parse_override_kv("a=bool:false").value is False
    assert parse_override_kv("a=str:x=y:z").value == "x=y:z"
    for bad, msg in (("a=int:-12abc", "not an integer"), ("a=int:x", "not an integer"),
                     ("a=int:99999999999999999999999", "out of range"), ("a=int:4294967296", "out of range"),
                     ("a=float:2.5e1x", "not a number"), ("=int:1", "empty key"), (" =int:1", "empty key"),
                     ("a=bool:yes", "true or false"), ("a=i32:1", "invalid type")):
        with pytest.raises(QuantizeError, match=msg) as ei:
            parse_override_kv(bad)
        assert ei.value.option == "--override-kv"


@pytest.mark.parametrize("kv,msg", [
    ("llama.block_count=str:thirty", "the input has llama.block_count as uint32"),
    ("general.alignment=int:7", "power of two"),
    ("general.alignment=str:32", "the input has general.alignment|power of two"),
    ("general.name=int:3", "the input has general.name as string"),
    ("split.count=int:2", "split keys"),
])
def test_override_kv_checked_against_the_model(kv: str, msg: str, m256: Path, tmp_path: Path) -> None:
    """Overrides that would write a file llama.cpp cannot load fail before any work, naming the key."""
    r = invoke("--override-kv", kv, str(m256), str(tmp_path / "o.gguf"), "Q8_0")
    assert_refused(r, msg, tmp_path, code=1)


def test_engine_lacks_type(m256: Path, tmp_path: Path) -> None:
    """A type the engine has no kernel for is refused before anything is written: Q4_0_4_4 with an
    imatrix (ik's quantize_q4_0_4x4 asserts it has none: its llama-quantize aborts), as an ftype
    and forced by a rule."""
    from qtool.quants import can_quantize

    assert can_quantize("Q4_0_4_4", "ik", False) and not can_quantize("Q4_0_4_4", "ik", True)
    r = invoke("--flavour", "ik", "--imatrix", IM256, str(m256), str(tmp_path / "o.gguf"), "Q4_0_4_4")
    assert_refused(r, r"cannot produce type\(s\) q4_0_4_4\b.* as ik_llama.cpp does yet", tmp_path, code=1)
    r = invoke("--flavour", "ik", "--imatrix", IM256, "--tensor-type", "ffn_up=q4_0_4_8", str(m256),
               str(tmp_path / "o.gguf"), "Q4_0")
    assert_refused(r, r"cannot produce type\(s\) q4_0_4_8", tmp_path, code=1)


def test_forced_type_with_an_incompatible_block_size(models: dict[str, Path], tmp_path: Path) -> None:
    """Rows of 320 and a forced k-quant: llama-quantize aborts (no fallback for forced types); qtool refuses."""
    r = invoke("--token-embedding-type", "q4_k", str(models["tiny-320"]), str(tmp_path / "o.gguf"), "Q8_0")
    assert_refused(r, r"token_embd\.weight: row length 320 is not a multiple of the block size 256 of q4_k",
                   tmp_path, code=1)


# --- crash and interrupt --------------------------------------------------------------------------

def _fail_after(n: int, exc: type[BaseException], monkeypatch: pytest.MonkeyPatch) -> None:
    """Make qtool.runner.convert_rows raise `exc` from its n-th call on (in forked workers too)."""
    real = qtool.runner.convert_rows
    calls = [0]

    def convert_rows(*a: Any, **k: Any) -> np.ndarray:
        calls[0] += 1
        if calls[0] > n:
            raise exc("injected failure")
        return real(*a, **k)

    monkeypatch.setattr(qtool.runner, "convert_rows", convert_rows)


@pytest.mark.parametrize("nthreads", [1, 2])
def test_crash_mid_run_leaves_nothing(nthreads: int, m256: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_after(5, RuntimeError, monkeypatch)
    with pytest.raises(RuntimeError, match="injected failure"):
        quantize_file(m256, tmp_path / "o.gguf", "Q4_K_M", nthreads=nthreads)
    assert os.listdir(tmp_path) == []


def test_keyboard_interrupt_via_cli(m256: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_after(3, KeyboardInterrupt, monkeypatch)
    r = invoke(str(m256), str(tmp_path / "o.gguf"), "Q4_0", "1")
    assert r.exit_code == 130
    assert "interrupted: no output written" in r.output and "Traceback" not in r.output
    assert os.listdir(tmp_path) == []


_SLOW = """
import os, signal, sys, time
# as from a terminal: a shell's background job (CI, nohup) starts with SIGINT ignored, inherited,
# and nohup with SIGHUP ignored (QTOOL_TEST_NOHUP: keep it so)
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGHUP, signal.SIG_IGN if os.environ.get("QTOOL_TEST_NOHUP") else signal.SIG_DFL)
import qtool.runner as r
real = r.convert_rows
def convert_rows(*a, **k):
    time.sleep(0.2)
    return real(*a, **k)
r.convert_rows = convert_rows
from qtool.cli import main
sys.argv[0] = "qtool"
main()
"""


def _signal_slow_run(m256: Path, tmp_path: Path, out_dir: Path, nthreads: str, sig: int,
                     env: dict[str, str] | None = None, wait: float = 60) -> tuple[subprocess.Popen[bytes], bytes]:
    """Start the slowed quantize (_SLOW) in its own process group, send sig to the group once the
    temporary output exists (the run is still going), wait for the end (at most `wait` seconds):
    (process, stderr)."""
    script = tmp_path / "slow_qtool.py"
    script.write_text(_SLOW)
    out_dir.mkdir()
    p = subprocess.Popen([sys.executable, str(script), "quantize", str(m256), str(out_dir / "o.gguf"), "Q4_0",
                          nthreads], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                         env={**os.environ, **(env or {})})
    try:
        t0 = time.monotonic()
        while not any(n.endswith(".part") for n in os.listdir(out_dir)):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() - t0 < 60, "no temporary output appeared"
            time.sleep(0.01)
        time.sleep(0.3)
        assert p.poll() is None
        os.killpg(p.pid, sig)
        _, err = p.communicate(timeout=wait)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return p, err


@pytest.mark.parametrize("sig,nthreads", [(signal.SIGINT, "1"), (signal.SIGINT, "2"), (signal.SIGTERM, "2"),
                                         (signal.SIGHUP, "2"), (signal.SIGQUIT, "2")])
def test_ctrl_c_subprocess(sig: int, nthreads: str, m256: Path, tmp_path: Path) -> None:
    """A real run (each work item slowed to 0.2 s) gets the signal through its whole process
    group, as Ctrl-C from a terminal does, once the temporary output exists: exit 130 (128 + the
    signal for SIGTERM, SIGHUP, SIGQUIT), no traceback from the main process or a worker, no file left."""
    out_dir = tmp_path / "out"
    p, err = _signal_slow_run(m256, tmp_path, out_dir, nthreads, sig)
    assert p.returncode == (130 if sig == signal.SIGINT else 128 + sig), err.decode()
    assert "no output written" in err.decode()
    assert "Traceback" not in err.decode()
    assert os.listdir(out_dir) == []


def test_nohup_run_survives_sighup(m256: Path, tmp_path: Path) -> None:
    """Under `nohup` (SIGHUP ignored) a group-wide SIGHUP (the terminal closing) neither stops the
    main process nor kills its workers: the run completes with its output (the workers used to
    take the default action and die, failing the run with "a worker process died")."""
    out_dir = tmp_path / "out"
    p, err = _signal_slow_run(m256, tmp_path, out_dir, "2", signal.SIGHUP, {"QTOOL_TEST_NOHUP": "1"}, wait=120)
    assert p.returncode == 0, err.decode()
    assert os.listdir(out_dir) == ["o.gguf"]


def test_api_result(m256: Path, tmp_path: Path) -> None:
    """QuantizeResult of a real run and of a dry run; on_plan / on_progress callbacks."""
    seen: list[tuple[str, int]] = []
    planned: list[int] = []
    r = quantize_file(m256, tmp_path / "o.gguf", "Q6_K", nthreads=1, on_plan=lambda p, w: planned.append(len(p)),
                      on_progress=lambda name, n: seen.append((name, n)))
    assert isinstance(r, QuantizeResult) and r.run is not None and not r.dry_run
    assert planned == [21]
    assert sum(n for _, n in seen) == sum(int(np.prod(d.shape)) for d in r.plan)
    assert [name for name, _ in seen] == [d.name for d in r.plan]
    assert r.size_out == r.run.size_out and r.bpw_out == pytest.approx(8 * r.size_out / r.run.n_elements)
    assert sha256(tmp_path / "o.gguf") == MANIFEST["tiny-256-Q6_K"]["sha256"]
    d = quantize_file(m256, tmp_path / "never.gguf", "Q6_K", dry_run=True)
    assert d.dry_run and d.run is None and d.size_out == 0 and d.to_json()["output"] is None
    assert d.nthreads == (os.cpu_count() or 1)  # NTHREADS left out (or <= 0): all cores, as llama-quantize
    assert quantize_file(m256, None, "Q6_K", nthreads=0, dry_run=True).nthreads == (os.cpu_count() or 1)
    assert [x.type for x in d.plan] == [x.type for x in r.plan]
    assert sorted(os.listdir(tmp_path)) == ["o.gguf"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_output_permissions_follow_umask(m256: Path, tmp_path: Path) -> None:
    """The temporary file (mkstemp: 0600) gets 0666 less the umask before the rename, like a file
    llama-quantize or llama-imatrix creates; the same for imatrix outputs."""
    old = os.umask(0o022)
    try:
        quantize_file(m256, tmp_path / "o.gguf", "Q8_0", nthreads=1)
        write_gguf(read_imatrix(IM256), tmp_path / "im.gguf")
    finally:
        os.umask(old)
    assert (tmp_path / "o.gguf").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "im.gguf").stat().st_mode & 0o777 == 0o644


def test_flavour_ik_refuses_unported_imatrix_variants(m256: Path, tmp_path: Path) -> None:
    """Under the ik flavour a variant qtool does not write (Q4_0_8_8 with an imatrix, where ik's
    llama-quantize aborts) is refused by name before anything is written, never replaced by
    something else; ik's own algorithms for mainline types give other bytes than mainline's with
    the same imatrix."""
    with pytest.raises(QuantizeError, match=r"q4_0_8_8 \(with an imatrix\) as ik_llama.cpp does"):
        quantize_file(m256, tmp_path / "o.gguf", "Q4_0_8_8", imatrix=IM256, flavour="ik", nthreads=1)
    assert os.listdir(tmp_path) == []
    ik = quantize_file(m256, tmp_path / "a.gguf", "Q4_K_M", imatrix=IM256, flavour="ik", nthreads=1)
    main = quantize_file(m256, tmp_path / "c.gguf", "Q4_K_M", imatrix=IM256, nthreads=1)
    assert sha256(Path(ik.output)) != sha256(Path(main.output))
    quantize_file(m256, tmp_path / "b.gguf", "Q6_K", imatrix=IM256, flavour="ik", nthreads=1)
    mainline = quantize_file(m256, tmp_path / "d.gguf", "Q6_K", imatrix=IM256, nthreads=1)
    assert sha256(tmp_path / "b.gguf") != sha256(Path(mainline.output))
