"""Hypothesis strategies shared by the fuzz tests: any JSON value, and random edits of a
genuine document."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def fuzz_settings(examples: int) -> settings:
    """Reproducible runs of `examples` inputs, no deadline (2 shared cores)."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


INT64 = (-(2**63), 2**63 - 1)  # what a database integer column holds
# Values at the edges of what readers accept: limits, long strings, odd but valid times.
EDGES = [0, -1, 1, INT64[0], INT64[1], 2**31, -(2**31) - 1, 1e308, -0.0, 0.1, True, False,
         "", " ", "x" * 5000, "é\u0000\ufffd", "../../etc/passwd", "2026-03-02T12:00:00Z",
         "2026-03-02T12:00:00+14:00", "1970-01-01T00:00:00Z", "2026-03-02", "-1", "null",
         [], {}, None]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(*INT64) | st.sampled_from(EDGES)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=24),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)


@st.composite
def mutated(draw: st.DrawFn, doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with one to three random edits anywhere in its tree: a value replaced by any
    JSON value, a key removed, or a key added."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        places = _places(doc)
        if not places:
            break
        parent, key = draw(st.sampled_from(places))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[key] = draw(json_values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(json_values)
    return doc


def _places(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in `doc`, depth first."""
    found: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            found.append((node, key))
            if isinstance(value, (dict, list)) and value:
                walk(value)

    walk(doc)
    return found
