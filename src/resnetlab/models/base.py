"""The interface every resnetlab network shares: features, head and named stages."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A classifier split into `forward_features` (before pooling) and `forward_head`.

    Subclasses set `head_name` (the dotted name of the final Linear layer, e.g. ``"fc"`` or
    ``"classifier.6"``), `num_features` (the width that reaches the head) and `stage_names`
    (the paper's names, in forward order, each naming one child module or a group of them).
    """

    head_name: str = "fc"
    num_features: int = 0
    stage_names: tuple[str, ...] = ()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        """Map each stage name (``stem``, ``layer1`` ..., ``head``) to its modules."""
        raise NotImplementedError

    def get_head(self) -> nn.Module:
        return self.get_submodule(self.head_name)

    def set_head(self, module: nn.Module) -> None:
        parent_name, _, child = self.head_name.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        setattr(parent, child, module)
