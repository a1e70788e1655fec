"""Runs on streamed binned frames: the contrast-detect autofocus cycle and
the auto-exposure metering that precedes a still when AeEnable is on.

Both follow one pattern (`StreamRun`): switch the module to binned readout,
stream at the link's rate, look at each frame on the main loop (a window of
it, unpacked from RAW12: about a millisecond), move the lens or change the
exposure, and only trust frames taken with the setting asked for (their
header says so). The ISP's state machines (isp/aaa.py) decide; this file
only drives the module. At the end the stream stops and the readout mode
is restored.
"""
from __future__ import annotations

import logging
import time

from gi.repository import GLib

from modcam import raw12
from modcam.errors import Failed, Removed, Timeout
from modcam.isp.aaa import AutoExposure, AutoFocus, ExposureControls, ExposureLimits
from modcam.isp.stats import StatsEngine, focus_measure
from modcam.link.ring import Readout
from modcam.pending import Pending

log = logging.getLogger("modcam.autofocus")
FRAME_TIMEOUT_S = 5.0
LENS_TOLERANCE = 1e-3      # dioptres: header floats are float32


def centre_window(frame, fraction: float = 1 / 3):
    """The central `fraction` of a RAW12 frame as a uint16 CFA (rows unpacked
    only where the window is)."""
    h, w = frame.header.height, frame.header.width
    r0 = int(h * (1 - fraction) / 2) & ~1
    r1 = r0 + (int(h * fraction) & ~1)
    c0 = int(w * (1 - fraction) / 2) & ~1
    c1 = c0 + (int(w * fraction) & ~1)
    rows = raw12.unpack(frame.data, w, rows=(r0, r1))
    return rows[:, c0:c1]


class StreamRun:
    """Base: one run over streamed binned frames, exclusive on the module."""
    kind = "stream"

    def __init__(self, module):
        self.m = module
        self.result = Pending(self.kind)
        self.frames = 0
        self._timer = 0
        self._restore_mode = None
        self._started = time.monotonic()

    def start(self) -> Pending:
        self.m.begin(self.kind)
        return self._run(self._finish)

    def _run(self, on_done) -> Pending:
        """Ready the module, switch to binned, stream; frames come to _on_frame."""
        m = self.m
        m.track(self.result)
        self.result.add_done_callback(on_done)
        m.ensure_ready().then(self._setup).then(
            lambda _: m.request("stream", on=True, fps=1000.0)).add_done_callback(
            lambda p: self.result.reject(p.error) if p.error else self._arm())
        return self.result

    def _setup(self, _):
        m = self.m
        if m.module_controls.get("readout_mode") != "binned":
            self._restore_mode = m.module_controls.get("readout_mode")
        first = self.first_controls()
        return m.request("set_controls", readout_mode="binned", **first).then(
            m._controls_applied)

    def _arm(self) -> None:
        self.m.frame_handler = self._on_frame
        self._rearm_timer()

    def _rearm_timer(self) -> None:
        if self._timer:
            GLib.source_remove(self._timer)
        self._timer = GLib.timeout_add(int(FRAME_TIMEOUT_S * 1000), self._timed_out)

    def _timed_out(self) -> bool:
        self._timer = 0
        self.result.reject(Timeout(f"module {self.m.serial} sent no usable frame for "
                                   f"{FRAME_TIMEOUT_S:g} s during {self.kind}"))
        return GLib.SOURCE_REMOVE

    def _on_frame(self, frame) -> bool:
        if frame is None:     # the ring went away
            self.result.reject(Removed(f"module {self.m.serial} lost its frame ring"))
            return False
        h = frame.header
        if h.readout_mode != Readout.BINNED or not self.matches(h) or self.waiting:
            return False
        self.frames += 1
        self._rearm_timer()
        try:
            self.step(frame)
        except Exception as exc:   # noqa: BLE001 - settles the run, not the loop
            self.result.reject(exc if isinstance(exc, (Failed, Timeout)) else
                               Failed(f"{self.kind} failed: {exc}"))
        return False

    waiting = False

    def ask(self, **controls) -> None:
        """Change module controls; frames are ignored until the module confirms."""
        self.waiting = True

        def done(p):
            self.waiting = False
            if p.error is not None:
                self.result.reject(p.error)
            else:
                self.m._controls_applied(p.value)
        self.m.request("set_controls", **controls).add_done_callback(done)

    def _finish(self, _p) -> None:
        m = self.m
        if self._timer:
            GLib.source_remove(self._timer)
            self._timer = 0
        if m.frame_handler == self._on_frame:
            m.frame_handler = None
        if not m.removed and m.channel is not None:
            m.request("stream", on=False)
            if self._restore_mode:
                m.put_back_controls(readout_mode=self._restore_mode)
        m.end(self.kind)

    # subclasses
    def first_controls(self) -> dict:
        return {}

    def matches(self, header) -> bool:
        return True

    def step(self, frame) -> None:
        raise NotImplementedError


class AutofocusRun(StreamRun):
    """One contrast-detect AF cycle; resolves to the D-Bus result dict."""
    kind = "autofocus"

    def __init__(self, module):
        super().__init__(module)
        self.af = AutoFocus(range_dpt=module.limits.lens_position)
        self.asked = self.af.start(float(module.settings["LensPosition"]))

    def first_controls(self) -> dict:
        return {"lens_position": self.asked}

    def matches(self, header) -> bool:
        return abs(header.lens_position - self.asked) <= LENS_TOLERANCE

    def step(self, frame) -> None:
        measure = focus_measure(centre_window(frame), black_level=_black_level(self.m))
        nxt = self.af.update(measure)
        if isinstance(nxt, float):
            self.asked = nxt
            self.ask(lens_position=nxt)
            return
        self._land(nxt)

    def _land(self, res) -> None:
        m = self.m
        self.waiting = True       # the cycle is over: no frame may step it again
        position = min(max(res.position, 0.0), m.limits.lens_position[1])
        elapsed = time.monotonic() - self._started

        def done(p):
            if p.error is not None:
                self.result.reject(p.error)
                return
            m._controls_applied(p.value)
            m.settings["LensPosition"] = position
            m.settings["AfMode"] = "auto"
            log.info("module %s: autofocus %s at %.3f dpt after %d frames in %.2f s",
                     m.serial, "locked" if res.success else "failed", position, res.frames,
                     elapsed)
            self.result.resolve({"position": position, "focus_measure": float(res.focus_measure),
                                 "frames": int(res.frames), "success": bool(res.success),
                                 "seconds": elapsed})
        m.request("set_controls", lens_position=position).add_done_callback(done)


def _black_level(m) -> int:
    return int(m.calibration.black_level) if m.calibration is not None else 256


class MeteringRun(StreamRun):
    """Auto-exposure before a still: a few binned frames until the exposure
    converges (at most `max_frames`); resolves to the chosen controls."""
    kind = "metering"

    def __init__(self, module, max_frames: int = 6):
        super().__init__(module)
        self.max_frames = max_frames
        self.ae = AutoExposure(limits=ExposureLimits())
        s = module.settings
        self.current = ExposureControls(int(s["ExposureTime"]), float(s["AnalogueGain"]))
        self.engine = StatsEngine(module.calibration, mode="binned")

    def start(self) -> Pending:
        # Metering is part of a capture that already holds the module: no begin().
        return self._run(self._finish_metering)

    def _finish_metering(self, p) -> None:
        self.m.work += 1          # _finish's end() balances this; the capture keeps `busy`
        self._finish(p)

    def matches(self, header) -> bool:
        return (header.exposure_us == int(round(self.current.exposure_us))
                and abs(header.analogue_gain - self.current.gain) < 1e-3)

    def step(self, frame) -> None:
        # A binned frame unpacks in a few ms; the stats read a sparse grid of it.
        stats = self.engine.compute(raw12.unpack(frame.data, frame.header.width),
                                    f_number=frame.header.aperture)
        new, converged = self.ae.update(stats, self.current)
        exposure = int(round(min(max(new.exposure_us, 30), 1_000_000)))
        gain = float(min(max(new.gain, 1.0), 16.0))
        if converged or self.frames >= self.max_frames:
            self.result.resolve({"ExposureTime": exposure, "AnalogueGain": gain,
                                 "frames": self.frames, "converged": bool(converged)})
            return
        self.current = ExposureControls(exposure, gain)
        self.ask(exposure_us=exposure, analogue_gain=gain)
