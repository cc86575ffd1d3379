"""Combine several quants of one model into one float estimate (`qtool dequantize --from A --from B`).

Each quantized weight constrains the original value to an interval: the quantizer chose code l
for x by rounding x to the nearest level of its (sub-)block's grid, so x lies within half a step
of the dequantized value a*g(l) + b (g(l) = l for the linear types, the i-quant table value for
IQ4_NL / IQ4_XS). Several quants of the same original give several intervals per weight; their
intersection still holds the original, and a point inside it (the mean of a Laplace prior
truncated to it by default, nearly its midpoint) is a better estimate than any single dequant.
docs/dequantize-combine.md derives the estimator, states exactly what the code searches
guarantee (`INTERVAL_RULES`) and evaluates it.

What the references guarantee, per type (ggml-quants.c):
- Q2_K..Q6_K (`quantize_row_q*_K_ref` and `_impl`, with or without an imatrix): after the scale
  search the codes are recomputed from the STORED scales, l = clamp(nearest_int((x + dm)/d)),
  d = fp16(d)*sc: exact round-to-nearest on the dequantization grid; an end code (clamped) only
  bounds x on one side; a sub-block whose scale is 0 is skipped (`if (!d) continue`): no constraint.
- Q8_0, Q4_0, Q5_0, Q4_1, Q5_1 (`quantize_row_q*_ref`, llama-quantize without an imatrix):
  round to nearest with the float32 scale (and min) of which the stored fp16 is the rounding, so
  the interval widens by 2^-11 relative; the scale comes from the block's extremes, which bounds
  the end codes too (|x| <= 8|d| for Q4_0 ...). WITH an imatrix, Q4_0..Q5_1 come from
  make_qx_quants / make_qkx3_quants, whose codes round on a trial scale that differs from the
  stored one by up to ~10%: the intervals can then miss; the per-block fallback catches that.
- IQ4_NL / IQ4_XS (`quantize_row_iq4_nl_impl`, with or without an imatrix): the final codes are
  best_index((1/d)*x) on the nonlinear table with the unrounded scale: nearest level, intervals
  bounded by the midpoints between table values, ends open, 2^-11 relative slack.

Per block of 256 weights (the largest multiple of 32 up to 256 that divides the row) the
estimate is replaced by
- the dequant of a source (clipped into the intersection) that lies outside the other sources'
  intervals at far fewer weights than rounding errors would put there (GRID_RATIO): the original
  was (nearly) on that source's grid, e.g. a quant made from a dequant of the same type;
- the mean of the sources that agree with the most precise one far better than rounding errors
  could (AGREE): all of them nearly on the original's grid (the original is a dequant of a
  related type);
- the most precise source's dequant when more than MAX_EMPTY of the block's weights have disjoint
  intervals (the assumptions above fail there: imatrix legacy quants, another model).
The first two count as `grid_blocks`, the last as `fallback_blocks` in `CombineStats`. Then
(`requantize_rule`) a source whose dequant, quantized again without an imatrix, gives every other
source's bytes for the block is taken as is (`requantized_blocks`): the original was that dequant.

Vectorized over all weights of a slab: arrays (n_sources, n_weights); no loop per block or row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import QtoolError
from .gguf_io import GGUFModel, GGUFStreamWriter, OutTensor, TensorInfo
from .mix.ftypes import parse_ftype
from .quants import dequantize, quantize
from .quants.kquants.q3_k import unpack_scales_q3
from .quants.kquants.q45_k import get_scale_min_k4
from .quants.nonlinear import KVALUES_IQ4NL
from .quants.types import QType, get_type
from .runner import output_kvs

F32 = np.float32
TARGETS = ("F16", "BF16", "F32")
FLOAT_TYPES = ("F32", "F16", "BF16")
SLAB_ELEMENTS = 1 << 18  # weights per slab: ~80 MB of float64 temporaries with four sources
METHODS = ("laplace", "mid", "nearest")  # the first is the default (measured best: docs/dequantize-combine.md)
OPEN_END = 0.5  # an open end's nominal reach in steps past the dequantized value (as if the grid went on)
AGREE = 0.125  # the agreement rule: mean square difference below this share of the coarser step^2/12
AGREE_FINE = 0.5  # ... and below this share of the finer step^2/12
GRID_RATIO = 0.25  # the grid rule: at most this share of the chance number of weights outside
MAX_EMPTY = 1.0 / 64  # fraction of a block's weights with disjoint intervals that triggers the fallback

_SLACK16 = 2.0 ** -11 * 1.01  # fp16-rounded scale / min, codes made with the float32 one (half an fp16 ulp)
_SLACK_K = 2.0 ** -20  # k-quants: codes made with the stored scales (float32 rounding of (x+dm)/d only)
_INF = float("inf")


class CombineError(QtoolError):
    """Sources that are not quants of the same model, or a bad target / method."""


@dataclass(frozen=True)
class IntervalRule:
    """How a type's codes constrain the weights (see the module docstring).

    sub: weights per (sub-)block sharing one scale (and min); lmin..lmax: code levels (v = a*l + b,
    or a*K[l] for the nonlinear types); hard: level-space bounds of x*(1/d) that hold even at the
    end codes (None: end codes are clamped, so open on that side); slack: relative widening."""

    sub: int
    lmin: int
    lmax: int
    hard: tuple[float, float] | None
    slack: float
    nonlinear: bool = False


INTERVAL_RULES: dict[str, IntervalRule] = {
    "Q8_0": IntervalRule(32, -127, 127, (-127.0, 127.0), _SLACK16),
    "Q4_0": IntervalRule(32, -8, 7, (-8.0, 8.0), _SLACK16),
    "Q5_0": IntervalRule(32, -16, 15, (-16.0, 16.0), _SLACK16),
    "Q4_1": IntervalRule(32, 0, 15, (0.0, 15.0), _SLACK16),
    "Q5_1": IntervalRule(32, 0, 31, (0.0, 31.0), _SLACK16),
    "Q2_K": IntervalRule(16, 0, 3, None, _SLACK_K),
    "Q3_K": IntervalRule(16, -4, 3, None, _SLACK_K),
    "Q4_K": IntervalRule(32, 0, 15, None, _SLACK_K),
    "Q5_K": IntervalRule(32, 0, 31, None, _SLACK_K),
    "Q6_K": IntervalRule(16, -32, 31, None, _SLACK_K),
    "IQ4_NL": IntervalRule(32, 0, 15, None, _SLACK16, nonlinear=True),
    "IQ4_XS": IntervalRule(32, 0, 15, None, _SLACK16, nonlinear=True),
}
"""Types whose quants the combination reads (every type of the Q2_K..Q8_0 mixes and their
fallbacks for rows that are not a multiple of 256)."""

_KV = KVALUES_IQ4NL.astype(np.float64)
_KV_LO = np.concatenate([[-_INF], (_KV[:-1] + _KV[1:]) / 2])  # nearest-level cell of each table value
_KV_HI = np.concatenate([(_KV[:-1] + _KV[1:]) / 2, [_INF]])
_KV_GAP = np.concatenate([[_KV[1] - _KV[0]], (_KV[2:] - _KV[:-2]) / 2, [_KV[-1] - _KV[-2]]])


def can_combine(qtype: str | QType) -> bool:
    """Whether `intervals` reads this type."""
    return get_type(qtype).name in INTERVAL_RULES


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view("<f2").astype(F32)


def sub_scales(raw: np.ndarray, qtype: str | QType, n_per_row: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (sub-)block scale a and offset b (value = a*level + b) as the dequantizer computes
    them, float32 (nrows, n_per_row // sub) each."""
    qt = get_type(qtype)
    name = qt.name
    nrows = raw.shape[0]
    blk = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, qt.type_size)
    nb = blk.shape[0]
    zero1 = np.zeros((nb, 1), F32)
    if name in ("Q8_0", "Q4_0", "Q5_0", "IQ4_NL"):
        a, b = _f16(blk[:, 0:2]), zero1
    elif name in ("Q4_1", "Q5_1"):
        a, b = _f16(blk[:, 0:2]), _f16(blk[:, 2:4])
    elif name == "Q2_K":
        sc = blk[:, 0:16]
        d, dmin = _f16(blk[:, 80:82]), _f16(blk[:, 82:84])
        a, b = d * (sc & 15).astype(F32), -(dmin * (sc >> 4).astype(F32))
    elif name == "Q3_K":
        a = _f16(blk[:, 108:110]) * (unpack_scales_q3(blk[:, 96:108]).astype(np.int32) - 32).astype(F32)
        b = np.zeros_like(a)
    elif name in ("Q4_K", "Q5_K"):
        sc, m = get_scale_min_k4(blk[:, 4:16])
        a = _f16(blk[:, 0:2]) * sc.T.astype(F32)
        b = -(_f16(blk[:, 2:4]) * m.T.astype(F32))
    elif name == "Q6_K":
        a = _f16(blk[:, 208:210]) * blk[:, 192:208].view(np.int8).astype(F32)
        b = np.zeros_like(a)
    elif name == "IQ4_XS":
        ib = np.arange(8)
        sh = blk[:, 2:4].copy().view("<u2").astype(np.int32)
        ls = ((blk[:, 4 + ib // 2].astype(np.int32) >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4)
        a = _f16(blk[:, 0:2]) * (ls - 32).astype(F32)
        b = np.zeros_like(a)
    else:
        raise CombineError(f"cannot derive intervals from {name} blocks; combinable types: {', '.join(INTERVAL_RULES)}")
    per = n_per_row // INTERVAL_RULES[name].sub
    return a.reshape(nrows, per), np.broadcast_to(b, a.shape).reshape(nrows, per)


def _rel_slack(raw: np.ndarray, qt: QType, n_per_row: int, rule: IntervalRule) -> tuple[np.ndarray, np.ndarray]:
    """Relative bounds on how far the scale a and offset b the codes were made with are from the
    stored (fp16-rounded) ones, per (sub-)block: 2^-11 relative for normal fp16 (+1%), an absolute
    2^-25 for subnormal ones (2^-24 kept); 2^-20 for the k-quants (float32 arithmetic only)."""
    nrows = raw.shape[0]
    per = n_per_row // rule.sub
    if rule.slack != _SLACK16:
        r = np.full((nrows, per), rule.slack)
        return r, r
    blk = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, qt.type_size)
    spb = qt.block_size // rule.sub  # sub-blocks per block

    def rel(off: int) -> np.ndarray:
        h = np.abs(_f16(blk[:, off:off + 2]).astype(np.float64))
        with np.errstate(divide="ignore"):
            r = np.maximum(_SLACK16, np.where(h > 0, 2.0 ** -24 / h, 0.0))
        return np.repeat(r, spb).reshape(nrows, per)

    ra = rel(0)
    rb = rel(2) if qt.name in ("Q4_1", "Q5_1") else np.zeros_like(ra)
    return ra, rb


@dataclass
class Intervals:
    """Per weight: the dequantized value v, the bounds lo <= x <= hi the codes imply (+-inf where
    a side is open) and the step (level spacing times scale; inf where the codes say nothing)."""

    v: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    step: np.ndarray
    nlo: np.ndarray  # lo, hi with open ends closed OPEN_END steps past v (the estimate's box)
    nhi: np.ndarray


def intervals(raw: np.ndarray, qtype: str | QType, n_per_row: int) -> Intervals:
    """The interval each weight of rows `raw` (uint8 (nrows, row_bytes)) lies in, float64."""
    qt = get_type(qtype)
    rule = INTERVAL_RULES.get(qt.name)
    if rule is None:
        raise CombineError(f"cannot derive intervals from {qt.name} blocks; combinable types: "
                           f"{', '.join(INTERVAL_RULES)}")
    raw2 = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, qt.row_bytes(n_per_row))
    nrows = raw2.shape[0]
    v = dequantize(raw2, qt, n_per_row).astype(np.float64)
    a32, b32 = sub_scales(raw2, qt, n_per_row)
    shape3 = (nrows, n_per_row // rule.sub, rule.sub)
    ra32, rb32 = _rel_slack(raw2, qt, n_per_row, rule)

    def per_weight(u: np.ndarray) -> np.ndarray:
        return np.broadcast_to(u.astype(np.float64)[:, :, None], shape3).reshape(nrows, n_per_row)

    a, b, ra, rb = per_weight(a32), per_weight(b32), per_weight(ra32), per_weight(rb32)
    zero = a == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(zero, 0.0, (v - b) / np.where(zero, 1.0, a))
    if rule.nonlinear:
        lev = np.argmin(np.abs(t[..., None] - _KV), axis=-1)
        glo, ghi, gap = _KV_LO[lev], _KV_HI[lev], _KV_GAP[lev]
    else:
        lev = np.rint(t)
        hlo, hhi = rule.hard if rule.hard is not None else (-_INF, _INF)
        # an end code was clamped: open up to the hard bound (x*(1/d) never passes it) or infinity
        glo = np.where(lev <= rule.lmin, hlo, np.maximum(lev - 0.5, hlo))
        ghi = np.where(lev >= rule.lmax, hhi, np.minimum(lev + 0.5, hhi))
        gap = np.ones_like(lev)
    with np.errstate(invalid="ignore", over="ignore"):
        e1 = a * glo + b
        e2 = a * ghi + b
        lo = np.minimum(e1, e2)
        hi = np.maximum(e1, e2)
        widen_lo = ra * np.abs(a * glo) + rb * np.abs(b) + 1e-30
        widen_hi = ra * np.abs(a * ghi) + rb * np.abs(b) + 1e-30
        neg = a < 0
        lo = lo - np.where(neg, widen_hi, widen_lo)
        hi = hi + np.where(neg, widen_lo, widen_hi)
    lo = np.where(zero, -_INF, lo)
    hi = np.where(zero, _INF, hi)
    step = np.where(zero, _INF, np.abs(a) * gap)
    # for the point estimate only: an open end taken as reaching OPEN_END steps past the value
    # (clamped weights lie just beyond the grid's end: the scale search fits the extremes)
    with np.errstate(invalid="ignore"):
        nlo = np.where(np.isinf(lo) & ~zero, v - OPEN_END * step, lo)
        nhi = np.where(np.isinf(hi) & ~zero, v + OPEN_END * step, hi)
    return Intervals(v, lo, hi, step, nlo, nhi)


@dataclass
class CombineStats:
    """Counts of one combination (add them up with `add`)."""

    weights: int = 0
    empty: int = 0  # weights whose intervals do not intersect (WLS estimate)
    blocks: int = 0
    grid_blocks: int = 0  # blocks where one source's dequant satisfies every interval (taken as is)
    fallback_blocks: int = 0  # blocks given the best single source (too many empty intersections)
    requantized_blocks: int = 0  # blocks whose original one source's dequant reproduces exactly

    def add(self, o: CombineStats) -> None:
        self.weights += o.weights
        self.empty += o.empty
        self.blocks += o.blocks
        self.grid_blocks += o.grid_blocks
        self.fallback_blocks += o.fallback_blocks
        self.requantized_blocks += o.requantized_blocks

    def as_dict(self) -> dict[str, int]:
        return {"weights": self.weights, "empty": self.empty, "blocks": self.blocks,
                "grid_blocks": self.grid_blocks, "fallback_blocks": self.fallback_blocks,
                "requantized_blocks": self.requantized_blocks}


def precision_order(types: Sequence[str | QType]) -> list[int]:
    """Source indices, most precise type first (bits per weight; ties keep the given order)."""
    return sorted(range(len(types)), key=lambda i: -get_type(types[i]).bpw)


def _laplace_mean(lo: np.ndarray, hi: np.ndarray, beta: float) -> np.ndarray:
    """Mean of the Laplace(0, beta) prior truncated to [lo, hi] (lo <= hi, either may be infinite).

    Computed relative to c, the point of [lo, hi] nearest 0, so nothing underflows: on one side of
    0 the truncated exponential on [0, W] has mean beta - W/expm1(W/beta) (-> W/2 for W << beta)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        pos = lo >= 0
        neg = hi <= 0
        w = hi - lo
        z = w / beta
        one = np.where(np.isinf(z), beta, beta - w / np.expm1(z))
        small = z < 1e-3
        one = np.where(small, w / 2 - w * z / 12, one)  # series: W/2 - W^2/(12 beta)
        m_pos = lo + one
        m_neg = hi - one
        # straddling 0: sides [0, H] and [0, M = -lo]; Z_s = beta*(-expm1(-t/beta)), N_s = beta^2*g(t/beta)
        hz, mz = hi / beta, -lo / beta

        def zside(t: np.ndarray) -> np.ndarray:
            return -np.expm1(-t)

        def nside(t: np.ndarray) -> np.ndarray:  # 1 - e^-t (1 + t)
            series = t * t / 2 - t ** 3 / 3 + t ** 4 / 8 - t ** 5 / 30
            return np.where(t < 1e-2, series, np.where(np.isinf(t), 1.0, -np.expm1(-t) - t * np.exp(-t)))

        zs = zside(hz) + zside(mz)
        m_mid = beta * (nside(hz) - nside(mz)) / zs
        out = np.where(pos, m_pos, np.where(neg, m_neg, m_mid))
    mid = np.where(np.isfinite(lo) & np.isfinite(hi), (lo + hi) / 2, np.where(np.isfinite(lo), lo, hi))
    return np.where(np.isfinite(out), out, mid)


def block_size(n_per_row: int, block: int = 256) -> int:
    """The block the per-block rules judge: the largest multiple of 32 up to `block` that divides
    the row (192 for rows of 576, 128 for 640), else the row: more weights, steadier statistics."""
    for b in range(block, 31, -32):
        if n_per_row % b == 0:
            return b
    return n_per_row


def estimate(iv: Sequence[Intervals], method: str = "laplace", block: int = 256, max_empty: float = MAX_EMPTY,
             beta: float | None = None, grid: bool = True) -> tuple[np.ndarray, CombineStats]:
    """Combine the intervals of several sources (most precise first) into float64 estimates of
    shape (nrows, n_per_row).

    In the intersection [L, H] of the intervals, within the nominal box (open ends closed
    OPEN_END steps past the dequantized value): the box's midpoint ("mid"), or the mean of a
    Laplace prior (scale beta, default mean |v| of the best source) truncated to it ("laplace");
    where the box is empty or unbounded, or for "nearest", the best source's value clipped into
    [L, H]. Where the intervals are disjoint: the weighted least-squares combination
    sum(v/step^2)/sum(1/step^2). Then per block (module docstring) the grid and agreement rules
    (grid=False: both off) and the fallback to the best source (max_empty >= 1: off)."""
    if method not in METHODS:
        raise CombineError(f"unknown estimator {method!r}; valid: {', '.join(METHODS)}", option="--method")
    v = np.stack([s.v for s in iv])
    lo = np.stack([s.lo for s in iv])
    hi = np.stack([s.hi for s in iv])
    k, nrows, n = v.shape
    best = v[0]
    L = lo.max(axis=0)
    H = hi.min(axis=0)
    empty = L > H
    w = 1.0 / np.stack([s.step for s in iv]) ** 2  # 0 where the codes say nothing
    sw = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        wls = np.where(sw > 0, (w * v).sum(axis=0) / sw, best)
    clipped = np.clip(best, L, H)
    NL = np.maximum(np.stack([s.nlo for s in iv]).max(axis=0), L)  # the nominal box, inside [L, H]
    NH = np.minimum(np.stack([s.nhi for s in iv]).min(axis=0), H)
    bounded = np.isfinite(NL) & np.isfinite(NH) & (NL <= NH)
    if method == "laplace":
        b = float(np.mean(np.abs(best))) if beta is None else beta
        Lc, Hc = np.where(bounded, NL, best), np.where(bounded, NH, best)
        mean = _laplace_mean(Lc, Hc, b) if b > 0 else (Lc + Hc) / 2
        inside = np.where(bounded, mean, clipped)
    else:
        with np.errstate(invalid="ignore"):
            inside = clipped if method == "nearest" else np.where(bounded, (NL + NH) / 2, clipped)
    x = np.where(empty, wls, inside)

    blk = block_size(n, block)
    nbk = n // blk
    st = CombineStats(weights=v[0].size, empty=int(empty.sum()), blocks=nrows * nbk)
    if k == 1:
        st.grid_blocks = st.blocks
        return best.copy(), st
    x3 = x.reshape(nrows, nbk, blk)
    # grid rule: a source whose dequant lies in the others' intervals at far fewer weights of the
    # block than chance allows was (nearly) the original's grid: take it, clipped into [L, H].
    # Chance: a dequant off by e ~ U(-s_k/2, s_k/2) leaves source j's cell with probability
    # E|e|/s_j = (s_k/4)/s_j. A coarse dequant inside finer intervals is strong evidence (the
    # LEAST precise qualifying source wins ties), a fine one inside coarse intervals is not.
    steps = np.stack([q.step for q in iv])
    outside = np.zeros((k, nrows, n), dtype=bool)
    chance = np.zeros((k, nrows, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(k):
            outside |= (v < lo[j][None]) | (v > hi[j][None])
            p = np.minimum(1.0, np.nan_to_num((steps / 4) / steps[j][None], nan=1.0))
            p[j] = 0.0
            chance += p
    n_out = outside.reshape(k, nrows, nbk, blk).sum(axis=3)
    n_chance = np.minimum(chance, 1.0).reshape(k, nrows, nbk, blk).sum(axis=3)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(n_out == 0, 0.0, n_out / n_chance)
    ok = (ratio <= GRID_RATIO) if grid else np.zeros(ratio.shape, dtype=bool)
    score = np.where(ok, ratio - 1e-9 * np.arange(k)[:, None, None], np.inf)
    first: np.ndarray = np.asarray(np.argmin(score, axis=0))
    any_cons: np.ndarray = np.asarray(ok.any(axis=0))
    v4 = v.reshape(k, nrows, nbk, blk)
    pick = np.take_along_axis(v4, first[None, :, :, None], axis=0)[0].reshape(nrows, n)
    pick = np.where(empty, pick, np.clip(pick, L, H)).reshape(nrows, nbk, blk)
    x3 = np.where(any_cons[..., None], pick, x3)
    # agreement rule (over the grid rule's result): sources whose dequants agree with the best one
    # far better than rounding errors could (mean square difference below AGREE times
    # max(s_0, s_j)^2/12, what the coarser one's rounding alone gives, and below AGREE_FINE times
    # min(s_0, s_j)^2/12, what the finer one's gives) are all near the original (both nearly on
    # its grid): their plain mean, clipped into [L, H]. An exact source with another one that has
    # its own full rounding error is left to the grid rule.
    with np.errstate(invalid="ignore"):
        d2 = ((v[1:] - best[None]) ** 2).reshape(k - 1, nrows, nbk, blk).mean(axis=3)
        s2 = np.stack([np.minimum(steps[1:], steps[0][None]), np.maximum(steps[1:], steps[0][None])]) ** 2 / 12
        ex = s2.reshape(2, k - 1, nrows, nbk, blk).mean(axis=4)
        agree = (d2 < AGREE_FINE * ex[0]) & (d2 < AGREE * ex[1]) if grid else np.zeros(d2.shape, dtype=bool)
    any_agree: np.ndarray = np.asarray(agree.any(axis=0))
    na = 1 + agree.sum(axis=0)
    mean = (v4[0] + (v4[1:] * agree[..., None]).sum(axis=0)) / na[..., None]
    mean = np.where(empty, mean.reshape(nrows, n), np.clip(mean.reshape(nrows, n), L, H)).reshape(nrows, nbk, blk)
    x3 = np.where(any_agree[..., None], mean, x3)
    any_cons = any_cons | any_agree
    frac = empty.reshape(nrows, nbk, blk).mean(axis=2)
    fb: np.ndarray = np.asarray((frac > max_empty) & ~any_cons)
    x3 = np.where(fb[..., None], best.reshape(nrows, nbk, blk), x3)
    st.grid_blocks = int(any_cons.sum())
    st.fallback_blocks = int(fb.sum())
    return x3.reshape(nrows, n), st


def distinct_sources(raws: Sequence[np.ndarray], types: Sequence[str | QType]) -> list[int]:
    """Source indices in precision order, each (type, bytes) once: a source identical to a more
    precise one adds no constraint (and would make the midpoint of one interval the estimate)."""
    keep: list[int] = []
    for i in precision_order(types):
        ti = get_type(types[i]).name
        if not any(get_type(types[j]).name == ti and np.array_equal(raws[j], raws[i]) for j in keep):
            keep.append(i)
    return keep


def _same_blocks(a: np.ndarray, b: np.ndarray, qt: QType, n_per_row: int, blk: int) -> np.ndarray:
    """(nrows, n_per_row // blk): every quant block of qt inside combine block i is byte-equal in a
    and b (raw rows). A quant block larger than the combine block decides each block it covers."""
    nrows = a.shape[0]
    nq = n_per_row // qt.block_size
    eq = np.all((a == b).reshape(nrows, nq, qt.type_size), axis=2)
    if qt.block_size <= blk:
        return np.asarray(eq.reshape(nrows, n_per_row // blk, blk // qt.block_size).all(axis=2))
    return np.repeat(eq, qt.block_size // blk, axis=1)


def requantize_rule(raws: Sequence[np.ndarray], types: Sequence[str | QType], n_per_row: int, x: np.ndarray,
                    target: str = "F32") -> tuple[np.ndarray, int]:
    """The requantize rule, over the estimate x (float32 (nrows, n_per_row)): per block, a source
    whose dequant (rounded to the output type), quantized again without an imatrix, gives every
    other source's bytes for the block is taken as is: the original was that dequant exactly
    (a quant of a quant; what the interval rules only approach when another source is nearly on
    the same grid). Least precise candidate first, as the grid rule. Sources made with an imatrix
    do not reproduce (their search used weights not in the file): the rule then never fires.
    raws / types: distinct sources, most precise first (distinct_sources' order). Returns (x,
    blocks taken)."""
    k = len(raws)
    if k < 2:
        return x, 0
    nrows = x.shape[0]
    blk = block_size(n_per_row)
    nbk = n_per_row // blk
    out = x.reshape(nrows, nbk, blk).copy()
    done = np.zeros((nrows, nbk), dtype=bool)
    for c in reversed(range(k)):
        cand = dequantize(raws[c], types[c], n_per_row).reshape(nrows, n_per_row)
        if target != "F32":
            cand = dequantize(quantize(cand, target), target, n_per_row).reshape(nrows, n_per_row)
        ok = ~done
        for j in range(k):
            if j == c or not ok.any():
                continue
            qj = get_type(types[j])
            ok &= _same_blocks(quantize(cand, qj), np.asarray(raws[j]).reshape(nrows, -1), qj, n_per_row, blk)
        out = np.where(ok[..., None], cand.reshape(nrows, nbk, blk), out)
        done |= ok
    return out.reshape(nrows, n_per_row), int(done.sum())


def combine_rows(raws: Sequence[np.ndarray], types: Sequence[str | QType], n_per_row: int, method: str = "laplace",
                 max_empty: float = MAX_EMPTY, grid: bool = True, requantize: bool = True,
                 target: str = "F32") -> tuple[np.ndarray, CombineStats]:
    """Estimate float32 rows (nrows, n_per_row) from the raw blocks of the same rows in several
    quants (any order; identical sources are used once). requantize: the requantize rule last
    (CombineStats.requantized_blocks; target: the output's float type, to which a candidate is
    rounded before it is quantized again)."""
    keep = distinct_sources(raws, types)
    iv = [intervals(raws[i], types[i], n_per_row) for i in keep]
    est, st = estimate(iv, method=method, max_empty=max_empty, grid=grid)
    est = est.astype(F32)
    if requantize and grid:
        est, taken = requantize_rule([raws[i] for i in keep], [types[i] for i in keep], n_per_row, est, target)
        st.requantized_blocks = taken
    return est, st


# --- files ---------------------------------------------------------------------------------------


@dataclass
class CombineResult:
    output: str
    n_tensors: int
    n_elements: int
    stats: CombineStats
    tensors: list[dict] = field(default_factory=list)


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_same_model(models: Sequence[GGUFModel]) -> None:
    """All sources hold the same tensor names with the same shapes; CombineError names the first
    difference (in the first source's tensor order)."""
    ref = models[0]
    names = {t.name: t for t in ref.tensors}
    for m in models[1:]:
        other = {t.name: t for t in m.tensors}
        for t in ref.tensors:
            o = other.get(t.name)
            if o is None:
                raise CombineError(f"{m.path} is not a quant of the same model as {ref.path}: it has no tensor "
                                   f"{t.name!r}", path=m.path)
            if tuple(o.shape) != tuple(t.shape):
                raise CombineError(f"{m.path} is not a quant of the same model as {ref.path}: tensor {t.name!r} "
                                   f"has shape {_shape_str(o.shape)} there, {_shape_str(t.shape)} in {ref.path}",
                                   path=m.path)
        extra = [t.name for t in m.tensors if t.name not in names]
        if extra:
            raise CombineError(f"{m.path} is not a quant of the same model as {ref.path}: it has tensor "
                               f"{extra[0]!r} that {ref.path} has not", path=m.path)


def parse_target(to: str) -> str:
    t = to.strip().upper()
    if t not in TARGETS:
        raise CombineError(f"--to: {to!r} is not a float type; valid: {', '.join(TARGETS)}", option="--to")
    return t


def _tensor_plan(infos: list[TensorInfo]) -> tuple[str, list[int]]:
    """('float', [i]) copy/convert source i's floats; ('combine', idx) the combinable sources;
    ('single', [i]) dequantize the most precise source i (no source has a combinable type)."""
    for i, t in enumerate(infos):
        if t.qtype.name in FLOAT_TYPES:
            return "float", [i]
    ok = [i for i, t in enumerate(infos) if can_combine(t.qtype)]
    if ok:
        return "combine", ok
    return "single", [precision_order([t.qtype for t in infos])[0]]


def combine_files(sources: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], to: str = "F16", *,
                  method: str = "laplace", max_empty: float = MAX_EMPTY,
                  on_progress: Callable[[str, int], None] | None = None) -> CombineResult:
    """Write `out`, the float (`to`: F16, BF16 or F32) estimate of the model several quants in
    `sources` were made from, streaming slab by slab.

    Same layout and key/value pairs as dequantizing the first source (general.file_type set to
    the target): 2-D+ tensors become `to`; 1-D tensors (norms) are copied from the first source
    that has them as floats (else the first). Per tensor: a float source is exact and taken; the
    sources with combinable types (INTERVAL_RULES) are combined; if none, the most precise one is
    dequantized. CombineError (nothing written) when the sources are not the same model."""
    if not sources:
        raise CombineError("no source files given", option="--from")
    target = get_type(parse_target(to))
    if method not in METHODS:
        raise CombineError(f"unknown estimator {method!r}; valid: {', '.join(METHODS)}", option="--method")
    paths = [os.fspath(s) for s in sources]
    models: list[GGUFModel] = []
    try:
        for p in paths:
            models.append(GGUFModel(p))
        check_same_model(models)
        ref = models[0]
        by_name = [{t.name: t for t in m.tensors} for m in models]
        kvs = output_kvs(ref.kvs, parse_ftype(target.name).id)
        outs: list[OutTensor] = []
        plans: list[tuple[str, list[TensorInfo], int]] = []
        for t in ref.tensors:
            infos = [bn[t.name] for bn in by_name]
            if len(t.shape) < 2:
                fl = [i for i, ti in enumerate(infos) if ti.qtype.name in FLOAT_TYPES]
                src = fl[0] if fl else 0
                outs.append(OutTensor(t.name, tuple(t.shape), infos[src].qtype))
                plans.append(("copy", infos, src))
            else:
                outs.append(OutTensor(t.name, tuple(t.shape), target))
                plans.append(("convert", infos, 0))
        total = CombineStats()
        report: list[dict] = []
        n_el = 0
        with GGUFStreamWriter(out, kvs, outs, ref.alignment, inputs=paths) as w:
            for (kind, infos, src), o in zip(plans, outs, strict=True):
                n_el += int(np.prod(o.shape))
                if kind == "copy":
                    models[src].check_size(infos[src])
                    w.write_tensor_chunk(models[src].tensor_data(infos[src]))
                    report.append({"name": o.name, "how": "copy", "types": [infos[src].qtype.name]})
                    if on_progress:
                        on_progress(o.name, infos[src].n_elements)
                    continue
                st = _convert_tensor(models, infos, target, method, max_empty, w, on_progress)
                how, idx = _tensor_plan(infos)
                report.append({"name": o.name, "how": how, "types": [infos[i].qtype.name for i in idx],
                               **st.as_dict()})
                total.add(st)
        return CombineResult(os.fspath(out), len(outs), n_el, total, report)
    finally:
        for m in models:
            m.close()


def _convert_tensor(models: Sequence[GGUFModel], infos: list[TensorInfo], target: QType, method: str,
                    max_empty: float, w: GGUFStreamWriter, on_progress: Callable[[str, int], None] | None
                    ) -> CombineStats:
    how, idx = _tensor_plan(infos)
    t0 = infos[idx[0]]
    n = t0.n_per_row
    step = max(1, SLAB_ELEMENTS // n)
    st = CombineStats()
    for i in idx:
        models[i].check_size(infos[i])
    for start in range(0, t0.n_rows, step):
        stop = min(t0.n_rows, start + step)
        raws = [models[i].tensor_rows(infos[i], start, stop) for i in idx]
        if how == "combine":
            x, s = combine_rows(raws, [infos[i].qtype for i in idx], n, method=method, max_empty=max_empty,
                                target=target.name)
            st.add(s)
        else:
            x = dequantize(raws[0], infos[idx[0]].qtype, n)
            st.add(CombineStats(weights=x.size))
        w.write_tensor_chunk(quantize(x, target))
        for i in idx:
            models[i].release(infos[i], start, stop)
        if on_progress:
            on_progress(t0.name, (stop - start) * n)
    return st
