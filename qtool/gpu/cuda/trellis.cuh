// ik_llama.cpp's trellis types (ggml/src/iqk/iqk_quantize.cpp, MIT licence, Iwan Kawrakow):
// QuantizerIQKT (set_values, set_weights, find_best_match, find_best_scale) and
// quantize_row_iq{2,3,4,1}_kt_impl, one thread per row (the row scale comes from all blocks).
// ik's reference build has AVX2 + FMA with -ffp-contract=off: find_best_match is the AVX2 lane
// search (8 lanes, each keeping its first minimum, then the first best lane; scores summed in
// hsum_float_8x8 / hsum_float_4x8 order), find_best_scale accumulates with _mm256_fmadd_ps per
// lane (fmaf here) then hsum_float_8. Reproduced in scalar code, exactly.
// Tables (qtool/gpu/tables.py, from qtool.quants.ik.trellis_tables): per quantizer the cluster
// offsets (start), member indices, the members' trellis values as int8 (all are integers in
// -126..126) and m_mid (cluster bits of groups of 8).
// Scratch between the passes: C's all_idx / all_scales / all_weights live in the output row
// (indices parked where the final indices go), weights are recomputed per super-block (they
// depend on the super-block only), block scales are recomputed from the parked indices
// (find_best_scale of the chosen indices is the scale C stored).
#pragma once

#define KT_BLOCK 32
#define KT_NBLOCK (QK_K/KT_BLOCK)
#define KT_INF QBITS_U2F(0x7f800000u)

QTABLE(int32_t, kt_iq2_start)
QTABLE(int32_t, kt_iq2_members)
QTABLE(int8_t, kt_iq2_mvals)
QTABLE(float, kt_iq2_mid)

// set_values (is_int, scale 1): the trellis value k of index i.
QDEV void kt_values8(uint32_t i, float * r, int group, bool is_abs, uint32_t offset) {
    uint32_t x = i + offset;
    for (int k = 0; k < group; ++k) {
        x = 0xCBAC1FEDu*x;
        const uint32_t s = x & 0x3f3f3f3fu;
        const int sum = (int)(s & 0xff) + (int)((s >> 8) & 0xff) + (int)((s >> 16) & 0xff) + (int)(s >> 24);
        const float v = sum - 126.f;
        r[k] = is_abs ? fabsf(v) : v;
    }
}

// std::max(a, b) on floats
QDEV float kt_max(float a, float b) { return (a < b) ? b : a; }

// QuantizerIQKT::set_weights for one super-block (sigma2_scale 2); qw: its imatrix part or null.
QDEV void kt_weights(const float * GGML_RESTRICT xbl, const float * GGML_RESTRICT qw, float * GGML_RESTRICT wbl) {
    const float kEps2 = 1e-14f;
    const float kWeight = 1e-4f;
    float sumx2 = 0;
    for (int j = 0; j < QK_K; ++j) sumx2 += xbl[j]*xbl[j];
    if (sumx2 < kEps2*QK_K) {
        for (int j = 0; j < QK_K; ++j) wbl[j] = kWeight;
        return;
    }
    const float sigma2 = 2.0f*sumx2/QK_K;
    if (qw) {
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * q = qw + ib*KT_BLOCK;
            const float * xb = xbl + ib*KT_BLOCK;
            float * wb = wbl + ib*KT_BLOCK;
            float sumwx = 0, sumw2 = 0, sx2 = 0;
            for (int j = 0; j < KT_BLOCK; ++j) {
                wb[j] = q[j] * sqrtf(sigma2 + xb[j]*xb[j]);
                sumwx += wb[j]*fabsf(xb[j]);
                sumw2 += wb[j]*wb[j];
                sx2 += xb[j]*xb[j];
            }
            if (sx2 < kEps2 || sumw2 < kEps2 || sumwx < kEps2) {
                for (int j = 0; j < KT_BLOCK; ++j) wb[j] = kWeight;
            }
        }
    } else {
        for (int j = 0; j < QK_K; ++j) wbl[j] = 0.25f*sigma2 + xbl[j]*xbl[j];
    }
}

// hsum_float_8 / a lane of hsum_float_8x8
QDEV float kt_hsum8(const float * v) {
    return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

// One lane of the AVX2 search: mask = score < vbest (ordered); vbest = _mm256_min_ps(vbest, score).
QDEV void kt_lane_update(float score, int idx, float * vbest, int * bidx) {
    if (score < *vbest) *bidx = idx;
    *vbest = (*vbest < score) ? *vbest : score;
}

// QuantizerIQKT<32, 8, ...>::find_best_match (AVX2, 256 clusters by sign bits against m_mid).
QDEV void kt_find_best_match8(const int32_t * GGML_RESTRICT start, const int32_t * GGML_RESTRICT members,
                              const int8_t * GGML_RESTRICT mvals, const float * GGML_RESTRICT mid,
                              float d, const float * GGML_RESTRICT xb, const float * GGML_RESTRICT weight,
                              int * GGML_RESTRICT best_idx) {
    if (!d) {
        for (int l = 0; l < KT_BLOCK/8; ++l) best_idx[l] = 0;
        return;
    }
    const float id = 1/d;
    for (int l = 0; l < KT_BLOCK/8; ++l) {
        const float * xl = xb + 8*l;
        const float * wl = weight + 8*l;
        float vx[8], vw[8];
        int u = 0;
        for (int k = 0; k < 8; ++k) {
            vx[k] = id*xl[k];
            vw[k] = wl[k];
            if (vx[k] > mid[k]) u |= (1 << k);
        }
        const int p0 = start[u], p1 = start[u + 1];
        float vbest[8];
        int bidx[8];
        for (int i = 0; i < 8; ++i) { vbest[i] = KT_INF; bidx[i] = -1; }
        for (int j = p0; j < p1; j += 8) {
            for (int i = 0; i < 8; ++i) {
                const int8_t * q = mvals + 8*(int64_t)(j + i);
                float s[8];
                for (int k = 0; k < 8; ++k) {
                    const float diff = (float)q[k] - vx[k];
                    s[k] = vw[k]*(diff*diff);
                }
                kt_lane_update(kt_hsum8(s), j - p0 + i, &vbest[i], &bidx[i]);
            }
        }
        float best = KT_INF;
        int jbest = -1;
        for (int i = 0; i < 8; ++i) {
            if (vbest[i] < best) { best = vbest[i]; jbest = bidx[i]; }
        }
        best_idx[l] = jbest < 0 ? 0 : members[p0 + jbest];  // (jbest < 0: GGML_ASSERT in C)
    }
}

// QuantizerIQKT::find_best_scale (AVX2 + FMA) on a block's 32 trellis values q:
// *dd = sumqx/sumq2, *sc = sumqx*sumqx/sumq2 ((0, 0) where sumq2 <= 0).
QDEV void kt_find_best_scale(const float * GGML_RESTRICT xb, const float * GGML_RESTRICT weight,
                             const float * GGML_RESTRICT q, float * dd, float * sc) {
    float vqx[8], vq2[8];
    for (int k = 0; k < 8; ++k) { vqx[k] = 0; vq2[k] = 0; }
    for (int l = 0; l < KT_BLOCK; l += 8) {
        for (int k = 0; k < 8; ++k) {
            const float vqw = q[l + k]*weight[l + k];
            vqx[k] = fmaf(vqw, xb[l + k], vqx[k]);
            vq2[k] = fmaf(vqw, q[l + k], vq2[k]);
        }
    }
    const float sumqx = kt_hsum8(vqx);
    const float sumq2 = kt_hsum8(vq2);
    if (sumq2 > 0) { *dd = sumqx/sumq2; *sc = sumqx*sumqx/sumq2; }
    else { *dd = 0.f; *sc = 0.f; }
}

// The 32 trellis values of a block's indices (groups of `group`).
QDEV void kt_block_values(const int * GGML_RESTRICT idx, float * GGML_RESTRICT q, int group, bool is_abs,
                          uint32_t offset) {
    for (int l = 0; l < KT_BLOCK/group; ++l) kt_values8((uint32_t) idx[l], q + group*l, group, is_abs, offset);
}

QDEV float kt_block_amax(const float * xb) {
    float amax = 0;
    for (int j = 0; j < KT_BLOCK; ++j) amax = kt_max(amax, fabsf(xb[j]));
    return amax;
}

QDEV void kt_store_f32(uint8_t * dst, float v) {
    uint16_t h[2];
    memcpy(h, &v, 4);
    store_block(dst, h, 4);
}

// One block's share of the 19 trial row scales tid[] of IQ2_KT / IQ1_KT (the level of a block:
// iq4k_values[best_index(tid*scale)]) and IQ3_KT (iq3: nearest_int(tid*scale) clamped to 0..15,
// on |x|); each trial's sums continue along the row in C's order.
QDEV void kt_trials_add(const float * GGML_RESTRICT tid, float scale, const float * GGML_RESTRICT xb,
                        const float * GGML_RESTRICT wb, const float * GGML_RESTRICT qv, bool iq3,
                        float * GGML_RESTRICT tsumqx, float * GGML_RESTRICT tsumq2) {
    for (int t = 0; t < 19; ++t) {
        float dl;
        if (iq3) {
            int ls = nearest_int(tid[t]*scale);
            ls = MAX(0, MIN(15, ls));
            dl = ls;
        } else {
            const int ls = iqk_best_index_iq4nl(iqk_iq4k_values, tid[t]*scale);
            dl = iqk_iq4k_values[ls];
        }
        float sumqx = tsumqx[t], sumq2 = tsumq2[t];
        for (int j = 0; j < KT_BLOCK; ++j) {
            const float q = dl*qv[j];
            sumqx += wb[j]*(iq3 ? fabsf(xb[j]) : xb[j])*q;
            sumq2 += wb[j]*q*q;
        }
        tsumqx[t] = sumqx; tsumq2[t] = sumq2;
    }
}

// C's itry loop over the 19 trials' row sums: d and best as C updates them.
QDEV void kt_trials_best(const float * GGML_RESTRICT tsumqx, const float * GGML_RESTRICT tsumq2, float * d, float * best) {
    for (int t = 0; t < 19; ++t) {
        const float sumqx = tsumqx[t], sumq2 = tsumq2[t];
        if (sumq2 > 0 && sumqx*sumqx > *best*sumq2) {
            *d = sumqx/sumq2; *best = *d*sumqx;
        }
    }
}

#define KT_ROW_KERNEL(NAME, BLOCK_BYTES, ROWFN)                                                     \
    QKERNEL void quantize_##NAME(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw,    \
                                 uint8_t * GGML_RESTRICT y, const float * GGML_RESTRICT aux,       \
                                 int64_t nrows, int64_t n_per_row) {                               \
        (void) aux;                                                                                \
        QFOR(row, nrows) {                                                                         \
            const int64_t row_bytes = 4 + (n_per_row / QK_K) * (int64_t) (BLOCK_BYTES);            \
            ROWFN(x + row * n_per_row, qw, y + row * row_bytes, (int) n_per_row);                  \
        }                                                                                          \
    }

// ---- IQ2_KT -----------------------------------------------------------------------------------

typedef struct {
    uint8_t  scales[QK_K/64];
    uint16_t ql[QK_K/8];
} block_kt_iq2;

// A block's scale after the first pass (C's all_scales[ib]): 0 for a skipped block, else
// find_best_scale of the kept indices (idx).
QDEV float kt_iq2_scale(const float * xb, const float * weight, const int * idx) {
    if (kt_block_amax(xb) < 1e-16f) return 0.0f;
    float q[KT_BLOCK], dd, sc;
    kt_block_values(idx, q, 8, false, 4096);
    kt_find_best_scale(xb, weight, q, &dd, &sc);
    return dd;
}

// quantize_row_iq2_kt_impl; cy: the row's bytes (float d, then the blocks).
QDEV void kt_iq2_kt_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        uint8_t * GGML_RESTRICT cy, int n_per_row) {
    const int nblock = n_per_row/QK_K;
    uint8_t * yb = cy + 4;
    float weight[QK_K];
    int best_idx[2*(KT_BLOCK/8)];

    float amax_row = 0;
    for (int j = 0; j < n_per_row; ++j) amax_row = kt_max(amax_row, fabsf(x[j]));

    float amax_scale = 0, max_scale = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq2 blk;
        memset(&blk, 0, sizeof(blk));
        const float * xbl = x + ibl*QK_K;
        kt_weights(xbl, quant_weights ? quant_weights + ibl*QK_K : 0, weight);
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * xb = xbl + KT_BLOCK*ib;
            const float * wb = weight + KT_BLOCK*ib;
            const float amax = kt_block_amax(xb);
            if (amax < 1e-16f) continue;  // all_idx 0 (blk is zeroed), scale 0
            const float scale_0 = kt_max(90.f, 124.f*amax/amax_row);
            float q[KT_BLOCK], dp, score_p, dm, score_m;
            kt_find_best_match8(kt_iq2_start, kt_iq2_members, kt_iq2_mvals, kt_iq2_mid, amax/scale_0, xb, wb, best_idx);
            kt_block_values(best_idx, q, 8, false, 4096);
            kt_find_best_scale(xb, wb, q, &dp, &score_p);
            kt_find_best_match8(kt_iq2_start, kt_iq2_members, kt_iq2_mvals, kt_iq2_mid, -amax/scale_0, xb, wb, best_idx + 4);
            kt_block_values(best_idx + 4, q, 8, false, 4096);
            kt_find_best_scale(xb, wb, q, &dm, &score_m);
            const int * idx = best_idx;
            float s;
            if (score_p > score_m) s = dp;
            else { s = dm; idx += 4; }
            for (int ig = 0; ig < 4; ++ig) blk.ql[4*ib + ig] = (uint16_t) idx[ig];
            const float abs_scale = fabsf(s);
            if (abs_scale > amax_scale) {
                amax_scale = abs_scale;
                max_scale = s;
            }
        }
        store_block(yb + ibl*(int64_t)sizeof(block_kt_iq2), &blk, (int) sizeof(block_kt_iq2));
    }

    if (!max_scale) {
        block_kt_iq2 z;
        memset(&z, 0, sizeof(z));
        for (int ibl = 0; ibl < nblock; ++ibl) store_block(yb + ibl*(int64_t)sizeof(z), &z, (int) sizeof(z));
        kt_store_f32(cy, 0.0f);
        return;
    }

    // the 19 trial row scales: each trial's sums run along the row in C's order; all 19 are
    // accumulated in one sweep (the updates of d, best follow in C's itry order)
    float d = max_scale/iqk_iq4k_values[0];
    float best = 0;
    float tsumqx[19], tsumq2[19], tid[19];
    for (int t = 0; t < 19; ++t) {
        tsumqx[t] = 0; tsumq2[t] = 0;
        tid[t] = ((t - 9) + iqk_iq4k_values[0])/max_scale;
    }
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq2 blk;
        iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(blk), (int) sizeof(blk));
        const float * xbl = x + ibl*QK_K;
        kt_weights(xbl, quant_weights ? quant_weights + ibl*QK_K : 0, weight);
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * xb = xbl + KT_BLOCK*ib;
            const float * wb = weight + KT_BLOCK*ib;
            int idx[4];
            for (int ig = 0; ig < 4; ++ig) idx[ig] = blk.ql[4*ib + ig];
            const float scale = kt_iq2_scale(xb, wb, idx);
            float qv[KT_BLOCK];
            kt_block_values(idx, qv, 8, false, 4096);
            kt_trials_add(tid, scale, xb, wb, qv, false, tsumqx, tsumq2);
        }
    }
    kt_trials_best(tsumqx, tsumq2, &d, &best);

    const float id = d ? 1/d : 0.f;
    float sumqx = 0, sumq2 = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq2 blk;
        iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(blk), (int) sizeof(blk));
        const float * xbl = x + ibl*QK_K;
        kt_weights(xbl, quant_weights ? quant_weights + ibl*QK_K : 0, weight);
        float scales[KT_NBLOCK];
        int prev[KT_NBLOCK][4];
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            for (int ig = 0; ig < 4; ++ig) prev[ib][ig] = blk.ql[4*ib + ig];
            scales[ib] = kt_iq2_scale(xbl + KT_BLOCK*ib, weight + KT_BLOCK*ib, prev[ib]);
        }
        for (int ib = 0; ib < KT_NBLOCK/2; ++ib) {
            const int ls1 = iqk_best_index_iq4nl(iqk_iq4k_values, id*scales[ib]);
            const int ls2 = iqk_best_index_iq4nl(iqk_iq4k_values, id*scales[ib + KT_NBLOCK/2]);
            blk.scales[ib] = (uint8_t)(ls1 | (ls2 << 4));
        }
        if (!d) {  // C returns with ql still zero
            for (int j = 0; j < QK_K/8; ++j) blk.ql[j] = 0;
            store_block(yb + ibl*(int64_t)sizeof(blk), &blk, (int) sizeof(blk));
            continue;
        }
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * xb = xbl + KT_BLOCK*ib;
            const float * wb = weight + KT_BLOCK*ib;
            const int ls = iqk_iq4k_values[(blk.scales[ib%(KT_NBLOCK/2)] >> 4*(ib/(KT_NBLOCK/2))) & 0xf];
            const float dl = d*ls;
            kt_find_best_match8(kt_iq2_start, kt_iq2_members, kt_iq2_mvals, kt_iq2_mid, dl, xb, wb, best_idx);
            float q1[KT_BLOCK], q2[KT_BLOCK];
            kt_block_values(prev[ib], q1, 8, false, 4096);
            kt_block_values(best_idx, q2, 8, false, 4096);
            float mse1 = 0, mse2 = 0;
            for (int jj = 0; jj < KT_BLOCK; ++jj) {
                const float diff1 = xb[jj] - dl*q1[jj];
                const float diff2 = xb[jj] - dl*q2[jj];
                mse1 += wb[jj]*diff1*diff1;
                mse2 += wb[jj]*diff2*diff2;
            }
            const float * qb = q2;
            if (mse1 < mse2) {
                for (int ig = 0; ig < 4; ++ig) best_idx[ig] = prev[ib][ig];
                qb = q1;
            }
            for (int j = 0; j < 4; ++j) {
                blk.ql[4*ib + j] = (uint16_t) best_idx[j];
                for (int k = 0; k < 8; ++k) {
                    const float q = qb[8*j + k]*ls;
                    sumqx += wb[8*j + k]*xb[8*j + k]*q;
                    sumq2 += wb[8*j + k]*q*q;
                }
            }
        }
        store_block(yb + ibl*(int64_t)sizeof(blk), &blk, (int) sizeof(blk));
    }
    if (d && sumq2 > 0) d = sumqx/sumq2;
    kt_store_f32(cy, d);
}

KT_ROW_KERNEL(iq2_kt, sizeof(block_kt_iq2), kt_iq2_kt_row)

// ---- IQ3_KT -----------------------------------------------------------------------------------

QTABLE(int32_t, kt_iq3_start)
QTABLE(int32_t, kt_iq3_members)
QTABLE(int8_t, kt_iq3_mvals)
QTABLE(float, kt_iq3_mid)

typedef struct {
    uint8_t  scales[QK_K/64];
    uint16_t ql[QK_K/8];
    uint8_t  qh[QK_K/8];
} block_kt_iq3;

// A block's all_scales[ib] after the first pass: 0 for a skipped block, else find_best_scale of
// the kept indices on |x|.
QDEV float kt_iq3_scale(const float * xaux, const float * weight, const int * idx) {
    if (kt_block_amax(xaux) < 1e-16f) return 0.0f;
    float q[KT_BLOCK], dd, sc;
    kt_block_values(idx, q, 8, true, 4096);
    kt_find_best_scale(xaux, weight, q, &dd, &sc);
    return dd;
}

// quantize_row_iq3_kt_impl; cy: the row's bytes (float d, then the blocks). C's qtmp (the kept
// trellis values) is recomputed from the parked indices; a skipped block has scale 0 so its
// (stale in C) values only ever meet ls = 0.
QDEV void kt_iq3_kt_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        uint8_t * GGML_RESTRICT cy, int n_per_row) {
    const int nblock = n_per_row/QK_K;
    uint8_t * yb = cy + 4;
    float weight[QK_K];
    float xaux[KT_BLOCK];
    int best_idx[2*(KT_BLOCK/8)];

    float amax_row = 0;
    for (int j = 0; j < n_per_row; ++j) amax_row = kt_max(amax_row, fabsf(x[j]));
    if (!amax_row) {
        block_kt_iq3 z;
        memset(&z, 0, sizeof(z));
        for (int ibl = 0; ibl < nblock; ++ibl) store_block(yb + ibl*(int64_t)sizeof(z), &z, (int) sizeof(z));
        kt_store_f32(cy, 0.0f);
        return;
    }

    float amax_scale = 0, max_scale = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq3 blk;
        memset(&blk, 0, sizeof(blk));
        const float * xbl = x + ibl*QK_K;
        kt_weights(xbl, quant_weights ? quant_weights + ibl*QK_K : 0, weight);
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * xb = xbl + KT_BLOCK*ib;
            const float * wb = weight + KT_BLOCK*ib;
            float amax = 0;
            for (int j = 0; j < KT_BLOCK; ++j) {
                const float ax = fabsf(xb[j]);
                xaux[j] = ax;
                amax = kt_max(amax, ax);
            }
            if (amax < 1e-16f) continue;
            const float scale_0 = kt_max(84.f, 123.f*amax/amax_row);
            float best = 0, s = 0;
            for (int itry = -3; itry <= 3; ++itry) {
                float q[KT_BLOCK], dd, score;
                kt_find_best_match8(kt_iq3_start, kt_iq3_members, kt_iq3_mvals, kt_iq3_mid,
                                    amax/(scale_0 + 8.0f*itry), xaux, wb, best_idx);
                kt_block_values(best_idx, q, 8, true, 4096);
                kt_find_best_scale(xaux, wb, q, &dd, &score);
                if (score > best) {
                    best = score;
                    s = dd;
                    for (int ig = 0; ig < 4; ++ig) best_idx[4 + ig] = best_idx[ig];
                }
            }
            // (no solution: GGML_ASSERT in C)
            for (int ig = 0; ig < 4; ++ig) blk.ql[4*ib + ig] = (uint16_t) best_idx[4 + ig];
            const float abs_scale = fabsf(s);
            if (abs_scale > amax_scale) {
                amax_scale = abs_scale;
                max_scale = s;
            }
        }
        store_block(yb + ibl*(int64_t)sizeof(block_kt_iq3), &blk, (int) sizeof(block_kt_iq3));
    }

    float d = max_scale/15;
    float best = 0;
    float tsumqx[19], tsumq2[19], tid[19];
    for (int t = 0; t < 19; ++t) {
        tsumqx[t] = 0; tsumq2[t] = 0;
        tid[t] = ((t - 9)*0.2f + 15)/max_scale;
    }
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq3 blk;
        iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(blk), (int) sizeof(blk));
        const float * xbl = x + ibl*QK_K;
        kt_weights(xbl, quant_weights ? quant_weights + ibl*QK_K : 0, weight);
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * xb = xbl + KT_BLOCK*ib;
            const float * wb = weight + KT_BLOCK*ib;
            for (int j = 0; j < KT_BLOCK; ++j) xaux[j] = fabsf(xb[j]);
            int idx[4];
            for (int ig = 0; ig < 4; ++ig) idx[ig] = blk.ql[4*ib + ig];
            const float scale = kt_iq3_scale(xaux, wb, idx);
            float qb[KT_BLOCK];
            kt_block_values(idx, qb, 8, true, 4096);
            kt_trials_add(tid, scale, xb, wb, qb, true, tsumqx, tsumq2);
        }
    }
    kt_trials_best(tsumqx, tsumq2, &d, &best);

    const float id = d ? 1/d : 0.f;
    float sumqx = 0, sumq2 = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq3 blk;
        iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(blk), (int) sizeof(blk));
        const float * xbl = x + ibl*QK_K;
        kt_weights(xbl, quant_weights ? quant_weights + ibl*QK_K : 0, weight);
        float scales[KT_NBLOCK];
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            int idx[4];
            for (int ig = 0; ig < 4; ++ig) idx[ig] = blk.ql[4*ib + ig];
            for (int j = 0; j < KT_BLOCK; ++j) xaux[j] = fabsf(xbl[KT_BLOCK*ib + j]);
            scales[ib] = kt_iq3_scale(xaux, weight + KT_BLOCK*ib, idx);
        }
        for (int ib = 0; ib < KT_NBLOCK/2; ++ib) {
            int ls1 = nearest_int(id*scales[ib]);
            int ls2 = nearest_int(id*scales[ib + KT_NBLOCK/2]);
            ls1 = MAX(0, MIN(15, ls1));
            ls2 = MAX(0, MIN(15, ls2));
            blk.scales[ib] = (uint8_t)(ls1 | (ls2 << 4));
        }
        for (int j = 0; j < QK_K/8; ++j) blk.qh[j] = 0;
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * xb = xbl + KT_BLOCK*ib;
            const float * wb = weight + KT_BLOCK*ib;
            for (int j = 0; j < KT_BLOCK; ++j) {
                xaux[j] = fabsf(xb[j]);
                if (xb[j] < 0) blk.qh[j] |= (uint8_t)(1 << ib);
            }
            const int ls = (blk.scales[ib%(KT_NBLOCK/2)] >> 4*(ib/(KT_NBLOCK/2))) & 0xf;
            const float dl = d*ls;
            kt_find_best_match8(kt_iq3_start, kt_iq3_members, kt_iq3_mvals, kt_iq3_mid, dl, xaux, wb, best_idx);
            float qv[KT_BLOCK];
            kt_block_values(best_idx, qv, 8, true, 4096);
            for (int j = 0; j < 4; ++j) {
                blk.ql[4*ib + j] = (uint16_t) best_idx[j];
                for (int k = 0; k < 8; ++k) {
                    const float q = qv[8*j + k]*ls;
                    sumqx += wb[8*j + k]*xaux[8*j + k]*q;
                    sumq2 += wb[8*j + k]*q*q;
                }
            }
        }
        store_block(yb + ibl*(int64_t)sizeof(blk), &blk, (int) sizeof(blk));
    }
    if (sumq2 > 0) d = sumqx/sumq2;
    kt_store_f32(cy, d);
}
KT_ROW_KERNEL(iq3_kt, sizeof(block_kt_iq3), kt_iq3_kt_row)

// ---- IQ4_KT -----------------------------------------------------------------------------------

QTABLE(int32_t, kt_iq4_start)
QTABLE(int32_t, kt_iq4_members)
QTABLE(int8_t, kt_iq4_mvals)
QTABLE(int32_t, kt_iq4o_start)
QTABLE(int32_t, kt_iq4o_members)
QTABLE(int8_t, kt_iq4o_mvals)

QDEV int kt_bin5(float x) {
    return x < -48.f ? 0 : x < -16.f ? 1 : x < 16.f ? 2 : x < 48.f ? 3 : 4;
}

// QuantizerIQKT<32, 4, ...>::find_best_match (AVX2, 625 clusters by bin5): lane L of the search
// holds members j + {0,2,4,6,1,3,5,7}[L] (add_idx), score (v0+v2)+(v1+v3) (hsum_float_4x8).
QDEV void kt_find_best_match4(const int32_t * GGML_RESTRICT start, const int32_t * GGML_RESTRICT members,
                              const int8_t * GGML_RESTRICT mvals,
                              float d, const float * GGML_RESTRICT xb, const float * GGML_RESTRICT weight,
                              int * GGML_RESTRICT best_idx) {
    if (!d) {
        for (int l = 0; l < KT_BLOCK/4; ++l) best_idx[l] = 0;
        return;
    }
    const float id = 1/d;
    for (int l = 0; l < KT_BLOCK/4; ++l) {
        const float * xl = xb + 4*l;
        const float * wl = weight + 4*l;
        float vx[4], vw[4];
        int u = 0, m = 1;
        for (int k = 0; k < 4; ++k) {
            vx[k] = id*xl[k];
            vw[k] = wl[k];
        }
        for (int k = 0; k < 4; ++k) { u += kt_bin5(vx[k])*m; m *= 5; }
        const int p0 = start[u], p1 = start[u + 1];
        float vbest[8];
        int bidx[8];
        for (int i = 0; i < 8; ++i) { vbest[i] = KT_INF; bidx[i] = -1; }
        for (int j = p0; j < p1; j += 8) {
            for (int lane = 0; lane < 8; ++lane) {
                const int pos = lane < 4 ? 2*lane : 2*(lane - 4) + 1;
                const int8_t * q = mvals + 4*(int64_t)(j + pos);
                float s[4];
                for (int k = 0; k < 4; ++k) {
                    const float diff = (float)q[k] - vx[k];
                    s[k] = vw[k]*(diff*diff);
                }
                kt_lane_update((s[0] + s[2]) + (s[1] + s[3]), j - p0 + pos, &vbest[lane], &bidx[lane]);
            }
        }
        float best = KT_INF;
        int jbest = -1;
        for (int i = 0; i < 8; ++i) {
            if (vbest[i] < best) { best = vbest[i]; jbest = bidx[i]; }
        }
        best_idx[l] = jbest < 0 ? 0 : members[p0 + jbest];  // (jbest < 0: GGML_ASSERT in C)
    }
}

typedef struct {
    uint32_t qs[QK_K/8];
} block_kt_iq4;

// find_best_match + find_best_scale with the first (offset 0) or second quantizer
QDEV void kt_iq4_try(bool second, float d, const float * xaux, const float * weight, float * dd, float * sc) {
    int idx[KT_BLOCK/4];
    float q[KT_BLOCK];
    if (second) kt_find_best_match4(kt_iq4o_start, kt_iq4o_members, kt_iq4o_mvals, d, xaux, weight, idx);
    else kt_find_best_match4(kt_iq4_start, kt_iq4_members, kt_iq4_mvals, d, xaux, weight, idx);
    kt_block_values(idx, q, 4, false, second ? 4096u + 32768u : 4096u);
    kt_find_best_scale(xaux, weight, q, dd, sc);
}

// quantize_row_iq4_kt_impl; cy: the row's bytes (float d, then the blocks). Between the passes
// a super-block's 8 block scales are parked in its ql bytes (written in pass 2 after they are
// read), the offset flags in bit 0 of qs[ib] as in C. A block whose trials all score 0 keeps
// scale 0 here (C: the previous row's stale all_scales entry; as the numpy engine).
QDEV void kt_iq4_kt_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        uint8_t * GGML_RESTRICT cy, int n_per_row) {
    const int nblock = n_per_row/QK_K;
    uint8_t * yb = cy + 4;
    float weight[QK_K];
    float xaux[KT_BLOCK];
    int best_idx[KT_BLOCK/4];

    float amax_row = 0;
    for (int j = 0; j < n_per_row; ++j) amax_row = kt_max(amax_row, fabsf(x[j]));
    if (!amax_row) {
        block_kt_iq4 z;
        memset(&z, 0, sizeof(z));
        for (int ibl = 0; ibl < nblock; ++ibl) store_block(yb + ibl*(int64_t)sizeof(z), &z, (int) sizeof(z));
        kt_store_f32(cy, 0.0f);
        return;
    }

    float amax_scale = 0, max_scale = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq4 blk;
        memset(&blk, 0, sizeof(blk));
        float scales[KT_NBLOCK];
        const float * xbl = x + ibl*QK_K;
        kt_weights(xbl, quant_weights ? quant_weights + ibl*QK_K : 0, weight);
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * wb = weight + ib*KT_BLOCK;
            float amax = 0;
            for (int j = 0; j < KT_BLOCK; ++j) {
                xaux[j] = xbl[ib*KT_BLOCK + j];
                const float ax = fabsf(xaux[j]);
                amax = kt_max(amax, ax);
            }
            scales[ib] = 0;
            if (amax < 1e-16f) continue;
            float best = 0;
            const float scale_0 = kt_max(90.f, 124.f*amax/amax_row);
            for (int itry = -2; itry <= 2; ++itry) {
                float dp, score_p, dm, score_m;
                kt_iq4_try(false, amax/(8.f*itry + scale_0), xaux, wb, &dp, &score_p);
                if (score_p > best) { best = score_p; scales[ib] = dp; }
                kt_iq4_try(false, -amax/(8.f*itry + scale_0), xaux, wb, &dm, &score_m);
                if (score_m > best) { best = score_m; scales[ib] = dm; }
            }
            {
                float dd, score;
                kt_iq4_try(true, scales[ib], xaux, wb, &dd, &score);
                if (score > best) {
                    scales[ib] = dd;
                    blk.qs[ib] = 1;
                }
            }
            bool with_offset = false;
            for (int itry = -2; itry <= 2; ++itry) {
                float dp, score_p, dm, score_m;
                kt_iq4_try(true, amax/(8.f*itry + scale_0), xaux, wb, &dp, &score_p);
                if (score_p > best) { best = score_p; scales[ib] = dp; with_offset = true; }
                kt_iq4_try(true, -amax/(8.f*itry + scale_0), xaux, wb, &dm, &score_m);
                if (score_m > best) { best = score_m; scales[ib] = dm; with_offset = true; }
            }
            if (with_offset) blk.qs[ib] = 1;
            const float abs_scale = fabsf(scales[ib]);
            if (abs_scale > amax_scale) {
                amax_scale = abs_scale;
                max_scale = scales[ib];
            }
        }
        memcpy(&blk.qs[KT_NBLOCK], scales, sizeof(scales));  // parked in ql
        store_block(yb + ibl*(int64_t)sizeof(blk), &blk, (int) sizeof(blk));
    }

    float d = -max_scale/64;
    if (!d) {  // C returns: the blocks hold only the offset flags
        for (int ibl = 0; ibl < nblock; ++ibl) {
            block_kt_iq4 blk;
            iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(blk), (int) sizeof(blk));
            for (int j = KT_NBLOCK; j < QK_K/8; ++j) blk.qs[j] = 0;
            store_block(yb + ibl*(int64_t)sizeof(blk), &blk, (int) sizeof(blk));
        }
        kt_store_f32(cy, d);
        return;
    }

    const float id = 1/d;
    float sumqx = 0, sumq2 = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq4 blk;
        iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(blk), (int) sizeof(blk));
        float scales[KT_NBLOCK];
        memcpy(scales, &blk.qs[KT_NBLOCK], sizeof(scales));
        uint32_t * shb = blk.qs;
        uint8_t bytes[96];  // ql (64) then qh (32)
        memset(bytes, 0, sizeof(bytes));
        uint8_t * ql = bytes;
        uint8_t * qh = bytes + 64;
        const float * xbl = x + ibl*QK_K;
        kt_weights(xbl, quant_weights ? quant_weights + ibl*QK_K : 0, weight);
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const bool second = shb[ib] & 1;
            const float * wb = weight + ib*KT_BLOCK;
            for (int j = 0; j < KT_BLOCK; ++j) xaux[j] = xbl[ib*KT_BLOCK + j];
            int ls = nearest_int(id*scales[ib]);
            ls = MIN(ls, 63);
            shb[ib] = (shb[ib] & 0xffffff00u) | (uint8_t)((((uint32_t)(ls + 64)) << 1) | (shb[ib] & 1));
            const float dl = d*ls;
            if (second) kt_find_best_match4(kt_iq4o_start, kt_iq4o_members, kt_iq4o_mvals, dl, xaux, wb, best_idx);
            else kt_find_best_match4(kt_iq4_start, kt_iq4_members, kt_iq4_mvals, dl, xaux, wb, best_idx);
            for (int j = 0; j < KT_BLOCK/4; ++j) {
                shb[ib] |= ((uint32_t)(best_idx[j] >> 12) << (8 + 3*j));
                ql[8*ib + j] = (uint8_t)(best_idx[j] & 255);
                qh[(8*ib + j)%32] |= (uint8_t)(((best_idx[j] >> 8) & 0xf) << 4*((8*ib + j)/32));
                float qv[4];
                kt_values8((uint32_t) best_idx[j], qv, 4, false, second ? 4096u + 32768u : 4096u);
                const float * xl = xaux + 4*j;
                const float * wl = wb + 4*j;
                for (int k = 0; k < 4; ++k) {
                    const float q = qv[k]*ls;
                    sumqx += wl[k]*xl[k]*q;
                    sumq2 += wl[k]*q*q;
                }
            }
        }
        memcpy(&blk.qs[KT_NBLOCK], bytes, sizeof(bytes));
        store_block(yb + ibl*(int64_t)sizeof(blk), &blk, (int) sizeof(blk));
    }
    if (sumq2 > 0) d = sumqx/sumq2;
    kt_store_f32(cy, d);
}
KT_ROW_KERNEL(iq4_kt, sizeof(block_kt_iq4), kt_iq4_kt_row)

// ---- IQ1_KT -----------------------------------------------------------------------------------

QTABLE(int32_t, kt_iq1_start)
QTABLE(int32_t, kt_iq1_members)
QTABLE(int8_t, kt_iq1_mvals)
QTABLE(float, kt_iq1_mid)

typedef struct {
    uint8_t  sh[QK_K/32];
    uint8_t  ql[QK_K/8];
    uint8_t  qh[QK_K/16];
} block_kt_iq1;

// the 13-bit indices of block ib as the final layout holds them (the scale nibble aside)
QDEV void kt_iq1_get_idx(const block_kt_iq1 * b, int ib, int * idx) {
    for (int j = 0; j < 4; ++j) {
        idx[j] = b->ql[ib*4 + j] | (((b->qh[(ib%4)*4 + j] >> 4*(ib/4)) & 0xf) << 8) | (((b->sh[ib] >> (4 + j)) & 1) << 12);
    }
}
QDEV void kt_iq1_put_idx(block_kt_iq1 * b, int ib, const int * idx) {
    for (int j = 0; j < 4; ++j) {
        b->ql[ib*4 + j] = (uint8_t)(idx[j] & 0xff);
        b->qh[(ib%4)*4 + j] |= (uint8_t)(((idx[j] >> 8) & 0xf) << 4*(ib/4));
        b->sh[ib] |= (uint8_t)((idx[j] >> 12) << (4 + j));
    }
}

QDEV float kt_iq1_scale(const float * xb, const float * weight, const int * idx) {
    if (kt_block_amax(xb) < 1e-16f) return 0.0f;
    float q[KT_BLOCK], dd, sc;
    kt_block_values(idx, q, 8, false, 4096);
    kt_find_best_scale(xb, weight, q, &dd, &sc);
    return dd;
}

QDEV void kt_iq1_match(float d, const float * xb, const float * wb, int * idx, float * dd, float * sc) {
    float q[KT_BLOCK];
    kt_find_best_match8(kt_iq1_start, kt_iq1_members, kt_iq1_mvals, kt_iq1_mid, d, xb, wb, idx);
    kt_block_values(idx, q, 8, false, 4096);
    kt_find_best_scale(xb, wb, q, dd, sc);
}

// quantize_row_iq1_kt_impl; cy: the row's bytes (float d, then the blocks). C's all_idx is
// parked in the final index bits (ql, qh, sh bits 4..7) between the passes.
QDEV void kt_iq1_kt_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        uint8_t * GGML_RESTRICT cy, int n_per_row) {
    const int nblock = n_per_row/QK_K;
    uint8_t * yb = cy + 4;
    float weight[QK_K];
    int best_idx[2*(KT_BLOCK/8)];

    float amax_row = 0;
    for (int j = 0; j < n_per_row; ++j) amax_row = kt_max(amax_row, fabsf(x[j]));

    float amax_scale = 0, max_scale = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq1 blk;
        memset(&blk, 0, sizeof(blk));
        const float * xbl = x + ibl*QK_K;
        kt_weights(xbl, quant_weights ? quant_weights + ibl*QK_K : 0, weight);
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * xb = xbl + KT_BLOCK*ib;
            const float * wb = weight + KT_BLOCK*ib;
            const float amax = kt_block_amax(xb);
            if (amax < 1e-16f) continue;
            float scale_0 = kt_max(90.f, 124.f*amax/amax_row);
            float dp, score_p, dm, score_m;
            kt_iq1_match(amax/scale_0, xb, wb, best_idx, &dp, &score_p);
            kt_iq1_match(-amax/scale_0, xb, wb, best_idx + 4, &dm, &score_m);
            int kept[4];
            const int * idx = best_idx;
            float s;
            if (score_p > score_m) s = dp;
            else { s = dm; idx += 4; score_p = score_m; }
            for (int ig = 0; ig < 4; ++ig) kept[ig] = idx[ig];

            scale_0 -= 8;
            float dp1, score_p1, dm1, score_m1;
            kt_iq1_match(amax/scale_0, xb, wb, best_idx, &dp1, &score_p1);
            kt_iq1_match(-amax/scale_0, xb, wb, best_idx + 4, &dm1, &score_m1);
            if (score_p1 > score_p || score_m1 > score_p) {
                idx = best_idx;
                if (score_p1 > score_m1) s = dp1;
                else { s = dm1; idx += 4; }
                for (int ig = 0; ig < 4; ++ig) kept[ig] = idx[ig];
            }
            kt_iq1_put_idx(&blk, ib, kept);
            const float abs_scale = fabsf(s);
            if (abs_scale > amax_scale) {
                amax_scale = abs_scale;
                max_scale = s;
            }
        }
        store_block(yb + ibl*(int64_t)sizeof(block_kt_iq1), &blk, (int) sizeof(block_kt_iq1));
    }

    if (!max_scale) {
        block_kt_iq1 z;
        memset(&z, 0, sizeof(z));
        for (int ibl = 0; ibl < nblock; ++ibl) store_block(yb + ibl*(int64_t)sizeof(z), &z, (int) sizeof(z));
        kt_store_f32(cy, 0.0f);
        return;
    }

    float d = max_scale/iqk_iq4k_values[0];
    float best = 0;
    float tsumqx[19], tsumq2[19], tid[19];
    for (int t = 0; t < 19; ++t) {
        tsumqx[t] = 0; tsumq2[t] = 0;
        tid[t] = ((t - 9) + iqk_iq4k_values[0])/max_scale;
    }
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq1 blk;
        iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(blk), (int) sizeof(blk));
        const float * xbl = x + ibl*QK_K;
        kt_weights(xbl, quant_weights ? quant_weights + ibl*QK_K : 0, weight);
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * xb = xbl + KT_BLOCK*ib;
            const float * wb = weight + KT_BLOCK*ib;
            int idx[4];
            kt_iq1_get_idx(&blk, ib, idx);
            const float scale = kt_iq1_scale(xb, wb, idx);
            float qv[KT_BLOCK];
            kt_block_values(idx, qv, 8, false, 4096);
            kt_trials_add(tid, scale, xb, wb, qv, false, tsumqx, tsumq2);
        }
    }
    kt_trials_best(tsumqx, tsumq2, &d, &best);

    const float id = d ? 1/d : 0.f;
    float sumqx = 0, sumq2 = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq1 blk;
        iqk_load_block(&blk, yb + ibl*(int64_t)sizeof(blk), (int) sizeof(blk));
        const float * xbl = x + ibl*QK_K;
        kt_weights(xbl, quant_weights ? quant_weights + ibl*QK_K : 0, weight);
        int prev[KT_NBLOCK][4];
        for (int ib = 0; ib < KT_NBLOCK; ++ib) kt_iq1_get_idx(&blk, ib, prev[ib]);
        memset(&blk, 0, sizeof(blk));
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float scale = kt_iq1_scale(xbl + KT_BLOCK*ib, weight + KT_BLOCK*ib, prev[ib]);
            blk.sh[ib] = (uint8_t) iqk_best_index_iq4nl(iqk_iq4k_values, id*scale);
        }
        if (!d) {
            store_block(yb + ibl*(int64_t)sizeof(blk), &blk, (int) sizeof(blk));
            continue;
        }
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * xb = xbl + KT_BLOCK*ib;
            const float * wb = weight + KT_BLOCK*ib;
            const int ls = iqk_iq4k_values[blk.sh[ib] & 0xf];
            const float dl = d*ls;
            kt_find_best_match8(kt_iq1_start, kt_iq1_members, kt_iq1_mvals, kt_iq1_mid, dl, xb, wb, best_idx);
            float q1[KT_BLOCK], q2[KT_BLOCK];
            kt_block_values(prev[ib], q1, 8, false, 4096);
            kt_block_values(best_idx, q2, 8, false, 4096);
            float mse1 = 0, mse2 = 0;
            for (int jj = 0; jj < KT_BLOCK; ++jj) {
                const float diff1 = xb[jj] - dl*q1[jj];
                const float diff2 = xb[jj] - dl*q2[jj];
                mse1 += wb[jj]*diff1*diff1;
                mse2 += wb[jj]*diff2*diff2;
            }
            const float * qb = q2;
            if (mse1 < mse2) {
                for (int ig = 0; ig < 4; ++ig) best_idx[ig] = prev[ib][ig];
                qb = q1;
            }
            kt_iq1_put_idx(&blk, ib, best_idx);
            for (int j = 0; j < 4; ++j) {
                for (int k = 0; k < 8; ++k) {
                    const float q = qb[8*j + k]*ls;
                    sumqx += wb[8*j + k]*xb[8*j + k]*q;
                    sumq2 += wb[8*j + k]*q*q;
                }
            }
        }
        store_block(yb + ibl*(int64_t)sizeof(blk), &blk, (int) sizeof(blk));
    }
    if (d && sumq2 > 0) d = (sumqx/sumq2)*1.07f;
    kt_store_f32(cy, d);
}
KT_ROW_KERNEL(iq1_kt, sizeof(block_kt_iq1), kt_iq1_kt_row)
