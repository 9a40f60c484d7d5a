"""The settings reference: a `Schema`'s dataclass, read with its comments, as Markdown.

docs/CONFIG.md is this module's output for the agent's and the manager's settings
(`tests/config_reference.py` writes it; a test fails when the committed file differs), so the
reference says what the code reads: name, type, default, range, environment variable, and
the unit and meaning from the comment the field is declared with.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
from dataclasses import dataclass
from typing import Any

from satchel.bundles.configfile import Bounds, Schema, toml_value, type_label


@dataclass(frozen=True)
class SettingDoc:
    name: str  # the TOML key
    type: str
    default: str  # as TOML writes it, or "(none)"
    comment: str  # the unit and meaning, from the field's comment
    env: tuple[str, ...]
    allowed: str  # the range or the choices
    section: str  # the `# --- title ---` comment heading the group of fields


def describe(schema: Schema[Any]) -> list[SettingDoc]:
    """Every setting of `schema`, in declaration order, with the comment it is declared with."""
    kinds = schema.types()
    comments, sections = field_comments(schema.cls)
    docs = []
    for f in dataclasses.fields(schema.cls):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        bounds = schema.bounds.get(f.name)
        numeric = type_label(kinds[f.name]).split()[0] in ("integer", "number")
        docs.append(SettingDoc(
            name=f.name,
            type=type_label(kinds[f.name]),
            default="(none)" if default is None else toml_value(default),
            comment=comments.get(f.name, ""),
            env=schema.env_names(f.name),
            allowed=(bounds or Bounds()).describe() if bounds or numeric else "",
            section=sections.get(f.name, ""),
        ))
    return docs


def field_comments(cls: type) -> tuple[dict[str, str], dict[str, str]]:
    """Field name -> its comment (the one on its line and the comment lines right after it),
    and field name -> the section it sits in (a `# --- title ---` line above it)."""
    source = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    rows: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            rows[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    comments: dict[str, str] = {}
    sections: dict[str, str] = {}
    section = ""
    previous_end = body.lineno
    for node in body.body:
        for row in range(previous_end + 1, node.lineno):
            if rows.get(row, "").startswith("---"):
                section = rows[row].strip("- ")
        end = node.end_lineno or node.lineno
        previous_end = end
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        parts = [rows[r] for r in range(node.lineno, end + 1) if r in rows]
        row = end + 1
        while (row in rows and lines[row - 1].lstrip().startswith("#")
               and not rows[row].startswith("---")):
            parts.append(rows[row])
            row += 1
        comments[node.target.id] = " ".join(parts)
        sections[node.target.id] = section
    return comments, sections


def render_markdown(title: str, intro: str, schema: Schema[Any], example: str) -> str:
    """One part of docs/CONFIG.md: the settings tables of `schema` and an example file."""
    out = [f"## {title}", "", intro.strip(), ""]
    current: str | None = None
    for doc in describe(schema):
        if doc.section != current:
            current = doc.section
            if current:
                out += ["", f"### {current[0].upper()}{current[1:]}", ""]
            out += ["| key | type | default | allowed | environment | meaning |",
                    "|---|---|---|---|---|---|"]
        env = "<br>".join(f"`{e}`" for e in doc.env)
        out.append(f"| `{doc.name}` | {doc.type} | `{doc.default}` | {doc.allowed} | {env} "
                   f"| {_cell(doc.comment)} |")
    out += ["", f"Example `{schema.table}.toml`:", "", "```toml", example.strip(), "```", ""]
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
