"""``resnetlab serve`` batches: requests that arrive together run as one forward pass (counted
by size) with the answers of unbatched prediction; a full queue is a 503 with Retry-After at
once; a lone request does not wait for the window; a refused or cut request frees its place."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.cli import build_parser
from resnetlab.errors import ResnetlabError
from resnetlab.serve import Batcher, BatchingSettings, load_served
from resnetlab.serve.app import create_app
from resnetlab.serve.batcher import Busy
from test_serve import Server


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 256, (40, 48, 3)).astype(np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served():
    torch.manual_seed(0)
    return load_served("resnet20", top_k=3)  # random weights, 32 px, 10 classes: quick


class Slow:
    """A forward pass that takes ``seconds`` and records each batch's size."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.sizes = seconds, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        time.sleep(self.seconds)
        return x * 2


def test_the_batcher_groups_what_arrives_together_and_keeps_the_order() -> None:
    forward = Slow(0.05)
    batcher = Batcher(forward, BatchingSettings(max_batch=4, batch_window_ms=200, max_queue=16))

    async def one(i: int) -> torch.Tensor:
        with batcher.slot() as slot:
            await asyncio.sleep(0.002 * i)  # reading and decoding, of different lengths
            return await slot.run(torch.full((1, 2), float(i)))

    async def main() -> list[torch.Tensor]:
        out = await asyncio.gather(*(one(i) for i in range(10)))
        await batcher.close()
        return out

    out = asyncio.run(main())
    assert [float(o[0, 0]) for o in out] == [2.0 * i for i in range(10)]
    assert sum(forward.sizes) == 10 and max(forward.sizes) == 4 and len(forward.sizes) <= 4
    assert sum(k * n for k, n in batcher.sizes.items()) == 10 and batcher.arriving == 0


def test_a_lone_request_does_not_wait_for_the_window() -> None:
    batcher = Batcher(Slow(0.0), BatchingSettings(batch_window_ms=5000))

    async def main() -> float:
        start = time.perf_counter()
        with batcher.slot() as slot:
            await slot.run(torch.ones(1, 3))
        await batcher.close()
        return time.perf_counter() - start

    assert asyncio.run(main()) < 1.0


def test_a_lone_request_is_decoded_and_run_in_one_call_on_the_batch_thread() -> None:
    forward = Slow(0.0)
    batcher = Batcher(forward)

    def infer(value: float) -> tuple[str, torch.Tensor]:
        return threading.current_thread().name, forward(torch.full((1, 2), value))

    async def main() -> tuple[bool, bool, str]:
        with batcher.slot() as first:
            with batcher.slot() as second:
                both = first.alone or second.alone  # another is arriving: batched
                await second.run(torch.ones(1, 2))
            alone = first.alone
            where, out = await first.call(infer, 3.0)
        await batcher.close()
        assert float(out[0, 0]) == 6.0 and batcher.busy == 0 and batcher.arriving == 0
        return both, alone, where

    both, alone, where = asyncio.run(main())
    assert not both and alone and where.startswith("resnetlab-batch")
    assert batcher.sizes == {1: 2}


def test_a_full_queue_refuses_at_once_and_a_freed_place_is_taken_again() -> None:
    batcher = Batcher(Slow(0.0), BatchingSettings(max_batch=2, max_queue=2))
    batcher.batch_s = 1.5  # the last batch's time: two batches' worth waiting, 3 s
    first, second = batcher.slot(), batcher.slot()
    with pytest.raises(Busy, match="busy") as refused:
        batcher.slot()
    assert refused.value.retry_after == 2  # ceil(2 waiting / 2 per batch * 1.5 s)
    with first:  # left without handing an input over (a bad upload): the place is free
        pass
    with batcher.slot(), second:
        assert batcher.arriving == 2
    assert batcher.arriving == 0


def test_concurrent_clients_share_batches_with_the_unbatched_answers(served) -> None:
    images = [jpeg(i) for i in range(12)]
    expected = [served.predict(data) for data in images]
    app = create_app(served, batching=BatchingSettings(max_batch=8, batch_window_ms=100))
    with Server(app) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        barrier = threading.Barrier(len(images))

        def ask(data: bytes) -> dict:
            barrier.wait()  # all at once
            response = client.post("/predict", content=data)
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(len(images)) as pool:
            answers = list(pool.map(ask, images))
        info = client.get("/info").json()
    sizes = {int(k): n for k, n in info["batches"].items()}
    assert sum(k * n for k, n in sizes.items()) == len(images) and max(sizes) > 1, sizes
    assert max(sizes) <= 8 and info["batching"]["max_batch"] == 8
    for got, want in zip(answers, expected, strict=True):
        assert got["decision"] == want["decision"]
        gap = max(abs(a["probability"] - b["probability"])
                  for a, b in zip(got["classes"], want["classes"], strict=True))  # fmt: skip
        assert gap <= 1e-6
    assert info["engine"] == served.engine_name


def test_a_full_queue_is_a_503_with_retry_after_and_the_server_recovers(served) -> None:
    slow = Slow(0.6)
    original = served.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        slow(x)
        return original(x)

    settings = BatchingSettings(max_batch=1, batch_window_ms=0, max_queue=1)
    app = create_app(served, batching=settings)
    app.state.batcher.forward = forward
    data = jpeg(0)
    with Server(app) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: client.post("/predict", content=data), range(6)))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 1 and codes.count(503) >= 1 and set(codes) <= {200, 503}
        busy = next(r for r in responses if r.status_code == 503)
        assert int(busy.headers["retry-after"]) >= 1 and "busy" in busy.json()["error"]
        assert app.state.batcher.arriving == 0 and not app.state.batcher.waiting
        assert client.post("/predict", content=data).status_code == 200


def test_serve_takes_the_batching_and_engine_flags() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "resnet20", "--max-batch", "4", "--batch-window-ms", "2.5",
                              "--max-queue", "9", "--engine", "torch"])  # fmt: skip
    given = (args.max_batch, args.batch_window_ms, args.max_queue, args.engine)
    assert given == (4, 2.5, 9, "torch")
    with pytest.raises(ResnetlabError, match="max_batch"):
        BatchingSettings(max_batch=0)
