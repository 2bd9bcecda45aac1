"""Read files from .tar/.tar.gz/.tgz/.tar.bz2/.tar.xz/.zip archives in memory, or extract them.

Only regular files and folders are ever read or written. Links (symbolic or hard), devices
and fifos are refused with an error naming the member, and so are absolute names and ``..``
components; every file is written here (never by ``extractall`` or its ``filter``, which older
interpreters lack or get wrong), with ``O_EXCL | O_NOFOLLOW``, under folders this code made,
each checked to resolve inside the target. What a member and a whole archive may inflate to
is bounded (declared sizes first, then the bytes actually read); a truncated or corrupt
archive is one "re-download it" error.
"""

from __future__ import annotations

import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO

from ..errors import ResnetlabError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
MAX_MEMBER_BYTES = 256 * 2**20  # one member, inflated; RESNETLAB_MAX_MEMBER_MIB overrides
MAX_ARCHIVE_BYTES = 64 * 2**30  # all members together; RESNETLAB_MAX_ARCHIVE_GIB overrides
CHUNK = 2**20
# What truncated or corrupt archives raise from the standard library's readers.
READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    RuntimeError,  # zip: encrypted member
    NotImplementedError,  # zip: unsupported compression
)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)


def is_archive(path: Path) -> bool:
    """True when the file name ends in a supported archive suffix."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def limits() -> tuple[int, int]:
    """(bytes per member, bytes per archive): the module constants unless the environment's
    ``RESNETLAB_MAX_MEMBER_MIB`` / ``RESNETLAB_MAX_ARCHIVE_GIB`` raise or lower them."""
    values = []
    for var, unit, default in (
        ("RESNETLAB_MAX_MEMBER_MIB", 2**20, MAX_MEMBER_BYTES),
        ("RESNETLAB_MAX_ARCHIVE_GIB", 2**30, MAX_ARCHIVE_BYTES),
    ):
        text = os.environ.get(var, "").strip()
        if not text:
            values.append(default)
            continue
        try:
            values.append(int(float(text) * unit))
        except ValueError:
            raise ResnetlabError(f"{var}={text!r} is not a number; set it to e.g. 1024") from None
    return values[0], values[1]


def _mib(n: int) -> str:
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB"


def _refuse(archive: Path, raw: str, why: str) -> ResnetlabError:
    return ResnetlabError(
        f"{archive}: member {raw!r} {why}; refusing to use this archive; get a clean copy"
    )


def safe_member_name(archive: Path, name: str) -> str:
    """The member's normalised relative POSIX name, or an error if it could escape the target."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise _refuse(archive, name, "has an absolute path")
    if ".." in clean.split("/"):
        raise _refuse(archive, name, "points outside the archive folder ('..')")
    if "\0" in clean:
        raise _refuse(archive, name, "has a NUL byte in its name")
    norm = posixpath.normpath(clean)
    return "" if norm == "." else norm


@dataclass
class Member:
    """One regular file or folder of an archive: its safe name, raw name and declared size."""

    name: str
    raw: str
    is_dir: bool
    size: int
    open: Callable[[], IO[bytes]] | None


class Budget:
    """Bytes one archive has declared and really inflated so far, against ``limits()``."""

    def __init__(self, archive: Path):
        self.archive = archive
        self.member_limit, self.archive_limit = limits()
        self.declared = self.inflated = 0

    def declare(self, member: Member) -> None:
        if member.size > self.member_limit:
            raise self._too_big(member, self.member_limit, "per-member", "MEMBER_MIB")
        self.declared += member.size
        if self.declared > self.archive_limit:
            raise self._too_big(member, self.archive_limit, "whole-archive", "ARCHIVE_GIB")

    def inflate(self, member: Member, read_so_far: int, chunk: int) -> None:
        self.inflated += chunk
        if read_so_far > self.member_limit:
            raise self._too_big(member, self.member_limit, "per-member", "MEMBER_MIB")
        if self.inflated > self.archive_limit:
            raise self._too_big(member, self.archive_limit, "whole-archive", "ARCHIVE_GIB")

    def _too_big(self, member: Member, limit: int, which: str, var: str) -> ResnetlabError:
        return ResnetlabError(
            f"{self.archive}: member {member.raw!r} inflates past the {which} limit of "
            f"{_mib(limit)} (a zip/tar bomb?); refusing it; if the archive is trusted, raise "
            f"RESNETLAB_MAX_{var}"
        )


def _special(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symlink to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    kinds = [("character device", member.ischr()), ("block device", member.isblk())]
    kinds.append(("fifo", member.isfifo()))
    return next((k for k, yes in kinds if yes), f"special member (type {member.type!r})")


def _entries(archive: Path, budget: Budget) -> Iterator[Member]:
    """The archive's folders and regular files in order; anything else is an error."""
    refused = "is a {}; only regular files and folders are extracted"
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = safe_member_name(archive, info.filename)
                mode = info.external_attr >> 16
                kind = stat.S_IFMT(mode)
                if info.is_dir() or kind == stat.S_IFDIR:
                    yield Member(name, info.filename, True, 0, None)
                elif kind not in (0, stat.S_IFREG):  # 0: written on Windows, no Unix mode
                    what = "symlink" if stat.S_ISLNK(mode) else f"special file (mode {mode:o})"
                    raise _refuse(archive, info.filename, refused.format(what))
                else:
                    member = Member(name, info.filename, False, info.file_size,
                                    partial(zf.open, info))  # fmt: skip
                    budget.declare(member)
                    yield member
        return
    with tarfile.open(archive, "r:*") as tf:
        for entry in tf:
            name = safe_member_name(archive, entry.name)
            if entry.isdir():
                yield Member(name, entry.name, True, 0, None)
            elif entry.isreg():
                member = Member(name, entry.name, False, entry.size,
                                partial(_tar_reader, tf, entry))  # fmt: skip
                budget.declare(member)
                yield member
            else:
                raise _refuse(archive, entry.name, refused.format(_special(entry)))


def _tar_reader(tf: tarfile.TarFile, entry: tarfile.TarInfo) -> IO[bytes]:
    handle = tf.extractfile(entry)
    assert handle is not None, "only regular members are read"
    return handle


@contextmanager
def _reading(archive: Path) -> Iterator[None]:
    """Turn the readers' truncation and corruption errors into one re-download line."""
    try:
        yield
    except READ_ERRORS as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ResnetlabError(
            f"{archive}: cannot read archive, truncated or corrupt ({reason}); re-download it"
        ) from exc


def copy_member(member: Member, sink: Callable[[bytes], object], budget: Budget) -> int:
    """Stream a regular member's bytes to ``sink``, counting them against ``budget``."""
    read = 0
    assert member.open is not None, "folders have no bytes"
    with member.open() as handle:
        # Ask for about what is left: a 1 MiB request per small member costs a 1 MiB buffer.
        while chunk := handle.read(min(CHUNK, max(member.size - read, 0) + 2**16)):
            read += len(chunk)
            budget.inflate(member, read, len(chunk))
            sink(chunk)
    return read


def _read_bytes(archive: Path, member: Member, budget: Budget) -> bytes:
    parts: list[bytes] = []
    with _reading(archive):
        copy_member(member, parts.append, budget)
    return b"".join(parts)


def iter_files(archive: Path) -> Iterator[tuple[str, Callable[[], bytes] | None]]:
    """Yield (relative name, reader) for regular files and (name, None) for folders, in order.

    Call the reader before advancing to read the member's bytes (a tar is read as a stream).
    """
    archive = Path(archive)
    budget = Budget(archive)
    with _reading(archive):
        for member in _entries(archive, budget):
            if member.is_dir:
                yield member.name, None
            else:
                yield member.name, partial(_read_bytes, archive, member, budget)


def _inside(root: Path, path: Path, archive: Path, raw: str) -> None:
    if not path.resolve().is_relative_to(root):
        raise _refuse(archive, raw, f"resolves to {path.resolve()}, outside the target")


def _write_member(archive: Path, root: Path, member: Member, budget: Budget) -> None:
    """Create the member's folders one by one, then the file itself, never through a link."""
    parts = member.name.split("/")
    folder = root
    for part in parts if member.is_dir else parts[:-1]:
        folder = folder / part
        with suppress(FileExistsError):
            folder.mkdir()
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            raise _refuse(archive, member.raw, f"needs folder {part!r}, which is a file")
        _inside(root, folder, archive, member.raw)
    if member.is_dir:
        return
    path = folder / parts[-1]
    _inside(root, path, archive, member.raw)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        raise _refuse(archive, member.raw, "appears twice or clashes with a folder") from None
    with os.fdopen(fd, "wb") as out:

        def sink(chunk: bytes) -> None:
            try:
                out.write(chunk)
            except OSError as exc:
                raise _write_error(archive, member, exc) from exc

        copy_member(member, sink, budget)


def _write_error(archive: Path, member: Member, exc: OSError) -> ResnetlabError:
    return ResnetlabError(
        f"{archive}: cannot write member {member.raw!r} ({exc.strerror or exc}); free disk "
        "space or check the target folder's permissions"
    )


def extract(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into ``target`` (atomically: a temp folder renamed at the end)."""
    archive, target = Path(archive), Path(target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        root = tmp.resolve()
        budget = Budget(archive)
        with _reading(archive):
            for member in _entries(archive, budget):
                if member.name:
                    _write(archive, root, member, budget)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write(archive: Path, root: Path, member: Member, budget: Budget) -> None:
    """``_write_member`` with write failures (disk full, name too long) as their own error,
    kept apart from read failures, which mean a bad archive."""
    try:
        _write_member(archive, root, member, budget)
    except ResnetlabError:
        raise
    except OSError as exc:
        if exc.filename is None:  # raised by the archive's reader inside copy_member
            raise
        raise _write_error(archive, member, exc) from exc
