"""`make setup` installs without setuptools' "Editable installation" notice
(issue 16, problem 9): the Makefile's own install line, run into a
throw-away virtualenv (without the dependencies, which are not the point)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def setup_lines() -> list[str]:
    """The recipe of the Makefile's install stamp: upgrade pip, install editable
    (the native kernel's install, `pip install ./native`, is another stamp's)."""
    makefile = (ROOT / "Makefile").read_text()
    lines = re.findall(r"^\t(\$\(BIN\)/python -m pip .*|PYTHONWARNINGS=.*)$", makefile, re.M)
    lines = [line for line in lines if "./native" not in line]
    assert len(lines) == 2, lines
    return lines


def test_the_editable_install_prints_nothing(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    upgrade, install = (line.replace("$(BIN)", str(venv / "bin")) for line in setup_lines())
    subprocess.run(upgrade, shell=True, check=True, capture_output=True, timeout=300)
    done = subprocess.run(
        install + " --no-deps",  # the dependencies are not the point
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    assert done.stdout.strip() == ""
    shown = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "show", "taskstream"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"Editable project location: {ROOT}" in shown.stdout
