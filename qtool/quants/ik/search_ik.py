"""ik_llama.cpp's `make_qx_quants`, vectorized over blocks (transposed layout, like search.py).

ik_llama.cpp changed mainline's search in two ways (ggml/src/ggml-quants.c, `make_qx_quants`):

1. Candidates: after the first iscale -nmax/max, for is = -9..9 (0 included) it tries
   -(nmax + 0.1*is)/max and then (nmax - 1 + 0.1*is)/max, in that order: 1 + 38 candidates.
   A candidate replaces the best when suml2 > 0 and sumlx*sumlx > best*suml2 (as mainline), and
   the winner's sums are kept.
2. A greedy coordinate descent from the winner: at each step the element with the largest
   |g|, g = (scale*w)*(x - scale*l), that can still move in g's direction moves one level; the
   step is kept when it raises sumlx²/suml2 (same test), else the search stops. At most
   n*(2*nmax-1) steps.

Shapes: xt, W (n, nb) float32 C-contiguous (index in block down axis 0, C's summation order);
candidate sums (2, 39, nb); the descent works on the (n, nact) columns of the blocks still
moving, one numpy step per C iteration (all blocks advance together; a block leaves when it
stops). Sums are float32 from +0 in index order, C's expression order, no fused multiply-add.
"""

from __future__ import annotations

import numpy as np

from ..search import GROUP_MAX_EPS, dot_sums, first_absmax_t, qx_weights_t

F32 = np.float32

__all__ = ["make_qx_quants_ik_t"]


def _candidate_iscales(mx: np.ndarray, nmax: int) -> np.ndarray:
    """(39, nb): -nmax/max, then per is = -9..9: -(nmax + 0.1*is)/max, (nmax-1 + 0.1*is)/max."""
    rows = [F32(-nmax)]
    for i in range(-9, 10):
        t = F32(0.1) * F32(i)
        rows.append(-(F32(nmax) + t))
        rows.append(F32(nmax - 1) + t)
    num = np.array(rows, dtype=F32)[:, None]
    return (num / mx[None, :]).astype(F32)


def _levels(xt: np.ndarray, isc: np.ndarray, nmax: int) -> np.ndarray:
    """clamp(nearest_int(isc*x), -nmax, nmax-1) as float32 (n, nb); |isc*x| <= nmax + 1, so rint."""
    t = np.rint(xt * isc[None, :])
    np.clip(t, F32(-nmax), F32(nmax - 1), out=t)
    return t


def make_qx_quants_ik_t(xt: np.ndarray, qwt: np.ndarray | None, nmax: int, rmse_type: int = 1
                        ) -> tuple[np.ndarray, np.ndarray]:
    """ik_llama.cpp `make_qx_quants(n, nmax, x, L, rmse_type, qw)` for rmse_type >= 1 on xt (n, nb).

    Returns (scale float32 (nb,), Lt uint8 (n, nb) = C's L[] (level + nmax; 0 for blocks with
    max |x| < 1e-15, whose scale is 0)).
    """
    if rmse_type < 1:
        raise ValueError("only rmse_type >= 1 (the variant the quantizers use) is ported")
    xt = np.ascontiguousarray(xt, dtype=F32)
    n, nb = xt.shape
    if nb == 1:  # numpy sums a lone column pairwise, not in order: run two copies
        s, lt = make_qx_quants_ik_t(np.repeat(xt, 2, axis=1), None if qwt is None else np.repeat(qwt, 2, axis=1),
                                    nmax, rmse_type)
        return s[:1], np.ascontiguousarray(lt[:, :1])
    amax, mx = first_absmax_t(xt)
    zero = amax < GROUP_MAX_EPS
    mxs = np.where(zero, F32(1), mx).astype(F32)
    W = qx_weights_t(xt, rmse_type, np.empty_like(xt)) if qwt is None else np.ascontiguousarray(qwt, dtype=F32)
    WX = W * xt  # C's w*x[i], the first product of w*x[i]*l
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        ISC = _candidate_iscales(mxs, nmax)
        K = ISC.shape[0]
        R = np.empty((2, K, nb), dtype=F32)
        for k in range(K):
            dot_sums(WX, W, _levels(xt, ISC[k], nmax), R[:, k])
        SLX, SL2 = R[0], R[1]
        scale = np.where(SL2[0] != 0, SLX[0] / SL2[0], F32(0)).astype(F32)  # suml2 ? sumlx/suml2 : 0
        best = (scale * SLX[0]).astype(F32)
        sumlx = SLX[0].copy()
        suml2 = SL2[0].copy()
        kbest = np.zeros(nb, dtype=np.intp)
        for k in range(1, K):
            take = (SL2[k] > 0) & (SLX[k] * SLX[k] > best * SL2[k])
            if take.any():
                sc = SLX[k] / SL2[k]
                scale = np.where(take, sc, scale)
                best = np.where(take, sc * SLX[k], best)
                sumlx = np.where(take, SLX[k], sumlx)
                suml2 = np.where(take, SL2[k], suml2)
                kbest[take] = k
        L = _levels(xt, ISC[kbest, np.arange(nb)], nmax)
        _descend(xt, W, L, scale, best, sumlx, suml2, nmax, np.flatnonzero(~zero))
    scale[zero] = 0
    L += F32(nmax)
    Lt = L.astype(np.uint8)
    Lt[:, zero] = 0
    return scale, Lt


def _descend(xt: np.ndarray, W: np.ndarray, L: np.ndarray, scale: np.ndarray, best: np.ndarray,
             sumlx: np.ndarray, suml2: np.ndarray, nmax: int, act: np.ndarray) -> None:
    """C's greedy loop, in place on L and scale (columns act of the (n, nb) arrays)."""
    n = xt.shape[0]
    lo, hi = F32(-nmax), F32(nmax - 1)
    for _ in range(n * (2 * nmax - 1)):
        if act.size == 0:
            return
        x = xt[:, act]
        w = W[:, act]
        lv = L[:, act]
        s = scale[act]
        g = (s * w) * (x - s * lv)
        ag = np.abs(g)
        ag[~(((g > 0) & (lv < hi)) | ((g < 0) & (lv > lo)))] = 0
        j = np.argmax(ag, axis=0)  # the first of the largest (C: strict > from 0)
        cols = np.arange(act.size)
        ok = ag[j, cols] > 0
        up = g[j, cols] > 0
        wj = w[j, cols]
        lj = lv[j, cols]
        wx = wj * x[j, cols]
        new_lx = np.where(up, sumlx[act] + wx, sumlx[act] - wx)
        new_l2 = np.where(up, suml2[act] + wj * (F32(2) * lj + F32(1)), suml2[act] - wj * (F32(2) * lj - F32(1)))
        ok &= (new_l2 > 0) & (new_lx * new_lx > best[act] * new_l2)
        if not ok.any():
            return
        a = act[ok]
        sumlx[a] = new_lx[ok]
        suml2[a] = new_l2[ok]
        scale[a] = new_lx[ok] / new_l2[ok]
        best[a] = scale[a] * new_lx[ok]
        L[j[ok], a] += np.where(up[ok], F32(1), F32(-1))
        act = a
