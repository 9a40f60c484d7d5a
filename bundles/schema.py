"""Small strict readers for JSON objects: required and optional fields with types.

Each raises a ManifestError subclass with a one-line message naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from typing import Any

from satchel.bundles.errors import MissingFieldError, UnexpectedFieldError, WrongTypeError

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "an object",
}


def check_keys(
    d: Any, where: str, required: set[str], optional: AbstractSet[str] = frozenset()
) -> dict:
    """Check `d` is an object with all `required` keys and nothing outside required|optional."""
    if not isinstance(d, dict):
        raise WrongTypeError(f"{where} must be an object")
    for name in sorted(required):
        if name not in d:
            raise MissingFieldError(f"{where} has no '{name}' field")
    extra = sorted(set(d) - required - set(optional))
    if extra:
        raise UnexpectedFieldError(f"{where} has an unexpected field {extra[0][:60]!r}")
    return d


def get(d: dict, name: str, kind: type, where: str, *, nullable: bool = False) -> Any:
    """Return d[name] checked to be `kind` (float accepts int); None allowed if nullable."""
    value = d.get(name)
    if value is None and nullable:
        return None
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
        value = float(value)
    if not ok:
        raise WrongTypeError(f"{where}: '{name}' must be {_TYPE_NAMES.get(kind, kind.__name__)}")
    return value


def get_str(
    d: dict,
    name: str,
    where: str,
    pattern: re.Pattern[str] | None = None,
    *,
    nullable: bool = False,
) -> Any:
    value = get(d, name, str, where, nullable=nullable)
    if value is not None and pattern is not None and not pattern.fullmatch(value):
        raise WrongTypeError(f"{where}: '{name}' has an invalid value {value[:60]!r}")
    return value


def get_int(
    d: dict, name: str, where: str, lo: int = 0, hi: int = 2**63 - 1, *, nullable: bool = False
) -> Any:
    value = get(d, name, int, where, nullable=nullable)
    if value is not None and not lo <= value <= hi:
        raise WrongTypeError(f"{where}: '{name}' must be between {lo} and {hi}")
    return value


def get_float(
    d: dict,
    name: str,
    where: str,
    lo: float = 0.0,
    hi: float = float("inf"),
    *,
    nullable: bool = False,
) -> Any:
    value = get(d, name, float, where, nullable=nullable)
    if value is not None and not lo <= value <= hi:
        raise WrongTypeError(f"{where}: '{name}' must be between {lo:g} and {hi:g}")
    return value


def get_str_list(
    d: dict, name: str, where: str, pattern: re.Pattern[str], *, unique: bool = True
) -> list[str]:
    """Return d[name], a list of strings each matching `pattern` (repeats refused if
    `unique`)."""
    value = get(d, name, list, where)
    for item in value:
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise WrongTypeError(f"{where}: '{name}' has an invalid entry {str(item)[:60]!r}")
    if unique and len(set(value)) != len(value):
        raise WrongTypeError(f"{where}: '{name}' repeats an entry")
    return list(value)
