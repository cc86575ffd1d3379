"""The GPU backend: ggml's per-block C as CUDA kernels (one thread per block), run through CuPy.

Byte-identical with the numpy engine and the golden vectors. `kernels` holds the table of types
and variants with a kernel, `source` assembles the CUDA C text, `cuda` runs it on a GPU (CuPy,
the optional `qtool[cuda]` extra), `host` compiles the same text for the CPU with the system
C++ compiler so that the kernels' arithmetic is tested where no GPU is (CI).
"""

from .kernels import GPU_KERNELS, GpuKernel, gpu_kernel

__all__ = ["GPU_KERNELS", "GpuKernel", "gpu_kernel"]
