"""Scale run: a synthetic cohort of N 64x64 patches through the real stages, measured stage by stage.

    python bench/scale.py [--patches 100000] [--baseline N0] [--out bench/results/scale.json] [--keep DIR]

The cohort (`scale_cohort.py`: many patients, two slides each, three internal sites and an external
one; deterministic from `--seed`) is written to a temporary folder with its manifests; then
`python -m stages.<name>` runs, each in its own process, in that folder as a DVC-free workspace with
the committed params (composed from pipelines/) plus: these data paths, `train.epochs=1`, no progress
bars, manifest limits raised to the cohort's size. Stages: validate, split, stain_fit, normalize,
train (one epoch) and evaluate. Per stage it records the wall time, the peak RSS (`ru_maxrss` of the
stage process from `wait4`, which covers its waited-for children, and the sampled peak of the summed
RSS of its process tree, DataLoader workers included) and the bytes read for hashing (the sum of the
`PATHTRAIL_HASH_STATS` lines, see `pathtrail.core.hashing`; "not measured" when none is written).
It fails (exit 1) unless every stage's peak stays under 4 GB.

Projection to 1,000,000 patches: the same pipeline first runs on a smaller cohort (`--baseline`,
default patches / 10); per stage, the line through the two runs (fixed start-up cost plus a per-patch
cost) is read at 1M. `NOT_LINEAR` names the stages whose cost is not linear in the patch count.
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
import threading
import time
from pathlib import Path

import psutil
import yaml

from pathtrail.config.compose import compose_params
from pathtrail.core.files import write_json
from scale_cohort import write_cohort

REPO = Path(__file__).resolve().parents[1]
STAGES = ("validate", "split", "stain_fit", "normalize", "train", "evaluate")
RSS_LIMIT_MB = 4096
PROJECT_TO = 1_000_000
HASH_KEYS = ("bytes_read", "files_read", "bytes_skipped", "memory_hits", "db_hits")
NOT_LINEAR = {
    "validate": "per-file checks are linear; the duplicate and look-alike checks sort or group the "
                "table (n log n, small at this size)",
    "stain_fit": "the Macenko fit uses at most stain.fit_max_patches patches (constant): only hashing "
                 "the data root and reading train.csv grow with N, so the linear figure is an upper bound",
    "train": "linear per epoch; a real run trains train.epochs epochs (early stopping may end sooner)",
    "evaluate": "the B x n bootstrap is linear; sorting for AUROC is n log n",
}


def scale_params(n: int, workers: int | None) -> dict:
    params = yaml.safe_load(compose_params(REPO / "pipelines"))
    data = params["data"]
    data.update(data_root="data/raw", internal_manifest="data/raw/internal.csv",
                external_manifest="data/raw/external.csv",
                max_manifest_rows=max(data["max_manifest_rows"], n),
                max_manifest_bytes=max(data["max_manifest_bytes"], 256 * n))
    params["train"]["epochs"] = 1
    params["runtime"]["progress"] = "never"
    if workers is not None:
        params["runtime"]["num_workers"] = workers
    return params


class TreeSampler(threading.Thread):
    """Peaks of a process tree's summed RSS, and of its anonymous part (RssAnon: the memory the
    processes own; RssFile, pages of memory-mapped files such as the patch store, is page cache the
    kernel can drop), sampled every `every` s."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.peak_anon, self.done = pid, every, 0, 0, threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.done.is_set():
            total = anon = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                        anon += rss_anon(proc.pid)
                    except (psutil.Error, OSError):
                        pass
            except psutil.Error:
                return
            self.peak, self.peak_anon = max(self.peak, total), max(self.peak_anon, anon)
            self.done.wait(self.every)


def rss_anon(pid: int) -> int:
    """RssAnon of a process in bytes (Linux /proc), 0 where the kernel does not report it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def run_stage(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict:
    """Run one stage process; wall time, exit status and peak memory (MB)."""
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(wall, 2), "returncode": proc.returncode,
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
            "peak_tree_rss_mb": round(max(sampler.peak, usage.ru_maxrss * 1024) / 2**20, 1),
            "peak_tree_anon_mb": round(sampler.peak_anon / 2**20, 1)}


def hash_stats(path: Path) -> dict | None:
    """The sum of the `PATHTRAIL_HASH_STATS` lines, or None when none was written."""
    if not path.is_file() or not path.read_text().strip():
        return None
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {**{k: sum(int(line.get(k, 0)) for line in lines) for k in HASH_KEYS}, "processes": len(lines)}


def extrapolate(small: float, large: float, n_small: int, n_large: int) -> float:
    """The line through (n_small, small) and (n_large, large) at PROJECT_TO; a negative slope (noise
    on a shared machine) counts as flat."""
    slope = max((large - small) / (n_large - n_small), 0.0)
    return round(large + slope * (PROJECT_TO - n_large), 1)


def run_pipeline(work: Path, n: int, seed: int, workers: int | None) -> dict:
    """Write a cohort of n patches in `work` and run every stage there; per-stage measurements."""
    started = time.perf_counter()
    write_cohort(work / "data/raw", n, seed, workers=min(4, os.cpu_count() or 1))
    generate_s = time.perf_counter() - started
    raw_bytes = sum(p.stat().st_size for p in (work / "data/raw").rglob("*") if p.is_file())
    (work / "params.yaml").write_text(yaml.safe_dump(scale_params(n, workers), sort_keys=False))
    for folder in ("logs", "hash_stats", "audit"):
        (work / folder).mkdir(exist_ok=True)
    base_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")]),
                "PATHTRAIL_HASH_CACHE": str(work / "hash_cache.sqlite")}
    stages: dict[str, dict] = {}
    for name in STAGES:
        env = {**base_env, "PATHTRAIL_HASH_STATS": str(work / "hash_stats" / f"{name}.jsonl")}
        cmd = [sys.executable, "-m", f"stages.{name}", "--params", "params.yaml",
               "--trail", "audit/trail.jsonl", "--log-file", f"logs/{name}.jsonl"]
        result = run_stage(cmd, work, env, work / "logs" / f"{name}.out")
        result["hashed"] = hash_stats(work / "hash_stats" / f"{name}.jsonl")
        stages[name] = result
        print(f"[{n} patches] {name}: {result['wall_s']} s, peak {result['peak_tree_rss_mb']} MB "
              f"(anonymous {result['peak_tree_anon_mb']} MB)", flush=True)
        if result["returncode"] != 0:
            print((work / "logs" / f"{name}.out").read_text()[-4000:], file=sys.stderr)
            raise SystemExit(f"stage {name} failed (exit {result['returncode']}); see {work}/logs")
    cohorts = {c: len((work / f"data/validated/{c}.csv").read_text().splitlines()) - 1 for c in ("internal", "external")}
    return {"patches": n, "cohorts": cohorts, "generate_s": round(generate_s, 1),
            "raw_megabytes": round(raw_bytes / 1e6, 1),
            "store_megabytes": round(sum(p.stat().st_size for p in (work / "data/store").iterdir()) / 1e6, 1),
            "stages": stages, "total": totals(stages)}


def totals(stages: dict[str, dict]) -> dict:
    measured = all(s["hashed"] is not None for s in stages.values())
    return {"wall_s": round(sum(s["wall_s"] for s in stages.values()), 1),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
            "peak_tree_rss_mb": max(s["peak_tree_rss_mb"] for s in stages.values()),
            "peak_tree_anon_mb": max(s["peak_tree_anon_mb"] for s in stages.values()),
            "bytes_hashed": sum(s["hashed"]["bytes_read"] for s in stages.values()) if measured else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=None,
                        help="the smaller run the projection's line starts from (default: patches / 10, at least 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="runtime.num_workers (default: the params')")
    parser.add_argument("--out", default=str(REPO / "bench/results/scale.json"))
    parser.add_argument("--keep", default=None, help="run in this (new or empty) folder and keep it")
    args = parser.parse_args(argv)
    baseline = args.baseline or max(500, args.patches // 10)
    if not 0 < baseline < args.patches:
        parser.error(f"--baseline {baseline}: must be between 0 and --patches ({args.patches})")

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pathtrail-scale-"))
    if args.keep and work.exists() and any(work.iterdir()):
        parser.error(f"--keep {work}: the folder is not empty")
    try:
        small = run_pipeline(work / "baseline", baseline, args.seed, args.workers)
        if not args.keep:  # disk: the large run needs about 30 kB per patch
            shutil.rmtree(work / "baseline", ignore_errors=True)
        large = run_pipeline(work / "run", args.patches, args.seed, args.workers)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report = summarise(args, small, large)
    write_json(report, args.out)
    print(json.dumps({k: report[k] for k in ("patches", "total", "rss_ok")}, indent=2))
    for name, p in report["projection_1m"]["stages"].items():
        print(f"1M projection {name}: {p['wall_s']} s, peak {p['peak_tree_rss_mb']} MB "
              f"(anonymous {p['peak_tree_anon_mb']} MB; {p['note']})")
    print(f"1M projection total: {report['projection_1m']['wall_s']} s")
    return 0 if report["rss_ok"] else 1


def summarise(args: argparse.Namespace, small: dict, large: dict) -> dict:
    n0, n1 = small["patches"], large["patches"]
    projection = {}
    for name, s1 in large["stages"].items():
        s0 = small["stages"][name]
        hashed = s1["hashed"]["bytes_read"] if s1["hashed"] else None
        projection[name] = {
            "wall_s": extrapolate(s0["wall_s"], s1["wall_s"], n0, n1),
            "peak_tree_rss_mb": extrapolate(s0["peak_tree_rss_mb"], s1["peak_tree_rss_mb"], n0, n1),
            "peak_tree_anon_mb": extrapolate(s0["peak_tree_anon_mb"], s1["peak_tree_anon_mb"], n0, n1),
            "bytes_hashed": (round(extrapolate(s0["hashed"]["bytes_read"], hashed, n0, n1))
                             if hashed is not None and s0["hashed"] else None),
            "linear": name not in NOT_LINEAR, "note": NOT_LINEAR.get(name, "linear in the number of patches")}
    total = large["total"]
    return {
        **{k: large[k] for k in ("patches", "cohorts", "generate_s", "raw_megabytes", "store_megabytes",
                                 "stages", "total")},
        "patch_size": 64, "seed": args.seed,
        "baseline": small,
        "projection_1m": {"stages": projection,
                          "wall_s": round(sum(p["wall_s"] for p in projection.values()), 1),
                          "peak_tree_rss_mb": max(p["peak_tree_rss_mb"] for p in projection.values()),
                          "method": f"per stage, the line through the runs of {n0} and {n1} patches"},
        "rss_limit_mb": RSS_LIMIT_MB,
        "rss_ok": total["peak_tree_rss_mb"] < RSS_LIMIT_MB,
        "hash_stats": ("PATHTRAIL_HASH_STATS per stage" if total["bytes_hashed"] is not None
                       else "not measured (the library wrote no hash statistics)"),
        "command": f"python bench/scale.py --patches {n1} --baseline {n0}",
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
    }


if __name__ == "__main__":
    sys.exit(main())
