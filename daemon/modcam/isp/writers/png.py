"""PNG output: 8- or 16-bit RGB through pypng, strip by strip.

Owns the PNG a capture writes. pypng rather than Pillow: Pillow cannot write
16-bit RGB PNGs (only 16-bit greyscale), and it wants the whole image as one
Image; pypng writes both depths from an iterator of rows, so the ISP's
strips go straight to zlib and memory stays bounded. Both are in Debian 12
(python3-png) and on PyPI (pypng).

The PNG holds pixels only (IHDR, IDAT, IEND): the pixel values are whatever
the ISP rendered (sRGB-encoded), and the picture's metadata travels in the
Capture reply and in the JPEG/DNG written alongside. pypng writes every
row with PNG filter 0 (none), which costs some size on photographs against
an adaptive filter; the speed is zlib's (`compression` 1 fast .. 9 small).
"""
from __future__ import annotations

import numpy as np
import png

from .output import Output

__all__ = ["write_png", "write_png_strips"]

_DTYPES = {8: np.dtype(np.uint8), 16: np.dtype(">u2")}   # PNG samples are big-endian


def write_png(target, rgb: np.ndarray, *, compression: int = 6, strip_rows: int = 256) -> int:
    """Write a (height, width, 3) uint8 or uint16 image as an 8- or 16-bit PNG.
    Returns the bytes written."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3:
        raise ValueError("the image must be a numpy array of shape (height, width, 3), "
                         f"not {getattr(rgb, 'shape', type(rgb).__name__)}")
    bit_depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(rgb.dtype)
    if bit_depth is None:
        raise ValueError(f"a PNG image must have dtype uint8 or uint16, not {rgb.dtype}")
    strips = (rgb[r0:r0 + strip_rows] for r0 in range(0, rgb.shape[0], strip_rows))
    return write_png_strips(target, strips, rgb.shape[1], rgb.shape[0], bit_depth,
                            compression=compression)


def write_png_strips(target, strips, width: int, height: int, bit_depth: int = 8, *,
                     compression: int = 6) -> int:
    """Write the strips (each a (rows, width, 3) array: uint8 for bit_depth 8,
    uint16 for 16) of a width x height RGB image as a PNG to `target` (a path,
    written atomically, or an fd). Returns the bytes written."""
    if bit_depth not in _DTYPES:
        raise ValueError(f"PNG bit depth {bit_depth!r} is not 8 or 16")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or not 1 <= value <= 2**31 - 1:
            raise ValueError(f"PNG {name} {value!r} is outside 1-{2**31 - 1}")
    if not isinstance(compression, int) or not 0 <= compression <= 9:
        raise ValueError(f"PNG compression {compression!r} is outside 0-9 (zlib levels)")
    writer = png.Writer(width, height, greyscale=False, bitdepth=bit_depth,
                        compression=compression)
    with Output(target, "the PNG") as out:
        writer.write_packed(out, _packed_rows(strips, width, height, bit_depth))
        return out.written


def _packed_rows(strips, width: int, height: int, bit_depth: int):
    """Each row as PNG sample bytes, checking every strip on the way."""
    native = np.dtype(np.uint8 if bit_depth == 8 else np.uint16)
    done = 0
    for strip in strips:
        if not isinstance(strip, np.ndarray) or strip.dtype != native:
            raise ValueError(f"{bit_depth}-bit PNG strips must be numpy arrays of dtype "
                             f"{native}, not {getattr(strip, 'dtype', type(strip).__name__)}")
        if strip.ndim != 3 or strip.shape[1:] != (width, 3):
            raise ValueError(f"PNG strips must have shape (rows, {width}, 3), not {strip.shape}")
        if done + strip.shape[0] > height:
            raise ValueError(f"the strips hold more than the PNG's {height} rows")
        packed = np.ascontiguousarray(strip, dtype=_DTYPES[bit_depth])
        for row in packed:
            yield row.tobytes()
        done += strip.shape[0]
    if done != height:
        raise ValueError(f"the strips held {done} rows; the PNG has {height}")
