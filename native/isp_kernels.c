/* isp_kernels — fused CFA-side and RGB-side ISP row kernels (contract in isp_kernels.h). */
#include "isp_kernels.h"
#include "raw12.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* GCC builds each hot loop for AVX2 and the baseline and picks one at load
 * time (ifunc); elsewhere the portable build alone. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(MODCAM_NO_CLONES)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

/* out = round(clamp((in - black) * lerp(h0, h1, fy), 0, 65535)) for one
 * row; in may equal out (in place after unpacking). */
MULTIVERSION
static void scale_row(const uint16_t *in, const float *restrict h0, const float *restrict h1,
                      float fy, uint16_t *out, uint32_t width, float black)
{
    for (size_t x = 0; x < width; x++) {
        float g = h0[x] + fy * (h1[x] - h0[x]);
        /* clamp as integers: float ternaries block the vectoriser (NaN
         * rules without -ffast-math); adding 0.5 then truncating rounds
         * half up for v >= 0, and anything below 0.5 becomes 0 either way */
        int32_t v = (int32_t)(((float)in[x] - black) * g + 0.5f);
        v = v < 0 ? 0 : v;
        out[x] = (uint16_t)(v > 65535 ? 65535 : v);
    }
}

int modcam_isp_cfa(const uint8_t *packed, size_t packed_stride,
                   const uint16_t *cfa, size_t cfa_stride_px,
                   uint32_t width, uint32_t row0, uint32_t row1,
                   float black, const float *hgain, uint32_t grid_rows,
                   const float *grid_y,
                   uint16_t *out, size_t out_stride_px)
{
    if ((packed == NULL) == (cfa == NULL) || !hgain || !grid_y || !out || width == 0
        || row0 > row1 || grid_rows < 2 || out_stride_px < width)
        return -EINVAL;
    for (uint32_t y = row0; y < row1; y++) {
        uint16_t *o = out + (size_t)(y - row0) * out_stride_px;
        const uint16_t *in = o;
        if (packed) {
            int err = modcam_raw12_unpack(packed + (size_t)y * packed_stride, packed_stride,
                                          o, out_stride_px, width, 0, 1);
            if (err)
                return err;
        } else {
            in = cfa + (size_t)y * cfa_stride_px;
        }
        float gy = grid_y[y];
        float top = (float)(grid_rows - 1);
        gy = gy < 0.0f ? 0.0f : (gy > top ? top : gy);
        uint32_t iy = (uint32_t)gy;
        if (iy > grid_rows - 2)
            iy = grid_rows - 2;
        const float *h0 = hgain + ((size_t)(y & 1) * grid_rows + iy) * width;
        scale_row(in, h0, h0 + width, gy - (float)iy, o, width, black);
    }
    return 0;
}

/* Matrix and clamp into LUT indices, then the gathers: two loops so the
 * first vectorises. */
MULTIVERSION
static void rgb_row(const uint16_t *restrict in, uint32_t width, const float *restrict m,
                    const uint8_t *restrict lut, uint8_t *restrict out, int32_t *restrict idx)
{
    const float k = (float)(MODCAM_ISP_LUT_SIZE - 1) / 65535.0f;
    const float m0 = m[0] * k, m1 = m[1] * k, m2 = m[2] * k, m3 = m[3] * k, m4 = m[4] * k,
                m5 = m[5] * k, m6 = m[6] * k, m7 = m[7] * k, m8 = m[8] * k;
    const int32_t hi = MODCAM_ISP_LUT_SIZE - 1;
    for (size_t x = 0; x < width; x++) { /* size_t: 3 * x must not wrap, or no vectorising */
        float r = in[3 * x], g = in[3 * x + 1], b = in[3 * x + 2];
        float v0 = m0 * r + m1 * g + m2 * b;
        float v1 = m3 * r + m4 * g + m5 * b;
        float v2 = m6 * r + m7 * g + m8 * b;
        /* integer clamps, as in scale_row; |v| < 2^31 for any matrix a
         * calibration holds (|m| < 2^14) */
        int32_t i0 = (int32_t)(v0 + 0.5f), i1 = (int32_t)(v1 + 0.5f), i2 = (int32_t)(v2 + 0.5f);
        i0 = i0 < 0 ? 0 : i0;
        i1 = i1 < 0 ? 0 : i1;
        i2 = i2 < 0 ? 0 : i2;
        idx[3 * x] = i0 > hi ? hi : i0;
        idx[3 * x + 1] = i1 > hi ? hi : i1;
        idx[3 * x + 2] = i2 > hi ? hi : i2;
    }
    for (size_t i = 0; i < 3 * (size_t)width; i++)
        out[i] = lut[idx[i]];
}

int modcam_isp_rgb(const uint16_t *rgb, size_t rgb_stride, uint32_t width, uint32_t rows,
                   const float *matrix, const uint8_t *lut,
                   uint8_t *out, size_t out_stride)
{
    if (!rgb || !matrix || !lut || !out || width == 0 || rgb_stride < 3 * (size_t)width
        || out_stride < 3 * (size_t)width)
        return -EINVAL;
    int32_t *idx = malloc(sizeof(int32_t) * 3 * (size_t)width);
    if (!idx)
        return -ENOMEM;
    for (uint32_t y = 0; y < rows; y++)
        rgb_row(rgb + (size_t)y * rgb_stride, width, matrix, lut, out + (size_t)y * out_stride, idx);
    free(idx);
    return 0;
}

/* One output row of the finishing filter: 3x3 box means of R, G, B from
 * column sums, then luma unsharp mask and chroma smoothing (isp_kernels.h). */
MULTIVERSION
static void finish_row(const uint8_t *restrict up, const uint8_t *restrict mid,
                       const uint8_t *restrict down, uint32_t width, float sharpen,
                       float denoise, uint16_t *restrict col, uint8_t *restrict out)
{
    size_t n = 3 * (size_t)width;
    for (size_t i = 0; i < n; i++)
        col[i + 3] = (uint16_t)(up[i] + mid[i] + down[i]);
    for (int c = 0; c < 3; c++) {              /* mirror: column -1 is 1, W is W - 2 */
        col[c] = col[3 + 3 + c];
        col[n + 3 + c] = col[n + c - 3];
    }
    const float ninth = 1.0f / 9.0f;
    for (size_t x = 0; x < width; x++) {
        const uint16_t *k = col + 3 * x;       /* columns x - 1, x, x + 1 */
        float sr = (float)(k[0] + k[3] + k[6]) * ninth;
        float sg = (float)(k[1] + k[4] + k[7]) * ninth;
        float sb = (float)(k[2] + k[5] + k[8]) * ninth;
        float r = mid[3 * x], g = mid[3 * x + 1], b = mid[3 * x + 2];
        float yc = 0.299f * r + 0.587f * g + 0.114f * b;
        float ys = 0.299f * sr + 0.587f * sg + 0.114f * sb;
        float y = yc + sharpen * (yc - ys);
        /* chroma = colour minus luma, blended towards its 3x3 mean */
        float v0 = y + (r - yc) + denoise * ((sr - ys) - (r - yc));
        float v1 = y + (g - yc) + denoise * ((sg - ys) - (g - yc));
        float v2 = y + (b - yc) + denoise * ((sb - ys) - (b - yc));
        int32_t i0 = (int32_t)(v0 + 0.5f), i1 = (int32_t)(v1 + 0.5f), i2 = (int32_t)(v2 + 0.5f);
        i0 = i0 < 0 ? 0 : i0;
        i1 = i1 < 0 ? 0 : i1;
        i2 = i2 < 0 ? 0 : i2;
        out[3 * x] = (uint8_t)(i0 > 255 ? 255 : i0);
        out[3 * x + 1] = (uint8_t)(i1 > 255 ? 255 : i1);
        out[3 * x + 2] = (uint8_t)(i2 > 255 ? 255 : i2);
    }
}

int modcam_isp_finish(const uint8_t *rgb, size_t stride, uint32_t width, uint32_t rows_in,
                      int pad_top, int pad_bottom, float sharpen, float denoise,
                      uint8_t *out, size_t out_stride)
{
    uint32_t skip = pad_top ? 0 : 1, drop = pad_bottom ? 0 : 1;
    if (!rgb || !out || width < 2 || rows_in < 2 || rows_in < skip + drop + 1
        || stride < 3 * (size_t)width || out_stride < 3 * (size_t)width
        || !(sharpen >= 0.0f && sharpen <= 4.0f) || !(denoise >= 0.0f && denoise <= 1.0f))
        return -EINVAL;
    uint16_t *col = malloc(sizeof(uint16_t) * (3 * (size_t)width + 6));
    if (!col)
        return -ENOMEM;
    for (uint32_t i = skip; i < rows_in - drop; i++) {
        uint32_t above = i == 0 ? 1 : i - 1;                   /* mirrored at the image edge */
        uint32_t below = i + 1 == rows_in ? rows_in - 2 : i + 1;
        finish_row(rgb + above * stride, rgb + (size_t)i * stride, rgb + (size_t)below * stride,
                   width, sharpen, denoise, col, out + (size_t)(i - skip) * out_stride);
    }
    free(col);
    return 0;
}

/* ---- dynamic defective-pixel detection (modcam_isp_dpc) ---- */

static inline uint32_t max4(uint32_t a, uint32_t b, uint32_t c, uint32_t d)
{
    uint32_t x = a > b ? a : b, y = c > d ? c : d;
    return x > y ? x : y;
}

static inline uint32_t min4(uint32_t a, uint32_t b, uint32_t c, uint32_t d)
{
    uint32_t x = a < b ? a : b, y = c < d ? c : d;
    return x < y ? x : y;
}

/* One row: decisions from rows y-2..y+2 as they were before any correction
 * (rows[0..4]), corrections written into `out`. A defect must stand out from
 * its eight same-colour neighbours and also from its four adjacent pixels of
 * other colours: a real highlight or dark spot of two pixels or more lights
 * (or darkens) those too, an isolated defect does not. Returns pixels fixed. */
static uint32_t dpc_row(const uint16_t *const rows[5], uint16_t *out, uint32_t width,
                        uint32_t t_abs)
{
    const uint16_t *up = rows[0], *up1 = rows[1], *mid = rows[2], *dn1 = rows[3], *down = rows[4];
    uint32_t n = 0;
    for (uint32_t x = 2; x + 2 < width; x++) {
        uint32_t v = mid[x], l = mid[x - 2], r = mid[x + 2];
        /* Necessary conditions on the row alone reject almost every pixel:
         * hot needs v > max(l, r) + t_abs, dead needs v < min(l, r) / 4 with
         * min(l, r) > 4 t_abs. */
        uint32_t lr_max = l > r ? l : r, lr_min = l < r ? l : r;
        if (__builtin_expect(v <= lr_max + t_abs && (lr_min <= 4 * t_abs || 4 * v >= lr_min), 1))
            continue;
        uint32_t u = up[x], d = down[x];
        uint32_t axial_max = max4(l, r, u, d), axial_min = min4(l, r, u, d);
        uint32_t mx = max4(axial_max, up[x - 2], up[x + 2], max4(down[x - 2], down[x + 2], 0, 0));
        uint32_t mn = min4(axial_min, up[x - 2], up[x + 2],
                           min4(down[x - 2], down[x + 2], 65535, 65535));
        uint32_t near_max = max4(mid[x - 1], mid[x + 1], up1[x], dn1[x]);
        uint32_t near_min = min4(mid[x - 1], mid[x + 1], up1[x], dn1[x]);
        uint32_t top = mx > near_max ? mx : near_max, bottom = mn < near_min ? mn : near_min;
        uint32_t margin = top / 2 > t_abs ? top / 2 : t_abs;
        int hot = v > top + margin;
        int dead = bottom > 4 * t_abs && v < bottom / 4;
        if (hot || dead) {
            /* median of the four axial neighbours: the mean of the middle two */
            out[x] = (uint16_t)((l + r + u + d - axial_max - axial_min + 1) / 2);
            n++;
        }
    }
    return n;
}

int modcam_isp_dpc(uint16_t *cfa, size_t stride_px, uint32_t width, uint32_t rows,
                   uint32_t fix0, uint32_t fix1, uint32_t t_abs, uint16_t *scratch,
                   uint32_t *corrected)
{
    if (!cfa || !scratch || width < 5 || fix0 < 2 || fix1 + 2 > rows || fix0 > fix1 ||
        stride_px < width)
        return -EINVAL;
    /* scratch: 3 rows holding the originals of rows y-2, y-1 and y (a ring),
     * so every decision reads uncorrected values whatever the order. */
    uint32_t n = 0;
    memcpy(scratch + (size_t)((fix0 - 2) % 3) * width, cfa + (size_t)(fix0 - 2) * stride_px,
           width * sizeof(uint16_t));
    memcpy(scratch + (size_t)((fix0 - 1) % 3) * width, cfa + (size_t)(fix0 - 1) * stride_px,
           width * sizeof(uint16_t));
    for (uint32_t y = fix0; y < fix1; y++) {
        uint16_t *row = cfa + (size_t)y * stride_px;
        uint16_t *orig = scratch + (size_t)(y % 3) * width;
        memcpy(orig, row, width * sizeof(uint16_t));
        const uint16_t *rows5[5] = {scratch + (size_t)((y - 2) % 3) * width,
                                    scratch + (size_t)((y - 1) % 3) * width, orig,
                                    cfa + (size_t)(y + 1) * stride_px,
                                    cfa + (size_t)(y + 2) * stride_px};
        n += dpc_row(rows5, row, width, t_abs);
    }
    if (corrected)
        *corrected = n;
    return 0;
}
