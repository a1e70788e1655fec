"""Tests for the still-capture stage (modcam.capture.run_still).

Owns: a small RAW12 frame developed to JPEG + PNG + DNG in a directory
(names, sizes, pictures that decode at the frame's size, the PNG equal to
develop(), the DNG's CFA equal to the frame, the reply's fields and types);
unique names that never replace a file, not even when one appears between
looking and linking; white balance from the frame, its banded statistics
equal to the whole frame's; output into a file, at its offset, and into
pipes, byte for byte the files' content; refused fds and unusable
directories (full tmpfs, read-only, missing, not writable for an
unprivileged daemon) as one sentence and nothing left behind; a cancel at
every point it is looked at leaves no file and no temporary.
"""
import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modcam import capture, raw12
from modcam.calibration import ShadingGrid, virtual_calibration
from modcam.capture import Cancelled, ModuleIdentity, StillJob, frame_stats, run_still
from modcam.capture_options import CaptureOptions
from modcam.errors import Failed, InvalidArgument
from modcam.isp import develop
from modcam.isp.dng_reader import read_dng
from modcam.isp.stats import StatsEngine
from modcam.link.ring import FrameHeader, PixelFormat, Readout
from modcam.virtual.streamer import FrameSettings, SyntheticSource

SERIAL = "MC-CAP-0001"
CAL = virtual_calibration(SERIAL)
IDENTITY = ModuleIdentity("Modcam", "MC-100", SERIAL, "1.2.3")
W, H = 256, 192
TS = 1767323045_123456789          # 2026-01-02 03:04:05.123 UTC
STEM = f"{SERIAL}-20260102-030405-000042"
ALL = ("jpeg", "png", "dng")


def frame(scene="studio", w=W, h=H):
    s = FrameSettings("full", w, h, 3 * w // 2, 10000, 1.0, 2.8, 0.5, scene, 2.0, 1, 1000.0,
                      "D65")
    raw = SyntheticSource.render(s)
    raw.setflags(write=False)      # as a ring slot's view
    return raw


RAW = frame()


def job(formats=ALL, wb_gains=(2.0, 1.0, 1.6), raw=RAW, **header):
    fields = dict(width=raw.shape[1] * 2 // 3, height=raw.shape[0], stride=raw.shape[1],
                  readout_mode=Readout.FULL, exposure_us=20000, analogue_gain=2.0,
                  lens_position=0.5, aperture=2.8, temperature_c=31.5, sequence=42,
                  ts_boottime_ns=5_000_000_000, ts_realtime_ns=TS)
    fields.update(header)
    return StillJob(raw, FrameHeader(**fields), CAL, IDENTITY, CaptureOptions(formats=formats),
                    wb_gains)


def test_three_formats_in_a_directory(tmp_path):
    stages = []
    result = run_still(job(), directory=tmp_path, on_stage=lambda n, s: stages.append(n))
    names = [f"{STEM}.jpg", f"{STEM}.png", f"{STEM}.dng"]
    assert result["paths"] == [str(tmp_path / n) for n in names]
    assert sorted(os.listdir(tmp_path)) == sorted(names)           # and no temporary
    assert result["sizes"] == [os.path.getsize(p) for p in result["paths"]]
    assert stages == ["jpeg", "png", "dng"] and list(result["timings"]) == stages
    with Image.open(result["paths"][0]) as jpg:
        assert (jpg.format, jpg.size, jpg.mode) == ("JPEG", (W, H), "RGB")
        assert jpg.getexif()[0x010F] == "Modcam"                    # Make
        jpeg_pixels = np.asarray(jpg)
    with Image.open(result["paths"][1]) as png:
        assert (png.format, png.size, png.mode) == ("PNG", (W, H), "RGB")
        png_pixels = np.asarray(png)
    developed = develop(RAW, read_dng(result["paths"][2]).meta, CAL, width=W)
    np.testing.assert_array_equal(png_pixels, developed)            # strips in order, whole
    assert np.abs(jpeg_pixels.astype(int) - png_pixels).mean() < 3  # the same picture
    dng = read_dng(result["paths"][2])
    np.testing.assert_array_equal(dng.cfa, raw12.unpack(RAW, W))    # the frame, bit for bit
    assert dng.meta.serial == SERIAL and dng.meta.exposure_us == 20000
    assert dng.meta.wb_gains == pytest.approx((2.0, 1.0, 1.6), rel=1e-5)
    assert dng.calibration == CAL


def test_png_of_more_strips_than_the_isp_has_buffers(tmp_path):
    # 16 strips of 64 rows through 4 reused strip buffers: each must be handed
    # on before its buffer is filled again.
    raw = frame("siemens_star", 128, 1024)
    path = run_still(job(("png",), raw=raw), directory=tmp_path)["paths"][0]
    with Image.open(path) as png:
        np.testing.assert_array_equal(np.asarray(png),
                                      develop(raw, read_dng_meta(raw), CAL, width=128))


def read_dng_meta(raw):
    """The metadata run_still develops with, as its DNG records it."""
    with tempfile.TemporaryDirectory() as d:
        return read_dng(run_still(job(("dng",), raw=raw), directory=d)["paths"][0]).meta


def test_reply_carries_the_metadata_with_exact_types(tmp_path):
    result = run_still(job(("jpeg",)), directory=tmp_path)
    expected = {"sequence": 42, "timestamp_ns": TS, "timestamp_boottime_ns": 5_000_000_000,
                "exposure_time": 20000, "analogue_gain": 2.0, "lens_position": 0.5,
                "aperture": 2.8, "temperature": 31.5, "readout_mode": "full",
                "width": W, "height": H, "colour_gains": [2.0, 1.6]}
    for key, value in expected.items():
        assert result[key] == pytest.approx(value), key
        assert type(result[key]) is type(value), key
    assert set(result) == set(expected) | {"paths", "sizes", "timings"}
    assert all(type(v) is int for v in result["sizes"])
    assert all(type(v) is float for v in result["colour_gains"])


def test_names_are_unique_and_never_replace_a_file(tmp_path, monkeypatch):
    first = run_still(job(("jpeg",)), directory=tmp_path)["paths"]
    second = run_still(job(("jpeg", "dng")), directory=tmp_path)["paths"]
    assert first == [str(tmp_path / f"{STEM}.jpg")]
    assert second == [str(tmp_path / f"{STEM}-1.jpg"), str(tmp_path / f"{STEM}-1.dng")]
    # a stem is taken by any of its formats: a lone PNG blocks a JPEG-only capture
    (tmp_path / f"{STEM}-2.png").write_bytes(b"someone's")
    assert run_still(job(("jpeg",)), directory=tmp_path)["paths"] == [
        str(tmp_path / f"{STEM}-3.jpg")]
    # A file that appears after the look and before the link is not replaced:
    # the stem is given up whole (its links so far undone) and the next tried.
    monkeypatch.setattr(capture._Staging, "_exists", lambda self, name: False)
    (tmp_path / f"{STEM}-2.dng").write_bytes(b"precious")
    before = sorted(os.listdir(tmp_path))
    paths = run_still(job(("jpeg", "dng")), directory=tmp_path)["paths"]
    assert (tmp_path / f"{STEM}-2.dng").read_bytes() == b"precious"
    assert (tmp_path / f"{STEM}-2.png").read_bytes() == b"someone's"
    assert paths == [str(tmp_path / f"{STEM}-4.jpg"), str(tmp_path / f"{STEM}-4.dng")]
    assert sorted(os.listdir(tmp_path)) == sorted(before + [f"{STEM}-4.jpg", f"{STEM}-4.dng"])


def test_a_hostile_serial_stays_inside_the_directory(tmp_path):
    evil = replace(job(("jpeg",)), identity=ModuleIdentity("x", "y", "../../etc/.x y", "1"))
    path = run_still(evil, directory=tmp_path)["paths"][0]
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path) == "______etc__x_y-20260102-030405-000042.jpg"


def test_named_temporaries_where_o_tmpfile_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(capture, "_O_TMPFILE", 0)
    result = run_still(job(), directory=tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in result["paths"])
    with pytest.raises(Cancelled):
        run_still(job(), directory=tmp_path, cancel=_CancelAfter(4))
    assert len(os.listdir(tmp_path)) == 3                           # no .part left


def flat_shading_cal():
    cells = 4 * CAL.grid_rows * CAL.grid_cols
    return replace(CAL, shading=(ShadingGrid(2.8, (1.0,) * cells),))


def test_white_balance_is_estimated_from_the_frame(tmp_path):
    # SyntheticSource renders native R at 0.5 and B at 0.6 of G: gains 2 and 1/0.6.
    raw = frame("flat", 512, 384)
    still = replace(job(("jpeg",), wb_gains=None, raw=raw), calibration=flat_shading_cal())
    stages = []
    result = run_still(still, directory=tmp_path, on_stage=lambda n, s: stages.append(n))
    assert stages == ["white_balance", "jpeg"]
    assert result["colour_gains"] == pytest.approx([2.0, 1 / 0.6], rel=0.02)
    with Image.open(result["paths"][0]) as jpg:
        rgb = np.asarray(jpg).reshape(-1, 3).mean(axis=0)
    assert np.ptp(rgb) < 0.02 * rgb.mean()                          # a grey came out grey


@pytest.mark.parametrize("w,h", [(256, 192), (1024, 770), (2048, 1540)])
def test_banded_stats_equal_the_whole_frames(w, h):
    rng = np.random.default_rng(w)
    y, x = np.mgrid[0:h, 0:w]
    cfa = 300 + 1500 * (1 + np.sin(x / 37.0) * np.cos(y / 23.0)) + rng.normal(0, 30, (h, w))
    cfa[::2, ::2] *= 0.6
    cfa[100:140, 50:90] = 4095                                      # clipped zones too
    cfa = np.clip(cfa, 0, 4095).astype(np.uint16)
    step = max(1, round((w * h / 4 / capture.STATS_QUADS) ** 0.5))
    whole = StatsEngine(CAL, "full", step=step).compute(cfa, 2.8)
    banded = frame_stats(raw12.pack(cfa), w, "full", CAL, 2.8)
    assert banded.samples == whole.samples
    np.testing.assert_allclose(banded.rgb, whole.rgb, rtol=1e-6)
    np.testing.assert_array_equal(banded.luma_hist, whole.luma_hist)
    assert banded.luma_mean == pytest.approx(whole.luma_mean, rel=1e-5)
    assert banded.clipped == pytest.approx(whole.clipped)


def test_into_a_file_at_its_offset_equals_the_directory_file(tmp_path):
    (tmp_path / "dir").mkdir()
    files = run_still(job(), directory=tmp_path / "dir")["paths"]
    for fmt, path in zip(ALL, files):
        with tempfile.TemporaryFile(dir=tmp_path) as f:
            f.write(b"HEAD")
            f.flush()
            result = run_still(job((fmt,)), fd=f.fileno())
            f.seek(0)
            data = f.read()
        assert result["format"] == fmt and result["size"] == len(data) - 4
        assert "paths" not in result and result["sequence"] == 42
        assert data == b"HEAD" + Path(path).read_bytes(), fmt


@pytest.mark.parametrize("fmt", ALL)
def test_into_a_pipe(tmp_path, fmt):
    expected = Path(run_still(job((fmt,)), directory=tmp_path)["paths"][0]).read_bytes()
    r, w = os.pipe()
    got = bytearray()
    reader = threading.Thread(target=lambda: [got.extend(b) for b in
                                              iter(lambda: os.read(r, 1 << 16), b"")])
    reader.start()
    try:
        result = run_still(job((fmt,)), fd=w)
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    assert result["size"] == len(expected) and bytes(got) == expected


def test_refused_fds_say_why_before_any_work(tmp_path):
    stages = []
    path = tmp_path / "x"
    path.write_bytes(b"")
    ro = os.open(path, os.O_RDONLY)
    r, w = os.pipe()
    os.close(w)
    try:
        for fd, message in ((ro, "fd is not open for writing (it was opened read-only)"),
                            (r, "fd is not open for writing"),
                            (w, "fd is not an open file descriptor"),
                            (-1, "fd must be a file descriptor, not -1")):
            with pytest.raises(InvalidArgument) as info:
                run_still(job(("png",)), fd=fd, on_stage=lambda n, s: stages.append(n))
            assert str(info.value).startswith(message)
        wo = os.open(path, os.O_WRONLY)
        with pytest.raises(InvalidArgument, match=r"^formats: a file descriptor takes exactly "
                                                  r"one format, not 2 \(jpeg, dng\)"):
            run_still(job(("jpeg", "dng")), fd=wo)
        os.close(wo)
    finally:
        os.close(ro)
        os.close(r)
    assert stages == [] and path.read_bytes() == b""


class _CancelAfter(threading.Event):
    """An event that reads as set from its n-th look on: a cancel at a chosen
    point of the capture, deterministic, wherever run_still looks."""

    def __init__(self, n):
        super().__init__()
        self.n, self.looks = n, 0

    def is_set(self):
        self.looks += 1
        return self.looks >= self.n


def test_a_cancel_anywhere_leaves_nothing(tmp_path):
    """Every look at `cancel` in a three-format capture (before the white
    balance, between strips of each format, between formats, before the names
    are taken) in turn: Cancelled, and the directory stays empty."""
    threads = threading.active_count()
    probe = _CancelAfter(10**9)
    (tmp_path / "probe").mkdir()
    run_still(job(wb_gains=None), directory=tmp_path / "probe", cancel=probe)
    assert probe.looks >= 10          # 3 strips x 2 sinks, formats, DNG bands, ...
    out = tmp_path / "out"
    out.mkdir()
    for n in range(1, probe.looks + 1):
        with pytest.raises(Cancelled):
            run_still(job(wb_gains=None), directory=out, cancel=_CancelAfter(n))
        assert os.listdir(out) == [], n
    assert threading.active_count() == threads                      # no ISP thread left


def test_a_cancelled_jpeg_leaves_the_callers_fd_untouched(tmp_path):
    with tempfile.TemporaryFile(dir=tmp_path) as f:
        with pytest.raises(Cancelled):
            run_still(job(("jpeg",)), fd=f.fileno(), cancel=_CancelAfter(3))
        assert os.fstat(f.fileno()).st_size == 0


@pytest.fixture
def mount_point(tmp_path):
    """A directory to mount a tmpfs on (root only), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = []

    def mount(options):
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (not root?)")
        mounted.append(mnt)
        return mnt
    yield mount
    for m in mounted:
        subprocess.run(["umount", str(m)], check=True)


def test_a_full_disk_keeps_nothing_of_the_capture(mount_point):
    # 64 KiB: the JPEG (~5 KB) and PNG (~52 KB) fit, the DNG (~115 KB) does not,
    # so the two finished files must go too (all or nothing).
    mnt = mount_point("size=64k")
    with pytest.raises(Failed) as info:
        run_still(job(), directory=mnt)
    assert str(info.value) == f"the capture directory {mnt} is full (no space left on device)"
    assert os.listdir(mnt) == []
    assert os.statvfs(mnt).f_bfree == os.statvfs(mnt).f_blocks      # the space is back
    assert run_still(job(("jpeg",)), directory=mnt)["paths"]        # and usable again


def test_unusable_directories_fail_before_any_work(tmp_path, mount_point):
    stages = []
    (tmp_path / "file").write_bytes(b"")
    cases = [(tmp_path / "missing", "does not exist (no such file or directory)"),
             (tmp_path / "file", "is not a directory (not a directory)"),
             (mount_point("ro,size=64k"), "is read-only (read-only file system)")]
    for directory, reason in cases:
        with pytest.raises(Failed) as info:
            run_still(job(wb_gains=None), directory=directory,
                      on_stage=lambda n, s: stages.append(n))
        assert str(info.value) == f"the capture directory {directory} {reason}"
    assert stages == []                                             # no ISP time spent


def test_a_directory_the_daemon_may_not_write():
    """As an unprivileged daemon (a forked child that became nobody) in a
    directory it may enter but not write."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become nobody")
    directory = tempfile.mkdtemp(prefix="modcam-capture-")
    os.chmod(directory, 0o755)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: no pytest from here on, only a message and _exit
        try:
            os.setgid(65534)
            os.setuid(65534)
            run_still(job(("jpeg",)), directory=directory)
            os.write(w, b"written")
        except BaseException as exc:
            os.write(w, f"{type(exc).__name__}: {exc}".encode())
        os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            said = f.read().decode()
        os.waitpid(pid, 0)
        assert said == (f"Failed: the capture directory {directory} is not writable for "
                        "modcamd (permission denied)")
        assert os.listdir(directory) == []
    finally:
        os.rmdir(directory)


def test_bad_frames_and_targets_are_failed_sentences(tmp_path):
    binned = replace(job(readout_mode=Readout.BINNED),
                     options=CaptureOptions(formats=("jpeg",), readout_mode="full"))
    cases = [(binned, "the frame was read out in binned mode, not the full mode"),
             (job(pixfmt=PixelFormat.RAW16), "the frame is RAW16, not RAW12 packed"),
             (job(height=H + 2), "the frame's pixels do not match its header"),
             (job(exposure_us=0), "the still could not be developed: exposure_us 0 must be")]
    for still, message in cases:
        with pytest.raises(Failed) as info:
            run_still(still, directory=tmp_path)
        assert str(info.value).startswith(message)
    with pytest.raises(Failed, match="not both"):
        run_still(job(), directory=tmp_path, fd=1)
    with pytest.raises(Failed, match="not neither"):
        run_still(job())
    assert os.listdir(tmp_path) == []


def test_a_reader_that_leaves_is_a_failed_sentence():
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(Failed, match="Broken pipe; what reached the file descriptor is "
                                         "incomplete"):
            run_still(job(("png",)), fd=w)
    finally:
        os.close(w)


@pytest.fixture
def kolkata(monkeypatch):
    """Local time UTC+05:30, so UTC and local time differ."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_names_in_utc_exif_in_local_time(tmp_path, kolkata):
    assert capture.file_stem("A", 0, 7) == "A-19700101-000000-000007"
    assert re.fullmatch(r"A-\d{8}-\d{6}-1234567", capture.file_stem("A", time.time_ns(), 1234567))
    path = run_still(job(("jpeg",)), directory=tmp_path)["paths"][0]
    assert os.path.basename(path) == f"{STEM}.jpg"                  # 03:04:05 UTC
    with Image.open(path) as jpg:
        exif = jpg.getexif().get_ifd(0x8769)
    assert exif[0x9003] == "2026:01:02 08:34:05"                    # DateTimeOriginal
    assert exif[0x9011] == "+05:30"                                 # OffsetTimeOriginal
