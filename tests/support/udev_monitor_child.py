"""A separate process that watches udev with pyudev and reports as JSON lines.

This file owns the *observer* side of the hot-plug tests: it runs under the
umockdev preload with the testbed's environment (as the daemon will), starts a
pyudev monitor filtered on one subsystem, enumerates the devices already
present (coldplug), and then prints one JSON object per line on stdout:

    {"type": "coldplug", ...device...}       one per device present at start
    {"type": "ready", "pid": ..., ...}       monitor bound, enumeration done
    {"type": "uevent", ...device...}         one per event received
    {"type": "error", "error": "..."}        a receive failed

A device is {"action", "sys_path", "sys_name", "subsystem", "device_type",
"seqnum", "properties", "attributes", "t"} where "t" is time.monotonic() at
receipt (CLOCK_MONOTONIC is system-wide, so the parent can subtract its own).
It exits when its stdin reaches EOF, so it never outlives the test.  It needs
this checkout's daemon/ on PYTHONPATH (UdevTestbed.env() sees to that).

Modes, to learn what works under umockdev:
    glib      Monitor + GLib.io_add_watch(monitor.fileno()) on a GLib main
              loop: what the daemon uses
    poll      a plain select() loop over Monitor.poll(timeout=0)
    observer  pyudev.MonitorObserver (a background thread)

    udev_monitor_child.py [--mode glib|poll|observer] [--subsystem modcam]
                          [--delay SECONDS]   (sleep after each event: a slow consumer)
"""

import argparse
import json
import os
import select
import sys
import threading
import time

import pyudev

from modcam.virtual.udev_device import start_monitor

ATTRIBUTES = ("serial", "vendor", "model", "firmware_version")
_out_lock = threading.Lock()


def emit(obj):
    # One write per line, under a lock: the observer mode prints from a thread.
    line = json.dumps(obj, sort_keys=True) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def describe(device, kind, t):
    attributes = {}
    for name in ATTRIBUTES:
        # Attributes are read live from sysfs: on "remove" they may be gone.
        try:
            attributes[name] = device.attributes.asstring(name)
        except (KeyError, OSError, UnicodeDecodeError):
            pass
    return {
        "type": kind,
        "t": t,
        "action": device.action,
        "sys_path": device.sys_path,
        "sys_name": device.sys_name,
        "subsystem": device.subsystem,
        "device_type": device.device_type,
        "seqnum": device.sequence_number,
        "properties": dict(device.properties),
        "attributes": attributes,
    }


def drain(monitor, delay):
    """Read every event queued on the monitor without blocking."""
    while True:
        try:
            device = monitor.poll(timeout=0)
        except OSError as exc:
            emit({"type": "error", "error": repr(exc)})
            return
        if device is None:
            return
        emit(describe(device, "uevent", time.monotonic()))
        if delay:
            time.sleep(delay)


def stdin_closed():
    try:
        return os.read(sys.stdin.fileno(), 4096) == b""
    except OSError:
        return True


def run_glib(monitor, delay):
    from gi.repository import GLib

    loop = GLib.MainLoop()

    def on_monitor(_fd, _condition):
        drain(monitor, delay)
        return GLib.SOURCE_CONTINUE

    def on_stdin(_fd, condition):
        if condition & (GLib.IO_HUP | GLib.IO_ERR) or stdin_closed():
            loop.quit()
            return GLib.SOURCE_REMOVE
        return GLib.SOURCE_CONTINUE

    GLib.io_add_watch(monitor.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN, on_monitor)
    GLib.io_add_watch(sys.stdin.fileno(), GLib.PRIORITY_DEFAULT,
                      GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, on_stdin)
    announce_ready("glib")
    loop.run()


def run_poll(monitor, delay):
    announce_ready("poll")
    while True:
        readable, _, _ = select.select([monitor.fileno(), sys.stdin.fileno()], [], [])
        if monitor.fileno() in readable:
            drain(monitor, delay)
        if sys.stdin.fileno() in readable and stdin_closed():
            return


def run_observer(monitor, delay):
    def callback(device):
        emit(describe(device, "uevent", time.monotonic()))
        if delay:
            time.sleep(delay)

    observer = pyudev.MonitorObserver(monitor, callback=callback, name="udev-observer")
    observer.daemon = True
    observer.start()
    announce_ready("observer")
    while not stdin_closed():
        pass
    observer.send_stop()


def announce_ready(mode):
    emit({"type": "ready", "pid": os.getpid(), "mode": mode,
          "umockdev_dir": os.environ.get("UMOCKDEV_DIR"),
          "ld_preload": os.environ.get("LD_PRELOAD", "")})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("glib", "poll", "observer"), default="glib")
    parser.add_argument("--subsystem", default="modcam")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()

    context = pyudev.Context()
    # Start (bind) the monitor *before* enumerating, as a daemon must: a device
    # plugged in between is then seen twice (coldplug and add), never missed.
    # start_monitor() = from_netlink + filter_by + start, but on an umockdev
    # event socket that no other listener process is using.
    monitor = start_monitor(context, args.subsystem)
    for device in context.list_devices(subsystem=args.subsystem):
        emit(describe(device, "coldplug", time.monotonic()))
    {"glib": run_glib, "poll": run_poll, "observer": run_observer}[args.mode](monitor, args.delay)


if __name__ == "__main__":
    main()
