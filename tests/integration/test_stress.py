"""modcam-stress end to end: a short seeded run against the real daemon, and
the seed's plan reproduced."""
from __future__ import annotations

import json
import os
import subprocess
import sys
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
def test_short_stress_run_passes(tmp_path):
    out = tmp_path / "report"
    proc = _stress("--cycles", "48", "--seed", "7", "--clients", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads((out / "report.json").read_text())
    assert report["cycles"] == 48
    assert report["crashes"] == 0 and report["hangs"] == 0, report["failures"]
    assert report["captures_invalid"] == 0, report["invalid_examples"]
    assert report["undocumented_errors"] == {}
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
