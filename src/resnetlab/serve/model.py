"""The model behind ``resnetlab serve``: loaded once as ``predict``, ``export`` and ``explain``
load it, then asked for one image at a time from many threads (one lock around the model).
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..analysis.gradcam import cam_maps, overlay
from ..card import CARD_NAME, card_calibration, is_fine_tuned, load_model, load_source
from ..data.folder import decode
from ..data.preprocess import Preprocessing, prepare_images
from ..data.preprocess import normalise as normalise_prep
from ..errors import ResnetlabError
from ..experiments import trained
from ..models.inference import optimize_for_inference
from ..weights import load_checkpoint


@dataclass
class ServedModel:
    """A model in eval mode with what a prediction needs: preprocessing, classes, calibration
    and (two-class fine-tuned runs) the operating point chosen on validation."""

    model: torch.nn.Module
    name: str
    source: str
    preprocessing: Preprocessing
    classes: list[str]
    normalise: Callable[[torch.Tensor], torch.Tensor]
    temperature: float = 1.0
    threshold: float | None = None
    positive_class: str | None = None
    top_k: int = 3
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.model.eval()
        try:  # what `resnetlab predict` runs: BatchNorm folded, channels-last
            self.fast = optimize_for_inference(self.model)
        except ResnetlabError:
            self.fast = self.model

    def info(self) -> dict[str, Any]:
        """What the page shows about the model."""
        prep = self.preprocessing
        return {
            "model": self.name,
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
        return prepare_images(raw[None], self.preprocessing)

    def predict(self, data: bytes, top_k: int | None = None, gradcam: bool = False) -> dict:
        """Probabilities of every class, the top k, the decision and optionally the Grad-CAM
        overlay of the top class (a PNG data URL) for one image's bytes."""
        raw = self.image(data)
        x = self.normalise(raw)
        with self.lock:
            with torch.inference_mode():
                probs = torch.softmax(self.fast(x).float() / self.temperature, dim=1)[0]
            cam = None
            if gradcam:
                result = cam_maps(self.model, x, target=int(probs.argmax()))
                cam = result["maps"][0], result["layer"]
        return self.answer(probs, top_k, raw[0], cam)

    def answer(self, probs: torch.Tensor, top_k: int | None, raw, cam) -> dict:
        k = max(1, min(top_k or self.top_k, len(self.classes)))
        values, index = probs.topk(k)
        top = [{"class": self.classes[i], "probability": v}
               for v, i in zip(values.tolist(), index.tolist(), strict=True)]  # fmt: skip
        out: dict[str, Any] = {
            "model": self.name,
            "classes": [{"class": c, "probability": p}
                        for c, p in zip(self.classes, probs.tolist(), strict=True)],  # fmt: skip
            "top": top,
            "decision": top[0]["class"],
            "rule": "the most probable class",
            "threshold": None,
            "temperature": self.temperature,
        }
        if self.threshold is not None and len(self.classes) == 2:
            # as `resnetlab predict`: the second class when its probability reaches the threshold
            p1 = float(probs[1])
            out["decision"] = self.classes[1] if p1 >= self.threshold else self.classes[0]
            out["threshold"] = float(self.threshold)
            out["probability"] = p1
            out["rule"] = f"{self.classes[1]} when its probability >= {self.threshold:.4f}"
        if cam is not None:
            out["gradcam"] = png_data_url(overlay(raw, cam[0]))
            out["gradcam_layer"] = cam[1]
        return out


def png_data_url(picture) -> str:
    """An RGB uint8 array as a ``data:image/png;base64,...`` URL."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def is_train_run(source: str) -> bool:
    """A ``resnetlab train`` run folder: ``config.json`` and no model card."""
    path = Path(source)
    return path.is_dir() and (path / "config.json").is_file() and not (path / CARD_NAME).exists()


def load_served(
    source: str, pretrained: str | None = None, device: str = "cpu", top_k: int = 3
) -> ServedModel:
    """A fine-tuning run folder (or model file + card), a ``resnetlab train`` run folder, or a
    registered model name (with ``pretrained``, a weights tag or file), ready to serve."""
    if is_train_run(source):
        if pretrained:
            raise ResnetlabError("a run folder brings its own weights; drop --pretrained.")
        subject = trained.load_subject(source)
        ckpt = load_checkpoint(subject.weights) if subject.weights else {}
        model = subject.model.to(device)
        info: Any = model.info  # set by create_model
        c, h, _ = info.input_size
        norm = subject.normalisation
        prep = Preprocessing(h, round(h * 256 / 224) if h >= 224 else h,
                             list(norm.get("mean") or [0.0] * c),
                             list(norm.get("std") or [1.0] * c), channels=c)  # fmt: skip
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        classes = [str(n) for n in ckpt.get("classes") or range(head.out_features)]

        def normalise(x: torch.Tensor) -> torch.Tensor:
            return trained.normalise(x, norm).to(device)

        return ServedModel(model, subject.label, source, prep, classes, normalise, top_k=top_k)
    if is_fine_tuned(source):  # as `resnetlab predict` loads it
        if pretrained:
            raise ResnetlabError("a fine-tuning run brings its own weights; drop --pretrained.")
        loaded = load_model(source, device)
        temperature, threshold, positive = card_calibration(loaded.card)
        label = f"{loaded.card['model']['name']} ({Path(source).name})"
        model, prep, classes = loaded.model, loaded.preprocessing, loaded.classes
    else:  # a model name or checkpoint file, as `resnetlab explain` loads it
        model, prep, classes, temperature = load_source(source, pretrained, device)
        threshold = positive = None
        label = f"{source} ({pretrained or 'random weights'})"
    return ServedModel(
        model, label, source, prep, [str(c) for c in classes],
        partial(_normalise_to, prep=prep, device=device), temperature, threshold, positive,
        top_k=top_k,
    )  # fmt: skip


def _normalise_to(x: torch.Tensor, prep: Preprocessing, device: str) -> torch.Tensor:
    return normalise_prep(x.to(device), prep)
