"""`modcamctl develop IN.dng -o OUT.jpg` re-develops a DNG modcam wrote, with
the calibration it carries, into the same picture the ISP makes from the RAW."""
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image

from modcam.calibration import virtual_calibration
from modcam.isp import develop
from modcam.isp.writers import PictureMeta, write_dng
from modcam.virtual.render import Renderer, RenderSettings
from modcam.virtual.scene import make_scene

SERIAL = "MC-CTL-7"


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    cal = virtual_calibration(SERIAL)
    settings = RenderSettings(mode="binned", exposure_us=8000, gain=1.0, f_number=2.8,
                              lens_position=1 / 1.2, lux=1000.0)
    cfa = Renderer(make_scene("studio", seed=2), SERIAL).frame_source(settings).frame(0)
    meta = PictureMeta.from_calibration(
        cal, make="modcam", model="Virtual", firmware="1.0", exposure_us=8000, analogue_gain=1.0,
        aperture=2.8, lens_position=1 / 1.2, readout_mode="binned", wb_gains=(1.8, 1.0, 1.5),
        timestamp=datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc))
    dng = tmp_path_factory.mktemp("ctl") / "in.dng"
    write_dng(dng, cfa, meta, cal)
    return dng, develop(cfa, meta, cal)


def modcamctl(*args):
    return subprocess.run([sys.executable, "-m", "modcam.ctl", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["out.jpg", "out.png"])
def test_develop_makes_the_isp_picture_from_the_dng(capture, tmp_path, name):
    dng, direct = capture
    run = modcamctl("develop", dng, "-o", tmp_path / name)
    assert run.returncode == 0, run.stderr
    assert f"5776x4336 from module {SERIAL} (binned readout)" in run.stdout
    got = np.asarray(Image.open(tmp_path / name).convert("RGB"), dtype=np.float64)
    assert got.shape == direct.shape
    err = got - direct
    psnr = 10 * np.log10(255.0 ** 2 / np.mean(err * err)) if err.any() else np.inf
    # PNG is lossless (the gains only round through the DNG's rationals); JPEG q90 is not.
    assert psnr > (50 if name.endswith(".png") else 38)


def test_a_dng_without_modcam_calibration_is_refused_with_a_sentence(capture, tmp_path):
    dng, _ = capture
    cal = virtual_calibration(SERIAL)
    meta = PictureMeta.from_calibration(
        cal, make="other", model="camera", firmware="9", exposure_us=1000, analogue_gain=1.0,
        aperture=2.8, lens_position=0.0, timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc))
    foreign = tmp_path / "foreign.dng"
    write_dng(foreign, np.zeros((8, 8), np.uint16), meta)       # no calibration embedded
    run = modcamctl("develop", foreign, "-o", tmp_path / "x.jpg")
    assert run.returncode == 1 and "carries no modcam calibration" in run.stderr
    assert not (tmp_path / "x.jpg").exists()


def test_unreadable_input_and_unknown_output_type_are_clear_errors(capture, tmp_path):
    junk = tmp_path / "junk.dng"
    junk.write_bytes(b"not a tiff at all")
    run = modcamctl("develop", junk, "-o", tmp_path / "x.jpg")
    assert run.returncode == 1 and "cannot be read as a DNG" in run.stderr
    run = modcamctl("develop", capture[0], "-o", tmp_path / "x.bmp")
    assert run.returncode == 1 and "must end in .jpg, .jpeg or .png" in run.stderr
    assert "Traceback" not in run.stderr
