"""End-to-end fixtures: everything a real site runs, as real processes on 127.0.0.1.

A manager started with `satchel serve` (fresh data dir, `db upgrade`, `trust import`, an
admin token), bundles made by `satchel bundle build` from models of `manager/modelgen.py`,
and devices that are `satchel-agent init`ed, enrolled and `run`. Check-ins every half
second (SATCHEL_POLL_INTERVAL_S on the manager, SATCHEL_AGENT_POLL_S on the agents) and
short probation windows keep the whole suite within a couple of minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.kit import Kit, make_kit
from tests.e2e.sites import ManagerProcess, Site


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    return make_kit(tmp_path_factory.mktemp("e2e-kit"))


@pytest.fixture(scope="session")
def manager(kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagerProcess]:
    m = ManagerProcess(tmp_path_factory.mktemp("e2e-manager"), kit)
    yield m
    m.stop()


@pytest.fixture
def site(tmp_path: Path, kit: Kit) -> Iterator[Site]:
    s = Site(tmp_path, kit, [])
    yield s
    for agent in s.agents:
        code = agent.stop()
        assert code == 0, f"agent exited with {code}:\n{agent.log}"
        assert "Traceback" not in agent.log, agent.log
