"""IQ2_K and IQ3_K (ik_llama.cpp): byte-exact against ik_llama.cpp's golden vectors, against straight
scalar transliterations of the C (quantize_row_iq2_k_impl / quantize_row_iq3_k_impl, run per block on
random blocks of varied scale, with and without an imatrix), the pruned IQ2_K search against the full
one, the level search against C's best_index functions, and edge rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qtool.quants.ik import iq2_k, iq3_k
from qtool.quants.ik.iqk_tables import IQ2NL_VALUES, IQ3NL_VALUES

from .vectors import expected, inputs, mismatched_rows

F = np.float32
KERNELS = {"IQ2_K": (iq2_k.quantize_iq2_k, iq2_k.dequantize_iq2_k, 76),
           "IQ3_K": (iq3_k.quantize_iq3_k, iq3_k.dequantize_iq3_k, 110)}


# --- golden vectors ------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", sorted(KERNELS))
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_quantize(qtype: str, variant: str) -> None:
    x, imatrix, kinds = inputs("ik_llama")
    want = expected(qtype, "ik_llama")[f"q_{variant}"]
    got = KERNELS[qtype][0](x, imatrix if variant == "im" else None)
    assert got.shape == want.shape and got.dtype == np.uint8
    bad = mismatched_rows(got, want)
    assert bad == [], f"{qtype} {variant}: rows {bad} ({[kinds[i] for i in bad]}) differ"


@pytest.mark.parametrize("qtype", sorted(KERNELS))
@pytest.mark.parametrize("variant", ["noim", "im"])
def test_golden_dequantize(qtype: str, variant: str) -> None:
    e = expected(qtype, "ik_llama")
    got = KERNELS[qtype][1](e[f"q_{variant}"], 1024)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), e[f"deq_{variant}"].view(np.uint32))


def test_registry_names() -> None:
    assert set(iq2_k.QUANTIZE) == set(iq2_k.DEQUANTIZE) == {"IQ2_K"}
    assert set(iq3_k.QUANTIZE) == set(iq3_k.DEQUANTIZE) == {"IQ3_K"}


# --- scalar transliterations of the C -------------------------------------------------------------

IQ3NL_INDEX = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 9,
    9, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 10, 10, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 11, 11, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 12, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 13, 13, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,
    6, 6, 6, 6, 14, 14, 7, 7, 7, 7, 7, 7, 7, 7, 7]
V2 = [int(v) for v in IQ2NL_VALUES]
V3 = [int(v) for v in IQ3NL_VALUES]


def c_int(x: F) -> int:
    """C's (int)x on x86: truncation, INT_MIN when out of range or NaN."""
    xf = float(x)
    return int(xf) if math.isfinite(xf) and -2.0**31 <= xf < 2.0**31 else -(2**31)


def nearest_int(x: F) -> int:
    """ggml's nearest_int: the mantissa of x + 1.5*2^23 in float32."""
    i = int(np.array([F(x) + F(12582912.0)], F).view(np.int32)[0])
    return (i & 0x007FFFFF) - 0x00400000


def best_index_iq2nl(values: list[int], x: F) -> int:
    idx = 0 if x < values[1] else (2 if x > values[2] else 1)
    return idx if x - F(values[idx]) < F(values[idx + 1]) - x else idx + 1


def best_index_iq3nl(values: list[int], x: F) -> int:
    ix = c_int(x) - values[0]
    if ix < 0 or ix >= 111:
        return 0 if ix < 0 else 7
    ix = IQ3NL_INDEX[ix]
    if ix < 8:
        return ix
    return ix - 8 if x - F(values[ix - 8]) < F(values[ix - 7]) - x else ix - 7


def fp16_bits(x: F) -> int:
    with np.errstate(over="ignore"):
        return int(np.array([x], F).astype(np.float16).view(np.uint16)[0])


def row_weights(x: np.ndarray, imatrix: np.ndarray | None) -> list[F] | None:
    """QHelper::row_weights with block size 16."""
    if imatrix is None:
        return None
    eps = F(1e-9)
    thr = F(16) * (eps * eps)
    w = [F(v) for v in imatrix]
    for ib in range(len(x) // 16):
        sw2 = sx2 = swx = F(0)
        for j in range(16 * ib, 16 * ib + 16):
            sw2 += w[j] * w[j]
            sx2 += x[j] * x[j]
            swx += w[j] * abs(x[j])
        if not (sw2 > thr and sx2 > thr and swx > thr):
            for j in range(16 * ib, 16 * ib + 16):
                w[j] = eps
    return w


def block_weights(xbl: np.ndarray, qw: list[F] | None, ibl: int, sigma2: F, ib: int) -> list[F]:
    xb = xbl[16 * ib: 16 * ib + 16]
    if qw is not None:
        q = qw[256 * ibl + 16 * ib: 256 * ibl + 16 * ib + 16]
        return [q[j] * F(np.sqrt(sigma2 + xb[j] * xb[j])) for j in range(16)]
    return [F(0.25) * sigma2 + xb[j] * xb[j] for j in range(16)]


def sigma2_of(xbl: np.ndarray) -> F:
    s = F(0)
    for v in xbl:
        s += v * v
    return F(1.5) * s / F(256)


def make_qx_quants(n: int, nmax: int, x: list[F], qw: list[F]) -> F:
    """iqk_quantize.cpp's make_qx_quants (the scale only)."""
    mx = amax = F(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if not amax:
        return F(0)

    def sums(iscale: F) -> tuple[F, F]:
        slx = sl2 = F(0)
        for i in range(n):
            lv = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            slx += qw[i] * x[i] * F(lv)
            sl2 += qw[i] * F(lv) * F(lv)
        return slx, sl2

    slx, sl2 = sums(F(-nmax) / mx)
    scale = slx / sl2 if sl2 else F(0)
    best = scale * slx
    for i in range(-9, 10):
        if i == 0:
            continue
        slx, sl2 = sums(-(F(nmax) + F(0.1) * F(i)) / mx)
        if sl2 > 0 and slx * slx > best * sl2:
            scale = slx / sl2
            best = scale * slx
    return scale


def ref_iq2_k(x: np.ndarray, imatrix: np.ndarray | None) -> bytes:
    """quantize_row_iq2_k_impl, one row, line by line in float32."""
    qw = row_weights(x, imatrix)
    out = bytearray()
    for ibl in range(len(x) // 256):
        xbl = x[256 * ibl: 256 * ibl + 256]
        sigma2 = sigma2_of(xbl)
        scales, sw = [F(0)] * 16, [F(0)] * 16
        extra = 0
        max_abs_scale = F(0)
        for ib in range(16):
            xb = xbl[16 * ib: 16 * ib + 16]
            w = block_weights(xbl, qw, ibl, sigma2, ib)
            amax = F(0)
            for j in range(16):
                sw[ib] += w[j]
                amax = max(amax, abs(xb[j]))
            if amax < F(1e-16):
                scales[ib] = F(0)
                continue
            keys = [(float(xb[j]), j) for j in range(16)]  # std::sort of (x, j) pairs: -0 == +0
            order = [j for _, j in sorted(keys)]
            sumx, sumw = [F(0)] * 17, [F(0)] * 17
            for j, jj in enumerate(order):
                sumw[j + 1] = sumw[j] + w[jj]
                sumx[j + 1] = sumx[j] + w[jj] * xb[jj]
            # the products (sumx[b] - sumx[a])*v, ((sumw[b] - sumw[a])*v)*v that C's loop forms
            px = {(a, b, v): (sumx[b] - sumx[a]) * F(v) for a in range(17) for b in range(a, 17) for v in V2}
            pw = {(a, b, v): ((sumw[b] - sumw[a]) * F(v)) * F(v) for a in range(17) for b in range(a, 17) for v in V2}
            best = d = F(0)
            is_shifted = False
            sets = ((V2[:4], False), (V2[4:], True), (V2[3::-1], False), (V2[:3:-1], True))
            for i1 in range(16):
                for i2 in range(i1, 16):
                    for i3 in range(i2, 16):
                        for v, sh in sets:
                            sumqx = (px[0, i1, v[0]] + px[i1, i2, v[1]] + px[i2, i3, v[2]]) + px[i3, 16, v[3]]
                            sumq2 = (pw[0, i1, v[0]] + pw[i1, i2, v[1]] + pw[i2, i3, v[2]]) + pw[i3, 16, v[3]]
                            if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                                d = sumqx / sumq2
                                best = d * sumqx
                                is_shifted = sh
            scales[ib] = d
            if is_shifted:
                extra |= 1 << ib
            max_abs_scale = max(max_abs_scale, abs(d))
        blk = bytearray(76)
        if max_abs_scale:
            d = make_qx_quants(16, 8, scales, sw)
            if d:
                sc = bytearray(8)
                qs = bytearray(64)
                idd = F(1) / d
                sumqx = sumq2 = F(0)
                for ib in range(16):
                    ls = max(-8, min(7, nearest_int(idd * scales[ib])))
                    sc[ib // 2] |= (ls + 8) << 4 * (ib % 2)
                    dl = d * F(ls)
                    if dl:
                        vals = V2[4:] if extra & (1 << ib) else V2[:4]
                        xb = xbl[16 * ib: 16 * ib + 16]
                        w = block_weights(xbl, qw, ibl, sigma2, ib)
                        idl = F(1) / dl
                        ib32 = ib // 2
                        off = 32 * (ib32 // 4) + 16 * (ib % 2)
                        for j in range(16):
                            lv = best_index_iq2nl(vals, idl * xb[j])
                            qs[off + j] |= lv << 2 * (ib32 % 4)
                            q = F(vals[lv] * ls)
                            sumqx += w[j] * q * xb[j]
                            sumq2 += w[j] * q * q
                dd = F(1.030) * (sumqx / sumq2 if sumq2 > 0 else d)
                blk[0:2] = fp16_bits(dd).to_bytes(2, "little")
                blk[2:4] = extra.to_bytes(2, "little")
                blk[4:12] = sc
                blk[12:76] = qs
        out += blk
    return bytes(out)


def ref_iq3_k(x: np.ndarray, imatrix: np.ndarray | None) -> bytes:
    """quantize_row_iq3_k_impl, one row, line by line in float32 (without the descent loop that
    only updates best_d, a variable C never reads)."""
    qw = row_weights(x, imatrix)
    out = bytearray()
    std, shf = V3[:8], V3[8:]
    for ibl in range(len(x) // 256):
        xbl = x[256 * ibl: 256 * ibl + 256]
        sigma2 = sigma2_of(xbl)
        scales = [F(0)] * 16
        extra = 0
        max_abs_scale = F(0)
        for ib in range(16):
            xb = xbl[16 * ib: 16 * ib + 16]
            w = block_weights(xbl, qw, ibl, sigma2, ib)
            amax = mx = F(0)
            for j in range(16):
                if abs(xb[j]) > amax:
                    amax, mx = abs(xb[j]), xb[j]
            if amax < F(1e-16):
                scales[ib] = F(0)
                continue

            def pm(idv: F, vals: list[int], xb: np.ndarray = xb, w: list[F] = w) -> tuple[F, F, F, F]:
                sqp = s2p = sqm = s2m = F(0)
                for j in range(16):
                    al = idv * xb[j]
                    q = F(vals[best_index_iq3nl(vals, al)])
                    sqp += w[j] * q * xb[j]
                    s2p += w[j] * q * q
                    q = F(vals[best_index_iq3nl(vals, -al)])
                    sqm += w[j] * q * xb[j]
                    s2m += w[j] * q * q
                return sqp, s2p, sqm, s2m

            d = -mx / F(std[0])
            best = F(0)
            sqp, s2p, sqm, s2m = pm(F(1) / d, std)
            if s2p > 0:
                d = sqp / s2p
                best = d * sqp
            if s2m > 0 and sqm * sqm > best * s2m:
                d = sqm / s2m
                best = d * sqm
            is_shifted = False
            for itry in range(-3, 4):
                for vals, sh in ((std, False), (shf, True)):
                    sqp, s2p, sqm, s2m = pm(F(2 * itry + vals[0]) / mx, vals)
                    if s2p > 0 and sqp * sqp > best * s2p:
                        d = sqp / s2p
                        best = d * sqp
                        is_shifted = sh
                    if s2m > 0 and sqm * sqm > best * s2m:
                        d = sqm / s2m
                        best = d * sqm
                        is_shifted = sh
            if not d:
                scales[ib] = F(0)
                continue
            vals = shf if is_shifted else std
            sumqx = sumq2 = F(0)
            idv = F(1) / d
            for j in range(16):
                q = F(vals[best_index_iq3nl(vals, idv * xb[j])])
                sumqx += w[j] * q * xb[j]
                sumq2 += w[j] * q * q
            if sumq2 > 0:
                d = sumqx / sumq2
            scales[ib] = d
            if is_shifted:
                extra |= 1 << ib
            max_abs_scale = max(max_abs_scale, abs(d))
        blk = bytearray(110)
        if max_abs_scale:
            d = max_abs_scale / F(31)
            idd = F(1) / d
            sh_bits = 0
            sl = bytearray(8)
            qs = bytearray(64)
            qh = bytearray(32)
            sumqx = sumq2 = F(0)
            for ib in range(16):
                ls = max(0, min(15, nearest_int(F(0.5) * (idd * abs(scales[ib]) - F(1)))))
                sl[ib // 2] |= ls << 4 * (ib % 2)
                if scales[ib] < 0:
                    sh_bits |= 1 << ib
                ls = (2 * ls + 1) * (-1 if scales[ib] < 0 else 1)
                dl = d * F(ls)
                if dl:
                    vals = shf if extra & (1 << ib) else std
                    xb = xbl[16 * ib: 16 * ib + 16]
                    w = block_weights(xbl, qw, ibl, sigma2, ib)
                    idl = F(1) / dl
                    ib32 = ib // 2
                    off = 16 * (ib % 2)
                    for j in range(16):
                        lv = best_index_iq3nl(vals, idl * xb[j])
                        qs[32 * (ib32 // 4) + off + j] |= (lv & 3) << 2 * (ib32 % 4)
                        qh[off + j] |= (lv >> 2) << (ib32 % 8)
                        q = F(vals[lv] * ls)
                        sumqx += w[j] * q * xb[j]
                        sumq2 += w[j] * q * q
            dd = F(1.01) * (sumqx / sumq2 if sumq2 > 0 else d)
            blk[0:2] = fp16_bits(dd).to_bytes(2, "little")
            blk[2:4] = extra.to_bytes(2, "little")
            blk[4:6] = sh_bits.to_bytes(2, "little")
            blk[6:14] = sl
            blk[14:78] = qs
            blk[78:110] = qh
        out += blk
    return bytes(out)


def random_rows(rng: np.random.Generator, nrows: int, n: int) -> np.ndarray:
    """Rows of varied distributions and scales (1e-6 .. 1e3), with integer-valued and sparse rows."""
    rows = []
    for i in range(nrows):
        kind = i % 6
        if kind == 0:
            r = rng.standard_normal(n)
        elif kind == 1:
            r = rng.standard_t(2, n)
        elif kind == 2:
            r = rng.uniform(-1, 1, n)
        elif kind == 3:
            r = np.round(rng.standard_normal(n) * 2)  # ties everywhere
        elif kind == 4:
            r = rng.standard_normal(n) * (rng.random(n) < 0.3)
        else:
            r = rng.laplace(0.7, 1, n)
        rows.append(r * math.exp(rng.uniform(-14, 7)))
    return np.array(rows, dtype=F)


def random_imatrix(rng: np.random.Generator, n: int) -> np.ndarray:
    im = rng.chisquare(1, n) * (rng.random(n) < 0.9)  # some zero weights
    im[: n // 64] = 0  # and a whole block of them
    return im.astype(F)


@pytest.mark.parametrize("use_im", [False, True])
def test_iq3_k_matches_scalar_port(use_im: bool) -> None:
    rng = np.random.default_rng(31 + use_im)
    x = random_rows(rng, 12, 512)  # 384 blocks of 16
    im = random_imatrix(rng, 512) if use_im else None
    got = iq3_k.quantize_iq3_k(x, im)
    for r in range(x.shape[0]):
        assert got[r].tobytes() == ref_iq3_k(x[r], im), f"row {r}"


@pytest.mark.parametrize("use_im", [False, True])
def test_iq2_k_matches_scalar_port(use_im: bool) -> None:
    rng = np.random.default_rng(21 + use_im)
    x = random_rows(rng, 12, 256)  # 192 blocks of 16
    im = random_imatrix(rng, 256) if use_im else None
    got = iq2_k.quantize_iq2_k(x, im)
    for r in range(x.shape[0]):
        assert got[r].tobytes() == ref_iq2_k(x[r], im), f"row {r}"


def test_iq2_k_pruned_search_matches_full_search() -> None:
    """The pruned search (boxes from the breakpoint sweep) against every candidate's sums and C's scan,
    on blocks built to be hard: integer values (ties), repeated values, zero and tiny weights,
    one-signed blocks, wide scales."""
    rng = np.random.default_rng(5)
    nb = 6000
    kind = rng.integers(0, 6, nb)
    x = rng.standard_normal((16, nb))
    x[:, kind == 1] = np.round(x[:, kind == 1] * 2)
    x[:, kind == 2] = np.abs(x[:, kind == 2])
    x[:, kind == 3] = -np.abs(x[:, kind == 3])
    x[:, kind == 4] = np.repeat(np.round(rng.standard_normal((4, nb)), 1), 4, axis=0)[:, kind == 4]
    x[:, kind == 5] = rng.standard_t(1.5, (16, int((kind == 5).sum())))
    x = (x * np.exp(rng.uniform(-10, 6, nb))).astype(F)
    w = (x * x + 0.2 * x.var(axis=0)).astype(F)
    zero = rng.random((16, nb)) < 0.1
    w[zero] = 0
    w[:, ::7] *= rng.chisquare(1, (16, len(range(0, nb, 7)))).astype(F)
    w[:, ::11] = np.where(rng.random((16, len(range(0, nb, 11)))) < 0.3, F(1e-30), w[:, ::11])
    d1, s1, sw1 = iq2_k.scale_search_iq2_k_t(x, w, pruned=True)
    d2, s2, sw2 = iq2_k.scale_search_iq2_k_t(x, w, pruned=False)
    assert np.array_equal(d1.view(np.uint32), d2.view(np.uint32))
    assert np.array_equal(s1, s2) and np.array_equal(sw1, sw2)


def test_best_index_thresholds_match_c() -> None:
    """The threshold form of best_index_iq2nl / best_index_iq3nl against the C functions, on random
    floats and on every float within 64 ulps of each midpoint and of each table entry."""
    rng = np.random.default_rng(3)
    pts = [rng.uniform(-80, 80, 3000).astype(F), np.array([np.nan, np.inf, -np.inf, 3e9, -3e9, 0.0, -0.0], F)]
    for v in set(V2) | set(V3) | {(a + b) / 2 for a, b in zip(V3[:7] + V3[8:15], V3[1:8] + V3[9:16], strict=True)} | {
            (a + b) / 2 for a, b in zip(V2[:3] + V2[4:7], V2[1:4] + V2[5:8], strict=True)}:
        base = np.array([v], F).view(np.int32)[0]
        pts.append(np.arange(base - 64, base + 65, dtype=np.int32).view(F))
        pts.append(-np.arange(base - 64, base + 65, dtype=np.int32).view(F))
    a = np.concatenate(pts)
    a2 = np.stack([a, a])  # (2, m): one row per table
    for sh, vals in ((False, V3[:8]), (True, V3[8:])):
        got = iq3_k.best_index_iq3nl_t(a2, np.array([sh] * a.size))[0]
        assert got.tolist() == [best_index_iq3nl(vals, F(t)) for t in a]
        got = iq3_k.best_index_iq3nl_t(a2, sh)[0]
        assert got.tolist() == [best_index_iq3nl(vals, F(t)) for t in a]
    for sh, vals in ((False, V2[:4]), (True, V2[4:])):
        got = iq2_k.best_index_iq2nl_t(a2, np.array([sh] * a.size))[0]
        assert got.tolist() == [best_index_iq2nl(vals, F(t)) for t in a]


# --- edge rows -----------------------------------------------------------------------------------

EDGE = {
    "zeros": np.zeros(512, F),
    "tiny": np.full(512, 1e-30, F) * np.tile([1, -1, 2, -3], 128).astype(F),
    "huge": (np.random.default_rng(1).standard_normal(512) * 3e4).astype(F),
    "constant": np.full(512, 0.37, F),
    "one_spike": np.where(np.arange(512) == 77, F(5.0), F(0)).astype(F),
}


@pytest.mark.parametrize("qtype", sorted(KERNELS))
@pytest.mark.parametrize("use_im", [False, True])
def test_edge_rows(qtype: str, use_im: bool) -> None:
    quant, deq, bpb = KERNELS[qtype]
    ref = ref_iq2_k if qtype == "IQ2_K" else ref_iq3_k
    x = np.stack(list(EDGE.values()))
    im = random_imatrix(np.random.default_rng(9), 512) if use_im else None
    q = quant(x, im)
    assert q.shape == (len(EDGE), 512 // 256 * bpb)
    if qtype == "IQ3_K" or not use_im:  # the scalar IQ2_K port is slow: one variant
        for r, name in enumerate(EDGE):
            assert q[r].tobytes() == ref(x[r], im), name
    y = deq(q, 512)
    assert y.shape == x.shape and np.isfinite(y).all()
    assert not y[0].any()  # zeros stay zeros
    for r, name in enumerate(EDGE):
        if name in ("huge", "constant"):
            err = np.sqrt(np.mean((y[r] - x[r]) ** 2)) / np.sqrt(np.mean(x[r] ** 2))
            assert err < 0.5, (name, err)


def test_chunking_and_single_rows() -> None:
    """Rows longer than a chunk, many short rows, a single row: the same bytes row by row."""
    rng = np.random.default_rng(4)
    x = random_rows(rng, 3, 256 * 80)
    for quant, _, _ in KERNELS.values():
        whole = quant(x, None)
        for r in range(3):
            assert np.array_equal(quant(x[r: r + 1], None)[0], whole[r])
        short = x[:, :256].copy()
        assert np.array_equal(quant(short, None), whole[:, : whole.shape[1] // 80])


@pytest.mark.parametrize("qtype", sorted(KERNELS))
def test_small_rows_and_inputs_untouched(qtype: str) -> None:
    """Rows of 1..3 super-blocks (one super-block per chunk included) against the scalar port, and
    the caller's arrays left as they were."""
    quant = KERNELS[qtype][0]
    ref = ref_iq2_k if qtype == "IQ2_K" else ref_iq3_k
    rng = np.random.default_rng(8)
    for n in (256, 512, 768):
        x = random_rows(rng, 1, n)
        im = random_imatrix(rng, n)
        x0, im0 = x.copy(), im.copy()
        for w in (None, im):
            assert quant(x, w)[0].tobytes() == ref(x[0], w)
        assert np.array_equal(x, x0) and np.array_equal(im, im0)
