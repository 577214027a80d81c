"""The `pathtrail` command (its commands, grouped by who uses them, are in `pathtrail.cli.commands`).

`main(argv)` returns the exit status (the console script calls `sys.exit(main())`). User errors are
one clear message on stderr and a non-zero status, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pathtrail.core.errors import PathTrailError
from pathtrail.core.text import printable

USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    from pathtrail.cli.commands import describe, overview

    parser = argparse.ArgumentParser(
        prog="pathtrail", usage="pathtrail [-h] [--version] COMMAND [options]",
        description="PathTrail: audit-grade training pipeline tools.\n" + overview(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="the package version and, from a checkout, its git commit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, prog="pathtrail",
                                help=argparse.SUPPRESS)
    sub.add_parser("validate", add_help=False)
    v = sub.add_parser("verify")
    v.add_argument("--root", default=".", help="repository root (default: the current folder)")
    v.add_argument("--release", action="store_true",
                   help="also require a valid signature by a trusted key on every card (implies --rehash)")
    v.add_argument("--rehash", action="store_true",
                   help="read every byte again, ignoring the shared sha256 cache (.dvc/tmp/pathtrail)")
    v.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="trust exactly this public key file (repeatable); keys/trusted/ in the "
                        "repository is then ignored")
    t = sub.add_parser("trail")
    t.add_argument(
        "--path", default="audit/trail.jsonl", help="trail file (default: audit/trail.jsonl)"
    )
    t.add_argument("--stage", default=None, help="only this stage's entries")
    t.add_argument("--json", action="store_true", help="raw entries as JSON lines")
    from pathtrail.cli import predict, profile
    from pathtrail.cli.reproduce import add_parser
    from pathtrail.cli.sign import add_parsers

    add_parser(sub)
    add_parsers(sub)
    predict.add_parsers(sub)
    profile.add_parser(sub)
    describe(sub)
    return parser


class _Version(argparse.Action):
    """`--version`: looks up the git commit only when asked (it costs a git call)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from pathtrail.cli.commands import version_text

        sys.stdout.write(version_text() + "\n")
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args_list:  # a newcomer typing `pathtrail`: the command list, not just an error
            build_parser().print_help(sys.stderr)
            return USAGE_ERROR
        if args_list[:1] == ["validate"]:
            return _validate(args_list[1:])
        if args_list[0] == "profile" and "torch" not in sys.modules:  # the train stage's execution contract
            from pathtrail.core.execution import apply_before_libraries

            apply_before_libraries(args_list[1:])
        if args_list[0] in ("predict", "drift"):  # before anything loads numpy or torch
            from pathtrail.cli.predict import apply_card_contract

            apply_card_contract(args_list[1:])
        try:
            args = build_parser().parse_args(args_list)
        except SystemExit as exc:  # argparse has printed usage or help
            return exc.code if isinstance(exc.code, int) else USAGE_ERROR
        _quiet_logging()
        from pathtrail.cli.predict import drift_command, predict_command
        from pathtrail.cli.profile import profile_command
        from pathtrail.cli.reproduce import reproduce_command
        from pathtrail.cli.sign import keygen_command, sign_command

        command: Callable[[argparse.Namespace], int] = {
            "verify": _verify, "trail": _trail, "keygen": keygen_command, "sign": sign_command,
            "reproduce": reproduce_command, "predict": predict_command, "drift": drift_command,
            "profile": profile_command,
        }[args.command]
        return command(args)
    except PathTrailError as exc:
        print(f"pathtrail: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pathtrail trail | head`: the reader left; stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _quiet_logging() -> None:
    """Library events go to stderr, warnings only: stdout is the report."""
    from pathtrail.core.logs import configure

    configure(None)
    logging.getLogger().setLevel(logging.WARNING)


def _validate(rest: list[str]) -> int:
    from pathtrail.cli.validate import validate_command

    return int(validate_command(rest) or 0)


def _verify(args: argparse.Namespace) -> int:
    from pathtrail.review.verify import format_report, verify

    root = Path(args.root)
    if not root.is_dir():
        raise PathTrailError(f"--root {args.root}: no such folder")
    if not (root / "dvc.yaml").is_file() and not (root / "audit").is_dir():
        raise PathTrailError(f"{root.resolve()} has no dvc.yaml and no audit/: run `pathtrail verify` from the "
                             "repository root, or pass --root")
    for key in args.trusted_key:
        if not Path(key).is_file():
            raise PathTrailError(f"--trusted-key {key}: no such file")
    report = verify(root, release=args.release, trusted_keys=args.trusted_key, rehash=args.rehash)
    sys.stdout.write(format_report(report))
    return 0 if report.ok else 1


def _trail(args: argparse.Namespace) -> int:
    from pathtrail.provenance.audit import chain_report, read_entries
    from pathtrail.review.timeline import format_json, format_timeline

    path = Path(args.path)
    if not path.is_file():
        raise PathTrailError(
            f"{args.path}: no audit trail here (run from the repository root, or pass --path)"
        )
    entries = read_entries(path)
    problems, notes = chain_report(entries)
    if args.json:
        sys.stdout.write(format_json(entries, args.stage))
        for p in problems:
            print(printable(f"CHAIN BROKEN: {p}"), file=sys.stderr)
    else:
        sys.stdout.write(format_timeline(entries, problems, args.stage))
        for n in notes:
            print(printable(f"repaired: {n}"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
