"""Gradient flow at initialisation: the seed MLP and per-block profiles of CIFAR nets."""

from __future__ import annotations

import math

import pytest
import torch

from resnetlab import create_model
from resnetlab.analysis.gradients import (
    find_blocks,
    gradient_profile,
    layer_response_stds,
    mlp_batch,
    mlp_stack,
    seed_mlp_gradients,
)


def test_seed_mlp_residual_keeps_gradient_and_gap_grows_with_depth():
    rows = seed_mlp_gradients(depths=(10, 20), seed=0)
    norm = {(r["depth"], r["kind"]): r["grad_norm"] for r in rows}
    assert len(rows) == 4 and all(math.isfinite(v) and v >= 0 for v in norm.values())
    assert norm[(20, "residual")] > norm[(20, "plain")]
    ratio10 = norm[(10, "residual")] / norm[(10, "plain")]
    ratio20 = norm[(20, "residual")] / norm[(20, "plain")]
    assert ratio20 > ratio10 > 1


def test_seed_mlp_is_deterministic():
    assert seed_mlp_gradients(seed=3) == seed_mlp_gradients(seed=3)


def test_profile_matches_manual_gradient_of_first_block_input():
    torch.manual_seed(0)
    model = mlp_stack(3, width=8, skip=True)
    x, y = mlp_batch(4, 8, seed=1)
    profile = gradient_profile(model, x, y)
    leaf = x.clone().requires_grad_(True)
    torch.nn.functional.binary_cross_entropy_with_logits(model(leaf), y).backward()
    assert profile["blocks"] == ["0", "1", "2"]
    assert profile["input_grad_norm"][0] == pytest.approx(float(leaf.grad.norm()), rel=1e-5)
    weight_norm = math.sqrt(
        float(model[0].fc1.weight.grad.pow(2).sum() + model[0].fc2.weight.grad.pow(2).sum())
    )
    assert profile["weight_grad_norm"][0] == pytest.approx(weight_norm, rel=1e-5)


def test_profile_leaves_grads_and_bn_statistics_untouched():
    torch.manual_seed(0)
    model = create_model("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradient_profile(model, torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _first_last_ratio(name: str, seeds=(0, 1)) -> float:
    values = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = create_model(name)
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(8, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        norms = gradient_profile(model, x, y)["input_grad_norm"]
        values.append(norms[0] / norms[-1])
    return sum(values) / len(values)


def test_resnet20_profile_is_flatter_than_plain20():
    assert len(find_blocks(create_model("resnet20"))) == 9
    plain, residual = _first_last_ratio("plain20"), _first_last_ratio("resnet20")
    # distance from a flat profile (ratio 1) on a log scale
    assert abs(math.log(residual)) < abs(math.log(plain))


def test_layer_responses_cover_every_3x3_layer():
    torch.manual_seed(0)
    model = create_model("resnet20")
    result = layer_response_stds(model, torch.randn(4, 3, 32, 32))
    assert len(result["std"]) == 19  # stem + 9 blocks × 2
    assert result["layers"][0] == "bn1" and result["layers"][-1] == "layer3.2.bn2"
    assert all(s > 0 for s in result["std"]) and model.training
