"""The physics renderer behind the streamer's FrameSource interface: frames
equal the renderer's own, packed exactly, and banked so streaming only copies."""
import numpy as np
import pytest

from modcam import raw12
from modcam.virtual.physical_source import PhysicalSource
from modcam.virtual.render import Renderer, RenderSettings
from modcam.virtual.scene import make_scene
from modcam.virtual.streamer import FrameSettings, readout_geometry
from modcam.virtual import sensor_model as sm

SERIAL = "MC100-000042"


def settings(**kw):
    w, h, stride = readout_geometry(sm.WIDTH, sm.HEIGHT, "binned")
    base = dict(readout_mode="binned", width=w, height=h, stride=stride, exposure_us=8000,
                analogue_gain=2.0, aperture=2.8, lens_position=0.8, scene="studio",
                scene_distance_m=1.2, scene_seed=3, lux=800.0, illuminant="D65")
    base.update(kw)
    return FrameSettings(**base)


@pytest.fixture(scope="module")
def source():
    return PhysicalSource(SERIAL, bank_size=2)


def test_packed_frame_is_the_renderers_frame_packed_exactly(source):
    s = settings()
    packed = source.packed_frame(s, 0)
    assert packed.shape == (s.height, s.stride) and packed.dtype == np.uint8
    rows = (1000, 1064)
    ref = Renderer(make_scene("studio", seed=3, distance_m=1.2), SERIAL).frame_source(
        RenderSettings(mode="binned", exposure_us=8000, gain=2.0, f_number=2.8,
                       lens_position=0.8, lux=800.0), 0).frame(0, rows=rows)
    got = raw12.unpack(packed[rows[0]:rows[1]], s.width)
    assert np.array_equal(got, ref)
    assert got.min() >= 0 and got.max() <= 4095 and got.std() > 10, "a real picture"


def test_bank_repeats_with_its_period_and_frames_differ_within_it(source):
    s = settings()
    f0, f1, f2 = (source.packed_frame(s, n) for n in (0, 1, 2))
    assert f2 is f0, "frame n is bank frame n mod bank_size: streaming only copies"
    assert not np.array_equal(f0[2000:2064], f1[2000:2064]), "independent noise in the bank"


def test_doubling_the_exposure_doubles_the_signal(source):
    w = settings().width
    signal = [raw12.unpack(source.packed_frame(settings(exposure_us=t), 0)[2000:2064], w)
              .astype(np.float64).mean() - sm.BLACK_LEVEL for t in (4000, 8000)]
    assert signal[1] / signal[0] == pytest.approx(2.0, rel=0.05)
