/* Weight-only quantized matmuls for AVX2 CPUs: y[M, N] = x[M, K] W^T (+ b), W stored in int8 or int4.

   Why: on a CPU without AVX-512, PyTorch's packed kernels (_weight_int4pack_mm_for_cpu, _weight_int8pack_mm)
   dequantize every weight to floating point and read it at a quarter of the memory bandwidth. Here, as in
   llama.cpp's Q4_0 x Q8_0 dot, each row of x is quantized to int8 in blocks of 32 (one float scale per block)
   and the dot products run on bytes: _mm256_maddubs_epi16 does 32 multiply-adds per instruction, so decoding
   stays close to the memory bound.

   Formats (built by reasonbudget.models.quant, checked there):
   - int8: one int8 per weight, one float scale per output channel: W[n, k] = q[n, k] * scale[n].
   - int4: in each run of 64 input channels, byte j (0..31) holds q[j] in its low nibble and q[j + 32] in its
     high one (so one 32-byte load, a shift and two masks give two blocks); one float scale and one float low
     per group of G input channels (G a multiple of 64): W[n, k] = q[n, k] * scale[n, k/G] + low[n, k/G].
   - Both store the weight in 32-byte units (int8: 32 channels, int4: 64), interleaved by tiles of 4 output
     channels: unit u of channel n sits at byte ((n / 4) * U + u) * 128 + (n % 4) * 32, U units per channel, N
     padded to a multiple of 4 with zero channels. A 4-channel tile then reads one contiguous stream, and a
     thread's tiles follow each other in memory. Row-major [N, K] put 4 short streams (a row of the 1.5B's gate/up
     is 768 bytes in int4) in flight per tile; the CPU's prefetchers barely started on them, and a model's
     weights, read once per token from DRAM, streamed at 11 against 18 GB/s (AVX-512 EPYC, 2 threads).
   K is a multiple of 32 (int8) or 64 (int4). The low term reads the group sums of the int8-rounded x, so that
   the rounding of x multiplies the weights themselves and not their offset from the group's minimum (with the
   exact sums, the error grew fourfold: q averages 7.5, not 0).

   Each row of y depends on its row of x only (its own block scales), so a row's result does not depend on
   the other rows fed with it: batched equals alone, bit for bit. Threads split the output channels (OpenMP;
   the shared libgomp is PyTorch's own when it is already loaded). */

#include "avx2_common.h"
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define QK 32
#define ROWS 4 /* rows of x dotted against one weight block while it sits in a register */

int rb_abi_version(void) { return 7; }

#define TILE_N 4 /* output channels interleaved per 128 bytes of a 32-byte unit (see above) */

/* The 32-byte unit u of output channel n (U units per channel). */
INLINE const uint8_t *unit(const void *w, int64_t n, int64_t u, int64_t U) {
    return (const uint8_t *)w + (((n / TILE_N) * U + u) * TILE_N + n % TILE_N) * 32;
}

/* x [M, K] -> xq int8 [M, K], xd [M, K/32] (block scales), xs [M, K/G] (group sums of the rounded x; G = 0:
   none). */
static void quantize_rows(const float *x, int64_t M, int64_t K, int64_t G, int8_t *xq, float *xd, float *xs) {
    const int64_t nb = K / QK;
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * K;
        for (int64_t b = 0; b < nb; b++) {
            const float *v = xr + b * QK;
            float amax = 0.0f;
            int nan = 0;
            for (int j = 0; j < QK; j++) {
                amax = fmaxf(amax, fabsf(v[j]));
                nan |= v[j] != v[j];
            }
            /* a NaN in the block makes its scale NaN, so the outputs are NaN as PyTorch's would be */
            const float d = nan ? NAN : amax / 127.0f, inv = !nan && amax > 0.0f ? 127.0f / amax : 0.0f;
            int sum = 0;
            for (int j = 0; j < QK; j++) {
                const int8_t q = (int8_t)lrintf(v[j] * inv);
                xq[m * K + b * QK + j] = q;
                sum += q;
            }
            xd[m * nb + b] = d;
            if (G) {
                float *g = xs + m * (K / G) + (b * QK) / G;
                *g = (b * QK) % G ? *g + d * (float)sum : d * (float)sum;
            }
        }
    }
}

/* AVX2: maddubs multiplies byte pairs into int16 (no saturation here: |u s| <= 127 * 127, two per lane), madd
   adds those pairs into int32. VNNI's dpbusd does both in one instruction; the int32 sums are the same integers,
   so both variants give the same results bit for bit. */
#define SUFFIX avx2
#define DOT_BLOCK(u, s) _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
#include "qmatmul_tiles.h"
#undef SUFFIX
#undef DOT_BLOCK

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
#define SUFFIX vnni
#define DOT_BLOCK(u, s) _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s))
#define BF16_WIDE
#include "qmatmul_tiles.h"
#undef BF16_WIDE
#undef SUFFIX
#undef DOT_BLOCK
#pragma GCC pop_options

static int use_vnni = -1; /* -1: not decided yet */

/* 1 when the VNNI tiles run; `on` = 0 turns them off, 1 turns them on where the CPU has them, -1 only asks. */
int rb_vnni(int on) {
    if (on >= 0 || use_vnni < 0)
        use_vnni = on != 0 && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
    return use_vnni;
}

/* Returns 0, or -1 when scratch memory could not be allocated. */
int rb_q4_matmul(const float *x, int64_t M, int64_t K, const uint8_t *w, const float *scale, const float *low,
                 const float *bias, int64_t N, int64_t G, float *y, int threads) {
    int8_t *xq = malloc((size_t)(M * K));
    float *xd = malloc(sizeof(float) * (size_t)(M * (K / QK))), *xs = malloc(sizeof(float) * (size_t)(M * (K / G)));
    if (!xq || !xd || !xs) {
        free(xq), free(xd), free(xs);
        return -1;
    }
    quantize_rows(x, M, K, G, xq, xd, xs);
    (rb_vnni(-1) ? q4_tiles_vnni : q4_tiles_avx2)(M, K, w, scale, low, bias, N, G, xq, xd, xs, y, threads);
    free(xq), free(xd), free(xs);
    return 0;
}

int rb_q8_matmul(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scale, const float *bias,
                 int64_t N, float *y, int threads) {
    int8_t *xq = malloc((size_t)(M * K));
    float *xd = malloc(sizeof(float) * (size_t)(M * (K / QK)));
    if (!xq || !xd) {
        free(xq), free(xd);
        return -1;
    }
    quantize_rows(x, M, K, 0, xq, xd, NULL);
    (rb_vnni(-1) ? q8_tiles_vnni : q8_tiles_avx2)(M, K, w, scale, bias, N, xq, xd, y, threads);
    free(xq), free(xd);
    return 0;
}

/* y [M, N] = x [M, K] W^T (+ b), W bf16 in the tile layout (16 weights a unit), K a multiple of 16. */
void rb_bf16_matmul(const float *x, int64_t M, int64_t K, const uint8_t *w, const float *bias, int64_t N, float *y,
                    int threads) {
    (rb_vnni(-1) ? bf16_tiles_vnni : bf16_tiles_avx2)(M, K, w, x, bias, N, y, threads);
}

/* ---- the many-row path: the weights back to row-major bf16 [N, K], for a dense bf16 matmul ----------------
   Past a few dozen rows (prefill) our tiles are compute-bound in int8/float32 arithmetic, where a CPU with
   native bf16 dot products (AVX512-BF16, AMX) runs a dense bf16 GEMM about twice as fast; writing the weights
   out once per call costs less than that. Rounding to bf16 is to nearest, ties to even. */
/* 8 floats -> 8 bf16 at dst, rounded to nearest, ties to even (finite inputs: the weights here always are). */
INLINE void store_bf16x8(uint16_t *dst, __m256 f) {
    const __m256i b = _mm256_castps_si256(f);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
    _mm_storeu_si128((__m128i *)dst, _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}

void rb_q8_to_bf16(const int8_t *w, const float *scale, int64_t N, int64_t K, uint16_t *out, int threads) {
    const int64_t U = K / QK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const __m256 s = _mm256_set1_ps(scale[n]);
        for (int64_t u = 0; u < U; u++) {
            const uint8_t *src = unit(w, n, u, U);
            for (int c = 0; c < QK; c += 8) {
                const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(src + c)));
                store_bf16x8(out + n * K + u * QK + c, _mm256_mul_ps(_mm256_cvtepi32_ps(q), s));
            }
        }
    }
}

void rb_q4_to_bf16(const uint8_t *w, const float *scale, const float *low, int64_t N, int64_t K, int64_t G,
                   uint16_t *out, int threads) {
    const int64_t U = K / 64, ng = K / G;
    const __m256i m4 = _mm256_set1_epi32(0x0F);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++)
        for (int64_t u = 0; u < U; u++) {
            const uint8_t *src = unit(w, n, u, U);
            const int64_t g = n * ng + u * 64 / G; /* G is a multiple of 64: one group per unit */
            const __m256 s = _mm256_set1_ps(scale[g]), lo = _mm256_set1_ps(low[g]);
            for (int c = 0; c < 32; c += 8) {
                const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(src + c)));
                const __m256 q0 = _mm256_cvtepi32_ps(_mm256_and_si256(b, m4));
                const __m256 q1 = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
                /* q s + low rounded twice, as quant.dequantize_int4 computes it (an FMA would round once) */
                store_bf16x8(out + n * K + u * 64 + c, _mm256_add_ps(_mm256_mul_ps(q0, s), lo));
                store_bf16x8(out + n * K + u * 64 + 32 + c, _mm256_add_ps(_mm256_mul_ps(q1, s), lo));
            }
        }
}

void rb_bf16_untile(const uint8_t *w, int64_t N, int64_t K, uint16_t *out, int threads) {
    const int64_t U = K / 16;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++)
        for (int64_t u = 0; u < U; u++) __builtin_memcpy(out + n * K + u * 16, unit(w, n, u, U), 32);
}
