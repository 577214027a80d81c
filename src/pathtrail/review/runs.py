"""Which recorded run made the outputs in the workspace: the content-addressed part of `pathtrail verify`.

DVC restores a stage's outputs from its run-cache without running the stage (`git checkout --
params.yaml && dvc repro` after an experiment, `dvc exp apply`): nothing is appended to the trail,
yet the files are genuine outputs of an earlier recorded run. So a stage's present outputs are
accepted when they match any recorded successful run of that stage which

* recorded the same output paths as the stage's latest successful run, each with the sha256 the
  file has now;
* read, at its start, exactly what the workspace holds now: every input (and code file, where the
  start entry records them) is re-hashed, so the run consumed the present outputs of the stages
  upstream. `dvc.lock`, which DVC rewrites after every stage, is left to the dvc check; an input
  outside the repository is not opened (it is counted in a note); and
* used the params that params.yaml holds now, for every section or key its start entry recorded
  (the `ensemble` section, which the optional ensemble pipeline's stages record, is read from
  `ensemble/params.yaml`: `pathtrail.ensemble.params`).

Of several such runs the latest wins. A stage with none gets one problem: the latest run's
outputs that differ (what `verify` always said), or, when some run recorded exactly these outputs
but read other inputs or params, which input or param differs and which run made the file that is
there now. Tested in tests/unit/test_verify_runcache.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pathtrail.card.values import flatten, get
from pathtrail.config.loading import ParamsError, read_params
from pathtrail.core.files import repo_path
from pathtrail.core.hashing import sha256_path
from pathtrail.ensemble.params import ENSEMBLE_PARAMS

NOT_CHAINED = frozenset({"dvc.lock"})  # rewritten by DVC after each stage; the dvc check compares it
MAX_REASONS = 3
_ABSENT = object()


def when(entry: dict[str, Any]) -> str:
    """An entry's time as `YYYY-MM-DDTHH:MMZ` (UTC); the text as it is when it does not parse."""
    try:
        t = datetime.fromisoformat(str(entry.get("time")))
    except ValueError:
        return str(entry.get("time"))[:40]
    return (t.astimezone(UTC) if t.tzinfo else t).strftime("%Y-%m-%dT%H:%MZ")


def _seq(entry: dict[str, Any]) -> int:
    seq = entry.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else -1


@dataclass(frozen=True)
class Run:
    """One successful run of a stage: its end entry and, when the trail has it, its start entry."""

    stage: str
    end: dict[str, Any]
    start: dict[str, Any] | None

    @property
    def seq(self) -> int:
        return _seq(self.end)

    @property
    def outputs(self) -> dict[str, Any]:
        return self.end["outputs"]

    @property
    def label(self) -> str:
        return f"run seq {self.end.get('seq')} ({when(self.end)})"


@dataclass
class StageMatch:
    """For one stage: its latest successful run, the run whose outputs are present (None when no
    recorded run explains them) and, when there is none, the problems that say why."""

    stage: str
    latest: Run
    run: Run | None
    problems: list[str] = field(default_factory=list)

    @property
    def restored(self) -> bool:
        """The outputs are an earlier run's (DVC's run-cache, `dvc exp apply`), not the latest's."""
        return self.run is not None and self.run is not self.latest


def successful_runs(entries: list[dict[str, Any]]) -> dict[str, list[Run]]:
    """Per stage, its successful runs (end entry with an outputs mapping) in trail order."""
    starts: dict[Any, dict[str, Any]] = {}
    runs: dict[str, list[Run]] = {}
    for e in entries:
        if e.get("action") == "start":
            starts[e.get("run_id")] = e
        elif e.get("action") == "end" and e.get("outcome") == "ok" and isinstance(e.get("outputs"), dict):
            stage, start = str(e.get("stage")), starts.get(e.get("run_id"))
            if start is not None and (start.get("stage") != e.get("stage") or _seq(start) > _seq(e)):
                start = None
            runs.setdefault(stage, []).append(Run(stage, e, start))
    return runs


class RunMatcher:
    """Matches each stage's present outputs to a recorded run; every file is hashed once."""

    def __init__(self, root: Path, entries: list[dict[str, Any]]) -> None:
        self.root, self.runs = Path(root), successful_runs(entries)
        self.failed = [e for e in entries if e.get("action") == "end" and e.get("outcome") == "failed"]
        self.outside: set[str] = set()  # recorded inputs outside the repository, not re-hashed
        self._hashes: dict[str, str | None] = {}
        self._params: Any = _ABSENT
        self._matches: dict[str, StageMatch] = {}

    def all(self) -> dict[str, StageMatch]:
        return {stage: self.match(stage) for stage in sorted(self.runs)}  # type: ignore[misc]

    def match(self, stage: str) -> StageMatch | None:
        """The stage's match, None when the trail records no successful run of it."""
        if stage not in self.runs:
            return None
        if stage not in self._matches:
            self._matches[stage] = self._match(stage)
        return self._matches[stage]

    def _match(self, stage: str) -> StageMatch:
        runs = self.runs[stage]
        latest = runs[-1]
        same_outputs = [r for r in reversed(runs) if set(r.outputs) == set(latest.outputs)
                        and not self.output_problems(r)]
        for run in same_outputs:
            if not self.chain_reasons(run):
                return StageMatch(stage, latest, run)
        if not same_outputs:
            return StageMatch(stage, latest, None, self.output_problems(latest))
        run = same_outputs[0]
        reasons = "; ".join(self.chain_reasons(run)[:MAX_REASONS])
        return StageMatch(stage, latest, None, [(
            f"stage {stage}: its outputs match {run.label}, but that run {reasons}: the outputs were not made "
            f"from what the workspace holds now. Rerun `dvc repro {stage}`, or bring back the inputs it read "
            "(`dvc checkout`, `git checkout` of params.yaml)")])

    # ------------------------------------------------------------------------------ outputs
    def output_problems(self, run: Run) -> list[str]:
        """One sentence per recorded output whose file does not have the recorded sha256."""
        out = []
        where = f"(stage {run.stage}, trail seq {run.end.get('seq')})"
        for rel, recorded in sorted(run.outputs.items()):
            now, refused = self.hash(rel, f"trail output {where}")
            if refused:
                out.append(refused)
            elif not isinstance(recorded, str | None):
                out.append(f"{rel} {where}: the recorded sha256 {recorded!r} is not a hash")
            elif now == recorded:
                continue
            elif now is None:
                out.append(f"{rel} {where}: missing; the trail recorded sha256 {str(recorded)[:12]}…")
            elif recorded is None:
                out.append(f"{rel} {where}: exists, but the trail recorded it as missing")
            else:
                out.append(f"{rel} {where}: sha256 is {now[:12]}… but the trail recorded {recorded[:12]}…")
        return out

    def hash(self, rel: Any, what: str) -> tuple[str | None, str | None]:
        """(sha256 now or None when missing, None) or (None, why it was not read)."""
        path, refused = repo_path(self.root, rel, what)
        if refused or path is None:
            return None, refused or f"{what}: {rel!r} is unusable"
        key = path.as_posix()
        if key not in self._hashes:
            self._hashes[key] = sha256_path(path) if path.exists() else None
        return self._hashes[key], None

    # -------------------------------------------------------------------------------- chain
    def chain_reasons(self, run: Run) -> list[str]:
        """Why the run did not consume what the workspace holds now (empty when it did)."""
        start = run.start
        if start is None:
            return ["has no start entry in the trail, so what it read is unknown"]
        reasons: list[str] = []
        for kind in ("inputs", "code"):
            recorded = start.get(kind, {} if kind == "code" else None)
            if not isinstance(recorded, dict):
                reasons.append(f"recorded no {kind} mapping at its start (seq {start.get('seq')})")
                continue
            reasons += [r for rel, sha in sorted(recorded.items()) if (r := self._input_reason(rel, sha))]
        return reasons + self._params_reasons(start)

    def _input_reason(self, rel: str, recorded: Any) -> str | None:
        if rel in NOT_CHAINED:
            return None
        text, base = str(rel), os.path.normpath(str(self.root.resolve()))
        norm = os.path.normpath(text)
        if Path(text).is_absolute() and norm.startswith(base.rstrip("/") + "/"):
            text = norm[len(base.rstrip("/")) + 1:]
        elif Path(text).is_absolute() or norm == ".." or norm.startswith("../"):
            self.outside.add(text)  # user data next to or outside the repository: not opened
            return None
        now, refused = self.hash(text, "trail input")
        if refused:
            return f"read {text!r}, which verify does not open ({refused})"
        if now == recorded:
            return None
        lead = f"read {text} with sha256 {str(recorded)[:12]}…" if recorded else f"found no {text}"
        if now is None:
            return f"{lead}, and {text} is missing now"
        made = self._maker(text, now)
        return f"{lead}, and {text} now has sha256 {now[:12]}…" + (
            f" (written by {made.stage} {made.label})" if made else "")

    def _maker(self, rel: str, sha: str) -> Run | None:
        """The latest recorded run whose outputs include `rel` with this sha256."""
        found = [r for runs in self.runs.values() for r in runs if r.outputs.get(rel) == sha]
        return max(found, key=lambda r: r.seq) if found else None

    def _params_reasons(self, start: dict[str, Any]) -> list[str]:
        recorded = start.get("params")
        if not isinstance(recorded, dict):
            return [f"recorded no params mapping at its start (seq {start.get('seq')})"]
        if not recorded:
            return []
        current = self.params()
        if current is None:
            return ["used params that cannot be compared: params.yaml is missing or unreadable"]
        reasons = []
        for key, value in sorted(recorded.items(), key=lambda kv: str(kv[0])):
            now = get(current, str(key), _ABSENT)
            if now == value and now is not _ABSENT:
                continue
            was, is_ = flatten(value, str(key)), flatten(now, str(key)) if now is not _ABSENT else {}
            for leaf in sorted(set(was) | set(is_)):
                if was.get(leaf, _ABSENT) != is_.get(leaf, _ABSENT):
                    reasons.append(f"used {leaf} = {_show(was.get(leaf, _ABSENT))}, and params.yaml now has "
                                   f"{_show(is_.get(leaf, _ABSENT))}")
                    break
        return reasons

    def params(self) -> Any:
        if self._params is _ABSENT:
            try:
                self._params = read_params(self.root / "params.yaml")
                if (self.root / ENSEMBLE_PARAMS).is_file():
                    self._params = {**self._params, **read_params(self.root / ENSEMBLE_PARAMS)}
            except ParamsError:
                self._params = None
        return self._params


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "<absent>"
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
