"""The frame ring from Python: producer, consumer and the zero-copy lease.

native/modcam_ring.h holds the contract. This module adds what Python needs
on top: regions by path or fd, exceptions with the C side's reasons, and
leases whose numpy view cannot outlive them (a view kept past its lease
reads zeros, never a later frame).
"""
from __future__ import annotations

import dataclasses
import enum
import errno
import math
import os
import sys
import time
import warnings

import numpy as np

from modcam.native import ffi, lib

__all__ = [
    "CFA", "Consumer", "Fault", "Frame", "FrameHeader", "FrameInfo", "LeaseError",
    "PixelFormat", "Producer", "Readout", "RegionInvalid", "RingCorrupt", "RingError",
    "RingStats", "region_size",
]


class RingError(Exception):
    """Base of the ring's errors."""


class RegionInvalid(RingError):
    """A shared region was refused at attach; the message says why."""


class RingCorrupt(RingError):
    """The region became inconsistent while in use (indices out of range)."""


class LeaseError(RingError):
    """A frame lease was used wrongly (after release, or twice)."""


# Frame header flags: MODCAM_FRAME_FLAG_* in native/modcam_ring.h.
FLAG_THERMAL_WARNING = 0x1
FLAG_STILL = 0x2            # a triggered still, not a stream frame


class PixelFormat(enum.IntEnum):
    RAW12_PACKED = lib.MODCAM_PIXFMT_RAW12_PACKED
    RAW16 = lib.MODCAM_PIXFMT_RAW16


class CFA(enum.IntEnum):
    RGGB = lib.MODCAM_CFA_RGGB
    GRBG = lib.MODCAM_CFA_GRBG
    GBRG = lib.MODCAM_CFA_GBRG
    BGGR = lib.MODCAM_CFA_BGGR


class Readout(enum.IntEnum):
    FULL = lib.MODCAM_READOUT_FULL
    BINNED = lib.MODCAM_READOUT_BINNED
    ZOOM2X = lib.MODCAM_READOUT_ZOOM2X


class Fault(enum.IntEnum):
    """Faults a producer can publish on purpose (virtual module, tests)."""
    TORN = lib.MODCAM_FAULT_TORN
    BAD_CRC = lib.MODCAM_FAULT_BAD_CRC
    BAD_LENGTH = lib.MODCAM_FAULT_BAD_LENGTH


def _now_ns():
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME), time.time_ns()


@dataclasses.dataclass(frozen=True)
class FrameInfo:
    """What the producer says about a frame; timestamps default to now."""
    width: int
    height: int
    stride: int
    pixfmt: PixelFormat = PixelFormat.RAW12_PACKED
    cfa: CFA = CFA.RGGB
    readout_mode: Readout = Readout.FULL
    exposure_us: int = 10000
    analogue_gain: float = 1.0
    lens_position: float = 0.0
    aperture: float = 1.4
    temperature_c: float = 25.0
    flags: int = 0
    ts_boottime_ns: int | None = None
    ts_realtime_ns: int | None = None

    @property
    def payload_length(self) -> int:
        return self.stride * self.height

    def to_c(self):
        h = ffi.new("struct modcam_frame_header *")
        boot, real = _now_ns()
        for f in dataclasses.fields(FrameInfo):
            value = getattr(self, f.name)
            if f.name == "ts_boottime_ns" and value is None:
                value = boot
            elif f.name == "ts_realtime_ns" and value is None:
                value = real
            setattr(h, f.name, value)
        return h


@dataclasses.dataclass(frozen=True)
class FrameHeader(FrameInfo):
    """A delivered frame's header, validated by the consumer."""
    sequence: int = 0
    crc32c: int = 0

    @classmethod
    def from_c(cls, h) -> FrameHeader:
        values = {f.name: getattr(h, f.name) for f in dataclasses.fields(FrameInfo)}
        values["pixfmt"] = PixelFormat(values["pixfmt"])
        values["cfa"] = CFA(values["cfa"])
        values["readout_mode"] = Readout(values["readout_mode"])
        for name in ("analogue_gain", "lens_position", "aperture", "temperature_c"):
            # float32 on the wire, shown by its shortest round-tripping decimal:
            # 1.4, not 1.399999976158142, and never a different float32.
            values[name] = float(str(np.float32(values[name])))
        # payload_length is not stored: the consumer checked it equals stride * height.
        return cls(**values, sequence=h.sequence, crc32c=h.crc32c)


@dataclasses.dataclass(frozen=True)
class RingStats:
    written: int
    dropped: int
    aborted: int
    delivered: int
    skipped_torn: int
    skipped_invalid: int
    skipped_crc: int
    sequence_gaps: int
    sequence_resyncs: int
    last_sequence: int
    head: int
    tail: int

    @property
    def skipped(self) -> int:
        return self.skipped_torn + self.skipped_invalid + self.skipped_crc


def region_size(slot_count: int, max_payload: int) -> int:
    """Bytes a region of this geometry takes; ValueError if it is not valid."""
    size = lib.modcam_ring_region_size(slot_count, max_payload)
    if not size:
        raise ValueError(f"a ring of {slot_count} slots of {max_payload} bytes is not valid: "
                         f"slots must be a power of two up to {lib.MODCAM_RING_MAX_SLOTS}, "
                         "payload 1 byte to 4 GiB")
    return size


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


def _open_region(source, flags):
    """(fd, owned) for a path or an fd."""
    if isinstance(source, int):
        return source, False
    return os.open(os.fspath(source), flags | os.O_CLOEXEC, 0o600), True


class Producer:
    """The module side: formats a region and publishes frames into it."""

    def __init__(self, handle, fd: int):
        self._p = handle
        self.region_fd = fd  # ours: hand it to the consumer (inherit, SCM_RIGHTS, or its path)

    @classmethod
    def create(cls, slot_count: int, max_payload: int, path=None) -> Producer:
        """A new region: a sealed memfd, or the file at path (created or truncated)."""
        region_size(slot_count, max_payload)
        if path is None:
            fd = os.memfd_create("modcam-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        else:
            fd = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        out = ffi.new("modcam_ring_producer **")
        rc = lib.modcam_ring_producer_create(fd, slot_count, max_payload, out)
        if rc < 0:
            os.close(fd)
            _check(rc, "cannot create the ring region")
        return cls(out[0], fd)

    @classmethod
    def recover(cls, source) -> Producer:
        """Take over a region whose producer died; its unfinished slot is published ABORTED."""
        fd, owned = _open_region(source, os.O_RDWR)
        if not owned:
            fd = os.dup(fd)
        out = ffi.new("modcam_ring_producer **")
        rc = lib.modcam_ring_producer_recover(fd, out)
        if rc < 0:
            os.close(fd)
            raise RegionInvalid("cannot take over the ring region: it is not a valid modcam ring"
                                if rc == -errno.EPROTO
                                else f"cannot take over the ring region: {os.strerror(-rc)}")
        return cls(out[0], fd)

    def set_doorbell(self, fd: int | None) -> None:
        _check(lib.modcam_ring_producer_set_doorbell(self._live(), -1 if fd is None else fd),
               "cannot set the doorbell")

    def write(self, info: FrameInfo, payload) -> bool:
        """Copy a frame in and publish it. False if the ring was full (frame dropped, counted)."""
        buf = ffi.from_buffer(payload)
        rc = lib.modcam_ring_producer_write(self._live(), info.to_c(), buf, len(buf))
        if rc == -errno.ENOSPC:  # ring full: the newest frame was dropped and counted
            return False
        if rc == -errno.EINVAL:
            raise ValueError(f"frame {info.width}x{info.height} stride {info.stride} does not "
                             f"match a {len(buf)}-byte payload or exceeds the slot")
        _check(rc, "cannot write a frame")
        return True

    def begin(self) -> np.ndarray | None:
        """The next slot's payload as a writable uint8 array, or None if the ring is full
        (frame dropped, counted). Follow with commit() or abort()."""
        ptr = ffi.new("void **")
        cap = ffi.new("uint64_t *")
        rc = lib.modcam_ring_producer_begin(self._live(), ptr, cap)
        if rc == -errno.ENOSPC:
            return None
        _check(rc, "cannot begin a frame")
        return np.frombuffer(ffi.buffer(ptr[0], cap[0]), dtype=np.uint8)

    def commit(self, info: FrameInfo, length: int | None = None, fault: Fault | None = None):
        length = info.payload_length if length is None else length
        if fault is None:
            rc = lib.modcam_ring_producer_commit(self._live(), info.to_c(), length)
        else:
            rc = lib.modcam_ring_producer_commit_faulty(self._live(), info.to_c(), length, fault)
        if rc == -errno.EINVAL:
            raise ValueError("commit without begin, or a header that does not match the length")
        _check(rc, "cannot commit a frame")

    def abort(self) -> None:
        lib.modcam_ring_producer_abort(self._live())

    @property
    def free_slots(self) -> int:
        """Slots the consumer has released and not yet reused (a producer that would
        rather wait than drop, such as a benchmark, can pace itself on this)."""
        r = self.region
        return r.slot_count - (r.head - r.tail)

    @property
    def next_sequence(self) -> int:
        """Sequence number the next frame offered will get (published or dropped)."""
        return self.region.next_sequence

    @property
    def region(self):
        """The shared header (cdata), for tests and diagnostics."""
        return lib.modcam_ring_producer_region(self._live())

    def _live(self):
        if self._p is None:
            raise RingError("the producer is closed")
        return self._p

    def close(self) -> None:
        if self._p is not None:
            lib.modcam_ring_producer_destroy(self._p)
            self._p = None
            os.close(self.region_fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


class Frame:
    """A leased slot: header plus a read-only zero-copy view of the payload.

    Valid until release() (or the end of the `with` block). Copy what must
    outlive it: a view still referenced at release is revoked and reads zeros.
    """

    def __init__(self, consumer: Consumer, header: FrameHeader, ptr):
        self._consumer = consumer
        self.header = header
        self._buf = ffi.buffer(ptr, header.payload_length)
        view = memoryview(self._buf).toreadonly()
        self._array = np.frombuffer(view, dtype=np.uint8).reshape(header.height, header.stride)
        self._baseline = sys.getrefcount(self._buf)

    @property
    def data(self) -> np.ndarray:
        """uint8 array (height, stride) over the slot; read-only."""
        if self._array is None:
            raise LeaseError(f"frame {self.header.sequence} was released; copy data you keep")
        return self._array

    @property
    def released(self) -> bool:
        return self._array is None

    def release(self) -> None:
        if self._array is None:
            return
        self._array = None
        consumer, self._consumer = self._consumer, None
        # Our array held one reference (through the memoryview); any more
        # now means a view escaped the lease.
        if sys.getrefcount(self._buf) > self._baseline - 1:
            consumer._revoke()
            warnings.warn(f"a view of frame {self.header.sequence} outlived its lease; "
                          "it now reads zeros (copy data you keep)", ResourceWarning,
                          stacklevel=3)
        self._buf = None
        consumer._release()

    def __enter__(self) -> Frame:
        return self

    def __exit__(self, *exc):
        self.release()


class Consumer:
    """The daemon side: attaches to a region and leases frames from it."""

    def __init__(self, source, doorbell_fd: int | None = None):
        fd, owned = _open_region(source, os.O_RDWR)
        err = ffi.new("char[256]")
        out = ffi.new("modcam_ring_consumer **")
        try:
            rc = lib.modcam_ring_consumer_attach(
                fd, -1 if doorbell_fd is None else doorbell_fd, out, err, 256)
        finally:
            if owned:
                os.close(fd)
        if rc < 0:
            raise RegionInvalid(f"cannot attach to the frame ring: {ffi.string(err).decode()}")
        self._c = out[0]
        self._frame: Frame | None = None
        self._hdr = ffi.new("struct modcam_frame_header *")
        self._ptr = ffi.new("const void **")

    def fileno(self) -> int:
        """The doorbell eventfd: readable when frames may be waiting (GLib can watch it).
        Hand it to the producer (Producer.set_doorbell, or over SCM_RIGHTS)."""
        return lib.modcam_ring_consumer_doorbell(self._live())

    def acquire(self, timeout: float | None = None) -> Frame | None:
        """The next valid frame, waiting up to timeout seconds (None: forever, 0: not at
        all); None on timeout. Invalid frames are skipped and counted on the way."""
        if self._frame is not None and not self._frame.released:
            raise LeaseError(f"frame {self._frame.header.sequence} is still leased; release it first")
        ms = -1 if timeout is None else max(0, math.ceil(timeout * 1000))
        rc = lib.modcam_ring_consumer_acquire(self._live(), self._hdr, self._ptr, ms)
        if rc == -errno.EAGAIN:  # timed out
            return None
        if rc == -errno.EPROTO:
            raise RingCorrupt(ffi.string(lib.modcam_ring_consumer_error(self._c)).decode())
        _check(rc, "cannot acquire a frame")
        self._frame = Frame(self, FrameHeader.from_c(self._hdr), self._ptr[0])
        return self._frame

    def _release(self) -> None:
        lib.modcam_ring_consumer_release(self._c)

    def _revoke(self) -> None:
        _check(lib.modcam_ring_consumer_revoke(self._c), "cannot revoke a leaked frame view")

    @property
    def stats(self) -> RingStats:
        st = ffi.new("struct modcam_ring_stats *")
        lib.modcam_ring_consumer_stats(self._live(), st)
        return RingStats(**{f.name: getattr(st, f.name) for f in dataclasses.fields(RingStats)})

    @property
    def last_skip(self) -> str:
        """Why the last skipped frame was skipped ('' if none was)."""
        return ffi.string(lib.modcam_ring_consumer_last_skip(self._live())).decode()

    @property
    def available(self) -> int:
        return lib.modcam_ring_consumer_available(self._live())

    def _live(self):
        if self._c is None:
            raise RingError("the consumer is closed")
        return self._c

    def close(self) -> None:
        if getattr(self, "_c", None) is None:
            return
        if self._frame is not None:
            self._frame.release()
        lib.modcam_ring_consumer_detach(self._c)
        self._c = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()
