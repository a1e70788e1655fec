"""Procedural scenes: published chart values, determinism, resolution independence, depth."""
import numpy as np
import pytest

from modcam.virtual import colour, scene
from modcam.virtual.sensor_model import HALF_HEIGHT_NORM, HALF_WIDTH_NORM


def test_colorchecker_values_are_the_published_post_2014_lab():
    lab = scene.COLORCHECKER_LAB_D50
    assert lab.shape == (24, 3) and len(scene.COLORCHECKER_NAMES) == 24
    # spot checks against X-Rite's table: dark skin, white, black
    np.testing.assert_array_equal(lab[0], [37.54, 14.37, 14.92])
    np.testing.assert_array_equal(lab[18], [95.19, -1.03, 2.93])
    np.testing.assert_array_equal(lab[23], [20.64, 0.07, -0.46])
    # the linear sRGB reflectances the scene paints convert back to that Lab
    back = colour.linear_srgb_to_lab_d50(scene.COLORCHECKER_LINEAR_SRGB)
    np.testing.assert_allclose(back, lab, atol=1e-6)


def test_colorchecker_linear_srgb_is_plausible():
    rgb = scene.COLORCHECKER_LINEAR_SRGB
    neutrals = rgb[18:]
    # greys are grey (white 9.5 is measurably yellowish: b* = 2.93)
    assert (np.ptp(neutrals, axis=1) / neutrals.mean(axis=1)).max() < 0.06
    assert np.all(np.diff(neutrals[:, 1]) < 0)              # white .. black
    assert neutrals[0, 1] == pytest.approx(0.885, abs=0.01)  # L* 95.19 -> Y 0.885
    red, green, blue = rgb[14], rgb[13], rgb[12]
    assert red.argmax() == 0 and green.argmax() == 1 and blue.argmax() == 2


def test_scenes_are_deterministic_per_seed():
    xs = np.linspace(-0.7, 0.7, 64)
    ys = np.linspace(-0.5, 0.5, 48)
    for name in scene.SCENES:
        a = scene.make_scene(name, seed=3).linear_rgb(xs, ys, 0.02)
        b = scene.make_scene(name, seed=3).linear_rgb(xs, ys, 0.02)
        np.testing.assert_array_equal(a, b)
    s1, s2 = scene.make_scene("studio", seed=1), scene.make_scene("studio", seed=2)
    assert not np.array_equal(s1.linear_rgb(xs, ys, 0.02), s2.linear_rgb(xs, ys, 0.02))
    assert scene.slanted_edge(seed=1).params["angle_deg"] != scene.slanted_edge(seed=2).params["angle_deg"]
    assert 4.0 <= scene.slanted_edge(seed=1).params["angle_deg"] <= 6.0


@pytest.mark.parametrize("name,box,tolerance", [
    ("colorchecker", (-0.5, -0.3, 0.3, 0.2), 1e-3),
    ("studio", (-0.6, -0.3, 0.1, 0.225), 0.01),      # texture x ramp: second order
    ("gradient", (-0.5, -0.3, 0.3, 0.2), 1e-3),
    ("slanted_edge", (-0.5, -0.3, 0.3, 0.2), 0.03),   # slanted edges: a linear ramp
])
def test_a_coarse_sample_is_the_average_of_fine_ones(name, box, tolerance):
    """Pixels are area samples: ground truth is the same at every resolution."""
    sc = scene.make_scene(name, seed=5)
    coarse = sc.region(*box, width=40)
    fine = sc.region(*box, width=160)
    pooled = fine.reshape(coarse.shape[0], 4, coarse.shape[1], 4, 3).mean(axis=(1, 3))
    assert np.abs(pooled - coarse).max() < tolerance
    assert np.abs(pooled - coarse).mean() < 1e-3


def test_patch_regions_hold_the_chart_colours():
    sc = scene.colorchecker(seed=2)
    for i, name in enumerate(scene.COLORCHECKER_NAMES):
        x0, y0, x1, y1 = sc.regions[name]
        inner = sc.region(x0 + 0.2 * (x1 - x0), y0 + 0.2 * (y1 - y0),
                          x1 - 0.2 * (x1 - x0), y1 - 0.2 * (y1 - y0), width=6)
        np.testing.assert_allclose(inner.reshape(-1, 3),
                                   np.broadcast_to(scene.COLORCHECKER_LINEAR_SRGB[i], (inner.size // 3, 3)),
                                   atol=1e-6)


def test_scenes_know_their_distances():
    sc = scene.studio(seed=0, distance_m=1.3, background_m=6.0)
    assert sc.subject_distance_m == 1.3
    assert [p.distance_m for p in sc.planes] == [6.0, 1.3]
    x0, y0, x1, y1 = sc.regions["red"]
    centre = np.array([(x0 + x1) / 2]), np.array([(y0 + y1) / 2])
    assert sc.distance(*centre)[0, 0] == 1.3
    corner = np.array([-HALF_WIDTH_NORM + 0.01]), np.array([HALF_HEIGHT_NORM - 0.01])
    assert sc.distance(*corner)[0, 0] == 6.0


def test_planes_are_transparent_where_empty_and_premultiplied():
    sc = scene.siemens_star(seed=0)
    xs, ys = np.linspace(-0.5, 0.5, 41), np.linspace(-0.5, 0.5, 41)
    rgb, alpha = sc.planes[1].sample(xs, ys, 0.025)
    assert alpha[0, 0] == 0.0 and alpha[20, 20] == pytest.approx(1.0)
    assert np.all(rgb <= alpha[..., None] + 1e-6)
    assert sc.planes[0].opaque and not sc.planes[1].opaque


def test_texture_is_band_limited_for_coarse_sampling():
    """The background's cosines are box-filtered: at a footprint far wider than
    their period they average out instead of aliasing."""
    sc = scene.studio(seed=0)
    xs, ys = np.array([0.1, 0.3, 0.5]), np.array([0.45])
    rgb, _ = sc.planes[0].sample(xs, ys, 5.0)
    ramp, _ = scene.Plane(5.0, sc.planes[0].shapes[:1]).sample(xs, ys, 5.0)
    np.testing.assert_allclose(rgb, ramp, rtol=0.01)


def test_unknown_scene_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        scene.make_scene("moon")
