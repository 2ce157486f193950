/* A whole one-token decode step through every transformer block in one call, for models whose block linears
   all run on our kernels (int8, int4, bf16 weights): what `Block.decode_fused` does from Python, op for op and
   with the same functions, so the results are equal bit for bit.

   Why: from Python each block costs ~10 calls (a quantized linear's module, wrapper and ctypes call ~16 us, a
   norm or SwiGLU ~5 us), about 2.5 ms of SmolLM2-135M's 9-12 ms step; here the 30 blocks cost one call. */

#include <stdint.h>

typedef struct {
    int64_t kind; /* 1: bf16 tiles, 2: int8 tiles, 3: int4 tiles (models/quant.py builds them) */
    int64_t n, k, group;
    const void *w;
    const float *scale, *low, *bias; /* low: int4 only; bias may be NULL */
} rb_linear;

typedef struct {
    const float *attn_norm, *mlp_norm, *q_norm, *k_norm; /* q_norm, k_norm: NULL without per-head norms */
    rb_linear qkv, o, gate_up, down;
} rb_block;

int rb_q4_matmul(const float *x, int64_t M, int64_t K, const uint8_t *w, const float *scale, const float *low,
                 const float *bias, int64_t N, int64_t G, float *y, int threads);
int rb_q8_matmul(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scale, const float *bias,
                 int64_t N, float *y, int threads);
void rb_bf16_matmul(const float *x, int64_t M, int64_t K, const uint8_t *w, const float *bias, int64_t N, float *y,
                    int threads);
void rb_rms_norm(const float *x, int64_t rows, int64_t d, const float *w, float eps, float *y);
void rb_silu_mul(const float *gate_up, int64_t rows, int64_t i, float *y);
int rb_attn_decode(const float *qkv, int64_t R, int64_t H, int64_t Hkv, int64_t D, const float *q_norm,
                   const float *k_norm, float eps, const float *cos, const float *sin, float *k_cache, float *v_cache,
                   int64_t S, const int64_t *rows, const int64_t *pos, float *out, int threads);

static int linear(const rb_linear *l, const float *x, int64_t M, float *y, int threads) {
    switch (l->kind) {
    case 1: rb_bf16_matmul(x, M, l->k, l->w, l->bias, l->n, y, threads); return 0;
    case 2: return rb_q8_matmul(x, M, l->k, l->w, l->scale, l->bias, l->n, y, threads);
    case 3: return rb_q4_matmul(x, M, l->k, l->w, l->scale, l->low, l->bias, l->n, l->group, y, threads);
    default: return -2;
    }
}

static void add_into(float *x, const float *t, int64_t n) {
    for (int64_t j = 0; j < n; j++) x[j] += t[j];
}

/* x [R, d] in place through L blocks. k_cache, v_cache: the whole cache [L, rows_total, Hkv, S, D]; cos, sin
   [R, D]; rows, pos as for rb_attn_decode. scratch: R (3 d + (2 H + 2 Hkv) D + 3 I) floats. Returns 0, -1 (out
   of memory) or -2 (a linear of an unknown kind). */
int rb_decode_blocks(float *x, int64_t R, int64_t d, const rb_block *blocks, int64_t L, int64_t H, int64_t Hkv,
                     int64_t D, int64_t I, float eps, const float *cos, const float *sin, float *k_cache,
                     float *v_cache, int64_t rows_total, int64_t S, const int64_t *rows, const int64_t *pos,
                     float *scratch, int threads) {
    float *h = scratch, *qkv = h + R * d, *o = qkv + R * (H + 2 * Hkv) * D, *t = o + R * H * D, *gu = t + R * d,
          *a = gu + R * 2 * I;
    const int64_t layer = rows_total * Hkv * S * D;
    int rc = 0;
    for (int64_t i = 0; i < L && !rc; i++) {
        const rb_block *b = blocks + i;
        rb_rms_norm(x, R, d, b->attn_norm, eps, h);
        if ((rc = linear(&b->qkv, h, R, qkv, threads))) break;
        if ((rc = rb_attn_decode(qkv, R, H, Hkv, D, b->q_norm, b->k_norm, eps, cos, sin, k_cache + i * layer,
                                 v_cache + i * layer, S, rows, pos, o, threads)))
            break;
        if ((rc = linear(&b->o, o, R, t, threads))) break;
        add_into(x, t, R * d);
        rb_rms_norm(x, R, d, b->mlp_norm, eps, h);
        if ((rc = linear(&b->gate_up, h, R, gu, threads))) break;
        rb_silu_mul(gu, R, I, a);
        if ((rc = linear(&b->down, a, R, t, threads))) break;
        add_into(x, t, R * d);
    }
    return rc;
}
