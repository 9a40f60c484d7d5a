"""Fixtures the whole suite shares: a keyring and its signed trust root, and (through the
plugins below) the manager's databases, app, client and fleet, and a private S3 object store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factory.keys import Keyring, make_keys

pytest_plugins = ["tests.manager.fixtures", "tests.objectstore"]


@pytest.fixture
def keys(tmp_path: Path) -> Keyring:
    """Root and signing keys in `tmp_path/keys`, and the version-1 root they make."""
    return make_keys(tmp_path)
