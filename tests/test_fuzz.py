"""Fuzzing: structure-aware mutants of a real GGUF file (tests/gguf_fuzz.py) through the reader,
the planner (`quantize --dry-run`), `stats` and, for mutants the reader accepts, a real
quantization. Every mutant must be rejected with a QtoolError or processed; never another
exception, never a hang (a 20 s alarm per case), never a change to the input, never a file left.

The same for imatrix files (GGUF: structural mutants; .dat: byte flips and cuts) through the
reader, llama-imatrix's statistics, llama-quantize's weights and a quantization with them.
The smoke sets run in CI; `pytest -m slow tests/test_fuzz.py` runs >= 10,000 cases of each.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from qtool.api import plan, quantize_file
from qtool.errors import QtoolError
from qtool.gguf_io import GGUFModel
from qtool.imatrix import compute_statistics, prepare_imatrix, read_imatrix
from qtool.quants import get_type
from qtool.stats.report import run_stats

from .gguf_fuzz import fields, mutations

IMATRIX = Path(__file__).parent / "data" / "quantize"


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang


def _process(path: Path, out_dir: Path, quantize: bool) -> str:
    """Run one file through everything; returns the outcome, raises on a defect."""
    try:
        with GGUFModel(path):
            pass
    except QtoolError:
        return "rejected by reader"
    outcome = "accepted"
    try:
        plan(path, "Q4_K_M")
    except QtoolError:
        outcome = "rejected by planner"
    try:
        run_stats(str(path), [get_type("Q8_0")], threads=1)
    except QtoolError:
        outcome += ", stats refused"
    if quantize:
        try:
            quantize_file(path, out_dir / "out.gguf", "Q8_0", nthreads=1)
            (out_dir / "out.gguf").unlink()
        except QtoolError:
            outcome += ", quantize refused"
    return outcome


def _run(base: bytes, tmp_path: Path, n_random: int, quantize_every: int, seed: int = 1) -> Counter[str]:
    rng = np.random.default_rng(seed)
    path = tmp_path / "m.gguf"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    outcomes: Counter[str] = Counter()
    defects: list[str] = []
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i, (desc, data) in enumerate(mutations(base, rng, n_random)):
            path.write_bytes(data)
            before = hashlib.sha256(data).digest()
            signal.alarm(20)
            try:
                outcomes[_process(path, out_dir, quantize=i % quantize_every == 0)] += 1
            except Hang:
                defects.append(f"{desc}: hang")
            except Exception as e:  # noqa: BLE001 - any other exception is the defect we look for
                defects.append(f"{desc}: {type(e).__name__}: {e}")
            finally:
                signal.alarm(0)
            if hashlib.sha256(path.read_bytes()).digest() != before:
                defects.append(f"{desc}: the input changed")
            if os.listdir(out_dir):
                defects.append(f"{desc}: left {os.listdir(out_dir)}")
                for n in os.listdir(out_dir):
                    (out_dir / n).unlink()
    finally:
        signal.signal(signal.SIGALRM, old)
    assert not defects, f"{len(defects)} defects of {sum(outcomes.values()) + len(defects)} cases:\n" + "\n".join(
        defects[:30])
    return outcomes


def test_base_is_valid_and_the_mutator_sees_every_field(mini_gguf: bytes, tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    p.write_bytes(mini_gguf)
    with GGUFModel(p) as m:
        assert len(m.tensors) == 21
    fs = fields(mini_gguf)
    assert sum(f.kind == "toffset" for f in fs) == 21 and sum(f.kind == "vtype" for f in fs) == 12


def test_fuzz_smoke(mini_gguf: bytes, tmp_path: Path) -> None:
    """CI: every structural mutant (~1,900) and 300 random ones; a real quantization for 1 in 25."""
    outcomes = _run(mini_gguf, tmp_path, n_random=300, quantize_every=25)
    total = sum(outcomes.values())
    assert total > 1500
    assert outcomes["rejected by reader"] > total // 2  # most mutants are bad files
    assert any(k.startswith("accepted") for k in outcomes)  # and some are still valid ones


@pytest.mark.slow
def test_fuzz_many(mini_gguf: bytes, tmp_path: Path) -> None:
    """>= 10,000 cases: the structural set with 8,500 random mutants; a real quantization for 1 in 10."""
    outcomes = _run(mini_gguf, tmp_path, n_random=8500, quantize_every=10, seed=2)
    assert sum(outcomes.values()) >= 10_000
    print(dict(outcomes))


# --- imatrix files -------------------------------------------------------------------------------

def _process_imatrix(path: Path, model: Path, out_dir: Path, quantize: bool) -> str:
    """An imatrix mutant through the reader, llama-imatrix's statistics, llama-quantize's weights
    and (sometimes) a real quantization of tiny-256 with it."""
    try:
        d = read_imatrix(path)
    except QtoolError:
        return "rejected by reader"
    outcome = "accepted"
    try:
        compute_statistics(d, warn=lambda m: None)
        prepare_imatrix(d, str(path))
    except QtoolError:
        outcome = "rejected by statistics/weights"
    if quantize:
        try:
            quantize_file(model, out_dir / "out.gguf", "Q4_K_M", nthreads=1, imatrix=str(path))
            (out_dir / "out.gguf").unlink()
        except QtoolError:
            outcome += ", quantize refused"
    return outcome


def _run_imatrix(tiny256: Path, tmp_path: Path, n_random: int, quantize_every: int, seed: int) -> Counter[str]:
    rng = np.random.default_rng(seed)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    outcomes: Counter[str] = Counter()
    defects: list[str] = []
    gg = (IMATRIX / "tiny-256.imatrix.gguf").read_bytes()
    dat = (IMATRIX / "tiny-256.imatrix.dat").read_bytes()
    cases = [(f"gguf {d}", ".gguf", b) for d, b in mutations(gg, rng, n_random)]
    arr = np.frombuffer(dat, np.uint8)
    for k in range(max(200, n_random // 4)):  # .dat: byte flips anywhere, and truncations
        m = arr.copy()
        if k % 3 == 0:
            cases.append((f"dat cut at {k * 7 % len(dat)}", ".dat", dat[:k * 7 % len(dat)]))
            continue
        where = rng.integers(0, len(dat), int(rng.integers(1, 5)))
        m[where] = rng.integers(0, 256, where.size, dtype=np.uint8)
        cases.append((f"dat bytes at {where.tolist()}", ".dat", m.tobytes()))
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i, (desc, ext, data) in enumerate(cases):
            path = tmp_path / f"im{ext}"
            path.write_bytes(data)
            signal.alarm(20)
            try:
                outcomes[_process_imatrix(path, tiny256, out_dir, i % quantize_every == 0)] += 1
            except Hang:
                defects.append(f"{desc}: hang")
            except Exception as e:  # noqa: BLE001 - the defect we look for
                defects.append(f"{desc}: {type(e).__name__}: {e}")
            finally:
                signal.alarm(0)
            if path.read_bytes() != data:
                defects.append(f"{desc}: the input changed")
            if os.listdir(out_dir):
                defects.append(f"{desc}: left {os.listdir(out_dir)}")
                for n in os.listdir(out_dir):
                    (out_dir / n).unlink()
    finally:
        signal.signal(signal.SIGALRM, old)
    assert not defects, f"{len(defects)} defects:\n" + "\n".join(defects[:30])
    return outcomes


def test_fuzz_imatrix_smoke(tiny256: Path, tmp_path: Path) -> None:
    """CI: every structural mutant of a real imatrix GGUF, 200 random ones and 200 .dat mutants;
    a real quantization with 1 in 50."""
    outcomes = _run_imatrix(tiny256, tmp_path, n_random=200, quantize_every=50, seed=3)
    assert sum(outcomes.values()) > 1000 and outcomes["rejected by reader"] > 0


@pytest.mark.slow
def test_fuzz_imatrix_many(tiny256: Path, tmp_path: Path) -> None:
    """>= 10,000 imatrix cases; a real quantization with 1 in 40."""
    outcomes = _run_imatrix(tiny256, tmp_path, n_random=7000, quantize_every=40, seed=4)
    assert sum(outcomes.values()) >= 10_000
    print(dict(outcomes))
