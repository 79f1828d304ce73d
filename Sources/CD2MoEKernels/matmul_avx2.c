// Float matrix products for AVX2+FMA machines. Compiled with per-function target attributes so the
// package needs no unsafe flags; callers dispatch on d2moe_cpu_features().
#include "CD2MoEKernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma,f16c")))

// Loads 8 consecutive weights of row `row` starting at column c as floats.
TARGET static inline __m256 load8(const void *w, int elem, long row, long cols, long c) {
    if (elem == D2MOE_F32) return _mm256_loadu_ps((const float *)w + row * cols + c);
    const uint16_t *p = (const uint16_t *)w + row * cols + c;
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (elem == D2MOE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

TARGET static inline float load1(const void *w, int elem, long row, long cols, long c) {
    if (elem == D2MOE_F32) return ((const float *)w)[row * cols + c];
    uint16_t v = ((const uint16_t *)w)[row * cols + c];
    if (elem == D2MOE_F16) return _cvtsh_ss(v);
    union { uint32_t u; float f; } b = { (uint32_t)v << 16 };
    return b.f;
}

TARGET static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

// One token: 4 rows at a time, two accumulators per row to hide FMA latency. Bound by memory.
TARGET static void gemv(const void *w, int elem, long cols, const float *x, float *y, long r0, long r1) {
    long r = r0;
    long c8 = cols & ~15L;
    // As in the Q8_0 product: four short rows are one stretch read in an interleaved order the
    // hardware prefetcher follows poorly, so the bytes 8 KiB past the read position are asked
    // for, as many lines per step as the step uses (4 rows x 16 columns).
    const long esize = elem == D2MOE_F32 ? 4 : 2;
    const int linear = 4 * cols * esize <= 12288;
    for (; r + 4 <= r1; r += 4) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        const char *ahead = (const char *)w + (r * cols * esize + 8192);
        long c = 0;
        for (; c < c8; c += 16) {
            if (linear) {
                const char *p = ahead + 4 * esize * c;
                _mm_prefetch(p, _MM_HINT_T0);
                _mm_prefetch(p + 64, _MM_HINT_T0);
                if (esize == 4) {
                    _mm_prefetch(p + 128, _MM_HINT_T0);
                    _mm_prefetch(p + 192, _MM_HINT_T0);
                }
            }
            __m256 xv = _mm256_loadu_ps(x + c), xw = _mm256_loadu_ps(x + c + 8);
            a0 = _mm256_fmadd_ps(load8(w, elem, r, cols, c), xv, a0);
            a1 = _mm256_fmadd_ps(load8(w, elem, r + 1, cols, c), xv, a1);
            a2 = _mm256_fmadd_ps(load8(w, elem, r + 2, cols, c), xv, a2);
            a3 = _mm256_fmadd_ps(load8(w, elem, r + 3, cols, c), xv, a3);
            b0 = _mm256_fmadd_ps(load8(w, elem, r, cols, c + 8), xw, b0);
            b1 = _mm256_fmadd_ps(load8(w, elem, r + 1, cols, c + 8), xw, b1);
            b2 = _mm256_fmadd_ps(load8(w, elem, r + 2, cols, c + 8), xw, b2);
            b3 = _mm256_fmadd_ps(load8(w, elem, r + 3, cols, c + 8), xw, b3);
        }
        float s0 = hsum(_mm256_add_ps(a0, b0)), s1 = hsum(_mm256_add_ps(a1, b1));
        float s2 = hsum(_mm256_add_ps(a2, b2)), s3 = hsum(_mm256_add_ps(a3, b3));
        for (; c < cols; c++) {
            s0 += load1(w, elem, r, cols, c) * x[c];
            s1 += load1(w, elem, r + 1, cols, c) * x[c];
            s2 += load1(w, elem, r + 2, cols, c) * x[c];
            s3 += load1(w, elem, r + 3, cols, c) * x[c];
        }
        y[r] = s0; y[r + 1] = s1; y[r + 2] = s2; y[r + 3] = s3;
    }
    for (; r < r1; r++) {
        __m256 a = _mm256_setzero_ps();
        long c = 0;
        for (; c + 8 <= cols; c += 8) a = _mm256_fmadd_ps(load8(w, elem, r, cols, c), _mm256_loadu_ps(x + c), a);
        float s = hsum(a);
        for (; c < cols; c++) s += load1(w, elem, r, cols, c) * x[c];
        y[r] = s;
    }
}

// Several tokens: tiles of 4 rows x 2 tokens keep 8 accumulators, 4 weight and 2 activation
// vectors in registers, so each weight load feeds two FMAs and the rows' weights stay in L1
// while the token loop runs over them.
TARGET static void gemm(const void *w, int elem, long cols, const float *x, long tokens, float *y, long rows,
                        long r0, long r1) {
    long c8 = cols & ~7L;
    long r = r0;
    for (; r + 4 <= r1; r += 4) {
        long t = 0;
        for (; t + 2 <= tokens; t += 2) {
            const float *x0 = x + t * cols, *x1 = x0 + cols;
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
            for (long c = 0; c < c8; c += 8) {
                __m256 v0 = _mm256_loadu_ps(x0 + c), v1 = _mm256_loadu_ps(x1 + c);
                __m256 w0 = load8(w, elem, r, cols, c), w1 = load8(w, elem, r + 1, cols, c);
                __m256 w2 = load8(w, elem, r + 2, cols, c), w3 = load8(w, elem, r + 3, cols, c);
                a00 = _mm256_fmadd_ps(w0, v0, a00); a01 = _mm256_fmadd_ps(w0, v1, a01);
                a10 = _mm256_fmadd_ps(w1, v0, a10); a11 = _mm256_fmadd_ps(w1, v1, a11);
                a20 = _mm256_fmadd_ps(w2, v0, a20); a21 = _mm256_fmadd_ps(w2, v1, a21);
                a30 = _mm256_fmadd_ps(w3, v0, a30); a31 = _mm256_fmadd_ps(w3, v1, a31);
            }
            float s[8] = { hsum(a00), hsum(a10), hsum(a20), hsum(a30), hsum(a01), hsum(a11), hsum(a21), hsum(a31) };
            for (long c = c8; c < cols; c++) {
                for (int i = 0; i < 4; i++) {
                    float wv = load1(w, elem, r + i, cols, c);
                    s[i] += wv * x0[c];
                    s[4 + i] += wv * x1[c];
                }
            }
            for (int i = 0; i < 4; i++) { y[t * rows + r + i] = s[i]; y[(t + 1) * rows + r + i] = s[4 + i]; }
        }
        for (; t < tokens; t++) gemv(w, elem, cols, x + t * cols, y + t * rows, r, r + 4);
    }
    for (long t = 0; t < tokens && r < r1; t++) gemv(w, elem, cols, x + t * cols, y + t * rows, r, r1);
}

void d2moe_matmul_avx2(const void *w, int elem, long rows, long cols, const float *x, long tokens, float *y,
                       long row_begin, long row_end) {
    if (tokens == 1) gemv(w, elem, cols, x, y, row_begin, row_end);
    else gemm(w, elem, cols, x, tokens, y, rows, row_begin, row_end);
}
#else
void d2moe_matmul_avx2(const void *w, int elem, long rows, long cols, const float *x, long tokens, float *y,
                       long row_begin, long row_end) {
    (void)w; (void)elem; (void)rows; (void)cols; (void)x; (void)tokens; (void)y; (void)row_begin; (void)row_end;
}
#endif
