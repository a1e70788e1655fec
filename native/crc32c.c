/*
 * CRC32C and the producer's copy path. See crc32c.h for the contract.
 */
#include "crc32c.h"

#include <errno.h>
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

/* x^e mod P for any e, in the same reflected representation. */
static uint32_t xpowmodp(uint64_t e)
{
    uint32_t p = 1u << 31, sq = 1u << 30; /* x^0, x^1 */
    while (e) {
        if (e & 1)
            p = multmodp(sq, p);
        sq = multmodp(sq, sq);
        e >>= 1;
    }
    return p;
}

/*
 * Carry-less multiply folding (after Intel's "Fast CRC Computation for
 * Generic Polynomials Using PCLMULQDQ"). A 16-byte chunk loaded little-endian
 * holds a polynomial X of degree < 128 whose bit i is the coefficient of
 * x^(127-i). Moving X forward by D bits needs F = X * x^D mod P; with
 * X = H*x^64 + L, F = H*(x^(D+64) mod P) + L*(x^D mod P). A reflected 64-bit
 * clmul yields the product one degree short, so the constants are taken one
 * power lower: (x^(D+63) mod P, x^(D-1) mod P), each placed in the top half
 * of its 64-bit lane. The folded chunk is finally fed to the crc32
 * instruction as data, which reduces it.
 */
struct fold_k {
    uint64_t hi, lo; /* multiplier for the low lane (H), for the high lane (L) */
};
#define FOLD_LANES 8 /* 16-byte chunks in flight: 128 bytes per step */
static struct fold_k fold_k[FOLD_LANES]; /* [n]: fold forward by n * 128 bits */
static struct fold_k fold_k512;          /* fold forward by 2048 bits (256 bytes) */
static int have_vpclmul, have_fold512;

static struct fold_k fold_constant(uint64_t dbits)
{
    return (struct fold_k){(uint64_t)xpowmodp(dbits + 63) << 32,
                           (uint64_t)xpowmodp(dbits - 1) << 32};
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
    for (int n = 1; n < FOLD_LANES; n++)
        fold_k[n] = fold_constant(128ull * n);
    fold_k[0] = fold_constant(128ull * FOLD_LANES); /* the main loop's stride */
    fold_k512 = fold_constant(2048);
#if MODCAM_X86
    __builtin_cpu_init();
    have_sse42 = !!__builtin_cpu_supports("sse4.2");
    have_avx2 = !!__builtin_cpu_supports("avx2");
    have_vpclmul = have_sse42 && have_avx2 && !!__builtin_cpu_supports("vpclmulqdq") &&
                   __builtin_cpu_supports("pclmul");
    have_fold512 = have_vpclmul && !!__builtin_cpu_supports("avx512f");
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

#define FOLD_TARGET __attribute__((target("sse4.2,avx2,pclmul,vpclmulqdq")))

FOLD_TARGET static inline __m128i fold128(__m128i x, struct fold_k k)
{
    __m128i kk = _mm_set_epi64x((long long)k.lo, (long long)k.hi);
    return _mm_xor_si128(_mm_clmulepi64_si128(x, kk, 0x00), _mm_clmulepi64_si128(x, kk, 0x11));
}

FOLD_TARGET static inline __m256i fold256(__m256i x, __m256i k, __m256i data)
{
    return _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(x, k, 0x00),
                                             _mm256_clmulepi64_epi128(x, k, 0x11)), data);
}

/* Raw CRC of len >= 256 bytes by folding 128 bytes per step (eight chunks in
 * four 256-bit registers). With dst (32-byte aligned), also copies the data
 * there with streaming stores, so a producer reads its frame only once. */
FOLD_TARGET static uint32_t raw_fold(uint32_t c, const uint8_t *p, size_t len, uint8_t *dst)
{
    __m256i x[4], k = _mm256_set_epi64x((long long)fold_k[0].lo, (long long)fold_k[0].hi,
                                        (long long)fold_k[0].lo, (long long)fold_k[0].hi);
    for (int i = 0; i < 4; i++) {
        x[i] = _mm256_loadu_si256((const __m256i *)(p + 32 * i));
        if (dst)
            _mm256_stream_si256((__m256i *)(dst + 32 * i), x[i]);
    }
    /* raw_update(c, D) == raw_update(0, D with c xored into its first word) */
    x[0] = _mm256_xor_si256(x[0], _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, (int)c));
    p += 128, len -= 128, dst = dst ? dst + 128 : NULL;
    for (; len >= 128; p += 128, len -= 128) {
        for (int i = 0; i < 4; i++) {
            __m256i d = _mm256_loadu_si256((const __m256i *)(p + 32 * i));
            if (dst)
                _mm256_stream_si256((__m256i *)(dst + 32 * i), d);
            x[i] = fold256(x[i], k, d);
        }
        dst = dst ? dst + 128 : NULL;
    }
    __m128i acc = _mm256_castsi256_si128(x[0]);
    for (int i = 1; i < 8; i++) {
        __m128i chunk = (i & 1) ? _mm256_extracti128_si256(x[i / 2], 1)
                                : _mm256_castsi256_si128(x[i / 2]);
        acc = _mm_xor_si128(fold128(acc, fold_k[1]), chunk);
    }
    uint64_t crc = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(acc));
    crc = _mm_crc32_u64(crc, (uint64_t)_mm_extract_epi64(acc, 1));
    if (dst)
        memcpy(dst, p, len);
    return raw_hw_tail((uint32_t)crc, p, len);
}

#define FOLD512_TARGET __attribute__((target("sse4.2,avx2,pclmul,vpclmulqdq,avx512f")))
/* Below this many bytes the 256-bit fold is used (the 512-bit one reduces
 * sixteen chunks at the end, which only pays off over longer data). */
#define FOLD512_MIN 4096u

/* The same folding with 512-bit registers (AVX-512 VPCLMULQDQ): sixteen
 * 16-byte chunks in four registers, 256 bytes per step. On CPUs that have
 * it (Zen 4 and later, Ice Lake and later) it verifies a frame at close to
 * the memory's read speed, where the 256-bit fold is bound by the
 * multiplier. len >= 256; with dst (64-byte aligned) it copies as it goes. */
FOLD512_TARGET static uint32_t raw_fold512(uint32_t c, const uint8_t *p, size_t len, uint8_t *dst)
{
    const __m512i k = _mm512_broadcast_i32x4(_mm_set_epi64x((long long)fold_k512.lo,
                                                            (long long)fold_k512.hi));
    __m512i x[4];
    for (int i = 0; i < 4; i++) {
        x[i] = _mm512_loadu_si512(p + 64 * i);
        if (dst)
            _mm512_stream_si512((void *)(dst + 64 * i), x[i]);
    }
    x[0] = _mm512_xor_si512(x[0], _mm512_castsi128_si512(_mm_cvtsi32_si128((int)c)));
    p += 256, len -= 256, dst = dst ? dst + 256 : NULL;
    for (; len >= 256; p += 256, len -= 256) {
        for (int i = 0; i < 4; i++) {
            __m512i d = _mm512_loadu_si512(p + 64 * i);
            if (dst)
                _mm512_stream_si512((void *)(dst + 64 * i), d);
            /* x = x.lo * k.hi ^ x.hi * k.lo ^ d, per 128-bit lane */
            x[i] = _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x[i], k, 0x00),
                                             _mm512_clmulepi64_epi128(x[i], k, 0x11), d, 0x96);
        }
        dst = dst ? dst + 256 : NULL;
    }
    __m128i chunks[16];
    for (int i = 0; i < 4; i++)
        _mm512_storeu_si512(&chunks[4 * i], x[i]);
    __m128i acc = chunks[0];
    for (int i = 1; i < 16; i++)
        acc = _mm_xor_si128(fold128(acc, fold_k[1]), chunks[i]);
    uint64_t crc = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(acc));
    crc = _mm_crc32_u64(crc, (uint64_t)_mm_extract_epi64(acc, 1));
    if (dst)
        memcpy(dst, p, len);
    return raw_hw_tail((uint32_t)crc, p, len);
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
    if (have_fold512 && len >= FOLD512_MIN)
        return ~raw_fold512(~crc, data, len, NULL);
    if (have_vpclmul && len >= 256)
        return ~raw_fold(~crc, data, len, NULL);
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
    if (streamable(dst, len)) {
        if (have_fold512 && ((uintptr_t)dst & 63) == 0)
            return ~raw_fold512(~0u, src, len, dst);
        return have_vpclmul ? ~raw_fold(~0u, src, len, dst) : ~raw_copy_hw(~0u, dst, src, len);
    }
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

int modcam_crc32c_set_impl(int impl)
{
    static int detected = -1;
    if (detected < 0)
        detected = have_sse42 | have_avx2 << 1 | have_vpclmul << 2 | have_fold512 << 3;
    int sse42 = detected & 1, avx2 = (detected >> 1) & 1, fold = (detected >> 2) & 1,
        fold512 = (detected >> 3) & 1;
    switch (impl) {
    case MODCAM_CRC32C_IMPL_AUTO:
        have_sse42 = sse42, have_avx2 = avx2, have_vpclmul = fold, have_fold512 = fold512;
        return 0;
    case MODCAM_CRC32C_IMPL_PORTABLE:
        have_sse42 = have_avx2 = have_vpclmul = have_fold512 = 0;
        return 0;
    case MODCAM_CRC32C_IMPL_SSE42:
        if (!sse42 || !avx2)
            return -ENOTSUP;
        have_sse42 = have_avx2 = 1, have_vpclmul = have_fold512 = 0;
        return 0;
    case MODCAM_CRC32C_IMPL_FOLD:
        if (!fold)
            return -ENOTSUP;
        have_sse42 = have_avx2 = have_vpclmul = 1, have_fold512 = 0;
        return 0;
    case MODCAM_CRC32C_IMPL_FOLD512:
        if (!fold512)
            return -ENOTSUP;
        have_sse42 = have_avx2 = have_vpclmul = have_fold512 = 1;
        return 0;
    }
    return -EINVAL;
}

void modcam_store_fence(void)
{
#if MODCAM_X86
    _mm_sfence();
#endif
}
