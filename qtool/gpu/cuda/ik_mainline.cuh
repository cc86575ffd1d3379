// ik_llama.cpp's own algorithms for mainline types (ik_llama.cpp ggml/src/ggml-quants.c, MIT
// licence), plus its Q6_0: ik's versions of the scale searches (make_qx_quants with a greedy
// descent, make_qkx2_quants degenerate below 1e-10, make_qkx3_quants with double sums and a
// descent, make_qp_quants zero below 1e-16) and the quantizers that call them. ik_llama.cpp is
// built with -ffp-contract=off; float stays float and double stays double as in its C.
// One block (or super-block) per thread: nothing carries from one block to the next; the legacy
// types' sigma2 (sum of x^2 over the row / n_per_row) comes from the row pre-pass (aux).
#pragma once

// ik_x86_nan / nearest_int_ik (x86's NaN for ik's unguarded divisions): search_k.cuh.

// ---- ik's searches (ggml-quants.c of ik_llama.cpp)

// Not merged with ggml's make_qx_quants (search.cuh): ik adds a greedy descent after the trial scales.
QDEV float make_qx_quants_ik(int n, int nmax, const float * GGML_RESTRICT x, int8_t * GGML_RESTRICT L, int rmse_type,
        const float * GGML_RESTRICT qw) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) { // all zero
        for (int i = 0; i < n; ++i) {
            L[i] = 0;
        }
        return 0.f;
    }
    float iscale = -nmax / max;
    if (rmse_type == 0) {
        for (int i = 0; i < n; ++i) {
            int l = nearest_int_ik(iscale * x[i]);
            L[i] = nmax + MAX(-nmax, MIN(nmax-1, l));
        }
        return 1/iscale;
    }
    bool return_early = false;
    if (rmse_type < 0) {
        rmse_type = -rmse_type;
        return_early = true;
    }
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int_ik(iscale * x[i]);
        l = MAX(-nmax, MIN(nmax-1, l));
        L[i] = l + nmax;
        float w = qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[i]) : sqrtf(fabsf(x[i]));
        sumlx += w*x[i]*l;
        suml2 += w*l*l;
    }
    float scale = suml2 ? sumlx/suml2 : 0.0f;
    if (return_early) return suml2 > 0 ? 0.5f*(scale + 1/iscale) : 1/iscale;
    float best = scale * sumlx;
    float best_sumlx = sumlx, best_suml2 = suml2;
    for (int is = -9; is <= 9; ++is) {
        iscale = -(nmax + 0.1f*is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int_ik(iscale * x[i]);
            l = MAX(-nmax, MIN(nmax-1, l));
            float w = qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[i]) : sqrtf(fabsf(x[i]));
            sumlx += w*x[i]*l;
            suml2 += w*l*l;
        }
        if (suml2 > 0 && sumlx*sumlx > best*suml2) {
            for (int i = 0; i < n; ++i) {
                int l = nearest_int_ik(iscale * x[i]);
                L[i] = nmax + MAX(-nmax, MIN(nmax-1, l));
            }
            scale = sumlx/suml2; best = scale*sumlx;
            best_sumlx = sumlx; best_suml2 = suml2;
        }
        iscale = (nmax-1 + 0.1f*is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int_ik(iscale * x[i]);
            l = MAX(-nmax, MIN(nmax-1, l));
            float w = qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[i]) : sqrtf(fabsf(x[i]));
            sumlx += w*x[i]*l;
            suml2 += w*l*l;
        }
        if (suml2 > 0 && sumlx*sumlx > best*suml2) {
            for (int i = 0; i < n; ++i) {
                int l = nearest_int_ik(iscale * x[i]);
                L[i] = nmax + MAX(-nmax, MIN(nmax-1, l));
            }
            scale = sumlx/suml2; best = scale*sumlx;
            best_sumlx = sumlx; best_suml2 = suml2;
        }
    }

    sumlx = best_sumlx; suml2 = best_suml2;
    for (int iter = 0; iter < n*(2*nmax-1); ++iter) {
        float abs_gmax = 0, gmax = 0;
        int best_j = -1;
        for (int j = 0; j < n; ++j) {
            float w = qw ? qw[j] : rmse_type == 1 ? x[j] * x[j] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[j]) : sqrtf(fabsf(x[j]));
            int l = L[j] - nmax;
            float g = scale * w * (x[j] - scale*l);
            if ((g > 0 && l < nmax-1) || (g < 0 && l > -nmax)) {
                float ag = fabsf(g);
                if (ag > abs_gmax) {
                    abs_gmax = ag; gmax = g; best_j = j;
                }
            }
        }
        if (best_j < 0) break;

        float new_sumlx = sumlx, new_suml2 = suml2;
        float w = qw ? qw[best_j] : rmse_type == 1 ? x[best_j] * x[best_j] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[best_j]) : sqrtf(fabsf(x[best_j]));
        int l = L[best_j] - nmax;
        if (gmax > 0) {
            new_sumlx += w*x[best_j];
            new_suml2 += w*(2*l + 1);
            l += 1;
        } else {
            new_sumlx -= w*x[best_j];
            new_suml2 -= w*(2*l - 1);
            l -= 1;
        }
        if (new_suml2 > 0 && new_sumlx*new_sumlx > best*new_suml2) {
            sumlx = new_sumlx; suml2 = new_suml2;
            scale = sumlx/suml2; best = scale*sumlx;
            L[best_j] = l + nmax;
        }
        else {
            break;
        }

    }
    return scale;
}

QDEV float make_qkx2_quants_ik(int n, int nmax, const float * GGML_RESTRICT x, const float * GGML_RESTRICT weights,
        uint8_t * GGML_RESTRICT L, float * GGML_RESTRICT the_min, uint8_t * GGML_RESTRICT Laux,
        float rmin, float rdelta, int nstep, bool use_mad) {
    return make_qkx2_quants_t<true>(n, nmax, x, weights, L, the_min, Laux, rmin, rdelta, nstep, use_mad);  // search_k.cuh
}

// Not merged with ggml's make_qkx3_quants (search_k.cuh): ik sums in double and adds a descent.
QDEV float make_qkx3_quants_ik(int n, int nmax, const float * GGML_RESTRICT x, const float * GGML_RESTRICT weights,
        uint8_t * GGML_RESTRICT L, float * GGML_RESTRICT the_min, uint8_t * GGML_RESTRICT Laux,
        float rmin, float rdelta, int nstep, bool use_mad) {
    float min = x[0];
    float max = x[0];
    double sum_w = weights ? (double)weights[0] : (double)(x[0]*x[0]);
    double sum_x = sum_w * (double)x[0];
    double sum_x2 = sum_w * (double)x[0] * (double)x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights ? weights[i] : x[i]*x[i];
        sum_w += (double)w;
        sum_x += (double)w * (double)x[i];
        sum_x2 += (double)w * (double)x[i] * (double)x[i];
    }
    if (min > 0) {
        min = 0;
    }
    if (max - min < 1e-10f) {
        memset(L, 0, n);
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax/(max - min);
    float scale = 1/iscale;
    double best_mad = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int_ik(iscale*(x[i] - min));
        L[i] = MAX(0, MIN(nmax, l));
        double diff = (double)scale * L[i] + (double)min - (double)x[i];
        diff = use_mad ? fabs(diff) : diff*diff;
        double w = weights ? (double)weights[i] : (double)(x[i]*x[i]);
        best_mad += w * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta*is + nmax)/(max - min);
        double sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int_ik(iscale*(x[i] - min));
            l = MAX(0, MIN(nmax, l));
            Laux[i] = l;
            float w = weights ? weights[i] : x[i]*x[i];
            sum_l  += (double)w*l;
            sum_l2 += (double)w*l*l;
            sum_xl += (double)w*l*(double)x[i];
        }
        double D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            double this_scale = (sum_w * sum_xl - sum_x * sum_l)/D;
            double this_min   = (sum_l2 * sum_x - sum_l * sum_xl)/D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            double mad = 0;
            if (use_mad) {
                for (int i = 0; i < n; ++i) {
                    double diff = (double)this_scale * Laux[i] + (double)this_min - (double)x[i];
                    diff = fabs(diff);
                    double w = weights ? (double)weights[i] : (double)(x[i]*x[i]);
                    mad += w * diff;
                }
            } else {
                mad = sum_x2 - 2*this_scale*sum_xl - 2*this_min*sum_x + 2*this_scale*this_min*sum_l
                    + this_scale*this_scale*sum_l2 + this_min*this_min*sum_w;
            }
            if (mad < best_mad) {
                for (int i = 0; i < n; ++i) {
                    L[i] = Laux[i];
                }
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    if (use_mad) {
        *the_min = -min;
        return scale;
    }

    double sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
        int l = L[i];
        double w = weights ? (double)weights[i] : (double)(x[i]*x[i]);
        sum_l  += w*l;
        sum_l2 += w*l*l;
        sum_xl += w*l*(double)x[i];
    }
    double best = 2*(double)scale*sum_xl + 2*(double)min*sum_x - 2*(double)scale*(double)min*sum_l
                - (double)scale*(double)scale*sum_l2 - (double)min*(double)min*sum_w;
    int last_j = -1, last_dir = 0;
    for (int itry = 0; itry < nmax*n; ++itry) {
        float gmax = 0;
        int best_j = -1, dir = 0;
        for (int j = 0; j < n; ++j) {
            float g = x[j] - scale*L[j] - min;
            if (g > 0 && L[j] < nmax && g > gmax) {
                gmax = g; best_j = j; dir = 1;
            }
            else if (g < 0 && L[j] > 0 && -g > gmax) {
                gmax = -g; best_j = j; dir = -1;
            }
        }
        if (best_j < 0 || (best_j == last_j && dir == -last_dir)) break;
        double w = weights ? (double)weights[best_j] : (double)(x[best_j]*x[best_j]);
        sum_l  += w*dir;
        sum_l2 += w*(2*L[best_j]*dir + 1);
        sum_xl += w*(double)x[best_j]*dir;
        double D = (double)sum_w * sum_l2 - sum_l * sum_l;
        if (D <= 0) break;
        double this_scale = ((double)sum_w * sum_xl - (double)sum_x * sum_l)/D;
        double this_min   = (sum_l2 * (double)sum_x - sum_l * sum_xl)/D;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        if (this_scale < 0) break;
        double score = 2*this_scale*sum_xl + 2*this_min*(double)sum_x - 2*this_scale*this_min*sum_l
                     - this_scale*this_scale*sum_l2 - this_min*this_min*(double)sum_w;
        if (score <= best) break;
        best = score;
        scale = this_scale;
        min = this_min;
        L[best_j] += dir;
        last_j = best_j; last_dir = dir;
    }
    *the_min = -min;
    return scale;
}

QDEV float make_qp_quants_ik(int n, int nmax, const float * GGML_RESTRICT x, uint8_t * GGML_RESTRICT L, const float * quant_weights) {
    return make_qp_quants_t<true>(n, nmax, x, L, quant_weights);  // search_k.cuh
}

// ---- Q4_K / Q5_K: quantize_row_q{4,5}_K_ref and quantize_row_q{4,5}_K_impl of ik_llama.cpp, one super-block

// (ggml's code, kquants_45.cuh, with ik's searches and rounding)
QDEV void kq45_scales_and_L_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights, int nmax,
                               ggml_half * GGML_RESTRICT y_d, ggml_half * GGML_RESTRICT y_dmin,
                               uint8_t * GGML_RESTRICT y_scales, uint8_t * GGML_RESTRICT L) {
    kq45_scales_and_L_t<make_qkx2_quants_ik, make_qkx3_quants_ik, make_qp_quants_ik, nearest_int_ik>(
        x, quant_weights, nmax, y_d, y_dmin, y_scales, L);
}

QDEV void q4_K_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q4_K * GGML_RESTRICT y, float unused) {
    q4_K_block_t<kq45_scales_and_L_ik>(x, quant_weights, y, unused);
}
QTOOL_ROW_KERNEL(q4_K_ik, QK_K, block_q4_K, q4_K_block_ik)

QDEV void q5_K_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q5_K * GGML_RESTRICT y, float unused) {
    q5_K_block_t<kq45_scales_and_L_ik>(x, quant_weights, y, unused);
}
QTOOL_ROW_KERNEL(q5_K_ik, QK_K, block_q5_K, q5_K_block_ik)

// ---- Q2_K with an imatrix: ik's quantize_row_q2_K_impl, one super-block. (Without an imatrix
// ik's quantize_row_q2_K_ref first tests the WHOLE ggml_quantize_chunk call for "TriNet" data, so
// a row's bytes depend on the other rows of the call: no GPU kernel for that variant.)

QDEV void q2_K_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q2_K * GGML_RESTRICT y, float unused) {
    (void) unused;
    uint8_t L[QK_K];
    uint8_t Laux[16];
    float mins[QK_K/16];
    float scales[QK_K/16];
    float sw[QK_K/16];
    float weight[16];
    uint8_t Ls[QK_K/16], Lm[QK_K/16];

    memset(sw, 0, QK_K/16*sizeof(float));
    float sumx2 = 0;
    for (int j = 0; j < QK_K; ++j) sumx2 += x[j]*x[j];
    float sigma2 = 0.75f*sumx2/QK_K;
    for (int j = 0; j < QK_K/16; ++j) {
        const float * GGML_RESTRICT qw = quant_weights + 16*j;
        for (int l = 0; l < 16; ++l) weight[l] = qw[l] * sqrtf(sigma2 + x[16*j + l]*x[16*j + l]);
        for (int l = 0; l < QK_K/16; ++l) sw[j] += weight[l];
        scales[j] = make_qkx3_quants_ik(16, 3, x + 16*j, weight, L + 16*j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
    }

    float dm  = make_qp_quants_ik(QK_K/16, 15, scales, Ls, sw);
    float mm  = make_qp_quants_ik(QK_K/16, 15, mins,   Lm, sw);

    y->d    = GGML_FP32_TO_FP16(dm);
    y->dmin = GGML_FP32_TO_FP16(mm);

    for (int j = 0; j < QK_K/16; ++j) {
        float d = dm*Ls[j];
        float m = mm*Lm[j];
        float id = d ? 1/d : 0.f;
        for (int l = 0; l < QK_K/16; ++l) {
            int q = nearest_int_ik((x[16*j + l] + m)*id);
            q = MAX(0, MIN(3, q));
            L[16*j + l] = q;
        }
    }
    for (int j = 0; j < QK_K/16; ++j) {
        y->scales[j] = Ls[j] | (Lm[j] << 4);
    }

    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            y->qs[j/4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
        }
    }
}
QTOOL_ROW_KERNEL(q2_K_ik, QK_K, block_q2_K, q2_K_block_ik)

// ---- Q3_K with an imatrix: ik's quantize_row_q3_K_impl (mainline's with ik's make_qx_quants),
// one super-block. Without an imatrix ik runs mainline's quantize_row_q3_K_ref.

QDEV void q3_K_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q3_K * GGML_RESTRICT y, float unused) {
    q3_K_block_t<make_qx_quants_ik, nearest_int_ik, true>(x, quant_weights, y, unused);  // kquants_23.cuh
}
QTOOL_ROW_KERNEL(q3_K_ik, QK_K, block_q3_K, q3_K_block_ik)

// ---- Q6_K: mainline's quantize_row_q6_K_ref / _impl with ik's make_qx_quants, one super-block

QDEV void q6_K_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q6_K * GGML_RESTRICT y, float unused) {
    q6_K_block_t<make_qx_quants_ik, nearest_int_ik>(x, quant_weights, y, unused);  // q6_k.cuh
}
QTOOL_ROW_KERNEL(q6_K_ik, QK_K, block_q6_K, q6_K_block_ik)

// ---- legacy types with an imatrix: ik's quantize_row_q{4,5}_{0,1}_impl, one block
// (sigma2: the row's sum_x2 / n_per_row from the row pre-pass). Without an imatrix ik runs
// mainline's quantize_row_q*_ref (mainline's kernels serve that variant).

QDEV void q4_0_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q4_0 * GGML_RESTRICT y, float sigma2) {
    q4_0_impl_t<make_qx_quants_ik>(x, quant_weights, y, sigma2);  // legacy.cuh
}
QTOOL_ROW_KERNEL(q4_0_ik, QK4_0, block_q4_0, q4_0_block_ik)

QDEV void q4_1_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q4_1 * GGML_RESTRICT y, float sigma2) {
    q4_1_impl_t<make_qkx3_quants_ik>(x, quant_weights, y, sigma2);  // legacy.cuh
}
QTOOL_ROW_KERNEL(q4_1_ik, QK4_1, block_q4_1, q4_1_block_ik)

QDEV void q5_0_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q5_0 * GGML_RESTRICT y, float sigma2) {
    q5_0_impl_t<make_qx_quants_ik>(x, quant_weights, y, sigma2);  // legacy.cuh
}
QTOOL_ROW_KERNEL(q5_0_ik, QK5_0, block_q5_0, q5_0_block_ik)

QDEV void q5_1_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q5_1 * GGML_RESTRICT y, float sigma2) {
    q5_1_impl_t<make_qkx3_quants_ik>(x, quant_weights, y, sigma2);  // legacy.cuh
}
QTOOL_ROW_KERNEL(q5_1_ik, QK5_1, block_q5_1, q5_1_block_ik)

// ---- Q6_0 (ik-only type): quantize_row_q6_0_impl, both variants, one block (sigma2 from the
// row pre-pass with an imatrix; unused without one)

#define QK6_0 32
typedef struct {
    ggml_half d;         // delta
    uint8_t qh[QK6_0/4]; // 5+6-th bit of quants
    uint8_t qs[QK6_0/2]; // nibbles / quants
} block_q6_0;

QDEV void q6_0_block(const float * GGML_RESTRICT xb, const float * GGML_RESTRICT qw,
                     block_q6_0 * GGML_RESTRICT y, float sigma2) {
    float weight[QK6_0];
    int8_t L[QK6_0];
    if (qw) {
        for (int j = 0; j < QK6_0; ++j) weight[j] = qw[j] * sqrtf(sigma2 + xb[j]*xb[j]);
    } else {
        for (int j = 0; j < QK6_0; ++j) weight[j] = xb[j]*xb[j];
    }
    float d = make_qx_quants_ik(QK6_0, 32, xb, L, 1, weight);
    y->d = GGML_FP32_TO_FP16(d);

    memset(y->qh, 0, QK6_0/4);

    for (int j = 0; j < 16; ++j) {
        const uint8_t xi0 = L[j];
        const uint8_t xi1 = L[j+16];
        y->qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        const uint8_t h = (xi0 >> 4) | ((xi1 >> 4) << 2);
        y->qh[j%8] |= (h << 4*(j/8));
    }
}
QTOOL_ROW_KERNEL(q6_0, QK6_0, block_q6_0, q6_0_block)

// ---- IQ4_NL / IQ4_XS: ik's quantize_row_iq4_nl_impl (both candidates per itry, a greedy descent,
// ik's table-driven best_index_iq4nl = iqk.cuh's iqk_best_index_iq4nl), one (super-)block;
// quantize_iq4_nl / quantize_iq4_xs call it with ntry = 7 for both variants.

// One trial scale id of ik's IQ4_NL / IQ4_XS search (C's loop body, twice per itry): the sums at
// id; where they beat best, C's updates of d, best, the best sums and the block's levels Lb.
QDEV void ik_iq4_try(float id, const int8_t * values, const float * GGML_RESTRICT xb, const float * GGML_RESTRICT weight,
                     int block_size, uint8_t * GGML_RESTRICT Lb, float * d, float * best,
                     float * best_sumqx, float * best_sumq2) {
    float sumqx = 0, sumq2 = 0;
    for (int j = 0; j < block_size; ++j) {
        float al = id*xb[j];
        int l = iqk_best_index_iq4nl(values, al);
        float q = values[l];
        float w = weight[j];
        sumqx += w*q*xb[j];
        sumq2 += w*q*q;
    }
    if (sumq2 > 0 && sumqx*sumqx > *best*sumq2) {
        *d = sumqx/sumq2; *best = *d * sumqx;
        *best_sumqx = sumqx; *best_sumq2 = sumq2;
        for (int j = 0; j < block_size; ++j) {
            float al = id*xb[j];
            Lb[j] = iqk_best_index_iq4nl(values, al);
        }
    }
}

// Not merged with iq4.cuh's quantize_row_iq4_nl_impl: ik tries both candidates per itry and descends.
QDEV void quantize_row_iq4_nl_impl_ik(const int super_block_size, const int block_size, const float * GGML_RESTRICT x,
        ggml_half * dh, uint8_t * q4, uint16_t * scales_h, uint8_t * scales_l,
        float * scales, float * weight, uint8_t * L,
        const int8_t * values,
        const float * quant_weights,
        const int ntry) {

    float sigma2 = 0;
    for (int j = 0; j < super_block_size; ++j) sigma2 += x[j]*x[j];
    sigma2 *= 2.f/super_block_size;

    memset(q4, 0, super_block_size/2);
    dh[0] = GGML_FP32_TO_FP16(0.f);

    float max_scale = 0, amax_scale = 0;
    for (int ib = 0; ib < super_block_size/block_size; ++ib) {
        const float * xb = x + ib*block_size;
        uint8_t * Lb = L + ib*block_size;
        if (quant_weights) {
            const float * qw = quant_weights + ib*block_size;
            for (int j = 0; j < block_size; ++j) weight[j] = qw[j] * sqrtf(sigma2 + xb[j]*xb[j]);
        } else {
            for (int j = 0; j < block_size; ++j) weight[j] = xb[j]*xb[j];
        }
        float amax = 0, max = 0;
        for (int j = 0; j < block_size; ++j) {
            float ax = fabsf(xb[j]);
            if (ax > amax) {
                amax = ax; max = xb[j];
            }
        }
        if (amax < GROUP_MAX_EPS) {
            scales[ib] = 0;
            continue;
        }
        float d = ntry > 0 ? -max/values[0] : max/values[0];
        float id = 1/d;
        float sumqx = 0, sumq2 = 0;
        for (int j = 0; j < block_size; ++j) {
            float al = id*xb[j];
            int l = iqk_best_index_iq4nl(values, al);
            Lb[j] = l;
            float q = values[l];
            float w = weight[j];
            sumqx += w*q*xb[j];
            sumq2 += w*q*q;
        }
        d = ik_x86_nan(sumqx/sumq2);
        float best = d*sumqx;
        float best_sumqx = sumqx, best_sumq2 = sumq2;
        for (int itry = -ntry; itry <= ntry; ++itry) {
            id = (itry + values[0])/max;
            ik_iq4_try(id, values, xb, weight, block_size, Lb, &d, &best, &best_sumqx, &best_sumq2);
            id = (itry + values[15])/max;
            ik_iq4_try(id, values, xb, weight, block_size, Lb, &d, &best, &best_sumqx, &best_sumq2);
        }
        sumqx = best_sumqx; sumq2 = best_sumq2;
        for (int iter = 0; iter < 32*block_size; ++iter) {
            float min_step = QBITS_U2F(0x7f800000u);  // INFINITY
            int best_j = -1; int dir = 0;
            for (int j = 0; j < block_size; ++j) {
                float w = weight[j];
                float g = d * w * (xb[j] - d*values[Lb[j]]);
                if (g > 0 && Lb[j] < 15) {
                    float step = (values[Lb[j]+1] - values[Lb[j]])/g;
                    if (step < min_step) {
                        min_step = step; best_j = j; dir = 1;
                    }
                }
                else if (g < 0 && Lb[j] > 0) {
                    float step = (values[Lb[j]-1] - values[Lb[j]])/g;
                    if (step < min_step) {
                        min_step = step; best_j = j; dir = -1;
                    }
                }
            }
            if (best_j < 0) break;

            float new_sumqx = sumqx, new_sumq2 = sumq2;
            float w = weight[best_j];
            new_sumqx += w*xb[best_j]*(values[Lb[best_j]+dir] - values[Lb[best_j]]);
            new_sumq2 += w*(values[Lb[best_j]+dir]*values[Lb[best_j]+dir] - values[Lb[best_j]]*values[Lb[best_j]]);
            if (new_sumq2 > 0 && new_sumqx*new_sumqx > best*new_sumq2) {
                sumqx = new_sumqx; sumq2 = new_sumq2;
                d = sumqx/sumq2; best = d*sumqx;
                Lb[best_j] += dir;
            }
            else {
                break;
            }
        }

        scales[ib] = d;
        float abs_d = fabsf(d);
        if (abs_d > amax_scale) {
            amax_scale = abs_d; max_scale = d;
        }
    }

    if (super_block_size/block_size > 1) {
        int nb = super_block_size/block_size;
        memset(scales_h, 0, ((nb+7)/8)*sizeof(uint16_t));
        float d = -max_scale/32;
        dh[0] = GGML_FP32_TO_FP16(d);
        float id = d ? 1/d : 0.f;
        for (int ib = 0; ib < super_block_size/block_size; ++ib) {
            int l = nearest_int_ik(id*scales[ib]);
            l = MAX(-32, MIN(31, l));
            float dl = d * l;
            float idl = dl ? 1/dl : 0.f;
            uint8_t * Lb = L + ib*block_size;
            const float * xb = x + ib*block_size;
            for (int j = 0; j < block_size; ++j) {
                Lb[j] = iqk_best_index_iq4nl(values, idl*xb[j]);
            }
            l += 32;
            uint8_t l_l = l & 0xf;
            uint8_t l_h = l >>  4;
            if (ib%2 == 0) scales_l[ib/2] = l_l;
            else scales_l[ib/2] |= (l_l << 4);
            scales_h[ib/8] |= (l_h << 2*(ib%8));
        }
    } else {
        dh[0] = GGML_FP32_TO_FP16(scales[0]);
        if (ntry > 0) {
            float id = scales[0] ? 1/scales[0] : 0;
            for (int j = 0; j < super_block_size; ++j) {
                L[j] = iqk_best_index_iq4nl(values, id*x[j]);
            }
        }
    }

    for (int i = 0; i < super_block_size/32; ++i) {
        for (int j = 0; j < 16; ++j) {
            q4[16*i + j] = L[32*i + j] | (L[32*i + 16 + j] << 4);
        }
    }
}

QDEV void iq4_nl_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw,
                          block_iq4_nl * GGML_RESTRICT y, float row_aux) {
    (void)row_aux;
    uint8_t L[QK4_NL];
    float weight[QK4_NL];
    uint16_t unused_h;
    uint8_t * unused_l = 0;
    float scale;
    quantize_row_iq4_nl_impl_ik(QK4_NL, 32, x, &y->d, y->qs, &unused_h, unused_l,
            &scale, weight, L, kvalues_iq4nl_q, qw, 7);
}
QTOOL_ROW_KERNEL(iq4_nl_ik, QK4_NL, block_iq4_nl, iq4_nl_block_ik)

QDEV void iq4_xs_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw,
                          block_iq4_xs * GGML_RESTRICT y, float row_aux) {
    (void)row_aux;
    uint8_t L[QK_K];
    float weight[32];
    float scales[QK_K/32];
    quantize_row_iq4_nl_impl_ik(QK_K, 32, x, &y->d, y->qs, &y->scales_h, y->scales_l,
            scales, weight, L, kvalues_iq4nl_q, qw, 7);
}
QTOOL_ROW_KERNEL(iq4_xs_ik, QK_K, block_iq4_xs, iq4_xs_block_ik)

// ---- IQ1_BN / IQ2_BN (ik-only ternary types): IQ1BNQuantizer::quantize_one_row_1bn / _2bn of
// iqk_quantize.cpp, one row per thread (a row max over the whole row gives the threshold and the
// row meta; the imatrix is ignored). IQ1_BN rows are 2 + 13*nblock bytes, so a row may start at
// an odd offset: its bytes are stored one at a time (rows never share a byte).

#define QK_IQ1BN 64
QCONST int bn_k_nb_ik[6] = {1, 3, 9, 27, 81, 243};

QKERNEL void quantize_iq1_bn_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw,
                                uint8_t * GGML_RESTRICT y, const float * GGML_RESTRICT aux,
                                int64_t nrows, int64_t n_per_row) {
    (void) qw; (void) aux;
    QFOR(row, nrows) {
        const int nblock = (int) (n_per_row/QK_IQ1BN);
        const float * src = x + row * n_per_row;
        uint8_t * yr = y + row * (2 + 13 * (int64_t) nblock);

        float max = 0;
        for (int j = 0; j < n_per_row; ++j) max = iqk_std_max(max, fabsf(src[j]));
        ggml_half d = GGML_FP32_TO_FP16(max);
        yr[0] = (uint8_t) (d & 0xff);
        yr[1] = (uint8_t) (d >> 8);

        float thresh = 0.5f*max;

        for (int ib = 0; ib < nblock; ++ib) {
            uint8_t * yb = yr + 2 + 13 * ib;  // block_iq1_bn: ql[12], extra
            const float * xb = src + ib*QK_IQ1BN;
            int v13 = 0;
            for (int i16 = 0; i16 < QK_IQ1BN/16; ++i16) {
                for (int k = 0; k < 3; ++k) {
                    int idx = 0;
                    for (int j = 0; j < 5; ++j) {
                        float v = xb[16*i16 + 5*k + j];
                        int q = fabsf(v) < thresh ? 1 : v < 0 ? 0 : 2;
                        idx += bn_k_nb_ik[j]*q;
                    }
                    idx = (256*idx + bn_k_nb_ik[5] - 1)/bn_k_nb_ik[5];
                    yb[3*i16 + k] = (uint8_t) idx;
                }
                float v = xb[16*i16 + 15];
                int q = fabsf(v) < thresh ? 1 : v < 0 ? 0 : 2;
                v13 += bn_k_nb_ik[i16]*q;
            }
            yb[12] = (uint8_t) ((256*v13 + bn_k_nb_ik[5] - 1)/bn_k_nb_ik[5]);
        }
    }
}

typedef struct { uint8_t qs[QK_IQ1BN/4]; } block_iq2_bn;

QKERNEL void quantize_iq2_bn_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw,
                                uint8_t * GGML_RESTRICT y, const float * GGML_RESTRICT aux,
                                int64_t nrows, int64_t n_per_row) {
    (void) qw; (void) aux;
    QFOR(row, nrows) {
        const int nblock = (int) (n_per_row/QK_IQ1BN);
        const int Nj = QK_IQ1BN/4;
        const float * src = x + row * n_per_row;
        uint8_t * yr = y + row * (4 + (int64_t) sizeof(block_iq2_bn) * nblock);

        float max = 0;
        for (int j = 0; j < n_per_row; ++j) max = iqk_std_max(max, fabsf(src[j]));
        store_block(yr, &max, 4);
        float thresh = 0.5f*max;

        int8_t L[QK_IQ1BN];
        for (int ib = 0; ib < nblock; ++ib) {
            const float * xb = src + QK_IQ1BN*ib;
            for (int j = 0; j < QK_IQ1BN; ++j) {
                L[j] = fabsf(xb[j]) < thresh ? 1 : xb[j] < 0 ? 0 : 2;
            }
            block_iq2_bn blk;
            for (int j = 0; j < Nj; ++j) {
                blk.qs[j] = L[j] | (L[j + Nj] << 2) | (L[j + 2*Nj] << 4) | (L[j + 3*Nj] << 6);
            }
            store_block(yr + 4 + (int64_t) sizeof(block_iq2_bn) * ib, &blk, (int) sizeof(block_iq2_bn));
        }
    }
}
