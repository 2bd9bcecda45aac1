"""One voice for everything a command tells its user while it works.

Results (tables, summaries, JSON, the paths written) go to stdout with ``print``; messages
(:func:`say`) and progress bars (:class:`Bar`) go to stderr, and ``--quiet``
(:func:`set_quiet`) silences both. A bar drawn on a terminal is tqdm's; written anywhere else
(a log file, a pipe, a notebook) it is one plain line every 5 % and one at the end, so a log
holds a few lines per bar instead of one carriage-return update per step.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

LINES = 20  # a bar that is not drawn prints a line each 1/LINES of its total (5 %)
UNSIZED_LINE_S = 60.0  # ... or, without a total, at most one line a minute

_quiet = False


def set_quiet(quiet: bool) -> bool:
    """Silence (or restore) messages and progress for this process; returns the old state."""
    global _quiet
    old, _quiet = _quiet, bool(quiet)
    return old


def is_quiet() -> bool:
    """Whether ``--quiet`` is in effect."""
    return _quiet


def say(*parts: object) -> None:
    """One message line on stderr (a choice made, a folder used, a step begun), unless quiet."""
    if not _quiet:
        print(*parts, file=sys.stderr, flush=True)


def on_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (where a bar can redraw itself)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Bar(tqdm):
    """tqdm on stderr, off under ``--quiet``; off a terminal, one line per 5 % and the end.

    Takes tqdm's arguments (``disable=True`` still turns it off); ``drawn`` says which kind
    it is, for code that prints around it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        stream = kwargs.get("file") or sys.stderr
        self.drawn = on_terminal(stream)
        self.printed_n: float | None = None
        self.band, self.printed_at, self.closing = -1, 0.0, False
        kwargs["file"] = stream
        kwargs["disable"] = bool(kwargs.get("disable")) or _quiet
        if not self.drawn:  # every update reaches display(), which keeps one per band
            kwargs.update(mininterval=0, miniters=1)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool | None:
        if self.drawn:
            return super().display(msg, pos)
        if msg is not None or self.n == self.printed_n:
            return False  # nothing to clear or redraw in a log
        now = time.monotonic()
        band = int(self.n * LINES // self.total) if self.total else -1
        due = band != self.band if self.total else now - self.printed_at >= UNSIZED_LINE_S
        if not (due or self.closing):
            return False
        self.band, self.printed_at, self.printed_n = band, now, self.n
        self.fp.write(f"{self}\n")
        self.fp.flush()
        return True

    def clear(self, nolock: bool = False) -> None:
        if self.drawn:
            super().clear(nolock)

    def close(self) -> None:
        if not self.drawn and not getattr(self, "disable", True):  # (also from __del__)
            self.closing = True
            self.display()  # the last line, unless it was just printed
            self.leave = False  # tqdm would end or clear a drawn line; there is none
        super().close()
