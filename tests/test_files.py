"""Atomic writes: a failure leaves the old file and no temporary file behind."""

from __future__ import annotations

import os

import pytest

from resnetlab.files import atomic_write, write_json, write_text_atomic


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
