"""Atomic file writes (a crash or an error never leaves a half-written file under a real name)
and the lock that keeps one run per run folder."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ResnetlabError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt


OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file beside ``path``; on success it is synced and renamed onto ``path``
    (with the permissions a new file would get), on any error it is removed, so ``path``
    keeps its previous content. A full disk is one :class:`ResnetlabError` that says so,
    whatever the writer turned it into (``torch.save`` raises "unexpected pos")."""
    path = Path(path)
    temp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        move_into_place(temp, path)
    except (OSError, RuntimeError) as error:
        if _out_of_space(error):
            kept = "it keeps its previous content" if path.exists() else "nothing was written"
            raise ResnetlabError(
                f"no space left on the device; free some space or choose another folder, then "
                f"run again (while writing {path.name} in {path.parent}; {kept})."
            ) from error
        raise
    finally:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)


def _out_of_space(error: BaseException | None) -> bool:
    """Whether ``error`` or an error it was raised from is a full disk or quota."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in OUT_OF_SPACE:
            return True
        error = error.__cause__ or error.__context__
    return False


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


LOCK_NAME = ".resnetlab.lock"


class RunLock:
    """An exclusive lock on a run folder, held for the run's life and released by the OS when
    the process ends, even by ``kill -9``; a second run into the same folder is refused.

    Re-entrant within one process (the fine-tuner locks its folder, then each phase its own).
    A folder the lock created and that holds nothing else when the run ends is removed, so a
    run refused before it wrote anything leaves nothing behind.
    """

    _held: dict[Path, int] = {}

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.key: Path | None = None
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise ResnetlabError(
                f"{self.folder} is a file, not a run folder; choose another --out."
            )
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = self.folder.resolve()
        if self.key in RunLock._held:
            RunLock._held[self.key] += 1
            return self
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            owner = _owner(fd)
            os.close(fd)
            raise ResnetlabError(
                f"run folder {self.folder} is in use by {owner}; wait for that run to end or "
                "choose another --out."
            )
        line = f"process {os.getpid()}\n".encode()
        os.pwrite(fd, line, 0)  # write, then cut: a reader never finds the file empty
        os.ftruncate(fd, len(line))
        self.fd = fd
        RunLock._held[self.key] = 1
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.key is not None
        RunLock._held[self.key] -= 1
        if RunLock._held[self.key] == 0:
            del RunLock._held[self.key]
            if self.fd is None:
                return
            if self.created and [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
                (self.folder / LOCK_NAME).unlink()  # still locked: no one can be using it
                self.folder.rmdir()
            os.close(self.fd)  # releases the lock; a kept lock file is never unlinked later


def _owner(fd: int) -> str:
    """Who holds a lock file, as its owner wrote it; waits up to a second for a new owner."""
    for _ in range(20):
        owner = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if owner:
            return owner
        time.sleep(0.05)
    return "another process"


def _try_lock(fd: int) -> bool:
    """Take an exclusive, non-blocking lock on an open file; False when someone holds it."""
    if fcntl is None:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left (call with the lock held)."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
