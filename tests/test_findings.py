"""Findings state the claim, the measurement and their relation, all computed from numbers."""

from __future__ import annotations

from resnetlab.experiments.degradation import verdict
from resnetlab.reports.findings import (
    conv_gradient_finding,
    degradation_findings,
    response_finding,
)


def _finals(plain: tuple[float, float], res: tuple[float, float]) -> dict:
    """Final errors of plain/ResNet 20 and 56 (train, test) as ``degradation.verdict`` reads."""
    out = {}
    for kind, (shallow, deep) in (("plain", plain), ("residual", res)):
        for depth, error in ((20, shallow), (56, deep)):
            out[f"{kind}{depth}"] = {"kind": kind, "depth": depth, "train": error, "val": None,
                                     "test": error + 0.01}  # fmt: skip
    return out


def test_claim_two_failing_keeps_its_conclusion() -> None:
    # the numbers: depth cost plain nets +20.8 points, ResNets +4.5
    claims = verdict(_finals((0.10, 0.308), (0.08, 0.125)))
    one, two = degradation_findings(claims, 1200, 64000)
    assert one["holds"] and not two["holds"]
    assert "+20.8 points" in one["measured"] and "+4.5 points" in two["measured"]
    assert two["verdict"] == (
        "Claim 2 (deeper ResNets train better): does not hold; ResNet-20 → ResNet-56 +4.5 "
        "points, against the plain nets' +20.8 points: shortcuts removed 78 % of the cost of "
        "depth."
    )
    assert "1,200 of the recipe's 64,000 iterations (1.9 %)" in two["relation"]
    assert "§4.2" in two["source"] and two["claim"].startswith("With shortcuts")


def test_claims_that_hold_say_so() -> None:
    one, two = degradation_findings(verdict(_finals((0.10, 0.20), (0.09, 0.07))), 64000, 64000)
    assert one["holds"] and two["holds"] and "as the paper reports" in two["relation"]
    assert "removed 100 % of the degradation" in two["relation"]


def test_exploding_plain_gradients_are_explained_not_left_to_the_reader() -> None:
    found = conv_gradient_finding([("plain20", "resnet20", 19.3, 7.61),
                                   ("plain56", "resnet56", 1.47e4, 33.2)], "at initialisation")
    assert found["holds"] is False
    assert "explodes rather than vanishes" in found["relation"]
    assert "Yang et al. 2019" in found["relation"] and "Balduzzi et al. 2017" in found["relation"]
    assert "plain56 1.47e+04, resnet56 33.2" in found["measured"]
    vanishing = conv_gradient_finding([("p", "r", 0.01, 0.9)], "at initialisation")
    assert vanishing["holds"] and "vanishes, as the lesson says" in vanishing["relation"]


def test_responses_at_initialisation_are_set_against_fig7() -> None:
    found = response_finding([("plain20", "resnet20", [1.0, 0.5], [1.0, 5.0])], at_init=True)
    assert found["holds"] is False and "after training" in found["relation"]
    assert "×5" in found["relation"] and "plain20: ×1/2" in found["relation"]
    trained = response_finding([("p", "r", [1.0, 1.0], [0.2, 0.1])], at_init=False)
    assert trained["holds"] and "as in Fig. 7" in trained["relation"]


def test_responses_smaller_in_the_mean_but_not_layer_by_layer_do_not_match_fig7() -> None:
    """A ResNet whose mean is pulled down by a few layers, but larger at most layers, is not
    Fig. 7's picture (the 56-layer pair trained for 500 iterations looked like this)."""
    plain, residual = [3.0, 0.8, 0.8, 0.8, 0.8], [0.9, 1.0, 1.0, 1.0, 1.0]
    found = response_finding([("p", "r", plain, residual)], at_init=False)
    assert not found["holds"] and "r the smaller at 1 of 5 layers" in found["measured"]
