"""The trellis value tables and clusters of ik_llama.cpp's *_KT types (QuantizerIQKT).

Port of iqk_quantize.cpp's `class QuantizerIQKT`: constructor (`set_values` for every index),
`cluster_points` (the fast paths the four types take: sign bits against `mid` for 256 clusters
of groups of 8, `bin5` buckets for 625 clusters of groups of 4; no k-means runs) and
`finalize_clusters` (each point joins its `num_neighbours` nearest clusters, clusters padded to
a multiple of 8 with their nearest outsiders). Built once per process and type, lazily, cached.

The search tables: cluster c's member indices `members[start[c]:start[c+1]]`, their values
and the float32 matrix [q*q, q] the pruning matmul of `trellis.find_best_match` uses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..numeric import F32

__all__ = ["KT_PARAMS", "KtParams", "KtTables", "kt_tables", "trellis_values"]


@dataclass(frozen=True)
class KtParams:
    """Template and constructor arguments of one QuantizerIQKT instance."""
    group: int          # kGroupSize
    num_bits: int       # kNumVal = 1 << num_bits
    is_abs: bool
    n_clusters: int
    n_neighbours: int
    offset: int = 4096


KT_PARAMS = {
    "IQ1_KT": KtParams(8, 13, False, 256, 32),
    "IQ2_KT": KtParams(8, 16, False, 256, 8),
    "IQ3_KT": KtParams(8, 16, True, 256, 8),
    "IQ4_KT": KtParams(4, 15, False, 625, 6),
    "IQ4_KT_OFFSET": KtParams(4, 15, False, 625, 6, 4096 + 32768),
}


def trellis_values(idx: np.ndarray, group: int, is_abs: bool, offset: int = 4096) -> np.ndarray:
    """QuantizerIQKT::set_values (is_int) with scale 1 for indices idx (n,) -> float32 (n, group):
    x = ka*x mod 2^32; the four bytes of x & 0x3f3f3f3f summed, minus 126 (abs for IQ3_KT)."""
    x = (np.asarray(idx, np.uint64) + np.uint64(offset)) & np.uint64(0xFFFFFFFF)
    out = np.empty((x.size, group), F32)
    for k in range(group):
        x = (x * np.uint64(0xCBAC1FED)) & np.uint64(0xFFFFFFFF)
        s = x & np.uint64(0x3F3F3F3F)
        tot = (s & np.uint64(0xFF)) + ((s >> np.uint64(8)) & np.uint64(0xFF)) \
            + ((s >> np.uint64(16)) & np.uint64(0xFF)) + (s >> np.uint64(24))
        v = tot.astype(np.int64) - 126
        out[:, k] = np.abs(v) if is_abs else v
    return out


def _bin5(v: np.ndarray) -> np.ndarray:
    """QuantizerIQKT::bin5 (not is_abs): buckets at -48, -16, 16, 48."""
    return (v >= -48).astype(np.int64) + (v >= -16) + (v >= 16) + (v >= 48)


def _dist2(values: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """float dist2 = 0; dist2 += d*d over the group, d = vp[k] - vc[k] -> (npoints, ncentres)."""
    acc = np.zeros((values.shape[0], centre.shape[0]), F32)
    d = np.empty_like(acc)
    for k in range(values.shape[1]):
        np.subtract(values[:, k:k + 1], centre[None, :, k], out=d)
        np.multiply(d, d, out=d)
        acc += d
    return acc


@dataclass
class KtTables:
    """One QuantizerIQKT: values, mid, clusters and the padded member lists."""
    params: KtParams
    values: np.ndarray      # (kNumVal, group) float32
    mid: np.ndarray         # m_mid (group,) float32
    clusters: np.ndarray    # (n_clusters, group) float32
    start: np.ndarray       # (n_clusters + 1,) offsets into members
    members: np.ndarray     # (total,) int32 point indices, cluster by cluster
    mvalues: np.ndarray     # values[members] (total, group) float32
    lane_rank: np.ndarray   # (8,) rank of a position's SIMD lane in find_best_match's final scan
    qmax: np.float32        # max |value|
    mat_t: np.ndarray       # mat.T C-contiguous (2*group, total): cluster c is mat_t[:, start[c]:start[c+1]]

    def cluster_of(self, xs: np.ndarray) -> np.ndarray:
        """find_best_match's cluster of each scaled group xs (n, group) -> int64 (n,)."""
        p = self.params
        if p.group == 8:
            u = np.zeros(xs.shape[0], np.int64)
            for j in range(8):
                u |= (xs[:, j] > self.mid[j]).astype(np.int64) << j
            return u
        u = np.zeros(xs.shape[0], np.int64)
        s = 1
        for k in range(4):
            u += s * _bin5(xs[:, k])
            s *= 5
        return u


def _cluster_points(values: np.ndarray, p: KtParams) -> tuple[np.ndarray, np.ndarray]:
    """QuantizerIQKT::cluster_points, fast paths -> (clusters, mid)."""
    n, g = values.shape
    mid = np.zeros(4 * g, F32)
    if p.is_abs:
        for k in range(g):
            srt = np.sort(values[:, k].astype(np.int64))
            mid[k] = F32(0.5) * F32(srt[n // 2] + srt[n // 2 - 1]) if n % 2 == 0 else F32(srt[n // 2])
    else:
        mid[:g] = F32(0.5) * (values.min(axis=0) + values.max(axis=0))
    if g == 8:
        u = np.zeros(n, np.int64)
        for k in range(8):
            u |= (values[:, k] > mid[k]).astype(np.int64) << k
    else:
        u = np.zeros(n, np.int64)
        s = 1
        for k in range(4):
            u += s * _bin5(values[:, k])
            s *= 5
    order = np.argsort(u, kind="stable")
    counts = np.bincount(u, minlength=p.n_clusters)
    if p.group == 8 and not counts.all():
        raise RuntimeError("trellis cluster without points")  # C aborts
    # sump[u] += vp sequentially in point order: pad each cluster's points into a column matrix
    pos = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    mat = np.zeros((int(counts.max()), p.n_clusters, g), F32)
    mat[pos, u[order]] = values[order]
    sump = np.zeros((p.n_clusters, g), F32)
    for j in range(mat.shape[0]):
        sump += mat[j]
    clusters = np.zeros((p.n_clusters, g), F32)
    nz = counts > 0
    clusters[nz] = sump[nz] / counts[nz, None].astype(F32)
    return clusters, mid


def _nearest_sets(d: np.ndarray, nn: int) -> np.ndarray:
    """Membership (n, ncentres) bool of each row's nn smallest d, ties to the lower index: the
    set finalize_clusters' insertion with strict `<` keeps (the order within it does not matter)."""
    v = np.partition(d, nn - 1, axis=1)[:, nn - 1:nn]
    less = d < v
    eq = d == v
    need = nn - less.sum(axis=1)
    tie = np.nonzero(eq.sum(axis=1) > need)[0]  # more equal to the cut than places left
    if tie.size:
        eq[tie] &= np.cumsum(eq[tie], axis=1) <= need[tie, None]
    return less | eq


def _finalize(values: np.ndarray, clusters: np.ndarray, p: KtParams) -> tuple[np.ndarray, np.ndarray]:
    """QuantizerIQKT::finalize_clusters -> (start, members)."""
    n = values.shape[0]
    nn = p.n_neighbours
    dist_t = np.empty((p.n_clusters, n), F32)
    mt = np.empty((p.n_clusters, n), bool)
    step = 4096
    for a in range(0, n, step):
        d = _dist2(values[a:a + step], clusters)
        dist_t[:, a:a + step] = d.T
        mt[:, a:a + step] = _nearest_sets(d, nn).T
    out = []
    for ic in range(p.n_clusters):
        pts = np.nonzero(mt[ic])[0]  # in point order, as push_back
        nadd = 8 * ((pts.size + 7) // 8) - pts.size
        if nadd:  # the nearest outsiders, std::sort of (dist2, ip) pairs
            cand = np.nonzero(~mt[ic])[0]
            dc = dist_t[ic, cand]
            v = np.partition(dc, nadd - 1)[nadd - 1]
            near = np.nonzero(dc <= v)[0]
            srt = np.lexsort((cand[near], dc[near]))
            pts = np.concatenate([pts, cand[near[srt[:nadd]]]])
        out.append(pts)
    start = np.zeros(p.n_clusters + 1, np.int64)
    start[1:] = np.cumsum([len(x) for x in out])
    return start, np.concatenate(out).astype(np.int32)


@functools.cache
def kt_tables(name: str) -> KtTables:
    """The QuantizerIQKT of one *_KT type (KT_PARAMS key), built on first use."""
    p = KT_PARAMS[name]
    values = trellis_values(np.arange(1 << p.num_bits), p.group, p.is_abs, p.offset)
    clusters, mid = _cluster_points(values, p)
    start, members = _finalize(values, clusters, p)
    empty = np.nonzero(start[1:] == start[:-1])[0]
    if empty.size:  # find_best_match then searches all values (group 8; group 4 asserts)
        parts = []
        for ic in range(p.n_clusters):
            parts.append(np.arange(values.shape[0], dtype=np.int32) if ic in set(empty.tolist())
                         else members[start[ic]:start[ic + 1]])
        start = np.zeros(p.n_clusters + 1, np.int64)
        start[1:] = np.cumsum([len(x) for x in parts])
        members = np.concatenate(parts)
    mvalues = values[members]
    mat = np.concatenate([mvalues * mvalues, mvalues], axis=1)  # [q*q, q]: the pruning matmul's side
    if p.group == 8:
        lane_rank = np.arange(8)
    else:  # add_idx = _mm256_set_epi32(7, 5, 3, 1, 6, 4, 2, 0): lanes hold offsets 0,2,4,6,1,3,5,7
        lane_rank = np.array([0, 4, 1, 5, 2, 6, 3, 7])
    return KtTables(p, values, mid, clusters, start, members, mvalues, lane_rank, F32(np.abs(values).max()),
                    np.ascontiguousarray(mat.T))
