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

#endif

/// Element types of dense matrices, as D2MoEKernels' ElementType.
enum { D2MOE_F32 = 0, D2MOE_F16 = 1, D2MOE_BF16 = 2 };

/// y[t * rows + r] = sum_c W[r, c] * x[t * cols + c] for rows r in [row_begin, row_end) and all
/// t < tokens. W is row-major rows x cols of `elem` type. Uses AVX2+FMA (and F16C for f16);
/// call only when d2moe_cpu_features() reports them.
void d2moe_matmul_avx2(const void *w, int elem, long rows, long cols, const float *x, long tokens,
                       float *y, long row_begin, long row_end);

/// Most sign levels d2moe_mwq_matmul_avx2 accepts.
enum { D2MOE_MWQ_MAX_SIGN_LEVELS = 32 };

/// y[t * rows + r] = sum_c What[r, c] * x[t * cols + c] for rows r in [row_begin, row_end) and all
/// t < tokens, computed on the packed bit-planes of an MWQ matrix (never dequantized).
/// group g in {32, 64, 128}, cols % g == 0, G = cols / g, n32 = g / 32. Bit i of a plane word w of
/// group j holds column j*g + w*32 + i.
/// base_planes: word ((r*G + j)*base_bits + p)*n32 + w is bit p of the unsigned base codes q;
/// base_scales: float16 pairs (s, m) at 2*(r*G + j); base weight s*q + m (1 <= base_bits <= 8).
/// sign_planes[k]: word (r*G + j)*n32 + w, bit 1 = +1, 0 = -1; sign_scales[k]: float16 s_k at r*G + j;
/// level k adds s_k * (+-1). Uses sign levels 0..sign_levels-1 (<= D2MOE_MWQ_MAX_SIGN_LEVELS).
/// xsum[t * G + j] = sum of x over group j of token t. Uses AVX2+FMA+F16C; call only when
/// d2moe_cpu_features() reports them.
void d2moe_mwq_matmul_avx2(const float *x, const float *xsum, long tokens, long rows, long cols, int group,
                           const uint32_t *base_planes, const uint16_t *base_scales, int base_bits,
                           const uint32_t *const *sign_planes, const uint16_t *const *sign_scales,
                           int sign_levels, long row_begin, long row_end, float *y);
