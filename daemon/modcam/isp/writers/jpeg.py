"""JPEG output: libjpeg-turbo through native/jpeg_writer.c, strip by strip, with Exif.

Owns the Python face of the C encoder (argument checks with readable errors,
the output target, the handle's lifetime) and the Exif APP1 block:

    with JpegWriter(fd, width, height, meta=meta) as jpeg:   # quality 90, 4:2:0
        for strip in isp_strips():                           # (rows, width, 3) uint8
            jpeg.write_rows(strip)

Only one strip is ever needed in memory. write_rows() releases the GIL while
libjpeg encodes, so the ISP can produce the next strip on another core: hand
strips to a thread that calls write_rows() (one thread per writer at a time).

Defaults, measured on 100 MP (docs/formats.md): quality 90, 4:2:0 chroma
(4:4:4 takes 1.8x the time and size), the accurate integer DCT (with
libjpeg-turbo's SIMD, ISLOW is as fast as IFAST: 0.33 s vs 0.32 s on one
core, and IFAST loses 0.5 dB at q90 for a 6% larger file), standard Huffman
tables (an optimising pass is a second traversal for a few per cent of size).
"""
from __future__ import annotations

import errno

import numpy as np

from modcam.native import ffi, lib

from .exif import app1, exif_fields
from .meta import PictureMeta
from .output import Output, WriteError, write_error

__all__ = ["JpegWriter", "write_jpeg", "exif_blob"]

SUBSAMPLING = {"420": lib.MODCAM_JPEG_SUBSAMPLE_420, "422": lib.MODCAM_JPEG_SUBSAMPLE_422,
               "444": lib.MODCAM_JPEG_SUBSAMPLE_444}
DCT_METHODS = {"islow": lib.MODCAM_JPEG_DCT_ISLOW, "ifast": lib.MODCAM_JPEG_DCT_IFAST,
               "float": lib.MODCAM_JPEG_DCT_FLOAT}


def exif_blob(meta: PictureMeta, size: tuple | None = None) -> bytes:
    """The APP1 payload ("Exif\\0\\0" + TIFF structure) for a JPEG of `size`
    (width, height) pixels; every tag is listed in docs/formats.md."""
    blob = app1(exif_fields(meta, size, rendered=True))
    if len(blob) > lib.MODCAM_JPEG_MAX_APP1:
        raise ValueError(f"the Exif block is {len(blob)} bytes; a JPEG APP1 marker holds "
                         f"at most {lib.MODCAM_JPEG_MAX_APP1}")
    return blob


class JpegWriter:
    """One JPEG being written, strip by strip, to a path, an fd or memory.
    One thread at a time may call its methods.

    target: a path (written atomically: a temporary file renamed when
    complete), an int fd (written from its current offset, never closed), or
    None to keep the JPEG in memory (finish() returns it). meta: Exif metadata;
    exif: a ready APP1 payload instead. Errors: ValueError for bad arguments,
    WriteError (an OSError) when the target refuses the bytes.
    """

    def __init__(self, target, width: int, height: int, *, quality: int = 90,
                 subsampling: str = "420", dct: str = "islow",
                 meta: PictureMeta | None = None, exif: bytes | None = None):
        self.width, self.height = _dimension(width, "width"), _dimension(height, "height")
        if subsampling not in SUBSAMPLING:
            raise ValueError(f"chroma subsampling {subsampling!r} is not one of "
                             f"{', '.join(SUBSAMPLING)}")
        if dct not in DCT_METHODS:
            raise ValueError(f"DCT method {dct!r} is not one of {', '.join(DCT_METHODS)}")
        if not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality {quality!r} is outside 1-100")
        if meta is not None:
            exif = exif_blob(meta, (self.width, self.height))
        marker = bytes(exif or b"")
        self._data, self._rows = None, 0
        self._out = Output(target, "the JPEG")
        try:
            self._h = lib.modcam_jpeg_open(self._out.fd, self.width, self.height, quality,
                                           SUBSAMPLING[subsampling], DCT_METHODS[dct],
                                           marker, len(marker))
            if self._h == ffi.NULL:
                raise MemoryError("out of memory starting a JPEG encoder")
            self._check(lib.modcam_jpeg_status(self._h))
        except BaseException:
            self._release(commit=False)
            raise

    @property
    def rows_written(self) -> int:
        return self._rows

    def write_rows(self, rgb) -> None:
        """Encode the next rows: a uint8 array (rows, width, 3) whose rows are
        each contiguous (views of a larger image are fine)."""
        self._require_open()
        rows = _check_strip(rgb, self.width)
        if rows == 0:
            return
        left = self.height - self.rows_written
        if rows > left:
            raise ValueError(f"{rows} more rows do not fit: the {self.height}-row JPEG "
                             f"has room for {left}")
        stride = rgb.strides[0] if rows > 1 else 3 * self.width
        address = ffi.cast("const uint8_t *", rgb.__array_interface__["data"][0])
        self._check(lib.modcam_jpeg_write_rows(self._h, address, stride, rows))
        self._rows += rows

    def finish(self) -> bytes | None:
        """Write the trailer and complete the target. Returns the JPEG for a
        memory target, None otherwise."""
        self._require_open()
        if self.rows_written < self.height:
            raise ValueError(f"only {self.rows_written} of the JPEG's {self.height} rows "
                             "were written")
        self._check(lib.modcam_jpeg_finish(self._h))
        if self._out.fd < 0:
            size = ffi.new("size_t *")
            self._data = bytes(ffi.buffer(lib.modcam_jpeg_output(self._h, size), size[0]))
        self._release(commit=True)
        return self._data

    def abort(self) -> None:
        """Abandon the JPEG: a path target is removed, an fd keeps what was
        written so far. Safe to call at any time, also after finish()."""
        if self._h is not None:
            self._release(commit=False)

    def __enter__(self) -> "JpegWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._h is not None:
            self.finish()

    def __del__(self):
        if getattr(self, "_h", None) is not None:
            self.abort()

    # ---- internals ----

    def _require_open(self) -> None:
        if self._h is None:
            raise ValueError("the JPEG is already finished or aborted")

    def _check(self, status: int) -> None:
        if status == 0:
            return
        done = lib.modcam_jpeg_bytes_out(self._h)
        message = ffi.string(lib.modcam_jpeg_error(self._h)).decode("utf-8", "replace")
        self._release(commit=False)
        if -status == errno.EINVAL:     # the C side's own argument checks
            raise ValueError(message)
        if -status == errno.ENOMEM:
            raise MemoryError(message)
        if -status == errno.EPROTO:     # libjpeg itself failed
            raise WriteError(errno.EPROTO, f"encoding the JPEG failed: {message}")
        raise write_error(-status, "the JPEG", self._out.where, done)

    def _release(self, commit: bool) -> None:
        h, self._h = getattr(self, "_h", None), None
        if h is not None and h != ffi.NULL:
            lib.modcam_jpeg_free(h)
        if commit:
            self._out.commit()
        else:
            self._out.discard()


def write_jpeg(target, rgb, *, quality: int = 90, subsampling: str = "420",
               dct: str = "islow", meta: PictureMeta | None = None,
               strip_rows: int = 256) -> bytes | None:
    """Encode a whole (height, width, 3) uint8 image, strip_rows rows per call
    (no copy). Returns the JPEG when target is None."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3:
        raise ValueError("the image must be a numpy array of shape (height, width, 3), "
                         f"not {getattr(rgb, 'shape', type(rgb).__name__)}")
    height, width = rgb.shape[:2]
    with JpegWriter(target, width, height, quality=quality, subsampling=subsampling,
                    dct=dct, meta=meta) as jpeg:
        for r0 in range(0, height, strip_rows):
            jpeg.write_rows(rgb[r0:r0 + strip_rows])
        return jpeg.finish()


def _dimension(value, name: str) -> int:
    if not isinstance(value, int) or not 1 <= value <= lib.MODCAM_JPEG_MAX_DIMENSION:
        raise ValueError(f"JPEG {name} {value!r} is outside 1-{lib.MODCAM_JPEG_MAX_DIMENSION}")
    return value


def _check_strip(rgb, width: int) -> int:
    """Rows in `rgb`, after checking it is (rows, width, 3) uint8 with
    contiguous rows that follow each other forwards."""
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"rows must be a numpy array, not {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"JPEG rows must have dtype uint8, not {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[1] != width or width == 0:
        raise ValueError(f"JPEG rows must have shape (rows, {width or 'width'}, 3), "
                         f"not {rgb.shape}")
    if rgb.strides[2] != 1 or (width > 1 and rgb.strides[1] != 3):
        raise ValueError("each JPEG row must be contiguous RGB (pixel step 3 bytes, "
                         f"channel step 1), not strides {rgb.strides}")
    if rgb.shape[0] > 1 and rgb.strides[0] < 3 * width:
        raise ValueError(f"JPEG rows must follow each other forwards without overlap "
                         f"(row stride {rgb.strides[0]} bytes for {3 * width}-byte rows)")
    return rgb.shape[0]
