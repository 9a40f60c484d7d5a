"""Settings files: one loader for the agent's and the manager's TOML files and environment.

A side's settings are one frozen dataclass whose fields carry their unit in a comment. A
`Schema` fills it from, later ones winning: the field defaults, `defaults` given by the caller,
a TOML file (the settings at its top level or in one table, `[agent]` or `[manager]`), the
environment (`PREFIX` + the field name in capitals), then explicit overrides (command-line
options). Every value is checked against the field's type and range, and the first bad one
is refused with a `ConfigError` naming the key and where it was given: nothing is half
applied. `describe` reads the same dataclass (and its comments) for docs/CONFIG.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from satchel.bundles.errors import ConfigError


def _toml() -> Any:
    """The TOML parser, imported when a file or value is parsed: compiling its patterns costs
    ~5 ms that every command would pay, while most run with no settings file (issue 14)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10 has no tomllib; tomli is the same parser
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib


T = TypeVar("T")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Bounds:
    """The range a number may take (`low`, `high` inclusive unless `*_open`), or the words
    a string may be. Numbers without declared bounds must be finite and >= 0."""

    low: float | None = 0
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()

    def refusal(self, value: Any) -> str | None:
        """Why `value` is out of range, or None when it fits."""
        if self.choices:
            return None if value in self.choices else f"must be {self.describe()}"
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        if not math.isfinite(value):
            return "must be a finite number"
        too_low = self.low is not None and (
            value <= self.low if self.low_open else value < self.low
        )
        too_high = self.high is not None and (
            value >= self.high if self.high_open else value > self.high
        )
        return f"must be {self.describe()}" if too_low or too_high else None

    def describe(self) -> str:
        """The range as a reader writes it: `>= 1`, `> 0 and <= 1`, `one of a, b`."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_figure(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_figure(self.high)}")
        return " and ".join(parts) or "any number"


def _figure(x: float) -> str:
    """A bound as a reader writes it: integers in full (5242880, not 5.24288e+06)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


AT_LEAST_ONE = Bounds(low=1)
POSITIVE = Bounds(low=0, low_open=True)
FRACTION = Bounds(low=0, high=1)

# A check across settings: the config -> (key, why) when it is refused, else None.
Relation = Callable[[Any], "tuple[str, str] | None"]


@dataclass(frozen=True)
class Schema(Generic[T]):
    """How one side's settings dataclass is read from a file and the environment."""

    cls: type[T]
    env_prefix: str  # SATCHEL_AGENT_, SATCHEL_
    table: str  # the TOML table that may hold the settings, else they sit at the top level
    bounds: Mapping[str, Bounds] = field(default_factory=dict)
    env_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # extra names
    relations: tuple[Relation, ...] = ()

    def env_names(self, name: str) -> tuple[str, ...]:
        """The environment variables that set field `name`, the canonical one first."""
        return (self.env_prefix + name.upper(), *self.env_aliases.get(name, ()))

    def types(self) -> dict[str, Any]:
        """Field name -> its type, resolved."""
        return typing.get_type_hints(self.cls)

    def load(
        self,
        config_file: Path | None = None,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        file_optional: bool = False,
        override_source: str = "option",
    ) -> T:
        """The settings from defaults, `config_file`, the environment and `overrides`.

        A missing `config_file` is refused unless `file_optional` (a default path). Overrides
        and defaults whose value is None are left out; an empty environment variable is unset.
        Raises ConfigError.
        """
        env = os.environ if environ is None else environ
        kinds = self.types()
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for name, value in (defaults or {}).items():
            if value is not None:
                values[name] = self._checked(kinds, name, value, f"default {name}")
        if config_file is not None:
            found = self._read_file(config_file, kinds, file_optional)
            values.update(found)
            origin.update({k: f"config file {config_file}: {k}" for k in found})
        for name in kinds:
            given = next((n for n in self.env_names(name) if env.get(n)), None)
            if given is not None:
                where = f"{given}={env[given][:60]!r}"
                value = _from_env(kinds[name], env[given], where)
                values[name] = self._checked(kinds, name, value, f"{given}: {name}")
                origin[name] = f"{given}: {name}"
        for name, value in (overrides or {}).items():
            if value is None:
                continue
            if name not in kinds:
                raise ConfigError(f"{override_source}: {_unknown(name, kinds)}")
            values[name] = self._checked(kinds, name, value, f"{override_source} {name}")
            origin[name] = f"{override_source} {name}"
        config = self.cls(**values)
        for relation in self.relations:
            refused = relation(config)
            if refused is not None:
                key, why = refused
                raise ConfigError(f"{origin.get(key, key)} {why}")
        return config

    def _read_file(self, path: Path, kinds: Mapping[str, Any], optional: bool) -> dict[str, Any]:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError as e:
            if optional:
                return {}
            raise ConfigError(f"config file {path} does not exist") from e
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
            raise ConfigError(f"cannot read config file {path}: {why}") from e
        toml = _toml()
        try:
            doc = toml.loads(text)
        except toml.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
        table = doc[self.table] if set(doc) == {self.table} else doc
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: {self.table} must be a table")
        found = {}
        for name, value in table.items():
            if name not in kinds:
                raise ConfigError(f"config file {path}: {_unknown(name, kinds)}")
            found[name] = self._checked(kinds, name, value, f"config file {path}: {name}")
        return found

    def _checked(self, kinds: Mapping[str, Any], name: str, value: Any, where: str) -> Any:
        """`value` coerced to field `name`'s type and checked against its range."""
        try:
            coerced = coerce(kinds[name], value)
        except _Mismatch as e:
            raise ConfigError(f"{where} {e}") from None
        refusal = _range_refusal(self.bounds.get(name), coerced)
        if refusal is not None:
            raise ConfigError(f"{where} = {toml_value(coerced)} is out of range: it {refusal}")
        return coerced


def _unknown(name: str, kinds: Mapping[str, Any]) -> str:
    import difflib  # only to suggest a name for an unknown key

    close = difflib.get_close_matches(name, list(kinds), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown setting {name!r}{hint}"


def _range_refusal(bounds: Bounds | None, value: Any) -> str | None:
    if value is None:
        return None
    return (bounds or Bounds()).refusal(value)


class _Mismatch(Exception):
    """A value of the wrong type; the message says what was expected."""


def _is_optional(kind: Any) -> tuple[bool, Any]:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(kind) if a is not type(None)]
        return len(rest) < len(typing.get_args(kind)), rest[0]
    return False, kind


def coerce(kind: Any, value: Any) -> Any:
    """`value` (as TOML gives it) as type `kind`: bool, int, float, str, Path, X | None,
    tuple[X, ...], dict[str, X] and nested dataclasses (tables). Raises _Mismatch."""
    optional, kind = _is_optional(kind)
    if value is None and optional:
        return None
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("must be true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch("must be a whole number")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch("must be a number")
    if kind is str or kind is Path:
        if isinstance(value, str | Path):
            return kind(value)
        raise _Mismatch("must be a string")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch(f"must be a list of {type_label(args[0], plural=True)}")
        items = []
        for i, item in enumerate(value):
            try:
                items.append(coerce(args[0], item))
            except _Mismatch as e:
                raise _Mismatch(f"[{i}] {e}") from None
        return tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch("must be a table")
        out = {}
        for key, item in value.items():
            try:
                out[str(key)] = coerce(args[1], item)
            except _Mismatch as e:
                raise _Mismatch(f".{key} {e}") from None
        return out
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return _table(kind, value)
    raise _Mismatch(f"has a type settings cannot hold ({kind})")


def _table(kind: type, value: Any) -> Any:
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        raise _Mismatch("must be a table")
    kinds = typing.get_type_hints(kind)
    for key in value:
        if key not in kinds:
            raise _Mismatch(f"has an {_unknown(key, kinds)}")
    for f in dataclasses.fields(kind):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in value:
            raise _Mismatch(f"needs {f.name!r}")
    out = {}
    for key, item in value.items():
        try:
            out[key] = coerce(kinds[key], item)
        except _Mismatch as e:
            raise _Mismatch(f".{key} {e}") from None
    return kind(**out)


def _from_env(kind: Any, text: str, where: str) -> Any:
    """An environment variable's text as a value of type `kind`: true/false/1/0 for flags,
    numbers as written, strings as they are, lists as TOML (`["a", "b"]`) or comma-separated
    words, tables as TOML inline tables. Raises ConfigError."""
    _, kind = _is_optional(kind)
    text = text.strip()
    try:
        if kind is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str or kind is Path:
            return text
        if typing.get_origin(kind) is tuple and not text.startswith("["):
            return [word.strip() for word in text.split(",") if word.strip()]
        return _toml().loads(f"value = {text}")["value"]
    except ValueError:  # TOMLDecodeError is one
        raise ConfigError(f"{where} is not a valid {type_label(kind)}") from None


_WORDS = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path"}


def type_label(kind: Any, plural: bool = False) -> str:
    """A reader's name for a settings type: integer, number, string, list of strings, ..."""
    optional, kind = _is_optional(kind)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    s = "s" if plural else ""
    if kind in _WORDS:
        label = _WORDS[kind] + s
    elif origin is tuple:
        label = f"list{s} of {type_label(args[0], plural=True)}"
    elif origin is dict:
        label = f"table{s} of {type_label(args[1], plural=True)}"
    elif dataclasses.is_dataclass(kind):
        label = f"table{s} {{" + ", ".join(f.name for f in dataclasses.fields(kind)) + "}"
    else:
        label = str(kind)
    return f"{label} (optional)" if optional else label


def toml_value(value: Any) -> str:
    """`value` written as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return toml_value(dataclasses.asdict(value))
    return repr(value)
