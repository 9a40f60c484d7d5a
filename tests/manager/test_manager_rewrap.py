"""The manager re-wraps its stored encrypted bundles for devices enrolled after the build
(issue 19, services/rewrap.py): with its own recipient key (`encryption_identity`) it adds a
stanza to keys.json, checks the result (signed parts unchanged, only additions, the data key
matching the signed commitment, the signature) and serves the new file; the device installs
it. Every refusal is one line and leaves the database and the store as they were."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from flask import Flask

from satchel.agent.provision import init_device
from satchel.bundles.crypt import KeyFile, wrap
from satchel.bundles.cryptinfo import KEYS_MEMBER
from satchel.bundles.recipients import Identity, Recipient
from satchel.manager.app import create_app
from satchel.manager.cli import main
from satchel.manager.config import ManagerConfig
from tests.agent.bundle_maker import BundleMaker
from tests.agent.conftest import make_bundle, models  # noqa: F401  (fixtures)
from tests.agent.devices import DEVICE_CLASS, Device
from tests.factory.encrypted import encrypt_bundle
from tests.factory.keys import Keyring
from tests.factory.tar import read_members
from tests.factory.tar import rewrite_member as rewrite
from tests.manager.admin_cli import Cli
from tests.manager.helpers import Fleet
from tests.manager.live_server import LiveServer

IDENTITY_ENV = "SATCHEL_ENCRYPTION_IDENTITY"


@pytest.fixture
def manager_key(tmp_path: Path) -> Identity:
    identity = Identity.generate("manager")
    path = tmp_path / "manager-recipient.key"
    path.write_bytes(identity.to_pem())
    path.chmod(0o600)
    return identity


@pytest.fixture
def app(config: ManagerConfig, manager_key: Identity, tmp_path: Path) -> Iterator[Flask]:
    """The manager with its recipient key configured."""
    settings = {name: getattr(config, name) for name in config.__dataclass_fields__}
    settings["encryption_identity"] = str(tmp_path / "manager-recipient.key")
    application = create_app({**settings, "TESTING": True})
    yield application
    application.extensions["satchel"].db.dispose()


@pytest.fixture
def keyed_cli(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv(IDENTITY_ENV, str(tmp_path / "manager-recipient.key"))
    return cli


def new_device(tmp_path: Path, keys: Keyring, device_id: str) -> Device:
    state_dir = tmp_path / device_id
    init_device(state_dir, keys.root_json, device_id, DEVICE_CLASS)
    return Device(state_dir)


def register(cli: Cli, device: Device, device_id: str) -> None:
    cli.ok("device", "add", device_id, "--device-class", DEVICE_CLASS,
           "--public-key", str(device.state_dir / "device.pub"))


def recipient_of(device: Device, name: str) -> Recipient:
    return Recipient.from_pem(name, (device.state_dir / "device.pub").read_bytes())


def upload(fleet: Fleet, path: Path) -> dict[str, Any]:
    r = fleet.client.post("/api/v1/bundles", data=path.read_bytes(), headers=fleet.admin,
                          content_type="application/octet-stream")
    assert r.status_code == 201, r.json
    return dict(r.json)


def snapshot(fleet: Fleet) -> tuple[Any, dict[str, str]]:
    """The bundles as the API lists them and every file of the store, hashed."""
    listed = fleet.client.get("/api/v1/bundles", headers=fleet.admin).json
    root = fleet.app.extensions["satchel"].store.root
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(root.rglob("*")) if p.is_file()}
    return listed, files


def stanza_names(data: bytes) -> list[str]:
    keys = next(m.data for m in read_members(data) if m.name == KEYS_MEMBER)
    return list(KeyFile.from_bytes(keys).names)


@pytest.fixture
def stored(fleet: Fleet, make_bundle: BundleMaker, keys: Keyring,  # noqa: F811
           manager_key: Identity, tmp_path: Path) -> dict[str, Any]:
    """kws 1.0.0 encrypted for an early device and the manager, stored by the manager."""
    early = new_device(tmp_path, keys, "early-1")
    bundle = encrypt_bundle(make_bundle(), [keys.signing],
                            [recipient_of(early, "early-1"), manager_key.recipient])
    return {"path": bundle, **upload(fleet, bundle)}


def test_a_device_enrolled_after_the_build_installs_the_rewrapped_download(
    fleet: Fleet, keyed_cli: Cli, stored: dict[str, Any], keys: Keyring, tmp_path: Path
) -> None:
    late = new_device(tmp_path, keys, "late-1")
    register(keyed_cli, late, "late-1")
    with LiveServer(fleet.app) as live:
        url = f"{live.url}/api/v1/bundles/{stored['sha256']}/download"
        before = tmp_path / "before.satchel"
        before.write_bytes(requests.get(url, headers=fleet.admin, timeout=30).content)
        refused = late.spawn("install", str(before))
        assert refused.exit_code == 1
        assert "is encrypted for other devices (recipients: early-1, manager)" in refused.stderr

        out = keyed_cli.ok("bundle", "rewrap", "kws:1.0.0", "--to", "device:late-1", "--json")
        done = json.loads(out)
        assert done["previous_sha256"] == stored["sha256"] != done["sha256"]
        assert done["added"] == ["late-1"]
        listed, files = snapshot(fleet)
        assert [b["sha256"] for b in listed["bundles"]] == [done["sha256"]]
        assert list(files.values()) == [done["sha256"]]  # the old file is gone

        got = requests.get(f"{live.url}{done['download_url']}", headers=fleet.admin,
                           timeout=30)
        assert got.headers["ETag"].strip('"') == done["sha256"]
        after = tmp_path / "after.satchel"
        after.write_bytes(got.content)
    old_members = {m.name: m.data for m in read_members(before.read_bytes())}
    new_members = {m.name: m.data for m in read_members(after.read_bytes())}
    assert {n: d for n, d in new_members.items() if n != KEYS_MEMBER} == \
        {n: d for n, d in old_members.items() if n != KEYS_MEMBER}  # nothing signed touched
    assert stanza_names(after.read_bytes()) == ["early-1", "manager", "late-1"]

    installed = late.spawn("install", str(after))  # the real console script
    assert installed.exit_code == 0, installed.stderr
    assert "activated kws 1.0.0" in installed.stdout
    late.verify_active()

    again = keyed_cli.ok("bundle", "rewrap", "kws:1.0.0", "--to", "device:late-1")
    assert again.strip() == "kws 1.0.0 is already wrapped for late-1"
    assert snapshot(fleet)[1] == files


def test_remote_rewrap_by_class_over_the_rest_api(
    fleet: Fleet, keyed_cli: Cli, stored: dict[str, Any], keys: Keyring, tmp_path: Path
) -> None:
    for device_id in ("late-2", "late-3"):
        register(keyed_cli, new_device(tmp_path, keys, device_id), device_id)
    with LiveServer(fleet.app) as live:
        token = fleet.admin["Authorization"].removeprefix("Bearer ")
        result = CliRunner().invoke(
            main, ["--url", live.url, "bundle", "rewrap", "kws:1.0.0", "--to",
                   f"class:{DEVICE_CLASS}", "--json"],
            env={"SATCHEL_TOKEN": token, "SATCHEL_CONFIG": ""})
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    assert done["added"] == ["late-2", "late-3"]
    r = fleet.client.get(f"/api/v1/bundles/{done['sha256']}/download", headers=fleet.admin)
    assert stanza_names(r.data) == ["early-1", "manager", "late-2", "late-3"]


def test_a_manager_without_its_recipient_key_refuses_in_one_line_and_changes_nothing(
    fleet: Fleet, cli: Cli, stored: dict[str, Any], keys: Keyring, tmp_path: Path
) -> None:
    register(cli, new_device(tmp_path, keys, "late-4"), "late-4")
    before = snapshot(fleet)
    line = cli.refused("bundle", "rewrap", "kws:1.0.0", "--to", "device:late-4")
    assert line == ("error: this manager has no recipient key to re-wrap with: set "
                    "encryption_identity (SATCHEL_ENCRYPTION_IDENTITY) to the manager's X25519 "
                    "private key")
    assert snapshot(fleet) == before
    st = fleet.app.extensions["satchel"]
    keyed = st.config
    st.config = dataclasses.replace(keyed, encryption_identity="")
    try:
        r = fleet.client.post("/api/v1/bundles/kws:1.0.0/rewrap", headers=fleet.admin,
                              json={"to": ["device:late-4"]})
    finally:
        st.config = keyed
    assert r.status_code == 409
    assert "no recipient key" in r.json["error"]["message"]
    assert snapshot(fleet) == before


def test_a_keys_json_with_an_attackers_stanza_for_the_manager_is_refused_by_the_commitment(
    fleet: Fleet, keyed_cli: Cli, make_bundle: BundleMaker, keys: Keyring,  # noqa: F811
    manager_key: Identity, tmp_path: Path,
) -> None:
    early = new_device(tmp_path, keys, "early-1")
    honest = encrypt_bundle(make_bundle(), [keys.signing],
                            [recipient_of(early, "early-1"), manager_key.recipient])
    # the manager's stanza swapped for one the attacker wrapped (a key of their own) for the
    # manager's public key: a re-wrap would hand the attacker's key to the new device
    forged = KeyFile((wrap(b"A" * 32, manager_key.recipient),))
    tampered = tmp_path / "tampered.satchel"
    tampered.write_bytes(rewrite(honest.read_bytes(), KEYS_MEMBER, forged.to_bytes()))
    upload(fleet, tampered)  # keys.json is not signed: the upload verifies
    register(keyed_cli, new_device(tmp_path, keys, "late-5"), "late-5")
    before = snapshot(fleet)

    line = keyed_cli.refused("bundle", "rewrap", "kws:1.0.0", "--to", "device:late-5")
    assert line.startswith("error: re-wrap refused: bundle kws 1.0.0: the key wrapped for "
                           "the given key in keys.json does not unlock it"), line
    assert snapshot(fleet) == before
    r = fleet.client.post("/api/v1/bundles/kws:1.0.0/rewrap", headers=fleet.admin,
                          json={"to": ["device:late-5"]})
    assert r.status_code == 422
    assert snapshot(fleet) == before


@pytest.mark.parametrize(
    ("ref", "to", "status", "message"),
    [
        ("kws:1.0.0", ["device:nobody"], 404, "no device nobody"),
        ("kws:1.0.0", ["class:no-such-class"], 404, "no device of class no-such-class"),
        ("kws:1.0.0", ["everyone"], 400, "re-wrap for device:ID, class:CLASS or all-enrolled"),
        ("kws:1.0.0", [], 400, "name whom to re-wrap for"),
        ("kws:9.9.9", ["all-enrolled"], 404, "no bundle kws version 9.9.9"),
    ],
)
def test_bad_rewrap_requests_are_refused_and_change_nothing(
    fleet: Fleet, stored: dict[str, Any], ref: str, to: list[str], status: int, message: str
) -> None:
    before = snapshot(fleet)
    r = fleet.client.post(f"/api/v1/bundles/{ref}/rewrap", headers=fleet.admin, json={"to": to})
    assert r.status_code == status, r.json
    assert message in r.json["error"]["message"]
    assert snapshot(fleet) == before


def test_a_bundle_that_is_not_encrypted_has_nothing_to_rewrap(
    fleet: Fleet, make_bundle: BundleMaker  # noqa: F811
) -> None:
    upload(fleet, make_bundle())
    before = snapshot(fleet)
    r = fleet.client.post("/api/v1/bundles/kws:1.0.0/rewrap", headers=fleet.admin,
                          json={"to": ["all-enrolled"]})
    assert r.status_code == 409
    assert r.json["error"]["message"] == ("bundle kws 1.0.0 is not encrypted: there is nothing "
                                          "to re-wrap")
    assert snapshot(fleet) == before


def test_deploying_wraps_the_bundle_for_its_devices_before_the_first_offer(
    fleet: Fleet, stored: dict[str, Any]
) -> None:
    late = fleet.enroll("late-6")  # enrolled after the build: not a recipient
    fleet.deploy("kws:1.0.0", devices=["late-6"], waves="100%")
    listed, files = snapshot(fleet)
    sha = listed["bundles"][0]["sha256"]
    assert sha != stored["sha256"] and list(files.values()) == [sha]
    offer = fleet.checkin(late)["install"][0]
    assert (offer["bundle_sha256"], offer["url"]) == (sha, f"/api/v1/bundles/{sha}/download")
    r = fleet.client.get(offer["url"], headers=late.headers)
    assert r.status_code == 200
    assert stanza_names(r.data) == ["early-1", "manager", "late-6"]


def test_deploying_a_bundle_not_encrypted_for_the_manager_leaves_it_as_built(
    fleet: Fleet, make_bundle: BundleMaker, keys: Keyring, tmp_path: Path  # noqa: F811
) -> None:
    early = new_device(tmp_path, keys, "early-1")
    bundle = encrypt_bundle(make_bundle(), [keys.signing], [recipient_of(early, "early-1")])
    sha = upload(fleet, bundle)["sha256"]
    fleet.enroll("late-7")
    fleet.deploy("kws:1.0.0", devices=["late-7"], waves="100%")
    listed, files = snapshot(fleet)
    assert [b["sha256"] for b in listed["bundles"]] == [sha] and list(files.values()) == [sha]


def test_an_event_naming_the_copy_before_the_rewrap_still_counts_for_the_deployment(
    fleet: Fleet, stored: dict[str, Any]
) -> None:
    from tests.manager.helpers import event

    late = fleet.enroll("late-8")
    dep = fleet.deploy("kws:1.0.0", devices=["late-8"], waves="100%")
    assert fleet.status(dep["id"])["bundle"]["sha256"] != stored["sha256"]  # re-wrapped
    fleet.checkin(late, [event("smoke_test", "kws", 1, passed=False, reason="too slow",
                               bundle_sha256=stored["sha256"])])
    target = fleet.status(dep["id"])["targets"][0]
    assert (target["device_id"], target["state"]) == ("late-8", "failed")
