"""The model behind ``resnetlab serve``: loaded once as ``predict``, ``export`` and ``explain``
load it, then asked for one image at a time from many threads (one lock around the model).
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
from ..errors import ResnetlabError
from ..models.inference import optimize_for_inference


@dataclass
class ServedModel(Trained):
    """A trained model (its preprocessing, classes and decision rule) asked for one image at a
    time from many threads, under one lock."""

    source: str = ""
    top_k: int = 3
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.model.eval()
        try:  # what `resnetlab predict` runs: BatchNorm folded, channels-last
            self.fast = optimize_for_inference(self.model)
        except ResnetlabError:
            self.fast = self.model

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
        }

    def image(self, data: bytes) -> torch.Tensor:
        """Image bytes to the model's uint8 input (1, C, crop, crop); a bad image raises
        ``BadImage`` (the pixel limit of ``data.folder`` applies)."""
        array = decode(data, self.preprocessing.resize)
        raw = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        return self.prepared(raw[None])

    def predict(self, data: bytes, top_k: int | None = None, gradcam: bool = False) -> dict:
        """Probabilities of every class, the top k, the decision and optionally the Grad-CAM
        overlay of the top class (a PNG data URL) for one image's bytes."""
        raw = self.image(data)
        x = self.inputs(raw)
        with self.lock:
            with torch.inference_mode():
                probs = self.probabilities(self.fast(x))
            cam = None
            if gradcam:
                result = cam_maps(self.model, x, target=int(probs[0].argmax()))
                cam = result["maps"][0], result["layer"]
        return self.answer(probs, top_k, raw[0], cam)

    def answer(self, probs: torch.Tensor, top_k: int | None, raw, cam) -> dict:
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
    source: str, pretrained: str | None = None, device: str = "cpu", top_k: int = 3
) -> ServedModel:
    """Any run folder, Hub folder or ``hf-hub:`` id, model file, or a registered model name
    (with ``pretrained``, a weights tag or file), loaded once as every command loads it."""
    return ServedModel(**vars(load_trained(source, pretrained, device)), source=source,
                       top_k=top_k)  # fmt: skip
