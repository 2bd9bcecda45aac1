"""Checkpoints: atomic writes, RNG states, and a bit-exact resume after SIGKILL (CPU)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.train import load_checkpoint, save_checkpoint
from resnetlab.train.checkpoint import rng_state, set_rng_state
from resnetlab.weights import load_weights, save_weights
from test_files import fill_disk


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint({"rng": rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])  # loads with weights_only=True
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_a_full_disk_during_torch_save_is_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    fill_disk(monkeypatch)
    with pytest.raises(ResnetlabError) as err:  # torch.save itself raises "unexpected pos"
        save_checkpoint({"step": 2, "w": torch.zeros(100_000)}, path)
    assert "no space left" in str(err.value) and "last.pt" in str(err.value)
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_a_full_disk_while_saving_a_fine_tuned_model_keeps_the_old_one(tmp_path, monkeypatch, name):
    """The files a fine-tuning run (and a Hub folder) ends with are written the same way."""
    path = save_weights({"w": torch.ones(3)}, tmp_path / name)
    fill_disk(monkeypatch)
    with pytest.raises(ResnetlabError, match=f"no space left .* writing {name}"):
        save_weights({"w": torch.zeros(100_000)}, path)
    monkeypatch.undo()
    assert torch.equal(load_weights(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_kill_during_save_never_leaves_a_corrupt_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    script = textwrap.dedent(f"""
        import time, torch
        from resnetlab.train import save_checkpoint
        def slow_save(obj, f):
            f.write(b"PK partial")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        torch.save = slow_save
        save_checkpoint({{"step": 2}}, {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert load_checkpoint(path)["step"] == 1


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ResnetlabError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "last.pt")


def write_npz(path: Path, size: int = 8) -> None:
    """A small learnable 4-class set in the MedMNIST .npz layout."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 160), ("val", 32), ("test", 32)):
        labels = np.arange(n) % 4
        images = rng.integers(0, 120, (n, size, size, 3), dtype=np.uint8)
        for k in range(4):
            r, c = divmod(k, 2)
            h = size // 2
            images[labels == k, r * h : (r + 1) * h, c * h : (c + 1) * h, k % 3] = 250
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.reshape(-1, 1)
    np.savez(path, **arrays)


def cli_args(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "resnetlab.cli", "train", "--model", "resnet20",
            "--data", str(data), "--out", str(out), "--max-iters", "30", "--batch-size", "16",
            "--lr", "0.05", "--milestones", "12,24", "--checkpoint-every", "3", "--log-every",
            "1", "--eval-every", "15", "--ema", "0.9", "--seed", "3", "--no-progress"]  # fmt: skip


def losses(run: Path) -> list[tuple[int, float]]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(tmp_path):
    data = tmp_path / "patches.npz"
    write_npz(data)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    reference = subprocess.run(cli_args(data, tmp_path / "a"), env=env, capture_output=True,
                               text=True, timeout=300)  # fmt: skip
    assert reference.returncode == 0, reference.stderr

    run = tmp_path / "b"
    proc = subprocess.Popen(cli_args(data, run), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if (run / "last.pt").is_file() and load_checkpoint(run / "last.pt")["step"] >= 6:
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = load_checkpoint(run / "last.pt")["step"]
    assert 6 <= killed_at < 30

    resumed = subprocess.run([*cli_args(data, run)[:4], "--out", str(run), "--resume",
                              "--no-progress"], env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert losses(run) == losses(tmp_path / "a")  # every step's loss, exactly
    assert len(losses(run)) == 30
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(run / "last.pt")
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(state_a[i]["momentum_buffer"], state_b[i]["momentum_buffer"])
               for i in state_a)  # fmt: skip
    assert json.loads((run / "run.json").read_text())["timing"]["resumed"][0]["step"] == killed_at


def test_train_on_a_disk_that_fills_up_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    """The disk fills once the first last.pt and best.pt are written: the next checkpoint is
    one error line, exit 2, and the two files stay as they were (loadable, step 2)."""
    data, run = tmp_path / "patches.npz", tmp_path / "run"
    write_npz(data)

    def full(temp: Path) -> bool:
        done = (run / "last.pt").exists() and (run / "best.pt").exists()
        return done and temp.name.startswith((".last.pt.", ".best.pt."))

    fill_disk(monkeypatch, full)
    argv = ["train", "--model", "resnet20", "--data", str(data), "--out", str(run),
            "--max-iters", "4", "--batch-size", "4", "--checkpoint-every", "2", "--eval-every",
            "2", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "no space left" in errors[0] and "Traceback" not in errors[0]
    monkeypatch.undo()
    assert load_checkpoint(run / "last.pt")["step"] == 2
    assert load_checkpoint(run / "best.pt")["step"] == 2
    assert not list(run.glob(".*.tmp"))
    assert json.loads((run / "run.json").read_text())["status"].startswith("failed")
