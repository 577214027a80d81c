"""Release criteria: a tiny, closed grammar for pre-specified acceptance conditions.

A criterion is one line, `KEY OP VALUE` or `KEY in [LOW, HIGH]`:

    external.auroc_ci_low >= 0.80
    internal_test.n_patients >= 30
    external.calibration_slope in [0.7, 1.3]
    compile_check.gate_ok == true

KEY is a dotted name of a release fact (see `pathtrail.card.release.release_facts`), OP one of
`>= <= > < == !=`, VALUE a number or `true`/`false`. Nothing is evaluated as code: the text is
parsed by the regular expressions below and compared with plain Python operators.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_KEY = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*"
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COMPARE = re.compile(rf"^\s*({_KEY})\s*(>=|<=|==|!=|>|<)\s*({_NUM}|true|false)\s*$")
_RANGE = re.compile(rf"^\s*({_KEY})\s+in\s+\[\s*({_NUM})\s*,\s*({_NUM})\s*\]\s*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
}


class CriterionError(ValueError):
    """A criterion that does not follow the grammar (the message says how to write it)."""


@dataclass(frozen=True)
class Criterion:
    name: str
    text: str
    key: str
    op: str  # one of OPS, or "in"
    value: float | bool | None = None
    low: float | None = None
    high: float | None = None

    def threshold(self) -> str:
        if self.op == "in":
            return f"in [{self.low:g}, {self.high:g}]"
        shown = str(self.value).lower() if isinstance(self.value, bool) else f"{self.value:g}"
        return f"{self.op} {shown}"


def parse(name: str, text: Any) -> Criterion:
    """One criterion from its params name and text; CriterionError says what is wrong and how to fix it."""
    where = f"release.criteria.{name}"
    if not _NAME.match(str(name)):
        raise CriterionError(f"'{where}': criterion names are lower-case words joined by '_' (e.g. external_auroc)")
    if not isinstance(text, str):
        raise CriterionError(f"'{where}' must be a string such as 'external.auroc_ci_low >= 0.8', got {text!r}")
    if m := _COMPARE.match(text):
        key, op, raw = m.groups()
        value: float | bool = raw == "true" if raw in ("true", "false") else float(raw)
        if isinstance(value, bool) and op not in ("==", "!="):
            raise CriterionError(f"'{where}': true/false can only be compared with == or !=, got {text!r}")
        return Criterion(name, text.strip(), key, op, value=value)
    if m := _RANGE.match(text):
        key, low, high = m.group(1), float(m.group(2)), float(m.group(3))
        if low > high:
            raise CriterionError(f"'{where}': the range [{low:g}, {high:g}] is empty; write [LOW, HIGH]")
        return Criterion(name, text.strip(), key, "in", low=low, high=high)
    raise CriterionError(
        f"'{where}' = {text!r} is not a criterion. Write 'KEY OP VALUE' (OP one of >= <= > < == !=, "
        "VALUE a number or true/false) or 'KEY in [LOW, HIGH]', e.g. 'external.auroc_ci_low >= 0.8'"
    )


def parse_all(criteria: Mapping[str, Any]) -> list[Criterion]:
    """Every criterion, sorted by name; all grammar errors are reported together."""
    out, errors = [], []
    for name in sorted(criteria, key=str):
        try:
            out.append(parse(str(name), criteria[name]))
        except CriterionError as exc:
            errors.append(str(exc))
    if errors:
        raise CriterionError("; ".join(errors))
    return out


def check(c: Criterion, facts: Mapping[str, Any]) -> dict[str, Any]:
    """The criterion's verdict against the facts: value, threshold, passed, and by how much."""
    value = facts.get(c.key)
    result: dict[str, Any] = {"criterion": c.text, "key": c.key, "threshold": c.threshold(), "value": value}
    if c.key not in facts or value is None or (isinstance(value, float) and math.isnan(value)):
        why = "no such value was recorded" if c.key not in facts else "the value is undefined"
        return result | {"passed": False, "margin": None, "why": f"{c.key}: {why}"}
    if isinstance(c.value, bool) or isinstance(value, bool):
        if not isinstance(value, bool) or not isinstance(c.value, bool):
            return result | {"passed": False, "margin": None,
                             "why": f"{c.key} is {value!r}; a true/false criterion needs a true/false value"}
        passed = OPS[c.op](value, c.value)
        return result | {"passed": passed, "margin": None, "why": "" if passed else f"{c.key} is {str(value).lower()}"}
    if not isinstance(value, int | float):
        return result | {"passed": False, "margin": None, "why": f"{c.key} is {value!r}, not a number"}
    x = float(value)
    if c.op == "in":
        assert c.low is not None and c.high is not None
        passed = c.low <= x <= c.high
        margin = min(x - c.low, c.high - x)
    else:
        assert isinstance(c.value, float)
        passed = OPS[c.op](x, c.value)
        margin = x - c.value if c.op in (">=", ">") else c.value - x if c.op in ("<=", "<") else None
    off = f" (off by {abs(margin):.6g})" if margin is not None else ""
    why = "" if passed else f"{c.key} = {x:.6g}, required {c.threshold()}{off}"
    return result | {"passed": passed, "margin": margin, "why": why}
