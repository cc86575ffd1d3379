// ik_llama.cpp's own quantization of mainline's lattice i-quants (ik's ggml-quants.c; the numpy
// port is qtool/quants/ik/lattice_ik.py, which lists every difference from mainline). The
// kernels reuse lattice.cuh's per-super-block functions, instantiated with IK = true where ik
// changed a step; IQ2_XS and IQ1_M are ik's own algorithms, ported here. IQ3_S is mainline's
// algorithm in ik (mainline's kernel serves it).
#pragma once

// ik's quantize_row_iq2_xxs_impl (imatrix only, as ik requires), one super-block per thread.
// Where ik's C aborts (a sub-block with no accepted candidate and no refinement, a NaN scale) this
// kernel writes bytes anyway; the numpy engine raises. (Not in GPU_KERNELS: see kernels.py.)
QTOOL_ROW_KERNEL(iq2_xxs_ik, QK_K, block_iq2_xxs, iq2_xxs_block<true>)

// ik's quantize_row_iq1_s_impl / iq1s_process_1block (imatrix only), one super-block per thread.
// Where ik's C aborts (no split accepted) the sub-block gets scale 0. (Not in GPU_KERNELS.)
QTOOL_ROW_KERNEL(iq1_s_ik, QK_K, block_iq1_s, iq1_s_block<true>)

// ---------------------------------------------------------------- state carried over sub-blocks
// ik's quantize_row_iq3_xxs_impl, quantize_row_iq2_s_impl and quantize_row_iq2_xs_impl keep stack
// arrays (IQ3_XXS: L and is_on_grid; IQ2_S, IQ2_XS: L) from one sub-block to the next, over super-blocks and, in C, over the rows
// of one ggml_quantize_chunk call: a sub-block where no candidate is accepted reads them. One
// thread per row; a row that meets such a sub-block before its first accepted one gets C's state
// at its start from the super-blocks before it (walked back to the last one with an accepted
// sub-block, after which C's state does not depend on what came before, then replayed forward;
// the start of the launch: the numpy port's start of a call), then is redone. The block functions
// return a mask: bit ib where sub-block ib accepted a candidate, bit 16+ib where it accepted none.
#define LATIK_CARRY_KERNEL(NAME, BLOCK_T, STATE_T, INIT, BLOCK_FN)                                          \
    QDEV void NAME##_state_at(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw, int64_t nb,   \
                              int64_t s, STATE_T * st) {                                                   \
        BLOCK_T tmp;                                                                                       \
        INIT(st);                                                                                          \
        int64_t start = 0;                                                                                 \
        for (int64_t t = s - 1; t >= 0; --t) {                                                             \
            STATE_T probe;                                                                                 \
            INIT(&probe);                                                                                  \
            if (BLOCK_FN(x + t*QK_K, qw ? qw + (t % nb)*QK_K : (const float *) 0, &tmp, &probe) & 0xffff) { \
                *st = probe;                                                                               \
                start = t + 1;                                                                             \
                break;                                                                                     \
            }                                                                                              \
        }                                                                                                  \
        for (int64_t t = start; t < s; ++t) {                                                              \
            BLOCK_FN(x + t*QK_K, qw ? qw + (t % nb)*QK_K : (const float *) 0, &tmp, st);                   \
        }                                                                                                  \
    }                                                                                                      \
    QKERNEL void quantize_##NAME(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw,             \
                                 uint8_t * GGML_RESTRICT y, const float * GGML_RESTRICT aux,               \
                                 int64_t nrows, int64_t n_per_row) {                                       \
        (void) aux;                                                                                        \
        const int64_t nb = n_per_row / QK_K;                                                               \
        QFOR(row, nrows) {                                                                                 \
            STATE_T st;                                                                                    \
            INIT(&st);                                                                                     \
            bool exact = row == 0;  /* the state is C's: the launch's start, or past an accepted one */    \
            for (int64_t j = 0; j < nb; ++j) {                                                             \
                const int64_t s = row*nb + j;                                                              \
                BLOCK_T blk;                                                                               \
                const int m = BLOCK_FN(x + s*QK_K, qw ? qw + j*QK_K : (const float *) 0, &blk, &st);       \
                if (!exact) {                                                                              \
                    const int acc = m & 0xffff;                                                            \
                    const int before = acc ? ((acc & -acc) - 1) : 0xffff;                                  \
                    if ((m >> 16) & before) {  /* it read the state carried in: redo the row with C's */   \
                        NAME##_state_at(x, qw, nb, row*nb, &st);                                           \
                        exact = true;                                                                      \
                        j = -1;                                                                            \
                        continue;                                                                          \
                    }                                                                                      \
                    if (acc) exact = true;                                                                 \
                }                                                                                          \
                store_block(y + s * (int64_t) sizeof(BLOCK_T), &blk, (int) sizeof(BLOCK_T));               \
            }                                                                                              \
        }                                                                                                  \
    }

// ik's quantize_row_iq3_xxs_impl(256, ...): L and is_on_grid carried; at the start of a call the
// numpy port's zeros and all on the grid (C reads uninitialised memory there).
typedef struct { int8_t L[32]; bool is_on_grid[8]; } latik_iq3_xxs_state;
QDEV void latik_iq3_xxs_init(latik_iq3_xxs_state * st) {
    memset(st->L, 0, 32);
    for (int k = 0; k < 8; ++k) st->is_on_grid[k] = true;
}
QDEV int latik_iq3_xxs_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw,
                             block_iq3_xxs * GGML_RESTRICT y, latik_iq3_xxs_state * st) {
    return iq3_xxs_block_t<true>(x, qw, y, st->L, st->is_on_grid);
}
LATIK_CARRY_KERNEL(iq3_xxs_ik, block_iq3_xxs, latik_iq3_xxs_state, latik_iq3_xxs_init, latik_iq3_xxs_block)

// ik's quantize_row_iq2_s_impl: L carried (zeros at the start of a call, as the numpy port).
typedef struct { int8_t L[16]; } latik_iq2_s_state;
QDEV void latik_iq2_s_init(latik_iq2_s_state * st) { memset(st->L, 0, 16); }
QDEV int latik_iq2_s_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw,
                           block_iq2_s * GGML_RESTRICT y, latik_iq2_s_state * st) {
    return iq2_s_block_t<true>(x, qw, y, st->L);
}
LATIK_CARRY_KERNEL(iq2_s_ik, block_iq2_s, latik_iq2_s_state, latik_iq2_s_init, latik_iq2_s_block)

// ---------------------------------------------------------------- IQ1_M (ik): its own algorithm
// ik's quantize_row_iq1_m_impl: sigma2 per 32 values, iq1m_process_1block (every split and shift
// combination scored from best = 0, the four combinations rescored where a group moved to a
// neighbour), the refit with the original weights, d*1.085f. shifts[ib] (a stack array of
// quantize_iq1_m) is not set for eps sub-blocks, which then keep the value of the last super-block
// that set it, in C over the rows of one call: one thread per row; where a row's eps sub-block
// reads a slot no earlier super-block of the row set, the value comes from the super-blocks
// before the row (walked back; 0 at the start of the launch, as the numpy port starts a call).

// weight[] of sub-block ib (16 values at xb) and whether it is past the eps test; where the
// weights times |x| (i = 1..15) sum to 0, w = x^2.
QDEV bool latik_iq1_m_weights(const float * GGML_RESTRICT xb, const float * GGML_RESTRICT qw, float sigma2,
                              float * GGML_RESTRICT weight) {
    const int block_size = LAT_IQ1M_BLOCK_SIZE;
    if (qw) {
        for (int i = 0; i < block_size; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i]*xb[i]);
    } else {
        for (int i = 0; i < block_size; ++i) weight[i] = xb[i]*xb[i];
    }
    float max = fabsf(xb[0]);
    float sumwx = 0;
    for (int i = 1; i < block_size; ++i) {
        float ax = fabsf(xb[i]);
        max = MAX(max, ax);
        sumwx += weight[i]*ax;
    }
    if (max < GROUP_MAX_EPS_IQ1_M) return false;
    if (sumwx == 0) {
        for (int i = 0; i < block_size; ++i) weight[i] = xb[i]*xb[i];
    }
    return true;
}

QDEV float latik_iq1_m_sigma2(const float * GGML_RESTRICT xb) {
    float sumx2 = 0;
    for (int i = 0; i < 32; ++i) sumx2 += xb[i]*xb[i];
    return 1.5f*sumx2/32;
}

// iq1m_process_1block -> best_k (C aborts where no split is accepted: here k = 0, scale 0).
QDEV int latik_iq1m_process_1block(const float * GGML_RESTRICT xb, const float * GGML_RESTRICT weight,
                                   int8_t * GGML_RESTRICT L, float * GGML_RESTRICT the_scale,
                                   uint16_t * GGML_RESTRICT the_index) {
    const uint64_t * kgrid_q2xs      = lat_iq1_s_grid;
    const int32_t  * kmap_q2xs       = lat_iq1_s_map;
    const uint16_t * kneighbors_q2xs = lat_iq1_s_neighbours;
    const int block_size = LAT_IQ1M_BLOCK_SIZE;

    const float x_p[3] = {-1 + LAT_IQ1M_DELTA,  LAT_IQ1M_DELTA, 1 + LAT_IQ1M_DELTA};
    const float x_m[3] = {-1 - LAT_IQ1M_DELTA, -LAT_IQ1M_DELTA, 1 - LAT_IQ1M_DELTA};

    float sumqx[4], sumq2[4];
    float sumw1[LAT_IQ1M_BLOCK_SIZE+1], sumw2[LAT_IQ1M_BLOCK_SIZE+1];
    float sumx1[LAT_IQ1M_BLOCK_SIZE+1], sumx2[LAT_IQ1M_BLOCK_SIZE+1];
    float pv[LAT_IQ1M_BLOCK_SIZE];
    int   idx[LAT_IQ1M_BLOCK_SIZE];

    for (int j = 0; j < block_size; ++j) {
        pv[j] = xb[j];
        idx[j] = j;
    }
    lat_iq1_sort_pairs(pv, idx, block_size);
    sumw1[0] = sumw2[0] = sumx1[0] = sumx2[0] = 0;
    for (int j = 0; j < block_size; ++j) {
        int i = idx[j];
        if (i < block_size/2) {
            sumw1[j+1] = sumw1[j] + weight[i];
            sumx1[j+1] = sumx1[j] + weight[i]*xb[i];
            sumw2[j+1] = sumw2[j];
            sumx2[j+1] = sumx2[j];
        } else {
            sumw2[j+1] = sumw2[j] + weight[i];
            sumx2[j+1] = sumx2[j] + weight[i]*xb[i];
            sumw1[j+1] = sumw1[j];
            sumx1[j+1] = sumx1[j];
        }
    }
    float best_score = 0, scale = 0.f;
    int besti1 = -1, besti2 = -1, best_k = -1;
    for (int i1 = 0; i1 <= block_size; ++i1) {
        for (int i2 = i1; i2 <= block_size; ++i2) {
            sumqx[0] = (sumx1[i1] - sumx1[0])*x_p[0] + (sumx1[i2] - sumx1[i1])*x_p[1] + (sumx1[block_size]-sumx1[i2])*x_p[2] +
                       (sumx2[i1] - sumx2[0])*x_p[0] + (sumx2[i2] - sumx2[i1])*x_p[1] + (sumx2[block_size]-sumx2[i2])*x_p[2];
            sumqx[1] = (sumx1[i1] - sumx1[0])*x_p[0] + (sumx1[i2] - sumx1[i1])*x_p[1] + (sumx1[block_size]-sumx1[i2])*x_p[2] +
                       (sumx2[i1] - sumx2[0])*x_m[0] + (sumx2[i2] - sumx2[i1])*x_m[1] + (sumx2[block_size]-sumx2[i2])*x_m[2];
            sumqx[2] = (sumx1[i1] - sumx1[0])*x_m[0] + (sumx1[i2] - sumx1[i1])*x_m[1] + (sumx1[block_size]-sumx1[i2])*x_m[2] +
                       (sumx2[i1] - sumx2[0])*x_p[0] + (sumx2[i2] - sumx2[i1])*x_p[1] + (sumx2[block_size]-sumx2[i2])*x_p[2];
            sumqx[3] = (sumx1[i1] - sumx1[0])*x_m[0] + (sumx1[i2] - sumx1[i1])*x_m[1] + (sumx1[block_size]-sumx1[i2])*x_m[2] +
                       (sumx2[i1] - sumx2[0])*x_m[0] + (sumx2[i2] - sumx2[i1])*x_m[1] + (sumx2[block_size]-sumx2[i2])*x_m[2];
            sumq2[0] = (sumw1[i1] - sumw1[0])*x_p[0]*x_p[0] + (sumw1[i2] - sumw1[i1])*x_p[1]*x_p[1] + (sumw1[block_size]-sumw1[i2])*x_p[2]*x_p[2] +
                       (sumw2[i1] - sumw2[0])*x_p[0]*x_p[0] + (sumw2[i2] - sumw2[i1])*x_p[1]*x_p[1] + (sumw2[block_size]-sumw2[i2])*x_p[2]*x_p[2];
            sumq2[1] = (sumw1[i1] - sumw1[0])*x_p[0]*x_p[0] + (sumw1[i2] - sumw1[i1])*x_p[1]*x_p[1] + (sumw1[block_size]-sumw1[i2])*x_p[2]*x_p[2] +
                       (sumw2[i1] - sumw2[0])*x_m[0]*x_m[0] + (sumw2[i2] - sumw2[i1])*x_m[1]*x_m[1] + (sumw2[block_size]-sumw2[i2])*x_m[2]*x_m[2];
            sumq2[2] = (sumw1[i1] - sumw1[0])*x_m[0]*x_m[0] + (sumw1[i2] - sumw1[i1])*x_m[1]*x_m[1] + (sumw1[block_size]-sumw1[i2])*x_m[2]*x_m[2] +
                       (sumw2[i1] - sumw2[0])*x_p[0]*x_p[0] + (sumw2[i2] - sumw2[i1])*x_p[1]*x_p[1] + (sumw2[block_size]-sumw2[i2])*x_p[2]*x_p[2];
            sumq2[3] = (sumw1[i1] - sumw1[0])*x_m[0]*x_m[0] + (sumw1[i2] - sumw1[i1])*x_m[1]*x_m[1] + (sumw1[block_size]-sumw1[i2])*x_m[2]*x_m[2] +
                       (sumw2[i1] - sumw2[0])*x_m[0]*x_m[0] + (sumw2[i2] - sumw2[i1])*x_m[1]*x_m[1] + (sumw2[block_size]-sumw2[i2])*x_m[2]*x_m[2];
            for (int k = 0; k < 4; ++k) {
                if (sumq2[k] > 0 && sumqx[k]*sumqx[k] > best_score*sumq2[k]) {
                    scale = sumqx[k]/sumq2[k]; best_score = scale*sumqx[k];
                    besti1 = i1; besti2 = i2; best_k = k;
                }
            }
        }
    }
    if (besti1 < 0 || besti2 < 0 || best_k < 0) {  // C aborts (GGML_ASSERT)
        QTOOL_ABORT();
        *the_scale = 0;
        the_index[0] = the_index[1] = 0;
        return 0;
    }
    for (int j =      0; j < besti1; ++j) L[idx[j]] = 0;
    for (int j = besti1; j < besti2; ++j) L[idx[j]] = 1;
    for (int j = besti2; j < block_size; ++j) L[idx[j]] = 2;
    if (scale < 0) {
        for (int j = 0; j < block_size; ++j) L[j] = 2 - L[j];
        scale = -scale;
        best_k = 3 - best_k;
    }
    bool all_on_grid = true;
    const float * xx;
    for (int k = 0; k < block_size/8; ++k) {
        if (k == 0) xx = best_k < 2 ? x_p : x_m;
        else xx = best_k%2 == 0 ? x_p : x_m;
        uint16_t u = 0;
        for (int j = 0; j < 8; ++j) u |= (L[8*k+j] << 2*j);
        int grid_index = kmap_q2xs[u];
        if (grid_index < 0) {
            all_on_grid = false;
            const uint16_t * neighbours = kneighbors_q2xs - kmap_q2xs[u] - 1;
            grid_index = lat_iq1_find_best_neighbour2(neighbours, kgrid_q2xs, xb + 8*k, weight + 8*k, scale, xx, L + 8*k);
        }
        the_index[k] = grid_index;
    }
    if (!all_on_grid) {
        sumqx[0] = sumqx[1] = sumqx[2] = sumqx[3] = 0;
        sumq2[0] = sumq2[1] = sumq2[2] = sumq2[3] = 0;
        for (int j = 0; j < block_size; ++j) {
            float w = weight[j];
            float qp = x_p[L[j]];
            float qm = x_m[L[j]];
            sumqx[0] += w*xb[j]*qp;
            sumq2[0] += w*qp*qp;
            sumqx[3] += w*xb[j]*qm;
            sumq2[3] += w*qm*qm;
            if (j < 8) {
                sumqx[1] += w*xb[j]*qp;
                sumq2[1] += w*qp*qp;
                sumqx[2] += w*xb[j]*qm;
                sumq2[2] += w*qm*qm;
            } else {
                sumqx[2] += w*xb[j]*qp;
                sumq2[2] += w*qp*qp;
                sumqx[1] += w*xb[j]*qm;
                sumq2[1] += w*qm*qm;
            }
        }
        best_score = 0;
        for (int k = 0; k < 4; ++k) {
            if (sumqx[k] > 0 && sumq2[k] > 0 && sumqx[k]*sumqx[k] > best_score*sumq2[k]) {
                scale = sumqx[k]/sumq2[k]; best_score = scale*sumqx[k]; best_k = k;
            }
        }
    }
    *the_scale = scale;
    return best_k;
}

// One super-block of ik's quantize_row_iq1_m_impl; shifts: C's array, carried in and out.
QDEV void latik_iq1_m_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                            block_iq1_m * GGML_RESTRICT y, int8_t * GGML_RESTRICT shifts) {
    const int block_size = LAT_IQ1M_BLOCK_SIZE;

    float all_sigma2[QK_K/32];
    float scales[QK_K/LAT_IQ1M_BLOCK_SIZE];
    float weight[LAT_IQ1M_BLOCK_SIZE];
    int8_t L[LAT_IQ1M_BLOCK_SIZE];
    uint16_t index[LAT_IQ1M_BLOCK_SIZE/8];

    memset(y->qs, 0, QK_K/8);
    memset(y->qh, 0, QK_K/16);
    memset(y->scales, 0, QK_K/32);

    float max_scale = 0;

    const float * xbl = x;
    for (int ib = 0; ib < QK_K/32; ++ib) all_sigma2[ib] = latik_iq1_m_sigma2(xbl + 32*ib);

    for (int ib = 0; ib < QK_K/block_size; ++ib) {
        float sigma2 = all_sigma2[ib/2];
        const float * xb = xbl + block_size*ib;
        const float * qw = quant_weights ? quant_weights + block_size*ib : (const float *) 0;
        if (!latik_iq1_m_weights(xb, qw, sigma2, weight)) {
            scales[ib] = 0;
            continue;
        }
        int best_k = latik_iq1m_process_1block(xb, weight, L, &scales[ib], index);

        y->qs[2*ib + 0] = index[0] & 255;
        y->qs[2*ib + 1] = index[1] & 255;
        y->qh[ib] = (index[0] >> 8) | ((index[1] >> 8) << 4);
        shifts[ib] = best_k;
        max_scale = MAX(max_scale, scales[ib]);
    }

    if (!max_scale) {
        return;
    }

    lat_iq1_m_refit(xbl, quant_weights, all_sigma2, scales, shifts, max_scale, y, 1.085f);
}

QKERNEL void quantize_iq1_m_ik(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw,
                               uint8_t * GGML_RESTRICT y, const float * GGML_RESTRICT aux,
                               int64_t nrows, int64_t n_per_row) {
    (void) aux;
    const int64_t nb = n_per_row / QK_K;
    const int nsub = QK_K/LAT_IQ1M_BLOCK_SIZE;
    QFOR(row, nrows) {
        int8_t shifts[QK_K/LAT_IQ1M_BLOCK_SIZE];
        memset(shifts, 0, sizeof(shifts));
        int known = row == 0 ? 0xffff : 0;  // slots whose shifts[] is C's
        for (int64_t j = 0; j < nb; ++j) {
            const int64_t s = row*nb + j;
            const float * xbl = x + s*QK_K;
            for (int ib = 0; ib < nsub && known != 0xffff; ++ib) {
                if (known & (1 << ib)) continue;
                float weight[LAT_IQ1M_BLOCK_SIZE];
                const float * q = qw ? qw + j*QK_K + LAT_IQ1M_BLOCK_SIZE*ib : (const float *) 0;
                if (latik_iq1_m_weights(xbl + LAT_IQ1M_BLOCK_SIZE*ib, q, latik_iq1_m_sigma2(xbl + 32*(ib/2)), weight)) {
                    known |= 1 << ib;  // set here
                    continue;
                }
                // an eps sub-block reading the slot: the last sub-block in that slot before the row
                int8_t v = 0;
                for (int64_t t = row*nb - 1; t >= 0; --t) {
                    const float * xt = x + t*QK_K;
                    const float * qt = qw ? qw + (t % nb)*QK_K + LAT_IQ1M_BLOCK_SIZE*ib : (const float *) 0;
                    if (latik_iq1_m_weights(xt + LAT_IQ1M_BLOCK_SIZE*ib, qt, latik_iq1_m_sigma2(xt + 32*(ib/2)), weight)) {
                        int8_t Lt[LAT_IQ1M_BLOCK_SIZE];
                        uint16_t it[2];
                        float sct;
                        v = latik_iq1m_process_1block(xt + LAT_IQ1M_BLOCK_SIZE*ib, weight, Lt, &sct, it);
                        break;
                    }
                }
                shifts[ib] = v;
                known |= 1 << ib;
            }
            block_iq1_m blk;
            latik_iq1_m_block(xbl, qw ? qw + j*QK_K : (const float *) 0, &blk, shifts);
            store_block(y + s * (int64_t) sizeof(block_iq1_m), &blk, (int) sizeof(block_iq1_m));
        }
    }
}

// ---------------------------------------------------------------- IQ2_XS (ik): its own algorithm
// ik's quantize_row_iq2_xs_impl: the scale from an exhaustive split scan (levels 1/3/5), mainline's
// grid search around it keeping each group's grid index, up to 3 refinements, and the super-block
// scale refitted on the dequantized values. L (a stack array) is kept where nothing is accepted and
// cleared by eps sub-blocks: carried as IQ3_XXS's state (bit ib of the mask: L set, by an accepted
// candidate or the eps branch). NaN levels round to 0 as on x86 (id = inf / 0 where the scan found
// nothing).
typedef struct { int8_t L[16]; } latik_iq2_xs_state;
QDEV void latik_iq2_xs_init(latik_iq2_xs_state * st) { memset(st->L, 0, 16); }
QDEV int latik_iq2_xs_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                            block_iq2_xs * GGML_RESTRICT y, latik_iq2_xs_state * st) {
    const uint64_t * kgrid_q2xs      = lat_iq2_xs_grid;
    const int32_t  * kmap_q2xs       = lat_iq2_xs_map;
    const uint16_t * kneighbors_q2xs = lat_iq2_xs_neighbours;
    const float grid_values[3] = {8.f, 25.f, 43.f};  // iq2xs_grid's bytes for the levels 0, 1, 2

    const int kMaxQ = 3;
    int status = 0;
    int8_t * L = st->L;

    float scales[QK_K/16];
    float weight[16];
    float xval[16];
    int8_t Laux[16];
    float  waux[16];
    uint8_t block_signs[2];  // (C's is_on_grid flags are never read here: left out)
    uint16_t q2[2*(QK_K/16)];
    uint16_t index[2], aux_index[2];
    float sumx[17], sumw[17], pv[16];
    int pi[16];

    y->d = GGML_FP32_TO_FP16(0.f);
    memset(q2, 0, QK_K/4);
    memset(y->scales, 0, QK_K/32);

    float max_scale = 0;

    const float * xbl = x;
    float sumx2 = 0;
    for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i]*xbl[i];
    float sigma2 = sumx2/QK_K;

    for (int ib = 0; ib < QK_K/16; ++ib) {
        const float * xb = xbl + 16*ib;
        if (quant_weights) {
            const float * qw = quant_weights + 16*ib;
            for (int i = 0; i < 16; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i]*xb[i]);
        } else {
            for (int i = 0; i < 16; ++i) weight[i] = 0.25f*sigma2 + xb[i]*xb[i];
        }
        for (int i = 0; i < 16; ++i) waux[i] = sqrtf(weight[i]);
        for (int k = 0; k < 2; ++k) block_signs[k] = lat_group_signs(xb + 8*k, weight + 8*k, xval + 8*k, true) & 127;
        float max = xval[0];
        for (int i = 1; i < 16; ++i) max = MAX(max, xval[i]);
        if (max < GROUP_MAX_EPS) {
            scales[ib] = 0;
            memset(L, 0, 16);
            status |= 1 << ib;
            continue;
        }
        status |= 1 << (16 + ib);
        for (int j = 0; j < 16; ++j) {
            pv[j] = xval[j];
            pi[j] = j;
        }
        lat_iq1_sort_pairs(pv, pi, 16);
        {
            sumx[0] = sumw[0] = 0;
            for (int j = 0; j < 16; ++j) {
                int i = pi[j];
                sumx[j+1] = sumx[j] + weight[i]*xval[i];
                sumw[j+1] = sumw[j] + weight[i];
            }
        }
        float best = 0, scale = 0;
        for (int i1 = 0; i1 <= 16; ++i1) {
            for (int i2 = i1; i2 <= 16; ++i2) {
                float sumqx = (sumx[i1] - sumx[0])*1 + (sumx[i2] - sumx[i1])*3 + (sumx[16] - sumx[i2])*5;
                float sumq2 = (sumw[i1] - sumw[0])*1 + (sumw[i2] - sumw[i1])*9 + (sumw[16] - sumw[i2])*25;
                if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {
                    scale = sumqx/sumq2; best = scale*sumqx;
                }
            }
        }
        best = 0;
        float eff_max = scale*(2*kMaxQ - 1);
        index[0] = index[1] = 0;
        for (int is = -7; is <= 7; ++is) {
            float id = (2*kMaxQ-1+is*0.1f)/eff_max;
            float this_scale = 1/id;
            for (int k = 0; k < 2; ++k) {
                for (int i = 0; i < 8; ++i) {
                    int l = nearest_int_ik(0.5f*(id*xval[8*k+i]-1));
                    Laux[8*k+i] = MAX(0, MIN(kMaxQ-1, l));
                }
                uint16_t u = 0;
                for (int i = 0; i < 8; ++i) u |= (Laux[8*k+i] << 2*i);
                int grid_index = kmap_q2xs[u];
                if (grid_index < 0) {
                    const uint16_t * neighbours = kneighbors_q2xs - kmap_q2xs[u] - 1;
                    grid_index = lat_iq2_find_best_neighbour(neighbours, kgrid_q2xs, xval + 8*k, waux + 8*k, this_scale, Laux + 8*k);
                }
                aux_index[k] = grid_index;
            }
            float sumqx = 0, sumq2 = 0;
            for (int i = 0; i < 16; ++i) {
                float w = weight[i];
                float q = 2*Laux[i] + 1;
                sumqx += w*xval[i]*q;
                sumq2 += w*q*q;
            }
            if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {
                scale = sumqx/sumq2; best = scale*sumqx;
                for (int i = 0; i < 16; ++i) L[i] = Laux[i];
                for (int k = 0; k <  2; ++k) index[k] = aux_index[k];
                status = (status & ~(1 << (16 + ib))) | (1 << ib);
            }
        }
        if (scale) {
            for (int iter = 0; iter < 3; ++iter) {
                float id = 1/scale;
                bool changed = false;
                for (int k = 0; k < 2; ++k) {
                    uint16_t u = 0;
                    for (int i = 0; i < 8; ++i) {
                        int l = nearest_int_ik(0.5f*(id*xval[8*k+i]-1));
                        l = MAX(0, MIN(kMaxQ-1, l));
                        u |= (l << 2*i);
                        Laux[8*k + i] = l;
                    }
                    int grid_index = kmap_q2xs[u];
                    if (grid_index < 0) {
                        const uint16_t * neighbours = kneighbors_q2xs - kmap_q2xs[u] - 1;
                        grid_index = lat_iq2_find_best_neighbour(neighbours, kgrid_q2xs, xval + 8*k, waux + 8*k, scale, Laux + 8*k);
                    }
                    aux_index[k] = grid_index;
                    if (grid_index != index[k]) changed = true;
                }
                if (!changed) break;
                float sumqx = 0, sumq2 = 0;
                for (int i = 0; i < 16; ++i) {
                    float w = weight[i];
                    float q = 2*Laux[i] + 1;
                    sumqx += w*xval[i]*q;
                    sumq2 += w*q*q;
                }
                if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {
                    scale = sumqx/sumq2;
                    best = scale*sumqx;
                    memcpy(L, Laux, 16);
                    for (int k = 0; k < 2; ++k) index[k] = aux_index[k];
                    status = (status & ~(1 << (16 + ib))) | (1 << ib);
                }
                else break;
            }
        }
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 2; ++k) block_signs[k] = (~block_signs[k]) & 127;
        }
        for (int k = 0; k < 2; ++k) {
            uint16_t u = 0;
            for (int i = 0; i < 8; ++i) u |= (L[8*k+i] << 2*i);
            int grid_index = kmap_q2xs[u];  // C aborts on a point off the grid
            q2[2*ib+k] = grid_index | (block_signs[k] << 9);
        }
        scales[ib] = scale;
        max_scale = MAX(max_scale, scale);
    }

    if (!max_scale) {
        memset(y->qs, 0, QK_K/4);
        return status;
    }

    float d = max_scale/31;
    y->d = GGML_FP32_TO_FP16(d);
    float id = 1/d;
    float sumqx = 0, sumq2 = 0;
    for (int ib = 0; ib < QK_K/16; ++ib) {
        int l = nearest_int(0.5f*(id*scales[ib]-1));
        l = MAX(0, MIN(15, l));
        if (ib%2 == 0) y->scales[ib/2] = l;
        else y->scales[ib/2] |= (l << 4);
        l = 2*l + 1;
        const float * xb = xbl + 16*ib;
        if (quant_weights) {
            const float * qw = quant_weights + 16*ib;
            for (int i = 0; i < 16; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i]*xb[i]);
        } else {
            for (int i = 0; i < 16; ++i) weight[i] = 0.25f*sigma2 + xb[i]*xb[i];
        }
        for (int k = 0; k < 2; ++k) {
            int grid_index = q2[2*ib+k] & 511;
            const int8_t * pg = (const int8_t *)(kgrid_q2xs + grid_index);
            const int sidx = q2[2*ib+k] >> 9;
            int par = 0;
            for (int b = 0; b < 7; ++b) par ^= (sidx >> b) & 1;
            const uint8_t signs = (uint8_t)(sidx | (par << 7));  // ksigns_iq2xs[sidx]
            for (int j = 0; j < 8; ++j) {
                float w = weight[8*k+j];
                float q = 0.125f*l*grid_values[(pg[j] - 1)/2]*(signs & (1 << j) ? -1.f : 1.f);
                sumqx += w*q*xb[8*k+j];
                sumq2 += w*q*q;
            }
        }
    }
    memcpy(y->qs, q2, QK_K/4);
    if (sumq2 > 0) y->d = GGML_FP32_TO_FP16(1.05f*sumqx/sumq2);
    return status;
}
LATIK_CARRY_KERNEL(iq2_xs_ik, block_iq2_xs, latik_iq2_xs_state, latik_iq2_xs_init, latik_iq2_xs_block)
