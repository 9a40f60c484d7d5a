"""The model-safety catalogue table for `docs/RELIABILITY.md`: every family and variant
through the build gate and a real device, with what each gate said.

    .venv/bin/python -m tests.catalogue.report      # print the table (markdown)

`python -m tests.reliability.report` includes the same table in the doc it writes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from satchel.bundles.keys import SigningKey
from satchel.bundles.trust import make_root, sign_root
from tests.catalogue.gates import GateResult, run_gates
from tests.catalogue.kinds import ACTIVATE, catalogue


def run_catalogue() -> list[GateResult]:
    """Every catalogue entry through both gates, in a scratch directory."""
    root, signing = SigningKey.generate(), SigningKey.generate()
    root_json = sign_root(make_root(1, [root.public], [signing.public]), [root])
    with tempfile.TemporaryDirectory(prefix="satchel-catalogue-") as tmp:
        work = Path(tmp)
        entries = catalogue(work / "models")
        good = {e.family: e.model for e in entries if e.expect == ACTIVATE}
        return [
            run_gates(e, good[e.family], signing, root_json, work / "runs" / f"{i:03d}")
            for i, e in enumerate(entries)
        ]


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _build_cell(r: GateResult) -> str:
    if r.build_ok:
        return "built: " + r.build_line
    reason = r.build_line.split(": ", 1)[-1] if "samples: " in r.build_line else r.build_line
    return "refused: " + reason


def _device_cell(r: GateResult) -> str:
    if r.device_ok is None:
        return "not tried"
    if r.device_ok:
        return "activated"
    return "refused, device unchanged" if r.device_unchanged else "refused, DEVICE CHANGED"


def render(results: list[GateResult]) -> list[str]:
    """The catalogue section as markdown lines."""
    good = [r for r in results if r.entry.expect == ACTIVATE]
    bad = [r for r in results if r.entry.expect != ACTIVATE]
    lines = [
        "## Model-safety catalogue",
        "",
        "Models of every family a user brings, made in the repository (`tests/catalogue/`): "
        "for each family a float reference, a good shipped model (INT8, uint8 or fp16) and "
        "broken ones. Each goes through `satchel bundle build --reference` with the family's "
        "samples, then a real device (`satchel-agent install`): a good model's bundle, or for "
        "a broken model the good bundle with the broken model signed in its place (what a "
        "build without these gates would ship). Measured by `python -m tests.catalogue.report`"
        " and `pytest tests/agent/test_agent_catalogue.py`.",
        "",
        f"- **Good models:** {sum(r.as_expected for r in good)} of {len(good)} built and "
        "activated",
        f"- **Broken models:** {sum(r.as_expected for r in bad)} of {len(bad)} refused at "
        "build and refused by the device, which stayed unchanged",
        "",
        "| Family | Variant | What it is | Build | Device |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.entry.family} | {r.entry.variant} | {_cell(r.entry.note, 90)} | "
            f"{_cell(_build_cell(r), 220)} | {_device_cell(r)} |"
        )
    return [*lines, ""]


def main() -> int:
    results = run_catalogue()
    print("\n".join(render(results)))
    return 0 if all(r.as_expected for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
