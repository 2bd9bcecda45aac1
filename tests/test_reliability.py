"""What a hostile or unlucky user does to a run: bad settings, one class, two runs in one folder,
a state that went non-finite, a kill during a write, a full disk, SIGTERM; every case is one line
and exit status 2 (or a clean stop), and nothing half-written is left under a real name."""

from __future__ import annotations

import errno
import json
import os
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
from resnetlab.errors import ResnetlabError
from resnetlab.files import LOCK_NAME, RunLock
from resnetlab.train import Callback, TrainConfig, TrainingDiverged, load_checkpoint, train


def toy(n: int, classes: int, seed: int, only: int | None = None) -> ImageSet:
    """Noise images with a class-specific bright patch; ``only`` gives every image one class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes if only is None else torch.full((n,), only)
    images = torch.randint(0, 120, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    for k in range(classes):
        images[labels == k, k % 3, :4, :4] = 250
    return ImageSet(images, labels, [f"c{k}" for k in range(classes)], f"toy {seed}")


def bundle(classes: int = 2, test_only: int | None = None) -> DataBundle:
    sets = [toy(64, classes, 0), toy(32, classes, 1), toy(32, classes, 2, test_only)]
    return DataBundle(*sets, sets[0].classes, 3, (8, 8), "toy", "toy patches")


def config(tmp_path: Path, **changes) -> TrainConfig:
    values = dict(model="resnet20", batch_size=16, lr=0.05, max_iters=6, milestones=(),
                  eval_every=3, checkpoint_every=3, log_every=3, out_dir=str(tmp_path / "run"),
                  progress=False, seed=1)  # fmt: skip
    return TrainConfig(**{**values, **changes})


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``resnetlab ARGV`` in this process: exit status and what it wrote to stderr."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("pad", -3, ">= 0"),
        ("momentum", -0.5, "in [0, 1)"),
        ("batch_size", 0, ">= 1"),
        ("lr", 0.0, "> 0"),
        ("lr", float("nan"), "> 0"),
        ("ema", 1.0, "in (0, 1)"),
        ("betas", (0.9, 1.5), "in [0, 1)"),
        ("class_weights", (1.0, -2.0), "> 0"),
        ("num_workers", -1, ">= 0"),
        ("milestones", (-5,), ">= 0"),
    ],
)
def test_every_bound_comes_from_the_field_declaration(tmp_path, field, value, rule) -> None:
    with pytest.raises(ResnetlabError) as caught:
        config(tmp_path, **{field: value})
    message = str(caught.value)
    assert f"{field} (--{field.replace('_', '-')}) must be {rule}" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--pad", "-3"], "pad (--pad) must be >= 0, got -3"),
        (["--momentum", "-0.5"], "momentum (--momentum) must be in [0, 1)"),
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--normalisation", "0.5,0.5,0.5/0,1,1"], "every std must be a positive number"),
        (["--batch-size", "x"], "argument --batch-size: invalid INT value: 'x'"),
    ],
)
def test_train_flags_fail_in_one_line(tmp_path, capsys, argv, expected) -> None:
    code, err = run_cli(["train", "--out", str(tmp_path / "r"), *argv], capsys)
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a GPU-less machine")
def test_cuda_without_a_gpu_is_one_line(tmp_path) -> None:
    with pytest.raises(ResnetlabError, match="no GPU is visible; use --device cpu"):
        config(tmp_path, device="cuda")


def test_one_class_is_refused_overall_and_per_split(tmp_path) -> None:
    one = ImageSet(torch.zeros(8, 3, 8, 8, dtype=torch.uint8), torch.zeros(8, dtype=torch.long),
                   ["cat"], "one")  # fmt: skip
    with pytest.raises(ResnetlabError, match="only 1 class .*at least two classes"):
        train(config(tmp_path), data=DataBundle(one, None, None, ["cat"], 3, (8, 8), "x", "one"))
    with pytest.raises(ResnetlabError, match="the test split holds images of one class only"):
        train(config(tmp_path), data=bundle(test_only=1))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_class_weights_must_match_the_classes(tmp_path) -> None:
    with pytest.raises(ResnetlabError, match="gives 2 weight.*3 classes"):
        train(config(tmp_path, class_weights=(1.0, 2.0)), data=bundle(classes=3))


def test_out_path_problems_are_one_line(tmp_path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = run_cli(["train", "--out", str(afile), "--max-iters", "1"], capsys)
    assert code == 2 and "is a file, not a run folder" in err
    code, err = run_cli(["export", "resnet20", "--format", "onnx", "--out", str(tmp_path)], capsys)
    assert code == 2 and "is a folder; give the file to write" in err
    code, err = run_cli(["predict", str(tmp_path), str(afile), "--batch-size", "0"], capsys)
    assert code == 2 and "--batch-size: invalid int >= 1 value: '0'" in err
    assert len(err.strip().splitlines()) == 1


def test_resume_with_nothing_to_resume_is_refused(tmp_path, capsys) -> None:
    code, err = run_cli(["train", "--out", str(tmp_path / "none"), "--resume"], capsys)
    assert code == 2 and "nothing to resume" in err and "drop --resume" in err
    assert not (tmp_path / "none").exists()


class SpoilBatchNorm(Callback):
    """After step ``at``, one BatchNorm variance overflows while the loss stays finite
    (what a run that starts to diverge does in train mode, where BN uses batch statistics)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step(self, state) -> None:
        if state.step == self.at:
            state.model.bn1.running_var.fill_(float("inf"))


def test_a_non_finite_buffer_is_never_saved(tmp_path) -> None:
    with pytest.raises(TrainingDiverged, match=r"NaN/Inf by step 6 \(first: bn1.running_var"):
        train(config(tmp_path), data=bundle(), callbacks=[SpoilBatchNorm(at=4)])
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["step"] == 3
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    status = json.loads((tmp_path / "run" / "run.json").read_text())["status"]
    assert status.startswith("training diverged")


HOLD_LOCK = """
import sys, time
from resnetlab.files import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_locked_run_folder_refuses_a_second_run_until_its_owner_dies(tmp_path) -> None:
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ResnetlabError, match=f"in use by process {holder.pid}"):
            train(config(tmp_path), data=bundle())
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()  # like kill -9: the OS releases the lock
        holder.wait()
    result = train(config(tmp_path), data=bundle())
    assert result.steps == 6


@pytest.mark.slow
def test_two_train_commands_into_one_folder_leave_one_consistent_run(tmp_path) -> None:
    out = tmp_path / "same"
    np_data = tmp_path / "toy.npz"
    data = bundle()

    np.savez(np_data, train_images=data.train.images.permute(0, 2, 3, 1).numpy(),
             train_labels=data.train.labels.numpy(),
             test_images=data.test.images.permute(0, 2, 3, 1).numpy(),
             test_labels=data.test.labels.numpy())  # fmt: skip
    argv = [sys.executable, "-m", "resnetlab.cli", "train", "--data", str(np_data), "--out",
            str(out), "--max-iters", "40", "--batch-size", "16", "--no-progress",
            "--checkpoint-every", "10", "--log-every", "10", "--eval-every", "20"]  # fmt: skip
    env = {**os.environ, "RESNETLAB_HOME": str(tmp_path / "home")}
    first = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    codes = sorted((first.wait(timeout=300), second.wait(timeout=300)))
    errors = first.stderr.read() + second.stderr.read()
    assert codes == [0, 2], errors
    assert "is in use by process" in errors or "already holds a run" in errors
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]  # fmt: skip
    assert steps == [10, 20, 30, 40]
    assert load_checkpoint(out / "last.pt")["step"] == 40


def test_resume_removes_what_a_killed_write_left(tmp_path) -> None:
    train(config(tmp_path), data=bundle())
    stale = tmp_path / "run" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(config(tmp_path, max_iters=9, resume=True), data=bundle())
    assert not stale.exists()


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_file(
    tmp_path, capsys, monkeypatch
) -> None:
    np_data = tmp_path / "toy.npz"
    data = bundle()

    np.savez(np_data, train_images=data.train.images.permute(0, 2, 3, 1).numpy(),
             train_labels=data.train.labels.numpy())  # fmt: skip

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    out = tmp_path / "run"
    code, err = run_cli(["train", "--data", str(np_data), "--out", str(out), "--max-iters", "2",
                         "--batch-size", "16", "--no-progress"], capsys)  # fmt: skip
    assert code == 2
    assert "no space left on the device; free some space" in err
    assert len(err.strip().splitlines()) == 1
    assert not (out / "last.pt").exists()
    assert not list(out.glob(".*.tmp"))


def test_a_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(RunLock, "__enter__", read_only)
    code, err = run_cli(["train", "--out", str(tmp_path / "ro"), "--max-iters", "1"], capsys)
    assert code == 2
    assert f"({tmp_path / 'ro'}): permission denied; choose a folder you can write to" in err


class Signal(Callback):
    """Send this process a signal after step ``at``, as a scheduler or a user would."""

    def __init__(self, at: int, signum: int) -> None:
        self.at, self.signum = at, signum

    def on_step(self, state) -> None:
        if state.step == self.at:
            os.kill(os.getpid(), self.signum)
            time.sleep(0.05)


def test_sigterm_saves_a_checkpoint_and_records_the_stop(tmp_path) -> None:
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, cuda_graphs=False), data=bundle(),
              callbacks=[Signal(2, signal.SIGTERM)])  # fmt: skip
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pt")["step"] == 2
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted at step 2"
    result = train(config(tmp_path, cuda_graphs=False, resume=True), data=bundle())
    assert result.steps == 6


class Crash(Callback):
    def on_step(self, state) -> None:
        if state.step == 2:
            raise RuntimeError("disk controller on fire")


def test_an_unexpected_error_is_the_recorded_status(tmp_path) -> None:
    with pytest.raises(RuntimeError):
        train(config(tmp_path), data=bundle(), callbacks=[Crash()])
    status = json.loads((tmp_path / "run" / "run.json").read_text())["status"]
    assert status == "failed: RuntimeError: disk controller on fire"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a GPU-less machine")
def test_predict_and_evaluate_check_the_device_first(tmp_path, capsys) -> None:
    for argv in (["predict", str(tmp_path), str(tmp_path), "--device", "gpu"],
                 ["evaluate", str(tmp_path), str(tmp_path), "--device", "cuda"]):  # fmt: skip
        code, err = run_cli(argv, capsys)
        assert code == 2 and "device" in err and len(err.strip().splitlines()) == 1
