"""K-quants Q2_K .. Q6_K and Q8_K: super-blocks of 256 values with quantized sub-block scales.

One module per type family; each registers its kernels (qtool.quants.registry).
"""

from . import q2_k, q3_k, q6_k, q8_k, q45_k

__all__ = ["q2_k", "q3_k", "q6_k", "q8_k", "q45_k"]
