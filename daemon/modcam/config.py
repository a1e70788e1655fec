"""modcamd's configuration: a TOML file with documented defaults, plus
command-line overrides, parsed once at start into a frozen Config.

A bad file stops the start with one sentence naming the file, the key and
what was expected; unknown keys are errors too (a typo must not be ignored).

    # /etc/modcam/modcamd.toml (every key optional; these are the defaults)
    idle_timeout = 30          # s without claim or work before a module is powered off
    boot_timeout = 10          # s a module may take to become ready
    capture_dir = "/var/lib/modcam/captures"
    bus = "system"             # "system", "session", or a D-Bus address
    log_level = "info"         # "debug", "info", "warning", "error"
    camera_group = "camera"    # besides root and modcamd's own user, who may operate cameras
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

DEFAULT_PATH = Path("/etc/modcam/modcamd.toml")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class Config:
    idle_timeout: float = 30.0
    boot_timeout: float = 10.0
    capture_dir: Path = Path("/var/lib/modcam/captures")
    bus: str = "system"
    log_level: str = "info"
    camera_group: str = "camera"


def _seconds(where: str, key: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be a number of seconds, not {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}: {key} = {value} is outside {lo:g}..{hi:g} s")
    return float(value)


def _string(where: str, key: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string, not {value!r}")
    return value


def _check(where: str, values: dict) -> Config:
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    out = {}
    if "idle_timeout" in values:
        out["idle_timeout"] = _seconds(where, "idle_timeout", values["idle_timeout"], 1, 86400)
    if "boot_timeout" in values:
        out["boot_timeout"] = _seconds(where, "boot_timeout", values["boot_timeout"], 0.5, 600)
    if "capture_dir" in values:
        path = Path(_string(where, "capture_dir", values["capture_dir"]))
        if not path.is_absolute():
            raise ConfigError(f"{where}: capture_dir must be an absolute path, not {str(path)!r}")
        out["capture_dir"] = path
    if "bus" in values:
        bus = _string(where, "bus", values["bus"])
        if bus not in ("system", "session") and "=" not in bus:
            raise ConfigError(f"{where}: bus must be 'system', 'session' or a D-Bus address "
                              f"such as 'unix:path=/run/bus', not {bus!r}")
        out["bus"] = bus
    if "log_level" in values:
        level = _string(where, "log_level", values["log_level"]).lower()
        if level not in LOG_LEVELS:
            raise ConfigError(f"{where}: log_level must be one of {', '.join(LOG_LEVELS)}, "
                              f"not {values['log_level']!r}")
        out["log_level"] = level
    if "camera_group" in values:
        group = values["camera_group"]
        if not isinstance(group, str) or not (group == "" or group.replace("-", "_").replace(
                ".", "_").isidentifier()):
            raise ConfigError(f"{where}: camera_group must be a group name (or \"\" for root "
                              f"and modcamd's user only), not {group!r}")
        out["camera_group"] = group
    return Config(**out)


def load(path: Path | None = None, overrides: dict | None = None) -> Config:
    """The configuration from `path` (DEFAULT_PATH if None; a missing default
    file means all defaults, a missing named file is an error), then the
    command line's `overrides` (keys as in the file; None values are ignored)."""
    values: dict = {}
    where = str(path or DEFAULT_PATH)
    if path is not None or DEFAULT_PATH.exists():
        try:
            with open(path or DEFAULT_PATH, "rb") as f:
                values = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such configuration file") from None
        except OSError as exc:
            raise ConfigError(f"{where}: cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: is not valid TOML: {exc}") from None
    config = _check(where, values)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        checked = _check("command line", given)
        config = dataclasses.replace(config, **{k: getattr(checked, k) for k in given})
    return config
