/*
 * fuzz_frame — libFuzzer harness for the per-frame checks the consumer runs
 * on every published slot, and for the CRC32C they rely on.
 *
 * Why: modcam_ring_check_frame is the only thing standing between a frame
 * header written by an untrusted producer and the consumer reading
 * payload_length bytes out of a slot, and the CRC32C decides whether those
 * bytes are handed to the application. A check that passes a header it
 * should not, or a fast CRC path that disagrees with the reference table,
 * is a memory-safety or data-integrity bug in the consumer.
 *
 * What it checks:
 *  1. modcam_ring_check_frame on an arbitrary 128-byte header (either raw,
 *     or XORed onto a valid header so the fuzzer starts next to the accept
 *     path) with a fuzzed expected_position and max_payload, and a `why`
 *     buffer of 0, 1, 8 or 256 bytes. The result is compared with a model
 *     written from the contract (modcam_ring.h: TORN for not-COMMITTED or
 *     stale, INVALID for an inconsistent header, NONE otherwise), so both
 *     directions are checked: an accepted header has payload_length <=
 *     max_payload, == stride * height, and a stride of at least the pixel
 *     format's minimum (raw12.h: 3 * ceil(width / 2) for RAW12, 2 * width
 *     for RAW16); and a consistent header is not refused. The reason text
 *     must be NUL-terminated inside its buffer (ASan sees any overrun).
 *  2. A differential test of modcam_crc32c (its hardware paths) against
 *     modcam_crc32c_portable, of modcam_copy_crc32c (copy and
 *     CRC) and modcam_stream_copy, at fuzzed source/destination alignments
 *     and lengths; canaries around the destination catch writes that stay
 *     inside the allocation where ASan cannot see them. On request the input
 *     is repeated into a buffer longer than 3 * 32768 bytes (the 3-way
 *     interleaved CRC with its shift-and-combine step) or of at least 1 MiB
 *     (the streaming-store copy, which needs a 32-byte aligned destination).
 *     Bits 6-7 of the mode byte choose the implementation through
 *     modcam_crc32c_set_impl (the CPU's best, the 3-way interleave, the
 *     256-bit fold, the 512-bit fold), so every path this CPU has is
 *     fuzzed; one the CPU lacks falls back to its best.
 *     Splitting the buffer and continuing the CRC checks the `crc` argument
 *     (CRC(a || b) == CRC(CRC(a), b)).
 *
 * Input layout (missing bytes read as zero):
 *   [0]        mode: bit0 XOR the header onto a valid template (else raw),
 *              bits1-2 why-buffer size (0/NULL, 1, 8, 256), bits3-5: 1 long
 *              buffer (> 3 * 32768), 2 huge (>= 1 MiB), others the data as is;
 *              bits6-7 CRC32C implementation (auto, SSE4.2, fold, fold512)
 *   [1..128]   frame header
 *   [129..136] expected_position (u64 LE; XORed onto the template's)
 *   [137..144] max_payload (u64 LE; XORed onto the template's)
 *   [145]      source alignment (low 6 bits)
 *   [146]      destination alignment (low 6 bits)
 *   [147..150] length (u32 LE), reduced modulo the data available
 *   [151..154] split point for the continued CRC
 *   [155..]    data for the CRC tests
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sanitizer/common_interface_defs.h>

#include "crc32c.h"
#include "modcam_ring.h"

/* libFuzzer runs the target with stderr closed (-close_fd_mask=3), so the
 * message also goes through the sanitizer's report fd, which stays open. */
#define CHECK(cond, msg)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_frame: invariant violated: %s\n", msg);      \
            __sanitizer_report_error_summary("fuzz_frame: invariant violated: " msg); \
            abort();                                                           \
        }                                                                      \
    } while (0)

#define OFF_MODE 0
#define OFF_HDR 1
#define OFF_POS 129
#define OFF_MAX 137
#define OFF_SALIGN 145
#define OFF_DALIGN 146
#define OFF_LEN 147
#define OFF_SPLIT 151
#define OFF_DATA 155

#define LONG_LEN (3u * 32768u + 4096u)  /* one interleaved block plus a tail */
#define HUGE_LEN ((1u << 20) + 3u * 32768u + 1000u) /* streaming copy, 4 blocks */

/* Reads n bytes at off, zero-filling what the input does not have. */
static void take(const uint8_t *data, size_t size, size_t off, void *out, size_t n)
{
    memset(out, 0, n);
    if (off < size)
        memcpy(out, data + off, size - off < n ? size - off : n);
}

static uint64_t take_u64(const uint8_t *data, size_t size, size_t off)
{
    uint8_t b[8];
    take(data, size, off, b, 8);
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

static uint32_t take_u32(const uint8_t *data, size_t size, size_t off)
{
    return (uint32_t)take_u64(data, size, off); /* bytes past off + 4 are masked off */
}

/* ---- 1. modcam_ring_check_frame against the contract ---- */

/* Reason the contract gives for h, written independently of modcam_ring.c. */
static int model_check(const struct modcam_frame_header *h, uint64_t expected, uint64_t max)
{
    if (h->state != MODCAM_SLOT_COMMITTED || h->position != expected)
        return MODCAM_SKIP_TORN;
    uint64_t min_stride;
    if (h->pixfmt == MODCAM_PIXFMT_RAW12_PACKED)
        min_stride = 3 * (((uint64_t)h->width + 1) / 2); /* raw12.h: 3 * ceil(w / 2) */
    else if (h->pixfmt == MODCAM_PIXFMT_RAW16)
        min_stride = 2 * (uint64_t)h->width;
    else
        return MODCAM_SKIP_INVALID;
    if (h->header_size != sizeof(*h) || h->payload_length > max || h->cfa > MODCAM_CFA_BGGR ||
        h->readout_mode > MODCAM_READOUT_ZOOM2X || h->width == 0 || h->height == 0 ||
        h->stride < min_stride || (uint64_t)h->stride * h->height != h->payload_length)
        return MODCAM_SKIP_INVALID;
    return MODCAM_SKIP_NONE;
}

static void fuzz_check_frame(const uint8_t *data, size_t size)
{
    uint8_t mode = size > OFF_MODE ? data[OFF_MODE] : 0;
    struct modcam_frame_header h;
    take(data, size, OFF_HDR, &h, sizeof(h));
    uint64_t expected = take_u64(data, size, OFF_POS);
    uint64_t max = take_u64(data, size, OFF_MAX);

    if (mode & 1) {
        /* A header the producer would write: RAW16 32x64, 4096 bytes, in a
         * 4096-byte slot at position 5. XOR keeps an all-zero input on the
         * accept path and lets single mutations probe one field at a time. */
        struct modcam_frame_header t = {
            .state = MODCAM_SLOT_COMMITTED, .header_size = sizeof(t), .position = 5,
            .sequence = 9, .width = 32, .height = 64, .stride = 64,
            .pixfmt = MODCAM_PIXFMT_RAW16, .cfa = MODCAM_CFA_GRBG,
            .readout_mode = MODCAM_READOUT_BINNED, .payload_length = 4096,
            .crc32c = 0x12345678u,
        };
        uint8_t *hb = (uint8_t *)&h;
        const uint8_t *tb = (const uint8_t *)&t;
        for (size_t i = 0; i < sizeof(h); i++)
            hb[i] ^= tb[i];
        expected ^= 5;
        max ^= 4096;
    }

    static const size_t why_sizes[4] = {0, 1, 8, 256};
    size_t whylen = why_sizes[(mode >> 1) & 3];
    /* Exactly sized heap buffer so ASan catches a write past whylen. */
    char *why = whylen ? malloc(whylen) : NULL;
    if (why)
        memset(why, 'X', whylen);

    int got = modcam_ring_check_frame(&h, expected, max, why, whylen);
    int want = model_check(&h, expected, max);
    CHECK(got == MODCAM_SKIP_NONE || got == MODCAM_SKIP_TORN || got == MODCAM_SKIP_INVALID,
          "check_frame returned an unknown reason");
    CHECK(got == want, "check_frame disagrees with the contract");
    if (got == MODCAM_SKIP_NONE) {
        /* What the consumer relies on before it reads payload_length bytes. */
        CHECK(h.payload_length <= max, "accepted payload longer than the slot");
        CHECK(h.payload_length == (uint64_t)h.stride * h.height, "accepted length != stride*height");
        uint64_t min = h.pixfmt == MODCAM_PIXFMT_RAW12_PACKED ? 3 * (((uint64_t)h.width + 1) / 2)
                                                              : 2 * (uint64_t)h.width;
        CHECK(h.stride >= min, "accepted stride below the pixel format's minimum");
    } else if (why) {
        CHECK(memchr(why, 0, whylen) != NULL, "reason not NUL-terminated inside its buffer");
        CHECK(whylen == 1 || why[0] != 0, "skip without a reason");
    }
    free(why);
}

/* ---- 2. CRC32C: hardware vs table, copy paths ---- */

static void fuzz_crc(const uint8_t *data, size_t size)
{
    uint8_t mode = size > OFF_MODE ? data[OFF_MODE] : 0;
    size_t salign = (size > OFF_SALIGN ? data[OFF_SALIGN] : 0) & 63;
    size_t dalign = (size > OFF_DALIGN ? data[OFF_DALIGN] : 0) & 63;
    uint32_t lenp = take_u32(data, size, OFF_LEN);
    uint32_t splitp = take_u32(data, size, OFF_SPLIT);
    const uint8_t *in = size > OFF_DATA ? data + OFF_DATA : NULL;
    size_t in_len = size > OFF_DATA ? size - OFF_DATA : 0;

    /* The buffer the CRC runs over: the input data as is, or repeated to a
     * long length (bits 3-5 of mode: 1 long, 2 huge; other values short, so
     * that the slow long runs stay a minority of executions). */
    unsigned size_mode = (mode >> 3) & 7;
    int longrun = size_mode == 1 || size_mode == 2;
    size_t len;
    if (longrun)
        len = (size_mode == 2 ? HUGE_LEN : LONG_LEN) - (lenp & 4095); /* above the thresholds */
    else
        len = in_len ? (size_t)lenp % (in_len + 1) : 0;

    /* Source: exactly len bytes after salign bytes of slack, so a read past
     * the end is an ASan report. Filled by doubling (the harness's own
     * per-byte loops would dominate the run time under coverage tracing),
     * then one byte per 4 KiB is changed so that the three interleaved
     * streams never see identical blocks and a swapped stream shows. */
    uint8_t *sbase = malloc(salign + len); /* malloc(0) is a valid pointer under ASan */
    uint8_t *src = sbase + salign;
    static const uint8_t filler[7] = {0x31, 0x41, 0x59, 0x26, 0x53, 0x58, 0x97};
    const uint8_t *pat = in_len ? in : filler;
    size_t pat_len = in_len ? in_len : sizeof(filler);
    size_t filled = len < pat_len ? len : pat_len;
    memcpy(src, pat, filled);
    while (filled < len) {
        size_t n = len - filled < filled ? len - filled : filled;
        memcpy(src + filled, src, n);
        filled += n;
    }
    for (size_t i = 4096; i < len; i += 4096)
        src[i] ^= (uint8_t)(i >> 12);

    static const int impls[4] = {MODCAM_CRC32C_IMPL_AUTO, MODCAM_CRC32C_IMPL_SSE42,
                                 MODCAM_CRC32C_IMPL_FOLD, MODCAM_CRC32C_IMPL_FOLD512};
    if (modcam_crc32c_set_impl(impls[mode >> 6]) != 0)
        modcam_crc32c_set_impl(MODCAM_CRC32C_IMPL_AUTO);

    uint32_t ref = modcam_crc32c_portable(0, src, len);
    uint32_t hw = modcam_crc32c(0, src, len);
    CHECK(hw == ref, "modcam_crc32c disagrees with the portable table");

    /* Continuation: CRC(a || b) == CRC(CRC(a), b), through both paths. */
    size_t split = len ? (size_t)splitp % (len + 1) : 0;
    uint32_t part = modcam_crc32c(0, src, split);
    CHECK(modcam_crc32c(part, src + split, len - split) == ref, "continued CRC differs (hw)");
    if (!longrun) { /* the table path has no length-dependent branches worth the time */
        part = modcam_crc32c_portable(0, src, split);
        CHECK(modcam_crc32c_portable(part, src + split, len - split) == ref,
              "continued CRC differs (portable)");
    }

    /* Destination: 64-byte aligned base, dalign offset, 64 canary bytes on
     * each side (inside the allocation, so only the canaries see them). */
    size_t dsize = 64 + dalign + len + 64;
    uint8_t *dbase = aligned_alloc(64, (dsize + 63) & ~(size_t)63);
    uint8_t *dst = dbase + 64 + dalign;
    memset(dbase, 0xA5, (dsize + 63) & ~(size_t)63);
    uint32_t cc = modcam_copy_crc32c(dst, src, len);
    modcam_store_fence(); /* streaming stores before we read them back */
    CHECK(cc == ref, "modcam_copy_crc32c CRC disagrees with the portable table");
    CHECK(memcmp(dst, src, len) == 0, "modcam_copy_crc32c copy differs from the source");
    for (size_t i = 0; i < 64 + dalign; i++)
        CHECK(dbase[i] == 0xA5, "modcam_copy_crc32c wrote before dst");
    for (size_t i = 0; i < 64; i++)
        CHECK(dst[len + i] == 0xA5, "modcam_copy_crc32c wrote past dst + len");

    memset(dbase, 0x5A, (dsize + 63) & ~(size_t)63);
    modcam_stream_copy(dst, src, len);
    CHECK(memcmp(dst, src, len) == 0, "modcam_stream_copy differs from the source");
    for (size_t i = 0; i < 64 + dalign; i++)
        CHECK(dbase[i] == 0x5A, "modcam_stream_copy wrote before dst");
    for (size_t i = 0; i < 64; i++)
        CHECK(dst[len + i] == 0x5A, "modcam_stream_copy wrote past dst + len");

    free(dbase);
    free(sbase);
    modcam_crc32c_set_impl(MODCAM_CRC32C_IMPL_AUTO);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_check_frame(data, size);
    fuzz_crc(data, size);
    return 0;
}
