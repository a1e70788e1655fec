"""A frame producer in its own process, for the ring's two-process tests.

Writes frames whose geometry and every byte follow from their sequence
number (frame_shape, frame_bytes), so the consumer can check each delivered
byte without being told anything. Alternates the copy path (write) and the
zero-copy path (begin/commit); when the ring is full it drops and paces.

    python ring_producer.py REGION create|recover DOORBELL_FD FRAMES
FRAMES < 0 runs until killed.
"""
import os
import sys
import time

import numpy as np

from modcam.link.ring import FrameInfo, Producer

MAX_WIDTH = 3200
MAX_HEIGHT = 1500
MAX_PAYLOAD = 3 * (MAX_WIDTH // 2) * MAX_HEIGHT
_ramp = np.arange(MAX_PAYLOAD, dtype=np.uint32) * np.uint32(2654435761)


def frame_shape(seq: int):
    width = 2 * (40 + (seq * 7919) % (MAX_WIDTH // 2 - 40))
    height = 8 + (seq * 104729) % (MAX_HEIGHT - 8)
    return width, height, 3 * (width // 2)


def frame_bytes(seq: int, n: int, out=None):
    out = np.empty(n, np.uint8) if out is None else out[:n]
    np.right_shift(_ramp[:n] + np.uint32((seq * 0x9E3779B9) & 0xFFFFFFFF), 24,
                   out=out, casting="unsafe")
    return out


def main():
    region, mode, doorbell, frames = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    p = Producer.create(8, MAX_PAYLOAD, path=region) if mode == "create" else Producer.recover(region)
    p.set_doorbell(doorbell)
    print("ready", flush=True)
    scratch = np.empty(MAX_PAYLOAD, np.uint8)
    sent = 0
    while frames < 0 or sent < frames:
        seq = p.next_sequence
        w, h, stride = frame_shape(seq)
        info = FrameInfo(width=w, height=h, stride=stride, exposure_us=seq % 1000 + 30)
        if seq % 2:
            slot = p.begin()
            ok = slot is not None
            if ok:
                frame_bytes(seq, stride * h, out=slot)
                p.commit(info)
        else:
            ok = p.write(info, frame_bytes(seq, stride * h, out=scratch))
        if ok:
            sent += 1
        else:
            time.sleep(0.001)  # ring full: the frame was dropped; let the consumer catch up
    p.close()
    os.close(doorbell)


if __name__ == "__main__":
    main()
