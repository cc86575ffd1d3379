// Q4_K and Q5_K (ggml-quants.c: quantize_row_q4_K_ref / quantize_row_q4_K_impl,
// quantize_row_q5_K_ref / quantize_row_q5_K_impl), one 256-value super-block per thread.
// Nothing is computed over the whole row and nothing carries from one super-block to the next
// (the impl's sigma2 is per super-block), so no row pre-pass and no per-row loop.
#pragma once

typedef struct {
    ggml_half d;                  // super-block scale for quantized scales
    ggml_half dmin;               // super-block scale for quantized mins
    uint8_t scales[K_SCALE_SIZE]; // scales and mins, quantized with 6 bits
    uint8_t qs[QK_K/2];           // 4--bit quants
} block_q4_K;

typedef struct {
    ggml_half d;                  // super-block scale for quantized scales
    ggml_half dmin;               // super-block scale for quantized mins
    uint8_t scales[K_SCALE_SIZE]; // scales and mins, quantized with 6 bits
    uint8_t qh[QK_K/8];           // quants, high bit
    uint8_t qs[QK_K/2];           // quants, low 4 bits
} block_q5_K;

// The 6-bit scales and mins of the eight sub-blocks into y_scales (both variants, both types).
QDEV void kq45_pack_scales(uint8_t * GGML_RESTRICT y_scales, int j, uint8_t ls, uint8_t lm) {
    if (j < 4) {
        y_scales[j] = ls;
        y_scales[j+4] = lm;
    } else {
        y_scales[j+4] = (ls & 0xF) | ((lm & 0xF) << 4);
        y_scales[j-4] |= ((ls >> 4) << 6);
        y_scales[j-0] |= ((lm >> 4) << 6);
    }
}

// The searches the first part calls, as template arguments: ggml's (this file) or ik_llama.cpp's
// (ik_mainline.cuh: make_qkx2_quants_ik, make_qkx3_quants_ik, make_qp_quants_ik, nearest_int_ik),
// whose quantize_row_q{4,5}_K_ref / _impl are ggml's line for line but for these calls
// (kq_qkx_fn, kq_qp_fn, kq_round_fn: search_k.cuh).
typedef void (*kq45_sl_fn)(const float *, const float *, int, ggml_half *, ggml_half *, uint8_t *, uint8_t *);

// The first part of both types' quantization: the sub-block scales and mins into y's d, dmin,
// scales, then the final quants L (nmax: 15 for Q4_K, 31 for Q5_K).
template <kq_qkx_fn QKX2, kq_qkx_fn QKX3, kq_qp_fn QP, kq_round_fn ROUND>
QDEV void kq45_scales_and_L_t(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights, int nmax,
                              ggml_half * GGML_RESTRICT y_d, ggml_half * GGML_RESTRICT y_dmin,
                              uint8_t * GGML_RESTRICT y_scales, uint8_t * GGML_RESTRICT L) {
    uint8_t Laux[32];
    float   weights[32];
    float   mins[QK_K/32];
    float   scales[QK_K/32];
    if (!quant_weights) {  // quantize_row_q4_K_ref / quantize_row_q5_K_ref, one super-block
        // q4_K: rmin -1, nstep 20; q5_K: rmin -0.5, nstep 15
        const float rmin = nmax == 15 ? -1.f : -0.5f;
        const int nstep = nmax == 15 ? 20 : 15;
        float max_scale = 0; // as we are deducting the min, scales are always positive
        float max_min = 0;
        for (int j = 0; j < QK_K/32; ++j) {
            float sum_x2 = 0;
            for (int l = 0; l < 32; ++l) sum_x2 += x[32*j + l] * x[32*j + l];
            float av_x = sqrtf(sum_x2/32);
            for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32*j + l]);
            scales[j] = QKX2(32, nmax, x + 32*j, weights, L + 32*j, &mins[j], Laux, rmin, 0.1f, nstep, false);
            float scale = scales[j];
            if (scale > max_scale) {
                max_scale = scale;
            }
            float min = mins[j];
            if (min > max_min) {
                max_min = min;
            }
        }

        float inv_scale = max_scale > 0 ? 63.f/max_scale : 0.f;
        float inv_min   = max_min   > 0 ? 63.f/max_min   : 0.f;
        for (int j = 0; j < QK_K/32; ++j) {
            uint8_t ls = ROUND(inv_scale*scales[j]);
            uint8_t lm = ROUND(inv_min*mins[j]);
            ls = MIN(63, ls);
            lm = MIN(63, lm);
            kq45_pack_scales(y_scales, j, ls, lm);
        }
        *y_d = GGML_FP32_TO_FP16(max_scale/63.f);
        *y_dmin = GGML_FP32_TO_FP16(max_min/63.f);
    } else {  // quantize_row_q4_K_impl / quantize_row_q5_K_impl, one super-block
        uint8_t Ls[QK_K/32];
        uint8_t Lm[QK_K/32];
        float   sw[QK_K/32];

        float sum_x2 = 0;
        for (int l = 0; l < QK_K; ++l) sum_x2 += x[l] * x[l];
        float sigma2 = 2*sum_x2/QK_K;

        for (int j = 0; j < QK_K/32; ++j) {
            const float * qw = quant_weights + 32*j;
            for (int l = 0; l < 32; ++l) weights[l] = qw[l] * sqrtf(sigma2 + x[32*j + l]*x[32*j + l]);
            float sumw = 0;
            for (int l = 0; l < 32; ++l) sumw += weights[l];
            sw[j] = sumw;
            scales[j] = QKX3(32, nmax, x + 32*j, weights, L + 32*j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
        }

        float d_block = QP(QK_K/32, 63, scales, Ls, sw);
        float m_block = QP(QK_K/32, 63, mins,   Lm, sw);
        for (int j = 0; j < QK_K/32; ++j) {
            uint8_t ls = Ls[j];
            uint8_t lm = Lm[j];
            if (nmax == 31) {  // q5_K's impl clamps, q4_K's does not
                ls = MIN(63, ls);
                lm = MIN(63, lm);
            }
            kq45_pack_scales(y_scales, j, ls, lm);
        }
        *y_d = GGML_FP32_TO_FP16(d_block);
        *y_dmin = GGML_FP32_TO_FP16(m_block);
    }

    uint8_t sc, m;
    for (int j = 0; j < QK_K/32; ++j) {
        get_scale_min_k4(j, y_scales, &sc, &m);
        const float d = GGML_FP16_TO_FP32(*y_d) * sc;
        if (!d) continue;
        const float dm = GGML_FP16_TO_FP32(*y_dmin) * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = ROUND((x[32*j + ii] + dm)/d);
            l = MAX(0, MIN(nmax, l));
            L[32*j + ii] = l;
        }
    }
}

QDEV void kq45_scales_and_L(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights, int nmax,
                            ggml_half * GGML_RESTRICT y_d, ggml_half * GGML_RESTRICT y_dmin,
                            uint8_t * GGML_RESTRICT y_scales, uint8_t * GGML_RESTRICT L) {
    kq45_scales_and_L_t<make_qkx2_quants, make_qkx3_quants, make_qp_quants, nearest_int>(x, quant_weights, nmax, y_d, y_dmin, y_scales, L);
}

template <kq45_sl_fn SL>
QDEV void q4_K_block_t(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                       block_q4_K * GGML_RESTRICT y, float unused) {
    (void) unused;
    uint8_t L[QK_K];
    SL(x, quant_weights, 15, &y->d, &y->dmin, y->scales, L);
    uint8_t * q = y->qs;
    for (int j = 0; j < QK_K; j += 64) {
        for (int l = 0; l < 32; ++l) q[l] = L[j + l] | (L[j + l + 32] << 4);
        q += 32;
    }
}
QDEV void q4_K_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     block_q4_K * GGML_RESTRICT y, float unused) {
    q4_K_block_t<kq45_scales_and_L>(x, quant_weights, y, unused);
}
QTOOL_ROW_KERNEL(q4_K, QK_K, block_q4_K, q4_K_block)

template <kq45_sl_fn SL>
QDEV void q5_K_block_t(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                       block_q5_K * GGML_RESTRICT y, float unused) {
    (void) unused;
    uint8_t L[QK_K];
    SL(x, quant_weights, 31, &y->d, &y->dmin, y->scales, L);

    uint8_t * GGML_RESTRICT qh = y->qh;
    uint8_t * GGML_RESTRICT ql = y->qs;
    memset(qh, 0, QK_K/8);

    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < QK_K; n += 64) {
        for (int j = 0; j < 32; ++j) {
            int l1 = L[n + j];
            if (l1 > 15) {
                l1 -= 16; qh[j] |= m1;
            }
            int l2 = L[n + j + 32];
            if (l2 > 15) {
                l2 -= 16; qh[j] |= m2;
            }
            ql[j] = l1 | (l2 << 4);
        }
        m1 <<= 2; m2 <<= 2;
        ql += 32;
    }
}
QDEV void q5_K_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     block_q5_K * GGML_RESTRICT y, float unused) {
    q5_K_block_t<kq45_scales_and_L>(x, quant_weights, y, unused);
}
QTOOL_ROW_KERNEL(q5_K, QK_K, block_q5_K, q5_K_block)
