"""ggml's asymmetric (scale + min) searches and make_qp_quants, vectorized over blocks.

Ports of ggml-quants.c `make_qkx2_quants`, `make_qkx3_quants` and `make_qp_quants`, bit for bit:
float32 wherever C uses float, C's sequential summation order (each reduction runs over the
in-block index, vectorized across blocks), C's expression order (`w*l*x` is `(w*l)*x`), no fused
multiply-add, ggml's `nearest_int`, and the `is` loop over the nstep+1 candidate scales.

Two calling conventions:
- `make_qkx3_quants(x, weights, nmax, ...)` etc. take and return the natural layout: x and weights
  float32 (n_blocks, n), L uint8 (n_blocks, n). They chunk and transpose internally.
- `qkx_search_t(xt, wt, ...)` / `make_qp_quants_t(xt, wt, nmax)` work on the transposed layout
  (n, n_blocks), C-contiguous, which keeps every step a contiguous numpy expression; the k-quant
  kernels call these (and `qkx_search_state_t`, which leaves L to be rebuilt only where needed)
  directly, with a `Workspace` of scratch buffers shared by their chunks.

Speed: about 2.5-3 ns per value and candidate scale on one core (numpy streams every step through
memory; ~260k values per chunk is the sweet spot). Inputs are assumed free of NaN; huge, tiny and
denormal ranges take an exact (bit-level nearest_int) path. A single block (one column on the
transposed layout) runs as two identical columns: numpy reduces a lone column pairwise, not in
C's order.

Workspace (shared by all the searches and kernels): named scratch buffers, page-aligned at
staggered offsets, whose memory comes from a per-thread pool and returns to it when no live
Workspace or outstanding view uses it; thread_workspace() is one kept for the thread's lifetime.
"""

from __future__ import annotations

import numpy as np

from .numeric import GROUP_MAX_EPS, first_zero_signbit, seq_sum0
from .rounding import nearest_int
from .scratch import Workspace

F32 = np.float32
_CHUNK_VALUES = 1 << 18  # values per chunk of the natural-layout API


def qkx_min_max_t(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `min = x[0]; if (x[i] < min) min = x[i]` (and max) down axis 0, zero sign included
    (shared with ik's searches)."""
    mn = xt.min(axis=0)
    mx = xt.max(axis=0)
    z = np.nonzero(mn == 0)[0]
    if z.size:
        # the first zero in index order is the one C keeps (strict < never replaces -0 by +0)
        mn[z] = np.where(first_zero_signbit(xt, z), F32(-0.0), F32(0.0))
    return mn, mx


def qkx_fast_ok(r: np.ndarray, top: np.float32, xmin: np.ndarray, mn: np.ndarray) -> bool:
    """Whether every |iscale*(x - min)| of these blocks stays below 2^22 and finite for every
    candidate (iscale <= top/r, r = max - min > 0, |x - min| <= max(r, |xmin - min|)); then
    nearest_int is np.rint and the clamp at nmax is only needed from s >= nmax + 0.5 on."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscm = top / r
        ok = (r > 0) & (r < F32(np.inf)) & (iscm < F32(np.inf)) & (np.abs(xmin - mn) * iscm < F32(4.0e6))
    return bool(ok.all())


def qkx_search_state_t(xt: np.ndarray, wt: np.ndarray | None, nmax: int, rmin: float, rdelta: float, nstep: int,
                       use_mad: bool, strict_eq: bool = False, ws: Workspace | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants / make_qkx3_quants on the transposed layout, without building L.

    xt: float32 (n, n_blocks) C-contiguous; wt: float32 (n, n_blocks) or None (make_qkx3's
    weights = x*x). strict_eq selects make_qkx2's degenerate test `max == min` (make_qkx3 uses
    `max <= min`; identical for finite inputs). ws: scratch buffers to reuse (optional).
    Returns (scale, the_min, isc, mnu, degenerate), each (n_blocks,): scale and the_min (= -min)
    are C's results; the winning L is clamp(nearest_int(isc*(x - mnu)), 0, nmax) (`recompute_L_t`),
    except L = 0 where degenerate.

    As in C, a candidate that wins replaces `min`, and later candidates use the new min both in
    `iscale = (...)/(max - min)` and in `nearest_int(iscale*(x[i] - min))`.
    """
    n, nb = xt.shape
    if nb == 1:  # numpy sums a single column pairwise, not in C's order: run two copies instead
        sc, mn, isc, mnu, deg = qkx_search_state_t(np.repeat(xt, 2, axis=1),
                                                   None if wt is None else np.repeat(wt, 2, axis=1),
                                                   nmax, rmin, rdelta, nstep, use_mad, strict_eq, ws)
        return sc[:1], mn[:1], isc[:1], mnu[:1], deg[:1]
    ws = ws or Workspace()
    LX = ws.get("qkx_LX", (2, n, nb))  # [l, x]: one broadcast multiply gives w*l*l and w*l*x
    P = ws.get("qkx_P", (3, n, nb))  # [w*l, w*l*l, w*l*x], reduced in one call
    xm = ws.get("qkx_xm", (n, nb))  # C's x[i] - min
    LX[1] = xt
    xt = LX[1]
    lf = LX[0]
    wl = P[0]
    tmp = P[1]
    if wt is None:
        wt = np.multiply(xt, xt, out=ws.get("qkx_w", (n, nb)))
    mn, mx = qkx_min_max_t(xt)
    xmin = mn.copy()  # the true minimum, for bounds of x - min
    # C starts these two sums from the first term (no `0 +`): starting from -0.0 is the same
    sum_w = np.add.reduce(wt, axis=0, initial=F32(-0.0))
    sum_x = np.add.reduce(np.multiply(wt, xt, out=tmp), axis=0, initial=F32(-0.0))
    mn = np.where(mn > 0, F32(0.0), mn)
    degenerate = (mx == mn) if strict_eq else (mx <= mn)
    mn_deg = mn.copy()
    if degenerate.any():
        # keep the arithmetic of degenerate blocks harmless; their result is set at the end
        mx = np.where(degenerate, mn + F32(1.0), mx)
        xmin = np.where(degenerate, mn, xmin)

    fnmax = F32(nmax)
    steps = [(F32(rmin) + F32(rdelta) * F32(i)) + fnmax for i in range(nstep + 1)] if nstep >= 1 else []
    top = F32(max(steps + [fnmax]))
    # below this, rint(isc*(x - min)) <= nmax whenever x - min <= max - min (fl(fl(s/r)*r) <= s(1+2^-23))
    hi_free = fnmax + F32(0.5) - F32(1e-3) * fnmax
    nmax_row = np.full(nb, fnmax, dtype=F32)  # clamps broadcast a row: faster than a scalar
    zero_row = np.zeros(nb, dtype=F32)
    np.subtract(xt, mn, out=xm)

    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        rng = mx - mn
        iscale0 = fnmax / rng
        scale = F32(1.0) / iscale0
        fast = qkx_fast_ok(rng, top, xmin, mn)
        np.multiply(xm, iscale0, out=lf)
        if fast:
            np.rint(lf, out=lf)  # <= nmax: fl(fl(nmax/r)*(x - min)) <= nmax(1 + 2^-23)
        else:
            lf[...] = np.clip(nearest_int(lf), 0, nmax)
        # diff = scale*L + min - x
        np.multiply(lf, scale, out=tmp)
        np.add(tmp, mn, out=tmp)
        np.subtract(tmp, xt, out=tmp)
        if use_mad:
            np.abs(tmp, out=tmp)
        else:
            np.square(tmp, out=tmp)
        np.multiply(tmp, wt, out=tmp)
        best = np.add.reduce(tmp, axis=0)
        best_isc = iscale0.copy()
        best_mnu = mn.copy()  # the min that was subtracted when the best L was made
        lo = False  # x - min >= 0 while min is the block minimum (or 0)

        for s in steps:
            isc = s / rng
            np.multiply(xm, isc, out=lf)
            if fast:
                np.rint(lf, out=lf)
                if s >= hi_free:
                    np.minimum(lf, nmax_row, out=lf)
                if lo:
                    np.maximum(lf, zero_row, out=lf)
            else:
                lf[...] = np.clip(nearest_int(lf), 0, nmax)
            np.multiply(wt, lf, out=wl)
            np.multiply(wl[None], LX, out=P[1:])
            sum_l, sum_l2, sum_xl = np.add.reduce(P, axis=1)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            if pos.any():
                this_min = np.where(pos, F32(0.0), this_min)
                this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            np.multiply(lf, this_scale, out=tmp)
            np.add(tmp, this_min, out=tmp)
            np.subtract(tmp, xt, out=tmp)
            if use_mad:
                np.abs(tmp, out=tmp)
            else:
                np.square(tmp, out=tmp)
            np.multiply(tmp, wt, out=tmp)
            mad = np.add.reduce(tmp, axis=0)
            idx = np.flatnonzero((D > 0) & (mad < best))
            if idx.size:
                best[idx] = mad[idx]
                scale[idx] = this_scale[idx]
                best_isc[idx] = isc[idx]
                best_mnu[idx] = mn[idx]
                mi = this_min[idx]
                mn[idx] = mi
                np.subtract(xt, mn, out=xm)
                np.subtract(mx, mn, out=rng)
                if fast:
                    fast = qkx_fast_ok(rng[idx], top, xmin[idx], mi)
                if not lo:
                    lo = bool((mi > xmin[idx]).any())

    scale[degenerate] = 0
    the_min = np.where(degenerate, -mn_deg, -mn).astype(F32)
    return scale, the_min, best_isc, best_mnu, degenerate


def recompute_L_t(xt: np.ndarray, isc: np.ndarray, mnu: np.ndarray, degenerate: np.ndarray, nmax: int) -> np.ndarray:
    """The search's winning L: clamp(nearest_int(isc*(x - mnu)), 0, nmax), 0 where degenerate.

    xt float32 (n, nb); isc, mnu float32 (nb,) -> uint8 (n, nb). Same float operations as when
    the candidate was evaluated, so the same L.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        t = (xt - mnu) * isc
    li = nearest_int(t)
    np.clip(li, 0, nmax, out=li)
    L = li.astype(np.uint8)
    if degenerate.any():
        L[:, degenerate] = 0
    return L


def qkx_search_t(xt: np.ndarray, wt: np.ndarray | None, nmax: int, rmin: float, rdelta: float, nstep: int,
                 use_mad: bool, strict_eq: bool = False, ws: Workspace | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants / make_qkx3_quants on the transposed layout (see qkx_search_state_t).

    Returns (scale float32 (n_blocks,), the_min float32 (n_blocks,) = C's *the_min = -min,
    Lt uint8 (n, n_blocks)).
    """
    scale, the_min, isc, mnu, deg = qkx_search_state_t(xt, wt, nmax, rmin, rdelta, nstep, use_mad, strict_eq, ws)
    return scale, the_min, recompute_L_t(xt, isc, mnu, deg, nmax)


def _qp_pass(xt: np.ndarray, wt: np.ndarray, WX: np.ndarray, L: np.ndarray, sumlx: np.ndarray,
             suml2: np.ndarray, nmax: int) -> np.ndarray:
    """One pass of make_qp_quants' `itry` loop (i = 0..n-1), in place on L (int32 (n, nb), C's
    uint8 values), sumlx, suml2 (nb,). Returns the per-block `n_changed > 0` mask.

    Instead of stepping i one by one for every block, all remaining steps are evaluated at once
    from the current state; each block's first accepted change is applied, and only the blocks
    that changed are evaluated again from the next i on. A step that is not taken leaves the
    state as it was, so this is the same sequence of states as C's loop.
    """
    n, nb = xt.shape
    changed = np.zeros(nb, dtype=bool)
    rows = np.arange(n)[:, None]
    act = np.arange(nb)  # blocks still in this pass
    start = np.zeros(nb, dtype=np.int64)  # first i still to do, per active block
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
        f = np.argmax(ok[:, k], axis=0)  # first step taken, per block
        blk = act[k]
        L[f, blk] = new_l[f, k] & 0xFF
        sumlx[blk] = slx[f, k]
        suml2[blk] = sl2[f, k]
        changed[blk] = True
        act = blk
        start = f + 1
        x, w, wx, La, sx, s2 = xt[:, act], wt[:, act], WX[:, act], L[:, act], sumlx[act], suml2[act]
    return changed


def make_qp_quants_t(xt: np.ndarray, wt: np.ndarray, nmax: int, ws: Workspace | None = None, *,
                     zero_eps: np.float32 = GROUP_MAX_EPS, guard_l2: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
    """make_qp_quants on the transposed layout: xt, wt float32 (n, n_blocks).

    Returns (scale float32 (n_blocks,), Lt uint8 (n, n_blocks)). L is C's uint8_t array, so a
    negative nearest_int wraps modulo 256 exactly as in C (and the refinement reads it back so).
    The 8 trial scales are evaluated at once; each refinement pass after the first runs only on
    the blocks that changed in the pass before (C breaks out for the others).

    ik_llama.cpp's make_qp_quants is the same algorithm with two differences, selected here:
    zero_eps, the all-zero test `max < zero_eps` (mainline GROUP_MAX_EPS = 1e-15f, ik 1e-16f), and
    guard_l2, mainline's `return suml2 > 0 ? sumlx/suml2 : 0` (ik returns sumlx/suml2: 0/0 is NaN).
    """
    n, nb = xt.shape
    if nb == 1:  # numpy sums a single column pairwise, not in C's order: run two copies instead
        s, lt = make_qp_quants_t(np.repeat(xt, 2, axis=1), np.repeat(wt, 2, axis=1), nmax, ws,
                                 zero_eps=zero_eps, guard_l2=guard_l2)
        return s[:1], np.ascontiguousarray(lt[:, :1])
    fnmax = F32(nmax)
    mx = np.max(xt, axis=0, initial=F32(0.0))  # MAX(max, x[i]) from 0; a zero's sign only matters when all-zero
    zero = mx < zero_eps
    mxs = np.where(zero, F32(1.0), mx)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale = fnmax / mxs
        scale = F32(1.0) / iscale
        Lw = (nearest_int(xt * iscale) & 0xFF).astype(F32)  # uint8_t L[i]
        diff = xt - scale * Lw
        best = np.add.reduce(wt * diff * diff, axis=0)
        isv = np.array([-4, -3, -2, -1, 1, 2, 3, 4], dtype=F32)
        iscale_is = (F32(0.1) * isv[:, None] + fnmax) / mxs  # (8, nb)
        scale_is = F32(1.0) / iscale_is
        ws = ws or Workspace()
        T3 = ws.get("qp_T3", (8, n, nb))
        np.multiply(xt[None], iscale_is[:, None, :], out=T3)
        # |iscale_is*x| <= (nmax + 0.4)*max(|x|)/max: where that is < 2^22, nearest_int is rint
        if bool((np.maximum(mxs, -np.min(xt, axis=0)) * (fnmax + F32(1.0)) < F32(4.0e6) * mxs).all()):
            np.rint(T3, out=T3)
            np.minimum(T3, np.full(nb, fnmax, dtype=F32), out=T3)
        else:
            T3[...] = np.minimum(nearest_int(T3), nmax)
        np.multiply(T3, scale_is[:, None, :], out=T3)
        np.subtract(xt[None], T3, out=T3)  # diff = x - scale_is*l
        U3 = np.multiply(wt[None], T3, out=ws.get("qp_U3", (8, n, nb)))
        U3 *= T3  # w*diff*diff
        mse = np.add.reduce(U3, axis=1)  # (8, nb)
        for k in range(8):
            better = mse[k] < best
            best = np.where(better, mse[k], best)
            iscale = np.where(better, iscale_is[k], iscale)
        li = np.minimum(nearest_int(xt * iscale), nmax)
        L = li & 0xFF  # what C stores
        lf = li.astype(F32)
        WX = wt * xt
        # C's sums start from +0 (seq_sum0); their zero sign reaches ik's unguarded sumlx/suml2
        sumlx = seq_sum0(WX * lf)
        suml2 = seq_sum0(wt * lf * lf)
        act = np.arange(nb)
        for _ in range(5):
            if act.size == nb:
                changed = _qp_pass(xt, wt, WX, L, sumlx, suml2, nmax)
            else:
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
        if guard_l2:
            out = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, F32(1.0)), F32(0.0)).astype(F32)
        else:
            out = (sumlx / suml2).astype(F32)
    out[zero] = 0
    L = L.astype(np.uint8)
    L[:, zero] = 0
    return out, L


def _blocks(x: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(x, dtype=F32)
    if x.ndim != 2:
        raise ValueError(f"x must be (n_blocks, n), got shape {x.shape}")
    if weights is not None:
        weights = np.asarray(weights, dtype=F32)
        if weights.shape != x.shape:
            raise ValueError(f"weights shape {weights.shape} != x shape {x.shape}")
    return x, weights


def _qkx(x: np.ndarray, weights: np.ndarray | None, nmax: int, rmin: float, rdelta: float, nstep: int,
         use_mad: bool, strict_eq: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, weights = _blocks(x, weights)
    nb, n = x.shape
    scale = np.empty(nb, dtype=F32)
    the_min = np.empty(nb, dtype=F32)
    L = np.empty((nb, n), dtype=np.uint8)
    ws = Workspace()
    chunk = max(1, _CHUNK_VALUES // n)
    for a in range(0, nb, chunk):
        b = min(nb, a + chunk)
        xt = np.ascontiguousarray(x[a:b].T)
        wt = None if weights is None else np.ascontiguousarray(weights[a:b].T)
        s, m, lt = qkx_search_t(xt, wt, nmax, rmin, rdelta, nstep, use_mad, strict_eq, ws)
        scale[a:b] = s
        the_min[a:b] = m
        L[a:b] = lt.T
    return scale, the_min, L


def make_qkx3_quants(x: np.ndarray, weights: np.ndarray | None, nmax: int, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml `make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad)`.

    x: float32 (n_blocks, n); weights: float32 (n_blocks, n) or None (then w = x*x, as in C).
    Returns (scale float32 (n_blocks,) = the C return value, the_min float32 (n_blocks,) = C's
    *the_min (= -min, so the block decodes as scale*L - the_min), L uint8 (n_blocks, n)).
    Q4_1/Q5_1 with imatrix use nmax 15/31, rmin -0.9, rdelta 0.05, nstep 36, use_mad False.
    """
    return _qkx(x, weights, nmax, rmin, rdelta, nstep, use_mad, strict_eq=False)


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml `make_qkx2_quants`; same arguments and results as make_qkx3_quants (weights required)."""
    if weights is None:
        raise ValueError("make_qkx2_quants needs weights")
    return _qkx(x, weights, nmax, rmin, rdelta, nstep, use_mad, strict_eq=True)


def make_qp_quants(x: np.ndarray, weights: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml `make_qp_quants(n, nmax, x, L, quant_weights)`: x, weights float32 (n_blocks, n).

    Returns (scale float32 (n_blocks,), L uint8 (n_blocks, n)).
    """
    x, w = _blocks(x, weights)
    assert w is not None  # make_qp_quants always has weights
    s, lt = make_qp_quants_t(np.ascontiguousarray(x.T), np.ascontiguousarray(w.T), nmax)
    return s, np.ascontiguousarray(lt.T)
