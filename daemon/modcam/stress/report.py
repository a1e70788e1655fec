"""The report of a stress run: report.json, report.md and PNG plots.

Plots use matplotlib when it is installed (the `stress` extra); without it,
plain rasters drawn with numpy and written with pypng (a runtime dependency)
carry the same data.
"""
from __future__ import annotations

import json
import os

import numpy as np

from modcam.stress.plan import TARGETS

LATENCIES = ("add", "remove", "ready", "capture")


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1000.0
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p90_ms": round(float(np.percentile(a, 90)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(a.max()), 2)}


def build(run, outcome: dict, args: dict) -> dict:
    t, samples = run.tally, run.samples
    warm = max(3, min(50, len(samples) // 10))
    window = samples[:warm]
    baseline = ({"fds": min(s["fds"] for s in window), "threads": min(s["threads"] for s in window),
                 "rss_mb": window[-1]["rss_mb"]} if window else None)
    final = outcome["final"]
    hit = set(run.states_at_unplug) | ({"autofocus"} if run.in_flight_at_unplug["AutoFocus"]
                                       else set())
    return {
        "seed": run.seed, "clients": run.nclients, "modules": len(run.serials),
        "cycles": run.done_cycles, "cycles_planned": run.cycles,
        "elapsed_s": round(outcome["elapsed_s"], 2), "client_steps": outcome["client_steps"],
        "crashes": run.events["crashes"], "hangs": run.events["hangs"],
        "client_crashes": run.events["client_crashes"],
        "missed_signals": run.events["missed_signals"],
        "inconsistent_states": run.events["inconsistent_states"],
        "leaked_fds": (max(0, final["fds"] - baseline["fds"]) if final and baseline else None),
        "rss_growth_mb": (round(final["rss_mb"] - baseline["rss_mb"], 2)
                          if final and baseline else None),
        "threads_growth": (final["threads"] - baseline["threads"] if final and baseline else None),
        "daemon_baseline": baseline, "daemon_final": final,
        "daemon_max": ({k: max(s[k] for s in samples) for k in ("fds", "threads", "rss_mb")}
                       if samples else None),
        "captures_ok": t.counts["captures_ok"],
        "captures_failed_documented": t.counts["captures_failed_documented"],
        "captures_failed_undocumented": t.counts["captures_failed_undocumented"],
        "captures_invalid": t.counts["captures_invalid"],
        "captures_validated_by": dict(run.validator.by),
        "invalid_examples": t.invalid[:10],
        "slow_calls": t.counts["slow_calls"],
        "calls_ok": {k: v for k, v in sorted(t.counts.items()) if k.endswith("_ok")},
        "documented_errors": dict(sorted(t.documented.items())),
        "undocumented_errors": dict(sorted(t.undocumented.items())),
        "states_at_unplug": dict(sorted(run.states_at_unplug.items())),
        "in_flight_at_unplug": dict(run.in_flight_at_unplug),
        "states_hit": sorted(hit), "states_missing": [s for s in TARGETS if s not in hit],
        "latency": {k: percentiles(t.latency.get(k, [])) for k in LATENCIES},
        "failures": run.failures[:50],
        "args": args,
    }


def write(out_dir: str, report: dict, run) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2, sort_keys=False)
        f.write("\n")
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(markdown(report))
    return plots(out_dir, run)


def markdown(r: dict) -> str:
    ok = not (r["crashes"] or r["hangs"] or r["captures_invalid"] or r["undocumented_errors"]
              or r["states_missing"] or r["leaked_fds"])
    lines = [f"# modcam-stress report: {'PASS' if ok else 'FAIL'}", "",
             f"Seed {r['seed']}, {r['cycles']} of {r['cycles_planned']} cycles, "
             f"{r['clients']} clients, {r['modules']} module(s), {r['elapsed_s']} s. "
             f"Replay: `modcam-stress --seed {r['seed']} --cycles {r['cycles_planned']} "
             f"--clients {r['clients']}`.", "",
             "| check | value |", "| --- | --- |"]
    for key in ("crashes", "hangs", "missed_signals", "inconsistent_states", "leaked_fds",
                "rss_growth_mb", "threads_growth", "captures_ok", "captures_failed_documented",
                "captures_failed_undocumented", "captures_invalid", "slow_calls"):
        lines.append(f"| {key} | {r[key]} |")
    lines += ["", "## Latency (ms)", "", "| step | n | p50 | p90 | p99 | max |",
              "| --- | --- | --- | --- | --- | --- |"]
    for key, p in r["latency"].items():
        lines.append(f"| {key} | {p['n']} | {p.get('p50_ms', '-')} | {p.get('p90_ms', '-')} | "
                     f"{p.get('p99_ms', '-')} | {p.get('max_ms', '-')} |")
    lines += ["", "## Where the unplugs landed", "",
              "State read just before each unplug: " + ", ".join(
                  f"{k} {v}" for k, v in r["states_at_unplug"].items()) + ".  ",
              "Calls in flight at the unplug: " + (", ".join(
                  f"{k} {v}" for k, v in r["in_flight_at_unplug"].items()) or "none") + ".  ",
              f"Missing: {', '.join(r['states_missing']) or 'none'}.", "",
              "## Errors", "", "Documented (org.modcam.Camera1.Error.*):", ""]
    lines += [f"- {k}: {v}" for k, v in r["documented_errors"].items()] or ["- none"]
    lines += ["", "Undocumented:", ""]
    lines += [f"- {k}: {v}" for k, v in r["undocumented_errors"].items()] or ["- none"]
    if r["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in r["failures"]]
    lines += ["", "Plots: latency_*.png, daemon_resources.png.", ""]
    return "\n".join(lines)


def plots(out_dir: str, run) -> list[str]:
    series = {k: [s[k] for s in run.samples] for k in ("fds", "threads", "rss_mb")}
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _png_plots(out_dir, run, series)
    written = []
    for key in LATENCIES:
        values = np.asarray(run.tally.latency.get(key, [])) * 1000.0
        fig, ax = plt.subplots(figsize=(6, 3.5))
        if values.size:
            ax.hist(values, bins=40)
        ax.set_title(f"{key} latency ({values.size} samples)")
        ax.set_xlabel("ms")
        ax.set_ylabel("count")
        written.append(_save(fig, plt, out_dir, f"latency_{key}.png"))
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    a1.plot(series["rss_mb"])
    a1.set_ylabel("RSS (MB)")
    a2.plot(series["fds"], label="fds")
    a2.plot(series["threads"], label="threads")
    a2.legend()
    a2.set_xlabel("cycle")
    a1.set_title("modcamd over the cycles")
    written.append(_save(fig, plt, out_dir, "daemon_resources.png"))
    return written


def _save(fig, plt, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _png_plots(out_dir: str, run, series: dict) -> list[str]:
    """Without matplotlib: bar and line rasters, no axes text."""
    import png
    written = []

    def save(name: str, img: np.ndarray) -> None:
        path = os.path.join(out_dir, name)
        with open(path, "wb") as f:
            png.Writer(img.shape[1], img.shape[0], greyscale=True).write(f, img.tolist())
        written.append(path)

    for key in LATENCIES:
        img = np.full((200, 400), 255, np.uint8)
        values = run.tally.latency.get(key, [])
        if values:
            counts, _ = np.histogram(values, bins=40)
            heights = (counts / max(1, counts.max()) * 190).astype(int)
            for i, h in enumerate(heights):
                img[200 - h:, i * 10:i * 10 + 8] = 0
        save(f"latency_{key}.png", img)
    img = np.full((300, 600), 255, np.uint8)
    for row, key in enumerate(("rss_mb", "fds")):
        v = np.asarray(series[key], float)
        if v.size:
            span = max(v.max() - v.min(), 1e-9)
            xs = np.linspace(0, 599, v.size).astype(int)
            ys = (row * 150 + 145 - (v - v.min()) / span * 140).astype(int)
            img[ys, xs] = 0
    save("daemon_resources.png", img)
    return written
