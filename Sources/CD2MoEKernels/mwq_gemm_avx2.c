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
// token's two activations meets 8 rows in one vpmaddwd. Two octets times three tokens keep twelve
// accumulators in registers (measured 12-15% faster than one octet times four tokens).
#include "CD2MoEKernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define INLINE TARGET static inline __attribute__((always_inline))

enum { RN = 3, CHUNK = 512 };  // tokens whose accumulators are held together; columns per scratch fill

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

// Two octets of rows (16 rows, weights w0 and w1, scales ws0 and ws1) against NT tokens from t0
// over the ng groups in scratch: the n0 + n1 rows' sums (each n ≤ 8), continued from y unless this
// is the first chunk of columns, go to y. Two octets share each broadcast of a token's activations.
INLINE void octets_tokens(const int16_t *w0, const int16_t *w1, const float *ws0, const float *ws1, const int16_t *xq,
                          const float *xs, long cols, long groups, int g, long j0, long ng, long t0, float *y, long rows,
                          long r0, int n0, int n1, int first, const int NT) {
    const int q = g / 4;
    const int n[2] = {n0, n1};
    // A later chunk of columns continues each row's sum from y, so the sum runs in one order (the
    // portable path's) whatever the chunking.
    __m256 acc[2][RN];
    for (int t = 0; t < NT; t++)
        for (int o = 0; o < 2; o++) {
            const float *yt = y + (t0 + t) * rows + r0 + 8 * o;
            if (first || n[o] <= 0) {
                acc[o][t] = _mm256_setzero_ps();
            } else if (n[o] == 8) {
                acc[o][t] = _mm256_loadu_ps(yt);
            } else {
                float v[8] __attribute__((aligned(32))) = {0};
                for (int i = 0; i < n[o]; i++) v[i] = yt[i];
                acc[o][t] = _mm256_load_ps(v);
            }
        }
    for (long jj = 0; jj < ng; jj++) {
        __m256i sum[2][RN];
        for (int t = 0; t < NT; t++) sum[0][t] = sum[1][t] = _mm256_setzero_si256();
        const int16_t *wa = w0 + jj * q * 32, *wb = w1 + jj * q * 32, *xj = xq + t0 * cols + (j0 + jj) * g;
        for (int c = 0; c < 2 * q; c++) {
            const __m256i va = _mm256_load_si256((const __m256i *)(wa + 16 * c)), vb = _mm256_load_si256((const __m256i *)(wb + 16 * c));
            for (int t = 0; t < NT; t++) {
                int32_t two;
                memcpy(&two, xj + t * cols + 2 * c, 4);
                const __m256i xv = _mm256_set1_epi32(two);
                sum[0][t] = _mm256_add_epi32(sum[0][t], _mm256_madd_epi16(va, xv));
                sum[1][t] = _mm256_add_epi32(sum[1][t], _mm256_madd_epi16(vb, xv));
            }
        }
        const __m256 wsa = _mm256_loadu_ps(ws0 + jj * 8), wsb = _mm256_loadu_ps(ws1 + jj * 8);
        for (int t = 0; t < NT; t++) {
            const __m256 xsv = _mm256_set1_ps(xs[(t0 + t) * groups + j0 + jj]);
            acc[0][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[0][t]), _mm256_mul_ps(wsa, xsv), acc[0][t]);
            acc[1][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[1][t]), _mm256_mul_ps(wsb, xsv), acc[1][t]);
        }
    }
    for (int t = 0; t < NT; t++)
        for (int o = 0; o < 2; o++) {
            float *yt = y + (t0 + t) * rows + r0 + 8 * o;
            if (n[o] == 8) {
                _mm256_storeu_ps(yt, acc[o][t]);
            } else if (n[o] > 0) {
                float v[8] __attribute__((aligned(32)));
                _mm256_store_ps(v, acc[o][t]);
                for (int i = 0; i < n[o]; i++) yt[i] = v[i];
            }
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
            for (int o = 0; o < 4; o += 2) {
                const long r0 = rb * 32 + 8 * o;
                if (r0 >= rows) break;
                const int n0 = rows - r0 < 8 ? (int)(rows - r0) : 8;
                const int n1 = rows - r0 <= 8 ? 0 : rows - r0 - 8 < 8 ? (int)(rows - r0 - 8) : 8;
                const int16_t *w0 = w + o * ng * (group / 4) * 32, *w1 = w0 + ng * (group / 4) * 32;
                const float *ws0 = ws + o * ng * 8, *ws1 = ws0 + ng * 8;
                long t0 = 0;
                for (; t0 + RN <= tokens; t0 += RN)
                    octets_tokens(w0, w1, ws0, ws1, xq, xscale, cols, groups, group, j0, ng, t0, y, rows, r0, n0, n1, j0 == 0, RN);
                switch (tokens - t0) {
                case 1: octets_tokens(w0, w1, ws0, ws1, xq, xscale, cols, groups, group, j0, ng, t0, y, rows, r0, n0, n1, j0 == 0, 1); break;
                case 2: octets_tokens(w0, w1, ws0, ws1, xq, xscale, cols, groups, group, j0, ng, t0, y, rows, r0, n0, n1, j0 == 0, 2); break;
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
