"""Q6_K: super-blocks of 256 = 16 sub-blocks of 16 six-bit values, int8 sub-block scales, fp16 d.

Ports of ggml-quants.c `quantize_row_q6_K_ref`, `quantize_row_q6_K_impl` (with imatrix) and
`dequantize_row_q6_K`, byte-exact:

- each sub-block: scale = make_qx_quants(16, 32, x, L, rmse_type 1, weights), weights = x*x
  without imatrix and the raw imatrix values with one (mainline's impl does not use sigma2);
- max_scale = the sub-block scale of largest |.| (first wins); |max_scale| < 1e-15 -> zero block;
- iscale = -128/max_scale, d = fp16(1/iscale), scales = MIN(127, nearest_int(iscale*scale));
- every value is re-quantized with the decoded scale fp16(d)*scale where that is non-zero:
  L = clamp(nearest_int(x/(d*sc)), -32, 31) + 32; else the search's L stays.

Layout: a chunk of super-blocks (m, 256) is transposed once to (16, 16*m) = [index in sub-block,
sub-block], the layout the search works on (each C reduction runs down axis 0, in C's order);
the final re-quantization and the packing work on the natural (m, 256) layout. The search's own
L is rebuilt only if some decoded sub-block scale is 0 (requantize keeps it there). Chunks of
CHUNK_SUPERBLOCKS = 512 (numpy's per-call cost vs the cache), scratch buffers from the thread's
Workspace (kept between calls: fresh ones cost page faults comparable to the search).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..numeric import GROUP_MAX_EPS
from ..registry import register
from ..rounding import fp16_bits_to_fp32, fp32_to_fp16_bits, nearest_int
from ..scratch import Workspace, thread_workspace
from ..search import qx_levels_t, qx_search_state_t
from ..types import QK_K

F32 = np.float32
U32 = np.uint32
CHUNK_SUPERBLOCKS = 512

BLOCK_Q6_K = np.dtype([("ql", "u1", (QK_K // 2,)), ("qh", "u1", (QK_K // 4,)), ("scales", "i1", (QK_K // 16,)),
                       ("d", "<u2")])
assert BLOCK_Q6_K.itemsize == 210


def to_sub_t(xs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(m, 256) super-blocks -> contiguous (16, 16*m): [index in sub-block, sub-block 16*b + j]."""
    if out is None:
        return np.ascontiguousarray(xs.reshape(-1, 16).T)
    np.copyto(out, xs.reshape(-1, 16).T)
    return out


class ImatrixLayout:
    """The imatrix under each chunk of super-blocks, in to_sub_t's layout, built once per call.

    Super-block k of the flattened rows uses imatrix[256*(k % nbr) : 256*(k % nbr + 1)]
    (quant_weights + QK_K*i in C, i counting blocks within the row). Chunks that start on a row
    boundary and have the common length share one array.
    """

    def __init__(self, imatrix: np.ndarray, n_per_row: int, chunk: int, ws: Workspace) -> None:
        self.nbr = n_per_row // QK_K
        self.blocks = imatrix.reshape(self.nbr, QK_K)
        self.chunk = chunk
        self._common: np.ndarray | None = None
        self._ws = ws  # buffers "iml_*"

    def get(self, a: int, b: int) -> np.ndarray:
        """float32 (16, 16*(b-a)) for super-blocks a..b-1 (valid until the next call)."""
        if b - a == self.chunk and a % self.nbr == 0 and self.chunk % self.nbr == 0:
            if self._common is None:
                self._common = to_sub_t(np.tile(self.blocks, (self.chunk // self.nbr, 1)),
                                        self._ws.get("iml_common", (16, 16 * self.chunk)))
            return self._common
        return to_sub_t(self.blocks[np.arange(a, b) % self.nbr], self._ws.get("iml_chunk", (16, 16 * (b - a))))


def chunk_size(nb: int, nbr: int, target: int = CHUNK_SUPERBLOCKS) -> int:
    """Super-blocks per chunk: target rounded down to whole rows when rows are shorter than it."""
    if nbr <= target:
        return max(nbr, target - target % nbr)
    return target


def first_absmax(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `if (fabsf(v[j]) > amax) { amax = fabsf(v[j]); vmax = v[j]; }` with amax = vmax = 0 at start,
    along axis 1 of (m, J) -> (amax, vmax) float32 (m,). np.argmax returns the first maximum."""
    av = np.abs(v)
    idx = np.argmax(av, axis=1)
    r = np.arange(v.shape[0])
    amax = av[r, idx]
    vmax = v[r, idx]
    none = ~(amax > 0)  # all zero (or NaN): C never updates
    if none.any():
        amax = np.where(none, F32(0), amax)
        vmax = np.where(none, F32(0), vmax)
    return amax, vmax


def requantize(xs: np.ndarray, d: np.ndarray, levels: Callable[[], np.ndarray], lo: int, hi: int,
               ws: Workspace) -> np.ndarray:
    """C's final pass: where d != 0, L = clamp(nearest_int(x/d), lo, hi) - lo; else keep the search's L.

    xs float32 (m, 256); d float32 (m, 16) per sub-block; levels() -> the search's levels uint8
    (16, 16*m) in to_sub_t's layout (already offset by -lo), called only when some d is 0 or some
    quotient is huge. Returns uint8 (m, 256) in C's in-block order (a Workspace buffer).
    Fast path: when every |x/d| < 2^22, nearest_int is np.rint (round half to even), and clamping
    to integer bounds commutes with it, so clamp and rint run in float32 and the shift by -lo
    writes the uint8 result.
    """
    m = xs.shape[0]
    t = ws.get("rq_t", (m, QK_K))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        np.divide(xs.reshape(-1, 16), d.reshape(-1, 1), out=t.reshape(-1, 16))
    out = ws.get("rq_L", (m, QK_K), np.uint8)
    if t.max() < F32(4.0e6) and t.min() > F32(-4.0e6):  # also false for NaN / inf (d == 0)
        np.clip(t, F32(lo), F32(hi), out=t)
        np.rint(t, out=t)  # before the shift: t - lo would round away fractions near .5
        np.subtract(t, F32(lo), out=out, casting="unsafe")  # exact: small integers
        return out
    li = nearest_int(t)  # exact ggml bits for huge / non-finite quotients
    np.clip(li, lo, hi, out=li)
    li -= lo
    keep = np.ascontiguousarray(levels().T).reshape(m, 16, 16)
    out[...] = np.where((d != 0)[:, :, None], li.reshape(m, 16, 16), keep).reshape(m, QK_K)
    return out


def pack_q6_k(lb: np.ndarray, blk: np.ndarray) -> None:
    """Write ql / qh of blocks blk from L uint8 (m, 256) (values 0..63), as quantize_row_q6_K_ref.

    ql[64h + l] = L[128h + l] & 15 | (L[128h + l + 64] & 15) << 4, ql[64h + 32 + l] likewise with
    +32 / +96; qh[32h + l] = the top two bits of L[128h + l + 32k] at bits 2k. Done four bytes at a
    time on uint32 words (numpy's uint8 shifts are not vectorized; no bits cross a byte), with the
    quarter index k moved outermost so every step is one contiguous expression.
    """
    m = lb.shape[0]
    wk = np.empty((4, m, 2, 8), dtype=U32)  # [k, block, h, l/4]
    wk[...] = np.ascontiguousarray(lb).view(U32).reshape(m, 2, 4, 8).transpose(2, 0, 1, 3)
    lo = wk & U32(0x0F0F0F0F)
    wk >>= U32(4)
    wk &= U32(0x03030303)
    ql = np.empty((m, 2, 2, 8), dtype=U32)  # [block, h, c, l/4]
    lo[2] <<= U32(4)
    lo[2] |= lo[0]
    ql[:, :, 0] = lo[2]
    lo[3] <<= U32(4)
    lo[3] |= lo[1]
    ql[:, :, 1] = lo[3]
    qh = wk[1] << U32(2)
    qh |= wk[0]
    wk[2] <<= U32(4)
    qh |= wk[2]
    wk[3] <<= U32(6)
    qh |= wk[3]
    blk["ql"] = ql.view(np.uint8).reshape(m, 128)
    blk["qh"] = qh.view(np.uint8).reshape(m, 64)


SubblockSearch = Callable[[np.ndarray, "np.ndarray | None", Workspace], "tuple[np.ndarray, Callable[[], np.ndarray]]"]


def mainline_search(xt: np.ndarray, qwt: np.ndarray | None, ws: Workspace
                    ) -> tuple[np.ndarray, Callable[[], np.ndarray]]:
    """make_qx_quants(16, 32, x, L, 1, qw) of every sub-block of xt (16, nsub): (scale (nsub,),
    levels() -> the search's L uint8 (16, nsub), built only when asked)."""
    scale, isc, zsub = qx_search_state_t(xt, qwt, 32, 1, ws)
    return scale, lambda: qx_levels_t(xt, isc, 32, zsub).astype(np.uint8)


def quantize_q6_k_chunk(xs: np.ndarray, qwt: np.ndarray | None, blk: np.ndarray, ws: Workspace,
                        search: SubblockSearch = mainline_search) -> None:
    """Quantize super-blocks xs float32 (m, 256) into blk (m,) BLOCK_Q6_K; qwt = imatrix (16, 16*m) or None.
    search: the sub-block scale search (mainline's make_qx_quants, or ik_llama.cpp's)."""
    m = xs.shape[0]
    xt = to_sub_t(xs, ws.get("q6_xt", (16, 16 * m)))
    scale, levels = search(xt, qwt, ws)
    scales = scale.reshape(m, 16)
    amax, max_scale = first_absmax(scales)
    zero = amax < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = (F32(-128.0) / np.where(zero, F32(1), max_scale)).astype(F32)
        d16 = fp32_to_fp16_bits(F32(1.0) / iscale)
        sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
    d = fp16_bits_to_fp32(d16)[:, None] * sc.astype(F32)  # (m, 16) float * int8
    pack_q6_k(requantize(xs, d, levels, -32, 31, ws), blk)
    blk["scales"] = sc
    blk["d"] = d16
    if zero.any():
        blk[zero] = np.zeros(1, dtype=BLOCK_Q6_K)


def quantize_q6_k(rows: np.ndarray, imatrix: np.ndarray | None, search: SubblockSearch = mainline_search
                  ) -> np.ndarray:
    """quantize_q6_K: rows float32 (nrows, n) [, imatrix float32 (n,)] -> uint8 (nrows, n/256*210)."""
    nrows, n = rows.shape
    xs_all = rows.reshape(-1, QK_K)
    nb = xs_all.shape[0]
    out = np.empty(nb, dtype=BLOCK_Q6_K)
    chunk = chunk_size(nb, n // QK_K)
    ws = thread_workspace()
    iml = None if imatrix is None else ImatrixLayout(imatrix, n, chunk, ws)
    for a in range(0, nb, chunk):
        b = min(nb, a + chunk)
        quantize_q6_k_chunk(xs_all[a:b], None if iml is None else iml.get(a, b), out[a:b], ws, search)
    return out.view(np.uint8).reshape(nrows, -1)


def dequantize_q6_k(data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_q6_K: y = (fp16(d) * scale) * (q - 32), float32 -> (nrows, n_per_row)."""
    blk = data.reshape(-1).view(BLOCK_Q6_K)
    nb = blk.shape[0]
    ql = blk["ql"].reshape(nb, 2, 2, 32)
    qh = blk["qh"].reshape(nb, 2, 1, 32)
    q = np.empty((nb, 2, 4, 32), dtype=np.int8)
    q[:, :, 0:2] = ql & 0xF
    q[:, :, 2:4] = ql >> 4
    q |= ((qh >> np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]) & 3).astype(np.int8) << 4
    q -= 32
    dl = fp16_bits_to_fp32(blk["d"])[:, None] * blk["scales"].astype(F32)  # (nb, 16)
    y = dl.reshape(nb, 16, 1) * q.reshape(nb, 16, 16).astype(F32)
    return y.reshape(data.shape[0], n_per_row)


QUANTIZE: dict = {"Q6_K": quantize_q6_k}
DEQUANTIZE: dict = {"Q6_K": dequantize_q6_k}
register("Q6_K", quantize_q6_k, dequantize_q6_k, ik=())  # ik: its own search (ik/q6_k_ik.py)
