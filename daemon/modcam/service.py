"""modcamd: the process. Configuration, logging, the bus, udev, signals.

    modcamd [--config FILE] [--bus system|session|ADDRESS] [--capture-dir DIR]
            [--idle-timeout S] [--boot-timeout S] [--log-level LEVEL]

Start order: configuration (a bad one stops here, exit 2, one sentence),
logging, the capture directory, the bus connection, the objects, the udev
watch (monitor first, then coldplug), then the well-known name; READY=1 once
the name is owned. SIGTERM/SIGINT: pending calls fail, modules are powered
down, the name is released, exit 0.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

from gi.repository import Gio, GLib

from modcam import __version__, config as cfg, journal, names
from modcam.bus import objects
from modcam.bus.access import Access
from modcam.link.udev_watch import UdevWatch
from modcam.manager import Manager

log = logging.getLogger("modcam.service")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modcamd", description="The modcam camera-module daemon: "
                                "hot-plug, power, capture and focus over D-Bus "
                                f"({names.BUS_NAME}).")
    p.add_argument("--config", type=os.path.abspath, default=None,
                   help=f"TOML configuration file (default {cfg.DEFAULT_PATH}, if present)")
    p.add_argument("--bus", help="system (default), session, or a D-Bus address")
    p.add_argument("--capture-dir", dest="capture_dir", help="where Capture() writes files")
    p.add_argument("--idle-timeout", dest="idle_timeout", type=float,
                   help="seconds without claim or work before a module is powered down")
    p.add_argument("--boot-timeout", dest="boot_timeout", type=float,
                   help="seconds a module may take to become ready")
    p.add_argument("--log-level", dest="log_level", help="debug, info, warning or error")
    p.add_argument("--version", action="version", version=f"modcamd {__version__}")
    return p


def connect(bus: str) -> Gio.DBusConnection:
    if bus == "system":
        return Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
    if bus == "session":
        return Gio.bus_get_sync(Gio.BusType.SESSION, None)
    flags = (Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
             | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION)
    return Gio.DBusConnection.new_for_address_sync(bus, flags, None, None)


class Service:
    def __init__(self, config: cfg.Config):
        self.config = config
        self.loop = GLib.MainLoop()
        self.notifier = journal.Notifier()
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="isp")
        self.exit_code = 0
        self.connection = self.bus_object = self.watch = None
        self._name_id = self._sub_id = 0

    def run(self) -> int:
        c = self.config
        c.capture_dir.mkdir(parents=True, exist_ok=True)
        self.connection = connect(c.bus)
        self.connection.set_exit_on_close(False)
        self.connection.connect("closed", self._bus_closed)
        self.bus_object = objects.ManagerObject(self.connection, None, c.capture_dir,
                                                Access(self.connection, c.camera_group))
        self.manager = Manager(c, self.executor, self._added, self.bus_object.module_removed,
                               self._changed)
        self.bus_object.manager = self.manager
        self._sub_id = objects.watch_clients(self.connection, self.bus_object.client_vanished)
        self.watch = self._start_udev()
        for sig in (signal.SIGTERM, signal.SIGINT):
            GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, self._on_signal, sig)
        self._name_id = Gio.bus_own_name_on_connection(
            self.connection, names.BUS_NAME, Gio.BusNameOwnerFlags.DO_NOT_QUEUE,
            self._name_acquired, self._name_lost)
        self.loop.run()
        self._shutdown()
        return self.exit_code

    def _added(self, module) -> None:
        self.bus_object.module_added(module)
        self._status()

    def _changed(self, module, changed: dict) -> None:
        self.bus_object.module_changed(module, changed)
        if "State" in changed:
            self._status()

    def _start_udev(self) -> UdevWatch:
        import pyudev
        from modcam.virtual.udev_device import start_monitor   # umockdev-safe monitor start
        context = pyudev.Context()
        monitor = start_monitor(context, names.UDEV_SUBSYSTEM)
        watch = UdevWatch(context, monitor, names.UDEV_SUBSYSTEM, self.manager.add,
                          self._removed)
        watch.start()
        return watch

    def _removed(self, serial, sys_path) -> None:
        self.manager.remove(serial, sys_path)
        self._status()

    def _status(self) -> None:
        mods = self.manager.modules.values()
        text = (f"{len(mods)} module(s): " + ", ".join(f"{m.serial} {m.state}" for m in mods)
                if mods else "no module attached")
        self.notifier.status(text)

    def _name_acquired(self, _conn, name) -> None:
        log.info("modcamd %s ready on %s as %s", __version__, self.config.bus, name)
        self.notifier.ready()
        self.notifier.watchdog_start()
        self._status()

    def _name_lost(self, _conn, name) -> None:
        log.error("cannot own %s on the %s bus (another modcamd, or the bus policy forbids "
                  "it); stopping", name, self.config.bus)
        self.exit_code = 1
        self.loop.quit()

    def _bus_closed(self, *_args) -> None:
        log.error("the D-Bus connection closed; stopping")
        self.exit_code = 1
        self.loop.quit()

    def _on_signal(self, sig) -> bool:
        log.info("%s: stopping", signal.Signals(sig).name)
        self.notifier.stopping()
        self.loop.quit()
        return GLib.SOURCE_REMOVE

    def _shutdown(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        self.manager.shutdown()
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self._name_id:
            Gio.bus_unown_name(self._name_id)
        if self.bus_object is not None:
            self.bus_object.unregister()
        if self.connection is not None and not self.connection.is_closed():
            try:
                self.connection.flush_sync(None)
            except GLib.Error:
                pass
        self.notifier.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("bus", "capture_dir", "idle_timeout",
                                                 "boot_timeout", "log_level")}
    try:
        config = cfg.load(args.config, overrides)
    except cfg.ConfigError as exc:
        print(f"modcamd: {exc}", file=sys.stderr)
        return 2
    journal.setup_logging(config.log_level)
    try:
        return Service(config).run()
    except GLib.Error as exc:
        log.error("cannot connect to the %s bus: %s", config.bus, exc.message)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
