#ifndef CD2MOE_KERNELS_H
#define CD2MOE_KERNELS_H
#include <stdint.h>
#include <stddef.h>

/// CPU features detected at run time; bit set = available.
enum {
    D2MOE_CPU_AVX2 = 1 << 0,
    D2MOE_CPU_FMA = 1 << 1,
    D2MOE_CPU_F16C = 1 << 2,
    D2MOE_CPU_AVX512F = 1 << 3,
    D2MOE_CPU_AVX512BW = 1 << 4,
    D2MOE_CPU_AVX512VNNI = 1 << 5,
};

/// Returns the D2MOE_CPU_* bits of this processor.
uint32_t d2moe_cpu_features(void);

/// One attention head for one query: out[0..d) = sum_j p_j * v_j with p = softmax(scale * q.k_j)
/// over n >= 1 positions, k_j = keys + j*stride and v_j = values + j*stride (d floats each,
/// d % 8 == 0). scores: n floats of scratch (left holding unnormalised exponentials).
/// Uses AVX2+FMA; call only when d2moe_cpu_features() reports them.
void d2moe_attend_avx2(const float *q, const float *keys, const float *values, long stride, long n, long d,
                       float scale, float *scores, float *out);

#endif

/// Element types of dense matrices, as D2MoEKernels' ElementType.
enum { D2MOE_F32 = 0, D2MOE_F16 = 1, D2MOE_BF16 = 2 };

/// y[t * rows + r] = sum_c W[r, c] * x[t * cols + c] for rows r in [row_begin, row_end) and all
/// t < tokens. W is row-major rows x cols of `elem` type. Uses AVX2+FMA (and F16C for f16);
/// call only when d2moe_cpu_features() reports them.
void d2moe_matmul_avx2(const void *w, int elem, long rows, long cols, const float *x, long tokens,
                       float *y, long row_begin, long row_end);

/// Activations prepared for MWQ products, per token t and group j of `group` columns
/// (G = cols / group): xq = round(x * R / amax) with amax the group's largest |x| and
/// R = 32767 / group (so that the kernels' int16 sums cannot overflow), xscale[t*G + j] = amax / R, xsum[t*G + j] = sum of the group's xq, and for every quad c of 4
/// columns 32 bytes at lut + t*cols*8 + c*32: the low bytes, then the high bytes, of the int16 sums
/// v[e] = sum over the set bits i of e of xq[4c + i], e = 0..15. group in {32, 64, 128, 256}.
/// lut and xsum may be NULL (no tables, for d2moe_mwq_gemm_avx2 alone); where `integers` is not
/// NULL, xq itself goes there as int16 [tokens, cols].
/// Uses AVX2; call only when d2moe_cpu_features() reports it.
void d2moe_mwq_prepare_avx2(const float *x, long tokens, long cols, int group, uint8_t *lut, float *xscale,
                            int32_t *xsum, int16_t *integers);

/// Most planes (base bits plus sign levels) d2moe_mwq_matmul_avx2 takes.
enum { D2MOE_MWQ_MAX_PLANES = 16 };

/// y[t * rows + r] = sum_c What[r, c] * x~[t * cols + c] for the rows of row blocks
/// [block_begin, block_end) (32 rows each) and all t < tokens, where x~ = xq * xscale are the
/// activations d2moe_mwq_prepare_avx2 prepared (lut, xscale, xsum). What is an MWQ matrix in its
/// tiled layout (MWQMatrixView in D2MoEKernels documents the bytes): levels[0] the base tiles of
/// base_bits planes, levels[1..sign_levels] the sign-level tiles used (base_bits + sign_levels <= D2MOE_MWQ_MAX_PLANES). Never dequantizes.
/// Uses AVX2+FMA+F16C; call only when d2moe_cpu_features() reports them.
void d2moe_mwq_matmul_avx2(const uint8_t *lut, const float *xscale, const int32_t *xsum, long tokens,
                           long rows, long cols, int group, const uint8_t *const *levels, int base_bits,
                           int sign_levels, long block_begin, long block_end, float *y);

/// The int16 grid of d2moe_mwq_gemm_avx2's weights: 32767 less a margin for the rounding of up to
/// D2MOE_MWQ_MAX_PLANES + 1 integer coefficients.
#define D2MOE_MWQ_GEMM_RANGE 32750.0f

/// y[t * rows + r] = sum_j ws[r, j] * xscale[t, j] * sum_{c in group j} wq[r, c] * xq[t, c] for the rows
/// of row blocks [block_begin, block_end) and all t < tokens, where wq, ws are the MWQ matrix
/// (levels, base_bits, sign_levels as for d2moe_mwq_matmul_avx2) requantized to int16 per row and
/// group (mwq_gemm_avx2.c and MWQReference.gemmWeights give the exact rule) and xq, xscale the
/// integers and scales d2moe_mwq_prepare_avx2 made. For many tokens (prompts): it requantizes each
/// row block once per call. Uses AVX2+FMA+F16C; call only when d2moe_cpu_features() reports them.
void d2moe_mwq_gemm_avx2(const int16_t *xq, const float *xscale, long tokens, long rows, long cols, int group,
                         const uint8_t *const *levels, int base_bits, int sign_levels, long block_begin, long block_end,
                         float *y);

/// Q8_0 activations: for each block b of 32 values, xs[b] = amax / 127 and xq = round(x / xs[b]).
/// n % 32 == 0. Uses AVX2; call only when d2moe_cpu_features() reports it.
void d2moe_q8_quantize_avx2(const float *x, long n, int8_t *xq, float *xs);

/// y[t * rows + r] = sum_c W[r, c] * x~[t * cols + c] for rows r in [row_begin, row_end), W in ggml's
/// Q8_0 layout (per row cols/32 blocks of a float16 scale and 32 int8 codes, 34 bytes), x~ the
/// activations d2moe_q8_quantize_avx2 made (xq: [tokens, cols], xs: [tokens, cols/32]).
/// Uses AVX2+FMA+F16C; call only when d2moe_cpu_features() reports them.
void d2moe_q8_matmul_avx2(const void *w, long rows, long cols, const int8_t *xq, const float *xs, long tokens,
                          float *y, long row_begin, long row_end);

/// y[t * rows + r] = sum_j d[r, j] * xscale[t, j] * sum_{c in block j} q[r, c] * xq[t, c] for rows r in
/// [row_begin, row_end), W in ggml's Q8_0 layout (scale d and int8 codes q per 32 columns), xq and
/// xscale the int16 activations d2moe_mwq_prepare_avx2 makes with group 32 (|xq| <= 1023): the
/// GEMM route of mwq_gemm_avx2.c with the codes themselves as its weights, for many tokens.
/// Uses AVX2+FMA+F16C; call only when d2moe_cpu_features() reports them.
void d2moe_q8_gemm_avx2(const void *w, long rows, long cols, const int16_t *xq, const float *xscale, long tokens,
                        float *y, long row_begin, long row_end);

/// CRC-32 (IEEE 802.3, zlib's) of n bytes continuing from `crc` (0 to start). Where the CPU has
/// PCLMULQDQ and SSE4.1 (checked at run time), carry-less multiplication folding of 64 bytes per
/// step; elsewhere, and for the last n % 16 bytes, `d2moe_crc32_table`.
uint32_t d2moe_crc32(uint32_t crc, const void *bytes, size_t n);

/// The same CRC by slicing by 8 (eight table lookups per 8 bytes): the portable path, and the
/// reference the folding path is tested against.
uint32_t d2moe_crc32_table(uint32_t crc, const void *bytes, size_t n);

/// Moves the pages of [from, from + length) of an anonymous mapping to `to`, replacing what is
/// mapped there (Linux mremap with MREMAP_FIXED): the pages keep their contents and stay
/// resident, nothing is copied or zeroed, and [from, from + length) is left unmapped. The range
/// must lie within one mapping before Linux 6.17. Returns 0, or -1 (nothing moved) where the
/// system has no mremap or refuses.
int d2moe_move_pages(void *from, size_t length, void *to);
