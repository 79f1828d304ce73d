// Products with MWQ (Matryoshka weight quantization) matrices computed on the packed bit-planes,
// for AVX2+FMA+F16C machines. No weight is ever dequantized: for each group of g columns and each
// plane we form the masked sum S = Σ_{bit set} x_c, and combine the sums with the group's scales
// (DESIGN §3.3):
//   base (b1 planes):  s·Σ_p 2^p·S_p + m·X_j
//   sign level k:      s_k·(2·S_k − X_j)
// where X_j = Σ_{c in group j} x_c comes precomputed (xsum). Regrouped, a group contributes
//   Σ_i coef_i·S_i + (m − Σ_k s_k)·X_j,   coef = s·2^p for base plane p, 2·s_k for sign level k,
// which is what the code computes: one accumulator per plane in registers, the coefficients
// converted 8 groups at a time with F16C, the X_j term as one more vector FMA per 8 groups.
// Compiled with per-function target attributes (no unsafe flags); callers dispatch on
// d2moe_cpu_features().
#include "CD2MoEKernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define INLINE TARGET static inline __attribute__((always_inline))

enum {
    PASS = 8,        // planes per pass over a group (accumulators held in registers)
    GB = 8,          // groups whose scales are converted together
    TB = 8,          // tokens per block in the batched path
    MAX_PLANES = 8 + D2MOE_MWQ_MAX_SIGN_LEVELS,
    MAX_CHUNKS = 16, // 8-column chunks in the largest group (128)
};

// Lane i of chunk b (columns 8b..8b+7 of a 32-column word) tests bit 8b+i: shifting the
// broadcast word left by 31-8b-i puts that bit in the lane's sign bit.
static const int32_t kShift[4][8] __attribute__((aligned(32))) = {
    {31, 30, 29, 28, 27, 26, 25, 24},
    {23, 22, 21, 20, 19, 18, 17, 16},
    {15, 14, 13, 12, 11, 10, 9, 8},
    {7, 6, 5, 4, 3, 2, 1, 0},
};

typedef struct {
    const float *x, *xsum;
    long tokens, rows, cols, groups;
    int g, n32, b1, levels;  // levels: sign levels used
    const uint32_t *bp;
    const uint16_t *bs;
    const uint32_t *const *sp;
    const uint16_t *const *ss;
    float *y;
} Args;

INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

// All-ones lanes where the lane's bit is set (sign bit moved to every bit).
INLINE __m256 lane_mask(__m256i word, __m256i shift) {
    return _mm256_castsi256_ps(_mm256_srai_epi32(_mm256_sllv_epi32(word, shift), 31));
}

// x lanes where the lane's bit of `word` is set, 0 elsewhere.
INLINE __m256 select_x(__m256 x, __m256i word, __m256i shift) {
    return _mm256_blendv_ps(_mm256_setzero_ps(), x, _mm256_castsi256_ps(_mm256_sllv_epi32(word, shift)));
}

// Scales of row r, groups j0..j0+nb-1 (nb ≤ 8), as floats: coef[i*8 + jj] is plane i's coefficient
// for group j0+jj (s·2^p for base planes, 2·s_k for sign levels), cst the groups' X coefficient
// m − Σ_k s_k. Lanes past nb are 0.
TARGET static void load_scales(const Args *a, long r, long j0, int nb, float *coef, __m256 *cst) {
    const uint16_t *bs = a->bs + 2 * (r * a->groups + j0);
    __m128i h0, h1;
    if (nb == GB) {
        h0 = _mm_loadu_si128((const __m128i *)bs);
        h1 = _mm_loadu_si128((const __m128i *)(bs + 8));
    } else {
        uint16_t tmp[16] = {0};
        memcpy(tmp, bs, (size_t)nb * 2 * sizeof(uint16_t));
        h0 = _mm_loadu_si128((const __m128i *)tmp);
        h1 = _mm_loadu_si128((const __m128i *)(tmp + 8));
    }
    __m256 lo = _mm256_cvtph_ps(h0), hi = _mm256_cvtph_ps(h1);  // s0 m0 s1 m1 ... | s4 m4 ...
    // Deinterleave: shuffle gives s0 s1 s4 s5 | s2 s3 s6 s7, the 64-bit permute restores the order.
    __m256 s = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8));
    __m256 m = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8));
    __m256 p2 = s;
    for (int p = 0; p < a->b1; p++) {
        _mm256_storeu_ps(coef + p * GB, p2);
        p2 = _mm256_add_ps(p2, p2);
    }
    __m256 c = m;
    for (int k = 0; k < a->levels; k++) {
        const uint16_t *sk = a->ss[k] + r * a->groups + j0;
        __m128i h;
        if (nb == GB) {
            h = _mm_loadu_si128((const __m128i *)sk);
        } else {
            uint16_t tmp[8] = {0};
            memcpy(tmp, sk, (size_t)nb * sizeof(uint16_t));
            h = _mm_loadu_si128((const __m128i *)tmp);
        }
        __m256 v = _mm256_cvtph_ps(h);
        c = _mm256_sub_ps(c, v);
        _mm256_storeu_ps(coef + (a->b1 + k) * GB, _mm256_add_ps(v, v));
    }
    *cst = c;
}

// X_j for groups j0..j0+nb-1 of one token, lanes past nb 0.
INLINE __m256 load_xsum(const float *xs, int nb) {
    if (nb == GB) return _mm256_loadu_ps(xs);
    float tmp[8] = {0};
    memcpy(tmp, xs, (size_t)nb * sizeof(float));
    return _mm256_loadu_ps(tmp);
}

// Plane words of group gi, in coefficient order: base planes 0..b1-1, then sign levels.
INLINE void plane_words(const Args *a, long gi, const uint32_t **w) {
    const uint32_t *base = a->bp + gi * a->b1 * a->n32;
    for (int p = 0; p < a->b1; p++) w[p] = base + p * a->n32;
    for (int k = 0; k < a->levels; k++) w[a->b1 + k] = a->sp[k] + gi * a->n32;
}

// One token, rows r0..r1, all N ≤ PASS planes in one pass (N and n32 compile-time constants after
// inlining, so the accumulators live in registers). Each 8-float chunk of x is loaded once for all
// planes; a plane's word is broadcast once for its 4 chunks. Two accumulator sets (even and odd
// chunks) and two totals keep enough independent add chains in flight.
INLINE void rows_one_fast(const Args *a, long r0, long r1, const int N, const int n32) {
    const long G = a->groups;
    const int b1 = a->b1;
    float coef[MAX_PLANES * GB] __attribute__((aligned(32)));
    for (long r = r0; r < r1; r++) {
        const uint32_t *pw[PASS];
        long stride[PASS];
        for (int i = 0; i < N; i++) {
            if (i < b1) {
                pw[i] = a->bp + (r * G * b1 + i) * n32;
                stride[i] = (long)b1 * n32;
            } else {
                pw[i] = a->sp[i - b1] + r * G * n32;
                stride[i] = n32;
            }
        }
        __m256 tot0 = _mm256_setzero_ps(), tot1 = tot0, xterm = tot0;
        const float *xg = a->x;
        for (long j0 = 0; j0 < G; j0 += GB) {
            int nb = G - j0 < GB ? (int)(G - j0) : GB;
            __m256 cst;
            load_scales(a, r, j0, nb, coef, &cst);
            xterm = _mm256_fmadd_ps(cst, load_xsum(a->xsum + j0, nb), xterm);
            for (int jj = 0; jj < nb; jj++) {
                __m256 acc0[PASS], acc1[PASS];
                for (int i = 0; i < N; i++) acc0[i] = acc1[i] = _mm256_setzero_ps();
                for (int q = 0; q < n32; q++) {
                    __m256i word[PASS];
                    for (int i = 0; i < N; i++) word[i] = _mm256_set1_epi32((int)pw[i][q]);
                    for (int b = 0; b < 4; b += 2) {
                        __m256 x0 = _mm256_loadu_ps(xg + q * 32 + b * 8), x1 = _mm256_loadu_ps(xg + q * 32 + b * 8 + 8);
                        __m256i sh0 = _mm256_load_si256((const __m256i *)kShift[b]);
                        __m256i sh1 = _mm256_load_si256((const __m256i *)kShift[b + 1]);
                        for (int i = 0; i < N; i++) {
                            acc0[i] = _mm256_add_ps(acc0[i], select_x(x0, word[i], sh0));
                            acc1[i] = _mm256_add_ps(acc1[i], select_x(x1, word[i], sh1));
                        }
                    }
                }
                for (int i = 0; i < N; i++) {
                    __m256 c = _mm256_broadcast_ss(coef + i * GB + jj), s = _mm256_add_ps(acc0[i], acc1[i]);
                    if (i & 1) tot1 = _mm256_fmadd_ps(s, c, tot1);
                    else tot0 = _mm256_fmadd_ps(s, c, tot0);
                    pw[i] += stride[i];
                }
                xg += n32 * 32;
            }
        }
        a->y[r] = hsum(_mm256_add_ps(_mm256_add_ps(tot0, tot1), xterm));
    }
}

// One token, one group, planes w[0..N): tot += Σ_i coef[i*GB]·S_i. For more than PASS planes.
INLINE __m256 pass1(const uint32_t *const *w, int n32, const float *x, const float *coef, __m256 tot,
                    const int N) {
    __m256 acc[PASS];
    for (int i = 0; i < N; i++) acc[i] = _mm256_setzero_ps();
    for (int q = 0; q < n32; q++) {
        __m256i word[PASS];
        for (int i = 0; i < N; i++) word[i] = _mm256_set1_epi32((int)w[i][q]);
        for (int b = 0; b < 4; b++) {
            __m256 xv = _mm256_loadu_ps(x + q * 32 + b * 8);
            __m256i sh = _mm256_load_si256((const __m256i *)kShift[b]);
            for (int i = 0; i < N; i++) acc[i] = _mm256_add_ps(acc[i], select_x(xv, word[i], sh));
        }
    }
    for (int i = 0; i < N; i++) tot = _mm256_fmadd_ps(acc[i], _mm256_broadcast_ss(coef + i * GB), tot);
    return tot;
}

// The bits of planes w[0..N) of one group as 0.0/1.0 lanes: mk[i*MAX_CHUNKS + chunk]. Multiplied
// into x with an FMA they cost one instruction per plane, chunk and token (an AND and an add take
// two, and on Zen 3 run no faster).
INLINE void build_masks(const uint32_t *const *w, int n32, __m256 *mk, const int N) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int q = 0; q < n32; q++) {
        for (int i = 0; i < N; i++) {
            __m256i word = _mm256_set1_epi32((int)w[i][q]);
            for (int b = 0; b < 4; b++)
                mk[i * MAX_CHUNKS + q * 4 + b] =
                    _mm256_and_ps(lane_mask(word, _mm256_load_si256((const __m256i *)kShift[b])), one);
        }
    }
}

// One token with prebuilt masks: tot += Σ_i coef[i*GB]·S_i.
INLINE __m256 pass_masked(const __m256 *mk, int chunks, const float *x, const float *coef, __m256 tot,
                          const int N) {
    __m256 acc[PASS];
    for (int i = 0; i < N; i++) acc[i] = _mm256_setzero_ps();
    for (int c = 0; c < chunks; c++) {
        __m256 xv = _mm256_loadu_ps(x + c * 8);
        for (int i = 0; i < N; i++) acc[i] = _mm256_fmadd_ps(xv, mk[i * MAX_CHUNKS + c], acc[i]);
    }
    for (int i = 0; i < N; i++) tot = _mm256_fmadd_ps(acc[i], _mm256_broadcast_ss(coef + i * GB), tot);
    return tot;
}

// Two tokens with prebuilt masks, each mask load serving both (N ≤ 6: 2N accumulators; for N ≤ 3
// even and odd chunks get their own, so that enough FMA chains are in flight).
INLINE void pass_masked2(const __m256 *mk, int chunks, const float *x, const float *x2, const float *coef,
                         __m256 *tot, __m256 *tot2, const int N) {
    const int S = N <= 3 ? 2 : 1;
    __m256 acc[2][6], acc2[2][6];
    for (int k = 0; k < S; k++)
        for (int i = 0; i < N; i++) acc[k][i] = acc2[k][i] = _mm256_setzero_ps();
    for (int c = 0; c < chunks; c += S) {
        for (int k = 0; k < S; k++) {
            __m256 xv = _mm256_loadu_ps(x + (c + k) * 8), xw = _mm256_loadu_ps(x2 + (c + k) * 8);
            for (int i = 0; i < N; i++) {
                __m256 m = mk[i * MAX_CHUNKS + c + k];
                acc[k][i] = _mm256_fmadd_ps(xv, m, acc[k][i]);
                acc2[k][i] = _mm256_fmadd_ps(xw, m, acc2[k][i]);
            }
        }
    }
    __m256 t = *tot, t2 = *tot2;
    for (int i = 0; i < N; i++) {
        __m256 cf = _mm256_broadcast_ss(coef + i * GB);
        __m256 a = S == 2 ? _mm256_add_ps(acc[0][i], acc[1][i]) : acc[0][i];
        __m256 a2 = S == 2 ? _mm256_add_ps(acc2[0][i], acc2[1][i]) : acc2[0][i];
        t = _mm256_fmadd_ps(a, cf, t);
        t2 = _mm256_fmadd_ps(a2, cf, t2);
    }
    *tot = t;
    *tot2 = t2;
}

#define SWITCH8(n, CASE) \
    switch (n) { \
    case 1: CASE(1); break; case 2: CASE(2); break; case 3: CASE(3); break; case 4: CASE(4); break; \
    case 5: CASE(5); break; case 6: CASE(6); break; case 7: CASE(7); break; default: CASE(8); break; \
    }

// One token, any number of planes: passes of up to PASS planes per group.
TARGET static void rows_one_general(const Args *a, long r0, long r1) {
    const long G = a->groups;
    const int planes = a->b1 + a->levels;
    float coef[MAX_PLANES * GB] __attribute__((aligned(32)));
    const uint32_t *w[MAX_PLANES];
    for (long r = r0; r < r1; r++) {
        __m256 tot = _mm256_setzero_ps(), xterm = _mm256_setzero_ps();
        for (long j0 = 0; j0 < G; j0 += GB) {
            int nb = G - j0 < GB ? (int)(G - j0) : GB;
            __m256 cst;
            load_scales(a, r, j0, nb, coef, &cst);
            xterm = _mm256_fmadd_ps(cst, load_xsum(a->xsum + j0, nb), xterm);
            for (int jj = 0; jj < nb; jj++) {
                long j = j0 + jj;
                plane_words(a, r * G + j, w);
                const float *xg = a->x + j * a->g;
                for (int i0 = 0; i0 < planes; i0 += PASS) {
                    int n = planes - i0;
#define P1(N) tot = pass1(w + i0, a->n32, xg, coef + i0 * GB + jj, tot, N)
                    SWITCH8(n, P1)
#undef P1
                }
            }
        }
        a->y[r] = hsum(_mm256_add_ps(tot, xterm));
    }
}

TARGET static void rows_one_token(const Args *a, long r0, long r1) {
    int planes = a->b1 + a->levels;
    if (planes > PASS) {
        rows_one_general(a, r0, r1);
        return;
    }
#define R1(N) \
    switch (a->n32) { \
    case 1: rows_one_fast(a, r0, r1, N, 1); break; \
    case 2: rows_one_fast(a, r0, r1, N, 2); break; \
    default: rows_one_fast(a, r0, r1, N, 4); break; \
    }
    SWITCH8(planes, R1)
#undef R1
}

// Several tokens: per row and block of up to TB tokens, each group's plane words become 0/1 lane
// multipliers once and serve every token of the block (the row's words stay in L1 across blocks).
TARGET static void rows_tokens(const Args *a, long r0, long r1) {
    const long G = a->groups, cols = a->cols;
    const int planes = a->b1 + a->levels, chunks = a->g / 8;
    float coef[MAX_PLANES * GB] __attribute__((aligned(32)));
    __m256 mk[PASS * MAX_CHUNKS];
    __m256 tot[TB], xterm[TB];
    const uint32_t *w[MAX_PLANES];
    for (long r = r0; r < r1; r++) {
        for (long t0 = 0; t0 < a->tokens; t0 += TB) {
            int nt = a->tokens - t0 < TB ? (int)(a->tokens - t0) : TB;
            for (int t = 0; t < nt; t++) tot[t] = xterm[t] = _mm256_setzero_ps();
            for (long j0 = 0; j0 < G; j0 += GB) {
                int nb = G - j0 < GB ? (int)(G - j0) : GB;
                __m256 cst;
                load_scales(a, r, j0, nb, coef, &cst);
                for (int t = 0; t < nt; t++)
                    xterm[t] = _mm256_fmadd_ps(cst, load_xsum(a->xsum + (t0 + t) * G + j0, nb), xterm[t]);
                for (int jj = 0; jj < nb; jj++) {
                    long j = j0 + jj;
                    plane_words(a, r * G + j, w);
                    const float *xg = a->x + t0 * cols + j * a->g;
                    for (int i0 = 0; i0 < planes; i0 += PASS) {
                        int n = planes - i0;
                        const float *cf = coef + i0 * GB + jj;
#define BM(N) build_masks(w + i0, a->n32, mk, N)
                        SWITCH8(n, BM)
#undef BM
                        if (n <= 6) {
                            int t = 0;
#define PM2(N) for (; t + 2 <= nt; t += 2) \
                   pass_masked2(mk, chunks, xg + t * cols, xg + (t + 1) * cols, cf, &tot[t], &tot[t + 1], N)
                            switch (n) {
                            case 1: PM2(1); break; case 2: PM2(2); break; case 3: PM2(3); break;
                            case 4: PM2(4); break; case 5: PM2(5); break; default: PM2(6); break;
                            }
#undef PM2
#define PM(N) tot[t] = pass_masked(mk, chunks, xg + t * cols, cf, tot[t], N)
                            if (t < nt) SWITCH8(n, PM)
                        } else {
                            for (int t = 0; t < nt; t++) SWITCH8(n, PM)
#undef PM
                        }
                    }
                }
            }
            for (int t = 0; t < nt; t++) a->y[(t0 + t) * a->rows + r] = hsum(_mm256_add_ps(tot[t], xterm[t]));
        }
    }
}

void d2moe_mwq_matmul_avx2(const float *x, const float *xsum, long tokens, long rows, long cols, int group,
                           const uint32_t *base_planes, const uint16_t *base_scales, int base_bits,
                           const uint32_t *const *sign_planes, const uint16_t *const *sign_scales,
                           int sign_levels, long row_begin, long row_end, float *y) {
    if (sign_levels < 0 || sign_levels > D2MOE_MWQ_MAX_SIGN_LEVELS || base_bits < 1 || base_bits > 8 ||
        group < 32 || group > 128 || group % 32 != 0 || cols % group != 0)
        return;
    Args a = {
        .x = x, .xsum = xsum, .tokens = tokens, .rows = rows, .cols = cols, .groups = cols / group,
        .g = group, .n32 = group / 32, .b1 = base_bits, .levels = sign_levels,
        .bp = base_planes, .bs = base_scales, .sp = sign_planes, .ss = sign_scales, .y = y,
    };
    if (tokens == 1) rows_one_token(&a, row_begin, row_end);
    else rows_tokens(&a, row_begin, row_end);
}
#else
void d2moe_mwq_matmul_avx2(const float *x, const float *xsum, long tokens, long rows, long cols, int group,
                           const uint32_t *base_planes, const uint16_t *base_scales, int base_bits,
                           const uint32_t *const *sign_planes, const uint16_t *const *sign_scales,
                           int sign_levels, long row_begin, long row_end, float *y) {
    (void)x; (void)xsum; (void)tokens; (void)rows; (void)cols; (void)group; (void)base_planes;
    (void)base_scales; (void)base_bits; (void)sign_planes; (void)sign_scales; (void)sign_levels;
    (void)row_begin; (void)row_end; (void)y;
}
#endif
