"""Data-parallel training launched by torchrun on the CPU (Gloo, 2 processes).

PyTorch's SyncBatchNorm runs on CUDA only, so with BatchNorm each rank normalises its own
half-batch and a 2-process run cannot equal a 1-process run exactly. The equality check
therefore uses a net without BatchNorm; the ResNet-20 run checks that all ranks end with
identical weights and BatchNorm statistics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from resnetlab.train import load_checkpoint

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from torch import nn
    from resnetlab.data import DataBundle, ImageSet
    from resnetlab.train import TrainConfig, train

    def synthetic(n, seed):
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 4
        images = torch.randint(0, 120, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
        for k in range(4):
            r, c = divmod(k, 2)
            images[labels == k, k % 3, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = 250
        return ImageSet(images, labels, ["a", "b", "c", "d"], f"synthetic {seed}")

    class NoBatchNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(8, 4)
        def forward(self, x):
            return self.fc(self.features(x))

    out, which = sys.argv[1], sys.argv[2]
    data = DataBundle(synthetic(128, 0), synthetic(32, 1), synthetic(32, 2), ["a", "b", "c", "d"],
                      3, (8, 8), "synthetic", "synthetic patches")
    config = TrainConfig(model="resnet20", batch_size=32, lr=0.05, max_iters=8, milestones=(4,),
                         eval_every=4, checkpoint_every=4, log_every=1, out_dir=out,
                         progress=False, seed=5)
    torch.manual_seed(0)
    model = NoBatchNorm() if which == "plain" else None
    result = train(config, model=model, data=data)
    rank = int(os.environ.get("RANK", "0"))
    torch.save({"metrics": result.metrics, "steps": result.steps,
                "state": result.model.state_dict()}, f"{out}/result{rank}.pt")
""")


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "run_ddp.py"
    path.write_text(SCRIPT)
    return path


def launch(script, out, which: str, processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    prefix = [sys.executable]
    if processes > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    proc = subprocess.run([*prefix, str(script), str(out), which], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def train_losses(run) -> list[float]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in records if r["kind"] == "train"]


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_same_global_batch(script, tmp_path):
    launch(script, tmp_path / "one", "plain", 1)
    launch(script, tmp_path / "two", "plain", 2)
    one, two = (
        load_checkpoint(tmp_path / "one" / "last.pt"),
        load_checkpoint(tmp_path / "two" / "last.pt"),
    )
    assert two["step"] == one["step"] == 8
    for key in one["model"]:
        torch.testing.assert_close(two["model"][key], one["model"][key], rtol=1e-5, atol=1e-6)
    assert train_losses(tmp_path / "two") == pytest.approx(train_losses(tmp_path / "one"),
                                                           rel=1e-5)  # fmt: skip
    results = [torch.load(tmp_path / "two" / f"result{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["steps"] for r in results] == [8, 8]
    assert all(torch.equal(results[0]["state"][k], results[1]["state"][k]) for k in one["model"])
    assert results[0]["metrics"]["test_error"] == results[1]["metrics"]["test_error"]


@pytest.mark.slow
def test_ranks_hold_identical_resnet_weights(script, tmp_path):
    launch(script, tmp_path / "bn", "resnet20", 2)
    ckpt = load_checkpoint(tmp_path / "bn" / "last.pt")
    assert ckpt["step"] == 8
    results = [torch.load(tmp_path / "bn" / f"result{r}.pt", weights_only=True) for r in (0, 1)]
    states = [r["state"] for r in results]
    assert any("running_mean" in k for k in states[0])
    for key in states[0]:  # weights and BatchNorm statistics, bit for bit
        assert torch.equal(states[0][key], states[1][key]), key
        assert torch.equal(states[0][key], ckpt["model"][key]), key
    assert json.loads((tmp_path / "bn" / "run.json").read_text())["machine"]["world_size"] == 2
