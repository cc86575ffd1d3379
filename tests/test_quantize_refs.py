"""`qtool quantize` byte for byte against mainline llama-quantize on the tiny fixture models.

tests/data/quantize/llama_quantize_sha256.json records, per case, llama-quantize's arguments and
the SHA256 of the file it wrote (make_refs.py there rebuilds fixtures and manifest). Each case
is run here through qtool's Python API (one process) and must give the same bytes; one case runs
through the CLI with 2 worker processes. Cases llama-quantize refuses must be refused by qtool
too, with a QuantizeError and no file written.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import lzma
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from qtool.api import QuantizeError, quantize_file
from qtool.cli import cli

DATA = Path(__file__).parent / "data" / "quantize"
MANIFEST: dict[str, dict[str, Any]] = json.loads((DATA / "llama_quantize_sha256.json").read_text())

_spec = importlib.util.spec_from_file_location("quantize_make_refs", DATA / "make_refs.py")
assert _spec is not None and _spec.loader is not None
make_refs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_refs)

# llama-quantize option -> (quantize_file keyword, takes a value, repeatable)
_OPTS = {
    "--imatrix": ("imatrix", True, False),
    "--include-weights": ("include_weights", True, True),
    "--exclude-weights": ("exclude_weights", True, True),
    "--pure": ("pure", False, False),
    "--leave-output-tensor": ("leave_output_tensor", False, False),
    "--output-tensor-type": ("output_tensor_type", True, False),
    "--token-embedding-type": ("token_embedding_type", True, False),
    "--tensor-type": ("tensor_type", True, True),
    "--override-kv": ("override_kv", True, True),
    "--prune-layers": ("prune_layers", True, False),
    "--allow-requantize": ("allow_requantize", False, False),
    "--keep-split": ("keep_split", False, False),
    "--tensor-type-file": ("tensor_type_file", True, True),
}


def api_kwargs(args: list[str]) -> tuple[dict[str, Any], str]:
    """quantize_file keywords and the TYPE from llama-quantize's argument list (options, then TYPE)."""
    kw: dict[str, Any] = {}
    it = iter(args[:-1])
    for a in it:
        key, has_value, multi = _OPTS[a]
        v: Any = next(it) if has_value else True
        if multi:
            kw.setdefault(key, []).append(v)
        else:
            kw[key] = v
    return kw, args[-1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixture models, decompressed once per module."""
    d = tmp_path_factory.mktemp("quantize-models")
    out = {}
    for name in make_refs.MODELS:
        out[name] = d / f"{name}.gguf"
        with lzma.open(make_refs.model_path(name)) as f:
            out[name].write_bytes(f.read())
    return out


def test_manifest_covers_the_brief() -> None:
    """Every ftype without and with both imatrix formats on both models, plus the option cases."""
    assert set(MANIFEST) == set(make_refs.cases())
    for m in make_refs.MODELS:
        for ft in make_refs.FTYPES:
            for suffix in ("", "-im", "-imdat"):
                assert "sha256" in MANIFEST[f"{m}-{ft}{suffix}"]
    assert sum("error" in c for c in MANIFEST.values()) == 1  # tiny-320 with a forced q4_k token_embd


@pytest.mark.parametrize("case", sorted(MANIFEST))
def test_case(case: str, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = MANIFEST[case]
    kw, ftype = api_kwargs(ref["args"])
    monkeypatch.chdir(DATA)  # imatrix paths are relative, as recorded in quantize.imatrix.file
    out = tmp_path / "out.gguf"
    if "error" in ref:
        with pytest.raises(QuantizeError, match="not a multiple of"):
            quantize_file(models[ref["model"]], out, ftype, nthreads=1, **kw)
        assert os.listdir(tmp_path) == []
        return
    r = quantize_file(models[ref["model"]], out, ftype, nthreads=1, **kw)
    name = ref.get("output_name", "out.gguf")  # --keep-split: out-00001-of-00001.gguf
    assert os.listdir(tmp_path) == [name]
    out = tmp_path / name
    assert out.stat().st_size == ref["size"]
    assert r.size_out <= ref["size"] and r.output == str(out)
    assert sha256(out) == ref["sha256"], f"{case}: output differs from llama-quantize's"


@pytest.mark.parametrize("case", ["tiny-320-Q4_K_M-im", "tiny-256-Q3_K_S-imdat"])
def test_cli_two_processes(case: str, models: dict[str, Path], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI with llama-quantize's positional form and NTHREADS 2 gives the same bytes."""
    ref = MANIFEST[case]
    monkeypatch.chdir(DATA)
    out = tmp_path / "out.gguf"
    args = ref["args"]
    r = CliRunner().invoke(cli, ["quantize", "-q", *args[:-1], str(models[ref["model"]]), str(out), args[-1], "2"])
    assert r.exit_code == 0, r.output
    assert sha256(out) == ref["sha256"]
