"""Label matchers, as in Prometheus and Alertmanager: `name op value` with op one of
`=`, `!=`, `=~`, `!~`. Regexes are anchored (fully matched), a missing label is the empty string.

Rule selectors, silences, mute windows, routes and endpoint filters all use them; their JSON
form is `{"label": "cluster", "op": "=~", "value": "eu-.*"}`. No Django here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

OPERATORS = ("=", "!=", "=~", "!~")
LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class MatcherError(ValueError):
    """A matcher list that cannot be used; `details` has one entry per problem."""

    def __init__(self, details: list[dict[str, Any]]):
        super().__init__("; ".join(d["message"] for d in details))
        self.details = details


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str
    pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.pattern is not None
        found = self.pattern.fullmatch(actual) is not None
        return found if self.op == "=~" else not found

    def to_json(self) -> dict[str, str]:
        return {"label": self.label, "op": self.op, "value": self.value}


def matchers_parse(raw: Any, field_name: str = "matchers") -> tuple[Matcher, ...]:
    """Parse the JSON form; raises MatcherError listing every bad matcher."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise MatcherError([{"field": field_name, "code": "invalid", "message": "Expected a list of matchers."}])
    parsed, errors = [], []
    for index, item in enumerate(raw):
        where = f"{field_name}[{index}]"
        if not isinstance(item, dict) or set(item) - {"label", "op", "value"}:
            errors.append({"field": where, "code": "invalid", "message": "Expected {label, op, value}."})
            continue
        label, op, value = item.get("label"), item.get("op", "="), item.get("value")
        if not isinstance(label, str) or not LABEL_NAME.match(label):
            errors.append({"field": f"{where}.label", "code": "invalid", "message": f"Bad label name {label!r}."})
            continue
        if op not in OPERATORS:
            errors.append({"field": f"{where}.op", "code": "invalid", "message": f"op must be one of {OPERATORS}."})
            continue
        if not isinstance(value, str):
            errors.append({"field": f"{where}.value", "code": "invalid", "message": "value must be a string."})
            continue
        pattern = None
        if op in ("=~", "!~"):
            try:
                pattern = re.compile(value)
            except re.error as exc:
                errors.append({"field": f"{where}.value", "code": "invalid_regex", "message": f"Bad regex: {exc}."})
                continue
        parsed.append(Matcher(label, op, value, pattern))
    if errors:
        raise MatcherError(errors)
    return tuple(parsed)


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """True when every matcher matches (an empty list matches everything)."""
    return all(m.matches(labels) for m in matchers)
