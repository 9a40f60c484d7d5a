"""`satchel bundle remove` on a manager's REST API (`--url`), against a real `satchel serve`:
the same lines as the local command, and a bundle a deployment refers to is kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from satchel.bundles.keys import SigningKey
from tests.cli.remote_manager import RemoteManager


@pytest.fixture
def manager(tmp_path: Path, sqlite_template: Path, shared_keydir: Path) -> Iterator[RemoteManager]:
    m = RemoteManager(tmp_path, sqlite_template, shared_keydir / "root.json")
    yield m
    m.stop()


def test_a_bundle_is_removed_remotely_and_a_deployed_one_is_kept(
    manager: RemoteManager, int8_bundle: Path, tmp_path: Path
) -> None:
    m = manager
    sha = m.remote("bundle", "add", int8_bundle).ok().stdout.splitlines()[-1]
    removed = m.remote("bundle", "remove", "detector:1.2.3").ok().stdout
    assert removed.strip() == f"removed: detector 1.2.3 ({sha[:16]})"
    assert m.remote("bundle", "list", "--json").json() == {"bundles": []}
    assert "no bundle" in m.remote("bundle", "remove", sha).refusal()

    m.remote("bundle", "add", int8_bundle).ok()
    public = tmp_path / "device.pub"
    public.write_bytes(SigningKey.generate().public.to_pem())
    m.remote("device", "add", "site-0", "--device-class", "cam-v2", "--public-key",
             public).ok()
    deployment = m.remote("deploy", "create", "--bundle", "detector:1.2.3", "--device",
                          "site-0").ok().stdout.splitlines()[-1]
    line = m.remote("bundle", "remove", "detector:1.2.3").refusal()
    assert f"deployment {deployment} refers to it" in line
    assert [b["sha256"] for b in m.local("bundle", "list", "--json").json()["bundles"]] == [sha]
