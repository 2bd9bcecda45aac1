"""Downloads into a verified cache: ``$RESNETLAB_HOME/weights``, also reusing torchvision's cache.

A file whose name ends in ``-<hex>.<ext>`` carries the first hex digits of its SHA-256; it is
checked before use. Downloads go to a hidden ``.NAME.part`` file in the cache folder and are
renamed into place only when complete and verified, so the cache never holds a half-written
file under a real name. A ``.part`` file is kept only after Ctrl-C; the next run resumes it.
"""

from __future__ import annotations

import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

from ..download import download as _download
from ..download import file_digest, file_name, resnetlab_home
from ..errors import ResnetlabError

HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")


def weights_dir() -> Path:
    return resnetlab_home() / "weights"


def torch_cache_dir() -> Path:
    """torchvision's download cache, ``$TORCH_HOME/hub/checkpoints``."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "hub" / "checkpoints"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "torch" / "hub" / "checkpoints"


def expected_hash(path_or_name: str | Path) -> str | None:
    """The SHA-256 prefix carried by a file name such as ``resnet50-0676ba61.pth``, if any."""
    match = HASH_IN_NAME.search(Path(path_or_name).name)
    return match.group(1) if match else None


def hash_matches(path: Path) -> bool:
    """True when the file's SHA-256 starts with the prefix in its name (or the name has none)."""
    prefix = expected_hash(path)
    return prefix is None or file_digest(path).startswith(prefix)


def cached_file(url: str, *, verify: bool = True) -> Path | None:
    """The cached copy of ``url`` in resnetlab's or torchvision's cache, if any.

    ``verify=False`` skips hashing (for listings); a copy that fails verification is ignored.
    """
    name = file_name(url)
    for folder in (weights_dir(), torch_cache_dir()):
        path = folder / name
        if path.is_file() and (not verify or hash_matches(path)):
            return path
    return None


def local_file(url: str) -> Path:
    """The path behind a ``file://`` URL, checked to exist and to match its name's hash."""
    parsed = urllib.parse.urlparse(url)
    path = Path(urllib.request.url2pathname(parsed.netloc + parsed.path))
    if not path.is_file():
        raise ResnetlabError(f"{url}: no such file {path}; check the path in the URL.")
    _check_hash(path, url)
    return path


def fetch(url: str, *, progress: bool = True) -> Path:
    """A local, verified path for ``url`` (``file://`` or ``http(s)://``), downloading if needed."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme == "file":
        return local_file(url)
    if scheme not in ("http", "https"):
        raise ResnetlabError(f"cannot fetch {url}: use an http(s):// or file:// URL, or a path.")
    return cached_file(url) or download(url, progress=progress)


def download(url: str, folder: Path | None = None, *, progress: bool = True) -> Path:
    """Download ``url`` into ``folder`` (the weights cache), verify it and return its path."""
    target = (folder or weights_dir()) / file_name(url)
    return _download(url, target, verify=lambda path: _check_hash(path, url), progress=progress)


def _check_hash(path: Path, url: str) -> None:
    prefix = expected_hash(url)
    if prefix is None:
        return
    actual = file_digest(path)
    if not actual.startswith(prefix):
        raise ResnetlabError(
            f"{url}: SHA-256 {actual[: len(prefix)]}... does not match {prefix} in its name; "
            "the file is corrupt or was replaced; nothing was cached. Try again or check the URL."
        )
