"""Settings written once: a dataclass field is its command's flag (help, metavar, default,
bounds, choices), and fine-tuning takes every engine setting from ``TrainConfig``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pytest

from resnetlab.cli import Parser, build_parser, main
from resnetlab.cli.finetune import _options, given_options
from resnetlab.cli.flags import add_settings, given_settings, settings_from_args
from resnetlab.errors import ResnetlabError
from resnetlab.experiments.compare import CompareConfig
from resnetlab.experiments.degradation import DegradationConfig
from resnetlab.experiments.demo import DemoConfig
from resnetlab.experiments.gradient_flow import GradientFlowConfig
from resnetlab.experiments.landscape import LandscapeConfig
from resnetlab.experiments.lesion import LesionConfig
from resnetlab.experiments.paths import PathsConfig
from resnetlab.experiments.receptive_field import ReceptiveFieldConfig
from resnetlab.experiments.shattered import ShatteredConfig
from resnetlab.finetune import FinetuneOptions, Preprocessing
from resnetlab.finetune.finetune import engine_config
from resnetlab.settings import compose, setting
from resnetlab.train import TrainConfig


@dataclass
class Toy:
    """A settings class as a new command (or a new field of an old one) would declare it."""

    new_field: int = setting(3, "how many widgets to make", ">= 1")
    rate: float | None = setting(None, "widget rate, e.g. 0.5", "(0, 1)")
    shiny: bool = setting(True, "polish each widget")
    sizes: tuple[int, ...] = setting((2, 4), "widget sizes, e.g. 2,4", ">= 1")
    names: list[str] = setting(help="widget names", factory=lambda: ["a"])
    colour: str = setting("red", "widget colour", choices=("red", "blue"))
    extras: dict[str, object] = setting(help="an extra option, e.g. k=1", factory=dict)


def parser_for(cls: type) -> argparse.ArgumentParser:
    p = Parser(prog="toy")
    add_settings(p, cls)
    return p


def test_a_new_field_is_a_flag_with_its_help_metavar_and_negation():
    text = parser_for(Toy).format_help()
    assert "--new-field INT" in text and "how many widgets to make (default 3) [>= 1]" in text
    assert "--rate FLOAT" in text and "--shiny, --no-shiny" in text and "(default on)" in text
    assert "--sizes INT,INT,..." in text and "--colour {red,blue}" in text
    assert "--names TEXT [TEXT ...]" in text and "--extra KEY=VALUE" in text


def test_parsed_flags_round_trip_into_the_dataclass():
    p = parser_for(Toy)
    args = p.parse_args(["--new-field", "7", "--rate", "0.25", "--no-shiny", "--sizes", "3,5",
                         "--names", "x", "y,z", "--colour", "blue", "--extra", "k=1",
                         "--extra", "on=true"])  # fmt: skip
    toy = settings_from_args(Toy, args)
    assert toy == Toy(7, 0.25, False, (3, 5), ["x", "y", "z"], "blue", {"k": 1, "on": True})
    assert given_settings(p.parse_args([]), Toy) == {}, "a flag not given is absent"
    assert settings_from_args(Toy, p.parse_args([])) == Toy()
    assert settings_from_args(Toy, p.parse_args(["--rate", "none"])).rate is None
    assert p.parse_args(["--colour", "none"]).colour == "none", "a plain str is never None"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--new-field", "0"], "new_field (--new-field) must be >= 1, got 0"),
        (["--rate", "1.5"], "rate (--rate) must be in (0, 1), got 1.5"),
        (["--sizes", "3,0"], "sizes (--sizes) must be >= 1"),
        (["--colour", "rde"], "unknown colour 'rde' (--colour). Did you mean red?"),
    ],
)
def test_bounds_and_choices_are_one_line_errors(argv, words):
    with pytest.raises(ResnetlabError) as caught:
        settings_from_args(Toy, parser_for(Toy).parse_args(argv))
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_value_or_true_false_is_a_one_line_usage_error(capsys):
    for argv in (["--new-field", "many"], ["--shiny", "true"]):
        with pytest.raises(SystemExit) as code:
            parser_for(Toy).parse_args(argv)
        assert code.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("invalid INT value" in err or "true" in err)


def test_compose_adds_a_source_field_with_no_other_edit():
    @dataclass
    class Engine:
        lr: float = setting(0.1, "learning rate", "> 0")
        ema: float | None = setting(None, "weight average decay", "(0, 1)")
        fresh: int = setting(2, "a field added to the engine later", ">= 0")

    @dataclass
    @compose(Engine, exclude=("lr",), defaults={"ema": 0.5})
    class Tuning:
        head: int = setting(1, "fine-tuning's own setting")

    assert Tuning.__composed__ == ("ema", "fresh")
    assert Tuning().ema == 0.5 and Tuning(fresh=3).fresh == 3
    text = parser_for(Tuning).format_help()
    assert "--fresh INT" in text and "a field added to the engine later" in text
    assert "--lr" not in text
    with pytest.raises(TypeError, match="does not take"):
        compose(Engine, defaults={"nope": 1})(type("X", (), {"__annotations__": {}}))


def _option_help(command: str, flag: str) -> str:
    """The help of one flag of a sub-command, as argparse holds it."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    return action.help


def test_finetune_lists_the_engine_settings_with_trains_flags_and_help():
    for flag in ("--ema", "--grad-clip", "--compile", "--precision", "--label-smoothing",
                 "--channels-last", "--warmup-iters", "--momentum"):  # fmt: skip
        assert _option_help("finetune", flag) == _option_help("train", flag), flag


def test_finetune_help_lists_ema_grad_clip_compile_precision(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    for flag in ("--ema FLOAT", "--grad-clip FLOAT", "--compile, --no-compile",
                 "--precision {auto,fp32,bf16}"):  # fmt: skip
        assert flag in text, flag


def test_grad_clip_from_the_finetune_command_line_reaches_the_engine(tmp_path):
    args = build_parser().parse_args(
        ["finetune", "d", "--out", str(tmp_path / "o"), "--grad-clip", "1.0", "--ema", "0.99",
         "--precision", "fp32", "--no-augment", "--compile"]
    )  # fmt: skip
    assert given_options(args) == {"grad_clip": 1.0, "ema": 0.99, "precision": "fp32",
                                   "augment": False, "compile": True}  # fmt: skip
    options = _options(args, "finetune")
    prep = Preprocessing(crop=16, resize=16, mean=[0.5], std=[0.25], channels=1)
    config = engine_config(options, 0.01, 2.0, 4, 8, prep, None, tmp_path / "o" / "phase")
    assert (config.grad_clip, config.ema, config.precision) == (1.0, 0.99, "fp32")
    assert config.compile is True and config.augment is False
    assert (config.lr, config.epochs, config.optimizer, config.schedule) == (
        0.01, 2.0, "adamw", "onecycle"
    )  # fmt: skip


def _write_npz(path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        labels = np.arange(n) % 2
        images = rng.integers(0, 90, (n, 16, 16)) + 130 * labels[:, None, None]
        arrays[f"{split}_images"] = images.astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


@pytest.mark.slow
def test_finetune_run_records_grad_clip_in_the_engine_config(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    argv = ["finetune", str(_write_npz(tmp_path / "g.npz")), "--model", "resnet20",
            "--pretrained", "none", "--full-epochs", "1", "--batch-size", "8", "--grad-clip", "1.0",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((out / "phase2-full" / "config.json").read_text())
    assert config["grad_clip"] == 1.0 and config["optimizer"] == "adamw"
    saved = json.loads((out / "config.json").read_text())
    assert saved["grad_clip"] == 1.0, "the fine-tuning run's own settings hold it too"


# Every command with a settings dataclass: every field is a flag (or its positional argument).
COMMANDS = [
    ("train", TrainConfig, {"out_dir"}),
    ("finetune", FinetuneOptions, {"out_dir", "fold", "data"}),
    ("lr-find", FinetuneOptions, {"out_dir", "fold", "data", "resume", "folds", "tta",
                                  "threshold", "test_size"}),  # fmt: skip
    ("compare", CompareConfig, {"models"}),
    ("degradation", DegradationConfig, set()),
    ("demo", DemoConfig, set()),
    ("gradient-flow", GradientFlowConfig, set()),
    ("loss-landscape", LandscapeConfig, {"model"}),
    ("lesion", LesionConfig, {"models"}),
    ("paths", PathsConfig, {"model"}),
    ("receptive-field", ReceptiveFieldConfig, {"model"}),
    ("shattered", ShatteredConfig, set()),
]


@pytest.mark.parametrize(("command", "cls", "elsewhere"), COMMANDS)
def test_every_field_of_every_command_is_a_flag(command, cls, elsewhere):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices[command]._actions}
    fields = {f.name for f in dataclasses.fields(cls)}
    assert fields - elsewhere <= dests, sorted(fields - elsewhere - dests)
    for action in sub.choices[command]._actions:
        if action.dest in fields and action.option_strings:
            assert action.default is argparse.SUPPRESS, action.dest  # the dataclass decides
            assert action.help, action.dest
