/*
 * modcam_ring — the consumer half: attach and validate, wait on the doorbell,
 * hand out verified slots zero-copy, release, revoke. The producer is not
 * trusted: identity fields are copied once at attach and never re-read, every
 * frame header is copied out of shared memory before it is checked.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ring_internal.h"

struct mapping {
    void *addr;
    size_t len;
};

struct modcam_ring_consumer {
    struct modcam_ring_region *r; /* header page, read-write (tail lives there) */
    uint8_t *slots;               /* all slots, read-only */
    uint8_t **slot_map;           /* where each slot is mapped now (revoke moves it) */
    struct mapping *moved;        /* slots mapped afresh by revoke */
    size_t n_moved;
    int fd, doorbell;
    uint32_t count, mask;
    uint64_t slot_size, max_payload, slots_offset, region_size;
    uint64_t tail, head_cache;
    int holding;
    struct modcam_ring_stats st;
    int have_seq;
    char err[256], skip[256];
};

static void consumer_free(modcam_ring_consumer *c)
{
    if (c->slots) {
        /* A revoked range still backs a leaked view with zero pages: leave
         * it mapped (address space only) so that view never faults. */
        for (uint32_t i = 0; i < c->count; i++) {
            uint8_t *home = c->slots + (uint64_t)i * c->slot_size;
            if (c->slot_map && c->slot_map[i] == home)
                munmap(home, c->slot_size);
        }
    }
    for (size_t i = 0; i < c->n_moved; i++) {
        uint8_t *a = c->moved[i].addr;
        for (uint32_t s = 0; s < c->count; s++)
            if (c->slot_map[s] == a)
                munmap(a, c->moved[i].len);
    }
    if (c->r)
        munmap(c->r, MODCAM_RING_PAGE);
    if (c->doorbell >= 0)
        close(c->doorbell);
    if (c->fd >= 0)
        close(c->fd);
    free(c->slot_map);
    free(c->moved);
    free(c);
}

static int attach_fail(modcam_ring_consumer *c, int rc, char *err, size_t errlen)
{
    fmt(err, errlen, "%s", c->err);
    consumer_free(c);
    return rc;
}

static int map_slots(modcam_ring_consumer *c)
{
    uint64_t len = (uint64_t)c->count * c->slot_size;
    void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, c->fd, (off_t)c->slots_offset);
    if (m == MAP_FAILED) {
        fmt(c->err, sizeof(c->err), "cannot map %" PRIu64 " bytes of slots: %s", len,
            strerror(errno));
        return -errno;
    }
    c->slots = m;
    c->slot_map = calloc(c->count, sizeof(*c->slot_map));
    if (!c->slot_map)
        return -ENOMEM;
    for (uint32_t i = 0; i < c->count; i++)
        c->slot_map[i] = c->slots + (uint64_t)i * c->slot_size;
    return 0;
}

API int modcam_ring_consumer_attach(int fd, int doorbell_fd, modcam_ring_consumer **out,
                                    char *err, size_t errlen)
{
    *out = NULL;
    modcam_ring_consumer *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->doorbell = -1;
    c->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (c->fd < 0) {
        fmt(c->err, sizeof(c->err), "bad region fd %d: %s", fd, strerror(errno));
        return attach_fail(c, -EBADF, err, errlen);
    }
    struct stat st;
    if (fstat(c->fd, &st) < 0 || (uint64_t)st.st_size < MODCAM_RING_PAGE) {
        fmt(c->err, sizeof(c->err), "region is %lld bytes, smaller than its header page",
            (long long)st.st_size);
        return attach_fail(c, -EPROTO, err, errlen);
    }
    void *m = mmap(NULL, MODCAM_RING_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
    if (m == MAP_FAILED) {
        fmt(c->err, sizeof(c->err), "cannot map the region header: %s", strerror(errno));
        return attach_fail(c, -errno, err, errlen);
    }
    c->r = m;
    struct modcam_ring_region id;
    memcpy(&id, c->r, sizeof(id));
    if (modcam_ring_validate_region(&id, (uint64_t)st.st_size, c->err, sizeof(c->err)))
        return attach_fail(c, -EPROTO, err, errlen);
    c->count = id.slot_count;
    c->mask = id.slot_count - 1;
    c->slot_size = id.slot_size;
    c->max_payload = id.max_payload;
    c->slots_offset = id.slots_offset;
    c->region_size = id.region_size;
    c->tail = LOAD_ACQ(&c->r->tail);
    c->head_cache = c->tail;
    int rc = map_slots(c);
    if (rc)
        return attach_fail(c, rc, err, errlen);
    c->doorbell = doorbell_fd < 0 ? eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
                                  : fcntl(doorbell_fd, F_DUPFD_CLOEXEC, 3);
    if (c->doorbell < 0) {
        fmt(c->err, sizeof(c->err), "cannot set up the doorbell: %s", strerror(errno));
        return attach_fail(c, -errno, err, errlen);
    }
    c->r->consumer_pid = (uint32_t)getpid();
    *out = c;
    return 0;
}

API void modcam_ring_consumer_detach(modcam_ring_consumer *c)
{
    if (c)
        consumer_free(c);
}

API int modcam_ring_consumer_doorbell(modcam_ring_consumer *c)
{
    return c->doorbell;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleep on the doorbell until it rings or the deadline passes, then drain
 * it. The caller re-checks head afterwards: the producer rings after
 * publishing, so a ring that arrived before the drain is never lost. */
static int wait_doorbell(modcam_ring_consumer *c, int64_t deadline)
{
    for (;;) {
        int left = -1;
        if (deadline >= 0) {
            int64_t d = deadline - now_ms();
            if (d <= 0)
                return -EAGAIN;
            left = d > 1000000 ? 1000000 : (int)d;
        }
        struct pollfd pfd = {.fd = c->doorbell, .events = POLLIN};
        int n = poll(&pfd, 1, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EAGAIN;
        uint64_t v;
        ssize_t rd = read(c->doorbell, &v, sizeof(v));
        (void)rd;
        return 0;
    }
}

/* Refresh head; 1 if a frame is published, 0 if none, -EPROTO if corrupt. */
static int poll_head(modcam_ring_consumer *c)
{
    if (c->tail != c->head_cache)
        return 1;
    uint64_t head = LOAD_ACQ(&c->r->head);
    if (head - c->tail > c->count) {
        fmt(c->err, sizeof(c->err),
            "ring corrupt: head %" PRIu64 " is not within %" PRIu32 " slots of tail %" PRIu64,
            head, c->count, c->tail);
        return -EPROTO;
    }
    c->head_cache = head;
    return head != c->tail;
}

static void advance(modcam_ring_consumer *c)
{
    STORE_REL(&c->r->tail, ++c->tail);
}

/* Sequence numbers run free like the indices: compare by signed distance. */
static int follows(uint64_t seq, uint64_t last)
{
    return (int64_t)(seq - last) > 0;
}

static void note_skip(modcam_ring_consumer *c, int reason, const struct modcam_frame_header *h)
{
    if (reason == MODCAM_SKIP_TORN)
        c->st.skipped_torn++;
    else if (reason == MODCAM_SKIP_CRC)
        c->st.skipped_crc++;
    else
        c->st.skipped_invalid++;
    c->r->skipped++;
    /* A skipped frame keeps its place in the sequence only if the rest of its
     * header checked out: its payload failed the CRC, or a crashed producer
     * left it (ABORTED or WRITING at the right position). Any other header
     * is noise, and a noisy sequence number must not move last_sequence. */
    int trusted = reason == MODCAM_SKIP_CRC ||
                  (reason == MODCAM_SKIP_TORN && h->position == c->tail &&
                   (h->state == MODCAM_SLOT_ABORTED || h->state == MODCAM_SLOT_WRITING));
    if (trusted && (!c->have_seq || follows(h->sequence, c->st.last_sequence))) {
        if (c->have_seq)
            c->st.sequence_gaps += h->sequence - c->st.last_sequence - 1;
        c->st.last_sequence = h->sequence;
        c->have_seq = 1;
    }
    advance(c);
}

/* Checks the slot at tail. Returns MODCAM_SKIP_NONE if it can be handed out. */
static int inspect(modcam_ring_consumer *c, struct modcam_frame_header *h, const uint8_t **payload)
{
    const uint8_t *slot = c->slot_map[c->tail & c->mask];
    memcpy(h, slot, sizeof(*h));
    int reason = modcam_ring_check_frame(h, c->tail, c->max_payload, c->skip, sizeof(c->skip));
    if (reason != MODCAM_SKIP_NONE)
        return reason;
    if (c->have_seq && !follows(h->sequence, c->st.last_sequence)) {
        /* The producer's numbering went back (a producer that re-created the
         * region) or last_sequence was poisoned: skip this one frame and
         * follow the new numbering, so one bad number costs one frame. */
        fmt(c->skip, sizeof(c->skip), "frame %" PRIu64 " does not follow frame %" PRIu64
            "; numbering resynchronised", h->sequence, c->st.last_sequence);
        c->st.last_sequence = h->sequence;
        c->st.sequence_resyncs++;
        return MODCAM_SKIP_INVALID;
    }
    *payload = slot + MODCAM_RING_PAGE;
    uint32_t crc = modcam_crc32c(0, *payload, h->payload_length);
    if (crc != h->crc32c) {
        fmt(c->skip, sizeof(c->skip), "frame %" PRIu64 ": payload CRC32C 0x%08" PRIx32
            " does not match its header's 0x%08" PRIx32, h->sequence, crc, h->crc32c);
        return MODCAM_SKIP_CRC;
    }
    return MODCAM_SKIP_NONE;
}

API int modcam_ring_consumer_acquire(modcam_ring_consumer *c, struct modcam_frame_header *hdr,
                                     const void **payload, int timeout_ms)
{
    if (c->holding)
        return -EBUSY;
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int ready = poll_head(c);
        if (ready < 0)
            return ready;
        if (!ready) {
            int rc = wait_doorbell(c, deadline);
            if (rc)
                return rc;
            continue;
        }
        struct modcam_frame_header h;
        const uint8_t *data = NULL;
        int reason = inspect(c, &h, &data);
        if (reason != MODCAM_SKIP_NONE) {
            note_skip(c, reason, &h);
            continue;
        }
        if (c->have_seq)
            c->st.sequence_gaps += h.sequence - c->st.last_sequence - 1;
        c->st.last_sequence = h.sequence;
        c->have_seq = 1;
        c->st.delivered++;
        c->r->delivered++;
        c->holding = 1;
        *hdr = h;
        *payload = data;
        return 0;
    }
}

API int modcam_ring_consumer_release(modcam_ring_consumer *c)
{
    if (!c->holding)
        return -EINVAL;
    c->holding = 0;
    advance(c);
    return 0;
}

API int modcam_ring_consumer_revoke(modcam_ring_consumer *c)
{
    if (!c->holding)
        return -EINVAL;
    uint32_t i = c->tail & c->mask;
    uint8_t *old = c->slot_map[i];
    struct mapping *grown = realloc(c->moved, (c->n_moved + 1) * sizeof(*grown));
    if (!grown)
        return -ENOMEM;
    c->moved = grown;
    void *fresh = mmap(NULL, c->slot_size, PROT_READ, MAP_SHARED, c->fd,
                       (off_t)(c->slots_offset + (uint64_t)i * c->slot_size));
    if (fresh == MAP_FAILED)
        return -errno;
    /* Same addresses, now private zero pages: a stale view reads zeros. */
    if (mmap(old, c->slot_size, PROT_READ, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) ==
        MAP_FAILED) {
        int e = -errno;
        munmap(fresh, c->slot_size);
        return e;
    }
    c->moved[c->n_moved++] = (struct mapping){fresh, c->slot_size};
    c->slot_map[i] = fresh;
    return 0;
}

API void modcam_ring_consumer_stats(modcam_ring_consumer *c, struct modcam_ring_stats *out)
{
    *out = c->st;
    out->written = c->r->written;
    out->dropped = c->r->dropped;
    out->aborted = c->r->aborted;
    out->head = LOAD_ACQ(&c->r->head);
    out->tail = c->tail;
}

API const char *modcam_ring_consumer_error(modcam_ring_consumer *c)
{
    return c->err;
}

API const char *modcam_ring_consumer_last_skip(modcam_ring_consumer *c)
{
    return c->skip;
}

API uint64_t modcam_ring_consumer_available(modcam_ring_consumer *c)
{
    uint64_t head = LOAD_ACQ(&c->r->head);
    uint64_t n = head - c->tail;
    return n > c->count ? 0 : n;
}
