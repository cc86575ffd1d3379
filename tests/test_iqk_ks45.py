"""ik_llama.cpp's IQ4_KS, IQ5_KS and IQ4_KSS (qtool/quants/ik/iq45_ks.py, iq4_kss.py).

- Golden vectors: every row of ik_llama.cpp's quantize (with and without imatrix) and its
  dequantization, byte for byte.
- Scalar transliterations of the C (quantize_row_iq4_k_impl_bs128, quantize_row_iq5_ks_impl,
  quantize_row_iq4_kss_impl with prune_iq4ks, QHelper, best_index_iq4nl / best_index_iq5nl), one
  element at a time in float32, against the vectorized kernels on random rows of varied scale.
- The level tables: the fast cell tables and the exact ones against C's best_index on many values.
- Edge rows (zeros, 1e-30, 3e4, constants) on the vectorized path.
"""

from __future__ import annotations

import numpy as np
import pytest

from qtool.quants.ik import iq4_kss, iq45_ks
from qtool.quants.ik.iq4_kss import SCRAMBLE_TABLE, dequantize_iq4_kss, quantize_iq4_kss
from qtool.quants.ik.iq45_ks import (
    IQ4NL_INDEX,
    IQ5NL_INDEX,
    BestIndex,
    block_weights_t,
    dequantize_iq4_ks,
    dequantize_iq5_ks,
    quantize_iq4_ks,
    quantize_iq5_ks,
)
from qtool.quants.ik.iqk_tables import IQ4K_VALUES, IQ5NL_VALUES

from .vectors import expected, inputs, mismatched_rows

F = np.float32
QUANTIZE = {"IQ4_KS": quantize_iq4_ks, "IQ5_KS": quantize_iq5_ks, "IQ4_KSS": quantize_iq4_kss}
DEQUANTIZE = {"IQ4_KS": dequantize_iq4_ks, "IQ5_KS": dequantize_iq5_ks, "IQ4_KSS": dequantize_iq4_kss}
ROW_BYTES = {"IQ4_KS": 4 + 136 * 4, "IQ5_KS": 4 + 168 * 4, "IQ4_KSS": 4 + 128 * 4}  # n = 1024


# --- golden vectors -------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", list(QUANTIZE))
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden(qtype: str, variant: str) -> None:
    x, imatrix, kinds = inputs("ik_llama")
    want = expected(qtype, "ik_llama")
    got = QUANTIZE[qtype](x, imatrix if variant == "im" else None)
    assert got.shape == (55, ROW_BYTES[qtype]) == want[f"q_{variant}"].shape
    bad = mismatched_rows(got, want[f"q_{variant}"])
    assert bad == [], f"{qtype} {variant}: rows {bad} ({[kinds[i] for i in bad]}) differ"
    deq = DEQUANTIZE[qtype](want[f"q_{variant}"], x.shape[1])
    assert deq.dtype == F
    assert np.array_equal(deq.view(np.uint32), want[f"deq_{variant}"].view(np.uint32))


# --- scalar transliterations of the C -----------------------------------------------------------

def _nearest_int(v: np.float32) -> int:
    """ggml nearest_int: the float32 sum with 1.5*2^23, mantissa bits."""
    i = int(np.array(v + F(12582912.0), F).view(np.int32))
    return (i & 0x007FFFFF) - 0x00400000


def _best_index(values: list[int], index: np.ndarray, limit: int, x: np.float32) -> int:
    """best_index_iq4nl / best_index_iq5nl; (int)x of NaN or |x| >= 2^31 is INT_MIN on x86."""
    n = len(values)
    xi = int(x) if np.isfinite(x) and abs(float(x)) < 2.0**31 else -(2**31)
    ix = xi - values[0]
    if ix < 0 or ix >= limit:
        return 0 if ix < 0 else n - 1
    t = int(index[ix])
    if t < n:
        return t
    i = t - n
    return i if x - F(values[i]) < F(values[i + 1]) - x else i + 1


def _bi4(values: list[int], x: np.float32) -> int:
    return _best_index(values, IQ4NL_INDEX, 241, x)


def _bi5(values: list[int], x: np.float32) -> int:
    return _best_index(values, IQ5NL_INDEX, 247, x)


def _row_weights(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray | None:
    """QHelper::row_weights with block size 32."""
    if imatrix is None:
        return None
    eps = F(1e-9)
    thr = F(32) * (eps * eps)
    w = imatrix.astype(F).copy()
    for ib in range(x.size // 32):
        sw2 = sx2 = swx = F(0)
        for j in range(ib * 32, ib * 32 + 32):
            sw2 += w[j] * w[j]
            sx2 += x[j] * x[j]
            swx += w[j] * abs(x[j])
        if not (sw2 > thr and sx2 > thr and swx > thr):
            w[ib * 32:ib * 32 + 32] = eps
    return w


def _weights(xbl: np.ndarray, qw: np.ndarray | None, ib: int, sigma2: np.float32) -> list[np.float32]:
    xb = xbl[ib * 32:ib * 32 + 32]
    if qw is None:
        return [xb[j] * xb[j] for j in range(32)]
    return [qw[ib * 32 + j] * np.sqrt(sigma2 + xb[j] * xb[j]) for j in range(32)]


def _sigma2(xbl: np.ndarray) -> np.float32:
    s = F(0)
    for j in range(256):
        s += xbl[j] * xbl[j]
    return s * (F(2) / F(256))


def _amax_max(xb: np.ndarray) -> tuple[np.float32, np.float32]:
    amax = mx = F(0)
    for v in xb:
        if abs(v) > amax:
            amax, mx = abs(v), v
    return amax, mx


def scalar_ks(x: np.ndarray, imatrix: np.ndarray | None, kind: str) -> bytes:
    """quantize_iq4_ks / quantize_iq5_ks of one row, element by element."""
    is5 = kind == "IQ5_KS"
    allv = [int(v) for v in (IQ5NL_VALUES if is5 else IQ4K_VALUES)]
    nl = 32 if is5 else 16
    values, shifted_values = allv[:nl], allv[nl:]
    bi = _bi5 if is5 else _bi4
    ntry = 5 if is5 else 7
    qw_row = _row_weights(x, imatrix)
    nsb = x.size // 256
    scales = [F(0)] * (nsb * 8)
    extra = [[0] * 8 for _ in range(nsb)]
    amax_scale = F(0)
    for ibl in range(nsb):
        xbl = x[ibl * 256:(ibl + 1) * 256]
        qw = None if qw_row is None else qw_row[ibl * 256:(ibl + 1) * 256]
        sigma2 = _sigma2(xbl)
        for ib in range(8):
            xb = xbl[ib * 32:ib * 32 + 32]
            w = _weights(xbl, qw, ib, sigma2)
            amax, mx = _amax_max(xb)
            if amax < F(1e-16):
                scales[ibl * 8 + ib] = F(0)
                continue

            def sums(vals: list[int], id_: np.float32, xb: np.ndarray = xb, w: list = w) -> tuple[np.float32, ...]:
                sp = s2p = sm = s2m = F(0)
                for j in range(32):
                    al = id_ * xb[j]
                    q = F(vals[bi(vals, al)])
                    sp += w[j] * q * xb[j]
                    s2p += w[j] * q * q
                    q = F(vals[bi(vals, -al)])
                    sm += w[j] * q * xb[j]
                    s2m += w[j] * q * q
                return sp, s2p, sm, s2m

            d = -mx / F(values[0])
            sp, s2p, sm, s2m = sums(values, F(1) / d)
            d = sp / s2p
            best = d * sp
            is_shifted = False
            if s2m > 0 and sm * sm > best * s2m:
                d = sm / s2m
                best = d * sm
            for itry in range(-ntry, ntry + 1):
                for vals, flag in ((values, False), (shifted_values, True)):
                    sp, s2p, sm, s2m = sums(vals, F(itry + vals[0]) / mx)
                    if s2p > 0 and sp * sp > best * s2p:
                        d = sp / s2p
                        best = d * sp
                        is_shifted = flag
                    if s2m > 0 and sm * sm > best * s2m:
                        d = sm / s2m
                        best = d * sm
                        is_shifted = flag
            extra[ibl][ib] = int(is_shifted)
            scales[ibl * 8 + ib] = d
            if amax_scale < abs(d):  # std::max(amax_scale, |d|): a NaN d keeps amax_scale
                amax_scale = abs(d)
    d = amax_scale / F(127)
    out = bytearray(np.array([d], F).tobytes())
    blocks = []
    qs_all = []
    if d:
        id_ = F(1) / d
        sumqx = sumq2 = F(0)
        for ibl in range(nsb):
            xbl = x[ibl * 256:(ibl + 1) * 256]
            qw = None if qw_row is None else qw_row[ibl * 256:(ibl + 1) * 256]
            sigma2 = _sigma2(xbl)
            idx_sb = []
            for ib in range(8):
                bv = shifted_values if extra[ibl][ib] else values
                lv = _nearest_int(F(0.5) * (id_ * scales[ibl * 8 + ib] + F(127)))
                lv = max(0, min(127, lv)) << 1
                extra[ibl][ib] |= lv
                lv -= 127
                dl = d * F(lv)
                idl = F(1) / dl if dl else F(0)
                xb = xbl[ib * 32:ib * 32 + 32]
                w = _weights(xbl, qw, ib, sigma2)
                idx = [bi(bv, idl * xb[j]) for j in range(32)]
                idx_sb.append(idx)
                if is5:
                    for j in range(32):
                        q = F(bv[idx[j]] * lv)
                        sumqx += w[j] * q * xb[j]
                        sumq2 += w[j] * q * q
                else:
                    for j in range(16):
                        q1, q2 = F(bv[idx[j]] * lv), F(bv[idx[j + 16]] * lv)
                        sumqx += w[j] * q1 * xb[j] + w[j + 16] * q2 * xb[j + 16]
                        sumq2 += w[j] * q1 * q1 + w[j + 16] * q2 * q2
            qs_all.append(idx_sb)
        if sumq2 > 0:
            out[:4] = np.array([sumqx / sumq2], F).tobytes()
    for ibl in range(nsb):
        blk = bytearray(extra[ibl])
        if not d:
            blocks.append(blk + bytes(128 + (32 if is5 else 0)))
            continue
        idx_sb = qs_all[ibl]
        if is5:
            qs = bytearray(128)
            qh = bytearray(32)
            for ib in range(8):
                for j in range(32):
                    qs[32 * (ib // 2) + j] |= (idx_sb[ib][j] & 15) << (4 * (ib % 2))
                    qh[j] |= (idx_sb[ib][j] >> 4) << ib
            blocks.append(blk + qs + qh)
        else:
            qs = bytearray(idx_sb[ib][j] | (idx_sb[ib][j + 16] << 4) for ib in range(8) for j in range(16))
            blocks.append(blk + qs)
    return bytes(out) + b"".join(blocks)


def _popcount(v: int) -> int:
    return bin(v).count("1")


def _prune(v: int, values: list[int], xv: list[np.float32], wv: list[np.float32], dl: np.float32) -> int:
    """prune_iq4ks: make the popcount of the 16-bit group code even."""
    if _popcount(v) % 2 == 0:
        return v
    best_score = F(np.finfo(F).max)
    q4 = [(v >> 4 * j) & 15 for j in range(4)]
    jbest, bestq = -1, 0
    for j in range(4):
        q = q4[j]
        pc = _popcount(q)
        diff0 = dl * F(int(IQ4K_VALUES[q])) - xv[j]
        for qq in range(max(q - 2, 0), min(q + 2, 15) + 1):
            if qq == q or abs(_popcount(qq) - pc) % 2 == 0:
                continue
            diff1 = dl * F(values[qq]) - xv[j]
            score = wv[j] * (diff1 * diff1 - diff0 * diff0)
            if score < best_score:
                best_score, jbest, bestq = score, j, qq
    assert jbest >= 0
    q4[jbest] = bestq
    return q4[0] | q4[1] << 4 | q4[2] << 8 | q4[3] << 12


def _scramble(v: int) -> int:
    """scramble_table()[v]: the j < 2^15 with j ^ (j << 1) == v | parity(v) << 15 (searched)."""
    val = v | ((_popcount(v) % 2) << 15)
    j = 0
    for b in range(16):  # bit b of j: bit b of val XOR bit b-1 of j
        j |= (((val >> b) ^ (j >> (b - 1) if b else 0)) & 1) << b
    assert (j ^ (j << 1)) & 0xFFFF == val and j < 1 << 15
    return j


def scalar_kss(x: np.ndarray, imatrix: np.ndarray | None) -> bytes:
    """quantize_iq4_kss of one row, element by element."""
    allv = [int(v) for v in IQ4K_VALUES]
    values, shifted_values = allv[:16], allv[16:]
    qw_row = _row_weights(x, imatrix)
    nsb = x.size // 256
    scales = [F(0)] * (nsb * 8)
    amax_scale = F(0)

    def groups(xb: np.ndarray, w: list[np.float32]) -> list[tuple[list[np.float32], list[np.float32]]]:
        order = [(2 * k, 2 * k + 16, 2 * k + 1, 2 * k + 17) for k in range(8)]
        return [([xb[i] for i in o], [w[i] for i in o]) for o in order]

    for ibl in range(nsb):
        xbl = x[ibl * 256:(ibl + 1) * 256]
        qw = None if qw_row is None else qw_row[ibl * 256:(ibl + 1) * 256]
        sigma2 = _sigma2(xbl)
        for ib in range(8):
            xb = xbl[ib * 32:ib * 32 + 32]
            w = _weights(xbl, qw, ib, sigma2)
            amax, mx = _amax_max(xb)
            if amax < F(1e-16):
                scales[ibl * 8 + ib] = F(0)
                continue
            best = F(0)
            d = -mx / F(values[0])
            gs = groups(xb, w)
            for itry in range(-7, 8):
                for vals in (values, shifted_values):
                    id_ = F(itry + vals[0]) / mx
                    this_d = F(1) / id_
                    sp = s2p = sm = s2m = F(0)
                    for xv, wv in gs:
                        vp = vm = 0
                        for j in range(4):
                            al = id_ * xv[j]
                            vp |= _bi4(vals, al) << 4 * j
                            vm |= _bi4(vals, -al) << 4 * j
                        vp = _prune(vp, vals, xv, wv, this_d)
                        vm = _prune(vm, vals, xv, wv, this_d)
                        for j in range(4):
                            q = F(vals[(vp >> 4 * j) & 15])
                            sp += wv[j] * q * xv[j]
                            s2p += wv[j] * q * q
                            q = F(vals[(vm >> 4 * j) & 15])
                            sm += wv[j] * q * xv[j]
                            s2m += wv[j] * q * q
                    if s2p > 0 and sp * sp > best * s2p:
                        d = sp / s2p
                        best = d * sp
                    if s2m > 0 and sm * sm > best * s2m:
                        d = sm / s2m
                        best = d * sm
            scales[ibl * 8 + ib] = d
            if amax_scale < abs(d):
                amax_scale = abs(d)
    d = amax_scale / F(127)
    if not d:
        return np.array([d], F).tobytes() + bytes(128 * nsb)
    id_ = F(1) / d
    sumqx = sumq2 = F(0)
    q16: list[int] = []
    for ibl in range(nsb):
        xbl = x[ibl * 256:(ibl + 1) * 256]
        qw = None if qw_row is None else qw_row[ibl * 256:(ibl + 1) * 256]
        sigma2 = _sigma2(xbl)
        for ib in range(8):
            xb = xbl[ib * 32:ib * 32 + 32]
            w = _weights(xbl, qw, ib, sigma2)
            lv = _nearest_int(F(0.5) * (id_ * scales[ibl * 8 + ib] + F(127)))
            lv = (max(0, min(127, lv)) << 1) - 127
            dl = d * F(lv)
            idl = F(1) / dl
            mse_p = mse_m = F(0)
            vps, vms = [], []
            gs = groups(xb, w)
            for xv, wv in gs:
                vp = vm = 0
                for j in range(4):
                    al = idl * xv[j]
                    vp |= _bi4(values, al) << 4 * j
                    vm |= _bi4(shifted_values, al) << 4 * j
                vp = _prune(vp, values, xv, wv, dl)
                vm = _prune(vm, shifted_values, xv, wv, dl)
                for j in range(4):
                    q = F(values[(vp >> 4 * j) & 15])
                    mse_p += wv[j] * (xv[j] - dl * q) * (xv[j] - dl * q)
                    q = F(shifted_values[(vm >> 4 * j) & 15])
                    mse_m += wv[j] * (xv[j] - dl * q) * (xv[j] - dl * q)
                vps.append(vp)
                vms.append(vm)
            use_m = mse_m < mse_p
            v, bv = (vms, shifted_values) if use_m else (vps, values)
            for k, (xv, wv) in enumerate(gs):
                for j in range(4):
                    q = F(bv[(v[k] >> 4 * j) & 15] * lv)
                    sumqx += wv[j] * q * xv[j]
                    sumq2 += wv[j] * q * q
            lb = (lv + 127) | int(use_m)
            q16 += [(_scramble(v[k] & 0x7FFF) << 1) | ((lb >> k) & 1) for k in range(8)]
    if sumq2 > 0:
        d = sumqx / sumq2 * F(1.01)
    return np.array([d], F).tobytes() + np.array(q16, "<u2").tobytes()


def _random_rows(seed: int, nrows: int, n: int = 256) -> np.ndarray:
    """Rows of varied kind and scale (gaussian, heavy tails, sparse, one-signed, rounded)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(nrows):
        s = 10.0 ** rng.uniform(-7, 4)
        kind = i % 5
        if kind == 0:
            r = rng.standard_normal(n)
        elif kind == 1:
            r = rng.standard_t(2, n)
        elif kind == 2:
            r = rng.standard_normal(n) * (rng.uniform(size=n) < 0.15)
        elif kind == 3:
            r = np.abs(rng.standard_normal(n))
        else:
            r = np.round(rng.standard_normal(n) * 3)
        rows.append(r * s)
    return np.array(rows, F)


def _imatrix(seed: int, n: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    im = rng.chisquare(1, n) * (rng.uniform(size=n) < 0.9)
    im[64:96] = 0  # a block QHelper replaces by 1e-9
    return im.astype(F)


@pytest.mark.parametrize("qtype, nrows", [("IQ4_KS", 16), ("IQ5_KS", 16), ("IQ4_KSS", 8)])
@pytest.mark.parametrize("with_im", [False, True])
def test_scalar_transliteration(qtype: str, nrows: int, with_im: bool) -> None:
    """The vectorized kernel against the C transliterated element by element, on random rows of
    varied scale (8 blocks of 32 per row)."""
    x = _random_rows(11 + nrows + with_im, nrows)
    im = _imatrix(5) if with_im else None
    got = QUANTIZE[qtype](x, im)
    with np.errstate(all="ignore"):
        for i in range(nrows):
            want = scalar_kss(x[i], im) if qtype == "IQ4_KSS" else scalar_ks(x[i], im, qtype)
            assert got[i].tobytes() == want, f"{qtype} row {i}"


# --- level tables ---------------------------------------------------------------------------------

TABLES = [
    (IQ4K_VALUES[:16], IQ4NL_INDEX, 241, _bi4),
    (IQ4K_VALUES[16:], IQ4NL_INDEX, 241, _bi4),
    (IQ5NL_VALUES[:32], IQ5NL_INDEX, 247, _bi5),
    (IQ5NL_VALUES[32:], IQ5NL_INDEX, 247, _bi5),
]


@pytest.mark.parametrize("t", range(4))
def test_best_index_tables(t: int) -> None:
    """BestIndex (exact tables and fast cell tables) against C's best_index on random values, a
    grid of 1/128 steps, integers, the flip points and their neighbours, huge values and NaN."""
    values, index, limit, ref = TABLES[t]
    bi = BestIndex(values, index, limit)
    vals = [int(v) for v in values]
    rng = np.random.default_rng(t)
    flips = np.unique(bi.thr[np.isfinite(bi.thr)])
    a = np.concatenate([(rng.standard_normal(3000) * 60).astype(F), np.arange(-140, 140, 1 / 128, dtype=F)[::5],
                        np.arange(-140, 141).astype(F), flips, np.nextafter(flips, F(-np.inf)),
                        np.nextafter(flips, F(np.inf)), np.array([3e9, -3e9, 1e6, -1e6, 0.0, -0.0], F)])
    want = np.array([ref(vals, v) for v in a])
    want_m = np.array([ref(vals, -v) for v in a])
    assert np.array_equal(bi(a), want)
    assert bi(np.array([np.nan, np.inf, -np.inf], F)).tolist() == [0, 0, 0]  # (int) gives INT_MIN
    small = np.abs(a) < 200
    kp, km = bi.cell_keys(a[small] * F(128))
    ip, im = bi.i_p[kp], bi.i_m[km]
    assert ((ip == want[small]) | (ip == 255)).all()
    assert ((im == want_m[small]) | (im == 255)).all()
    assert (bi.i_p == 255).sum() <= 2  # unresolved cells are rare (flip points off the 1/128 grid)


@pytest.mark.parametrize("qtype", list(QUANTIZE))
def test_fast_search_matches_exact(qtype: str) -> None:
    """Pass 1 with the fast cell tables equals the exact tables on every block it calls decided,
    and leaves few undecided (those go to the exact search)."""
    x = _random_rows(21, 8, 4096)
    xt = np.ascontiguousarray(x.reshape(-1, 32).T)
    wt = block_weights_t(xt, _imatrix(2, 4096), x)
    with np.errstate(all="ignore"):
        if qtype == "IQ4_KSS":
            fast, exact = iq4_kss.scale_search_t(xt, wt), iq4_kss.exact_search_t(xt, wt)
        else:
            t = (iq45_ks.IQ5_BI, iq45_ks.IQ5_BI_SHIFTED, 5) if qtype == "IQ5_KS" else \
                (iq45_ks.IQ4_BI, iq45_ks.IQ4_BI_SHIFTED, 7)
            fast, exact = iq45_ks.scale_search_t(xt, wt, *t), iq45_ks.exact_search_t(xt, wt, *t)
    ok = ~fast[2]
    assert ok.mean() > 0.9
    assert np.array_equal(fast[0][ok].view(np.uint32), exact[0][ok].view(np.uint32))
    assert np.array_equal(fast[1][ok], exact[1][ok])


def test_scramble_table() -> None:
    i = np.arange(1 << 15)
    sample = list(range(0, 1 << 15, 97)) + [0, 1, 0x7FFF]
    assert [int(SCRAMBLE_TABLE[v]) for v in sample] == [_scramble(v) for v in sample]
    j = SCRAMBLE_TABLE.astype(np.int64)
    par = np.array([bin(v).count("1") & 1 for v in range(1 << 15)])
    assert np.array_equal((j ^ (j << 1)) & 0xFFFF, i | (par << 15))


# --- edge rows ------------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", list(QUANTIZE))
def test_edge_rows(qtype: str) -> None:
    n = 512
    rows = np.array([np.zeros(n), np.full(n, 1e-30), np.full(n, 3e4), np.full(n, -3e4), np.full(n, 0.7),
                     np.where(np.arange(n) % 2, 3e4, -1e-3), np.r_[np.zeros(256), np.ones(256)]], F)
    for im in (None, _imatrix(1, n)):
        q = QUANTIZE[qtype](rows, im)
        assert q.shape == (rows.shape[0], 4 + n // 256 * (ROW_BYTES[qtype] - 4) // 4)
        y = DEQUANTIZE[qtype](q, n)
        assert np.isfinite(y).all()
        assert not y[:2].any()  # zeros and 1e-30 (below the 1e-16 block threshold) give zeros
        for r in range(2, rows.shape[0]):
            err = np.abs(y[r] - rows[r]).max()
            assert err <= 0.15 * np.abs(rows[r]).max(), (qtype, r, err)
        # one row at a time (a single column of sums) gives the same bytes
        assert all(np.array_equal(QUANTIZE[qtype](rows[r:r + 1], im)[0], q[r]) for r in range(rows.shape[0]))


@pytest.mark.parametrize("qtype, bound", [("IQ4_KS", 0.09), ("IQ5_KS", 0.045), ("IQ4_KSS", 0.13)])
def test_roundtrip_gaussian(qtype: str, bound: float) -> None:
    """Relative RMS error of gaussian rows (measured 0.07-0.078, 0.034-0.038, 0.096-0.114)."""
    x = np.random.default_rng(3).standard_normal((64, 1024)).astype(F)
    y = DEQUANTIZE[qtype](QUANTIZE[qtype](x, None), 1024)
    rel = np.sqrt(((y - x) ** 2).mean(axis=1)) / np.sqrt((x**2).mean(axis=1))
    assert (rel < bound).all()
    with pytest.raises(ValueError):
        QUANTIZE[qtype](np.zeros((1, 100), F), None)
