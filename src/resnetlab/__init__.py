"""resnetlab: VGG, ResNet and their plain twins, the classic experiments, and fine-tuning."""

from .models import create_model, list_models, model_info
from .version import __version__

__all__ = ["create_model", "list_models", "model_info", "__version__"]
