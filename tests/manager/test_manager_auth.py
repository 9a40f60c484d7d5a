"""Who may call what: every /api/v1 endpoint x {no credentials, another device, the device
itself, an admin}. Without credentials everything answers 401 (JSON)."""

from __future__ import annotations

from typing import Any

from satchel.bundles.keys import SigningKey
from tests.manager.helpers import Fleet, SimDevice, bearer

OK = "ok"  # anything but 401/403
# who -> expected, per access rule
RULES: dict[str, dict[str, Any]] = {
    "admin": {"none": 401, "other": 403, "device": 403, "admin": OK},
    "own": {"none": 401, "other": 403, "device": OK, "admin": OK},
    "any": {"none": 401, "other": OK, "device": OK, "admin": OK},
    "device-only": {"none": 401, "other": 403, "device": OK, "admin": 403},
    "enroll-token": {"none": 401, "other": 401, "device": 401, "admin": 401},
    "public": {"none": OK, "other": OK, "device": OK, "admin": OK},  # the API's description
}


def _rows(fleet: Fleet, device: SimDevice, sha: str, dep: int) -> list[tuple[str, str, Any, str]]:
    d = device.device_id
    new_key = SigningKey.generate().public.raw.hex()
    return [
        ("GET", "/api/v1/openapi.json", None, "public"),
        ("GET", "/api/v1/docs", None, "public"),
        (
            "POST",
            "/api/v1/enroll",
            {"device_id": "x-1", "device_class": "edge-box", "public_key": new_key},
            "enroll-token",
        ),
        ("GET", "/api/v1/devices", None, "admin"),
        (
            "POST",
            "/api/v1/devices",
            {"device_id": "usb-1", "device_class": "edge-box", "public_key": new_key},
            "admin",
        ),
        ("GET", f"/api/v1/devices/{d}", None, "own"),
        ("POST", f"/api/v1/devices/{d}/checkin", device.body(), "device-only"),
        ("GET", f"/api/v1/devices/{d}/events", None, "own"),
        ("PATCH", f"/api/v1/devices/{d}/tags", {"add": ["north"]}, "admin"),
        ("GET", "/api/v1/bundles", None, "admin"),
        ("POST", "/api/v1/bundles", b"not a bundle", "admin"),
        ("GET", f"/api/v1/bundles/{sha}", None, "own"),
        ("GET", f"/api/v1/bundles/{sha}/download", None, "own"),
        ("GET", "/api/v1/deployments", None, "admin"),
        (
            "POST",
            "/api/v1/deployments",
            {"bundle": "vision:1.0.0", "devices": [d], "waves": "100%"},
            "admin",
        ),
        ("GET", f"/api/v1/deployments/{dep}", None, "admin"),
        ("POST", f"/api/v1/deployments/{dep}/pause", None, "admin"),
        ("POST", f"/api/v1/deployments/{dep}/resume", None, "admin"),
        ("POST", f"/api/v1/deployments/{dep}/abort", None, "admin"),
        ("GET", "/api/v1/trust", None, "any"),
        ("GET", "/api/v1/trust/root.json", None, "any"),
        ("GET", "/api/v1/trust/roots/1.json", None, "any"),
        ("POST", "/api/v1/trust", fleet.keys.root_json, "admin"),
        ("POST", "/api/v1/tokens", {"kind": "enroll"}, "admin"),
        ("GET", "/api/v1/tokens", None, "admin"),
        ("POST", "/api/v1/tokens/999999/revoke", None, "admin"),
        ("POST", "/api/v1/usb/plan", {}, "admin"),
        ("POST", "/api/v1/usb/reports?path=reports/x/y.json", b"{}", "admin"),
        ("POST", f"/api/v1/devices/{d}/samples", b"not a capture", "own"),
        ("GET", "/api/v1/samples", None, "admin"),
        ("GET", "/api/v1/samples/export?channel=vision&version=1.0.0", None, "admin"),
        ("POST", f"/api/v1/bundles/{sha}/rewrap", {"to": [f"device:{d}"]}, "admin"),  # 409
        ("DELETE", f"/api/v1/bundles/{sha}", None, "admin"),  # kept by a deployment: 409
        ("DELETE", f"/api/v1/devices/{d}", None, "admin"),
    ]


def test_every_endpoint_enforces_its_credentials(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    other = fleet.enroll("cam-2")
    built = fleet.bundle()
    dep = fleet.deploy("vision:1.0.0", devices=["cam-1"], waves="100%")["id"]
    headers = {"none": {}, "other": other.headers, "device": device.headers, "admin": fleet.admin}
    rows = _rows(fleet, device, _sha(built.data), dep)
    covered = set()
    for method, path, body, rule in rows:
        covered.add((method, _template(path)))
        for who in ("none", "other", "device", "admin"):
            kwargs: dict[str, Any] = {"headers": headers[who]}
            if isinstance(body, bytes):
                kwargs["data"] = body
            elif body is not None:
                kwargs["json"] = body
            r = fleet.client.open(path, method=method, **kwargs)
            want = RULES[rule][who]
            if want == OK:
                assert r.status_code not in (401, 403), (method, path, who, r.json)
            else:
                assert r.status_code == want, (method, path, who, r.status_code, r.json)
                assert r.is_json and r.json["error"]["code"] in ("unauthorized", "forbidden")
    assert covered == _api_routes(fleet), "the auth matrix must cover every API route"


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _template(path: str) -> str:
    parts = path.split("?")[0].split("/")
    out = []
    for i, p in enumerate(parts):
        prev = parts[i - 1] if i else ""
        if prev == "devices" and p:
            out.append("<device_id>")
        elif prev == "bundles" and len(p) == 64:
            out.append("<sha256>")
        elif prev == "deployments" and p.isdigit():
            out.append("<int:deployment_id>")
        elif prev == "tokens" and p.isdigit():
            out.append("<int:token_id>")
        elif prev == "roots" and p.endswith(".json"):
            out.append("<int:version>.json")
        else:
            out.append(p)
    return "/".join(out)


def _api_routes(fleet: Fleet) -> set[tuple[str, str]]:
    routes = set()
    for rule in fleet.app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                routes.add((method, rule.rule))
    return routes


def test_bad_credentials_answer_401_json(fleet: Fleet) -> None:
    for header in [
        "",
        "Bearer",
        "Basic abc",
        "Bearer sat_admin_nope",
        "Bearer sat_dev_nope",
        "Bearer garbage",
    ]:
        r = fleet.client.get("/api/v1/devices", headers={"Authorization": header} if header else {})
        assert r.status_code == 401, header
        assert r.json["error"]["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_admin_token_is_refused(fleet: Fleet) -> None:
    r = fleet.client.post(
        "/api/v1/tokens", json={"kind": "admin", "name": "temp"}, headers=fleet.admin
    )
    token, token_id = r.json["token"], r.json["id"]
    assert fleet.client.get("/api/v1/devices", headers=bearer(token)).status_code == 200
    from datetime import datetime, timezone

    from satchel.manager.services import tokens

    db = fleet.app.extensions["satchel"].db
    db.run(lambda s: tokens.revoke_admin_token(s, token_id, datetime.now(timezone.utc)))
    assert fleet.client.get("/api/v1/devices", headers=bearer(token)).status_code == 401
    assert fleet.client.get("/api/v1/devices", headers=fleet.admin).status_code == 200


def test_device_cannot_read_an_unassigned_bundle(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    built = fleet.bundle()
    r = fleet.client.get(f"/api/v1/bundles/{_sha(built.data)}/download", headers=device.headers)
    assert r.status_code == 403
