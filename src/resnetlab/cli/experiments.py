"""``resnetlab gradient-flow``, ``receptive-field``, ``compare`` and ``report``.

Each experiment writes a run folder (``--out``, default ``runs/<experiment>-<timestamp>``)
that ``resnetlab report`` renders as HTML and Markdown.
"""

from __future__ import annotations

import argparse
import json

from ..console import say
from ..errors import ResnetlabError
from ..experiments.compare import CompareConfig
from ..experiments.gradient_flow import GradientFlowConfig
from ..experiments.receptive_field import ReceptiveFieldConfig
from .flags import add_settings, given_settings, settings_from_args


def _done(run_dir, report: bool) -> None:
    say(f"run folder: {run_dir}")
    if report:
        from ..reports.report import render_report

        html_path, _ = render_report([run_dir])
        say(f"report: {html_path}")


def run_gradient_flow_command(args: argparse.Namespace) -> int:
    from ..experiments.gradient_flow import GradientFlowConfig, run_gradient_flow

    given = given_settings(args, GradientFlowConfig)
    if args.mlp and "models" in given:
        raise ResnetlabError("--mlp runs the MLP stacks only. Drop --mlp or --models.")
    if given.get("checkpoint") and "models" not in given:
        raise ResnetlabError("--checkpoint needs the model's name. Add --models NAME.")
    fixed = {"models": ["mlp10", "mlp20"]} if args.mlp else {}
    config = settings_from_args(GradientFlowConfig, args, **fixed)
    run_dir = run_gradient_flow(config, args.out, resume=args.resume)
    result = json.loads((run_dir / "gradient_flow.json").read_text())
    if args.mlp:
        for row in result["seed_mlp"]:
            print(
                f"depth {row['depth']:>3}  {row['kind']:<8}  first-layer grad norm "
                f"{row['grad_norm']:.6g}"
            )
    else:
        print("\n".join(result["summary"]))
    _done(run_dir, args.report)
    return 0


def run_receptive_field_command(args: argparse.Namespace) -> int:
    from ..experiments.receptive_field import (
        ReceptiveFieldConfig,
        format_layers,
        format_stacked,
        run_receptive_field,
    )

    config = settings_from_args(ReceptiveFieldConfig, args)
    run_dir, result = run_receptive_field(
        config, args.out, resume=args.resume
    )
    print(format_layers(result["layers"]))
    print("\nper stage:")
    for stage in result["stages"]:
        print(
            f"  {stage['stage']:<10} RF {stage['rf']:>4} px  jump {stage['jump']:>3}  "
            f"output {stage['out_size']}×{stage['out_size']}  (after {stage['last_layer']})"
        )
    print()
    print("\n".join(result["summary"][:2]))
    print(format_stacked(result["stacked_3x3"]))
    _done(run_dir, args.report)
    return 0


def run_compare_command(args: argparse.Namespace) -> int:
    from ..experiments.compare import CompareConfig, format_table, run_compare

    config = settings_from_args(CompareConfig, args)
    run_dir, rows, claims = run_compare(
        config, args.out, resume=args.resume
    )
    if args.json:
        print(json.dumps({"rows": rows, "claims": claims}, indent=2))
    elif args.csv:
        print((run_dir / "compare.csv").read_text(), end="")
    else:
        print(format_table(rows, config))
        if claims:
            print("\n" + "\n".join(claims))
    _done(run_dir, args.report)
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    from ..reports.report import render_report

    html_path, md_path = render_report(args.run_dirs, args.out)
    print(f"{html_path}\n{md_path}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="run folder (default: runs/<experiment>-<timestamp>)")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in --out (same settings)"
    )
    parser.add_argument("--report", action="store_true", help="also render report.html/.md")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gradient-flow",
        help="gradient norms through depth, plain vs residual",
        description="Per-block gradient norms ‖∂L/∂x_l‖ and weight-gradient norms, plain vs "
        "residual, averaged over seeds; --mlp runs the 10/20-block MLP experiment alone.",
    )
    p.add_argument("--mlp", action="store_true", help="only the MLP stacks of 10 and 20 blocks")
    add_settings(p, GradientFlowConfig)
    _common(p)
    p.set_defaults(func=run_gradient_flow_command)

    p = subparsers.add_parser(
        "receptive-field",
        help="receptive field per layer and stage, checked by input gradients",
        description="Theoretical receptive field along the main path (r_out = r_in + (k-1)·j_in,"
        " j_out = j_in·s), its gradient-measured check, the effective receptive field at init, "
        "and the stacked-3×3 arithmetic.",
    )
    add_settings(p, ReceptiveFieldConfig, positional={"model": "MODEL"})
    _common(p)
    p.set_defaults(func=run_receptive_field_command)

    p = subparsers.add_parser(
        "compare",
        help="parameters, MACs, depth, skips, published accuracy and size (--speed: timed too)",
        description="The comparison table of VGG and ResNet models: counts computed, accuracy "
        "and file size published (with source), in seconds. --speed also measures throughput "
        "here, as the median and min-max over --repeats, flagged where that spread is at least "
        "the difference between two models.",
    )
    add_settings(p, CompareConfig, positional={"models": "MODEL"})
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON instead of the table")
    fmt.add_argument("--csv", action="store_true", help="print CSV instead of the table")
    _common(p)
    p.set_defaults(func=run_compare_command)

    p = subparsers.add_parser(
        "report",
        help="render run folders as HTML and Markdown",
        description="Render run folders (config.json, run.json, results, plots, metrics.jsonl) "
        "as one self-contained report.html and a report.md twin.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders")
    p.add_argument("--out", help="output folder (default: the run folder, if only one)")
    p.set_defaults(func=run_report_command)
