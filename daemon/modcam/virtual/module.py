"""The virtual module's model: power, boot, heat, focus ring, controls and faults.

Plain Python, no sockets and no threads of its own: the control server calls
it from its loop, the streamer asks it what the next frame is, and tests
drive it with a fake clock. Time is continuous: every call first advances the
model to clock() (boot completion, first-order heating), so nothing depends
on how often tick() runs, only how soon an event is noticed.

States: off -> booting (boot_seconds) -> ready <-> streaming; a failed boot
-> error (power off to leave it); critical temperature -> off. Power draw
is a constant per state; temperature follows
    dT/dt = (ambient + R * P - T) / tau
exactly (closed form between calls). Events go to `listener(dict)`, called
with the model's lock held: it must only queue them (the server does).
All public methods are thread-safe (one lock) and check their arguments with
the protocol's table, so the Python API refuses what the socket refuses.
(About 450 lines, over the usual 400: power, heat and faults share one clock
and one lock; the thermal model is the part to move out if it grows.)
"""
from __future__ import annotations

import base64
import collections
import dataclasses
import enum
import math
import re
import struct
import threading
import time

from modcam.link import protocol
from modcam.link.protocol import (BAD_REQUEST, BUSY, FAILED, OUT_OF_RANGE, WRONG_STATE,
                                  ProtocolError)
from modcam.virtual import sensor_model as sm
from modcam.virtual.streamer import FramePlan, FrameSettings, readout_geometry

# Frame flags: mirror MODCAM_FRAME_FLAG_* in native/modcam_ring.h (a test checks).
FLAG_THERMAL_WARNING = 0x1
FLAG_STILL = 0x2
FRAME_FAULTS = ("corrupt_crc", "truncated", "torn", "producer_crash")
_SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class State(str, enum.Enum):
    OFF = "off"
    BOOTING = "booting"
    READY = "ready"
    STREAMING = "streaming"
    ERROR = "error"


class ModuleError(protocol.RequestError):
    """An op the model refuses; `code` is a protocol error code."""


@dataclasses.dataclass(frozen=True)
class ModuleConfig:
    """Everything that makes one virtual module; tests shrink sensor and time constants."""
    serial: str = "MC0001"
    vendor: str = "modcam"
    model: str = "Virtual MC-100"
    firmware: str = "0.1.0"
    sensor_width: int = sm.WIDTH        # full readout; binned and zoom2x are half of it
    sensor_height: int = sm.HEIGHT
    boot_seconds: float = 2.0
    link_bytes_per_s: float = 1.25e9    # 10 Gbit/s
    ambient_c: float = 25.0
    thermal_tau_s: float = 120.0        # time constant of heating and cooling
    thermal_k_per_w: float = 9.0        # streaming at 25 °C settles at 65.5 °C
    warning_c: float = 70.0
    critical_c: float = 85.0
    hysteresis_c: float = 2.0           # a warning clears 2 °C below its threshold
    report_step_c: float = 1.0          # a thermal event whenever T moved this much
    power_mw: tuple = (("off", 0), ("booting", 900), ("ready", 1200), ("streaming", 4500),
                       ("error", 300))

    def __post_init__(self):
        if not _SERIAL_RE.fullmatch(self.serial):
            raise ValueError(f"serial {self.serial!r} must match {_SERIAL_RE.pattern}")
        if self.sensor_width % 4 or self.sensor_height % 4 or self.sensor_width < 8 \
                or self.sensor_height < 8:
            raise ValueError(f"sensor {self.sensor_width}x{self.sensor_height} must be at least "
                             "8x8 and a multiple of 4 each way (half-size modes keep RGGB)")
        for name in ("boot_seconds", "link_bytes_per_s", "thermal_tau_s"):
            if not getattr(self, name) > 0 or not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a positive number, not {getattr(self, name)}")
        if not self.warning_c < self.critical_c:
            raise ValueError("the warning temperature must be below the critical one")


def _f32(value: float) -> float:
    """`value` rounded to the nearest float32, as a frame header stores it."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _checked(op: str, args: dict) -> dict:
    try:
        return protocol.validate_args(op, {k: v for k, v in args.items() if v is not None})
    except ProtocolError as exc:
        raise ModuleError(exc.code, exc.message, exc.argument) from None


class VirtualModule:
    """One virtual module's state. `clock` (seconds, monotonic) is injectable for
    tests; `eeprom` overrides the calibration blob; `scenes` are the names
    set_scene accepts (the control server passes its frame source's)."""

    def __init__(self, config: ModuleConfig | None = None, *, eeprom: bytes | None = None,
                 scenes=("studio",), clock=time.monotonic, listener=None):
        self.config = config or ModuleConfig()
        self.scenes = tuple(scenes)
        self.listener = listener
        self._eeprom = eeprom
        self._clock = clock
        self._lock = threading.RLock()
        self._power = dict(self.config.power_mw)
        now = clock()
        self._state, self._reason = State.OFF, None
        self._boot_started = self._boot_ends = None
        self._next_boot_s: float | None = None      # slow_boot for the next boot
        self._boot_failure: str | None = None       # the current or next boot fails
        self._temp, self._temp_at = self.config.ambient_c, now
        self._level, self._reported_temp = "normal", self.config.ambient_c
        self._ambient = {"temperature_c": self.config.ambient_c, "lux": 1000.0,
                         "illuminant": "D65"}
        self._controls = {"readout_mode": "full", "exposure_us": 10_000, "analogue_gain": 1.0,
                          "aperture": 2.8, "lens_position": 0.0}
        self._scene = {"name": self.scenes[0], "distance_m": 1.2, "seed": 0}
        self._requested_fps = 30.0
        self._stall_until: float | None = None
        self._frame_faults: collections.deque[str] = collections.deque()

    # -- identity ------------------------------------------------------------

    def identify(self) -> dict:
        c = self.config
        modes = {}
        for mode in protocol.READOUT_MODES:
            w, h, stride = self._geometry(mode)
            modes[mode] = {"width": w, "height": h, "stride": stride, "frame_bytes": stride * h,
                           "link_max_fps": c.link_bytes_per_s / (stride * h)}
        return {"vendor": c.vendor, "model": c.model, "serial": c.serial,
                "firmware": c.firmware,
                "sensor": {"width": c.sensor_width, "height": c.sensor_height, "cfa": "RGGB",
                           "bit_depth": 12, "black_level": sm.BLACK_LEVEL, "white_level": sm.WHITE_LEVEL,
                           "pixel_format": "RAW12_PACKED"},
                "lens": {"focal_length_mm": 35.0, "f_number_min": 1.4, "f_number_max": 11.0,
                         "min_focus_m": 0.3, "lens_position_max": protocol.LENS_POSITION_MAX},
                "readout_modes": modes, "link_bytes_per_s": c.link_bytes_per_s}

    def read_eeprom(self, offset: int = 0, length: int | None = None) -> dict:
        args = _checked("read_eeprom", {"offset": offset, "length": length})
        blob = self._eeprom_blob()
        offset, length = args.get("offset", 0), args.get("length", protocol.EEPROM_PAGE)
        if offset > len(blob):
            raise ModuleError(OUT_OF_RANGE, f"offset {offset} is beyond the end of the "
                              f"{len(blob)}-byte EEPROM", "offset")
        chunk = blob[offset:offset + length]
        return {"offset": offset, "total": len(blob), "data": base64.b64encode(chunk).decode()}

    def _eeprom_blob(self) -> bytes:
        if self._eeprom is None:
            try:  # the factory calibration of this virtual unit (modcam.calibration)
                from modcam import calibration
                cal = calibration.virtual_calibration(self.config.serial)
                self._eeprom = calibration.encode(cal)
            except Exception as exc:  # noqa: BLE001 - reported to the client, not fatal
                raise ModuleError(FAILED, f"the EEPROM cannot be read: {exc}") from exc
        return self._eeprom

    # -- power and state -----------------------------------------------------

    def power(self, on: bool) -> dict:
        on = _checked("power", {"on": on})["on"]
        with self._lock:
            self._advance()
            if not on:
                if self._state is not State.OFF:
                    self._set_state(State.OFF, "powered off by the host")
            elif self._state is State.ERROR:
                raise ModuleError(WRONG_STATE, f"module is in error ({self._reason}); "
                                  "power it off before powering it on again")
            elif self._state is State.OFF:
                if self._temp >= self.config.warning_c:
                    raise ModuleError(WRONG_STATE, f"module is too hot to power on "
                                      f"({self._temp:.1f} °C; it must cool below "
                                      f"{self.config.warning_c:g} °C)")
                seconds = self._next_boot_s or self.config.boot_seconds
                self._next_boot_s = None
                self._boot_started, self._boot_ends = self._temp_at, self._temp_at + seconds
                self._set_state(State.BOOTING, f"boot takes {seconds:g} s")
            return {"state": self._state.value}

    def _set_state(self, new: State, reason: str | None = None) -> None:
        previous, self._state, self._reason = self._state, new, reason
        if new in (State.OFF, State.ERROR):
            self._stall_until = None
        if new is not State.BOOTING:
            self._boot_started = self._boot_ends = None
        self._emit("state", state=new.value, previous=previous.value, reason=reason,
                   power_mw=self._power[new.value])
        if new is State.READY and previous is State.BOOTING:
            self._emit("ready", controls=dict(self._controls))

    def _finish_boot(self) -> None:
        if self._boot_failure is not None:
            reason, self._boot_failure = f"boot failed: {self._boot_failure}", None
            self._set_state(State.ERROR, reason)
            self._emit("error", code=FAILED, message=reason)
        else:
            self._set_state(State.READY, "boot complete")

    @property
    def state(self) -> State:
        with self._lock:
            self._advance()
            return self._state

    def status(self) -> dict:
        with self._lock:
            self._advance()
            out = {"state": self._state.value, "reason": self._reason,
                   "temperature_c": round(self._temp, 3), "thermal": self._level,
                   "power_mw": self._power[self._state.value],
                   "controls": dict(self._controls), "stream": self._stream_info(),
                   "scene": dict(self._scene), "ambient": dict(self._ambient)}
            if self._state is State.BOOTING:
                out["boot"] = {"total_s": self._boot_ends - self._boot_started,
                               "remaining_s": max(0.0, self._boot_ends - self._temp_at)}
            return out

    # -- controls and streaming ----------------------------------------------

    def set_controls(self, **controls) -> dict:
        args = _checked("set_controls", controls)
        if not args:
            raise ModuleError(BAD_REQUEST, "set_controls needs at least one of "
                              + ", ".join(protocol.CONTROLS))
        with self._lock:
            self._require_powered_up("set controls")
            self._controls.update(args)
            return {"controls": dict(self._controls), "stream": self._stream_info()}

    def stream(self, on: bool, fps: float | None = None) -> dict:
        args = _checked("stream", {"on": on, "fps": fps})
        with self._lock:
            if args["on"]:
                self._require_powered_up("stream")
                self._requested_fps = args.get("fps", self._requested_fps)
                if self._state is State.READY:
                    self._set_state(State.STREAMING, "stream started")
            elif self._state is State.STREAMING:
                self._set_state(State.READY, "stream stopped")
            return self._stream_info()

    def _require_powered_up(self, what: str) -> None:
        self._advance()
        if self._state not in (State.READY, State.STREAMING):
            why = f" ({self._reason})" if self._reason else ""
            raise ModuleError(WRONG_STATE, f"cannot {what}: module is {self._state.value}{why}")

    def check_can_capture(self) -> None:
        with self._lock:
            self._require_powered_up("take a still")

    def frame_bytes(self) -> int:
        with self._lock:
            w, h, stride = self._geometry(self._controls["readout_mode"])
            return stride * h

    def _geometry(self, mode: str) -> tuple[int, int, int]:
        return readout_geometry(self.config.sensor_width, self.config.sensor_height, mode)

    def max_frame_bytes(self) -> int:
        w, h, stride = self._geometry("full")
        return stride * h

    def _stream_info(self) -> dict:
        frame = self.frame_bytes()
        link_max = self.config.link_bytes_per_s / frame
        # A sensor cannot start frames faster than it exposes them.
        max_fps = min(link_max, 1e6 / self._controls["exposure_us"])
        return {"active": self._state is State.STREAMING, "requested_fps": self._requested_fps,
                "fps": min(self._requested_fps, max_fps), "max_fps": max_fps,
                "link_max_fps": link_max, "capped": self._requested_fps > max_fps,
                "frame_bytes": frame}

    def stream_period(self) -> float | None:
        """Seconds between stream frames, or None when not streaming."""
        with self._lock:
            self._advance()
            if self._state is not State.STREAMING:
                return None
            return 1.0 / self._stream_info()["fps"]

    def stall_remaining(self) -> float:
        with self._lock:
            self._advance()
            return 0.0 if self._stall_until is None else self._stall_until - self._temp_at

    def next_frame(self, still: bool = False) -> FramePlan | None:
        """The frame to send now, or None (not streaming, not ready, or stalled).
        Takes one pending frame fault."""
        with self._lock:
            self._advance()
            wanted = (State.READY, State.STREAMING) if still else (State.STREAMING,)
            if self._state not in wanted or self._stall_until is not None:
                return None
            flags = (FLAG_THERMAL_WARNING if self._level != "normal" else 0) | \
                (FLAG_STILL if still else 0)
            fault = self._frame_faults.popleft() if self._frame_faults else None
            return FramePlan(self._settings(), self._temp, flags, fault, still)

    def _settings(self) -> FrameSettings:
        """The frame's settings, its real-valued ones as the frame header
        carries them (float32): a frame is rendered from exactly what it says."""
        c = self._controls
        w, h, stride = self._geometry(c["readout_mode"])
        return FrameSettings(c["readout_mode"], w, h, stride, c["exposure_us"],
                             _f32(c["analogue_gain"]), _f32(c["aperture"]),
                             _f32(c["lens_position"]),
                             self._scene["name"], self._scene["distance_m"], self._scene["seed"],
                             self._ambient["lux"], self._ambient["illuminant"])

    # -- what a person or the lab does ---------------------------------------

    def turn_focus_ring(self, position: float) -> dict:
        position = _checked("sim.turn_focus_ring", {"position": position})["position"]
        with self._lock:
            self._advance()
            previous, self._controls["lens_position"] = self._controls["lens_position"], position
            # The ring's encoder sits on the always-powered side, like the
            # EEPROM: it reports even while the sensor is off.
            self._emit("focus-ring", lens_position=position, previous=previous)
            return {"lens_position": position}

    def set_scene(self, name: str, distance_m: float | None = None,
                  seed: int | None = None) -> dict:
        args = _checked("sim.set_scene", {"name": name, "distance_m": distance_m, "seed": seed})
        if args["name"] not in self.scenes:
            raise ModuleError(OUT_OF_RANGE, f"scene {args['name']!r} is not one of "
                              f"{', '.join(self.scenes)}", "name")
        with self._lock:
            self._scene.update(args)
            return {"scene": dict(self._scene)}

    def use_scenes(self, names) -> None:
        """The scenes the frame source can render (the server passes its source's)."""
        with self._lock:
            self.scenes = tuple(names)
            if self._scene["name"] not in self.scenes:
                self._scene["name"] = self.scenes[0]

    def set_ambient(self, temperature_c=None, lux=None, illuminant=None) -> dict:
        args = _checked("sim.set_ambient", {"temperature_c": temperature_c, "lux": lux,
                                            "illuminant": illuminant})
        if not args:
            raise ModuleError(BAD_REQUEST, "sim.set_ambient needs temperature_c, lux or illuminant")
        with self._lock:
            self._advance()     # heat so far at the old ambient
            self._ambient.update(args)
            return {"ambient": dict(self._ambient)}

    def inject_fault(self, kind: str, **params) -> dict:
        args = _checked("sim.inject_fault", {"kind": kind, **params})
        kind = args["kind"]
        with self._lock:
            self._advance()
            if kind in ("link_drop", "garbage_control"):
                raise ModuleError(BAD_REQUEST, f"{kind} is a fault of the link, not of the "
                                  "module: inject it through the control server")
            if kind in FRAME_FAULTS:
                if len(self._frame_faults) > 10_000:
                    raise ModuleError(BUSY, "too many frame faults are already pending")
                self._frame_faults.extend([kind] * args.get("count", 1))
                return {"kind": kind, "pending": self._frame_faults.count(kind)}
            return getattr(self, f"_fault_{kind}")(args)

    def _fault_stall(self, args) -> dict:
        seconds = args.get("seconds", 1.0)
        self._stall_until = self._temp_at + seconds
        return {"kind": "stall", "until_s": seconds}

    def _fault_slow_boot(self, args) -> dict:
        seconds = args.get("seconds", 10.0)
        if self._state is State.BOOTING:      # the boot in progress, else the next one
            self._boot_ends = self._boot_started + seconds
        else:
            self._next_boot_s = seconds
        return {"kind": "slow_boot", "boot_s": seconds}

    def _fault_boot_failure(self, args) -> dict:
        self._boot_failure = args.get("reason", "sensor did not answer (injected fault)")
        return {"kind": "boot_failure", "reason": self._boot_failure}

    def _fault_thermal_shutdown(self, args) -> dict:
        self._temp = max(self._temp, self.config.critical_c)
        self._check_thermal()
        return {"kind": "thermal_shutdown", "temperature_c": self._temp}

    # -- time ----------------------------------------------------------------

    def tick(self) -> float | None:
        """Advance to now; seconds until the model next needs a tick (None: never)."""
        with self._lock:
            self._advance()
            waits = []
            if self._boot_ends is not None:
                waits.append(self._boot_ends - self._temp_at)
            target = self._equilibrium()
            if self._state is not State.OFF or abs(self._temp - target) > 0.05:
                waits.append(min(1.0, max(0.005, self.config.thermal_tau_s / 20)))
            return max(0.0, min(waits)) if waits else None

    def _advance(self) -> None:
        """Bring the model to clock(), taking boot completion and a critical
        crossing at the instants they happen, however long since the last call."""
        now = self._clock()
        while True:
            boot = self._boot_ends if self._boot_ends is not None else math.inf
            crossing = self._critical_crossing()
            if min(boot, crossing) > now:
                break
            self._integrate(min(boot, crossing))
            if boot <= crossing:
                self._finish_boot()
            else:
                self._temp = max(self._temp, self.config.critical_c)   # rounding
                self._check_thermal()
        if self._stall_until is not None and self._stall_until <= now:
            self._stall_until = None
        self._integrate(now)
        self._check_thermal()

    def _critical_crossing(self) -> float:
        """When a powered module heating towards above critical reaches it (or inf)."""
        target, crit = self._equilibrium(), self.config.critical_c
        if self._state is State.OFF or target <= crit or self._temp >= crit:
            return math.inf
        return self._temp_at + self.config.thermal_tau_s * math.log(
            (self._temp - target) / (crit - target))

    def _equilibrium(self) -> float:
        watts = self._power[self._state.value] / 1000.0
        return self._ambient["temperature_c"] + self.config.thermal_k_per_w * watts

    def _integrate(self, t: float) -> None:
        dt = t - self._temp_at
        if dt > 0:
            target = self._equilibrium()
            self._temp = target + (self._temp - target) * math.exp(-dt / self.config.thermal_tau_s)
            self._temp_at = t

    def _check_thermal(self) -> None:
        c, t = self.config, self._temp
        if t >= c.critical_c:
            level = "critical"
        elif t >= c.warning_c or (self._level != "normal" and t >= c.warning_c - c.hysteresis_c):
            level = "warning"
        else:
            level = "normal"
        if level != self._level or abs(t - self._reported_temp) >= c.report_step_c:
            self._level, self._reported_temp = level, t
            self._emit("thermal", level=level, temperature_c=round(t, 2),
                       warning_c=c.warning_c, critical_c=c.critical_c)
        if level == "critical" and self._state is not State.OFF:
            self._set_state(State.OFF, f"thermal shutdown at {t:.1f} °C "
                            f"(critical {c.critical_c:g} °C)")

    def _emit(self, name: str, **fields) -> None:
        if self.listener is not None:
            now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            self.listener({"event": name, "ts_boottime_ns": now, **fields})
