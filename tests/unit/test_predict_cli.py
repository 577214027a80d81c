"""`pathtrail predict` / `drift` pieces that need no pipeline: the execution contract taken from the
card before numpy loads, output naming, decisions at the threshold, and option errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pathtrail.cli.main import main
from pathtrail.core.errors import PathTrailError
from pathtrail.inference.outputs import decisions, output_paths


@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_the_cards_execution_contract_is_set_before_numpy_loads(tmp_path, isa):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"params": {"execution": {"threads": 1, "cpu_isa": isa}}}))
    code = ("import os, sys; from pathtrail.cli.predict import apply_card_contract; "
            f"env = apply_card_contract(['--card', {str(card)!r}]); "
            "print(os.environ.get('OMP_NUM_THREADS'), os.environ.get('ATEN_CPU_CAPABILITY'), 'numpy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin"})
    threads, capability, numpy_loaded = done.stdout.split()
    assert threads == "1" and numpy_loaded == "False"
    if capability != "None":  # x86-64 only
        assert capability == isa


def test_outputs_are_named_from_out_and_out_must_be_a_csv():
    paths = output_paths("scored/ext.csv")
    assert {k: p.as_posix() for k, p in paths.items()} == {
        "predictions": "scored/ext.csv", "decisions": "scored/ext.decisions.csv", "slides": "scored/ext.slides.csv",
        "patients": "scored/ext.patients.csv", "sidecar": "scored/ext.json", "drift_plot": "scored/ext.drift.png"}
    with pytest.raises(PathTrailError, match="name a .csv file"):
        output_paths("scored/ext.json")


def test_decisions_follow_the_threshold_inclusively_and_argmax_for_more_classes():
    probs = np.array([[0.6, 0.4], [0.5, 0.5], [0.2, 0.8]])
    assert decisions(probs, 0.5, ["a", "b"]) == ["a", "b", "b"]
    three = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    assert decisions(three, None, ["a", "b", "c"]) == ["b", "a"]
    with pytest.raises(PathTrailError, match="no locked threshold"):
        decisions(probs, None, ["a", "b"])


@pytest.mark.parametrize("args", [["--out", "p.csv"], ["--manifest", "m.csv", "--out", "p.csv"],
                                  ["--manifest", "m.csv", "--data-root", "d", "--slides", "s.csv", "--out", "p.csv"]])
def test_predict_needs_a_manifest_with_its_data_root_or_slides(tmp_path, capsys, args):
    assert main(["predict", "--card", "c.json", *args]) == 1
    err = capsys.readouterr().err
    assert "give either --manifest M.csv with --data-root D, or --slides S.csv" in err
    assert not list(tmp_path.iterdir())


def test_a_missing_card_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    assert main(["predict", "--card", "nope.json", "--manifest", "m.csv", "--data-root", "d",
                 "--out", "p.csv"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pathtrail: error: --card 'nope.json'") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_drift_out_must_be_a_json(capsys):
    assert main(["drift", "--card", "c.json", "--manifest", "m.csv", "--data-root", "d", "--out", "x.csv"]) == 1
    assert "name a .json file" in capsys.readouterr().err
