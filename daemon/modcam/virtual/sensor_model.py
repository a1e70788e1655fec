"""The virtual module's image sensor: geometry, readout modes, noise, defects.

Owns everything between "electrons collected by a photosite" and "12-bit DN
leaving the module": conversion gain, analogue gain, read noise, photon shot
noise, black level, quantisation and clipping, the unit's defective pixels
(seeded by its serial) and the geometry of the three readout modes. The
numbers and their reasons are in docs/virtual-module.md; in short:

- pixel pitch 17.3 mm / 11552 = 1.498 um (area 2.24 um^2);
- full well 7000 e-: ~3100 e-/um^2, what current BSI pixels of this size hold;
- conversion gain 0.55 DN/e- at analogue gain 1, so the 12-bit range above the
  black level (3839 DN) ends just below the full well: the ADC, not the
  photodiode, clips first at every gain and saturation is a clean 4095;
- read noise sqrt(1.5^2 + (1.3/gain)^2) e-: 1.98 e- at gain 1, 1.50 e- at 16
  (pixel source-follower noise before the gain, column/ADC noise after it).

Binned readout sums the four same-colour photosites of each 4x4 Bayer tile in
the digital domain and divides by four, so a binned pixel has the same DN scale
as a full one with half the noise. Digital, not charge, binning: in an RGGB
Bayer mosaic the same-colour photosites are two pitches apart and do not share
a floating diffusion (charge binning needs a Quad-Bayer layout), so each of the
four is read, with its own read noise, before the sum.
"""
from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np

WIDTH = 11552
HEIGHT = 8672
SENSOR_WIDTH_MM = 17.3
PIXEL_PITCH_MM = SENSOR_WIDTH_MM / WIDTH
# Image coordinates are normalised by the half-diagonal of the full sensor, in
# square units, origin at the optical centre: the corners are at radius 1.
HALF_DIAGONAL_PX = math.hypot(WIDTH, HEIGHT) / 2.0
HALF_WIDTH_NORM = WIDTH / 2.0 / HALF_DIAGONAL_PX
HALF_HEIGHT_NORM = HEIGHT / 2.0 / HALF_DIAGONAL_PX

BIT_DEPTH = 12
BLACK_LEVEL = 256
WHITE_LEVEL = 4095
FULL_WELL_E = 7000.0
CONVERSION_GAIN_DN_PER_E = 0.55   # at analogue gain 1
READ_NOISE_PRE_GAIN_E = 1.5       # source follower, residual reset noise
READ_NOISE_POST_GAIN_E = 1.3      # column amplifier + ADC, input-referred at gain 1
GAIN_MIN, GAIN_MAX = 1.0, 16.0
EXPOSURE_MIN_US, EXPOSURE_MAX_US = 30.0, 1_000_000.0
# Photoelectrons per lux-second of image-plane illuminance, for a neutral
# (D65) white in the green channel: ~1.1e4 photons/(lx s um^2) for daylight,
# a third of them through the green filter, QE ~0.75 -> 2750 e-/(lx s um^2).
SENSITIVITY_E_PER_LUX_S = 2750.0 * PIXEL_PITCH_MM ** 2 * 1e6

# Bayer channels in readout order; every readout mode starts with R at (0, 0).
CHANNELS = ("R", "Gr", "Gb", "B")
CHANNEL_TO_NATIVE = (0, 1, 1, 2)   # index into native (R, G, B)


@dataclass(frozen=True)
class Readout:
    """One readout mode: its pixel grid, in photosite units of the full sensor."""

    name: str
    width: int
    height: int
    pitch: int        # readout pixel pitch in photosites
    x0: int           # full-sensor column / row of the readout's first pixel
    y0: int
    photosites: int   # photosites averaged into one output pixel

    def centres_x(self, cols: np.ndarray) -> np.ndarray:
        """Normalised image x of the centres of readout columns `cols`."""
        return (self.x0 + (np.asarray(cols, np.float64) + 0.5) * self.pitch
                - WIDTH / 2.0) / HALF_DIAGONAL_PX

    def centres_y(self, rows: np.ndarray) -> np.ndarray:
        """Normalised image y (downwards) of the centres of readout rows `rows`."""
        return (self.y0 + (np.asarray(rows, np.float64) + 0.5) * self.pitch
                - HEIGHT / 2.0) / HALF_DIAGONAL_PX

    @property
    def pixel_norm(self) -> float:
        """Readout pixel pitch in normalised image units."""
        return self.pitch / HALF_DIAGONAL_PX

    @property
    def pixel_mm(self) -> float:
        return self.pitch * PIXEL_PITCH_MM


# Binned: 2x2 same-colour binning keeps RGGB order at half resolution; the
# binned pixel (bx, by) sums photosites x = 4*(bx//2) + bx%2 + {0, 2} (same in y).
# zoom2x: the central crop; its offsets are even, so the mosaic phase is kept.
READOUTS = {
    "full": Readout("full", WIDTH, HEIGHT, 1, 0, 0, 1),
    "binned": Readout("binned", WIDTH // 2, HEIGHT // 2, 2, 0, 0, 4),
    "zoom2x": Readout("zoom2x", WIDTH // 2, HEIGHT // 2, 1, WIDTH // 4, HEIGHT // 4, 1),
}


def readout(mode: str | Readout) -> Readout:
    if isinstance(mode, Readout):
        return mode
    try:
        return READOUTS[mode]
    except KeyError:
        raise ValueError(f"readout mode {mode!r} is not one of {', '.join(READOUTS)}") from None


def bayer_channel(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bayer channel index (0 R, 1 Gr, 2 Gb, 3 B) at readout (row, col)."""
    return (np.asarray(rows) % 2) * 2 + np.asarray(cols) % 2


# --- the noise model -----------------------------------------------------

def conversion_gain(gain: float) -> float:
    """DN per electron at analogue gain `gain`."""
    return CONVERSION_GAIN_DN_PER_E * gain


def read_noise_e(gain: float) -> float:
    """Input-referred read noise (electrons rms) of one photosite at `gain`."""
    return math.hypot(READ_NOISE_PRE_GAIN_E, READ_NOISE_POST_GAIN_E / gain)


def quantisation_variance_dn(mode: str | Readout = "full") -> float:
    """DN^2 added by rounding: 1/12 per ADC conversion, averaged over the bin,
    plus the final rounding of the binned mean (fractions 0, 1/4, 1/2, 3/4)."""
    n = readout(mode).photosites
    return 1.0 / 12.0 if n == 1 else 1.0 / 12.0 / n + 3.0 / 32.0


def expected_mean_dn(signal_e, gain: float, mode: str | Readout = "full"):
    """Mean DN of a pixel whose photosites each collect `signal_e` electrons on
    average. Linear up to the clip at WHITE_LEVEL; near the clip (within a few
    noise sigmas) the measured mean is lower than this, as clipping cuts the tail."""
    dn = BLACK_LEVEL + conversion_gain(gain) * np.asarray(signal_e, np.float64)
    return np.minimum(dn, WHITE_LEVEL)


def expected_variance_dn(signal_e, gain: float, mode: str | Readout = "full"):
    """Temporal variance (DN^2) of that pixel: shot noise + read noise of each of
    the n photosites, averaged (variance / n), plus quantisation. Valid below
    the clip."""
    ro = readout(mode)
    k = conversion_gain(gain)
    e = np.asarray(signal_e, np.float64)
    return k * k * (e + read_noise_e(gain) ** 2) / ro.photosites + quantisation_variance_dn(ro)


def snr(signal_e, gain: float, mode: str | Readout = "full"):
    """Signal-to-noise ratio of one readout pixel (mean above black / std)."""
    signal_dn = conversion_gain(gain) * np.asarray(signal_e, np.float64)
    return signal_dn / np.sqrt(expected_variance_dn(signal_e, gain, mode))


def quantise(dn: np.ndarray) -> np.ndarray:
    """Round to the nearest code and clip to the 12-bit range, as uint16."""
    return np.clip(np.rint(dn), 0, WHITE_LEVEL).astype(np.uint16)


def expose_exact(signal_e: np.ndarray, gain: float, mode: str | Readout,
                 rng: np.random.Generator) -> np.ndarray:
    """The exact model: per photosite Poisson(signal) electrons, clipped at the
    full well, plus Gaussian read noise, gain, black level, 12-bit quantisation;
    binned pixels average four such conversions. Slow: for small regions."""
    ro = readout(mode)
    k, sigma = conversion_gain(gain), read_noise_e(gain)
    mean = np.clip(np.asarray(signal_e, np.float64), 0.0, None)
    total = np.zeros(mean.shape, np.float64)
    for _ in range(ro.photosites):
        charge = np.minimum(rng.poisson(mean), FULL_WELL_E)
        total += quantise(BLACK_LEVEL + k * (charge + rng.normal(0.0, sigma, mean.shape)))
    return quantise(total / ro.photosites)


# --- defective pixels ------------------------------------------------------

def serial_rng(serial: str, purpose: str) -> np.random.Generator:
    """A generator seeded by the unit's serial, independent per purpose, so that
    adding a new seeded property never changes the existing ones."""
    digest = hashlib.sha256(f"modcam/{purpose}/{serial}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class Defect:
    """A defective photosite in full-sensor coordinates. A dead one collects no
    charge; a hot one adds `charge_e` electrons to every exposure (a stuck
    leakage path, so it is bright at any exposure time)."""

    x: int
    y: int
    kind: str            # "hot" or "dead"
    charge_e: float = 0.0


def defect_pixels(serial: str) -> tuple[Defect, ...]:
    """The unit's defects: 150-250 hot and 60-120 dead photosites (2-4 ppm),
    at least 8 photosites apart so each can be corrected from its neighbours,
    away from the outermost 8 rows/columns. Sorted by (y, x)."""
    rng = serial_rng(serial, "defects")
    n_hot, n_dead = int(rng.integers(150, 251)), int(rng.integers(60, 121))
    taken: set[tuple[int, int]] = set()
    found: list[Defect] = []
    while len(found) < n_hot + n_dead:
        x, y = int(rng.integers(8, WIDTH - 8)), int(rng.integers(8, HEIGHT - 8))
        cell = (x // 8, y // 8)
        if any((cell[0] + i, cell[1] + j) in taken for i in (-1, 0, 1) for j in (-1, 0, 1)):
            continue
        taken.add(cell)
        if len(found) < n_hot:
            found.append(Defect(x, y, "hot", float(rng.uniform(0.1, 1.0)) * FULL_WELL_E))
        else:
            found.append(Defect(x, y, "dead"))
    return tuple(sorted(found, key=lambda d: (d.y, d.x)))


def defect_in_readout(d: Defect, mode: str | Readout) -> tuple[int, int] | None:
    """The readout pixel (x, y) that defect `d` affects, or None if outside."""
    ro = readout(mode)
    if ro.photosites == 4:
        return 2 * (d.x // 4) + d.x % 2, 2 * (d.y // 4) + d.y % 2
    x, y = d.x - ro.x0, d.y - ro.y0
    return (x, y) if 0 <= x < ro.width and 0 <= y < ro.height else None


def apply_defects(signal_e: np.ndarray, defects, mode: str | Readout,
                  row0: int, col0: int) -> None:
    """Apply `defects` in place to a block of per-photosite mean electrons whose
    top-left pixel is readout (row0, col0). A binned pixel averages four
    photosites, so one dead photosite removes a quarter of its signal and a hot
    one adds a quarter of its charge."""
    ro = readout(mode)
    h, w = signal_e.shape
    for d in defects:
        pos = defect_in_readout(d, ro)
        if pos is None:
            continue
        x, y = pos[0] - col0, pos[1] - row0
        if 0 <= x < w and 0 <= y < h:
            if d.kind == "dead":
                signal_e[y, x] *= 1.0 - 1.0 / ro.photosites
            else:
                signal_e[y, x] += d.charge_e / ro.photosites


# --- the fast noise path, for streaming ---------------------------------------

@functools.lru_cache(maxsize=2)
def _standard_normal_bank(size: int, seed: int) -> np.ndarray:
    """`size` standard normal draws clipped at +-FastNoise.Z_CLIP (float32)."""
    rng = np.random.default_rng([seed, 0x6E6F697365])
    z = rng.standard_normal(size, dtype=np.float32)
    return np.clip(z, -FastNoise.Z_CLIP, FastNoise.Z_CLIP, out=z)


class FastNoise:
    """Per-frame noise on a cached mean image: per pixel two integer adds, one
    table look-up, a shift and a min, and no float maths.

    Shot noise goes through the Anscombe-type transform A = 2 sqrt(n e) of the
    n-photosite charge: the cached mean is stored as A (quantised, uint16, see
    `encode`), a standard normal z from a pre-generated bank is added, and a
    table maps A + z to the charge (A + z)^2 / 4 - 1/4 and on to DN. That charge
    has exactly the Poisson mean n e and variance n e + 1/8, and a Poisson-like
    positive skew (third cumulant 1.5 n e + 1/8 against n e). Read noise is then
    added exactly as a Gaussian, with its variance reduced by that 1/8, from a
    second bank in 1/8-DN fixed point; the sum is rounded and clipped at 4095.
    What is approximated: the shot noise's shape (not its mean or variance);
    noise draws are recycled (banks of 2^23 values read at random offsets, so a
    frame reuses each value ~12 times at unrelated positions); e is quantised
    to 1/scale in A (< 0.5 e- at full well); photosites of a bin are not clipped
    one by one. Exact: mean, variance and the read noise's Gaussian shape."""

    Z_CLIP = 6.0
    FRACTION_BITS = 3
    BANK_SIZE = 1 << 23

    def __init__(self, gain: float, mode: str | Readout = "full", seed: int = 0):
        ro = readout(mode)
        n, k = ro.photosites, conversion_gain(gain)
        self.photosites = n
        # Codes cover up to 1.5x what reaches the clip (or the full well, if that
        # comes first): charge above the well is cut in the table, and anything
        # above 1.5x the clip reads 4095 whatever the noise.
        self.e_cap = 1.5 * min(FULL_WELL_E, (WHITE_LEVEL - BLACK_LEVEL) / k)
        self.scale = 65000.0 / (2.0 * math.sqrt(n * self.e_cap) + 2.0 * self.Z_CLIP)
        one = 1 << self.FRACTION_BITS
        read_fixed = one * k * math.sqrt(n * read_noise_e(gain) ** 2 - 0.125) / n
        y = np.arange(65536) / self.scale - self.Z_CLIP
        charge = np.minimum(y * y / 4.0 - 0.25, n * FULL_WELL_E)
        dn = BLACK_LEVEL + k * charge / n
        top = WHITE_LEVEL + self.Z_CLIP * read_fixed / one + 1.0   # stays >= 4095 after read noise
        # floor(x + 1/2), not rint: with the read noise spreading the integer sum
        # over all eighths, the final shift's round-half-up then has no bias
        self.shot_lut = np.floor(np.minimum(dn, top) * one + one // 2).astype(np.uint16)
        z = _standard_normal_bank(self.BANK_SIZE, seed)
        self.shot_bank = np.rint(z * self.scale).astype(np.int16).view(np.uint16)
        self.read_bank = np.rint(z[::-1] * read_fixed).astype(np.int16).view(np.uint16)

    def encode(self, signal_e: np.ndarray) -> np.ndarray:
        """Per-photosite mean electrons -> uint16 codes of A = 2 sqrt(n e)."""
        e = np.clip(np.asarray(signal_e, np.float32), 0.0, self.e_cap)
        a = np.sqrt(e * (4.0 * self.photosites))
        return np.rint((a + self.Z_CLIP) * self.scale).astype(np.uint16)

    def offsets(self, rng: np.random.Generator, size: int) -> tuple[int, int]:
        """Random start offsets into the two banks for a block of `size` pixels."""
        if size > self.BANK_SIZE // 2:
            raise ValueError(f"a noise block of {size} pixels is over {self.BANK_SIZE // 2}")
        o1, o2 = rng.integers(0, self.BANK_SIZE - size, 2)
        return int(o1), int(o2)

    def apply(self, codes: np.ndarray, offsets: tuple[int, int],
              out: np.ndarray | None = None) -> np.ndarray:
        """One noisy DN block (uint16) from a C-contiguous block of codes, with
        noise read from the banks at `offsets`. The sums wrap in uint16 as two's
        complement; `encode` and the table's headroom keep every true sum inside
        0..65535, so the wrapped result is exact."""
        flat = codes.reshape(-1)
        o1, o2 = offsets
        if min(o1, o2) < 0 or max(o1, o2) + flat.size > self.BANK_SIZE:
            raise ValueError(f"noise offsets {offsets} for {flat.size} pixels leave the bank")
        out = np.empty(codes.shape, np.uint16) if out is None else out
        work = np.add(flat, self.shot_bank[o1:o1 + flat.size])
        # indices are < 65536 = len(table) anyway; mode "clip" avoids a buffered copy
        np.take(self.shot_lut, work, out=work, mode="clip")
        np.add(work, self.read_bank[o2:o2 + flat.size], out=work)
        np.right_shift(work, self.FRACTION_BITS, out=work)
        np.minimum(work, WHITE_LEVEL, out=out.reshape(-1))
        return out
