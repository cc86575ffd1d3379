"""Scalar transliterations of ggml-quants.c's k-quant searches, mainline and ik_llama.cpp, shared by
the tests that hold the vectorized ports (qtool/quants/search_kx.py, ik/search_kx_ik.py and the
kernels built on them) to C: one block at a time, float32 scalars (every operation rounded to
float as C's float expressions are), C's loop and summation order; ik's double sums are Python
floats. Kept literal on purpose: they are the oracle, not an optimisation.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np

from . import ik_lib

F = np.float32
IK_QKX_DEGENERATE = 1e-10
"""ik's make_qkx2/3_quants: a block with max - min < 1e-10f is degenerate (mainline: max == min)."""
IK_QP_ZERO = 1e-16
"""ik's make_qp_quants all-zero threshold (mainline GROUP_MAX_EPS, 1e-15f)."""


def ik_quantize_lib() -> ctypes.CDLL:
    """ik_llama.cpp's libggml (QTOOL_IK_LIB, which must be set): tests/ik_lib.py's loader."""
    return ik_lib.load()


def nearest_int(v: float | np.floating) -> int:
    """ggml nearest_int on one float32: fval + 12582912.f, low 23 bits - 0x400000."""
    i = int(np.array([F(v) + F(12582912.0)], dtype=F).view(np.int32)[0])
    return (i & 0x007FFFFF) - 0x00400000


def fp16_bits(v: float) -> int:
    """GGML_FP32_TO_FP16 of one float32, as the uint16 bits."""
    with np.errstate(over="ignore"):
        return int(np.array([v], dtype=F).astype(np.float16).view(np.uint16)[0])


def fp16_value(bits: int) -> np.float32:
    """GGML_FP16_TO_FP32 of uint16 bits."""
    return F(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def ref_qkx(x: Sequence, w: Sequence | None, nmax: int, rmin: float, rdelta: float, nstep: int,
            use_mad: bool, qkx2: bool, degenerate_eps: float | None = None) -> tuple[np.float32, np.float32, list[int]]:
    """make_qkx2_quants (qkx2=True) / mainline make_qkx3_quants, one block, scalar float32.

    w None: make_qkx3's weights x*x. degenerate_eps: ik's test `max - min < eps` (with make_qkx2's
    float sums, as ik's make_qkx2_quants has them) instead of mainline's max == min / max <= min.
    Returns (scale, the_min = -min, L)."""
    n = len(x)
    x = [F(v) for v in x]
    ww = [x[i] * x[i] for i in range(n)] if w is None else [F(v) for v in w]
    mn = x[0]
    mx = x[0]
    sum_w = ww[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        sum_w += ww[i]
        sum_x += ww[i] * x[i]
    if mn > 0:
        mn = F(0)
    if degenerate_eps is not None:
        degenerate = bool(mx - mn < F(degenerate_eps))
    else:
        degenerate = bool((mx == mn) if qkx2 else (mx <= mn))
    if degenerate:
        return F(0), -mn, [0] * n
    iscale = F(nmax) / (mx - mn)
    scale = F(1) / iscale
    best = F(0)
    L = [0] * n
    for i in range(n):
        L[i] = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
        diff = scale * F(L[i]) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best += ww[i] * diff
    if nstep < 1:
        return scale, -mn, L
    for is_ in range(nstep + 1):
        iscale = (F(rmin) + F(rdelta) * F(is_) + F(nmax)) / (mx - mn)
        sum_l = F(0)
        sum_l2 = F(0)
        sum_xl = F(0)
        laux = [0] * n
        for i in range(n):
            ll = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
            laux[i] = ll
            sum_l += ww[i] * F(ll)
            sum_l2 += ww[i] * F(ll) * F(ll)
            sum_xl += ww[i] * F(ll) * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = F(0)
                this_scale = sum_xl / sum_l2
            mad = F(0)
            for i in range(n):
                diff = this_scale * F(laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                mad += ww[i] * diff
            if mad < best:
                L = laux
                best = mad
                scale = this_scale
                mn = this_min
    return scale, -mn, L


def ref_qkx2_ik(x: Sequence, w: Sequence, nmax: int, rmin: float, rdelta: float, nstep: int,
                use_mad: bool) -> tuple[np.float32, np.float32, list[int]]:
    """ik make_qkx2_quants: mainline's with the degenerate test max - min < 1e-10f."""
    return ref_qkx(x, w, nmax, rmin, rdelta, nstep, use_mad, True, degenerate_eps=IK_QKX_DEGENERATE)


def ref_qkx3_ik(x: Sequence, w: Sequence, nmax: int, rmin: float = -0.9, rdelta: float = 0.05,
                nstep: int = 36) -> tuple[np.float32, np.float32, list[int]]:
    """ik make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, false):
    double sums (Python floats), float scale / min, then the greedy descent. -> (scale, -min, L)."""
    n = len(x)
    x = [F(v) for v in x]
    xd = [float(v) for v in x]
    wd = [float(F(v)) for v in w]
    mn = x[0]
    mx = x[0]
    sum_w = wd[0]
    sum_x = sum_w * xd[0]
    sum_x2 = sum_w * xd[0] * xd[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        sum_w += wd[i]
        sum_x += wd[i] * xd[i]
        sum_x2 += wd[i] * xd[i] * xd[i]
    if mn > 0:
        mn = F(0)
    if F(mx - mn) < F(IK_QKX_DEGENERATE):
        return F(0), F(-mn), [0] * n
    iscale = F(F(nmax) / F(mx - mn))
    scale = F(F(1) / iscale)
    L = [0] * n
    best_mad = 0.0
    for i in range(n):
        L[i] = max(0, min(nmax, nearest_int(F(iscale * F(x[i] - mn)))))
        diff = float(scale) * L[i] + float(mn) - xd[i]
        best_mad += wd[i] * (diff * diff)
    for step in range(nstep + 1):
        iscale = F(F(F(F(rmin) + F(F(rdelta) * F(step))) + F(nmax)) / F(mx - mn))
        sl, sl2, sxl = 0.0, 0.0, 0.0
        La = [0] * n
        for i in range(n):
            li = max(0, min(nmax, nearest_int(F(iscale * F(x[i] - mn)))))
            La[i] = li
            sl += wd[i] * li
            sl2 += wd[i] * li * li
            sxl += wd[i] * li * xd[i]
        D = sum_w * sl2 - sl * sl
        if D > 0:
            ts = (sum_w * sxl - sum_x * sl) / D
            tm = (sl2 * sum_x - sl * sxl) / D
            if tm > 0:
                tm = 0.0
                ts = sxl / sl2
            mad = sum_x2 - 2 * ts * sxl - 2 * tm * sum_x + 2 * ts * tm * sl + ts * ts * sl2 + tm * tm * sum_w
            if mad < best_mad:
                L, best_mad, scale, mn = La, mad, F(ts), F(tm)
    sl, sl2, sxl = 0.0, 0.0, 0.0
    for i in range(n):
        sl += wd[i] * L[i]
        sl2 += wd[i] * L[i] * L[i]
        sxl += wd[i] * L[i] * xd[i]
    s, m = float(scale), float(mn)
    best = 2 * s * sxl + 2 * m * sum_x - 2 * s * m * sl - s * s * sl2 - m * m * sum_w
    last_j, last_dir = -1, 0
    L = list(L)
    for _ in range(nmax * n):
        gmax = F(0)
        bj, dr = -1, 0
        for j in range(n):
            g = F(F(x[j] - F(scale * F(L[j]))) - mn)
            if g > 0 and L[j] < nmax and g > gmax:
                gmax, bj, dr = g, j, 1
            elif g < 0 and L[j] > 0 and -g > gmax:
                gmax, bj, dr = -g, j, -1
        if bj < 0 or (bj == last_j and dr == -last_dir):
            break
        wj = wd[bj]
        sl += wj * dr
        sl2 += wj * (2 * L[bj] * dr + 1)
        sxl += wj * xd[bj] * dr
        D = sum_w * sl2 - sl * sl
        if D <= 0:
            break
        ts = (sum_w * sxl - sum_x * sl) / D
        tm = (sl2 * sum_x - sl * sxl) / D
        if tm > 0:
            tm = 0.0
            ts = sxl / sl2
        if ts < 0:
            break
        score = 2 * ts * sxl + 2 * tm * sum_x - 2 * ts * tm * sl - ts * ts * sl2 - tm * tm * sum_w
        if score <= best:
            break
        best, scale, mn = score, F(ts), F(tm)
        L[bj] += dr
        last_j, last_dir = bj, dr
    return scale, F(-mn), L


def ref_qp(x: Sequence, qw: Sequence, nmax: int, zero_eps: float = 1e-15, guard_l2: bool = True
           ) -> tuple[np.float32, list[int]]:
    """make_qp_quants, one block, scalar float32; L as C's uint8_t.

    zero_eps: the all-zero test max < zero_eps (mainline 1e-15f, ik 1e-16f); guard_l2: mainline's
    `suml2 > 0 ? sumlx/suml2 : 0` (ik: sumlx/suml2, NaN or inf when suml2 == 0)."""
    n = len(x)
    x = [F(v) for v in x]
    qw = [F(v) for v in qw]
    mx = F(0)
    for i in range(n):
        mx = mx if mx > x[i] else x[i]
    if mx < F(zero_eps):
        return F(0), [0] * n
    iscale = F(nmax) / mx
    L = [nearest_int(iscale * x[i]) & 0xFF for i in range(n)]
    scale = F(1) / iscale
    best = F(0)
    for i in range(n):
        diff = x[i] - scale * F(L[i])
        best += qw[i] * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (F(0.1) * F(is_) + F(nmax)) / mx
        scale_is = F(1) / iscale_is
        mse = F(0)
        for i in range(n):
            ll = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * F(ll)
            mse += qw[i] * diff * diff
        if mse < best:
            best = mse
            iscale = iscale_is
    sumlx = F(0)
    suml2 = F(0)
    for i in range(n):
        ll = min(nmax, nearest_int(iscale * x[i]))
        L[i] = ll & 0xFF
        sumlx += qw[i] * x[i] * F(ll)
        suml2 += qw[i] * F(ll) * F(ll)
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = qw[i]
            slx = sumlx - w * x[i] * F(L[i])
            sl2 = suml2 - w * F(L[i]) * F(L[i])
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != L[i]:
                    slx += w * x[i] * F(new_l)
                    sl2 += w * F(new_l) * F(new_l)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if not n_changed:
            break
    if guard_l2:
        return (sumlx / suml2 if suml2 > 0 else F(0)), L
    with np.errstate(divide="ignore", invalid="ignore"):
        return F(sumlx / suml2), L


def ref_qp_ik(x: Sequence, qw: Sequence, nmax: int) -> tuple[np.float32, list[int]]:
    """ik make_qp_quants: mainline's with max < 1e-16f all-zero and the unguarded division."""
    return ref_qp(x, qw, nmax, zero_eps=IK_QP_ZERO, guard_l2=False)
