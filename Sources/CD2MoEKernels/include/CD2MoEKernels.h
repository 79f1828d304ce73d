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
