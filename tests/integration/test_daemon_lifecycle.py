"""modcamd as a systemd service and under pulls: notify, config, unplug at any moment."""
import os
import socket
import subprocess
import sys
import time

import pytest
from gi.repository import GLib

from modcam import names
from tests.support.daemon import error_name
from tests.support.timing import bound

ERR = names.ERROR_PREFIX


def fds_and_threads(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.parametrize("moment", ["booting", "streaming", "capturing"])
def test_unplug_at_any_moment_fails_pending_calls_with_removed(daemon_harness, moment):
    modcamd = daemon_harness.start(idle_timeout=1.0)
    c = modcamd.client
    pid = modcamd.daemon.proc.pid
    vm = modcamd.add_module("MC0301", sensor=(11552, 8672), boot_seconds=0.5,
                            extra_args=("--source", "synthetic"))
    vm.plug()
    c.wait_signal("ModuleAdded")
    c.eventually(lambda: c.prop(vm.path, "Sensor"), 10, "identity")
    # One capture first: the ring, the frame bank and the ISP's fixed pool of
    # worker threads exist from then on; anything beyond that is a leak.
    c.module("Capture", vm.path, [{"readout_mode": GLib.Variant("s", "binned")}], "a{sv}")
    for f in os.listdir(modcamd.capture_dir):
        os.unlink(os.path.join(modcamd.capture_dir, f))
    before = fds_and_threads(pid)
    if moment in ("booting", "streaming"):        # an autofocus cycle streams binned frames
        if moment == "booting":
            c.eventually(lambda: c.prop(vm.path, "State") == "off", 5, "the idle power-down")
        pending = c.call_async(vm.path, names.MODULE_INTERFACE, "AutoFocus")
        wait_for = moment
    else:
        pending = c.call_async(vm.path, names.MODULE_INTERFACE, "Capture",
                               [{"formats": GLib.Variant("as", ["jpeg", "dng"])}], "a{sv}")
        wait_for = "capturing"
    c.eventually(lambda: c.prop(vm.path, "State") == wait_for, 20, wait_for)
    if moment == "capturing":
        time.sleep(0.3)                        # well into the ISP
    t0 = time.monotonic()
    vm.unplug()
    c.eventually(lambda: pending, 5, "the reply")
    assert time.monotonic() - t0 < bound(0.1) + 0.05   # 100 ms, plus the test's own polling
    kind, err = pending[0]
    assert kind == "error" and error_name(err) == ERR + "Removed", pending
    c.wait_signal("ModuleRemoved")
    # nothing left behind once the ISP has let go (it is told to stop)
    c.eventually(lambda: fds_and_threads(pid)[0] <= before[0], 10, "fds back")
    c.eventually(lambda: fds_and_threads(pid)[1] <= before[1], 10, "threads back")
    assert not [f for f in os.listdir(modcamd.capture_dir)], "no partial file"
    # and the next plug works
    vm.plug()
    c.eventually(lambda: c.modules() == [vm.path], 10, "the module back")
    assert c.module("Capture", vm.path, [{"readout_mode": GLib.Variant("s", "binned")}],
                    "a{sv}")["paths"]


def test_sd_notify_ready_status_and_watchdog(daemon_harness, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(0.1)
    messages = []

    def drain(until: float):
        while time.monotonic() < until:
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
    h = daemon_harness
    h.start(env_extra={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    drain(time.monotonic() + 1.0)
    vm = h.plug("MC0302")
    h.client.module("Claim", vm.path)
    drain(time.monotonic() + 0.5)
    text = "\n".join(messages)
    assert "READY=1" in text
    assert "STATUS=no module attached" in text
    assert "STATUS=1 module(s): MC0302 off" in text
    assert "STATUS=1 module(s): MC0302 ready" in text
    assert text.count("WATCHDOG=1") >= 4
    h.daemon.stop()
    drain(time.monotonic() + 0.3)
    assert "STOPPING=1" in "\n".join(messages)
    sock.close()
    assert vm


def test_a_bad_config_stops_the_start_with_one_sentence(tmp_path):
    conf = tmp_path / "modcamd.toml"
    conf.write_text('idle_timeout = "soon"\n')
    run = subprocess.run([sys.executable, "-m", "modcam.service", "--config", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip() == (f"modcamd: {conf}: idle_timeout must be a number of seconds, "
                                  "not 'soon'")


def test_config_file_values_reach_the_bus(daemon_harness, tmp_path):
    conf = tmp_path / "modcamd.toml"
    conf.write_text("idle_timeout = 7\n")
    h = daemon_harness
    h.start(extra_args=("--config", str(conf)), idle_timeout=None)
    vm = h.plug("MC0303")
    assert h.client.prop(vm.path, "IdleTimeout") == 7


@pytest.mark.rss
def test_method_calls_do_not_grow_the_daemon(modcamd):
    """Each D-Bus method call used to leak its message (~2.4 KB, a GLib < 2.84
    closure reference): 3000 calls must not grow modcamd's private memory."""
    c = modcamd.client
    vm = modcamd.plug("MC0304")
    pid = modcamd.daemon.proc.pid

    def rss_anon_kb() -> int:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon"))

    def calls(n: int) -> None:
        for i in range(n):
            try:
                c.module("SetControls", vm.path,
                         [{"AfMode": GLib.Variant("s", "manual" if i % 2 else "bogus")}], "a{sv}")
            except GLib.Error:
                pass
    calls(500)                                   # warm caches and allocator pools
    before = rss_anon_kb()
    calls(3000)
    growth_mb = (rss_anon_kb() - before) / 1024
    assert growth_mb < 2.0, f"{growth_mb:.1f} MB after 3000 calls"
