"""(filled in by the port of this family)"""

QUANTIZE: dict = {}
DEQUANTIZE: dict = {}
