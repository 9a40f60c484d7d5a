"""Fixtures for the bundle-format tests: an honest bundle and a device sandbox (`keys` is the
suite's, from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factory.bundles import BuiltBundle, build_test_bundle
from tests.factory.device import Device
from tests.factory.keys import Keyring


@pytest.fixture
def bundle(tmp_path: Path, keys: Keyring) -> BuiltBundle:
    return build_test_bundle(tmp_path / "vision-1.0.0.satchel", keys=keys)


@pytest.fixture
def device(tmp_path: Path, keys: Keyring) -> Device:
    return Device(tmp_path, keys.root)
