/*
 * raw12.c — MIPI CSI-2 RAW12 pack/unpack (contract in raw12.h).
 *
 * Owns: argument checks, the portable row kernels (also the reference the
 * tests compare against), the AVX2 row kernels, and the run-time choice
 * between them. The extension is built without -march, so the AVX2 code is
 * compiled per function with __attribute__((target("avx2"))) and only called
 * after __builtin_cpu_supports("avx2") said yes.
 */
#include "raw12.h"

#include <errno.h>
#include <stdint.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define RAW12_X86 1
#include <immintrin.h>
#endif

typedef void (*unpack_row_fn)(const uint8_t *restrict src, uint16_t *restrict dst,
                              uint32_t width);
typedef void (*pack_row_fn)(const uint16_t *restrict src, uint8_t *restrict dst,
                            uint32_t width);

size_t modcam_raw12_stride(uint32_t width)
{
    uint64_t bytes = ((uint64_t)width + 1) / 2 * 3;
#if SIZE_MAX < UINT64_MAX
    if (bytes > SIZE_MAX)
        return 0;
#endif
    return (size_t)bytes;
}

/* ---- portable kernels: one row, pixel pairs, then the odd last pixel ---- */

static void unpack_row_scalar(const uint8_t *restrict s, uint16_t *restrict d, uint32_t width)
{
    uint32_t pairs = width / 2;
    for (uint32_t i = 0; i < pairs; i++, s += 3, d += 2) {
        d[0] = (uint16_t)(s[0] << 4 | (s[2] & 0x0F));
        d[1] = (uint16_t)(s[1] << 4 | s[2] >> 4);
    }
    if (width & 1) /* the last group's P1 is padding: byte1 is not read */
        d[0] = (uint16_t)(s[0] << 4 | (s[2] & 0x0F));
}

static void pack_row_scalar(const uint16_t *restrict s, uint8_t *restrict d, uint32_t width)
{
    uint32_t pairs = width / 2;
    for (uint32_t i = 0; i < pairs; i++, s += 2, d += 3) {
        unsigned p0 = s[0] & 0x0FFFu, p1 = s[1] & 0x0FFFu;
        d[0] = (uint8_t)(p0 >> 4);
        d[1] = (uint8_t)(p1 >> 4);
        d[2] = (uint8_t)((p1 & 0x0F) << 4 | (p0 & 0x0F));
    }
    if (width & 1) { /* odd width: the last group carries P0 and a zero P1 */
        unsigned p0 = s[0] & 0x0FFFu;
        d[0] = (uint8_t)(p0 >> 4);
        d[1] = 0;
        d[2] = (uint8_t)(p0 & 0x0F);
    }
}

#ifdef RAW12_X86
/*
 * AVX2 kernels work on blocks of 16 pixels = 24 packed bytes, 12 bytes
 * (8 pixels) per 128-bit lane because pshufb cannot cross lanes.
 *
 * Unpack: a dword permute puts bytes 0..11 in lane 0 and 12..23 in lane 1.
 * pshufb builds word E = b2 | b0 << 8 for even pixels and b2 | b1 << 8 for
 * odd ones; E >> 4 is already P1 for odd pixels, and for even ones only its
 * low nibble is wrong (b2[7:4] instead of b2[3:0]), fixed with xor/and/xor.
 *
 * Pack: per dword (P0, P1), (P >> 4) gives b0 in byte 0 and b1 in byte 2;
 * pmaddwd of the low nibbles by (256, 4096) gives b2 in byte 1. pshufb
 * keeps bytes 0,2,1 of each dword and a dword permute joins the lanes into
 * 24 contiguous bytes.
 *
 * Bounds: the fast loops load (unpack) or store (pack) 32 bytes per 24 used
 * and run only while those 32 bytes lie inside the row's data; the last
 * blocks use exact 16 + 8 byte accesses, then the portable kernel finishes
 * the < 16 remaining pixels. Nothing outside the row is ever touched.
 */
#define AVX2 __attribute__((target("avx2")))

AVX2 static inline __m256i unpack_block(__m256i v)
{
    const __m256i shuf = _mm256_setr_epi8(2, 0, 2, 1, 5, 3, 5, 4, 8, 6, 8, 7, 11, 9, 11, 10,
                                          2, 0, 2, 1, 5, 3, 5, 4, 8, 6, 8, 7, 11, 9, 11, 10);
    const __m256i even_nibble = _mm256_set1_epi32(0x0000000F);
    v = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 1, 2, 2, 3, 4, 5, 5));
    __m256i e = _mm256_shuffle_epi8(v, shuf);
    __m256i s = _mm256_srli_epi16(e, 4);
    return _mm256_xor_si256(s, _mm256_and_si256(_mm256_xor_si256(s, e), even_nibble));
}

/* Exactly 24 bytes, for the end of a row where a 32-byte load would overrun. */
AVX2 static inline __m256i load24(const uint8_t *s)
{
    __m128i lo = _mm_loadu_si128((const __m128i *)s);
    __m128i hi = _mm_loadl_epi64((const __m128i *)(s + 16));
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

AVX2 static void unpack_row_avx2(const uint8_t *restrict s, uint16_t *restrict d, uint32_t width)
{
    size_t nbytes = modcam_raw12_stride(width), off = 0;
    uint32_t i = 0;
    for (; off + 24 + 32 <= nbytes; off += 48, i += 32) { /* two blocks per trip */
        __m256i a = _mm256_loadu_si256((const __m256i *)(s + off));
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + off + 24));
        _mm256_storeu_si256((__m256i *)(d + i), unpack_block(a));
        _mm256_storeu_si256((__m256i *)(d + i + 16), unpack_block(b));
    }
    for (; off + 32 <= nbytes; off += 24, i += 16)
        _mm256_storeu_si256((__m256i *)(d + i),
                            unpack_block(_mm256_loadu_si256((const __m256i *)(s + off))));
    for (; i + 16 <= width; off += 24, i += 16)
        _mm256_storeu_si256((__m256i *)(d + i), unpack_block(load24(s + off)));
    unpack_row_scalar(s + off, d + i, width - i);
}

/* 16 pixels -> 24 packed bytes in the low 24 bytes of the result. */
AVX2 static inline __m256i pack_block(const uint16_t *s)
{
    const __m256i shuf = _mm256_setr_epi8(0, 2, 1, 4, 6, 5, 8, 10, 9, 12, 14, 13, -1, -1, -1, -1,
                                          0, 2, 1, 4, 6, 5, 8, 10, 9, 12, 14, 13, -1, -1, -1, -1);
    __m256i p = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)s),
                                 _mm256_set1_epi16(0x0FFF)); /* bits above 12 are dropped */
    __m256i hi = _mm256_srli_epi16(p, 4);
    __m256i lo = _mm256_madd_epi16(_mm256_and_si256(p, _mm256_set1_epi16(0x000F)),
                                   _mm256_set1_epi32(0x10000100));
    __m256i v = _mm256_shuffle_epi8(_mm256_or_si256(hi, lo), shuf);
    return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7));
}

AVX2 static inline void store24(uint8_t *d, __m256i v)
{
    _mm_storeu_si128((__m128i *)d, _mm256_castsi256_si128(v));
    _mm_storel_epi64((__m128i *)(d + 16), _mm256_extracti128_si256(v, 1));
}

AVX2 static void pack_row_avx2(const uint16_t *restrict s, uint8_t *restrict d, uint32_t width)
{
    size_t nbytes = modcam_raw12_stride(width), off = 0;
    uint32_t i = 0;
    /* Each 32-byte store writes 8 bytes of junk that the next store overwrites. */
    for (; off + 24 + 32 <= nbytes; off += 48, i += 32) {
        __m256i a = pack_block(s + i), b = pack_block(s + i + 16);
        _mm256_storeu_si256((__m256i *)(d + off), a);
        _mm256_storeu_si256((__m256i *)(d + off + 24), b);
    }
    for (; i + 16 <= width; off += 24, i += 16)
        store24(d + off, pack_block(s + i));
    pack_row_scalar(s + i, d + off, width - i);
}

static int cpu_has_avx2(void)
{
    __builtin_cpu_init(); /* needed if we run before libgcc's constructors */
    return __builtin_cpu_supports("avx2");
}
#else
static int cpu_has_avx2(void) { return 0; }
#endif /* RAW12_X86 */

/* ---- dispatch: a process-wide choice, resolved on first use ---- */

static int g_impl; /* MODCAM_RAW12_IMPL_*; AUTO until first resolved */

int modcam_raw12_set_impl(int impl)
{
    if (impl == MODCAM_RAW12_IMPL_AUTO)
        impl = cpu_has_avx2() ? MODCAM_RAW12_IMPL_AVX2 : MODCAM_RAW12_IMPL_SCALAR;
    else if (impl == MODCAM_RAW12_IMPL_AVX2 && !cpu_has_avx2())
        return -ENOTSUP;
    else if (impl != MODCAM_RAW12_IMPL_SCALAR && impl != MODCAM_RAW12_IMPL_AVX2)
        return -EINVAL;
    /* Relaxed is enough: both kernels give identical results, the race on
     * first use only decides which one a concurrent caller runs. */
    __atomic_store_n(&g_impl, impl, __ATOMIC_RELAXED);
    return impl;
}

int modcam_raw12_get_impl(void)
{
    int impl = __atomic_load_n(&g_impl, __ATOMIC_RELAXED);
    return impl ? impl : modcam_raw12_set_impl(MODCAM_RAW12_IMPL_AUTO);
}

static unpack_row_fn unpack_kernel(void)
{
#ifdef RAW12_X86
    if (modcam_raw12_get_impl() == MODCAM_RAW12_IMPL_AVX2)
        return unpack_row_avx2;
#endif
    return unpack_row_scalar;
}

static pack_row_fn pack_kernel(void)
{
#ifdef RAW12_X86
    if (modcam_raw12_get_impl() == MODCAM_RAW12_IMPL_AVX2)
        return pack_row_avx2;
#endif
    return pack_row_scalar;
}

/* ---- public entry points ---- */

/* packed_stride in bytes, pixel_stride in pixels; see "Errors" in raw12.h. */
static int check_args(const void *a, const void *b, size_t packed_stride, size_t pixel_stride,
                      uint32_t width, uint32_t row0, uint32_t row1)
{
    size_t min_packed = modcam_raw12_stride(width);
    if (!a || !b || width == 0 || min_packed == 0 || row0 > row1)
        return -EINVAL;
    if (packed_stride < min_packed || pixel_stride < width)
        return -EINVAL;
    /* Row addresses are base + row * stride: refuse ranges where that wraps. */
    if (row1 > 0 && (packed_stride > SIZE_MAX / row1 ||
                     pixel_stride > SIZE_MAX / sizeof(uint16_t) / row1))
        return -EINVAL;
    return 0;
}

int modcam_raw12_unpack(const uint8_t *src, size_t src_stride,
                        uint16_t *dst, size_t dst_stride_px,
                        uint32_t width, uint32_t row0, uint32_t row1)
{
    int err = check_args(src, dst, src_stride, dst_stride_px, width, row0, row1);
    if (err)
        return err;
    unpack_row_fn row = unpack_kernel();
    for (uint32_t r = row0; r < row1; r++)
        row(src + (size_t)r * src_stride, dst + (size_t)r * dst_stride_px, width);
    return 0;
}

int modcam_raw12_pack(const uint16_t *src, size_t src_stride_px,
                      uint8_t *dst, size_t dst_stride,
                      uint32_t width, uint32_t row0, uint32_t row1)
{
    int err = check_args(src, dst, dst_stride, src_stride_px, width, row0, row1);
    if (err)
        return err;
    pack_row_fn row = pack_kernel();
    for (uint32_t r = row0; r < row1; r++)
        row(src + (size_t)r * src_stride_px, dst + (size_t)r * dst_stride, width);
    return 0;
}
