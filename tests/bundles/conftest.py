"""Fixtures for the bundle-format tests: keys, an honest bundle, and a device sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factory import BuiltBundle, Device, Keyring, build_test_bundle, make_keys


@pytest.fixture
def keys(tmp_path: Path) -> Keyring:
    return make_keys(tmp_path)


@pytest.fixture
def bundle(tmp_path: Path, keys: Keyring) -> BuiltBundle:
    return build_test_bundle(tmp_path / "vision-1.0.0.satchel", keys=keys)


@pytest.fixture
def device(tmp_path: Path, keys: Keyring) -> Device:
    return Device(tmp_path, keys.root)
