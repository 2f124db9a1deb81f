/* searchpipe's CPU inference kernels for AVX-512 machines: multi-head self-attention read
 * straight from the fused query/key/value projection, and LayerNorm.
 *
 * searchpipe_attention, for one right-padded batch:
 *   qkv  (B, T, 3, H, Dh)  bf16 or fp32, contiguous: what the fused qkv GEMM writes
 *   out  (B, T, H, Dh)     the same dtype: (B, T, D), ready for the output projection
 *   len  (B,)              real tokens of each row; keys at or after it are padding
 *
 * Why not PyTorch's flash attention: at BERT-small head sizes (Dh = 32) its CPU kernel runs
 * small blocked GEMMs at under 100 GFLOP/s on an AVX512-BF16 EPYC, a third of a forward for
 * 5% of its FLOPs, and it needs q, k and v permuted to (B, H, T, Dh) and the output permuted
 * back. Here one (row, head) is one task: its keys (transposed) and values are copied once
 * into a per-thread buffer that stays in L2 (as bf16 pairs for vdpbf16ps where the CPU has
 * AVX512-BF16 and the model is bf16, else widened to fp32), six queries at a time are scored
 * against 32 keys in twelve zmm accumulators, the softmax is exact-max in fp32 with a vector
 * exp2 (the scale folded with log2 e into the scores as they are written, their maximum kept
 * on the way), and P.V accumulates in registers. Padded query positions are not computed
 * (written as zero); nothing at a real position reads them, since padded keys are masked.
 *
 * searchpipe_layer_norm: one row at a time, mean and variance in fp32 over the row held in L1
 * (two passes, no E[x^2] - mean^2 cancellation), the result rounded once. PyTorch's CPU
 * LayerNorm measured 1.7-2.5x slower on (8192, 384) bf16 on an AVX512-BF16 EPYC; a MiniLM
 * forward runs twelve of them.
 *
 * Built on first use by searchpipe.models.kernels with the machine's own compiler flags
 * (-march=native), and only on CPUs with AVX-512; elsewhere PyTorch's kernels run.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define QB 6  /* queries per register block */
#define JT 32 /* keys per score tile: two vectors of 16 floats */

static inline __m512 load16(const void *p, int bf16) {
    if (bf16) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    }
    return _mm512_loadu_ps((const float *)p);
}

static inline void store16(void *p, __m512 x, int bf16) {
    if (bf16) { /* round to nearest even, as torch's fp32 -> bf16 cast (no NaN here) */
        __m512i u = _mm512_castps_si512(x);
        __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        u = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
        _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
    } else {
        _mm512_storeu_ps((float *)p, x);
    }
}

static inline float load1(const void *p, int64_t i, int bf16) {
    if (bf16) {
        uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
        float f;
        memcpy(&f, &u, sizeof f);
        return f;
    }
    return ((const float *)p)[i];
}

/* 2^t for t <= 0: 2^floor(t) * 2^f with f = t - floor(t) in [0, 1) (vreduceps), 2^f by a
 * degree-5 polynomial (relative error 7.5e-8, fitted to minimise it on [0, 1)); vscalefps
 * applies 2^floor(t) itself, so very negative t (masked keys: -1e30) give exactly 0 */
static inline __m512 exp2_16(__m512 t) {
    __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 p = _mm512_set1_ps(1.8775730952e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.9893377445e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5826331705e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4015360667e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9315307570e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.9999992492e-1f));
    return _mm512_scalef_ps(p, t);
}

/* acc[r] += sum_t a[r * as + t] * b[t * bs .. + 32] for r < QB, t < n: the register block
 * behind both q.k (a = queries, b = transposed keys) and p.v (a = weights, b = values) */
static inline void tile_f32(__m512 acc[QB][2], const float *a, int64_t as, const float *b,
                            int64_t bs, int64_t n) {
#pragma GCC unroll 6
    for (int r = 0; r < QB; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t t = 0; t < n; t++) {
        __m512 b0 = _mm512_load_ps(b + t * bs), b1 = _mm512_load_ps(b + t * bs + 16);
#pragma GCC unroll 6
        for (int r = 0; r < QB; r++) {
            __m512 x = _mm512_set1_ps(a[r * as + t]);
            acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
        }
    }
}

#if defined(__AVX512BF16__)
/* the same on bf16 pairs: a holds (x[t], x[t+1]) pairs as 32-bit words, b 32 pairs a row */
static inline void tile_bf16(__m512 acc[QB][2], const uint32_t *a, int64_t as, const uint16_t *b,
                             int64_t bs, int64_t n) {
#pragma GCC unroll 6
    for (int r = 0; r < QB; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t t = 0; t < n; t++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(b + t * bs);
        __m512bh b1 = (__m512bh)_mm512_load_si512(b + t * bs + 32);
#pragma GCC unroll 6
        for (int r = 0; r < QB; r++) {
            __m512bh x = (__m512bh)_mm512_set1_epi32((int)a[r * as + t]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, b1);
        }
    }
}
#endif

/* one tile of scores, keys j0 .. j0 + 31 for QB queries: a * c (c = scale * log2 e, so that
 * the softmax is a power of two) stored in s, keys at or past L set to -1e30; mx keeps each
 * query's running maximum */
static inline void score_tile(float *s, int64_t lp, int64_t j0, int64_t L, __m512 a[QB][2],
                              __m512 c, __m512 mx[QB]) {
    const int64_t n = L - j0; /* real keys in this tile, from 1 up */
    const __mmask16 k0 = n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
    const __mmask16 k1 = n >= 32 ? 0xFFFF : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
    const __m512 pad = _mm512_set1_ps(-1e30f);
#pragma GCC unroll 6
    for (int r = 0; r < QB; r++) {
        __m512 x0 = _mm512_mask_mul_ps(pad, k0, a[r][0], c);
        __m512 x1 = _mm512_mask_mul_ps(pad, k1, a[r][1], c);
        _mm512_store_ps(s + r * lp + j0, x0);
        _mm512_store_ps(s + r * lp + j0 + 16, x1);
        mx[r] = _mm512_max_ps(mx[r], _mm512_max_ps(x0, x1));
    }
}

/* one query's softmax weights, 2^(x - max) over its lp scores, written over them in fp32, or
 * to pb in bf16 when pb is given (the sum stays fp32, from the unrounded weights); returns
 * 1 / the sum */
static inline float weights(float *sr, uint16_t *pb, int64_t lp, __m512 mx) {
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < lp; j += 32) {
        __m512 e0 = exp2_16(_mm512_sub_ps(_mm512_load_ps(sr + j), m));
        __m512 e1 = exp2_16(_mm512_sub_ps(_mm512_load_ps(sr + j + 16), m));
        sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
#if defined(__AVX512BF16__)
        if (pb) {
            _mm512_store_si512(pb + j, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
            continue;
        }
#endif
        _mm512_store_ps(sr + j, e0);
        _mm512_store_ps(sr + j + 16, e1);
    }
    (void)pb;
    return 1.0f / _mm512_reduce_add_ps(sum);
}

/* one (row, head): keys and values already widened into kt (Dh, lp) and v (lp, Dh) */
static void head(const float *kt, const float *v, const char *qkv, char *out, int64_t L,
                 int64_t lp, int64_t row, int64_t orow, int64_t Dh, int64_t esz, __m512 c,
                 int bf16, float *q, float *s) {
    for (int64_t i0 = 0; i0 < L; i0 += QB) {
        int64_t nr = L - i0 < QB ? L - i0 : QB;
        for (int64_t r = 0; r < QB; r++) /* queries in fp32; rows past nr are zero */
            for (int64_t d = 0; d < Dh; d += 16)
                _mm512_storeu_ps(q + r * Dh + d, r < nr ? load16(qkv + ((i0 + r) * row + d) * esz, bf16)
                                                        : _mm512_setzero_ps());
        __m512 mx[QB];
#pragma GCC unroll 6
        for (int r = 0; r < QB; r++) mx[r] = _mm512_set1_ps(-1e30f);
        for (int64_t j0 = 0; j0 < lp; j0 += JT) { /* scores: s[r][j] = q_r . k_j */
            __m512 a[QB][2];
            tile_f32(a, q, Dh, kt + j0, lp, Dh);
            score_tile(s, lp, j0, L, a, c, mx);
        }
        float inv[QB];
        for (int64_t r = 0; r < QB; r++) inv[r] = weights(s + r * lp, NULL, lp, mx[r]);
        for (int64_t d0 = 0; d0 < Dh; d0 += 32) { /* out_r = sum_j p[r][j] v_j, 32 dims at once */
            __m512 o[QB][2];
            tile_f32(o, s, lp, v + d0, Dh, L);
            for (int64_t r = 0; r < nr; r++) {
                char *dst = out + ((i0 + r) * orow + d0) * esz;
                __m512 w = _mm512_set1_ps(inv[r]);
                store16(dst, _mm512_mul_ps(o[r][0], w), bf16);
                store16(dst + 16 * esz, _mm512_mul_ps(o[r][1], w), bf16);
            }
        }
    }
}

#if defined(__AVX512BF16__)
/* The same for bf16 inputs on CPUs with AVX512-BF16 dot products (vdpbf16ps: 32 products
 * per instruction, twice the fp32 FMA's 16). Keys and values stay bf16, interleaved in pairs
 * along the summed axis: kp (Dh/2, lp, 2) for q.k over d, vp (lp/2, Dh, 2) for p.v over j.
 * The softmax is fp32 and its weights are rounded to bf16 for p.v, as PyTorch's bf16 flash
 * attention does; sums accumulate in fp32. */
static void head_bf16dot(const uint16_t *kp, const uint16_t *vp, const char *qkv, char *out,
                         int64_t L, int64_t lp, int64_t row, int64_t orow, int64_t Dh, __m512 c,
                         uint16_t *q, float *s, uint16_t *pb) {
    for (int64_t i0 = 0; i0 < L; i0 += QB) {
        int64_t nr = L - i0 < QB ? L - i0 : QB;
        for (int64_t r = 0; r < QB; r++) /* raw bf16 queries; rows past nr are zero */
            if (r < nr) memcpy(q + r * Dh, qkv + (i0 + r) * row * 2, (size_t)Dh * 2);
            else memset(q + r * Dh, 0, (size_t)Dh * 2);
        const uint32_t *q2 = (const uint32_t *)q; /* (q[d], q[d+1]) pairs */
        __m512 mx[QB];
#pragma GCC unroll 6
        for (int r = 0; r < QB; r++) mx[r] = _mm512_set1_ps(-1e30f);
        for (int64_t j0 = 0; j0 < lp; j0 += JT) {
            __m512 a[QB][2];
            tile_bf16(a, q2, Dh / 2, kp + j0 * 2, lp * 2, Dh / 2);
            score_tile(s, lp, j0, L, a, c, mx);
        }
        float inv[QB];
        for (int64_t r = 0; r < QB; r++) inv[r] = weights(s + r * lp, pb + r * lp, lp, mx[r]);
        const uint32_t *p2 = (const uint32_t *)pb; /* (p[j], p[j+1]) pairs */
        const int64_t pairs = (L + 1) / 2;
        for (int64_t d0 = 0; d0 < Dh; d0 += 32) {
            __m512 o[QB][2];
            tile_bf16(o, p2, lp / 2, vp + d0 * 2, Dh * 2, pairs);
            for (int64_t r = 0; r < nr; r++) {
                char *dst = out + ((i0 + r) * orow + d0) * 2;
                __m512 w = _mm512_set1_ps(inv[r]);
                store16(dst, _mm512_mul_ps(o[r][0], w), 1);
                store16(dst + 32, _mm512_mul_ps(o[r][1], w), 1);
            }
        }
    }
}
#endif

/* returns 0, or -1 when the shape is not one this kernel runs (Dh not a multiple of 32) */
int searchpipe_attention(const void *qkv, const int64_t *lengths, void *out, int64_t B, int64_t T,
                         int64_t H, int64_t Dh, float scale, int bf16, int threads) {
    if (Dh % 32 != 0 || Dh > 256 || T < 1) return -1;
    const int64_t esz = bf16 ? 2 : 4, row = 3 * H * Dh, orow = H * Dh;
    const int64_t lpmax = (T + JT - 1) / JT * JT;
    const __m512 c = _mm512_set1_ps(scale * 1.44269504088896341f); /* e^x = 2^(x log2 e) */
#if defined(__AVX512BF16__)
    /* word i of the pair-interleaved value rows: a[i/2] for even i, b[i/2] for odd (+32) */
    uint16_t order[64];
    for (int i = 0; i < 64; i++) order[i] = (uint16_t)((i % 32) / 2 + (i >= 32 ? 16 : 0) + (i % 2 ? 32 : 0));
    const __m512i lo = _mm512_loadu_si512(order), hi = _mm512_loadu_si512(order + 32);
#endif
#pragma omp parallel num_threads(threads)
    {
        float *kt = aligned_alloc(64, (size_t)(Dh * lpmax) * sizeof(float));
        float *v = aligned_alloc(64, (size_t)(lpmax * Dh) * sizeof(float));
        float *s = aligned_alloc(64, (size_t)(QB * lpmax) * sizeof(float));
        float *q = aligned_alloc(64, (size_t)(QB * Dh) * sizeof(float));
#if defined(__AVX512BF16__)
        uint16_t *kb = aligned_alloc(64, (size_t)(Dh * lpmax) * 2);
        uint16_t *vb = aligned_alloc(64, (size_t)(lpmax * Dh) * 2);
        uint16_t *qb = aligned_alloc(64, (size_t)(QB * Dh) * 2);
        uint16_t *pb = aligned_alloc(64, (size_t)(QB * lpmax) * 2);
#endif
#pragma omp for schedule(dynamic, 1)
        for (int64_t bh = 0; bh < B * H; bh++) {
            const int64_t b = bh / H, h = bh % H;
            int64_t L = lengths[b];
            L = L < 1 ? 1 : (L > T ? T : L);
            const int64_t lp = (L + JT - 1) / JT * JT;
            const char *base = (const char *)qkv + (b * T * row + h * Dh) * esz;
            char *dst = (char *)out + (b * T * orow + h * Dh) * esz;
#if defined(__AVX512BF16__)
            if (bf16) {
                uint32_t *kp32 = (uint32_t *)kb; /* (k[j][d], k[j][d+1]) pairs, transposed */
                for (int64_t j = 0; j < L; j++) {
                    const uint32_t *k = (const uint32_t *)(base + (j * row + H * Dh) * 2);
                    for (int64_t dp = 0; dp < Dh / 2; dp++) kp32[dp * lp + j] = k[dp];
                }
                for (int64_t dp = 0; dp < Dh / 2; dp++)
                    memset(kp32 + dp * lp + L, 0, (size_t)(lp - L) * sizeof(uint32_t));
                for (int64_t j = 0; j < lp; j += 2) /* rows j and j+1 interleaved, 32 dims at once */
                    for (int64_t d0 = 0; d0 < Dh; d0 += 32) {
                        __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
                        if (j < L) a = _mm512_loadu_si512(base + (j * row + 2 * H * Dh + d0) * 2);
                        if (j + 1 < L) b = _mm512_loadu_si512(base + ((j + 1) * row + 2 * H * Dh + d0) * 2);
                        _mm512_store_si512(vb + (j / 2 * Dh + d0) * 2, _mm512_permutex2var_epi16(a, lo, b));
                        _mm512_store_si512(vb + (j / 2 * Dh + d0 + 16) * 2, _mm512_permutex2var_epi16(a, hi, b));
                    }
                head_bf16dot(kb, vb, base, dst, L, lp, row, orow, Dh, c, qb, s, pb);
                for (int64_t i = L; i < T; i++) memset(dst + i * orow * 2, 0, (size_t)(Dh * 2));
                continue;
            }
#endif
            for (int64_t j = 0; j < L; j++) {
                const char *k = base + (j * row + H * Dh) * esz, *vv = base + (j * row + 2 * H * Dh) * esz;
                for (int64_t d = 0; d < Dh; d++) kt[d * lp + j] = load1(k, d, bf16);
                for (int64_t d = 0; d < Dh; d += 16) _mm512_store_ps(v + j * Dh + d, load16(vv + d * esz, bf16));
            }
            for (int64_t j = L; j < lp; j++) {
                for (int64_t d = 0; d < Dh; d++) kt[d * lp + j] = 0.0f;
                memset(v + j * Dh, 0, (size_t)Dh * sizeof(float));
            }
            head(kt, v, base, dst, L, lp, row, orow, Dh, esz, c, bf16, q, s);
            for (int64_t i = L; i < T; i++) memset(dst + i * orow * esz, 0, (size_t)(Dh * esz));
        }
        free(kt);
        free(v);
        free(s);
        free(q);
#if defined(__AVX512BF16__)
        free(kb);
        free(vb);
        free(qb);
        free(pb);
#endif
    }
    return 0;
}

/* y = (x - mean) / sqrt(var + eps) * w + b over each row of D, x and y (rows, D) and w, b (D,)
 * in the same dtype; returns 0, or -1 when D is not a multiple of 16 */
int searchpipe_layer_norm(const void *x, const void *w, const void *b, void *y, int64_t rows,
                          int64_t D, float eps, int bf16, int threads) {
    if (D % 16 != 0 || D < 16) return -1;
    const int64_t esz = bf16 ? 2 : 4;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        const char *xr = (const char *)x + i * D * esz;
        char *yr = (char *)y + i * D * esz;
        __m512 sum = _mm512_setzero_ps(), sq = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 16) sum = _mm512_add_ps(sum, load16(xr + d * esz, bf16));
        const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / (float)D);
        for (int64_t d = 0; d < D; d += 16) {
            __m512 c = _mm512_sub_ps(load16(xr + d * esz, bf16), mean);
            sq = _mm512_fmadd_ps(c, c, sq);
        }
        const float var = _mm512_reduce_add_ps(sq) / (float)D;
        const __m512 r = _mm512_set1_ps(1.0f / _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(var + eps))));
        for (int64_t d = 0; d < D; d += 16) {
            __m512 c = _mm512_mul_ps(_mm512_sub_ps(load16(xr + d * esz, bf16), mean), r);
            __m512 o = _mm512_fmadd_ps(c, load16((const char *)w + d * esz, bf16),
                                       load16((const char *)b + d * esz, bf16));
            store16(yr + d * esz, o, bf16);
        }
    }
    return 0;
}
