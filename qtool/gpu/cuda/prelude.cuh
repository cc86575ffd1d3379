// qtool GPU kernels: the prelude shared by every kernel source.
//
// The same text compiles two ways: with NVRTC (through CuPy) as CUDA device code, and with a
// host C++ compiler (tests/gpu_host.py) as plain loops, so the kernels' arithmetic is checked
// against the golden vectors on machines without a GPU. Kernel code is ggml's scalar C
// (ggml-quants.c of llama.cpp, MIT licence) moved into one function per block.
// Byte-exactness rules: no FMA contraction (--fmad=false / -ffp-contract=off), IEEE division
// and sqrt, C's order in every reduction, and C's float -> int conversions as x86 does them.
#pragma once
#ifdef __CUDACC_RTC__
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#define QDEV __device__ __forceinline__
#define QCONST __constant__
#define QKERNEL extern "C" __global__
#define QFOR(i, n) const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; if (i < (n))
#define QBITS_F2U(f) ((uint32_t)__float_as_uint(f))
#define QBITS_U2F(u) (__uint_as_float(u))
#else
#include <stdint.h>
#include <string.h>
#include <math.h>
#define QDEV static inline
#define QCONST static const
#define QKERNEL extern "C"
#define QFOR(i, n) for (int64_t i = 0; i < (n); ++i)
static inline uint32_t QBITS_F2U(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float QBITS_U2F(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
#endif

typedef uint16_t ggml_half;
#define QK_K 256
#define K_SCALE_SIZE 12
#define GROUP_MAX_EPS 1e-15f
#define GROUP_MAX_EPS_IQ3_XXS 1e-8f
#define GROUP_MAX_EPS_IQ2_S 1e-8f
#define GROUP_MAX_EPS_IQ1_M 1e-7f
#define GROUP_MAX_EPS_IQ1_S 1e-12f
#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#endif
#define GGML_RESTRICT

QDEV float fp32_from_bits(uint32_t w) { return QBITS_U2F(w); }
QDEV uint32_t fp32_to_bits(float f) { return QBITS_F2U(f); }

// ggml_compute_fp16_to_fp32 / ggml_compute_fp32_to_fp16 (ggml-impl.h): round to nearest even.
QDEV float GGML_FP16_TO_FP32(ggml_half h) {
    const uint32_t w = (uint32_t) h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const uint32_t exp_offset = 0xE0u << 23;
    const float exp_scale = fp32_from_bits(0x7800000u);
    const float normalized_value = fp32_from_bits((two_w >> 4) + exp_offset) * exp_scale;
    const uint32_t magic_mask = 126u << 23;
    const float magic_bias = 0.5f;
    const float denormalized_value = fp32_from_bits((two_w >> 17) | magic_mask) - magic_bias;
    const uint32_t denormalized_cutoff = 1u << 27;
    const uint32_t result = sign |
        (two_w < denormalized_cutoff ? fp32_to_bits(denormalized_value) : fp32_to_bits(normalized_value));
    return fp32_from_bits(result);
}

QDEV ggml_half GGML_FP32_TO_FP16(float f) {
    const float scale_to_inf = fp32_from_bits(0x77800000u);
    const float scale_to_zero = fp32_from_bits(0x08800000u);
    float base = (fabsf(f) * scale_to_inf) * scale_to_zero;
    const uint32_t w = fp32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) {
        bias = 0x71000000u;
    }
    base = fp32_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = fp32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (ggml_half)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

// C's (int)f as x86-64 does it (cvttss2si): out of range and NaN give INT32_MIN. CUDA's own
// conversion saturates and maps NaN to 0, so every float -> integer cast of ggml's code goes
// through these.
QDEV int32_t f2i(float f) {
    return (f >= -2147483648.0f && f < 2147483648.0f) ? (int32_t)f : (int32_t)0x80000000u;
}
QDEV int8_t f2i8(float f) { return (int8_t)(uint8_t)(uint32_t)f2i(f); }
QDEV uint8_t f2u8(float f) { return (uint8_t)(uint32_t)f2i(f); }

QDEV int nearest_int(float fval) {
#ifdef __CUDACC_RTC__
    // ggml's bit trick reads the NaN's payload. A GPU makes every NaN 0x7FFFFFFF (-> 4194303); x86
    // makes 0xFFC00000 for an invalid operation (-> 0), as where a block's range is so small that
    // nmax / (max - min) overflows and inf * 0 follows (Q5_1 with an imatrix on rows of ~1e-38,
    // seen on an H200): give x86's answer. (A NaN propagated from a NaN input keeps its payload on
    // x86; such rows are not data.)
    if (fval != fval) return 0;
#endif
    float val = fval + 12582912.f;
    int i = (int)fp32_to_bits(val);
    return (i & 0x007fffff) - 0x00400000;
}

// A block composed in registers goes to memory 16 bits at a time: every block size is even and
// every block starts at an even offset (byte-wide stores of whole blocks were seen to go wrong
// under NVRTC in the feasibility probe).
QDEV void store_block(uint8_t * GGML_RESTRICT dst, const void * src, int nbytes) {
    const uint16_t * s = (const uint16_t *) src;
    uint16_t * d = (uint16_t *) dst;
    for (int i = 0; i < nbytes / 2; ++i) d[i] = s[i];
}

// The kernels' calling convention (kernel name `quantize_<type>`; one thread per block of QK
// values; x: float32 rows, qw: the imatrix row or null, y: the output rows, aux: one float per
// row from a row pre-pass (rows' mean square, where ggml's row loop computes one) or null).
#define QTOOL_ROW_KERNEL(NAME, QK, BLOCK_T, BODY)                                               \
    QKERNEL void quantize_##NAME(const float * GGML_RESTRICT x, const float * GGML_RESTRICT qw, \
                                 uint8_t * GGML_RESTRICT y, const float * GGML_RESTRICT aux,    \
                                 int64_t nrows, int64_t n_per_row) {                            \
        const int64_t nb = n_per_row / (QK);                                                    \
        QFOR(ib, nrows * nb) {                                                                  \
            const int64_t row = ib / nb;                                                        \
            const int64_t j = ib - row * nb;                                                    \
            const float * xb = x + row * n_per_row + j * (QK);                                  \
            const float * wb = qw ? qw + j * (QK) : (const float *) 0;                          \
            const float row_aux = aux ? aux[row] : 0.0f;                                        \
            BLOCK_T blk;                                                                        \
            BODY(xb, wb, &blk, row_aux);                                                        \
            store_block(y + ib * (int64_t) sizeof(BLOCK_T), &blk, (int) sizeof(BLOCK_T));       \
        }                                                                                       \
    }

// A block read from memory 16 bits at a time into registers (the counterpart of store_block:
// blocks start at even offsets only, so wider loads of their float / uint32 fields could fault).
QDEV void load_block(void * dst, const uint8_t * GGML_RESTRICT src, int nbytes) {
    const uint16_t * s = (const uint16_t *) src;
    uint16_t * d = (uint16_t *) dst;
    for (int i = 0; i < nbytes / 2; ++i) d[i] = s[i];
}

// The dequantize kernels' calling convention (kernel name `dequantize_<type in lower case>`, one
// thread per block of QK values; q: the rows' bytes (nrows * n_per_row / QK blocks, no row
// header), y: float32 rows out). BODY(const BLOCK_T *blk, float *y) is ggml's
// dequantize_row_<type> for one block. Types with a per-row header (ik's row scales) define
// their own kernel with the same arguments.
#define QTOOL_DEQUANT_KERNEL(NAME, QK, BLOCK_T, BODY)                                           \
    QKERNEL void dequantize_##NAME(const uint8_t * GGML_RESTRICT q, float * GGML_RESTRICT y,    \
                                   int64_t nrows, int64_t n_per_row) {                          \
        QFOR(ib, nrows * (n_per_row / (QK))) {                                                  \
            BLOCK_T blk;                                                                        \
            load_block(&blk, q + ib * (int64_t) sizeof(BLOCK_T), (int) sizeof(BLOCK_T));       \
            BODY(&blk, y + ib * (int64_t) (QK));                                                \
        }                                                                                       \
    }

// The backend checks once per device that its build keeps subnormal floats as x86 does (CuPy's
// own compile path adds -ftz=true, which flushes them: qtool/gpu/nvrtc.py): y[0] = 2^-126 / 2 and
// y[1] = 2^-127 * 4 give 2^-127 and 2^-125, both 0 under flush-to-zero.
QKERNEL void qtool_probe_subnormal(float * y) {
    QFOR(i, 1) {
        y[0] = y[0] * 0.5f;
        y[1] = y[1] * 4.0f;
    }
}

// Row pre-pass: sum of squares / n_per_row in C's sequential order, one thread per row
// (ggml's quantize_row_*_impl of the legacy types compute sigma2 = sum_x2 / n_per_row).
QKERNEL void row_mean_square(const float * GGML_RESTRICT x, float * GGML_RESTRICT out, int64_t nrows,
                             int64_t n_per_row) {
    QFOR(r, nrows) {
        const float * xr = x + r * n_per_row;
        float sum_x2 = 0;
        for (int64_t j = 0; j < n_per_row; ++j) sum_x2 += xr[j] * xr[j];
        out[r] = sum_x2 / n_per_row;
    }
}

// A lookup table the backend uploads once (qtool/gpu/tables.py) and points `name` at.
#ifdef __CUDACC_RTC__
#define QTABLE(T, name) extern "C" { __device__ const T * name = 0; }
#else
#define QTABLE(T, name) extern "C" { const T * name = 0; }
#endif

// Where ggml's / ik_llama.cpp's C aborts (GGML_ASSERT) and the numpy engine raises, a kernel says
// so here: the backends point this at an int of their own, check it after the launch and raise
// (the bytes of such a launch are not used). One store of 1 from any thread; never cleared here.
QTABLE(int, qtool_abort)
#define QTOOL_ABORT() do { if (qtool_abort) *(int *) qtool_abort = 1; } while (0)

// ---- x86 NaN semantics for the dequantize kernels (dequant.cuh, dequant_ik.cuh) ----------------
// Their output is the numpy engine's (and x86's) float32 bits, NaN included (F16 / BF16 outputs
// keep a NaN's sign and payload). A GPU's arithmetic on a NaN gives its canonical NaN 0x7FFFFFFF;
// x86's gives the first NaN operand made quiet, or 0xFFC00000 (the default NaN) for one it makes
// (inf * 0, inf - inf). So every operation that can meet a NaN or an inf (fp16 / float scales
// from the file, their products) goes through dq_mul / dq_add / dq_sub (x86's NaN on both
// devices), signs are flipped as bits (dq_neg), and fp16 is widened as numpy does (dq_fp16).
QDEV bool dq_isnan(float a) { return (QBITS_F2U(a) & 0x7FFFFFFFu) > 0x7F800000u; }
QDEV float dq_nan2(float a, float b) {  // x86: the first NaN operand, quiet; else the default NaN
    return QBITS_U2F(dq_isnan(a) ? (QBITS_F2U(a) | 0x400000u)
                     : dq_isnan(b) ? (QBITS_F2U(b) | 0x400000u) : 0xFFC00000u);
}
QDEV float dq_mul(float a, float b) { const float r = a * b; return dq_isnan(r) ? dq_nan2(a, b) : r; }
QDEV float dq_add(float a, float b) { const float r = a + b; return dq_isnan(r) ? dq_nan2(a, b) : r; }
QDEV float dq_sub(float a, float b) { const float r = a - b; return dq_isnan(r) ? dq_nan2(a, b) : r; }
QDEV float dq_neg(float a) { return QBITS_U2F(QBITS_F2U(a) ^ 0x80000000u); }

// GGML_FP16_TO_FP32, with inf / NaN widened by bits (payload kept, as numpy's float16 -> float32).
QDEV float dq_fp16(uint16_t h) {
    if ((h & 0x7C00u) == 0x7C00u) {
        return QBITS_U2F(((uint32_t) (h & 0x8000u) << 16) | 0x7F800000u | ((uint32_t) (h & 0x3FFu) << 13));
    }
    return GGML_FP16_TO_FP32(h);
}
