"""The repository keeps its promises: README's two commands are what CI runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    assert "README.md" in script and 'eval "$install"' in script and 'eval "$tests"' in script


def test_the_package_has_no_import_cycle(shared_dir) -> None:
    """``../shared/tools/import_cycles.py`` counts imports inside functions too."""
    tool = shared_dir / "tools" / "import_cycles.py"
    done = subprocess.run([sys.executable, str(tool), "src", "resnetlab"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
