"""CaptureOptions: the options of Capture() and CaptureToFd(), checked once at the edge.

Owns the `a{sv}` options of the two capture methods of
org.modcam.Camera1.Module (dbus/org.modcam.Camera1.Module.xml): their names,
types, defaults and the rule that CaptureToFd writes exactly one format.
The bus adapter hands the unpacked dictionary to `CaptureOptions.from_dbus`
and the rest of the daemon only ever sees the frozen result, in the
picamera2 spirit: unknown keys and wrong types are refused with
InvalidArgument, a sentence that names the key and what was expected.

    key            Capture                     CaptureToFd
    formats        as: jpeg, png, dng,         as: one entry only
                   one or more, no repeats     (accepted as an alias of format)
    format         -                           s: jpeg, png or dng
    readout_mode   s: full, binned, zoom2x     (same)
    quality        u: 1..100, JPEG only        (same)
    anything else  a control for this shot only, as SetControls takes it

Defaults: formats ("jpeg",), readout_mode None (the module's current one),
quality 90. Controls are not checked here but by the callable the daemon
passes (its SetControls validator, modcam.controls.parse bound to the
module's limits); without one, any other key is an unknown option.

Types are strict because D-Bus types are: a bool is not a number (Python
would let True pass as 1), a float is not a quality, a string is not a list
of formats. to_dict() is the inverse of from_dbus(): it gives back the
dictionary a caller would send.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from modcam.errors import InvalidArgument

__all__ = ["CaptureOptions", "FORMATS", "READOUT_MODES", "EXTENSIONS", "DEFAULT_QUALITY"]

FORMATS = ("jpeg", "png", "dng")
EXTENSIONS = {"jpeg": "jpg", "png": "png", "dng": "dng"}
READOUT_MODES = ("full", "binned", "zoom2x")
DEFAULT_QUALITY = 90
_CAPTURE_KEYS = ("formats", "format", "readout_mode", "quality")


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_formats(value, key: str) -> tuple:
    """A non-empty list or tuple of distinct known format names, as a tuple."""
    if not isinstance(value, (list, tuple)):
        raise InvalidArgument(f"{key} must be a list of format names ({', '.join(FORMATS)}), "
                              f"not {_describe(value)}")
    if not value:
        raise InvalidArgument(f"{key} is empty: give at least one of {', '.join(FORMATS)}")
    seen = []
    for item in value:
        _check_format(item, key)
        if item in seen:
            raise InvalidArgument(f"{key}: {item!r} is listed more than once")
        seen.append(item)
    return tuple(seen)


def _check_format(value, key: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{key}: a format is a string ({', '.join(FORMATS)}), "
                              f"not {_describe(value)}")
    if value not in FORMATS:
        raise InvalidArgument(f"{key}: unknown format {value!r} ({', '.join(FORMATS)})")
    return value


def _check_readout_mode(value):
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"readout_mode must be a string ({', '.join(READOUT_MODES)}), "
                              f"not {_describe(value)}")
    if value not in READOUT_MODES:
        raise InvalidArgument(f"readout_mode {value!r} is not one of {', '.join(READOUT_MODES)}")
    return value


def _check_quality(value) -> int:
    # D-Bus "u" arrives as int; True/False and 90.0 are caller mistakes, not qualities.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"quality must be a whole number 1..100, not {_describe(value)}")
    if not 1 <= value <= 100:
        raise InvalidArgument(f"quality {value} is outside 1..100")
    return value


@dataclass(frozen=True)
class CaptureOptions:
    """One capture's options. formats: the files to write, in this order;
    readout_mode: None for the module's current mode; quality: JPEG quality;
    controls: per-shot controls as the daemon's validator returned them."""

    formats: tuple = ("jpeg",)
    readout_mode: str | None = None
    quality: int = DEFAULT_QUALITY
    controls: dict = field(default_factory=dict)

    def __post_init__(self):
        # The same checks as from_dbus, so an object built in Python is as sound.
        object.__setattr__(self, "formats", _check_formats(self.formats, "formats"))
        _check_readout_mode(self.readout_mode)
        _check_quality(self.quality)
        if not isinstance(self.controls, dict):
            raise InvalidArgument(f"controls must be a dictionary, not "
                                  f"{type(self.controls).__name__}")
        object.__setattr__(self, "controls", dict(self.controls))

    @classmethod
    def from_dbus(cls, options: dict, *, to_fd: bool, parse_controls=None) -> "CaptureOptions":
        """Options of Capture (to_fd False) or CaptureToFd (to_fd True), values
        already unpacked from their variants. parse_controls(dict) -> dict checks
        the keys that are not capture options (raising InvalidArgument)."""
        if not isinstance(options, dict):
            raise InvalidArgument(f"options must be a dictionary (a{{sv}}), not "
                                  f"{type(options).__name__}")
        bad = [k for k in options if not isinstance(k, str)]
        if bad:
            raise InvalidArgument(f"option names must be strings, not {bad[0]!r}")
        formats = _formats(options, to_fd)
        readout_mode = _check_readout_mode(options.get("readout_mode"))
        if "readout_mode" in options and readout_mode is None:
            raise InvalidArgument("readout_mode must be a string "
                                  f"({', '.join(READOUT_MODES)}), not None")
        quality = _check_quality(options.get("quality", DEFAULT_QUALITY))
        rest = {k: v for k, v in options.items() if k not in _CAPTURE_KEYS}
        if "ReadoutMode" in rest and readout_mode is not None:
            # Two spellings of one setting: refuse rather than pick one silently.
            raise InvalidArgument("readout_mode and the ReadoutMode control both set the "
                                  "readout mode; give only one of them")
        return cls(formats, readout_mode, quality, _controls(rest, parse_controls))

    def to_dict(self) -> dict:
        """The options as a caller sends them (from_dbus(to_dict()) gives them back)."""
        out = {"formats": list(self.formats), "quality": self.quality}
        if self.readout_mode is not None:
            out["readout_mode"] = self.readout_mode
        out.update(self.controls)
        return out


def _formats(options: dict, to_fd: bool) -> tuple:
    if not to_fd:
        if "format" in options:
            raise InvalidArgument("format is CaptureToFd's option; Capture takes formats, "
                                  "a list such as ['jpeg', 'dng']")
        return _check_formats(options.get("formats", ["jpeg"]), "formats")
    if "format" in options and "formats" in options:
        raise InvalidArgument("give format or formats, not both: CaptureToFd writes one format")
    if "formats" in options:
        formats = _check_formats(options["formats"], "formats")
        if len(formats) != 1:
            raise InvalidArgument(f"formats: CaptureToFd writes exactly one format into the fd, "
                                  f"not {len(formats)} ({', '.join(formats)})")
        return formats
    return (_check_format(options.get("format", "jpeg"), "format"),)


def _controls(rest: dict, parse_controls) -> dict:
    if not rest:
        return {}
    if parse_controls is None:
        names = ", ".join(repr(k) for k in sorted(rest))
        raise InvalidArgument(f"unknown option{'s' if len(rest) > 1 else ''} {names} "
                              f"(known: {', '.join(sorted(_CAPTURE_KEYS))})")
    try:
        controls = parse_controls(dict(rest))
    except InvalidArgument:
        raise
    except ValueError as exc:   # a validator that speaks plain ValueError: same sentence
        raise InvalidArgument(str(exc)) from None
    if not isinstance(controls, dict):
        raise TypeError(f"parse_controls returned {type(controls).__name__}, not a dict")
    return controls
