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

int rb_abi_version(void) { return 3; }

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

/* sum over a block's 32 channels of u[j] * s[j] (u unsigned bytes, s signed), as 8 floats to add up. */
INLINE __m256 dot_block(__m256i u, __m256i s) {
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

/* A tile of NR output channels x MC rows of x: NR x MC independent accumulator chains, so that one row of x
   (decode) does not wait on the latency of a single chain (NR = 4 made a one-row matvec ~2x faster). */
INLINE void q4_tile(const int NR, const int MC, int64_t n0, int64_t m0, int64_t K, int64_t G, int64_t N,
                    const uint8_t *w, const float *scale, const float *low, const int8_t *xq, const float *xd,
                    const float *xs, const float *bias, float *y) {
    const int64_t nb = K / QK, ng = K / G;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[4][ROWS];
    for (int r = 0; r < NR; r++)
        for (int i = 0; i < MC; i++) acc[r][i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        __m256 gacc[4][ROWS];
        for (int r = 0; r < NR; r++)
            for (int i = 0; i < MC; i++) gacc[r][i] = _mm256_setzero_ps();
        for (int64_t b = g * (G / QK); b < (g + 1) * (G / QK); b += 2) {
            __m256i x0[ROWS], x1[ROWS];
            __m256 d0[ROWS], d1[ROWS];
            for (int i = 0; i < MC; i++) {
                const int8_t *xr = xq + (m0 + i) * K + b * QK;
                x0[i] = _mm256_loadu_si256((const __m256i *)xr);
                x1[i] = _mm256_loadu_si256((const __m256i *)(xr + QK));
                d0[i] = _mm256_broadcast_ss(xd + (m0 + i) * nb + b);
                d1[i] = _mm256_broadcast_ss(xd + (m0 + i) * nb + b + 1);
            }
            for (int r = 0; r < NR; r++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)unit(w, n0 + r, b / 2, K / 64));
                const __m256i u0 = _mm256_and_si256(v, m4), u1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                for (int i = 0; i < MC; i++) {
                    gacc[r][i] = _mm256_fmadd_ps(dot_block(u0, x0[i]), d0[i], gacc[r][i]);
                    gacc[r][i] = _mm256_fmadd_ps(dot_block(u1, x1[i]), d1[i], gacc[r][i]);
                }
            }
        }
        for (int r = 0; r < NR; r++) {
            const __m256 s = _mm256_broadcast_ss(scale + (n0 + r) * ng + g);
            for (int i = 0; i < MC; i++) acc[r][i] = _mm256_fmadd_ps(gacc[r][i], s, acc[r][i]);
        }
    }
    for (int r = 0; r < NR; r++) {
        const int64_t n = n0 + r;
        const float *lr = low + n * ng;
        for (int i = 0; i < MC; i++) {
            float lowsum = 0.0f;
            for (int64_t g = 0; g < ng; g++) lowsum += lr[g] * xs[(m0 + i) * ng + g];
            y[(m0 + i) * N + n] = hsum8(acc[r][i]) + lowsum + (bias ? bias[n] : 0.0f);
        }
    }
}

INLINE void q8_tile(const int NR, const int MC, int64_t n0, int64_t m0, int64_t K, int64_t N, const int8_t *w,
                    const float *scale, const int8_t *xq, const float *xd, const float *bias, float *y) {
    const int64_t nb = K / QK;
    __m256 acc[4][ROWS];
    for (int r = 0; r < NR; r++)
        for (int i = 0; i < MC; i++) acc[r][i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i xv[ROWS];
        __m256 d[ROWS];
        for (int i = 0; i < MC; i++) {
            xv[i] = _mm256_loadu_si256((const __m256i *)(xq + (m0 + i) * K + b * QK));
            d[i] = _mm256_broadcast_ss(xd + (m0 + i) * nb + b);
        }
        for (int r = 0; r < NR; r++) {
            const __m256i wv = _mm256_loadu_si256((const __m256i *)unit(w, n0 + r, b, nb));
            const __m256i aw = _mm256_sign_epi8(wv, wv); /* |w|: maddubs wants its first operand unsigned */
            for (int i = 0; i < MC; i++)
                acc[r][i] = _mm256_fmadd_ps(dot_block(aw, _mm256_sign_epi8(xv[i], wv)), d[i], acc[r][i]);
        }
    }
    for (int r = 0; r < NR; r++)
        for (int i = 0; i < MC; i++)
            y[(m0 + i) * N + n0 + r] = hsum8(acc[r][i]) * scale[n0 + r] + (bias ? bias[n0 + r] : 0.0f);
}

/* Tiles over the output (parallel) and over the rows of x. Shapes as compile-time constants, so that the
   accumulators live in registers: one row -> 4 output channels at a time, two rows -> 2, more -> 1 x 4 rows.
   A thread takes whole 4-channel tiles, so it reads the weight in one stream. */
#define TILED(TILE)                                                                                              \
    const int64_t nr = TILE_N;                                                                                 \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                          \
    for (int64_t t = 0; t < (N + nr - 1) / nr; t++) {                                                          \
        const int64_t n0 = t * nr;                                                                             \
        if (M == 1 && n0 + 4 <= N) { TILE(4, 1, n0, 0); continue; }                                            \
        if (M == 2 && n0 + 4 <= N) { TILE(2, 2, n0, 0); TILE(2, 2, n0 + 2, 0); continue; }                     \
        for (int64_t n = n0; n < n0 + nr && n < N; n++)                                                        \
            for (int64_t m0 = 0; m0 < M; m0 += ROWS) {                                                         \
                switch (M - m0 < ROWS ? M - m0 : ROWS) {                                                       \
                case 1: TILE(1, 1, n, m0); break;                                                              \
                case 2: TILE(1, 2, n, m0); break;                                                              \
                case 3: TILE(1, 3, n, m0); break;                                                              \
                default: TILE(1, 4, n, m0); break;                                                             \
                }                                                                                              \
            }                                                                                                  \
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
#define Q4(NR, MC, n0, m0) q4_tile(NR, MC, n0, m0, K, G, N, w, scale, low, xq, xd, xs, bias, y)
    TILED(Q4)
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
#define Q8(NR, MC, n0, m0) q8_tile(NR, MC, n0, m0, K, N, w, scale, xq, xd, bias, y)
    TILED(Q8)
    free(xq), free(xd);
    return 0;
}
