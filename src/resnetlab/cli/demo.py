"""``resnetlab degradation`` (He et al. 2015, Fig. 1/6) and ``resnetlab demo`` (everything, small).

Both write a run folder (``--out``, default ``runs/<experiment>-<timestamp>``) with a
``report.html`` and ``report.md``, and print the report's path last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator

from ..errors import ResnetlabError
from ..train.config import check_trackers, tracker_names
from .experiments import command_line


def run_degradation_command(args: argparse.Namespace) -> int:
    from ..experiments.degradation import FAMILIES, DegradationConfig, run_degradation
    from ..experiments.report import render_report

    check_trackers(args.log)
    config = DegradationConfig(
        data=args.data,
        family=args.family,
        depths=args.depths or list(FAMILIES.get(args.family, [])),
        recipe=args.recipe,
        budget=args.budget,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        input_size=args.input_size,
        train_size=args.train_size,
        eval_size=args.eval_size,
        eval_every=args.eval_every,
        device=args.device,
        variants=args.variants.split(","),
    )
    with _threads(args.threads):
        run_dir, result = run_degradation(
            config, args.out, resume=args.resume, command=command_line(args), log=args.log
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
    return "\n".join(lines + [""] + result["summary"])


def run_demo_command(args: argparse.Namespace) -> int:
    from ..experiments.demo import DemoConfig, run_demo

    config = DemoConfig(data=args.data, budget=args.budget, seed=args.seed, quick=args.quick,
                        speed=args.speed)  # fmt: skip
    with _threads(args.threads):
        run_dir, html_path = run_demo(
            config, args.out, resume=args.resume, command=command_line(args)
        )
    for part in ("demo.json", "gradient-flow/gradient_flow.json", "degradation/degradation.json"):
        print("\n".join(json.loads((run_dir / part).read_text())["summary"]) + "\n")
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
    p.add_argument("--seed", type=int, default=0, help="seed of data split, init and order (0)")
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
    p.add_argument(
        "--data",
        default="cifar10",
        help="cifar10, an image folder or archive, or synthetic (default cifar10)",
    )
    p.add_argument(
        "--family",
        default="cifar",
        choices=["cifar", "imagenet"],
        help="CIFAR nets (6n+2 layers) or ImageNet-style 18/34 (default cifar)",
    )
    p.add_argument(
        "--depths",
        type=int,
        nargs="+",
        metavar="N",
        help="depths (default: 20 32 44 56, or 18 34 for --family imagenet)",
    )
    p.add_argument(
        "--variants",
        default="plain,resnet",
        help="arms: plain, resnet, plain-dirac (Dirac init), resnet-scale (zero residual scale)",
    )
    p.add_argument("--recipe", default="he2015-cifar", help="training recipe (he2015-cifar)")
    p.add_argument(
        "--budget",
        type=int,
        metavar="ITERS",
        help="iterations per net; the recipe's lr milestones are scaled to it",
    )
    p.add_argument("--batch-size", type=int, help="batch size (default: the recipe's)")
    p.add_argument("--lr", type=float, help="learning rate (default: the recipe's)")
    p.add_argument(
        "--input-size",
        type=int,
        metavar="PX",
        help="resize images to PX (default: as stored; 64 for --family imagenet)",
    )
    p.add_argument(
        "--train-size",
        type=int,
        metavar="N",
        help="train on a stratified N-image subsample (synthetic: images made)",
    )
    p.add_argument(
        "--eval-size",
        type=int,
        metavar="N",
        help="evaluate on stratified N-image subsamples of val and test (speed)",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        metavar="ITERS",
        help="iterations between test evaluations (default: budget / 20)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--log", type=tracker_names, default=(), metavar="NAME,NAME,...",
                   help="log each net's run to tensorboard and/or mlflow")  # fmt: skip
    _common(p, None, "default: torch's choice; 1 is often faster on a busy machine")
    p.set_defaults(func=run_degradation_command, _parser=p)

    p = subparsers.add_parser(
        "demo",
        help="the classic experiments, small and offline, in one report (a few minutes on a CPU)",
        description="Runs the comparison table, the gradient-flow check (seed MLP and conv "
        "nets at initialisation) and a short degradation run on synthetic shapes made on the "
        "spot (no download), then writes report.html and report.md and prints the path.",
    )
    p.add_argument(
        "--data",
        default="synthetic",
        help="synthetic (default, no download), cifar10 (downloads) or a local path "
        "such as the CIFAR-10 JPEG archive",
    )
    p.add_argument(
        "--budget",
        type=int,
        metavar="ITERS",
        help="iterations per net in the degradation run (default: the demo's short one)",
    )
    p.add_argument("--speed", action="store_true", help="also time each model in the table")
    p.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
    _common(
        p, 1, "default 1: the demo's nets are tiny, and more threads pay only on an idle machine"
    )
    p.set_defaults(func=run_demo_command, _parser=p)
