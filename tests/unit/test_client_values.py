"""The client's edges, without a daemon: Python values become the D-Bus types
the contract names, D-Bus errors become short names and clean sentences, and
modcamctl parses CONTROL=VALUE, focus positions and output names once."""
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from gi.repository import Gio, GLib

from modcam import ctl, names
from modcam.client import (CONTROL_TYPES, PROPERTIES, InvalidValue, Module, ModcamClientError,
                           error_from_glib, format_for_path, to_variant)
from modcam.ctl_commands import UsageError, capture_format, describe

MODULE_XML = Path(__file__).resolve().parents[2] / "dbus" / "org.modcam.Camera1.Module.xml"


@pytest.mark.parametrize("name, value, signature, sent", [
    ("AeEnable", False, "b", False), ("AwbEnable", True, "b", True),
    ("ExposureTime", 8000, "i", 8000), ("AnalogueGain", 2, "d", 2.0),
    ("AnalogueGain", 2.5, "d", 2.5), ("LensPosition", 0.8, "d", 0.8), ("Aperture", 4, "d", 4.0),
    ("ColourGains", (1.8, 1.5), "ad", [1.8, 1.5]), ("AfMode", "manual", "s", "manual"),
    ("ReadoutMode", "binned", "s", "binned"), ("formats", ["jpeg", "dng"], "as", ["jpeg", "dng"]),
    ("formats", "png", "as", ["png"]), ("format", "jpeg", "s", "jpeg"),
    ("quality", 90, "u", 90), ("readout_mode", "zoom2x", "s", "zoom2x"),
])
def test_each_key_gets_its_dbus_type(name, value, signature, sent):
    variant = to_variant(name, value)
    assert (variant.get_type_string(), variant.unpack()) == (signature, sent)


def test_the_control_table_is_the_contracts():
    # SetControls' <doc> lists each control with its type: "AeEnable (b), ...".
    doc = MODULE_XML.read_text()
    for name, signature in CONTROL_TYPES.items():
        assert f"{name} ({signature}" in doc, name


def test_every_property_of_the_contract_is_an_attribute():
    root = ET.parse(MODULE_XML).getroot()
    in_xml = [p.get("name") for p in root.iter("property")]
    assert list(PROPERTIES) == in_xml
    for attribute in ("serial", "state_reason", "lens_position", "focus_mode", "temperature",
                      "power_draw", "clients", "frames_received", "colour_gains"):
        assert isinstance(getattr(Module, attribute), property), attribute


@pytest.mark.parametrize("name, value, words", [
    ("AeEnable", "off", "AeEnable takes True or False"),
    ("AeEnable", 1, "AeEnable takes True or False"),
    ("ExposureTime", 8000.5, "ExposureTime takes an integer"),
    ("ExposureTime", True, "ExposureTime takes an integer"),
    ("ExposureTime", 2**31, "does not fit"),
    ("LensPosition", "near", "LensPosition takes a finite number"),
    ("LensPosition", math.nan, "LensPosition takes a finite number"),
    ("ColourGains", (1.8,), "ColourGains takes two numbers (red, blue)"),
    ("ColourGains", "1.8,1.5", "ColourGains takes two numbers"),
    ("AfMode", 1, "AfMode takes a string"),
    ("quality", -1, "does not fit"),
    ("formats", [1], "formats takes a list of strings"),
    ("Brightness", 1, "Brightness is not a control or capture option"),
])
def test_a_bad_value_is_refused_with_a_sentence(name, value, words):
    with pytest.raises(InvalidValue) as info:
        to_variant(name, value)
    assert words in str(info.value)
    assert info.value.name == "InvalidArgument" and isinstance(info.value, ValueError)


def test_set_controls_refuses_unknown_names_before_any_call():
    module = Module(client=None, path="/org/modcam/Camera1/modules/X")   # never reached
    with pytest.raises(InvalidValue, match=r"unknown control Brightness \(known: AeEnable"):
        module.set_controls(Brightness=2)


@pytest.mark.parametrize("short", names.ERRORS)
def test_daemon_errors_become_their_short_name_and_sentence(short):
    err = Gio.DBusError.new_for_dbus_error(names.ERROR_PREFIX + short, "module is booting")
    assert isinstance(err, GLib.Error) and err.message.startswith("GDBus.Error:")
    error = error_from_glib(err)
    assert (error.name, str(error), error.documented) == (short, "module is booting", True)


def test_bus_errors_become_sentences_of_our_own():
    unknown = Gio.DBusError.new_for_dbus_error(
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "The name org.modcam.Camera1 was not provided by any .service files")
    error = error_from_glib(unknown, "the system bus")
    assert error.name == "NotRunning" and not error.documented
    assert str(error) == ("modcamd is not running on the system bus "
                          "(org.modcam.Camera1 has no owner)")
    denied = Gio.DBusError.new_for_dbus_error("org.freedesktop.DBus.Error.AccessDenied",
                                              "Rejected send message")
    assert (error_from_glib(denied).name, str(error_from_glib(denied))) == \
        ("PermissionDenied", "Rejected send message")
    timed_out = GLib.Error.new_literal(Gio.io_error_quark(), "Timeout was reached",
                                       Gio.IOErrorEnum.TIMED_OUT)
    error = error_from_glib(timed_out, timeout=120)
    assert (error.name, str(error)) == ("Timeout", "modcamd did not answer within 120 s")


def test_capture_to_file_leaves_nothing_when_the_capture_fails(tmp_path, monkeypatch):
    seen = {}

    def failing(self, fd, *args, **kw):
        seen["flags"] = os.get_inheritable(fd), os.stat(fd).st_size
        raise ModcamClientError("Busy", "module MC1 is busy: capture in progress")
    monkeypatch.setattr(Module, "capture_to_fd", failing)
    with pytest.raises(ModcamClientError, match="busy"):
        Module(None, "/m").capture_to_file(tmp_path / "x.jpg")
    assert seen["flags"] == (False, 0)          # a fresh, close-on-exec file was passed
    assert list(tmp_path.iterdir()) == []


def test_capture_to_file_renames_into_place_with_the_umask_mode(tmp_path, monkeypatch):
    def writing(self, fd, fmt, *args, **kw):
        os.write(fd, b"picture")
        return {"size": 7, "format_seen": fmt}
    monkeypatch.setattr(Module, "capture_to_fd", writing)
    old = os.umask(0o027)
    try:
        result = Module(None, "/m").capture_to_file(tmp_path / "x.PNG")
    finally:
        os.umask(old)
    assert result == {"size": 7, "format_seen": "png", "path": str(tmp_path / "x.PNG")}
    assert [p.name for p in tmp_path.iterdir()] == ["x.PNG"]
    assert (tmp_path / "x.PNG").read_bytes() == b"picture"
    assert (tmp_path / "x.PNG").stat().st_mode & 0o777 == 0o640


# --- modcamctl's command line ----------------------------------------------------

def parse(*argv):
    return ctl.build_parser().parse_args(list(argv))


def test_set_parses_each_value_by_the_controls_type():
    args = parse("set", "AeEnable=off", "ColourGains=1.8,1.5", "exposuretime=8000",
                 "AwbEnable=1", "AnalogueGain=2", "AfMode=manual")
    assert args.assignments == [("AeEnable", False), ("ColourGains", [1.8, 1.5]),
                                ("ExposureTime", 8000), ("AwbEnable", True),
                                ("AnalogueGain", 2.0), ("AfMode", "manual")]
    for text, value in [("true", True), ("ON", True), ("yes", True), ("0", False),
                        ("False", False)]:
        assert parse("set", f"AeEnable={text}").assignments == [("AeEnable", value)]


@pytest.mark.parametrize("assignment, words", [
    ("Brightness=3", "unknown control 'Brightness' (known: AeEnable, AfMode, AnalogueGain"),
    ("AeEnable=maybe", "AeEnable takes true/false, 1/0 or on/off, not 'maybe'"),
    ("ExposureTime=1/125", "ExposureTime takes an integer, not '1/125'"),
    ("ColourGains=1.8", "ColourGains takes two numbers, red,blue"),
    ("ExposureTime", "'ExposureTime' is not CONTROL=VALUE"),
])
def test_set_refuses_bad_assignments_locally_as_usage_errors(assignment, words, capsys):
    with pytest.raises(SystemExit) as info:
        parse("set", assignment)
    assert info.value.code == 2
    assert words in capsys.readouterr().err


def test_focus_takes_dioptres_a_distance_or_infinity(capsys):
    assert parse("focus", "0.8").position == 0.8
    assert parse("focus", "1.25m").position == pytest.approx(0.8)
    assert parse("focus", "inf").position == 0.0
    with pytest.raises(SystemExit):
        parse("focus", "near")
    assert "is not a lens position" in capsys.readouterr().err


@pytest.mark.parametrize("name, fmt", [("x.jpg", "jpeg"), ("X.JPEG", "jpeg"), ("a/b.png", "png"),
                                       ("raw.dng", "dng"), ("x.bmp", None), ("noext", None)])
def test_the_output_suffix_names_the_format(name, fmt):
    assert format_for_path(name) == fmt
    if fmt:
        assert capture_format(name, None) == fmt
    else:
        with pytest.raises(UsageError, match="cannot tell the format"):
            capture_format(name, None)
    assert capture_format(name, "dng") == "dng"      # --format wins
    with pytest.raises(UsageError):
        capture_format("-", None)                     # stdout needs --format


def test_capture_with_an_unknown_suffix_exits_2_before_any_bus(capsys, monkeypatch):
    monkeypatch.setenv("MODCAM_BUS", "unix:path=/nonexistent/bus")
    with pytest.raises(SystemExit) as info:
        ctl.main(["capture", "-o", "x.bmp"])
    assert info.value.code == 2
    assert "end it in .jpg, .jpeg, .png or .dng, or give --format" in capsys.readouterr().err


def test_no_bus_is_exit_1_with_a_sentence(capsys):
    assert ctl.main(["list", "--bus", "unix:path=/nonexistent/modcam-bus"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("modcamctl: cannot connect to the bus unix:path=/nonexistent/")
    assert "Traceback" not in err


def test_every_command_has_a_complete_help(capsys):
    for command in ("list", "info", "monitor", "claim", "set", "focus", "autofocus", "capture"):
        with pytest.raises(SystemExit) as info:
            parse(command, "--help")
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert "--bus BUS" in text and "MODCAM_BUS" in text and "exit status" in text, command
        assert "examples:" in text, command


def test_describe_gives_units_and_distances():
    assert describe("LensPosition", 0.8) == "0.80 dioptres (1.25 m)"
    assert describe("LensPosition", 0.0) == "0.00 dioptres (∞)"
    assert describe("ExposureTime", 8000) == "8000 µs"
    assert describe("Clients", []) == "none"
    assert describe("AeEnable", False) == "no"
