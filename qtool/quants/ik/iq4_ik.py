"""ik_llama.cpp's IQ4_NL and IQ4_XS: mainline's layout and final steps, ik's block scale search.

ik_llama.cpp's `quantize_row_iq4_nl_impl` differs from mainline's (nonlinear.py) in the search
for each block's scale d:

- the first candidate's d = sumqx/sumq2 is taken without mainline's `sumq2 > 0` guard;
- for itry = -ntry..ntry it tries id = (itry + kvalues[0])/max and then id = (itry + kvalues[15])/max
  (mainline: only the first), keeping the winner's sums;
- then a greedy descent: at each step, of the values whose gradient g = (d*w)*(x - d*q) points
  to a neighbouring level, the one with the smallest step (q_next - q)/g moves there; the move is
  kept when it raises sumqx²/sumq2, else the search stops (at most 32*32 steps).

With ntry = 7 (`quantize_iq4_nl` / `quantize_iq4_xs`, what llama-quantize calls) the levels are
then rebuilt from d as in mainline, but with ik's lookup best_index_iq4nl (best_index_ik_t).

A block whose weights are all 0 (an imatrix with a zero 32-block) gets d = sumqx/sumq2 = 0/0 =
NaN (no guard; no candidate passes `sumq2 > 0`, the descent sees g = NaN and stops). IQ4_NL
stores fp16(NaN) = 0xfe00 and levels best_index_iq4nl(NaN*x) = 0: (int)NaN is INT_MIN on x86,
so ix = INT_MIN + 127 < 0. IQ4_XS ignores the NaN in its max and stores 6-bit scale 0 (code 32,
nearest_int(NaN) = 0), levels best_index_iq4nl(0) = 8 (nonlinear.quantize_iq4_xs). Where d is
tiny (the only weighted value tiny), x/d >= 2^31 also gives level 0 in ik (mainline: 15).

With ntry = -1 (`quantize_row_iq4_nl`, the row quantizer quantize-stats measures) the first d is
-max/127 with no other candidate, the descent still runs, d is stored and the descent's levels
are kept.

Shapes: xt, wt (32, nb) float32, a block per column (C's summation order down axis 0); the
descent works on the (32, nact) columns of blocks still moving, one numpy step per C iteration.
"""

from __future__ import annotations

import numpy as np

from ..nonlinear import (
    BLOCK_IQ4_NL,
    KV_F32,
    KVALUES_IQ4NL,
    QK4_NL,
    best_index_t,
    iq4_weights_t,
    pack_nibbles_t,
    quantize_iq4_nl,
    quantize_iq4_xs,
)
from ..numeric import GROUP_MAX_EPS, absmax_t, blocks_t, fp16_bits, ieee, seq_sum_t
from ..registry import register

F32 = np.float32
NTRY = 7
_V0 = int(KVALUES_IQ4NL[0])
_V15 = int(KVALUES_IQ4NL[15])
_KV_SQ = (KVALUES_IQ4NL.astype(np.int32) ** 2).astype(F32)  # values[l]*values[l], exact int products


_INT_MIN_AT = F32(2.0 ** 31)  # (int)x is INT_MIN on x86 for x >= 2^31, +inf, NaN (and x < -2^31)


def best_index_ik_t(a: np.ndarray) -> np.ndarray:
    """ik's best_index_iq4nl(kvalues_iq4nl, a) for float32 a (any shape) -> uint8: mainline's level
    (best_index_t) for every a that (int) converts; where (int)a is INT_MIN (NaN, a >= 2^31,
    a < -2^31), ix = INT_MIN + 127 < 0 gives level 0 (mainline's binary search: 15 above)."""
    lt = best_index_t(a)
    lt[~(a < _INT_MIN_AT)] = 0
    return lt


def iq4_sums(xt: np.ndarray, wt: np.ndarray, lt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sumqx, sumq2) (nb,) for levels lt: sum (w*q)*x, sum (w*q)*q from +0 in index order."""
    q = KV_F32[lt]
    wq = wt * q
    return seq_sum_t(wq * xt), seq_sum_t(wq * q)


def search_ik_t(xt: np.ndarray, wt: np.ndarray, ntry: int = NTRY) -> tuple[np.ndarray, np.ndarray]:
    """ik_llama.cpp's per-block search on xt, wt float32 (32, nb) -> (d float32 (nb,), levels uint8
    (32, nb)); blocks with max |x| < 1e-15 get d = 0 (their levels are not meaningful)."""
    amax, mx = absmax_t(xt)
    ok = amax >= GROUP_MAX_EPS
    mx = np.where(ok, mx, F32(1))
    d = (-mx / F32(_V0)) if ntry > 0 else (mx / F32(_V0))
    lt = best_index_t(xt * (F32(1) / d))
    sumqx, sumq2 = iq4_sums(xt, wt, lt)
    d = sumqx / sumq2
    best = d * sumqx
    for itry in range(-ntry, ntry + 1):
        for v in (_V0, _V15):
            cand = best_index_t(xt * (F32(itry + v) / mx))
            sx, s2 = iq4_sums(xt, wt, cand)
            upd = (s2 > 0) & (sx * sx > best * s2)
            if upd.any():
                dn = sx / s2
                d = np.where(upd, dn, d)
                best = np.where(upd, dn * sx, best)
                sumqx = np.where(upd, sx, sumqx)
                sumq2 = np.where(upd, s2, sumq2)
                lt = np.where(upd[None, :], cand, lt)
    _descend(xt, wt, lt, d, best, sumqx, sumq2, np.flatnonzero(ok))
    return np.where(ok, d, F32(0)), lt


def _descend(xt: np.ndarray, wt: np.ndarray, lt: np.ndarray, d: np.ndarray, best: np.ndarray,
             sumqx: np.ndarray, sumq2: np.ndarray, act: np.ndarray) -> None:
    """C's greedy loop, in place on lt and d (columns act)."""
    for _ in range(32 * QK4_NL):
        if act.size == 0:
            return
        x = xt[:, act]
        w = wt[:, act]
        li = lt[:, act].astype(np.intp)
        da = d[act]
        q = KV_F32[li]
        g = (da * w) * (x - da * q)
        up_ok = (g > 0) & (li < 15)
        dn_ok = (g < 0) & (li > 0)
        nxt = np.where(up_ok, li + 1, np.where(dn_ok, li - 1, li))
        dv = KV_F32[nxt] - q  # values[L±1] - values[L]: small ints, exact
        step = np.full(g.shape, np.inf, dtype=F32)
        m = up_ok | dn_ok
        step[m] = dv[m] / g[m]
        j = np.argmin(step, axis=0)  # the first of the smallest (C: strict < from INFINITY)
        cols = np.arange(act.size)
        ok = step[j, cols] < np.inf
        wj = w[j, cols]
        lj = li[j, cols]
        nj = nxt[j, cols]
        new_sx = sumqx[act] + (wj * x[j, cols]) * dv[j, cols]
        new_s2 = sumq2[act] + wj * (_KV_SQ[nj] - _KV_SQ[lj])
        ok &= (new_s2 > 0) & (new_sx * new_sx > best[act] * new_s2)
        if not ok.any():
            return
        a = act[ok]
        sumqx[a] = new_sx[ok]
        sumq2[a] = new_s2[ok]
        d[a] = new_sx[ok] / new_s2[ok]
        best[a] = d[a] * new_sx[ok]
        lt[j[ok], a] = nj[ok].astype(np.uint8)
        act = a


def scale_search_ik_t(xt: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """The block scales of ik's quantize_row_iq4_nl_impl with ntry = 7 (llama-quantize's path)."""
    return search_ik_t(xt, wt, NTRY)[0]


def quantize_iq4_nl_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik_llama.cpp quantize_iq4_nl: rows float32 (nrows, n) -> uint8 (nrows, n/32*18)."""
    return quantize_iq4_nl(rows, imatrix, scale_search_ik_t, best_index_ik_t)


def quantize_iq4_xs_ik(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ik_llama.cpp quantize_iq4_xs: rows float32 (nrows, n) -> uint8 (nrows, n/256*136)."""
    return quantize_iq4_xs(rows, imatrix, scale_search_ik_t, best_index_ik_t)


@ieee
def quantize_row_iq4_nl_ik(rows: np.ndarray) -> np.ndarray:
    """ik_llama.cpp quantize_row_iq4_nl (ntry = -1, no imatrix): the row quantizer that
    llama-quantize-stats measures for IQ4_NL (llama-quantize itself calls quantize_iq4_nl)."""
    nrows, n = rows.shape
    xt = blocks_t(rows.reshape(-1, QK4_NL))
    d, lt = search_ik_t(xt, iq4_weights_t(xt, None, None), -1)
    out = np.empty(xt.shape[1], BLOCK_IQ4_NL)
    out["d"] = fp16_bits(d)
    out["qs"] = pack_nibbles_t(np.where(d != 0, lt, 0).astype(np.uint8))
    return out.view(np.uint8).reshape(nrows, -1)


QUANTIZE: dict = {"IQ4_NL": quantize_iq4_nl_ik, "IQ4_XS": quantize_iq4_xs_ik}
register("IQ4_NL", quantize_iq4_nl_ik, mainline=())
register("IQ4_XS", quantize_iq4_xs_ik, mainline=())
