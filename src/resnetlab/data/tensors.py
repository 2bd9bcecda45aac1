"""The on-disk cache of decoded small images: built once, checked against its source, atomic.

The cache sits next to the data (``<source>.resnetlab-cache.pt``) when that folder is writable,
else under ``<data home>/cache``. It stores the source's fingerprint (sizes and mtimes of its
files, plus a format version); any change to the source rebuilds it.
"""

from __future__ import annotations

import hashlib
import os
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
        if path.name.endswith(SUFFIX):
            continue
        st = path.stat()
        digest.update(
            f"{path.relative_to(source.parent)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


def _writable(folder: Path) -> bool:
    # Mode bits too: root passes os.access even on a folder meant to be read-only.
    return (
        folder.is_dir()
        and os.access(folder, os.W_OK | os.X_OK)
        and bool(folder.stat().st_mode & 0o222)
    )


def cache_paths(source: Path, root: Path | None = None) -> list[Path]:
    """Where the cache for ``source`` may live: beside it if that folder is writable, then
    ``<data home>/cache`` (keyed by the source's absolute path)."""
    source = Path(source).resolve()
    key = hashlib.sha256(str(source).encode()).hexdigest()[:16]
    fallback = data_home(root) / "cache" / f"{source.name}-{key}{SUFFIX}"
    if _writable(source.parent):
        return [source.with_name(source.name + SUFFIX), fallback]
    return [fallback]


def _save_atomic(obj: Any, path: Path) -> None:
    with atomic_write(path) as handle:
        torch.save(obj, handle)


def _load(path: Path, key: str) -> dict[str, Any] | None:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable or foreign cache is simply rebuilt
        return None
    if not isinstance(obj, dict) or obj.get("key") != key or obj.get("version") != CACHE_VERSION:
        return None
    return obj


def load_cache(source: Path, root: Path | None = None) -> dict[str, Any] | None:
    """The cached content for ``source`` if a cache exists and still matches it, else None."""
    paths = [p for p in cache_paths(source, root) if p.is_file()]
    if not paths:  # skip the fingerprint walk, which is long for a large folder
        return None
    key = fingerprint(source)
    for path in paths:
        if (hit := _load(path, key)) is not None:
            return hit
    return None


def save_cache(source: Path, content: dict[str, Any], root: Path | None = None) -> Path:
    """Store ``content`` for ``source`` atomically in the first place that accepts it."""
    content = {**content, "key": fingerprint(source), "version": CACHE_VERSION}
    paths = cache_paths(source, root)
    for path in paths[:-1]:
        try:
            _save_atomic(content, path)
            return path
        except OSError:  # looked writable but is not: use the next place
            pass
    _save_atomic(content, paths[-1])
    return paths[-1]
