"""Latency of ``resnetlab serve`` against the in-process predict path, same run, same images.

    python benchmarks/bench_serve.py [--requests 200] [--size 224] [--threads 1]

A fine-tune-like run folder of ResNet-18 (random weights, two classes with a temperature and
a threshold, 224 px input) is served by ``resnetlab serve`` in a subprocess on 127.0.0.1; one
client sends the images one after another as the raw body of ``POST /predict`` (no Grad-CAM).
The same images (JPEG, 320x256) are first predicted in this process, before the server
starts (so the two processes never compete for the cores), by:
  in-process  ``ServedModel.predict`` on the image bytes: the server's own code without HTTP,
  predict     ``predict_files`` on the image file: what ``resnetlab predict`` runs per call
              (it folds BatchNorm on each call).
Reported: p50 and p95 per path and the serve / in-process ratio. Both processes run torch
with ``--threads`` intra-op threads (default 1: on two cores shared with other jobs, two
threads per process make every forward wait at OpenMP barriers for a core).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from resnetlab.artifact import load_trained as load_model
from resnetlab.card import build_from_card, write_card
from resnetlab.data.preprocess import Preprocessing
from resnetlab.finetune.predict import predict_files
from resnetlab.serve import load_served
from resnetlab.weights import save_weights


def make_run(folder: Path, size: int) -> Path:
    """A run folder as ``resnetlab finetune`` leaves it, of a random-weight ResNet-18."""
    torch.manual_seed(0)
    prep = Preprocessing(size, round(size * 256 / 224), [0.485, 0.456, 0.406],
                         [0.229, 0.224, 0.225])  # fmt: skip
    card = {
        "model": {"name": "resnet18", "in_channels": 3, "options": {}, "num_classes": 2,
                  "head_dropout": 0.0},
        "classes": ["negative", "positive"],
        "preprocessing": prep.to_dict(),
        "calibration": {"temperature": 1.5, "fitted_on": "val"},
        "operating_point": {"rule": "fixed", "threshold": 0.4, "positive_class": "positive"},
    }  # fmt: skip
    folder.mkdir(parents=True)
    save_weights(build_from_card(card), folder / "model.safetensors")
    write_card(folder, card)
    return folder


def make_images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        base = rng.integers(0, 256, (16, 20, 3)).astype(np.uint8)  # smooth, photo-like sizes
        image = Image.fromarray(base).resize((320, 256), Image.BILINEAR)
        image.save(folder / f"{i:03d}.jpg", quality=90)
        paths.append(folder / f"{i:03d}.jpg")
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    run: Path, port: int, threads: int, *flags: str, src: str | None = None
) -> subprocess.Popen:
    """``resnetlab serve RUN`` with ``threads`` torch threads (and ``flags``; from the package
    in the folder ``src`` when given), once it answers."""
    command = [sys.executable, "-m", "resnetlab.cli", "serve", str(run), "--port", str(port),
               *flags]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    if src is not None:
        env["PYTHONPATH"] = src
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 600  # a shared machine can take minutes to import torch
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/info", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
    server.terminate()
    raise SystemExit("the server did not start within 600 s")


def percentiles(times: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(times, n=100, method="inclusive")
    return 1000 * q[49], 1000 * q[94]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", args.size)
        paths = make_images(Path(tmp) / "images", args.requests)
        blobs = [p.read_bytes() for p in paths]
        served, loaded = load_served(str(run)), load_model(run)
        times: dict[str, list[float]] = {"serve": [], "in-process": [], "predict": []}
        answers = []
        for blob, path in zip(blobs[: args.warmup], paths, strict=False):
            served.predict(blob)
            predict_files(loaded, [path])
        for blob, path in tqdm(list(zip(blobs, paths, strict=True)), desc="in-process"):
            start = time.perf_counter()
            answers.append(served.predict(blob)["probability"])
            times["in-process"].append(time.perf_counter() - start)
            start = time.perf_counter()
            predict_files(loaded, [path])
            times["predict"].append(time.perf_counter() - start)
        # The server starts once this process's torch threads are idle: on two cores, spinning
        # OpenMP threads of the other process would slow whichever path runs next.
        port = free_port()
        server = start_server(run, port, args.threads)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                for blob in blobs[: args.warmup]:
                    client.post("/predict", content=blob).raise_for_status()
                for blob, mine in tqdm(list(zip(blobs, answers, strict=True)), desc="serve"):
                    start = time.perf_counter()
                    answer = client.post("/predict", content=blob)
                    times["serve"].append(time.perf_counter() - start)
                    answer.raise_for_status()
                    gap = abs(answer.json()["probability"] - mine)
                    assert gap <= 1e-5, f"serve and in-process disagree by {gap}"
        finally:
            server.terminate()
            server.wait(30)
    stats = {name: percentiles(t) for name, t in times.items()}
    base = stats["in-process"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); date "
          f"{datetime.date.today()}; {args.requests} sequential requests, ResNet-18 at "
          f"{args.size} px, JPEG 320x256; load average {load:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")  # fmt: skip
    print("\n| path | p50 (ms) | p95 (ms) | p50 / in-process | p95 / in-process |")
    print("|---|---|---|---|---|")
    for name, (p50, p95) in stats.items():
        print(f"| {name} | {p50:.1f} | {p95:.1f} | {p50 / base[0]:.2f} | {p95 / base[1]:.2f} |")


if __name__ == "__main__":
    main()
