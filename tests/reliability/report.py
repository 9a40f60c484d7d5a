"""Write docs/RELIABILITY.md from what the reliability suite measures.

    .venv/bin/python -m tests.reliability.report            # the whole suite, slow cases too
    .venv/bin/python -m tests.reliability.report --fast     # only the default (non-slow) part

It runs `pytest tests/reliability` with SATCHEL_RELIABILITY_FIGURES pointing at a scratch
file, where each test writes what it tried, how many cases, what came of it and what was
lost; then renders that as the table of the doc. Exits 1 (and writes nothing) when a test
fails: the doc only ever shows figures of a green run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.reliability.figures import FIGURES_ENV

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "RELIABILITY.md"
AREAS = ["TUF attack, LAN", "TUF attack, USB", "fuzzing", "network fault", "manager"]
# Measured by the bundle-format suite, which this one reuses rather than repeats.
REFERENCED = [
    ("fuzzing", "bundle reader: every single-byte flip and every truncation of a real bundle",
     "38,912", "each refused with a named BundleError or harmless; nothing outside staging",
     "pytest tests/bundles/test_bundle_fuzz.py -m slow"),
    ("fuzzing", "manifest parser, root.json (load and rotation), bundle reader: hypothesis",
     "hundreds per reader", "only BundleError subclasses escape",
     "pytest tests/bundles/test_bundle_fuzz.py tests/bundles/test_bundle_trust.py"),
]


def run_suite(figures: Path, fast: bool) -> int:
    env = {**os.environ, FIGURES_ENV: str(figures)}
    marker = "not slow" if fast else "slow or not slow"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker,
           "tests/reliability"]
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def merge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (area, case): the run with the most cases (the long run of a sweep)."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["area"], row["case"])
        if key not in best or row["cases"] > best[key]["cases"]:
            best[key] = row
    order = {a: i for i, a in enumerate(AREAS)}
    return sorted(best.values(), key=lambda r: order.get(r["area"], len(order)))


def _figures(row: dict[str, Any]) -> str:
    return "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in sorted(row["figures"].items()))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict[str, Any]], fast: bool) -> str:
    cases = sum(r["cases"] for r in rows)
    lost = sum(r["lost"] for r in rows)
    per_area = {a: sum(r["cases"] for r in rows if r["area"] == a) for a in AREAS}
    lines = [
        "# Reliability and security",
        "",
        "What Satchel was put through, and what came of it. Every figure below was measured",
        "by `python -m tests.reliability.report`, which runs `pytest tests/reliability`"
        + (" (default part only)" if fast else " (slow cases included)"),
        f"and rewrote this page on {dt.date.today().isoformat()}. The tests are in",
        "`tests/reliability/`; each row names the one that measured it.",
        "",
        f"- **Cases tried:** {cases:,}, in {len(rows)} kinds of attack, fault or input",
        f"- **Attacks** (TUF catalogue): {per_area['TUF attack, LAN']:,} over the LAN and "
        f"{per_area['TUF attack, USB']:,} over USB, every one refused with a named error in "
        "one line, the device unchanged",
        f"- **Fuzzed inputs:** {per_area['fuzzing']:,}, no crash, no server error",
        f"- **Network faults survived:** {per_area['network fault']:,}",
        f"- **Manager requests** (authorization matrix, schemathesis, concurrent check-ins): "
        f"{per_area['manager']:,}, no server error, nothing recorded twice",
        f"- **Anything lost** (events, releases, bytes of state): **{lost}**",
        "",
        "Devices are real state dirs driven by the real installer, check-in loop and USB code",
        "with real ONNX models; managers are the real Flask app (in-process, or over HTTP on",
        "127.0.0.1) on SQLite and PostgreSQL; attackers are servers and sticks of the tests' own",
        "(`tests/reliability/rogue.py`, `proxy.py`, `sticks.py`).",
        "",
    ]
    for area in AREAS + sorted({r["area"] for r in rows} - set(AREAS)):
        mine = [r for r in rows if r["area"] == area]
        if not mine:
            continue
        lines += [f"## {area[0].upper()}{area[1:]}", "",
                  "| What was tried | Cases | Result | Lost | Measured by |",
                  "|---|---:|---|---:|---|"]
        for r in mine:
            result = r["result"] + (f" ({_figures(r)})" if r["figures"] else "")
            lines.append(f"| {_cell(r['case'])} | {r['cases']:,} | {_cell(result)} | "
                         f"{r['lost']} | `pytest '{r['test']}'` |")
        lines.append("")
    lines += ["## Measured by the bundle-format suite (not repeated here)", "",
              "| What was tried | Cases | Result | Command |", "|---|---:|---|---|"]
    lines += [f"| {c} | {n} | {res} | `{cmd}` |" for _, c, n, res, cmd in REFERENCED]
    lines += [
        "",
        "## Known gaps",
        "",
        "- Tests marked `xfail(strict=True)` document bugs found by this suite and not fixed",
        "  yet; they flip to failures the day the bug is fixed, so the mark is removed then.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="skip the slow cases")
    parser.add_argument("--figures", type=Path, help="render this figures file, run nothing")
    parser.add_argument("-o", "--output", type=Path, default=DOC)
    args = parser.parse_args(argv)
    if args.figures is not None:
        rows = json.loads(args.figures.read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            figures = Path(tmp) / "figures.json"
            code = run_suite(figures, args.fast)
            if code != 0:
                print(f"error: the reliability suite failed (pytest exit {code}); "
                      f"{args.output} not written", file=sys.stderr)
                return 1
            rows = json.loads(figures.read_text())
    args.output.write_text(render(merge(rows), args.fast))
    print(f"wrote {args.output} ({len(merge(rows))} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
