// Legacy block types (ggml-quants.c: quantize_row_q*_ref, quantize_row_q*_impl), one block per thread.
#pragma once

#define QK4_0 32
typedef struct { ggml_half d; uint8_t qs[QK4_0 / 2]; } block_q4_0;

// quantize_row_q4_0_impl, one block (sigma2: the row's sum_x2 / n_per_row)
template <kq_qx_fn QX>
QDEV void q4_0_impl_t(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                      block_q4_0 * GGML_RESTRICT y, float sigma2) {
    float weight[QK4_0];
    int8_t L[QK4_0];
    for (int j = 0; j < QK4_0; ++j) weight[j] = quant_weights[j] * sqrtf(sigma2 + x[j]*x[j]);
    float d = QX(QK4_0, 8, x, L, 1, weight);
    y->d = GGML_FP32_TO_FP16(d);
    for (int j = 0; j < 16; ++j) {
        y->qs[j] = L[j] | (L[j+16] << 4);
    }
}

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
    q4_0_impl_t<make_qx_quants>(x, quant_weights, y, sigma2);
}
QTOOL_ROW_KERNEL(q4_0, QK4_0, block_q4_0, q4_0_block)

// FLT_MAX of <float.h> (no standard headers here)
#define LEGACY_FLT_MAX 3.402823466e+38f

#define QK4_1 32
typedef struct { ggml_half d; ggml_half m; uint8_t qs[QK4_1 / 2]; } block_q4_1;

// quantize_row_q4_1_impl, one block (sigma2: the row's sum_x2 / n_per_row)
template <kq_qkx_fn QKX3>
QDEV void q4_1_impl_t(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                      block_q4_1 * GGML_RESTRICT y, float sigma2) {
    float weight[QK4_1];
    uint8_t L[QK4_1], Laux[QK4_1];
    for (int j = 0; j < QK4_1; ++j) weight[j] = quant_weights[j] * sqrtf(sigma2 + x[j]*x[j]);
    float min;
    float d = QKX3(QK4_1, 15, x, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
    y->d = GGML_FP32_TO_FP16(d);
    y->m = GGML_FP32_TO_FP16(-min);
    for (int j = 0; j < 16; ++j) {
        y->qs[j] = L[j] | (L[j+16] << 4);
    }
}

QDEV void q4_1_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     block_q4_1 * GGML_RESTRICT y, float sigma2) {
    if (!quant_weights) {  // quantize_row_q4_1_ref
        const int qk = QK4_1;
        float min = LEGACY_FLT_MAX;
        float max = -LEGACY_FLT_MAX;
        for (int j = 0; j < qk; j++) {
            const float v = x[j];
            if (v < min) min = v;
            if (v > max) max = v;
        }
        const float d  = (max - min) / ((1 << 4) - 1);
        const float id = d ? 1.0f/d : 0.0f;
        y->d = GGML_FP32_TO_FP16(d);
        y->m = GGML_FP32_TO_FP16(min);
        for (int j = 0; j < qk/2; ++j) {
            const float x0 = (x[0    + j] - min)*id;
            const float x1 = (x[qk/2 + j] - min)*id;
            const uint8_t xi0 = MIN(15, f2i8(x0 + 0.5f));
            const uint8_t xi1 = MIN(15, f2i8(x1 + 0.5f));
            y->qs[j]  = xi0;
            y->qs[j] |= xi1 << 4;
        }
        return;
    }
    q4_1_impl_t<make_qkx3_quants>(x, quant_weights, y, sigma2);
}
QTOOL_ROW_KERNEL(q4_1, QK4_1, block_q4_1, q4_1_block)

#define QK5_0 32
typedef struct { ggml_half d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; } block_q5_0;

// quantize_row_q5_0_impl, one block (sigma2: the row's sum_x2 / n_per_row)
template <kq_qx_fn QX>
QDEV void q5_0_impl_t(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                      block_q5_0 * GGML_RESTRICT y, float sigma2) {
    float weight[QK5_0];
    int8_t L[QK5_0];
    for (int j = 0; j < QK5_0; ++j) weight[j] = quant_weights[j] * sqrtf(sigma2 + x[j]*x[j]);
    float d = QX(QK5_0, 16, x, L, 1, weight);
    y->d = GGML_FP32_TO_FP16(d);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        const uint8_t xi0 = L[j];
        const uint8_t xi1 = L[j+16];
        y->qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
        qh |= ((xi1 & 0x10u) >> 4) << (j + QK5_0/2);
    }
    memcpy(&y->qh, &qh, sizeof(qh));
}

QDEV void q5_0_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     block_q5_0 * GGML_RESTRICT y, float sigma2) {
    if (!quant_weights) {  // quantize_row_q5_0_ref
        const int qk = QK5_0;
        float amax = 0.0f;
        float max  = 0.0f;
        for (int j = 0; j < qk; j++) {
            const float v = x[j];
            if (amax < fabsf(v)) {
                amax = fabsf(v);
                max  = v;
            }
        }
        const float d  = max / -16;
        const float id = d ? 1.0f/d : 0.0f;
        y->d = GGML_FP32_TO_FP16(d);
        uint32_t qh = 0;
        for (int j = 0; j < qk/2; ++j) {
            const float x0 = x[0    + j]*id;
            const float x1 = x[qk/2 + j]*id;
            const uint8_t xi0 = MIN(31, f2i8(x0 + 16.5f));
            const uint8_t xi1 = MIN(31, f2i8(x1 + 16.5f));
            y->qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
            qh |= ((xi1 & 0x10u) >> 4) << (j + qk/2);
        }
        memcpy(&y->qh, &qh, sizeof(qh));
        return;
    }
    q5_0_impl_t<make_qx_quants>(x, quant_weights, y, sigma2);
}
QTOOL_ROW_KERNEL(q5_0, QK5_0, block_q5_0, q5_0_block)

#define QK5_1 32
typedef struct { ggml_half d; ggml_half m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; } block_q5_1;

// quantize_row_q5_1_impl, one block (sigma2: the row's sum_x2 / n_per_row)
template <kq_qkx_fn QKX3>
QDEV void q5_1_impl_t(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                      block_q5_1 * GGML_RESTRICT y, float sigma2) {
    float weight[QK5_1];
    uint8_t L[QK5_1], Laux[QK5_1];
    for (int j = 0; j < QK5_1; ++j) weight[j] = quant_weights[j] * sqrtf(sigma2 + x[j]*x[j]);
    float min;
    float d = QKX3(QK5_1, 31, x, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
    y->d = GGML_FP32_TO_FP16(d);
    y->m = GGML_FP32_TO_FP16(-min);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        const uint8_t xi0 = L[j];
        const uint8_t xi1 = L[j+16];
        y->qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
        qh |= ((xi1 & 0x10u) >> 4) << (j + QK5_0/2);
    }
    memcpy(&y->qh, &qh, sizeof(qh));
}

QDEV void q5_1_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     block_q5_1 * GGML_RESTRICT y, float sigma2) {
    if (!quant_weights) {  // quantize_row_q5_1_ref
        const int qk = QK5_1;
        float min = LEGACY_FLT_MAX;
        float max = -LEGACY_FLT_MAX;
        for (int j = 0; j < qk; j++) {
            const float v = x[j];
            if (v < min) min = v;
            if (v > max) max = v;
        }
        const float d  = (max - min) / ((1 << 5) - 1);
        const float id = d ? 1.0f/d : 0.0f;
        y->d = GGML_FP32_TO_FP16(d);
        y->m = GGML_FP32_TO_FP16(min);
        uint32_t qh = 0;
        for (int j = 0; j < qk/2; ++j) {
            const float x0 = (x[0    + j] - min)*id;
            const float x1 = (x[qk/2 + j] - min)*id;
            const uint8_t xi0 = f2u8(x0 + 0.5f);
            const uint8_t xi1 = f2u8(x1 + 0.5f);
            y->qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
            qh |= ((xi1 & 0x10u) >> 4) << (j + qk/2);
        }
        memcpy(&y->qh, &qh, sizeof(y->qh));
        return;
    }
    q5_1_impl_t<make_qkx3_quants>(x, quant_weights, y, sigma2);
}
QTOOL_ROW_KERNEL(q5_1, QK5_1, block_q5_1, q5_1_block)

#define QK8_0 32
typedef struct { ggml_half d; int8_t qs[QK8_0]; } block_q8_0;

// quantize_row_q8_0_ref (quantize_q8_0 ignores the imatrix: both variants)
QDEV void q8_0_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     block_q8_0 * GGML_RESTRICT y, float sigma2) {
    (void)quant_weights;
    (void)sigma2;
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; j++) {
        const float v = x[j];
        amax = MAX(amax, fabsf(v));
    }
    const float d = amax / ((1 << 7) - 1);
    const float id = d ? 1.0f/d : 0.0f;
    y->d = GGML_FP32_TO_FP16(d);
    for (int j = 0; j < QK8_0; ++j) {
        const float x0 = x[j]*id;
        y->qs[j] = f2i8(roundf(x0));
    }
}
QTOOL_ROW_KERNEL(q8_0, QK8_0, block_q8_0, q8_0_block)
