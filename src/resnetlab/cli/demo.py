"""``resnetlab degradation`` (He et al. 2015, Fig. 1/6) and ``resnetlab demo`` (everything, small).

Both write a run folder (``--out``, default ``runs/<experiment>-<timestamp>``) with a
``report.html`` and ``report.md``, and print the report's path last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ResnetlabError
from ..experiments.degradation import DegradationConfig
from ..experiments.demo import DemoConfig
from ..groups import Checked, RunFolderSettings
from ..settings import Default, compose, setting
from .flags import add_settings, given_settings, settings_from_args


@dataclass
@compose(RunFolderSettings, defaults={"out_dir": Default(None, "runs/degradation-<time>")})
class ExperimentRun(Checked):
    """Where an experiment writes and how it runs: the run-folder group and torch's threads."""

    threads: int | None = setting(
        None, "CPU threads for torch (default: torch's choice; 1 is often faster on a busy "
        "machine)", ">= 1",
    )  # fmt: skip

    if TYPE_CHECKING:  # added by compose (this block never runs)
        out_dir: str | None = setting()
        resume: bool = setting()
        progress: bool = setting()


def run_degradation_command(args: argparse.Namespace) -> int:
    from ..experiments.degradation import FAMILIES, run_degradation
    from ..reports.report import render_report

    given = given_settings(args, DegradationConfig)
    family = given.get("family", DegradationConfig.family)
    default_depths = {"depths": list(FAMILIES.get(family, []))} if "depths" not in given else {}
    config = settings_from_args(DegradationConfig, args, **default_depths)
    run = settings_from_args(ExperimentRun, args)
    with _threads(run.threads):
        run_dir, result = run_degradation(
            config, run.out_dir, resume=run.resume, progress=run.progress
        )
    print(format_finals(result))
    html_path, _ = render_report([run_dir])
    print(f"run folder: {run_dir}\nreport: {html_path}")
    return 0


def format_finals(result: dict) -> str:
    """The final-error table and the verdict, as printed after a degradation run."""
    lines = [f"{'model':<12}{'iters':>8}{'train %':>10}{'val %':>9}{'test %':>9}{'time s':>9}"]
    for row in result["finals"]:
        cells = [row[f"{s} error %"] for s in ("train", "val", "test")] + [row["train time s"]]
        text = "".join(f"{'-' if v is None else f'{v:.2f}':>{w}}" for v, w in
                       zip(cells, (10, 9, 9, 9), strict=True))  # fmt: skip
        lines.append(f"{row['model']:<12}{row['iterations']:>8}{text}")
    verdict = [f["verdict"] for f in result.get("findings", [])]
    return "\n".join(lines + [""] + verdict + result["summary"])


def run_demo_command(args: argparse.Namespace) -> int:
    from ..experiments.demo import run_demo

    config = settings_from_args(DemoConfig, args)
    with _threads(args.threads):
        run_dir, html_path = run_demo(
            config, args.out, resume=args.resume
        )
    demo = json.loads((run_dir / "demo.json").read_text())
    print("Verdict:\n" + "\n".join(f"- {line}" for line in demo["verdict"]) + "\n")
    print("\n".join(demo["summary"]) + "\n")
    print(f"run folder: {run_dir}")
    print(f"report: {html_path}")
    return 0


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (None: unchanged), then restore the previous count."""
    import torch

    if count is not None and count < 1:
        raise ResnetlabError(f"--threads must be at least 1, got {count}.")
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _common(p: argparse.ArgumentParser, threads: int | None, why: str) -> None:
    p.add_argument("--threads", type=int, default=threads, help=f"CPU threads for torch ({why})")
    p.add_argument("--out", help="run folder (default: runs/<experiment>-<timestamp>)")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in --out (same settings)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "degradation",
        help="plain vs residual nets by depth: training and test error (He et al. 2015, Fig. 6)",
        description="Train the plain and the residual net of each depth under one recipe and "
        "seed, each a resumable run in a sub-folder; report the error curves (training dashed, "
        "test bold), the final errors and a verdict on the paper's two claims.",
    )
    add_settings(p, DegradationConfig)
    add_settings(p, ExperimentRun)
    p.set_defaults(func=run_degradation_command)

    p = subparsers.add_parser(
        "demo",
        help="the classic experiments, small and offline, in one report (a few minutes on a CPU)",
        description="Runs the comparison table, the gradient-flow check (seed MLP and conv "
        "nets at initialisation) and a short degradation run on synthetic shapes made on the "
        "spot (no download), then writes report.html and report.md and prints the path.",
    )
    add_settings(p, DemoConfig)
    _common(
        p, 1, "default 1: the demo's nets are tiny, and more threads pay only on an idle machine"
    )
    p.set_defaults(func=run_demo_command)
