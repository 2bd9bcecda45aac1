"""The peer CIFAR-10 ResNets load into resnetlab's models and reproduce the peer's accuracy.

An independent implementation's checkpoints (``../shared/peer/cifar-resnets``) must give, on
the JPEG CIFAR-10 test split, the accuracy its README reports for them (±0.05 %): the check
that resnetlab's CIFAR ResNets are the same architecture, layer for layer.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab import create_model

# From ../shared/peer/cifar-resnets/README.md: file, parameters, accuracy (%) on the JPEG split.
PEER = {
    "resnet20": ("resnet20-12fca82f.th", 269_722, 81.03),
    "resnet32": ("resnet32-d509ac18.th", 464_154, 82.56),
    "resnet44": ("resnet44-014dd654.th", 658_586, 82.67),
    "resnet56": ("resnet56-4bfd9763.th", 853_018, 83.20),
}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PREFIX = "cifar10-jpeg/test/"


@pytest.fixture(scope="module")
def test_split(shared_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """The 10,000 test images, decoded from the archive in memory, normalised as by the peer."""
    images: dict[tuple[str, str], bytes] = {}
    with tarfile.open(shared_dir / "data" / "cifar10-jpeg.tar.gz") as archive:
        for member in archive:
            if member.isfile() and member.name.startswith(PREFIX):
                cls, file = member.name[len(PREFIX) :].split("/")
                images[(cls, file)] = archive.extractfile(member).read()
    classes = sorted({cls for cls, _ in images})
    keys = sorted(images)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(images[k])).convert("RGB")) for k in keys])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    y = torch.tensor([classes.index(cls) for cls, _ in keys])
    assert classes[0] == "airplane" and classes[-1] == "truck" and len(classes) == 10
    assert x.shape == (10_000, 3, 32, 32)
    assert torch.bincount(y).tolist() == [1000] * 10
    return x, y


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.parametrize("name", list(PEER))
def test_peer_checkpoint_reproduces_published_accuracy(shared_dir, test_split, name):
    file, params, expected = PEER[name]
    model = create_model(name, pretrained=shared_dir / "peer" / "cifar-resnets" / file).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    x, y = test_split
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(x), 500):
            logits = model(x[start : start + 500])
            correct += int((logits.argmax(1) == y[start : start + 500]).sum())
    accuracy = 100 * correct / len(y)
    assert abs(accuracy - expected) <= 0.05, f"{name}: {accuracy:.2f} % vs peer {expected} %"
