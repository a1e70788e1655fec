/*
 * isp_kernels — the ISP's fused per-row kernels on either side of the demosaic.
 *
 * CONTRACT
 *
 * CFA side, modcam_isp_cfa(): for image rows [row0, row1) it reads either a
 * packed RAW12 row (packed != NULL) or a uint16 CFA row (cfa != NULL; exactly
 * one of the two), and writes one uint16 row of `out` per image row (out
 * points at the output row for row0), fusing in one pass per row:
 *     unpack -> minus black -> x gain(x, y) -> round half up, clamp to [0, 65535].
 * The gain folds lens shading, white balance and the scale to full range;
 * it is separable into a horizontal part the caller precomputes once per
 * frame and a vertical lerp done here, so the row loop vectorises fully:
 * `hgain` is [2][grid_rows][width] floats, the gain along each shading-grid
 * row for even (0) and odd (1) image rows (each column's own CFA channel),
 * and grid_y[y] the (clamped here) grid coordinate of image row y:
 *     gain(x, y) = lerp(hgain[y & 1][iy][x], hgain[y & 1][iy + 1][x], fy)
 * with iy = floor(grid_y[y]) (at most grid_rows - 2), fy the remainder.
 * Every output pixel depends only on its own input pixel and (x, y): strips
 * are exact.
 * Defective pixels are not handled here (see pipeline.py: few, done on the
 * strip buffer while it is in cache).
 *
 * RGB side, modcam_isp_rgb(): `rows` rows of interleaved uint16 RGB (linear
 * camera RGB, full scale 65535) to interleaved uint8 RGB: a 3x3 matrix
 * (row-major, camera -> linear sRGB), clamp to [0, 65535], round, then a
 * MODCAM_ISP_LUT_SIZE-entry uint8 LUT indexed by round(v * (SIZE - 1) / 65535)
 * (the tone curve and sRGB gamma; 16 KiB stays in L1 for the gathers).
 *
 * Finishing, modcam_isp_finish(): `rows_in` rows of interleaved uint8 RGB
 * holding the output rows plus one halo row above (unless pad_top: the
 * strip starts at the image's top row) and below (unless pad_bottom); at an
 * image edge, and at the left and right, the image is mirrored (row -1 is
 * row 1). Writes rows_in - !pad_top - !pad_bottom rows to `out`:
 *     Y = 0.299 R + 0.587 G + 0.114 B, S = 3x3 mean of (R, G, B), Ys = Y(S)
 *     Y' = Y + sharpen (Y - Ys)                   (luma unsharp mask, 0..4)
 *     C' = (RGB - Y) + denoise ((S - Ys) - (RGB - Y))  (chroma smoothing, 0..1)
 *     out = clamp(round(Y' + C'), 0, 255)
 * Cheap (one pass, in cache) rather than strong: enough to tame the
 * colour noise of high analogue gains, and keep edges crisp after the
 * demosaic; luminance noise is left alone on purpose.
 *
 * Errors: 0, -EINVAL for NULL pointers or bad sizes, -ENOMEM when the
 * per-call scratch (12 bytes per RGB column) cannot be allocated.
 *
 * Threads: no state; calls on disjoint outputs may run concurrently. The
 * loops are plain C for -O3 auto-vectorisation, compiled twice via GCC
 * target_clones (AVX2 and baseline) and chosen at load time.
 */
#ifndef MODCAM_ISP_KERNELS_H
#define MODCAM_ISP_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define MODCAM_ISP_LUT_SIZE 16384

int modcam_isp_cfa(const uint8_t *packed, size_t packed_stride,
                   const uint16_t *cfa, size_t cfa_stride_px,
                   uint32_t width, uint32_t row0, uint32_t row1,
                   float black, const float *hgain, uint32_t grid_rows,
                   const float *grid_y,
                   uint16_t *out, size_t out_stride_px);

int modcam_isp_rgb(const uint16_t *rgb, size_t rgb_stride, uint32_t width, uint32_t rows,
                   const float *matrix, const uint8_t *lut,
                   uint8_t *out, size_t out_stride);

int modcam_isp_finish(const uint8_t *rgb, size_t stride, uint32_t width, uint32_t rows_in,
                      int pad_top, int pad_bottom, float sharpen, float denoise,
                      uint8_t *out, size_t out_stride);

/* Dynamic defective pixels, in place on rows [fix0, fix1) of a CFA buffer of
 * `rows` rows (fix0 >= 2, fix1 <= rows - 2: decisions need the same-colour
 * neighbours two rows away). A pixel brighter than all eight same-colour
 * neighbours and its four adjacent pixels (other colours) by max(t_abs, half
 * the brightest) is hot; one under a quarter of the darkest of them, when
 * that is above 4 t_abs, is dead (a real highlight or dark spot of two pixels
 * or more also reaches the adjacent pixels, so it is left alone). Either becomes
 * the median of its four axial same-colour neighbours. Decisions read only
 * values as they were before this call (scratch: 3 * width uint16), so the
 * result does not depend on the order of rows or on where a strip starts.
 * The 2-pixel left and right borders are left as they are. */
int modcam_isp_dpc(uint16_t *cfa, size_t stride_px, uint32_t width, uint32_t rows,
                   uint32_t fix0, uint32_t fix1, uint32_t t_abs, uint16_t *scratch,
                   uint32_t *corrected);

#endif /* MODCAM_ISP_KERNELS_H */
