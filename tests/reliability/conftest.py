"""Fixtures of the reliability and security suite.

Real components throughout: devices are initialised state dirs driven by the real installer,
check-in loop and USB code, with real ONNX models; managers are the real Flask app (in-process
test client, or served over HTTP on 127.0.0.1); hostile peers are small servers of our own on
127.0.0.1 (`rogue.py`). The manager fixtures (fresh database per test, SQLite and PostgreSQL)
are the suite's, from tests/manager/fixtures.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factory.keys import Keyring
from tests.reliability import figures
from tests.reliability.kit import Site, make_site
from tests.reliability.rogue import RogueManager
from tests.service.devices import Models, make_models
from tests.service.live_manager import Manager


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return make_models(tmp_path_factory.mktemp("reliability-models"))


@pytest.fixture
def site(tmp_path: Path, keys: Keyring) -> Site:
    """A device with trust root v1 and nothing installed."""
    return make_site(tmp_path, keys)


@pytest.fixture
def rogue() -> Iterator[RogueManager]:
    server = RogueManager()
    yield server
    server.close()


@pytest.fixture
def real_manager(tmp_path: Path, keys: Keyring, sqlite_template: Path) -> Iterator[Manager]:
    """The manager app served over HTTP on 127.0.0.1 (SQLite), trusting `keys`."""
    data_dir = tmp_path / "manager"
    data_dir.mkdir()
    shutil.copyfile(sqlite_template, data_dir / "satchel.db")
    manager = Manager(data_dir, keys)
    yield manager
    manager.close()


@pytest.fixture
def measured(request: pytest.FixtureRequest) -> figures.Recorder:
    """Records this test's figures for docs/RELIABILITY.md."""
    return figures.Recorder(request.node.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.skipped and hasattr(report, "wasxfail"):
        figures.known_bug(report.nodeid, str(report.wasxfail))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = figures.target_from_env()
    if target is not None:
        figures.write_rows(target)
