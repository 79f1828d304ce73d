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
