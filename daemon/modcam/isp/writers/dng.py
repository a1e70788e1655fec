"""DNG 1.4 output: the raw mosaic, bit-exact, with what a converter needs to render it.

Owns the DNG a capture writes: one IFD holding the CFA image (16-bit samples
carrying the sensor's 12-bit values, one uncompressed strip, NewSubFileType
0), its DNG tags (mosaic, black and white level, ColorMatrix1 derived from
the module's calibration, AsShotNeutral from the white balance, camera and
lens identity) and an Exif IFD with the exposure, shared with the JPEG's Exif
(meta.exif_fields). Tag by tag: docs/formats.md.

File layout: TIFF header, IFD0 and its values (laid out by tifffile), the
pixels, then the Exif IFD. tifffile lays out IFD0 from a shape alone
(`data=None`) into a sink that keeps the few hundred header bytes and only
counts the pixel bytes; the pixels are then streamed from the caller's array
in 8 MiB pieces. So no 200 MB copy is made, and a pipe (CaptureToFd) works
although tifffile itself needs a seekable file. tifffile cannot write an Exif
IFD, so that one IFD (some 20 entries) is serialised here.

Readout modes: the DNG holds exactly the frame read out; `binned` is half
the size in each direction, `zoom2x` the central crop. Both keep RGGB phase,
so no DefaultCrop tags are needed (their default is the whole image).
"""
from __future__ import annotations

import io

import numpy as np
import tifffile

from .exif import ascii_text, encode, exif_fields, flat, tag_type, tiff_ifd
from .meta import PictureMeta
from .output import Output

__all__ = ["write_dng", "dng_colour_matrix"]

# IEC 61966-2-1: linear sRGB (D65) -> CIE XYZ.
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
# The DNG SDK's profile connection space white (D50, xy 0.3457, 0.3585).
D50_XYZ = np.array([0.3457 / 0.3585, 1.0, (1.0 - 0.3457 - 0.3585) / 0.3585])
_CFA_CODES = {"R": 0, "G": 1, "B": 2}
_D65 = 21                      # CalibrationIlluminant: Exif LightSource D65
_PIECE_BYTES = 8 << 20         # pixels per write(2): bounded extra memory for conversions


def dng_colour_matrix(camera_to_srgb) -> np.ndarray:
    """ColorMatrix1 (XYZ -> camera native, D65) from the calibration's camera
    native -> linear sRGB (D65) matrix: the inverse of camera -> sRGB -> XYZ,
    scaled as the DNG SDK normalises colour matrices (the D50 white maps to a
    camera neutral whose largest component is 1)."""
    xyz_to_camera = np.linalg.inv(SRGB_TO_XYZ @ np.asarray(camera_to_srgb, np.float64))
    return xyz_to_camera / np.max(xyz_to_camera @ D50_XYZ)


def _rationals(values, denominator: int) -> tuple:
    """Flat (num, den, num, den, ...) at a fixed denominator, as tifffile wants."""
    return tuple(v for x in np.ravel(values)
                 for v in (int(round(float(x) * denominator)), denominator))


PRIVATE_MAGIC = b"modcam\0"   # DNGPrivateData starts with the maker's name (DNG 1.4, 50740)
PRIVATE_VERSION = 1


def private_data(meta: PictureMeta, calibration) -> bytes:
    """DNGPrivateData: what re-developing the file needs beyond the standard
    tags. Layout (docs/formats.md): "modcam\\0", u32 version, u32 JSON length,
    JSON (readout mode, lens position, firmware), then the module's calibration
    EEPROM blob (modcam.calibration format) to the end."""
    import json
    import struct

    from modcam.calibration import encode

    info = json.dumps({"readout_mode": meta.readout_mode, "lens_position": meta.lens_position,
                       "firmware": meta.firmware}).encode()
    return PRIVATE_MAGIC + struct.pack("<II", PRIVATE_VERSION, len(info)) + info + encode(calibration)


def _dng_tags(meta: PictureMeta, exif_offset: int, private: bytes = b"") -> list:
    """IFD0 tags beyond the image structure tifffile writes, as tifffile
    extratags (code, type, count, value, writeonce)."""
    lo, hi = meta.aperture_range
    f = meta.focal_length_mm
    tags = [
        (33421, 3, 2, (2, 2)),                                    # CFARepeatPatternDim
        (33422, 1, 4, tuple(_CFA_CODES[c] for c in meta.cfa_pattern)),  # CFAPattern
        # By name: tifffile filters the integer code (it cannot write the IFD itself).
        ("ExifTag", 4, 1, exif_offset),                           # Exif IFD pointer
        (50706, 1, 4, (1, 4, 0, 0)),                              # DNGVersion
        (50707, 1, 4, (1, 1, 0, 0)),                              # DNGBackwardVersion
        (50708, 2, 0, ascii_text(f"{meta.make} {meta.model}")),   # UniqueCameraModel
        (50710, 1, 3, (0, 1, 2)),                                 # CFAPlaneColor
        (50711, 3, 1, 1),                                         # CFALayout: rectangular
        (50713, 3, 2, (1, 1)),                                    # BlackLevelRepeatDim
        (50714, 4, 1, meta.black_level),                          # BlackLevel
        (50717, 4, 1, meta.white_level),                          # WhiteLevel
        (50721, 10, 9, _rationals(dng_colour_matrix(meta.colour_matrix), 10000)),
        (50728, 5, 3, _rationals(meta.as_shot_neutral(), 1_000_000)),  # AsShotNeutral
        (50735, 2, 0, ascii_text(meta.serial)),                   # CameraSerialNumber
        (50736, 5, 4, _rationals((f, f, lo, hi), 100)),           # LensInfo
        (50778, 3, 1, _D65),                                      # CalibrationIlluminant1
    ]
    if private:
        tags.append((50740, 1, len(private), private))            # DNGPrivateData
    zeroth = exif_fields(meta, rendered=False)["0th"]    # Make, Model, Orientation, ...
    for code, value in zeroth.items():
        kind = tag_type("Image", code)
        count, _ = encode(kind, value)
        tags.append((code, kind, 0 if kind == 2 else count, value if kind == 2 else flat(value)))
    return [(*t, True) for t in tags]   # tifffile sorts IFD entries by code


class _LayoutSink(io.RawIOBase):
    """A seekable file for tifffile that keeps the bytes written below
    `keep` and only counts those above: the pixel area of a `data=None`
    image, which tifffile fills by seeking to its last byte."""

    def __init__(self, keep: int = 1 << 20):
        super().__init__()
        self.name = "modcam.dng"   # tifffile asks a stream for its name
        self.head, self.keep, self.pos, self.size = bytearray(), keep, 0, 0
        self.writes = []   # (position, length, first byte) of every write

    def readable(self): return False
    def writable(self): return True
    def seekable(self): return True
    def tell(self): return self.pos

    def seek(self, offset, whence=io.SEEK_SET):
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def write(self, data):
        data = bytes(data)
        end = self.pos + len(data)
        self.writes.append((self.pos, len(data), data[:1]))
        if end <= self.keep:
            if self.pos > len(self.head):     # a hole below `keep`: zeros, as in a file
                self.head.extend(bytes(self.pos - len(self.head)))
            self.head[self.pos:end] = data
        self.pos, self.size = end, max(self.size, end)
        return len(data)


def _layout(shape: tuple, tags: list) -> tuple:
    """(header bytes, offset of the pixels) of a DNG whose pixels end the file."""
    sink = _LayoutSink()
    tifffile.imwrite(sink, data=None, shape=shape, dtype="<u2", byteorder="<",
                     photometric=32803, subfiletype=0, rowsperstrip=shape[0],
                     software=False, metadata=None, extratags=tags)
    nbytes = shape[0] * shape[1] * 2
    offset = sink.size - nbytes
    # tifffile must have written the header and IFD0 below `offset` and
    # reserved the pixel area by writing its last byte alone; any other layout
    # is one we did not plan for, and streaming the pixels after the header
    # would then be wrong.
    beyond = [w for w in sink.writes if w[0] + w[1] > offset]
    if beyond != [(sink.size - 1, 1, b"\0")] or offset > sink.keep or offset % 2:
        raise RuntimeError(f"tifffile {tifffile.__version__} laid out the DNG unexpectedly")
    return bytes(sink.head[:offset].ljust(offset, b"\0")), offset


def write_dng(target, cfa: np.ndarray, meta: PictureMeta, calibration=None) -> int:
    """Write the 2-D uint16 CFA frame `cfa` (12-bit values as read out) as a
    DNG to `target` (a path, written atomically, or an fd). `calibration`
    (modcam.calibration.Calibration), when given, supplies black level, white
    level and colour matrix and is embedded whole as DNGPrivateData, so that
    `modcamctl develop` can re-develop the file exactly (shading, defects);
    otherwise `meta` must carry them (see PictureMeta.from_calibration).
    Returns the bytes written."""
    private = b""
    if calibration is not None:
        meta = meta.with_calibration(calibration)
        private = private_data(meta, calibration)
    _check_cfa(cfa)
    if meta.colour_matrix is None:
        raise ValueError("a DNG needs the module's colour matrix: build the metadata with "
                         "PictureMeta.from_calibration() or pass the calibration")
    exif_fields_ = exif_fields(meta, rendered=False)["Exif"]
    _, offset = _layout(cfa.shape, _dng_tags(meta, 0, private))
    exif_offset = offset + cfa.nbytes            # even: 2-byte samples
    if exif_offset > 2**32 - 2**16:              # classic TIFF offsets are 32-bit
        raise ValueError(f"a {cfa.shape[1]}x{cfa.shape[0]} frame is too large for a DNG")
    header, offset2 = _layout(cfa.shape, _dng_tags(meta, exif_offset, private))
    if offset2 != offset:                        # the pointer's value cannot move the layout
        raise RuntimeError("the DNG layout changed between passes")
    with Output(target, "the DNG") as out:
        out.write(header)
        _write_pixels(out, cfa)
        out.write(tiff_ifd("Exif", exif_fields_, exif_offset))
        return out.written


def _write_pixels(out: Output, cfa: np.ndarray) -> None:
    rows = max(1, _PIECE_BYTES // (2 * cfa.shape[1]))
    for r0 in range(0, cfa.shape[0], rows):
        piece = cfa[r0:r0 + rows]
        # A little-endian, C-contiguous piece is written in place; anything else
        # (a strided view, big-endian data) is converted one piece at a time.
        out.write(np.ascontiguousarray(piece, dtype="<u2"))


def _check_cfa(cfa) -> None:
    if not isinstance(cfa, np.ndarray):
        raise ValueError(f"the CFA frame must be a numpy array, not {type(cfa).__name__}")
    if cfa.dtype.kind != "u" or cfa.dtype.itemsize != 2:
        raise ValueError(f"the CFA frame must have dtype uint16, not {cfa.dtype}")
    if cfa.ndim != 2 or cfa.shape[0] < 2 or cfa.shape[1] < 2:
        raise ValueError(f"the CFA frame must be 2-D with at least 2x2 pixels, not shape "
                         f"{cfa.shape}")
    if cfa.shape[0] % 2 or cfa.shape[1] % 2:
        raise ValueError(f"the CFA frame {cfa.shape[1]}x{cfa.shape[0]} must have even sides: "
                         "the 2x2 colour pattern repeats over the whole image")
