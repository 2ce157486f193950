/* The small float32 ops of a one-token decode step, fused for AVX2 CPUs: RMSNorm, SwiGLU's silu(gate) * up,
   and attention over the KV cache (per-head q/k norm, RoPE, the cache write, GQA attention).

   Why: at batch 1 these ops touch a few kilobytes each, and PyTorch's per-op dispatch, allocation and
   threading cost 5-80 us per op: about 13 ms of a SmolLM2-135M or Qwen2.5-0.5B step on a 2-core AVX2 machine,
   as much as all of the 0.5B's quantized weight reads. One call per op group here costs a few microseconds.

   Every row is computed from its own inputs only (no batch-wide reduction), so batched equals alone. */

#include "avx2_common.h"
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>


INLINE float dot(const float *a, const float *b, int64_t n) { /* n a multiple of 8 */
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i < n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    return hsum8(_mm256_add_ps(s0, s1));
}

/* e^x for x <= 0 (softmax after subtracting the maximum): x = n ln2 + r, |r| <= ln2/2, e^r by its Taylor
   polynomial of degree 7 (relative error < 1e-8 before rounding), 2^n through the exponent bits. */
INLINE __m256 exp_nonpositive(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x); /* x second: a NaN passes through (maxps returns operand 2) */
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* y = x / sqrt(mean(x^2) + eps) * w over the last dimension d (scalar tail for d not a multiple of 8). */
static void rms_norm_row(const float *x, const float *w, int64_t d, float eps, float *y) {
    __m256 s = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        s = _mm256_fmadd_ps(v, v, s);
    }
    float ss = hsum8(s);
    for (; i < d; i++) ss += x[i] * x[i];
    const float inv = 1.0f / sqrtf(ss / (float)d + eps);
    for (i = 0; i < d; i++) y[i] = x[i] * inv * w[i];
}

void rb_rms_norm(const float *x, int64_t rows, int64_t d, const float *w, float eps, float *y) {
    for (int64_t r = 0; r < rows; r++) rms_norm_row(x + r * d, w, d, eps, y + r * d);
}

/* gate_up [rows, 2 i] (gate first) -> y [rows, i] = silu(gate) * up */
void rb_silu_mul(const float *gate_up, int64_t rows, int64_t i, float *y) {
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gate_up + r * 2 * i, *u = g + i;
        for (int64_t j = 0; j < i; j++) y[r * i + j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    }
}

/* Rotate-half RoPE of one head in place: x[j] <- x[j] cos[j] - x[j + D/2] sin[j], and the mirrored half. */
static void rope(float *x, const float *cos, const float *sin, int64_t D) {
    const int64_t h = D / 2;
    for (int64_t j = 0; j < h; j++) {
        const float a = x[j], b = x[j + h];
        x[j] = a * cos[j] - b * sin[j];
        x[j + h] = b * cos[j + h] + a * sin[j + h];
    }
}

/* o[D] = inv * sum_t w[t] v[t]: 64 columns at a time in 8 registers, one pass over the values per 64. */
static void weighted_values(const float *w, const float *v, int64_t n, int64_t D, float inv, float *o) {
    int64_t i0 = 0;
    for (; i0 + 64 <= D; i0 += 64) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int64_t t = 0; t < n; t++) {
            const __m256 wt = _mm256_set1_ps(w[t]);
            const float *vt = v + t * D + i0;
            a0 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(vt), a0);
            a1 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(vt + 8), a1);
            a2 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(vt + 16), a2);
            a3 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(vt + 24), a3);
            a4 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(vt + 32), a4);
            a5 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(vt + 40), a5);
            a6 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(vt + 48), a6);
            a7 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(vt + 56), a7);
        }
        const __m256 s = _mm256_set1_ps(inv);
        __m256 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
        for (int k = 0; k < 8; k++) _mm256_storeu_ps(o + i0 + 8 * k, _mm256_mul_ps(acc[k], s));
    }
    for (; i0 < D; i0 += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t t = 0; t < n; t++) acc = _mm256_fmadd_ps(_mm256_set1_ps(w[t]), _mm256_loadu_ps(v + t * D + i0), acc);
        _mm256_storeu_ps(o + i0, _mm256_mul_ps(acc, _mm256_set1_ps(inv)));
    }
}

/* One decode token per row.
   qkv [R, (H + 2 Hkv) D]: the fused projection's output (q heads, then k heads, then v heads).
   q_norm, k_norm: [D] per-head RMSNorm weights (Qwen3) or NULL.  cos, sin [R, D]: the row's RoPE.
   k_cache, v_cache: one layer's cache, [rows_total, Hkv, S, D]; distinct row ids rows[R]; pos[R]: the new token's
   position (it attends to positions 0..pos). The new k, v are written at pos. out [R, H D]. */
int rb_attn_decode(const float *qkv, int64_t R, int64_t H, int64_t Hkv, int64_t D, const float *q_norm,
                   const float *k_norm, float eps, const float *cos, const float *sin, float *k_cache, float *v_cache,
                   int64_t S, const int64_t *rows, const int64_t *pos, float *out, int threads) {
    const int64_t g = H / Hkv, width = (H + 2 * Hkv) * D;
    const float scale = 1.0f / sqrtf((float)D);
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) reduction(| : failed)
    for (int64_t task = 0; task < R * Hkv; task++) {
        const int64_t r = task / Hkv, j = task % Hkv, p = pos[r];
        const float *row = qkv + r * width, *c = cos + r * D, *s = sin + r * D;
        float *kc = k_cache + (rows[r] * Hkv + j) * S * D, *vc = v_cache + (rows[r] * Hkv + j) * S * D;
        float *kn = kc + p * D, *vn = vc + p * D;
        const float *k_src = row + (H + j) * D, *v_src = row + (H + Hkv + j) * D;
        if (k_norm)
            rms_norm_row(k_src, k_norm, D, eps, kn);
        else
            for (int64_t i = 0; i < D; i++) kn[i] = k_src[i];
        rope(kn, c, s, D);
        for (int64_t i = 0; i < D; i++) vn[i] = v_src[i];
        float *buf = malloc(sizeof(float) * (size_t)(p + 1 + 8 + D));
        if (!buf) {
            failed = 1;
            continue;
        }
        float *q = buf + p + 1 + 8; /* scores take p + 1 floats, padded to a multiple of 8 */
        for (int64_t h = j * g; h < (j + 1) * g; h++) {
            if (q_norm)
                rms_norm_row(row + h * D, q_norm, D, eps, q);
            else
                for (int64_t i = 0; i < D; i++) q[i] = row[h * D + i];
            rope(q, c, s, D);
            float m = -INFINITY;
            for (int64_t t = 0; t <= p; t++) {
                buf[t] = dot(q, kc + t * D, D) * scale;
                m = buf[t] > m ? buf[t] : m;
            }
            const int64_t n8 = (p + 1 + 7) / 8 * 8;
            for (int64_t t = p + 1; t < n8; t++) buf[t] = -INFINITY;
            __m256 sum = _mm256_setzero_ps();
            const __m256 mv = _mm256_set1_ps(m);
            for (int64_t t = 0; t < n8; t += 8) {
                const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(buf + t), mv));
                _mm256_storeu_ps(buf + t, e);
                sum = _mm256_add_ps(sum, e);
            }
            const float inv = 1.0f / hsum8(sum);
            weighted_values(buf, vc, p + 1, D, inv, out + r * H * D + h * D);
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

/* y[M, N] = x[M, K] W[N, K]^T (+ b) for a few rows (decode): each weight row streamed once, dotted with up
   to 4 rows of x while in registers. K a multiple of 8. Threads split the output channels. */
#define F32_ROWS 4
INLINE void f32_rows(const int MC, int64_t n, int64_t m0, int64_t K, int64_t N, const float *x, const float *w,
                     const float *bias, float *y) {
    const float *wr = w + n * K;
    __m256 acc[F32_ROWS][2];
    for (int i = 0; i < MC; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const __m256 w0 = _mm256_loadu_ps(wr + k), w1 = _mm256_loadu_ps(wr + k + 8);
        for (int i = 0; i < MC; i++) {
            const float *xr = x + (m0 + i) * K + k;
            acc[i][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 8), acc[i][1]);
        }
    }
    for (; k < K; k += 8) {
        const __m256 w0 = _mm256_loadu_ps(wr + k);
        for (int i = 0; i < MC; i++)
            acc[i][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + (m0 + i) * K + k), acc[i][0]);
    }
    for (int i = 0; i < MC; i++)
        y[(m0 + i) * N + n] = hsum8(_mm256_add_ps(acc[i][0], acc[i][1])) + (bias ? bias[n] : 0.0f);
}

void rb_f32_matmul(const float *x, int64_t M, int64_t K, const float *w, const float *bias, int64_t N, float *y,
                   int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++)
        for (int64_t m0 = 0; m0 < M; m0 += F32_ROWS) {
            switch (M - m0 < F32_ROWS ? M - m0 : F32_ROWS) {
            case 1: f32_rows(1, n, m0, K, N, x, w, bias, y); break;
            case 2: f32_rows(2, n, m0, K, N, x, w, bias, y); break;
            case 3: f32_rows(3, n, m0, K, N, x, w, bias, y); break;
            default: f32_rows(4, n, m0, K, N, x, w, bias, y); break;
            }
        }
}
