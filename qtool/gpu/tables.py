"""Lookup tables the GPU kernels read (grids, neighbour lists, value tables too large for code).

Each entry is a function returning a contiguous numpy array; the CUDA source declares it with
`QTABLE(type, name)` (a pointer the backend sets to a copy of the array, uploaded once per
device). Tables come from the numpy engine's own builders, which the test suite checks against
the references.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TABLES: dict[str, Callable[[], np.ndarray]] = {}
"""name -> builder. Registered by the modules that own the data (see `table`)."""


# lattice.cuh (mainline IQ3_XXS / IQ3_S / IQ2_* / IQ1_*): iq3xs_init_impl's and iq2xs_init_impl's
# grids (kgrid_q3xs uint32 per point, kgrid_q2xs uint64 per point: their int8 bytes), maps (kmap,
# int32) and neighbour lists (kneighbors, uint16), from the numpy engine's builders.
def _lat_iq3(grid_size: int, what: str) -> Callable[[], np.ndarray]:
    def build() -> np.ndarray:
        from ..quants.lattice.grids_d4 import iq3_tables

        t = iq3_tables(grid_size)
        return {"grid": t.grid_u32, "map": t.kmap.astype(np.int32), "neighbours": t.neighbours}[what]
    return build


def _lat_iq2(type_name: str, what: str) -> Callable[[], np.ndarray]:
    def build() -> np.ndarray:
        if type_name == "IQ1_S":
            from ..quants.lattice.grids_iq1 import tables as iq1_tables

            t1 = iq1_tables()
            g, kmap, nbr = t1.grid, t1.kmap, t1.neighbours
        else:
            from ..quants.lattice.grids_e8 import tables as iq2_tables

            t2 = iq2_tables(type_name)
            g, kmap, nbr = t2.grid, t2.kmap, t2.neighbours
        grid = np.ascontiguousarray(g, dtype=np.int8).view("<u8").reshape(-1)
        return {"grid": grid, "map": np.asarray(kmap, np.int32), "neighbours": np.asarray(nbr, np.uint16)}[what]
    return build


for _what in ("grid", "map", "neighbours"):
    for _gs in (256, 512):
        TABLES[f"lat_iq3_{_gs}_{_what}"] = _lat_iq3(_gs, _what)
    for _tn in ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S"):
        TABLES[f"lat_{_tn.lower()}_{_what}"] = _lat_iq2(_tn, _what)


def table(name: str) -> np.ndarray:
    """The contiguous array of one table."""
    try:
        fn = TABLES[name]
    except KeyError:
        raise KeyError(f"no GPU table named {name!r} (known: {', '.join(sorted(TABLES)) or 'none'})") from None
    return np.ascontiguousarray(fn())


# trellis.cuh (ik_llama.cpp's IQ1_KT IQ2_KT IQ3_KT IQ4_KT): QuantizerIQKT's clusters from the numpy
# engine's builder: cluster offsets (int32, n_clusters + 1), member indices (int32), the members'
# trellis values (int8: every value is an integer in -126..126), m_mid of groups of 8 (float32).
def _kt(type_name: str, what: str) -> Callable[[], np.ndarray]:
    def build() -> np.ndarray:
        from ..quants.ik.trellis_tables import kt_tables

        t = kt_tables(type_name)
        if what == "start":
            return np.asarray(t.start, np.int32)
        if what == "members":
            return np.asarray(t.members, np.int32)
        if what == "mvals":
            return np.asarray(t.mvalues, np.int8).reshape(-1)
        return np.asarray(t.mid[:t.params.group], np.float32)
    return build


for _what in ("start", "members", "mvals", "mid"):
    for _tn, _key in (("IQ2_KT", "iq2"), ("IQ3_KT", "iq3"), ("IQ1_KT", "iq1"), ("IQ4_KT", "iq4"),
                      ("IQ4_KT_OFFSET", "iq4o")):
        TABLES[f"kt_{_key}_{_what}"] = _kt(_tn, _what)


# dequant.cuh (mainline's lattice i-quants): ggml-common.h's dequantization grids as bytes, a grid
# point after another (iq2xxs_grid / iq2xs_grid / iq2s_grid: 8 uint8 values; iq3xxs_grid /
# iq3s_grid: 4; iq1s_grid: 8 int8, -1 / 0 / 1), from the levels of the engine's grid words (its
# full lattice tables build neighbour lists: seconds; tests/test_gpu_dequant.py checks these
# against the engine's dequantization grids).
def _dq_grid(type_name: str) -> Callable[[], np.ndarray]:
    def build() -> np.ndarray:
        if type_name in ("IQ3_XXS", "IQ3_S"):
            from ..quants.lattice import grids_d4

            words = (grids_d4.KGRID_256 if type_name == "IQ3_XXS" else grids_d4.KGRID_512).astype(np.int32)
            levels = (words[:, None] >> (3 * np.arange(4))) & 7
            values = grids_d4.IQ3XXS_VALUES if type_name == "IQ3_XXS" else grids_d4.IQ3S_VALUES
            return values[levels].astype(np.uint8).reshape(-1)
        if type_name == "IQ1_S":
            from ..quants.lattice.grids_iq1 import kgrid_words as iq1_words

            w = iq1_words().astype(np.int32)
            return (((w[:, None] >> (2 * np.arange(8))) & 3) - 1).astype(np.int8).reshape(-1)
        from ..quants.lattice.grids_e8 import DEQ_LEVELS, grid_levels

        return DEQ_LEVELS[grid_levels(type_name)].astype(np.uint8).reshape(-1)
    return build


for _tn, _key in (("IQ2_XXS", "iq2xxs"), ("IQ2_XS", "iq2xs"), ("IQ2_S", "iq2s"), ("IQ3_XXS", "iq3xxs"),
                  ("IQ3_S", "iq3s"), ("IQ1_S", "iq1s")):
    TABLES[f"dq_{_key}_grid"] = _dq_grid(_tn)
