"""K-quants Q2_K .. Q6_K and Q8_K: super-blocks of 256 values with quantized sub-block scales.

One module per type family; this package merges their QUANTIZE / DEQUANTIZE tables.
"""

from . import q2_k, q3_k, q6_k, q8_k, q45_k

QUANTIZE: dict = {**q2_k.QUANTIZE, **q3_k.QUANTIZE, **q45_k.QUANTIZE, **q6_k.QUANTIZE,
                   **q8_k.QUANTIZE}
DEQUANTIZE: dict = {**q2_k.DEQUANTIZE, **q3_k.DEQUANTIZE, **q45_k.DEQUANTIZE, **q6_k.DEQUANTIZE,
                     **q8_k.DEQUANTIZE}
