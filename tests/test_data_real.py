"""The real data sets in ``../shared/data``: CIFAR-10 (JPEG copy) and PneumoniaMNIST.

The 60,000 JPEGs are decoded once per session into a cache under a temporary data home;
every other test here reads that cache.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data import DataBundle, TensorLoader, folder, open_data

pytestmark = pytest.mark.slow  # decodes the CIFAR-10 JPEG set once (about 12 s)

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


@pytest.fixture(scope="session")
def cifar_jpeg(shared_dir, tmp_path_factory) -> tuple[DataBundle, object]:
    root = tmp_path_factory.mktemp("resnetlab-home")
    path = shared_dir / "data" / "cifar10-jpeg.tar.gz"
    return open_data(path, root=root), root


def test_cifar10_jpeg_splits_and_classes(cifar_jpeg):
    bundle, _ = cifar_jpeg
    assert bundle.classes == CIFAR10_CLASSES
    assert bundle.train.images.shape == (50_000, 3, 32, 32)
    assert bundle.test.images.shape == (10_000, 3, 32, 32)
    assert bundle.train.images.dtype == torch.uint8 and bundle.val is None
    assert bundle.train.labels.bincount().tolist() == [5000] * 10
    assert bundle.test.labels.bincount().tolist() == [1000] * 10
    assert "JPEG" in bundle.description and "lossy" in bundle.description


def test_cifar10_jpeg_pixels_match_pillow_in_sorted_order(cifar_jpeg, shared_dir):
    bundle, _ = cifar_jpeg
    wanted = {"cifar10-jpeg/test/cat/": None, "cifar10-jpeg/train/truck/": None}
    names: dict[str, list[str]] = {k: [] for k in wanted}
    with tarfile.open(shared_dir / "data" / "cifar10-jpeg.tar.gz") as tf:
        members = {m.name: m for m in tf.getmembers() if m.isfile()}
        for name in members:
            for prefix in names:
                if name.startswith(prefix):
                    names[prefix].append(name)
        first_cat = sorted(names["cifar10-jpeg/test/cat/"])[0]
        last_truck = sorted(names["cifar10-jpeg/train/truck/"])[-1]
        cat = np.array(
            Image.open(io.BytesIO(tf.extractfile(members[first_cat]).read())).convert("RGB")
        )
        truck = np.array(
            Image.open(io.BytesIO(tf.extractfile(members[last_truck]).read())).convert("RGB")
        )
    assert torch.equal(bundle.test.images[3 * 1000], torch.from_numpy(cat).permute(2, 0, 1))
    assert torch.equal(bundle.train.images[-1], torch.from_numpy(truck).permute(2, 0, 1))


def test_cifar10_jpeg_val_split_from_cache(cifar_jpeg, shared_dir, monkeypatch):
    _, root = cifar_jpeg

    def no_decoding(data):
        raise AssertionError("the cache should make decoding unnecessary")

    monkeypatch.setattr(folder, "decode", no_decoding)
    bundle = open_data(shared_dir / "data" / "cifar10-jpeg.tar.gz", root=root, val_size=5000)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (45_000, 5_000, 10_000)
    assert bundle.val.labels.bincount().tolist() == [500] * 10
    assert not (shared_dir / "data" / "cifar10-jpeg.tar.gz.resnetlab-cache.pt").exists()
    x, y = next(TensorLoader(bundle.train, 128, train=True).epoch(0))
    assert x.shape == (128, 3, 32, 32) and y.shape == (128,)


def test_pneumoniamnist(shared_dir):
    bundle = open_data(shared_dir / "data" / "pneumoniamnist-balanced.npz")
    assert bundle.classes == ["normal", "pneumonia"]
    assert bundle.in_channels == 1 and bundle.image_size == (28, 28)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (2428, 270, 468)
    assert bundle.train.labels.bincount().tolist() == [1214, 1214]
    assert bundle.val.labels.bincount().tolist() == [135, 135]
    assert bundle.test.labels.bincount().tolist() == [234, 234]
    assert "PneumoniaMNIST" in bundle.description
