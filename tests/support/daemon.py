"""modcamd under test: a private dbus-daemon, the daemon as its own process,
virtual modules as their own processes, plugged with real umockdev uevents.

* ``PrivateBus`` (modcam.lab): a dbus-daemon from a generated config
  (session-like: any name may be owned), its address, stopped on close.
* ``BusClient``: a Gio connection from the test process with a signal
  recorder; ``call()``, ``prop()``, ``wait_signal()`` and ``eventually()``
  iterate the GLib main context, so signals are seen without sleeps.
* ``VirtualModuleProcess``: `modcam-virtual-module run` in a child process,
  plugged into the test's umockdev testbed with ``plug()``; the focus ring
  and faults are driven through its simulation socket.
* ``ModcamdProcess``: `python -m modcam.service` against that bus and
  testbed; its stderr is kept and shown when a test fails.
* ``DaemonHarness``: the four together, for the ``modcamd`` fixture.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

from gi.repository import Gio, GLib

from modcam import names
from modcam.lab import PrivateBus
from modcam.link.control_channel import ControlChannel
from tests.support.testbed import UdevTestbed

class BusClient:
    """A bus connection in the test process that records modcamd's signals."""

    def __init__(self, address: str):
        flags = (Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
                 | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION)
        self.conn = Gio.DBusConnection.new_for_address_sync(address, flags, None, None)
        self.signals: list[tuple] = []      # (monotonic time, path, interface, member, args)
        self._sub = self.conn.signal_subscribe(None, None, None, None, None,
                                               Gio.DBusSignalFlags.NONE, self._on_signal)

    @property
    def unique_name(self) -> str:
        return self.conn.get_unique_name()

    def _on_signal(self, _conn, sender, path, iface, member, params):
        if iface == "org.freedesktop.DBus":
            return
        self.signals.append((time.monotonic(), path, iface, member, params.unpack()))

    def pump(self, seconds: float = 0.0) -> None:
        ctx = GLib.MainContext.default()
        deadline = time.monotonic() + seconds
        while True:
            while ctx.iteration(False):
                pass
            if time.monotonic() >= deadline:
                return
            time.sleep(0.002)

    def eventually(self, predicate, timeout: float = 10.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.002)

    def wait_signal(self, member: str, path: str | None = None, after: int = 0,
                    timeout: float = 10.0, match=None) -> tuple:
        def find():
            for sig in self.signals[after:]:
                if sig[3] == member and (path is None or sig[1] == path) \
                        and (match is None or match(sig[4])):
                    return sig
            return None
        return self.eventually(find, timeout, f"signal {member} on {path}")

    def call(self, path: str, interface: str, method: str, args=None, signature: str = "",
             timeout: float = 60.0, fds: list[int] | None = None):
        params = GLib.Variant(f"({signature})", tuple(args)) if signature else None
        box = []
        # new_from_array takes ownership of what it is given: hand it copies.
        fd_list = Gio.UnixFDList.new_from_array([os.dup(fd) for fd in fds]) if fds else None
        self.conn.call_with_unix_fd_list(
            names.BUS_NAME, path, interface, method, params, None, Gio.DBusCallFlags.NONE,
            int(timeout * 1000), fd_list, None, lambda c, r: box.append(r))
        self.eventually(lambda: box, timeout + 5, f"reply to {method}")
        result, _out_fds = self.conn.call_with_unix_fd_list_finish(box[0])
        value = result.unpack()
        return value[0] if len(value) == 1 else (value or None)

    def call_async(self, path, interface, method, args=None, signature="", timeout=60.0):
        """Send now; returns a list that gets ("ok", value) or ("error", GLib.Error)."""
        params = GLib.Variant(f"({signature})", tuple(args)) if signature else None
        box: list = []

        def done(conn, res):
            try:
                v = conn.call_finish(res).unpack()
                box.append(("ok", v[0] if len(v) == 1 else None))
            except GLib.Error as exc:
                box.append(("error", exc))
        self.conn.call(names.BUS_NAME, path, interface, method, params, None,
                       Gio.DBusCallFlags.NONE, int(timeout * 1000), None, done)
        return box

    def prop(self, path: str, name: str, interface: str = names.MODULE_INTERFACE):
        v = self.conn.call_sync(names.BUS_NAME, path, "org.freedesktop.DBus.Properties", "Get",
                                GLib.Variant("(ss)", (interface, name)), None,
                                Gio.DBusCallFlags.NONE, 5000, None)
        return v.unpack()[0]

    def module(self, method: str, path: str, args=None, signature="", **kw):
        return self.call(path, names.MODULE_INTERFACE, method, args, signature, **kw)

    def modules(self) -> list[str]:
        return self.call(names.MANAGER_PATH, names.MANAGER_INTERFACE, "GetModules")

    def close(self) -> None:
        self.conn.signal_unsubscribe(self._sub)
        self.conn.close_sync(None)


def error_name(exc: GLib.Error) -> str:
    return Gio.DBusError.get_remote_error(exc) or ""


class VirtualModuleProcess:
    def __init__(self, bed: UdevTestbed, serial: str, *, sensor=(1152, 864),
                 boot_seconds: float = 0.3, extra_args=()):
        self.bed, self.serial = bed, serial
        self.control = os.path.join(bed.root_dir, f"{serial}.sock")
        argv = [sys.executable, "-m", "modcam.virtual.cli", "run", "--serial", serial,
                "--control", self.control, "--sensor", f"{sensor[0]}x{sensor[1]}",
                "--boot-seconds", str(boot_seconds), *extra_args]
        self.proc = subprocess.Popen(argv, env=bed.env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self._stderr: list[str] = []
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()
        for line in self.proc.stdout:
            if line.strip() == "MODCAM_READY=1":
                break
        else:
            raise RuntimeError(f"virtual module {serial} did not start: {self.stderr}")
        self.sys_path: str | None = None

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    @property
    def path(self) -> str:
        return f"{names.MODULES_PATH}/{self.serial}"

    def plug(self) -> str:
        self.sys_path = self.bed.plug(self.serial, self.control)
        return self.sys_path

    def unplug(self) -> None:
        if self.sys_path is not None:
            self.bed.unplug(self.serial)
            self.sys_path = None

    def sim(self, op: str, **args) -> dict:
        with ControlChannel(self.control + ".sim", timeout=5.0) as ch:
            return ch.request(op, **args)

    def turn_focus_ring(self, position: float) -> dict:
        return self.sim("sim.turn_focus_ring", position=position)

    def inject_fault(self, kind: str, **params) -> dict:
        return self.sim("sim.inject_fault", kind=kind, **params)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


class ModcamdProcess:
    def __init__(self, bed: UdevTestbed, bus_address: str, capture_dir: str, *,
                 idle_timeout: float | None = 30.0, boot_timeout: float = 10.0, extra_args=(),
                 env_extra: dict | None = None):
        argv = [sys.executable, "-m", "modcam.service", *extra_args, "--bus", bus_address,
                "--capture-dir", capture_dir, "--boot-timeout", str(boot_timeout),
                "--log-level", "debug"]
        if idle_timeout is not None:
            argv += ["--idle-timeout", str(idle_timeout)]
        self.proc = subprocess.Popen(argv, env=bed.env(env_extra), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self._lines)

    def stop(self, sig=None, timeout: float = 10.0) -> int:
        import signal as _signal
        if self.proc.poll() is None:
            self.proc.send_signal(sig or _signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


class DaemonHarness:
    """A private bus, modcamd on it, a testbed and virtual modules."""

    def __init__(self, bed: UdevTestbed, **daemon_kw):
        self.bed = bed
        self.tmp = tempfile.TemporaryDirectory(prefix="modcamd-test-")
        self.capture_dir = os.path.join(self.tmp.name, "captures")
        self.bus = PrivateBus(self.tmp.name)
        self.client = BusClient(self.bus.address)
        self.modules: dict[str, VirtualModuleProcess] = {}
        self.daemon: ModcamdProcess | None = None
        self.daemon_kw = daemon_kw

    @property
    def env(self) -> dict:
        """For child processes (modcamctl, clients): the testbed, the bus, this checkout."""
        return self.bed.env({"MODCAM_BUS": self.bus.address})

    @property
    def bus_address(self) -> str:
        return self.bus.address

    def log(self) -> str:
        return self.daemon.log if self.daemon is not None else ""

    def start(self, **kw) -> "DaemonHarness":
        self.daemon = ModcamdProcess(self.bed, self.bus.address, self.capture_dir,
                                     **{**self.daemon_kw, **kw})
        self.wait_owned()
        return self

    def wait_owned(self, timeout: float = 20.0) -> None:
        def owned():
            if self.daemon.proc.poll() is not None:
                raise AssertionError(f"modcamd exited with {self.daemon.proc.returncode}:\n"
                                     f"{self.daemon.log}")
            try:
                self.client.conn.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus",
                                           "org.freedesktop.DBus", "GetNameOwner",
                                           GLib.Variant("(s)", (names.BUS_NAME,)), None,
                                           Gio.DBusCallFlags.NONE, 1000, None)
                return True
            except GLib.Error:
                return False
        self.client.eventually(owned, timeout, "modcamd to own its name")

    def add_module(self, serial: str = "MC0001", **kw) -> VirtualModuleProcess:
        vm = VirtualModuleProcess(self.bed, serial, **kw)
        self.modules[serial] = vm
        return vm

    def plug(self, serial: str = "MC0001", wait: bool = True, **kw) -> VirtualModuleProcess:
        vm = self.modules.get(serial) or self.add_module(serial, **kw)
        mark = len(self.client.signals)
        vm.plug()
        if wait:
            self.client.wait_signal("ModuleAdded", after=mark)
            self.client.eventually(lambda: self.client.prop(vm.path, "Model"), 10,
                                   "the module's identity")
        return vm

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        for vm in self.modules.values():
            vm.close()
        self.client.close()
        self.bus.close()
        self.tmp.cleanup()


CALLING_CLIENT = r"""
import sys
from gi.repository import Gio, GLib
conn = Gio.DBusConnection.new_for_address_sync(sys.argv[1],
    Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
    None, None)
print(conn.get_unique_name(), flush=True)
args = GLib.Variant("(a{sv})", ({},)) if sys.argv[3] == "Capture" else None
conn.call_sync("org.modcam.Camera1", sys.argv[2], "org.modcam.Camera1.Module", sys.argv[3],
               args, None, 0, 60000, None)
print("replied", flush=True)
"""


def start_calling_client(h: "DaemonHarness", vm: VirtualModuleProcess,
                         method: str) -> tuple[subprocess.Popen, str]:
    """A client process that calls `method` (Capture with no options, or Claim)
    on `vm` and waits for the reply; returns it and its unique bus name, for
    tests that kill a caller mid-call."""
    proc = subprocess.Popen([sys.executable, "-c", CALLING_CLIENT, h.bus_address, vm.path,
                             method], env=h.env, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()
