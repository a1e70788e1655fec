"""The virtual sensor: noise statistics against the model, binning, defects, geometry."""
import numpy as np
import pytest

from modcam.virtual import render, scene
from modcam.virtual import sensor_model as sm

SERIAL = "MC-TEST-0001"
CROP = 96          # rows and cols of the flat-field crops (even: whole Bayer quads)


def flat_renderer(reflectance=0.5):
    return render.Renderer(scene.flat(reflectance=reflectance), SERIAL)


def centre_crop(mode, size=CROP):
    ro = sm.readout(mode)
    r0, c0 = ro.height // 2 - size // 2, ro.width // 2 - size // 2
    return (r0, r0 + size), (c0, c0 + size)


def defect_free_mask(renderer, mode, rows, cols):
    mask = np.ones((rows[1] - rows[0], cols[1] - cols[0]), bool)
    for d in renderer.defects:
        pos = sm.defect_in_readout(d, mode)
        if pos and rows[0] <= pos[1] < rows[1] and cols[0] <= pos[0] < cols[1]:
            mask[pos[1] - rows[0], pos[0] - cols[0]] = False
    return mask


def green_stats(frames, electrons):
    """Mean electrons, mean DN and temporal variance over the Gr sites."""
    g = (slice(0, None, 2), slice(1, None, 2))
    stack = np.stack([f[g] for f in frames]).astype(np.float64)
    return float(electrons[g].mean()), float(stack.mean()), float(stack.var(axis=0, ddof=1).mean())


@pytest.mark.parametrize("gain,exposure_us", [(1.0, 30.0), (1.0, 300.0), (1.0, 3000.0),
                                              (1.0, 20000.0), (8.0, 30.0), (8.0, 300.0),
                                              (8.0, 3000.0)])
def test_exact_path_noise_matches_model_on_flat_fields(gain, exposure_us):
    r = flat_renderer()
    s = render.RenderSettings(exposure_us=exposure_us, gain=gain, f_number=2.8)
    rows, cols = centre_crop("full")
    e = r.mean_electrons(s, rows, cols)
    rng = np.random.default_rng(1)
    frames = [r.render_exact(s, rows, cols, rng) for _ in range(8)]
    signal, mean_dn, var_dn = green_stats(frames, e)
    assert sm.expected_mean_dn(signal, gain) + 5 * np.sqrt(sm.expected_variance_dn(signal, gain)) < 4095
    n = 8 * (CROP // 2) ** 2
    sigma = np.sqrt(sm.expected_variance_dn(signal, gain))
    assert mean_dn == pytest.approx(sm.expected_mean_dn(signal, gain), abs=5 * sigma / np.sqrt(n) + 0.05)
    assert var_dn == pytest.approx(sm.expected_variance_dn(signal, gain), rel=0.06)


def test_signal_levels_span_dark_to_bright():
    """The flat-field levels above really cover read-noise- and shot-noise-limited signals."""
    r = flat_renderer()
    rows, cols = centre_crop("full", 8)
    levels = [r.mean_electrons(render.RenderSettings(exposure_us=t), rows, cols)[0, 1]
              for t in (30.0, 20000.0)]
    assert levels[0] < 5.0 and levels[1] > 1500.0


@pytest.mark.parametrize("gain,signal_e", [(1.0, 0.0), (1.0, 40.0), (1.0, 3000.0),
                                           (4.0, 300.0), (16.0, 0.0), (16.0, 150.0)])
@pytest.mark.parametrize("mode", ["full", "binned"])
def test_fast_path_noise_matches_model(mode, gain, signal_e):
    noise = sm.FastNoise(gain, mode, seed=3)
    codes = noise.encode(np.full((256, 256), signal_e, np.float32))
    rng = np.random.default_rng(7)
    dn = np.stack([noise.apply(codes, noise.offsets(rng, codes.size)) for _ in range(4)]).astype(np.float64)
    expected_var = sm.expected_variance_dn(signal_e, gain, mode)
    assert dn.mean() == pytest.approx(sm.expected_mean_dn(signal_e, gain, mode),
                                      abs=5 * np.sqrt(expected_var / dn.size) + 0.05)
    # binned quantisation differs by 0.03 DN^2 between the two paths (documented)
    assert dn.var() == pytest.approx(expected_var, rel=0.03, abs=0.04)


def test_fast_path_read_noise_is_symmetric_in_the_dark():
    noise = sm.FastNoise(16.0, "full", seed=1)
    codes = noise.encode(np.zeros((512, 512), np.float32))
    dn = noise.apply(codes, noise.offsets(np.random.default_rng(0), codes.size))
    x = dn.astype(np.float64) - dn.mean()
    skew = (x ** 3).mean() / x.var() ** 1.5
    assert abs(skew) < 0.05


def test_fast_path_saturates_cleanly():
    for gain in (1.0, 16.0):
        noise = sm.FastNoise(gain, "full")
        dn = noise.apply(noise.encode(np.full((64, 64), 1e6, np.float32)), (0, 0))
        assert (dn == 4095).all()


def test_binning_gives_the_snr_of_four_photosites():
    r = flat_renderer(0.2)
    rng = np.random.default_rng(5)
    snr = {}
    for mode in ("full", "binned"):
        s = render.RenderSettings(mode=mode, exposure_us=2000.0, gain=2.0)
        rows, cols = centre_crop(mode)
        e = r.mean_electrons(s, rows, cols)
        signal, mean_dn, var_dn = green_stats([r.render_exact(s, rows, cols, rng)
                                               for _ in range(6)], e)
        snr[mode] = (mean_dn - sm.BLACK_LEVEL) / np.sqrt(var_dn)
        assert snr[mode] == pytest.approx(sm.snr(signal, 2.0, mode), rel=0.05)
    # same light per photosite, same DN scale, four conversions averaged: SNR x 2
    assert snr["binned"] / snr["full"] == pytest.approx(2.0, rel=0.07)


def test_binned_and_full_share_the_dn_scale():
    r = flat_renderer()
    means = {}
    for mode in ("full", "binned"):
        s = render.RenderSettings(mode=mode, exposure_us=5000.0)
        rows, cols = centre_crop(mode, 16)
        means[mode] = sm.expected_mean_dn(r.mean_electrons(s, rows, cols)[0::2, 1::2].mean(), 1.0)
    assert means["binned"] == pytest.approx(means["full"], rel=1e-3)


def test_quantisation_and_clipping():
    rng = np.random.default_rng(0)
    dark = sm.expose_exact(np.zeros((64, 64)), 1.0, "full", rng)
    bright = sm.expose_exact(np.full((8, 8), 1e5), 1.0, "full", rng)
    assert dark.dtype == np.uint16 and abs(dark.mean() - sm.BLACK_LEVEL) < 0.5
    assert (bright == sm.WHITE_LEVEL).all()
    assert sm.conversion_gain(1.0) * sm.FULL_WELL_E > sm.WHITE_LEVEL - sm.BLACK_LEVEL


def test_read_noise_falls_with_gain_to_the_pixel_floor():
    assert 1.5 <= sm.read_noise_e(1.0) <= 2.5
    assert sm.read_noise_e(16.0) < sm.read_noise_e(1.0)
    assert sm.read_noise_e(16.0) == pytest.approx(sm.READ_NOISE_PRE_GAIN_E, rel=0.01)


def test_defects_are_deterministic_per_serial_and_differ_between_serials():
    a, b = sm.defect_pixels(SERIAL), sm.defect_pixels(SERIAL)
    c = sm.defect_pixels("MC-TEST-0002")
    assert a == b and a != c
    assert len({(d.x, d.y) for d in a} & {(d.x, d.y) for d in c}) < 3
    kinds = [d.kind for d in a]
    assert 150 <= kinds.count("hot") <= 250 and 60 <= kinds.count("dead") <= 120
    xy = np.array([(d.x, d.y) for d in a])
    gaps = np.abs(xy[:, None, :] - xy[None, :, :]).max(axis=2) + np.eye(len(xy), dtype=int) * 99
    assert gaps.min() >= 8


def test_defects_show_in_rendered_frames():
    r = flat_renderer(0.3)
    s = render.RenderSettings(exposure_us=10000.0)
    rng = np.random.default_rng(0)
    for kind in ("hot", "dead"):
        d = next(d for d in r.defects if d.kind == kind)
        dn = r.render_exact(s, (d.y - 4, d.y + 5), (d.x - 4, d.x + 5), rng).astype(float)
        value = dn[4, 4]
        neighbours = np.median([dn[4, 2], dn[4, 6], dn[2, 4], dn[6, 4]])   # same colour
        if kind == "hot":
            assert value > neighbours + 300
        else:
            assert value < sm.BLACK_LEVEL + 20 < neighbours - 20


def test_readout_geometry():
    full, binned, zoom = (sm.readout(m) for m in ("full", "binned", "zoom2x"))
    assert (full.width, full.height) == (11552, 8672)
    assert (binned.width, binned.height) == (zoom.width, zoom.height) == (5776, 4336)
    assert full.pixel_mm == pytest.approx(0.0014976, rel=1e-4)
    assert binned.pixel_mm == pytest.approx(2 * full.pixel_mm)
    # binned and full see the same field of view; zoom2x its centre at native pitch
    assert binned.centres_x([0])[0] == pytest.approx(full.centres_x([0.5])[0])
    assert zoom.centres_x([0])[0] == pytest.approx(full.centres_x([2888])[0])
    assert full.centres_x([0])[0] == pytest.approx(-full.centres_x([11551])[0])
    assert zoom.x0 % 2 == 0 and zoom.y0 % 2 == 0     # keeps the RGGB phase
    assert sm.bayer_channel(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])).tolist() == [0, 1, 2, 3]
    # the binned pixel of a photosite has that photosite's colour
    for x, y in [(0, 0), (3, 2), (6, 5), (11551, 8671)]:
        d = sm.Defect(x, y, "dead")
        bx, by = sm.defect_in_readout(d, "binned")
        assert sm.bayer_channel(by, bx) == sm.bayer_channel(y, x)
    assert sm.defect_in_readout(sm.Defect(10, 10, "hot"), "zoom2x") is None
    with pytest.raises(ValueError, match="readout mode"):
        sm.readout("quarter")
