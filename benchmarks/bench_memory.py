"""Training memory with and without activation checkpointing, and what the recomputation costs.

    python benchmarks/bench_memory.py [--cases resnet1202:32:32 resnet152:224:8] [--steps 2]

Per case (model:image size:batch) and setting, a fresh process trains ``--steps`` engine steps
and reports the step time and its peak memory: on CUDA the allocator's peak
(``torch.cuda.max_memory_allocated``), on the CPU the growth of the process's peak resident
set over the same steps after model and data are set up (``ru_maxrss``). The bytes autograd
keeps for backward (``saved_activation_bytes``, exact on any device) are reported too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

import torch

WORKER = r"""
import json, resource, sys, tempfile, time
import torch
from resnetlab.analysis import saved_activation_bytes
from resnetlab.data import DataBundle, ImageSet
from resnetlab.models import create_model
from resnetlab.train import Callback, TrainConfig, train

name, on = sys.argv[1], sys.argv[5] == "1"
size, batch, steps = (int(v) for v in sys.argv[2:5])
cuda = torch.cuda.is_available()
images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
data = ImageSet(images, torch.arange(batch) % 10, [str(k) for k in range(10)], "random")
bundle = DataBundle(data, None, None, data.classes, 3, (size, size), "random", "random")
model = create_model(name)
model.set_grad_checkpointing(on)

class Probe(Callback):
    def on_start(self, state):
        if cuda:
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        self.rss0, self.t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    def on_end(self, state, result):
        if cuda:
            torch.cuda.synchronize()
        self.seconds = (time.perf_counter() - self.t0) / steps
        self.peak = (torch.cuda.max_memory_allocated() if cuda else
                     1024 * (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.rss0))

probe = Probe()
with tempfile.TemporaryDirectory() as out:
    config = TrainConfig(model=name, batch_size=batch, lr=0.01, milestones=(), augment=False,
                         max_iters=steps, eval_every=10**9, checkpoint_every=10**9,
                         log_every=10**9, out_dir=out, progress=False, cuda_graphs=False,
                         activation_checkpointing=on, normalisation="none")
    train(config, model=model, data=bundle, callbacks=[probe])
x = torch.randn(batch, 3, size, size, device=next(model.parameters()).device)
saved = saved_activation_bytes(model.train(), x)  # after training: it must not set the peak
print(json.dumps({"saved_bytes": saved, "peak_bytes": probe.peak, "step_s": probe.seconds}))
"""


def measure(name: str, size: int, batch: int, steps: int, on: bool) -> dict:
    """One case in a fresh process, so that one setting's peak cannot hide the other's."""
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "worker.py")
        with open(script, "w") as f:
            f.write(WORKER)
        done = subprocess.run([sys.executable, script, name, str(size), str(batch), str(steps),
                               "1" if on else "0"], capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["resnet1202:32:32", "resnet152:224:8"])
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    peak_kind = "CUDA allocator peak" if cuda else "peak RSS growth"
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {device}, torch "
          f"{torch.__version__}, {platform.machine()}; memory = {peak_kind}")  # fmt: skip
    gib = 2**30
    for case in args.cases:
        name, size, batch = case.split(":")
        results = {on: measure(name, int(size), int(batch), args.steps, on) for on in (False, True)}
        for on, r in results.items():
            label = f"{name} {size}px b{batch} checkpointing {'on ' if on else 'off'}"
            if "error" in r:
                print(f"{label}: {r['error']}")
                continue
            print(
                f"{label}: saved for backward {r['saved_bytes'] / gib:6.2f} GiB, "
                f"memory {r['peak_bytes'] / gib:6.2f} GiB, step {r['step_s']:7.2f} s",
                flush=True,
            )
        off, on = results[False], results[True]
        if "error" not in off and "error" not in on:
            print(f"  -> {off['saved_bytes'] / on['saved_bytes']:.2f}x less kept for backward, "
                  f"{off['peak_bytes'] / max(on['peak_bytes'], 1):.2f}x lower peak, "
                  f"step x{on['step_s'] / off['step_s']:.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
