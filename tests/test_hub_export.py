"""``export RUN --format hub`` and self-describing ONNX, on a real (tiny) fine-tuning run: the
folder loads back through ``create_model``, ``predict`` and a fake HF cache (``hf-hub:``); its
README's front matter reads with huggingface_hub's own parser; an ONNX graph with the
preprocessing inside gives ``predict``'s probabilities for a PNG decoded and resized by PIL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from huggingface_hub import metadata_load
from PIL import Image

from resnetlab import create_model
from resnetlab.artifact import load_trained as load_model
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.export import read_metadata
from test_hf_hub import fill_cache

pytestmark = pytest.mark.slow  # one fine-tuning run for the module
CLASSES = ("normal", "pneumonia")


def write_images(root: Path, per_class: int = 24, size: int = 40) -> Path:
    """``root/<class>/<k>.png``, the second class brighter (so the run learns something)."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            pixels = (rng.integers(0, 90, (size, size + 8, 3)) + 120 * label).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hubexport")
    data = write_images(root / "data")
    out = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETLAB_HOME", str(root / "home"))
        argv = ["finetune", str(data), "--model", "resnet20", "--pretrained", "none",
                "--full-epochs", "1", "--batch-size", "8", "--head-dropout", "0.2", "--image-size",
                "32", "--val-size", "0.25", "--test-size", "0.25", "--out", str(out),
                "--no-progress"]  # fmt: skip
        assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "pneumonia-resnet20"
    assert main(["export", str(run), "--format", "hub", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(60, 250, (57, 71, 3)).astype(np.uint8)).save(path)
    return path


def logits(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def predict_json(source: Path, image: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["predict", str(source), str(image), "--json"]) == 0
    return json.loads(capsys.readouterr().out)[0]


def test_hub_folder_holds_what_the_run_knows(run, exported):
    card = load_model(run).card
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "model_card.json"]  # fmt: skip
    config = json.loads((exported / "config.json").read_text())
    assert config["architecture"] == "resnet20" and config["library_name"] == "resnetlab"
    assert config["label_names"] == list(CLASSES) == card["classes"]
    assert config["num_classes"] == 2 and config["source_run"] == run.name
    for key in ("resize", "crop", "mean", "std", "interpolation"):
        assert config["preprocessing"][key] == card["preprocessing"][key]
    assert config["temperature"] == card["calibration"]["temperature"]
    assert config["threshold"] == card["operating_point"]["threshold"]
    assert config["positive_class"] == "pneumonia" and config["license"] == "unknown"


def test_create_model_and_predict_load_the_folder_back(run, exported, image, capsys):
    trained = load_model(run).model
    model = create_model("resnet20", pretrained=exported)
    assert model.pretrained_cfg["classes"] == list(CLASSES)
    assert model.pretrained_cfg["temperature"] == load_model(run).card["calibration"]["temperature"]
    assert torch.allclose(logits(model), logits(trained), atol=1e-6)
    assert predict_json(exported, image, capsys) == predict_json(run, image, capsys)


def test_a_pushed_copy_loads_through_hf_hub(run, exported, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fill_cache(tmp_path / "hf", "someone/pneumonia-resnet20", exported)
    model = create_model("resnet20", pretrained="hf-hub:someone/pneumonia-resnet20")
    assert model.pretrained_cfg["hub"] == "someone/pneumonia-resnet20"
    assert torch.allclose(logits(model, 1), logits(load_model(run).model, 1), atol=1e-6)


def test_a_card_or_config_with_three_names_for_two_outputs_is_one_line(
    exported, image, tmp_path, capsys
):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"label_names": ["a", "b", "c"]}))
    with pytest.raises(ResnetlabError, match="label_names gives 3 class names but the weights' "
                       "head has 2 outputs"):  # fmt: skip
        create_model("resnet20", pretrained=copy)
    card = json.loads((copy / "model_card.json").read_text())
    (copy / "model_card.json").write_text(json.dumps(card | {"classes": ["a", "b", "c"]}))
    capsys.readouterr()
    assert main(["predict", str(copy), str(image), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lists 3 class names but the weights' head has 2 outputs" in err


def test_readme_front_matter_reads_as_the_hub_reads_it(run, exported):
    card = load_model(run).card
    meta = metadata_load(exported / "README.md")
    assert meta["license"] == "unknown" and meta["library_name"] == "resnetlab"
    assert {"resnetlab", "resnet20", "image-classification"} <= set(meta["tags"])
    results = meta["model-index"][0]["results"]
    # by split, each metric by its name's first word(s): "accuracy (test)", "accuracy at ..."
    by_split = {r["dataset"]["split"]: {m["name"].split(" (")[0]: m for m in r["metrics"]}
                for r in results}  # fmt: skip
    assert set(by_split) == {"val", "test"}
    for split, metrics in by_split.items():
        assert metrics["accuracy"]["value"] == pytest.approx(card["metrics"][split]["accuracy"])
    at = card["clinical"]["test"]["at_threshold"]
    ci = at["ci95"]["roc_auc"]
    assert f"95% CI {ci['low']:.4f}-{ci['high']:.4f}" in by_split["test"]["ROC-AUC"]["name"]
    sens = by_split["test"][f"sensitivity at threshold {at['threshold']:.4g}"]
    assert sens["value"] == pytest.approx(at["sensitivity"]) and "95% CI" in sens["name"]
    text = (exported / "README.md").read_text()
    assert all(line in text for line in card["summary"])


def test_refuses_a_foreign_non_empty_folder_and_overwrites_an_export(run, exported, tmp_path,
                                                                      capsys):  # fmt: skip
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["export", str(run), "--format", "hub", "--out", str(foreign)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not empty" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in foreign.iterdir()) == ["todo.txt"]
    args = ["export", str(run), "--format", "hub", "--out", str(exported), "--license", "mit"]
    assert main(args) == 0
    assert json.loads((exported / "config.json").read_text())["license"] == "mit"
    assert metadata_load(exported / "README.md")["license"] == "mit"


@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_onnx_with_preprocessing_gives_predicts_probabilities(run, image, tmp_path, kind,
                                                              capsys):  # fmt: skip
    out = tmp_path / "model.onnx"
    args = ["export", str(run), "--format", "onnx", "--out", str(out), "--license", "mit"]
    assert main([*args, "--with-preprocessing", kind]) == 0
    card = load_model(run).card
    crop = card["preprocessing"]["crop"]
    resized = tmp_path / "resized.png"
    Image.open(image).convert("RGB").resize((crop, crop), Image.BILINEAR).save(resized)
    pixels = np.asarray(Image.open(resized).convert("RGB")).transpose(2, 0, 1)[None]
    feed = pixels if kind == "uint8" else (pixels / 255.0).astype(np.float32)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == "probabilities"
    (probs,) = session.run(None, {"input": np.ascontiguousarray(feed)})
    row = predict_json(run, resized, capsys)
    expected = {t["class"]: t["probability"] for t in row["top"]}
    got = dict(zip(card["classes"], probs[0].tolist(), strict=True))
    assert got == pytest.approx(expected, abs=1e-4)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert json.loads(meta["input_size"]) == [3, crop, crop]
    assert json.loads(meta["mean"]) == card["preprocessing"]["mean"]
    assert json.loads(meta["std"]) == card["preprocessing"]["std"]
    assert meta["architecture"] == "resnet20" and meta["source_run"] == run.name
    assert json.loads(meta["temperature"]) == card["calibration"]["temperature"]
    assert json.loads(meta["threshold"]) == card["operating_point"]["threshold"]
    assert meta["license"] == "mit" and "probabilities" in meta["io"]


def test_plain_onnx_and_torchscript_carry_the_metadata(run, tmp_path):
    for fmt, name in (("onnx", "m.onnx"), ("torchscript", "m.pt")):
        assert main(["export", str(run), "--format", fmt, "--out", str(tmp_path / name)]) == 0
        meta = read_metadata(tmp_path / name)
        assert json.loads(meta["classes"]) == list(CLASSES)
        assert "logits over the temperature" in meta["io"]


def test_preprocessing_needs_a_normalisation_and_hub_needs_a_run(tmp_path, capsys):
    out = str(tmp_path / "m.onnx")
    assert main(["export", "resnet20", "--format", "onnx", "--out", out,
                 "--with-preprocessing"]) == 2  # fmt: skip
    assert "needs the model's normalisation" in capsys.readouterr().err
    assert main(["export", "resnet20", "--format", "hub", "--out", str(tmp_path / "h")]) == 2
    assert "fine-tuning run folder" in capsys.readouterr().err
