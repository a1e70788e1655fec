"""modcamctl: the command line of modcam.

`develop` re-processes a DNG that modcam wrote into a JPEG or PNG with the
same ISP as the daemon, using the module calibration embedded in the DNG.
The daemon's commands (list, info, monitor, claim, set, focus, autofocus,
capture) join it with modcamd.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modcamctl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev = sub.add_parser("develop", help="develop a DNG written by modcam into a JPEG or PNG",
                         description="Develop a DNG written by modcam again, with the ISP "
                                     "and the module calibration it carries.")
    dev.add_argument("input", metavar="IN.dng")
    dev.add_argument("-o", "--output", required=True, metavar="OUT.jpg|OUT.png")
    dev.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    dev.add_argument("--demosaic", choices=("high", "bilinear"), default="high")
    dev.add_argument("--sharpen", type=float, default=0.0, help="unsharp-mask amount 0-4")
    dev.set_defaults(run=_develop)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError) as exc:   # DngError, WriteError, bad options: a sentence
        print(f"modcamctl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
