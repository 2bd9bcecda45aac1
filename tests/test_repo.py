"""The repository keeps its promises: README's two commands are what CI runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return block.strip().splitlines()


def test_readme_starts_with_setup_and_test_commands() -> None:
    setup, tests = readme_commands()
    assert setup.startswith("python3 -m venv .venv && ")
    assert "pip install -e '.[dev]'" in setup and setup.endswith("resnetlab demo")
    assert tests == ".venv/bin/python -m pytest -q"


def test_ci_runs_readme_commands() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in script and 'eval "$install"' in script and 'eval "$2"' in script
    assert 'run_with "$own" "$tests"' in script  # README's test command, whole, on one python3
    assert ".venv/bin/mypy" in script and '"mypy==' in (ROOT / "pyproject.toml").read_text()


def test_the_package_has_no_import_cycle(shared_dir) -> None:
    """``../shared/tools/import_cycles.py`` counts imports inside functions too."""
    tool = shared_dir / "tools" / "import_cycles.py"
    done = subprocess.run([sys.executable, str(tool), "src", "resnetlab"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


# Imports each module first in a child forked from a parent that holds only the third-party
# libraries, so no resnetlab module is loaded before the one under test (a fresh interpreter
# per module, without paying the torch import ~100 times).
IMPORT_EACH = r"""
import importlib, os, pkgutil, sys, traceback
import numpy, PIL.Image, scipy.stats, sklearn.metrics, torch, torchvision, tqdm  # noqa: F401
import resnetlab
names = [m.name for m in pkgutil.walk_packages(resnetlab.__path__, "resnetlab.")
         if not m.name.endswith("__main__")]  # those run the command line
for name in [n for n in sys.modules if n == "resnetlab" or n.startswith("resnetlab.")]:
    del sys.modules[name]
failed = []
for name in names:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print(len(names), "modules;", "failed:", failed)
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
def test_every_module_imports_on_its_own() -> None:
    """An import cycle hidden by import order fails here: each module is imported first."""
    done = subprocess.run([sys.executable, "-c", IMPORT_EACH], cwd=ROOT, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert int(done.stdout.split()[0]) > 90, done.stdout
