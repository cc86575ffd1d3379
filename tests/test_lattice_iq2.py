"""IQ2_XXS / IQ2_XS / IQ2_S (mainline): E8 tables against a straight port of iq2xs_init_impl,
golden vectors, dequantization, extra random and edge rows against libggml-base (when present)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from qtool.quants.lattice import iq2
from qtool.quants.lattice.grids_e8 import KMAP_SIZE, NWANT, kgrid_words, tables

from . import refs
from .refs import ggml_source
from .vectors import expected, inputs, mismatched_rows

TYPES = {
    "IQ2_XXS": (iq2.quantize_iq2_xxs, iq2.dequantize_iq2_xxs, ("im",)),
    "IQ2_XS": (iq2.quantize_iq2_xs, iq2.dequantize_iq2_xs, ("im",)),
    "IQ2_S": (iq2.quantize_iq2_s, iq2.dequantize_iq2_s, ("noim", "im")),
}
REF_SRC = ggml_source()  # mainline's ggml/src folder (the vectors' reference), if QTOOL_GGML_SRC is set


def init_port(words: np.ndarray, nwant: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Straight port of iq2xs_init_impl: (kgrid_q2xs int8 (N, 8), kmap_q2xs, kneighbors_q2xs).
    The per-point qsort is a stable argsort of d2 (ties by j: iq2_compare_func's total order); the cut is C's loop."""
    n = words.size
    grid = np.array([[2 * ((int(w) >> 2 * i) & 3) + 1 for i in range(8)] for w in words], np.int64)
    kmap = np.full(KMAP_SIZE, -1, np.int64)
    for i in range(n):
        index = 0
        for k in range(8):
            index |= ((int(grid[i, k]) - 1) // 2) << 2 * k
        kmap[index] = i
    neigh: list[int] = []
    shifts = 2 * np.arange(8)
    todo = np.nonzero(kmap < 0)[0]
    # sq[k][l, j] = (pg[k] - (2l+1))^2 for grid point j: d2 = sum over k, as C's loop
    sq = [((grid[:, k][None, :] - (2 * np.arange(4)[:, None] + 1)) ** 2).astype(np.int16) for k in range(8)]
    for c0 in range(0, todo.size, 2048):  # points in increasing order, sorted in batches
        pts = todo[c0:c0 + 2048]
        lv = (pts[:, None] >> shifts) & 3  # pos[k] = 2*lv + 1
        d2 = sq[0][lv[:, 0]]
        for k in range(1, 8):
            d2 = d2 + sq[k][lv[:, k]]
        orders = np.argsort(d2, axis=1, kind="stable")[:, :320]  # (d2, j) order (radix); lists are shorter
        sd2 = np.take_along_axis(d2, orders, axis=1)
        for i, dd, order in zip(pts.tolist(), sd2.tolist(), orders.tolist(), strict=True):
            kmap[i] = -(len(neigh) + 1)
            start = len(neigh)
            neigh.append(0)
            d = dd[0]
            nhave = 1
            cnt = 0
            for dj, j in zip(dd, order, strict=True):
                if dj > d:
                    if nhave == nwant:
                        break
                    d = dj
                    nhave += 1
                neigh.append(j)
                cnt += 1
            assert cnt < len(order)  # the cut came before the truncation
            neigh[start] = cnt
    return grid.astype(np.int8), kmap, np.array(neigh, np.int64)


@pytest.mark.parametrize("name", list(TYPES))
def test_tables_match_init_port(name: str) -> None:
    t = tables(name)
    assert tables(name) is t  # built once per process
    grid, kmap, neigh = init_port(kgrid_words(name), NWANT[name])
    assert np.array_equal(t.grid, grid)
    assert np.array_equal(t.kmap, kmap)
    assert t.neighbours.size == neigh.size and np.array_equal(t.neighbours.astype(np.int64), neigh)
    assert np.array_equal(t.levels, (grid.astype(np.int64) - 1) // 2)


@pytest.mark.skipif(REF_SRC is None or not REF_SRC.is_dir(), reason="set QTOOL_GGML_SRC to mainline's ggml/src")
@pytest.mark.parametrize("name,cname,gname", [("IQ2_XXS", "kgrid_2bit_256", "iq2xxs_grid"),
                                               ("IQ2_XS", "kgrid_2bit_512", "iq2xs_grid"),
                                               ("IQ2_S", "kgrid_2bit_1024", "iq2s_grid")])
def test_grid_words_match_c_source(name: str, cname: str, gname: str) -> None:
    assert REF_SRC is not None
    src = (REF_SRC / "ggml-quants.c").read_text()
    body = re.search(cname + r"\[[^\]]*\] = \{(.*?)\};", src, re.S)
    assert body is not None
    words = np.array([int(v) for v in re.findall(r"\d+", body.group(1))], np.uint16)
    assert np.array_equal(kgrid_words(name), words)
    common = (REF_SRC / "ggml-common.h").read_text()
    g = re.search(r"GGML_TABLE_BEGIN\(uint64_t, " + gname + r", \d+\)(.*?)GGML_TABLE_END", common, re.S)
    assert g is not None
    vals = np.array([int(v, 16) for v in re.findall(r"0x[0-9a-fA-F]+", g.group(1))], np.uint64)
    deq = vals.view(np.uint8).reshape(-1, 8).astype(np.float32)
    assert np.array_equal(tables(name).deq_grid, deq)


@pytest.mark.parametrize("name", list(TYPES))
def test_golden_vectors(name: str) -> None:
    q, dq, variants = TYPES[name]
    x, im, _ = inputs()
    e = expected(name)
    assert {k[2:] for k in e if k.startswith("q_")} == set(variants)
    for v in variants:
        got = q(x, im if v == "im" else None)
        assert mismatched_rows(got, e["q_" + v]) == []
        deq = dq(e["q_" + v], x.shape[1])
        assert np.array_equal(deq.view(np.uint32), e["deq_" + v].view(np.uint32))


@pytest.mark.parametrize("name", ["IQ2_XXS", "IQ2_XS"])
def test_imatrix_required(name: str) -> None:
    with pytest.raises(ValueError):
        TYPES[name][0](np.ones((1, 256), np.float32), None)


def _ref():
    from benchmarks import ggml_ref
    if refs.ggml_lib() is None or not ggml_ref.available():
        pytest.skip(refs.why("QTOOL_GGML_LIB"))
    return ggml_ref


def _extra_rows() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((12, 512)) * rng.uniform(1e-3, 30, (12, 1))).astype(np.float32)
    x[0] = 0
    x[1] = 1e-20
    x[2, :] = 3.25
    x[3] *= np.float32(1e3)
    x[4, :256] = -2.0
    x[5] = rng.standard_t(2, 512).astype(np.float32)
    x[6, ::3] = 0
    x[7, :16] = 1e-9
    x[7, 16:] = 0
    x[8] = np.float32(6e4) * np.sign(x[8])
    im = (rng.uniform(0, 2, 512) ** 3).astype(np.float32)
    im[:24] = 0
    return x, im


@pytest.mark.parametrize("name", list(TYPES))
def test_extra_and_edge_rows_match_ggml(name: str) -> None:
    ref = _ref()
    q, dq, variants = TYPES[name]
    x, im = _extra_rows()
    for v in variants:
        imv = im if v == "im" else None
        want = ref.quantize_chunk(ref.MAINLINE_IDS[name], x, imv)
        got = q(x, imv)
        assert mismatched_rows(got, want) == []
        assert not dq(got, x.shape[1])[0].any()  # a zero row dequantizes to zeros


# --- the shared neighbour search (neighbours.py), also used by IQ1_S / IQ1_M --------------------

def _search_case(name: str):
    from qtool.quants.lattice import grids_iq1
    from qtool.quants.lattice.iq1 import XX
    if name == "IQ1":
        return grids_iq1.tables(), np.asarray(XX, np.float32)
    return tables(name), np.array([[1, 3, 5]], np.float32)


def _scalar_search(t, u: int, x: np.ndarray, w: np.ndarray, s: np.float32, xg: np.ndarray) -> int:
    """iq2_find_best_neighbour / iq1_find_best_neighbour2 line by line (float32, strict <)."""
    off = -int(t.kmap[u]) - 1
    best, gi = np.float32(np.finfo(np.float32).max), -1
    for j in range(1, int(t.neighbours[off]) + 1):
        c = int(t.neighbours[off + j])
        d2 = np.float32(0)
        for i in range(8):
            diff = np.float32(s * xg[t.levels[c, i]]) - x[i]
            d2 = np.float32(d2 + np.float32(np.float32(w[i] * diff) * diff))
        if d2 < best:
            best, gi = d2, c
    return gi


@pytest.mark.parametrize("name", ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1"])
def test_bucketed_search_matches_flat(name: str) -> None:
    """The bucketed neighbour search, the dispatching one and the flat (former) one agree on many
    random off-grid groups (ties provoked: values on the lattice, zero weights), and a scalar port
    of C's loop agrees on a sample."""
    from qtool.quants.lattice import neighbours as nbm
    t, qsets = _search_case(name)
    rng = np.random.default_rng(7)
    offgrid = np.flatnonzero(np.asarray(t.kmap) < 0)
    m = 30000
    u = rng.choice(offgrid, m)
    # put long-list codes in, so that every bucket width is exercised
    cnt = np.asarray(t.neighbours)[-np.asarray(t.kmap)[offgrid].astype(np.int64) - 1]
    u[: m // 3] = rng.choice(offgrid[cnt >= np.percentile(cnt, 90)], m // 3)
    qsel = rng.integers(0, qsets.shape[0], m)
    sc = rng.uniform(0.05, 2, m).astype(np.float32)
    x = rng.normal(0, 2, (m, 8)).astype(np.float32)
    tie = rng.random(m) < 0.3  # on-lattice values: many equal distances
    lvx = rng.integers(0, 3, (m, 8))
    x[tie] = (sc[:, None] * qsets[qsel][np.arange(m)[:, None], lvx])[tie]
    w = rng.exponential(1, (m, 8)).astype(np.float32)
    w[rng.random((m, 8)) < 0.1] = 0
    ref = nbm.best_neighbours_flat(t, u, x, w, sc, qsets, qsel)
    got_b = nbm.best_neighbours_bucketed(t, u, x, w, sc, qsets, qsel)
    got = nbm.best_neighbours(t, u, x, w, sc, qsets, qsel)
    assert np.array_equal(got_b, ref)
    assert np.array_equal(got, ref)
    for k in rng.choice(m, 300, replace=False):
        assert ref[k] == _scalar_search(t, int(u[k]), x[k], w[k], sc[k], qsets[qsel[k]])
