"""The virtual module's lens: thin-lens defocus, depth of field, shading, blur.

Owns the optics between a scene plane and the sensor surface:

- Defocus. A thin lens of focal length f focused (LensPosition, dioptres) at
  D_f = 1/s_f images a plane at D = 1/s with a circle of confusion of diameter
      c = (f / N) * |D - D_f| / (1/f - D_f)          (all in metres)
  which is the aperture diameter times the relative image-distance error. The
  blur applied is a Gaussian with the disc's second moment (sigma = c/4, the
  rms radius of a uniform disc of diameter c per axis), added in quadrature to
  diffraction (sigma = 0.42 lambda N, the Gaussian fit of the Airy core) and a
  residual lens blur of 0.45 photosite. A Gaussian, not a disc, because it is
  separable (cost per pixel grows with the radius, not its square) and so can
  be rendered strip by strip cheaply; the bokeh shape is lost, the edge width
  (what autofocus and MTF measure) is kept.
- Depth of field from the same formula: the range of D where c <= 2 pixels.
- Shading: natural vignetting cos^4(theta), a mechanical term 1 - a(N) r^4
  that fades as the aperture closes (a(N) = 0.35 (1.4/N)^2: the rear element's
  mount cuts the oblique bundle only at wide apertures), and colour shading
  1 - k_c r^2 on native R and B (the IR-cut filter's edge moves towards blue at
  oblique incidence, so corners lose red; microlens shift costs some blue).

All positions are normalised image coordinates (sensor_model: origin at the
optical centre, corners at radius 1), so everything is radially symmetric.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import sensor_model as sm

FOCAL_LENGTH_MM = 35.0
F_NUMBER_MIN, F_NUMBER_MAX = 1.4, 11.0
MIN_FOCUS_M = 0.3
LENS_POSITION_MAX = 1.0 / MIN_FOCUS_M   # dioptres; 0 is infinity
TRANSMISSION = 0.9
WAVELENGTH_MM = 550e-6
LENS_BLUR_PHOTOSITES = 0.45   # residual aberration blur (sigma) of a good prime
DOF_COC_PX = 2.0
HALF_DIAGONAL_MM = sm.HALF_DIAGONAL_PX * sm.PIXEL_PITCH_MM
MECH_VIGNETTING_WIDE = 0.35   # corner loss of the mechanical term at f/1.4
MECH_VIGNETTING_F = 1.4
COLOUR_SHADING_R, COLOUR_SHADING_B = 0.12, 0.06


def check_f_number(f_number: float) -> float:
    if not F_NUMBER_MIN - 1e-9 <= f_number <= F_NUMBER_MAX + 1e-9:
        raise ValueError(f"Aperture f/{f_number} is outside f/{F_NUMBER_MIN}-f/{F_NUMBER_MAX:g}")
    return float(f_number)


def check_lens_position(lens_position: float) -> float:
    if not 0.0 <= lens_position <= LENS_POSITION_MAX + 1e-9:
        raise ValueError(f"LensPosition {lens_position} is outside 0-{LENS_POSITION_MAX:.3f} "
                         "dioptres (infinity to 0.3 m)")
    return float(lens_position)


def dioptres(distance_m: float) -> float:
    """1 / distance, with infinity as 0."""
    return 0.0 if math.isinf(distance_m) else 1.0 / distance_m


def coc_diameter_mm(subject_m: float, lens_position: float, f_number: float) -> float:
    """Circle-of-confusion diameter on the sensor (mm) of a point at `subject_m`
    when the lens is focused at 1/lens_position."""
    f_m = FOCAL_LENGTH_MM / 1000.0
    error = abs(dioptres(subject_m) - lens_position)
    return 1000.0 * (f_m / f_number) * error / (1.0 / f_m - lens_position)


def coc_px(subject_m: float, lens_position: float, f_number: float,
           mode: str = "full") -> float:
    """The same in readout pixels (a binned pixel is two photosites wide)."""
    return coc_diameter_mm(subject_m, lens_position, f_number) / sm.readout(mode).pixel_mm


def blur_sigma_px(subject_m: float, lens_position: float, f_number: float,
                  mode: str = "full") -> float:
    """Sigma (readout pixels) of the Gaussian PSF for a plane at `subject_m`."""
    ro = sm.readout(mode)
    defocus = coc_diameter_mm(subject_m, lens_position, f_number) / 4.0
    diffraction = 0.42 * WAVELENGTH_MM * f_number
    lens = LENS_BLUR_PHOTOSITES * sm.PIXEL_PITCH_MM
    var_mm2 = defocus ** 2 + diffraction ** 2 + lens ** 2
    # A binned pixel's four photosites sit at offsets 0 and 2 in x and y: their
    # spread is a box of +-1 photosite, sigma 1 photosite, i.e. half a binned pixel.
    var_px2 = var_mm2 / ro.pixel_mm ** 2 + (0.25 if ro.photosites == 4 else 0.0)
    return math.sqrt(var_px2)


def focus_tolerance_dpt(lens_position: float, f_number: float,
                        coc_limit_px: float = DOF_COC_PX, mode: str = "full") -> float:
    """Half-width (dioptres) of the depth of field around `lens_position`: a
    subject whose dioptre distance is within this of the lens position has a
    circle of confusion of at most `coc_limit_px` readout pixels."""
    f_m = FOCAL_LENGTH_MM / 1000.0
    c_m = coc_limit_px * sm.readout(mode).pixel_mm / 1000.0
    return c_m * f_number * (1.0 / f_m - lens_position) / f_m


def depth_of_field(lens_position: float, f_number: float,
                   coc_limit_px: float = DOF_COC_PX, mode: str = "full") -> tuple[float, float]:
    """(near, far) limits in metres; far is math.inf beyond the hyperfocal point."""
    half = focus_tolerance_dpt(lens_position, f_number, coc_limit_px, mode)
    near_d, far_d = lens_position + half, lens_position - half
    return 1.0 / near_d, (math.inf if far_d <= 0.0 else 1.0 / far_d)


# --- shading ---------------------------------------------------------------

@dataclass(frozen=True)
class LensShading:
    """Relative illumination of one unit's lens, 1 at the optical centre."""

    colour_k: tuple[float, float, float] = (COLOUR_SHADING_R, 0.0, COLOUR_SHADING_B)

    @classmethod
    def from_serial(cls, serial: str) -> "LensShading":
        """Units differ by the IR-cut filter coating: +-8% on the colour terms."""
        rng = sm.serial_rng(serial, "shading")
        k_r = COLOUR_SHADING_R * float(rng.uniform(0.92, 1.08))
        k_b = COLOUR_SHADING_B * float(rng.uniform(0.92, 1.08))
        return cls((k_r, 0.0, k_b))

    @staticmethod
    def vignetting(x, y, f_number: float):
        """Channel-independent falloff at normalised (x, y): cos^4 times the
        mechanical term."""
        r2 = np.asarray(x) ** 2 + np.asarray(y) ** 2
        tan2 = r2 * (HALF_DIAGONAL_MM / FOCAL_LENGTH_MM) ** 2
        natural = 1.0 / (1.0 + tan2) ** 2
        a = MECH_VIGNETTING_WIDE * (MECH_VIGNETTING_F / f_number) ** 2
        return natural * (1.0 - a * r2 * r2)

    def colour(self, x, y, native: int):
        """Extra falloff of native channel `native` (0 R, 1 G, 2 B)."""
        r2 = np.asarray(x) ** 2 + np.asarray(y) ** 2
        return 1.0 - self.colour_k[native] * r2

    def relative_illumination(self, x, y, f_number: float, native: int):
        """Total shading of native channel `native` at (x, y)."""
        return self.vignetting(x, y, f_number) * self.colour(x, y, native)


# --- blur -------------------------------------------------------------------

def gaussian_kernel(sigma: float) -> np.ndarray:
    """Sampled, normalised Gaussian, truncated at 3.5 sigma (float32)."""
    radius = max(1, int(math.ceil(3.5 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    return (k / k.sum()).astype(np.float32)


@dataclass(frozen=True)
class BlurPlan:
    """How to apply a blur of `sigma` pixels cheaply. Above DECIMATE_ABOVE
    pixels the plane is sampled on a grid `factor` times coarser (a box of
    `factor` pixels), blurred there by `sigma_coarse` and interpolated back
    linearly (a triangle of 2*factor pixels). The box and the triangle add
    factor^2/12 + factor^2/6 pixel^2 of blur, taken off the Gaussian so the
    total variance is exact; the cost per output pixel stays bounded however
    large the defocus."""

    sigma: float
    factor: int
    sigma_coarse: float

    DECIMATE_ABOVE = 3.0

    @classmethod
    def for_sigma(cls, sigma: float) -> "BlurPlan":
        if sigma < cls.DECIMATE_ABOVE:
            return cls(sigma, 1, sigma)
        k = int(sigma // 1.5)
        # the readout pixel's own box (1/12) is already part of `sigma`'s world
        var = (sigma ** 2 - (k * k - 1) / 12.0 - k * k / 6.0) / (k * k)
        return cls(sigma, k, math.sqrt(var))

    @property
    def kernel(self) -> np.ndarray:
        return gaussian_kernel(self.sigma_coarse)

    @property
    def radius(self) -> int:
        return (len(self.kernel) - 1) // 2


def blur_valid(a: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Convolve along `axis` keeping only fully covered samples (length shrinks
    by len(kernel) - 1). Tap by tap over slices: each output is the same sum in
    the same order wherever the array starts, so strips match whole images."""
    n = a.shape[axis] - len(kernel) + 1
    index = [slice(None)] * a.ndim

    def part(i: int) -> np.ndarray:
        index[axis] = slice(i, i + n)
        return a[tuple(index)]

    out = part(0) * kernel[0]
    for i in range(1, len(kernel)):
        out += part(i) * kernel[i]
    return out
