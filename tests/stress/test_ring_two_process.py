"""The ring between two processes: every byte of every delivered frame is
checked, sequence numbers only increase, and a producer killed with SIGKILL
mid-write, again and again, never gets a torn frame delivered."""
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from modcam.link.ring import Consumer
from modcam.native import ffi, lib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from ring_producer import frame_bytes, frame_shape  # noqa: E402

pytestmark = pytest.mark.asan
PRODUCER = Path(__file__).resolve().parents[1] / "support" / "ring_producer.py"


def start_producer(region, mode, doorbell, frames):
    proc = subprocess.Popen([sys.executable, str(PRODUCER), str(region), mode, str(doorbell),
                             str(frames)], pass_fds=(doorbell,), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


class Checker:
    """Consumes in a thread; checks every byte, the CRC and the order."""

    def __init__(self, consumer):
        self.c = consumer
        self.seqs = []
        self.errors = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        expected = np.empty(3200 * 3 // 2 * 1500, np.uint8)
        while not self.stop.is_set() or self.c.available:
            f = self.c.acquire(timeout=0.05)
            if f is None:
                continue
            with f:
                h = f.header
                if (h.width, h.height, h.stride) != frame_shape(h.sequence):
                    self.errors.append(f"frame {h.sequence}: geometry {h.width}x{h.height}")
                data = f.data.ravel()
                if lib.modcam_crc32c(0, ffi.from_buffer(data), data.size) != h.crc32c:
                    self.errors.append(f"frame {h.sequence}: CRC mismatch delivered")
                if not np.array_equal(data, frame_bytes(h.sequence, data.size, out=expected)):
                    self.errors.append(f"frame {h.sequence}: torn or wrong bytes")
                if self.seqs and h.sequence <= self.seqs[-1]:
                    self.errors.append(f"frame {h.sequence} after {self.seqs[-1]}")
                self.seqs.append(h.sequence)

    def finish(self):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def test_thousand_frames_of_varying_size_arrive_intact(tmp_path):
    region = tmp_path / "ring"
    doorbell = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    producer = start_producer(region, "create", doorbell, 1200)
    consumer = Consumer(region, doorbell_fd=doorbell)
    checker = Checker(consumer)
    assert producer.wait(120) == 0
    checker.finish()
    st = consumer.stats
    assert checker.errors == []
    assert st.written == 1200 and st.skipped == 0
    assert st.delivered == len(checker.seqs) == 1200
    assert st.sequence_gaps == st.dropped
    assert len({frame_shape(s)[:2] for s in checker.seqs}) > 500, "sizes vary"
    consumer.close()
    os.close(doorbell)


def test_producer_killed_mid_write_many_times_never_delivers_a_torn_frame(tmp_path):
    region = tmp_path / "ring"
    doorbell = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    rnd = random.Random(20261123)
    producer = start_producer(region, "create", doorbell, -1)
    consumer = Consumer(region, doorbell_fd=doorbell)
    checker = Checker(consumer)
    kills = 25
    for _ in range(kills):
        threading.Event().wait(rnd.uniform(0.02, 0.12))
        producer.send_signal(signal.SIGKILL)
        producer.wait(10)
        producer = start_producer(region, "recover", doorbell, -1)
    producer.terminate()
    producer.wait(10)
    producer = start_producer(region, "recover", doorbell, 30)
    assert producer.wait(60) == 0
    checker.finish()
    st = consumer.stats
    assert checker.errors == []
    assert st.aborted >= 1, "some kill should land mid-write"
    assert st.skipped_torn == st.aborted, "every abandoned slot is recognised and skipped"
    assert st.skipped_crc == 0 and st.skipped_invalid == 0
    # A kill can lose at most one sequence number besides the counted drops.
    assert st.dropped <= st.sequence_gaps <= st.dropped + kills + 1
    assert st.delivered == len(checker.seqs) >= 30
    consumer.close()
    os.close(doorbell)
