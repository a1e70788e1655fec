"""The virtual lens: defocus measured on rendered edges, depth of field, shading symmetry."""
import math

import numpy as np
import pytest

from modcam.virtual import optics, render, scene
from modcam.virtual import sensor_model as sm

SERIAL = "MC-TEST-0001"
SUBJECT_M = 1.0


def edge_width(lens_position, f_number, mode="full", half_width=160):
    """Measured width of the centre square's right edge: per Gr row, the profile
    across the edge normalised 0..1, summed min(p, 1 - p) times the sample
    spacing (0.798 sigma for a Gaussian edge), in readout pixels."""
    sc = scene.slanted_edge(seed=4, distance_m=SUBJECT_M)
    ro = sm.readout(mode)
    r = render.Renderer(sc, SERIAL)
    edge_col = int(round(0.08 / ro.pixel_norm + ro.width / 2))
    rows = (ro.height // 2 - 24, ro.height // 2 + 24)
    cols = (edge_col - half_width, edge_col + half_width)
    s = render.RenderSettings(mode=mode, f_number=f_number, lens_position=lens_position)
    green = r.irradiance(s, rows, cols)[0::2, 1::2].astype(np.float64)
    dark, light = green[:, :8].mean(axis=1, keepdims=True), green[:, -8:].mean(axis=1, keepdims=True)
    p = (green - dark) / (light - dark)
    return 2.0 * np.minimum(p, 1.0 - p).sum(axis=1).mean(), sc.params["angle_deg"]


def predicted_width(lens_position, f_number, angle_deg, mode="full"):
    sigma = optics.blur_sigma_px(SUBJECT_M, lens_position, f_number, mode)
    # + the pixel's own box; a profile along x crosses the slanted edge obliquely
    return math.sqrt(2 / math.pi) * math.sqrt(sigma ** 2 + 1 / 12) / math.cos(math.radians(angle_deg))


def test_coc_formula():
    assert optics.coc_diameter_mm(2.0, 0.5, 2.8) == 0.0
    # infinity focused at 0.3 m, wide open: f^2 / (N (s - f))
    assert optics.coc_diameter_mm(math.inf, 1 / 0.3, 1.4) == pytest.approx(35 ** 2 / (1.4 * 265), rel=1e-9)
    assert optics.coc_px(3.0, 0.5, 2.8, "binned") == pytest.approx(optics.coc_px(3.0, 0.5, 2.8) / 2)
    assert optics.coc_diameter_mm(1.0, 1.2, 2.8) == pytest.approx(2 * optics.coc_diameter_mm(1.0, 1.2, 5.6))


def test_defocus_blur_grows_with_focus_error_on_a_rendered_edge():
    widths = [edge_width(1 / SUBJECT_M + error, 2.8)[0] for error in (0.0, 0.005, 0.02, 0.06, 0.15)]
    assert all(a < b for a, b in zip(widths, widths[1:])), widths
    # the same error either side of the subject blurs alike (thin lens, dioptre space)
    near, far = edge_width(1 / SUBJECT_M + 0.06, 2.8)[0], edge_width(1 / SUBJECT_M - 0.06, 2.8)[0]
    assert near == pytest.approx(far, rel=0.05)


def test_defocus_blur_shrinks_with_f_number_on_a_rendered_edge():
    widths = [edge_width(1 / SUBJECT_M + 0.1, n)[0] for n in (1.4, 2.8, 5.6, 11.0)]
    assert all(a > b for a, b in zip(widths, widths[1:])), widths


@pytest.mark.parametrize("error,f_number,mode", [(0.02, 2.8, "full"), (0.06, 2.8, "full"),
                                                 (0.15, 2.8, "full"), (0.1, 1.4, "binned"),
                                                 (0.0, 11.0, "full")])
def test_rendered_edge_width_matches_the_psf(error, f_number, mode):
    """Covers the direct and the decimated (coarse grid) blur paths."""
    lp = 1 / SUBJECT_M + error
    measured, angle = edge_width(lp, f_number, mode)
    assert measured == pytest.approx(predicted_width(lp, f_number, angle, mode), rel=0.12)


def test_depth_of_field():
    near, far = optics.depth_of_field(1.0, 2.8)
    assert near < 1.0 < far
    for limit in (near, far):
        assert optics.coc_px(limit, 1.0, 2.8) == pytest.approx(optics.DOF_COC_PX, rel=1e-9)
    wide, closed = optics.depth_of_field(1.0, 1.4), optics.depth_of_field(1.0, 11.0)
    assert closed[0] < wide[0] and closed[1] > wide[1]
    # focused short of the hyperfocal distance the far limit is infinity
    h = optics.focus_tolerance_dpt(0.0, 11.0)
    assert optics.depth_of_field(0.9 * h, 11.0)[1] == math.inf
    assert optics.depth_of_field(1.1 * h, 11.0)[1] < math.inf
    # binned pixels are twice as large: twice the tolerance in dioptres
    assert optics.focus_tolerance_dpt(1.0, 2.8, mode="binned") == pytest.approx(
        2 * optics.focus_tolerance_dpt(1.0, 2.8))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="f/1.4"):
        optics.check_f_number(1.0)
    with pytest.raises(ValueError, match="LensPosition"):
        optics.check_lens_position(4.0)


def test_vignetting_is_symmetric_and_falls_off():
    shading = optics.LensShading.from_serial(SERIAL)
    x, y = np.meshgrid(np.linspace(-0.8, 0.8, 33), np.linspace(-0.6, 0.6, 25))
    for native in (0, 1, 2):
        v = shading.relative_illumination(x, y, 2.0, native)
        np.testing.assert_allclose(v, v[:, ::-1], rtol=1e-12)     # left / right
        np.testing.assert_allclose(v, v[::-1, :], rtol=1e-12)     # top / bottom
        assert v[12, 16] == pytest.approx(1.0) and v.min() == v[0, 0] < 0.8
    corner = (sm.HALF_WIDTH_NORM, sm.HALF_HEIGHT_NORM)
    # wide open the mechanical term adds to cos^4; stopped down it fades
    assert shading.vignetting(*corner, 1.4) < shading.vignetting(*corner, 4.0) < 0.9
    assert shading.vignetting(*corner, 11.0) == pytest.approx(1 / (1 + (10.83 / 35) ** 2) ** 2, rel=0.02)
    # colour shading: red falls off most, blue less, green not at all
    r, g, b = (shading.colour(*corner, c) for c in (0, 1, 2))
    assert r < b < g == 1.0


def test_rendered_flat_field_shading_is_symmetric():
    r = render.Renderer(scene.flat(), SERIAL)
    s = render.RenderSettings(f_number=1.4)
    ro = sm.readout("full")
    n = 8
    crops = {(vy, vx): r.irradiance(s, (0, n) if vy == 0 else (ro.height - n, ro.height),
                                    (0, n) if vx == 0 else (ro.width - n, ro.width))
             for vy in (0, 1) for vx in (0, 1)}
    for channel in ((0, 0), (0, 1), (1, 0), (1, 1)):
        means = [c[channel[0]::2, channel[1]::2].mean() for c in crops.values()]
        assert max(means) / min(means) < 1.002
    centre = r.irradiance(s, (ro.height // 2, ro.height // 2 + 2), (ro.width // 2, ro.width // 2 + 2))
    assert crops[(0, 0)][0, 1] < 0.6 * centre[0, 1]


def test_colour_shading_differs_between_units_but_stays_symmetric():
    a, b = optics.LensShading.from_serial("A-1"), optics.LensShading.from_serial("B-2")
    assert a.colour_k != b.colour_k
    assert a == optics.LensShading.from_serial("A-1")


def test_blur_plan_keeps_the_variance_and_bounds_the_kernel():
    for sigma in (0.5, 2.9, 3.0, 7.3, 40.0, 800.0):
        plan = optics.BlurPlan.for_sigma(sigma)
        k = plan.factor
        extra = 0.0 if k == 1 else (k * k - 1) / 12 + k * k / 6
        assert (plan.sigma_coarse * k) ** 2 + extra == pytest.approx(sigma ** 2)
        assert len(plan.kernel) <= 25 and plan.kernel.sum() == pytest.approx(1.0, abs=1e-6)


def test_blur_valid_is_a_convolution():
    a = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    kernel = optics.gaussian_kernel(1.3)
    out = optics.blur_valid(a, kernel, 1)
    ref = np.stack([np.convolve(row, kernel[::-1], mode="valid") for row in a])
    np.testing.assert_allclose(out, ref, rtol=1e-5)
