"""The run's progress on stderr (rank 0): a bar (:class:`~resnetlab.console.Bar`: drawn on a
terminal, a line every 5 % in a log), or one plain line per log interval; none under --quiet.

The bar's loss and error are this process's means over the current log interval so far, read
from the device meters at most once a second (one host sync a second, none per step); at each
log interval they become the interval's logged means over all ranks. The lr is the schedule's,
computed on the host. With the bar off (``--no-progress``) each log record is one line with the
step, loss, error, lr, last validation error, images/s and the time left.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from ..console import Bar, is_quiet

PEEK_S = 1.0  # seconds between the bar's reads of the device meters


class Progress:
    """``mode`` "bar", "lines" or "off"; ``step()`` after every update, ``logged()`` per record."""

    def __init__(self, total: int, initial: int, mode: str) -> None:
        mode = "off" if is_quiet() else mode
        self.total, self.mode, self.file = total, mode, sys.stderr
        self.bar = Bar(total=total, initial=initial, disable=mode != "bar", unit="it",
                       dynamic_ncols=True, desc="train", file=self.file)  # fmt: skip
        self.start = (time.perf_counter(), initial)
        self.peeked_at = time.perf_counter()

    def step(self, meters: Any, lr: float, last_eval: dict[str, Any]) -> None:
        """Advance the bar; about once a second show the interval's means so far."""
        self.bar.update(1)
        now = time.perf_counter()
        if self.mode != "bar" or now - self.peeked_at < PEEK_S:
            return
        self.peeked_at = now
        means = meters.peek()
        if means is not None:
            self._postfix(means["loss"], means["error"], lr, last_eval)

    def logged(self, record: dict[str, Any], last_eval: dict[str, Any]) -> None:
        """A train record was written: show its means (bar) or print it as one line."""
        if self.mode == "bar":
            self._postfix(record["loss"], record["error"], record["lr"], last_eval)
        elif self.mode == "lines":
            step = record["step"]
            seconds, done = time.perf_counter() - self.start[0], step - self.start[1]
            left = (self.total - step) * seconds / done if done > 0 else 0.0
            val = last_eval.get("val_error", last_eval.get("test_error"))
            val_text = f"  val err {100 * val:.2f}%" if val is not None else ""
            print(f"step {step}/{self.total}  loss {record['loss']:.4f}  err "
                  f"{100 * record['error']:.2f}%  lr {record['lr']:.4g}{val_text}  "
                  f"{record['images_per_s']:,.0f} img/s  ETA {tqdm.format_interval(left)}",
                  file=self.file, flush=True)  # fmt: skip

    def _postfix(self, loss: float, error: float, lr: float, last_eval: dict[str, Any]) -> None:
        shown = {"loss": f"{loss:.4f}", "err": f"{100 * error:.1f}%", "lr": f"{lr:.3g}"}
        if "val_error" in last_eval:
            shown["val_err"] = f"{100 * last_eval['val_error']:.1f}%"
        self.bar.set_postfix(shown, refresh=False)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around hooks that may print: a drawn bar is cleared and redrawn after (a bar in a
        log writes whole lines, so what they print starts a line of its own anyway)."""
        if self.mode != "bar" or self.bar.disable or not self.bar.drawn:
            yield
            return
        self.bar.clear()
        try:
            yield
        finally:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
