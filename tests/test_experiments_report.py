"""Reports: self-contained HTML with embedded plots, and its Markdown twin."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.experiments.gradient_flow import GradientFlowConfig, run_gradient_flow
from resnetlab.files import write_json
from resnetlab.reports.report import render_report


@pytest.fixture(scope="module")
def gradient_run(tmp_path_factory) -> Path:
    config = GradientFlowConfig(models=["mlp3"], seeds=1)
    return run_gradient_flow(config, tmp_path_factory.mktemp("runs") / "gf", progress=False).folder


def _training_run(folder: Path) -> Path:
    folder.mkdir()
    write_json(folder / "config.json", {"model": "resnet20", "data": "cifar10-jpeg (test)"})
    write_json(folder / "run.json", {"date": "2026-01-01", "command": "resnetlab train"})
    records = [{"kind": "train", "step": s, "loss": 2.0 / s, "error": 0.9 / s} for s in (1, 2, 4)]
    records += [{"kind": "eval", "step": 4, "val_error": 0.3}, {"step": 5}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_html_and_markdown_for_one_run(gradient_run):
    html_path, md_path = render_report([gradient_run])
    assert html_path == gradient_run / "report.html" and md_path.is_file()
    page = html_path.read_text()
    pngs = sorted(gradient_run.glob("*.png"))
    assert len(pngs) == 3 and page.count('<img src="data:image/png;base64,') == len(pngs)
    assert "<dt>models</dt><dd>mlp3</dd>" in page  # the config, in words
    assert "&quot;models&quot;" not in page  # not as raw JSON
    assert "Machine and versions" in page and "torchvision" in page
    assert "No data set" in page
    markdown = md_path.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(images) == len(pngs) and all((md_path.parent / i).is_file() for i in images)


def test_training_run_gets_a_curve(tmp_path, gradient_run):
    train_dir = _training_run(tmp_path / "train")
    out = tmp_path / "report"
    assert main(["report", str(train_dir), str(gradient_run), "--out", str(out)]) == 0
    assert (out / "train-curves.png").is_file()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 + len(list(gradient_run.glob("*.png")))
    assert "cifar10-jpeg (test)" in page
    assert "](train-curves.png)" in (out / "report.md").read_text()


def test_not_a_run_folder(tmp_path, capsys):
    with pytest.raises(ResnetlabError, match="not a run folder"):
        render_report([tmp_path])
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
