/*
 * raw12 — MIPI CSI-2 RAW12 pack/unpack, the sensor's wire format.
 *
 * CONTRACT
 *
 * Packing. Two pixels in three bytes:
 *     byte0 = P0[11:4]   byte1 = P1[11:4]   byte2 = P1[3:0] << 4 | P0[3:0]
 * A row of `width` pixels takes modcam_raw12_stride(width) = 3 * ceil(width/2)
 * bytes; for an odd width the last group carries P0 and a zero P1.
 *
 * Images and strips. Every call takes the address of row 0 of a whole image,
 * the row strides and a half-open row range [row0, row1): only those rows are
 * read and written, so several threads (or one thread, strip after strip) can
 * work on disjoint ranges of one frame. Rows outside the range are untouched.
 * Packed strides are in bytes and may exceed the minimum (the padding bytes
 * are neither read by unpack nor written by pack); pixel strides are in
 * pixels (uint16_t) and may exceed `width`.
 *
 * Memory. Per row, unpack reads exactly the first modcam_raw12_stride(width)
 * bytes and writes exactly `width` pixels; pack reads exactly `width` pixels
 * and writes exactly modcam_raw12_stride(width) bytes. Nothing past a row's
 * data is touched, even by the SIMD kernels, so the last row of a shared
 * memory slot may end at the last byte of the mapping. Source and
 * destination must not overlap.
 *
 * Values. Unpacked pixels are always in [0, 4095]. Pack masks each input
 * pixel to its low 12 bits (bits 15..12 are ignored, not clamped): the
 * sensor is 12-bit, and masking is what the wire would do with wider data.
 *
 * Errors. The functions return 0, or -EINVAL when a pointer is NULL, width
 * is 0, row0 > row1, a stride is below the minimum, or row1 * stride would
 * not fit in size_t. An empty range with valid arguments returns 0.
 *
 * Implementations. An AVX2 kernel is chosen at run time when the CPU has it
 * (the extension is built without -march), otherwise portable C.
 * modcam_raw12_set_impl() forces one, for tests that compare the two; it is
 * process-wide and not meant for production code.
 */
#ifndef MODCAM_RAW12_H
#define MODCAM_RAW12_H

#include <stddef.h>
#include <stdint.h>

enum {
    MODCAM_RAW12_IMPL_AUTO = 0,   /* best the CPU supports */
    MODCAM_RAW12_IMPL_SCALAR = 1, /* portable C */
    MODCAM_RAW12_IMPL_AVX2 = 2,   /* x86 AVX2 (pshufb) */
};

/* Minimum packed row length in bytes: 3 * ceil(width / 2); 0 if it would
 * not fit in size_t (32-bit hosts only). */
size_t modcam_raw12_stride(uint32_t width);

/* Unpack rows [row0, row1) of a packed image into uint16 pixels. */
int modcam_raw12_unpack(const uint8_t *src, size_t src_stride,
                        uint16_t *dst, size_t dst_stride_px,
                        uint32_t width, uint32_t row0, uint32_t row1);

/* Pack rows [row0, row1) of a uint16 image (low 12 bits) into RAW12. */
int modcam_raw12_pack(const uint16_t *src, size_t src_stride_px,
                      uint8_t *dst, size_t dst_stride,
                      uint32_t width, uint32_t row0, uint32_t row1);

/* Force an implementation (MODCAM_RAW12_IMPL_*). Returns the implementation
 * now active, or -ENOTSUP if the CPU lacks it, -EINVAL if unknown. */
int modcam_raw12_set_impl(int impl);

/* The implementation in use (SCALAR or AVX2). */
int modcam_raw12_get_impl(void);

#endif /* MODCAM_RAW12_H */
