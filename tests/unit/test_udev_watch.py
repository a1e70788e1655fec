"""UdevWatch with a context and monitor handed in: no privileges, no testbed."""
import logging

from gi.repository import GLib

from modcam import names
from modcam.link.udev_watch import UdevWatch


class FakeAttributes(dict):
    def asstring(self, name):
        return self[name]


class FakeDevice:
    def __init__(self, action, serial="MC0001", control="/run/mc.sock", protocol="1",
                 sys_path="/sys/devices/modcam0", module="1"):
        self.action, self.sys_path = action, sys_path
        self.properties = {names.PROP_MODULE: module, names.PROP_SERIAL: serial,
                           names.PROP_CONTROL: control, names.PROP_PROTOCOL: protocol}
        self.attributes = FakeAttributes(vendor="Acme", model="MC-100",
                                         firmware_version="1.2.3")


class FakeMonitor:
    """A pipe's read end stands in for the netlink socket."""
    def __init__(self, devices):
        import os
        self.devices = list(devices)
        self.r, self.w = os.pipe()

    def fileno(self):
        return self.r

    def poll(self, timeout=0):
        if self.devices:
            dev = self.devices.pop(0)
            if isinstance(dev, Exception):
                raise dev
            return dev
        import os
        os.set_blocking(self.r, False)
        try:
            os.read(self.r, 64)        # drained: the fd is no longer readable
        except BlockingIOError:
            pass
        return None


class FakeContext:
    def __init__(self, present):
        self.present = present

    def list_devices(self, subsystem):
        assert subsystem == names.UDEV_SUBSYSTEM
        return list(self.present)


def run_watch(present, events):
    added, removed = [], []
    monitor = FakeMonitor(events)
    watch = UdevWatch(FakeContext(present), monitor, names.UDEV_SUBSYSTEM,
                      added.append, lambda s, p: removed.append((s, p)))
    watch.start()
    import os
    os.write(monitor.w, b"x")
    ctx = GLib.MainContext.default()
    while ctx.iteration(False):
        pass
    watch.stop()
    return watch, added, removed


def test_coldplug_then_events_in_order():
    watch, added, removed = run_watch([FakeDevice(None, "MC0001")],
                                      [FakeDevice("add", "MC0002", sys_path="/sys/devices/modcam1"),
                                       FakeDevice("remove", "MC0001")])
    assert [(i.serial, i.vendor, i.model, i.firmware) for i in added] == [
        ("MC0001", "Acme", "MC-100", "1.2.3"), ("MC0002", "Acme", "MC-100", "1.2.3")]
    assert removed == [("MC0001", "/sys/devices/modcam0")]


def test_malformed_events_are_logged_and_skipped(caplog):
    caplog.set_level(logging.WARNING, "modcam.udev")
    watch, added, removed = run_watch([], [
        FakeDevice("add", serial="bad serial!"),
        FakeDevice("add", protocol="7"),
        FakeDevice("add", control="relative.sock"),
        FakeDevice("add", module="0"),
        OSError("truncated datagram"),
        FakeDevice("remove", serial=""),           # still removed by syspath
        FakeDevice("add", "MC0003")])
    assert [i.serial for i in added] == ["MC0003"]
    assert removed == [(None, "/sys/devices/modcam0")]
    assert watch.ignored == 5
    text = caplog.text
    for words in ("is not a serial", "control protocol '7' is not supported",
                  "not an absolute socket path", "not a modcam module", "truncated datagram"):
        assert words in text
