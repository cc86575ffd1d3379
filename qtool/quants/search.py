"""ggml's symmetric scale searches, vectorized over blocks: `make_qx_quants`, `make_q3_quants`.

Ports of ggml-quants.c `make_qx_quants` and `make_q3_quants`, bit for bit: float32 wherever C
uses float, C's sequential summation order (every reduction runs down the in-block index,
vectorized across blocks), C's expression order (`w*x[i]*l` is `(w*x)*l`), no fused multiply-add,
ggml's `nearest_int`. Inputs are assumed finite (no NaN / inf).

Public API (other modules import these; the names and signatures are stable):

- ``make_qx_quants(n, nmax, x, rmse_type, qw=None) -> (scale, L)``
  natural layout: x float32 (n_blocks, n), qw float32 (n_blocks, n) or None;
  scale float32 (n_blocks,) = C's return value, L uint8 (n_blocks, n) = C's L[] (l + nmax in
  0..2*nmax-1, or all 0 for a block with max |x| < 1e-15).
- ``make_qx_quants_t(xt, qwt, nmax, rmse_type, ws=None) -> (scale, Lt)``
  the same on the transposed layout: xt, qwt float32 (n, n_blocks) C-contiguous, Lt uint8
  (n, n_blocks). The kernels call this one directly (no transposes of their own).
- ``make_q3_quants(n, nmax, x, do_rmse) -> (scale, L)`` and
  ``make_q3_quants_t(xt, nmax, do_rmse=True, ws=None) -> (scale, Lt)``: the same conventions.
- ``qx_search_state_t(xt, qwt, nmax, rmse_type, ws=None) -> (scale, iscale, zero)``: the search
  without building L; ``qx_levels_t(xt, iscale, nmax, zero)`` builds it (float32 (n, nb)).
- ``dot_sums(WX, W, T, out)``: C's `sumlx += w*x*l; suml2 += w*l*l` over axis 0 (see step 3).

Steps of make_qx_quants_t on xt (n, nb):
1. max / amax: the first element of largest |x| (C's strict `>` from 0): max and min down
   axis 0 -> (nb,), the first-occurrence rule looked up only where +amax and -amax both occur.
   Blocks with amax < GROUP_MAX_EPS return scale 0, L = 0.
2. weights w (n, nb): qw, or x*x / 1 / |x| / sqrt|x| for rmse_type 1 / 2 / 3 / 4+ (no qw);
   wx = w*x (n, nb). The 19 candidate iscales are one (19, nb) array: -nmax/max, then
   -(nmax + 0.1*is)/max for is = -9..9, is != 0.
3. Candidate k's levels are l = clamp(rint(isc_k*x), -nmax, nmax-1) (n, nb) (|isc_k*x| <= nmax+1,
   so nearest_int is rint). The clamp is not a pass per candidate: _clip_groups splits the
   candidates into <= 3 groups (no clamp possible / upper end / both ends) and each group runs on
   one copy of x clipped per block at bounds c*|max| with rint(isc_k*bound) = nmax-1 (or -nmax)
   for all its candidates; fl(isc*x) and rint are monotone, so the clipped values get exactly
   the clamped levels and no other value passes a clamp. The bounds need no check for
   |max| <= 1e30 (three roundings stay far inside the intervals) and are checked on the floats
   above that, falling back to explicit clamps if a check fails.
   Then [sumlx, suml2] (2, nb) = the sequential sums of wx*l and (w*l)*l down axis 0 from +0
   (dot_sums: einsum where a runtime check shows it sums in C's order without fused
   multiply-add, else multiply + np.add.reduce), into a (2, 19, nb) array.
4. C's selection, in candidate order on (nb,) rows, from the (2, 19, nb) sums: the first
   candidate gives scale = sumlx/suml2 (0 if suml2 == 0), best = scale*sumlx; a later one
   replaces them when suml2 > 0 and sumlx*sumlx > best*suml2 (sumlx*sumlx, sumlx/suml2 and
   scale*sumlx of all candidates are computed at once; the scan is a multiply, a compare and a
   putmask per candidate). The winning candidate's iscale is kept, and L is rebuilt from it
   only where needed (qx_levels_t: the same float operations give the same L).
rmse_type 0 and negative rmse_type (return early) stop after the first candidate, as in C.

Every sequential sum is np.add.reduce (or einsum) down axis 0 (or 1) of a C-contiguous array
with more than one column: numpy then adds row after row in order. (A single column is summed
pairwise; such inputs are run as two identical columns.)

make_q3_quants_t on xt (n, nb): initial L from -nmax/max, weights x*x, sums as above; then up to
5 passes of C's coordinate descent. A pass steps through i = 0..n-1 like C, each step one set of
numpy calls on the (nb,) rows of the transposed layout, so every block goes through exactly
C's sequence of states (w*x[i]*L[i] and w*L[i]*L[i] of all rows are taken at the start of the
pass: row i changes only at step i); accepted steps are applied by index. Passes after the
first run only on the blocks that changed in the one before, gathered into (n, nact) arrays;
below _Q3_SEQ_MIN blocks a pass instead evaluates all remaining steps of every block at once,
applies each block's first accepted change and re-evaluates only those blocks from the next i.

Speed (one core, numpy 2.4, this machine): qx_search_state_t on (16, 8192) ~48 M values/s
(19 candidates, ~1 ns per value and candidate), (32, 8192) ~55-59 M values/s; make_q3_quants_t
on (16, 32768) ~70 M values/s. Scratch comes from a Workspace (names "qx_*", "q3_*", "q3p_*"):
fresh multi-megabyte temporaries cost about as much in page faults as the arithmetic.
"""

from __future__ import annotations

import functools

import numpy as np

from .numeric import GROUP_MAX_EPS, c_einsum
from .rounding import nearest_int
from .scratch import Workspace

F32 = np.float32
_CHUNK_VALUES = 1 << 18  # values per chunk of the natural-layout API
_SAFE_MAX = F32(1e30)  # below this |max|, the clip bounds of _clip_groups need no check (tests lower it)

__all__ = ["GROUP_MAX_EPS", "Workspace", "dot_sums", "einsum_is_sequential", "first_absmax_t", "make_q3_quants",
           "make_q3_quants_t", "make_qx_quants", "make_qx_quants_t", "qx_levels_t", "qx_search_state_t"]


def first_absmax_t(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }` from amax = max = 0,
    down axis 0 of xt (n, nb) -> (amax, max) float32 (nb,).

    max is +amax or -amax; only where both occur does the first one in index order decide
    (looked up for those blocks alone). Two plain reductions instead of argmax, which numpy
    runs along axis 0 through a transposed copy.
    """
    hi = xt.max(axis=0)
    lo = xt.min(axis=0)
    nlo = -lo
    amax = np.maximum(hi, nlo)
    mx = np.where(hi >= nlo, hi, lo)
    both = (hi == nlo) & (hi > 0)
    if both.any():
        cols = np.flatnonzero(both)
        sub = xt[:, cols]
        first = np.argmax(np.abs(sub) == amax[cols], axis=0)
        mx[cols] = sub[first, np.arange(cols.size)]
    none = ~(amax > 0)  # all zero: C never updates, max stays +0
    if none.any():
        mx[none] = 0
        amax[none] = 0
    return amax, mx


_EINSUM_SEQUENTIAL: bool | None = None


def einsum_is_sequential() -> bool:
    """Whether np.einsum("jb,jb->b", a, l) and ("jb,jb,jb->b", w, l, l) compute C's loops exactly:
    float32 products (a*l, then (w*l)*l) added to +0 one j after another, no fused multiply-add.

    numpy's einsum does so when its kernels are built without FMA (x86-64 baselines below v3)
    and it is about twice as fast as multiply + reduce; this is checked once per process on data
    where any other order, pairing or fusion shows, and dot_sums falls back to plain ufuncs
    otherwise.
    """
    global _EINSUM_SEQUENTIAL
    if _EINSUM_SEQUENTIAL is None:
        rng = np.random.default_rng(20240611)
        ok = True
        for nb in (2, 3, 17, 4099):
            a = (rng.standard_normal((32, nb)) * np.exp(rng.uniform(-8, 8, (32, nb)))).astype(F32)
            w = rng.uniform(0, 3, (32, nb)).astype(F32)
            lv = rng.integers(-33, 33, (32, nb)).astype(F32)
            want0 = np.add.reduce(a * lv, axis=0, initial=F32(0))
            want1 = np.add.reduce((w * lv) * lv, axis=0, initial=F32(0))
            got0 = c_einsum("jb,jb->b", a, lv)
            got1 = c_einsum("jb,jb,jb->b", w, lv, lv)
            ok &= got0.dtype == F32 and got1.dtype == F32
            ok &= bool(np.array_equal(got0.view(np.uint32), want0.view(np.uint32)))
            ok &= bool(np.array_equal(got1.view(np.uint32), want1.view(np.uint32)))
        _EINSUM_SEQUENTIAL = ok
    return _EINSUM_SEQUENTIAL


def dot_sums(WX: np.ndarray, W: np.ndarray, T: np.ndarray, out: np.ndarray, P: np.ndarray | None = None) -> None:
    """out[0] = sum_j WX[j]*T[j], out[1] = sum_j (W[j]*T[j])*T[j], float32, summed from +0 in j order
    (C's `sumlx += w*x[i]*l; suml2 += w*l*l` with WX = w*x), for (n, nb) arrays with nb > 1.

    P: float32 scratch (2, n, nb), needed only when einsum_is_sequential() is false.
    """
    if P is None and einsum_is_sequential():
        c_einsum("jb,jb->b", WX, T, out=out[0])
        c_einsum("jb,jb,jb->b", W, T, T, out=out[1])
        return
    if P is None:
        P = np.empty((2,) + T.shape, dtype=F32)
    np.multiply(WX, T, out=P[0])  # (w*x)*l
    np.multiply(W, T, out=P[1])
    np.multiply(P[1], T, out=P[1])  # (w*l)*l
    np.add.reduce(P, axis=1, initial=F32(0), out=out)  # sequential sums from +0, C's order


def qx_weights_t(xt: np.ndarray, rmse_type: int, out: np.ndarray) -> np.ndarray:
    """C's `qw ? qw[i] : rmse_type == 1 ? x*x : rmse_type == 2 ? 1 : rmse_type == 3 ? |x| : sqrt|x|`
    without qw, into out (n, nb)."""
    if rmse_type == 1:
        return np.multiply(xt, xt, out=out)
    if rmse_type == 2:
        out[...] = F32(1)
        return out
    np.abs(xt, out=out)
    if rmse_type == 3:
        return out
    return np.sqrt(out, out=out)


def _levels(xt: np.ndarray, iscale: np.ndarray, nmax: int, out: np.ndarray) -> np.ndarray:
    """l = MAX(-nmax, MIN(nmax-1, nearest_int(iscale*x))) as float32 (n, nb), into out."""
    np.multiply(xt, iscale, out=out)
    np.rint(out, out=out)
    nb = xt.shape[1]
    np.minimum(out, np.full(nb, F32(nmax - 1), dtype=F32), out=out)
    np.maximum(out, np.full(nb, F32(-nmax), dtype=F32), out=out)
    return out


def qx_levels_t(xt: np.ndarray, iscale: np.ndarray, nmax: int, zero: np.ndarray,
                out: np.ndarray | None = None) -> np.ndarray:
    """C's L = nmax + clamp(nearest_int(iscale*x), -nmax, nmax-1) as float32 (n, nb); 0 in the
    columns of all-zero blocks (zero: bool (nb,)). Same float operations as the search, so the
    same levels as the winning candidate."""
    t = _levels(xt, iscale, nmax, np.empty(xt.shape, dtype=F32) if out is None else out)
    t += F32(nmax)
    if zero.any():
        t[:, zero] = 0
    return t


def _final_L(xt: np.ndarray, iscale: np.ndarray, nmax: int, zero: np.ndarray) -> np.ndarray:
    """qx_levels_t as uint8 (n, nb)."""
    return qx_levels_t(xt, iscale, nmax, zero).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def _clip_groups(svals: tuple[float, ...], nmax: int) -> list[tuple[list[int], float | None, float | None]]:
    """Candidates grouped so that one clipped copy of x replaces the clamps of all in a group.

    Candidate k computes l = clamp(rint(v), -nmax, nmax-1), v = fl(isc_k*x), isc_k = -s_k/max,
    |v| <= s_k(1 + 2^-22). The clamp can bite only where s_k >= nmax - 0.5 (upper end, x of the
    sign opposite to max) or s_k >= nmax + 0.5 (lower end, x of max's sign). fl(isc*x) and rint
    are monotone in x, so clipping x at a bound b with rint(fl(isc_k*b)) = nmax-1 (resp. -nmax)
    gives every clipped value exactly the clamped level and leaves no other value past the
    clamp. One b = c*|max| works for all candidates of a group when (nmax-1.5)/s_min < c <
    (nmax-0.5)/s_max (resp. (nmax-0.5)/s_min < c < (nmax+0.5)/s_max); the groups are built
    greedily in order of s with a relative margin, and the rint condition itself is verified on
    the actual floats at run time (qx_search_state_t falls back to explicit clamps if it fails).

    Returns [(candidate indices, c_hi or None, c_lo or None)]; c None: that side needs no clip.
    """
    eps = 1e-4
    order = sorted(range(len(svals)), key=lambda k: svals[k])
    groups: list[tuple[list[int], float | None, float | None]] = []
    cur: list[int] = []

    def interval(ks: list[int], lo_t: float, hi_t: float) -> tuple[float, float]:
        smin = min(svals[k] for k in ks)
        smax = max(svals[k] for k in ks)
        return lo_t / smin * (1 + eps), hi_t / smax * (1 - eps)

    def side(ks: list[int]) -> tuple[bool, bool]:
        s = max(svals[k] for k in ks)
        return s * (1 + eps) >= nmax - 0.5, s * (1 + eps) >= nmax + 0.5

    def feasible(ks: list[int]) -> bool:
        need_hi, need_lo = side(ks)
        ok = True
        if need_hi:
            a, b = interval(ks, nmax - 1.5, nmax - 0.5)
            ok &= a < b
        if need_lo:
            a, b = interval(ks, nmax - 0.5, nmax + 0.5)
            ok &= a < b
        return ok

    def close(ks: list[int]) -> None:
        need_hi, need_lo = side(ks)
        c_hi = 0.5 * sum(interval(ks, nmax - 1.5, nmax - 0.5)) if need_hi else None
        c_lo = 0.5 * sum(interval(ks, nmax - 0.5, nmax + 0.5)) if need_lo else None
        groups.append((ks, c_hi, c_lo))

    for k in order:
        trial = cur + [k]
        if cur and (side(trial) != side(cur) or not feasible(trial)):
            close(cur)
            trial = [k]
        cur = trial
    if cur:
        close(cur)
    return groups


def qx_search_state_t(xt: np.ndarray, qwt: np.ndarray | None, nmax: int, rmse_type: int,
                      ws: Workspace | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qx_quants on the transposed layout, without building L.

    xt: float32 (n, n_blocks) C-contiguous; qwt: float32 (n, n_blocks) or None.
    Returns (scale, iscale, zero), each (n_blocks,): scale = C's return value; the winning L is
    qx_levels_t(xt, iscale, nmax, zero) (zero: the all-zero blocks, whose L is 0).
    Big scratch arrays (three of xt's size) come from ws; neither input is written to.
    """
    xt = np.ascontiguousarray(xt, dtype=F32)
    n, nb = xt.shape
    if nb == 1:  # numpy sums a (n, 1) column pairwise, not in order: run two copies instead
        s, i, z = qx_search_state_t(np.repeat(xt, 2, axis=1), None if qwt is None else np.repeat(qwt, 2, axis=1),
                                    nmax, rmse_type, ws)
        return s[:1], i[:1], z[:1]
    ws = ws or Workspace()
    amax, mx = first_absmax_t(xt)
    zero = amax < GROUP_MAX_EPS
    mxs = np.where(zero, F32(1), mx) if zero.any() else mx
    fnmax = F32(nmax)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale0 = F32(-nmax) / mxs
        if rmse_type == 0:
            scale = (F32(1) / iscale0).astype(F32)
            scale[zero] = 0
            return scale, iscale0, zero
        return_early = rmse_type < 0
        rmse_type = abs(rmse_type)

        if qwt is None:
            W = qx_weights_t(xt, rmse_type, ws.get("qx_W", (n, nb)))
        else:
            W = np.ascontiguousarray(qwt, dtype=F32)
        WX = np.multiply(W, xt, out=ws.get("qx_WX", (n, nb)))  # C's w*x[i], the first product of w*x*l
        T = ws.get("qx_T", (n, nb))
        P = None if einsum_is_sequential() else ws.get("qx_P", (2, n, nb))
        svals = [fnmax] if return_early else [fnmax] + [fnmax + F32(0.1) * F32(i) for i in range(-9, 10) if i]
        K = len(svals)
        # (K, nb) arrays from ws too: fresh ones cost page faults comparable to the search itself
        ISC = ws.get("qx_ISC", (K, nb))  # candidate iscales: -nmax/max, then -(nmax + 0.1*is)/max
        ISC[0] = iscale0
        if K > 1:
            np.divide(-np.array(svals[1:], dtype=F32)[:, None], mxs[None, :], out=ISC[1:])
        R = ws.get("qx_R", (2, K, nb))  # [(sumlx, suml2), candidate, block]
        SLX = R[0]
        SL2 = R[1]
        pos = mxs > 0
        amx = np.abs(mxs)
        # |max| in [1e-15, 1e30]: isc, the bounds and their product stay normal floats, each within
        # 3 roundings (2e-7 relative) of the real values that _clip_groups keeps 1e-4 inside the
        # intervals, so rint(isc*bound) is the intended level without looking
        safe = bool(amx.max() <= _SAFE_MAX)
        for g, (ks, c_hi, c_lo) in enumerate(_clip_groups(tuple(float(v) for v in svals), nmax)):
            X = xt
            clamp = False
            if c_hi is not None:  # one clipped copy of x instead of a clamp per candidate (see _clip_groups)
                bh = F32(c_hi) * amx
                bl = F32(c_lo) * amx if c_lo is not None else np.full(nb, F32(np.inf))
                ok = True
                if not safe:  # check rint(isc_k*bound) on the actual floats
                    xh = np.where(pos, -bh, bh)  # the bound on the side opposite to max
                    ok = bool((np.rint(ISC[ks] * xh) == F32(nmax - 1)).all())
                    if c_lo is not None:
                        xl = np.where(pos, bl, -bl)
                        ok &= bool((np.rint(ISC[ks] * xl) == F32(-nmax)).all())
                if ok:
                    X = ws.get(f"qx_X{g}", (n, nb))
                    np.maximum(xt, np.where(pos, -bh, -bl), out=X)
                    np.minimum(X, np.where(pos, bl, bh), out=X)
                else:
                    clamp = True
            for k in ks:
                np.multiply(X, ISC[k], out=T)
                np.rint(T, out=T)  # |iscale*x| <= nmax + 1: nearest_int is rint
                if clamp:
                    np.clip(T, F32(-nmax), F32(nmax - 1), out=T)
                dot_sums(WX, W, T, R[:, k], P)
        SC = ws.get("qx_SC", (K, nb))  # scale = sumlx/suml2 of each candidate (suml2 == 0: ignored)
        np.divide(SLX, SL2, out=SC)
        scale = np.where(SL2[0] != 0, SC[0], F32(0)).astype(F32)  # the first: suml2 ? sumlx/suml2 : 0
        if return_early:
            inv = F32(1) / iscale0
            out = np.where(SL2[0] > 0, F32(0.5) * (scale + inv), inv).astype(F32)
            out[zero] = 0
            return out, iscale0, zero
        best = scale * SLX[0]
        NB = ws.get("qx_NB", (K, nb))  # best after an update: scale*sumlx
        np.multiply(SC, SLX, out=NB)
        A = ws.get("qx_A", (K, nb))
        np.multiply(SLX, SLX, out=A)
        A[~(SL2 > 0)] = -np.inf  # `suml2 > 0 &&` folded in: -inf > anything is false
        tmp = np.empty(nb, dtype=F32)
        C = ws.get("qx_C", (K, nb), np.uint8)  # C[k]: candidate k replaced the best
        C[0] = 0
        c = C.view(bool)
        for k in range(1, K):
            np.multiply(best, SL2[k], out=tmp)
            np.greater(A[k], tmp, out=c[k])  # sumlx*sumlx > best*suml2
            np.putmask(best, c[k], NB[k])
        C *= np.arange(K, dtype=np.uint8)[:, None]
        kbest = C.max(axis=0).astype(np.intp)  # the last candidate that replaced it (0: none)
        cols = np.arange(nb)
        won = kbest != 0
        scale = np.where(won, SC[kbest, cols], scale)
        best_isc = ISC[kbest, cols]
    scale[zero] = 0
    return scale, best_isc, zero


def make_qx_quants_t(xt: np.ndarray, qwt: np.ndarray | None, nmax: int, rmse_type: int,
                     ws: Workspace | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ggml `make_qx_quants(n, nmax, x, L, rmse_type, qw)` on the transposed layout.

    xt: float32 (n, n_blocks) C-contiguous; qwt: float32 (n, n_blocks) or None.
    Returns (scale float32 (n_blocks,), Lt uint8 (n, n_blocks)). See the module docstring.
    """
    xt = np.ascontiguousarray(xt, dtype=F32)
    scale, iscale, zero = qx_search_state_t(xt, qwt, nmax, rmse_type, ws)
    return scale, _final_L(xt, iscale, nmax, zero)


_Q3_SEQ_MIN = 1024  # blocks from which a pass steps through i (else _q3_pass_rounds)


class _Q3Scratch:
    """Scratch of one _q3_pass from a Workspace (names "q3p_*"): (n, nb) products, (nb,) vectors."""

    def __init__(self, ws: Workspace, n: int, nb: int) -> None:
        g = ws.get
        self.wxl = g("q3p_wxl", (n, nb))
        self.wl2 = g("q3p_wl2", (n, nb))
        self.slx, self.sl2, self.v, self.nl, self.t1, self.t2 = (g(f"q3p_f{j}", (nb,)) for j in range(6))
        self.ok = g("q3p_ok", (nb,), bool)
        self.c = g("q3p_c", (nb,), bool)


def _q3_pass(xt: np.ndarray, W: np.ndarray, WX: np.ndarray, L: np.ndarray, sumlx: np.ndarray,
             suml2: np.ndarray, nmax: int, sc: _Q3Scratch) -> np.ndarray:
    """One pass of make_q3_quants' `itry` loop, in place on L (float32 (n, nb) of C's int8 l),
    sumlx, suml2 (nb,). Returns the per-block `n_changed > 0` mask (a new bool (nb,)).

    C's loop over i, one step per in-block index, each step vectorized across blocks on the rows
    of the transposed layout, so every block goes through exactly C's sequence of states. Row i
    of L changes only at step i, so the terms w*x[i]*L[i] and w*L[i]*L[i] of all rows are taken
    at once up front. Accepted steps (a few percent per step) are applied by index.
    """
    n, nb = xt.shape
    slx, sl2, v, nl, t1, t2, ok, c = sc.slx, sc.sl2, sc.v, sc.nl, sc.t1, sc.t2, sc.ok, sc.c
    WXL = np.multiply(WX, L, out=sc.wxl)  # w*x[i]*L[i] = (w*x)*L
    WL2 = np.multiply(W, L, out=sc.wl2)
    WL2 *= L  # w*L[i]*L[i] = (w*L)*L
    vi = v.view(np.int32)
    changed = np.zeros(nb, dtype=bool)
    f0 = F32(0)
    magic = F32(12582912.0)
    for i in range(n):
        x, w, wx, li = xt[i], W[i], WX[i], L[i]
        np.subtract(sumlx, WXL[i], out=slx)
        np.subtract(suml2, WL2[i], out=sl2)
        np.greater(slx, f0, out=ok)  # if (slx > 0)
        np.multiply(x, sl2, out=v)
        v /= slx  # x[i]*sl2/slx; garbage where slx <= 0 (masked by ok)
        # nearest_int bit for bit (also huge / non-finite quotients), then MAX(-nmax, MIN(nmax-1, l))
        v += magic
        vi &= 0x007FFFFF
        vi -= 0x00400000
        np.clip(vi, -nmax, nmax - 1, out=vi)
        np.copyto(nl, vi, casting="unsafe")
        np.not_equal(nl, li, out=c)
        ok &= c
        np.multiply(wx, nl, out=t1)
        slx += t1  # slx += w*x[i]*new_l
        np.multiply(w, nl, out=t1)
        t1 *= nl
        sl2 += t1  # sl2 += w*new_l*new_l
        np.greater(sl2, f0, out=c)
        ok &= c
        np.multiply(slx, slx, out=t1)
        t1 *= suml2  # slx*slx*suml2
        np.multiply(sumlx, sumlx, out=t2)
        t2 *= sl2  # sumlx*sumlx*sl2
        np.greater(t1, t2, out=c)
        ok &= c
        idx = np.flatnonzero(ok)
        if idx.size:
            li[idx] = nl[idx]
            sumlx[idx] = slx[idx]
            suml2[idx] = sl2[idx]
            changed[idx] = True
    return changed


def _q3_pass_rounds(xt: np.ndarray, W: np.ndarray, WX: np.ndarray, L: np.ndarray, sumlx: np.ndarray,
             suml2: np.ndarray, nmax: int) -> np.ndarray:
    """_q3_pass for few blocks, where numpy's per-call cost dominates: fewer, bigger steps.

    All remaining steps i are evaluated at once from the current state; each block's first
    accepted change is applied, and only blocks that changed are evaluated again from the next
    i on. A step that is not taken leaves the state as it was, so this is C's sequence of states.
    """
    n, nb = xt.shape
    changed = np.zeros(nb, dtype=bool)
    rows = np.arange(n)[:, None]
    act = np.arange(nb)
    start = None  # first i still to do per active block; None: all from 0
    x, w, wx, La, sx, s2 = xt, W, WX, L, sumlx, suml2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        while act.size:
            slx = wx * La  # w*x[i]*L[i] = (w*x)*L
            np.subtract(sx, slx, out=slx)
            sl2 = w * La
            sl2 *= La
            np.subtract(s2, sl2, out=sl2)
            ok = slx > 0
            if start is not None:
                ok &= rows >= start
            v = x * sl2
            v /= slx
            li = nearest_int(v)  # exact ggml bits, also for huge quotients
            np.maximum(li, -nmax, out=li)
            np.minimum(li, nmax - 1, out=li)
            new_l = li.astype(F32)
            ok &= new_l != La
            t = wx * new_l
            slx += t
            np.multiply(w, new_l, out=t)
            t *= new_l
            sl2 += t
            ok &= sl2 > 0
            lhs = slx * slx
            lhs *= s2
            np.multiply(sl2, sx * sx, out=t)
            ok &= lhs > t  # slx*slx*suml2 > sumlx*sumlx*sl2
            has = ok.any(axis=0)
            if not has.any():
                break
            k = np.flatnonzero(has)
            f = np.argmax(ok[:, k], axis=0)  # first step taken, per block
            blk = act[k]
            L[f, blk] = new_l[f, k]
            sumlx[blk] = slx[f, k]
            suml2[blk] = sl2[f, k]
            changed[blk] = True
            act = blk
            start = f + 1
            x, w, wx, La, sx, s2 = xt[:, act], W[:, act], WX[:, act], L[:, act], sumlx[act], suml2[act]
    return changed


def make_q3_quants_t(xt: np.ndarray, nmax: int, do_rmse: bool = True, ws: Workspace | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """ggml `make_q3_quants(n, nmax, x, L, do_rmse)` on the transposed layout.

    xt: float32 (n, n_blocks). Returns (scale float32 (n_blocks,), Lt uint8 (n, n_blocks)).
    do_rmse: initial L from -nmax/max, weights x*x, then up to 5 passes of coordinate descent
    (one level at a time, kept when it raises sumlx^2/suml2); scale = sumlx/suml2. A pass after
    the first runs only on the blocks that changed in the one before (C stops the others).
    """
    xt = np.ascontiguousarray(xt, dtype=F32)
    n, nb = xt.shape
    if nb == 1:  # numpy sums a (n, 1) column pairwise, not in order: run two copies instead
        s, lt = make_q3_quants_t(np.repeat(xt, 2, axis=1), nmax, do_rmse, ws)
        return s[:1], np.ascontiguousarray(lt[:, :1])
    ws = ws or Workspace()
    amax, mx = first_absmax_t(xt)
    zero = amax < GROUP_MAX_EPS
    mxs = np.where(zero, F32(1), mx) if zero.any() else mx
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale = F32(-nmax) / mxs
        if not do_rmse:
            scale = (F32(1) / iscale).astype(F32)
            scale[zero] = 0
            return scale, _final_L(xt, iscale, nmax, zero)
        L = _levels(xt, iscale, nmax, ws.get("q3_L", (n, nb)))
        W = np.multiply(xt, xt, out=ws.get("q3_W", (n, nb)))
        WX = np.multiply(W, xt, out=ws.get("q3_WX", (n, nb)))
        sums = np.empty((2, nb), dtype=F32)
        dot_sums(WX, W, L, sums, None if einsum_is_sequential() else ws.get("q3_P", (2, n, nb)))
        sumlx, suml2 = sums
        changed = _q3_pass(xt, W, WX, L, sumlx, suml2, nmax, _Q3Scratch(ws, n, nb))
        act = np.flatnonzero(changed)
        for _ in range(4):
            if act.size == 0:
                break
            # the blocks still going, gathered into contiguous (n, nact) arrays
            na = act.size
            xa, la = (np.take(a, act, axis=1, out=ws.get(f"q3_g{j}", (n, na))) for j, a in enumerate((xt, L)))
            wa = np.multiply(xa, xa, out=ws.get("q3_g2", (n, na)))  # the same floats as W, WX: cheaper than gathers
            wxa = np.multiply(wa, xa, out=ws.get("q3_g3", (n, na)))
            sx, s2 = sumlx[act], suml2[act]
            if na >= _Q3_SEQ_MIN:
                changed = _q3_pass(xa, wa, wxa, la, sx, s2, nmax, _Q3Scratch(ws, n, na))
            else:
                changed = _q3_pass_rounds(xa, wa, wxa, la, sx, s2, nmax)
            L[:, act] = la
            sumlx[act] = sx
            suml2[act] = s2
            act = act[changed]
        scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, F32(1)), F32(0)).astype(F32)
    scale[zero] = 0
    L += F32(nmax)
    Lt = L.astype(np.uint8)
    if zero.any():
        Lt[:, zero] = 0
    return scale, Lt


def _blocks(x: np.ndarray, w: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(x, dtype=F32)
    if x.ndim == 1:
        x = x.reshape(-1, n)
    if x.ndim != 2 or x.shape[1] != n:
        raise ValueError(f"x must be (n_blocks, {n}), got shape {x.shape}")
    if w is not None:
        w = np.asarray(w, dtype=F32).reshape(x.shape)
    return x, w


def make_qx_quants(n: int, nmax: int, x: np.ndarray, rmse_type: int, qw: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """ggml `make_qx_quants(n, nmax, x, L, rmse_type, qw)` on many blocks at once.

    x: float32 (n_blocks, n); qw: float32 (n_blocks, n) or None.
    Returns (scale float32 (n_blocks,), L uint8 (n_blocks, n)). Chunks and transposes internally.
    """
    x, qw = _blocks(x, qw, n)
    nb = x.shape[0]
    scale = np.empty(nb, dtype=F32)
    L = np.empty((nb, n), dtype=np.uint8)
    ws = Workspace()
    chunk = max(1, _CHUNK_VALUES // n)
    for a in range(0, nb, chunk):
        b = min(nb, a + chunk)
        xt = np.ascontiguousarray(x[a:b].T)
        wt = None if qw is None else np.ascontiguousarray(qw[a:b].T)
        s, lt = make_qx_quants_t(xt, wt, nmax, rmse_type, ws)
        scale[a:b] = s
        L[a:b] = lt.T
    return scale, L


def make_q3_quants(n: int, nmax: int, x: np.ndarray, do_rmse: bool) -> tuple[np.ndarray, np.ndarray]:
    """ggml `make_q3_quants(n, nmax, x, L, do_rmse)` on many blocks: x float32 (n_blocks, n).

    Returns (scale float32 (n_blocks,), L uint8 (n_blocks, n)).
    """
    x, _ = _blocks(x, None, n)
    nb = x.shape[0]
    scale = np.empty(nb, dtype=F32)
    L = np.empty((nb, n), dtype=np.uint8)
    chunk = max(1, _CHUNK_VALUES // n)
    for a in range(0, nb, chunk):
        b = min(nb, a + chunk)
        s, lt = make_q3_quants_t(np.ascontiguousarray(x[a:b].T), nmax, do_rmse)
        scale[a:b] = s
        L[a:b] = lt.T
    return scale, L
