"""The EEPROM calibration blob: round trip, every decode failure, the virtual unit's truth."""
import dataclasses
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modcam import calibration as cal
from modcam.virtual import colour, optics
from modcam.virtual import sensor_model as sm

SERIAL = "MC-TEST-0001"


@pytest.fixture(scope="module")
def unit():
    return cal.virtual_calibration(SERIAL)


@pytest.fixture(scope="module")
def blob(unit):
    return cal.encode(unit)


def reseal(data: bytes) -> bytes:
    """Fix the length field and the CRC after an edit, so only the edit is wrong."""
    data = bytearray(data)
    data[12:16] = struct.pack("<I", len(data))
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    return bytes(data)


def offset_of_defect_count(unit) -> int:
    cells = 4 * unit.grid_rows * unit.grid_cols
    serial = len(unit.serial.encode())
    return 16 + 8 + 36 + 1 + serial + 4 + len(unit.shading) * 4 * (1 + cells)


def test_round_trip(unit, blob):
    assert cal.decode(blob) == unit
    assert cal.encode(cal.decode(blob)) == blob
    assert blob[:8] == b"MODCAMCL" and len(blob) == struct.unpack_from("<I", blob, 12)[0]


def test_calibration_is_frozen(unit):
    with pytest.raises(dataclasses.FrozenInstanceError):
        unit.black_level = 0


def decode_error(data) -> str:
    with pytest.raises(cal.CalibrationError) as info:
        cal.decode(data)
    message = str(info.value)
    assert message[0].islower() or message[0].isupper()
    assert message.endswith(tuple("abcdefghijklmnopqrstuvwxyz0123456789)'\""))
    return message


def test_wrong_magic(blob):
    assert "not a modcam calibration" in decode_error(reseal(b"XODCAMCL" + blob[8:]))


def test_unsupported_version(blob):
    edited = blob[:8] + struct.pack("<H", 2) + blob[10:]
    assert "version 2 is not supported" in decode_error(reseal(edited))


def test_checksum_mismatch(blob):
    edited = bytearray(blob)
    edited[40] ^= 0x01
    assert "checksum mismatch" in decode_error(bytes(edited))


@pytest.mark.parametrize("size", [0, 1, 19, 20, 100, -1])
def test_truncated(blob, size):
    assert "truncated" in decode_error(blob[:size])


def test_trailing_bytes(blob):
    assert "after its declared end" in decode_error(blob + b"\xff" * 16)


def test_absurd_length_field(blob):
    edited = blob[:12] + struct.pack("<I", 0xFFFFFFF0) + blob[16:]
    assert "length field" in decode_error(edited)


def test_absurd_defect_count(unit, blob):
    at = offset_of_defect_count(unit)
    assert struct.unpack_from("<I", blob, at)[0] == len(unit.defects)
    edited = blob[:at] + struct.pack("<I", 0x7FFFFFFF) + blob[at + 4:]
    assert "defect count 2147483647" in decode_error(reseal(edited))


def test_short_defect_count_leaves_bytes(unit, blob):
    at = offset_of_defect_count(unit)
    edited = blob[:at] + struct.pack("<I", len(unit.defects) - 1) + blob[at + 4:]
    assert "unexpected bytes" in decode_error(reseal(edited))


@pytest.mark.parametrize("field,value,expected", [
    ("grid", (200, 13, 4, 0), "shading grid 200x13"),
    ("grid", (17, 13, 0, 0), "shading grid count 0"),
    ("grid", (17, 13, 200, 0), "shading grid count 200"),
    ("grid", (17, 13, 5, 0), "ends inside the shading grid 4"),
    ("sensor", (11552, 8672, 4095, 4095), "black level 4095"),
])
def test_bad_fields(unit, blob, field, value, expected):
    at = 16 if field == "sensor" else 16 + 8 + 36 + 1 + len(unit.serial)
    edited = blob[:at] + struct.pack("<4H" if field == "sensor" else "<4B", *value) + blob[at + (8 if field == "sensor" else 4):]
    assert expected in decode_error(reseal(edited))


def test_defect_outside_sensor_and_unknown_kind(unit, blob):
    first = offset_of_defect_count(unit) + 4
    outside = blob[:first] + struct.pack("<HHB", 60000, 10, 1) + blob[first + 5:]
    assert "outside the 11552x8672 sensor" in decode_error(reseal(outside))
    kind = blob[:first + 4] + b"\x07" + blob[first + 5:]
    assert "unknown kind 7" in decode_error(reseal(kind))


def test_bad_serial(unit, blob):
    at = 16 + 8 + 36
    utf8 = blob[:at + 1] + b"\xff" + blob[at + 2:]
    assert "UTF-8" in decode_error(reseal(utf8))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_corruption_is_a_calibration_error(blob, data):
    """Random edits (with or without a fixed-up CRC) give a clean error or a valid result."""
    edited = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        edited[data.draw(st.integers(0, len(edited) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(edited)))
    candidate = bytes(edited[:cut]) if data.draw(st.booleans()) else bytes(edited)
    if data.draw(st.booleans()) and len(candidate) >= 20:
        candidate = reseal(candidate)
    try:
        cal.decode(candidate)
    except cal.CalibrationError:
        pass


def test_encode_refuses_what_does_not_fit(unit):
    with pytest.raises(cal.CalibrationError, match="serial"):
        cal.encode(dataclasses.replace(unit, serial=""))
    with pytest.raises(cal.CalibrationError, match="EEPROM format"):
        cal.encode(dataclasses.replace(unit, black_level=70000))
    with pytest.raises(cal.CalibrationError, match="kinds"):
        cal.encode(dataclasses.replace(unit, defects=(cal.DefectPixel(1, 1, "warm"),)))


# --- the virtual unit's calibration is the model's truth ------------------------------

def test_virtual_calibration_matches_the_model(unit):
    assert unit.black_level == 256 and unit.white_level == 4095
    assert [(d.x, d.y, d.kind) for d in unit.defects] == \
           [(d.x, d.y, d.kind) for d in sm.defect_pixels(SERIAL)]
    np.testing.assert_allclose(unit.matrix(), colour.native_to_srgb(SERIAL), rtol=1e-6, atol=1e-6)
    assert [g.f_number for g in unit.shading] == pytest.approx([1.4, 2.8, 5.6, 11.0])


def test_shading_gains_are_exact_between_stored_apertures(unit):
    """Interpolating in 1/N^2 reproduces the lens at an aperture that is not stored."""
    shading = optics.LensShading.from_serial(SERIAL)
    xs = np.linspace(-sm.HALF_WIDTH_NORM, sm.HALF_WIDTH_NORM, unit.grid_cols)[None, :]
    ys = np.linspace(-sm.HALF_HEIGHT_NORM, sm.HALF_HEIGHT_NORM, unit.grid_rows)[:, None]
    for f_number in (1.4, 2.0, 4.0, 8.0):
        gains = unit.shading_gains(f_number)
        for c, native in enumerate(sm.CHANNEL_TO_NATIVE):
            truth = 1.0 / shading.relative_illumination(xs, ys, f_number, native)
            np.testing.assert_allclose(gains[c], truth, rtol=1e-5)
    g = unit.shading_gains(2.0)
    assert g[:, 6, 8] == pytest.approx(1.0) and (g[:, 0, 0] > 1.3).all()
    np.testing.assert_allclose(g, g[:, ::-1, ::-1], rtol=1e-6)      # symmetric


def test_colour_matrices_differ_slightly_between_serials():
    a, b = colour.camera_from_srgb("MC-A"), colour.camera_from_srgb("MC-B")
    assert not np.allclose(a, b)
    relative = np.abs(a - b).max() / np.abs(colour.CAMERA_FROM_SRGB_BASE).max()
    assert 1e-3 < relative < 0.06
    np.testing.assert_array_equal(a, colour.camera_from_srgb("MC-A"))


def test_calibrated_units_agree_on_colour():
    """Two units see the same chart differently; their calibrations bring them together."""
    from modcam.virtual.scene import COLORCHECKER_LINEAR_SRGB as chart
    results = []
    for serial in ("MC-A", "MC-B"):
        native = colour.scene_to_native(chart, serial, "D65")
        results.append((native, native @ cal.virtual_calibration(serial).matrix().T))
    assert np.abs(results[0][0] - results[1][0]).max() > 1e-3
    np.testing.assert_allclose(results[0][1], chart, atol=1e-5)
    np.testing.assert_allclose(results[1][1], chart, atol=1e-5)


def test_illuminant_white_points():
    d65 = colour.white_native(SERIAL, "D65")
    warm = colour.white_native(SERIAL, 3000)
    assert d65[1] == pytest.approx(1.0, rel=0.05)
    assert 0.3 < d65[0] / d65[1] < 0.5 and 0.5 < d65[2] / d65[1] < 0.7   # raw daylight
    assert warm[0] / warm[2] > 2.5 * d65[0] / d65[2]                      # tungsten: red, no blue
    np.testing.assert_allclose(colour.illuminant_srgb("D65"), 1.0, atol=1e-5)
    assert colour.illuminant_xy(3000) == pytest.approx((0.4369, 0.4041), abs=2e-3)
    assert colour.illuminant_xy(6504) == pytest.approx(colour.illuminant_xy("D65"), abs=1e-3)
    with pytest.raises(ValueError, match="illuminant"):
        colour.illuminant_xy("F11")
