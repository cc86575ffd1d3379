"""ik_llama.cpp's IQ1_S_R4 and IQ1_M_R4 (qtool/quants/ik/iq1_r4.py): quantize bytes and
dequantized values against ik's libggml (ggml_quantize_chunk, the type's to_float) on random rows
with edge rows, both imatrix variants; without the library: a scalar transliteration of
quantize_iq1_s_r4 / quantize_iq1_m_r4 (with iq1s_process_1block / iq1m_process_1block) and of the
dequantizers on a few blocks, round trips, bad input, the registry; end to end against ik's
llama-quantize."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qtool.cli import cli
from qtool.quants import can_quantize, dequantize, get_type, quantize
from qtool.quants.ik.iq1_r4 import dequantize_iq1_m_r4, dequantize_iq1_s_r4, quantize_iq1_m_r4, quantize_iq1_s_r4
from qtool.quants.lattice.grids_iq1 import tables
from qtool.quants.numeric import fp16_bits, fp16_bits_to_fp32

from . import ik_lib, refs

F32 = np.float32
DATA = Path(__file__).parent / "data" / "quantize"
TYPES = ("IQ1_S_R4", "IQ1_M_R4")


def _rows(nrows: int, n: int, seed: int) -> np.ndarray:
    """Random rows of varied scale with edge rows: all zero, zero blocks, zero halves, tiny, one
    outlier, all equal, negative only."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((nrows, n)) * rng.exponential(1.0, (nrows, 1))).astype(F32)
    x[1] = 0
    x[2, :64] = 0
    x[3] *= F32(1e-30)
    x[5, min(100, n - 1)] = 50
    x[6] = 0.5
    x[7] = -np.abs(x[7])
    x[9, 16:32] = 0  # second half of a block zero (IQ1_M_R4: stale shift2)
    x[10, 32:48] = 0  # first half zero
    x[11, :16] = F32(1e-9)  # first half below 1e-14 in sum of squares
    return x


def _imatrix(n: int, seed: int) -> np.ndarray:
    im = np.random.default_rng(seed).exponential(1.0, n).astype(F32)
    im[32:64] = 0  # w*|x| sums to 0: the weights fall back to sqrt(sigma2 + x^2)
    return im


# ---- scalar transliteration of the C (iqk_quantize.cpp, ggml-quants.c) ----------------------------

D = F32(0.125)
XP = [F32(-1) + D, D, F32(1) + D]
XM = [F32(-1) - D, -D, F32(1) - D]
FLT_MAX = F32(np.finfo(F32).max)


def _nearest_int(f: np.float32) -> int:
    return int(np.rint(np.float64(f)))


def _neighbour(t, u: int, xb, wb, scale, xx) -> int:  # noqa: ANN001
    """iq1_find_best_neighbour2 (first least d2)."""
    off = -int(t.kmap[u]) - 1
    cnt = int(t.neighbours[off])
    best, gi = FLT_MAX, -1
    for j in range(1, cnt + 1):
        g = int(t.neighbours[off + j])
        d2 = F32(0)
        for i in range(8):
            q = xx[int(t.levels[g, i])]
            diff = scale * q - xb[i]
            d2 += (wb[i] * diff) * diff
        if d2 < best:
            best, gi = d2, g
    assert gi >= 0
    return gi


def _sorted_sums(xb, wb):  # noqa: ANN001, ANN202
    idx = sorted(range(len(xb)), key=lambda j: float(xb[j]))  # glibc's qsort: stable merge sort
    return idx


def _iq1s_process(t, xb, wb):  # noqa: ANN001, ANN202
    """iq1s_process_1block (block 32) -> (scale, index[4], shift)."""
    S = 32
    mx = max(abs(float(v)) for v in xb)
    if mx < 1e-12:
        return F32(0), [0] * 4, 1
    idx = _sorted_sums(xb, wb)
    sx, sw = [F32(0)], [F32(0)]
    for j in range(S):
        i = idx[j]
        sx.append(sx[-1] + wb[i] * xb[i])
        sw.append(sw[-1] + wb[i])
    best, scale = -F32(np.finfo(F32).tiny), F32(mx)
    b1 = b2 = -1
    bshift = 0
    for i1 in range(S + 1):
        for i2 in range(i1, S + 1):
            for xv, sh in ((XP, 1), (XM, -1)):
                qx = (sx[i1] - sx[0]) * xv[0] + (sx[i2] - sx[i1]) * xv[1] + (sx[S] - sx[i2]) * xv[2]
                q2 = ((sw[i1] - sw[0]) * xv[0] * xv[0] + (sw[i2] - sw[i1]) * xv[1] * xv[1]
                      + (sw[S] - sw[i2]) * xv[2] * xv[2])
                if q2 > 0 and qx * qx > best * q2:
                    scale = qx / q2
                    best = scale * qx
                    b1, b2, bshift = i1, i2, sh
    assert b1 >= 0
    L = [0] * S
    for j in range(S):
        L[idx[j]] = 0 if j < b1 else 1 if j < b2 else 2
    if scale < 0:
        L = [2 - v for v in L]
        scale, bshift = -scale, -bshift
    xx = XP if bshift == 1 else XM
    index, on_grid = [], True
    for k in range(4):
        u = sum(L[8 * k + j] << 2 * j for j in range(8))
        g = int(t.kmap[u])
        if g < 0:
            on_grid = False
            g = _neighbour(t, u, xb[8 * k:8 * k + 8], wb[8 * k:8 * k + 8], scale, xx)
        index.append(g)
    if not on_grid:
        qx = q2 = F32(0)
        for k in range(4):
            for j in range(8):
                w = wb[8 * k + j]
                q = xx[int(t.levels[index[k], j])]
                qx += (w * q) * xb[8 * k + j]
                q2 += (w * q) * q
        if qx > 0 and q2 > 0:
            scale = qx / q2
    return scale, index, bshift


def _iq1m_process(t, xb, wb):  # noqa: ANN001, ANN202
    """iq1m_process_1block (block 16) -> (scale, index[2], best_k)."""
    S = 16
    idx = _sorted_sums(xb, wb)
    s1x, s1w, s2x, s2w = [F32(0)], [F32(0)], [F32(0)], [F32(0)]
    for j in range(S):
        i = idx[j]
        a, b = (s1x, s1w) if i < 8 else (s2x, s2w)
        c, d = (s2x, s2w) if i < 8 else (s1x, s1w)
        a.append(a[-1] + wb[i] * xb[i])
        b.append(b[-1] + wb[i])
        c.append(c[-1])
        d.append(d[-1])

    def part(sx, v, i1, i2):  # noqa: ANN001, ANN202
        return (sx[i1] - sx[0]) * v[0] + (sx[i2] - sx[i1]) * v[1] + (sx[S] - sx[i2]) * v[2]

    def part2(sw, v, i1, i2):  # noqa: ANN001, ANN202
        return (sw[i1] - sw[0]) * v[0] * v[0] + (sw[i2] - sw[i1]) * v[1] * v[1] + (sw[S] - sw[i2]) * v[2] * v[2]

    combos = ((XP, XP), (XP, XM), (XM, XP), (XM, XM))
    best, scale = F32(0), F32(0)
    b1 = b2 = bk = -1
    for i1 in range(S + 1):
        for i2 in range(i1, S + 1):
            for k, (va, vb) in enumerate(combos):
                qx = part(s1x, va, i1, i2) + part(s2x, vb, i1, i2)
                q2 = part2(s1w, va, i1, i2) + part2(s2w, vb, i1, i2)
                if q2 > 0 and qx * qx > best * q2:
                    scale = qx / q2
                    best = scale * qx
                    b1, b2, bk = i1, i2, k
    assert b1 >= 0
    L = [0] * S
    for j in range(S):
        L[idx[j]] = 0 if j < b1 else 1 if j < b2 else 2
    if scale < 0:
        L = [2 - v for v in L]
        scale, bk = -scale, 3 - bk
    index, on_grid = [], True
    for k in range(2):
        xx = (XP if bk < 2 else XM) if k == 0 else (XP if bk % 2 == 0 else XM)
        u = sum(L[8 * k + j] << 2 * j for j in range(8))
        g = int(t.kmap[u])
        if g < 0:
            on_grid = False
            g = _neighbour(t, u, xb[8 * k:8 * k + 8], wb[8 * k:8 * k + 8], scale, xx)
            L[8 * k:8 * k + 8] = [int(v) for v in t.levels[g]]
        index.append(g)
    if not on_grid:
        qx4 = [F32(0)] * 4
        q24 = [F32(0)] * 4
        for j in range(S):
            w = wb[j]
            qp, qm = XP[L[j]], XM[L[j]]
            qx4[0] += w * xb[j] * qp
            q24[0] += w * qp * qp
            qx4[3] += w * xb[j] * qm
            q24[3] += w * qm * qm
            a, b = (1, 2) if j < 8 else (2, 1)
            qx4[a] += w * xb[j] * qp
            q24[a] += w * qp * qp
            qx4[b] += w * xb[j] * qm
            q24[b] += w * qm * qm
        best = F32(0)
        for k in range(4):
            if qx4[k] > 0 and q24[k] > 0 and qx4[k] * qx4[k] > best * q24[k]:
                scale = qx4[k] / q24[k]
                best = scale * qx4[k]
                bk = k
    return scale, index, bk


def _weights(xb, qw, lo: int, hi: int, sigma2):  # noqa: ANN001, ANN202
    return [F32(np.sqrt(sigma2 + xb[j] * xb[j])) if qw is None else qw[j] * F32(np.sqrt(sigma2 + xb[j] * xb[j]))
            for j in range(lo, hi)]


def _scalar_iq1_s_r4(x: np.ndarray, im: np.ndarray | None) -> np.ndarray:
    """quantize_iq1_s_r4 on 4 rows, element by element."""
    t = tables()
    n = x.shape[1]
    nblock = n // 32
    scales = np.zeros((nblock, 4), F32)
    qs = np.zeros((nblock, 16), np.uint8)
    qh = np.zeros((nblock, 4), np.uint16)
    mx = [F32(0)] * 4
    for ibl in range(nblock):
        for k in range(4):
            xb = [F32(v) for v in x[k, 32 * ibl:32 * ibl + 32]]
            s2 = F32(0)
            for v in xb:
                s2 += v * v
            if s2 < F32(1e-14):
                for i in range(4):
                    qs[ibl, 4 * i + k] = 1029 & 255
                qh[ibl, k] = sum((1029 >> 8) << 3 * i for i in range(4))
                continue
            sigma2 = F32(1.5) * s2 / F32(32)
            qwb = None if im is None else [F32(v) for v in im[32 * ibl:32 * ibl + 32]]
            wb = _weights(xb, qwb, 0, 32, sigma2)
            if qwb is not None:
                swx = F32(0)
                for j in range(32):
                    swx += wb[j] * abs(xb[j])
                if swx < F32(1e-14):
                    wb = _weights(xb, None, 0, 32, sigma2)
            sc, index, shift = _iq1s_process(t, xb, wb)
            scales[ibl, k] = sc
            mx[k] = max(mx[k], sc)
            h = 0
            for i in range(4):
                qs[ibl, 4 * i + k] = index[i] & 255
                h |= (index[i] >> 8) << 3 * i
            if shift < 0:
                h |= 0x8000
            qh[ibl, k] = h
    d = np.array([fp16_bits(F32(1.0625) * m / F32(15)) for m in mx], np.uint16)
    for ibl in range(nblock):
        for k in range(4):
            invd = F32(15) / mx[k] if mx[k] else F32(0)
            ls = min(7, max(0, _nearest_int(F32(0.5) * (scales[ibl, k] * invd - F32(1)))))
            qh[ibl, k] |= ls << 12
    body = np.concatenate([qs, qh.astype("<u2").view(np.uint8)], axis=1)
    return np.concatenate([d.astype("<u2").view(np.uint8), body.reshape(-1)]).reshape(4, -1)


def _scalar_iq1_m_r4(x: np.ndarray, im: np.ndarray | None) -> np.ndarray:
    """quantize_iq1_m_r4 on 4 rows, element by element (shift1 / shift2 start at 0)."""
    t = tables()
    masks = [0x00, 0x80, 0x08, 0x88]
    n = x.shape[1]
    nblock = n // 32
    scales = np.zeros((nblock, 4, 2), F32)
    qs = np.zeros((nblock, 16), np.uint8)
    qh = np.zeros((nblock, 8), np.uint8)
    sc = np.zeros((nblock, 4), np.uint8)
    mx = [F32(0)] * 4
    shift = [0, 0]
    for ibl in range(nblock):
        for k in range(4):
            xb = [F32(v) for v in x[k, 32 * ibl:32 * ibl + 32]]
            sl = sh = F32(0)
            for v in xb[:16]:
                sl += v * v
            for v in xb[16:]:
                sh += v * v
            s2 = sl + sh
            if s2 < F32(1e-14):
                for i in range(4):
                    qs[ibl, 4 * i + k] = 1029 & 255
                for i in range(2):
                    qh[ibl, 4 * i + k] = 0x44
                continue
            sigma2 = F32(1.5) * s2 / F32(32)
            qwb = None if im is None else [F32(v) for v in im[32 * ibl:32 * ibl + 32]]
            wb = _weights(xb, qwb, 0, 32, sigma2)
            if qwb is not None:
                for h, thr in ((0, 1e-14), (1, 1e-14)):
                    swx = F32(0)
                    for j in range(16 * h, 16 * h + 16):
                        swx += wb[j] * abs(xb[j])
                    if (swx < F32(thr)) if h == 0 else (float(swx) < thr):
                        wb[16 * h:16 * h + 16] = _weights(xb, None, 16 * h, 16 * h + 16, sigma2)
            index = [1029] * 4
            for h, s in ((0, sl), (1, sh)):
                if s > F32(1e-14):
                    scales[ibl, k, h], index[2 * h:2 * h + 2], shift[h] = _iq1m_process(
                        t, xb[16 * h:16 * h + 16], wb[16 * h:16 * h + 16])
            mx[k] = max(mx[k], scales[ibl, k, 0], scales[ibl, k, 1])
            for i in range(4):
                qs[ibl, 4 * i + k] = index[i] & 255
            for i in range(2):
                qh[ibl, 4 * i + k] = (index[2 * i] >> 8) | ((index[2 * i + 1] >> 8) << 4) | masks[shift[i]]
    d = np.array([fp16_bits(F32(1.0625) * m / F32(15)) for m in mx], np.uint16)
    for ibl in range(nblock):
        for k in range(4):
            invd = F32(15) / mx[k] if mx[k] else F32(0)
            ls = [min(15, max(0, _nearest_int(scales[ibl, k, h] * invd))) for h in range(2)]
            sc[ibl, k] = ls[0] | (ls[1] << 4)
    body = np.concatenate([qs, qh, sc], axis=1)
    return np.concatenate([d.astype("<u2").view(np.uint8), body.reshape(-1)]).reshape(4, -1)


def _scalar_dequantize(q: np.ndarray, n: int, qtype: str) -> np.ndarray:
    """dequantize_row_iq1_s_r4 / _m_r4 on one group of 4 rows."""
    t = tables()
    flat = q.reshape(-1)
    d = fp16_bits_to_fp32(flat[:8].copy().view("<u2"))
    bs = 24 if qtype == "IQ1_S_R4" else 28
    y = np.zeros((4, n), F32)
    for ib in range(n // 32):
        b = flat[8 + bs * ib:8 + bs * (ib + 1)]
        for k in range(4):
            if qtype == "IQ1_S_R4":
                h = int(b[16 + 2 * k]) | (int(b[17 + 2 * k]) << 8)
                delta = -D if h & 0x8000 else D
                dl = d[k] * F32(2 * ((h >> 12) & 7) + 1)
                for i in range(4):
                    g = int(b[4 * i + k]) | (((h >> 3 * i) & 7) << 8)
                    for j in range(8):
                        y[k, 32 * ib + 8 * i + j] = dl * (t.deq_grid[g, j] + delta)
            else:
                dls = [d[k] * F32(int(b[24 + k]) & 15), d[k] * F32(int(b[24 + k]) >> 4)]
                for i in range(2):
                    h = int(b[16 + 4 * i + k])
                    for grp, (g, dm) in enumerate(((int(b[8 * i + k]) | ((h & 7) << 8), h & 0x08),
                                                   (int(b[8 * i + k + 4]) | ((h & 0x70) << 4), h & 0x80))):
                        delta = -D if dm else D
                        for j in range(8):
                            y[k, 32 * ib + 16 * i + 8 * grp + j] = dls[i] * (t.deq_grid[g, j] + delta)
    return y


# ---- without the library ----------------------------------------------------------------------

def test_registry() -> None:
    for qtype in TYPES:
        for v in (False, True):
            assert can_quantize(qtype, "ik", v)
            assert not can_quantize(qtype, "mainline", v)
        assert get_type(qtype).row_bytes(64) == 2 + 2 * get_type(qtype).type_size


@pytest.mark.parametrize("with_imatrix", [False, True])
@pytest.mark.parametrize(("qtype", "fn", "scalar"), [("IQ1_S_R4", quantize_iq1_s_r4, _scalar_iq1_s_r4),
                                                     ("IQ1_M_R4", quantize_iq1_m_r4, _scalar_iq1_m_r4)])
def test_matches_scalar_transliteration(qtype: str, fn, scalar, with_imatrix: bool) -> None:  # noqa: ANN001
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((4, 96)) * F32(0.03)).astype(F32)
    x[1, 32:64] = 0  # a zero block
    x[2, 16:32] = 0  # a zero half
    x[3, 0:16] = 0
    x[0, 5] = 1.5  # an outlier: groups off the grid
    im = _imatrix(96, 12) if with_imatrix else None
    got = fn(x, im)
    assert np.array_equal(got, scalar(x, im))
    assert np.array_equal(dequantize(got, qtype, 96), _scalar_dequantize(got, 96, qtype))


@pytest.mark.parametrize(("qtype", "fn", "dq"), [("IQ1_S_R4", quantize_iq1_s_r4, dequantize_iq1_s_r4),
                                                 ("IQ1_M_R4", quantize_iq1_m_r4, dequantize_iq1_m_r4)])
def test_round_trip(qtype: str, fn, dq) -> None:  # noqa: ANN001
    """The engine quantizes and dequantizes with the module's kernels; values are finite and
    close to the input."""
    x = _rows(12, 256, 3)
    x[1] = 1  # keep a nonzero row (an all-zero row dequantizes to zeros: covered by the library test)
    q = fn(x, None)
    y = dq(q, 256)
    assert np.array_equal(dequantize(q, qtype, 256), y)
    assert np.all(np.isfinite(y))
    err = np.abs(y[0] - x[0]).mean() / np.abs(x[0]).mean()
    assert err < 0.6
    assert np.array_equal(quantize(x, qtype, None, flavour="ik"), q)


def test_bad_input() -> None:
    for fn in (quantize_iq1_s_r4, quantize_iq1_m_r4):
        with pytest.raises(ValueError, match="multiple of 4"):
            fn(np.ones((6, 64), F32), None)
        with pytest.raises(ValueError, match="multiple of 32"):
            fn(np.ones((4, 40), F32), None)


# ---- against ik's libggml (QTOOL_IK_LIB) ------------------------------------------------------

@pytest.fixture(scope="module")
def iklib() -> ctypes.CDLL:
    if refs.ik_lib() is None:
        pytest.skip(refs.why("QTOOL_IK_LIB"))
    return ik_lib.load()


@pytest.mark.parametrize("qtype", TYPES)
def test_against_ik_library(iklib: ctypes.CDLL, qtype: str) -> None:
    x = _rows(32, 512, 5)
    for imv in (False, True):
        im = _imatrix(512, 6) if imv else None
        want = ik_lib.quantize(iklib, qtype, x, im)
        got = quantize(x, qtype, im, flavour="ik")
        assert np.nonzero((got != want).any(axis=1))[0].tolist() == [], (qtype, imv)
        assert np.array_equal(dequantize(got, qtype, 512), ik_lib.to_float(iklib, qtype, want, 512, 4)), (qtype, imv)


# ---- end to end: qtool quantize --flavour ik vs ik's llama-quantize (QTOOL_IK_BIN) ---------------

def test_cli_matches_ik_llama_quantize(tiny256: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real CLI on tiny-256 with its imatrix writes the file ik_llama.cpp's llama-quantize
    writes (run from the data folder, so both record the same imatrix file name). One ftype only:
    ik's llama-quantize spends ~15 s building the IQ1 neighbour lists per run (IQ1_S_R4 was
    checked the same way by hand)."""
    ftype = "IQ1_M_R4"
    exe = refs.ik_bin("llama-quantize")
    if exe is None:
        pytest.skip(refs.why("QTOOL_IK_BIN"))
    monkeypatch.chdir(DATA)
    im = ["--imatrix", "tiny-256.imatrix.dat"]
    want, got = tmp_path / "ik.gguf", tmp_path / "q.gguf"
    subprocess.run([str(exe), *im, str(tiny256), str(want), ftype, "1"], check=True, capture_output=True, timeout=120)
    r = CliRunner().invoke(cli, ["quantize", "--flavour", "ik", *im, str(tiny256), str(got), ftype, "1"])
    assert r.exit_code == 0, r.output
    assert got.read_bytes() == want.read_bytes()
