"""Event figures (a smoke test's measurements, a build's agreement) as (label, value) text
pairs the dashboard can list, in words and units a reader knows: "Top-1 agreement 100%",
"SQNR (worst output) 38.2 dB", "p95 latency 3.1 ms", never the raw keys."""

from __future__ import annotations

import math
from typing import Any

MAX_FIGURES = 40  # figures of one event shown, at most
PERCENT, MS, DB, MIB, COUNT, PLAIN = "%", "ms", "dB", "MiB", "count", ""

# what each figure key of the agent's and the build's reports means (agent/sync/
# install_events.py `smoke_figures`, bundles/smoke.py `Agreement`), and its unit
KNOWN: dict[str, tuple[str, str]] = {
    "passed": ("Passed", PLAIN),
    "samples": ("Samples compared", COUNT),
    "feeds": ("Sample feeds", COUNT),
    "values": ("Values compared", COUNT),
    "max_abs_error": ("Max abs error", PLAIN),
    "max_rel_error": ("Max error (of the output's range)", PERCENT),
    "rel_error": ("Error (of the output's range)", PERCENT),
    "worst_rel_error": ("Worst error (of the output's range)", PERCENT),
    "range": ("Reference range", PLAIN),
    "min_sqnr_db": ("SQNR (worst output)", DB),
    "sqnr_db": ("SQNR", DB),
    "cosine": ("Cosine similarity", PLAIN),
    "min_cosine": ("Cosine similarity (min)", PLAIN),
    "mean_cosine": ("Cosine similarity (mean)", PLAIN),
    "top1_agreement": ("Top-1 agreement", PERCENT),
    "top5_agreement": ("Top-5 agreement", PERCENT),
    "min_top1_agreement": ("Min top-1 agreement", PERCENT),
    "nonfinite": ("NaN/Inf outputs", COUNT),
    "nan": ("NaN/Inf outputs", COUNT),
    "p50_ms": ("p50 latency", MS),
    "p95_ms": ("p95 latency", MS),
    "p99_ms": ("p99 latency", MS),
    "budget_p95": ("p95 latency budget", MS),
    "load_ms": ("Load time", MS),
    "peak_memory_mb": ("Peak memory", MIB),
    "peak_growth": ("Peak memory growth", MIB),
    "max_memory_mb": ("Memory budget", MIB),
    "warmup_runs": ("Warm-up runs", COUNT),
    "runs": ("Timed runs", COUNT),
    "latency_runs": ("Timed runs", COUNT),
    "kind": ("Output kind", PLAIN),
    "to_version": ("Rolled back to", PLAIN),
    "to_sequence": ("Rolled back to sequence", COUNT),
    "count": ("Inferences", COUNT),
    "errors": ("Errors", COUNT),
}
_SUFFIX_UNITS = (
    ("_ms", MS),
    ("_db", DB),
    ("_mb", MIB),
    ("_agreement", PERCENT),
    ("_rate", PERCENT),
    ("_ratio", PERCENT),
)


def _words(key: str) -> str:
    text = key.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def figure_label(key: str, parent: str = "") -> tuple[str, str]:
    """(label, unit) of figure `key`, found under `parent` (e.g. `p95` under `latency_ms`)."""
    if key in KNOWN:
        return KNOWN[key]
    if parent.endswith("_ms"):
        return f"{key} {parent[:-3].replace('_', ' ')}", MS
    for suffix, unit in _SUFFIX_UNITS:
        if key.endswith(suffix):
            base = key[: -len(suffix)] if unit != PERCENT else key
            return _words(base), unit
    return _words(key), PLAIN


def format_figure(value: Any, unit: str) -> str:
    """A figure's value in its unit: 1.0 as a percentage is "100%", 38.17 dB "38.2 dB"."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if not isinstance(value, (int, float)):
        return str(value)[:200]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if unit == PERCENT:
        pct = value * 100
        return f"{pct:.0f}%" if pct == round(pct) else f"{pct:.4g}%"
    if unit == DB:
        return f"{value:.1f} dB"
    if unit == MS:
        return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"
    if unit == MIB:
        return f"{value:.1f} MiB"
    if unit == COUNT:
        return f"{value:,.0f}" if isinstance(value, int) or value == round(value) else f"{value:g}"
    return f"{value:.4g}"


def flatten_figures(figures: Any) -> list[tuple[str, str]]:
    """Nested figures (dicts, lists of per-model or per-output dicts) as (label, value) pairs
    in words and units; at most MAX_FIGURES pairs. A per-model or per-output dict prefixes its
    labels with its name ("main: p95 latency").

    Where an event carries headline figures beside the full per-test report (`tests`, as the
    agent's smoke_test events do), only the headline is shown: it already holds the worst
    value of every figure, and the full report stays in the stored event."""
    out: list[tuple[str, str]] = []
    if isinstance(figures, dict) and "tests" in figures and len(figures) > 1:
        figures = {k: v for k, v in figures.items() if k != "tests"}

    def walk(value: Any, prefix: str, key: str, parent: str) -> None:
        if len(out) >= MAX_FIGURES:
            return
        if isinstance(value, dict):
            name = next(
                (value[k] for k in ("model", "name") if isinstance(value.get(k), str)), None
            )
            head = f"{prefix}{name}: " if name else prefix
            for k, v in value.items():
                if isinstance(v, str) and name is not None and v == name:
                    continue
                walk(v, head, str(k), key)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for v in value:
                walk(v, prefix, key, parent)
        else:
            label, unit = figure_label(key, parent)
            if isinstance(value, list):
                text = ", ".join(str(v) for v in value)[:200]
            else:
                text = format_figure(value, unit)
            out.append((f"{prefix}{label}", text))

    if isinstance(figures, dict):
        walk(figures, "", "", "")
    return out[:MAX_FIGURES]
