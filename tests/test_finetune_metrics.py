"""Classification metrics agree with scikit-learn's reference implementations."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn import metrics as skm

from resnetlab.evaluation.metrics import classification_metrics, roc_auc


@pytest.mark.parametrize("num_classes", [2, 4])
def test_metrics_match_scikit_learn(num_classes: int) -> None:
    generator = torch.Generator().manual_seed(num_classes)
    labels = torch.randint(0, num_classes, (300,), generator=generator)
    logits = torch.randn(300, num_classes, generator=generator)
    logits[torch.arange(300), labels] += 1.0  # a better-than-chance classifier
    logits[:20] = logits[:20].round()  # ties in the scores
    result = classification_metrics(logits, labels)
    y, p = labels.numpy(), logits.argmax(1).numpy()
    probabilities = torch.softmax(logits, 1).numpy()
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert result["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, p, zero_division=0)
    for i, row in enumerate(result["per_class"].values()):
        assert row["precision"] == pytest.approx(precision[i])
        assert row["recall"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i])
        assert row["support"] == support[i]
    expected_auc = (
        skm.roc_auc_score(y, probabilities[:, 1])
        if num_classes == 2
        else skm.roc_auc_score(y, probabilities, multi_class="ovr", average="macro")
    )
    assert result["roc_auc"] == pytest.approx(expected_auc, abs=1e-9)
    assert result["confusion_matrix"] == skm.confusion_matrix(y, p).tolist()
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())


def test_auc_edge_cases() -> None:
    assert roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([False, True])) == 1.0
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([False, True])) == 0.5
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([True, True])))
