"""The degradation experiment: the verdict from curves, the budget scaling, a tiny real run."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest

from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.evaluation.seeds import difference
from resnetlab.experiments.degradation import (
    DegradationConfig,
    check_config,
    final_errors,
    run_degradation,
    scaled_milestones,
    verdict,
)


def curve(train: list[float], test: list[float], every: int = 10) -> dict:
    """Hand-made curves: training error per log step of 1, test error every ``every`` steps."""
    return {
        "train": {"step": list(range(1, len(train) + 1)), "error": train},
        "val": {"step": [], "error": []},
        "test": {"step": [every * (i + 1) for i in range(len(test))], "error": test},
    }


def finals_of(curves: dict[str, tuple[str, int, dict]], iterations: int) -> dict:
    return {
        name: {"kind": kind, "depth": depth, **final_errors(c, iterations)}
        for name, (kind, depth, c) in curves.items()
    }


def test_final_training_error_is_the_mean_of_the_last_tenth() -> None:
    c = curve([0.9] * 90 + [0.2] * 5 + [0.4] * 5, [0.5, 0.3])
    finals = final_errors(c, 100)
    assert finals["train"] == pytest.approx(0.3)  # steps 91..100
    assert finals["test"] == 0.3 and finals["val"] is None and finals["steps"] == 100


def test_claim_one_holds_when_the_deeper_plain_net_trains_worse() -> None:
    finals = finals_of(
        {
            "plain20": ("plain", 20, curve([0.5] * 90 + [0.081] * 10, [0.12])),
            "plain56": ("plain", 56, curve([0.6] * 90 + [0.123] * 10, [0.15])),
            "resnet20": ("residual", 20, curve([0.5] * 90 + [0.07] * 10, [0.09])),
            "resnet56": ("residual", 56, curve([0.5] * 90 + [0.03] * 10, [0.07])),
        },
        100,
    )
    claims = {c["claim"]: c for c in verdict(finals)}
    assert claims[1]["holds"] and claims[2]["holds"]
    assert "plain-56 final training error 12.3 % > plain-20 8.1 %: holds" in claims[1]["text"]
    assert "ResNet-56 final training error 3.0 % < ResNet-20 7.0 %" in claims[2]["text"]
    assert "test error 7.0 % < 9.0 %" in claims[2]["text"]


def test_claims_that_do_not_hold_are_reported_so() -> None:
    finals = finals_of(
        {
            "plain8": ("plain", 8, curve([0.30] * 10, [0.3])),
            "plain14": ("plain", 14, curve([0.25] * 10, [0.3])),
            "plain20": ("plain", 20, curve([0.28] * 10, [0.3])),
            "resnet8": ("residual", 8, curve([0.30] * 10, [0.30])),
            "resnet20": ("residual", 20, curve([0.20] * 10, [0.35])),
        },
        10,
    )
    claims = {c["claim"]: c for c in verdict(finals)}
    assert not claims[1]["holds"]
    assert (
        "plain-20 final training error 28.0 % <= plain-8 30.0 %: does not hold"
        in (claims[1]["text"])
    )
    assert "rises with every step in depth: no" in claims[1]["text"]
    # training error lower but test error higher: the claim (both lower) does not hold
    assert claims[2]["train_holds"] and not claims[2]["test_holds"] and not claims[2]["holds"]
    assert claims[2]["text"].endswith("test error 35.0 % >= 30.0 %: does not hold.")


def test_budget_scales_the_milestones_in_proportion() -> None:
    assert scaled_milestones((32000, 48000), 64000, 1000) == [500, 750]
    assert scaled_milestones((32000, 48000), 64000, 64000) == [32000, 48000]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"depths": [20]}, "at least two"),
        ({"depths": [8, 10]}, r"6n\+2"),
        ({"family": "vgg"}, "unknown family"),
        ({"budget": 0}, "--budget"),
    ],
)
def test_bad_settings_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ResnetlabError, match=message):
        check_config(DegradationConfig(**changes), 64000)


def test_imagenet_family_refuses_depths_it_lacks(tmp_path) -> None:
    config = DegradationConfig(data="synthetic", family="imagenet", depths=[18, 20], budget=1)
    with pytest.raises(ResnetlabError, match="ImageNet-style plain20"):
        run_degradation(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before any folder or data is made


def test_tiny_run_writes_curves_verdict_and_report(tmp_path, capsys) -> None:
    out = tmp_path / "deg"
    argv = ["degradation", "--data", "synthetic", "--depths", "8", "14", "--budget", "4",
            "--batch-size", "16", "--train-size", "100", "--image-size", "16",
            "--eval-every", "2", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    for name in ("config.json", "run.json", "degradation.json", "degradation.png",
                 "degradation.csv", "data.txt", "report.html", "report.md"):  # fmt: skip
        assert (out / name).is_file(), name
    result = json.loads((out / "degradation.json").read_text())
    assert set(result["runs"]) == {"plain8", "plain14", "resnet8", "resnet14"}
    for name, r in result["runs"].items():
        assert (out / name / "metrics.jsonl").is_file() and r["status"] == "completed"
        assert r["curves"]["train"]["step"] == [1, 2, 3, 4]  # logged every iteration
        assert r["curves"]["test"]["step"] == [2, 4]  # evaluated every 2
        assert all(0.0 <= e <= 1.0 for e in r["curves"]["train"]["error"] + [r["test"]])
        assert r["train"] == pytest.approx(r["curves"]["train"]["error"][-1])  # last 10 % of 4
    claims = {c["claim"]: c for c in result["verdict"]}
    assert set(claims) == {1, 2}
    plain = {r["depth"]: r for r in result["runs"].values() if r["kind"] == "plain"}
    numbers = re.findall(r"(\d+\.\d) %", claims[1]["text"])
    assert numbers == [f"{100 * plain[14]['train']:.1f}", f"{100 * plain[8]['train']:.1f}"]
    assert claims[1]["holds"] == (plain[14]["train"] > plain[8]["train"])
    assert result["short_budget"] and "short budget: 4 of 64,000" in result["summary"][0]
    assert result["milestones"] == [2, 3]
    assert "short budget" in (out / "report.md").read_text()
    assert "data:image/png;base64" in (out / "report.html").read_text()
    rows = (out / "degradation.csv").read_text().splitlines()
    assert rows[0].startswith("model,kind,depth,seed,iterations,train error %") and len(rows) == 5

    # resume re-runs only unfinished nets: all are complete, so nothing trains again
    stamp = (out / "plain8" / "metrics.jsonl").stat().st_mtime_ns
    assert main([*argv, "--resume"]) == 0
    assert (out / "plain8" / "metrics.jsonl").stat().st_mtime_ns == stamp
    printed = capsys.readouterr()
    assert printed.out.splitlines()[0].split()[:2] == ["model", "iters"]  # one seed: no column
    assert "degradation [" not in printed.err
    facts = json.loads((out / "resnet14" / "run.json").read_text())
    (out / "resnet14" / "run.json").write_text(json.dumps({**facts, "status": "interrupted"}))
    assert main([*argv, "--resume"]) == 0  # only the unfinished net runs again
    started = re.findall(r"degradation \[\d/4\] (\S+):", capsys.readouterr().err)
    assert started == ["ResNet-14"]
    assert json.loads((out / "resnet14" / "run.json").read_text())["status"] == "completed"
    assert main(argv) == 2  # a non-empty folder without --resume is refused, not overwritten


@pytest.mark.slow
def test_imagenet_pair_runs_on_small_inputs(tmp_path) -> None:
    config = DegradationConfig(
        data="synthetic", family="imagenet", depths=[18, 34], budget=1, batch_size=4,
        image_size=32, train_size=20, device="cpu",
    )  # fmt: skip
    run_dir, result = run_degradation(config, tmp_path / "imagenet", progress=False)
    assert set(result["runs"]) == {"plain18", "plain34", "resnet18", "resnet34"}
    facts = json.loads((run_dir / "resnet34" / "run.json").read_text())
    assert facts["model"]["family"] == "resnet" and facts["data"]["image_size"] == [32, 32]
    assert (run_dir / "degradation.png").is_file() and len(result["verdict"]) == 2


# A fresh interpreter where TrainConfig has gained a field before anything read it: the field is
# a degradation flag and reaches every net's engine run, with no edit to degradation.
NEW_ENGINE_FIELD = """
import json, sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import resnetlab.train.config as engine
from resnetlab.settings import setting

@dataclass
class Engine(engine.TrainConfig):
    fresh_knob: int = setting(3, "an engine setting added later", ">= 1")

engine.TrainConfig = Engine
import resnetlab.experiments.degradation as degradation
from resnetlab.cli import build_parser
from resnetlab.cli.flags import settings_from_args

parser = build_parser()
sub = next(a for a in parser._actions if hasattr(a, "choices") and a.choices)
text = " ".join(sub.choices["degradation"].format_help().split())
args = parser.parse_args(["degradation", "--fresh-knob", "5", "--lr", "0.05"])
config = settings_from_args(degradation.DegradationConfig, args)
runs = []
degradation.train = lambda train_config, **kw: runs.append(train_config)
bundle = SimpleNamespace(classes=[0, 1], in_channels=3)
degradation._train_net(config, "plain", 8, 0, bundle, {"max_iters": 4}, Path(sys.argv[1]), False,
                       False)
print(json.dumps({"help": "--fresh-knob INT" in text and "added later" in text,
                  "default": degradation.DegradationConfig().fresh_knob,
                  "net": [runs[0].fresh_knob, runs[0].lr, runs[0].momentum]}))
"""


def test_a_new_engine_setting_is_a_degradation_flag_with_no_edit(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-c", NEW_ENGINE_FIELD, str(tmp_path / "net")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["help"], "the new field is a flag of degradation, with its help"
    assert facts["default"] is None, "unset: each net keeps the recipe's (or engine's) value"
    assert facts["net"] == [5, 0.05, 0.9], "given, it reaches the net's run; the rest: recipe"


def test_degradation_takes_every_engine_setting_but_those_it_sets_per_net() -> None:
    from resnetlab.experiments.degradation import PER_NET
    from resnetlab.train import TrainConfig

    names = {f.name for f in dataclasses.fields(DegradationConfig)}
    engine = {f.name for f in dataclasses.fields(TrainConfig)}
    assert engine - names == set(PER_NET)
    assert DegradationConfig(grad_clip=1.0, ema=0.99).engine_settings() == {
        "data": "cifar10", "seed": 0, "grad_clip": 1.0, "ema": 0.99,
    }  # fmt: skip
    with pytest.raises(ResnetlabError, match="unknown tracker 'wandb'"):
        DegradationConfig(log=("wandb",))
    with pytest.raises(ResnetlabError, match=r"grad_clip \(--grad-clip\) must be > 0"):
        DegradationConfig(grad_clip=0.0)


def test_several_seeds_give_means_intervals_and_a_verdict_on_them(tmp_path) -> None:
    out = tmp_path / "deg"
    argv = ["degradation", "--data", "synthetic", "--depths", "8", "14", "--budget", "3",
            "--batch-size", "16", "--train-size", "100", "--image-size", "16", "--seeds", "2",
            "--seed", "3", "--eval-every", "3", "--device", "cpu", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "degradation.json").read_text())
    nets = ("plain8", "plain14", "resnet8", "resnet14")
    assert set(result["runs"]) == {*nets, *(f"{n}-seed4" for n in nets)}
    assert {r["seed"] for r in result["runs"].values()} == {3, 4}
    # seeds differ in initialisation: the two runs of one net are not the same run
    p8 = [result["runs"][n]["curves"]["train"]["error"] for n in ("plain8", "plain8-seed4")]
    assert p8[0] != p8[1]
    rows = {r["model"]: r for r in result["over_seeds"]}
    train = [result["runs"][n]["train"] for n in ("plain8", "plain8-seed4")]
    assert rows["plain-8"]["train error % mean"] == pytest.approx(100 * sum(train) / 2, abs=0.01)
    plain = {c["claim"]: c for c in result["verdict"]}[1]
    deep = [result["runs"][n]["train"] for n in ("plain14", "plain14-seed4")]
    d = difference(deep, train)
    assert "95 % CI" in plain["text"] and "means of 2 and 2 seeds" in plain["text"]
    assert plain["holds"] == (d["mean"] > 0 and d["excludes_zero"])
    assert (out / "degradation-seeds.csv").read_text().startswith("model,seeds,train error %")


def test_a_finished_run_resumed_with_more_seeds_trains_only_the_new_seed(tmp_path, capsys):
    out = tmp_path / "deg"
    argv = ["degradation", "--data", "synthetic", "--depths", "8", "14", "--budget", "2",
            "--batch-size", "16", "--train-size", "60", "--image-size", "16",
            "--eval-every", "2", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    stamp = (out / "plain8" / "metrics.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*argv, "--seeds", "2", "--resume"]) == 0
    printed = capsys.readouterr()
    started = re.findall(r"degradation \[\d/8\] (\S+), seed (\d)", printed.err)
    assert sorted(started) == [("ResNet-14", "1"), ("ResNet-8", "1"), ("plain-14", "1"),
                               ("plain-8", "1")]  # fmt: skip
    assert (out / "plain8" / "metrics.jsonl").stat().st_mtime_ns == stamp
    table = printed.out.splitlines()  # the final-error table names each row's seed
    assert table[0].split()[:3] == ["model", "seed", "iters"]
    assert sorted(line.split()[1] for line in table[1:9]) == ["0"] * 4 + ["1"] * 4
    assert json.loads((out / "config.json").read_text())["seeds"] == 2
    assert main([*argv, "--seeds", "1", "--resume"]) == 2  # fewer seeds: other settings
    assert "other settings (seeds)" in capsys.readouterr().err
