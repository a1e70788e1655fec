"""Exif: PictureMeta as Exif tags, and the TIFF IFDs that carry them.

Owns the one mapping from PictureMeta to Exif tags, shared by the JPEG (an
APP1 block) and the DNG (IFD0 and an Exif IFD), so both files say the same
thing, and the little-endian IFD serialiser both use. docs/formats.md lists
the tags one by one.

Tag numbers and types come from piexif's table (ImageIFD, ExifIFD,
piexif.TAGS). The bytes are not made by piexif.dump(): piexif 1.1.3, the
current release on PyPI and in Debian 12, ends the Exif IFD without its
4-byte next-IFD offset, so the first value after the IFD is read as that
offset ("Value for ExifIFD tag 0x829a ExposureTime overlaps IFD", says
exiftool -validate), and it leaves values at odd offsets. Serialising an IFD
is some 30 lines here, and the DNG's Exif IFD needs them anyway, since
tifffile cannot write one.
"""
from __future__ import annotations

import struct
from datetime import datetime
from fractions import Fraction
from functools import lru_cache

import piexif
from piexif import ExifIFD, ImageIFD

from .meta import PictureMeta

# Micro Four Thirds: the 17.3 x 13.0 mm sensor's diagonal is half a 35 mm frame's.
CROP_FACTOR = 2.0
_FORMATS = {1: "B", 2: "s", 3: "H", 4: "I", 5: "I", 7: "s", 9: "i", 10: "i"}


@lru_cache(maxsize=1)
def software() -> str:
    """The Software tag: "modcam <version>"."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"modcam {version('modcam')}"
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "modcam"


def ascii_text(text: str) -> str:
    """Exif ASCII is 7-bit printable: other characters become '?'."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def rational(value: float, denominator: int = 1000) -> tuple:
    """(numerator, denominator) of `value` to 1/denominator, reduced."""
    f = Fraction(round(value * denominator), denominator)
    return (f.numerator, f.denominator)


def exposure_rational(exposure_us: int) -> tuple:
    f = Fraction(exposure_us, 1_000_000)  # exact: 10000 us -> 1/100 s
    return (f.numerator, f.denominator)


def subject_distance(lens_position: float) -> tuple:
    # Exif: 0xFFFFFFFF/1 means infinity; dioptres are reciprocal metres.
    if lens_position <= 0:
        return (0xFFFFFFFF, 1)
    return rational(1.0 / lens_position)


def _times(ts: datetime) -> dict:
    minutes = int(ts.utcoffset().total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return {"DateTime": ts.strftime("%Y:%m:%d %H:%M:%S"),
            "SubSec": f"{ts.microsecond // 1000:03d}",   # milliseconds, as cameras write
            "Offset": f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"}


def exif_fields(meta: PictureMeta, size: tuple | None = None, rendered: bool = True) -> dict:
    """Exif tags of `meta` as {"0th": {tag: value}, "Exif": {tag: value}}, values
    in piexif's form (str, int, (num, den), tuples of those, bytes).

    size: (width, height) of the rendered image (PixelX/YDimension).
    rendered: True for a JPEG (sRGB, YCbCr: the tags Exif requires of one);
    False for a DNG, whose raw data has no colour space or component order.
    """
    t = _times(meta.timestamp)
    lo, hi = meta.aperture_range
    focal = rational(meta.focal_length_mm, 100)
    zeroth = {
        ImageIFD.Make: ascii_text(meta.make),
        ImageIFD.Model: ascii_text(meta.model),
        ImageIFD.Orientation: meta.orientation,
        ImageIFD.Software: ascii_text(software()),
        ImageIFD.DateTime: t["DateTime"],
    }
    exif = {
        ExifIFD.ExposureTime: exposure_rational(meta.exposure_us),
        ExifIFD.FNumber: rational(meta.aperture, 100),
        ExifIFD.ISOSpeedRatings: meta.iso,   # PhotographicSensitivity in Exif 2.3
        ExifIFD.ExifVersion: b"0232",        # 2.32: has the OffsetTime* tags
        ExifIFD.DateTimeOriginal: t["DateTime"],
        ExifIFD.DateTimeDigitized: t["DateTime"],
        ExifIFD.OffsetTime: t["Offset"],
        ExifIFD.OffsetTimeOriginal: t["Offset"],
        ExifIFD.OffsetTimeDigitized: t["Offset"],
        ExifIFD.SubSecTime: t["SubSec"],
        ExifIFD.SubSecTimeOriginal: t["SubSec"],
        ExifIFD.SubSecTimeDigitized: t["SubSec"],
        ExifIFD.SubjectDistance: subject_distance(meta.lens_position),
        ExifIFD.FocalLength: focal,
        ExifIFD.FocalLengthIn35mmFilm: round(meta.focal_length_mm * CROP_FACTOR * meta.zoom),
        ExifIFD.BodySerialNumber: ascii_text(meta.serial),
        ExifIFD.LensSpecification: (focal, focal, rational(lo, 100), rational(hi, 100)),
        ExifIFD.LensMake: ascii_text(meta.make),
        ExifIFD.LensModel: ascii_text(meta.lens_model),
    }
    if meta.zoom != 1:   # zoom2x is a crop: what Exif calls digital zoom
        exif[ExifIFD.DigitalZoomRatio] = (meta.zoom, 1)
    if rendered:
        zeroth.update({ImageIFD.XResolution: (72, 1), ImageIFD.YResolution: (72, 1),
                       ImageIFD.ResolutionUnit: 2,                   # inches
                       ImageIFD.YCbCrPositioning: 1})                # centred
        exif.update({ExifIFD.ComponentsConfiguration: b"\x01\x02\x03\x00",  # Y Cb Cr
                     ExifIFD.FlashpixVersion: b"0100",
                     ExifIFD.ColorSpace: 1})                                 # sRGB
        if size is not None:
            exif[ExifIFD.PixelXDimension], exif[ExifIFD.PixelYDimension] = size
    return {"0th": zeroth, "Exif": exif}


# --- TIFF IFDs ------------------------------------------------------------------

def tag_type(table: str, code: int) -> int:
    """The TIFF type of tag `code` in piexif's table "Image" or "Exif"."""
    return piexif.TAGS[table][code]["type"]


def encode(kind: int, value) -> tuple:
    """(count, little-endian bytes) of one tag value in piexif's form."""
    if kind == 2:                                    # ASCII, NUL-terminated
        data = value.encode("ascii") + b"\0"
        return len(data), data
    if kind == 7:                                    # UNDEFINED: raw bytes
        return len(value), bytes(value)
    values = flat(value)
    count = len(values) // 2 if kind in (5, 10) else len(values)
    return count, struct.pack(f"<{len(values)}{_FORMATS[kind]}", *values)


def flat(value) -> tuple:
    """An int, a (num, den) pair or a tuple of pairs, as one flat tuple."""
    if not isinstance(value, tuple):
        return (value,)
    return tuple(v for item in value for v in (item if isinstance(item, tuple) else (item,)))


def tiff_ifd(table: str, fields: dict, offset: int) -> bytes:
    """A little-endian IFD of `fields` (tag -> value, types from `table`) placed
    at file offset `offset` (even); its values longer than 4 bytes follow it,
    each at an even offset. The next-IFD offset is 0."""
    entries, values = [], bytearray()
    value_at = offset + 2 + 12 * len(fields) + 4
    for code in sorted(fields):
        kind = tag_type(table, code)
        count, data = encode(kind, fields[code])
        if len(data) <= 4:
            inline = data.ljust(4, b"\0")
        else:
            inline = struct.pack("<I", value_at + len(values))
            values += data + b"\0" * (len(data) & 1)
        entries.append(struct.pack("<HHI", code, kind, count) + inline)
    return struct.pack("<H", len(entries)) + b"".join(entries) + b"\0\0\0\0" + bytes(values)


def app1(fields: dict) -> bytes:
    """The JPEG APP1 payload: "Exif\\0\\0", a little-endian TIFF header, IFD0
    (fields["0th"] and a pointer to the Exif IFD), then the Exif IFD."""
    zeroth = {**fields["0th"], ImageIFD.ExifTag: 0}
    exif_at = 8 + len(tiff_ifd("Image", zeroth, 8))   # the pointer is inline: size is fixed
    zeroth[ImageIFD.ExifTag] = exif_at
    tiff = (b"II*\0" + struct.pack("<I", 8) + tiff_ifd("Image", zeroth, 8)
            + tiff_ifd("Exif", fields["Exif"], exif_at))
    return b"Exif\0\0" + tiff
