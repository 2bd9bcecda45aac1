"""The version is written once (``resnetlab/version.py``); the package metadata and both ways of
asking the command line for it read that one place."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

import resnetlab

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("resnetlab")  # the console script of this environment


def run_version(*command: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # this interpreter's resnetlab
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_pyproject_reads_the_version_from_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "resnetlab.version.__version__"}


def test_installed_metadata_matches_the_package() -> None:
    """After a version bump, reinstall (``pip install -e .``) to refresh the metadata."""
    assert version("resnetlab") == resnetlab.__version__


@pytest.mark.parametrize("how", ["module", "script"])
def test_version_flag_prints_the_package_version(how: str) -> None:
    command = [sys.executable, "-m", "resnetlab"] if how == "module" else [str(SCRIPT)]
    assert run_version(*command) == f"resnetlab {resnetlab.__version__}"
