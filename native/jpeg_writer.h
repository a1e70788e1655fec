/*
 * jpeg_writer — baseline JPEG encoding strip by strip, through libjpeg-turbo.
 *
 * CONTRACT
 *
 * Why C. libjpeg's scanline interface is what lets the ISP hand over an image
 * a strip at a time (memory stays bounded; encoding one strip overlaps with
 * producing the next on another core), and libjpeg reports errors by
 * longjmp(), which must be caught in C, in the frame that called libjpeg.
 * This shim is that frame; it never lets a longjmp cross into Python.
 *
 * Lifetime. modcam_jpeg_open() returns a handle (NULL only when out of
 * memory) that is either ready or failed: check modcam_jpeg_status(). Then
 * modcam_jpeg_write_rows() any number of times, rows in order, exactly
 * `height` rows in total, then modcam_jpeg_finish(). modcam_jpeg_free()
 * releases the handle in any state; freeing an unfinished handle abandons the
 * image (nothing more is written). One thread at a time per handle; distinct
 * handles are independent. No call blocks on a lock; a call writing to an fd
 * blocks as write(2) does.
 *
 * Errors. The first error is sticky: every later call returns it again and
 * does nothing. Calls return 0 or a negative errno: -EINVAL for bad
 * arguments or rows out of order, -ENOMEM, the write(2) error for the output
 * fd (-ENOSPC, -EIO, -EPIPE, -EBADF, ...; -ETIMEDOUT when a non-blocking fd
 * stays full for MODCAM_JPEG_WRITE_TIMEOUT_MS), and -EPROTO for an error
 * inside libjpeg. modcam_jpeg_error() gives a sentence saying what happened.
 *
 * Output. fd >= 0: the JPEG is written to that fd from its current offset
 * with write(2), in blocks of MODCAM_JPEG_BLOCK bytes; the fd is neither
 * closed nor seeked. A successful finish means every byte was accepted by
 * write(2). After an error the fd holds a partial file that the caller must
 * discard. A pipe whose reader has gone gives -EPIPE only if SIGPIPE is
 * ignored, as it is in every Python process; otherwise the signal kills the
 * process first. fd < 0: the JPEG is kept in memory; modcam_jpeg_output()
 * returns it after a successful finish, valid until modcam_jpeg_free().
 *
 * Image. Interleaved 8-bit RGB rows; `stride` is the distance in bytes
 * between row starts (>= 3 * width). Markers: SOI, then the caller's APP1
 * when given (the Exif block, which Exif wants right after SOI, so no JFIF
 * APP0 is written then), otherwise a JFIF APP0. Huffman tables are the
 * standard ones (an optimisation pass costs a second traversal for a few
 * per cent of size).
 */
#ifndef MODCAM_JPEG_WRITER_H
#define MODCAM_JPEG_WRITER_H

#include <stddef.h>
#include <stdint.h>

enum {
    MODCAM_JPEG_SUBSAMPLE_420 = 0, /* chroma halved both ways (default) */
    MODCAM_JPEG_SUBSAMPLE_422 = 1, /* chroma halved horizontally */
    MODCAM_JPEG_SUBSAMPLE_444 = 2, /* full-resolution chroma */

    MODCAM_JPEG_DCT_ISLOW = 0,     /* accurate integer DCT (default) */
    MODCAM_JPEG_DCT_IFAST = 1,     /* fast, less accurate integer DCT */
    MODCAM_JPEG_DCT_FLOAT = 2,     /* floating point DCT */

    MODCAM_JPEG_MAX_DIMENSION = 65500, /* libjpeg's JPEG_MAX_DIMENSION */
    MODCAM_JPEG_MAX_APP1 = 65533,      /* a marker segment's payload limit */
    MODCAM_JPEG_BLOCK = 1 << 20,       /* bytes per write(2) to an fd */
    MODCAM_JPEG_WRITE_TIMEOUT_MS = 10000,
};

typedef struct modcam_jpeg modcam_jpeg;

/* Start a JPEG of width x height pixels, quality 1-100, into `fd` (or memory
 * when fd < 0). app1 (may be NULL when app1_len is 0) is the APP1 payload,
 * e.g. "Exif\0\0" + TIFF structure. Writes the headers immediately. */
modcam_jpeg *modcam_jpeg_open(int fd, uint32_t width, uint32_t height, int quality,
                              int subsampling, int dct_method,
                              const uint8_t *app1, size_t app1_len);

/* Encode the next `rows` rows; row i starts at rgb + i * stride. */
int modcam_jpeg_write_rows(modcam_jpeg *h, const uint8_t *rgb, size_t stride, uint32_t rows);

/* After the last row: write the trailer and flush the output. */
int modcam_jpeg_finish(modcam_jpeg *h);

/* 0, or the sticky negative errno. */
int modcam_jpeg_status(const modcam_jpeg *h);

/* A sentence describing the sticky error ("" when there is none). */
const char *modcam_jpeg_error(const modcam_jpeg *h);

/* Rows encoded so far. */
uint32_t modcam_jpeg_rows_written(const modcam_jpeg *h);

/* Bytes handed to write(2) (fd output) or kept (memory output) so far. */
uint64_t modcam_jpeg_bytes_out(const modcam_jpeg *h);

/* The finished in-memory JPEG and its length; NULL unless the handle wrote to
 * memory and finished without error. */
const uint8_t *modcam_jpeg_output(const modcam_jpeg *h, size_t *len);

/* Release the handle (any state; NULL is a no-op). */
void modcam_jpeg_free(modcam_jpeg *h);

#endif /* MODCAM_JPEG_WRITER_H */
