"""IQ1_S / IQ1_M (mainline): the IQ1 grid tables against a straight port of iq2xs_init_impl,
golden vectors, dequantization, a scalar port of quantize_row_iq1_*_impl on random blocks, extra
random and edge rows against libggml-base (when present)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from qtool.quants.lattice import iq1
from qtool.quants.lattice.grids_iq1 import KMAP_SIZE, NWANT, kgrid_words, tables

from . import refs
from .refs import ggml_source
from .vectors import expected, inputs, mismatched_rows

F32 = np.float32
TYPES = {
    "IQ1_S": (iq1.quantize_iq1_s, iq1.dequantize_iq1_s, ("im",)),
    "IQ1_M": (iq1.quantize_iq1_m, iq1.dequantize_iq1_m, ("noim", "im")),
}
REF_SRC = ggml_source()


# --- tables -------------------------------------------------------------------------------------

def init_port(words: np.ndarray, nwant: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Straight port of iq2xs_init_impl: (kgrid_q2xs int8 (N, 8), kmap_q2xs, kneighbors_q2xs);
    qsort with iq2_compare_func (a total order on (d2, j)) = a stable argsort of d2; C's cut loop."""
    grid = np.array([[2 * ((int(w) >> 2 * i) & 3) + 1 for i in range(8)] for w in words], np.int64)
    kmap = np.full(KMAP_SIZE, -1, np.int64)
    for i in range(words.size):
        index = 0
        for k in range(8):
            index |= ((int(grid[i, k]) - 1) // 2) << 2 * k
        kmap[index] = i
    neigh: list[int] = []
    shifts = 2 * np.arange(8)
    todo = np.nonzero(kmap < 0)[0]
    sq = [((grid[:, k][None, :] - (2 * np.arange(4)[:, None] + 1)) ** 2).astype(np.int16) for k in range(8)]
    for c0 in range(0, todo.size, 2048):
        pts = todo[c0:c0 + 2048]
        lv = (pts[:, None] >> shifts) & 3
        d2 = sq[0][lv[:, 0]]
        for k in range(1, 8):
            d2 = d2 + sq[k][lv[:, k]]
        orders = np.argsort(d2, axis=1, kind="stable")[:, :400]
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
            assert cnt < len(order)
            neigh[start] = cnt
    return grid.astype(np.int8), kmap, np.array(neigh, np.int64)


def test_tables_match_init_port() -> None:
    t = tables()
    assert tables() is t
    grid, kmap, neigh = init_port(kgrid_words(), NWANT)
    assert np.array_equal(t.grid, grid)
    assert np.array_equal(t.kmap, kmap)
    assert t.neighbours.size == neigh.size and np.array_equal(t.neighbours.astype(np.int64), neigh)
    assert np.array_equal(t.levels, (grid.astype(np.int64) - 1) // 2)


@pytest.mark.skipif(REF_SRC is None or not REF_SRC.is_dir(), reason="set QTOOL_GGML_SRC to mainline's ggml/src")
def test_grid_words_match_c_source() -> None:
    assert REF_SRC is not None
    src = (REF_SRC / "ggml-quants.c").read_text()
    body = re.search(r"kgrid_1bit_2048\[[^\]]*\] = \{(.*?)\};", src, re.S)
    assert body is not None
    words = np.array([int(v) for v in re.findall(r"\d+", body.group(1))], np.uint16)
    assert np.array_equal(kgrid_words(), words)
    common = (REF_SRC / "ggml-common.h").read_text()
    g = re.search(r"GGML_TABLE_BEGIN\(uint64_t, iq1s_grid, NGRID_IQ1S\)(.*?)GGML_TABLE_END", common, re.S)
    assert g is not None
    vals = np.array([int(v, 16) for v in re.findall(r"0x[0-9a-fA-F]+", g.group(1))], np.uint64)
    deq = vals.view(np.int8).reshape(-1, 8).astype(np.float32)
    assert np.array_equal(tables().deq_grid, deq)


# --- golden vectors ------------------------------------------------------------------------------

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


def test_iq1_s_requires_imatrix() -> None:
    with pytest.raises(ValueError):
        iq1.quantize_iq1_s(np.ones((1, 256), np.float32), None)


# --- scalar port ---------------------------------------------------------------------------------

def _nearest_int(v: float) -> int:
    return int(np.round(F32(v)))  # half to even, as the magic-number trick for small values


def _find_best_neighbour2(t, u: int, xb, wb, scale, xx) -> int:
    off = -int(t.kmap[u]) - 1
    n = int(t.neighbours[off])
    best, gi = np.finfo(F32).max, -1
    for j in range(1, n + 1):
        g = int(t.neighbours[off + j])
        d2 = F32(0)
        for i in range(8):
            q = xx[(int(t.grid[g, i]) - 1) // 2]
            diff = F32(F32(scale * q) - xb[i])
            d2 = F32(d2 + F32(F32(wb[i] * diff) * diff))
        if d2 < best:
            best, gi = d2, g
    assert gi >= 0
    return gi


def _subblock(t, xb, w, eps, kind):
    """The per-sub-block part of quantize_row_iq1_{s,m}_impl -> (scale, shift, indices) or None."""
    S = xb.size
    xp, xm = iq1.X_P, iq1.X_M
    if max(abs(float(v)) for v in xb) < eps:
        return None
    idx = sorted(range(S), key=lambda j: float(xb[j]))  # stable
    best, scale, b1, b2, bk = -np.finfo(F32).max, F32(0), -1, -1, -1

    def take(sqx, sq2, i1, i2, k):
        nonlocal best, scale, b1, b2, bk
        if sq2 > 0 and F32(sqx * sqx) > F32(best * sq2):
            scale = F32(sqx / sq2)
            best = F32(scale * sqx)
            b1, b2, bk = i1, i2, k

    if kind == "S":
        sx, sw = [F32(0)], [F32(0)]
        for j in idx:
            sx.append(F32(sx[-1] + F32(w[j] * xb[j])))
            sw.append(F32(sw[-1] + w[j]))
        for i1 in range(S + 1):
            for i2 in range(i1, S + 1):
                a, b, c = sx[i1], F32(sx[i2] - sx[i1]), F32(sx[S] - sx[i2])
                aw, bw, cw = sw[i1], F32(sw[i2] - sw[i1]), F32(sw[S] - sw[i2])
                for k, v in enumerate((xp, xm)):
                    sqx = F32(F32(F32(a * v[0]) + F32(b * v[1])) + F32(c * v[2]))
                    sq2 = F32(F32(F32(F32(aw * v[0]) * v[0]) + F32(F32(bw * v[1]) * v[1])) + F32(F32(cw * v[2]) * v[2]))
                    take(sqx, sq2, i1, i2, k)
    else:
        px = [[F32(0)], [F32(0)]]
        pw = [[F32(0)], [F32(0)]]
        for j in idx:
            h = 0 if j < S // 2 else 1
            px[h].append(F32(px[h][-1] + F32(w[j] * xb[j])))
            pw[h].append(F32(pw[h][-1] + w[j]))
            px[1 - h].append(px[1 - h][-1])
            pw[1 - h].append(pw[1 - h][-1])
        cp1, cp2 = F32(xp[0] * xp[0] - xp[1] * xp[1]), F32(xp[1] * xp[1] - xp[2] * xp[2])
        cm1, cm2 = F32(xm[0] * xm[0] - xm[1] * xm[1]), F32(xm[1] * xm[1] - xm[2] * xm[2])
        for i1 in range(S + 1):
            for i2 in range(i1, S + 1):
                qx, q2 = {}, {}
                for h in range(2):
                    sxh = F32(px[h][i1] + px[h][i2])
                    txs, tws = px[h][S], pw[h][S]
                    qx[h, 0] = F32(F32(txs * xp[2]) - sxh)
                    qx[h, 1] = F32(F32(txs * xm[2]) - sxh)
                    q2[h, 0] = F32(F32(F32(F32(tws * xp[2]) * xp[2]) + F32(pw[h][i1] * cp1)) + F32(pw[h][i2] * cp2))
                    q2[h, 1] = F32(F32(F32(F32(tws * xm[2]) * xm[2]) + F32(pw[h][i1] * cm1)) + F32(pw[h][i2] * cm2))
                for k, (s0, s1) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
                    take(F32(qx[0, s0] + qx[1, s1]), F32(q2[0, s0] + q2[1, s1]), i1, i2, k)
    if b1 < 0:
        return None
    L = [0] * S
    for j in range(S):
        L[idx[j]] = 0 if j < b1 else 1 if j < b2 else 2
    if scale < 0:
        L = [2 - v for v in L]
        scale = -scale
        bk = (1 - bk) if kind == "S" else 3 - bk
    xxs = [(xp, xm)[bk]] * 4 if kind == "S" else [(xp, xm)[bk >> 1], (xp, xm)[bk & 1]]
    index, moved = [], False
    for k in range(S // 8):
        u = sum(L[8 * k + j] << 2 * j for j in range(8))
        gi = int(t.kmap[u])
        if gi < 0:
            moved = True
            gi = _find_best_neighbour2(t, u, xb[8 * k:8 * k + 8], w[8 * k:8 * k + 8], scale, xxs[k])
        index.append(gi)
    if moved:
        sqx, sq2 = F32(0), F32(0)
        for k in range(S // 8):
            for j in range(8):
                q = xxs[k][(int(t.grid[index[k], j]) - 1) // 2]
                wq = F32(w[8 * k + j] * q)
                sqx = F32(sqx + F32(wq * xb[8 * k + j]))
                sq2 = F32(sq2 + F32(wq * q))
        if sqx > 0 and sq2 > 0:
            scale = F32(sqx / sq2)
    return scale, bk, index


def scalar_iq1(x: np.ndarray, qw: np.ndarray | None, kind: str) -> bytes:
    """Straight port of quantize_row_iq1_s_impl / quantize_row_iq1_m_impl for one row."""
    t = tables()
    S = 32 if kind == "S" else 16
    out = bytearray()
    for ibl in range(x.size // 256):
        xbl = x[256 * ibl:256 * ibl + 256]
        sumx2 = F32(0)
        for v in xbl:
            sumx2 = F32(sumx2 + F32(v * v))
        sigma2 = F32(F32(2 * sumx2) / F32(256))
        res, ws = [], []
        for ib in range(256 // S):
            xb = xbl[S * ib:S * ib + S]
            if qw is None:
                w = (xb * xb).astype(F32)
            else:
                w = (qw[256 * ibl + S * ib:256 * ibl + S * ib + S] * np.sqrt(sigma2 + xb * xb)).astype(F32)
            ws.append(w)
            res.append(_subblock(t, xb, w, iq1.EPS_IQ1_S if kind == "S" else iq1.EPS_IQ1_M, kind))
        scales = [F32(0) if r is None else r[0] for r in res]
        max_scale = max(scales)
        if kind == "S":
            qs, qh = np.zeros(32, np.uint8), np.zeros(8, np.uint16)
            for ib, r in enumerate(res):
                if r is not None:
                    for k in range(4):
                        qs[4 * ib + k] = r[2][k] & 255
                        qh[ib] |= (r[2][k] >> 8) << 3 * k
            dbits = 0
            if max_scale:
                d = F32(max_scale / F32(15))
                dbits = int(np.float16(F32(d * F32(1.125))).view(np.uint16))
                idv = F32(1 / d)
                for ib, r in enumerate(res):
                    lv = max(0, min(7, _nearest_int(F32(F32(0.5) * F32(F32(idv * scales[ib]) - 1)))))
                    if r is not None and r[1] == 1:
                        lv |= 8
                    qh[ib] |= lv << 12
            out += np.uint16(dbits).tobytes() + qs.tobytes() + qh.tobytes()
        else:
            qs, qh, sc = np.zeros(32, np.uint8), np.zeros(16, np.uint8), np.zeros(4, np.uint16)
            for ib, r in enumerate(res):
                if r is not None:
                    qs[2 * ib], qs[2 * ib + 1] = r[2][0] & 255, r[2][1] & 255
                    qh[ib] = (r[2][0] >> 8) | ((r[2][1] >> 8) << 4)
            if max_scale:
                d = F32(max_scale / F32(15))
                idv = F32(1 / d)
                sqx, sq2 = F32(0), F32(0)
                for ib, r in enumerate(res):
                    lv = max(0, min(7, _nearest_int(F32(F32(0.5) * F32(F32(idv * scales[ib]) - 1)))))
                    sc[ib // 4] |= lv << 3 * (ib % 4)
                    bk = 0 if r is None else r[1]
                    qh[ib] |= (0x00, 0x80, 0x08, 0x88)[bk]
                    xb = xbl[16 * ib:16 * ib + 16]
                    for k in range(2):
                        xx = (iq1.X_P, iq1.X_M)[(bk >> 1) if k == 0 else (bk & 1)]
                        g = int(qs[2 * ib + k]) + ((int(qh[ib]) << (8 - 4 * k)) & 0x700)
                        for j in range(8):
                            q = F32(xx[(int(t.grid[g, j]) - 1) // 2] * F32(2 * lv + 1))
                            wq = F32(ws[ib][8 * k + j] * q)
                            sqx = F32(sqx + F32(wq * xb[8 * k + j]))
                            sq2 = F32(sq2 + F32(wq * q))
                if sq2 > 0:
                    d = F32(sqx / sq2)
                s = int(np.float16(F32(d * F32(1.1125))).view(np.uint16))
                for i in range(4):
                    sc[i] |= ((s >> 4 * i) & 15) << 12
            out += qs.tobytes() + qh.tobytes() + sc.tobytes()
    return bytes(out)


@pytest.mark.parametrize("kind,variant", [("S", "im"), ("M", "noim"), ("M", "im")])
def test_scalar_port_random_blocks(kind: str, variant: str) -> None:
    rng = np.random.default_rng(11 + len(variant))
    x = (rng.standard_normal((2, 256)) * rng.uniform(0.01, 10, (2, 1))).astype(F32)
    x[1, :40] = np.round(x[1, :40])  # ties in the sort
    x[1, 100:116] = 0
    qw = None if variant == "noim" else (rng.uniform(0, 2, 256) ** 2).astype(F32)
    if qw is not None:
        qw[:10] = 0
    q = iq1.quantize_iq1_s if kind == "S" else iq1.quantize_iq1_m
    with np.errstate(all="ignore"):
        got = q(x, qw)
        for r in range(x.shape[0]):
            assert got[r].tobytes() == scalar_iq1(x[r], qw, kind)


# --- libggml-base ----------------------------------------------------------------------------------

def _ref():
    from benchmarks import ggml_ref
    if refs.ggml_lib() is None or not ggml_ref.available():
        pytest.skip(refs.why("QTOOL_GGML_LIB"))
    return ggml_ref


def _extra_rows() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((14, 512)) * rng.uniform(1e-3, 30, (14, 1))).astype(np.float32)
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
    x[9] = np.round(x[9] * 3)
    x[10, :32] = 1e-8
    x[11] = np.abs(x[11])
    im = (rng.uniform(0, 2, 512) ** 3).astype(np.float32)
    im[:24] = 0
    return x, im


@pytest.mark.parametrize("name", list(TYPES))
def test_extra_and_edge_rows_match_ggml(name: str) -> None:
    ref = _ref()
    q, dq, variants = TYPES[name]
    x, im = _extra_rows()
    tid = ref.MAINLINE_IDS[name]
    ref.init(tid)
    for v in variants:
        imv = im if v == "im" else None
        want = ref.quantize_chunk(tid, x, imv)
        got = q(x, imv)
        assert mismatched_rows(got, want) == []
        assert not dq(got, x.shape[1])[0].any()
