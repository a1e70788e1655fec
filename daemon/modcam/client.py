"""modcam's Python client: modcamd's D-Bus API as a few small objects.

This module owns the caller's side of the contract in dbus/*.xml: connecting
to a bus, finding modules, turning Python values into correctly typed
variants (one table of the known controls and capture options), passing a
file descriptor to CaptureToFd, and turning D-Bus errors into
`ModcamClientError` with the short documented name. modcamctl is built on it.

    from modcam.client import connect
    camera = connect().module()                 # the only (or first) module
    camera.set_controls(AeEnable=False, ExposureTime=8000)
    print(camera.capture_to_file("photo.jpg")["size"])

Calls are synchronous. Signals (`Client.watch`, `on_properties_changed`)
are delivered by a GLib main loop that the caller runs.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable

import pydbus
import pydbus.bus
from gi.repository import Gio, GLib

from modcam import names

__all__ = ["connect", "Client", "Module", "ModcamClientError", "InvalidValue",
           "CONTROL_TYPES", "OPTION_TYPES", "PROPERTIES", "FORMATS", "to_variant",
           "format_for_path", "error_from_glib"]

# D-Bus types of the controls SetControls knows (dbus/org.modcam.Camera1.Module.xml).
# The daemon checks ranges; the client only makes sure each value has its type,
# because a{sv} carries no schema and a 1 sent as `x` is not the `d` expected.
CONTROL_TYPES = {
    "AeEnable": "b", "ExposureTime": "i", "AnalogueGain": "d", "AwbEnable": "b",
    "ColourGains": "ad", "LensPosition": "d", "AfMode": "s", "Aperture": "d",
    "ReadoutMode": "s",
}
# Capture options besides the per-shot controls.
OPTION_TYPES = {"formats": "as", "format": "s", "readout_mode": "s", "quality": "u"}
FORMATS = ("jpeg", "png", "dng")
_SUFFIXES = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".dng": "dng"}

# Module properties in the contract's order; each is also a snake_case attribute.
PROPERTIES = (
    "Serial", "Model", "Firmware", "State", "StateReason", "Sensor", "Lens", "ReadoutMode",
    "FocusMode", "LensPosition", "Aperture", "ExposureTime", "AnalogueGain", "AeEnable",
    "AwbEnable", "ColourGains", "Temperature", "PowerDraw", "IdleTimeout", "Clients",
    "FramesReceived", "FramesDropped", "FramesCorrupt",
)

CALL_TIMEOUT = 25.0      # plain calls: the daemon never blocks its loop
CLAIM_TIMEOUT = 60.0     # Claim replies once the module has booted (about 2 s)
# Boot (2 s) + a 100 MP frame through the ISP + the write, on a slow board.
CAPTURE_TIMEOUT = 120.0

_PROPS_IFACE = "org.freedesktop.DBus.Properties"
_NOT_RUNNING = ("org.freedesktop.DBus.Error.ServiceUnknown",
                "org.freedesktop.DBus.Error.NameHasNoOwner")
_GONE = ("org.freedesktop.DBus.Error.UnknownObject", "org.freedesktop.DBus.Error.UnknownMethod",
         "org.freedesktop.DBus.Error.UnknownInterface")


class ModcamClientError(Exception):
    """A failed call: `.name` is the short error name ("Busy", "NotReady"...,
    or "NotRunning"/"NoBus" on the client's side), `str()` the daemon's sentence."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name
        self.message = message

    @property
    def documented(self) -> bool:
        """True for the daemon's seven documented errors (org.modcam.Camera1.Error.*)."""
        return self.name in names.ERRORS


class InvalidValue(ModcamClientError, ValueError):
    """A value refused before the call: unknown key, or the wrong Python type."""

    def __init__(self, message: str):
        super().__init__("InvalidArgument", message)


def to_variant(key: str, value: Any) -> GLib.Variant:
    """`value` as the GLib.Variant the contract expects for control or option `key`."""
    signature = CONTROL_TYPES.get(key) or OPTION_TYPES.get(key)
    if signature is None:
        known = ", ".join(sorted(CONTROL_TYPES) + sorted(OPTION_TYPES))
        raise InvalidValue(f"{key} is not a control or capture option (known: {known})")
    return GLib.Variant(signature, _coerce(key, signature, value))


def _coerce(key: str, signature: str, value: Any) -> Any:
    if signature == "b":
        if isinstance(value, bool):
            return value
        raise InvalidValue(f"{key} takes True or False, not {value!r}")
    if signature in ("i", "u"):
        # bool is an int in Python, but never what a caller means here.
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise InvalidValue(f"{key} takes an integer, not {value!r}")
        low, high = (-2**31, 2**31 - 1) if signature == "i" else (0, 2**32 - 1)
        if not low <= int(value) <= high:
            raise InvalidValue(f"{key} {value} does not fit the contract's "
                               f"{'32-bit' if signature == 'i' else 'unsigned 32-bit'} integer")
        return int(value)
    if signature == "d":
        if not isinstance(value, numbers.Real) or isinstance(value, bool) \
                or not math.isfinite(value):
            raise InvalidValue(f"{key} takes a finite number, not {value!r}")
        return float(value)
    if signature == "s":
        if not isinstance(value, str):
            raise InvalidValue(f"{key} takes a string, not {value!r}")
        return value
    if signature == "as":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise InvalidValue(f"{key} takes a list of strings, not {value!r}")
        return list(items)
    if signature == "ad":     # ColourGains: (red, blue), as libcamera
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
            raise InvalidValue(f"{key} takes two numbers (red, blue), not {value!r}")
        return [_coerce(key, "d", v) for v in value]
    raise AssertionError(f"no conversion for signature {signature}")


def format_for_path(path: str | os.PathLike) -> str | None:
    """The picture format a file name asks for by its suffix, or None."""
    return _SUFFIXES.get(Path(path).suffix.lower())


def error_from_glib(err: GLib.Error, bus_label: str = "the system bus",
                    timeout: float | None = None) -> ModcamClientError:
    """A ModcamClientError for a GLib.Error raised by a D-Bus call."""
    remote = _remote_name(err)
    message = err.message
    if remote:
        # Gio.DBusError.strip_remote_error() edits the C error, not the copy
        # PyGObject hands us, so the "GDBus.Error:NAME: " prefix is cut here.
        prefix = f"GDBus.Error:{remote}: "
        message = message[len(prefix):] if message.startswith(prefix) else message
        if remote.startswith(names.ERROR_PREFIX):
            return ModcamClientError(remote[len(names.ERROR_PREFIX):], message)
        if remote in _NOT_RUNNING:
            return ModcamClientError("NotRunning", f"modcamd is not running on {bus_label} "
                                                   f"({names.BUS_NAME} has no owner)")
        if remote == "org.freedesktop.DBus.Error.AccessDenied":
            return ModcamClientError("PermissionDenied", message)
        if remote == "org.freedesktop.DBus.Error.NoReply":
            return ModcamClientError("Failed", "modcamd left the bus before answering")
        return ModcamClientError(remote.rsplit(".", 1)[-1], message)
    if err.matches(Gio.io_error_quark(), Gio.IOErrorEnum.TIMED_OUT):
        wait = f" within {timeout:g} s" if timeout else ""
        return ModcamClientError("Timeout", f"modcamd did not answer{wait}")
    if err.matches(Gio.io_error_quark(), Gio.IOErrorEnum.CANCELLED):
        return ModcamClientError("Cancelled", "the call was cancelled")
    if err.matches(Gio.io_error_quark(), Gio.IOErrorEnum.CLOSED):
        return ModcamClientError("NoBus", f"the connection to {bus_label} is closed")
    return ModcamClientError("Failed", message)


def _remote_name(err: GLib.Error) -> str | None:
    return Gio.DBusError.get_remote_error(err) if Gio.DBusError.is_remote_error(err) else None


def _removed(path: str) -> ModcamClientError:
    return ModcamClientError("Removed", f"the module at {path} is no longer attached")


def connect(bus: str | None = None) -> "Client":
    """A Client on `bus`: "system", "session" or a D-Bus address; default
    $MODCAM_BUS, else "system". Raises ModcamClientError("NotRunning") when
    modcamd does not own org.modcam.Camera1 there."""
    bus = bus or os.environ.get("MODCAM_BUS") or "system"
    # An address's guid=... part only makes messages longer.
    label = {"system": "the system bus", "session": "the session bus"}.get(
        bus, "the bus " + re.sub(r",guid=[0-9a-f]+", "", bus))
    try:
        if bus == "system":
            dbus = pydbus.SystemBus()
        elif bus == "session":
            dbus = pydbus.SessionBus()
        else:
            dbus = pydbus.bus.connect(bus)
    except GLib.Error as err:
        raise ModcamClientError("NoBus", f"cannot connect to {label}: {err.message}") from None
    owns = bus not in ("system", "session")
    try:
        return Client(dbus, label, owns_connection=owns)
    except ModcamClientError:
        if owns:                      # a private connection would otherwise leak
            dbus.con.close_sync(None)
        raise


class Client:
    """modcamd's manager object (/org/modcam/Camera1) on one bus connection."""

    def __init__(self, bus, bus_label: str = "the system bus", owns_connection: bool = False):
        self.bus = bus                      # pydbus Bus; bus.con is its Gio.DBusConnection
        self.bus_label = bus_label
        self._owns_connection = owns_connection
        with self.errors():
            self._manager = bus.get(names.BUS_NAME, names.MANAGER_PATH,
                                    timeout=CALL_TIMEOUT)[names.MANAGER_INTERFACE]

    @contextlib.contextmanager
    def errors(self, module_path: str | None = None, timeout: float | None = None):
        """Turn GLib.Error from the calls inside into ModcamClientError."""
        try:
            yield
        except GLib.Error as err:
            error = error_from_glib(err, self.bus_label, timeout)
            if module_path and _remote_name(err) in _GONE:
                error = _removed(module_path)   # the object went with the module
            raise error from None
        except KeyError:
            # pydbus says KeyError when an object has no interfaces left.
            if module_path is None:
                raise
            raise _removed(module_path) from None

    @property
    def version(self) -> str:
        with self.errors():
            return self._manager.Version

    def modules(self) -> list["Module"]:
        """The attached modules, in the order they arrived."""
        with self.errors():
            paths = self._manager.GetModules(timeout=CALL_TIMEOUT)
        return [Module(self, path) for path in paths]

    def module(self, serial_or_path: str | None = None) -> "Module":
        """The module with this serial or object path; None: the only (or first) one."""
        modules = self.modules()
        if not modules:
            raise ModcamClientError("NotFound", "no camera module is attached to modcamd")
        if serial_or_path is None:
            return modules[0]
        by_path = serial_or_path.startswith("/")
        for module in modules:
            if serial_or_path == (module.path if by_path else module.serial):
                return module
        attached = ", ".join(m.serial for m in modules)
        raise ModcamClientError("NotFound", f"no module {serial_or_path} is attached "
                                            f"(attached: {attached})")

    def watch(self, on_added: Callable[["Module"], None] | None = None,
              on_removed: Callable[[str], None] | None = None) -> "_Subscriptions":
        """Call on_added(Module) / on_removed(object path) as modules come and go
        (needs a running GLib main loop). Returns an object with unsubscribe()."""
        subs = _Subscriptions()
        if on_added:
            subs.append(self._manager.ModuleAdded.connect(
                lambda path: on_added(Module(self, path))))
        if on_removed:
            subs.append(self._manager.ModuleRemoved.connect(on_removed))
        return subs

    def watch_properties(self, callback: Callable[[str, dict, list], None]):
        """callback(object path, changed, invalidated) for every module's
        PropertiesChanged, including modules plugged later."""
        def fired(_sender, path, _iface, _signal, params):
            iface, changed, invalidated = params
            if iface == names.MODULE_INTERFACE:
                callback(path, changed, invalidated)
        return self.bus.subscribe(sender=names.BUS_NAME, iface=_PROPS_IFACE,
                                  signal="PropertiesChanged", arg0=names.MODULE_INTERFACE,
                                  signal_fired=fired)

    def close(self) -> None:
        """Close a connection opened by address (the shared system/session ones stay)."""
        if self._owns_connection and not self.bus.con.is_closed():
            self.bus.con.close_sync(None)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _Subscriptions(list):
    def unsubscribe(self) -> None:
        while self:
            self.pop().unsubscribe()


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Module:
    """One attached module (/org/modcam/Camera1/modules/ID). Each property of
    the contract is an attribute in snake_case (serial, lens_position,
    frames_received...), read live from the daemon on every access."""

    def __init__(self, client: Client, path: str):
        self.client = client
        self.path = path
        self._proxy = None

    def _iface(self, name: str = names.MODULE_INTERFACE):
        # Introspected on first use: a Module is cheap until it is used.
        if self._proxy is None:
            with self.client.errors(self.path):
                self._proxy = self.client.bus.get(names.BUS_NAME, self.path,
                                                  timeout=CALL_TIMEOUT)
        return self._proxy[name]

    def get(self, name: str) -> Any:
        """One property by its D-Bus name."""
        props = self._iface(_PROPS_IFACE)
        with self.client.errors(self.path):
            return props.Get(names.MODULE_INTERFACE, name, timeout=CALL_TIMEOUT)

    def properties(self) -> dict[str, Any]:
        """Every property, by D-Bus name, in one round trip."""
        props = self._iface(_PROPS_IFACE)
        with self.client.errors(self.path):
            return props.GetAll(names.MODULE_INTERFACE, timeout=CALL_TIMEOUT)

    def _call(self, method: str, *args, timeout: float = CALL_TIMEOUT):
        iface = self._iface()
        with self.client.errors(self.path, timeout):
            return getattr(iface, method)(*args, timeout=timeout)

    def claim(self) -> None:
        """Hold the module awake; returns once it is ready (after its boot)."""
        self._call("Claim", timeout=CLAIM_TIMEOUT)

    def release(self) -> None:
        """Drop one claim of this connection's."""
        self._call("Release")

    def set_controls(self, **controls: Any) -> None:
        """SetControls with libcamera's names, e.g. set_controls(AeEnable=False,
        ExposureTime=8000, ColourGains=(1.8, 1.5)). All or nothing."""
        self._call("SetControls", _options(controls))

    def autofocus(self) -> dict:
        """One contrast-detect AF cycle: {position, focus_measure, frames, success}."""
        return self._call("AutoFocus", timeout=CAPTURE_TIMEOUT)

    def capture(self, formats=("jpeg",), readout_mode: str | None = None,
                quality: int | None = None, **controls: Any) -> dict:
        """One still into the daemon's capture directory: {paths, sizes, metadata...}."""
        options = _options(controls, formats=formats, readout_mode=readout_mode,
                           quality=quality)
        return self._call("Capture", options, timeout=CAPTURE_TIMEOUT)

    def capture_to_fd(self, fd: int, format: str = "jpeg", readout_mode: str | None = None,
                      quality: int | None = None, cancellable: Gio.Cancellable | None = None,
                      **controls: Any) -> dict:
        """One still written by the daemon into `fd` (open for writing): {size, metadata...}.
        `cancellable` stops waiting for the reply (the daemon may still write)."""
        options = _options(controls, format=format, readout_mode=readout_mode, quality=quality)
        # pydbus cannot pass file descriptors; Gio can. The fd travels out of
        # band in a UnixFDList, and the `h` argument is its index there.
        fd_list = Gio.UnixFDList.new()
        fd_list.append(fd)
        with self.client.errors(self.path, CAPTURE_TIMEOUT):
            reply, _ = self.client.bus.con.call_with_unix_fd_list_sync(
                names.BUS_NAME, self.path, names.MODULE_INTERFACE, "CaptureToFd",
                GLib.Variant("(ha{sv})", (0, options)), GLib.VariantType.new("(a{sv})"),
                Gio.DBusCallFlags.NONE, int(CAPTURE_TIMEOUT * 1000), fd_list, cancellable)
        return reply.unpack()[0]

    def capture_to_file(self, path: str | os.PathLike, format: str | None = None,
                        readout_mode: str | None = None, quality: int | None = None,
                        cancellable: Gio.Cancellable | None = None, **controls: Any) -> dict:
        """One still into the caller's own file `path` (format from its suffix
        unless given). The file appears only when the capture succeeded."""
        path = Path(path)
        format = format or format_for_path(path)
        if format is None:
            raise InvalidValue(f"cannot tell the format from the name {path.name}: "
                               f"end it in .jpg, .png or .dng, or name the format")
        # A hidden temporary beside the target, renamed on success: a failed or
        # interrupted capture leaves neither an empty file nor a half picture.
        fd, tmp = _create_beside(path)
        try:
            try:
                result = self.capture_to_fd(fd, format, readout_mode, quality, cancellable,
                                            **controls)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return dict(result, path=str(path))

    def on_properties_changed(self, callback: Callable[[dict, list], None]):
        """callback(changed {D-Bus name: value}, invalidated names) on every
        PropertiesChanged of this module (needs a GLib main loop)."""
        def fired(_sender, _path, _iface, _signal, params):
            iface, changed, invalidated = params
            if iface == names.MODULE_INTERFACE:
                callback(changed, invalidated)
        return self.client.bus.subscribe(sender=names.BUS_NAME, object=self.path,
                                         iface=_PROPS_IFACE, signal="PropertiesChanged",
                                         signal_fired=fired)

    def __eq__(self, other) -> bool:
        return isinstance(other, Module) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"<modcam Module {self.path}>"


def _options(controls: dict, **options) -> dict[str, GLib.Variant]:
    """Controls (refusing unknown names) plus the options that are not None, as variants."""
    unknown = sorted(set(controls) - set(CONTROL_TYPES))
    if unknown:
        raise InvalidValue(f"unknown control {', '.join(unknown)} "
                           f"(known: {', '.join(sorted(CONTROL_TYPES))})")
    merged = {k: v for k, v in options.items() if v is not None}
    merged.update(controls)
    return {k: to_variant(k, v) for k, v in merged.items()}


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new file next to `path`, open write-only. os.open with mode 0o666 (not
    mkstemp's 0600) so that the umask decides, as for any file a tool creates."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as exc:        # name the caller's file, not the temporary one
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    raise FileExistsError(f"no free temporary name beside {path}")


def _make_property(dbus_name: str) -> property:
    return property(lambda self: self.get(dbus_name),
                    doc=f"The {dbus_name} property, read live.")


for _name in PROPERTIES:
    setattr(Module, _snake(_name), _make_property(_name))
