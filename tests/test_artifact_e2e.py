"""One ``resnetlab train`` run and one ``finetune`` run, each through predict, evaluate, explain,
export (ONNX and Hub) and serve: every path gives the same probabilities, because every path
loads the run's one artefact (``model.safetensors`` + ``model_card.json``) the same way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from resnetlab import create_model
from resnetlab.artifact import load_trained
from resnetlab.cli import main
from resnetlab.data.preprocess import load_image
from resnetlab.serve import load_served
from resnetlab.serve.app import create_app
from resnetlab.weights import load_checkpoint, load_weights

pytestmark = pytest.mark.slow  # a train and a finetune run through the CLI

CLASSES = ("cat", "dog")
TOLERANCE = 1e-5


def write_folder(root: Path, per_class=(("train", 10), ("test", 4))) -> Path:
    rng = np.random.default_rng(0)
    for split, n in per_class:
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = (rng.integers(0, 90, (32, 32, 3)) + 130 * label).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A private RESNETLAB_HOME (the data cache) for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETLAB_HOME", str(tmp_path_factory.mktemp("home")))
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory, home):
    """(data, {"train": folder, "finetune": folder}), both made through the CLI."""
    root = tmp_path_factory.mktemp("artefact")
    data = write_folder(root / "data")
    argv = {
        "train": ["train", "--data", str(data), "--model", "resnet20", "--max-iters", "4",
                  "--batch-size", "8", "--eval-every", "2", "--val-size", "4",
                  "--num-workers", "0", "--device", "cpu", "--no-progress"],
        "finetune": ["finetune", str(data), "--model", "resnet20", "--pretrained", "none",
                     "--full-epochs", "1", "--batch-size", "8", "--no-progress"],
    }  # fmt: skip
    for kind, args in argv.items():
        assert main([*args, "--out", str(root / kind)]) == 0
    return data, {kind: root / kind for kind in argv}


def image_of(data: Path) -> Path:
    return data / "test" / "dog" / "1.png"


def predicted(source: Path, image: Path, capsys) -> list[float]:
    capsys.readouterr()
    assert main(["predict", str(source), str(image), "--json", "--top-k", "2"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    return [p for _, p in sorted((t["class"], t["probability"]) for t in row["top"])]


@pytest.mark.parametrize("kind", ["train", "finetune"])
def test_every_run_ends_with_the_same_artefact(runs, kind):
    _, folders = runs
    run = folders[kind]
    card = json.loads((run / "model_card.json").read_text())
    assert card["classes"] == list(CLASSES) and card["model"]["name"] == "resnet20"
    for key in ("preprocessing", "calibration", "training", "metrics"):
        assert key in card, key
    if kind == "train":  # the weights of best.pt (else last.pt), once
        source = "best.pt" if (run / "best.pt").is_file() else "last.pt"
        assert card["weights"]["from"] == source
        saved, checkpoint = load_weights(run / "model.safetensors"), load_checkpoint(run / source)
        assert all(torch.equal(v, checkpoint["model"][k]) for k, v in saved.items())
        assert card["preprocessing"]["pixel_mean"] is not None  # the engine's default
        assert len(card["metrics"]["test"]["images_sha256"]) == 64
        assert not list(run.rglob("phase*/model.safetensors"))


@pytest.mark.parametrize("kind", ["train", "finetune"])
def test_predict_serve_explain_export_and_evaluate_agree(runs, kind, tmp_path, capsys):
    data, folders = runs
    run, image = folders[kind], image_of(data)
    trained = load_trained(run)
    with torch.no_grad():
        reference = trained.probabilities(trained.model(trained.inputs(load_image(image)[None])))
    expected = reference[0].tolist()
    assert np.allclose(predicted(run, image, capsys), expected, atol=TOLERANCE)

    client = TestClient(create_app(load_served(str(run)), max_upload_mb=1))
    got = client.post("/predict", content=image.read_bytes()).json()
    assert np.allclose([c["probability"] for c in got["classes"]], expected, atol=TOLERANCE)

    assert main(["explain", str(run), str(image), "--method", "gradcam", "--out",
                 str(tmp_path / "maps")]) == 0  # fmt: skip
    record = json.loads((tmp_path / "maps" / "explain.json").read_text())["images"][0]
    assert abs(record["probability"] - max(expected)) <= TOLERANCE

    import onnxruntime

    onnx = tmp_path / "m.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(onnx)]) == 0
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    x = trained.inputs(load_image(image)[None])
    (logits,) = session.run(None, {"input": x.numpy()})  # over the temperature, where fitted
    assert np.allclose(torch.softmax(torch.from_numpy(logits), 1)[0], expected, atol=TOLERANCE)

    hub = tmp_path / "hub"
    assert main(["export", str(run), "--format", "hub", "--out", str(hub)]) == 0
    assert np.allclose(predicted(hub, image, capsys), expected, atol=TOLERANCE)
    rebuilt = create_model("resnet20", pretrained=str(hub)).eval()
    with torch.no_grad():
        again = trained.probabilities(rebuilt(x))[0]
    assert np.allclose(again, expected, atol=TOLERANCE)

    capsys.readouterr()
    assert main(["evaluate", str(run), str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    paths = sorted((data / "test").rglob("*.png"))
    images = torch.cat([load_image(p)[None] for p in paths])
    labels = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    with torch.no_grad():
        probs = trained.probabilities(trained.model(trained.inputs(images)))
    loss = float(-probs[torch.arange(len(labels)), labels].log().mean())
    assert metrics["n"] == len(paths) and abs(metrics["loss"] - loss) <= TOLERANCE


@pytest.mark.parametrize("kind", ["train", "finetune"])
def test_older_run_folders_still_open(runs, kind, tmp_path, capsys):
    """A train folder of config.json + best.pt, a fine-tuning folder of card + weights."""
    data, folders = runs
    run, old = folders[kind], tmp_path / "old"
    old.mkdir()
    kept = ("config.json", "best.pt") if kind == "train" else ("model_card.json",
                                                                "model.safetensors")
    for name in kept:
        shutil.copy(run / name, old / name)
    image = image_of(data)
    assert np.allclose(predicted(old, image, capsys), predicted(run, image, capsys),
                       atol=TOLERANCE)  # fmt: skip


def test_predict_names_an_empty_folder_and_predicts_the_rest(runs, tmp_path, capsys):
    data, folders = runs
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    argv = ["predict", str(folders["train"]), str(tmp_path / "empty"), str(image_of(data))]
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    assert [r["path"] for r in json.loads(out)] == [str(image_of(data))]
    empty = tmp_path / "empty"
    assert err.strip() == f"resnetlab predict: skipped {empty}: a folder with no images"
    assert main([*argv, "--on-bad", "error"]) == 2
    assert "empty: a folder with no images; fix it or pass --on-bad skip" in capsys.readouterr().err
