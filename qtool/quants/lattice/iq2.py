"""E8-lattice 2-bit types IQ2_XXS, IQ2_XS, IQ2_S: byte-exact ports of mainline ggml-quants.c.

C functions ported: `quantize_row_iq2_xxs_impl`, `quantize_row_iq2_xs_impl`,
`quantize_row_iq2_s_impl` (and their `quantize_iq2_*` row loops), `iq2_find_best_neighbour`,
`make_qp_quants` (IQ2_XXS's first scale), `dequantize_row_iq2_xxs / _xs / _s`. Tables:
`grids_e8.tables(type)` (iq2xs_init_impl's grid, map and neighbour lists). IQ2_XXS and IQ2_XS
need an imatrix in ggml (ggml_quantize_requires_imatrix), so only their imatrix variant exists;
IQ2_S has both.

Per super-block of 256: sigma2 = sequential sum of x^2 / 256 (IQ2_S: 2*sum/256); weights
w = qw*sqrtf(sigma2 + x^2) (IQ2_S without an imatrix: 0.25*sigma2 + x^2), waux = sqrtf(w).
Per sub-block (32 values for IQ2_XXS, 16 for the others), in groups of 8: xval = |x|, sign bits
s; for IQ2_XXS / IQ2_XS an odd number of negatives flips the element of smallest (w*x)*x back
(xval negative there, its sign bit toggled) so 7 bits carry the signs. Sub-blocks with
max(xval) < eps (1e-15; IQ2_S 1e-8) get scale 0 and zero codes. Candidate scales
id = (5 + is*0.1f)/max (IQ2_XXS: /eff_max, eff_max = 3*make_qp_quants(...), is = -6..6;
others is = -9..9): l = clamp(nearest_int(0.5f*(id*xval - 1)), 0, 2) per element; a group whose
code u is off the grid takes the neighbour of least sum waux*(s*q - xval)^2 (s = 1/id, first
on ties); sumqx = sum (w*xval)*q, sumq2 = sum (w*q)*q (q = 2l+1, sequential); the best by
sumqx^2 > best*sumq2 is kept. Then one refinement with id = 1/scale (IQ2_XXS: every group;
others: the groups that were off the grid), scale = sumqx/sumq2. Negative scale: flipped, signs
inverted. Super-block: d = max_scale/31 (fp16; IQ2_S stores d*0.9875), 4-bit sub-scales
clamp(nearest_int(0.5f*(scale/d - 1)), 0, 15) (id*scale with id = 1/d).

Layout of the work: chunks of whole rows; sub-blocks transposed to (S, nb) so that C's in-block
reductions are reductions down axis 0 in order; groups are the (S/8, 8, nb) view. Off-grid
groups are gathered and searched together by neighbours.best_neighbours (shared with IQ1_S /
IQ1_M: a flat search over the ragged lists, long lists bucketed by length on (width, m) arrays).
"""

from __future__ import annotations

import numpy as np

from ...errors import AbortError
from ..numeric import GROUP_MAX_EPS, QK_K, blocks_t, fp16_bits, fp16_bits_to_fp32, ieee, nearest_int, seq_sum_t
from ..registry import register
from .grids_e8 import Iq2Tables, tables
from .neighbours import best_neighbours
from .rows import quantize_rows

F32 = np.float32
GROUP_MAX_EPS_IQ2_S = F32(1e-8)
KMAXQ = 3
_CHUNK_SUBBLOCKS = 4096

BLOCK_IQ2_XXS = np.dtype([("d", "<u2"), ("qs", "<u4", (16,))])
BLOCK_IQ2_XS = np.dtype([("d", "<u2"), ("qs", "<u2", (32,)), ("scales", "u1", (8,))])
BLOCK_IQ2_S = np.dtype([("d", "<u2"), ("qs", "u1", (64,)), ("qh", "u1", (8,)), ("scales", "u1", (8,))])
assert BLOCK_IQ2_XXS.itemsize == 66 and BLOCK_IQ2_XS.itemsize == 74 and BLOCK_IQ2_S.itemsize == 82

# ksigns_iq2xs[i]: the 7 bits of i plus the parity bit at bit 7
KSIGNS_IQ2XS = np.array([i | ((bin(i).count("1") & 1) << 7) for i in range(128)], dtype=np.uint8)
_POW4 = (4 ** np.arange(8)).astype(np.int32)
_QV = np.array([[1, 3, 5]], F32)  # grid values 2l+1 of levels 0..2 (one level-value set)


# --- shared pieces ----------------------------------------------------------------------------

def group_codes(l3: np.ndarray) -> np.ndarray:
    """Levels (G, 8, nb) -> codes u (G, nb): level i at bits 2i."""
    u = l3[:, 0, :].astype(np.int32)
    for i in range(1, 8):
        u += l3[:, i, :].astype(np.int32) * _POW4[i]
    return u


def levels_for(xval: np.ndarray, idv: np.ndarray) -> np.ndarray:
    """clamp(nearest_int(0.5f*(id*xval - 1)), 0, kMaxQ-1) on (S, nb) with id (nb,) -> int32."""
    a = xval * idv
    a -= F32(1)
    a *= F32(0.5)
    return np.clip(nearest_int(a), 0, KMAXQ - 1)


def snap_to_grid(t: Iq2Tables, L: np.ndarray, xval: np.ndarray, waux: np.ndarray, sc: np.ndarray,
                 only: np.ndarray | None = None) -> np.ndarray:
    """Levels L (S, nb) int32, in place: every group (of `only` (G, nb), if given) whose code is
    off the grid takes its best neighbour at scale sc (nb,). Returns the off-grid mask (G, nb)."""
    S, nb = L.shape
    L3 = L.reshape(S // 8, 8, nb)
    u = group_codes(L3)
    off = t.kmap[u] < 0
    if only is not None:
        off &= only
    kk, bb = np.nonzero(off)
    if kk.size:
        x3 = xval.reshape(S // 8, 8, nb)
        w3 = waux.reshape(S // 8, 8, nb)
        gi = best_neighbours(t, u[kk, bb], x3[kk, :, bb], w3[kk, :, bb], sc[bb], _QV)
        L3[kk, :, bb] = t.levels[gi]
    return off


def sums_q(wx: np.ndarray, w: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sumqx, sumq2) (nb,): sequential sums of (w*xval)*q and (w*q)*q, q = 2L+1."""
    q = (2 * L + 1).astype(F32)
    p = np.empty((2,) + q.shape, F32)
    np.multiply(wx, q, out=p[0])
    np.multiply(w, q, out=p[1])
    p[1] *= q
    s = seq_sum_t(p, axis=1)
    return s[0], s[1]


def sign_fix(xt: np.ndarray, w: np.ndarray, parity: bool) -> tuple[np.ndarray, np.ndarray]:
    """xval (S, nb) and sign bytes (G, nb) uint8; with parity, an odd count of negatives flips
    the element of least (w*x)*x (first such) back: xval negative there, its bit toggled."""
    S, nb = xt.shape
    neg = ~(xt >= 0)
    xval = np.where(neg, -xt, xt)
    n3 = neg.reshape(S // 8, 8, nb)
    bits = (n3.astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    if parity:
        odd = (n3.sum(axis=1) & 1).astype(bool)
        kk, bb = np.nonzero(odd)
        if kk.size:
            wxx = (w * xt) * xt
            imin = np.argmin(wxx.reshape(S // 8, 8, nb)[kk, :, bb], axis=1)
            x3 = xval.reshape(S // 8, 8, nb)
            x3[kk, imin, bb] = -x3[kk, imin, bb]
            bits[kk, bb] ^= (np.uint8(1) << imin.astype(np.uint8))
        bits &= np.uint8(127)
    return xval, bits


def weights(xt: np.ndarray, qwt: np.ndarray | None, sigma2: np.ndarray) -> np.ndarray:
    """w (S, nb): qw*sqrtf(sigma2 + x*x), or (IQ2_S without imatrix) 0.25f*sigma2 + x*x."""
    xx = xt * xt
    if qwt is None:
        return (F32(0.25) * sigma2) + xx
    xx += sigma2
    np.sqrt(xx, out=xx)
    return qwt * xx


def make_qp_quants_t(x: np.ndarray, w: np.ndarray, nmax: int) -> np.ndarray:
    """make_qp_quants(n, nmax, x, L, w) on (n, nb) -> scale (nb,); L kept as C's uint8_t (a
    negative level wraps modulo 256 where C stores it; the int value where C uses the int)."""
    n, nb = x.shape
    mx = np.maximum(np.max(x, axis=0), F32(0))
    ok = mx >= GROUP_MAX_EPS
    mx = np.where(ok, mx, F32(1))
    iscale = F32(nmax) / mx
    L8 = (nearest_int(x * iscale) & 0xFF).astype(F32)
    scale = F32(1) / iscale
    diff = x - scale * L8
    best_mse = seq_sum_t((w * diff) * diff, axis=0)
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (F32(0.1) * F32(is_) + F32(nmax)) / mx
        scale_is = F32(1) / iscale_is
        li = np.minimum(nmax, nearest_int(iscale_is * x)).astype(F32)
        diff = x - scale_is * li
        mse = seq_sum_t((w * diff) * diff, axis=0)
        upd = mse < best_mse
        best_mse = np.where(upd, mse, best_mse)
        iscale = np.where(upd, iscale_is, iscale)
    li = np.minimum(nmax, nearest_int(iscale * x))
    L = li & 0xFF  # uint8 values
    lf = li.astype(F32)
    wx = w * x
    sumlx = seq_sum_t(wx * lf, axis=0)
    suml2 = seq_sum_t((w * lf) * lf, axis=0)
    active = np.ones(nb, bool)
    for _ in range(5):
        changed = np.zeros(nb, bool)
        for i in range(n):
            Lf = L[i].astype(F32)
            slx = sumlx - wx[i] * Lf
            sl2 = suml2 - (w[i] * Lf) * Lf
            c = active & (slx > 0) & (sl2 > 0)
            if not c.any():
                continue
            new_l = np.minimum(nmax, nearest_int((x[i] * sl2) / np.where(c, slx, F32(1))))
            c &= new_l != L[i]
            nf = new_l.astype(F32)
            slx = slx + wx[i] * nf
            sl2 = sl2 + (w[i] * nf) * nf
            c &= (slx * slx) * suml2 > (sumlx * sumlx) * sl2
            L[i] = np.where(c, new_l & 0xFF, L[i])
            sumlx = np.where(c, slx, sumlx)
            suml2 = np.where(c, sl2, suml2)
            changed |= c
        active &= changed
        if not active.any():
            break
    d = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, F32(1)), F32(0))
    return np.where(ok, d, F32(0)).astype(F32)


def scan_grid(t: Iq2Tables, xval: np.ndarray, w: np.ndarray, waux: np.ndarray, den: np.ndarray,
              rng: range, scale: np.ndarray, mask: np.ndarray | None = None, want_index: bool = False
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The candidate loop of quantize_row_iq2_*_impl on (S, nb): id = (5 + is*0.1f)/den for is in
    rng, levels rounded and snapped to the grid, the best by `sumq2 > 0 && sumqx*sumqx >
    best*sumq2` (from best = 0) kept; `mask` limits the updates to those sub-blocks (ik) ->
    (scale, best, L (S, nb), on_grid (G, nb) of the kept candidate, accepted (nb,), grid index
    (G, nb) of the kept levels (0 where none; computed with want_index, ik's IQ2_XS)))."""
    S, nb = xval.shape
    G = S // 8
    wx = w * xval
    L = np.zeros((S, nb), np.int32)
    best = np.zeros(nb, F32)
    acc = np.zeros(nb, bool)
    on_grid = np.ones((G, nb), bool)
    index = np.zeros((G, nb), np.int32)
    for is_ in rng:
        idv = (F32(2 * KMAXQ - 1) + F32(is_) * F32(0.1)) / den
        La = levels_for(xval, idv)
        off = snap_to_grid(t, La, xval, waux, F32(1) / idv)
        sumqx, sumq2 = sums_q(wx, w, La)
        upd = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        if mask is not None:
            upd &= mask
        if upd.any():
            sc_new = sumqx / np.where(upd, sumq2, F32(1))
            scale = np.where(upd, sc_new, scale)
            best = np.where(upd, sc_new * sumqx, best)
            L = np.where(upd, La, L)
            on_grid = np.where(upd, ~off, on_grid)
            if want_index:
                index = np.where(upd, t.kmap[group_codes(La.reshape(G, 8, nb))], index)
            acc |= upd
    return scale, best, L, on_grid, acc, index


def refine_groups(t: Iq2Tables, xval: np.ndarray, w: np.ndarray, waux: np.ndarray, scale: np.ndarray,
                  L: np.ndarray, on_grid: np.ndarray, proc: np.ndarray, all_groups: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The refinement after the candidate loop: where scale > 0 (and, unless all_groups (IQ2_XXS),
    a kept group is off the grid) the groups (all / the off-grid ones) are re-rounded at id =
    1/scale, snapped, and scale = sumqx/sumq2 where sumq2 > 0 -> (scale, L, refined (nb,))."""
    G, nb = on_grid.shape
    if all_groups:
        redo = proc & (scale > 0)
        only = np.broadcast_to(redo, (G, nb))
    else:
        redo = proc & (scale > 0) & (~on_grid).any(axis=0)
        only = ~on_grid & redo
    if redo.any():
        idv = F32(1) / np.where(redo, scale, F32(1))
        Ln = levels_for(xval, idv)
        L = np.where(np.repeat(only, 8, axis=0), Ln, L)
        snap_to_grid(t, L, xval, waux, scale, only=only)
        sumqx, sumq2 = sums_q(w * xval, w, L)
        upd = redo & (sumq2 > 0)
        scale = np.where(upd, sumqx / np.where(upd, sumq2, F32(1)), scale)
    return scale, L, redo


def subblock_search(t: Iq2Tables, xval: np.ndarray, w: np.ndarray, waux: np.ndarray, proc: np.ndarray,
                    kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scale search of one sub-block layout (S, nb) -> (scale (nb,), L (S, nb), processed
    mask (nb,)); `proc` marks the sub-blocks past the eps test (the others' results are unused)."""
    mx = np.where(proc, np.max(xval, axis=0), F32(1))
    if kind == "IQ2_XXS":
        scale = make_qp_quants_t(xval, w, KMAXQ + 1)
        eff = scale * F32(KMAXQ)
        proc = proc & (eff > 0)
        den = np.where(proc, eff, F32(1))
        rng = range(-6, 7)
    else:
        scale = mx / F32(2 * KMAXQ - 1)
        den = mx
        rng = range(-9, 10)
    scale, _, L, on_grid, _, _ = scan_grid(t, xval, w, waux, den, rng, scale)
    scale, L, _ = refine_groups(t, xval, w, waux, scale, L, on_grid, proc, kind == "IQ2_XXS")
    return scale, L, proc


def prepare_subblocks(kind: str, xr: np.ndarray, qwt: np.ndarray | None
                      ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows xr (r, n) of IQ2_XXS / IQ2_XS / IQ2_S -> (nsb, xt, w, waux, xval (S, nb), signs (G, nb),
    proc (nb,): past the eps test): sigma2, weights, sign handling of quantize_row_iq2_*_impl."""
    S = _SUB[kind]
    nsb = xr.shape[0] * (xr.shape[1] // QK_K)
    xs = blocks_t(xr.reshape(nsb, QK_K))
    sumx2 = seq_sum_t(xs * xs, axis=0)
    sigma2 = (F32(2) * sumx2 if kind == "IQ2_S" else sumx2) / F32(QK_K)
    xt = blocks_t(xr.reshape(-1, S))  # (S, nb)
    w = weights(xt, qwt, np.repeat(sigma2, QK_K // S))
    waux = np.sqrt(w)
    xval, signs = sign_fix(xt, w, kind != "IQ2_S")
    proc = np.max(xval, axis=0) >= (GROUP_MAX_EPS_IQ2_S if kind == "IQ2_S" else GROUP_MAX_EPS)
    return nsb, xt, w, waux, xval, signs, proc


def finish_subblocks(t: Iq2Tables, kind: str, L: np.ndarray, scale: np.ndarray, signs: np.ndarray,
                     proc: np.ndarray, abort_by: str, nan_check: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """After the search: a negative scale flips (sign bytes inverted, 7 bits but for IQ2_S), the
    levels' grid indices are looked up (C aborts on a point off the grid; ik also on a NaN scale)
    -> (grid index uint32 (G, nb), signs, scale), all 0 outside `proc`."""
    nb = scale.shape[0]
    neg = proc & (scale < 0)
    scale = np.where(neg, -scale, scale)
    if neg.any():
        signs[:, neg] = ~signs[:, neg]
        if kind != "IQ2_S":
            signs[:, neg] &= np.uint8(127)
    if nan_check and (np.isnan(scale) & proc).any():
        raise AbortError(f"{kind}: a NaN sub-block scale ({abort_by} aborts here: GGML_ASSERT(scale >= 0))")
    gi = t.kmap[group_codes(L.reshape(L.shape[0] // 8, 8, nb))]
    if (gi[:, proc] < 0).any():
        raise AbortError(f"{kind}: a point off the grid after the search ({abort_by} aborts here)")
    gi = np.where(proc, gi, 0).astype(np.uint32)
    return gi, np.where(proc, signs, np.uint8(0)), np.where(proc, scale, F32(0))


def pack_iq2(kind: str, o: np.ndarray, gi: np.ndarray, signs: np.ndarray, ls: np.ndarray,
             zero: np.ndarray) -> None:
    """Writes the quants (qs, qh, scales; not d) of the blocks o (nsb,) of `kind` from the grid
    indices gi (G, nb), sign bytes (G, nb) and 4-bit scales ls (nsb, per); the qs of blocks with
    max_scale == 0 stay 0 (IQ2_XXS / IQ2_XS: C's memset and early continue)."""
    nsb = o.shape[0]
    G = gi.shape[0]
    per = gi.shape[1] // nsb
    gib = gi.T.reshape(nsb, per, G)  # (superblock, sub-block, group)
    sgb = signs.T.reshape(nsb, per, G).astype(np.uint32)
    if kind == "IQ2_XXS":
        q = np.zeros((nsb, per, 2), np.uint32)
        for k in range(4):
            q[:, :, 0] |= gib[:, :, k] << np.uint32(8 * k)
            q[:, :, 1] |= sgb[:, :, k] << np.uint32(7 * k)
        q[:, :, 1] |= ls.astype(np.uint32) << np.uint32(28)
        q[zero] = 0
        o["qs"] = q.reshape(nsb, 16)
        return
    if kind == "IQ2_XS":
        q = (gib | (sgb << np.uint32(9))).astype(np.uint16).reshape(nsb, 32)
        q[zero] = 0
        o["qs"] = q
    else:
        i8 = gib.reshape(nsb, 32)
        qs = np.empty((nsb, 64), np.uint8)
        qs[:, :32] = (i8 & 255).astype(np.uint8)
        qs[:, 32:] = sgb.reshape(nsb, 32).astype(np.uint8)
        hi = (i8 >> 8).reshape(nsb, 8, 4)
        qh = np.zeros((nsb, 8), np.uint32)
        for j in range(4):
            qh |= hi[:, :, j] << np.uint32(2 * j)
        o["qs"] = qs
        o["qh"] = qh.astype(np.uint8)
    o["scales"] = ls[:, 0::2] | (ls[:, 1::2] << np.uint8(4))


def super_scales(scales: np.ndarray, nsb: int, per: int,
                 factor: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scales (nsb*per,) -> (d bits (nsb,), 4-bit scales (nsb, per) uint8, max_scale==0 (nsb,))."""
    sc = scales.reshape(nsb, per)
    max_scale = np.max(sc, axis=1)
    zero = ~(max_scale != 0)
    ms = np.where(zero, F32(1), max_scale)
    d = ms / F32(31)
    dbits = fp16_bits(d if factor is None else d * F32(factor))
    dbits = np.where(zero, np.uint16(0), dbits)
    idv = F32(1) / d
    a = idv[:, None] * sc
    a -= F32(1)
    a *= F32(0.5)
    ls = np.clip(nearest_int(a), 0, 15).astype(np.uint8)
    ls[zero] = 0
    return dbits, ls, zero


# --- the three types ----------------------------------------------------------------------------

_SUB = {"IQ2_XXS": 32, "IQ2_XS": 16, "IQ2_S": 16}
_DT = {"IQ2_XXS": BLOCK_IQ2_XXS, "IQ2_XS": BLOCK_IQ2_XS, "IQ2_S": BLOCK_IQ2_S}


def _chunk(t: Iq2Tables, kind: str, xr: np.ndarray, qwt: np.ndarray | None) -> np.ndarray:
    """quantize_row_iq2_*_impl on rows xr (r, n) -> blocks (r*n/256,)."""
    nsb, xt, w, waux, xval, signs, proc = prepare_subblocks(kind, xr, qwt)
    scale, L, proc = subblock_search(t, xval, w, waux, proc, kind)
    gi, signs, scale = finish_subblocks(t, kind, L, scale, signs, proc, "ggml")
    dbits, ls, zero = super_scales(scale, nsb, QK_K // _SUB[kind], 0.9875 if kind == "IQ2_S" else None)
    o = np.zeros(nsb, _DT[kind])
    o["d"] = dbits
    pack_iq2(kind, o, gi, signs, ls, zero)
    return o


def _quantize(kind: str, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    t = tables(kind)
    return quantize_rows(kind, rows, imatrix, _SUB[kind], _DT[kind], _CHUNK_SUBBLOCKS,
                         lambda xr, qwt: _chunk(t, kind, xr, qwt), kind != "IQ2_S")


@ieee
def quantize_iq2_xxs(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq2_xxs: rows float32 (nrows, n) with an imatrix (n,) -> uint8 (nrows, n/256*66)."""
    return _quantize("IQ2_XXS", rows, imatrix)


@ieee
def quantize_iq2_xs(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq2_xs: rows float32 (nrows, n) with an imatrix (n,) -> uint8 (nrows, n/256*74)."""
    return _quantize("IQ2_XS", rows, imatrix)


@ieee
def quantize_iq2_s(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq2_s: rows float32 (nrows, n), imatrix (n,) or None -> uint8 (nrows, n/256*82)."""
    return _quantize("IQ2_S", rows, imatrix)


# --- dequantization -------------------------------------------------------------------------------

def _expand(db: np.ndarray, gidx: np.ndarray, sbits: np.ndarray, t: Iq2Tables) -> np.ndarray:
    """y = db*grid[j] negated where sign bit j is set: db (..., 1), gidx, sbits (...) -> (..., 8)."""
    v = db * t.deq_grid[gidx]
    neg = (sbits[..., None] >> np.arange(8, dtype=np.uint8)) & 1
    return np.where(neg.astype(bool), -v, v)


@ieee
def dequantize_iq2_xxs(data: np.ndarray, n: int) -> np.ndarray:
    b = np.ascontiguousarray(data).view(BLOCK_IQ2_XXS).reshape(-1)
    t = tables("IQ2_XXS")
    d = fp16_bits_to_fp32(b["d"])
    q = b["qs"].reshape(-1, 8, 2)
    db = (d[:, None] * (F32(0.5) + (q[:, :, 1] >> np.uint32(28)).astype(F32))) * F32(0.25)
    gidx = (q[:, :, 0:1] >> (np.uint32(8) * np.arange(4, dtype=np.uint32))) & np.uint32(255)
    sidx = (q[:, :, 1:2] >> (np.uint32(7) * np.arange(4, dtype=np.uint32))) & np.uint32(127)
    y = _expand(db[:, :, None, None], gidx, KSIGNS_IQ2XS[sidx], t)
    return y.reshape(data.shape[0], n)


def _db2(d: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(nblk, 8 sub-blocks of 32, 2 halves) of d*(0.5f + nibble)*0.25f."""
    nib = np.stack([scales & 15, scales >> 4], axis=-1).astype(F32)
    return (d[:, None, None] * (F32(0.5) + nib)) * F32(0.25)


@ieee
def dequantize_iq2_xs(data: np.ndarray, n: int) -> np.ndarray:
    b = np.ascontiguousarray(data).view(BLOCK_IQ2_XS).reshape(-1)
    t = tables("IQ2_XS")
    db = _db2(fp16_bits_to_fp32(b["d"]), b["scales"])
    q = b["qs"].reshape(-1, 8, 2, 2)
    y = _expand(db[..., None, None], q & 511, KSIGNS_IQ2XS[q >> 9], t)
    return y.reshape(data.shape[0], n)


@ieee
def dequantize_iq2_s(data: np.ndarray, n: int) -> np.ndarray:
    b = np.ascontiguousarray(data).view(BLOCK_IQ2_S).reshape(-1)
    t = tables("IQ2_S")
    db = _db2(fp16_bits_to_fp32(b["d"]), b["scales"])
    qs = b["qs"][:, :32].reshape(-1, 8, 2, 2).astype(np.int32)
    sg = b["qs"][:, 32:].reshape(-1, 8, 2, 2)
    qh = b["qh"].astype(np.int32)[:, :, None] >> (2 * np.arange(4))  # (nblk, 8, 4)
    gidx = qs | ((qh & 3) << 8).reshape(-1, 8, 2, 2)
    y = _expand(db[..., None, None], gidx, sg, t)
    return y.reshape(data.shape[0], n)


register("IQ2_XXS", quantize_iq2_xxs, dequantize_iq2_xxs, mainline=(True,), ik=())
register("IQ2_XS", quantize_iq2_xs, dequantize_iq2_xs, mainline=(True,), ik=())
register("IQ2_S", quantize_iq2_s, dequantize_iq2_s, ik=())
