"""Downloads into a verified cache: ``$RESNETLAB_HOME/weights``, also reusing torchvision's cache.

Cache layout. A file whose name ends in ``-<hex>.<ext>`` carries the first hex digits of its
SHA-256 (all catalogue files do): it is cached under that name, ``weights/NAME``, checked against
the hash on every use, and may also come from torchvision's cache, which uses the same names.
Any other URL is cached under a folder named after the URL, ``weights/url-<sha256(URL)[:16]>/
NAME``, so two URLs that end in the same file name never share a file; such a file enters the
cache only when its size matches the Content-Length and it reads as a complete weights file
(safetensors header, zip CRCs, or a legacy torch load), and torchvision's cache is not used.

Downloads go to a hidden ``.NAME.part`` file beside their target and are renamed into place only
when complete and verified. A ``.part`` file is kept only after Ctrl-C; the next run resumes it.
Named weights (the catalogue) may instead come from ``$RESNETLAB_WEIGHTS_MIRROR``: a folder
(used in place) or an http(s) URL holding the files under their published names, checked
against the same hashes.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

from ..download import NetworkError, file_digest, file_name, resnetlab_home
from ..download import download as _download
from ..errors import ResnetlabError
from .io import check_weights_file

HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")
MIRROR_ENV = "RESNETLAB_WEIGHTS_MIRROR"


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


def hash_matches(path: Path, sha256: str | None = None) -> bool:
    """True when the file's SHA-256 starts with ``sha256`` or the prefix in its name (if any)."""
    prefix = sha256 or expected_hash(path)
    return prefix is None or file_digest(path).startswith(prefix)


def cache_path(url: str, sha256: str | None = None) -> Path:
    """Where ``url`` is cached: under its name when a hash pins its content, else per URL."""
    name = file_name(url)
    if sha256 or expected_hash(name):
        return weights_dir() / name
    return weights_dir() / f"url-{hashlib.sha256(url.encode()).hexdigest()[:16]}" / name


def cached_file(url: str, *, verify: bool = True, sha256: str | None = None) -> Path | None:
    """The cached copy of ``url`` in resnetlab's or torchvision's cache, if any.

    ``verify=False`` skips hashing (for listings); a copy that fails verification is ignored.
    """
    own = cache_path(url, sha256)
    pinned = bool(sha256 or expected_hash(own))
    for path in (own, torch_cache_dir() / own.name) if pinned else (own,):
        if path.is_file() and (not verify or hash_matches(path, sha256)):
            return path
    return None


def in_cache(path: Path) -> bool:
    """True for files inside resnetlab's own weights cache (which it may move aside)."""
    return Path(path).resolve().is_relative_to(weights_dir().resolve())


def set_aside(path: Path) -> Path:
    """Rename an unreadable cached file to ``NAME.corrupt`` so that it is fetched again."""
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    return aside


def local_file(url: str) -> Path:
    """The path behind a ``file://`` URL, checked to exist and to match its name's hash."""
    path = _file_url_path(url)
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


def fetch_named(url: str, *, sha256: str | None = None, progress: bool = True) -> Path:
    """A verified path for catalogue weights: the cache, else the mirror if set, else ``url``."""
    cached = cached_file(url, sha256=sha256)
    if cached is not None:
        return cached
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return _from_mirror(mirror, url, sha256, progress)
    try:
        return download(url, progress=progress, sha256=sha256)
    except NetworkError as exc:
        raise NetworkError(
            f"{exc} Or set {MIRROR_ENV}=DIR_OR_URL to a folder or server that holds "
            f"{file_name(url)}."
        ) from None


def download(
    url: str,
    folder: Path | None = None,
    *,
    progress: bool = True,
    sha256: str | None = None,
    timeout: float | None = None,
    retries: int | None = None,
) -> Path:
    """Download ``url`` into ``folder`` (default: its cache path), verify it and return its path.

    ``timeout``/``retries``: see :func:`resnetlab.download.download` (environment defaults).
    """
    target = Path(folder) / file_name(url) if folder is not None else cache_path(url, sha256)
    return _download(url, target, verify=lambda path: _verify(path, url, sha256),
                     progress=progress, timeout=timeout, retries=retries)  # fmt: skip


def _from_mirror(mirror: str, url: str, sha256: str | None, progress: bool) -> Path:
    name = file_name(url)
    scheme = urllib.parse.urlparse(mirror).scheme
    if scheme in ("http", "https"):
        source = mirror.rstrip("/") + "/" + urllib.parse.quote(name)
        return _download(source, cache_path(url, sha256), progress=progress,
                         verify=lambda path: _check_mirror(path, source, url, sha256))  # fmt: skip
    folder = _file_url_path(mirror) if scheme == "file" else Path(mirror).expanduser()
    if not folder.is_dir():
        raise ResnetlabError(
            f"{MIRROR_ENV}={mirror} is neither a folder nor an http(s):// URL; point it at the "
            f"folder holding {name}, or unset it."
        )
    path = folder / name
    if not path.is_file():
        raise ResnetlabError(
            f"{MIRROR_ENV}={mirror} has no {name}; copy it there from {url}, or unset "
            f"{MIRROR_ENV} to download it."
        )
    _check_mirror(path, str(path), url, sha256)
    return path


def _check_mirror(path: Path, source: str, url: str, sha256: str | None) -> None:
    expected = sha256 or expected_hash(url)
    actual = file_digest(path)
    if expected is not None and not actual.startswith(expected):
        raise ResnetlabError(
            f"{source} from {MIRROR_ENV} has SHA-256 {actual[:16]}..., expected "
            f"{expected[:16]}...: the mirror holds a wrong or damaged file; replace it with the "
            f"one from {url}."
        )


def _file_url_path(url: str) -> Path:
    parsed = urllib.parse.urlparse(url)
    return Path(urllib.request.url2pathname(parsed.netloc + parsed.path))


def _verify(path: Path, url: str, sha256: str | None) -> None:
    """Hash-pinned files are checked against the hash, any other must read as complete weights."""
    if sha256 or expected_hash(url):
        _check_hash(path, url, sha256)
        return
    try:
        check_weights_file(path, file_name(url))
    except ResnetlabError as exc:
        raise ResnetlabError(
            f"download of {url} is incomplete or not a weights file ({str(exc)[:160]}); nothing "
            "was cached. Try again; if it persists, check the URL."
        ) from None


def _check_hash(path: Path, url: str, sha256: str | None = None) -> None:
    prefix = sha256 or expected_hash(url)
    if prefix is None:
        return
    actual = file_digest(path)
    if not actual.startswith(prefix):
        shown = min(len(prefix), 16)
        raise ResnetlabError(
            f"{url}: SHA-256 {actual[:shown]}... does not match {prefix[:shown]}"
            f"{'...' if shown < len(prefix) else ''} "
            f"{'in the catalogue' if sha256 else 'in its name'}; "
            "the file is corrupt or was replaced; nothing was cached. Try again or check the URL."
        )
