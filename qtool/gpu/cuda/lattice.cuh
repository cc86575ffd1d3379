// Lattice i-quants of mainline ggml (ggml-quants.c: quantize_row_iq3_xxs_impl, quantize_row_iq3_s_impl,
// quantize_row_iq2_xxs_impl, quantize_row_iq2_xs_impl, quantize_row_iq2_s_impl, quantize_row_iq1_s_impl,
// quantize_row_iq1_m_impl and their neighbour searches), one super-block of 256 per thread.
// The grids, maps and neighbour lists are iq3xs_init_impl's / iq2xs_init_impl's, laid out as C
// indexes them (qtool/gpu/tables.py builds them with the numpy engine's builders).
#pragma once

#define LAT_FLT_MAX 3.40282346638528859811704183484516925e+38F

// The signs of 8 values (ggml's loop over a group of 8 of the IQ3_XXS / IQ2_* quantizers):
// xval = |x|, bit i of the result set where x[i] < 0; where even (all but IQ2_S), an odd count of
// negatives is made even by flipping the value of least weight*x*x (its xval becomes negative).
QDEV uint8_t lat_group_signs(const float * GGML_RESTRICT xb, const float * GGML_RESTRICT weight,
                             float * GGML_RESTRICT xval, bool even) {
    int nflip = 0;
    uint8_t s = 0;
    for (int i = 0; i < 8; ++i) {
        if (xb[i] >= 0) xval[i] = xb[i];
        else {
            xval[i] = -xb[i]; ++nflip; s |= (1 << i);
        }
    }
    if (even && nflip%2) {
        int imin = 0; float min = weight[imin]*xb[imin]*xb[imin];
        for (int i = 1; i < 8; ++i) {
            float ax = weight[i]*xb[i]*xb[i];
            if (ax < min) {
                min = ax; imin = i;
            }
        }
        xval[imin] = -xval[imin];
        s ^= (1 << imin);
    }
    return s;
}

// ---------------------------------------------------------------- IQ3_XXS / IQ3_S (D4 grids)

QTABLE(uint32_t, lat_iq3_256_grid)        // kgrid_q3xs of iq3xs_init_impl(256)
QTABLE(int32_t, lat_iq3_256_map)          // kmap_q3xs
QTABLE(uint16_t, lat_iq3_256_neighbours)  // kneighbors_q3xs
QTABLE(uint32_t, lat_iq3_512_grid)        // iq3xs_init_impl(512)
QTABLE(int32_t, lat_iq3_512_map)
QTABLE(uint16_t, lat_iq3_512_neighbours)

typedef struct { ggml_half d; uint8_t qs[3*QK_K/8]; } block_iq3_xxs;
typedef struct { ggml_half d; uint8_t qs[QK_K/4]; uint8_t qh[QK_K/32]; uint8_t signs[QK_K/8]; uint8_t scales[QK_K/64]; } block_iq3_s;

QDEV int lat_iq3_find_best_neighbour(const uint16_t * GGML_RESTRICT neighbours, const uint32_t * GGML_RESTRICT grid,
        const float * GGML_RESTRICT xval, const float * GGML_RESTRICT weight, float scale, int8_t * GGML_RESTRICT L) {
    int num_neighbors = neighbours[0];
    float best_d2 = LAT_FLT_MAX;
    int grid_index = -1;
    for (int j = 1; j <= num_neighbors; ++j) {
        const int8_t * pg = (const int8_t *)(grid + neighbours[j]);
        float d2 = 0;
        for (int i = 0; i < 4; ++i) {
            float q = pg[i];
            float diff = scale*q - xval[i];
            d2 += weight[i]*diff*diff;
        }
        if (d2 < best_d2) {
            best_d2 = d2; grid_index = neighbours[j];
        }
    }
    if (grid_index < 0) grid_index = neighbours[1];  // C aborts here (no finite distance)
    const int8_t * pg = (const int8_t *)(grid + grid_index);
    for (int i = 0; i < 4; ++i) L[i] = (pg[i] - 1)/2;
    return grid_index;
}

// quantize_row_iq3_xxs_impl(256, ...), one super-block (x, quant_weights: its 256 values).
// IK: ik_llama.cpp's version (lattice_ik.cuh): L is cleared only in the eps branch and
// is_on_grid never, so both (the caller's arrays) carry over from the sub-blocks before. Returns
// a mask: bit ib set where sub-block ib accepted a candidate, bit 16+ib where it accepted none
// (and was past the eps test).
template <bool IK>
QDEV int iq3_xxs_block_t(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                         block_iq3_xxs * GGML_RESTRICT y, int8_t * GGML_RESTRICT L, bool * GGML_RESTRICT is_on_grid) {
    int status = 0;
    const uint32_t * kgrid_q3xs      = lat_iq3_256_grid;
    const int32_t  * kmap_q3xs       = lat_iq3_256_map;
    const uint16_t * kneighbors_q3xs = lat_iq3_256_neighbours;

    const int kMaxQ = 8;
    const int quant_size = sizeof(block_iq3_xxs) - sizeof(ggml_half);

    float scales[QK_K/32];
    float weight[32];
    float xval[32];
    int8_t Laux[32];
    float  waux[32];
    bool   is_on_grid_aux[8];
    uint8_t block_signs[8];
    uint32_t q3buf[(3*(QK_K/8)+QK_K/32)/4];
    uint8_t * q3 = (uint8_t *) q3buf;
    uint32_t * scales_and_signs = q3buf + QK_K/16;

    y->d = GGML_FP32_TO_FP16(0.f);
    memset(q3, 0, 3*QK_K/8+QK_K/32);

    float max_scale = 0;

    const float * xbl = x;
    float sumx2 = 0;
    for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i]*xbl[i];
    float sigma2 = 2*sumx2/QK_K;

    for (int ib = 0; ib < QK_K/32; ++ib) {
        const float * xb = xbl + 32*ib;
        if (quant_weights) {
            const float * qw = quant_weights + 32*ib;
            for (int i = 0; i < 32; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i]*xb[i]);
        } else {
            for (int i = 0; i < 32; ++i) weight[i] = xb[i]*xb[i];
        }
        for (int i = 0; i < 32; ++i) waux[i] = sqrtf(weight[i]);
        for (int k = 0; k < 4; ++k) block_signs[k] = lat_group_signs(xb + 8*k, weight + 8*k, xval + 8*k, true) & 127;
        float max = xval[0];
        for (int i = 1; i < 32; ++i) max = MAX(max, xval[i]);
        if (!IK) memset(L, 0, 32);
        if (max < GROUP_MAX_EPS_IQ3_XXS) {
            scales[ib] = 0;
            if (IK) memset(L, 0, 32);
            continue;
        }
        float best = 0;
        float scale = max/(2*kMaxQ-1);
        if (!IK) for (int k = 0; k < 8; ++k) is_on_grid[k] = true;
        status |= 1 << (16 + ib);
        for (int is = -15; is <= 15; ++is) {
            float id = (2*kMaxQ-1+is*0.2f)/max;
            float this_scale = 1/id;
            for (int k = 0; k < 8; ++k) {
                for (int i = 0; i < 4; ++i) {
                    int l = nearest_int(0.5f*(id*xval[4*k+i]-1));
                    Laux[4*k+i] = MAX(0, MIN(kMaxQ-1, l));
                }
                uint16_t u = 0;
                for (int i = 0; i < 4; ++i) u |= (Laux[4*k+i] << 3*i);
                int grid_index = kmap_q3xs[u];
                is_on_grid_aux[k] = true;
                if (grid_index < 0) {
                    is_on_grid_aux[k] = false;
                    const uint16_t * neighbours = kneighbors_q3xs - kmap_q3xs[u] - 1;
                    grid_index = lat_iq3_find_best_neighbour(neighbours, kgrid_q3xs, xval + 4*k, waux + 4*k, this_scale, Laux + 4*k);
                }
            }
            float sumqx = 0, sumq2 = 0;
            for (int i = 0; i < 32; ++i) {
                float w = weight[i];
                float q = 2*Laux[i] + 1;
                sumqx += w*xval[i]*q;
                sumq2 += w*q*q;
            }
            if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {
                scale = sumqx/sumq2; best = scale*sumqx;
                for (int i = 0; i < 32; ++i) L[i] = Laux[i];
                for (int k = 0; k <  8; ++k) is_on_grid[k] = is_on_grid_aux[k];
                status = (status & ~(1 << (16 + ib))) | (1 << ib);
            }
        }
        int n_not_ongrid = 0;
        for (int k = 0; k < 8; ++k) if (!is_on_grid[k]) ++n_not_ongrid;
        if (n_not_ongrid > 0 && scale > 0) {
            float id = 1/scale;
            for (int k = 0; k < 8; ++k) {
                if (is_on_grid[k]) continue;
                uint16_t u = 0;
                for (int i = 0; i < 4; ++i) {
                    int l = nearest_int(0.5f*(id*xval[4*k+i]-1));
                    l = MAX(0, MIN(kMaxQ-1, l));
                    u |= (l << 3*i);
                }
                int grid_index = kmap_q3xs[u];
                if (grid_index < 0) {
                    const uint16_t * neighbours = kneighbors_q3xs - kmap_q3xs[u] - 1;
                    grid_index = lat_iq3_find_best_neighbour(neighbours, kgrid_q3xs, xval + 4*k, waux + 4*k, scale, L + 4*k);
                }
                const int8_t * pg = (const int8_t *)(kgrid_q3xs + grid_index);
                for (int i = 0; i < 4; ++i) L[4*k+i] = (pg[i] - 1)/2;
            }
            float sumqx = 0, sumq2 = 0;
            for (int i = 0; i < 32; ++i) {
                float w = weight[i];
                float q = 2*L[i] + 1;
                sumqx += w*xval[i]*q;
                sumq2 += w*q*q;
            }
            if (sumq2 > 0) scale = sumqx/sumq2;
        }
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 4; ++k) block_signs[k] = (~block_signs[k]) & 127;
        }
        for (int k = 0; k < 8; ++k) {
            uint16_t u = 0;
            for (int i = 0; i < 4; ++i) u |= (L[4*k+i] << 3*i);
            int grid_index = kmap_q3xs[u];  // C aborts on a point off the grid
            q3[8*ib+k] = grid_index;
        }
        scales_and_signs[ib] = block_signs[0] | (block_signs[1] << 7) | (block_signs[2] << 14) | (block_signs[3] << 21);
        scales[ib] = scale;
        max_scale = MAX(max_scale, scale);
    }

    if (!max_scale) {
        memset(y->qs, 0, quant_size);
        return status;
    }

    float d = max_scale/31;
    y->d = GGML_FP32_TO_FP16(d * 1.0125f);
    float id = 1/d;
    for (int ib = 0; ib < QK_K/32; ++ib) {
        int l = nearest_int(0.5f*(id*scales[ib]-1));
        l = MAX(0, MIN(15, l));
        scales_and_signs[ib] |= ((uint32_t)l << 28);
    }
    memcpy(y->qs, q3, quant_size);
    return status;
}
QDEV void iq3_xxs_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_iq3_xxs * GGML_RESTRICT y, float unused) {
    (void) unused;
    int8_t L[32];
    bool is_on_grid[8];
    iq3_xxs_block_t<false>(x, quant_weights, y, L, is_on_grid);
}
QTOOL_ROW_KERNEL(iq3_xxs, QK_K, block_iq3_xxs, iq3_xxs_block)

// quantize_row_iq3_s_impl(32, ...), one super-block.
QDEV void iq3_s_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                      block_iq3_s * GGML_RESTRICT y, float unused) {
    (void) unused;
    const uint32_t * kgrid_q3xs      = lat_iq3_512_grid;
    const int32_t  * kmap_q3xs       = lat_iq3_512_map;
    const uint16_t * kneighbors_q3xs = lat_iq3_512_neighbours;

    const int block_size = 32;
    const int kMaxQ = 8;
    const int bs4 = block_size/4;
    const int bs8 = block_size/8;

    float scales[QK_K/32];
    float weight[32];
    float xval[32];
    int8_t L[32];
    int8_t Laux[32];
    float  waux[32];
    bool   is_on_grid[8];
    bool   is_on_grid_aux[8];
    uint8_t block_signs[4];

    memset(y, 0, sizeof(block_iq3_s));
    y->d = GGML_FP32_TO_FP16(0.f);

    uint8_t * qs = y->qs;
    uint8_t * qh = y->qh;
    uint8_t * signs = y->signs;

    float max_scale = 0;

    const float * xbl = x;
    float sumx2 = 0;
    for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i]*xbl[i];
    float sigma2 = 2*sumx2/QK_K;

    for (int ib = 0; ib < QK_K/block_size; ++ib) {
        const float * xb = xbl + block_size*ib;
        if (quant_weights) {
            const float * qw = quant_weights + block_size*ib;
            for (int i = 0; i < block_size; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i]*xb[i]);
        } else {
            for (int i = 0; i < block_size; ++i) weight[i] = xb[i]*xb[i];
        }
        for (int i = 0; i < block_size; ++i) waux[i] = sqrtf(weight[i]);
        for (int k = 0; k < bs8; ++k) {
            uint8_t s = 0;
            for (int i = 0; i < 8; ++i) {
                if (xb[8*k + i] >= 0) xval[8*k + i] = xb[8*k + i];
                else {
                    xval[8*k + i] = -xb[8*k + i]; s |= (1 << i);
                }
            }
            block_signs[k] = s;
        }
        float max = xval[0];
        for (int i = 1; i < block_size; ++i) max = MAX(max, xval[i]);
        memset(L, 0, block_size);
        if (!max) {
            scales[ib] = 0;
            continue;
        }
        float best = 0;
        float scale = max/(2*kMaxQ-1);
        for (int k = 0; k < bs4; ++k) is_on_grid[k] = false;
        for (int is = -9; is <= 9; ++is) {
            float id = (2*kMaxQ-1+is*0.2f)/max;
            float this_scale = 1/id;
            for (int k = 0; k < bs4; ++k) {
                for (int i = 0; i < 4; ++i) {
                    int l = nearest_int(0.5f*(id*xval[4*k+i]-1));
                    Laux[4*k+i] = MAX(0, MIN(kMaxQ-1, l));
                }
                uint16_t u = 0;
                for (int i = 0; i < 4; ++i) u |= (Laux[4*k+i] << 3*i);
                int grid_index = kmap_q3xs[u];
                is_on_grid_aux[k] = true;
                if (grid_index < 0) {
                    is_on_grid_aux[k] = false;
                    const uint16_t * neighbours = kneighbors_q3xs - kmap_q3xs[u] - 1;
                    grid_index = lat_iq3_find_best_neighbour(neighbours, kgrid_q3xs, xval + 4*k, waux + 4*k, this_scale, Laux + 4*k);
                }
            }
            float sumqx = 0, sumq2 = 0;
            for (int i = 0; i < block_size; ++i) {
                float w = weight[i];
                float q = 2*Laux[i] + 1;
                sumqx += w*xval[i]*q;
                sumq2 += w*q*q;
            }
            if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {
                scale = sumqx/sumq2; best = scale*sumqx;
                for (int i = 0; i < block_size; ++i) L[i] = Laux[i];
                for (int k = 0; k < bs4; ++k) is_on_grid[k] = is_on_grid_aux[k];
            }
        }
        int n_not_ongrid = 0;
        for (int k = 0; k < bs4; ++k) if (!is_on_grid[k]) ++n_not_ongrid;
        if (n_not_ongrid > 0 && scale > 0) {
            float id = 1/scale;
            for (int k = 0; k < bs4; ++k) {
                uint16_t u = 0;
                for (int i = 0; i < 4; ++i) {
                    int l = nearest_int(0.5f*(id*xval[4*k+i]-1));
                    l = MAX(0, MIN(kMaxQ-1, l));
                    u |= (l << 3*i);
                }
                int grid_index = kmap_q3xs[u];
                if (grid_index < 0) {
                    const uint16_t * neighbours = kneighbors_q3xs - kmap_q3xs[u] - 1;
                    grid_index = lat_iq3_find_best_neighbour(neighbours, kgrid_q3xs, xval + 4*k, waux + 4*k, scale, L + 4*k);
                }
                const int8_t * pg = (const int8_t *)(kgrid_q3xs + grid_index);
                for (int i = 0; i < 4; ++i) L[4*k+i] = (pg[i] - 1)/2;
            }
            float sumqx = 0, sumq2 = 0;
            for (int i = 0; i < block_size; ++i) {
                float w = weight[i];
                float q = 2*L[i] + 1;
                sumqx += w*xval[i]*q;
                sumq2 += w*q*q;
            }
            if (sumq2 > 0) scale = sumqx/sumq2;
        }
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < bs8; ++k) block_signs[k] = ~block_signs[k];
        }
        for (int k = 0; k < bs4; ++k) {
            uint16_t u = 0;
            for (int i = 0; i < 4; ++i) u |= (L[4*k+i] << 3*i);
            int grid_index = kmap_q3xs[u];  // C aborts on a point off the grid
            qs[k] = grid_index & 255;
            qh[(ib*bs4+k)/8] |= ((grid_index >> 8) << ((ib*bs4+k)%8));
        }
        qs += bs4;
        for (int k = 0; k < bs8; ++k) signs[k] = block_signs[k];
        signs += bs8;
        scales[ib] = scale;
        max_scale = MAX(max_scale, scale);
    }

    if (!max_scale) {
        return;
    }

    float d = max_scale/31;
    y->d = GGML_FP32_TO_FP16(d * 1.033f);
    float id = 1/d;
    for (int ib = 0; ib < QK_K/block_size; ib += 2) {
        int l1 = nearest_int(0.5f*(id*scales[ib+0]-1));
        l1 = MAX(0, MIN(15, l1));
        int l2 = nearest_int(0.5f*(id*scales[ib+1]-1));
        l2 = MAX(0, MIN(15, l2));
        y->scales[ib/2] = l1 | (l2 << 4);
    }
}
QTOOL_ROW_KERNEL(iq3_s, QK_K, block_iq3_s, iq3_s_block)

// ---------------------------------------------------------------- IQ2_XXS / IQ2_XS / IQ2_S (E8 grids)

QTABLE(uint64_t, lat_iq2_xxs_grid)        // kgrid_q2xs of iq2xs_init_impl(GGML_TYPE_IQ2_XXS)
QTABLE(int32_t, lat_iq2_xxs_map)          // kmap_q2xs
QTABLE(uint16_t, lat_iq2_xxs_neighbours)  // kneighbors_q2xs
QTABLE(uint64_t, lat_iq2_xs_grid)
QTABLE(int32_t, lat_iq2_xs_map)
QTABLE(uint16_t, lat_iq2_xs_neighbours)
QTABLE(uint64_t, lat_iq2_s_grid)
QTABLE(int32_t, lat_iq2_s_map)
QTABLE(uint16_t, lat_iq2_s_neighbours)

typedef struct { ggml_half d; uint16_t qs[QK_K/8]; } block_iq2_xxs;
typedef struct { ggml_half d; uint16_t qs[QK_K/8]; uint8_t scales[QK_K/32]; } block_iq2_xs;
typedef struct { ggml_half d; uint8_t qs[QK_K/4]; uint8_t qh[QK_K/32]; uint8_t scales[QK_K/32]; } block_iq2_s;

QDEV int lat_iq2_find_best_neighbour(const uint16_t * GGML_RESTRICT neighbours, const uint64_t * GGML_RESTRICT grid,
        const float * GGML_RESTRICT xval, const float * GGML_RESTRICT weight, float scale, int8_t * GGML_RESTRICT L) {
    int num_neighbors = neighbours[0];
    float best_d2 = LAT_FLT_MAX;
    int grid_index = -1;
    for (int j = 1; j <= num_neighbors; ++j) {
        const int8_t * pg = (const int8_t *)(grid + neighbours[j]);
        float d2 = 0;
        for (int i = 0; i < 8; ++i) {
            float q = pg[i];
            float diff = scale*q - xval[i];
            d2 += weight[i]*diff*diff;
        }
        if (d2 < best_d2) {
            best_d2 = d2; grid_index = neighbours[j];
        }
    }
    if (grid_index < 0) grid_index = neighbours[1];  // C aborts here (no finite distance)
    const int8_t * pg = (const int8_t *)(grid + grid_index);
    for (int i = 0; i < 8; ++i) L[i] = (pg[i] - 1)/2;
    return grid_index;
}

// quantize_row_iq2_xxs_impl, one super-block (quant_weights required: the imatrix variant only).
// IK: ik_llama.cpp's version (lattice_ik.cuh): no eff_max <= 0 skip, ik's make_qp_quants (the
// unguarded sumlx/suml2: NaN gives id = NaN, rounded to 0 as x86 does).
template <bool IK>
QDEV void iq2_xxs_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_iq2_xxs * GGML_RESTRICT y, float unused) {
    (void) unused;
    const uint64_t * kgrid_q2xs      = lat_iq2_xxs_grid;
    const int32_t  * kmap_q2xs       = lat_iq2_xxs_map;
    const uint16_t * kneighbors_q2xs = lat_iq2_xxs_neighbours;

    const int kMaxQ = 3;

    float scales[QK_K/32];
    float weight[32];
    float xval[32];
    int8_t L[32];
    int8_t Laux[32];
    float  waux[32];
    uint8_t block_signs[4];
    uint32_t q2[2*(QK_K/32)];

    y->d = GGML_FP32_TO_FP16(0.f);
    memset(q2, 0, QK_K/4);

    float max_scale = 0;

    const float * xbl = x;
    float sumx2 = 0;
    for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i]*xbl[i];
    float sigma2 = sumx2/QK_K;

    for (int ib = 0; ib < QK_K/32; ++ib) {
        const float * xb = xbl + 32*ib;
        const float * qw = quant_weights + 32*ib;
        for (int i = 0; i < 32; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i]*xb[i]);
        for (int i = 0; i < 32; ++i) waux[i] = sqrtf(weight[i]);
        for (int k = 0; k < 4; ++k) block_signs[k] = lat_group_signs(xb + 8*k, weight + 8*k, xval + 8*k, true) & 127;
        float max = xval[0];
        for (int i = 1; i < 32; ++i) max = MAX(max, xval[i]);
        if (max < GROUP_MAX_EPS) {
            scales[ib] = 0;
            memset(L, 0, 32);
            continue;
        }
        float scale = make_qp_quants_t<IK>(32, kMaxQ+1, xval, (uint8_t*)L, weight);
        float eff_max = scale*kMaxQ;
        if (!IK && eff_max <= 0) {
            scales[ib] = 0;
            memset(L, 0, 32);
            continue;
        }
        float best = 0;
        bool accepted = false;
        for (int is = -6; is <= 6; ++is) {
            float id = (2*kMaxQ-1+is*0.1f)/eff_max;
            float this_scale = 1/id;
            for (int k = 0; k < 4; ++k) {
                for (int i = 0; i < 8; ++i) {
                    int l = nearest_int_sel<IK>(0.5f*(id*xval[8*k+i]-1));
                    Laux[8*k+i] = MAX(0, MIN(kMaxQ-1, l));
                }
                uint16_t u = 0;
                for (int i = 0; i < 8; ++i) u |= (Laux[8*k+i] << 2*i);
                int grid_index = kmap_q2xs[u];
                if (grid_index < 0) {
                    const uint16_t * neighbours = kneighbors_q2xs - kmap_q2xs[u] - 1;
                    grid_index = lat_iq2_find_best_neighbour(neighbours, kgrid_q2xs, xval + 8*k, waux + 8*k, this_scale, Laux + 8*k);
                }
            }
            float sumqx = 0, sumq2 = 0;
            for (int i = 0; i < 32; ++i) {
                float w = weight[i];
                float q = 2*Laux[i] + 1;
                sumqx += w*xval[i]*q;
                sumq2 += w*q*q;
            }
            if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {
                scale = sumqx/sumq2; best = scale*sumqx;
                memcpy(L, Laux, 32);
                accepted = true;
            }
        }
        // ik: no candidate taken and no refinement below: C encodes stale levels or aborts
        if (IK && !accepted && !(scale > 0)) QTOOL_ABORT();
        if (scale > 0) {
            float id = 1/scale;
            for (int k = 0; k < 4; ++k) {
                uint16_t u = 0;
                for (int i = 0; i < 8; ++i) {
                    int l = nearest_int(0.5f*(id*xval[8*k+i]-1));
                    l = MAX(0, MIN(kMaxQ-1, l));
                    u |= (l << 2*i);
                }
                int grid_index = kmap_q2xs[u];
                if (grid_index < 0) {
                    const uint16_t * neighbours = kneighbors_q2xs - kmap_q2xs[u] - 1;
                    grid_index = lat_iq2_find_best_neighbour(neighbours, kgrid_q2xs, xval + 8*k, waux + 8*k, scale, L + 8*k);
                }
                const int8_t * pg = (const int8_t *)(kgrid_q2xs + grid_index);
                for (int i = 0; i < 8; ++i) L[8*k+i] = (pg[i] - 1)/2;
            }
            float sumqx = 0, sumq2 = 0;
            for (int i = 0; i < 32; ++i) {
                float w = weight[i];
                float q = 2*L[i] + 1;
                sumqx += w*xval[i]*q;
                sumq2 += w*q*q;
            }
            if (sumq2 > 0) scale = sumqx/sumq2;
        }
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 4; ++k) block_signs[k] = (~block_signs[k]) & 127;
        }
        for (int k = 0; k < 4; ++k) {
            uint16_t u = 0;
            for (int i = 0; i < 8; ++i) u |= (L[8*k+i] << 2*i);
            int grid_index = kmap_q2xs[u];  // C aborts on a point off the grid
            q2[2*ib+0] |= ((uint32_t) grid_index << 8*k);
            q2[2*ib+1] |= (block_signs[k] << 7*k);
        }
        scales[ib] = scale;
        max_scale = MAX(max_scale, scale);
    }

    if (!max_scale) {
        memset(y->qs, 0, QK_K/4);
        return;
    }

    float d = max_scale/31;
    y->d = GGML_FP32_TO_FP16(d);
    float id = 1/d;
    for (int ib = 0; ib < QK_K/32; ++ib) {
        int l = nearest_int(0.5f*(id*scales[ib]-1));
        l = MAX(0, MIN(15, l));
        q2[2*ib+1] |= ((uint32_t)l << 28);
    }
    memcpy(y->qs, q2, QK_K/4);
}
QTOOL_ROW_KERNEL(iq2_xxs, QK_K, block_iq2_xxs, iq2_xxs_block<false>)

// quantize_row_iq2_xs_impl (XS: the imatrix variant only) and quantize_row_iq2_s_impl, one
// super-block: the two differ in the sign handling (XS: 7 bits + the flip of the least important
// element; S: 8 bits), the weights without an imatrix (S only), eps, the fudge on d and packing.
#define LAT_IQ2_XS_S_BODY(IS_S, IK)                                                                            \
    const int kMaxQ = 3;                                                                                     \
    float scales[QK_K/16];                                                                                   \
    float weight[16];                                                                                        \
    float xval[16];                                                                                          \
    int8_t Laux[16];                                                                                         \
    float  waux[16];                                                                                         \
    bool   is_on_grid[2];                                                                                    \
    bool   is_on_grid_aux[2];                                                                                \
    uint8_t block_signs[2];                                                                                  \
    float max_scale = 0;                                                                                     \
    const float * xbl = x;                                                                                   \
    float sumx2 = 0;                                                                                         \
    for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i]*xbl[i];                                                   \
    float sigma2 = (IS_S) ? 2*sumx2/QK_K : sumx2/QK_K;                                                       \
    for (int ib = 0; ib < QK_K/16; ++ib) {                                                                   \
        const float * xb = xbl + 16*ib;                                                                      \
        if (quant_weights) {                                                                                 \
            const float * qw = quant_weights + 16*ib;                                                        \
            for (int i = 0; i < 16; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i]*xb[i]);                    \
        } else {                                                                                             \
            for (int i = 0; i < 16; ++i) weight[i] = 0.25f*sigma2 + xb[i]*xb[i];                             \
        }                                                                                                    \
        for (int i = 0; i < 16; ++i) waux[i] = sqrtf(weight[i]);                                             \
        for (int k = 0; k < 2; ++k) {                                                                        \
            uint8_t s = lat_group_signs(xb + 8*k, weight + 8*k, xval + 8*k, !(IS_S));                        \
            block_signs[k] = (IS_S) ? s : (uint8_t)(s & 127);                                                \
        }                                                                                                    \
        float max = xval[0];                                                                                 \
        for (int i = 1; i < 16; ++i) max = MAX(max, xval[i]);                                                \
        if (!(IK)) memset(L, 0, 16);                                                                         \
        if (max < ((IS_S) ? GROUP_MAX_EPS_IQ2_S : GROUP_MAX_EPS)) {                                          \
            scales[ib] = 0;                                                                                  \
            continue;                                                                                        \
        }                                                                                                    \
        float best = 0;                                                                                      \
        float scale = max/(2*kMaxQ-1);                                                                       \
        is_on_grid[0] = is_on_grid[1] = true;                                                                \
        status |= 1 << (16 + ib);                                                                            \
        for (int is = -9; is <= 9; ++is) {                                                                   \
            float id = (2*kMaxQ-1+is*0.1f)/max;                                                              \
            float this_scale = 1/id;                                                                         \
            for (int k = 0; k < 2; ++k) {                                                                    \
                for (int i = 0; i < 8; ++i) {                                                                \
                    int l = nearest_int(0.5f*(id*xval[8*k+i]-1));                                            \
                    Laux[8*k+i] = MAX(0, MIN(kMaxQ-1, l));                                                   \
                }                                                                                            \
                uint16_t u = 0;                                                                              \
                for (int i = 0; i < 8; ++i) u |= (Laux[8*k+i] << 2*i);                                       \
                int grid_index = kmap_q2xs[u];                                                               \
                is_on_grid_aux[k] = true;                                                                    \
                if (grid_index < 0) {                                                                        \
                    is_on_grid_aux[k] = false;                                                               \
                    const uint16_t * neighbours = kneighbors_q2xs - kmap_q2xs[u] - 1;                        \
                    grid_index = lat_iq2_find_best_neighbour(neighbours, kgrid_q2xs, xval + 8*k, waux + 8*k, \
                                                             this_scale, Laux + 8*k);                        \
                }                                                                                            \
            }                                                                                                \
            float sumqx = 0, sumq2 = 0;                                                                      \
            for (int i = 0; i < 16; ++i) {                                                                   \
                float w = weight[i];                                                                         \
                float q = 2*Laux[i] + 1;                                                                     \
                sumqx += w*xval[i]*q;                                                                        \
                sumq2 += w*q*q;                                                                              \
            }                                                                                                \
            if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {                                                     \
                scale = sumqx/sumq2; best = scale*sumqx;                                                     \
                for (int i = 0; i < 16; ++i) L[i] = Laux[i];                                                 \
                for (int k = 0; k <  2; ++k) is_on_grid[k] = is_on_grid_aux[k];                              \
                status = (status & ~(1 << (16 + ib))) | (1 << ib);                                           \
            }                                                                                                \
        }                                                                                                    \
        int n_not_ongrid = 0;                                                                                \
        for (int k = 0; k < 2; ++k) if (!is_on_grid[k]) ++n_not_ongrid;                                      \
        if (n_not_ongrid > 0 && scale > 0) {                                                                 \
            float id = 1/scale;                                                                              \
            for (int k = 0; k < 2; ++k) {                                                                    \
                if (is_on_grid[k]) continue;                                                                 \
                uint16_t u = 0;                                                                              \
                for (int i = 0; i < 8; ++i) {                                                                \
                    int l = nearest_int(0.5f*(id*xval[8*k+i]-1));                                            \
                    l = MAX(0, MIN(kMaxQ-1, l));                                                             \
                    u |= (l << 2*i);                                                                         \
                    L[8*k + i] = l;                                                                          \
                }                                                                                            \
                int grid_index = kmap_q2xs[u];                                                               \
                if (grid_index < 0) {                                                                        \
                    const uint16_t * neighbours = kneighbors_q2xs - kmap_q2xs[u] - 1;                        \
                    grid_index = lat_iq2_find_best_neighbour(neighbours, kgrid_q2xs, xval + 8*k, waux + 8*k, \
                                                             scale, L + 8*k);                                \
                }                                                                                            \
            }                                                                                                \
            float sumqx = 0, sumq2 = 0;                                                                      \
            for (int i = 0; i < 16; ++i) {                                                                   \
                float w = weight[i];                                                                         \
                float q = 2*L[i] + 1;                                                                        \
                sumqx += w*xval[i]*q;                                                                        \
                sumq2 += w*q*q;                                                                              \
            }                                                                                                \
            if (sumq2 > 0) scale = sumqx/sumq2;                                                              \
        }                                                                                                    \
        if (scale < 0) {                                                                                     \
            scale = -scale;                                                                                  \
            for (int k = 0; k < 2; ++k) block_signs[k] = (IS_S) ? (uint8_t)~block_signs[k]                   \
                                                                : (uint8_t)((~block_signs[k]) & 127);        \
        }                                                                                                    \
        for (int k = 0; k < 2; ++k) {                                                                        \
            uint16_t u = 0;                                                                                  \
            for (int i = 0; i < 8; ++i) u |= (L[8*k+i] << 2*i);                                              \
            int grid_index = kmap_q2xs[u];  /* C aborts on a point off the grid */                           \
            LAT_IQ2_STORE(ib, k, grid_index, block_signs[k]);                                                \
        }                                                                                                    \
        scales[ib] = scale;                                                                                  \
        max_scale = MAX(max_scale, scale);                                                                   \
    }

QDEV void iq2_xs_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                       block_iq2_xs * GGML_RESTRICT y, float unused) {
    (void) unused;
    const uint64_t * kgrid_q2xs      = lat_iq2_xs_grid;
    const int32_t  * kmap_q2xs       = lat_iq2_xs_map;
    const uint16_t * kneighbors_q2xs = lat_iq2_xs_neighbours;
    uint16_t q2[2*(QK_K/16)];
    int8_t L[16];
    int status = 0;

    y->d = GGML_FP32_TO_FP16(0.f);
    memset(q2, 0, QK_K/4);
    memset(y->scales, 0, QK_K/32);
#define LAT_IQ2_STORE(ib, k, grid_index, sgn) q2[2*(ib)+(k)] = (grid_index) | ((sgn) << 9)
    LAT_IQ2_XS_S_BODY(false, false)
    (void) status;
#undef LAT_IQ2_STORE

    if (!max_scale) {
        memset(y->qs, 0, QK_K/4);
        return;
    }

    float d = max_scale/31;
    y->d = GGML_FP32_TO_FP16(d);
    float id = 1/d;
    for (int ib = 0; ib < QK_K/16; ++ib) {
        int l = nearest_int(0.5f*(id*scales[ib]-1));
        l = MAX(0, MIN(15, l));
        if (ib%2 == 0) y->scales[ib/2] = l;
        else y->scales[ib/2] |= (l << 4);
    }
    memcpy(y->qs, q2, QK_K/4);
}
QTOOL_ROW_KERNEL(iq2_xs, QK_K, block_iq2_xs, iq2_xs_block)

// IK: ik_llama.cpp's version (lattice_ik.cuh): L (the caller's array) is never cleared, so a
// sub-block where no candidate is accepted encodes the levels of the last one that accepted one.
// Returns a mask: bit ib where sub-block ib accepted a candidate, bit 16+ib where it accepted none.
template <bool IK>
QDEV int iq2_s_block_t(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                       block_iq2_s * GGML_RESTRICT y, int8_t * GGML_RESTRICT L) {
    int status = 0;
    const uint64_t * kgrid_q2xs      = lat_iq2_s_grid;
    const int32_t  * kmap_q2xs       = lat_iq2_s_map;
    const uint16_t * kneighbors_q2xs = lat_iq2_s_neighbours;

    memset(y, 0, sizeof(block_iq2_s));
    y->d = GGML_FP32_TO_FP16(0.f);
#define LAT_IQ2_STORE(ib, k, grid_index, sgn) do {                      \
        const int i8 = 2*(ib) + (k);                                    \
        y->qs[i8] = (grid_index) & 255;                                 \
        y->qh[i8/4] |= (((grid_index) >> 8) << 2*(i8%4));               \
        y->qs[QK_K/8 + i8] = (sgn);                                     \
    } while (0)
    LAT_IQ2_XS_S_BODY(true, IK)
#undef LAT_IQ2_STORE

    if (!max_scale) {
        return status;
    }

    float d = max_scale/31;
    y->d = GGML_FP32_TO_FP16(d * 0.9875f);
    float id = 1/d;
    for (int ib = 0; ib < QK_K/16; ++ib) {
        int l = nearest_int(0.5f*(id*scales[ib]-1));
        l = MAX(0, MIN(15, l));
        if (ib%2 == 0) y->scales[ib/2] = l;
        else y->scales[ib/2] |= (l << 4);
    }
    return status;
}
QDEV void iq2_s_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                      block_iq2_s * GGML_RESTRICT y, float unused) {
    (void) unused;
    int8_t L[16];
    iq2_s_block_t<false>(x, quant_weights, y, L);
}
QTOOL_ROW_KERNEL(iq2_s, QK_K, block_iq2_s, iq2_s_block)

// ---------------------------------------------------------------- IQ1_S / IQ1_M (2048-point grid)

QTABLE(uint64_t, lat_iq1_s_grid)        // kgrid_q2xs of iq2xs_init_impl(GGML_TYPE_IQ1_S) (= IQ1_M's)
QTABLE(int32_t, lat_iq1_s_map)          // kmap_q2xs
QTABLE(uint16_t, lat_iq1_s_neighbours)  // kneighbors_q2xs

#define LAT_NGRID_IQ1S 2048
#define LAT_IQ1S_DELTA 0.125f
#define LAT_IQ1M_DELTA 0.125f
#define LAT_IQ1S_BLOCK_SIZE 32
#define LAT_IQ1M_BLOCK_SIZE 16

typedef struct { ggml_half d; uint8_t qs[QK_K/8]; uint16_t qh[QK_K/32]; } block_iq1_s;
// ggml's scales[QK_K/32] bytes, declared as the uint16_t words quantize_row_iq1_m_impl writes them as
typedef struct { uint8_t qs[QK_K/8]; uint8_t qh[QK_K/16]; uint16_t scales[QK_K/64]; } block_iq1_m;

QDEV int lat_iq1_find_best_neighbour2(const uint16_t * GGML_RESTRICT neighbours, const uint64_t * GGML_RESTRICT grid,
        const float * GGML_RESTRICT xval, const float * GGML_RESTRICT weight, float scale, const float * GGML_RESTRICT xg,
        int8_t * GGML_RESTRICT L) {
    int num_neighbors = neighbours[0];
    float best_score = LAT_FLT_MAX;
    int grid_index = -1;
    for (int j = 1; j <= num_neighbors; ++j) {
        const int8_t * pg = (const int8_t *)(grid + neighbours[j]);
        float d2 = 0;
        for (int i = 0; i < 8; ++i) {
            float q = xg[(pg[i] - 1)/2];
            float w = weight[i];
            float diff = scale*q - xval[i];
            d2 += w*diff*diff;
        }
        if (d2 < best_score) {
            best_score = d2;
            grid_index = neighbours[j];
        }
    }
    // C then scans the whole grid reading xval out of bounds, and aborts if still nothing: only
    // reachable with inf / NaN distances (the numpy engine raises there); take the first neighbour.
    if (grid_index < 0) grid_index = neighbours[1];
    const int8_t * pg = (const int8_t *)(grid + grid_index);
    for (int i = 0; i < 8; ++i) L[i] = (pg[i] - 1)/2;
    return grid_index;
}

// qsort(pairs, n, 2*sizeof(float), iq1_sort_helper) as glibc does it for these sizes (a stable
// merge sort): ascending values, ties in their original order. pv: values, pi: indices.
QDEV void lat_iq1_sort_pairs(float * GGML_RESTRICT pv, int * GGML_RESTRICT pi, int n) {
    for (int j = 1; j < n; ++j) {
        const float v = pv[j];
        const int ix = pi[j];
        int i = j - 1;
        while (i >= 0 && pv[i] > v) {
            pv[i+1] = pv[i]; pi[i+1] = pi[i];
            --i;
        }
        pv[i+1] = v; pi[i+1] = ix;
    }
}

// quantize_row_iq1_s_impl, one super-block (quant_weights required: the imatrix variant only).
// IK: ik_llama.cpp's (iq1s_process_1block): the split scan starts from best = -FLT_MIN (C aborts
// where no split is accepted; here the sub-block gets mainline's scale 0).
template <bool IK>
QDEV void iq1_s_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                      block_iq1_s * GGML_RESTRICT y, float unused) {
    (void) unused;
    const uint64_t * kgrid_q2xs      = lat_iq1_s_grid;
    const int32_t  * kmap_q2xs       = lat_iq1_s_map;
    const uint16_t * kneighbors_q2xs = lat_iq1_s_neighbours;

    const int block_size = LAT_IQ1S_BLOCK_SIZE;

    float  scales[QK_K/LAT_IQ1S_BLOCK_SIZE];
    float  weight[LAT_IQ1S_BLOCK_SIZE];
    int8_t L[LAT_IQ1S_BLOCK_SIZE];
    float  sumx[LAT_IQ1S_BLOCK_SIZE+1];
    float  sumw[LAT_IQ1S_BLOCK_SIZE+1];
    float  pv[LAT_IQ1S_BLOCK_SIZE];
    int    idx[LAT_IQ1S_BLOCK_SIZE];
    uint16_t index[LAT_IQ1S_BLOCK_SIZE/8];
    int8_t shifts[QK_K/LAT_IQ1S_BLOCK_SIZE];

    const float x_p[3] = {-1 + LAT_IQ1S_DELTA,  LAT_IQ1S_DELTA, 1 + LAT_IQ1S_DELTA};
    const float x_m[3] = {-1 - LAT_IQ1S_DELTA, -LAT_IQ1S_DELTA, 1 - LAT_IQ1S_DELTA};

    y->d = GGML_FP32_TO_FP16(0.f);
    memset(y->qs, 0, QK_K/8);
    memset(y->qh, 0, QK_K/16);

    float max_scale = 0;

    const float * xbl = x;
    float sumx2 = 0;
    for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i]*xbl[i];
    float sigma2 = 2*sumx2/QK_K;

    for (int ib = 0; ib < QK_K/block_size; ++ib) {
        const float * xb = xbl + block_size*ib;
        const float * qw = quant_weights + block_size*ib;
        for (int i = 0; i < block_size; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i]*xb[i]);
        float max = fabsf(xb[0]);
        for (int i = 1; i < block_size; ++i) max = MAX(max, fabsf(xb[i]));
        if (max < GROUP_MAX_EPS_IQ1_S) {
            scales[ib] = 0;
            shifts[ib] = 1;
            memset(L, 1, block_size);
            continue;
        }
        for (int j = 0; j < block_size; ++j) {
            pv[j] = xb[j];
            idx[j] = j;
        }
        lat_iq1_sort_pairs(pv, idx, block_size);
        {
            sumx[0] = sumw[0] = 0;
            for (int j = 0; j < block_size; ++j) {
                int i = idx[j];
                sumx[j+1] = sumx[j] + weight[i]*xb[i];
                sumw[j+1] = sumw[j] + weight[i];
            }
        }
        float best_score = IK ? -1.17549435082228750797e-38F : -LAT_FLT_MAX, scale = max;  // -FLT_MIN : -FLT_MAX
        int besti1 = -1, besti2 = -1, best_shift = 0;
        for (int i1 = 0; i1 <= block_size; ++i1) {
            for (int i2 = i1; i2 <= block_size; ++i2) {
                float sumqx = (sumx[i1] - sumx[0])*x_p[0] + (sumx[i2] - sumx[i1])*x_p[1] + (sumx[block_size] - sumx[i2])*x_p[2];
                float sumq2 = (sumw[i1] - sumw[0])*x_p[0]*x_p[0] + (sumw[i2] - sumw[i1])*x_p[1]*x_p[1] + (sumw[block_size] - sumw[i2])*x_p[2]*x_p[2];
                if (sumq2 > 0 && sumqx*sumqx > best_score*sumq2) {
                    scale = sumqx/sumq2; best_score = scale*sumqx;
                    besti1 = i1; besti2 = i2; best_shift = 1;
                }
                sumqx = (sumx[i1] - sumx[0])*x_m[0] + (sumx[i2] - sumx[i1])*x_m[1] + (sumx[block_size] - sumx[i2])*x_m[2];
                sumq2 = (sumw[i1] - sumw[0])*x_m[0]*x_m[0] + (sumw[i2] - sumw[i1])*x_m[1]*x_m[1] + (sumw[block_size] - sumw[i2])*x_m[2]*x_m[2];
                if (sumq2 > 0 && sumqx*sumqx > best_score*sumq2) {
                    scale = sumqx/sumq2; best_score = scale*sumqx;
                    besti1 = i1; besti2 = i2; best_shift = -1;
                }
            }
        }
        if (besti1 < 0 || besti2 < 0 || best_shift == 0) {
            if (IK) QTOOL_ABORT();  // ik's iq1s_process_1block: GGML_ASSERT(besti1 >= 0 ...)
            scales[ib] = 0;
            shifts[ib] = 1;
            memset(L, 1, block_size);
            continue;
        }
        for (int j =      0; j < besti1; ++j) L[idx[j]] = 0;
        for (int j = besti1; j < besti2; ++j) L[idx[j]] = 1;
        for (int j = besti2; j < block_size; ++j) L[idx[j]] = 2;
        if (scale < 0) {
            for (int j = 0; j < block_size; ++j) L[j] = 2 - L[j];
            scale = -scale; best_shift = -best_shift;
        }
        bool all_on_grid = true;
        const float * xx = best_shift == 1 ? x_p : x_m;
        for (int k = 0; k < block_size/8; ++k) {
            uint16_t u = 0;
            for (int j = 0; j < 8; ++j) u |= (L[8*k+j] << 2*j);
            int grid_index = kmap_q2xs[u];
            if (grid_index < 0) {
                all_on_grid = false;
                const uint16_t * neighbours = kneighbors_q2xs - kmap_q2xs[u] - 1;
                grid_index = lat_iq1_find_best_neighbour2(neighbours, kgrid_q2xs, xb + 8*k, weight + 8*k, scale, xx, L + 8*k);
            }
            index[k] = grid_index;
        }
        if (!all_on_grid) {
            float sumqx = 0, sumq2 = 0;
            for (int k = 0; k < block_size/8; ++k) {
                const int8_t * pg = (const int8_t *)(kgrid_q2xs + index[k]);
                for (int j = 0; j < 8; ++j) {
                    float w = weight[8*k + j];
                    float q = xx[(pg[j] - 1)/2];
                    sumqx += w*q*xb[8*k+j];
                    sumq2 += w*q*q;
                }
            }
            if (sumqx > 0 && sumq2 > 0) scale = sumqx/sumq2;
        }
        uint16_t h = 0;
        for (int k = 0; k < block_size/8; ++k) {
            y->qs[(block_size/8)*ib + k] = index[k] & 255;
            h |= (index[k] >> 8) << 3*k;
        }
        y->qh[ib] = h;
        scales[ib] = scale;
        shifts[ib] = best_shift;
        max_scale = MAX(max_scale, scale);
    }

    if (!max_scale) {
        return;
    }

    float d = max_scale/15;
    y->d = GGML_FP32_TO_FP16(d*1.125f);
    float id = 1/d;
    for (int ib = 0; ib < QK_K/block_size; ++ib) {
        int l = nearest_int(0.5f*(id*scales[ib]-1));
        l = MAX(0, MIN(7, l));
        if (shifts[ib] == -1) l |= 8;
        y->qh[ib] |= (l << 12);
    }
}
QTOOL_ROW_KERNEL(iq1_s, QK_K, block_iq1_s, iq1_s_block<false>)

// quantize_row_iq1_m_impl, one super-block.
// The second pass of quantize_row_iq1_m_impl, mainline's and ik's alike: 3-bit sub-block scales
// from max_scale, the shift bits, then the super-block scale refitted on the dequantized values
// and stored times `dscale` (mainline 1.1125, ik 1.085). sigma2_32[i]: the weights' sigma2 of the
// i-th 32 values (mainline: one value for the whole super-block, ik: one per 32).
QDEV void lat_iq1_m_refit(const float * GGML_RESTRICT xbl, const float * GGML_RESTRICT quant_weights,
                          const float * GGML_RESTRICT sigma2_32, const float * GGML_RESTRICT scales,
                          const int8_t * GGML_RESTRICT shifts, float max_scale, block_iq1_m * GGML_RESTRICT y,
                          float dscale) {
    const uint64_t * kgrid_q2xs = lat_iq1_s_grid;
    const int block_size = LAT_IQ1M_BLOCK_SIZE;
    const float x_p[3] = {-1 + LAT_IQ1M_DELTA,  LAT_IQ1M_DELTA, 1 + LAT_IQ1M_DELTA};
    const float x_m[3] = {-1 - LAT_IQ1M_DELTA, -LAT_IQ1M_DELTA, 1 - LAT_IQ1M_DELTA};
    const uint8_t masks[4] = {0x00, 0x80, 0x08, 0x88};
    float weight[LAT_IQ1M_BLOCK_SIZE];
    const float * xx;

    uint16_t * sc = y->scales;
    float d = max_scale/15;
    float id = 1/d;
    float sumqx_f = 0, sumq2_f = 0;
    for (int ib = 0; ib < QK_K/block_size; ++ib) {
        float sigma2 = sigma2_32[ib*block_size/32];
        int l = nearest_int(0.5f*(id*scales[ib+0]-1));
        l = MAX(0, MIN(7, l));
        sc[ib/4] |= (l << 3*(ib%4));
        y->qh[ib] |= masks[shifts[ib] & 3];
        const float * xb = xbl + block_size*ib;
        if (quant_weights) {
            const float * qw = quant_weights + block_size*ib;
            for (int i = 0; i < block_size; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i]*xb[i]);
        } else {
            for (int i = 0; i < block_size; ++i) weight[i] = xb[i]*xb[i];
        }
        for (int k = 0; k < block_size/8; ++k) {
            if (k == 0) xx = shifts[ib] < 2 ? x_p : x_m;
            else xx = shifts[ib]%2 == 0 ? x_p : x_m;
            const int8_t * pg = (const int8_t *)(kgrid_q2xs + y->qs[2*ib+k] + ((y->qh[ib] << (8 - 4*k)) & 0x700));
            for (int j = 0; j < 8; ++j) {
                float w = weight[8*k + j];
                float q = xx[(pg[j] - 1)/2]*(2*l+1);
                sumqx_f += w*q*xb[8*k+j];
                sumq2_f += w*q*q;
            }
        }
    }
    if (sumq2_f > 0) d = sumqx_f/sumq2_f;
    uint16_t s_u16 = GGML_FP32_TO_FP16(d*dscale);
    sc[0] |= ((s_u16 & 0x000f) << 12);
    sc[1] |= ((s_u16 & 0x00f0) <<  8);
    sc[2] |= ((s_u16 & 0x0f00) <<  4);
    sc[3] |= ((s_u16 & 0xf000) <<  0);
}

QDEV void iq1_m_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                      block_iq1_m * GGML_RESTRICT y, float unused) {
    (void) unused;
    const uint64_t * kgrid_q2xs      = lat_iq1_s_grid;
    const int32_t  * kmap_q2xs       = lat_iq1_s_map;
    const uint16_t * kneighbors_q2xs = lat_iq1_s_neighbours;

    const int block_size = LAT_IQ1M_BLOCK_SIZE;

    float  scales[QK_K/LAT_IQ1M_BLOCK_SIZE];
    float  weight[LAT_IQ1M_BLOCK_SIZE];
    int8_t L[LAT_IQ1M_BLOCK_SIZE];
    float  pv[LAT_IQ1M_BLOCK_SIZE];
    int    idx[LAT_IQ1M_BLOCK_SIZE];
    uint16_t index[LAT_IQ1M_BLOCK_SIZE/8];
    int8_t shifts[QK_K/LAT_IQ1M_BLOCK_SIZE];

    const float x_p[3] = {-1 + LAT_IQ1M_DELTA,  LAT_IQ1M_DELTA, 1 + LAT_IQ1M_DELTA};
    const float x_m[3] = {-1 - LAT_IQ1M_DELTA, -LAT_IQ1M_DELTA, 1 - LAT_IQ1M_DELTA};

    float sumqx[4], sumq2[4];

    const float * xx;

    memset(y->qs, 0, QK_K/8);
    memset(y->qh, 0, QK_K/16);
    memset(y->scales, 0, QK_K/32);

    float max_scale = 0;

    const float * xbl = x;
    float sumx2 = 0;
    for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i]*xbl[i];
    float sigma2 = 2*sumx2/QK_K;

    for (int ib = 0; ib < QK_K/block_size; ++ib) {
        const float * xb = xbl + block_size*ib;
        if (quant_weights) {
            const float * qw = quant_weights + block_size*ib;
            for (int i = 0; i < block_size; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i]*xb[i]);
        } else {
            for (int i = 0; i < block_size; ++i) weight[i] = xb[i]*xb[i];
        }
        float max = fabsf(xb[0]);
        for (int i = 1; i < block_size; ++i) max = MAX(max, fabsf(xb[i]));
        if (max < GROUP_MAX_EPS_IQ1_M) {
            scales[ib] = 0;
            shifts[ib] = 0;
            memset(L, 1, block_size);
            continue;
        }
        for (int j = 0; j < block_size; ++j) {
            pv[j] = xb[j];
            idx[j] = j;
        }
        lat_iq1_sort_pairs(pv, idx, block_size);
        float best_score = -LAT_FLT_MAX, scale = max;
        int besti1 = -1, besti2 = -1, best_k = -1;
        {
            float px[2][LAT_IQ1M_BLOCK_SIZE+1];
            float pw[2][LAT_IQ1M_BLOCK_SIZE+1];
            px[0][0] = px[1][0] = 0;
            pw[0][0] = pw[1][0] = 0;
            for (int j = 0; j < block_size; ++j) {
                const int i = idx[j];
                const int h = i < block_size/2 ? 0 : 1;
                px[h][j+1]   = px[h][j] + weight[i]*xb[i];
                px[1-h][j+1] = px[1-h][j];
                pw[h][j+1]   = pw[h][j] + weight[i];
                pw[1-h][j+1] = pw[1-h][j];
            }
            const float txs[2] = {px[0][block_size], px[1][block_size]};
            const float tws[2] = {pw[0][block_size], pw[1][block_size]};
            const float p2   = x_p[2], m2 = x_m[2];
            const float cp1  = x_p[0]*x_p[0] - x_p[1]*x_p[1];
            const float cp2  = x_p[1]*x_p[1] - x_p[2]*x_p[2];
            const float cm1  = x_m[0]*x_m[0] - x_m[1]*x_m[1];
            const float cm2  = x_m[1]*x_m[1] - x_m[2]*x_m[2];
            for (int i1 = 0; i1 <= block_size; ++i1) {
                for (int i2 = i1; i2 <= block_size; ++i2) {
                    float qx_p[2], qx_m[2], q2_p[2], q2_m[2];
                    for (int h = 0; h < 2; ++h) {
                        const float sx = px[h][i1] + px[h][i2];
                        qx_p[h] = txs[h]*p2 - sx;
                        qx_m[h] = txs[h]*m2 - sx;
                        q2_p[h] = tws[h]*p2*p2 + pw[h][i1]*cp1 + pw[h][i2]*cp2;
                        q2_m[h] = tws[h]*m2*m2 + pw[h][i1]*cm1 + pw[h][i2]*cm2;
                    }
                    sumqx[0] = qx_p[0] + qx_p[1];
                    sumqx[1] = qx_p[0] + qx_m[1];
                    sumqx[2] = qx_m[0] + qx_p[1];
                    sumqx[3] = qx_m[0] + qx_m[1];
                    sumq2[0] = q2_p[0] + q2_p[1];
                    sumq2[1] = q2_p[0] + q2_m[1];
                    sumq2[2] = q2_m[0] + q2_p[1];
                    sumq2[3] = q2_m[0] + q2_m[1];
                    for (int k = 0; k < 4; ++k) {
                        if (sumq2[k] > 0 && sumqx[k]*sumqx[k] > best_score*sumq2[k]) {
                            scale = sumqx[k]/sumq2[k]; best_score = scale*sumqx[k];
                            besti1 = i1; besti2 = i2; best_k = k;
                        }
                    }
                }
            }
        }
        if (besti1 < 0 || besti2 < 0 || best_k < 0) {
            scales[ib] = 0;
            shifts[ib] = 0;
            memset(L, 1, block_size);
            continue;
        }
        for (int j =      0; j < besti1; ++j) L[idx[j]] = 0;
        for (int j = besti1; j < besti2; ++j) L[idx[j]] = 1;
        for (int j = besti2; j < block_size; ++j) L[idx[j]] = 2;
        if (scale < 0) {
            for (int j = 0; j < block_size; ++j) L[j] = 2 - L[j];
            scale = -scale;
            best_k = best_k == 0 ? 3 : best_k == 1 ? 2 : best_k == 2 ? 1 : 0;
        }
        bool all_on_grid = true;
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
            index[k] = grid_index;
        }
        if (!all_on_grid) {
            float sumqx_f = 0, sumq2_f = 0;
            for (int k = 0; k < block_size/8; ++k) {
                if (k == 0) xx = best_k < 2 ? x_p : x_m;
                else xx = best_k%2 == 0 ? x_p : x_m;
                const int8_t * pg = (const int8_t *)(kgrid_q2xs + index[k]);
                for (int j = 0; j < 8; ++j) {
                    float w = weight[8*k + j];
                    float q = xx[(pg[j] - 1)/2];
                    sumqx_f += w*q*xb[8*k+j];
                    sumq2_f += w*q*q;
                }
            }
            if (sumqx_f > 0 && sumq2_f > 0) scale = sumqx_f/sumq2_f;
        }
        y->qs[2*ib + 0] = index[0] & 255;
        y->qs[2*ib + 1] = index[1] & 255;
        y->qh[ib] = (index[0] >> 8) | ((index[1] >> 8) << 4);
        scales[ib] = scale;
        shifts[ib] = best_k;
        max_scale = MAX(max_scale, scale);
    }

    if (!max_scale) {
        return;
    }

    float sigma2_32[QK_K/32];
    for (int i = 0; i < QK_K/32; ++i) sigma2_32[i] = sigma2;
    lat_iq1_m_refit(xbl, quant_weights, sigma2_32, scales, shifts, max_scale, y, 1.1125f);
}

QTOOL_ROW_KERNEL(iq1_m, QK_K, block_iq1_m, iq1_m_block)
