"""The console scripts pyproject.toml declares: each names an importable ``main``, the editable install put
each one in the environment's bin, and one of them runs from there."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def declared() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_tools_are_declared():
    assert {"sslam-embed", "sslam-export", "sslam-profile", "sslam-grid", "sslam-encoders"} <= set(declared())


@pytest.mark.parametrize("name", sorted(declared()))
def test_each_script_names_a_main_taking_argv(name):
    module, _, attr = declared()[name].partition(":")
    main = getattr(importlib.import_module(module), attr)
    assert callable(main)
    params = inspect.signature(main).parameters
    assert list(params) == ["argv"] and params["argv"].default is None


def test_the_installed_scripts_are_the_declared_ones():
    """The environment was installed from this pyproject.toml (``make .venv/.installed`` reinstalls when it
    changes): the same scripts, each in the interpreter's bin."""
    installed = {e.name: e.value for e in distribution("sslam").entry_points if e.group == "console_scripts"}
    assert installed == declared()
    bin_dir = Path(sys.executable).parent
    assert all((bin_dir / name).is_file() for name in installed)


def test_a_script_runs_from_the_environments_bin():
    out = subprocess.run(
        [str(Path(sys.executable).parent / "sslam-profile"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "usage: sslam-profile" in out.stdout
