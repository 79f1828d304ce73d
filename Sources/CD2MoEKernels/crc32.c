#include "CD2MoEKernels.h"
#include <string.h>

// tables[k][b]: the CRC of byte b followed by k zero bytes, built once at load.
static uint32_t tables[8][256];

__attribute__((constructor)) static void crc32_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        tables[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        for (int k = 1; k < 8; k++) tables[k][i] = (tables[k - 1][i] >> 8) ^ tables[0][tables[k - 1][i] & 0xFF];
    }
}

uint32_t d2moe_crc32_table(uint32_t crc, const void *bytes, size_t n) {
    const unsigned char *p = bytes;
    uint32_t c = ~crc;
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        lo = __builtin_bswap32(lo);
        hi = __builtin_bswap32(hi);
#endif
        lo ^= c;
        c = tables[7][lo & 0xFF] ^ tables[6][(lo >> 8) & 0xFF] ^ tables[5][(lo >> 16) & 0xFF] ^ tables[4][lo >> 24]
          ^ tables[3][hi & 0xFF] ^ tables[2][(hi >> 8) & 0xFF] ^ tables[1][(hi >> 16) & 0xFF] ^ tables[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = tables[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

// Carry-less multiplication folding (Gopal et al., "Fast CRC Computation for Generic Polynomials
// Using PCLMULQDQ", Intel 2009), in the bit-reflected domain of the IEEE polynomial. The running
// state is four 128-bit lanes; each step multiplies a lane's halves by x^(512±32) mod P and adds
// the next 64 bytes, so the loop is four independent multiply chains instead of a table lookup
// chain. Constants: x^(4·128+32), x^(4·128−32) (fold by 64 bytes); x^(128+32), x^(128−32) (fold
// by 16 bytes); x^64 (128 → 96 bits); then Barrett reduction with P and μ = floor(x^64 / P).
static const uint64_t fold64[2] = {0x154442bd4ULL, 0x1c6e41596ULL};
static const uint64_t fold16[2] = {0x1751997d0ULL, 0x0ccaa009eULL};
static const uint64_t fold96[2] = {0x163cd6124ULL, 0};
static const uint64_t barrett[2] = {0x1db710641ULL, 0x1f7011641ULL};

/// `c`: the running (inverted) CRC; n a multiple of 16 and at least 64.
__attribute__((target("pclmul,sse4.1")))
static uint32_t crc32_fold(uint32_t c, const unsigned char *p, size_t n) {
    __m128i a = _mm_xor_si128(_mm_loadu_si128((const __m128i *)p), _mm_cvtsi32_si128((int)c));
    __m128i b = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i d = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i e = _mm_loadu_si128((const __m128i *)(p + 48));
    p += 64;
    n -= 64;
    __m128i k = _mm_loadu_si128((const __m128i *)fold64);
#define FOLD(lane, next) \
    lane = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(lane, k, 0x00), _mm_clmulepi64_si128(lane, k, 0x11)), next)
    while (n >= 64) {
        FOLD(a, _mm_loadu_si128((const __m128i *)p));
        FOLD(b, _mm_loadu_si128((const __m128i *)(p + 16)));
        FOLD(d, _mm_loadu_si128((const __m128i *)(p + 32)));
        FOLD(e, _mm_loadu_si128((const __m128i *)(p + 48)));
        p += 64;
        n -= 64;
    }
    k = _mm_loadu_si128((const __m128i *)fold16);
    FOLD(a, b);
    FOLD(a, d);
    FOLD(a, e);
    while (n >= 16) {
        FOLD(a, _mm_loadu_si128((const __m128i *)p));
        p += 16;
        n -= 16;
    }
#undef FOLD
    // 128 → 96 bits: the low 64 bits times x^(128−32), added to the high 64 bits.
    const __m128i low32 = _mm_setr_epi32(-1, 0, -1, 0);
    __m128i t = _mm_clmulepi64_si128(a, k, 0x10);
    a = _mm_xor_si128(_mm_srli_si128(a, 8), t);
    // 96 → 64 bits.
    k = _mm_loadl_epi64((const __m128i *)fold96);
    t = _mm_srli_si128(a, 4);
    a = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(a, low32), k, 0x00), t);
    // Barrett reduction to 32 bits.
    k = _mm_loadu_si128((const __m128i *)barrett);
    t = _mm_clmulepi64_si128(_mm_and_si128(a, low32), k, 0x10);
    t = _mm_clmulepi64_si128(_mm_and_si128(t, low32), k, 0x00);
    a = _mm_xor_si128(a, t);
    return (uint32_t)_mm_extract_epi32(a, 1);
}

// Set once at load, before any thread can checksum (I/O threads call this concurrently).
static int has_clmul;

__attribute__((constructor)) static void crc32_detect(void) {
    unsigned eax, ebx, ecx, edx;
    has_clmul = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_PCLMUL) && (ecx & bit_SSE4_1);
}
#endif

uint32_t d2moe_crc32(uint32_t crc, const void *bytes, size_t n) {
#if defined(__x86_64__)
    if (n >= 64 && has_clmul) {
        size_t folded = n & ~(size_t)15;
        uint32_t c = ~crc32_fold(~crc, bytes, folded);
        return d2moe_crc32_table(c, (const unsigned char *)bytes + folded, n - folded);
    }
#endif
    return d2moe_crc32_table(crc, bytes, n);
}
