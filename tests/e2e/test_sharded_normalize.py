"""Scale-out path for preprocessing: normalize as independent DVC stages over slide groups.

The dvc.yaml fragment of the README's "Scaling out preprocessing" (read from the README, so the
documented fragment is the tested one) runs in a temporary DVC project (no git) holding copies of
`stages/` and `src/`: shards 0 and 1 run as plain commands at the same time, as cluster jobs would,
and are recorded with `dvc commit`; `dvc repro` runs shards 2 and 3 and the merge. The merged store,
report and figure are byte-identical to what the unsharded normalize stage writes from the same inputs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_params, write_params
from pathtrail.core.files import read_table
from pathtrail.core.hashing import sha256_path
from pathtrail.pipeline import demo_data, normalize, split, stain_fit, validate
from pathtrail.provenance.audit import chain_problems, read_entries


def readme_fragment() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Scaling out preprocessing"):]
    return re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)


def relative_params(project: Path) -> dict:
    params = tiny_params(project)
    params["data"].update(data_root="data/raw", internal_manifest="data/raw/internal.csv",
                          external_manifest="data/raw/external.csv")
    params["stain"]["shard_size"] = 32  # several store files, so the merge re-packs across them
    return params


@pytest.mark.slow
def test_dvc_foreach_shards_merge_to_the_unsharded_store(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    params = relative_params(project)
    write_params(project, params)
    trail = str(tmp_path / "trail.jsonl")
    for module in (demo_data, validate, split, stain_fit):
        module.run(params, module.Paths(), trail=trail)
    unsharded = normalize.Paths(out="unsharded/store", report="unsharded/normalization.json",
                                figure="unsharded/stain_before_after.png")
    normalize.run(params, unsharded, trail=trail)

    fragment = readme_fragment()
    (project / "dvc.yaml").write_text(fragment)
    spec = yaml.safe_load(fragment)
    shards, n = spec["stages"]["normalize_shard"]["foreach"], spec["vars"][0]["n_shards"]
    assert shards == list(range(n)) and n >= 3
    for code in ("stages", "src"):
        shutil.copytree(REPO / code, project / code, ignore=shutil.ignore_patterns("__pycache__"))
    # the venv's python first: the fragment's commands say `python`
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=project, env=env, check=True)

    cmd = " ".join(spec["stages"]["normalize_shard"]["do"]["cmd"].split())
    jobs = [subprocess.Popen(cmd.replace("${item}", str(k)).replace("${n_shards}", str(n)).split(),
                             cwd=project, env=env) for k in (0, 1)]  # two "cluster jobs" at once
    assert [job.wait(timeout=300) for job in jobs] == [0, 0]
    assert chain_problems(read_entries(os.environ["PATHTRAIL_AUDIT_TRAIL"])) == []  # concurrent appends
    subprocess.run([*dvc, "commit", "-f", "-q", "normalize_shard@0", "normalize_shard@1"], cwd=project,
                   env=env, check=True)
    done = subprocess.run([*dvc, "repro"], check=False, cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    ran = set(re.findall(r"Running stage '([^']+)'", done.stdout))
    assert ran == {f"normalize_shard@{k}" for k in range(2, n)} | {"store_merge"}, done.stdout

    merged = {"store": "data/store", "normalization.json": "reports/normalization.json",
              "stain_before_after.png": "reports/figures/stain_before_after.png"}
    for rel, path in merged.items():
        assert sha256_path(project / path) == sha256_path(project / "unsharded" / rel), rel
    assert len(list((project / "data/store").glob("shard_*.npy"))) > 1

    # every slide lies in exactly one shard, and the shards split the work
    slides = [set(read_table(project / f"data/shards/{k}/store/index.csv").slide_id) for k in shards]
    assert all(slides) and sum(map(len, slides)) == len(set().union(*slides))
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {f"normalize_shard@{k}" for k in shards} | {"store_merge"} <= set(lock)
