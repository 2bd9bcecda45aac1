"""Every supported data format, from small files written here: folders, archives, CIFAR
pickles, MedMNIST .npz, IDX; plus downloads from a local server and the validation split."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data import archive, cifar, open_data, split_val
from resnetlab.data.download import download
from resnetlab.errors import ResnetlabError

CLASSES = ["cat", "dog", "frog"]


def write_folder(root: Path, per_class: int = 4, size: int = 8, fmt: str = "png") -> np.ndarray:
    """root/{train,test}/<class>/i.<fmt> with a colour that encodes (split, class, i)."""
    for s, split in enumerate(["train", "test"]):
        for c, cls in enumerate(CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                colour = (40 * c + 10, 20 * i + 5, 100 * s + 30)
                ext = "jpg" if fmt == "mixed" and i % 2 else ("png" if fmt == "mixed" else fmt)
                Image.new("RGB", (size, size), colour).save(root / split / cls / f"{i}.{ext}")
    return np.array([40 * c + 10 for c in range(len(CLASSES))])


def make_tar(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src, arcname=src.name)
    return dest


def make_zip(src: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, f"{src.name}/{path.relative_to(src).as_posix()}")
    return dest


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RESNETLAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize("packing", ["dir", "tar.gz", "zip"])
def test_image_folder_every_packing(tmp_path, home, packing):
    src = tmp_path / "shapes"
    reds = write_folder(src, fmt="mixed")
    spec = {"dir": src, "tar.gz": make_tar(src, tmp_path / "shapes.tar.gz")}.get(packing)
    spec = spec or make_zip(src, tmp_path / "shapes.zip")
    bundle = open_data(spec)
    assert bundle.classes == CLASSES
    assert len(bundle.train) == 12 and len(bundle.test) == 12 and bundle.val is None
    assert bundle.train.images.shape == (12, 3, 8, 8) and bundle.train.images.dtype == torch.uint8
    assert bundle.in_channels == 3 and bundle.image_size == (8, 8)
    assert bundle.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # Red channel encodes the class; JPEG is lossy, so allow a few levels.
    red = bundle.train.images[:, 0].float().mean((1, 2))
    expected = torch.tensor(reds, dtype=torch.float32).repeat_interleave(4)
    assert torch.allclose(red, expected, atol=4)
    assert (bundle.test.images[:, 2].float().mean() - 130).abs() < 4


def test_grey_png_folder_gives_one_channel(tmp_path, home):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "g" / split / cls).mkdir(parents=True)
            Image.new("L", (5, 6), 77).save(tmp_path / "g" / split / cls / "0.png")
    bundle = open_data(tmp_path / "g", class_names=["alpha", "beta"])
    assert bundle.in_channels == 1 and bundle.image_size == (6, 5)
    assert bundle.classes == ["alpha", "beta"] and bundle.train.classes == ["alpha", "beta"]
    assert int(bundle.train.images[0, 0, 0, 0]) == 77


def test_large_images_stay_files(tmp_path, home):
    src = tmp_path / "big"
    write_folder(src, per_class=2, size=80)
    bundle = open_data(make_tar(src, tmp_path / "big.tar.gz"))
    assert type(bundle.train).__name__ == "FileImageSet"
    assert len(bundle.train.paths) == 6 and all(p.is_file() for p in bundle.train.paths)
    assert all(str(p).startswith(str(home)) for p in bundle.train.paths)  # extracted there
    assert bundle.image_size == (224, 224) and bundle.in_channels == 3


# --- CIFAR python pickles ---------------------------------------------------------------


def cifar_archive(dest: Path, per_batch: int = 6, kind: str = "cifar10") -> Path:
    """A tiny archive in the official layout, pickled at protocol 2 as the originals were."""
    src = cifar.CIFAR[kind]
    rng = np.random.default_rng(0)
    names = [f"class{i}" for i in range(10 if kind == "cifar10" else 100)]
    files = {src.meta: {src.names_key: names}}
    for name in (*src.train, src.test):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(y) for y in rng.integers(0, len(names), per_batch)]
        files[name] = {b"batch_label": b"x", b"data": data, src.label_key.encode(): labels}
    with tarfile.open(dest, "w:gz") as tf:
        for name, obj in files.items():
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{src.folder}/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return dest


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_archive_and_folder(tmp_path, home, kind):
    path = cifar_archive(tmp_path / f"{cifar.CIFAR[kind].url.rsplit('/', 1)[-1]}", kind=kind)
    bundle = open_data(path)
    n_train = 6 * len(cifar.CIFAR[kind].train)
    assert len(bundle.train) == n_train and len(bundle.test) == 6
    assert bundle.train.images.shape == (n_train, 3, 32, 32)
    assert bundle.classes[:2] == ["class0", "class1"]
    with tarfile.open(path) as tf:
        first = tf.extractfile(f"{cifar.CIFAR[kind].folder}/{cifar.CIFAR[kind].train[0]}")
        raw = pickle.loads(first.read(), encoding="latin1")
    assert torch.equal(bundle.train.images[0].flatten(), torch.from_numpy(raw[b"data"][0]))
    # The extracted folder reads the same (extracted by the package: no tarfile filter, which
    # Python 3.11.2 does not have).
    archive.extract(path, tmp_path / "x")
    again = open_data(tmp_path / "x" / cifar.CIFAR[kind].folder)
    assert torch.equal(again.train.images, bundle.train.images)
    assert torch.equal(again.test.labels, bundle.test.labels)


def test_cifar_pickle_with_code_is_refused():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(ResnetlabError, match="builtins.print is not allowed"):
        cifar.load_pickle(pickle.dumps({"data": Evil()}), "evil")


def test_cifar_by_name_downloads_once_with_md5(tmp_path, home, monkeypatch):
    archive = cifar_archive(tmp_path / "served.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    fake = cifar.CIFAR["cifar10"].__class__(
        **{**cifar.CIFAR["cifar10"].__dict__, "url": archive.as_uri(), "md5": md5}
    )
    monkeypatch.setitem(cifar.CIFAR, "cifar10", fake)
    with pytest.raises(ResnetlabError, match="allow downloading"):
        open_data("cifar10", download=False)
    bundle = open_data("cifar10")
    assert len(bundle.train) == 30 and "CIFAR-10" in bundle.description
    assert (home / "data" / "served.tar.gz").is_file()
    archive.unlink()  # the second open must not need the URL
    assert len(open_data("cifar10").test) == 6


def test_download_over_http_checks_md5(tmp_path):
    served = tmp_path / "srv"
    served.mkdir()
    (served / "blob.bin").write_bytes(b"resnetlab" * 1000)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/blob.bin"
        good = hashlib.md5(b"resnetlab" * 1000).hexdigest()
        with pytest.raises(ResnetlabError, match="MD5"):
            download(url, tmp_path / "out" / "bad.bin", md5="0" * 32)
        assert list((tmp_path / "out").iterdir()) == []  # no partial file left
        path = download(url, tmp_path / "out" / "blob.bin", md5=good)
        assert path.read_bytes() == b"resnetlab" * 1000
        with pytest.raises(ResnetlabError, match="cannot download"):
            download(url + ".missing", tmp_path / "out" / "nothing.bin")
    finally:
        server.shutdown()


# --- MedMNIST .npz and IDX ---------------------------------------------------------------


def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 10), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 7, 7, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(n, 1)
    np.savez(tmp_path / "bloodmnist.npz", **arrays)
    bundle = open_data(tmp_path / "bloodmnist.npz")
    assert bundle.classes == ["0", "1", "2"] and bundle.in_channels == 3
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (10, 4, 6)
    assert torch.equal(
        bundle.val.images[1], torch.from_numpy(arrays["val_images"][1]).permute(2, 0, 1)
    )
    carved = open_data(tmp_path / "bloodmnist.npz", val_size=3)
    assert (len(carved.train), len(carved.val)) == (7, 3)  # val_size replaces the file's val


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder(tmp_path, gz):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(2)
    images = {
        p: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for p, n in (("train", 9), ("t10k", 5))
    }
    for prefix, x in images.items():
        files = {
            f"{prefix}-images-idx3-ubyte": x,
            f"{prefix}-labels-idx1-ubyte": np.arange(len(x)) % 10,
        }
        for name, array in files.items():
            blob = idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
    bundle = open_data(folder)
    assert bundle.classes[0] == "T-shirt/top" and bundle.in_channels == 1
    assert bundle.train.images.shape == (9, 1, 28, 28)
    assert torch.equal(bundle.test.images[:, 0], torch.from_numpy(images["t10k"]))
    assert bundle.train.labels.tolist() == list(range(9))


def test_truncated_idx_is_reported(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((3, 4, 4)))[:-5])
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3)))
    with pytest.raises(ResnetlabError, match="truncated"):
        open_data(tmp_path)


# --- validation split ----------------------------------------------------------------------


def test_val_split_deterministic_disjoint_stratified():
    from resnetlab.data import ImageSet

    labels = torch.arange(1000) % 4
    images = torch.arange(1000).reshape(1000, 1, 1, 1).to(torch.int32)  # ids, to track samples
    data = ImageSet(images, labels, list("abcd"), "ids")
    train, val = split_val(data, 100, seed=3)
    again_train, again_val = split_val(data, 100, seed=3)
    _, other = split_val(data, 100, seed=4)
    assert (len(train), len(val)) == (900, 100)
    assert torch.equal(val.images, again_val.images) and torch.equal(
        train.images, again_train.images
    )
    assert not torch.equal(val.images, other.images)
    ids = set(train.images.flatten().tolist())
    assert ids.isdisjoint(val.images.flatten().tolist()) and len(ids) == 900
    assert val.labels.bincount().tolist() == [25, 25, 25, 25]
    assert len(split_val(data, 0.1, seed=0)[1]) == 100
    with pytest.raises(ResnetlabError, match="val_size"):
        split_val(data, 1000, seed=0)


def test_unknown_spec_suggests_names(tmp_path):
    with pytest.raises(ResnetlabError, match="Did you mean cifar10"):
        open_data("cifar-1O")
