"""The networks: blocks, ImageNet ResNets and plain twins, CIFAR ResNets, VGG, and the registry.

Importing the model modules registers their builders, in this order (``list_models``' order).
"""

from . import resnet, vgg, cifar  # noqa: F401, I001  (registration order)
from .base import Backbone
from .blocks import (
    BasicBlock,
    BottleneckBlock,
    PadShortcut,
    PreActBasicBlock,
    PreActBottleneckBlock,
    conv1x1,
    conv3x3,
)
from .cifar import CifarResNet, PreActResNet
from .inference import fold_batchnorm, optimize_for_inference
from .registry import (
    ModelInfo,
    Published,
    builder_options,
    create_model,
    list_models,
    model_info,
    register_model,
)
from .resnet import ResNet
from .vgg import VGG

__all__ = [
    "Backbone", "BasicBlock", "BottleneckBlock", "CifarResNet", "ModelInfo", "PadShortcut",
    "PreActBasicBlock", "PreActBottleneckBlock", "PreActResNet", "Published", "ResNet", "VGG",
    "builder_options", "conv1x1", "conv3x3", "create_model", "fold_batchnorm", "list_models",
    "model_info", "optimize_for_inference", "register_model",
]  # fmt: skip
