"""``resnetlab gradient-flow``, ``receptive-field``, ``compare`` and ``report``.

Each experiment writes a run folder (``--out``, default ``runs/<experiment>-<timestamp>``)
that ``resnetlab report`` renders as HTML and Markdown.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from ..errors import ResnetlabError


def command_line(args: argparse.Namespace) -> str:
    """The command as typed, rebuilt from the parsed options that differ from their defaults."""
    parts = ["resnetlab", args.command]
    for action in args._parser._actions:
        if action.dest in ("help", "func", "_parser"):
            continue
        value = getattr(args, action.dest, None)
        if not action.option_strings:
            parts += [str(v) for v in value] if isinstance(value, list) else [str(value)]
        elif value != action.default:
            flag = action.option_strings[-1]
            if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
                parts.append(flag)
            else:
                parts += [flag, *map(str, value if isinstance(value, list) else [value])]
    return shlex.join(parts)


def _done(run_dir, report: bool) -> None:
    print(f"run folder: {run_dir}", file=sys.stderr)
    if report:
        from ..experiments.report import render_report

        html_path, _ = render_report([run_dir])
        print(f"report: {html_path}", file=sys.stderr)


def run_gradient_flow_command(args: argparse.Namespace) -> int:
    from ..experiments.gradient_flow import DEFAULT_MODELS, GradientFlowConfig, run_gradient_flow

    if args.mlp and args.models:
        raise ResnetlabError("--mlp runs the MLP stacks only. Drop --mlp or --models.")
    models = ["mlp10", "mlp20"] if args.mlp else (args.models or list(DEFAULT_MODELS))
    if args.checkpoint and not args.models:
        raise ResnetlabError("--checkpoint needs the model's name. Add --models NAME.")
    config = GradientFlowConfig(
        models=models,
        seeds=args.seeds,
        seed=args.seed,
        batch=args.batch,
        imagenet_size=args.imagenet_size,
        checkpoint=args.checkpoint,
        data=args.data,
    )
    run_dir = run_gradient_flow(config, args.out, resume=args.resume, command=command_line(args))
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

    config = ReceptiveFieldConfig(
        model=args.name,
        input_size=args.input_size,
        measure=not args.no_measure,
        erf=not args.no_erf,
        max_stack=args.max_stack,
        channels=args.channels,
    )
    run_dir, result = run_receptive_field(
        config, args.out, resume=args.resume, command=command_line(args)
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
    from ..experiments.compare import DEFAULT_MODELS, CompareConfig, format_table, run_compare

    if args.speed and args.no_speed:
        raise ResnetlabError("--speed and --no-speed exclude each other; drop one.")
    config = CompareConfig(
        models=args.models or list(DEFAULT_MODELS),
        speed=args.speed,
        batch=args.batch,
        input_size=args.input_size,
        iters=args.iters,
        warmup=args.warmup,
        repeats=args.repeats,
        device=args.device,
    )
    run_dir, rows, claims = run_compare(
        config, args.out, resume=args.resume, command=command_line(args)
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
    from ..experiments.report import render_report

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
    p.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        help="registry names and mlpN (default: MLPs, CIFAR 20/56/110, ImageNet 18/34)",
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds to average (default 3)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--batch", type=int, default=16, help="batch for the conv nets (default 16)")
    p.add_argument(
        "--imagenet-size",
        type=int,
        default=64,
        help="input size for ImageNet nets (default 64, to stay cheap)",
    )
    p.add_argument("--checkpoint", metavar="PATH", help="measure at these weights (one model)")
    p.add_argument("--data", metavar="SPEC", help="use a batch of this data set, not random input")
    _common(p)
    p.set_defaults(func=run_gradient_flow_command, _parser=p)

    p = subparsers.add_parser(
        "receptive-field",
        help="receptive field per layer and stage, checked by input gradients",
        description="Theoretical receptive field along the main path (r_out = r_in + (k-1)·j_in,"
        " j_out = j_in·s), its gradient-measured check, the effective receptive field at init, "
        "and the stacked-3×3 arithmetic.",
    )
    p.add_argument("name", help="registered model name, e.g. vgg16 or resnet50")
    p.add_argument("--input-size", type=int, help="input size in px (default: the model's)")
    p.add_argument("--no-measure", action="store_true", help="skip the gradient-measured check")
    p.add_argument("--no-erf", action="store_true", help="skip the effective receptive field")
    p.add_argument(
        "--max-stack", type=int, default=3, help="stacked 3×3 convs from 2 up to k (default 3)"
    )
    p.add_argument("--channels", type=int, help="C for the weight counts (default: per C²)")
    _common(p)
    p.set_defaults(func=run_receptive_field_command, _parser=p)

    p = subparsers.add_parser(
        "compare",
        help="parameters, MACs, depth, skips, published accuracy and size (--speed: timed too)",
        description="The comparison table of VGG and ResNet models: counts computed, accuracy "
        "and file size published (with source), in seconds. --speed also measures throughput "
        "here, as the median and min-max over --repeats, flagged where that spread is at least "
        "the difference between two models.",
    )
    p.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="models (default: vgg16 vgg19 resnet18 resnet34 resnet50 resnet101 resnet152)",
    )
    p.add_argument("--speed", action="store_true", help="also time each model (minutes on a CPU)")
    p.add_argument("--no-speed", action="store_true", help=argparse.SUPPRESS)  # the old default
    p.add_argument("--repeats", type=int, default=3, help="timing repeats, at least 3 (default 3)")
    p.add_argument("--batch", type=int, default=8, help="batch for throughput (default 8)")
    p.add_argument("--input-size", type=int, default=224, help="input px for throughput (224)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    p.add_argument("--device", default="cpu", help="device for throughput (default cpu)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON instead of the table")
    fmt.add_argument("--csv", action="store_true", help="print CSV instead of the table")
    _common(p)
    p.set_defaults(func=run_compare_command, _parser=p)

    p = subparsers.add_parser(
        "report",
        help="render run folders as HTML and Markdown",
        description="Render run folders (config.json, run.json, results, plots, metrics.jsonl) "
        "as one self-contained report.html and a report.md twin.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders")
    p.add_argument("--out", help="output folder (default: the run folder, if only one)")
    p.set_defaults(func=run_report_command, _parser=p)
