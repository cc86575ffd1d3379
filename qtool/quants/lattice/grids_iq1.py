"""The 2048-point grid of mainline ggml's IQ1_S / IQ1_M and the tables iq2xs_init_impl builds for it.

Grid: ggml's `kgrid_1bit_2048` (iq2xs_init_impl) is the 2-bit packed form of ggml-common.h's
iq1s_grid (levels 0, 1, 2 <=> values -1, 0, 1); the gguf package stores exactly these uint16
words (`IQ1_S.grid_hex`, little-endian). In iq2xs_init_impl a level l is the grid value 2*l+1
(`kgrid_q2xs`).

iq2xs_init_impl(GGML_TYPE_IQ1_S) (= IQ1_M's tables), ported with nwant = 3:
- kmap_q2xs[u] (u < 43692: eight 2-bit levels, element i at bits 2i) = index of the grid point
  with those levels, or, for a point not on the grid, -(offset + 1) of its neighbour list;
- for every off-grid u in increasing order a list [n, j_1..j_n] in kneighbors_q2xs: the grid
  points sorted by (squared distance to pos = 2*l+1, index) (qsort with iq2_compare_func, a total
  order), cut after the 3rd distinct distance.

Built once per process, lazily (`tables()`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

KMAP_SIZE = 43692
NGRID = 2048
NWANT = 3


@functools.cache
def kgrid_words() -> np.ndarray:
    """ggml's kgrid_1bit_2048: uint16 (2048,), element i's level at bits 2i."""
    import gguf.quants as gq
    words = np.frombuffer(bytes.fromhex(gq.IQ1_S.grid_hex.decode()), dtype="<u2")
    assert words.size == NGRID
    return words.astype(np.uint16)


@dataclass(frozen=True)
class Iq1Tables:
    grid: np.ndarray        # int8 (2048, 8): kgrid_q2xs, values 2*l+1
    levels: np.ndarray      # uint8 (2048, 8): levels 0..2
    kmap: np.ndarray        # int32 (KMAP_SIZE,): kmap_q2xs
    neighbours: np.ndarray  # uint16 (total,): kneighbors_q2xs
    deq_grid: np.ndarray    # float32 (2048, 8): iq1s_grid values -1, 0, 1
    term_off: np.ndarray    # intp (8, 2048): 3*i + level of element i of each grid point


def neighbour_lists(grid: np.ndarray, points: np.ndarray, nwant: int) -> tuple[np.ndarray, np.ndarray]:
    """For the off-grid codes `points` (increasing): (counts (m,), flat concatenated lists) of the
    grid indices sorted by (d2, index), cut after the nwant-th distinct d2 (iq2xs_init_impl)."""
    g = grid.astype(np.float32)
    g2 = (g * g).sum(axis=1)
    counts = np.empty(points.size, np.int64)
    flat = []
    step = 2048
    sh = 2 * np.arange(8)
    for a in range(0, points.size, step):
        p = points[a:a + step]
        pos = (2 * ((p[:, None] >> sh) & 3) + 1).astype(np.float32)
        d2 = ((g2[None, :] - 2.0 * (pos @ g.T)) + (pos * pos).sum(axis=1)[:, None]).astype(np.int32)
        thr = d2.min(axis=1)
        for _ in range(nwant - 1):
            thr = np.where(d2 > thr[:, None], d2, np.iinfo(np.int32).max).min(axis=1)
        sel = d2 <= thr[:, None]
        r, j = np.nonzero(sel)  # row-major: by row, then index
        key = r.astype(np.int64) * 1024 + d2[r, j]  # d2 <= 8*36 < 1024
        order = np.argsort(key, kind="stable")  # by (row, d2), ties by index
        counts[a:a + p.size] = sel.sum(axis=1)
        flat.append(j[order])
    return counts, np.concatenate(flat)


@functools.cache
def tables() -> Iq1Tables:
    """iq2xs_init_impl's tables for IQ1_S / IQ1_M (built once per process)."""
    w = kgrid_words().astype(np.int64)
    lv = ((w[:, None] >> (2 * np.arange(8))) & 3).astype(np.uint8)
    grid = (2 * lv + 1).astype(np.int8)
    kmap = np.full(KMAP_SIZE, -1, np.int32)
    kmap[w] = np.arange(NGRID, dtype=np.int32)
    points = np.nonzero(kmap < 0)[0].astype(np.int64)
    counts, flat = neighbour_lists(grid, points, NWANT)
    offsets = np.concatenate([[0], np.cumsum(counts + 1)[:-1]]).astype(np.int64)
    kmap[points] = -(offsets + 1).astype(np.int32)
    neighbours = np.empty(int((counts + 1).sum()), np.uint16)
    neighbours[offsets] = counts
    mask = np.ones(neighbours.size, bool)
    mask[offsets] = False
    neighbours[mask] = flat
    deq = (lv.astype(np.float32) - 1)
    term_off = np.ascontiguousarray((3 * np.arange(8)[:, None] + lv.T).astype(np.intp))
    for a in (grid, lv, kmap, neighbours, deq, term_off):
        a.setflags(write=False)
    return Iq1Tables(grid, lv, kmap, neighbours, deq, term_off)
