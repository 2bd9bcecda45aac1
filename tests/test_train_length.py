"""Run length in iterations or epochs, lr milestones scaled to it, the progress output, and a
SIGTERM sent to a ``resnetlab train`` process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetlab.cli import main
from resnetlab.data import DataBundle, ImageSet
from resnetlab.train import Callback, TrainConfig, load_checkpoint, lr_at, recipe_config, train
from resnetlab.train import progress as progress_module
from resnetlab.train.distributed import Dist
from resnetlab.train.metrics import Meters
from resnetlab.train.progress import Progress


def write_npz(path: Path, n_train: int = 160) -> None:
    """A small learnable 4-class set of 8 px images in the MedMNIST .npz layout."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("val", 16), ("test", 16)):
        labels = np.arange(n) % 4
        images = rng.integers(0, 120, (n, 8, 8, 3), dtype=np.uint8)
        for k in range(4):
            images[labels == k, (k // 2) * 4 : (k // 2) * 4 + 4, (k % 2) * 4 : (k % 2) * 4 + 4,
                   k % 3] = 250  # fmt: skip
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.reshape(-1, 1)
    np.savez(path, **arrays)


def toy_bundle(n: int = 48) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    sets = []
    for m in (n, 16, 16):
        labels = torch.arange(m) % 2
        images = torch.randint(0, 120, (m, 3, 8, 8), generator=g, dtype=torch.uint8)
        images[labels == 1, 0, :4, :4] = 250
        sets.append(ImageSet(images, labels, ["a", "b"], "toy"))
    return DataBundle(*sets, ["a", "b"], 3, (8, 8), "toy", "toy patches")


def small(tmp_path: Path, **changes) -> TrainConfig:
    values = dict(model="resnet20", batch_size=8, lr=0.1, eval_every=100, checkpoint_every=100,
                  log_every=1, out_dir=str(tmp_path / "run"), progress=False, seed=0)  # fmt: skip
    return TrainConfig(**{**values, **changes})


def records(run: Path, kind: str = "train") -> list[dict]:
    rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["kind"] == kind]


def test_neither_length_is_the_papers_64000_iterations_with_milestones_at_32k_and_48k():
    c = TrainConfig()
    assert (c.max_iters, c.epochs, c.milestones) == (None, None, None)
    assert c.total_iters(391) == 64000 and c.milestones_at(64000) == (32000, 48000)
    assert [lr_at(c, s, 64000) for s in (31999, 32000, 47999, 48000)] == pytest.approx(
        [0.1, 0.01, 0.01, 0.001]
    )


def test_epochs_and_fractions_of_an_epoch_round_up_to_whole_iterations():
    assert TrainConfig(epochs=2).total_iters(391) == 782
    assert TrainConfig(epochs=0.05).total_iters(391) == 20  # 19.55 batches
    assert TrainConfig(epochs=0.1).total_iters(30) == 3  # 0.1 x 30 is 3.0000000000000004
    assert TrainConfig(epochs=1e-6).total_iters(391) == 1


def test_milestones_scale_with_the_length_unless_given():
    assert TrainConfig(epochs=2).milestones_at(782) == (391, 586)
    assert TrainConfig(epochs=2, milestones=(100, 700)).milestones_at(782) == (100, 700)
    assert TrainConfig(milestones=()).milestones_at(782) == ()
    # The paper's recipe: its own length unchanged, another length scaled.
    paper = recipe_config("he2015-cifar")
    assert paper.total_iters(351) == 64000 and paper.milestones_at(64000) == (32000, 48000)
    short = recipe_config("he2015-cifar", epochs=2)
    assert short.max_iters is None and short.total_iters(351) == 702
    assert short.milestones_at(702) == (351, 526)
    assert recipe_config("quick-cifar", epochs=1).max_iters is None
    assert TrainConfig(max_iters=500).replace(epochs=3).total_iters(10) == 30


def test_both_lengths_are_one_line_naming_both_flags(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "r"), "--max-iters", "10", "--epochs", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--max-iters" in err[0] and "--epochs" in err[0] and "drop" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_fraction_of_an_epoch_from_the_cli_runs_that_many_steps(tmp_path, capsys):
    data, out = tmp_path / "set.npz", tmp_path / "run"
    write_npz(data)  # 160 train images, batch 2: 80 batches per epoch; 0.05 epochs = 4 steps
    argv = ["train", "--model", "resnet20", "--data", str(data), "--out", str(out),
            "--batch-size", "2", "--lr", "0.1", "--epochs", "0.05", "--log-every", "1",
            "--eval-every", "100", "--checkpoint-every", "100", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "training resnet20 for 4 iterations (0.05 epochs of 80 batches); lr milestones at 2, 3" \
        in err  # fmt: skip
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert (resolved["max_iters"], resolved["batches_per_epoch"]) == (4, 80)
    assert (resolved["epochs"], resolved["milestones"]) == (0.05, [2, 3])
    rows = records(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    # --no-progress: one plain line per log record, with the step, loss, error, lr and ETA.
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(" loss " in s and " err " in s and " lr " in s and "ETA" in s for s in lines)
    assert load_checkpoint(out / "last.pt")["step"] == 4


@pytest.mark.slow
def test_resume_with_a_new_length_rescales_the_milestones(tmp_path):
    first = train(small(tmp_path, max_iters=4), data=toy_bundle())
    assert first.steps == 4
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["resolved"]["milestones"] == [2, 3]
    longer = train(small(tmp_path, epochs=1.5, resume=True), data=toy_bundle())  # 6 per epoch
    assert longer.steps == 9
    assert json.loads((run / "config.json").read_text())["resolved"]["milestones"] == [4, 7]
    lrs = {r["step"]: r["lr"] for r in records(run)}
    assert [lrs[s] for s in (5, 6, 8, 9)] == pytest.approx([0.01, 0.01, 0.001, 0.001])


def test_the_bar_shows_the_means_so_far_about_once_a_second(monkeypatch):
    monkeypatch.setattr(progress_module, "PEEK_S", 0.0)
    meters = Meters(torch.device("cpu"), 0)
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    meters.add(torch.tensor(0.75), logits, y)
    bar = Progress(10, 0, "bar")
    bar.step(meters, 0.05, {"val_error": 0.25})
    assert bar.bar.postfix == "loss=0.7500, err=50.0%, lr=0.05, val_err=25.0%"
    assert meters.read(Dist()) == {"loss": 0.75, "error": 0.5}  # peeking left the sums alone
    bar.close()


def test_hook_output_starts_its_own_line_in_a_captured_log(tmp_path, capsys):
    class Say(Callback):
        def on_eval(self, state, record):
            print(f"EVAL {state.step}", file=sys.stderr)

    train(small(tmp_path, max_iters=4, eval_every=2, progress=True), data=toy_bundle(),
          callbacks=[Say()])  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("EVAL ") == 2
    assert all(err[err.index(f"EVAL {s}") - 1] == "\n" for s in (2, 4)), repr(err)


@pytest.mark.slow  # two trainings, one in a fresh interpreter
def test_sigterm_to_resnetlab_train_records_the_stop_in_run_json(tmp_path):
    data, out = tmp_path / "set.npz", tmp_path / "run"
    write_npz(data)
    args = [sys.executable, "-m", "resnetlab", "train", "--model", "resnet20", "--data",
            str(data), "--out", str(out), "--batch-size", "2", "--epochs", "50", "--log-every",
            "1", "--eval-every", "1000", "--checkpoint-every", "1000", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").is_file() and records(out)):
        assert proc.poll() is None and time.monotonic() < deadline, "no training step was seen"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    status = json.loads((out / "run.json").read_text())["status"]
    step = load_checkpoint(out / "last.pt")["step"]
    assert status == f"interrupted at step {step}" and 1 <= step < 4000
    # Resumed with a length in iterations instead of the saved epochs.
    argv = ["train", "--out", str(out), "--resume", "--max-iters", str(step + 2), "--no-progress"]
    assert main(argv) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    assert load_checkpoint(out / "last.pt")["step"] == step + 2
    assert [r["step"] for r in records(out)] == list(range(1, step + 3))


def test_a_second_ctrl_c_mid_step_is_recorded_not_left_running(tmp_path):
    class Abrupt(Callback):  # what the default handler does on a second Ctrl-C
        def on_step(self, state):
            if state.step == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small(tmp_path, max_iters=6), data=toy_bundle(), callbacks=[Abrupt()])
    status = json.loads((tmp_path / "run" / "run.json").read_text())["status"]
    assert status == "interrupted at step 3 before its checkpoint was saved"


def test_train_help_states_the_default_length(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert info.value.code == 0
    assert "(default 64000, or --epochs)" in out and "three quarters of the run" in out
