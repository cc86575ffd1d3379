"""Low-rank correction study: Gram-matrix residuals against explicit SVD corrections."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from qtool.quants import get_type
from qtool.stats import run_stats
from qtool.stats.metrics import normalized_weights
from qtool.stats.svd import GramAccumulator, extra_bits, lowrank_residuals
from tests.stats_helpers import small_model


def _best_rank(a: np.ndarray, r: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
def test_residuals_match_explicit_svd(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    m, n = shape
    e = rng.standard_normal((m, n)) * rng.uniform(0.1, 2.0, n)  # columns of different scale
    w = normalized_weights(rng.uniform(0.0, 5.0, n))
    w[3] = 0.0  # a column the imatrix never saw
    g = GramAccumulator(n)
    g.add(e[:7])
    g.add(e[7:])
    assert g.m == m
    ranks = [1, 5, 24, 100]
    res = lowrank_residuals(g.gram, m, ranks, None)
    resw = lowrank_residuals(g.gram, m, ranks, w)
    wf = w
    u_s = np.linalg.svd(e * np.sqrt(w), full_matrices=False)[0]
    for R, a, b in zip(ranks, res, resw, strict=True):
        r = min(R, m, n)
        c = _best_rank(e, r)  # LQER
        assert a.energy == pytest.approx(((e - c) ** 2).sum(), rel=1e-9, abs=1e-9)
        assert a.bits == extra_bits(r, m, n) == 16 * r * (m + n) and a.n == m * n
        assert a.w_sum == 0 and a.figures()["l2qer_rmse"] is None
        assert b.energy == pytest.approx(a.energy, rel=1e-9, abs=1e-9)
        assert b.w_energy == pytest.approx((wf * (e - c) ** 2).sum(), rel=1e-8, abs=1e-9)
        c2 = u_s[:, :r] @ (u_s[:, :r].T @ e)  # L²QER: scale columns, SVD, unscale (= projection on U_r)
        if r:
            c2b = np.divide(_best_rank(e * np.sqrt(w), r), np.sqrt(w), where=w > 0, out=np.zeros_like(e))
            assert np.allclose(c2[:, w > 0], c2b[:, w > 0])
        if r > np.linalg.matrix_rank(e * np.sqrt(w)):
            # SVD's extra singular vectors (singular value 0) are arbitrary; qtool lets them
            # correct nothing: the error stays the one at the scaled matrix's rank
            c2 = u_s[:, :r - 1] @ (u_s[:, :r - 1].T @ e)
        assert b.l2_energy == pytest.approx(((e - c2) ** 2).sum(), rel=1e-7, abs=1e-9)
        assert b.l2_w_energy == pytest.approx((wf * (e - c2) ** 2).sum(), rel=1e-8, abs=1e-9)
        # the scaled correction is the better one for the weighted error, the plain one for the plain error
        assert b.l2_w_energy <= b.w_energy * (1 + 1e-9) + 1e-9 and a.energy <= b.l2_energy * (1 + 1e-9) + 1e-9
    assert res[-1].energy == pytest.approx(0.0, abs=1e-9)  # full rank: nothing left


def test_full_rank_correction_removes_the_error(tmp_path: Path) -> None:
    p = small_model(tmp_path / "m.gguf")
    rep = run_stats(str(p), [get_type("BF16")], svd_ranks=[1, 4, 128])
    tr = rep.types[0]
    assert tr.total.rmse > 0
    r1, r4, full = (x.figures() for x in tr.svd)
    assert full["rmse"] < 1e-6 * tr.total.rmse
    assert tr.total.rmse > r1["rmse"] > r4["rmse"] > full["rmse"]
    # extra bpw: sum over matrices of 16 R (rows + cols) over all elements
    bits = sum(16 * min(4, t.shape[0], t.shape[1]) * (t.shape[0] + t.shape[1]) for t in tr.tensors)
    assert r4["extra_bpw"] == pytest.approx(bits / tr.total.n)
    doc = rep.to_json()
    assert [s["rank"] for s in doc["types"][0]["svd"]] == [1, 4, 128]
    assert doc["types"][0]["svd"][1]["total_bpw"] == pytest.approx(16 + r4["extra_bpw"])
    t0 = doc["types"][0]["tensors"][0]
    assert t0["svd"][0]["rmse"] <= t0["rmse"] and math.isfinite(t0["svd"][0]["extra_bpw"])


def test_expert_tensors_are_studied_per_matrix(tmp_path: Path) -> None:
    """A 3-D tensor holds one matrix per expert; each gets its own correction."""
    from tests.stats_helpers import write_gguf

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 16, 32)) * 0.1).astype(np.float32)  # 3 experts of 16 x 32
    p = write_gguf(tmp_path / "moe.gguf", {"blk.0.ffn_up_exps.weight": ((32, 16, 3), "F32", x)})
    rep = run_stats(str(p), [get_type("BF16")], svd_ranks=[2, 16])
    from qtool.quants import dequantize, quantize

    e = np.stack([x[i] - dequantize(quantize(x[i], "BF16"), "BF16", 32) for i in range(3)]).astype(np.float64)
    want = sum(((e[i] - _best_rank(e[i], 2)) ** 2).sum() for i in range(3))
    r2, r16 = rep.types[0].svd
    assert r2.energy == pytest.approx(want, rel=1e-9)
    assert r2.bits == 3 * 16 * 2 * (16 + 32) and r16.energy == pytest.approx(0.0, abs=1e-12)
