"""`ordered_map`: input order whatever the workers, a bounded number in flight, errors in place."""

from __future__ import annotations

import threading
import time

import pytest

from pathtrail.core.parallel import PerThread, ordered_map, resolve_workers


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_results_come_in_input_order_with_bounded_work_in_flight(workers):
    started, lock, consumed = [], threading.Lock(), []

    def slow(i: int) -> int:
        with lock:
            started.append(i)
            # never more than 2 * workers items ahead of the consumer
            assert len(started) - len(consumed) <= max(1, 2 * workers)
        time.sleep(0.002 * ((7 * i) % 5))  # finish out of order
        return i * i

    for value in ordered_map(slow, iter(range(40)), workers):
        consumed.append(value)  # noqa: PERF402 (slow() reads it while the map runs)
    assert consumed == [i * i for i in range(40)]


def test_an_error_is_raised_at_its_item_and_later_items_are_dropped():
    ran = []

    def fail_at_5(i: int) -> int:
        ran.append(i)
        if i == 5:
            raise ValueError("item 5")
        return i

    got = []
    with pytest.raises(ValueError, match="item 5"):
        for value in ordered_map(fail_at_5, range(1000), 2):
            got.append(value)  # noqa: PERF402 (what came before the error)
    assert got == [0, 1, 2, 3, 4] and len(ran) < 20


def test_per_thread_copies_and_worker_count():
    template = {"scratch": []}
    shared = PerThread(template)
    assert shared.get() is template
    others = list(ordered_map(lambda _: shared.get(), range(4), 2))
    assert all(o is not template and o == template for o in others)
    assert resolve_workers(0) == 0 and resolve_workers(3) == 3 and 0 <= resolve_workers(-1) <= 8
