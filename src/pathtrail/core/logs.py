"""structlog configured once: readable console on a terminal, JSON lines in a log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import structlog

_configured = False
_progress = "auto"  # runtime.progress: auto | always | never
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(log_file: str | Path | None = None, level: str = "info",
              **context: Any) -> structlog.stdlib.BoundLogger:
    """Set up logging for a stage or command and bind `context` (stage, seed) to every event.

    `level` (runtime.log_level) applies to the console and the log file alike."""
    global _configured
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    console = logging.StreamHandler(sys.stderr)
    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer(sort_keys=True)
    )
    console.setFormatter(structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=shared))
    console.addFilter(_not_file_only)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=structlog.processors.JSONRenderer(sort_keys=True), foreign_pre_chain=shared
            )
        )
        handlers.append(fh)
    root = logging.getLogger()
    root.handlers = handlers
    root.setLevel(LEVELS.get(level, logging.INFO))
    for noisy in ("matplotlib", "PIL", "torch", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not _configured:
        structlog.configure(
            processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=False,
        )
        _configured = True
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**context)
    return structlog.get_logger("pathtrail")


def _not_file_only(record: logging.LogRecord) -> bool:
    """Events logged with `file_only=True` (e.g. a stage failure the stage prints itself, readably)
    go to the log file, not the console."""
    return not (isinstance(record.msg, dict) and record.msg.get("file_only"))


def set_progress(mode: str) -> None:
    """runtime.progress: `auto` (bars only on a terminal, so CI logs stay readable), `always`, `never`."""
    global _progress
    _progress = mode


def progress_enabled() -> bool:
    """Whether progress bars are drawn (runtime.progress; by default only on a terminal)."""
    if _progress in ("always", "never"):
        return _progress == "always"
    return sys.stderr.isatty()
