"""ik_llama.cpp's IQ4_K, IQ5_K and IQ6_K: byte-exact against the golden vectors, against a scalar
line-by-line transliteration of the C (quantize_row_iq4_k_impl_bs16, quantize_row_iq5_k_impl,
quantize_row_iq6_k_impl, QHelper, best_index_iq{4,5,6}nl) on random blocks of varied scale with
and without an imatrix, the key tables against C's level function, and edge rows."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest

from qtool.quants.ik.iqk_k456 import (
    DEQUANTIZE,
    IQ4NL_INDEX,
    IQ5NL_INDEX,
    IQ6NL_INDEX,
    KINDS,
    QUANTIZE,
    best_index_c,
    level_index,
    level_values,
    luts,
)
from qtool.quants.types import get_type

from .refs import ik_source, why
from .vectors import expected, inputs, mismatched_rows

F = np.float32
TYPES = ["IQ4_K", "IQ5_K", "IQ6_K"]
ROW_BYTES = {"IQ4_K": 144, "IQ5_K": 176, "IQ6_K": 212}  # per 256 values
C_SOURCE = ik_source("ggml", "src", "iqk", "iqk_quantize.cpp") or Path("/nonexistent/QTOOL_IK_SRC")


# ---- golden vectors --------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_bytes(qtype: str, variant: str) -> None:
    x, imatrix, kinds = inputs("ik_llama")
    want = expected(qtype, "ik_llama")[f"q_{variant}"]
    got = QUANTIZE[qtype](x, imatrix if variant == "im" else None)
    assert got.shape == want.shape == (55, 4 * ROW_BYTES[qtype])
    bad = mismatched_rows(got, want)
    assert bad == [], f"{qtype} {variant}: rows {bad} ({[kinds[i] for i in bad]}) differ"


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_dequantize(qtype: str, variant: str) -> None:
    e = expected(qtype, "ik_llama")
    got = DEQUANTIZE[qtype](e[f"q_{variant}"], 1024)
    assert got.dtype == F and np.array_equal(got.view(np.uint32), e[f"deq_{variant}"].view(np.uint32))


def test_row_bytes_match_types() -> None:
    for qtype in TYPES:
        assert get_type(qtype).row_bytes(1024) == 4 * ROW_BYTES[qtype]


# ---- scalar transliteration of the C -----------------------------------------------------------------

def _bi(kind, x: F) -> int:
    """best_index_iq{4,5,6}nl(values, x), line by line (x86 (int): INT_MIN for NaN / >= 2^31)."""
    v = kind.values
    u = F(x - v[0]) if kind.sub_first else x
    ix = int(u) if u < 2.0 ** 31 else -(2 ** 31)
    if not kind.sub_first:
        ix -= int(v[0])
    if ix < 0 or ix >= kind.bound:
        return 0 if ix < 0 else v.size - 1
    e = int(kind.index[ix])
    if e < v.size:
        return e
    a = e - v.size
    return a if F(x - v[a]) < F(v[a + 1] - x) else a + 1


def _nearest_int(f: F) -> int:
    i = int(np.array([F(f) + F(12582912.0)], F).view(np.int32)[0])
    return (i & 0x007FFFFF) - 0x00400000


def _fp16(f: F) -> int:
    return int(np.array([f], F).astype(np.float16).view(np.uint16)[0])


def _qhelper(x: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    """QHelper::row_weights for one row."""
    w = imatrix.astype(F).copy()
    thr = F(16) * F(F(1e-9) * F(1e-9))
    for ib in range(x.size // 16):
        sw2 = sx2 = swx = F(0)
        for j in range(16 * ib, 16 * ib + 16):
            sw2 = F(sw2 + F(w[j] * w[j]))
            sx2 = F(sx2 + F(x[j] * x[j]))
            swx = F(swx + F(w[j] * abs(x[j])))
        if not (sw2 > thr and sx2 > thr and swx > thr):
            w[16 * ib:16 * ib + 16] = F(1e-9)
    return w


def _weights(xb: np.ndarray, qw: np.ndarray | None, sigma2: F, iq4: bool) -> list[F]:
    if qw is not None:
        return [F(qw[j] * np.sqrt(F(sigma2 + F(xb[j] * xb[j])))) for j in range(16)]
    if iq4:
        return [F(xb[j] * xb[j]) for j in range(16)]
    return [F(F(F(0.25) * sigma2) + F(xb[j] * xb[j])) for j in range(16)]


def _sums(kind, w: list[F], xb: np.ndarray, idv: F, both: bool = True) -> tuple[F, F, F, F]:
    spx = sp2 = smx = sm2 = F(0)
    for j in range(16):
        al = F(idv * xb[j])
        q = kind.values[_bi(kind, al)]
        spx = F(spx + F(F(w[j] * q) * xb[j]))
        sp2 = F(sp2 + F(F(w[j] * q) * q))
        if both:
            q = kind.values[_bi(kind, F(-al))]
            smx = F(smx + F(F(w[j] * q) * xb[j]))
            sm2 = F(sm2 + F(F(w[j] * q) * q))
    return spx, sp2, smx, sm2


def _block_scale(qtype: str, xb: np.ndarray, w: list[F], ntry: int, refine: bool) -> tuple[F, bool]:
    """The per-block search of quantize_row_iq{4,5,6}_k_impl -> (scales[ib], is_shifted)."""
    ku, ks = KINDS[qtype]
    amax = mx = F(0)
    for v in xb:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < F(1e-16):
        return F(0), False
    d = F(-mx / ku.values[0])
    spx, sp2, smx, sm2 = _sums(ku, w, xb, F(F(1) / d))
    d = F(spx / sp2)
    best = F(d * spx)
    if sm2 > 0 and F(smx * smx) > F(best * sm2):
        d = F(smx / sm2)
        best = F(d * smx)
    shifted = False
    for itry in range(-ntry, ntry + 1):
        for kind, sh in ((ku, False), (ks, True)):
            spx, sp2, smx, sm2 = _sums(kind, w, xb, F(F(F(itry) + kind.values[0]) / mx))
            if sp2 > 0 and F(spx * spx) > F(best * sp2):
                d = F(spx / sp2)
                best = F(d * spx)
                shifted = sh
            if sm2 > 0 and F(smx * smx) > F(best * sm2):
                d = F(smx / sm2)
                best = F(d * smx)
                shifted = sh
    if refine and d != 0:
        sx, s2, _, _ = _sums(ks if shifted else ku, w, xb, F(F(1) / d), both=False)
        if s2 > 0:
            d = F(sx / s2)
    return d, shifted


def _iq4_k_scalar(x: np.ndarray, qw: np.ndarray | None) -> bytes:
    """quantize_row_iq4_k_impl_bs16(256, 16, x, y, ..., iq4k_values, qw, 7)."""
    sigma2 = F(0)
    for v in x:
        sigma2 = F(sigma2 + F(v * v))
    sigma2 = F(sigma2 * F(2.0 / 256))
    scales, extra, max_scale, amax_scale = [], 0, F(0), F(0)
    for ib in range(16):
        xb = x[16 * ib:16 * ib + 16]
        w = _weights(xb, None if qw is None else qw[16 * ib:16 * ib + 16], sigma2, True)
        d, sh = _block_scale("IQ4_K", xb, w, 7, False)
        extra |= int(sh) << ib
        scales.append(d)
        if abs(d) > amax_scale:
            amax_scale, max_scale = abs(d), d
    d = F(-max_scale / F(32))
    dbits = _fp16(d)
    idd = F(F(1) / d) if d != 0 else F(0)
    sumqx = sumq2 = F(0)
    L = [0] * 256
    scales_l = [0] * 8
    scales_h = [0, 0]
    for ib in range(16):
        kind = KINDS["IQ4_K"][(extra >> ib) & 1]
        l = max(-32, min(31, _nearest_int(F(idd * scales[ib]))))
        dl = F(d * F(l))
        idl = F(F(1) / dl) if dl != 0 else F(0)
        xb = x[16 * ib:16 * ib + 16]
        w = _weights(xb, None if qw is None else qw[16 * ib:16 * ib + 16], sigma2, True)
        for j in range(16):
            L[16 * ib + j] = _bi(kind, F(idl * xb[j]))
            q = F(int(kind.values[L[16 * ib + j]]) * l)
            sumqx = F(sumqx + F(F(w[j] * q) * xb[j]))
            sumq2 = F(sumq2 + F(F(w[j] * q) * q))
        l += 32
        scales_l[ib // 2] |= (l & 0xF) << (4 * (ib % 2))
        scales_h[ib // 8] |= (l >> 4) << (2 * (ib % 8))
    if sumq2 > 0:
        dbits = _fp16(F(sumqx / sumq2))
    qs = [L[32 * i + j] | (L[32 * i + 16 + j] << 4) for i in range(8) for j in range(16)]
    return struct.pack("<HHHH", dbits, extra, *scales_h) + bytes(scales_l) + bytes(qs)


def _iq56_k_scalar(x: np.ndarray, qw: np.ndarray | None, six: bool) -> bytes:
    """quantize_row_iq5_k_impl / quantize_row_iq6_k_impl on one super-block."""
    qtype = "IQ6_K" if six else "IQ5_K"
    sumx2 = F(0)
    for v in x:
        sumx2 = F(sumx2 + F(v * v))
    sigma2 = F(F(F(2) * sumx2) / F(256))
    scales, extra, max_scale, max_abs = [], 0, F(0), F(0)
    for ib in range(16):
        xb = x[16 * ib:16 * ib + 16]
        w = _weights(xb, None if qw is None else qw[16 * ib:16 * ib + 16], sigma2, False)
        d, sh = _block_scale(qtype, xb, w, 5, True)
        scales.append(d)
        extra |= int(sh) << ib
        if abs(d) > max_abs:
            max_abs, max_scale = abs(d), d
    if not max_abs:
        return bytes(212 if six else 176)
    d = F(-max_scale / F(127 if six else 32))
    dbits = _fp16(d)
    idd = F(F(1) / d)
    sumqx = sumq2 = F(0)
    sc, scales_l, scales_h = [0] * 16, [0] * 8, [0] * 4
    qs, qh = [0] * 128, [0] * (64 if six else 32)
    for ib in range(16):
        lim = 127 if six else 32
        ls = max(-lim, min(lim if six else 31, _nearest_int(F(idd * scales[ib]))))
        if six:
            sc[ib] = ls
        else:
            scales_l[ib // 2] |= ((ls + 32) & 0xF) << (4 * (ib % 2))
            scales_h[ib // 4] |= ((ls + 32) >> 4) << (2 * (ib % 4))
        dl = F(d * F(ls))
        if dl == 0:
            continue
        kind = KINDS[qtype][(extra >> ib) & 1]
        xb = x[16 * ib:16 * ib + 16]
        w = _weights(xb, None if qw is None else qw[16 * ib:16 * ib + 16], sigma2, False)
        idl = F(F(1) / dl)
        ib32, off = ib // 2, 16 * (ib % 2)
        qs0 = 32 * (ib32 // 2) + off
        qh0 = (32 * (ib32 // 4) if six else 32 * (ib32 // 8)) + off
        for j in range(16):
            ibest = _bi(kind, F(idl * xb[j]))
            qs[qs0 + j] |= (ibest & 0xF) << (4 * (ib32 % 2))
            qh[qh0 + j] |= (ibest >> 4) << (2 * (ib32 % 4) if six else ib32 % 8)
            q = F(kind.values[ibest] * F(ls))
            sumqx = F(sumqx + F(F(w[j] * q) * xb[j]))
            sumq2 = F(sumq2 + F(F(w[j] * q) * q))
    if sumq2 > 0:
        dbits = _fp16(F(sumqx / sumq2))
    head = struct.pack("<HH", dbits, extra)
    if six:
        return head + np.array(sc, np.int8).tobytes() + bytes(qs) + bytes(qh)
    return head + bytes(scales_h) + bytes(scales_l) + bytes(qs) + bytes(qh)


def _scalar_row(qtype: str, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq{4,5,6}_k on one row, through the scalar port."""
    out = b""
    with np.errstate(all="ignore"):
        qw = None if imatrix is None else _qhelper(x, imatrix)
        for s in range(x.size // 256):
            xs = x[256 * s:256 * s + 256]
            qs = None if qw is None else qw[256 * s:256 * s + 256]
            out += _iq4_k_scalar(xs, qs) if qtype == "IQ4_K" else _iq56_k_scalar(xs, qs, qtype == "IQ6_K")
    return np.frombuffer(out, np.uint8)


def _random_rows(rng: np.random.Generator, nrows: int, n: int) -> np.ndarray:
    """Blocks of 16 of varied scale and kind: gaussian, heavy-tailed, integers, halves, sparse
    spikes, constants, zeros, below the 1e-16 threshold."""
    rows = np.empty((nrows, n), F)
    for r in range(nrows):
        for b in range(n // 16):
            kind = rng.integers(0, 9)
            s = 10.0 ** rng.uniform(-8, 4)
            if kind == 0:
                v = rng.standard_normal(16)
            elif kind == 1:
                v = rng.standard_t(2, 16)
            elif kind == 2:
                v = rng.integers(-4, 5, 16).astype(float)
            elif kind == 3:
                v = np.round(rng.standard_normal(16) * 6) / 2
            elif kind == 4:
                v = np.where(rng.random(16) < 0.8, 0.0, rng.standard_normal(16) * 10)
            elif kind == 5:
                v = np.full(16, rng.choice([-1.0, 1.0]))
            elif kind == 6:
                v, s = np.zeros(16), 1.0
            elif kind == 7:
                v, s = rng.standard_normal(16), 1e-18
            else:
                v = rng.uniform(-1, 1, 16) + rng.choice([-3.0, 3.0])
            rows[r, 16 * b:16 * b + 16] = v * s
    return rows


def _random_imatrix(rng: np.random.Generator, n: int) -> np.ndarray:
    im = rng.chisquare(2, n) * 10.0 ** rng.uniform(-2, 2, n)
    im[rng.random(n) < 0.1] = 0
    for b in rng.choice(n // 16, 3, replace=False):  # whole blocks below QHelper's threshold
        im[16 * b:16 * b + 16] = rng.choice([0.0, 1e-12])
    return im.astype(F)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("with_im", [False, True])
def test_vectorized_matches_scalar_c(qtype: str, with_im: bool) -> None:
    rng = np.random.default_rng(1000 + TYPES.index(qtype) * 2 + with_im)
    n = 512
    x = _random_rows(rng, 3 if qtype == "IQ4_K" else 4, n)  # 96 / 128 blocks of 16
    im = _random_imatrix(rng, n) if with_im else None
    got = QUANTIZE[qtype](x, im)
    for r in range(x.shape[0]):
        want = _scalar_row(qtype, x[r], im)
        assert np.array_equal(got[r], want), f"{qtype} row {r} differs from the scalar port"


@pytest.mark.parametrize("qtype", TYPES)
def test_single_superblock_rows_and_chunks(qtype: str) -> None:
    """n_per_row = 256 (one super-block per row: the lone-column summation paths) and more rows
    than one chunk: the same bytes as row by row and as the scalar port."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((140, 256)) * 10.0 ** rng.uniform(-3, 3, (140, 1))).astype(F)
    im = _random_imatrix(rng, 256)
    for imx in (None, im):
        got = QUANTIZE[qtype](x, imx)
        assert all(np.array_equal(got[r], QUANTIZE[qtype](x[r:r + 1], imx)[0]) for r in (0, 1, 127, 128, 139))
        assert np.array_equal(got[5], _scalar_row(qtype, x[5], imx))


# ---- the level function and its key tables ---------------------------------------------------------

def _probe_floats(rng: np.random.Generator) -> np.ndarray:
    """Floats around every midpoint / integer / half-integer of the level range (a few ulps either
    side), tiny and huge magnitudes, random bit patterns, +-0, +-inf."""
    near = []
    for m in np.arange(-300, 301) / 2:
        b = int(np.array([m], F).view(np.int32)[0])
        near.append(np.arange(b - 6, b + 7))
    bits = np.concatenate(near + [rng.integers(0, 1 << 32, 20000)]).astype(np.uint32)
    x = np.concatenate([bits.view(F), np.array([0.0, -0.0, np.inf, -np.inf, 2.0 ** 31, 2.0 ** -149,
                                                -0.5 - 2.0 ** -22, -1.5 - 2.0 ** -23, -2.0 ** -25], F)])
    return x[~np.isnan(x)]


@pytest.mark.parametrize("qtype", TYPES)
def test_key_tables_equal_c_level_function(qtype: str) -> None:
    x = _probe_floats(np.random.default_rng(3))
    for kind, lut in zip(KINDS[qtype], luts(qtype), strict=True):
        want = best_index_c(x, kind)
        assert np.array_equal(level_index(x, lut), want)
        q = level_values(x.copy(), lut)
        amb = np.isnan(q)  # the few straddling keys: recomputed by the callers
        assert amb.mean() < 0.01 and np.array_equal(q[~amb], kind.values[want[~amb]])
        sample = x[:: max(1, x.size // 3000)]
        assert [_bi(kind, v) for v in sample] == list(best_index_c(sample, kind))


@pytest.mark.skipif(not C_SOURCE.exists(), reason=why("QTOOL_IK_SRC"))
def test_index_tables_equal_c_source() -> None:
    src = C_SOURCE.read_text()
    for name, table in (("iq4nl_index", IQ4NL_INDEX), ("iq5nl_index", IQ5NL_INDEX), ("iq6nl_index", IQ6NL_INDEX)):
        body = re.search(name + r"\[\d+\]\s*=\s*\{(.*?)\};", src, re.S).group(1)
        assert [int(v) for v in body.split(",") if v.strip()] == table.tolist()


# ---- edge rows ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", TYPES)
def test_edge_rows_round_trip(qtype: str) -> None:
    n = 1024
    rng = np.random.default_rng(11)
    g = rng.standard_normal(n).astype(F)
    rows = np.stack([np.zeros(n, F), np.full(n, 1e-30, F), g * F(1e-30), g * F(3e4), np.full(n, 3e4, F),
                     np.full(n, -0.37, F), g, np.where(np.arange(n) % 2 == 0, F(1), F(-1))]).astype(F)
    for im in (None, np.abs(g) + F(0.1)):
        q = QUANTIZE[qtype](rows, im)
        assert q.shape == (rows.shape[0], 4 * ROW_BYTES[qtype]) and q.dtype == np.uint8
        y = DEQUANTIZE[qtype](q, n)
        assert np.isfinite(y).all()
        assert not y[:3].any()  # zeros and everything below 1e-16 quantize to zero
        tol = {"IQ4_K": 0.12, "IQ5_K": 0.06, "IQ6_K": 0.04}[qtype]
        for r in range(3, rows.shape[0]):
            err = np.sqrt(np.mean((y[r] - rows[r]) ** 2)) / np.sqrt(np.mean(rows[r] ** 2))
            assert err < tol, (r, err)


@pytest.mark.parametrize("qtype", TYPES)
def test_non_finite_rows_match_scalar_c(qtype: str) -> None:
    """NaN (also with a payload that shares -0.0's key) and inf inputs: whatever C makes of them.
    (Rows mixing NaNs of different payloads are left out: which payload an operation keeps
    depends on the compiled operand order, so their bytes are not defined by the source.)"""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 256)).astype(F)
    x[0, 17] = np.nan
    x[1, 40] = np.array([0x7FFF1234], np.uint32).view(F)[0]
    x[2, 99] = np.inf
    for imx in (None, _random_imatrix(rng, 256)):
        got = QUANTIZE[qtype](x, imx)
        for r in range(3):
            assert np.array_equal(got[r], _scalar_row(qtype, x[r], imx)), r


# ---- the fast search (shared ids, record gathers, einsum sums, C's choice on views) -----------------

def _reference_sums(qtype: str, xt: np.ndarray, wt: np.ndarray, mx: np.ndarray, id0: np.ndarray, plan
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate's (sumqx, sumq2) (ncand, nb) in C's order, from C's level function (best_index_c)
    and sums accumulated j by j from +0."""
    ids = np.empty((plan.nums.size + 1, xt.shape[1]), F)
    ids[0] = id0
    ids[1:] = plan.nums[:, None] / mx
    sx = np.zeros((plan.ncand, xt.shape[1]), F)
    s2 = np.zeros((plan.ncand, xt.shape[1]), F)
    for c in range(plan.ncand):
        al = ids[plan.crow[c]] * xt
        kind = KINDS[qtype][plan.ckind[c]]
        q = kind.values[best_index_c(-al if plan.cneg[c] else al, kind)]
        for j in range(16):
            wq = wt[j] * q[j]
            sx[c] += wq * xt[j]
            s2[c] += wq * q[j]
    return sx, s2


def _search_inputs(qtype: str, seed: int, with_im: bool) -> tuple[np.ndarray, np.ndarray]:
    """Blocks (16, nb) of varied kinds (see _random_rows) plus gaussian and half-integer ones (their
    al = id*x hits level midpoints exactly), and their weights."""
    from qtool.quants.ik import iqk_k456 as mod

    rng = np.random.default_rng(seed)
    x = np.concatenate([_random_rows(rng, 2, 1024).ravel(), rng.standard_normal(16 * 304).astype(F),
                        (np.round(rng.standard_normal(16 * 304) * 4) / 2).astype(F)])
    x = x.reshape(-1, QK_K)
    xt, qwt, sig, _ = mod._prepare(x, _random_imatrix(rng, QK_K) if with_im else None, qtype == "IQ4_K")
    return xt, mod._block_weights(xt, qwt, sig, qtype == "IQ4_K")


QK_K = 256


@pytest.mark.parametrize("qtype", TYPES)
def test_fast_sums_equal_c_levels_and_sums(qtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """_fast_sums (first-float records, chance hits, straddling keys, partial sub-batches, and the
    multiply + reduce fallback) gives every candidate C's sums bit for bit; _choose picks C's winner."""
    from qtool.quants.ik import iqk_k456 as mod
    from qtool.quants.numeric import absmax_t

    ntry = 7 if qtype == "IQ4_K" else 5
    plan = mod._fast_plan(qtype, ntry)
    for seed, (sub, ein) in enumerate(((256, True), (37, True), (64, False))):
        xt, wt = _search_inputs(qtype, 40 + seed, seed == 1)
        amax, mx = absmax_t(xt)
        mx = np.where(amax < F(1e-16), F(1), mx)
        id0 = F(1) / (-mx / KINDS[qtype][0].values[0])
        monkeypatch.setattr(mod, "_FAST_SUB", sub)
        monkeypatch.setattr(mod, "einsum_sums_ok", lambda e=ein: e)
        groups = mod._fast_sums(xt, wt, mx, id0, plan, qtype)
        nb = xt.shape[1]
        sx = np.empty((plan.ncand, nb), F)
        s2 = np.empty((plan.ncand, nb), F)
        for rx, r2, cmap in groups:
            r = cmap.shape[1]
            sx[cmap.T] = rx.reshape(-1, nb, r).transpose(2, 0, 1)
            s2[cmap.T] = r2.reshape(-1, nb, r).transpose(2, 0, 1)
        with np.errstate(all="ignore"):
            want_x, want_2 = _reference_sums(qtype, xt, wt, mx, id0, plan)
        same = (sx.view(np.uint32) == want_x.view(np.uint32)) & (s2.view(np.uint32) == want_2.view(np.uint32))
        assert same.all(), f"{qtype}: {(~same).sum()} candidate sums differ"
        last, d = mod._choose(groups, nb)
        want_last = np.zeros(nb, np.intp)
        with np.errstate(all="ignore"):
            best = want_x[0] / want_2[0] * want_x[0]
            for c in range(1, plan.ncand):  # C's scan
                take = (want_2[c] > 0) & (want_x[c] * want_x[c] > best * want_2[c])
                best = np.where(take, want_x[c] / want_2[c] * want_x[c], best)
                want_last = np.where(take, c, want_last)
            want_d = want_x[want_last, np.arange(nb)] / want_2[want_last, np.arange(nb)]
        assert np.array_equal(last, want_last)
        assert np.array_equal(d.view(np.uint32), want_d.view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES)
def test_fast_search_equals_reference_search(qtype: str) -> None:
    """_search with the fast sums and with the per-table reference sums: the same scales and tables."""
    from qtool.quants.ik import iqk_k456 as mod

    ntry = 7 if qtype == "IQ4_K" else 5
    xt, wt = _search_inputs(qtype, 77, True)
    with np.errstate(all="ignore"):
        d1, s1 = mod._search(xt, wt, qtype, ntry, qtype != "IQ4_K", False, fast=True)
        d2, s2 = mod._search(xt, wt, qtype, ntry, qtype != "IQ4_K", False, fast=False)
    assert np.array_equal(d1.view(np.uint32), d2.view(np.uint32)) and np.array_equal(s1, s2)


def test_loop_sums_in_order_on_fancy_indexed_columns() -> None:
    """_loop_sums adds j by j whatever the memory order: an F-ordered (16, n) array, as xt[:, cols]
    gives, is what numpy's reduce would sum pairwise (the straddling-key redo path passes those)."""
    from qtool.quants.ik import iqk_k456 as mod

    rng = np.random.default_rng(8)
    x = (rng.standard_normal((16, 64)) * np.exp(rng.uniform(-6, 6, (16, 64)))).astype(F)
    cols = rng.integers(0, 64, 5)
    a, q = x[:, cols], np.ones((16, cols.size), F)
    assert not a.flags.c_contiguous
    sx, s2 = mod._loop_sums(a, np.ones_like(a), q)
    want = np.zeros(cols.size, F)
    for j in range(16):
        want += a[j]
    assert np.array_equal(sx.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(s2.view(np.uint32), want.view(np.uint32))
