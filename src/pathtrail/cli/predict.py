"""`pathtrail predict` and `pathtrail drift`: score new data with the model a card describes.

    pathtrail predict --card model_cards/NAME.json (--manifest M.csv --data-root D | --slides S.csv)
                      --out preds.csv [--require-release] [--root .] [--workers N]
    pathtrail drift   --card model_cards/NAME.json --manifest M.csv --data-root D --out drift.json

The card's execution contract (params section `execution`) is set in the environment before numpy
or torch loads (`apply_card_contract`, called by `pathtrail.cli.main` first thing), as
`stages/__init__.py` does for the stages, so the scores are the evaluate stage's bits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pathtrail.core.execution import environment_for
from pathtrail.core.text import printable

COMMAND_NAMES = ("predict", "drift")
MAX_CARD_BYTES = 64 << 20


def apply_card_contract(argv: list[str]) -> dict[str, str]:
    """Set the execution contract of the card named by `--card` in os.environ, when numpy and torch
    are not loaded yet; an unreadable card sets the defaults (the command then reports it)."""
    if "numpy" in sys.modules or "torch" in sys.modules:
        return {}
    section = None
    card = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--card"), None) or next(
        (a.split("=", 1)[1] for a in argv if a.startswith("--card=")), None)
    try:
        if card and Path(card).is_file() and Path(card).stat().st_size <= MAX_CARD_BYTES:
            section = (json.loads(Path(card).read_text(encoding="utf-8")).get("params") or {}).get("execution")
    except (OSError, ValueError, AttributeError):
        section = None
    env = environment_for(section if isinstance(section, dict) else None)
    if "NPY_DISABLE_CPU_FEATURES" in env:
        os.environ.pop("NPY_ENABLE_CPU_FEATURES", None)
    os.environ.update(env)
    return env


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--card", required=True, help="the model card JSON (model_cards/NAME.json)")
    p.add_argument("--manifest", metavar="CSV", help="the patches to score (path, label, patient_id, slide_id, site)")
    p.add_argument("--data-root", metavar="DIR", help="the folder the manifest's paths start from")
    p.add_argument("--slides", metavar="CSV", help="a slide table to tile and score (not available in this build)")
    p.add_argument("--root", default=".", help="the repository holding the card's files (default: here)")
    p.add_argument("--model", help="the weights (default: the card's, in --root); must have the card's sha256")
    p.add_argument("--stain-reference", help="the stain reference (default: the card's); must have the card's sha256")
    p.add_argument("--reference-scores", metavar="CSV",
                   help="internal test predictions to compare the scores with (default: the card's, "
                        "predictions/internal_test.csv, checked against the audit trail)")
    p.add_argument("--params", metavar="FILE",
                   help="where to take the drift limits from when the card has no `drift` section "
                        "(default: params.yaml)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="threads that decode and normalize patches (0: this one); no result changes")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score new patches with a card's model")
    _common(p)
    p.add_argument("--out", required=True, metavar="CSV",
                   help="per-patch probabilities; siblings OUT.decisions.csv, .slides.csv, .patients.csv, "
                        ".json (sidecar, with the drift report) and .drift.png")
    p.add_argument("--require-release", action="store_true",
                   help="refuse unless the card is RELEASED: `pathtrail verify --release` passes on --root")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="with --require-release: trust exactly this public key file (repeatable)")
    d = sub.add_parser("drift", help="compare a new cohort with the card's training reference and test set")
    _common(d)
    d.add_argument("--out", required=True, metavar="JSON", help="the drift report (the figure goes beside it, .png)")
    d.add_argument("--fail-on-drift", action="store_true", help="exit with status 3 when the verdict is DRIFT")


def _request(args: argparse.Namespace):
    from pathtrail.inference.predict import Request

    if args.workers < 0 or args.workers > 64:
        from pathtrail.core.errors import PathTrailError

        raise PathTrailError(f"--workers must be between 0 and 64, got {args.workers}")
    return Request(card=args.card, out=args.out, manifest=args.manifest, data_root=args.data_root,
                   slides=args.slides, root=args.root, model=args.model, stain_reference=args.stain_reference,
                   reference_scores=args.reference_scores, params=args.params,
                   require_release=getattr(args, "require_release", False),
                   trusted_keys=getattr(args, "trusted_key", []), workers=args.workers)


def _checks_line(report: dict) -> str:
    return ", ".join(f"{c['name']} {c['value']:.3g} > {c['limit']:g}" if c["value"] is not None
                     else f"{c['name']} ({c['note']})" for c in report["checks"] if c["drift"])


def predict_command(args: argparse.Namespace) -> int:
    from pathtrail.inference.predict import predict

    side = predict(_request(args))
    drift = side["drift"]
    inp = side["input"]
    print(printable(f"scored {inp['patches']} patches ({inp['slides']} slides, {inp['patients']} patients) "
                    f"with {side['card']['name']} (model {side['model']['sha256'][:12]}, card commit "
                    f"{str(side['card']['git_commit'])[:12]}, status {side['card']['release_status']})"))
    for level, counts in side["decisions"].items():
        print(printable(f"  {level} decisions: " + ", ".join(f"{c} {n}" for c, n in counts.items())))
    print(printable(f"  drift: {drift['verdict']}" + (f" ({_checks_line(drift)})" if drift["drifted"] else "")))
    others = sorted(n for n in side["outputs"] if n != Path(args.out).name)
    print(printable(f"wrote {args.out} and beside it {', '.join(others)}, {Path(args.out).with_suffix('.json').name}"))
    if not side["execution"]["honoured"]:
        print(printable("note: the card's execution contract was not honoured ("
                        + "; ".join(side["execution"]["problems"]) + "): the scores may differ from the "
                        "evaluate stage's in the last digits"), file=sys.stderr)
    if side["card"]["release_status"] != "RELEASE CANDIDATE":
        print(printable(f"note: the card's status is {side['card']['release_status']}: not a release"),
              file=sys.stderr)
    return 0


def drift_command(args: argparse.Namespace) -> int:
    from pathtrail.inference.predict import drift

    report = drift(_request(args))["drift"]
    print(printable(f"drift: {report['verdict']}" + (f" ({_checks_line(report)})" if report["drifted"] else "")))
    for c in report["checks"]:
        value = "n/a" if c["value"] is None else f"{c['value']:.4g}"
        print(printable(f"  {c['name']:<24} {value:>10}  limit {c['limit']:g}  {'DRIFT' if c['drift'] else 'ok'}"
                        + (f"  ({c['note']})" if c["note"] and c["value"] is None else "")))
    print(printable(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}"))
    return 3 if args.fail_on_drift and report["verdict"] == "DRIFT" else 0
