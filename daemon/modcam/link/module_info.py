"""What udev says about a module: its identity and how to reach it.

Parsed once from a pyudev Device (docs/udev-interface.md). Properties, not
sysfs attributes, are the source for anything a `remove` needs, because the
sysfs directory is usually gone by then. Anything malformed raises
BadUevent with a sentence; the watcher logs it and carries on.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from modcam import names

_SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TEXT_RE = re.compile(r"[\x20-\x7e]{1,128}")


class BadUevent(ValueError):
    """A modcam device whose uevent or attributes cannot be used."""


@dataclass(frozen=True)
class ModuleInfo:
    serial: str
    sys_path: str
    control_path: str = ""
    vendor: str = ""
    model: str = ""
    firmware: str = ""

    @property
    def object_id(self) -> str:
        return object_id(self.serial)


def object_id(serial: str) -> str:
    """The serial made safe for an object path: [A-Za-z0-9_] only."""
    return re.sub(r"[^A-Za-z0-9_]", "_", serial)


def _attribute(device, name: str) -> str:
    try:
        value = device.attributes.asstring(name)
    except (KeyError, OSError, UnicodeDecodeError):
        return ""
    value = value.strip()
    return value if _TEXT_RE.fullmatch(value) else ""


def serial_of(device) -> str:
    """The serial from the uevent's properties (available on remove)."""
    serial = device.properties.get(names.PROP_SERIAL, "")
    if not _SERIAL_RE.fullmatch(serial or ""):
        raise BadUevent(f"{device.sys_path}: {names.PROP_SERIAL} {serial!r} is not a serial "
                        "([A-Za-z0-9][A-Za-z0-9._-]{0,63})")
    return serial


def from_device(device) -> ModuleInfo:
    """A module's identity and control path, for an add/change/coldplug."""
    props = device.properties
    if props.get(names.PROP_MODULE) != "1":
        raise BadUevent(f"{device.sys_path}: not a modcam module ({names.PROP_MODULE} is "
                        f"{props.get(names.PROP_MODULE)!r})")
    serial = serial_of(device)
    protocol = props.get(names.PROP_PROTOCOL, "")
    if protocol != str(names.PROTOCOL_VERSION):
        raise BadUevent(f"module {serial}: control protocol {protocol!r} is not supported "
                        f"(this modcamd speaks {names.PROTOCOL_VERSION})")
    control = props.get(names.PROP_CONTROL, "")
    if not control or not os.path.isabs(control) or len(control.encode()) > 107 or "\0" in control:
        raise BadUevent(f"module {serial}: {names.PROP_CONTROL} {control!r} is not an absolute "
                        "socket path of at most 107 bytes")
    return ModuleInfo(
        serial=serial, sys_path=device.sys_path, control_path=control,
        vendor=_attribute(device, names.ATTR_VENDOR) or props.get(names.PROP_ID_VENDOR, ""),
        model=_attribute(device, names.ATTR_MODEL) or props.get(names.PROP_ID_MODEL, ""),
        firmware=_attribute(device, names.ATTR_FIRMWARE) or props.get(names.PROP_ID_REVISION, ""))
