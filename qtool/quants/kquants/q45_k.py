"""Q4_K and Q5_K: super-blocks of 256 = 8 sub-blocks of 32, each with a 6-bit scale and min.

Ports of ggml-quants.c `quantize_row_q4_K_ref` / `quantize_row_q4_K_impl` (with imatrix) and the
Q5_K pair, and of `dequantize_row_q4_K` / `dequantize_row_q5_K`, byte-exact.

- Without imatrix: weights av_x + |x| (av_x = rms of the sub-block), make_qkx2_quants
  (Q4_K: rmin -1, rdelta 0.1, nstep 20; Q5_K: -0.5, 0.1, 15); sub-block scales and mins are
  quantized to 6 bits by nearest_int(63/max * v), super-block d = max_scale/63, dmin = max_min/63.
- With imatrix: sigma2 = 2*sum(x^2)/256 over the super-block, weights qw*sqrt(sigma2 + x^2),
  make_qkx3_quants (-0.9, 0.05, 36), then make_qp_quants(8, 63, ...) on the scales and on the
  mins, each weighted by the sub-block weight sums.
- Both then re-quantize every value with the decoded (fp16) scales, as C does.

Layout: a chunk of super-blocks (nb, 256) is transposed once to (n, J, nb) (in-block index,
sub-block, super-block), so each search step is a contiguous expression over J*nb sub-blocks
and every C reduction runs over axis 0 in C's order. This module also holds the helpers that
q2_k shares (chunking, layout, re-quantization).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ..numeric import seq_sum0
from ..registry import register
from ..rounding import fp32_to_fp16_bits, nearest_int
from ..scratch import Workspace
from ..search_kx import make_qp_quants_t, qkx_search_state_t, recompute_L_t
from ..types import QK_K

F32 = np.float32
K_SCALE_SIZE = 12
CHUNK_SUPERBLOCKS = 1024

QkxState = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
QkxStateSearch = Callable[[np.ndarray, np.ndarray, int, float, float, int, Workspace], QkxState]
"""A make_qkx2_quants search (xt, wt, nmax, rmin, rdelta, nstep, ws), with the use_mad of the kernel
that takes it, -> the (scale, the_min, isc, mnu, degenerate) of search_kx.qkx_search_state_t
(ik_llama.cpp's: search_kx_ik.qkx2_ik_state_t)."""
K45Chunk = Callable[[np.ndarray, "np.ndarray | None", int, Workspace],
                    tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
"""A chunk kernel (xs, qw3 or None, nmax, ws) -> (d bits, dmin bits, scales (nb, 12), L (32, 8, nb))."""


def superblock_chunks(rows: np.ndarray, chunk: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (start, stop, xs float32 (stop-start, 256)) over all super-blocks of rows (nrows, n),
    about CHUNK_SUPERBLOCKS at a time (bounds the temporaries: about 60 bytes per value).

    When a row holds fewer super-blocks than a chunk, chunks are whole rows, so that every chunk
    sees the imatrix the same way (see ImatrixCache)."""
    chunk = chunk or CHUNK_SUPERBLOCKS
    nbr = rows.shape[1] // QK_K
    if nbr <= chunk:
        chunk = (chunk // nbr) * nbr
    xs_all = rows.reshape(-1, QK_K)
    nb = xs_all.shape[0]
    for a in range(0, nb, chunk):
        b = min(nb, a + chunk)
        yield a, b, xs_all[a:b]


def to_subblocks_t(xs: np.ndarray, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """(nb, 256) super-blocks -> contiguous (n, 256//n, nb): [in-block index, sub-block, super-block]."""
    nb = xs.shape[0]
    src = xs.reshape(nb, QK_K // n, n).transpose(2, 1, 0)
    if out is None:
        return np.ascontiguousarray(src)
    np.copyto(out, src)
    return out


class ImatrixCache:
    """The imatrix under super-blocks a..b-1 (row-major over all rows) as (n, 256//n, b-a).

    Chunks that start at the same column and have the same length see the same values, so each
    distinct (start column, length) is built once."""

    def __init__(self, imatrix: np.ndarray, n_per_row: int, n: int) -> None:
        self.qw = imatrix.reshape(n_per_row // QK_K, QK_K)
        self.n = n
        self.cache: dict[tuple[int, int], np.ndarray] = {}

    def get(self, a: int, b: int) -> np.ndarray:
        nbr = self.qw.shape[0]
        key = (a % nbr, b - a)
        if key not in self.cache:
            self.cache[key] = to_subblocks_t(self.qw[np.arange(a, b) % nbr], self.n)
        return self.cache[key]


def superblock_sum_sq(xt3: np.ndarray, ws: Workspace) -> np.ndarray:
    """C's `for (l = 0; l < QK_K; ++l) sum += x[l]*x[l]` per super-block, from (n, J, nb) -> (nb,)."""
    n, J, nb = xt3.shape
    seq = ws.get("k_sq", (J, n, nb))  # index j*n + i, C's order
    np.multiply(xt3.transpose(1, 0, 2), xt3.transpose(1, 0, 2), out=seq)
    return seq_sum0(seq.reshape(J * n, nb))  # np.add.reduce would sum a single super-block pairwise


def running_max(v: np.ndarray) -> np.ndarray:
    """C's `m = 0; for j: if (v[j] > m) m = v[j];` down axis 0 of (J, nb) -> (nb,), +0.0 when none."""
    m = np.zeros(v.shape[1], dtype=F32)
    for j in range(v.shape[0]):
        m = np.where(v[j] > m, v[j], m)
    return m


def requantize_t(xt3: np.ndarray, d: np.ndarray, dm: np.ndarray, nmax: int, search: tuple,
                 ws: Workspace) -> np.ndarray:
    """C's second pass: L = clamp(nearest_int((x + dm)/d), 0, nmax) where d != 0; where d == 0
    (`if (!d) continue;`) L stays what the search found.

    xt3 float32 (n, J, nb); d, dm float32 (J, nb); search = (isc, mnu, degenerate) from
    qkx_search_state_t, each (J*nb,). Returns uint8 (n, J, nb).
    """
    n, J, nb = xt3.shape
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = np.add(xt3, dm, out=ws.get("k_t", xt3.shape))
        np.divide(t, d, out=t)
        amax = np.maximum(np.abs(xt3.max(axis=0)), np.abs(xt3.min(axis=0)))
        fast = bool((((amax + np.abs(dm)) < F32(4.0e6) * np.abs(d)) | (d == 0)).all())
        if fast:  # |t| < 2^22 wherever d != 0; d == 0 sub-blocks are replaced below
            np.rint(t, out=t)
            np.minimum(t, np.full((J, nb), F32(nmax)), out=t)
            np.maximum(t, np.zeros((J, nb), dtype=F32), out=t)
            L = t.astype(np.uint8)
    if not fast:
        li = nearest_int(t)
        np.clip(li, 0, nmax, out=li)
        L = li.astype(np.uint8)
    zero = np.flatnonzero(d.reshape(-1) == 0)
    if zero.size:
        isc, mnu, deg = search
        L2 = L.reshape(n, J * nb)
        L2[:, zero] = recompute_L_t(xt3.reshape(n, J * nb)[:, zero], isc[zero], mnu[zero], deg[zero], nmax)
    return L


def pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12 scale bytes of Q4_K/Q5_K from 8 scales and 8 mins, uint8 (8, nb) each -> (nb, 12).

    Same bit operations as C, with C's uint8_t truncation (values above 63 keep their low bits).
    """
    ls = ls.astype(np.int32)
    lm = lm.astype(np.int32)
    out = np.empty((ls.shape[1], K_SCALE_SIZE), dtype=np.uint8)
    out[:, 0:4] = ((ls[0:4] | ((ls[4:8] >> 4) << 6)) & 0xFF).T
    out[:, 4:8] = ((lm[0:4] | ((lm[4:8] >> 4) << 6)) & 0xFF).T
    out[:, 8:12] = (((ls[4:8] & 0xF) | ((lm[4:8] & 0xF) << 4)) & 0xFF).T
    return out


def get_scale_min_k4(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml get_scale_min_k4 for j = 0..7: q uint8 (nb, 12) -> (sc, m) uint8 (8, nb)."""
    q = q.T
    sc = np.empty((8, q.shape[1]), dtype=np.uint8)
    m = np.empty_like(sc)
    sc[0:4] = q[0:4] & 63
    m[0:4] = q[4:8] & 63
    sc[4:8] = (q[8:12] & 0xF) | ((q[0:4] >> 6) << 4)
    m[4:8] = (q[8:12] >> 4) | ((q[4:8] >> 6) << 4)
    return sc, m


def decode_scales_k4(d_bits: np.ndarray, dmin_bits: np.ndarray, ls: np.ndarray, lm: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pack the 6-bit scales ls and mins lm (uint8 (8, nb)) and decode them as C's second pass
    sees them: (packed (nb, 12), d = fp16(d)*sc, dm = fp16(dmin)*m, float32 (8, nb))."""
    packed = pack_scales_k4(ls, lm)
    sc, m = get_scale_min_k4(packed)
    d = d_bits.view(np.float16).astype(F32) * sc.astype(F32)
    dm = dmin_bits.view(np.float16).astype(F32) * m.astype(F32)
    return packed, d, dm


def quantize_k45_chunk(xs: np.ndarray, qw3: np.ndarray | None, nmax: int, ws: Workspace,
                       qkx2: QkxStateSearch | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K (nmax 15) / Q5_K (nmax 31) quantization of super-blocks xs float32 (nb, 256).

    qw3: the imatrix under them as (32, 8, nb), or None for the _ref path; ws: scratch buffers.
    qkx2: the _ref path's make_qkx2_quants (default mainline's; ik_llama.cpp's quantize_row_q4_K_ref
    differs only there, passing search_kx_ik.qkx2_ik_state_t).
    Returns (d fp16 bits (nb,), dmin fp16 bits (nb,), scales uint8 (nb, 12), L uint8 (32, 8, nb)).
    """
    nb = xs.shape[0]
    xt3 = to_subblocks_t(xs, 32, ws.get("k_x", (32, 8, nb)))
    xt = xt3.reshape(32, 8 * nb)
    wt = ws.get("k_w", (32, 8 * nb))
    if qw3 is None:
        sum_x2 = np.add.reduce(np.multiply(xt, xt, out=wt), axis=0)
        av_x = np.sqrt(sum_x2 / F32(32))
        np.abs(xt, out=wt)
        wt += av_x  # C: av_x + fabsf(x)
        rmin, nstep = (-1.0, 20) if nmax == 15 else (-0.5, 15)
        if qkx2 is None:
            scales, mins, *search = qkx_search_state_t(xt, wt, nmax, rmin, 0.1, nstep, False, True, ws)
        else:
            scales, mins, *search = qkx2(xt, wt, nmax, rmin, 0.1, nstep, ws)
        scales = scales.reshape(8, nb)
        mins = mins.reshape(8, nb)
        max_scale = running_max(scales)
        max_min = running_max(mins)
        with np.errstate(divide="ignore"):
            inv_scale = np.where(max_scale > 0, F32(63.0) / max_scale, F32(0.0))
            inv_min = np.where(max_min > 0, F32(63.0) / max_min, F32(0.0))
        ls = np.minimum(nearest_int(inv_scale * scales) & 0xFF, 63).astype(np.uint8)
        lm = np.minimum(nearest_int(inv_min * mins) & 0xFF, 63).astype(np.uint8)
        d_bits = fp32_to_fp16_bits(max_scale / F32(63.0))
        dmin_bits = fp32_to_fp16_bits(max_min / F32(63.0))
    else:
        sum_x2 = superblock_sum_sq(xt3, ws)
        sigma2 = F32(2.0) * sum_x2 / F32(QK_K)
        wt3 = np.multiply(xt3, xt3, out=wt.reshape(32, 8, nb))
        wt3 += sigma2
        np.sqrt(wt3, out=wt3)
        np.multiply(qw3, wt3, out=wt3)  # C: qw * sqrtf(sigma2 + x*x)
        sw = np.add.reduce(wt, axis=0).reshape(8, nb)
        scales, mins, *search = qkx_search_state_t(xt, wt, nmax, -0.9, 0.05, 36, False, False, ws)
        # scales and mins in one make_qp_quants call (blocks are independent)
        dm_block, lsm = make_qp_quants_t(np.concatenate([scales.reshape(8, nb), mins.reshape(8, nb)], axis=1),
                                         np.concatenate([sw, sw], axis=1), 63, ws)
        d_block, m_block = dm_block[:nb], dm_block[nb:]
        ls, lm = lsm[:, :nb], lsm[:, nb:]
        if nmax == 31:  # quantize_row_q5_K_impl clamps, quantize_row_q4_K_impl does not
            ls = np.minimum(ls, 63)
            lm = np.minimum(lm, 63)
        d_bits = fp32_to_fp16_bits(d_block)
        dmin_bits = fp32_to_fp16_bits(m_block)
    packed, d, dm = decode_scales_k4(d_bits, dmin_bits, ls, lm)
    L = requantize_t(xt3, d, dm, nmax, tuple(search), ws)
    return d_bits, dmin_bits, packed, L


def quantize_k45_rows(rows: np.ndarray, imatrix: np.ndarray | None, nmax: int,
                      chunk_fn: K45Chunk = quantize_k45_chunk, chunk: int | None = None) -> np.ndarray:
    """Q4_K / Q5_K blocks of rows float32 (nrows, n_per_row) -> uint8 (nrows, row bytes): chunk_fn
    (mainline's quantize_k45_chunk, or ik_llama.cpp's kernels) on chunks of `chunk` super-blocks
    (superblock_chunks), then the block layout."""
    nrows, n_per_row = rows.shape
    type_size = 144 if nmax == 15 else 176
    out = np.empty((nrows * (n_per_row // QK_K), type_size), dtype=np.uint8)
    qwc = None if imatrix is None else ImatrixCache(imatrix, n_per_row, 32)
    ws = Workspace()
    for a, b, xs in superblock_chunks(rows, chunk):
        qw3 = None if qwc is None else qwc.get(a, b)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # IEEE results, as in C
            d_bits, dmin_bits, packed, L = chunk_fn(xs, qw3, nmax, ws)
        o = out[a:b]
        o[:, 0:2] = d_bits.view(np.uint8).reshape(-1, 2)
        o[:, 2:4] = dmin_bits.view(np.uint8).reshape(-1, 2)
        o[:, 4:16] = packed
        # L (32 i, 8 j, nb): sub-blocks 2c and 2c+1 share the 32 bytes of group c
        if nmax == 15:
            q = L[:, 0::2, :] | (L[:, 1::2, :] << 4)  # (32, 4, nb)
            o[:, 16:144] = q.transpose(2, 1, 0).reshape(-1, 128)
        else:
            lo = L & 0xF
            hi = L >> 4
            q = lo[:, 0::2, :] | (lo[:, 1::2, :] << 4)
            qh = np.zeros((32, L.shape[2]), dtype=np.uint8)
            for j in range(8):
                qh |= hi[:, j, :] << j
            o[:, 16:48] = qh.T
            o[:, 48:176] = q.transpose(2, 1, 0).reshape(-1, 128)
    return out.reshape(nrows, (n_per_row // QK_K) * out.shape[1])


def quantize_q4_k(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_q4_K: rows float32 (nrows, n_per_row), imatrix float32 (n_per_row,) or None."""
    return quantize_k45_rows(rows, imatrix, 15)


def quantize_q5_k(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_q5_K: rows float32 (nrows, n_per_row), imatrix float32 (n_per_row,) or None."""
    return quantize_k45_rows(rows, imatrix, 31)


def _dequantize(data: np.ndarray, n_per_row: int, q5: bool) -> np.ndarray:
    nrows = data.shape[0]
    ts = 176 if q5 else 144
    blk = data.reshape(-1, ts)
    d = blk[:, 0:2].copy().view(np.float16).astype(F32)  # (nb, 1)
    dmin = blk[:, 2:4].copy().view(np.float16).astype(F32)
    sc, m = get_scale_min_k4(blk[:, 4:16])
    d1 = d * sc.T.astype(F32)  # (nb, 8), C: d * sc in float
    m1 = dmin * m.T.astype(F32)
    qs = blk[:, 48:176] if q5 else blk[:, 16:144]
    qs = qs.reshape(-1, 4, 32)
    q = np.empty((blk.shape[0], 4, 2, 32), dtype=np.uint8)
    q[:, :, 0, :] = qs & 0xF
    q[:, :, 1, :] = qs >> 4
    if q5:
        qh = blk[:, 16:48]
        for j in range(8):
            q[:, j // 2, j % 2, :] += ((qh >> j) & 1) << 4
    y = d1.reshape(-1, 4, 2, 1) * q.astype(F32) - m1.reshape(-1, 4, 2, 1)
    return y.reshape(nrows, n_per_row)


def dequantize_q4_k(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_q4_K: y = d*sc*q - dmin*m, per sub-block of 32."""
    return _dequantize(data, n_per_row, False)


def dequantize_q5_k(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_q5_K: y = d*sc*(q + 16*qh) - dmin*m, per sub-block of 32."""
    return _dequantize(data, n_per_row, True)


QUANTIZE: dict = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k}
DEQUANTIZE: dict = {"Q4_K": dequantize_q4_k, "Q5_K": dequantize_q5_k}
register("Q4_K", QUANTIZE["Q4_K"], DEQUANTIZE["Q4_K"], ik=())  # ik: its own kernels (ik/kquants_q45_ik.py)
register("Q5_K", QUANTIZE["Q5_K"], DEQUANTIZE["Q5_K"], ik=())  # ik: its own kernels (ik/kquants_q45_ik.py)
