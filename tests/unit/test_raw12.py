"""Tests for RAW12 pack/unpack (native/raw12.c through modcam.raw12).

Owns: bit-exactness against the CSI-2 packing rule (hand-computed vectors and
an independent numpy reference), round trips over awkward widths, strides and
row ranges, masking of bits above 12, argument errors, agreement of the AVX2
and portable kernels, and "never touch memory past a row" with a guard page.
"""
import ctypes
import mmap

import numpy as np
import pytest

from modcam import raw12
from modcam.raw12 import ffi, lib

pytestmark = pytest.mark.asan  # exact-size buffers make these good sanitizer tests

# Widths around the SIMD block (16 px) and fast-loop (32 px) edges, odd ones,
# and the sensor's full and binned widths.
WIDTHS = [1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 20, 21, 22, 23, 31, 32, 33, 36, 37, 38,
          47, 48, 49, 53, 63, 64, 65, 100, 101, 255, 256, 257, 1001, 5776, 11552]
IMPLS = {"scalar": lib.MODCAM_RAW12_IMPL_SCALAR, "avx2": lib.MODCAM_RAW12_IMPL_AVX2}


@pytest.fixture(params=sorted(IMPLS))
def impl(request):
    """Force one kernel for the test, then go back to automatic choice."""
    got = lib.modcam_raw12_set_impl(IMPLS[request.param])
    if got < 0:
        pytest.skip(f"this CPU cannot run the {request.param} kernel")
    yield request.param
    lib.modcam_raw12_set_impl(lib.MODCAM_RAW12_IMPL_AUTO)


def ref_pack(px):
    """The packing rule, written independently of the C code."""
    px = px.astype(np.uint16) & 0x0FFF
    if px.shape[1] % 2:
        px = np.pad(px, ((0, 0), (0, 1)))
    p0, p1 = px[:, 0::2], px[:, 1::2]
    g = np.stack([p0 >> 4, p1 >> 4, ((p1 & 0xF) << 4) | (p0 & 0xF)], axis=-1)
    return g.astype(np.uint8).reshape(px.shape[0], -1)


def ref_unpack(packed, width):
    g = packed[:, : raw12.packed_stride(width)].reshape(packed.shape[0], -1, 3).astype(np.uint16)
    p0 = (g[..., 0] << 4) | (g[..., 2] & 0xF)
    p1 = (g[..., 1] << 4) | (g[..., 2] >> 4)
    return np.stack([p0, p1], axis=-1).reshape(packed.shape[0], -1)[:, :width]


def random_pixels(rng, h, w, bits=12):
    return rng.integers(0, 1 << bits, (h, w), dtype=np.uint16)


# ---- known answers, by hand from the rule ----

def test_known_answer_two_pixels():
    # P0 = 0xABC, P1 = 0x123: byte0 = 0xAB, byte1 = 0x12, byte2 = 0x3 << 4 | 0xC.
    px = np.array([[0xABC, 0x123]], np.uint16)
    assert raw12.pack(px).tolist() == [[0xAB, 0x12, 0x3C]]
    assert raw12.unpack(np.array([[0xAB, 0x12, 0x3C]], np.uint8), 2).tolist() == [[0xABC, 0x123]]


def test_known_answer_odd_width_pads_with_zero_pixel():
    px = np.array([[0xABC, 0x123, 0xFED]], np.uint16)
    assert raw12.pack(px).tolist() == [[0xAB, 0x12, 0x3C, 0xFE, 0x00, 0x0D]]
    # The padding pixel's bits are ignored on unpack.
    packed = np.array([[0xAB, 0x12, 0x3C, 0xFE, 0x77, 0x9D]], np.uint8)
    assert raw12.unpack(packed, 3).tolist() == [[0xABC, 0x123, 0xFED]]


def test_known_answer_extremes():
    px = np.array([[0x000, 0xFFF, 0xFFF, 0x000, 0x00F, 0xFF0, 0x800, 0x001]], np.uint16)
    expected = [0x00, 0xFF, 0xF0, 0xFF, 0x00, 0x0F, 0x00, 0xFF, 0x0F, 0x80, 0x00, 0x10]
    assert raw12.pack(px).tolist() == [expected]
    assert raw12.unpack(np.array([expected], np.uint8), 8).tolist() == px.tolist()


def test_known_answer_long_row(impl):
    # 40 pixels cross the 16/32-pixel SIMD blocks. Group k holds
    # P0 = 0x100 + 0x11 * k, P1 = 0xE00 - 0x10 * k + (k & 0xF).
    groups = range(20)
    px = [v for k in groups for v in (0x100 + 0x11 * k, 0xE00 - 0x10 * k + (k & 0xF))]
    expected = []
    for k in groups:
        p0, p1 = 0x100 + 0x11 * k, 0xE00 - 0x10 * k + (k & 0xF)
        expected += [p0 >> 4, p1 >> 4, (p1 & 0xF) << 4 | (p0 & 0xF)]
    assert raw12.pack(np.array([px], np.uint16)).tolist() == [expected]
    assert raw12.unpack(np.array([expected], np.uint8), 40).tolist() == [px]


def test_packed_stride():
    assert [raw12.packed_stride(w) for w in (1, 2, 3, 4, 11552)] == [3, 3, 6, 6, 17328]
    assert lib.modcam_raw12_stride(11553) == 17331


# ---- round trips and the reference ----

@pytest.mark.parametrize("width", WIDTHS)
def test_round_trip_matches_reference(impl, width):
    rng = np.random.default_rng(width)
    px = random_pixels(rng, 5, width)
    packed = raw12.pack(px)
    assert packed.shape == (5, raw12.packed_stride(width)) and packed.dtype == np.uint8
    np.testing.assert_array_equal(packed, ref_pack(px))
    np.testing.assert_array_equal(raw12.unpack(packed, width), px)


@pytest.mark.parametrize("width", WIDTHS)
def test_unpack_any_bytes_matches_reference(impl, width):
    rng = np.random.default_rng(1000 + width)
    packed = rng.integers(0, 256, (4, raw12.packed_stride(width)), dtype=np.uint8)
    px = raw12.unpack(packed, width)
    np.testing.assert_array_equal(px, ref_unpack(packed, width))
    assert px.max() <= 0x0FFF
    if width % 2 == 0:  # no padding pixel: every bit survives the round trip
        np.testing.assert_array_equal(raw12.pack(px), packed)


@pytest.mark.parametrize("width", [1, 17, 33, 64, 101])
@pytest.mark.parametrize("extra", [1, 5, 64])
def test_strides_larger_than_minimum(impl, width, extra):
    rng = np.random.default_rng(width * 100 + extra)
    px = random_pixels(rng, 6, width)
    stride = raw12.packed_stride(width) + extra
    packed = raw12.pack(px, stride=stride)
    assert packed.shape == (6, stride)
    assert not packed[:, raw12.packed_stride(width):].any()  # new padding is zeroed
    np.testing.assert_array_equal(raw12.unpack(packed, width), px)
    # Into a caller's buffer: padding is never written.
    out = np.full((6, stride), 0xEE, np.uint8)
    assert raw12.pack(px, out=out) is out
    assert (out[:, raw12.packed_stride(width):] == 0xEE).all()
    np.testing.assert_array_equal(out[:, : raw12.packed_stride(width)], ref_pack(px))


def test_views_with_row_padding_are_used_in_place(impl):
    # A packed view narrower than its row stride, unpacked into a view of a wider buffer.
    rng = np.random.default_rng(7)
    width = 37
    px = random_pixels(rng, 8, width)
    big = np.zeros((8, 100), np.uint8)
    raw12.pack(px, out=big[:, : raw12.packed_stride(width)])
    wide = np.full((8, 50), 0xBEEF, np.uint16)
    got = raw12.unpack(big[:, : raw12.packed_stride(width)], width, out=wide[:, :width])
    np.testing.assert_array_equal(got, px)
    assert (wide[:, width:] == 0xBEEF).all()
    # Every second row: a larger row stride still has contiguous rows.
    np.testing.assert_array_equal(raw12.unpack(raw12.pack(px)[::2], width), px[::2])


@pytest.mark.parametrize("width", [3, 40, 11552])
def test_strips_with_reused_out_buffer(impl, width):
    rng = np.random.default_rng(width)
    height, strip_rows = 23, 5
    px = random_pixels(rng, height, width)
    packed = raw12.pack(px)
    strip = np.empty((strip_rows, width), np.uint16)
    repacked = np.empty_like(packed)
    for r0 in range(0, height, strip_rows):
        r1 = min(r0 + strip_rows, height)
        got = raw12.unpack(packed, width, out=strip[: r1 - r0], rows=(r0, r1))
        np.testing.assert_array_equal(got, px[r0:r1])
        raw12.pack(px, out=repacked[r0:r1], rows=(r0, r1))
    np.testing.assert_array_equal(repacked, packed)
    assert raw12.unpack(packed, width, rows=(4, 4)).shape == (0, width)


def test_c_row_range_leaves_other_rows_untouched(impl):
    rng = np.random.default_rng(3)
    width, height = 45, 10
    px = random_pixels(rng, height, width)
    packed = raw12.pack(px)
    out = np.full((height, width + 3), 0xDEAD, np.uint16)  # wider than the image
    err = lib.modcam_raw12_unpack(ffi.from_buffer("uint8_t[]", packed), packed.shape[1],
                                  ffi.from_buffer("uint16_t[]", out), out.shape[1], width, 3, 7)
    assert err == 0
    np.testing.assert_array_equal(out[3:7, :width], px[3:7])
    assert (out[:3] == 0xDEAD).all() and (out[7:] == 0xDEAD).all() and (out[:, width:] == 0xDEAD).all()
    dst = np.full_like(packed, 0x55)
    err = lib.modcam_raw12_pack(ffi.from_buffer("uint16_t[]", px), width,
                                ffi.from_buffer("uint8_t[]", dst), dst.shape[1], width, 2, 9)
    assert err == 0
    np.testing.assert_array_equal(dst[2:9], packed[2:9])
    assert (dst[:2] == 0x55).all() and (dst[9:] == 0x55).all()


# ---- values above 12 bits ----

def test_pack_masks_bits_above_12(impl):
    rng = np.random.default_rng(12)
    px = random_pixels(rng, 4, 77, bits=16)
    assert (px > 0x0FFF).any()
    np.testing.assert_array_equal(raw12.pack(px), raw12.pack(px & 0x0FFF))
    np.testing.assert_array_equal(raw12.unpack(raw12.pack(px), 77), px & 0x0FFF)
    assert raw12.pack(np.array([[0xFABC, 0x1123]], np.uint16)).tolist() == [[0xAB, 0x12, 0x3C]]


# ---- the two kernels agree ----

@pytest.mark.parametrize("width", WIDTHS)
def test_simd_and_scalar_agree(width):
    if lib.modcam_raw12_set_impl(lib.MODCAM_RAW12_IMPL_AVX2) < 0:
        pytest.skip("this CPU has no AVX2")
    try:
        rng = np.random.default_rng(2000 + width)
        packed = rng.integers(0, 256, (3, raw12.packed_stride(width) + 2), dtype=np.uint8)
        px = random_pixels(rng, 3, width, bits=16)
        simd = raw12.unpack(packed, width), raw12.pack(px, stride=packed.shape[1])
        assert raw12.implementation() == "avx2"
        lib.modcam_raw12_set_impl(lib.MODCAM_RAW12_IMPL_SCALAR)
        assert raw12.implementation() == "scalar"
        scalar = raw12.unpack(packed, width), raw12.pack(px, stride=packed.shape[1])
    finally:
        lib.modcam_raw12_set_impl(lib.MODCAM_RAW12_IMPL_AUTO)
    np.testing.assert_array_equal(simd[0], scalar[0])
    np.testing.assert_array_equal(simd[1], scalar[1])


def test_set_impl_rejects_unknown():
    assert lib.modcam_raw12_set_impl(99) < 0
    assert raw12.implementation() in ("avx2", "scalar")


# ---- never touch memory past a row: the last row ends at a guard page ----

def _guarded(nbytes):
    """A writable buffer of `nbytes` whose last byte is followed by PROT_NONE."""
    page = mmap.PAGESIZE
    span = -(-nbytes // page) * page
    m = mmap.mmap(-1, span + page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(base + span, page, 0) == 0  # PROT_NONE
    return m, np.frombuffer(m, np.uint8, count=nbytes, offset=span - nbytes)


@pytest.mark.parametrize("width", [1, 16, 21, 22, 33, 37, 53, 63, 65, 101, 11552])
def test_last_row_ends_at_guard_page(impl, width):
    rng = np.random.default_rng(width)
    rows = 3
    px = random_pixels(rng, rows, width)
    m_packed, packed_flat = _guarded(rows * raw12.packed_stride(width))
    m_px, px_bytes = _guarded(rows * width * 2)
    packed = packed_flat.reshape(rows, -1)
    out = px_bytes.view(np.uint16).reshape(rows, width)
    out[:] = px
    raw12.pack(out, out=packed)  # reads the last pixel, writes the last byte
    np.testing.assert_array_equal(packed, ref_pack(px))
    out[:] = 0
    raw12.unpack(packed, width, out=out)  # reads the last byte, writes the last pixel
    np.testing.assert_array_equal(out, px)
    del packed, packed_flat, out, px_bytes
    m_packed.close()
    m_px.close()


# ---- argument errors: ValueError with a sentence naming the argument ----

GOOD = np.zeros((4, 6), np.uint8)


@pytest.mark.parametrize("call, match", [
    (lambda: raw12.unpack(GOOD.astype(np.uint16), 4), "packed must have dtype uint8"),
    (lambda: raw12.unpack(GOOD.ravel(), 4), "packed must be 2-D"),
    (lambda: raw12.unpack([[0, 0, 0]], 2), "packed must be a numpy array"),
    (lambda: raw12.unpack(np.zeros((4, 12), np.uint8)[:, ::2], 4), "each row of packed must be contiguous"),
    (lambda: raw12.unpack(GOOD[::-1], 4), "rows of packed must follow each other"),
    (lambda: raw12.unpack(GOOD, 5), "fewer than the 9 that 5 pixels need"),
    (lambda: raw12.unpack(GOOD, 0), "width 0 is out of range"),
    (lambda: raw12.unpack(GOOD, -2), "width -2 is out of range"),
    (lambda: raw12.unpack(GOOD, 4.0), "width must be an integer"),
    (lambda: raw12.unpack(GOOD, 4, rows=(3, 2)), r"rows \(3, 2\) is not a range"),
    (lambda: raw12.unpack(GOOD, 4, rows=(0, 5)), r"rows \(0, 5\) is not a range"),
    (lambda: raw12.unpack(GOOD, 4, rows=3), "rows must be a pair of integers"),
    (lambda: raw12.unpack(GOOD, 4, out=np.zeros((4, 5), np.uint16)), r"needs shape \(4, 4\)"),
    (lambda: raw12.unpack(GOOD, 4, out=np.zeros((4, 4), np.int32)), "out must have dtype uint16"),
    (lambda: raw12.unpack(GOOD, 4, out=np.zeros((4, 4), np.uint16)[:, ::-1]),
     "each row of out must be contiguous"),
    (lambda: raw12.unpack(GOOD, 4, out=np.zeros(33, np.uint8)[1:].view(np.uint16).reshape(4, 4)),
     "out is not aligned"),
    (lambda: raw12.pack(np.zeros((2, 4), np.int16)), "pixels must have dtype uint16"),
    (lambda: raw12.pack(np.zeros((2, 0), np.uint16)), "width 0 is out of range"),
    (lambda: raw12.pack(np.zeros((2, 4), np.uint16), stride=5), "stride 5 is below the 6 bytes"),
    (lambda: raw12.pack(np.zeros((2, 4), np.uint16), out=np.zeros((2, 8), np.uint8), stride=6),
     r"needs shape \(2, 6\)"),
    (lambda: raw12.pack(np.zeros((2, 4), np.uint16), out=np.zeros((3, 6), np.uint8)),
     r"needs shape \(2, 6\)"),
    (lambda: raw12.pack(np.zeros((2, 4), np.uint16), rows=(1, 3)), r"rows \(1, 3\) is not a range"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_read_only_out_is_refused():
    out = np.zeros((4, 4), np.uint16)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        raw12.unpack(GOOD, 4, out=out)


def test_read_only_input_is_fine():
    packed = np.array([[0xAB, 0x12, 0x3C]], np.uint8)
    packed.flags.writeable = False  # e.g. a view of a ring slot mapped read-only
    assert raw12.unpack(packed, 2).tolist() == [[0xABC, 0x123]]


def test_c_rejects_bad_arguments():
    b = ffi.new("uint8_t[12]")
    p = ffi.new("uint16_t[8]")
    einval = -22
    assert lib.modcam_raw12_unpack(ffi.NULL, 6, p, 4, 4, 0, 1) == einval
    assert lib.modcam_raw12_unpack(b, 5, p, 4, 4, 0, 1) == einval     # packed stride too small
    assert lib.modcam_raw12_unpack(b, 6, p, 3, 4, 0, 1) == einval     # pixel stride too small
    assert lib.modcam_raw12_unpack(b, 6, p, 4, 0, 0, 1) == einval     # width 0
    assert lib.modcam_raw12_unpack(b, 6, p, 4, 4, 2, 1) == einval     # row0 > row1
    assert lib.modcam_raw12_pack(p, 4, b, 2**63, 4, 0, 3) == einval   # row1 * stride overflows
    assert lib.modcam_raw12_pack(p, 4, b, 6, 4, 1, 1) == 0            # empty range is fine
