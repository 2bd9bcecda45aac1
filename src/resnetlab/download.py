"""Downloads that never leave a broken file: progress bar, retries with resume, a checksum, and
a rename into place only when the file is complete and verified.

Bytes go to a hidden ``.NAME.part`` beside the target. A ``.part`` file is kept only after
Ctrl-C, so the next run resumes it (HTTP Range); any other failure removes it. A response
shorter than its Content-Length is an error; without a Content-Length only ``verify`` can tell.
Time-outs are explicit: ``timeout`` seconds without data (connecting or reading) end a try,
and ``retries`` more tries follow; ``$RESNETLAB_DOWNLOAD_TIMEOUT`` and
``$RESNETLAB_DOWNLOAD_RETRIES`` override the defaults.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .console import Bar, say
from .errors import ResnetlabError

CHUNK = 1 << 20
RETRIES = 2  # tries after the first one
RETRY_WAIT_S = 1.0  # doubled after each failed try
TIMEOUT_S = 20.0  # seconds without data, connecting or reading
TIMEOUT_ENV = "RESNETLAB_DOWNLOAD_TIMEOUT"
RETRIES_ENV = "RESNETLAB_DOWNLOAD_RETRIES"


class NetworkError(ResnetlabError):
    """A download that failed for want of a working connection (not a refused file)."""


def download_timeout() -> float:
    """Seconds without data before a try fails: ``$RESNETLAB_DOWNLOAD_TIMEOUT`` or 20."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(text) if text else TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ResnetlabError(f"{TIMEOUT_ENV}={text!r} is not a positive number of seconds; "
                             "set it to e.g. 60 or unset it.")  # fmt: skip
    return value


def download_retries() -> int:
    """Tries after the first failed one: ``$RESNETLAB_DOWNLOAD_RETRIES`` or 2."""
    text = os.environ.get(RETRIES_ENV, "").strip()
    if not text:
        return RETRIES
    if not text.isdigit():
        raise ResnetlabError(f"{RETRIES_ENV}={text!r} is not a whole number >= 0; "
                             "set it to e.g. 5 or unset it.")  # fmt: skip
    return int(text)


def resnetlab_home() -> Path:
    """``$RESNETLAB_HOME``, else the platform's user cache folder + ``resnetlab``."""
    if os.environ.get("RESNETLAB_HOME"):
        return Path(os.environ["RESNETLAB_HOME"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "resnetlab"


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_name(url: str) -> str:
    """The last path component of ``url``."""
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ResnetlabError(f"URL {url} names no file; give the URL of the file itself.")
    return name


def partial_file(target: Path) -> Path:
    """Where an unfinished download of ``target`` is kept so that a later run can resume it."""
    return target.with_name(f".{target.name}.part")


def download(
    url: str,
    target: Path,
    *,
    verify: Callable[[Path], None] | None = None,
    progress: bool = True,
    timeout: float | None = None,
    retries: int | None = None,
) -> Path:
    """Download ``url`` (http(s)://, or file:// copied the same way) to ``target``.

    ``verify(path)`` checks the finished bytes before they take the final name; it raises
    ResnetlabError to refuse them, and then nothing is left behind. ``timeout`` (seconds
    without data) and ``retries`` default to :func:`download_timeout` / :func:`download_retries`.
    """
    target = Path(target)
    timeout = download_timeout() if timeout is None else float(timeout)
    retries = download_retries() if retries is None else int(retries)
    if timeout <= 0 or retries < 0:
        raise ResnetlabError(f"download needs timeout > 0 and retries >= 0, got {timeout} and "
                             f"{retries}.")  # fmt: skip
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResnetlabError(
            f"cannot create folder {target.parent} ({exc}); set RESNETLAB_HOME."
        ) from None
    temp = partial_file(target)
    temp.touch()
    try:
        _download_with_retries(url, temp, target, progress, timeout, retries)
        if verify is not None:
            verify(temp)
        os.replace(temp, target)
    except KeyboardInterrupt:
        size = temp.stat().st_size if temp.exists() else 0
        print(f"download interrupted; {size:,} bytes kept in {temp}, run again to resume",
              file=sys.stderr)  # fmt: skip
        raise
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def _download_with_retries(
    url: str, temp: Path, target: Path, progress: bool, timeout: float, retries: int
) -> None:
    wait = RETRY_WAIT_S
    tries = retries + 1
    host = urllib.parse.urlparse(url).netloc
    for attempt in range(1, tries + 1):
        try:
            _download_once(url, temp, target.name, progress, timeout)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and temp.stat().st_size:  # a stale partial file: start afresh
                temp.write_bytes(b"")
                reason = "HTTP 416"
            elif exc.code < 500 or attempt == tries:
                raise ResnetlabError(
                    f"cannot download {url}: HTTP {exc.code} {exc.reason}; check the URL."
                ) from None
            else:
                reason = f"HTTP {exc.code}"
        except (OSError, http.client.HTTPException) as exc:
            cause = getattr(exc, "reason", exc)
            stalled = isinstance(cause, TimeoutError) or isinstance(exc, TimeoutError)
            reason = f"no data for {timeout:g} s from {host}" if stalled else (
                str(cause) or type(exc).__name__)  # fmt: skip
            if attempt == tries:
                hint = (f"; set {TIMEOUT_ENV}=SECONDS to wait longer or {RETRIES_ENV}=N to try "
                        "more often" if stalled else "")  # fmt: skip
                raise NetworkError(
                    f"cannot download {url} ({reason}, {tries} tr{'y' if tries == 1 else 'ies'})"
                    f"{hint}. Without a network, fetch that file elsewhere and place it at "
                    f"{target}."
                ) from None
        say(f"download of {url} failed ({reason}); retry {attempt}/{retries} in {wait:g} s")
        time.sleep(wait)
        wait *= 2
    raise NetworkError(f"cannot download {url} after {tries} tries; try again later.")


def _download_once(url: str, temp: Path, name: str, progress: bool, timeout: float) -> None:
    """One try; resumes from the bytes already in ``temp`` when the server honours a Range."""
    have = temp.stat().st_size
    headers = {"User-Agent": "resnetlab"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as r:
        if have and getattr(r, "status", 200) != 206:  # the server ignored the Range
            have = 0
        length = r.headers.get("Content-Length", "")
        total = have + int(length) if length.isdigit() else None
        with (
            open(temp, "ab" if have else "wb") as out,
            Bar(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=name, disable=not progress, file=sys.stderr) as bar,
        ):  # fmt: skip
            done = have
            while chunk := r.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
    if total is not None and done < total:
        raise ConnectionError(f"connection closed after {done} of {total} bytes")
