"""Run folders: one ``run.json`` shape for every command, old shapes still read, and every
command that trains ends with a report naming the machine, the versions and the command."""

from __future__ import annotations

import contextlib
import html
import io
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from resnetlab import runfolder
from resnetlab.cli import main
from resnetlab.reports.report import render_report

CLASSES = ("circle", "square", "stripe")

MACHINE = "Machine and versions</h2>"  # the heading, whatever its anchor


def write_folder(root: Path, size: int = 16, per_class=(("train", 10), ("test", 6))) -> Path:
    """``root/<split>/<class>/<n>.png``: each class its own brightness band, plus noise."""
    rng = np.random.default_rng(0)
    for split, n in per_class:
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (size, size, 3)) + 85 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, tuple[Path, list[str], str]]:
    """A train, a finetune, a degradation and a gradient-flow run, each made through the CLI
    with tiny settings: name -> (run folder, its arguments, what it printed)."""
    root = tmp_path_factory.mktemp("runs")
    data = write_folder(root / "data")
    made = {
        "train": ["train", "--data", str(data), "--model", "resnet20", "--max-iters", "4",
                  "--batch-size", "8", "--eval-every", "2", "--checkpoint-every", "2",
                  "--log-every", "1", "--val-size", "6", "--num-workers", "0", "--device", "cpu",
                  "--normalisation", "imagenet", "--out", str(root / "train"), "--no-progress"],
        "finetune": ["finetune", str(data), "--model", "resnet20", "--pretrained", "none",
                     "--full-epochs", "1", "--batch-size", "8", "--out", str(root / "finetune"),
                     "--no-progress"],
        "degradation": ["degradation", "--data", "synthetic", "--depths", "8", "14", "--budget",
                        "2", "--batch-size", "8", "--train-size", "40", "--image-size", "16",
                        "--eval-every", "2", "--device", "cpu", "--out", str(root / "deg")],
        "gradient-flow": ["gradient-flow", "--models", "mlp3", "--seeds", "1", "--report",
                          "--out", str(root / "gf")],
    }  # fmt: skip
    printed = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETLAB_HOME", str(root / "home"))
        for name, argv in made.items():
            with contextlib.redirect_stdout(io.StringIO()) as out:
                assert main(argv) == 0, argv
            printed[name] = out.getvalue()
    return {name: (Path(argv[argv.index("--out") + 1]), argv, printed[name])
            for name, argv in made.items()}  # fmt: skip


@pytest.mark.slow
def test_every_report_names_machine_versions_and_command(folders) -> None:
    cpu = html.escape(runfolder.cpu_name())
    for name, (folder, argv, printed) in folders.items():
        run = runfolder.read(folder)
        assert run["schema"] == 1 and run["status"] == "completed", name
        assert run["command"] == shlex.join(["resnetlab", *argv]), name
        assert run["versions"]["torch"] == torch.__version__, name
        assert run["timing"]["started"] and run["timing"]["wall_time_s"] is not None, name
        page = (folder / "report.html").read_text()
        machine = page.split(MACHINE)[1]
        assert page.count(MACHINE) == 1, name
        assert cpu in machine and torch.__version__ in machine, name
        assert torchvision.__version__ in machine, name
        assert html.escape(run["command"]) in machine, name
        assert "{&quot;" not in page, name  # config and data in words, not JSON dumps
        if name == "gradient-flow":
            continue  # trains nothing; its --report path goes to stderr
        report = printed.strip().splitlines()[-1]  # each command that trains names it last
        assert report.startswith("report: "), name
        assert Path(report.removeprefix("report: ")).resolve() == (folder / "report.html").resolve()


@pytest.mark.slow
def test_train_report_has_findings_per_class_and_confusion(folders) -> None:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    folder = folders["train"][0]
    assert "test (best.pt): accuracy" in folders["train"][2]
    facts = json.loads((folder / "per_class.json").read_text())
    saved = np.load(folder / "test_predictions.npz")
    labels, predicted = saved["labels"], saved["predictions"]
    assert facts["split"] == "test" and facts["n"] == len(labels) == 18
    assert (saved["logits"].argmax(1) == predicted).all()
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=[0, 1, 2], zero_division=0
    )
    for i, name in enumerate(CLASSES):
        row = facts["per_class"][name]
        assert row["precision"] == pytest.approx(precision[i])
        assert row["recall"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i]) and row["support"] == support[i]
    assert facts["confusion_matrix"] == confusion_matrix(labels, predicted).tolist()
    # the checkpoint evaluated is best.pt: its test error is the one logged at its step
    records = runfolder.read_jsonl(folder / "metrics.jsonl")
    evals = [r for r in records if r["kind"] == "eval"]
    best = min(evals, key=lambda r: r["val_error"])
    assert facts["checkpoint"] == "best.pt" and facts["step"] == best["step"]
    assert facts["error"] == pytest.approx(best["test_error"])
    page = (folder / "report.html").read_text()
    findings = page.index("Findings</h3>")
    assert findings < page.index("Per-class metrics, test split") < page.index("Machine and")
    for words in ("Final errors at step 4 of 4", "Best checkpoint: best.pt, step", "images/s",
                  "Confusion matrix, test split", "confusion_test.png", "Data</h3><dl>"):
        assert words in page, words  # fmt: skip


def test_run_json_start_finish_and_resume(tmp_path) -> None:
    started = runfolder.start(tmp_path, command="resnetlab x --a 1")
    assert started["status"] == "running" and started["machine"]["cpu_count"]
    assert set(runfolder.VERSION_KEYS) <= set(started["versions"])
    ended = runfolder.finish(tmp_path, "interrupted at step 3")
    assert ended["timing"]["finished"] and ended["timing"]["wall_time_s"] >= 0
    again = runfolder.start(tmp_path, resume=True, step=3, command="resnetlab other")
    assert again["command"] == "resnetlab x --a 1"  # the run's command, not the resume's
    assert again["timing"]["started"] == started["timing"]["started"]
    assert [r["step"] for r in again["timing"]["resumed"]] == [3]
    assert runfolder.finish(tmp_path)["status"] == "completed"
    assert runfolder.read(tmp_path)["timing"]["finished"]


def test_old_run_json_shapes_still_render(tmp_path) -> None:
    flat = {"date": "2026-01-01T00:00:00+00:00", "command": "resnetlab compare", "cpu": "Old CPU",
            "cpu_count": 2, "torch_threads": 2, "gpu": None, "python": "3.11.2",
            "platform": "Linux", "torch": "2.9.0", "torchvision": "0.24.0", "resnetlab": "0.0.9",
            "status": "completed", "wall_time_s": 5.0}  # fmt: skip
    engine = {"data": {"description": "tiny", "source": "x", "classes": ["a", "b"]},
              "model": {"name": "resnet20", "parameters": 272474},
              "machine": {"device": "cpu", "processor": "x86_64", "cpu_count": 4,
                          "world_size": 1, "torch": "2.8.0", "python": "3.11.1",
                          "platform": "Linux"},
              "plan": {"device": "cpu"}, "started": "2026-01-02T00:00:00+00:00",
              "status": "completed", "resumed": [{"step": 2, "at": "2026-01-03"}]}  # fmt: skip
    for name, record in (("flat", flat), ("engine", engine)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(record))
    old = runfolder.read(tmp_path / "engine")
    assert old["machine"]["cpu"] == "x86_64" and old["versions"]["torch"] == "2.8.0"
    assert old["timing"]["started"] == engine["started"] and len(old["timing"]["resumed"]) == 1
    assert runfolder.read(tmp_path / "flat")["timing"]["wall_time_s"] == 5.0
    html_path, md_path = render_report([tmp_path / "flat", tmp_path / "engine"], tmp_path / "r")
    machine = html_path.read_text().split(MACHINE)[1]
    for words in ("Old CPU", "x86_64", "2.9.0", "2.8.0", "0.24.0", "resnetlab compare"):
        assert words in machine, words
    assert "<dt>description</dt><dd>tiny</dd>" in html_path.read_text()  # data in words
    assert "| engine | completed | 2026-01-02T00:00:00+00:00 |" in md_path.read_text()


def test_jsonl_csv_and_command_line_are_one_way(tmp_path) -> None:
    log = tmp_path / "log.jsonl"
    runfolder.append_jsonl(log, {"a": 1})
    log.write_text(log.read_text() + '{"b": ')  # a torn last line
    runfolder.append_jsonl(log, {"c": 2})
    assert runfolder.read_jsonl(log) == [{"a": 1}, {"c": 2}]
    runfolder.write_csv(tmp_path / "t.csv", [{"x": 1}, {"x": 2, "y": "z"}])
    assert runfolder.read_csv(tmp_path / "t.csv") == [{"x": "1", "y": ""}, {"x": "2", "y": "z"}]
    with runfolder.invoked_as(["train", "--out", "runs/a b"]):
        assert runfolder.command_line() == "resnetlab train --out 'runs/a b'"
    assert "resnetlab train" not in runfolder.command_line()


def test_lr_find_ends_with_its_report(tmp_path, home, capsys) -> None:
    data = write_folder(tmp_path / "data", per_class=(("train", 6),))
    out = tmp_path / "lr"
    argv = ["lr-find", str(data), "--model", "resnet20", "--pretrained", "none", "--iters", "5",
            "--batch-size", "6", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"report: {(out / 'report.html').resolve()}"
    )
    run = runfolder.read(out)
    assert run["status"] == "completed" and run["command"] == shlex.join(["resnetlab", *argv])
    assert run["timing"]["started"] <= run["timing"]["finished"]
    page = (out / "report.html").read_text()
    assert "Suggested lr (full model, 5 steps" in page and "lr_find.png" in page
