"""The virtual module end to end: a ControlServer (in a thread, or the CLI in
a process) and, in the test, the daemon's side: a ControlChannel and a real
ring Consumer.

Owns the proof of the issue's promises: boot timing, power and thermal
transitions (fast time constants), the focus ring reported within a frame
time, streaming at a requested fps and at the line-rate cap, every fault
observable from the consumer, bad and fuzzed input answered without harm,
clients vanishing, reconnecting and being refused, and the module reaching
udev through `modcam-virtual-module --plug` and the Python API.
"""
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modcam import names
from modcam.link import protocol
from modcam.link.control_channel import ChannelClosed, ControlChannel, ControlError
from modcam.link.ring import Consumer
from modcam.native import lib
from modcam.virtual import cli
from modcam.virtual.control_server import ControlServer
from modcam.virtual.module import ModuleConfig, VirtualModule
from tests.support.testbed import REPO_ROOT, JsonLinesChild, MonitorChild, eventually

FAST = dict(sensor_width=128, sensor_height=96, boot_seconds=0.2, thermal_tau_s=0.3)
FRAME_BYTES = 192 * 96
STILL, THERMAL = lib.MODCAM_FRAME_FLAG_STILL, lib.MODCAM_FRAME_FLAG_THERMAL_WARNING


def boottime():
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@contextlib.contextmanager
def virtual_module(**overrides):
    # A short directory: socket paths must fit in 107 bytes.
    directory = tempfile.mkdtemp(prefix="mc-", dir="/tmp")
    module = VirtualModule(ModuleConfig(**{**FAST, **overrides}))
    server = ControlServer(module, os.path.join(directory, "mc.sock")).start()
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def server():
    with virtual_module() as s:
        yield s


@pytest.fixture
def channel(server):
    with ControlChannel(server.control_path, timeout=10) as ch:
        yield ch


@pytest.fixture
def sim(server):
    with ControlChannel(server.sim_path, timeout=10) as ch:
        yield ch


def power_up(channel) -> Consumer:
    channel.request("power", on=True)
    channel.wait_event("ready", timeout=10)
    return channel.open_ring()


def start_stream(channel, fps=100.0, **controls) -> Consumer:
    consumer = power_up(channel)
    channel.request("set_controls", exposure_us=30, **controls)
    channel.request("stream", on=True, fps=fps)
    return consumer


def collect(consumer, n, timeout=10.0):
    """Headers of the next n frames, each with the sequence its payload carries."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        frame = consumer.acquire(timeout=max(0.0, deadline - time.monotonic()))
        assert frame is not None, f"only {len(out)} of {n} frames in {timeout} s: {consumer.stats}"
        with frame:
            out.append((frame.header, int.from_bytes(frame.data[0, :8].tobytes(), "little")))
    return out


def drain(consumer):
    while (frame := consumer.acquire(timeout=0)) is not None:
        frame.release()


# ---- identity, boot, power, heat -------------------------------------------

def test_hello_identify_and_the_calibration_eeprom(channel):
    from modcam import calibration
    hello = channel.hello_result
    assert (hello["protocol"], hello["version"], hello["socket"], hello["state"]) == (
        "modcam-control", 1, "control", "off")
    identity = channel.request("identify")
    assert identity["serial"] == "MC0001" and identity["sensor"]["cfa"] == "RGGB"
    assert identity["readout_modes"]["binned"]["frame_bytes"] == 96 * 48
    blob = channel.read_eeprom()
    assert blob == calibration.encode(calibration.virtual_calibration("MC0001"))
    assert calibration.decode(blob).serial == "MC0001"


def test_boot_takes_the_configured_time():
    with virtual_module(boot_seconds=0.5) as server, ControlChannel(server.control_path) as ch:
        t0 = boottime()
        assert ch.request("power", on=True) == {"state": "booting"}
        status = ch.request("status")
        assert status["state"] == "booting" and status["power_mw"] == 900
        ready = ch.wait_event("ready", timeout=10)
        assert 0.5 <= (ready["ts_boottime_ns"] - t0) / 1e9 < 3.0
        assert ch.request("status")["power_mw"] == 1200


def test_heat_warning_flags_frames_then_critical_shuts_down(channel, sim):
    consumer = start_stream(channel, fps=50)
    assert channel.request("status")["power_mw"] == 4500
    sim.request("sim.set_ambient", temperature_c=40.0)      # streaming settles at 80.5 °C
    warning = channel.wait_event(lambda e: e["event"] == "thermal" and e["level"] == "warning")
    assert warning["temperature_c"] >= 70.0
    deadline = time.monotonic() + 5
    while not any(h.flags & THERMAL for h, _ in collect(consumer, 1)):
        assert time.monotonic() < deadline, "no frame carries the thermal warning flag"
    sim.request("sim.set_ambient", temperature_c=75.0)      # hot even when off
    channel.wait_event(lambda e: e["event"] == "thermal" and e["level"] == "critical")
    off = channel.wait_event(lambda e: e["event"] == "state" and e["state"] == "off")
    assert off["reason"].startswith("thermal shutdown at 85.0 °C") and off["power_mw"] == 0
    drain(consumer)
    assert consumer.acquire(timeout=0.3) is None              # no frames once it is off
    with pytest.raises(ControlError, match="too hot to power on") as info:
        channel.request("power", on=True)
    assert info.value.code == "wrong-state"
    sim.request("sim.set_ambient", temperature_c=25.0)
    eventually(lambda: channel.request("status")["temperature_c"] < 70.0, timeout=10,
               what="the module to cool down")
    power_up(channel)


# ---- the focus ring and streaming ------------------------------------------

def test_focus_ring_is_reported_within_a_frame_time(channel, sim):
    fps = 10.0
    consumer = start_stream(channel, fps=fps)
    collect(consumer, 2)
    sent = boottime()
    sim.request("sim.turn_focus_ring", position=1.5)
    event = channel.wait_event("focus-ring")
    assert (event["lens_position"], event["previous"]) == (1.5, 0.0)
    assert (event["ts_boottime_ns"] - sent) / 1e9 < 1.0 / fps
    # Frames already in flight may carry the old position; from then on, the new one.
    positions = [h.lens_position for h, _ in collect(consumer, 6)]
    first = positions.index(1.5)
    assert first <= 2 and set(positions[first:]) == {1.5}


def test_stream_at_the_requested_fps(channel):
    consumer = start_stream(channel, fps=40.0)
    frames = collect(consumer, 31)
    stamps = [h.ts_boottime_ns for h, _ in frames]
    rate = 30 / ((stamps[-1] - stamps[0]) / 1e9)
    assert rate == pytest.approx(40.0, rel=0.1)
    assert all(seq == h.sequence for h, seq in frames)       # payload row 0 carries it
    assert [h.sequence for h, _ in frames] == list(range(frames[0][0].sequence,
                                                         frames[0][0].sequence + 31))


def test_stream_and_stills_never_beat_the_line_rate():
    link = FRAME_BYTES * 200.0                                # 200 frames/s on this link
    with virtual_module(link_bytes_per_s=link) as server, \
            ControlChannel(server.control_path, timeout=10) as ch:
        consumer = power_up(ch)
        ch.request("set_controls", exposure_us=30)
        reply = ch.request("stream", on=True, fps=1000.0)
        assert reply["capped"] and reply["fps"] == pytest.approx(200.0)
        frames = collect(consumer, 40)
        still = ch.request("trigger_still")
        frames += collect(consumer, 40)
    stamps = [h.ts_boottime_ns for h, _ in frames]
    wire_ns = FRAME_BYTES / link * 1e9
    assert min(b - a for a, b in zip(stamps, stamps[1:])) >= wire_ns - 1000
    assert len(frames) / ((stamps[-1] - stamps[0]) / 1e9) <= 201.0
    flagged = [h for h, _ in frames if h.flags & STILL]
    assert [h.sequence for h in flagged] == [still["sequence"]]


def test_a_still_carries_the_current_controls_and_a_second_is_busy(channel, sim):
    consumer = power_up(channel)
    channel.request("set_controls", exposure_us=2500, analogue_gain=4.0, readout_mode="binned")
    result = channel.request("trigger_still")
    assert result["delivered"] and result["readout_mode"] == "binned"
    (header, seq), = collect(consumer, 1)
    assert header.sequence == seq == result["sequence"]
    assert header.flags & STILL and (header.exposure_us, header.analogue_gain) == (2500, 4.0)
    assert (header.width, header.height) == (64, 48)
    sim.request("sim.inject_fault", kind="stall", seconds=1.0)
    answers = []
    channel.send_request("trigger_still", lambda *a: answers.append(a))
    with pytest.raises(ControlError, match="already being taken") as info:
        channel.request("trigger_still")
    assert info.value.code == "busy"

    def answered():
        channel.process_incoming()     # the main-loop way: read what is there
        return answers
    eventually(answered, timeout=10)
    assert answers[0][1] is None and answers[0][0]["sequence"] == result["sequence"] + 1


# ---- faults, as a consumer sees them ---------------------------------------

@pytest.mark.parametrize("kind, counter", [("corrupt_crc", "skipped_crc"),
                                           ("truncated", "skipped_invalid"),
                                           ("torn", "skipped_torn"),
                                           ("producer_crash", "skipped_torn")])
def test_frame_faults_are_skipped_and_counted_by_the_consumer(channel, sim, kind, counter):
    consumer = start_stream(channel, fps=100)
    before = collect(consumer, 3)
    sim.request("sim.inject_fault", kind=kind)
    after = collect(consumer, 5)
    stats = consumer.stats
    assert getattr(stats, counter) == 1 and stats.skipped == 1, stats
    assert stats.aborted == (1 if kind == "producer_crash" else 0)
    sequences = [h.sequence for h, _ in before + after]
    gaps = [b - a for a, b in zip(sequences, sequences[1:])]
    assert sorted(gaps)[-1] == 2 and gaps.count(2) == 1      # exactly the one bad frame missing
    assert consumer.last_skip                                 # with the reason kept


def test_a_stall_stops_frames_but_not_the_stream(channel, sim):
    consumer = start_stream(channel, fps=50)
    before = collect(consumer, 3)
    sim.request("sim.inject_fault", kind="stall", seconds=0.6)
    assert channel.request("status")["state"] == "streaming"
    frames = before + collect(consumer, 10)
    stamps = [h.ts_boottime_ns for h, _ in frames]
    assert max(b - a for a, b in zip(stamps, stamps[1:])) >= 0.5e9


def test_link_drop_closes_the_channel_and_stops_frames(channel, server):
    consumer = start_stream(channel, fps=100)
    collect(consumer, 3)
    assert channel.request("sim.inject_fault", kind="link_drop") == {"kind": "link_drop"}
    with pytest.raises(ChannelClosed, match="closed the control channel"):
        channel.request("status")
    assert server.dropped.wait(10)
    drain(consumer)
    assert consumer.acquire(timeout=0.3) is None
    assert not os.path.exists(server.control_path) and not os.path.exists(server.sim_path)
    with pytest.raises(ChannelClosed, match="cannot connect"):
        ControlChannel(server.control_path)


def test_slow_boot_and_boot_failure(channel, sim):
    sim.request("sim.inject_fault", kind="slow_boot", seconds=1.0)
    t0 = boottime()
    channel.request("power", on=True)
    assert (channel.wait_event("ready", timeout=10)["ts_boottime_ns"] - t0) / 1e9 >= 1.0
    channel.request("power", on=False)
    sim.request("sim.inject_fault", kind="boot_failure", reason="lens motor stuck")
    channel.request("power", on=True)
    error = channel.wait_event("error", timeout=10)
    assert error["message"] == "boot failed: lens motor stuck"
    status = channel.request("status")
    assert (status["state"], status["reason"]) == ("error", "boot failed: lens motor stuck")
    with pytest.raises(ControlError, match="power it off"):
        channel.request("power", on=True)
    channel.request("power", on=False)
    power_up(channel)


def test_thermal_shutdown_fault(channel, sim):
    consumer = start_stream(channel, fps=100)
    collect(consumer, 2)
    sim.request("sim.inject_fault", kind="thermal_shutdown")
    channel.wait_event(lambda e: e["event"] == "thermal" and e["level"] == "critical")
    channel.wait_event(lambda e: e["event"] == "state" and e["state"] == "off")
    drain(consumer)
    assert consumer.acquire(timeout=0.3) is None


@pytest.mark.parametrize("variant", protocol.GARBAGE_VARIANTS)
def test_garbage_from_the_module_is_ignored_by_the_channel(channel, sim, variant):
    assert sim.request("sim.inject_fault", kind="garbage_control", variant=variant)["sent"]
    eventually(lambda: channel.request("status") and channel.protocol_errors, timeout=5)
    assert len(channel.protocol_errors) == 1
    assert channel.request("identify")["serial"] == "MC0001"    # and it carries on


# ---- bad input, fuzzing, and clients ---------------------------------------

class Raw:
    """A bare SEQPACKET client, to send what ControlChannel never would."""

    def __init__(self, path, hello=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(10)
        self.sock.connect(path)
        if hello:
            assert self.call({"id": 0, "op": "hello", "version": 1})["ok"]

    def send(self, message, fds=()):
        protocol.send(self.sock, message if isinstance(message, bytes) else
                      json.dumps(message).encode(), fds)

    def next(self, want):
        while True:
            data = self.sock.recv(protocol.MAX_MESSAGE)
            assert data, "the module closed the connection"
            message = json.loads(data)
            if want(message):
                return message

    def call(self, message, fds=()):
        self.send(message, fds)
        return self.next(lambda m: m.get("id") == message["id"])

    def error_event(self):
        return self.next(lambda m: m.get("event") == "error")

    def close(self):
        self.sock.close()


def test_bad_requests_get_error_replies_and_the_connection_survives(server):
    raw = Raw(server.control_path, hello=False)
    reply = raw.call({"id": 1, "op": "status"})
    assert reply["error"]["code"] == "wrong-state" and "hello" in reply["error"]["message"]
    assert raw.call({"id": 2, "op": "hello", "version": 7})["result"]["version"] == 1
    for data in (b"", b"\xff", b"[]", b"{" * 1000, b'{"op": "status"}', b'{"id": "x"}',
                 b'{"id": 1e999}', b"x" * (protocol.MAX_MESSAGE + 1)):
        raw.send(data)
        event = raw.error_event()
        assert event["code"] == "bad-request" and event["message"]
    cases = [({"id": 3, "op": "warp"}, "unknown-op"),
             ({"id": 4, "op": "power", "on": "yes"}, "bad-request"),
             ({"id": 5, "op": "set_controls", "aperture": 0.7}, "out-of-range"),
             ({"id": 6, "op": "stream", "on": True}, "wrong-state"),
             ({"id": 7, "op": "trigger_still"}, "wrong-state"),
             ({"id": 8, "op": "attach_ring"}, "bad-request")]
    for message, code in cases:
        assert raw.call(message)["error"]["code"] == code, message
    r, w = os.pipe()
    try:
        reply = raw.call({"id": 9, "op": "attach_ring"}, fds=[r])
        assert "doorbell eventfd" in reply["error"]["message"]
        raw.send({"id": 10, "op": "attach_ring"}, fds=[r] * (protocol.MAX_FDS + 2))
        assert "file descriptors" in raw.error_event()["message"]
    finally:
        os.close(r)
        os.close(w)
    assert raw.call({"id": 11, "op": "status"})["result"]["state"] == "off"
    raw.close()


def test_the_simulation_socket_serves_only_sim_ops(server):
    raw = Raw(server.sim_path)
    reply = raw.call({"id": 1, "op": "power", "on": True})
    assert reply["error"]["code"] == "not-permitted"
    assert raw.call({"id": 2, "op": "sim.turn_focus_ring", "position": 0.5})["ok"]
    raw.close()


@pytest.fixture(scope="module")
def fuzz_server():
    with virtual_module() as server:
        raw = Raw(server.control_path)
        yield server, raw
        raw.close()


_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8)
                       | st.floats(allow_nan=False, allow_infinity=False),
                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                           max_size=3),
                       max_leaves=8)
_arg_names = sorted({a for spec in protocol.OPS.values() for a in spec} | {"bogus"})
# Faults would take the module away on purpose; they have tests of their own.
_ops = st.sampled_from(sorted(op for op in protocol.OPS if op != "sim.inject_fault"))
_requests = st.builds(lambda op, rid, args: json.dumps({**args, "id": rid, "op": op}).encode(),
                      _ops | st.text(max_size=8), st.integers(-3, 2**54) | _values,
                      st.dictionaries(st.sampled_from(_arg_names), _values, max_size=3))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(_requests, st.binary(max_size=120)))
def test_fuzzed_messages_are_always_answered(fuzz_server, data):
    server, raw = fuzz_server
    try:
        rid = protocol.request_id_of(protocol.decode(data))
    except protocol.ProtocolError:
        rid = None
    raw.send(data)
    if rid is None:
        assert raw.error_event()["code"] == "bad-request"
    else:
        reply = raw.next(lambda m: m.get("id") == rid)
        assert reply["ok"] or reply["error"]["code"] in protocol.ERROR_CODES
    assert raw.call({"id": 424242, "op": "identify"})["result"]["serial"] == "MC0001"


def test_a_vanished_client_is_replaced_and_streaming_resumes(server):
    first = ControlChannel(server.control_path)
    consumer = start_stream(first, fps=100)
    collect(consumer, 3)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    first.close()                                  # vanishes mid-stream
    raw.connect(server.control_path)               # and one that vanishes mid-request
    protocol.send(raw, b'{"id":1,"op":"hello","version":1}')
    raw.close()
    second = eventually(lambda: _try_connect(server.control_path), timeout=10,
                        what="the module to accept a new client")
    status = second.request("status")
    assert status["state"] == "streaming" and status["ring"] == {"attached": False}
    fresh = second.open_ring()
    assert len(collect(fresh, 3)) == 3
    second.close()


def _try_connect(path):
    try:
        return ControlChannel(path)
    except ChannelClosed:
        return None


def test_a_second_control_client_is_refused_but_sim_clients_are_many(channel, server):
    with pytest.raises(ChannelClosed, match="only one at a time is served"):
        ControlChannel(server.control_path)
    assert channel.request("status")["state"] == "off"
    with ControlChannel(server.sim_path) as a, ControlChannel(server.sim_path) as b:
        a.request("sim.turn_focus_ring", position=2.0)
        for ch in (a, b, channel):
            assert ch.wait_event("focus-ring")["lens_position"] == 2.0


def test_a_ring_too_large_for_memory_is_refused():
    with virtual_module(sensor_width=11552, sensor_height=8672) as server, \
            ControlChannel(server.control_path) as ch:
        doorbell = os.eventfd(0)
        try:
            with pytest.raises(ControlError, match="32 slots of 150 MB would take 4.5 GiB") as info:
                ch.attach_ring(doorbell, slot_count=32)
            assert (info.value.code, info.value.argument) == ("out-of-range", "slot_count")
            os.close(ch.attach_ring(doorbell, slot_count=2))
            assert ch.ring_geometry["region_size"] > 2 * 150_000_000
        finally:
            os.close(doorbell)


# ---- the command line and udev ---------------------------------------------

def test_cli_ctl_turns_the_focus_ring_of_a_running_module(channel, server, capsys):
    assert cli.main(["ctl", "--control", server.control_path, "turn-focus-ring", "1.25"]) == 0
    assert json.loads(capsys.readouterr().out) == {"lens_position": 1.25}
    assert channel.wait_event("focus-ring")["lens_position"] == 1.25
    assert cli.main(["ctl", "--control", server.control_path, "inject-fault", "stall",
                     "--count", "2"]) == 1
    assert "fault stall takes only seconds, not count" in capsys.readouterr().err


def _child_env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "daemon"), str(REPO_ROOT),
                                         env.get("PYTHONPATH", "")])
    env.update(extra or {})
    return env


@pytest.mark.umockdev
def test_cli_plug_makes_the_module_visible_through_udev():
    directory = tempfile.mkdtemp(prefix="mc-", dir="/tmp")
    control = os.path.join(directory, "plug.sock")
    module = JsonLinesChild([sys.executable, "-m", "modcam.virtual.cli", "--plug",
                             "--serial", "MCPLUG1", "--control", control,
                             "--sensor", "64x32", "--boot-seconds", "0.1"],
                            _child_env(), name="modcam-virtual-module")
    monitor = None
    try:
        module.wait_for(lambda m: m.get("line") == "MODCAM_READY=1", 20, "MODCAM_READY=1")
        lines = dict(m["line"].split("=", 1) for m in module.messages if "line" in m)
        assert lines["MODCAM_CONTROL"] == control and lines["MODCAM_SIM"] == control + ".sim"
        monitor = MonitorChild(_child_env({"UMOCKDEV_DIR": lines["UMOCKDEV_DIR"]}))
        (device,) = monitor.coldplug
        assert device["sys_path"] == lines["MODCAM_SYSPATH"]
        assert device["properties"][names.PROP_SERIAL] == "MCPLUG1"
        with ControlChannel(device["properties"][names.PROP_CONTROL]) as ch:
            assert ch.hello_result["module"]["serial"] == "MCPLUG1"
        module.proc.send_signal(signal.SIGTERM)
        monitor.wait_event("remove", serial="MCPLUG1", timeout=10)
        assert module.close() == 0
    finally:
        if monitor is not None:
            monitor.close()
        if module.proc.poll() is None:
            module.proc.kill()
        module.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_python_api_plug_reaches_a_udev_consumer(udev_bed, server):
    monitor = udev_bed.start_monitor()
    udev_bed.plug("MC0001", server.control_path)
    added = monitor.wait_event("add", serial="MC0001")
    with ControlChannel(added["properties"][names.PROP_CONTROL]) as ch:
        assert ch.request("identify")["serial"] == "MC0001"

