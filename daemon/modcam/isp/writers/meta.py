"""What a written picture says about itself: PictureMeta.

Owns the metadata every writer needs (who made the picture, how it was
exposed, when, with which readout mode, mosaic and calibration) and its
checks, so that a writer never starts on metadata it cannot record. The
mapping to Exif tags is in exif.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

READOUT_MODES = ("full", "binned", "zoom2x")
# Field of view relative to `full`: binned keeps it, zoom2x is the central half.
_ZOOM = {"full": 1, "binned": 1, "zoom2x": 2}


@dataclass(frozen=True)
class PictureMeta:
    """One picture's metadata, as the writers need it. Build it with
    from_calibration() so black/white level and colour matrix are the module's."""

    make: str
    model: str
    serial: str
    firmware: str
    exposure_us: int                 # exposure time, microseconds
    analogue_gain: float             # 1.0 = base sensitivity = ISO 100
    aperture: float                  # f-number
    lens_position: float             # dioptres (libcamera's LensPosition); 0 = infinity
    timestamp: datetime              # start of exposure, timezone-aware
    readout_mode: str = "full"
    cfa_pattern: str = "RGGB"        # colours of the 2x2 tile at (0,0), (1,0), (0,1), (1,1)
    black_level: int = 256
    white_level: int = 4095
    wb_gains: tuple = (1.0, 1.0, 1.0)   # R, G, B gains that make a neutral grey
    colour_matrix: tuple | None = None  # 3x3: camera native RGB -> linear sRGB (D65)
    focal_length_mm: float = 35.0
    aperture_range: tuple = (1.4, 11.0)  # the lens's widest and narrowest f-number
    lens_model: str = "35mm F1.4-11"
    orientation: int = 1             # Exif/TIFF orientation, 1 = rows top to bottom

    @classmethod
    def from_calibration(cls, calibration, **capture) -> "PictureMeta":
        """Metadata whose serial, black level, white level and colour matrix come
        from a modcam.calibration.Calibration; `capture` gives the rest."""
        return cls(serial=calibration.serial, black_level=calibration.black_level,
                   white_level=calibration.white_level,
                   colour_matrix=tuple(tuple(float(v) for v in row)
                                       for row in calibration.colour_matrix), **capture)

    def with_calibration(self, calibration) -> "PictureMeta":
        """This metadata with the calibration's black/white level and matrix;
        refuses a calibration that belongs to another module."""
        if calibration.serial != self.serial:
            raise ValueError(f"the calibration is for module {calibration.serial!r}, "
                             f"but the picture comes from module {self.serial!r}")
        return replace(self, black_level=calibration.black_level,
                       white_level=calibration.white_level,
                       colour_matrix=tuple(tuple(float(v) for v in row)
                                           for row in calibration.colour_matrix))

    def __post_init__(self):
        _check_text(self)
        _check_numbers(self)
        _check_mosaic(self)

    @property
    def iso(self) -> int:
        """ISO speed: analogue gain x 100, within the SHORT the tag holds."""
        return min(max(round(self.analogue_gain * 100), 1), 65535)

    @property
    def zoom(self) -> int:
        return _ZOOM[self.readout_mode]

    def as_shot_neutral(self) -> tuple:
        """Camera-native (R, G, B) of a neutral grey, G = 1: the inverse gains."""
        r, g, b = self.wb_gains
        return (g / r, 1.0, g / b)


def _check_text(m: PictureMeta) -> None:
    for f in ("make", "model", "serial", "firmware", "lens_model"):
        value = getattr(m, f)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{f} must be a non-empty string, not {value!r}")
    if not isinstance(m.timestamp, datetime) or m.timestamp.utcoffset() is None:
        raise ValueError(f"timestamp must be a datetime with a time zone, not {m.timestamp!r}: "
                         "Exif records the local time and its offset from UTC")
    if m.readout_mode not in READOUT_MODES:
        raise ValueError(f"readout mode {m.readout_mode!r} is not one of "
                         f"{', '.join(READOUT_MODES)}")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_numbers(m: PictureMeta) -> None:
    if not isinstance(m.exposure_us, int) or not 1 <= m.exposure_us <= 2**32 - 1:
        raise ValueError(f"exposure_us {m.exposure_us!r} must be a whole number of "
                         "microseconds between 1 and 4294967295")
    for f in ("analogue_gain", "aperture", "focal_length_mm"):
        if not _positive(getattr(m, f)):
            raise ValueError(f"{f} must be a positive number, not {getattr(m, f)!r}")
    if not (isinstance(m.lens_position, (int, float)) and math.isfinite(m.lens_position)
            and m.lens_position >= 0):
        raise ValueError(f"lens_position {m.lens_position!r} must be >= 0 dioptres")
    lo_hi = tuple(m.aperture_range)
    if len(lo_hi) != 2 or not all(_positive(v) for v in lo_hi) or lo_hi[0] > lo_hi[1]:
        raise ValueError(f"aperture_range {m.aperture_range!r} must be (widest, narrowest) "
                         "f-numbers")
    if not isinstance(m.orientation, int) or m.orientation not in range(1, 9):
        raise ValueError(f"orientation {m.orientation!r} is not an Exif orientation (1-8)")
    if len(m.wb_gains) != 3 or not all(_positive(g) for g in m.wb_gains):
        raise ValueError(f"wb_gains {m.wb_gains!r} must be three positive numbers (R, G, B)")
    if m.colour_matrix is not None and (
            len(m.colour_matrix) != 3 or any(len(r) != 3 for r in m.colour_matrix)
            or not all(isinstance(v, (int, float)) and math.isfinite(v)
                       for r in m.colour_matrix for v in r)):
        raise ValueError("colour_matrix must be 3 rows of 3 finite numbers")


def _check_mosaic(m: PictureMeta) -> None:
    if (not isinstance(m.cfa_pattern, str) or len(m.cfa_pattern) != 4
            or set(m.cfa_pattern) - set("RGB") or len(set(m.cfa_pattern)) != 3):
        raise ValueError(f"cfa_pattern {m.cfa_pattern!r} must be four letters of R, G and B "
                         "using all three, e.g. 'RGGB'")
    if not (isinstance(m.black_level, int) and isinstance(m.white_level, int)
            and 0 <= m.black_level < m.white_level <= 65535):
        raise ValueError(f"black level {m.black_level!r} and white level {m.white_level!r} "
                         "must be integers with 0 <= black < white <= 65535")
