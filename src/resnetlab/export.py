"""Export to TorchScript or ONNX, with a numerical check of the exported file against eager.

The check runs the saved file (``torch.jit.load`` / onnxruntime) on a batch of a different size
than the example's, so a batch axis baked in at export time is caught, and reports the largest
absolute difference from the eager model.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ResnetlabError
from .files import move_into_place

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17


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
) -> ExportReport:
    """Write ``model`` (in eval mode) to ``path`` and check it; raises if it differs from eager.

    The file is written atomically: a failed export or check leaves nothing at ``path``.
    """
    if format not in FORMATS:
        raise ResnetlabError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(handle)
    temp = Path(temp_name)
    try:
        with torch.no_grad():
            (_export_onnx if format == "onnx" else _export_torchscript)(model, example_input, temp)
            batch = example_input.shape[0] + 1
            check = torch.randn((batch, *example_input.shape[1:]), generator=_seeded())
            check = check.to(example_input.device, example_input.dtype)
            expected = model(check).float().cpu()
            actual = (_run_onnx if format == "onnx" else _run_torchscript)(temp, check)
        diff = float((actual.float().cpu() - expected).abs().max())
        if not diff <= tolerance:
            raise ResnetlabError(
                f"exported {format} model differs from eager by {diff:.3g} (> {tolerance:g}) on "
                f"batch {batch}; nothing was written. Export in float32 on CPU, or raise tolerance."
            )
        move_into_place(temp, path)
    finally:
        temp.unlink(missing_ok=True)
        model.train(was_training)
    return ExportReport(
        path, format, path.stat().st_size, batch, diff, tolerance, time.perf_counter() - start
    )


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _export_torchscript(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but works
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(out))


def _run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but works
        loaded = torch.jit.load(str(path), map_location=x.device)
    return loaded(x)


def _export_onnx(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    """The TorchScript-based exporter with a dynamic batch axis: fast and dependency-light."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    try:
        import onnxruntime
    except ImportError:
        raise ResnetlabError(
            "checking an ONNX export needs onnxruntime: pip install 'resnetlab[export]'."
        ) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"input": x.cpu().numpy()})
    return torch.from_numpy(output)
