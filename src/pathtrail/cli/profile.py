"""`pathtrail profile`: a few training steps under torch.profiler, outside every hashed artifact.

    pathtrail profile [--params params.yaml] [--preset steps|detailed] [--active N] [--out DIR]
                      [--store data/store] [--split data/split]

Builds the training run params.yaml describes (model, AMP, channels-last, compile, optimizer,
loaders) on the normalized store, runs the `profiler` section's steps under the profiler, and
writes `trace.json` (open it in chrome://tracing or https://ui.perfetto.dev, offline), `summary.json`
and `summary.md` (top ops, peak memory) into `profiler.out_dir` (default reports/profile, ignored
by git), replacing the previous profile there: only a new or empty folder, or one holding a profile
and its mark file (MARK) and nothing else, is replaced; the working folder, a folder above it,
and a pipeline output (dvc.yaml's `outs`, the store, the split) are refused. Nothing it writes is a DVC output or hashed, and
no stage reads the `profiler` section: profiling changes no result.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from pathtrail.core.errors import PathTrailError
from pathtrail.core.text import printable

MARK = ".pathtrail-profile"  # written into every profile folder: only such a folder is replaced
PROFILE_FILES = {"trace.json", "summary.json", "summary.md", MARK}
PRESETS = Path("pipelines") / "profiler"  # beside the params file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile")
    p.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    p.add_argument("--preset", metavar="NAME",
                   help="use pipelines/profiler/NAME.yaml instead of the params file's `profiler` section")
    p.add_argument("--active", type=int, metavar="N", help="steps recorded (overrides profiler.active)")
    p.add_argument("--out", metavar="DIR", help="output folder (overrides profiler.out_dir)")
    p.add_argument("--store", default="data/store", help="the normalized store (default: data/store)")
    p.add_argument("--split", default="data/split", help="the split tables (default: data/split)")


def _section(args: argparse.Namespace, params: dict[str, Any]):
    import yaml

    from pathtrail.config.loading import from_dict
    from pathtrail.config.profiler_section import ProfilerParams

    raw = params.get("profiler")
    where = f"{printable(args.params)}, section `profiler`"
    if args.preset:
        presets = Path(args.params).parent / PRESETS
        preset = presets / f"{args.preset}.yaml"
        names = sorted(f.stem for f in presets.glob("*.yaml")) if presets.is_dir() else []
        if "/" in args.preset or args.preset.startswith(".") or not preset.is_file():
            raise PathTrailError(f"--preset {printable(repr(args.preset))}: no such preset in {printable(str(presets))}; "
                                 f"presets there: {', '.join(names) or 'none'}")
        try:
            raw = yaml.safe_load(preset.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise PathTrailError(f"{printable(str(preset))}: not readable as UTF-8 YAML "
                                 f"({printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)})") from None
        where = printable(str(preset))
    if not isinstance(raw, dict):
        raise PathTrailError(f"{where}: no `profiler` settings; run `make params` (pipelines/config.yaml "
                             "selects `profiler: steps`) or pass --preset steps")
    section = from_dict(ProfilerParams, raw, "profiler")
    if args.active is not None:
        section = replace(section, active=args.active)
    if args.out is not None:
        section = replace(section, out_dir=args.out)
    section.check()
    return section


def pipeline_outputs(params_file: str) -> list[Path]:
    """Every `outs` path of the dvc.yaml files beside the params file (and ensemble/dvc.yaml)."""
    import yaml

    root = Path(params_file).parent
    found: list[Path] = []
    for dvc_yaml in (root / "dvc.yaml", root / "ensemble" / "dvc.yaml"):
        try:
            stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages") or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError, AttributeError):
            continue
        for stage in stages.values():
            body = stage.get("do", stage) if isinstance(stage, dict) else {}
            for out in body.get("outs") or []:
                name = next(iter(out)) if isinstance(out, dict) else out
                if isinstance(name, str) and "${" not in name:
                    found.append((root / name).resolve())
    return found


def _check_out(out: Path, protected: list[Path]) -> None:
    """Only a new or empty folder, or one this command wrote (it holds MARK and profile files only),
    is replaced; never the working folder or one above it, a pipeline output or what holds one."""
    shown = printable(str(out))
    where = out.resolve()
    cwd = Path.cwd().resolve()
    if where == cwd or where in cwd.parents:
        raise PathTrailError(f"--out / profiler.out_dir '{shown}' is the working folder or above it; "
                             "name a folder of its own, e.g. reports/profile")
    for p in protected:
        if where == p or p in where.parents or where in p.parents:
            raise PathTrailError(f"--out / profiler.out_dir '{shown}' is, holds or lies inside the pipeline "
                                 f"output {printable(str(p))}; name a folder of its own, e.g. reports/profile")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise PathTrailError(f"--out / profiler.out_dir '{shown}': {printable(str(parent))} is not a folder")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise PathTrailError(f"--out / profiler.out_dir '{shown}' is not a folder; name a new folder")
    if not out.is_dir():
        return
    entries = list(out.iterdir())
    ours = (out / MARK).is_file() and all(e.name in PROFILE_FILES and e.is_file() and not e.is_symlink()
                                          for e in entries)
    if entries and not ours:
        listed = ", ".join(sorted(printable(e.name) for e in entries)[:5])
        raise PathTrailError(f"'{shown}' holds files this command did not write ({listed}); it was left as it "
                             "is: name an empty or new folder with --out")


def profile_command(args: argparse.Namespace) -> int:
    from pathtrail.config.loading import read_params

    params = read_params(args.params)
    section = _section(args, params)
    out = Path(section.out_dir)
    protected = [Path(args.store).resolve(), Path(args.split).resolve(), *pipeline_outputs(args.params)]
    _check_out(out, protected)
    for name, path in (("--store", args.store), ("--split", args.split)):
        if not Path(path).is_dir():
            raise PathTrailError(f"{name} '{printable(path)}': no such folder; profiling trains on the normalized "
                                 "store, so run `dvc repro normalize` first, from the repository root (or pass "
                                 "--store / --split)")
    for table in ("train.csv", "val.csv"):
        if not (Path(args.split) / table).is_file():
            raise PathTrailError(f"--split '{printable(args.split)}' has no {table}; run `dvc repro split` first")
    summary = run_profile(params, section, args.store, args.split, out, protected)
    sys.stdout.write(summary_markdown(summary))
    sys.stdout.write(f"\nwritten: {printable(str(out))}/trace.json, summary.json, summary.md\n")
    return 0


def run_profile(params: dict[str, Any], section: Any, store: str, split: str, out: Path,
                protected: list[Path]) -> dict[str, Any]:
    from pathtrail.core.files import atomic_dir, write_json, write_text
    from pathtrail.train.profiling import profile_training

    with atomic_dir(out) as tmp:
        summary = profile_training(params, section, store, split, tmp / "trace.json")
        write_json(summary, tmp / "summary.json")
        write_text(summary_markdown(summary), tmp / "summary.md")
        write_text("written by `pathtrail profile`: the folder is replaced by the next profile\n", tmp / MARK)
        _check_out(out, protected)  # again: something may have been put there while the steps ran
    return summary


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def summary_markdown(s: dict[str, Any]) -> str:
    cuda = s["device"] == "cuda"
    cols = ["op", "calls", "self_cpu_ms", "cpu_total_ms", "self_cpu_memory_mb",
            *(["self_cuda_ms", "self_cuda_memory_mb"] if cuda else [])]
    mem = ", ".join(f"{k} {v}" for k, v in sorted(s["peak_memory"].items()))
    lines = [f"# Profile: {s['steps']['active']} training steps on {s['device']}", "",
             f"- model {_cell(s.get('model'))}, batch {s['batch_size']}, torch {_cell(s.get('torch_version'))}",
             f"- options: {_cell(s.get('options'))}",
             f"- {s['samples_per_s']} samples/s over the active steps ({s['active_s']} s, profiler on)",
             f"- peak memory: {mem}", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in s["summary_rows"]]
    return "\n".join(lines) + "\n"
