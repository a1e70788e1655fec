"""modcam-stress's capture check: a DNG passes only when it is exactly the
frame its capture result names. A torn frame (rows of two frames), a frame of
other settings, a wrong sequence or a damaged file are each caught."""
from datetime import datetime, timezone

import numpy as np
import pytest

from modcam import raw12
from modcam.calibration import virtual_calibration
from modcam.isp.writers import PictureMeta, write_dng
from modcam.stress.validate import SCENE, Validator
from modcam.virtual.streamer import FrameSettings, SyntheticSource

SERIAL = "MC-STRESS-1"
W, H = 128, 96


def settings(exposure_us: int = 8000) -> FrameSettings:
    return FrameSettings("binned", W, H, 3 * W // 2, exposure_us, 1.0, 2.8, 0.5,
                         SCENE["scene"], SCENE["scene_distance_m"], SCENE["scene_seed"],
                         SCENE["lux"], SCENE["illuminant"])


def frame(sequence: int, exposure_us: int = 8000) -> np.ndarray:
    packed = SyntheticSource(cache_size=1).packed_frame(settings(exposure_us), sequence)
    return raw12.unpack(packed, W)


def result(sequence: int, exposure_us: int = 8000) -> dict:
    return {"width": W, "height": H, "readout_mode": "binned", "exposure_time": exposure_us,
            "analogue_gain": 1.0, "aperture": 2.8, "lens_position": 0.5, "sequence": sequence}


def dng(path, cfa: np.ndarray) -> str:
    """Written as modcamd writes a capture's DNG: with the module's calibration."""
    cal = virtual_calibration(SERIAL)
    meta = PictureMeta.from_calibration(
        cal, make="modcam", model="Virtual", firmware="1.0",
        exposure_us=8000, analogue_gain=1.0, aperture=2.8, lens_position=0.5,
        readout_mode="binned", wb_gains=(1.8, 1.0, 1.5),
        timestamp=datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc))
    write_dng(path, cfa, meta, cal)
    return str(path)


def test_the_frame_the_result_names_passes(tmp_path):
    v = Validator()
    assert v.check(dng(tmp_path / "a.dng", frame(41)), result(41)) is None
    assert v.by["rendered"] == 1


def test_a_torn_frame_is_caught(tmp_path):
    """The top half of frame 7, the bottom half of a frame of other settings."""
    torn = frame(7)
    torn[H // 2:] = frame(8, exposure_us=4000)[H // 2:]
    why = Validator().check(dng(tmp_path / "torn.dng", torn), result(7))
    assert why is not None and "torn or mixed" in why


def test_a_single_changed_pixel_is_caught(tmp_path):
    cfa = frame(9)
    cfa[H - 1, W - 1] ^= 1
    assert "torn or mixed" in Validator().check(dng(tmp_path / "px.dng", cfa), result(9))


def test_the_sequence_must_match(tmp_path):
    """Frame 12's pixels under frame 13's result: a stale frame delivered."""
    why = Validator().check(dng(tmp_path / "stale.dng", frame(12)), result(13))
    assert why == "row 0 carries sequence 12, the result says 13"


def test_the_size_must_match(tmp_path):
    r = result(3) | {"width": W * 2}
    assert "the result says 256x96" in Validator().check(dng(tmp_path / "s.dng", frame(3)), r)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_file_is_caught(tmp_path, damage):
    path = dng(tmp_path / "d.dng", frame(5))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 3] if damage == "truncate" else b"\0" * len(data))
    assert Validator().check(path, result(5)).startswith("unreadable DNG")
