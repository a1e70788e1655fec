"""Hot-plug of virtual modcam modules through a real umockdev testbed.

Owns the proof that the udev identity in docs/udev-interface.md reaches a
pyudev consumer in a *separate process* (tests/support/udev_monitor_child.py,
as the daemon will be): add and remove arrive with the right properties and
attributes, several modules coexist, coldplug enumeration works, 50 paced
plug/unplug cycles lose nothing (and how long each event takes), duplicate
removes and bursts are survived, and the preload leaves ordinary things alone.
"""

import json
import os
import socket
import statistics
import subprocess
import textwrap
import time

import numpy as np
import pytest

from modcam import names
from tests.support.testbed import eventually

IDENTITY_PROPS = (names.PROP_MODULE, names.PROP_SERIAL, names.PROP_CONTROL,
                  names.PROP_PROTOCOL, names.PROP_ID_VENDOR, names.PROP_ID_MODEL)


def _check_add(event, serial, control, vendor="modcam", model="Virtual MC-100", fw="0.1.0"):
    props = event["properties"]
    assert event["subsystem"] == names.UDEV_SUBSYSTEM
    assert event["device_type"] == names.UDEV_DEVTYPE
    assert props[names.PROP_MODULE] == "1"
    assert props[names.PROP_SERIAL] == serial
    assert props[names.PROP_CONTROL] == control
    assert props[names.PROP_PROTOCOL] == str(names.PROTOCOL_VERSION)
    assert props[names.PROP_ID_VENDOR] == vendor
    assert props[names.PROP_ID_MODEL] == model
    assert props[names.PROP_ID_REVISION] == fw
    # add_device writes the attributes before it sends "add": always there.
    assert event["attributes"] == {names.ATTR_SERIAL: serial, names.ATTR_VENDOR: vendor,
                                   names.ATTR_MODEL: model, names.ATTR_FIRMWARE: fw}


@pytest.mark.parametrize("mode", ["glib", "poll", "observer"])
def test_plug_and_unplug_reach_a_monitor_in_another_process(udev_bed, mode):
    monitor = udev_bed.start_monitor(mode)
    assert monitor.ready["umockdev_dir"] == udev_bed.root_dir
    assert monitor.coldplug == []

    control = os.path.join(udev_bed.root_dir, "mc.sock")
    syspath = udev_bed.plug("MC0001", control, vendor="Acme Optics", model="MC-100",
                            firmware="1.2.3")
    assert syspath == "/sys/devices/modcam0"
    added = monitor.wait_event("add", serial="MC0001")
    assert added["sys_path"] == syspath and added["sys_name"] == "modcam0"
    _check_add(added, "MC0001", control, "Acme Optics", "MC-100", "1.2.3")

    assert udev_bed.unplug("MC0001") is True
    removed = monitor.wait_event("remove", serial="MC0001")
    assert removed["sys_path"] == syspath
    # On remove only the properties are reliable (sysfs may already be gone),
    # and they are complete: the daemon identifies the module from them.
    for key in IDENTITY_PROPS:
        assert removed["properties"][key] == added["properties"][key]
    assert removed["seqnum"] > added["seqnum"]
    assert [e["action"] for e in monitor.events()] == ["add", "remove"]


def test_several_modules_each_with_its_own_serial(udev_bed):
    monitor = udev_bed.start_monitor()
    serials = ["MC-A", "MC-B", "MC-C"]
    paths = {}
    for serial in serials:
        paths[serial] = udev_bed.plug(serial)
        event = monitor.wait_event("add", serial=serial)
        _check_add(event, serial, os.path.join(udev_bed.root_dir, f"control-{serial}.sock"))
    assert sorted(paths.values()) == [f"/sys/devices/modcam{i}" for i in range(3)]
    assert udev_bed.bed.modules() == paths

    # Unplug the middle one by syspath; its index is reused by the next plug,
    # as the kernel would, for a different serial.
    assert udev_bed.unplug(paths["MC-B"])
    assert monitor.wait_event("remove", sys_path=paths["MC-B"])["properties"][
        names.PROP_SERIAL] == "MC-B"
    assert udev_bed.plug("MC-D") == paths["MC-B"]
    assert monitor.wait_event("add", serial="MC-D")["sys_path"] == paths["MC-B"]

    # A fresh observer enumerates exactly the three modules now present.
    late = udev_bed.start_monitor()
    assert sorted(m["properties"][names.PROP_SERIAL] for m in late.coldplug) == \
        ["MC-A", "MC-C", "MC-D"]
    with pytest.raises(ValueError, match="already plugged"):
        udev_bed.plug("MC-A")


def test_every_listener_process_gets_every_event(udev_bed):
    # Three small Python processes would all bind $UMOCKDEV_DIR/event3 and
    # steal each other's events without start_monitor()'s fd check.
    monitors = [udev_bed.start_monitor(mode) for mode in ("glib", "poll", "observer")]
    eventually(lambda: len([n for n in os.listdir(udev_bed.root_dir) if n.startswith("event")])
               == 3, timeout=2, what="three distinct event sockets in the testbed")
    udev_bed.plug("FAN1")
    udev_bed.unplug("FAN1")
    for monitor in monitors:
        monitor.wait_event("remove", serial="FAN1")
        assert [e["action"] for e in monitor.events()] == ["add", "remove"]


def test_coldplug_module_present_before_the_monitor_starts(udev_bed):
    control = os.path.join(udev_bed.root_dir, "cold.sock")
    syspath = udev_bed.plug("COLD1", control)      # nobody listening yet: no abort
    monitor = udev_bed.start_monitor()
    assert len(monitor.coldplug) == 1
    cold = monitor.coldplug[0]
    assert cold["sys_path"] == syspath and cold["action"] is None
    assert cold["properties"][names.PROP_SERIAL] == "COLD1"
    assert cold["properties"][names.PROP_CONTROL] == control
    assert cold["attributes"][names.ATTR_SERIAL] == "COLD1"
    assert monitor.events() == []                  # the add was before it existed
    udev_bed.unplug("COLD1")
    monitor.wait_event("remove", serial="COLD1")


def test_fifty_paced_cycles_lose_nothing_and_report_latency(udev_bed):
    monitor = udev_bed.start_monitor("glib")
    add_ms, remove_ms = [], []
    for i in range(50):
        serial = f"CYC{i:03d}"
        t0 = time.monotonic()
        syspath = udev_bed.plug(serial)
        add_ms.append((monitor.wait_event("add", serial=serial)["t"] - t0) * 1e3)
        t0 = time.monotonic()
        udev_bed.unplug(syspath)
        remove_ms.append((monitor.wait_event("remove", serial=serial)["t"] - t0) * 1e3)
    events = monitor.events()
    assert [e["action"] for e in events] == ["add", "remove"] * 50
    seqnums = [e["seqnum"] for e in events]
    assert seqnums == sorted(seqnums) and len(set(seqnums)) == 100
    assert udev_bed.bed.modules() == {}

    def pct(values, q):
        return float(np.percentile(values, q))
    figures = {"add_p50_ms": pct(add_ms, 50), "add_p99_ms": pct(add_ms, 99),
               "remove_p50_ms": pct(remove_ms, 50), "remove_p99_ms": pct(remove_ms, 99),
               "add_mean_ms": statistics.fmean(add_ms)}
    print("udev hot-plug latency plug()->child:", json.dumps(figures))
    # The design asks for "tens of milliseconds" from udev event to D-Bus
    # signal; the udev leg alone must stay well inside that.
    assert figures["add_p50_ms"] < 20 and figures["remove_p50_ms"] < 20
    assert figures["add_p99_ms"] < 250 and figures["remove_p99_ms"] < 250


def test_duplicate_remove_is_tolerated(udev_bed):
    monitor = udev_bed.start_monitor()
    syspath = udev_bed.plug("DUP1")
    monitor.wait_event("add", serial="DUP1")
    # A stray extra "remove" while the device still exists (what a future
    # umockdev that sends "remove" itself would produce) ...
    assert udev_bed.bed.uevent("DUP1", "remove") is True
    monitor.wait_event("remove", serial="DUP1")
    # ... then the real unplug: a second remove for the same device.
    assert udev_bed.unplug("DUP1") is True
    monitor.wait_event("remove", serial="DUP1")
    # Repeats are no-ops, never errors, and send nothing.
    assert udev_bed.unplug("DUP1") is False
    assert udev_bed.unplug(syspath) is False
    assert udev_bed.bed.uevent(syspath, "remove") is False
    assert udev_bed.unplug("NEVER-PLUGGED") is False
    udev_bed.plug("DUP2")
    monitor.wait_event("add", serial="DUP2")
    assert [e["action"] for e in monitor.events()] == ["add", "remove", "remove", "add"]


def test_change_event_carries_updated_attributes(udev_bed):
    monitor = udev_bed.start_monitor()
    udev_bed.plug("CHG1", firmware="1.0.0")
    monitor.wait_event("add", serial="CHG1")
    assert udev_bed.bed.change("CHG1", attributes={names.ATTR_FIRMWARE: "1.0.1"},
                               properties={names.PROP_ID_REVISION: "1.0.1"})
    changed = monitor.wait_event("change", serial="CHG1")
    assert changed["attributes"][names.ATTR_FIRMWARE] == "1.0.1"
    assert changed["properties"][names.PROP_ID_REVISION] == "1.0.1"


_BURST_DRIVER = textwrap.dedent("""
    import json, sys
    from tests.support.testbed import UdevTestbed
    with UdevTestbed() as bed:
        slow = bed.start_monitor("glib", delay=0.01)  # 10 ms per event: queue fills
        bed.plug("BURST")
        for _ in range(40):
            bed.bed.uevent("BURST", "change")         # unpaced by the caller
        bed.unplug("BURST")
        slow.wait_event("remove", serial="BURST", timeout=20)
        print(json.dumps([e["action"] for e in slow.events()]))
""")


def test_unpaced_burst_is_throttled_instead_of_aborting(udev_bed):
    # Without the bed's backpressure, umockdev aborts the sending process at
    # the ~11th queued event.  Run the burst in its own process so that a
    # regression shows up as a failed test, not a dead pytest.
    result = udev_bed.run_python(["-c", _BURST_DRIVER], timeout=60)
    assert result.returncode == 0, result.stderr
    actions = json.loads(result.stdout.strip().splitlines()[-1])
    assert actions == ["add"] + ["change"] * 40 + ["remove"]


_STALL_DRIVER = textwrap.dedent("""
    import json, os, signal
    from modcam.virtual.udev_device import UeventBackpressureError
    from tests.support.testbed import UdevTestbed
    with UdevTestbed(backpressure_timeout=0.5) as bed:
        live = bed.start_monitor()
        dead = bed.start_monitor()
        dead.proc.kill()                     # leaves its socket file behind
        dead.proc.wait()
        stopped = bed.start_monitor()
        os.kill(stopped.proc.pid, signal.SIGSTOP)
        error, sent = None, 0
        try:
            bed.plug("STALL")
            sent += 1
            for _ in range(30):
                bed.bed.uevent("STALL", "change")
                sent += 1
        except UeventBackpressureError as exc:
            error = str(exc)
        os.kill(stopped.proc.pid, signal.SIGCONT)
        for child in (live, stopped):        # both get everything that was sent
            for _ in range(sent):
                child.wait_for(lambda m: m.get("type") == "uevent", 10)
        print(json.dumps({"sent": sent, "error": error,
                          "live": len(live.events()), "stopped": len(stopped.events())}))
""")


def test_stopped_listener_raises_instead_of_aborting_and_dead_one_is_skipped(udev_bed):
    result = udev_bed.run_python(["-c", _STALL_DRIVER], timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # A datagram queue holds max_dgram_qlen + 1 (11) events; the 12th would abort.
    assert 5 <= report["sent"] < 31
    assert report["error"] and "has not read its queued events" in report["error"]
    assert report["live"] == report["stopped"] == report["sent"]


def test_bed_refuses_to_start_without_the_preload(udev_bed):
    env = udev_bed.env()
    env.pop("LD_PRELOAD")
    env.pop("UMOCKDEV_DIR")
    code = ("from modcam.virtual.udev_device import VirtualUdevBed\n"
            "try:\n    VirtualUdevBed()\nexcept RuntimeError as e:\n    print('refused:', e)\n")
    result = udev_bed.run_python(["-c", code], env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "umockdev-wrapper" in result.stdout


def test_invalid_identity_is_rejected(udev_bed):
    with pytest.raises(ValueError):
        udev_bed.plug("bad serial with spaces")
    with pytest.raises(ValueError):
        udev_bed.plug("OK1", "relative/path.sock")
    with pytest.raises(ValueError):
        udev_bed.plug("OK2", "/tmp/" + "x" * 200)
    with pytest.raises(ValueError):
        udev_bed.plug("OK3", vendor="line\nbreak")
    assert udev_bed.bed.modules() == {}


def test_preload_with_a_live_testbed_leaves_normal_things_alone(udev_bed, tmp_path):
    udev_bed.plug("HARMLESS")            # the testbed now redirects this process's /sys
    assert os.path.isdir("/sys/devices/modcam0")
    assert not os.path.exists("/sys/fs/cgroup")   # a gotcha worth knowing, see docs
    # numpy (its BLAS sizes thread pools from the CPU count)
    a = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000)
    assert float((a @ np.eye(1000)).sum()) == float(a.sum())
    assert os.cpu_count() == len(os.sched_getaffinity(0)) >= 1
    # subprocesses (they inherit the preload and see the same testbed)
    out = subprocess.run(["sh", "-c", "echo ok; ls /sys/devices"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] == "ok" and "modcam0" in out
    # sockets: a UNIX stream pair, a UNIX socket on a path, TCP on loopback
    left, right = socket.socketpair()
    left.sendall(b"ping")
    assert right.recv(4) == b"ping"
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as srv, socket.socket(socket.AF_UNIX) as cli:
        srv.bind(path)
        srv.listen()
        cli.connect(path)
        conn, _ = srv.accept()
        cli.sendall(b"hello")
        assert conn.recv(5) == b"hello"
        conn.close()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        with socket.create_connection(srv.getsockname()) as cli:
            conn, _ = srv.accept()
            cli.sendall(b"tcp")
            assert conn.recv(3) == b"tcp"
            conn.close()
    # POSIX shared memory under /dev/shm, and real /dev and /proc entries
    from multiprocessing import shared_memory
    shm = shared_memory.SharedMemory(create=True, size=1 << 20)
    shm.buf[:4] = b"ring"
    again = shared_memory.SharedMemory(name=shm.name)
    assert bytes(again.buf[:4]) == b"ring"
    again.close()
    shm.close()
    shm.unlink()
    with open("/dev/null", "wb") as null:
        null.write(b"x")
    with open("/proc/self/status") as status:
        assert status.read().startswith("Name:")
    # a Python child as a file, reading the testbed through pyudev
    code = ("import pyudev; print(sorted(d.properties['MODCAM_SERIAL'] for d in "
            "pyudev.Context().list_devices(subsystem='modcam')))")
    assert udev_bed.run_python(["-c", code]).stdout.strip() == "['HARMLESS']"
    left.close()
    right.close()


@pytest.mark.umockdev
def test_closing_the_bed_removes_the_testbed():
    from gi.repository import GLib
    from tests.support.testbed import UdevTestbed
    with UdevTestbed() as first:
        root = first.root_dir
        first.plug("GONE1")
        assert GLib.getenv("UMOCKDEV_DIR") == root
        with pytest.raises(RuntimeError, match="still open"):
            UdevTestbed()
    assert not os.path.exists(root)
    assert GLib.getenv("UMOCKDEV_DIR") is None
    assert os.path.isdir("/sys/class") and not os.path.exists("/sys/devices/modcam0")
    with UdevTestbed() as second:        # a new bed can open after the first closed
        assert second.root_dir != root

