"""What a journal reviewer asks of an evaluation: PPV and NPV at a deployment prevalence (Bayes'
rule by hand, per bootstrap resample too), metrics per subgroup of a manifest column
(scikit-learn on the same subset), and external validations recorded in the model card; the
commands end to end on a tiny fine-tuned run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

from resnetlab.artifact import Trained, load_trained, run_summary
from resnetlab.card import CARD_NAME, EXTERNAL, add_external_validation, read_card, write_card
from resnetlab.cli import main
from resnetlab.data import open_data
from resnetlab.evaluation.decision import predictive_value_intervals, predictive_values
from resnetlab.evaluation.subgroups import subgroup_metrics
from resnetlab.evaluation.uncertainty import stratified_weights
from resnetlab.finetune.validation import record_external

CLASSES = ("normal", "pneumonia")
SITES = ("north", "south")


def write_data(root: Path, patients: int = 60, size: int = 16, seed: int = 0) -> Path:
    """``root/img/p<k>.png`` and a manifest with a site and a sex column; the test split is
    fixed (every fourth patient) so each site has both classes there."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    rows = ["path,label,group,split,site,sex"]
    for k in range(patients):
        label = k % 2
        shift = rng.integers(0, 60) + 25 * label  # overlapping classes: AUC below 1
        pixels = (rng.integers(0, 150, (size, size, 3)) + shift).astype(np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"p{k}.png")
        split = "test" if k % 4 in (0, 1) and k < 48 else "train"
        site = SITES[(k // 4) % 2]
        rows.append(f"img/p{k}.png,{CLASSES[label]},patient{k},{split},{site},{'FM'[k % 3 == 0]}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETLAB_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("reviewer") / "data")


@pytest.fixture(scope="module")
def run(data, home, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    argv = ["finetune", str(data), "--model", "resnet20", "--pretrained", "none",
            "--full-epochs", "1", "--batch-size", "8", "--val-size", "0.25", "--out", str(out),
            "--no-progress", "--prevalence", "0.05"]  # fmt: skip
    assert main(argv) == 0
    return out


def bayes(sens: float, spec: float, p: float) -> tuple[float, float]:
    """PPV and NPV written out from Bayes' rule."""
    ppv = sens * p / (sens * p + (1 - spec) * (1 - p))
    npv = spec * (1 - p) / (spec * (1 - p) + (1 - sens) * p)
    return ppv, npv


def test_predictive_value_intervals_are_bayes_rule_per_resample() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(80) < 0.5
    p = np.clip(0.3 * y + 0.7 * rng.random(80), 0, 1)
    cut, prevalence = 0.5, 0.05
    out = predictive_value_intervals(p, y, cut, prevalence, n_resamples=300, seed=7)
    sens = recall_score(y, p >= cut)
    spec = recall_score(~y, p < cut)
    assert (out["sensitivity"], out["specificity"]) == pytest.approx((sens, spec))
    assert (out["ppv"], out["npv"]) == pytest.approx(bayes(sens, spec, prevalence))
    assert out["test_prevalence"] == pytest.approx(y.mean())
    # the same stratified resamples, each turned into PPV/NPV by hand
    wp, wn = stratified_weights(y, 300, 7)
    sp, sn = np.sort(p[y]), np.sort(p[~y])
    by_hand = [bayes((w1 @ (sp >= cut)) / len(sp), (w0 @ (sn < cut)) / len(sn), prevalence)
               for w1, w0 in zip(wp, wn, strict=True)]  # fmt: skip
    ppv, npv = np.array(by_hand).T
    ci = out["ci95"]
    assert [ci["ppv"]["low"], ci["ppv"]["high"]] == pytest.approx(np.percentile(ppv, [2.5, 97.5]))
    assert [ci["npv"]["low"], ci["npv"]["high"]] == pytest.approx(np.percentile(npv, [2.5, 97.5]))
    assert ci["ppv"]["low"] <= out["ppv"] <= ci["ppv"]["high"]
    # a balanced test set overstates PPV at a low prevalence
    assert out["ppv"] < bayes(sens, spec, y.mean())[0]


def test_subgroup_metrics_match_scikit_learn_on_each_subset() -> None:
    rng = np.random.default_rng(5)
    n = 90
    y = (rng.random(n) < 0.4).astype(int)
    p1 = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    probs = np.stack([1 - p1, p1], 1)
    site = ["a"] * 40 + ["b"] * 42 + ["c"] * 8
    cut = 0.45
    out = subgroup_metrics(probs, y, {"site": site}, cut, resamples=200)
    groups = out["columns"]["site"]["subgroups"]
    for value in ("a", "b"):
        keep = np.array(site) == value
        g, yy, pp = groups[value], y[keep], p1[keep]
        assert g["measured"] and g["n"] == keep.sum() and g["positives"] == yy.sum()
        assert g["roc_auc"]["value"] == pytest.approx(roc_auc_score(yy, pp))
        assert g["sensitivity"]["value"] == pytest.approx(recall_score(yy, pp >= cut))
        assert g["specificity"]["value"] == pytest.approx(recall_score(1 - yy, pp < cut))
        assert g["accuracy"]["value"] == pytest.approx(accuracy_score(yy, pp >= cut))
        assert g["roc_auc"]["low"] <= g["roc_auc"]["value"] <= g["roc_auc"]["high"]
    assert groups["c"] == {"n": 8, "positives": int(y[82:].sum()), "measured": False,
                           "why": "too few images (8 < 10)"}  # fmt: skip
    spread = out["columns"]["site"]["spread"]["roc_auc"]
    aucs = {v: groups[v]["roc_auc"]["value"] for v in ("a", "b")}
    assert spread["range"] == pytest.approx(max(aucs.values()) - min(aucs.values()))
    assert spread["lowest"] == min(aucs, key=aucs.__getitem__)
    # a subgroup with one class: listed, its AUC said undefined
    one = subgroup_metrics(probs, np.r_[np.zeros(40, int), y[40:]], {"site": site}, cut)
    assert one["columns"]["site"]["subgroups"]["a"]["why"] == "no positives: ROC-AUC undefined"


def test_subgroup_accuracy_with_more_classes_matches_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), 60)
    y = rng.integers(0, 3, 60)
    out = subgroup_metrics(probs, y, {"sex": ["F", "M"] * 30}, None, resamples=100)
    g = out["columns"]["sex"]["subgroups"]["F"]
    keep = np.arange(60) % 2 == 0
    assert g["accuracy"]["value"] == pytest.approx(accuracy_score(y[keep], probs[keep].argmax(1)))
    assert g["roc_auc"]["value"] == pytest.approx(
        roc_auc_score(y[keep], probs[keep], multi_class="ovr", average="macro")
    )


def test_manifest_keeps_other_columns_per_image(data, home) -> None:
    bundle = open_data(data)
    test = bundle.test
    rows = [r.split(",") for r in (data / "manifest.csv").read_text().split()[1:]]
    expected = [r for r in rows if r[3] == "test"]
    assert test.columns == {"site": [r[4] for r in expected], "sex": [r[5] for r in expected]}
    part = test.subset(torch.tensor([2, 0]), "picked")
    assert part.columns["site"] == [expected[2][4], expected[0][4]]


def test_finetune_records_the_predictive_values_at_the_prevalence(run) -> None:
    card = read_card(run / CARD_NAME)
    assert card["training"]["options"]["prevalence"] == 0.05
    test = card["clinical"]["test"]
    rates, at = test["at_threshold"], test["reviewer"]["prevalence"]
    assert (at["ppv"], at["npv"]) == pytest.approx(
        bayes(rates["sensitivity"], rates["specificity"], 0.05), nan_ok=True
    )
    assert any("at a prevalence of 5.0%" in line for line in card["summary"])


def test_evaluate_subgroups_and_prevalence(run, data, tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", str(run), str(data), "--out", str(out), "--subgroups", "site,sex",
            "--prevalence", "0.1", "--engine", "torch"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "test site=north" in printed and "spread over site" in printed
    assert "at a prevalence of 10.0%" in printed
    metrics = json.loads((out / "metrics_test.json").read_text())
    rows = (out / "predictions_test.csv").read_text().split()[1:]
    header = (out / "predictions_test.csv").read_text().split()[0].split(",")
    table = [dict(zip(header, r.split(","), strict=True)) for r in rows]
    p1 = np.array([float(r["probability"]) for r in table])
    y = np.array([int(r["label"]) for r in table])
    sites = open_data(data).test.columns["site"]
    cut = metrics["clinical"]["threshold"]["threshold"]
    groups = metrics["subgroups"]["columns"]["site"]["subgroups"]
    assert [g["measured"] for g in groups.values()] == [True, True]
    for value, g in groups.items():
        keep = np.array(sites) == value
        assert g["n"] == keep.sum()
        if g["measured"]:
            assert g["roc_auc"]["value"] == pytest.approx(roc_auc_score(y[keep], p1[keep]))
            assert g["sensitivity"]["value"] == pytest.approx(
                recall_score(y[keep], p1[keep] >= cut)
            )
    rates = metrics["clinical"]["test"]["at_threshold"]
    prevalence = metrics["clinical"]["test"]["reviewer"]["prevalence"]
    assert prevalence["ppv"] == pytest.approx(
        bayes(rates["sensitivity"], rates["specificity"], 0.1)[0], nan_ok=True
    )
    assert metrics["summary"][0].startswith("test: at a prevalence of 10.0%, PPV")
    # the run's own data: no external validation
    assert EXTERNAL not in read_card(run / CARD_NAME)


def test_evaluate_into_the_run_folder_adds_subgroups_to_its_report(run, data, tmp_path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    argv = ["evaluate", str(copy), str(data), "--out", str(copy), "--subgroups", "site",
            "--engine", "torch"]  # fmt: skip
    assert main(argv) == 0
    report = (copy / "report.md").read_text()
    assert "test site=south (n 12, 6 positive)" in report and "spread over site" in report


def test_evaluate_refuses_an_unknown_column(run, data, capsys) -> None:
    assert main(["evaluate", str(run), str(data), "--subgroups", "scanner"]) == 2
    err = capsys.readouterr().err
    assert "'scanner'" in err and "sex, site" in err


def test_external_validations_accumulate_in_the_card(run, data, tmp_path, capsys) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    other = write_data(tmp_path / "site2", seed=1)
    third = write_data(tmp_path / "site3", seed=2)
    for target in (other, other, third):
        assert main(["evaluate", str(copy), str(target), "--engine", "torch"]) == 0
    card = read_card(copy / CARD_NAME)
    entries = card[EXTERNAL]
    assert [e["name"] for e in entries] == ["site2", "site3"]  # re-run replaced its entry
    entry = entries[0]
    assert entry["split"] == "test" and entry["images"] == 24 and entry["fingerprint"]
    own = card["metrics"]["test"]
    assert entry["drop"]["roc_auc"] == pytest.approx(own["roc_auc"] - entry["metrics"]["roc_auc"])
    assert load_trained(copy).card[EXTERNAL] == entries  # the card still loads
    capsys.readouterr()
    assert main(["summary", str(copy)]) == 0
    assert "external validation on site2 (test, 24 images" in capsys.readouterr().out
    assert "external validation" not in run_summary(run)  # an older card: no such line


def test_a_model_without_a_run_folder_records_nothing(run, capsys) -> None:
    loaded = load_trained(run)
    bare = Trained(loaded.model, loaded.card, loaded.preprocessing, loaded.classes, label="x")
    assert record_external(bare, {"name": "d", "split": "test"}) is False
    assert "not recorded" in capsys.readouterr().err


def test_add_external_validation_replaces_the_same_data(tmp_path) -> None:
    write_card(tmp_path, {"model": {}, "classes": ["a", "b"], "preprocessing": {}})
    for value in (0.8, 0.7):
        add_external_validation(tmp_path, {"data": "/d", "split": "test", "auc": value})
    add_external_validation(tmp_path, {"data": "/d", "split": "val", "auc": 0.6})
    card = json.loads((tmp_path / CARD_NAME).read_text())
    assert [(e["split"], e["auc"]) for e in card[EXTERNAL]] == [("test", 0.7), ("val", 0.6)]


def test_predict_at_a_prevalence(run, data, tmp_path, capsys) -> None:
    image = str(data / "img" / "p0.png")
    assert main(["predict", str(run), image, "--prevalence", "0.05", "--engine", "torch"]) == 0
    card = read_card(run / CARD_NAME)
    rates = card["clinical"]["test"]["at_threshold"]
    ppv, npv = bayes(rates["sensitivity"], rates["specificity"], 0.05)
    assert predictive_values(rates["sensitivity"], rates["specificity"], 0.05)["ppv"] == (
        pytest.approx(ppv, nan_ok=True)
    )
    out = capsys.readouterr().out
    assert f"at a prevalence of 5.0%, PPV {ppv:.3f}" in out and f"NPV {npv:.3f}" in out
    # a run whose card has no test rates: one line saying so
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    card["clinical"].pop("test")
    write_card(bare, {k: v for k, v in card.items() if k != "format"})
    assert main(["predict", str(bare), image, "--prevalence", "0.05", "--engine", "torch"]) == 0
    assert "has no test rates" in capsys.readouterr().out


def test_prevalence_refused_for_a_model_of_more_classes(data, home, capsys) -> None:
    image = str(data / "img" / "p0.png")
    assert main(["predict", "resnet20", image, "--prevalence", "0.05"]) == 2
    assert "two-class models" in capsys.readouterr().err
    assert main(["predict", "resnet20", image, "--prevalence", "1.5"]) == 2
