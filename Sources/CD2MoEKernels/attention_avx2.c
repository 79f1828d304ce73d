// One attention head for one query, for AVX2+FMA machines: scores, softmax and the weighted sum of
// values in one pass over the cache. Compiled with per-function target attributes so the package
// needs no unsafe flags; callers dispatch on d2moe_cpu_features().
#include "CD2MoEKernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma")))

TARGET static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

// e^x for x <= 0 (softmax after subtracting the maximum): x = n·ln2 + r with |r| <= ln2/2, e^r by a
// degree-6 polynomial (relative error about 2e-7), 2^n put into the exponent. Inputs below -87 give
// e^-87 instead of a denormal or zero; after the maximum's 1 they do not change the sum.
TARGET static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

TARGET void d2moe_attend_avx2(const float *q, const float *keys, const float *values, long stride, long n, long d,
                              float scale, float *scores, float *out) {
    // Scores, four keys at a time so each horizontal sum is shared by four dot products' worth of work.
    long j = 0;
    for (; j + 4 <= n; j += 4) {
        const float *k0 = keys + j * stride, *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (long i = 0; i < d; i += 8) {
            __m256 qv = _mm256_loadu_ps(q + i);
            a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), a0);
            a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + i), a1);
            a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + i), a2);
            a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + i), a3);
        }
        // Transpose-and-add the four accumulators into one vector of four sums.
        __m256 s01 = _mm256_hadd_ps(a0, a1), s23 = _mm256_hadd_ps(a2, a3);
        __m256 s = _mm256_hadd_ps(s01, s23);
        __m128 sum4 = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        _mm_storeu_ps(scores + j, _mm_mul_ps(sum4, _mm_set1_ps(scale)));
    }
    for (; j < n; j++) {
        const float *k = keys + j * stride;
        __m256 a = _mm256_setzero_ps();
        for (long i = 0; i < d; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a);
        scores[j] = hsum8(a) * scale;
    }
    // Softmax.
    float m = scores[0];
    for (j = 1; j < n; j++) m = scores[j] > m ? scores[j] : m;
    __m256 mv = _mm256_set1_ps(m), total = _mm256_setzero_ps();
    for (j = 0; j + 8 <= n; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), mv));
        _mm256_storeu_ps(scores + j, e);
        total = _mm256_add_ps(total, e);
    }
    float sum = hsum8(total);
    if (j < n) {
        float tail[8] = {0};
        long left = n - j;
        for (long t = 0; t < left; t++) tail[t] = scores[j + t] - m;
        for (long t = left; t < 8; t++) tail[t] = -1e30f;
        float e[8];
        _mm256_storeu_ps(e, exp8(_mm256_loadu_ps(tail)));
        for (long t = 0; t < left; t++) { scores[j + t] = e[t]; sum += e[t]; }
    }
    __m256 inv = _mm256_set1_ps(1.0f / sum);
    // The weighted sum of values, 64 outputs at a time held in registers across all keys.
    for (long c = 0; c < d; c += 64) {
        long w = d - c < 64 ? d - c : 64;
        __m256 acc[8];
        for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
        if (w == 64) {
            for (j = 0; j < n; j++) {
                const float *v = values + j * stride + c;
                __m256 p = _mm256_set1_ps(scores[j]);
                acc[0] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v), acc[0]);
                acc[1] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8), acc[1]);
                acc[2] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 16), acc[2]);
                acc[3] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 24), acc[3]);
                acc[4] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 32), acc[4]);
                acc[5] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 40), acc[5]);
                acc[6] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 48), acc[6]);
                acc[7] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 56), acc[7]);
            }
        } else {
            for (j = 0; j < n; j++) {
                const float *v = values + j * stride + c;
                __m256 p = _mm256_set1_ps(scores[j]);
                for (long r = 0; r < w / 8; r++) acc[r] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * r), acc[r]);
            }
        }
        for (long r = 0; r < w / 8; r++) _mm256_storeu_ps(out + c + 8 * r, _mm256_mul_ps(acc[r], inv));
    }
}

#else

void d2moe_attend_avx2(const float *q, const float *keys, const float *values, long stride, long n, long d,
                       float scale, float *scores, float *out) {
    (void)q; (void)keys; (void)values; (void)stride; (void)n; (void)d; (void)scale; (void)scores; (void)out;
}

#endif
