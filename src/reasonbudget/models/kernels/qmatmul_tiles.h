/* The tiles of the quantized matmuls, included twice by qmatmul_avx2.c: once for AVX2 and once for CPUs with
   AVX512-VNNI, with NAME(x) suffixing each function and DOT_BLOCK(u, s) the sum over a block's 32 channels of
   u[j] * s[j] (u unsigned bytes, s signed bytes) as 8 floats to add up. */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(x) CAT(x, SUFFIX)

/* A tile of NR output channels x MC rows of x: NR x MC independent accumulator chains, so that one row of x
   (decode) does not wait on the latency of a single chain (NR = 4 made a one-row matvec ~2x faster). */
INLINE void NAME(q4_tile)(const int NR, const int MC, int64_t n0, int64_t m0, int64_t K, int64_t G, int64_t N,
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
                    gacc[r][i] = _mm256_fmadd_ps(DOT_BLOCK(u0, x0[i]), d0[i], gacc[r][i]);
                    gacc[r][i] = _mm256_fmadd_ps(DOT_BLOCK(u1, x1[i]), d1[i], gacc[r][i]);
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

INLINE void NAME(q8_tile)(const int NR, const int MC, int64_t n0, int64_t m0, int64_t K, int64_t N, const int8_t *w,
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
                acc[r][i] = _mm256_fmadd_ps(DOT_BLOCK(aw, _mm256_sign_epi8(xv[i], wv)), d[i], acc[r][i]);
        }
    }
    for (int r = 0; r < NR; r++)
        for (int i = 0; i < MC; i++)
            y[(m0 + i) * N + n0 + r] = hsum8(acc[r][i]) * scale[n0 + r] + (bias ? bias[n0 + r] : 0.0f);
}

/* bf16 weights, float32 x: a 32-byte unit holds 16 bf16 weights; widened to float32 by a zero-extension and a
   16-bit shift (bf16 is float32's upper half), then multiplied in float32: y is x W^T of the bf16 weights up to
   the summation order. Half the bytes of float32 weights, and the same activations. With BF16_WIDE (the
   AVX-512 variant) a unit is one 16-float vector: half the instructions, which the many-row (batched, prefill)
   case is bound by. */
#ifdef BF16_WIDE
#define BF16_VEC __m512
#define BF16_ZERO _mm512_setzero_ps
#define BF16_SUM _mm512_reduce_add_ps
#define BF16_TILE_ROWS 4
#else
#define BF16_VEC __m256
#define BF16_ZERO _mm256_setzero_ps
#define BF16_SUM hsum8
#define BF16_TILE_ROWS 2
#endif

INLINE void NAME(bf16_tile)(const int NR, const int MC, int64_t n0, int64_t m0, int64_t K, int64_t N,
                      const uint8_t *w, const float *x, const float *bias, float *y) {
    const int64_t U = K / 16;
    BF16_VEC acc[4][ROWS];
    for (int r = 0; r < NR; r++)
        for (int i = 0; i < MC; i++) acc[r][i] = BF16_ZERO();
    for (int64_t u = 0; u < U; u++) {
#ifdef BF16_WIDE
        __m512 xv[ROWS];
        for (int i = 0; i < MC; i++) xv[i] = _mm512_loadu_ps(x + (m0 + i) * K + u * 16);
        for (int r = 0; r < NR; r++) {
            const __m256i h = _mm256_loadu_si256((const __m256i *)unit(w, n0 + r, u, U));
            const __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
            for (int i = 0; i < MC; i++) acc[r][i] = _mm512_fmadd_ps(wv, xv[i], acc[r][i]);
        }
#else
        __m256 x0[ROWS], x1[ROWS];
        for (int i = 0; i < MC; i++) {
            x0[i] = _mm256_loadu_ps(x + (m0 + i) * K + u * 16);
            x1[i] = _mm256_loadu_ps(x + (m0 + i) * K + u * 16 + 8);
        }
        for (int r = 0; r < NR; r++) {
            const uint8_t *p = unit(w, n0 + r, u, U);
            const __m256 w0 = _mm256_castsi256_ps(
                _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
            const __m256 w1 = _mm256_castsi256_ps(
                _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 16))), 16));
            for (int i = 0; i < MC; i++)
                acc[r][i] = _mm256_fmadd_ps(w1, x1[i], _mm256_fmadd_ps(w0, x0[i], acc[r][i]));
        }
#endif
    }
    for (int r = 0; r < NR; r++)
        for (int i = 0; i < MC; i++)
            y[(m0 + i) * N + n0 + r] = BF16_SUM(acc[r][i]) + (bias ? bias[n0 + r] : 0.0f);
}

/* Tiles over the output (parallel) and over the rows of x. Shapes as compile-time constants, so that the
   accumulators live in registers: one row -> 4 output channels at a time, two rows -> 2, more -> 1 x 4 rows.
   A thread takes whole 4-channel tiles, so it reads the weight in one stream. */
#ifndef TILED
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
#endif

static void NAME(q4_tiles)(int64_t M, int64_t K, const uint8_t *w, const float *scale, const float *low,
                           const float *bias, int64_t N, int64_t G, const int8_t *xq, const float *xd,
                           const float *xs, float *y, int threads) {
#define Q4(NR, MC, n0, m0) NAME(q4_tile)(NR, MC, n0, m0, K, G, N, w, scale, low, xq, xd, xs, bias, y)
    TILED(Q4)
#undef Q4
}

static void NAME(q8_tiles)(int64_t M, int64_t K, const int8_t *w, const float *scale, const float *bias, int64_t N,
                           const int8_t *xq, const float *xd, float *y, int threads) {
#define Q8(NR, MC, n0, m0) NAME(q8_tile)(NR, MC, n0, m0, K, N, w, scale, xq, xd, bias, y)
    TILED(Q8)
#undef Q8
}

static void NAME(bf16_tiles)(int64_t M, int64_t K, const uint8_t *w, const float *x, const float *bias, int64_t N,
                             float *y, int threads) {
    /* 4 channels x BF16_TILE_ROWS rows a tile: 8 or 16 accumulator chains keep both FMA ports busy (1 channel x
       4 rows, the quantized tiles' choice, left one chain per row waiting on the FMA latency: 3x slower at 4-16
       rows). A thread's 4-channel tile stays in the L2 cache while the rows pass over it. */
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < (N + TILE_N - 1) / TILE_N; t++) {
        const int64_t n0 = t * TILE_N;
        if (n0 + 4 <= N) {
            int64_t m0 = 0;
            for (; m0 + BF16_TILE_ROWS <= M; m0 += BF16_TILE_ROWS)
                NAME(bf16_tile)(4, BF16_TILE_ROWS, n0, m0, K, N, w, x, bias, y);
            for (; m0 < M; m0++) NAME(bf16_tile)(4, 1, n0, m0, K, N, w, x, bias, y);
        } else {
            for (int64_t n = n0; n < N; n++)
                for (int64_t m0 = 0; m0 < M; m0++) NAME(bf16_tile)(1, 1, n, m0, K, N, w, x, bias, y);
        }
    }
}
#undef BF16_VEC
#undef BF16_ZERO
#undef BF16_SUM
#undef BF16_TILE_ROWS
