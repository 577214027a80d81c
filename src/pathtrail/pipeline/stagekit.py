"""What every stage entry point shares: common options, logging setup, and clean user errors."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import structlog

from pathtrail.config.loading import ParamsFile, parse_section, read_params
from pathtrail.config.sections import ExecutionParams, runtime_of
from pathtrail.core.errors import PathTrailError
from pathtrail.core.execution import enforce
from pathtrail.core.logs import LEVELS, configure, set_progress
from pathtrail.core.output_paths import check_outputs
from pathtrail.core.staging import Staging, pause, signals_held
from pathtrail.provenance import audit

T = TypeVar("T")


def stage_parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--trail", default=None, help="audit trail (default: audit/trail.jsonl)")
    p.add_argument("--log-file", default=f"logs/{name}.jsonl", help="JSON-lines log file")
    return p


def path_option(default: str, help: str | None = None) -> Any:
    """A field of a stage's `Paths` dataclass: its default, and its `--option` help text."""
    return dataclasses.field(default=default, metadata={"help": help})


def parse_stage_args(name: str, description: str | None, paths_cls: type[T],
                     argv: list[str] | None) -> tuple[argparse.Namespace, T]:
    """The common options plus one `--option` per field of `paths_cls`; (options, paths)."""
    p = stage_parser(name, description or "")
    for f in dataclasses.fields(paths_cls):  # type: ignore[arg-type]
        help_text = f.metadata.get("help")
        p.add_argument("--" + f.name.replace("_", "-"), default=f.default,
                       help=_with_default(help_text, f.default))
    args = p.parse_args(argv)
    return args, paths_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(paths_cls)})


def stage_main(name: str, module: ModuleType) -> Callable[[list[str] | None], None]:
    """The `main(argv)` of `stages/<name>.py`: parse `module.Paths`, call `module.run`.

    `run` also gets `relaunch_argv` (the stage's own arguments, for a torchrun relaunch) and
    `params_file` (the `--params` path) when it takes them.
    """

    @entrypoint(name)
    def main(argv: list[str] | None = None) -> None:
        args, paths = parse_stage_args(name, module.__doc__, module.Paths, argv)
        _OPTIONS.set({str(Path(v)): "--" + f.name.replace("_", "-") for f in dataclasses.fields(paths)
                      if isinstance(v := getattr(paths, f.name), str)})
        params = with_runtime_overrides(stage_params(args))
        apply_run_context(params)
        accepted = inspect.signature(module.run).parameters
        extra: dict[str, Any] = {}
        if "relaunch_argv" in accepted:
            extra["relaunch_argv"] = sys.argv[1:] if argv is None else list(argv)
        if "params_file" in accepted:
            extra["params_file"] = args.params
        module.run(params, paths, trail=args.trail, **extra)

    return main


# Runtime knobs a caller may set from the environment (e.g. `pathtrail reproduce --jobs N`): they
# change no result, so they may differ from params.yaml without making the run another one.
RUNTIME_ENV = {"PATHTRAIL_NUM_WORKERS": "num_workers"}


def with_runtime_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with the runtime knobs set in the environment (RUNTIME_ENV) applied."""
    runtime = dict(params.get("runtime") or {})
    for var, key in RUNTIME_ENV.items():
        value = os.environ.get(var)
        if value is None:
            continue
        try:
            runtime[key] = int(value)
        except ValueError:
            raise PathTrailError(f"environment variable {var}={value!r}: must be an integer "
                                 f"(it sets runtime.{key})") from None
    if not runtime:
        return params
    return ParamsFile({**params, "runtime": runtime}, getattr(params, "source", "params.yaml"))


def apply_run_context(params: dict[str, Any]) -> None:
    """Honour the execution contract and the runtime knobs of `params`; the trail records both.

    The contract's environment was set by `stages/__init__.py` before torch loaded; here torch gets
    its thread count, and `enforce` says whether everything took (see `pathtrail.core.execution`).
    """
    if "execution" in params:
        parse_section(params, "execution", ExecutionParams)  # a typo is an error before any work
    runtime = runtime_of(params)
    set_progress(runtime.progress)
    logging.getLogger().setLevel(LEVELS[runtime.log_level])
    execution = enforce(params.get("execution"))
    if not execution["honoured"]:
        get_logger().warning("execution.contract_not_honoured", problems=execution["problems"])
    audit.set_run_context(execution=execution, runtime=dataclasses.asdict(runtime))


# the path given to each `--option` of the running stage, so that a refused output names its option
_OPTIONS: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("stage_options", default=None)


def check_paths(outputs: Iterable[str | Path], inputs: Iterable[str | Path], *, within: bool = True) -> None:
    """`output_paths.check_outputs`, naming the running stage's `--option` of a refused path."""
    check_outputs(outputs, inputs, options=_OPTIONS.get(), within=within)


@contextlib.contextmanager
def staged_run(name: str, *, inputs: Iterable[str | Path], outputs: Iterable[str | Path],
               params: dict[str, Any] | None = None,
               trail: str | None = None) -> Iterator[tuple[audit.StageRecord, Staging]]:
    """Record a stage run (`audit.stage`) whose `outputs` are staged; yields (record, staging).

    The body writes each output at `staging.path(output)` (`staging(output)` for short). On success
    the inputs are re-checked, the outputs are moved into place, and the end entry records their
    hashes; SIGTERM/SIGINT are held from the move to the end entry, so a stop arriving then is
    honoured (exit 130) after the trail says what was published. On an exception (a SIGTERM during
    the work included) nothing is published and the end entry records the failure; what a SIGKILL
    left behind is cleaned when the stage next starts (`pathtrail.core.staging`).
    Before anything (the trail's start entry included), every output path is checked
    (`pathtrail.core.output_paths`): never the repository, a folder above it, a place outside it,
    an input or a folder holding one; a refusal names the option and path.
    Tests: tests/stages/test_no_partial_outputs.py, tests/unit/test_output_paths.py.
    """
    inputs, outputs = list(inputs), list(outputs)
    check_paths(outputs, inputs)
    staging = Staging(outputs)
    # `held` is left last: a stop held back from the commit on is delivered after the end entry
    with contextlib.ExitStack() as held, audit.stage(name, inputs=inputs, params=params, trail=trail) as rec:
        with staging:
            if staging.recovered:
                get_logger().warning(f"{name}.recovered", removed=[p.as_posix() for p in staging.recovered],
                                     reason="left by an interrupted run")
                rec.note(recovered=[p.as_posix() for p in staging.recovered])
            pause("begin")
            yield rec, staging
            rec.check_inputs()  # an input edited meanwhile fails the run before anything is moved
            pause("commit")
            held.enter_context(signals_held())
        rec.outputs(*staging.outputs)


def _with_default(help_text: str | None, default: Any) -> str:
    if not help_text:
        return f"default: {default}"
    return help_text if "default" in help_text else f"{help_text} (default: {default})"


def stage_params(args: argparse.Namespace) -> dict[str, Any]:
    """The whole params file the stage was pointed at (`--params`)."""
    return read_params(args.params)


def entrypoint(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Wrap a stage's `main(argv)`: set up logging; turn a PathTrailError into a clean exit 1.

    SIGTERM is handled like Ctrl-C for the whole stage (setup included), so a stopped stage records
    its failure in the audit trail and publishes none of its staged outputs (`staged_run`); the
    training loop installs its own handler to checkpoint first.
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
                log.error(f"{name}.failed", error=str(exc), file_only=True)  # the console gets it once, below
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
