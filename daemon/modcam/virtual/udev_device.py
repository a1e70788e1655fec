"""The virtual module's udev presence: a umockdev testbed that plugs modules.

This module owns ``VirtualUdevBed``: a thin, safe layer over
``UMockdev.Testbed`` (umockdev 0.17.x, through GObject introspection) that
makes a virtual modcam module appear to udev consumers exactly as the future
kernel driver will (identity in docs/udev-interface.md, names in
``modcam.names``), and disappear again, with real uevents.

Facts about umockdev 0.17.16 (Debian 12) that shape this code, all measured:

* The process that calls ``add_device``/``uevent`` must itself run under the
  umockdev preload (``umockdev-wrapper`` or ``LD_PRELOAD=libumockdev-preload.so.0``):
  the uevent sender looks the device up through libudev, which only sees the
  testbed's /sys through the preload.  Without it, umockdev prints
  "No such device" and sends nothing.  We refuse to start instead.
* ``add_device`` sends "add" itself, after the attributes are written.
  ``remove_device`` sends nothing: we send "remove" first, then remove (the
  sender needs the device to exist to describe it).
* Every uevent goes to each listener's AF_UNIX datagram socket
  ($UMOCKDEV_DIR/eventN) with a non-blocking send; when a listener's queue is
  full (net.unix.max_dgram_qlen, 10 by default) umockdev *aborts the whole
  process*.  So before every uevent we wait until every listener has room
  (poll(POLLOUT) on a connected datagram socket reports exactly that), and
  raise ``UeventBackpressureError`` after a timeout instead of dying.
* ``Testbed()`` sets UMOCKDEV_DIR in the C environment (not in ``os.environ``)
  and unsets it when finalised, and the preload in *this* process follows
  that variable.  Two live testbeds in one process would confuse each other,
  so only one ``VirtualUdevBed`` may be open at a time.

* A listener's socket is $UMOCKDEV_DIR/event<fd>, and binding unlinks an
  existing one: two processes whose monitor sockets share an fd number steal
  each other's events.  ``start_monitor()`` (for any pyudev consumer that may
  run under umockdev, the daemon included) avoids that.

Use the bed from one thread.  ``close()`` destroys the testbed and its directory.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import select
import shutil
import socket
import time
import weakref

from gi.repository import GLib

from modcam import names

PRELOAD_LIB = "libumockdev-preload.so.0"

# Values end up in the sysfs "uevent" file, one KEY=VALUE per line, and in
# the datagram sent to listeners: no newlines, no NULs, modest lengths.
_SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TEXT_RE = re.compile(r"[\x20-\x7e]{1,128}")
_UNIX_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux

_live_bed: "weakref.ref[VirtualUdevBed] | None" = None


class UeventBackpressureError(RuntimeError):
    """A uevent listener did not drain its queue in time (sending would abort)."""


def preload_active() -> bool:
    """True when libumockdev-preload is mapped into this process."""
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            return "libumockdev-preload" in maps.read()
    except OSError:
        return False


def _umockdev():
    """Import UMockdev lazily: start_monitor() must work where umockdev is absent."""
    import gi
    try:
        gi.require_version("UMockdev", "1.0")
    except ValueError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(
            "UMockdev GObject introspection data is missing: "
            "install the Debian packages umockdev and gir1.2-umockdev-1.0") from exc
    from gi.repository import UMockdev
    return UMockdev


def _socket_alive(path: str) -> bool:
    """True if a live process has a datagram socket bound at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise
    return True


def start_monitor(context, subsystem: str = names.UDEV_SUBSYSTEM, devtype: str | None = None):
    """Create, filter and start a pyudev Monitor; safe with several listeners under umockdev.

    Under the preload, a monitor's netlink socket becomes an AF_UNIX socket
    bound at $UMOCKDEV_DIR/event<fd>, and bind() first *unlinks* whatever is
    there.  Two processes whose monitor sockets get the same fd number (easy:
    3 in any small Python program) therefore steal each other's events: the
    last to bind hears everything, the other nothing, silently.  So, before
    binding, we check that event<fd> is not a live socket, and if it is we keep
    that monitor open (holding its fd) and try the next fd.  Outside umockdev
    (no UMOCKDEV_DIR) this is exactly Monitor.from_netlink + filter + start.
    A window remains between check and bind: start listeners one at a time.
    """
    import pyudev
    # The C environment, which the preload reads (a Testbed in this process
    # sets UMOCKDEV_DIR there without touching os.environ).
    root = GLib.getenv("UMOCKDEV_DIR")
    held = []
    try:
        for _ in range(256):
            monitor = pyudev.Monitor.from_netlink(context)
            monitor.filter_by(subsystem, devtype)
            if not root or not _socket_alive(os.path.join(root, f"event{monitor.fileno()}")):
                monitor.start()
                return monitor
            held.append(monitor)   # keeps its fd busy: the next socket gets another number
        raise RuntimeError(f"no free umockdev event socket under {root}")
    finally:
        held.clear()               # unbound wrapped sockets: closing them unlinks nothing


def _check_text(what: str, value: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: must match {pattern.pattern}")
    return value


class VirtualUdevBed:
    """A umockdev testbed in which virtual modcam modules are plugged and unplugged."""

    def __init__(self, *, backpressure_timeout: float = 5.0, require_preload: bool = True):
        global _live_bed
        if require_preload and not preload_active():
            raise RuntimeError(
                "this process does not run under the umockdev preload, so its uevents "
                "would go nowhere; start it as `umockdev-wrapper PROGRAM ...` "
                f"(or with LD_PRELOAD={PRELOAD_LIB})")
        other = _live_bed() if _live_bed is not None else None
        if other is not None and not other.closed:
            raise RuntimeError(
                f"another VirtualUdevBed ({other.root_dir}) is still open in this process; "
                "close it first (umockdev follows one UMOCKDEV_DIR per process)")
        self.backpressure_timeout = backpressure_timeout
        self._tb = _umockdev().Testbed.new()
        self._root = self._tb.get_root_dir()
        self._by_serial: dict[str, str] = {}   # serial -> syspath
        _live_bed = weakref.ref(self)

    # -- accessors -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._tb is None

    @property
    def root_dir(self) -> str:
        """The testbed root: what UMOCKDEV_DIR must name for a process to see it."""
        return self._root

    @property
    def sys_dir(self) -> str:
        return os.path.join(self._root, "sys")

    def modules(self) -> dict[str, str]:
        """Plugged modules, serial -> syspath."""
        return dict(self._by_serial)

    def syspath_of(self, serial: str) -> str | None:
        return self._by_serial.get(serial)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a child process that must see this testbed.

        Explicit because ``Testbed()`` sets UMOCKDEV_DIR only in the C
        environment: ``subprocess`` with ``env=os.environ.copy()`` would miss
        it.  The preload is appended to LD_PRELOAD (not prepended) so that an
        ASan runtime already listed there stays first, as ASan requires.
        """
        env = dict(os.environ if base is None else base)
        env["UMOCKDEV_DIR"] = self._root
        parts = [p for p in re.split(r"[: ]+", env.get("LD_PRELOAD", "")) if p]
        if not any("libumockdev-preload" in p for p in parts):
            parts.append(PRELOAD_LIB)
        env["LD_PRELOAD"] = ":".join(parts)
        return env

    # -- plugging ------------------------------------------------------------

    def plug(self, serial: str, control_path: str, *, vendor: str = "modcam",
             model: str = "Virtual MC-100", firmware: str = "0.1.0",
             protocol: int = names.PROTOCOL_VERSION,
             extra_properties: dict[str, str] | None = None) -> str:
        """Add a module and send its "add" uevent; return its syspath."""
        tb = self._testbed()
        _check_text("serial", serial, _SERIAL_RE)
        for what, value in (("vendor", vendor), ("model", model), ("firmware", firmware)):
            _check_text(what, value, _TEXT_RE)
        if (not isinstance(control_path, str) or not os.path.isabs(control_path)
                or "\n" in control_path or "\0" in control_path
                or len(os.fsencode(control_path)) > _UNIX_PATH_MAX):
            raise ValueError(f"invalid control socket path {control_path!r}: must be "
                             f"absolute and at most {_UNIX_PATH_MAX} bytes")
        if serial in self._by_serial:
            raise ValueError(f"a module with serial {serial!r} is already plugged")
        attributes = {
            names.ATTR_SERIAL: serial,
            names.ATTR_VENDOR: vendor,
            names.ATTR_MODEL: model,
            names.ATTR_FIRMWARE: firmware,
        }
        properties = {
            "DEVTYPE": names.UDEV_DEVTYPE,
            names.PROP_MODULE: "1",
            names.PROP_SERIAL: serial,
            names.PROP_CONTROL: control_path,
            names.PROP_PROTOCOL: str(int(protocol)),
            names.PROP_ID_VENDOR: vendor,
            names.PROP_ID_MODEL: model,
            names.PROP_ID_REVISION: firmware,
        }
        for key, value in (extra_properties or {}).items():
            _check_text("property name", key, re.compile(r"[A-Z][A-Z0-9_]{0,63}"))
            _check_text(f"value of {key}", value, _TEXT_RE)
            properties[key] = value
        self._wait_for_room()
        # add_device writes attributes and the uevent file first, then sends "add".
        syspath = tb.add_device(names.UDEV_SUBSYSTEM, self._free_name(), None,
                                _flatten(attributes), _flatten(properties))
        if not syspath:
            raise RuntimeError(f"umockdev refused to add module {serial!r}")
        self._by_serial[serial] = syspath
        return syspath

    def unplug(self, target: str) -> bool:
        """Send "remove" for a module (by serial or syspath), then remove it.

        Returns False, and does nothing, when no such module is plugged: a
        second unplug of the same module is harmless.
        """
        tb = self._testbed()
        serial = self._resolve(target)
        if serial is None:
            return False
        syspath = self._by_serial.pop(serial)
        if os.path.isdir(self._host_path(syspath)):
            # umockdev 0.17.16's remove_device sends no uevent, and the sender
            # can only describe a device that still exists: remove comes first.
            self._send(syspath, "remove")
            tb.remove_device(syspath)
        return True

    def uevent(self, target: str, action: str) -> bool:
        """Send one more uevent ("change", or a duplicate "remove") for a plugged module.

        Returns False, sending nothing, if the module is no longer there.
        """
        self._testbed()
        if action not in ("add", "remove", "change", "online", "offline", "bind", "unbind"):
            raise ValueError(f"unknown uevent action {action!r}")
        serial = self._resolve(target)
        if serial is None or not os.path.isdir(self._host_path(self._by_serial[serial])):
            return False
        self._send(self._by_serial[serial], action)
        return True

    def change(self, target: str, *, attributes: dict[str, str] | None = None,
               properties: dict[str, str] | None = None) -> bool:
        """Update attributes and/or properties of a plugged module and send "change"."""
        tb = self._testbed()
        serial = self._resolve(target)
        if serial is None:
            return False
        syspath = self._by_serial[serial]
        for name, value in (attributes or {}).items():
            tb.set_attribute(syspath, name, _check_text(f"attribute {name}", value, _TEXT_RE))
        for name, value in (properties or {}).items():
            tb.set_property(syspath, name, _check_text(f"property {name}", value, _TEXT_RE))
        return self.uevent(syspath, "change")

    def close(self) -> None:
        """Destroy the testbed: devices vanish silently (no uevents) and the directory goes."""
        global _live_bed
        if self._tb is None:
            return
        for syspath in list(self._by_serial.values()):
            if os.path.isdir(self._host_path(syspath)):
                self._tb.remove_device(syspath)
        self._by_serial.clear()
        # Dropping the last reference finalises the Testbed, which deletes its
        # directory and unsets UMOCKDEV_DIR; do both ourselves too in case a
        # stray reference (a traceback, a closure) keeps it alive.
        self._tb = None
        if GLib.getenv("UMOCKDEV_DIR") == self._root:
            GLib.unsetenv("UMOCKDEV_DIR")
        if os.path.isdir(self._root):
            shutil.rmtree(self._root, ignore_errors=True)
        if _live_bed is not None and _live_bed() is self:
            _live_bed = None

    def __enter__(self) -> "VirtualUdevBed":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- internals -----------------------------------------------------------

    def _testbed(self):
        if self._tb is None:
            raise RuntimeError("this VirtualUdevBed is closed")
        # The uevent sender resolves devices through this process's preload,
        # which follows UMOCKDEV_DIR: make sure it still names our testbed.
        if GLib.getenv("UMOCKDEV_DIR") != self._root:
            GLib.setenv("UMOCKDEV_DIR", self._root, True)
        return self._tb

    def _resolve(self, target: str) -> str | None:
        if target in self._by_serial:
            return target
        for serial, syspath in self._by_serial.items():
            if syspath == target:
                return serial
        return None

    def _host_path(self, syspath: str) -> str:
        return os.path.join(self._root, syspath.lstrip("/"))

    def _free_name(self) -> str:
        # Lowest free index, as the kernel's IDA allocates it: consumers must
        # cope with a syspath that comes back for a different module.
        used = {os.path.basename(p) for p in self._by_serial.values()}
        index = 0
        while f"{names.UDEV_NAME_PREFIX}{index}" in used:
            index += 1
        return f"{names.UDEV_NAME_PREFIX}{index}"

    def _send(self, syspath: str, action: str) -> None:
        self._wait_for_room()
        self._testbed().uevent(syspath, action)

    def _wait_for_room(self) -> None:
        """Block until every listener socket can take one more datagram.

        Linux reports POLLOUT on a connected AF_UNIX datagram socket only
        while the peer's receive queue is below max_dgram_qlen, and wakes us
        when the peer reads; that is precisely the condition under which
        umockdev's non-blocking send succeeds instead of aborting.
        """
        deadline = time.monotonic() + self.backpressure_timeout
        for path in glob.glob(os.path.join(self._root, "event[0-9]*")):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                try:
                    sock.connect(path)
                except OSError as exc:
                    # ECONNREFUSED: the listener died (umockdev unlinks such
                    # sockets itself); ENOENT: it just went away.
                    if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                        continue
                    raise
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
                remaining = max(0.0, deadline - time.monotonic())
                if not poller.poll(int(remaining * 1000)):
                    raise UeventBackpressureError(
                        f"uevent listener {path} has not read its queued events for "
                        f"{self.backpressure_timeout:.1f} s (is a monitor process stopped "
                        "or not reading?); umockdev would abort this process on send")


def _flatten(mapping: dict[str, str]) -> list[str]:
    flat: list[str] = []
    for key, value in mapping.items():
        flat += [key, value]
    return flat
