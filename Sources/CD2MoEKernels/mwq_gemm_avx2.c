// Products of MWQ matrices with many tokens at once (prompts), for AVX2+FMA+F16C machines: each
// block of 32 rows is requantized to int16 once per call and multiplied with the int16 activations
// the table route also uses (d2moe_mwq_prepare_avx2's xq, |xq| <= 32767/g) by vpmaddwd, 16
// multiply-adds per instruction with no table to build or look up. The table route spends about 8
// instructions per bit-plane per 128 multiply-adds; here it is 2 per 16 whatever the bits, so the
// gain grows with the level (measured on 576x1536 and 1536x576 at 4 bits, 128 tokens, one core:
// 35-40 against 21-29 G multiply-adds/s). Requantizing costs about as much as a few dozen tokens,
// so callers take this route only for long inputs (MWQKernels.gemmMinTokens).
//
// Weights, per row r and group j at the served level (MWQReference.gemmWeights is the plain
// version): Ŵ = s·q + m + Σ_k s_k·(±1) lies in [lo, hi], lo/hi = (m − Σ s_k) + the negative/positive
// parts of s·(2^b1 − 1) and of each 2·s_k; with B = max(|lo|, |hi|), ws = B/32767 and
// wq = round(Ŵ·32767/B) (0 where B = 0), Ŵ evaluated as c·inv + Σ (s·inv·2^p)·bit_p + Σ (2·s_k·inv)·bit_k
// in that order. A group's sum Σ wq·xq stays below g·32767·32767/g in magnitude: exact in int32.
// y[t, r] = Σ_j (ws[r, j]·xs[t, j])·Σ_{c in j} wq·xq, accumulated over j by fused multiply-add.
//
// Scratch per row block, 512 columns at a time on the stack: for each of its four octets of 8
// rows, per pair of columns, 32 bytes — row i's two weights at 4·i — so that one broadcast of a
// token's two activations meets 8 rows in one vpmaddwd.
#include "CD2MoEKernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define INLINE TARGET static inline __attribute__((always_inline))

enum { RN = 4, CHUNK = 512 };  // tokens whose accumulators are held together; columns per scratch fill

INLINE __m256 half8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

// Requantizes groups [j0, j0 + ng) of row block rb into w (per octet: ng·g/2 pairs of 32 bytes)
// and ws (per octet: ng × 8 row scales).
TARGET static void requantize(const uint8_t *const *lv, int b1, int levels, long groups, int g, long rb, long j0,
                              long ng, int16_t *w, float *ws) {
    const int q = g / 4;
    const long base_tile = (long)b1 * 4 * g + 128, sign_tile = 4L * g + 64;
    const __m256i low = _mm256_set1_epi32(0xFFFF);
    const __m256 zero = _mm256_setzero_ps(), absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (long jj = 0; jj < ng; jj++) {
        const long tile = rb * groups + j0 + jj;
        const uint8_t *bt = lv[0] + tile * base_tile;
        const uint8_t *st[D2MOE_MWQ_MAX_PLANES];
        for (int k = 0; k < levels; k++) st[k] = lv[1 + k] + tile * sign_tile;
        for (int o = 0; o < 4; o++) {
            __m256 s = half8(bt + b1 * q * 16 + 16 * o), cst = half8(bt + b1 * q * 16 + 64 + 16 * o);
            __m256 two_sk[D2MOE_MWQ_MAX_PLANES];
            for (int k = 0; k < levels; k++) {
                const __m256 sk = half8(st[k] + q * 16 + 16 * o);
                cst = _mm256_sub_ps(cst, sk);
                two_sk[k] = _mm256_add_ps(sk, sk);
            }
            const __m256 span = _mm256_mul_ps(s, _mm256_set1_ps((float)((1 << b1) - 1)));
            __m256 lo = _mm256_add_ps(cst, _mm256_min_ps(span, zero)), hi = _mm256_add_ps(cst, _mm256_max_ps(span, zero));
            for (int k = 0; k < levels; k++) {
                lo = _mm256_add_ps(lo, _mm256_min_ps(two_sk[k], zero));
                hi = _mm256_add_ps(hi, _mm256_max_ps(two_sk[k], zero));
            }
            const __m256 bound = _mm256_max_ps(_mm256_and_ps(lo, absmask), _mm256_and_ps(hi, absmask));
            const __m256 inv = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(32767.0f), bound), _mm256_cmp_ps(bound, zero, _CMP_GT_OQ));
            _mm256_storeu_ps(ws + (o * ng + jj) * 8, _mm256_div_ps(bound, _mm256_set1_ps(32767.0f)));
            // Bit t of a nibble, as 0 or 2^t, scaled by 2^-t: the coefficients of each plane and column.
            __m256 cb[4][8], cs[4][D2MOE_MWQ_MAX_PLANES];
            for (int t = 0; t < 4; t++) {
                const __m256 down = _mm256_set1_ps(1.0f / (float)(1 << t));
                for (int p = 0; p < b1; p++) cb[t][p] = _mm256_mul_ps(_mm256_mul_ps(s, inv), _mm256_mul_ps(down, _mm256_set1_ps((float)(1 << p))));
                for (int k = 0; k < levels; k++) cs[t][k] = _mm256_mul_ps(_mm256_mul_ps(two_sk[k], inv), down);
            }
            const __m256 c0 = _mm256_mul_ps(cst, inv);
            // Octet o is the low (o < 2) or high nibbles of bytes 8·(o & 1) … + 7 of each quad.
            const int byte0 = 8 * (o & 1), shift = 4 * (o >> 1);
            int16_t *out = w + (o * ng + jj) * (long)q * 32;
            for (int c = 0; c < q; c++) {
                __m256i nib[D2MOE_MWQ_MAX_PLANES];
                for (int p = 0; p < b1; p++)
                    nib[p] = _mm256_srli_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(bt + (p * q + c) * 16 + byte0))), shift);
                for (int k = 0; k < levels; k++)
                    nib[b1 + k] = _mm256_srli_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(st[k] + c * 16 + byte0))), shift);
                __m256i wi[4];
                for (int t = 0; t < 4; t++) {
                    const __m256i bit = _mm256_set1_epi32(1 << t);
                    __m256 v = c0;
                    for (int p = 0; p < b1; p++) v = _mm256_fmadd_ps(cb[t][p], _mm256_cvtepi32_ps(_mm256_and_si256(nib[p], bit)), v);
                    for (int k = 0; k < levels; k++) v = _mm256_fmadd_ps(cs[t][k], _mm256_cvtepi32_ps(_mm256_and_si256(nib[b1 + k], bit)), v);
                    wi[t] = _mm256_cvtps_epi32(v);
                }
                // Columns 4c, 4c + 1 of the 8 rows, then 4c + 2, 4c + 3: row i's pair in dword i.
                _mm256_storeu_si256((__m256i *)(out + 32 * c), _mm256_or_si256(_mm256_and_si256(wi[0], low), _mm256_slli_epi32(wi[1], 16)));
                _mm256_storeu_si256((__m256i *)(out + 32 * c + 16), _mm256_or_si256(_mm256_and_si256(wi[2], low), _mm256_slli_epi32(wi[3], 16)));
            }
        }
    }
}

// One octet of rows against NT tokens from t0 over the ng groups in scratch: the n (≤ 8) rows' sums,
// continued from y unless this is the first chunk of columns, go to y.
INLINE void octet_tokens(const int16_t *w, const float *ws, const int16_t *xq, const float *xs, long cols, long groups,
                         int g, long j0, long ng, long t0, float *y, long rows, long r0, int n, int first, const int NT) {
    const int q = g / 4;
    // A later chunk of columns continues each row's sum from y, so the sum runs in one order (the
    // portable path's) whatever the chunking.
    __m256 acc[RN];
    for (int t = 0; t < NT; t++) {
        float v[8] __attribute__((aligned(32))) = {0};
        if (!first) memcpy(v, y + (t0 + t) * rows + r0, (size_t)n * sizeof(float));
        acc[t] = _mm256_load_ps(v);
    }
    for (long jj = 0; jj < ng; jj++) {
        __m256i sum[RN];
        for (int t = 0; t < NT; t++) sum[t] = _mm256_setzero_si256();
        const int16_t *wj = w + jj * q * 32, *xj = xq + t0 * cols + (j0 + jj) * g;
        for (int c = 0; c < 2 * q; c++) {
            const __m256i wv = _mm256_loadu_si256((const __m256i *)(wj + 16 * c));
            for (int t = 0; t < NT; t++) {
                int32_t two;
                memcpy(&two, xj + t * cols + 2 * c, 4);
                sum[t] = _mm256_add_epi32(sum[t], _mm256_madd_epi16(wv, _mm256_set1_epi32(two)));
            }
        }
        const __m256 wsv = _mm256_loadu_ps(ws + jj * 8);
        for (int t = 0; t < NT; t++) {
            const __m256 scale = _mm256_mul_ps(wsv, _mm256_set1_ps(xs[(t0 + t) * groups + j0 + jj]));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[t]), scale, acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) {
        float v[8] __attribute__((aligned(32)));
        _mm256_store_ps(v, acc[t]);
        memcpy(y + (t0 + t) * rows + r0, v, (size_t)n * sizeof(float));
    }
}

TARGET void d2moe_mwq_gemm_avx2(const int16_t *xq, const float *xscale, long tokens, long rows, long cols, int group,
                                const uint8_t *const *levels, int base_bits, int sign_levels, long block_begin,
                                long block_end, float *y) {
    if (sign_levels < 0 || base_bits < 1 || base_bits > 8 || base_bits + sign_levels > D2MOE_MWQ_MAX_PLANES || group < 32 ||
        group > 256 || group % 32 != 0 || cols % group != 0)
        return;
    const long groups = cols / group, per = CHUNK / group;
    int16_t w[4 * CHUNK * 8] __attribute__((aligned(32)));
    float ws[4 * (CHUNK / 32) * 8];
    for (long rb = block_begin; rb < block_end; rb++) {
        for (long j0 = 0; j0 < groups; j0 += per) {
            const long ng = groups - j0 < per ? groups - j0 : per;
            requantize(levels, base_bits, sign_levels, groups, group, rb, j0, ng, w, ws);
            for (int o = 0; o < 4; o++) {
                const long r0 = rb * 32 + 8 * o;
                if (r0 >= rows) break;
                const int n = rows - r0 < 8 ? (int)(rows - r0) : 8;
                const int16_t *wo = w + o * ng * (group / 4) * 32;
                const float *wso = ws + o * ng * 8;
                long t0 = 0;
                for (; t0 + RN <= tokens; t0 += RN) octet_tokens(wo, wso, xq, xscale, cols, groups, group, j0, ng, t0, y, rows, r0, n, j0 == 0, RN);
                switch (tokens - t0) {
                case 1: octet_tokens(wo, wso, xq, xscale, cols, groups, group, j0, ng, t0, y, rows, r0, n, j0 == 0, 1); break;
                case 2: octet_tokens(wo, wso, xq, xscale, cols, groups, group, j0, ng, t0, y, rows, r0, n, j0 == 0, 2); break;
                case 3: octet_tokens(wo, wso, xq, xscale, cols, groups, group, j0, ng, t0, y, rows, r0, n, j0 == 0, 3); break;
                default: break;
                }
            }
        }
    }
}
#else
void d2moe_mwq_gemm_avx2(const int16_t *xq, const float *xscale, long tokens, long rows, long cols, int group,
                         const uint8_t *const *levels, int base_bits, int sign_levels, long block_begin, long block_end,
                         float *y) {
    (void)xq; (void)xscale; (void)tokens; (void)rows; (void)cols; (void)group; (void)levels; (void)base_bits;
    (void)sign_levels; (void)block_begin; (void)block_end; (void)y;
}
#endif
