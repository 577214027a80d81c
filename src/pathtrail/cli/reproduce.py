"""`pathtrail reproduce`: re-run a model card's commit in a temporary worktree and compare.

Exit 0 only when every artifact the card names is identical; 1 when one differs, is missing or
cannot be checked, or when the run could not be made (the message says what, where and the fix).
The report goes to stdout at the end; progress (each stage as it starts) to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pathtrail.core.errors import PathTrailError


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "reproduce",
        help="re-run a card's commit in a temporary git worktree; exit 0 only when every artifact "
             "the card names comes out identical",
    )
    r.add_argument("--card", default=None,
                   help="the card JSON (default: the only model_cards/*.json)")
    r.add_argument("--root", default=".", help="repository root (default: the current folder)")
    r.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="data-loader workers for the run (a runtime knob: results do not depend on it)")
    r.add_argument("--keep", action="store_true",
                   help="keep the temporary worktree (and its DVC cache) for inspection")


def reproduce_command(args: argparse.Namespace) -> int:
    from pathtrail.review.reproduce import format_report, reproduce

    root = Path(args.root)
    if not root.is_dir():
        raise PathTrailError(f"--root {args.root}: no such folder")
    if args.jobs is not None and args.jobs < 0:
        raise PathTrailError(f"--jobs {args.jobs}: must be 0 (load in the main process) or more")

    def progress(stage: str) -> None:
        print(f"reproduce: running stage {stage}", file=sys.stderr, flush=True)

    report = reproduce(root, args.card, jobs=args.jobs, keep=args.keep, on_stage=progress)
    sys.stdout.write(format_report(report))
    return 0 if report.ok else 1
