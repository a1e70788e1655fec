"""Follows modcam modules arriving and leaving, on the GLib main loop.

The monitor is started before the coldplug enumeration (docs/udev-interface.md),
so a module plugged in between is seen twice, never missed; the manager treats
an add for a module it has as a no-op. Takes its pyudev context and monitor
as arguments, so tests can hand it anything with the same methods. Every
event is parsed here; a malformed one is logged and dropped, never raised
into the main loop.
"""
from __future__ import annotations

import logging
from typing import Callable

from gi.repository import GLib

from modcam.link import module_info
from modcam.link.module_info import BadUevent, ModuleInfo

log = logging.getLogger("modcam.udev")


class UdevWatch:
    """Calls on_add(ModuleInfo) for coldplug, add and change, and
    on_remove(serial, sys_path) for remove."""

    def __init__(self, context, monitor, subsystem: str,
                 on_add: Callable[[ModuleInfo], None],
                 on_remove: Callable[[str | None, str], None]):
        self.context, self.monitor, self.subsystem = context, monitor, subsystem
        self.on_add, self.on_remove = on_add, on_remove
        self.events = 0
        self.ignored = 0
        self._source = 0

    def start(self) -> None:
        """Watch the monitor, then enumerate what is already there."""
        self._source = GLib.unix_fd_add_full(GLib.PRIORITY_HIGH, self.monitor.fileno(),
                                             GLib.IO_IN, self._on_readable)
        for device in self.context.list_devices(subsystem=self.subsystem):
            self._handle("coldplug", device)

    def stop(self) -> None:
        if self._source:
            GLib.source_remove(self._source)
            self._source = 0

    def _on_readable(self, _fd, _condition) -> bool:
        # Drain everything queued: under umockdev a listener that falls
        # behind makes the sender give up, so read all, not one per wake-up.
        while True:
            try:
                device = self.monitor.poll(timeout=0)
            except (OSError, ValueError) as exc:   # a datagram pyudev cannot parse
                self.ignored += 1
                log.warning("ignoring an unreadable uevent: %s", exc)
                continue
            if device is None:
                return GLib.SOURCE_CONTINUE
            self._handle(device.action or "change", device)

    def _handle(self, action: str, device) -> None:
        self.events += 1
        try:
            if action == "remove":
                try:
                    serial = module_info.serial_of(device)
                except BadUevent:
                    serial = None     # still found by its syspath
                self.on_remove(serial, device.sys_path)
            elif action in ("add", "change", "coldplug", "bind", "move", "online"):
                self.on_add(module_info.from_device(device))
            else:
                self.ignored += 1
                log.debug("ignoring uevent %s for %s", action, device.sys_path)
        except BadUevent as exc:
            self.ignored += 1
            log.warning("ignoring %s uevent: %s", action, exc)
        except Exception:    # noqa: BLE001 - one bad event must not stop the watcher
            self.ignored += 1
            log.exception("failed to handle %s uevent for %s", action, device.sys_path)
