"""Shared fixtures: the repo root, small params, and an isolated audit trail per test.

Tests are hermetic: a `dvc exp run` rewrites the workspace's params.yaml, dvc.lock and artifacts, so
a test that opens them passes or fails with the last experiment. An audit hook (below) fails any
test that opens one of them from the test process, unless the test is marked
`@pytest.mark.workspace` (it is about the workspace itself, like the params-drift check).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pathtrail.core.execution import environment_for  # imports neither torch nor numpy

# ATen, oneDNN, MKL and numpy pick their CPU kernels once per process, at first use (a test
# module's import can be that), and on an AVX-512 CPU they would pick AVX-512: pinned here to the
# execution contract's level as stages/__init__.py pins them, so that stages run in this process
# honour the default contract (threads are left to the tests). A variable already set is kept.
for _name, _value in environment_for({"threads": 0, "cpu_isa": "avx2"}).items():
    os.environ.setdefault(_name, _value)

import torch  # after the pins
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# What `dvc repro` / `dvc exp run` write in the workspace (test_dvc_yaml checks dvc.yaml's outs lie here).
WORKSPACE_OUTPUTS = ("params.yaml", "dvc.lock", "audit", "data", "models", "metrics", "plots", "predictions",
                     "reports", "model_cards")
_GUARDED = tuple(str(REPO / name) for name in WORKSPACE_OUTPUTS)
_opened: list[str] = []


def _watch_workspace(event: str, args: tuple) -> None:
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return  # an open by file descriptor names no path
    path = os.path.abspath(os.fsdecode(args[0]))
    if path.startswith(_GUARDED) and any(path == g or path.startswith(g + os.sep) for g in _GUARDED):
        _opened.append(path)


sys.addaudithook(_watch_workspace)  # lives as long as the process; it only records


def pytest_configure(config):
    config.addinivalue_line("markers", "workspace: reads the workspace's params.yaml or artifacts on purpose")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    _opened.clear()
    _torch_config_intact(item)  # the keys as this test finds them (first sight of a module)
    return _hermetic(item, (yield))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    _opened.clear()
    return _hermetic(item, (yield))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    _opened.clear()
    result = _hermetic(item, (yield))
    _torch_config_intact(item)
    return result


# torch's compile settings live in config modules; pytest's monkeypatch.setattr on one deletes the
# key on undo (`<module>.<key> does not exist` at every later compile in the process), so a test
# changes them with the module's own `patch(...)`. Checked after every test: each key still there.
_TORCH_CONFIGS = ("torch._dynamo.config", "torch._inductor.config", "torch._functorch.config")
_config_keys: dict[str, frozenset] = {}


def _torch_config_intact(item) -> None:
    for name in _TORCH_CONFIGS:
        module = sys.modules.get(name)
        if module is None:
            continue
        keys = frozenset(k for k, entry in module._config.items() if not entry.hide)  # a deleted key is hidden
        missing = sorted(_config_keys.setdefault(name, keys) - keys)
        _config_keys[name] = keys  # the culprit is named once, not every later test
        if missing:
            pytest.fail(f"{item.nodeid} hid (deleted) {name} keys {missing}: change torch's config with "
                        f"`{name}.patch(...)`, never monkeypatch.setattr", pytrace=False)


def _hermetic(item, result):
    opened = sorted({os.path.relpath(p, REPO) for p in _opened})
    if opened and item.get_closest_marker("workspace") is None:
        pytest.fail(f"the test opened the workspace's {', '.join(opened)}, which a `dvc exp run` rewrites: build "
                    "what it needs in tmp_path (conftest.tiny_params, fake_pipeline) or mark it "
                    "@pytest.mark.workspace", pytrace=False)
    return result


def pytest_collection_modifyitems(config, items):
    if _opened:  # a test module read the workspace when it was imported
        raise pytest.UsageError(f"collecting the tests opened {sorted(set(_opened))}: tests must not read the "
                                "workspace's params.yaml or artifacts")
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_trail(tmp_path, monkeypatch):
    """No test ever appends to the repository's own audit trail, and none runs in the workspace:
    defaults such as `--params params.yaml` and the git state a stage records (`git_state(".")`)
    resolve in tmp_path, not in a checkout that the last `dvc exp run` rewrote."""
    monkeypatch.setenv("PATHTRAIL_AUDIT_TRAIL", str(tmp_path / "audit" / "trail.jsonl"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def repo_params() -> dict:
    from fake_pipeline import committed_params

    return committed_params()


def tiny_params(tmp_path: Path, **overrides) -> dict:
    """The committed params shrunk to a seconds-long run, with data paths inside tmp_path."""
    from fake_pipeline import committed_params

    p = committed_params()
    d = p["data"]
    d["demo"].update(patients_per_site=8, external_patients=8, patches_per_patient=6, max_slides_per_patient=2)
    d["data_root"] = str(tmp_path / "data/raw")
    d["internal_manifest"] = str(tmp_path / "data/raw/internal.csv")
    d["external_manifest"] = str(tmp_path / "data/raw/external.csv")
    p["runtime"]["num_workers"] = 0
    d["min_per_class"] = 2
    p["train"].update(epochs=2, batch_size=16)
    p["eval"]["n_bootstrap"] = 200
    p["compile_check"]["n_bootstrap"] = 200
    p["stain"]["fit_max_patches"] = 16
    p["card"]["intended_use"] = str(REPO / p["card"]["intended_use"])
    for dotted, value in overrides.items():
        node = p
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node[k]
        node[leaf] = value
    return p


def write_params(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path
