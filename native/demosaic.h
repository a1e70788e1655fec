/*
 * demosaic — Bayer CFA to RGB, the ISP's demosaic kernels.
 *
 * CONTRACT
 *
 * Input. A uint16 CFA image of `width` x `height` pixels, both even and >= 2,
 * addressed by its row 0 and a row stride in pixels (>= width).
 * `cfa_pattern` names the colours of the top-left 2x2 cell, numbered as enum
 * modcam_cfa in modcam_ring.h (the frame header's `cfa` field): RGGB 0,
 * GRBG 1, GBRG 2, BGGR 3. Any 16-bit values are accepted (12-bit sensor
 * data, or data scaled to the full 16-bit range).
 *
 * Strips. One call computes output rows [row0, row1) and writes them to
 * `rgb`, which points at the output row for row0 (a strip buffer: row r of
 * the image lands at rgb + (r - row0) * rgb_stride). Output pixels are
 * interleaved R, G, B uint16; rgb_stride is in uint16 elements (>= 3 *
 * width). Nothing outside those rows' 3 * width elements is written. The
 * output must not overlap the CFA.
 *
 * Borders. The image is treated as extended by mirror reflection without
 * repeating the edge pixel (numpy mode "reflect": pixel -1 is pixel 1, W is
 * W - 2), which keeps the CFA phase. Every output pixel is a function of that
 * extended image only, so a strip equals the same rows of a whole-frame call
 * bit for bit, whatever the strip boundaries. A call reads the CFA rows it
 * needs (up to 7 rows above row0 and below row1, reflected back into the
 * image), never anything outside rows [0, height) and columns [0, width).
 *
 * Methods.
 *   MODCAM_DEMOSAIC_HIGH: gradient-based, threshold-free green interpolation
 *   (four one-sided directions, after Pekkucuksen & Altunbasak 2010) and
 *   colour-difference interpolation of red and blue (edge-weighted along the
 *   diagonals); computed in float32, rounded half up, clamped to [0, 65535]
 *   (interpolated values can overshoot the input's range at sharp edges;
 *   sampled values pass through unchanged). See demosaic.c.
 *   MODCAM_DEMOSAIC_BILINEAR: bilinear interpolation in exact integer
 *   arithmetic (averages of 2 or 4 neighbours, rounded half up), for preview
 *   and autofocus.
 *
 * Memory. The high method allocates about 370 KiB of scratch per call
 * (independent of the image size); bilinear allocates nothing.
 *
 * Threads. A call is single-threaded and keeps no state between calls apart
 * from the implementation choice; several threads may run calls on disjoint
 * output strips of one image concurrently. Strips shorter than ~64 rows cost
 * extra work for the high method (each call recomputes ~14 rows of halo).
 *
 * Errors. 0 on success; -EINVAL for a NULL pointer, an odd or zero size, a
 * stride below the minimum, row0 > row1 or row1 > height, an unknown cfa or
 * method, or sizes whose byte offsets would not fit in size_t; -ENOMEM if the
 * scratch cannot be allocated. An empty range with valid arguments returns 0.
 *
 * Implementations. The kernels are written once with GNU C vector types and
 * compiled twice: for the CPU baseline (portable; SSE2 on x86-64) and with
 * AVX2, chosen at run time. Both perform the same IEEE operations in the same
 * order (no FMA contraction), so they give identical results bit for bit.
 * modcam_demosaic_set_impl() forces one, for tests and benchmarks; it is
 * process-wide and not meant for production code.
 */
#ifndef MODCAM_DEMOSAIC_H
#define MODCAM_DEMOSAIC_H

#include <stddef.h>
#include <stdint.h>

enum {
    MODCAM_DEMOSAIC_HIGH = 0,     /* high quality (GBTF-style green, colour differences) */
    MODCAM_DEMOSAIC_BILINEAR = 1, /* fast bilinear, integer */
};

enum {
    MODCAM_DEMOSAIC_IMPL_AUTO = 0,     /* best the CPU supports */
    MODCAM_DEMOSAIC_IMPL_PORTABLE = 1, /* GNU C vectors for the baseline ISA */
    MODCAM_DEMOSAIC_IMPL_AVX2 = 2,     /* the same kernels compiled for AVX2 */
};

/* Demosaic output rows [row0, row1) of a CFA image into interleaved RGB. */
int modcam_demosaic(const uint16_t *cfa, size_t cfa_stride_px,
                    uint32_t width, uint32_t height, int cfa_pattern, int method,
                    uint32_t row0, uint32_t row1,
                    uint16_t *rgb, size_t rgb_stride);

/* Force an implementation (MODCAM_DEMOSAIC_IMPL_*). Returns the one now
 * active, -ENOTSUP if the CPU lacks it, -EINVAL if unknown. */
int modcam_demosaic_set_impl(int impl);

/* The implementation in use (PORTABLE or AVX2). */
int modcam_demosaic_get_impl(void);

#endif /* MODCAM_DEMOSAIC_H */
