// Products of MWQ matrices with many tokens at once (prompts), for AVX2+FMA+F16C machines: each
// block of 32 rows is requantized to int16 once per call and multiplied with the int16 activations
// the table route also uses (d2moe_mwq_prepare_avx2's xq, |xq| <= 32767/g) by vpmaddwd, 16
// multiply-adds per instruction with no table to build or look up. The table route spends about 8
// instructions per bit-plane per 128 multiply-adds; here it is 2 per 16 whatever the bits, so the
// gain grows with the level (measured on 1536x576 and 576x1536 at 4 bits, 128 tokens, one core:
// 42-49 against 21-29 G multiply-adds/s). Requantizing costs about as much as a dozen tokens, so
// callers take this route only for long inputs (MWQKernels.prefersGemm).
//
// Weights, per row r and group j at the served level (MWQReference.gemmWeights is the plain
// version): Ŵ = s·q + m + Σ_k s_k·(±1) lies in [lo, hi], lo/hi = (m − Σ s_k) + the negative/positive
// parts of s·(2^b1 − 1) and of each 2·s_k; with B = max(|lo|, |hi|) and inv = D2MOE_MWQ_GEMM_RANGE/B
// (0 where B = 0), ws = B/D2MOE_MWQ_GEMM_RANGE and wq = C + Σ_p A_p·bit_p + Σ_k S_k·bit_k with the
// integer coefficients C = round(c·inv) (c = m − Σ s_k), A_p = round(s·inv·2^p), S_k = round(2·s_k·inv):
// each within (planes + 1)/2 of Ŵ·inv, which the range's margin below 32767 keeps inside int16, and
// one masked add per plane per 16 rows. A group's sum Σ wq·xq stays below g·32767·32767/g in
// magnitude: exact in int32.
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

// The 8 rows' int32 lanes of a and b (rows 0-7, 8-15) as 16 int16 lanes in row order, each the low
// 16 bits: a plane's coefficient can pass 32767 (s·inv reaches 2·range when the base spans the
// whole grid) while every sum of them lands inside int16, and the 16-bit adds wrap, so the
// coefficients are exact modulo 2^16 and the sums exact.
INLINE __m256i rows16(__m256i a, __m256i b) {
    const __m256i low = _mm256_set1_epi32(0xFFFF);
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(_mm256_and_si256(a, low), _mm256_and_si256(b, low)), 0xD8);
}

// Requantizes groups [j0, j0 + ng) of row block rb into w (per octet: ng·g/2 pairs of 32 bytes)
// and ws (per octet: ng × 8 row scales). Per half block of 16 rows (int16 lanes): the integer
// coefficients of each plane, then per column wq = C + Σ (bit set ? coefficient : 0).
TARGET static void requantize(const uint8_t *const *lv, int b1, int levels, long groups, int g, long rb, long j0,
                              long ng, int16_t *w, float *ws) {
    const int q = g / 4, planes = b1 + levels;
    const long base_tile = (long)b1 * 4 * g + 128, sign_tile = 4L * g + 64;
    const __m256 zero = _mm256_setzero_ps(), absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 range = _mm256_set1_ps(D2MOE_MWQ_GEMM_RANGE);
    for (long jj = 0; jj < ng; jj++) {
        const long tile = rb * groups + j0 + jj;
        const uint8_t *pl[D2MOE_MWQ_MAX_PLANES];  // plane i's Q quads of 16 bytes
        const uint8_t *bt = lv[0] + tile * base_tile;
        for (int p = 0; p < b1; p++) pl[p] = bt + p * q * 16;
        for (int k = 0; k < levels; k++) pl[b1 + k] = lv[1 + k] + tile * sign_tile;
        for (int h = 0; h < 2; h++) {
            __m256i coef[2][D2MOE_MWQ_MAX_PLANES + 1];  // per octet of the half: C, then each plane's
            for (int e = 0; e < 2; e++) {
                const int o = 2 * h + e;
                const __m256 s = half8(bt + b1 * q * 16 + 16 * o);
                __m256 cst = half8(bt + b1 * q * 16 + 64 + 16 * o);
                __m256 two_sk[D2MOE_MWQ_MAX_PLANES];
                for (int k = 0; k < levels; k++) {
                    const __m256 sk = half8(pl[b1 + k] + q * 16 + 16 * o);
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
                const __m256 inv = _mm256_and_ps(_mm256_div_ps(range, bound), _mm256_cmp_ps(bound, zero, _CMP_GT_OQ));
                _mm256_storeu_ps(ws + (o * ng + jj) * 8, _mm256_div_ps(bound, range));
                const __m256 sinv = _mm256_mul_ps(s, inv);
                coef[e][0] = _mm256_cvtps_epi32(_mm256_mul_ps(cst, inv));
                for (int p = 0; p < b1; p++) coef[e][1 + p] = _mm256_cvtps_epi32(_mm256_mul_ps(sinv, _mm256_set1_ps((float)(1 << p))));
                for (int k = 0; k < levels; k++) coef[e][1 + b1 + k] = _mm256_cvtps_epi32(_mm256_mul_ps(two_sk[k], inv));
            }
            __m256i c16[D2MOE_MWQ_MAX_PLANES + 1];
            for (int i = 0; i <= planes; i++) c16[i] = rows16(coef[0][i], coef[1][i]);
            int16_t *out0 = w + ((2 * h) * ng + jj) * (long)q * 32, *out1 = w + ((2 * h + 1) * ng + jj) * (long)q * 32;
            for (int c = 0; c < q; c++) {
                // Byte i of a plane's quad: row i in the low nibble, row 16 + i in the high one.
                __m256i v[D2MOE_MWQ_MAX_PLANES];
                for (int i = 0; i < planes; i++) v[i] = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(pl[i] + 16 * c)));
                __m256i wt[4];
                for (int t = 0; t < 4; t++) {
                    // Bit 4h + t to the sign, then spread: all ones where it is set.
                    const __m128i up = _mm_cvtsi32_si128(15 - (4 * h + t));
                    __m256i acc = c16[0];
                    for (int i = 0; i < planes; i++)
                        acc = _mm256_add_epi16(acc, _mm256_and_si256(_mm256_srai_epi16(_mm256_sll_epi16(v[i], up), 15), c16[1 + i]));
                    wt[t] = acc;
                }
                // Rows 0-3 | 8-11 and 4-7 | 12-15 with each row's two columns side by side.
                for (int pair = 0; pair < 2; pair++) {
                    const __m256i a = _mm256_unpacklo_epi16(wt[2 * pair], wt[2 * pair + 1]);
                    const __m256i b = _mm256_unpackhi_epi16(wt[2 * pair], wt[2 * pair + 1]);
                    _mm256_storeu_si256((__m256i *)(out0 + 32 * c + 16 * pair), _mm256_permute2x128_si256(a, b, 0x20));
                    _mm256_storeu_si256((__m256i *)(out1 + 32 * c + 16 * pair), _mm256_permute2x128_si256(a, b, 0x31));
                }
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

// Multiplies the requantized chunk in scratch (rows r0 … r0 + nrows − 1, nrows ≤ 32; groups
// [j0, j0 + ng) of g columns) with every token, two octets at a time.
TARGET static void multiply_chunk(const int16_t *scratch, const float *ws, const int16_t *xq, const float *xscale,
                                  long tokens, long rows, long cols, long groups, int g, long j0, long ng, long r0,
                                  long nrows, float *y) {
    const long octet = ng * (g / 4) * 32;  // int16 of one octet's scratch
    for (int o = 0; o < 4 && 8 * o < nrows; o += 2) {
        const int n0 = nrows - 8 * o < 8 ? (int)(nrows - 8 * o) : 8;
        const int n1 = nrows - 8 * o <= 8 ? 0 : nrows - 8 * o - 8 < 8 ? (int)(nrows - 8 * o - 8) : 8;
        const int16_t *w0 = scratch + o * octet, *w1 = w0 + octet;
        const float *ws0 = ws + o * ng * 8, *ws1 = ws0 + ng * 8;
        const long at = r0 + 8 * o;
        long t0 = 0;
        for (; t0 + RN <= tokens; t0 += RN)
            octets_tokens(w0, w1, ws0, ws1, xq, xscale, cols, groups, g, j0, ng, t0, y, rows, at, n0, n1, j0 == 0, RN);
        switch (tokens - t0) {
        case 1: octets_tokens(w0, w1, ws0, ws1, xq, xscale, cols, groups, g, j0, ng, t0, y, rows, at, n0, n1, j0 == 0, 1); break;
        case 2: octets_tokens(w0, w1, ws0, ws1, xq, xscale, cols, groups, g, j0, ng, t0, y, rows, at, n0, n1, j0 == 0, 2); break;
        default: break;
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
            const long nrows = rows - rb * 32 < 32 ? rows - rb * 32 : 32;
            multiply_chunk(w, ws, xq, xscale, tokens, rows, cols, groups, group, j0, ng, rb * 32, nrows, y);
        }
    }
}

// Q8_0 rows [r0, r0 + nrows) (nrows ≤ 32), groups [j0, j0 + ng) of 32 columns, into the scratch
// layout: exact, the int8 codes widened to int16 and each block's scale d as the row scale. Rows
// past nrows are zero.
TARGET static void q8_block(const uint8_t *w, long cols, long r0, long nrows, long j0, long ng, int16_t *out, float *ws) {
    const long row_bytes = cols / 32 * 34;
    for (int o = 0; o < 4; o++) {
        for (long jj = 0; jj < ng; jj++) {
            __m256i lo[8], hi[8];
            float d[8];
            for (int i = 0; i < 8; i++) {
                const long r = 8 * o + i;
                if (r < nrows) {
                    const uint8_t *b = w + (r0 + r) * row_bytes + (j0 + jj) * 34;
                    uint16_t h;
                    memcpy(&h, b, 2);
                    d[i] = _cvtsh_ss(h);
                    lo[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 2)));
                    hi[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 18)));
                } else {
                    d[i] = 0;
                    lo[i] = hi[i] = _mm256_setzero_si256();
                }
            }
            _mm256_storeu_ps(ws + (o * ng + jj) * 8, _mm256_loadu_ps(d));
            // Dword k of row i (columns 2k, 2k + 1) to dword i of pair k: an 8x8 transpose per half.
            int16_t *dst = out + (o * ng + jj) * 256;
            for (int half = 0; half < 2; half++) {
                const __m256i *r = half ? hi : lo;
                __m256i t[8], u[8];
                for (int i = 0; i < 8; i += 2) {
                    t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
                    t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
                }
                for (int i = 0; i < 8; i += 4) {
                    u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
                    u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
                    u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
                    u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
                }
                for (int k = 0; k < 4; k++) {
                    _mm256_storeu_si256((__m256i *)(dst + 16 * (8 * half + k)), _mm256_permute2x128_si256(u[k], u[4 + k], 0x20));
                    _mm256_storeu_si256((__m256i *)(dst + 16 * (8 * half + 4 + k)), _mm256_permute2x128_si256(u[k], u[4 + k], 0x31));
                }
            }
        }
    }
}

TARGET void d2moe_q8_gemm_avx2(const void *w, long rows, long cols, const int16_t *xq, const float *xscale, long tokens,
                               float *y, long row_begin, long row_end) {
    if (cols % 32 != 0) return;
    const long groups = cols / 32, per = CHUNK / 32;
    int16_t scratch[4 * CHUNK * 8] __attribute__((aligned(32)));
    float ws[4 * (CHUNK / 32) * 8];
    for (long r0 = row_begin; r0 < row_end; r0 += 32) {
        const long nrows = row_end - r0 < 32 ? row_end - r0 : 32;
        for (long j0 = 0; j0 < groups; j0 += per) {
            const long ng = groups - j0 < per ? groups - j0 : per;
            q8_block((const uint8_t *)w, cols, r0, nrows, j0, ng, scratch, ws);
            multiply_chunk(scratch, ws, xq, xscale, tokens, rows, cols, groups, 32, j0, ng, r0, nrows, y);
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
void d2moe_q8_gemm_avx2(const void *w, long rows, long cols, const int16_t *xq, const float *xscale, long tokens,
                        float *y, long row_begin, long row_end) {
    (void)w; (void)rows; (void)cols; (void)xq; (void)xscale; (void)tokens; (void)y; (void)row_begin; (void)row_end;
}
#endif
