"""Reading back a DNG that modcam wrote, to develop it again (`modcamctl develop`).

Owns the inverse of writers/dng.py: the CFA frame, the capture metadata from
the standard tags (and the Exif IFD), and the module's calibration from
DNGPrivateData, so a re-developed picture gets the same shading and defect
correction as the daemon's own. A DNG from another raw writer has no modcam
private data and is refused with a sentence: its calibration is unknown.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import tifffile

from modcam.calibration import Calibration, CalibrationError, decode
from modcam.isp.writers import PictureMeta
from modcam.isp.writers.dng import PRIVATE_MAGIC, PRIVATE_VERSION

_CFA_NAMES = {0: "R", 1: "G", 2: "B"}


class DngError(ValueError):
    """The file is not a DNG modcam can develop; the message says why."""


@dataclass(frozen=True)
class ModcamDng:
    cfa: np.ndarray             # (H, W) uint16, as read out
    meta: PictureMeta
    calibration: Calibration


def read_dng(path) -> ModcamDng:
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tags = {t.code: t.value for t in page.tags.values()}
            exif = tags.get(34665) or {}
            cfa = page.asarray()
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise DngError(f"{path} cannot be read as a DNG: {exc}") from None
    if 50706 not in tags or cfa.ndim != 2:
        raise DngError(f"{path} is not a single-frame DNG of CFA data")
    info, calibration = _private(tags.get(50740), path)
    return ModcamDng(np.ascontiguousarray(cfa, dtype=np.uint16),
                     _meta(tags, exif, info, calibration), calibration)


def _private(blob, path):
    blob = bytes(blob or b"")
    if not blob.startswith(PRIVATE_MAGIC):
        raise DngError(f"{path} carries no modcam calibration (DNGPrivateData): it was not "
                       "written by modcam, or without its module's calibration")
    try:
        version, size = struct.unpack_from("<II", blob, len(PRIVATE_MAGIC))
        if version != PRIVATE_VERSION:
            raise DngError(f"{path}: modcam private data version {version} is not supported")
        start = len(PRIVATE_MAGIC) + 8
        info = json.loads(blob[start:start + size])
        return info, decode(blob[start + size:])
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError, CalibrationError) as exc:
        raise DngError(f"{path}: the modcam private data is damaged: {exc}") from None


def _text(value, default=""):
    return value.strip("\0 ") if isinstance(value, str) else default


def _ratio(value, default):
    if isinstance(value, tuple) and len(value) == 2 and value[1]:
        return value[0] / value[1]
    return float(value) if isinstance(value, (int, float)) else default


def _timestamp(exif) -> datetime:
    try:
        ts = datetime.strptime(_text(exif.get("DateTimeOriginal")), "%Y:%m:%d %H:%M:%S")
        sub = _text(exif.get("SubsecTimeOriginal"), "0")
        ts += timedelta(seconds=float(f"0.{sub}"))
        off = _text(exif.get("OffsetTimeOriginal"), "+00:00")
        sign = -1 if off.startswith("-") else 1
        hours, minutes = (int(x) for x in off.lstrip("+-").split(":"))
        return ts.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
    except (ValueError, TypeError):
        return datetime.fromtimestamp(0, timezone.utc)


def _meta(tags, exif, info, cal) -> PictureMeta:
    pattern = "".join(_CFA_NAMES.get(c, "?") for c in tags.get(33422, (0, 1, 1, 2)))
    neutral = _neutral(tags.get(50728))
    gains = tuple(float(neutral[1] / n) for n in neutral)
    return PictureMeta.from_calibration(
        cal, make=_text(tags.get(271), "modcam"), model=_text(tags.get(272), "module"),
        firmware=str(info.get("firmware", "")),
        exposure_us=int(round(_ratio(exif.get("ExposureTime"), 0.01) * 1e6)),
        analogue_gain=float(exif.get("ISOSpeedRatings") or exif.get("PhotographicSensitivity")
                            or 100) / 100.0,
        aperture=_ratio(exif.get("FNumber"), 2.8),
        lens_position=float(info.get("lens_position", 0.0)),
        timestamp=_timestamp(exif), readout_mode=str(info.get("readout_mode", "full")),
        cfa_pattern=pattern, wb_gains=gains)


def _neutral(value):
    """AsShotNeutral (three rationals) as floats; neutral if absent."""
    if value is None:
        return (1.0, 1.0, 1.0)
    flat = list(np.asarray(value, dtype=np.float64).ravel())
    if len(flat) == 6:   # numerator, denominator pairs
        return tuple(flat[i] / flat[i + 1] for i in (0, 2, 4))
    return tuple(flat[:3])
