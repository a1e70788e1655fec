"""Tests for the ISP pipeline core (modcam.isp.pipeline.develop).

Owns: strips equal the whole frame bit for bit (several strip sizes, with
and without the finishing filters, packed RAW12 equal to uint16 input);
a flat grey stays neutral; black level, white balance and the colour matrix
give the expected sRGB code within 1; calibrated defects disappear; a
vignetted flat field made with the calibration's own grid comes out flat;
options reject unknown keys and bad values; develop_to_jpeg writes a JPEG
Pillow decodes at the right size; and a 100 MP develop stays inside a
memory bound (in a child process, measured with VmHWM).
"""
import io
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image

from modcam import raw12
from modcam.calibration import DefectPixel, ShadingGrid, virtual_calibration
from modcam.isp.pipeline import (DevelopOptions, develop, develop_to_jpeg, white_balanced_matrix)
from modcam.isp.writers import PictureMeta

pytestmark = pytest.mark.asan

SERIAL = "VM-PIPE-01"
CAL = virtual_calibration(SERIAL)
BLACK, WHITE = CAL.black_level, CAL.white_level


def meta(**kw):
    capture = dict(make="modcam", model="virtual", firmware="1.0", exposure_us=10000,
                   analogue_gain=1.0, aperture=2.8, lens_position=0.0,
                   timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    capture.update(kw)
    return PictureMeta.from_calibration(CAL, **capture)


def flat_cal(defects=()):
    """The virtual calibration with unit shading and the given defects."""
    cells = 4 * CAL.grid_rows * CAL.grid_cols
    return replace(CAL, shading=(ShadingGrid(2.8, (1.0,) * cells),), defects=tuple(defects))


def srgb8(v):
    v = np.clip(np.asarray(v, np.float64), 0, 1)
    return np.round(255 * np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055))


def test_scene(h=96, w=160, seed=3):
    """Edges, gradients and noise: something every stage changes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    v = 900 + 600 * np.sin(x / 7.0) * np.cos(y / 11.0) + 1500 * ((x // 23 + y // 17) % 2)
    v += rng.normal(0, 40, (h, w))
    return np.clip(v, 0, 4095).astype(np.uint16)


test_scene.__test__ = False


@pytest.mark.parametrize("finish", [dict(), dict(sharpen=1.0, denoise=0.6),
                                    dict(demosaic="bilinear")])
def test_strips_equal_whole_frame(finish):
    cfa = test_scene()
    cal = replace(CAL, defects=(DefectPixel(40, 0, "hot"), DefectPixel(41, 31, "hot"),
                                DefectPixel(10, 32, "dead"), DefectPixel(100, 95, "hot")))
    whole = develop(cfa, meta(), cal, DevelopOptions(strip_rows=96, threads=1, **finish))
    for rows in (8, 14, 32, 50):
        for threads in (1, 2):
            strips = develop(cfa, meta(), cal, DevelopOptions(strip_rows=rows, threads=threads,
                                                              **finish))
            np.testing.assert_array_equal(strips, whole, err_msg=f"strip_rows={rows}")
    got = []
    develop(cfa, meta(), cal, DevelopOptions(strip_rows=20, **finish),
            sink=lambda s: got.append(s.copy()))
    assert [len(s) for s in got] == [20, 20, 20, 20, 16]
    np.testing.assert_array_equal(np.concatenate(got), whole)


def test_packed_raw12_equals_uint16():
    cfa = test_scene()
    packed = raw12.pack(cfa)
    a = develop(cfa, meta(), CAL)
    b = develop(packed, meta(), CAL, width=cfa.shape[1])
    np.testing.assert_array_equal(a, b)


def test_flat_grey_is_flat_and_neutral():
    cfa = np.full((64, 96), BLACK + 1000, np.uint16)
    out = develop(cfa, meta(), flat_cal(), DevelopOptions(wb_gains=(1, 1, 1)))
    assert (out == out[0, 0]).all()
    expected = srgb8(1000 / (WHITE - BLACK))
    assert abs(int(out[0, 0, 0]) - expected) <= 1


def test_black_level_and_white_balance():
    """R, G, B raw levels that white balance makes equal: a neutral whose
    code follows from the black level, the gains and the sRGB curve."""
    cfa = np.empty((32, 32), np.uint16)
    cfa[0::2, 0::2] = BLACK + 500    # R
    cfa[0::2, 1::2] = BLACK + 1000   # G
    cfa[1::2, 0::2] = BLACK + 1000
    cfa[1::2, 1::2] = BLACK + 250    # B
    out = develop(cfa, meta(), flat_cal(), DevelopOptions(wb_gains=(2.0, 1.0, 4.0)))
    expected = srgb8(1000 / (WHITE - BLACK))
    assert np.abs(out.astype(int) - expected).max() <= 1
    # below black clips to 0, not wraps
    dark = develop(np.full((16, 16), BLACK - 50, np.uint16), meta(), flat_cal())
    assert (dark == 0).all()
    # the gains from the metadata are used when options give none
    out2 = develop(cfa, meta(wb_gains=(2.0, 1.0, 4.0)), flat_cal())
    np.testing.assert_array_equal(out, out2)


def test_colour_matrix_on_a_known_colour():
    native = np.array([0.30, 0.20, 0.05])            # camera RGB above black, full scale 1
    wb = (1.8, 1.0, 1.5)
    cfa = np.empty((32, 32), np.uint16)
    lv = np.round(native * (WHITE - BLACK)) + BLACK
    cfa[0::2, 0::2], cfa[0::2, 1::2], cfa[1::2, 0::2], cfa[1::2, 1::2] = lv[0], lv[1], lv[1], lv[2]
    out = develop(cfa, meta(), flat_cal(), DevelopOptions(wb_gains=wb))
    camera = (lv - BLACK) / (WHITE - BLACK) * np.array(wb)
    expected = srgb8(white_balanced_matrix(CAL.matrix(), wb) @ camera)
    assert np.abs(out[8:-8, 8:-8].astype(int) - expected).max() <= 1
    # and the matrix keeps a white-balanced neutral neutral, for any balance
    for gains in (None, wb, (1.0, 1.0, 1.0)):
        m = white_balanced_matrix(CAL.matrix(), gains)
        np.testing.assert_allclose(m @ np.ones(3), np.ones(3), atol=1e-9)
    # under D65 it is the calibration matrix on the un-balanced camera RGB
    # (scaled so the D65 white normalised to G = 1 maps to (1, 1, 1))
    w = np.linalg.solve(CAL.matrix(), np.ones(3))
    np.testing.assert_allclose(white_balanced_matrix(CAL.matrix(), w[1] / w) @ (native * w[1] / w),
                               w[1] * (CAL.matrix() @ native), atol=1e-9)


def test_defects_from_calibration_are_corrected():
    cfa = np.full((48, 48), BLACK + 800, np.uint16)
    cfa[20, 21] = 4095       # a hot pixel (G) and a dead one (R)
    cfa[30, 30] = 0
    clean = develop(np.full((48, 48), BLACK + 800, np.uint16), meta(), flat_cal())
    off = DevelopOptions(dynamic_defects=False)
    untouched = develop(cfa, meta(), flat_cal(), off)
    assert np.abs(untouched.astype(int) - clean).max() > 10     # visible when uncorrected
    listed = flat_cal([DefectPixel(21, 20, "hot"), DefectPixel(30, 30, "dead")])
    np.testing.assert_array_equal(develop(cfa, meta(), listed, off), clean)


def test_defects_the_calibration_does_not_list_are_found_and_corrected():
    cfa = np.full((48, 48), BLACK + 800, np.uint16)
    cfa[20, 21] = 4095       # hot, not in the calibration
    cfa[30, 30] = BLACK      # dead, not in the calibration
    clean = develop(np.full((48, 48), BLACK + 800, np.uint16), meta(), flat_cal())
    np.testing.assert_array_equal(develop(cfa, meta(), flat_cal()), clean)


def _dpc(cfa, t_abs=1311):
    """modcam_isp_dpc over the whole array; returns (corrected array, count)."""
    from modcam.native import ffi, lib
    out = np.ascontiguousarray(cfa, np.uint16).copy()
    scratch = np.empty((3, out.shape[1]), np.uint16)
    n = ffi.new("uint32_t *")
    assert lib.modcam_isp_dpc(ffi.cast("uint16_t *", out.ctypes.data), out.shape[1],
                              out.shape[1], out.shape[0], 2, out.shape[0] - 2, t_abs,
                              ffi.cast("uint16_t *", scratch.ctypes.data), n) == 0
    return out, n[0]


def test_dynamic_detection_leaves_edges_lines_and_noise_alone():
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:96, 0:96]
    edge = np.where(x + 0.1 * y > 48, 50000, 3000)                       # a slanted edge
    line = np.full((96, 96), 3000); line[:, 47] = 60000; line[40, :] = 60000  # 1-px lines
    dots = np.full((96, 96), 3000); dots[50:52, 50:52] = 60000            # a 2x2 highlight
    noise = np.clip(rng.normal(20000, 300, (96, 96)), 0, 65535)          # strong noise
    for name, img in (("edge", edge), ("line", line), ("dots", dots), ("noise", noise)):
        out, n = _dpc(img.astype(np.uint16))
        assert n == 0, f"{name}: {n} pixels changed"
    hot = noise.astype(np.uint16)
    hot[30, 40] = 40000
    out, n = _dpc(hot)
    assert n == 1 and abs(int(out[30, 40]) - 20000) < 1500


def test_dynamic_defects_near_strip_edges_keep_strips_equal_to_the_whole_frame():
    rng = np.random.default_rng(9)
    cfa = np.clip(rng.normal(BLACK + 900, 25, (96, 64)), 0, 4095).astype(np.uint16)
    for row in (7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48):   # around strip boundaries
        cfa[row, (row * 7) % 60 + 2] = 4095
    whole = develop(cfa, meta(), flat_cal(), DevelopOptions(strip_rows=96))
    for rows in (8, 16, 24):
        np.testing.assert_array_equal(develop(cfa, meta(), flat_cal(),
                                              DevelopOptions(strip_rows=rows)), whole)


def _grid_gain(grid, w, h):
    """Bilinear interpolation of one channel's grid at pixel centres, grid
    spanning the frame edge to edge (independent of the pipeline's code)."""
    gr, gc = grid.shape
    u = (np.arange(w) + 0.5) / w * (gc - 1)
    v = (np.arange(h) + 0.5) / h * (gr - 1)
    rows = np.array([np.interp(u, np.arange(gc), grid[j]) for j in range(gr)])
    return np.array([np.interp(v, np.arange(gr), rows[:, i]) for i in range(w)]).T


def test_shading_flattens_a_vignetted_flat_field():
    h, w = 104, 136
    gains = CAL.shading_gains(2.8)
    channel = {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 3}      # R Gr / Gb B
    cfa = np.empty((h, w), np.uint16)
    level = 2400.0
    for (py, px), c in channel.items():
        g = _grid_gain(gains[c], w, h)
        cfa[py::2, px::2] = np.round(BLACK + level / g[py::2, px::2])
    assert cfa.min() < BLACK + 0.8 * level              # really vignetted
    out = develop(cfa, meta(aperture=2.8), replace(CAL, defects=()),
                  DevelopOptions(wb_gains=(1, 1, 1))).astype(float)
    linear = np.where(out / 255 <= 0.04045, out / 255 / 12.92, ((out / 255 + 0.055) / 1.055) ** 2.4)
    assert linear.max() / linear.min() - 1 < 0.02


def test_options_reject_unknown_keys_and_bad_values():
    assert DevelopOptions.from_dict({"sharpen": 0.5}).sharpen == 0.5
    opts = DevelopOptions(wb_gains=[2, 1, 1.5], denoise=0.3)
    assert DevelopOptions.from_dict(opts.to_dict()) == opts
    with pytest.raises(ValueError, match="unknown develop option 'gamma'"):
        DevelopOptions.from_dict({"gamma": 2.2})
    with pytest.raises(ValueError, match="unknown develop option"):
        develop(test_scene(), meta(), CAL, {"stripes": 3})
    for bad in (dict(demosaic="fast"), dict(wb_gains=(1, 0, 1)), dict(wb_gains=(1, 1)),
                dict(sharpen=-1), dict(denoise="strong"), dict(denoise=2.0),
                dict(strip_rows=0), dict(strip_rows=64.0), dict(threads=0), dict(threads=True)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DevelopOptions(**bad)
    assert DevelopOptions().denoise_strength(1.0) == 0.0
    assert DevelopOptions().denoise_strength(8.0) == 1.0


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match="even"):
        develop(np.zeros((31, 32), np.uint16), meta(), CAL)
    with pytest.raises(ValueError, match="2-D numpy array"):
        develop(np.zeros((32, 32), np.float32), meta(), CAL)
    with pytest.raises(ValueError, match="fewer than"):
        develop(np.zeros((32, 30), np.uint8), meta(), CAL, width=32)


def test_develop_to_jpeg_decodes_at_the_right_size(tmp_path):
    cfa = test_scene(64, 96)
    data = develop_to_jpeg(cfa, meta(), CAL, None, quality=90)
    img = Image.open(io.BytesIO(data))
    assert img.size == (96, 64) and img.mode == "RGB"
    ref = develop(cfa, meta(), CAL).astype(int)
    assert np.abs(np.asarray(img, int) - ref).mean() < 6
    path = tmp_path / "x.jpg"
    packed = raw12.pack(cfa)
    develop_to_jpeg(packed, meta(readout_mode="binned"), CAL, str(path), width=96)
    assert Image.open(path).size == (96, 64)


def test_binned_readout_uses_the_defect_map():
    """A photosite defect lands on the binned pixel the sensor model says."""
    cfa = np.full((48, 48), BLACK + 800, np.uint16)
    cfa[2 * (45 // 4) + 1, 2 * (37 // 4) + 1] = 4095
    cal = flat_cal([DefectPixel(37, 45, "hot")])
    fixed = develop(cfa, meta(readout_mode="binned"), cal)
    assert (fixed == fixed[0, 0]).all()


# ru_maxrss survives fork and exec, so a child of the (large) pytest process
# would report pytest's peak: the child reads VmHWM after resetting it.
MEMORY_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from datetime import datetime, timezone
    from modcam.calibration import virtual_calibration
    from modcam.isp.pipeline import develop_to_jpeg
    from modcam.isp.writers import PictureMeta
    def kb(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field))
    cal = virtual_calibration("VM-MEM")
    meta = PictureMeta.from_calibration(cal, make="m", model="m", firmware="1",
        exposure_us=1000, analogue_gain=1.0, aperture=2.8, lens_position=0.0,
        timestamp=datetime.now(timezone.utc), readout_mode="full")
    w, h = 11552, 8672
    develop_to_jpeg(np.zeros((64, 3 * w // 2), np.uint8), meta, cal, sys.argv[1])  # imports, pools
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                          # VmHWM := VmRSS: the process baseline
    base = kb("VmRSS:")
    packed = np.empty((h, 3 * w // 2), np.uint8)   # the RAW frame counts in the budget
    rng = np.random.default_rng(0)
    for r in range(0, h, 256):               # random bytes are valid RAW12
        packed[r:r + 256] = rng.integers(0, 256, packed[r:r + 256].shape, np.uint8)
    develop_to_jpeg(packed, meta, cal, sys.argv[1], quality=90)
    print((kb("VmHWM:") - base) * 1024, packed.nbytes)
""")


def test_peak_memory_of_a_100mp_develop_is_bounded(tmp_path):
    """A 100 MP RAW12 frame to a JPEG: peak memory above the process baseline,
    the RAW frame itself included, stays within 1.5x the RAW frame (strips,
    reused buffers, no full-size intermediate)."""
    if os.environ.get("MODCAM_NATIVE_DIR"):
        pytest.skip("sanitizer builds have their own memory overhead")
    run = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(tmp_path / "m.jpg")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    extra, raw_bytes = map(int, run.stdout.split())
    assert raw_bytes < extra < 1.5 * raw_bytes, f"{extra / 1e6:.0f} MB above baseline"


def test_virtual_module_grey_wall_develops_neutral_and_flat():
    """The virtual module's own frames (noise, vignetting, defects, colour)
    of an 18% grey wall under D65, corner and centre windows of the binned
    readout: white-balanced with the calibration's D65 white they come out
    neutral, and the corner as bright as the centre."""
    from modcam.virtual.render import Renderer, RenderSettings
    from modcam.virtual.scene import make_scene

    renderer = Renderer(make_scene("flat"), SERIAL)
    s = RenderSettings(mode="binned", exposure_us=20000, f_number=1.4, lux=500)
    white = np.linalg.solve(CAL.matrix(), np.ones(3))
    wb = tuple(white[1] / white)                     # D65 native white -> equal channels
    means = []
    for x0, y0 in ((0, 0), (2840, 2120)):
        rows, cols = (y0, y0 + 96), (x0, x0 + 128)
        cfa = renderer.render_exact(s, rows, cols, np.random.default_rng(1))
        out = develop(cfa, meta(readout_mode="binned", aperture=1.4), CAL,
                      DevelopOptions(wb_gains=wb), origin=(x0, y0))
        means.append(out[4:-4, 4:-4].reshape(-1, 3).mean(axis=0))
    for m in means:
        assert np.ptp(m) < 3, f"not neutral: {m}"
    assert abs(means[0].mean() / means[1].mean() - 1) < 0.02, means


def test_a_failing_sink_stops_the_develop():
    calls = []

    def sink(rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        develop(test_scene(256, 64), meta(), CAL, DevelopOptions(strip_rows=16), sink=sink)
    assert calls == [16, 16]
    with pytest.raises(ValueError, match="sink must be callable"):
        develop(test_scene(), meta(), CAL, sink=42)


def test_other_bayer_patterns_and_windows():
    """A GRBG frame is the RGGB frame shifted by one column: the same picture."""
    cfa = test_scene(64, 98)
    cal = flat_cal()
    rggb = develop(cfa[:, :96], meta(), cal, DevelopOptions(demosaic="bilinear"))
    grbg = develop(cfa[:, 1:97].copy(), meta(cfa_pattern="GRBG"), cal,
                   DevelopOptions(demosaic="bilinear"))
    np.testing.assert_array_equal(grbg[2:-2, 4:-4], rggb[2:-2, 5:-3])
    with pytest.raises(ValueError, match="must be even"):
        develop(cfa[:, :96], meta(), CAL, origin=(1, 0))
