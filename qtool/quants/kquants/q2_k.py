"""(filled in by the port of this type)"""

QUANTIZE: dict = {}
DEQUANTIZE: dict = {}
