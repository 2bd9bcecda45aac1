"""The paper's CIFAR recipe on the fast path and the slow path: wall time and final test error.

    python benchmarks/bench_recipe.py [--model resnet56] [--seeds 0 1 2] [--paths graphs eager]
        [--iters 64000] [--data ../shared/data/cifar10-jpeg.tar.gz] [--out runs/recipe]

Each (path, seed) trains He et al.'s recipe (``he2015-cifar``: SGD 0.1, momentum 0.9,
weight decay 1e-4, batch 128, pad-4 crop + flip, per-pixel mean) with the data on the device;
``graphs`` records each step as one CUDA graph, ``eager`` launches it kernel by kernel.
``--iters`` shortens the schedule, keeping its milestones at 50 % and 75 %. The table gives the
final test error and the training time of every run, then each path's mean and spread: the
fast path counts only if its error lies within the slow path's run-to-run spread.
Needs CUDA for ``graphs``; the full recipe is 64,000 iterations per run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from pathlib import Path

import torch

from resnetlab.train import recipe_config, train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def run(model: str, data: str, path: str, seed: int, iters: int, out: Path) -> dict:
    """One training run; returns its final test error and training seconds."""
    config = recipe_config("he2015-cifar", model=model, data=data, seed=seed, max_iters=iters,
                           milestones=(iters // 2, iters * 3 // 4), eval_every=iters,
                           checkpoint_every=iters, log_every=max(iters // 20, 1),
                           cuda_graphs=path == "graphs", out_dir=str(out / f"{path}-{seed}"),
                           eval_splits=("test",))  # fmt: skip
    result = train(config)
    records = map(json.loads, (result.out_dir / "metrics.jsonl").read_text().splitlines())
    last_train = [r for r in records if r["kind"] == "train"][-1]
    return {"path": path, "seed": seed, "test_error": result.metrics["test_error"],
            "train_s": last_train["time_s"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--paths", nargs="+", default=["graphs", "eager"],
                        choices=["graphs", "eager"])  # fmt: skip
    parser.add_argument("--iters", type=int, default=64000)
    parser.add_argument(
        "--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.is_file() else "cifar10"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/recipe"))
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {device}, torch "
        f"{torch.__version__}; {args.model}, {args.iters} iterations, data {args.data}"
    )
    rows = []
    for seed in args.seeds:
        for path in args.paths:
            r = run(args.model, args.data, path, seed, args.iters, args.out)
            rows.append(r)
            print(f"{path:<7} seed {seed}: test error {100 * r['test_error']:6.2f} %, "
                  f"{r['train_s'] / 60:6.2f} min", flush=True)  # fmt: skip
    for path in args.paths:
        errs = [100 * r["test_error"] for r in rows if r["path"] == path]
        mins = [r["train_s"] / 60 for r in rows if r["path"] == path]
        spread = statistics.stdev(errs) if len(errs) > 1 else float("nan")
        print(
            f"{path:<7} test error {statistics.mean(errs):6.2f} ± {spread:.2f} % "
            f"(min {min(errs):.2f}, max {max(errs):.2f}), {statistics.mean(mins):.2f} min a run"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipe.json").write_text(json.dumps({"device": device, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
