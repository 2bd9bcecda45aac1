"""Render run folders as one self-contained HTML page and a Markdown twin.

A run folder holds ``config.json`` and ``run.json`` (``resnetlab.runfolder``, any shape it was
written in); the report adds what it finds: the verdict, findings and summary lines of result
JSON files, CSV tables, PNG plots (embedded as base64 in the HTML) and, for training runs,
findings and curves from ``metrics.jsonl`` and the per-class metrics of ``per_class.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import runfolder
from ..errors import ResnetlabError
from ..files import write_text_atomic
from . import checklist, train_report
from .pages import (
    MAX_ROWS,
    RunSection,
    definitions,
    render_html,
    render_markdown,
    words,
)

NO_DATA = "No data set: this run uses random or synthetic inputs only."
SKIP_JSON = ("config.json", "run.json", train_report.PER_CLASS)
CAPTIONS = {
    "compare.png": "Published ImageNet top-1 against counted parameters and multiply-accumulates.",
}
for _split in ("val", "test", "test_fold1"):
    CAPTIONS[f"reliability_{_split}.png"] = (
        "Reliability diagram (15 equal-width confidence bins) before and after temperature "
        "scaling fitted on validation; a calibrated model's bars meet the diagonal."
    )
    CAPTIONS[f"gallery_{_split}.png"] = (
        "Grad-CAM of the predicted class (at the operating threshold): the most confident "
        "mistakes first (highest loss), then the most confident correct answers."
    )
CAPTIONS["pr_test.png"] = "Precision-recall curve on test; the dotted line is the prevalence."
CAPTIONS["decision_curve_test.png"] = (
    "Decision curve on test (Vickers & Elkin 2006): net benefit of acting on the model at each "
    "threshold probability, against treating everyone and no one; the vertical line is the "
    "operating threshold chosen on validation. The model is worth using where its curve lies "
    "above both."
)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResnetlabError(f"cannot read {path} ({exc}). Re-run the experiment.") from None
    return value if isinstance(value, dict) else {"value": value}


def _data(folder: Path, config: dict, run: dict) -> list[tuple[str, str]] | str:
    """The data in words: ``data.txt``, else run.json's data facts, else the config's name."""
    for name in ("data.txt", "data.md"):
        if (folder / name).is_file():
            return (folder / name).read_text().strip()
    facts = run.get("data")
    if isinstance(facts, dict):
        rows = []
        for key, value in facts.items():
            if key == "classes" and isinstance(value, list):
                value = f"{len(value)}: {words(value)}"
            elif key == "image_size" and isinstance(value, list):
                value = "×".join(map(str, value)) + " px"
            rows.append((key.replace("_", " "), words(value)))
        return rows
    for source in (facts, config.get("data"), config.get("dataset")):
        if source:
            return [("data", words(source))]
    return NO_DATA


def _check_run_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ResnetlabError(f"{folder} is not a folder. Pass a run folder, e.g. runs/compare-...")
    if not (folder / "config.json").is_file() and not (folder / "run.json").is_file():
        raise ResnetlabError(
            f"{folder} has no config.json or run.json, so it is not a run folder. "
            "Pass a folder written by a resnetlab experiment or training run."
        )


def _results(section: RunSection) -> None:
    """The verdict, findings and summary lines of the folder's result JSON files."""
    for path in sorted(section.folder.glob("*.json")):
        if path.name in SKIP_JSON:
            continue
        value = _read_json(path)
        verdict, found, summary = value.get("verdict"), value.get("findings"), value.get("summary")
        if isinstance(value.get("captions"), dict):
            section.captions |= {str(k): str(v) for k, v in value["captions"].items()}
        if isinstance(verdict, list) and all(isinstance(v, str) for v in verdict):
            section.verdict += verdict
        if isinstance(found, list):
            section.findings += [f for f in found if isinstance(f, dict) and "claim" in f]
        if isinstance(summary, list):
            section.summary += [str(line) for line in summary]


def collect(folder: Path, out: Path) -> RunSection:
    """Read one run folder; a training curve, if any, is drawn into ``out``."""
    folder = Path(folder) if Path(folder).name else Path(folder).resolve()  # "." has no name
    _check_run_folder(folder)
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    run = runfolder.read(folder)
    section = RunSection(folder, config, run, _data(folder, config, run))
    if isinstance(run.get("model"), dict):
        section.model = definitions(run["model"])
    _results(section)
    records = runfolder.read_jsonl(folder / "metrics.jsonl")
    if any(r.get("kind") == "train" for r in records) and not section.summary:
        section.summary = train_report.findings(run, config, records)
    lines, tables = train_report.per_class_findings(folder)
    section.summary += lines
    section.tables += tables
    section.texts = [
        (p.name, p.read_text().rstrip())
        for p in sorted(folder.glob("*.txt"))
        if p.name != "data.txt"
    ]
    for path in sorted(folder.glob("*.csv")):
        if path.name == "metrics.csv" or path.with_suffix(".txt").is_file():
            continue  # metrics are drawn as curves; a .txt twin is already shown
        rows = runfolder.read_csv(path)
        if len(rows) > MAX_ROWS:
            section.long_tables.append((path.name, len(rows)))
        else:
            section.tables.append((path.name, rows))
    section.checklist = checklist.for_folder(folder) or []
    curve_name = f"{folder.name}-curves.png"  # drawn by an earlier report into this folder
    section.images = [p for p in sorted(folder.glob("*.png")) if p.name != curve_name]
    if records:
        title = f"{config.get('model', folder.name)}: training curves"
        curve = train_report.training_curve(records, title, out / curve_name)
        if curve is not None:
            section.images.insert(0, curve)
    return section


def render_report(run_dirs: list[str | Path], out: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` for the run folders; returns their paths.

    Without ``out`` a single run's report goes into its own folder, several runs' into
    ``runs/report-<UTC timestamp>/``.
    """
    if not run_dirs:
        raise ResnetlabError("no run folders given. Pass one or more, e.g. runs/compare-...")
    if out is None:
        if len(run_dirs) == 1:
            out = Path(run_dirs[0])
        else:
            out = runfolder.RUNS_ROOT / f"report-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    for folder in map(Path, run_dirs):
        _check_run_folder(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [collect(Path(d), out) for d in run_dirs]
    title = "resnetlab report: " + ", ".join(s.folder.name for s in sections)
    captions = CAPTIONS | {k: v for s in sections for k, v in s.captions.items()}
    html_path = write_text_atomic(out / "report.html", render_html(sections, title, captions))
    md_path = write_text_atomic(out / "report.md", render_markdown(sections, title, out, captions))
    return html_path, md_path
