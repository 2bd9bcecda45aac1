"""Refer to a human: ``predict`` and ``serve`` give each image its conformal set and action when
the model card has conformal sets (and nothing new when it has none); a threshold or a conformal
set is never chosen on test, and a card that says it was is refused."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import sync_playwright

from resnetlab.artifact import REFER, load_trained, set_actions
from resnetlab.card import build_from_card, write_card
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.evaluation.clinic import fit_on_val
from resnetlab.evaluation.conformal import fit_conformal, prediction_sets
from resnetlab.evaluation.operating_point import choose_threshold
from resnetlab.finetune import predict_files, render
from resnetlab.preprocessing import Preprocessing
from resnetlab.serve import load_served
from resnetlab.serve.app import create_app
from resnetlab.weights import save_weights
from test_serve import CHROMIUM, Server

CLASSES = ["normal", "pneumonia"]


def run_folder(folder: Path, conformal: dict | None, chosen_on: str = "val") -> Path:
    """A run folder as ``finetune`` leaves it: a resnet20 at 32 px with random weights, a
    temperature and threshold fitted on val, and (given) the conformal fit."""
    torch.manual_seed(0)
    prep = Preprocessing(32, 32, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    card = {
        "model": {"name": "resnet20", "in_channels": 3, "options": {}, "num_classes": 2,
                  "head_dropout": 0.0},
        "classes": CLASSES,
        "preprocessing": prep.to_dict(),
        "calibration": {"temperature": 4.0, "fitted_on": "val"},  # probabilities near 0.7
        "operating_point": {"rule": "youden", "threshold": 0.5, "positive_class": CLASSES[1],
                            "chosen_on": chosen_on},
    }  # fmt: skip
    if conformal is not None:
        card["clinical"] = {"conformal": conformal}
    model = build_from_card(card)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / "model.safetensors", metadata={"model": "resnet20"})
    write_card(folder, card)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(8):
        pixels = (rng.integers(0, 256, (40, 36, 3)) * (0.3 + 0.1 * i)).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def predict_json(source: Path, images: list[Path], capsys) -> list[dict]:
    """``resnetlab predict SOURCE IMAGES --json`` (the torch engine: no ONNX export)."""
    capsys.readouterr()
    argv = ["predict", str(source), *map(str, images), "--top-k", "2", "--engine", "torch"]
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def probabilities(row: dict) -> list[float]:
    by_class = {t["class"]: t["probability"] for t in row["top"]}
    return [by_class[c] for c in CLASSES]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, images) -> dict[str, Path]:
    """``plain``: no conformal sets; ``sets``: a conformal threshold between the images' top
    probabilities, so some sets hold one class and some both."""
    root = tmp_path_factory.mktemp("abstain")
    plain = run_folder(root / "plain", None)
    predictions, _ = predict_files(load_trained(plain), images, engine="torch")
    top = sorted(p.top[0][1] for p in predictions)
    q = (top[3] + top[4]) / 2  # four images above it (one class), four at or below (both)
    fit = {"method": "split conformal (LAC)", "coverage": 0.95, "threshold": q,
           "calibration_images": 40, "fitted_on": "val"}  # fmt: skip
    return {"plain": plain, "sets": run_folder(root / "sets", fit)}


def test_the_action_is_the_decision_only_when_the_set_holds_it_alone():
    sets = torch.tensor([[True, True], [False, False], [False, True], [True, False], [True, False]])
    decided = torch.tensor([1, 0, 1, 0, 1])
    assert set_actions(sets, decided, CLASSES) == [REFER, REFER, "pneumonia", "normal", REFER]


def test_predict_gives_the_cards_sets_in_json_csv_and_text(runs, images, capsys):
    rows = predict_json(runs["sets"], images, capsys)
    trained = load_trained(runs["sets"])
    fit = trained.conformal
    probs = torch.tensor([probabilities(r) for r in rows], dtype=torch.float64)
    by_card = trained.prediction_sets(probs)
    by_evaluation = prediction_sets(probs.numpy(), fit)
    by_hand = 1 - probs.numpy() <= fit["threshold"]  # LAC, written out
    shown = np.array([[c in r["prediction_set"] for c in CLASSES] for r in rows])
    np.testing.assert_array_equal(shown, by_card.numpy())
    np.testing.assert_array_equal(shown, by_evaluation)
    np.testing.assert_array_equal(shown, by_hand)
    sizes = shown.sum(1)
    assert (sizes == 1).sum() == 4 and (sizes == 2).sum() == 4  # both kinds of answer
    for r, size in zip(rows, sizes, strict=True):
        assert r["coverage"] == 0.95
        assert r["action"] == (r["decision"] if size == 1 else REFER)
    predictions, _ = predict_files(trained, images, top_k=2, engine="torch")
    table = list(csv.DictReader(io.StringIO(render(predictions, "csv"))))
    assert [t["action"] for t in table] == [r["action"] for r in rows]
    assert [t["prediction_set"].split(";") for t in table] == [r["prediction_set"] for r in rows]
    assert {t["coverage"] for t in table} == {"0.95"}
    text = render(predictions, "text").splitlines()
    assert all("[95 % set: " in line and f"action: {r['action']}" in line
               for line, r in zip(text[1:], rows, strict=True))  # fmt: skip


def test_without_conformal_sets_the_outputs_are_unchanged(runs, images, capsys):
    predictions, _ = predict_files(load_trained(runs["plain"]), images[:2], engine="torch")
    rows = json.loads(render(predictions, "json"))
    assert set(rows[0]) == {"path", "top", "probability", "threshold", "decision"}
    header = render(predictions, "csv").splitlines()[0]
    assert header.endswith("probability,threshold,decision")
    assert "% set" not in render(predictions, "text")
    client = TestClient(create_app(load_served(str(runs["plain"]), engine="torch")))
    answer = client.post("/predict", content=images[0].read_bytes()).json()
    assert not {"prediction_set", "action", "coverage"} & set(answer)
    assert client.get("/info").json()["coverage"] is None


def test_serve_answers_as_predict_does(runs, images, capsys):
    rows = predict_json(runs["sets"], images, capsys)
    with TestClient(create_app(load_served(str(runs["sets"]), engine="torch"))) as client:
        for image, row in zip(images, rows, strict=True):
            answer = client.post("/predict", content=image.read_bytes()).json()
            for key in ("prediction_set", "action", "coverage", "decision"):
                assert answer[key] == row[key], key
            assert probabilities(row) == pytest.approx(
                [c["probability"] for c in answer["classes"]], abs=1e-6
            )
        assert client.get("/info").json()["coverage"] == 0.95
        page = client.get("/").text
    assert 'id="action"' in page and "result.prediction_set" in page


def test_a_threshold_or_a_conformal_set_is_never_fitted_on_test(tmp_path, images, capsys):
    scores, positive = np.array([0.1, 0.4, 0.6, 0.9]), np.array([False, False, True, True])
    assert choose_threshold(scores, positive, "youden", split="val")["chosen_on"] == "val"
    logits, labels = torch.randn(40, 2), torch.arange(40) % 2
    fit = fit_on_val(logits, labels, "youden", CLASSES, split="val")
    assert fit["threshold"]["chosen_on"] == "val" and fit["conformal"]["fitted_on"] == "val"
    for refused in (
        lambda: choose_threshold(scores, positive, "youden", split="test"),
        lambda: fit_conformal(np.full((40, 2), 0.5), labels.numpy(), 0.95, split="test"),
        lambda: fit_on_val(logits, labels, "youden", CLASSES, split="test"),
    ):
        with pytest.raises(ResnetlabError) as info:
            refused()
        message = str(info.value)
        assert "\n" not in message and "not on 'test'" in message and "validation" in message
    tested = run_folder(tmp_path / "tested", None, chosen_on="test")
    with pytest.raises(ResnetlabError, match="threshold was fitted on the test split"):
        load_trained(tested)
    capsys.readouterr()
    assert main(["predict", str(tested), str(images[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fit it again on validation" in err


def test_the_page_shows_the_set_and_the_action(runs, images):
    """The served page, in headless Chromium, shows what the JSON says."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (the browser test must run in CI)")
        pytest.skip(f"{CHROMIUM} is missing; install Debian's chromium to run the browser test")
    served = load_served(str(runs["sets"]), engine="torch")
    with TestClient(create_app(served)) as client:
        answers = [client.post("/predict", content=p.read_bytes()).json() for p in images]
    with Server(create_app(served)) as live, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page()
            page.goto(live.url)
            for image, answer in zip(images, answers, strict=True):
                if answer["action"] != REFER and image is not images[-1]:
                    continue  # one referred image and the last one are enough
                page.set_input_files("#file", str(image))
                page.wait_for_function(
                    "document.getElementById('status').textContent.endsWith('done')"
                )
                assert page.inner_text("#action-text") == answer["action"]
                held = ", ".join(answer["prediction_set"])
                assert page.inner_text("#action-set").startswith(f"95 % set: {held}")
                page.evaluate("document.getElementById('status').textContent = ''")
        finally:
            browser.close()
