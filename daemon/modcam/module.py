"""One attached camera module, as modcamd models it: identity, link, state,
power, claims and controls. Plain Python on the GLib main loop; the D-Bus
object (bus/objects.py) forwards calls here and publishes `properties()`.

Life: created on the udev add (published at once, so ModuleAdded is quick),
then attached in the background: control channel, hello, identify, the
calibration EEPROM, status. Power: on demand (ensure_ready(), which hides the
boot behind the caller's Pending) and off after IdleTimeout with no claim and
no work. The ring is attached while powered. Everything the module says
arrives as events (state, ready, focus-ring, thermal) and is reflected in the
properties at once. `remove()` (unplug) and a closed control channel fail
every pending call with Removed and free every fd.

States: off -> booting -> ready <-> streaming / capturing, and error (the
module's own error state, or ours: a bad calibration, a boot that timed out,
a lost control channel). A request the state does not allow is refused with
an error naming the state; a request in error retries the boot.
"""
from __future__ import annotations

import logging

from gi.repository import GLib

from modcam import calibration as calib, controls as ctl, journal
from modcam.claims import Claims
from modcam.errors import Busy, Failed, NotReady, Removed, Timeout
from modcam.link import protocol
from modcam.link.control_channel import ChannelClosed, ControlChannel, ControlError
from modcam.link.frame_pump import FramePump
from modcam.link.module_info import ModuleInfo
from modcam.module_power import POWERED, ModulePower
from modcam.pending import Pending

log = logging.getLogger("modcam.module")
CONTROL_TIMEOUT = 3.0


def control_error(op: str, exc: BaseException, serial: str) -> Exception:
    """A control-channel failure as one of the documented errors."""
    from modcam.errors import InvalidArgument
    if isinstance(exc, ChannelClosed):
        return Removed(f"module {serial} was removed ({exc})")
    if isinstance(exc, ControlError):
        if exc.code == protocol.TIMEOUT:
            return Timeout(f"module {serial} did not answer {op} in time")
        kind = {protocol.WRONG_STATE: NotReady, protocol.BUSY: Busy,
                protocol.OUT_OF_RANGE: InvalidArgument}.get(exc.code, Failed)
        return kind(f"module {serial}: {exc.message or exc.code}")
    return Failed(f"module {serial}: {op} failed: {exc}")


class Module(ModulePower):
    def __init__(self, info: ModuleInfo, config, executor, on_changed):
        self.info, self.config, self.executor = info, config, executor
        self.on_changed = on_changed          # callable(dict of changed properties)
        self.claims = Claims()
        self.channel: ControlChannel | None = None
        self.pump: FramePump | None = None
        self.identity: dict = {}
        self.calibration = None
        self.limits = ctl.Limits()
        self.removed = False
        self.busy: str | None = None          # "capture" or "autofocus": exclusive work
        self.frame_handler = None             # who gets ring frames (a still, an AF run)
        self.work = 0                         # operations in flight (keep it powered)
        self._mstate, self._fault = "off", ""
        self._module_reason = ""
        self._attached: Pending | None = None
        self._ring_pending: Pending | None = None
        self._boot_waiters: list[Pending] = []
        self._boot_timer = self._idle_timer = self._stats_timer = 0
        self._tracked: set[Pending] = set()
        self._watch = 0
        self._host_power_off = False          # a retry's power-off is in flight
        self.module_controls: dict = {}       # what the module reports it has
        self.settings = {"AeEnable": False, "AwbEnable": True, "ColourGains": (1.0, 1.0),
                         "AfMode": "manual", "ExposureTime": 10000, "AnalogueGain": 1.0,
                         "Aperture": 2.8, "LensPosition": 0.0, "ReadoutMode": "full"}
        self.temperature, self.power_mw = 0.0, 0
        self._published = self.properties()

    # -- properties ----------------------------------------------------------

    @property
    def serial(self) -> str:
        return self.info.serial

    @property
    def state(self) -> str:
        if self._fault or self._mstate == "error":
            return "error"
        if self.busy == "capture" and self._mstate in ("ready", "streaming"):
            return "capturing"
        return self._mstate

    @property
    def state_reason(self) -> str:
        return self._fault or (self._module_reason if self._mstate == "error" else "")

    def properties(self) -> dict:
        ident, sensor, lens = self.identity, self.identity.get("sensor", {}), \
            self.identity.get("lens", {})
        stats = self.pump.stats if self.pump is not None else None
        s = self.settings
        return {
            "Serial": self.serial, "Model": ident.get("model") or self.info.model,
            "Firmware": ident.get("firmware") or self.info.firmware,
            "State": self.state, "StateReason": self.state_reason,
            "Sensor": {k: GLib.Variant(t, sensor[k]) for k, t in
                       (("width", "u"), ("height", "u"), ("cfa", "s"), ("bit_depth", "u"),
                        ("black_level", "u"), ("white_level", "u")) if k in sensor}
            | ({"readout_modes": GLib.Variant("as", list(self.limits.readout_modes))}
               if sensor else {}),
            "Lens": {k: GLib.Variant("d", float(lens[src])) for k, src in
                     (("focal_length_mm", "focal_length_mm"), ("aperture_min", "f_number_min"),
                      ("aperture_max", "f_number_max"),
                      ("lens_position_max", "lens_position_max")) if src in lens},
            "ReadoutMode": s["ReadoutMode"], "FocusMode": s["AfMode"],
            "LensPosition": float(s["LensPosition"]), "Aperture": float(s["Aperture"]),
            "ExposureTime": int(s["ExposureTime"]), "AnalogueGain": float(s["AnalogueGain"]),
            "AeEnable": s["AeEnable"], "AwbEnable": s["AwbEnable"],
            "ColourGains": [float(g) for g in s["ColourGains"]],
            "Temperature": float(self.temperature), "PowerDraw": int(self.power_mw),
            "IdleTimeout": int(round(self.config.idle_timeout)),
            "Clients": self.claims.holders,
            "FramesReceived": self._frames[0] + (stats.delivered if stats else 0),
            "FramesDropped": self._frames[1] + (stats.dropped if stats else 0),
            "FramesCorrupt": self._frames[2] + (stats.skipped if stats else 0),
        }

    _frames = (0, 0, 0)       # the counters of the rings already detached, summed

    def changed(self) -> None:
        """Publish whatever differs from what was last published."""
        now = self.properties()
        diff = {k: v for k, v in now.items() if self._published.get(k) != v}
        if diff:
            if "State" in diff:
                log.info("module %s: %s%s", self.serial, now["State"],
                         f" ({now['StateReason']})" if now["StateReason"] else "",
                         extra=journal.fields(serial=self.serial, state=now["State"]))
            self._published = now
            self.on_changed(diff)
        self._update_idle()

    # -- attach --------------------------------------------------------------

    def attach(self) -> Pending:
        """Connect and learn the module (once; again after the channel was lost)."""
        if self._attached is not None and (not self._attached.done or self.channel):
            return self._attached
        self._attached = p = Pending(f"attach {self.serial}")
        try:
            self.channel = ControlChannel(self.info.control_path, on_event=self._on_event,
                                          timeout=CONTROL_TIMEOUT, hello=False)
        except ChannelClosed as exc:
            self._set_fault(f"cannot reach the module's control channel: {exc}")
            p.reject(Removed(f"module {self.serial} cannot be reached: {exc}"))
            self._attached = None
            return p
        self._watch = GLib.unix_fd_add_full(GLib.PRIORITY_HIGH, self.channel.fileno(),
                                            GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR,
                                            self._on_channel)
        self._request("hello", version=protocol.VERSION).then(self._on_hello).then(
            lambda _: self._request("identify")).then(self._on_identify).then(
            lambda _: self._read_eeprom(0, [])).then(self._on_eeprom).then(
            lambda _: self._request("status")).then(self._on_status).add_done_callback(
            lambda r: p.reject(r.error) if r.error else p.resolve(None))
        p.add_done_callback(self._attach_done)
        return p

    def _attach_done(self, p: Pending) -> None:
        if p.error is not None and not self.removed and not self._fault:
            self._set_fault(f"attaching failed: {p.error}")
        self.changed()

    def _on_hello(self, result: dict) -> None:
        self.channel.hello_result = result
        self._mstate = result.get("state", "off")

    def _on_identify(self, result: dict) -> None:
        self.identity = result
        self.limits = ctl.Limits.from_identify(result)

    def _read_eeprom(self, offset: int, chunks: list) -> Pending:
        import base64

        def got(result):
            data = base64.b64decode(result.get("data", ""), validate=True)
            chunks.append(data)
            if offset + len(data) >= int(result.get("total", 0)) or not data:
                return b"".join(chunks)
            return self._read_eeprom(offset + len(data), chunks)
        return self._request("read_eeprom", offset=offset).then(got)

    def _on_eeprom(self, blob: bytes) -> None:
        try:
            self.calibration = calib.decode(blob)
        except calib.CalibrationError as exc:
            self._set_fault(f"the calibration EEPROM is invalid: {exc}")
            return
        if self.calibration.serial != self.serial:
            self.calibration = None
            self._set_fault(f"the calibration EEPROM belongs to module "
                            f"{calib.decode(blob).serial!r}, not {self.serial!r}")

    def _on_status(self, result: dict) -> None:
        self._mstate = result.get("state", self._mstate)
        self._module_reason = result.get("reason") or ""
        self.temperature = float(result.get("temperature_c", 0.0))
        self.power_mw = int(result.get("power_mw", 0))
        self.module_controls = dict(result.get("controls") or {})
        if self._mstate in POWERED:   # found running (modcamd restarted): it has the truth
            self._adopt_module_controls()
        log.info("module %s attached (%s %s, firmware %s)", self.serial,
                 self.identity.get("vendor"), self.identity.get("model"),
                 self.identity.get("firmware"), extra=journal.fields(serial=self.serial))

    def _adopt_module_controls(self) -> None:
        for dbus_name, key in ctl.MODULE_KEYS.items():
            if key in self.module_controls:
                self.settings[dbus_name] = self.module_controls[key]

    def _set_fault(self, reason: str) -> None:
        self._fault = reason
        log.warning("module %s: %s", self.serial, reason,
                    extra=journal.fields(serial=self.serial, state="error"))
        self.changed()

    # -- requests on the control channel --------------------------------------

    def _request(self, op: str, fds=(), **args) -> Pending:
        p = Pending(op)
        if self.channel is None or self.channel.closed:
            p.reject(Removed(f"module {self.serial} is not connected"))
            return p

        def done(result, error, reply_fds):
            if error is not None:
                p.reject(control_error(op, error, self.serial))
            else:
                p.resolve((result, reply_fds) if op == "attach_ring" else result)
        try:
            self.channel.send_request(op, done, fds, **args)
        except (ChannelClosed, ControlError) as exc:
            p.reject(control_error(op, exc, self.serial))
        return p

    def request(self, op: str, **args) -> Pending:
        return self._request(op, **args)

    def _on_channel(self, _fd, _condition) -> bool:
        try:
            self.channel.process_incoming()
        except ChannelClosed as exc:
            self._watch = 0
            self._lost(str(exc))
            return GLib.SOURCE_REMOVE
        return GLib.SOURCE_CONTINUE

    def _on_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "state":
            self._on_state_event(event)
        elif kind == "ready":
            self.module_controls = dict(event.get("controls") or {})
            self._booted()
        elif kind == "focus-ring":
            try:
                self.settings["LensPosition"] = float(event["lens_position"])
            except (KeyError, TypeError, ValueError):
                return
            self.settings["AfMode"] = "manual"
            self.changed()
        elif kind == "thermal":
            try:
                self.temperature = float(event["temperature_c"])
            except (KeyError, TypeError, ValueError):
                return
            if event.get("level") != "normal":
                log.warning("module %s is %s: %.1f °C", self.serial, event.get("level"),
                            self.temperature, extra=journal.fields(serial=self.serial))
            self.changed()
        elif kind == "error":
            log.warning("module %s reports: %s", self.serial, event.get("message"),
                        extra=journal.fields(serial=self.serial))

    def _on_state_event(self, event: dict) -> None:
        state = event.get("state")
        if state not in ("off", "booting", "ready", "streaming", "error"):
            return
        previous, self._mstate = self._mstate, state
        self._module_reason = str(event.get("reason") or "")
        if isinstance(event.get("power_mw"), (int, float)):
            self.power_mw = int(event["power_mw"])
        if state == "error":
            self._fail_boot(Failed(f"module {self.serial} failed: {self._module_reason or 'error'}"))
        elif state == "off" and previous in POWERED:
            if not self._host_power_off:
                self._fail_boot(Failed(f"module {self.serial} powered off: "
                                       f"{self._module_reason or 'no reason given'}"))
            self._drop_ring()
        self.changed()

    # -- work, claims ------------------------------------------------------------

    def track(self, p: Pending) -> Pending:
        """Fail `p` with Removed if the module goes away before it settles."""
        self._tracked.add(p)
        p.add_done_callback(self._tracked.discard)
        return p

    def begin(self, kind: str) -> None:
        if self.busy is not None:
            raise Busy(f"module {self.serial} is busy: {self.busy} in progress")
        self.busy = kind
        self.work += 1
        self.changed()

    def end(self, kind: str) -> None:
        if self.busy == kind:
            self.busy = None
        self.work = max(0, self.work - 1)
        self.changed()

    def claim(self, sender: str) -> Pending:
        self.claims.add(sender)
        self.changed()
        p = self.track(self.ensure_ready())
        p.add_done_callback(lambda r: r.error is not None and self._claim_failed(sender))
        return p

    def _claim_failed(self, sender: str) -> None:
        """A Claim answered with an error holds nothing: the caller will not Release it."""
        if self.claims.count(sender):      # not if it left the bus meanwhile
            self.claims.release(sender)
            self.changed()

    def release(self, sender: str) -> None:
        self.claims.release(sender)
        self.changed()

    def client_vanished(self, sender: str) -> None:
        if self.claims.drop(sender):
            log.info("module %s: %s left the bus; its claim is released", self.serial, sender,
                     extra=journal.fields(serial=self.serial))
            self.changed()

    # -- going away ------------------------------------------------------------

    def _lost(self, why: str) -> None:
        self._fail_all(Removed(f"module {self.serial} was removed ({why})"))
        self._close_channel()
        if not self.removed:
            self._fault = f"the module's control channel closed: {why}"
            self._mstate = "off"
            self.changed()

    def fail_pending(self, error: BaseException) -> None:
        """Fail every call waiting on this module (modcamd is stopping)."""
        self._fail_all(error)

    def _fail_all(self, error: BaseException) -> None:
        self._fail_boot(error)
        for p in list(self._tracked):
            p.reject(error)
        if self.frame_handler is not None:
            self.frame_handler(None)

    def _close_channel(self) -> None:
        self._drop_ring()
        if self._watch:
            GLib.source_remove(self._watch)
            self._watch = 0
        if self.channel is not None:
            self.channel.close()
        self.channel, self._attached = None, None

    def remove(self, why: str = "was removed") -> None:
        """The module was unplugged (or modcamd is stopping): fail everything
        pending with Removed, free everything."""
        if self.removed:
            return
        self.removed = True
        for timer in ("_idle_timer", "_boot_timer"):
            if getattr(self, timer):
                GLib.source_remove(getattr(self, timer))
                setattr(self, timer, 0)
        self._fail_all(Removed(f"module {self.serial} {why}"))
        self._close_channel()
