/*
 * Helpers shared by the ring's producer and consumer halves; not public API.
 */
#ifndef MODCAM_RING_INTERNAL_H
#define MODCAM_RING_INTERNAL_H

#include <stdarg.h>
#include <stdio.h>

#include "modcam_ring.h"

#define API __attribute__((visibility("default")))

_Static_assert(sizeof(struct modcam_frame_header) == 128, "frame header is 128 bytes");
_Static_assert(sizeof(struct modcam_ring_region) == 192, "region header is three cache lines");
_Static_assert(offsetof(struct modcam_ring_region, head) == 64, "producer line starts at 64");
_Static_assert(offsetof(struct modcam_ring_region, tail) == 128, "consumer line starts at 128");
_Static_assert(sizeof(struct modcam_ring_region) <= MODCAM_RING_PAGE, "header fits its page");
_Static_assert(offsetof(struct modcam_frame_header, state) == 0, "state leads the frame header");

#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

static inline uint64_t page_round(uint64_t n)
{
    return (n + MODCAM_RING_PAGE - 1) & ~(uint64_t)(MODCAM_RING_PAGE - 1);
}

static inline void fmt(char *buf, size_t len, const char *f, ...) __attribute__((format(printf, 3, 4)));
static inline void fmt(char *buf, size_t len, const char *f, ...)
{
    if (!buf || !len)
        return;
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, len, f, ap);
    va_end(ap);
}

static inline struct modcam_frame_header *slot_header(uint8_t *base, uint64_t slots_offset,
                                                      uint64_t slot_size, uint64_t index)
{
    return (struct modcam_frame_header *)(base + slots_offset + index * slot_size);
}

#endif
