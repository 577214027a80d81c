"""From whole slides to a verified model card: synthetic pyramidal TIFFs, the README's tile stage
in place of demo_data, `dvc repro` (tile -> validate -> ... -> model_card), then `pathtrail verify`."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from pathtrail.cli.main import main
from slide_project import slide_dvc_yaml
from synthetic_slides import write_slide_set
from tiny_repo import commit_all, dvc, dvc_repro, make_tiny_repo, tiny_params
from wsi_helpers import slide_params

pytestmark = pytest.mark.slow  # a real pipeline run from slides, about 2 min on 2 cores


def tiny_slide_params() -> dict:
    """The tiny repository's params (seconds-long training), with the data of `data=slides`."""
    p, slides = tiny_params(), slide_params()
    p["data"] = {**slides["data"], "patch_size": 32, "min_per_class": 2}
    p["tile"] = {**slides["tile"], "mpp": 1.0}
    p["card"]["name"] = "tiny-slides"
    # every training patch: the pale one of the two real scans alone has too little stain by
    # Macenko's optical-density rule (5% at 1 µm/px) for a reference
    p["stain"]["fit_max_patches"] = 256
    return p


def test_a_pipeline_from_slides_passes_verify(tmp_path, capsys):
    root = make_tiny_repo(tmp_path / "repo", tiny_slide_params())
    (root / "dvc.yaml").write_text(slide_dvc_yaml((root / "dvc.yaml").read_text()))
    write_slide_set(root / "slides")
    commit_all(root, "slides and the slide pipeline")
    dvc_repro(root)
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert "tile" in lock and "demo_data" not in lock
    report = json.loads((root / "reports/tiling.json").read_text())
    assert report["totals"]["internal"]["slides"] == 10 and report["totals"]["external"]["slides"] == 4
    assert all(report["totals"][c]["rejected"][r] > 0 for c in ("internal", "external") for r in ("pen", "blur"))
    assert len(list((root / "reports/figures/tiling").rglob("*.png"))) == 14
    card = json.loads((root / "model_cards/tiny-slides.json").read_text())
    assert card["params"]["tile"]["assume_mpp"] is None and "demo" not in card["params"]["data"]
    commit_all(root, "pipeline outputs and card")
    assert dvc("status", cwd=root).stdout.strip().endswith("Data and pipelines are up to date.")
    code = main(["verify", "--root", str(root)])
    out = capsys.readouterr().out
    assert code == 0, out
    # predict --slides cuts the external slides with the card's tile settings and scores them as
    # evaluate scored the tile stage's patches of the same slides
    scored = tmp_path / "scored" / "external.csv"
    scored.parent.mkdir()
    assert main(["predict", "--card", str(root / "model_cards/tiny-slides.json"), "--root", str(root),
                 "--slides", str(root / "slides/external.csv"), "--out", str(scored)]) == 0, capsys.readouterr().err
    mine, theirs = pd.read_csv(scored), pd.read_csv(root / "predictions/external.csv")
    probs = [c for c in theirs if c.startswith("prob_")]
    assert len(mine) == len(theirs) and probs
    # the same patch: <cohort folder>/<slide folder>/<x>_<y>.png, the cohort folders differ
    mine, theirs = (t.assign(patch=t.path.str.split("/", n=1).str[1]).sort_values("patch").reset_index(drop=True)
                    for t in (mine, theirs))
    assert mine.patch.tolist() == theirs.patch.tolist()
    assert mine[probs].to_numpy().tobytes() == theirs[probs].to_numpy().tobytes()
