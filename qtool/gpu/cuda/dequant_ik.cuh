// dequant_ik.cuh: dequantize kernels of ik_llama.cpp's own types (see prelude.cuh
// QTOOL_DEQUANT_KERNEL): ik's dequantize_row_<type> (ggml/src/iqk/iqk_quantize.cpp and
// ggml-quants.c of ik_llama.cpp, MIT licence, Iwan Kawrakow) for one (super-)block per thread.
// Value tables from iqk.cuh (iqk_iq2nl_values, iqk_iq3nl_values, iqk_iq4k_values,
// iqk_iq5nl_values). The trellis types generate their values (is_int set_values), no table.
// Not here: the row-interleaved repacks (_R4, _R8, _R16; Q8_KV_R8 and Q8_K_R8 are), Q4_0_4_4 & co.
// Launch: nrows * (n_per_row / block size of the type) threads for every kernel here.
// Bytes: the numpy engine's float32 bits, NaN sign and payload included: every operation on a
// scale (fp16 / float from the file, and its products) goes through prelude.cuh's dq_mul / dq_fp16 /
// dq_neg (x86's NaN on the GPU too), in C's order; integer and constant-only arithmetic does not.
#pragma once

// Row-scaled types: each row starts with a header (HDR_T: ik's float or fp16 row scale, Q8_KV's
// {float d; int32 sum}), then its blocks. One thread per block, as QTOOL_DEQUANT_KERNEL; each
// thread reads its row's header. BODY(const BLOCK_T *blk, const HDR_T *hdr, float *y). Row
// sizes of the types using it are even, so header and blocks are at even offsets (load_block).
#define QTOOL_DEQUANT_ROW_KERNEL(NAME, QK, BLOCK_T, HDR_T, BODY)                                    \
    QKERNEL void dequantize_##NAME(const uint8_t * GGML_RESTRICT q, float * GGML_RESTRICT y,    \
                                   int64_t nrows, int64_t n_per_row) {                          \
        const int64_t nb = n_per_row / (QK);                                                    \
        QFOR(ib, nrows * nb) {                                                                  \
            const int64_t row = ib / nb;                                                        \
            const int64_t j = ib - row * nb;                                                    \
            const uint8_t * qr = q + row * ((int64_t) sizeof(HDR_T) + nb * (int64_t) sizeof(BLOCK_T)); \
            HDR_T hdr;                                                                          \
            load_block(&hdr, qr, (int) sizeof(HDR_T));                                          \
            BLOCK_T blk;                                                                        \
            load_block(&blk, qr + sizeof(HDR_T) + j * (int64_t) sizeof(BLOCK_T), (int) sizeof(BLOCK_T)); \
            BODY(&blk, &hdr, y + ib * (int64_t) (QK));                                          \
        }                                                                                       \
    }

// The iqk.cuh block layouts this file reads (ik's sizes).
static_assert(sizeof(block_iq2_k) == 76 && sizeof(block_iq3_k) == 110 && sizeof(block_iq4_k) == 144 &&
              sizeof(block_iq5_k) == 176 && sizeof(block_iq6_k) == 212 && sizeof(block_iq2_ks) == 70 &&
              sizeof(block_iq3_ks) == 102 && sizeof(block_iq4_ks) == 136 && sizeof(block_iq5_ks) == 168 &&
              sizeof(block_iq4_kss) == 128 && sizeof(block_iq2_kl) == 86, "ik block sizes");

// ---- IQ2_K --------------------------------------------------------------------------------------

QDEV void dqik_iq2_k(const block_iq2_k * x, float * y) {
    const float d = dq_fp16(x->d);
    const uint8_t * qs = x->qs;
    uint16_t extra = x->extra;
    int shift = 0;
    for (int ib32 = 0; ib32 < QK_K/32; ++ib32) {
        float dl1 = dq_mul(d, (float) ((x->scales[ib32] & 0xf) - 8));
        float dl2 = dq_mul(d, (float) ((x->scales[ib32] >>  4) - 8));
        const int8_t * values1 = extra & 1 ? iqk_iq2nl_values + 4 : iqk_iq2nl_values;
        const int8_t * values2 = extra & 2 ? iqk_iq2nl_values + 4 : iqk_iq2nl_values;
        extra >>= 2;
        for (int j = 0; j < 16; ++j) {
            y[j+ 0] = dq_mul(dl1, (float) values1[(qs[j+ 0] >> shift) & 3]);
            y[j+16] = dq_mul(dl2, (float) values2[(qs[j+16] >> shift) & 3]);
        }
        y += 32;
        shift += 2;
        if (shift == 8) { qs += 32; shift = 0; }
    }
}
QTOOL_DEQUANT_KERNEL(iq2_k, QK_K, block_iq2_k, dqik_iq2_k)

// ---- IQ3_K --------------------------------------------------------------------------------------

QDEV void dqik_iq3_k(const block_iq3_k * x, float * y) {
    const float d = dq_fp16(x->d);
    const uint8_t * qs = x->qs;
    const uint8_t * qh = x->qh;
    uint16_t sh = x->scales_h;
    uint16_t extra = x->extra;
    for (int ib32 = 0; ib32 < QK_K/32; ++ib32) {
        float dl1 = dq_mul(d, (float) ((2*(x->scales_l[ib32] & 0xf) + 1) * ((sh & 1) ? -1 : 1)));
        float dl2 = dq_mul(d, (float) ((2*(x->scales_l[ib32] >>  4) + 1) * ((sh & 2) ? -1 : 1)));
        sh >>= 2;
        const int8_t * values1 = extra & 1 ? iqk_iq3nl_values + 8 : iqk_iq3nl_values;
        const int8_t * values2 = extra & 2 ? iqk_iq3nl_values + 8 : iqk_iq3nl_values;
        extra >>= 2;
        int shift_l = 2*(ib32%4);
        int shift_h = ib32%8;
        for (int j = 0; j < 16; ++j) {
            y[j+ 0] = dq_mul(dl1, (float) values1[((qs[j+ 0] >> shift_l) & 3) | (((qh[j+ 0] >> shift_h) & 1) << 2)]);
            y[j+16] = dq_mul(dl2, (float) values2[((qs[j+16] >> shift_l) & 3) | (((qh[j+16] >> shift_h) & 1) << 2)]);
        }
        y += 32;
        if (shift_l == 6) qs += 32;
    }
}
QTOOL_DEQUANT_KERNEL(iq3_k, QK_K, block_iq3_k, dqik_iq3_k)

// ---- IQ4_K --------------------------------------------------------------------------------------

QDEV void dqik_iq4_k(const block_iq4_k * x, float * y) {
    const uint8_t * qs = x->qs;
    const float d = dq_fp16(x->d);
    uint16_t extra = x->extra;
    for (int ib = 0; ib < QK_K/32; ++ib) {
        const uint8_t sh = x->scales_h[ib/2] >> 4*(ib%2);
        const float dl1 = dq_mul(d, (float) (((x->scales_l[ib] & 0xf) | ((sh << 4) & 0x30)) - 32));
        const float dl2 = dq_mul(d, (float) (((x->scales_l[ib] >>  4) | ((sh << 2) & 0x30)) - 32));
        const int8_t * values1 = extra & 1 ? iqk_iq4k_values + 16 : iqk_iq4k_values;
        const int8_t * values2 = extra & 2 ? iqk_iq4k_values + 16 : iqk_iq4k_values;
        extra >>= 2;
        for (int j = 0; j < 16; ++j) {
            y[j+ 0] = dq_mul(dl1, (float) values1[qs[j] & 0xf]);
            y[j+16] = dq_mul(dl2, (float) values2[qs[j] >>  4]);
        }
        y  += 32;
        qs += 16;
    }
}
QTOOL_DEQUANT_KERNEL(iq4_k, QK_K, block_iq4_k, dqik_iq4_k)

// ---- IQ5_K --------------------------------------------------------------------------------------

QDEV void dqik_iq5_k(const block_iq5_k * x, float * y) {
    const float d = dq_fp16(x->d);
    const uint8_t * qs = x->qs;
    const uint8_t * qh = x->qh;
    const uint8_t * sl = x->scales_l;
    const uint8_t * sh = x->scales_h;
    uint16_t extra = x->extra;
    int shift = 0;
    for (int ib64 = 0; ib64 < QK_K/64; ++ib64) {
        float dl1 = dq_mul(d, (float) (((sl[2*ib64+0] & 0xf) | ((sh[ib64] << 4) & 0x30)) - 32));
        float dl2 = dq_mul(d, (float) (((sl[2*ib64+0] >>  4) | ((sh[ib64] << 2) & 0x30)) - 32));
        float dl3 = dq_mul(d, (float) (((sl[2*ib64+1] & 0xf) | ((sh[ib64] >> 0) & 0x30)) - 32));
        float dl4 = dq_mul(d, (float) (((sl[2*ib64+1] >>  4) | ((sh[ib64] >> 2) & 0x30)) - 32));
        const int8_t * values1 = iqk_iq5nl_values + ((extra & 1) << 5);
        const int8_t * values2 = iqk_iq5nl_values + ((extra & 2) << 4);
        const int8_t * values3 = iqk_iq5nl_values + ((extra & 4) << 3);
        const int8_t * values4 = iqk_iq5nl_values + ((extra & 8) << 2);
        for (int j = 0; j < 16; ++j) {
            y[j+ 0] = dq_mul(dl1, (float) values1[(qs[j+ 0] & 0xf) | (((qh[j+ 0] >> shift) & 1) << 4)]);
            y[j+16] = dq_mul(dl2, (float) values2[(qs[j+16] & 0xf) | (((qh[j+16] >> shift) & 1) << 4)]);
            y[j+32] = dq_mul(dl3, (float) values3[(qs[j+ 0] >>  4) | (((qh[j+ 0] >> shift) & 2) << 3)]);
            y[j+48] = dq_mul(dl4, (float) values4[(qs[j+16] >>  4) | (((qh[j+16] >> shift) & 2) << 3)]);
        }
        y  += 64;
        qs += 32;
        extra >>= 4;
        shift += 2;
        if (shift == 8) { qh += 32; shift = 0; }
    }
}
QTOOL_DEQUANT_KERNEL(iq5_k, QK_K, block_iq5_k, dqik_iq5_k)

// ---- IQ6_K: the value of level q is C's cubic A + q*(B + q*(-C + q*D)) (+ 1 where shifted) ------

#define DQIK_A_IQ6K -127.f
#define DQIK_B_IQ6K 6.2568f
#define DQIK_C_IQ6K 0.11218f
#define DQIK_D_IQ6K 0.0011972f
#define DQIK_S_IQ6K 1.f

QDEV float dqik_iq6_level(float q) {
    return DQIK_A_IQ6K + q*(DQIK_B_IQ6K + q*(-DQIK_C_IQ6K + q*DQIK_D_IQ6K));
}

QDEV void dqik_iq6_k(const block_iq6_k * x, float * y) {
    const float d = dq_fp16(x->d);
    const uint8_t * qs = x->qs;
    const uint8_t * qh = x->qh;
    const int8_t  * sl = x->scales;
    uint16_t extra = x->extra;
    int shift = 0;
    for (int ib64 = 0; ib64 < QK_K/64; ++ib64) {
        float dl1 = dq_mul(d, (float) sl[4*ib64 + 0]);
        float dl2 = dq_mul(d, (float) sl[4*ib64 + 1]);
        float dl3 = dq_mul(d, (float) sl[4*ib64 + 2]);
        float dl4 = dq_mul(d, (float) sl[4*ib64 + 3]);
        float m1 = extra & 1 ? DQIK_S_IQ6K : 0;
        float m2 = extra & 2 ? DQIK_S_IQ6K : 0;
        float m3 = extra & 4 ? DQIK_S_IQ6K : 0;
        float m4 = extra & 8 ? DQIK_S_IQ6K : 0;
        for (int j = 0; j < 16; ++j) {
            float q1 = ((qs[j+ 0] & 0xf) | (((qh[j+ 0] >> shift) & 0x03) << 4));
            float q2 = ((qs[j+16] & 0xf) | (((qh[j+16] >> shift) & 0x03) << 4));
            float q3 = ((qs[j+ 0] >>  4) | (((qh[j+ 0] >> shift) & 0x0c) << 2));
            float q4 = ((qs[j+16] >>  4) | (((qh[j+16] >> shift) & 0x0c) << 2));
            y[j+ 0] = dq_mul(dl1, dqik_iq6_level(q1) + m1);
            y[j+16] = dq_mul(dl2, dqik_iq6_level(q2) + m2);
            y[j+32] = dq_mul(dl3, dqik_iq6_level(q3) + m3);
            y[j+48] = dq_mul(dl4, dqik_iq6_level(q4) + m4);
        }
        y  += 64;
        qs += 32;
        extra >>= 4;
        shift += 4;
        if (shift == 8) { qh += 32; shift = 0; }
    }
}
QTOOL_DEQUANT_KERNEL(iq6_k, QK_K, block_iq6_k, dqik_iq6_k)

// ---- IQ2_KS (fp16 row scale) ----------------------------------------------------------------------

QDEV void dqik_iq2_ks(const block_iq2_ks * x, const ggml_half * hdr, float * y) {
    const float d = dq_fp16(*hdr);
    const uint8_t * qs = x->qs;
    uint16_t extra = x->extra;
    int shift = 0;
    for (int ib64 = 0; ib64 < QK_K/64; ++ib64) {
        float dl1 = dq_mul(d, (float) (((x->scales[ib64] & 0xf) | ((extra >> 4) & 0x10)) - 16));
        float dl2 = dq_mul(d, (float) (((x->scales[ib64] >>  4) | ((extra >> 5) & 0x10)) - 16));
        const int8_t * values1 = extra & 1 ? iqk_iq2nl_values + 4 : iqk_iq2nl_values;
        const int8_t * values2 = extra & 2 ? iqk_iq2nl_values + 4 : iqk_iq2nl_values;
        extra >>= 2;
        for (int j = 0; j < 32; ++j) {
            y[j+ 0] = dq_mul(dl1, (float) values1[(qs[j] >> (shift+0)) & 3]);
            y[j+32] = dq_mul(dl2, (float) values2[(qs[j] >> (shift+2)) & 3]);
        }
        y += 64;
        shift += 4;
        if (shift == 8) { qs += 32; shift = 0; }
    }
}
QTOOL_DEQUANT_ROW_KERNEL(iq2_ks, QK_K, block_iq2_ks, ggml_half, dqik_iq2_ks)

// ---- IQ3_KS (fp16 row scale) ----------------------------------------------------------------------

QDEV void dqik_iq3_ks(const block_iq3_ks * x, const ggml_half * hdr, float * y) {
    const float d = dq_fp16(*hdr);
    float dl[8];
    for (int j = 0; j < 4; ++j) {
        int ls1 = (x->scales[j] & 0xf) | (((x->extra >> (j+0)) & 1) << 4);
        int ls2 = (x->scales[j] >>  4) | (((x->extra >> (j+4)) & 1) << 4);
        dl[j+0] = dq_mul(d, (float) (ls1 - 16));
        dl[j+4] = dq_mul(d, (float) (ls2 - 16));
    }
    const uint8_t * qs = x->qs;
    const uint8_t * qh = x->qh;
    for (int i128 = 0; i128 < QK_K/128; ++i128) {
        for (int ib = 0; ib < 4; ++ib) {
            const int8_t * values = iqk_iq3nl_values + ((x->extra >> (8 + (4*i128+ib)) & 1) << 3);
            for (int j = 0; j < 32; ++j) {
                y[j] = dq_mul(dl[4*i128 + ib], (float) values[((qs[j] >> 2*ib) & 3) | (((qh[j] >> (4*i128+ib)) & 1) << 2)]);
            }
            y += 32;
        }
        qs += 32;
    }
}
QTOOL_DEQUANT_ROW_KERNEL(iq3_ks, QK_K, block_iq3_ks, ggml_half, dqik_iq3_ks)

// ---- IQ4_KS, IQ5_KS (float row scale) -------------------------------------------------------------

QDEV void dqik_iq4_ks(const block_iq4_ks * x, const float * hdr, float * y) {
    const float d = *hdr;
    const uint8_t * qs = x->qs;
    for (int ib = 0; ib < QK_K/32; ++ib) {
        float dl = dq_mul(d, (float) ((int)(x->scales[ib] & 254) - 127));
        const int8_t * values = iqk_iq4k_values + ((x->scales[ib] & 1) << 4);
        for (int j = 0; j < 16; ++j) {
            y[j   ] = dq_mul(dl, (float) values[qs[j] & 0xf]);
            y[j+16] = dq_mul(dl, (float) values[qs[j] >>  4]);
        }
        y  += 32;
        qs += 16;
    }
}
QTOOL_DEQUANT_ROW_KERNEL(iq4_ks, QK_K, block_iq4_ks, float, dqik_iq4_ks)

QDEV void dqik_iq5_ks(const block_iq5_ks * x, const float * hdr, float * y) {
    const float d = *hdr;
    const uint8_t * qs = x->qs;
    const uint8_t * qh = x->qh;
    for (int ib64 = 0; ib64 < QK_K/64; ++ib64) {
        float dl1 = dq_mul(d, (float) ((int)(x->scales[2*ib64+0] & 254) - 127));
        float dl2 = dq_mul(d, (float) ((int)(x->scales[2*ib64+1] & 254) - 127));
        const int8_t * values1 = iqk_iq5nl_values + ((x->scales[2*ib64+0] & 1) << 5);
        const int8_t * values2 = iqk_iq5nl_values + ((x->scales[2*ib64+1] & 1) << 5);
        for (int j = 0; j < 32; ++j) {
            y[j   ] = dq_mul(dl1, (float) values1[(qs[j] & 0xf) | (((qh[j] >> (2*ib64+0)) & 1) << 4)]);
            y[j+32] = dq_mul(dl2, (float) values2[(qs[j] >>  4) | (((qh[j] >> (2*ib64+1)) & 1) << 4)]);
        }
        y  += 64;
        qs += 32;
    }
}
QTOOL_DEQUANT_ROW_KERNEL(iq5_ks, QK_K, block_iq5_ks, float, dqik_iq5_ks)

// ---- IQ4_KSS (float row scale): per 32 values, 8 uint16 words whose bit 0 is a scale bit and
// whose other 15 bits are the levels, XOR-scrambled ------------------------------------------------

QDEV void dqik_iq4_kss(const block_iq4_kss * x, const float * hdr, float * y) {
    const float d = *hdr;
    const uint16_t * qs = x->qs;
    for (int ib = 0; ib < QK_K/32; ++ib) {
        uint8_t aux8[16];
        int16_t ls = 0;
        for (int k = 0; k < 8; ++k) {
            uint16_t a = qs[k] & 0xfffe;
            a ^= (a >> 1);
            aux8[2*k+0] = (uint8_t)(a & 0xff);  // C: aux16 read as bytes (little-endian)
            aux8[2*k+1] = (uint8_t)(a >> 8);
            ls |= (qs[k] & 1) << k;
        }
        const int8_t * values = iqk_iq4k_values + ((ls & 1) << 4);
        float dl = dq_mul(d, (float) ((ls & 254) - 127));
        for (int j = 0; j < 16; ++j) {
            y[j+ 0] = dq_mul(dl, (float) values[aux8[j] & 0xf]);
            y[j+16] = dq_mul(dl, (float) values[aux8[j] >>  4]);
        }
        y  += 32;
        qs += 8;
    }
}
QTOOL_DEQUANT_ROW_KERNEL(iq4_kss, QK_K, block_iq4_kss, float, dqik_iq4_kss)

// ---- IQ2_KL (fp16 row scale): pairs of values from iq2kl_values (ik's ggml-common.h: two int8
// of iq3nl_values per entry, low byte first) ---------------------------------------------------------

QCONST uint16_t dqik_iq2kl_values[32] = {
    0xe9c1, 0x0dc1, 0xc1d8, 0xf6d8, 0x0dd8, 0x2fd8, 0xd8e9, 0xe9e9, 0x01e9, 0x0de9, 0x1ce9, 0xc1f6, 0x01f6, 0x0df6, 0x2ff6, 0xe901,
    0xf601, 0x0101, 0x0d01, 0x1c01, 0xd80d, 0xe90d, 0xf60d, 0x010d, 0x0d0d, 0xc11c, 0xe91c, 0x011c, 0x1c1c, 0x2f1c, 0xe92f, 0x0d2f,
};

QDEV void dqik_iq2_kl(const block_iq2_kl * x, const ggml_half * hdr, float * y) {
    const float d = dq_fp16(*hdr);
    const uint8_t * qs = x->qs;
    const uint8_t * qh = x->qh;
    const uint16_t scales_h = x->scales_h;
    for (int ib64 = 0; ib64 < QK_K/64; ++ib64) {
        float dl1 = dq_mul(d, (float) ((int)(((x->scales_l[(2*ib64+0)%4] >> 4*(ib64/2)) & 0xf) | (((scales_h >> (4*ib64+0)) & 3) << 4)) - 32));
        float dl2 = dq_mul(d, (float) ((int)(((x->scales_l[(2*ib64+1)%4] >> 4*(ib64/2)) & 0xf) | (((scales_h >> (4*ib64+2)) & 3) << 4)) - 32));
        for (int j = 0; j < 16; ++j) {
            const uint16_t v1 = dqik_iq2kl_values[(qs[j] & 0xf) | (((qh[j] >> (2*ib64+0)) & 1) << 4)];
            const uint16_t v2 = dqik_iq2kl_values[(qs[j] >>  4) | (((qh[j] >> (2*ib64+1)) & 1) << 4)];
            y[2*j+ 0] = dq_mul(dl1, (float) (int8_t)(uint8_t)(v1 & 0xff));
            y[2*j+ 1] = dq_mul(dl1, (float) (int8_t)(uint8_t)(v1 >> 8));
            y[2*j+32] = dq_mul(dl2, (float) (int8_t)(uint8_t)(v2 & 0xff));
            y[2*j+33] = dq_mul(dl2, (float) (int8_t)(uint8_t)(v2 >> 8));
        }
        y  += 64;
        qs += 16;
    }
}
QTOOL_DEQUANT_ROW_KERNEL(iq2_kl, QK_K, block_iq2_kl, ggml_half, dqik_iq2_kl)

// ---- trellis types IQ1_KT, IQ2_KT, IQ3_KT, IQ4_KT (float row scale; kScale = 1: is_int; blocks:
// trellis_blocks.cuh) -----------------------------------------------------------------------------

// QuantizerIQKT::set_values (is_int): result[k] = scale * (sum of the 4 bytes of x & 0x3f3f3f3f,
// x the k-th step of the LCG from i + offset) - 126), |...| where is_abs.
// (trellis_blocks.cuh's kt_values8 with the scale applied through dq_mul; a copy of its own because
// the GPU-NaN emulation build (tests/test_gpu_dequant_nan.py) retypes this file's floats.)
QDEV void dqik_kt_set_values(uint32_t i, float * result, float scale, int group, bool is_abs, uint32_t offset) {
    uint32_t x = i + offset;
    for (int k = 0; k < group; ++k) {
        x = 0xCBAC1FEDu*x;
        const uint32_t s = x & 0x3f3f3f3fu;
        const int sum = (int)(s & 0xff) + (int)((s >> 8) & 0xff) + (int)((s >> 16) & 0xff) + (int)(s >> 24);
        const float v = sum - 126.f;
        result[k] = is_abs ? dq_mul(scale, fabsf(v)) : dq_mul(scale, v);
    }
}

QDEV void dqik_iq1_kt(const block_kt_iq1 * x, const float * hdr, float * y) {
    const float d = *hdr;
    for (int ib = 0; ib < 8; ++ib) {
        float sl = dq_mul(d, (float) iqk_iq4k_values[x->sh[ib] & 0xf]);
        for (int ig = 0; ig < 4; ++ig) {
            uint16_t idx = x->ql[ib*4 + ig] | ((x->qh[(ib%4)*4 + ig] << (8 - 4*(ib/4))) & 0xf00);
            idx |= (x->sh[ib] << (8 - ig) & 0x1000);
            dqik_kt_set_values(idx, y, sl, 8, false, 4096);
            y += 8;
        }
    }
}
QTOOL_DEQUANT_ROW_KERNEL(iq1_kt, QK_K, block_kt_iq1, float, dqik_iq1_kt)

QDEV void dqik_iq2_kt(const block_kt_iq2 * x, const float * hdr, float * y) {
    const float d = *hdr;
    float * yl = y;
    float * yh = y + QK_K/2;
    const uint16_t * ql = x->ql;
    const uint16_t * qh = ql + 16;
    for (int ib = 0; ib < 4; ++ib) {
        float sl = dq_mul(d, (float) iqk_iq4k_values[x->scales[ib] & 0xf]);
        float sh = dq_mul(d, (float) iqk_iq4k_values[x->scales[ib] >>  4]);
        for (int ig = 0; ig < 4; ++ig) {
            dqik_kt_set_values(ql[ig], yl, sl, 8, false, 4096);
            dqik_kt_set_values(qh[ig], yh, sh, 8, false, 4096);
            yl += 8;
            yh += 8;
        }
        ql += 4;
        qh += 4;
    }
}
QTOOL_DEQUANT_ROW_KERNEL(iq2_kt, QK_K, block_kt_iq2, float, dqik_iq2_kt)

QDEV void dqik_iq3_kt(const block_kt_iq3 * x, const float * hdr, float * y) {
    const float d = *hdr;
    float * yl = y;
    float * yh = y + QK_K/2;
    const uint16_t * qll = x->ql;
    const uint16_t * qlh = qll + 16;
    int jj = 0;
    for (int ib = 0; ib < 4; ++ib) {
        float sl = dq_mul(d, (float) (x->scales[ib] & 0xf));
        float sh = dq_mul(d, (float) (x->scales[ib] >>  4));
        uint8_t l_mask = 1 << ib;
        uint8_t h_mask = l_mask << 4;
        for (int ig = 0; ig < 4; ++ig) {
            dqik_kt_set_values(qll[jj], yl, sl, 8, true, 4096);
            dqik_kt_set_values(qlh[jj], yh, sh, 8, true, 4096);
            for (int j = 0; j < 8; ++j) {
                if (x->qh[ig*8+j] & l_mask) yl[j] = dq_neg(yl[j]);
                if (x->qh[ig*8+j] & h_mask) yh[j] = dq_neg(yh[j]);
            }
            yl += 8;
            yh += 8;
            ++jj;
        }
    }
}
QTOOL_DEQUANT_ROW_KERNEL(iq3_kt, QK_K, block_kt_iq3, float, dqik_iq3_kt)

QDEV void dqik_iq4_kt(const block_kt_iq4 * x, const float * hdr, float * y) {
    const float d = *hdr;
    const uint32_t * shb = x->qs;
    const uint8_t * ql = (const uint8_t *)(shb + 8);
    const uint8_t * qh = ql + 64;
    for (int ib = 0; ib < 8; ++ib) {
        uint32_t offset = shb[ib] & 1 ? 32768 + 4096 : 4096;
        int ls = (int)((shb[ib] & 0xff) >> 1) - 64;
        float sl = dq_mul(d, (float) ls);
        for (int ig = 0; ig < 8; ++ig) {
            int jj = ib*8 + ig;
            uint16_t idx = ql[jj] | ((qh[jj%32] << (8 - 4*(jj/32))) & 0xf00) | (((shb[ib] >> (8 + 3*ig)) & 7) << 12);
            dqik_kt_set_values(idx, y, sl, 4, false, offset);
            y += 4;
        }
    }
}
QTOOL_DEQUANT_ROW_KERNEL(iq4_kt, QK_K, block_kt_iq4, float, dqik_iq4_kt)

// ---- Q6_0 ---------------------------------------------------------------------------------------

typedef struct { ggml_half d; uint8_t qh[32/4]; uint8_t qs[32/2]; } dqik_block_q6_0;

QDEV void dqik_q6_0(const dqik_block_q6_0 * x, float * y) {
    const float d = dq_fp16(x->d);
    for (int j = 0; j < 16; ++j) {
        const uint8_t h = x->qh[j%8] >> 4*(j/8);
        const int32_t x0 = ((x->qs[j] & 0x0F) | ((h << 4) & 0x30)) - 32;
        const int32_t x1 = ((x->qs[j] >>   4) | ((h << 2) & 0x30)) - 32;
        y[j +  0] = dq_mul((float) x0, d);
        y[j + 16] = dq_mul((float) x1, d);
    }
}
QTOOL_DEQUANT_KERNEL(q6_0, 32, dqik_block_q6_0, dqik_q6_0)

// ---- IQ1_BN, IQ2_BN: ggml's to_float passes dequantize_row_iq{1,2}_bn the row's start, so block
// j is the row's bytes [j*size, (j+1)*size) (the row scale read as block bytes, no scale applied:
// the trits). IQ1_BN rows are 2 + 13*nb bytes (odd offsets: read byte by byte). -------------------

QCONST uint8_t dqik_bn_k_mult[5] = {81, 27, 9, 3, 1};

QKERNEL void dequantize_iq1_bn(const uint8_t * GGML_RESTRICT q, float * GGML_RESTRICT y,
                               int64_t nrows, int64_t n_per_row) {
    const int64_t nb = n_per_row / 64;
    QFOR(ib, nrows * nb) {
        const int64_t row = ib / nb;
        const int64_t j = ib - row * nb;
        const uint8_t * ql = q + row * (2 + 13 * nb) + 13 * j;
        const uint8_t extra = ql[12];
        float * yb = y + ib * 64;
        for (int i16 = 0; i16 < 4; ++i16) {
            for (int k = 0; k < 3; ++k) {
                for (int l = 0; l < 5; ++l) {
                    uint8_t v = (uint8_t)(ql[k]*dqik_bn_k_mult[l]);
                    int8_t vs = (int8_t)((v + (v >> 1)) >> 7);
                    *yb++ = vs - 1;
                }
            }
            ql += 3;
            uint8_t v = (uint8_t)(extra*dqik_bn_k_mult[i16]);
            int8_t vs = (int8_t)((v + (v >> 1)) >> 7);
            *yb++ = vs - 1;
        }
    }
}

typedef struct { uint8_t qs[64/4]; } dqik_block_iq2_bn;

QKERNEL void dequantize_iq2_bn(const uint8_t * GGML_RESTRICT q, float * GGML_RESTRICT y,
                               int64_t nrows, int64_t n_per_row) {
    const int64_t nb = n_per_row / 64;
    QFOR(ib, nrows * nb) {
        const int64_t row = ib / nb;
        const int64_t j = ib - row * nb;
        dqik_block_iq2_bn x;
        load_block(&x, q + row * (4 + 16 * nb) + 16 * j, 16);
        const float d1 = 1.f, d2 = 0.25f, d3 = d2*0.25f, d4 = d3*0.25f;
        const float m = -1.f;
        float * yb = y + ib * 64;
        for (int l = 0; l < 16; ++l) {
            yb[l+ 0] = d1*(x.qs[l] & 0x03) + m;
            yb[l+16] = d2*(x.qs[l] & 0x0c) + m;
            yb[l+32] = d3*(x.qs[l] & 0x30) + m;
            yb[l+48] = d4*(x.qs[l] & 0xc0) + m;
        }
    }
}

// ---- Q8_KV (row header: float d, int32 sum of the quants), Q8_KV_R8 (8 rows interleaved: 8
// float d, then the quants 4 bytes at a time) ------------------------------------------------------

typedef struct { float d; int32_t sum; } dqik_q8_kv_header;
typedef struct { int8_t qs[32]; } dqik_block_q8_kv;

QDEV void dqik_q8_kv(const dqik_block_q8_kv * x, const dqik_q8_kv_header * hdr, float * y) {
    const float d = hdr->d;
    for (int j = 0; j < 32; ++j) y[j] = dq_mul(d, (float) x->qs[j]);
}
QTOOL_DEQUANT_ROW_KERNEL(q8_kv, 32, dqik_block_q8_kv, dqik_q8_kv_header, dqik_q8_kv)

// dequantize_row_q8_KV_r8: row k of a group of 8, value 16*ib + 4*l + i = d[k] * q8[128*ib + 32*l +
// 4*k + i]. nrows must be a multiple of 8 (the engine raises, the kernel aborts).
QKERNEL void dequantize_q8_kv_r8(const uint8_t * GGML_RESTRICT q, float * GGML_RESTRICT y,
                                 int64_t nrows, int64_t n_per_row) {
    const int64_t nb = n_per_row / 32;
    QFOR(ib, nrows * nb) {
        if (nrows % 8) {
            QTOOL_ABORT();
        } else {
            const int64_t row = ib / nb;
            const int64_t j = ib - row * nb;
            const int k = (int) (row % 8);
            const uint8_t * g = q + (row / 8) * (32 + 8 * n_per_row);
            float d;
            load_block(&d, g + 4 * k, 4);
            const int8_t * q8 = (const int8_t *) (g + 32);
            float * yb = y + ib * 32;
            for (int p = 0; p < 32; ++p) {
                const int64_t v = 32 * j + p;
                yb[p] = dq_mul(d, (float) q8[128 * (v / 16) + 32 * ((v % 16) / 4) + 4 * k + v % 4]);
            }
        }
    }
}

// dequantize_row_q8_k_r8: 8 rows interleaved per super-block {fp16 d[8], int8 qs[2048]}; row k,
// value 4*ib + i of super-block ibl = d[k] * qs[32*ib + 4*k + i]. nrows: a multiple of 8 (as above).
QKERNEL void dequantize_q8_k_r8(const uint8_t * GGML_RESTRICT q, float * GGML_RESTRICT y,
                                int64_t nrows, int64_t n_per_row) {
    const int64_t nb = n_per_row / QK_K;
    QFOR(ibx, nrows * nb) {
        if (nrows % 8) {
            QTOOL_ABORT();
        } else {
            const int64_t row = ibx / nb;
            const int64_t ibl = ibx - row * nb;
            const int k = (int) (row % 8);
            const uint8_t * blk = q + ((row / 8) * nb + ibl) * (16 + 8 * QK_K);
            ggml_half dh;
            load_block(&dh, blk + 2 * k, 2);
            const float d = dq_fp16(dh);
            const int8_t * qs = (const int8_t *) (blk + 16);
            float * yb = y + ibx * QK_K;
            for (int ib = 0; ib < QK_K/4; ++ib) {
                for (int i = 0; i < 4; ++i) yb[4*ib + i] = dq_mul(d, (float) qs[32*ib + 4*k + i]);
            }
        }
    }
}
