"""Bad input over D-Bus: every method, called with wrong types, out-of-range and
huge values, unknown keys and bad descriptors, gets a documented error (or
succeeds when the input happens to be valid), and modcamd stays up and correct."""
import os

import pytest
from gi.repository import GLib
from hypothesis import HealthCheck, given, settings, strategies as st

from modcam import names
from tests.support.daemon import error_name

DOCUMENTED = {names.ERROR_PREFIX + e for e in names.ERRORS}
# GDBus itself refuses a call whose arguments do not match the signature.
SIGNATURE_ERROR = "org.freedesktop.DBus.Error.InvalidArgs"
KEYS = ["AeEnable", "ExposureTime", "AnalogueGain", "AwbEnable", "ColourGains", "LensPosition",
        "AfMode", "Aperture", "ReadoutMode", "formats", "format", "readout_mode", "quality"]

huge_ints = st.one_of(st.integers(-2**31, 2**31 - 1), st.sampled_from([0, -1, 2**31 - 1]))
values = st.one_of(
    st.builds(lambda b: GLib.Variant("b", b), st.booleans()),
    st.builds(lambda i: GLib.Variant("i", i), huge_ints),
    st.builds(lambda i: GLib.Variant("t", i), st.integers(0, 2**64 - 1)),
    st.builds(lambda d: GLib.Variant("d", d),
              st.floats(allow_nan=True, allow_infinity=True)),
    st.builds(lambda s: GLib.Variant("s", s), st.text(max_size=40)),
    st.builds(lambda s: GLib.Variant("s", s),
              st.sampled_from(["jpeg", "png", "dng", "binned", "zoom2x", "full", "manual",
                               "auto", "continuous", "tiff", ""])),
    st.builds(lambda a: GLib.Variant("as", a), st.lists(st.sampled_from(
        ["jpeg", "png", "dng", "raw", "jpeg"]), max_size=4)),
    st.builds(lambda a: GLib.Variant("ad", a), st.lists(st.floats(-10, 100), max_size=3)),
    st.builds(lambda: GLib.Variant("a{sv}", {"x": GLib.Variant("i", 1)})),
)
options = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=12)), values,
                          max_size=4)


def check_reply(box):
    kind, value = box[0]
    if kind == "error":
        name = error_name(value)
        assert name in DOCUMENTED | {SIGNATURE_ERROR}, (name, value.message)
        assert "Traceback" not in value.message
        assert value.message.strip()


@pytest.fixture
def daemon(modcamd):
    vm = modcamd.plug("MC0401", boot_seconds=0.05)
    return modcamd, vm


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(["SetControls", "Capture", "CaptureToFd"]), opts=options,
       handle=st.integers(-3, 3))
def test_every_method_answers_bad_input_with_a_documented_error(daemon, method, opts, handle):
    h, vm = daemon
    c = h.client
    if method == "CaptureToFd":
        read_only = os.open("/dev/null", os.O_RDONLY)
        try:
            box = []
            try:
                c.call(vm.path, names.MODULE_INTERFACE, method, [handle, opts], "ha{sv}",
                       fds=[read_only])
                box.append(("ok", None))
            except GLib.Error as exc:
                box.append(("error", exc))
        finally:
            os.close(read_only)
    else:
        box = c.call_async(vm.path, names.MODULE_INTERFACE, method, [opts], "a{sv}")
        c.eventually(lambda: box, 60, f"the reply to {method}")
    check_reply(box)
    for f in os.listdir(h.capture_dir):          # valid captures write files: keep it small
        os.unlink(os.path.join(h.capture_dir, f))
    assert h.daemon.proc.poll() is None, h.log()[-3000:]


def test_wrong_signatures_and_unknown_members_are_refused_by_the_bus_layer(daemon):
    h, vm = daemon
    c = h.client
    for method, args, sig in (("SetControls", [5], "i"), ("Capture", ["x"], "s"),
                              ("Claim", [1], "u"), ("NoSuchMethod", [], "")):
        box = c.call_async(vm.path, names.MODULE_INTERFACE, method, args, sig)
        c.eventually(lambda: box, 10, method)
        assert box[0][0] == "error"
        assert error_name(box[0][1]).startswith("org.freedesktop.DBus.Error."), box
    # and the daemon is still correct afterwards
    res = c.module("Capture", vm.path, [{"formats": GLib.Variant("as", ["jpeg"])}], "a{sv}")
    assert os.path.getsize(res["paths"][0]) > 0
