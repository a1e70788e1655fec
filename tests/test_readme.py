"""Every Python example in README.md runs, and prints what its comments say.

A `print(...)  # expected` line promises its output; the promises are checked
in order against what the block really printed. (The shell quick start,
`make test`, is the command that runs this suite.)"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def promised_output(code):
    return [m.group(1).strip() for m in re.finditer(r"^\s*print\(.*\)\s+#\s*(.+)$", code, re.M)]


def test_readme_has_python_examples():
    assert BLOCKS, "README.md lost its examples"


PLAIN = [b for b in BLOCKS if "modcam.client" not in b]
CLIENT = [b for b in BLOCKS if "modcam.client" in b]


@pytest.mark.parametrize("code", PLAIN, ids=[f"block{i}" for i in range(len(PLAIN))])
def test_readme_example_runs_and_prints_what_it_says(code):
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == promised_output(code)


@pytest.mark.parametrize("code", CLIENT, ids=[f"client{i}" for i in range(len(CLIENT))])
def test_readme_client_example_runs_against_modcamd(modcamd, tmp_path, code):
    """The Python client examples, against modcamd on a private bus with a
    virtual module MC0001 plugged ($MODCAM_BUS points at that bus)."""
    modcamd.plug("MC0001")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=modcamd.env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr + modcamd.log()[-3000:]
    assert run.stdout.splitlines() == promised_output(code)


def test_readme_modcamctl_commands_run_against_modcamd(modcamd, tmp_path):
    """Each line of the modcamctl example succeeds, in order, against a virtual module."""
    block = next(b for b in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
                 if "modcamctl" in b)
    vm = modcamd.plug("MC0001")
    env = dict(modcamd.env, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for line in (ln.split("#")[0].strip() for ln in block.strip().splitlines()):
        run = subprocess.run(line.split(), capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=120)
        assert run.returncode == 0, (line, run.stderr)
    assert (tmp_path / "photo.jpg").stat().st_size > 0
    assert modcamd.client.prop(vm.path, "ExposureTime") == 8000
    assert modcamd.client.prop(vm.path, "LensPosition") == 1.25


def test_readme_virtual_module_commands_run(tmp_path):
    """The shell example of the virtual module section, line by line: the first
    line serves (and plugs) a module, the others act on it; the last one pulls
    it off, so the first must then exit by itself."""
    block = next(b for b in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
                 if "modcam-virtual-module run" in b or "--plug" in b)
    lines = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("UMOCKDEV_DIR", None)
    serve = subprocess.Popen(lines[0].split() + ["--source", "synthetic", "--sensor", "256x192"],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        out = [serve.stdout.readline().strip() for _ in range(5)]
        assert "MODCAM_READY=1" in out and any(o.startswith("UMOCKDEV_DIR=") for o in out), out
        for line in lines[1:]:
            run = subprocess.run(line.split(), capture_output=True, text=True, env=env, timeout=30)
            assert run.returncode == 0, (line, run.stderr)
        assert serve.wait(timeout=30) is not None, "link_drop ends the module"
    finally:
        serve.kill()
        serve.wait()


def test_readme_modcam_stress_command_runs(tmp_path):
    """The modcam-stress example, as written, and what its report promises."""
    import json
    block = next(b for b in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
                 if "modcam-stress" in b)
    line = block.strip().splitlines()[0].split("#")[0].split()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("UMOCKDEV_DIR", None)
    run = subprocess.run(line, capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "stress-report" / "report.json").read_text())
    assert report["cycles"] == 30 and report["crashes"] == 0 and report["hangs"] == 0
    assert report["captures_invalid"] == 0
    assert (tmp_path / "stress-report" / "report.md").exists()


def test_make_demo_script_runs(tmp_path):
    """What `make demo` runs (scripts/demo.py), with a smaller virtual sensor for speed:
    plug, a JPEG + DNG through modcamd, unplug, everything stopped."""
    run = subprocess.run([sys.executable, str(README.parent / "scripts" / "demo.py"),
                          "--sensor", "1152x864", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "UMOCKDEV_DIR"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "(uevent -> ModuleAdded)" in run.stdout and "(uevent -> ModuleRemoved)" in run.stdout
    written = sorted(p.suffix for p in (tmp_path / "out").iterdir())
    assert written == [".dng", ".jpg"], written
