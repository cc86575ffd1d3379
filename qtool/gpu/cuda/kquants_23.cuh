// Q2_K and Q3_K (ggml-quants.c: quantize_row_q2_K_ref / quantize_row_q2_K_impl,
// quantize_row_q3_K_ref / quantize_row_q3_K_impl), one super-block of QK_K values per thread.
// Everything C computes is per super-block (the imatrix variants' sigma2 is a sum over the
// super-block's QK_K values, not over the row), so no row pre-pass.
#pragma once

typedef struct {
    uint8_t scales[QK_K/16];
    uint8_t qs[QK_K/4];
    ggml_half d;
    ggml_half dmin;
} block_q2_K;

typedef struct {
    uint8_t hmask[QK_K/8];
    uint8_t qs[QK_K/4];
    uint8_t scales[12];
    ggml_half d;
} block_q3_K;

QDEV void q2_K_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     block_q2_K * GGML_RESTRICT y, float unused) {
    (void) unused;
    uint8_t L[QK_K];
    uint8_t Laux[16];
    float mins[QK_K/16];
    float scales[QK_K/16];
    if (!quant_weights) {  // quantize_row_q2_K_ref, one super-block
        float weights[16];
        const float q4scale = 15.f;
        float max_scale = 0; // as we are deducting the min, scales are always positive
        float max_min = 0;
        for (int j = 0; j < QK_K/16; ++j) {
            for (int l = 0; l < 16; ++l) weights[l] = fabsf(x[16*j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16*j, weights, L + 16*j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
            float scale = scales[j];
            if (scale > max_scale) {
                max_scale = scale;
            }
            float min = mins[j];
            if (min > max_min) {
                max_min = min;
            }
        }

        if (max_scale > 0) {
            float iscale = q4scale/max_scale;
            for (int j = 0; j < QK_K/16; ++j) {
                int l = nearest_int(iscale*scales[j]);
                y->scales[j] = l;
            }
            y->d = GGML_FP32_TO_FP16(max_scale/q4scale);
        } else {
            for (int j = 0; j < QK_K/16; ++j) y->scales[j] = 0;
            y->d = GGML_FP32_TO_FP16(0.f);
        }
        if (max_min > 0) {
            float iscale = q4scale/max_min;
            for (int j = 0; j < QK_K/16; ++j) {
                int l = nearest_int(iscale*mins[j]);
                y->scales[j] |= (l << 4);
            }
            y->dmin = GGML_FP32_TO_FP16(max_min/q4scale);
        } else {
            y->dmin = GGML_FP32_TO_FP16(0.f);
        }
        for (int j = 0; j < QK_K/16; ++j) {
            const float d = GGML_FP16_TO_FP32(y->d) * (y->scales[j] & 0xF);
            if (!d) continue;
            const float dm = GGML_FP16_TO_FP32(y->dmin) * (y->scales[j] >> 4);
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int((x[16*j + ii] + dm)/d);
                l = MAX(0, MIN(3, l));
                L[16*j + ii] = l;
            }
        }
    } else {  // quantize_row_q2_K_impl, one super-block (quant_weights: this super-block's)
        const bool requantize = true;
        float sw[QK_K/16];
        float weight[16];
        uint8_t Ls[QK_K/16], Lm[QK_K/16];

        memset(sw, 0, QK_K/16*sizeof(float));
        float sumx2 = 0;
        for (int j = 0; j < QK_K; ++j) sumx2 += x[j]*x[j];
        float sigma2 = sumx2/QK_K;
        for (int j = 0; j < QK_K/16; ++j) {
            const float * GGML_RESTRICT qw = quant_weights + 16*j;
            for (int l = 0; l < 16; ++l) weight[l] = qw[l] * sqrtf(sigma2 + x[16*j + l]*x[16*j + l]);
            for (int l = 0; l < QK_K/16; ++l) sw[j] += weight[l];
            scales[j] = make_qkx3_quants(16, 3, x + 16*j, weight, L + 16*j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
        }

        float dm, mm;
        dm  = make_qp_quants(QK_K/16, 15, scales, Ls, sw);
        mm  = make_qp_quants(QK_K/16, 15, mins,   Lm, sw);

        y->d    = GGML_FP32_TO_FP16(dm);
        y->dmin = GGML_FP32_TO_FP16(mm);
        dm      = GGML_FP16_TO_FP32(y->d);
        mm      = GGML_FP16_TO_FP32(y->dmin);

        for (int j = 0; j < QK_K/16; ++j) {
            y->scales[j] = Ls[j] | (Lm[j] << 4);
        }

        if (requantize) {
            for (int j = 0; j < QK_K/16; ++j) {
                const float d = dm * (y->scales[j] & 0xF);
                if (!d) continue;
                const float m = mm * (y->scales[j] >> 4);
                for (int ii = 0; ii < 16; ++ii) {
                    int l = nearest_int((x[16*j + ii] + m)/d);
                    l = MAX(0, MIN(3, l));
                    L[16*j + ii] = l;
                }
            }
        }
    }

    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            y->qs[j/4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
        }
    }
}
QTOOL_ROW_KERNEL(q2_K, QK_K, block_q2_K, q2_K_block)

// IK: ik_llama.cpp's quantize_row_q3_K_impl, also without an imatrix (weights x*x; ik runs ggml's
// _ref there, so that variant is not registered); QX, ROUND: the search and rounding of the impl.
template <kq_qx_fn QX, kq_round_fn ROUND, bool IK>
QDEV void q3_K_block_t(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                       block_q3_K * GGML_RESTRICT y, float unused) {
    (void) unused;
    int8_t L[QK_K];
    float scales[QK_K / 16];
    if (!quant_weights && !IK) {  // quantize_row_q3_K_ref, one super-block
        float max_scale = 0;
        float amax = 0;
        for (int j = 0; j < QK_K/16; ++j) {
            scales[j] = make_q3_quants(16, 4, x + 16*j, L + 16*j, true);
            float scale = fabsf(scales[j]);
            if (scale > amax) {
                amax = scale; max_scale = scales[j];
            }
        }

        memset(y->scales, 0, 12);
        if (max_scale) {
            float iscale = -32.f/max_scale;
            for (int j = 0; j < QK_K/16; ++j) {
                int8_t l = nearest_int(iscale*scales[j]);
                l = MAX(-32, MIN(31, l)) + 32;
                if (j < 8) {
                    y->scales[j] = l & 0xF;
                } else {
                    y->scales[j-8] |= ((l & 0xF) << 4);
                }
                l >>= 4;
                y->scales[j%4 + 8] |= (l << (2*(j/4)));
            }
            y->d = GGML_FP32_TO_FP16(1/iscale);
        } else {
            y->d = GGML_FP32_TO_FP16(0.f);
        }
    } else {  // quantize_row_q3_K_impl, one super-block (quant_weights: this super-block's)
        float weight[16];
        float sw[QK_K / 16];
        int8_t Ls[QK_K / 16];

        float sumx2 = 0;
        for (int j = 0; j < QK_K; ++j) sumx2 += x[j]*x[j];
        float sigma2 = 2*sumx2/QK_K;

        for (int j = 0; j < QK_K/16; ++j) {
            if (quant_weights) {
                const float * qw = quant_weights + 16*j;
                for (int l = 0; l < 16; ++l) weight[l] = qw[l] * sqrtf(sigma2 + x[16*j+l]*x[16*j+l]);
            } else {
                for (int l = 0; l < 16; ++l) weight[l] = x[16*j+l]*x[16*j+l];
            }
            float sumw = 0;
            for (int l = 0; l < 16; ++l) sumw += weight[l];
            sw[j] = sumw;

            scales[j] = QX(16, 4, x + 16*j, L + 16*j, 1, weight);
        }

        memset(y->scales, 0, 12);

        float d_block = QX(QK_K/16, 32, scales, Ls, 1, sw);
        for (int j = 0; j < QK_K/16; ++j) {
            int l = Ls[j];
            if (j < 8) {
                y->scales[j] = l & 0xF;
            } else {
                y->scales[j-8] |= ((l & 0xF) << 4);
            }
            l >>= 4;
            y->scales[j%4 + 8] |= (l << (2*(j/4)));
        }
        y->d = GGML_FP32_TO_FP16(d_block);
    }

    int8_t sc;
    for (int j = 0; j < QK_K/16; ++j) {
        sc = j < 8 ? y->scales[j] & 0xF : y->scales[j-8] >> 4;
        sc = (sc | (((y->scales[8 + j%4] >> (2*(j/4))) & 3) << 4)) - 32;
        float d = GGML_FP16_TO_FP32(y->d) * sc;
        if (!d) {
            continue;
        }
        for (int ii = 0; ii < 16; ++ii) {
            int l = ROUND(x[16*j + ii]/d);
            l = MAX(-4, MIN(3, l));
            L[16*j + ii] = l + 4;
        }
    }

    memset(y->hmask, 0, QK_K/8);
    // We put the high-bit for the 1st 8 quants into bit 0, the next 8 into bit 1, etc.
    int m = 0;
    uint8_t hm = 1;
    for (int j = 0; j < QK_K; ++j) {
        if (L[j] > 3) {
            y->hmask[m] |= hm;
            L[j] -= 4;
        }
        if (++m == QK_K/8) {
            m = 0; hm <<= 1;
        }
    }
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            y->qs[j/4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
        }
    }
}
QDEV void q3_K_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     block_q3_K * GGML_RESTRICT y, float unused) {
    q3_K_block_t<make_qx_quants, nearest_int, false>(x, quant_weights, y, unused);
}
QTOOL_ROW_KERNEL(q3_K, QK_K, block_q3_K, q3_K_block)
