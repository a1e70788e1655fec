/*
 * CRC32C and the producer's copy path. See crc32c.h for the contract.
 */
#include "crc32c.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define MODCAM_X86 1
#endif

#define POLY 0x82f63b78u
/* Bytes per stream in the 3-way interleave: large enough that combining
 * (two multiplications mod P) costs under 1 %, small enough for short frames. */
#define STREAM_BLOCK 32768u
/* Below this, a plain memcpy beats streaming stores (the data may still be
 * read from cache by the consumer on the other core). */
#define STREAM_MIN (1u << 20)

static uint32_t table[8][256];
static uint32_t shift_block;  /* x^(8*STREAM_BLOCK) mod P */
static uint32_t shift_block2; /* x^(16*STREAM_BLOCK) mod P */
static int have_sse42, have_avx2;

/* a * b modulo P, in the reflected bit order (after Mark Adler's crc32c.c). */
static uint32_t multmodp(uint32_t a, uint32_t b)
{
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0)
                break;
        }
        m >>= 1;
        b = (b & 1) ? (b >> 1) ^ POLY : b >> 1;
    }
    return p;
}

/* x^(8*n) mod P: the operator that appends n zero bytes to a raw CRC state. */
static uint32_t x8nmodp(uint64_t n)
{
    uint32_t p = 1u << 31;      /* x^0 */
    uint32_t x2k = 1u << 30;    /* x^1, squared below up to x^8 */
    for (int i = 0; i < 3; i++)
        x2k = multmodp(x2k, x2k);
    while (n) {
        if (n & 1)
            p = multmodp(x2k, p);
        x2k = multmodp(x2k, x2k);
        n >>= 1;
    }
    return p;
}

__attribute__((constructor)) static void crc32c_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++)
            table[k][n] = (table[k - 1][n] >> 8) ^ table[0][table[k - 1][n] & 0xff];
    shift_block = x8nmodp(STREAM_BLOCK);
    shift_block2 = x8nmodp(2ull * STREAM_BLOCK);
#if MODCAM_X86
    __builtin_cpu_init();
    have_sse42 = __builtin_cpu_supports("sse4.2");
    have_avx2 = __builtin_cpu_supports("avx2");
#endif
}

/* Raw (non-inverted) table update. */
static uint32_t raw_portable(uint32_t c, const uint8_t *p, size_t len)
{
    while (len && ((uintptr_t)p & 7)) {
        c = (c >> 8) ^ table[0][(c ^ *p++) & 0xff];
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= c;
        c = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
            table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^
            table[2][(w >> 40) & 0xff] ^ table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        c = (c >> 8) ^ table[0][(c ^ *p++) & 0xff];
    return c;
}

uint32_t modcam_crc32c_portable(uint32_t crc, const void *data, size_t len)
{
    return ~raw_portable(~crc, data, len);
}

#if MODCAM_X86
__attribute__((target("sse4.2"))) static uint32_t raw_hw_tail(uint32_t c, const uint8_t *p,
                                                              size_t len)
{
    uint64_t c64 = c;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c64 = _mm_crc32_u64(c64, w);
        p += 8;
        len -= 8;
    }
    c = (uint32_t)c64;
    while (len--)
        c = _mm_crc32_u8(c, *p++);
    return c;
}

/* Three streams over consecutive blocks, then c = a*x^2B + b*x^B + c. */
__attribute__((target("sse4.2"))) static uint32_t raw_hw(uint32_t c, const uint8_t *p, size_t len)
{
    while (len >= 3 * STREAM_BLOCK) {
        uint64_t a = c, b = 0, d = 0;
        const uint8_t *pa = p, *pb = p + STREAM_BLOCK, *pd = p + 2 * STREAM_BLOCK;
        for (size_t i = 0; i < STREAM_BLOCK; i += 8) {
            uint64_t wa, wb, wd;
            memcpy(&wa, pa + i, 8);
            memcpy(&wb, pb + i, 8);
            memcpy(&wd, pd + i, 8);
            a = _mm_crc32_u64(a, wa);
            b = _mm_crc32_u64(b, wb);
            d = _mm_crc32_u64(d, wd);
        }
        c = multmodp(shift_block2, (uint32_t)a) ^ multmodp(shift_block, (uint32_t)b) ^ (uint32_t)d;
        p += 3 * STREAM_BLOCK;
        len -= 3 * STREAM_BLOCK;
    }
    return raw_hw_tail(c, p, len);
}

/* Fused copy + CRC with streaming stores; dst must be 32-byte aligned. Each
 * 32-byte chunk is loaded once as a vector for the store and re-read as
 * words from L1 for the CRC. */
__attribute__((target("sse4.2,avx2"))) static uint32_t raw_copy_hw(uint32_t c, uint8_t *dst,
                                                                   const uint8_t *src, size_t len)
{
    while (len >= 3 * STREAM_BLOCK) {
        uint64_t a = c, b = 0, d = 0;
        for (size_t i = 0; i < STREAM_BLOCK; i += 32) {
            const uint8_t *s0 = src + i, *s1 = s0 + STREAM_BLOCK, *s2 = s1 + STREAM_BLOCK;
            uint8_t *d0 = dst + i;
            _mm256_stream_si256((__m256i *)d0, _mm256_loadu_si256((const __m256i *)s0));
            _mm256_stream_si256((__m256i *)(d0 + STREAM_BLOCK),
                                _mm256_loadu_si256((const __m256i *)s1));
            _mm256_stream_si256((__m256i *)(d0 + 2 * STREAM_BLOCK),
                                _mm256_loadu_si256((const __m256i *)s2));
            for (int k = 0; k < 32; k += 8) {
                uint64_t w0, w1, w2;
                memcpy(&w0, s0 + k, 8);
                memcpy(&w1, s1 + k, 8);
                memcpy(&w2, s2 + k, 8);
                a = _mm_crc32_u64(a, w0);
                b = _mm_crc32_u64(b, w1);
                d = _mm_crc32_u64(d, w2);
            }
        }
        c = multmodp(shift_block2, (uint32_t)a) ^ multmodp(shift_block, (uint32_t)b) ^ (uint32_t)d;
        src += 3 * STREAM_BLOCK;
        dst += 3 * STREAM_BLOCK;
        len -= 3 * STREAM_BLOCK;
    }
    memcpy(dst, src, len);
    return raw_hw_tail(c, src, len);
}

__attribute__((target("avx2"))) static void stream_copy_avx2(uint8_t *dst, const uint8_t *src,
                                                             size_t len)
{
    size_t n = len & ~(size_t)127;
    for (size_t i = 0; i < n; i += 128) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(src + i));
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(src + i + 32));
        __m256i v2 = _mm256_loadu_si256((const __m256i *)(src + i + 64));
        __m256i v3 = _mm256_loadu_si256((const __m256i *)(src + i + 96));
        _mm256_stream_si256((__m256i *)(dst + i), v0);
        _mm256_stream_si256((__m256i *)(dst + i + 32), v1);
        _mm256_stream_si256((__m256i *)(dst + i + 64), v2);
        _mm256_stream_si256((__m256i *)(dst + i + 96), v3);
    }
    memcpy(dst + n, src + n, len - n);
}
#endif

uint32_t modcam_crc32c(uint32_t crc, const void *data, size_t len)
{
#if MODCAM_X86
    if (have_sse42)
        return ~raw_hw(~crc, data, len);
#endif
    return modcam_crc32c_portable(crc, data, len);
}

static int streamable(const void *dst, size_t len)
{
#if MODCAM_X86
    return have_avx2 && have_sse42 && len >= STREAM_MIN && ((uintptr_t)dst & 31) == 0;
#else
    (void)dst;
    (void)len;
    return 0;
#endif
}

uint32_t modcam_copy_crc32c(void *dst, const void *src, size_t len)
{
#if MODCAM_X86
    if (streamable(dst, len))
        return ~raw_copy_hw(~0u, dst, src, len);
#endif
    memcpy(dst, src, len);
    return modcam_crc32c(0, dst, len);
}

void modcam_stream_copy(void *dst, const void *src, size_t len)
{
#if MODCAM_X86
    if (streamable(dst, len)) {
        stream_copy_avx2(dst, src, len);
        _mm_sfence();
        return;
    }
#endif
    memcpy(dst, src, len);
}

void modcam_store_fence(void)
{
#if MODCAM_X86
    _mm_sfence();
#endif
}
