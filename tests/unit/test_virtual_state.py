"""The virtual module's model (modcam.virtual.module) on a fake clock:
boot timing, power by state, the thermal model and its thresholds, controls
and the link-rate cap, the focus ring, and the faults the model owns.
No sockets, no threads, no sleeping."""
import math

import pytest

from modcam import calibration
from modcam.link import protocol
from modcam.native import lib
from modcam.virtual import module as vm
from modcam.virtual.module import ModuleConfig, ModuleError, State, VirtualModule


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t

    def advance(self, seconds):
        self.t += seconds


@pytest.fixture
def clock():
    return Clock()


def make(clock, **config):
    events = []
    config = {"sensor_width": 128, "sensor_height": 96, **config}
    module = VirtualModule(ModuleConfig(**config), clock=clock, listener=events.append,
                           scenes=("studio", "flat"))
    return module, events


def names_of(events):
    return [e["event"] if e["event"] != "state" else f"state:{e['state']}" for e in events]


def boot(module, clock):
    module.power(True)
    clock.advance(module.config.boot_seconds)
    assert module.state is State.READY


def test_flags_mirror_the_ring_header():
    assert vm.FLAG_THERMAL_WARNING == lib.MODCAM_FRAME_FLAG_THERMAL_WARNING
    assert vm.FLAG_STILL == lib.MODCAM_FRAME_FLAG_STILL


def test_boot_takes_boot_seconds_then_reports_ready(clock):
    module, events = make(clock, boot_seconds=2.0)
    assert module.power(True) == {"state": "booting"}
    assert module.status()["boot"] == {"total_s": 2.0, "remaining_s": 2.0}
    clock.advance(1.999)
    assert module.state is State.BOOTING
    clock.advance(0.001)
    assert module.state is State.READY
    assert names_of(events) == ["state:booting", "state:ready", "ready"]
    assert events[-1]["controls"]["lens_position"] == 0.0
    assert module.power(True) == {"state": "ready"}        # idempotent


def test_power_draw_by_state(clock):
    module, events = make(clock)
    draws = {}
    draws["off"] = module.status()["power_mw"]
    module.power(True)
    draws["booting"] = module.status()["power_mw"]
    clock.advance(2.0)
    draws["ready"] = module.status()["power_mw"]
    module.stream(True, fps=10)
    draws["streaming"] = module.status()["power_mw"]
    assert draws == {"off": 0, "booting": 900, "ready": 1200, "streaming": 4500}
    module.power(False)
    assert module.status()["state"] == "off" and module.status()["power_mw"] == 0
    assert [e["power_mw"] for e in events if e["event"] == "state"] == [900, 1200, 4500, 0]


def test_boot_failure_leaves_an_error_state_until_powered_off(clock):
    module, events = make(clock)
    module.inject_fault("boot_failure", reason="sensor PLL did not lock")
    module.power(True)
    clock.advance(2.0)
    status = module.status()
    assert status["state"] == "error" and status["reason"] == "boot failed: sensor PLL did not lock"
    assert status["power_mw"] == 300
    error = [e for e in events if e["event"] == "error"][0]
    assert error["code"] == "failed" and "PLL" in error["message"]
    with pytest.raises(ModuleError, match="module is in error .*power it off") as info:
        module.power(True)
    assert info.value.code == protocol.WRONG_STATE
    module.power(False)
    boot(module, clock)                         # the fault was one boot only


def test_slow_boot_applies_to_the_boot_in_progress_or_the_next(clock):
    module, _ = make(clock, boot_seconds=1.0)
    module.power(True)
    clock.advance(0.5)
    module.inject_fault("slow_boot", seconds=3.0)
    clock.advance(2.0)
    assert module.state is State.BOOTING
    clock.advance(0.5)
    assert module.state is State.READY
    module.power(False)
    module.inject_fault("slow_boot", seconds=4.0)
    module.power(True)
    assert module.status()["boot"]["total_s"] == 4.0
    module.power(False)
    module.power(True)
    assert module.status()["boot"]["total_s"] == 1.0


def test_controls_need_a_powered_module_and_are_range_checked(clock):
    module, _ = make(clock)
    with pytest.raises(ModuleError, match="cannot set controls: module is off") as info:
        module.set_controls(exposure_us=1000)
    assert info.value.code == "wrong-state"
    boot(module, clock)
    with pytest.raises(ModuleError, match="exposure_us 10 µs is below the minimum 30 µs") as info:
        module.set_controls(exposure_us=10)
    assert (info.value.code, info.value.argument) == ("out-of-range", "exposure_us")
    with pytest.raises(ModuleError, match="at least one"):
        module.set_controls()
    result = module.set_controls(readout_mode="binned", aperture=4.0)
    assert result["controls"] == {"readout_mode": "binned", "exposure_us": 10000,
                                  "analogue_gain": 1.0, "aperture": 4.0, "lens_position": 0.0}


def test_real_sensor_geometry_and_the_10_gbit_link_cap(clock):
    module = VirtualModule(clock=clock)
    modes = module.identify()["readout_modes"]
    assert modes["full"] == {"width": 11552, "height": 8672, "stride": 17328,
                             "frame_bytes": 17328 * 8672,
                             "link_max_fps": pytest.approx(1.25e9 / (17328 * 8672))}
    assert round(modes["full"]["link_max_fps"], 2) == 8.32    # "about 8 full frames/s"
    assert (modes["binned"]["width"], modes["binned"]["height"]) == (5776, 4336)
    assert modes["zoom2x"]["frame_bytes"] == modes["binned"]["frame_bytes"]


def test_stream_fps_is_capped_by_the_link_and_by_the_exposure(clock):
    module, _ = make(clock, sensor_width=11552, sensor_height=8672)
    with pytest.raises(ModuleError, match="cannot stream: module is off"):
        module.stream(True, fps=30)
    boot(module, clock)
    module.set_controls(exposure_us=100)
    info = module.stream(True, fps=30)
    assert info["active"] and info["capped"] and info["fps"] == pytest.approx(8.3184, abs=1e-3)
    assert module.stream_period() == pytest.approx(1 / info["fps"])
    info = module.set_controls(readout_mode="binned")["stream"]
    assert info["fps"] == 30 and not info["capped"]          # 33 fps fit when binned
    info = module.set_controls(exposure_us=50_000)["stream"]
    assert info["fps"] == 20 and info["capped"]              # 50 ms exposures: 20 fps at most
    module.stream(False)
    assert module.state is State.READY and module.stream_period() is None


def test_temperature_follows_a_first_order_model_whatever_the_tick_rate(clock):
    results = []
    for steps in (1, 7, 100):
        c = Clock()
        module, _ = make(c, thermal_tau_s=10.0, boot_seconds=0.5)
        boot(module, c)
        module.stream(True)
        t0 = module.status()["temperature_c"]
        for _ in range(steps):
            c.advance(10.0 / steps)
            module.tick()
        results.append((t0, module.status()["temperature_c"]))
    eq = 25.0 + 9.0 * 4.5
    t0 = results[0][0]
    expected = eq + (t0 - eq) * math.exp(-1.0)
    for start, end in results:
        assert start == pytest.approx(t0) and end == pytest.approx(expected, abs=0.01)


def test_thermal_warning_flag_hysteresis_and_cooling(clock):
    module, events = make(clock, thermal_tau_s=1.0, report_step_c=100.0)
    boot(module, clock)
    module.set_ambient(temperature_c=40.0)            # streaming settles at 80.5 °C
    module.stream(True)
    clock.advance(5.0)
    module.tick()
    thermal = [e for e in events if e["event"] == "thermal"]
    assert thermal[-1]["level"] == "warning" and thermal[-1]["temperature_c"] >= 70
    plan = module.next_frame()
    assert plan.flags & vm.FLAG_THERMAL_WARNING and not plan.flags & vm.FLAG_STILL
    module.stream(False)                              # ready: settles at 50.8 °C
    for _ in range(20):
        clock.advance(0.05)
        module.tick()
        if module.status()["temperature_c"] < 69.0:
            break
    assert module.status()["thermal"] == "warning"    # 1 °C below: hysteresis holds it
    clock.advance(5.0)
    module.tick()
    assert module.status()["thermal"] == "normal"
    assert [e["level"] for e in events if e["event"] == "thermal"] == ["warning", "normal"]


def test_critical_temperature_shuts_the_module_down(clock):
    module, events = make(clock, thermal_tau_s=1.0, report_step_c=100.0)
    boot(module, clock)
    module.stream(True)
    module.set_ambient(temperature_c=60.0)            # streaming would settle at 100.5 °C
    clock.advance(1.6)                                # reaches 85 °C after ~1.5 s
    assert module.state is State.OFF
    status = module.status()
    assert status["reason"] == "thermal shutdown at 85.0 °C (critical 85 °C)"
    assert status["power_mw"] == 0 and status["temperature_c"] < 85.0     # cooling since
    # straight to critical (one long step), the shutdown at that instant, then cooled
    order = [(e["event"], e.get("level", e.get("state"))) for e in events
             if e["event"] in ("thermal", "state")]
    i = order.index(("thermal", "critical"))
    assert order[i + 1] == ("state", "off") and order[i + 2:] == [("thermal", "warning")]
    assert module.next_frame() is None
    with pytest.raises(ModuleError, match="too hot to power on"):
        module.power(True)


def test_thermal_shutdown_fault_jumps_to_critical(clock):
    module, events = make(clock)
    boot(module, clock)
    module.stream(True)
    result = module.inject_fault("thermal_shutdown")
    assert result["temperature_c"] >= 85.0
    assert module.state is State.OFF
    last_state = [e for e in events if e["event"] == "state"][-1]
    assert last_state["previous"] == "streaming" and "thermal shutdown" in last_state["reason"]


def test_cold_and_off_needs_no_ticks(clock):
    module, _ = make(clock, thermal_tau_s=10.0)
    assert module.tick() is None
    module.power(True)
    assert 0 < module.tick() <= 0.5
    module.power(False)
    clock.advance(1000.0)
    assert module.tick() is None


def test_the_focus_ring_reports_at_once_in_any_state(clock):
    module, events = make(clock)
    assert module.turn_focus_ring(1.5) == {"lens_position": 1.5}
    assert events[-1]["event"] == "focus-ring"
    assert (events[-1]["lens_position"], events[-1]["previous"]) == (1.5, 0.0)
    boot(module, clock)
    module.stream(True)
    module.turn_focus_ring(0.25)
    assert module.next_frame().settings.lens_position == 0.25
    with pytest.raises(ModuleError, match="position 3.5 dioptres is above the maximum"):
        module.turn_focus_ring(3.5)


def test_frame_plans_follow_controls_stills_stalls_and_faults(clock):
    module, _ = make(clock)
    assert module.next_frame(still=True) is None          # off
    boot(module, clock)
    assert module.next_frame() is None                    # ready but not streaming
    still = module.next_frame(still=True)
    assert still.still and still.flags == vm.FLAG_STILL
    assert (still.settings.width, still.settings.stride, still.settings.height) == (128, 192, 96)
    module.stream(True)
    module.inject_fault("torn", count=2)
    module.inject_fault("corrupt_crc")
    assert [module.next_frame().fault for _ in range(4)] == ["torn", "torn", "corrupt_crc", None]
    module.inject_fault("stall", seconds=0.5)
    assert module.next_frame() is None and module.stall_remaining() == pytest.approx(0.5)
    clock.advance(0.5)
    assert module.next_frame() is not None and module.stall_remaining() == 0


def test_transport_faults_are_not_the_models(clock):
    module, _ = make(clock)
    for kind in ("link_drop", "garbage_control"):
        with pytest.raises(ModuleError, match="fault of the link"):
            module.inject_fault(kind)


def test_scene_and_ambient(clock):
    module, _ = make(clock)
    assert module.set_scene("flat", distance_m=2.0)["scene"] == {"name": "flat", "distance_m": 2.0,
                                                                 "seed": 0}
    with pytest.raises(ModuleError, match="scene 'moon' is not one of studio, flat"):
        module.set_scene("moon")
    assert module.set_ambient(lux=50, illuminant="A")["ambient"]["illuminant"] == "A"
    with pytest.raises(ModuleError, match="needs temperature_c, lux or illuminant"):
        module.set_ambient()


def test_eeprom_is_the_units_calibration_read_in_pages(clock):
    module, _ = make(clock, serial="MC0042")
    first = module.read_eeprom(length=1000)
    assert first["offset"] == 0 and first["total"] > 1000
    import base64
    blob = b""
    while len(blob) < first["total"]:
        blob += base64.b64decode(module.read_eeprom(offset=len(blob))["data"])
    assert calibration.decode(blob).serial == "MC0042"
    assert blob == calibration.encode(calibration.virtual_calibration("MC0042"))
    with pytest.raises(ModuleError, match="beyond the end"):
        module.read_eeprom(offset=first["total"] + 1)
    opaque = VirtualModule(clock=clock, eeprom=b"\x01\x02")
    assert opaque.read_eeprom() == {"offset": 0, "total": 2, "data": "AQI="}


def test_config_is_checked():
    with pytest.raises(ValueError, match="multiple of 4"):
        ModuleConfig(sensor_width=130)
    with pytest.raises(ValueError, match="serial"):
        ModuleConfig(serial="bad serial")
    with pytest.raises(ValueError, match="boot_seconds"):
        ModuleConfig(boot_seconds=0)
