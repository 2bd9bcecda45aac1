"""Render run folders as one self-contained HTML page and a Markdown twin.

A run folder holds ``config.json`` and ``run.json``; the report adds what it finds: summary
lines from result JSON files, CSV tables, PNG plots (embedded as base64 in the HTML) and, for
training runs, a curve of ``metrics.jsonl``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ResnetlabError
from ..files import write_text_atomic
from . import runs

MAX_ROWS = 40
MACHINE_KEYS = ("date", "command", "cpu", "cpu_count", "torch_threads", "gpu", "python",
                "platform", "torch", "torchvision", "resnetlab", "status")  # fmt: skip
NO_DATA = "No data set: this run uses random or synthetic inputs only."
CURVE_KEYS = ("train_error", "val_error", "test_error")
PLUS_ONE = (
    "For a residual block ∂x_{l+1}/∂x_l = 1 + ∂F/∂x_l: the +1 carries the gradient back past "
    "blocks whose ∂F/∂x_l is small; a plain block has only ∂F/∂x_l."
)
CAPTIONS = {
    "gradient_flow_inputs.png": "Norm of the loss gradient at each block's input, plain (red) vs "
    "residual (blue), log scale; line = mean over seeds, band = min to max. " + PLUS_ONE,
    "gradient_flow_weights.png": "Norm of each block's weight gradient, plain vs residual, log "
    "scale. " + PLUS_ONE,
    "layer_responses.png": "Std of each 3×3 layer's response after BN and before the addition or "
    "ReLU (He et al. 2015, Fig. 7), in eval mode.",
    "seed_mlp.png": "First layer's weight-gradient norm of the Linear-ReLU-Linear stacks against "
    "depth, plain vs residual. " + PLUS_ONE,
    "compare.png": "Published ImageNet top-1 against counted parameters and multiply-accumulates.",
    "receptive_field.png": "Theoretical receptive field after each conv/pool layer on the main "
    "path.",
    "effective_receptive_field.png": "Effective receptive field (Luo et al. 2016): input-gradient "
    "magnitude of the centre output at initialisation; the box is the theoretical field.",
    "lesion_single.png": "Test error after deleting one block (Veit et al. 2016): residual branch "
    "removed, shortcut kept; plain blocks replaced by the identity (n/a: shape changes).",
    "lesion_k.png": "Test error after deleting k random blocks and swapping k random pairs of "
    "same-shape blocks, mean ± std over draws.",
    "landscape_1d.png": "Training loss along one filter-normalised random direction (Li et al. "
    "2018), BN in eval mode, no augmentation.",
    "landscape_contour.png": "Training loss on a 2-D slice along two filter-normalised directions.",
    "landscape_surface.png": "The same 2-D slice as a surface (loss clipped at min + 10).",
    "interpolation.png": "Loss and error on the line between two sets of weights.",
    "paths.png": "Veit et al. 2016 §5: share of paths by length, gradient magnitude of paths of "
    "each length, and each length's share of the total gradient.",
    "shattered.png": "Balduzzi et al. 2017: lag-1 autocorrelation of the input gradient along a "
    "1-D input sweep against depth, the gradient of the deepest nets, and its autocorrelation.",
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


@dataclass
class RunSection:
    """What the report shows of one run folder."""

    folder: Path
    config: dict
    machine: dict
    data: str
    summary: list[str] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (file name, preformatted text)
    tables: list[tuple[str, list[dict]]] = field(default_factory=list)
    long_tables: list[tuple[str, int]] = field(default_factory=list)  # (file name, rows)
    images: list[Path] = field(default_factory=list)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResnetlabError(f"cannot read {path} ({exc}). Re-run the experiment.") from None
    return value if isinstance(value, dict) else {"value": value}


def _data_text(folder: Path, config: dict, machine: dict) -> str:
    for name in ("data.txt", "data.md"):
        if (folder / name).is_file():
            return (folder / name).read_text().strip()
    for source in (machine.get("data"), config.get("data"), config.get("dataset")):
        if source:
            return source if isinstance(source, str) else json.dumps(source, indent=2)
    return NO_DATA


def training_curve(records: list[dict], title: str, path: Path) -> Path | None:
    """Train/val/test error (and train loss) against iteration; missing keys are skipped."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if "step" not in r:
            continue
        values = {k: r[k] for k in (*CURVE_KEYS, "train_loss") if k in r}
        if r.get("kind") == "train":
            values.setdefault("train_error", r.get("error"))
            values.setdefault("train_loss", r.get("loss"))
        for key, value in values.items():
            if isinstance(value, int | float):
                series.setdefault(key, []).append((r["step"], float(value)))
    errors = {k: v for k, v in series.items() if k.endswith("_error")}
    if not series:
        return None
    plt = runs.pyplot()
    panels = [p for p in (errors, {"train_loss": series.get("train_loss")}) if any(p.values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        is_error = panel is errors
        percent = is_error and all(v <= 1.0 for s in panel.values() for _, v in s)
        for key, points in panel.items():
            steps, values = zip(*points, strict=True)
            values = [v * 100 for v in values] if percent else list(values)
            ax.plot(steps, values, label=key.replace("_", " "), linewidth=1.2, marker="o",
                    markersize=2.5)  # fmt: skip
        ax.set_xlabel("iteration")
        ax.set_ylabel("error (%)" if is_error else "training loss (cross-entropy)")
        values = [v for points in panel.values() for _, v in points]
        if not is_error and min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return runs.save_figure(fig, path)


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _check_run_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ResnetlabError(f"{folder} is not a folder. Pass a run folder, e.g. runs/compare-...")
    if not (folder / "config.json").is_file() and not (folder / "run.json").is_file():
        raise ResnetlabError(
            f"{folder} has no config.json or run.json, so it is not a run folder. "
            "Pass a folder written by a resnetlab experiment or training run."
        )


def collect(folder: Path, out: Path) -> RunSection:
    """Read one run folder; a training curve, if any, is drawn into ``out``."""
    folder = Path(folder)
    _check_run_folder(folder)
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    machine = _read_json(folder / "run.json") if (folder / "run.json").is_file() else {}
    section = RunSection(folder, config, machine, _data_text(folder, config, machine))
    for path in sorted(folder.glob("*.json")):
        if path.name in ("config.json", "run.json"):
            continue
        summary = _read_json(path).get("summary")
        if isinstance(summary, list):
            section.summary += [str(line) for line in summary]
    section.texts = [
        (p.name, p.read_text().rstrip())
        for p in sorted(folder.glob("*.txt"))
        if p.name != "data.txt"
    ]
    for path in sorted(folder.glob("*.csv")):
        if path.name == "metrics.csv" or path.with_suffix(".txt").is_file():
            continue  # metrics are drawn as curves; a .txt twin is already shown
        rows = _read_csv(path)
        if len(rows) > MAX_ROWS:
            section.long_tables.append((path.name, len(rows)))
        else:
            section.tables.append((path.name, rows))
    curve_name = f"{folder.name}-curves.png"  # drawn by an earlier report into this folder
    section.images = [p for p in sorted(folder.glob("*.png")) if p.name != curve_name]
    metrics = runs.read_jsonl(folder / "metrics.jsonl")
    if metrics:
        title = f"{config.get('model', folder.name)}: training curves"
        curve = training_curve(metrics, title, out / curve_name)
        if curve is not None:
            section.images.insert(0, curve)
    return section


def _cell(value: object) -> str:
    """A CSV cell for display: long floats shortened to 4 significant digits."""
    text = str(value)
    if any(c in text for c in ".e") and len(text) > 8:
        try:
            return f"{float(text):.4g}"
        except ValueError:
            return text
    return text


def _html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p><em>(empty)</em></p>"
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c, '')))}</td>" for c in columns) + "</tr>"
        for r in rows[:MAX_ROWS]
    )
    more = f"<p><em>first {MAX_ROWS} of {len(rows)} rows</em></p>" if len(rows) > MAX_ROWS else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _md_table(rows: list[dict]) -> str:
    if not rows:
        return "_(empty)_"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows[:MAX_ROWS]
    ]
    if len(rows) > MAX_ROWS:
        lines.append(f"\n_first {MAX_ROWS} of {len(rows)} rows_")
    return "\n".join(lines)


def _image_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    caption = html.escape(CAPTIONS.get(path.name, "")) or name
    if caption != name:
        caption = f"{name}: {caption}"
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{name}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _machine_rows(machine: dict) -> list[tuple[str, object]]:
    """Known keys first (a missing GPU shown as "none"), then any others the run recorded."""
    rows = [(k, machine[k]) for k in MACHINE_KEYS if machine.get(k) is not None]
    if "gpu" in machine and machine["gpu"] is None:
        rows.append(("gpu", "none"))
    simple = (str, int, float, bool)
    rows += [(k, v) for k, v in machine.items() if k not in MACHINE_KEYS and isinstance(v, simple)]
    return rows


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#111}table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0;display:block;
overflow-x:auto}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}th{background:#eee}
pre{background:#f6f6f6;padding:0.6em;overflow-x:auto;font-size:0.85em}img{max-width:100%}
figure{margin:1em 0}figcaption{font-size:0.8em;color:#555}h2{border-bottom:2px solid #333;
margin-top:2em}"""


def render_html(sections: list[RunSection], title: str) -> str:
    """One page: per run its findings, tables, plots, data, machine and config."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.folder.name)}</h2>")
        if s.summary:
            items = "".join(f"<li>{html.escape(line)}</li>" for line in s.summary)
            parts.append(f"<h3>Findings</h3><ul>{items}</ul>")
        for name, text in s.texts:
            parts.append(f"<h3>{html.escape(name)}</h3><pre>{html.escape(text)}</pre>")
        parts += [_image_tag(p) for p in s.images]
        for name, rows in s.tables:
            parts.append(f"<h3>{html.escape(name)}</h3>{_html_table(rows)}")
        for name, count in s.long_tables:
            parts.append(f"<p>{html.escape(name)}: {count} rows, in the run folder.</p>")
        parts.append(f"<h3>Data</h3><pre>{html.escape(s.data)}</pre>")
        machine = _machine_rows(s.machine)
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>"
            f"{html.escape(str(v))}</td></tr>"
            for k, v in machine
        )
        parts.append(f"<h3>Machine and versions</h3><table>{rows}</table>")
        config = html.escape(json.dumps(s.config, indent=2))
        parts.append(f"<h3>Config (config.json)</h3><pre>{config}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(sections: list[RunSection], title: str, out: Path) -> str:
    """The same content in Markdown, pointing at the PNG files instead of embedding them."""
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.folder.name}", ""]
        if s.summary:
            lines += ["### Findings", "", *[f"- {line}" for line in s.summary], ""]
        for name, text in s.texts:
            lines += [f"### {name}", "", "```", text, "```", ""]
        for image in s.images:
            rel = Path(os.path.relpath(image.resolve(), out.resolve())).as_posix()
            lines += [f"![{image.name}]({rel})", ""]
            if image.name in CAPTIONS:
                lines += [f"_{CAPTIONS[image.name]}_", ""]
        for name, rows in s.tables:
            lines += [f"### {name}", "", _md_table(rows), ""]
        lines += [f"{name}: {count} rows, in the run folder.\n" for name, count in s.long_tables]
        lines += ["### Data", "", "```", s.data, "```", "", "### Machine and versions", ""]
        lines += [f"- {k}: {v}" for k, v in _machine_rows(s.machine)]
        lines += [
            "",
            "### Config (config.json)",
            "",
            "```json",
            json.dumps(s.config, indent=2),
            "```",
            "",
        ]
    return "\n".join(lines)


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
            out = runs.RUNS_ROOT / f"report-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    for folder in map(Path, run_dirs):
        _check_run_folder(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [collect(Path(d), out) for d in run_dirs]
    title = "resnetlab report: " + ", ".join(s.folder.name for s in sections)
    html_path = write_text_atomic(out / "report.html", render_html(sections, title))
    md_path = write_text_atomic(out / "report.md", render_markdown(sections, title, out))
    return html_path, md_path
