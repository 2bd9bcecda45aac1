"""What a fine-tuning run keeps and measures: one validation pass per epoch, one copy of the
final weights per format, phase checkpoints pruned (and kept on request) without breaking
resume, ``evaluate --split val`` on the run's held-out split, and the refusals and messages
a first-time user meets (freezing random stages, no network for ImageNet weights)."""

from __future__ import annotations

import argparse
import json
import signal
import urllib.error
from pathlib import Path

import pytest
import torch

from resnetlab import create_model
from resnetlab.cli import build_parser, main
from resnetlab.data.loaders import TensorLoader
from resnetlab.finetune import FinetuneOptions, finetune
from resnetlab.train import Callback, save_checkpoint
from resnetlab.weights import load_weights
from test_finetune_e2e import write_folder

VAL_SIZE = 0.3
PER_CLASS = (("train", 30), ("test", 4))  # 2 x 30 train images: 18 held out for validation


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    """Private caches for the module; no torchvision cache, so no ImageNet weights."""
    path = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETLAB_HOME", str(path / "home"))
        mp.setenv("TORCH_HOME", str(path / "torch"))
        yield path / "home"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("data") / "data", size=16, per_class=PER_CLASS)


def options(data: Path, out: Path, **changes) -> FinetuneOptions:
    values = dict(data=str(data), out_dir=str(out), model="resnet20", pretrained=None,
                  full_epochs=2, batch_size=8, val_size=VAL_SIZE, patience=None,
                  progress=False)  # fmt: skip
    return FinetuneOptions(**(values | changes))


def checkpoints(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*.pt"))


@pytest.fixture(scope="module")
def scratch(data, tmp_path_factory):
    """A 3-epoch run from scratch (one phase), with the evaluation loaders' passes counted."""
    passes = []
    epoch = TensorLoader.epoch

    def counted(self, *args, **kwargs):
        if not self.shuffle:  # an evaluation loader: record the size of the split it covers
            passes.append(len(self.labels))
        return epoch(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TensorLoader, "epoch", counted)
        result = finetune(options(data, tmp_path_factory.mktemp("scratch") / "run", full_epochs=3))
    return result, passes


def test_validation_is_evaluated_once_per_epoch(scratch):
    result, passes = scratch
    n_val = result.card["training"]["data"]["class_counts"]["val"]
    assert sum(n_val.values()) == 18
    assert passes.count(18) == 3, f"validation passes by split size: {passes}"
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1.0, 2.0, 3.0]
    for r in evals:  # the one pass gives the engine's columns too
        assert r["val_error"] == pytest.approx(1 - r["val_accuracy"]) and "val_loss" in r


def test_one_copy_of_the_weights_and_no_checkpoints_left(scratch, data):
    result, _ = scratch
    run = result.run_dir
    assert checkpoints(run) == ["model.pt"], "phase checkpoints and best_model.pt are deleted"
    assert (run / "phase2-full" / "done.json").is_file()
    saved, torch_file = load_weights(run / "model.safetensors"), load_weights(run / "model.pt")
    assert all(torch.equal(saved[k], torch_file[k]) for k in saved)
    # a finished run resumed: nothing to train, the same model and card
    again = finetune(FinetuneOptions(data=str(data), out_dir=str(run), resume=True,
                                     progress=False))  # fmt: skip
    after = load_weights(run / "model.safetensors")
    assert all(torch.equal(saved[k], after[k]) for k in saved)
    val, before = again.card["metrics"]["val"], result.card["metrics"]["val"]
    assert val["confusion_matrix"] == before["confusion_matrix"]
    assert val["loss"] == pytest.approx(before["loss"], rel=1e-5)  # memory layout: rounding


def test_evaluate_val_recreates_the_runs_held_out_split(scratch, data, tmp_path, capsys):
    result, _ = scratch
    out = tmp_path / "eval"
    code = main(["evaluate", str(result.run_dir), str(data), "--split", "val", "--out", str(out)])
    assert code == 0
    assert "as the run made them: no validation split in the data" in capsys.readouterr().out
    measured = json.loads((out / "metrics_val.json").read_text())
    recorded = result.card["metrics"]["val"]  # the best model on val, at the run's end
    assert measured["n"] == recorded["n"] == 18
    assert measured["confusion_matrix"] == recorded["confusion_matrix"]
    for key in ("loss", "accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "macro_f1"):
        assert measured[key] == pytest.approx(recorded[key], rel=1e-5, abs=1e-6), key
    names = sorted(p.name for p in out.iterdir())
    assert names == ["confusion_val.png", "decision_curve_val.png", "metrics_val.json",
                     "pr_val.png", "predictions_val.csv", "reliability_val.png",
                     "roc_val.png"]  # fmt: skip
    assert measured["clinical"]["evaluated"] == "val" and "val" in measured["clinical"]
    # another copy of the data is not the run's: its splits are the data's own
    other = write_folder(tmp_path / "other", size=16, per_class=PER_CLASS)
    assert main(["evaluate", str(result.run_dir), str(other), "--split", "val"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "has no 'val' split (the run split " in err and str(data) in err


class _Interrupt(Callback):
    """Ctrl-C in phase 2 one step after its first checkpoint; notes what was on disk then."""

    def __init__(self, run: Path) -> None:
        self.run, self.seen = run, None

    def on_step(self, state) -> None:
        if self.seen is None and state.out_dir.name == "phase2-full" and (
            state.step == state.batches_per_epoch + 1
        ):
            self.seen = checkpoints(self.run)
            signal.raise_signal(signal.SIGINT)


@pytest.mark.slow
def test_checkpoints_kept_on_request_and_a_pruned_run_resumes_mid_phase(data, tmp_path, capsys):
    torch.manual_seed(3)  # weights to start from, so that the run has both phases
    weights = save_checkpoint({"model": create_model("resnet20").state_dict()}, tmp_path / "w.pt")
    kept = tmp_path / "kept"
    argv = ["finetune", str(data), "--model", "resnet20", "--pretrained", str(weights),
            "--head-epochs", "1", "--full-epochs", "2", "--batch-size", "8", "--val-size", "0.3",
            "--patience", "0", "--out", str(kept), "--no-progress",
            "--keep-checkpoints"]  # fmt: skip
    assert main(argv) == 0
    assert checkpoints(kept) == ["model.pt", "phase1-head/last.pt", "phase2-full/last.pt"]
    assert json.loads((kept / "config.json").read_text())["keep_checkpoints"] is True
    run = tmp_path / "run"
    interrupt = _Interrupt(run)
    plan = dict(pretrained=str(weights), head_epochs=1, full_epochs=2)
    with pytest.raises(KeyboardInterrupt):
        finetune(options(data, run, **plan), callbacks=[interrupt])
    # phase 2 had saved its own checkpoint, so phase 1's was no longer needed
    assert interrupt.seen == ["best_model.pt", "phase2-full/last.pt"]
    resumed = finetune(FinetuneOptions(data=str(data), out_dir=str(run), resume=True,
                                       progress=False))  # fmt: skip
    assert checkpoints(run) == ["model.pt"]
    got, expected = load_weights(run / "model.pt"), load_weights(kept / "model.pt")
    assert all(torch.equal(got[k], expected[k]) for k in expected), "same seed, same model"
    card = json.loads((kept / "model_card.json").read_text())
    assert resumed.card["metrics"]["test"]["confusion_matrix"] == (
        card["metrics"]["test"]["confusion_matrix"]
    )


def test_freezing_stages_without_weights_is_refused(data, tmp_path, capsys):
    base = ["finetune", str(data), "--model", "resnet20", "--pretrained", "none",
            "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main([*base, "--freeze", "layer1,layer2"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("resnetlab finetune: error: frozen stages layer1, layer2 would keep")
    assert main([*base, "--unfreeze-to", "layer2"]) == 2
    assert "stem, layer1 would keep their random initialisation" in capsys.readouterr().err
    assert main([*base, "--head-epochs", "1"]) == 2
    assert "frozen, randomly initialised backbone" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # resnet20 has no ImageNet weights: auto means from scratch, and the same refusal
    auto = ["finetune", str(data), "--model", "resnet20", "--freeze", "layer1", "--out",
            str(tmp_path / "auto"), "--no-progress"]  # fmt: skip
    assert main(auto) == 2 and "random initialisation" in capsys.readouterr().err


def test_offline_default_names_the_cache_path_and_pretrained_none(
    data, home, tmp_path, monkeypatch, capsys
):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.setenv("RESNETLAB_DOWNLOAD_RETRIES", "0")
    monkeypatch.delenv("RESNETLAB_WEIGHTS_MIRROR", raising=False)
    argv = ["finetune", str(data), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2  # the default: resnet18 with --pretrained auto (ImageNet)
    err = capsys.readouterr().err.splitlines()[-1]  # one line: the problem and both ways out
    cache = home / "weights" / "resnet18-f37072fd.pth"
    assert err.startswith("resnetlab finetune: error: cannot download https://download.pytorch")
    assert f"place it at {cache}" in err and "--pretrained none to train from scratch" in err


def test_every_flag_of_the_fine_tuning_commands_has_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("finetune", "lr-find", "predict", "evaluate", "explain"):
        missing = [a.option_strings or a.dest for a in commands.choices[name]._actions
                   if not a.help]  # fmt: skip
        assert not missing, f"{name}: {missing}"
    data = next(a for a in commands.choices["finetune"]._actions if a.dest == "data")
    assert "IDX" in data.help and "fashion-mnist" in data.help
