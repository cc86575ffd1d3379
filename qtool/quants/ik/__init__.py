"""ik_llama.cpp types and ik_llama.cpp's own flavour of mainline types."""

IK_QUANTIZE: dict = {}
IK_DEQUANTIZE: dict = {}
