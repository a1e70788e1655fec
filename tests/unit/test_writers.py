"""Tests for the ISP's writers (modcam.isp.writers): JPEG, Exif, DNG, PNG.

Owns: JPEG fidelity (Pillow decodes it close to the input) and strip-by-strip
output equal to one-shot output byte for byte; Exif values read back
exactly (piexif, independent of our serialiser); DNG read by LibRaw (rawpy)
with the raw data bit-exact and the mosaic, levels, white balance and colour
matrix as meant; PNG 8/16-bit round trips; `exiftool -validate` clean on
every format; and the error paths: full disk (/dev/full, a tiny tmpfs),
closed, read-only and broken-pipe fds, bad arrays and arguments.
"""
import errno
import io
import os
import shutil
import subprocess
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import piexif
import pytest
from PIL import Image

from modcam.calibration import virtual_calibration
from modcam.isp.writers import (JpegWriter, PictureMeta, WriteError, dng_colour_matrix,
                                exif_blob, write_dng, write_jpeg, write_png,
                                write_png_strips)
from modcam.isp.writers import exif as exif_mod

SERIAL = "MC100-000123"
TZ = timezone(timedelta(hours=2))
EXIFTOOL = shutil.which("exiftool")
asan = pytest.mark.asan   # the tests that drive native/jpeg_writer.c


@pytest.fixture(scope="module")
def calibration():
    return virtual_calibration(SERIAL)


def make_meta(calibration, **over):
    fields = dict(make="Modcam", model="MC-100", firmware="1.2.3", exposure_us=10000,
                  analogue_gain=4.0, aperture=2.8, lens_position=2.0,
                  timestamp=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=TZ),
                  wb_gains=(2.4, 1.0, 1.6))
    fields.update(over)
    return PictureMeta.from_calibration(calibration, **fields)


@pytest.fixture(scope="module")
def meta(calibration):
    return make_meta(calibration)


def smooth_image(h=480, w=640):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([128 + 100 * np.sin(x / 97) * np.cos(y / 131),
                     128 + 90 * np.sin((x + y) / 211),
                     128 + 100 * np.cos(x / 53 - y / 77)], -1).astype(np.uint8)


def psnr(a, b):
    d = a.astype(np.float64) - b
    return 10 * np.log10(255.0 ** 2 / np.mean(d * d))


def exiftool_validate(path):
    out = subprocess.run([EXIFTOOL, "-validate", "-warning", "-error", "-a", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return [line.split(":", 1)[1].strip() for line in out.splitlines()]


needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed")


# ---- JPEG ----

@asan
@pytest.mark.parametrize("subsampling", ["420", "422", "444"])
@pytest.mark.parametrize("dct", ["islow", "ifast", "float"])
def test_jpeg_decodes_close_to_input(subsampling, dct):
    img = smooth_image()
    data = write_jpeg(None, img, subsampling=subsampling, dct=dct)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.size == (640, 480) and decoded.mode == "RGB"
    assert psnr(np.asarray(decoded), img) > 35.0


@asan
def test_jpeg_strips_equal_one_shot_byte_for_byte():
    img = smooth_image(479, 637)   # odd sizes: partial MCUs at both edges
    whole = write_jpeg(None, img, strip_rows=479)
    for rows in (1, 7, 16, 100, 256):
        assert write_jpeg(None, img, strip_rows=rows) == whole
    uneven = JpegWriter(None, 637, 479)
    for r0, r1 in ((0, 3), (3, 200), (200, 201), (201, 479)):
        uneven.write_rows(img[r0:r1])
    assert uneven.finish() == whole


@asan
def test_jpeg_accepts_views_with_a_row_stride():
    big = smooth_image(600, 800)
    view = big[50:530, 100:740]     # rows 800*3 bytes apart, 640 pixels used
    assert write_jpeg(None, view) == write_jpeg(None, np.ascontiguousarray(view))


@asan
def test_jpeg_to_path_fd_and_pipe_are_identical(tmp_path):
    img = smooth_image()
    reference = write_jpeg(None, img)
    write_jpeg(tmp_path / "a.jpg", img)
    assert (tmp_path / "a.jpg").read_bytes() == reference
    assert os.listdir(tmp_path) == ["a.jpg"]            # no temporary file left behind
    with open(tmp_path / "b.jpg", "wb") as f:
        f.write(b"prefix")                              # written from the fd's offset
        f.flush()
        write_jpeg(f.fileno(), img)
    assert (tmp_path / "b.jpg").read_bytes() == b"prefix" + reference
    assert read_through_pipe(lambda fd: write_jpeg(fd, img)) == reference


def read_through_pipe(write, nonblocking=True):
    """Run write(fd) into a pipe (non-blocking: partial writes and EAGAIN)
    while a thread drains it slowly; return what came out."""
    r, w = os.pipe()
    os.set_blocking(w, not nonblocking)
    chunks = []

    def drain():
        while data := os.read(r, 4096):
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        write(w)
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    return b"".join(chunks)


@asan
def test_jpeg_error_messages_are_sentences_for_bad_arguments():
    img = smooth_image(16, 16)
    bad = [(lambda: JpegWriter(None, 0, 10), "width 0"),
           (lambda: JpegWriter(None, 70000, 10), "width 70000"),
           (lambda: JpegWriter(None, 16, 16, quality=101), "quality 101"),
           (lambda: JpegWriter(None, 16, 16, subsampling="411"), "subsampling '411'"),
           (lambda: JpegWriter(None, 16, 16, dct="fastest"), "DCT method"),
           (lambda: write_jpeg(None, img.astype(np.float32)), "dtype uint8"),
           (lambda: write_jpeg(None, img[..., 0]), "shape"),
           (lambda: write_jpeg(None, img[:, ::2]), "contiguous"),
           (lambda: write_jpeg(None, img[..., ::-1]), "contiguous"),
           (lambda: write_jpeg(None, img[::-1]), "forwards")]
    for call, words in bad:
        with pytest.raises(ValueError, match=words):
            call()


@asan
def test_jpeg_row_count_is_enforced():
    img = smooth_image(16, 16)
    w = JpegWriter(None, 16, 16)
    with pytest.raises(ValueError, match="shape"):
        w.write_rows(smooth_image(4, 15))
    w.write_rows(img[:10])
    with pytest.raises(ValueError, match="room for 6"):
        w.write_rows(img)
    with pytest.raises(ValueError, match="only 10 of the JPEG's 16 rows"):
        w.finish()
    w.write_rows(img[10:])
    assert w.finish()[:2] == b"\xff\xd8"
    with pytest.raises(ValueError, match="already finished"):
        w.write_rows(img[:1])
    w.abort()   # harmless after finish


@asan
def test_jpeg_full_disk_raises_enospc():
    img = smooth_image()
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(WriteError) as info:
            write_jpeg(fd, img)
    finally:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value).startswith(f"writing the JPEG to fd {fd} failed after 0 bytes: "
                                      "No space left on device")


@asan
def test_jpeg_refuses_closed_and_read_only_fds_before_encoding(tmp_path):
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(WriteError, match=f"fd {w}: it is not an open file descriptor") as info:
        JpegWriter(w, 16, 16)
    assert info.value.errno == errno.EBADF
    with pytest.raises(WriteError, match=f"fd {r}: it is not open for writing"):
        JpegWriter(r, 16, 16)
    os.close(r)


@asan
def test_jpeg_to_a_pipe_whose_reader_left_raises_epipe():
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(WriteError) as info:
            write_jpeg(w, smooth_image())
    finally:
        os.close(w)
    assert info.value.errno == errno.EPIPE and "Broken pipe" in str(info.value)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs: a real file system that fills up (needs CAP_SYS_ADMIN)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@asan
def test_full_file_system_leaves_nothing_at_the_path(tiny_tmpfs, meta, calibration):
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)   # ~150 KB as JPEG
    cfa = rng.integers(0, 4096, (128, 512), dtype=np.uint16)      # 128 KiB of pixels
    for name, call in (("a.jpg", lambda p: write_jpeg(p, noisy, quality=100)),
                       ("a.dng", lambda p: write_dng(p, cfa, meta)),
                       ("a.png", lambda p: write_png(p, noisy, compression=0))):
        with pytest.raises(WriteError) as info:
            call(tiny_tmpfs / name)
        assert info.value.errno == errno.ENOSPC, name
        assert str(tiny_tmpfs / name) in str(info.value)
        assert os.listdir(tiny_tmpfs) == []          # neither the picture nor a temporary


@asan
def test_jpeg_aborted_in_a_with_block_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with JpegWriter(tmp_path / "x.jpg", 16, 16) as w:
            w.write_rows(smooth_image(8, 16))
            raise RuntimeError("the ISP failed")
    assert os.listdir(tmp_path) == []


def test_path_in_a_missing_directory_is_a_sentence(tmp_path):
    with pytest.raises(WriteError, match="cannot create the JPEG at .*: No such file"):
        JpegWriter(tmp_path / "nowhere" / "x.jpg", 16, 16)


# ---- Exif ----

def test_exif_reads_back_exactly(meta):
    data = write_jpeg(None, smooth_image(), meta=meta)
    tags = piexif.load(data)
    zeroth, ex = tags["0th"], tags["Exif"]
    I, E = piexif.ImageIFD, piexif.ExifIFD
    assert zeroth[I.Make] == b"Modcam" and zeroth[I.Model] == b"MC-100"
    assert zeroth[I.Orientation] == 1
    assert zeroth[I.Software] == exif_mod.software().encode()
    assert exif_mod.software().startswith("modcam")
    assert ex[E.BodySerialNumber] == SERIAL.encode()
    assert ex[E.LensModel] == b"35mm F1.4-11" and ex[E.LensMake] == b"Modcam"
    assert ex[E.FocalLength] == (35, 1) and ex[E.FocalLengthIn35mmFilm] == 70
    assert ex[E.FNumber] == (14, 5)                      # f/2.8
    assert ex[E.ExposureTime] == (1, 100)                # 10000 us
    assert ex[E.ISOSpeedRatings] == 400                  # gain 4 x 100
    assert ex[E.DateTimeOriginal] == b"2024:05:06 07:08:09"
    assert ex[E.SubSecTimeOriginal] == b"123"
    assert ex[E.OffsetTimeOriginal] == b"+02:00"
    assert ex[E.SubjectDistance] == (1, 2)               # 2 dioptres = 0.5 m
    assert ex[E.LensSpecification] == ((35, 1), (35, 1), (7, 5), (11, 1))
    assert (ex[E.PixelXDimension], ex[E.PixelYDimension]) == (640, 480)
    assert ex[E.ColorSpace] == 1 and ex[E.ExifVersion] == b"0232"
    assert E.DigitalZoomRatio not in ex
    pil = Image.open(io.BytesIO(data)).getexif()
    assert pil[271] == "Modcam" and pil[274] == 1


def test_exif_for_zoom_infinity_and_negative_offsets(calibration):
    m = make_meta(calibration, readout_mode="zoom2x", lens_position=0.0, analogue_gain=1000.0,
                  timestamp=datetime(2023, 12, 31, 23, 59, 59, 999999,
                                     tzinfo=timezone(-timedelta(hours=5, minutes=30))))
    ex = piexif.load(exif_blob(m))["Exif"]
    E = piexif.ExifIFD
    assert ex[E.DigitalZoomRatio] == (2, 1) and ex[E.FocalLengthIn35mmFilm] == 140
    assert ex[E.SubjectDistance] == (0xFFFFFFFF, 1)      # infinity
    assert ex[E.OffsetTimeOriginal] == b"-05:30" and ex[E.SubSecTimeOriginal] == b"999"
    assert ex[E.ISOSpeedRatings] == 65535                # clamped to the SHORT


def test_exif_text_is_ascii(calibration):
    m = make_meta(calibration, model="MC-100 \u00e9t\u00e9\n")
    assert piexif.load(exif_blob(m))["0th"][piexif.ImageIFD.Model] == b"MC-100 ?t??"


@needs_exiftool
def test_jpeg_passes_exiftool_validate(tmp_path, meta):
    write_jpeg(tmp_path / "x.jpg", smooth_image(), meta=meta)
    assert exiftool_validate(tmp_path / "x.jpg") == ["OK"]


def test_picture_meta_rejects_what_it_cannot_record(calibration, meta):
    cases = [({"timestamp": datetime(2024, 1, 1)}, "time zone"),
             ({"readout_mode": "binned4"}, "readout mode 'binned4'"),
             ({"cfa_pattern": "RGGG"}, "cfa_pattern"),
             ({"exposure_us": 0}, "exposure_us"),
             ({"aperture": -1.0}, "aperture"),
             ({"lens_position": float("nan")}, "lens_position"),
             ({"wb_gains": (1.0, 0.0, 1.0)}, "wb_gains"),
             ({"orientation": 9}, "orientation")]
    for over, words in cases:
        with pytest.raises(ValueError, match=words):
            make_meta(calibration, **over)
    with pytest.raises(ValueError, match="calibration is for module 'OTHER'"):
        meta.with_calibration(virtual_calibration("OTHER"))


# ---- DNG ----

def random_cfa(h=64, w=96, seed=1):
    return np.random.default_rng(seed).integers(0, 4096, (h, w), dtype=np.uint16)


def test_dng_opens_in_libraw_bit_exact(tmp_path, meta, calibration):
    rawpy = pytest.importorskip("rawpy")
    cfa = random_cfa()
    size = write_dng(tmp_path / "x.dng", cfa, meta)
    assert size == os.path.getsize(tmp_path / "x.dng")
    with rawpy.imread(str(tmp_path / "x.dng")) as raw:
        assert np.array_equal(raw.raw_image, cfa)
        desc = raw.color_desc.decode()
        assert "".join(desc[c] for c in raw.raw_pattern.flat) == "RGGB"
        assert list(raw.black_level_per_channel) == [256] * 4 and raw.white_level == 4095
        assert np.allclose(raw.camera_whitebalance[:3], (2.4, 1.0, 1.6), rtol=1e-5)
        # LibRaw's camera -> sRGB matrix for white-balanced data is our calibration
        # matrix with its D65 white folded in: this checks ColorMatrix1 end to end.
        m = calibration.matrix()
        expected = m @ np.diag(np.linalg.inv(m) @ np.ones(3))
        assert np.allclose(np.asarray(raw.color_matrix)[:, :3], expected, atol=2e-3)
        if hasattr(raw, "other"):                   # rawpy >= 0.22 reads the Exif IFD
            assert raw.other.iso_speed == 400 and raw.other.focal_length == 35
            assert raw.lens.model == "35mm F1.4-11"


def test_dng_tags_as_written(tmp_path, meta):
    tifffile = pytest.importorskip("tifffile")
    write_dng(tmp_path / "x.dng", random_cfa(), meta)
    with tifffile.TiffFile(tmp_path / "x.dng") as tif:
        tags = {t.code: t.value for t in tif.pages[0].tags.values()}
    assert tags[271] == "Modcam" and tags[272] == "MC-100"
    assert tags[50708] == "Modcam MC-100" and tags[50735] == SERIAL
    assert tuple(tags[50706]) == (1, 4, 0, 0) and tags[254] == 0 and tags[262] == 32803
    assert tuple(tags[33422]) == (0, 1, 1, 2) and tuple(tags[33421]) == (2, 2)
    assert tags[50714] == 256 and tags[50717] == 4095 and tags[50778] == 21
    cm = np.array(tags[50721], np.float64).reshape(-1, 2)
    cm = (cm[:, 0] / cm[:, 1]).reshape(3, 3)
    assert np.allclose(cm, dng_colour_matrix(meta.colour_matrix), atol=1e-4)
    d50 = np.array([0.3457 / 0.3585, 1.0, (1 - 0.3457 - 0.3585) / 0.3585])
    assert abs(np.max(cm @ d50) - 1.0) < 1e-3        # the DNG SDK's normalisation
    neutral = np.array(tags[50728], np.float64).reshape(-1, 2)
    assert np.allclose(neutral[:, 0] / neutral[:, 1], (1 / 2.4, 1.0, 1 / 1.6))


@needs_exiftool
@pytest.mark.parametrize("mode,shape", [("full", (64, 96)), ("binned", (32, 48)),
                                        ("zoom2x", (32, 48))])
def test_dng_passes_exiftool_validate(tmp_path, calibration, mode, shape):
    path = tmp_path / f"{mode}.dng"
    write_dng(path, random_cfa(*shape), make_meta(calibration, readout_mode=mode))
    assert exiftool_validate(path) == ["OK"]
    out = subprocess.run([EXIFTOOL, "-s3", "-CameraSerialNumber", "-ImageSize",
                          "-DigitalZoomRatio", str(path)], capture_output=True, text=True).stdout
    assert out.split("\n")[:2] == [SERIAL, f"{shape[1]}x{shape[0]}"]
    assert ("2" in out.split("\n")[2]) == (mode == "zoom2x")


def test_dng_from_views_byte_order_and_calibration_argument(tmp_path, meta, calibration):
    cfa = random_cfa(64, 100)
    reference = tmp_path / "ref.dng"
    write_dng(reference, np.ascontiguousarray(cfa[:, 2:98]), meta)
    write_dng(tmp_path / "view.dng", cfa[:, 2:98], meta)                    # strided rows
    write_dng(tmp_path / "be.dng", cfa[:, 2:98].astype(">u2"), meta)       # big-endian
    for name in ("view.dng", "be.dng"):
        assert (tmp_path / name).read_bytes() == reference.read_bytes(), name
    # With the calibration argument (as the issue says) the levels and matrix come
    # from it, and it is embedded whole for re-developing (DNGPrivateData).
    from modcam.isp.dng_reader import read_dng
    bare = replace(meta, colour_matrix=None, black_level=0)
    write_dng(tmp_path / "cal.dng", cfa[:, 2:98], bare, calibration)
    back = read_dng(tmp_path / "cal.dng")
    assert back.calibration == calibration
    assert np.array_equal(back.cfa, cfa[:, 2:98])
    assert back.meta.colour_matrix == meta.colour_matrix
    assert back.meta.black_level == meta.black_level
    assert exiftool_validate(tmp_path / "cal.dng") == ["OK"]


def test_dng_to_a_pipe_equals_the_file(tmp_path, meta):
    cfa = random_cfa(256, 512)          # 256 KiB: many partial pipe writes
    write_dng(tmp_path / "x.dng", cfa, meta)
    assert read_through_pipe(lambda fd: write_dng(fd, cfa, meta)) == \
        (tmp_path / "x.dng").read_bytes()


def test_dng_errors(tmp_path, meta):
    for bad, words in ((random_cfa().astype(np.uint8), "dtype uint16"),
                       (random_cfa().astype(np.float32), "dtype uint16"),
                       (random_cfa()[None], "2-D"), (random_cfa(64, 95), "even sides"),
                       ([[1, 2], [3, 4]], "numpy array")):
        with pytest.raises(ValueError, match=words):
            write_dng(tmp_path / "x.dng", bad, meta)
    with pytest.raises(ValueError, match="colour matrix"):
        write_dng(tmp_path / "x.dng", random_cfa(),
                  replace(meta, colour_matrix=None))
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(WriteError, match="writing the DNG to fd .* No space left") as info:
            write_dng(fd, random_cfa(), meta)
    finally:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


# ---- PNG ----

def test_png_8_and_16_bit_round_trip_exactly(tmp_path):
    png = pytest.importorskip("png")
    rng = np.random.default_rng(3)
    img8 = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    img16 = rng.integers(0, 65536, (37, 53, 3), dtype=np.uint16)
    write_png(tmp_path / "a.png", img8, strip_rows=5)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), img8)
    write_png(tmp_path / "b.png", img16, strip_rows=5)
    width, height, rows, info = png.Reader(filename=str(tmp_path / "b.png")).read()
    assert info["bitdepth"] == 16 and (width, height) == (53, 37)
    assert np.array_equal(np.vstack([np.asarray(r, np.uint16) for r in rows])
                          .reshape(37, 53, 3), img16)
    assert read_through_pipe(lambda fd: write_png(fd, img16, strip_rows=5)) == \
        (tmp_path / "b.png").read_bytes()


def test_png_strips_are_checked(tmp_path):
    img = smooth_image(20, 30)
    with pytest.raises(ValueError, match="held 10 rows; the PNG has 20"):
        write_png_strips(tmp_path / "x.png", [img[:10]], 30, 20)
    with pytest.raises(ValueError, match="more than the PNG's 20 rows"):
        write_png_strips(tmp_path / "x.png", [img, img[:1]], 30, 20)
    with pytest.raises(ValueError, match="dtype uint16"):
        write_png_strips(tmp_path / "x.png", [img], 30, 20, bit_depth=16)
    with pytest.raises(ValueError, match="dtype uint8 or uint16"):
        write_png(tmp_path / "x.png", img.astype(np.int32))
    with pytest.raises(ValueError, match="bit depth 12"):
        write_png_strips(tmp_path / "x.png", [img], 30, 20, bit_depth=12)
    assert os.listdir(tmp_path) == []


@needs_exiftool
def test_png_passes_exiftool_validate(tmp_path):
    write_png(tmp_path / "x.png", smooth_image(16, 16).astype(np.uint16) * 257)
    assert exiftool_validate(tmp_path / "x.png") == ["OK"]


def test_python_side_timeout_on_a_stuck_non_blocking_reader(monkeypatch):
    from modcam.isp.writers import output
    monkeypatch.setattr(output, "WRITE_TIMEOUT_S", 0.2)
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        with pytest.raises(WriteError, match="accepted nothing for 0.2 s") as info:
            write_png(w, np.zeros((512, 512, 3), np.uint16), compression=0)
    finally:
        os.close(r)
        os.close(w)
    assert info.value.errno == errno.ETIMEDOUT
