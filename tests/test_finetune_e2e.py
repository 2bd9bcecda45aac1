"""Fine-tuning end to end on a tiny image folder: finetune -> predict -> evaluate -> export,
and from "ImageNet" weights served over HTTP on 127.0.0.1 (no network needed)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab import create_model
from resnetlab.artifact import export_input_size, run_summary
from resnetlab.artifact import load_trained as load_model
from resnetlab.cli import main
from resnetlab.data.preprocess import load_image, normalise, prepare_images
from resnetlab.export import export_model
from resnetlab.train import load_checkpoint
from resnetlab.weights import load_weights

pytestmark = pytest.mark.slow  # real fine-tuning runs end to end

CLASSES = ("cat", "dog")


def write_folder(root: Path, size: int = 32, per_class=(("train", 12), ("test", 4))) -> Path:
    """``root/<split>/<class>/<n>.png|jpg``; brightness gives the class away."""
    rng = np.random.default_rng(0)
    for split, n in per_class:
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = (rng.integers(0, 90, (size, size, 3)) + 130 * label).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A private RESNETLAB_HOME (data and weights caches) for the whole module."""
    path = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETLAB_HOME", str(path))
        yield path


def scratch_run(data: Path, out: Path, epochs: str, *extra: str) -> list[str]:
    """``resnetlab finetune`` of resnet20 from scratch, batch 8, plus ``extra`` options."""
    return ["finetune", str(data), "--model", "resnet20", "--pretrained", "none", "--full-epochs",
            epochs, "--batch-size", "8", "--out", str(out), "--no-progress", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory, home):
    """One finished run: resnet20 from scratch, 2 epochs (no phase 1 without weights)."""
    root = tmp_path_factory.mktemp("ft")
    data = write_folder(root / "data")
    out = root / "run"
    argv = scratch_run(data, out, "2", "--head-dropout", "0.2", "--monitor", "roc_auc")
    assert main(argv) == 0
    return out, data


def test_run_folder_holds_model_card_metrics_and_plots(run):
    out, data = run
    for name in (
        "model.pt",
        "model.safetensors",
        "model_card.json",
        "metrics.jsonl",
        "metrics.csv",
        "report.md",
        "run.json",
        "confusion_val.png",
        "roc_val.png",
        "confusion_test.png",
        "roc_test.png",
        "history.png",
    ):
        assert (out / name).is_file(), name
    card = json.loads((out / "model_card.json").read_text())
    assert card["model"]["name"] == "resnet20" and card["model"]["head_dropout"] == 0.2
    assert card["classes"] == list(CLASSES)
    prep = card["preprocessing"]
    assert prep["crop"] == 32 and prep["channels"] == 3 and len(prep["mean"]) == 3
    counts = card["training"]["data"]["class_counts"]
    # no val/ folder: 10 % of train held out, stratified
    assert counts["val"] == {"cat": 1, "dog": 1} and counts["train"] == {"cat": 11, "dog": 11}
    assert counts["test"] == {"cat": 4, "dog": 4}
    val, test = card["metrics"]["val"], card["metrics"]["test"]
    assert "best epoch" in val["measured_on"] and val["phase"] == "phase2-full"
    assert test["n"] == 8 and sum(map(sum, test["confusion_matrix"])) == 8
    assert set(test["per_class"]) == set(CLASSES) and 0.0 <= test["roc_auc"] <= 1.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1.0, 2.0]
    assert {"val_balanced_accuracy", "val_roc_auc", "val_recall_dog", "val_f1_cat"} <= set(evals[0])
    best = max(evals, key=lambda r: r["val_roc_auc"])  # first best kept, like the tracker
    assert val["epoch"] == best["epoch"]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val_precision_cat" in header and "phase" in header
    report = (out / "report.md").read_text()  # rendered by the experiments' report renderer
    assert "### choices.txt" in report and "held out" in report
    assert card["summary"][-1] in report and "test: accuracy" in card["summary"][-1]
    assert (out / "report.html").stat().st_size > 10_000  # plots embedded


def test_predict_reports_bad_files_and_predicts_the_rest(run, tmp_path, capsys):
    out, data = run
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    good = data / "test" / "dog" / "1.png"
    code = main(
        [
            "predict",
            str(out),
            str(good),
            str(bad),
            str(data / "test" / "cat"),
            "--json",
            "--top-k",
            "2",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "notes.jpg" in captured.err and "not a readable image" in captured.err
    rows = json.loads(captured.out)
    assert len(rows) == 1 + 4 and rows[0]["path"] == str(good)
    for row in rows:
        probabilities = [t["probability"] for t in row["top"]]
        assert len(probabilities) == 2 and abs(sum(probabilities) - 1) < 1e-5
        assert probabilities == sorted(probabilities, reverse=True)
    assert main(["predict", str(out), str(bad), str(tmp_path / "missing.png")]) == 1
    assert "missing.png" in capsys.readouterr().err


def test_predict_matches_the_model_on_preprocessed_images(run, capsys):
    out, data = run
    loaded = load_model(out)
    files = sorted((data / "test").glob("*/*.*"))
    x = normalise(
        torch.stack([prepare_images(load_image(f)[None], loaded.preprocessing)[0] for f in files]),
        loaded.preprocessing,
    )
    temperature = loaded.card["calibration"]["temperature"]  # predict prints calibrated ones
    with torch.no_grad():
        expected = torch.softmax(loaded.model(x) / temperature, 1)
    assert (
        main(
            [
                "predict",
                str(out / "model.pt"),
                str(data / "test" / "*" / "*.*"),
                "--csv",
                "--top-k",
                "1",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "path,class1,probability1,probability,threshold,decision"
    assert len(lines) == 1 + len(files)
    for line, p in zip(lines[1:], expected, strict=True):
        _, name, prob, p1, _, _ = line.split(",")
        assert abs(float(p1) - float(p[1])) < 1e-5
        assert name == CLASSES[int(p.argmax())] and abs(float(prob) - float(p.max())) < 1e-5


def test_evaluate_reproduces_the_card_test_metrics(run, tmp_path, capsys):
    out, data = run
    assert main(["evaluate", str(out), str(data), "--split", "test", "--out", str(tmp_path)]) == 0
    measured = json.loads((tmp_path / "metrics_test.json").read_text())
    card = json.loads((out / "model_card.json").read_text())
    assert measured["accuracy"] == pytest.approx(card["metrics"]["test"]["accuracy"])
    assert measured["roc_auc"] == pytest.approx(card["metrics"]["test"]["roc_auc"])
    assert (tmp_path / "confusion_test.png").stat().st_size > 1000
    assert "balanced accuracy" in capsys.readouterr().out
    for engine in ("torch", "onnxruntime"):  # auto is onnxruntime here; both give the metrics
        assert main(["evaluate", str(out), str(data), "--json", "--engine", engine]) == 0
        other = json.loads(capsys.readouterr().out)
        assert other["accuracy"] == measured["accuracy"]
        assert other["roc_auc"] == pytest.approx(measured["roc_auc"], abs=1e-6)
    # no val/ folder: the run's held-out validation images are split off again
    assert main(["evaluate", str(out), str(data), "--split", "val"]) == 0
    assert "held out 2 training images" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_of_the_run_matches_eager(run, tmp_path, fmt, capsys):
    out, _ = run
    model, size = export_input_size(out)
    assert size == (3, 32, 32)
    report = export_model(model, tmp_path / f"m.{fmt}", fmt, torch.randn(1, *size))
    assert report.max_abs_diff < 1e-4 and report.path.is_file()
    assert main(["export", str(out), "--format", fmt, "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli").is_file() and "max |diff| vs eager" in capsys.readouterr().out


def test_summary_of_a_run(run, capsys):
    text = run_summary(run[0])
    assert "resnet20 fine-tuned for 2 classes" in text and "dropout 0.2" in text
    assert main(["summary", str(run[0])]) == 0
    out = capsys.readouterr().out
    assert text in out and "layer3" in out and out.splitlines()[-1].startswith("total")


def test_resume_of_a_finished_run_changes_nothing(run, capsys):
    out, data = run
    before = load_weights(out / "model.safetensors")
    assert main(["finetune", str(data), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().err
    after = load_weights(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert main(["finetune", str(data), "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_finetune_with_activation_checkpointing(tmp_path, home):
    data = write_folder(tmp_path / "data")
    out = tmp_path / "run"
    argv = scratch_run(data, out, "1", "--activation-checkpointing")
    assert main(argv) == 0
    configs = [json.loads(p.read_text()) for p in out.glob("*/config.json")]
    assert configs and all(c["activation_checkpointing"] is True for c in configs)
    assert (out / "model.safetensors").is_file()


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def served(tmp_path):
    """A tiny fake ImageNet 'resnet18-<sha8>.pth' state dict on a local HTTP server."""
    torch.manual_seed(1)
    state = create_model("resnet18").state_dict()
    folder = tmp_path / "www"
    folder.mkdir()
    raw = folder / "raw.pth"
    torch.save(state, raw)
    name = f"resnet18-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth"
    raw.rename(folder / name)
    handler = lambda *a, **k: _Files(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{name}", state
    server.shutdown()
    server.server_close()


def test_finetune_from_weights_downloaded_over_http(served, tmp_path, home, capsys):
    url, state = served
    data = write_folder(tmp_path / "data", size=16, per_class=(("train", 6), ("val", 2)))
    out = tmp_path / "run"
    argv = [
        "finetune",
        str(data),
        "--model",
        "resnet18",
        "--pretrained",
        url,
        "--image-size",
        "32",
        "--head-epochs",
        "1",
        "--full-epochs",
        "1",
        "--batch-size",
        "4",
        "--out",
        str(out),
        "--no-progress",
        "--freeze",
        "layer1",
        "--keep-checkpoints",
    ]
    assert main(argv) == 0
    log = capsys.readouterr().err
    assert "16-px images upscaled to 32 px" in log and "ImageNet (assumed)" in log
    assert (home / "weights" / url.rsplit("/", 1)[1]).is_file(), "download cached"
    # phase 1 trains the new head only: 512 * 2 + 2 parameters; the backbone and its
    # BatchNorm statistics are exactly the served weights afterwards
    done = json.loads((out / "phase1-head" / "done.json").read_text())
    assert done["trainable"] == 512 * 2 + 2
    after_head = load_checkpoint(out / "phase1-head" / "last.pt")["model"]
    for key in ("conv1.weight", "layer4.1.bn2.running_mean", "layer3.0.conv2.weight"):
        assert torch.equal(after_head[key], state[key]), key
    assert not torch.equal(after_head["fc.weight"][:2], state["fc.weight"][:2])
    # phase 2 trains everything but the stage kept frozen (layer1)
    final = load_checkpoint(out / "phase2-full" / "last.pt")["model"]
    assert torch.equal(final["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert not torch.equal(final["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    card = json.loads((out / "model_card.json").read_text())
    assert card["weights"]["pretrained"] == url and card["preprocessing"]["crop"] == 32
    assert card["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["predict", str(out), str(data / "val")]) == 0
