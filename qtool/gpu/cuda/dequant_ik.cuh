// dequant_ik.cuh: dequantize kernels (see prelude.cuh QTOOL_DEQUANT_KERNEL).
#pragma once
