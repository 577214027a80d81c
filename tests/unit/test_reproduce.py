"""`pathtrail reproduce`'s pure parts: the Δ between two files, the artifacts a card names, the
environment and params checks, and the report. Δs are checked against hand-computed values."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from pathtrail.core.errors import PathTrailError
from pathtrail.core.hashing import sha256_file
from pathtrail.review.compare import (
    Delta,
    csv_values,
    folder_changes,
    merge,
    numeric_delta,
    values_delta,
)
from pathtrail.review.release import select_card
from pathtrail.review.reproduce import (
    DIFFERS,
    IDENTICAL,
    MISSING,
    Artifact,
    Report,
    Row,
    environment_notes,
    expected_artifacts,
    format_report,
    load_card,
    locked_versions,
    package_differences,
    params_notes,
)
from pathtrail.review.sources import Expected, cache_object, md5_listing

COMMIT = "ab" * 20


# --- the Δ between two files -------------------------------------------------------------------

def test_json_trees_give_the_largest_numeric_difference():
    a = {"x": 1.0, "cohort": {"auroc": 0.91, "n": 40, "ci": [0.8, 0.95]}, "name": "demo"}
    b = {"x": 1.0, "cohort": {"auroc": 0.9125, "n": 41, "ci": [0.8, 0.9]}, "name": "demo"}
    d = values_delta(a, b)
    assert d.max_abs == pytest.approx(1.0) and d.notes == ()  # n: 40 vs 41
    b["cohort"]["n"] = 40
    assert values_delta(a, b).max_abs == pytest.approx(0.05)  # ci[1]: 0.95 vs 0.9
    assert values_delta(a, a) == Delta(0.0, (), 0)


def test_text_keys_and_lengths_are_notes_not_numbers():
    d = values_delta({"a": "x", "b": 1, "c": [1, 2], "flag": True},
                     {"a": "y", "c": [1, 2, 3], "d": 2, "flag": False})
    assert d.max_abs == 0.0  # c[0], c[1] agree
    assert d.n_notes == 5 and len(d.notes) == 3
    assert "a: 'x' vs 'y'" in d.notes and "b: only in the expected file" in d.notes
    assert "and 2 more" in d.describe()


def test_nan_matches_nan_but_not_a_number():
    assert values_delta([math.nan, 1.0], [math.nan, 1.5]).max_abs == 0.5
    d = values_delta([math.nan], [1.0])
    assert d.max_abs is None and d.notes == ("[0]: nan vs 1.0",)


def test_csv_cells_are_numbers_where_they_read_as_numbers(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("path,label,prob_tumour\nx.png,1,0.25\ny.png,0,0.5\n")
    b.write_text("path,label,prob_tumour\nx.png,1,0.2500003\nz.png,0,0.5\n")
    d = numeric_delta(a, b, "predictions/external.csv")
    assert d.max_abs == pytest.approx(3e-7)
    assert d.notes == ("[2][0]: 'y.png' vs 'z.png'",)
    assert csv_values("a,1.5\n") == [["a", 1.5]]
    assert "max |Δ| 3e-07" in d.describe()


def test_state_dicts_are_compared_tensor_by_tensor(tmp_path):
    w = torch.zeros(3, 2)
    a = {"state_dict": {"w": w, "step": torch.tensor(5)}, "metadata": {"arch": "small_cnn", "lr": 0.1}}
    b = {"state_dict": {"w": w + torch.tensor([[0, 0], [0, 2.5e-3], [0, 0]]), "step": torch.tensor(5)},
         "metadata": {"arch": "small_cnn", "lr": 0.1}}
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    d = numeric_delta(tmp_path / "a.pt", tmp_path / "b.pt", "models/model.pt")
    assert d.max_abs == pytest.approx(2.5e-3, rel=1e-6) and d.notes == ()
    torch.save({"state_dict": {"w": torch.zeros(2, 3), "step": torch.tensor(5)},
                "metadata": {"arch": "small_cnn", "lr": 0.1}}, tmp_path / "c.pt")
    d = numeric_delta(tmp_path / "a.pt", tmp_path / "c.pt", "model.pt")
    assert d.notes == ("state_dict.w: shape (3, 2) vs (2, 3)",)


class Custom:
    pass


def test_a_pickled_object_is_never_loaded(tmp_path):
    torch.save({"x": Custom()}, tmp_path / "a.pt")
    d = numeric_delta(tmp_path / "a.pt", tmp_path / "a.pt", "m.pt")
    assert d.max_abs is None and d.notes[0].startswith("m.pt: not readable as pt")


def test_npy_arrays_do_not_wrap_around(tmp_path):
    np.save(tmp_path / "a.npy", np.array([[3, 7]], dtype=np.uint8))
    np.save(tmp_path / "b.npy", np.array([[250, 7]], dtype=np.uint8))
    assert numeric_delta(tmp_path / "a.npy", tmp_path / "b.npy", "shard_00000.npy").max_abs == 247.0


def test_files_without_numbers_have_no_delta(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG1")
    assert numeric_delta(tmp_path / "a.png", tmp_path / "a.png", "roc.png") is None
    (tmp_path / "bad.json").write_text("{")
    d = numeric_delta(tmp_path / "bad.json", tmp_path / "bad.json", "m/x.json")
    assert d.notes == ("m/x.json: not readable as json (JSONDecodeError)",)


def test_folders_are_compared_by_their_file_lists():
    c = folder_changes({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "9", "d": "4"})
    assert (c.differ, c.only_expected, c.only_reproduced, c.total) == (("b",), ("c",), ("d",), 4)
    assert c.describe() == "1 of 4 files differ; 1 missing (e.g. c); 1 new (e.g. d)"
    assert merge([Delta(0.5, ("x",), 1), Delta(None, (), 0), Delta(2.0, ("y",), 2)]) == Delta(2.0, ("x", "y"), 3)


# --- where the expected bytes come from --------------------------------------------------------

def _cache_put(cache, data: bytes) -> str:
    md5 = hashlib.md5(data).hexdigest()
    path = cache_object(cache, md5)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return md5


def test_expected_bytes_come_from_the_tree_or_the_cache_and_only_when_the_hash_matches(tmp_path):
    root, cache = tmp_path / "repo", tmp_path / "cache"
    (root / "metrics").mkdir(parents=True)
    (root / "metrics/a.json").write_text('{"v": 1}')
    old = b'{"v": 0.5}'
    md5 = _cache_put(cache, old)
    want_old = hashlib.sha256(old).hexdigest()
    exp = Expected(root, cache, {"metrics/a.json": md5})
    assert exp.file("metrics/a.json", sha256_file(root / "metrics/a.json")) == root / "metrics/a.json"
    assert exp.file("metrics/a.json", want_old) == cache_object(cache, md5)
    assert exp.file("metrics/a.json", "0" * 64) is None


def test_a_folder_detail_names_the_files_and_their_delta(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "store"
    before = {"index.csv": _cache_put(cache, b"i,v\n0,1.0\n"), "shard.npy": _cache_put(cache, b"x")}
    listing = json.dumps([{"md5": h, "relpath": p} for p, h in sorted(before.items())]).encode()
    dir_md5 = hashlib.md5(listing).hexdigest() + ".dir"
    path = cache_object(cache, dir_md5)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(listing)
    out.mkdir()
    (out / "index.csv").write_text("i,v\n0,1.25\n")
    (out / "shard.npy").write_bytes(b"x")
    assert md5_listing(out)["shard.npy"] == before["shard.npy"]
    exp = Expected(tmp_path, cache, {})
    assert exp.folder_detail(dir_md5, out) == "1 of 2 files differ; max |Δ| 0.25"
    assert "no listing" in exp.folder_detail("f" * 32 + ".dir", out)


def test_compare_reads_the_reproduced_tree_and_lock(tmp_path):
    from pathtrail.review.reproduce import compare

    wt, root = tmp_path / "wt", tmp_path / "repo"
    (wt / "metrics").mkdir(parents=True)
    (root / "metrics").mkdir(parents=True)
    (wt / "metrics/a.json").write_text('{"v": 1.0}')
    (wt / "metrics/b.json").write_text('{"v": 2.0}')
    (root / "metrics/b.json").write_text('{"v": 2.5}')
    (wt / "plots.csv").write_text("x\n1\n")
    (wt / "other.csv").write_text("x\n2\n")
    arts = [Artifact("metrics/a.json", "sha256", sha256_file(wt / "metrics/a.json")),
            Artifact("metrics/b.json", "sha256", sha256_file(root / "metrics/b.json")),
            Artifact("metrics/c.json", "sha256", "c" * 64),
            Artifact("models/m.pt", "sha256", "d" * 64),
            Artifact("plots.csv", "md5", "1" * 32),
            Artifact("other.csv", "md5", "2" * 32),
            Artifact("<outside the repository>/ext.csv", "sha256", "e" * 64),
            Artifact("../secret.txt", "sha256", "f" * 64), Artifact("../secret.txt", "md5", "f" * 32)]
    (tmp_path / "secret.txt").write_text("never hashed from a card's path")
    (wt / "models").mkdir()
    (wt / "models/m.pt").write_bytes(b"weights")
    got = compare(arts, wt, Expected(root, tmp_path / "cache", {}),
                  {"plots.csv": "1" * 32, "other.csv": "3" * 32}, {"data": {}})
    assert [(r.status, r.detail) for r in got] == [
        (IDENTICAL, ""), (DIFFERS, "max |Δ| 0.5"), (MISSING, "the run did not write it"),
        (DIFFERS, "no copy of the expected file here to compare with"), (IDENTICAL, ""),
        (DIFFERS, "no copy of the expected file here to compare with"),
        ("not checked", "outside the repository, and not a manifest the params name"),
        ("not checked", "card artifact: '../secret.txt' leads outside the repository; it was not read"),
        ("not checked", "card artifact: '../secret.txt' leads outside the repository; it was not read")]


# --- what the card names -----------------------------------------------------------------------

def card(**provenance) -> dict:
    base = {"git_commit": COMMIT, "git_dirty": False, "upstream_dirty": [],
            "inputs": {"metrics/eval.json": "e" * 64, "models/model.pt": "m" * 64},
            "manifests": {"internal": {"path": "data/raw/internal.csv", "sha256": "i" * 64}},
            "dvc_lock": {"train": {"deps": {"data/store": "s.dir"},
                                   "outs": {"models/model.pt": "1" * 32, "plots/train/steps.csv": "2" * 32}},
                         "model_card": {"outs": {"model_cards/x.md": "3" * 32, "model_cards/x.json": "4" * 32,
                                                 "model_cards/figures": "5" * 32 + ".dir"}}}}
    return {"params": {"train": {"epochs": 8}}, "figures": {"figures/roc.png": "f" * 64},
            "provenance": {**base, **provenance}}


def test_the_artifacts_are_every_hash_the_card_gives():
    names = [(a.path, a.kind) for a in expected_artifacts(card(), "model_cards/x.json")]
    assert names == [
        ("data/raw/internal.csv", "sha256"), ("metrics/eval.json", "sha256"),
        ("model_cards/figures/roc.png", "sha256"), ("models/model.pt", "sha256"),
        ("model_cards/figures", "md5"), ("plots/train/steps.csv", "md5"),
    ]  # model.pt once (sha256); the card's own .md and .json are not results


def _write_card(root, body, name="x.json"):
    (root / "model_cards").mkdir(parents=True, exist_ok=True)
    (root / "model_cards" / name).write_text(json.dumps(body))
    return root / "model_cards" / name


def test_a_card_that_cannot_be_reproduced_is_refused_with_the_reason(tmp_path):
    path = _write_card(tmp_path, card(git_dirty=True, git_modified=["src/pathtrail/train/loop.py"]))
    with pytest.raises(PathTrailError, match=r"uncommitted source \(src/pathtrail/train/loop.py\).*Commit the code"):
        load_card(path, tmp_path)
    path = _write_card(tmp_path, card(git_commit=None))
    with pytest.raises(PathTrailError, match="git_commit is null, not a commit"):
        load_card(path, tmp_path)
    path.write_text("{not json")
    with pytest.raises(PathTrailError, match="model_cards/x.json: not a readable card JSON"):
        load_card(path, tmp_path)
    assert load_card(_write_card(tmp_path, card()), tmp_path)[1] == "model_cards/x.json"


def test_the_card_is_the_only_one_or_named(tmp_path):
    with pytest.raises(PathTrailError, match="no model card in .*pass --card"):
        select_card(tmp_path, None)
    _write_card(tmp_path, card(), "a.json")
    (tmp_path / "model_cards/a.sig.json").write_text("{}")
    assert select_card(tmp_path, None).name == "a.json"
    _write_card(tmp_path, card(), "b.json")
    with pytest.raises(PathTrailError, match=r"several model cards \(model_cards/a.json, model_cards/b.json\)"):
        select_card(tmp_path, None)
    with pytest.raises(PathTrailError, match="--card model_cards/c.json: no such file"):
        select_card(tmp_path, "model_cards/c.json")


# --- environment and params --------------------------------------------------------------------

def test_the_lock_is_read_and_compared_by_version():
    locked = locked_versions("# pinned\nTorch==2.13.0\nzope.interface==6.0  # c\n\n--index-url x\nsix[extra]==1.0\n")
    assert locked == {"torch": "2.13.0", "zope-interface": "6.0", "six": "1.0"}
    found = package_differences(locked, {"torch": "2.13.0+cpu", "zope-interface": "6.1"})
    assert found == ["six not installed (locked 1.0)", "zope-interface 6.1 (locked 6.0)"]


def test_environment_notes_say_what_differs():
    import importlib.metadata

    numpy_now = importlib.metadata.version("numpy")
    notes = environment_notes({"environment": {"machine": "riscv128", "torch_version": "0.0.0+cu999"}},
                              f"numpy=={numpy_now}\npathtrail-missing-package==1.0\n")
    assert notes[0].startswith("environment: 1 package(s) differ from the commit's requirements.lock: "
                               "pathtrail-missing-package not installed (locked 1.0)")
    assert any(n.startswith("torch: ") and "0.0.0+cu999 in the card's run" in n for n in notes)
    assert any(n.startswith("machine: ") and "riscv128 in the card's run" in n for n in notes)
    assert environment_notes({}, None)[0].startswith("environment: the commit has no requirements.lock")


def test_params_are_compared_without_runtime_knobs_and_with_paths_made_relative(tmp_path):
    import yaml

    c = {"params": {"data": {"root": "data/raw"}, "train": {"epochs": 8}, "runtime": {"num_workers": 2}}}
    text = yaml.safe_dump({"data": {"root": str(tmp_path / "data/raw")}, "train": {"epochs": 8},
                           "runtime": {"num_workers": 0}})
    assert params_notes(c, text, tmp_path) == ["params: the commit's params.yaml equals the card's params"]
    (note,) = params_notes(c, text.replace("epochs: 8", "epochs: 3"), tmp_path)
    assert "differs from the card's params at train.epochs (card 8, commit 3)" in note


# --- the report ---------------------------------------------------------------------------------

def test_the_report_lists_every_artifact_and_the_verdict():
    rows = [Row(Artifact("metrics/eval.json", "sha256", "a" * 64), "a" * 64, IDENTICAL),
            Row(Artifact("models/model.pt", "sha256", "b" * 64), "c" * 64, DIFFERS, "max |Δ| 0.0026"),
            Row(Artifact("predictions\x1b[31m", "md5", "d" * 32), None, MISSING, "the run did not write it")]
    report = Report("model_cards/x.json", COMMIT, ["params: equal"], rows)
    text = format_report(report)
    assert not report.ok
    assert "Reproducing model_cards/x.json at commit abababababab" in text
    line = next(x for x in text.splitlines() if x.startswith("models/model.pt"))
    assert line.split(None, 4) == ["models/model.pt", "sha256", "b" * 12, "c" * 12, "differs (max |Δ| 0.0026)"]
    assert "\x1b" not in text and "predictions\\x1b[31m" in text
    assert text.rstrip().endswith("3 artifacts: 1 identical, 1 differ, 1 missing\nNOT REPRODUCED")
    assert Report("c", COMMIT, [], rows[:1]).ok and not Report("c", COMMIT, [], []).ok
