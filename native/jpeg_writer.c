/*
 * jpeg_writer.c — strip-by-strip JPEG encoding over libjpeg-turbo (contract
 * in jpeg_writer.h).
 *
 * Owns: the libjpeg compressor set-up (quality, chroma subsampling, DCT
 * method, markers), the error manager that turns libjpeg's longjmp() into a
 * sticky status and a sentence, and a destination manager writing to an fd
 * with write(2) (so that ENOSPC, EIO or EPIPE are seen and reported, never
 * lost in a stdio buffer) or to a growing memory buffer.
 *
 * Every function that calls into libjpeg sets its own setjmp() point first:
 * libjpeg errors (and our destination's write errors, raised through the
 * same path) jump back to it, the handle is marked failed, and the function
 * returns the status. Nothing modified between setjmp() and longjmp() is
 * read after the jump except through the handle, which lives on the heap.
 */
#include "jpeg_writer.h"

#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jpeglib.h>

_Static_assert(MODCAM_JPEG_MAX_DIMENSION == JPEG_MAX_DIMENSION, "libjpeg's size limit changed");

enum state { ST_WRITING, ST_FINISHED, ST_FAILED };

struct modcam_jpeg {
    struct jpeg_compress_struct cinfo;  /* first: callbacks cast cinfo back to the handle */
    struct jpeg_error_mgr jerr;
    struct jpeg_destination_mgr dest;
    jmp_buf jump;
    enum state state;
    int created;         /* jpeg_create_compress() ran: destroy on free */
    int status;          /* 0 or negative errno, sticky */
    int fd;              /* < 0: memory output */
    uint8_t *buf;        /* fd: one block being filled; memory: the whole output */
    size_t cap;
    size_t kept;         /* memory: bytes of buf already final */
    uint64_t bytes_out;
    char message[256];
};

static modcam_jpeg *handle_of(j_common_ptr cinfo)
{
    return (modcam_jpeg *)cinfo;  /* cinfo is the first member */
}

/* Record the first error; later ones are consequences of it. */
static void fail(modcam_jpeg *h, int status, const char *fmt, ...)
{
    if (h->state == ST_FAILED)
        return;
    h->state = ST_FAILED;
    h->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->message, sizeof h->message, fmt, ap);
    va_end(ap);
}

/* ---- error manager: libjpeg's fatal errors end here, never in exit() ---- */

static void on_error_exit(j_common_ptr cinfo)
{
    modcam_jpeg *h = handle_of(cinfo);
    char text[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, text);
    /* A write error was recorded (with its errno) before raising this one. */
    fail(h, -EPROTO, "libjpeg failed: %s", text);
    longjmp(h->jump, 1);
}

static void on_output_message(j_common_ptr cinfo)
{
    /* Warnings (corrupt-data notices) cannot arise when compressing rows we
     * count ourselves; keep stderr clean rather than print from a daemon. */
    (void)cinfo;
}

/* ---- destination manager ---- */

/* write(2) all of [p, p + n), through EINTR, partial writes and a full
 * non-blocking fd. Returns 0 or a negative errno. */
static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w == 0) {
            return -EIO;  /* a write that accepts nothing would loop forever */
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            struct pollfd pfd = { .fd = fd, .events = POLLOUT };
            int r = poll(&pfd, 1, MODCAM_JPEG_WRITE_TIMEOUT_MS);
            if (r == 0)
                return -ETIMEDOUT;
            if (r < 0 && errno != EINTR)
                return -errno;
        } else if (errno != EINTR) {
            return -errno;
        }
    }
    return 0;
}

static void raise_write_error(modcam_jpeg *h, int err)
{
    if (err == -ETIMEDOUT)
        fail(h, err, "writing the JPEG to fd %d failed: the reader accepted nothing for %d s",
             h->fd, MODCAM_JPEG_WRITE_TIMEOUT_MS / 1000);
    else
        fail(h, err, "writing the JPEG to fd %d failed after %llu bytes: %s", h->fd,
             (unsigned long long)h->bytes_out, strerror(-err));
    longjmp(h->jump, 1);
}

static void flush_block(modcam_jpeg *h, size_t n)
{
    int err = write_all(h->fd, h->buf, n);
    if (err)
        raise_write_error(h, err);
    h->bytes_out += n;
}

static void dest_init(j_compress_ptr cinfo)
{
    modcam_jpeg *h = handle_of((j_common_ptr)cinfo);
    h->dest.next_output_byte = h->buf;
    h->dest.free_in_buffer = h->cap;
}

/* Called when the buffer is full (libjpeg ignores the pointers then). */
static boolean dest_empty(j_compress_ptr cinfo)
{
    modcam_jpeg *h = handle_of((j_common_ptr)cinfo);
    if (h->fd >= 0) {
        flush_block(h, h->cap);
        h->dest.next_output_byte = h->buf;
        h->dest.free_in_buffer = h->cap;
        return TRUE;
    }
    size_t cap = h->cap * 2;
    uint8_t *grown = cap > h->cap ? realloc(h->buf, cap) : NULL;
    if (!grown) {
        fail(h, -ENOMEM, "out of memory growing the in-memory JPEG beyond %zu bytes", h->cap);
        longjmp(h->jump, 1);
    }
    h->kept = h->cap;
    h->bytes_out = h->kept;
    h->buf = grown;
    h->cap = cap;
    h->dest.next_output_byte = h->buf + h->kept;
    h->dest.free_in_buffer = h->cap - h->kept;
    return TRUE;
}

static void dest_term(j_compress_ptr cinfo)
{
    modcam_jpeg *h = handle_of((j_common_ptr)cinfo);
    size_t used = h->cap - h->dest.free_in_buffer;
    if (h->fd >= 0) {
        flush_block(h, used);
    } else {
        h->kept = used;
        h->bytes_out = used;
    }
}

/* ---- set-up ---- */

static int check_open_args(modcam_jpeg *h, uint32_t width, uint32_t height, int quality,
                           int subsampling, int dct_method, const uint8_t *app1, size_t app1_len)
{
    if (width == 0 || height == 0 || width > JPEG_MAX_DIMENSION || height > JPEG_MAX_DIMENSION)
        fail(h, -EINVAL, "a JPEG is 1 to %d pixels on each side, not %ux%u",
             JPEG_MAX_DIMENSION, width, height);
    else if (quality < 1 || quality > 100)
        fail(h, -EINVAL, "JPEG quality %d is outside 1-100", quality);
    else if (subsampling < MODCAM_JPEG_SUBSAMPLE_420 || subsampling > MODCAM_JPEG_SUBSAMPLE_444)
        fail(h, -EINVAL, "unknown chroma subsampling %d", subsampling);
    else if (dct_method < MODCAM_JPEG_DCT_ISLOW || dct_method > MODCAM_JPEG_DCT_FLOAT)
        fail(h, -EINVAL, "unknown DCT method %d", dct_method);
    else if (app1_len > MODCAM_JPEG_MAX_APP1 || (app1_len && !app1))
        fail(h, -EINVAL, "the APP1 block is %zu bytes; a JPEG marker holds at most %d",
             app1_len, MODCAM_JPEG_MAX_APP1);
    return h->status;
}

static void configure(modcam_jpeg *h, uint32_t width, uint32_t height, int quality,
                      int subsampling, int dct_method, int jfif)
{
    struct jpeg_compress_struct *c = &h->cinfo;
    static const J_DCT_METHOD methods[] = { JDCT_ISLOW, JDCT_IFAST, JDCT_FLOAT };
    static const int h_factor[] = { 2, 2, 1 }, v_factor[] = { 2, 1, 1 };

    c->image_width = width;
    c->image_height = height;
    c->input_components = 3;
    c->in_color_space = JCS_RGB;
    jpeg_set_defaults(c);  /* YCbCr, standard tables; needs in_color_space first */
    jpeg_set_quality(c, quality, TRUE);
    c->comp_info[0].h_samp_factor = h_factor[subsampling];
    c->comp_info[0].v_samp_factor = v_factor[subsampling];
    c->dct_method = methods[dct_method];
    c->optimize_coding = FALSE;
    c->write_JFIF_header = jfif ? TRUE : FALSE;
}

modcam_jpeg *modcam_jpeg_open(int fd, uint32_t width, uint32_t height, int quality,
                              int subsampling, int dct_method,
                              const uint8_t *app1, size_t app1_len)
{
    modcam_jpeg *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->fd = fd < 0 ? -1 : fd;
    h->state = ST_WRITING;
    /* Memory output starts near a q90 4:2:0 photo's size and doubles. */
    h->cap = h->fd >= 0 ? MODCAM_JPEG_BLOCK : MODCAM_JPEG_BLOCK + (size_t)width * height / 4;
    if (check_open_args(h, width, height, quality, subsampling, dct_method, app1, app1_len))
        return h;
    h->buf = malloc(h->cap);
    if (!h->buf) {
        fail(h, -ENOMEM, "out of memory for a %zu-byte JPEG output buffer", h->cap);
        return h;
    }
    h->cinfo.err = jpeg_std_error(&h->jerr);
    h->jerr.error_exit = on_error_exit;
    h->jerr.output_message = on_output_message;
    if (setjmp(h->jump))
        return h;
    /* Destroying a half-created compressor is safe (its memory manager is
     * still NULL), so mark it first: a failure inside create leaks nothing. */
    h->created = 1;
    jpeg_create_compress(&h->cinfo);
    h->dest.init_destination = dest_init;
    h->dest.empty_output_buffer = dest_empty;
    h->dest.term_destination = dest_term;
    h->cinfo.dest = &h->dest;
    configure(h, width, height, quality, subsampling, dct_method, app1_len == 0);
    jpeg_start_compress(&h->cinfo, TRUE);
    if (app1_len)
        jpeg_write_marker(&h->cinfo, JPEG_APP0 + 1, app1, (unsigned int)app1_len);
    return h;
}

/* ---- rows, finish ---- */

/* A call after finish: refused, but the finished output stays valid. */
static int not_writing(modcam_jpeg *h)
{
    if (h->state == ST_FINISHED) {
        snprintf(h->message, sizeof h->message, "the JPEG is already finished");
        return -EINVAL;
    }
    return h->status;
}

int modcam_jpeg_write_rows(modcam_jpeg *h, const uint8_t *rgb, size_t stride, uint32_t rows)
{
    if (h->state != ST_WRITING)
        return not_writing(h);
    uint32_t width = h->cinfo.image_width;
    uint32_t left = h->cinfo.image_height - h->cinfo.next_scanline;
    if (rows > left)
        fail(h, -EINVAL, "%u more rows do not fit: the %u-row JPEG has room for %u",
             rows, h->cinfo.image_height, left);
    else if (rows && (!rgb || stride < (size_t)width * 3))
        fail(h, -EINVAL, "rows of %u RGB pixels need a stride of at least %zu bytes, not %zu",
             width, (size_t)width * 3, stride);
    if (h->state == ST_FAILED)
        return h->status;
    if (setjmp(h->jump))
        return h->status;
    JSAMPROW ptrs[64];
    for (uint32_t done = 0; done < rows;) {
        uint32_t n = rows - done < 64 ? rows - done : 64;
        for (uint32_t i = 0; i < n; i++)
            ptrs[i] = (JSAMPROW)(rgb + (size_t)(done + i) * stride);
        /* With a destination that never suspends, libjpeg takes every row. */
        JDIMENSION took = jpeg_write_scanlines(&h->cinfo, ptrs, n);
        if (took == 0) {
            fail(h, -EPROTO, "libjpeg accepted no rows at row %u", h->cinfo.next_scanline);
            return h->status;
        }
        done += took;
    }
    return 0;
}

int modcam_jpeg_finish(modcam_jpeg *h)
{
    if (h->state != ST_WRITING)
        return not_writing(h);
    if (h->cinfo.next_scanline < h->cinfo.image_height) {
        fail(h, -EINVAL, "only %u of the JPEG's %u rows were written before finishing",
             h->cinfo.next_scanline, h->cinfo.image_height);
        return h->status;
    }
    if (setjmp(h->jump))
        return h->status;
    jpeg_finish_compress(&h->cinfo);
    h->state = ST_FINISHED;
    return 0;
}

/* ---- queries, release ---- */

int modcam_jpeg_status(const modcam_jpeg *h)
{
    return h->status;
}

const char *modcam_jpeg_error(const modcam_jpeg *h)
{
    return h->message;
}

uint32_t modcam_jpeg_rows_written(const modcam_jpeg *h)
{
    return h->created ? h->cinfo.next_scanline : 0;
}

uint64_t modcam_jpeg_bytes_out(const modcam_jpeg *h)
{
    return h->bytes_out;
}

const uint8_t *modcam_jpeg_output(const modcam_jpeg *h, size_t *len)
{
    if (h->state != ST_FINISHED || h->fd >= 0)
        return NULL;
    *len = h->kept;
    return h->buf;
}

void modcam_jpeg_free(modcam_jpeg *h)
{
    if (!h)
        return;
    if (h->created)
        jpeg_destroy_compress(&h->cinfo);  /* also abandons an unfinished image */
    free(h->buf);
    free(h);
}
