/*
 * modcam_ring — a single-producer / single-consumer ring of frame slots in
 * shared memory, between the module side (producer) and modcamd (consumer).
 *
 * CONTRACT
 *
 * Roles. Exactly one producer and one consumer, usually in two processes.
 * The producer creates the region (a memfd or a file under /dev/shm) and
 * formats it; the consumer attaches to it by fd (inherited or received over
 * SCM_RIGHTS) or by path. The consumer never trusts the region: every field
 * it reads is validated before use, and a region it does not understand is
 * refused with an error, never a crash or an out-of-bounds access.
 *
 * Indices. `head` (written only by the producer) counts frames published;
 * `tail` (written only by the consumer) counts frames released. Both are
 * free-running uint64 counters; slot i lives at index (i & (slot_count-1)),
 * slot_count being a power of two. head - tail is the number of published,
 * unreleased slots and is always in [0, slot_count]; a consumer that reads
 * anything else declares the region corrupt. Each side keeps a cached copy of
 * the other side's index and reloads it only when the cache says the ring is
 * full (producer) or empty (consumer). The two indices live on separate cache
 * lines.
 *
 * Ordering.
 *  - Producer: writes the payload and the frame header into slot
 *    (head & mask), stores slot.state = COMMITTED with RELEASE, then stores
 *    head + 1 with RELEASE. A slot being written is therefore never visible to
 *    the consumer: it only ever looks at slots below head.
 *  - Consumer: loads head with ACQUIRE (publishes the slot contents), copies
 *    the frame header out of shared memory before validating it (the producer
 *    is not trusted not to change it), checks state, position, geometry and
 *    CRC32C, hands the slot out, and on release stores tail + 1 with RELEASE
 *    (publishes "slot free" to the producer, which loads tail with ACQUIRE).
 *
 * Full ring. The producer never blocks: when head - tail == slot_count the
 * newest frame is dropped, counted in `dropped`, and its sequence number is
 * consumed, so the consumer sees an ordered sequence with the gap visible.
 *
 * Torn frames. A producer killed mid-write leaves slot (head & mask) in state
 * WRITING and head unchanged, so nothing torn is published. The producer that
 * takes the region over (modcam_ring_producer_recover) publishes that slot as
 * ABORTED, so the consumer recognises the lost frame, skips it and counts it.
 * A published slot whose state, position, geometry or CRC does not check out
 * is likewise skipped and counted, with the reason kept for inspection.
 *
 * Wake-up. The consumer owns an eventfd (the doorbell). The producer writes 1
 * to it after every publish; the consumer polls it (GLib can watch it) and
 * drains it before re-checking head, so no wake-up is lost. There is no
 * polling loop anywhere. Without a doorbell the producer publishes silently
 * and a waiting consumer only returns on its timeout.
 *
 * Zero copy. modcam_ring_consumer_acquire hands out a pointer into the
 * shared slot; it stays valid until modcam_ring_consumer_release. Slots are
 * mapped read-only in the consumer. If a reference to a released slot may
 * still exist (a leaked Python view), modcam_ring_consumer_revoke replaces
 * that slot's pages in the consumer's address space with zero pages and maps
 * the slot afresh elsewhere: the stale view reads zeros, never a later frame.
 *
 * Ownership. Every object returned by a *_create/_attach/_recover function is
 * freed by the matching *_destroy/_detach. The region fd passed in is
 * duplicated: the caller keeps and closes its own. Functions return 0 or a
 * negative errno; the consumer keeps a human-readable reason for the last
 * error and the last skip.
 *
 * LAYOUT (all little-endian, offsets in bytes)
 *
 *   0      struct modcam_ring_region     one page: identity (immutable after
 *          create), producer line, consumer line
 *   4096   slot 0: [frame header page 4096][payload, max_payload rounded up
 *          to the page size]
 *   ...    slot n at slots_offset + n * slot_size
 */
#ifndef MODCAM_RING_H
#define MODCAM_RING_H

#include <stddef.h>
#include <stdint.h>

#include "crc32c.h"

#define MODCAM_RING_MAGIC 0x474e4952434d444dULL /* "MDMCRING" little-endian */
#define MODCAM_RING_VERSION 1u
#define MODCAM_RING_PAGE 4096u
#define MODCAM_RING_MAX_SLOTS 1024u
#define MODCAM_RING_MAX_PAYLOAD (1ull << 32) /* 4 GiB per frame */

enum modcam_pixfmt {
    MODCAM_PIXFMT_RAW12_PACKED = 1, /* MIPI CSI-2 RAW12: 3 bytes per 2 pixels */
    MODCAM_PIXFMT_RAW16 = 2,        /* 12-bit samples in little-endian uint16 */
};

enum modcam_cfa {
    MODCAM_CFA_RGGB = 0,
    MODCAM_CFA_GRBG = 1,
    MODCAM_CFA_GBRG = 2,
    MODCAM_CFA_BGGR = 3,
};

enum modcam_readout {
    MODCAM_READOUT_FULL = 0,
    MODCAM_READOUT_BINNED = 1,
    MODCAM_READOUT_ZOOM2X = 2,
};

enum modcam_slot_state {
    MODCAM_SLOT_EMPTY = 0,
    MODCAM_SLOT_WRITING = 1,
    MODCAM_SLOT_COMMITTED = 2,
    MODCAM_SLOT_ABORTED = 3,
};

/* Frame flags (informational, set by the producer). */
#define MODCAM_FRAME_FLAG_THERMAL_WARNING 0x1u
#define MODCAM_FRAME_FLAG_STILL 0x2u /* a triggered still, not a stream frame */

/* Why the consumer skipped a published slot. */
enum modcam_skip_reason {
    MODCAM_SKIP_NONE = 0,
    MODCAM_SKIP_TORN = 1,    /* not COMMITTED (aborted or never finished) or stale */
    MODCAM_SKIP_INVALID = 2, /* header inconsistent: length, geometry, format */
    MODCAM_SKIP_CRC = 3,     /* payload CRC32C mismatch */
};

/* The header at the start of every slot. 128 bytes. The producer fills the
 * metadata fields; the ring fills state, position, sequence, payload_length
 * and crc32c. */
struct modcam_frame_header {
    uint32_t state;          /* enum modcam_slot_state, stored last (release) */
    uint32_t header_size;    /* sizeof(struct modcam_frame_header) */
    uint64_t position;       /* ring index this slot was published at */
    uint64_t sequence;       /* frame number; gaps are dropped frames */
    uint64_t ts_boottime_ns; /* CLOCK_BOOTTIME at start of exposure */
    uint64_t ts_realtime_ns; /* CLOCK_REALTIME at start of exposure */
    uint32_t width;          /* pixels */
    uint32_t height;         /* rows */
    uint32_t stride;         /* bytes per row in the payload */
    uint32_t pixfmt;         /* enum modcam_pixfmt */
    uint32_t cfa;            /* enum modcam_cfa */
    uint32_t readout_mode;   /* enum modcam_readout */
    uint32_t exposure_us;
    float analogue_gain;
    float lens_position;     /* dioptres (1/m), 0 = infinity */
    float aperture;          /* f-number */
    float temperature_c;     /* sensor temperature */
    uint32_t flags;          /* MODCAM_FRAME_FLAG_* */
    uint64_t payload_length; /* bytes of payload, == stride * height */
    uint32_t crc32c;         /* CRC32C (Castagnoli) of the payload */
    uint32_t reserved0;
    uint8_t reserved[24];
};

struct modcam_ring_region {
    /* Identity: written once by modcam_ring_producer_create. */
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;       /* sizeof(struct modcam_ring_region) */
    uint32_t slot_count;        /* power of two, <= MODCAM_RING_MAX_SLOTS */
    uint32_t frame_header_size; /* sizeof(struct modcam_frame_header) */
    uint64_t slot_size;         /* bytes per slot, page multiple */
    uint64_t slots_offset;      /* offset of slot 0, page multiple */
    uint64_t max_payload;       /* largest payload a slot holds */
    uint64_t region_size;       /* slots_offset + slot_count * slot_size */
    uint8_t pad0[64 - 56];

    /* Producer line: written only by the producer. */
    uint64_t head;          /* frames published (atomic, release) */
    uint64_t next_sequence; /* sequence number of the next frame offered */
    uint64_t written;       /* frames published COMMITTED */
    uint64_t dropped;       /* frames dropped because the ring was full */
    uint64_t aborted;       /* frames published ABORTED after a crash */
    uint32_t producer_pid;
    uint32_t generation;    /* bumped by every create/recover */
    uint8_t pad1[64 - 48];

    /* Consumer line: written only by the consumer. */
    uint64_t tail;      /* frames released (atomic, release) */
    uint64_t delivered; /* frames handed out */
    uint64_t skipped;   /* published frames skipped (torn, invalid, CRC) */
    uint32_t consumer_pid;
    uint8_t pad2[64 - 28];
};

struct modcam_ring_stats {
    /* as claimed by the producer (shared memory, informational) */
    uint64_t written;
    uint64_t dropped;
    uint64_t aborted;
    /* as counted by this consumer */
    uint64_t delivered;
    uint64_t skipped_torn;
    uint64_t skipped_invalid;
    uint64_t skipped_crc;
    uint64_t sequence_gaps; /* frames never seen: sum of gaps in sequence */
    uint64_t sequence_resyncs; /* frames whose number did not follow: numbering restarted */
    uint64_t last_sequence;
    uint64_t head;
    uint64_t tail;
};

typedef struct modcam_ring_producer modcam_ring_producer;
typedef struct modcam_ring_consumer modcam_ring_consumer;

/* Bytes of region needed for the geometry; 0 if it is not valid. */
uint64_t modcam_ring_region_size(uint32_t slot_count, uint64_t max_payload);

/* Producer. create: formats a fresh region on fd (truncated to size; a
 * memfd is sealed against shrinking). recover: takes over a region a
 * previous producer left, publishing its unfinished slot as ABORTED. */
int modcam_ring_producer_create(int fd, uint32_t slot_count, uint64_t max_payload,
                                modcam_ring_producer **out);
int modcam_ring_producer_recover(int fd, modcam_ring_producer **out);
void modcam_ring_producer_destroy(modcam_ring_producer *p);
/* Doorbell eventfd of the consumer (duplicated); -1 removes it. */
int modcam_ring_producer_set_doorbell(modcam_ring_producer *p, int efd);
/* Copy a frame in (CRC computed on the way) and publish it.
 * Returns 0, -ENOSPC when the ring was full (frame dropped and counted),
 * -EINVAL for a header inconsistent with the length. */
int modcam_ring_producer_write(modcam_ring_producer *p, const struct modcam_frame_header *meta,
                               const void *payload, uint64_t length);
/* Zero-copy write: begin returns the next slot's payload pointer (or -ENOSPC,
 * frame dropped and counted); the caller fills it, then commit publishes it
 * with the metadata (CRC computed over the slot) or abort discards it. */
int modcam_ring_producer_begin(modcam_ring_producer *p, void **payload, uint64_t *capacity);
int modcam_ring_producer_commit(modcam_ring_producer *p, const struct modcam_frame_header *meta,
                                uint64_t length);
int modcam_ring_producer_abort(modcam_ring_producer *p);
/* Fault injection for the virtual module and tests: publish the slot under
 * write as a crashed producer's (left WRITING), with a CRC that does not
 * match, or with a payload length shorter than its geometry. */
int modcam_ring_producer_commit_faulty(modcam_ring_producer *p,
                                       const struct modcam_frame_header *meta,
                                       uint64_t length, int fault);
#define MODCAM_FAULT_TORN 1
#define MODCAM_FAULT_BAD_CRC 2
#define MODCAM_FAULT_BAD_LENGTH 3
struct modcam_ring_region *modcam_ring_producer_region(modcam_ring_producer *p);

/* Consumer. attach validates the region and maps it (slots read-only);
 * doorbell_fd -1 creates an eventfd, otherwise it is duplicated. On failure
 * *out is NULL, the result is negative and err holds the reason. */
int modcam_ring_consumer_attach(int fd, int doorbell_fd, modcam_ring_consumer **out,
                                char *err, size_t errlen);
void modcam_ring_consumer_detach(modcam_ring_consumer *c);
int modcam_ring_consumer_doorbell(modcam_ring_consumer *c);
/* Wait up to timeout_ms (-1 forever, 0 no wait) for the next valid frame,
 * skipping (and counting) invalid ones. 0: frame handed out (a validated
 * copy of its header in *hdr, payload pointer in *payload); -EAGAIN: timed
 * out; -EBUSY: a frame is already held; -EPROTO: the region is corrupt
 * (reason in modcam_ring_consumer_error). cffi drops the GIL around it. */
int modcam_ring_consumer_acquire(modcam_ring_consumer *c, struct modcam_frame_header *hdr,
                                 const void **payload, int timeout_ms);
int modcam_ring_consumer_release(modcam_ring_consumer *c);
/* Replace the held slot's pages in this process with zero pages and map
 * that slot afresh elsewhere; call before release when a view of the
 * payload may outlive the lease. */
int modcam_ring_consumer_revoke(modcam_ring_consumer *c);
void modcam_ring_consumer_stats(modcam_ring_consumer *c, struct modcam_ring_stats *out);
const char *modcam_ring_consumer_error(modcam_ring_consumer *c);
const char *modcam_ring_consumer_last_skip(modcam_ring_consumer *c);
/* Published frames not yet released (includes a held one). */
uint64_t modcam_ring_consumer_available(modcam_ring_consumer *c);

/* Validation of a region header copy against the bytes that back it (attach
 * and recover use it; exported for the fuzzer and tests). 0 or -EPROTO with
 * the reason in err. */
int modcam_ring_validate_region(const struct modcam_ring_region *r, uint64_t mapped_size,
                                char *err, size_t errlen);
/* Validation of a frame header copy published at expected_position.
 * Returns a modcam_skip_reason (MODCAM_SKIP_NONE if usable). */
int modcam_ring_check_frame(const struct modcam_frame_header *h, uint64_t expected_position,
                            uint64_t max_payload, char *why, size_t whylen);

#endif
