"""ik_llama.cpp's IQ1_S_R4 and IQ1_M_R4: byte-exact ports of iqk_quantize.cpp `quantize_iq1_s_r4`,
`quantize_iq1_m_r4`, `dequantize_row_iq1_s_r4` / `_m_r4`.

These are their own quantizers, not repacks of IQ1_S / IQ1_M: blocks of 32 with one fp16 scale per
row (4 in front of each group of 4 interleaved rows), no super-blocks. Per block of 32 of row k:
- sum of x^2 (sequential) < 1e-14f: grid index 1029 (all zeros) everywhere, scale 0;
- sigma2 = 1.5f*sum(x^2)/32, w = qw*sqrt(sigma2 + x^2) (w = sqrt(sigma2 + x^2) without an imatrix,
  and IQ1_S_R4: for the whole block, IQ1_M_R4: for a half of 16, where sum w*|x| < 1e-14);
- IQ1_S_R4: ik's iq1s_process_1block (the split scan from -FLT_MIN, aborting where no split is
  accepted) on the 32 values; IQ1_M_R4: iq1m_process_1block on each half of 16 whose sum of x^2
  exceeds 1e-14f (a half at or below it: index 1029, scale 0 and C's `shift1` / `shift2` of the
  last processed half at that position: uninitialised at the start of a call in C, 0 here);
- per row d = fp16(1.0625f*max/15); IQ1_S_R4: 3-bit l = clamp(nearest_int(0.5f*(s*15/max - 1)))
  (value d*(2l+1)), IQ1_M_R4: 4-bit l = clamp(nearest_int(s*15/max)) per half (value d*l).
The split scans, neighbour searches and refits are qtool.quants.lattice.iq1's (and, for
iq1m_process_1block: lattice_ik's iq1_m_process), vectorized over all blocks of a chunk.
"""

from __future__ import annotations

import numpy as np

from ...errors import AbortError
from ..lattice.grids_iq1 import Iq1Tables
from ..lattice.grids_iq1 import tables as iq1_tables
from ..lattice.iq1 import (
    DELTA,
    EPS_IQ1_S,
    iq1_s_scores,
    level_values,
    pairs,
    prefix,
    refit,
    safe_blocks,
    snap_groups,
    sorted_sums,
    split_levels,
)
from ..numeric import blocks_t, fp16_bits, fp16_bits_to_fp32, ieee, nearest_int, seq_sum_t
from ..registry import register
from .lattice_ik import carry_forward, iq1_m_process, scan_best0

F32 = np.float32
U8 = np.uint8
U16 = np.uint16
_FLT_MIN = float(np.finfo(F32).tiny)
_ZERO_EPS = F32(1e-14)
_ZERO_INDEX = 1029  # the grid entry with all zeros
_CHUNK_BLOCKS = 512  # blocks of 32 per chunk (measured: larger chunks are slower)
_MASKS = np.array([0x00, 0x80, 0x08, 0x88], U8)
_P16 = pairs(16)


def _check(kind: str, x: np.ndarray) -> tuple[int, int]:
    nrows, n = x.shape
    if nrows % 4:
        raise ValueError(f"{kind}: {nrows} rows are not a multiple of 4 (ik_llama.cpp asserts nrows % 4 == 0)")
    if n % 32:
        raise ValueError(f"{kind}: row length {n} is not a multiple of 32")
    return nrows, n


def _chunks(nrows: int, n: int) -> list[tuple[int, int]]:
    """Row ranges of whole groups of 4 with about _CHUNK_BLOCKS blocks each."""
    step = 4 * max(1, _CHUNK_BLOCKS // (4 * (n // 32)))
    return [(r, min(nrows, r + step)) for r in range(0, nrows, step)]


def _weights(xt: np.ndarray, sigma2: np.ndarray, qwt: np.ndarray | None, halves: int) -> np.ndarray:
    """w (32, nb): qw*sqrt(sigma2 + x*x), or sqrt(sigma2 + x*x) without an imatrix or in each part
    (halves = 1: the block, 2: each half of 16) whose sequential sum of w*|x| is below 1e-14."""
    base = xt * xt
    base += sigma2[None, :]
    np.sqrt(base, out=base)
    if qwt is None:
        return base
    w = qwt * base
    wx = w * np.abs(xt)
    S = 32 // halves
    for h in range(halves):
        s = seq_sum_t(wx[h * S:(h + 1) * S], axis=0)
        # IQ1_M_R4's second half compares in double (`sumwx < 1e-14`)
        low = s.astype(np.float64) < 1e-14 if h == 1 else s < _ZERO_EPS
        if low.any():
            w[h * S:(h + 1) * S] = np.where(low[None, :], base[h * S:(h + 1) * S], w[h * S:(h + 1) * S])
    return w


def _row_scale(scale: np.ndarray, nrows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: fp16 bits of 1.0625f*max/15 and invd = max ? 15/max : 0, scale (nrows, m)."""
    mx = scale.max(axis=1)
    dbits = fp16_bits((F32(1.0625) * mx) / F32(15))
    invd = np.where(mx != 0, F32(15) / np.where(mx != 0, mx, F32(1)), F32(0)).astype(F32)
    return dbits, invd


def _assemble(dbits: np.ndarray, body: np.ndarray, nrows: int, nblock: int) -> np.ndarray:
    """dbits (nrows,), body (nrows/4, nblock, bytes per block) -> uint8 (nrows, row bytes)."""
    g = nrows // 4
    d = dbits.astype("<u2").reshape(g, 4).view(U8)
    return np.concatenate([d, body.reshape(g, -1)], axis=1).reshape(nrows, -1)


# --- IQ1_S_R4 ---------------------------------------------------------------------------------------

def iq1s_process(t: Iq1Tables, xt: np.ndarray, w: np.ndarray, proc: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ik's iq1s_process_1block on the blocks `proc` of (32, nb) -> (scale, shift (1: x_m), grid
    index (4, nb)); other blocks: scale 0, shift 0, index 0."""
    nb = xt.shape[1]
    order, wx, ws = sorted_sums(xt, w)
    sqx, sq2 = iq1_s_scores(prefix(wx), prefix(ws))
    sq2[:, :, ~proc] = 0
    win, scale = scan_best0(sqx.reshape(-1, nb), sq2.reshape(-1, nb), safe_blocks(wx, ws, xt), -_FLT_MIN)
    if (proc & (win < 0)).any():
        raise AbortError("IQ1_S_R4: no split accepted (ik_llama.cpp aborts here: GGML_ASSERT(besti1 >= 0 ...))")
    L, scale, shift = split_levels(order, win, scale, proc, 2)
    gshift = np.broadcast_to(shift, (4, nb))
    gi, moved = snap_groups(t, L, xt, w, scale, proc, gshift)
    q = level_values(t, gi, gshift)
    scale = refit(q, w, xt, moved & proc, scale)
    return np.where(proc, scale, F32(0)), shift, gi


def _iq1_s_r4_chunk(t: Iq1Tables, x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nrows, n = x.shape
    nblock = n // 32
    xt = blocks_t(x.reshape(-1, 32))  # block (row, ibl) in column row*nblock + ibl
    nb = xt.shape[1]
    sumx2 = seq_sum_t(xt * xt, axis=0)
    zero = sumx2 < _ZERO_EPS
    sigma2 = (F32(1.5) * sumx2) / F32(32)
    qwt = None if qw is None else np.tile(blocks_t(qw.reshape(nblock, 32)), (1, nrows))
    w = _weights(xt, sigma2, qwt, 1)
    proc = ~zero & (np.abs(xt).max(axis=0) >= EPS_IQ1_S)
    scale, shift, gi = iq1s_process(t, xt, w, proc)
    gi = np.where(zero[None, :], _ZERO_INDEX, gi)
    neg = proc & (shift == 1)  # eps blocks: shift 1 (x_p) in C, no bit
    dbits, invd = _row_scale(scale.reshape(nrows, nblock), nrows)
    a = scale.reshape(nrows, nblock) * invd[:, None]
    a -= F32(1)
    a *= F32(0.5)
    ls = np.clip(nearest_int(a), 0, 7).astype(U16).reshape(nb)
    h = np.zeros(nb, U16)
    for i in range(4):
        h |= (gi[i] >> 8).astype(U16) << U16(3 * i)
    h |= np.where(neg, U16(0x8000), U16(0))
    h |= ls << U16(12)
    g = nrows // 4
    qs = (gi & 255).astype(U8).reshape(4, g, 4, nblock).transpose(1, 3, 0, 2)  # (g, ibl, i, k)
    qh = h.reshape(g, 4, nblock).transpose(0, 2, 1).astype("<u2")  # (g, ibl, k)
    body = np.concatenate([qs.reshape(g, nblock, 16), np.ascontiguousarray(qh).view(U8)], axis=2)
    return _assemble(dbits, body, nrows, nblock)


@ieee
def quantize_iq1_s_r4(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq1_s_r4: rows float32 (nrows, n), nrows % 4 == 0, imatrix (n,) or None -> uint8
    (nrows, 2 + n/32*6)."""
    x = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = _check("IQ1_S_R4", x)
    qw = None if imatrix is None else np.asarray(imatrix, F32)
    t = iq1_tables()
    out = np.empty((nrows, 2 + n // 32 * 6), U8)
    for r0, r1 in _chunks(nrows, n):
        out[r0:r1] = _iq1_s_r4_chunk(t, x[r0:r1], qw)
    return out


@ieee
def dequantize_iq1_s_r4(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq1_s_r4: uint8 (nrows, 2 + n/32*6) -> float32 (nrows, n)."""
    nrows = data.shape[0]
    g, nblock = nrows // 4, n // 32
    dg = np.ascontiguousarray(data).reshape(g, -1)
    d = fp16_bits_to_fp32(np.ascontiguousarray(dg[:, :8]).view("<u2"))  # (g, 4)
    body = dg[:, 8:].reshape(g, nblock, 24)
    qs = body[:, :, :16].reshape(g, nblock, 4, 4).astype(np.int32)  # (g, ib, i, k)
    qh = np.ascontiguousarray(body[:, :, 16:]).view("<u2").astype(np.int32)  # (g, ib, k)
    shift = np.where(qh & 0x8000, -DELTA, DELTA).astype(F32)
    dl = d[:, None, :] * (2 * ((qh >> 12) & 7) + 1).astype(F32)  # (g, ib, k)
    idx = qs | (((qh[:, :, None, :] >> (3 * np.arange(4))[None, None, :, None]) & 7) << 8)
    grid = iq1_tables().deq_grid[idx]  # (g, ib, i, k, 8)
    y = dl[:, :, None, :, None] * (grid + shift[:, :, None, :, None])
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2, 4)).reshape(nrows, n)


# --- IQ1_M_R4 ---------------------------------------------------------------------------------------

def _iq1_m_r4_chunk(t: Iq1Tables, x: np.ndarray, qw: np.ndarray | None, state: np.ndarray) -> np.ndarray:
    nrows, n = x.shape
    nblock = n // 32
    g = nrows // 4
    xt = blocks_t(x.reshape(-1, 32))
    nb = xt.shape[1]
    x2 = xt * xt
    s2 = np.stack([seq_sum_t(x2[:16], axis=0), seq_sum_t(x2[16:], axis=0)])  # (2, nb)
    sumx2 = s2[0] + s2[1]
    zero = sumx2 < _ZERO_EPS
    sigma2 = (F32(1.5) * sumx2) / F32(32)
    qwt = None if qw is None else np.tile(blocks_t(qw.reshape(nblock, 32)), (1, nrows))
    w = _weights(xt, sigma2, qwt, 2)
    proc = ~zero[None, :] & (s2 > _ZERO_EPS)  # (2, nb)
    # halves as sub-blocks of 16: column 2*b + h
    xh = np.ascontiguousarray(xt.reshape(2, 16, nb).transpose(1, 2, 0)).reshape(16, 2 * nb)
    wh = np.ascontiguousarray(w.reshape(2, 16, nb).transpose(1, 2, 0)).reshape(16, 2 * nb)
    ph = np.ascontiguousarray(proc.T).reshape(2 * nb)
    scale, bk, gi = iq1_m_process(t, xh, wh, ph, "IQ1_M_R4")
    gi = np.where(ph[None, :], gi, _ZERO_INDEX).reshape(2, nb, 2)  # (group, b, half)
    scale = scale.reshape(nb, 2)
    # C's shift1 / shift2: the last processed half in (group, ibl, k) order, carried through the call
    seq = lambda a: a.reshape(g, 4, nblock, 2).transpose(3, 0, 2, 1).reshape(2, -1)  # noqa: E731
    sh = carry_forward(seq(bk), seq(ph), state)
    state[:] = sh[:, -1]
    sh = sh.reshape(2, g, nblock, 4)  # (half, g, ibl, k)
    dbits, invd = _row_scale(scale.reshape(nrows, 2 * nblock), nrows)
    ls = np.clip(nearest_int(scale.reshape(nrows, nblock, 2) * invd[:, None, None]), 0, 15).astype(U8)
    ls = ls.reshape(g, 4, nblock, 2)
    sc = (ls[..., 0] | (ls[..., 1] << U8(4))).transpose(0, 2, 1)  # (g, ibl, k)
    gi4 = gi.reshape(2, g, 4, nblock, 2).transpose(1, 3, 4, 0, 2)  # (g, ibl, half, group, k)
    qs = (gi4 & 255).astype(U8).reshape(g, nblock, 16)
    hi = (gi4 >> 8).astype(U8)
    qh = hi[:, :, :, 0] | (hi[:, :, :, 1] << U8(4))  # (g, ibl, half, k)
    qh |= _MASKS[sh.transpose(1, 2, 0, 3)]
    qh = np.where(zero.reshape(g, 4, nblock).transpose(0, 2, 1)[:, :, None, :], U8(0x44), qh)
    body = np.concatenate([qs, qh.reshape(g, nblock, 8), sc], axis=2)
    return _assemble(dbits, body, nrows, nblock)


@ieee
def quantize_iq1_m_r4(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_iq1_m_r4: rows float32 (nrows, n), nrows % 4 == 0, imatrix (n,) or None -> uint8
    (nrows, 2 + n/32*7)."""
    x = np.ascontiguousarray(rows, dtype=F32)
    nrows, n = _check("IQ1_M_R4", x)
    qw = None if imatrix is None else np.asarray(imatrix, F32)
    t = iq1_tables()
    state = np.zeros(2, np.int64)
    out = np.empty((nrows, 2 + n // 32 * 7), U8)
    for r0, r1 in _chunks(nrows, n):
        out[r0:r1] = _iq1_m_r4_chunk(t, x[r0:r1], qw, state)
    return out


@ieee
def dequantize_iq1_m_r4(data: np.ndarray, n: int) -> np.ndarray:
    """dequantize_row_iq1_m_r4: uint8 (nrows, 2 + n/32*7) -> float32 (nrows, n)."""
    nrows = data.shape[0]
    g, nblock = nrows // 4, n // 32
    dg = np.ascontiguousarray(data).reshape(g, -1)
    d = fp16_bits_to_fp32(np.ascontiguousarray(dg[:, :8]).view("<u2"))  # (g, 4)
    body = dg[:, 8:].reshape(g, nblock, 28)
    qs = body[:, :, :16].reshape(g, nblock, 2, 2, 4).astype(np.int32)  # (g, ib, half, group, k)
    qh = body[:, :, 16:24].reshape(g, nblock, 2, 4).astype(np.int32)  # (g, ib, half, k)
    sc = body[:, :, 24:28].astype(np.int32)  # (g, ib, k)
    ls = np.stack([sc & 15, sc >> 4], axis=2)  # (g, ib, half, k)
    dl = d[:, None, None, :] * ls.astype(F32)
    nib = np.stack([qh & 15, qh >> 4], axis=3)  # (g, ib, half, group, k)
    idx = qs | ((nib & 7) << 8)
    delta = np.where(nib & 8, -DELTA, DELTA).astype(F32)
    grid = iq1_tables().deq_grid[idx]  # (g, ib, half, group, k, 8)
    y = dl[:, :, :, None, :, None] * (grid + delta[..., None])
    return np.ascontiguousarray(y.transpose(0, 4, 1, 2, 3, 5)).reshape(nrows, n)


register("IQ1_S_R4", quantize_iq1_s_r4, dequantize_iq1_s_r4, mainline=(), ik=(False, True))
register("IQ1_M_R4", quantize_iq1_m_r4, dequantize_iq1_m_r4, mainline=(), ik=(False, True))
