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


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs_and_prints_what_it_says(code):
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == promised_output(code)


def test_readme_virtual_module_commands_run(tmp_path):
    """The shell example of the virtual module section, line by line: the first
    line serves (and plugs) a module, the others act on it; the last one pulls
    it off, so the first must then exit by itself."""
    block = next(b for b in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
                 if "modcam-virtual-module" in b)
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
