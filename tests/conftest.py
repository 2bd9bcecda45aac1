"""Shared fixtures: the read-only ``../shared`` folder, which must exist in CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared``; a missing folder fails the test under CI=true and skips it elsewhere."""
    if not (SHARED / "README.md").is_file():
        message = f"real data folder {SHARED} is missing"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (required when CI=true)")
        pytest.skip(message)
    return SHARED


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A fresh ``$RESNETLAB_HOME`` for the test (caches never touch the user's)."""
    monkeypatch.setenv("RESNETLAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
