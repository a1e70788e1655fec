"""modcamctl and modcam.client against the real modcamd on a private bus,
with virtual modules plugged through umockdev (the `modcamd` fixture)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from modcam.client import PROPERTIES, ModcamClientError, connect

SENSOR = (1152, 864)


def modcamctl(modcamd, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "modcam.ctl", *map(str, args)],
                          env=modcamd.env, capture_output=True, text=True, timeout=timeout)


def ok(run):
    assert run.returncode == 0, f"rc={run.returncode}\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.stderr
    return run


def info(modcamd, serial):
    return json.loads(ok(modcamctl(modcamd, "info", "--json", "-m", serial)).stdout)


class Lines:
    """A child whose stdout and stderr lines are collected by threads as they come."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out, self.err = [], []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, k=sink: k.extend(s), daemon=True).start()

    def wait_for(self, predicate, timeout=30.0, what="a line"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None and not predicate():
                break
            time.sleep(0.01)
        raise AssertionError(f"no {what}; rc={self.proc.poll()}\nstdout: {self.out}\n"
                             f"stderr: {self.err}")

    def events(self):
        return [json.loads(line) for line in list(self.out)]


def test_list_and_info_show_the_plugged_module(modcamd):
    vm = modcamd.plug("MC0201", sensor=SENSOR, boot_seconds=0.3)
    line = ok(modcamctl(modcamd, "list")).stdout.strip()
    assert line.split()[:2] == ["MC0201", "off"] and line.endswith(vm.path)
    props = info(modcamd, "MC0201")
    assert set(PROPERTIES) <= set(props) and props["path"] == vm.path
    assert props["Serial"] == "MC0201" and props["Sensor"]["width"] == SENSOR[0]
    text = ok(modcamctl(modcamd, "info")).stdout
    assert text.startswith(f"MC0201  {vm.path}") and "LensPosition" in text


def test_set_then_info_reflects_it(modcamd):
    modcamd.plug("MC0202", sensor=SENSOR, boot_seconds=0.3)
    ok(modcamctl(modcamd, "set", "AeEnable=off", "ExposureTime=12000", "AnalogueGain=2",
                 "AwbEnable=off", "ColourGains=1.8,1.5"))
    props = info(modcamd, "MC0202")
    assert (props["AeEnable"], props["ExposureTime"], props["AnalogueGain"]) == (False, 12000, 2.0)
    assert (props["AwbEnable"], props["ColourGains"]) == (False, [1.8, 1.5])


def test_set_out_of_range_exits_1_naming_the_control(modcamd):
    modcamd.plug("MC0203", sensor=SENSOR, boot_seconds=0.3)
    run = modcamctl(modcamd, "set", "ExposureTime=5")
    assert run.returncode == 1 and run.stderr.startswith("modcamctl: ")
    assert "ExposureTime" in run.stderr and run.stderr.rstrip().endswith("(InvalidArgument)")
    assert "Traceback" not in run.stderr
    assert info(modcamd, "MC0203")["ExposureTime"] != 5
    run = modcamctl(modcamd, "set", "Brightness=3")
    assert run.returncode == 2 and "known: AeEnable" in run.stderr


def test_focus_switches_to_manual_at_the_position(modcamd):
    modcamd.plug("MC0204", sensor=SENSOR, boot_seconds=0.3)
    assert "0.80 dioptres (1.25 m), manual" in ok(modcamctl(modcamd, "focus", "1.25m")).stdout
    props = info(modcamd, "MC0204")
    assert props["FocusMode"] == "manual" and props["LensPosition"] == pytest.approx(0.8)


def test_capture_writes_the_callers_jpeg(modcamd, tmp_path):
    modcamd.plug("MC0205", sensor=SENSOR, boot_seconds=0.3)
    out = tmp_path / "x.jpg"
    run = ok(modcamctl(modcamd, "capture", "-o", out))
    width, height = Image.open(out).size
    assert (width, height) in (SENSOR, (SENSOR[0] // 2, SENSOR[1] // 2))
    assert run.stdout.startswith(f"{out}: JPEG") and "module MC0205" in run.stdout
    # Progress without a terminal: plain lines that follow the module's State.
    assert "MC0205: booting…" in run.stderr and "MC0205: done in" in run.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["x.jpg"]
    assert os.listdir(modcamd.capture_dir) == []        # nothing kept by the daemon


def test_a_failed_capture_exits_1_and_leaves_no_file(modcamd, tmp_path):
    modcamd.plug("MC0206", sensor=SENSOR, boot_seconds=0.3)
    run = modcamctl(modcamd, "capture", "-o", tmp_path / "bad.jpg", "--quality", "500")
    assert run.returncode == 1 and "(InvalidArgument)" in run.stderr and "quality" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_monitor_sees_plug_state_changes_focus_ring_and_unplug(modcamd):
    mon = Lines([sys.executable, "-m", "modcam.ctl", "monitor", "--json", "--timeout", "120"],
                modcamd.env)
    try:
        mon.wait_for(lambda: any("watching modcamd" in e for e in mon.err), what="banner")
        vm = modcamd.plug("MC0207", sensor=SENSOR, boot_seconds=0.3)
        ok(modcamctl(modcamd, "claim", "--seconds", "0.1"))
        vm.turn_focus_ring(1.5)
        mon.wait_for(lambda: any(e["event"] == "focus" and e.get("lens_position") == 1.5
                                 for e in mon.events()), what="focus ring event")
        vm.unplug()
        mon.wait_for(lambda: any(e["event"] == "removed" for e in mon.events()),
                     what="removed event")
        mon.proc.send_signal(signal.SIGINT)
        assert mon.proc.wait(30) == 0
    finally:
        if mon.proc.poll() is None:
            mon.proc.kill()
    events = mon.events()
    assert {e["serial"] for e in events} == {"MC0207"}
    kinds = [(e["event"], e.get("state")) for e in events]
    assert kinds[0] == ("added", "off")
    states = [state for event, state in kinds if event == "state"]
    assert states[:2] == ["booting", "ready"]
    assert kinds.index(("state", "booting")) < [k[0] for k in kinds].index("focus")
    assert kinds[-1] == ("removed", None)


def test_monitor_count_ends_it_after_n_events(modcamd):
    mon = Lines([sys.executable, "-m", "modcam.ctl", "monitor", "--count", "1",
                 "--timeout", "60"], modcamd.env)
    mon.wait_for(lambda: any("watching modcamd" in e for e in mon.err), what="banner")
    vm = modcamd.plug("MC0208", sensor=SENSOR, boot_seconds=0.3)
    assert mon.proc.wait(30) == 0
    time.sleep(0.1)                                       # let the reader threads drain
    assert len(mon.out) == 1 and "MC0208  plugged in:" in mon.out[0] and vm.path in mon.out[0]


def test_claim_prints_ready_and_the_boot_time_then_releases(modcamd):
    vm = modcamd.plug("MC0209", sensor=SENSOR, boot_seconds=0.3)
    run = ok(modcamctl(modcamd, "claim", "--seconds", "0.5"))
    assert "MC0209: ready (booted in " in run.stdout and "holding it for 0.5 s" in run.stdout
    assert "MC0209: released after 0.5 s" in run.stdout
    assert modcamd.client.prop(vm.path, "Clients") == []


def test_autofocus_prints_its_result(modcamd):
    modcamd.plug("MC0210", sensor=SENSOR, boot_seconds=0.3)
    result = json.loads(ok(modcamctl(modcamd, "autofocus", "--json")).stdout)
    assert set(result) >= {"position", "focus_measure", "frames", "success"}


def test_without_modcamd_the_bus_has_no_owner(daemon_harness):
    run = modcamctl(daemon_harness, "list")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("modcamctl: modcamd is not running on the bus unix:path=")
    assert run.stderr.rstrip().endswith("(org.modcam.Camera1 has no owner)")


def test_the_python_client(modcamd, tmp_path):
    vm = modcamd.plug("MC0211", sensor=SENSOR, boot_seconds=0.3)
    with connect(modcamd.bus_address) as client:
        assert client.version and client.modules() == [client.module("MC0211")]
        camera = client.module()
        assert (camera.serial, camera.state, camera.path) == ("MC0211", "off", vm.path)
        camera.set_controls(AeEnable=False, ExposureTime=9000, ColourGains=(1.7, 1.4))
        assert (camera.exposure_time, camera.colour_gains) == (9000, [1.7, 1.4])
        with pytest.raises(ModcamClientError) as refused:
            camera.set_controls(AnalogueGain=100.0)
        assert refused.value.name == "InvalidArgument" and "AnalogueGain" in str(refused.value)
        assert not str(refused.value).startswith("GDBus")
        camera.claim()
        assert camera.state == "ready" and len(camera.clients) == 1
        camera.release()
        shot = camera.capture_to_file(tmp_path / "c.png")
        assert shot["size"] == (tmp_path / "c.png").stat().st_size
        assert Image.open(tmp_path / "c.png").format == "PNG"
        kept = camera.capture(formats=("jpeg", "dng"))
        assert [os.path.splitext(p)[1] for p in kept["paths"]] == [".jpg", ".dng"]
        vm.unplug()
        modcamd.client.eventually(lambda: not client.modules(), 10, "the module to go")
        with pytest.raises(ModcamClientError) as gone:
            camera.serial
        assert gone.value.name == "Removed"
        with pytest.raises(ModcamClientError, match="no camera module is attached"):
            client.module()
