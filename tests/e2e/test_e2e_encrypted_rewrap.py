"""The manager re-wraps encrypted bundles itself (issue 19, services/rewrap.py): a bundle built
for the manager's recipient key only is deployed to a device that enrolled after the build;
the manager, configured with its key (SATCHEL_ENCRYPTION_IDENTITY), wraps it for the device
when the deployment is created, serves the new file, and the real agent installs it over the
LAN and answers with the model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.commands import SATCHEL, run, wait_for
from tests.e2e.kit import DEVICE_CLASS, Kit, expected_outputs, positive
from tests.e2e.sites import ManagerProcess, Site
from tests.e2e.test_e2e_encrypted import build_encrypted


@pytest.fixture
def keyed_manager(kit: Kit, tmp_path: Path) -> Iterator[tuple[ManagerProcess, Path]]:
    """`satchel serve` (and its CLI) with the manager's recipient key configured."""
    keydir = tmp_path / "manager-keys"
    run(SATCHEL, "keys", "recipient", "init", "manager", "-o", keydir)
    data_dir = tmp_path / "keyed-manager"
    data_dir.mkdir()
    m = ManagerProcess(data_dir, kit,
                       env={"SATCHEL_ENCRYPTION_IDENTITY": str(keydir / "manager.key")})
    yield m, keydir / "manager.pub"
    m.stop()


def test_a_device_enrolled_after_the_build_gets_the_bundle_rewrapped_at_deployment(
    site: Site, keyed_manager: tuple[ManagerProcess, Path], kit: Kit
) -> None:
    manager, manager_pub = keyed_manager
    bundle = build_encrypted(kit, site.root / "secret-rw.satchel", "5.0.0", 5000,
                             [str(manager_pub)])
    built_sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    manager.cli("bundle", "add", bundle)

    state = site.init("rw-late-1")  # enrolled after the build: not a recipient of it
    site.enroll(state, manager)
    agent = site.start(state)
    manager.deploy("secret:5.0.0", ["rw-late-1"], "100%")

    stored = json.loads(manager.cli("bundle", "list", "--json").stdout)
    stored = stored["bundles"] if isinstance(stored, dict) else stored
    assert [b["sha256"] != built_sha for b in stored] == [True]  # keys.json gained a stanza
    wait_for(lambda: agent.serving_version("secret") == "5.0.0", 60,
             "the install of the re-wrapped bundle")
    x = positive(3, seed=7)
    np.testing.assert_allclose(agent.infer("secret", x), expected_outputs(kit.good, x),
                               rtol=1e-4, atol=1e-5)
    again = manager.cli("bundle", "rewrap", "secret:5.0.0", "--to", "device:rw-late-1")
    assert again.stdout.strip() == "secret 5.0.0 is already wrapped for rw-late-1"


def test_a_usb_device_registered_after_the_build_installs_from_the_exported_stick(
    site: Site, keyed_manager: tuple[ManagerProcess, Path], kit: Kit
) -> None:
    manager, manager_pub = keyed_manager
    bundle = build_encrypted(kit, site.root / "secret-rw-usb.satchel", "6.0.0", 6000,
                             [str(manager_pub)])
    manager.cli("bundle", "add", bundle)
    state = site.init("rw-usb-1")
    manager.cli("device", "add", "rw-usb-1", "--device-class", DEVICE_CLASS,
                "--public-key", state / "device.pub")
    deployment = manager.deploy("secret:6.0.0", ["rw-usb-1"], "100%")
    stick = site.root / "stick-rw"
    manager.cli("usb", "export", stick, "--key", kit.keydir / "signing.key",
                "--deployment", str(deployment))

    done = site.agent_cli(state, "usb", stick)
    assert "installed secret 6.0.0" in done.stdout
