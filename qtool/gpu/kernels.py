"""Which types and imatrix variants have a GPU kernel, and how each is called.

A kernel `quantize_<name>` quantizes every block of every row in one launch (one thread per
block). `row_prepass` names the variants whose C code needs a per-row quantity first (the
legacy types with an imatrix: sigma2 = sum(x^2) / n_per_row over the whole row, in C's order),
computed by the `row_mean_square` kernel and passed as `aux`.

The kernels port mainline ggml's code, so they serve mainline's variants; for `--flavour ik`
a kernel is used only where the numpy engine uses the same function for both flavours
(`qtool.quants.registry.device_quantizer`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..quants.types import QType, get_type


@dataclass(frozen=True)
class GpuKernel:
    """One type's GPU kernel."""

    type_name: str
    kernel: str
    variants: tuple[bool, ...] = (False, True)
    """imatrix variants (False: without, True: with) the kernel gives mainline's bytes for."""
    row_prepass: tuple[bool, ...] = ()
    """variants that need the per-row mean square (`aux`)."""

    @property
    def qtype(self) -> QType:
        return get_type(self.type_name)


GPU_KERNELS: dict[str, GpuKernel] = {k.type_name: k for k in (
    GpuKernel("Q4_0", "quantize_q4_0", row_prepass=(True,)),
)}


def gpu_kernel(qtype: str | QType, imatrix: bool) -> GpuKernel | None:
    """The kernel for a type and variant, or None."""
    k = GPU_KERNELS.get(get_type(qtype).name)
    return k if k is not None and bool(imatrix) in k.variants else None
