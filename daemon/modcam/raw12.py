"""RAW12 pack/unpack for numpy arrays: a thin, checking wrapper over native/raw12.c.

Owns the Python face of the sensor's wire format (MIPI CSI-2 RAW12, 3 bytes
per 2 pixels): argument validation with readable errors, buffer allocation
and reuse, and row ranges so a 100 MP frame can be processed strip by strip::

    strip = np.empty((64, width), np.uint16)
    for r0 in range(0, height, 64):
        r1 = min(r0 + 64, height)
        pixels = raw12.unpack(slot_view, width, out=strip[: r1 - r0], rows=(r0, r1))

Arrays only need contiguous rows: a packed view with padding at the end of
each row (a stride larger than the minimum) is used in place, never copied.
The C call releases the GIL (cffi API mode), so threads can unpack disjoint
strips of one frame in parallel.
"""
from __future__ import annotations

import operator

import numpy as np

from modcam.arrays import check_rows, row_stride

from modcam.native import ffi, lib  # or its sanitizer build (MODCAM_NATIVE_DIR)

__all__ = ["packed_stride", "unpack", "pack", "implementation"]

_MAX_WIDTH = 2**32 - 1  # the C API takes uint32_t widths and rows
_IMPL_NAMES = {lib.MODCAM_RAW12_IMPL_SCALAR: "scalar", lib.MODCAM_RAW12_IMPL_AVX2: "avx2"}


def packed_stride(width: int) -> int:
    """Minimum packed row length in bytes for `width` pixels: 3 * ceil(width / 2)."""
    return 3 * ((_check_width(width) + 1) // 2)


def implementation() -> str:
    """Name of the kernel in use ("avx2" or "scalar"), e.g. for benchmark reports."""
    return _IMPL_NAMES[lib.modcam_raw12_get_impl()]


def unpack(packed: np.ndarray, width: int, out: np.ndarray | None = None,
           rows: tuple[int, int] | None = None) -> np.ndarray:
    """Unpack rows [r0, r1) of a RAW12 image into 12-bit pixels.

    packed: uint8 array (H, S) with S >= packed_stride(width); bytes past the
    minimum stride are padding and are not read. rows: (r0, r1), default all
    H rows. out: optional uint16 array of shape (r1 - r0, width) to fill, for
    reuse across strips. Returns out (or a new array) holding row r0 at index 0.
    """
    width = _check_width(width)
    _check_array(packed, "packed", np.uint8)
    if packed.shape[1] < packed_stride(width):
        raise ValueError(f"packed rows hold {packed.shape[1]} bytes, fewer than the "
                         f"{packed_stride(width)} that {width} pixels need")
    r0, r1 = check_rows(rows, packed.shape[0])
    n = r1 - r0
    if out is None:
        out = np.empty((n, width), np.uint16)
    else:
        _check_out(out, "out", np.uint16, (n, width), f"unpacking rows {r0}..{r1}")
    if n:
        _call(lib.modcam_raw12_unpack,
              _address(packed, r0), row_stride(packed),
              _address(out, 0), row_stride(out) // 2, width, n)
    return out


def pack(pixels: np.ndarray, out: np.ndarray | None = None, stride: int | None = None,
         rows: tuple[int, int] | None = None) -> np.ndarray:
    """Pack rows [r0, r1) of a uint16 image (H, W) into RAW12.

    Only the low 12 bits of each pixel are packed; higher bits are masked off.
    stride: packed row length in bytes, >= packed_stride(W); default out's row
    length, else the minimum. out: optional uint8 array (r1 - r0, stride), e.g.
    a view of a ring slot. Padding bytes past the minimum stride are never
    written (a new array has them zeroed). Returns out (or a new array).
    """
    _check_array(pixels, "pixels", np.uint16)
    width = _check_width(pixels.shape[1])
    r0, r1 = check_rows(rows, pixels.shape[0])
    n = r1 - r0
    if stride is None:
        stride = out.shape[1] if isinstance(out, np.ndarray) and out.ndim == 2 else packed_stride(width)
    stride = operator.index(stride)
    if stride < packed_stride(width):
        raise ValueError(f"stride {stride} is below the {packed_stride(width)} bytes "
                         f"that {width} pixels need")
    if out is None:
        alloc = np.empty if stride == packed_stride(width) else np.zeros
        out = alloc((n, stride), np.uint8)
    else:
        _check_out(out, "out", np.uint8, (n, stride), f"packing rows {r0}..{r1}")
    if n:
        _call(lib.modcam_raw12_pack,
              _address(pixels, r0), row_stride(pixels) // 2,
              _address(out, 0), row_stride(out), width, n)
    return out


# ---- checks: every message names the argument and what was expected ----

def _check_width(width) -> int:
    try:
        width = operator.index(width)
    except TypeError:
        raise ValueError(f"width must be an integer, not {type(width).__name__}") from None
    if not 1 <= width <= _MAX_WIDTH:
        raise ValueError(f"width {width} is out of range: it must be between 1 and {_MAX_WIDTH}")
    return width


def _check_array(a, name: str, dtype) -> None:
    """A 2-D array of `dtype` whose rows are contiguous and do not overlap."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, not {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name}, not {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), not {a.ndim}-D with shape {a.shape}")
    if a.shape[1] > 1 and a.strides[1] != a.itemsize:
        raise ValueError(f"each row of {name} must be contiguous in memory "
                         f"(column step {a.strides[1]} bytes, expected {a.itemsize})")
    if not a.flags.aligned:  # C reads uint16_t; a misaligned view would be undefined behaviour
        raise ValueError(f"{name} is not aligned to its {a.itemsize}-byte elements")
    if a.shape[0] > 1 and (a.strides[0] < a.shape[1] * a.itemsize or a.strides[0] % a.itemsize):
        raise ValueError(f"rows of {name} must follow each other forwards without overlap "
                         f"(row stride {a.strides[0]} bytes for rows of "
                         f"{a.shape[1] * a.itemsize} bytes)")


def _check_out(out, name: str, dtype, shape: tuple[int, int], doing: str) -> None:
    _check_array(out, name, dtype)
    if out.shape != shape:
        raise ValueError(f"{name} has shape {out.shape}; {doing} needs shape {shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")




# ---- the C call ----



def _address(a: np.ndarray, row: int) -> int:
    # Computed from the base address rather than a.ctypes, which is slower;
    # the caller keeps `a` alive for the duration of the call.
    return a.__array_interface__["data"][0] + row * a.strides[0]


def _call(fn, src: int, src_stride: int, dst: int, dst_stride: int, width: int, n: int) -> None:
    # Rows are addressed from the first row of the range, so C sees rows [0, n).
    err = fn(ffi.cast("void *", src), src_stride, ffi.cast("void *", dst), dst_stride, width, 0, n)
    if err:  # unreachable after the checks above, unless they and C disagree
        raise ValueError(f"{fn.__name__} rejected its arguments (error {err})")
