"""Staged activation on the device: a new release first answers copies of field requests
beside the active one (shadow), then a growing share of them (ramp), and only then becomes
active (the installer's switch) and enters probation. `record` is what the state dir keeps,
`lifecycle` the installer's side (under the device lock), `stager` the inference server's.
"""

from __future__ import annotations

import os
from pathlib import Path

CANDIDATE_FILE = "candidate.json"  # channels/CH/candidate.json (agent.staging.record)
FIGURES_FILE = "candidate-figures.json"  # the server's figures of the running stage


def has_candidate(channel_dir: Path, *, or_figures: bool = False) -> bool:
    """Whether the channel in `channel_dir` has a candidate record (or, with `or_figures`, a
    figures file): checked before an install loads the staging modules, which a channel with
    none does not need (issue 14)."""
    names = (CANDIDATE_FILE, FIGURES_FILE) if or_figures else (CANDIDATE_FILE,)
    return any(os.path.lexists(channel_dir / name) for name in names)
