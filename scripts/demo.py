"""make demo: plug a virtual 100 MP module into modcamd and take a picture.

Starts, in a scratch directory: a private dbus-daemon, a umockdev testbed,
the virtual module (full size, the physical scene model) and modcamd; plugs
the module (a real uevent), captures a full-resolution JPEG + DNG through
the D-Bus API with the Python client, prints where the files are and how
long each step took, unplugs, and stops everything it started.

Run it as `make demo` (it sets up the machine first), or by hand under the
umockdev preload: `umockdev-wrapper .venv/bin/python scripts/demo.py`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "daemon"))

from modcam.client import connect  # noqa: E402
from modcam.lab import PrivateBus  # noqa: E402
from modcam.virtual.udev_device import VirtualUdevBed, preload_active  # noqa: E402

def step(text: str, t0: float) -> None:
    print(f"  {text:<44} {time.monotonic() - t0:7.2f} s", flush=True)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.01)
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensor", default=None, help="WxH (default: the real 11552x8672)")
    parser.add_argument("--out", default=None, help="keep the pictures here (default: a "
                        "directory printed at the end)")
    args = parser.parse_args()
    if not preload_active():
        raise SystemExit("demo: run under the umockdev preload: umockdev-wrapper "
                         ".venv/bin/python scripts/demo.py (make demo does)")
    work = Path(tempfile.mkdtemp(prefix="modcam-demo-"))
    out = Path(args.out or work / "captures")
    procs: list[subprocess.Popen] = []
    bus = None
    bed = VirtualUdevBed()
    env = bed.env({**os.environ, "PYTHONPATH": str(REPO / "daemon")})
    t0 = time.monotonic()
    print("modcam demo: a virtual module, modcamd and a private D-Bus", flush=True)
    try:
        bus = PrivateBus(str(work))
        address = bus.address
        control = str(work / "MC0001.sock")
        module_args = ["--sensor", args.sensor] if args.sensor else []
        vm = subprocess.Popen([sys.executable, "-m", "modcam.virtual.cli", "run", "--serial",
                               "MC0001", "--control", control, *module_args], env=env,
                              stdout=subprocess.PIPE, text=True)
        procs.append(vm)
        wait_for(lambda: vm.stdout.readline().strip() == "MODCAM_READY=1", 60,
                 "the virtual module")
        daemon = subprocess.Popen([sys.executable, "-m", "modcam.service", "--bus", address,
                                   "--capture-dir", str(out), "--log-level", "warning"],
                                  env=env)
        procs.append(daemon)
        client = wait_for(lambda: _try_connect(address), 30, "modcamd on the bus")
        step("private bus, virtual module and modcamd up", t0)

        t = time.monotonic()
        bed.plug("MC0001", control, model="Virtual MC-100")
        module = wait_for(lambda: _first_module(client), 10, "ModuleAdded")
        print(f"  plugged MC0001: {module.path} in {1000 * (time.monotonic() - t):.0f} ms "
              "(uevent -> ModuleAdded)")
        t = time.monotonic()
        result = module.capture(formats=("jpeg", "dng"), readout_mode="full")
        total = time.monotonic() - t
        timings = result.get("timings", {})
        print("  capture of a full-resolution still, by step:")
        for key, label in (("ready", "boot (power on -> ready)"),
                           ("exposure_readout", "exposure + readout over the link (*)"),
                           ("white_balance", "ISP: white balance statistics"),
                           ("jpeg", "ISP + JPEG encode and write"),
                           ("dng", "DNG write"), ("total", "total in modcamd")):
            if key in timings:
                print(f"    {label:<40} {timings[key]:7.2f} s")
        print(f"    {'the D-Bus call, as the caller saw it':<40} {total:7.2f} s")
        print("    (*) the virtual module renders its physical scene model on first use: "
              "seconds, once")
        for path, size in zip(result["paths"], result["sizes"]):
            print(f"  wrote {path} ({size / 1e6:.1f} MB)")
        t = time.monotonic()
        bed.unplug("MC0001")
        wait_for(lambda: not client.modules(), 10, "ModuleRemoved")
        print(f"  unplugged MC0001 in {1000 * (time.monotonic() - t):.0f} ms "
              "(uevent -> ModuleRemoved)")
        client.close()
        print(f"done in {time.monotonic() - t0:.1f} s; pictures in {out}")
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if bus is not None:
            bus.close()
        bed.close()
        if args.out is None and not (out.exists() and any(out.iterdir())):
            shutil.rmtree(work, ignore_errors=True)


def _try_connect(address):
    try:
        client = connect(address)
        client.version
        return client
    except Exception:   # noqa: BLE001 - not up yet
        return None


def _first_module(client):
    mods = client.modules()
    return mods[0] if mods else None


if __name__ == "__main__":
    sys.exit(main())
