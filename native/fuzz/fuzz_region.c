/*
 * fuzz_region — structure-aware libFuzzer harness for the consumer's
 * defences against a malicious or broken producer: region validation at
 * attach, the frame-header checks and the acquire/release/revoke loop.
 *
 * Why: modcam_ring.h promises that "a region it does not understand is
 * refused with an error, never a crash or an out-of-bounds access", and that
 * every published slot is either handed out intact or skipped and counted.
 * Random bytes almost never get past the magic, so the harness starts from
 * valid regions written by the real producer and lets the input change
 * them where it matters.
 *
 * Templates (built once, with the real producer API on a memfd): eight
 * small rings (1-4 slots, max_payload 100, 3000 or 4096) holding committed
 * RAW12/RAW16 frames with correct CRCs, a full wrapped ring with a dropped
 * frame, a bad-CRC, a torn, a short-length and an aborted (crashed
 * producer, recovered) slot, and an empty ring.
 *
 * Per input:
 *  - Optionally add a multiple of slot_count to head, tail and every slot's
 *    position (a long-running ring; free-running counters wrap at 2^64).
 *  - Overlay the input onto the 192-byte region header (head and tail
 *    included), onto the 128-byte frame headers of slots 0-3 (at the
 *    offsets the overlaid header claims when they fall inside the file,
 *    else at the template's) and onto the first 8 payload bytes of each.
 *    Overlay is XOR (an all-zero input is the valid template, so mutations
 *    stay near the accept path) or replace (compared-against values the
 *    fuzzer learns land in the field as is).
 *  - Choose the file size: what the overlaid header claims, that +- a
 *    delta, the template's +- a delta, or any size up to 1.25 MiB.
 *  (a) modcam_ring_validate_region on an exactly sized heap copy of the
 *      file; if it accepts, re-derive what acceptance must imply (geometry
 *      inside the file, head - tail <= slot_count), then run
 *      modcam_ring_check_frame on every slot and the CRC over every payload
 *      it accepts, with the consumer's bounds: ASan reports any read past
 *      the bytes the file has. A model of the consumer's loop written from
 *      the contract (check, order, CRC against the portable table) gives
 *      the frames and counts the real consumer must produce.
 *  (b) The real path: the bytes go into a memfd of the chosen size, sealed
 *      against shrinking (the consumer validated against that size; a
 *      shorter file would be a SIGBUS, which is the producer's contract,
 *      not a consumer bug). modcam_ring_consumer_attach must accept exactly
 *      when (a) did. Then acquire (timeout 0) / read every payload byte /
 *      optionally revoke (the stale view must read zeros) / release until
 *      acquire says -EAGAIN, at most slot_count + 2 times; every frame and
 *      payload must be the one the model predicts, and the stats must match
 *      it (delivered + skipped == head - initial tail <= slot_count).
 *  (c) Optionally a producer takes the region over (recover: it must accept
 *      the region the consumer accepted, and refuse one attach refused,
 *      leaving *out NULL) and publishes up to slot_count more frames into
 *      it, ringing the consumer's doorbell; the consumer drains again
 *      (through the remapped slots if revoke ran) and must still agree
 *      with the model.
 *  (d) Optionally the producer turns hostile after attach and stores any
 *      head it likes: within slot_count of the consumer's tail the consumer
 *      must walk the (stale) slots and skip or deliver them as the model
 *      says; beyond that, acquire must fail with -EPROTO, touching nothing.
 *  After detach the shared consumer line (tail, delivered, skipped) is
 *  checked against the counts.
 *  Every fd is closed and every allocation freed, so LeakSanitizer runs.
 *
 * Input layout (missing bytes read as zero, i.e. "no change"):
 *   [0]        template (modulo the number of templates)
 *   [1]        flags: bit0 replace instead of XOR, bits1-2 size mode, bit3
 *              revoke delivered frames (per revoke mask), bit4 producer
 *              phase (c), bit5 shift the indices, bit6 pass a doorbell fd,
 *              bit7 phase (d)
 *   [2]        revoke mask: frame k is revoked if bit (k % 8) is set
 *   [3..6]     size parameter (u32 LE)
 *   [7..14]    index shift (u64 LE, rounded down to a multiple of slot_count)
 *   [15..22]   phase (d): distance of the new head from the consumer's tail
 *   [23..214]  region header overlay
 *   [215..]    4 x (128-byte frame header overlay, 8 payload bytes)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <sanitizer/common_interface_defs.h>

#include "crc32c.h"
#include "modcam_ring.h"

/* libFuzzer runs the target with stderr closed (-close_fd_mask=3), so the
 * message also goes through the sanitizer's report fd, which stays open. */
#define CHECK(cond, msg)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_region: invariant violated: %s\n", msg);     \
            __sanitizer_report_error_summary("fuzz_region: invariant violated: " msg); \
            abort();                                                           \
        }                                                                      \
    } while (0)

#define OFF_TEMPLATE 0
#define OFF_FLAGS 1
#define OFF_REVOKE 2
#define OFF_SIZE 3
#define OFF_SHIFT 7
#define OFF_HEAD 15
#define OFF_REGION 23
#define OFF_SLOTS (OFF_REGION + (int)sizeof(struct modcam_ring_region))
#define OVERLAY_SLOTS 4
#define PAYLOAD_OVERLAY 8
#define SLOT_OVERLAY ((int)sizeof(struct modcam_frame_header) + PAYLOAD_OVERLAY)

#define F_REPLACE 0x01
#define F_SIZE_SHIFT 1
#define F_REVOKE 0x08
#define F_PRODUCER 0x10
#define F_SHIFT 0x20
#define F_DOORBELL 0x40
#define F_BAD_HEAD 0x80

/* Largest file: slots_offset may be up to 1 MiB, plus a few slots. Bigger
 * files only cost time: validation works on the header's numbers. */
#define SIZE_CAP ((1u << 20) + (256u << 10))
#define PAGE MODCAM_RING_PAGE

/* ---- input helpers ---- */

static uint64_t take_le(const uint8_t *data, size_t size, size_t off, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = n; i-- > 0;)
        v = v << 8 | (off + i < size ? data[off + i] : 0);
    return v;
}

/* Applies input bytes [in_off, in_off + n) to dst[0, n): XOR or replace.
 * Bytes the input does not have leave dst unchanged. */
static void overlay(uint8_t *dst, size_t n, const uint8_t *data, size_t size, size_t in_off,
                    int replace)
{
    if (in_off >= size)
        return;
    if (size - in_off < n)
        n = size - in_off;
    for (size_t i = 0; i < n; i++)
        dst[i] = replace ? data[in_off + i] : dst[i] ^ data[in_off + i];
}

/* The same onto a file image of msize bytes at offset off, clipped to it. */
static void overlay_at(uint8_t *img, size_t msize, uint64_t off, size_t n, const uint8_t *data,
                       size_t size, size_t in_off, int replace)
{
    if (off >= msize)
        return;
    if (msize - off < n)
        n = msize - off;
    overlay(img + off, n, data, size, in_off, replace);
}

static void write_all(int fd, const uint8_t *p, size_t n, uint64_t off)
{
    for (size_t done = 0; done < n;) {
        ssize_t w = pwrite(fd, p + done, n - done, (off_t)(off + done));
        CHECK(w > 0, "pwrite");
        done += (size_t)w;
    }
}

static void read_all(int fd, uint8_t *p, size_t n, uint64_t off)
{
    for (size_t done = 0; done < n;) {
        ssize_t r = pread(fd, p + done, n - done, (off_t)(off + done));
        CHECK(r > 0, "pread");
        done += (size_t)r;
    }
}

/* ---- templates ---- */

struct tmpl {
    uint8_t *bytes;
    size_t size;
    uint32_t slots;
    uint64_t slot_size;
};

#define N_TEMPLATES 8
static struct tmpl templates[N_TEMPLATES];

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

static struct modcam_frame_header meta(uint32_t pixfmt, uint32_t w, uint32_t h, uint32_t stride)
{
    struct modcam_frame_header m = {
        .width = w, .height = h, .stride = stride, .pixfmt = pixfmt, .cfa = MODCAM_CFA_BGGR,
        .readout_mode = MODCAM_READOUT_FULL, .exposure_us = 10000, .analogue_gain = 2.0f,
        .ts_boottime_ns = 123456789, .ts_realtime_ns = 1700000000000000000ull,
    };
    return m;
}

/* Publishes one frame through the copying path; want is the expected rc. */
static void put(modcam_ring_producer *p, uint32_t pixfmt, uint32_t w, uint32_t h, uint32_t stride,
                int want)
{
    struct modcam_frame_header m = meta(pixfmt, w, h, stride);
    uint64_t len = (uint64_t)stride * h;
    uint8_t *buf = malloc(len);
    fill(buf, len, w * 7919u + h);
    CHECK(modcam_ring_producer_write(p, &m, buf, len) == want, "template: producer_write");
    free(buf);
}

/* Publishes one frame through begin/commit_faulty. */
static void put_faulty(modcam_ring_producer *p, uint32_t w, uint32_t h, int fault)
{
    void *dst;
    uint64_t cap;
    CHECK(modcam_ring_producer_begin(p, &dst, &cap) == 0, "template: producer_begin");
    struct modcam_frame_header m = meta(MODCAM_PIXFMT_RAW16, w, h, 2 * w);
    fill(dst, (uint64_t)2 * w * h, w + h);
    CHECK(modcam_ring_producer_commit_faulty(p, &m, (uint64_t)2 * w * h, fault) == 0,
          "template: commit_faulty");
}

/* The consumer's releases, as the producer would see them. */
static void set_tail(modcam_ring_producer *p, uint64_t tail)
{
    __atomic_store_n(&modcam_ring_producer_region(p)->tail, tail, __ATOMIC_RELEASE);
}

static void build_template(int v, struct tmpl *t)
{
    static const struct { uint32_t slots; uint64_t max; } geo[N_TEMPLATES] = {
        {4, 4096}, {4, 4096}, {2, 4096}, {4, 4096}, {4, 4096}, {1, 100}, {2, 4096}, {4, 3000},
    };
    int fd = memfd_create("fuzz_region_template", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    CHECK(fd >= 0, "template: memfd_create");
    modcam_ring_producer *p = NULL;
    CHECK(modcam_ring_producer_create(fd, geo[v].slots, geo[v].max, &p) == 0,
          "template: producer_create");
    switch (v) {
    case 0: /* two good frames, a full-slot RAW16 and a padded RAW12 */
        put(p, MODCAM_PIXFMT_RAW16, 32, 64, 64, 0);
        put(p, MODCAM_PIXFMT_RAW12_PACKED, 40, 32, 64, 0);
        break;
    case 1: /* wrapped and full, one frame dropped (a gap in the sequence) */
        for (int i = 0; i < 3; i++)
            put(p, MODCAM_PIXFMT_RAW16, 16 + i, 8, 40, 0);
        set_tail(p, 3);
        for (int i = 0; i < 4; i++)
            put(p, MODCAM_PIXFMT_RAW12_PACKED, 21 + i, 9, 48, 0);
        put(p, MODCAM_PIXFMT_RAW16, 8, 8, 16, -ENOSPC);
        break;
    case 2: /* a good frame, then one whose CRC does not match */
        put(p, MODCAM_PIXFMT_RAW16, 64, 32, 128, 0);
        put_faulty(p, 32, 16, MODCAM_FAULT_BAD_CRC);
        break;
    case 3: /* good, torn, short, good */
        put(p, MODCAM_PIXFMT_RAW16, 10, 10, 20, 0);
        put_faulty(p, 10, 10, MODCAM_FAULT_TORN);
        put_faulty(p, 10, 10, MODCAM_FAULT_BAD_LENGTH);
        put(p, MODCAM_PIXFMT_RAW12_PACKED, 11, 10, 18, 0);
        break;
    case 4: { /* good, then the producer dies mid-write and a new one recovers */
        put(p, MODCAM_PIXFMT_RAW16, 12, 12, 24, 0);
        void *dst;
        uint64_t cap;
        CHECK(modcam_ring_producer_begin(p, &dst, &cap) == 0, "template: begin");
        memset(dst, 0x77, 100);
        modcam_ring_producer_destroy(p);
        CHECK(modcam_ring_producer_recover(fd, &p) == 0, "template: recover");
        put(p, MODCAM_PIXFMT_RAW16, 12, 12, 24, 0);
        break;
    }
    case 5: /* one slot of 100 bytes: odd width RAW12 filling 99 of them */
        put(p, MODCAM_PIXFMT_RAW12_PACKED, 5, 11, 9, 0);
        break;
    case 6: /* nothing published */
        break;
    case 7: /* max_payload not a page multiple; one frame already released */
        put(p, MODCAM_PIXFMT_RAW16, 25, 50, 60, 0);
        put(p, MODCAM_PIXFMT_RAW12_PACKED, 7, 10, 12, 0);
        put(p, MODCAM_PIXFMT_RAW16, 1, 1500, 2, 0);
        set_tail(p, 1);
        break;
    }
    struct modcam_ring_region *r = modcam_ring_producer_region(p);
    t->size = r->region_size;
    t->slots = r->slot_count;
    t->slot_size = r->slot_size;
    t->bytes = malloc(t->size);
    CHECK(pread(fd, t->bytes, t->size, 0) == (ssize_t)t->size, "template: pread");
    modcam_ring_producer_destroy(p);
    close(fd);
    CHECK(modcam_ring_validate_region((void *)t->bytes, t->size, NULL, 0) == 0,
          "template: not a valid region");
}

/* ---- model of the consumer loop ---- */

struct model {
    uint64_t delivered, torn, invalid, crc, gaps, last, resyncs;
    int have_seq;
    uint64_t n_pos;
    uint64_t pos[2 * MODCAM_RING_MAX_SLOTS]; /* delivered positions, both phases */
};

/* Sequence numbers run free like the indices (modcam_ring.h: "the consumer
 * sees an ordered sequence"), so "after" is a positive signed distance. */
static int follows(uint64_t seq, uint64_t last)
{
    return (int64_t)(seq - last) > 0;
}

/* One published slot at pos, as the contract says the consumer treats it:
 * header checks, then the frame must follow the last one in sequence (if not,
 * it is skipped and the numbering resynchronised to it), then the CRC. A
 * skipped frame's sequence number counts for gaps only if the rest of its
 * header is sound: its CRC failed, or a crashed producer left it (ABORTED or
 * WRITING at this position). */
static void model_step(struct model *m, const uint8_t *slot, uint64_t pos, uint64_t max_payload)
{
    struct modcam_frame_header h;
    memcpy(&h, slot, sizeof(h));
    int reason = modcam_ring_check_frame(&h, pos, max_payload, NULL, 0);
    if (reason == MODCAM_SKIP_NONE && m->have_seq && !follows(h.sequence, m->last)) {
        m->invalid++;
        m->resyncs++;
        m->last = h.sequence;
        return;
    }
    /* h.payload_length <= max_payload <= slot_size - PAGE here: on the
     * exactly sized copy, ASan reports a read past the file. */
    if (reason == MODCAM_SKIP_NONE &&
        modcam_crc32c_portable(0, slot + PAGE, h.payload_length) != h.crc32c)
        reason = MODCAM_SKIP_CRC;
    int trusted = reason == MODCAM_SKIP_NONE || reason == MODCAM_SKIP_CRC ||
                  (reason == MODCAM_SKIP_TORN && h.position == pos &&
                   (h.state == MODCAM_SLOT_ABORTED || h.state == MODCAM_SLOT_WRITING));
    switch (reason) {
    case MODCAM_SKIP_NONE:
        m->delivered++;
        m->pos[m->n_pos++] = pos;
        break;
    case MODCAM_SKIP_TORN:
        m->torn++;
        break;
    case MODCAM_SKIP_CRC:
        m->crc++;
        break;
    default:
        m->invalid++;
        return;
    }
    if (trusted && (reason == MODCAM_SKIP_NONE || !m->have_seq || follows(h.sequence, m->last))) {
        if (m->have_seq)
            m->gaps += h.sequence - m->last - 1;
        m->last = h.sequence;
        m->have_seq = 1;
    }
}

static void check_stats(modcam_ring_consumer *c, const struct model *m, uint64_t head,
                        uint64_t tail0)
{
    struct modcam_ring_stats st;
    modcam_ring_consumer_stats(c, &st);
    uint64_t skipped = st.skipped_torn + st.skipped_invalid + st.skipped_crc;
    CHECK(st.head == head && st.tail == head, "consumer did not drain to head");
    CHECK(st.delivered + skipped == head - tail0, "delivered + skipped != head - initial tail");
    CHECK(st.delivered == m->delivered, "delivered count differs from the model");
    CHECK(st.skipped_torn == m->torn, "torn count differs from the model");
    CHECK(st.skipped_invalid == m->invalid, "invalid count differs from the model");
    CHECK(st.skipped_crc == m->crc, "CRC-skip count differs from the model");
    CHECK(st.sequence_gaps == m->gaps, "sequence gaps differ from the model");
    CHECK(st.last_sequence == m->last, "last sequence differs from the model");
    CHECK(st.sequence_resyncs == m->resyncs, "resync count differs from the model");
    CHECK(modcam_ring_consumer_available(c) == 0, "frames available after draining");
    CHECK(memchr(modcam_ring_consumer_last_skip(c), 0, 256) != NULL, "skip reason unterminated");
    CHECK(memchr(modcam_ring_consumer_error(c), 0, 256) != NULL, "error unterminated");
}

/* Acquires until -EAGAIN; every frame must be the model's next one, read
 * from `image` (the region's bytes as the producer left them). */
static void drain(modcam_ring_consumer *c, const struct modcam_ring_region *id, const uint8_t *image,
                  const struct model *m, uint64_t *next, uint8_t revoke_mask, int revoke)
{
    uint64_t mask = id->slot_count - 1;
    int rc = 0;
    for (uint64_t k = 0; k < (uint64_t)id->slot_count + 2; k++) {
        struct modcam_frame_header h;
        const void *payload = NULL;
        rc = modcam_ring_consumer_acquire(c, &h, &payload, 0);
        if (rc != 0)
            break;
        CHECK(*next < m->n_pos, "consumer delivered a frame the model skips");
        uint64_t pos = m->pos[(*next)++];
        const uint8_t *slot = image + id->slots_offset + (pos & mask) * id->slot_size;
        CHECK(memcmp(&h, slot, sizeof(h)) == 0, "delivered header differs from the slot's");
        CHECK(h.position == pos && h.payload_length <= id->max_payload, "delivered header");
        /* Reads every payload byte through the consumer's mapping: a
         * pointer outside the slot faults or differs. */
        CHECK(memcmp(payload, slot + PAGE, h.payload_length) == 0, "delivered payload differs");
        CHECK(modcam_crc32c(0, payload, h.payload_length) == h.crc32c, "delivered bad CRC");
        const void *p2;
        struct modcam_frame_header h2;
        CHECK(modcam_ring_consumer_acquire(c, &h2, &p2, 0) == -EBUSY, "second acquire not EBUSY");
        if (revoke && (revoke_mask >> (k & 7) & 1)) {
            CHECK(modcam_ring_consumer_revoke(c) == 0, "revoke failed");
            /* The stale view reads zeros, never the frame or a later one. */
            const uint8_t *stale = payload;
            for (uint64_t i = 0; i < h.payload_length; i++)
                CHECK(stale[i] == 0, "revoked view does not read zeros");
            /* The consumer leaves the revoked range mapped for the leaked
             * view; this harness is that view's owner and drops it, or
             * the address space would fill up over millions of runs. */
            munmap((uint8_t *)stale - PAGE, id->slot_size);
        }
        CHECK(modcam_ring_consumer_release(c) == 0, "release failed");
    }
    CHECK(rc == -EAGAIN, "acquire ended with something other than -EAGAIN");
    CHECK(*next == m->n_pos, "consumer skipped a frame the model delivers");
    CHECK(modcam_ring_consumer_release(c) == -EINVAL, "release without a frame");
    CHECK(modcam_ring_consumer_revoke(c) == -EINVAL, "revoke without a frame");
}

/* ---- (c) a producer takes over and publishes more ---- */

static void producer_phase(int fd, modcam_ring_consumer *c, struct model *m, uint64_t *next,
                           uint8_t revoke_mask, int revoke, uint64_t *published)
{
    modcam_ring_producer *p = NULL;
    CHECK(modcam_ring_producer_recover(fd, &p) == 0, "recover refused a region the consumer took");
    CHECK(modcam_ring_producer_set_doorbell(p, modcam_ring_consumer_doorbell(c)) == 0,
          "set_doorbell");
    struct modcam_ring_region *r = modcam_ring_producer_region(p);
    struct modcam_ring_region id = *r;
    uint64_t tail0 = id.tail;
    uint64_t max = id.max_payload;
    if (max >= 2) {
        /* RAW16, one row per frame, sized to the slot. */
        uint32_t w = max / 2 < 40 ? (uint32_t)(max / 2) : 40;
        uint8_t buf[80];
        for (uint32_t i = 0; i < id.slot_count && i < 8; i++) {
            fill(buf, sizeof(buf), i + 1);
            struct modcam_frame_header mt = meta(MODCAM_PIXFMT_RAW16, w - i % w, 1, 2 * w);
            int rc = modcam_ring_producer_write(p, &mt, buf, 2 * w);
            CHECK(rc == 0 || rc == -ENOSPC, "producer_write on a recovered region");
        }
    }
    uint64_t head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    /* tail0 is where the consumer stopped: recover's ABORTED slot (if any)
     * and the new frames are all published after it. */
    CHECK(head - tail0 <= id.slot_count, "producer overran the consumer");
    *published = head - tail0;
    uint64_t mask = id.slot_count - 1;
    const uint8_t *image = (const uint8_t *)r;
    for (uint64_t pos = tail0; pos != head; pos++)
        model_step(m, image + id.slots_offset + (pos & mask) * id.slot_size, pos, max);
    drain(c, &id, image, m, next, revoke_mask, revoke);
    modcam_ring_producer_destroy(p);
}

/* ---- (d) a hostile producer moves head after attach ---- */

/* Returns the head the consumer ends at (its tail). */
static uint64_t bad_head_phase(int fd, size_t n, modcam_ring_consumer *c,
                               const struct modcam_ring_region *id, struct model *m,
                               uint64_t *next, uint64_t delta, uint8_t revoke_mask, int revoke)
{
    struct modcam_ring_stats st0, st;
    modcam_ring_consumer_stats(c, &st0);
    uint64_t tail = st0.tail, head = tail + delta;
    write_all(fd, (const uint8_t *)&head, sizeof(head), offsetof(struct modcam_ring_region, head));
    if (delta > id->slot_count) {
        /* Out of range: refused, every time, with nothing consumed. */
        for (int i = 0; i < 2; i++) {
            struct modcam_frame_header h;
            const void *p = NULL;
            CHECK(modcam_ring_consumer_acquire(c, &h, &p, 0) == -EPROTO,
                  "consumer accepted a head beyond slot_count");
        }
        CHECK(modcam_ring_consumer_error(c)[0], "-EPROTO without a reason");
        CHECK(modcam_ring_consumer_available(c) == 0, "frames available from a corrupt head");
        modcam_ring_consumer_stats(c, &st);
        CHECK(st.tail == tail && st.delivered == st0.delivered &&
              st.skipped_torn == st0.skipped_torn && st.skipped_invalid == st0.skipped_invalid &&
              st.skipped_crc == st0.skipped_crc, "a corrupt head moved the consumer");
        return tail;
    }
    /* In range: the slots hold whatever the last lap (or the input) left;
     * the model reads the file as the consumer's mapping shows it. */
    uint8_t *now = malloc(n);
    read_all(fd, now, n, 0);
    for (uint64_t pos = tail; pos != head; pos++)
        model_step(m, now + id->slots_offset + (pos & (id->slot_count - 1)) * id->slot_size, pos,
                   id->max_payload);
    drain(c, id, now, m, next, revoke_mask, revoke);
    free(now);
    return head;
}

/* ---- the target ---- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int built;
    if (!built) {
        for (int v = 0; v < N_TEMPLATES; v++)
            build_template(v, &templates[v]);
        built = 1;
    }
    const struct tmpl *t = &templates[take_le(data, size, OFF_TEMPLATE, 1) % N_TEMPLATES];
    unsigned flags = (unsigned)take_le(data, size, OFF_FLAGS, 1);
    uint8_t revoke_mask = (uint8_t)take_le(data, size, OFF_REVOKE, 1);
    uint32_t size_param = (uint32_t)take_le(data, size, OFF_SIZE, 4);
    int replace = flags & F_REPLACE;

    /* Region header: template, shifted indices, overlay. */
    struct modcam_ring_region hdr;
    memcpy(&hdr, t->bytes, sizeof(hdr));
    uint64_t shift = 0;
    if (flags & F_SHIFT)
        shift = take_le(data, size, OFF_SHIFT, 8) & ~(uint64_t)(t->slots - 1);
    hdr.head += shift;
    hdr.tail += shift;
    overlay((uint8_t *)&hdr, sizeof(hdr), data, size, OFF_REGION, replace);

    /* File size, chosen before anything maps it and never changed after. */
    int64_t delta = (int16_t)(size_param & 0xffff);
    int64_t msize;
    switch ((flags >> F_SIZE_SHIFT) & 3) {
    case 0:
        msize = hdr.region_size <= SIZE_CAP ? (int64_t)hdr.region_size : (int64_t)t->size;
        break;
    case 1:
        msize = hdr.region_size <= SIZE_CAP ? (int64_t)hdr.region_size + delta
                                            : (int64_t)t->size + delta;
        break;
    case 2:
        msize = (int64_t)t->size + delta;
        break;
    default:
        msize = size_param % (SIZE_CAP + 1);
        break;
    }
    if (msize < 0)
        msize = 0;
    if (msize > SIZE_CAP)
        msize = SIZE_CAP;
    size_t n = (size_t)msize;

    /* The file image, exactly n bytes: template (truncated or zero-extended),
     * shifted slot positions, the overlaid header, the slot overlays. */
    uint8_t *img = malloc(n ? n : 1);
    memset(img, 0, n);
    memcpy(img, t->bytes, t->size < n ? t->size : n);
    for (uint32_t i = 0; i < t->slots; i++) {
        uint64_t off = PAGE + i * t->slot_size + offsetof(struct modcam_frame_header, position);
        if (off + 8 <= n) {
            uint64_t pos;
            memcpy(&pos, img + off, 8);
            pos += shift;
            memcpy(img + off, &pos, 8);
        }
    }
    memcpy(img, &hdr, sizeof(hdr) < n ? sizeof(hdr) : n);
    for (unsigned i = 0; i < OVERLAY_SLOTS; i++) {
        uint64_t off;
        if (__builtin_mul_overflow(hdr.slot_size, (uint64_t)i, &off) ||
            __builtin_add_overflow(off, hdr.slots_offset, &off) || off >= n)
            off = PAGE + i * t->slot_size; /* the claimed geometry is off the file */
        size_t in = OFF_SLOTS + (size_t)i * SLOT_OVERLAY;
        overlay_at(img, n, off, sizeof(struct modcam_frame_header), data, size, in, replace);
        overlay_at(img, n, off + PAGE, PAYLOAD_OVERLAY, data, size,
                   in + sizeof(struct modcam_frame_header), replace);
    }

    /* (a) Validation on the exact bytes; the image is the mapping. */
    char err[256];
    int vrc = modcam_ring_validate_region((const struct modcam_ring_region *)img, n, err,
                                          sizeof(err));
    CHECK(vrc == 0 || vrc == -EPROTO, "validate_region returned an unknown code");
    struct model *m = calloc(1, sizeof(*m));
    struct modcam_ring_region id;
    memset(&id, 0, sizeof(id));
    if (vrc == 0) {
        memcpy(&id, img, sizeof(id));
        /* What acceptance promises the consumer, re-derived here. */
        uint32_t sc = id.slot_count;
        CHECK(id.magic == MODCAM_RING_MAGIC && id.version == MODCAM_RING_VERSION, "identity");
        CHECK(sc >= 1 && sc <= MODCAM_RING_MAX_SLOTS && (sc & (sc - 1)) == 0, "slot count");
        CHECK(id.max_payload >= 1 && id.max_payload <= MODCAM_RING_MAX_PAYLOAD, "max payload");
        CHECK(id.slot_size >= PAGE + id.max_payload && id.slot_size % PAGE == 0, "slot size");
        CHECK(id.slots_offset >= PAGE && id.slots_offset % PAGE == 0, "slots offset");
        CHECK(id.slots_offset + (uint64_t)sc * id.slot_size <= n, "slots past the file");
        CHECK(id.region_size <= n, "region larger than the file");
        CHECK(id.head - id.tail <= sc, "head - tail out of range");
        /* Every slot header that passes the check, whatever its position:
         * its payload must lie inside the slot (ASan on the exact copy). */
        for (uint32_t i = 0; i < sc; i++) {
            const uint8_t *slot = img + id.slots_offset + (uint64_t)i * id.slot_size;
            struct modcam_frame_header h;
            memcpy(&h, slot, sizeof(h));
            char why[64];
            if (modcam_ring_check_frame(&h, h.position, id.max_payload, why, sizeof(why)) ==
                MODCAM_SKIP_NONE) {
                uint32_t crc = modcam_crc32c(0, slot + PAGE, h.payload_length);
                CHECK(crc == modcam_crc32c_portable(0, slot + PAGE, h.payload_length),
                      "hardware CRC differs from the table on a slot");
            } else {
                CHECK(memchr(why, 0, sizeof(why)) && why[0], "skip without a reason");
            }
        }
        /* The published range, as the consumer must treat it. */
        for (uint64_t pos = id.tail; pos != id.head; pos++)
            model_step(m, img + id.slots_offset + (pos & (sc - 1)) * id.slot_size, pos,
                       id.max_payload);
    } else {
        CHECK(memchr(err, 0, sizeof(err)) && err[0], "refusal without a reason");
    }

    /* (b) The real path, on a memfd of exactly n bytes sealed at that size. */
    int fd = memfd_create("fuzz_region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    CHECK(fd >= 0, "memfd_create");
    CHECK(ftruncate(fd, (off_t)n) == 0, "ftruncate");
    write_all(fd, img, n, 0);
    CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0, "seal");
    int bell = -1;
    if (flags & F_DOORBELL) {
        bell = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        CHECK(bell >= 0, "eventfd");
    }
    modcam_ring_consumer *c = NULL;
    char aerr[256] = "";
    int arc = modcam_ring_consumer_attach(fd, bell, &c, aerr, sizeof(aerr));
    if (bell >= 0)
        close(bell); /* attach duplicated it */
    CHECK((arc == 0) == (vrc == 0), "attach and validate_region disagree");
    if (arc != 0) {
        CHECK(c == NULL && aerr[0], "failed attach without a reason or with a consumer");
        if (flags & F_PRODUCER) {
            /* recover trusts the region no more than attach does: a new
             * producer must refuse it too, without touching it. */
            modcam_ring_producer *p = (modcam_ring_producer *)&p;
            CHECK(modcam_ring_producer_recover(fd, &p) < 0 && p == NULL,
                  "recover took a region attach refused");
        }
    } else {
        CHECK(c != NULL && modcam_ring_consumer_doorbell(c) >= 0, "attach");
        CHECK(modcam_ring_consumer_available(c) == id.head - id.tail, "available after attach");
        uint64_t next = 0, published = 0;
        int revoke = (flags & F_REVOKE) != 0;
        drain(c, &id, img, m, &next, revoke_mask, revoke);
        check_stats(c, m, id.head, id.tail);
        uint64_t head = id.head;
        if (flags & F_PRODUCER) {
            producer_phase(fd, c, m, &next, revoke_mask, revoke, &published);
            head += published;
            struct modcam_ring_stats st;
            modcam_ring_consumer_stats(c, &st);
            check_stats(c, m, st.head, id.tail);
            CHECK(st.head == head, "head moved by other than what was published");
        }
        if (flags & F_BAD_HEAD) {
            uint64_t delta = take_le(data, size, OFF_HEAD, 8);
            /* Returns where the consumer's tail ends: the new head, or
             * where it was if the head was refused. */
            head = bad_head_phase(fd, n, c, &id, m, &next, delta, revoke_mask, revoke);
            if (delta <= id.slot_count)
                check_stats(c, m, head, id.tail);
        }
        modcam_ring_consumer_detach(c);

        /* The consumer line in shared memory agrees with the counts. */
        struct modcam_ring_region after;
        read_all(fd, (uint8_t *)&after, sizeof(after), 0);
        CHECK(after.tail == head, "shared tail is not head after draining");
        CHECK(after.delivered - id.delivered == m->delivered, "shared delivered count");
        CHECK(after.skipped - id.skipped == m->torn + m->invalid + m->crc, "shared skipped count");
        CHECK(after.consumer_pid == (uint32_t)getpid(), "consumer pid");
    }
    close(fd);
    free(m);
    free(img);
    return 0;
}
