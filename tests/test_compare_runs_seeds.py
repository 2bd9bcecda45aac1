"""``compare-runs A1 A2 A3 --vs B1 B2 B3``: each run's figures against scikit-learn, the groups'
t-intervals and the Welch interval of B - A against statsmodels, the verdict and the seeds'
disagreement read off those numbers, and one-line refusals of runs that do not belong together;
two runs are still DeLong's test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from resnetlab.cli import main

N = 60
LABELS = (np.arange(N) % 3 == 0).astype(int)
DIGESTS = [f"{i:064x}" for i in range(N)]


def make_run(folder: Path, strength: float, seed: int, threshold: float = 0.5,
             classes=("normal", "pneumonia"), source: str = "chest.npz",
             digests: list[str] | None = DIGESTS) -> Path:  # fmt: skip
    """A fine-tuning run as compare-runs reads it: its card and its test predictions, the
    positive class scored ``strength`` higher on average."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    probs = 1 / (1 + np.exp(-(strength * (LABELS - 0.5) + rng.normal(0, 1, N))))
    card = {"format": "resnetlab-model-card/1", "model": {"name": "resnet18"},
            "classes": list(classes), "preprocessing": {},
            "operating_point": {"threshold": threshold},
            "training": {"data": {"source": source}}}  # fmt: skip
    (folder / "model_card.json").write_text(json.dumps(card))
    with (folder / "predictions_test.csv").open("w", newline="") as handle:
        fields = ["index", "label", "probability"] + (["image_sha256"] if digests else [])
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        for i in range(N):
            row = {"index": i, "label": LABELS[i], "probability": f"{probs[i]:.6f}"}
            writer.writerow(row | ({"image_sha256": digests[i]} if digests else {}))
    return folder


def group(root: Path, strength: float, seeds=(0, 1, 2), **kwargs) -> list[Path]:
    return [make_run(root / f"seed{s}", strength, 10 * s + int(10 * strength), **kwargs)
            for s in seeds]  # fmt: skip


def rates(run: Path, threshold: float) -> dict[str, float]:
    rows = list(csv.DictReader((run / "predictions_test.csv").open()))
    p = np.array([float(r["probability"]) for r in rows])
    y = np.array([int(r["label"]) for r in rows]) == 1
    hit = p >= threshold
    return {
        "auc": roc_auc_score(y, p),
        "sensitivity": (hit & y).sum() / y.sum(),
        "specificity": (~hit & ~y).sum() / (~y).sum(),
        "accuracy": (hit == y).mean(),
    }


def test_groups_of_seeds_against_statsmodels(tmp_path, capsys):
    a = group(tmp_path / "A", 0.8)
    b = group(tmp_path / "B", 3.0, threshold=0.4)
    out = tmp_path / "cmp.json"
    # group A as its run folders, group B as their parent folder
    assert main(["compare-runs", *map(str, a), "--vs", str(tmp_path / "B"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    for name, runs, cut in (("A", a, 0.5), ("B", b, 0.4)):
        expected = [rates(r, cut) for r in runs]
        for row, want in zip(result["runs"][name], expected, strict=True):
            for key, value in want.items():
                assert row[key] == pytest.approx(value, abs=1e-9), (name, key)
        for key in ("auc", "sensitivity", "specificity", "accuracy"):
            values = np.array([w[key] for w in expected])
            lo, hi = DescrStatsW(values).tconfint_mean(alpha=0.05)
            got = result["groups"][name][key]
            assert got["mean"] == pytest.approx(values.mean())
            assert got["sd"] == pytest.approx(values.std(ddof=1))
            assert (got["lo"], got["hi"]) == pytest.approx((lo, hi))
    auc = {k: np.array([rates(r, c)["auc"] for r in runs]) for k, runs, c in
           (("A", a, 0.5), ("B", b, 0.4))}  # fmt: skip
    lo, hi = CompareMeans(DescrStatsW(auc["B"]), DescrStatsW(auc["A"])).tconfint_diff(
        alpha=0.05, usevar="unequal")  # fmt: skip
    diff = result["difference_b_minus_a"]["auc"]
    assert diff["mean"] == pytest.approx(auc["B"].mean() - auc["A"].mean())
    assert (diff["lo"], diff["hi"]) == pytest.approx((lo, hi))
    # Welch's test agrees with the interval: it excludes 0 exactly when p < 0.05
    p = stats.ttest_ind(auc["B"], auc["A"], equal_var=False).pvalue
    assert (p < 0.05) == (lo > 0 or hi < 0)
    assert lo > 0, "the setup makes B clearly better"
    assert result["verdict"].startswith("B better: the 95 % interval of B - A excludes 0")
    assert result["verdict"] in printed and "seeds disagree" not in printed
    assert result["seeds_disagree"] is False
    assert printed.count("3 runs)") == 8  # 4 figures per group, each over its 3 runs


def test_no_difference_and_disagreeing_seeds_are_said(tmp_path, capsys):
    a = group(tmp_path / "A", 1.0, seeds=(0, 1, 2, 3))
    b = group(tmp_path / "B", 1.0, seeds=(4, 5, 6, 7))
    assert main(["compare-runs", str(tmp_path / "A"), "--vs", *map(str, b), "--json"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.index("{") :])
    diff = result["difference_b_minus_a"]["auc"]
    auc_a = np.array([rates(r, 0.5)["auc"] for r in a])
    auc_b = np.array([rates(r, 0.5)["auc"] for r in b])
    lo, hi = CompareMeans(DescrStatsW(auc_b), DescrStatsW(auc_a)).tconfint_diff(usevar="unequal")
    assert (diff["lo"], diff["hi"]) == pytest.approx((lo, hi))
    assert lo < 0 < hi and result["verdict"].startswith("no difference shown")
    signs = np.sign(auc_b - auc_a)
    assert result["seeds_disagree"] == bool((signs != np.sign(diff["mean"])).any())
    assert result["seeds_disagree"] == ("the seeds disagree" in printed)


def one_line_error(capsys, argv: list[str], words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err, err


def test_runs_that_do_not_belong_together_are_refused(tmp_path, capsys):
    a = group(tmp_path / "A", 1.0)
    b = group(tmp_path / "B", 2.0)
    other = make_run(tmp_path / "other", 1.0, 99, classes=("normal", "covid"))
    one_line_error(capsys, ["compare-runs", *map(str, a[:2]), str(other), "--vs", *map(str, b)],
                   "group A's runs differ in their classes")  # fmt: skip
    elsewhere = make_run(tmp_path / "elsewhere", 1.0, 98, source="other.npz")
    one_line_error(capsys, ["compare-runs", *map(str, a), "--vs", str(elsewhere), *map(str, b)],
                   "group B's runs differ in their training data")  # fmt: skip
    shifted = make_run(tmp_path / "shifted", 1.0, 97, digests=DIGESTS[1:] + DIGESTS[:1])
    one_line_error(capsys, ["compare-runs", *map(str, a), "--vs", str(shifted), *map(str, b)],
                   "the test images differ")  # fmt: skip
    renamed = group(tmp_path / "R", 2.0, classes=("healthy", "pneumonia"))
    one_line_error(capsys, ["compare-runs", *map(str, a), "--vs", *map(str, renamed)],
                   "the groups' classes differ")  # fmt: skip
    one_line_error(capsys, ["compare-runs", *map(str, a)], "3 run(s) given")
    one_line_error(capsys, ["compare-runs", str(a[0]), "--vs", *map(str, b)],
                   "groups of 1 and 3 run(s)")  # fmt: skip
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["compare-runs", str(tmp_path / "empty"), "--vs", str(tmp_path / "B")],
                   "no predictions_test.csv in it or in its sub-folders")  # fmt: skip


def test_two_runs_are_still_delongs_test(tmp_path, capsys):
    a = make_run(tmp_path / "a", 1.0, 1)
    b = make_run(tmp_path / "b", 2.0, 2)
    assert main(["compare-runs", str(a), str(b), "--json"]) == 0
    plain = capsys.readouterr().out
    assert main(["compare-runs", str(a), "--vs", str(b), "--json"]) == 0
    assert capsys.readouterr().out == plain
    result = json.loads(plain[plain.index("{") :])
    assert result["test"] == "DeLong (1988)"
    assert result["auc_a"] == pytest.approx(rates(a, 0.5)["auc"])
