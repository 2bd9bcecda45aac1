"""Transfer learning: a new head, frozen stages, per-stage learning rates, and stage features.

Stages are the model's own names (``model.stage_modules()``: ``stem``, ``layer1`` ... ``head``;
VGG ``block1`` ... ``block5``, ``classifier``, ``head``), a slice of a Sequential such as
``"features[0:10]"``, or any submodule name such as ``"layer4.2"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import ResnetlabError, close_matches
from .models.base import Backbone
from .models.summary import count_parameters

__all__ = [
    "count_parameters",
    "extract_features",
    "freeze",
    "frozen_bn_layers",
    "param_groups",
    "replace_head",
    "resolve_stages",
    "unfreeze",
]

SLICE = re.compile(r"^([\w.]+)\[(-?\d*)(:?)(-?\d*)\]$")
BN_POLICIES = ("frozen", "train")
NORM_TYPES = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)


def replace_head(model: nn.Module, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """Give ``model`` a freshly initialised classifier for ``num_classes``, optionally dropout."""
    if num_classes < 1:
        raise ResnetlabError(f"num_classes must be at least 1, got {num_classes}.")
    if not 0.0 <= dropout < 1.0:
        raise ResnetlabError(f"dropout must be in [0, 1), got {dropout}.")
    if not isinstance(model, Backbone):
        raise ResnetlabError("replace_head needs a resnetlab model (one built by create_model).")
    in_features = _head_in_features(model)
    linear = nn.Linear(in_features, num_classes)
    model.set_head(nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        model.pretrained_cfg = cfg | {"classes": None, "num_classes": num_classes, "head": "new"}
    return model


def _head_in_features(model: Backbone) -> int:
    linears = [m for m in model.get_head().modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1].in_features
    return model.num_features


def resolve_stages(
    model: nn.Module, stages: str | Iterable[str] | None
) -> dict[str, list[nn.Module]]:
    """Map stage names (``None`` = all stages) to their modules; unknown names raise."""
    known = model.stage_modules() if isinstance(model, Backbone) else {}
    if stages is None:
        return dict(known)
    names = [stages] if isinstance(stages, str) else list(stages)
    return {name: _stage(model, known, name) for name in names}


def _stage(model: nn.Module, known: dict[str, list[nn.Module]], name: str) -> list[nn.Module]:
    if name in known:
        return known[name]
    match = SLICE.match(name.replace(" ", ""))
    if match:
        parent, start, colon, stop = match.groups()
        container = _submodule(model, parent, known, name)
        if not isinstance(container, nn.Sequential | nn.ModuleList):
            raise ResnetlabError(f"{parent!r} is not a Sequential; slice stages need one.")
        items = list(container)
        if colon:
            return items[slice(int(start) if start else None, int(stop) if stop else None)]
        if start and -len(items) <= int(start) < len(items):
            return [items[int(start)]]
        raise ResnetlabError(f"{name!r}: {parent} has {len(items)} modules; use an index below it.")
    return [_submodule(model, name, known, name)]


def _submodule(model: nn.Module, path: str, known: dict, asked: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        hint = close_matches(asked, list(known))
        raise ResnetlabError(
            f"unknown stage {asked!r}; valid stages: {', '.join(known)} (or a submodule name, "
            f"or a slice such as 'features[0:10]').{hint}"
        ) from None


def _parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def freeze(
    model: nn.Module, stages: str | Iterable[str] | None = None, bn: str = "frozen"
) -> nn.Module:
    """Stop training ``stages`` (``None`` = all but the head): their parameters get no gradient.

    With ``bn="frozen"`` their BatchNorm layers stay in eval mode (fixed running statistics)
    even after ``model.train()``; ``bn="train"`` lets the statistics update.
    """
    if bn not in BN_POLICIES:
        raise ResnetlabError(f"bn must be one of {', '.join(BN_POLICIES)}, got {bn!r}.")
    resolved = resolve_stages(model, stages)
    if stages is None:
        resolved.pop("head", None)
    modules = [m for group in resolved.values() for m in group]
    for p in _parameters(modules):
        p.requires_grad_(False)
    if bn == "frozen":
        for module in modules:
            for layer in module.modules():
                if isinstance(layer, _BatchNorm) and not _frozen_bn_hooks(layer):
                    layer.eval()
                    layer.register_forward_pre_hook(_keep_eval)
    return model


def _keep_eval(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: a frozen BN uses its running statistics and never updates them."""
    module.training = False


def _frozen_bn_hooks(layer: nn.Module) -> list[int]:
    # Found by function rather than by a stored handle, so copies of the model stay consistent.
    return [key for key, hook in layer._forward_pre_hooks.items() if hook is _keep_eval]


def unfreeze(model: nn.Module, stages: str | Iterable[str] | None = None) -> nn.Module:
    """Undo :func:`freeze` for the given stages (``None`` = the whole model)."""
    modules = [model] if stages is None else [
        m for group in resolve_stages(model, stages).values() for m in group
    ]  # fmt: skip
    for p in _parameters(modules):
        p.requires_grad_(True)
    for module in modules:
        for layer in module.modules():
            keys = _frozen_bn_hooks(layer)
            for key in keys:
                del layer._forward_pre_hooks[key]
            if keys:
                layer.train(model.training)
    return model


def frozen_bn_layers(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers that :func:`freeze` keeps in eval mode."""
    return [name for name, m in model.named_modules() if _frozen_bn_hooks(m)]


def param_groups(
    model: nn.Module,
    lr: float,
    *,
    decay: float = 1e-4,
    lr_mult: float | Sequence[float] = 1.0,
    no_decay_bn_bias: bool = True,
) -> list[dict]:
    """Optimizer parameter groups, one or two per stage, with stage-wise learning rates.

    ``lr_mult`` a number ``f``: the head gets ``lr``, the stage before it ``lr * f``, the one
    before ``lr * f**2``, ... (discriminative fine-tuning); a list gives one factor per stage in
    forward order. Norm-layer parameters and biases get no weight decay when
    ``no_decay_bn_bias``. Frozen parameters are left out; each group has a ``"name"``.
    """
    stages = resolve_stages(model, None)
    names = list(stages)
    if isinstance(lr_mult, int | float):
        factors = [float(lr_mult) ** (len(names) - 1 - i) for i in range(len(names))]
    else:
        factors = [float(f) for f in lr_mult]
        if len(factors) != len(names):
            raise ResnetlabError(
                f"lr_mult has {len(factors)} factors but the model has {len(names)} stages "
                f"({', '.join(names)}); give one per stage or a single number."
            )
    no_decay = _no_decay_ids(model) if no_decay_bn_bias else set()
    taken: set[int] = set()
    groups: list[dict] = []
    for (name, modules), factor in zip(stages.items(), factors, strict=True):
        params = [p for p in _parameters(modules) if id(p) not in taken]
        taken |= {id(p) for p in params}
        groups += _split(name, params, lr * factor, decay, no_decay)
    rest = [p for p in model.parameters() if id(p) not in taken]
    groups += _split("other", rest, lr, decay, no_decay)
    return groups


def _no_decay_ids(model: nn.Module) -> set[int]:
    ids = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, NORM_TYPES) or name == "bias":
                ids.add(id(p))
    return ids


def _split(name: str, params: list, lr: float, decay: float, no_decay: set[int]) -> list[dict]:
    params = [p for p in params if p.requires_grad]
    plain = [p for p in params if id(p) not in no_decay]
    exempt = [p for p in params if id(p) in no_decay]
    groups = []
    if plain:
        groups.append({"name": name, "params": plain, "lr": lr, "weight_decay": decay})
    if exempt:
        groups.append({"name": f"{name}.no_decay", "params": exempt, "lr": lr, "weight_decay": 0.0})
    return groups


def extract_features(
    model: nn.Module, x: torch.Tensor, stages: str | Iterable[str] = ("layer2", "layer4")
) -> dict[str, torch.Tensor]:
    """The output of each named stage (of its last module) for input ``x``, in one forward pass.

    Runs in the model's current mode and autograd state; wrap in ``torch.no_grad()`` to save
    memory. The hooks are removed afterwards.
    """
    resolved = resolve_stages(model, stages)
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, modules in resolved.items():
        if not modules:
            raise ResnetlabError(f"stage {name!r} has no modules.")

        def hook(module, args, output, name=name):
            outputs[name] = output.clone()  # a following in-place ReLU would change it

        handles.append(modules[-1].register_forward_hook(hook))
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: outputs[name] for name in resolved}
