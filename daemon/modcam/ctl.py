"""modcamctl: the command line of modcam.

This module owns modcamctl's command line: the arguments and the --help of
every command (the manual until there is a man page), how CONTROL=VALUE text
becomes a value of the control's D-Bus type, and the exit status.
`develop` re-processes a DNG that modcam wrote into a JPEG or PNG with the
same ISP as the daemon, using the module calibration embedded in the DNG.
The commands that talk to modcamd (list, info, monitor, claim, set, focus,
autofocus, capture) are carried out in ctl_commands.py over modcam.client.

Exit status: 0 success, 1 an error reported by modcamd or the system (one
sentence on stderr, with the documented error name in brackets), 2 a command
line that cannot be run, 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from modcam.client import CONTROL_TYPES, FORMATS, ModcamClientError

_BUS_HELP = ("bus to find modcamd on: system, session, or a D-Bus address such as "
             "unix:path=/run/modcam/bus (default: $MODCAM_BUS, else system)")
_MODULE_HELP = "the module with this serial (default: the only, or first attached, module)"
_EPILOG = """\
environment:
  MODCAM_BUS   the default for --bus

exit status:
  0 success; 1 modcamd (or the system) refused or failed, with its sentence and
  error name, e.g. "modcamctl: module is booting (NotReady)"; 2 a bad command
  line; 130 interrupted."""


_TRUE = ("true", "1", "on", "yes")
_FALSE = ("false", "0", "off", "no")


def parse_assignment(text: str) -> tuple[str, object]:
    """"CONTROL=VALUE" → (control's D-Bus name, value of the control's type).
    Names match case-insensitively; ranges are left to the daemon."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not CONTROL=VALUE")
    canonical = {n.lower(): n for n in CONTROL_TYPES}.get(name.strip().lower())
    if canonical is None:
        raise argparse.ArgumentTypeError(
            f"unknown control {name!r} (known: {', '.join(sorted(CONTROL_TYPES))})")
    return canonical, parse_value(canonical, value.strip())


def parse_value(control: str, text: str):
    signature = CONTROL_TYPES[control]
    try:
        if signature == "b":
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        if signature == "i":
            return int(text)
        if signature == "d":
            return float(text)
        if signature == "ad":
            red, blue = (float(v) for v in text.split(","))
            return [red, blue]
    except ValueError:
        expected = {"b": "true/false, 1/0 or on/off", "i": "an integer",
                    "d": "a number", "ad": "two numbers, red,blue (e.g. 1.8,1.5)"}[signature]
        raise argparse.ArgumentTypeError(f"{control} takes {expected}, not {text!r}") from None
    return text


def parse_focus(text: str) -> float:
    """A lens position in dioptres, "inf", or a distance such as "1.2m"."""
    word = text.strip().lower()
    try:
        if word in ("inf", "infinity", "∞"):
            return 0.0
        if word.endswith("m"):
            metres = float(word[:-1])
            if metres <= 0:
                raise ValueError
            return 1.0 / metres
        return float(word)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a lens position (dioptres, e.g. 0.8), a distance "
            "(e.g. 1.2m) or inf") from None


def _develop(args) -> int:
    from modcam.isp import DevelopOptions, develop, develop_to_jpeg
    from modcam.isp.dng_reader import read_dng
    from modcam.isp.writers import write_png

    t0 = time.monotonic()
    dng = read_dng(args.input)
    options = DevelopOptions(demosaic=args.demosaic, sharpen=args.sharpen)
    suffix = Path(args.output).suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        develop_to_jpeg(dng.cfa, dng.meta, dng.calibration, args.output, quality=args.quality,
                        options=options)
    elif suffix == ".png":
        write_png(args.output, develop(dng.cfa, dng.meta, dng.calibration, options))
    else:
        raise ValueError(f"{args.output}: the output must end in .jpg, .jpeg or .png")
    h, w = dng.cfa.shape
    print(f"{args.output}: {w}x{h} from module {dng.meta.serial} "
          f"({dng.meta.readout_mode} readout) in {time.monotonic() - t0:.2f} s")
    return 0


def _command(sub, name: str, run, summary: str, description: str, examples: str = "",
             module: bool = True) -> argparse.ArgumentParser:
    """A daemon command: --bus always, -m/--module where a module is meant."""
    epilog = (f"examples:\n{examples}\n\n" if examples else "") + _EPILOG
    parser = sub.add_parser(name, help=summary, description=description, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bus", metavar="BUS", help=_BUS_HELP)
    if module:
        parser.add_argument("-m", "--module", metavar="SERIAL", help=_MODULE_HELP)
    parser.set_defaults(run=run, parser=parser)
    return parser


def _add_daemon_commands(sub) -> None:
    from modcam import ctl_commands as c

    _command(sub, "list", c.cmd_list, "list the attached modules",
             "List the modules attached to modcamd, one line each: serial, state, model,\n"
             "firmware version and D-Bus object path, in the order they arrived. Prints\n"
             "nothing when none is attached.",
             "  modcamctl list\n  modcamctl list --bus session", module=False)

    p = _command(sub, "info", c.cmd_info, "show every property of a module",
                 "Show every property of one module: identity, state (and why, if it is\n"
                 "error), sensor and lens, readout mode, focus, exposure, white balance,\n"
                 "temperature, power draw, idle timeout, the clients holding it (the\n"
                 "privacy indicator) and the frame counters.",
                 "  modcamctl info -m MC0001\n  modcamctl info --json | jq .Temperature")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: path, daemon_version and the properties "
                        "by their D-Bus names")

    p = _command(sub, "monitor", c.cmd_monitor, "print module events as they happen",
                 "Print events as they happen, one line each with a timestamp: modules\n"
                 "plugged in and unplugged, state changes (off, booting, ready, streaming,\n"
                 "capturing, error with its reason), the focus ring (lens position and\n"
                 "focus mode), temperature and the clients holding a module. Runs until\n"
                 "Ctrl-C, SIGTERM, --count or --timeout; exits 1 if modcamd leaves the bus.",
                 "  modcamctl monitor\n  modcamctl monitor --json --count 3 --timeout 30")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per line: time, event (added, removed, state, focus, '
                        'temperature, clients), serial, module and the event\'s fields')
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")

    p = _command(sub, "claim", c.cmd_claim, "hold a module awake, as an open viewfinder does",
                 "Claim a module: power it on if it is off, wait until it is ready (showing\n"
                 "the boot on stderr) and say how long that took, then hold it awake until\n"
                 "Ctrl-C, SIGTERM or --seconds, and release it. modcamd also releases the\n"
                 "claim if modcamctl dies. Exits 1 if the module is unplugged meanwhile.",
                 "  modcamctl claim\n  modcamctl claim -m MC0001 --seconds 10")
    p.add_argument("--seconds", type=float, metavar="S", help="hold for S seconds, then release")

    p = _command(sub, "set", c.cmd_set, "set controls",
                 "Set one or more controls at once (all or nothing; modcamd checks the\n"
                 "ranges and names the control it refuses). Known controls and values:\n"
                 "  AeEnable, AwbEnable   true/false, 1/0, on/off, yes/no\n"
                 "  ExposureTime          integer, µs (with AeEnable=off)\n"
                 "  AnalogueGain          number, 1 to 16\n"
                 "  ColourGains           red,blue, e.g. 1.8,1.5 (with AwbEnable=off)\n"
                 "  LensPosition          dioptres, 0 is infinity\n"
                 "  AfMode                manual, auto or continuous\n"
                 "  Aperture              f-number, 1.4 to 11\n"
                 "  ReadoutMode           full, binned or zoom2x\n"
                 "Names are matched without regard to case.",
                 "  modcamctl set AeEnable=off ExposureTime=8000 AnalogueGain=2\n"
                 "  modcamctl set AwbEnable=off ColourGains=1.8,1.5")
    p.add_argument("assignments", nargs="+", type=parse_assignment, metavar="CONTROL=VALUE",
                   help=f"one of {', '.join(sorted(CONTROL_TYPES))}")

    p = _command(sub, "focus", c.cmd_focus, "focus by hand",
                 "Set the lens position and switch focus to manual, as turning the\n"
                 "module's focus ring does.",
                 "  modcamctl focus 0.8     # dioptres: 1.25 m\n"
                 "  modcamctl focus 1.2m    # a distance in metres\n"
                 "  modcamctl focus inf")
    p.add_argument("position", type=parse_focus, metavar="POSITION",
                   help="dioptres (1/m; 0 is infinity), a distance such as 1.2m, or inf")

    p = _command(sub, "autofocus", c.cmd_autofocus, "run one autofocus cycle",
                 "Run one contrast-detect autofocus cycle (powering the module on if\n"
                 "needed) and print the lens position found, the focus measure, how many\n"
                 "frames it took and whether it succeeded. Exits 1 if it found no focus\n"
                 "(with --json too, after printing the result).",
                 "  modcamctl autofocus\n  modcamctl autofocus --json")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")

    p = _command(sub, "capture", c.cmd_capture, "take a picture into a file",
                 "Take one still and write it into FILE, which modcamctl opens itself and\n"
                 "passes to modcamd (modcamd never writes to a path it is given). FILE\n"
                 "appears only if the capture succeeds. While the module boots and the ISP\n"
                 "runs, its state is shown on stderr.",
                 "  modcamctl capture -o photo.jpg\n"
                 "  modcamctl capture -o raw.dng --mode full\n"
                 "  modcamctl capture -o - --format png --mode zoom2x > zoom.png\n"
                 "  modcamctl capture -o dark.jpg -c AeEnable=off -c ExposureTime=100000")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="where to write the picture; - for stdout")
    p.add_argument("--format", choices=FORMATS,
                   help="picture format (default: from FILE's suffix: .jpg/.jpeg, .png, .dng)")
    p.add_argument("--mode", choices=("full", "binned", "zoom2x"),
                   help="readout mode: full (100 MP), binned (2x2, full field of view) or "
                        "zoom2x (central crop); default: the module's ReadoutMode")
    p.add_argument("--quality", type=int, metavar="Q", help="JPEG quality 1-100")
    p.add_argument("-c", "--control", dest="controls", action="append", metavar="CONTROL=VALUE",
                   type=parse_assignment, help="a control for this shot only (repeatable; "
                                                 "see `modcamctl set --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modcamctl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Control modcam camera modules through modcamd, and develop the DNGs "
                    "they take.\n`modcamctl COMMAND --help` describes each command.",
        epilog=_EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_daemon_commands(sub)
    dev = sub.add_parser("develop", help="develop a DNG written by modcam into a JPEG or PNG",
                         description="Develop a DNG written by modcam again, with the ISP "
                                     "and the module calibration it carries.",
                         epilog="exit status: 0 success; 1 the DNG cannot be read or the "
                                "picture cannot be written; 2 a bad command line.")
    dev.add_argument("input", metavar="IN.dng")
    dev.add_argument("-o", "--output", required=True, metavar="OUT.jpg|OUT.png")
    dev.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    dev.add_argument("--demosaic", choices=("high", "bilinear"), default="high")
    dev.add_argument("--sharpen", type=float, default=0.0, help="unsharp-mask amount 0-4")
    dev.set_defaults(run=_develop, parser=dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    from modcam.ctl_commands import UsageError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as exc:
        args.parser.error(str(exc))                     # exits 2, with the usage line
    except ModcamClientError as exc:
        # Only the daemon's documented names are worth showing; client-side
        # ones (NotRunning, NoBus...) are already said by the sentence.
        suffix = f" ({exc.name})" if exc.documented else ""
        print(f"modcamctl: {exc}{suffix}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("modcamctl: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:   # DngError, WriteError, bad options: a sentence
        # A bare OSError reads "[Errno 2] ...: 'x'"; say "x: reason" instead.
        plain = isinstance(exc, OSError) and exc.strerror and exc.filename \
            and type(exc).__str__ is OSError.__str__
        print(f"modcamctl: {f'{exc.filename}: {exc.strerror}' if plain else exc}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
