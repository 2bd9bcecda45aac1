"""The GPU suite runs end to end (at toy sizes, on whatever device is here) and writes its table."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_smoke_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke", "--no-compile",
         "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    table = json.loads((out / "table.json").read_text())
    assert table["smoke"] is True
    workloads = {r["workload"] for r in table["rows"]}
    for expected in ("torchvision resnet50 train", "resnetlab resnet50 train",
                     "resnetlab resnet50 inference", "resnetlab resnet18 train",
                     "resnetlab resnet56 train", "resnetlab resnet20 train",
                     "scaling: depth at fixed batch"):  # fmt: skip
        assert expected in workloads, expected
    timed = [r for r in table["rows"] if r["ms"] is not None]
    assert timed and all(math.isfinite(r["img_s"]) and r["img_s"] > 0 for r in timed)
    ratios = [r["vs_tv"] for r in table["rows"] if "vs_tv" in r]
    assert ratios and all(v > 0 for v in ratios)
    assert (out / "scaling.png").stat().st_size > 1000
