"""Rendering: strips equal the whole, exposure arithmetic, the fast frame path, caching."""
import time

import numpy as np
import pytest

from modcam.virtual import colour, render, scene
from modcam.virtual import sensor_model as sm

SERIAL = "MC-TEST-0001"


def studio_renderer():
    return render.Renderer(scene.studio(seed=1), SERIAL)


@pytest.mark.parametrize("mode,lens_position", [("full", 1 / 1.2), ("full", 0.2), ("binned", 1 / 1.2),
                                                ("zoom2x", 3.0)])
def test_strips_equal_the_whole_region(mode, lens_position):
    """Any split into row and column blocks, at odd offsets (Bayer phase), gives
    bit-identical results: in-focus planes and decimated, defocused ones alike."""
    r = studio_renderer()
    s = render.RenderSettings(mode=mode, f_number=1.4, lens_position=lens_position)
    ro = sm.readout(mode)
    # the chart's top-left corner: both planes and an edge in view
    x0, y0 = int(ro.width * 0.09), int(ro.height * 0.26)
    rows, cols = (y0, y0 + 40), (x0, x0 + 56)
    whole = r.irradiance(s, rows, cols)
    cuts_r, cuts_c = (y0, y0 + 7, y0 + 8, y0 + 29, y0 + 40), (x0, x0 + 13, x0 + 56)
    pieces = [[r.irradiance(s, (a, b), (c, d)) for c, d in zip(cuts_c, cuts_c[1:])]
              for a, b in zip(cuts_r, cuts_r[1:])]
    np.testing.assert_array_equal(np.block(pieces), whole)


def test_iterated_strips_cover_the_readout():
    r = studio_renderer()
    s = render.RenderSettings(mode="binned", lens_position=0.5)
    cols = (1000, 1024)
    strips = list(r.iter_irradiance(s, 1000, cols))
    assert [r0 for r0, _ in strips] == list(range(0, 4336, 1000))
    np.testing.assert_array_equal(np.concatenate([strip for _, strip in strips]),
                                  r.irradiance(s, None, cols))


def test_exposure_arithmetic():
    r = render.Renderer(scene.flat(reflectance=1.0), SERIAL)
    ro = sm.readout("full")
    centre = (ro.height // 2, ro.height // 2 + 2), (ro.width // 2, ro.width // 2 + 2)

    def green(**kw):
        return float(r.mean_electrons(render.RenderSettings(**kw), *centre)[0, 1])

    base = green(exposure_us=1000.0, f_number=2.8)
    assert green(exposure_us=2000.0, f_number=2.8) == pytest.approx(2 * base, rel=1e-5)
    assert green(exposure_us=1000.0, f_number=5.6) == pytest.approx(base / 4, rel=1e-3)
    assert green(exposure_us=1000.0, f_number=2.8, lux=250.0) == pytest.approx(base / 4, rel=1e-5)
    # a white at the centre under D65: irradiance 1 in green, times the unit's sensitivity
    s = render.RenderSettings(exposure_us=1000.0, f_number=2.8)
    expected = s.electrons_per_irradiance * colour.white_native(SERIAL, "D65")[1]
    assert base == pytest.approx(expected, rel=1e-4)
    # the full well caps it
    assert green(exposure_us=1e6, f_number=1.4) == sm.FULL_WELL_E


def test_illuminant_changes_the_native_white():
    r = render.Renderer(scene.flat(reflectance=0.9), SERIAL)
    ro = sm.readout("full")
    rows, cols = (ro.height // 2, ro.height // 2 + 2), (ro.width // 2, ro.width // 2 + 2)
    for illuminant in ("D65", 3000):
        quad = r.irradiance(render.RenderSettings(illuminant=illuminant), rows, cols)
        rgb = np.array([quad[0, 0], quad[0, 1], quad[1, 1]])
        expected = 0.9 * colour.white_native(SERIAL, illuminant)
        np.testing.assert_allclose(rgb, expected, rtol=1e-4)


def test_zoom2x_is_the_centre_of_full_at_native_pitch():
    r = studio_renderer()
    lp = 1 / 1.2
    full = r.irradiance(render.RenderSettings(lens_position=lp), (2168 + 500, 2168 + 520), (2888 + 900, 2888 + 930))
    zoom = r.irradiance(render.RenderSettings(mode="zoom2x", lens_position=lp), (500, 520), (900, 930))
    np.testing.assert_allclose(zoom, full, rtol=2e-3, atol=1e-4)


def test_settings_are_validated_with_sentences():
    for kwargs, words in [({"exposure_us": 10.0}, "ExposureTime 10.0 us"),
                          ({"gain": 20.0}, "AnalogueGain 20.0"),
                          ({"f_number": 16.0}, "f/16"),
                          ({"lens_position": 5.0}, "LensPosition 5.0"),
                          ({"mode": "quarter"}, "readout mode"),
                          ({"illuminant": "F2"}, "illuminant"),
                          ({"lux": 0.0}, "lux")]:
        with pytest.raises(ValueError, match=words):
            render.RenderSettings(**kwargs)


def flat_mean_image(exposure_us=4000.0, gain=2.0, mode="full"):
    r = render.Renderer(scene.flat(reflectance=0.4), SERIAL)
    s = render.RenderSettings(mode=mode, exposure_us=exposure_us, gain=gain)
    ro = sm.readout(mode)
    rows = (ro.height // 2 - 64, ro.height // 2 + 64)
    cols = (ro.width // 2 - 64, ro.width // 2 + 64)
    return r, s, render.MeanImage(r, s, rows=rows, cols=cols)


@pytest.mark.parametrize("mode", ["full", "binned"])
def test_fast_frames_match_the_model(mode):
    r, s, mean = flat_mean_image(mode=mode)
    source = mean.expose(s, seed=2)
    frames = np.stack([source.frame(i) for i in range(6)]).astype(np.float64)
    e = r.mean_electrons(s, mean.rows, mean.cols)
    for py, px in ((0, 0), (0, 1), (1, 1)):
        sites = frames[:, py::2, px::2]
        signal = float(e[py::2, px::2].mean())
        expected_var = sm.expected_variance_dn(signal, s.gain, mode)
        assert sites.mean() == pytest.approx(sm.expected_mean_dn(signal, s.gain, mode),
                                             abs=5 * np.sqrt(expected_var / sites.size) + 0.3)
        assert sites.var(axis=0, ddof=1).mean() == pytest.approx(expected_var, rel=0.06)


def test_fast_and_exact_paths_agree_on_the_mean_image():
    r, s, mean = flat_mean_image(exposure_us=8000.0, gain=1.0)
    source = mean.expose(s)
    fast = np.mean([source.frame(i) for i in range(16)], axis=0)
    rng = np.random.default_rng(0)
    exact = np.mean([r.render_exact(s, mean.rows, mean.cols, rng) for _ in range(16)], axis=0)
    model = sm.expected_mean_dn(r.mean_electrons(s, mean.rows, mean.cols), s.gain)
    sigma = np.sqrt(sm.expected_variance_dn(r.mean_electrons(s, mean.rows, mean.cols), s.gain) / 16)
    for path in (fast, exact):
        z = (path - model) / sigma
        assert abs(z.mean()) < 0.05 and z.std() == pytest.approx(1.0, rel=0.08)
        assert np.abs(z).max() < 6.5


def test_frames_are_deterministic_per_sequence_number():
    _, s, mean = flat_mean_image()
    source = mean.expose(s, seed=9)
    a, b = source.frame(5), source.frame(5)
    assert a.dtype == np.uint16 and a.shape == (128, 128)
    np.testing.assert_array_equal(a, b)
    assert (source.frame(6) != a).mean() > 0.9
    out = np.empty((128, 128), np.uint16)
    assert source.frame(5, out=out) is out
    np.testing.assert_array_equal(out, a)
    # made strip by strip (any rows), a frame is the same frame
    parts = [source.frame(5, rows=(a, b)) for a, b in ((0, 10), (10, 70), (70, 71), (71, 128))]
    np.testing.assert_array_equal(np.concatenate(parts), a)
    with pytest.raises(ValueError, match="C-contiguous"):
        source.frame(0, out=np.empty((128, 256), np.uint16)[:, ::2])


def test_hot_pixels_keep_their_charge_in_fast_frames():
    r = render.Renderer(scene.flat(reflectance=0.2), SERIAL)
    s = render.RenderSettings(exposure_us=1000.0)
    x, y, charge = next(iter(r.hot_pixels("full")))
    mean = render.MeanImage(r, s, rows=(y - 4, y + 5), cols=(x - 4, x + 5))
    frames = np.stack([mean.expose(s).frame(i) for i in range(8)]).astype(float)
    frame = frames[0]
    e = r.mean_electrons(s, (y, y + 1), (x, x + 1))[0, 0]
    assert e > charge
    assert frames[:, 4, 4].mean() == pytest.approx(
        sm.expected_mean_dn(e, 1.0), abs=5 * np.sqrt(sm.expected_variance_dn(e, 1.0) / 8))
    assert frame[4, 4] > frame[4, 6] + 0.4 * charge * sm.conversion_gain(1.0)


def test_full_size_binned_stream_caches_what_did_not_change():
    """One full-size readout (binned, flat scene): also a timing guard."""
    r = render.Renderer(scene.flat(), SERIAL)
    s = render.RenderSettings(mode="binned", exposure_us=5000.0)
    t0 = time.perf_counter()
    source = r.frame_source(s)
    frame = source.frame(0)
    elapsed = time.perf_counter() - t0
    assert frame.shape == (4336, 5776) and elapsed < 15.0
    mean = r.mean_image(s)
    brighter = r.frame_source(render.RenderSettings(mode="binned", exposure_us=10000.0, gain=2.0))
    assert r.mean_image(s) is mean and brighter is not source       # exposure: no re-render
    assert r.frame_source(render.RenderSettings(mode="binned", exposure_us=10000.0, gain=2.0)) is brighter
    r.frame_source(render.RenderSettings(mode="binned", f_number=4.0))
    assert r.mean_image(render.RenderSettings(mode="binned", f_number=4.0)) is not mean
    with pytest.raises(ValueError, match="optics"):
        mean.expose(render.RenderSettings(mode="binned", f_number=8.0))


def test_one_full_width_strip_renders_quickly():
    r = studio_renderer()
    s = render.RenderSettings(lens_position=1 / 1.2)
    r.irradiance(s, (4000, 4008))            # warm-up
    t0 = time.perf_counter()
    strip = r.irradiance(s, (4000, 4128))
    assert strip.shape == (128, 11552) and time.perf_counter() - t0 < 3.0
