"""Controls: SetControls' names and values, checked once at the edge.

D-Bus callers use libcamera's control names where one exists (AeEnable,
ExposureTime, AnalogueGain, AwbEnable, ColourGains, LensPosition, AfMode)
plus Aperture and ReadoutMode. `parse()` checks a whole request against the
module's ranges before anything is applied (all or nothing) and raises
InvalidArgument naming the key and the limit; `module_args()` turns the
module-side ones into the control protocol's names (docs/control-protocol.md).

Interplay, as in libcamera: setting ExposureTime or AnalogueGain turns AeEnable
off, setting ColourGains turns AwbEnable off, and LensPosition only moves the
lens in manual focus (AfMode "manual" in the same request, or already).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from modcam.errors import InvalidArgument
from modcam.link import protocol

AF_MODES = ("manual", "auto", "continuous")
MODULE_KEYS = {"ExposureTime": "exposure_us", "AnalogueGain": "analogue_gain",
               "LensPosition": "lens_position", "Aperture": "aperture",
               "ReadoutMode": "readout_mode"}
NAMES = ("AeEnable", "ExposureTime", "AnalogueGain", "AwbEnable", "ColourGains", "LensPosition",
         "AfMode", "Aperture", "ReadoutMode")
COLOUR_GAIN_MAX = 32.0


@dataclass(frozen=True)
class Limits:
    """What this module accepts (its identify reply, else the protocol's table)."""
    exposure_us: tuple = (30, 1_000_000)
    analogue_gain: tuple = (1.0, 16.0)
    aperture: tuple = (1.4, 11.0)
    lens_position: tuple = (0.0, protocol.LENS_POSITION_MAX)
    readout_modes: tuple = protocol.READOUT_MODES

    @classmethod
    def from_identify(cls, identity: dict | None) -> "Limits":
        lens = (identity or {}).get("lens") or {}
        modes = tuple((identity or {}).get("readout_modes") or protocol.READOUT_MODES)
        base = cls()
        try:
            aperture = (float(lens["f_number_min"]), float(lens["f_number_max"]))
        except (KeyError, TypeError, ValueError):
            aperture = base.aperture
        try:
            lens_position = (0.0, float(lens["lens_position_max"]))
        except (KeyError, TypeError, ValueError):
            lens_position = base.lens_position
        return cls(aperture=aperture, lens_position=lens_position, readout_modes=modes)


def _num(x: float) -> str:
    return f"{x:g}"


def _bool(key, value) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{key} must be a boolean, not {value!r}")
    return value


def _number(key, value, lo, hi, unit="", integer=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if integer else "a number"
        raise InvalidArgument(f"{key} must be {kind}{unit and ' (' + unit.strip() + ')'}, "
                              f"not {value!r}")
    if integer and not isinstance(value, int):
        raise InvalidArgument(f"{key} must be an integer{' (' + unit.strip() + ')' if unit else ''}, "
                              f"not {value!r}")
    if not math.isfinite(value):
        raise InvalidArgument(f"{key} must be finite, not {value!r}")
    if value < lo:
        raise InvalidArgument(f"{key} {_num(value)} is below the minimum {_num(lo)}{unit}")
    if value > hi:
        raise InvalidArgument(f"{key} {_num(value)} is above the maximum {_num(hi)}{unit}")
    return value


def _choice(key, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgument(f"{key} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _gains(key, value):
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InvalidArgument(f"{key} must be two numbers (red, blue), not {value!r}")
    return tuple(float(_number(f"{key}[{i}]", v, 1e-3, COLOUR_GAIN_MAX)) for i, v in
                 enumerate(value))


def parse(values: dict, limits: Limits, focus_mode: str = "manual") -> dict:
    """Checked controls {D-Bus name: python value}; InvalidArgument on the first
    bad key (unknown name, wrong type, out of range, or a conflict)."""
    if not isinstance(values, dict):
        raise InvalidArgument(f"controls must be a dictionary, not {type(values).__name__}")
    out = {}
    for key, value in values.items():
        if key == "AeEnable" or key == "AwbEnable":
            out[key] = _bool(key, value)
        elif key == "ExposureTime":
            out[key] = int(_number(key, value, *limits.exposure_us, unit=" µs", integer=True))
        elif key == "AnalogueGain":
            out[key] = float(_number(key, value, *limits.analogue_gain))
        elif key == "Aperture":
            out[key] = float(_number(key, value, *limits.aperture))
        elif key == "LensPosition":
            out[key] = float(_number(key, value, *limits.lens_position, unit=" dioptres"))
        elif key == "ColourGains":
            out[key] = _gains(key, value)
        elif key == "AfMode":
            out[key] = _choice(key, value, AF_MODES)
        elif key == "ReadoutMode":
            out[key] = _choice(key, value, limits.readout_modes)
        else:
            raise InvalidArgument(f"unknown control {key!r} (known: {', '.join(NAMES)})")
    _check_conflicts(out, focus_mode)
    return out


def _check_conflicts(c: dict, focus_mode: str) -> None:
    if c.get("AeEnable") is True and ("ExposureTime" in c or "AnalogueGain" in c):
        raise InvalidArgument("ExposureTime and AnalogueGain cannot be set with AeEnable true: "
                              "auto-exposure chooses them")
    if c.get("AwbEnable") is True and "ColourGains" in c:
        raise InvalidArgument("ColourGains cannot be set with AwbEnable true: auto white "
                              "balance chooses them")
    if "LensPosition" in c and c.get("AfMode", focus_mode) != "manual":
        raise InvalidArgument(f"LensPosition can only be set in manual focus (FocusMode is "
                              f"{c.get('AfMode', focus_mode)}); set AfMode to manual with it")


def implied(c: dict) -> dict:
    """The request plus what it implies: manual exposure or colour turns the
    automatic one off."""
    out = dict(c)
    if "ExposureTime" in c or "AnalogueGain" in c:
        out.setdefault("AeEnable", False)
    if "ColourGains" in c:
        out.setdefault("AwbEnable", False)
    return out


def module_args(c: dict) -> dict:
    """The controls the module itself applies, in the control protocol's names."""
    return {MODULE_KEYS[k]: v for k, v in c.items() if k in MODULE_KEYS}
