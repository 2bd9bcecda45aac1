"""Fine-tuning options: greyscale handling, class imbalance, early stopping, resume after an
interruption, the lr range test, preprocessing choices and the head/freeze parameter counts."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.data import ImageSet
from resnetlab.finetune import FinetuneOptions, Preprocessing, finetune, prepare_images
from resnetlab.finetune.build import build_model, weights_source
from resnetlab.finetune.options import RENAMED, saved_options
from resnetlab.finetune.prepare import (
    class_counts,
    inverse_frequency,
    open_finetune_data,
    oversample,
    prepare_bundle,
)
from resnetlab.train import Callback, save_checkpoint
from resnetlab.transfer import count_parameters, freeze, replace_head
from resnetlab.weights import load_weights


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_HOME", str(tmp_path / "home"))


def write_npz(path: Path, counts=(24, 8), size: int = 16) -> Path:
    """A MedMNIST-layout file of grey images; brightness gives the class away."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, scale in (("train", 1.0), ("val", 0.5), ("test", 0.5)):
        labels = np.concatenate([np.full(max(2, int(c * scale)), k) for k, c in enumerate(counts)])
        noise = rng.integers(0, 90, (len(labels), size, size))
        arrays[f"{split}_images"] = (noise + 130 * labels[:, None, None]).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


def options(tmp_path: Path, **changes) -> FinetuneOptions:
    values = dict(
        data=str(write_npz(tmp_path / "grey.npz")),
        out_dir=str(tmp_path / "run"),
        model="resnet20",
        pretrained=None,
        full_epochs=2,
        batch_size=8,
        progress=False,
    )
    return FinetuneOptions(**(values | changes))


def test_seed_parameter_counts_of_resnet50_head_and_freeze():
    model = replace_head(create_model("resnet50"), 2, dropout=0.5)
    assert isinstance(model.fc[0], torch.nn.Dropout) and model.fc[1].in_features == 2048
    assert count_parameters(model) == (23_512_130, 23_512_130)
    freeze(model, ["layer1", "layer2"])
    assert count_parameters(model) == (23_512_130, 22_076_738)


def test_preprocessing_upscales_and_matches_channels():
    grey = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    prep = Preprocessing(crop=32, resize=32, mean=[0.5] * 3, std=[0.25] * 3, grey="repeat")
    out = prepare_images(grey, prep)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[:, 0], out[:, 2]), "grey repeated to three equal channels"
    colour = torch.randint(0, 256, (2, 3, 40, 60), dtype=torch.uint8)
    one = Preprocessing(crop=32, resize=36, mean=[0.5], std=[0.25], channels=1, grey="sum")
    assert prepare_images(colour, one).shape == (2, 1, 32, 32)
    with pytest.raises(Exception, match="one per input channel"):
        Preprocessing(crop=32, resize=32, mean=[0.5], std=[0.25], channels=3)


def test_class_weights_and_balanced_sampling():
    assert inverse_frequency({"a": 30, "b": 10}) == pytest.approx([40 / 60, 40 / 20])
    assert inverse_frequency({"a": 5, "b": 5}) == [1.0, 1.0]
    labels = torch.tensor([0] * 7 + [1] * 3)
    train = ImageSet(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), labels, ["a", "b"], "t")
    balanced = oversample(train, seed=0)
    assert torch.bincount(balanced.labels).tolist() == [7, 7]
    assert set(torch.bincount(balanced.labels[balanced.labels == 1]).tolist()) <= {0, 7}


def test_grey_sum_from_a_project_checkpoint_sums_the_stem(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet20", num_classes=10)
    pixel_mean = torch.full((3, 32, 32), 0.25)
    checkpoint = save_checkpoint(
        {
            "model": source.state_dict(),
            "preprocess": {"pixel_mean": pixel_mean, "mean": None, "std": None},
        },
        tmp_path / "best.pt",
    )
    bundle, _ = open_finetune_data(str(write_npz(tmp_path / "g.npz")), 0.1, 0)
    summed, prep, _ = build_model(options(tmp_path, pretrained=str(checkpoint), grey="sum"), bundle)
    assert summed.conv1.weight.shape[1] == 1 and prep.channels == 1 and prep.grey == "sum"
    assert torch.allclose(summed.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    assert prep.crop == 32, "upscaled to the model's nominal size"
    assert prep.mean == pytest.approx([0.25]) and prep.std == [1.0]
    assert torch.equal(summed.layer3[2].conv2.weight, source.layer3[2].conv2.weight)
    repeated, prep3, _ = build_model(options(tmp_path, pretrained=str(tmp_path)), bundle)
    assert prep3.grey == "repeat" and prep3.channels == 3  # auto: repeat with weights
    assert torch.equal(repeated.conv1.weight, source.conv1.weight)
    data = prepare_bundle(bundle, prep3)
    assert data.train.images.shape[1:] == (3, 32, 32)


@pytest.mark.slow
def test_class_weights_reach_the_engine_and_counts_are_printed(tmp_path, capsys):
    result = finetune(options(tmp_path, balanced_loss=True, full_epochs=1))
    out = capsys.readouterr().err  # the choices made are messages, on stderr
    assert "class counts (train): 0 24, 1 8" in out
    config = json.loads((result.run_dir / "phase2-full" / "config.json").read_text())
    assert config["class_weights"] == pytest.approx([32 / 48, 32 / 16])
    card = result.card
    assert card["model"]["in_channels"] == 1 and card["preprocessing"]["grey"] == "sum"
    assert card["training"]["data"]["class_counts"]["train"] == {"0": 24, "1": 8}
    assert "greyscale images: --grey sum" in out


@pytest.mark.slow
def test_early_stopping_ends_the_phase(tmp_path, capsys):
    # a learning rate so small that nothing improves: stop after `patience` epochs
    result = finetune(options(tmp_path, head_lr=1e-12, full_epochs=6, patience=2, monitor="loss"))
    rows = [json.loads(x) for x in (result.run_dir / "val_metrics.jsonl").read_text().splitlines()]
    assert len(rows) < 6 and "early stop" in capsys.readouterr().err
    run = json.loads((result.run_dir / "phase2-full" / "run.json").read_text())
    assert run["status"] == "stopped by a hook"
    assert (result.run_dir / "model.safetensors").is_file()


class _Interrupt(Callback):
    """Press Ctrl-C once, after the given step of phase 2."""

    def __init__(self, step: int) -> None:
        self.step, self.fired = step, False

    def on_step(self, state) -> None:
        if not self.fired and state.out_dir.name == "phase2-full" and state.step == self.step:
            self.fired = True
            signal.raise_signal(signal.SIGINT)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_model_as_an_uninterrupted_one(tmp_path):
    whole = finetune(
        options(tmp_path, full_epochs=3, patience=None, out_dir=str(tmp_path / "whole"))
    )
    first = options(tmp_path, full_epochs=3, patience=None)
    with pytest.raises(KeyboardInterrupt):
        finetune(first, callbacks=[_Interrupt(step=4)])
    run = Path(first.out_dir)
    assert not (run / "model_card.json").exists() and (run / "phase2-full" / "last.pt").is_file()
    result = finetune(FinetuneOptions(data=first.data, out_dir=first.out_dir, resume=True,
                                      progress=False))  # fmt: skip
    rows = [json.loads(x) for x in (run / "val_metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1.0, 2.0, 3.0]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]  # fmt: skip
    assert steps == sorted(set(steps)) and result.card["metrics"]["test"]["n"] == 16
    resumed = load_weights(run / "model.safetensors")
    expected = load_weights(whole.run_dir / "model.safetensors")
    assert all(torch.equal(resumed[k], expected[k]) for k in expected), "same seed, same model"
    assert result.card["metrics"]["test"] == whole.card["metrics"]["test"]


def test_lr_find_sweeps_and_suggests(tmp_path, capsys):
    lr_find = sys.modules["resnetlab.finetune.lr_find"]
    lrs = [1e-5 * 10 ** (i / 10) for i in range(50)]
    losses = [2.0 - math.tanh((i - 20) / 5) for i in range(40)] + [5.0] * 10
    tips = lr_find.suggest(lrs, losses)
    assert tips["steepest"] == pytest.approx(lrs[20], rel=0.3)
    assert lrs[30] / 10 <= tips["min/10"] <= lrs[40] / 10
    data = write_npz(tmp_path / "g.npz")
    out = tmp_path / "sweep"
    argv = [
        "lr-find",
        str(data),
        "--model",
        "resnet20",
        "--pretrained",
        "none",
        "--iters",
        "12",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--no-progress",
        "--end-lr",
        "1",
    ]
    assert main(argv) == 0
    result = json.loads((out / "lr_find.json").read_text())
    assert len(result["lrs"]) == 12 and result["lrs"][0] == pytest.approx(1e-7)
    assert all(1e-7 <= v <= 1 for v in result["suggestions"].values())
    assert (out / "lr_find.png").stat().st_size > 1000 and "suggested lr" in capsys.readouterr().out


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    data = str(write_npz(tmp_path / "g.npz"))
    base = ["finetune", data, "--model", "resnet20", "--pretrained", "none", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a"), "--unfreeze-to", "layer9"]) == 2
    assert "--unfreeze-to 'layer9'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists(), "a refused run leaves no folder behind"
    assert main([*base, "--balanced-loss", "--balanced-sampling"]) == 2
    assert main([*base, "--out", str(tmp_path / "b"), "--resume"]) == 2
    assert "no fine-tuning run to resume" in capsys.readouterr().err


def test_real_pneumoniamnist_counts_and_preprocessing(shared_dir):
    bundle, notes = open_finetune_data(
        str(shared_dir / "data" / "pneumoniamnist-balanced.npz"), 0.1, 0
    )
    assert notes == [] and bundle.classes == ["normal", "pneumonia"]
    counts = class_counts(bundle)
    assert counts["train"] == {"normal": 1214, "pneumonia": 1214}
    assert counts["test"] == {"normal": 234, "pneumonia": 234}
    _, prep, _ = build_model(
        FinetuneOptions(data="x", out_dir="x", model="resnet18", pretrained=None), bundle
    )
    assert (prep.crop, prep.channels, prep.grey) == (28, 1, "sum")


def test_default_weights_and_relative_paths(tmp_path, monkeypatch):
    assert weights_source("auto", "resnet50") == "imagenet"
    assert weights_source("auto", "resnet20") is None  # no published ImageNet weights
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint({"model": {}}, run / "best.pt")
    monkeypatch.chdir(tmp_path)
    assert weights_source("run", "resnet20") == str(run / "best.pt")  # absolute
    assert weights_source("run/best.pt", "resnet20") == str(run / "best.pt")
    assert weights_source("http://host/w.pth", "resnet20") == "http://host/w.pth"


def test_imagenet_weights_metadata_sets_size_and_normalisation(tmp_path):
    from resnetlab.finetune.prepare import choose_preprocessing
    from resnetlab.weights import get_weights

    bundle, _ = open_finetune_data(str(write_npz(tmp_path / "g.npz")), 0.1, 0)
    model = create_model("resnet50", num_classes=2)
    model.pretrained_cfg = get_weights("resnet50", "imagenet").to_cfg()  # as if downloaded
    prep = choose_preprocessing(model, bundle, weights_file=None, pretrained=True, channels=1,
                                grey="sum", image_size=None)  # fmt: skip
    assert (prep.crop, prep.resize) == (224, 224), "16-px images upscaled whole to the crop size"
    assert prep.mean == pytest.approx([sum([0.485, 0.456, 0.406]) / 3])
    assert any("weights' metadata: resize 232, crop 224" in n for n in prep.notes)
    smaller = choose_preprocessing(model, bundle, weights_file=None, pretrained=True,
                                   channels=3, grey="repeat", image_size=64)  # fmt: skip
    assert (smaller.crop, smaller.channels, len(smaller.std)) == (64, 3, 3)


def _finished_cv_folder(root: Path, data: Path) -> str:
    """A cross-validation folder as a finished ``--folds 2`` run leaves it (seed 0)."""
    saved = FinetuneOptions(data=str(data), out_dir=str(root), folds=2, model="resnet20",
                            pretrained=None, progress=False)  # fmt: skip
    for k in (1, 2):
        (root / f"fold-{k}").mkdir(parents=True)
        (root / f"fold-{k}" / "model_card.json").write_text("{}")
    text = json.dumps(dataclasses.asdict(saved))
    (root / "config.json").write_text(text)
    return text


def test_a_cross_validation_folder_is_new_or_resumed_with_its_own_settings(tmp_path, capsys):
    first, other = write_npz(tmp_path / "a.npz"), write_npz(tmp_path / "b.npz", counts=(8, 24))
    root = tmp_path / "cv"
    saved = _finished_cv_folder(root, first)
    base = ["finetune", "--model", "resnet20", "--pretrained", "none", "--folds", "2",
            "--out", str(root), "--no-progress"]  # fmt: skip
    assert main([*base, str(other), "--seed", "7"]) == 2
    assert "run folder" in (err := capsys.readouterr().err) and "pass --resume" in err
    assert main([*base, str(other), "--resume"]) == 2
    assert "resume: data is" in capsys.readouterr().err
    assert main([*base, str(first), "--seed", "7", "--resume"]) == 2
    assert "resume: seed is 7 but the run" in capsys.readouterr().err
    assert (root / "config.json").read_text() == saved, "the folder's settings are untouched"
    assert not (root / "run.json").exists()


@pytest.mark.parametrize(
    ("old", "new"),
    [("--lr", "--head-lr"), ("--epochs", "--full-epochs"), ("--class-weights", "--balanced-loss"),
     ("--no-class-weights", "--balanced-loss")],
)  # fmt: skip
def test_a_renamed_finetune_flag_names_the_new_one(old, new, capsys):
    for command in ("finetune", "lr-find"):
        with pytest.raises(SystemExit) as code:
            main([command, "data.npz", old, *(["0.5"] if "class" not in old else [])])
        err = capsys.readouterr().err.strip()
        assert code.value.code == 2 and len(err.splitlines()) == 1
        assert f"{old} is now {new} (" in err


def test_an_older_runs_settings_are_read_with_the_new_names(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    values = dataclasses.asdict(FinetuneOptions(data="d", out_dir=str(run)))
    for old, new in RENAMED.items():
        values[old] = values.pop(new)
    values |= {"lr": 0.02, "epochs": 3.0, "class_weights": True}
    (run / "config.json").write_text(json.dumps(values))
    options = FinetuneOptions(**saved_options(run))
    assert (options.head_lr, options.full_epochs, options.balanced_loss) == (0.02, 3.0, True)
