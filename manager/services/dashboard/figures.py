"""Event figures (a smoke test's measurements, a build's agreement) as (label, value) text
pairs the dashboard can list."""

from __future__ import annotations

from typing import Any

MAX_FIGURES = 40  # figures of one event shown, at most


def flatten_figures(figures: Any) -> list[tuple[str, str]]:
    """Nested figures (dicts, lists of per-model dicts) as (label, value) pairs, labels
    joined from the keys, numbers to 4 significant digits; at most MAX_FIGURES pairs.

    Where an event carries headline figures beside the full per-test report (`tests`, as the
    agent's smoke_test events do), only the headline is shown: it already holds the worst
    value of every figure, and the full report stays in the stored event."""
    out: list[tuple[str, str]] = []
    if isinstance(figures, dict) and "tests" in figures and len(figures) > 1:
        figures = {k: v for k, v in figures.items() if k != "tests"}

    def walk(value: Any, label: str) -> None:
        if len(out) >= MAX_FIGURES:
            return
        if isinstance(value, dict):
            model = value.get("model") if isinstance(value.get("model"), str) else None
            head = f"{label} {model}".strip() if model else label
            for k, v in value.items():
                if not (k == "model" and model):
                    walk(v, f"{head} {str(k).replace('_', ' ')}".strip())
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for v in value:
                walk(v, label)
        elif isinstance(value, bool):
            out.append((label, "yes" if value else "no"))
        elif value is None:
            out.append((label, "-"))
        elif isinstance(value, (int, float)):
            out.append((label, f"{value:.4g}"))
        elif isinstance(value, list):
            out.append((label, ", ".join(str(v) for v in value)[:200]))
        else:
            out.append((label, str(value)[:200]))

    if isinstance(figures, dict):
        walk(figures, "")
    return out[:MAX_FIGURES]
