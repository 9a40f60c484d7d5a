"""What the device commands do without the heavier standard modules (issue 14) gives the same
answers: the agent's version read straight from the distribution's metadata, and timestamps
parsed without strptime."""

from __future__ import annotations

import importlib.metadata
from datetime import datetime, timezone

import pytest

from satchel.agent.distversion import installed_version
from satchel.agent.install.facts import AGENT_DISTRIBUTION, agent_version
from satchel.bundles.errors import WrongTypeError
from satchel.bundles.timeutil import parse_time


def test_the_agent_version_is_the_one_importlib_metadata_finds():
    assert installed_version(AGENT_DISTRIBUTION) == importlib.metadata.version(AGENT_DISTRIBUTION)
    assert agent_version() == importlib.metadata.version(AGENT_DISTRIBUTION)


def test_a_distribution_not_installed_is_left_to_importlib_metadata():
    assert installed_version("no-such-distribution-here") is None


@pytest.mark.parametrize("text", [
    "2026-01-31T12:00:00Z", "1970-01-01T00:00:00Z", "2024-02-29T23:59:59Z",
    "2026-1-31T12:00:00Z", "2026-01-31T1:2:3Z", "\uff12026-01-31T12:00:00Z",  # strptime's
])  # leniency (short fields, any Unicode digit) is kept
def test_timestamps_parse_as_strptime_parses_them(text):
    want = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)

    assert parse_time(text, "created") == want


@pytest.mark.parametrize("text", ["2026-02-30T12:00:00Z", "2026-01-31T24:00:00Z",
                                  "2026-01-31 12:00:00Z", "2026-01-31T12:00:00", ""])
def test_invalid_timestamps_are_refused_as_before(text):
    with pytest.raises(WrongTypeError, match="created must be a timestamp"):
        parse_time(text, "created")
