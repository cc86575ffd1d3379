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
  kernels call these directly.

Inputs are assumed finite (no NaN); infinities and denormal ranges take an exact slow path.
"""

from __future__ import annotations

import numpy as np

from .rounding import nearest_int

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
_CHUNK_BLOCKS = 4096
_MAGIC = F32(12582912.0)


def _first_zero_signbit(xt: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sign bit of the first zero in each selected column of xt (n, n_blocks) -> bool (len(cols),)."""
    sub = xt[:, cols]
    first = np.argmax(sub == 0, axis=0)
    return np.signbit(sub[first, np.arange(sub.shape[1])])


def _min_max_t(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `min = x[0]; if (x[i] < min) min = x[i]` (and max) down axis 0, zero sign included."""
    mn = xt.min(axis=0)
    mx = xt.max(axis=0)
    z = np.nonzero(mn == 0)[0]
    if z.size:
        # the first zero in index order is the one C keeps (strict < never replaces -0 by +0)
        mn[z] = np.where(_first_zero_signbit(xt, z), F32(-0.0), F32(0.0))
    return mn, mx


def _round_clamp(t: np.ndarray, bound: np.ndarray, nmax_arr: np.ndarray, low: bool, out: np.ndarray) -> np.ndarray:
    """MAX(0, MIN(nmax, nearest_int(t))) as float32, into out (same shape as t).

    bound (n_blocks,) is an upper bound of |t| per block: where it is below 2^22 everywhere,
    nearest_int is round-half-to-even (np.rint); otherwise (huge or non-finite t) ggml's exact
    bit trick is used. low=False skips the clamp at 0 when the caller knows t >= 0.
    """
    if not (bound < F32(4.0e6)).all():
        li = nearest_int(t)
        np.clip(li, 0, int(nmax_arr.flat[0]), out=li)
        out[...] = li
        return out
    np.rint(t, out=out)
    np.minimum(out, nmax_arr, out=out)
    if low:
        np.maximum(out, F32(0.0), out=out)
    return out


def qkx_search_t(xt: np.ndarray, wt: np.ndarray | None, nmax: int, rmin: float, rdelta: float, nstep: int,
                 use_mad: bool, strict_eq: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants / make_qkx3_quants on the transposed layout.

    xt: float32 (n, n_blocks) C-contiguous; wt: float32 (n, n_blocks) or None (make_qkx3's
    weights = x*x). strict_eq selects make_qkx2's degenerate test `max == min` (make_qkx3 uses
    `max <= min`; identical for finite inputs). Returns (scale float32 (n_blocks,),
    the_min float32 (n_blocks,) = C's *the_min = -min, Lt uint8 (n, n_blocks)).

    As in C, a candidate that wins replaces `min`, and later candidates use the new min both in
    `iscale = (...)/(max - min)` and in `nearest_int(iscale*(x[i] - min))`.
    """
    n, nb = xt.shape
    if wt is None:
        wt = xt * xt
    mn, mx = _min_max_t(xt)
    xmin = mn.copy()  # the true minimum, for bounds of x - min
    # C starts these two sums from the first term (no `0 +`): starting from -0.0 is the same
    sum_w = np.add.reduce(wt, axis=0, initial=F32(-0.0))
    sum_x = np.add.reduce(wt * xt, axis=0, initial=F32(-0.0))
    mn = np.where(mn > 0, F32(0.0), mn)
    degenerate = (mx == mn) if strict_eq else (mx <= mn)
    mn_deg = mn
    if degenerate.any():
        # keep the arithmetic of degenerate blocks harmless; their result is set at the end
        mx = np.where(degenerate, mn + F32(1.0), mx)
        xmin = np.where(degenerate, mn, xmin)

    fnmax = F32(nmax)
    steps = [(F32(rmin) + F32(rdelta) * F32(i)) + fnmax for i in range(nstep + 1)]
    nmax_arr = np.full((n, nb), fnmax, dtype=F32)
    xm = xt - mn  # (n, nb) float32, C's x[i] - min
    lf = np.empty((n, nb), dtype=F32)
    tmp = np.empty((n, nb), dtype=F32)
    wl = np.empty((n, nb), dtype=F32)

    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        rng = mx - mn
        iscale0 = fnmax / rng
        scale = F32(1.0) / iscale0
        np.multiply(xm, iscale0, out=tmp)
        _round_clamp(tmp, np.abs(iscale0) * rng, nmax_arr, False, lf)
        L = lf.copy()
        # diff = scale*L + min - x
        np.multiply(lf, scale, out=tmp)
        tmp += mn
        tmp -= xt
        if use_mad:
            np.abs(tmp, out=tmp)
        else:
            np.multiply(tmp, tmp, out=tmp)
        tmp *= wt
        best = np.add.reduce(tmp, axis=0)

        if nstep >= 1:
            low = False  # x - min >= 0 while min is the block minimum (or 0)
            span = rng  # max |x - min|
            for s in steps:
                isc = s / rng
                np.multiply(xm, isc, out=tmp)
                _round_clamp(tmp, np.abs(isc) * span, nmax_arr, low, lf)
                np.multiply(wt, lf, out=wl)
                sum_l = np.add.reduce(wl, axis=0)
                np.multiply(wl, lf, out=tmp)
                sum_l2 = np.add.reduce(tmp, axis=0)
                np.multiply(wl, xt, out=tmp)
                sum_xl = np.add.reduce(tmp, axis=0)
                D = sum_w * sum_l2 - sum_l * sum_l
                valid = D > 0
                this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
                this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
                pos = this_min > 0
                if pos.any():
                    this_min = np.where(pos, F32(0.0), this_min)
                    this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
                np.multiply(lf, this_scale, out=tmp)
                tmp += this_min
                tmp -= xt
                if use_mad:
                    np.abs(tmp, out=tmp)
                else:
                    np.multiply(tmp, tmp, out=tmp)
                tmp *= wt
                mad = np.add.reduce(tmp, axis=0)
                better = valid & (mad < best)
                if better.any():
                    np.copyto(L, lf, where=better[None, :])
                    best = np.where(better, mad, best)
                    scale = np.where(better, this_scale, scale)
                    mn = np.where(better, this_min, mn)
                    np.subtract(xt, mn, out=xm)
                    rng = mx - mn
                    span = np.maximum(np.abs(rng), np.abs(xmin - mn))
                    low = bool((mn > xmin).any())

    scale = np.where(degenerate, F32(0.0), scale).astype(F32)
    the_min = np.where(degenerate, -mn_deg, -mn).astype(F32)
    Lt = L.astype(np.uint8)
    Lt[:, degenerate] = 0
    return scale, the_min, Lt


def make_qp_quants_t(xt: np.ndarray, wt: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qp_quants on the transposed layout: xt, wt float32 (n, n_blocks).

    Returns (scale float32 (n_blocks,), Lt uint8 (n, n_blocks)). L is C's uint8_t array, so a
    negative nearest_int wraps modulo 256 exactly as in C (and the refinement reads it back so).
    """
    n, nb = xt.shape
    fnmax = F32(nmax)
    mx = np.zeros(nb, dtype=F32)
    for i in range(n):
        mx = np.where(mx > xt[i], mx, xt[i])  # MAX(max, x[i])
    zero = mx < GROUP_MAX_EPS
    mxs = np.where(zero, F32(1.0), mx)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale = (fnmax / mxs).astype(F32)
        scale = (F32(1.0) / iscale).astype(F32)
        Lw = (nearest_int(xt * iscale) & 0xFF).astype(F32)  # uint8_t L[i]
        best = np.zeros(nb, dtype=F32)
        for i in range(n):
            diff = xt[i] - scale * Lw[i]
            best = best + wt[i] * diff * diff
        for is_ in (-4, -3, -2, -1, 1, 2, 3, 4):
            iscale_is = ((F32(0.1) * F32(is_) + fnmax) / mxs).astype(F32)
            scale_is = (F32(1.0) / iscale_is).astype(F32)
            li = np.minimum(nearest_int(xt * iscale_is), nmax).astype(F32)
            mse = np.zeros(nb, dtype=F32)
            for i in range(n):
                diff = xt[i] - scale_is * li[i]
                mse = mse + wt[i] * diff * diff
            better = mse < best
            best = np.where(better, mse, best)
            iscale = np.where(better, iscale_is, iscale)
        li = np.minimum(nearest_int(xt * iscale), nmax)
        L = (li & 0xFF).astype(np.int32)  # what C stores
        lf = li.astype(F32)
        sumlx = np.zeros(nb, dtype=F32)
        suml2 = np.zeros(nb, dtype=F32)
        for i in range(n):
            sumlx = sumlx + wt[i] * xt[i] * lf[i]
            suml2 = suml2 + wt[i] * lf[i] * lf[i]
        # an iteration that changes nothing leaves the state as it was, so running all 5
        # iterations equals C's early break
        for _ in range(5):
            for i in range(n):
                w = wt[i]
                x = xt[i]
                Li = L[i].astype(F32)
                slx = sumlx - w * x * Li
                sl2 = suml2 - w * Li * Li
                ok = (slx > 0) & (sl2 > 0)
                if not ok.any():
                    continue
                new_l = np.minimum(nearest_int(x * sl2 / np.where(ok, slx, F32(1.0))), nmax)
                ok &= new_l != L[i]
                nlf = new_l.astype(F32)
                slx = slx + w * x * nlf
                sl2 = sl2 + w * nlf * nlf
                take = ok & (slx * slx * suml2 > sumlx * sumlx * sl2)
                L[i] = np.where(take, new_l & 0xFF, L[i])
                sumlx = np.where(take, slx, sumlx)
                suml2 = np.where(take, sl2, suml2)
        out = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, F32(1.0)), F32(0.0)).astype(F32)
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
    for a in range(0, nb, _CHUNK_BLOCKS):
        b = min(nb, a + _CHUNK_BLOCKS)
        xt = np.ascontiguousarray(x[a:b].T)
        wt = None if weights is None else np.ascontiguousarray(weights[a:b].T)
        s, m, lt = qkx_search_t(xt, wt, nmax, rmin, rdelta, nstep, use_mad, strict_eq)
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
    x, weights = _blocks(x, weights)
    s, lt = make_qp_quants_t(np.ascontiguousarray(x.T), np.ascontiguousarray(weights.T), nmax)
    return s, np.ascontiguousarray(lt.T)
