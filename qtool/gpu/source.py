"""The CUDA C source of the kernels: the files of qtool/gpu/cuda/ joined in dependency order.

One text serves NVRTC (the GPU) and a host C++ compiler (tests); `#pragma once` and includes
are not needed because the files are concatenated, prelude first. On the GPU the kernels are
compiled in modules (`MODULES`), each only when a kernel of it is first needed: NVRTC takes about
a minute for all of them together, a few seconds for the common types' module.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

BASE = ("prelude.cuh", "search.cuh", "search_k.cuh")
CORE = ("legacy.cuh", "iq4.cuh", "kquants_23.cuh", "kquants_45.cuh", "q6_k.cuh", "small.cuh")
MODULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (files it needs first, files whose kernels it holds)
    "core": ((), CORE),
    "lattice": ((), ("lattice.cuh",)),
    "lattice_ik": (("lattice.cuh",), ("lattice_ik.cuh",)),
    "iqk": (("iq4.cuh",), ("iqk.cuh",)),
    "ik_mainline": (CORE + ("iqk.cuh",), ("ik_mainline.cuh",)),
    "trellis": (("iq4.cuh", "iqk.cuh", "trellis_blocks.cuh"), ("trellis.cuh",)),
    "dequant": (("lattice.cuh",), ("dequant.cuh",)),
    "dequant_ik": (("iq4.cuh", "iqk.cuh", "trellis_blocks.cuh"), ("dequant_ik.cuh",)),
}
SOURCE_FILES = BASE + CORE + ("lattice.cuh", "lattice_ik.cuh", "iqk.cuh", "ik_mainline.cuh", "trellis_blocks.cuh",
                              "trellis.cuh", "dequant.cuh", "dequant_ik.cuh")
"""Every file, in an order where each may use what the files before it define (the host build)."""

_KERNEL_DEF = re.compile(r"^\s*(?:(?:QTOOL_DEQUANT\w*_KERNEL\((?P<dq>\w+),)|[A-Z_]*KERNEL\((?P<q>\w+),"
                         r"|QKERNEL void (?P<fn>(?:de)?quantize_\w+)\s*\()", re.M)


def _text(name: str) -> str:
    return (resources.files("qtool.gpu") / "cuda" / name).read_text(encoding="utf-8")


def _join(files: tuple[str, ...]) -> str:
    return "\n".join(f"// ---- {f}\n" + _text(f).replace("#pragma once\n", "") for f in files)


@lru_cache(maxsize=1)
def kernel_source() -> str:
    """The whole kernel source as one translation unit (the host build)."""
    return _join(SOURCE_FILES)


@cache
def module_source(module: str) -> str:
    """The translation unit of one GPU module: the base files, its dependencies, its own files."""
    deps, own = MODULES[module]
    files = BASE + tuple(dict.fromkeys(deps + own))
    return _join(files)


@lru_cache(maxsize=1)
def kernel_modules() -> dict[str, str]:
    """kernel function name (`quantize_<type>`, `dequantize_<type>`) -> the module that defines it."""
    out: dict[str, str] = {}
    for module, (_, own) in MODULES.items():
        for f in own:
            for m in _KERNEL_DEF.finditer(_text(f)):
                name = m["fn"] or (f"dequantize_{m['dq']}" if m["dq"] else f"quantize_{m['q']}")
                out[name] = module
    return out


def source_digest() -> str:
    """A short hash of the source (cache key for compiled builds)."""
    return hashlib.sha256(kernel_source().encode()).hexdigest()[:16]


def cache_dir(name: str) -> Path:
    """~/.cache/qtool/<name> (or $XDG_CACHE_HOME/qtool/<name>) for compiled kernels; a fresh temporary
    folder where that cannot be made."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = Path(base) / "qtool" / name
    try:
        d.mkdir(parents=True, exist_ok=True)
        return d
    except OSError:
        return Path(tempfile.mkdtemp(prefix=f"qtool-{name}-"))
