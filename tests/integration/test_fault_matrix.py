"""The fault matrix: every fault the virtual module injects (docs/control-protocol.md,
"Faults") and the host's own (a full or read-only capture directory, a client that
vanishes, SIGTERM, a corrupted ring region), at the moments that matter.

Each case checks the same four things: the pending call ends with a documented
outcome (success or one of org.modcam.Camera1.Error.*), nothing is lost (no
partial file, no claim left behind, counters that add up), modcamd is still up
and answering, and the next capture works wherever the module is still there.

Faults that act on the stream or the still are made deterministic by holding
the frames back first (`stall`): the call is then certainly in flight when the
fault lands, whatever the machine's speed. Sensors are small (1152x864) except
where 100 MP is the point (an ISP that runs long enough to be interrupted, the
watchdog under load).

A corrupted ring region is not a fault the virtual module can inject; these
tests make one by writing into the region through a copy of modcamd's own
descriptor (pidfd_getfd(2)). That, and mounting the small tmpfs capture
directories, needs root: those tests are skipped otherwise.
"""
import ctypes
import mmap
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import warnings

import pytest
from gi.repository import GLib
from PIL import Image

from modcam import names
from modcam.link import protocol
from tests.support.daemon import error_name, start_calling_client

ERR = names.ERROR_PREFIX
MOD = names.MODULE_INTERFACE
DOCUMENTED = {ERR + e for e in ("NotReady", "Removed", "Busy", "InvalidArgument",
                                "PermissionDenied", "Timeout", "Failed")}
FRAME_FAULTS = ("corrupt_crc", "truncated", "torn", "producer_crash")
FULL = (11552, 8672)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs or takes another "
                                "process's descriptor: needs root")


def v(sig, value):
    return GLib.Variant(sig, value)


def call(c, vm, method, args=None, signature=""):
    return c.call_async(vm.path, MOD, method, args, signature)


def settle(c, box, timeout=15.0, what="the reply"):
    c.eventually(lambda: box, timeout, what)
    return box[0]


def outcome(box) -> str:
    """"ok", or the D-Bus error name of a settled call_async box (a documented one)."""
    kind, value = box[0]
    if kind == "ok":
        return "ok"
    assert error_name(value) in DOCUMENTED, value.message
    return error_name(value)


def wait_state(c, vm, state, timeout=10.0):
    c.eventually(lambda: c.prop(vm.path, "State") == state, timeout, f"State {state}")


def assert_alive(h):
    assert h.daemon.proc.poll() is None, h.log()
    c = h.client
    assert c.prop(names.MANAGER_PATH, "Version", names.MANAGER_INTERFACE)
    return c.modules()


def whole_picture(path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # 100 MP is fine
        with Image.open(path) as im:
            im.verify()


def capture_works(h, vm, **options):
    res = h.client.module("Capture", vm.path, [options], "a{sv}", timeout=60)
    for path, size in zip(res["paths"], res["sizes"]):
        assert os.path.getsize(path) == size > 0
        if path.endswith(".jpg"):
            whole_picture(path)
    return res


def pictures(directory) -> list[str]:
    return sorted(os.listdir(directory))


# -- link drop ------------------------------------------------------------------


@pytest.mark.parametrize("moment", [
    "booting", "streaming",
    "capturing",
    "developing"])
def test_link_drop_fails_the_pending_call_with_removed(modcamd, moment):
    """The module process vanishes (closes everything, exits) mid-boot (Claim),
    mid-stream (AutoFocus), mid-capture while the still is awaited, and while the
    ISP develops a 100 MP still; udev reports the removal afterwards."""
    h, c = modcamd, modcamd.client
    if moment == "developing":
        vm = h.plug("MC0701", sensor=FULL, extra_args=("--source", "synthetic"))
    else:
        vm = h.plug("MC0701", boot_seconds=1.0 if moment == "booting" else 0.3)
    if moment == "booting":
        pending = call(c, vm, "Claim")
        wait_state(c, vm, "booting")
    else:
        c.module("Claim", vm.path)
        if moment != "developing":
            vm.inject_fault("stall", seconds=5)   # the stream / the still is held back
        pending = (call(c, vm, "AutoFocus") if moment == "streaming"
                   else call(c, vm, "Capture", [{"formats": v("as", ["jpeg", "dng"])}], "a{sv}"))
        wait_state(c, vm, "streaming" if moment == "streaming" else "capturing")
        if moment == "developing":            # the still is in the ring: the ISP has it
            c.eventually(lambda: vm.sim("status")["ring"]["written"] >= 1, 10, "the still")
    c.pump(0.1)
    assert not pending
    t0 = time.monotonic()
    vm.inject_fault("link_drop")
    settle(c, pending, 5)
    took = time.monotonic() - t0
    assert vm.proc.wait(10) == 0                  # the module process is gone
    # The object stays, in error, until udev says the device left ...
    assert c.prop(vm.path, "State") == "error"
    assert "control channel closed" in c.prop(vm.path, "StateReason")
    mark = len(c.signals)
    vm.unplug()
    c.wait_signal("ModuleRemoved", after=mark)    # ... then it goes away
    assert assert_alive(h) == []
    c.pump(0.3)                                   # a cancelled ISP has let go by now
    assert pictures(h.capture_dir) == []
    # The module comes back (a new process, plugged again) and captures.
    h.modules.pop(vm.serial).close()
    vm = h.plug("MC0701")
    res = capture_works(h, vm)
    assert pictures(h.capture_dir) == [os.path.basename(res["paths"][0])]
    assert took < 1.0
    assert outcome(pending) == ERR + "Removed", pending
    assert "MC0701" in pending[0][1].message


# -- stall ------------------------------------------------------------------------

def test_a_stall_shorter_than_the_frame_timeout_only_delays_autofocus(modcamd):
    h, c = modcamd, modcamd.client
    vm = h.plug("MC0702")
    c.module("Claim", vm.path)
    vm.inject_fault("stall", seconds=1.5)
    t0 = time.monotonic()
    res = c.module("AutoFocus", vm.path, timeout=30)
    assert time.monotonic() - t0 >= 1.3
    assert res["frames"] >= 3
    assert c.prop(vm.path, "FocusMode") == "auto"
    assert c.prop(vm.path, "State") == "ready"
    capture_works(h, vm)


def test_a_stall_past_the_frame_timeout_is_timeout_and_the_module_recovers(modcamd):
    from modcam.autofocus import FRAME_TIMEOUT_S
    h, c = modcamd, modcamd.client
    vm = h.plug("MC0703")
    c.module("Claim", vm.path)
    vm.inject_fault("stall", seconds=FRAME_TIMEOUT_S + 1.0)
    t0 = time.monotonic()
    with pytest.raises(GLib.Error) as err:
        c.module("AutoFocus", vm.path, timeout=30)
    took = time.monotonic() - t0
    assert error_name(err.value) == ERR + "Timeout"
    assert f"no usable frame for {FRAME_TIMEOUT_S:g} s" in err.value.message
    assert FRAME_TIMEOUT_S - 0.2 < took < FRAME_TIMEOUT_S + 1.0
    wait_state(c, vm, "ready", 3)                 # the stream was stopped
    assert_alive(h)
    capture_works(h, vm)                          # waits out the rest of the stall


# -- damaged frames ----------------------------------------------------------------


@pytest.mark.parametrize("kind", [
    "corrupt_crc",
    "truncated",
    "torn",
    "producer_crash"])
def test_a_damaged_still_fails_and_the_next_capture_works(modcamd, kind):
    h, c = modcamd, modcamd.client
    vm = h.plug("MC0704")
    c.module("Claim", vm.path)
    first = capture_works(h, vm)                  # not the ring's first frame: sequence > 0
    corrupt = c.prop(vm.path, "FramesCorrupt")
    vm.inject_fault(kind, count=1)
    t0 = time.monotonic()
    with pytest.raises(GLib.Error) as err:
        c.module("Capture", vm.path, [{}], "a{sv}", timeout=30)
    assert error_name(err.value) == ERR + "Failed", err.value.message
    assert "arrived damaged" in err.value.message
    assert time.monotonic() - t0 < 3.0            # seen at once, not by the still timeout
    c.eventually(lambda: c.prop(vm.path, "FramesCorrupt") == corrupt + 1, 2, "FramesCorrupt")
    assert pictures(h.capture_dir) == [os.path.basename(first["paths"][0])]
    assert c.prop(vm.path, "State") == "ready"
    capture_works(h, vm)
    assert c.prop(vm.path, "FramesCorrupt") == corrupt + 1


def test_damaged_frames_during_autofocus_are_skipped_and_it_completes(modcamd):
    h, c = modcamd, modcamd.client
    vm = h.plug("MC0705")
    c.module("Claim", vm.path)
    for kind in FRAME_FAULTS:
        vm.inject_fault(kind, count=2)
    res = c.module("AutoFocus", vm.path, timeout=30)
    assert res["frames"] >= 3
    assert vm.sim("status")["frames"]["producer_crash"] == 2    # all eight were sent
    c.eventually(lambda: c.prop(vm.path, "FramesCorrupt") == 2 * len(FRAME_FAULTS), 2,
                 "FramesCorrupt")
    capture_works(h, vm)


# -- boot ---------------------------------------------------------------------------

@pytest.mark.parametrize("fault, error", [("slow_boot", "Timeout"), ("boot_failure", "Failed")])
def test_a_boot_that_fails_mid_capture_is_reported_and_the_next_capture_boots_again(
        daemon_harness, fault, error):
    """Injected into the boot in progress (test_daemon_contract.py injects before a
    Claim); the next Capture powers the module off and on again and works."""
    h = daemon_harness.start(boot_timeout=1.5)
    c = h.client
    vm = h.plug("MC0706", boot_seconds=0.8)
    pending = call(c, vm, "Capture", [{}], "a{sv}")
    wait_state(c, vm, "booting")
    vm.inject_fault(fault, **({"seconds": 10} if fault == "slow_boot" else {"reason": "no sensor"}))
    settle(c, pending, 10)
    assert outcome(pending) == ERR + error, pending
    assert c.prop(vm.path, "State") == "error"
    assert pictures(h.capture_dir) == []
    assert_alive(h)
    capture_works(h, vm)
    assert c.prop(vm.path, "StateReason") == ""


# -- heat ----------------------------------------------------------------------------

def test_a_thermal_warning_while_claimed_keeps_the_module_working(modcamd):
    """Ambient 68 °C with a fast thermal model: a ready module passes 70 °C."""
    h, c = modcamd, modcamd.client
    vm = h.plug("MC0707", extra_args=("--ambient", "68", "--thermal-tau", "1"))
    c.module("Claim", vm.path)
    c.eventually(lambda: c.prop(vm.path, "Temperature") >= 70, 10, "the warning temperature")
    assert vm.sim("status")["thermal"] == "warning"
    res = capture_works(h, vm)
    assert res["temperature"] >= 70
    assert c.prop(vm.path, "State") == "ready"
    assert "is warning" in h.log()


def test_a_thermal_shutdown_while_claimed_turns_it_off_until_it_cools(modcamd):
    h, c = modcamd, modcamd.client
    vm = h.plug("MC0708", extra_args=("--thermal-tau", "4"))     # cools below 70 °C in ~1.2 s
    c.module("Claim", vm.path)
    vm.inject_fault("thermal_shutdown")
    wait_state(c, vm, "off", 5)
    assert "thermal shutdown" in vm.sim("status")["reason"]
    assert c.prop(vm.path, "Temperature") >= 80
    assert c.prop(vm.path, "Clients") == [c.unique_name]     # the claim is still held
    assert f"module {vm.serial} is critical" in h.log()
    for method, args, sig in (("Claim", None, ""), ("Capture", [{}], "a{sv}")):
        with pytest.raises(GLib.Error) as err:
            c.module(method, vm.path, args, sig)
        assert error_name(err.value) == ERR + "NotReady", (method, err.value.message)
        assert "too hot" in err.value.message and "°C" in err.value.message
    c.eventually(lambda: c.prop(vm.path, "Temperature") < 69, 10, "cooling down")
    capture_works(h, vm)


def test_a_thermal_shutdown_mid_capture_fails_the_capture(modcamd):
    h, c = modcamd, modcamd.client
    vm = h.plug("MC0709", extra_args=("--thermal-tau", "4"))
    c.module("Claim", vm.path)
    vm.inject_fault("stall", seconds=3)
    pending = call(c, vm, "Capture", [{}], "a{sv}")
    wait_state(c, vm, "capturing")
    c.pump(0.1)
    t0 = time.monotonic()
    vm.inject_fault("thermal_shutdown")
    settle(c, pending, 15)
    assert time.monotonic() - t0 < 1.0            # the module's answer, not the still timeout
    assert outcome(pending) == ERR + "Failed", pending
    assert "thermal shutdown" in pending[0][1].message
    assert pictures(h.capture_dir) == []
    assert c.prop(vm.path, "State") == "off"
    c.eventually(lambda: c.prop(vm.path, "Temperature") < 69, 10, "cooling down")
    capture_works(h, vm)


# -- garbage on the control channel ---------------------------------------------------

def test_garbage_on_the_control_channel_is_ignored(modcamd):
    h, c = modcamd, modcamd.client
    vm = h.plug("MC0710")
    c.module("Claim", vm.path)
    for variant in protocol.GARBAGE_VARIANTS:
        assert vm.inject_fault("garbage_control", variant=variant)["sent"] is True
        c.pump(0.05)
        assert c.prop(vm.path, "State") == "ready", variant
    c.eventually(lambda: h.log().count("ignoring a malformed message")
                 >= len(protocol.GARBAGE_VARIANTS), 5, "every message logged")
    assert c.prop(vm.path, "StateReason") == ""
    assert c.prop(vm.path, "Clients") == [c.unique_name]
    capture_works(h, vm)
    assert_alive(h)


# -- a corrupted ring region ----------------------------------------------------------

def _pidfd_getfd(pid: int, fd: int) -> int:
    """A copy of another process's descriptor (pidfd_getfd(2); root may)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.syscall(438, pidfd, fd, 0)     # SYS_pidfd_getfd (the unified number)
        if got < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        return got
    finally:
        os.close(pidfd)


def corrupt_the_ring(pid: int) -> None:
    """Scribble over the ring region modcamd consumes: a head index 1000 slots past
    its tail (no producer ever writes that), then ring modcamd's eventfds (the
    doorbell among them; GLib's own wake-up fds only see a spurious wake-up)."""
    fds = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    regions = [fd for fd, target in fds.items() if target.startswith("/memfd:modcam-ring")]
    assert len(regions) == 1, fds
    region = _pidfd_getfd(pid, regions[0])
    try:
        with mmap.mmap(region, 4096) as page:
            tail = struct.unpack_from("<Q", page, 128)[0]
            struct.pack_into("<Q", page, 64, tail + 1000)      # struct modcam_ring_region.head
    finally:
        os.close(region)
    for fd, target in fds.items():
        if target == "anon_inode:[eventfd]":
            bell = _pidfd_getfd(pid, fd)
            try:
                os.eventfd_write(bell, 1)
            finally:
                os.close(bell)


@needs_root
def test_a_corrupted_ring_region_fails_the_pending_capture_with_failed(modcamd):
    """Not a fault the virtual module injects: the test writes into the region
    itself (pidfd_getfd(2) on modcamd's descriptors; root only)."""
    h, c = modcamd, modcamd.client
    vm = h.plug("MC0711")
    c.module("Claim", vm.path)
    vm.inject_fault("stall", seconds=2)
    pending = call(c, vm, "Capture", [{}], "a{sv}")
    wait_state(c, vm, "capturing")
    c.pump(0.1)
    corrupt_the_ring(h.daemon.proc.pid)
    settle(c, pending, 5)
    assert c.prop(vm.path, "State") == "error"
    assert "frame ring is corrupt" in c.prop(vm.path, "StateReason")
    assert pictures(h.capture_dir) == []
    assert_alive(h)
    assert outcome(pending) == ERR + "Failed", pending
    assert "corrupt" in pending[0][1].message


@needs_root
def test_after_a_corrupted_ring_region_the_next_capture_boots_and_attaches_a_new_one(modcamd):
    h, c = modcamd, modcamd.client
    vm = h.plug("MC0720")
    c.module("Claim", vm.path)
    corrupt_the_ring(h.daemon.proc.pid)
    c.eventually(lambda: c.prop(vm.path, "State") == "error", 5, "the error state")
    assert "frame ring is corrupt" in c.prop(vm.path, "StateReason")
    assert_alive(h)
    capture_works(h, vm)                          # a fresh boot, a fresh ring
    assert c.prop(vm.path, "State") == "ready"
    assert c.prop(vm.path, "StateReason") == ""


# -- the capture directory -------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, ro=False) -> a fresh tmpfs directory, unmounted afterwards."""
    mounted = []
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}

    def mount(size="256k", ro=False):
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        opts = f"size={size},mode=0755" + (",ro" if ro else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "modcam-test", str(target)],
                       check=True, env=env)
        mounted.append(target)
        return target

    mount.remount = lambda target, opts: subprocess.run(
        ["mount", "-o", f"remount,{opts}", str(target)], check=True, env=env)
    yield mount
    for target in reversed(mounted):
        if subprocess.run(["umount", str(target)], env=env).returncode:
            subprocess.run(["umount", "-l", str(target)], env=env)    # still busy: detach


def fill(directory) -> int:
    """Fill a file system to the last block; returns the bytes the filler took."""
    total = 0
    with open(os.path.join(directory, "filler"), "wb", buffering=0) as f:
        block = b"\0" * 4096
        while True:
            try:
                total += f.write(block)
            except OSError:
                return total


def capture_to_fd(c, vm, path):
    with open(path, "wb") as f:
        return c.call(vm.path, MOD, "CaptureToFd", [0, {"format": v("s", "jpeg")}], "ha{sv}",
                      fds=[f.fileno()])


@needs_root
def test_a_full_capture_directory_is_failed_with_no_partial_file(tmpfs, daemon_harness, tmp_path):
    """256 kB, filled to the last block. (tmpfs first: modcamd stops before the unmount.)"""
    h = daemon_harness
    h.capture_dir = str(tmpfs("256k"))
    h.start()
    c = h.client
    vm = h.plug("MC0712")
    fill(h.capture_dir)
    free = os.statvfs(h.capture_dir).f_bfree
    with pytest.raises(GLib.Error) as err:
        c.module("Capture", vm.path, [{"formats": v("as", ["jpeg", "png", "dng"])}], "a{sv}")
    assert error_name(err.value) == ERR + "Failed"
    assert h.capture_dir in err.value.message and "no space" in err.value.message, \
        err.value.message
    assert pictures(h.capture_dir) == ["filler"]          # no partial file, no hidden one
    assert os.statvfs(h.capture_dir).f_bfree == free       # nor an unnamed one
    res = capture_to_fd(c, vm, tmp_path / "out.jpg")       # the caller's own file still works
    assert res["size"] == os.path.getsize(tmp_path / "out.jpg") > 0
    os.unlink(os.path.join(h.capture_dir, "filler"))       # space again: Capture works
    capture_works(h, vm)
    assert_alive(h)


@needs_root
def test_a_read_only_capture_directory_is_failed(tmpfs, daemon_harness, tmp_path):
    h = daemon_harness
    h.capture_dir = str(tmpfs("1m", ro=True))
    h.start()
    c = h.client
    vm = h.plug("MC0713")
    with pytest.raises(GLib.Error) as err:
        c.module("Capture", vm.path, [{}], "a{sv}")
    assert error_name(err.value) == ERR + "Failed"
    assert h.capture_dir in err.value.message and "read-only" in err.value.message
    assert capture_to_fd(c, vm, tmp_path / "out.jpg")["size"] > 0
    tmpfs.remount(h.capture_dir, "rw")
    capture_works(h, vm)
    assert_alive(h)


# -- claims ---------------------------------------------------------------------------------

def test_a_claim_that_fails_holds_nothing(daemon_harness):
    h = daemon_harness.start(idle_timeout=1.0)
    c = h.client
    vm = h.plug("MC0721")
    vm.inject_fault("boot_failure", reason="sensor did not answer")
    with pytest.raises(GLib.Error) as err:
        c.module("Claim", vm.path)
    assert error_name(err.value) == ERR + "Failed"
    assert c.prop(vm.path, "Clients") == []
    capture_works(h, vm)                          # boots again
    wait_state(c, vm, "off", 5)                   # nothing holds it: the idle power-down


# -- clients that vanish ----------------------------------------------------------------

@pytest.mark.parametrize("method", ["Capture", "Claim"])
def test_a_client_killed_mid_call_leaves_nothing_behind(daemon_harness, method):
    """Killed (SIGKILL) while its Capture waits for the still, or while its Claim
    waits for the boot: modcamd carries on, no claim stays, the module powers down."""
    h = daemon_harness.start(idle_timeout=1.0)
    c = h.client
    vm = h.plug("MC0714", boot_seconds=1.5 if method == "Claim" else 0.3)
    if method == "Capture":
        vm.inject_fault("stall", seconds=2)
    proc, name = start_calling_client(h, vm, method)
    assert name.startswith(":")
    wait_state(c, vm, "capturing" if method == "Capture" else "booting")
    if method == "Claim":
        c.eventually(lambda: c.prop(vm.path, "Clients") == [name], 2, "the claim")
    proc.kill()
    proc.wait(5)
    proc.stdout.close()
    c.eventually(lambda: c.prop(vm.path, "Clients") == [], 5, "no claim left")
    wait_state(c, vm, "off", 10)                 # the work ends, then the idle power-down
    assert vm.sim("status")["state"] == "off"
    for kept in pictures(h.capture_dir):         # if the still was kept, it is whole
        whole_picture(os.path.join(h.capture_dir, kept))
    assert_alive(h)
    capture_works(h, vm)


# -- SIGTERM ------------------------------------------------------------------------------


@pytest.mark.parametrize("moment", [
    "booting",
    "developing"])
def test_sigterm_mid_capture_exits_0_and_the_caller_gets_removed(daemon_harness, moment):
    """The caller gets an error reply (not a bus disconnect): Removed, 'modcamd is
    stopping'; modcamd exits 0 at once and leaves no file behind."""
    h = daemon_harness.start()
    c = h.client
    if moment == "booting":
        vm = h.plug("MC0715", boot_seconds=2.0)
        formats = ["jpeg"]
    else:
        vm = h.plug("MC0715", sensor=FULL, extra_args=("--source", "synthetic"))
        c.module("Claim", vm.path)
        formats = ["jpeg", "dng"]
    pending = call(c, vm, "Capture", [{"formats": v("as", formats)}], "a{sv}")
    if moment == "booting":
        wait_state(c, vm, "booting")
    else:                                         # the still is in the ring: the ISP has it
        wait_state(c, vm, "capturing")
        c.eventually(lambda: vm.sim("status")["ring"]["written"] >= 1, 10, "the still")
    c.pump(0.1)
    assert not pending
    t0 = time.monotonic()
    assert h.daemon.stop(signal.SIGTERM, timeout=10) == 0
    took = time.monotonic() - t0
    settle(c, pending, 5)
    assert took < 3.0
    assert pictures(h.capture_dir) == []
    assert vm.sim("status")["state"] == "off"
    assert "Traceback" not in h.log()
    assert outcome(pending) == ERR + "Removed", pending
    assert "modcamd is stopping" in pending[0][1].message


# -- the watchdog ---------------------------------------------------------------------------

def test_the_watchdog_is_fed_during_a_100mp_capture(daemon_harness, tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.05)
    pings, stop = [], threading.Event()

    def drain():
        while not stop.is_set():
            try:
                if sock.recv(4096) == b"WATCHDOG=1":
                    pings.append(time.monotonic())
            except socket.timeout:
                pass
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        h = daemon_harness.start(env_extra={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "500000"})
        c = h.client
        vm = h.plug("MC0716", sensor=FULL, extra_args=("--source", "synthetic"))
        c.module("Claim", vm.path)
        t0 = time.monotonic()
        res = capture_works(h, vm, formats=v("as", ["jpeg", "dng"]))
        t1 = time.monotonic()
        time.sleep(0.3)
    finally:
        stop.set()
        reader.join(2)
        sock.close()
    assert (res["width"], res["height"]) == FULL
    during = [t for t in pings if t0 - 0.5 <= t <= t1 + 0.5]
    assert len(during) >= 2 and during[0] <= t0 and during[-1] >= t1, (t0, t1, pings)
    gaps = [b - a for a, b in zip(during, during[1:])]
    print(f"100 MP capture {t1 - t0:.2f} s: {len(during)} WATCHDOG=1, worst gap {max(gaps):.3f} s")
    assert max(gaps) <= 0.5, gaps


# -- two modules -----------------------------------------------------------------------------

def test_one_module_failing_does_not_disturb_the_other(modcamd):
    h, c = modcamd, modcamd.client
    bad = h.plug("MC0717", boot_seconds=0.5)
    good = h.plug("MC0718")
    c.module("Claim", good.path)
    bad.inject_fault("boot_failure", reason="sensor did not answer")
    failing = call(c, bad, "Capture", [{}], "a{sv}")
    shots = 0
    while not failing:
        capture_works(h, good)
        shots += 1
    assert outcome(failing) == ERR + "Failed", failing
    assert shots >= 1
    c.module("Claim", bad.path)                       # retried: ready
    bad.inject_fault("stall", seconds=5)
    lost = call(c, bad, "AutoFocus")
    wait_state(c, bad, "streaming")
    working = call(c, good, "Capture", [{}], "a{sv}")
    bad.inject_fault("link_drop")
    settle(c, lost, 5)
    assert outcome(lost) == ERR + "Removed", lost
    settle(c, working, 30)
    assert outcome(working) == "ok", working
    bad.unplug()
    c.eventually(lambda: c.modules() == [good.path], 5, "the bad module gone")
    capture_works(h, good)
    assert c.prop(good.path, "State") == "ready"
    assert c.prop(good.path, "FramesCorrupt") == 0


# -- counters -------------------------------------------------------------------------------

def test_frame_counters_survive_an_idle_power_down(daemon_harness):
    h = daemon_harness.start(idle_timeout=1.0)
    c = h.client
    vm = h.plug("MC0719")
    vm.inject_fault("corrupt_crc", count=1)
    with pytest.raises(GLib.Error):
        c.module("Capture", vm.path, [{}], "a{sv}")
    capture_works(h, vm)
    c.eventually(lambda: c.prop(vm.path, "FramesCorrupt") == 1, 2, "FramesCorrupt")
    received = c.prop(vm.path, "FramesReceived")
    assert received >= 1
    wait_state(c, vm, "off", 5)
    capture_works(h, vm)                              # a new boot, a new ring
    c.pump(0.4)
    assert c.prop(vm.path, "FramesCorrupt") == 1
    assert c.prop(vm.path, "FramesReceived") == received + 1
