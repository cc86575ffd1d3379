"""IQ3_XXS, IQ3_S (mainline): grids and neighbour lists against a line-by-line port of
iq3xs_init_impl, golden vectors, dequantization, a scalar port of quantize_row_iq3_*_impl on extra
random blocks, edge rows, and (with QTOOL_GGML_LIB) random and extreme rows against ggml itself."""

from __future__ import annotations

import numpy as np
import pytest

from qtool.quants.lattice import grids_d4, iq3
from qtool.quants.rounding import nearest_int

from .refs import ggml_lib, why
from .vectors import expected, inputs, mismatched_rows

F32 = np.float32
TYPES = ["IQ3_XXS", "IQ3_S"]
GRID = {"IQ3_XXS": 256, "IQ3_S": 512}


# --- tables ----------------------------------------------------------------------------------------

def _init_port(grid_size: int):
    """iq3xs_init_impl, loop by loop (distances with numpy per point, C's qsort comparator as a
    tuple sort, the neighbour-count loop as in C)."""
    kg = [int(v) for v in grids_d4.kgrid(grid_size)]
    nwant = 2 if grid_size == 256 else 3
    grid = [[2 * ((kg[k] >> 3 * i) & 7) + 1 for i in range(4)] for k in range(grid_size)]
    kmap = [-1] * 4096
    for i, g in enumerate(grid):
        index = 0
        for k in range(4):
            index |= ((g[k] - 1) // 2) << 3 * k
        kmap[index] = i
    garr = np.array(grid, np.int64)
    neighbours: list[int] = []
    for i in range(4096):
        if kmap[i] >= 0:
            continue
        pos = np.array([2 * ((i >> 3 * k) & 7) + 1 for k in range(4)])
        d2s = ((garr - pos) ** 2).sum(axis=1).tolist()
        dist2 = sorted((d2s[j], j) for j in range(grid_size))
        kmap[i] = -(len(neighbours) + 1)
        start = len(neighbours)
        neighbours.append(0)
        d2, n, nhave = dist2[0][0], 0, 1
        for dj, j in dist2:
            if dj > d2:
                if nhave == nwant:
                    break
                d2 = dj
                nhave += 1
            neighbours.append(j)
            n += 1
        neighbours[start] = n
    return grid, kmap, neighbours


@pytest.mark.parametrize("grid_size", [256, 512])
def test_tables_match_init_port(grid_size):
    tab = grids_d4.iq3_tables(grid_size)
    grid, kmap, neighbours = _init_port(grid_size)
    assert tab.grid.tolist() == grid
    assert tab.kmap.tolist() == kmap
    assert tab.neighbours.tolist() == neighbours  # count, order and content of every list
    off = np.nonzero(tab.kmap < 0)[0]
    for i in off[:: max(1, off.size // 300)]:  # padded lists: the C list, then repeats of its first entry
        o = -int(tab.kmap[i]) - 1
        n = int(tab.neighbours[o])
        lst = tab.neighbours[o + 1:o + 1 + n].tolist()
        assert tab.nb_count[i] == n
        assert tab.nb_pad[i].tolist() == lst + [lst[0]] * (tab.nb_pad.shape[1] - n)
    assert grids_d4.iq3_tables(grid_size) is tab  # built once per process


@pytest.mark.parametrize("qtype", TYPES)
def test_dequant_grid_matches_gguf(qtype):
    import gguf

    cls = getattr(gguf.quants, qtype)
    cls.init_grid()
    want = np.asarray(cls.grid, F32).reshape(-1, 4)
    assert np.array_equal(grids_d4.dequant_grid(GRID[qtype]), want)


# --- golden vectors ------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_quantize(qtype, variant):
    x, imatrix, kinds = inputs()
    want = expected(qtype)[f"q_{variant}"]
    got = iq3.QUANTIZE[qtype](x, imatrix if variant == "im" else None)
    assert got.shape == want.shape
    bad = mismatched_rows(got, want)
    assert bad == [], f"{qtype} {variant}: rows {bad} ({[kinds[i] for i in bad]}) differ"


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_dequantize(qtype, variant):
    e = expected(qtype)
    got = iq3.DEQUANTIZE[qtype](e[f"q_{variant}"], 1024)
    want = e[f"deq_{variant}"]
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_matches_gguf(qtype):
    import gguf

    x, imatrix, _ = inputs()
    q = iq3.QUANTIZE[qtype](x[:8], imatrix)
    ref = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[qtype]).reshape(8, 1024)
    assert np.array_equal(iq3.DEQUANTIZE[qtype](q, 1024), ref.astype(F32))


# --- scalar port ---------------------------------------------------------------------------------

def _f(v):
    return F32(v)


def _nint(v) -> int:
    return int(nearest_int(np.array([v], F32))[0])


def _find_best(tab, u, xv, wa, scale):
    o = -int(tab.kmap[u]) - 1
    n = int(tab.neighbours[o])
    best, gi = F32(np.finfo(F32).max), -1
    for j in range(1, n + 1):
        g = int(tab.neighbours[o + j])
        d2 = F32(0)
        for i in range(4):
            diff = scale * F32(tab.grid[g, i]) - xv[i]
            d2 = d2 + wa[i] * diff * diff
        if d2 < best:
            best, gi = d2, g
    return gi


def _scalar_superblock(qtype: str, xbl: np.ndarray, qw: np.ndarray | None) -> bytes:
    """quantize_row_iq3_xxs_impl(256) / quantize_row_iq3_s_impl(32) on one super-block, scalar."""
    xxs = qtype == "IQ3_XXS"
    tab = grids_d4.iq3_tables(256 if xxs else 512)
    sumx2 = F32(0)
    for v in xbl:
        sumx2 = sumx2 + v * v
    sigma2 = F32(2) * sumx2 / F32(256)
    scales = [F32(0)] * 8
    gidx = [[0] * 8 for _ in range(8)]
    sgn = [[0] * 4 for _ in range(8)]
    written = [False] * 8
    for ib in range(8):
        xb = xbl[32 * ib:32 * ib + 32]
        w = [qw[32 * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i]) if qw is not None else xb[i] * xb[i] for i in range(32)]
        wa = [np.sqrt(v) for v in w]
        xval = [F32(0)] * 32
        for k in range(4):
            s, nflip = 0, 0
            for i in range(8):
                v = xb[8 * k + i]
                if v >= 0:
                    xval[8 * k + i] = v
                else:
                    xval[8 * k + i] = -v
                    nflip += 1
                    s |= 1 << i
            if xxs and nflip % 2:
                imin, mn = 0, w[8 * k] * xb[8 * k] * xb[8 * k]
                for i in range(1, 8):
                    ax = w[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
                    if ax < mn:
                        mn, imin = ax, i
                xval[8 * k + imin] = -xval[8 * k + imin]
                s ^= 1 << imin
            sgn[ib][k] = s & 127 if xxs else s
        mx = max(xval)
        if (mx < F32(1e-8)) if xxs else (mx == 0):
            continue
        L = [0] * 32
        best, scale = F32(0), mx / F32(15)
        ongrid = [xxs] * 8
        for is_ in range(-15 if xxs else -9, 16 if xxs else 10):
            idv = (F32(15) + F32(is_) * F32(0.2)) / mx
            ts = F32(1) / idv
            la = [min(7, max(0, _nint(F32(0.5) * (idv * xval[i] - F32(1))))) for i in range(32)]
            oga = [True] * 8
            for k in range(8):
                u = sum(la[4 * k + i] << 3 * i for i in range(4))
                if tab.kmap[u] < 0:
                    oga[k] = False
                    g = _find_best(tab, u, xval[4 * k:4 * k + 4], wa[4 * k:4 * k + 4], ts)
                    la[4 * k:4 * k + 4] = [int(v) for v in tab.levels[g]]
            sqx, sq2 = F32(0), F32(0)
            for i in range(32):
                q = F32(2 * la[i] + 1)
                sqx = sqx + w[i] * xval[i] * q
                sq2 = sq2 + w[i] * q * q
            if sq2 > 0 and sqx * sqx > best * sq2:
                scale = sqx / sq2
                best = scale * sqx
                L, ongrid = la, oga
        if not all(ongrid) and scale > 0:
            idv = F32(1) / scale
            for k in range(8):
                if xxs and ongrid[k]:
                    continue
                ls = [min(7, max(0, _nint(F32(0.5) * (idv * xval[4 * k + i] - F32(1))))) for i in range(4)]
                u = sum(ls[i] << 3 * i for i in range(4))
                g = int(tab.kmap[u])
                if g < 0:
                    g = _find_best(tab, u, xval[4 * k:4 * k + 4], wa[4 * k:4 * k + 4], scale)
                L[4 * k:4 * k + 4] = [int(v) for v in tab.levels[g]]
            sqx, sq2 = F32(0), F32(0)
            for i in range(32):
                q = F32(2 * L[i] + 1)
                sqx = sqx + w[i] * xval[i] * q
                sq2 = sq2 + w[i] * q * q
            if sq2 > 0:
                scale = sqx / sq2
        if scale < 0:
            scale = -scale
            sgn[ib] = [(~s) & (127 if xxs else 255) for s in sgn[ib]]
        gidx[ib] = [int(tab.kmap[sum(L[4 * k + i] << 3 * i for i in range(4))]) for k in range(8)]
        scales[ib] = scale
        written[ib] = True
    max_scale = max([F32(0)] + scales)
    d = max_scale / F32(31)
    ls = [min(15, max(0, _nint(F32(0.5) * (F32(1) / d * s - F32(1))))) if max_scale else 0 for s in scales]
    fudge = F32(1.0125) if xxs else F32(1.033)
    dh = np.array([d * fudge], F32).astype(np.float16).tobytes() if max_scale else bytes(2)
    if xxs:
        if not max_scale:
            return bytes(98)
        qs = bytes(g if written[ib] else 0 for ib in range(8) for g in gidx[ib])
        sas = [(sgn[ib][0] | sgn[ib][1] << 7 | sgn[ib][2] << 14 | sgn[ib][3] << 21 if written[ib] else 0) | ls[ib] << 28
               for ib in range(8)]
        return dh + qs + np.array(sas, "<u4").tobytes()
    qs, signs, qh = bytearray(64), bytearray(32), bytearray(8)
    slot = 0
    for ib in range(8):
        if not written[ib]:
            continue
        for k in range(8):
            qs[8 * slot + k] = gidx[ib][k] & 255
            qh[ib] |= (gidx[ib][k] >> 8) << k
        signs[4 * slot:4 * slot + 4] = bytes(sgn[ib])
        slot += 1
    sc = bytes(ls[2 * i] | ls[2 * i + 1] << 4 for i in range(4))
    return dh + bytes(qs) + bytes(qh) + bytes(signs) + sc


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("with_im", [False, True])
def test_scalar_port_random_blocks(qtype, with_im):
    rng = np.random.default_rng(7 + with_im)
    x = (rng.standard_normal((1, 512)) * F32(0.3)).astype(F32)
    x[0, 256:288] = 0  # an empty block (IQ3_S: later blocks move down a slot)
    x[0, 300:310] *= F32(40)
    qw = rng.uniform(0, 3, 512).astype(F32) if with_im else None
    got = iq3.QUANTIZE[qtype](x, qw).tobytes()
    want = b"".join(_scalar_superblock(qtype, x[0, 256 * s:256 * s + 256],
                                       None if qw is None else qw[256 * s:256 * s + 256]) for s in range(2))
    assert got == want


# --- edge rows -----------------------------------------------------------------------------------

def _edge_rows() -> np.ndarray:
    rng = np.random.default_rng(3)
    rows = np.zeros((8, 512), F32)
    rows[1] = F32(1e-9)  # below IQ3_XXS's 1e-8: skipped blocks there
    rows[2] = F32(-3.5)  # constant
    rows[3] = (rng.standard_normal(512) * 3e4).astype(F32)  # huge
    rows[4] = (rng.standard_normal(512) * 1e-6).astype(F32)  # tiny
    rows[5, ::17] = F32(1)  # sparse
    rows[6, :32] = F32(0)
    rows[6, 32:] = rng.standard_normal(480).astype(F32)
    rows[7] = F32(1e-30)
    return rows


@pytest.mark.parametrize("qtype", TYPES)
def test_edge_rows(qtype):
    rows = _edge_rows()
    q = iq3.QUANTIZE[qtype](rows, None)
    assert not q[0].any()
    if qtype == "IQ3_XXS":
        assert not q[1].any()
    y = iq3.DEQUANTIZE[qtype](q, 512)
    assert np.isfinite(y).all()
    assert np.abs(y[2] + 3.5).max() < 1.1  # IQ3_XXS: 7 sign bits a group, one value of 8 may flip
    for r in (2, 6):
        want = b"".join(_scalar_superblock(qtype, rows[r, 256 * s:256 * s + 256], None) for s in range(2))
        assert q[r].tobytes() == want


def test_chunking_independent():
    x, imatrix, _ = inputs()
    big = np.tile(x, (3, 1))  # 165 rows: several chunks of super-blocks
    for qtype in TYPES:
        a = iq3.QUANTIZE[qtype](big, imatrix)
        assert np.array_equal(a[:55], a[55:110]) and np.array_equal(a[:55], a[110:])


# --- against ggml itself -------------------------------------------------------------------------

@pytest.mark.skipif(ggml_lib() is None, reason=why("QTOOL_GGML_LIB"))
@pytest.mark.parametrize("qtype", TYPES)
def test_against_ggml(qtype, monkeypatch):
    monkeypatch.setenv("QTOOL_GGML_LIB", str(ggml_lib()))
    from benchmarks import ggml_ref

    tid = ggml_ref.type_id(qtype)
    ggml_ref.init(tid)
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((16, 1024)) * rng.uniform(1e-3, 10, (16, 1))).astype(F32)
    x[:8] = _edge_rows().repeat(2, axis=1)
    im = rng.uniform(0, 4, 1024).astype(F32)
    im[::9] = 0
    for qw in (None, im):
        assert mismatched_rows(iq3.QUANTIZE[qtype](x, qw), ggml_ref.quantize_chunk(tid, x, qw)) == []


# --- the bucketed neighbour search against the plain one ------------------------------------------

@pytest.mark.parametrize("grid_size", [256, 512])
def test_bucketed_search_matches_exact(grid_size):
    tab = grids_d4.iq3_tables(grid_size)
    rng = np.random.default_rng(5)
    off = np.nonzero(tab.nb_count > 0)[0]
    u = np.concatenate([off, rng.choice(off, 20000)])  # every list length, every bucket
    m = u.size
    xv = (rng.standard_normal((m, 4)) * rng.uniform(0.01, 5, (m, 1))).astype(F32)
    wa = rng.uniform(0, 3, (m, 4)).astype(F32)
    wa[::7, 1] = 0
    scale = rng.uniform(0.005, 1.5, m).astype(F32)
    ties = slice(0, m, 11)  # equal coordinates: d2 ties between candidates (the first must win)
    xv[ties] = F32(2) * scale[ties, None]
    want = iq3.best_neighbour_exact(tab, u, xv, wa, scale)
    got = iq3.best_neighbour(tab, u, xv, wa, scale)
    assert np.array_equal(got, want)
    # and against C's scan, scalar, on a sample
    for k in range(0, m, 997):
        assert got[k] == _find_best(tab, int(u[k]), xv[k], wa[k], scale[k])


def test_refinement_sums_in_order():
    """A super-block whose refinement once summed a gathered (non C-contiguous) column subset
    pairwise: scales 1 ulp off, d's fp16 one step off (found against ggml)."""
    x = np.random.default_rng(0).standard_normal((64, 4096), dtype=F32)[36:37, 2560:2816]
    for qtype in TYPES:
        assert iq3.QUANTIZE[qtype](x, None).tobytes() == _scalar_superblock(qtype, x[0], None)
