"""The one loader (``resnetlab.artifact.load_trained``): older run folders of both kinds still
open, a card that disagrees with its weights and a code-running checkpoint are one line, and
the decision rule and preprocessing are the card's."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab import create_model
from resnetlab.artifact import decide, is_positive, load_trained
from resnetlab.card import build_from_card, write_card
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.preprocessing import Preprocessing, resize_for
from resnetlab.weights import save_weights

CLASSES = ["a", "b", "c"]


def picture(path: Path, seed: int, size=(40, 30)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3)).astype(np.uint8)).save(path)
    return path


def pixels(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None]


def old_train_run(folder: Path, norm: dict) -> torch.nn.Module:
    """A ``resnetlab train`` folder as written before runs ended with a card."""
    torch.manual_seed(3)
    model = create_model("resnet20", num_classes=3).eval()
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model": "resnet20", "model_options": {}}))
    torch.save({"model": model.state_dict(), "classes": CLASSES, "preprocess": norm, "step": 7},
               folder / "best.pt")  # fmt: skip
    return model


def test_an_old_train_folder_opens_with_its_per_pixel_mean(tmp_path):
    mean = torch.rand(3, 32, 32)
    model = old_train_run(tmp_path / "old", {"pixel_mean": mean, "mean": None, "std": None})
    trained = load_trained(tmp_path / "old")
    assert trained.classes == CLASSES and trained.preprocessing.crop == 32
    assert trained.label == "resnet20 (old)" and trained.threshold is None
    image = pixels(picture(tmp_path / "x.png", 0, (32, 32)))
    with torch.no_grad():
        expected = torch.softmax(model(image.float() / 255 - mean), 1)
        got = trained.probabilities(trained.model(trained.inputs(image)))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_an_old_finetune_folder_opens(tmp_path):
    """model_card.json + model.safetensors, with a temperature and a two-class threshold."""
    prep = Preprocessing(32, 36, [0.5] * 3, [0.25] * 3)
    card = {"model": {"name": "resnet20", "in_channels": 3, "options": {}, "head_dropout": 0.0},
            "classes": ["no", "yes"], "preprocessing": prep.to_dict(),
            "calibration": {"temperature": 2.0}, "operating_point": {"threshold": 0.9}}  # fmt: skip
    torch.manual_seed(0)
    model = build_from_card(card).eval()
    (tmp_path / "ft").mkdir()
    save_weights(model, tmp_path / "ft" / "model.safetensors")
    write_card(tmp_path / "ft", card)
    trained = load_trained(tmp_path / "ft")
    image = pixels(picture(tmp_path / "x.png", 1))
    with torch.no_grad():
        x = trained.inputs(image)
        expected = torch.softmax(model(x) / 2.0, 1)
        got = trained.probabilities(trained.model(x))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert trained.decide(got).tolist() == [int(expected[0, 1] >= 0.9)]
    assert trained.rule() == "yes when its probability >= 0.9000"
    with pytest.raises(ResnetlabError, match="brings its own weights; drop --pretrained"):
        load_trained(tmp_path / "ft", pretrained="imagenet")


def test_the_decision_rule_and_the_resize_rule_are_written_once():
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    assert decide(probs, 0.3).tolist() == [1, 1, 1] and decide(probs, 0.81).tolist() == [0, 0, 0]
    assert decide(probs, None).tolist() == [0, 1, 0]
    three = torch.tensor([[0.1, 0.2, 0.7]])
    assert decide(three, 0.05).tolist() == [2]  # a threshold is for two classes only
    assert resize_for(224) == 256 and resize_for(384) == 439 and resize_for(32) == 32


def card_folder(tmp_path: Path, classes: list[str], mean: list[float], channels=3) -> Path:
    prep = {"crop": 32, "resize": 32, "mean": mean, "std": [0.25] * len(mean),
            "channels": channels}  # fmt: skip
    card = {"model": {"name": "resnet20", "in_channels": 3, "options": {}},
            "classes": ["x", "y"], "preprocessing": prep}  # fmt: skip
    folder = tmp_path / "run"
    folder.mkdir()
    save_weights(build_from_card(card), folder / "model.safetensors")
    write_card(folder, card | {"classes": classes})
    return folder


@pytest.mark.parametrize(
    ("classes", "mean", "channels", "message"),
    [
        (["x", "y", "z"], [0.5] * 3, 3, r"classes lists 3 class names but the weights' head"),
        (["x"], [0.5] * 3, 3, r"classes lists 1 class names but the weights' head has 2"),
        (["x", "y"], [0.5, 0.5], 3, r"preprocessing: mean/std need 3 values"),
        (["x", "y"], [0.5], 1, r"preprocessing.channels is 1 but the weights take 3"),
    ],
)
def test_a_card_that_disagrees_with_its_weights_is_one_line(
    tmp_path, capsys, classes, mean, channels, message
):
    folder = card_folder(tmp_path, classes, mean, channels)
    with pytest.raises(ResnetlabError, match=message):
        load_trained(folder)
    picture(tmp_path / "x.png", 0)
    for argv in (["predict", str(folder), str(tmp_path / "x.png")],
                 ["export", str(folder), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
                 ["explain", str(folder), str(tmp_path / "x.png"), "--out", str(tmp_path / "m")],
                 ["serve", str(folder)]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "model_card.json" in err, err
    assert not (tmp_path / "m.onnx").exists()


def toy_npz(path: Path) -> Path:
    """A tiny in-memory data set for the studies (CIFAR-shaped)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(12) % 2
    np.savez(path, train_images=images, train_labels=labels, test_images=images,
             test_labels=labels)  # fmt: skip
    return path


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_code_running_checkpoint_in_a_train_folder_is_one_line(tmp_path, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model": "resnet20"}))
    torch.save({"model": Evil()}, folder / "best.pt")
    for argv in (["serve", str(folder)], ["predict", str(folder), str(folder)],
                 ["lesion", str(folder), "--data", str(toy_npz(tmp_path / "toy.npz")), "--out",
                  str(tmp_path / "l")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "best.pt" in err, err
        assert "Traceback" not in err and "UnpicklingError" not in err


def test_a_train_folder_whose_config_names_no_model_is_one_line(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    data = toy_npz(tmp_path / "toy.npz")
    assert main(["lesion", str(folder), "--data", str(data), "--out", str(tmp_path / "l")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "names no model (key 'model')" in err, err
    with pytest.raises(ResnetlabError, match="holds no model_card.json or config.json"):
        load_trained(tmp_path)


def predictions(folder: Path, labels: list[int], digests: list[str] | None) -> Path:
    folder.mkdir()
    with (folder / "predictions_test.csv").open("w", newline="") as handle:
        fields = ["index", "label", "probability"] + (["image_sha256"] if digests else [])
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        for i, label in enumerate(labels):
            row = {"index": i, "label": label, "probability": 0.3 + 0.1 * i * label}
            writer.writerow(row | ({"image_sha256": digests[i]} if digests else {}))
    return folder


def test_compare_runs_needs_the_same_test_images(tmp_path, capsys):
    labels = [0, 1, 0, 1, 1, 0]
    same = [f"{i:064x}" for i in range(6)]
    a = predictions(tmp_path / "a", labels, same)
    b = predictions(tmp_path / "b", labels, same)
    assert main(["compare-runs", str(a), str(b)]) == 0
    capsys.readouterr()
    other = predictions(tmp_path / "c", labels, [f"{i + 1:064x}" for i in range(6)])
    assert main(["compare-runs", str(a), str(other)]) == 2  # same labels, other images
    assert "test images differ (their content hashes)" in capsys.readouterr().err
    old = predictions(tmp_path / "old", labels, None)
    assert main(["compare-runs", str(a), str(old)]) == 2
    err = capsys.readouterr().err
    assert "records no image hashes" in err and f"resnetlab evaluate {old} DATA --out" in err


def test_the_two_class_rule_is_one_function_for_numbers_arrays_and_tensors() -> None:
    """``p1 >= threshold``, written once: the decision, the rates and the CSVs all read it."""
    assert is_positive(0.3, 0.3) and not is_positive(0.2999, 0.3)
    assert is_positive(np.array([0.1, 0.5]), 0.5).tolist() == [False, True]
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    assert decide(probs, 0.3).tolist() == [1, 1] and decide(probs, None).tolist() == [0, 1]
