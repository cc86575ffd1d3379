// Lattice i-quants of mainline ggml (ggml-quants.c: quantize_row_iq3_xxs_impl, quantize_row_iq3_s_impl,
// quantize_row_iq2_xxs_impl, quantize_row_iq2_xs_impl, quantize_row_iq2_s_impl, quantize_row_iq1_s_impl,
// quantize_row_iq1_m_impl and their neighbour searches), one super-block of 256 per thread.
// The grids, maps and neighbour lists are iq3xs_init_impl's / iq2xs_init_impl's, laid out as C
// indexes them (qtool/gpu/tables.py builds them with the numpy engine's builders).
#pragma once

#define LAT_FLT_MAX 3.40282346638528859811704183484516925e+38F

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
QDEV void iq3_xxs_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                        block_iq3_xxs * GGML_RESTRICT y, float unused) {
    (void) unused;
    const uint32_t * kgrid_q3xs      = lat_iq3_256_grid;
    const int32_t  * kmap_q3xs       = lat_iq3_256_map;
    const uint16_t * kneighbors_q3xs = lat_iq3_256_neighbours;

    const int kMaxQ = 8;
    const int quant_size = sizeof(block_iq3_xxs) - sizeof(ggml_half);

    float scales[QK_K/32];
    float weight[32];
    float xval[32];
    int8_t L[32];
    int8_t Laux[32];
    float  waux[32];
    bool   is_on_grid[8];
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
        for (int k = 0; k < 4; ++k) {
            int nflip = 0;
            uint8_t s = 0;
            for (int i = 0; i < 8; ++i) {
                if (xb[8*k + i] >= 0) xval[8*k + i] = xb[8*k + i];
                else {
                    xval[8*k + i] = -xb[8*k + i]; ++nflip; s |= (1 << i);
                }
            }
            if (nflip%2) {
                int imin = 0; float min = weight[8*k+imin]*xb[8*k+imin]*xb[8*k+imin];
                for (int i = 1; i < 8; ++i) {
                    float ax = weight[8*k+i]*xb[8*k+i]*xb[8*k+i];
                    if (ax < min) {
                        min = ax; imin = i;
                    }
                }
                xval[8*k+imin] = -xval[8*k+imin];
                s ^= (1 << imin);
            }
            block_signs[k] = s & 127;
        }
        float max = xval[0];
        for (int i = 1; i < 32; ++i) max = MAX(max, xval[i]);
        memset(L, 0, 32);
        if (max < GROUP_MAX_EPS_IQ3_XXS) {
            scales[ib] = 0;
            continue;
        }
        float best = 0;
        float scale = max/(2*kMaxQ-1);
        for (int k = 0; k < 8; ++k) is_on_grid[k] = true;
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
        return;
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
        for (int k = 0; k < 4; ++k) {
            int nflip = 0;
            uint8_t s = 0;
            for (int i = 0; i < 8; ++i) {
                if (xb[8*k + i] >= 0) xval[8*k + i] = xb[8*k + i];
                else {
                    xval[8*k + i] = -xb[8*k + i]; ++nflip; s |= (1 << i);
                }
            }
            if (nflip%2) {
                int imin = 0; float min = weight[8*k+imin]*xb[8*k+imin]*xb[8*k+imin];
                for (int i = 1; i < 8; ++i) {
                    float ax = weight[8*k+i]*xb[8*k+i]*xb[8*k+i];
                    if (ax < min) {
                        min = ax; imin = i;
                    }
                }
                xval[8*k+imin] = -xval[8*k+imin];
                s ^= (1 << imin);
            }
            block_signs[k] = s & 127;
        }
        float max = xval[0];
        for (int i = 1; i < 32; ++i) max = MAX(max, xval[i]);
        if (max < GROUP_MAX_EPS) {
            scales[ib] = 0;
            memset(L, 0, 32);
            continue;
        }
        float scale = make_qp_quants(32, kMaxQ+1, xval, (uint8_t*)L, weight);
        float eff_max = scale*kMaxQ;
        if (eff_max <= 0) {
            scales[ib] = 0;
            memset(L, 0, 32);
            continue;
        }
        float best = 0;
        for (int is = -6; is <= 6; ++is) {
            float id = (2*kMaxQ-1+is*0.1f)/eff_max;
            float this_scale = 1/id;
            for (int k = 0; k < 4; ++k) {
                for (int i = 0; i < 8; ++i) {
                    int l = nearest_int(0.5f*(id*xval[8*k+i]-1));
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
            }
        }
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
QTOOL_ROW_KERNEL(iq2_xxs, QK_K, block_iq2_xxs, iq2_xxs_block)

// quantize_row_iq2_xs_impl (XS: the imatrix variant only) and quantize_row_iq2_s_impl, one
// super-block: the two differ in the sign handling (XS: 7 bits + the flip of the least important
// element; S: 8 bits), the weights without an imatrix (S only), eps, the fudge on d and packing.
#define LAT_IQ2_XS_S_BODY(IS_S)                                                                              \
    const int kMaxQ = 3;                                                                                     \
    float scales[QK_K/16];                                                                                   \
    float weight[16];                                                                                        \
    float xval[16];                                                                                          \
    int8_t L[16];                                                                                            \
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
            int nflip = 0;                                                                                   \
            uint8_t s = 0;                                                                                   \
            for (int i = 0; i < 8; ++i) {                                                                    \
                if (xb[8*k + i] >= 0) xval[8*k + i] = xb[8*k + i];                                           \
                else {                                                                                       \
                    xval[8*k + i] = -xb[8*k + i]; ++nflip; s |= (1 << i);                                    \
                }                                                                                            \
            }                                                                                                \
            if (!(IS_S) && nflip%2) {                                                                        \
                int imin = 0; float min = weight[8*k+imin]*xb[8*k+imin]*xb[8*k+imin];                        \
                for (int i = 1; i < 8; ++i) {                                                                \
                    float ax = weight[8*k+i]*xb[8*k+i]*xb[8*k+i];                                            \
                    if (ax < min) {                                                                          \
                        min = ax; imin = i;                                                                  \
                    }                                                                                        \
                }                                                                                            \
                xval[8*k+imin] = -xval[8*k+imin];                                                            \
                s ^= (1 << imin);                                                                            \
            }                                                                                                \
            block_signs[k] = (IS_S) ? s : (uint8_t)(s & 127);                                                \
        }                                                                                                    \
        float max = xval[0];                                                                                 \
        for (int i = 1; i < 16; ++i) max = MAX(max, xval[i]);                                                \
        memset(L, 0, 16);                                                                                    \
        if (max < ((IS_S) ? GROUP_MAX_EPS_IQ2_S : GROUP_MAX_EPS)) {                                          \
            scales[ib] = 0;                                                                                  \
            continue;                                                                                        \
        }                                                                                                    \
        float best = 0;                                                                                      \
        float scale = max/(2*kMaxQ-1);                                                                       \
        is_on_grid[0] = is_on_grid[1] = true;                                                                \
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

    y->d = GGML_FP32_TO_FP16(0.f);
    memset(q2, 0, QK_K/4);
    memset(y->scales, 0, QK_K/32);
#define LAT_IQ2_STORE(ib, k, grid_index, sgn) q2[2*(ib)+(k)] = (grid_index) | ((sgn) << 9)
    LAT_IQ2_XS_S_BODY(false)
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

QDEV void iq2_s_block(const float * GGML_RESTRICT x, const float * GGML_RESTRICT quant_weights,
                      block_iq2_s * GGML_RESTRICT y, float unused) {
    (void) unused;
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
    LAT_IQ2_XS_S_BODY(true)
#undef LAT_IQ2_STORE

    if (!max_scale) {
        return;
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
}
QTOOL_ROW_KERNEL(iq2_s, QK_K, block_iq2_s, iq2_s_block)
