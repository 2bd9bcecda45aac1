"""The reporting checklist (CLAIM 2024, TRIPOD+AI) of a fine-tuning report: answers computed
from the model card, links that land on the part of the report that shows them, the items only
the authors can answer, and nothing claimed that the run did not do."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetlab.card import read_card
from resnetlab.cli import main
from resnetlab.reports.checklist import TO_COMPLETE, for_folder, items

pytestmark = pytest.mark.slow  # one real fine-tuning run

CLASSES = ("normal", "pneumonia")
NUMBERED = {"5a", "5b", "6b"}  # the only item numbers checked against the published list


def write_manifest_folder(root: Path, patients: int = 60) -> Path:
    """32 px images with a CSV manifest; patient k has 1 + k % 2 images."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = ["path,label,group"]
    for k in range(patients):
        label = k % 2
        for j in range(1 + k % 2):
            pixels = (rng.integers(0, 120, (32, 32, 3)) + 100 * label).astype(np.uint8)
            Image.fromarray(pixels).save(root / "img" / f"p{k}_{j}.png")
            rows.append(f"img/p{k}_{j}.png,{CLASSES[label]},patient{k}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny two-class fine-tuning run with validation (>= 19 images: conformal sets) and test
    held out by patient."""
    root = tmp_path_factory.mktemp("checklist")
    data = write_manifest_folder(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETLAB_HOME", str(root / "home"))
        argv = ["finetune", str(data), "--out", str(root / "run"), "--no-progress"]
        argv += ["--model", "resnet20", "--pretrained", "none", "--full-epochs", "1"]
        argv += ["--batch-size", "16", "--val-size", "0.3", "--test-size", "0.25"]
        assert main(argv) == 0
    return root / "run"


def row(rows, title: str):
    return next(r for r in rows if title in (r.claim, r.tripod))


def test_the_report_holds_the_checklist_and_its_links_land(run):
    page = (run / "report.html").read_text()
    table = page[page.index("Reporting checklist (CLAIM 2024, TRIPOD+AI)") :]
    table = table[: table.index("</table>")]
    links = re.findall(r"href='#([^']+)'", table)
    assert len(links) >= 10
    for anchor in set(links):
        assert re.search(rf"id=['\"]{re.escape(anchor)}['\"]", page), anchor
    assert table.count(TO_COMPLETE) >= 8
    md = (run / "report.md").read_text()
    for anchor in set(re.findall(r"\]\(#([^)]+)\)", md)):
        assert f'<a id="{anchor}"></a>' in md, anchor


def test_the_answers_are_the_cards(run):
    card = read_card(run / "model_card.json")
    clinical = card["clinical"]
    point, sets = clinical["threshold"], clinical["test"]["reviewer"]["conformal"]
    assert point["chosen_on"] == "val" and clinical["conformal"]["fitted_on"] == "val"
    rows = for_folder(run)
    assert rows == items(card)
    val, test = card["metrics"]["val"]["n"], card["metrics"]["test"]["n"]
    assert (
        f"images per split: val {val}, test {test}"
        in row(rows, "Analytical methods (how the data were used, partitioned)").answer
    )
    assert "groups: " in row(rows, "Level at which partitions are disjoint").answer
    output = row(rows, "Model output").answer
    assert f"{point['threshold']:.4f} by youden" in output and "chosen on val" in output
    abstain = row(rows, "Uncertainty and abstention").answer
    assert f"fitted on val ({sets['calibration_images']} images)" in abstain
    assert f"coverage {sets['coverage_achieved']:.3f}" in abstain
    resamples = clinical["test"]["at_threshold"]["ci95"]["bootstrap"]["resamples"]
    assert f"({resamples} resamples)" in row(rows, "Model performance").answer
    authors = [r for r in rows if r.answer == TO_COMPLETE]
    named = " ".join(f"{r.claim} {r.tripod}" for r in authors)
    for topic in ("Ethical approval", "Data dates", "Eligibility", "Reference standard",
                  "Demographic", "Intended use"):  # fmt: skip
        assert topic in named
    assert "missing clinical data is " + TO_COMPLETE in row(rows, "Missing data").answer
    for r in rows:  # CLAIM 2024 by title only; TRIPOD+AI numbered only where checked
        assert not r.claim[:1].isdigit()
        number = r.tripod.split(" ")[0]
        assert not number[:1].isdigit() or number in NUMBERED


def test_without_a_test_split_nothing_held_out_is_claimed(run):
    card = copy.deepcopy(read_card(run / "model_card.json"))
    del card["metrics"]["test"]
    for key in ("test", "evaluated"):
        del card["clinical"][key]
    rows = items(card)
    assert "no test split" in row(rows, "Data partitions: how data were assigned to "
                                  "partitions").answer  # fmt: skip
    assert row(rows, "Model performance").answer.startswith("no intervals")
    curve = row(rows, "Clinical utility")
    assert curve.answer.startswith("no decision curve") and curve.where is None
    assert "on test" not in row(rows, "Uncertainty and abstention").answer


def test_a_cross_validation_folder_has_its_checklist(run, tmp_path):
    root = tmp_path / "cv"
    for k in (1, 2):
        (root / f"fold-{k}").mkdir(parents=True)
        shutil.copy(run / "model_card.json", root / f"fold-{k}" / "model_card.json")
    (root / "cv_summary.json").write_text(json.dumps({"folds": 2, "summary": []}))
    rows = for_folder(root)
    assert "2-fold cross-validation" in rows[0].answer
    assert "each fold chose its own on its validation fold" in row(rows, "Model output").answer
    assert for_folder(tmp_path) is None  # not a fine-tuning folder: no checklist
