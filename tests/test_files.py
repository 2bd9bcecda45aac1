"""Atomic writes: a failure leaves the old file and no temporary file behind."""

from __future__ import annotations

import errno
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from resnetlab import files
from resnetlab.errors import ResnetlabError
from resnetlab.files import atomic_write, write_json, write_text_atomic

ROOM = 64  # bytes a file on the full disk gets before ENOSPC


class _FullDiskFile(io.FileIO):
    """A file on a disk with ``ROOM`` bytes left: a write past them raises ENOSPC as the OS does
    (after writing what fits), so a writer such as ``torch.save`` reacts as it really would."""

    room = ROOM

    def write(self, data) -> int:  # type: ignore[override]
        if len(data) > self.room:
            if self.room:
                written, self.room = super().write(bytes(data)[: self.room]), 0
                return written or 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return super().write(data) or 0


def fill_disk(monkeypatch, full: Callable[[Path], bool] = lambda temp: True) -> None:
    """Make every atomic write whose temporary file ``full(temp)`` names land on a full disk."""
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen
    temps: dict[int, Path] = {}

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        temps[fd] = Path(name)
        return fd, name

    def fdopen(fd, mode="r", *args, **kwargs):
        temp = temps.pop(fd, None)
        if temp is None or mode != "wb" or not full(temp):
            return real_fdopen(fd, mode, *args, **kwargs)
        return io.BufferedWriter(_FullDiskFile(fd, "w"))

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(files.os, "fdopen", fdopen)


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path) -> None:
    target = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_new_files_get_normal_permissions_and_folders(tmp_path) -> None:
    path = write_json(tmp_path / "deep" / "x.json", {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    target = write_text_atomic(tmp_path / "a.txt", "old")
    fill_disk(monkeypatch)
    with pytest.raises(ResnetlabError) as err:
        write_text_atomic(target, "new " * 1000)
    message = str(err.value)
    assert "\n" not in message and "no space left" in message and "a.txt" in message
    assert "keeps its previous content" in message
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    with pytest.raises(ResnetlabError, match="nothing was written"):
        write_json(tmp_path / "b.json", {"a": "x" * 1000})
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_other_write_errors_are_not_called_a_full_disk(tmp_path) -> None:
    with pytest.raises(OSError, match="bad sector"), atomic_write(tmp_path / "a.bin") as handle:
        handle.write(b"x")
        raise OSError(errno.EIO, "bad sector")
    assert list(tmp_path.iterdir()) == []
