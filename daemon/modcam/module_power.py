"""A module's power: booting on demand, the boot timeout, applying settings
at ready, the frame ring (attached while it boots, detached when it powers
down), and the idle power-down. Part of module.Module (a mixin, so that
module.py keeps the identity, events and life cycle).
"""
from __future__ import annotations

import logging
import os

from gi.repository import GLib

from modcam import controls as ctl, journal
from modcam.errors import Failed, Removed, Timeout
from modcam.link import protocol
from modcam.link.frame_pump import FramePump
from modcam.link.ring import Consumer
from modcam.pending import Pending

log = logging.getLogger("modcam.module")
POWERED = ("booting", "ready", "streaming")


class ModulePower:
    # -- power -----------------------------------------------------------------

    def ensure_ready(self) -> Pending:
        """Resolves once the module is ready (booting it if needed) with the
        ring attached and the settings applied."""
        if self.removed:
            return Pending.rejected(Removed(f"module {self.serial} was removed"))
        if self.channel is None or self._attached is None or not self._attached.done:
            return self.attach().then(lambda _: self.ensure_ready())
        if self.calibration is None and self.identity:
            return Pending.rejected(Failed(f"module {self.serial} cannot be used: "
                                           f"{self.state_reason or 'no calibration'}"))
        if self._mstate in ("ready", "streaming") and not self._fault and self.pump is not None:
            return Pending.resolved(None)
        waiter = Pending(f"boot {self.serial}")
        self._boot_waiters.append(waiter)
        if self._mstate in ("ready", "streaming") and not self._fault:
            self._booted()
        elif self._mstate != "booting":
            self._power_on()
        return waiter

    def _power_on(self) -> None:
        retry = self._mstate == "error" or self._fault
        self._fault = ""
        if not self._boot_timer:
            self._boot_timer = GLib.timeout_add(int(self.config.boot_timeout * 1000),
                                                self._boot_timed_out)
        first = Pending.resolved(None)
        if retry:
            # The module reports "off" (before its reply) for this power-off of
            # ours: not the end of the boot our waiters wait for.
            self._host_power_off = True
            first = self._request("power", on=False)
            first.add_done_callback(lambda _: setattr(self, "_host_power_off", False))
        first.then(lambda _: self._request("power", on=True)).add_done_callback(
            lambda r: self._fail_boot(r.error) if r.error else self.changed())
        # The ring (hundreds of MB to set up on both sides) is made while the
        # module boots, so a Claim replies at ready, not a ring set-up later.
        self._attach_ring()

    def _boot_timed_out(self) -> bool:
        self._boot_timer = 0
        err = Timeout(f"module {self.serial} did not become ready within "
                      f"{self.config.boot_timeout:g} s")
        self._fail_boot(err)
        self._set_fault(str(err))
        self._request("power", on=False)
        return GLib.SOURCE_REMOVE

    def _booted(self) -> None:
        """Ready: apply our settings, attach the ring, then wake the waiters."""
        if self._boot_timer:
            GLib.source_remove(self._boot_timer)
            self._boot_timer = 0
        wanted = ctl.module_args({k: v for k, v in self.settings.items()})
        differ = {k: v for k, v in wanted.items() if self.module_controls.get(k) != v}
        step = self._request("set_controls", **differ) if differ else Pending.resolved(None)
        step.then(self._controls_applied).then(lambda _: self._attach_ring()).add_done_callback(
            self._wake_waiters)

    def put_back_controls(self, **controls) -> Pending:
        """Restore module controls after a run (autofocus, a per-shot still).
        The cached controls change at once, not at the reply: requests are
        answered in order, and a capture that starts before the reply must
        compare its wishes with what the module will have by then (else a
        binned still right after an autofocus found "binned" cached, asked
        for nothing, and got a full frame)."""
        self.module_controls.update(controls)
        p = self.request("set_controls", **controls)
        p.add_done_callback(lambda r: r.error or self._controls_applied(r.value))
        return p

    def _controls_applied(self, result) -> None:
        if isinstance(result, dict) and isinstance(result.get("controls"), dict):
            self.module_controls = dict(result["controls"])
            self._adopt_module_controls()

    def _wake_waiters(self, p: Pending) -> None:
        waiters, self._boot_waiters = self._boot_waiters, []
        for w in waiters:
            w.reject(p.error) if p.error is not None else w.resolve(None)
        self.changed()

    def _fail_boot(self, error: BaseException) -> None:
        if self._boot_timer:
            GLib.source_remove(self._boot_timer)
            self._boot_timer = 0
        waiters, self._boot_waiters = self._boot_waiters, []
        for w in waiters:
            w.reject(error)
        self.changed()

    def _attach_ring(self) -> Pending:
        if self.pump is not None:
            return Pending.resolved(None)
        if self._ring_pending is not None and not self._ring_pending.done:
            return self._ring_pending
        doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

        def attached(answer):
            result, fds = answer
            try:
                if len(fds) != 1:
                    raise Failed(f"module {self.serial} sent {len(fds)} descriptors with its "
                                 "frame ring instead of one")
                consumer = Consumer(fds[0], doorbell_fd=doorbell)
            finally:
                protocol.close_fds(fds)
                os.close(doorbell)
            if self.removed or self.channel is None or self.pump is not None:
                consumer.close()          # the module went away meanwhile
                return
            self.pump = FramePump(consumer, self._on_frame, self._on_ring_corrupt)
            if not self._stats_timer:
                self._stats_timer = GLib.timeout_add(250, self._publish_stats)

        def failed(error):
            os.close(doorbell)
            raise error
        self._ring_pending = self._request("attach_ring", fds=(doorbell,), slot_count=4).then(
            attached, failed)
        return self._ring_pending

    def _publish_stats(self) -> bool:
        self.changed()
        return GLib.SOURCE_CONTINUE

    def _drop_ring(self) -> None:
        if self.pump is not None:
            st = self.pump.stats
            if st is not None:
                received, dropped, corrupt = self._frames
                self._frames = (received + st.delivered, dropped + st.dropped,
                                corrupt + st.skipped)
            self.pump.close()
            self.pump = None
        if self._stats_timer:
            GLib.source_remove(self._stats_timer)
            self._stats_timer = 0

    def _on_frame(self, frame) -> bool:
        handler = self.frame_handler
        return bool(handler(frame)) if handler is not None else False

    def _on_ring_corrupt(self, why: str) -> None:
        self._drop_ring()
        self._set_fault(f"the frame ring is corrupt: {why}")
        # The module is still here: what waited on the ring failed, it was not removed.
        self._fail_all(Failed(f"module {self.serial}: the frame ring is corrupt ({why})"))

    # -- idle power-down -------------------------------------------------------

    def _update_idle(self) -> None:
        idle = (not self.removed and self._mstate in POWERED and not self.claims
                and self.work == 0 and not self._boot_waiters and self.channel is not None)
        if idle and not self._idle_timer:
            self._idle_timer = GLib.timeout_add(int(self.config.idle_timeout * 1000),
                                                self._idle_expired)
        elif not idle and self._idle_timer:
            GLib.source_remove(self._idle_timer)
            self._idle_timer = 0

    def _idle_expired(self) -> bool:
        self._idle_timer = 0
        log.info("module %s idle for %g s: powering down", self.serial, self.config.idle_timeout,
                 extra=journal.fields(serial=self.serial))
        self._drop_ring()
        self._request("power", on=False)
        return GLib.SOURCE_REMOVE
