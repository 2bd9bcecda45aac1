"""Receptive fields: the layer walk against fields measured from input gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetlab import create_model
from resnetlab.analysis.receptive_field import (
    effective_receptive_field,
    measured_receptive_field,
    receptive_field_table,
    stacked_3x3,
    stage_summary,
)
from resnetlab.errors import ResnetlabError


@pytest.mark.parametrize(
    ("name", "size"), [("resnet20", 96), ("plain20", 96), ("vgg11", 200), ("resnet18", 512)]
)
def test_table_agrees_with_gradient_measurement(name, size):
    model = create_model(name)
    table = receptive_field_table(model, size)
    assert table[-1].rf == measured_receptive_field(model, size, table[-1].name)
    middle = table[len(table) // 2]  # also part-way through the net
    assert middle.rf == measured_receptive_field(model, size, middle.name)


def test_vgg16_conv5_3_and_pool5():
    model = create_model("vgg16")
    table = {row.name: row for row in receptive_field_table(model, 224)}
    conv5_3, pool5 = table["features.28"], table["features.30"]
    assert (conv5_3.kind, pool5.kind) == ("conv", "maxpool2d")
    assert conv5_3.rf == measured_receptive_field(model, 300, "features.28")
    assert pool5.rf == measured_receptive_field(model, 300, "features.30")
    assert (conv5_3.rf, pool5.rf) == (196, 212)  # the published values


def test_resnet50_final_field_measured():
    model = create_model("resnet50", width_per_group=1)  # same geometry, cheaper
    table = receptive_field_table(model, 224)
    assert table[-1].rf == measured_receptive_field(model, 491)
    assert table[-1].rf == 427 and table[-1].jump == 32
    stages = {s["stage"]: s for s in stage_summary(table)}
    assert list(stages) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert stages["stem"]["last_layer"] == "maxpool"


def test_too_small_input_is_refused():
    with pytest.raises(ResnetlabError, match="larger input"):
        measured_receptive_field(create_model("resnet20"), 48)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_stacked_3x3_arithmetic_matches_real_layers(k):
    channels = 8
    stack = nn.Sequential(
        *[nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(k)]
    )
    single = nn.Conv2d(channels, channels, 2 * k + 1, padding=k, bias=False)
    numbers = stacked_3x3(k, channels)
    assert numbers["stacked_weights"] == sum(p.numel() for p in stack.parameters())
    assert numbers["single_weights"] == single.weight.numel()
    assert numbers["rf"] == receptive_field_table(stack, 32)[-1].rf
    assert numbers["rf"] == receptive_field_table(single, 32)[-1].rf
    assert stacked_3x3(k)["stacked_weights"] == 9 * k


def test_effective_field_is_centred_and_inside_theoretical_field():
    torch.manual_seed(0)
    model = create_model("resnet20")
    erf = effective_receptive_field(model, 64, "layer1.2.conv2", samples=2)
    assert erf.shape == (64, 64) and float(erf.max()) == pytest.approx(1.0)
    rows = (erf > 0).any(dim=1).nonzero().flatten()
    table = {row.name: row for row in receptive_field_table(model, 64)}
    assert int(rows.max() - rows.min() + 1) <= table["layer1.2.conv2"].rf == 15
