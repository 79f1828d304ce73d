// mremap for the expert pool's recycled pages. Swift cannot call the variadic libc declaration,
// hence this wrapper.
#if defined(__linux__)
#define _GNU_SOURCE
#endif
#include "CD2MoEKernels.h"
#include <sys/mman.h>

int d2moe_move_pages(void *from, size_t length, void *to) {
#if defined(__linux__)
    void *q = mremap(from, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, to);
    return q == to ? 0 : -1;
#else
    (void)from; (void)length; (void)to;
    return -1;
#endif
}
