"""ik_llama.cpp's Q2_K (with and without an imatrix) and Q3_K with an imatrix, byte-exact.

ik_llama.cpp keeps mainline's block layouts and dequantizers (kquants/q2_k.py, q3_k.py) but
quantizes these variants its own way (ggml/src/ggml-quants.c of ik_llama.cpp; iqk_quantize.cpp
does not override quantize_q2_K / quantize_q3_K, it only repacks them for the _R4 types):

- Q2_K without imatrix, `quantize_row_q2_K_ref`:
  * "TriNet" detection over the WHOLE chunk that ggml_quantize_chunk receives (quantize_q2_K
    passes nrow*n_per_row values in one call): max = max|x|, l = x < -max/2 ? -1 : x < max/2 ?
    0 : 1, mse0 = sum x², mse = sum (x - max*l)² (float32, sequential); if mse < 0.1*mse0 every
    block is written as ternary (d = dmin = fp16(max), scales 0x11, L = l + 1). The bytes of a
    ternary-looking tensor therefore depend on how rows are grouped into calls, as in ik.
  * otherwise mainline's algorithm, except that ik's make_qkx2_quants treats a sub-block as
    degenerate when `max - min < 1e-10f` (mainline: `max == min`): L = 0, scale 0, the_min =
    -min. That is what turns the 1e-30 'tiny' row into other bytes.
- Q2_K with imatrix, `quantize_row_q2_K_impl`: sigma2 = 0.75*sum(x²)/256, weights
  qw*sqrt(sigma2 + x²), ik's `make_qkx3_quants` (double precision sums, 37 candidate scales
  -0.9 + 0.05*is, then a greedy one-step-at-a-time descent on L), ik's `make_qp_quants` (zero
  below 1e-16, no guard on the final division) for the 16 scales and the 16 mins, and a final
  pass with the unrounded float scales: q = nearest_int((x + m) * (d ? 1/d : 0)).
- Q3_K with imatrix, `quantize_row_q3_K_impl`: mainline's structure, ik's `make_qx_quants`
  (search_ik.make_qx_quants_ik_t) at both levels. (Q3_K without imatrix is mainline's.)

Layout as in the mainline kernels: a chunk of super-blocks transposed to [index in sub-block,
sub-block, super-block], each C reduction down axis 0 in C's order, the searches vectorized
across sub-blocks (loops only over candidate scales and descent steps). The double sums of
make_qkx3_quants run through einsum where it is checked to be sequential (einsum64_is_sequential),
on chunks of Q2K_IMPL_CHUNK super-blocks so that the float64 arrays stay in the L2 cache.

Speed (CPU time, 512 x 4096 gaussian rows, on a loaded 2-core machine, vs ik_llama.cpp's
single-thread C in the same run): Q2_K with imatrix ~3.2 M weights/s (ik 6.9: 0.46x), Q3_K with
imatrix ~6.4 (ik 12.1: 0.52x), Q2_K without ~7.0 (ik 12.3: 0.57x; the search is mainline's
search_kx). The Q2_K imatrix search is bound by 37 sequential candidate evaluations of three
float64 sums per value plus ~30 vector operations per sub-block each.
"""

from __future__ import annotations

import math

import numpy as np

from ..kquants.q2_k import dequantize_q2_k
from ..kquants.q3_k import BLOCK_Q3_K, dequantize_q3_k, pack_q3_k, pack_scales_q3
from ..kquants.q6_k import ImatrixLayout, chunk_size, requantize, to_sub_t
from ..kquants.q45_k import (
    ImatrixCache,
    requantize_t,
    running_max,
    superblock_chunks,
    superblock_sum_sq,
    to_subblocks_t,
)
from ..numeric import c_einsum, seq_sum0
from ..registry import register
from ..rounding import fp16_bits_to_fp32, fp32_to_fp16_bits, nearest_int
from ..scratch import Workspace, thread_workspace
from ..search_kx import qkx_search_state_t
from ..types import QK_K
from .search_ik import make_qx_quants_ik_t

F32 = np.float32
F64 = np.float64
Q2K_SIZE = 84
Q2K_IMPL_CHUNK = 1024  # super-blocks per chunk with an imatrix: the double sums want L2-sized arrays
Q3K_CHUNK = 512
_TRINET_CHUNK = 1 << 20  # values per step of the sequential TriNet sums


# --------------------------------------------------------------------------- make_qkx3_quants (ik)

_EINSUM64: bool | None = None


def einsum64_is_sequential() -> bool:
    """Whether c_einsum("jb,jb->b", w, l) and ("jb,jb,jb->b", w, l, x) on float64 compute C's
    `sum += (double)w*l` / `sum += (double)w*l*x` loops exactly ((w*l)*x, added one j after
    another from +0, no fused multiply-add), checked once per process on data where another
    order shows; otherwise the sums fall back to multiply + reduce down axis 0."""
    global _EINSUM64
    if _EINSUM64 is None:
        rng = np.random.default_rng(20261201)
        ok = True
        for nb in (2, 3, 17, 4099):
            w = (rng.uniform(0, 3, (16, nb)) * np.exp(rng.uniform(-30, 30, (16, nb)))).astype(F32).astype(F64)
            lv = rng.integers(0, 4, (16, nb)).astype(F64)
            x = (rng.standard_normal((16, nb)) * np.exp(rng.uniform(-30, 30, (16, nb)))).astype(F32).astype(F64)
            wl = w * lv
            for got, want in ((c_einsum("jb,jb->b", w, lv), np.add.reduce(wl, axis=0)),
                              (c_einsum("jb,jb,jb->b", w, lv, lv), np.add.reduce(wl * lv, axis=0)),
                              (c_einsum("jb,jb,jb->b", w, lv, x), np.add.reduce(wl * x, axis=0))):
                ok &= got.dtype == F64 and bool(np.array_equal(got.view(np.uint64), want.view(np.uint64)))
        _EINSUM64 = ok
    return _EINSUM64


def _sums64(w64: np.ndarray, l64: np.ndarray, x64: np.ndarray, t64: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sum_l, sum_l2, sum_xl) = sums over axis 0 of (double)w*l, w*l*l, w*l*x, in C's order."""
    if einsum64_is_sequential():
        return (c_einsum("jb,jb->b", w64, l64), c_einsum("jb,jb,jb->b", w64, l64, l64),
                c_einsum("jb,jb,jb->b", w64, l64, x64))
    wl = np.multiply(w64, l64, out=t64[0])
    sl = seq_sum0(wl)
    sl2 = seq_sum0(np.multiply(wl, l64, out=t64[1]))
    sxl = seq_sum0(np.multiply(wl, x64, out=t64[1]))
    return sl, sl2, sxl


def _mad(sx2: np.ndarray, sw: np.ndarray, sx: np.ndarray, sl: np.ndarray, sl2: np.ndarray, sxl: np.ndarray,
         ts: np.ndarray, tm: np.ndarray) -> np.ndarray:
    """C's `sum_x2 - 2*ts*sum_xl - 2*tm*sum_x + 2*ts*tm*sum_l + ts*ts*sum_l2 + tm*tm*sum_w` (double)."""
    ts2 = 2 * ts
    r = sx2 - ts2 * sxl
    r -= (2 * tm) * sx
    r += (ts2 * tm) * sl
    r += (ts * ts) * sl2
    r += (tm * tm) * sw
    return r


def _score(sw: np.ndarray, sx: np.ndarray, sl: np.ndarray, sl2: np.ndarray, sxl: np.ndarray,
           s: np.ndarray, m: np.ndarray) -> np.ndarray:
    """C's `2*s*sum_xl + 2*m*sum_x - 2*s*m*sum_l - s*s*sum_l2 - m*m*sum_w` (double)."""
    s2 = 2 * s
    r = s2 * sxl
    r += (2 * m) * sx
    r -= (s2 * m) * sl
    r -= (s * s) * sl2
    r -= (m * m) * sw
    return r


def _solve(sw: np.ndarray, sx: np.ndarray, sl: np.ndarray, sl2: np.ndarray, sxl: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(D, this_scale, this_min) of make_qkx3_quants' least-squares step, min clamped to <= 0."""
    D = sw * sl2 - sl * sl
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ts = sw * sxl
        ts -= sx * sl
        ts /= D
        tm = sl2 * sx
        tm -= sl * sxl
        tm /= D
        pos = tm > 0
        if pos.any():
            tm[pos] = 0.0
            ts[pos] = sxl[pos] / sl2[pos]
    return D, ts, tm


def _fast(isc: np.ndarray, mx: np.ndarray, mn: np.ndarray, xmin: np.ndarray) -> bool:
    """Whether isc*(x - mn) (isc = s/(mx - mn), s > 0) stays in (-2^22, s(1 + eps)] for every x of
    every block: then nearest_int is np.rint and only the clamps at 0 (where mn > xmin) and at nmax
    (for s near nmax + 1/2) can bite. Needs mx > mn (min may move anywhere in the search)."""
    r = mx - mn
    with np.errstate(invalid="ignore", over="ignore"):
        return bool((r > 0).all()) and bool((isc * np.maximum(r, mn - xmin) < F32(4.0e6)).all())


def make_qkx3_quants_ik_t(xt: np.ndarray, wt: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                          ws: Workspace | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ik_llama.cpp `make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep,
    use_mad=false)` on the transposed layout: xt, wt float32 (n, nb), nb > 1.

    Returns (scale float32 (nb,), the_min float32 (nb,) = -min, L uint8 (n, nb)).
    Sums are double, in C's index order (down axis 0); scale and min are float (C stores the
    double results in float variables), and later candidates use the updated min, both in
    `(...)/(max - min)` and in `x[i] - min`. Levels: nearest_int is np.rint while every
    |iscale*(x - min)| stays below 2^22 (checked per candidate on per-block bounds), and the clamps
    run only where they can bite (at nmax for the larger candidates, at 0 once min rose above a
    block's minimum).
    """
    n, nb = xt.shape
    ws = ws or Workspace()
    x64 = ws.get("k3_x64", (n, nb), F64)
    w64 = ws.get("k3_w64", (n, nb), F64)
    t64 = ws.get("k3_t64", (2, n, nb), F64)
    l64 = ws.get("k3_l64", (n, nb), F64)
    lf = ws.get("k3_lf", (n, nb))
    xm = ws.get("k3_xm", (n, nb))
    L = ws.get("k3_L", (n, nb))
    x64[...] = xt
    w64[...] = wt
    xmin = xt.min(axis=0)
    mx = xt.max(axis=0)
    sum_w = seq_sum0(w64)
    np.multiply(w64, x64, out=t64[0])
    sum_x = seq_sum0(t64[0])
    t64[0] *= x64
    sum_x2 = seq_sum0(t64[0])
    mn = np.minimum(xmin, F32(0))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rng = (mx - mn).astype(F32)
    degenerate = (rng < F32(1e-10)) & ~np.isnan(rng)  # C: if (max - min < 1e-10f) return early
    mn_deg = mn.copy()
    if degenerate.any():  # keep their arithmetic harmless; results are set at the end
        mn = np.where(degenerate, F32(0), mn)
        mx = np.where(degenerate, F32(1), mx)
        xmin = np.where(degenerate, F32(0), xmin)
    fnmax = F32(nmax)
    steps = [(F32(rmin) + F32(rdelta) * F32(i)) + fnmax for i in range(nstep + 1)]
    hi_free = fnmax + F32(0.5) - F32(1e-3) * fnmax  # below: rint(isc*(x - min)) <= nmax
    lo = False  # whether some min rose above its block's minimum (x - min < 0 somewhere)

    nmax64 = np.full(nb, float(nmax))
    zero64 = np.zeros(nb)

    def levels(isc: np.ndarray, s: np.float32) -> np.ndarray:
        """clamp(nearest_int(isc*(x - min)), 0, nmax) into l64 (the product rounded in float32)."""
        np.multiply(xm, isc, out=lf)
        if _fast(isc, mx, mn, xmin):
            np.rint(lf, out=l64)
            if s >= hi_free:
                np.minimum(l64, nmax64, out=l64)
            if lo:
                np.maximum(l64, zero64, out=l64)
        else:  # ggml's bit-level nearest_int for huge / non-finite products
            l64[...] = np.clip(nearest_int(lf), 0, nmax)
        return l64

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rng = (mx - mn).astype(F32)
        iscale = fnmax / rng
        scale = (F32(1) / iscale).astype(F32)
        np.subtract(xt, mn, out=xm)
        levels(iscale, fnmax)
        # diff = (double)scale*L + (double)min - (double)x; best_mad += w*diff*diff
        d64 = t64[0]
        np.multiply(l64, scale.astype(F64), out=d64)
        d64 += mn.astype(F64)
        d64 -= x64
        d64 *= d64
        d64 *= w64
        best = seq_sum0(d64)
        # the winning L is rebuilt at the end from the iscale and min that made it
        best_isc = iscale.astype(F32)
        best_mnu = mn.copy()
        for s in steps:
            isc = (s / rng).astype(F32)
            levels(isc, s)
            sum_l, sum_l2, sum_xl = _sums64(w64, l64, x64, t64)
            D, ts, tm = _solve(sum_w, sum_x, sum_l, sum_l2, sum_xl)
            mad = _mad(sum_x2, sum_w, sum_x, sum_l, sum_l2, sum_xl, ts, tm)
            idx = np.flatnonzero((D > 0) & (mad < best))
            if idx.size:
                best[idx] = mad[idx]
                scale[idx] = ts[idx]
                best_isc[idx] = isc[idx]
                best_mnu[idx] = mn[idx]
                mi = tm[idx].astype(F32)
                mn[idx] = mi
                np.subtract(mx, mn, out=rng)
                np.subtract(xt, mn, out=xm)
                lo = lo or bool((mi > xmin[idx]).any())
        np.subtract(xt, best_mnu, out=xm)
        np.multiply(xm, best_isc, out=lf)
        if _fast(best_isc, mx, best_mnu, xmin):
            np.rint(lf, out=L)
            np.clip(L, F32(0), fnmax, out=L)
        else:
            L[...] = np.clip(nearest_int(lf), 0, nmax)
        # final sums over the winning L, then the greedy descent
        l64[...] = L
        sum_l, sum_l2, sum_xl = _sums64(w64, l64, x64, t64)
        best = _score(sum_w, sum_x, sum_l, sum_l2, sum_xl, scale.astype(F64), mn.astype(F64))
        _descend_qkx3(xt, w64, x64, L, scale, mn, best, sum_w, sum_x, sum_l, sum_l2, sum_xl, nmax,
                      np.flatnonzero(~degenerate))
    Lu = L.astype(np.uint8)
    if degenerate.any():
        Lu[:, degenerate] = 0
        scale[degenerate] = 0
        mn = np.where(degenerate, mn_deg, mn)
    return scale, (-mn).astype(F32), Lu


def first_argmax0(a: np.ndarray) -> np.ndarray:
    """np.argmax(a, axis=0) (the first maximum) for a small first axis, without the transposed copy
    numpy makes for an axis-0 argmax."""
    m = a.max(axis=0)
    j = np.full(a.shape[1], a.shape[0] - 1, dtype=np.intp)
    for r in range(a.shape[0] - 2, -1, -1):
        j = np.where(a[r] == m, r, j)
    return j


def _descend_qkx3(xt: np.ndarray, w64: np.ndarray, x64: np.ndarray, L: np.ndarray, scale: np.ndarray,
                  mn: np.ndarray, best: np.ndarray, sw: np.ndarray, sx: np.ndarray, sl: np.ndarray,
                  sl2: np.ndarray, sxl: np.ndarray, nmax: int, act: np.ndarray) -> None:
    """make_qkx3_quants' `itry` loop (nmax*n steps at most), in place on L, scale, mn (columns act).

    Each step: the first j of largest |g|, g = x - scale*L - min, that can move in g's direction;
    stop if it undoes the previous step, if D <= 0, if the scale turns negative or if the score
    does not rise. All blocks advance together; a block that stops stays in the working set
    (masked) until fewer than half of it still moves, then the set is compacted.
    """
    n, nbt = xt.shape
    fnmax = F32(nmax)
    cols = act
    whole = cols.size == nbt  # work on L itself (no gather, no write-back)
    X = xt if whole else xt[:, cols]
    Lc = L if whole else L[:, cols]
    sc, m, bst = scale[cols], mn[cols], best[cols]
    s_w, s_x, s_l, s_l2, s_xl = sw[cols], sx[cols], sl[cols], sl2[cols], sxl[cols]
    live = np.ones(cols.size, dtype=bool)
    last_j = np.full(cols.size, -1, dtype=np.intp)
    last_d = np.zeros(cols.size, dtype=np.intp)
    for _ in range(nmax * n):
        if cols.size == 0:
            break
        cw = np.arange(cols.size)
        g = X - sc * Lc
        g -= m
        ag = np.abs(g)
        ag[~(((g > 0) & (Lc < fnmax)) | ((g < 0) & (Lc > 0)))] = 0
        j = first_argmax0(ag)
        ok = live & (ag[j, cw] > 0)
        d = np.where(g[j, cw] > 0, 1, -1)
        ok &= ~((j == last_j) & (d == -last_d))
        w = w64[j, cols]
        lj = Lc[j, cw].astype(np.intp)
        nsl = s_l + w * d
        nsl2 = s_l2 + w * (2 * lj * d + 1)
        nsxl = s_xl + w * x64[j, cols] * d
        D, ts, tm = _solve(s_w, s_x, nsl, nsl2, nsxl)
        ok &= D > 0
        ok &= ~(ts < 0)
        score = _score(s_w, s_x, nsl, nsl2, nsxl, ts, tm)
        ok &= score > bst
        live &= ok
        k = np.flatnonzero(ok)
        if k.size == 0:
            break
        bst[k] = score[k]
        sc[k] = ts[k]
        m[k] = tm[k]
        s_l[k] = nsl[k]
        s_l2[k] = nsl2[k]
        s_xl[k] = nsxl[k]
        Lc[j[k], k] += d[k].astype(F32)
        last_j[k] = j[k]
        last_d[k] = d[k]
        if 2 * k.size < cols.size:  # compact the working set to the blocks still moving
            if not whole:
                L[:, cols] = Lc
            scale[cols] = sc
            mn[cols] = m
            cols = cols[k]
            whole = False
            X = xt[:, cols]
            Lc = L[:, cols]
            sc, m, bst = sc[k], m[k], bst[k]
            s_w, s_x, s_l, s_l2, s_xl = s_w[k], s_x[k], s_l[k], s_l2[k], s_xl[k]
            live = np.ones(cols.size, dtype=bool)
            last_j, last_d = last_j[k], last_d[k]
    if not whole:
        L[:, cols] = Lc
    scale[cols] = sc
    mn[cols] = m


# ----------------------------------------------------------------------------- make_qp_quants (ik)

def _qp_pass(xt: np.ndarray, wt: np.ndarray, WX: np.ndarray, L: np.ndarray, sumlx: np.ndarray,
             suml2: np.ndarray, nmax: int) -> np.ndarray:
    """One pass of make_qp_quants' `itry` loop over i = 0..n-1, in place on L (int32, C's uint8
    values), sumlx, suml2; returns the per-block `n_changed > 0` mask. All remaining steps are
    evaluated from the current state, each block's first accepted change applied, and only the
    blocks that changed evaluated again from the next i on (a step not taken changes nothing)."""
    n, nb = xt.shape
    changed = np.zeros(nb, dtype=bool)
    rows = np.arange(n)[:, None]
    act = np.arange(nb)
    start = np.zeros(nb, dtype=np.int64)
    x, w, wx, La, sx, s2 = xt, wt, WX, L, sumlx, suml2
    while act.size:
        Lf = La.astype(F32)
        slx = sx - wx * Lf
        sl2 = s2 - w * Lf * Lf
        ok = (slx > 0) & (sl2 > 0) & (rows >= start)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            new_l = np.minimum(nearest_int(x * sl2 / slx), nmax)
        ok &= new_l != La
        nlf = new_l.astype(F32)
        slx += wx * nlf
        sl2 += w * nlf * nlf
        ok &= slx * slx * s2 > sx * sx * sl2
        has = ok.any(axis=0)
        if not has.any():
            break
        k = np.flatnonzero(has)
        f = np.argmax(ok[:, k], axis=0)
        blk = act[k]
        L[f, blk] = new_l[f, k] & 0xFF
        sumlx[blk] = slx[f, k]
        suml2[blk] = sl2[f, k]
        changed[blk] = True
        act = blk
        start = f + 1
        x, w, wx, La, sx, s2 = xt[:, act], wt[:, act], WX[:, act], L[:, act], sumlx[act], suml2[act]
    return changed


def make_qp_quants_ik_t(xt: np.ndarray, wt: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ik_llama.cpp `make_qp_quants(n, nmax, x, L, quant_weights)` on xt, wt float32 (n, nb), nb > 1.

    As mainline's (search_kx.make_qp_quants_t) but: all-zero below max < 1e-16f, and the result
    is sumlx/suml2 unguarded (NaN for a block whose weights are all zero, as in C).
    Returns (scale float32 (nb,), L uint8 (n, nb)).
    """
    n, nb = xt.shape
    fnmax = F32(nmax)
    mx = np.max(xt, axis=0, initial=F32(0.0))
    zero = ~(mx >= F32(1e-16))
    mxs = np.where(zero, F32(1.0), mx)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale = fnmax / mxs
        scale = F32(1.0) / iscale
        Lw = (nearest_int(xt * iscale) & 0xFF).astype(F32)  # uint8_t L[i]
        diff = xt - scale * Lw
        best = seq_sum0(wt * diff * diff)
        for isv in (-4, -3, -2, -1, 1, 2, 3, 4):
            isc = (F32(0.1) * F32(isv) + fnmax) / mxs
            sc = F32(1.0) / isc
            li = np.minimum(nearest_int(isc * xt), nmax).astype(F32)
            diff = xt - sc * li
            mse = seq_sum0(wt * diff * diff)
            better = mse < best
            best = np.where(better, mse, best)
            iscale = np.where(better, isc, iscale)
        li = np.minimum(nearest_int(iscale * xt), nmax)
        L = li & 0xFF
        lf = li.astype(F32)
        WX = wt * xt
        sumlx = seq_sum0(WX * lf)
        suml2 = seq_sum0(wt * lf * lf)
        act = np.arange(nb)
        for _ in range(5):
            La = L[:, act]
            sx = sumlx[act]
            s2 = suml2[act]
            changed = _qp_pass(xt[:, act], wt[:, act], WX[:, act], La, sx, s2, nmax)
            L[:, act] = La
            sumlx[act] = sx
            suml2[act] = s2
            act = act[changed]
            if act.size == 0:
                break
        out = (sumlx / suml2).astype(F32)
    out[zero] = 0
    Lu = L.astype(np.uint8)
    Lu[:, zero] = 0
    return out, Lu


# ----------------------------------------------------------------------------------------- Q2_K

def _pack_q2_k(o: np.ndarray, sc: np.ndarray, L: np.ndarray, d_bits: np.ndarray, dmin_bits: np.ndarray) -> None:
    """Write blocks o uint8 (nb, 84) from scales uint8 (16, nb), L uint8 (16 i, 16 j, nb), d, dmin bits."""
    o[:, 0:16] = sc.T
    V = L.reshape(16, 2, 4, 2, -1)  # value 128h + 32s + 16jj + i at bits 2s of byte 32h + 16jj + i
    q = V[:, :, 0] | (V[:, :, 1] << 2) | (V[:, :, 2] << 4) | (V[:, :, 3] << 6)
    o[:, 16:80] = q.transpose(3, 1, 2, 0).reshape(-1, 64)
    o[:, 80:82] = d_bits.view(np.uint8).reshape(-1, 2)
    o[:, 82:84] = dmin_bits.view(np.uint8).reshape(-1, 2)


def _seq_sum(v: np.ndarray, acc: np.float32) -> np.float32:
    """acc + v[0] + v[1] + ... in float32, strictly in order (np.add.accumulate is sequential)."""
    t = np.empty(v.size + 1, dtype=F32)
    t[0] = acc
    t[1:] = v.reshape(-1)
    return F32(np.add.accumulate(t)[-1])


def trinet_exact(flat: np.ndarray, mx: np.float32) -> bool:
    """C's sums, float32 and strictly sequential: mse < 0.1f*mse0."""
    h = F32(0.5) * mx
    mse0 = F32(0)
    mse = F32(0)
    for a in range(0, flat.size, _TRINET_CHUNK):
        x = flat[a:a + _TRINET_CHUNK]
        lv = np.where(x < -h, F32(-1), np.where(x < h, F32(0), F32(1)))
        mse0 = _seq_sum(x * x, mse0)
        diff = x - mx * lv
        mse = _seq_sum(diff * diff, mse)
    return bool(mse < F32(0.1) * mse0)


def trinet_max(rows: np.ndarray) -> np.float32 | None:
    """quantize_row_q2_K_ref's TriNet test over all values of rows: max|x| if mse < 0.1*mse0, else None.

    C sums x² and (x - max*l)² in float32, one value after another. Those sums are first estimated
    in double (l != 0 only where |x| >= max/2, usually a few values); a float32 sequential sum of
    n non-negative terms is within a factor (1 + 2^-24)^n of the exact one, so unless the ratio
    falls inside that band around 0.1 (or the sums are near float32's range ends) the estimate
    decides, and otherwise C's sums are reproduced exactly.
    """
    flat = rows.reshape(-1)
    if flat.size == 0:
        return None
    mx = F32(max(F32(0), F32(flat.max()), -F32(flat.min())))
    if not np.isfinite(mx):
        return None
    h = F32(0.5) * mx
    s0 = 0.0
    s_in = 0.0
    d_in = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for a in range(0, flat.size, _TRINET_CHUNK):
            x = flat[a:a + _TRINET_CHUNK]
            x64 = x.astype(F64)
            s0 += float(x64 @ x64)
            xs = x[(x < -h) | (x >= h)]
            if xs.size:
                d = (xs - mx * np.where(xs < -h, F32(-1), F32(1))).astype(F64)
                xs64 = xs.astype(F64)
                s_in += float(xs64 @ xs64)
                d_in += float(d @ d)
        mse = (s0 - s_in) + d_in
        band = math.exp((flat.size + 8) * 2.0 ** -24 * 1.01) + 1e-6
        if 1e-30 < s0 < 1e36 and math.isfinite(mse):
            lim = float(F32(0.1)) * s0
            if mse * band * band < lim:
                return mx
            if mse > lim * band * band:
                return None
        return mx if trinet_exact(flat, mx) else None


def _trinet_blocks(rows: np.ndarray, mx: np.float32) -> np.ndarray:
    """Every block as ternary: d = dmin = fp16(max), scales 1 | 1 << 4, L = 0/1/2 (x < -max/2, < max/2)."""
    xs = rows.reshape(-1, QK_K)
    nb = xs.shape[0]
    h = F32(0.5) * mx
    lv = np.where(xs < -h, 0, np.where(xs < h, 1, 2)).astype(np.uint8)  # (nb, 256)
    out = np.empty((nb, Q2K_SIZE), dtype=np.uint8)
    bits = np.full(nb, fp32_to_fp16_bits(np.array([mx], dtype=F32))[0], dtype=np.uint16)
    L = np.ascontiguousarray(lv.reshape(nb, 16, 16).transpose(2, 1, 0))
    _pack_q2_k(out, np.full((16, nb), 0x11, dtype=np.uint8), L, bits, bits)
    return out


def _q2_k_ref_chunk(xs: np.ndarray, ws: Workspace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """quantize_row_q2_K_ref's per-block part (ik): mainline's search with ik's degenerate test."""
    nb = xs.shape[0]
    xt3 = to_subblocks_t(xs, 16, ws.get("q2i_x", (16, 16, nb)))
    xt = xt3.reshape(16, 16 * nb)
    wt = np.abs(xt, out=ws.get("q2i_w", (16, 16 * nb)))
    scales, mins, isc, mnu, deg = qkx_search_state_t(xt, wt, 3, -0.5, 0.1, 15, True, True, ws)
    # ik: `if (max - min < 1e-10f)` (min clamped to <= 0): L = 0, scale 0, the_min = -min
    mn = np.minimum(xt.min(axis=0), F32(0))
    tiny = (xt.max(axis=0) - mn) < F32(1e-10)
    if tiny.any():
        scales = np.where(tiny, F32(0), scales)
        mins = np.where(tiny, -mn, mins).astype(F32)
        deg = deg | tiny
    scales = scales.reshape(16, nb)
    mins = mins.reshape(16, nb)
    max_scale = running_max(scales)
    max_min = running_max(mins)
    q4 = F32(15.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        isc_s = np.where(max_scale > 0, q4 / max_scale, F32(0.0))
        imn = np.where(max_min > 0, q4 / max_min, F32(0.0))
        sc = np.where(max_scale > 0, nearest_int(isc_s * scales) & 0xFF, 0)
        sc = np.where(max_min > 0, sc | ((nearest_int(imn * mins) << 4) & 0xFF), sc).astype(np.uint8)
        d_bits = fp32_to_fp16_bits(np.where(max_scale > 0, max_scale / q4, F32(0.0)))
        dmin_bits = fp32_to_fp16_bits(np.where(max_min > 0, max_min / q4, F32(0.0)))
    d = fp16_bits_to_fp32(d_bits) * (sc & 0xF).astype(F32)
    dm = fp16_bits_to_fp32(dmin_bits) * (sc >> 4).astype(F32)
    L = requantize_t(xt3, d, dm, 3, (isc, mnu, deg), ws)
    return d_bits, dmin_bits, sc, L


def _q2_k_impl_chunk(xs: np.ndarray, qw3: np.ndarray, ws: Workspace
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """quantize_row_q2_K_impl (ik) on super-blocks xs (nb, 256), imatrix qw3 (16, 16, nb)."""
    nb = xs.shape[0]
    if nb == 1:  # numpy reduces a lone column pairwise, not in C's order: run two copies
        r = _q2_k_impl_chunk(np.repeat(xs, 2, axis=0), np.repeat(qw3, 2, axis=2), ws)
        return r[0][:1], r[1][:1], np.ascontiguousarray(r[2][:, :1]), np.ascontiguousarray(r[3][:, :, :1])
    xt3 = to_subblocks_t(xs, 16, ws.get("q2i_x", (16, 16, nb)))
    xt = xt3.reshape(16, 16 * nb)
    sigma2 = (F32(0.75) * superblock_sum_sq(xt3, ws)) / F32(QK_K)
    wt3 = np.multiply(xt3, xt3, out=ws.get("q2i_w", (16, 16, nb)))
    wt3 += sigma2
    np.sqrt(wt3, out=wt3)
    np.multiply(qw3, wt3, out=wt3)  # qw[l] * sqrtf(sigma2 + x*x)
    wt = wt3.reshape(16, 16 * nb)
    sw = seq_sum0(wt).reshape(16, nb)
    scales, mins, _ = make_qkx3_quants_ik_t(xt, wt, 3, -0.9, 0.05, 36, ws)
    dm, ls = make_qp_quants_ik_t(scales.reshape(16, nb), sw, 15)
    mm, lm = make_qp_quants_ik_t(mins.reshape(16, nb), sw, 15)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d_bits = fp32_to_fp16_bits(dm)
        dmin_bits = fp32_to_fp16_bits(mm)
        d = dm * ls.astype(F32)  # (16 j, nb), unrounded float scales
        m = mm * lm.astype(F32)
        idv = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(F32)
        t = np.add(xt3, m, out=ws.get("q2i_t", (16, 16, nb)))
        t *= idv
        if bool(np.isfinite(t).all()) and float(np.abs(t).max(initial=0.0)) < 4.0e6:
            np.rint(t, out=t)
            np.clip(t, F32(0), F32(3), out=t)
            L = t.astype(np.uint8)
        else:
            L = np.clip(nearest_int(t), 0, 3).astype(np.uint8)
    sc = (ls | (lm << 4)).astype(np.uint8)
    return d_bits, dmin_bits, sc, L


_UNDECIDED = object()


def quantize_q2_k_ik(rows: np.ndarray, imatrix: np.ndarray | None, trinet: object = _UNDECIDED) -> np.ndarray:
    """ik_llama.cpp quantize_q2_K: rows float32 (nrows, n) [, imatrix (n,)] -> uint8 (nrows, n/256*84).

    Without an imatrix, rows is treated as one ggml_quantize_chunk call (the TriNet test sees them
    all). A caller that quantizes one tensor in several pieces can decide the test once for the
    whole tensor (trinet = trinet_max(all rows): a float32 max or None) and pass it with each
    piece, which gives the bytes of a single call on the whole tensor (ik's single-thread
    llama-quantize).
    """
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n_per_row = rows.shape
    if imatrix is None:
        if trinet is _UNDECIDED:
            with np.errstate(over="ignore", invalid="ignore"):
                trinet = trinet_max(rows)
        if trinet is not None:
            return _trinet_blocks(rows, F32(trinet)).reshape(nrows, -1)  # type: ignore[arg-type]
    out = np.empty((nrows * (n_per_row // QK_K), Q2K_SIZE), dtype=np.uint8)
    qwc = None if imatrix is None else ImatrixCache(np.asarray(imatrix, dtype=F32), n_per_row, 16)
    ws = Workspace()
    for a, b, xs in superblock_chunks(rows, None if qwc is None else Q2K_IMPL_CHUNK):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if qwc is None:
                res = _q2_k_ref_chunk(xs, ws)
            else:
                res = _q2_k_impl_chunk(xs, qwc.get(a, b), ws)
        d_bits, dmin_bits, sc, L = res
        _pack_q2_k(out[a:b], sc, L, d_bits, dmin_bits)
    return out.reshape(nrows, -1)


# ----------------------------------------------------------------------------------------- Q3_K

def _q3_k_impl_chunk(xs: np.ndarray, qwt: np.ndarray, blk: np.ndarray, ws: Workspace) -> None:
    """quantize_row_q3_K_impl (ik) on super-blocks xs float32 (m, 256), imatrix qwt (16, 16*m)."""
    m = xs.shape[0]
    x2seq = ws.get("q3i_x2", (QK_K, m))
    np.copyto(x2seq, xs.T)
    x2seq *= x2seq
    sumx2 = seq_sum0(x2seq)
    sigma2 = (F32(2) * sumx2) / F32(QK_K)
    xt = to_sub_t(xs, ws.get("q3i_xt", (16, 16 * m)))  # column 16*b + j
    w = np.multiply(xt, xt, out=ws.get("q3i_w", (16, 16 * m)))
    w += np.repeat(sigma2, 16)[None, :]
    np.sqrt(w, out=w)
    w *= qwt  # weight = qw * sqrtf(sigma2 + x*x)
    sw = seq_sum0(w)
    scale, lt = make_qx_quants_ik_t(xt, w, 4, 1)
    d_block, ls_t = make_qx_quants_ik_t(np.ascontiguousarray(scale.reshape(m, 16).T),
                                        np.ascontiguousarray(sw.reshape(m, 16).T), 32, 1)
    ls = np.ascontiguousarray(ls_t.T)  # (m, 16), values 0..63
    d16 = fp32_to_fp16_bits(d_block)
    d = fp16_bits_to_fp32(d16)[:, None] * (ls.astype(F32) - F32(32))  # float * int8
    pack_q3_k(requantize(xs, d, lambda: lt, -4, 3, ws), blk)
    blk["scales"] = pack_scales_q3(ls)
    blk["d"] = d16


def quantize_q3_k_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik_llama.cpp quantize_q3_K with an imatrix: rows float32 (nrows, n), imatrix (n,) -> uint8."""
    if imatrix is None:
        raise ValueError("ik_llama.cpp quantizes Q3_K without an imatrix as mainline does (kquants.q3_k)")
    rows = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = rows.shape
    xs_all = rows.reshape(-1, QK_K)
    nb = xs_all.shape[0]
    out = np.empty(nb, dtype=BLOCK_Q3_K)
    chunk = chunk_size(nb, n // QK_K, Q3K_CHUNK)
    ws = thread_workspace()
    iml = ImatrixLayout(np.asarray(imatrix, dtype=F32), n, chunk, ws)
    for a in range(0, nb, chunk):
        b = min(nb, a + chunk)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            _q3_k_impl_chunk(xs_all[a:b], iml.get(a, b), out[a:b], ws)
    return out.view(np.uint8).reshape(nrows, -1)


QUANTIZE: dict = {"Q2_K": quantize_q2_k_ik, "Q3_K": quantize_q3_k_ik}
DEQUANTIZE: dict = {"Q2_K": dequantize_q2_k, "Q3_K": dequantize_q3_k}  # mainline's (same blocks)
register("Q2_K", quantize_q2_k_ik, mainline=(), ik=(False, True))
register("Q3_K", quantize_q3_k_ik, mainline=(), ik=(True,))  # without an imatrix: mainline's kernel
