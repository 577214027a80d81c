"""Typed, strict loading of `params.yaml` sections into frozen dataclasses.

One dataclass per section (`pathtrail.config.sections`). An unknown or
missing key, or a value of the wrong type, raises `ParamsError` naming the dotted key, so a typo in
`-S train.lerning_rate=...` fails before any work is done.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pathtrail.core.errors import PathTrailError

T = TypeVar("T")


# Keys that moved to another section: an old params file or `-S` override gets the new name.
MOVED_KEYS = {f"data.{k}": f"runtime.{k}"
              for k in ("num_workers", "prefetch_factor", "persistent_workers", "pin_memory")}


# The params section of runtime knobs (`pathtrail.config.sections.RuntimeParams`): never a result.
RUNTIME_SECTION = "runtime"


def result_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` without the runtime knobs: what a card, a hash or a comparison of results covers."""
    return {k: v for k, v in params.items() if k != RUNTIME_SECTION}


class ParamsError(PathTrailError, ValueError):
    """A params value is missing, unknown or invalid; the message names the key and the fix."""


class ParamsFile(dict):
    """The params read from a file; `source` (the file's path) is what error messages name."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        super().__init__(data)
        self.source = source


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        what = "not a regular file" if path.exists() else "not found"
        raise ParamsError(
            f"{path}: {what}. Run from the repository root, or regenerate it with `make params`."
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ParamsError(f"{path}: not readable as UTF-8 YAML ({first}). Regenerate it with `make params`.") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return ParamsFile(data, str(path))


def load_section(path: str | Path, section: str, cls: type[T]) -> T:
    return parse_section(read_params(path), section, cls, source=str(path))


def parse_section(params: Mapping[str, Any], section: str, cls: type[T], source: str | None = None) -> T:
    """Section `section` of an already read params mapping as `cls` (strict, see `from_dict`).

    Error messages name `source`, else the file `params` was read from, else "params.yaml"."""
    source = source or getattr(params, "source", "params.yaml")
    if section not in params:
        raise ParamsError(f"{source}: missing section '{section}'. Regenerate params.yaml with `make params`.")
    return from_dict(cls, params[section], prefix=section)


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, strictly (recursing into nested dataclasses)."""
    if not isinstance(data, dict):
        raise ParamsError(f"'{prefix}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        keys = ", ".join(f"'{_join(prefix, k)}'" for k in unknown)
        moved = [f"'{_join(prefix, k)}' is now '{MOVED_KEYS[_join(prefix, k)]}'" for k in unknown
                 if _join(prefix, k) in MOVED_KEYS]
        hint = f" ({'; '.join(moved)}: a runtime knob that re-runs nothing)" if moved else ""
        raise ParamsError(f"unknown params key(s) {keys}{hint}; known keys: {', '.join(sorted(fields))}")
    values = {}
    for name, field in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if field.default is not dataclasses.MISSING:
                values[name] = field.default
                continue
            if field.default_factory is not dataclasses.MISSING:
                values[name] = field.default_factory()
                continue
            raise ParamsError(f"missing params key '{key}'")
        values[name] = _convert(hints[name], data[name], key)
    try:
        obj = cls(**values)
    except ParamsError:
        raise
    except (TypeError, ValueError) as exc:  # a dataclass's own __post_init__ checks
        raise ParamsError(f"invalid '{prefix}' params: {exc}") from None
    check = getattr(obj, "check", None)
    if callable(check):
        check()
    return obj


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key)
            except ParamsError as e:
                errors.append(str(e))
        raise ParamsError(errors[0] if errors else f"'{key}': invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ParamsError(f"'{key}' must be one of {allowed}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ParamsError(f"'{key}' must be a list, got {value!r}")
        item = args[0] if args else Any
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"'{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"'{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"'{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"'{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"'{key}' must be a string, got {value!r}")
        return value
    return value


def require(condition: bool, key: str, message: str) -> None:
    """Raise ParamsError for `key` unless `condition` holds (used by dataclass `check()` methods)."""
    if not condition:
        raise ParamsError(f"'{key}' {message}")
