"""One object exported on the bus from its introspection, answering calls
now or later.

Gio hands each method call to `_on_call` with a GDBusMethodInvocation. The
handler gets a `Call` and its unpacked arguments; it may return a value (the
reply), a `Pending` (replied when it settles: how a Claim hides a 2 s boot
without blocking the main loop), or raise. Whatever it raises becomes one of
the documented errors through errors.dbus_error(): no traceback crosses the
bus, unexpected ones are logged with theirs. Property values are plain
Python, typed from the introspection here.
"""
from __future__ import annotations

import ctypes
import logging
import os
from typing import Any, Callable

from gi.repository import Gio, GLib

from modcam.errors import ModcamError, dbus_error
from modcam.pending import Pending

log = logging.getLogger("modcam.bus")
PROPERTIES = "org.freedesktop.DBus.Properties"


def _closure_ref_dropper():
    """GLib before 2.84 hands the method-call closure a reference to the
    invocation that nothing drops (GLib MR 4427; register_object_with_closures2
    fixes it): every call would leak its message, ~2.4 KB. Where that API is
    absent, we drop the reference ourselves once the reply is sent."""
    if hasattr(Gio.DBusConnection, "register_object_with_closures2"):
        return None
    try:
        api = ctypes.pythonapi
        api.PyCapsule_GetPointer.restype = ctypes.c_void_p
        api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        unref = ctypes.CDLL("libgobject-2.0.so.0").g_object_unref
        unref.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return lambda obj: unref(api.PyCapsule_GetPointer(obj.__gpointer__, None))


_drop_closure_ref = _closure_ref_dropper()


class Call:
    """The method call being answered: its sender, descriptors, and reply."""

    def __init__(self, invocation: Gio.DBusMethodInvocation, out_signature: str):
        self.invocation = invocation
        self.sender = invocation.get_sender() or ""
        self.method = invocation.get_method_name()
        self.out_signature = out_signature
        self.answered = False

    def take_fds(self) -> list[int]:
        """The descriptors sent with the call, now ours to close."""
        fd_list = self.invocation.get_message().get_unix_fd_list()
        return list(fd_list.steal_fds()) if fd_list is not None else []

    def reply(self, value: Any = None) -> None:
        if self.answered:
            return
        self.answered = True
        if not self.out_signature:
            self.invocation.return_value(None)
        else:   # one out argument per method in our contract
            self.invocation.return_value(GLib.Variant(f"({self.out_signature})", (value,)))
        self._release()

    def fail(self, error: BaseException) -> None:
        if self.answered:
            return
        self.answered = True
        name, message = dbus_error(error)
        if not isinstance(error, ModcamError) and not isinstance(error, OSError):
            log.error("%s failed unexpectedly", self.method, exc_info=error)
        self.invocation.return_dbus_error(name, message)
        self._release()

    def _release(self) -> None:
        if _drop_closure_ref is not None:
            _drop_closure_ref(self.invocation)

    def settle(self, pending: Pending) -> None:
        pending.add_done_callback(
            lambda p: self.fail(p.error) if p.error is not None else self._reply_safely(p.value))

    def _reply_safely(self, value) -> None:
        try:
            self.reply(value)
        except (TypeError, ValueError, OverflowError) as exc:   # a value that does not fit
            self.answered = False
            log.error("%s: cannot encode the reply %r", self.method, value)
            self.fail(exc)


def variant_dict(values: dict, signatures: dict[str, str]) -> dict[str, GLib.Variant]:
    """{name: python value} as {name: Variant}, each typed by `signatures`."""
    return {k: GLib.Variant(signatures[k], v) for k, v in values.items()}


def guess_signature(value) -> str:
    """The D-Bus type of a plain python value in a result a{sv}."""
    if isinstance(value, bool):
        return "b"
    if isinstance(value, int):
        return "t" if value >= 2**63 else "x"
    if isinstance(value, float):
        return "d"
    if isinstance(value, str):
        return "s"
    if isinstance(value, dict):
        return "a{sv}"
    if isinstance(value, (list, tuple)):
        kinds = {guess_signature(v) for v in value}
        return "a" + (kinds.pop() if len(kinds) == 1 else "s" if not value else "v")
    raise TypeError(f"no D-Bus type for {type(value).__name__}")


def to_variant(value) -> GLib.Variant:
    if isinstance(value, GLib.Variant):
        return value
    if isinstance(value, dict):
        return GLib.Variant("a{sv}", {k: to_variant(v) for k, v in value.items()})
    sig = guess_signature(value)
    if sig == "av":
        return GLib.Variant("av", [to_variant(v) for v in value])
    return GLib.Variant(sig, value)


# The documented type of every result key (dbus/org.modcam.Camera1.Module.xml);
# keys not listed are typed from their python value.
RESULT_TYPES = {
    "paths": "as", "sizes": "at", "size": "t", "format": "s", "sequence": "t",
    "timestamp_ns": "t", "timestamp_boottime_ns": "t", "exposure_time": "i",
    "analogue_gain": "d", "lens_position": "d", "aperture": "d", "temperature": "d",
    "readout_mode": "s", "width": "u", "height": "u", "colour_gains": "ad",
    "position": "d", "focus_measure": "d", "frames": "u", "success": "b", "seconds": "d",
}


def result_dict(values: dict) -> dict[str, GLib.Variant]:
    """A method's a{sv} result from plain python values, typed as documented."""
    out = {}
    for k, v in values.items():
        sig = RESULT_TYPES.get(k)
        if sig == "d" or sig == "ad":
            v = float(v) if sig == "d" else [float(x) for x in v]
        out[k] = GLib.Variant(sig, v) if sig else to_variant(v)
    return out


class ExportedObject:
    """Registers `interface` at `path`; `handlers` maps method names to
    callables (call, *args); `get_properties()` returns every property."""

    def __init__(self, connection: Gio.DBusConnection, path: str, info: Gio.DBusInterfaceInfo,
                 handlers: dict[str, Callable], get_properties: Callable[[], dict] | None = None):
        self.connection, self.path, self.info = connection, path, info
        self.interface = info.name
        self.handlers, self.get_properties = handlers, get_properties or (lambda: {})
        self.signatures = {p.name: p.signature for p in info.properties}
        self._out = {m.name: "".join(a.signature for a in m.out_args) for m in info.methods}
        self._signals = {s.name: "".join(a.signature for a in s.args) for s in info.signals}
        self._id = connection.register_object(path, info, self._on_call, self._on_get, None)

    def unregister(self) -> None:
        if self._id:
            self.connection.unregister_object(self._id)
            self._id = 0

    def typed_properties(self) -> dict[str, GLib.Variant]:
        return variant_dict(self.get_properties(), self.signatures)

    def emit(self, signal: str, *args) -> None:
        sig = self._signals[signal]
        params = GLib.Variant(f"({sig})", args) if sig else None
        self._send(self.interface, signal, params)

    def properties_changed(self, changed: dict) -> None:
        if not changed or not self._id:
            return
        params = GLib.Variant("(sa{sv}as)", (self.interface,
                                             variant_dict(changed, self.signatures), []))
        self._send(PROPERTIES, "PropertiesChanged", params)

    def _send(self, interface, signal, params) -> None:
        try:
            self.connection.emit_signal(None, self.path, interface, signal, params)
        except GLib.Error as exc:     # the bus went away: the service is stopping
            log.debug("cannot emit %s.%s: %s", interface, signal, exc.message)

    def _on_call(self, connection, sender, path, interface, method, params, invocation):
        call = Call(invocation, self._out.get(method, ""))
        handler = self.handlers.get(method)
        try:
            if handler is None:
                raise NotImplementedError(method)
            result = handler(call, *params.unpack())
        except Exception as exc:   # noqa: BLE001 - every error becomes a documented name
            for fd in call.take_fds() if method.endswith("Fd") else ():
                os.close(fd)
            call.fail(exc)
            return
        if isinstance(result, Pending):
            call.settle(result)
        else:
            call._reply_safely(result)

    def _on_get(self, connection, sender, path, interface, name):
        value = self.get_properties().get(name)
        if value is None:
            return None
        return GLib.Variant(self.signatures[name], value)
