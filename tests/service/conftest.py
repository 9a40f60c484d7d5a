"""Fixtures of the agent service tests: real devices (initialised state dirs, real
installer, real ONNX models) and a real manager (the Flask app over HTTP on 127.0.0.1,
SQLite). The helpers they use live in `devices`, `live_manager`, `drop_proxy` and `waiting`."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factory.keys import Keyring
from tests.service.devices import Device, Models, make_device, make_models
from tests.service.live_manager import Manager


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return make_models(tmp_path_factory.mktemp("service-models"))


@pytest.fixture
def device(tmp_path: Path, keys: Keyring) -> Device:
    return make_device(tmp_path, keys)


@pytest.fixture
def manager(tmp_path: Path, keys: Keyring, sqlite_template: Path) -> Iterator[Manager]:
    data_dir = tmp_path / "manager"
    data_dir.mkdir()
    shutil.copyfile(sqlite_template, data_dir / "satchel.db")
    m = Manager(data_dir, keys)
    yield m
    m.close()
