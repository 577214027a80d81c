"""The training run in the other mode (eager <-> torch.compile) that compile_check compares with.

compile_check needs the same training done in the mode the train stage did not use. When the
train stage runs as one process with the check enabled, it starts that run in a second process
beside its own (`Beside`) and writes it as an output (`models/other_mode_run.pt`); compile_check
then only compares. Both processes are single-threaded under the execution contract, so on a
machine with two cores the check adds little wall time. The run is the call compile_check used to
make itself (`fit` in the other mode, without a checkpoint), so it has the same bits in either
place (tests/stages/test_pipeline_stages.py). When train runs under torchrun, or the file holds no run
of the mode compile_check needs (the train stage's compile fell back to eager), compile_check
trains it itself, as before. The child also scores the external cohort with its weights in its
mode (`external_probs`, the call compile_check made): compile_check uses those probabilities when
the file's sha256 of the external table is the one it reads, so the compiled scoring (its
torch.compile) happens beside the training too.

The second process dies with the stage: it gets SIGKILL when its parent dies (Linux
`PR_SET_PDEATHSIG`), is stopped when the stage fails or is stopped, and writes only into the
stage's staging folder, so a killed stage leaves nothing behind (tests/stages/test_no_partial_outputs.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import structlog
import torch

from pathtrail.config.label_section import output_names
from pathtrail.config.loading import parse_section
from pathtrail.config.sections import CompileCheckParams
from pathtrail.core.errors import PathTrailError
from pathtrail.core.execution import enforce
from pathtrail.core.files import read_table
from pathtrail.core.hashing import sha256_file
from pathtrail.core.logs import set_progress
from pathtrail.train.compiling import compile_module
from pathtrail.train.inputs import TrainingInputs, load_training_inputs, score_table
from pathtrail.train.loop import FitResult, fit
from pathtrail.train.model_file import load_model_file, write_model
from pathtrail.train.models import build_model

PARAMS = ("enabled", "fallback_random")  # the compile_check params the run depends on (DVC params of train)


@dataclass(frozen=True)
class OtherRun:
    """What compile_check compares: the run's mode, compile record, per-step losses, validation
    probabilities and final weights; and the external cohort's probabilities in the run's mode with
    the sha256 of the table they score (None: not scored)."""
    use_compile: bool
    compile: dict[str, Any]
    losses: np.ndarray
    val_probs: np.ndarray
    state_dict: dict[str, torch.Tensor]
    external_probs: np.ndarray | None = None
    external_sha256: str | None = None


def fit_other(inp: TrainingInputs, check: CompileCheckParams, use_compile: bool) -> OtherRun:
    """Train from scratch in the given mode, as compile_check's comparison run (no checkpoint)."""
    result: FitResult = fit(inp.store, inp.splits["train"], inp.splits["val"], inp.train, inp.model, inp.runtime,
                            num_classes=len(output_names(inp.data)), fingerprint=inp.fingerprint,
                            use_compile=use_compile, fallback_random=check.fallback_random)
    return OtherRun(use_compile, dict(result.compile), np.array([s["loss"] for s in result.steps]),
                    result.val_probs, result.state_dict)


def external_probs(state_dict: dict[str, torch.Tensor], inp: TrainingInputs, table: pd.DataFrame,
                   compiled: bool) -> np.ndarray:
    """Score the external cohort with one mode's trained weights, in that mode."""
    model = build_model(inp.model.arch, len(output_names(inp.data)), inp.model.width, inp.model.dropout,
                        vit=inp.model.vit)
    model.load_state_dict(state_dict)
    if compiled:
        model = compile_module(model, inp.train.compile_mode)
    return score_table(model, inp.store, table, inp.data, inp.train.batch_size * 2, inp.train.seed)


def with_external(run: OtherRun, inp: TrainingInputs, external: str | None) -> OtherRun:
    """The run with the external cohort scored in its mode (unchanged when there is no such table)."""
    if not external or not Path(external).is_file():
        return run
    sha = sha256_file(external)
    table = read_table(external)
    if not len(table):
        return run
    probs = external_probs(run.state_dict, inp, table, compiled=run.use_compile)
    return dataclasses.replace(run, external_probs=probs, external_sha256=sha)


def write_run(run: OtherRun | None, path: str | Path, *, reason: str = "") -> None:
    """The output file: the run, or (None) a file saying why train did not compute it."""
    if run is None:
        write_model({}, {"computed": False, "reason": reason}, path)
        return
    meta = {"computed": True, "use_compile": run.use_compile, "compile": run.compile,
            "losses": torch.from_numpy(np.ascontiguousarray(run.losses)),
            "val_probs": torch.from_numpy(np.ascontiguousarray(run.val_probs))}
    if run.external_probs is not None:
        meta |= {"external_probs": torch.from_numpy(np.ascontiguousarray(run.external_probs)),
                 "external_sha256": run.external_sha256}
    write_model(run.state_dict, meta, path)


def read_run(path: str | Path) -> OtherRun | None:
    """The run a train stage wrote, or None when it computed none (or there is no such file)."""
    if not Path(path).is_file():
        return None
    blob = load_model_file(path)
    meta = blob["metadata"]
    if not meta.get("computed"):
        return None
    ext = meta.get("external_probs")
    return OtherRun(bool(meta["use_compile"]), dict(meta["compile"]), meta["losses"].numpy(),
                    meta["val_probs"].numpy(), blob["state_dict"],
                    ext.numpy() if ext is not None else None, meta.get("external_sha256"))


class Beside:
    """The other mode's training in a second process, started now; `finish()` waits for it.

    Leaving the `with` block stops the process if it still runs (the stage failed or was stopped)."""

    def __init__(self, params: Mapping[str, Any], store: str, split: str, external: str | None, out: Path,
                 use_compile: bool) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=False)
        self.use_compile = use_compile
        self._proc = ctx.Process(target=_child, name="pathtrail-other-mode",
                                 args=(in_process_loading(params), store, split, external, str(out), use_compile,
                                       child_conn))
        self._proc.start()
        child_conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=10)  # its SIGTERM handler runs between Python bytecodes
            if self._proc.is_alive():
                self._proc.kill()
        self._proc.join()
        self._conn.close()

    def finish(self) -> None:
        """Wait for the run; a failure of it fails the stage with its message."""
        self._proc.join()
        message = ""
        with contextlib.suppress(EOFError):  # EOF: the run ended without a message (its success)
            message = self._conn.recv() if self._conn.poll() else ""
        if self._proc.exitcode != 0:
            mode = "compiled" if self.use_compile else "eager"
            raise PathTrailError(
                f"the {mode} training run for the compile check (run beside the train stage's own) failed"
                f" (exit code {self._proc.exitcode}): {message or 'no message; see the output above'}\n"
                "Set compile_check.enabled=false to skip the check, or fix the error and rerun `dvc repro`.")


def start(params: Mapping[str, Any], store: str, split: str, out: Path, *, distributed: bool,
          external: str | None = None) -> Beside | None:
    """Start the other mode's run beside the train stage's own, when there is one to run here;
    else write the file saying why not (compile_check then trains it itself) and return None."""
    check = parse_section(params, "compile_check", CompileCheckParams)
    if not check.enabled:
        write_run(None, out, reason="compile_check.enabled is false")
        return None
    if distributed:
        write_run(None, out, reason="train ran under torchrun; compile_check trains the other mode itself")
        return None
    use_compile = not bool((params.get("train") or {}).get("use_compile"))
    return Beside(params, store, split, external, out, use_compile)


def in_process_loading(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with the child's data loading in its own process (`runtime.num_workers` 0).

    The child is spawned, so its loader workers would be spawned too (each importing torch again
    at every epoch: minutes over the demo run), and forking them instead from a process that has
    run torch.compile corrupts its heap (glibc aborts). Loading in-process costs the single-threaded
    child little, and the loader knobs change no bit of a result (tests/unit/test_training.py)."""
    return {**params, "runtime": {**(params.get("runtime") or {}), "num_workers": 0, "persistent_workers": False}}


def _child(params: dict[str, Any], store: str, split: str, external: str | None, out: str, use_compile: bool,
           conn: Connection) -> None:
    prepare_child()
    try:
        enforce(params.get("execution"))
        set_progress("never")
        # its progress lines would interleave with the stage's own: only its warnings are shown
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        inp = load_training_inputs(params, store, split)
        run = fit_other(inp, parse_section(params, "compile_check", CompileCheckParams), use_compile)
        write_run(with_external(run, inp, external), out)
    except BaseException as exc:  # noqa: BLE001 - reported to the stage, which fails with it
        conn.send(f"{type(exc).__name__}: {exc}")
        conn.close()
        sys.exit(1)


def prepare_child() -> None:
    """The child's set-up: it dies with the stage, ignores Ctrl-C (the stage stops it), exits on SIGTERM."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the stage, which stops this process
    signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))


def _die_with_parent() -> None:
    """SIGKILL this process when the stage's process dies, however it dies (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
