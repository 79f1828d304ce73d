// Products with MWQ (Matryoshka weight quantization) matrices computed on the packed bit-planes,
// for AVX2+FMA+F16C machines, by table lookup (the T-MAC idea, DESIGN §3.3):
//
// Activations are quantized per group to integers xq in [-R, R], R = 32767/g (scale amax/R). For every
// 4 consecutive columns (a "quad") a 16-entry table holds v[e] = Σ_{bit i of e} xq[4c + i] as
// int16, split into a low-byte and a high-byte table of 16 bytes each. A plane of a tile holds,
// per quad, 16 bytes whose nibbles are the plane's bits of 32 rows at those 4 columns; one
// pshufb per byte table looks up 32 rows at once, so a plane's masked sums
// S = Σ_{bit set} xq for 32 rows cost about 6 instructions per 4 columns. Per group j:
//   base (b1 planes):  s·Σ_p 2^p·S_p + m·X_j
//   sign level k:      s_k·(2·S_k − X_j)
// all times the activation scale, with X_j = Σ xq over the group. The int16 sums cannot
// overflow: |v| ≤ 4·R and a group has g/4 quads (g·R ≤ 32767).
//
// Tile layout (see MWQMatrixView): rows in blocks of 32 (the last block zero-padded), tile
// (block, group) of level 1 = b1 planes × Q quads × 16 bytes, then float16 s[32], m[32]; tile of
// a sign level = Q × 16 bytes, then float16 s_k[32]. In a quad's 16 bytes, byte i's low nibble is
// row i of the block, its high nibble row 16 + i; nibble bit t is column 4c + t.
//
// Compiled with per-function target attributes (no unsafe flags); callers dispatch on
// d2moe_cpu_features().
#include "CD2MoEKernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define INLINE TARGET static inline __attribute__((always_inline))

enum { TB = 4 };  // tokens whose accumulators are held together

typedef struct {
    const uint8_t *lut;
    const float *xscale;
    const int32_t *xsum;
    long tokens, rows, cols, groups, lut_stride, rows_blocks;  // lut_stride: bytes of one token's tables
    int g, q, b1, levels;
    long base_tile, sign_tile;
    const uint8_t *const *lv;
    float *y;
} Args;

// The 32 rows of a float16 vector at p as four float vectors (rows 0-7, 8-15, 16-23, 24-31).
INLINE void load_halves(const uint8_t *p, __m256 *v) {
    for (int i = 0; i < 4; i++) v[i] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16 * i)));
}

// int16 sums of 32 rows, as accumulated (a: rows 0-7 | 16-23, b: rows 8-15 | 24-31), as four
// int32 vectors in row order.
INLINE void widen(__m256i a, __m256i b, __m256i *r) {
    r[0] = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a));
    r[1] = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(b));
    r[2] = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a, 1));
    r[3] = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(b, 1));
}

// Masked sums of one plane (Q quads at `planes`) for NT tokens whose tables for this group start
// at lut + t·lut_stride.
INLINE void plane_sums(const uint8_t *planes, const uint8_t *lut, long lut_stride, int q, __m256i (*acc)[2],
                       const int NT) {
    const __m256i low = _mm256_set1_epi8(0x0F);
    for (int t = 0; t < NT; t++) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
    for (int c = 0; c < q; c++) {
        __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(planes + 16 * c)));
        __m256i idx = _mm256_and_si256(_mm256_blend_epi32(v, _mm256_srli_epi16(v, 4), 0xF0), low);
        for (int t = 0; t < NT; t++) {
            const uint8_t *l = lut + t * lut_stride + 32 * c;
            __m256i tl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)l));
            __m256i th = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(l + 16)));
            __m256i lo = _mm256_shuffle_epi8(tl, idx), hi = _mm256_shuffle_epi8(th, idx);
            acc[t][0] = _mm256_add_epi16(acc[t][0], _mm256_unpacklo_epi8(lo, hi));
            acc[t][1] = _mm256_add_epi16(acc[t][1], _mm256_unpackhi_epi8(lo, hi));
        }
    }
}

// Masked sums of P planes for one token, quads outer: each quad's two tables are loaded once for
// all P planes (at batch 1 the table loads would otherwise match the plane loads one for one).
INLINE void plane_pass1(const uint8_t *const *pl, const uint8_t *lut, int q, __m256i (*acc)[2], const int P) {
    const __m256i low = _mm256_set1_epi8(0x0F);
    for (int i = 0; i < P; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    for (int c = 0; c < q; c++) {
        __m256i tl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lut + 32 * c)));
        __m256i th = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lut + 32 * c + 16)));
        for (int i = 0; i < P; i++) {
            __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(pl[i] + 16 * c)));
            __m256i idx = _mm256_and_si256(_mm256_blend_epi32(v, _mm256_srli_epi16(v, 4), 0xF0), low);
            __m256i lo = _mm256_shuffle_epi8(tl, idx), hi = _mm256_shuffle_epi8(th, idx);
            acc[i][0] = _mm256_add_epi16(acc[i][0], _mm256_unpacklo_epi8(lo, hi));
            acc[i][1] = _mm256_add_epi16(acc[i][1], _mm256_unpackhi_epi8(lo, hi));
        }
    }
}

enum { PASS = 4 };  // planes per pass at batch 1 (two accumulators each, in registers)

// Folds plane i's sums for token t into the group: base plane p adds its sums << p to bsum, sign
// level k adds 2·s_k·S to g.
INLINE void fold_plane(int i, int b1, __m256i a, __m256i b, __m256i *bsum, __m256 *g, const __m256 *two_sk) {
    __m256i w[4];
    widen(a, b, w);
    if (i < b1) {
        const __m128i shift = _mm_cvtsi32_si128(i);
        for (int r = 0; r < 4; r++) bsum[r] = _mm256_add_epi32(bsum[r], _mm256_sll_epi32(w[r], shift));
    } else {
        for (int r = 0; r < 4; r++) g[r] = _mm256_fmadd_ps(two_sk[r], _mm256_cvtepi32_ps(w[r]), g[r]);
    }
}

// Adds group j of row block rb to out[t][0..3] (32 rows) for tokens t0..t0+NT-1.
INLINE void group_tokens(const Args *a, long rb, long j, long t0, __m256 (*out)[4], const int NT) {
    const int q = a->q, b1 = a->b1, planes = a->b1 + a->levels;
    const long tile = rb * a->groups + j;
    const uint8_t *bt = a->lv[0] + tile * a->base_tile;
    const uint8_t *lut = a->lut + t0 * a->lut_stride + j * q * 32;
    // Plane i's bytes; the scales 2·s_k of sign planes (zero for base planes) and the X coefficient
    // m − Σ_k s_k of each row.
    const uint8_t *pl[D2MOE_MWQ_MAX_PLANES];
    __m256 two_sk[D2MOE_MWQ_MAX_PLANES][4], s[4], cst[4];
    const int np = planes;
    // The next tile of every level is a few hundred bytes on in the same streams: asking for it
    // now keeps memory busy while this one is computed (measured: batch-1 product at 4.5 bits from 60% to 78% of the read bandwidth).
    if (j + 1 < a->groups || rb + 1 < a->rows_blocks) {
        for (long off = 0; off < a->base_tile; off += 64) _mm_prefetch((const char *)(bt + a->base_tile + off), _MM_HINT_T0);
        for (int k = 0; k < a->levels; k++) {
            const uint8_t *next = a->lv[1 + k] + (tile + 1) * a->sign_tile;
            for (long off = 0; off < a->sign_tile; off += 64) _mm_prefetch((const char *)(next + off), _MM_HINT_T0);
        }
    }
    load_halves(bt + b1 * q * 16, s);
    load_halves(bt + b1 * q * 16 + 64, cst);
    for (int i = 0; i < np; i++) {
        if (i < b1) {
            pl[i] = bt + i * q * 16;
        } else {
            const uint8_t *st = a->lv[1 + i - b1] + tile * a->sign_tile;
            pl[i] = st;
            __m256 sk[4];
            load_halves(st + q * 16, sk);
            for (int r = 0; r < 4; r++) {
                cst[r] = _mm256_sub_ps(cst[r], sk[r]);
                two_sk[i][r] = _mm256_add_ps(sk[r], sk[r]);
            }
        }
    }
    __m256i acc[TB > PASS ? TB : PASS][2];
    __m256i bsum[TB][4];
    __m256 g[TB][4];
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < 4; r++) {
            bsum[t][r] = _mm256_setzero_si256();
            g[t][r] = _mm256_setzero_ps();
        }
    if (NT == 1) {
        for (int i0 = 0; i0 < np; i0 += PASS) {
            const int n = np - i0 < PASS ? np - i0 : PASS;
            switch (n) {
            case 1: plane_pass1(pl + i0, lut, q, acc, 1); break;
            case 2: plane_pass1(pl + i0, lut, q, acc, 2); break;
            case 3: plane_pass1(pl + i0, lut, q, acc, 3); break;
            default: plane_pass1(pl + i0, lut, q, acc, 4); break;
            }
            for (int i = 0; i < n; i++) fold_plane(i0 + i, b1, acc[i][0], acc[i][1], bsum[0], g[0], two_sk[i0 + i]);
        }
    } else {
        for (int i = 0; i < np; i++) {
            plane_sums(pl[i], lut, a->lut_stride, q, acc, NT);
            for (int t = 0; t < NT; t++) fold_plane(i, b1, acc[t][0], acc[t][1], bsum[t], g[t], two_sk[i]);
        }
    }
    for (int t = 0; t < NT; t++) {
        const long at = (t0 + t) * a->groups + j;
        const __m256 xs = _mm256_set1_ps((float)a->xsum[at]), sc = _mm256_set1_ps(a->xscale[at]);
        for (int r = 0; r < 4; r++) {
            __m256 v = _mm256_fmadd_ps(s[r], _mm256_cvtepi32_ps(bsum[t][r]), g[t][r]);
            out[t][r] = _mm256_fmadd_ps(_mm256_fmadd_ps(cst[r], xs, v), sc, out[t][r]);
        }
    }
}

INLINE void block_tokens(const Args *a, long rb, long t0, const int NT) {
    __m256 out[TB][4];
    for (int t = 0; t < NT; t++)
        for (int i = 0; i < 4; i++) out[t][i] = _mm256_setzero_ps();
    for (long j = 0; j < a->groups; j++) group_tokens(a, rb, j, t0, out, NT);
    const long r0 = rb * 32, n = a->rows - r0 < 32 ? a->rows - r0 : 32;
    for (int t = 0; t < NT; t++) {
        float *y = a->y + (t0 + t) * a->rows + r0;
        if (n == 32) {
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(y + 8 * i, out[t][i]);
        } else {
            float tmp[32] __attribute__((aligned(32)));
            for (int i = 0; i < 4; i++) _mm256_store_ps(tmp + 8 * i, out[t][i]);
            memcpy(y, tmp, (size_t)n * sizeof(float));
        }
    }
}

TARGET void d2moe_mwq_matmul_avx2(const uint8_t *lut, const float *xscale, const int32_t *xsum, long tokens,
                                  long rows, long cols, int group, const uint8_t *const *levels, int base_bits,
                                  int sign_levels, long block_begin, long block_end, float *y) {
    if (sign_levels < 0 || base_bits < 1 || base_bits > 8 || base_bits + sign_levels > D2MOE_MWQ_MAX_PLANES || group < 32 || group > 256 || group % 32 != 0 ||
        cols % group != 0)
        return;
    Args a = {
        .lut = lut, .xscale = xscale, .xsum = xsum, .tokens = tokens, .rows = rows, .cols = cols,
        .groups = cols / group, .lut_stride = cols * 8, .rows_blocks = (rows + 31) / 32, .g = group, .q = group / 4, .b1 = base_bits,
        .levels = sign_levels, .base_tile = (long)base_bits * 4 * group + 128, .sign_tile = 4L * group + 64,
        .lv = levels, .y = y,
    };
    for (long rb = block_begin; rb < block_end; rb++) {
        long t0 = 0;
        for (; t0 + TB <= tokens; t0 += TB) block_tokens(&a, rb, t0, TB);
        switch (tokens - t0) {
        case 1: block_tokens(&a, rb, t0, 1); break;
        case 2: block_tokens(&a, rb, t0, 2); break;
        case 3: block_tokens(&a, rb, t0, 3); break;
        default: break;
        }
    }
}

// Bit t of lane e (0-15): all ones when set.
static const int16_t kEntryBits[4][16] __attribute__((aligned(32))) = {
    {0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1},
    {0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1},
    {0, 0, 0, 0, -1, -1, -1, -1, 0, 0, 0, 0, -1, -1, -1, -1},
    {0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1},
};

TARGET void d2moe_mwq_prepare_avx2(const float *x, long tokens, long cols, int group, uint8_t *lut, float *xscale,
                                   int32_t *xsum, int16_t *integers) {
    if (group < 32 || group > 256 || group % 32 != 0 || cols % group != 0) return;
    const long groups = cols / group;
    const float range = (float)(32767 / group);  // MWQPreparedInput.range: int16 sums cannot overflow
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    // Within each 128-bit lane: the even (low) bytes of the eight int16 entries, then the odd ones.
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    __m256i bits[4];
    for (int i = 0; i < 4; i++) bits[i] = _mm256_load_si256((const __m256i *)kEntryBits[i]);
    int16_t xq[256] __attribute__((aligned(32)));
    for (long t = 0; t < tokens; t++) {
        for (long j = 0; j < groups; j++) {
            const float *xg = x + t * cols + j * group;
            __m256 mx = _mm256_setzero_ps();
            for (int c = 0; c < group; c += 8) mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(xg + c), absmask));
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
            const float amax = _mm_cvtss_f32(m4);
            const float inv = amax > 0 ? range / amax : 0.0f;
            xscale[t * groups + j] = amax / range;
            const __m256 vinv = _mm256_set1_ps(inv);
            __m256i total = _mm256_setzero_si256();
            for (int c = 0; c < group; c += 16) {
                __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + c), vinv));
                __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + c + 8), vinv));
                total = _mm256_add_epi32(total, _mm256_add_epi32(lo, hi));
                // packs interleaves 128-bit lanes; the 64-bit permute puts columns back in order.
                __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
                _mm256_store_si256((__m256i *)(xq + c), packed);
            }
            if (integers) memcpy(integers + t * cols + j * group, xq, (size_t)group * sizeof(int16_t));
            if (!lut) continue;
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
            xsum[t * groups + j] = _mm_cvtsi128_si32(s4);
            uint8_t *out = lut + t * cols * 8 + j * group * 8;
            for (int c = 0; c < group / 4; c++) {
                __m256i v = _mm256_and_si256(_mm256_set1_epi16(xq[4 * c]), bits[0]);
                v = _mm256_add_epi16(v, _mm256_and_si256(_mm256_set1_epi16(xq[4 * c + 1]), bits[1]));
                v = _mm256_add_epi16(v, _mm256_and_si256(_mm256_set1_epi16(xq[4 * c + 2]), bits[2]));
                v = _mm256_add_epi16(v, _mm256_and_si256(_mm256_set1_epi16(xq[4 * c + 3]), bits[3]));
                // lane 0: lo e0-7, hi e0-7; lane 1: lo e8-15, hi e8-15 → lo e0-15, hi e0-15.
                v = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, split), 0xD8);
                _mm256_storeu_si256((__m256i *)(out + 32 * c), v);
            }
        }
    }
}
#else
void d2moe_mwq_matmul_avx2(const uint8_t *lut, const float *xscale, const int32_t *xsum, long tokens, long rows,
                           long cols, int group, const uint8_t *const *levels, int base_bits, int sign_levels,
                           long block_begin, long block_end, float *y) {
    (void)lut; (void)xscale; (void)xsum; (void)tokens; (void)rows; (void)cols; (void)group; (void)levels;
    (void)base_bits; (void)sign_levels; (void)block_begin; (void)block_end; (void)y;
}
void d2moe_mwq_prepare_avx2(const float *x, long tokens, long cols, int group, uint8_t *lut, float *xscale,
                            int32_t *xsum, int16_t *integers) {
    (void)x; (void)tokens; (void)cols; (void)group; (void)lut; (void)xscale; (void)xsum; (void)integers;
}
#endif
