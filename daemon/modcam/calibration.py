"""The calibration blob in a module's EEPROM: its format, encoder and decoder.

Owns version 1 of the format (byte table in docs/virtual-module.md), the
Calibration value the ISP consumes, and the true calibration of a virtual
module built from its serial. All integers and floats are little-endian;
floats are IEEE-754 binary32.

    header   magic "MODCAMCL", version u16, reserved u16, total length u32
    sensor   width u16, height u16, black level u16, white level u16
    colour   3x3 f32, row-major: camera native (R, G, B) -> linear sRGB (D65)
    serial   length u8 (1-64), UTF-8 bytes
    shading  grid columns u8, grid rows u8, aperture count u8, reserved u8;
             per aperture: f-number f32, then gains f32 [channel][row][col]
             for channels R, Gr, Gb, B
    defects  count u32; per defect: x u16, y u16, kind u8 (1 hot, 2 dead)
    crc      u32: zlib.crc32 of every byte before it

decode() never trusts the blob: every failure (wrong magic, unsupported
version, lengths or counts that do not fit, truncation, checksum mismatch,
values out of range) raises CalibrationError with a sentence saying what is
wrong, never IndexError or struct.error.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"MODCAMCL"
VERSION = 1
MAX_BLOB_BYTES = 1 << 20
_HEADER = struct.Struct("<8sHHI")
_SENSOR = struct.Struct("<HHHH")
_GRID = struct.Struct("<BBBB")
_DEFECT = struct.Struct("<HHB")
DEFECT_KINDS = {1: "hot", 2: "dead"}
CHANNELS = ("R", "Gr", "Gb", "B")
MIN_BLOB_BYTES = _HEADER.size + 4


class CalibrationError(ValueError):
    """The calibration blob cannot be used; the message says why."""


@dataclass(frozen=True)
class DefectPixel:
    x: int
    y: int
    kind: str      # "hot" or "dead"


@dataclass(frozen=True)
class ShadingGrid:
    """Gains (multiply the raw value above black) at grid nodes for one f-number.
    Nodes span the sensor edge to edge: node (0, 0) is the top-left corner of
    pixel (0, 0), the last node the bottom-right corner of the last pixel."""
    f_number: float
    gains: tuple   # floats, 4 * rows * cols, [channel][row][col]


@dataclass(frozen=True)
class Calibration:
    serial: str
    black_level: int
    white_level: int
    colour_matrix: tuple            # 3 rows of 3 floats: native -> linear sRGB (D65)
    grid_cols: int
    grid_rows: int
    shading: tuple                  # ShadingGrid, ascending f-number
    defects: tuple                  # DefectPixel
    sensor_width: int = 11552
    sensor_height: int = 8672

    def matrix(self) -> np.ndarray:
        return np.array(self.colour_matrix, np.float64)

    def shading_gains(self, f_number: float) -> np.ndarray:
        """Gains (4, rows, cols) at `f_number`: the relative illumination 1/gain
        is interpolated linearly in 1/N^2 between the nearest stored apertures
        (exact for a vignetting term proportional to the aperture area), and
        clamped to the stored range."""
        grids = sorted(self.shading, key=lambda g: g.f_number)
        shape = (4, self.grid_rows, self.grid_cols)
        u = [1.0 / g.f_number ** 2 for g in grids]
        light = [1.0 / np.array(g.gains, np.float64).reshape(shape) for g in grids]
        x = min(max(1.0 / f_number ** 2, min(u)), max(u))
        for i in range(len(grids) - 1):
            lo, hi = u[i + 1], u[i]          # u decreases as N grows
            if lo <= x <= hi:
                t = (x - lo) / (hi - lo) if hi > lo else 0.0
                return 1.0 / (light[i + 1] + t * (light[i] - light[i + 1]))
        return 1.0 / light[0]


def encode(cal: Calibration) -> bytes:
    """The EEPROM bytes of `cal`. Raises CalibrationError if it does not fit the format."""
    serial = cal.serial.encode("utf-8")
    _require(1 <= len(serial) <= 64, f"serial {cal.serial!r} must be 1-64 bytes of UTF-8")
    _require(all(g.f_number > 0 for g in cal.shading) and 1 <= len(cal.shading) <= 16,
             "there must be 1-16 shading grids with positive f-numbers")
    cells = 4 * cal.grid_rows * cal.grid_cols
    _require(all(len(g.gains) == cells for g in cal.shading),
             f"every shading grid must hold 4 x {cal.grid_rows} x {cal.grid_cols} gains")
    kinds = {v: k for k, v in DEFECT_KINDS.items()}
    _require(all(d.kind in kinds for d in cal.defects), "defect kinds must be 'hot' or 'dead'")
    try:
        parts = [_SENSOR.pack(cal.sensor_width, cal.sensor_height, cal.black_level,
                              cal.white_level),
                 struct.pack("<9f", *(v for row in cal.colour_matrix for v in row)),
                 bytes([len(serial)]) + serial,
                 _GRID.pack(cal.grid_cols, cal.grid_rows, len(cal.shading), 0)]
        for grid in sorted(cal.shading, key=lambda g: g.f_number):
            parts.append(struct.pack(f"<f{cells}f", grid.f_number, *grid.gains))
        parts.append(struct.pack("<I", len(cal.defects)))
        parts.extend(_DEFECT.pack(d.x, d.y, kinds[d.kind]) for d in cal.defects)
    except (struct.error, OverflowError) as exc:
        raise CalibrationError(f"calibration does not fit the EEPROM format: {exc}") from None
    body = b"".join(parts)
    total = _HEADER.size + len(body) + 4
    blob = _HEADER.pack(MAGIC, VERSION, 0, total) + body
    return blob + struct.pack("<I", zlib.crc32(blob))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CalibrationError(message)


class _Reader:
    """Bounded cursor over the body: a short read is a CalibrationError."""

    def __init__(self, data: bytes, offset: int, end: int):
        self.data, self.pos, self.end = data, offset, end

    def take(self, size: int, what: str) -> bytes:
        if size > self.end - self.pos:
            raise CalibrationError(
                f"calibration blob ends inside the {what}: it needs {size} bytes at offset "
                f"{self.pos} but only {self.end - self.pos} remain")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: struct.Struct | str, what: str) -> tuple:
        fmt = struct.Struct(fmt) if isinstance(fmt, str) else fmt
        return fmt.unpack(self.take(fmt.size, what))


def decode(blob: bytes) -> Calibration:
    """Parse and check an EEPROM blob (exactly the bytes encode() wrote)."""
    blob = bytes(blob)
    _require(len(blob) >= MIN_BLOB_BYTES, f"calibration blob is truncated: {len(blob)} bytes, "
             f"less than the {MIN_BLOB_BYTES}-byte header and checksum")
    magic, version, _, total = _HEADER.unpack_from(blob)
    _require(magic == MAGIC, f"calibration blob starts with {magic!r}, not {MAGIC!r}: "
             "it is not a modcam calibration")
    _require(version == VERSION, f"calibration version {version} is not supported "
             f"(this reader understands version {VERSION})")
    _require(MIN_BLOB_BYTES <= total <= MAX_BLOB_BYTES,
             f"calibration length field says {total} bytes, outside "
             f"{MIN_BLOB_BYTES}-{MAX_BLOB_BYTES}")
    _require(len(blob) >= total, f"calibration blob is truncated: {len(blob)} of {total} bytes")
    _require(len(blob) == total, f"calibration blob has {len(blob) - total} bytes after "
             f"its declared end at {total}")
    stored, = struct.unpack_from("<I", blob, total - 4)
    computed = zlib.crc32(blob[:total - 4])
    _require(stored == computed, f"calibration checksum mismatch: stored 0x{stored:08x}, "
             f"computed 0x{computed:08x}; the EEPROM contents are corrupt")
    r = _Reader(blob, _HEADER.size, total - 4)
    cal = _decode_body(r)
    _require(r.pos == r.end, f"calibration blob has {r.end - r.pos} unexpected bytes "
             "between the defect list and the checksum")
    return cal


def _decode_body(r: _Reader) -> Calibration:
    width, height, black, white = r.unpack(_SENSOR, "sensor description")
    _require(width > 0 and height > 0, f"sensor size {width}x{height} is empty")
    _require(black < white, f"black level {black} is not below white level {white}")
    m = r.unpack("<9f", "colour matrix")
    _require(all(math.isfinite(v) for v in m), "colour matrix holds a non-finite number")
    n, = r.unpack("<B", "serial length")
    _require(n >= 1, "serial is empty")
    try:
        serial = r.take(n, "serial").decode("utf-8")
    except UnicodeDecodeError:
        raise CalibrationError("serial is not valid UTF-8") from None
    cols, rows, count, _ = r.unpack(_GRID, "shading grid description")
    _require(2 <= cols <= 64 and 2 <= rows <= 64,
             f"shading grid {cols}x{rows} is outside 2x2-64x64")
    _require(1 <= count <= 16, f"shading grid count {count} is outside 1-16")
    cells = 4 * rows * cols
    grids = []
    for i in range(count):
        f_number, *gains = r.unpack(f"<f{cells}f", f"shading grid {i}")
        _require(math.isfinite(f_number) and f_number > 0,
                 f"shading grid {i} has f-number {f_number}")
        _require(all(math.isfinite(g) and g > 0 for g in gains),
                 f"shading grid {i} holds a gain that is not a positive number")
        grids.append(ShadingGrid(f_number, tuple(gains)))
    _require(all(a.f_number < b.f_number for a, b in zip(grids, grids[1:])),
             "shading grids are not in ascending f-number order")
    ndef, = r.unpack("<I", "defect count")
    _require(ndef * _DEFECT.size <= r.end - r.pos, f"defect count {ndef} needs "
             f"{ndef * _DEFECT.size} bytes but only {r.end - r.pos} remain")
    defects = []
    for x, y, kind in _DEFECT.iter_unpack(r.take(ndef * _DEFECT.size, "defect list")):
        _require(x < width and y < height,
                 f"defect ({x}, {y}) is outside the {width}x{height} sensor")
        _require(kind in DEFECT_KINDS, f"defect ({x}, {y}) has unknown kind {kind}")
        defects.append(DefectPixel(x, y, DEFECT_KINDS[kind]))
    return Calibration(serial, black, white, (m[0:3], m[3:6], m[6:9]), cols, rows,
                       tuple(grids), tuple(defects), width, height)


# --- the virtual module's true calibration ----------------------------------

GRID_COLS, GRID_ROWS = 17, 13
VIRTUAL_F_NUMBERS = (1.4, 2.8, 5.6, 11.0)


def _f32(values) -> tuple:
    return tuple(float(v) for v in np.asarray(values, np.float32).ravel())


def virtual_calibration(serial: str) -> Calibration:
    """What a factory would measure on the virtual module `serial`, exactly:
    its defects, black/white level, inverse colour matrix and shading."""
    # imported here: decoding a real module's blob never loads the virtual model
    from modcam.virtual import colour, optics
    from modcam.virtual import sensor_model as sm

    shading = optics.LensShading.from_serial(serial)
    xs = np.linspace(-sm.HALF_WIDTH_NORM, sm.HALF_WIDTH_NORM, GRID_COLS)[None, :]
    ys = np.linspace(-sm.HALF_HEIGHT_NORM, sm.HALF_HEIGHT_NORM, GRID_ROWS)[:, None]
    grids = tuple(
        ShadingGrid(float(np.float32(f)), _f32([1.0 / shading.relative_illumination(
            xs, ys, f, sm.CHANNEL_TO_NATIVE[c]) for c in range(4)]))
        for f in VIRTUAL_F_NUMBERS)
    m = _f32(colour.native_to_srgb(serial))
    return Calibration(serial, sm.BLACK_LEVEL, sm.WHITE_LEVEL, (m[0:3], m[3:6], m[6:9]),
                       GRID_COLS, GRID_ROWS, grids,
                       tuple(DefectPixel(d.x, d.y, d.kind) for d in sm.defect_pixels(serial)),
                       sm.WIDTH, sm.HEIGHT)
