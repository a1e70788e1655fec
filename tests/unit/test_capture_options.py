"""Tests for CaptureOptions (modcam.capture_options): Capture's and CaptureToFd's options.

Owns: the defaults; formats kept in the caller's order; every refusal is an
InvalidArgument (the documented D-Bus error) whose sentence names the key;
strict types (bool is not a number, a float is not a quality, a string is
not a list); CaptureToFd's one-format rule; per-shot controls go to the
caller's validator and only there; to_dict() inverts from_dbus().
"""
from dataclasses import FrozenInstanceError

import pytest

from modcam.capture_options import CaptureOptions
from modcam.errors import InvalidArgument, dbus_error


def test_defaults():
    for to_fd in (False, True):
        opts = CaptureOptions.from_dbus({}, to_fd=to_fd)
        assert opts.formats == ("jpeg",)
        assert opts.readout_mode is None
        assert opts.quality == 90
        assert opts.controls == {}
    assert CaptureOptions() == CaptureOptions.from_dbus({}, to_fd=False)


def test_capture_takes_several_formats_in_order():
    opts = CaptureOptions.from_dbus({"formats": ["dng", "jpeg", "png"], "quality": 100,
                                     "readout_mode": "zoom2x"}, to_fd=False)
    assert opts.formats == ("dng", "jpeg", "png")
    assert (opts.quality, opts.readout_mode) == (100, "zoom2x")
    assert CaptureOptions.from_dbus({"quality": 1}, to_fd=False).quality == 1


@pytest.mark.parametrize("options,message", [
    ({"formats": "jpeg"}, "formats must be a list of format names (jpeg, png, dng), "
                          "not 'jpeg' (str)"),
    ({"formats": []}, "formats is empty: give at least one of jpeg, png, dng"),
    ({"formats": ["tiff"]}, "formats: unknown format 'tiff' (jpeg, png, dng)"),
    ({"formats": ["JPEG"]}, "formats: unknown format 'JPEG' (jpeg, png, dng)"),
    ({"formats": ["jpeg", "png", "jpeg"]}, "formats: 'jpeg' is listed more than once"),
    ({"formats": [1]}, "formats: a format is a string (jpeg, png, dng), not 1 (int)"),
    ({"quality": 0}, "quality 0 is outside 1..100"),
    ({"quality": 101}, "quality 101 is outside 1..100"),
    ({"quality": 90.0}, "quality must be a whole number 1..100, not 90.0 (float)"),
    ({"quality": True}, "quality must be a whole number 1..100, not True (bool)"),
    ({"quality": "90"}, "quality must be a whole number 1..100, not '90' (str)"),
    ({"readout_mode": "half"}, "readout_mode 'half' is not one of full, binned, zoom2x"),
    ({"readout_mode": 1}, "readout_mode must be a string (full, binned, zoom2x), not 1 (int)"),
    ({"readout_mode": None}, "readout_mode must be a string"),
    ({"foo": 1}, "unknown option 'foo' (known: format, formats, quality, readout_mode)"),
    ({"foo": 1, "bar": 2}, "unknown options 'bar', 'foo'"),
    ({"format": "png"}, "format is CaptureToFd's option; Capture takes formats"),
])
def test_capture_refusals_name_the_key(options, message):
    with pytest.raises(InvalidArgument) as info:
        CaptureOptions.from_dbus(options, to_fd=False)
    assert str(info.value).startswith(message)
    # what the bus sends: the documented name and this very sentence
    assert dbus_error(info.value) == ("org.modcam.Camera1.Error.InvalidArgument", str(info.value))


def test_capture_to_fd_writes_exactly_one_format():
    assert CaptureOptions.from_dbus({"format": "dng"}, to_fd=True).formats == ("dng",)
    assert CaptureOptions.from_dbus({"formats": ["png"]}, to_fd=True).formats == ("png",)
    for options, message in (
            ({"formats": ["png", "jpeg"]}, "formats: CaptureToFd writes exactly one format "
                                           "into the fd, not 2 (png, jpeg)"),
            ({"format": "png", "formats": ["png"]}, "give format or formats, not both"),
            ({"format": ["png"]}, "format: a format is a string (jpeg, png, dng), "
                                  "not ['png'] (list)"),
            ({"format": "gif"}, "format: unknown format 'gif' (jpeg, png, dng)"),
            ({"formats": []}, "formats is empty")):
        with pytest.raises(InvalidArgument) as info:
            CaptureOptions.from_dbus(options, to_fd=True)
        assert str(info.value).startswith(message), options


def test_other_keys_go_to_the_control_validator_only():
    seen = []

    def parse_controls(values):
        seen.append(values)
        if values.get("ExposureTime") == 0:
            raise InvalidArgument("ExposureTime 0 is below the minimum 30 µs")
        return {k: (float(v) if k == "AnalogueGain" else v) for k, v in values.items()}

    opts = CaptureOptions.from_dbus({"formats": ["png"], "ExposureTime": 20000,
                                     "AnalogueGain": 2}, to_fd=False,
                                    parse_controls=parse_controls)
    assert seen == [{"ExposureTime": 20000, "AnalogueGain": 2}]   # capture keys withheld
    assert opts.controls == {"ExposureTime": 20000, "AnalogueGain": 2.0}
    assert type(opts.controls["AnalogueGain"]) is float            # the validator's value
    seen.clear()
    CaptureOptions.from_dbus({"quality": 50}, to_fd=True, parse_controls=parse_controls)
    assert seen == []                                              # nothing to check
    with pytest.raises(InvalidArgument, match="^ExposureTime 0 is below the minimum 30 µs$"):
        CaptureOptions.from_dbus({"ExposureTime": 0}, to_fd=False,
                                 parse_controls=parse_controls)


def test_a_validator_speaking_value_error_still_gives_invalid_argument():
    def parse_controls(values):
        raise ValueError("unknown control 'Zoom'")

    with pytest.raises(InvalidArgument, match="^unknown control 'Zoom'$"):
        CaptureOptions.from_dbus({"Zoom": 2.0}, to_fd=False, parse_controls=parse_controls)


def test_readout_mode_given_twice_is_refused():
    with pytest.raises(InvalidArgument, match="readout_mode and the ReadoutMode control"):
        CaptureOptions.from_dbus({"readout_mode": "full", "ReadoutMode": "binned"},
                                 to_fd=False, parse_controls=dict)
    only_control = CaptureOptions.from_dbus({"ReadoutMode": "binned"}, to_fd=False,
                                            parse_controls=dict)
    assert only_control.controls == {"ReadoutMode": "binned"}
    assert only_control.readout_mode is None


def test_options_must_be_a_dictionary_of_names():
    with pytest.raises(InvalidArgument, match=r"^options must be a dictionary \(a\{sv\}\)"):
        CaptureOptions.from_dbus([("formats", ["jpeg"])], to_fd=False)
    with pytest.raises(InvalidArgument, match="^option names must be strings, not 3"):
        CaptureOptions.from_dbus({3: "x"}, to_fd=False)


def test_to_dict_inverts_from_dbus():
    sent = {"formats": ["dng", "jpeg"], "quality": 75, "readout_mode": "binned",
            "AnalogueGain": 2.0}
    opts = CaptureOptions.from_dbus(sent, to_fd=False, parse_controls=dict)
    assert opts.to_dict() == sent
    assert CaptureOptions.from_dbus(opts.to_dict(), to_fd=False, parse_controls=dict) == opts
    fd_opts = CaptureOptions.from_dbus({"format": "png"}, to_fd=True)
    assert fd_opts.to_dict() == {"formats": ["png"], "quality": 90}
    assert CaptureOptions.from_dbus(fd_opts.to_dict(), to_fd=True) == fd_opts


def test_built_in_python_it_is_checked_and_frozen():
    assert CaptureOptions(formats=["png", "dng"]).formats == ("png", "dng")
    with pytest.raises(InvalidArgument, match="formats: unknown format 'tiff'"):
        CaptureOptions(formats=("tiff",))
    with pytest.raises(InvalidArgument, match="quality 0 is outside 1..100"):
        CaptureOptions(quality=0)
    with pytest.raises(InvalidArgument, match="controls must be a dictionary"):
        CaptureOptions(controls=[("ExposureTime", 1)])
    opts = CaptureOptions()
    with pytest.raises(FrozenInstanceError):
        opts.quality = 50
