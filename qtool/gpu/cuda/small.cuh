// Float and small block types (mainline ggml): F16, BF16 (ggml.c ggml_fp32_to_fp16_row,
// ggml_fp32_to_bf16_row_ref: one thread per value), Q1_0, Q2_0, MXFP4, NVFP4, TQ1_0, TQ2_0
// (ggml-quants.c quantize_row_*_ref: what quantize_* runs with and without an imatrix, the
// weights are ignored). Helpers of ggml-impl.h: ggml_compute_fp32_to_bf16,
// ggml_e8m0_to_fp32_half, ggml_ue4m3_to_fp32, ggml_fp32_to_ue4m3; table kvalues_mxfp4
// (ggml-common.h kvalues_fp4).
#pragma once

// ---- F16 / BF16: one "block" of one value (a 2-byte struct, stored with one 16-bit store)
typedef struct { uint16_t bits; } block_f16_small;

QDEV void f16_value_small(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                          block_f16_small * GGML_RESTRICT y, float unused) {
    (void) quant_weights; (void) unused;
    y->bits = GGML_FP32_TO_FP16(x[0]);
}
QTOOL_ROW_KERNEL(f16, 1, block_f16_small, f16_value_small)

// ggml_compute_fp32_to_bf16 (ggml-impl.h): round to nearest even, NaN -> quiet NaN (sign kept)
QDEV uint16_t ggml_compute_fp32_to_bf16_small(float s) {
    const uint32_t i = fp32_to_bits(s);
    if ((i & 0x7fffffffu) > 0x7f800000u) { /* nan */
        return (uint16_t) ((i >> 16) | 64); /* force to quiet */
    }
    return (uint16_t) ((i + (0x7fffu + ((i >> 16) & 1u))) >> 16);
}

QDEV void bf16_value_small(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                           block_f16_small * GGML_RESTRICT y, float unused) {
    (void) quant_weights; (void) unused;
    y->bits = ggml_compute_fp32_to_bf16_small(x[0]);
}
QTOOL_ROW_KERNEL(bf16, 1, block_f16_small, bf16_value_small)

// ---- Q1_0 / Q2_0
#define QK1_0 128
typedef struct { ggml_half d; uint8_t qs[QK1_0 / 8]; } block_q1_0;
#define QK2_0 64
typedef struct { ggml_half d; uint8_t qs[QK2_0 / 4]; } block_q2_0;

QDEV void q1_0_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     block_q1_0 * GGML_RESTRICT y, float unused) {
    (void) quant_weights; (void) unused;
    const int qk = QK1_0;  // quantize_row_q1_0_ref, one block
    float sum_abs = 0.0f;
    for (int j = 0; j < qk; j++) {
        sum_abs += fabsf(x[j]);
    }
    const float d = sum_abs / qk;
    y->d = GGML_FP32_TO_FP16(d);
    for (int j = 0; j < qk / 8; ++j) {
        y->qs[j] = 0;
    }
    for (int j = 0; j < qk; ++j) {
        const int bit_index = j;
        const int byte_index = bit_index / 8;
        const int bit_offset = bit_index % 8;
        if (x[j] >= 0.0f) {
            y->qs[byte_index] |= (1 << bit_offset);
        }
    }
}
QTOOL_ROW_KERNEL(q1_0, QK1_0, block_q1_0, q1_0_block)

QDEV void q2_0_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     block_q2_0 * GGML_RESTRICT y, float unused) {
    (void) quant_weights; (void) unused;
    const int qk = QK2_0;  // quantize_row_q2_0_ref, one block
    float amax = 0.0f;
    for (int j = 0; j < qk; j++) {
        const float a = fabsf(x[j]);
        if (a > amax) amax = a;
    }
    const float d = amax;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    y->d = GGML_FP32_TO_FP16(d);
    for (int j = 0; j < qk / 4; ++j) {
        y->qs[j] = 0;
    }
    for (int j = 0; j < qk; ++j) {
        const float w = x[j];
        int q = f2i(roundf(w * id)) + 1;
        if (q < 0) q = 0;
        if (q > 3) q = 3;
        const int byte_index = j / 4;
        const int bit_offset = (j % 4) * 2;
        y->qs[byte_index] |= ((uint8_t) q << bit_offset);
    }
}
QTOOL_ROW_KERNEL(q2_0, QK2_0, block_q2_0, q2_0_block)

// ---- MXFP4 / NVFP4
#define QK_MXFP4 32
#define QK_NVFP4 64
#define QK_NVFP4_SUB 16
typedef struct { uint8_t e; uint8_t qs[QK_MXFP4 / 2]; } block_mxfp4;  // 17 bytes: see quantize_mxfp4
typedef struct { uint8_t d[QK_NVFP4 / QK_NVFP4_SUB]; uint8_t qs[QK_NVFP4 / 2]; } block_nvfp4;

QCONST int8_t kvalues_mxfp4_small[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

QDEV int best_index_mxfp4_small(float x, float e) {
    int best_index = 0;
    float best_err = fabsf(kvalues_mxfp4_small[0]*e - x);
    for (int i = 1; i < 16; i++) {
        float err = fabsf(kvalues_mxfp4_small[i]*e - x);
        if (err < best_err) {
            best_index = i;
            best_err = err;
        }
    }
    return best_index;
}

// ggml_e8m0_to_fp32_half (ggml-impl.h)
QDEV float ggml_e8m0_to_fp32_half_small(uint8_t x) {
    uint32_t bits;
    if (x < 2) {
        bits = 0x00200000u << x;
    } else {
        bits = (uint32_t) (x - 1) << 23;
    }
    return fp32_from_bits(bits);
}

// floorf(log2f(a)) of glibc for a > 0: glibc's log2f is the float rounding of log2 there; the
// double log2 rounded to float gives the same floor (C's only sensitive spot, just below a power
// of two where log2f rounds up to the integer, is millions of double ulps from a float rounding
// boundary, so a log2 off by a few double ulps, as CUDA's, cannot change it); inf stays inf.
QDEV float floor_log2f_small(float a) {
    return floorf((float) log2((double) a));
}

QDEV void mxfp4_block(const float * GGML_RESTRICT x, block_mxfp4 * GGML_RESTRICT y) {
    const int qk = QK_MXFP4;  // quantize_row_mxfp4_ref, one block
    float amax = 0.0f;
    for (int j = 0; j < qk; j++) {
        const float v = x[j];
        if (amax < fabsf(v)) {
            amax = fabsf(v);
        }
    }
    const uint8_t e = amax > 0.0f ? f2u8(floor_log2f_small(amax) - 2 + 127) : 0;
    const float d = ggml_e8m0_to_fp32_half_small(e);
    y->e = e;
    for (int j = 0; j < qk/2; ++j) {
        const uint8_t x0 = best_index_mxfp4_small(x[0    + j], d);
        const uint8_t x1 = best_index_mxfp4_small(x[qk/2 + j], d);
        y->qs[j]  = x0;
        y->qs[j] |= x1 << 4;
    }
}

// block_mxfp4 is 17 bytes: an even thread ib quantizes blocks ib and ib + 1 (blocks run on
// across rows: row r's block j is block r*nb + j at x + 32*ib and y + 17*ib) and stores the 34
// bytes at the even offset 17*ib with 16-bit stores; odd threads do nothing. A last lone block
// stores 16 bytes as 8 halfwords and its 17th byte alone. y must be 2-byte aligned, as for
// every kernel.
typedef struct { block_mxfp4 b[2]; } block_mxfp4_pair_small;

QKERNEL void quantize_mxfp4(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw,
                            uint8_t * GGML_RESTRICT y, const float * GGML_RESTRICT aux,
                            int64_t nrows, int64_t n_per_row) {
    (void) qw; (void) aux;
    const int64_t nblocks = nrows * (n_per_row / QK_MXFP4);
    QFOR(ib, nblocks) {
        if ((ib & 1) == 0) {
            block_mxfp4_pair_small pair;
            const int two = ib + 1 < nblocks;
            mxfp4_block(x + ib * QK_MXFP4, &pair.b[0]);
            if (two) {
                mxfp4_block(x + (ib + 1) * QK_MXFP4, &pair.b[1]);
            } else {
                memset(&pair.b[1], 0, sizeof(block_mxfp4));
            }
            uint16_t w[sizeof(block_mxfp4_pair_small) / 2];
            memcpy(w, &pair, sizeof(w));
            uint8_t * dst = y + ib * (int64_t) sizeof(block_mxfp4);
            uint16_t * d16 = (uint16_t *) dst;
            if (two) {
                for (int k = 0; k < (int) (sizeof(w) / 2); ++k) d16[k] = w[k];
            } else {
                for (int k = 0; k < (int) (sizeof(block_mxfp4) / 2); ++k) d16[k] = w[k];
                dst[sizeof(block_mxfp4) - 1] = pair.b[0].qs[QK_MXFP4 / 2 - 1];
            }
        }
    }
}

// ggml_ue4m3_to_fp32 / ggml_fp32_to_ue4m3 (ggml-impl.h)
QDEV float ggml_ue4m3_to_fp32_small(uint8_t x) {
    if (x == 0 || x == 0x7F) {
        return 0.0f;
    }
    int   exp = (x >> 3) & 0xF;
    int   man = x & 0x7;
    float raw;
    if (exp == 0) {
        raw = ldexpf((float) man, -9);
    } else {
        raw = ldexpf(1.0f + (float) man / 8.0f, exp - 7);
    }
    return raw * 0.5f;
}

QDEV uint8_t ggml_fp32_to_ue4m3_small(float x) {
    if (!(x > 0.0f)) {
        return 0;
    }
    if (x > 448.0f) {
        x = 448.0f;
    }
    const uint32_t bits = fp32_to_bits(x);
    int fp32_exp  = ((bits >> 23) & 0xFF) - 127;
    int fp32_man  = (bits >> 20) & 0x7;
    int ue4m3_exp = fp32_exp + 7;
    if (ue4m3_exp <= 0) {
        int man = f2i(x * 512.0f + 0.5f);
        if (man > 7) {
            man = 7;
        }
        if (man < 1) {
            return 0;
        }
        return (uint8_t) man;
    }
    if (ue4m3_exp >= 15) {
        return 0x7E;
    }
    int round_bit = (bits >> 19) & 1;
    int ue4m3_man = fp32_man + round_bit;
    if (ue4m3_man > 7) {
        ue4m3_man = 0;
        ue4m3_exp++;
        if (ue4m3_exp >= 15) {
            return 0x7E;
        }
    }
    return (uint8_t) ((ue4m3_exp << 3) | ue4m3_man);
}

QDEV void nvfp4_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                      block_nvfp4 * GGML_RESTRICT y, float unused) {
    (void) quant_weights; (void) unused;
    const int qk_sub = QK_NVFP4_SUB;  // quantize_row_nvfp4_ref, one block
    const int n_sub = QK_NVFP4 / QK_NVFP4_SUB;
    for (int s = 0; s < n_sub; s++) {
        const float * xb = x + s*qk_sub;
        float amax = 0.0f;
        for (int j = 0; j < qk_sub; j++) {
            if (amax < fabsf(xb[j])) {
                amax = fabsf(xb[j]);
            }
        }
        const uint8_t ue = ggml_fp32_to_ue4m3_small(amax / 6.0f);
        y->d[s] = ue;
        const float d = ggml_ue4m3_to_fp32_small(ue);
        for (int j = 0; j < qk_sub/2; ++j) {
            const uint8_t x0 = best_index_mxfp4_small(xb[0        + j], d);
            const uint8_t x1 = best_index_mxfp4_small(xb[qk_sub/2 + j], d);
            y->qs[s*(qk_sub/2) + j] = x0 | (x1 << 4);
        }
    }
}
QTOOL_ROW_KERNEL(nvfp4, QK_NVFP4, block_nvfp4, nvfp4_block)

// ---- TQ1_0 / TQ2_0
typedef struct { uint8_t qs[(QK_K - 4 * QK_K / 64) / 5]; uint8_t qh[QK_K/64]; ggml_half d; } block_tq1_0;
typedef struct { uint8_t qs[QK_K/4]; ggml_half d; } block_tq2_0;

// glibc's lroundf on x86-64: round half away from zero; NaN and |f| >= 2^63 give LONG_MIN.
QDEV int64_t lroundf_small(float f) {
    if (!(f > -9223372036854775808.0f && f < 9223372036854775808.0f)) {
        return (int64_t) 0x8000000000000000ull;
    }
    return (int64_t) roundf(f);
}

// quantize_row_tq1_0_ref's 5 values per byte: byte m of `width` packs x[m + n*width], n = 0..4.
QDEV void tq1_pack5(const float * GGML_RESTRICT x, float id, uint8_t * GGML_RESTRICT qs, size_t width) {
    for (size_t m = 0; m < width; ++m) {
        uint8_t q = 0;
        for (size_t n = 0; n < 5; ++n) {
            int xi = (int) (lroundf_small(x[m + n*width] * id) + 1);
            q *= 3;
            q += xi;
        }
        q = ((uint16_t)q * 256 + (243 - 1)) / 243;
        qs[m] = q;
    }
}

QDEV void tq1_0_block(const float * GGML_RESTRICT xb, const float * GGML_RESTRICT quant_weights,
                      block_tq1_0 * GGML_RESTRICT y, float unused) {
    (void) quant_weights; (void) unused;
    const float * x = xb;  // quantize_row_tq1_0_ref, one block
    float amax = 0.0f;
    for (int j = 0; j < QK_K; j++) {
        const float v = x[j];
        amax = MAX(amax, fabsf(v));
    }
    const float d = amax;
    const float id = d ? 1.0f/d : 0.0f;
    y->d = GGML_FP32_TO_FP16(d);
    // 5 elements per byte, along 32 bytes
    for (size_t j = 0; j < sizeof(y->qs) - sizeof(y->qs) % 32; j += 32) {
        tq1_pack5(x, id, y->qs + j, 32);
        x += 5*32;
    }
    // along 16 bytes
    for (size_t j = sizeof(y->qs) - sizeof(y->qs) % 32; j < sizeof(y->qs); j += 16) {
        tq1_pack5(x, id, y->qs + j, 16);
        x += 5*16;
    }
    // 4 elements per byte
    for (size_t j = 0; j < sizeof(y->qh); ++j) {
        uint8_t q = 0;
        for (size_t m = 0; m < 4; ++m) {
            int xi = (int) (lroundf_small(x[j + m*sizeof(y->qh)] * id) + 1);
            q *= 3;
            q += xi;
        }
        q *= 3;
        q = ((uint16_t)q * 256 + (243 - 1)) / 243;
        y->qh[j] = q;
    }
}
QTOOL_ROW_KERNEL(tq1_0, QK_K, block_tq1_0, tq1_0_block)

QDEV void tq2_0_block(const float * GGML_RESTRICT xb, const float * GGML_RESTRICT quant_weights,
                      block_tq2_0 * GGML_RESTRICT y, float unused) {
    (void) quant_weights; (void) unused;
    const float * x = xb;  // quantize_row_tq2_0_ref, one block
    float amax = 0.0f;
    for (int j = 0; j < QK_K; j++) {
        const float v = x[j];
        amax = MAX(amax, fabsf(v));
    }
    const float d = amax;
    const float id = d ? 1.0f/d : 0.0f;
    y->d = GGML_FP32_TO_FP16(d);
    for (size_t j = 0; j < sizeof(y->qs); j += 32) {
        for (size_t m = 0; m < 32; ++m) {
            uint8_t q = 0;
            for (size_t n = 0; n < 4; ++n) {
                int xi = (int) (lroundf_small(x[m + n*32] * id) + 1);
                q += (xi & 3) << (2*n);
            }
            y->qs[j + m] = q;
        }
        x += 4*32;
    }
}
QTOOL_ROW_KERNEL(tq2_0, QK_K, block_tq2_0, tq2_0_block)
