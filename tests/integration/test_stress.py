"""modcam-stress end to end: a short seeded run against the real daemon, and
the seed's plan reproduced."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modcam.stress.plan import TARGETS, plan

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The child makes its own testbed; one of this process's must not leak in.
    env.pop("UMOCKDEV_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "daemon"),
                                                      env.get("PYTHONPATH")]))
    return env


def _stress(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modcam.stress.cli", *args], env=_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.umockdev
@pytest.mark.slow
@pytest.mark.rss
def test_a_few_hundred_cycles_pass(tmp_path):
    """A regression guard: 240 cycles end while the allocators still settle
    (RSS moves by a few MB either way), so the bound here is 4 MB; `make
    stress` holds 10 000 cycles to the 2 MB default."""
    out = tmp_path / "report"
    proc = _stress("--cycles", "240", "--seed", "7", "--clients", "4", "--out", str(out),
                   "--max-rss-growth", "4", timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads((out / "report.json").read_text())
    assert report["cycles"] == 240
    assert report["warmup_cycles"] == 100
    assert report["rss_growth_mb"] is not None and report["rss_growth_mb"] <= 4.0, report
    samples = (out / "samples.csv").read_text().splitlines()
    assert samples[0].startswith("cycle,fds,threads,rss_mb") and len(samples) == 241
    assert report["crashes"] == 0 and report["hangs"] == 0, report["failures"]
    assert report["captures_invalid"] == 0, report["invalid_examples"]
    assert report["undocumented_errors"] == {}
    for kind, n in report["documented_errors"].items():    # each kind shows what it said
        assert 1 <= len(report["documented_error_examples"][kind]) <= min(3, n)
    assert report["leaked_fds"] == 0
    assert report["captures_ok"] > 0
    assert report["captures_validated_by"]["rendered"] > 0
    assert set(report["states_hit"]) >= set(TARGETS), report["states_at_unplug"]
    for key in ("add", "remove", "ready", "capture"):
        assert report["latency"][key]["n"] > 0
        assert "p99_ms" in report["latency"][key]
    assert (out / "report.md").read_text().startswith("# modcam-stress report: PASS")
    for name in ("latency_add.png", "latency_remove.png", "latency_ready.png",
                 "latency_capture.png", "daemon_resources.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_replays_the_same_plan():
    first = _stress("--dry-run", "--cycles", "50", "--seed", "1234", "--clients", "3")
    second = _stress("--dry-run", "--cycles", "50", "--seed", "1234", "--clients", "3")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert json.loads(first.stdout) == plan(1234, 50, 3)
    assert plan(1235, 50, 3) != plan(1234, 50, 3)


def test_every_target_in_every_six_cycles():
    cycles = plan(5, 60, 1)["cycles"]
    for start in range(0, 60, 6):
        assert {c["target"] for c in cycles[start:start + 6]} == set(TARGETS)


def test_refuses_without_the_preload(tmp_path):
    env = _env()
    env["LD_PRELOAD"] = ":".join(p for p in env.get("LD_PRELOAD", "").split(":")
                                 if p and "umockdev" not in p)
    proc = subprocess.run([sys.executable, "-m", "modcam.stress.cli", "--cycles", "1",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "umockdev-wrapper modcam-stress" in proc.stderr


def test_the_report_fails_a_run_whose_memory_grows():
    """The RSS bound is applied: a daemon whose RSS climbs 3 MB after the
    warm-up fails a run that is otherwise clean; a flat one passes."""
    from modcam.stress.report import memory, problems, warmup_cycles

    def samples(per_cycle_mb: float) -> list[dict]:
        return [{"cycle": c, "fds": 10, "threads": 5, "rss_mb": 70 + per_cycle_mb * c,
                 "anon_mb": 40 + per_cycle_mb * c} for c in range(300)]
    clean = {"crashes": 0, "hangs": 0, "captures_invalid": 0, "leaked_fds": 0,
             "undocumented_errors": {}, "states_missing": [], "cycles": 300,
             "cycles_planned": 300, "max_rss_growth_mb": 2.0}
    warm = warmup_cycles(300)
    leaking = {**clean, **memory(samples(0.015), warm)}
    assert leaking["rss_growth_mb"] == pytest.approx(0.015 * 180, abs=0.05)
    assert leaking["rss_trend_mb_per_1000"] == pytest.approx(15.0, abs=0.1)
    assert problems(leaking) == ["RSS grew 2.7 MB after the warm-up (bound 2.0 MB)"]
    assert problems({**clean, **memory(samples(0.0), warm)}) == []
    assert memory(samples(0.015)[:110], warmup_cycles(110))["rss_growth_mb"] is None


def _children(pid: int) -> set[int]:
    """Every live descendant of `pid`."""
    kids, found = {pid}, set()
    while kids:
        parent = kids.pop()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                if ppid == parent and int(entry) not in found:
                    found.add(int(entry))
                    kids.add(int(entry))
    return found


@pytest.mark.umockdev
def test_sigterm_reports_the_cycles_done_and_leaves_nothing_running(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.Popen([sys.executable, "-m", "modcam.stress.cli", "--cycles", "1000",
                             "--seed", "3", "--clients", "2", "--out", str(out)],
                            env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = (out / "samples.csv").read_text().splitlines() if out.exists() and \
                (out / "samples.csv").exists() else []
            if len(rows) > 6:
                break
            time.sleep(0.2)
        lab = _children(proc.pid)
        assert len(lab) >= 3, lab              # its bus, modcamd, a virtual module
        proc.terminate()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert 5 <= report["cycles"] < 1000
    assert any(f.startswith("interrupted after") for f in report["failures"])
    assert f"only {report['cycles']} of 1000 cycles ran" in err
    left = [p for p in lab if os.path.exists(f"/proc/{p}")]
    assert left == [], [open(f"/proc/{p}/cmdline").read() for p in left]
