"""One run folder's ``run.json`` in one shape, and the one way to read JSON lines, write CSV and
record the command line, for the engine, every experiment, the fine-tuner and the report.

``run.json`` (``schema`` 1)::

    {"schema": 1, "command": "resnetlab train ...", "status": "running" | "completed" | ...,
     "machine": {"cpu", "cpu_count", "torch_threads", "device", "gpu", "world_size", "platform"},
     "versions": {"python", "torch", "torchvision", "resnetlab", "cuda", "cudnn"},
     "timing": {"started", "finished", "wall_time_s", "resumed": [{"at", "step"}, ...]},
     ...}  # anything a run adds: "data", "model", "plan", ...

:func:`read` also reads the shapes written before (flat machine facts; the engine's nested
``machine`` and ``started``), so old run folders still render.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ResnetlabError
from .files import write_json, write_text_atomic
from .version import __version__

RUNS_ROOT = Path("runs")  # where a run goes when no folder is named

SCHEMA = 1
RUN_FILE = "run.json"
MACHINE_KEYS = ("cpu", "cpu_count", "torch_threads", "device", "gpu", "world_size", "platform")
VERSION_KEYS = ("python", "torch", "torchvision", "resnetlab", "cuda", "cudnn")
TIMING_KEYS = ("started", "finished", "wall_time_s", "resumed")
_COMMAND: ContextVar[str | None] = ContextVar("resnetlab_command", default=None)


@contextmanager
def invoked_as(argv: list[str]) -> Iterator[None]:
    """Within this block :func:`command_line` is ``resnetlab`` + ``argv`` (what the CLI got)."""
    token = _COMMAND.set(shlex.join(["resnetlab", *argv]))
    try:
        yield
    finally:
        _COMMAND.reset(token)


def command_line() -> str:
    """The command as typed: the CLI's arguments, else this process's own ``sys.argv``."""
    given = _COMMAND.get()
    if given is not None:
        return given
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("resnetlab", "__main__.py", "-m"):
        program = "resnetlab"
    return shlex.join([program, *sys.argv[1:]])


def now() -> str:
    """The UTC time, to the second, in ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def cpu_name() -> str:
    """The processor's model name, as the OS reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: Any = None, world_size: int = 1) -> dict[str, Any]:
    """Where the run ran: CPU, threads, the device it used (its GPU's name) and processes."""
    import torch

    device = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device) if device.startswith("cuda") else 0)
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": gpu,
        "world_size": world_size,
        "platform": platform.platform(),
    }


def versions() -> dict[str, Any]:
    """Python, torch, torchvision, resnetlab and, where present, CUDA and cuDNN."""
    import torch
    import torchvision

    cuda = torch.version.cuda if torch.cuda.is_available() else None
    cudnn = torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "resnetlab": __version__,
        "cuda": cuda,
        "cudnn": cudnn,
    }


def start(
    folder: str | Path,
    *,
    command: str | None = None,
    device: Any = None,
    world_size: int = 1,
    resume: bool = False,
    step: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``run.json`` with status "running". A resumed run keeps its command, start time
    and earlier wall time, and adds ``{"at", "step"}`` to ``timing.resumed``."""
    folder = Path(folder)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command or command_line(),
        "status": "running",
        "machine": machine(device, world_size),
        "versions": versions(),
        "timing": {"started": now(), "finished": None, "wall_time_s": None, "resumed": []},
    }
    if resume and (folder / RUN_FILE).is_file():
        old = read(folder)
        timing = old["timing"]
        timing["resumed"] = [*timing.get("resumed", []), {"at": now(), "step": step}]
        timing["finished"] = None
        record = {**old, **record, "command": old.get("command") or record["command"]}
        record["timing"] = timing
    record["timing"]["session_start"] = time.time()
    record["timing"]["earlier_s"] = float(record["timing"].get("wall_time_s") or 0.0)
    record |= extra or {}
    write_json(folder / RUN_FILE, record)
    return record


def finish(
    folder: str | Path,
    status: str = "completed",
    *,
    wall_time_s: float | None = None,
    started: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record how the run ended: status, finish time and wall time (all sessions together;
    ``wall_time_s`` when the caller timed it). Without a started ``run.json`` one is written
    (``started``: when the run began)."""
    folder = Path(folder)
    record = read(folder) if (folder / RUN_FILE).is_file() else start(folder)
    timing = record["timing"]
    timing["started"] = started or timing.get("started")
    if wall_time_s is None and "session_start" in timing:
        wall_time_s = timing.get("earlier_s", 0.0) + time.time() - timing["session_start"]
    if wall_time_s is None and timing.get("started"):
        began = datetime.fromisoformat(timing["started"])
        wall_time_s = (datetime.now(UTC) - began).total_seconds()
    timing["finished"] = now()
    timing["wall_time_s"] = None if wall_time_s is None else round(float(wall_time_s), 1)
    record["status"] = status
    record |= extra or {}
    write_json(folder / RUN_FILE, record)
    return record


@contextmanager
def recording(folder: str | Path) -> Iterator[None]:
    """Within this block a run that stops early never stays "running" in ``run.json``: a Ctrl-C
    or SIGTERM (turned into a KeyboardInterrupt here) is recorded as ``interrupted``, an error
    as ``failed: <reason>``; a run that recorded its own ending, or never started, is left as
    it is."""
    previous = None
    with suppress(ValueError):  # not the main thread: leave signals alone
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except BaseException as exc:
        if read(folder).get("status") == "running":
            interrupted = isinstance(exc, KeyboardInterrupt)
            finish(folder, "interrupted" if interrupted else f"failed: {_reason(exc)}")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _reason(exc: BaseException) -> str:
    """An error in words: a user error's own line, else its type and message."""
    return str(exc) if isinstance(exc, ResnetlabError) else f"{type(exc).__name__}: {exc}"


def update(folder: str | Path, **facts: Any) -> dict[str, Any]:
    """Add facts (e.g. ``data``) to an existing ``run.json``."""
    record = read(folder) | facts
    write_json(Path(folder) / RUN_FILE, record)
    return record


def read(folder: str | Path) -> dict[str, Any]:
    """``run.json`` in the one shape, whichever shape it was written in; {} when absent."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return normalise(raw) if isinstance(raw, dict) else {}


def normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """An older ``run.json`` (flat machine facts, or the engine's nested ``machine``) in the
    schema-1 shape; a schema-1 record is returned as it is."""
    if raw.get("schema") == SCHEMA:
        return raw
    machine_facts = raw.get("machine")
    nested = machine_facts if isinstance(machine_facts, dict) else {}
    flat = {**nested, **{k: v for k, v in raw.items() if not isinstance(v, dict | list)}}
    if "processor" in flat and "cpu" not in flat:
        flat["cpu"] = flat["processor"]
    used = set(MACHINE_KEYS) | set(VERSION_KEYS) | {"date", "started", "processor", "machine"}
    used |= {"wall_time_s", "command", "status", "finished", "resumed"}
    record = {k: v for k, v in raw.items() if k not in used}
    record |= {
        "schema": SCHEMA,
        "command": raw.get("command"),
        "status": raw.get("status"),
        "machine": {k: flat[k] for k in MACHINE_KEYS if k in flat},
        "versions": {k: flat[k] for k in VERSION_KEYS if k in flat},
        "timing": {
            "started": raw.get("started") or raw.get("date"),
            "finished": raw.get("finished"),
            "wall_time_s": raw.get("wall_time_s"),
            "resumed": raw.get("resumed", []),
        },
    }
    return record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a truncated last line (interrupted write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record to a JSON-lines file (used to resume interrupted runs)."""
    path = Path(path)
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


def write_csv(
    path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None
) -> Path:
    """Write rows of dicts as CSV atomically: ``columns`` first, then the others in first-seen
    order."""
    columns = list(columns or [])
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts of strings."""
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))
