// dequant.cuh: dequantize kernels (see prelude.cuh QTOOL_DEQUANT_KERNEL) for mainline ggml's types:
// ggml-quants.c's dequantize_row_<type>, one block per thread, float32 out.
//
// Bytes: the numpy engine's (and x86's) float32 bits, NaN included. A GPU's arithmetic on a NaN
// gives its canonical NaN 0x7FFFFFFF, x86's gives the first NaN operand made quiet, or 0xFFC00000
// for a NaN it makes (inf * 0, inf - inf): F16 / BF16 outputs keep a NaN's sign and payload, so
// every operation that can meet a NaN or an inf (fp16 / float scales from the file) goes through
// dq_mul / dq_add / dq_sub, which give x86's NaN on both devices; signs are flipped as bits, and
// fp16 is widened as numpy does (an fp16 NaN keeps its payload, not made quiet): prelude.cuh's
// helpers, shared with dequant_ik.cuh.
// Names are prefixed dq_ (the host build joins every file into one translation unit).
#pragma once

// ksigns_iq2xs (ggml-common.h): the 7 sign bits and their parity as the eighth.
QDEV uint8_t dq_ksigns(uint32_t i) {
    uint32_t p = i ^ (i >> 4);
    p ^= p >> 2;
    p ^= p >> 1;
    return (uint8_t) (i | ((p & 1u) << 7));
}
QDEV float dq_signed(float v, uint8_t signs, int j) { return (signs >> j) & 1 ? dq_neg(v) : v; }

QCONST int8_t dq_kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
QCONST int8_t dq_kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// ggml-common.h's grids (iq2xxs_grid, iq2xs_grid, iq2s_grid: 8 bytes a point; iq3xxs_grid,
// iq3s_grid: 4 bytes; iq1s_grid: 8 int8), as bytes from the numpy engine's builders (tables.py).
QTABLE(uint8_t, dq_iq2xxs_grid)
QTABLE(uint8_t, dq_iq2xs_grid)
QTABLE(uint8_t, dq_iq2s_grid)
QTABLE(uint8_t, dq_iq3xxs_grid)
QTABLE(uint8_t, dq_iq3s_grid)
QTABLE(int8_t, dq_iq1s_grid)

// ---- floats (sources): F16, BF16 --------------------------------------------------------------
typedef struct { uint16_t v; } dq_block_f16;
QDEV void dq_f16(const dq_block_f16 * x, float * y) { y[0] = dq_fp16(x->v); }
QDEV void dq_bf16(const dq_block_f16 * x, float * y) { y[0] = QBITS_U2F((uint32_t) x->v << 16); }
QTOOL_DEQUANT_KERNEL(f16, 1, dq_block_f16, dq_f16)
QTOOL_DEQUANT_KERNEL(bf16, 1, dq_block_f16, dq_bf16)

// ---- legacy: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 ------------------------------------------------------------
typedef struct { ggml_half d; uint8_t qs[16]; } dq_block_q4_0;
typedef struct { ggml_half d; ggml_half m; uint8_t qs[16]; } dq_block_q4_1;
typedef struct { ggml_half d; uint8_t qh[4]; uint8_t qs[16]; } dq_block_q5_0;
typedef struct { ggml_half d; ggml_half m; uint8_t qh[4]; uint8_t qs[16]; } dq_block_q5_1;
typedef struct { ggml_half d; int8_t qs[32]; } dq_block_q8_0;

QDEV void dq_q4_0(const dq_block_q4_0 * x, float * y) {
    const float d = dq_fp16(x->d);
    for (int j = 0; j < 16; ++j) {
        y[j] = dq_mul((float) ((x->qs[j] & 0x0F) - 8), d);
        y[j + 16] = dq_mul((float) ((x->qs[j] >> 4) - 8), d);
    }
}
QDEV void dq_q4_1(const dq_block_q4_1 * x, float * y) {
    const float d = dq_fp16(x->d), m = dq_fp16(x->m);
    for (int j = 0; j < 16; ++j) {
        y[j] = dq_add(dq_mul((float) (x->qs[j] & 0x0F), d), m);
        y[j + 16] = dq_add(dq_mul((float) (x->qs[j] >> 4), d), m);
    }
}
QDEV uint32_t dq_qh(const uint8_t * qh) {
    return (uint32_t) qh[0] | ((uint32_t) qh[1] << 8) | ((uint32_t) qh[2] << 16) | ((uint32_t) qh[3] << 24);
}
QDEV void dq_q5_0(const dq_block_q5_0 * x, float * y) {
    const float d = dq_fp16(x->d);
    const uint32_t qh = dq_qh(x->qh);
    for (int j = 0; j < 16; ++j) {
        const uint8_t xh_0 = ((qh >> (j + 0)) << 4) & 0x10;
        const uint8_t xh_1 = ((qh >> (j + 12))) & 0x10;
        y[j] = dq_mul((float) (((x->qs[j] & 0x0F) | xh_0) - 16), d);
        y[j + 16] = dq_mul((float) (((x->qs[j] >> 4) | xh_1) - 16), d);
    }
}
QDEV void dq_q5_1(const dq_block_q5_1 * x, float * y) {
    const float d = dq_fp16(x->d), m = dq_fp16(x->m);
    const uint32_t qh = dq_qh(x->qh);
    for (int j = 0; j < 16; ++j) {
        const uint8_t xh_0 = ((qh >> (j + 0)) << 4) & 0x10;
        const uint8_t xh_1 = ((qh >> (j + 12))) & 0x10;
        y[j] = dq_add(dq_mul((float) ((x->qs[j] & 0x0F) | xh_0), d), m);
        y[j + 16] = dq_add(dq_mul((float) ((x->qs[j] >> 4) | xh_1), d), m);
    }
}
QDEV void dq_q8_0(const dq_block_q8_0 * x, float * y) {
    const float d = dq_fp16(x->d);
    for (int j = 0; j < 32; ++j) y[j] = dq_mul((float) x->qs[j], d);
}
QTOOL_DEQUANT_KERNEL(q4_0, 32, dq_block_q4_0, dq_q4_0)
QTOOL_DEQUANT_KERNEL(q4_1, 32, dq_block_q4_1, dq_q4_1)
QTOOL_DEQUANT_KERNEL(q5_0, 32, dq_block_q5_0, dq_q5_0)
QTOOL_DEQUANT_KERNEL(q5_1, 32, dq_block_q5_1, dq_q5_1)
QTOOL_DEQUANT_KERNEL(q8_0, 32, dq_block_q8_0, dq_q8_0)

// ---- small types: Q1_0 Q2_0 TQ1_0 TQ2_0 MXFP4 NVFP4 ---------------------------------------------
typedef struct { ggml_half d; uint8_t qs[16]; } dq_block_q1_0;  // 128 values
typedef struct { ggml_half d; uint8_t qs[16]; } dq_block_q2_0;  // 64 values
typedef struct { uint8_t qs[48]; uint8_t qh[4]; ggml_half d; } dq_block_tq1_0;
typedef struct { uint8_t qs[64]; ggml_half d; } dq_block_tq2_0;
typedef struct { uint8_t d[4]; uint8_t qs[32]; } dq_block_nvfp4;

QDEV void dq_q1_0(const dq_block_q1_0 * x, float * y) {
    const float d = dq_fp16(x->d);
    const float neg_d = dq_neg(d);
    for (int j = 0; j < 128; ++j) y[j] = (x->qs[j / 8] >> (j % 8)) & 1 ? d : neg_d;
}
QDEV void dq_q2_0(const dq_block_q2_0 * x, float * y) {
    const float d = dq_fp16(x->d);
    for (int j = 0; j < 64; ++j) {
        const uint8_t q = (x->qs[j / 4] >> ((j % 4) * 2)) & 0x03;
        y[j] = dq_mul((float) ((int) q - 1), d);
    }
}
QDEV float dq_tq1_value(uint8_t byte, int n, float d) {
    const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    const uint8_t q = (uint8_t) (byte * pow3[n]);
    const int16_t xi = ((uint16_t) q * 3) >> 8;
    return dq_mul((float) (xi - 1), d);
}
QDEV void dq_tq1_0(const dq_block_tq1_0 * x, float * y) {
    const float d = dq_fp16(x->d);
    for (int n = 0; n < 5; ++n) {
        for (int m = 0; m < 32; ++m) *y++ = dq_tq1_value(x->qs[m], n, d);
    }
    for (int n = 0; n < 5; ++n) {
        for (int m = 0; m < 16; ++m) *y++ = dq_tq1_value(x->qs[32 + m], n, d);
    }
    for (int n = 0; n < 4; ++n) {
        for (int j = 0; j < 4; ++j) *y++ = dq_tq1_value(x->qh[j], n, d);
    }
}
QDEV void dq_tq2_0(const dq_block_tq2_0 * x, float * y) {
    const float d = dq_fp16(x->d);
    for (int j = 0; j < 64; j += 32) {
        for (int l = 0; l < 4; ++l) {
            for (int m = 0; m < 32; ++m) {
                const int8_t q = (x->qs[j + m] >> (l * 2)) & 3;
                *y++ = dq_mul((float) (q - 1), d);
            }
        }
    }
}
// ggml_ue4m3_to_fp32 (ggml-impl.h): every byte gives a finite float
QDEV float dq_ue4m3(uint8_t x) {
    if (x == 0 || x == 0x7F) return 0.0f;
    const int exp = (x >> 3) & 0xF;
    const int man = x & 0x7;
    const float raw = exp == 0 ? ldexpf((float) man, -9) : ldexpf(1.0f + (float) man / 8.0f, exp - 7);
    return raw * 0.5f;
}
QDEV void dq_nvfp4(const dq_block_nvfp4 * x, float * y) {
    for (int s = 0; s < 4; ++s) {
        const float d = dq_ue4m3(x->d[s]);
        float * yb = y + s * 16;
        for (int j = 0; j < 8; ++j) {
            const uint8_t q = x->qs[s * 8 + j];
            yb[j] = (float) dq_kvalues_mxfp4[q & 0x0F] * d;
            yb[j + 8] = (float) dq_kvalues_mxfp4[q >> 4] * d;
        }
    }
}
QTOOL_DEQUANT_KERNEL(q1_0, 128, dq_block_q1_0, dq_q1_0)
QTOOL_DEQUANT_KERNEL(q2_0, 64, dq_block_q2_0, dq_q2_0)
QTOOL_DEQUANT_KERNEL(tq1_0, QK_K, dq_block_tq1_0, dq_tq1_0)
QTOOL_DEQUANT_KERNEL(tq2_0, QK_K, dq_block_tq2_0, dq_tq2_0)
QTOOL_DEQUANT_KERNEL(nvfp4, 64, dq_block_nvfp4, dq_nvfp4)

// block_mxfp4 is 17 bytes (blocks at odd offsets): its bytes are read one at a time. The scale
// ggml_e8m0_to_fp32_half is finite for every byte, the values small integers: plain products.
QKERNEL void dequantize_mxfp4(const uint8_t * GGML_RESTRICT q, float * GGML_RESTRICT y, int64_t nrows,
                              int64_t n_per_row) {
    QFOR(ib, nrows * (n_per_row / 32)) {
        const uint8_t * b = q + ib * 17;
        const uint8_t e = b[0];
        const float d = QBITS_U2F(e < 2 ? 0x00200000u << e : (uint32_t) (e - 1) << 23);
        float * yb = y + ib * 32;
        for (int j = 0; j < 16; ++j) {
            const uint8_t v = b[1 + j];
            yb[j] = (float) dq_kvalues_mxfp4[v & 0x0F] * d;
            yb[j + 16] = (float) dq_kvalues_mxfp4[v >> 4] * d;
        }
    }
}

// ---- k-quants: Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K ----------------------------------------------------
typedef struct { uint8_t scales[16]; uint8_t qs[64]; ggml_half d; ggml_half dmin; } dq_block_q2_K;
typedef struct { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; ggml_half d; } dq_block_q3_K;
typedef struct { ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qs[128]; } dq_block_q4_K;
typedef struct { ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } dq_block_q5_K;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; ggml_half d; } dq_block_q6_K;
// d: a float, held as two 16-bit halves (load_block writes the block as uint16: reading a float
// field written so would break strict aliasing)
typedef struct { uint16_t d[2]; int8_t qs[256]; int16_t bsums[16]; } dq_block_q8_K;

QDEV void dq_q2_K(const dq_block_q2_K * x, float * y) {
    const float d = dq_fp16(x->d), min = dq_fp16(x->dmin);
    const uint8_t * q = x->qs;
    int is = 0;
    for (int n = 0; n < QK_K; n += 128) {
        int shift = 0;
        for (int j = 0; j < 4; ++j) {
            for (int h = 0; h < 2; ++h) {
                const uint8_t sc = x->scales[is++];
                const float dl = dq_mul(d, (float) (sc & 0xF)), ml = dq_mul(min, (float) (sc >> 4));
                for (int l = 0; l < 16; ++l) {
                    *y++ = dq_sub(dq_mul(dl, (float) (int8_t) ((q[l + 16 * h] >> shift) & 3)), ml);
                }
            }
            shift += 2;
        }
        q += 32;
    }
}
QDEV void dq_q3_K(const dq_block_q3_K * x, float * y) {
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
    uint32_t aux[4];
    for (int k = 0; k < 3; ++k) {
        aux[k] = (uint32_t) x->scales[4 * k] | ((uint32_t) x->scales[4 * k + 1] << 8) |
                 ((uint32_t) x->scales[4 * k + 2] << 16) | ((uint32_t) x->scales[4 * k + 3] << 24);
    }
    const uint32_t tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    const float d_all = dq_fp16(x->d);
    const uint8_t * q = x->qs;
    const uint8_t * hm = x->hmask;
    uint8_t m = 1;
    int is = 0;
    for (int n = 0; n < QK_K; n += 128) {
        int shift = 0;
        for (int j = 0; j < 4; ++j) {
            for (int h = 0; h < 2; ++h) {
                const int8_t sc = (int8_t) (uint8_t) (aux[is / 4] >> (8 * (is % 4)));
                ++is;
                const float dl = dq_mul(d_all, (float) (sc - 32));
                for (int l = 0; l < 16; ++l) {
                    const int v = (int8_t) ((q[l + 16 * h] >> shift) & 3) - ((hm[l + 16 * h] & m) ? 0 : 4);
                    *y++ = dq_mul(dl, (float) v);
                }
            }
            shift += 2;
            m <<= 1;
        }
        q += 32;
    }
}
QDEV void dq_scale_min_k4(int j, const uint8_t * q, uint8_t * d, uint8_t * m) {
    if (j < 4) {
        *d = q[j] & 63; *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}
QDEV void dq_q4_K(const dq_block_q4_K * x, float * y) {
    const float d = dq_fp16(x->d), min = dq_fp16(x->dmin);
    const uint8_t * q = x->qs;
    int is = 0;
    uint8_t sc, m;
    for (int j = 0; j < QK_K; j += 64) {
        dq_scale_min_k4(is + 0, x->scales, &sc, &m);
        const float d1 = dq_mul(d, (float) sc), m1 = dq_mul(min, (float) m);
        dq_scale_min_k4(is + 1, x->scales, &sc, &m);
        const float d2 = dq_mul(d, (float) sc), m2 = dq_mul(min, (float) m);
        for (int l = 0; l < 32; ++l) *y++ = dq_sub(dq_mul(d1, (float) (q[l] & 0xF)), m1);
        for (int l = 0; l < 32; ++l) *y++ = dq_sub(dq_mul(d2, (float) (q[l] >> 4)), m2);
        q += 32;
        is += 2;
    }
}
QDEV void dq_q5_K(const dq_block_q5_K * x, float * y) {
    const float d = dq_fp16(x->d), min = dq_fp16(x->dmin);
    const uint8_t * ql = x->qs;
    const uint8_t * qh = x->qh;
    int is = 0;
    uint8_t sc, m;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < QK_K; j += 64) {
        dq_scale_min_k4(is + 0, x->scales, &sc, &m);
        const float d1 = dq_mul(d, (float) sc), m1 = dq_mul(min, (float) m);
        dq_scale_min_k4(is + 1, x->scales, &sc, &m);
        const float d2 = dq_mul(d, (float) sc), m2 = dq_mul(min, (float) m);
        for (int l = 0; l < 32; ++l) *y++ = dq_sub(dq_mul(d1, (float) ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0))), m1);
        for (int l = 0; l < 32; ++l) *y++ = dq_sub(dq_mul(d2, (float) ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0))), m2);
        ql += 32;
        is += 2;
        u1 <<= 2;
        u2 <<= 2;
    }
}
QDEV void dq_q6_K(const dq_block_q6_K * x, float * y) {
    const float d = dq_fp16(x->d);
    const uint8_t * ql = x->ql;
    const uint8_t * qh = x->qh;
    const int8_t * sc = x->scales;
    for (int n = 0; n < QK_K; n += 128) {
        for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int8_t q1 = (int8_t) ((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int8_t q2 = (int8_t) ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int8_t q3 = (int8_t) ((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int8_t q4 = (int8_t) ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l + 0] = dq_mul(dq_mul(d, (float) sc[is + 0]), (float) q1);
            y[l + 32] = dq_mul(dq_mul(d, (float) sc[is + 2]), (float) q2);
            y[l + 64] = dq_mul(dq_mul(d, (float) sc[is + 4]), (float) q3);
            y[l + 96] = dq_mul(dq_mul(d, (float) sc[is + 6]), (float) q4);
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}
QDEV void dq_q8_K(const dq_block_q8_K * x, float * y) {
    const float d = QBITS_U2F((uint32_t) x->d[0] | ((uint32_t) x->d[1] << 16));
    for (int j = 0; j < QK_K; ++j) y[j] = dq_mul(d, (float) x->qs[j]);
}
QTOOL_DEQUANT_KERNEL(q2_k, QK_K, dq_block_q2_K, dq_q2_K)
QTOOL_DEQUANT_KERNEL(q3_k, QK_K, dq_block_q3_K, dq_q3_K)
QTOOL_DEQUANT_KERNEL(q4_k, QK_K, dq_block_q4_K, dq_q4_K)
QTOOL_DEQUANT_KERNEL(q5_k, QK_K, dq_block_q5_K, dq_q5_K)
QTOOL_DEQUANT_KERNEL(q6_k, QK_K, dq_block_q6_K, dq_q6_K)
QTOOL_DEQUANT_KERNEL(q8_k, QK_K, dq_block_q8_K, dq_q8_K)

// ---- IQ4_NL IQ4_XS -------------------------------------------------------------------------------
typedef struct { ggml_half d; uint8_t qs[16]; } dq_block_iq4_nl;
typedef struct { ggml_half d; uint16_t scales_h; uint8_t scales_l[4]; uint8_t qs[128]; } dq_block_iq4_xs;

QDEV void dq_iq4_nl(const dq_block_iq4_nl * x, float * y) {
    const float d = dq_fp16(x->d);
    for (int j = 0; j < 16; ++j) {
        y[j] = dq_mul(d, (float) dq_kvalues_iq4nl[x->qs[j] & 0xf]);
        y[j + 16] = dq_mul(d, (float) dq_kvalues_iq4nl[x->qs[j] >> 4]);
    }
}
QDEV void dq_iq4_xs(const dq_block_iq4_xs * x, float * y) {
    const float d = dq_fp16(x->d);
    const uint8_t * qs = x->qs;
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        const int ls = ((x->scales_l[ib / 2] >> 4 * (ib % 2)) & 0xf) | (((x->scales_h >> 2 * ib) & 3) << 4);
        const float dl = dq_mul(d, (float) (ls - 32));
        for (int j = 0; j < 16; ++j) {
            y[j + 0] = dq_mul(dl, (float) dq_kvalues_iq4nl[qs[j] & 0xf]);
            y[j + 16] = dq_mul(dl, (float) dq_kvalues_iq4nl[qs[j] >> 4]);
        }
        y += 32;
        qs += 16;
    }
}
QTOOL_DEQUANT_KERNEL(iq4_nl, 32, dq_block_iq4_nl, dq_iq4_nl)
QTOOL_DEQUANT_KERNEL(iq4_xs, QK_K, dq_block_iq4_xs, dq_iq4_xs)

// ---- lattice i-quants: IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M ----------------------------
typedef struct { ggml_half d; uint16_t qs[32]; } dq_block_iq2_xxs;
typedef struct { ggml_half d; uint16_t qs[32]; uint8_t scales[8]; } dq_block_iq2_xs;
typedef struct { ggml_half d; uint8_t qs[64]; uint8_t qh[8]; uint8_t scales[8]; } dq_block_iq2_s;
typedef struct { ggml_half d; uint8_t qs[96]; } dq_block_iq3_xxs;
typedef struct { ggml_half d; uint8_t qs[64]; uint8_t qh[8]; uint8_t signs[32]; uint8_t scales[4]; } dq_block_iq3_s;
typedef struct { ggml_half d; uint8_t qs[32]; uint16_t qh[8]; } dq_block_iq1_s;
typedef struct { uint8_t qs[32]; uint8_t qh[16]; uint16_t scales[4]; } dq_block_iq1_m;

// 8 values of an iq2 grid point: db * grid[j], negated where sign bit j is set
QDEV void dq_iq2_group(const uint8_t * grid, int point, float db, uint8_t signs, float * y) {
    for (int j = 0; j < 8; ++j) y[j] = dq_signed(dq_mul(db, (float) grid[8 * point + j]), signs, j);
}
QDEV void dq_iq2_xxs(const dq_block_iq2_xxs * x, float * y) {
    const float d = dq_fp16(x->d);
    for (int ib32 = 0; ib32 < QK_K / 32; ++ib32) {
        const uint32_t a0 = (uint32_t) x->qs[4 * ib32] | ((uint32_t) x->qs[4 * ib32 + 1] << 16);
        const uint32_t a1 = (uint32_t) x->qs[4 * ib32 + 2] | ((uint32_t) x->qs[4 * ib32 + 3] << 16);
        const float db = dq_mul(dq_mul(d, 0.5f + (float) (a1 >> 28)), 0.25f);
        for (int l = 0; l < 4; ++l) {
            dq_iq2_group(dq_iq2xxs_grid, (a0 >> (8 * l)) & 255, db, dq_ksigns((a1 >> 7 * l) & 127), y);
            y += 8;
        }
    }
}
QDEV void dq_iq2_xs(const dq_block_iq2_xs * x, float * y) {
    const float d = dq_fp16(x->d);
    for (int ib32 = 0; ib32 < QK_K / 32; ++ib32) {
        const float db0 = dq_mul(dq_mul(d, 0.5f + (float) (x->scales[ib32] & 0xf)), 0.25f);
        const float db1 = dq_mul(dq_mul(d, 0.5f + (float) (x->scales[ib32] >> 4)), 0.25f);
        for (int l = 0; l < 4; ++l) {
            const uint16_t q = x->qs[4 * ib32 + l];
            dq_iq2_group(dq_iq2xs_grid, q & 511, l < 2 ? db0 : db1, dq_ksigns(q >> 9), y);
            y += 8;
        }
    }
}
QDEV void dq_iq2_s(const dq_block_iq2_s * x, float * y) {
    const float d = dq_fp16(x->d);
    const uint8_t * qs = x->qs;
    const uint8_t * signs = x->qs + QK_K / 8;
    for (int ib32 = 0; ib32 < QK_K / 32; ++ib32) {
        const float db0 = dq_mul(dq_mul(d, 0.5f + (float) (x->scales[ib32] & 0xf)), 0.25f);
        const float db1 = dq_mul(dq_mul(d, 0.5f + (float) (x->scales[ib32] >> 4)), 0.25f);
        for (int l = 0; l < 4; ++l) {
            const int point = qs[l] | ((x->qh[ib32] << (8 - 2 * l)) & 0x300);
            dq_iq2_group(dq_iq2s_grid, point, l < 2 ? db0 : db1, signs[l], y);
            y += 8;
        }
        qs += 4;
        signs += 4;
    }
}
// 8 values from two iq3 grid points (4 bytes each)
QDEV void dq_iq3_group(const uint8_t * grid, int p1, int p2, float db, uint8_t signs, float * y) {
    for (int j = 0; j < 4; ++j) {
        y[j + 0] = dq_signed(dq_mul(db, (float) grid[4 * p1 + j]), signs, j);
        y[j + 4] = dq_signed(dq_mul(db, (float) grid[4 * p2 + j]), signs, j + 4);
    }
}
QDEV void dq_iq3_xxs(const dq_block_iq3_xxs * x, float * y) {
    const float d = dq_fp16(x->d);
    const uint8_t * qs = x->qs;
    const uint8_t * sas = x->qs + QK_K / 4;
    for (int ib32 = 0; ib32 < QK_K / 32; ++ib32) {
        const uint32_t aux32 = (uint32_t) sas[4 * ib32] | ((uint32_t) sas[4 * ib32 + 1] << 8) |
                               ((uint32_t) sas[4 * ib32 + 2] << 16) | ((uint32_t) sas[4 * ib32 + 3] << 24);
        const float db = dq_mul(dq_mul(d, 0.5f + (float) (aux32 >> 28)), 0.5f);
        for (int l = 0; l < 4; ++l) {
            dq_iq3_group(dq_iq3xxs_grid, qs[2 * l], qs[2 * l + 1], db, dq_ksigns((aux32 >> 7 * l) & 127), y);
            y += 8;
        }
        qs += 8;
    }
}
QDEV void dq_iq3_s(const dq_block_iq3_s * x, float * y) {
    const float d = dq_fp16(x->d);
    const uint8_t * qs = x->qs;
    const uint8_t * qh = x->qh;
    const uint8_t * signs = x->signs;
    for (int ib32 = 0; ib32 < QK_K / 32; ib32 += 2) {
        const float db1 = dq_mul(d, (float) (1 + 2 * (x->scales[ib32 / 2] & 0xf)));
        const float db2 = dq_mul(d, (float) (1 + 2 * (x->scales[ib32 / 2] >> 4)));
        for (int h = 0; h < 2; ++h) {
            for (int l = 0; l < 4; ++l) {
                const int p1 = qs[2 * l + 0] | ((qh[h] << (8 - 2 * l)) & 256);
                const int p2 = qs[2 * l + 1] | ((qh[h] << (7 - 2 * l)) & 256);
                dq_iq3_group(dq_iq3s_grid, p1, p2, h ? db2 : db1, signs[l], y);
                y += 8;
            }
            qs += 8;
            signs += 4;
        }
        qh += 2;
    }
}
QDEV void dq_iq1_group(int point, float dl, float delta, float * y) {
    for (int j = 0; j < 8; ++j) y[j] = dq_mul(dl, (float) dq_iq1s_grid[8 * point + j] + delta);
}
QDEV void dq_iq1_s(const dq_block_iq1_s * x, float * y) {
    const float d = dq_fp16(x->d);
    const uint8_t * qs = x->qs;
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        const uint16_t qh = x->qh[ib];
        const float dl = dq_mul(d, (float) (2 * ((qh >> 12) & 7) + 1));
        const float delta = qh & 0x8000 ? -0.125f : 0.125f;
        for (int l = 0; l < 4; ++l) {
            dq_iq1_group(qs[l] | (((qh >> 3 * l) & 7) << 8), dl, delta, y);
            y += 8;
        }
        qs += 4;
    }
}
QDEV void dq_iq1_m(const dq_block_iq1_m * x, float * y) {
    const uint16_t * sc = x->scales;
    const uint16_t s16 = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
    const float d = dq_fp16(s16);
    const uint8_t * qs = x->qs;
    const uint8_t * qh = x->qh;
    for (int ib = 0; ib < QK_K / 32; ++ib) {
        const float dl1 = dq_mul(d, (float) (2 * ((sc[ib / 2] >> (6 * (ib % 2) + 0)) & 0x7) + 1));
        const float dl2 = dq_mul(d, (float) (2 * ((sc[ib / 2] >> (6 * (ib % 2) + 3)) & 0x7) + 1));
        const int idx[4] = {qs[0] | ((qh[0] << 8) & 0x700), qs[1] | ((qh[0] << 4) & 0x700),
                            qs[2] | ((qh[1] << 8) & 0x700), qs[3] | ((qh[1] << 4) & 0x700)};
        const float delta[4] = {qh[0] & 0x08 ? -0.125f : 0.125f, qh[0] & 0x80 ? -0.125f : 0.125f,
                                qh[1] & 0x08 ? -0.125f : 0.125f, qh[1] & 0x80 ? -0.125f : 0.125f};
        for (int l = 0; l < 4; ++l) {
            dq_iq1_group(idx[l], l < 2 ? dl1 : dl2, delta[l], y);
            y += 8;
        }
        qs += 4;
        qh += 2;
    }
}
QTOOL_DEQUANT_KERNEL(iq2_xxs, QK_K, dq_block_iq2_xxs, dq_iq2_xxs)
QTOOL_DEQUANT_KERNEL(iq2_xs, QK_K, dq_block_iq2_xs, dq_iq2_xs)
QTOOL_DEQUANT_KERNEL(iq2_s, QK_K, dq_block_iq2_s, dq_iq2_s)
QTOOL_DEQUANT_KERNEL(iq3_xxs, QK_K, dq_block_iq3_xxs, dq_iq3_xxs)
QTOOL_DEQUANT_KERNEL(iq3_s, QK_K, dq_block_iq3_s, dq_iq3_s)
QTOOL_DEQUANT_KERNEL(iq1_s, QK_K, dq_block_iq1_s, dq_iq1_s)
QTOOL_DEQUANT_KERNEL(iq1_m, QK_K, dq_block_iq1_m, dq_iq1_m)

// ---- F32 output: the quantize kernel of F32 (a copy of the float32 bits), so that a dequantize to
// F32 (and a quantize with F32 tensors in its plan) runs on the GPU: quantize's convention (x, qw,
// y, aux, nrows, n_per_row), one thread per value; the imatrix does not change F32.
// (16-bit halves: store_block reads the block as uint16, so no wider field may hold its bytes)
typedef struct { uint16_t v[2]; } dq_block_f32;
QDEV void dq_f32_value(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                       dq_block_f32 * GGML_RESTRICT y, float row_aux) {
    (void) quant_weights;
    (void) row_aux;
    const uint32_t u = QBITS_F2U(x[0]);
    y->v[0] = (uint16_t) u;
    y->v[1] = (uint16_t) (u >> 16);
}
QTOOL_ROW_KERNEL(f32, 1, dq_block_f32, dq_f32_value)
