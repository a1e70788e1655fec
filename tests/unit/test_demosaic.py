"""Tests for demosaic (native/demosaic.c through modcam.isp.demosaic).

Owns: picture quality on real photographs (PSNR), agreement with independent
numpy references of both methods, the four CFA patterns, mirrored borders,
strips against whole frames, threads, the AVX2 and portable builds, flat
colours, "never touch memory outside the image or the output rows" with
guard pages, and argument errors.

Quality protocol: scikit-image's bundled colour photographs (the six that
ship inside the package, no download: astronaut, chelsea, coffee, rocket,
hubble_deep_field, immunohistochemistry), 8-bit values normalised to [0, 1],
mosaicked RGGB, scaled to uint16 by x 65535 (rounded), demosaicked, divided
by 65535 and compared with the original over all three channels with an
8-pixel border excluded. The same at the 12-bit sensor range (x 4095) gives
the same figures once the result is clipped to [0, 1]: overshoot above the
12-bit white is legitimate output (the ISP clips after white balance).
Measured (mean of the six): high 37.28 dB, bilinear 31.56 dB (OpenCV's
bilinear: the same 31.56; Malvar-He-Cutler 2004: 35.14).
"""
import ctypes
import mmap

import numpy as np
import pytest

from modcam.isp import demosaic
from modcam.isp.demosaic import PATTERNS, ffi, implementation, lib

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"]
# Where each colour sits in the 2x2 cell: (row, column) of red and of blue.
CELLS = {"RGGB": ((0, 0), (1, 1)), "GRBG": ((0, 1), (1, 0)),
         "GBRG": ((1, 0), (0, 1)), "BGGR": ((1, 1), (0, 0))}
IMPLS = {"portable": lib.MODCAM_DEMOSAIC_IMPL_PORTABLE, "avx2": lib.MODCAM_DEMOSAIC_IMPL_AVX2}
METHODS = ["high", "bilinear"]


@pytest.fixture(params=sorted(IMPLS))
def impl(request):
    """Force one build of the kernels for the test, then go back to automatic choice."""
    if lib.modcam_demosaic_set_impl(IMPLS[request.param]) < 0:
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    yield request.param
    lib.modcam_demosaic_set_impl(lib.MODCAM_DEMOSAIC_IMPL_AUTO)


def mosaic(rgb, pattern="RGGB"):
    """Sample an (H, W, 3) image through a Bayer pattern."""
    (ry, rx), (by, bx) = CELLS[pattern]
    cfa = rgb[..., 1].copy()
    cfa[ry::2, rx::2] = rgb[ry::2, rx::2, 0]
    cfa[by::2, bx::2] = rgb[by::2, bx::2, 2]
    return cfa


def psnr(a, b, border=8):
    d = (a - b)[border:-border, border:-border]
    return 10 * np.log10(1.0 / np.mean(d * d))


def random_cfa(seed, h, w, high=1 << 16):
    return np.random.default_rng(seed).integers(0, high, (h, w), dtype=np.uint16)


# ---- independent references (numpy, float64), written from the comments in demosaic.c ----

def _shifter(a):
    """s(dy, dx): the array moved so that s(dy, dx)[y, x] == a[y + dy, x + dx] (zeros outside)."""
    h, w = a.shape

    def s(dy, dx):
        out = np.zeros_like(a)
        out[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
            a[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
        return out
    return s


def ref_high(cfa, pattern="RGGB"):
    (ry, rx), _ = CELLS[pattern]
    pad = 8
    c = np.pad(cfa.astype(np.float64), pad, mode="reflect")
    yy, xx = np.mgrid[-pad:cfa.shape[0] + pad, -pad:cfa.shape[1] + pad]
    is_r = (yy % 2 == ry) & (xx % 2 == rx)
    is_b = (yy % 2 != ry) & (xx % 2 != rx)
    is_g = ~(is_r | is_b)
    weight = lambda w: ((w + 1.0) * 2.0**-16) ** 2  # noqa: E731
    s = _shifter(c)
    # 1. Hamilton-Adams colour differences G - C along rows and columns.
    eh = (s(0, -1) + s(0, 1)) / 2 + (2 * c - s(0, -2) - s(0, 2)) / 4
    ev = (s(-1, 0) + s(1, 0)) / 2 + (2 * c - s(-2, 0) - s(2, 0)) / 4
    dh = np.where(is_g, c - eh, eh - c)
    dv = np.where(is_g, c - ev, ev - c)
    # 2. Four one-sided estimates, weighted by 3x3 sums of gradients on their side.
    H, V = _shifter(dh), _shifter(dv)
    gh = np.abs(H(0, 1) - H(0, -1))
    gv = np.abs(V(1, 0) - V(-1, 0))
    GH, GV = _shifter(gh), _shifter(gv)
    vgh = GH(-1, 0) + gh + GH(1, 0)
    sgv = GV(0, -1) + gv + GV(0, 1)
    VG, SG = _shifter(vgh), _shifter(sgv)
    est = [V(-2, 0) + V(-1, 0) + dv, dv + V(1, 0) + V(2, 0),
           H(0, -2) + H(0, -1) + dh, dh + H(0, 1) + H(0, 2)]
    w = [1 / weight(SG(-2, 0) + SG(-1, 0) + sgv), 1 / weight(sgv + SG(1, 0) + SG(2, 0)),
         1 / weight(VG(0, -2) + VG(0, -1) + vgh), 1 / weight(vgh + VG(0, 1) + VG(0, 2))]
    k = sum(wi * ei for wi, ei in zip(w, est)) / (3 * sum(w))
    g = np.where(is_g, c, c + k)
    k = np.where(is_g, 0, k)  # K = G - C at C sites
    # 3. The other colour's K at C sites from the diagonals.
    K, G = _shifter(k), _shifter(g)
    w1 = 1 / weight(np.abs(K(-1, -1) - K(1, 1)) + np.abs(2 * g - G(-1, -1) - G(1, 1)))
    w2 = 1 / weight(np.abs(K(-1, 1) - K(1, -1)) + np.abs(2 * g - G(-1, 1) - G(1, -1)))
    other = (w1 * (K(-1, -1) + K(1, 1)) + w2 * (K(-1, 1) + K(1, -1))) / (2 * (w1 + w2))
    kr = np.where(is_r, k, np.where(is_b, other, 0))
    kb = np.where(is_b, k, np.where(is_r, other, 0))
    # 4. Both colours at green sites: the mean of the 4 neighbours' K.
    R, B = _shifter(kr), _shifter(kb)
    cross = lambda S: (S(0, -1) + S(0, 1) + S(-1, 0) + S(1, 0)) / 4  # noqa: E731
    red = np.where(is_r, c, g - np.where(is_g, cross(R), kr))
    blue = np.where(is_b, c, g - np.where(is_g, cross(B), kb))
    out = np.stack([red, g, blue], axis=-1)[pad:-pad, pad:-pad]
    return np.floor(np.clip(out, 0, 65535) + 0.5)


def ref_bilinear(cfa, pattern="RGGB"):
    (ry, rx), _ = CELLS[pattern]
    h, w = cfa.shape
    c = np.pad(cfa.astype(np.int64), 1, mode="reflect")
    s = lambda dy, dx: c[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]  # noqa: E731
    yy, xx = np.mgrid[:h, :w]
    is_r = (yy % 2 == ry) & (xx % 2 == rx)
    is_b = (yy % 2 != ry) & (xx % 2 != rx)
    red_row = yy % 2 == ry
    cross = (s(-1, 0) + s(1, 0) + s(0, -1) + s(0, 1) + 2) >> 2
    diag = (s(-1, -1) + s(-1, 1) + s(1, -1) + s(1, 1) + 2) >> 2
    hor, ver = (s(0, -1) + s(0, 1) + 1) >> 1, (s(-1, 0) + s(1, 0) + 1) >> 1
    g = np.where(is_r | is_b, cross, s(0, 0))
    r = np.where(is_r, s(0, 0), np.where(is_b, diag, np.where(red_row, hor, ver)))
    b = np.where(is_b, s(0, 0), np.where(is_r, diag, np.where(red_row, ver, hor)))
    return np.stack([r, g, b], axis=-1).astype(np.uint16)


# ---- quality on photographs ----

@pytest.fixture(scope="module")
def photos():
    try:
        import skimage.data
    except ImportError:  # a missing test dependency must not pass silently
        pytest.fail("scikit-image is needed for the quality tests (the `test` extra)")
    out = {}
    for name in PHOTOS:
        img = getattr(skimage.data, name)()[..., :3]
        h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2  # whole Bayer cells
        out[name] = img[:h, :w].astype(np.float64) / 255.0
    return out


def photo_psnr(img, pattern, method, scale=65535):
    cfa = np.round(mosaic(img, pattern) * scale).astype(np.uint16)
    return psnr(np.clip(demosaic(cfa, pattern, method) / scale, 0, 1), img)


@pytest.mark.parametrize("scale", [65535, 4095])
def test_high_quality_psnr_at_least_35_db(photos, scale, record_property):
    scores = {name: photo_psnr(img, "RGGB", "high", scale) for name, img in photos.items()}
    bilinear = {name: photo_psnr(img, "RGGB", "bilinear", scale) for name, img in photos.items()}
    for name in scores:
        record_property(f"psnr_high_{name}", round(scores[name], 2))
        record_property(f"psnr_bilinear_{name}", round(bilinear[name], 2))
    mean, mean_bilinear = np.mean(list(scores.values())), np.mean(list(bilinear.values()))
    print(f"\nPSNR dB (x{scale})  high / bilinear")
    for name in scores:
        print(f"  {name:22s} {scores[name]:6.2f} / {bilinear[name]:6.2f}")
    print(f"  {'mean':22s} {mean:6.2f} / {mean_bilinear:6.2f}")
    assert mean >= 35.0
    assert mean == pytest.approx(37.28, abs=0.05)  # a change of algorithm should be deliberate
    assert mean_bilinear == pytest.approx(31.56, abs=0.05)
    assert all(scores[n] > bilinear[n] + 1.0 for n in scores)


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_every_pattern_gives_the_same_quality(photos, pattern):
    mean = np.mean([photo_psnr(img, pattern, "high") for img in photos.values()])
    assert mean == pytest.approx(37.28, abs=0.1)


# ---- the references, the patterns, the borders ----

@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_high_matches_reference_within_rounding(impl, pattern):
    # Full 16-bit random data: every edge case of the weights and of clamping.
    cfa = random_cfa(1, 38, 70)
    got, ref = demosaic(cfa, pattern).astype(np.int64), ref_high(cfa, pattern)
    diff = np.abs(got - ref)
    # float32 against float64: the rounding to integers may differ by one.
    assert diff.max() <= 1
    assert np.count_nonzero(diff) <= diff.size // 100


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("shape", [(2, 2), (2, 4), (4, 2), (6, 40), (40, 6), (34, 52)])
def test_bilinear_matches_reference_exactly(impl, pattern, shape):
    cfa = random_cfa(2, *shape)
    np.testing.assert_array_equal(demosaic(cfa, pattern, "bilinear"), ref_bilinear(cfa, pattern))


@pytest.mark.parametrize("method", METHODS)
def test_patterns_are_shifts_of_one_another(method):
    # GRBG is RGGB one column on, GBRG one row on, BGGR both: away from the
    # borders every pattern must give exactly the same pixels.
    cfa = random_cfa(3, 64, 96, high=4096)
    whole = demosaic(cfa, "RGGB", method)
    for pattern, (dy, dx) in {"GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}.items():
        shifted = demosaic(cfa[dy:dy + 62, dx:dx + 94], pattern, method)
        np.testing.assert_array_equal(shifted[8:-8, 8:-8], whole[dy + 8:dy + 54, dx + 8:dx + 86])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_borders_are_mirrored(impl, method, pattern):
    # The contract: the image extended by reflection, then demosaicked.
    cfa = random_cfa(4, 22, 36)
    padded = np.pad(cfa, 8, mode="reflect")  # even padding keeps the pattern
    np.testing.assert_array_equal(demosaic(cfa, pattern, method),
                                  demosaic(padded, pattern, method)[8:-8, 8:-8])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("value", [(0, 0, 0), (65535, 65535, 65535), (1000, 2000, 500),
                                   (4095, 0, 4095), (0, 65535, 0)])
def test_flat_colour_gives_flat_output(method, pattern, value):
    h, w = 24, 2052  # two tiles of the high method
    rgb = np.empty((h, w, 3), np.uint16)
    rgb[:] = value
    out = demosaic(mosaic(rgb, pattern), pattern, method)
    np.testing.assert_array_equal(out, rgb)  # no zipper, no colour fringes, no clamping error


# ---- strips, threads, builds ----

@pytest.mark.asan
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("width", [2, 6, 34, 2048, 2050, 2086])
def test_strips_equal_whole_frame(impl, method, width):
    height = 26
    cfa = random_cfa(width, height, width)
    whole = demosaic(cfa, method=method, threads=1)
    cuts = [(0, 1), (1, 2), (2, 5), (5, 13), (13, 14), (14, 24), (24, 25), (25, 26),
            (0, 26), (7, 19), (24, 26), (20, 20)]
    for r0, r1 in cuts:
        strip = demosaic(cfa, method=method, rows=(r0, r1), threads=1)
        np.testing.assert_array_equal(strip, whole[r0:r1], err_msg=f"rows {r0}..{r1}")


@pytest.mark.parametrize("method", METHODS)
def test_threads_give_the_same_result(method):
    cfa = random_cfa(5, 1024, 1100)
    one = demosaic(cfa, method=method, threads=1)
    for threads in (2, 3, 7):
        np.testing.assert_array_equal(demosaic(cfa, method=method, threads=threads), one)
    np.testing.assert_array_equal(demosaic(cfa, method=method, rows=(101, 1000), threads=2),
                                  one[101:1000])


@pytest.mark.asan
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(2, 2), (4, 6), (2, 38), (12, 18), (30, 2048), (10, 2052),
                                   (8, 4130)])
def test_avx2_and_portable_builds_agree_exactly(method, shape):
    if lib.modcam_demosaic_set_impl(lib.MODCAM_DEMOSAIC_IMPL_AVX2) < 0:
        pytest.skip("this CPU has no AVX2")
    try:
        cfa = random_cfa(6, *shape)
        assert implementation() == "avx2"
        simd = [demosaic(cfa, p, method) for p in sorted(PATTERNS)]
        lib.modcam_demosaic_set_impl(lib.MODCAM_DEMOSAIC_IMPL_PORTABLE)
        assert implementation() == "portable"
        portable = [demosaic(cfa, p, method) for p in sorted(PATTERNS)]
    finally:
        lib.modcam_demosaic_set_impl(lib.MODCAM_DEMOSAIC_IMPL_AUTO)
    for a, b in zip(simd, portable):
        np.testing.assert_array_equal(a, b)


def test_set_impl_rejects_unknown():
    assert lib.modcam_demosaic_set_impl(99) < 0
    assert implementation() in ("avx2", "portable")


# ---- memory: strides, views, and guard pages on both sides ----

@pytest.mark.asan
@pytest.mark.parametrize("method", METHODS)
def test_row_strides_and_views(impl, method):
    cfa = random_cfa(7, 20, 42)
    expected = demosaic(cfa, method=method)
    wide = np.zeros((20, 47), np.uint16)  # an odd row stride (47 pixels)
    wide[:, 3:45] = cfa
    out = np.full((20, 50, 3), 0xBEEF, np.uint16)
    got = demosaic(wide[:, 3:45], method=method, out=out[:, 4:46])
    assert np.shares_memory(got, out)
    np.testing.assert_array_equal(out[:, 4:46], expected)
    assert (out[:, :4] == 0xBEEF).all() and (out[:, 46:] == 0xBEEF).all()
    np.testing.assert_array_equal(demosaic(cfa[::2][:, :40], method=method),  # every second row
                                  demosaic(np.ascontiguousarray(cfa[::2][:, :40]), method=method))


def _guarded(nbytes, at_end=True):
    """A writable buffer of `nbytes` next to a PROT_NONE page: right after its
    last byte (at_end) or right before its first."""
    page = mmap.PAGESIZE
    span = -(-nbytes // page) * page
    m = mmap.mmap(-1, span + 2 * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(base, page, 0) == 0  # PROT_NONE before
    assert libc.mprotect(base + page + span, page, 0) == 0  # and after
    offset = page + (span - nbytes if at_end else 0)
    return m, np.frombuffer(m, np.uint8, count=nbytes, offset=offset)


@pytest.mark.asan
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("width", [2, 4, 18, 20, 34, 36, 2048, 2054])
@pytest.mark.parametrize("at_end", [True, False])
def test_guard_pages_around_input_and_output(impl, method, width, at_end):
    height = 6
    cfa = random_cfa(width, height, width)
    expected = demosaic(cfa, method=method)
    m_in, raw_in = _guarded(cfa.nbytes, at_end)
    m_out, raw_out = _guarded(expected.nbytes, at_end)
    src = raw_in.view(np.uint16).reshape(height, width)
    src[:] = cfa
    dst = raw_out.view(np.uint16).reshape(height, width, 3)
    demosaic(src, method=method, out=dst)  # a stray access is a SIGSEGV here
    np.testing.assert_array_equal(dst, expected)
    for r0 in (height - 2, height - 1, 0):  # strips of 1-2 rows at the bottom, 1 at the top
        demosaic(src, method=method, out=dst[: height - r0], rows=(r0, height))
        np.testing.assert_array_equal(dst[: height - r0], expected[r0:])
    del src, dst, raw_in, raw_out
    m_in.close()
    m_out.close()


# ---- the Python API ----

def test_out_is_filled_and_returned():
    cfa = random_cfa(8, 8, 10)
    out = np.zeros((4, 10, 3), np.uint16)
    assert demosaic(cfa, out=out, rows=(2, 6)) is out
    np.testing.assert_array_equal(out, demosaic(cfa)[2:6])
    assert demosaic(cfa, rows=(3, 3)).shape == (0, 10, 3)
    assert demosaic(cfa, "rggb", "Bilinear").dtype == np.uint16  # names are case-insensitive


def test_read_only_input_is_fine():
    cfa = random_cfa(9, 4, 4)
    cfa.flags.writeable = False  # e.g. a view of a ring slot
    np.testing.assert_array_equal(demosaic(cfa, method="bilinear"), ref_bilinear(cfa))


GOOD = np.zeros((4, 6), np.uint16)


@pytest.mark.asan
@pytest.mark.parametrize("call, match", [
    (lambda: demosaic([[0, 0], [0, 0]]), "cfa must be a numpy array"),
    (lambda: demosaic(GOOD.astype(np.float32)), "cfa must have dtype uint16"),
    (lambda: demosaic(GOOD.ravel()), "cfa must be 2-D"),
    (lambda: demosaic(np.zeros((3, 6), np.uint16)), "cfa height 3 must be even"),
    (lambda: demosaic(np.zeros((4, 5), np.uint16)), "cfa width 5 must be even"),
    (lambda: demosaic(np.zeros((0, 6), np.uint16)), "cfa height 0 must be even and at least 2"),
    (lambda: demosaic(np.zeros((4, 12), np.uint16)[:, ::2]), "each row of cfa must be contiguous"),
    (lambda: demosaic(GOOD[::-1]), "rows of cfa must follow each other"),
    (lambda: demosaic(GOOD, "RGBG"),
     "pattern must be one of 'RGGB', 'GRBG', 'GBRG', 'BGGR', not 'RGBG'"),
    (lambda: demosaic(GOOD, 0), "pattern must be one of"),
    (lambda: demosaic(GOOD, method="ahd"), "method must be one of 'high', 'bilinear', not 'ahd'"),
    (lambda: demosaic(GOOD, rows=(3, 2)), r"rows \(3, 2\) is not a range"),
    (lambda: demosaic(GOOD, rows=(0, 5)), r"rows \(0, 5\) is not a range"),
    (lambda: demosaic(GOOD, rows=2), "rows must be a pair of integers"),
    (lambda: demosaic(GOOD, threads=0), "threads must be at least 1"),
    (lambda: demosaic(GOOD, threads=1.5), "threads must be an integer"),
    (lambda: demosaic(GOOD, out=np.zeros((4, 6, 3), np.int32)), "out must have dtype uint16"),
    (lambda: demosaic(GOOD, out=np.zeros((4, 6, 4), np.uint16)),
     r"rows 0..4 need shape \(4, 6, 3\)"),
    (lambda: demosaic(GOOD, out=np.zeros((2, 6, 3), np.uint16), rows=(0, 4)),
     r"need shape \(4, 6, 3\)"),
    (lambda: demosaic(GOOD, out=np.zeros((4, 6, 6), np.uint16)[:, :, ::2]),
     "contiguous R, G, B triples"),
    (lambda: demosaic(GOOD, out=np.zeros((4, 6, 3), np.uint16)[::-1]), "rows of out must follow"),
    (lambda: demosaic(GOOD, out=[[0]]), "out must be a numpy array"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_out_overlapping_the_input_is_refused():
    buf = np.zeros((4, 6, 3), np.uint16)
    demosaic(buf[:, :, 0].copy(), out=buf)  # a copy is fine
    with pytest.raises(ValueError, match="out overlaps cfa"):
        demosaic(buf.reshape(4, 18)[:, :6], out=buf)


def test_read_only_out_is_refused():
    out = np.zeros((4, 6, 3), np.uint16)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        demosaic(GOOD, out=out)


@pytest.mark.asan
def test_c_rejects_bad_arguments():
    cfa = ffi.new("uint16_t[24]")
    rgb = ffi.new("uint16_t[72]")
    einval = -22
    call = lib.modcam_demosaic
    assert call(ffi.NULL, 6, 6, 4, 0, 0, 0, 4, rgb, 18) == einval
    assert call(cfa, 6, 6, 4, 0, 0, 0, 4, ffi.NULL, 18) == einval
    assert call(cfa, 6, 5, 4, 0, 0, 0, 4, rgb, 18) == einval   # odd width
    assert call(cfa, 6, 6, 3, 0, 0, 0, 3, rgb, 18) == einval   # odd height
    assert call(cfa, 6, 0, 4, 0, 0, 0, 4, rgb, 18) == einval   # empty
    assert call(cfa, 5, 6, 4, 0, 0, 0, 4, rgb, 18) == einval   # CFA stride below width
    assert call(cfa, 6, 6, 4, 0, 0, 0, 4, rgb, 17) == einval   # RGB stride below 3 * width
    assert call(cfa, 6, 6, 4, 4, 0, 0, 4, rgb, 18) == einval   # unknown pattern
    assert call(cfa, 6, 6, 4, -1, 0, 0, 4, rgb, 18) == einval
    assert call(cfa, 6, 6, 4, 0, 2, 0, 4, rgb, 18) == einval   # unknown method
    assert call(cfa, 6, 6, 4, 0, 0, 3, 2, rgb, 18) == einval   # row0 > row1
    assert call(cfa, 6, 6, 4, 0, 0, 0, 5, rgb, 18) == einval   # row1 > height
    assert call(cfa, 2**62, 6, 4, 0, 0, 0, 4, rgb, 18) == einval  # offsets overflow
    assert call(cfa, 6, 6, 4, 0, 0, 2, 2, rgb, 18) == 0        # an empty range is fine
