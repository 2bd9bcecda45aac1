"""Grad-CAM and Grad-CAM++ against the ``grad-cam`` package on the same model, layer and
images, for each family's default layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from resnetlab import create_model
from resnetlab.analysis.gradcam import cam_maps, default_layer, find_layer, overlay
from resnetlab.errors import ResnetlabError

REFERENCE = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}


@pytest.mark.parametrize(
    ("name", "size", "layer"),
    [("resnet20", 32, "layer3.2"), ("resnet18", 64, "layer4.1"), ("plain18", 64, "layer4.1"),
     ("vgg11", 64, "features.18")],
)  # fmt: skip
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_maps_match_grad_cam(name, size, layer, method):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    assert default_layer(model) == layer
    x = torch.randn(3, 3, size, size)
    ours = cam_maps(model, x, method=method, target=[0, 1, 2])
    for m in model.modules():  # grad-cam on a CPU would see VGG's conv output after ReLU_
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    with REFERENCE[method](model=model, target_layers=[model.get_submodule(layer)]) as cam:
        expected = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in (0, 1, 2)])
    assert ours["layer"] == layer and ours["maps"].shape == (3, size, size)
    assert np.abs(ours["maps"].numpy() - expected).max() < 1e-4
    assert ours["classes"].tolist() == [0, 1, 2]


def test_predicted_class_by_default_and_parameters_untouched():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    result = cam_maps(model, x)
    assert result["classes"].tolist() == model(x).argmax(1).tolist()
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    picture = overlay((torch.rand(1, 32, 32) * 255).byte(), result["maps"][0])
    assert picture.shape == (32, 32, 3) and picture.dtype == np.uint8


def test_unknown_layer_names_known_ones():
    model = create_model("resnet20", num_classes=2)
    with pytest.raises(ResnetlabError, match="layer3"):
        find_layer(model, "layer9")


@pytest.mark.parametrize(
    ("name", "layer", "size"),
    [("resnet20", "fc", 32), pytest.param("resnet18", "avgpool", 64, marks=pytest.mark.slow),
     pytest.param("vgg11", "classifier", 64, marks=pytest.mark.slow)],
)  # fmt: skip
def test_a_layer_without_a_spatial_map_names_layers_with_one(name, layer, size):
    model = create_model(name, num_classes=3).eval()
    with pytest.raises(ResnetlabError, match=f"--layer '{layer}' gives no spatial map") as info:
        cam_maps(model, torch.randn(2, 3, size, size), layer=layer)
    named = str(info.value).rsplit("e.g. ", 1)[1].rstrip(".").split(", ")
    assert default_layer(model) in named and layer not in named
    for candidate in named:  # each one it names works
        maps = cam_maps(model, torch.randn(1, 3, size, size), layer=candidate)["maps"]
        assert maps.shape == (1, size, size)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
