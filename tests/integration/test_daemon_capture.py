"""modcamd captures, focuses and controls a virtual module over D-Bus."""
import os
import tempfile
import time

import pytest
from gi.repository import GLib
from PIL import Image

from modcam import names
from tests.support.daemon import error_name
from tests.support.timing import bound

ERR = names.ERROR_PREFIX


def v(sig, value):
    return GLib.Variant(sig, value)


def test_capture_writes_jpeg_png_and_dng_with_metadata(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0101")
    res = c.module("Capture", vm.path, [{"formats": v("as", ["jpeg", "png", "dng"]),
                                         "ExposureTime": v("i", 8000)}], "a{sv}")
    paths = res["paths"]
    assert [os.path.splitext(p)[1] for p in paths] == [".jpg", ".png", ".dng"]
    for p, size in zip(paths, res["sizes"]):
        assert os.path.dirname(p) == modcamd.capture_dir
        assert os.path.getsize(p) == size > 0
    assert Image.open(paths[0]).size == (1152, 864)
    assert Image.open(paths[1]).size == (1152, 864)
    assert res["exposure_time"] == 8000
    assert res["sequence"] >= 0 and res["timestamp_ns"] > 1.6e18
    # the per-shot exposure does not stick
    assert c.prop(vm.path, "ExposureTime") == 10000
    # a second capture gets a new name
    again = c.module("Capture", vm.path, [{}], "a{sv}")
    assert again["paths"][0] not in paths and os.path.exists(again["paths"][0])


def test_capture_binned_readout(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0102")
    res = c.module("Capture", vm.path, [{"readout_mode": v("s", "binned")}], "a{sv}")
    assert Image.open(res["paths"][0]).size == (576, 432)


def test_capture_to_fd_writes_the_callers_file(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0103")
    with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
        res = c.call(vm.path, names.MODULE_INTERFACE, "CaptureToFd",
                     [0, {"format": v("s", "jpeg")}], "ha{sv}", fds=[f.fileno()])
        assert res["size"] == os.path.getsize(f.name) > 0
        assert Image.open(f.name).size == (1152, 864)
    assert os.listdir(modcamd.capture_dir) == []


@pytest.mark.parametrize("options, key", [
    ({"formats": v("as", ["tiff"])}, "tiff"),
    ({"quality": v("i", 0)}, "quality"),
    ({"bogus": v("b", True)}, "bogus"),
    ({"ExposureTime": v("i", 5)}, "ExposureTime"),
    ({"readout_mode": v("s", "tiny")}, "readout_mode"),
])
def test_bad_capture_options_are_invalid_argument_naming_the_key(modcamd, options, key):
    c = modcamd.client
    vm = modcamd.plug("MC0104")
    with pytest.raises(GLib.Error) as err:
        c.module("Capture", vm.path, [options], "a{sv}")
    assert error_name(err.value) == ERR + "InvalidArgument"
    assert key in err.value.message
    assert c.prop(vm.path, "State") in ("off", "ready")


def test_set_controls_checks_ranges_and_reflects_values(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0105")
    c.module("SetControls", vm.path, [{"ExposureTime": v("i", 4000),
                                       "Aperture": v("d", 4.0)}], "a{sv}")
    assert c.prop(vm.path, "ExposureTime") == 4000
    assert c.prop(vm.path, "Aperture") == 4.0
    assert c.prop(vm.path, "AeEnable") is False
    for controls, key in (({"ExposureTime": v("i", 10)}, "ExposureTime 10 is below the minimum"),
                          ({"Aperture": v("d", 0.5)}, "Aperture"),
                          ({"Zoom": v("d", 2.0)}, "Zoom"),
                          ({"ExposureTime": v("d", 5000.5)}, "ExposureTime")):
        with pytest.raises(GLib.Error) as err:
            c.module("SetControls", vm.path, [controls], "a{sv}")
        assert error_name(err.value) == ERR + "InvalidArgument"
        assert key in err.value.message
    assert c.prop(vm.path, "ExposureTime") == 4000      # all or nothing
    # applied to the module once it is powered
    c.module("Claim", vm.path)
    assert vm.sim("status")["controls"]["exposure_us"] == 4000


def test_focus_ring_shows_in_lens_position_and_switches_to_manual(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0106")
    c.module("SetControls", vm.path, [{"AfMode": v("s", "auto")}], "a{sv}")
    mark = len(c.signals)
    t0 = time.monotonic()
    vm.turn_focus_ring(1.5)
    sig = c.wait_signal("PropertiesChanged", vm.path, after=mark,
                        match=lambda a: "LensPosition" in a[1])
    assert sig[4][1]["LensPosition"] == pytest.approx(1.5)
    assert sig[0] - t0 < bound(1 / 8.3 + 0.05)   # within one full frame time (+ IPC slack)
    assert c.prop(vm.path, "FocusMode") == "manual"


def test_autofocus_lands_within_the_depth_of_field(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0107")
    vm.sim("sim.set_scene", name="slanted_edge", distance_m=1.25)
    res = c.module("AutoFocus", vm.path, timeout=120)
    assert res["success"] is True
    assert res["position"] == pytest.approx(0.8, abs=0.05)
    assert 3 <= res["frames"] <= 15
    assert c.prop(vm.path, "LensPosition") == pytest.approx(res["position"])
    assert c.prop(vm.path, "FocusMode") == "auto"


def test_a_second_capture_while_one_runs_is_busy(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0108", boot_seconds=1.0)
    first = c.call_async(vm.path, names.MODULE_INTERFACE, "Capture", [{}], "a{sv}")
    c.eventually(lambda: c.prop(vm.path, "State") == "booting", 5, "booting")
    with pytest.raises(GLib.Error) as err:
        c.module("Capture", vm.path, [{}], "a{sv}")
    assert error_name(err.value) == ERR + "Busy"
    c.eventually(lambda: first, 30, "the first capture")
    assert first[0][0] == "ok", first


def test_unplug_mid_capture_fails_with_removed_quickly(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0109", boot_seconds=1.0)
    pending = c.call_async(vm.path, names.MODULE_INTERFACE, "Capture", [{}], "a{sv}")
    c.eventually(lambda: c.prop(vm.path, "State") == "booting", 5, "booting")
    t0 = time.monotonic()
    vm.unplug()
    c.eventually(lambda: pending, 5, "the capture's reply")
    assert time.monotonic() - t0 < 0.5
    kind, err = pending[0]
    assert kind == "error" and error_name(err) == ERR + "Removed", pending
    # the next plug works
    vm.plug()
    c.wait_signal("ModuleAdded", after=0)
    c.eventually(lambda: c.modules() == [vm.path], 5, "the module back")
    res = c.module("Capture", vm.path, [{}], "a{sv}")
    assert os.path.exists(res["paths"][0])


def test_vanished_client_releases_its_claim(modcamd):
    from tests.support.daemon import BusClient
    c = modcamd.client
    vm = modcamd.plug("MC0110")
    other = BusClient(modcamd.bus.address)
    other.module("Claim", vm.path)
    assert c.prop(vm.path, "Clients") == [other.unique_name]
    other.close()
    c.eventually(lambda: c.prop(vm.path, "Clients") == [], 5, "the claim to go")


def test_idle_module_powers_down(daemon_harness):
    h = daemon_harness.start(idle_timeout=1.0)
    c = h.client
    vm = h.plug("MC0111")
    c.module("Claim", vm.path)
    c.module("Release", vm.path)
    assert c.prop(vm.path, "State") == "ready"
    t0 = time.monotonic()
    c.eventually(lambda: c.prop(vm.path, "State") == "off", 5, "idle power-down")
    assert 0.9 <= time.monotonic() - t0 <= 2.5
    assert vm.sim("status")["state"] == "off"


def test_auto_exposure_meters_before_the_still(modcamd):
    """With AeEnable, four times the light gives a quarter of the exposure."""
    c = modcamd.client
    vm = modcamd.plug("MC0112")
    c.module("SetControls", vm.path, [{"AeEnable": v("b", True)}], "a{sv}")
    totals = []
    for lux in (200.0, 800.0):
        vm.sim("sim.set_ambient", lux=lux)
        res = c.module("Capture", vm.path, [{}], "a{sv}")
        totals.append(res["exposure_time"] * res["analogue_gain"])
        assert c.prop(vm.path, "ExposureTime") == res["exposure_time"]
    assert totals[0] / totals[1] == pytest.approx(4.0, rel=0.25), totals
    assert c.prop(vm.path, "AeEnable") is True
