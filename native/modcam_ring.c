/*
 * modcam_ring — implementation. The contract and the layout are in
 * modcam_ring.h; this file follows it and checks it with _Static_assert.
 */
#define _GNU_SOURCE
#include "modcam_ring.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ring_internal.h"

API uint64_t modcam_ring_region_size(uint32_t slot_count, uint64_t max_payload)
{
    if (slot_count == 0 || slot_count > MODCAM_RING_MAX_SLOTS || (slot_count & (slot_count - 1)))
        return 0;
    if (max_payload == 0 || max_payload > MODCAM_RING_MAX_PAYLOAD)
        return 0;
    /* Bounded above: 1024 * (4 GiB + 8 KiB) + 4 KiB < 2^43, no overflow. */
    return MODCAM_RING_PAGE + (uint64_t)slot_count * (MODCAM_RING_PAGE + page_round(max_payload));
}

/* ---- validation (shared by attach, recover and the fuzzer) ---- */

API int modcam_ring_validate_region(const struct modcam_ring_region *r, uint64_t mapped_size,
                                    char *err, size_t errlen)
{
#define BAD(...) do { fmt(err, errlen, __VA_ARGS__); return -EPROTO; } while (0)
    if (mapped_size < sizeof(*r))
        BAD("region is %" PRIu64 " bytes, smaller than its %zu-byte header", mapped_size, sizeof(*r));
    if (r->magic != MODCAM_RING_MAGIC)
        BAD("bad magic 0x%016" PRIx64 ": not a modcam ring", r->magic);
    if (r->version != MODCAM_RING_VERSION)
        BAD("ring version %" PRIu32 " is not supported (this build speaks %u)", r->version,
            MODCAM_RING_VERSION);
    if (r->header_size != sizeof(*r) || r->frame_header_size != sizeof(struct modcam_frame_header))
        BAD("header sizes %" PRIu32 "/%" PRIu32 " do not match this build (%zu/%zu)",
            r->header_size, r->frame_header_size, sizeof(*r), sizeof(struct modcam_frame_header));
    uint32_t n = r->slot_count;
    if (n == 0 || n > MODCAM_RING_MAX_SLOTS || (n & (n - 1)))
        BAD("slot count %" PRIu32 " is not a power of two in 1..%u", n, MODCAM_RING_MAX_SLOTS);
    if (r->max_payload == 0 || r->max_payload > MODCAM_RING_MAX_PAYLOAD)
        BAD("max payload %" PRIu64 " is out of range", r->max_payload);
    if (r->slot_size != MODCAM_RING_PAGE + page_round(r->max_payload))
        BAD("slot size %" PRIu64 " does not hold a page of header and %" PRIu64 " bytes of payload",
            r->slot_size, r->max_payload);
    if (r->slots_offset < MODCAM_RING_PAGE || r->slots_offset % MODCAM_RING_PAGE ||
        r->slots_offset > (1u << 20))
        BAD("slots offset %" PRIu64 " is not a page multiple in 4 KiB..1 MiB", r->slots_offset);
    uint64_t need = r->slots_offset + (uint64_t)n * r->slot_size;
    if (r->region_size != need)
        BAD("region size %" PRIu64 " disagrees with its geometry (%" PRIu64 ")", r->region_size, need);
    if (need > mapped_size)
        BAD("region claims %" PRIu64 " bytes but only %" PRIu64 " are there", need, mapped_size);
    uint64_t head = LOAD_ACQ(&r->head), tail = LOAD_ACQ(&r->tail);
    if (head - tail > n)
        BAD("indices out of range: head %" PRIu64 ", tail %" PRIu64 " for %" PRIu32 " slots",
            head, tail, n);
    return 0;
#undef BAD
}

static uint64_t min_stride(uint32_t pixfmt, uint32_t width)
{
    if (pixfmt == MODCAM_PIXFMT_RAW12_PACKED)
        return 3 * (((uint64_t)width + 1) / 2);
    return 2 * (uint64_t)width;
}

API int modcam_ring_check_frame(const struct modcam_frame_header *h, uint64_t expected_position,
                                uint64_t max_payload, char *why, size_t whylen)
{
    if (h->state != MODCAM_SLOT_COMMITTED) {
        fmt(why, whylen, "frame %" PRIu64 " at position %" PRIu64 " is %s", h->sequence,
            expected_position, h->state == MODCAM_SLOT_ABORTED ? "aborted (producer crashed mid-write)"
                                                               : "not committed");
        return MODCAM_SKIP_TORN;
    }
    if (h->position != expected_position) {
        fmt(why, whylen, "stale slot: published at position %" PRIu64 ", expected %" PRIu64,
            h->position, expected_position);
        return MODCAM_SKIP_TORN;
    }
    if (h->header_size != sizeof(*h)) {
        fmt(why, whylen, "frame %" PRIu64 ": header size %" PRIu32 ", expected %zu", h->sequence,
            h->header_size, sizeof(*h));
        return MODCAM_SKIP_INVALID;
    }
    if (h->payload_length > max_payload) {
        fmt(why, whylen, "frame %" PRIu64 ": payload of %" PRIu64 " bytes exceeds the slot's %" PRIu64,
            h->sequence, h->payload_length, max_payload);
        return MODCAM_SKIP_INVALID;
    }
    if (h->pixfmt != MODCAM_PIXFMT_RAW12_PACKED && h->pixfmt != MODCAM_PIXFMT_RAW16) {
        fmt(why, whylen, "frame %" PRIu64 ": unknown pixel format %" PRIu32, h->sequence, h->pixfmt);
        return MODCAM_SKIP_INVALID;
    }
    if (h->cfa > MODCAM_CFA_BGGR || h->readout_mode > MODCAM_READOUT_ZOOM2X) {
        fmt(why, whylen, "frame %" PRIu64 ": unknown CFA %" PRIu32 " or readout mode %" PRIu32,
            h->sequence, h->cfa, h->readout_mode);
        return MODCAM_SKIP_INVALID;
    }
    if (h->width == 0 || h->height == 0 || h->stride < min_stride(h->pixfmt, h->width)) {
        fmt(why, whylen, "frame %" PRIu64 ": geometry %" PRIu32 "x%" PRIu32 " stride %" PRIu32
            " is inconsistent", h->sequence, h->width, h->height, h->stride);
        return MODCAM_SKIP_INVALID;
    }
    if ((uint64_t)h->stride * h->height != h->payload_length) {
        fmt(why, whylen, "frame %" PRIu64 ": truncated: %" PRIu64 " bytes for %" PRIu32
            " rows of %" PRIu32, h->sequence, h->payload_length, h->height, h->stride);
        return MODCAM_SKIP_INVALID;
    }
    return MODCAM_SKIP_NONE;
}

/* ---- producer ---- */

struct modcam_ring_producer {
    struct modcam_ring_region *r;
    uint8_t *base;
    uint64_t size;
    int doorbell;
    uint32_t mask;
    uint64_t slot_size, max_payload;
    uint64_t head, tail_cache;
    int writing;
};


static int producer_map(int fd, uint64_t size, modcam_ring_producer **out)
{
    modcam_ring_producer *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);  /* sparse: pages commit as slots fill */
    if (m == MAP_FAILED) {
        int e = -errno;
        free(p);
        return e;
    }
    p->base = m;
    p->r = m;
    p->size = size;
    p->doorbell = -1;
    *out = p;
    return 0;
}

static void producer_load(modcam_ring_producer *p)
{
    struct modcam_ring_region *r = p->r;
    p->mask = r->slot_count - 1;
    p->slot_size = r->slot_size;
    p->max_payload = r->max_payload;
    p->head = r->head;
    p->tail_cache = LOAD_ACQ(&r->tail);
    r->producer_pid = (uint32_t)getpid();
    r->generation++;
}

API int modcam_ring_producer_create(int fd, uint32_t slot_count, uint64_t max_payload,
                                    modcam_ring_producer **out)
{
    *out = NULL;
    uint64_t size = modcam_ring_region_size(slot_count, max_payload);
    if (!size)
        return -EINVAL;
    /* Truncate to zero first so a reused file starts with clean slots. */
    if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)size) < 0)
        return -errno;
    /* A sealed memfd cannot be shrunk under the consumer (SIGBUS). Files
     * that do not support seals (tmpfs paths) answer EINVAL: fine. */
    (void)fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
    modcam_ring_producer *p = NULL;
    int rc = producer_map(fd, size, &p);
    if (rc)
        return rc;
    struct modcam_ring_region *r = p->r;
    r->version = MODCAM_RING_VERSION;
    r->header_size = sizeof(*r);
    r->slot_count = slot_count;
    r->frame_header_size = sizeof(struct modcam_frame_header);
    r->max_payload = max_payload;
    r->slot_size = MODCAM_RING_PAGE + page_round(max_payload);
    r->slots_offset = MODCAM_RING_PAGE;
    r->region_size = size;
    STORE_REL(&r->magic, MODCAM_RING_MAGIC); /* identity complete */
    producer_load(p);
    *out = p;
    return 0;
}

API int modcam_ring_producer_recover(int fd, modcam_ring_producer **out)
{
    *out = NULL;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if ((uint64_t)st.st_size < MODCAM_RING_PAGE)
        return -EPROTO;
    struct modcam_ring_region hdr;
    if (pread(fd, &hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr))
        return -EPROTO;
    if (modcam_ring_validate_region(&hdr, (uint64_t)st.st_size, NULL, 0))
        return -EPROTO;
    modcam_ring_producer *p = NULL;
    int rc = producer_map(fd, hdr.region_size, &p);
    if (rc)
        return rc;
    producer_load(p);
    struct modcam_ring_region *r = p->r;
    struct modcam_frame_header *h =
        slot_header(p->base, r->slots_offset, p->slot_size, p->head & p->mask);
    if (h->state == MODCAM_SLOT_WRITING && p->head - p->tail_cache < r->slot_count) {
        /* The previous producer died mid-write: publish the slot as ABORTED
         * so the consumer can count the lost frame. */
        h->position = p->head;
        h->sequence = r->next_sequence++;
        STORE_REL(&h->state, MODCAM_SLOT_ABORTED);
        r->aborted++;
        STORE_REL(&r->head, ++p->head);
    }
    *out = p;
    return 0;
}

API void modcam_ring_producer_destroy(modcam_ring_producer *p)
{
    if (!p)
        return;
    if (p->doorbell >= 0)
        close(p->doorbell);
    munmap(p->base, p->size);
    free(p);
}

API int modcam_ring_producer_set_doorbell(modcam_ring_producer *p, int efd)
{
    int dup = -1;
    if (efd >= 0 && (dup = fcntl(efd, F_DUPFD_CLOEXEC, 3)) < 0)
        return -errno;
    if (p->doorbell >= 0)
        close(p->doorbell);
    p->doorbell = dup;
    return 0;
}

API struct modcam_ring_region *modcam_ring_producer_region(modcam_ring_producer *p)
{
    return p->r;
}

API int modcam_ring_producer_begin(modcam_ring_producer *p, void **payload, uint64_t *capacity)
{
    struct modcam_ring_region *r = p->r;
    if (p->writing)
        return -EBUSY;
    if (p->head - p->tail_cache >= r->slot_count) {
        p->tail_cache = LOAD_ACQ(&r->tail);
        /* A consumer index ahead of head is as good as full: never overwrite. */
        if (p->head - p->tail_cache >= r->slot_count) {
            r->next_sequence++;
            r->dropped++;
            return -ENOSPC;
        }
    }
    struct modcam_frame_header *h =
        slot_header(p->base, r->slots_offset, p->slot_size, p->head & p->mask);
    h->state = MODCAM_SLOT_WRITING;
    p->writing = 1;
    *payload = (uint8_t *)h + MODCAM_RING_PAGE;
    *capacity = p->max_payload;
    return 0;
}

static void ring_doorbell(modcam_ring_producer *p)
{
    if (p->doorbell < 0)
        return;
    uint64_t one = 1;
    /* EAGAIN means the counter is saturated: the consumer is awake anyway. */
    ssize_t n = write(p->doorbell, &one, sizeof(one));
    (void)n;
}

static int publish(modcam_ring_producer *p, const struct modcam_frame_header *meta,
                   uint64_t length, uint32_t crc, uint32_t state)
{
    struct modcam_ring_region *r = p->r;
    struct modcam_frame_header *h =
        slot_header(p->base, r->slots_offset, p->slot_size, p->head & p->mask);
    struct modcam_frame_header out = *meta;
    out.state = MODCAM_SLOT_WRITING;
    out.header_size = sizeof(out);
    out.position = p->head;
    out.sequence = r->next_sequence++;
    out.payload_length = length;
    out.crc32c = crc;
    memcpy(h, &out, sizeof(out));
    modcam_store_fence(); /* streaming stores of the payload before the state */
    STORE_REL(&h->state, state);
    STORE_REL(&r->head, ++p->head);
    if (state == MODCAM_SLOT_COMMITTED)
        r->written++;
    p->writing = 0;
    ring_doorbell(p);
    return 0;
}

static int meta_ok(const struct modcam_frame_header *meta, uint64_t length, uint64_t max)
{
    struct modcam_frame_header h = *meta;
    h.state = MODCAM_SLOT_COMMITTED;
    h.header_size = sizeof(h);
    h.position = 0;
    h.payload_length = length;
    return modcam_ring_check_frame(&h, 0, max, NULL, 0) == MODCAM_SKIP_NONE;
}

API int modcam_ring_producer_commit(modcam_ring_producer *p, const struct modcam_frame_header *meta,
                                    uint64_t length)
{
    if (!p->writing)
        return -EINVAL;
    if (!meta_ok(meta, length, p->max_payload))
        return -EINVAL;
    uint8_t *payload = (uint8_t *)slot_header(p->base, p->r->slots_offset, p->slot_size,
                                              p->head & p->mask) + MODCAM_RING_PAGE;
    return publish(p, meta, length, modcam_crc32c(0, payload, length), MODCAM_SLOT_COMMITTED);
}

API int modcam_ring_producer_abort(modcam_ring_producer *p)
{
    if (!p->writing)
        return -EINVAL;
    slot_header(p->base, p->r->slots_offset, p->slot_size, p->head & p->mask)->state =
        MODCAM_SLOT_EMPTY;
    p->writing = 0;
    return 0;
}

API int modcam_ring_producer_write(modcam_ring_producer *p, const struct modcam_frame_header *meta,
                                   const void *payload, uint64_t length)
{
    if (!meta_ok(meta, length, p->max_payload))
        return -EINVAL;
    void *dst;
    uint64_t cap;
    int rc = modcam_ring_producer_begin(p, &dst, &cap);
    if (rc)
        return rc;
    uint32_t crc = modcam_copy_crc32c(dst, payload, length);
    return publish(p, meta, length, crc, MODCAM_SLOT_COMMITTED);
}

API int modcam_ring_producer_commit_faulty(modcam_ring_producer *p,
                                           const struct modcam_frame_header *meta,
                                           uint64_t length, int fault)
{
    if (!p->writing)
        return -EINVAL;
    uint8_t *payload = (uint8_t *)slot_header(p->base, p->r->slots_offset, p->slot_size,
                                              p->head & p->mask) + MODCAM_RING_PAGE;
    uint64_t len = length <= p->max_payload ? length : p->max_payload;
    uint32_t crc = modcam_crc32c(0, payload, len);
    switch (fault) {
    case MODCAM_FAULT_TORN:
        return publish(p, meta, length, crc, MODCAM_SLOT_WRITING);
    case MODCAM_FAULT_BAD_CRC:
        return publish(p, meta, length, crc ^ 0x5a5a5a5au, MODCAM_SLOT_COMMITTED);
    case MODCAM_FAULT_BAD_LENGTH:
        return publish(p, meta, length / 2, crc, MODCAM_SLOT_COMMITTED);
    }
    return -EINVAL;
}
