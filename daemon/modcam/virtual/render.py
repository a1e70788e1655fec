"""Rendering a scene through the lens onto the sensor, strip by strip.

Owns the path from a Scene to uint16 Bayer DN for given settings, in three
layers, each cached by what it depends on, so a stream only pays for noise:

1. Irradiance (`Renderer.irradiance`): per readout pixel, the native-colour
   response times lens shading, exposure-free (a white D65 patch at the centre
   is 1 in green). Depends on the optics: readout mode, f-number, lens
   position, illuminant. Each scene plane is sampled, blurred by its own
   defocus (optics.BlurPlan, on a coarser grid when the blur is wide),
   interpolated back and composited back to front; then the native channel of
   each Bayer site is taken and shaded. Slow (seconds for 100 MP), done
   strip by strip; `MeanImage` keeps the whole readout as sqrt-coded uint16.
2. Exposure (`MeanImage.expose`): electrons = irradiance x lux x time x
   transmission / (4 N^2) x sensitivity, plus hot-pixel charge, coded for
   sensor_model.FastNoise. One table look-up per pixel: exposure and gain
   changes (auto-exposure) never re-render the scene.
3. Noise (`FrameSource.frame`): FastNoise per strip; integer work only.

`Renderer.render_exact` is the slow exact path (Poisson + Gaussian per
photosite) for small regions, used by the noise-statistics tests.
Memory: strips of `strip_rows` rows; the only full-size arrays are the two
uint16 codes (2 bytes per pixel each: 200 MB apiece at 100 MP).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import colour, optics
from . import sensor_model as sm

STRIP_ROWS = 64         # measured fastest: the working set of a strip stays in cache
NOISE_STRIP_ROWS = 64   # 64 x 11552 pixels: well inside FastNoise's bank


@dataclass(frozen=True)
class RenderSettings:
    """What the module is asked to do: readout, exposure, lens, and the light."""
    mode: str = "full"
    exposure_us: float = 10_000.0
    gain: float = 1.0
    f_number: float = 2.8
    lens_position: float = 0.0
    illuminant: str | float = "D65"
    lux: float = 1000.0

    def __post_init__(self):
        sm.readout(self.mode)
        optics.check_f_number(self.f_number)
        optics.check_lens_position(self.lens_position)
        colour.illuminant_xy(self.illuminant)
        if not sm.EXPOSURE_MIN_US <= self.exposure_us <= sm.EXPOSURE_MAX_US:
            raise ValueError(f"ExposureTime {self.exposure_us} us is outside "
                             f"{sm.EXPOSURE_MIN_US:g}-{sm.EXPOSURE_MAX_US:g} us")
        if not sm.GAIN_MIN <= self.gain <= sm.GAIN_MAX:
            raise ValueError(f"AnalogueGain {self.gain} is outside {sm.GAIN_MIN:g}-{sm.GAIN_MAX:g}")
        if not self.lux > 0.0:
            raise ValueError(f"scene illuminance {self.lux} lux must be positive")

    @property
    def optical_key(self) -> tuple:
        return (self.mode, self.f_number, self.lens_position, self.illuminant)

    @property
    def electrons_per_irradiance(self) -> float:
        """Electrons per photosite for irradiance 1 (a centred white, green)."""
        image_lux = self.lux * optics.TRANSMISSION / (4.0 * self.f_number ** 2)
        return image_lux * self.exposure_us * 1e-6 * sm.SENSITIVITY_E_PER_LUX_S


def _coarse(lo: int, hi: int, k: int):
    """Coarse samples (centred on blocks of k fine pixels) needed to interpolate
    fine indices [lo, hi): (first, count, index into them, weight of the next)."""
    t = (np.arange(lo, hi) - (k - 1) / 2.0) / k
    j = np.floor(t).astype(np.int64)
    return int(j[0]), int(j[-1] - j[0] + 2), j - j[0], (t - j).astype(np.float32)


def _lerp(a: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * a.ndim
    shape[axis] = len(w)
    w = w.reshape(shape)
    return np.take(a, idx, axis=axis) * (1.0 - w) + np.take(a, idx + 1, axis=axis) * w


class Renderer:
    """A scene photographed by the virtual module with serial `serial`."""

    def __init__(self, scene, serial: str):
        self.scene = scene
        self.serial = serial
        self.defects = sm.defect_pixels(serial)
        self._dead = tuple(d for d in self.defects if d.kind == "dead")
        self.shading = optics.LensShading.from_serial(serial)
        self._mean: MeanImage | None = None
        self._source: FrameSource | None = None

    # -- layer 1: irradiance -------------------------------------------------

    def irradiance(self, s: RenderSettings, rows=None, cols=None) -> np.ndarray:
        """Exposure-free response (h, w) float32 of readout rows/cols [lo, hi);
        dead photosites included. The whole readout by default."""
        ro = sm.readout(s.mode)
        rows, cols = rows or (0, ro.height), cols or (0, ro.width)
        acc = None
        for plane in self.scene.planes:
            sigma = optics.blur_sigma_px(plane.distance_m, s.lens_position, s.f_number, s.mode)
            plan = optics.BlurPlan.for_sigma(sigma)
            # the back plane's coverage is not needed: there is nothing behind it
            block = self._plane_block(plane, plan, ro, rows, cols, acc is not None)
            if block is None:
                continue
            rgb, alpha = block
            if acc is None:
                acc = rgb
            else:
                acc *= (1.0 - alpha)[..., None]
                acc += rgb
        if acc is None:       # an empty scene: black
            acc = np.zeros((rows[1] - rows[0], cols[1] - cols[0], 3), np.float32)
        out = self._bayer_native(acc, s, ro, rows, cols)
        sm.apply_defects(out, self._dead, ro, rows[0], cols[0])
        return out

    def _plane_block(self, plane, plan: optics.BlurPlan, ro: sm.Readout, rows, cols,
                     with_alpha: bool = True):
        """One plane, blurred, at readout pixels rows x cols: (rgb, alpha or None),
        or None if the plane covers nothing there."""
        k, m = plan.factor, plan.radius
        if k == 1:
            (y0, ny), (x0, nx) = (rows[0], rows[1] - rows[0]), (cols[0], cols[1] - cols[0])
        else:
            y0, ny, iy, wy = _coarse(*rows, k)
            x0, nx, ix, wx = _coarse(*cols, k)
        centre = (k - 1) / 2.0
        ys = ro.centres_y(np.arange(y0 - m, y0 + ny + m) * k + centre)
        xs = ro.centres_x(np.arange(x0 - m, x0 + nx + m) * k + centre)
        rgb, alpha = plane.sample(xs, ys, k * ro.pixel_norm)
        # Blur only the columns the plane covers (plus the kernel's reach): a
        # subject seldom spans the frame. Outside them the result is exactly 0.
        covered = np.flatnonzero(alpha.max(axis=0) > 0.0)
        if len(covered) == 0:
            return None
        lo, hi = max(0, covered[0] - 2 * m), min(len(xs), covered[-1] + 2 * m + 1)
        blurred = [np.zeros((ny, nx, 3), np.float32), np.zeros((ny, nx), np.float32)]
        for i, a in enumerate((rgb, alpha) if with_alpha else (rgb,)):
            b = optics.blur_valid(a[:, lo:hi], plan.kernel, 0)
            blurred[i][:, lo:hi - 2 * m] = optics.blur_valid(b, plan.kernel, 1)
        if k > 1:
            blurred = [_lerp(_lerp(b, iy, wy, 0), ix, wx, 1) for b in blurred[:1 + with_alpha]]
        return blurred[0], (blurred[1] if with_alpha else None)

    def _bayer_native(self, acc, s: RenderSettings, ro: sm.Readout, rows, cols) -> np.ndarray:
        """Each Bayer site's native channel of `acc` (sRGB reflectance), shaded."""
        m = colour.scene_to_native_matrix(self.serial, s.illuminant).astype(np.float32)
        ys = ro.centres_y(np.arange(*rows)).astype(np.float32)
        xs = ro.centres_x(np.arange(*cols)).astype(np.float32)
        out = np.empty(acc.shape[:2], np.float32)
        for parity_y in (0, 1):
            for parity_x in (0, 1):
                sy, sx = (parity_y - rows[0]) % 2, (parity_x - cols[0]) % 2
                native = sm.CHANNEL_TO_NATIVE[2 * parity_y + parity_x]
                sub = acc[sy::2, sx::2]
                value = sub[..., 0] * m[native, 0] + sub[..., 1] * m[native, 1]
                value += sub[..., 2] * m[native, 2]
                value *= self.shading.relative_illumination(
                    xs[None, sx::2], ys[sy::2, None], s.f_number, native).astype(np.float32)
                out[sy::2, sx::2] = value
        return out

    def iter_irradiance(self, s: RenderSettings, strip_rows: int = STRIP_ROWS, cols=None):
        """(first row, irradiance strip) over the whole readout height."""
        height = sm.readout(s.mode).height
        for r0 in range(0, height, strip_rows):
            yield r0, self.irradiance(s, (r0, min(height, r0 + strip_rows)), cols)

    # -- layer 2: electrons ------------------------------------------------------

    def hot_pixels(self, mode: str):
        """(x, y, charge per photosite of the readout pixel) of each hot pixel."""
        ro = sm.readout(mode)
        for d in self.defects:
            pos = sm.defect_in_readout(d, ro) if d.kind == "hot" else None
            if pos is not None:
                yield pos[0], pos[1], d.charge_e / ro.photosites

    def mean_electrons(self, s: RenderSettings, rows=None, cols=None) -> np.ndarray:
        """Noise-free mean electrons per photosite (h, w) float32, clipped at full well."""
        ro = sm.readout(s.mode)
        rows, cols = rows or (0, ro.height), cols or (0, ro.width)
        e = self.irradiance(s, rows, cols)
        e *= s.electrons_per_irradiance
        for x, y, charge in self.hot_pixels(s.mode):
            if rows[0] <= y < rows[1] and cols[0] <= x < cols[1]:
                e[y - rows[0], x - cols[0]] += charge
        return np.clip(e, 0.0, sm.FULL_WELL_E, out=e)

    def render_exact(self, s: RenderSettings, rows=None, cols=None,
                     rng: np.random.Generator | None = None) -> np.ndarray:
        """A noisy frame region by the exact model (sensor_model.expose_exact)."""
        rng = rng if rng is not None else np.random.default_rng()
        return sm.expose_exact(self.mean_electrons(s, rows, cols), s.gain, s.mode, rng)

    # -- layers 1-3 over the whole readout, cached -------------------------------

    def mean_image(self, s: RenderSettings, strip_rows: int = STRIP_ROWS) -> "MeanImage":
        """The whole readout's MeanImage for s's optics (cached: the last one)."""
        if self._mean is None or self._mean.settings.optical_key != s.optical_key:
            self._mean = self._source = None     # drop the old 200 MB before the new
            self._mean = MeanImage(self, s, strip_rows)
        return self._mean

    def frame_source(self, s: RenderSettings, seed: int = 0) -> "FrameSource":
        """A source of noisy full frames for `s`, re-using what did not change."""
        if self._source is None or self._source.settings != s:
            mean = self.mean_image(s)
            self._source = None
            self._source = mean.expose(s, seed)
        return self._source


class MeanImage:
    """The irradiance of one optical setting over the readout (or the region
    rows x cols of it), coded as uint16 round(65535 sqrt(I / I_max)): steps of
    under 1/30000 of full scale, and under 0.3% of the shot noise at any
    exposure that does not clip."""

    def __init__(self, renderer: Renderer, s: RenderSettings, strip_rows: int = STRIP_ROWS,
                 rows=None, cols=None):
        self.renderer, self.settings = renderer, s
        ro = sm.readout(s.mode)
        self.rows, self.cols = rows or (0, ro.height), cols or (0, ro.width)
        m = colour.scene_to_native_matrix(renderer.serial, s.illuminant)
        # the largest response a reflectance <= 1 can give, shading <= 1
        self.peak = float(np.clip(m, 0.0, None).sum(axis=1).max())
        self.codes = np.empty((self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]), np.uint16)
        # One strip at a time: two threads measured no faster (memory-bound).
        for r0 in range(self.rows[0], self.rows[1], strip_rows):
            self._render_strip(r0, strip_rows)

    def _render_strip(self, r0: int, strip_rows: int) -> None:
        r1 = min(self.rows[1], r0 + strip_rows)
        strip = self.renderer.irradiance(self.settings, (r0, r1), self.cols)
        np.clip(strip / self.peak, 0.0, 1.0, out=strip)
        np.sqrt(strip, out=strip)
        strip *= 65535.0
        np.rint(strip, out=self.codes[r0 - self.rows[0]:r1 - self.rows[0]], casting="unsafe")

    def irradiance(self, rows=None) -> np.ndarray:
        """Decoded irradiance of local rows [lo, hi) (float32), for checks."""
        block = self.codes[slice(*rows) if rows else slice(None)].astype(np.float32) / 65535.0
        return block * block * self.peak

    def expose(self, s: RenderSettings, seed: int = 0) -> "FrameSource":
        if s.optical_key != self.settings.optical_key:
            raise ValueError("settings differ from this mean image's optics; render a new one")
        return FrameSource(self, s, seed)


class FrameSource:
    """Noisy frames of one MeanImage at one exposure and gain."""

    def __init__(self, mean: MeanImage, s: RenderSettings, seed: int = 0):
        self.settings, self.seed = s, seed
        self.noise = sm.FastNoise(s.gain, s.mode, seed)
        levels = (np.arange(65536, dtype=np.float64) / 65535.0) ** 2
        remap = self.noise.encode(levels * mean.peak * s.electrons_per_irradiance)
        self.codes = np.empty_like(mean.codes)
        for r0 in range(0, len(mean.codes), STRIP_ROWS):
            np.take(remap, mean.codes[r0:r0 + STRIP_ROWS], out=self.codes[r0:r0 + STRIP_ROWS])
        # hot pixels add charge independent of the exposure: patched one by one
        (y0, y1), (x0, x1) = mean.rows, mean.cols
        for x, y, charge in mean.renderer.hot_pixels(s.mode):
            if y0 <= y < y1 and x0 <= x < x1:
                i = mean.irradiance((y - y0, y - y0 + 1))[0, x - x0]
                self.codes[y - y0, x - x0] = self.noise.encode(
                    np.float32(i * s.electrons_per_irradiance + charge))

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    def frame(self, seq: int, out: np.ndarray | None = None, rows=None) -> np.ndarray:
        """Rows [lo, hi) (all by default) of frame number `seq` as uint16 DN,
        written into `out` (C-contiguous, that shape) if given. Deterministic per
        seed and seq, whatever the rows: noise is drawn per fixed block of
        NOISE_STRIP_ROWS rows, so a frame made strip by strip equals a whole one."""
        height, width = self.codes.shape
        r0, r1 = rows or (0, height)
        if out is None:
            out = np.empty((r1 - r0, width), np.uint16)
        if not out.flags.c_contiguous or out.shape != (r1 - r0, width):
            raise ValueError(f"out must be a C-contiguous uint16 array of shape {(r1 - r0, width)}")
        for block in range(r0 // NOISE_STRIP_ROWS, (r1 - 1) // NOISE_STRIP_ROWS + 1):
            top = block * NOISE_STRIP_ROWS
            a, b = max(r0, top), min(r1, top + NOISE_STRIP_ROWS)
            rng = np.random.default_rng([self.seed, seq, block])
            o1, o2 = self.noise.offsets(rng, NOISE_STRIP_ROWS * width)
            skip = (a - top) * width
            self.noise.apply(self.codes[a:b], (o1 + skip, o2 + skip), out[a - r0:b - r0])
        return out
