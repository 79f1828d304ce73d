#include "CD2MoEKernels.h"
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
uint32_t d2moe_cpu_features(void) {
    uint32_t features = 0;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) features |= D2MOE_CPU_AVX2;
    if (__builtin_cpu_supports("fma")) features |= D2MOE_CPU_FMA;
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C)) features |= D2MOE_CPU_F16C;
    if (__builtin_cpu_supports("avx512f")) features |= D2MOE_CPU_AVX512F;
    if (__builtin_cpu_supports("avx512bw")) features |= D2MOE_CPU_AVX512BW;
    if (__builtin_cpu_supports("avx512vnni")) features |= D2MOE_CPU_AVX512VNNI;
    return features;
}
#else
uint32_t d2moe_cpu_features(void) { return 0; }
#endif
