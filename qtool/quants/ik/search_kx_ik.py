"""ik_llama.cpp's asymmetric (scale + min) search and make_qp_quants, vectorized over blocks.

ik_llama.cpp (ggml/src/ggml-quants.c) changed mainline's searches:

- `make_qkx3_quants` accumulates in double: sum_w, sum_x, sum_x2 and every candidate's sum_l,
  sum_l2, sum_xl ((double)w*l, ((double)w*l)*l, ((double)w*l)*(double)x, in index order); a
  candidate's error is the closed form sum_x2 - 2*s*sum_xl - 2*m*sum_x + 2*s*m*sum_l + s²*sum_l2
  + m²*sum_w (the first, from the initial iscale, is the explicit sum of w*diff² in double); a
  winner stores scale and min as float. Blocks with max - min < 1e-10f (min clamped to <= 0) are
  degenerate: L = 0, the_min = -min, scale 0. Then (use_mad false) a greedy descent: at each
  step the element with the largest |g|, g = x - scale*L - min (float), that can move one level
  in g's direction does so when the fitted score 2*s*sum_xl + 2*m*sum_x - 2*s*m*sum_l - s²*sum_l2
  - m²*sum_w rises; it stops at the first step that does not (or reverses the previous one, or
  D <= 0, or scale < 0), after at most nmax*n steps.
- `make_qkx2_quants` takes the same degenerate test (`max - min < 1e-10f`, mainline: max == min).
- `make_qp_quants` counts a block as all-zero when max < 1e-16f (mainline: 1e-15f).

Layout: the transposed one of search_kx.py, xt / wt (n, n_blocks) float32 C-contiguous (index in
block down axis 0: every reduction runs in C's order); the double sums are float64 reductions
down axis 0. The descent advances all blocks together, one numpy step per C iteration, on the
columns of the blocks still moving.
"""

from __future__ import annotations

import numpy as np

from ..numeric import c_einsum, seq_sum0, seq_sum_t
from ..rounding import nearest_int
from ..scratch import Workspace
from ..search_kx import make_qp_quants_t, qkx_fast_ok, qkx_min_max_t, qkx_search_state_t

F32 = np.float32
F64 = np.float64
QKX_DEGENERATE = F32(1e-10)
"""ik's `max - min < 1e-10f`: below it make_qkx2/3_quants return scale 0, L = 0."""
QP_ZERO = F32(1e-16)
"""ik make_qp_quants' all-zero threshold on the block maximum."""

__all__ = ["QKX_DEGENERATE", "QP_ZERO", "make_qkx3_ik_t", "make_qp_quants_ik_t", "qkx2_ik_state_t", "qkx_min_max_t"]


def qkx_degenerate_t(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ik's degenerate test of make_qkx2/3_quants: (mask (nb,), min clamped to <= 0 (nb,))."""
    mn, mx = qkx_min_max_t(xt)
    mn = np.where(mn > 0, F32(0.0), mn)
    with np.errstate(over="ignore", invalid="ignore"):
        deg = (mx - mn) < QKX_DEGENERATE
    return deg, mn


def qkx2_ik_state_t(xt: np.ndarray, wt: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                    ws: Workspace | None = None, use_mad: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ik make_qkx2_quants on the transposed layout: search_kx.qkx_search_state_t (mainline's
    search, identical for every block ik does not call degenerate) with ik's degenerate test.
    Returns (scale, the_min, isc, mnu, degenerate) as qkx_search_state_t does."""
    scale, the_min, isc, mnu, deg = qkx_search_state_t(xt, wt, nmax, rmin, rdelta, nstep, use_mad, True, ws)
    deg_ik, mn = qkx_degenerate_t(xt)
    if deg_ik.any():
        scale = np.where(deg_ik, F32(0.0), scale)
        the_min = np.where(deg_ik, -mn, the_min).astype(F32)
        deg = deg | deg_ik
    return scale, the_min, isc, mnu, deg


_EINSUM64: bool | None = None


def einsum64_is_sequential() -> bool:
    """Whether c_einsum("jb,jb->b", a, l) and ("jb,jb,jb->b", w, l, l) on float64 add the products
    to 0 one j after another (C's loop order). The products the searches form there are exact
    in double (float32 * small integer [* float32 or the integer again]: at most 53 bits), so a
    fused multiply-add changes nothing; only the order of the additions matters. Checked once
    per process; the searches fall back to multiply + reduce otherwise."""
    global _EINSUM64
    if _EINSUM64 is None:
        rng = np.random.default_rng(20250301)
        ok = True
        for nb in (2, 3, 17, 1029):
            w = (rng.standard_normal((32, nb)) * np.exp(rng.uniform(-20, 20, (32, nb)))).astype(F32).astype(F64)
            x = (rng.standard_normal((32, nb)) * np.exp(rng.uniform(-20, 20, (32, nb)))).astype(F32).astype(F64)
            lv = rng.integers(0, 32, (32, nb)).astype(F64)
            wx = w * x
            ok &= bool(np.array_equal(c_einsum("jb,jb->b", wx, lv), np.add.reduce(wx * lv, axis=0)))
            ok &= bool(np.array_equal(c_einsum("jb,jb,jb->b", w, lv, lv), np.add.reduce((w * lv) * lv, axis=0)))
        _EINSUM64 = ok
    return _EINSUM64


def _levels(xm: np.ndarray, isc: np.ndarray, nmax: int, exact: bool, clip_lo: bool, clip_hi: bool,
            t32: np.ndarray, out: np.ndarray) -> None:
    """out (float64) = clamp(nearest_int(isc*xm), 0, nmax); the product is rounded in float32.
    clip_lo / clip_hi: whether a level can fall below 0 / above nmax (else that clamp is a no-op)."""
    np.multiply(xm, isc, out=t32)
    if exact:
        out[...] = np.clip(nearest_int(t32), 0, nmax)
        return
    np.rint(t32, out=out)
    if clip_lo and clip_hi:
        np.clip(out, 0.0, float(nmax), out=out)
    elif clip_lo:
        np.maximum(out, 0.0, out=out)
    elif clip_hi:
        np.minimum(out, float(nmax), out=out)


def _sums(wd: np.ndarray, wx: np.ndarray, lf: np.ndarray, P: np.ndarray | None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """C's sum_l += w*l, sum_l2 += w*l*l, sum_xl += w*l*x (double, in index order) for levels lf.
    (w*l)*x == (w*x)*l: both products are exact in double, so wx = w*x serves."""
    if P is None:
        return c_einsum("jb,jb->b", wd, lf), c_einsum("jb,jb,jb->b", wd, lf, lf), c_einsum("jb,jb->b", wx, lf)
    np.multiply(wd, lf, out=P[0])
    np.multiply(P[0], lf, out=P[1])
    np.multiply(wx, lf, out=P[2])
    sl, sl2, sxl = seq_sum_t(P, 1)
    return sl, sl2, sxl


def _fit(sum_w: np.ndarray, sum_x: np.ndarray, sl: np.ndarray, sl2: np.ndarray, sxl: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """C's D, this_scale, this_min (with the `this_min > 0` fallback), all double."""
    D = sum_w * sl2 - sl * sl
    ts = (sum_w * sxl - sum_x * sl) / D
    tm = (sl2 * sum_x - sl * sxl) / D
    pos = tm > 0
    if pos.any():
        tm = np.where(pos, 0.0, tm)
        ts = np.where(pos, sxl / sl2, ts)
    return D, ts, tm


def _score(ts: np.ndarray, tm: np.ndarray, sl: np.ndarray, sl2: np.ndarray, sxl: np.ndarray,
           sum_w: np.ndarray, sum_x: np.ndarray) -> np.ndarray:
    """2*s*sum_xl + 2*m*sum_x - 2*s*m*sum_l - s*s*sum_l2 - m*m*sum_w, C's order, double."""
    return (2 * ts * sxl + 2 * tm * sum_x) - 2 * ts * tm * sl - ts * ts * sl2 - tm * tm * sum_w


def make_qkx3_ik_t(xt: np.ndarray, wt: np.ndarray, nmax: int, rmin: float = -0.9, rdelta: float = 0.05,
                   nstep: int = 36, ws: Workspace | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ik make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, false).

    xt, wt float32 (n, nb) C-contiguous. Returns (scale float32 (nb,), the_min float32 (nb,) =
    -min, Lt uint8 (n, nb)).

    The winning candidate's L is rebuilt at the end from its (iscale, min) with the same float
    operations; its double sums are kept from when it was evaluated (C recomputes the same ones).
    """
    n, nb = xt.shape
    if nb == 1:  # numpy reduces a lone column pairwise, not in C's order: run two copies
        s1, m1, l1 = make_qkx3_ik_t(np.repeat(xt, 2, axis=1), np.repeat(wt, 2, axis=1), nmax, rmin, rdelta, nstep, ws)
        return s1[:1], m1[:1], np.ascontiguousarray(l1[:, :1])
    ws = ws or Workspace()
    fnmax = F32(nmax)
    P = None if einsum64_is_sequential() else ws.get("k3_P", (3, n, nb), F64)
    xm = ws.get("k3_xm", (n, nb))  # x - min, float
    t32 = ws.get("k3_t", (n, nb))
    lf = ws.get("k3_l", (n, nb), F64)
    xd = ws.get("k3_xd", (n, nb), F64)
    xd[...] = xt
    wd = ws.get("k3_wd", (n, nb), F64)
    wd[...] = wt
    wx = ws.get("k3_wx", (n, nb), F64)
    np.multiply(wd, xd, out=wx)  # (double)w * (double)x, exact
    sum_w = seq_sum0(wd)
    sum_x = seq_sum0(wx)
    np.multiply(wx, xd, out=lf)
    sum_x2 = seq_sum0(lf)
    xmin, mx = qkx_min_max_t(xt)
    mn = np.where(xmin > 0, F32(0.0), xmin)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        deg = (mx - mn) < QKX_DEGENERATE
        mn_deg = mn.copy()
        if deg.any():  # keep their arithmetic harmless; their result is set at the end
            mx = np.where(deg, mn + F32(1.0), mx)
            xmin = np.where(deg, mn, xmin)
        np.subtract(xt, mn, out=xm)
        rng = mx - mn
        iscale = fnmax / rng
        scale = F32(1.0) / iscale
        steps = [(F32(rmin) + F32(rdelta) * F32(i)) + fnmax for i in range(nstep + 1)]
        top = F32(max(steps + [fnmax]))
        # below this, rint(isc*(x - min)) <= nmax whenever x - min <= max - min
        hi_free = fnmax + F32(0.5) - F32(1e-3) * fnmax
        exact = not qkx_fast_ok(rng, top, xmin, mn)
        lo = False  # x - min >= 0 while min is the block minimum (or 0)
        _levels(xm, iscale, nmax, exact, False, False, t32, lf)
        # best_mad: sum of w*diff*diff, diff = (double)scale*L + (double)min - (double)x
        dd = ws.get("k3_dd", (n, nb), F64)
        np.multiply(lf, scale.astype(F64), out=dd)
        dd += mn.astype(F64)
        dd -= xd
        np.multiply(dd, dd, out=dd)
        dd *= wd
        best = seq_sum0(dd)
        best_isc = iscale.copy()
        best_mnu = mn.copy()
        bsl, bsl2, bsxl = _sums(wd, wx, lf, P)  # the initial L's: C recomputes them when nothing wins
        for step in steps:
            isc = step / rng
            _levels(xm, isc, nmax, exact, lo, bool(step >= hi_free), t32, lf)
            sl, sl2, sxl = _sums(wd, wx, lf, P)
            D, ts, tm = _fit(sum_w, sum_x, sl, sl2, sxl)
            mad = sum_x2 - 2 * ts * sxl - 2 * tm * sum_x + 2 * ts * tm * sl + ts * ts * sl2 + tm * tm * sum_w
            idx = np.flatnonzero((D > 0) & (mad < best))
            if idx.size:
                best[idx] = mad[idx]
                scale[idx] = ts[idx]
                best_isc[idx] = isc[idx]
                best_mnu[idx] = mn[idx]
                bsl[idx] = sl[idx]
                bsl2[idx] = sl2[idx]
                bsxl[idx] = sxl[idx]
                mi = tm[idx].astype(F32)
                mn[idx] = mi
                if 4 * idx.size < nb:  # few winners: update only their columns
                    xm[:, idx] = xt[:, idx] - mi
                else:
                    np.subtract(xt, mn, out=xm)
                np.subtract(mx, mn, out=rng)
                if not exact:
                    exact = not qkx_fast_ok(rng[idx], top, xmin[idx], mi)
                if not lo:
                    lo = bool((mi > xmin[idx]).any())
        # the winning L (same float operations as when it was evaluated)
        np.subtract(xt, best_mnu, out=xm)
        exact = not qkx_fast_ok(mx - best_mnu, top, xmin, best_mnu)
        _levels(xm, best_isc, nmax, exact, True, True, t32, lf)
        L = lf.astype(np.uint8)
        _descend(xt, wd, L, scale, mn, bsl, bsl2, bsxl, sum_w, sum_x, nmax, ~deg)
    scale[deg] = 0
    the_min = np.where(deg, -mn_deg, -mn).astype(F32)
    if deg.any():
        L[:, deg] = 0
    return scale, the_min, L


def _descend(xt: np.ndarray, wd: np.ndarray, L: np.ndarray, scale: np.ndarray, mn: np.ndarray, sl: np.ndarray,
             sl2: np.ndarray, sxl: np.ndarray, sum_w: np.ndarray, sum_x: np.ndarray, nmax: int,
             live: np.ndarray) -> None:
    """The greedy descent of ik's make_qkx3_quants, in place on L (uint8 (n, nb)), scale, mn
    (float32 (nb,)), for the blocks in `live`. sl, sl2, sxl: the double sums of the current L.

    C's candidate test (g > 0 and L < nmax, or g < 0 and L > 0, first largest |g| wins) is
    |clip(g, LO, HI)| with LO = -inf where L > 0 else 0, HI = +inf where L < nmax else 0; LO and
    HI change only where a level moves."""
    n = xt.shape[0]
    act = np.flatnonzero(live)
    best = _score(scale[act].astype(F64), mn[act].astype(F64), sl[act], sl2[act], sxl[act], sum_w[act], sum_x[act])
    if act.size == xt.shape[1]:  # all live: no gather
        xa, wa = xt, wd
    else:
        xa, wa = xt[:, act], wd[:, act]
    La = L[:, act].astype(F32)
    fnmax = F32(nmax)
    inf = F32(np.inf)
    LO = np.where(La > 0, -inf, F32(0.0))
    HI = np.where(La < fnmax, inf, F32(0.0))
    sca, mna = scale[act], mn[act]
    sla, sl2a, sxla = sl[act], sl2[act], sxl[act]
    swa, sxa = sum_w[act], sum_x[act]
    last_j = np.full(act.size, -1)
    last_dir = np.zeros(act.size)
    g = np.empty_like(xa)
    for _ in range(nmax * n):
        if act.size == 0:
            break
        cols = np.arange(act.size)
        np.multiply(La, sca, out=g)
        np.subtract(xa, g, out=g)
        g -= mna  # C: x - scale*L - min
        np.clip(g, LO, HI, out=g)
        j = np.argmax(np.abs(g), axis=0)
        gj = g[j, cols]
        dr = np.where(gj > 0, 1.0, -1.0)
        stop = (gj == 0) | ((j == last_j) & (dr == -last_dir))
        w = wa[j, cols]
        lj = La[j, cols].astype(F64)
        nsl = sla + w * dr
        nsl2 = sl2a + w * (2 * lj * dr + 1)
        nsxl = sxla + w * xa[j, cols].astype(F64) * dr
        D, ts, tm = _fit(swa, sxa, nsl, nsl2, nsxl)
        score = _score(ts, tm, nsl, nsl2, nsxl, swa, sxa)
        stop |= (D <= 0) | (ts < 0) | (score <= best)
        go = np.flatnonzero(~stop)
        jg = j[go]
        nl = La[jg, go] + dr[go].astype(F32)
        La[jg, go] = nl
        LO[jg, go] = np.where(nl > 0, -inf, F32(0.0))
        HI[jg, go] = np.where(nl < fnmax, inf, F32(0.0))
        fin = np.flatnonzero(stop)
        if fin.size:
            L[:, act[fin]] = La[:, fin].astype(np.uint8)
            scale[act[fin]] = sca[fin]
            mn[act[fin]] = mna[fin]
            act = act[go]
            xa, wa, La, LO, HI = xa[:, go], wa[:, go], La[:, go], LO[:, go], HI[:, go]
            g = np.empty_like(xa)
            swa, sxa = swa[go], sxa[go]
        sca, mna = ts[go].astype(F32), tm[go].astype(F32)
        sla, sl2a, sxla = nsl[go], nsl2[go], nsxl[go]
        best = score[go]
        last_j, last_dir = jg, dr[go]
    if act.size:  # the step budget ran out
        L[:, act] = La.astype(np.uint8)
        scale[act] = sca
        mn[act] = mna


def make_qp_quants_ik_t(xt: np.ndarray, wt: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ik make_qp_quants(n, nmax, x, L, quant_weights) on xt, wt float32 (n, nb): mainline's
    algorithm (search_kx.make_qp_quants_t) with ik's all-zero threshold max < 1e-16f and its
    unguarded `return sumlx/suml2`.

    Returns (scale float32 (nb,), Lt uint8 (n, nb)); L is C's uint8_t array (a negative
    nearest_int wraps modulo 256, and the refinement reads it back so).
    """
    return make_qp_quants_t(xt, wt, nmax, zero_eps=QP_ZERO, guard_l2=False)
