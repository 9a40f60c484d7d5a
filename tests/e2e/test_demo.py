"""`make demo` tells the whole story, and works twice in a row (issue 8): the bad release is
caught in shadow with 0 client answers, its field inputs exported, the next one ramps to 100%
(issue 18)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_demo(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "satchel.manager.demo", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=480,
    )


@pytest.mark.slow
def test_demo_rolls_out_serves_refuses_the_bad_release_and_runs_twice(tmp_path: Path) -> None:
    for attempt in (1, 2):
        proc = run_demo(tmp_path / "demo-out")
        assert proc.returncode == 0, f"run {attempt}:\n{proc.stdout}\n{proc.stderr}"
        out = proc.stdout
        assert "completed: 3 of 3 devices run classifier 1.0.0" in out
        assert out.count("200 predictions, accuracy 100.0%, 0 failed") == 3
        assert "cam-1 refused 1.1.0 in its shadow stage" in out
        assert "classifier 1.1.0 answered 0 client requests" in out  # caught in shadow
        assert "0 of the" in out and "answers clients got said 1.1.0" in out
        assert "halted by itself" in out
        assert "never offered 1.1.0: cam-2" in out
        assert "hard examples exported for retraining: " in out
        assert "hard examples exported for retraining: 0" not in out
        assert "classifier 1.2.0 ramped 10% -> 50% -> 100% and completed" in out
        assert "Dashboard: http://127.0.0.1:" in out
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "the demo left processes running"
