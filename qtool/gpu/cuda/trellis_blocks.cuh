// ik_llama.cpp's trellis types: their block layouts and QuantizerIQKT::set_values, shared by the
// quantize kernels (trellis.cuh) and the dequantize kernels (dequant_ik.cuh).
#pragma once

#define KT_BLOCK 32
#define KT_NBLOCK (QK_K/KT_BLOCK)
#define KT_INF QBITS_U2F(0x7f800000u)

// set_values (is_int, scale 1): the trellis value k of index i.
QDEV void kt_values8(uint32_t i, float * r, int group, bool is_abs, uint32_t offset) {
    uint32_t x = i + offset;
    for (int k = 0; k < group; ++k) {
        x = 0xCBAC1FEDu*x;
        const uint32_t s = x & 0x3f3f3f3fu;
        const int sum = (int)(s & 0xff) + (int)((s >> 8) & 0xff) + (int)((s >> 16) & 0xff) + (int)(s >> 24);
        const float v = sum - 126.f;
        r[k] = is_abs ? fabsf(v) : v;
    }
}

typedef struct {
    uint8_t  scales[QK_K/64];
    uint16_t ql[QK_K/8];
} block_kt_iq2;

typedef struct {
    uint8_t  scales[QK_K/64];
    uint16_t ql[QK_K/8];
    uint8_t  qh[QK_K/8];
} block_kt_iq3;

typedef struct {
    uint8_t  sh[QK_K/32];
    uint8_t  ql[QK_K/8];
    uint8_t  qh[QK_K/16];
} block_kt_iq1;

typedef struct {
    uint32_t qs[QK_K/8];
} block_kt_iq4;
