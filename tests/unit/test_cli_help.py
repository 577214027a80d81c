"""`pathtrail --help`, `--version` and every command's `--help`, through the installed console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pathtrail
from pathtrail.cli.commands import COMMANDS, GROUPS
from pathtrail.cli.main import build_parser

ROOT = Path(pathtrail.__file__).resolve().parents[2]


def _pathtrail() -> list[str]:
    script = Path(sys.executable).with_name("pathtrail")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pathtrail.cli"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_pathtrail(), *args], check=False, capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_every_parser_command_has_a_purpose_group_and_example():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(c.name for c in COMMANDS)
    assert {c.group for c in COMMANDS} == set(GROUPS)


def test_top_level_help_lists_every_command_under_its_group():
    done = _run("--help")
    assert done.returncode == 0 and "Traceback" not in done.stderr
    out = done.stdout
    for c in COMMANDS:
        header = out.index(f"commands {c.group}:")
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == [c.name])
        assert c.purpose in line and out.index(line) > header
        later = [out.index(f"commands {g}:") for g in GROUPS if out.index(f"commands {g}:") > header]
        assert all(out.index(line) < h for h in later)


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_each_command_help_has_its_purpose_and_an_example(name):
    done = _run(name, "--help")
    command = next(c for c in COMMANDS if c.name == name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: pathtrail {name} ")
    assert command.example in done.stdout and "example:" in done.stdout
    if name != "validate":  # validate's description is its module docstring's synopsis
        assert command.purpose in done.stdout
    assert done.stdout.endswith("\n")


def test_no_command_prints_the_overview_and_fails(tmp_path):
    done = _run(cwd=tmp_path)
    assert done.returncode == 2 and "commands for reviewers" in done.stderr


def test_version_names_the_package_and_the_checkout_commit():
    done = _run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"pathtrail {pathtrail.__version__}")
    if (ROOT / ".git").exists() and shutil.which("git"):
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        assert f"(git {head[:12]}" in done.stdout
