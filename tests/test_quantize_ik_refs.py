"""ik_llama.cpp's ftypes end to end: qtool's output equals ik_llama.cpp's llama-quantize
(commit 8337e4cd, -ffp-contract=off) on the tiny fixture models, without and with an imatrix,
for every IQK and trellis ftype and ik's ftypes of mainline types (manifest made by
tests/data/quantize/make_ik_refs.py); what ik refuses (an imatrix required) qtool refuses before
writing anything. An ik-only ftype implies --flavour ik, and the run says once that the file
needs ik_llama.cpp.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from qtool.api import quantize_file
from qtool.cli import cli
from qtool.errors import QtoolError
from qtool.gguf_io import GGUFModel

DATA = Path(__file__).parent / "data" / "quantize"
MANIFEST: dict[str, dict[str, Any]] = json.loads((DATA / "ik_llama_quantize_sha256.json").read_text())
FTYPES = ["IQ4_K", "IQ4_KS", "IQ3_K", "IQ2_K", "IQ2_KS", "IQ5_K", "IQ6_K", "IQ4_KSS", "IQ2_KL", "IQ3_KS", "IQ3_KL",
          "IQ5_KS", "IQ1_BN", "IQ2_BN"]
ABORTS_WITH_IMATRIX = {"Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8"}  # ik's quantize_q4_0_4x4 asserts it gets none
IK_ONLY = {*FTYPES, "IQ1_KT", "IQ2_KT", "IQ3_KT", "IQ4_KT", "Q6_0"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ik-models")
    out = {}
    for name in ("tiny-256", "tiny-320"):
        out[name] = d / f"{name}.gguf"
        out[name].write_bytes(lzma.open(DATA / f"{name}.gguf.xz").read())
    return out


def test_manifest_covers_every_iqk_ftype() -> None:
    for m in ("tiny-256", "tiny-320"):
        for ft in FTYPES:
            for suffix in ("", "-imdat"):
                assert "sha256" in MANIFEST[f"{m}-{ft}{suffix}"]


@pytest.mark.parametrize("case", sorted(MANIFEST))
def test_case(case: str, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API, flavour implied by an ik-only ftype (none given), one process."""
    ref = MANIFEST[case]
    args = [a for a in ref["args"] if a != "--slow-iq2ks"]  # qtool's IQ2_KS is ik's reference search
    kw = {"imatrix": args[1]} if args[0] == "--imatrix" else {}
    monkeypatch.chdir(DATA)
    out = tmp_path / "out.gguf"
    # ik-only ftypes imply the flavour; ik's ftypes of mainline types need it said
    flavour = {} if args[-1] in IK_ONLY else {"flavour": "ik"}
    if "error" in ref:  # ik's llama-quantize refused (an imatrix is required) or aborted
        why = "with an imatrix" if args[-1] in ABORTS_WITH_IMATRIX else "(requires|needs) an importance matrix"
        with pytest.raises(QtoolError, match=why):
            quantize_file(models[ref["model"]], out, args[-1], nthreads=1, **flavour, **kw)
        assert os.listdir(tmp_path) == []
        return
    r = quantize_file(models[ref["model"]], out, args[-1], nthreads=1, **flavour, **kw)
    assert r.plan.flavour == "ik"
    assert out.stat().st_size == ref["size"]
    assert sha256(out) == ref["sha256"], f"{case}: output differs from ik_llama.cpp's llama-quantize"


def test_cli_implies_flavour_and_says_once_that_ik_is_needed(models: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ref = MANIFEST["tiny-320-IQ4_K-imdat"]
    monkeypatch.chdir(DATA)
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(cli, ["quantize", "--imatrix", "tiny-320.imatrix.dat", str(models["tiny-320"]), str(out),
                                 "iq4_k", "2"])
    assert r.exit_code == 0, r.output
    assert sha256(out) == ref["sha256"]
    assert " ".join(r.stderr.split()).count("needs ik_llama.cpp to run") == 1  # rich may wrap the line
    with GGUFModel(out, flavour="ik") as m:
        assert "Q6_0" in {t.qtype.name for t in m.tensors}  # rows of 320: ik's fallbacks (Q5_0/Q6_0/Q8_0)
    # the same word with --flavour mainline given explicitly is refused, naming the valid ftypes
    r = CliRunner().invoke(cli, ["quantize", "--flavour", "mainline", str(models["tiny-320"]), str(out), "IQ4_K"])
    assert r.exit_code == 2 and "invalid ftype 'IQ4_K' for mainline" in r.output
    r = CliRunner().invoke(cli, ["mix", "show", str(models["tiny-256"]), "IQ2_KS", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["flavour"] == "ik"
    assert os.listdir(tmp_path) == ["o.gguf"]


def test_stats_rmse_with_an_ik_type_implies_flavour_ik(models: dict[str, Path]) -> None:
    """`qtool stats model.gguf --rmse -t q4_k -t iq4_k`: one `TYPE BPW RMSE` line per type."""
    r = CliRunner().invoke(cli, ["stats", str(models["tiny-256"]), "--rmse", "-t", "q4_k", "-t", "iq4_k"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.split("\n")[:2]
    assert [ln.split()[0] for ln in lines] == ["q4_k", "iq4_k"]
    assert all(float(ln.split()[2]) > 0 for ln in lines)
    r = CliRunner().invoke(cli, ["stats", str(models["tiny-256"]), "--rmse", "-t", "iq4_k", "--flavour", "mainline"])
    assert r.exit_code == 2 and "cannot quantize to IQ4_K (mainline)" in r.output


def test_interleaved_types_get_whole_row_groups_per_slab(models: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Slabs of 6 rows (not a multiple of 4 or 8): the runner rounds them to whole row groups, so a
    large tensor of an interleaved type is quantized as ik_llama.cpp does, not refused."""
    from qtool import runner

    monkeypatch.setattr(runner, "SLAB_ELEMENTS", 6 * 256)
    monkeypatch.chdir(DATA)
    for ft in ("Q4_K_R4", "Q4_0_R8"):
        ref = MANIFEST[f"tiny-256-{ft}-imdat"]
        out = tmp_path / f"{ft}.gguf"
        quantize_file(models["tiny-256"], out, ft, nthreads=1, flavour="ik", imatrix="tiny-256.imatrix.dat")
        assert sha256(out) == ref["sha256"], ft
