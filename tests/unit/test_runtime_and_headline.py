"""Results vs runtime knobs, the headline metric, manifests as dependencies: what dvc.yaml promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fake_pipeline import committed_params
from pathtrail.card.headline import HEADLINE, headline_metrics
from pathtrail.config.loading import ParamsError, parse_section, result_params
from pathtrail.config.sections import ExecutionParams, RuntimeParams, runtime_of
from pathtrail.core.execution import CONTRACT_VARIABLES, apply_before_libraries, environment_for

ROOT = Path(__file__).resolve().parents[2]
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
STAGES = DVC_YAML["stages"]


def _params_of(stage: dict) -> set[str]:
    return {p if isinstance(p, str) else next(iter(p)) for p in stage.get("params", [])}


def test_no_stage_lists_the_runtime_knobs_and_every_computing_stage_the_contract():
    for name, stage in STAGES.items():
        assert not {p for p in _params_of(stage) if p.split(".")[0] == "runtime"}, name
        if name != "split":  # split only shuffles integers with its own seeded generator
            assert "execution" in _params_of(stage), name


def test_runtime_knobs_are_not_part_of_any_hashed_params():
    params = committed_params()
    assert "runtime" in params and "runtime" not in result_params(params)
    for section in ("data", "train", "model", "eval"):
        assert not {"num_workers", "prefetch_factor", "persistent_workers", "pin_memory"} & set(params[section])


def test_a_moved_knob_names_its_new_place():
    params = committed_params()
    params["data"]["num_workers"] = 4
    from pathtrail.config.sections import DataParams

    with pytest.raises(ParamsError, match=r"'data.num_workers' is now 'runtime.num_workers'"):
        parse_section(params, "data", DataParams)


def test_runtime_and_execution_sections_are_checked():
    params = committed_params()
    assert runtime_of(params) == parse_section(params, "runtime", RuntimeParams)
    assert runtime_of({}).num_workers == 2  # an old params file without the section still loads
    with pytest.raises(ParamsError, match="runtime.prefetch_factor"):
        runtime_of({"runtime": {**params["runtime"], "prefetch_factor": 0}})
    with pytest.raises(ParamsError, match="execution.cpu_isa"):
        parse_section({"execution": {"threads": 1, "cpu_isa": "avx512"}}, "execution", ExecutionParams)


def test_the_contract_pins_threads_and_kernels_and_can_be_lifted():
    env = environment_for({"threads": 1, "cpu_isa": "avx2"})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert set(env) <= set(CONTRACT_VARIABLES)
    assert environment_for({"threads": 0, "cpu_isa": "native"}) == {}


def test_the_stage_package_sets_the_contract_before_torch_loads(tmp_path):
    """`python -m stages.X` imports stages/__init__.py first; torch then runs the pinned kernels even
    when the caller's environment asks for others."""
    (tmp_path / "params.yaml").write_text("execution:\n  threads: 1\n  cpu_isa: avx2\n", encoding="utf-8")
    probe = ("import sys; sys.argv[0] = '-m'; import stages, torch; "
             "print(torch.get_num_threads(), torch.backends.cpu.get_cpu_capability())")
    done = subprocess.run([sys.executable, "-c", probe], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2",
                               "ATEN_CPU_CAPABILITY": "default"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "AVX2"]


def test_a_fifo_params_file_does_not_block_the_contract(tmp_path):
    import os

    fifo = tmp_path / "params.yaml"
    os.mkfifo(fifo)
    env = apply_before_libraries(["--params", str(fifo)])  # returns at once with the defaults
    assert env.get("OMP_NUM_THREADS") == "1"


def test_headline_is_the_only_metric_and_has_at_most_15_values():
    metrics = [next(iter(m)) if isinstance(m, dict) else m for s in STAGES.values() for m in s.get("metrics", [])]
    assert metrics == ["metrics/headline.json"]
    assert 1 + len(HEADLINE) <= 15
    card = {"release_status": "DRAFT", "metrics": {"eval": {"internal_test": {"auroc": 0.9}}}}
    out = headline_metrics(card)
    assert out["status"] == "DRAFT" and out["internal_test"]["auroc"] == 0.9
    assert sum(len(v) for v in out.values() if isinstance(v, dict)) + 1 <= 15


def test_a_manifest_outside_the_data_root_is_a_dvc_dependency(tmp_path):
    """Flipping labels in a manifest that lies outside data.data_root makes validate out of date."""
    deps = [d for d in STAGES["validate"]["deps"] if str(d).startswith("${")]
    assert {"${data.data_root}", "${data.internal_manifest}", "${data.external_manifest}"} <= set(deps)
    (tmp_path / "root").mkdir()
    (tmp_path / "root/a.png").write_bytes(b"x")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/internal.csv").write_text("path,label\na.png,0\n", encoding="utf-8")
    (tmp_path / "meta/external.csv").write_text("path,label\na.png,1\n", encoding="utf-8")
    params = {"data": {"data_root": "root", "internal_manifest": "meta/internal.csv",
                       "external_manifest": "meta/external.csv"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    stage = {"cmd": "cp meta/internal.csv out.csv", "deps": deps, "outs": ["out.csv"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"validate": stage}}), encoding="utf-8")

    def dvc(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "dvc", *args], check=False, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env={"PATH": "/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "HOME": str(tmp_path)})
        assert done.returncode == 0, done.stderr
        return done.stdout

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc("init", "-q")
    dvc("repro", "-q")
    assert dvc("status", "--json").strip() == "{}"
    (tmp_path / "meta/internal.csv").write_text("path,label\na.png,1\n", encoding="utf-8")
    assert "meta/internal.csv" in dvc("status", "--json")


def test_the_readmes_exp_show_command_gives_a_readable_table(tmp_path, tmp_path_factory):
    """The README's `dvc exp show` line, on a pipeline tree with the headline metric: the kept
    headline columns, no dependency hashes, within a 200-column terminal."""
    import re
    import shlex

    from fake_pipeline import fake_tree

    text = (ROOT / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    line = next(raw for raw in text.splitlines() if raw.startswith("dvc exp show --only-changed"))
    args = shlex.split(line.split("    #")[0])[1:]
    assert "--keep" in args and "--drop" in args
    tree = fake_tree(tmp_path / "repo", tmp_path_factory)
    done = subprocess.run([sys.executable, "-m", "dvc", *args, "--no-pager", "--csv"], check=False, cwd=tree,
                          capture_output=True, text=True, timeout=120, env={**os_environ(), "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split(",")
    assert {"status", "internal_test.auroc", "external.auroc", "compile_check.passed"} <= set(header)
    assert not [h for h in header if "/" in h] and len(header) <= 15
    table = subprocess.run([sys.executable, "-m", "dvc", *args, "--no-pager"], check=False, cwd=tree,
                           capture_output=True, text=True, timeout=120, env={**os_environ(), "COLUMNS": "200"})
    assert "…" not in table.stdout and max(len(x) for x in table.stdout.splitlines()) <= 200
    assert re.search(r"RELEASE CANDIDATE|DRAFT|EXPERIMENT", table.stdout)


def os_environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"DVC_NO_ANALYTICS": "1"}


def test_the_loader_workers_can_come_from_the_environment(monkeypatch):
    """`pathtrail reproduce --jobs N` sets PATHTRAIL_NUM_WORKERS; every stage takes it as runtime.num_workers."""
    from pathtrail.core.errors import PathTrailError
    from pathtrail.pipeline.stagekit import with_runtime_overrides

    params = committed_params()
    monkeypatch.setenv("PATHTRAIL_NUM_WORKERS", "3")
    changed = with_runtime_overrides(params)
    assert runtime_of(changed).num_workers == 3 and result_params(changed) == result_params(params)
    monkeypatch.setenv("PATHTRAIL_NUM_WORKERS", "many")
    with pytest.raises(PathTrailError, match="PATHTRAIL_NUM_WORKERS='many': must be an integer"):
        with_runtime_overrides(params)


def test_bad_params_files_are_one_line_errors(tmp_path):
    from pathtrail.config.loading import read_params

    bad = {"unclosed.yaml": b"foo: [unclosed\n", "utf16.yaml": b"\xff\xfea\x00", "deep.yaml": b"[" * 100000}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ParamsError, match="not readable as UTF-8 YAML"):
            read_params(tmp_path / name)
    with pytest.raises(ParamsError, match="not a regular file"):
        read_params(tmp_path)
    with pytest.raises(ParamsError, match="execution.threads"):
        parse_section({"execution": {"threads": 100000, "cpu_isa": "avx2"}}, "execution", ExecutionParams)
    with pytest.raises(ParamsError, match="runtime.num_workers"):
        runtime_of({"runtime": {"num_workers": 99999}})


def test_numpys_enable_list_in_the_shell_does_not_clash_with_the_pin(tmp_path):
    (tmp_path / "params.yaml").write_text("execution:\n  threads: 1\n  cpu_isa: avx2\n", encoding="utf-8")
    probe = "import sys; sys.argv[0] = '-m'; import stages, numpy; print('ok')"
    done = subprocess.run([sys.executable, "-c", probe], check=False, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                            "NPY_ENABLE_CPU_FEATURES": "AVX2"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
