"""The exported objects: the manager (with ObjectManager) and one per module.

Thin: each method unpacks, forwards to the model (manager.py, module.py,
still.py, autofocus.py) and returns its value or Pending; errors map to the
documented names in exported.py. Nothing here blocks.
"""
from __future__ import annotations

import logging
import os

from gi.repository import Gio, GLib

from modcam import __version__, controls as ctl, names
from modcam.autofocus import AutofocusRun
from modcam.bus.exported import ExportedObject, result_dict
from modcam.bus.introspection import OBJECT_MANAGER, interface_info
from modcam.capture_options import CaptureOptions
from modcam.errors import InvalidArgument, Removed
from modcam.setcontrols import set_controls
from modcam.still import StillCapture

log = logging.getLogger("modcam.bus")


def module_path(module) -> str:
    return f"{names.MODULES_PATH}/{module.info.object_id}"


class ModuleObject:
    def __init__(self, connection, module, capture_dir, access, on_claim=None):
        self.module, self.capture_dir, self.access = module, capture_dir, access
        self.on_claim = on_claim
        self.path = module_path(module)
        handlers = {"Claim": self.claim, "Release": self.release,
                    "SetControls": self.set_controls, "AutoFocus": self.autofocus,
                    "Capture": self.capture, "CaptureToFd": self.capture_to_fd}
        self.exported = ExportedObject(connection, self.path,
                                       interface_info(names.MODULE_INTERFACE), handlers,
                                       module.properties)

    def _live(self):
        if self.module.removed:
            raise Removed(f"module {self.module.serial} was removed")
        return self.module

    def _allowed(self, call, action):
        """Run action() once the caller is known to be allowed to operate cameras."""
        self._live()
        return self.access.check(call.sender, call.method).then(lambda _: action())

    def claim(self, call):
        def claim():
            pending = self._live().claim(call.sender)
            if self.on_claim is not None:
                self.on_claim(call.sender)     # it may have left already
            return pending.then(lambda _: None)
        return self._allowed(call, claim)

    def release(self, call):
        return self._allowed(call, lambda: self._live().release(call.sender))

    def set_controls(self, call, controls):
        return self._allowed(call, lambda: set_controls(self._live(), controls))

    def autofocus(self, call):
        return self._allowed(call, lambda: AutofocusRun(self._live()).start().then(result_dict))

    def _options(self, options, to_fd: bool) -> CaptureOptions:
        m = self._live()
        return CaptureOptions.from_dbus(
            options, to_fd=to_fd,
            parse_controls=lambda c: ctl.parse(c, m.limits, m.settings["AfMode"]))

    def capture(self, call, options):
        def capture():
            opts = self._options(options, False)
            return StillCapture(self._live(), opts, directory=self.capture_dir).start().then(
                result_dict)
        return self._allowed(call, capture)

    def capture_to_fd(self, call, handle, options):
        fds = call.take_fds()
        try:
            if not 0 <= handle < len(fds):
                raise InvalidArgument(f"fd: handle {handle} does not name a descriptor sent "
                                      f"with the call ({len(fds)} sent)")
            fd = fds.pop(handle)
        finally:
            for other in fds:
                os.close(other)

        def capture():
            opts = self._options(options, True)
            return StillCapture(self._live(), opts, fd=fd).start()   # closes fd when done

        def refused(error):
            os.close(fd)
            raise error
        allowed = self.access.check(call.sender, call.method).then(lambda _: None, refused)
        return allowed.then(lambda _: _closing_on_error(capture, fd)).then(result_dict)

    def unregister(self) -> None:
        self.exported.unregister()


def _closing_on_error(start, fd: int):
    try:
        return start()
    except BaseException:
        os.close(fd)
        raise


class ManagerObject:
    """/org/modcam/Camera1: the Manager interface and the ObjectManager."""

    def __init__(self, connection: Gio.DBusConnection, manager, capture_dir, access):
        self.connection, self.manager, self.capture_dir = connection, manager, capture_dir
        self.access = access
        self.objects: dict[str, ModuleObject] = {}     # serial -> exported module
        self.exported = ExportedObject(connection, names.MANAGER_PATH,
                                       interface_info(names.MANAGER_INTERFACE),
                                       {"GetModules": lambda call: self.paths()},
                                       lambda: {"Modules": self.paths(), "Version": __version__})
        self.object_manager = ExportedObject(connection, names.MANAGER_PATH,
                                             interface_info(OBJECT_MANAGER),
                                             {"GetManagedObjects": self.managed_objects})

    def paths(self) -> list[str]:
        return [o.path for o in self.objects.values()]

    def managed_objects(self, call=None) -> dict:
        return {o.path: {names.MODULE_INTERFACE: o.exported.typed_properties()}
                for o in self.objects.values()}

    # called by the Manager model
    def module_added(self, module) -> None:
        obj = ModuleObject(self.connection, module, self.capture_dir, self.access,
                           on_claim=lambda name: check_alive(self.connection, name,
                                                             self.client_vanished))
        self.objects[module.serial] = obj
        self.object_manager.emit("InterfacesAdded", obj.path,
                                 {names.MODULE_INTERFACE: obj.exported.typed_properties()})
        self.exported.emit("ModuleAdded", obj.path)
        self.exported.properties_changed({"Modules": self.paths()})

    def module_removed(self, module) -> None:
        obj = self.objects.pop(module.serial, None)
        if obj is None:
            return
        obj.unregister()
        self.object_manager.emit("InterfacesRemoved", obj.path, [names.MODULE_INTERFACE])
        self.exported.emit("ModuleRemoved", obj.path)
        self.exported.properties_changed({"Modules": self.paths()})

    def client_vanished(self, name: str) -> None:
        self.access.forget(name)
        if self.manager is not None:
            self.manager.client_vanished(name)

    def module_changed(self, module, changed: dict) -> None:
        obj = self.objects.get(module.serial)
        if obj is not None:
            obj.exported.properties_changed(changed)

    def unregister(self) -> None:
        for obj in self.objects.values():
            obj.unregister()
        self.objects.clear()
        self.exported.unregister()
        self.object_manager.unregister()


def watch_clients(connection: Gio.DBusConnection, on_vanished) -> int:
    """Subscribe to NameOwnerChanged: a unique name losing its owner left the bus."""
    def on_signal(_conn, _sender, _path, _iface, _signal, params):
        name, _old, new = params.unpack()
        if name.startswith(":") and not new:
            on_vanished(name)
    return connection.signal_subscribe("org.freedesktop.DBus", "org.freedesktop.DBus",
                                       "NameOwnerChanged", "/org/freedesktop/DBus", None,
                                       Gio.DBusSignalFlags.NONE, on_signal)


def check_alive(connection: Gio.DBusConnection, name: str, on_vanished) -> None:
    """A caller may have left before its claim was recorded: ask the bus."""
    def done(conn, res):
        try:
            conn.call_finish(res)
        except GLib.Error:
            on_vanished(name)
    connection.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                    "GetNameOwner", GLib.Variant("(s)", (name,)), GLib.VariantType("(s)"),
                    Gio.DBusCallFlags.NONE, -1, None, done)
