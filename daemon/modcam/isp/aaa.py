"""3A: auto-exposure, contrast-detect autofocus and auto white balance.

Plain Python objects that take statistics of one frame (modcam.isp.stats) and
return what the next frame should use; they own no thread, no camera and no
clock, so the daemon feeds them frames from the ring and the tests feed them
frames rendered by the virtual module.

    ae = AutoExposure(target=0.18)
    controls, converged = ae.update(stats, controls)      # ExposureControls

    af = AutoFocus(tolerance_dpt=0.002)
    position = af.start(current_position)
    while not isinstance(position, AfResult):
        position = af.update(focus_measure_of_a_frame_at(position))

    awb = AutoWhiteBalance(calibration.matrix())
    r_gain, g_gain, b_gain = awb.update(stats)

White-balance gains follow docs/virtual-module.md and the DNG/LibRaw
convention: per-channel multipliers on the black-subtracted native raw that
make the scene illuminant's white neutral (R = G = B) in native space, so
they are `1 / w_scene` normalised to G = 1 (= 1 / AsShotNeutral), e.g. about
(2.5, 1, 1.66) under D65 for this sensor. isp.pipeline then maps native
neutral to sRGB neutral (white_balanced_matrix); the calibration matrix only
serves AWB as its starting estimate (the unit's D65 white).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# --- auto-exposure -----------------------------------------------------------


@dataclass(frozen=True)
class ExposureLimits:
    """What AE may set. The default exposure ceiling is one frame at 30 fps;
    the sensor itself allows 30 us - 1 s and AnalogueGain 1 - 16."""
    exposure_min_us: float = 30.0
    exposure_max_us: float = 33_333.0
    gain_min: float = 1.0
    gain_max: float = 16.0

    def __post_init__(self):
        if not 0 < self.exposure_min_us <= self.exposure_max_us:
            raise ValueError(f"exposure limits {self.exposure_min_us}-{self.exposure_max_us} us "
                             "must be positive and ascending")
        if not 0 < self.gain_min <= self.gain_max:
            raise ValueError(f"gain limits {self.gain_min}-{self.gain_max} must be positive "
                             "and ascending")


@dataclass(frozen=True)
class ExposureControls:
    exposure_us: float
    gain: float

    @property
    def total(self) -> float:
        return self.exposure_us * self.gain


class AutoExposure:
    """Drives the mean luma to `target` (fraction of the raw range above black).

    The sensor is linear, so one frame's mean says how far off it is: the next
    exposure is the current one times target / mean, at most `max_step_ev`
    away. ExposureTime moves first; AnalogueGain rises only when ExposureTime
    is at its ceiling, and falls back to its minimum before ExposureTime
    shortens (gain adds noise, exposure does not). A frame with clipped quads
    under-reads its mean, so the correction only under-shoots there; the next
    frame, no longer clipped, finishes the job."""

    def __init__(self, target: float = 0.18, limits: ExposureLimits = ExposureLimits(),
                 tolerance_ev: float = 1.0 / 12.0, max_step_ev: float = 4.0):
        if not 0.0 < target < 1.0:
            raise ValueError(f"AE target {target} must be between 0 and 1 of the raw range")
        self.target, self.limits = target, limits
        self.tolerance_ev, self.max_step_ev = tolerance_ev, max_step_ev

    def error_ev(self, stats) -> float:
        """How many EV the frame is under (positive) or over (negative) the target."""
        mean = max(stats.luma_mean, 1e-6)
        return math.log2(self.target / mean)

    def update(self, stats, current: ExposureControls) -> tuple[ExposureControls, bool]:
        """(controls for the next frame, whether this frame was on target)."""
        err = self.error_ev(stats)
        if abs(err) <= self.tolerance_ev:
            return current, True
        err = max(-self.max_step_ev, min(self.max_step_ev, err))
        new = self.split(current.total * 2.0 ** err)
        # at a limit, nothing more can be done: say so, so callers stop waiting
        return new, new == current

    def split(self, total: float) -> ExposureControls:
        """ExposureTime first, then AnalogueGain, for exposure x gain = total."""
        lim = self.limits
        exposure = min(max(total / lim.gain_min, lim.exposure_min_us), lim.exposure_max_us)
        gain = min(max(total / exposure, lim.gain_min), lim.gain_max)
        return ExposureControls(exposure, gain)


# --- autofocus ---------------------------------------------------------------

LENS_POSITION_MAX = 1.0 / 0.3     # dioptres: the lens focuses 0.3 m - infinity


@dataclass(frozen=True)
class AfResult:
    position: float        # dioptres, where the lens was left
    focus_measure: float   # the best one measured (at or next to `position`)
    frames: int            # frames measured
    success: bool          # a peak was found inside the range and refined to tolerance


@dataclass
class _Point:
    position: float
    measure: float


class AutoFocus:
    """Contrast-detect autofocus as a state machine: a coarse sweep over the
    lens range, then refinement around the best coarse point.

    Refinement fits a parabola to 1 / measure^2 through the best point and its
    neighbours on either side (for an edge blurred by a Gaussian, measure ~
    1/sigma and sigma^2 is quadratic in the defocus, so the fit is exact but
    for noise and the in-focus floor) and measures at its vertex; a lopsided
    bracket is first balanced by mirroring the near neighbour, and when the
    fit fails (not convex, or outside the bracket) the larger side of the
    bracket is split at the golden section instead. It stops when the next
    point would be within `tolerance_dpt` of the best one with both
    neighbours close, or at `max_frames`; the lens is then left at the vertex
    of a least-squares parabola through the points around the best one.

    Out of frames, the scan still succeeds if the best point is bracketed by
    close measured neighbours (`_bracketed`).

    Measured on the virtual module (tests/unit/test_3a.py, tolerance a third
    of the full-resolution depth of field): 12-15 frames with 8 coarse steps,
    within the depth of field on the slanted edge and the studio scene's
    Siemens star at f/1.4 and f/2.8; f/1.4 often needs all 15."""

    GOLDEN = (3.0 - math.sqrt(5.0)) / 2.0
    CLOSE = 6.0      # neighbours within this many tolerances make the fit final
    BALANCE = 3.0    # a bracket more lopsided than this is balanced before fitting

    def __init__(self, range_dpt=(0.0, LENS_POSITION_MAX), coarse_steps: int = 8,
                 tolerance_dpt: float = 0.002, max_frames: int = 15):
        lo, hi = range_dpt
        if not 0.0 <= lo < hi:
            raise ValueError(f"AF range {range_dpt} must be ascending dioptres from 0")
        if coarse_steps < 3 or coarse_steps >= max_frames:
            raise ValueError(f"AF coarse_steps {coarse_steps} must be 3 or more and under "
                             f"max_frames {max_frames}")
        self.range = (float(lo), float(hi))
        self.coarse_steps, self.tolerance, self.max_frames = coarse_steps, tolerance_dpt, max_frames
        self._points: list[_Point] = []
        self._pending: list[float] = []
        self._asked: float | None = None
        self.result: AfResult | None = None

    def start(self, current_position: float) -> float:
        """Begin a scan; returns the first lens position to measure at. The
        sweep starts from the end of the range nearer the lens, to save travel."""
        lo, hi = self.range
        sweep = list(np.linspace(lo, hi, self.coarse_steps))
        if current_position > 0.5 * (lo + hi):
            sweep.reverse()
        self._points, self.result = [], None
        self._pending = [float(p) for p in sweep]
        self._asked = self._pending.pop(0)
        return self._asked

    def update(self, focus_measure: float) -> float | AfResult:
        """The focus measure of a frame taken at the position last returned;
        returns the next position, or the AfResult when done."""
        if self._asked is None:
            raise RuntimeError("autofocus is not scanning: call start() first")
        self._points.append(_Point(self._asked, float(focus_measure)))
        if self._pending:
            self._asked = self._pending.pop(0)
            return self._asked
        nxt = self._next_fine()
        if nxt is None:
            return self._finish(True)
        if len(self._points) >= self.max_frames:
            return self._finish(self._bracketed())
        self._asked = nxt
        return nxt

    def _finish(self, converged: bool) -> AfResult:
        pts = sorted(self._points, key=lambda p: p.position)
        best = max(pts, key=lambda p: p.measure)
        # A peak at an end of the range counts (a subject at infinity, or at
        # the closest focus); a flat curve (no texture, or too dark) does not.
        peaked = best.measure > 0.0 and best.measure > 1.5 * min(p.measure for p in pts)
        self.result = AfResult(self._fitted_peak(pts, best), best.measure, len(self._points),
                               converged and peaked)
        self._asked = None
        return self.result

    def _bracketed(self) -> bool:
        """Out of frames: good enough if the best point has measured
        neighbours on both sides within 2 CLOSE tolerances (the final fit
        then interpolates between close points)."""
        pts = sorted(self._points, key=lambda p: p.position)
        i = max(range(len(pts)), key=lambda k: pts[k].measure)
        reach = 2.0 * self.CLOSE * self.tolerance
        return 0 < i < len(pts) - 1 and pts[i + 1].position - pts[i - 1].position <= 2 * reach

    def _fitted_peak(self, pts: list, best: _Point) -> float:
        """Where the lens is left: the vertex of a least-squares parabola
        through 1/measure^2 of the points close around the best one (near
        focus the curve is flat-topped and noise picks the best point), or
        the best point when there are too few or the fit is not convex."""
        reach = 2.0 * self.CLOSE * self.tolerance
        close = [p for p in pts if abs(p.position - best.position) <= reach and p.measure > 0]
        if len(close) < 4:
            return best.position
        xs = np.array([p.position for p in close]) - best.position
        a, b, _ = np.polyfit(xs, [1.0 / p.measure ** 2 for p in close], 2)
        if a <= 0.0 or not xs.min() <= -b / (2 * a) <= xs.max():
            return best.position
        return float(best.position - b / (2 * a))

    def _next_fine(self) -> float | None:
        """Next position to measure, or None when refined to tolerance."""
        pts = sorted(self._points, key=lambda p: p.position)
        i = max(range(len(pts)), key=lambda k: pts[k].measure)
        best = pts[i]
        left = pts[i - 1] if i > 0 else None
        right = pts[i + 1] if i + 1 < len(pts) else None
        lo = left.position if left else self.range[0]
        hi = right.position if right else self.range[1]
        if hi - lo <= 2.0 * self.tolerance:
            return None
        gap_left, gap_right = best.position - lo, hi - best.position
        if left and right and min(gap_left, gap_right) * self.BALANCE < max(gap_left, gap_right) \
                and max(gap_left, gap_right) > self.CLOSE * self.tolerance:
            # A parabola through one near and one far neighbour is ruled by
            # the far one, where the curve is least parabolic (neighbouring
            # edges blur into each other): probe the wide side first, at twice
            # the near gap, so a peak further away is reached in a few doublings.
            step = max(2.0 * min(gap_left, gap_right), 0.5 * self.CLOSE * self.tolerance)
            return float(best.position + (-step if gap_left > gap_right else step))
        x = self._vertex(left, best, right) if left and right else None
        if x is None or not lo < x < hi:
            # golden section of the larger side of the bracket
            if best.position - lo > hi - best.position:
                x = best.position - self.GOLDEN * (best.position - lo)
            else:
                x = best.position + self.GOLDEN * (hi - best.position)
        if abs(x - best.position) < self.tolerance:
            # The fit says we are there. A fit through far neighbours is
            # coarse, so first measure close on the wider side; with both
            # neighbours close, the fit is trusted and the scan ends.
            if max(gap_left, gap_right) <= self.CLOSE * self.tolerance:
                return None
            side = -1.0 if gap_left > gap_right else 1.0
            x = best.position + side * 0.5 * self.CLOSE * self.tolerance
        return float(x)

    @staticmethod
    def _vertex(a: _Point, b: _Point, c: _Point) -> float | None:
        """Vertex of the parabola through (position, 1/measure^2) of three points."""
        if min(a.measure, b.measure, c.measure) <= 0.0:
            return None
        (x0, y0), (x1, y1), (x2, y2) = ((p.position, 1.0 / p.measure ** 2) for p in (a, b, c))
        d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        curvature = (d12 - d01) / (x2 - x0)
        if curvature <= 0.0:
            return None
        return 0.5 * (x0 + x1) - d01 / (2.0 * curvature)


# --- auto white balance ------------------------------------------------------


class AutoWhiteBalance:
    """Grey-world on near-neutral zones (stats.Stats.rgb: 64 x 64-pixel zone
    means, clipped and dark ones already dropped).

    A neutral surface keeps one chromaticity (log r/g, log b/g) at every
    brightness, so the illuminant is taken at the chromaticity bin whose zones
    span the most brightness octaves (ties: the most zones); then refined to
    the mean chromaticity of the zones within TOLERANCE of it, octave by
    octave, and the median over octaves. A tinted wall spreads over many bins
    and few octaves, coloured objects fall elsewhere, so neither drags the
    estimate as they drag a plain grey-world mean: on the ColorChecker scene,
    whose textured wall is a few % warm and covers half the frame, the grey
    patches come out within 1.5% (tests/unit/test_3a.py)."""

    BIN = 0.01          # histogram bin, natural log units (1%)
    SPAN = 1.0          # histogram half-width around the median chromaticity
    TOLERANCE = 0.03    # zones this close to the peak are averaged
    OCTAVES = 8         # luma octaves below full scale the score looks at
    MIN_ZONES_PER_OCTAVE = 4

    def __init__(self, calibration_matrix=None, min_zones: int = 20, speed: float = 1.0):
        # Starting estimate of the native white: the unit's D65 white (from
        # the calibration matrix) if given, else native grey (1, 1, 1).
        self.reference = np.ones(3)
        if calibration_matrix is not None:
            w = np.linalg.solve(np.asarray(calibration_matrix, np.float64), np.ones(3))
            self.reference = w / w[1]     # the unit's D65 white, native, G = 1
        self.min_zones, self.speed = min_zones, speed
        self.neutral = self.reference.copy()      # estimated native white, G = 1
        self.gains = self._gains()

    def _gains(self) -> tuple[float, float, float]:
        g = 1.0 / self.neutral
        return tuple(float(v) for v in g / g[1])

    def update(self, stats) -> tuple[float, float, float]:
        """(R, G, B) native-neutral gains (1 / scene white, G = 1) for this
        frame's scene; unchanged if it has too few usable zones (a dark or
        saturated frame)."""
        estimate = self.estimate(stats.rgb)
        if estimate is not None:
            # move in log space: a fraction `speed` of the way per frame
            log_new = np.log(estimate) * self.speed + np.log(self.neutral) * (1.0 - self.speed)
            self.neutral = np.exp(log_new)
        self.gains = self._gains()
        return self.gains

    def estimate(self, rgb: np.ndarray) -> np.ndarray | None:
        """The scene white (r/g, 1, b/g) from zone means (n, 3), or None."""
        if len(rgb) < self.min_zones:
            return None
        x = np.log(rgb[:, 0] / rgb[:, 1])
        y = np.log(rgb[:, 2] / rgb[:, 1])
        level = np.clip(np.floor(np.log2(rgb @ np.array([0.25, 0.5, 0.25]))), -self.OCTAVES, -1)
        cx, cy = float(np.median(x)), float(np.median(y))
        n = int(round(2 * self.SPAN / self.BIN))
        box = [[cx - self.SPAN, cx + self.SPAN], [cy - self.SPAN, cy + self.SPAN],
               [-self.OCTAVES - 0.5, -0.5]]
        hist, edges = np.histogramdd(np.column_stack([x, y, level]),
                                     (n, n, self.OCTAVES), box)
        # 3 x 3 chromaticity bins: a peak split across bin edges still counts whole
        padded = np.pad(hist, ((1, 1), (1, 1), (0, 0)))
        hist = sum(padded[i:i + n, j:j + n] for i in range(3) for j in range(3))
        # A neutral surface keeps its chromaticity at every brightness, a tinted
        # one seldom spans many octaves: score by octaves held, then by zones.
        score = (hist >= self.MIN_ZONES_PER_OCTAVE).sum(axis=2) * len(x) + hist.sum(axis=2)
        i, j = np.unravel_index(np.argmax(score), score.shape)
        px, py = 0.5 * (edges[0][i] + edges[0][i + 1]), 0.5 * (edges[1][j] + edges[1][j + 1])
        # Refine: the mean chromaticity of the zones near the peak, octave by
        # octave, and the median over octaves, so a near-neutral wall that
        # fills one or two octaves moves the answer little.
        for _ in range(3):
            near = (np.abs(x - px) < self.TOLERANCE) & (np.abs(y - py) < self.TOLERANCE)
            per_octave = [(x[m].mean(), y[m].mean()) for m in
                          (near & (level == v) for v in np.unique(level[near]))
                          if m.sum() >= self.MIN_ZONES_PER_OCTAVE]
            if not per_octave:
                break
            px, py = (float(v) for v in np.median(np.array(per_octave), axis=0))
        return np.array([math.exp(px), 1.0, math.exp(py)])
