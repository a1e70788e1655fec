"""Test helpers for anything that needs a umockdev testbed and child processes.

This module owns:

* ``eventually(predicate, timeout)``: poll until a condition holds.
* ``JsonLinesChild``: a child process whose stdout is JSON lines, read by a
  thread into a list, so tests wait for messages without the classic bug of
  select() on a buffered pipe (select says "nothing" while Python's buffer
  still holds lines).
* ``MonitorChild``: tests/support/udev_monitor_child.py, a pyudev monitor in a
  separate process under the testbed, with ``wait_event(action, serial=...)``.
* ``UdevTestbed``: a per-test testbed (one ``VirtualUdevBed``) that also
  starts children with the right environment and stops them all on close.

The pytest process itself must run under the umockdev preload; see
tests/conftest.py for why and how.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from modcam import names
from modcam.virtual.udev_device import VirtualUdevBed, preload_active

__all__ = ["eventually", "JsonLinesChild", "MonitorChild", "UdevTestbed", "VirtualUdevBed",
           "preload_active", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]
MONITOR_CHILD = Path(__file__).with_name("udev_monitor_child.py")


def eventually(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005,
               what: str | None = None) -> Any:
    """Return predicate()'s first truthy value; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for "
                                 f"{what or getattr(predicate, '__name__', 'condition')}")
        time.sleep(interval)


class JsonLinesChild:
    """A child process that prints JSON objects, one per line, on stdout.

    Its stdin is a pipe that stays open: closing it (``close()``) tells a
    well-behaved child to exit, and it also closes when the test process dies.
    """

    def __init__(self, argv: list[str], env: dict[str, str], name: str = "child"):
        self.name = name
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.messages: list[dict] = []
        self._next = 0                      # index of the first unconsumed message
        self._stderr: list[bytes] = []
        self._cond = threading.Condition()
        self._eof = False
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True, name=f"{name}-out"),
            threading.Thread(target=self._read_stderr, daemon=True, name=f"{name}-err"),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                msg = {"type": "text", "line": raw.decode(errors="replace").rstrip("\n")}
            with self._cond:
                self.messages.append(msg)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        for raw in self.proc.stderr:
            self._stderr.append(raw)

    @property
    def stderr_text(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 5.0,
                 what: str = "a message") -> dict:
        """Consume messages until one matches; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._next < len(self.messages):
                    msg = self.messages[self._next]
                    self._next += 1
                    if predicate(msg):
                        return msg
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    state = "exited" if self._eof else "still running"
                    raise AssertionError(
                        f"{self.name} ({state}, rc={self.proc.poll()}) sent no {what} within "
                        f"{timeout:.1f} s; last messages: {self.messages[-5:]}; "
                        f"stderr: {self.stderr_text[-2000:]!r}")
                self._cond.wait(remaining)

    def unconsumed(self) -> list[dict]:
        with self._cond:
            rest = self.messages[self._next:]
            self._next = len(self.messages)
            return rest

    def close(self, timeout: float = 5.0) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout)
        # The readers end at EOF, which follows the child's exit; only then
        # may their pipes be closed (closing under a reading thread races).
        for reader in self._readers:
            reader.join(timeout)
        for pipe in (self.proc.stdout, self.proc.stderr):
            pipe.close()
        return rc


class MonitorChild(JsonLinesChild):
    """udev_monitor_child.py: a pyudev monitor in a separate process."""

    def __init__(self, env: dict[str, str], mode: str = "glib",
                 subsystem: str = names.UDEV_SUBSYSTEM, delay: float = 0.0,
                 timeout: float = 15.0):
        argv = [sys.executable, str(MONITOR_CHILD), "--mode", mode,
                "--subsystem", subsystem, "--delay", str(delay)]
        super().__init__(argv, env, name=f"udev monitor ({mode})")
        # Ready means: its event socket is bound in the testbed, and the
        # coldplug lines (if any) precede this message.
        self.ready = self.wait_for(lambda m: m.get("type") == "ready", timeout, "ready line")
        self.coldplug = [m for m in self.messages if m.get("type") == "coldplug"]

    def events(self) -> list[dict]:
        with self._cond:
            return [m for m in self.messages if m.get("type") == "uevent"]

    def wait_event(self, action: str, *, serial: str | None = None,
                   sys_path: str | None = None, timeout: float = 5.0) -> dict:
        def match(msg: dict) -> bool:
            return (msg.get("type") == "uevent" and msg.get("action") == action
                    and (serial is None
                         or msg["properties"].get(names.PROP_SERIAL) == serial)
                    and (sys_path is None or msg.get("sys_path") == sys_path))
        return self.wait_for(match, timeout, f"{action!r} uevent (serial={serial}, "
                                             f"sys_path={sys_path})")


class UdevTestbed:
    """One testbed per test, plus the child processes that live in it."""

    def __init__(self, backpressure_timeout: float = 5.0):
        self.bed = VirtualUdevBed(backpressure_timeout=backpressure_timeout)
        self._children: list[JsonLinesChild] = []
        self._popens: list[subprocess.Popen] = []

    # Thin pass-throughs, so tests read as "udev_bed.plug(...)".
    def plug(self, serial: str, control_path: str | None = None, **kw) -> str:
        if control_path is None:
            control_path = os.path.join(self.bed.root_dir, f"control-{serial}.sock")
        return self.bed.plug(serial, control_path, **kw)

    def unplug(self, target: str) -> bool:
        return self.bed.unplug(target)

    @property
    def root_dir(self) -> str:
        return self.bed.root_dir

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The testbed env, plus PYTHONPATH so children import this checkout's code."""
        env = self.bed.env()
        paths = [str(REPO_ROOT / "daemon"), str(REPO_ROOT)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.update(extra or {})
        return env

    def start_monitor(self, mode: str = "glib", **kw) -> MonitorChild:
        child = MonitorChild(self.env(), mode=mode, **kw)
        self._children.append(child)
        return child

    def spawn_python(self, args: list[str], env: dict[str, str] | None = None,
                     **popen_kw) -> subprocess.Popen:
        """Start `python ARGS...` under the preload, seeing this testbed."""
        proc = subprocess.Popen([sys.executable, *args], env=env or self.env(), **popen_kw)
        self._popens.append(proc)
        return proc

    def run_python(self, args: list[str], timeout: float = 120.0,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `python ARGS...` under the preload to completion, capturing its output."""
        return subprocess.run([sys.executable, *args], env=env or self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        # Children first: a listener that is gone cannot stall a uevent.
        for child in self._children:
            child.close()
        for proc in self._popens:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.bed.close()

    def __enter__(self) -> "UdevTestbed":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
