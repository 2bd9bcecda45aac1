"""Checkpoint files, the strict loader, hostile files, and the catalog against torchvision."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.weights import (
    catalog,
    list_weights,
    load_checkpoint,
    load_state_dict_strict,
    load_weights,
    normalise_state_dict,
    save_weights,
)

TV_ENUMS = {
    "resnet18": tvm.ResNet18_Weights, "resnet34": tvm.ResNet34_Weights,
    "resnet50": tvm.ResNet50_Weights, "resnet101": tvm.ResNet101_Weights,
    "resnet152": tvm.ResNet152_Weights, "wide_resnet50_2": tvm.Wide_ResNet50_2_Weights,
    "resnext50_32x4d": tvm.ResNeXt50_32X4D_Weights,
    **{f"vgg{d}{bn}": getattr(tvm, f"VGG{d}{bn.upper()}_Weights")
       for d in (11, 13, 16, 19) for bn in ("", "_bn")},
}  # fmt: skip


@pytest.fixture(scope="module")
def r20() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    with torch.no_grad():  # non-trivial BN statistics, so a lost buffer would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def outputs(model: torch.nn.Module, channels: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.randn(4, channels, 32, 32))


# --- catalog ---------------------------------------------------------------------------------


def test_catalog_matches_installed_torchvision():
    seen = set()
    for model, enum in TV_ENUMS.items():
        for weights in enum:
            if weights.name == "IMAGENET1K_FEATURES":  # vgg16 detection trunk: no classifier
                continue
            version = int(weights.name[-1])
            entry = catalog.get_weights(model, f"imagenet-v{version}")
            seen.add((entry.model, entry.tag))
            meta = weights.meta
            assert entry.url == weights.url
            assert entry.num_params == meta["num_params"]
            assert entry.acc1 == meta["_metrics"]["ImageNet-1K"]["acc@1"]
            assert entry.acc5 == meta["_metrics"]["ImageNet-1K"]["acc@5"]
            assert entry.file_size_mb == meta["_file_size"]
            assert entry.default == (weights is enum.DEFAULT)
            transform = weights.transforms()
            prep = entry.preprocessing
            assert [prep.resize] == list(transform.resize_size)
            assert [prep.crop] == list(transform.crop_size)
            assert list(prep.mean) == list(transform.mean)
            assert list(prep.std) == list(transform.std)
            assert prep.interpolation == transform.interpolation.value
        assert catalog.get_weights(model, "imagenet").url == enum.DEFAULT.url
    assert seen == {(e.model, e.tag) for e in catalog.CATALOG if not e.cifar}


def test_catalog_parameter_counts_match_the_models():
    with torch.device("meta"):
        for name in ("resnet50", "wide_resnet50_2", "resnext50_32x4d", "vgg16_bn"):
            model = create_model(name)
            assert sum(p.numel() for p in model.parameters()) == list_weights(name)[0].num_params


def test_torchvision_state_dicts_fit_every_catalog_model():
    for name in {e.model for e in catalog.CATALOG if not e.cifar}:
        with torch.device("meta"):
            ours = create_model(name).state_dict()
            theirs = getattr(tvm, name)().state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d"])
def test_torchvision_weights_give_torchvision_outputs(name):
    torch.manual_seed(0)
    reference = getattr(tvm, name)().eval()
    model = create_model(name)
    load_state_dict_strict(model, reference.state_dict())
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), reference(x), atol=1e-5)


def test_catalog_classes_come_from_torchvision():
    classes = catalog.get_weights("resnet50").to_cfg()["classes"]
    assert len(classes) == 1000 and classes[0] == "tench"
    assert classes == tvm.ResNet50_Weights.DEFAULT.meta["categories"]


def test_unknown_tags_and_models_without_weights_list_what_exists():
    with pytest.raises(ResnetlabError, match="imagenet-v1"):
        catalog.get_weights("resnet18", "imagenet-v2")
    with pytest.raises(ResnetlabError, match="resnet50"):
        create_model("resnet110", pretrained=True)
    with pytest.raises(ResnetlabError, match="cifar10"):
        create_model("resnet20", pretrained="imagenet")
    assert catalog.get_weights("resnet50", "IMAGENET1K_V1").tag == "imagenet-v1"
    assert catalog.get_weights("resnet50", None).tag == "imagenet-v2"  # torchvision's DEFAULT
    assert catalog.get_weights("resnet50", "DEFAULT").tag == "imagenet-v2"


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_save_and_load_round_trip_gives_identical_outputs(tmp_path, r20, suffix):
    path = save_weights(r20, tmp_path / f"w{suffix}", metadata={"epoch": 3, "note": "x"})
    state = load_weights(path)
    assert state.keys() == r20.state_dict().keys()
    loaded = create_model("resnet20", pretrained=path)
    assert torch.equal(outputs(loaded), outputs(r20))
    assert loaded.pretrained_cfg["epoch"] == 3 and loaded.pretrained_cfg["model"] == "resnet20"
    assert [p.name for p in tmp_path.iterdir()] == [f"w{suffix}"]


def test_relative_paths_load(tmp_path, r20, monkeypatch):
    save_weights(r20, tmp_path / "w.pth")
    monkeypatch.chdir(tmp_path)
    loaded = create_model("resnet20", pretrained="w.pth")
    assert torch.equal(outputs(loaded), outputs(r20))
    assert loaded.pretrained_cfg["url"] == (tmp_path / "w.pth").resolve().as_uri()


def test_classes_and_preprocessing_travel_through_files(tmp_path, r20):
    model = create_model("resnet20", pretrained=save_weights(r20, tmp_path / "a.pth"))
    model.pretrained_cfg |= {"classes": list("abcdefghij"), "preprocessing": {"crop": 32}}
    path = save_weights(model, tmp_path / "b.safetensors")
    cfg = create_model("resnet20", pretrained=path).pretrained_cfg
    assert cfg["classes"] == list("abcdefghij") and cfg["preprocessing"] == {"crop": 32}
    assert cfg["url"] == path.as_uri() and cfg["tag"] is None


def test_torch_to_safetensors_to_model(tmp_path, r20):
    first = save_weights(r20, tmp_path / "a.pth")
    second = save_weights(load_weights(first), tmp_path / "b.safetensors")
    model = create_model("resnet20")
    load_state_dict_strict(model, load_weights(second))
    assert torch.equal(outputs(model), outputs(r20))


def test_safetensors_accepts_shared_and_non_contiguous_tensors(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    state = {"a": base, "b": base, "t": base.t(), "view": base[1]}
    path = save_weights(state, tmp_path / "s.safetensors")
    loaded = load_weights(path)
    for key, value in state.items():
        assert torch.equal(loaded[key], value)


def test_failed_save_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch, r20):
    path = save_weights(r20, tmp_path / "w.pth")
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_weights(r20, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.pth"]


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state"])
def test_nested_checkpoints_are_found(tmp_path, r20, key):
    torch.save({key: r20.state_dict(), "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "c.pt")
    assert torch.equal(
        outputs(create_model("resnet20", pretrained=tmp_path / "c.pt")), outputs(r20)
    )


def test_ema_weights_can_be_chosen(tmp_path, r20):
    ema = {f"module.{k}": v + 1 for k, v in r20.state_dict().items() if v.is_floating_point()}
    ema["n_averaged"] = torch.tensor(5)
    torch.save({"state_dict": r20.state_dict(), "ema": ema}, tmp_path / "c.pt")
    state = normalise_state_dict(load_weights(tmp_path / "c.pt", key="ema"))
    assert "n_averaged" not in state
    assert torch.equal(state["conv1.weight"], r20.conv1.weight + 1)


# --- normaliser and strict loading ----------------------------------------------------------


def test_normaliser_strips_wrappers_and_renames_linear(r20):
    state = r20.state_dict()
    wrapped = {f"module._orig_mod.{k.replace('fc.', 'linear.')}": v for k, v in state.items()}
    assert "module._orig_mod.linear.weight" in wrapped
    assert normalise_state_dict(wrapped, create_model("resnet20")).keys() == state.keys()


def test_mismatch_names_missing_unexpected_and_shapes(r20):
    state = dict(r20.state_dict())
    state.pop("layer1.0.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    state["layer2.0.conv1.weight"] = torch.zeros(32, 16, 5, 5)
    with pytest.raises(ResnetlabError) as err:
        load_state_dict_strict(create_model("resnet20"), state)
    message = str(err.value)
    assert "missing (1): layer1.0.conv1.weight" in message
    assert "unexpected (1): extra.weight" in message
    assert "layer2.0.conv1.weight (32, 16, 5, 5) vs model (32, 16, 3, 3)" in message


def test_long_mismatch_lists_are_abbreviated(r20, tmp_path):
    path = save_weights(r20, tmp_path / "r20.pth")
    with pytest.raises(ResnetlabError, match=r"missing \(60\): .* and 55 more") as err:
        create_model("resnet32", pretrained=path)
    assert "r20.pth" in str(err.value) and "\n" not in str(err.value)


def test_other_num_classes_keeps_backbone_and_fresh_head(r20, tmp_path, caplog):
    path = save_weights(r20, tmp_path / "r20.pth")
    torch.manual_seed(5)
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        model = create_model("resnet20", num_classes=2, pretrained=path)
    assert [r.getMessage() for r in caplog.records if "head" in r.getMessage()] == [
        "r20.pth: the weights have 10 classes, the model 2; loaded the backbone and kept "
        "the model's newly initialised head."
    ]
    assert model.fc.out_features == 2
    assert torch.equal(model.layer3[2].conv2.weight, r20.layer3[2].conv2.weight)
    assert model.pretrained_cfg["head"] == "new" and model.pretrained_cfg["classes"] is None


def test_default_num_classes_follows_the_weights(tmp_path):
    source = create_model("resnet20", num_classes=100)
    path = save_weights(source, tmp_path / "c100.pth")
    model = create_model("resnet20", pretrained=path)
    assert model.fc.out_features == 100
    assert torch.equal(outputs(model), outputs(source))


def test_greyscale_model_sums_the_stem_once(r20, tmp_path, caplog):
    path = save_weights(r20, tmp_path / "r20.pth")
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        model = create_model("resnet20", in_channels=1, pretrained=path)
    assert sum("summed" in r.getMessage() for r in caplog.records) == 1
    assert torch.allclose(model.conv1.weight, r20.conv1.weight.sum(dim=1, keepdim=True))
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(grey), r20(grey.expand(-1, 3, -1, -1)), atol=1e-5)


# --- hostile, broken and missing files -------------------------------------------------------


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(ResnetlabError, match="pickled code") as err:
        load_weights(path)
    assert str(path) in str(err.value) and "system" in str(err.value)
    with pytest.raises(ResnetlabError, match="refused"):
        create_model("resnet20", pretrained=path)
    assert not marker.exists()


class Custom:
    pass


def test_custom_classes_are_refused(tmp_path):
    torch.save({"model": Custom()}, tmp_path / "custom.pt")
    with pytest.raises(ResnetlabError, match="refused"):
        load_checkpoint(tmp_path / "custom.pt")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_names_the_file(tmp_path, r20, suffix):
    path = save_weights(r20, tmp_path / f"w{suffix}")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ResnetlabError, match="truncated or corrupt") as err:
        load_weights(path)
    assert str(path) in str(err.value)


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ResnetlabError, match="junk.pt"):
        load_weights(tmp_path / "junk.pt")
    with pytest.raises(ResnetlabError, match="does not exist"):
        load_weights(tmp_path / "nope.pt")
    with pytest.raises(ResnetlabError, match="not found"):
        create_model("resnet20", pretrained=str(tmp_path / "nope.pt"))


# --- CLI ------------------------------------------------------------------------------------


def test_cli_weights_lists_all_and_one_model(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert out.count("imagenet-v") == sum(not e.cifar for e in catalog.CATALOG)
    assert "vgg19_bn" in out and "74.218" in out and "torchvision weights metadata" in out
    cached = tmp_path / "weights" / "resnet50-0676ba61.pth"
    cached.parent.mkdir()
    cached.write_bytes(b"")  # wrong hash: must not be reported as cached
    assert main(["weights", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert "80.858" in out and "resnet18" not in out and str(cached) not in out


def test_cli_errors_exit_2_with_one_line(capsys):
    assert main(["weights", "resnet110"]) == 2
    assert "no named weights" in capsys.readouterr().err
    assert main(["weights", "resnet5O"]) == 2
    assert "resnet50" in capsys.readouterr().err
    assert main(["export", "/no/such.pth", "--format", "onnx", "--out", "x.onnx"]) == 2
    assert "neither a model name nor a checkpoint" in capsys.readouterr().err
