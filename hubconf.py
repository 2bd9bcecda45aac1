"""torch.hub entry points: one per registered resnetlab model, from a checkout or a clone.

    torch.hub.load("path/to/resnetlab", "resnet56", source="local", pretrained="cifar10")
    torch.hub.load("path/to/resnetlab", "resnet50d", source="local", num_classes=10)

Each entry point is ``create_model(name, pretrained=..., **options)``; ``pretrained`` takes a
weights tag, True, a checkpoint path or a URL. No ``pip install`` is needed: ``src/`` is put on
``sys.path``.
"""

import sys as _sys
from pathlib import Path as _Path

_SRC = str(_Path(__file__).resolve().parent / "src")
if _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)

from resnetlab.models import create_model as _create_model  # noqa: E402
from resnetlab.models import list_models as _list_models  # noqa: E402
from resnetlab.models import model_info as _model_info  # noqa: E402

dependencies = ["torch", "torchvision"]


def _entry_point(name: str):
    """The hub entry point of one registered model (named after it, with its description)."""

    def entry(pretrained=False, **options):
        return _create_model(name, pretrained=pretrained, **options)

    info = _model_info(name)
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"{info.description}\n\n"
        f"pretrained: False, True (default weights), a tag, a checkpoint path or a URL.\n"
        f"options: {', '.join(info.options or ())}."
    )
    return entry


for _name in _list_models():
    globals()[_name] = _entry_point(_name)
