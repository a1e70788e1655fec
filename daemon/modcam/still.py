"""One still, from request to reply: modcamd's capture orchestration.

On the main loop: take the module (Busy if it is taken), make it ready (the
boot hidden behind the call), meter first if AeEnable, apply this shot's
controls, trigger the still, and catch its frame from the ring (the frame
may ring the doorbell before the trigger's reply arrives: it is held until
the reply names its sequence). Off the main loop: the ISP and the writers
(capture.run_still) read the leased slot in place, on a worker thread. Back
on the main loop: the lease is given back, the reply sent.

A removal fails the call with Removed at once; a worker still developing is
told to stop (cancel) and the ring is detached only after it lets go.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
import time

from gi.repository import GLib

from modcam import controls as ctl, journal
from modcam.autofocus import AutofocusRun, MeteringRun
from modcam.capture import Cancelled, ModuleIdentity, StillJob, run_still
from modcam.errors import Failed, ModcamError, Removed, Timeout
from modcam.link.ring import FLAG_STILL
from modcam.pending import Pending

log = logging.getLogger("modcam.still")
STILL_TIMEOUT_S = 10.0


try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):      # not glibc
    _malloc_trim = None


def _run_and_trim(job, **kw):
    """run_still, then hand the ISP's freed buffers back to the system: glibc
    keeps them in per-thread arenas otherwise, and an idle daemon would sit
    on tens of MB after a few 100 MP stills."""
    try:
        return run_still(job, **kw)
    finally:
        if _malloc_trim is not None:
            _malloc_trim(0)


class StillCapture:
    def __init__(self, module, options, *, directory=None, fd: int | None = None):
        self.m, self.options, self.directory, self.fd = module, options, directory, fd
        self.result = Pending("capture")
        self.cancel = threading.Event()
        self.sequence: int | None = None
        self.frame = None
        self.pump = None
        self.worker = None
        self._timer = 0
        self._restore: dict = {}
        self.t = {"start": time.monotonic()}

    def start(self) -> Pending:
        m = self.m
        try:
            m.begin("capture")
        except ModcamError:
            self._close_fd()
            raise
        m.track(self.result)
        self.result.add_done_callback(self._finished)
        chain = m.ensure_ready().then(self._ready)
        if m.settings["AeEnable"] and "ExposureTime" not in self.options.controls:
            chain = chain.then(lambda _: MeteringRun(m).start()).then(self._metered)
        if m.settings["AfMode"] == "continuous":
            chain = chain.then(lambda _: self._focus())
        chain.then(self._shot_controls).then(self._trigger).add_done_callback(
            lambda p: p.error is not None and self.result.reject(p.error))
        return self.result

    def _ready(self, _) -> None:
        self.t["ready"] = time.monotonic()

    def _metered(self, ae: dict) -> None:
        self.exposure = {"ExposureTime": ae["ExposureTime"], "AnalogueGain": ae["AnalogueGain"]}
        self.m.settings.update(self.exposure)

    def _focus(self) -> Pending:
        # Continuous focus on a still camera without a viewfinder: focus before
        # each shot. AutofocusRun takes the module itself, so hand it over.
        m = self.m
        m.busy = None
        run = AutofocusRun(m)
        p = run.start()
        p.add_done_callback(lambda _: setattr(m, "busy", "capture"))
        return p

    def _shot_controls(self, _) -> Pending:
        m = self.m
        wanted = ctl.module_args(self.options.controls)
        if getattr(self, "exposure", None):
            wanted.update(ctl.module_args(self.exposure))
        if self.options.readout_mode:
            wanted["readout_mode"] = self.options.readout_mode
        diff = {k: v for k, v in wanted.items() if m.module_controls.get(k) != v}
        if not diff:
            return Pending.resolved(None)
        # Per-shot controls: what the module had is put back after the still
        # (metered exposure stays: it is the new AE state).
        metered = set(ctl.module_args(getattr(self, "exposure", None) or {}))
        self._restore = {k: m.module_controls[k] for k in diff
                         if k in m.module_controls and k not in metered}
        return m.request("set_controls", **diff).then(m._controls_applied)

    def _trigger(self, _) -> None:
        m = self.m
        self.pump = m.pump
        m.frame_handler = self._on_frame
        self.t["trigger"] = time.monotonic()
        self._timer = GLib.timeout_add(int(STILL_TIMEOUT_S * 1000), self._timed_out)
        m.request("trigger_still").add_done_callback(self._triggered)

    def _triggered(self, p: Pending) -> None:
        m = self.m
        if self._restore and not m.removed:
            m.put_back_controls(**self._restore)
        if p.error is not None:
            self.result.reject(p.error)
            return
        if not p.value.get("delivered", True):
            self.result.reject(Failed(f"module {m.serial} dropped the still: the frame ring "
                                      "was full"))
            return
        self.sequence = int(p.value["sequence"])
        if self.frame is not None and self.frame.header.sequence != self.sequence:
            held, self.frame = self.frame, None
            self.pump.give_back(held)
        if self.frame is not None:
            self._develop()
            return
        pump = self.pump
        if pump is None or pump is not m.pump:
            return                    # the ring went away: that fails the capture
        pump.pump()
        # The module replies once the still is in the ring, so the pump has now
        # read every frame up to it. Not handed to us (and no lease in the way):
        # the ring skipped it as damaged, whatever became of its sequence number
        # (a truncated header is not trusted to move it).
        if self.frame is None and pump.held is None and pump.consumer is not None:
            self.result.reject(Failed(f"module {m.serial}: the still arrived damaged and was "
                                      f"discarded ({pump.consumer.last_skip})"))

    def _on_frame(self, frame) -> bool:
        if frame is None:
            self.result.reject(Removed(f"module {self.m.serial} lost its frame ring"))
            return False
        if self.result.done or self.frame is not None or not frame.header.flags & FLAG_STILL:
            return False
        if self.sequence is not None and frame.header.sequence != self.sequence:
            return False
        self.frame = frame
        if self.sequence is not None:
            GLib.idle_add(self._develop)
        return True

    def _timed_out(self) -> bool:
        self._timer = 0
        self.result.reject(Timeout(f"module {self.m.serial} did not deliver the still within "
                                   f"{STILL_TIMEOUT_S:g} s"))
        return GLib.SOURCE_REMOVE

    def _develop(self) -> bool:
        if self.worker is not None or self.result.done or self.frame is None:
            return GLib.SOURCE_REMOVE
        if self._timer:
            GLib.source_remove(self._timer)
            self._timer = 0
        m = self.m
        self.t["frame"] = time.monotonic()
        s = m.settings
        wb = None if s["AwbEnable"] else (s["ColourGains"][0], 1.0, s["ColourGains"][1])
        ident = m.identity
        job = StillJob(raw=self.frame.data, header=self.frame.header, calibration=m.calibration,
                       identity=ModuleIdentity(vendor=ident.get("vendor", ""),
                                               model=ident.get("model", ""), serial=m.serial,
                                               firmware=ident.get("firmware", "")),
                       options=self.options, wb_gains=wb)
        self.worker = m.executor.submit(_run_and_trim, job, directory=self.directory,
                                        fd=self.fd, cancel=self.cancel)
        self.worker.add_done_callback(lambda f: GLib.idle_add(self._developed, f))
        return GLib.SOURCE_REMOVE

    def _developed(self, future) -> bool:
        frame, self.frame = self.frame, None
        if frame is not None and self.pump is not None:
            self.pump.give_back(frame)
        self._close_fd()
        self.worker = None
        self.t["done"] = time.monotonic()
        try:
            result = future.result()
        except Cancelled:
            self.result.reject(Removed(f"module {self.m.serial} was removed"))
            return GLib.SOURCE_REMOVE
        except BaseException as exc:   # noqa: BLE001 - mapped to a documented error
            self.result.reject(exc)
            return GLib.SOURCE_REMOVE
        self._report(result)
        self.result.resolve(result)
        return GLib.SOURCE_REMOVE

    def _report(self, result: dict) -> None:
        t, m = self.t, self.m
        timings = {"ready": t.get("ready", t["start"]) - t["start"],
                   "exposure_readout": t["frame"] - t["trigger"],
                   "isp_and_write": t["done"] - t["frame"], "total": t["done"] - t["start"]}
        result["timings"] = {**result.get("timings", {}), **timings}
        if m.settings["AwbEnable"] and result.get("colour_gains"):
            m.settings["ColourGains"] = tuple(result["colour_gains"])
            m.changed()
        log.info("module %s: still %d (%s) in %.2f s", m.serial, result.get("sequence", -1),
                 ", ".join(result.get("paths", [])) or result.get("format", ""),
                 timings["total"], extra=journal.fields(serial=m.serial))

    def _finished(self, p: Pending) -> None:
        m = self.m
        if self._timer:
            GLib.source_remove(self._timer)
            self._timer = 0
        if m.frame_handler == self._on_frame:
            m.frame_handler = None
        if p.error is not None:
            self.cancel.set()
            if self.worker is None and self.frame is not None and self.pump is not None:
                frame, self.frame = self.frame, None
                self.pump.give_back(frame)
        if self.worker is None:
            self._close_fd()
        m.end("capture")

    def _close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
