"""Dynamic batching for ``resnetlab serve``: the inputs of requests that arrive together run as
one forward pass, in one worker thread, so concurrent clients share a batch instead of
competing for the cores.

A request takes a :class:`Slot` when it arrives (refused with :class:`Busy`, a 503 with
Retry-After, once ``max_queue`` requests are waiting or being read), then hands its input to
the batch loop. The loop takes everything waiting, up to ``max_batch``; while more admitted
requests are still being read or decoded it waits for them up to ``batch_window_ms``. A lone
request (nothing waiting, running or arriving) never waits: it is decoded and run in one call
on the batch thread (:meth:`Slot.call`), with no more thread hops than an unbatched server.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ..groups import Checked
from ..settings import setting

T = TypeVar("T")


@dataclass
class BatchingSettings(Checked):
    """How ``resnetlab serve`` groups concurrent requests into one forward pass."""

    max_batch: int = setting(16, "most images run as one forward pass", ">= 1")
    batch_window_ms: float = setting(
        10.0, "longest wait for requests still arriving to join a batch, in ms (0: never "
        "wait; a lone request never waits)", ">= 0",
    )  # fmt: skip
    max_queue: int = setting(
        64, "requests waiting or being read at most; more are refused (503, Retry-After)", ">= 1"
    )


class Busy(Exception):
    """The queue is full: the request is refused, to be retried after ``retry_after`` s."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(
            f"the server is busy ({waiting} requests waiting); retry after {retry_after} s"
        )
        self.retry_after = retry_after


@dataclass
class _Item:
    x: torch.Tensor
    done: asyncio.Future


class Batcher:
    """Runs ``forward`` (a batch of inputs to a batch of outputs, row for row) on batches of
    the requests' inputs; ``sizes`` counts the batches run by size."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        settings: BatchingSettings | None = None,
    ) -> None:
        self.forward = forward
        self.settings = settings or BatchingSettings()
        self.waiting: deque[_Item] = deque()
        self.arriving = 0  # admitted, input not handed over yet (being read or decoded)
        self.sizes: Counter[int] = Counter()
        self.batch_s = 0.0  # the last batch's forward time: Retry-After's estimate
        self.busy = 0  # forward passes running or handed to the worker thread
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="resnetlab-batch")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def slot(self) -> Slot:
        """A place in the queue for one request; :class:`Busy` when it is full."""
        queued = len(self.waiting) + self.arriving
        if queued >= self.settings.max_queue:
            batches = math.ceil(queued / self.settings.max_batch)
            raise Busy(queued, max(1, math.ceil(batches * self.batch_s)))
        self.arriving += 1
        return Slot(self)

    def alone(self) -> bool:
        """Whether a request still arriving is the only one: nothing waiting or running."""
        return not self.waiting and not self.busy and self.arriving == 1

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the worker thread, counted as a batch of one."""
        start = time.perf_counter()
        self.busy += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.busy -= 1
        self.batch_s = time.perf_counter() - start
        self.sizes[1] += 1
        return result

    async def run(self, x: torch.Tensor) -> torch.Tensor:
        """The output for one input (1, ...), computed in a batch with others'."""
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name="resnetlab-batcher")
        assert self._wake is not None
        done = asyncio.get_running_loop().create_future()
        self.waiting.append(_Item(x, done))
        self._wake.set()
        return await done

    async def close(self) -> None:
        """Stop the loop and the worker thread (the app's shutdown)."""
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _loop(self) -> None:
        loop, wake = asyncio.get_running_loop(), self._wake
        assert wake is not None
        limit, window = self.settings.max_batch, self.settings.batch_window_ms / 1000
        while True:
            while not self.waiting:
                wake.clear()
                await wake.wait()
            deadline = loop.time() + window
            while len(self.waiting) < limit and self.arriving and loop.time() < deadline:
                wake.clear()  # set again by the next request handed over
                try:
                    await asyncio.wait_for(wake.wait(), deadline - loop.time())
                except TimeoutError:
                    break
            items = [self.waiting.popleft() for _ in range(min(limit, len(self.waiting)))]
            items = [item for item in items if not item.done.done()]  # a client gone
            if items:
                await self._run(items)

    async def _run(self, items: list[_Item]) -> None:
        start = time.perf_counter()
        self.busy += 1
        try:
            x = torch.cat([item.x for item in items])
            out = await asyncio.get_running_loop().run_in_executor(self.executor, self.forward, x)
        except Exception as exc:  # every request of the batch gets the error
            for item in items:
                if not item.done.done():
                    item.done.set_exception(exc)
            return
        finally:
            self.busy -= 1
        self.batch_s = time.perf_counter() - start
        self.sizes[len(items)] += 1
        for k, item in enumerate(items):
            if not item.done.done():
                item.done.set_result(out[k : k + 1])


class Slot:
    """One admitted request: hand its input over with :meth:`run`; leaving the ``with`` block
    without it (a bad upload) frees the place."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher, self.arriving = batcher, True

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handed_over()

    def _handed_over(self) -> None:
        if self.arriving:
            self.arriving = False
            self.batcher.arriving -= 1

    @property
    def alone(self) -> bool:
        """Whether this request is the only one: nothing waiting, running or arriving."""
        return self.arriving and self.batcher.alone()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (decoding and the forward pass of a lone request) on the worker
        thread, as a batch of one."""
        self._handed_over()
        return await self.batcher.call(fn, *args)

    async def run(self, x: torch.Tensor) -> torch.Tensor:
        """The output for this request's input, from a batch."""
        self._handed_over()
        return await self.batcher.run(x)
