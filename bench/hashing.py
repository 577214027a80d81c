"""Bytes read to sha256 files over a whole `dvc repro` and `pathtrail verify`, without and with the
shared hash cache (`pathtrail.core.hash_cache`).

    python bench/hashing.py [--out bench/results/hashing.json] [--target STAGE] [--set KEY=VALUE ...]

In a temporary clone of this repository (`git clone`, the working tree's modified and new files
copied over, `.dvc/cache` copied: nothing is downloaded), the script runs `dvc repro --force` then
`pathtrail verify` twice: once with `PATHTRAIL_HASH_CACHE=off` (every process reads every file it
hashes), once with the cache on (its default place, `.dvc/tmp/pathtrail/`, emptied first). Every
process appends its counters to `PATHTRAIL_HASH_STATS` (see `pathtrail.core.hashing`); the script
sums them per stage and for `verify`, and compares the total with the bytes of the pipeline's outputs
(dvc.lock's sizes, each file counted once): the target is that each byte is read at most once per
change, a ratio of about 1. It also checks that both runs wrote the same outputs (dvc.lock's md5s):
the cache changes no artifact (the model card alone may differ: it records the audit trail's head,
which every run moves on). A reduced demo, for a quick try: `--set data.demo.patients_per_site=4
--set data.demo.external_patients=4 --set data.demo.patches_per_patient=4 --set train.epochs=1`
(and `--target normalize` to stop after the preprocessing stages).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COUNTERS = ("bytes_read", "files_read", "memory_hits", "db_hits", "bytes_skipped")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "bench/results/hashing.json"))
    p.add_argument("--target", default=None, help="run `dvc repro --force TARGET` (its upstream stages too)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params.yaml value in the clone (dotted key, YAML value), e.g. train.epochs=1")
    p.add_argument("--keep", action="store_true", help="keep the temporary clone (its path is printed)")
    return p.parse_args(argv)


def run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.returncode, done.stdout + done.stderr


def make_clone(dest: Path, overrides: list[str]) -> Path:
    clone = dest / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    changed = subprocess.run(["git", "ls-files", "-z", "--modified", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, changed):  # measure the working tree as it is, not only its last commit
        if (REPO / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, clone / rel)
    if (REPO / ".dvc/cache").is_dir():
        shutil.copytree(REPO / ".dvc/cache", clone / ".dvc/cache", symlinks=True, dirs_exist_ok=True)
    if overrides:
        params = yaml.safe_load((clone / "params.yaml").read_text(encoding="utf-8"))
        for item in overrides:
            key, _, value = item.partition("=")
            *parents, leaf = key.split(".")
            node = params
            for part in parents:
                node = node[part]
            if leaf not in node:
                raise SystemExit(f"--set {item}: params.yaml has no {key}")
            node[leaf] = yaml.safe_load(value)
        (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return clone


def label(line: dict[str, Any]) -> str:
    module = str(line.get("module") or "")
    if module.startswith("stages."):
        return module.split(".", 1)[1]
    argv = line.get("argv") or []
    if "verify" in argv:
        return "verify --rehash" if "--rehash" in argv else "verify"
    return module or Path(str(argv[0] if argv else "?")).name


def summed(stats_file: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(("processes", *COUNTERS), 0))
    if stats_file.is_file():
        for text in stats_file.read_text(encoding="utf-8").splitlines():
            line = json.loads(text)
            row = out[label(line)]
            row["processes"] += 1
            for k in COUNTERS:
                row[k] += int(line.get(k, 0))
    return dict(out)


def lock_outputs(clone: Path, stages: set[str]) -> dict[str, tuple[str, int]]:
    """{output path: (md5, size)} of `stages` (those that ran) from dvc.lock, each output once."""
    lock = yaml.safe_load((clone / "dvc.lock").read_text(encoding="utf-8"))
    return {o["path"]: (str(o.get("md5")), int(o.get("size") or 0))
            for name, body in lock["stages"].items() if name in stages for o in body.get("outs", [])}


def one_run(clone: Path, mode: str, target: str | None, scratch: Path) -> dict[str, Any]:
    stats = scratch / f"stats-{mode}.jsonl"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(clone / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PATHTRAIL_HASH_STATS": str(stats)}
    env.pop("PATHTRAIL_HASH_CACHE", None)
    if mode == "off":
        env["PATHTRAIL_HASH_CACHE"] = "off"
    shutil.rmtree(clone / ".dvc/tmp/pathtrail", ignore_errors=True)
    repro_s, _, _ = run([sys.executable, "-m", "dvc", "repro", "--force", *([target] if target else [])],
                        clone, env)
    verify_s, verify_rc, _ = run([sys.executable, "-m", "pathtrail.cli", "verify"], clone, env, check=False)
    result: dict[str, Any] = {"repro_s": round(repro_s, 1), "verify_s": round(verify_s, 1),
                              "verify_exit": verify_rc}
    if mode == "on":
        rehash_s, _, _ = run([sys.executable, "-m", "pathtrail.cli", "verify", "--rehash"], clone, env, check=False)
        result["verify_rehash_s"] = round(rehash_s, 1)
    per = summed(stats)
    stages = {k: v for k, v in per.items() if not k.startswith("verify")}
    result.update(per_process=per, repro_bytes_read=sum(v["bytes_read"] for v in stages.values()),
                  verify_bytes_read=per.get("verify", {}).get("bytes_read", 0),
                  outputs=lock_outputs(clone, set(stages)))
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="pathtrail-bench-hashing-"))
    try:
        clone = make_clone(scratch, args.set)
        runs = {mode: one_run(clone, mode, args.target, scratch) for mode in ("off", "on")}
        outputs = {p: s for p, (_, s) in runs["on"]["outputs"].items()}
        total = sum(outputs.values())
        before, after = runs["off"].pop("outputs"), runs["on"].pop("outputs")
        differing = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
        # a card records the trail's head, which each run moves on: it alone may differ
        identical = all(p.startswith("model_cards/") for p in differing)
        for r in runs.values():
            r["repro_ratio_to_output_bytes"] = round(r["repro_bytes_read"] / total, 2) if total else None
        result = {
            "what": "bytes read to sha256 files per dvc repro (per stage) and per pathtrail verify, "
                    "with PATHTRAIL_HASH_CACHE=off and with the shared cache on",
            "command": "python bench/hashing.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "target": args.target or "every stage", "params_overrides": args.set,
            "output_bytes": total, "outputs": len(outputs), "outputs_identical": identical,
            "outputs_differing": differing,
            "target_ratio": "each byte read at most once per change (repro ratio about 1, verify 0)",
            "off": runs["off"], "on": runs["on"],
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(json.dumps({k: result[k] for k in ("output_bytes", "outputs_identical")}
                         | {m: {k: runs[m][k] for k in ("repro_bytes_read", "verify_bytes_read", "repro_s",
                                                       "verify_s", "repro_ratio_to_output_bytes")}
                            for m in runs}, indent=2))
        if not identical:
            raise SystemExit("the two runs wrote different outputs: the hash cache must change no artifact")
    finally:
        if args.keep:
            print(f"clone kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
