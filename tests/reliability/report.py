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

from tests.catalogue.report import render as render_catalogue
from tests.catalogue.report import run_catalogue
from tests.reliability.figures import FIGURES_ENV, KNOWN_BUG

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "RELIABILITY.md"
AREAS = ["TUF attack, LAN", "TUF attack, USB", "fuzzing", "network fault", "manager",
         "inference server"]
# Measured by the bundle-format suite, which this one reuses rather than repeats.
REFERENCED = [
    ("fuzzing", "bundle reader: every single-byte flip and every truncation of a real bundle",
     "38,912", "each refused with a named BundleError or harmless; nothing outside staging",
     "pytest tests/bundles/test_bundle_fuzz.py -m slow"),
    ("fuzzing", "manifest parser, root.json (load and rotation), bundle reader: hypothesis",
     "hundreds per reader", "only BundleError subclasses escape",
     "pytest tests/bundles/test_bundle_fuzz.py tests/bundles/test_bundle_trust.py"),
]

# What the suite found on its first runs, fixed since; each row above now proves the fix.
FOUND_AND_FIXED = [
    "a download trickled a byte at a time held the agent forever (each read waited for a "
    "whole chunk): reads now return what one recv() brings, and a download, a JSON answer or "
    "an error body has a deadline (`download_min_bytes_per_s`, `download_grace_s`, "
    "`answer_deadline_s`)",
    "a trust root past its expiry still verified bundles: the installer now refuses with "
    "ExpiredError until a newer root.json arrives",
    "a FIFO named as a bundle on a stick hung `satchel-agent usb` on open(); a device file "
    "there was read as a bundle: only regular files are copied now",
    "a download that grew past its announced size left its partial file behind",
    "an enrollment token with a huge `ttl_s`, and a deployment id or trust root version "
    "beyond what the database holds in a URL, answered 500; now 400 and 404",
    "check-ins and USB reports with integers beyond their database column or times that "
    "overflow in UTC answered 500 (and aborted `satchel usb import`); now a 400 naming the "
    "field, and the import refuses only that report; every `<int:...>` route is bounded",
    "an offer or plan entry whose sha256 named a genuine bundle of another release installed "
    "it and reported the announced one: the manifest must now match the offer "
    "(OfferMismatchError), before the installer runs",
    "a manager whose trust root endpoint failed (endless, missing, forged) blocked every "
    "install: the failure is reported once (`trust_update_failed`) and offers go on",
    # the second round (an adversarial trial as a new user would run it)
    "NaN inputs sent by any local client during probation rolled a good release back for "
    "good: non-finite inputs are now the client's fault, counted apart "
    "(`nonfinite_inputs`), and never blamed on the model",
    "a USB stick whose `reports/` (or `reports/<device>`, a bundle, `plan.json`) was a "
    "symlink made `satchel-agent usb` write outside the stick, into the device's own state "
    "directory too, and `satchel usb import` follow it: every path on a stick is now walked "
    "from its root with O_NOFOLLOW and a link is refused in one line (StickLinkError)",
    "60 wrong passwords in 12 s, then the right one logged in: log-ins are throttled per "
    "user name and client address in the database, refused (429) before any hash is run",
    "a saved session cookie still worked after logout: sessions are rows on the server, "
    "ended by logout, a password change or the user's removal",
    "a full manager disk gave a 500 with a traceback on check-in: now a 503 `disk_full` "
    "with Retry-After, nothing half-recorded; `bundle add` names a store that cannot be "
    "written instead of saying it cannot read the file",
    "`satchel-agent install` ignored the SATCHEL_AGENT_* settings `usb` and `run` honour",
    "the inference server started one thread per connection with no cap (2,000 idle "
    "connections gave 2,011 threads): 64 connections at most, the longest-idle one closed "
    "for a newcomer, a request trickled in past 30 s closed when a slot is needed (slow "
    "loris), idle keep-alive 15 s",
    "the health policy was judged twice, differently (the manager judged p95 latency with "
    "fewer inferences than `min_samples`): one pure judge in `bundles/health.py` for both",
    "a failed `usb export` could leave a half-written stick: it now writes into a temporary "
    "directory on the stick and renames, and a failure leaves the stick as it was",
    "a link in place of a field capture under `reports/<device>/samples/` was refused only "
    "after the device's report had been recorded: `satchel usb import` now refuses such a "
    "stick before recording anything",
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


def render(
    rows: list[dict[str, Any]],
    bugs: list[dict[str, Any]],
    fast: bool,
    catalogue: list[str] | None = None,
) -> str:
    """The doc: `rows` as merged, `bugs` the expected failures of the run, `catalogue` the
    model-safety catalogue section (tests/catalogue/report.py)."""
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
        f"- **Network faults:** {per_area['network fault']:,} cases (cuts, outages, "
        "timeouts, and the events carried through them), all survived",
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
    lines += _known_bugs(bugs)
    lines += catalogue or []
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
    lines += ["", "## Found by this suite and fixed", ""]
    lines += [f"- {item}" for item in FOUND_AND_FIXED]
    lines.append("")
    return "\n".join(lines)


def _known_bugs(bugs: list[dict[str, Any]]) -> list[str]:
    """Bugs this suite found that are not fixed yet (its strict xfail tests)."""
    if not bugs:
        return ["No known bug: no test of this suite is marked as an expected failure.", ""]
    by_reason: dict[str, list[str]] = {}
    for b in bugs:
        by_reason.setdefault(b["case"], []).append(b["test"])
    lines = ["## Known bugs, not fixed yet", "",
             "Found by this suite; each is a test marked `xfail(strict=True)`, which turns into "
             "a failure the day the bug is fixed (then the mark goes).", ""]
    for reason, tests in sorted(by_reason.items()):
        lines.append(f"- {reason}: {len(tests)} case(s), e.g. `pytest '{tests[0]}'`")
    return [*lines, ""]


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
    table = merge([r for r in rows if r["area"] != KNOWN_BUG])
    bugs = [r for r in rows if r["area"] == KNOWN_BUG]
    results = run_catalogue()
    if not all(r.as_expected for r in results):
        print(f"error: a catalogue model met the wrong verdict; {args.output} not written",
              file=sys.stderr)
        return 1
    args.output.write_text(render(table, bugs, args.fast, render_catalogue(results)))
    print(f"wrote {args.output} ({len(table)} rows, {len(bugs)} known-bug cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
