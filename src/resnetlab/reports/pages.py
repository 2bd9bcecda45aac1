"""The report's pages: one self-contained HTML page and its Markdown twin.

The verdict comes first, then each run's findings (claim, measured, relation), tables and
plots, its data in words; the machine and versions, the runs and their configuration come
once, at the end, as tables and definition lists (never raw JSON).
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runfolder import MACHINE_KEYS, VERSION_KEYS
from .checklist import Item
from .findings import VERDICT_WORDS

MAX_ROWS = 40
LABELS = {
    "cpu": "CPU", "cpu_count": "logical CPUs", "torch_threads": "torch threads",
    "device": "device", "gpu": "GPU", "world_size": "processes", "platform": "platform",
    "python": "Python", "torch": "torch", "torchvision": "torchvision",
    "resnetlab": "resnetlab", "cuda": "CUDA", "cudnn": "cuDNN",
}  # fmt: skip


@dataclass
class RunSection:
    """What the report shows of one run folder."""

    folder: Path
    config: dict
    run: dict  # run.json in the one shape (resnetlab.runfolder)
    data: list[tuple[str, str]] | str  # described in words: (term, definition) or text
    model: list[tuple[str, str]] = field(default_factory=list)
    verdict: list[str] = field(default_factory=list)
    findings: list[dict] = field(default_factory=list)  # claim, source, measured, relation
    summary: list[str] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (file name, preformatted text)
    tables: list[tuple[str, list[dict]]] = field(default_factory=list)
    long_tables: list[tuple[str, int]] = field(default_factory=list)  # (file name, rows)
    images: list[Path] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)  # a study's own, by image file name
    checklist: list[Item] = field(default_factory=list)  # a fine-tuning run's (checklist.py)

    @property
    def slug(self) -> str:
        """The prefix of this run's anchors in the page."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.folder.name) or "run"

    def anchor(self, name: str) -> str:
        """The id of a part of this run's section: ``findings``, ``data``, ``model``,
        ``config``, a text file's or a figure's name (without .png); ``machine`` is shared."""
        return "machine" if name == "machine" else f"{self.slug}-{name}"

    def anchors(self) -> set[str]:
        """The names :meth:`anchor` resolves to a part the report shows."""
        names = {"data", "machine", *(n for n, _ in self.texts), *(p.stem for p in self.images)}
        names |= {"findings"} if self.findings or self.summary else set()
        names |= {"model"} if self.model else set()
        return names | ({"config"} if self.config else set())


def words(value: Any) -> str:
    """A JSON value in words: lists joined by commas, dicts as "key value; ...", no quotes."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, list | tuple):
        return ", ".join(words(v) for v in value) or "none"
    if isinstance(value, dict):
        return "; ".join(f"{k} {words(v)}" for k, v in value.items()) or "none"
    return str(value)


def definitions(values: dict, prefix: str = "") -> list[tuple[str, str]]:
    """A nested dict as (term, definition) pairs, nested keys joined by dots."""
    rows: list[tuple[str, str]] = []
    for key, value in values.items():
        if isinstance(value, dict) and value and len(value) > 3:
            rows += definitions(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}".replace("_", " "), words(value)))
    return rows


def _verdict(sections: list[RunSection]) -> list[str]:
    lines = [line for s in sections for line in s.verdict]
    return lines or [f["verdict"] for s in sections for f in s.findings if f.get("verdict")]


def _same(sections: list[RunSection], key: str) -> bool:
    values = [s.run.get(key) for s in sections if s.run]
    return all(v == values[0] for v in values)


def machine_rows(sections: list[RunSection]) -> list[tuple[str, str]]:
    """Machine and versions once: one value when every run agrees, else per run."""
    runs = [s for s in sections if s.run]
    rows = []
    for group, keys in (("machine", MACHINE_KEYS), ("versions", VERSION_KEYS)):
        for key in keys:
            values = [(s.folder.name, s.run.get(group, {}).get(key)) for s in runs]
            if all(v is None for _, v in values) and key != "gpu":
                continue
            if all(v == values[0][1] for _, v in values):
                rows.append((LABELS[key], words(values[0][1])))
            else:
                rows.append((LABELS[key], "; ".join(f"{n}: {words(v)}" for n, v in values)))
    if runs and _same(runs, "command"):
        rows.insert(0, ("command", words(runs[0].run.get("command"))))
    return rows


def run_rows(sections: list[RunSection]) -> list[dict]:
    """One row per run: status, timing and (when they differ) the command."""
    commands = not _same([s for s in sections if s.run], "command")
    rows = []
    for s in sections:
        timing = s.run.get("timing", {})
        row = {"run": s.folder.name, "status": words(s.run.get("status"))}
        row |= {"started": words(timing.get("started")), "finished": words(timing.get("finished"))}
        wall = timing.get("wall_time_s")
        row["wall time"] = "-" if wall is None else f"{wall:.1f} s"
        row["resumed"] = str(len(timing.get("resumed") or []))
        if commands:
            row["command"] = words(s.run.get("command"))
        rows.append(row)
    return rows


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


def _html_dl(rows: list[tuple[str, str]]) -> str:
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in rows)
    return f"<dl>{items}</dl>"


def _image_tag(path: Path, captions: dict[str, str], anchor: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    tag = f' id="{html.escape(anchor)}"' if anchor else ""
    caption = html.escape(captions.get(path.name, "")) or name
    if caption != name:
        caption = f"{name}: {caption}"
    return (
        f'<figure{tag}><img src="data:image/png;base64,{data}" alt="{name}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _finding_html(f: dict) -> str:
    source = f" ({html.escape(f['source'])})" if f.get("source") else ""
    mark = VERDICT_WORDS.get(f.get("holds"), "")
    return (
        f"<div class='finding'><p><b>Claim{source}:</b> {html.escape(f['claim'])}</p>"
        f"<p><b>Measured:</b> {html.escape(f['measured'])}</p>"
        f"<p><b>So{': ' + mark if mark else ''}.</b> {html.escape(f['relation'])}</p></div>"
    )


def _finding_md(f: dict) -> list[str]:
    source = f" ({f['source']})" if f.get("source") else ""
    mark = VERDICT_WORDS.get(f.get("holds"), "")
    return [f"- **Claim{source}:** {f['claim']}", f"  **Measured:** {f['measured']}",
            f"  **So{': ' + mark if mark else ''}.** {f['relation']}", ""]  # fmt: skip


CHECKLIST_TITLE = "Reporting checklist (CLAIM 2024, TRIPOD+AI)"
CHECKLIST_NOTE = (
    "The items of CLAIM 2024 (Tejani et al. 2024, Radiology: Artificial Intelligence) and "
    "TRIPOD+AI (Collins et al. 2024, BMJ) this run answers, from its model card, and those "
    "only the authors can answer. Items are named by their titles; check the numbering "
    "against the published checklists."
)
CHECKLIST_COLUMNS = ("CLAIM 2024", "TRIPOD+AI", "this run", "shown in")


def _where(s: RunSection, item: Item) -> tuple[str, str] | None:
    """(anchor id, words) of the part of the report an item points at; None when the report
    does not show it."""
    if item.where is None or item.where not in s.anchors():
        return None
    return s.anchor(item.where), item.where.replace("_", " ")


def _checklist_html(s: RunSection) -> str:
    head = "".join(f"<th class='text'>{c}</th>" for c in CHECKLIST_COLUMNS)
    rows = []
    for item in s.checklist:
        where = _where(s, item)
        link = f"<a href='#{html.escape(where[0])}'>{html.escape(where[1])}</a>" if where else "-"
        cells = [html.escape(item.claim or "-"), html.escape(item.tripod or "-"),
                 html.escape(item.answer), link]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td class='text'>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _checklist_md(s: RunSection) -> str:
    lines = ["| " + " | ".join(CHECKLIST_COLUMNS) + " |", "|---|---|---|---|"]
    for item in s.checklist:
        where = _where(s, item)
        link = f"[{where[1]}](#{where[0]})" if where else "-"
        cells = [item.claim or "-", item.tripod or "-", item.answer, link]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _md_anchor(anchor: str) -> str:
    """An HTML anchor Markdown renderers keep, so links into the page work."""
    return f'<a id="{anchor}"></a>'


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#111}table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0;display:block;
overflow-x:auto}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}th{background:#eee}
pre{background:#f6f6f6;padding:0.6em;overflow-x:auto;font-size:0.85em}img{max-width:100%}
figure{margin:1em 0}figcaption{font-size:0.8em;color:#555}h2{border-bottom:2px solid #333;
margin-top:2em}.verdict{background:#eef4ff;border-left:5px solid #2a5bd7;padding:0.4em 1em}
.finding{border-left:3px solid #999;padding:0 0.8em;margin:0.8em 0}.finding p{margin:0.2em 0}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 1em;font-size:0.9em}
dt{font-weight:600}dd{margin:0}td.text,th.text{text-align:left}"""


def render_html(sections: list[RunSection], title: str, captions: dict[str, str]) -> str:
    """One page: the verdict, per run its findings, tables, plots and data; then once the
    machine and versions, the runs and their configuration."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    verdict = _verdict(sections)
    if verdict:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in verdict)
        parts.append(f"<section class='verdict'><h2>Verdict</h2><ul>{items}</ul></section>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.folder.name)}</h2>")
        if s.findings or s.summary:
            parts.append(f"<h3 id='{s.anchor('findings')}'>Findings</h3>")
            parts += [_finding_html(f) for f in s.findings]
            items = "".join(f"<li>{html.escape(line)}</li>" for line in s.summary)
            parts.append(f"<ul>{items}</ul>" if items else "")
        for name, rows in s.tables:
            parts.append(f"<h3>{html.escape(name)}</h3>{_html_table(rows)}")
        for name, text in s.texts:
            parts.append(f"<h3 id='{html.escape(s.anchor(name))}'>{html.escape(name)}</h3>"
                         f"<pre>{html.escape(text)}</pre>")  # fmt: skip
        parts += [_image_tag(p, captions, s.anchor(p.stem)) for p in s.images]
        for name, count in s.long_tables:
            parts.append(f"<p>{html.escape(name)}: {count} rows, in the run folder.</p>")
        data_id = html.escape(s.anchor("data"))
        if isinstance(s.data, str):
            parts.append(f"<h3 id='{data_id}'>Data</h3><pre>{html.escape(s.data)}</pre>")
        else:
            parts.append(f"<h3 id='{data_id}'>Data</h3>{_html_dl(s.data)}")
        if s.model:
            parts.append(f"<h3 id='{s.anchor('model')}'>Model</h3>{_html_dl(s.model)}")
        if s.checklist:
            parts.append(f"<h3 id='{s.anchor('checklist')}'>{CHECKLIST_TITLE}</h3>"
                         f"<p>{CHECKLIST_NOTE}</p>{_checklist_html(s)}")  # fmt: skip
    parts.append(f"<h2 id='machine'>Machine and versions</h2>{_html_dl(machine_rows(sections))}")
    parts.append(f"<h3>Runs</h3>{_html_table(run_rows(sections))}")
    parts.append("<h2>Configuration (config.json)</h2>")
    for s in sections:
        if s.config:
            name, config_id = html.escape(s.folder.name), html.escape(s.anchor("config"))
            parts.append(f"<h3 id='{config_id}'>{name}</h3>{_html_dl(definitions(s.config))}")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(
    sections: list[RunSection], title: str, out: Path, captions: dict[str, str]
) -> str:
    """The same content in Markdown, pointing at the PNG files instead of embedding them."""
    lines = [f"# {title}", ""]
    verdict = _verdict(sections)
    if verdict:
        lines += ["## Verdict", "", *[f"- {line}" for line in verdict], ""]
    for s in sections:
        lines += [f"## {s.folder.name}", ""]
        if s.findings or s.summary:
            lines += [_md_anchor(s.anchor("findings")), "### Findings", ""]
            for f in s.findings:
                lines += _finding_md(f)
            lines += [*[f"- {line}" for line in s.summary], ""]
        for name, rows in s.tables:
            lines += [f"### {name}", "", _md_table(rows), ""]
        for name, text in s.texts:
            lines += [_md_anchor(s.anchor(name)), f"### {name}", "", "```", text, "```", ""]
        for image in s.images:
            rel = Path(os.path.relpath(image.resolve(), out.resolve())).as_posix()
            lines += [_md_anchor(s.anchor(image.stem)), f"![{image.name}]({rel})", ""]
            if image.name in captions:
                lines += [f"_{captions[image.name]}_", ""]
        lines += [f"{name}: {count} rows, in the run folder.\n" for name, count in s.long_tables]
        lines += [_md_anchor(s.anchor("data")), "### Data", ""]
        if isinstance(s.data, str):
            lines += ["```", s.data, "```", ""]
        else:
            lines += [*[f"- **{k}**: {v}" for k, v in s.data], ""]
        if s.model:
            lines += [_md_anchor(s.anchor("model")), "### Model", "",
                      *[f"- **{k}**: {v}" for k, v in s.model], ""]  # fmt: skip
        if s.checklist:
            lines += [_md_anchor(s.anchor("checklist")), f"### {CHECKLIST_TITLE}", "",
                      CHECKLIST_NOTE, "", _checklist_md(s), ""]  # fmt: skip
    lines += [_md_anchor("machine"), "## Machine and versions", ""]
    lines += [*[f"- **{k}**: {v}" for k, v in machine_rows(sections)], ""]
    lines += ["### Runs", "", _md_table(run_rows(sections)), "", "## Configuration (config.json)"]
    for s in sections:
        if s.config:
            lines += ["", _md_anchor(s.anchor("config")), f"### {s.folder.name}", ""]
            lines += [f"- **{k}**: {v}" for k, v in definitions(s.config)]
    return "\n".join(lines) + "\n"
