"""Explanation checks against quantus: the cascading randomisation test equals quantus's MPRT and
deletion equals its PixelFlipping, on a small CIFAR ResNet with trained-like BN statistics."""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch

from resnetlab import create_model
from resnetlab.analysis.explanation_checks import (
    area,
    cascading_randomisation,
    faithfulness,
    perturbation_curves,
    resettable_layers,
)
from resnetlab.analysis.gradcam import cam_maps


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3).eval()
    for m in model.modules():  # not the freshly initialised BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def gradcam(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return cam_maps(model, x, target=targets)["maps"]


def quantus_explain(model, inputs, targets, **kwargs) -> np.ndarray:
    x = torch.as_tensor(inputs, dtype=torch.float32)
    maps = gradcam(model.eval(), x, torch.as_tensor(targets))
    return maps[:, None].numpy()


@pytest.mark.slow
def test_randomisation_equals_quantus_mprt() -> None:
    model = small_net()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 0])
    ours = cascading_randomisation(model, x, targets, gradcam, seed=42)
    metric = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=targets.numpy(), a_batch=None,
                    explain_func=quantus_explain, device="cpu")  # fmt: skip
    layers = [n for n, _ in resettable_layers(model)]
    assert [s["layer"] for s in ours["steps"]] == layers
    for step in ours["steps"]:
        np.testing.assert_allclose(step["spearman"], theirs[step["layer"]], atol=1e-6)
    # the check can fail: after the head and last block are reset the maps must have changed
    assert ours["steps"][-1]["mean"] < 0.9
    # and the trained model was not touched
    assert torch.equal(small_net().fc.weight, model.fc.weight)


def test_deletion_equals_quantus_pixel_flipping() -> None:
    model = small_net()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 0, 2])
    saliency = gradcam(model, x, targets) + torch.rand(3, 32, 32) * 1e-6  # no ties
    curves = perturbation_curves(model, x, targets, saliency, pixels_per_step=64)
    metric = quantus.PixelFlipping(features_in_step=64, perturb_baseline="black",
                                   disable_warnings=True)  # fmt: skip
    a = saliency[:, None].numpy()
    theirs = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=targets.numpy(),
                               a_batch=a, device="cpu"))  # fmt: skip
    # quantus steps through the map broadcast to the channels (64 values a step, 3 steps a
    # pixel set); after every third step it has removed exactly our 64 pixels
    assert theirs.shape == (3, 48)
    np.testing.assert_allclose(curves["deletion"][:, 1:], theirs[:, 2::3], atol=1e-5)
    # both curves end where the other starts: all deleted is the baseline, all inserted is x
    np.testing.assert_allclose(curves["deletion"][:, -1], curves["insertion"][:, 0], atol=1e-6)
    np.testing.assert_allclose(curves["insertion"][:, -1], curves["deletion"][:, 0], atol=1e-6)


def test_faithfulness_scores_a_real_map_above_a_random_one() -> None:
    # a model that looks only at the top-left quarter: the map that says so must beat noise
    class Corner(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x[:, :, :8, :8].mean((1, 2, 3))
            return torch.stack([s, -s], 1) * 8 - 2  # p(class 0) from 0.02 (dark) to 0.98

    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    saliency = torch.zeros(5, 16, 16)
    saliency[:, :8, :8] = 1 + torch.rand(5, 8, 8)
    out = faithfulness(Corner(), x, torch.zeros(5, dtype=torch.long), saliency, steps=16)
    assert np.all(np.array(out["deletion_auc"]) < np.array(out["random_deletion_auc"]))
    assert np.all(np.array(out["insertion_auc"]) > np.array(out["random_insertion_auc"]))
    assert area(np.array([[1.0, 1.0, 1.0]]))[0] == pytest.approx(1.0)
