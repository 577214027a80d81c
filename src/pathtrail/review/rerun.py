"""Running a commit's pipeline again, away from the user's files (what `pathtrail reproduce` runs).

`worktree(root, commit, keep)` makes a clean `git worktree` of `commit` in a new temporary folder
and removes it afterwards (unless `keep`); the user's working tree, index and branch are never
touched. `prepare(run, user_cache)` gives the worktree a DVC cache of its own (so no run-cache
entry of the user's can stand in for a stage run) and fetches the data that the commit tracks with
`dvc add` (`*.dvc` files) from the user's cache, used as a local remote that is only read. `repro`
then runs `dvc repro --force` there: every stage runs (`--force` also skips DVC's run-cache), with
this environment's Python and the worktree's own `src/` first on the path. Tested in
tests/stages/test_reproduce_cli.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pathtrail.core.errors import PathTrailError

USER_CACHE_REMOTE = "pathtrail-user-cache"
# Every stage reads it as `runtime.num_workers` (`pathtrail.pipeline.stagekit.RUNTIME_ENV`): a
# runtime knob, so no result depends on it.
JOBS_ENV = "PATHTRAIL_NUM_WORKERS"
LOG_NAME = "dvc-repro.log"
_RUNNING = re.compile(r"^Running stage '([^']+)'")
_FAILED = re.compile(r"failed to reproduce '([^']+)'")


@dataclass(frozen=True)
class Rerun:
    folder: Path  # the temporary folder: worktree/, cache/ and the dvc log
    worktree: Path
    cache: Path
    log: Path
    keep: bool


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)


def git(root: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return _run(["git", *args], root)
    except FileNotFoundError as exc:
        raise PathTrailError("git is not installed (it is needed to check out the card's commit)") from exc


def dvc_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def show(root: Path, commit: str, path: str) -> str | None:
    """The text of `path` at `commit`, or None when the commit has no such file."""
    done = git(root, "show", f"{commit}:{path}")
    return done.stdout if done.returncode == 0 else None


def stage_env(worktree: Path, jobs: int | None) -> dict[str, str]:
    """The environment the pipeline runs in: this interpreter's bin folder first (dvc.yaml's `python`
    is ours), the worktree's `src/` as the only PYTHONPATH (never the user's checkout), no audit-trail
    override (stages append to the worktree's own trail, never the user's), no analytics."""
    env = {k: v for k, v in os.environ.items() if k not in ("PATHTRAIL_AUDIT_TRAIL", "PYTHONPATH")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(worktree / "src")
    env["DVC_NO_ANALYTICS"] = "1"
    if jobs is not None:
        env[JOBS_ENV] = str(jobs)
    return env


@contextmanager
def worktree(root: Path, commit: str, keep: bool) -> Iterator[Rerun]:
    folder = Path(tempfile.mkdtemp(prefix="pathtrail-reproduce-"))
    run = Rerun(folder, folder / "worktree", folder / "cache", folder / LOG_NAME, keep)
    done = git(root, "worktree", "add", "--detach", str(run.worktree), commit)
    if done.returncode:
        shutil.rmtree(folder, ignore_errors=True)
        raise PathTrailError(f"git could not check out commit {commit} in a worktree: "
                             f"{_last_line(done.stderr)}")
    try:
        yield run
    finally:
        if not keep:
            git(root, "worktree", "remove", "--force", str(run.worktree))
            shutil.rmtree(folder, ignore_errors=True)
            git(root, "worktree", "prune")


def user_cache(root: Path) -> Path:
    """The user's DVC cache folder (`dvc cache dir`, whatever the config says)."""
    done = _run(dvc_cmd("cache", "dir"), root, stage_env(root, None))
    if done.returncode or not done.stdout.strip():
        raise PathTrailError(f"`dvc cache dir` failed in {root}: {_last_line(done.stderr)}; "
                             "run `pathtrail reproduce` at the root of a DVC repository")
    return Path(done.stdout.strip().splitlines()[-1])


def tracked_data(run: Rerun) -> list[str]:
    """The `dvc add` files (`*.dvc`) the commit tracks."""
    done = git(run.worktree, "ls-files", "-z", "--", "*.dvc")
    return sorted(p for p in done.stdout.split("\0") if p.endswith(".dvc"))


def prepare(run: Rerun, cache_of_user: Path, env: dict[str, str]) -> list[str]:
    """A fresh DVC cache for the worktree; the commit's `dvc add` data pulled from the user's cache.
    Returns the `.dvc` files whose data was pulled."""
    _dvc(run, env, "cache", "dir", "--local", str(run.cache))
    targets = tracked_data(run)
    if not targets:
        return []
    _dvc(run, env, "remote", "add", "--local", "--force", USER_CACHE_REMOTE, str(cache_of_user))
    done = _run(dvc_cmd("pull", "-r", USER_CACHE_REMOTE, *targets), run.worktree, env)
    if done.returncode:
        raise PathTrailError(
            f"the data that commit tracks with `dvc add` ({', '.join(targets)}) is not all in your "
            f"DVC cache {cache_of_user}: {_last_line(done.stderr or done.stdout)}. Fetch it first "
            "(`dvc fetch --all-commits`, or `git checkout <that commit> && dvc pull`)"
        )
    return targets


def _dvc(run: Rerun, env: dict[str, str], *args: str) -> None:
    done = _run(dvc_cmd(*args), run.worktree, env)
    if done.returncode:
        raise PathTrailError(f"`dvc {' '.join(args)}` failed in the worktree: "
                             f"{_last_line(done.stderr or done.stdout)}")


def repro(run: Rerun, env: dict[str, str], on_stage: Callable[[str], None] | None = None) -> None:
    """`dvc repro --force` in the worktree, its output in `run.log`; a failure names the stage."""
    stages: list[str] = []
    with run.log.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(dvc_cmd("repro", "--force"), cwd=run.worktree, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        lines: list[str] = []
        try:
            for line in proc.stdout:
                log.write(line)
                lines.append(line.rstrip("\n"))
                if m := _RUNNING.match(line):
                    stages.append(m.group(1))
                    if on_stage:
                        on_stage(m.group(1))
        except BaseException:  # Ctrl-C, a closed pipe: stop the run before its folder is removed
            proc.terminate()
            proc.wait()
            raise
        code = proc.wait()
    if code:
        raise PathTrailError(_failure(run, code, lines, stages))


def _failure(run: Rerun, code: int, lines: list[str], stages: list[str]) -> str:
    failed = next((m.group(1) for line in reversed(lines) if (m := _FAILED.search(line))), None)
    stage = failed or (stages[-1] if stages else None)
    reason = next((lines[i + 1] for i in range(len(lines) - 2, -1, -1)
                   if lines[i].startswith("ERROR in stage")), None)
    reason = reason or next((line for line in reversed(lines) if line.startswith("ERROR")), "")
    log = run.log
    if not run.keep:  # the temporary folder goes; the log stays for the reader
        fd, kept = tempfile.mkstemp(prefix="pathtrail-reproduce-", suffix=".log")
        os.close(fd)
        shutil.copyfile(run.log, kept)
        log = Path(kept)
    where = f"stage '{stage}'" if stage else "before any stage ran"
    return (f"dvc repro failed in {where} (exit {code}): {reason.strip() or 'see the log'}; "
            f"full log: {log}" + ("" if run.keep else "; rerun with --keep to inspect the worktree"))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
