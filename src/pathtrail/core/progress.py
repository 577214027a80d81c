"""What a person waiting sees: progress bars and a status line, on stderr, only where they help.

Both follow `runtime.progress` (`pathtrail.core.logs.progress_enabled`: by default only when stderr
is a terminal, so CI logs and DVC's captured output stay readable). They never write into a file
the pipeline hashes: stderr only.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from pathtrail.core.logs import progress_enabled

SPINNER = "|/-\\"


def bar(total: int | None, desc: str, unit: str = "it") -> tqdm:
    """A tqdm bar on stderr (disabled, and silent, when progress is off)."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=not progress_enabled(), leave=True, mininterval=0.5)


@contextmanager
def status(message: str, interval: float = 0.25) -> Iterator[None]:
    """A one-line spinner with the elapsed seconds while the block runs, e.g. while compiling.

    Ends the line with `done in N s` (or `failed after N s`); writes nothing when progress is off."""
    if not progress_enabled():
        yield
        return
    stop = threading.Event()
    start = time.monotonic()

    def spin() -> None:
        i = 0
        while not stop.wait(interval):
            sys.stderr.write(f"\r{message} {SPINNER[i % len(SPINNER)]} {time.monotonic() - start:.0f} s")
            sys.stderr.flush()
            i += 1

    thread = threading.Thread(target=spin, name="pathtrail-status", daemon=True)
    thread.start()
    outcome = "failed after"
    try:
        yield
        outcome = "done in"
    finally:
        stop.set()
        thread.join()
        sys.stderr.write(f"\r{message} {outcome} {time.monotonic() - start:.1f} s\n")
        sys.stderr.flush()
