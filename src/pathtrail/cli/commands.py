"""Every `pathtrail` command: who uses it, its one-line purpose and an example (for `--help`).

`COMMANDS` is the one list the top-level help, each command's `--help` and the tests read; a
command added to the parser without an entry here fails `tests/unit/test_cli_help.py`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

ENGINEER = "for ML engineers (building and re-running a model)"
REVIEWER = "for reviewers (QA and regulatory sign-off)"
SCORING = "for scoring new data with a model a card describes"
GROUPS = (ENGINEER, REVIEWER, SCORING)


@dataclass(frozen=True)
class Command:
    name: str
    group: str
    purpose: str
    example: str


COMMANDS = (
    Command("validate", ENGINEER, "check cohort manifests and their images before anything is trained",
            "pathtrail validate --internal data/raw/internal.csv --external data/raw/external.csv"),
    Command("reproduce", ENGINEER,
            "re-run a card's commit in a temporary worktree; exit 0 only when every artifact is identical",
            "pathtrail reproduce --card model_cards/pathtrail-demo.json --jobs 2"),
    Command("profile", ENGINEER,
            "a few training steps under torch.profiler: trace and top-ops summary (reports/profile, not hashed)",
            "pathtrail profile            (or: pathtrail profile --preset detailed)"),
    Command("verify", REVIEWER,
            "recompute everything; exit 0 only when trail, artifacts, card and dvc.lock agree",
            "pathtrail verify            (or: pathtrail verify --release)"),
    Command("trail", REVIEWER, "show the hash-chained audit trail as a readable timeline",
            "pathtrail trail --stage train"),
    Command("keygen", REVIEWER, "create an Ed25519 key pair for signing releases (kept out of the repository)",
            'pathtrail keygen --name "Q. A. Reviewer"'),
    Command("sign", REVIEWER, "sign a model card that verifies: writes model_cards/NAME.sig.json",
            "pathtrail sign --key ~/.config/pathtrail/keys/reviewer.key"),
    Command("predict", SCORING,
            "score new patches with a card's model (checked by sha256): probabilities, decisions, "
            "slide and patient aggregates, sidecar with drift",
            "pathtrail predict --card model_cards/pathtrail-demo.json --manifest data/raw/external.csv "
            "--data-root data/raw --out preds.csv"),
    Command("drift", SCORING,
            "compare a new cohort's stain, intensities and scores with the card's reference and test set",
            "pathtrail drift --card model_cards/pathtrail-demo.json --manifest data/raw/external.csv "
            "--data-root data/raw --out drift.json"),
)
BY_NAME = {c.name: c for c in COMMANDS}


def epilog(name: str) -> str:
    return f"example:\n  {BY_NAME[name].example}"


def overview() -> str:
    """The top-level help's body: the commands grouped by who uses them."""
    width = max(len(c.name) for c in COMMANDS) + 2
    lines = []
    for group in GROUPS:
        lines += ["", f"commands {group}:"]
        lines += [f"  {c.name:<{width}}{c.purpose}" for c in COMMANDS if c.group == group]
    lines += ["", "Run `pathtrail COMMAND --help` for a command's options and an example."]
    return "\n".join(lines)


def describe(sub: argparse._SubParsersAction) -> None:
    """Give every subparser its purpose (description) and example (epilog)."""
    for name, parser in sub.choices.items():
        command = BY_NAME[name]
        parser.description = command.purpose
        parser.epilog = epilog(name)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def version_text() -> str:
    """`pathtrail X.Y.Z`, plus the git commit (and `modified`) when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = f"pathtrail {version('pathtrail')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        text = "pathtrail (version unknown: not installed)"
    checkout = _checkout_root()
    if checkout is None:
        return text
    from pathtrail.provenance.environment import git_state

    state = git_state(checkout)
    if state.commit is None:
        return text
    return f"{text} (git {state.commit[:12]}{', source modified' if state.dirty else ''}; {checkout})"


def _checkout_root() -> Path | None:
    """The repository this package's source lies in (src/pathtrail/ of a checkout), if any."""
    package = Path(__file__).resolve().parents[1]
    root = package.parent.parent
    if package.parent.name == "src" and (root / ".git").exists() and (root / "dvc.yaml").is_file():
        return root
    return None
