"""Export to TorchScript or ONNX, with a numerical check of the exported file against eager.

The check runs the saved file (``torch.jit.load`` / onnxruntime) on a batch of a different size
than the example's, so a batch axis baked in at export time is caught, and reports the largest
absolute difference from the eager model. ``metadata`` goes into an ONNX file's
``metadata_props`` (a TorchScript file's extra file ``resnetlab.json``); :class:`Preprocessed`
puts normalisation and softmax into the graph, so raw RGB images go in and probabilities out.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ResnetlabError
from .files import atomic_write
from .models.runtime import OPSET, OUTPUT, onnx_bytes

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = OPSET  # the engine's: one exporter, one opset
EXTRA_FILE = "resnetlab.json"  # a TorchScript file's metadata
INPUT_KINDS = ("uint8", "float")  # raw inputs of a Preprocessed model: 0-255, or [0, 1]
LUMA = (0.299, 0.587, 0.114)  # as the prediction pipeline's colour-to-grey


class Preprocessed(nn.Module):
    """RGB images (N, 3, H, W) at the model's input size, uint8 0-255 or float [0, 1], to class
    probabilities: grey conversion if the model was trained on grey images, scaling, mean/std
    normalisation, the model, logits over ``temperature`` and softmax."""

    output_name = "probabilities"
    mean: torch.Tensor  # buffers registered in __init__
    std: torch.Tensor
    luma: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        temperature: float = 1.0,
        input_kind: str = "uint8",
        grey: bool = False,
    ) -> None:
        super().__init__()
        if input_kind not in INPUT_KINDS:
            raise ResnetlabError(f"input kind {input_kind!r} is unknown; use uint8 or float.")
        self.model, self.temperature, self.grey = model, float(temperature), grey
        self.to_255 = 1.0 if input_kind == "uint8" else 255.0
        self.channels = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("luma", torch.tensor(LUMA).reshape(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() * self.to_255
        if self.grey or self.channels == 1:  # rounded to 0-255 as the decoded grey image is
            x = torch.round((x * self.luma).sum(1, keepdim=True)).clamp(0, 255)
            x = x.expand(-1, self.channels, -1, -1)
        x = (x / 255.0 - self.mean) / self.std
        return torch.softmax(self.model(x).float() / self.temperature, dim=1)


@dataclass(frozen=True)
class ExportReport:
    """What was written and how closely it reproduces the eager model."""

    path: Path
    format: str
    size_bytes: int
    check_batch: int
    max_abs_diff: float
    tolerance: float
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.format} -> {self.path} ({self.size_bytes / 2**20:.1f} MiB, "
            f"{self.seconds:.1f} s); max |diff| vs eager on batch {self.check_batch}: "
            f"{self.max_abs_diff:.2e} (tolerance {self.tolerance:g})"
        )


def export_model(
    model: nn.Module,
    path: str | Path,
    format: str,
    example_input: torch.Tensor,
    *,
    tolerance: float = 1e-4,
    metadata: Mapping[str, str] | None = None,
) -> ExportReport:
    """Write ``model`` (in eval mode) to ``path`` and check it; raises if it differs from eager.

    The file is built and checked in memory, then written atomically: a failed export or
    check, or a full disk, leaves nothing at ``path``. ``metadata`` (string values) is stored
    in the file.
    """
    if format not in FORMATS:
        raise ResnetlabError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}.")
    path = Path(path)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            exporter = _export_onnx if format == "onnx" else _export_torchscript
            data = exporter(model, example_input, dict(metadata or {}))
            batch = example_input.shape[0] + 1
            check = _check_input(example_input, batch)
            expected = model(check).float().cpu()
            actual = (_run_onnx if format == "onnx" else _run_torchscript)(data, check)
        diff = float((actual.float().cpu() - expected).abs().max())
        if not diff <= tolerance:
            raise ResnetlabError(
                f"exported {format} model differs from eager by {diff:.3g} (> {tolerance:g}) on "
                f"batch {batch}; nothing was written. Export in float32 on CPU, or raise tolerance."
            )
        with atomic_write(path) as handle:
            handle.write(data)
    finally:
        model.train(was_training)
    return ExportReport(
        path, format, path.stat().st_size, batch, diff, tolerance, time.perf_counter() - start
    )


def _check_input(example: torch.Tensor, batch: int) -> torch.Tensor:
    """A seeded batch like ``example``: normal values, or 0-255 for an integer (image) input."""
    shape, generator = (batch, *example.shape[1:]), torch.Generator().manual_seed(0)
    if example.dtype.is_floating_point:
        check = torch.randn(shape, generator=generator)
    else:
        check = torch.randint(0, 256, shape, generator=generator)
    return check.to(example.device, example.dtype)


def _export_torchscript(model: nn.Module, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    """The traced model as the bytes of a TorchScript file (saved to memory: saving to a
    path on a full disk aborts the process)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but works
        traced = torch.jit.trace(model, example, check_trace=False)
        extra = {EXTRA_FILE: json.dumps(metadata)} if metadata else {}
        torch.jit.save(traced, buffer, _extra_files=extra)
    return buffer.getvalue()


def _run_torchscript(data: bytes, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but works
        loaded = torch.jit.load(io.BytesIO(data), map_location=x.device)
    return loaded(x)


def _export_onnx(model: nn.Module, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    """The exporter the ONNX Runtime engine uses too (``models.runtime.onnx_bytes``: the
    TorchScript-based one with a dynamic batch axis), plus the metadata."""
    data = onnx_bytes(model, example, getattr(model, "output_name", OUTPUT))
    return _with_onnx_metadata(data, metadata) if metadata else data


def _with_onnx_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    try:
        import onnx
    except ImportError:
        raise ResnetlabError(
            "storing metadata in an ONNX file needs onnx: pip install 'resnetlab[export]'."
        ) from None
    proto = onnx.load_from_string(data)
    onnx.helper.set_model_props(proto, metadata)
    return proto.SerializeToString()


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata stored by :func:`export_model` in an ONNX or TorchScript file."""
    path = Path(path)
    if path.suffix == SUFFIXES["onnx"]:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in proto.metadata_props}
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[EXTRA_FILE]) if extra[EXTRA_FILE] else {}


def _run_onnx(data: bytes, x: torch.Tensor) -> torch.Tensor:
    try:
        import onnxruntime
    except ImportError:
        raise ResnetlabError(
            "checking an ONNX export needs onnxruntime: pip install 'resnetlab[export]'."
        ) from None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"input": x.cpu().numpy()})
    return torch.from_numpy(output)
