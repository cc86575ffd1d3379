"""Grid recovery for Q6_K (y = (d*sc)*q, q in -32..31, 16 sub-blocks of 16) and Q4_K / Q5_K
(y = (d*sc)*q - (dmin*m), sc and m in 0..63, 8 sub-blocks of 32), as dequantize_row_q6_K /
dequantize_row_q4_K / dequantize_row_q5_K compute them.

The normal kernel, run on the dequantized values, lands on or next to the original encoding:
its super-block scales are right or a few fp16 steps off, its sub-block scales a few steps off.
So for a block the kernel does not reproduce, the search keeps the super-block scale(s) within a
few fp16 steps of the kernel's and, per sub-block, tries every sub-block scale (and, for Q4_K /
Q5_K, mins around the kernel's and around the one the sub-block's minimum implies), rounds the
codes and keeps the first exact candidate nearest the kernel's. Sub-blocks are independent once
the super-block scales are fixed, so the search is per sub-block, vectorized over blocks.

Q6_K sign rule: (sc, q) and (-sc, -q) decode to the same values when no code is -32; the
quantizer's make_qx_quants gives the sub-block's largest-magnitude weight a negative code. When
two codes +k and -k tie for the largest magnitude the dequantized values cannot say which weight
was larger, unless a code is 0: its value is a zero signed like d*sc, and F16 / BF16 / F32 keep
that sign (the verification compares bits, so -0.0 != 0.0). Without a zero the information is
lost; `canonical_signs` gives the first of the tied codes the negative sign, as make_qx_quants'
first-maximum loop does (in Gemma3-270M's published Q4_K_M this matched ~60% of such sub-blocks,
the last-one rule ~40%: a coin flip the values cannot settle).
"""

from __future__ import annotations

import numpy as np

from ..kquants.q3_k import BLOCK_Q3_K, pack_q3_k, pack_scales_q3, unpack_scales_q3
from ..kquants.q6_k import BLOCK_Q6_K, pack_q6_k
from ..kquants.q45_k import get_scale_min_k4, pack_scales_k4
from ..nonlinear import BLOCK_IQ4_XS, KV_F32
from ..numeric import F32
from .common import OFFSETS, fp16_bits_of, fp16_near, round_stored, same_bits

_CHUNK = 64  # failing blocks per vectorized search step (memory: chunk x sub-blocks x candidates x values)


# --- Q6_K ---------------------------------------------------------------------------------------

def q6_codes(blk: np.ndarray) -> np.ndarray:
    """Codes q - 32 (int32 (nb, 256)) of Q6_K blocks, as dequantize_row_q6_K unpacks them."""
    nb = blk.shape[0]
    ql = blk["ql"].reshape(nb, 2, 2, 32)
    qh = blk["qh"].reshape(nb, 2, 1, 32)
    q = np.empty((nb, 2, 4, 32), dtype=np.int32)
    q[:, :, 0:2] = ql & 0xF
    q[:, :, 2:4] = ql >> 4
    q |= ((qh >> np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]) & 3).astype(np.int32) << 4
    return (q - 32).reshape(nb, 256)


def q6_encode(d: np.ndarray, sc: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Q6_K bytes (nb, 210) from d (nb,) exact fp16 values, sc int (nb, 16), codes int (nb, 256)."""
    nb = codes.shape[0]
    blk = np.zeros(nb, dtype=BLOCK_Q6_K)
    blk["d"] = fp16_bits_of(d)
    blk["scales"] = sc.astype(np.int8)
    pack_q6_k((codes + 32).astype(np.uint8), blk)
    return blk.view(np.uint8).reshape(nb, -1)


def scaled_search(x: np.ndarray, d: np.ndarray, sk: np.ndarray, scand: np.ndarray, levels: np.ndarray,
                  stored: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-blocks whose values are y = (d * s) * levels[i] (float32, no FMA), s an integer sub-block
    scale: for blocks x (n, nsub, sub) and scales d (n,), per sub-block the candidate s in `scand`
    nearest the kernel's sk (n, nsub) (same sign preferred) whose nearest levels reproduce its
    values bit for bit. Returns s (n, nsub), level indices (n, nsub, sub), found (n, nsub)."""
    n, nsub, sub = x.shape
    xs = x[:, :, None, :]
    dl = (d[:, None] * scand[None, :].astype(F32)).astype(F32)[:, None, :, None]  # (n, 1, ncand, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = xs / dl
    mid = (levels[1:] + levels[:-1]) * F32(0.5)
    idx = np.searchsorted(mid, np.nan_to_num(v)).astype(np.int32)  # nearest level
    y = round_stored(dl * (levels[idx] + F32(0)), stored)
    good = same_bits(y, np.broadcast_to(xs, y.shape)).all(axis=3) & (scand != 0)[None, None, :]
    dist = np.abs(scand[None, None, :] - sk[:, :, None]).astype(np.int32) * 2 + (
        np.sign(scand)[None, None, :] != np.sign(sk)[:, :, None])
    dist = np.where(good, dist, 1 << 20)
    best = np.argmin(dist, axis=2)
    found = good.any(axis=2)
    sel = np.take_along_axis(idx, best[:, :, None, None], axis=2)[:, :, 0, :]
    return scand[best], sel, found


_Q6_LEVELS = np.arange(-32, 32).astype(F32)
_Q6_SCALES = np.arange(-128, 128, dtype=np.int32)


def _q6_search(x: np.ndarray, d: np.ndarray, sck: np.ndarray, stored: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q6_K: per sub-block of 16 the int8 scale nearest sck (n, 16) whose codes reproduce it.
    Returns sc (n, 16), codes (n, 256), found (n, 16)."""
    n = x.shape[0]
    sc, idx, found = scaled_search(x.reshape(n, 16, 16), d, sck, _Q6_SCALES, _Q6_LEVELS, stored)
    return sc, (idx - 32).reshape(n, 256), found


def canonical_signs(sc: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q6_K's sign rule (module doc): negate (sc, codes) of a sub-block whose first largest-magnitude
    code is positive, where the negation exists (no code -32 or 0, sc != -128). Same decoded values."""
    n = sc.shape[0]
    c = codes.reshape(n, 16, 16)
    k = np.abs(c).max(axis=2, keepdims=True)
    first = np.argmax(np.abs(c) == k, axis=2)  # first index of the largest magnitude
    lastv = np.take_along_axis(c, first[:, :, None], axis=2)[:, :, 0]
    # a zero code decodes to a zero signed like d*sc, which the stored values keep: no flip there
    flip = (lastv > 0) & (sc != -128) & (sc != 0) & ~(c == 0).any(axis=2)
    sc = np.where(flip, -sc, sc)
    c = np.where(flip[:, :, None], -c, c)
    return sc, c.reshape(n, 256)


def recover_q6_k(x: np.ndarray, blocks: np.ndarray, ok: np.ndarray, stored: str, canonical: bool = True) -> None:
    """Replace, in place, Q6_K blocks (nb, 210) the kernel did not reproduce by exact ones where the
    search finds them (ok updated); then (canonical) apply the sign rule to the blocks it found
    (the kernel's exact blocks already follow it and are kept as they are)."""
    from ..types import get_type
    from .common import blocks_ok

    qt = get_type("Q6_K")
    kernel_ok = ok.copy()
    guesses = [(g, sgn) for g in range(48) for sgn in (-1, 1)]  # guessed d (index, sign)
    for off in list(OFFSETS) + [100 + i for i in range(len(guesses))]:
        idx = np.nonzero(~ok)[0]
        if len(idx) == 0:
            break
        for s in range(0, len(idx), _CHUNK):
            ii = idx[s:s + _CHUNK]
            blk = blocks[ii].reshape(-1).view(BLOCK_Q6_K)
            if off < 100:
                d = fp16_near(blk["d"].view(np.float16).astype(F32), off)
            else:
                g, sgn = guesses[off - 100]
                d = (F32(sgn) * _d_guesses(x[ii], 16, (32, 31, 30), -128)[g]).astype(np.float16).astype(F32)
            d = np.nan_to_num(d)
            sc, codes, found = _q6_search(x[ii], d, blk["scales"].astype(np.int32), stored)
            full = found.all(axis=1)
            if not full.any():
                continue
            cand = q6_encode(d[full], sc[full], codes[full])
            good = blocks_ok(cand, x[ii[full]], qt, stored)
            sel = ii[full][good]
            blocks[sel] = cand[good]
            ok[sel] = True
    idx = np.nonzero(ok & ~kernel_ok)[0]
    if canonical and len(idx):
        blk = blocks[idx].reshape(-1).view(BLOCK_Q6_K)
        d = blk["d"].view(np.float16).astype(F32)
        sc, codes = canonical_signs(blk["scales"].astype(np.int32), q6_codes(blk))
        blocks[idx] = q6_encode(d, sc, codes)


# --- Q4_K / Q5_K --------------------------------------------------------------------------------

def k45_unpack(b: np.ndarray, q5: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """d, dmin (nb,) float32, sc, m int32 (nb, 8), codes int32 (nb, 256) of Q4_K / Q5_K bytes."""
    nb = b.shape[0]
    d = b[:, 0:2].copy().view(np.float16).astype(F32)[:, 0]
    dmin = b[:, 2:4].copy().view(np.float16).astype(F32)[:, 0]
    sc, m = get_scale_min_k4(b[:, 4:16])
    qs = (b[:, 48:176] if q5 else b[:, 16:144]).reshape(nb, 4, 32)
    q = np.empty((nb, 4, 2, 32), dtype=np.int32)
    q[:, :, 0, :] = qs & 0xF
    q[:, :, 1, :] = qs >> 4
    if q5:
        qh = b[:, 16:48]
        for j in range(8):
            q[:, j // 2, j % 2, :] += ((qh >> j) & 1).astype(np.int32) << 4
    return d, dmin, sc.T.astype(np.int32), m.T.astype(np.int32), q.reshape(nb, 256)


def k45_encode(d: np.ndarray, dmin: np.ndarray, sc: np.ndarray, m: np.ndarray, codes: np.ndarray,
               q5: bool) -> np.ndarray:
    """Q4_K / Q5_K bytes from exact fp16 d, dmin (nb,), sc, m (nb, 8) in 0..63, codes (nb, 256)."""
    nb = codes.shape[0]
    out = np.zeros((nb, 176 if q5 else 144), dtype=np.uint8)
    out[:, 0:2] = fp16_bits_of(d).reshape(nb, 1).view(np.uint8)
    out[:, 2:4] = fp16_bits_of(dmin).reshape(nb, 1).view(np.uint8)
    out[:, 4:16] = pack_scales_k4(sc.T.astype(np.uint8), m.T.astype(np.uint8))
    q: np.ndarray = codes.reshape(nb, 4, 2, 32).astype(np.uint8)
    if q5:
        qh = np.zeros((nb, 32), dtype=np.uint8)
        for j in range(8):
            qh |= ((q[:, j // 2, j % 2, :] >> 4) & 1) << j
        out[:, 16:48] = qh
        q = q & 0xF
    out[:, 48 if q5 else 16:] = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(nb, 128)
    return out


def _k45_search(x: np.ndarray, d: np.ndarray, dmin: np.ndarray, sck: np.ndarray, mk: np.ndarray, nmax: int,
                stored: str, nsub: int = 8, nlev: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per sub-block (nsub of them): (sc, m) in 0..nlev-1 nearest the kernel's (sck, mk) whose
    rounded codes give its values exactly, for super-block scales d, dmin (n,). The mins tried for
    each sc: the kernel's +-2 and those that put the sub-block's minimum on code 0, 1 or 2 (+-1).
    Returns sc, m (n, nsub), codes (n, 256), found (n, nsub). Q4_K / Q5_K: 8 x 32, 64 levels;
    Q2_K: 16 x 16, 16 levels."""
    n = x.shape[0]
    xs = x.reshape(n, nsub, -1)
    sub = xs.shape[2]
    scs = np.arange(nlev, dtype=np.int32)
    d1 = (d[:, None] * scs[None, :].astype(F32)).astype(F32)  # (n, nlev) C: d * sc in float
    xmin = xs.min(axis=2)  # (n, nsub)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = [np.rint((d1[:, None, :] * F32(qm) - xmin[:, :, None]) / dmin[:, None, None]) for qm in (0, 1, 2)]
    mc = np.concatenate([np.broadcast_to(mk[:, :, None, None] + np.arange(-2, 3)[None, None, None, :],
                                         (n, nsub, nlev, 5))]
                        + [np.nan_to_num(e)[..., None] + np.arange(-1, 2)[None, None, None, :] for e in est],
                        axis=3)
    mc = np.clip(mc, 0, nlev - 1).astype(np.int32)  # (n, nsub, nlev sc, 14 m)
    a = d1[:, None, :, None, None]
    b = (dmin[:, None, None, None] * mc.astype(F32)).astype(F32)[..., None]  # C: dmin * m in float
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint((xs[:, :, None, None, :] + b) / a)
    q = np.nan_to_num(np.clip(q, 0, nmax)).astype(F32) + F32(0)  # -0.0 -> 0.0 as (float)(int)q
    y = round_stored(a * q - b, stored)
    good = same_bits(y, np.broadcast_to(xs[:, :, None, None, :], y.shape)).all(axis=4)  # (n, nsub, nlev, 14)
    dist = np.abs(scs[None, None, :, None] - sck[:, :, None, None]) + np.abs(mc - mk[:, :, None, None])
    dist = np.where(good, dist, 1 << 20).reshape(n, nsub, -1)
    best = np.argmin(dist, axis=2)
    found = np.asarray(good.reshape(n, nsub, -1).any(axis=2))
    bs, _ = np.divmod(best, mc.shape[3])
    sc = scs[bs]
    m = np.take_along_axis(mc.reshape(n, nsub, -1), best[:, :, None], axis=2)[:, :, 0]
    qq = q.reshape(n, nsub, -1, sub)
    codes = np.take_along_axis(qq, best[:, :, None, None], axis=2)[:, :, 0, :].astype(np.int32)
    return sc, m, codes.reshape(n, nsub * sub), found


def _dmin_guesses(x: np.ndarray, d: np.ndarray, sck: np.ndarray, nsub: int = 8, top: int = 63) -> list[np.ndarray]:
    """Super-block min scales (n,) to try besides the kernel's: the quantizer gives the sub-block
    with the largest offset the top min (63; with an imatrix 62 or 61; Q2_K 15, 14, 13), so
    dmin = offset / top for one of the sub-blocks, with its minimum on code 0 or 1 (offset =
    d*sc*code - min); lowest minima first."""
    n = x.shape[0]
    xmin = x.reshape(n, nsub, -1).min(axis=2)
    order = np.argsort(xmin, axis=1, kind="stable")
    out = []
    for t in (top, top - 1, top - 2):
        for r in range(nsub):
            j = order[:, r]
            mn = xmin[np.arange(n), j]
            d1 = (d * sck[np.arange(n), j].astype(F32)).astype(F32)
            for qm in (0, 1):
                out.append(((d1 * F32(qm) - mn) / F32(t)).astype(F32))
    return out


def _d_guesses(x: np.ndarray, nsub: int, spans: tuple[int, ...], top: int) -> list[np.ndarray]:
    """Super-block scales (n,) to try besides the kernel's: the quantizer gives the sub-block with the
    largest scale the top sub-block scale (63 for Q4_K / Q5_K, -128 for Q6_K), so d = step / top for
    one sub-block, its step being its value range over a code span; widest ranges first."""
    n = x.shape[0]
    xs = x.reshape(n, nsub, -1)
    rng = xs.max(axis=2) - xs.min(axis=2) if top > 0 else np.abs(xs).max(axis=2)
    order = np.argsort(-rng, axis=1, kind="stable")
    out = []
    for r in range(nsub):
        v = rng[np.arange(n), order[:, r]]
        for span in spans:
            out.append((v / F32(span) / F32(abs(top))).astype(F32))
    return out


def q2_unpack(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """d, dmin (nb,) float32, sc, m int32 (nb, 16), codes int32 (nb, 256) of Q2_K bytes (nb, 84)."""
    nb = b.shape[0]
    d = b[:, 80:82].copy().view(np.float16).astype(F32)[:, 0]
    dmin = b[:, 82:84].copy().view(np.float16).astype(F32)[:, 0]
    sc = (b[:, 0:16] & 0xF).astype(np.int32)
    m = (b[:, 0:16] >> 4).astype(np.int32)
    qs = b[:, 16:80].reshape(nb, 2, 1, 32)
    q = (qs >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
    return d, dmin, sc, m, q.reshape(nb, 256).astype(np.int32)


def q2_encode(d: np.ndarray, dmin: np.ndarray, sc: np.ndarray, m: np.ndarray, codes: np.ndarray,
              q5: bool = False) -> np.ndarray:
    """Q2_K bytes from exact fp16 d, dmin (nb,), sc, m (nb, 16) in 0..15, codes 0..3 (nb, 256)."""
    del q5
    nb = codes.shape[0]
    out = np.zeros((nb, 84), dtype=np.uint8)
    out[:, 0:16] = (sc | (m << 4)).astype(np.uint8)
    q = codes.reshape(nb, 2, 4, 32).astype(np.uint8)
    out[:, 16:80] = (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(nb, 64)
    out[:, 80:82] = fp16_bits_of(d).reshape(nb, 1).view(np.uint8)
    out[:, 82:84] = fp16_bits_of(dmin).reshape(nb, 1).view(np.uint8)
    return out


def recover_k45(x: np.ndarray, blocks: np.ndarray, ok: np.ndarray, stored: str, q5: bool,
                name: str | None = None) -> None:
    """Replace, in place, Q4_K / Q5_K (or, name="Q2_K", Q2_K) blocks the kernel did not reproduce by
    exact ones where found."""
    from ..types import get_type
    from .common import blocks_ok

    q2 = name == "Q2_K"
    qt = get_type("Q2_K" if q2 else "Q5_K" if q5 else "Q4_K")
    nmax = 3 if q2 else 31 if q5 else 15
    nsub, nlev = (16, 16) if q2 else (8, 64)
    top = nlev - 1
    unpack = q2_unpack if q2 else (lambda b: k45_unpack(b, q5))
    encode = q2_encode if q2 else k45_encode
    nd = len(_d_guesses(x[:1], nsub, (nmax, nmax - 1, nmax - 2), top)) * 2 - nsub
    # (d offset, dmin guess index (-1: the kernel's), dmin offset), nearest the kernel's first
    near = sorted(((a, -1, b) for a in OFFSETS for b in OFFSETS), key=lambda p: (abs(p[0]) + abs(p[2]), abs(p[0])))
    far = [(0, g, b) for g in range(6 * nsub) for b in ((0, -1, 1, -2, 2) if g < 2 * nsub else (0, -1, 1))]
    far_d = [(100 + g, -1, b) for g in range(nd) for b in (0, -1, 1)]
    for od, g, om in near[:9] + far + far_d + near[9:]:
        idx = np.nonzero(~ok)[0]
        if len(idx) == 0:
            return
        for s in range(0, len(idx), _CHUNK // 16):
            ii = idx[s:s + _CHUNK // 16]
            d0, m0, sck, mk, _ = unpack(blocks[ii])
            if od < 100:
                d = np.nan_to_num(fp16_near(d0, od))
            else:
                dg = (_d_guesses(x[ii], nsub, (nmax, nmax - 1, nmax - 2), top)
                      + _d_guesses(x[ii], nsub, (nmax, nmax - 1), top - 1))
                d = np.nan_to_num(dg[od - 100].astype(np.float16).astype(F32))
            base = m0 if g < 0 else _dmin_guesses(x[ii], d0, sck, nsub, top)[g]
            dmin = np.nan_to_num(fp16_near(base, om))
            sc, m, codes, found = _k45_search(x[ii], d, dmin, sck, mk, nmax, stored, nsub, nlev)
            full = found.all(axis=1)
            if not full.any():
                continue
            cand = encode(d[full], dmin[full], sc[full], m[full], codes[full], q5)
            good = blocks_ok(cand, x[ii[full]], qt, stored)
            sel = ii[full][good]
            blocks[sel] = cand[good]
            ok[sel] = True


# --- Q3_K and IQ4_XS: y = (d * s) * level, one integer scale s per sub-block ------------------------

def q3_decode(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d (n,) float32 and sub-block scales s = sc - 32 (n, 16) of Q3_K bytes (n, 110)."""
    blk = b.reshape(-1).view(BLOCK_Q3_K)
    return blk["d"].view(np.float16).astype(F32), unpack_scales_q3(blk["scales"]).astype(np.int32) - 32


def q3_encode(d: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Q3_K bytes from d (n,), s (n, 16) in -32..31 and level indices 0..7 (code + 4) (n, 16, 16)."""
    n = d.shape[0]
    blk = np.zeros(n, dtype=BLOCK_Q3_K)
    blk["d"] = fp16_bits_of(d)
    blk["scales"] = pack_scales_q3((s + 32).astype(np.uint8))
    pack_q3_k(idx.reshape(n, 256).astype(np.uint8), blk)
    return blk.view(np.uint8).reshape(n, -1)


def iq4xs_decode(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d (n,) float32 and sub-block scales ls - 32 (n, 8) of IQ4_XS bytes (n, 136)."""
    blk = b.reshape(-1).view(BLOCK_IQ4_XS)
    ib = np.arange(8)
    ls = ((blk["scales_l"][:, ib // 2] >> (4 * (ib % 2))).astype(np.int32) & 15) | (
        ((blk["scales_h"][:, None].astype(np.int32) >> (2 * ib)) & 3) << 4)
    return blk["d"].view(np.float16).astype(F32), ls - 32


def iq4xs_encode(d: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """IQ4_XS bytes from d (n,), s (n, 8) in -32..31 and kvalues indices (n, 8, 32)."""
    n = d.shape[0]
    blk = np.zeros(n, dtype=BLOCK_IQ4_XS)
    blk["d"] = fp16_bits_of(d)
    lu = (s + 32).astype(np.uint16)
    blk["scales_h"] = np.bitwise_or.reduce((lu >> 4) << (2 * np.arange(8, dtype=np.uint16)), axis=1)
    lo = (lu & 15).astype(np.uint8)
    blk["scales_l"] = lo[:, 0::2] | (lo[:, 1::2] << np.uint8(4))
    q = idx.astype(np.uint8)
    blk["qs"] = (q[:, :, :16] | (q[:, :, 16:] << np.uint8(4))).reshape(n, 128)
    return blk.view(np.uint8).reshape(n, -1)


_SCALED = {  # name: (sub-blocks, decode, encode, levels, code span for d guesses)
    "Q3_K": (16, q3_decode, q3_encode, np.arange(-4, 4).astype(F32), (4, 3)),
    "IQ4_XS": (8, iq4xs_decode, iq4xs_encode, KV_F32, (127, 113, 104)),
}


def recover_scaled(name: str, x: np.ndarray, blocks: np.ndarray, ok: np.ndarray, stored: str) -> None:
    """Replace, in place, Q3_K / IQ4_XS blocks the kernel did not reproduce by exact ones where the
    search finds them: d the kernel's (or its fp16 neighbours, or guessed from a sub-block whose
    scale is the top one, -32), then the sub-block scale in -32..31 nearest the kernel's."""
    from ..types import get_type
    from .common import blocks_ok

    qt = get_type(name)
    nsub, decode, encode, levels, spans = _SCALED[name]
    scand = np.arange(-32, 32, dtype=np.int32)
    tops = (-32, -31) if name == "Q3_K" else (-32,)  # Q3_K: make_qx_quants over the scales gives -32 or -31
    nguess = nsub * len(spans) * len(tops) * 2
    for off in list(OFFSETS) + [100 + g for g in range(nguess)]:
        idx = np.nonzero(~ok)[0]
        if len(idx) == 0:
            return
        for s0 in range(0, len(idx), _CHUNK):
            ii = idx[s0:s0 + _CHUNK]
            d0, sk = decode(blocks[ii])
            if off < 100:
                d = np.nan_to_num(fp16_near(d0, off))
            else:
                g, sgn = divmod(off - 100, 2)
                dg = [v for top in tops for v in _d_guesses(x[ii], nsub, spans, top)][g]
                d = np.nan_to_num((F32(1 - 2 * sgn) * dg).astype(np.float16).astype(F32))
            n = len(ii)
            s, li, found = scaled_search(x[ii].reshape(n, nsub, -1), d, sk, scand, levels, stored)
            full = found.all(axis=1)
            if not full.any():
                continue
            dd, ss = d[full], s[full]
            if name == "Q3_K":  # (d, s) and (-d, -s) decode alike: make_qx_quants makes the first
                # largest-magnitude sub-block scale negative
                top = np.take_along_axis(ss, np.argmax(np.abs(ss), axis=1)[:, None], axis=1)[:, 0]
                flip = (top > 0) & (ss != -32).all(axis=1)
                dd = np.where(flip, -dd, dd)
                ss = np.where(flip[:, None], -ss, ss)
            cand = encode(dd, ss, li[full])
            good = blocks_ok(cand, x[ii[full]], qt, stored)
            sel = ii[full][good]
            blocks[sel] = cand[good]
            ok[sel] = True
