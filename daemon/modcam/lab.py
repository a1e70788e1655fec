"""A private modcam lab: a bus, a umockdev testbed, modcamd and virtual modules.

Owns the set-up that stress runs, demos and integration tests share: a
private dbus-daemon from a generated session-like config (any name may be
owned, anyone may talk to anyone), a umockdev testbed (VirtualUdevBed), modcamd
as a child process on that bus and testbed, and virtual module processes that
are plugged and unplugged with real uevents. It also watches the manager's
signals on its own connection, timestamped, so a caller can measure
uevent -> ModuleAdded and unplug -> ModuleRemoved.

The process that uses a Lab must run under the umockdev preload (umockdev only
delivers uevents sent from such a process): `umockdev-wrapper COMMAND ...`.
`Lab()` refuses with `LabError` otherwise.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gi.repository import Gio, GLib

from modcam import names
from modcam.virtual.udev_device import VirtualUdevBed, preload_active

__all__ = ["Lab", "LabError", "PrivateBus", "VirtualModule", "Modcamd", "SignalWatch",
           "process_stats"]

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""
PRELOAD_HINT = "run it under the umockdev preload: umockdev-wrapper {command} ..."


class LabError(RuntimeError):
    """The lab cannot be set up; the message says what to do."""


def _python_env(base: dict[str, str]) -> dict[str, str]:
    """Children import the same modcam as this process, installed or not."""
    env = dict(base)
    here = str(Path(__file__).resolve().parents[1])
    paths = [here] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class PrivateBus:
    """A dbus-daemon of our own in `directory` (BUS_CONFIG, or `config_text`);
    `.address` to connect, `.close()` to stop it."""

    def __init__(self, directory: str, config_text: str | None = None):
        self.socket = os.path.join(directory, "bus")
        config = os.path.join(directory, "bus.conf")
        Path(config).write_text(config_text or BUS_CONFIG.format(socket=self.socket))
        self.proc = subprocess.Popen(["dbus-daemon", "--nofork", "--print-address",
                                      f"--config-file={config}"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            raise LabError(f"dbus-daemon did not start: {self.proc.stderr.read()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


class _Child:
    """A child process whose stderr is kept (the last lines) for reports."""

    def __init__(self, argv: list[str], env: dict[str, str], stdout=subprocess.DEVNULL):
        self.proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.PIPE,
                                     text=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._lines.append(line)
            if len(self._lines) > 4000:      # a long run: keep the tail only
                del self._lines[:2000]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "".join(self._lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


class Modcamd(_Child):
    def __init__(self, env: dict[str, str], bus_address: str, capture_dir: str, *,
                 idle_timeout: float, boot_timeout: float = 10.0, log_level: str = "warning"):
        argv = [sys.executable, "-m", "modcam.service", "--bus", bus_address,
                "--capture-dir", capture_dir, "--idle-timeout", str(idle_timeout),
                "--boot-timeout", str(boot_timeout), "--log-level", log_level]
        super().__init__(argv, env)


class VirtualModule(_Child):
    """`modcam-virtual-module run` with the synthetic source; plugged by the Lab."""

    def __init__(self, env: dict[str, str], serial: str, control: str, *,
                 sensor: tuple[int, int], boot_seconds: float, source: str = "synthetic"):
        argv = [sys.executable, "-m", "modcam.virtual.cli", "run", "--serial", serial,
                "--control", control, "--sensor", f"{sensor[0]}x{sensor[1]}",
                "--boot-seconds", str(boot_seconds), "--source", source]
        super().__init__(argv, env, stdout=subprocess.PIPE)
        self.serial, self.control, self.sensor = serial, control, sensor
        for line in self.proc.stdout:
            if line.strip() == "MODCAM_READY=1":
                break
        else:
            raise LabError(f"virtual module {serial} did not start:\n{self.log[-3000:]}")

    @property
    def path(self) -> str:
        # Serials of the form the lab uses (letters and digits) are already valid ids.
        return f"{names.MODULES_PATH}/{self.serial}"


class SignalWatch:
    """The lab's own bus connection: manager signals with monotonic timestamps,
    delivered by a GLib main loop on a thread of its own."""

    def __init__(self, address: str):
        flags = (Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
                 | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION)
        self._ctx = GLib.MainContext.new()
        self._ctx.push_thread_default()     # signals are dispatched in this context
        try:
            self.conn = Gio.DBusConnection.new_for_address_sync(address, flags, None, None)
            self._sub = self.conn.signal_subscribe(
                None, names.MANAGER_INTERFACE, None, names.MANAGER_PATH, None,
                Gio.DBusSignalFlags.NONE, self._on_signal)
        finally:
            self._ctx.pop_thread_default()
        self._cond = threading.Condition()
        self.signals: list[tuple[float, str, str]] = []    # (monotonic, member, object path)
        self._forgotten = 0      # signals dropped from the front of the list: marks stay valid
        self._loop = GLib.MainLoop.new(self._ctx, False)
        self._thread = threading.Thread(target=self._run, name="lab-signals", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._ctx.push_thread_default()
        self._loop.run()

    def _on_signal(self, _conn, _sender, _path, _iface, member, params):
        now = time.monotonic()
        with self._cond:
            self._record(now, member, params.unpack()[0])
            self._cond.notify_all()

    def _record(self, t: float, member: str, path: str, keep: int = 10000) -> None:
        """Append a signal; past `keep`, forget the older half (a long run would
        grow without end). Marks count every signal ever recorded."""
        self.signals.append((t, member, path))
        if len(self.signals) > keep:
            drop = len(self.signals) // 2
            del self.signals[:drop]
            self._forgotten += drop

    def mark(self) -> int:
        """A position in the stream of signals, for wait(after=...)."""
        with self._cond:
            return self._forgotten + len(self.signals)

    def wait(self, member: str, path: str, after: int, timeout: float) -> float | None:
        """Monotonic time of the first `member` for `path` since `after`, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, m, p in self.signals[max(0, after - self._forgotten):]:
                    if m == member and p == path:
                        return t
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def call(self, path: str, interface: str, method: str, params=None, timeout: float = 2.0):
        reply = self.conn.call_sync(names.BUS_NAME, path, interface, method, params, None,
                                    Gio.DBusCallFlags.NONE, int(timeout * 1000), None)
        value = reply.unpack()
        return value[0] if len(value) == 1 else value

    def get_modules(self, timeout: float = 2.0) -> list[str]:
        return self.call(names.MANAGER_PATH, names.MANAGER_INTERFACE, "GetModules",
                         timeout=timeout)

    def state(self, path: str, timeout: float = 2.0) -> str | None:
        try:
            return self.call(path, "org.freedesktop.DBus.Properties", "Get",
                             GLib.Variant("(ss)", (names.MODULE_INTERFACE, "State")), timeout)
        except GLib.Error:
            return None

    def close(self) -> None:
        self.conn.signal_unsubscribe(self._sub)
        self._loop.quit()
        self._thread.join(5)
        self.conn.close_sync(None)


def process_stats(pid: int) -> dict | None:
    """fds, threads and memory (MB) of a live process, from /proc; None if it
    is gone. `rss_mb` is the whole resident set; `anon_mb` its private heap
    and stacks, where a leak shows; `file_mb` mapped files (libraries paged
    in as code paths are first used); `shmem_mb` shared memory (frame rings)."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
        kb = {}
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    kb[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return {"fds": fds, "threads": threads, "rss_mb": kb.get("VmRSS", 0) / 1024.0,
            "anon_mb": kb.get("RssAnon", 0) / 1024.0, "file_mb": kb.get("RssFile", 0) / 1024.0,
            "shmem_mb": kb.get("RssShmem", 0) / 1024.0}


class Lab:
    """A private bus, modcamd, a testbed and virtual modules, in a scratch directory."""

    def __init__(self, *, command: str = "python", idle_timeout: float = 2.0,
                 workdir: str | None = None, daemon_log_level: str = "warning"):
        if not preload_active():
            raise LabError("the umockdev preload is not active in this process; "
                           + PRELOAD_HINT.format(command=command))
        # A stale UMOCKDEV_DIR (from a parent's testbed) would make the preload
        # look into a directory that is not ours; the bed sets its own.
        os.environ.pop("UMOCKDEV_DIR", None)
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="modcam-lab-")
        self.capture_dir = os.path.join(self.workdir, "captures")
        self.modules: dict[str, VirtualModule] = {}
        self.plugged: set[str] = set()
        self.bed = VirtualUdevBed()
        self.env = _python_env(self.bed.env())
        self._bus: PrivateBus | None = None
        self.daemon: Modcamd | None = None
        self.watch: SignalWatch | None = None
        try:
            self._bus = PrivateBus(self.workdir)
            self.address = self._bus.address
            self.watch = SignalWatch(self.address)
            self.daemon = Modcamd(self.env, self.address, self.capture_dir,
                                  idle_timeout=idle_timeout, log_level=daemon_log_level)
            self._wait_owned()
        except BaseException:
            self.close()
            raise

    def _wait_owned(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.daemon.alive():
                raise LabError(f"modcamd exited with {self.daemon.proc.returncode}:\n"
                               f"{self.daemon.log[-3000:]}")
            try:
                self.watch.get_modules(timeout=1.0)
                return
            except GLib.Error:
                time.sleep(0.05)
        raise LabError("modcamd did not answer on the bus within "
                       f"{timeout:g} s:\n{self.daemon.log[-3000:]}")

    def add_module(self, serial: str, *, sensor=(256, 192), boot_seconds: float = 0.3
                   ) -> VirtualModule:
        control = os.path.join(self.workdir, f"{serial}.sock")
        vm = VirtualModule(self.env, serial, control, sensor=sensor, boot_seconds=boot_seconds)
        self.modules[serial] = vm
        return vm

    def plug(self, serial: str) -> float:
        """Send the module's add uevent; returns the monotonic time it was sent."""
        t = time.monotonic()
        self.bed.plug(serial, self.modules[serial].control)
        self.plugged.add(serial)
        return t

    def unplug(self, serial: str) -> float:
        t = time.monotonic()
        self.bed.unplug(serial)
        self.plugged.discard(serial)
        return t

    def power_cut(self, serial: str, timeout: float = 3.0) -> bool:
        """Power the unplugged module down, as pulling it off the host does.

        The virtual module keeps its power state when its control client goes
        (a dropped connection is not an unplug for it); hardware loses power
        with the magnets. Once modcamd has let go of the control socket (it
        takes one client at a time), the lab says so itself. False if it could
        not within `timeout` s.
        """
        from modcam.link.control_channel import ControlChannel, ControlError

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with ControlChannel(self.modules[serial].control, timeout=1.0) as channel:
                    channel.request("power", on=False)
                    return True
            except (OSError, ControlError, Exception):  # noqa: BLE001 - busy: retry
                time.sleep(0.01)
        return False

    def daemon_stats(self) -> dict | None:
        return process_stats(self.daemon.pid) if self.daemon else None

    def close(self) -> None:
        for serial in list(self.plugged):
            try:
                self.unplug(serial)
            except Exception:  # noqa: BLE001 - tearing down: best effort
                pass
        if self.daemon is not None:
            self.daemon.stop()
        for vm in self.modules.values():
            vm.stop()
        if self.watch is not None:
            self.watch.close()
        if self._bus is not None:
            self._bus.close()
        self.bed.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
