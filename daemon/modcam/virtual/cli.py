"""`modcam-virtual-module`: run a virtual camera module, or poke a running one.

Owns the command line of the virtual module (module.py, control_server.py,
streamer.py) for demos and for integrators' own tests:

    modcam-virtual-module [run] [--serial MC0001] [--control PATH] [--plug] ...
    modcam-virtual-module ctl [--control PATH | --serial S] turn-focus-ring 1.5
    modcam-virtual-module ctl ... inject-fault stall --seconds 2

`run` (the default) serves the module until SIGINT/SIGTERM or an injected
link drop, and prints shell-style KEY=VALUE lines on stdout once it listens
(MODCAM_CONTROL, MODCAM_SIM, and with --plug UMOCKDEV_DIR and MODCAM_SYSPATH),
ending with MODCAM_READY=1. `ctl` talks to the module's simulation socket,
which stays usable while a daemon holds the control socket.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys

from modcam.link import protocol
from modcam.link.control_channel import ChannelClosed, ControlChannel, ControlError
from modcam.virtual import sensor_model as sm
from modcam.virtual.control_server import SIM_SUFFIX

log = logging.getLogger("modcam.virtual.cli")
COMMANDS = ("run", "ctl")


def default_control_path(serial: str) -> str:
    """$XDG_RUNTIME_DIR/modcam-virtual/SERIAL.sock, else /run/modcam-virtual/SERIAL.sock."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/run"
    return os.path.join(base, "modcam-virtual", f"{serial}.sock")


def _sensor(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sensor size {text!r} is not WIDTHxHEIGHT") from None
    return w, h


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modcam-virtual-module", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a virtual modcam camera module (control socket + shared-memory frame "
                    "ring), or control a running one.\nWithout a command, `run` is assumed; "
                    "`COMMAND --help` describes each.",
        epilog="examples:\n"
               "  umockdev-wrapper modcam-virtual-module --plug --serial MC0001\n"
               "  modcam-virtual-module --control /tmp/mc.sock --boot-seconds 0.5\n"
               "  modcam-virtual-module ctl --control /tmp/mc.sock turn-focus-ring 1.5\n"
               "  modcam-virtual-module ctl --control /tmp/mc.sock inject-fault stall --seconds 2\n"
               "\nThe protocol is documented in docs/control-protocol.md.")
    sub = parser.add_subparsers(dest="command", metavar="{run,ctl}")
    run = sub.add_parser("run", help="serve a virtual module (the default)",
                         description="Serve one virtual module until SIGINT/SIGTERM or an "
                                     "injected link drop. Prints KEY=VALUE lines on stdout once "
                                     "it listens; logs go to stderr.")
    run.add_argument("--serial", default="MC0001", help="module serial (default %(default)s)")
    run.add_argument("--control", metavar="PATH",
                     help="control socket path (default $XDG_RUNTIME_DIR/modcam-virtual/SERIAL"
                          ".sock, or /run/modcam-virtual/SERIAL.sock); the simulation socket "
                          f"is PATH{SIM_SUFFIX}")
    run.add_argument("--boot-seconds", type=float, default=2.0, metavar="SECONDS",
                     help="boot time (default 2.0)")
    run.add_argument("--thermal-tau", type=float, default=120.0, metavar="SECONDS",
                     help="thermal time constant (default 120; small values heat up fast)")
    run.add_argument("--ambient", type=float, default=25.0, metavar="CELSIUS",
                     help="ambient temperature (default 25)")
    run.add_argument("--sensor", type=_sensor, default=(sm.WIDTH, sm.HEIGHT), metavar="WxH",
                     help=f"full readout size, multiples of 4 (default {sm.WIDTH}x{sm.HEIGHT}; "
                          "small sizes "
                          "make fast tests)")
    run.add_argument("--link-rate", type=float, default=1.25e9, metavar="BYTES_PER_S",
                     help="link budget in bytes/s (default 1.25e9 = 10 Gbit/s)")
    for name, default in (("vendor", "modcam"), ("model", "Virtual MC-100"),
                          ("firmware", "0.1.0")):
        run.add_argument(f"--{name}", default=default,
                         help=f"{name} reported by identify and udev (default %(default)s)")
    run.add_argument("--eeprom", metavar="FILE",
                     help="serve this file as the calibration EEPROM instead of the module's "
                          "own (e.g. a damaged blob, to see what a host does with it)")
    run.add_argument("--source", choices=("physical", "synthetic"), default=None,
                     help="what the sensor sees: the physical model of a scene through the "
                          "lens (default at the real sensor size) or a cheap test pattern "
                          "(default for other --sensor sizes)")
    run.add_argument("--plug", action="store_true",
                     help="also create a umockdev testbed and plug the module into it, printing "
                          "UMOCKDEV_DIR for a daemon to run against; needs the umockdev preload "
                          "(run as `umockdev-wrapper modcam-virtual-module --plug`)")
    run.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    _add_ctl_parser(sub)
    return parser


def _add_ctl_parser(sub) -> None:
    ctl = sub.add_parser("ctl", help="control a running module through its simulation socket",
                         description="Send one request to a running virtual module and print "
                                     "the result as JSON. Uses the simulation socket, which "
                                     "serves hello/identify/status and the sim.* ops while a "
                                     "daemon holds the control socket.")
    ctl.add_argument("--control", metavar="PATH", help="the module's control socket path")
    ctl.add_argument("--serial", default="MC0001", help="find the socket by serial instead")
    ctl.add_argument("--timeout", type=float, default=5.0, help="reply timeout in seconds")
    cmds = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)
    cmds.add_parser("status", help="state, temperature, power draw, controls, ring")
    cmds.add_parser("identify", help="vendor, model, serial, firmware, sensor, modes")
    p = cmds.add_parser("turn-focus-ring", help="turn the focus ring to POSITION dioptres")
    p.add_argument("position", type=float, help=f"0 (infinity) .. {protocol.LENS_POSITION_MAX:.3f}")
    p = cmds.add_parser("inject-fault", help="inject a fault", description=
                        "Faults: " + ", ".join(protocol.FAULT_KINDS) + ". See "
                        "docs/control-protocol.md for what each does.")
    p.add_argument("kind", choices=protocol.FAULT_KINDS)
    p.add_argument("--seconds", type=float, help="stall / slow_boot duration")
    p.add_argument("--count", type=int, help="frames affected (corrupt_crc, truncated, torn, "
                                             "producer_crash)")
    p.add_argument("--variant", choices=protocol.GARBAGE_VARIANTS, help="garbage_control kind")
    p.add_argument("--reason", help="boot_failure reason")
    p = cmds.add_parser("set-scene", help="what the module looks at")
    p.add_argument("name")
    p.add_argument("--distance", type=float, dest="distance_m", help="subject distance in m")
    p.add_argument("--seed", type=int)
    p = cmds.add_parser("set-ambient", help="the lab's temperature and light")
    p.add_argument("--temperature", type=float, dest="temperature_c", help="°C")
    p.add_argument("--lux", type=float)
    p.add_argument("--illuminant", help="D65, D50, A, or a colour temperature in K")
    p = cmds.add_parser("watch", help="print events as JSON lines until interrupted")
    p.add_argument("--count", type=int, help="stop after this many events")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="modcam-virtual-module: %(message)s", stream=sys.stderr)
    try:
        return run(args) if args.command == "run" else ctl(args)
    except (OSError, ValueError, RuntimeError, ControlError, ChannelClosed) as exc:
        print(f"modcam-virtual-module: {exc}", file=sys.stderr)
        return 1


# -- run ---------------------------------------------------------------------

def _frame_source(args):
    """The physics renderer only knows the real sensor's geometry."""
    from modcam.virtual.streamer import SyntheticSource

    real = tuple(args.sensor) == (sm.WIDTH, sm.HEIGHT)
    kind = args.source or ("physical" if real else "synthetic")
    if kind == "synthetic":
        return SyntheticSource()
    if not real:
        raise SystemExit(f"--source physical needs --sensor {sm.WIDTH}x{sm.HEIGHT}")
    from modcam.virtual.physical_source import PhysicalSource
    return PhysicalSource(args.serial)


def run(args) -> int:
    from modcam.virtual.control_server import ControlServer
    from modcam.virtual.module import ModuleConfig, VirtualModule

    config = ModuleConfig(serial=args.serial, vendor=args.vendor, model=args.model,
                          firmware=args.firmware, sensor_width=args.sensor[0],
                          sensor_height=args.sensor[1], boot_seconds=args.boot_seconds,
                          link_bytes_per_s=args.link_rate, ambient_c=args.ambient,
                          thermal_tau_s=args.thermal_tau)
    control = os.path.abspath(args.control or default_control_path(args.serial))
    bed = _open_bed() if args.plug else None      # refuse early, before any socket exists
    try:
        os.makedirs(os.path.dirname(control), mode=0o700, exist_ok=True)
        eeprom = None
        if args.eeprom:
            with open(args.eeprom, "rb") as f:
                eeprom = f.read()
        server = ControlServer(VirtualModule(config, eeprom=eeprom), control,
                               source=_frame_source(args))
        lines = {"MODCAM_CONTROL": server.control_path, "MODCAM_SIM": server.sim_path}
        if bed is not None:
            lines["UMOCKDEV_DIR"] = bed.root_dir
            lines["MODCAM_SYSPATH"] = bed.plug(args.serial, control,
                                               vendor=args.vendor, model=args.model,
                                               firmware=args.firmware)
        for key, value in {**lines, "MODCAM_READY": "1"}.items():
            print(f"{key}={value}", flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: server.stop())
        server.serve_forever()
        if server.dropped.is_set():
            print("modcam-virtual-module: the link dropped (injected fault); exiting",
                  file=sys.stderr)
    finally:
        if bed is not None:
            bed.unplug(args.serial)       # sends "remove": the module was pulled off
            bed.close()
    return 0


def _open_bed():
    from modcam.virtual.udev_device import VirtualUdevBed, preload_active
    if not preload_active():
        raise RuntimeError("--plug needs the umockdev preload in this process, or its uevents "
                           "go nowhere; run it as `umockdev-wrapper modcam-virtual-module "
                           "--plug ...` (Debian package umockdev)")
    return VirtualUdevBed()


# -- ctl ---------------------------------------------------------------------

_CTL_OPS = {"status": "status", "identify": "identify", "turn-focus-ring": "sim.turn_focus_ring",
            "inject-fault": "sim.inject_fault", "set-scene": "sim.set_scene",
            "set-ambient": "sim.set_ambient"}
_CTL_ARGS = ("position", "kind", "seconds", "count", "variant", "reason", "name", "distance_m",
             "seed", "temperature_c", "lux", "illuminant")


def ctl(args) -> int:
    path = (args.control or default_control_path(args.serial)) + SIM_SUFFIX
    with ControlChannel(path, timeout=args.timeout) as channel:
        if args.ctl_command == "watch":
            return _watch(channel, args.count)
        params = {k: getattr(args, k) for k in _CTL_ARGS if getattr(args, k, None) is not None}
        with contextlib.suppress(KeyError, ValueError):   # a colour temperature in K
            params["illuminant"] = float(params["illuminant"])
        result = channel.request(_CTL_OPS[args.ctl_command], **params)
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _watch(channel: ControlChannel, count: int | None) -> int:
    seen = 0
    try:
        while count is None or seen < count:
            try:
                event = channel.wait_event(lambda e: True, timeout=3600)
            except TimeoutError:
                continue
            print(json.dumps(event, ensure_ascii=False), flush=True)
            seen += 1
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    except ChannelClosed:
        print("modcam-virtual-module: the module went away", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
