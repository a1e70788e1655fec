"""modcamd on a private bus: modules come and go with real uevents."""
import os
import signal

import pytest

from modcam import names
from tests.support.daemon import error_name

MANAGER = names.MANAGER_INTERFACE
OM = "org.freedesktop.DBus.ObjectManager"


def test_plug_and_unplug_publish_and_remove_the_module(modcamd):
    c = modcamd.client
    assert c.modules() == []
    vm = modcamd.plug("MC0001")
    assert c.modules() == [vm.path]
    added = [s for s in c.signals if s[3] == "InterfacesAdded"]
    assert added and added[0][4][0] == vm.path and names.MODULE_INTERFACE in added[0][4][1]
    assert c.prop(vm.path, "Serial") == "MC0001"
    assert c.prop(vm.path, "State") == "off"
    assert c.prop(names.MANAGER_PATH, "Modules", MANAGER) == [vm.path]
    sensor = c.prop(vm.path, "Sensor")
    assert (sensor["width"], sensor["height"]) == (1152, 864)
    mark = len(c.signals)
    vm.unplug()
    c.wait_signal("ModuleRemoved", after=mark)
    c.wait_signal("InterfacesRemoved", after=mark)
    assert c.modules() == []
    with pytest.raises(Exception) as err:
        c.prop(vm.path, "State")
    assert "UnknownObject" in str(err.value) or "No such" in str(err.value) \
        or "UnknownMethod" in str(err.value) or "not" in str(err.value)


def test_coldplug_finds_modules_present_at_start(daemon_harness):
    vm = daemon_harness.add_module("MC0002")
    vm.plug()
    daemon_harness.start()
    c = daemon_harness.client
    c.eventually(lambda: c.modules() == [vm.path], 10, "the coldplugged module")
    objects = c.call(names.MANAGER_PATH, OM, "GetManagedObjects")
    assert objects[vm.path][names.MODULE_INTERFACE]["Serial"] == "MC0002"


def test_duplicate_and_unknown_uevents_are_tolerated(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0003")
    modcamd.bed.bed.uevent("MC0003", "add")          # a duplicate add: no second object
    modcamd.bed.bed.uevent("MC0003", "change")
    modcamd.bed.bed.uevent("MC0003", "offline")      # an action modcamd has no use for
    # a device that says it speaks a control protocol from the future
    modcamd.bed.plug("MC0009", "/run/none.sock", protocol=99)
    c.pump(0.3)
    assert c.modules() == [vm.path]
    assert [s[3] for s in c.signals].count("ModuleAdded") == 1
    vm.unplug()
    c.wait_signal("ModuleRemoved")
    modcamd.bed.bed.uevent("MC0009", "remove")       # a remove for a module it never had
    c.pump(0.2)
    assert modcamd.daemon.proc.poll() is None, modcamd.log()
    assert "control protocol '99' is not supported" in modcamd.log()


def test_claim_boots_the_module_and_replies_when_ready(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0004", boot_seconds=0.5)
    mark = len(c.signals)
    c.module("Claim", vm.path)
    assert c.prop(vm.path, "State") == "ready"
    states = [s[4][1].get("State") for s in c.signals[mark:]
              if s[3] == "PropertiesChanged" and "State" in s[4][1]]
    assert states[:2] == ["booting", "ready"]
    assert c.prop(vm.path, "Clients") == [c.unique_name]
    c.module("Release", vm.path)
    assert c.prop(vm.path, "Clients") == []
    with pytest.raises(Exception) as err:
        c.module("Release", vm.path)
    assert error_name(err.value) == names.ERROR_PREFIX + "InvalidArgument"


def test_sigterm_powers_down_and_exits_cleanly(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0005")
    c.module("Claim", vm.path)
    assert vm.sim("status")["state"] == "ready"
    assert modcamd.daemon.stop(signal.SIGTERM) == 0
    assert vm.sim("status")["state"] == "off"
    assert "Traceback" not in modcamd.log()


def test_a_bad_calibration_eeprom_is_an_error_state_not_a_crash(daemon_harness, tmp_path):
    from modcam import calibration
    blob = bytearray(calibration.encode(calibration.virtual_calibration("MC0006")))
    blob[40] ^= 0xFF                                      # a flipped byte: the CRC fails
    bad = tmp_path / "eeprom.bin"
    bad.write_bytes(bytes(blob))
    h = daemon_harness.start()
    c = h.client
    vm = h.add_module("MC0006", extra_args=("--eeprom", str(bad)))
    mark = len(c.signals)
    vm.plug()
    c.wait_signal("ModuleAdded", after=mark)
    c.eventually(lambda: c.prop(vm.path, "State") == "error", 10, "the error state")
    assert "calibration" in c.prop(vm.path, "StateReason")
    with pytest.raises(Exception) as err:
        c.module("Capture", vm.path, [{}], "a{sv}")
    assert error_name(err.value) == names.ERROR_PREFIX + "Failed"
    assert "calibration" in str(err.value)
    assert h.daemon.proc.poll() is None


def test_hotplug_latency_is_recorded(modcamd):
    """uevent -> ModuleAdded and unplug -> ModuleRemoved, a few cycles (bench/latency.py
    measures the distribution; this is a generous regression guard)."""
    import time
    c = modcamd.client
    vm = modcamd.add_module("MC0007")
    added, removed = [], []
    for _ in range(5):
        mark = len(c.signals)
        t0 = time.monotonic()
        vm.plug()
        added.append(c.wait_signal("ModuleAdded", after=mark)[0] - t0)
        mark = len(c.signals)
        t0 = time.monotonic()
        vm.unplug()
        removed.append(c.wait_signal("ModuleRemoved", after=mark)[0] - t0)
    print(f"ModuleAdded after {max(added) * 1000:.1f} ms, ModuleRemoved after "
          f"{max(removed) * 1000:.1f} ms (worst of 5)")
    assert max(added) < 0.5 and max(removed) < 0.5


def test_a_claim_during_boot_replies_at_ready(modcamd):
    import time
    from tests.support.daemon import BusClient
    c = modcamd.client
    vm = modcamd.plug("MC0008", boot_seconds=1.0)
    first = c.call_async(vm.path, names.MODULE_INTERFACE, "Claim")
    c.eventually(lambda: c.prop(vm.path, "State") == "booting", 5, "booting")
    other = BusClient(modcamd.bus.address)
    try:
        t0 = time.monotonic()
        other.module("Claim", vm.path)
        assert other.prop(vm.path, "State") == "ready"
        assert 0.3 < time.monotonic() - t0 < 2.0
        c.eventually(lambda: first, 5, "the first claim")
        assert first[0][0] == "ok"
        assert sorted(c.prop(vm.path, "Clients")) == sorted([c.unique_name, other.unique_name])
    finally:
        other.close()
