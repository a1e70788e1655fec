"""modcam-stress: plug and unplug virtual modules under modcamd while clients
claim, capture and focus; check the daemon after every cycle; write a report.

    umockdev-wrapper modcam-stress --cycles 1000 --seed 7 --clients 4 --out stress-out

Exit status: 0 when the run passed (no crash, hang, invalid capture,
undocumented error or leaked fd, every state hit, RSS growth after the
warm-up within --max-rss-growth), 1 when it did not, 2 when it could not
start. Interrupted (SIGINT, SIGTERM, SIGHUP), it stops after the current
cycle's step, writes the report of the cycles done (a failed run) and tears
its daemon, bus and modules down. The same --seed replays the same plan.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from modcam.stress import plan as plan_mod


class Progress:
    """A bar on stderr, redrawn in place on a terminal; a line every 10% otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.tty = stream, stream.isatty()
        self.t0, self._last_decile = time.monotonic(), -1

    def __call__(self, done: int, total: int) -> None:
        frac = done / max(1, total)
        elapsed = time.monotonic() - self.t0
        eta = elapsed / frac - elapsed if frac else 0.0
        text = f"{done}/{total} cycles, {elapsed:.0f} s, eta {eta:.0f} s"
        if self.tty:
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r[{bar:<30}] {text}")
            if done == total:
                self.stream.write("\n")
        elif int(frac * 10) > self._last_decile:
            self._last_decile = int(frac * 10)
            self.stream.write(f"modcam-stress: {text}\n")
        self.stream.flush()


def _sensor(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modcam-stress", description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=100, help="plug/unplug cycles (default 100)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: random, printed)")
    p.add_argument("--clients", type=int, default=2, help="concurrent clients (default 2)")
    p.add_argument("--modules", type=int, default=1, help="virtual modules (default 1)")
    p.add_argument("--out", default="modcam-stress-out", help="report directory")
    p.add_argument("--boot-seconds", type=float, default=0.3,
                   help="virtual module boot time (default 0.3)")
    p.add_argument("--sensor", type=_sensor, default=(256, 192), metavar="WxH",
                   help="virtual sensor size (default 256x192)")
    p.add_argument("--max-rss-growth", type=float, default=2.0, metavar="MB",
                   help="fail when modcamd's RSS grows more than this after the warm-up "
                        "(the first 10%% of the cycles, 100 to 1000; default 2)")
    p.add_argument("--idle-timeout", type=float, default=1.0,
                   help="modcamd's idle power-down, seconds (default 1)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the seeded plan as JSON and exit (nothing is started)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "little")
    if args.dry_run:
        json.dump(plan_mod.plan(args.seed, args.cycles, args.clients, args.modules,
                                args.boot_seconds), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    from modcam.lab import Lab, LabError
    from modcam.stress import report as report_mod
    from modcam.stress.runner import Run

    print(f"modcam-stress: seed {args.seed}, {args.cycles} cycles, {args.clients} clients",
          file=sys.stderr)
    try:
        lab = Lab(command="modcam-stress", idle_timeout=args.idle_timeout)
    except LabError as exc:
        print(f"modcam-stress: {exc}", file=sys.stderr)
        return 2
    # Stopped by SIGTERM or SIGHUP as by Ctrl-C: the cycles done are reported
    # and the lab (bus, modcamd, virtual modules) is torn down, not orphaned.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    os.makedirs(args.out, exist_ok=True)
    # The samples are also written as they are taken, for a run that is cut short.
    with lab, open(os.path.join(args.out, "samples.csv"), "w") as live:
        live.write(",".join(report_mod.SAMPLE_COLUMNS) + "\n")

        def on_sample(sample: dict) -> None:
            live.write(report_mod.sample_row(sample))
            live.flush()

        run = Run(lab, seed=args.seed, cycles=args.cycles, clients=args.clients,
                  modules=args.modules, boot_seconds=args.boot_seconds, sensor=args.sensor,
                  progress=Progress(), on_sample=on_sample)
        outcome = run.run()
        rep = report_mod.build(run, outcome, {k: v for k, v in vars(args).items()})
        report_mod.write(args.out, rep, run)
        if rep["crashes"] or rep["failures"]:
            with open(os.path.join(args.out, "modcamd.log"), "w") as f:
                f.write(lab.daemon.log)
    why = report_mod.problems(rep)
    rss = ("not measured (run too short)" if rep["rss_growth_mb"] is None
           else f"{rep['rss_growth_mb']} MB")
    print(f"modcam-stress: {'FAIL (' + '; '.join(why) + ')' if why else 'PASS'}: "
          f"{rep['cycles']} cycles, {rep['captures_ok']} captures ok, "
          f"{rep['captures_invalid']} invalid, {rep['crashes']} crashes, {rep['hangs']} hangs, "
          f"leaked fds {rep['leaked_fds']}, RSS growth {rss}; "
          f"report in {os.path.join(args.out, 'report.md')}", file=sys.stderr)
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main())
