"""Where an ensemble member's files lie: the member stage writes them, the ensemble stage reads them."""

from __future__ import annotations

from pathlib import Path


def member_files(out: str | Path, name: str) -> dict[str, Path]:
    """The files of member `name` under the members' folder `out` (all in `out/name/`)."""
    folder = Path(out) / name
    return {"model": folder / "model.pt", "val_probs": folder / "val_probs.csv", "train": folder / "train.json",
            "curves": folder / "curves", "other_mode_run": folder / "other_mode_run.pt",
            "compile_check": folder / "compile_check.json", "compile_curves": folder / "compile_check_loss.csv",
            "compile_figure": folder / "compile_check_loss.png"}


# The trail's stage names of the optional ensemble pipeline: the main card does not describe them
# (its own section, model_cards/ensemble/, does), so runs of them after the card leave it current.
ENSEMBLE_STAGE = "ensemble"
MEMBER_PREFIXES = ("ensemble_train.", "ensemble_compile_check.")


def is_ensemble_stage(stage: str) -> bool:
    return stage == ENSEMBLE_STAGE or stage.startswith(MEMBER_PREFIXES)
