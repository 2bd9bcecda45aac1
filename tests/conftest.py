"""Shared fixtures: the read-only ``../shared`` folder, which must exist in CI; a fresh
``$RESNETLAB_HOME``; a tiny CIFAR-shaped data set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    """A CIFAR-shaped data set: 10 classes, 32×32 RGB, 20 train and 40 test images."""
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    g = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 20), ("test", 40)):
        arrays[f"{split}_images"] = g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 10).reshape(-1, 1)
    np.savez(path, **arrays)
    return path
