"""Fetch a data archive once, checked against its published MD5 (CIFAR's authors publish MD5s)."""

from __future__ import annotations

from pathlib import Path

from .. import download as _download
from ..errors import ResnetlabError


def download(
    url: str,
    dest: Path,
    md5: str | None = None,
    *,
    progress: bool = True,
    timeout: float | None = None,
    retries: int | None = None,
) -> Path:
    """``dest`` if it is already there, else ``url`` downloaded to it with its MD5 verified.

    ``timeout``/``retries``: see :func:`resnetlab.download.download` (environment defaults).
    """
    dest = Path(dest)
    if dest.is_file():
        return dest

    def check_md5(path: Path) -> None:
        actual = _download.file_digest(path, "md5")
        if md5 is not None and actual != md5:
            raise ResnetlabError(
                f"download of {url} has MD5 {actual}, expected {md5}; the file is corrupt or "
                "changed upstream: try again or fetch it by hand"
            )

    return _download.download(
        url, dest, verify=check_md5, progress=progress, timeout=timeout, retries=retries
    )
