"""A bundle leaves the store only when no deployment refers to it (`satchel bundle remove`,
`DELETE /api/v1/bundles/{sha256}`); a refused removal changes nothing."""

from __future__ import annotations

import hashlib

from satchel.manager.models import Bundle
from tests.manager.admin_cli import Cli
from tests.manager.helpers import Fleet


def _rows(fleet: Fleet) -> int:
    return int(fleet.app.extensions["satchel"].db.run(lambda s: s.query(Bundle).count()))


def test_a_bundle_no_deployment_refers_to_is_removed_with_its_file(
    cli: Cli, fleet: Fleet
) -> None:
    built = fleet.bundle()
    sha = hashlib.sha256(built.data).hexdigest()
    store = fleet.app.extensions["satchel"].store
    assert store.exists(sha)

    out = cli.ok("bundle", "remove", "vision:1.0.0")

    assert out.strip() == f"removed: vision 1.0.0 ({sha[:16]})"
    assert _rows(fleet) == 0 and not store.exists(sha)
    assert "no bundle" in cli.refused("bundle", "remove", "vision:1.0.0")
    again = fleet.client.post("/api/v1/bundles", data=built.data, headers=fleet.admin,
                              content_type="application/octet-stream")
    assert again.status_code == 201 and store.exists(sha)  # it can come back


def test_removing_a_bundle_a_deployment_refers_to_is_refused_and_changes_nothing(
    cli: Cli, fleet: Fleet
) -> None:
    fleet.enroll("cam-1")
    built = fleet.bundle()
    sha = hashlib.sha256(built.data).hexdigest()
    deployment = fleet.deploy("vision:1.0.0", devices=["cam-1"], waves="100%")
    fleet.client.post(f"/api/v1/deployments/{deployment['id']}/abort", headers=fleet.admin)

    line = cli.refused("bundle", "remove", sha)
    assert f"deployment {deployment['id']} refers to it" in line
    r = fleet.client.delete(f"/api/v1/bundles/{sha}", headers=fleet.admin)
    assert r.status_code == 409

    assert _rows(fleet) == 1 and fleet.app.extensions["satchel"].store.exists(sha)


def test_only_an_admin_removes_a_bundle(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    built = fleet.bundle()
    sha = hashlib.sha256(built.data).hexdigest()
    assert fleet.client.delete(f"/api/v1/bundles/{sha}", headers=device.headers).status_code \
        == 403
    assert fleet.client.delete(f"/api/v1/bundles/{sha}").status_code == 401
    r = fleet.client.delete(f"/api/v1/bundles/{sha}", headers=fleet.admin)
    assert r.status_code == 200 and r.json["sha256"] == sha
    assert _rows(fleet) == 0
