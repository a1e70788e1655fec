"""Procedural, deterministic test scenes with known colours and distances.

Owns the ground truth the virtual module photographs: planes at known
distances (back to front), each painted with shapes whose linear sRGB
reflectance and coverage can be sampled at any resolution over any region, so
a renderer can draw a 100 MP frame strip by strip and a test can ask what the
right answer was.

Coordinates are normalised image coordinates (see sensor_model): origin at the
optical centre, x right, y down, the sensor's corners at radius 1. A scene is
defined directly in the image plane (magnification does not change with focus:
no focus breathing). Every sample is the average over a square pixel footprint
`fp` (exact for axis-aligned edges, a linear ramp across the footprint for
slanted ones), so edges are anti-aliased the same way at every resolution.

ColorChecker values: X-Rite ColorChecker Classic, "after November 2014"
formulation, CIE L*a*b* (D50, 2 degree), from X-Rite's "New color
specifications for ColorChecker SG and Classic Charts" (2016), the same
values as colour-science's CCS_COLORCHECKER24_AFTER_NOVEMBER_2014. The linear
sRGB reflectances are derived from them (Bradford D50 -> D65), so a ΔE00 test
compares against the published Lab directly. (Cyan is slightly outside sRGB: its
linear R is -0.04; it is kept, as the camera's native response stays positive.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .colour import lab_d50_to_linear_srgb
from .sensor_model import HALF_HEIGHT_NORM, HALF_WIDTH_NORM

COLORCHECKER_NAMES = (
    "dark skin", "light skin", "blue sky", "foliage", "blue flower", "bluish green",
    "orange", "purplish blue", "moderate red", "purple", "yellow green", "orange yellow",
    "blue", "green", "red", "yellow", "magenta", "cyan",
    "white 9.5", "neutral 8", "neutral 6.5", "neutral 5", "neutral 3.5", "black 2")
COLORCHECKER_LAB_D50 = np.array([
    (37.54, 14.37, 14.92), (64.66, 19.27, 17.50), (49.32, -3.82, -22.54),
    (43.46, -12.74, 22.72), (54.94, 9.61, -24.79), (70.48, -32.26, -0.37),
    (62.73, 35.83, 56.50), (39.43, 10.75, -45.17), (50.57, 48.64, 16.67),
    (30.10, 22.54, -20.87), (71.77, -24.13, 58.19), (71.51, 18.24, 67.37),
    (28.37, 15.42, -49.80), (54.38, -39.72, 32.27), (42.43, 51.05, 28.62),
    (81.80, 2.67, 80.41), (50.63, 51.28, -14.12), (49.57, -29.71, -28.32),
    (95.19, -1.03, 2.93), (81.29, -0.57, 0.44), (66.89, -0.75, -0.06),
    (50.76, -0.13, 0.14), (35.63, -0.46, -0.48), (20.64, 0.07, -0.46)])
COLORCHECKER_LINEAR_SRGB = lab_d50_to_linear_srgb(COLORCHECKER_LAB_D50)
CHART_BODY = (0.02, 0.02, 0.02)     # the chart's black frame


def box_coverage(c: np.ndarray, lo: float, hi: float, fp: float) -> np.ndarray:
    """Fraction of each footprint [c - fp/2, c + fp/2] inside [lo, hi]."""
    overlap = np.minimum(hi, c + fp / 2) - np.maximum(lo, c - fp / 2)
    return np.clip(overlap / fp, 0.0, 1.0).astype(np.float32)


def _span(coords: np.ndarray, lo: float, hi: float, fp: float) -> slice:
    """Index range of `coords` (ascending) whose footprints touch [lo, hi]."""
    return slice(int(np.searchsorted(coords, lo - fp)), int(np.searchsorted(coords, hi + fp)))


def _over(rgb, alpha, cov, colour) -> None:
    """Composite an opaque colour with coverage `cov` over premultiplied (rgb, alpha)."""
    rgb *= (1.0 - cov)[..., None]
    rgb += cov[..., None] * np.asarray(colour, np.float32)
    alpha *= 1.0 - cov
    alpha += cov


# --- shapes: each paints into (rgb, alpha) at grid (xs, ys) with footprint fp ---

@dataclass(frozen=True)
class Fill:
    colour: tuple

    def paint(self, rgb, alpha, xs, ys, fp):
        rgb[...] = np.asarray(self.colour, np.float32)
        alpha[...] = 1.0


@dataclass(frozen=True)
class Gradient:
    """Opaque linear ramp from colour0 at x0 to colour1 at x1 (along y if vertical)."""
    colour0: tuple
    colour1: tuple
    x0: float
    x1: float
    vertical: bool = False

    def paint(self, rgb, alpha, xs, ys, fp):
        t = np.clip(((ys if self.vertical else xs) - self.x0) / (self.x1 - self.x0), 0, 1)
        t = t.astype(np.float32)[:, None] if self.vertical else t.astype(np.float32)[None, :]
        c0, c1 = (np.asarray(c, np.float32) for c in (self.colour0, self.colour1))
        rgb[...] = c0 + t[..., None] * (c1 - c0)
        alpha[...] = 1.0


@dataclass(frozen=True)
class Texture:
    """Multiplies what is below by 1 + sum of separable cosines (a seeded,
    band-limited pattern for contrast autofocus). Each cosine is averaged over
    the footprint analytically (a sinc factor), so coarse samples do not alias."""
    freqs: tuple          # ((fx, fy, phase_x, phase_y, amplitude), ...)

    def paint(self, rgb, alpha, xs, ys, fp):
        total = np.zeros((len(ys), len(xs)), np.float32)
        for fx, fy, px, py, amp in self.freqs:
            gx = np.cos(fx * xs + px) * np.sinc(fx * fp / (2 * np.pi))
            gy = np.cos(fy * ys + py) * np.sinc(fy * fp / (2 * np.pi))
            total += np.outer(amp * gy, gx).astype(np.float32)
        rgb *= (1.0 + total)[..., None]


@dataclass(frozen=True)
class Rect:
    x0: float
    y0: float
    x1: float
    y1: float
    colour: tuple

    def paint(self, rgb, alpha, xs, ys, fp):
        sy, sx = _span(ys, self.y0, self.y1, fp), _span(xs, self.x0, self.x1, fp)
        cov = np.outer(box_coverage(ys[sy], self.y0, self.y1, fp),
                       box_coverage(xs[sx], self.x0, self.x1, fp))
        _over(rgb[sy, sx], alpha[sy, sx], cov, self.colour)


@dataclass(frozen=True)
class SlantedSquare:
    """A square of half-size `half` rotated by `angle` degrees: four slanted edges."""
    cx: float
    cy: float
    half: float
    angle: float
    colour: tuple

    def paint(self, rgb, alpha, xs, ys, fp):
        reach = self.half * math.sqrt(2.0)
        sy = _span(ys, self.cy - reach, self.cy + reach, fp)
        sx = _span(xs, self.cx - reach, self.cx + reach, fp)
        dx, dy = xs[sx][None, :] - self.cx, ys[sy][:, None] - self.cy
        c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        # a square footprint seen across a slanted edge spans fp (|cos| + |sin|):
        # a linear ramp over that width, per slab; the square is two slabs' product
        ramp = fp * (abs(c) + abs(s))
        cov_u = np.clip(0.5 - (np.abs(c * dx + s * dy) - self.half) / ramp, 0.0, 1.0)
        cov_v = np.clip(0.5 - (np.abs(-s * dx + c * dy) - self.half) / ramp, 0.0, 1.0)
        _over(rgb[sy, sx], alpha[sy, sx], (cov_u * cov_v).astype(np.float32), self.colour)


@dataclass(frozen=True)
class SiemensStar:
    """`spokes` dark wedges on a light disc of radius `radius`."""
    cx: float
    cy: float
    radius: float
    spokes: int
    dark: tuple
    light: tuple

    def paint(self, rgb, alpha, xs, ys, fp):
        sy = _span(ys, self.cy - self.radius, self.cy + self.radius, fp)
        sx = _span(xs, self.cx - self.radius, self.cx + self.radius, fp)
        dx, dy = xs[sx][None, :] - self.cx, ys[sy][:, None] - self.cy
        r = np.hypot(dx, dy)
        disc = np.clip(0.5 - (r - self.radius) / fp, 0.0, 1.0).astype(np.float32)
        _over(rgb[sy, sx], alpha[sy, sx], disc, self.light)
        # distance to the nearest spoke edge ~ r sin(n phi) / n near the edge
        wedge = np.clip(0.5 + r * np.sin(self.spokes * np.arctan2(dy, dx)) / (self.spokes * fp),
                        0.0, 1.0).astype(np.float32)
        _over(rgb[sy, sx], alpha[sy, sx], wedge * disc, self.dark)


@dataclass(frozen=True)
class ColorChecker:
    """The 24-patch chart, 6 x 4, `width` wide with its top-left at (x0, y0)."""
    x0: float
    y0: float
    width: float

    @property
    def pitch(self) -> float:
        return self.width / 6.0

    @property
    def height(self) -> float:
        return self.pitch * 4.0

    def patch_box(self, i: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of patch i (0-23, row-major from dark skin)."""
        p, g = self.pitch, 0.1 * self.pitch
        x, y = self.x0 + (i % 6) * p + g, self.y0 + (i // 6) * p + g
        return x, y, x + p - 2 * g, y + p - 2 * g

    def paint(self, rgb, alpha, xs, ys, fp):
        Rect(self.x0, self.y0, self.x0 + self.width, self.y0 + self.height,
             CHART_BODY).paint(rgb, alpha, xs, ys, fp)
        sy = _span(ys, self.y0, self.y0 + self.height, fp)
        sx = _span(xs, self.x0, self.x0 + self.width, fp)
        p, g = self.pitch, 0.1 * self.pitch
        col = np.clip(((xs[sx] - self.x0) // p).astype(int), 0, 5)
        row = np.clip(((ys[sy] - self.y0) // p).astype(int), 0, 3)
        cov = np.outer(box_coverage(ys[sy] - self.y0 - row * p, g, p - g, fp),
                       box_coverage(xs[sx] - self.x0 - col * p, g, p - g, fp))
        colours = COLORCHECKER_LINEAR_SRGB.astype(np.float32)[row[:, None] * 6 + col[None, :]]
        block = rgb[sy, sx]
        block *= (1.0 - cov)[..., None]
        block += cov[..., None] * colours


@dataclass(frozen=True)
class Plane:
    """Shapes at one distance, painted in order. Transparent where nothing is."""
    distance_m: float
    shapes: tuple
    name: str = ""

    @property
    def opaque(self) -> bool:
        return bool(self.shapes) and isinstance(self.shapes[0], (Fill, Gradient))

    def sample(self, xs: np.ndarray, ys: np.ndarray, fp: float):
        """(premultiplied rgb (h, w, 3) float32, alpha (h, w) float32)."""
        xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
        rgb = np.zeros((len(ys), len(xs), 3), np.float32)
        alpha = np.zeros((len(ys), len(xs)), np.float32)
        for shape in self.shapes:
            shape.paint(rgb, alpha, xs, ys, fp)
        return rgb, alpha


@dataclass(frozen=True)
class Scene:
    """Planes back to front, the subject's distance, named regions of interest
    (normalised (x0, y0, x1, y1)), e.g. each ColorChecker patch, and the
    parameters the seed chose (e.g. the slanted edge's angle)."""
    name: str
    planes: tuple
    subject_distance_m: float
    seed: int = 0
    regions: dict = field(default_factory=dict, compare=False)
    params: dict = field(default_factory=dict, compare=False)   # the seeded choices

    def linear_rgb(self, xs: np.ndarray, ys: np.ndarray, fp: float) -> np.ndarray:
        """Ground truth, in focus: linear sRGB reflectance (h, w, 3) at the grid."""
        out = np.zeros((len(ys), len(xs), 3), np.float32)
        for plane in self.planes:
            rgb, alpha = plane.sample(xs, ys, fp)
            out *= (1.0 - alpha)[..., None]
            out += rgb
        return out

    def region(self, x0: float, y0: float, x1: float, y1: float, width: int) -> np.ndarray:
        """Ground truth over (x0, y0)-(x1, y1) at `width` pixels across, square pixels."""
        fp = (x1 - x0) / width
        height = max(1, int(round((y1 - y0) / fp)))
        return self.linear_rgb(x0 + (np.arange(width) + 0.5) * fp,
                               y0 + (np.arange(height) + 0.5) * fp, fp)

    def distance(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """True distance (m) seen at each grid point: the front-most plane that
        covers it at least half."""
        out = np.full((len(ys), len(xs)), math.inf)
        for plane in self.planes:
            _, alpha = plane.sample(xs, ys, 1e-9)
            out[alpha >= 0.5] = plane.distance_m
        return out


# --- the scene library -----------------------------------------------------

def _texture(rng: np.random.Generator, n: int = 4, amplitude: float = 0.25) -> Texture:
    terms = []
    for _ in range(n):
        fx, fy = rng.uniform(8.0, 160.0, 2)   # radians per normalised unit
        px, py = rng.uniform(0, 2 * np.pi, 2)
        terms.append((float(fx), float(fy), float(px), float(py), amplitude / n))
    return Texture(tuple(terms))


def _background(rng, distance_m: float) -> Plane:
    grey0, grey1 = (0.12, 0.13, 0.15), (0.45, 0.42, 0.38)
    return Plane(distance_m, (Gradient(grey0, grey1, -HALF_WIDTH_NORM, HALF_WIDTH_NORM),
                              _texture(rng)), "background")


def flat(seed: int = 0, reflectance: float = 0.18, distance_m: float = 2.0) -> Scene:
    """A uniform grey wall: the noise-statistics target."""
    return Scene("flat", (Plane(distance_m, (Fill((reflectance,) * 3,),), "wall"),),
                 distance_m, seed)


def colorchecker(seed: int = 0, distance_m: float = 1.5, background_m: float = 4.0) -> Scene:
    """The ColorChecker, 70% of the frame wide, in front of a textured wall."""
    rng = np.random.default_rng(seed)
    width = 1.4 * HALF_WIDTH_NORM
    chart = ColorChecker(-width / 2 + rng.uniform(-0.01, 0.01),
                         -width / 3 + rng.uniform(-0.01, 0.01), width)
    regions = {name: chart.patch_box(i) for i, name in enumerate(COLORCHECKER_NAMES)}
    return Scene("colorchecker", (_background(rng, background_m),
                                  Plane(distance_m, (chart,), "chart")),
                 distance_m, seed, regions)


def slanted_edge(seed: int = 0, distance_m: float = 1.0, background_m: float = 6.0) -> Scene:
    """Dark squares slanted by ~5 degrees on a white card (ISO 12233 style),
    one at the centre and four towards the corners."""
    rng = np.random.default_rng(seed)
    angle = 5.0 + float(rng.uniform(-1.0, 1.0))
    card = Rect(-0.75, -0.56, 0.75, 0.56, (0.8, 0.8, 0.8))
    squares = [SlantedSquare(0.0, 0.0, 0.08, angle, (0.05, 0.05, 0.05))]
    for sx, sy in ((-1, -1), (1, -1), (-1, 1), (1, 1)):
        squares.append(SlantedSquare(0.55 * sx, 0.4 * sy, 0.05, angle, (0.05, 0.05, 0.05)))
    regions = {"centre_edge": (0.06, -0.04, 0.14, 0.04)}
    return Scene("slanted_edge", (_background(rng, background_m),
                                  Plane(distance_m, (card, *squares), "card")),
                 distance_m, seed, regions, {"angle_deg": angle})


def siemens_star(seed: int = 0, distance_m: float = 1.0, background_m: float = 6.0) -> Scene:
    rng = np.random.default_rng(seed)
    star = SiemensStar(0.0, 0.0, 0.3, 36, (0.05, 0.05, 0.05), (0.8, 0.8, 0.8))
    return Scene("siemens_star", (_background(rng, background_m),
                                  Plane(distance_m, (star,), "star")), distance_m, seed)


def gradient(seed: int = 0, distance_m: float = 3.0) -> Scene:
    """A grey ramp across x and a colour ramp down y, for shading and tone."""
    ramp = Gradient((0.02, 0.02, 0.02), (0.9, 0.9, 0.9), -HALF_WIDTH_NORM, HALF_WIDTH_NORM)
    tint = Rect(-HALF_WIDTH_NORM, 0.2, HALF_WIDTH_NORM, HALF_HEIGHT_NORM, (0.6, 0.3, 0.15))
    return Scene("gradient", (Plane(distance_m, (ramp, tint), "ramp"),), distance_m, seed)


def studio(seed: int = 0, distance_m: float = 1.2, background_m: float = 5.0) -> Scene:
    """The demo scene: a subject plane (chart, star, slanted square) in front of
    a textured background: two distances, so focus picks one."""
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(-0.02, 0.02, 4)
    chart = ColorChecker(-0.72 + jitter[0], -0.28 + jitter[1], 0.78)
    star = SiemensStar(0.42 + jitter[2], -0.2 + jitter[3], 0.2, 24,
                       (0.05, 0.05, 0.05), (0.8, 0.8, 0.8))
    angle = 5.0 + float(rng.uniform(-1, 1))
    square = SlantedSquare(0.42, 0.3, 0.12, angle, (0.05, 0.05, 0.05))
    regions = {name: chart.patch_box(i) for i, name in enumerate(COLORCHECKER_NAMES)}
    return Scene("studio", (_background(rng, background_m),
                            Plane(distance_m, (chart, star, square), "subject")),
                 distance_m, seed, regions, {"angle_deg": angle})


SCENES: dict[str, Callable[..., Scene]] = {
    "flat": flat, "colorchecker": colorchecker, "slanted_edge": slanted_edge,
    "siemens_star": siemens_star, "gradient": gradient, "studio": studio}


def make_scene(name: str, seed: int = 0, **params) -> Scene:
    """The library scene `name` (a key of SCENES) with its seeded parameters."""
    if name not in SCENES:
        raise ValueError(f"scene {name!r} is not one of {', '.join(SCENES)}")
    return SCENES[name](seed=seed, **params)
