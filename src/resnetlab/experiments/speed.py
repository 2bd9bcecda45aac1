"""Throughput over repeats for the comparison table: median, min–max, and what they resolve.

Every model is timed ``repeats`` times, round by round (models interleaved), so a change in the
machine's load during the run hits every model alike instead of one; each timing is one
measurement of the comparison study, so an interrupted measurement resumes where it stopped.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..analysis.throughput import measure_throughput
from ..groups import device_name


@dataclass(frozen=True)
class Spread:
    """A timing over repeats: the median and the range (min–max) of the repeats."""

    median: float
    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low


def spread_of(values: list[float]) -> Spread:
    """Median and min–max of the repeats of one measurement."""
    return Spread(statistics.median(values), min(values), max(values))


def unresolved(a: Spread, b: Spread) -> bool:
    """True when the larger spread of the two is at least the difference of their medians, so
    the measurement does not tell which of the two is faster."""
    return max(a.width, b.width) >= abs(a.median - b.median)


MODES = ("forward", "train")


def time_model(model: nn.Module, mode: str, config: Any) -> dict[str, Any]:
    """One timing of ``model`` in ``mode`` with the comparison's settings: images per second,
    the device and the precision."""
    result = measure_throughput(
        model, mode=mode, batch=config.batch_size, input_size=config.image_size,
        iters=config.timing_iters, warmup=config.timing_warmup, device=device_name(config.device),
    )  # fmt: skip
    model.zero_grad(set_to_none=True)
    return {"img_s": result.images_per_s, "device": result.device, "precision": result.precision}


def add_speeds(rows: list[dict], timings: list[dict]) -> list[dict]:
    """Median and min–max of each model's repeats into its row, and a flag per figure that is
    not resolved against another model's (its spread at least the difference)."""
    spreads: dict[str, dict[str, Spread]] = {}
    for row in rows:
        spreads[row["model"]] = {}
        for mode in MODES:
            key = (row["model"], mode)
            values = [t["img_s"] for t in timings if (t["model"], t["mode"]) == key]
            spread = spreads[row["model"]][mode] = spread_of(values)
            row |= {f"{mode}_img_s": round(spread.median, 4),
                    f"{mode}_img_s_min": round(spread.low, 4),
                    f"{mode}_img_s_max": round(spread.high, 4)}  # fmt: skip
        row["repeats"] = len(values)
        first = next(t for t in timings if t["model"] == row["model"])
        row["speed_device"], row["precision"] = first["device"], first["precision"]
    for row in rows:
        for mode in MODES:
            mine = spreads[row["model"]][mode]
            row[f"{mode}_unresolved"] = any(
                unresolved(mine, other[mode]) for name, other in spreads.items()
                if name != row["model"]
            )  # fmt: skip
    return rows
