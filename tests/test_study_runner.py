"""The study runner: inputs checked before any folder, resume only from the same inputs, the
run-folder lock, and run.json's status on every exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.experiments import landscape as landscape_module
from resnetlab.experiments.landscape import LandscapeConfig, run_landscape
from resnetlab.experiments.runner import Study, Summary, run_study
from resnetlab.files import LOCK_NAME
from resnetlab.settings import setting


def _config(data, weights, **changes) -> LandscapeConfig:
    base = dict(model="resnet20", pretrained=str(weights), data=str(data), train_size=10,
                points_1d=3, grid=0, normalisation="none", batch_size=10)  # fmt: skip
    return LandscapeConfig(**(base | changes))


def _weights(path, seed: int):
    torch.manual_seed(seed)
    torch.save(create_model("resnet20").state_dict(), path)
    return path


def test_a_resume_from_replaced_weights_is_refused(tmp_path, tiny_npz):
    weights = _weights(tmp_path / "w.pt", 0)
    out = tmp_path / "run"
    _, first = run_landscape(_config(tiny_npz, weights), out, progress=False)
    assert json.loads((out / "run.json").read_text())["inputs"]["weights"].startswith("sha256:")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    _weights(weights, 1)  # the same file name, other weights
    with pytest.raises(ResnetlabError, match="other inputs: weights changed"):
        run_landscape(_config(tiny_npz, weights), out, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    _weights(weights, 0)  # the original weights again: the resume is the same run
    _, again = run_landscape(_config(tiny_npz, weights), out, resume=True, progress=False)
    assert again["line"] == first["line"]
    other = tmp_path / "other.npz"
    with np.load(tiny_npz) as arrays:
        np.savez(other, **{k: v[::-1] for k, v in arrays.items()})  # the same spec, new images
    run_landscape(_config(other, weights), tmp_path / "run2", progress=False)
    os.utime(other, ns=(0, 0))  # another copy of the data under the same name
    with pytest.raises(ResnetlabError, match="other inputs: data changed"):
        run_landscape(_config(other, weights), tmp_path / "run2", resume=True, progress=False)


def test_a_run_from_before_a_setting_was_renamed_resumes(tmp_path, tiny_npz):
    weights = _weights(tmp_path / "w.pt", 0)
    out = tmp_path / "run"
    _, first = run_landscape(_config(tiny_npz, weights), out, progress=False)
    config = json.loads((out / "config.json").read_text())
    config["batch"] = config.pop("batch_size")  # as written before --batch became --batch-size
    (out / "config.json").write_text(json.dumps(config))
    _, again = run_landscape(_config(tiny_npz, weights), out, resume=True, progress=False)
    assert again["line"] == first["line"]
    assert "batch" not in json.loads((out / "config.json").read_text())
    with pytest.raises(ResnetlabError, match=r"other settings \(batch_size\)"):
        run_landscape(_config(tiny_npz, weights, batch_size=5), out, resume=True, progress=False)


def test_a_huge_grid_is_refused_before_any_folder(tmp_path, tiny_npz, capsys):
    weights = _weights(tmp_path / "w.pt", 0)
    out = tmp_path / "run"
    argv = ["loss-landscape", "resnet20", "--pretrained", str(weights), "--data", str(tiny_npz),
            "--grid", "100000", "--train-size", "10", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "10,000,000,000" in err[0] and "GiB" in err[0]
    assert "hours" in err[0] and "--grid 101" in err[0]
    assert not out.exists()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_code_running_interpolation_start_is_refused_before_the_sweep(
    tmp_path, tiny_npz, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    weights = _weights(tmp_path / "w.pt", 0)
    torch.save({"model": _RunsCode()}, tmp_path / "evil.pt")
    calls = []
    monkeypatch.setattr(landscape_module, "evaluate_point", lambda *a: calls.append(a))
    config = _config(tiny_npz, weights, interpolate_from=str(tmp_path / "evil.pt"))
    with pytest.raises(ResnetlabError, match="evil.pt: refused, it does not load as tensors only"):
        run_landscape(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "pwned").exists() and not calls and not (tmp_path / "run").exists()
    missing = _config(tiny_npz, weights, interpolate_from=str(tmp_path / "nothing.pt"))
    with pytest.raises(ResnetlabError, match="no such file"):
        run_landscape(missing, tmp_path / "run", progress=False)
    with pytest.raises(ResnetlabError, match="no data set named or found"):
        run_landscape(_config(tmp_path / "none.npz", weights), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@dataclass
class _Settings:
    scale: int = setting(10, "a factor", ">= 1")


class _Steps(Study):
    """A study of three measurements that can fail or be interrupted at the second."""

    name = "steps"

    def __init__(self, config, stop=None):
        super().__init__(config, progress=False)
        self.stop = stop

    def measurements(self):
        return [(f"m{i}", i) for i in range(3)]

    def measure(self, spec):
        if spec == 1 and self.stop == "error":
            raise RuntimeError("broken measurement")
        if spec == 1 and self.stop == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        return {"value": spec * self.config.scale}

    def summarise(self, records):
        return Summary({"values": [r["value"] for r in records], "summary": ["three values"]})


def _status(folder) -> str:
    return json.loads((folder / "run.json").read_text())["status"]


def test_status_on_every_exit_and_one_journal(tmp_path):
    with pytest.raises(ResnetlabError, match=r"scale \(--scale\) must be >= 1"):
        run_study(_Steps(_Settings(scale=0)), tmp_path / "refused")  # bounds: check_settings
    assert not (tmp_path / "refused").exists()
    config = _Settings()
    with pytest.raises(RuntimeError, match="broken"):
        run_study(_Steps(config, "error"), tmp_path / "a")
    assert _status(tmp_path / "a") == "failed: RuntimeError: broken measurement"
    with pytest.raises(KeyboardInterrupt):
        run_study(_Steps(config, "sigterm"), tmp_path / "b")
    assert _status(tmp_path / "b") == "interrupted"
    journal = (tmp_path / "b" / "measurements.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in journal] == [{"id": "m0", "value": 0}]
    folder, result = run_study(_Steps(config), tmp_path / "b", resume=True)
    assert result["values"] == [0, 10, 20] and _status(folder) == "completed"
    assert len((tmp_path / "b" / "measurements.jsonl").read_text().splitlines()) == 3


HOLD_LOCK = """
import sys, time
from resnetlab.files import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_locked_folder_is_refused_and_left_as_it_was(tmp_path):
    folder = tmp_path / "c"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ResnetlabError, match=f"in use by process {holder.pid}"):
            run_study(_Steps(_Settings()), folder, resume=True)
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()
    assert run_study(_Steps(_Settings()), folder, resume=True).result["values"] == [0, 10, 20]


def test_cross_validation_takes_the_lock_and_records_a_failure(tmp_path, monkeypatch):
    from resnetlab.finetune import folds
    from resnetlab.finetune.options import FinetuneOptions

    def broken(options):
        raise RuntimeError("fold failed")

    monkeypatch.setattr(folds, "finetune", broken)
    out = tmp_path / "cv"
    options = FinetuneOptions(data="d.npz", out_dir=str(out), folds=2)
    with pytest.raises(RuntimeError, match="fold failed"):
        folds.cross_validate(options)
    assert _status(out) == "failed: RuntimeError: fold failed"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ResnetlabError, match="in use by process"):
            folds.cross_validate(options)
    finally:
        holder.kill()
        holder.wait()
    assert _status(out) == "failed: RuntimeError: fold failed"


def test_a_net_without_blocks_is_refused_before_any_folder(tmp_path, capsys):
    out = tmp_path / "lesion"
    assert main(["lesion", "vgg11", "--data", "cifar10", "--out", str(out)]) == 2
    assert "not a ResNet or plain twin" in capsys.readouterr().err
    assert not out.exists()
