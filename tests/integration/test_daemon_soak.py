"""One modcamd through rounds of everything a day brings: two modules plugged,
claims, captures in every format, CaptureToFd, autofocus, bad arguments, a
client killed mid-capture, an unplug mid-capture, both modules pulled off.

After each round the daemon's fds and threads are back where they were after
the first (warm-up) round. `make test-asan` runs the same rounds over the
ASan/UBSan build of the native code. (Memory is bounded by modcam-stress over
hundreds of cycles, tests/integration/test_stress.py, and per D-Bus call by
test_daemon_lifecycle.py: over a few rounds the allocators' own retention
moves RSS by several MB either way.)"""
from __future__ import annotations

import os
import tempfile
import time

import pytest
from gi.repository import GLib

from modcam import names
from tests.support.daemon import error_name, start_calling_client

ERR = "org.modcam.Camera1.Error."
MI = names.MODULE_INTERFACE

def v(sig, value):
    return GLib.Variant(sig, value)


def daemon_figures(pid: int) -> dict:
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


def expect_error(c, path, method, args, signature, name):
    with pytest.raises(GLib.Error) as exc:
        c.module(method, path, args, signature)
    assert error_name(exc.value) == ERR + name, exc.value.message


def one_round(h) -> None:
    c = h.client
    a, b = h.plug("MC0901"), h.plug("MC0902")
    # Claims, a capture in every format, one into the caller's fd.
    c.module("Claim", a.path)
    res = c.module("Capture", a.path, [{"formats": v("as", ["jpeg", "png", "dng"])}], "a{sv}")
    assert [os.path.getsize(p) > 0 for p in res["paths"]] == [True] * 3
    with tempfile.TemporaryFile() as f:
        got = c.call(a.path, MI, "CaptureToFd", [0, {"format": v("s", "jpeg")}], "ha{sv}",
                     fds=[f.fileno()])
        assert got["size"] == os.fstat(f.fileno()).st_size > 0
    # Autofocus on the other module (it boots for it), then bad arguments.
    c.module("AutoFocus", b.path)
    expect_error(c, b.path, "SetControls", [{"AfMode": v("s", "bogus")}], "a{sv}",
                 "InvalidArgument")
    expect_error(c, b.path, "Capture", [{"formats": v("as", ["tiff"])}], "a{sv}",
                 "InvalidArgument")
    # A client killed while its capture waits for a stalled still.
    b.inject_fault("stall", seconds=1)
    proc, name = start_calling_client(h, b, "Capture")
    assert name.startswith(":")
    c.eventually(lambda: c.prop(b.path, "State") == "capturing", 10, "the client's capture")
    proc.kill()
    proc.wait(5)
    proc.stdout.close()
    # A capture cut off by its module being pulled.
    box = c.call_async(a.path, MI, "Capture", [{"formats": v("as", ["jpeg", "dng"])}], "a{sv}")
    c.eventually(lambda: c.prop(a.path, "State") == "capturing", 10, "the capture")
    mark = len(c.signals)
    a.unplug()
    c.eventually(lambda: box, 5, "the reply")
    assert box[0][0] == "error" and error_name(box[0][1]) == ERR + "Removed", box
    c.wait_signal("ModuleRemoved", after=mark)
    mark = len(c.signals)
    b.unplug()
    c.wait_signal("ModuleRemoved", after=mark)
    assert c.modules() == []
    for name in os.listdir(h.capture_dir):
        os.unlink(os.path.join(h.capture_dir, name))


def quiet(pid: int, seconds: float = 2.0) -> dict:
    """The daemon's figures once a round has wound down: the fewest fds seen
    over `seconds` (a killed client's capture or an unplug may still be
    closing its files when the round returns)."""
    best = daemon_figures(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = daemon_figures(pid)
        if now["fds"] < best["fds"]:
            best = now
    return best


def settled(h, pid: int, like: dict) -> dict:
    """The daemon's figures once they are back to `like`, or after 10 s."""
    try:
        h.client.eventually(lambda: daemon_figures(pid) == like, 10, "the baseline")
    except AssertionError:
        pass
    return daemon_figures(pid)


def uses_the_build_under_test(pid: int) -> None:
    """Under `make test-asan`, modcamd must run the sanitizer build."""
    build = os.environ.get("MODCAM_NATIVE_DIR")
    if build:
        with open(f"/proc/{pid}/maps") as maps:
            assert os.path.realpath(build) in maps.read()


def test_fds_and_threads_come_back_after_every_round(daemon_harness):
    h = daemon_harness.start(idle_timeout=1.0)
    pid = h.daemon.proc.pid
    one_round(h)                      # warm-up: the ISP's worker threads start lazily
    uses_the_build_under_test(pid)
    base = quiet(pid)
    for k in range(3):
        one_round(h)
        now = settled(h, pid, base)
        assert now == base, (k, base, now)
    assert h.daemon.proc.poll() is None
