"""The comparison table: counts against torchvision's published figures, claims, throughput."""

from __future__ import annotations

import json
import re

import pytest

from resnetlab.analysis.throughput import measure_throughput
from resnetlab.cli import main
from resnetlab.experiments.compare import (
    CompareConfig,
    derived_claims,
    format_table,
    model_row,
    run_compare,
)
from resnetlab.models import create_model


def test_resnet50_counts_match_torchvision_metadata():
    row = model_row("resnet50", CompareConfig(speed=False))
    assert row["params"] == 25_557_032
    assert abs(row["macs"] / 4.089e9 - 1) < 0.005  # torchvision "GFLOPS" are MACs
    assert (row["depth"], row["skips"]) == (50, 16)
    assert row["top1"] == pytest.approx(76.13) and "torchvision" in row["top1_source"]
    assert row["fp32_mib"] == pytest.approx(25_557_032 * 4 / 2**20, abs=0.01)
    assert row["file_mib"] is not None and abs(row["file_mib"] - row["fp32_mib"]) < 1


def test_claims_are_computed_from_the_rows():
    rows = [
        {"model": "vgg19", "params": 1000, "macs": 400, "skips": 0, "top1": 70.0},
        {"model": "resnet50", "params": 250, "macs": 100, "skips": 16, "top1": 75.5},
    ]
    claims = derived_claims(rows, CompareConfig(speed=False))
    assert claims == [
        "ResNet-50 has 4.0× fewer parameters than VGG-19 (0.00M vs 0.00M) and 4.0× fewer "
        "multiply-accumulates, with higher published top-1 (75.50 vs 70.00 %)."
    ]
    rows[1]["params"] = 2000
    assert "2.0× more parameters" in derived_claims(rows, CompareConfig(speed=False))[0]


def test_throughput_is_positive_and_states_its_settings():
    model = create_model("resnet18", num_classes=10)
    for mode in ("forward", "train"):
        result = measure_throughput(model, mode=mode, batch=2, input_size=32, iters=1)
        assert result.images_per_s > 0
        assert (result.batch, result.input_size, result.device, result.precision) == (
            2,
            32,
            "cpu",
            "fp32",
        )


def test_run_folder_and_table_with_speed(tmp_path):
    config = CompareConfig(models=["resnet18", "vgg11"], batch=2, input_size=32, iters=1)
    run_dir, rows, claims = run_compare(config, tmp_path / "run", progress=False)
    for name in ("config.json", "run.json", "compare.json", "compare.csv", "compare.png"):
        assert (run_dir / name).is_file(), name
    assert all(r["train_img_s"] > 0 and r["forward_img_s"] > 0 for r in rows)
    ratio = rows[1]["params"] / rows[0]["params"]
    assert f"{ratio:.1f}× fewer parameters" in claims[0]
    assert any("img/s" in c for c in claims)
    table = format_table(rows, config)
    assert "batch 2, 32×32, fp32" in table and "published" in table


def test_cli_json_and_resume(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "resnet18", "--no-speed", "--json", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"][0]["params"] == 11_689_512
    assert json.loads((out / "run.json").read_text())["command"].startswith(
        "resnetlab compare resnet18 --no-speed --json"
    )
    assert main(["compare", "resnet18", "--no-speed", "--out", str(out)]) == 2  # not empty
    assert "--resume" in capsys.readouterr().err
    assert main(["compare", "resnet18", "--no-speed", "--csv", "--out", str(out), "--resume"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model,params,macs") and len(lines) == 2


def test_cli_rejects_unknown_model_and_bad_settings(capsys, tmp_path):
    assert main(["compare", "resnet5O", "--no-speed"]) == 2
    assert re.search(r"unknown model 'resnet5O'.*resnet50", capsys.readouterr().err)
    assert main(["compare", "resnet18", "--batch", "1", "--out", str(tmp_path / "x")]) == 2
    assert "batch (--batch) must be >= 2, got 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
