"""The optimiser: fused kernels where PyTorch has them, with the same steps as the reference."""

from __future__ import annotations

import torch
from torch import nn

from resnetlab.train import TrainConfig
from resnetlab.train.optim import build_optimizer


def run(optimizer_for, steps: int = 6) -> list[torch.Tensor]:
    """Train a small conv net with its conv frozen for 3 steps, then unfrozen (no conv bias:
    before a BN its gradient is rounding noise, which Adam would magnify)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3)
    )
    optimizer = optimizer_for(model)
    x, y = torch.randn(5, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    model[0].requires_grad_(False)
    for step in range(steps):
        if step == 3:
            model[0].requires_grad_(True)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_fused_sgd_survives_unfreezing_and_matches_the_reference() -> None:
    config = TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=False)
    engine_opt = None

    def ours(model):
        nonlocal engine_opt
        engine_opt = build_optimizer(config, model)
        return engine_opt

    def reference(model):
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3,
                               foreach=False)  # fmt: skip

    got, expected = run(ours), run(reference)
    assert engine_opt.defaults["fused"] is True
    for a, b in zip(got, expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got[0], run(reference, steps=3)[0])  # the unfrozen layer did move


def test_fused_adamw_matches_the_reference() -> None:
    config = TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.05)
    got = run(lambda m: build_optimizer(config, m))
    expected = run(lambda m: torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.05,
                                               foreach=False))  # fmt: skip
    for a, b in zip(got, expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
