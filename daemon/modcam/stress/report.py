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


def warmup_cycles(cycles: int) -> int:
    """Cycles before the daemon's memory is compared: its caches, allocator
    arenas and lazily started threads settle over the first hundred or so."""
    return min(1000, max(100, cycles // 10))


def memory(samples: list[dict], warm: int) -> dict:
    """RSS growth after the warm-up: the median of the last tenth of the
    samples minus the median of the first tenth after the warm-up (a sample
    taken while a capture holds its buffers is an outlier, not a level), and
    the least-squares trend over all of them. None when the run is too short
    to have both windows."""
    after = [s for s in samples if s["cycle"] >= warm]
    if len(after) < 20:
        return {"rss_growth_mb": None, "anon_growth_mb": None, "rss_trend_mb_per_1000": None}
    n = max(10, len(after) // 10)

    def growth(key: str) -> float:
        first = np.median([s[key] for s in after[:n]])
        last = np.median([s[key] for s in after[-n:]])
        return round(float(last - first), 2)
    slope = np.polyfit([s["cycle"] for s in after], [s["rss_mb"] for s in after], 1)[0]
    return {"rss_growth_mb": growth("rss_mb"), "anon_growth_mb": growth("anon_mb"),
            "rss_trend_mb_per_1000": round(float(slope) * 1000, 3)}


def build(run, outcome: dict, args: dict) -> dict:
    t, samples = run.tally, run.samples
    warm = warmup_cycles(run.cycles)
    window = [s for s in samples if s["cycle"] < warm] or samples[:1]
    baseline = ({"fds": min(s["fds"] for s in window), "threads": min(s["threads"] for s in window),
                 "rss_mb": round(window[-1]["rss_mb"], 2)} if window else None)
    final = outcome["final"]
    mem = memory(samples, warm)
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
        "warmup_cycles": warm, **mem,
        "max_rss_growth_mb": args.get("max_rss_growth"),
        "rss_growth_total_mb": (round(final["rss_mb"] - samples[0]["rss_mb"], 2)
                                if final and samples else None),
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
        "documented_error_examples": dict(sorted(t.examples.items())),
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
    write_samples(os.path.join(out_dir, "samples.csv"), run.samples)
    return plots(out_dir, run)


SAMPLE_COLUMNS = ("cycle", "fds", "threads", "rss_mb", "anon_mb", "file_mb", "shmem_mb")


def sample_row(sample: dict) -> str:
    return ",".join(f"{sample[k]:.2f}" if isinstance(sample[k], float) else str(sample[k])
                    for k in SAMPLE_COLUMNS) + "\n"


def write_samples(path: str, samples: list[dict]) -> None:
    """The daemon's figures after every cycle, one CSV row each."""
    with open(path, "w") as f:
        f.write(",".join(SAMPLE_COLUMNS) + "\n")
        f.writelines(sample_row(s) for s in samples)


def problems(r: dict) -> list[str]:
    """Why a run did not pass; empty when it did."""
    out = [f"{r[k]} {k}" for k in ("crashes", "hangs", "client_crashes", "missed_signals",
                                    "inconsistent_states", "captures_invalid", "leaked_fds")
           if r.get(k)]
    if r["undocumented_errors"]:
        out.append(f"undocumented errors {r['undocumented_errors']}")
    if r["states_missing"]:
        out.append(f"unplugs never landed in {', '.join(r['states_missing'])}")
    if r["cycles"] < r["cycles_planned"]:
        out.append(f"only {r['cycles']} of {r['cycles_planned']} cycles ran")
    bound = r.get("max_rss_growth_mb")
    if bound is not None and r["rss_growth_mb"] is not None and r["rss_growth_mb"] > bound:
        out.append(f"RSS grew {r['rss_growth_mb']} MB after the warm-up (bound {bound} MB)")
    return out


def markdown(r: dict) -> str:
    ok = not problems(r)
    lines = [f"# modcam-stress report: {'PASS' if ok else 'FAIL'}", "",
             f"Seed {r['seed']}, {r['cycles']} of {r['cycles_planned']} cycles, "
             f"{r['clients']} clients, {r['modules']} module(s), {r['elapsed_s']} s. "
             f"Replay: `modcam-stress --seed {r['seed']} --cycles {r['cycles_planned']} "
             f"--clients {r['clients']}`.", "",
             "| check | value |", "| --- | --- |"]
    for key in ("crashes", "hangs", "missed_signals", "inconsistent_states", "leaked_fds",
                "rss_growth_mb", "anon_growth_mb", "rss_trend_mb_per_1000",
                "rss_growth_total_mb", "threads_growth", "captures_ok",
                "captures_failed_documented", "captures_failed_undocumented", "captures_invalid",
                "slow_calls"):
        lines.append(f"| {key} | {r[key]} |")
    lines += ["", f"Memory growth is measured after a warm-up of {r['warmup_cycles']} cycles "
              f"(medians of the first and last tenth of the later samples; bound "
              f"{r['max_rss_growth_mb']} MB); rss_growth_total_mb includes the warm-up."]
    if not ok:
        lines += ["", "Did not pass: " + "; ".join(problems(r)) + "."]
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
    lines += [f"- {k}: {v}" + (f" (e.g. \"{r['documented_error_examples'][k][0]}\")"
                               if r["documented_error_examples"].get(k) else "")
              for k, v in r["documented_errors"].items()] or ["- none"]
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
