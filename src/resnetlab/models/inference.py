"""A network made ready for inference: BatchNorm folded into the convolutions, then run by the
fastest engine this machine has.

In eval mode a BatchNorm is an affine map per channel, so the convolution that feeds it can
absorb it: w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta. That removes
one full pass over every activation; with the channels-last layout it makes the CPU forward
1.3-1.5x faster (docs/BENCHMARKS.md). On the CPU, ONNX Runtime (``runtime.py``, the optional
``ort`` extra) runs the folded network faster still, so ``engine="auto"`` picks it there. The
folded copy is for inference only: its BatchNorm layers are gone, so it neither trains nor
loads the original state dict.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..errors import ResnetlabError
from ..groups import ENGINES
from .runtime import NEEDS, OnnxRuntimeModule, available


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where the BN's input is that conv's output and nothing else
    reads it. Found by tracing the forward pass, so a pre-activation block's BN, which
    normalises the block input that the shortcut also reads, is never paired."""
    try:
        graph = fx.Tracer().trace(model)
    except Exception as exc:  # fx raises many types for code it cannot trace
        raise ResnetlabError(
            f"cannot trace {type(model).__name__} to find conv-BN pairs ({exc}); run it "
            "unfolded, or fold its layers by hand with torch.nn.utils.fusion."
        ) from exc
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs: list[tuple[str, str]] = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module":
            continue
        conv = modules.get(src.target)
        if isinstance(conv, nn.Conv2d) and len(src.users) == 1 and calls[src.target] == 1 \
                and calls[node.target] == 1:  # fmt: skip
            assert isinstance(src.target, str) and isinstance(node.target, str)  # call_module
            pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable BatchNorm merged into its conv."""
    model = copy.deepcopy(model).eval()
    for conv_name, bn_name in conv_bn_pairs(model):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        # as conv_bn_pairs found them: a Conv2d and a BatchNorm2d with running statistics
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        assert bn.running_mean is not None and bn.running_var is not None
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        conv.weight, conv.bias = weight, bias
        model.set_submodule(bn_name, nn.Identity())
    return model


def resolve_engine(engine: str, model: nn.Module) -> str:
    """``torch`` or ``onnxruntime``: what ``engine`` (one of ``ENGINES``) runs ``model`` with.
    ``auto`` is onnxruntime when it is installed and the model is float32 on the CPU."""
    if engine not in ENGINES:
        raise ResnetlabError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}.")
    tensor = next(model.parameters(), None)
    on_cpu = tensor is None or (tensor.device.type == "cpu" and tensor.dtype == torch.float32)
    if engine == "onnxruntime":
        if not available():
            raise ResnetlabError(NEEDS + ", or use --engine torch.")
        if not on_cpu:
            where = "" if tensor is None else f"{tensor.dtype} on {tensor.device}"
            raise ResnetlabError(f"the onnxruntime engine runs float32 models on the CPU, not "
                                 f"{where}; use --device cpu or --engine torch.")  # fmt: skip
        return engine
    return "onnxruntime" if engine == "auto" and on_cpu and available() else "torch"


def optimize_for_inference(
    model: nn.Module,
    channels_last: bool = True,
    *,
    engine: str = "auto",
    input_size: tuple[int, ...] | None = None,
    threads: int | None = None,
    cache: bool = True,
) -> nn.Module:
    """An eval-mode inference copy of ``model`` with BatchNorm folded, run by ``engine``: on
    the CPU with onnxruntime installed (``auto``), an ONNX Runtime session
    (:class:`~resnetlab.models.runtime.OnnxRuntimeModule`: the export cached under
    ``$RESNETLAB_HOME/onnx`` unless ``cache=False``, ``threads`` defaulting to torch's);
    else (``torch``) the folded module, channels-last unless told otherwise. Either is called
    on a float tensor (N, C, H, W) in either layout and returns the logits. ``input_size``
    (C, H, W) makes ORT's session now rather than at the first call."""
    kind = resolve_engine(engine, model)
    folded = fold_batchnorm(model).requires_grad_(False)
    if kind == "onnxruntime":
        return OnnxRuntimeModule(folded, input_size, threads=threads, cache=cache,
                                 fallback=engine == "auto")  # fmt: skip
    return folded.to(memory_format=torch.channels_last) if channels_last else folded


def input_device(model: nn.Module) -> torch.device:
    """The device a model's inputs go to: its first parameter's or buffer's (the CPU for an
    ONNX Runtime engine, which has neither)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")
