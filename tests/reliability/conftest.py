"""Fixtures of the reliability and security suite.

Real components throughout: devices are initialised state dirs driven by the real installer,
check-in loop and USB code, with real ONNX models; managers are the real Flask app (in-process
test client, or served over HTTP on 127.0.0.1); hostile peers are small servers of our own on
127.0.0.1 (`rogue.py`). The manager fixtures (fresh database per test, SQLite and PostgreSQL)
are those of tests/manager, imported here.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.factory import Keyring, make_keys
from tests.manager.conftest import (  # noqa: F401 - fixtures, registered by import
    app,
    backend,
    client,
    config,
    fleet,
    live_server,
    pg_admin_url,
    sqlite_template,
)
from tests.models import make_mlp_weights, onnx_mlp
from tests.reliability import figures
from tests.reliability.kit import Site, make_site
from tests.reliability.rogue import RogueManager
from tests.service.conftest import (  # noqa: F401 - fixture, registered by import
    Manager,
    migrated_db,
)


@dataclass(frozen=True)
class Models:
    good: Path  # 8 -> 16 -> 3 MLP
    other: Path  # same shapes, other weights
    big: Path  # a few MB, so a download can be cut many times


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    d = tmp_path_factory.mktemp("reliability-models")
    return Models(
        good=onnx_mlp(make_mlp_weights(8, 16, 3, seed=1), d / "good.onnx"),
        other=onnx_mlp(make_mlp_weights(8, 16, 3, seed=2), d / "other.onnx"),
        big=onnx_mlp(make_mlp_weights(8, 65536, 3, seed=3), d / "big.onnx"),
    )


@pytest.fixture
def keys(tmp_path: Path) -> Keyring:
    return make_keys(tmp_path)


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
def real_manager(tmp_path: Path, keys: Keyring,
                 request: pytest.FixtureRequest) -> Iterator[Manager]:
    """The manager app served over HTTP on 127.0.0.1 (SQLite), trusting `keys`."""
    data_dir = tmp_path / "manager"
    data_dir.mkdir()
    shutil.copyfile(request.getfixturevalue("migrated_db"), data_dir / "satchel.db")
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
