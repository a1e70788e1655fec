"""Colour of the virtual module: the sensor's native RGB and the illuminant.

Owns the colour model between a scene (linear sRGB reflectances) and the
sensor's three native channels:

- Camera matrix. The base response is that of a real micro-four-thirds CMOS
  sensor: Adobe's D65 ColorMatrix (XYZ -> camera native) for the Panasonic
  DC-G9, as tabulated in dcraw/LibRaw's adobe_coeff table. It is scaled so a
  D65 white gives native G = 1; the native white is then about (0.40, 1, 0.60),
  i.e. daylight white-balance gains near (2.5, 1, 1.66), as for real sensors.
- Unit to unit. Each unit's colour filters differ slightly: a per-channel
  sensitivity within +-3% and a crosstalk perturbation of +-1% per matrix
  entry, both seeded by the serial. Calibration stores the inverse, so two
  units agree after calibration.
- Illuminant. Given as "D65", "D50", "A" or a correlated colour temperature
  in kelvin: xy from the CIE daylight locus at 4000 K and above, from the
  Planckian locus (Kim et al. 2002 cubic fit) below. Light reflected from a
  surface is modelled per sRGB primary: reflectance * illuminant (both in
  linear sRGB), a three-band approximation of the spectral product: no
  metamerism, and a white surface reflects exactly the illuminant's colour.
"""
from __future__ import annotations

import numpy as np

from .sensor_model import serial_rng

# IEC 61966-2-1 linear sRGB (D65) -> CIE XYZ
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
XYZ_TO_SRGB = np.linalg.inv(SRGB_TO_XYZ)
# Adobe ColorMatrix2 (D65) of the Panasonic DC-G9, XYZ -> camera native, x 1e-4.
XYZ_TO_CAMERA_BASE = np.array([[7685, -2375, -634],
                               [-3687, 11700, 2249],
                               [-748, 1546, 5111]]) / 10000.0
D50_XYZ = np.array([0.96422, 1.0, 0.82521])
D65_XYZ = SRGB_TO_XYZ @ np.ones(3)     # (0.95047, 1, 1.08883), ASTM E308
# D65 is the sRGB matrix's own white, so that D65 light is exactly sRGB (1, 1, 1)
WHITE_POINTS_XY = {"D65": (float(D65_XYZ[0] / D65_XYZ.sum()), float(1.0 / D65_XYZ.sum())),
                   "D50": (0.34567, 0.35850), "A": (0.44757, 0.40745)}
BRADFORD = np.array([[0.8951, 0.2664, -0.1614],
                     [-0.7502, 1.7135, 0.0367],
                     [0.0389, -0.0685, 1.0296]])


def _camera_from_srgb_base() -> np.ndarray:
    m = XYZ_TO_CAMERA_BASE @ SRGB_TO_XYZ
    return m / (m @ np.ones(3))[1]     # D65 white (sRGB 1,1,1) -> native G = 1


CAMERA_FROM_SRGB_BASE = _camera_from_srgb_base()


def camera_from_srgb(serial: str) -> np.ndarray:
    """The unit's 3x3 matrix: linear sRGB light -> native (R, G, B) response."""
    rng = serial_rng(serial, "colour")
    crosstalk = np.eye(3) + rng.uniform(-0.01, 0.01, (3, 3))
    sensitivity = np.diag(1.0 + rng.uniform(-0.03, 0.03, 3))
    return sensitivity @ crosstalk @ CAMERA_FROM_SRGB_BASE


def native_to_srgb(serial: str) -> np.ndarray:
    """The calibration matrix: native (R, G, B) -> linear sRGB (D65), the exact
    inverse of camera_from_srgb. It maps the unit's D65 native white to (1, 1, 1)."""
    return np.linalg.inv(camera_from_srgb(serial))


# --- illuminants ---------------------------------------------------------

def _planckian_xy(cct: float) -> tuple[float, float]:
    t = float(cct)
    if t <= 4000.0:
        x = -0.2661239e9 / t**3 - 0.2343589e6 / t**2 + 0.8776956e3 / t + 0.179910
    else:
        x = -3.0258469e9 / t**3 + 2.1070379e6 / t**2 + 0.2226347e3 / t + 0.240390
    if t <= 2222.0:
        y = -1.1063814 * x**3 - 1.34811020 * x**2 + 2.18555832 * x - 0.20219683
    elif t <= 4000.0:
        y = -0.9549476 * x**3 - 1.37418593 * x**2 + 2.09137015 * x - 0.16748867
    else:
        y = 3.0817580 * x**3 - 5.87338670 * x**2 + 3.75112997 * x - 0.37001483
    return x, y


def _daylight_xy(cct: float) -> tuple[float, float]:
    t = float(cct)
    if t <= 7000.0:
        x = -4.6070e9 / t**3 + 2.9678e6 / t**2 + 0.09911e3 / t + 0.244063
    else:
        x = -2.0064e9 / t**3 + 1.9018e6 / t**2 + 0.24748e3 / t + 0.237040
    return x, -3.000 * x * x + 2.870 * x - 0.275


def illuminant_xy(illuminant: str | float) -> tuple[float, float]:
    """CIE 1931 xy of an illuminant name ("D65", "D50", "A") or a CCT in K
    (1667-25000): daylight locus from 4000 K, Planckian locus below."""
    if isinstance(illuminant, str):
        key = illuminant.upper()
        if key in WHITE_POINTS_XY:
            return WHITE_POINTS_XY[key]
        raise ValueError(f"illuminant {illuminant!r} is not D65, D50, A or a temperature in K")
    if not 1667.0 <= float(illuminant) <= 25000.0:
        raise ValueError(f"illuminant temperature {illuminant} K is outside 1667-25000 K")
    return _daylight_xy(illuminant) if illuminant >= 4000.0 else _planckian_xy(illuminant)


def xy_to_xyz(x: float, y: float, luminance: float = 1.0) -> np.ndarray:
    return np.array([x / y, 1.0, (1.0 - x - y) / y]) * luminance


def illuminant_srgb(illuminant: str | float) -> np.ndarray:
    """The illuminant's colour in linear sRGB, luminance Y = 1 ((1, 1, 1) for D65)."""
    return XYZ_TO_SRGB @ xy_to_xyz(*illuminant_xy(illuminant))


def scene_to_native_matrix(serial: str, illuminant: str | float) -> np.ndarray:
    """3x3 matrix: linear sRGB reflectance lit by `illuminant` -> native RGB."""
    return camera_from_srgb(serial) @ np.diag(illuminant_srgb(illuminant))


def white_native(serial: str, illuminant: str | float) -> np.ndarray:
    """Native (R, G, B) of a perfect white under `illuminant` (Y = 1)."""
    return scene_to_native_matrix(serial, illuminant) @ np.ones(3)


def scene_to_native(rgb: np.ndarray, serial: str, illuminant: str | float) -> np.ndarray:
    """Native RGB of reflectances `rgb` (..., 3) under `illuminant`."""
    return np.asarray(rgb) @ scene_to_native_matrix(serial, illuminant).T


# --- CIELAB, for the chart's published values ------------------------------

def lab_to_xyz(lab: np.ndarray, white: np.ndarray = D50_XYZ) -> np.ndarray:
    """CIE 1976 L*a*b* -> XYZ (Y of white = 1)."""
    lab = np.asarray(lab, np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    eps, kappa = 216.0 / 24389.0, 24389.0 / 27.0
    return np.where(f ** 3 > eps, f ** 3, (116.0 * f - 16.0) / kappa) * white


def xyz_to_lab(xyz: np.ndarray, white: np.ndarray = D50_XYZ) -> np.ndarray:
    """CIE XYZ -> L*a*b* (Y of white = 1)."""
    t = np.asarray(xyz, np.float64) / white
    eps, kappa = 216.0 / 24389.0, 24389.0 / 27.0
    f = np.where(t > eps, np.cbrt(t), (kappa * t + 16.0) / 116.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]),
                     200.0 * (f[..., 1] - f[..., 2])], axis=-1)


def bradford(src_white: np.ndarray, dst_white: np.ndarray) -> np.ndarray:
    """Bradford chromatic adaptation matrix (XYZ under src -> XYZ under dst)."""
    gain = (BRADFORD @ dst_white) / (BRADFORD @ src_white)
    return np.linalg.inv(BRADFORD) @ np.diag(gain) @ BRADFORD


def lab_d50_to_linear_srgb(lab: np.ndarray) -> np.ndarray:
    """Published L*a*b* (D50) -> linear sRGB (D65) via Bradford adaptation."""
    xyz65 = lab_to_xyz(lab) @ bradford(D50_XYZ, D65_XYZ).T
    return xyz65 @ XYZ_TO_SRGB.T


def linear_srgb_to_lab_d50(rgb: np.ndarray) -> np.ndarray:
    """Linear sRGB (D65) -> L*a*b* (D50): the inverse path, for ΔE checks."""
    xyz50 = (np.asarray(rgb) @ SRGB_TO_XYZ.T) @ bradford(D65_XYZ, D50_XYZ).T
    return xyz_to_lab(xyz50)
