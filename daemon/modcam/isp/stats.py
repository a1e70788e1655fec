"""Statistics for 3A from a uint16 RGGB frame (or a region of one), cheaply.

Owns what auto-exposure, auto white balance and autofocus read from a frame:

- AE/AWB: a subsampled grid of Bayer quads (every `step`-th quad in x and y:
  ~100 k quads of a 25 MP binned frame), black-subtracted, normalised to the
  12-bit range above black, optionally lens-shading corrected from the
  calibration grid; per quad native (R, G, B) with G = (Gr + Gb) / 2. From
  them: a luma histogram and mean (AE), the fraction of quads with a clipped
  photosite, and for AWB the mean RGB of zones of `zone` x `zone` grid
  samples (64 x 64 pixels by default) that are neither clipped nor dark:
  averaging 16 quads cuts their noise 4x, so a neutral surface gives a sharp
  chromaticity peak for AWB to find.
- AF: a focus measure over a window (`focus_measure`).

Quads, not single pixels, so every sample has all three colours at one place;
the grid is read with strided views, so the cost is the ~400 k samples, not
the 25 M pixels (measured ~3 ms for a binned frame, see tests/unit/test_3a.py).
The frame's position in the readout (`origin`) and the readout geometry only
matter for the shading correction.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLACK_LEVEL, WHITE_LEVEL = 256, 4095
HIST_BINS = 64
READOUT_MODES = ("full", "binned", "zoom2x")
LUMA_WEIGHTS = (0.25, 0.5, 0.25)   # native R, G, B: a cheap, colour-blind luma
DARK = 0.01          # usable for AWB above this luma (fraction of the range)
CLIP_MARGIN_DN = 8   # a photosite this close to the white level counts as clipped


@dataclass(frozen=True)
class Stats:
    """3A statistics of one frame. Values are fractions of (white - black)."""
    luma_mean: float          # mean luma over the grid, clipped quads included
    luma_hist: np.ndarray     # HIST_BINS counts of luma over [0, 1]
    clipped: float            # fraction of quads with a clipped photosite
    rgb: np.ndarray           # (n, 3) float32 native RGB of zones usable for AWB
    samples: int              # quads on the grid
    focus: float | None = None  # focus_measure over the AF window, if one was given

    def grey_means(self, neutral, tolerance: float = 0.05) -> np.ndarray:
        """Mean native (R, G, B) of the zones within `tolerance` (in log r/g
        and log b/g) of the chromaticity `neutral` (r/g, 1, b/g)."""
        near = _near(self.rgb, neutral, tolerance)
        return self.rgb[near].mean(axis=0) if near.any() else np.full(3, np.nan)


def _near(rgb: np.ndarray, neutral, tolerance: float) -> np.ndarray:
    lr = np.log(rgb[:, 0] / rgb[:, 1]) - np.log(neutral[0] / neutral[1])
    lb = np.log(rgb[:, 2] / rgb[:, 1]) - np.log(neutral[2] / neutral[1])
    return (np.abs(lr) < tolerance) & (np.abs(lb) < tolerance)


class StatsEngine:
    """Computes Stats for frames of one readout mode; caches the shading gains
    at the sample grid (they depend on frame shape, origin and f-number only)."""

    def __init__(self, calibration=None, mode: str = "binned", step: int = 8,
                 black_level: int | None = None, white_level: int | None = None,
                 zone: int = 4):
        if mode not in READOUT_MODES:
            raise ValueError(f"readout mode {mode!r} is not one of {', '.join(READOUT_MODES)}")
        if step < 1:
            raise ValueError(f"stats grid step {step} must be at least 1 quad")
        self.calibration, self.mode, self.step, self.zone = calibration, mode, step, zone
        cal_black = calibration.black_level if calibration is not None else BLACK_LEVEL
        cal_white = calibration.white_level if calibration is not None else WHITE_LEVEL
        self.black = cal_black if black_level is None else black_level
        self.white = cal_white if white_level is None else white_level
        self._shading_key = None
        self._shading = None

    def compute(self, frame: np.ndarray, f_number: float | None = None, origin=(0, 0),
                af_window=None) -> Stats:
        """Stats of `frame` (uint16 RGGB, R at even rows and columns of the
        readout). `origin` is (row, col) of frame[0, 0] in the readout, both
        even; `f_number` selects the shading correction (none if None or
        without calibration); `af_window` (r0, r1, c0, c1) in frame pixels adds
        the focus measure."""
        if frame.ndim != 2 or origin[0] % 2 or origin[1] % 2:
            raise ValueError("stats need a 2-D RGGB frame whose origin is at even row and column")
        s2 = 2 * self.step
        # offset the grid by half a step so a small region still gets samples
        o = (self.step // 2) * 2
        quads = [frame[dy + o::s2, dx + o::s2] for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))]
        h = min(q.shape[0] for q in quads)
        w = min(q.shape[1] for q in quads)
        if h == 0 or w == 0:
            raise ValueError(f"frame {frame.shape} is too small for a stats grid "
                             f"step of {self.step}")
        r, gr, gb, b = (q[:h, :w] for q in quads)
        clipped = np.maximum(np.maximum(r, b), np.maximum(gr, gb)) >= self.white - CLIP_MARGIN_DN
        scale = np.float32(1.0 / (self.white - self.black))
        black = np.float32(self.black)
        rgb = np.empty((h, w, 3), np.float32)
        np.multiply(r - black, scale, out=rgb[..., 0], casting="unsafe")
        np.multiply((gr.astype(np.float32) + gb) * 0.5 - black, scale, out=rgb[..., 1])
        np.multiply(b - black, scale, out=rgb[..., 2], casting="unsafe")
        gains = self._shading_gains(frame.shape, origin, f_number, h, w)
        if gains is not None:
            rgb *= gains
        luma = rgb @ np.asarray(LUMA_WEIGHTS, np.float32)
        luma[clipped] = np.maximum(luma[clipped], 1.0)   # a clipped quad is at least full scale
        hist, _ = np.histogram(np.clip(luma, 0.0, 1.0), HIST_BINS, (0.0, 1.0))
        zones, zone_clipped = _zones(rgb, clipped, self.zone)
        zone_luma = zones @ np.asarray(LUMA_WEIGHTS, np.float32)
        usable = ~zone_clipped & (zone_luma > DARK) & (zones.min(axis=-1) > 0.0)
        focus = (focus_measure(frame, af_window, self.black)
                 if af_window is not None else None)
        return Stats(float(luma.mean()), hist, float(clipped.mean()), zones[usable], h * w, focus)

    def _shading_gains(self, shape, origin, f_number, h, w):
        """Calibration shading gains (h, w, 3) at the sample grid, or None."""
        if self.calibration is None or f_number is None:
            return None
        key = (shape, tuple(origin), float(f_number), h, w)
        if key != self._shading_key:
            self._shading = self._interpolate_shading(origin, f_number, h, w)
            self._shading_key = key
        return self._shading

    def _interpolate_shading(self, origin, f_number, h, w) -> np.ndarray:
        cal = self.calibration
        grid = cal.shading_gains(f_number)            # (4, rows, cols): R, Gr, Gb, B
        # Readout geometry in full-sensor photosites, from the calibration's
        # sensor size as the pipeline derives it: binned has twice the pitch,
        # zoom2x is the central half.
        pitch = 2 if self.mode == "binned" else 1
        x0, y0 = ((cal.sensor_width // 4, cal.sensor_height // 4) if self.mode == "zoom2x"
                  else (0, 0))
        s2, o = 2 * self.step, (self.step // 2) * 2
        # the quad's centre in full-sensor photosites, as a fraction of the sensor
        cols = origin[1] + o + s2 * np.arange(w) + 1.0
        rows = origin[0] + o + s2 * np.arange(h) + 1.0
        fx = (x0 + cols * pitch) / cal.sensor_width * (cal.grid_cols - 1)
        fy = (y0 + rows * pitch) / cal.sensor_height * (cal.grid_rows - 1)
        out = np.empty((h, w, 3), np.float32)
        per_native = (grid[0], 0.5 * (grid[1] + grid[2]), grid[3])
        for c, g in enumerate(per_native):
            out[..., c] = _bilinear(g, fy, fx)
        return out


def _zones(rgb: np.ndarray, clipped: np.ndarray, z: int):
    """Means of z x z grid samples (n, 3) and whether any of them clipped (n,)."""
    h, w = rgb.shape[0] // z * z, rgb.shape[1] // z * z
    if h == 0 or w == 0:       # a small region: one zone per sample
        return rgb.reshape(-1, 3), clipped.reshape(-1)
    means = rgb[:h, :w].reshape(h // z, z, w // z, z, 3).mean(axis=(1, 3))
    any_clipped = clipped[:h, :w].reshape(h // z, z, w // z, z).any(axis=(1, 3))
    return means.reshape(-1, 3), any_clipped.reshape(-1)


def _bilinear(grid: np.ndarray, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """grid sampled at fractional node coordinates fy (rows) x fx (cols)."""
    def split(f, n):
        i = np.clip(np.floor(f).astype(int), 0, n - 2)
        return i, np.clip(f - i, 0.0, 1.0)
    iy, ty = split(fy, grid.shape[0])
    ix, tx = split(fx, grid.shape[1])
    top = grid[iy][:, ix] * (1 - tx) + grid[iy][:, ix + 1] * tx
    bottom = grid[iy + 1][:, ix] * (1 - tx) + grid[iy + 1][:, ix + 1] * tx
    return top * (1 - ty)[:, None] + bottom * ty[:, None]


def focus_measure(frame: np.ndarray, window=None, black_level: int = BLACK_LEVEL) -> float:
    """Contrast of the green sites in `window` (r0, r1, c0, c1; even r0, c0),
    independent of exposure and unbiased by noise.

    The gradient energy of the Gr plane is correlated with the Gb plane's
    (gradients along x and y, each plane's own differences): the two planes'
    noise is independent, so it averages out instead of adding a floor, and
    for an edge blurred by a Gaussian of sigma the result falls as 1/sigma, so
    1/measure^2 is a parabola in defocus (autofocus fits it). Divided by the
    squared mean green, so exposure and gain do not change it."""
    if window is not None:
        r0, r1, c0, c1 = window
        if r0 % 2 or c0 % 2:
            raise ValueError(f"focus window {window} must start at an even row and column")
        frame = frame[r0:r1, c0:c1]
    gr = frame[0::2, 1::2].astype(np.float32)
    gb = frame[1::2, 0::2].astype(np.float32)
    h, w = min(gr.shape[0], gb.shape[0]), min(gr.shape[1], gb.shape[1])
    gr, gb = gr[:h, :w], gb[:h, :w]
    if h < 3 or w < 3:
        raise ValueError("focus window is too small: it needs at least 6 x 6 pixels")
    energy = (np.mean(np.diff(gr, axis=1) * np.diff(gb, axis=1))
              + np.mean(np.diff(gr, axis=0) * np.diff(gb, axis=0)))
    level = 0.5 * (gr.mean() + gb.mean()) - black_level
    return float(max(energy, 0.0) / max(level, 1.0) ** 2)
