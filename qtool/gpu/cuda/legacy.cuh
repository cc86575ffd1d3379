// Legacy block types (ggml-quants.c: quantize_row_q*_ref, quantize_row_q*_impl), one block per thread.
#pragma once

#define QK4_0 32
typedef struct { ggml_half d; uint8_t qs[QK4_0 / 2]; } block_q4_0;

QDEV void q4_0_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     block_q4_0 * GGML_RESTRICT y, float sigma2) {
    if (!quant_weights) {  // quantize_row_q4_0_ref
        const int qk = QK4_0;
        float amax = 0.0f;
        float max  = 0.0f;
        for (int j = 0; j < qk; j++) {
            const float v = x[j];
            if (amax < fabsf(v)) {
                amax = fabsf(v);
                max  = v;
            }
        }
        const float d  = max / -8;
        const float id = d ? 1.0f/d : 0.0f;
        y->d = GGML_FP32_TO_FP16(d);
        for (int j = 0; j < qk/2; ++j) {
            const float x0 = x[0    + j]*id;
            const float x1 = x[qk/2 + j]*id;
            const uint8_t xi0 = MIN(15, f2i8(x0 + 8.5f));
            const uint8_t xi1 = MIN(15, f2i8(x1 + 8.5f));
            y->qs[j]  = xi0;
            y->qs[j] |= xi1 << 4;
        }
        return;
    }
    // quantize_row_q4_0_impl, one block (sigma2: the row's sum_x2 / n_per_row)
    float weight[QK4_0];
    int8_t L[QK4_0];
    for (int j = 0; j < QK4_0; ++j) weight[j] = quant_weights[j] * sqrtf(sigma2 + x[j]*x[j]);
    float d = make_qx_quants(QK4_0, 8, x, L, 1, weight);
    y->d = GGML_FP32_TO_FP16(d);
    for (int j = 0; j < 16; ++j) {
        y->qs[j] = L[j] | (L[j+16] << 4);
    }
}
QTOOL_ROW_KERNEL(q4_0, QK4_0, block_q4_0, q4_0_block)
