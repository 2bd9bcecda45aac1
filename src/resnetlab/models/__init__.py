"""The networks: blocks, ImageNet ResNets and plain twins, CIFAR ResNets, VGG, and the registry."""

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
from .registry import ModelInfo, Published, create_model, list_models, model_info
from .resnet import ResNet
from .vgg import VGG

__all__ = [
    "Backbone", "BasicBlock", "BottleneckBlock", "CifarResNet", "ModelInfo", "PadShortcut",
    "PreActBasicBlock", "PreActBottleneckBlock", "PreActResNet", "Published", "ResNet", "VGG",
    "conv1x1", "conv3x3", "create_model", "fold_batchnorm", "list_models", "model_info",
    "optimize_for_inference",
]  # fmt: skip
