"""Q3_K: super-blocks of 256 = 16 sub-blocks of 16 three-bit values, 6-bit sub-block scales, fp16 d.

Ports of ggml-quants.c `quantize_row_q3_K_ref`, `quantize_row_q3_K_impl` (with imatrix) and
`dequantize_row_q3_K`, byte-exact:

- without imatrix: each sub-block's scale = make_q3_quants(16, 4, x, L, do_rmse=true); the scales
  are quantized with iscale = -32/max_scale (max_scale = the one of largest |.|, first wins) to
  nearest_int clamped to [-32, 31], + 32; d = fp16(1/iscale) (0 and zero scale bytes if max_scale
  is 0);
- with imatrix: sigma2 = 2*sum(x^2)/256 over the super-block, weights = qw*sqrt(sigma2 + x^2),
  scale = make_qx_quants(16, 4, x, L, 1, weights); then d = make_qx_quants(16, 32, scales, Ls,
  1, sw) quantizes the 16 scales, weighted by each sub-block's weight sum sw;
- both re-quantize every value with the decoded scale fp16(d)*(Ls - 32) where that is non-zero:
  L = clamp(nearest_int(x/d), -4, 3) + 4; else the search's L stays.

Packing: the high bit of value j goes to bit j/32 of hmask[j%32]; the low two bits of values
128h + 32k + l go to bits 2k of qs[32h + l]; scale j's low nibble to scales[j%8] (high nibble
for j >= 8) and its top two bits to bits 2*(j/4) of scales[8 + j%4].

Layout: as Q6_K, a chunk of super-blocks (m, 256) is transposed to (16, 16*m) = [index in
sub-block, sub-block] for the searches (make_q3_quants_t / qx_search_state_t); requantize and
the packing work on the natural (m, 256) layout. Chunks: CHUNK_REF = 2048 super-blocks without
imatrix (the coordinate descent makes numpy calls on (16*m,) rows, so it wants many blocks per
call), CHUNK_IMPL = 512 with one (the 19-candidate search streams (16, 16*m) arrays and is best
near the cache size); the imatrix path's second-level search on the (16, m) scales runs once per
_SCALE_GROUP super-blocks. Scratch buffers come from the thread's Workspace.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..numeric import seq_sum0
from ..registry import register
from ..rounding import fp16_bits_to_fp32, fp32_to_fp16_bits, nearest_int
from ..scratch import Workspace, thread_workspace
from ..search import make_q3_quants_t, make_qx_quants_t, qx_levels_t, qx_search_state_t
from ..types import QK_K
from .q6_k import ImatrixLayout, chunk_size, first_absmax, requantize, to_sub_t

F32 = np.float32
U32 = np.uint32
# super-blocks per chunk: the coordinate descent steps through the 16 in-block indices with
# numpy calls on (blocks,) vectors, so it wants many blocks per call; the imatrix search streams
# (16, 16*m) arrays 19 times and is best near the size of the last-level cache
CHUNK_REF = 2048
CHUNK_IMPL = 512
_SCALE_GROUP = 8192  # super-blocks per second-level search of the imatrix path

BLOCK_Q3_K = np.dtype([("hmask", "u1", (QK_K // 8,)), ("qs", "u1", (QK_K // 4,)), ("scales", "u1", (12,)),
                       ("d", "<u2")])
assert BLOCK_Q3_K.itemsize == 110


def pack_scales_q3(ls: np.ndarray) -> np.ndarray:
    """16 six-bit scales uint8 (m, 16) -> the 12 scale bytes (m, 12) of block_q3_K."""
    m = ls.shape[0]
    out = np.empty((m, 12), dtype=np.uint8)
    out[:, :8] = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
    hi = (ls >> 4).reshape(m, 4, 4)  # [j/4, j%4]
    out[:, 8:] = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    return out


def unpack_scales_q3(sb: np.ndarray) -> np.ndarray:
    """The 12 scale bytes (m, 12) -> 16 six-bit scales uint8 (m, 16) (0..63, i.e. scale + 32)."""
    m = sb.shape[0]
    lo = np.concatenate([sb[:, :8] & 0xF, sb[:, :8] >> 4], axis=1)
    hi = (sb[:, None, 8:] >> np.array([0, 2, 4, 6], dtype=np.uint8)[None, :, None]) & 3  # (m, j/4, j%4)
    return lo | (hi.reshape(m, 16) << 4)


def pack_q3_k(lb: np.ndarray, blk: np.ndarray) -> None:
    """Write hmask / qs of blocks blk from L uint8 (m, 256) (values 0..7), as quantize_row_q3_K_ref.

    Four bytes at a time on uint32 words (numpy's uint8 shifts are not vectorized; no bits cross
    a byte), with the combined index (bit of hmask, pair of bits of qs) moved outermost so every
    step is one contiguous expression.
    """
    m = lb.shape[0]
    wk = np.empty((8, m, 8), dtype=U32)  # [k = value // 32, block, (value % 32) / 4]
    wk[...] = np.ascontiguousarray(lb).view(U32).reshape(m, 8, 8).transpose(1, 0, 2)
    hb = wk >> U32(2)
    hb &= U32(0x01010101)
    hm = hb[0]
    for k in range(1, 8):
        hb[k] <<= U32(k)
        hm |= hb[k]
    wk &= U32(0x03030303)
    lo = wk.reshape(2, 4, m, 8)  # value 128h + 32k + 4i + byte: [h, k, block, i]
    qs = np.empty((m, 2, 8), dtype=U32)
    for h in range(2):
        t = lo[h, 1] << U32(2)
        t |= lo[h, 0]
        lo[h, 2] <<= U32(4)
        t |= lo[h, 2]
        lo[h, 3] <<= U32(6)
        t |= lo[h, 3]
        qs[:, h] = t
    blk["hmask"] = hm.view(np.uint8).reshape(m, 32)
    blk["qs"] = qs.view(np.uint8).reshape(m, 64)


def finish_q3_k(xs: np.ndarray, levels: Callable[[], np.ndarray], ls: np.ndarray, d16: np.ndarray, blk: np.ndarray,
                ws: Workspace) -> None:
    """Shared tail of ref and impl (also ik_llama.cpp's impl): re-quantize with the decoded scales and pack.

    xs float32 (m, 256); levels() -> the search's levels uint8 (16, 16*m) (0..7), needed only
    where a decoded scale is 0; ls uint8 (m, 16) quantized scales + 32; d16 uint16 (m,) fp16 bits of d.
    """
    d = fp16_bits_to_fp32(d16)[:, None] * (ls.astype(F32) - F32(32))  # (m, 16): float * int8
    pack_q3_k(requantize(xs, d, levels, -4, 3, ws), blk)
    blk["scales"] = pack_scales_q3(ls)
    blk["d"] = d16


def quantize_q3_k_ref_chunk(xs: np.ndarray, blk: np.ndarray, ws: Workspace) -> None:
    """quantize_row_q3_K_ref on super-blocks xs float32 (m, 256) into blk (m,) BLOCK_Q3_K."""
    m = xs.shape[0]
    scale, lt = make_q3_quants_t(to_sub_t(xs, ws.get("q3_xt", (16, 16 * m))), 4, True, ws)
    scales = scale.reshape(m, 16)
    _, max_scale = first_absmax(scales)
    nz = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = (F32(-32.0) / np.where(nz, max_scale, F32(1))).astype(F32)
        li = nearest_int(iscale[:, None] * scales)
        d16 = np.where(nz, fp32_to_fp16_bits(F32(1.0) / iscale), np.uint16(0)).astype(np.uint16)
    ls = np.where(nz[:, None], np.clip(li, -32, 31) + 32, 0).astype(np.uint8)
    finish_q3_k(xs, lambda: lt, ls, d16, blk, ws)


def impl_search_chunk(xs: np.ndarray, qwt: np.ndarray, ws: Workspace
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sub-block search of quantize_row_q3_K_impl on super-blocks xs float32 (m, 256), imatrix
    qwt (16, 16*m). Returns (scale, sw, isc, zsub), each (16*m,) in to_sub_t's column order:
    the sub-block scales, their weight sums, and the search state that rebuilds L (qx_levels_t)."""
    m = xs.shape[0]
    # sumx2 in C's order over the 256 values: (256, m), sequential down axis 0
    x2seq = ws.get("q3_x2", (QK_K, m))
    np.copyto(x2seq, xs.T)
    x2seq *= x2seq
    sumx2 = seq_sum0(x2seq)  # np.add.reduce would sum one super-block's column pairwise
    sigma2 = (F32(2) * sumx2) / F32(QK_K)  # (m,)
    xt = to_sub_t(xs, ws.get("q3_xt", (16, 16 * m)))  # (16, 16*m)
    w = np.multiply(xt, xt, out=ws.get("q3_w", (16, 16 * m)))
    w += np.repeat(sigma2, 16)[None, :]
    np.sqrt(w, out=w)
    w *= qwt  # weight = qw * sqrtf(sigma2 + x*x)
    sw = np.add.reduce(w, axis=0, initial=F32(0))  # (16*m,)
    scale, isc, zsub = qx_search_state_t(xt, w, 4, 1, ws)
    return scale, sw, isc, zsub


def quantize_q3_k_impl(xs_all: np.ndarray, iml: ImatrixLayout, chunk: int, out: np.ndarray, ws: Workspace) -> None:
    """quantize_row_q3_K_impl on all super-blocks xs_all float32 (nb, 256) into out (nb,) BLOCK_Q3_K.

    The sub-block search runs per chunk; the second-level search (the 16 scales of each
    super-block, make_qx_quants(16, 32, scales, Ls, 1, sw)) runs once per group of chunks: on its
    small (16, m) arrays numpy's per-call cost dominates, so it wants many super-blocks at once.
    """
    nb = xs_all.shape[0]
    group = max(chunk, (_SCALE_GROUP // chunk) * chunk)
    for A in range(0, nb, group):
        B = min(nb, A + group)
        sc_t = np.empty((16, B - A), dtype=F32)  # [sub-block j, super-block]
        sw_t = np.empty((16, B - A), dtype=F32)
        state = []
        for a in range(A, B, chunk):
            b = min(B, a + chunk)
            scale, sw, isc, zsub = impl_search_chunk(xs_all[a:b], iml.get(a, b), ws)
            sc_t[:, a - A:b - A] = scale.reshape(b - a, 16).T
            sw_t[:, a - A:b - A] = sw.reshape(b - a, 16).T
            state.append((a, b, isc, zsub))
        d_block, ls_t = make_qx_quants_t(sc_t, sw_t, 32, 1, ws)
        d16 = fp32_to_fp16_bits(d_block)
        for a, b, isc, zsub in state:
            xs = xs_all[a:b]

            def levels(xs: np.ndarray = xs, isc: np.ndarray = isc, zsub: np.ndarray = zsub) -> np.ndarray:
                return qx_levels_t(to_sub_t(xs), isc, 4, zsub).astype(np.uint8)

            finish_q3_k(xs, levels, np.ascontiguousarray(ls_t[:, a - A:b - A].T), d16[a - A:b - A], out[a:b], ws)


def quantize_q3_k(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """quantize_q3_K: rows float32 (nrows, n) [, imatrix float32 (n,)] -> uint8 (nrows, n/256*110)."""
    nrows, n = rows.shape
    xs_all = rows.reshape(-1, QK_K)
    nb = xs_all.shape[0]
    out = np.empty(nb, dtype=BLOCK_Q3_K)
    chunk = chunk_size(nb, n // QK_K, CHUNK_REF if imatrix is None else CHUNK_IMPL)
    ws = thread_workspace()
    if imatrix is not None:
        quantize_q3_k_impl(xs_all, ImatrixLayout(imatrix, n, chunk, ws), chunk, out, ws)
    else:
        for a in range(0, nb, chunk):
            b = min(nb, a + chunk)
            quantize_q3_k_ref_chunk(xs_all[a:b], out[a:b], ws)
    return out.view(np.uint8).reshape(nrows, -1)


def dequantize_q3_k(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_q3_K: y = (fp16(d) * (scale - 32)) * (q - (high bit ? 0 : 4)) -> float32."""
    blk = data.reshape(-1).view(BLOCK_Q3_K)
    nb = blk.shape[0]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]
    lo = (blk["qs"].reshape(nb, 2, 1, 32) >> shifts) & 3  # (nb, half, k, l): value 128h + 32k + l
    bits = np.arange(8, dtype=np.uint8)[None, :, None]
    hi = (blk["hmask"].reshape(nb, 1, 32) >> bits) & 1  # (nb, 8, 32): value 32k + l
    q = lo.reshape(nb, 8, 32).astype(np.int8) - np.where(hi != 0, 0, 4).astype(np.int8)
    dl = fp16_bits_to_fp32(blk["d"])[:, None] * (unpack_scales_q3(blk["scales"]).astype(F32) - F32(32))
    y = dl.reshape(nb, 16, 1) * q.reshape(nb, 16, 16).astype(F32)
    return y.reshape(data.shape[0], n_per_row)


QUANTIZE: dict = {"Q3_K": quantize_q3_k}
DEQUANTIZE: dict = {"Q3_K": dequantize_q3_k}
register("Q3_K", QUANTIZE["Q3_K"], DEQUANTIZE["Q3_K"], ik=(False,))  # ik: its imatrix variant in ik/kquants_q23_ik.py
