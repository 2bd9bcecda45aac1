"""Scale-out of a study: wall time of a 2-rank torchrun run (Gloo, one torch thread per rank)
against one process of the same study with 2 threads and with 1 thread, in one run.

    python benchmarks/bench_scaleout.py [--images 1000] [--seeds 4] [--repeats 1]
        [--weights ../shared/peer/cifar-resnets/resnet20-12fca82f.th]
        [--data ../shared/data/cifar10-jpeg.tar.gz] [--out runs/bench-scaleout]

The study is a lesion of the peer CIFAR-10 ResNet-20 on ``--images`` test images, ``--seeds``
seeds (each seed one measurement: its own test subsample and its own random deletions and
swaps), so the 2 ranks share ``--seeds`` independent measurements. Every configuration is the
``resnetlab lesion`` command as a user runs it (a fresh process, imports and data loading
included), timed from outside; the study's own wall time (``run.json``: folder, measurements,
summary and figures, without the imports) is given beside it. The decoded-image cache is warmed
first, so no run pays for decoding the archive. The result files of the runs are compared: the
2-rank run's must equal the 1-thread run's bit for bit (both take each measurement on one
thread). Configurations alternate within each repeat; the fastest repeat of each is reported.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SKIP = {"run.json", ".resnetlab.lock"}  # times and process ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(ranks: int, threads: int, args: argparse.Namespace, out: Path) -> list[str]:
    """The lesion command, under torchrun with ``ranks`` processes where ranks > 1."""
    study = ["-m", "resnetlab", "lesion", "resnet20", "--pretrained", str(args.weights),
             "--data", str(args.data), "--eval-size", str(args.images), "--seeds",
             str(args.seeds), "--max-k", "4", "--draws", "2", "--threads", str(threads),
             "--quiet", "--out", str(out)]  # fmt: skip
    if ranks == 1:
        return [sys.executable, *study]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *study]  # fmt: skip


def timed(ranks: int, threads: int, args: argparse.Namespace, out: Path) -> dict:
    """One run: its wall time from outside and the study's own (run.json)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    done = subprocess.run(command(ranks, threads, args, out), env=env, capture_output=True,
                          text=True)  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{ranks} rank(s), {threads} thread(s) failed:\n{done.stderr[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    return {"wall_s": wall, "study_s": run["timing"]["wall_time_s"]}


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name not in SKIP}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--weights", type=Path,
                        default=SHARED / "peer" / "cifar-resnets" / "resnet20-12fca82f.th")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10-jpeg.tar.gz")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-scaleout")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from resnetlab.data import open_data  # the cache of decoded images, built once here
    from resnetlab.runfolder import cpu_name

    open_data(str(args.data))
    configs = {"1 process, 2 threads": (1, 2), "1 process, 1 thread": (1, 1),
               "2 ranks (Gloo), 1 thread each": (2, 1)}  # fmt: skip
    best: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for name, (ranks, threads) in configs.items():
            out = args.out / f"r{repeat}-{ranks}x{threads}"
            if out.exists():
                sys.exit(f"{out} exists; pass another --out.")
            found = timed(ranks, threads, args, out) | {"folder": str(out)}
            print(f"{name}: {found['wall_s']:.1f} s wall, study {found['study_s']} s", flush=True)
            if name not in best or found["wall_s"] < best[name]["wall_s"]:
                best[name] = found
    one, two = best["1 process, 1 thread"], best["2 ranks (Gloo), 1 thread each"]
    same = files(Path(one["folder"])) == files(Path(two["folder"]))
    same_2t = files(Path(best["1 process, 2 threads"]["folder"])) == files(Path(two["folder"]))
    rows = [{"run": name, **found,
             "two_ranks_speed_up": round(found["wall_s"] / two["wall_s"], 2)}
            for name, found in best.items()]  # fmt: skip
    result = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(),
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
              "images": args.images, "seeds": args.seeds, "repeats": args.repeats,
              "rows": rows, "two_ranks_equal_one_thread_run": same,
              "two_ranks_equal_two_thread_run": same_2t}  # fmt: skip
    (args.out / "bench-scaleout.json").write_text(json.dumps(result, indent=2))
    print("\n| run | wall s (command) | study s (run.json) | 2 ranks faster by |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['wall_s']:.1f} | {r['study_s']} | {r['two_ranks_speed_up']}× |")
    print(f"\n2-rank files equal the 1-thread run's bit for bit: {same}; the 2-thread run's: "
          f"{same_2t}. Load average after: {os.getloadavg()[0]:.1f}.")


if __name__ == "__main__":
    main()
