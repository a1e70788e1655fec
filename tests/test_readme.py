"""Every Python example in README.md runs, and prints what its comments say.

A `print(...)  # expected` line promises its output; the promises are checked
in order against what the block really printed. (The shell quick start,
`make test`, is the command that runs this suite.)"""
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
