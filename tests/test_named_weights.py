"""Named CIFAR-10 weights (``pretrained="cifar10"``) and ``$RESNETLAB_WEIGHTS_MIRROR``.

The mirror is ``../shared/peer/cifar-resnets``, which holds the published files under their
published names; an http mirror is served from 127.0.0.1. No outside network is used.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import shutil
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab import create_model
from resnetlab import download as download_module
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.weights import catalog, hub, normalise_state_dict

NAMES = ("resnet20", "resnet32", "resnet44", "resnet56")
PER_CLASS = 2  # test images per class: 20 in all, to stay fast
PREFIX = "cifar10-jpeg/test/"


@pytest.fixture
def peer_dir(shared_dir) -> Path:
    return shared_dir / "peer" / "cifar-resnets"


@pytest.fixture(autouse=True)
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(hub.MIRROR_ENV, raising=False)
    monkeypatch.setattr(download_module, "RETRY_WAIT_S", 0.0)


@pytest.fixture(scope="module")
def images(shared_dir) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A few CIFAR-10 JPEG test images as uint8 (N, 3, 32, 32), their labels, the classes."""
    found: dict[str, list[bytes]] = {}
    with tarfile.open(shared_dir / "data" / "cifar10-jpeg.tar.gz") as archive:
        for member in archive:
            if not (member.isfile() and member.name.startswith(PREFIX)):
                continue
            cls = member.name[len(PREFIX) :].split("/")[0]
            if len(found.setdefault(cls, [])) < PER_CLASS:
                found[cls].append(archive.extractfile(member).read())
            if len(found) == 10 and all(len(v) == PER_CLASS for v in found.values()):
                break
    classes = sorted(found)  # CIFAR-10's label order is the sorted order (data README)
    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for c in classes for b in found[c]]
    pixels = [np.asarray(image) for image in decoded]
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([i for i, c in enumerate(classes) for _ in found[c]])
    return x, y, classes


def normalised(x: torch.Tensor, prep: dict) -> torch.Tensor:
    mean = torch.tensor(prep["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"]).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def direct_model(name: str, file: Path) -> torch.nn.Module:
    """The peer file loaded by hand: torch.load, strip ``module.``, ``linear`` -> ``fc``."""
    model = create_model(name)
    state = torch.load(file, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(normalise_state_dict(state, model), strict=True)
    return model.eval()


@pytest.fixture
def http_mirror(peer_dir):
    handler = functools.partial(QuietHandler, directory=str(peer_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/", httpd
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args) -> None:
        QuietHandler.requests.append(self.path)


def test_catalogue_entries_match_the_published_files(peer_dir):
    entries = [e for e in catalog.CATALOG if e.cifar]
    assert [e.model for e in entries] == list(NAMES)
    for entry in entries:
        path = peer_dir / entry.file
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
        assert entry.file[len(entry.model) + 1 : -3] == entry.sha256[:8]
        assert round(path.stat().st_size / 2**20, 3) == entry.file_size_mb
        assert entry.url == catalog.CIFAR_URL_ROOT + entry.file
        assert entry.url.startswith("https://github.com/akamaster/pytorch_resnet_cifar10/raw/")
        with torch.device("meta"):
            model = create_model(entry.model)
        assert sum(p.numel() for p in model.parameters()) == entry.num_params
        assert catalog.get_weights(entry.model, None) is entry
        assert catalog.get_weights(entry.model, "CIFAR-10") is entry
    assert "BSD-2-Clause" in catalog.CIFAR_LICENCE
    licence = (peer_dir / "LICENSE").read_text()  # BSD-2-Clause: two conditions, no third
    assert "Yerlan Idelbayev" in licence and "2. Redistributions in binary form" in licence
    assert "3." not in licence
    # The README table of the release: 8.27 / 7.37 / 6.90 / 6.61 % test error.
    assert [round(100 - e.acc1, 2) for e in entries] == [8.27, 7.37, 6.90, 6.61]


@pytest.mark.parametrize("name", NAMES)
def test_named_weights_from_a_folder_mirror_predict_like_the_file(
    peer_dir, images, monkeypatch, name
):
    monkeypatch.setenv(hub.MIRROR_ENV, str(peer_dir))
    model = create_model(name, pretrained="cifar10").eval()
    cfg = model.pretrained_cfg
    entry = catalog.get_weights(name, "cifar10")
    assert cfg["tag"] == "cifar10" and cfg["url"] == entry.url
    assert cfg["classes"] == images[2]  # the class folders of the data set, in label order
    assert cfg["num_classes"] == 10 and cfg["num_params"] == entry.num_params
    assert cfg["preprocessing"]["mean"] == (0.485, 0.456, 0.406)  # the peer README's values
    assert cfg["preprocessing"]["std"] == (0.229, 0.224, 0.225)
    assert cfg["preprocessing"]["crop"] == 32
    assert cfg["licence"].startswith("BSD-2-Clause")
    assert cfg["published"]["source"] == catalog.CIFAR_SOURCE
    x, y, _ = images
    inputs = normalised(x, cfg["preprocessing"])
    with torch.inference_mode():
        ours = model(inputs)
        theirs = direct_model(name, peer_dir / entry.file)(inputs)
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert (ours.argmax(1) == y).float().mean() >= 0.5  # the peer scores 81-83 % on this copy
    assert not hub.weights_dir().exists(), "a folder mirror is used in place, not copied"


def test_pretrained_true_means_cifar10_for_cifar_resnets(peer_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(hub.MIRROR_ENV, peer_dir.as_uri())  # file:// works too
    assert create_model("resnet20", pretrained=True).pretrained_cfg["tag"] == "cifar10"
    (tmp_path / "cifar10").mkdir()  # a data folder of that name does not hide the tag
    monkeypatch.chdir(tmp_path)
    assert create_model("resnet20", pretrained="cifar10").pretrained_cfg["tag"] == "cifar10"


def test_tampered_mirror_file_is_refused(peer_dir, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    file = catalog.get_weights("resnet20", "cifar10").file
    data = bytearray((peer_dir / file).read_bytes())
    data[-1000] ^= 0xFF
    (mirror / file).write_bytes(bytes(data))
    monkeypatch.setenv(hub.MIRROR_ENV, str(mirror))
    with pytest.raises(ResnetlabError, match="wrong or damaged") as err:
        create_model("resnet20", pretrained="cifar10")
    message = str(err.value)
    assert str(mirror / file) in message and hub.MIRROR_ENV in message and "\n" not in message
    with pytest.raises(ResnetlabError, match="has no resnet32-d509ac18.th"):
        create_model("resnet32", pretrained="cifar10")


def test_http_mirror_fills_the_cache(peer_dir, http_mirror, monkeypatch, images):
    url, _ = http_mirror
    QuietHandler.requests.clear()
    monkeypatch.setenv(hub.MIRROR_ENV, url)
    model = create_model("resnet44", pretrained="cifar10").eval()
    entry = catalog.get_weights("resnet44", "cifar10")
    cached = hub.weights_dir() / entry.file
    assert cached.read_bytes() == (peer_dir / entry.file).read_bytes()
    assert QuietHandler.requests == ["/" + entry.file]
    monkeypatch.delenv(hub.MIRROR_ENV)
    again = create_model("resnet44", pretrained="cifar10").eval()  # from the cache, no network
    x = normalised(images[0], model.pretrained_cfg["preprocessing"])
    with torch.inference_mode():
        assert torch.equal(model(x), again(x))
    assert len(QuietHandler.requests) == 1


def test_http_mirror_with_a_wrong_file_caches_nothing(peer_dir, tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    file = catalog.get_weights("resnet56", "cifar10").file
    shutil.copy(peer_dir / catalog.get_weights("resnet20", "cifar10").file, served / file)
    handler = functools.partial(QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(hub.MIRROR_ENV, f"http://127.0.0.1:{httpd.server_port}")
        with pytest.raises(ResnetlabError, match="wrong or damaged"):
            create_model("resnet56", pretrained="cifar10")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not [p for p in hub.weights_dir().rglob("*") if p.is_file()]


def test_offline_without_mirror_or_cache_names_url_cache_and_mirror(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(catalog, "CIFAR_URL_ROOT", f"http://127.0.0.1:{port}/pretrained_models/")
    monkeypatch.setenv("RESNETLAB_DOWNLOAD_RETRIES", "0")
    entry = catalog.get_weights("resnet20", "cifar10")
    with pytest.raises(ResnetlabError) as err:
        create_model("resnet20", pretrained="cifar10")
    message = str(err.value)
    assert entry.url in message
    assert str(hub.weights_dir() / entry.file) in message
    assert hub.MIRROR_ENV in message and "\n" not in message


def test_cli_lists_cifar_weights_and_downloads_from_the_mirror(peer_dir, monkeypatch, capsys):
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if " cifar10 " in line]
    assert [line.split()[0] for line in lines] == list(NAMES)
    assert "91.730" in lines[0] and "akamaster/pytorch_resnet_cifar10" in out
    assert "imagenet-v2" in out
    monkeypatch.setenv(hub.MIRROR_ENV, str(peer_dir))
    assert main(["weights", "resnet56", "--download"]) == 0
    out = capsys.readouterr().out
    assert str(peer_dir / "resnet56-4bfd9763.th") in out
    assert main(["weights", "resnet56"]) == 0
    assert f"mirror: {peer_dir}" in capsys.readouterr().out
