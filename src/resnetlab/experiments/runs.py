"""Run folders: every experiment writes ``config.json``, ``run.json`` (``resnetlab.runfolder``)
and its results into one.

Files are written to a temporary name in the same folder and moved into place, so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from .. import runfolder
from ..errors import ResnetlabError
from ..figures import pyplot, save_figure
from ..files import write_json
from ..runfolder import RUNS_ROOT, append_jsonl, read_jsonl, write_csv

__all__ = ["append_jsonl", "finish_run", "new_run_dir", "pyplot", "read_jsonl", "save_figure",
           "start_run", "write_csv", "write_json"]  # fmt: skip



def new_run_dir(experiment: str, out: str | Path | None = None, *, resume: bool = False) -> Path:
    """``out`` or ``runs/<experiment>-<UTC time>``; a non-empty ``out`` needs ``resume``."""
    if out is None and resume:
        raise ResnetlabError("--resume needs the folder to continue. Pass it with --out.")
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = RUNS_ROOT / f"{experiment}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = RUNS_ROOT / f"{experiment}-{stamp}-{suffix}"
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ResnetlabError(f"{path} is a file, not a folder. Pass a folder to --out.")
        if path.is_dir() and any(path.iterdir()) and not resume:
            raise ResnetlabError(
                f"run folder {path} is not empty. Pass --resume to continue it, or another --out."
            )
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_run(run_dir: Path, config: Any, command: str | None = None) -> None:
    """Write ``config.json`` and ``run.json``; a resumed run must have the same config."""
    is_instance = dataclasses.is_dataclass(config) and not isinstance(config, type)
    config_dict = dataclasses.asdict(config) if is_instance else dict(config)
    config_dict = json.loads(json.dumps(config_dict, default=str))
    previous = run_dir / "config.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        if old != config_dict:
            changed = sorted(
                k for k in set(old) | set(config_dict) if old.get(k) != config_dict.get(k)
            )
            raise ResnetlabError(
                f"{run_dir} was started with other settings ({', '.join(changed)}). "
                "Use the same settings to resume, or another --out."
            )
    resumed = previous.is_file()
    write_json(previous, config_dict)
    runfolder.start(run_dir, command=command, resume=resumed)


def finish_run(run_dir: Path, status: str = "completed") -> None:
    """Record in ``run.json`` that the experiment ended (status, finish time, wall time)."""
    runfolder.finish(run_dir, status)
