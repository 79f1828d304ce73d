// Products with Q8_0 matrices (ggml's layout: blocks of 32 weights, a float16 scale d then 32 int8
// codes, 34 bytes) for AVX2+FMA+F16C machines: the resident weights' 8-bit format. Activations are
// quantized the same way (per 32, scale amax/127), so a block's dot product is integer: vpmaddubsw on
// |w| and x·sign(w), vpmaddwd to int32, then one FMA with d_w·d_x. About 8 instructions per 32
// weights: memory-bound on two cores. Per-function target attributes, run-time dispatch.
#include "CD2MoEKernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define INLINE TARGET static inline __attribute__((always_inline))

INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

// Σ w·x over one block as 8 int32 lanes.
INLINE __m256i block_dot(const uint8_t *block, __m256i x) {
    __m256i w = _mm256_loadu_si256((const __m256i *)(block + 2));
    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

INLINE float block_scale(const uint8_t *block) {
    return _cvtsh_ss((unsigned short)(block[0] | block[1] << 8));
}

// NR rows (r..r+NR-1) times one token.
INLINE void rows_token(const uint8_t *w, long row_bytes, long blocks, const int8_t *xq, const float *xs, float *y,
                       const int NR) {
    __m256 acc[4];
    for (int i = 0; i < NR; i++) acc[i] = _mm256_setzero_ps();
    // Rows of up to a few KiB (SmolLM2's output head: 576 columns, 612 bytes) make the NR rows one
    // short stretch read in an interleaved order the hardware prefetcher follows poorly; asking
    // for the bytes 8 KiB past the stretch's read position, three lines per block (NR·34 bytes
    // are used), keeps reads in flight. Measured on two cores, old → new GB/s: 49152x576 12-17 →
    // 21-25, 16384x1536 11-14 → 23-37, 12288x2304 15-23 → 33-40. Long rows are separate streams,
    // each asked ahead on its own.
    const int linear = NR * row_bytes <= 12288;
    for (long b = 0; b < blocks; b++) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(xq + 32 * b));
        const float dx = xs[b];
        if (linear) {
            const char *p = (const char *)w + 8192 + 34 * NR * b;
            _mm_prefetch(p, _MM_HINT_T0);
            _mm_prefetch(p + 64, _MM_HINT_T0);
            _mm_prefetch(p + 128, _MM_HINT_T0);
        }
        for (int i = 0; i < NR; i++) {
            const uint8_t *block = w + i * row_bytes + 34 * b;
            if (!linear) _mm_prefetch((const char *)(block + 34 * 16), _MM_HINT_T0);
            __m256 d = _mm256_set1_ps(block_scale(block) * dx);
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot(block, x)), d, acc[i]);
        }
    }
    for (int i = 0; i < NR; i++) y[i] = hsum(acc[i]);
}

TARGET void d2moe_q8_matmul_avx2(const void *w, long rows, long cols, const int8_t *xq, const float *xs, long tokens,
                                 float *y, long row_begin, long row_end) {
    if (cols % 32 != 0) return;
    const long blocks = cols / 32, row_bytes = blocks * 34;
    const uint8_t *base = (const uint8_t *)w;
    long r = row_begin;
    // Four rows at a time; their 4·34·blocks bytes stay in L1 while every token passes over them.
    for (; r + 4 <= row_end; r += 4)
        for (long t = 0; t < tokens; t++)
            rows_token(base + r * row_bytes, row_bytes, blocks, xq + t * cols, xs + t * blocks, y + t * rows + r, 4);
    for (; r < row_end; r++)
        for (long t = 0; t < tokens; t++)
            rows_token(base + r * row_bytes, row_bytes, blocks, xq + t * cols, xs + t * blocks, y + t * rows + r, 1);
}

TARGET void d2moe_q8_quantize_avx2(const float *x, long n, int8_t *xq, float *xs) {
    if (n % 32 != 0) return;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (long b = 0; b < n / 32; b++) {
        const float *p = x + 32 * b;
        __m256 v[4], mx = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(p + 8 * i);
            mx = _mm256_max_ps(mx, _mm256_and_ps(v[i], absmask));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float amax = _mm_cvtss_f32(m4);
        xs[b] = amax / 127.0f;
        const __m256 inv = _mm256_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
        __m256i q[4];
        for (int i = 0; i < 4; i++) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
        // packs works within 128-bit lanes; the dword permute restores column order.
        __m256i q16a = _mm256_packs_epi32(q[0], q[1]), q16b = _mm256_packs_epi32(q[2], q[3]);
        __m256i q8 = _mm256_packs_epi16(q16a, q16b);
        q8 = _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(xq + 32 * b), q8);
    }
}
#else
void d2moe_q8_matmul_avx2(const void *w, long rows, long cols, const int8_t *xq, const float *xs, long tokens,
                          float *y, long row_begin, long row_end) {
    (void)w; (void)rows; (void)cols; (void)xq; (void)xs; (void)tokens; (void)y; (void)row_begin; (void)row_end;
}
void d2moe_q8_quantize_avx2(const float *x, long n, int8_t *xq, float *xs) { (void)x; (void)n; (void)xq; (void)xs; }
#endif
