"""Frames from the virtual module into the shared-memory ring, paced like the link.

Owns the module side of the frame ring: the region (a sealed memfd made by
link.ring.Producer, replaced on every attach), the streaming thread, and the
FrameSource interface (FrameSettings in, packed RAW12 out) with a cheap
built-in source. The model (module.py) decides what each frame is
(FramePlan); this file only puts it on the "wire".

Pacing. Stream frames are due on absolute deadlines (k / fps from the start,
no drift); a deadline missed by more than a period is skipped, not caught up
in a burst. Independently, no frame is stamped earlier than the previous
frame's stamp plus its own bytes / link_bytes_per_s: a frame cannot arrive
faster than its bytes take on the wire, whatever the fps or a still asks.
A full ring drops the newest frame (the ring counts it); a stall produces
nothing while deadlines keep moving.

Frame faults (from the model's plan) are applied here, where the ring is:
corrupt_crc / truncated / torn publish through Producer.commit(fault=...);
producer_crash begins a slot, writes half of it and replaces the producer
with Producer.recover(), which publishes that slot ABORTED.

A FrameSource plugs in whatever renders pixels (the physics renderer later):

    class FrameSource(Protocol):
        scenes: tuple[str, ...]                   # names sim.set_scene accepts
        def packed_frame(self, settings: FrameSettings, sequence: int) -> np.ndarray
            # uint8 (settings.height, settings.stride), RAW12 packed, C-contiguous;
            # may be reused by the next call (it is copied into the slot first)

Frame metadata (timestamps, controls, temperature, flags) is the module's,
not the source's: the streamer fills the header from the plan.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from modcam import raw12
from modcam.link.protocol import BUSY, OUT_OF_RANGE, WRONG_STATE, RequestError
from modcam.link.ring import Fault, FrameInfo, Producer, Readout, region_size
from modcam.virtual import sensor_model

if TYPE_CHECKING:  # module.py imports this file for FrameSettings and FramePlan
    from modcam.virtual.module import VirtualModule

log = logging.getLogger("modcam.virtual.streamer")
_RING_FAULTS = {"corrupt_crc": Fault.BAD_CRC, "truncated": Fault.BAD_LENGTH, "torn": Fault.TORN}
_READOUT = {"full": Readout.FULL, "binned": Readout.BINNED, "zoom2x": Readout.ZOOM2X}
MAX_REGION_BYTES = 4 << 30      # 16 slots of full 100 MP frames fit; 32 do not


@dataclasses.dataclass(frozen=True)
class FrameSettings:
    """What a FrameSource needs to produce one frame (hashable: sources cache on it)."""
    readout_mode: str
    width: int
    height: int
    stride: int                 # bytes per RAW12 packed row: 3 * width / 2
    exposure_us: int
    analogue_gain: float
    aperture: float
    lens_position: float
    scene: str
    scene_distance_m: float
    scene_seed: int
    lux: float
    illuminant: str | float

    @property
    def frame_bytes(self) -> int:
        return self.stride * self.height


@dataclasses.dataclass(frozen=True)
class FramePlan:
    """The next frame as the module would send it: pixels settings plus metadata."""
    settings: FrameSettings
    temperature_c: float
    flags: int
    fault: str | None
    still: bool


def readout_geometry(sensor_width: int, sensor_height: int, mode: str) -> tuple[int, int, int]:
    """(width, height, packed stride) of a readout mode of a sensor (full readout size)."""
    w, h = sensor_width, sensor_height
    if mode != "full":        # binned: 2x2 same-colour; zoom2x: the central half crop
        w, h = w // 2, h // 2
    return w, h, 3 * w // 2


class FrameSource(Protocol):
    scenes: tuple

    def packed_frame(self, settings: FrameSettings, sequence: int) -> np.ndarray: ...


def _boottime() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class SyntheticSource:
    """A deterministic test pattern, packed once per settings and then only copied.

    Pixels: a horizontal reflectance ramp under a vertical light gradient,
    RGGB-tinted, brighter with lux x exposure x gain / N^2; all scenes but
    "flat" and "gradient" add vertical bars whose contrast falls with defocus
    |lens_position - 1/scene_distance| / N, so contrast autofocus has a peak
    (a toy, not optics: the physics renderer does that). The first 8 bytes of
    row 0 carry the frame's sequence number (little-endian), so a consumer can
    tell which frame it holds.
    """
    scenes = ("studio", "flat", "gradient", "colorchecker", "slanted_edge", "siemens_star")

    def __init__(self, cache_size: int = 2):
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_size = max(1, cache_size)

    def packed_frame(self, settings: FrameSettings, sequence: int) -> np.ndarray:
        packed = self._cache.get(settings)
        if packed is None:
            while len(self._cache) >= self._cache_size:   # free before allocating anew
                self._cache.popitem(last=False)
            packed = self._cache[settings] = self.render(settings)
        self._cache.move_to_end(settings)
        packed[0, :8] = np.frombuffer(int(sequence).to_bytes(8, "little"), np.uint8)
        return packed

    @staticmethod
    def render(s: FrameSettings, strip_rows: int = 256) -> np.ndarray:
        x = np.arange(s.width, dtype=np.float32)
        refl = np.full(s.width, 0.18, np.float32) if s.scene == "flat" else 0.05 + 0.9 * x / s.width
        if s.scene not in ("flat", "gradient"):
            defocus = abs(s.lens_position - 1.0 / s.scene_distance_m)
            contrast = 0.25 / (1.0 + 30.0 * defocus / s.aperture)
            refl = refl + contrast * np.sign(np.sin(2 * np.pi * (x + 0.5) / 16.0))
        np.clip(refl, 0.0, 1.0, out=refl)
        exposure = s.lux * s.exposure_us * 1e-6 * s.analogue_gain / s.aperture ** 2
        scale = 0.45 * 3839.0 * exposure / (1000.0 * 0.01 / 2.8 ** 2)
        even_cols = (x.astype(np.int64) % 2) == 0
        rows = (refl * scale * np.where(even_cols, 0.5, 1.0),    # R G R G
                refl * scale * np.where(even_cols, 1.0, 0.6))    # G B G B
        light = 0.75 + 0.5 * np.arange(s.height, dtype=np.float32) / s.height
        out = np.empty((s.height, s.stride), np.uint8)
        strip = np.empty((strip_rows, s.width), np.float32)
        for r0 in range(0, s.height, strip_rows):
            r1 = min(s.height, r0 + strip_rows)
            block = strip[:r1 - r0]
            block[0::2] = rows[r0 % 2]
            block[1::2] = rows[1 - r0 % 2]
            block *= light[r0:r1, None]
            block += sensor_model.BLACK_LEVEL
            np.clip(block, 0.0, sensor_model.WHITE_LEVEL, out=block)
            raw12.pack(block.astype(np.uint16), out=out[r0:r1])
        return out


class Streamer:
    """The thread that writes frames into the ring; its methods are thread-safe.

    Two locks: `_cond` guards scheduling (pending still, deadlines, stop) and
    is never held for long; `_plock` guards the producer and is held only for
    the copy into the slot, so rendering a new pattern (up to a second at
    100 MP) never blocks the control server.
    """

    def __init__(self, module: "VirtualModule", source: FrameSource,
                 on_still_done: Callable[[object, dict | None, str | None], None]):
        self.module, self.source = module, source
        self._on_still_done = on_still_done
        self._cond = threading.Condition()
        self._plock = threading.Lock()
        self._producer: Producer | None = None
        self._doorbell: int | None = None          # our dup of the consumer's eventfd
        self._still = None                         # token of the pending still, if any
        self._next_due: int | None = None          # ns, CLOCK_BOOTTIME
        self._last_stamp: int | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = collections.Counter()

    # -- control (any thread) ------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="modcam-streamer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(30)
        self.detach()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @property
    def attached(self) -> bool:
        return self._producer is not None

    def attach_ring(self, doorbell_fd: int, slot_count: int = 4) -> tuple[int, dict]:
        """A fresh region for a new consumer: (a dup of its fd, for the caller to send
        and close; geometry). The previous region, if any, is abandoned."""
        max_payload = self.module.max_frame_bytes()
        size = region_size(slot_count, max_payload)
        if size > MAX_REGION_BYTES:     # slots fill with frames: this much becomes RAM
            raise RequestError(OUT_OF_RANGE, f"a ring of {slot_count} slots of "
                               f"{max_payload / 1e6:.0f} MB would take {size / 2**30:.1f} GiB; "
                               f"the limit is {MAX_REGION_BYTES / 2**30:.0f} GiB", "slot_count")
        producer = Producer.create(slot_count, max_payload)
        doorbell = os.dup(doorbell_fd)
        producer.set_doorbell(doorbell)
        geometry = {"slot_count": slot_count, "max_payload": max_payload,
                    "region_size": size,
                    "generation": producer.region.generation}
        region_fd = os.dup(producer.region_fd)
        self.detach()
        with self._plock:
            self._producer, self._doorbell = producer, doorbell
        self.wake()
        return region_fd, geometry

    def detach(self) -> None:
        """Abandon the ring (its consumer is gone); a pending still fails."""
        with self._plock:
            producer, doorbell = self._producer, self._doorbell
            self._producer = self._doorbell = None
        if producer is not None:
            producer.close()
        if doorbell is not None:
            os.close(doorbell)
        with self._cond:
            token, self._still = self._still, None
        if token is not None:
            self._on_still_done(token, None, "the frame ring was detached before the still")

    def request_still(self, token) -> None:
        with self._cond:
            if self._producer is None:
                raise RequestError(WRONG_STATE, "no frame ring is attached: send attach_ring first")
            if self._still is not None:
                raise RequestError(BUSY, "a still is already being taken; wait for its reply")
            self._still = token
            self._cond.notify_all()

    def ring_info(self) -> dict:
        with self._plock:
            if self._producer is None:
                return {"attached": False}
            r = self._producer.region
            return {"attached": True, "slot_count": r.slot_count, "written": r.written,
                    "dropped": r.dropped, "aborted": r.aborted, "head": r.head, "tail": r.tail}

    # -- the thread ----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = _boottime()
                job, due = self._next_job(now)
                if job is None or due > now:
                    timeout = None if due is None else max(0.0, (due - now) / 1e9)
                    self._cond.wait(timeout)
                    continue
                still = self._still if job == "still" else None
                self._advance_deadline(job)
            try:
                self._produce(due, still)
            except Exception:  # noqa: BLE001 - a bad frame must not stop the module
                self.stats["errors"] += 1
                log.exception("producing a frame failed")

    def _next_job(self, now: int) -> tuple[str | None, int | None]:
        """(job, due ns): "still", "stream", or (None, when to look again or None)."""
        if self._producer is None:
            self._next_due = None
            return None, None
        stall = self.module.stall_remaining()
        if stall > 0:
            return None, now + int(stall * 1e9) + 1
        wire = int(self.module.frame_bytes() / self.module.config.link_bytes_per_s * 1e9)
        earliest = now if self._last_stamp is None else max(now, self._last_stamp + wire)
        if self._still is not None:
            return "still", earliest
        if self.module.stream_period() is None:
            self._next_due = None
            return None, None
        if self._next_due is None:
            self._next_due = now
        return "stream", max(self._next_due, earliest)

    def _advance_deadline(self, job: str) -> None:
        period = self.module.stream_period()
        if job != "stream" or period is None or self._next_due is None:
            return
        step = int(period * 1e9)
        self._next_due += step
        now = _boottime()
        if self._next_due < now - step:       # fell behind by a period: skip, no burst
            self._next_due = now + step

    def _produce(self, due: int, still) -> None:
        plan = self.module.next_frame(still=still is not None)
        if plan is None:
            if still is not None:
                self._still_failed_unless_stalled(still)
            return
        with self._plock:
            producer = self._producer
            sequence = None if producer is None else producer.next_sequence
        if producer is None:
            return
        s = plan.settings
        payload = self.source.packed_frame(s, sequence)    # outside the locks: may be slow
        if payload.shape != (s.height, s.stride) or payload.dtype != np.uint8:
            raise ValueError(f"frame source gave {payload.dtype} {payload.shape}, "
                             f"not uint8 {(s.height, s.stride)}")
        stamp = max(_boottime(), due)      # never before the wire allows
        info = FrameInfo(width=s.width, height=s.height, stride=s.stride,
                         readout_mode=_READOUT[s.readout_mode], exposure_us=s.exposure_us,
                         analogue_gain=s.analogue_gain, lens_position=s.lens_position,
                         aperture=s.aperture, temperature_c=plan.temperature_c,
                         flags=plan.flags, ts_boottime_ns=stamp)
        with self._plock:
            if self._producer is not producer:      # the ring was replaced meanwhile
                return
            delivered = self._publish(info, payload, plan.fault)
        self._last_stamp = stamp
        self.stats["frames" if delivered else "not_delivered"] += 1
        if plan.fault:
            self.stats[plan.fault] += 1
        if still is not None:
            self._finish_still(still, {"sequence": sequence, "delivered": delivered,
                                       "readout_mode": s.readout_mode, "ts_boottime_ns": stamp})

    def _finish_still(self, token, result: dict | None, error: str | None = None) -> None:
        with self._cond:
            if self._still is not token:       # detached meanwhile: already failed
                return
            self._still = None
        self._on_still_done(token, result, error)

    def _still_failed_unless_stalled(self, token) -> None:
        try:
            self.module.check_can_capture()
        except RequestError as exc:
            self._finish_still(token, None, exc.message)

    def _publish(self, info: FrameInfo, payload: np.ndarray, fault: str | None) -> bool:
        """Copy into the ring, applying a frame fault (producer lock held)."""
        producer = self._producer
        if fault is None:
            return producer.write(info, payload)
        flat = payload.reshape(-1)
        slot = producer.begin()
        if slot is None:                       # ring full: dropped, counted by the ring
            return False
        if fault == "producer_crash":
            slot[:flat.size // 2] = flat[:flat.size // 2]
            self._producer = Producer.recover(producer.region_fd)   # publishes it ABORTED
            self._producer.set_doorbell(self._doorbell)
            producer.close()
            return True           # published (damaged), not dropped for a full ring
        slot[:flat.size] = flat
        producer.commit(info, fault=_RING_FAULTS[fault])
        return True
