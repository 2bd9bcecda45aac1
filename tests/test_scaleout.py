"""Scale-out of a study over torchrun's processes (2 Gloo processes on the CPU): the files are
those one process writes, bit for bit; an error on one rank stops every rank and is recorded;
a resumed run takes only what its journal lacks, split over the ranks in plan order."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import resnetlab
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.experiments.degradation import Degradation, DegradationConfig
from resnetlab.experiments.runner import run_study
from resnetlab.files import LOCK_NAME
from resnetlab.runfolder import read_jsonl

# A source checkout is put on the children's path; an installed package is found without it
# (a site-packages folder on PYTHONPATH would shadow the standard library with its backports).
SRC = Path(resnetlab.__file__).resolve().parents[1]
CHILD_PATH = [str(SRC)] if SRC.name == "src" else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``args`` under torchrun, 2 processes on 127.0.0.1, one thread each."""
    path = os.pathsep.join([*CHILD_PATH, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_gloo_processes_write_what_one_process_writes(tmp_path, tiny_npz, capsys):
    argv = ["lesion", "resnet20", "plain20", "--data", str(tiny_npz), "--seeds", "2",
            "--eval-size", "20", "--max-k", "2", "--draws", "2", "--normalisation", "none",
            "--threads", "1", "--quiet"]  # fmt: skip
    two = torchrun("-m", "resnetlab", *argv, "--out", str(tmp_path / "two"), cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("ResNet claim on resnet20") == 1, "rank 0 alone tells the result"
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    one, two_files = (sorted(p.name for p in (tmp_path / d).iterdir()) for d in ("one", "two"))
    assert one == two_files and "lesion_seeds.csv" in one and "lesion_k.png" in one
    for name in set(one) - {"run.json", LOCK_NAME}:  # times, the process count; a process id
        same = (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
        assert same, name
    ids = [r["id"] for r in read_jsonl(tmp_path / "two" / "measurements.jsonl")]
    assert ids == ["net:0:seed0", "net:1:seed0", "net:0:seed1", "net:1:seed1"]
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["status"] == "completed" and run["machine"]["world_size"] == 2


def test_gradient_flow_over_two_processes_writes_what_one_process_writes(tmp_path):
    argv = ["gradient-flow", "--models", "resnet20", "plain20", "mlp10", "--seeds", "2",
            "--batch-size", "4", "--quiet"]  # fmt: skip
    two = torchrun("-m", "resnetlab", *argv, "--out", str(tmp_path / "two"), cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each child: bit for bit needs the same reductions
    try:
        assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    one, two_files = (sorted(p.name for p in (tmp_path / d).iterdir()) for d in ("one", "two"))
    assert one == two_files and "layer_responses_sorted.png" in one
    for name in set(one) - {"run.json", LOCK_NAME}:
        same = (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
        assert same, name
    assert json.loads((tmp_path / "two" / "run.json").read_text())["machine"]["world_size"] == 2


STEPS = textwrap.dedent("""
    import json, os, sys
    from dataclasses import dataclass
    from resnetlab.experiments.runner import Study, Summary, run_study
    from resnetlab.settings import setting

    @dataclass
    class Settings:
        count: int = setting(6, "measurements", ">= 1")

    class Steps(Study):
        name, scale_out = "steps", True

        def __init__(self, config, fail=None):
            super().__init__(config, progress=False)
            self.fail = fail

        def measurements(self):
            return [(f"m{i}", i) for i in range(self.config.count)]

        def measure(self, i):
            if i == self.fail:
                raise RuntimeError(f"broken at {i}")
            return {"value": i * i, "rank": int(os.environ["RANK"])}

        def summarise(self, records):
            return Summary({"values": [r["value"] for r in records], "summary": []})

    out, seen = sys.argv[1], {}
    try:
        run_study(Steps(Settings(), fail=3), out)
    except Exception as exc:
        seen["error"] = f"{type(exc).__name__}: {exc}"
    seen["status"] = json.load(open(f"{out}/run.json"))["status"]
    seen["values"] = run_study(Steps(Settings()), out, resume=True).result["values"]
    json.dump(seen, open(f"{out}-rank{os.environ['RANK']}.json", "w"))
""")


def test_a_failing_rank_stops_both_and_a_resume_takes_what_the_journal_lacks(tmp_path):
    script = tmp_path / "steps.py"
    script.write_text(STEPS)
    proc = torchrun(str(script), str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp_path / f"run-rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0]["error"] == "RankFailed: rank 1: RuntimeError: broken at 3"
    assert seen[1]["error"] == "RuntimeError: broken at 3"  # its own error, as it was raised
    assert seen[0]["status"] == "failed: RankFailed: rank 1: RuntimeError: broken at 3"
    assert seen[0]["values"] == seen[1]["values"] == [0, 1, 4, 9, 16, 25]
    journal = read_jsonl(tmp_path / "run" / "measurements.jsonl")
    # Round by round, one measurement per rank: m0-m2 before the failure, then m3-m5 resumed.
    assert [(r["id"], r["rank"]) for r in journal] == [
        ("m0", 0), ("m1", 1), ("m2", 0), ("m3", 0), ("m4", 1), ("m5", 0)]  # fmt: skip


def test_a_study_that_trains_is_not_split(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun; refused before any group
    monkeypatch.setattr("resnetlab.experiments.scaleout.distributed.setup",
                        lambda *a, **k: pytest.fail("joined a group"))  # fmt: skip
    with pytest.raises(ResnetlabError, match="degradation does not split its measurements"):
        run_study(Degradation(DegradationConfig(data="synthetic", depths=[8, 14], budget=2)),
                  tmp_path / "d")  # fmt: skip
    assert not (tmp_path / "d").exists()
