// mremap for the expert pool's recycled piece buffers. Swift cannot call the variadic libc
// declaration, hence this one-line wrapper.
#if defined(__linux__)
#define _GNU_SOURCE
#endif
#include "CD2MoEKernels.h"
#include <sys/mman.h>

void *d2moe_remap(void *p, size_t old_size, size_t new_size) {
#if defined(__linux__)
    void *q = mremap(p, old_size, new_size, MREMAP_MAYMOVE);
    return q == MAP_FAILED ? NULL : q;
#else
    (void)p; (void)old_size; (void)new_size;
    return NULL;
#endif
}
