"""Which types and imatrix variants have a GPU kernel, and how each is called.

A kernel `quantize_<name>` quantizes every block of every row in one launch (one thread per
block). `row_prepass` names the variants whose C code needs a per-row quantity first (the
legacy types with an imatrix: sigma2 = sum(x^2) / n_per_row over the whole row, in C's order),
computed by the `row_mean_square` kernel and passed as `aux`.

Each kernel ports one flavour's algorithm (`flavour`); `gpu_kernel` picks the flavour's own
kernel, else the other flavour's where the numpy engine runs the same function for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import AbortError
from ..quants.types import IK, MAINLINE, QType, get_type

if TYPE_CHECKING:
    from .dequant import DequantKernel


class KernelAbort(AbortError):
    """A kernel met rows on which ggml's / ik_llama.cpp's C aborts (GGML_ASSERT): the numpy engine
    raises on them too (a RuntimeError naming the cause), so the GPU's bytes are not used."""

    def __init__(self, k: GpuKernel | DequantKernel) -> None:
        what = f"{k.type_name} ({k.flavour})" if isinstance(k, GpuKernel) else k.type_name
        act = "quantizer" if isinstance(k, GpuKernel) else "dequantizer"
        super().__init__(f"{what}: these rows make the C {act} abort (GGML_ASSERT); "
                         "the CPU engine refuses them too (--device cpu names the cause)")


@dataclass(frozen=True)
class GpuKernel:
    """One type's GPU kernel."""

    type_name: str
    kernel: str
    variants: tuple[bool, ...] = (False, True)
    """imatrix variants (False: without, True: with) the kernel gives its flavour's bytes for."""
    row_prepass: tuple[bool, ...] = ()
    """variants that need the per-row mean square (`aux`)."""
    flavour: str = MAINLINE
    """whose algorithm the kernel ports (its bytes equal the numpy engine's kernel of that flavour)."""
    per_row: bool = False
    """one thread per row (the kernel loops over the row's blocks: C carries state from block to
    block) instead of one thread per block."""
    tables: tuple[str, ...] = ()
    """lookup tables (names in qtool.gpu.tables) the kernel reads through `QTABLE` pointers."""
    carries_rows: bool = False
    """C carries state from one row to the next within one ggml_quantize_chunk call (ik's lattice
    variants: IQ3_XXS's L, IQ1_M's shifts ...), and so does the numpy engine within one call: a
    launch must cover exactly the rows of the CPU engine's call (the runner's slab), so that
    both devices give the same bytes."""

    def threads(self, nrows: int, n_per_row: int) -> int:
        """How many threads one launch over nrows rows takes."""
        return nrows if self.per_row else nrows * (n_per_row // self.qtype.block_size)

    @property
    def qtype(self) -> QType:
        return get_type(self.type_name)


GPU_KERNELS: dict[tuple[str, str], GpuKernel] = {(k.type_name, k.flavour): k for k in (
    GpuKernel("Q4_0", "quantize_q4_0", row_prepass=(True,)),
    # legacy.cuh, iq4.cuh: Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL IQ4_XS
    GpuKernel("Q4_1", "quantize_q4_1", row_prepass=(True,)),
    GpuKernel("Q5_0", "quantize_q5_0", row_prepass=(True,)),
    GpuKernel("Q5_1", "quantize_q5_1", row_prepass=(True,)),
    GpuKernel("Q8_0", "quantize_q8_0"),
    GpuKernel("IQ4_NL", "quantize_iq4_nl"),
    GpuKernel("IQ4_XS", "quantize_iq4_xs"),
    # kquants_23.cuh: Q2_K Q3_K
    GpuKernel("Q2_K", "quantize_q2_K"),
    GpuKernel("Q3_K", "quantize_q3_K"),
    # kquants_45.cuh: Q4_K Q5_K
    GpuKernel("Q4_K", "quantize_q4_K"),
    GpuKernel("Q5_K", "quantize_q5_K"),
    # q6_k.cuh: Q6_K
    GpuKernel("Q6_K", "quantize_q6_K"),
    # small.cuh: F16 BF16 TQ1_0 TQ2_0 MXFP4 NVFP4 Q1_0 Q2_0
    GpuKernel("F16", "quantize_f16"),
    GpuKernel("BF16", "quantize_bf16"),
    GpuKernel("TQ1_0", "quantize_tq1_0"),
    GpuKernel("TQ2_0", "quantize_tq2_0"),
    GpuKernel("MXFP4", "quantize_mxfp4"),
    GpuKernel("NVFP4", "quantize_nvfp4"),
    GpuKernel("Q1_0", "quantize_q1_0"),
    GpuKernel("Q2_0", "quantize_q2_0"),
    # dequant.cuh: F32 (a copy of the float32 rows: `dequantize --to F32` and F32 tensors of a plan)
    GpuKernel("F32", "quantize_f32"),
    # lattice.cuh: IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M
    GpuKernel("IQ3_XXS", "quantize_iq3_xxs", variants=(False, True),
              tables=("lat_iq3_256_grid", "lat_iq3_256_map", "lat_iq3_256_neighbours")),
    GpuKernel("IQ3_S", "quantize_iq3_s", variants=(False, True),
              tables=("lat_iq3_512_grid", "lat_iq3_512_map", "lat_iq3_512_neighbours")),
    GpuKernel("IQ2_XXS", "quantize_iq2_xxs", variants=(True,),
              tables=("lat_iq2_xxs_grid", "lat_iq2_xxs_map", "lat_iq2_xxs_neighbours")),
    GpuKernel("IQ2_XS", "quantize_iq2_xs", variants=(True,),
              tables=("lat_iq2_xs_grid", "lat_iq2_xs_map", "lat_iq2_xs_neighbours")),
    GpuKernel("IQ2_S", "quantize_iq2_s", variants=(False, True),
              tables=("lat_iq2_s_grid", "lat_iq2_s_map", "lat_iq2_s_neighbours")),
    GpuKernel("IQ1_S", "quantize_iq1_s", variants=(True,),
              tables=("lat_iq1_s_grid", "lat_iq1_s_map", "lat_iq1_s_neighbours")),
    GpuKernel("IQ1_M", "quantize_iq1_m", variants=(False, True),
              tables=("lat_iq1_s_grid", "lat_iq1_s_map", "lat_iq1_s_neighbours")),
    # lattice_ik.cuh (ik_llama.cpp's lattice variants; where ik's C aborts, the kernels raise KernelAbort
    #   through the backends, as the engine raises)
    GpuKernel("IQ2_XXS", "quantize_iq2_xxs_ik", flavour=IK, variants=(True,),
              tables=("lat_iq2_xxs_grid", "lat_iq2_xxs_map", "lat_iq2_xxs_neighbours")),
    GpuKernel("IQ1_S", "quantize_iq1_s_ik", flavour=IK, variants=(True,),
              tables=("lat_iq1_s_grid", "lat_iq1_s_map", "lat_iq1_s_neighbours")),
    GpuKernel("IQ3_XXS", "quantize_iq3_xxs_ik", flavour=IK, variants=(False, True), per_row=True, carries_rows=True,
              tables=("lat_iq3_256_grid", "lat_iq3_256_map", "lat_iq3_256_neighbours")),
    GpuKernel("IQ2_S", "quantize_iq2_s_ik", flavour=IK, variants=(False, True), per_row=True, carries_rows=True,
              tables=("lat_iq2_s_grid", "lat_iq2_s_map", "lat_iq2_s_neighbours")),
    GpuKernel("IQ1_M", "quantize_iq1_m_ik", flavour=IK, variants=(False, True), per_row=True, carries_rows=True,
              tables=("lat_iq1_s_grid", "lat_iq1_s_map", "lat_iq1_s_neighbours")),
    GpuKernel("IQ2_XS", "quantize_iq2_xs_ik", flavour=IK, variants=(True,), per_row=True, carries_rows=True,
              tables=("lat_iq2_xs_grid", "lat_iq2_xs_map", "lat_iq2_xs_neighbours")),
    # ik_mainline.cuh (ik_llama.cpp's own algorithms for mainline types, flavour=IK):
    #   Q4_0 Q4_1 Q5_0 Q5_1 Q6_0 Q2_K..Q6_K IQ4_NL IQ4_XS IQ1_BN IQ2_BN
    GpuKernel("Q4_K", "quantize_q4_K_ik", flavour=IK),
    GpuKernel("Q5_K", "quantize_q5_K_ik", flavour=IK),
    GpuKernel("Q2_K", "quantize_q2_K_ik", flavour=IK, variants=(True,)),
    GpuKernel("Q3_K", "quantize_q3_K_ik", flavour=IK, variants=(True,)),
    GpuKernel("Q6_K", "quantize_q6_K_ik", flavour=IK),
    GpuKernel("Q4_0", "quantize_q4_0_ik", flavour=IK, variants=(True,), row_prepass=(True,)),
    GpuKernel("Q4_1", "quantize_q4_1_ik", flavour=IK, variants=(True,), row_prepass=(True,)),
    GpuKernel("Q5_0", "quantize_q5_0_ik", flavour=IK, variants=(True,), row_prepass=(True,)),
    GpuKernel("Q5_1", "quantize_q5_1_ik", flavour=IK, variants=(True,), row_prepass=(True,)),
    GpuKernel("Q6_0", "quantize_q6_0", flavour=IK, row_prepass=(True,)),
    GpuKernel("IQ4_NL", "quantize_iq4_nl_ik", flavour=IK, variants=(False, True)),
    GpuKernel("IQ4_XS", "quantize_iq4_xs_ik", flavour=IK, variants=(False, True)),
    GpuKernel("IQ1_BN", "quantize_iq1_bn_ik", flavour=IK, per_row=True),
    GpuKernel("IQ2_BN", "quantize_iq2_bn_ik", flavour=IK, per_row=True),
    # trellis.cuh (ik_llama.cpp, flavour=IK): IQ1_KT IQ2_KT IQ3_KT IQ4_KT
    GpuKernel("IQ2_KT", "quantize_iq2_kt", flavour=IK, per_row=True,
              tables=("kt_iq2_start", "kt_iq2_members", "kt_iq2_mvals", "kt_iq2_mid")),
    GpuKernel("IQ3_KT", "quantize_iq3_kt", flavour=IK, per_row=True,
              tables=("kt_iq3_start", "kt_iq3_members", "kt_iq3_mvals", "kt_iq3_mid")),
    GpuKernel("IQ4_KT", "quantize_iq4_kt", flavour=IK, per_row=True,
              tables=("kt_iq4_start", "kt_iq4_members", "kt_iq4_mvals", "kt_iq4o_start", "kt_iq4o_members",
                      "kt_iq4o_mvals")),
    GpuKernel("IQ1_KT", "quantize_iq1_kt", flavour=IK, per_row=True,
              tables=("kt_iq1_start", "kt_iq1_members", "kt_iq1_mvals", "kt_iq1_mid")),
    # iqk.cuh (ik_llama.cpp): IQ4_K IQ5_K IQ6_K IQ3_K IQ2_K IQ4_KS IQ5_KS ...
    GpuKernel("IQ4_K", "quantize_iq4_k", flavour=IK),
    GpuKernel("IQ5_K", "quantize_iq5_k", flavour=IK),
    GpuKernel("IQ6_K", "quantize_iq6_k", flavour=IK),
    GpuKernel("IQ3_K", "quantize_iq3_k", flavour=IK),
    GpuKernel("IQ4_KS", "quantize_iq4_ks", flavour=IK, per_row=True),
    GpuKernel("IQ5_KS", "quantize_iq5_ks", flavour=IK, per_row=True),
    GpuKernel("IQ3_KS", "quantize_iq3_ks", flavour=IK, per_row=True),
    GpuKernel("IQ2_K", "quantize_iq2_k", flavour=IK),
    GpuKernel("IQ2_KS", "quantize_iq2_ks", flavour=IK, per_row=True),
    GpuKernel("IQ4_KSS", "quantize_iq4_kss", flavour=IK, per_row=True),
    GpuKernel("IQ2_KL", "quantize_iq2_kl", flavour=IK, per_row=True),
)}


def gpu_kernel(qtype: str | QType, imatrix: bool, flavour: str = MAINLINE) -> GpuKernel | None:
    """The kernel giving `flavour`'s bytes for a type and variant, or None: the kernel ported from
    that flavour's algorithm, else one ported from the other flavour where the numpy engine runs
    the same function for both (ik_llama.cpp keeps mainline's code for many types)."""
    qt = get_type(qtype)
    own = GPU_KERNELS.get((qt.name, str(flavour)))
    if own is not None and bool(imatrix) in own.variants:
        return own
    from ..quants.registry import quantizer

    mine = quantizer(qt, flavour, bool(imatrix))
    for (name, fl), k in GPU_KERNELS.items():
        if name == qt.name and fl != flavour and bool(imatrix) in k.variants:
            if mine is not None and quantizer(qt, fl, bool(imatrix)) is mine:
                return k
    return None


def kernel_for(qtype: str | QType, imatrix: bool, flavour: str) -> GpuKernel:
    """gpu_kernel, or a ValueError naming the type, variant and flavour (backends' quantize)."""
    k = gpu_kernel(qtype, imatrix, flavour)
    if k is None:
        raise ValueError(f"no GPU kernel for {get_type(qtype).name} {'with' if imatrix else 'without'} an imatrix "
                         f"({flavour})")
    return k
