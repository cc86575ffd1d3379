"""ik_llama.cpp's lattice i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S) under
--flavour ik: every golden row of ik's vectors, both variants where present, dequantization; ik's
own IQ2_XS / IQ1_M kernels against a scalar transliteration of ik's C on extra random blocks;
C's stale state (a sub-block where nothing is accepted, eps sub-blocks) and edge rows; against
ik's libggml itself when QTOOL_IK_LIB is set."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import numpy as np
import pytest

from qtool.quants import registry
from qtool.quants.ik import lattice_ik
from qtool.quants.lattice.grids_e8 import tables as e8_tables
from qtool.quants.lattice.grids_iq1 import tables as iq1_tables
from qtool.quants.lattice.iq1 import X_M, X_P
from qtool.quants.lattice.iq2 import KSIGNS_IQ2XS
from qtool.quants.numeric import fp16_bits, nearest_int

from . import refs
from .vectors import expected, inputs, mismatched_rows

F32 = np.float32
TYPES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S")
GGML_IDS = {"IQ2_XXS": 16, "IQ2_XS": 17, "IQ3_XXS": 18, "IQ1_S": 19, "IQ3_S": 21, "IQ2_S": 22, "IQ1_M": 29}


def _variants(qtype: str) -> list[str]:
    return [v for v in ("noim", "im") if f"q_{v}" in expected(qtype, "ik_llama")]


CASES = [(t, v) for t in TYPES for v in _variants(t)]


@pytest.mark.parametrize(("qtype", "variant"), CASES)
def test_golden_vectors(qtype: str, variant: str) -> None:
    """The kernel registered for ik reproduces ik's bytes on all 55 rows, and the dequantizer
    its floats."""
    x, im, _ = inputs("ik_llama")
    want = expected(qtype, "ik_llama")
    q = registry.quantizer(qtype, "ik", variant == "im")
    assert q is not None, f"{qtype} {variant} is not registered for ik"
    got = q(x, im if variant == "im" else None)
    assert mismatched_rows(got, want[f"q_{variant}"]) == []
    deq = registry.dequantizer(qtype)
    assert deq is not None
    np.testing.assert_array_equal(deq(want[f"q_{variant}"], x.shape[1]), want[f"deq_{variant}"])


def test_registration() -> None:
    """ik's own kernels are registered for ik only (mainline keeps its own); IQ3_S's mainline kernel
    serves ik (ik's quantize_iq3_s is that algorithm); the types ik quantizes only with an imatrix
    have that variant only."""
    for name, fn in lattice_ik.QUANTIZE.items():
        variants = (True,) if name in ("IQ1_S", "IQ2_XXS", "IQ2_XS") else (False, True)
        for v in (False, True):
            assert (registry.quantizer(name, "ik", v) is fn) == (v in variants), (name, v)
            assert registry.quantizer(name, "mainline", v) is not fn
        assert registry.dequantizer(name) is lattice_ik.DEQUANTIZE[name]
    assert registry.support("IQ3_S", "ik") == (True, True)
    assert registry.quantizer("IQ3_S", "ik", True) is registry.quantizer("IQ3_S", "mainline", True)


# --- scalar transliterations of ik's C (one row at a time, state carried as in C) -----------------------

def _nearest(v: float) -> int:
    return int(nearest_int(np.array([v], F32))[0])


def _neighbour(t, u: int, xv: np.ndarray, w: np.ndarray, scale: F32, qv: np.ndarray) -> int:
    """iq2_find_best_neighbour / iq1_find_best_neighbour2: first least sum (w*diff)*diff."""
    start = -int(t.kmap[u]) - 1
    n = int(t.neighbours[start])
    cands = t.neighbours[start + 1:start + 1 + n].astype(np.int64)
    q = qv[t.levels[cands].astype(np.int64)]  # (n, 8)
    d2 = np.zeros(n, F32)
    for i in range(8):
        diff = scale * q[:, i] - xv[i]
        d2 = d2 + (w[i] * diff) * diff
    best, bi = np.finfo(F32).max, -1
    for j in range(n):
        if d2[j] < best:
            best, bi = d2[j], int(cands[j])
    assert bi >= 0
    return bi


def _code(lv: np.ndarray) -> int:
    return int(sum(int(lv[i]) << 2 * i for i in range(8)))


def _iq2_levels(t, xval: np.ndarray, waux: np.ndarray, idv: F32, sc: F32) -> tuple[np.ndarray, list[int]]:
    """Levels of a sub-block of 16 at id = idv, groups off the grid moved to their neighbour at sc."""
    la = np.zeros(16, np.int64)
    gi = [0, 0]
    for k in range(2):
        for i in range(8):
            la[8 * k + i] = min(max(_nearest(F32(F32(idv * xval[8 * k + i] - F32(1)) * F32(0.5))), 0), 2)
        u = _code(la[8 * k:8 * k + 8])
        g = int(t.kmap[u])
        if g < 0:
            g = _neighbour(t, u, xval[8 * k:8 * k + 8], waux[8 * k:8 * k + 8], sc, np.array([1, 3, 5], F32))
            la[8 * k:8 * k + 8] = t.levels[g]
        gi[k] = g
    return la, gi


def _iq2_sums(w: np.ndarray, xval: np.ndarray, la: np.ndarray) -> tuple[F32, F32]:
    a, b = F32(0), F32(0)
    for i in range(16):
        q = F32(2 * la[i] + 1)
        a = F32(a + (w[i] * xval[i]) * q)
        b = F32(b + (w[i] * q) * q)
    return a, b


class _StateIQ2XS:
    def __init__(self) -> None:
        self.L = np.zeros(16, np.int64)


def scalar_iq2_xs(x: np.ndarray, qw: np.ndarray, st: _StateIQ2XS) -> bytes:
    """ik's quantize_row_iq2_xs_impl, one row."""
    t = e8_tables("IQ2_XS")
    out = bytearray()
    for ibl in range(x.size // 256):
        xbl = x[256 * ibl:256 * ibl + 256]
        sumx2 = F32(0)
        for v in xbl:
            sumx2 = F32(sumx2 + v * v)
        sigma2 = F32(sumx2 / F32(256))
        scales = np.zeros(16, F32)
        q2 = np.zeros(32, np.int64)
        for ib in range(16):
            xb = xbl[16 * ib:16 * ib + 16]
            qwb = qw[256 * ibl + 16 * ib:256 * ibl + 16 * ib + 16]
            w = (qwb * np.sqrt(sigma2 + xb * xb)).astype(F32)
            waux = np.sqrt(w)
            xval = np.abs(xb)
            signs = [0, 0]
            for k in range(2):
                s, nflip = 0, 0
                for i in range(8):
                    if not xb[8 * k + i] >= 0:
                        nflip += 1
                        s |= 1 << i
                if nflip % 2:
                    wxx = (w[8 * k:8 * k + 8] * xb[8 * k:8 * k + 8]) * xb[8 * k:8 * k + 8]
                    imin = int(np.argmin(wxx))
                    xval[8 * k + imin] = -xval[8 * k + imin]
                    s ^= 1 << imin
                signs[k] = s & 127
            if xval.max() < F32(1e-15):
                st.L[:] = 0
                continue
            order = sorted(range(16), key=lambda j: xval[j])
            sx, sw = [F32(0)], [F32(0)]
            for j in order:
                sx.append(F32(sx[-1] + w[j] * xval[j]))
                sw.append(F32(sw[-1] + w[j]))
            best, scale = F32(0), F32(0)
            for i1 in range(17):
                for i2 in range(i1, 17):
                    sqx = F32(F32(sx[i1] * F32(1) + (sx[i2] - sx[i1]) * F32(3)) + (sx[16] - sx[i2]) * F32(5))
                    sq2 = F32(F32(sw[i1] * F32(1) + (sw[i2] - sw[i1]) * F32(9)) + (sw[16] - sw[i2]) * F32(25))
                    if sq2 > 0 and sqx * sqx > best * sq2:
                        scale = F32(sqx / sq2)
                        best = F32(scale * sqx)
            best = F32(0)
            eff = F32(scale * F32(5))
            index = [0, 0]

            for is_ in range(-7, 8):
                idv = F32(F32(F32(5) + F32(is_) * F32(0.1)) / eff)
                la, gi = _iq2_levels(t, xval, waux, idv, F32(F32(1) / idv))
                a, b = _iq2_sums(w, xval, la)
                if b > 0 and a * a > best * b:
                    scale = F32(a / b)
                    best = F32(scale * a)
                    st.L[:] = la
                    index = gi
            if scale != 0:
                for _ in range(3):
                    la, gi = _iq2_levels(t, xval, waux, F32(F32(1) / scale), scale)
                    if gi == index:
                        break
                    a, b = _iq2_sums(w, xval, la)
                    if b > 0 and a * a > best * b:
                        scale = F32(a / b)
                        best = F32(scale * a)
                        st.L[:] = la
                        index = gi
                    else:
                        break
            if scale < 0:
                scale = -scale
                signs = [(~s) & 127 for s in signs]
            for k in range(2):
                g = int(t.kmap[_code(st.L[8 * k:8 * k + 8])])
                assert g >= 0
                q2[2 * ib + k] = g | (signs[k] << 9)
            scales[ib] = scale
        blk = np.zeros(37, np.uint16)
        max_scale = scales.max()
        if max_scale == 0:
            out += blk.tobytes()
            continue
        d = F32(max_scale / F32(31))
        dbits = int(fp16_bits(np.array([d]))[0])
        idv = F32(F32(1) / d)
        sc8 = np.zeros(8, np.uint8)
        sumqx, sumq2 = F32(0), F32(0)
        for ib in range(16):
            li = min(max(_nearest(F32(F32(idv * scales[ib] - F32(1)) * F32(0.5))), 0), 15)
            sc8[ib // 2] |= li << (4 * (ib % 2))
            lf = F32(2 * li + 1)
            xb = xbl[16 * ib:16 * ib + 16]
            qwb = qw[256 * ibl + 16 * ib:256 * ibl + 16 * ib + 16]
            w = (qwb * np.sqrt(sigma2 + xb * xb)).astype(F32)
            for k in range(2):
                g = int(q2[2 * ib + k]) & 511
                sg = int(KSIGNS_IQ2XS[int(q2[2 * ib + k]) >> 9])
                for j in range(8):
                    q = F32(F32(F32(0.125) * lf) * t.deq_grid[g, j]) * F32(-1 if sg >> j & 1 else 1)
                    sumqx = F32(sumqx + (w[8 * k + j] * q) * xb[8 * k + j])
                    sumq2 = F32(sumq2 + (w[8 * k + j] * q) * q)
        if sumq2 > 0:
            dbits = int(fp16_bits(np.array([F32(F32(F32(1.05) * sumqx) / sumq2)]))[0])
        out += np.array([dbits], np.uint16).tobytes() + q2.astype(np.uint16).tobytes() + sc8.tobytes()
    return bytes(out)


def scalar_iq1_m(x: np.ndarray, qw: np.ndarray | None, shifts: np.ndarray) -> bytes:
    """ik's quantize_row_iq1_m_impl with iq1m_process_1block, one row; shifts (16,) is C's array."""
    t = iq1_tables()
    xxs = (X_P, X_M)
    masks = (0x00, 0x80, 0x08, 0x88)
    out = bytearray()

    def weight_of(ibl: int, ib: int, sig: F32) -> np.ndarray:
        xb = x[256 * ibl + 16 * ib:256 * ibl + 16 * ib + 16]
        if qw is None:
            return (xb * xb).astype(F32)
        return (qw[256 * ibl + 16 * ib:256 * ibl + 16 * ib + 16] * np.sqrt(sig + xb * xb)).astype(F32)

    for ibl in range(x.size // 256):
        xbl = x[256 * ibl:256 * ibl + 256]
        sig = []
        for ib in range(8):
            s = F32(0)
            for v in xbl[32 * ib:32 * ib + 32]:
                s = F32(s + v * v)
            sig.append(F32(F32(F32(1.5) * s) / F32(32)))
        qs = np.zeros(32, np.uint8)
        qh = np.zeros(16, np.uint8)
        scales = np.zeros(16, F32)
        for ib in range(16):
            xb = xbl[16 * ib:16 * ib + 16]
            w = weight_of(ibl, ib, sig[ib // 2])
            mx = np.abs(xb).max()
            sumwx = F32(0)
            for i in range(1, 16):
                sumwx = F32(sumwx + w[i] * abs(xb[i]))
            if mx < F32(1e-7):
                continue
            if sumwx == 0:
                w = (xb * xb).astype(F32)
            order = sorted(range(16), key=lambda j: xb[j])
            s1x, s2x, s1w, s2w = [F32(0)], [F32(0)], [F32(0)], [F32(0)]
            for j in order:
                h = j >= 8
                s1x.append(s1x[-1] if h else F32(s1x[-1] + w[j] * xb[j]))
                s2x.append(F32(s2x[-1] + w[j] * xb[j]) if h else s2x[-1])
                s1w.append(s1w[-1] if h else F32(s1w[-1] + w[j]))
                s2w.append(F32(s2w[-1] + w[j]) if h else s2w[-1])
            best, scale, bi = F32(0), F32(0), None
            for i1 in range(17):
                for i2 in range(i1, 17):
                    for k in range(4):
                        va, vb = xxs[k >> 1], xxs[k & 1]
                        terms_x = [s1x[i1] * va[0], (s1x[i2] - s1x[i1]) * va[1], (s1x[16] - s1x[i2]) * va[2],
                                   s2x[i1] * vb[0], (s2x[i2] - s2x[i1]) * vb[1], (s2x[16] - s2x[i2]) * vb[2]]
                        terms_w = [(s1w[i1] * va[0]) * va[0], ((s1w[i2] - s1w[i1]) * va[1]) * va[1],
                                   ((s1w[16] - s1w[i2]) * va[2]) * va[2], (s2w[i1] * vb[0]) * vb[0],
                                   ((s2w[i2] - s2w[i1]) * vb[1]) * vb[1], ((s2w[16] - s2w[i2]) * vb[2]) * vb[2]]
                        sqx, sq2 = terms_x[0], terms_w[0]
                        for a, b in zip(terms_x[1:], terms_w[1:], strict=True):
                            sqx, sq2 = F32(sqx + a), F32(sq2 + b)
                        if sq2 > 0 and sqx * sqx > best * sq2:
                            scale = F32(sqx / sq2)
                            best = F32(scale * sqx)
                            bi = (i1, i2, k)
            assert bi is not None  # C: GGML_ASSERT
            i1, i2, bk = bi
            L = np.zeros(16, np.int64)
            for pos, j in enumerate(order):
                L[j] = 0 if pos < i1 else (1 if pos < i2 else 2)
            if scale < 0:
                L = 2 - L
                scale = -scale
                bk = 3 - bk
            index = [0, 0]
            moved = False
            for k in range(2):
                xx = xxs[(bk >> 1) if k == 0 else (bk & 1)]
                u = _code(L[8 * k:8 * k + 8])
                g = int(t.kmap[u])
                if g < 0:
                    moved = True
                    g = _neighbour(t, u, xb[8 * k:8 * k + 8], w[8 * k:8 * k + 8], scale, xx)
                    L[8 * k:8 * k + 8] = t.levels[g]
                index[k] = g
            if moved:
                sx4, s24 = [F32(0)] * 4, [F32(0)] * 4
                for j in range(16):
                    qp, qm = X_P[L[j]], X_M[L[j]]
                    for k, qq in enumerate((qp, qp if j < 8 else qm, qm if j < 8 else qp, qm)):
                        sx4[k] = F32(sx4[k] + (w[j] * xb[j]) * qq)
                        s24[k] = F32(s24[k] + (w[j] * qq) * qq)
                best = F32(0)
                for k in range(4):
                    if sx4[k] > 0 and s24[k] > 0 and sx4[k] * sx4[k] > best * s24[k]:
                        scale = F32(sx4[k] / s24[k])
                        best = F32(scale * sx4[k])
                        bk = k
            qs[2 * ib] = index[0] & 255
            qs[2 * ib + 1] = index[1] & 255
            qh[ib] = (index[0] >> 8) | ((index[1] >> 8) << 4)
            shifts[ib] = bk
            scales[ib] = scale
        sc = np.zeros(4, np.uint16)
        max_scale = scales.max()
        if max_scale != 0:
            d = F32(max_scale / F32(15))
            idv = F32(F32(1) / d)
            sumqx, sumq2 = F32(0), F32(0)
            for ib in range(16):
                li = min(max(_nearest(F32(F32(idv * scales[ib] - F32(1)) * F32(0.5))), 0), 7)
                sc[ib // 4] |= li << (3 * (ib % 4))
                qh[ib] |= masks[int(shifts[ib])]
                w = weight_of(ibl, ib, sig[ib // 2])
                xb = xbl[16 * ib:16 * ib + 16]
                for k in range(2):
                    xx = xxs[(int(shifts[ib]) >> 1) if k == 0 else (int(shifts[ib]) & 1)]
                    g = int(qs[2 * ib + k]) + ((int(qh[ib]) << (8 - 4 * k)) & 0x700)
                    for j in range(8):
                        q = F32(xx[t.levels[g, j]] * F32(2 * li + 1))
                        sumqx = F32(sumqx + (w[8 * k + j] * q) * xb[8 * k + j])
                        sumq2 = F32(sumq2 + (w[8 * k + j] * q) * q)
            if sumq2 > 0:
                d = F32(sumqx / sumq2)
            sb = int(fp16_bits(np.array([F32(d * F32(1.085))]))[0])
            for i in range(4):
                sc[i] |= ((sb >> (4 * i)) & 15) << 12
        out += qs.tobytes() + qh.tobytes() + sc.tobytes()
    return bytes(out)


def _random_rows(rng: np.random.Generator, nrows: int, n: int) -> np.ndarray:
    """Gaussian rows of varied scale, some 16-value sub-blocks zeroed (eps sub-blocks)."""
    x = (rng.standard_normal((nrows, n)) * np.exp(rng.uniform(-6, 6, (nrows, 1)))).astype(F32)
    for r in range(nrows):
        for b in rng.choice(n // 16, 3, replace=False):
            x[r, 16 * b:16 * b + 16] = 0
    return x


def _imatrix(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random weights with whole zero sub-blocks (C's stale-state paths) and scattered zeros."""
    im = rng.exponential(1.0, n).astype(F32)
    im[rng.random(n) < 0.1] = 0
    for b in rng.choice(n // 16, 6, replace=False):
        im[16 * b:16 * b + 16] = 0
    im[:16] = 0  # the first sub-block of every row: L / shifts carried from the previous row
    return im


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_iq2_xs_against_scalar_port() -> None:
    rng = np.random.default_rng(7)
    x = _random_rows(rng, 4, 512)
    im = _imatrix(rng, 512)
    st = _StateIQ2XS()
    want = np.frombuffer(b"".join(scalar_iq2_xs(r, im, st) for r in x), np.uint8).reshape(4, -1)
    got = lattice_ik.quantize_iq2_xs_ik(x, im)
    assert mismatched_rows(got, want) == []


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("with_im", [False, True])
def test_iq1_m_against_scalar_port(with_im: bool) -> None:
    rng = np.random.default_rng(11 + with_im)
    x = _random_rows(rng, 3, 512)
    im = _imatrix(rng, 512) if with_im else None
    shifts = np.zeros(16, np.int64)
    want = np.frombuffer(b"".join(scalar_iq1_m(r, im, shifts) for r in x), np.uint8).reshape(3, -1)
    got = lattice_ik.quantize_iq1_m_ik(x, im)
    assert mismatched_rows(got, want) == []


def test_stale_state_is_carried_across_chunks() -> None:
    """Rows quantized in one call equal the same rows cut into the kernel's internal chunks: the
    carried L / shifts cross chunk boundaries (many rows of 4096: several chunks)."""
    rng = np.random.default_rng(3)
    x = _random_rows(rng, 40, 4096)
    im = _imatrix(rng, 4096)
    for q, imx in ((lattice_ik.quantize_iq2_xs_ik, im), (lattice_ik.quantize_iq1_m_ik, im),
                   (lattice_ik.quantize_iq1_m_ik, None)):
        whole = q(x, imx)
        assert whole.shape == (40, 4096 // 256 * (74 if q is lattice_ik.quantize_iq2_xs_ik else 56))
        # the stale paths are taken: an all-zero-weight sub-block does not simply encode zeros
        if imx is not None and q is lattice_ik.quantize_iq2_xs_ik:
            assert whole[:, 2:6].any()


@pytest.mark.parametrize("qtype", sorted(lattice_ik.QUANTIZE))
def test_edge_rows(qtype: str) -> None:
    """Zeros, tiny, huge, constant and sign-alternating rows: no crash, zero rows give zero bytes,
    the others round-trip with the type's error."""
    n = 512
    rows = np.stack([np.zeros(n), np.full(n, 1e-30), np.full(n, 3e4), np.full(n, -0.7),
                     np.tile([1.0, -1.0], n // 2), np.linspace(-2, 2, n)]).astype(F32)
    im = np.ones(n, F32)
    q = lattice_ik.QUANTIZE[qtype]
    deq = lattice_ik.DEQUANTIZE[qtype]
    for imx in ((im,) if qtype in ("IQ1_S", "IQ2_XXS", "IQ2_XS") else (im, None)):
        got = q(rows, imx)
        assert not got[0].any() and not got[1].any()
        y = deq(got, n)
        assert np.isfinite(y).all()
        for r in (2, 3, 4, 5):
            err = np.sqrt(np.mean((y[r] - rows[r]) ** 2)) / np.sqrt(np.mean(rows[r] ** 2))
            assert err < 0.5, (qtype, r, err)


@pytest.mark.skipif(refs.ik_lib() is None, reason=refs.why("QTOOL_IK_LIB"))
def test_iq2_xxs_nan_scale_against_ik_library() -> None:
    """IQ2_XXS where the weights are zero on every value make_qp_quants gives a level above 0:
    ik's make_qp_quants returns 0/0 = NaN, every level rounds to 0, the search goes on (mainline's
    guard returns 0 and zeroes the sub-block)."""
    from qtool.quants.lattice import iq2
    lib = ctypes.CDLL(str(refs.ik_lib()))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 512)).astype(F32)
    im = rng.exponential(1.0, 512).astype(F32)
    for b in (1, 5, 9, 14):
        blk = slice(32 * b, 32 * b + 32)
        im[blk][np.abs(x[0, blk]) > F32(0.1) * np.abs(x[0, blk]).max()] = 0
    want = _ik_quantize(lib, "IQ2_XXS", x, im, 132)
    assert mismatched_rows(lattice_ik.quantize_iq2_xxs_ik(x, im), want) == []
    assert mismatched_rows(iq2.quantize_iq2_xxs(x, im), want) == [0]


@pytest.mark.parametrize("qtype", ["IQ1_S", "IQ2_XXS"])
def test_where_ik_aborts(qtype: str, tmp_path) -> None:
    """A sub-block of 32 whose weights are all zero: ik_llama.cpp aborts (IQ1_S: no split accepted,
    GGML_ASSERT; IQ2_XXS: make_qp_quants' 0/0, then a point off the grid or GGML_ASSERT(scale >= 0));
    the port raises instead of writing bytes. With QTOOL_IK_LIB, the library is seen to abort on the
    same rows (in a subprocess)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 256)).astype(F32)
    im = np.ones(256, F32)
    im[64:96] = 0
    with pytest.raises(RuntimeError, match=r"ik_llama\.cpp (aborts|encodes)"):
        lattice_ik.QUANTIZE[qtype](x, im)
    lib = refs.ik_lib()
    if lib is not None and qtype == "IQ2_XXS":  # (IQ1_S's table init alone takes ~12 s in ik)
        np.save(tmp_path / "x.npy", x)
        np.save(tmp_path / "im.npy", im)
        code = (f"import ctypes, numpy as np; lib = ctypes.CDLL({str(lib)!r}); "
                f"x = np.load({str(tmp_path / 'x.npy')!r}); im = np.load({str(tmp_path / 'im.npy')!r}); "
                f"out = np.zeros(4096, np.uint8); lib.ggml_quantize_init({GGML_IDS[qtype]}); "
                f"lib.ggml_quantize_chunk.restype = ctypes.c_size_t; "
                f"lib.ggml_quantize_chunk({GGML_IDS[qtype]}, ctypes.c_void_p(x.ctypes.data), "
                f"ctypes.c_void_p(out.ctypes.data), ctypes.c_int64(0), ctypes.c_int64(2), ctypes.c_int64(256), "
                f"ctypes.c_void_p(im.ctypes.data), None)")
        # no gdb on PATH: ggml_abort's backtrace falls back to backtrace_symbols at once
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                           env={"PATH": "/nonexistent"})
        assert r.returncode != 0


def test_stale_levels_matter() -> None:
    """The stale-state paths change bytes: with all-zero weights on some sub-blocks, ik's IQ2_S /
    IQ3_XXS / IQ2_XS differ from mainline's kernels (which encode zero levels there)."""
    from qtool.quants.lattice import iq2, iq3
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 512)).astype(F32)
    im = rng.exponential(1.0, 512).astype(F32)
    im[32:96] = 0
    im[256 + 64:256 + 128] = 0
    for ik_fn, ml_fn in ((lattice_ik.quantize_iq2_s_ik, iq2.quantize_iq2_s),
                         (lattice_ik.quantize_iq3_xxs_ik, iq3.quantize_iq3_xxs),
                         (lattice_ik.quantize_iq2_xs_ik, iq2.quantize_iq2_xs)):
        a, b = ik_fn(x, im), ml_fn(x, im)
        assert (a != b).any(axis=1).all()


def test_bad_input() -> None:
    x = np.zeros((2, 300), F32)
    with pytest.raises(ValueError, match="multiple of 256"):
        lattice_ik.quantize_iq2_xs_ik(x, np.ones(300, F32))
    with pytest.raises(ValueError, match="multiple of 256"):
        lattice_ik.quantize_iq1_m_ik(x, None)
    with pytest.raises(ValueError, match="importance matrix"):
        lattice_ik.quantize_iq2_xs_ik(np.zeros((1, 256), F32), None)


# --- against ik's libggml (QTOOL_IK_LIB) ----------------------------------------------------------------

def _ik_quantize(lib: ctypes.CDLL, qtype: str, x: np.ndarray, im: np.ndarray | None, row_bytes: int) -> np.ndarray:
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init(GGML_IDS[qtype])
    x = np.ascontiguousarray(x, F32)
    out = np.zeros((x.shape[0], row_bytes), np.uint8)
    imp = None if im is None else np.ascontiguousarray(im, F32)
    lib.ggml_quantize_chunk(GGML_IDS[qtype], x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1],
                            None if imp is None else imp.ctypes.data, None)
    return out


@pytest.mark.skipif(refs.ik_lib() is None, reason=refs.why("QTOOL_IK_LIB"))
@pytest.mark.parametrize("qtype", [t for t in TYPES if t != "IQ1_S"])
def test_against_ik_library(qtype: str) -> None:
    """Random rows with zero sub-blocks and an imatrix with zero sub-blocks against ik's own C
    (one call: C's stack state carries over rows as it does here; row 0 starts from a
    deterministic state in both because its first sub-block is processed). IQ1_S is left out:
    ik's serial iq2xs_init_impl takes ~12 s for its grid, and its only change from mainline is
    where C aborts (test_where_ik_aborts); IQ1_M pays that once."""
    lib = ctypes.CDLL(str(refs.ik_lib()))
    rng = np.random.default_rng(5)
    x = _random_rows(rng, 24, 1024)
    x[:, :16] = rng.standard_normal((24, 16)).astype(F32)
    x[0, :256] = rng.standard_normal(256).astype(F32)  # every shifts[] slot set before an eps sub-block reads it
    im = _imatrix(rng, 1024)
    im[:16] = 1
    im[512:576] = 0  # whole sub-blocks of 32 without weight: C's stale L / is_on_grid / shifts
    if qtype in ("IQ1_S", "IQ2_XXS"):  # ik aborts where a sub-block's weights are (nearly) all zero
        im = np.where(im == 0, F32(0), rng.exponential(1.0, 1024).astype(F32))
        im[rng.random(1024) < 0.9] += F32(0.5)
    row_bytes = {"IQ1_S": 200, "IQ1_M": 224, "IQ2_XXS": 264, "IQ2_XS": 296, "IQ2_S": 328, "IQ3_XXS": 392,
                 "IQ3_S": 440}[qtype]
    for imx in (im, None):
        q = registry.quantizer(qtype, "ik", imx is not None)
        if q is None:
            continue
        want = _ik_quantize(lib, qtype, x, imx, row_bytes)
        assert mismatched_rows(q(x, imx), want) == []
