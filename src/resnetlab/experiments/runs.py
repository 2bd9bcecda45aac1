"""The run-folder helpers of :mod:`.runner` under their older names (``new_run_dir`` creates
the folder; :func:`.runner.run_study` does all of this for a study)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import runfolder
from ..files import write_json
from ..runfolder import append_jsonl, read_jsonl, write_csv
from .runner import pyplot, run_folder, save_figure, start

__all__ = ["append_jsonl", "finish_run", "new_run_dir", "pyplot", "read_jsonl", "save_figure",
           "start_run", "write_csv", "write_json"]  # fmt: skip


def new_run_dir(experiment: str, out: str | Path | None = None, *, resume: bool = False) -> Path:
    """``out`` or ``runs/<experiment>-<time>``, created; a non-empty ``out`` needs ``resume``."""
    path = run_folder(experiment, out, resume=resume)
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_run(run_dir: Path, config: Any, command: str | None = None) -> None:
    """Write ``config.json`` and ``run.json``; a resumed run must have the same config."""
    start(run_dir, config, command=command)


def finish_run(run_dir: Path, status: str = "completed") -> None:
    """Record in ``run.json`` that the experiment ended (status, finish time, wall time)."""
    runfolder.finish(run_dir, status)
