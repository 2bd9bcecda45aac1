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
from resnetlab.cli.explain import CompareRunsSettings, ExplainSettings
from resnetlab.cli.export import ExportSettings
from resnetlab.cli.finetune import (
    EvaluateSettings,
    PredictSettings,
    SweepSettings,
    _options,
    given_options,
)
from resnetlab.cli.flags import REGISTERED, add_settings, given_settings, settings_from_args
from resnetlab.cli.models import ModelsSettings, SummarySettings
from resnetlab.cli.serve import ServeSettings
from resnetlab.cli.studies import ReportSettings, StudyRunSettings
from resnetlab.cli.weights import WeightsSettings
from resnetlab.errors import ResnetlabError
from resnetlab.experiments.cka import CkaConfig
from resnetlab.experiments.compare import CompareConfig
from resnetlab.experiments.degradation import DegradationConfig
from resnetlab.experiments.demo import DemoConfig
from resnetlab.experiments.gradient_flow import GradientFlowConfig
from resnetlab.experiments.hessian import HessianConfig
from resnetlab.experiments.inputs import TrainedNets
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


# Commands whose settings come from the command line alone (nothing saved to resume).
EAGER = {"predict", "evaluate", "explain", "compare-runs", "export", "serve", "summary",
         "models", "weights"}  # fmt: skip
# Every command with a settings dataclass: every field is a flag (or its positional argument).
COMMANDS = [
    ("predict", PredictSettings, set()),
    ("evaluate", EvaluateSettings, set()),
    ("explain", ExplainSettings, set()),
    ("compare-runs", CompareRunsSettings, set()),
    ("export", ExportSettings, set()),
    ("serve", ServeSettings, set()),
    ("lr-find", SweepSettings, set()),
    ("summary", SummarySettings, set()),
    ("models", ModelsSettings, set()),
    ("weights", WeightsSettings, set()),
    ("degradation", StudyRunSettings, set()),
    ("lesion", StudyRunSettings, set()),
    ("cka", StudyRunSettings, set()),
    ("hessian", StudyRunSettings, set()),
    ("demo", StudyRunSettings, set()),
    ("report", ReportSettings, {"run_dirs"}),
    ("train", TrainConfig, set()),
    ("finetune", FinetuneOptions, {"fold"}),
    ("lr-find", FinetuneOptions, {"fold", "resume", "folds", "tta", "threshold", "test_size"}),
    ("compare", CompareConfig, {"models"}),
    ("degradation", DegradationConfig, set()),
    ("demo", DemoConfig, set()),
    ("gradient-flow", GradientFlowConfig, set()),
    ("loss-landscape", LandscapeConfig, {"model"}),
    ("lesion", LesionConfig, {"models"}),
    ("cka", CkaConfig, {"models"}),
    ("hessian", HessianConfig, {"models"}),
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
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for action in sub.choices[command]._actions:
        if action.dest in fields and action.option_strings and command in EAGER:
            # settings from the command line alone: argparse holds the dataclass's default
            assert action.default in (defaults[action.dest], argparse.SUPPRESS), action.dest
            assert action.help, action.dest
        elif action.dest in fields and action.option_strings:
            assert action.default is argparse.SUPPRESS, action.dest  # the dataclass decides
            assert action.help, action.dest


STUDIES = {CkaConfig, CompareConfig, DemoConfig, GradientFlowConfig, HessianConfig,
           LandscapeConfig, LesionConfig, PathsConfig, ReceptiveFieldConfig, ShatteredConfig,
           TrainedNets}  # fmt: skip
# Names two settings classes may each declare with their own help, and why.
MAY_DIFFER: dict[str, str] = {
    "normalisation": "training chooses the normalisation a net learns with (a name or mean/std "
    "per channel); a study reads a trained net's own (auto) or imposes imagenet or none",
    "pretrained": "a study of several nets takes one weights value for all of them or one per "
    "net (a list); every other command takes one",
}


def _reachable() -> set[type]:
    """Every settings dataclass the command line reaches: the classes its commands were built
    from, the groups they inherit, and the classes they were composed from."""
    build_parser()
    todo = [cls for prog, classes in REGISTERED.items() for cls in classes
            if prog.startswith("resnetlab ")]  # fmt: skip
    seen: set[type] = set()
    while todo:
        cls = todo.pop()
        if cls in seen or not dataclasses.is_dataclass(cls):
            continue
        seen.add(cls)
        todo += [base for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)]
        todo += list(cls.__dict__.get("__sources__", ()))
    return seen


def _declared(cls: type) -> dict[str, str]:
    """The settings a class declares itself (neither inherited nor composed): name -> help."""
    own = cls.__dict__.get("__annotations__", {})
    composed = set(cls.__dict__.get("__composed__", ()))
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)
            if f.name in own and f.name not in composed}  # fmt: skip


def test_each_setting_name_is_declared_once_with_one_meaning():
    classes = _reachable()
    assert {TrainConfig, FinetuneOptions, DegradationConfig, PredictSettings, ServeSettings,
            ExportSettings, ExplainSettings, EvaluateSettings, CompareRunsSettings} <= classes
    assert classes >= STUDIES
    helps: dict[str, dict[str, list[str]]] = {}
    for cls in classes:
        for name, text in _declared(cls).items():
            helps.setdefault(name, {}).setdefault(text, []).append(cls.__name__)
    differ = {name: by for name, by in helps.items() if len(by) > 1 and name not in MAY_DIFFER}
    assert not differ, differ
    twice = {name: by for name, by in helps.items()
             if sum(map(len, by.values())) > 1 and name not in MAY_DIFFER}  # fmt: skip
    assert not twice, f"declared in two classes (compose or inherit one): {twice}"


def test_the_walk_finds_a_setting_declared_twice():
    @dataclass
    class Again:
        seed: int = setting(0, "another seed")

    REGISTERED["resnetlab again"] = [Again]
    try:
        names = {}
        for cls in _reachable():
            for name in _declared(cls):
                names.setdefault(name, []).append(cls.__name__)
        assert sorted(names["seed"]) == ["Again", "SeedSettings"]
        assert "seed" not in _declared(TrainConfig) and "seed" not in _declared(DegradationConfig)
    finally:
        del REGISTERED["resnetlab again"]


@pytest.mark.parametrize("command", ["train", "finetune", "degradation", "predict", "evaluate",
                                     "explain", "serve"])  # fmt: skip
def test_one_device_setting_with_one_default_in_every_command(command):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if "--device" in a.option_strings)
    assert action.help == _option_help("train", "--device") or command == "degradation"
    assert "auto (a GPU when present, else the CPU)" in action.help
    defaults = {f.name: f.default for cls in REGISTERED[f"resnetlab {command}"]
                for f in dataclasses.fields(cls)}  # fmt: skip
    assert defaults["device"] in ("auto", None)  # None: degradation's recipe, whose is auto


def test_auto_is_the_cpu_on_a_machine_without_a_gpu(monkeypatch):
    from resnetlab.groups import device_name

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert device_name("auto") == "cpu" and device_name("cpu") == "cpu"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert device_name("auto") == "cuda"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["export", "resnet20", "--format", "onnx", "--out", "m.onnx", "--batch", "2"],
         "--batch is now --batch-size"),
        (["export", "resnet20", "--format", "onnx", "--out", "m.onnx", "--input-size", "3"],
         "--input-size is now --example-shape"),
        (["lesion", "resnet20", "--batch", "64"], "--batch is now --batch-size"),
        (["cka", "resnet20", "--images", "64"], "--images is now --eval-size"),
        (["hessian", "resnet20", "--top-k", "2"], "--top-k is now --eigenvalues"),
        (["compare", "resnet18", "--iters", "2"], "--iters is now --timing-iters"),
        (["compare", "resnet18", "--warmup", "2"], "--warmup is now --timing-warmup"),
        (["degradation", "--input-size", "16"], "--input-size is now --image-size"),
    ],
)  # fmt: skip
def test_renamed_flags_name_the_new_one(argv, words, capsys):
    with pytest.raises(SystemExit) as code:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and words in err and len(err.splitlines()) == 1


def test_inference_settings_are_checked_when_made(capsys):
    assert main(["predict", "run", "x.png", "--json", "--csv"]) == 2
    assert "--json and --csv both given" in capsys.readouterr().err
    with pytest.raises(SystemExit) as code:  # read as the flags are read: choices, bounds
        main(["serve", "run", "--log-level", "loud"])
    assert code.value.code == 2 and "invalid choice: 'loud'" in capsys.readouterr().err
    with pytest.raises(ResnetlabError, match="unknown log_level 'loud'"):
        ServeSettings(source="run", log_level="loud")
    with pytest.raises(ResnetlabError, match="three numbers"):
        ExportSettings(source="resnet20", out_dir="m.onnx", format="onnx", example_shape=[3, 32])
    with pytest.raises(ResnetlabError, match="unknown device 'gpu'"):
        PredictSettings(source="run", images=["x.png"], device="gpu")
