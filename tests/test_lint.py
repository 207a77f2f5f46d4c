"""The code passes the linter and the formatter configured in pyproject.toml (ruff), so style is
checked on every test run rather than left to review."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def ruff() -> str:
    exe = Path(sys.executable).parent / "ruff"
    found = str(exe) if exe.is_file() else shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed in the project's environment (it is pinned in requirements.lock)")
    return found


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff_is_clean(args):
    proc = subprocess.run([ruff(), *args], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
