"""What every stage entry point shares: common options, logging setup, and clean user errors."""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from pathtrail.errors import PathTrailError
from pathtrail.logs import configure
from pathtrail.params import load_section

T = TypeVar("T")


def stage_parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--trail", default=None, help="audit trail (default: audit/trail.jsonl)")
    p.add_argument("--log-file", default=f"logs/{name}.jsonl", help="JSON-lines log file")
    return p


def load(args: argparse.Namespace, section: str, cls: type[T]) -> T:
    return load_section(args.params, section, cls)


def raw_section(args: argparse.Namespace, section: str) -> Any:
    from pathtrail.params import read_params

    return read_params(args.params)[section]


def entrypoint(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Wrap a stage's `main(argv)`: set up logging; turn a PathTrailError into a clean exit 1.

    SIGTERM is handled like Ctrl-C for the whole stage (setup included), so a stopped stage records
    its failure in the audit trail; the training loop installs its own handler to checkpoint first.
    """

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> None:
            log_file = _log_file(argv, name)
            log = configure(log_file, stage=name)
            previous = _term_as_interrupt()
            try:
                fn(argv)
            except PathTrailError as exc:
                log.error(f"{name}.failed", error=str(exc))
                print(f"\nERROR in stage '{name}':\n{exc}", file=sys.stderr)
                raise SystemExit(1) from None
            except KeyboardInterrupt:
                log.error(f"{name}.interrupted")
                raise SystemExit(130) from None
            finally:
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)

        return main

    return wrap


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _term_as_interrupt() -> Any:
    """Make SIGTERM raise KeyboardInterrupt (main thread only); returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _log_file(argv: list[str] | None, name: str) -> Path:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--log-file" in args:
        i = args.index("--log-file")
        if i + 1 < len(args):
            return Path(args[i + 1])
    return Path("logs") / f"{name}.jsonl"


def get_logger() -> Any:
    return structlog.get_logger("pathtrail")
