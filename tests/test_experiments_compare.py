"""The comparison table: counts against torchvision's published figures, claims, throughput."""

from __future__ import annotations

import json
import re
import statistics
import time

import pytest

from resnetlab.analysis.throughput import measure_throughput
from resnetlab.cli import main
from resnetlab.experiments import compare, speed
from resnetlab.experiments.compare import (
    CompareConfig,
    derived_claims,
    format_table,
    model_row,
    run_compare,
    speed_findings,
)
from resnetlab.experiments.speed import Spread, add_speeds, spread_of, unresolved
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


def test_default_compare_counts_and_times_nothing(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("the default compare timed a model")

    monkeypatch.setattr(speed, "measure_throughput", refuse)
    monkeypatch.setattr(compare, "time_model", refuse)
    out = tmp_path / "cmp"
    start = time.perf_counter()
    assert main(["compare", "--out", str(out), "--json"]) == 0  # the default models
    rows = json.loads(capsys.readouterr().out)["rows"]
    print(f"default compare: {time.perf_counter() - start:.1f} s")
    assert [r["model"] for r in rows] == compare.DEFAULT_MODELS
    assert rows[0]["params"] == 138_357_544 and rows[1]["macs"] == 19_632_062_464  # VGG-16, -19
    assert not any("img_s" in key or "unresolved" in key for r in rows for key in r)
    assert not (out / "speed.jsonl").exists()
    table = (out / "compare.txt").read_text()
    assert "img/s" not in table and "params (M)" in table
    assert "img_s" not in (out / "compare.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_speed_gives_medians_with_their_spread(tmp_path):
    config = CompareConfig(models=["resnet20", "resnet32"], speed=True, batch_size=2, image_size=8,
                           timing_iters=1, timing_warmup=1, repeats=3)  # fmt: skip
    run_dir, result = run_compare(config, tmp_path / "run", progress=False)
    rows, claims = result["rows"], result["claims"]
    for name in ("config.json", "run.json", "compare.json", "compare.csv", "compare.txt"):
        assert (run_dir / name).is_file(), name
    journal = (run_dir / "measurements.jsonl").read_text().splitlines()
    timings = [t for t in map(json.loads, journal) if "img_s" in t]
    assert len(timings) == 2 * 2 * 3  # models x modes x repeats
    assert [t["model"] for t in timings[:4]] == ["resnet20"] * 2 + ["resnet32"] * 2  # interleaved
    for row in rows:
        assert row["repeats"] == 3
        for mode in ("forward", "train"):
            key = (row["model"], mode)
            values = [t["img_s"] for t in timings if (t["model"], t["mode"]) == key]
            assert row[f"{mode}_img_s"] == pytest.approx(statistics.median(values), abs=1e-4)
            assert row[f"{mode}_img_s_min"] == pytest.approx(min(values), abs=1e-4)
            assert row[f"{mode}_img_s_max"] == pytest.approx(max(values), abs=1e-4)
            assert isinstance(row[f"{mode}_unresolved"], bool)
    assert all("img/s" in c and ("Not resolved" in c or "exceeds the spread" in c)
               for c in claims)  # only a contradiction of the MACs is worth a sentence here
    table = format_table(rows, config)
    assert "batch 2, 8×8, fp32; median (min–max) of 3 repeats" in table
    assert "train img/s (min–max)" in table


def test_a_spread_larger_than_the_difference_is_flagged():
    assert unresolved(Spread(10.0, 8.0, 12.0), Spread(11.0, 10.5, 11.5))  # width 4 > diff 1
    assert not unresolved(Spread(10.0, 9.9, 10.1), Spread(20.0, 19.8, 20.2))  # clear
    assert spread_of([3.0, 1.0, 2.0, 10.0]) == Spread(2.5, 1.0, 10.0)
    timings = [{"model": m, "mode": mode, "repeat": i, "img_s": v, "device": "cpu",
                "precision": "fp32"}
               for m, values in (("resnet18", [10.0, 10.1, 9.9]), ("resnet34", [10.5, 8.0, 13.0]),
                                 ("vgg19", [20.0, 19.9, 20.1]))
               for mode in ("forward", "train") for i, v in enumerate(values)]  # fmt: skip
    rows = [{"model": "resnet18", "params": 11, "macs": 1800, "skips": 8, "top1": None},
            {"model": "resnet34", "params": 21, "macs": 3600, "skips": 16, "top1": None},
            {"model": "vgg19", "params": 143, "macs": 19600, "skips": 0, "top1": None}]  # fmt: skip
    rows = add_speeds(rows, timings)
    assert [r["train_unresolved"] for r in rows] == [True, True, False]
    config = CompareConfig(speed=True)
    table = format_table([dict(r, top1_source="", file_mib=None, fp32_mib=0.0, depth=0)
                          for r in rows], config)  # fmt: skip
    lines = table.splitlines()
    assert lines[2].endswith("~") and lines[3].endswith("~") and not lines[4].endswith("~")
    assert "~: the spread over repeats is at least the difference" in table
    findings = speed_findings(rows, config)
    contradiction = [f for f in findings if f.startswith("ResNet-34 trained faster than ResNet-18")]
    assert len(contradiction) == 1 and "2.00× the MACs. Not resolved" in contradiction[0]
    vgg = [f for f in findings if "ResNet-18 trains at" in f][0]
    assert "exceeds the spread" in vgg  # 20 against 10 img/s: resolved
    rows[1]["train_img_s"], rows[1]["train_img_s_min"], rows[1]["train_img_s_max"] = 15, 14.9, 15.1
    clear = [f for f in speed_findings(rows, config) if "trained faster than ResNet-18" in f]
    assert "exceeds the spread" in clear[0] and "Not resolved" not in clear[0]


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
    x = str(tmp_path / "x")
    assert main(["compare", "resnet18", "--speed", "--batch-size", "0", "--out", x]) == 2
    assert "batch_size (--batch-size) must be >= 1, got 0" in capsys.readouterr().err
    assert main(["compare", "resnet18", "--speed", "--repeats", "2", "--out", x]) == 2
    assert "repeats (--repeats) must be >= 3, got 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
