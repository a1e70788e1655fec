"""Deterministic, step-by-step tests of the frame ring (native/modcam_ring*)
through its Python face. Also run against the ASan/UBSan build (`make test-asan`)."""
import errno
import os
import select
import threading
import time
import warnings

import numpy as np
import pytest

from modcam.link.ring import (
    CFA, Consumer, Fault, FrameInfo, LeaseError, PixelFormat, Producer, Readout,
    RegionInvalid, RingCorrupt, region_size,
)
from modcam.native import ffi, lib

pytestmark = pytest.mark.asan

PAGE = lib.MODCAM_RING_PAGE


def info(width=64, height=4, **kw):
    return FrameInfo(width=width, height=height, stride=3 * ((width + 1) // 2), **kw)


def payload_for(fi, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, fi.payload_length, dtype=np.uint8)


@pytest.fixture
def ring():
    p = Producer.create(slot_count=4, max_payload=8192)
    c = Consumer(p.region_fd)
    p.set_doorbell(c.fileno())
    yield p, c
    c.close()
    p.close()


def test_empty_ring_has_nothing_and_does_not_wait_with_zero_timeout(ring):
    _, c = ring
    t0 = time.monotonic()
    assert c.acquire(timeout=0) is None
    assert time.monotonic() - t0 < 0.05
    assert c.available == 0
    assert c.stats.delivered == 0


def test_frame_round_trips_header_and_bytes(ring):
    p, c = ring
    fi = info(100, 6, cfa=CFA.GRBG, readout_mode=Readout.BINNED, exposure_us=1234,
              analogue_gain=2.5, lens_position=1.25, aperture=2.8, temperature_c=41.5,
              flags=lib.MODCAM_FRAME_FLAG_STILL, ts_boottime_ns=111, ts_realtime_ns=222)
    data = payload_for(fi, 1)
    assert p.write(fi, data)
    with c.acquire(timeout=1) as frame:
        h = frame.header
        assert (h.width, h.height, h.stride, h.pixfmt) == (100, 6, 150, PixelFormat.RAW12_PACKED)
        assert (h.cfa, h.readout_mode, h.exposure_us) == (CFA.GRBG, Readout.BINNED, 1234)
        assert (h.analogue_gain, h.lens_position, h.aperture, h.temperature_c) == (2.5, 1.25, 2.8, 41.5)
        assert (h.flags, h.ts_boottime_ns, h.ts_realtime_ns, h.sequence) == (2, 111, 222, 0)
        assert h.crc32c == lib.modcam_crc32c(0, ffi.from_buffer(data), len(data))
        assert frame.data.shape == (6, 150)
        assert np.array_equal(frame.data.ravel(), data)
        assert not frame.data.flags.writeable


def test_header_reals_keep_their_float32_value(ring):
    """Shown short (2.8, not 2.799999952316284) but never moved to another
    float32: 7 significant digits would turn 0.83284575f into 0.83284569f."""
    p, c = ring
    values = [float(np.float32(v)) for v in (0.8328457474708557, 1.0 / 3.0, 1e-7, 2.8)]
    fi = info(analogue_gain=values[0], lens_position=values[1], aperture=values[3],
              temperature_c=values[2])
    assert p.write(fi, payload_for(fi, 1))
    with c.acquire(timeout=1) as frame:
        h = frame.header
        got = (h.analogue_gain, h.lens_position, h.temperature_c, h.aperture)
    assert [np.float32(v) for v in got] == [np.float32(v) for v in values]
    assert got[3] == 2.8


def test_full_ring_drops_newest_and_consumer_sees_the_gap(ring):
    p, c = ring
    fi = info()
    written = [p.write(fi, payload_for(fi, s)) for s in range(6)]
    assert written == [True, True, True, True, False, False]
    assert c.stats.dropped == 2
    seqs = []
    for s in range(4):
        with c.acquire(timeout=0) as f:
            assert np.array_equal(f.data.ravel(), payload_for(fi, s)), "oldest frames kept"
            seqs.append(f.header.sequence)
    assert seqs == [0, 1, 2, 3]
    assert p.write(fi, payload_for(fi, 6))
    with c.acquire(timeout=0) as f:
        assert f.header.sequence == 6
    st = c.stats
    assert st.sequence_gaps == 2 == st.dropped
    assert st.delivered == 5


def test_indices_and_sequences_wrap_past_2_to_the_64(tmp_path):
    path = tmp_path / "ring"
    p = Producer.create(4, 4096, path=path)
    near = 2**64 - 5
    p.region.head = p.region.tail = near
    p.region.next_sequence = near
    p.close()
    p = Producer.recover(path)          # reloads the seeded counters
    c = Consumer(path)
    fi = info()
    last = None
    for i in range(12):                  # crosses the wrap three slots at a time
        for k in range(3):
            assert p.write(fi, payload_for(fi, 3 * i + k))
        for k in range(3):
            with c.acquire(timeout=0) as f:
                assert np.array_equal(f.data.ravel(), payload_for(fi, 3 * i + k))
                assert f.header.sequence == (near + 3 * i + k) % 2**64
                last = f.header.sequence
    st = c.stats
    assert st.delivered == 36 and st.sequence_gaps == 0 and st.skipped == 0
    assert last == (near + 35) % 2**64 and st.tail == (near + 36) % 2**64
    c.close()
    p.close()


def test_lease_view_is_zero_copy_and_read_only(ring):
    p, c = ring
    fi = info()
    p.write(fi, payload_for(fi, 3))
    with c.acquire(timeout=0) as f:
        # Change the slot through the producer's own mapping: the consumer's
        # view shows it, so it is the shared memory itself, not a copy.
        base = ffi.cast("uint8_t *", p.region)
        slot0_payload = base + p.region.slots_offset + PAGE
        slot0_payload[5] = (int(f.data.ravel()[5]) + 1) % 256
        assert f.data.ravel()[5] == slot0_payload[5]
        with pytest.raises(ValueError):
            f.data[0, 0] = 1


def test_data_is_unusable_after_release(ring):
    p, c = ring
    fi = info()
    p.write(fi, payload_for(fi, 4))
    f = c.acquire(timeout=0)
    f.release()
    with pytest.raises(LeaseError, match="released"):
        f.data
    f.release()  # idempotent


def test_view_leaked_past_release_reads_zeros_not_the_next_frame(ring):
    p, c = ring
    fi = info()
    for s in range(5):                      # fill so slot 0 is reused soon
        p.write(fi, payload_for(fi, 10 + s))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with c.acquire(timeout=0) as f:
            leaked = f.data[1:]             # a derived view escapes the lease
            assert leaked.any()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert not leaked.any(), "the stale view must not see shared memory any more"
    # The revoked slot keeps working for later laps.
    for s in range(3):
        with c.acquire(timeout=0) as f:
            assert np.array_equal(f.data.ravel(), payload_for(fi, 11 + s))
    assert p.write(fi, payload_for(fi, 99))
    assert p.write(fi, payload_for(fi, 100))
    for s in (99, 100):
        with c.acquire(timeout=0) as f:
            assert np.array_equal(f.data.ravel(), payload_for(fi, s))


def test_second_acquire_while_leased_is_refused(ring):
    p, c = ring
    fi = info()
    p.write(fi, payload_for(fi, 1))
    p.write(fi, payload_for(fi, 2))
    with c.acquire(timeout=0):
        with pytest.raises(LeaseError, match="still leased"):
            c.acquire(timeout=0)


def test_zero_copy_producer_path_and_raw16(ring):
    p, c = ring
    fi = FrameInfo(width=50, height=3, stride=100, pixfmt=PixelFormat.RAW16)
    slot = p.begin()
    pixels = np.arange(150, dtype=np.uint16) * 27 % 4096
    slot[:300] = pixels.view(np.uint8)
    p.commit(fi)
    with c.acquire(timeout=0) as f:
        assert f.header.pixfmt == PixelFormat.RAW16
        assert np.array_equal(f.data.ravel().view(np.uint16), pixels)
    slot = p.begin()
    p.abort()                               # an aborted write publishes nothing
    assert c.acquire(timeout=0) is None


@pytest.mark.parametrize("fault, counter, why", [
    (Fault.TORN, "skipped_torn", "not committed"),
    (Fault.BAD_CRC, "skipped_crc", "CRC32C"),
    (Fault.BAD_LENGTH, "skipped_invalid", "truncated"),
])
def test_bad_frames_are_skipped_counted_and_explained(ring, fault, counter, why):
    p, c = ring
    fi = info()
    p.write(fi, payload_for(fi, 4))
    slot = p.begin()
    slot[: fi.payload_length] = payload_for(fi, 5)
    p.commit(fi, fault=fault)
    p.write(fi, payload_for(fi, 6))
    seqs = []
    while (f := c.acquire(timeout=0)) is not None:
        with f:
            seqs.append(f.header.sequence)
            expected = payload_for(fi, 4 if f.header.sequence == 0 else 6)
            assert np.array_equal(f.data.ravel(), expected)
    assert seqs == [0, 2]
    st = c.stats
    assert getattr(st, counter) == 1 and st.skipped == 1 and st.delivered == 2
    assert why in c.last_skip
    # A frame whose header is invalid has no trustworthy sequence number, so
    # it shows as a gap too; torn and CRC-failed frames do not.
    assert st.sequence_gaps == (1 if fault == Fault.BAD_LENGTH else 0)


def test_oversized_payload_in_header_is_skipped_without_reading_past_the_slot(ring):
    p, c = ring
    fi = info()
    p.write(fi, payload_for(fi, 7))
    hdr = ffi.cast("struct modcam_frame_header *",
                   ffi.cast("uint8_t *", p.region) + p.region.slots_offset)
    hdr.payload_length = 1 << 40
    hdr.height = 1 << 20
    assert c.acquire(timeout=0) is None
    assert c.stats.skipped_invalid == 1
    assert "exceeds the slot" in c.last_skip


def test_producer_killed_mid_write_is_recognised_after_recovery(tmp_path):
    path = tmp_path / "ring"
    p = Producer.create(4, 8192, path=path)
    c = Consumer(path)
    fi = info()
    p.write(fi, payload_for(fi, 1))
    slot = p.begin()
    slot[:100] = 0xAB                        # half a frame, then the producer "dies"
    p.close()
    p = Producer.recover(path)
    p.write(fi, payload_for(fi, 3))
    got = []
    while (f := c.acquire(timeout=0)) is not None:
        with f:
            got.append((f.header.sequence, f.data.ravel().copy()))
    assert [s for s, _ in got] == [0, 2]
    assert np.array_equal(got[1][1], payload_for(fi, 3))
    st = c.stats
    assert st.skipped_torn == 1 and st.aborted == 1 and st.sequence_gaps == 0
    assert "aborted" in c.last_skip
    c.close()
    p.close()


def _slot_header(p, index):
    r = p.region
    return ffi.cast("struct modcam_frame_header *",
                    ffi.cast("uint8_t *", r) + r.slots_offset + index * r.slot_size)


def test_garbage_slot_with_a_wild_sequence_does_not_stall_delivery(ring):
    p, c = ring
    fi = info()
    p.write(fi, payload_for(fi, 1))
    p.write(fi, payload_for(fi, 2))
    h = _slot_header(p, 1)
    h.state = 5                             # neither committed nor aborted: noise
    h.sequence = 2**40
    p.write(fi, payload_for(fi, 3))
    seqs = []
    while (f := c.acquire(timeout=0)) is not None:
        with f:
            seqs.append(f.header.sequence)
    assert seqs == [0, 2], "frames after the garbage slot are still delivered"
    assert c.stats.skipped_torn == 1 and c.stats.last_sequence == 2


def test_numbering_that_restarts_costs_one_frame_and_resynchronises(ring):
    p, c = ring
    fi = info()
    for s in range(2):
        p.write(fi, payload_for(fi, s))
    p.region.next_sequence = 0              # a producer that started counting again
    for s in range(2):
        p.write(fi, payload_for(fi, 10 + s))
    seqs = []
    while (f := c.acquire(timeout=0)) is not None:
        with f:
            seqs.append(f.header.sequence)
    assert seqs == [0, 1, 1]
    st = c.stats
    assert st.sequence_resyncs == 1 and st.skipped_invalid == 1
    assert "resynchronised" in c.last_skip


def test_indices_corrupted_while_in_use_raise_ring_corrupt(ring):
    p, c = ring
    p.region.head = p.region.tail + 1000
    with pytest.raises(RingCorrupt, match="head 1000 is not within 4 slots of tail 0"):
        c.acquire(timeout=0)


def test_waiting_consumer_wakes_on_doorbell_and_releases_the_gil(ring):
    p, c = ring
    fi = info()
    result = {}

    def consume():
        t0 = time.monotonic()
        f = c.acquire(timeout=5)
        result["latency"] = time.monotonic() - t0
        result["seq"] = f.header.sequence
        f.release()

    t = threading.Thread(target=consume)
    t.start()
    spins = 0
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # the main thread runs while the other waits in C
        spins += 1
    p.write(fi, payload_for(fi, 1))
    t.join(2)
    assert not t.is_alive()
    assert spins > 10000
    assert result["seq"] == 0 and 0.25 < result["latency"] < 2


def test_doorbell_fd_is_pollable(ring):
    p, c = ring
    fi = info()
    assert select.select([c.fileno()], [], [], 0)[0] == []
    p.write(fi, payload_for(fi, 1))
    assert select.select([c.fileno()], [], [], 1)[0] == [c.fileno()]


def test_timeout_returns_none_after_about_the_timeout(ring):
    _, c = ring
    t0 = time.monotonic()
    assert c.acquire(timeout=0.2) is None
    assert 0.19 < time.monotonic() - t0 < 1.0


def test_invalid_geometry_is_refused():
    for slots, payload in [(0, 4096), (3, 4096), (2048, 4096), (4, 0), (4, 2**33)]:
        with pytest.raises(ValueError, match="not valid"):
            region_size(slots, payload)
    assert region_size(4, 4096) == PAGE + 4 * 2 * PAGE


def test_payload_that_does_not_match_its_header_is_refused_by_the_producer(ring):
    p, _ = ring
    with pytest.raises(ValueError, match="does not match"):
        p.write(info(64, 4), np.zeros(10, np.uint8))
    with pytest.raises(ValueError):
        p.write(FrameInfo(width=4096, height=4, stride=6144), np.zeros(6144 * 4, np.uint8))


# ---- attach validation: every malformed region gets a clear error ----

def _region(tmp_path):
    path = tmp_path / "ring"
    Producer.create(4, 4096, path=path).close()
    return path


def _poke(path, field, value, ctype="uint32_t"):
    off = ffi.offsetof("struct modcam_ring_region", field)
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(bytes(ffi.buffer(ffi.new(f"{ctype} *", value))))


@pytest.mark.parametrize("field, value, ctype, message", [
    ("magic", 0x1234, "uint64_t", "bad magic"),
    ("version", 7, "uint32_t", "version 7 is not supported"),
    ("header_size", 100, "uint32_t", "header sizes"),
    ("slot_count", 3, "uint32_t", "slot count 3 is not a power of two"),
    ("slot_count", 0, "uint32_t", "slot count 0"),
    ("slot_count", 8, "uint32_t", "region size"),
    ("max_payload", 0, "uint64_t", "max payload 0"),
    ("slot_size", 4096, "uint64_t", "slot size 4096"),
    ("slots_offset", 100, "uint64_t", "slots offset 100"),
    ("region_size", 10**12, "uint64_t", "region size"),
    ("head", 10, "uint64_t", "indices out of range"),
    ("tail", 1, "uint64_t", "indices out of range"),
])
def test_malformed_region_is_refused_with_the_reason(tmp_path, field, value, ctype, message):
    path = _region(tmp_path)
    _poke(path, field, value, ctype)
    with pytest.raises(RegionInvalid, match=message):
        Consumer(path)


def test_truncated_and_tiny_regions_are_refused(tmp_path):
    path = _region(tmp_path)
    os.truncate(path, os.path.getsize(path) - PAGE)
    with pytest.raises(RegionInvalid, match="only .* are there"):
        Consumer(path)
    os.truncate(path, 100)
    with pytest.raises(RegionInvalid, match="smaller than its header"):
        Consumer(path)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(RegionInvalid):
        Consumer(empty)


def test_memfd_region_is_sealed_against_shrinking():
    import fcntl
    p = Producer.create(2, 4096)
    seals = fcntl.fcntl(p.region_fd, fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_SHRINK
    with pytest.raises(PermissionError):
        os.ftruncate(p.region_fd, 0)
    p.close()


# ---- CRC32C ----

@pytest.fixture(params=["AUTO", "PORTABLE", "SSE42", "FOLD", "FOLD512"])
def crc_impl(request):
    rc = lib.modcam_crc32c_set_impl(getattr(lib, f"MODCAM_CRC32C_IMPL_{request.param}"))
    if rc == -errno.ENOTSUP:  # this CPU has no such unit; the others still run
        pytest.skip(f"this CPU cannot run the {request.param} CRC32C path")
    assert rc == 0
    yield request.param
    lib.modcam_crc32c_set_impl(lib.MODCAM_CRC32C_IMPL_AUTO)


def test_crc32c_known_answer_and_paths_agree(crc_impl):
    check = b"123456789"
    assert lib.modcam_crc32c(0, check, 9) == 0xE3069283  # the standard check value
    assert lib.modcam_crc32c_portable(0, check, 9) == 0xE3069283
    rng = np.random.default_rng(0)
    for n in [0, 1, 7, 8, 127, 128, 255, 256, 257, 383, 384, 385, 4095, 4096, 4097, 4351, 4352,
              4353, 98303, 98304, 98305, 3 * 98304 + 13, (1 << 20) + 77, (1 << 20) + 128,
              (1 << 20) + 256]:
        buf = rng.integers(0, 256, n + 64, dtype=np.uint8)
        for off in (0, 3):
            src = ffi.from_buffer(buf[off:off + n])
            ref = lib.modcam_crc32c_portable(0, src, n)
            assert lib.modcam_crc32c(0, src, n) == ref
            # Streaming copies need a 32-byte aligned destination, the 512-bit
            # path a 64-byte aligned one: try both, and neither.
            for dst_align in (64, 32, 8):
                dst = np.zeros(n + 128, np.uint8)
                start = (-dst.ctypes.data) % 64 + (dst_align % 64)
                out = dst[start:start + n]
                assert lib.modcam_copy_crc32c(ffi.from_buffer(out), src, n) == ref
                assert np.array_equal(out, buf[off:off + n])
                assert not dst[:start].any() and not dst[start + n:].any()
    # Continuation: crc(a || b) == crc(crc(a), b)
    a, b = b"camera", b"module"
    assert lib.modcam_crc32c(lib.modcam_crc32c(0, a, 6), b, 6) == lib.modcam_crc32c(0, a + b, 12)
