"""Transfer learning: new heads, frozen stages and BatchNorm, parameter groups, stage features."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from resnetlab import create_model
from resnetlab.errors import ResnetlabError
from resnetlab.transfer import (
    count_parameters,
    extract_features,
    freeze,
    frozen_bn_layers,
    param_groups,
    replace_head,
    resolve_stages,
    unfreeze,
)


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    return create_model("vgg11_bn")


def bn_state(module: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in module.named_buffers() if "running" in n]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, size: int = 32) -> None:
    model.train()
    x, y = torch.randn(8, 3, size, size), torch.randint(0, 2, (8,))
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def test_seed_parameter_counts():
    model = create_model("resnet50")
    replace_head(model, 2, dropout=0.5)
    assert count_parameters(model) == (23_512_130, 23_512_130)
    assert isinstance(model.fc, nn.Sequential) and model.fc[0].p == 0.5
    freeze(model, ["layer1", "layer2"])
    assert count_parameters(model) == (23_512_130, 22_076_738)


def test_replace_head_vgg_and_cifar(vgg):
    replace_head(vgg, 5)
    assert isinstance(vgg.classifier[6], nn.Linear)
    assert (vgg.classifier[6].in_features, vgg.classifier[6].out_features) == (4096, 5)
    model = replace_head(create_model("resnet20"), 3, dropout=0.2)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ResnetlabError, match="num_classes"):
        replace_head(model, 0)


def test_frozen_bn_keeps_statistics_and_weights_through_training():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=2)
    freeze(model, ["stem", "layer1"])
    frozen_stats = bn_state(model.layer1) + bn_state(model.bn1)
    frozen_params = [p.clone() for p in model.layer1.parameters()]
    live_stats = bn_state(model.layer2)
    live_params = [p.clone() for p in model.layer2.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(2):
        train_step(model, optimizer)
    assert model.training
    assert all(
        torch.equal(a, b)
        for a, b in zip(frozen_stats, bn_state(model.layer1) + bn_state(model.bn1), strict=True)
    )
    assert all(
        torch.equal(a, b.data)
        for a, b in zip(frozen_params, model.layer1.parameters(), strict=True)
    )
    assert all(p.grad is None for p in model.layer1.parameters())
    assert not any(
        torch.equal(a, b) for a, b in zip(live_stats, bn_state(model.layer2), strict=True)
    )
    assert not any(
        torch.equal(a, b.data) for a, b in zip(live_params, model.layer2.parameters(), strict=True)
    )

    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())
    assert model.layer1[0].bn1.training
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert not any(
        torch.equal(a, b)
        for a, b in zip(frozen_stats, bn_state(model.layer1) + bn_state(model.bn1), strict=True)
    )
    assert not torch.equal(frozen_params[0], next(model.layer1.parameters()).data)


def test_frozen_bn_survives_a_deep_copy_and_unfreezes_there():
    model = freeze(create_model("resnet20"), ["layer1"])
    twin = copy.deepcopy(model)
    assert frozen_bn_layers(twin) == frozen_bn_layers(model) != []
    unfreeze(twin)
    assert frozen_bn_layers(twin) == [] and frozen_bn_layers(model) != []
    twin.train()(torch.randn(2, 3, 32, 32))
    assert twin.layer1[0].bn1.training and not model.layer1[0].bn1.training


def test_bn_train_policy_updates_statistics_but_not_weights():
    model = create_model("resnet20", num_classes=2)
    freeze(model, ["layer1"], bn="train")
    stats = bn_state(model.layer1)
    weights = model.layer1[0].bn1.weight.clone()
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1))
    assert not torch.equal(stats[0], bn_state(model.layer1)[0])
    assert torch.equal(weights, model.layer1[0].bn1.weight)
    with pytest.raises(ResnetlabError, match="bn must be"):
        freeze(model, ["layer2"], bn="eval")


def test_freeze_default_is_all_but_the_head_and_unfreeze_one_stage():
    model = create_model("resnet20")
    freeze(model)
    total, trainable = count_parameters(model)
    assert trainable == 64 * 10 + 10
    unfreeze(model, "layer3")
    assert count_parameters(model)[1] == trainable + sum(
        p.numel() for p in model.layer3.parameters()
    )
    assert not model.layer2[0].conv1.weight.requires_grad


def test_unknown_stage_lists_the_valid_ones(vgg):
    with pytest.raises(ResnetlabError, match=r"valid stages: stem, layer1, layer2, layer3, head"):
        freeze(create_model("resnet20"), ["layer4"])
    with pytest.raises(ResnetlabError, match="block1, block2"):
        freeze(vgg, ["blok1"])


def test_vgg_slices_and_blocks(vgg):
    assert len(resolve_stages(vgg, ["features[0:10]"])["features[0:10]"]) == 10
    assert resolve_stages(vgg, "features[3]")["features[3]"] == [vgg.features[3]]
    assert resolve_stages(vgg, "block1")["block1"] == list(vgg.features)[:4]
    with pytest.raises(ResnetlabError, match="has 29 modules"):
        resolve_stages(vgg, "features[29]")
    freeze(vgg, ["features[0:4]"])
    assert not vgg.features[0].weight.requires_grad and vgg.features[4].weight.requires_grad
    vgg.train()
    vgg(torch.randn(2, 3, 32, 32))
    assert not vgg.features[1].training and vgg.features[5].training
    unfreeze(vgg)
    assert vgg.features[0].weight.requires_grad


def test_param_groups_rates_decay_and_frozen():
    model = create_model("resnet20")
    freeze(model, ["stem"])
    groups = param_groups(model, 0.1, decay=5e-4, lr_mult=0.5)
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == ["layer1", "layer1.no_decay", "layer2", "layer2.no_decay",
                             "layer3", "layer3.no_decay", "head", "head.no_decay"]  # fmt: skip
    assert by_name["head"]["lr"] == pytest.approx(0.1)
    assert by_name["layer3"]["lr"] == pytest.approx(0.05)
    assert by_name["layer1.no_decay"]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert by_name["layer1"]["weight_decay"] == 5e-4
    assert by_name["layer1.no_decay"]["weight_decay"] == 0.0
    assert by_name["head.no_decay"]["params"] == [model.fc.bias]
    assert all(p.ndim == 4 for p in by_name["layer2"]["params"])
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    train_step(model, optimizer)
    assert [g["name"] for g in optimizer.param_groups] == list(by_name)


def test_param_groups_list_of_factors():
    model = create_model("resnet20")
    groups = param_groups(model, 1.0, lr_mult=[0, 0.1, 0.2, 0.3, 1], no_decay_bn_bias=False)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("stem", 0.0), ("layer1", 0.1), ("layer2", 0.2), ("layer3", 0.3), ("head", 1.0)
    ]  # fmt: skip
    with pytest.raises(ResnetlabError, match="5 stages"):
        param_groups(model, 1.0, lr_mult=[1, 2])


@pytest.mark.parametrize(
    ("name", "size", "stages", "shapes"),
    [
        ("resnet18", 64, ["layer2", "layer4"], [(128, 8, 8), (512, 2, 2)]),
        ("plain18", 64, ["stem", "layer1"], [(64, 32, 32), (64, 16, 16)]),
        ("resnet20", 32, ["layer1", "layer3", "head"], [(16, 32, 32), (64, 8, 8), (10,)]),
    ],
)
def test_extract_features_shapes(name, size, stages, shapes):
    model = create_model(name).eval()
    with torch.no_grad():
        features = extract_features(model, torch.randn(2, 3, size, size), stages)
    assert list(features) == stages
    assert [tuple(f.shape[1:]) for f in features.values()] == shapes
    assert all(not m._forward_hooks for m in model.modules())


def test_extract_features_match_forward_features(vgg):
    model = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            extract_features(model, x, "layer3")["layer3"], model.forward_features(x)
        )
        vgg.eval()
        features = extract_features(vgg, x, ["block1", "block5"])
        assert torch.equal(features["block5"], vgg.forward_features(x))
    assert tuple(features["block1"].shape) == (2, 64, 16, 16)
