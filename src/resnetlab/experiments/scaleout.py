"""A study's measurements split over the processes ``torchrun`` starts, for the study runner
alone (a study never sees ranks).

Launched as ``torchrun --nproc-per-node N -m resnetlab <study> ...`` (one process per GPU, or
several on a CPU), every process joins one Gloo group (the records it exchanges are Python
objects, whatever device a measurement uses; each rank's current GPU is its local one). Rank 0
alone does what touches the run folder: it creates it, holds its lock, writes ``config.json``,
``run.json``, the journal and the result; the other ranks wait for it at each of these steps,
and an error on any rank stops every rank with the same message. The measurements are taken in
rounds, one per rank each round (round r, rank k: the (r·N + k)-th measurement still to take),
and gathered on every rank (so that a failure anywhere stops them all at the same point); rank 0
journals each round in plan order, so the journal and the result are those of one process, and
an interruption loses at most one round. The group lives as long as the process.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar

import torch.distributed as dist

from .. import console
from ..errors import ResnetlabError
from ..train import distributed
from ..train.distributed import Dist

T = TypeVar("T")
# How long a rank waits at an exchange for the slowest one: a measurement may train a net.
TIMEOUT = timedelta(days=7)
_ACTIVE: ContextVar[bool] = ContextVar("resnetlab_scaleout", default=False)


class RankFailed(RuntimeError):
    """Another rank's error (not a user error), raised on the ranks that did not see it."""


class Failure(NamedTuple):
    """An error as it travels between ranks: where it happened, its type and its message."""

    rank: int
    kind: str
    message: str
    user: bool  # a ResnetlabError: the same one-line user error on every rank


class Ranks:
    """This process's place among a study's processes, and the exchanges the runner makes
    (each a plain call for one process, which runs exactly as it did without scale-out)."""

    def __init__(self, info: Dist | None = None) -> None:
        self.info = info or Dist()
        self.own: Exception | None = None  # this rank's last error, raised as it is

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def size(self) -> int:
        return self.info.world_size

    @property
    def main(self) -> bool:
        return self.info.main

    def lead(self, work: Callable[[], T]) -> T:
        """``work()`` on rank 0 alone; every rank returns its result (picklable), or raises
        its error, once rank 0 is done (the others wait for it here)."""
        if self.size == 1:
            return work()
        value, failure = self._attempt(work) if self.main else (None, None)
        box: list[Any] = [(value, failure)]
        dist.broadcast_object_list(box, src=0)
        value, failure = box[0]
        self.raise_first([failure])
        return value

    def in_turn(self, work: Callable[[], None]) -> None:
        """``work()`` on rank 0, then on the other ranks (which so read what rank 0 wrote, e.g.
        a study's random directions, instead of writing them again)."""
        self.lead(work)
        if self.size > 1:
            _, failure = (None, None) if self.main else self._attempt(work)
            self.raise_first(self._gather(failure))

    def each(self, items: Sequence[Any], work: Callable[[Any], T]
             ) -> tuple[list[T | None], list[Failure | None]]:  # fmt: skip
        """``work(items[rank])`` on each rank that has an item; every rank gets all results
        and failures, in item order (one rank: ``work`` runs on each item, errors raised)."""
        if self.size == 1:
            return [work(item) for item in items], [None] * len(items)
        mine: tuple[Any, Failure | None] = (None, None)
        if self.rank < len(items):
            mine = self._attempt(lambda: work(items[self.rank]))
        gathered = self._gather(mine)[: len(items)]
        return [v for v, _ in gathered], [f for _, f in gathered]

    def raise_first(self, failures: Sequence[Failure | None]) -> None:
        """Raise the first failure: the original exception on the rank it came from, else the
        same user error, or a :class:`RankFailed` naming the rank."""
        found = next((f for f in failures if f is not None), None)
        if found is None:
            return
        if found.rank == self.rank and self.own is not None:
            raise self.own
        if found.user:
            raise ResnetlabError(found.message)
        raise RankFailed(f"rank {found.rank}: {found.kind}: {found.message}")

    def rounds(self, todo: Sequence[T]) -> Iterator[Sequence[T]]:
        """``todo`` in rounds of one item per rank, in order."""
        for start in range(0, len(todo), self.size):
            yield todo[start : start + self.size]

    def first_only(self, context: Callable[[], AbstractContextManager[Any]]) -> ExitStack:
        """The context ``context()`` entered on rank 0 alone (e.g. the folder's lock), left
        when the returned stack closes; failing to enter it stops every rank."""
        stack = ExitStack()

        def enter() -> None:
            stack.enter_context(context())

        self.lead(enter)
        return stack

    def _attempt(self, work: Callable[[], Any]) -> tuple[Any, Failure | None]:
        """``work()``, an Exception kept (``own``) and turned into a Failure to send; a Ctrl-C
        or SIGTERM still stops the process at once (and torchrun stops the others)."""
        try:
            return work(), None
        except Exception as exc:
            self.own = exc
            return None, Failure(self.rank, type(exc).__name__, str(exc),
                                 isinstance(exc, ResnetlabError))  # fmt: skip

    def _gather(self, item: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, item)
        return out


def main_process() -> bool:
    """Whether this process speaks for a study: rank 0 under torchrun, or a process alone
    (the command line prints a result only there)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def processes() -> int:
    """How many processes a study run started now is split over: the process group's (or
    torchrun's WORLD_SIZE), 1 alone or inside another study's measurement."""
    if _ACTIVE.get():
        return 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


@contextmanager
def joined() -> Iterator[Ranks]:
    """This process's :class:`Ranks` for one study run: the torchrun group when launched by
    torchrun with several processes (messages and progress silenced on all but rank 0), else
    one process. A study run inside another one's measurement (the demo's parts) runs alone.
    A group joined here is kept for the process's later runs and left when it exits: a Gloo
    group made again in the same processes can meet the old one's closing connections."""
    if processes() == 1:
        yield Ranks()
        return
    info, created = distributed.setup("auto", backend="gloo", timeout=TIMEOUT)
    if created:
        atexit.register(_leave, info)
    token = _ACTIVE.set(True)
    quiet = console.set_quiet(True) if not info.main else console.is_quiet()
    try:
        yield Ranks(info)
    finally:
        console.set_quiet(quiet)
        _ACTIVE.reset(token)


def _leave(info: Dist) -> None:
    """Leave the group together at exit: a barrier first, so that no process closes its
    connections while another still sends on them (a Gloo thread cut off mid-send aborts the
    process after its work is done)."""
    with suppress(RuntimeError, ValueError):  # a peer already gone: nothing to wait for
        dist.barrier()
    distributed.cleanup(info)


__all__ = ["Failure", "RankFailed", "Ranks", "joined", "main_process", "processes"]
