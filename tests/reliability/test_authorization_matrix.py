"""Who may call what, derived from the API's own description: every operation of
`/api/v1/openapi.json` x {no credentials, another device, the right device, an admin}.

The expected answer of each cell comes from the operation's `security` and its path: no
credentials is 401; a token of a kind the operation does not list is 403 (401 where only a
one-time enrollment token is accepted: any other token is not one); a device asking about
another device's data (a {device_id} path, or a bundle not released to it) is 403; the rest is
2xx. A refused call changes nothing in any table. A new endpoint is covered as soon as it is
in the document, and the document must describe every route the app serves.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from satchel.bundles import plan as stick
from satchel.bundles.keys import SigningKey
from tests.manager.helpers import Fleet
from tests.reliability.dbstate import dump
from tests.reliability.figures import Recorder
from tests.reliability.kit import sha256_of

METHODS = ("get", "put", "post", "patch", "delete")
WHO = ("none", "other", "device", "admin")
_numbers = itertools.count(1)


@dataclass(frozen=True)
class Operation:
    method: str
    template: str  # as in the document, with the servers' base: /api/v1/devices/{device_id}
    security: frozenset[str]  # security scheme names that may call it

    def expected(self, who: str) -> int | str:
        """401, 403, or "2xx"."""
        if not self.security:
            return "2xx"  # public: the API's description and its reference page
        if who == "none" or self.security == {"enrollmentToken"}:
            return 401
        kind = "adminToken" if who == "admin" else "deviceToken"
        if kind not in self.security:
            return 403
        owned = "{device_id}" in self.template or "{sha256}" in self.template
        if who == "other" and owned:
            return 403  # another device's data, or a bundle not released to it
        return "2xx"


def operations(doc: dict[str, Any]) -> list[Operation]:
    base = doc["servers"][0]["url"].rstrip("/")
    found = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                schemes = frozenset(name for req in op["security"] for name in req)
                found.append(Operation(method.upper(), base + path, schemes))
    return found


def _flask_template(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z0-9_]+)>", r"{\1}", rule)


class Matrix:
    """A manager with two devices and a deployment of a bundle to the first one."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.device = fleet.enroll("cam-1")
        self.other = fleet.enroll("cam-2")
        self.built = fleet.bundle("1.0.0", 1)
        self.sha = sha256_of(self.built.data)
        self.deployment = fleet.deploy("vision:1.0.0", devices=["cam-1"], waves="100%")["id"]
        self.headers = {"none": {}, "other": self.other.headers,
                        "device": self.device.headers, "admin": fleet.admin}
        self.token_id = 0

    def url(self, op: Operation) -> str:
        values = {"device_id": "cam-1", "sha256": self.sha, "version": "1",
                  "deployment_id": str(self.deployment), "token_id": str(self.token_id)}
        return re.sub(r"\{([a-z0-9_]+)\}", lambda m: values[m.group(1)], op.template)

    def request(self, op: Operation) -> dict[str, Any]:
        """A request the operation accepts from whoever may call it."""
        body = BODIES.get((op.method, op.template))
        return body(self) if body is not None else {}

    def prepare(self, op: Operation) -> None:
        """A deployment of its own for each deployment operation, in a state where the
        operation is possible (paused, for resume)."""
        if "{token_id}" in op.template:  # a spare admin token: the matrix's own stays valid
            r = self.fleet.client.post("/api/v1/tokens", headers=self.fleet.admin,
                                       json={"kind": "admin", "name": "spare"})
            self.token_id = r.json["id"]
        if op.method == "DELETE" and "{sha256}" in op.template:  # a bundle no deployment keeps
            n = next(_numbers)
            self.sha = sha256_of(self.fleet.bundle(f"1.2.{n}", 200 + n).data)
        if "{deployment_id}" not in op.template:
            return
        n = next(_numbers)
        self.fleet.bundle(f"1.1.{n}", 100 + n)
        self.deployment = self.fleet.deploy(f"vision:1.1.{n}", devices=["cam-1"],
                                            waves="100%")["id"]
        if op.template.endswith("/resume"):
            r = self.fleet.client.post(f"/api/v1/deployments/{self.deployment}/pause",
                                       headers=self.fleet.admin)
            assert r.status_code == 200, r.json

    def call(self, op: Operation, who: str) -> Any:
        return self.fleet.client.open(self.url(op), method=op.method,
                                      headers=self.headers[who], **self.request(op))


def _new_key() -> str:
    return SigningKey.generate().public.raw.hex()


BODIES: dict[tuple[str, str], Callable[[Matrix], dict[str, Any]]] = {
    ("POST", "/api/v1/enroll"): lambda m: {"json": {
        "device_id": f"x-{next(_numbers)}", "device_class": "edge-box",
        "public_key": _new_key()}},
    ("POST", "/api/v1/devices"): lambda m: {"json": {
        "device_id": f"usb-{next(_numbers)}", "device_class": "edge-box",
        "public_key": _new_key()}},
    ("POST", "/api/v1/devices/{device_id}/checkin"): lambda m: {"json": m.device.body()},
    ("PATCH", "/api/v1/devices/{device_id}/tags"): lambda m: {"json": {"add": ["north"]}},
    ("POST", "/api/v1/bundles"): lambda m: {"data": m.built.data,
                                            "content_type": "application/octet-stream"},
    ("POST", "/api/v1/deployments"): lambda m: {"json": {
        "bundle": "vision:1.0.0", "devices": ["cam-2"], "waves": "100%"}},
    ("POST", "/api/v1/trust"): lambda m: {"data": m.fleet.keys.root_json,
                                          "content_type": "application/json"},
    ("POST", "/api/v1/tokens"): lambda m: {"json": {"kind": "enroll"}},
    ("POST", "/api/v1/usb/reports"): lambda m: _usb_report(m),
    ("POST", "/api/v1/devices/{device_id}/samples"): lambda m: {
        "data": _capture(), "content_type": "application/octet-stream"},
    ("GET", "/api/v1/samples/export"): lambda m: _stored_capture(m),
    ("POST", "/api/v1/bundles/{sha256}/rewrap"): lambda m: {"json": {"to": ["device:cam-1"]}},
}

# The admin passes the credential check of these, and the operation then answers its own
# documented refusal for the matrix's fleet: its bundle is not encrypted, and the manager has
# no recipient key (tests/manager/test_manager_rewrap.py covers the 2xx).
ADMIN_REFUSALS: dict[tuple[str, str], int] = {
    ("POST", "/api/v1/bundles/{sha256}/rewrap"): 409,
}


def _capture() -> bytes:
    """A fresh capture file of cam-1's (issue 18), as the agent writes it."""
    import numpy as np

    from satchel.bundles.captures import encode_capture

    return encode_capture({"input": np.full((1, 4), next(_numbers), np.float32)}, {
        "channel": "vision", "version": "1.1.0", "sequence": 2, "active_version": "1.0.0",
        "active_sequence": 1, "reason": "disagreement", "captured_at": "2026-12-01T07:00:00Z",
        "figures": {}})


def _stored_capture(m: Matrix) -> dict[str, Any]:
    """The query of an export, with a capture stored for it to find (once: every cell asks)."""
    listed = m.fleet.client.get("/api/v1/samples", headers=m.fleet.admin).json["samples"]
    if listed:
        return {"query_string": {"channel": "vision", "version": "1.1.0"}}
    r = m.fleet.client.post("/api/v1/devices/cam-1/samples", data=_capture(),
                            headers=m.device.headers, content_type="application/octet-stream")
    assert r.status_code == 201, r.json
    return {"query_string": {"channel": "vision", "version": "1.1.0"}}


def _usb_report(m: Matrix) -> dict[str, Any]:
    """A report of cam-1 as `satchel-agent usb` leaves it on a stick, and where it lay."""
    report = stick.Report(report_id=f"r-{next(_numbers)}", device_id="cam-1",
                          created=datetime.now(timezone.utc).replace(microsecond=0),
                          checkin=m.device.body(), plan_id=None)
    return {"data": stick.sign_report(report, m.device.key), "query_string": {"path": report.path},
            "content_type": "application/json"}


def test_every_documented_endpoint_enforces_its_credentials(
    fleet: Fleet, measured: Recorder
) -> None:
    matrix = Matrix(fleet)
    doc = fleet.client.get("/api/v1/openapi.json", headers=fleet.admin).json
    ops = operations(doc)
    served = {(m, _flask_template(rule.rule)) for rule in fleet.app.url_map.iter_rules()
              if rule.rule.startswith("/api/v1") for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert {(op.method, op.template) for op in ops} == served, "undocumented or stale routes"
    cells = 0
    # Forgetting a device last: it is the subject of most other rows.
    for op in sorted(ops, key=lambda o: o.method == "DELETE"):
        matrix.prepare(op)
        for who in WHO:  # the admin last: it is the one cell that may change things
            want = op.expected(who)
            refusal = ADMIN_REFUSALS.get((op.method, op.template))
            before = dump(fleet.app) if want != "2xx" or refusal else None
            r = matrix.call(op, who)
            cells += 1
            where = (op.method, op.template, who, r.status_code, r.get_data()[:200])
            if want == "2xx" and refusal is not None:
                assert r.status_code == refusal and r.json["error"]["code"] not in (
                    "unauthorized", "forbidden"), where
                assert dump(fleet.app) == before, where
                continue
            if want == "2xx":
                assert 200 <= r.status_code < 300, where
                continue
            assert r.status_code == want, where
            assert r.is_json and r.json["error"]["code"] in ("unauthorized", "forbidden"), where
            assert "\n" not in r.json["error"]["message"]
            assert dump(fleet.app) == before, where
    measured.row("manager", "authorization matrix: every OpenAPI operation x {none, other "
                 f"device, right device, admin}} ({len(ops)} operations)", cells,
                 "every cell as its security says (401/403 change nothing; allowed: 2xx)")


def test_a_device_token_cannot_reach_another_device_by_any_documented_path(
    fleet: Fleet, measured: Recorder
) -> None:
    """The 'other device' column again, for every {device_id} operation, with the device id
    spelled in ways a lax router might accept."""
    matrix = Matrix(fleet)
    doc = fleet.client.get("/api/v1/openapi.json", headers=fleet.admin).json
    owned = [op for op in operations(doc)
             if "{device_id}" in op.template and "deviceToken" in op.security]
    tried = 0
    for op in owned:
        for spelled in ("cam-1", "CAM-1", "cam-1%00", "cam-1/", "%63am-1", "cam-1.."):
            before = dump(fleet.app)
            r = fleet.client.open(op.template.replace("{device_id}", spelled),
                                  method=op.method, headers=matrix.other.headers,
                                  **matrix.request(op))
            tried += 1
            assert r.status_code in (403, 404, 405, 308), (op.template, spelled, r.status_code)
            assert dump(fleet.app) == before, (op.template, spelled)
    assert tried
    measured.row("manager", "another device's data by odd spellings of its id", tried,
                 "refused (403/404), nothing changed")
