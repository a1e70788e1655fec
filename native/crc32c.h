/*
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78) — the ring's payload
 * checksum, the same one iSCSI, ext4 and btrfs use, because x86 (SSE4.2) and
 * ARMv8 compute it in hardware.
 *
 * On x86-64 with SSE4.2 three independent streams are interleaved (the
 * crc32 instruction has a latency of 3 cycles and a throughput of 1) and
 * combined with a multiplication modulo the polynomial; elsewhere a
 * slicing-by-8 table is used. The implementation is chosen at run time, so
 * the extension needs no -march flag.
 */
#ifndef MODCAM_CRC32C_H
#define MODCAM_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Standard CRC32C of data, continuing from crc (start with 0). */
uint32_t modcam_crc32c(uint32_t crc, const void *data, size_t len);
/* Copy len bytes and return their CRC32C, in one pass over memory. Large
 * copies into a 32-byte aligned dst use streaming (non-temporal) stores, as
 * a frame is not read again by this CPU; the caller must order them before
 * publishing (the ring issues an sfence). */
uint32_t modcam_copy_crc32c(void *dst, const void *src, size_t len);
/* The same copy without the checksum, to measure what the CRC costs. */
void modcam_stream_copy(void *dst, const void *src, size_t len);
/* Table implementation, always available (tests compare against it). */
uint32_t modcam_crc32c_portable(uint32_t crc, const void *data, size_t len);
/* Tests only: force an implementation (the three give the same results).
 * Returns 0, or -ENOTSUP if this CPU lacks it. Not thread-safe. */
enum modcam_crc32c_impl {
    MODCAM_CRC32C_IMPL_AUTO = 0,
    MODCAM_CRC32C_IMPL_PORTABLE = 1,
    MODCAM_CRC32C_IMPL_SSE42 = 2, /* crc32 instruction, 3 streams; AVX2 streaming copy */
    MODCAM_CRC32C_IMPL_FOLD = 3,  /* VPCLMULQDQ folding, 256-bit registers */
    MODCAM_CRC32C_IMPL_FOLD512 = 4, /* the same with AVX-512 registers */
};
int modcam_crc32c_set_impl(int impl);
/* Store fence after streaming stores (a no-op where they are not used). */
void modcam_store_fence(void);

#endif
