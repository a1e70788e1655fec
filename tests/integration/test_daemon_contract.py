"""The live bus API is the documented one, and every documented error is reachable."""
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from gi.repository import GLib

from modcam import names
from tests.support.daemon import error_name
from tests.support.timing import bound

DBUS_DIR = Path(__file__).resolve().parents[2] / "dbus"
ERR = names.ERROR_PREFIX


def members(xml_text: str, interface: str) -> dict:
    root = ET.fromstring(xml_text)
    iface = next(i for i in root.iter("interface") if i.get("name") == interface)
    out = {}
    for el in iface:
        if el.tag in ("method", "signal"):
            out[(el.tag, el.get("name"))] = [(a.get("type"), a.get("direction", "out"
                                               if el.tag == "signal" else "in"))
                                              for a in el.findall("arg")]
        elif el.tag == "property":
            out[("property", el.get("name"))] = (el.get("type"), el.get("access"))
    return out


def introspect(client, path) -> str:
    return client.conn.call_sync(names.BUS_NAME, path, "org.freedesktop.DBus.Introspectable",
                                 "Introspect", None, None, 0, 5000, None).unpack()[0]


def test_live_introspection_equals_the_xml_files(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0201")
    for path, iface in ((names.MANAGER_PATH, names.MANAGER_INTERFACE),
                        (vm.path, names.MODULE_INTERFACE)):
        documented = members((DBUS_DIR / f"{iface}.xml").read_text(), iface)
        assert members(introspect(c, path), iface) == documented
    assert "org.freedesktop.DBus.ObjectManager" in introspect(c, names.MANAGER_PATH)


def test_version_property(modcamd):
    import modcam
    assert modcamd.client.prop(names.MANAGER_PATH, "Version",
                               names.MANAGER_INTERFACE) == modcam.__version__


def test_boot_failure_is_an_error_state_and_the_next_request_retries(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0202", boot_seconds=0.3)
    vm.inject_fault("boot_failure", reason="sensor did not answer")
    with pytest.raises(GLib.Error) as err:
        c.module("Claim", vm.path)
    assert error_name(err.value) == ERR + "Failed"
    assert "sensor did not answer" in err.value.message
    assert c.prop(vm.path, "State") == "error"
    assert "sensor did not answer" in c.prop(vm.path, "StateReason")
    c.module("Claim", vm.path)                     # retries, and this boot works
    assert c.prop(vm.path, "State") == "ready"
    assert c.prop(vm.path, "StateReason") == ""


def test_slow_boot_times_out(daemon_harness):
    h = daemon_harness.start(boot_timeout=1.0)
    c = h.client
    vm = h.plug("MC0203", boot_seconds=0.3)
    vm.inject_fault("slow_boot", seconds=5)
    t0 = time.monotonic()
    with pytest.raises(GLib.Error) as err:
        c.module("Claim", vm.path)
    assert error_name(err.value) == ERR + "Timeout"
    assert 0.9 < time.monotonic() - t0 < 3
    assert c.prop(vm.path, "State") == "error"


def test_lens_position_outside_manual_focus_is_refused(modcamd):
    """A request the module's state refuses: a link that dropped mid-life."""
    c = modcamd.client
    vm = modcamd.plug("MC0204")
    c.module("SetControls", vm.path, [{"LensPosition": GLib.Variant("d", 1.0)}], "a{sv}")
    with pytest.raises(GLib.Error) as err:
        c.module("SetControls", vm.path, [{"AfMode": GLib.Variant("s", "auto"),
                                           "LensPosition": GLib.Variant("d", 1.0)}], "a{sv}")
    assert error_name(err.value) == ERR + "InvalidArgument"
    assert "manual" in err.value.message


def test_removed_object_calls_fail(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0205")
    path = vm.path
    vm.unplug()
    c.wait_signal("ModuleRemoved")
    with pytest.raises(GLib.Error):
        c.module("Claim", path)


def test_property_reads_answer_within_50ms_during_a_100mp_capture(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0206", sensor=(11552, 8672), extra_args=("--source", "synthetic"))
    c.module("Claim", vm.path)
    pending = c.call_async(vm.path, names.MODULE_INTERFACE, "Capture",
                           [{"formats": GLib.Variant("as", ["jpeg", "dng"])}], "a{sv}")
    worst, reads = 0.0, 0
    while not pending:
        t0 = time.monotonic()
        c.prop(vm.path, "State")
        worst = max(worst, time.monotonic() - t0)
        reads += 1
        c.pump(0.005)
    assert pending[0][0] == "ok", pending
    assert reads > 10 and worst <= bound(0.05), (reads, worst)


CALL_AS_NOBODY = """
import sys
from gi.repository import Gio, GLib
conn = Gio.DBusConnection.new_for_address_sync(sys.argv[1],
    Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
    None, None)
state = conn.call_sync("org.modcam.Camera1", sys.argv[2], "org.freedesktop.DBus.Properties", "Get",
    GLib.Variant("(ss)", ("org.modcam.Camera1.Module", "State")), None, 0, 5000, None)
print(state.unpack()[0])
try:
    conn.call_sync("org.modcam.Camera1", sys.argv[2], "org.modcam.Camera1.Module", "Capture",
        GLib.Variant("(a{sv})", ({},)), None, 0, 30000, None)
    print("captured")
except GLib.Error as e:
    name = Gio.DBusError.get_remote_error(e)
    Gio.DBusError.strip_remote_error(e)
    print(name, e.message)
"""


def test_a_caller_outside_the_camera_group_may_look_but_not_capture(modcamd,
                                                                   checkout_reachable_by_others):
    import subprocess
    import sys
    vm = modcamd.plug("MC0207")
    os.chmod(modcamd.tmp.name, 0o755)             # let another user reach the bus socket
    run = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                          sys.executable, "-c", CALL_AS_NOBODY, modcamd.bus.address, vm.path],
                         capture_output=True, text=True, timeout=60, env=modcamd.env)
    lines = run.stdout.splitlines()
    assert lines[0] == "off", run.stderr
    assert lines[1].startswith(ERR + "PermissionDenied"), lines
    assert "camera group" in lines[1]
    assert modcamd.client.prop(vm.path, "State") == "off"      # nothing was powered
    assert os.listdir(modcamd.capture_dir) == []


def test_thermal_lockout_is_not_ready_naming_the_state(modcamd):
    c = modcamd.client
    vm = modcamd.plug("MC0208")
    c.module("Claim", vm.path)
    c.module("Release", vm.path)
    vm.inject_fault("thermal_shutdown")
    c.eventually(lambda: c.prop(vm.path, "State") == "off", 5, "the thermal shutdown")
    with pytest.raises(GLib.Error) as err:
        c.module("Capture", vm.path, [{}], "a{sv}")
    assert error_name(err.value) == ERR + "NotReady"
    assert "cool" in err.value.message or "hot" in err.value.message or "°C" in err.value.message
    assert c.prop(vm.path, "Temperature") >= 70
