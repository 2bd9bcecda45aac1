"""One runner for every study: the run folder and its lock, resume from one journal, the
``run.json`` status on every exit, and the result's files.

A study (a :class:`Study` subclass) is its settings, the list of its measurements, how to take
one, and how to summarise them; :func:`run_study` does the rest, in this order: check the
settings and the inputs (nothing is written for a refused study), take the folder's lock,
record the settings and what the run was started from (a resume from other settings or other
inputs is refused), take every measurement the journal lacks (``measurements.jsonl``, one JSON
line per measurement keyed by its id), summarise, write the result and mark the run completed.
An error, a Ctrl-C or a SIGTERM is recorded in ``run.json`` as ``failed: ...`` or
``interrupted``, never left as ``running``.

Under ``torchrun`` a study whose measurements are independent (``Study.scale_out``) is taken by
all its processes together (``scaleout``): rank 0 alone writes the folder, each rank takes its
share of the measurements, and the files are those one process writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from .. import runfolder
from ..console import Bar, say
from ..errors import ResnetlabError
from ..figures import pyplot, save_figure
from ..files import RunLock, remove_stale_temps, write_json, write_text_atomic
from ..reports.report import render_report
from ..runfolder import RUNS_ROOT, append_jsonl, read_jsonl, write_csv
from ..settings import check_settings
from . import scaleout

JOURNAL = "measurements.jsonl"
# Study settings that once had another name (one name, one meaning in every command): an old
# run's config.json is read with the new names, and the old flag names the new one.
RENAMED_SETTINGS = {
    "batch": "batch_size",
    "images": "eval_size",
    "input_size": "image_size",
    "top_k": "eigenvalues",
    "iters": "timing_iters",
    "warmup": "timing_warmup",
}


class StudyRun(NamedTuple):
    """What every study returns: its run folder and its result (the result file's contents)."""

    folder: Path
    result: dict[str, Any]


@dataclasses.dataclass
class Figure:
    """One figure of a result: its file name, its caption, and how to draw it into a path."""

    name: str
    caption: str
    draw: Callable[[Path], Any]


@dataclasses.dataclass
class Summary:
    """A study's result: the JSON written to ``<study>.json`` (with its ``summary`` lines and,
    where it has them, ``findings`` and ``verdict``), its tables (CSV name: rows), its texts
    (file name: text) and its figures."""

    result: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    texts: dict[str, str] = dataclasses.field(default_factory=dict)
    figures: list[Figure] = dataclasses.field(default_factory=list)


class Study:
    """The base of every study. A subclass names itself and overrides a few hooks:

    - :meth:`check` refuses bad input (beyond the bounds its settings declare, which the runner
      checks) before anything is written; :meth:`inputs` fingerprints what the run starts from;
    - :meth:`prepare` loads what the measurements share (data, directions, ...);
    - :meth:`measurements` lists ``(id, spec)`` pairs, :meth:`measure` takes one (a JSON-able
      dict, journaled at once); :meth:`summarise` turns them into a :class:`Summary`.
    """

    settings: ClassVar[type]  # its settings dataclass (what config.json and the flags hold)
    name: ClassVar[str] = "study"  # the folder's prefix; the result is <name with _ for ->.json
    journal: ClassVar[str] = JOURNAL
    # settings a resume may raise, because their measurements' ids stay stable as they grow
    # (``seeds``: a finished run resumed with more seeds takes only the new seeds' measurements)
    grows: ClassVar[tuple[str, ...]] = ()
    # Whether torchrun's processes may share the measurements: each one independent of the
    # others and of the process that takes it (not so where a measurement trains a net, which
    # the engine itself would spread over the processes).
    scale_out: ClassVar[bool] = False

    def __init__(self, config: Any, *, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.resume = False
        self.folder = Path()

    @classmethod
    def run(
        cls, config: Any, out: str | Path | None = None, *, resume: bool = False,
        report: bool = False, progress: bool = True, **options: Any,
    ) -> StudyRun:  # fmt: skip
        """Run this study with ``config`` into ``out`` (``run_study``); returns (folder, result)."""
        return run_study(cls(config, progress=progress, **options), out, resume=resume,
                         report=report)  # fmt: skip

    def check(self) -> None:
        """Refuse settings or inputs that cannot make the study (one line, the fix)."""

    def inputs(self) -> dict[str, str | None]:
        """What the run is started from, by fingerprint (e.g. a hash of each weights file)."""
        return {}

    def prepare(self) -> None:
        """Load what the measurements share; ``self.folder`` is the run folder."""

    def measurements(self) -> list[tuple[str, Any]]:
        """Every measurement as ``(id, spec)``, in the order they are taken."""
        return []

    def measure(self, spec: Any) -> dict[str, Any]:
        """Take one measurement."""
        raise NotImplementedError

    def finished(self, record: dict[str, Any]) -> bool:
        """Whether a journaled measurement is final (else it is taken again on resume)."""
        return True

    def summarise(self, records: list[dict[str, Any]]) -> Summary:
        """The verdict, findings, tables and figures of all measurements (in list order)."""
        raise NotImplementedError

    def report_folders(self) -> list[Path]:
        """The run folders its report shows, in order."""
        return [self.folder]

    def file_name(self) -> str:
        return f"{self.name.replace('-', '_')}.json"

    def prefix(self) -> str:
        """The default folder's name before its time stamp."""
        return self.name


def run_study(
    study: Study, out: str | Path | None = None, *, resume: bool = False, report: bool = False
) -> StudyRun:
    """Check, lock, record, measure what the journal lacks, summarise and write ``study``;
    with ``report``, render ``report.html`` and ``report.md`` into its folder. Under torchrun
    the measurements are split over the processes (``scaleout``): rank 0 writes the same
    files one process would, and every rank returns the same result."""
    check_settings(study.config)
    if scaleout.processes() > 1 and not study.scale_out:
        raise ResnetlabError(
            f"{study.name} does not split its measurements over processes. Run it as one "
            "process, without torchrun."
        )
    study.check()
    inputs = study.inputs()
    with scaleout.joined() as ranks:
        folder = ranks.lead(lambda: run_folder(study.prefix(), out, resume=resume))
        with ranks.first_only(lambda: RunLock(folder)):
            ranks.lead(lambda: begin(folder, study.config, inputs, ranks.size, study.grows))
            with runfolder.recording(folder) if ranks.main else nullcontext():
                study.folder, study.resume = folder, resume
                study.progress = study.progress and ranks.main
                among = f" ({ranks.size} processes)" if ranks.size > 1 else ""
                say(f"{study.name}: run folder {folder}{among}")
                try:
                    ranks.in_turn(study.prepare)
                    records = take_measurements(study, folder / study.journal, ranks)
                except KeyboardInterrupt:
                    say(f"interrupted; continue with --out {folder} --resume")
                    raise
                result = ranks.lead(lambda: conclude(study, folder, records))
            if report:
                ranks.lead(lambda: write_report(study, folder))
    return StudyRun(folder, result)


def begin(folder: Path, config: Any, inputs: dict[str, str | None], processes: int,
          grows: tuple[str, ...] = ()) -> None:  # fmt: skip
    """A run folder cleared of half-written files, with its settings and ``run.json``."""
    remove_stale_temps(folder)
    start(folder, config, inputs, world_size=processes, grows=grows)


def write_report(study: Study, folder: Path) -> None:
    """``report.html`` and ``report.md`` of the study's folders, into its own."""
    render_report(list[str | Path](study.report_folders()), out=folder)


def conclude(study: Study, folder: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarise, write the result and mark the run completed; returns the result."""
    summary = study.summarise(records)
    write_summary(folder, study.file_name(), summary)
    runfolder.finish(folder, "completed")
    return summary.result


def status(folder: Path) -> str:
    """How a run in ``folder`` ended (``completed``, ...), or ``not started``."""
    return str(runfolder.read(folder).get("status") or "not started")


def run_folder(name: str, out: str | Path | None, *, resume: bool = False) -> Path:
    """``out`` or ``runs/<name>-<UTC time>`` (not created here); a non-empty ``out`` needs
    ``resume``."""
    if out is None and resume:
        raise ResnetlabError("--resume needs the folder to continue. Pass it with --out.")
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path, suffix = RUNS_ROOT / f"{name}-{stamp}", 1
        while path.exists():
            suffix += 1
            path = RUNS_ROOT / f"{name}-{stamp}-{suffix}"
        return path
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ResnetlabError(f"{path} is a file, not a folder. Pass a folder to --out.")
    if path.is_dir() and any(path.iterdir()) and not resume:
        raise ResnetlabError(
            f"run folder {path} is not empty. Pass --resume to continue it, or another --out."
        )
    return path


def start(
    folder: Path,
    config: Any,
    inputs: dict[str, str | None] | None = None,
    *,
    command: str | None = None,
    world_size: int = 1,
    grows: tuple[str, ...] = (),
) -> None:
    """Write ``config.json`` and ``run.json``; a resumed run must have the same settings (but
    may raise those in ``grows``) and start from the same inputs (refused before anything is
    written). A setting added since the run began (absent from its ``config.json``) counts as
    the same where it is at its default, so a run from before ``--seeds`` resumes."""
    is_instance = dataclasses.is_dataclass(config) and not isinstance(config, type)
    settings = _as_json(dataclasses.asdict(config) if is_instance else dict(config))
    previous = folder / "config.json"
    resumed = previous.is_file()
    if resumed:
        old = _renamed(json.loads(previous.read_text()), settings)
        old = {**(_defaults(config) if is_instance else {}), **old}
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        changed = [k for k in changed if not _grew(k, old.get(k), settings.get(k), grows)]
        if changed:
            raise ResnetlabError(
                f"{folder} was started with other settings ({', '.join(changed)}). "
                "Use the same settings to resume, or another --out."
            )
        old_inputs = runfolder.read(folder).get("inputs") or {}
        moved = sorted(k for k in old_inputs if (inputs or {}).get(k) != old_inputs[k])
        if moved:
            raise ResnetlabError(
                f"{folder} was started from other inputs: {', '.join(moved)} changed since. "
                "Resume from the same files, or start a new run with another --out."
            )
    write_json(previous, settings)
    extra = {"inputs": inputs} if inputs else None
    runfolder.start(folder, command=command, resume=resumed, extra=extra, world_size=world_size)


def _renamed(old: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` written before a setting was renamed, read with the new names."""
    for was, now in RENAMED_SETTINGS.items():
        if was in old and was not in settings and now in settings:
            old[now] = old.pop(was)
    return old


def _grew(name: str, old: Any, new: Any, grows: tuple[str, ...]) -> bool:
    """Whether a setting changed only by growing where the study allows it (e.g. more seeds)."""
    numbers = isinstance(old, int) and isinstance(new, int)
    return name in grows and numbers and new > old


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _defaults(config: Any) -> dict[str, Any]:
    """The default of each setting of a settings dataclass that has one, as JSON."""
    found = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            found[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            found[f.name] = f.default_factory()
    return dict(_as_json(found))


def take_measurements(
    study: Study, journal: Path, ranks: scaleout.Ranks | None = None
) -> list[dict[str, Any]]:
    """Every measurement of ``study``, from the journal where it is there and final, else
    taken now and appended to it at once (so an interruption loses at most one). Under
    several processes each round takes one measurement per rank, and rank 0 journals the
    round in plan order."""
    ranks = ranks or scaleout.Ranks()
    done = {r["id"]: r for r in read_jsonl(journal) if "id" in r}
    plan = study.measurements()
    todo = [(i, s) for i, s in plan if i not in done or not study.finished(done[i])]
    bar = Bar(total=len(todo), desc=study.name, leave=False,
              disable=not study.progress or len(todo) < 2)  # fmt: skip
    with bar:
        for batch in ranks.rounds(todo):
            taken, failures = ranks.each(batch, lambda item: {"id": item[0],
                                                              **study.measure(item[1])})
            for record in taken:
                if record is not None:
                    if ranks.main:
                        append_jsonl(journal, record)
                    done[record["id"]] = record
            ranks.raise_first(failures)
            bar.update(len(batch))
    return [done[i] for i, _ in plan]


def write_summary(folder: Path, name: str, summary: Summary) -> None:
    """The result JSON (with each figure's caption), its tables, texts and figures."""
    captions = {f.name: f.caption for f in summary.figures}
    write_json(folder / name, {**summary.result, "captions": captions} if captions
               else summary.result)  # fmt: skip
    for table, rows in summary.tables.items():
        write_csv(folder / table, rows)
    for text_name, text in summary.texts.items():
        write_text_atomic(folder / text_name, text)
    for figure in summary.figures:
        figure.draw(folder / figure.name)


def fingerprint(spec: str | Path | None, *, content: bool = True) -> str | None:
    """A file's SHA-256 (with ``content=False``, as a folder: its name, size and modification
    time, for data too large to read twice); a folder's file names, sizes and modification
    times; else the spec itself (a tag, a URL, a data set's name)."""
    if spec is None:
        return None
    path = Path(spec)
    digest = hashlib.sha256()
    if path.is_file() and content:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return f"sha256:{digest.hexdigest()}"
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for item in files:
            st = item.stat()
            digest.update(f"{item.relative_to(path.parent)}\0{st.st_size}\0{st.st_mtime_ns}\n"
                          .encode())  # fmt: skip
        return f"files:{digest.hexdigest()}"
    return str(spec)


__all__ = ["JOURNAL", "Figure", "Study", "StudyRun", "Summary", "fingerprint", "pyplot",
           "read_jsonl", "run_folder", "run_study", "save_figure", "start"]  # fmt: skip
