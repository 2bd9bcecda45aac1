"""Grad-CAM (Selvaraju et al., 2017) and Grad-CAM++ (Chattopadhay et al., 2018): where a
classifier looks, as a class-weighted map of one layer's activations.

Maps follow the ``grad-cam`` package's conventions, so the two agree numerically: the ReLU of
the weighted activation sum, scaled to [0, 1] per image, resized bilinearly to the input and
scaled again. The activations are the layer's output before any in-place op that follows
(as ``grad-cam`` sees them on a GPU; on a CPU it sees VGG's conv output after the in-place
ReLU). The default layer is the last block of the last stage: ``layer4`` for ImageNet ResNets
and their plain twins, ``layer3`` for CIFAR nets, and the last conv of a VGG.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ResnetlabError

METHODS = ("gradcam", "gradcam++")


def default_layer(model: nn.Module) -> str:
    """The dotted name of the layer whose activations the maps show by default."""
    for stage in ("layer4", "layer3"):
        module = getattr(model, stage, None)
        if isinstance(module, nn.Sequential) and len(module):
            return f"{stage}.{len(module) - 1}"
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ResnetlabError("the model has no conv layer for Grad-CAM; pass --layer NAME.")
    return convs[-1]


def find_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """(name, module) for ``--layer`` (or the default); an unknown name lists a few known."""
    name = name or default_layer(model)
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        kinds = nn.Sequential | nn.Conv2d
        known = [n for n, m in model.named_modules() if n and isinstance(m, kinds)]
        raise ResnetlabError(
            f"--layer {name!r} is not a module of this model; try one of "
            f"{', '.join(known[-6:])}."
        ) from None


def is_map(output: Any) -> bool:
    """Whether a layer's output is a map: (N, C, H, W) with more than one position."""
    return isinstance(output, torch.Tensor) and output.dim() == 4 and output[0, 0].numel() > 1


def spatial_layers(model: nn.Module, x: torch.Tensor, n: int = 6) -> list[str]:
    """The last ``n`` stages, blocks and layers (names of one or two parts) whose output is a
    map of more than one position, in the order the forward pass ends them."""
    found: list[str] = []

    def spatial(name: str):
        def hook(module, inputs, output) -> None:
            if is_map(output):
                found.append(name)

        return hook

    hooks = [m.register_forward_hook(spatial(name)) for name, m in model.named_modules()
             if name and name.count(".") <= 1]  # fmt: skip
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(found))[-n:]


def _activations_and_grads(model, layer, x, target, name):
    """The layer's activations and the gradients of the target logits with respect to them.

    The activations are made a leaf of the graph, so backward runs through the layers after
    it only (not the whole network, and no parameter gradients)."""
    saved: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output):
        if not is_map(output):
            return None  # no map of positions to weight: refused after the forward pass
        saved["a"] = output.detach().requires_grad_(True)
        return saved["a"].clone()  # a later in-place op (VGG's ReLU) must not touch the leaf

    flags = [p.requires_grad for p in model.parameters()]
    handle = layer.register_forward_hook(keep)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.enable_grad():
            logits = model(x.detach())
            if "a" not in saved:
                raise ResnetlabError(
                    f"--layer {name!r} gives no spatial map (Grad-CAM weighs a layer's "
                    f"channels over its positions); use one that does, e.g. "
                    f"{', '.join(spatial_layers(model, x))}."
                )
            classes = logits.argmax(1) if target is None else _targets(target, logits)
            logits.gather(1, classes[:, None]).sum().backward()
    finally:
        handle.remove()
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    return saved["a"].detach(), saved["a"].grad, logits.detach(), classes


def _gives_map(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``layer``'s output for ``x`` is a map of more than one position."""
    seen: list[bool] = []
    handle = layer.register_forward_hook(lambda m, i, out: seen.append(is_map(out)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return bool(seen and seen[-1])


def _targets(target, logits: torch.Tensor) -> torch.Tensor:
    classes = torch.as_tensor(target, dtype=torch.long).reshape(-1)
    classes = classes.expand(len(logits)) if classes.numel() == 1 else classes
    if int(classes.max()) >= logits.shape[1] or int(classes.min()) < 0:
        raise ResnetlabError(f"class index out of range 0..{logits.shape[1] - 1}.")
    return classes.to(logits.device)


def _scale(cam: torch.Tensor) -> torch.Tensor:
    flat = cam.flatten(1)
    flat = flat - flat.min(1, keepdim=True).values
    return (flat / (1e-7 + flat.max(1, keepdim=True).values)).view_as(cam)


def cam_maps(
    model: nn.Module,
    images: torch.Tensor,
    *,
    method: str = "gradcam",
    layer: str | None = None,
    target: int | list[int] | torch.Tensor | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Maps (N, H, W) in [0, 1] for normalised inputs (N, C, H, W), for the predicted class
    (``target=None``) or the given class(es); also the logits, classes and layer used."""
    if method not in METHODS:
        raise ResnetlabError(f"--method {method!r} is unknown; use {' or '.join(METHODS)}.")
    modes = [m.training for m in model.modules()]
    model.eval()
    name, module = find_layer(model, layer)
    if layer is None and len(images) and not _gives_map(model, module, images[:1]):
        # the default layer is 1x1 at this input size (ResNet-18's layer4 at 32 px): the last
        # layer that still has positions to weigh
        name, module = find_layer(model, spatial_layers(model, images[:1], n=1)[-1])
    maps, all_logits, all_classes = [], [], []
    wanted = None
    if target is not None:
        wanted = torch.as_tensor(target, dtype=torch.long).reshape(-1)
        wanted = wanted.expand(len(images)) if wanted.numel() == 1 else wanted
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            part = None if wanted is None else wanted[start : start + batch_size]
            a, g, logits, classes = _activations_and_grads(model, module, chunk, part, name)
            a, g = a.double(), g.double()
            if method == "gradcam":
                weights = g.mean((2, 3))
            else:
                g2 = g * g
                alpha = g2 / (2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g + 1e-6)
                alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
                weights = (g.clamp_min(0) * alpha).sum((2, 3))
            cam = _scale((weights[:, :, None, None] * a).sum(1).clamp_min(0))
            cam = F.interpolate(cam[:, None], size=chunk.shape[-2:], mode="bilinear",
                                align_corners=False)[:, 0]  # fmt: skip
            maps.append(_scale(cam).float().cpu())
            all_logits.append(logits.float().cpu())
            all_classes.append(classes.cpu())
    finally:
        for m, mode in zip(model.modules(), modes, strict=True):
            m.training = mode
    return {
        "maps": torch.cat(maps),
        "logits": torch.cat(all_logits),
        "classes": torch.cat(all_classes),
        "layer": name,
        "method": method,
    }


def overlay(image: torch.Tensor, cam: torch.Tensor, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 picture (H, W, 3): the image (uint8, C×H×W) under a jet-coloured map."""
    from matplotlib import colormaps

    base = image.float() / 255.0
    base = base.expand(3, -1, -1) if base.shape[0] == 1 else base[:3]
    if base.shape[-2:] != cam.shape:
        base = F.interpolate(base[None], size=cam.shape, mode="bilinear", align_corners=False)[0]
    heat = torch.from_numpy(colormaps["jet"](cam.numpy())[..., :3]).permute(2, 0, 1).float()
    mixed = (1 - alpha) * base + alpha * heat
    return (mixed.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
