"""``hubconf.py``: torch.hub lists every registered model and loads them from a checkout.

``torch.hub.list`` and ``torch.hub.help`` take no ``source`` in torch 2.x (they always resolve a
GitHub repo into the hub cache); here that resolution is pointed at this checkout, so the real
listing code runs without a network. Named weights come from a pre-filled ``$RESNETLAB_HOME``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnetlab import download as download_module
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model, list_models
from resnetlab.weights import catalog, hub

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def local_hub(monkeypatch):
    """torch.hub's GitHub resolution pointed at this checkout (no network, no hub cache)."""
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: str(REPO))


def _no_network(*args, **kwargs):
    raise AssertionError("the test must not download anything")


def test_hub_lists_one_entry_point_per_registered_model(local_hub) -> None:
    entries = torch.hub.list(str(REPO))
    assert entries == sorted(list_models())
    assert "resnet56" in entries and "resnet50d" in entries and "dependencies" not in entries
    text = torch.hub.help(str(REPO), "resnet50d")
    assert text.startswith("ResNet-50-D") and "avg_down" in text


def test_hub_loads_named_cifar10_weights_from_the_cache(
    shared_dir, home, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    entry = catalog.get_weights("resnet56", "cifar10")
    weights = home / "weights"
    weights.mkdir(parents=True)
    shutil.copy(shared_dir / "peer" / "cifar-resnets" / entry.file, weights / entry.file)
    monkeypatch.delenv(hub.MIRROR_ENV, raising=False)
    monkeypatch.setattr(download_module, "download", _no_network)
    monkeypatch.setattr(hub, "download", _no_network)
    model = torch.hub.load(str(REPO), "resnet56", source="local", pretrained="cifar10").eval()
    assert model.pretrained_cfg["tag"] == "cifar10" and model.info.name == "resnet56"
    direct = create_model("resnet56", pretrained=str(weights / entry.file)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), direct(x))


def test_hub_entry_points_take_the_models_options(local_hub) -> None:
    model = torch.hub.load(str(REPO), "resnet18d", source="local", num_classes=3, in_channels=1)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)
    with pytest.raises(ResnetlabError, match="has no option 'colour'"):
        torch.hub.load(str(REPO), "resnet20", source="local", colour="blue")


@pytest.mark.slow
def test_hubconf_works_from_a_checkout_without_install(tmp_path) -> None:
    """A fresh interpreter without PYTHONPATH imports this checkout's ``src``, not an install."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        "import torch\n"
        f"m = torch.hub.load({str(REPO)!r}, 'resnet20', source='local')\n"
        "import resnetlab\n"
        "print(resnetlab.__file__, type(m).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    path, cls = result.stdout.split()
    assert Path(path).resolve().is_relative_to(REPO / "src") and cls == "CifarResNet"
