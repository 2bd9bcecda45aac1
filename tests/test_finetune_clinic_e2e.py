"""End to end on a small image folder with a CSV manifest in which patients have several
images: grouped held-out splits, the card's threshold and temperature used by predict,
k-fold cross-validation, ``explain`` maps equal to the ``grad-cam`` package's, and DeLong's
``compare-runs``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from resnetlab.artifact import load_trained as load_model
from resnetlab.cli import main
from resnetlab.data import open_data
from resnetlab.data.preprocess import load_image, normalise, prepare_images

pytestmark = pytest.mark.slow  # real fine-tuning runs end to end

CLASSES = ("normal", "pneumonia")


def write_manifest_folder(root: Path, patients: int = 24, size: int = 32) -> Path:
    """``root/img/p<k>_<j>.png`` and ``manifest.csv``; patient k has 1 + k % 3 images."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = ["path,label,group"]
    for k in range(patients):
        label = k % 2
        for j in range(1 + k % 3):
            pixels = (rng.integers(0, 90, (size, size, 3)) + 130 * label).astype(np.uint8)
            Image.fromarray(pixels).save(root / "img" / f"p{k}_{j}.png")
            rows.append(f"img/p{k}_{j}.png,{CLASSES[label]},patient{k}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", str(data), "--model", "resnet20", "--pretrained", "none", "--full-epochs",
            "1", "--batch-size", "8", "--out", str(out), "--no-progress", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETLAB_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_manifest_folder(tmp_path_factory.mktemp("clinic") / "data")


@pytest.fixture(scope="module")
def run(data, home, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "single"
    assert main(argv(data, out, "--test-size", "0.25", "--val-size", "0.25")) == 0
    return out


def groups_by_split(run_dir: Path, data: Path) -> dict[str, set[str]]:
    """The patients of each split, from the run's stored image order and the manifest."""
    from resnetlab.finetune.prepare import open_finetune_data

    config = json.loads((run_dir / "config.json").read_text())
    bundle, _ = open_finetune_data(
        str(data), config["val_size"], config["seed"], test_size=config["test_size"],
        folds=config["folds"], fold=config["fold"],
    )  # fmt: skip
    return {s: set(getattr(bundle, s).groups) for s in ("train", "val", "test")}


def test_manifest_splits_never_share_a_patient(run, data):
    bundle = open_data(data)
    assert bundle.classes == list(CLASSES) and len(bundle.train) == 48
    parts = groups_by_split(run, data)
    assert all(parts.values())
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"]
    assert not parts["val"] & parts["test"]
    choices = (run / "choices.txt").read_text()
    assert "none in two splits" in choices


def test_card_holds_threshold_temperature_and_intervals(run):
    card = json.loads((run / "model_card.json").read_text())
    point, clinical = card["operating_point"], card["clinical"]
    assert point["rule"] == "youden" and 0 <= point["threshold"] <= 1
    assert 0.05 <= card["calibration"]["temperature"] <= 20
    for cut in ("at_threshold", "at_0.5"):
        m = clinical["test"][cut]
        for key in ("sensitivity", "specificity", "ppv", "npv", "f1", "balanced_accuracy"):
            assert key in m
        ci = m["ci95"]["roc_auc"]
        assert ci["low"] <= ci["value"] <= ci["high"]
        assert m["ci95"]["bootstrap"]["resamples"] >= 1000
    assert {"before", "after"} <= set(clinical["calibration"]["test"])
    for name in ("reliability_test.png", "pr_test.png", "gallery_test.png", "predictions_test.csv"):
        assert (run / name).is_file()
    report = (run / "report.html").read_text()
    assert "gallery_test.png" in report and "operating threshold" in report


def test_predict_json_has_calibrated_probability_threshold_and_decision(run, data, capsys):
    capsys.readouterr()
    image = data / "img" / "p1_0.png"
    assert main(["predict", str(run), str(image), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    loaded = load_model(run)
    x = normalise(prepare_images(load_image(image)[None], loaded.preprocessing),
                  loaded.preprocessing)  # fmt: skip
    with torch.no_grad():
        expected = torch.softmax(loaded.model(x) / loaded.card["calibration"]["temperature"], 1)
    assert row["probability"] == pytest.approx(float(expected[0, 1]), abs=1e-5)
    assert row["threshold"] == loaded.card["operating_point"]["threshold"]
    assert row["decision"] == CLASSES[int(row["probability"] >= row["threshold"])]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_explain_maps_match_the_grad_cam_package(run, data, tmp_path, method):
    images = [data / "img" / "p1_0.png", data / "img" / "p2_1.png"]
    out = tmp_path / "maps"
    assert main(["explain", str(run), *map(str, images), "--out", str(out), "--method",
                 method, "--class", "pneumonia"]) == 0  # fmt: skip
    loaded = load_model(run)
    layer = loaded.model.get_submodule("layer3.2")  # the CIFAR default: last block of layer3
    ref_class = GradCAM if method == "gradcam" else GradCAMPlusPlus
    for image in images:
        x = normalise(prepare_images(load_image(image)[None], loaded.preprocessing),
                      loaded.preprocessing)  # fmt: skip
        with ref_class(model=loaded.model, target_layers=[layer]) as cam:
            expected = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)])[0]
        ours = np.load(out / f"{image.stem}_{method.replace('++', 'pp')}.npy")
        assert ours.shape == expected.shape == (32, 32)
        assert np.abs(ours - expected).max() < 1e-4
        assert (out / f"{image.stem}_{method.replace('++', 'pp')}.png").is_file()
    assert json.loads((out / "explain.json").read_text())["images"][0]["layer"] == "layer3.2"


@pytest.mark.slow
def test_k_fold_cross_validation_and_delong(run, data, tmp_path, capsys):
    out = tmp_path / "cv"
    assert main(argv(data, out, "--test-size", "0.25", "--folds", "3")) == 0
    held = set()
    for k in range(1, 4):
        parts = groups_by_split(out / f"fold-{k}", data)
        assert not parts["train"] & parts["val"] and not parts["val"] & parts["test"]
        assert not held & parts["val"]  # each patient is out-of-fold exactly once
        held |= parts["val"]
    assert held | parts["test"] == parts["train"] | parts["val"] | parts["test"]
    rows = (out / "cv_metrics.csv").read_text().splitlines()
    assert rows[-2].startswith("mean,") and rows[-1].startswith("sd,")
    summary = json.loads((out / "cv_summary.json").read_text())
    assert any("mean ± sd over 3 folds" in line for line in summary["summary"])
    assert (out / "report.html").is_file() and (out / "predictions_oof.csv").is_file()
    capsys.readouterr()
    assert main(["compare-runs", str(run), str(out), "--json"]) == 0
    text = capsys.readouterr().out
    result = json.loads(text[text.index("{") :])
    assert 0 <= result["p_value"] <= 1 and result["test"] == "DeLong (1988)"


def test_a_group_in_two_splits_is_refused(tmp_path, home, capsys):
    root = write_manifest_folder(tmp_path / "d", patients=4)
    lines = (root / "manifest.csv").read_text().splitlines()
    lines = ["path,label,group,split"] + [
        line + (",test" if i == 1 else ",train") for i, line in enumerate(lines[1:])
    ]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    assert main(argv(root, tmp_path / "r")) == 2
    assert "group 'patient1' is in more than one split" in capsys.readouterr().err


def test_too_many_folds_for_the_patients_is_a_clear_error(tmp_path, home, capsys):
    root = write_manifest_folder(tmp_path / "d", patients=6)
    assert main(argv(root, tmp_path / "r", "--folds", "5")) == 2
    assert "fewer than --folds 5" in capsys.readouterr().err


def test_evaluate_reports_the_cards_threshold_figures(run, data, tmp_path, capsys):
    from resnetlab.finetune.prepare import open_finetune_data

    bundle, _ = open_finetune_data(str(data), 0.25, 0, test_size=0.25)
    folder = tmp_path / "held-out-test"  # the run's own test split as an image folder
    for i, (image, label) in enumerate(zip(bundle.test.images, bundle.test.labels, strict=True)):
        (folder / "test" / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(
            folder / "test" / CLASSES[label] / f"{i}.png"
        )
    for name in CLASSES:  # a train split is required by the folder layout
        (folder / "train" / name).mkdir(parents=True, exist_ok=True)
        (folder / "train" / name / "0.png").write_bytes(
            (folder / "test" / name).glob("*.png").__next__().read_bytes()
        )
    assert main(["evaluate", str(run), str(folder), "--out", str(tmp_path / "ev")]) == 0
    assert "test at threshold" in capsys.readouterr().out
    figures = json.loads((tmp_path / "ev" / "metrics_test.json").read_text())["clinical"]["test"]
    card = json.loads((run / "model_card.json").read_text())["clinical"]["test"]
    for cut in ("at_threshold", "at_0.5"):
        for key in ("sensitivity", "specificity", "ppv", "npv"):
            assert figures[cut][key] == pytest.approx(card[cut][key], nan_ok=True)


def test_monitor_auto_picks_pr_auc_on_imbalanced_two_class_data():
    from resnetlab.finetune.prepare import auto_monitor

    assert auto_monitor("auto", {"a": 100, "b": 100})[0] == "balanced_accuracy"
    monitor, note = auto_monitor("auto", {"a": 900, "b": 100})
    assert monitor == "pr_auc" and "imbalanced" in note
    assert auto_monitor("loss", {"a": 900, "b": 100}) == ("loss", None)
