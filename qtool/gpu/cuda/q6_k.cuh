// Q6_K (ggml-quants.c: quantize_row_q6_K_ref / quantize_row_q6_K_impl), one super-block of QK_K
// values per thread. Nothing is computed over the whole row (the imatrix variant uses the
// imatrix as the weights directly), so no row pre-pass.
#pragma once

typedef struct {
    uint8_t ql[QK_K/2];
    uint8_t qh[QK_K/4];
    int8_t  scales[QK_K/16];
    ggml_half d;
} block_q6_K;

// quantize_row_q6_K_ref (quant_weights null) and quantize_row_q6_K_impl, one super-block
template <kq_qx_fn QX, kq_round_fn ROUND>
QDEV void q6_K_block_t(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                       block_q6_K * GGML_RESTRICT y, float unused) {
    (void) unused;
    int8_t L[QK_K];
    float   scales[QK_K/16];

    float max_scale = 0;
    float max_abs_scale = 0;

    for (int ib = 0; ib < QK_K/16; ++ib) {

        float scale;
        if (quant_weights) {
            const float * qw = quant_weights + 16*ib;
            scale = QX(16, 32, x + 16*ib, L + 16*ib, 1, qw);
        } else {
            scale = QX(16, 32, x + 16*ib, L + 16*ib, 1, (const float *) 0);
        }
        scales[ib] = scale;

        const float abs_scale = fabsf(scale);
        if (abs_scale > max_abs_scale) {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }

    }

    if (max_abs_scale < GROUP_MAX_EPS) {
        memset(y, 0, sizeof(block_q6_K));
        y->d = GGML_FP32_TO_FP16(0.f);
        return;
    }

    float iscale = -128.f/max_scale;
    y->d = GGML_FP32_TO_FP16(1/iscale);
    for (int ib = 0; ib < QK_K/16; ++ib) {
        y->scales[ib] = MIN(127, ROUND(iscale*scales[ib]));
    }

    for (int j = 0; j < QK_K/16; ++j) {
        float d = GGML_FP16_TO_FP32(y->d) * y->scales[j];
        if (!d) {
            continue;
        }
        for (int ii = 0; ii < 16; ++ii) {
            int l = ROUND(x[16*j + ii]/d);
            l = MAX(-32, MIN(31, l));
            L[16*j + ii] = l + 32;
        }
    }

    uint8_t * GGML_RESTRICT ql = y->ql;
    uint8_t * GGML_RESTRICT qh = y->qh;
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            const uint8_t q1 = L[j + l +  0] & 0xF;
            const uint8_t q2 = L[j + l + 32] & 0xF;
            const uint8_t q3 = L[j + l + 64] & 0xF;
            const uint8_t q4 = L[j + l + 96] & 0xF;
            ql[l+ 0] = q1 | (q3 << 4);
            ql[l+32] = q2 | (q4 << 4);
            qh[l] = (L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6);
        }
        ql += 64;
        qh += 32;
    }
}
QDEV void q6_K_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     block_q6_K * GGML_RESTRICT y, float unused) {
    q6_K_block_t<make_qx_quants, nearest_int>(x, quant_weights, y, unused);
}
QTOOL_ROW_KERNEL(q6_K, QK_K, block_q6_K, q6_K_block)
