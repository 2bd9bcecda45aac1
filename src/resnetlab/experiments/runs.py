"""Run folders: every experiment writes ``config.json``, ``run.json`` and its results into one.

Files are written to a temporary name in the same folder and moved into place, so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import ResnetlabError
from ..files import atomic_write, write_json, write_text_atomic

RUNS_ROOT = Path("runs")


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows of dicts as CSV (columns in first-seen order) atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def save_figure(fig: Any, path: str | Path, dpi: int = 130) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())
    return Path(path)


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cpu_name() -> str:
    """The processor's model name, as the OS reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(command: str | None = None) -> dict[str, Any]:
    """Where and with what a run was made: CPU/GPU, library versions, date and command."""
    import torch
    import torchvision

    from .. import __version__

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command or " ".join(sys.argv),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "resnetlab": __version__,
    }


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
    config_dict = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
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
    write_json(previous, config_dict)
    write_json(run_dir / "run.json", machine_info(command))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a truncated last line (interrupted write) is ignored."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record to a JSON-lines file (used to resume interrupted experiments)."""
    torn = False
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
    with path.open("a") as handle:
        if torn:  # an interrupted write left half a line: end it so the next record stays whole
            handle.write("\n")
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
