"""The CUDA C source of the kernels: the files of qtool/gpu/cuda/ joined in dependency order.

One text serves NVRTC (the GPU) and a host C++ compiler (tests); `#pragma once` and includes
are not needed because the files are concatenated, prelude first.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

SOURCE_FILES = ("prelude.cuh", "search.cuh", "search_k.cuh", "legacy.cuh", "iq4.cuh", "kquants_23.cuh",
                "kquants_45.cuh", "q6_k.cuh", "small.cuh", "lattice.cuh", "iqk.cuh",
                "ik_mainline.cuh", "trellis.cuh")
"""Order matters: each file may use what the files before it define."""


@lru_cache(maxsize=1)
def kernel_source() -> str:
    """The whole kernel source as one translation unit."""
    base = resources.files("qtool.gpu") / "cuda"
    parts = []
    for name in SOURCE_FILES:
        text = (base / name).read_text(encoding="utf-8")
        parts.append(f"// ---- {name}\n" + text.replace("#pragma once\n", ""))
    return "\n".join(parts)


def source_digest() -> str:
    """A short hash of the source (cache key for compiled builds)."""
    return hashlib.sha256(kernel_source().encode()).hexdigest()[:16]
