"""The dequantize kernels (qtool/gpu/cuda/dequant*.cuh) built for the CPU with a GPU's NaN rules,
against the numpy engine bit for bit (NaN sign and payload too).

A GPU's float arithmetic turns every NaN it makes or meets into its canonical 0x7FFFFFFF, x86's
keeps the first NaN operand's payload (quiet) or makes 0xFFC00000; the kernels route every such
operation through prelude.cuh's dq_mul / dq_add / dq_sub / dq_neg / dq_fp16 to give x86's bytes on
both devices. The plain host build cannot show a missed one (x86 arithmetic there), so here the
kernels' `float` is a class whose operators give the GPU's canonical NaN (GGML_FP16_TO_FP32 too):
a plain `*`, `+`, `-` or unary minus left on a scale shows as 0x7FFFFFFF where the engine has
x86's NaN, as it did on an H200. Skipped without a C++ compiler."""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from qtool.gpu.dequant import dequant_kernels
from qtool.gpu.host import compiler
from qtool.gpu.source import BASE, MODULES
from qtool.gpu.tables import table
from qtool.quants import engine
from qtool.quants.types import get_type

from .test_gpu_dequant import bits_mismatch, random_blocks
from .test_gpu_dequant_ik import _random_rows

SECTION = "// ---- x86 NaN semantics for the dequantize kernels"
"""Where prelude.cuh's dq_ helpers start (they go through the GPU-NaN float too)."""

GPU_FLOAT = r"""
// ---- GPU NaN rules: float arithmetic makes 0x7FFFFFFF of every NaN result
struct gf {
    float v;
    gf() {}
    template <class T> gf(T x) : v((float) x) {}
    explicit operator float() const { return v; }
};
static_assert(sizeof(gf) == 4, "gf is a float");
static inline gf gpu_nan(float r) {
    if (r != r) { const uint32_t u = 0x7FFFFFFFu; memcpy(&r, &u, 4); }
    gf g; g.v = r; return g;
}
static inline gf operator*(gf a, gf b) { return gpu_nan(a.v * b.v); }
static inline gf operator+(gf a, gf b) { return gpu_nan(a.v + b.v); }
static inline gf operator-(gf a, gf b) { return gpu_nan(a.v - b.v); }
static inline gf operator/(gf a, gf b) { return gpu_nan(a.v / b.v); }
static inline gf operator-(gf a) { return gpu_nan(-a.v); }
static inline gf fabsf(gf a) { return gpu_nan(fabsf(a.v)); }
static inline gf ldexpf(gf a, int e) { return gpu_nan(ldexpf(a.v, e)); }
static inline uint32_t QBITS_F2U(gf f) { uint32_t u; memcpy(&u, &f.v, 4); return u; }
static inline float gpu_fp16(ggml_half h) { return (float) gpu_nan(GGML_FP16_TO_FP32(h)); }
#define GGML_FP16_TO_FP32(h) gpu_fp16(h)
#define float gf
"""
PROBE = r"""
QKERNEL void gpu_nan_probe(const float * a, float * y) {  // plain operations vs the dq_ helpers
    y[0] = a[0] * a[1]; y[1] = dq_mul(a[0], a[1]); y[2] = -a[0]; y[3] = dq_neg(a[0]);
    y[4] = dq_fp16(0x7C01); y[5] = GGML_FP16_TO_FP32(0x7C01);
}
"""


def _text(name: str) -> str:
    return (resources.files("qtool.gpu") / "cuda" / name).read_text(encoding="utf-8").replace("#pragma once\n", "")


def gpu_nan_source(module: str) -> str:
    """One GPU module's source with the GPU's NaN rules for its own files and the dq_ helpers."""
    prelude = _text("prelude.cuh")
    assert SECTION in prelude, "prelude.cuh lost its NaN section"
    head, helpers = prelude.split(SECTION, 1)
    deps, own = MODULES[module]
    before = [head] + [_text(f) for f in BASE[1:] + tuple(f for f in dict.fromkeys(deps) if f not in own)]
    return "\n".join(before) + GPU_FLOAT + SECTION + helpers + "\n".join(_text(f) for f in own) + PROBE


class _Lib:
    """A module built with the GPU's NaN rules, called as qtool.gpu.host does."""

    def __init__(self, module: str, cache: Path) -> None:
        cxx = compiler()
        if cxx is None:
            pytest.skip("no C++ compiler found (set CXX)")
        src = gpu_nan_source(module)
        so = cache / f"gpu_nan_{module}_{hashlib.sha1(src.encode()).hexdigest()[:12]}.so"
        if not so.exists():
            cpp = so.with_suffix(".cpp")
            cpp.write_text(src, encoding="utf-8")
            res = subprocess.run([cxx, "-O1", "-std=c++17", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared",
                                  "-o", str(so), str(cpp)], capture_output=True, text=True)
            assert res.returncode == 0, res.stderr[-4000:]
        self.lib = ctypes.CDLL(str(so))
        self._tables: dict[str, np.ndarray] = {}

    def call(self, kernel: str, tables: tuple[str, ...], q: np.ndarray, nrows: int, n: int) -> np.ndarray:
        for t in tables:
            if t not in self._tables:
                self._tables[t] = table(t)
                ctypes.c_void_p.in_dll(self.lib, t).value = self._tables[t].ctypes.data
        y = np.empty((nrows, n), np.float32)
        q = np.ascontiguousarray(q, dtype=np.uint8)
        getattr(self.lib, kernel)(q.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                  y.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), ctypes.c_int64(nrows),
                                  ctypes.c_int64(n))
        return y


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, _Lib]:
    cache = tmp_path_factory.mktemp("gpu_nan")
    return {m: _Lib(m, cache) for m in ("dequant", "dequant_ik")}


def test_the_emulation_gives_the_gpus_nan(libs: dict[str, _Lib]) -> None:
    """Plain arithmetic on a NaN gives 0x7FFFFFFF here (the H200's bytes), the dq_ helpers x86's."""
    a = np.array([0xFF801234, 0x3F800000], np.uint32).view(np.float32)
    y = np.zeros(6, np.float32)
    libs["dequant"].lib.gpu_nan_probe(a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                      y.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
    assert [hex(v) for v in y.view(np.uint32)] == ["0x7fffffff", "0xffc01234", "0x7fffffff", "0x7f801234",
                                                   "0x7f802000", "0x7fffffff"]


KERNELS = sorted((k.type_name, k.module) for k in dequant_kernels().values())


@pytest.mark.parametrize(("name", "module"), KERNELS)
def test_kernel_bytes_with_gpu_nans(libs: dict[str, _Lib], name: str, module: str) -> None:
    """test_kernels_on_gpu's random bytes (special fp16 words), and for ik's types rows with
    extreme fp16 / float scales: the engine's bits, NaN payloads included."""
    qt = get_type(name)
    k = dequant_kernels()[name]
    n = 16 * max(256, qt.block_size)
    cases = [(random_blocks(name, 64, n, seed=qt.id + 1), n)]
    if module == "dequant_ik":
        cases += [(_random_rows(qt, 16, n // 8, seed), n // 8) for seed in (1, 2)]
    for data, n in cases:
        with np.errstate(all="ignore"):
            want = engine.dequantize(data, name, n)
        got = libs[module].call(k.kernel, k.tables, data, data.shape[0], n)
        assert (msg := bits_mismatch(got, want)) is None, f"{data.shape[0]} rows of {n}: {msg}"


def test_every_module_is_covered() -> None:
    assert {m for _, m in KERNELS} == {"dequant", "dequant_ik"}
    assert any(SECTION in line for line in _text("prelude.cuh").splitlines())
    assert not any(f"QDEV float {h}(" in _text("dequant.cuh") + _text("dequant_ik.cuh")
                   for h in ("dq_mul", "dq_add", "dq_sub", "dq_neg", "dq_fp16"))
