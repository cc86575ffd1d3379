// ik_llama.cpp's own algorithms for mainline types (ik_llama.cpp ggml/src/ggml-quants.c, MIT
// licence), plus its Q6_0: ik's versions of the scale searches (make_qx_quants with a greedy
// descent, make_qkx2_quants degenerate below 1e-10, make_qkx3_quants with double sums and a
// descent, make_qp_quants zero below 1e-16) and the quantizers that call them. ik_llama.cpp is
// built with -ffp-contract=off; float stays float and double stays double as in its C.
// One block (or super-block) per thread: nothing carries from one block to the next; the legacy
// types' sigma2 (sum of x^2 over the row / n_per_row) comes from the row pre-pass (aux).
#pragma once

// NaN as x86 makes it. A GPU's invalid operation (0/0) gives the canonical NaN 0x7FFFFFFF and
// arithmetic on a NaN gives that again; x86 gives the "default NaN" 0xFFC00000 (negative), and
// its sign reaches the bytes through GGML_FP32_TO_FP16. ik's unguarded divisions (make_qp_quants'
// sumlx/suml2, the IQ4 search's sumqx/sumq2) are 0/0 on blocks whose imatrix is all zero, so
// their results pass through ik_x86_nan; and nearest_int of x86's default NaN is 0 whatever its
// sign (the mantissa bits are 0x400000), which nearest_int_ik gives for every NaN.
QDEV float ik_x86_nan(float v) { return v != v ? QBITS_U2F(0xFFC00000u) : v; }
QDEV int nearest_int_ik(float v) { return v != v ? 0 : nearest_int(v); }

// ---- ik's searches (ggml-quants.c of ik_llama.cpp)

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
    float min = x[0];
    float max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max - min < 1e-10f) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax/(max - min);
    float scale = 1/iscale;
    float best_mad = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int_ik(iscale*(x[i] - min));
        L[i] = MAX(0, MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        float w = weights[i];
        best_mad += w * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta*is + nmax)/(max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int_ik(iscale*(x[i] - min));
            l = MAX(0, MIN(nmax, l));
            Laux[i] = l;
            float w = weights[i];
            sum_l += w*l;
            sum_l2 += w*l*l;
            sum_xl += w*l*x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l)/D;
            float this_min   = (sum_l2 * sum_x - sum_l * sum_xl)/D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float mad = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                float w = weights[i];
                mad += w * diff;
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
    *the_min = -min;
    return scale;
}

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
    float max = 0;
    for (int i = 0; i < n; ++i) {
        max = MAX(max, x[i]);
    }
    if (max < 1e-16f) { // all zero
        for (int i = 0; i < n; ++i) { L[i] = 0; }
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; ++i) {
        L[i] = nearest_int_ik(iscale * x[i]);
    }
    float scale = 1/iscale;
    float best_mse = 0;
    for (int i = 0; i < n; ++i) {
        float diff = x[i] - scale*L[i];
        float w = quant_weights[i];
        best_mse += w*diff*diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        float iscale_is = (0.1f*is + nmax)/max;
        float scale_is = 1/iscale_is;
        float mse = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int_ik(iscale_is*x[i]);
            l = MIN(nmax, l);
            float diff = x[i] - scale_is*l;
            float w = quant_weights[i];
            mse += w*diff*diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int_ik(iscale * x[i]);
        l = MIN(nmax, l);
        L[i] = l;
        float w = quant_weights[i];
        sumlx += w*x[i]*l;
        suml2 += w*l*l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float w = quant_weights[i];
            float slx = sumlx - w*x[i]*L[i];
            float sl2 = suml2 - w*L[i]*L[i];
            if (slx > 0 && sl2 > 0) {
                int new_l = nearest_int_ik(x[i] * sl2 / slx);
                new_l = MIN(nmax, new_l);
                if (new_l != L[i]) {
                    slx += w*x[i]*new_l;
                    sl2 += w*new_l*new_l;
                    if (slx*slx*suml2 > sumlx*sumlx*sl2) {
                        L[i] = new_l; sumlx = slx; suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) {
            break;
        }
    }
    return ik_x86_nan(sumlx/suml2);
}

// ---- Q4_K / Q5_K: quantize_row_q{4,5}_K_ref and quantize_row_q{4,5}_K_impl of ik_llama.cpp, one super-block

QDEV void kq45_scales_and_L_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights, int nmax,
                               ggml_half * GGML_RESTRICT y_d, ggml_half * GGML_RESTRICT y_dmin,
                               uint8_t * GGML_RESTRICT y_scales, uint8_t * GGML_RESTRICT L) {
    uint8_t Laux[32];
    float   weights[32];
    float   mins[QK_K/32];
    float   scales[QK_K/32];
    if (!quant_weights) {  // quantize_row_q4_K_ref / quantize_row_q5_K_ref
        const float rmin = nmax == 15 ? -1.f : -0.5f;
        const int nstep = nmax == 15 ? 20 : 15;
        float max_scale = 0; // as we are deducting the min, scales are always positive
        float max_min = 0;
        for (int j = 0; j < QK_K/32; ++j) {
            float sum_x2 = 0;
            for (int l = 0; l < 32; ++l) sum_x2 += x[32*j + l] * x[32*j + l];
            float av_x = sqrtf(sum_x2/32);
            for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32*j + l]);
            scales[j] = make_qkx2_quants_ik(32, nmax, x + 32*j, weights, L + 32*j, &mins[j], Laux, rmin, 0.1f, nstep, false);
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
            uint8_t ls = nearest_int_ik(inv_scale*scales[j]);
            uint8_t lm = nearest_int_ik(inv_min*mins[j]);
            ls = MIN(63, ls);
            lm = MIN(63, lm);
            kq45_pack_scales(y_scales, j, ls, lm);
        }
        *y_d = GGML_FP32_TO_FP16(max_scale/63.f);
        *y_dmin = GGML_FP32_TO_FP16(max_min/63.f);
    } else {  // quantize_row_q4_K_impl / quantize_row_q5_K_impl (quant_weights: this super-block's)
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
            scales[j] = make_qkx3_quants_ik(32, nmax, x + 32*j, weights, L + 32*j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
        }

        float d_block = make_qp_quants_ik(QK_K/32, 63, scales, Ls, sw);
        float m_block = make_qp_quants_ik(QK_K/32, 63, mins,   Lm, sw);
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
            int l = nearest_int_ik((x[32*j + ii] + dm)/d);
            l = MAX(0, MIN(nmax, l));
            L[32*j + ii] = l;
        }
    }
}

QDEV void q4_K_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q4_K * GGML_RESTRICT y, float unused) {
    (void) unused;
    uint8_t L[QK_K];
    kq45_scales_and_L_ik(x, quant_weights, 15, &y->d, &y->dmin, y->scales, L);
    uint8_t * q = y->qs;
    for (int j = 0; j < QK_K; j += 64) {
        for (int l = 0; l < 32; ++l) q[l] = L[j + l] | (L[j + l + 32] << 4);
        q += 32;
    }
}
QTOOL_ROW_KERNEL(q4_K_ik, QK_K, block_q4_K, q4_K_block_ik)

QDEV void q5_K_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q5_K * GGML_RESTRICT y, float unused) {
    (void) unused;
    uint8_t L[QK_K];
    kq45_scales_and_L_ik(x, quant_weights, 31, &y->d, &y->dmin, y->scales, L);

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
    (void) unused;
    int8_t L[QK_K];
    float scales[QK_K / 16];
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

        scales[j] = make_qx_quants_ik(16, 4, x + 16*j, L + 16*j, 1, weight);
    }

    memset(y->scales, 0, 12);

    float d_block = make_qx_quants_ik(QK_K/16, 32, scales, Ls, 1, sw);
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

    int8_t sc;
    for (int j = 0; j < QK_K/16; ++j) {
        sc = j < 8 ? y->scales[j] & 0xF : y->scales[j-8] >> 4;
        sc = (sc | (((y->scales[8 + j%4] >> (2*(j/4))) & 3) << 4)) - 32;
        float d = GGML_FP16_TO_FP32(y->d) * sc;
        if (!d) {
            continue;
        }
        for (int ii = 0; ii < 16; ++ii) {
            int l = nearest_int_ik(x[16*j + ii]/d);
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
QTOOL_ROW_KERNEL(q3_K_ik, QK_K, block_q3_K, q3_K_block_ik)

// ---- Q6_K: mainline's quantize_row_q6_K_ref / _impl with ik's make_qx_quants, one super-block

QDEV void q6_K_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
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
            scale = make_qx_quants_ik(16, 32, x + 16*ib, L + 16*ib, 1, qw);
        } else {
            scale = make_qx_quants_ik(16, 32, x + 16*ib, L + 16*ib, 1, (const float *) 0);
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
        y->scales[ib] = MIN(127, nearest_int_ik(iscale*scales[ib]));
    }

    for (int j = 0; j < QK_K/16; ++j) {
        float d = GGML_FP16_TO_FP32(y->d) * y->scales[j];
        if (!d) {
            continue;
        }
        for (int ii = 0; ii < 16; ++ii) {
            int l = nearest_int_ik(x[16*j + ii]/d);
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
QTOOL_ROW_KERNEL(q6_K_ik, QK_K, block_q6_K, q6_K_block_ik)

// ---- legacy types with an imatrix: ik's quantize_row_q{4,5}_{0,1}_impl, one block
// (sigma2: the row's sum_x2 / n_per_row from the row pre-pass). Without an imatrix ik runs
// mainline's quantize_row_q*_ref (mainline's kernels serve that variant).

QDEV void q4_0_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q4_0 * GGML_RESTRICT y, float sigma2) {
    float weight[QK4_0];
    int8_t L[QK4_0];
    for (int j = 0; j < QK4_0; ++j) weight[j] = quant_weights[j] * sqrtf(sigma2 + x[j]*x[j]);
    float d = make_qx_quants_ik(QK4_0, 8, x, L, 1, weight);
    y->d = GGML_FP32_TO_FP16(d);
    for (int j = 0; j < 16; ++j) {
        y->qs[j] = L[j] | (L[j+16] << 4);
    }
}
QTOOL_ROW_KERNEL(q4_0_ik, QK4_0, block_q4_0, q4_0_block_ik)

QDEV void q4_1_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q4_1 * GGML_RESTRICT y, float sigma2) {
    float weight[QK4_1];
    uint8_t L[QK4_1], Laux[QK4_1];
    for (int j = 0; j < QK4_1; ++j) weight[j] = quant_weights[j] * sqrtf(sigma2 + x[j]*x[j]);
    float min;
    float d = make_qkx3_quants_ik(QK4_1, 15, x, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
    y->d = GGML_FP32_TO_FP16(d);
    y->m = GGML_FP32_TO_FP16(-min);
    for (int j = 0; j < 16; ++j) {
        y->qs[j] = L[j] | (L[j+16] << 4);
    }
}
QTOOL_ROW_KERNEL(q4_1_ik, QK4_1, block_q4_1, q4_1_block_ik)

QDEV void q5_0_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q5_0 * GGML_RESTRICT y, float sigma2) {
    float weight[QK5_0];
    int8_t L[QK5_0];
    for (int j = 0; j < QK5_0; ++j) weight[j] = quant_weights[j] * sqrtf(sigma2 + x[j]*x[j]);
    float d = make_qx_quants_ik(QK5_0, 16, x, L, 1, weight);
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
QTOOL_ROW_KERNEL(q5_0_ik, QK5_0, block_q5_0, q5_0_block_ik)

QDEV void q5_1_block_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_q5_1 * GGML_RESTRICT y, float sigma2) {
    float weight[QK5_1];
    uint8_t L[QK5_1], Laux[QK5_1];
    for (int j = 0; j < QK5_1; ++j) weight[j] = quant_weights[j] * sqrtf(sigma2 + x[j]*x[j]);
    float min;
    float d = make_qkx3_quants_ik(QK5_1, 31, x, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
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
            sumqx = sumq2 = 0;
            for (int j = 0; j < block_size; ++j) {
                float al = id*xb[j];
                int l = iqk_best_index_iq4nl(values, al);
                float q = values[l];
                float w = weight[j];
                sumqx += w*q*xb[j];
                sumq2 += w*q*q;
            }
            if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {
                d = sumqx/sumq2; best = d * sumqx;
                best_sumqx = sumqx; best_sumq2 = sumq2;
                for (int j = 0; j < block_size; ++j) {
                    float al = id*xb[j];
                    Lb[j] = iqk_best_index_iq4nl(values, al);
                }
            }
            id = (itry + values[15])/max;
            sumqx = sumq2 = 0;
            for (int j = 0; j < block_size; ++j) {
                float al = id*xb[j];
                int l = iqk_best_index_iq4nl(values, al);
                float q = values[l];
                float w = weight[j];
                sumqx += w*q*xb[j];
                sumq2 += w*q*q;
            }
            if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {
                d = sumqx/sumq2; best = d * sumqx;
                best_sumqx = sumqx; best_sumq2 = sumq2;
                for (int j = 0; j < block_size; ++j) {
                    float al = id*xb[j];
                    Lb[j] = iqk_best_index_iq4nl(values, al);
                }
            }
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
