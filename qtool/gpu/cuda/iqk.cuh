// ik_llama.cpp's own IQK types (ggml/src/iqk/iqk_quantize.cpp, MIT licence, Iwan Kawrakow):
// the scalar quantizers, moved per super-block (or per row where C has row-level state) into
// kernels. Value tables: ik's ggml-common.h (iq4k_values, iq5nl_values, ...).
#pragma once

// ---- value and index tables -----------------------------------------------------------------

QCONST int8_t iqk_iq4k_values[32] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
    -123, -100, -79, -61, -45, -31, -18,  -6, 5, 17, 29, 42, 57, 73, 93, 117
};
QCONST int8_t iqk_iq5nl_values[64] = {
    -126, -114, -103, -92, -83, -74, -65, -57, -50, -43, -36, -30, -24, -18, -12, -6, -1, 5, 11, 17, 23, 29, 36, 43, 51, 59, 68, 77, 87, 97, 109, 121,
    -124, -112, -101, -90, -81, -72, -63, -55, -48, -41, -34, -28, -22, -16, -10, -4,  1, 7, 13, 19, 25, 31, 38, 45, 53, 61, 70, 79, 89, 99, 111, 123,
};
QCONST int8_t iqk_iq6nl_values[64] = {
    -127, -121, -115, -109, -104,  -98,  -93,  -88,  -84,  -79,  -74,  -70,  -66,  -62,  -58,  -54,
     -51,  -47,  -44,  -40,  -37,  -34,  -31,  -28,  -25,  -22,  -19,  -16,  -13,  -11,   -8,   -5,
      -2,    0,    3,    6,    9,   12,   14,   17,   20,   23,   27,   30,   33,   36,   40,   44,
      47,   51,   55,   59,   63,   68,   72,   77,   82,   87,   92,   98,  103,  109,  115,  121,
};

QCONST int8_t iqk_iq4nl_index[241] = {
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, 16, 16,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,
     1, 17, 17,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2, 18,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,
     3,  3,  3,  3,  3,  3, 19,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4, 20,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,
     5,  5, 21, 21,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6, 22,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7, 23, 23,  8,  8,  8,  8,
     8,  8,  8,  8,  8,  8, 24,  9,  9,  9,  9,  9,  9,  9,  9,  9,  9,  9, 25, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 26, 26,
    11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 27, 27, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 28, 13, 13, 13,
    13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 29, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14,
    14, 14, 14, 14, 30, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15
};
QCONST int8_t iqk_iq5nl_index[248] = {
     0,  0,  0,  0,  0,  0, 32,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1, 33, 33,  2,  2,  2,  2,  2,  2,  2,  2,  2, 34, 34,  3,  3,
     3,  3,  3,  3,  3,  3, 35, 35,  4,  4,  4,  4,  4,  4,  4, 36, 36,  5,  5,  5,  5,  5,  5,  5, 37, 37,  6,  6,  6,  6,  6,  6,
     6, 38,  7,  7,  7,  7,  7,  7, 39, 39,  8,  8,  8,  8,  8, 40, 40,  9,  9,  9,  9,  9, 41, 41, 10, 10, 10, 10, 10, 42, 11, 11,
    11, 11, 11, 43, 12, 12, 12, 12, 12, 44, 13, 13, 13, 13, 13, 45, 14, 14, 14, 14, 14, 46, 15, 15, 15, 15, 47, 47, 16, 16, 16, 16,
    48, 17, 17, 17, 17, 17, 49, 18, 18, 18, 18, 18, 50, 19, 19, 19, 19, 19, 51, 20, 20, 20, 20, 20, 52, 21, 21, 21, 21, 21, 53, 53,
    22, 22, 22, 22, 22, 54, 54, 23, 23, 23, 23, 23, 23, 55, 24, 24, 24, 24, 24, 24, 24, 56, 25, 25, 25, 25, 25, 25, 25, 57, 57, 26,
    26, 26, 26, 26, 26, 26, 58, 58, 27, 27, 27, 27, 27, 27, 27, 27, 59, 28, 28, 28, 28, 28, 28, 28, 28, 28, 60, 29, 29, 29, 29, 29,
    29, 29, 29, 29, 29, 61, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 62, 31, 31, 31, 31, 31, 31
};
QCONST uint8_t iqk_iq6nl_index[249] = {
   0,   0,   0,  64,   1,   1,   1,   1,   1,  65,   2,   2,   2,   2,   2,  66,   3,   3,   3,   3,  67,  67,   4,   4,   4,   4,  68,   5,   5,   5,   5,  69,
  69,   6,   6,   6,  70,  70,   7,   7,   7,  71,   8,   8,   8,  72,  72,   9,   9,   9,  73,  73,  10,  10,  10,  74,  11,  11,  11,  75,  12,  12,  12,  76,
  13,  13,  13,  77,  14,  14,  14,  78,  15,  15,  79,  79,  16,  16,  80,  17,  17,  81,  81,  18,  18,  82,  19,  19,  83,  83,  20,  84,  84,  21,  85,  85,
  22,  86,  86,  23,  87,  87,  24,  88,  88,  25,  89,  89,  26,  90,  90,  27,  91,  91,  28,  92,  29,  93,  93,  30,  94,  94,  31,  95,  95,  32,  96,  33,
  97,  97,  34,  98,  98,  35,  99,  99,  36, 100, 100,  37, 101,  38, 102, 102,  39, 103, 103,  40, 104, 104,  41,  41, 105,  42,  42, 106, 106,  43, 107, 107,
  44, 108, 108,  45,  45, 109,  46,  46,  46, 110,  47,  47, 111, 111,  48,  48, 112,  49,  49,  49, 113,  50,  50,  50, 114,  51,  51,  51, 115,  52,  52,  52,
 116, 116,  53,  53,  53, 117,  54,  54,  54, 118, 118,  55,  55,  55, 119, 119,  56,  56,  56, 120, 120,  57,  57,  57, 121, 121,  58,  58,  58,  58, 122,  59,
  59,  59,  59, 123, 123,  60,  60,  60,  60, 124,  61,  61,  61,  61,  61, 125,  62,  62,  62,  62,  62, 126,  63,  63, 63,
};

QDEV int iqk_best_index_iq4nl(const int8_t * values, float x) {
    int ix = f2i(x) - values[0];
    if (ix < 0 || ix >= 241) return ix < 0 ? 0 : 15;
    ix = iqk_iq4nl_index[ix];
    return ix < 16 ? ix : x - values[ix-16] < values[ix-15] - x ? ix-16 : ix-15;
}
QDEV int iqk_best_index_iq5nl(const int8_t * values, float x) {
    int ix = f2i(x) - values[0];
    if (ix < 0 || ix >= 247) return ix < 0 ? 0 : 31;
    ix = iqk_iq5nl_index[ix];
    return ix < 32 ? ix : x - values[ix-32] < values[ix-31] - x ? ix-32 : ix-31;
}
QDEV int iqk_best_index_iq6nl(const float * values, float x) {
    int ix = f2i(x - values[0]);
    if (ix < 0 || ix >= 249) return ix < 0 ? 0 : 63;
    ix = iqk_iq6nl_index[ix];
    return ix < 64 ? ix : x - values[ix-64] < values[ix-63] - x ? ix-64 : ix-63;
}

// QHelper::row_weights for n values in blocks of block_size: the imatrix, replaced by kEps in a
// block where the sum of w^2, x^2 or w*|x| is <= block_size*kEps^2.
QDEV void iqk_row_weights(const float * GGML_RESTRICT x, const float * GGML_RESTRICT imatrix,
                          float * GGML_RESTRICT weight, int n, int block_size) {
    const float kEps  = 1e-9f;
    const float kEps2 = kEps*kEps;
    const int nblock = n / block_size;
    for (int ib = 0; ib < nblock; ++ib) {
        const float * wb_in = imatrix + ib*block_size;
        const float * xb = x + ib*block_size;
        float * wb = weight + ib*block_size;
        float sumw2 = 0, sumx2 = 0, sumwx = 0;
        for (int j = 0; j < block_size; ++j) {
            wb[j] = wb_in[j];
            sumw2 += wb[j]*wb[j];
            sumx2 += xb[j]*xb[j];
            sumwx += wb[j]*fabsf(xb[j]);
        }
        if (sumw2 > block_size*kEps2 && sumx2 > block_size*kEps2 && sumwx > block_size*kEps2) continue;
        for (int j = 0; j < block_size; ++j) {
            wb[j] = kEps;
        }
    }
}

// The weights of one block: qw[j]*sqrtf(sigma2 + x*x) with an imatrix (qw: the block's), else x*x,
// or 0.25f*sigma2 + x*x where with_sigma2 (IQ5_K, IQ6_K, IQ3_K, IQ2_KS, IQ2_KL).
QDEV void iqk_block_weights(const float * GGML_RESTRICT xb, const float * GGML_RESTRICT qw,
                            float * GGML_RESTRICT weight, float sigma2, int n, bool with_sigma2) {
    if (qw) {
        for (int j = 0; j < n; ++j) weight[j] = qw[j] * sqrtf(sigma2 + xb[j]*xb[j]);
    } else if (with_sigma2) {
        for (int j = 0; j < n; ++j) weight[j] = 0.25f*sigma2 + xb[j]*xb[j];
    } else {
        for (int j = 0; j < n; ++j) weight[j] = xb[j]*xb[j];
    }
}

// The largest |x| of a block (returned) and the x it belongs to (*max_out), the first one on ties.
QDEV float iqk_block_amax(const float * GGML_RESTRICT xb, int n, float * max_out) {
    float amax = 0, max = 0;
    for (int j = 0; j < n; ++j) {
        float ax = fabsf(xb[j]);
        if (ax > amax) {
            amax = ax; max = xb[j];
        }
    }
    *max_out = max;
    return amax;
}

// The refit of a block's d on its chosen table (IQ5_K, IQ6_K, IQ3_K): d = sumqx/sumq2 at 1/d.
template <typename V, int (*BEST)(const V *, float)>
QDEV float iqk_refit(const V * block_values, const float * GGML_RESTRICT xb, const float * GGML_RESTRICT weight,
                     int n, float d) {
    float sumqx = 0, sumq2 = 0;
    float id = 1/d;
    for (int j = 0; j < n; ++j) {
        float w = weight[j];
        float al = id*xb[j];
        int l = BEST(block_values, al);
        float q = block_values[l];
        sumqx += w*q*xb[j];
        sumq2 += w*q*q;
    }
    if (sumq2 > 0) d = sumqx/sumq2;
    return d;
}

// ik's per-block sums for one trial scale id: sumqx/sumq2 of the levels nearest to +id*x (p) and
// to -id*x (m), C's order (IQ4_K, IQ5_K, IQ6_K, IQ3_K, IQ4_KS, IQ5_KS, IQ3_KS).
template <typename V, int (*BEST)(const V *, float)>
QDEV void iqk_pm_sums(const V * values, const float * GGML_RESTRICT xb, const float * GGML_RESTRICT weight,
                      int block_size, float id, float * s) {
    float sumqx_p = 0, sumq2_p = 0;
    float sumqx_m = 0, sumq2_m = 0;
    for (int j = 0; j < block_size; ++j) {
        float w = weight[j];
        float al = id*xb[j];
        int l = BEST(values, al);
        float q = values[l];
        sumqx_p += w*q*xb[j];
        sumq2_p += w*q*q;
        l = BEST(values, -al);
        q = values[l];
        sumqx_m += w*q*xb[j];
        sumq2_m += w*q*q;
    }
    s[0] = sumqx_p; s[1] = sumq2_p; s[2] = sumqx_m; s[3] = sumq2_m;
}

// The block scale search those types share (C: from `float d = ntry > 0 ? ...` to the end of the
// itry loop): d from the block's max, then 2*ntry+1 trial scales (itry*step + values[0])/max on
// values and on shifted_values. step's type is C's (int: IQ4_K(S), IQ5_KS, IQ3_K(S); float: IQ5_K,
// IQ6_K). guard_p (IQ3_K, IQ3_KS): best starts at 0 and the first + fit is taken only where
// sumq2_p > 0. Returns d; *is_shifted as C leaves it.
template <typename V, int (*BEST)(const V *, float), typename S>
QDEV float iqk_shift_search(const V * values, const V * shifted_values, const float * GGML_RESTRICT xb,
                            const float * GGML_RESTRICT weight, int block_size, int ntry, S step, float max,
                            bool guard_p, bool * is_shifted_out) {
    float s[4];
    float d = ntry > 0 ? -max/values[0] : max/values[0];
    float id = 1/d;
    iqk_pm_sums<V, BEST>(values, xb, weight, block_size, id, s);
    float best = 0;
    if (!guard_p || s[1] > 0) {
        d = s[0]/s[1];
        best = d*s[0];
    }
    if (s[3] > 0 && s[2]*s[2] > best*s[3]) {
        d = s[2]/s[3]; best = d*s[2];
    }
    bool is_shifted = false;
    for (int itry = -ntry; itry <= ntry; ++itry) {
        id = (itry*step + values[0])/max;
        iqk_pm_sums<V, BEST>(values, xb, weight, block_size, id, s);
        if (s[1] > 0 && s[0]*s[0] > best*s[1]) {
            d = s[0]/s[1]; best = d * s[0]; is_shifted = false;
        }
        if (s[3] > 0 && s[2]*s[2] > best*s[3]) {
            d = s[2]/s[3]; best = d * s[2]; is_shifted = false;
        }
        id = (itry*step + shifted_values[0])/max;
        iqk_pm_sums<V, BEST>(shifted_values, xb, weight, block_size, id, s);
        if (s[1] > 0 && s[0]*s[0] > best*s[1]) {
            d = s[0]/s[1]; best = d * s[0]; is_shifted = true;
        }
        if (s[3] > 0 && s[2]*s[2] > best*s[3]) {
            d = s[2]/s[3]; best = d * s[2]; is_shifted = true;
        }
    }
    *is_shifted_out = is_shifted;
    return d;
}

// ---- IQ4_K ------------------------------------------------------------------------------------

typedef struct {
    ggml_half d;
    uint16_t extra;
    uint8_t  scales_h[QK_K/64];
    uint8_t  scales_l[QK_K/32];
    uint8_t  qs[QK_K/2];
} block_iq4_k;

// quantize_row_iq4_k_impl_bs16 (super_block_size 256, block_size 16, ntry 7, iq4k_values)
QDEV void iq4_k_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT imatrix,
                      block_iq4_k * GGML_RESTRICT y, float row_aux) {
    (void) row_aux;
    const int super_block_size = 256, block_size = 16, ntry = 7;
    const int8_t * values = iqk_iq4k_values;
    float qwbuf[QK_K];
    const float * quant_weights = 0;
    if (imatrix) {
        iqk_row_weights(x, imatrix, qwbuf, QK_K, 16);
        quant_weights = qwbuf;
    }
    float scales[QK_K/16];
    float weight[16];
    uint8_t L[QK_K];

    float sigma2 = 0;
    for (int j = 0; j < super_block_size; ++j) sigma2 += x[j]*x[j];
    sigma2 *= 2.f/super_block_size;

    memset(y, 0, sizeof(block_iq4_k));
    y->d = GGML_FP32_TO_FP16(0.f);

    uint16_t scales_h[2] = {0, 0};

    const int8_t * shifted_values = values + 16;

    float max_scale = 0, amax_scale = 0;
    uint16_t extra = 0;
    for (int ib = 0; ib < super_block_size/block_size; ++ib) {
        const float * xb = x + ib*block_size;
        iqk_block_weights(xb, quant_weights ? quant_weights + ib*block_size : 0, weight, sigma2, block_size, false);
        float max;
        float amax = iqk_block_amax(xb, block_size, &max);
        if (amax < 1e-16f) {
            scales[ib] = 0;
            continue;
        }
        bool is_shifted;
        float d = iqk_shift_search<int8_t, iqk_best_index_iq4nl>(values, shifted_values, xb, weight, block_size, ntry, 1, max, false, &is_shifted);
        if (is_shifted) extra |= (1 << ib);
        scales[ib] = d;
        float abs_d = fabsf(d);
        if (abs_d > amax_scale) {
            amax_scale = abs_d; max_scale = d;
        }
    }
    float d = -max_scale/32;
    y->d = GGML_FP32_TO_FP16(d);
    y->extra = extra;
    float id = d ? 1/d : 0.f;
    float sumqx = 0, sumq2 = 0;
    for (int ib = 0; ib < super_block_size/block_size; ++ib) {
        const int8_t * block_values = extra & (1 << ib) ? shifted_values : values;
        int l = nearest_int(id*scales[ib]);
        l = MAX(-32, MIN(31, l));
        float dl = d * l;
        float idl = dl ? 1/dl : 0.f;
        uint8_t * Lb = L + ib*block_size;
        const float * xb = x + ib*block_size;
        iqk_block_weights(xb, quant_weights ? quant_weights + ib*block_size : 0, weight, sigma2, block_size, false);
        for (int j = 0; j < block_size; ++j) {
            Lb[j] = iqk_best_index_iq4nl(block_values, idl*xb[j]);
            float w = weight[j];
            float q = block_values[Lb[j]]*l;
            sumqx += w*q*xb[j];
            sumq2 += w*q*q;
        }
        l += 32;
        uint8_t l_l = l & 0xf;
        uint8_t l_h = l >>  4;
        if (ib%2 == 0) y->scales_l[ib/2] = l_l;
        else y->scales_l[ib/2] |= (l_l << 4);
        scales_h[ib/8] |= (l_h << 2*(ib%8));
    }
    if (sumq2 > 0) y->d = GGML_FP32_TO_FP16(sumqx/sumq2);
    for (int k = 0; k < 2; ++k) {  // the uint16_t view of scales_h, little-endian
        y->scales_h[2*k+0] = (uint8_t)(scales_h[k] & 0xff);
        y->scales_h[2*k+1] = (uint8_t)(scales_h[k] >> 8);
    }

    for (int i = 0; i < super_block_size/32; ++i) {
        for (int j = 0; j < 16; ++j) {
            y->qs[16*i + j] = L[32*i + j] | (L[32*i + 16 + j] << 4);
        }
    }
}
QTOOL_ROW_KERNEL(iq4_k, QK_K, block_iq4_k, iq4_k_block)

// ---- IQ5_K ------------------------------------------------------------------------------------

typedef struct {
    ggml_half d;
    uint16_t extra;
    uint8_t  scales_h[QK_K/64];
    uint8_t  scales_l[QK_K/32];
    uint8_t  qs[QK_K/2];
    uint8_t  qh[QK_K/8];
} block_iq5_k;

// IQ5_K and IQ6_K (quantize_row_iq5_k_impl / quantize_row_iq6_k_impl, one super-block): C's code
// is the same but for the table (nvalues levels, then the shifted ones; IQ6_K: float values), the
// row scale (max/32 or max/127), the scales' range and packing and qh's layout (IQ6: 2 bits).
template <typename V, int (*BEST)(const V *, float), typename BLOCK_T, bool IQ6>
QDEV void iqk_k56_block(const float * GGML_RESTRICT xbl, const float * GGML_RESTRICT imatrix,
                        BLOCK_T * GGML_RESTRICT y, const V * values, int nvalues) {
    const int ntry = 5;
    const float step = 1.f;
    float qwbuf[QK_K];
    const float * quant_weights = 0;
    if (imatrix) {
        iqk_row_weights(xbl, imatrix, qwbuf, QK_K, 16);
        quant_weights = qwbuf;
    }

    float scales[QK_K/16];
    float weight[16];

    const V * shifted_values = values + nvalues;

    memset(y, 0, sizeof(BLOCK_T));
    y->d = GGML_FP32_TO_FP16(0.f);

    float sumx2 = 0;
    for (int j = 0; j < QK_K; ++j) sumx2 += xbl[j]*xbl[j];
    const float sigma2 = 2*sumx2/QK_K;

    float max_scale = 0, max_abs_scale = 0;
    uint16_t extra = 0;

    for (int ib = 0; ib < QK_K/16; ++ib) {
        const float * xb = xbl + 16*ib;
        iqk_block_weights(xb, quant_weights ? quant_weights + ib*16 : 0, weight, sigma2, 16, true);
        float max;
        float amax = iqk_block_amax(xb, 16, &max);
        if (amax < 1e-16f) {
            scales[ib] = 0;
            continue;
        }
        bool is_shifted;
        float d = iqk_shift_search<V, BEST>(values, shifted_values, xb, weight, 16, ntry, step, max, false, &is_shifted);
        if (d) {
            d = iqk_refit<V, BEST>(is_shifted ? shifted_values : values, xb, weight, 16, d);
        }
        scales[ib] = d;
        if (is_shifted) extra |= (1 << ib);

        float abs_scale = fabsf(scales[ib]);
        if (abs_scale > max_abs_scale) {
            max_abs_scale = abs_scale; max_scale = scales[ib];
        }
    }

    if (!max_abs_scale) return;
    float d = -max_scale/(IQ6 ? 127 : 32);
    y->d = GGML_FP32_TO_FP16(d);
    y->extra = extra;

    float id = 1/d;

    float sumqx = 0, sumq2 = 0;
    for (int ib = 0; ib < QK_K/16; ++ib) {
        int ls = nearest_int(id*scales[ib]);
        if constexpr (IQ6) {
            ls = MAX(-127, MIN(127, ls));
            y->scales[ib] |= ls;
        } else {
            ls = MAX(-32, MIN(31, ls));
            int uls = ls + 32;
            y->scales_l[ib/2] |= ((uls & 0xf) << 4*(ib%2));
            y->scales_h[ib/4] |= ((uls >>  4) << 2*(ib%4));
        }
        float dl = d * ls;
        if (dl) {
            const V * block_values = y->extra & (1 << ib) ? shifted_values : values;
            const float * xb = xbl + 16*ib;
            iqk_block_weights(xb, quant_weights ? quant_weights + ib*16 : 0, weight, sigma2, 16, true);
            float idl = 1/dl;
            int ib32 = ib/2;
            int offset = 16*(ib%2);
            uint8_t * qs = y->qs + 32*(ib32/2) + offset;
            uint8_t * qh = y->qh + 32*(ib32/(IQ6 ? 4 : 8)) + offset;
            for (int j = 0; j < 16; ++j) {
                const float al = idl*xb[j];
                int ibest = BEST(block_values, al);
                qs[j] |= ((ibest & 0xf) << 4*(ib32%2));
                qh[j] |= ((ibest >>  4) << (IQ6 ? 2*(ib32%4) : (ib32%8)));
                float w = weight[j];
                float q = block_values[ibest]*ls;
                sumqx += w*q*xb[j];
                sumq2 += w*q*q;
            }
        }
    }
    if (sumq2 > 0) y->d = GGML_FP32_TO_FP16(sumqx/sumq2);
}

// quantize_row_iq5_k_impl, one super-block (ibl's loop body)
QDEV void iq5_k_block(const float * GGML_RESTRICT xbl, const float * GGML_RESTRICT imatrix,
                      block_iq5_k * GGML_RESTRICT y, float row_aux) {
    (void) row_aux;
    iqk_k56_block<int8_t, iqk_best_index_iq5nl, block_iq5_k, false>(xbl, imatrix, y, iqk_iq5nl_values, 32);
}
QTOOL_ROW_KERNEL(iq5_k, QK_K, block_iq5_k, iq5_k_block)

// ---- IQ6_K ------------------------------------------------------------------------------------

typedef struct {
    ggml_half d;
    uint16_t extra;
    int8_t   scales[QK_K/16];
    uint8_t  qs[QK_K/2];
    uint8_t  qh[QK_K/4];
} block_iq6_k;

// quantize_row_iq6_k_impl, one super-block; values: quantize_iq6_k's float table
// (iq6nl_values[i], shifted: + S_IQ6K = 1).
QDEV void iq6_k_block(const float * GGML_RESTRICT xbl, const float * GGML_RESTRICT imatrix,
                      block_iq6_k * GGML_RESTRICT y, float row_aux) {
    (void) row_aux;
    float values[128];
    for (int i = 0; i < 64; ++i) {
        values[i] = iqk_iq6nl_values[i];
        values[i+64] = values[i] + 1;
    }
    iqk_k56_block<float, iqk_best_index_iq6nl, block_iq6_k, true>(xbl, imatrix, y, values, 64);
}
QTOOL_ROW_KERNEL(iq6_k, QK_K, block_iq6_k, iq6_k_block)

// ---- IQ3_K ------------------------------------------------------------------------------------

QCONST int8_t iqk_iq3nl_values[16] = {
    -63, -40, -23, -10, 1, 13, 28,  47,
    -59, -36, -19,  -6, 5, 17, 32,  51,
};
QCONST int8_t iqk_iq3nl_index[111] = {
  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  8,  8,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  9,
  9,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2, 10, 10,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3, 11, 11,  4,  4,  4,  4,
  4,  4,  4,  4,  4,  4, 12,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5, 13, 13,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,
  6,  6,  6,  6, 14, 14,  7,  7,  7,  7,  7,  7,  7,  7, 7
};
QDEV int iqk_best_index_iq3nl(const int8_t * values, float x) {
    int ix = f2i(x) - values[0];
    if (ix < 0 || ix >= 111) return ix < 0 ? 0 : 7;
    ix = iqk_iq3nl_index[ix];
    return ix < 8 ? ix : x - values[ix-8] < values[ix-7] - x ? ix-8 : ix-7;
}

typedef struct {
    ggml_half d;
    uint16_t extra;
    uint16_t scales_h;
    uint8_t scales_l[QK_K/32];
    uint8_t qs[QK_K/4];
    uint8_t qh[QK_K/8];
} block_iq3_k;

// quantize_row_iq3_k_impl, one super-block. C's 128-step descent after each block's refit only
// updates best_d / best / L, none of which is read afterwards: it is left out (no effect on bytes).
QDEV void iq3_k_block(const float * GGML_RESTRICT xbl, const float * GGML_RESTRICT imatrix,
                      block_iq3_k * GGML_RESTRICT y, float row_aux) {
    (void) row_aux;
    const int ntry = 3;
    const int8_t * iq3nl_values = iqk_iq3nl_values;
    float qwbuf[QK_K];
    const float * quant_weights = 0;
    if (imatrix) {
        iqk_row_weights(xbl, imatrix, qwbuf, QK_K, 16);
        quant_weights = qwbuf;
    }

    float scales[QK_K/16];
    float weight[16];

    const int8_t * shifted_values = iq3nl_values + 8;

    memset(y, 0, sizeof(block_iq3_k));
    y->d = GGML_FP32_TO_FP16(0.f);

    float sumx2 = 0;
    for (int j = 0; j < QK_K; ++j) sumx2 += xbl[j]*xbl[j];
    const float sigma2 = 1.5f*sumx2/QK_K;

    uint16_t extra = 0;

    float max_abs_scale = 0;

    for (int ib = 0; ib < QK_K/16; ++ib) {
        const float * xb = xbl + 16*ib;
        iqk_block_weights(xb, quant_weights ? quant_weights + ib*16 : 0, weight, sigma2, 16, true);
        float max;
        float amax = iqk_block_amax(xb, 16, &max);
        if (amax < 1e-16f) {
            scales[ib] = 0;
            continue;
        }
        bool is_shifted;
        float d = iqk_shift_search<int8_t, iqk_best_index_iq3nl>(iq3nl_values, shifted_values, xb, weight, 16, ntry, 2, max, true, &is_shifted);
        if (!d) {
            scales[ib] = 0; continue;
        }

        d = iqk_refit<int8_t, iqk_best_index_iq3nl>(is_shifted ? shifted_values : iq3nl_values, xb, weight, 16, d);

        scales[ib] = d;

        if (is_shifted) extra |= (1 << ib);

        float abs_scale = fabsf(scales[ib]);
        max_abs_scale = MAX(max_abs_scale, abs_scale);
    }

    if (!max_abs_scale) return;

    float d = max_abs_scale/31;
    y->extra = extra;
    float id = 1/d;

    float sumqx = 0, sumq2 = 0;
    for (int ib = 0; ib < QK_K/16; ++ib) {
        int ls = nearest_int(0.5f*(id*fabsf(scales[ib])-1));
        ls = MAX(0, MIN(15, ls));
        y->scales_l[ib/2] |= (ls << 4*(ib%2));
        if (scales[ib] < 0) y->scales_h |= (1 << ib);
        ls = (2*ls + 1) * (scales[ib] < 0 ? -1 : 1);
        float dl = d * ls;
        if (dl) {
            const int8_t * block_values = y->extra & (1 << ib) ? shifted_values : iq3nl_values;
            const float * xb = xbl + 16*ib;
            iqk_block_weights(xb, quant_weights ? quant_weights + ib*16 : 0, weight, sigma2, 16, true);
            float idl = 1/dl;
            int ib32 = ib/2;
            int offset = 16*(ib%2);
            uint8_t * qs = y->qs + 32*(ib32/4) + offset;
            uint8_t * qh = y->qh + 32*(ib32/8) + offset;
            for (int j = 0; j < 16; ++j) {
                const float al = idl*xb[j];
                int ibest = iqk_best_index_iq3nl(block_values, al);
                qs[j] |= ((ibest &  3) << 2*(ib32%4));
                qh[j] |= ((ibest >> 2) << (ib32%8));
                float w = weight[j];
                float q = block_values[ibest]*ls;
                sumqx += w*q*xb[j];
                sumq2 += w*q*q;
            }
        }
    }
    y->d = GGML_FP32_TO_FP16(1.01f*(sumq2 > 0 ? sumqx/sumq2 : d));
}
QTOOL_ROW_KERNEL(iq3_k, QK_K, block_iq3_k, iq3_k_block)

// ---- row-meta types (IQ4_KS, IQ5_KS, IQ3_KS): one thread per row --------------------------------
// C quantizes a row in two passes: pass 1 chooses each block's scale (all_scales, one float per
// block of 32) and its shift bit, then a row-level max gives the row scale, and pass 2 writes the
// levels. The kernels keep C's loops; all_scales of a super-block are parked in the qs bytes of
// its own output block between the passes (qs is only written in pass 2, after they are read
// back; they are cleared where C returns early). QHelper's per-block guard (block size 32)
// depends only on the block, so it is applied per block as the passes reach it.

// A block read back 16 bits at a time (store_block's mirror).
QDEV void iqk_load_block(void * dst, const uint8_t * GGML_RESTRICT src, int nbytes) {
    const uint16_t * s = (const uint16_t *) src;
    uint16_t * d = (uint16_t *) dst;
    for (int i = 0; i < nbytes / 2; ++i) d[i] = s[i];
}

// std::max(a, b) for floats: (a < b) ? b : a (a NaN b leaves a).
QDEV float iqk_std_max(float a, float b) { return (a < b) ? b : a; }

// The weights of block ib (32 values) of a row: QHelper::row_weights (block size 32), then C's
// qw[j] * sqrtf(sigma2 + x*x), or x*x without an imatrix (0.25f*sigma2 + x*x where with_sigma2).
QDEV void iqk_ks_weights(const float * GGML_RESTRICT xb, const float * GGML_RESTRICT imatrix_b,
                         float * GGML_RESTRICT weight, float sigma2, int block_size, bool with_sigma2 = false) {
    float qw[32];
    if (imatrix_b) iqk_row_weights(xb, imatrix_b, qw, block_size, block_size);
    iqk_block_weights(xb, imatrix_b ? qw : 0, weight, sigma2, block_size, with_sigma2);
}

#define IQK_ROW_META_KERNEL(NAME, BLOCK_T, META, ROWFN)                                            \
    QKERNEL void quantize_##NAME(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw,    \
                                 uint8_t * GGML_RESTRICT y, const float * GGML_RESTRICT aux,       \
                                 int64_t nrows, int64_t n_per_row) {                               \
        (void) aux;                                                                                \
        QFOR(row, nrows) {                                                                         \
            const int64_t row_bytes = (META) + (n_per_row / QK_K) * (int64_t) sizeof(BLOCK_T);     \
            ROWFN(x + row * n_per_row, qw, y + row * row_bytes, (int) n_per_row);                  \
        }                                                                                          \
    }

// ---- IQ4_KS -----------------------------------------------------------------------------------

typedef struct {
    uint8_t  scales[QK_K/32];
    uint8_t  qs[QK_K/2];
} block_iq4_ks;

// IQ4_KS and IQ5_KS (quantize_row_iq4_k_impl_bs128 / quantize_row_iq5_ks_impl): the same two
// passes, C's code line for line; only the table (nvalues levels, then the shifted ones), ntry, the
// best-index function and pass 2's packing (IQ5: 4 low bits in qs, the 5th in qh) differ.
template <typename BLOCK_T, int (*BEST)(const int8_t *, float), bool IQ5>
QDEV void iqk_ks45_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                       uint8_t * GGML_RESTRICT cy, int n_per_row, const int8_t * values, int nvalues,
                       const int ntry) {
    const int super_block_size = QK_K, block_size = 32;
    const int8_t * shifted_values = values + nvalues;
    uint8_t * yb = cy + 4;
    const int nsb = n_per_row/super_block_size;
    float weight[32];

    float amax_scale = 0;

    for (int ibl = 0; ibl < nsb; ++ibl) {
        BLOCK_T blk;
        memset(&blk, 0, sizeof(BLOCK_T));
        const float * xbl = x + ibl*super_block_size;
        float scales[QK_K/32];
        float sigma2 = 0;
        for (int j = 0; j < super_block_size; ++j) sigma2 += xbl[j]*xbl[j];
        sigma2 *= 2.f/super_block_size;
        for (int ib = 0; ib < super_block_size/block_size; ++ib) {
            const float * xb = xbl + ib*block_size;
            iqk_ks_weights(xb, quant_weights ? quant_weights + ibl*super_block_size + ib*block_size : 0,
                           weight, sigma2, block_size);
            float max;
            float amax = iqk_block_amax(xb, block_size, &max);
            if (amax < 1e-16f) {
                scales[ib] = 0;
                continue;
            }
            bool is_shifted;
            float d = iqk_shift_search<int8_t, BEST>(values, shifted_values, xb, weight, block_size, ntry, 1, max, false, &is_shifted);
            if (is_shifted) blk.scales[ib] = 0x01;
            scales[ib] = d;
            amax_scale = iqk_std_max(amax_scale, fabsf(d));
        }
        memcpy(blk.qs, scales, sizeof(scales));  // all_scales, parked until pass 2
        store_block(yb + ibl*(int64_t)sizeof(BLOCK_T), &blk, (int) sizeof(BLOCK_T));
    }
    float d = amax_scale/127;
    uint16_t meta[2];
    memcpy(meta, &d, 4);
    if (!d) {
        for (int ibl = 0; ibl < nsb; ++ibl) {
            BLOCK_T blk;
            iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(BLOCK_T), (int) sizeof(BLOCK_T));
            memset(blk.qs, 0, sizeof(blk.qs));
            store_block(yb + ibl*(int64_t)sizeof(BLOCK_T), &blk, (int) sizeof(BLOCK_T));
        }
        store_block(cy, meta, 4);
        return;
    }
    float id = d ? 1/d : 0.f;
    float sumqx = 0, sumq2 = 0;
    for (int ibl = 0; ibl < nsb; ++ibl) {
        BLOCK_T blk;
        iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(BLOCK_T), (int) sizeof(BLOCK_T));
        float scales[QK_K/32];
        memcpy(scales, blk.qs, sizeof(scales));
        memset(blk.qs, 0, sizeof(blk.qs));
        const float * xbl = x + ibl*super_block_size;
        float sigma2 = 0;
        for (int j = 0; j < super_block_size; ++j) sigma2 += xbl[j]*xbl[j];
        sigma2 *= 2.f/super_block_size;
        for (int ib = 0; ib < super_block_size/block_size; ++ib) {
            const int8_t * block_values = blk.scales[ib] & 0x01 ? shifted_values : values;
            int l = nearest_int(0.5f*(id*scales[ib]+127.f));
            l = MAX(0, MIN(127, l)) << 1;
            blk.scales[ib] |= l;
            l -= 127;
            float dl = d * l;
            float idl = dl ? 1/dl : 0.f;
            const float * xb = xbl + ib*block_size;
            iqk_ks_weights(xb, quant_weights ? quant_weights + ibl*super_block_size + ib*block_size : 0,
                           weight, sigma2, block_size);
            if constexpr (IQ5) {
                for (int j = 0; j < block_size; ++j) {
                    uint8_t idx = BEST(block_values, idl*xb[j]);
                    blk.qs[block_size*(ib/2) + j] |= ((idx & 0xf) << 4*(ib%2));
                    blk.qh[j] |= ((idx >> 4) << ib);
                    float w = weight[j];
                    float q = block_values[idx]*l;
                    sumqx += w*q*xb[j];
                    sumq2 += w*q*q;
                }
            } else {
                uint8_t * qs = blk.qs + ib*(block_size/2);
                for (int j = 0; j < block_size/2; ++j) {
                    uint8_t i1 = BEST(block_values, idl*xb[j]);
                    uint8_t i2 = BEST(block_values, idl*xb[j+block_size/2]);
                    qs[j] = i1 | (i2 << 4);
                    float w1 = weight[j];
                    float w2 = weight[j+block_size/2];
                    float q1 = block_values[i1]*l;
                    float q2 = block_values[i2]*l;
                    sumqx += w1*q1*xb[j] + w2*q2*xb[j+block_size/2];
                    sumq2 += w1*q1*q1 + w2*q2*q2;
                }
            }
        }
        store_block(yb + ibl*(int64_t)sizeof(BLOCK_T), &blk, (int) sizeof(BLOCK_T));
    }
    if (sumq2 > 0) d = sumqx/sumq2;
    memcpy(meta, &d, 4);
    store_block(cy, meta, 4);
}

// quantize_iq4_ks -> quantize_row_iq4_k_impl_bs128 (super_block_size 256, block_size 32, ntry 7,
// iq4k_values); cy: the row's bytes (float d, then the blocks).
QDEV void iq4_ks_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     uint8_t * GGML_RESTRICT cy, int n_per_row) {
    iqk_ks45_row<block_iq4_ks, iqk_best_index_iq4nl, false>(x, quant_weights, cy, n_per_row, iqk_iq4k_values, 16, 7);
}
IQK_ROW_META_KERNEL(iq4_ks, block_iq4_ks, 4, iq4_ks_row)

// ---- IQ5_KS -----------------------------------------------------------------------------------

typedef struct {
    uint8_t  scales[QK_K/32];
    uint8_t  qs[QK_K/2];
    uint8_t  qh[QK_K/8];
} block_iq5_ks;

// quantize_iq5_ks -> quantize_row_iq5_ks_impl (super_block_size 256, block_size 32, ntry 5).
QDEV void iq5_ks_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     uint8_t * GGML_RESTRICT cy, int n_per_row) {
    iqk_ks45_row<block_iq5_ks, iqk_best_index_iq5nl, true>(x, quant_weights, cy, n_per_row, iqk_iq5nl_values, 32, 5);
}
IQK_ROW_META_KERNEL(iq5_ks, block_iq5_ks, 4, iq5_ks_row)

// ---- IQ3_KS -----------------------------------------------------------------------------------

typedef struct {
    uint16_t extra;
    uint8_t scales[QK_K/64];
    uint8_t qs[QK_K/4];
    uint8_t qh[QK_K/8];
} block_iq3_ks;

// quantize_iq3_ks -> quantize_row_iq3_ks_impl (super_block_size 256, block_size 32, ntry 5,
// iq3nl_values); cy: the row's bytes (fp16 d, then the blocks).
QDEV void iq3_ks_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     uint8_t * GGML_RESTRICT cy, int n_per_row) {
    const int super_block_size = QK_K, block_size = 32, ntry = 5;
    const int8_t * values = iqk_iq3nl_values;
    const int8_t * shifted_values = values + 8;
    uint8_t * yb = cy + 2;
    const int nsb = n_per_row/super_block_size;
    float weight[32];

    float amax_scale = 0;
    float max_scale = 0;

    for (int ibl = 0; ibl < nsb; ++ibl) {
        block_iq3_ks blk;
        memset(&blk, 0, sizeof(block_iq3_ks));
        const float * xbl = x + ibl*super_block_size;
        float scales[QK_K/32];
        float sigma2 = 0;
        for (int j = 0; j < super_block_size; ++j) sigma2 += xbl[j]*xbl[j];
        sigma2 *= 2.f/super_block_size;
        for (int ib = 0; ib < super_block_size/block_size; ++ib) {
            const float * xb = xbl + ib*block_size;
            iqk_ks_weights(xb, quant_weights ? quant_weights + ibl*super_block_size + ib*block_size : 0,
                           weight, sigma2, block_size);
            float max;
            float amax = iqk_block_amax(xb, block_size, &max);
            if (amax < 1e-16f) {
                scales[ib] = 0;
                continue;
            }
            bool is_shifted;
            float d = iqk_shift_search<int8_t, iqk_best_index_iq3nl>(values, shifted_values, xb, weight, block_size, ntry, 1, max, true, &is_shifted);
            if (is_shifted) blk.extra |= (1 << (8 + ib));
            scales[ib] = d;
            float ascale = fabsf(d);
            if (ascale > amax_scale) {
                amax_scale = ascale; max_scale = d;
            }
        }
        memcpy(blk.qs, scales, sizeof(scales));  // all_scales, parked until pass 2
        store_block(yb + ibl*(int64_t)sizeof(block_iq3_ks), &blk, (int) sizeof(block_iq3_ks));
    }
    float d = -max_scale/16;
    ggml_half dh = GGML_FP32_TO_FP16(d);
    if (!d) {
        for (int ibl = 0; ibl < nsb; ++ibl) {
            block_iq3_ks blk;
            iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(block_iq3_ks), (int) sizeof(block_iq3_ks));
            memset(blk.qs, 0, sizeof(blk.qs));
            store_block(yb + ibl*(int64_t)sizeof(block_iq3_ks), &blk, (int) sizeof(block_iq3_ks));
        }
        store_block(cy, &dh, 2);
        return;
    }
    float id = d ? 1/d : 0.f;
    float sumqx = 0, sumq2 = 0;
    for (int ibl = 0; ibl < nsb; ++ibl) {
        block_iq3_ks blk;
        iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(block_iq3_ks), (int) sizeof(block_iq3_ks));
        float scales[QK_K/32];
        memcpy(scales, blk.qs, sizeof(scales));
        memset(blk.qs, 0, sizeof(blk.qs));
        const float * xbl = x + ibl*super_block_size;
        float sigma2 = 0;
        for (int j = 0; j < super_block_size; ++j) sigma2 += xbl[j]*xbl[j];
        sigma2 *= 2.f/super_block_size;
        for (int ib = 0; ib < super_block_size/block_size; ++ib) {
            const int8_t * block_values = (blk.extra >> (8 + ib)) & 0x01 ? shifted_values : values;
            int l = nearest_int(id*scales[ib]);
            l = MAX(-16, MIN(15, l));
            uint8_t ul = l + 16;
            blk.scales[ib%4] |= (ul & 0xf) << 4*(ib/4);
            blk.extra |= (ul >> 4) << ib;
            float dl = d * l;
            float idl = dl ? 1/dl : 0.f;
            const float * xb = xbl + ib*block_size;
            iqk_ks_weights(xb, quant_weights ? quant_weights + ibl*super_block_size + ib*block_size : 0,
                           weight, sigma2, block_size);
            uint8_t * qs = blk.qs + (ib/4)*block_size;
            uint8_t * qh = blk.qh + (ib/8)*block_size;
            for (int j = 0; j < block_size; ++j) {
                uint8_t i = iqk_best_index_iq3nl(block_values, idl*xb[j]);
                qs[j] |= ((i &  3) << 2*(ib%4));
                qh[j] |= ((i >> 2) << (ib%8));
                float w = weight[j];
                float q = block_values[i]*l;
                sumqx += w*q*xb[j];
                sumq2 += w*q*q;
            }
        }
        store_block(yb + ibl*(int64_t)sizeof(block_iq3_ks), &blk, (int) sizeof(block_iq3_ks));
    }
    if (sumq2 > 0) dh = GGML_FP32_TO_FP16(sumqx/sumq2);
    store_block(cy, &dh, 2);
}
IQK_ROW_META_KERNEL(iq3_ks, block_iq3_ks, 2, iq3_ks_row)

// ---- IQ2_K ------------------------------------------------------------------------------------

QCONST int8_t iqk_iq2nl_values[8] = { -31, -13, 1, 17,   -26, -8, 6, 22 };

QDEV int iqk_best_index_iq2nl(const int8_t * values, float x) {
    int idx = x < values[1] ? 0 : x > values[2] ? 2 : 1;
    return x - values[idx] < values[idx+1] - x ? idx : idx + 1;
}

// ik's own make_qx_quants(n, nmax, x, L, qw) (iqk_quantize.cpp, anonymous namespace).
QDEV float iqk_make_qx_quants(int n, int nmax, const float * GGML_RESTRICT x, int8_t * GGML_RESTRICT L,
                              const float * GGML_RESTRICT qw) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (!amax) { // all zero
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = MAX(-nmax, MIN(nmax-1, l));
        L[i] = l + nmax;
        sumlx += qw[i]*x[i]*l;
        suml2 += qw[i]*l*l;
    }
    float scale = suml2 ? sumlx/suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f*is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            l = MAX(-nmax, MIN(nmax-1, l));
            sumlx += qw[i]*x[i]*l;
            suml2 += qw[i]*l*l;
        }
        if (suml2 > 0 && sumlx*sumlx > best*suml2) {
            for (int i = 0; i < n; ++i) {
                int l = nearest_int(iscale * x[i]);
                L[i] = nmax + MAX(-nmax, MIN(nmax-1, l));
            }
            scale = sumlx/suml2; best = scale*sumlx;
        }
    }
    return scale;
}

// std::sort of std::pair<float,int> (x[j], j) with distinct j: the order (x, then j) is unique,
// so an insertion sort with pair's operator< gives std::sort's result.
QDEV bool iqk_pair_less(float a, int ia, float b, int ib) {
    return a < b || (!(b < a) && ia < ib);
}
QDEV void iqk_sort_pairs(float * GGML_RESTRICT px, int * GGML_RESTRICT pj, int n) {
    for (int i = 1; i < n; ++i) {
        float vx = px[i];
        int vj = pj[i];
        int k = i;
        while (k > 0 && iqk_pair_less(vx, vj, px[k-1], pj[k-1])) {
            px[k] = px[k-1]; pj[k] = pj[k-1]; --k;
        }
        px[k] = vx; pj[k] = vj;
    }
}

typedef struct {
    ggml_half d;
    uint16_t extra;
    uint8_t  scales[QK_K/32];
    uint8_t  qs[QK_K/4];
} block_iq2_k;

// IQ2_K's and IQ2_KS's exhaustive block search (C's loops): every split i1 <= i2 <= i3 of the block's
// values sorted ascending (sumx, sumw: weighted prefix sums) among the 4 levels of val and of sval
// (the shifted table), ascending and descending; IQ2_KS bounds i1 < max_i1 and i3 >= min_i3
// (IQ2_K: kBlockSize, 0). V: int8_t (IQ2_K's table) or float (IQ2_KS's copies), as in C.
template <typename V>
QDEV float iqk_iq2_split_search(const float * GGML_RESTRICT sumx, const float * GGML_RESTRICT sumw, int kBlockSize,
                                const V * val, const V * sval, int max_i1, int min_i3, bool * is_shifted_out) {
    float best = 0, d = 0;
    bool is_shifted = false;
    float sumqx, sumq2;
    for (int i1 = 0; i1 < max_i1; ++i1) {
        for (int i2 = i1; i2 < kBlockSize; ++i2) {
            for (int i3 = MAX(i2, min_i3); i3 < kBlockSize; ++i3) {
                sumqx = (sumx[i1] - sumx[ 0])*val[0] + (sumx[i2] - sumx[i1])*val[1]
                      + (sumx[i3] - sumx[i2])*val[2] + (sumx[kBlockSize] - sumx[i3])*val[3];
                sumq2 = (sumw[i1] - sumw[ 0])*val[0]*val[0] + (sumw[i2] - sumw[i1])*val[1]*val[1]
                      + (sumw[i3] - sumw[i2])*val[2]*val[2] + (sumw[kBlockSize] - sumw[i3])*val[3]*val[3];
                if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {
                    d = sumqx/sumq2; best = d*sumqx; is_shifted = false;
                }
                sumqx = (sumx[i1] - sumx[ 0])*sval[0] + (sumx[i2] - sumx[i1])*sval[1]
                      + (sumx[i3] - sumx[i2])*sval[2] + (sumx[kBlockSize] - sumx[i3])*sval[3];
                sumq2 = (sumw[i1] - sumw[ 0])*sval[0]*sval[0] + (sumw[i2] - sumw[i1])*sval[1]*sval[1]
                      + (sumw[i3] - sumw[i2])*sval[2]*sval[2] + (sumw[kBlockSize] - sumw[i3])*sval[3]*sval[3];
                if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {
                    d = sumqx/sumq2; best = d*sumqx; is_shifted = true;
                }
                sumqx = (sumx[i1] - sumx[ 0])*val[3] + (sumx[i2] - sumx[i1])*val[2]
                      + (sumx[i3] - sumx[i2])*val[1] + (sumx[kBlockSize] - sumx[i3])*val[0];
                sumq2 = (sumw[i1] - sumw[ 0])*val[3]*val[3] + (sumw[i2] - sumw[i1])*val[2]*val[2]
                      + (sumw[i3] - sumw[i2])*val[1]*val[1] + (sumw[kBlockSize] - sumw[i3])*val[0]*val[0];
                if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {
                    d = sumqx/sumq2; best = d*sumqx; is_shifted = false;
                }
                sumqx = (sumx[i1] - sumx[ 0])*sval[3] + (sumx[i2] - sumx[i1])*sval[2]
                      + (sumx[i3] - sumx[i2])*sval[1] + (sumx[kBlockSize] - sumx[i3])*sval[0];
                sumq2 = (sumw[i1] - sumw[ 0])*sval[3]*sval[3] + (sumw[i2] - sumw[i1])*sval[2]*sval[2]
                      + (sumw[i3] - sumw[i2])*sval[1]*sval[1] + (sumw[kBlockSize] - sumw[i3])*sval[0]*sval[0];
                if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {
                    d = sumqx/sumq2; best = d*sumqx; is_shifted = true;
                }
            }
        }
    }
    *is_shifted_out = is_shifted;
    return d;
}

// quantize_row_iq2_k_impl, one super-block.
QDEV void iq2_k_block(const float * GGML_RESTRICT xbl, const float * GGML_RESTRICT imatrix,
                      block_iq2_k * GGML_RESTRICT y, float row_aux) {
    (void) row_aux;
    const int kBlockSize = 16;
    const int8_t * iq2nl_values = iqk_iq2nl_values;
    float qwbuf[QK_K];
    const float * quant_weights = 0;
    if (imatrix) {
        iqk_row_weights(xbl, imatrix, qwbuf, QK_K, 16);
        quant_weights = qwbuf;
    }

    float scales[QK_K/kBlockSize];
    float weight[kBlockSize];
    float sumx[kBlockSize+1], sumw[kBlockSize+1];
    float sw[QK_K/kBlockSize];
    int8_t Ls[QK_K/kBlockSize];
    float pairs_x[kBlockSize];
    int pairs_j[kBlockSize];

    const int8_t * shifted_values = iq2nl_values + 4;

    memset(y, 0, sizeof(block_iq2_k));
    y->d = GGML_FP32_TO_FP16(0.f);

    float sumx2 = 0;
    for (int j = 0; j < QK_K; ++j) sumx2 += xbl[j]*xbl[j];
    const float sigma2 = 1.5f*sumx2/QK_K;

    uint16_t extra = 0;

    float max_abs_scale = 0;

    for (int ib = 0; ib < QK_K/kBlockSize; ++ib) {
        const float * xb = xbl + kBlockSize*ib;
        iqk_block_weights(xb, quant_weights ? quant_weights + ib*kBlockSize : 0, weight, sigma2, kBlockSize, true);
        sw[ib] = 0;
        float amax = 0;
        for (int j = 0; j < kBlockSize; ++j) {
            sw[ib] += weight[j];
            pairs_x[j] = xb[j]; pairs_j[j] = j;
            float ax = fabsf(xb[j]);
            amax = iqk_std_max(amax, ax);
        }
        if (amax < 1e-16f) {
            scales[ib] = 0;
            continue;
        }
        iqk_sort_pairs(pairs_x, pairs_j, kBlockSize);
        sumx[0] = sumw[0] = 0;
        for (int j = 0; j < kBlockSize; ++j) {
            int jj = pairs_j[j];
            sumw[j+1] = sumw[j] + weight[jj];
            sumx[j+1] = sumx[j] + weight[jj]*xb[jj];
        }
        bool is_shifted;
        float d = iqk_iq2_split_search<int8_t>(sumx, sumw, kBlockSize, iq2nl_values, shifted_values, kBlockSize, 0, &is_shifted);
        scales[ib] = d;
        if (is_shifted) extra |= (1 << ib);

        float abs_scale = fabsf(scales[ib]);
        max_abs_scale = iqk_std_max(max_abs_scale, abs_scale);
    }

    if (!max_abs_scale) return;
    float d = iqk_make_qx_quants(QK_K/kBlockSize, 8, scales, Ls, sw);
    if (!d) return;

    y->extra = extra;
    float id = 1/d;

    float sumqx = 0, sumq2 = 0;
    for (int ib = 0; ib < QK_K/kBlockSize; ++ib) {
        int ls = nearest_int(id*scales[ib]);
        ls = MAX(-8, MIN(7, ls));
        y->scales[ib/2] |= ((ls + 8) << 4*(ib%2));
        float dl = d * ls;
        if (dl) {
            const int8_t * block_values = y->extra & (1 << ib) ? shifted_values : iq2nl_values;
            const float * xb = xbl + kBlockSize*ib;
            iqk_block_weights(xb, quant_weights ? quant_weights + ib*kBlockSize : 0, weight, sigma2, kBlockSize, true);
            float idl = 1/dl;
            int ib32 = ib/2;
            int offset = 16*(ib%2);
            uint8_t * qs = y->qs + 32*(ib32/4) + offset;
            for (int j = 0; j < 16; ++j) {
                const float al = idl*xb[j];
                int ibest = iqk_best_index_iq2nl(block_values, al);
                qs[j] |= (ibest << 2*(ib32%4));
                float w = weight[j];
                float q = block_values[ibest]*ls;
                sumqx += w*q*xb[j];
                sumq2 += w*q*q;
            }
        }
    }
    y->d = GGML_FP32_TO_FP16(1.030f*(sumq2 > 0 ? sumqx/sumq2 : d));
}
QTOOL_ROW_KERNEL(iq2_k, QK_K, block_iq2_k, iq2_k_block)

// ---- IQ2_KS -----------------------------------------------------------------------------------

typedef struct {
    uint16_t extra;
    uint8_t  scales[QK_K/64];
    uint8_t  qs[QK_K/4];
} block_iq2_ks;

// Between the passes a super-block's 8 scales (qs[0..31]) and 8 weight sums sw (qs[32..63]) are
// parked in its own output block.
QDEV void iq2_ks_parked(const uint8_t * GGML_RESTRICT yb, int ibl, float * GGML_RESTRICT scales,
                        float * GGML_RESTRICT sw) {
    block_iq2_ks blk;
    iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(block_iq2_ks), (int) sizeof(block_iq2_ks));
    memcpy(scales, blk.qs, 32);
    memcpy(sw, blk.qs + 32, 32);
}

// ik's make_qx_quants(nblock*8, nmax, all_scales, all_Ls, all_sw) over the parked arrays. The
// levels L are not stored: every time C (re)writes all of L it uses one iscale, so L is rebuilt
// in pass 2 from the last such iscale (*iscale_L).
QDEV float iq2_ks_make_qx_quants(const uint8_t * GGML_RESTRICT yb, int nblock, int nmax, float * iscale_L) {
    float xs[8], qws[8];
    float max = 0;
    float amax = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        iq2_ks_parked(yb, ibl, xs, qws);
        for (int i = 0; i < 8; ++i) {
            float ax = fabsf(xs[i]);
            if (ax > amax) { amax = ax; max = xs[i]; }
        }
    }
    *iscale_L = 0;
    if (!amax) { // all zero
        return 0.f;
    }
    float iscale = -nmax / max;
    *iscale_L = iscale;
    float sumlx = 0;
    float suml2 = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        iq2_ks_parked(yb, ibl, xs, qws);
        for (int i = 0; i < 8; ++i) {
            int l = nearest_int(iscale * xs[i]);
            l = MAX(-nmax, MIN(nmax-1, l));
            sumlx += qws[i]*xs[i]*l;
            suml2 += qws[i]*l*l;
        }
    }
    float scale = suml2 ? sumlx/suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f*is) / max;
        sumlx = suml2 = 0;
        for (int ibl = 0; ibl < nblock; ++ibl) {
            iq2_ks_parked(yb, ibl, xs, qws);
            for (int i = 0; i < 8; ++i) {
                int l = nearest_int(iscale * xs[i]);
                l = MAX(-nmax, MIN(nmax-1, l));
                sumlx += qws[i]*xs[i]*l;
                suml2 += qws[i]*l*l;
            }
        }
        if (suml2 > 0 && sumlx*sumlx > best*suml2) {
            *iscale_L = iscale;
            scale = sumlx/suml2; best = scale*sumlx;
        }
    }
    return scale;
}

// quantize_iq2_ks -> quantize_row_iq2_ks_impl (user_data NULL: not the AVX2 _fast_impl).
QDEV void iq2_ks_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     uint8_t * GGML_RESTRICT cy, int n_per_row) {
    const int kBlockSize = 32;
    const int kMax_i1 = 3*kBlockSize/4;
    const int kMin_i3 = kBlockSize/4;
    uint8_t * yb = cy + 2;

    float weight[kBlockSize];
    float sumx[kBlockSize+1], sumw[kBlockSize+1];
    float pairs_x[kBlockSize];
    int pairs_j[kBlockSize];

    float val [4] = {float(iqk_iq2nl_values[0]), float(iqk_iq2nl_values[1]), float(iqk_iq2nl_values[2]), float(iqk_iq2nl_values[3])};
    float sval[4] = {float(iqk_iq2nl_values[4]), float(iqk_iq2nl_values[5]), float(iqk_iq2nl_values[6]), float(iqk_iq2nl_values[7])};

    const int8_t * iq2nl_values = iqk_iq2nl_values;
    const int8_t * shifted_values = iq2nl_values + 4;

    const int nblock = n_per_row/QK_K;

    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_iq2_ks blk;
        memset(&blk, 0, sizeof(block_iq2_ks));

        float scales[QK_K/32];
        float sw[QK_K/32];

        const float * xbl = x + ibl*QK_K;
        float sumx2 = 0;
        for (int j = 0; j < QK_K; ++j) sumx2 += xbl[j]*xbl[j];
        const float sigma2 = 1.5f*sumx2/QK_K;

        uint16_t extra = 0;

        for (int ib = 0; ib < QK_K/kBlockSize; ++ib) {
            const float * xb = xbl + kBlockSize*ib;
            iqk_ks_weights(xb, quant_weights ? quant_weights + ibl*QK_K + ib*kBlockSize : 0, weight, sigma2, kBlockSize, true);
            sw[ib] = 0;
            float amax = 0;
            for (int j = 0; j < kBlockSize; ++j) {
                sw[ib] += weight[j];
                pairs_x[j] = xb[j]; pairs_j[j] = j;
                float ax = fabsf(xb[j]);
                amax = iqk_std_max(amax, ax);
            }
            if (amax < 1e-16f) {
                scales[ib] = 0;
                continue;
            }
            iqk_sort_pairs(pairs_x, pairs_j, kBlockSize);
            sumx[0] = sumw[0] = 0;
            for (int j = 0; j < kBlockSize; ++j) {
                int jj = pairs_j[j];
                sumw[j+1] = sumw[j] + weight[jj];
                sumx[j+1] = sumx[j] + weight[jj]*xb[jj];
            }
            bool is_shifted;
            float d = iqk_iq2_split_search<float>(sumx, sumw, kBlockSize, val, sval, kMax_i1, kMin_i3, &is_shifted);
            scales[ib] = d;
            if (is_shifted) extra |= (1 << ib);
        }
        blk.extra = extra;
        memcpy(blk.qs, scales, 32);  // all_scales and all_sw, parked until pass 2
        memcpy(blk.qs + 32, sw, 32);
        store_block(yb + ibl*(int64_t)sizeof(block_iq2_ks), &blk, (int) sizeof(block_iq2_ks));
    }

    const int nmax = 16;
    float iscale_L;
    float d = iq2_ks_make_qx_quants(yb, nblock, nmax, &iscale_L);

    if (!d) {
        for (int ibl = 0; ibl < nblock; ++ibl) {
            block_iq2_ks blk;
            iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(block_iq2_ks), (int) sizeof(block_iq2_ks));
            memset(blk.qs, 0, sizeof(blk.qs));
            store_block(yb + ibl*(int64_t)sizeof(block_iq2_ks), &blk, (int) sizeof(block_iq2_ks));
        }
        ggml_half dh = GGML_FP32_TO_FP16(0.f);
        store_block(cy, &dh, 2);
        return;
    }

    float sumqx = 0, sumq2 = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_iq2_ks blk;
        iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(block_iq2_ks), (int) sizeof(block_iq2_ks));
        float scales[QK_K/32];
        memcpy(scales, blk.qs, 32);
        memset(blk.qs, 0, sizeof(blk.qs));
        int8_t Ls[QK_K/32];
        for (int i = 0; i < QK_K/32; ++i) {
            int l = nearest_int(iscale_L * scales[i]);
            Ls[i] = nmax + MAX(-nmax, MIN(nmax-1, l));
        }
        const float * xbl = x + ibl*QK_K;
        float sumx2 = 0;
        for (int j = 0; j < QK_K; ++j) sumx2 += xbl[j]*xbl[j];
        const float sigma2 = 1.5f*sumx2/QK_K;
        for (int ib = 0; ib < QK_K/kBlockSize; ++ib) {
            int ls = Ls[ib];
            blk.scales[ib/2] |= ((ls & 0xf) << 4*(ib%2));
            blk.extra |= ((ls >> 4) << (8 + ib));
            ls -= 16;
            float dl = d * ls;
            if (dl) {
                const int8_t * block_values = blk.extra & (1 << ib) ? shifted_values : iq2nl_values;
                const float * xb = xbl + kBlockSize*ib;
                iqk_ks_weights(xb, quant_weights ? quant_weights + ibl*QK_K + ib*kBlockSize : 0, weight, sigma2, kBlockSize, true);
                float idl = 1/dl;
                uint8_t * qs = blk.qs + 32*(ib/4);
                for (int j = 0; j < 32; ++j) {
                    const float al = idl*xb[j];
                    int ibest = iqk_best_index_iq2nl(block_values, al);
                    qs[j] |= (ibest << 2*(ib%4));
                    float w = weight[j];
                    float q = block_values[ibest]*ls;
                    sumqx += w*q*xb[j];
                    sumq2 += w*q*q;
                }
            }
        }
        store_block(yb + ibl*(int64_t)sizeof(block_iq2_ks), &blk, (int) sizeof(block_iq2_ks));
    }
    ggml_half dh = GGML_FP32_TO_FP16(1.030f*(sumq2 > 0 ? sumqx/sumq2 : d));
    store_block(cy, &dh, 2);
}
IQK_ROW_META_KERNEL(iq2_ks, block_iq2_ks, 2, iq2_ks_row)

// ---- IQ4_KSS ----------------------------------------------------------------------------------

typedef struct {
    uint16_t qs[QK_K/4];  // C: uint32_t qs[QK_K/8], written through a uint16_t view
} block_iq4_kss;

QDEV int iqk_popcount(uint32_t x) {
    int n = 0;
    while (x) { n += (int)(x & 1u); x >>= 1; }
    return n;
}

// scramble_table()[i]: the j < 2^15 with j ^ (j << 1) == i | (popcount(i) odd) << 15, i.e. the
// prefix XOR of that value's bits (the table C builds by search, computed directly).
QDEV uint16_t iqk_scramble(uint32_t i) {
    uint32_t val = i | ((uint32_t)(iqk_popcount(i) % 2) << 15);
    uint32_t j = val;
    j ^= j << 1; j ^= j << 2; j ^= j << 4; j ^= j << 8;
    return (uint16_t)(j & 0xFFFFu);
}

// prune_iq4ks (diff0 from the unshifted iq4k_values, as in C).
QDEV uint16_t iqk_prune_iq4ks(uint16_t v, const int8_t * values, const float * x, const float * w, float dl) {
    if (iqk_popcount(v)%2 == 0) return v;
    float best_score = 3.40282347e+38f;  // std::numeric_limits<float>::max()
    uint8_t q4[4];
    int jbest = -1;
    uint8_t bestq = 0;
    for (int j = 0; j < 4; ++j) {
        uint8_t q = (v >> 4*j) & 0xf;
        q4[j] = q;
        int pc = iqk_popcount(q);
        float diff0 = dl*iqk_iq4k_values[q] - x[j];
        int qmin = MAX(int(q)-2,  0);
        int qmax = MIN(int(q)+2, 15);
        for (int iq = qmin; iq <= qmax; ++iq) {
            uint8_t qq = iq;
            if (qq == q) continue;
            int pci = iqk_popcount(qq);
            int dpc = pci - pc;
            if ((dpc < 0 ? -dpc : dpc)%2) {
                float diff1 = dl*values[qq] - x[j];
                float score = w[j]*(diff1*diff1 - diff0*diff0);
                if (score < best_score) {
                    best_score = score; jbest = j; bestq = qq;
                }
            }
        }
    }
    if (jbest < 0) return v;  // C: GGML_ASSERT(jbest >= 0) aborts
    q4[jbest] = bestq;
    return (q4[0] | (q4[1] << 4) | (q4[2] << 8) | (q4[3] << 12));
}

// IQ4_KSS's pass-1 sums of one block at trial scale id: each group of 4 levels nearest to +id*x (p)
// and -id*x (m), pruned by iqk_prune_iq4ks at this_d = 1/id; C's order.
QDEV void iqk_kss_pm_sums(const int8_t * values, const float * GGML_RESTRICT xb, const float * GGML_RESTRICT weight,
                          int block_size, float id, float this_d, float * s) {
    float xv[4], wv[4];
    float sumqx_p = 0, sumq2_p = 0;
    float sumqx_m = 0, sumq2_m = 0;
    for (int k = 0; k < block_size/4; ++k) {
        xv[0] =     xb[2*k+0]; xv[1] =     xb[2*k+0+block_size/2]; xv[2] =     xb[2*k+1]; xv[3] =     xb[2*k+1+block_size/2];
        wv[0] = weight[2*k+0]; wv[1] = weight[2*k+0+block_size/2]; wv[2] = weight[2*k+1]; wv[3] = weight[2*k+1+block_size/2];
        uint16_t vp = 0, vm = 0;
        for (int j = 0; j < 4; ++j) {
            float al = id*xv[j];
            vp |= (iqk_best_index_iq4nl(values,  al) << 4*j);
            vm |= (iqk_best_index_iq4nl(values, -al) << 4*j);
        }
        vp = iqk_prune_iq4ks(vp, values, xv, wv,  this_d);
        vm = iqk_prune_iq4ks(vm, values, xv, wv,  this_d);
        for (int j = 0; j < 4; ++j) {
            float w = wv[j];
            float q = values[(vp >> 4*j) & 0xf];
            sumqx_p += w*q*xv[j];
            sumq2_p += w*q*q;
            q = values[(vm >> 4*j) & 0xf];
            sumqx_m += w*q*xv[j];
            sumq2_m += w*q*q;
        }
    }
    s[0] = sumqx_p; s[1] = sumq2_p; s[2] = sumqx_m; s[3] = sumq2_m;
}

// quantize_iq4_kss -> quantize_row_iq4_kss_impl (ntry 7, iq4k_values); pass 1 keeps no shift bit
// (vs/vps/vms of pass 1 are never read afterwards), so all_scales is the only state carried.
QDEV void iq4_kss_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                      uint8_t * GGML_RESTRICT cy, int n_per_row) {
    const int super_block_size = 256;
    const int block_size = 32;
    const int ntry = 7;
    const int8_t * values = iqk_iq4k_values;
    const int8_t * shifted_values = values + 16;
    uint8_t * yb = cy + 4;
    const int nsb = n_per_row/super_block_size;
    float weight[32];

    uint16_t vps[block_size/2], vms[block_size/2];
    float xv[4], wv[4];

    float amax_scale = 0;

    for (int ibl = 0; ibl < nsb; ++ibl) {
        block_iq4_kss blk;
        memset(&blk, 0, sizeof(block_iq4_kss));
        const float * xbl = x + ibl*super_block_size;
        float scales[QK_K/32];
        float sigma2 = 0;
        for (int j = 0; j < super_block_size; ++j) sigma2 += xbl[j]*xbl[j];
        sigma2 *= 2.f/super_block_size;
        for (int ib = 0; ib < super_block_size/block_size; ++ib) {
            const float * xb = xbl + ib*block_size;
            iqk_ks_weights(xb, quant_weights ? quant_weights + ibl*super_block_size + ib*block_size : 0,
                           weight, sigma2, block_size);
            float max;
            float amax = iqk_block_amax(xb, block_size, &max);
            if (amax < 1e-16f) {
                scales[ib] = 0;
                continue;
            }
            float best = 0;
            float d = -max/iqk_iq4k_values[0];
            for (int itry = -ntry; itry <= ntry; ++itry) {
                float s[4];
                float id = (itry + values[0])/max;
                iqk_kss_pm_sums(values, xb, weight, block_size, id, 1/id, s);
                if (s[1] > 0 && s[0]*s[0] > best*s[1]) {
                    d = s[0]/s[1]; best = d * s[0];
                }
                if (s[3] > 0 && s[2]*s[2] > best*s[3]) {
                    d = s[2]/s[3]; best = d * s[2];
                }
                id = (itry + shifted_values[0])/max;
                iqk_kss_pm_sums(shifted_values, xb, weight, block_size, id, 1/id, s);
                if (s[1] > 0 && s[0]*s[0] > best*s[1]) {
                    d = s[0]/s[1]; best = d * s[0];
                }
                if (s[3] > 0 && s[2]*s[2] > best*s[3]) {
                    d = s[2]/s[3]; best = d * s[2];
                }
            }
            scales[ib] = d;
            amax_scale = iqk_std_max(amax_scale, fabsf(d));
        }
        memcpy(blk.qs, scales, sizeof(scales));  // all_scales, parked until pass 2
        store_block(yb + ibl*(int64_t)sizeof(block_iq4_kss), &blk, (int) sizeof(block_iq4_kss));
    }
    float d = amax_scale/127;
    uint16_t meta[2];
    memcpy(meta, &d, 4);
    if (!d) {
        block_iq4_kss zero;
        memset(&zero, 0, sizeof(block_iq4_kss));
        for (int ibl = 0; ibl < nsb; ++ibl) {
            store_block(yb + ibl*(int64_t)sizeof(block_iq4_kss), &zero, (int) sizeof(block_iq4_kss));
        }
        store_block(cy, meta, 4);
        return;
    }
    float id = 1/d;
    float sumqx = 0, sumq2 = 0;
    for (int ibl = 0; ibl < nsb; ++ibl) {
        block_iq4_kss blk;
        iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(block_iq4_kss), (int) sizeof(block_iq4_kss));
        float scales[QK_K/32];
        memcpy(scales, blk.qs, sizeof(scales));
        memset(&blk, 0, sizeof(block_iq4_kss));
        const float * xbl = x + ibl*super_block_size;
        float sigma2 = 0;
        for (int j = 0; j < super_block_size; ++j) sigma2 += xbl[j]*xbl[j];
        sigma2 *= 2.f/super_block_size;
        for (int ib = 0; ib < super_block_size/block_size; ++ib) {
            const float * xb = xbl + ib*block_size;
            iqk_ks_weights(xb, quant_weights ? quant_weights + ibl*super_block_size + ib*block_size : 0,
                           weight, sigma2, block_size);
            int l = nearest_int(0.5f*(id*scales[ib]+127.f));
            l = (MAX(0, MIN(127, l)) << 1) - 127;
            if (l) {
                float dl = d*l;
                float idl = 1/dl;
                float mse_p = 0, mse_m = 0;
                for (int k = 0; k < block_size/4; ++k) {
                    xv[0] =     xb[2*k+0]; xv[1] =     xb[2*k+0+block_size/2]; xv[2] =     xb[2*k+1]; xv[3] =     xb[2*k+1+block_size/2];
                    wv[0] = weight[2*k+0]; wv[1] = weight[2*k+0+block_size/2]; wv[2] = weight[2*k+1]; wv[3] = weight[2*k+1+block_size/2];
                    uint16_t vp = 0, vm = 0;
                    for (int j = 0; j < 4; ++j) {
                        float al = idl*xv[j];
                        vp |= (iqk_best_index_iq4nl(        values, al) << 4*j);
                        vm |= (iqk_best_index_iq4nl(shifted_values, al) << 4*j);
                    }
                    vp = iqk_prune_iq4ks(vp,         values, xv, wv,  dl);
                    vm = iqk_prune_iq4ks(vm, shifted_values, xv, wv,  dl);
                    for (int j = 0; j < 4; ++j) {
                        float w = wv[j];
                        float q = values[(vp >> 4*j) & 0xf];
                        mse_p += w*(xv[j] - dl*q)*(xv[j] - dl*q);
                        q = shifted_values[(vm >> 4*j) & 0xf];
                        mse_m += w*(xv[j] - dl*q)*(xv[j] - dl*q);
                    }
                    vps[k] = vp;
                    vms[k] = vm;
                }
                const uint16_t * v = vps;
                const int8_t * block_values = values;
                if (mse_m < mse_p) {
                    v = vms;
                    block_values = values + 16;
                }
                for (int k = 0; k < block_size/4; ++k) {
                    xv[0] =     xb[2*k+0]; xv[1] =     xb[2*k+0+block_size/2]; xv[2] =     xb[2*k+1]; xv[3] =     xb[2*k+1+block_size/2];
                    wv[0] = weight[2*k+0]; wv[1] = weight[2*k+0+block_size/2]; wv[2] = weight[2*k+1]; wv[3] = weight[2*k+1+block_size/2];
                    for (int j = 0; j < 4; ++j) {
                        float q = block_values[(v[k] >> 4*j) & 0xf] * l;
                        sumqx += wv[j]*q*xv[j];
                        sumq2 += wv[j]*q*q;
                    }
                }
                l += 127;
                if (mse_m < mse_p) l |= 1;
                uint16_t * q16 = blk.qs + (block_size/4)*ib;
                for (int k = 0; k < block_size/4; ++k) {
                    uint16_t val = iqk_scramble(v[k] & 0x7fff);
                    q16[k] = (val << 1) | ((l >> k) & 1);
                }
            } else {
                l += 127;
                uint16_t * q16 = blk.qs + (block_size/4)*ib;
                for (int k = 0; k < block_size/4; ++k) {
                    q16[k] = ((l >> k) & 1);
                }
            }
        }
        store_block(yb + ibl*(int64_t)sizeof(block_iq4_kss), &blk, (int) sizeof(block_iq4_kss));
    }
    if (sumq2 > 0) d = sumqx/sumq2 * 1.01f;
    memcpy(meta, &d, 4);
    store_block(cy, meta, 4);
}
IQK_ROW_META_KERNEL(iq4_kss, block_iq4_kss, 4, iq4_kss_row)

// ---- IQ2_KL -----------------------------------------------------------------------------------

typedef struct {
    uint16_t scales_h;
    uint8_t  scales_l[QK_K/64];
    uint8_t  qs[QK_K/4];
    uint8_t  qh[QK_K/16];
} block_iq2_kl;

QCONST int iqk_kl_index[64] = {-1, -2, 0, -3, -4, 1, -5, -6, 2, -7, -8, 3, -9, 4, -10, 5, -11, 6, 7, -12, 8, 9, 10, -13, 11, -14, -15, -16, 12, 13, -17,
    14, -18, -19, 15, 16, 17, 18, 19, -20, -21, 20, 21, 22, 23, 24, -22, -23, 25, -24, 26, -25, 27, -26, 28, 29, -27, -28, 30, -29, -30, 31, -31, -32};
QCONST int8_t iqk_kl_neighbours[32][8] = {
    { 2, 0, 6, 11, 7, 3, 8, 15,  },
    { 0, 2, 3, 6, 7, 1, 8, 4,  },
    { 0, 1, 3, 4, 8, 7, 9, 6,  },
    { 1, 0, 3, 4, 8, 9, 7, 10,  },
    { 1, 4, 5, 10, 9, 3, 8, 0,  },
    { 5, 1, 4, 10, 9, 14, 8, 3,  },
    { 6, 2, 7, 0, 3, 11, 8, 15,  },
    { 3, 7, 0, 6, 8, 4, 12, 9,  },
    { 3, 4, 8, 9, 1, 7, 12, 10,  },
    { 4, 10, 5, 9, 1, 8, 13, 14,  },
    { 11, 2, 6, 7, 20, 15, 25, 21,  },
    { 8, 7, 3, 12, 9, 16, 17, 13,  },
    { 14, 5, 10, 19, 9, 13, 4, 18,  },
    { 6, 15, 7, 11, 20, 21, 16, 2,  },
    { 15, 7, 16, 6, 21, 12, 17, 22,  },
    { 12, 16, 17, 8, 15, 7, 13, 22,  },
    { 19, 10, 13, 18, 14, 9, 12, 24,  },
    { 11, 20, 25, 6, 15, 2, 21, 7,  },
    { 20, 15, 21, 6, 11, 7, 16, 26,  },
    { 14, 19, 29, 10, 28, 18, 13, 24,  },
    { 25, 11, 20, 21, 15, 6, 26, 30,  },
    { 19, 24, 28, 18, 29, 23, 13, 17,  },
    { 29, 19, 14, 28, 24, 18, 10, 13,  },
    { 20, 26, 21, 25, 30, 15, 22, 16,  },
    { 27, 26, 22, 23, 21, 30, 16, 24,  },
    { 27, 24, 28, 31, 23, 18, 22, 17,  },
    { 25, 30, 20, 26, 21, 11, 15, 22,  },
    { 30, 26, 25, 20, 21, 27, 22, 15,  },
    { 30, 27, 31, 26, 22, 23, 21, 24,  },
    { 31, 27, 30, 26, 28, 23, 22, 24,  },
    { 31, 28, 29, 27, 24, 23, 19, 18,  },
    { 29, 28, 31, 24, 19, 27, 14, 18,  },
};

// The C lambda `index` of quantize_row_iq2_kl_impl; grid1/grid2: grid[i].first / .second.
QDEV int iq2_kl_index(const int8_t * grid1, const int8_t * grid2, float id, float x1, float x2, float w1, float w2) {
    const int8_t * values = iqk_iq3nl_values;
    float sx1 = id*x1;
    float sx2 = id*x2;
    int l1 = iqk_best_index_iq3nl(values, sx1);
    int l2 = iqk_best_index_iq3nl(values, sx2);
    int i = iqk_kl_index[8*l1 + l2];
    if (i >= 0) return i;
    const int8_t * neigh = iqk_kl_neighbours[-i-1];
    float best = 3.40282347e+38f;  // std::numeric_limits<float>::max()
    int ibest = -1;
    for (int k = 0; k < 8; ++k) {
        int n = neigh[k];
        float diff1 = grid1[n] - sx1;
        float diff2 = grid2[n] - sx2;
        float score = w1*diff1*diff1 + w2*diff2*diff2;
        if (score < best) {
            best = score; ibest = n;
        }
    }
    if (ibest < 0) ibest = 0;  // C: GGML_ASSERT(ibest >= 0) aborts
    return ibest;
}

QDEV void iq2_kl_weights(const float * GGML_RESTRICT xb, const float * GGML_RESTRICT imatrix_b,
                         float * GGML_RESTRICT weight, float sigma2) {
    const int kBlockSize = 32;
    if (imatrix_b) {
        float qw[32];
        iqk_row_weights(xb, imatrix_b, qw, kBlockSize, kBlockSize);
        for (int j = 0; j < kBlockSize; ++j) weight[j] = qw[j]*sqrtf(sigma2 + xb[j]*xb[j]);
    } else {
        for (int j = 0; j < kBlockSize; ++j) weight[j] = fabsf(xb[j]);
    }
}

// quantize_iq2_kl -> quantize_row_iq2_kl_impl (ntry 5, kSigmaFactor 2.25f); cy: fp16 d, blocks.
QDEV void iq2_kl_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                     uint8_t * GGML_RESTRICT cy, int n_per_row) {
    const int kBlockSize = 32;
    const float kSigmaFactor = 2.25f;
    const int ntry = 5;
    const int8_t * values = iqk_iq3nl_values;
    int8_t grid1[32], grid2[32];
    for (int j = 0; j < 64; ++j) {
        int i = iqk_kl_index[j];
        if (i >= 0) {
            int i1 = j/8, i2 = j%8;
            grid1[i] = values[i1]; grid2[i] = values[i2];
        }
    }
    uint8_t * yb = cy + 2;
    const int nsb = n_per_row/QK_K;

    float weight[kBlockSize];

    float max_scale = 0, max_abs_scale = 0;

    for (int ibl = 0; ibl < nsb; ++ibl) {
        block_iq2_kl blk;
        memset(&blk, 0, sizeof(block_iq2_kl));
        float scales[QK_K/32];
        const float * xbl = x + ibl*QK_K;
        float sigma2 = 0;
        for (int j = 0; j < QK_K; ++j) sigma2 += xbl[j]*xbl[j];
        sigma2 *= kSigmaFactor/QK_K;
        for (int ib = 0; ib < QK_K/kBlockSize; ++ib) {
            const float * xb = xbl + ib*kBlockSize;
            iq2_kl_weights(xb, quant_weights ? quant_weights + ibl*QK_K + ib*kBlockSize : 0, weight, sigma2);
            float max;
            float amax = iqk_block_amax(xb, kBlockSize, &max);
            if (amax < 1e-16f) {
                scales[ib] = 0;
                continue;
            }
            float d = ntry > 0 ? -max/values[0] : max/values[0];
            float id = 1/d;
            float sumqx_p = 0, sumq2_p = 0;
            float sumqx_m = 0, sumq2_m = 0;
            for (int j = 0; j < kBlockSize; j += 2) {
                float w1 = weight[j+0];
                float w2 = weight[j+1];
                int idx = iq2_kl_index(grid1, grid2, id, xb[j+0], xb[j+1], w1, w2);
                float q1 = grid1[idx];
                float q2 = grid2[idx];
                sumqx_p += w1*q1*xb[j] + w2*q2*xb[j+1];
                sumq2_p += w1*q1*q1 + w2*q2*q2;
                idx = iq2_kl_index(grid1, grid2, -id, xb[j+0], xb[j+1], w1, w2);
                q1 = grid1[idx];
                q2 = grid2[idx];
                sumqx_m += w1*q1*xb[j] + w2*q2*xb[j+1];
                sumq2_m += w1*q1*q1 + w2*q2*q2;
            }
            d = sumqx_p/sumq2_p;
            float best = d*sumqx_p;
            if (sumq2_m > 0 && sumqx_m*sumqx_m > best*sumq2_m) {
                d = sumqx_m/sumq2_m; best = d*sumqx_m;
            }
            for (int itry = -ntry; itry <= ntry; ++itry) {
                id = (itry + values[0])/max;
                sumqx_p = sumq2_p = 0;
                sumqx_m = sumq2_m = 0;
                for (int j = 0; j < kBlockSize; j += 2) {
                    float w1 = weight[j+0];
                    float w2 = weight[j+1];
                    int idx = iq2_kl_index(grid1, grid2, id, xb[j+0], xb[j+1], w1, w2);
                    float q1 = grid1[idx];
                    float q2 = grid2[idx];
                    sumqx_p += w1*q1*xb[j] + w2*q2*xb[j+1];
                    sumq2_p += w1*q1*q1 + w2*q2*q2;
                    idx = iq2_kl_index(grid1, grid2, -id, xb[j+0], xb[j+1], w1, w2);
                    q1 = grid1[idx];
                    q2 = grid2[idx];
                    sumqx_m += w1*q1*xb[j] + w2*q2*xb[j+1];
                    sumq2_m += w1*q1*q1 + w2*q2*q2;
                }
                if (sumq2_p > 0 && sumqx_p*sumqx_p > best*sumq2_p) {
                    d = sumqx_p/sumq2_p; best = d * sumqx_p;
                }
                if (sumq2_m > 0 && sumqx_m*sumqx_m > best*sumq2_m) {
                    d = sumqx_m/sumq2_m; best = d * sumqx_m;
                }
            }
            scales[ib] = d;
            float ad = fabsf(d);
            if (ad > max_abs_scale) {
                max_abs_scale = ad; max_scale = d;
            }
        }
        memcpy(blk.qs, scales, sizeof(scales));  // all_scales, parked until pass 2
        store_block(yb + ibl*(int64_t)sizeof(block_iq2_kl), &blk, (int) sizeof(block_iq2_kl));
    }

    if (!max_abs_scale) {
        block_iq2_kl zero;
        memset(&zero, 0, sizeof(block_iq2_kl));
        for (int ibl = 0; ibl < nsb; ++ibl) {
            store_block(yb + ibl*(int64_t)sizeof(block_iq2_kl), &zero, (int) sizeof(block_iq2_kl));
        }
        ggml_half dh = GGML_FP32_TO_FP16(0.f);
        store_block(cy, &dh, 2);
        return;
    }

    float d = -max_scale/32;
    float id = 1/d;

    float sumqx = 0, sumq2 = 0;
    for (int ibl = 0; ibl < nsb; ++ibl) {
        block_iq2_kl blk;
        iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(block_iq2_kl), (int) sizeof(block_iq2_kl));
        float scales[QK_K/32];
        memcpy(scales, blk.qs, sizeof(scales));
        memset(&blk, 0, sizeof(block_iq2_kl));
        const float * xbl = x + ibl*QK_K;
        float sigma2 = 0;
        for (int j = 0; j < QK_K; ++j) sigma2 += xbl[j]*xbl[j];
        sigma2 *= kSigmaFactor/QK_K;
        for (int ib = 0; ib < QK_K/kBlockSize; ++ib) {
            const float * xb = xbl + ib*kBlockSize;
            iq2_kl_weights(xb, quant_weights ? quant_weights + ibl*QK_K + ib*kBlockSize : 0, weight, sigma2);
            int ls = nearest_int(id*scales[ib]);
            ls = MAX(-32, MIN(31, ls));
            int lsmin = MAX(-32, ls-1);
            int lsmax = MIN( 31, ls+1);
            float best_score = 3.40282347e+38f;  // std::numeric_limits<float>::max()
            int best_ls = ls;
            for (int ils = lsmin; ils <= lsmax; ++ils) {
                float dl = d*ils;
                float idl = dl ? 1/dl : 0.f;
                float score = 0;
                for (int j = 0; j < kBlockSize/2; ++j) {
                    float w1 = weight[2*j+0];
                    float w2 = weight[2*j+1];
                    int idx = iq2_kl_index(grid1, grid2, idl, xb[2*j+0], xb[2*j+1], w1, w2);
                    float diff1 = dl*grid1[idx] - xb[2*j+0];
                    float diff2 = dl*grid2[idx] - xb[2*j+1];
                    score += w1*diff1*diff1 + w2*diff2*diff2;
                }
                if (score < best_score) {
                    best_score = score;
                    best_ls = ils;
                }
            }
            ls = best_ls;
            int uls = ls + 32;
            blk.scales_l[ib%4] |= ((uls & 0xf) << 4*(ib/4));
            blk.scales_h |= ((uls >> 4) << 2*ib);
            if (ls == 0) continue;
            float dl = d*ls;
            float idl = 1/dl;
            for (int j = 0; j < kBlockSize/2; ++j) {
                float w1 = weight[2*j+0];
                float w2 = weight[2*j+1];
                int idx = iq2_kl_index(grid1, grid2, idl, xb[2*j+0], xb[2*j+1], w1, w2);
                blk.qs[16*(ib/2) + j] |= ((idx & 0xf) << 4*(ib%2));
                blk.qh[j] |= ((idx >> 4) << ib);
                float q1 = ls*grid1[idx];
                float q2 = ls*grid2[idx];
                sumqx += w1*q1*xb[2*j] + w2*q2*xb[2*j+1];
                sumq2 += w1*q1*q1 + w2*q2*q2;
            }
        }
        store_block(yb + ibl*(int64_t)sizeof(block_iq2_kl), &blk, (int) sizeof(block_iq2_kl));
    }
    if (sumq2 > 0) d = sumqx/sumq2;

    ggml_half dh = GGML_FP32_TO_FP16(1.025f * d);
    store_block(cy, &dh, 2);
}
IQK_ROW_META_KERNEL(iq2_kl, block_iq2_kl, 2, iq2_kl_row)
