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
// IQ2_KT and IQ1_KT run one row template (kt_pm_row: C's two functions differ only in IQ1_KT's
// retry at scale_0 - 8, the final 1.07 and the block layout, reached through overloads); the
// 19 trial row scales (kt_trial_scales) and the parked-block helpers serve IQ3_KT as well.
// The block layouts and set_values are in trellis_blocks.cuh (shared with dequant_ik.cuh).
#pragma once


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

QDEV int kt_bin5(float x) {
    return x < -48.f ? 0 : x < -16.f ? 1 : x < 16.f ? 2 : x < 48.f ? 3 : 4;
}

// QuantizerIQKT<32, G, ...>::find_best_match (AVX2) for groups of G. G = 8: 256 clusters by the
// sign bits against m_mid (mid), lane i holds member j + i, score hsum_float_8x8's; G = 4: 625
// clusters by bin5 (mid unused), lane L holds members j + {0,2,4,6,1,3,5,7}[L] (add_idx), score
// (v0+v2)+(v1+v3) (hsum_float_4x8).
template <int G>
QDEV void kt_find_best_match(const int32_t * GGML_RESTRICT start, const int32_t * GGML_RESTRICT members,
                             const int8_t * GGML_RESTRICT mvals, const float * GGML_RESTRICT mid,
                             float d, const float * GGML_RESTRICT xb, const float * GGML_RESTRICT weight,
                             int * GGML_RESTRICT best_idx) {
    if (!d) {
        for (int l = 0; l < KT_BLOCK/G; ++l) best_idx[l] = 0;
        return;
    }
    const float id = 1/d;
    for (int l = 0; l < KT_BLOCK/G; ++l) {
        const float * xl = xb + G*l;
        const float * wl = weight + G*l;
        float vx[G], vw[G];
        int u = 0, m = 1;
        for (int k = 0; k < G; ++k) {
            vx[k] = id*xl[k];
            vw[k] = wl[k];
            if constexpr (G == 8) {
                if (vx[k] > mid[k]) u |= (1 << k);
            } else {
                u += kt_bin5(vx[k])*m;
                m *= 5;
            }
        }
        const int p0 = start[u], p1 = start[u + 1];
        float vbest[8];
        int bidx[8];
        for (int i = 0; i < 8; ++i) { vbest[i] = KT_INF; bidx[i] = -1; }
        for (int j = p0; j < p1; j += 8) {
            for (int lane = 0; lane < 8; ++lane) {
                const int pos = G == 8 ? lane : lane < 4 ? 2*lane : 2*(lane - 4) + 1;
                const int8_t * q = mvals + G*(int64_t)(j + pos);
                float s[G];
                for (int k = 0; k < G; ++k) {
                    const float diff = (float)q[k] - vx[k];
                    s[k] = vw[k]*(diff*diff);
                }
                float score;
                if constexpr (G == 8) score = kt_hsum8(s);
                else score = (s[0] + s[2]) + (s[1] + s[3]);
                kt_lane_update(score, j - p0 + pos, &vbest[lane], &bidx[lane]);
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

// |x| max over a row (std::max order).
QDEV float kt_row_amax(const float * x, int n) {
    float amax = 0;
    for (int j = 0; j < n; ++j) amax = kt_max(amax, fabsf(x[j]));
    return amax;
}

// kt_weights of super-block ibl of the row into weight; returns the super-block's x.
QDEV const float * kt_sb_weights(const float * x, const float * quant_weights, int ibl, float * weight) {
    const float * xbl = x + ibl*QK_K;
    kt_weights(xbl, quant_weights ? quant_weights + ibl*QK_K : 0, weight);
    return xbl;
}

// A row of zero blocks and row scale 0 (cy: the row's bytes, float d then the blocks).
template <typename B>
QDEV void kt_zero_row(uint8_t * cy, int nblock) {
    B z;
    memset(&z, 0, sizeof(z));
    for (int ibl = 0; ibl < nblock; ++ibl) store_block(cy + 4 + ibl*(int64_t)sizeof(z), &z, (int) sizeof(z));
    kt_store_f32(cy, 0.0f);
}

// C's amax_scale / max_scale update: max_scale is the block scale of the largest |s| (first on ties).
QDEV void kt_track_max(float s, float * amax_scale, float * max_scale) {
    const float abs_scale = fabsf(s);
    if (abs_scale > *amax_scale) {
        *amax_scale = abs_scale;
        *max_scale = s;
    }
}

// The final pass's sums over a block's 32 values qv*ls, in C's order.
QDEV void kt_sums(const float * GGML_RESTRICT qv, int ls, const float * GGML_RESTRICT xb,
                  const float * GGML_RESTRICT wb, float * sumqx, float * sumq2) {
    float sx = *sumqx, s2 = *sumq2;
    for (int j = 0; j < KT_BLOCK; ++j) {
        const float q = qv[j]*ls;
        sx += wb[j]*xb[j]*q;
        s2 += wb[j]*q*q;
    }
    *sumqx = sx;
    *sumq2 = s2;
}

// ---- IQ2_KT, IQ3_KT, IQ1_KT: groups of 8, one scale per block of 32 ------------------------------

QTABLE(int32_t, kt_iq2_start)
QTABLE(int32_t, kt_iq2_members)
QTABLE(int8_t, kt_iq2_mvals)
QTABLE(float, kt_iq2_mid)
QTABLE(int32_t, kt_iq3_start)
QTABLE(int32_t, kt_iq3_members)
QTABLE(int8_t, kt_iq3_mvals)
QTABLE(float, kt_iq3_mid)
QTABLE(int32_t, kt_iq1_start)
QTABLE(int32_t, kt_iq1_members)
QTABLE(int8_t, kt_iq1_mvals)
QTABLE(float, kt_iq1_mid)

// A quantizer's cluster tables (see kt_find_best_match).
typedef struct {
    const int32_t * start;
    const int32_t * members;
    const int8_t * mvals;
    const float * mid;
} kt_tables8;
#define KT_TABLES8(T) kt_tables8{kt_##T##_start, kt_##T##_members, kt_##T##_mvals, kt_##T##_mid}


// The 4 indices of block ib (IQ2_KT, IQ3_KT: ql; IQ1_KT: the 13-bit indices in ql, qh and sh bits
// 4..7, the scale nibble aside; its non-template overloads win over the templates, also for a
// non-const block). kt_put_idx of IQ1_KT ORs the bits in: the block must be zeroed.
template <typename B>
QDEV void kt_get_idx(const B * b, int ib, int * idx) {
    for (int j = 0; j < 4; ++j) idx[j] = b->ql[4*ib + j];
}
template <typename B>
QDEV void kt_put_idx(B * b, int ib, const int * idx) {
    for (int j = 0; j < 4; ++j) b->ql[4*ib + j] = (uint16_t) idx[j];
}
QDEV void kt_get_idx(const block_kt_iq1 * b, int ib, int * idx) {
    for (int j = 0; j < 4; ++j) {
        idx[j] = b->ql[ib*4 + j] | (((b->qh[(ib%4)*4 + j] >> 4*(ib/4)) & 0xf) << 8) | (((b->sh[ib] >> (4 + j)) & 1) << 12);
    }
}
QDEV void kt_put_idx(block_kt_iq1 * b, int ib, const int * idx) {
    for (int j = 0; j < 4; ++j) {
        b->ql[ib*4 + j] = (uint8_t)(idx[j] & 0xff);
        b->qh[(ib%4)*4 + j] |= (uint8_t)(((idx[j] >> 8) & 0xf) << 4*(ib/4));
        b->sh[ib] |= (uint8_t)((idx[j] >> 12) << (4 + j));
    }
}

// A block's level index for the block scale v (in units of the row scale): IQ2_KT / IQ1_KT the
// nearest of iq4k_values (best_index_iq4nl), IQ3_KT (iq3) nearest_int(v) clamped to 0..15.
QDEV int kt_level(float v, bool iq3) {
    if (iq3) {
        const int ls = nearest_int(v);
        return MAX(0, MIN(15, ls));
    }
    return iqk_best_index_iq4nl(iqk_iq4k_values, v);
}

// IQ2_KT's / IQ3_KT's scales[]: blocks ib and ib + 4 share a byte (low, high nibble).
QDEV int kt_scale_nibble(const uint8_t * scales, int ib) {
    return (scales[ib%(KT_NBLOCK/2)] >> 4*(ib/(KT_NBLOCK/2))) & 0xf;
}
QDEV void kt_pack_scales(uint8_t * out, const float * scales, float id, bool iq3) {
    for (int ib = 0; ib < KT_NBLOCK/2; ++ib) {
        const int ls1 = kt_level(id*scales[ib], iq3);
        const int ls2 = kt_level(id*scales[ib + KT_NBLOCK/2], iq3);
        out[ib] = (uint8_t)(ls1 | (ls2 << 4));
    }
}

// find_best_match at d, then find_best_scale of the match's values: *dd, *sc.
QDEV void kt_match8(kt_tables8 t, bool is_abs, float d, const float * GGML_RESTRICT xb,
                    const float * GGML_RESTRICT wb, int * GGML_RESTRICT idx, float * dd, float * sc) {
    float q[KT_BLOCK];
    kt_find_best_match<8>(t.start, t.members, t.mvals, t.mid, d, xb, wb, idx);
    kt_block_values(idx, q, 8, is_abs, 4096);
    kt_find_best_scale(xb, wb, q, dd, sc);
}

// A block's scale after the first pass (C's all_scales[ib]): 0 for a skipped block, else
// find_best_scale of the kept indices idx (xb: |x| for IQ3_KT, is_abs).
QDEV float kt_block_scale(const float * xb, const float * weight, const int * idx, bool is_abs) {
    if (kt_block_amax(xb) < 1e-16f) return 0.0f;
    float q[KT_BLOCK], dd, sc;
    kt_block_values(idx, q, 8, is_abs, 4096);
    kt_find_best_scale(xb, weight, q, &dd, &sc);
    return dd;
}

// Super-block ibl as the first pass parked it in yb (into blk), its weights, and its blocks' kept
// indices and scales (C's all_idx, all_scales; is_abs: IQ3_KT, on |x|); returns its x.
template <typename B>
QDEV const float * kt_load_parked(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                                  const uint8_t * GGML_RESTRICT yb, int ibl, bool is_abs, B * blk,
                                  float * GGML_RESTRICT weight, int (*idx)[4], float * GGML_RESTRICT scales) {
    iqk_load_block(blk, yb + ibl*(int64_t)sizeof(B), (int) sizeof(B));
    const float * xbl = kt_sb_weights(x, quant_weights, ibl, weight);
    for (int ib = 0; ib < KT_NBLOCK; ++ib) {
        const float * xb = xbl + KT_BLOCK*ib;
        float xa[KT_BLOCK];
        if (is_abs) {
            for (int j = 0; j < KT_BLOCK; ++j) xa[j] = fabsf(xb[j]);
            xb = xa;
        }
        kt_get_idx(blk, ib, idx[ib]);
        scales[ib] = kt_block_scale(xb, weight + KT_BLOCK*ib, idx[ib], is_abs);
    }
    return xbl;
}

// C's second pass, the 19 trial row scales, after the first parked the blocks in yb; returns d.
// IQ2_KT / IQ1_KT: d = max_scale/iq4k_values[0], trials (itry + iq4k_values[0])/max_scale, a
// block's level iq4k_values[best_index(tid*scale)]; IQ3_KT (iq3): d = max_scale/15, trials
// (0.2*itry + 15)/max_scale, levels nearest_int(tid*scale) clamped to 0..15, on |x|. Each trial's
// sums run along the row in C's order; all 19 are accumulated in one sweep, then d and best are
// updated in C's itry order. weight: scratch (QK_K).
template <typename B>
QDEV float kt_trial_scales(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                           const uint8_t * GGML_RESTRICT yb, int nblock, float max_scale, bool iq3,
                           float * GGML_RESTRICT weight) {
    float d = iq3 ? max_scale/15 : max_scale/iqk_iq4k_values[0];
    float best = 0;
    float tsumqx[19], tsumq2[19], tid[19];
    for (int t = 0; t < 19; ++t) {
        tsumqx[t] = 0; tsumq2[t] = 0;
        tid[t] = iq3 ? ((t - 9)*0.2f + 15)/max_scale : ((t - 9) + iqk_iq4k_values[0])/max_scale;
    }
    for (int ibl = 0; ibl < nblock; ++ibl) {
        B blk;
        int idx[KT_NBLOCK][4];
        float scales[KT_NBLOCK];
        const float * xbl = kt_load_parked(x, quant_weights, yb, ibl, iq3, &blk, weight, idx, scales);
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * xb = xbl + KT_BLOCK*ib;
            const float * wb = weight + KT_BLOCK*ib;
            float qv[KT_BLOCK];
            kt_block_values(idx[ib], qv, 8, iq3, 4096);
            for (int t = 0; t < 19; ++t) {
                const int ls = kt_level(tid[t]*scales[ib], iq3);
                const float dl = iq3 ? ls : iqk_iq4k_values[ls];
                float sumqx = tsumqx[t], sumq2 = tsumq2[t];
                for (int j = 0; j < KT_BLOCK; ++j) {
                    const float q = dl*qv[j];
                    sumqx += wb[j]*(iq3 ? fabsf(xb[j]) : xb[j])*q;
                    sumq2 += wb[j]*q*q;
                }
                tsumqx[t] = sumqx; tsumq2[t] = sumq2;
            }
        }
    }
    for (int t = 0; t < 19; ++t) {
        const float sumqx = tsumqx[t], sumq2 = tsumq2[t];
        if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {
            d = sumqx/sumq2; best = d*sumqx;
        }
    }
    return d;
}

// ---- IQ2_KT, IQ1_KT ---------------------------------------------------------------------------

// The scale index into iq4k_values of block ib: IQ2_KT a nibble of scales[], IQ1_KT sh[ib] bits 0..3.
QDEV int kt_scale_idx(const block_kt_iq2 * b, int ib) { return kt_scale_nibble(b->scales, ib); }
QDEV int kt_scale_idx(const block_kt_iq1 * b, int ib) { return b->sh[ib] & 0xf; }
// Stores the level indices of the block scales (in a zeroed block).
QDEV void kt_set_scales(block_kt_iq2 * b, const float * scales, float id) { kt_pack_scales(b->scales, scales, id, false); }
QDEV void kt_set_scales(block_kt_iq1 * b, const float * scales, float id) {
    for (int ib = 0; ib < KT_NBLOCK; ++ib) b->sh[ib] = (uint8_t) kt_level(id*scales[ib], false);
}

// The two tries of the first pass at d = +-amax/scale_0: *sp, *sm their scores; kept, *s: the
// indices and scale of the + one where it scores higher, else of the - one.
QDEV void kt_match_pm(kt_tables8 t, float amax, float scale_0, const float * GGML_RESTRICT xb,
                      const float * GGML_RESTRICT wb, int * GGML_RESTRICT kept, float * s, float * sp, float * sm) {
    int idx[2*(KT_BLOCK/8)];
    float dp, dm;
    kt_match8(t, false, amax/scale_0, xb, wb, idx, &dp, sp);
    kt_match8(t, false, -amax/scale_0, xb, wb, idx + 4, &dm, sm);
    const bool plus = *sp > *sm;
    *s = plus ? dp : dm;
    for (int ig = 0; ig < 4; ++ig) kept[ig] = idx[(plus ? 0 : 4) + ig];
}

// The last pass on one block: the match at dl = d*ls against the kept indices prev (the lower
// weighted error wins; on ties the new match) into idx, its values times ls added to the sums.
QDEV void kt_refine8(kt_tables8 t, float d, int ls, const float * GGML_RESTRICT xb, const float * GGML_RESTRICT wb,
                     const int * GGML_RESTRICT prev, int * GGML_RESTRICT idx, float * sumqx, float * sumq2) {
    const float dl = d*ls;
    kt_find_best_match<8>(t.start, t.members, t.mvals, t.mid, dl, xb, wb, idx);
    float q1[KT_BLOCK], q2[KT_BLOCK];
    kt_block_values(prev, q1, 8, false, 4096);
    kt_block_values(idx, q2, 8, false, 4096);
    float mse1 = 0, mse2 = 0;
    for (int jj = 0; jj < KT_BLOCK; ++jj) {
        const float diff1 = xb[jj] - dl*q1[jj];
        const float diff2 = xb[jj] - dl*q2[jj];
        mse1 += wb[jj]*diff1*diff1;
        mse2 += wb[jj]*diff2*diff2;
    }
    const float * qb = q2;
    if (mse1 < mse2) {
        for (int ig = 0; ig < 4; ++ig) idx[ig] = prev[ig];
        qb = q1;
    }
    kt_sums(qb, ls, xb, wb, sumqx, sumq2);
}

// quantize_row_iq2_kt_impl (iq1 false) and quantize_row_iq1_kt_impl (iq1): the same passes, but
// IQ1_KT also tries each block at scale_0 - 8 and scales the final d by 1.07. cy: the row's bytes
// (float d, then the blocks); C's all_idx is parked in the final index bits between the passes.
template <typename B>
QDEV void kt_pm_row(kt_tables8 t, bool iq1, const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                    uint8_t * GGML_RESTRICT cy, int n_per_row) {
    const int nblock = n_per_row/QK_K;
    uint8_t * yb = cy + 4;
    float weight[QK_K];

    const float amax_row = kt_row_amax(x, n_per_row);
    float amax_scale = 0, max_scale = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        B blk;
        memset(&blk, 0, sizeof(blk));
        const float * xbl = kt_sb_weights(x, quant_weights, ibl, weight);
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * xb = xbl + KT_BLOCK*ib;
            const float * wb = weight + KT_BLOCK*ib;
            const float amax = kt_block_amax(xb);
            if (amax < 1e-16f) continue;  // all_idx 0 (blk is zeroed), scale 0
            const float scale_0 = kt_max(90.f, 124.f*amax/amax_row);
            int kept[4];
            float s, score_p, score_m;
            kt_match_pm(t, amax, scale_0, xb, wb, kept, &s, &score_p, &score_m);
            if (iq1) {
                const float score = score_p > score_m ? score_p : score_m;
                int kept1[4];
                float s1, score_p1, score_m1;
                kt_match_pm(t, amax, scale_0 - 8, xb, wb, kept1, &s1, &score_p1, &score_m1);
                if (score_p1 > score || score_m1 > score) {
                    s = s1;
                    for (int ig = 0; ig < 4; ++ig) kept[ig] = kept1[ig];
                }
            }
            kt_put_idx(&blk, ib, kept);
            kt_track_max(s, &amax_scale, &max_scale);
        }
        store_block(yb + ibl*(int64_t)sizeof(blk), &blk, (int) sizeof(blk));
    }
    if (!max_scale) {
        kt_zero_row<B>(cy, nblock);
        return;
    }

    float d = kt_trial_scales<B>(x, quant_weights, yb, nblock, max_scale, false, weight);

    const float id = d ? 1/d : 0.f;
    float sumqx = 0, sumq2 = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        B blk;
        int prev[KT_NBLOCK][4];
        float scales[KT_NBLOCK];
        const float * xbl = kt_load_parked(x, quant_weights, yb, ibl, false, &blk, weight, prev, scales);
        memset(&blk, 0, sizeof(blk));
        kt_set_scales(&blk, scales, id);
        if (d) {  // (else C returns with the indices still zero)
            for (int ib = 0; ib < KT_NBLOCK; ++ib) {
                int idx[KT_BLOCK/8];
                kt_refine8(t, d, iqk_iq4k_values[kt_scale_idx(&blk, ib)], xbl + KT_BLOCK*ib, weight + KT_BLOCK*ib,
                           prev[ib], idx, &sumqx, &sumq2);
                kt_put_idx(&blk, ib, idx);
            }
        }
        store_block(yb + ibl*(int64_t)sizeof(blk), &blk, (int) sizeof(blk));
    }
    if (d && sumq2 > 0) d = iq1 ? (sumqx/sumq2)*1.07f : sumqx/sumq2;
    kt_store_f32(cy, d);
}

QDEV void kt_iq2_kt_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        uint8_t * GGML_RESTRICT cy, int n_per_row) {
    kt_pm_row<block_kt_iq2>(KT_TABLES8(iq2), false, x, quant_weights, cy, n_per_row);
}
IQK_ROW_META_KERNEL(iq2_kt, block_kt_iq2, 4, kt_iq2_kt_row)

QDEV void kt_iq1_kt_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        uint8_t * GGML_RESTRICT cy, int n_per_row) {
    kt_pm_row<block_kt_iq1>(KT_TABLES8(iq1), true, x, quant_weights, cy, n_per_row);
}
IQK_ROW_META_KERNEL(iq1_kt, block_kt_iq1, 4, kt_iq1_kt_row)

// ---- IQ3_KT -----------------------------------------------------------------------------------

// quantize_row_iq3_kt_impl; cy: the row's bytes (float d, then the blocks). C's qtmp (the kept
// trellis values) is recomputed from the parked indices; a skipped block has scale 0 so its
// (stale in C) values only ever meet ls = 0.
QDEV void kt_iq3_kt_row(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        uint8_t * GGML_RESTRICT cy, int n_per_row) {
    const kt_tables8 t = KT_TABLES8(iq3);
    const int nblock = n_per_row/QK_K;
    uint8_t * yb = cy + 4;
    float weight[QK_K];
    float xaux[KT_BLOCK];
    int best_idx[2*(KT_BLOCK/8)];

    const float amax_row = kt_row_amax(x, n_per_row);
    if (!amax_row) {
        kt_zero_row<block_kt_iq3>(cy, nblock);
        return;
    }

    float amax_scale = 0, max_scale = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq3 blk;
        memset(&blk, 0, sizeof(blk));
        const float * xbl = kt_sb_weights(x, quant_weights, ibl, weight);
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
                float dd, score;
                kt_match8(t, true, amax/(scale_0 + 8.0f*itry), xaux, wb, best_idx, &dd, &score);
                if (score > best) {
                    best = score;
                    s = dd;
                    for (int ig = 0; ig < 4; ++ig) best_idx[4 + ig] = best_idx[ig];
                }
            }
            // (no solution: GGML_ASSERT in C)
            kt_put_idx(&blk, ib, best_idx + 4);
            kt_track_max(s, &amax_scale, &max_scale);
        }
        store_block(yb + ibl*(int64_t)sizeof(blk), &blk, (int) sizeof(blk));
    }

    float d = kt_trial_scales<block_kt_iq3>(x, quant_weights, yb, nblock, max_scale, true, weight);

    const float id = d ? 1/d : 0.f;
    float sumqx = 0, sumq2 = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq3 blk;
        int prev[KT_NBLOCK][4];
        float scales[KT_NBLOCK];
        const float * xbl = kt_load_parked(x, quant_weights, yb, ibl, true, &blk, weight, prev, scales);
        kt_pack_scales(blk.scales, scales, id, true);
        for (int j = 0; j < QK_K/8; ++j) blk.qh[j] = 0;
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * xb = xbl + KT_BLOCK*ib;
            const float * wb = weight + KT_BLOCK*ib;
            for (int j = 0; j < KT_BLOCK; ++j) {
                xaux[j] = fabsf(xb[j]);
                if (xb[j] < 0) blk.qh[j] |= (uint8_t)(1 << ib);
            }
            const int ls = kt_scale_nibble(blk.scales, ib);
            float qv[KT_BLOCK];
            kt_find_best_match<8>(t.start, t.members, t.mvals, t.mid, d*ls, xaux, wb, best_idx);
            kt_block_values(best_idx, qv, 8, true, 4096);
            kt_put_idx(&blk, ib, best_idx);
            kt_sums(qv, ls, xaux, wb, &sumqx, &sumq2);
        }
        store_block(yb + ibl*(int64_t)sizeof(blk), &blk, (int) sizeof(blk));
    }
    if (sumq2 > 0) d = sumqx/sumq2;
    kt_store_f32(cy, d);
}
IQK_ROW_META_KERNEL(iq3_kt, block_kt_iq3, 4, kt_iq3_kt_row)

// ---- IQ4_KT -----------------------------------------------------------------------------------

QTABLE(int32_t, kt_iq4_start)
QTABLE(int32_t, kt_iq4_members)
QTABLE(int8_t, kt_iq4_mvals)
QTABLE(int32_t, kt_iq4o_start)
QTABLE(int32_t, kt_iq4o_members)
QTABLE(int8_t, kt_iq4o_mvals)


// find_best_match with the first (offset 0) or the second quantizer, and the match's values q.
QDEV void kt_iq4_match(bool second, float d, const float * GGML_RESTRICT xb, const float * GGML_RESTRICT weight,
                       int * GGML_RESTRICT idx, float * GGML_RESTRICT q) {
    if (second) kt_find_best_match<4>(kt_iq4o_start, kt_iq4o_members, kt_iq4o_mvals, 0, d, xb, weight, idx);
    else kt_find_best_match<4>(kt_iq4_start, kt_iq4_members, kt_iq4_mvals, 0, d, xb, weight, idx);
    kt_block_values(idx, q, 4, false, second ? 4096u + 32768u : 4096u);
}

// kt_iq4_match, then find_best_scale of the match: *dd, *sc.
QDEV void kt_iq4_try(bool second, float d, const float * xb, const float * weight, float * dd, float * sc) {
    int idx[KT_BLOCK/4];
    float q[KT_BLOCK];
    kt_iq4_match(second, d, xb, weight, idx, q);
    kt_find_best_scale(xb, weight, q, dd, sc);
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
    int best_idx[KT_BLOCK/4];

    const float amax_row = kt_row_amax(x, n_per_row);
    if (!amax_row) {
        kt_zero_row<block_kt_iq4>(cy, nblock);
        return;
    }

    float amax_scale = 0, max_scale = 0;
    for (int ibl = 0; ibl < nblock; ++ibl) {
        block_kt_iq4 blk;
        memset(&blk, 0, sizeof(blk));
        float scales[KT_NBLOCK];
        const float * xbl = kt_sb_weights(x, quant_weights, ibl, weight);
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const float * xb = xbl + ib*KT_BLOCK;
            const float * wb = weight + ib*KT_BLOCK;
            const float amax = kt_block_amax(xb);
            scales[ib] = 0;
            if (amax < 1e-16f) continue;
            float best = 0;
            bool with_offset = false;
            const float scale_0 = kt_max(90.f, 124.f*amax/amax_row);
            // C's two loops over itry = -2..2 (d = +-amax/(8*itry + scale_0)), the first with the
            // first quantizer, the second with the second one after trying it at the best scale so far
            for (int second = 0; second < 2; ++second) {
                if (second) {
                    float dd, score;
                    kt_iq4_try(true, scales[ib], xb, wb, &dd, &score);
                    if (score > best) {  // (best is not updated, as in C)
                        scales[ib] = dd;
                        blk.qs[ib] = 1;
                    }
                }
                for (int itry = -2; itry <= 2; ++itry) {
                    for (int neg = 0; neg < 2; ++neg) {
                        float dd, score;
                        kt_iq4_try(second, (neg ? -amax : amax)/(8.f*itry + scale_0), xb, wb, &dd, &score);
                        if (score > best) { best = score; scales[ib] = dd; with_offset = second; }
                    }
                }
            }
            if (with_offset) blk.qs[ib] = 1;
            kt_track_max(scales[ib], &amax_scale, &max_scale);
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
        const float * xbl = kt_sb_weights(x, quant_weights, ibl, weight);
        for (int ib = 0; ib < KT_NBLOCK; ++ib) {
            const bool second = shb[ib] & 1;
            const float * xb = xbl + ib*KT_BLOCK;
            const float * wb = weight + ib*KT_BLOCK;
            int ls = nearest_int(id*scales[ib]);
            ls = MIN(ls, 63);
            shb[ib] = (shb[ib] & 0xffffff00u) | (uint8_t)((((uint32_t)(ls + 64)) << 1) | (shb[ib] & 1));
            float qv[KT_BLOCK];
            kt_iq4_match(second, d*ls, xb, wb, best_idx, qv);
            for (int j = 0; j < KT_BLOCK/4; ++j) {
                shb[ib] |= ((uint32_t)(best_idx[j] >> 12) << (8 + 3*j));
                ql[8*ib + j] = (uint8_t)(best_idx[j] & 255);
                qh[(8*ib + j)%32] |= (uint8_t)(((best_idx[j] >> 8) & 0xf) << 4*((8*ib + j)/32));
            }
            kt_sums(qv, ls, xb, wb, &sumqx, &sumq2);
        }
        memcpy(&blk.qs[KT_NBLOCK], bytes, sizeof(bytes));
        store_block(yb + ibl*(int64_t)sizeof(blk), &blk, (int) sizeof(blk));
    }
    if (sumq2 > 0) d = sumqx/sumq2;
    kt_store_f32(cy, d);
}
IQK_ROW_META_KERNEL(iq4_kt, block_kt_iq4, 4, kt_iq4_kt_row)
