"""Virtual module benchmark: sustained stream rate against the link's line rate.

Starts `modcam-virtual-module` as its own process (the physical model at the
real 11552 x 8672 geometry), connects over its control channel as the daemon
does, attaches the shared-memory ring, asks for the fastest stream and counts
frames delivered (CRC-verified by the consumer) per second, for `full` and
`binned` readout. The limit is the 10 Gbit/s link: frame bytes / 1.25 GB/s.
Prints a table, then one JSON line.  --quick measures for less time.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
from modcam.link.control_channel import ControlChannel  # noqa: E402

LINK_BYTES_PER_S = 1.25e9


def start_module(control):
    cmd = [sys.executable, "-m", "modcam.virtual.cli", "run", "--serial", "BENCH0001",
           "--control", control, "--boot-seconds", "0.2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.strip() == "MODCAM_READY=1":
            return proc
    raise SystemExit(f"the virtual module did not start: exit {proc.wait()}")


def measure(ch, consumer, mode, seconds):
    ch.request("set_controls", readout_mode=mode, exposure_us=5000)
    geometry = ch.request("identify")["readout_modes"][mode]
    frame_bytes = geometry["stride"] * geometry["height"]
    line_rate_fps = LINK_BYTES_PER_S / frame_bytes
    ch.request("stream", on=True, fps=line_rate_fps * 1.5)   # asks for more than the link carries
    # Warm-up: the first frames of a new setting are rendered (seconds at
    # 100 MP); the stream is steady once the module's bank of frames is full.
    deadline = time.monotonic() + 120
    steady = 0
    while steady < 12 and time.monotonic() < deadline:
        t0 = time.monotonic()
        with consumer.acquire(timeout=30):
            pass
        steady = steady + 1 if time.monotonic() - t0 < 1.5 / line_rate_fps else 0
    start_stats = consumer.stats
    t0 = time.monotonic()
    frames = 0
    while time.monotonic() - t0 < seconds:
        frame = consumer.acquire(timeout=5)
        if frame is None:
            raise SystemExit(f"{mode}: the stream stopped")
        with frame:
            assert frame.header.width == geometry["width"]
        frames += 1
    elapsed = time.monotonic() - t0
    ch.request("stream", on=False)
    st = consumer.stats
    return {"fps": frames / elapsed, "line_rate_fps": line_rate_fps, "frame_bytes": frame_bytes,
            "skipped": st.skipped - start_stats.skipped, "dropped": st.dropped - start_stats.dropped}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="measure 3 s per mode instead of 10")
    args = ap.parse_args()
    seconds = 3.0 if args.quick else 10.0
    with tempfile.TemporaryDirectory(prefix="modcam-bench-") as tmp:
        control = os.path.join(tmp, "module.sock")
        proc = start_module(control)
        try:
            with ControlChannel(control) as ch:
                ch.request("power", on=True)
                ch.wait_event("ready", timeout=30)
                consumer = ch.open_ring()
                results = {mode: measure(ch, consumer, mode, seconds) for mode in ("full", "binned")}
                consumer.close()
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{'readout':>8} {'MB/frame':>9} {'fps':>7} {'line-rate fps':>14} {'of line rate':>13}")
    for mode, r in results.items():
        print(f"{mode:>8} {r['frame_bytes'] / 1e6:9.1f} {r['fps']:7.2f} {r['line_rate_fps']:14.2f} "
              f"{100 * r['fps'] / r['line_rate_fps']:12.1f}%")
    out = {f"{m}_{k}": round(v, 3) for m, r in results.items() for k, v in r.items()
           if k in ("fps", "line_rate_fps")}
    out.update({f"{m}_of_line_rate": round(r["fps"] / r["line_rate_fps"], 3) for m, r in results.items()})
    out.update({f"{m}_skipped": r["skipped"] for m, r in results.items()})
    out["seconds_per_mode"] = seconds
    print(json.dumps(out))


if __name__ == "__main__":
    main()
