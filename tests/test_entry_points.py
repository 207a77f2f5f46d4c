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
    """``sslam-profile ssast`` from the bin prints what ``python -m sslam.profile ssast`` does: the
    profile's settings as ``dvc exp run -S`` flags."""
    script = subprocess.run(
        [str(Path(sys.executable).parent / "sslam-profile"), "ssast"], capture_output=True, text=True, timeout=120
    )
    module = subprocess.run(
        [sys.executable, "-m", "sslam.profile", "ssast"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert script.returncode == 0 and module.returncode == 0, script.stderr + module.stderr
    assert script.stdout == module.stdout
    assert "-S 'pretrain.objective=ssast'" in script.stdout and "-S 'pretrain.ssast.mask_count=400'" in script.stdout
