"""Deployment speed on the CPU: ``optimize_for_inference`` against ONNX Runtime and torchvision,
what each engine costs at start-up, the batching server and ``resnetlab predict``, in one run.

    python benchmarks/bench_deploy.py [--threads 2] [--repeats 5] [--inductor] [--only SECTION]

1. Throughput, interleaved repeats, median, every engine with ``--threads`` intra-op threads:
     tv        torchvision's model, eager, NCHW (CIFAR rows: resnetlab's eager model; torchvision
               has no CIFAR ResNet),
     torch     ``optimize_for_inference(engine="torch")``: BatchNorm folded, channels-last,
     ORT       the file ``resnetlab export --format onnx`` writes, in an ONNX Runtime session
               with the same threads (the reference),
     ours      ``optimize_for_inference(model)``: what predict, evaluate and serve run,
     inductor  (``--inductor``) the folded model under ``torch.compile`` with frozen weights.
   Ratios: ours / ORT, ours / tv; the largest |logit - eager| of each engine.
2. Start-up: folding (torch), export + check + session with an empty cache, and from the cache;
   one loss-landscape point (a new net: an export each time) on torch and on ORT.
3. ``resnetlab serve`` (ResNet-18, 224 px, JPEGs of 320x256) in a subprocess: 16 concurrent
   clients against offline batch-16 prediction of the same images in this process (decode,
   preprocess, forward, answer), rounds interleaved; one client, sequential, against the
   server run as before this change (torch path, no batching).
4. ``predict``: ``predict_files`` per call against ``ServedModel.predict`` in process, and the
   ``resnetlab predict`` command on a folder (torch; ORT from an empty cache; ORT cached).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import onnxruntime
import torch
import torch.nn.functional as F
import torchvision

from bench_serve import free_port, make_images, make_run, percentiles, start_server
from resnetlab import create_model
from resnetlab.artifact import load_trained
from resnetlab.export import export_model
from resnetlab.finetune.predict import predict_files
from resnetlab.models.inference import optimize_for_inference
from resnetlab.serve import ServedModel, load_served

CL = torch.channels_last
ROWS = [
    ("resnet18", 224, 1, 8),
    ("resnet18", 224, 8, 3),
    ("resnet50", 224, 1, 4),
    ("resnet50", 224, 8, 2),
    ("resnet20", 32, 256, 3),
    ("resnet56", 32, 256, 2),
]
# (model, px, batch, timed passes per repeat)


def nontrivial(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm statistics, so folding has something to fold and a slip shows (variances
    of 1-2: the logits stay of the order of a trained net's)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 1.0)
    return model.eval()


def ort_reference(model: torch.nn.Module, size: int, threads: int, folder: Path, scale: float):
    """The exported file as a user runs it: an ORT session with ``threads`` threads, its other
    options ORT's defaults (checked to 1e-4 of the logits' scale, ``scale``)."""
    path = folder / "model.onnx"
    export_model(model, path, "onnx", torch.randn(1, 3, size, size), tolerance=1e-4 * scale)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def inductor(folded: torch.nn.Module, x: torch.Tensor) -> tuple[Callable, float]:
    """The folded model compiled by inductor with frozen weights, and the compile time."""
    import torch._inductor.config as inductor_config  # only with --inductor

    inductor_config.freezing = True
    compiled = torch.compile(folded)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(x)
    return compiled, time.perf_counter() - start


def throughput(args: argparse.Namespace, folder: Path) -> None:
    extra = "inductor | " if args.inductor else ""
    print(
        f"\n| model | px | batch | tv eager | torch path | ORT (same threads) | ours | {extra}"
        "ours / ORT | ours / tv | max abs diff (torch, ORT, ours) |"
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if extra else "") + "---|---|---|")
    for name, size, batch, iters in ROWS:
        print(row(args, folder, name, size, batch, iters), flush=True)


def row(args: argparse.Namespace, folder: Path, name: str, size: int, batch: int, iters: int):
    """One model, input size and batch: every engine, interleaved; a table row."""
    torch.manual_seed(0)
    model = nontrivial(create_model(name))
    tv = model
    if hasattr(torchvision.models, name):
        tv = nontrivial(getattr(torchvision.models, name)())
        tv.load_state_dict(model.state_dict())
    x = torch.randn(batch, 3, size, size)
    x_cl, array = x.contiguous(memory_format=CL), x.numpy()
    with torch.inference_mode():
        expected = model(x)
    scale = max(1.0, float(expected.abs().max()))
    session = ort_reference(model, size, args.threads, folder, scale)
    fast = optimize_for_inference(model, engine="torch")
    ours = optimize_for_inference(model, input_size=(3, size, size))
    runs: dict[str, Callable] = {
        "tv": lambda: tv(x),
        "torch": lambda: fast(x_cl),
        "ORT": lambda: torch.from_numpy(session.run(None, {"input": array})[0]),
        "ours": lambda: ours(x),
    }
    compile_s = 0.0
    if args.inductor:
        compiled, compile_s = inductor(optimize_for_inference(model, engine="torch"), x_cl)
        runs["inductor"] = lambda: compiled(x_cl)
    with torch.inference_mode():
        diffs = [float((runs[k]() - expected).abs().max()) for k in ("torch", "ORT", "ours")]
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):  # interleaved: load changes hit every engine alike
            for key, run in runs.items():
                for _ in range(iters):
                    start = time.perf_counter()
                    run()
                    times[key].append(time.perf_counter() - start)
    rate = {k: batch / statistics.median(v) for k, v in times.items()}
    cells = [name, size, batch, *(f"{rate[k]:.1f}" for k in ("tv", "torch", "ORT", "ours"))]
    if args.inductor:
        cells.append(f"{rate['inductor']:.1f} (compile {compile_s:.0f} s)")
    cells += [f"**{rate['ours'] / rate['ORT']:.2f}**", f"{rate['ours'] / rate['tv']:.2f}"]
    cells.append(", ".join(f"{d:.1e}" for d in diffs) + f" (logits up to {scale:.0f})")
    return "| " + " | ".join(map(str, cells)) + " |"


def startup(args: argparse.Namespace) -> None:
    print(
        "\n| model | px | torch path: fold | ORT, empty cache: export + check | session | "
        "total | ORT, cached: hash + read | session | total |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, size in dict.fromkeys((n, s) for n, s, _, _ in ROWS):
        model = nontrivial(create_model(name))
        walls, startups = [], []
        with tempfile.TemporaryDirectory() as home:
            os.environ["RESNETLAB_HOME"] = home
            for engine in ("torch", "auto", "auto"):
                start = time.perf_counter()
                built = optimize_for_inference(model, engine=engine, input_size=(3, size, size))
                walls.append(time.perf_counter() - start)
                startups.append(getattr(built, "startup", None))
        cold, warm = startups[1], startups[2]
        print(
            f"| {name} | {size} | {walls[0]:.2f} s | {cold.export_s:.2f} s | "
            f"{cold.session_s:.2f} s | {walls[1]:.2f} s | {warm.lookup_s:.2f} s | "
            f"{warm.session_s:.2f} s | {walls[2]:.2f} s |",
            flush=True,
        )
    os.environ["RESNETLAB_HOME"] = args.home
    landscape_point(args)


def landscape_point(args: argparse.Namespace) -> None:
    """One loss-landscape point (a new net each time: ORT pays an export per point) on 2,000
    CIFAR-size images at batch 500, torch against ORT, interleaved after one warm-up each."""
    x, y = torch.randn(2000, 3, 32, 32), torch.randint(0, 10, (2000,))
    for name in ("resnet20", "resnet56"):
        model = nontrivial(create_model(name))
        times: dict[str, list[float]] = {"torch": [], "auto": []}
        for round in range(args.repeats // 2 + 2):
            for engine in times:
                start = time.perf_counter()
                folded = optimize_for_inference(model, engine=engine, cache=False)
                with torch.inference_mode():
                    for i in range(0, len(x), 500):
                        F.cross_entropy(folded(x[i : i + 500]), y[i : i + 500])
                if round:  # the first round warms up (the exporter's first use costs more)
                    times[engine].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"landscape point, {name}, 2,000 images: torch {med['torch']:.2f} s, ORT with its "
            f"export {med['auto']:.2f} s: **{med['torch'] / med['auto']:.2f}x**",
            flush=True,
        )


def serving(args: argparse.Namespace, folder: Path) -> None:
    run, n = make_run(folder / "run", 224), args.serve_requests
    blobs = [p.read_bytes() for p in make_images(folder / "images", n)]
    served = load_served(str(run))
    print(
        f"\nserve: ResNet-18 224 px, engine {served.engine_name}, {n} JPEGs of 320x256, "
        f"{args.clients} clients; offline: ServedModel, batches of {args.clients}; the "
        f"server before: {args.before_src or 'this version, --engine torch --max-batch 1'}"
    )
    ports = {"now": free_port(), "before": free_port()}
    flags = () if args.before_src else ("--engine", "torch", "--max-batch", "1")
    servers = [
        start_server(run, ports["now"], args.threads),
        start_server(run, ports["before"], args.threads, *flags, src=args.before_src),
    ]
    got: dict[str, list] = {k: [] for k in ("offline", "forward", "now", "before", "now 1",
                                           "before 1")}  # fmt: skip
    try:
        x = torch.cat([served.prepare(b)[1] for b in blobs[: args.clients]])
        served.forward(x)  # warm: the first pass at a batch size costs more
        for _ in range(args.serve_rounds):  # interleaved; an idle server takes no CPU
            got["offline"].append(offline_rate(served, blobs, args.clients))
            start = time.perf_counter()
            served.forward(x)
            got["forward"].append(args.clients / (time.perf_counter() - start))
            for key, port in ports.items():
                got[key].append(load_test(port, blobs, args.clients))
            for key, port in ports.items():
                got[f"{key} 1"].append(load_test(port, blobs[:20], 1))
        batches = httpx.get(f"http://127.0.0.1:{ports['now']}/info").json()["batches"]
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
    best = statistics.median(got["offline"])
    print(
        f"offline batch-{args.clients} (decode + forward + answer): {best:.1f} img/s (rounds "
        f"{', '.join(f'{v:.1f}' for v in got['offline'])}); forward alone at batch "
        f"{args.clients}: {statistics.median(got['forward']):.1f} img/s"
    )
    print(f"\n| server | clients | img/s | p50 (ms) | p95 (ms) | vs offline batch-{args.clients} |")
    print("|---|---|---|---|---|---|")
    names = {"now": f"batching, {served.engine_name}", "before": "before: one request at a time"}
    for key in ("now", "before", "now 1", "before 1"):
        rate = statistics.median(r["rate"] for r in got[key])
        p50, p95 = percentiles([t for r in got[key] for t in r["times"]])
        clients = 1 if key.endswith(" 1") else args.clients
        print(f"| {names[key.split()[0]]} | {clients} | {rate:.1f} | {p50:.0f} | {p95:.0f} | "
              f"{rate / best:.2f} |")  # fmt: skip
    print(f"batch sizes the batching server ran (size: count): {batches}")


def offline_rate(served: ServedModel, blobs: list[bytes], batch: int) -> float:
    """Images per second of the server's own steps in this process, ``batch`` at a time:
    decode and preprocess, one forward pass, the answers."""
    start = time.perf_counter()
    for i in range(0, len(blobs), batch):
        prepared = [served.prepare(b) for b in blobs[i : i + batch]]
        probs = served.forward(torch.cat([x for _, x in prepared]))
        for k, (raw, _) in enumerate(prepared):
            served.answer(probs[k : k + 1], None, raw[0], None)
    return len(blobs) / (time.perf_counter() - start)


def load_test(port: int, blobs: list[bytes], clients: int) -> dict:
    """``clients`` threads posting the images (keep-alive, the standard library's light client)
    until all are answered: img/s and each request's latency."""
    times: list[float] = []
    todo, started = list(range(len(blobs))), []
    lock = threading.Lock()
    barrier = threading.Barrier(clients, action=lambda: started.append(time.perf_counter()))

    def post(connection: http.client.HTTPConnection, body: bytes) -> None:
        connection.request("POST", "/predict", body=body)
        response = connection.getresponse()
        if response.status != 200:
            raise SystemExit(f"the server answered {response.status}: {response.read()[:200]!r}")
        response.read()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        post(connection, blobs[0])  # warm, and the connection open
        barrier.wait()
        while True:
            with lock:
                if not todo:
                    break
                i = todo.pop()
            start = time.perf_counter()
            post(connection, blobs[i])
            with lock:
                times.append(time.perf_counter() - start)
        connection.close()

    workers = [threading.Thread(target=client) for _ in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"rate": len(blobs) / (time.perf_counter() - started[0]), "times": times}


def predicting(args: argparse.Namespace, folder: Path) -> None:
    run = make_run(folder / "prun", 224)
    paths = make_images(folder / "pimages", 32)
    loaded, served = load_trained(run), load_served(str(run))
    times: dict[str, list[float]] = {"served": [], "predict_files": []}
    predict_files(loaded, paths[:1])  # the first call makes the engine; later ones reuse it
    for path in paths[:20]:
        start = time.perf_counter()
        served.predict(path.read_bytes())
        times["served"].append(time.perf_counter() - start)
        start = time.perf_counter()
        predict_files(loaded, [path])
        times["predict_files"].append(time.perf_counter() - start)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(
        f"\npredict, one image in process (median of 20, ms): ServedModel.predict "
        f"{med['served']:.1f}, predict_files {med['predict_files']:.1f}: "
        f"**{med['predict_files'] / med['served']:.2f}x**"
    )
    base = [
        sys.executable,
        "-m",
        "resnetlab.cli",
        "predict",
        str(run),
        str(folder / "pimages"),
        "--quiet",
    ]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    print("\n| `resnetlab predict RUN FOLDER` (32 images) | wall (s) |\n|---|---|")
    with tempfile.TemporaryDirectory() as home:
        calls = [
            ("imports alone", [sys.executable, "-c", "import resnetlab.cli.finetune"]),
            ("--engine torch", [*base, "--engine", "torch"]),
            ("auto, empty cache", base),
            ("auto, cached", base),
        ]
        for label, argv in calls:
            start = time.perf_counter()
            subprocess.run(
                argv, env=env | {"RESNETLAB_HOME": home}, check=True, stdout=subprocess.DEVNULL
            )
            print(f"| {label} | {time.perf_counter() - start:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, every engine")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inductor", action="store_true", help="add torch.compile, frozen")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--serve-requests", type=int, default=160)
    parser.add_argument("--serve-rounds", type=int, default=3)
    parser.add_argument(
        "--before-src",
        help="the src/ folder of the version before batching, for its server "
        "(default: this version with --engine torch --max-batch 1)",
    )
    sections = ("throughput", "startup", "serve", "predict")
    parser.add_argument("--only", nargs="+", choices=sections, default=sections)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    now = datetime.datetime.now(datetime.UTC)
    print(
        f"{now:%Y-%m-%d %H:%M} UTC; {cpu}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, onnxruntime "
        f"{onnxruntime.__version__}; {args.threads} threads per engine; command: "
        f"python {' '.join(sys.argv)}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        args.home = os.environ["RESNETLAB_HOME"] = str(folder / "home")  # caches start empty
        for name in args.only:
            if name == "startup":
                startup(args)
            else:
                {"throughput": throughput, "serve": serving, "predict": predicting}[name](
                    args, folder
                )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
