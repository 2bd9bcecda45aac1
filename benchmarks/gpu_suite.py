"""The whole performance table of one GPU in one run (about 8 minutes on an H100/H200).

    python benchmarks/gpu_suite.py [--out runs/gpu-suite] [--max-minutes 9] [--no-compile]
        [--only cifar resnet50 ...] [--smoke]

Every resnetlab figure is measured next to its torchvision (or plain-PyTorch) reference in the
same process. Sections, most important first: ``cifar`` (ResNet-56 eager against CUDA graphs,
after checking that both train alike and that the graph path never synchronises with the
host), ``resnet50`` (training in fp32, bf16, bf16 + channels-last), ``inference``, ``models``
(ResNet-18/152, VGG-16(-BN) training), ``checkpointing`` (peak memory with and without, at
batches that do not fit without it), ``scaling`` (step time against batch size and depth,
plotted) and ``compile`` (torch.compile, slow to build). Peak GPU memory is reported for every
workload. ``table.json`` is rewritten after every section, so a run cut short keeps what it
measured; a failed section is reported and the others still run. ``--smoke`` runs every
section at toy sizes (on the CPU too) to check the script itself; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scaling  # noqa: E402
from bench_train import engine_step, graph_loss_gap  # noqa: E402
from resnetlab.models import create_model, optimize_for_inference  # noqa: E402
from resnetlab.train import Callback  # noqa: E402

FULL = {"size": 224, "batch": 256, "cifar_batch": 128, "steps": 15, "warmup": 5,
        "big": ["resnet18", "resnet152", "vgg16", "vgg16_bn"], "graph_check_steps": 30,
        "batches": [32, 64, 128, 256, 512, 1024], "depths": [20, 32, 44, 56, 110, 1202],
        "ckpt": [("resnet152", 224, 256), ("resnet152", 224, 1024), ("resnet1202", 32, 128),
                 ("resnet1202", 32, 2048)]}  # fmt: skip
SMOKE = {"size": 32, "batch": 4, "cifar_batch": 8, "steps": 2, "warmup": 1,
         "big": ["resnet18"], "graph_check_steps": 4, "batches": [4, 8], "depths": [20, 32],
         "ckpt": [("resnet20", 32, 4)]}  # fmt: skip
ROWS: list[dict] = []


def row(workload: str, setting: str, step_s: float | None, batch: int, **extra) -> dict:
    """Record and print one line of the table."""
    r = {"workload": workload, "setting": setting, "batch": batch,
         "ms": None if step_s is None else 1e3 * step_s,
         "img_s": None if step_s is None else batch / step_s, **extra}  # fmt: skip
    ROWS.append(r)
    ms = "" if step_s is None else f"{1e3 * step_s:8.2f} ms {batch / step_s:9.0f} img/s"
    more = "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in extra.items())  # fmt: skip
    print(f"{workload:<30} {setting:<34} {ms:<28} {more}", flush=True)
    return r


@contextlib.contextmanager
def peak_memory(into: dict):
    """Peak GPU memory allocated inside the block, in GiB, into ``into["peak_gib"]``."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    yield
    into["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reference_train(model: nn.Module, size: int, batch: int, s: dict, *, bf16: bool,
                    channels_last: bool, compiled: bool = False) -> tuple:  # fmt: skip
    """A plain torchvision-style loop: (mean s/step over the timed window, peak GiB)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    mem: dict = {}
    with peak_memory(mem):
        model = model.to(device, memory_format=fmt).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        forward = torch.compile(model) if compiled else model
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (batch,), device=device)
        for i in range(s["warmup"] + s["steps"]):
            if i == s["warmup"]:
                sync()
                start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(forward(x).float(), y)
            loss.backward()
            opt.step()
        sync()
    return (time.perf_counter() - start) / s["steps"], mem["peak_gib"]


def engine_train(name: str, size: int, batch: int, s: dict, callbacks=(), classes: int = 10,
                 **cfg) -> tuple:  # fmt: skip
    """The project's training path, ``train()`` on synthetic uint8 data: (s/step, peak GiB).
    Nothing is logged inside the timed steps, so no metrics read can synchronise there."""
    mem: dict = {}
    with peak_memory(mem):
        times = engine_step(name, size, batch, s["steps"], "auto", warmup=s["warmup"],
                            images=batch * 2, classes=classes, callbacks=callbacks,
                            log_every=10**9, **cfg)  # fmt: skip
    return statistics.median(times), mem["peak_gib"]


def resnet50_section(s: dict) -> None:
    """The issue's ResNet-50 table, eager: torchvision in three settings, then the engine."""
    size, b = s["size"], s["batch"]
    settings = [("fp32/TF32 eager", False, False), ("bf16 eager", True, False),
                ("bf16 + channels-last eager", True, True)]  # fmt: skip
    for label, bf16, cl in settings:
        t, peak = reference_train(torchvision.models.resnet50(), size, b, s, bf16=bf16,
                                  channels_last=cl)  # fmt: skip
        row("torchvision resnet50 train", label, t, b, peak_gib=peak)
    ref = t  # bf16 + channels-last eager, the engine's settings
    t, peak = engine_train("resnet50", size, b, s, classes=1000)
    row("resnetlab resnet50 train", "default (bf16 + channels-last)", t, b, peak_gib=peak,
        vs_tv=ref / t)  # fmt: skip


def compile_section(s: dict) -> None:
    """ResNet-50 under torch.compile: torchvision's model against the engine's compile option."""
    size, b = s["size"], s["batch"]
    ref, peak = reference_train(torchvision.models.resnet50(), size, b, s, bf16=True,
                                channels_last=True, compiled=True)  # fmt: skip
    row("torchvision resnet50 train", "bf16 + channels-last + compile", ref, b, peak_gib=peak)
    t, peak = engine_train("resnet50", size, b, s, classes=1000, compile=True)
    row("resnetlab resnet50 train", "compile", t, b, peak_gib=peak, vs_tv=ref / t)


def inference_section(s: dict) -> None:
    """ResNet-50 forward: torchvision bf16 + channels-last against the ``predict`` path."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size, b = s["size"], s["batch"]
    reference = torchvision.models.resnet50().eval().to(device, memory_format=torch.channels_last)
    ours = create_model("resnet50").eval()
    ours.load_state_dict(reference.state_dict())
    ours = optimize_for_inference(ours.to(device), engine="torch")  # bf16 autocast
    x = torch.randn(b, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    times = {}
    for _ in range(3):  # interleaved repeats
        for key, model in (("tv", reference), ("ours", ours)):
            with torch.inference_mode(), torch.autocast(x.device.type, torch.bfloat16):
                for _ in range(s["warmup"]):
                    model(x)
                sync()
                start = time.perf_counter()
                for _ in range(s["steps"]):
                    model(x)
                sync()
            times.setdefault(key, []).append((time.perf_counter() - start) / s["steps"])
    tv, ours_t = statistics.median(times["tv"]), statistics.median(times["ours"])
    row("torchvision resnet50 inference", "bf16 + channels-last eager", tv, b)
    row("resnetlab resnet50 inference", "BN folded, bf16 + channels-last", ours_t, b,
        vs_tv=tv / ours_t)  # fmt: skip


def other_models_section(s: dict) -> None:
    """ResNet-18/152, VGG-16(-BN) training: torchvision bf16 + channels-last against the engine."""
    size, b = s["size"], s["batch"]
    for name in s["big"]:
        ref, ref_peak = reference_train(getattr(torchvision.models, name)(), size, b, s,
                                        bf16=True, channels_last=True)  # fmt: skip
        row(f"torchvision {name} train", "bf16 + channels-last eager", ref, b, peak_gib=ref_peak)
        t, peak = engine_train(name, size, b, s, classes=1000)
        row(f"resnetlab {name} train", "default", t, b, peak_gib=peak, vs_tv=ref / t)


class NoSyncWindow(Callback):
    """Raises if anything synchronises with the host between two steps (CUDA only)."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end

    def on_step(self, state) -> None:
        if state.step == self.start:
            torch.cuda.set_sync_debug_mode("error")
        elif state.step == self.end:
            torch.cuda.set_sync_debug_mode("default")


def cifar_section(s: dict) -> None:
    """ResNet-56: the graph path trains like eager, never syncs, and how fast each one is."""
    cuda = torch.cuda.is_available()
    b = s["cifar_batch"]
    ref, ref_peak = reference_train(create_model("resnet56"), 32, b, s, bf16=cuda,
                                    channels_last=True)  # fmt: skip
    row("plain loop resnet56 train", "bf16 + channels-last eager", ref, b, peak_gib=ref_peak)
    eager, peak = engine_train("resnet56", 32, b, s, cuda_graphs=False)
    row("resnetlab resnet56 train", "eager", eager, b, peak_gib=peak, vs_loop=ref / eager)
    if not cuda:
        row("resnetlab resnet56 train", "CUDA graphs", None, b, note="needs CUDA")
        return
    worst, _ = graph_loss_gap(s["graph_check_steps"], b)
    row("CUDA-graph step vs eager", "fp32, same seed", None, b, max_rel_loss_diff=worst,
        ok=worst < 1e-2)  # fmt: skip
    try:
        w = s["warmup"]
        engine_train("resnet56", 32, b, s, cuda_graphs=True,
                     callbacks=[NoSyncWindow(w, w + s["steps"] - 1)])  # fmt: skip
        row("CUDA-graph step host syncs", "sync debug mode 'error'", None, b, syncs="none",
            ok=True)  # fmt: skip
    except RuntimeError as exc:
        torch.cuda.set_sync_debug_mode("default")
        row("CUDA-graph step host syncs", "sync debug mode 'error'", None, b,
            syncs=str(exc)[:80], ok=False)  # fmt: skip
    graphs, peak = engine_train("resnet56", 32, b, s, cuda_graphs=True)
    row("resnetlab resnet56 train", "CUDA graphs", graphs, b, peak_gib=peak,
        vs_loop=ref / graphs, min_64k=64000 * graphs / 60)  # fmt: skip


def checkpointing_section(s: dict) -> None:
    """Peak memory and step time with and without activation checkpointing; the larger batch
    of each model is chosen not to fit without it on an 80-140 GiB GPU."""
    short = {**s, "warmup": 1, "steps": 3}
    for name, size, b in s["ckpt"]:
        for on in (False, True):
            label = f"checkpointing {'on' if on else 'off'}"
            try:
                t, peak = engine_train(name, size, b, short, activation_checkpointing=on,
                                       cuda_graphs=False)  # fmt: skip
            except torch.OutOfMemoryError:
                t = None
            if t is None:
                gc.collect()
                torch.cuda.empty_cache()
                row(f"resnetlab {name} train", label, None, b, note="out of memory")
            else:
                row(f"resnetlab {name} train", label, t, b, peak_gib=peak)


def scaling_section(s: dict, out: Path) -> None:
    """Step time against batch size (ResNet-56) and depth (batch 128), plotted."""
    b = s["cifar_batch"]
    result = bench_scaling.measure(s["batches"], s["depths"], b, s["steps"])
    for k, t in result["by_batch"].items():
        row("scaling: resnet56 vs batch", "default path", t, k)
    for d, t in result["by_depth"].items():
        row("scaling: depth at fixed batch", f"resnet{d}", t, b)
    bench_scaling.plot(result, device_name(), out / "scaling.png")


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-suite"))
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile rows")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: checks the script")
    parser.add_argument("--only", nargs="*", help="sections to run (default: all)")
    parser.add_argument("--max-minutes", type=float, default=9.0,
                        help="start no section after this many minutes")  # fmt: skip
    args = parser.parse_args()
    s = SMOKE if args.smoke else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {device_name()}, torch "
          f"{torch.__version__}, torchvision {torchvision.__version__}, "
          f"{platform.processor() or platform.machine()}", flush=True)  # fmt: skip
    sections = {  # the most important figures first, the slow compiles last
        "cifar": lambda: cifar_section(s),
        "resnet50": lambda: resnet50_section(s),
        "inference": lambda: inference_section(s),
        "models": lambda: other_models_section(s),
        "checkpointing": lambda: checkpointing_section(s),
        "scaling": lambda: scaling_section(s, args.out),
        "compile": lambda: None if args.no_compile else compile_section(s),
    }
    torch.backends.cudnn.benchmark = True  # as the engine sets it: the same for every row
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # "fp32/TF32"
    started = time.perf_counter()
    for key, run in sections.items():
        if args.only and key not in args.only:
            continue
        if time.perf_counter() - started > 60 * args.max_minutes:
            row(f"section {key}", "skipped", None, 0, note=f"past --max-minutes {args.max_minutes}")
            continue
        t0 = time.perf_counter()
        try:
            run()
        except Exception as exc:  # one broken section must not cost the others' figures
            traceback.print_exc()
            row(f"section {key}", "failed", None, 0, error=f"{type(exc).__name__}: {exc}"[:200])
        print(f"-- {key}: {time.perf_counter() - t0:.0f} s", flush=True)
        write_table(args.out, args.smoke, time.perf_counter() - started)
    print(f"total {time.perf_counter() - started:.0f} s; table in {args.out / 'table.json'}")
    failed = [r for r in ROWS if r["setting"] == "failed" or r.get("ok") is False]
    if failed:
        raise SystemExit(f"{len(failed)} failed check(s) or section(s); see above")


def write_table(out: Path, smoke: bool, seconds: float) -> None:
    """The rows so far, rewritten after every section so a cut-off run keeps what it measured."""
    table = {"device": device_name(), "torch": torch.__version__,
             "torchvision": torchvision.__version__, "smoke": smoke, "seconds": seconds,
             "rows": ROWS}  # fmt: skip
    (out / "table.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
