"""Read files from .tar/.tar.gz/.tgz/.zip archives in memory, or extract them safely.

No member may land outside the target folder: absolute names, ``..`` components and links
that point outside are refused with an error, before anything is written.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import ResnetlabError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")


def is_archive(path: Path) -> bool:
    """True when the file name ends in a supported archive suffix."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def safe_member_name(archive: Path, name: str) -> str:
    """The member's normalised relative POSIX name, or an error if it could escape the target."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise ResnetlabError(
            f"{archive}: member {name!r} has an absolute path; "
            "refusing to use this archive; get a clean copy"
        )
    norm = posixpath.normpath(clean)
    if norm == ".." or norm.startswith("../") or ".." in clean.split("/"):
        raise ResnetlabError(
            f"{archive}: member {name!r} points outside the archive folder ('..'); "
            "refusing to use this archive; get a clean copy"
        )
    return "" if norm == "." else norm


def _check_link(archive: Path, member: tarfile.TarInfo, name: str) -> None:
    target = member.linkname.replace("\\", "/")
    if member.issym():
        target = posixpath.join(posixpath.dirname(name), target)
    norm = posixpath.normpath(target)
    if target.startswith("/") or norm == ".." or norm.startswith("../"):
        kind = "symlink" if member.issym() else "hard link"
        raise ResnetlabError(
            f"{archive}: member {member.name!r} is a {kind} to {member.linkname!r} outside the "
            "archive folder; refusing to use this archive; get a clean copy"
        )


def iter_files(archive: Path) -> Iterator[tuple[str, Callable[[], bytes] | None]]:
    """Yield (relative name, reader) for regular files and (name, None) for folders, in order.

    Call the reader before advancing to read the member's bytes (a tar is read as a stream).
    """
    archive = Path(archive)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    name = safe_member_name(archive, info.filename)
                    yield name, None if info.is_dir() else (lambda i=info: zf.read(i))
            return
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                name = safe_member_name(archive, member.name)
                if member.issym() or member.islnk():
                    _check_link(archive, member, name)
                elif member.isdir():
                    yield name, None
                elif member.isreg():
                    yield name, lambda m=member: tf.extractfile(m).read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ResnetlabError(f"{archive}: cannot read archive ({exc}); re-download it") from exc


def extract(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into ``target`` (atomically: a temp folder renamed at the end)."""
    archive, target = Path(archive), Path(target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    safe_member_name(archive, info.filename)
                zf.extractall(tmp)
        else:
            with tarfile.open(archive, "r:*") as tf:
                members = tf.getmembers()
                for member in members:
                    name = safe_member_name(archive, member.name)
                    if member.issym() or member.islnk():
                        _check_link(archive, member, name)
                # The "data" filter is a second guard: it also drops device files and
                # unsafe permission bits.
                tf.extractall(tmp, members=members, filter="data")
        os.replace(tmp, target)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise ResnetlabError(f"{archive}: cannot extract ({exc}); re-download it") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
