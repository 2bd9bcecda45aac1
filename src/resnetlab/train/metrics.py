"""The run folder's records (``metrics.jsonl`` + ``metrics.csv``) and the device-side meters.

Each record is one dict (``kind`` "train" or "eval", ``step``, losses, errors, lr, images/s).
The JSON-lines file is the source of truth; the CSV holds the same rows under the union of
all keys seen (rewritten when a new key appears). On resume, records past the checkpoint's
step are dropped so the folder reads as if the run had never stopped.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from .. import runfolder
from ..files import write_text_atomic
from .distributed import Dist, all_reduce_max, all_reduce_sum

FIRST_COLUMNS = ["kind", "step", "epoch", "lr", "loss", "error", "images_per_s", "time_s"]


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and keeps ``metrics.csv`` in step with it."""

    def __init__(self, folder: Path, *, keep_until_step: int | None = None) -> None:
        self.jsonl = folder / "metrics.jsonl"
        self.csv = folder / "metrics.csv"
        self.records: list[dict[str, Any]] = []
        if keep_until_step is not None:  # a line cut short by a crash is left out
            kept = runfolder.read_jsonl(self.jsonl)
            self.records = [r for r in kept if r.get("step", 0) <= keep_until_step]
        self.columns = list(FIRST_COLUMNS)
        for record in self.records:
            self._add_columns(record)
        write_text_atomic(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.records))
        self._rewrite_csv()

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        runfolder.append_jsonl(self.jsonl, record)
        if self._add_columns(record):
            self._rewrite_csv()
        else:
            with open(self.csv, "a", newline="") as f:
                csv.DictWriter(f, self.columns, lineterminator="\n").writerow(record)

    def _add_columns(self, record: dict[str, Any]) -> bool:
        new = [k for k in record if k not in self.columns]
        self.columns += new
        return bool(new)

    def _rewrite_csv(self) -> None:
        runfolder.write_csv(self.csv, self.records, self.columns)


class Meters:
    """Training sums kept on the device, so a step never waits for the host.

    ``first_bad`` records the first step whose loss was NaN or Inf (-1: none yet); ``read``
    synchronises once per log interval, sums over ranks, and starts the next interval.
    """

    def __init__(self, device: torch.device, step: int) -> None:
        self.step = torch.tensor(step, dtype=torch.int64, device=device)
        self.first_bad = torch.tensor(-1, dtype=torch.int64, device=device)
        self.sums: dict[str, torch.Tensor] = {
            k: torch.zeros((), dtype=torch.float64, device=device) for k in ("loss", "error", "n")
        }

    @torch.no_grad()
    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, extra=None) -> None:
        n = y.shape[0]
        self.sums["loss"].add_(loss.detach() * n)
        self.sums["error"].add_((logits.detach().argmax(1) != y).sum())
        self.sums["n"].add_(n)
        for key, value in (extra or {}).items():
            if key not in self.sums:
                self.sums[key] = torch.zeros((), dtype=torch.float64, device=self.step.device)
            self.sums[key].add_(value.detach() * n)
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(bad, self.step, self.first_bad))
        self.step.add_(1)

    def tensors(self) -> list[torch.Tensor]:
        return [self.step, self.first_bad, *self.sums.values()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"step": self.step, "first_bad": self.first_bad, **self.sums}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.step.copy_(state["step"])
        self.first_bad.copy_(state["first_bad"])
        for key in state.keys() - {"step", "first_bad"}:
            target = self.sums.setdefault(key, torch.zeros_like(self.step, dtype=torch.float64))
            target.copy_(state[key])

    def bad_step(self, dist: Dist) -> int | None:
        """The first step whose loss was NaN or Inf, on any rank; None while all are finite."""
        step = all_reduce_max(self.first_bad.clone(), dist).item()
        return None if step < 0 else int(step)

    def peek(self) -> dict[str, float] | None:
        """This process's mean loss and error since the last read, left in place (one host
        sync, no collective); None when no step was added since."""
        loss, error, n = torch.stack([self.sums[k] for k in ("loss", "error", "n")]).tolist()
        return None if n == 0 else {"loss": loss / n, "error": error / n}

    def read(self, dist: Dist) -> dict[str, float]:
        """Means since the last read, over all ranks; then reset to zero."""
        keys = list(self.sums)
        values = all_reduce_sum(torch.stack([self.sums[k] for k in keys]), dist).tolist()
        n = max(values[keys.index("n")], 1.0)
        for t in self.sums.values():
            t.zero_()
        return {k: v / n for k, v in zip(keys, values, strict=True) if k != "n"}
