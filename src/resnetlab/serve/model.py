"""The model behind ``resnetlab serve``: loaded once as ``predict``, ``export`` and ``explain``
load it, run by the engine ``optimize_for_inference`` picks, and asked from many threads (one
lock around the model): for a batch of inputs (the server's batcher) or for one image's bytes.
"""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..analysis.gradcam import cam_maps, overlay
from ..artifact import Trained, load_trained
from ..data.folder import decode
from ..data.preprocess import torch_threads
from ..errors import ResnetlabError
from ..models.runtime import OnnxRuntimeModule


@dataclass
class ServedModel(Trained):
    """A trained model (its preprocessing, classes and decision rule) asked from many threads,
    one forward pass at a time (one lock), run by ``engine`` as ``resnetlab predict`` runs it."""

    source: str = ""
    top_k: int = 3
    engine: str = "auto"
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.model.eval()
        self.threads = torch.get_num_threads()  # the forward's; preprocessing runs on one
        try:  # what `resnetlab predict` runs: BatchNorm folded, on the fastest engine
            self.fast = self.optimized(self.engine)
        except ResnetlabError:
            if self.engine == "onnxruntime":
                raise
            self.fast = self.model  # a model fx cannot trace runs as it is

    @property
    def name(self) -> str:
        return self.label

    def info(self) -> dict[str, Any]:
        """What the page shows about the model."""
        prep = self.preprocessing
        return {
            "model": self.label,
            "source": self.source,
            "classes": self.classes,
            "input": f"{prep.channels}x{prep.crop}x{prep.crop}",
            "temperature": self.temperature,
            "threshold": self.threshold,
            "positive_class": self.positive_class,
            "top_k": self.top_k,
            "engine": self.engine_name,
            "coverage": None if self.conformal is None else float(self.conformal["coverage"]),
        }

    @property
    def engine_name(self) -> str:
        """What runs the model: ``onnxruntime``, ``torch`` (folded) or ``torch (unfolded)``."""
        if isinstance(self.fast, OnnxRuntimeModule):
            ort = any(s is not None for s in self.fast.sessions.values())
            return "onnxruntime" if ort else "torch"
        return "torch" if self.fast is not self.model else "torch (unfolded)"

    def image(self, data: bytes) -> torch.Tensor:
        """Image bytes to the model's uint8 input (1, C, crop, crop); a bad image raises
        ``BadImage`` (the pixel limit of ``data.folder`` applies)."""
        array = decode(data, self.preprocessing.resize)
        raw = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        return self.prepared(raw[None])

    def prepare(self, data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        """Image bytes to the uint8 image at the model's size (1, C, crop, crop) and the
        model's normalised input, on one torch thread (:func:`torch_threads`: requests are
        decoded side by side); a bad image raises as :meth:`image` does."""
        with torch_threads(1):
            raw = self.image(data)
            return raw, self.inputs(raw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of a batch of normalised inputs, under the lock."""
        with self.lock, torch_threads(self.threads), torch.inference_mode():
            return self.probabilities(self.fast(x))

    def gradcam(self, x: torch.Tensor, target: int) -> tuple[Any, str]:
        """The Grad-CAM map of class ``target`` for one input (1, C, H, W) and its layer."""
        with self.lock, torch_threads(self.threads):
            result = cam_maps(self.model, x, target=target)
        return result["maps"][0], result["layer"]

    def infer(self, data: bytes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`prepare` and :meth:`forward` of one image's bytes: its uint8 image, its input
        and its probabilities (1, classes)."""
        raw, x = self.prepare(data)
        return raw, x, self.forward(x)

    def predict(self, data: bytes, top_k: int | None = None, gradcam: bool = False) -> dict:
        """Probabilities of every class, the top k, the decision (with conformal sets on the
        card: the set, the action and its coverage) and optionally the Grad-CAM
        overlay of the top class (a PNG data URL) for one image's bytes, without batching."""
        raw, x, probs = self.infer(data)
        cam = self.gradcam(x, int(probs[0].argmax())) if gradcam else None
        return self.answer(probs, top_k, raw[0], cam)

    def answer(self, probs: torch.Tensor, top_k: int | None, raw, cam) -> dict:
        """The JSON answer for one image from its probabilities (1, classes)."""
        k = max(1, min(top_k or self.top_k, len(self.classes)))
        values, index = probs[0].topk(k)
        top = [{"class": self.classes[i], "probability": v}
               for v, i in zip(values.tolist(), index.tolist(), strict=True)]  # fmt: skip
        out: dict[str, Any] = {
            "model": self.label,
            "classes": [{"class": c, "probability": p}
                        for c, p in zip(self.classes, probs[0].tolist(), strict=True)],  # fmt: skip
            "top": top,
            "decision": self.classes[int(self.decide(probs)[0])],
            "rule": self.rule(),
            "threshold": self.threshold,
            "temperature": self.temperature,
        }
        if self.threshold is not None:
            out["probability"] = float(probs[0, 1])
        sets = self.abstentions(probs[:1])  # the set, the action and its coverage, as predict
        if sets is not None:
            out |= sets[0]
        if cam is not None:
            out["gradcam"] = png_data_url(overlay(raw, cam[0]))
            out["gradcam_layer"] = cam[1]
        return out


def png_data_url(picture) -> str:
    """An RGB uint8 array as a ``data:image/png;base64,...`` URL."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def load_served(
    source: str,
    pretrained: str | None = None,
    device: str = "cpu",
    top_k: int = 3,
    engine: str = "auto",
) -> ServedModel:
    """Any run folder, Hub folder or ``hf-hub:`` id, model file, or a registered model name
    (with ``pretrained``, a weights tag or file), loaded once as every command loads it, and
    made ready on ``engine`` (the ONNX export, when it is ORT, is made at start-up)."""
    return ServedModel(**vars(load_trained(source, pretrained, device)), source=source,
                       top_k=top_k, engine=engine)  # fmt: skip
