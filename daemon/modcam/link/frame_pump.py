"""Frames from the ring, on the GLib main loop: the doorbell watched, every
published frame offered to whoever wants it, the rest released at once.

`on_frame(frame)` returns True to keep the lease (a still handed to the ISP
thread), which pauses the pump: the ring holds one lease at a time, and the
producer drops rather than waits meanwhile. `give_back()` releases it and
resumes. `close()` with a lease out defers detaching the ring until the
lease comes back, so a worker thread never reads unmapped memory.

The doorbell is drained before the ring is read: the producer rings after
publishing, so a frame published during the read rings again and is not lost.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

from gi.repository import GLib

from modcam.link.ring import Consumer, Frame, RingCorrupt

log = logging.getLogger("modcam.link.frames")


class FramePump:
    def __init__(self, consumer: Consumer, on_frame: Callable[[Frame], bool],
                 on_corrupt: Callable[[str], None]):
        self.consumer, self.on_frame, self.on_corrupt = consumer, on_frame, on_corrupt
        self.held: Frame | None = None
        self._closing = False
        self._source = GLib.unix_fd_add_full(GLib.PRIORITY_DEFAULT, consumer.fileno(),
                                             GLib.IO_IN, self._on_doorbell)

    @property
    def stats(self):
        return self.consumer.stats if self.consumer is not None else None

    def _on_doorbell(self, fd, _condition) -> bool:
        try:
            os.read(fd, 8)            # eventfd: reset the counter
        except BlockingIOError:
            pass
        self.pump()
        return GLib.SOURCE_CONTINUE

    def pump(self) -> None:
        """Offer every frame waiting (stops while a lease is held)."""
        while self.held is None and self.consumer is not None and not self._closing:
            try:
                frame = self.consumer.acquire(timeout=0)
            except RingCorrupt as exc:
                self.on_corrupt(str(exc))
                return
            if frame is None:
                return
            try:
                keep = self.on_frame(frame)
            except Exception:    # noqa: BLE001 - a bad handler must not wedge the ring
                log.exception("frame %d handler failed", frame.header.sequence)
                keep = False
            if keep:
                self.held = frame
            else:
                frame.release()

    def give_back(self, frame: Frame) -> None:
        """Release a kept lease (main loop only) and go on reading."""
        if frame is self.held:
            self.held = None
        frame.release()
        if self._closing:
            self._detach()
        else:
            self.pump()

    def close(self) -> None:
        if self._source:
            GLib.source_remove(self._source)
            self._source = 0
        self._closing = True
        if self.held is None:
            self._detach()

    def _detach(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
