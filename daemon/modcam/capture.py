"""The still-capture stage: one leased RAW12 frame to JPEG, PNG and DNG files.

Owns what happens to a still once its frame is leased, off the main loop (the
daemon calls run_still() on a worker thread): white balance, the metadata the
files record, developing and writing each format, naming the files, and
turning every failure into a documented error. No thread, lease or D-Bus here.

    result = run_still(StillJob(frame.data, frame.header, calibration, identity,
                                options), directory=capture_dir)

Targets: `directory` (Capture: the daemon's own; nothing is written outside
it) or `fd` (CaptureToFd: one format from the fd's offset; no writer seeks,
so pipes work; a failed write leaves a partial picture there, which the
error says; a JPEG is encoded in memory and written whole, for its size). Names: `{serial}-{YYYYmmdd-HHMMSS}-{sequence:06d}.{jpg,png,dng}`
in UTC (which never repeats an hour, so names sort in capture order), one stem
per capture, taken when any of its three names exists (then `-1`, `-2`, ...).
Files are unnamed O_TMPFILE files, hard-linked to their names once every
format is complete: a link never replaces a file, no reader sees a partial
picture, and a failed or cancelled capture (or a killed daemon) leaves
nothing behind. Where the file system lacks O_TMPFILE they are hidden
`.modcam-*.part` files, removed on failure but left by a killed daemon.

Memory: JPEG and PNG are developed strip by strip; white balance unpacks only
the rows its statistics read. The DNG needs the frame as one uint16 CFA array
(write_dng's input): 2 bytes a pixel, 200 MB at 100 MP, while it is written.

Result (for the reply's a{sv}, python types exact): directory: paths
(list[str]), sizes (list[int]); fd: size (int), format (str); both: sequence,
timestamp_ns (CLOCK_REALTIME), timestamp_boottime_ns, exposure_time (µs),
width, height (int); analogue_gain, lens_position, aperture, temperature
(float); readout_mode (str); colour_gains ([red, blue] used, libcamera's
ColourGains); timings ({stage: seconds}: "white_balance" when estimated,
"jpeg", "png", "dng"). Errors: InvalidArgument (a bad fd, several formats
for one fd), Failed (a sentence: a full, read-only or missing directory, a
failed write, a frame the ISP refuses) or Cancelled; nothing else escapes.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from modcam import raw12
from modcam.calibration import Calibration
from modcam.capture_options import EXTENSIONS, CaptureOptions
from modcam.errors import Failed, InvalidArgument, ModcamError
from modcam.isp import DevelopOptions, develop
from modcam.isp.aaa import AutoWhiteBalance
from modcam.isp.stats import Stats, StatsEngine
from modcam.isp.writers import JpegWriter, PictureMeta, WriteError, write_dng, write_png_strips
from modcam.isp.writers.output import write_all
from modcam.link.ring import FrameHeader, PixelFormat

__all__ = ["Cancelled", "ModuleIdentity", "StillJob", "run_still", "file_stem", "frame_stats"]

log = logging.getLogger("modcam.capture")

PNG_COMPRESSION = 6        # zlib level: PNG is the lossless choice, size matters
DNG_UNPACK_ROWS = 512      # rows unpacked between two looks at `cancel`
MAX_NAME_TRIES = 1000
STATS_QUADS = 100_000      # white-balance grid size, as StatsEngine's default on 25 MP
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)   # 0: hidden named temporaries instead


class Cancelled(Exception):
    """The capture was cancelled; no file of it was kept."""


@dataclass(frozen=True)
class ModuleIdentity:
    """Who made the picture (Exif Make, Model; the file names' serial)."""
    vendor: str
    model: str
    serial: str
    firmware: str


@dataclass
class StillJob:
    """One still to develop. `raw` is the leased slot's view, valid only
    during run_still(): nothing here keeps it afterwards."""
    raw: np.ndarray            # uint8 (height, stride), RAW12 packed, zero-copy
    header: FrameHeader
    calibration: Calibration   # decoded from the module's EEPROM
    identity: ModuleIdentity
    options: CaptureOptions
    wb_gains: tuple | None = None   # (R, G, B) native-neutral gains, G = 1; None: estimate


def file_stem(serial: str, ts_realtime_ns: int, sequence: int) -> str:
    """The first-choice stem of a capture's files. The serial comes from the
    module, so it is reduced to characters that cannot leave the directory."""
    safe = re.sub(r"[^A-Za-z0-9_+-]", "_", serial)[:64] or "module"
    when = _EPOCH + timedelta(microseconds=ts_realtime_ns // 1000)
    return f"{safe}-{when:%Y%m%d-%H%M%S}-{sequence:06d}"


def frame_stats(raw: np.ndarray, width: int, mode: str, calibration, f_number) -> Stats:
    """StatsEngine statistics of a packed RAW12 frame, equal to those of the
    whole unpacked frame, but unpacking only the rows the grid reads (2 of
    every 2 x step), one band of two zone rows at a time. The grid step gives
    about STATS_QUADS samples at any frame size (16 on 100 MP, 8 on 25 MP)."""
    height = raw.shape[0]
    step = max(1, round((width * height / 4 / STATS_QUADS) ** 0.5))
    engine = StatsEngine(calibration, mode, step=step)
    s2, o = 2 * step, (step // 2) * 2          # the engine's grid: rows o + s2 * i (+1)
    band = 2 * engine.zone * s2                # whole zones, so none straddles two bands
    buf = np.zeros((min(band, height), width), np.uint16)   # unread rows stay zero
    parts, zones = [], []
    for r0 in range(0, height, band):
        n = min(band, height - r0)
        pairs = range(o, n - 1, s2)
        if not pairs:
            break
        for y in pairs:
            raw12.unpack(raw, width, out=buf[y:y + 2], rows=(r0 + y, r0 + y + 2))
        part = engine.compute(buf[:n], f_number, origin=(r0, 0))
        parts.append(part)
        # A last band shorter than one zone row: the engine would make zones of
        # single samples (its fallback for small frames); the whole frame has none.
        if r0 == 0 or len(pairs) >= engine.zone:
            zones.append(part.rgb)
    if not parts:
        raise ValueError(f"a {width}x{height} frame is too small for statistics")
    samples = sum(p.samples for p in parts)
    return Stats(luma_mean=sum(p.luma_mean * p.samples for p in parts) / samples,
                 luma_hist=sum(p.luma_hist for p in parts),
                 clipped=sum(p.clipped * p.samples for p in parts) / samples,
                 rgb=np.concatenate(zones), samples=samples)


def run_still(job: StillJob, *, directory=None, fd: int | None = None,
              cancel: threading.Event | None = None, on_stage=None) -> dict:
    """Develop and write one still (see the module docstring)."""
    if (directory is None) == (fd is None):
        raise Failed("a still goes either to the capture directory or to an fd, not "
                     f"{'both' if directory is not None else 'neither'}")
    if fd is not None:
        _check_fd(fd, job.options.formats)
    try:
        still = _Still(job, cancel, on_stage)
        if fd is not None:
            return still.to_fd(fd)
        return still.to_directory(os.fspath(directory))
    except (ModcamError, Cancelled):
        raise
    except WriteError as exc:    # an fd that failed mid-way (directories map their own)
        raise Failed(f"{exc}; what reached the file descriptor is incomplete") from exc
    except MemoryError as exc:
        raise Failed(f"not enough memory to develop the {job.header.width}x"
                     f"{job.header.height} still") from exc
    except ValueError as exc:    # the ISP's and the writers' sentences
        raise Failed(f"the still could not be developed: {exc}") from exc
    except Exception as exc:
        log.exception("still %d failed", job.header.sequence)
        raise Failed("the still could not be developed: an internal error; modcamd's "
                     "journal has the details") from exc


def _check_fd(fd, formats: tuple) -> None:
    if len(formats) != 1:
        raise InvalidArgument(f"formats: a file descriptor takes exactly one format, not "
                              f"{len(formats)} ({', '.join(formats)})")
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise InvalidArgument(f"fd must be a file descriptor, not {fd!r}")
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        raise InvalidArgument("fd is not an open file descriptor") from None
    if flags & getattr(os, "O_PATH", 0) or flags & os.O_ACCMODE == os.O_RDONLY:
        raise InvalidArgument("fd is not open for writing (it was opened read-only): "
                              "pass a file or pipe opened for writing")


class _Still:
    """One run_still() call: the job, its metadata and what it reports."""

    def __init__(self, job: StillJob, cancel, on_stage):
        self.job, self.cancel, self.on_stage = job, cancel, on_stage
        self.timings: dict = {}
        h = job.header
        self.mode = h.readout_mode.name.lower()
        self.width, self.height = int(h.width), int(h.height)
        if h.pixfmt != PixelFormat.RAW12_PACKED:
            raise Failed(f"the frame is {h.pixfmt.name}, not RAW12 packed")
        raw = job.raw
        if (not isinstance(raw, np.ndarray) or raw.dtype != np.uint8
                or raw.shape != (h.height, h.stride)):
            raise Failed(f"the frame's pixels do not match its header ({h.width}x{h.height}, "
                         f"stride {h.stride}): {getattr(raw, 'shape', type(raw).__name__)}")
        wanted = job.options.readout_mode
        if wanted is not None and wanted != self.mode:
            raise Failed(f"the frame was read out in {self.mode} mode, not the {wanted} "
                         "mode the capture asked for")

    # ---- stages ----

    def _stage(self, name: str, t0: float) -> None:
        seconds = time.perf_counter() - t0
        self.timings[name] = seconds
        if self.on_stage is not None:
            try:
                self.on_stage(name, seconds)
            except Exception:    # a reporting hook must not cost the picture
                log.exception("on_stage(%r) failed", name)

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"still {self.job.header.sequence} was cancelled")

    def _prepare(self) -> None:
        job, h = self.job, self.job.header
        self._check_cancel()
        gains = job.wb_gains
        if gains is None:
            t0 = time.perf_counter()
            stats = frame_stats(job.raw, self.width, self.mode, job.calibration, h.aperture)
            gains = AutoWhiteBalance(job.calibration.matrix()).update(stats)
            self._stage("white_balance", t0)
        self.gains = tuple(float(g) for g in gains)
        ident = job.identity
        # Exif records local time with its offset from UTC, as cameras do.
        local = (_EPOCH + timedelta(microseconds=h.ts_realtime_ns // 1000)).astimezone()
        self.meta = PictureMeta.from_calibration(
            job.calibration, make=ident.vendor or "unknown", model=ident.model or "unknown",
            firmware=ident.firmware or "unknown", exposure_us=int(h.exposure_us),
            analogue_gain=float(h.analogue_gain), aperture=float(h.aperture),
            lens_position=float(h.lens_position), timestamp=local, readout_mode=self.mode,
            cfa_pattern=h.cfa.name, wb_gains=self.gains)

    def _checked(self, write):
        """`write` behind a look at `cancel`: develop() calls it between strips,
        so a cancel raises inside the strip loop and the writer discards."""
        def sink(rows):
            self._check_cancel()
            write(rows)
        return sink

    def _jpeg(self, target):
        # develop() with JpegWriter as develop_to_jpeg() does, with the sink
        # wrapped for cancel; returns the JPEG for a None (memory) target.
        with JpegWriter(target, self.width, self.height, quality=self.job.options.quality,
                        meta=self.meta) as jpeg:
            develop(self.job.raw, self.meta, self.job.calibration, DevelopOptions(),
                    sink=self._checked(jpeg.write_rows), width=self.width)
            return jpeg.finish()

    def _png(self, target) -> int:
        feed = _StripFeed(self)
        try:
            return write_png_strips(target, feed, self.width, self.height, 8,
                                    compression=PNG_COMPRESSION)
        finally:
            feed.close()

    def _dng(self, target) -> int:
        # write_dng takes the whole CFA as one uint16 array: 2 bytes a pixel
        # (200 MB at 100 MP), freed when this returns. Unpacked in bands so a
        # cancel is seen within milliseconds; the write itself is not cut short.
        cfa = np.empty((self.height, self.width), np.uint16)
        for r0 in range(0, self.height, DNG_UNPACK_ROWS):
            self._check_cancel()
            r1 = min(r0 + DNG_UNPACK_ROWS, self.height)
            raw12.unpack(self.job.raw, self.width, out=cfa[r0:r1], rows=(r0, r1))
        self._check_cancel()
        return write_dng(target, cfa, self.meta, self.job.calibration)

    # ---- targets ----

    def to_fd(self, fd: int) -> dict:
        self._prepare()
        fmt = self.job.options.formats[0]
        t0 = time.perf_counter()
        if fmt == "jpeg":
            # Encoded in memory, then written whole: the reply reports its size
            # (the encoder writes an fd itself and does not count), and a cancel
            # or an ISP failure leaves the caller's fd untouched.
            data = self._jpeg(None)
            self._check_cancel()
            size = write_all(fd, data, "the JPEG", "the file descriptor")
        else:
            size = (self._png if fmt == "png" else self._dng)(fd)
        self._stage(fmt, t0)
        return {"size": int(size), "format": fmt, **self._metadata()}

    def to_directory(self, directory: str) -> dict:
        formats = self.job.options.formats
        with _Staging(directory) as staging:
            # All temporaries first: an unusable directory fails before any ISP work.
            fds = [staging.create() for _ in formats]
            self._prepare()
            for fmt, fd in zip(formats, fds):
                self._check_cancel()
                t0 = time.perf_counter()
                try:
                    (self._jpeg if fmt == "jpeg" else self._png if fmt == "png" else self._dng)(fd)
                except WriteError as exc:
                    raise staging.failure(exc.errno) from exc
                self._stage(fmt, t0)
            self._check_cancel()
            h = self.job.header
            stem = file_stem(self.job.identity.serial, h.ts_realtime_ns, h.sequence)
            paths = staging.publish(stem, [EXTENSIONS[f] for f in formats])
            sizes = [os.fstat(fd).st_size for fd in fds]
        return {"paths": paths, "sizes": sizes, **self._metadata()}

    def _metadata(self) -> dict:
        h = self.job.header
        r, g, b = self.gains
        return {"sequence": int(h.sequence), "timestamp_ns": int(h.ts_realtime_ns),
                "timestamp_boottime_ns": int(h.ts_boottime_ns),
                "exposure_time": int(h.exposure_us), "analogue_gain": float(h.analogue_gain),
                "lens_position": float(h.lens_position), "aperture": float(h.aperture),
                "temperature": float(h.temperature_c), "readout_mode": self.mode,
                "width": self.width, "height": self.height,
                "colour_gains": [r / g, b / g], "timings": dict(self.timings)}


class _StripFeed:
    """develop()'s strips as an iterator for the PNG writer, which pulls rows
    while develop() pushes strips: develop() runs on a helper thread and hands
    over copies (its strip buffers are reused once the sink returns) through a
    two-slot queue, so memory stays a few strips."""

    _END = object()

    def __init__(self, still: _Still):
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._still, self._stop = still, threading.Event()
        self._thread = threading.Thread(target=self._produce, name="modcam-png-isp", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        s = self._still
        try:
            develop(s.job.raw, s.meta, s.job.calibration, DevelopOptions(),
                    sink=s._checked(self._put), width=s.width)
            self._queue.put(self._END)
        except BaseException as exc:   # handed to the writing thread
            self._queue.put(exc)

    def _put(self, rows) -> None:
        if self._stop.is_set():        # the writer gave up: end develop() early
            raise Cancelled("the PNG writer stopped")
        self._queue.put(rows.copy())

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            self._still._check_cancel()
            yield item

    def close(self) -> None:
        """Stop develop() and wait for it, draining so its put() cannot block."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


_DIRECTORY_FAILURES = {
    errno.ENOSPC: "is full", errno.EDQUOT: "is over its disk quota",
    errno.EROFS: "is read-only", errno.EACCES: "is not writable for modcamd",
    errno.EPERM: "is not writable for modcamd", errno.ENOENT: "does not exist",
    errno.ENOTDIR: "is not a directory", errno.EFBIG: "does not take files this large",
}


class _Staging:
    """A capture's files in one directory: unnamed until all are complete,
    then linked to free names (all or nothing, never over an existing file)."""

    def __init__(self, directory: str):
        self.directory = directory
        self._files: list = []     # (fd, hidden temporary name or None)
        self._names: list = []     # each file's name once linked, else None
        try:
            self._dir = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise self.failure(exc.errno) from None

    def failure(self, err: int) -> Failed:
        what = _DIRECTORY_FAILURES.get(err, "cannot be written")
        return Failed(f"the capture directory {self.directory} {what} "
                      f"({os.strerror(err).lower()})")

    def create(self) -> int:
        flags = os.O_WRONLY | os.O_CLOEXEC
        try:
            try:
                if _O_TMPFILE:
                    fd = os.open(".", flags | _O_TMPFILE, 0o644, dir_fd=self._dir)
                    self._files.append((fd, None))
                    self._names.append(None)
                    return fd
            except OSError as exc:   # EOPNOTSUPP, or EISDIR from kernels that predate it
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
                    raise
            name = f".modcam-{uuid.uuid4().hex[:16]}.part"
            fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=self._dir)
            self._files.append((fd, name))
            self._names.append(None)
            return fd
        except OSError as exc:
            raise self.failure(exc.errno) from None

    def publish(self, stem: str, extensions: list) -> list:
        """Link every file to `stem` (or the first free `stem-N`) + its extension."""
        for n in range(MAX_NAME_TRIES):
            candidate = stem if n == 0 else f"{stem}-{n}"
            if any(self._exists(f"{candidate}.{e}") for e in EXTENSIONS.values()):
                continue
            try:
                for i, ext in enumerate(extensions):
                    self._link(i, f"{candidate}.{ext}")
            except FileExistsError:   # taken since we looked: try the next stem whole
                continue
            except OSError as exc:
                raise self.failure(exc.errno) from None
            return [os.path.join(self.directory, name) for name in self._names]
        raise Failed(f"the capture directory {self.directory} has no free name for {stem}")

    def _exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self._dir, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    def _link(self, i: int, name: str) -> None:
        """Give file i the name `name` (EEXIST if it is taken). A file already
        linked under a stem given up moves from that name: an O_TMPFILE file
        whose last name was removed can never be linked again."""
        fd, temp = self._files[i]
        old = self._names[i]
        if old is not None:
            os.link(old, name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
            _unlink(old, self._dir)
        elif temp is None:
            # An O_TMPFILE file gets its name through /proc; passing dir fds makes
            # Python use linkat(2), which follows that link (link(2) would not).
            os.link(f"/proc/self/fd/{fd}", name, src_dir_fd=self._dir,
                    dst_dir_fd=self._dir, follow_symlinks=True)
        else:
            os.link(temp, name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        self._names[i] = name

    def __enter__(self) -> "_Staging":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for name in self._names:
                if name is not None:
                    _unlink(name, self._dir)
        for fd, temp in self._files:
            os.close(fd)
            if temp is not None:
                _unlink(temp, self._dir)
        os.close(self._dir)


def _unlink(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
