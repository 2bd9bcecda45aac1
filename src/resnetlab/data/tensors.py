"""The on-disk cache of decoded small images: built once, checked against its source, atomic.

Caches live under ``<data home>/cache`` only (``$RESNETLAB_HOME/data/cache``, or the ``root``
a caller names), never beside the user's data, which may be read-only, shared or under
version control. An entry is named by the source's resolved path and its fingerprint (names,
sizes and mtimes of its files, plus a format version), so a changed source gets a new entry;
the entries of its older versions are removed when the new one is written.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write
from .base import data_home

CACHE_VERSION = 1
SUFFIX = ".resnetlab-cache.pt"


def fingerprint(source: Path) -> str:
    """A hash of the source's file names, sizes and mtimes (a folder is walked in full)."""
    source = Path(source)
    digest = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for path in files:
        st = path.stat()
        digest.update(
            f"{path.relative_to(source.parent)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


def cache_folder(root: Path | str | None = None) -> Path:
    """Where every cache entry lives: ``<data home>/cache``."""
    return data_home(root) / "cache"


def _stem(source: Path) -> str:
    """The part of an entry's name that names the source: its name and resolved path's hash."""
    source = Path(source).resolve()
    return f"{source.name}-{hashlib.sha256(str(source).encode()).hexdigest()[:16]}"


def cache_path(source: Path, key: str, root: Path | str | None = None) -> Path:
    """The entry for ``source`` at fingerprint ``key``."""
    return cache_folder(root) / f"{_stem(source)}-{key[:16]}{SUFFIX}"


def _entries(source: Path, root: Path | str | None) -> list[Path]:
    """The entries for ``source`` at any fingerprint (the current one and stale ones)."""
    folder, stem = cache_folder(root), _stem(source)
    if not folder.is_dir():
        return []
    names = (p for p in folder.iterdir() if p.name.endswith(SUFFIX))
    return [p for p in names if p.name.startswith(f"{stem}-")]


def _load(path: Path, key: str) -> dict[str, Any] | None:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable or foreign cache is simply rebuilt
        return None
    if not isinstance(obj, dict) or obj.get("key") != key or obj.get("version") != CACHE_VERSION:
        return None
    return obj


def load_cache(source: Path, root: Path | str | None = None) -> dict[str, Any] | None:
    """The cached content for ``source`` if an entry matches its current fingerprint, else None."""
    if not _entries(source, root):  # skip the fingerprint walk, which is long for a large folder
        return None
    key = fingerprint(source)
    path = cache_path(source, key, root)
    return _load(path, key) if path.is_file() else None


def save_cache(source: Path, content: dict[str, Any], root: Path | str | None = None) -> Path:
    """Store ``content`` for ``source`` atomically (written whole, then renamed into place) and
    remove the entries of the source's earlier versions."""
    key = fingerprint(source)
    path = cache_path(source, key, root)
    with atomic_write(path) as handle:
        torch.save({**content, "key": key, "version": CACHE_VERSION}, handle)
    for stale in _entries(source, root):
        if stale != path:
            stale.unlink(missing_ok=True)
    return path
