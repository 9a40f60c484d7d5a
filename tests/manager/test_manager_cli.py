"""The manager's admin CLI: the command contract of SPEC.md, in-process through click."""

from __future__ import annotations

import json
from pathlib import Path

from satchel.manager.models import Bundle
from tests.factory.bundles import build_test_bundle
from tests.factory.keys import Keyring, make_keys
from tests.manager.admin_cli import Cli
from tests.manager.helpers import Fleet, bearer


def _last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_admin_workflow_from_trust_import_to_deployment(
    cli: Cli, keys: Keyring, app, client, tmp_path: Path
) -> None:
    assert "version 1" in cli.ok("trust", "import", str(keys.directory / "root.json"))
    assert "already" in cli.ok("trust", "import", str(keys.directory / "root.json"))
    admin = _last_line(cli.ok("token", "create", "--admin"))
    assert admin.startswith("sat_admin_")
    enroll = _last_line(cli.ok("token", "create", "--enroll", "--device-class", "edge-box"))
    assert enroll.startswith("sat_enroll_")
    from satchel.bundles.keys import SigningKey

    r = client.post(
        "/api/v1/enroll",
        headers=bearer(enroll),
        json={
            "device_id": "cam-1",
            "device_class": "edge-box",
            "public_key": SigningKey.generate().public.raw.hex(),
        },
    )
    assert r.status_code == 201
    built = build_test_bundle(tmp_path / "v1.satchel", keys=keys)
    out = cli.ok("bundle", "add", str(built.path))
    assert "stored: vision 1.0.0" in out
    assert "already stored" in cli.ok("bundle", "add", str(built.path))
    listed = json.loads(cli.ok("bundle", "list", "--json"))["bundles"]
    assert [b["version"] for b in listed] == ["1.0.0"]
    assert "cam-1" in cli.ok("device", "list")
    shown = json.loads(cli.ok("device", "show", "cam-1", "--json"))
    assert shown["device_class"] == "edge-box"
    dep_id = _last_line(
        cli.ok(
            "deploy",
            "create",
            "--bundle",
            "vision:1.0.0",
            "--device-class",
            "edge-box",
            "--waves",
            "100%",
        )
    )
    assert dep_id.isdigit()
    status = json.loads(cli.ok("deploy", "status", dep_id, "--json"))
    assert status["state"] == "active" and status["targets"][0]["device_id"] == "cam-1"
    assert "cam-1" in cli.ok("deploy", "status", dep_id)
    assert "paused" in cli.ok("deploy", "pause", dep_id)
    assert "active" in cli.ok("deploy", "resume", dep_id)
    assert "aborted" in cli.ok("deploy", "abort", dep_id)
    assert "already aborted" in cli.refused("deploy", "abort", dep_id)
    assert client.get("/api/v1/devices", headers=bearer(admin)).status_code == 200


def test_bundle_add_refusal_is_one_line_and_stores_nothing(
    cli: Cli, keys: Keyring, app, tmp_path: Path
) -> None:
    cli.ok("trust", "import", str(keys.directory / "root.json"))
    stranger = make_keys(tmp_path / "stranger")
    foreign = build_test_bundle(tmp_path / "x.satchel", keys=stranger)
    line = cli.refused("bundle", "add", str(foreign.path))
    assert "bundle refused" in line and "trust root" in line
    db = app.extensions["satchel"].db
    assert db.run(lambda s: s.query(Bundle).count()) == 0
    store = cli.config.store_dir
    assert not store.exists() or not [p for p in store.rglob("*") if p.is_file()]


def test_bundle_add_without_trust_root_says_what_to_do(cli: Cli, keys: Keyring, tmp_path) -> None:
    built = build_test_bundle(tmp_path / "v1.satchel", keys=keys)
    assert "satchel trust import" in cli.refused("bundle", "add", str(built.path))


def test_token_create_needs_a_kind(cli: Cli) -> None:
    r = cli.run("token", "create")
    assert r.exit_code == 2


def test_deploy_refusals_are_one_line(cli: Cli, fleet: Fleet) -> None:
    assert "no deployment 99" in cli.refused("deploy", "status", "99")
    assert "no bundle" in cli.refused("deploy", "create", "--bundle", "vision:9.9")
    fleet.bundle()
    assert "no enrolled device" in cli.refused("deploy", "create", "--bundle", "vision:1.0.0")


def test_device_tag_and_usb_registration(cli: Cli, fleet: Fleet, tmp_path: Path) -> None:
    from satchel.bundles.keys import SigningKey

    fleet.enroll("cam-1")
    assert "north" in cli.ok("device", "tag", "cam-1", "north", "lab")
    assert "lab" not in cli.ok("device", "tag", "cam-1", "--remove", "lab")
    pem = tmp_path / "dev.pub"
    pem.write_bytes(SigningKey.generate().public.to_pem())
    cli.ok("device", "add", "usb-1", "--device-class", "edge-box", "--public-key", str(pem))
    listed = json.loads(cli.ok("device", "list", "--json"))["devices"]
    assert {d["device_id"]: d["lan_credential"] for d in listed} == {"cam-1": True, "usb-1": False}
    assert "already enrolled" in cli.refused(
        "device", "add", "usb-1", "--device-class", "edge-box", "--public-key", str(pem)
    )


def test_user_add_hashes_the_password(cli: Cli, app) -> None:
    cli.ok("user", "add", "alice", "--password-stdin", input="correct horse battery\n")
    from satchel.manager.models import User
    from satchel.manager.services.credentials import check_password

    db = app.extensions["satchel"].db
    stored = db.run(lambda s: s.query(User).one().password_hash)
    assert "correct horse" not in stored and stored.startswith("scrypt:32768:8:1$")
    assert check_password("correct horse battery", stored)
    assert "already exists" in cli.refused(
        "user", "add", "alice", "--password-stdin", input="another long one\n"
    )
