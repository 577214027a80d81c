"""Ordered, memory-bounded parallel map on threads (work that releases the GIL: decoding, torch)."""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from pathtrail.core.system import usable_cpus

T = TypeVar("T")
R = TypeVar("R")


def resolve_workers(num_workers: int) -> int:
    """`runtime.num_workers` as a thread count: -1 is usable cores - 1 (at most 8), as for loaders."""
    return num_workers if num_workers >= 0 else max(0, min(8, usable_cpus() - 1))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                in_flight: int | None = None) -> Iterator[R]:
    """`fn(item)` for each item, yielded in the order of `items` whatever the number of workers.

    workers <= 0: in this thread, one at a time. Otherwise on `workers` threads, with at most
    `in_flight` items (default 2 * workers) submitted and not yet yielded, so memory is bounded by
    that many results whatever the number of items; `items` is consumed lazily, in order, here.
    An exception from `fn` is raised here, at its item's place; items not yet started are dropped.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    limit = max(1, in_flight or 2 * workers)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="pathtrail")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class PerThread(Generic[T]):
    """`template` in the thread that made this, a copy of it in each other thread: for objects that
    hold per-call scratch state."""

    def __init__(self, template: T) -> None:
        self.template = template
        self._owner = threading.get_ident()
        self._local = threading.local()

    def get(self) -> T:
        if threading.get_ident() == self._owner:
            return self.template
        value = getattr(self._local, "value", None)
        if value is None:
            value = self._local.value = copy.deepcopy(self.template)
        return value
