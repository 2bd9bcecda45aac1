"""Every study as a sub-command, registered from one list (:data:`STUDIES`), and ``report``.

A study's flags come from its settings (``flags.add_settings``), plus ``--out``, ``--resume``,
``--threads`` and ``--report``; :func:`run_command` builds the settings, runs the study
(``experiments.runner.run_study``) and prints its result. MODEL_OR_RUN is a registered model
name (weights from ``--pretrained VALUE``: a file, a URL or a tag such as ``cifar10``) or a
training run folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ResnetlabError
from ..experiments.cka import Cka
from ..experiments.compare import Compare
from ..experiments.degradation import FAMILIES, Degradation
from ..experiments.demo import Demo
from ..experiments.gradient_flow import GradientFlow
from ..experiments.hessian import HessianStudy
from ..experiments.landscape import Landscape
from ..experiments.lesion import Lesion
from ..experiments.paths import Paths
from ..experiments.receptive_field import ReceptiveField, format_layers, format_stacked
from ..experiments.runner import RENAMED_SETTINGS, Study, StudyRun, run_study
from ..experiments.scaleout import main_process
from ..experiments.shattered import Shattered
from ..groups import Checked, OutputSettings, RunFolderSettings
from ..reports.report import render_report
from ..settings import Default, compose, setting
from .flags import add_renamed, add_settings, flag_name, given_settings, settings_from_args


@dataclass(frozen=True)
class Command:
    """One study's sub-command: its name, study class, help, and what differs from the rest."""

    name: str
    study: type[Study]
    help: str
    description: str
    positional: dict[str, str] | None = None
    extra: type | None = None  # settings of how it runs or prints, not of its result
    fixed: Callable[[argparse.Namespace], dict[str, Any]] | None = None  # settings from them
    show: Callable[[argparse.Namespace, StudyRun], None] | None = None  # default: its summary
    options: Callable[[argparse.Namespace], dict[str, Any]] | None = None  # for the Study
    threads: int | None = None  # the --threads default (None: torch's choice)
    always_report: bool = False


@dataclass
@compose(RunFolderSettings, only=("out_dir", "resume"),
         defaults={"out_dir": Default(None, "runs/<study>-<time>")})  # fmt: skip
class StudyRunSettings(Checked):
    """Where and how a study runs: not settings of its result, so not in its config.json."""

    threads: int | None = setting(
        None, "CPU threads for torch (default: torch's choice, demo 1; 1 is often faster on a "
        "busy machine)", ">= 1",
    )  # fmt: skip
    report: bool = setting(False, "also render report.html/.md (degradation and demo always do)")

    if TYPE_CHECKING:  # added by compose (this block never runs)
        out_dir: str | None = setting()
        resume: bool = setting()


@dataclass
@compose(RunFolderSettings, only=("out_dir",),
         defaults={"out_dir": Default(None, "the run folder, if only one")})  # fmt: skip
class ReportSettings(Checked):
    """``resnetlab report``: the folders to render and where the report goes."""

    run_dirs: list[str] = setting(help="run folders", factory=list)

    if TYPE_CHECKING:  # added by compose (this block never runs)
        out_dir: str | None = setting()


def run_command(command: Command, args: argparse.Namespace) -> int:
    """Build the study's settings from the flags, run it (resumable), print what it found."""
    if command.extra:  # checked before any work; fixed and show read its values
        vars(args).update(dataclasses.asdict(settings_from_args(command.extra, args)))
    config = settings_from_args(command.study.settings, args,
                                **(command.fixed(args) if command.fixed else {}))  # fmt: skip
    how = settings_from_args(StudyRunSettings, args)
    options = command.options(args) if command.options else {}
    report = command.always_report or how.report
    with _threads(how.threads if how.threads is not None else command.threads):
        run = run_study(command.study(config, **options), how.out_dir, resume=how.resume,
                        report=report)  # fmt: skip
    if not main_process():  # under torchrun rank 0 alone tells the result
        return 0
    (command.show or _summary)(args, run)
    print(f"run folder: {run.folder}", file=sys.stdout if command.always_report else sys.stderr)
    if report:
        print(f"report: {run.folder / 'report.html'}",
              file=sys.stdout if command.always_report else sys.stderr)  # fmt: skip
    return 0


def _summary(args: argparse.Namespace, run: StudyRun) -> None:
    print("\n".join(run.result["summary"]))


def _gradient_flow_fixed(args: argparse.Namespace) -> dict[str, Any]:
    given = given_settings(args, GradientFlow.settings)
    if args.mlp and "models" in given:
        raise ResnetlabError("--mlp runs the MLP stacks only. Drop --mlp or --models.")
    if given.get("checkpoint") and "models" not in given:
        raise ResnetlabError("--checkpoint needs the model's name. Add --models NAME.")
    return {"models": ["mlp10", "mlp20"]} if args.mlp else {}


@dataclass
class MlpOnly(Checked):
    """``gradient-flow --mlp``: the MLP experiment alone, printed as its own table."""

    mlp: bool = setting(False, "only the MLP stacks of 10 and 20 blocks")


def _gradient_flow_show(args: argparse.Namespace, run: StudyRun) -> None:
    if not args.mlp:
        return _summary(args, run)
    for row in run.result["seed_mlp"]:
        print(f"depth {row['depth']:>3}  {row['kind']:<8}  first-layer grad norm "
              f"{row['grad_norm']:.6g}")  # fmt: skip


def _receptive_field_show(args: argparse.Namespace, run: StudyRun) -> None:
    result = run.result
    print(format_layers(result["layers"]))
    print("\nper stage:")
    for stage in result["stages"]:
        print(f"  {stage['stage']:<10} RF {stage['rf']:>4} px  jump {stage['jump']:>3}  "
              f"output {stage['out_size']}×{stage['out_size']}  (after {stage['last_layer']})")
    print()
    print("\n".join(result["summary"][:2]))
    print(format_stacked(result["stacked_3x3"]))


def _compare_show(args: argparse.Namespace, run: StudyRun) -> None:
    rows, claims = run.result["rows"], run.result["claims"]
    if args.json:
        print(json.dumps({"rows": rows, "claims": claims}, indent=2))
    elif args.csv:
        print((run.folder / "compare.csv").read_text(), end="")
    else:
        print((run.folder / "compare.txt").read_text(), end="")
        if claims:
            print("\n" + "\n".join(claims))


def _degradation_fixed(args: argparse.Namespace) -> dict[str, Any]:
    given = given_settings(args, Degradation.settings)
    family = given.get("family", Degradation.settings.family)
    return {"depths": list(FAMILIES.get(family, []))} if "depths" not in given else {}


def format_finals(result: dict) -> str:
    """The final-error table and the verdict, as printed after a degradation run."""
    seeds = len({row.get("seed") for row in result["finals"]}) > 1  # a column when several
    head = f"{'model':<12}" + (f"{'seed':>5}" if seeds else "")
    lines = [f"{head}{'iters':>8}{'train %':>10}{'val %':>9}{'test %':>9}{'time s':>9}"]
    for row in result["finals"]:
        cells = [row[f"{s} error %"] for s in ("train", "val", "test")] + [row["train time s"]]
        text = "".join(f"{'-' if v is None else f'{v:.2f}':>{w}}" for v, w in
                       zip(cells, (10, 9, 9, 9), strict=True))  # fmt: skip
        seed = f"{row.get('seed')!s:>5}" if seeds else ""
        lines.append(f"{row['model']:<12}{seed}{row['iterations']:>8}{text}")
    verdict = [f["verdict"] for f in result.get("findings", [])]
    return "\n".join(lines + [""] + verdict + result["summary"])


def _verdict_show(args: argparse.Namespace, run: StudyRun) -> None:
    print("\n".join(run.result["summary"] + [f"- {line}" for line in run.result["verdict"]]))


def _demo_show(args: argparse.Namespace, run: StudyRun) -> None:
    print("Verdict:\n" + "\n".join(f"- {line}" for line in run.result["verdict"]) + "\n")
    print("\n".join(run.result["summary"]) + "\n")


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (None: unchanged), then restore the previous count."""
    if count is not None and count < 1:
        raise ResnetlabError(f"--threads must be at least 1, got {count}.")
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


STUDIES = [
    Command("gradient-flow", GradientFlow, "gradient norms through depth, plain vs residual",
            "Per-block gradient norms ‖∂L/∂x_l‖ and weight-gradient norms, plain vs residual, "
            "averaged over seeds; --mlp runs the 10/20-block MLP experiment alone.",
            extra=MlpOnly,
            fixed=_gradient_flow_fixed, show=_gradient_flow_show),
    Command("receptive-field", ReceptiveField,
            "receptive field per layer and stage, checked by input gradients",
            "Theoretical receptive field along the main path (r_out = r_in + (k-1)·j_in, "
            "j_out = j_in·s), its gradient-measured check, the effective receptive field at init, "
            "and the stacked-3×3 arithmetic.", positional={"model": "MODEL"},
            show=_receptive_field_show),
    Command("compare", Compare,
            "parameters, MACs, depth, skips, published accuracy and size (--speed: timed too)",
            "The comparison table of VGG and ResNet models: counts computed, accuracy and file "
            "size published (with source), in seconds. --speed also measures throughput here, as "
            "the median and min-max over --repeats, flagged where that spread is at least the "
            "difference between two models.", positional={"models": "MODEL"},
            extra=OutputSettings, show=_compare_show),
    Command("lesion", Lesion, "test error after deleting or swapping blocks of trained nets",
            "Veit et al. 2016: delete single blocks, k random blocks, swap k pairs.",
            positional={"models": "MODEL_OR_RUN"}),
    Command("loss-landscape", Landscape, "1-D/2-D loss slices along filter-normalised directions",
            "Li et al. 2018: loss on a fixed training subsample along random filter-normalised "
            "directions (biases and BN left out); resumable 2-D grid.",
            positional={"model": "MODEL_OR_RUN"}),
    Command("cka", Cka, "layer-by-layer linear CKA of two nets, or of a net with itself",
            "Kornblith et al. 2019, Nguyen et al. 2021: minibatch linear CKA (unbiased HSIC) of "
            "every layer of A against every layer of B (A alone or A A: a net with itself) on a "
            "shuffled sample of one split; the heatmap, the matrix as CSV, corresponding layers "
            "and block structure; resumable by batch.", positional={"models": "MODEL_OR_RUN"},
            show=_verdict_show),
    Command("hessian", HessianStudy,
            "top Hessian eigenvalues, trace and eigenvalue density of trained nets",
            "Li et al. 2018, Ghorbani et al. 2019, Yao et al. 2020 (PyHessian): the Hessian of "
            "the mean loss over a fixed sample of images, per net: top eigenvalues by Lanczos "
            "(stopped at --tol), trace by Hutchinson (± standard error), eigenvalue density by "
            "stochastic Lanczos quadrature; residual against plain.",
            positional={"models": "MODEL_OR_RUN"}),
    Command("paths", Paths, "gradient carried by paths of each length (trained vs untrained)",
            "Veit et al. 2016 §4-5: path-length distribution and sampled gradient.",
            positional={"model": "MODEL_OR_RUN"}),
    Command("shattered", Shattered, "gradient autocorrelation against depth at initialisation",
            "Balduzzi et al. 2017: input gradient along a 1-D input sweep."),
    Command("degradation", Degradation,
            "plain vs residual nets by depth: training and test error (He et al. 2015, Fig. 6)",
            "Train the plain and the residual net of each depth under one recipe and seed, each a "
            "resumable run in a sub-folder; report the error curves (training dashed, test bold), "
            "the final errors and a verdict on the paper's two claims.",
            fixed=_degradation_fixed,
            show=lambda args, run: print(format_finals(run.result)),
            always_report=True),
    Command("demo", Demo,
            "the classic experiments, small and offline, in one report (a few minutes on a CPU)",
            "Runs the comparison table, the gradient-flow check (seed MLP and conv nets at "
            "initialisation) and a short degradation run on synthetic shapes made on the spot "
            "(no download), then writes report.html and report.md and prints the path.",
            show=_demo_show, threads=1, always_report=True),
]  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    for command in STUDIES:
        p = subparsers.add_parser(command.name, help=command.help, description=command.description)
        add_settings(p, command.study.settings, positional=command.positional)
        names = {f.name for f in dataclasses.fields(command.study.settings)}
        add_renamed(p, {flag_name(old): flag_name(new) for old, new in RENAMED_SETTINGS.items()
                        if new in names and old not in names})  # fmt: skip
        if command.extra:
            add_settings(p, command.extra)
        add_settings(p, StudyRunSettings)
        p.set_defaults(func=partial(run_command, command))

    p = subparsers.add_parser(
        "report",
        help="render run folders as HTML and Markdown",
        description="Render run folders (config.json, run.json, results, plots, metrics.jsonl) "
        "as one self-contained report.html and a report.md twin.",
    )
    add_settings(p, ReportSettings, positional={"run_dirs": "RUN_DIR"})
    p.set_defaults(func=run_report_command)


def run_report_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(ReportSettings, args)
    if not settings.run_dirs:
        raise ResnetlabError("no run folder given; name one or more, e.g. resnetlab report runs/x.")
    html_path, md_path = render_report(settings.run_dirs, settings.out_dir)
    print(f"{html_path}\n{md_path}")
    return 0
