"""Atomic file writes: a crash or an error never leaves a half-written file under a real name."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file beside ``path``; on success it is synced and renamed onto ``path``
    (with the permissions a new file would get), on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        move_into_place(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def move_into_place(temp: str | Path, target: str | Path) -> None:
    """Rename a finished temporary file onto ``target`` with the permissions of a new file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)
    os.replace(temp, target)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    with atomic_write(path) as handle:
        handle.write(text.encode("utf-8"))
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (dataclasses become dicts; other objects their ``str``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")
