"""Gradient flow through depth: the seed's MLP experiment and per-block gradient profiles.

For a residual block x_{l+1} = x_l + F(x_l), so ∂x_{l+1}/∂x_l = 1 + ∂F/∂x_l: the "+1" carries the
gradient back unchanged even where ∂F/∂x_l is small. A plain block has only ∂F/∂x_l.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models.blocks import BasicBlock, BottleneckBlock, PreActBasicBlock, PreActBottleneckBlock

PLUS_ONE = "residual: ∂x_{l+1}/∂x_l = 1 + ∂F/∂x_l; plain: ∂F/∂x_l only"


class MLPBlock(nn.Module):
    """Linear-ReLU-Linear; with ``skip`` it returns x + F(x) instead of F(x)."""

    def __init__(self, width: int, skip: bool) -> None:
        super().__init__()
        self.skip = skip
        self.fc1 = nn.Linear(width, width)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.relu(self.fc1(x)))
        return x + out if self.skip else out


def mlp_stack(depth: int, width: int = 64, skip: bool = False) -> nn.Sequential:
    """``depth`` MLP blocks of the given width (PyTorch's default Linear initialisation)."""
    return nn.Sequential(*[MLPBlock(width, skip) for _ in range(depth)])


def mlp_batch(batch: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normal inputs and random 0/1 targets for the MLP experiment."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width, generator=generator)
    y = torch.randint(0, 2, (batch, width), generator=generator).float()
    return x, y


def seed_mlp_gradients(
    depths: tuple[int, ...] = (10, 20), width: int = 64, batch: int = 32, seed: int = 0
) -> list[dict]:
    """The seed experiment: first layer's weight-gradient norm, plain vs residual, per depth.

    Plain and residual stacks of one depth get identical weights (same seed), so the skip is
    the only difference. Loss: BCE-with-logits against random 0/1 targets.
    """
    rows = []
    for depth in depths:
        for skip in (False, True):
            torch.manual_seed(seed)
            model = mlp_stack(depth, width, skip)
            x, y = mlp_batch(batch, width, seed + 1)
            F.binary_cross_entropy_with_logits(model(x), y).backward()
            grad = model[0].get_parameter("fc1.weight").grad
            assert grad is not None
            norm = grad.norm().item()
            rows.append(
                {"depth": depth, "kind": "residual" if skip else "plain", "grad_norm": norm}
            )
    return rows


BLOCK_TYPES = (MLPBlock, BasicBlock, BottleneckBlock, PreActBasicBlock, PreActBottleneckBlock)


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's blocks in forward order; a net without blocks (VGG) gives its weighted layers."""
    blocks: list[tuple[str, nn.Module]] = [
        (n, m) for n, m in model.named_modules() if isinstance(m, BLOCK_TYPES)
    ]
    if blocks:
        return blocks
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class indices, BCE-with-logits for float targets of the output's shape."""
    if target.dtype in (torch.int64, torch.int32):
        return F.cross_entropy(output, target)
    return F.binary_cross_entropy_with_logits(output, target)


def gradient_profile(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Per-block ‖∂L/∂x_l‖ (gradient w.r.t. each block's input) and weight-gradient norms.

    Runs one forward/backward in the model's current mode without touching ``.grad`` or BN
    running statistics, so it can be called on a model in the middle of training.
    """
    blocks = find_blocks(model)
    inputs: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            inputs.setdefault(name, args[0])

        return hook

    handles = [m.register_forward_pre_hook(capture(n)) for n, m in blocks]
    saved = {k: v.detach().clone() for k, v in model.named_buffers()}
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            loss = (loss_fn or default_loss)(model(x), y)
            names = [n for n, _ in blocks if n in inputs and inputs[n].requires_grad]
            weights = {n: [p for p in m.parameters() if p.dim() > 1] for n, m in blocks}
            flat: list[torch.Tensor] = [p for n in names for p in weights[n]]
            grads = torch.autograd.grad(loss, [inputs[n] for n in names] + flat, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for key, value in model.named_buffers():
                value.copy_(saved[key])
    input_grads, weight_grads = grads[: len(names)], list(grads[len(names) :])
    weight_norms = []
    for n in names:
        squares = [weight_grads.pop(0) for _ in weights[n]]
        total = sum(float(g.pow(2).sum()) for g in squares if g is not None)
        weight_norms.append(total**0.5)
    return {
        "blocks": names,
        "input_grad_norm": [float(g.norm()) for g in input_grads],
        "input_grad_rms": [float(g.pow(2).mean().sqrt()) for g in input_grads],
        "weight_grad_norm": weight_norms,
        "loss": float(loss.detach()),
    }


def response_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """BatchNorms that directly follow a 3×3 conv (``...convK`` → ``...bnK``), in forward order."""
    modules = dict(model.named_modules())
    layers: list[tuple[str, nn.Module]] = []
    for name, module in modules.items():
        if not isinstance(module, nn.BatchNorm2d) or "downsample" in name:
            continue
        prefix, _, leaf = name.rpartition(".")
        conv = modules.get(f"{prefix}.conv{leaf[2:]}" if prefix else f"conv{leaf[2:]}")
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
            layers.append((name, module))
    return layers


@torch.no_grad()
def layer_response_stds(model: nn.Module, x: torch.Tensor, train_mode: bool = False) -> dict:
    """Std of each 3×3 layer's response after BN, before addition/ReLU (He et al. 2015, Fig. 7).

    Measured in eval mode by default (BN uses running statistics), as for a trained model.
    """
    layers = response_layers(model)
    stds: dict[str, float] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            stds.setdefault(name, float(output.std()))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in layers]
    was_training = model.training
    saved = {k: v.detach().clone() for k, v in model.named_buffers()}
    try:
        model.train(train_mode)
        model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
        for key, value in model.named_buffers():
            value.copy_(saved[key])
    names = [n for n, _ in layers if n in stds]
    return {"layers": names, "std": [stds[n] for n in names]}
