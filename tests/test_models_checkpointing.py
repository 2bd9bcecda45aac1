"""Activation checkpointing: one training step is the same step, BatchNorm statistics included."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resnetlab.models.base as base
from resnetlab.errors import ResnetlabError
from resnetlab.models import Backbone, create_model
from resnetlab.models.base import CheckpointedSequential

# (name, input size, batch): a CIFAR ResNet and its plain twin, a pre-activation net, an
# ImageNet ResNet at small resolution, and a VGG with BatchNorm.
EXACT_CASES = [
    ("resnet20", 32, 8),
    ("plain20", 32, 8),
    ("preact_resnet110", 32, 4),
    ("resnet18", 64, 4),
    ("vgg11_bn", 32, 4),
]
FAMILIES = ["resnet18", "plain18", "resnet50", "resnet20", "plain20", "preact_resnet110",
            "vgg11", "vgg11_bn"]  # fmt: skip


def sgd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 1) -> dict:
    """One forward, backward and SGD step; the loss, gradients, parameters and buffers after."""
    torch.manual_seed(seed)  # VGG's classifier has dropout: the same draws in both runs
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    return {
        "loss": {"loss": loss.detach()},
        "grads": grads,
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
    }


def assert_same(expected: dict, actual: dict, rel: float = 1e-6) -> None:
    for kind, tensors in expected.items():
        assert tensors.keys() == actual[kind].keys()
        for name, want in tensors.items():
            got = actual[kind][name]
            scale = want.double().abs().max().clamp_min(1e-12)
            error = (got.double() - want.double()).abs().max() / scale
            assert error <= rel, f"{kind} {name}: relative difference {error:.3g}"


@pytest.mark.parametrize(("name", "size", "batch"), EXACT_CASES)
def test_a_checkpointed_step_equals_a_plain_step(name: str, size: int, batch: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).train()
    if name.startswith("vgg"):  # not checkpointed; a small classifier (dropout kept) runs faster
        model.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(512 * 7 * 7, 10))
    twin = copy.deepcopy(model)
    twin.set_grad_checkpointing(True)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    assert_same(sgd_step(model, x, y), sgd_step(twin, x, y))
    assert_same(sgd_step(model, x, y, seed=2), sgd_step(twin, x, y, seed=2))  # a second step


def test_bn_statistics_would_count_twice_without_the_restore(monkeypatch) -> None:
    """The recomputation really runs BatchNorm again: the buffer restore is what keeps it exact."""
    torch.manual_seed(0)
    model = create_model("resnet20").train()
    twin = copy.deepcopy(model)
    twin.set_grad_checkpointing(True)
    monkeypatch.setattr(base, "bn_buffers_kept", lambda modules: contextlib.nullcontext())
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    sgd_step(model, x, y)
    sgd_step(twin, x, y)
    counts = {n: int(b) for n, b in twin.named_buffers() if n.endswith("num_batches_tracked")}
    assert counts["bn1.num_batches_tracked"] == 1  # the stem is not checkpointed
    assert counts["layer1.0.bn1.num_batches_tracked"] == 2


def test_the_random_state_does_not_matter() -> None:
    """Dropout inside a segment recomputes with the forward's draws, whatever the RNG does
    between forward and backward; and checkpointing draws nothing from the global RNG."""
    torch.manual_seed(0)
    stage = CheckpointedSequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Dropout(0.5)),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
    ).train()
    twin = copy.deepcopy(stage)
    twin.grad_checkpointing = True
    x = torch.randn(2, 3, 8, 8)
    grads, rng_after = [], []
    for module in (stage, twin):
        torch.manual_seed(5)
        out = module(x).square().sum()
        rng_after.append(torch.get_rng_state())
        torch.manual_seed(123)  # anything may draw before backward
        out.backward()
        grads.append([p.grad.clone() for p in module.parameters()])
    assert torch.equal(rng_after[0], rng_after[1])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-6, atol=1e-7)


def test_checkpoint_runs_per_block_only_when_training_with_grad(monkeypatch) -> None:
    calls: list[int] = []
    original = base.checkpoint_segment

    def counting(modules, x):
        calls.append(len(modules))
        return original(modules, x)

    monkeypatch.setattr(base, "checkpoint_segment", counting)
    resnet = create_model("resnet20")
    resnet.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    resnet.eval()
    resnet(x)
    resnet.train()
    with torch.no_grad():
        resnet(x)
    assert calls == []
    resnet(x)
    assert calls == [1] * 9  # one segment per residual block, 3 stages of 3
    calls.clear()
    vgg = create_model("vgg11_bn", num_classes=10)
    vgg.set_grad_checkpointing(True)
    vgg.train()(x)
    assert calls == [4, 4, 7, 7, 7]  # each pooled block: conv-BN-ReLU groups and the max-pool


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_switches_and_keeps_its_state_dict(name: str) -> None:
    model = create_model(name, num_classes=10)
    keys = list(model.state_dict())
    assert model.grad_checkpointing is False
    model.set_grad_checkpointing()
    assert model.grad_checkpointing is True
    stages = [m for m in model.modules() if isinstance(m, CheckpointedSequential)]
    assert stages and all(s.grad_checkpointing for s in stages)
    assert list(model.state_dict()) == keys
    model.set_grad_checkpointing(False)
    assert model.grad_checkpointing is False


def test_a_backbone_without_checkpointable_stages_is_refused() -> None:
    class Tiny(Backbone):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

    with pytest.raises(ResnetlabError, match="CheckpointedSequential"):
        Tiny().set_grad_checkpointing(True)
    Tiny().set_grad_checkpointing(False)  # switching off is always fine
