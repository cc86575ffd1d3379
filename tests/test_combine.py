"""qtool.combine: the interval each quantized weight implies, the combined estimate of several
quants of the same rows, its block rules, and combine_files end to end on a tiny GGUF."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from qtool.api import quantize_file
from qtool.combine import (
    INTERVAL_RULES,
    CombineError,
    Intervals,
    can_combine,
    combine_files,
    combine_rows,
    estimate,
    intervals,
)
from qtool.errors import QtoolError
from qtool.gguf_io import GGUFModel, GGUFStreamWriter, OutTensor
from qtool.quants import dequantize, quantize

N = 512
# the legacy types whose imatrix path (make_qx_quants / make_qkx3_quants) rounds on a trial scale,
# not the stored one: their intervals are documented to miss some weights with an imatrix
SEARCHED_WITH_IMATRIX = {"Q4_0", "Q5_0", "Q4_1", "Q5_1"}


def rows(seed: int = 1, nrows: int = 32) -> np.ndarray:
    """Gaussian weights with an outlier column every 97 (they make the end codes clamp)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((nrows, N)) * 0.02).astype(np.float32)
    x[:, ::97] *= 6
    return x


X = rows()
IMX = (np.random.default_rng(7).random(N) + 0.1).astype(np.float32)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.mark.parametrize("qtype", list(INTERVAL_RULES))
def test_intervals_contain_the_truth_and_are_tight(qtype: str) -> None:
    q = quantize(X, qtype)
    iv = intervals(q, qtype, N)
    assert np.array_equal(iv.v, dequantize(q, qtype, N).astype(np.float64))
    inside = (iv.lo <= X) & (X <= iv.hi)
    assert int((~inside).sum()) == 0
    both = np.isfinite(iv.lo) & np.isfinite(iv.hi)
    assert both.mean() > 0.6  # most weights are bounded on both sides ...
    width = (iv.hi - iv.lo)[both]
    # ... within one step, plus the fp16 slack of the legacy scales (2^-11 per unit of level: a
    # quarter step at Q8_0's level 127), 1.5 steps at Q4_0 / Q5_0's clamped top code ([6.5, 8])
    assert np.all(width <= iv.step[both] * 1.53) and np.median(width / iv.step[both]) < 1.03
    assert np.all((iv.nlo <= iv.v) & (iv.v <= iv.nhi))


@pytest.mark.parametrize("qtype", list(INTERVAL_RULES))
def test_intervals_with_an_imatrix(qtype: str) -> None:
    """k-quants and IQ4 recompute the codes from the stored scales: exact with an imatrix too;
    the searched legacy paths miss some weights (the documented exception), but only a few."""
    q = quantize(X, qtype, IMX)
    iv = intervals(q, qtype, N)
    miss = int((~((iv.lo <= X) & (X <= iv.hi))).sum())
    if qtype in SEARCHED_WITH_IMATRIX:
        assert 0 < miss < 0.1 * X.size
    else:
        assert miss == 0


COMBOS = [("Q5_K", "Q4_K"), ("Q5_K", "Q4_K", "Q3_K"), ("Q6_K", "Q4_K", "Q2_K"), ("Q5_1", "Q5_0", "Q4_0"),
          ("IQ4_XS", "Q4_K"), ("Q8_0", "IQ4_NL")]


@pytest.mark.parametrize("combo", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_combined_beats_the_best_single_dequant(combo: tuple[str, ...]) -> None:
    qs = [quantize(X, t) for t in combo]
    best = min(rmse(dequantize(q, t, N), X) for q, t in zip(qs, combo, strict=True))
    est, st = combine_rows(qs, combo, N)
    assert est.dtype == np.float32 and est.shape == X.shape
    assert st.empty == 0 and st.fallback_blocks == 0  # valid intervals always intersect
    assert rmse(est, X) <= best
    if combo[0] != "Q8_0":  # Q8_0's step is 1/16 of IQ4_NL's: the gain there is tiny
        assert rmse(est, X) < 0.95 * best
    rev, _ = combine_rows(qs[::-1], combo[::-1], N)  # the order of the sources does not matter
    assert np.array_equal(rev, est)


def test_identical_sources_give_the_dequant() -> None:
    """A source twice adds nothing: the estimate is its dequant (not the midpoint of its interval,
    which differs at Q8_0's end codes)."""
    q = quantize(X, "Q8_0")
    est, _ = combine_rows([q, q], ["Q8_0", "Q8_0"], N)
    assert np.array_equal(est, dequantize(q, "Q8_0", N))


def test_grid_rule_returns_the_exact_original() -> None:
    """Rows that are a Q4_K dequant: the Q4_K quant of them (the same blocks for 99% of the
    weights) lies in every Q6_K interval, so those blocks are taken from it, exactly; without the
    rule the midpoint loses that."""
    x = dequantize(quantize(X, "Q4_K"), "Q4_K", N)
    qs = [quantize(x, "Q6_K"), quantize(x, "Q4_K")]
    est, st = combine_rows(qs, ["Q6_K", "Q4_K"], N)
    assert st.grid_blocks >= 0.9 * st.blocks
    assert np.mean(est == x) >= 0.9
    q6 = dequantize(qs[0], "Q6_K", N)
    assert rmse(est, x) < 0.5 * rmse(q6, x)
    raw, st_raw = combine_rows(qs, ["Q6_K", "Q4_K"], N, grid=False)
    assert st_raw.grid_blocks == 0 and rmse(raw, x) > 2 * rmse(est, x)


@pytest.mark.parametrize("exact", ["Q4_K", "Q5_0"])
def test_requantize_rule_makes_a_quant_of_a_quant_exact(exact: str) -> None:
    """Rows that are a dequant of `exact`, quantized (without an imatrix) to a finer and a coarser
    type besides: the interval rules come close; the requantize rule finds the source whose
    dequant reproduces every other source's bytes and returns the original bit for bit (the
    combination is then never worse than the best single source: that one is exact). On
    continuous rows it never fires."""
    x = dequantize(quantize(X, exact), exact, N)
    combo = ("Q6_K", exact, "Q3_K")
    qs = [quantize(x, t) for t in combo]
    est, st = combine_rows(qs, combo, N)
    without, st0 = combine_rows(qs, combo, N, requantize=False)
    assert st0.requantized_blocks == 0 and not np.array_equal(without, x)
    assert st.requantized_blocks >= 0.9 * st.blocks  # (Q4_K: 59 of 64; a requantize of a Q4_K
    assert np.mean(est == x) >= 0.9 and np.mean(est == x) > np.mean(without == x)  # dequant differs in 1%)
    assert rmse(est, x) <= rmse(without, x)
    x16 = x.astype(np.float16).astype(np.float32)  # an F16 original (as a dequantized model is stored)
    q16 = [quantize(x16, t) for t in combo]
    f16, st16 = combine_rows(q16, combo, N, target="F16")  # candidates rounded to F16 before the check
    _, st32 = combine_rows(q16, combo, N)
    assert st16.requantized_blocks >= 0.8 * st16.blocks > 2 * st32.requantized_blocks  # Q4_K: 54, 17 of 64
    assert np.mean(f16.astype(np.float16).astype(np.float32) == x16) >= 0.9
    cont = [quantize(X, t) for t in combo]
    _, st_c = combine_rows(cont, combo, N)
    assert st_c.requantized_blocks == 0


def test_fallback_when_intervals_disagree() -> None:
    """Sources of different data (half the rows of one quant come from other weights): the
    disjoint intervals send those blocks to the most precise source's dequant, unchanged; the
    other rows still gain."""
    other = X.copy()
    other[:16] = rows(seed=2, nrows=16)
    q5, q4 = quantize(X, "Q5_K"), quantize(other, "Q4_K")
    d5 = dequantize(q5, "Q5_K", N)
    est, st = combine_rows([q5, q4], ["Q5_K", "Q4_K"], N)
    assert st.fallback_blocks == 16 * (N // 256)
    assert np.array_equal(est[:16], d5[:16])
    assert rmse(est[16:], X[16:]) < 0.95 * rmse(d5[16:], X[16:])
    assert rmse(est, X) < rmse(d5, X)  # never worse than the best single source


def test_unsupported_type_refused() -> None:
    assert not can_combine("IQ2_XS") and can_combine("q4_k")
    with pytest.raises(CombineError, match="IQ2_XS"):
        intervals(np.zeros((1, 66), np.uint8), "IQ2_XS", 256)


# --- files ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quants(tiny256: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("combine")
    out = {}
    for ft in ("Q5_K_M", "Q4_K_M", "Q2_K"):
        p = d / f"tiny-{ft}.gguf"
        quantize_file(tiny256, p, ft, nthreads=1)
        out[ft] = p
    return out


def _floats(path: Path) -> dict[str, np.ndarray]:
    with GGUFModel(path) as m:
        return {t.name: dequantize(m.tensor_rows(t, 0, t.n_rows), t.qtype, t.n_per_row).astype(np.float64)
                for t in m.tensors}


def test_combine_files_end_to_end(tiny256: Path, quants: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "combined.gguf"
    res = combine_files([quants["Q5_K_M"], quants["Q4_K_M"], quants["Q2_K"]], out)
    assert res.stats.empty == 0 and res.stats.fallback_blocks == 0 and res.stats.weights > 0
    truth = _floats(tiny256)
    got = _floats(out)
    with GGUFModel(out) as m, GGUFModel(tiny256) as t:
        assert m.kv("general.file_type") == 1
        tt = {x.name: x for x in t.tensors}
        assert sorted(tt) == sorted(x.name for x in m.tensors)
        for a in m.tensors:
            b = tt[a.name]
            assert a.qtype.name == ("F16" if len(a.shape) > 1 else "F32")
            if len(a.shape) == 1:
                assert bytes(m.tensor_data(a)) == bytes(t.tensor_data(b))
    names = [n for n, v in truth.items() if v.ndim == 2 and v.shape[0] > 1]

    def err(d: dict[str, np.ndarray]) -> float:
        return float(np.sqrt(np.mean(np.concatenate([(d[n].astype(np.float16).astype(np.float64)
                                                        - truth[n]).ravel() ** 2 for n in names]))))
    singles = {ft: err(_floats(p)) for ft, p in quants.items()}
    assert err(got) < 0.95 * min(singles.values())


def test_combine_files_takes_a_float_source_and_bf16(tiny256: Path, quants: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "f.gguf"
    combine_files([quants["Q4_K_M"], tiny256], out)
    with GGUFModel(out) as m, GGUFModel(tiny256) as t:
        tt = {x.name: x for x in t.tensors}
        for a in m.tensors:
            assert bytes(m.tensor_data(a)) == bytes(t.tensor_data(tt[a.name])), a.name
    out2 = tmp_path / "b.gguf"
    combine_files([quants["Q4_K_M"], quants["Q5_K_M"]], out2, to="bf16")
    with GGUFModel(out2) as m:
        assert {t.qtype.name for t in m.tensors if len(t.shape) > 1} == {"BF16"}
        assert m.kv("general.file_type") == 32


def _variant(src: Path, dst: Path, edit: str) -> Path:
    """A copy of src with one tensor renamed, cut to fewer rows, or dropped."""
    with GGUFModel(src) as m:
        ts = list(m.tensors)
        if edit == "drop":
            ts = [t for t in ts if t.name != "output.weight"]
        outs = []
        for t in ts:
            shape = tuple(t.shape)
            name = t.name
            if t.name == "blk.1.attn_k.weight" and edit == "shape":
                shape = (shape[0], shape[1] // 2)
            if t.name == "blk.1.attn_k.weight" and edit == "rename":
                name = "blk.1.attn_kk.weight"
            outs.append(OutTensor(name, shape, t.qtype))
        with GGUFStreamWriter(dst, m.kvs, outs, m.alignment) as w:
            for t, o in zip(ts, outs, strict=True):
                w.write_tensor_chunk(np.ascontiguousarray(m.tensor_data(t))[:o.n_bytes])
    return dst


@pytest.mark.parametrize(("edit", "msg"), [("shape", r"'blk\.1\.attn_k\.weight' has shape \(256, 64\)"),
                                          ("rename", r"no tensor 'blk\.1\.attn_k\.weight'"),
                                          ("drop", r"no tensor 'output\.weight'")])
def test_mismatched_sources_refused(quants: dict[str, Path], tmp_path: Path, edit: str, msg: str) -> None:
    bad = _variant(quants["Q2_K"], tmp_path / "bad.gguf", edit)
    out = tmp_path / "out.gguf"
    with pytest.raises(CombineError, match=msg) as e:
        combine_files([quants["Q4_K_M"], bad], out)
    assert "not a quant of the same model" in str(e.value) and e.value.path == str(bad)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_extra_tensor_refused(quants: dict[str, Path], tmp_path: Path) -> None:
    bad = _variant(quants["Q2_K"], tmp_path / "bad.gguf", "drop")
    with pytest.raises(CombineError, match=r"has tensor 'output\.weight' that"):
        combine_files([bad, quants["Q4_K_M"]], tmp_path / "out.gguf")


def test_bad_arguments_refused(quants: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CombineError, match="not a float type"):
        combine_files([quants["Q4_K_M"]], tmp_path / "o.gguf", to="Q4_0")
    with pytest.raises(CombineError, match="no source"):
        combine_files([], tmp_path / "o.gguf")
    with pytest.raises(QtoolError):  # the output is an input
        combine_files([quants["Q4_K_M"], quants["Q2_K"]], quants["Q2_K"])


def test_laplace_mean_against_numerical_integration() -> None:
    """The truncated-Laplace posterior mean (closed form) on intervals on either side of 0 and
    straddling it, against a Riemann sum; a huge scale gives the midpoint."""
    lo = np.array([[0.01, -0.05, -0.02, 0.3, -1e-4]])
    hi = np.array([[0.02, -0.03, 0.05, 0.31, 2e-4]])
    v = (lo + hi) / 2
    iv = Intervals(v, lo, hi, hi - lo, lo, hi)
    beta = 0.02
    est, _ = estimate([iv], method="laplace", beta=beta, block=5, grid=False)
    est2, _ = estimate([iv, iv], method="laplace", beta=beta, block=5, grid=False)
    for i in range(lo.shape[1]):
        xs = np.sort(np.concatenate([np.linspace(lo[0, i], hi[0, i], 200001), [0.0]]))  # the kink
        xs = xs[(xs >= lo[0, i]) & (xs <= hi[0, i])]
        p = np.exp(-np.abs(xs) / beta)
        assert est2[0, i] == pytest.approx(float(np.trapezoid(xs * p, xs) / np.trapezoid(p, xs)), rel=1e-7)
    assert np.array_equal(est, v)  # one source: its dequant
    far, _ = estimate([iv, iv], method="laplace", beta=1e9, block=5, grid=False)
    assert np.allclose(far, v, rtol=1e-9, atol=1e-15)
