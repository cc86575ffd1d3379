"""E8-lattice grids of mainline ggml's IQ2_XXS / IQ2_XS / IQ2_S and the tables iq2xs_init_impl builds.

Grids: ggml's `kgrid_2bit_256` / `kgrid_2bit_512` / `kgrid_2bit_1024` (iq2xs_init_impl) are
the 2-bit packed forms of ggml-common.h's iq2xxs_grid / iq2xs_grid / iq2s_grid; the gguf package
stores exactly these uint16 words (`grid_hex`, little-endian), so they are read from there.
Level l (0..2) of an element is the grid value 2*l+1 in iq2xs_init_impl (`kgrid_q2xs`) and
(8, 25, 43)[l] in ggml-common.h's dequantization grids.

iq2xs_init_impl(type), ported (nwant = 2 for IQ2_XXS / IQ2_XS, 1 for IQ2_S):
- kmap_q2xs[u] (u < 43692: eight 2-bit levels, element i at bits 2i) = index of the grid point
  with those levels, or, for a point not on the grid, -(offset + 1) of its neighbour list;
- for every off-grid u in increasing order, a list [n, j_1..j_n] appended to kneighbors_q2xs:
  the grid points sorted by (squared distance to pos = 2*l+1, index) (qsort with
  iq2_compare_func, a total order), cut after the nwant-th distinct distance.

The vectorized neighbour search reads kneighbors_q2xs itself as a ragged (CSR) array.
Built once per process per type, lazily (`tables(type)`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

KMAP_SIZE = 43692
GRID_SIZE = {"IQ2_XXS": 256, "IQ2_XS": 512, "IQ2_S": 1024}
NWANT = {"IQ2_XXS": 2, "IQ2_XS": 2, "IQ2_S": 1}
DEQ_LEVELS = np.array([0x08, 0x19, 0x2B], dtype=np.uint8)  # ggml-common.h byte values of levels 0..2


@functools.cache
def kgrid_words(type_name: str) -> np.ndarray:
    """ggml's kgrid_2bit_N for the type: uint16 (N,), element i's level at bits 2i."""
    import gguf.quants as gq
    cls = getattr(gq, type_name)
    words = np.frombuffer(bytes.fromhex(cls.grid_hex.decode()), dtype="<u2")
    assert words.size == GRID_SIZE[type_name]
    return words.astype(np.uint16)


def grid_levels(type_name: str) -> np.ndarray:
    """Levels (0..2) of every grid point: uint8 (N, 8)."""
    w = kgrid_words(type_name).astype(np.int32)
    return ((w[:, None] >> (2 * np.arange(8))) & 3).astype(np.uint8)


@dataclass(frozen=True)
class Iq2Tables:
    """What iq2xs_init_impl builds for one type, plus padded forms for the vectorized search."""
    grid: np.ndarray        # int8 (N, 8): kgrid_q2xs, values 2*l+1
    kmap: np.ndarray        # int32 (KMAP_SIZE,): kmap_q2xs
    neighbours: np.ndarray  # uint16 (total,): kneighbors_q2xs
    levels: np.ndarray      # uint8 (N, 8): levels 0..2 of each grid point
    deq_grid: np.ndarray    # float32 (N, 8): ggml-common.h grid values (8, 25, 43)
    gridf: np.ndarray       # float32 (N, 8): kgrid_q2xs as float (q of the neighbour search)
    term_off: np.ndarray    # intp (8, N): 3*i + level of element i of each grid point


def _neighbour_lists(grid: np.ndarray, points: np.ndarray, nwant: int) -> tuple[np.ndarray, np.ndarray]:
    """For each off-grid u in points (increasing): (counts (n,), padded lists (n, maxlen) of
    grid indices sorted by (d2, index), cut after the nwant-th distinct d2).
    d2 = |g|^2 - 2 g.p + |p|^2 in float64 (small integers: exact); a stable sort of d2 orders
    ties by index, as iq2_compare_func does."""
    g = grid.astype(np.float64)  # (N, 8)
    g2 = (g * g).sum(axis=1)
    lists = []
    counts = np.empty(points.size, np.int32)
    step = 4096
    for a in range(0, points.size, step):
        p = points[a:a + step]
        pos = (2 * ((p[:, None] >> (2 * np.arange(8))) & 3) + 1).astype(np.float64)  # (m, 8)
        d2 = (g2[None, :] - 2.0 * (pos @ g.T)) + (pos * pos).sum(axis=1)[:, None]
        d2i = d2.astype(np.int16)  # <= 8*36
        thr = d2i.min(axis=1)
        for _ in range(nwant - 1):
            thr = np.where(d2i > thr[:, None], d2i, np.iinfo(np.int16).max).min(axis=1)
        n = (d2i <= thr[:, None]).sum(axis=1)
        counts[a:a + p.size] = n
        kmax = int(n.max())
        order = np.argsort(d2i, axis=1, kind="stable")[:, :kmax]  # radix sort; ties by index
        idx = np.where(np.arange(kmax)[None, :] < n[:, None], order, -1)
        lists.append(idx)
    maxlen = int(counts.max())
    nbr = np.full((points.size, maxlen), -1, np.int32)
    a = 0
    for idx in lists:
        nbr[a:a + idx.shape[0], :idx.shape[1]] = idx
        a += idx.shape[0]
    return counts, nbr


@functools.cache
def tables(type_name: str) -> Iq2Tables:
    """iq2xs_init_impl's tables for IQ2_XXS / IQ2_XS / IQ2_S (built once per process)."""
    lv = grid_levels(type_name)
    grid = (2 * lv + 1).astype(np.int8)
    words = kgrid_words(type_name).astype(np.int64)
    kmap = np.full(KMAP_SIZE, -1, np.int32)
    kmap[words] = np.arange(words.size, dtype=np.int32)  # the words are the map indices
    points = np.nonzero(kmap < 0)[0].astype(np.int32)
    counts, nbr = _neighbour_lists(grid, points, NWANT[type_name])
    offsets = np.concatenate([[0], np.cumsum(counts + 1)[:-1]]).astype(np.int64)
    kmap[points] = -(offsets + 1).astype(np.int32)
    neighbours = np.empty(int((counts + 1).sum()), np.uint16)
    neighbours[offsets] = counts
    valid = nbr >= 0
    pos = offsets[:, None] + 1 + np.arange(nbr.shape[1])[None, :]
    neighbours[pos[valid]] = nbr[valid]
    for a in (grid, kmap, neighbours, lv):
        a.setflags(write=False)
    deq = DEQ_LEVELS[lv].astype(np.float32)
    gridf = grid.astype(np.float32)
    deq.setflags(write=False)
    gridf.setflags(write=False)
    term_off = np.ascontiguousarray((3 * np.arange(8)[:, None] + lv.T).astype(np.intp))
    term_off.setflags(write=False)
    return Iq2Tables(grid, kmap, neighbours, lv, deq, gridf, term_off)
