"""Driving a manager in tests: an admin, enrolled devices that check in, bundles to deploy.

`Fleet` talks to the Flask test client exactly as the agent and an admin would over HTTP;
`SimDevice` holds a device's key and credential and builds check-in bodies in the shape
docs/API.md specifies.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from satchel.bundles.keys import SigningKey
from tests.factory.bundles import BuiltBundle, build_test_bundle
from tests.factory.keys import Keyring

DEVICE_CLASS = "edge-box"  # the class the factory's bundles are built for
_event_numbers = itertools.count(1)


def utc(t: datetime | None = None) -> str:
    return (t or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class SimDevice:
    """A simulated agent: identity, key, credential and what each channel runs."""

    device_id: str
    device_class: str
    key: SigningKey
    token: str = ""
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)

    def status(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "device_class": self.device_class,
            "channels": self.channels,
        }

    def run(self, channel: str, version: str, sequence: int, state: str = "active") -> None:
        """Pretend `version` is now the active release of `channel`."""
        releases = [r for r in self.channels.get(channel, {}).get("releases", [])]
        releases.insert(0, {"version": version, "sequence": sequence})
        self.channels[channel] = {
            "active": {"version": version, "sequence": sequence},
            "releases": releases[:3],
            "state": state,
        }

    def body(
        self, events: list[dict[str, Any]] | None = None, health: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {
            "agent_version": "0.1.0",
            "status": self.status(),
            "health": health or {},
            "events": events or [],
            "trust_root_version": 1,
        }


def event(kind: str, channel: str = "vision", sequence: int = 1, **extra: Any) -> dict[str, Any]:
    """A device event with a fresh unique id."""
    return {
        "id": f"ev-{next(_event_numbers)}",
        "kind": kind,
        "time": utc(),
        "channel": channel,
        "sequence": sequence,
        **extra,
    }


@dataclass
class Fleet:
    app: Flask
    client: FlaskClient
    keys: Keyring
    tmp: Path
    admin_token: str

    @classmethod
    def start(cls, app: Flask, client: FlaskClient, keys: Keyring, tmp: Path) -> Fleet:
        """Import the trust root and issue an admin token through the service layer."""
        from satchel.manager.services import tokens, trust

        db = app.extensions["satchel"].db
        db.run(lambda s: trust.import_roots(s, [keys.root_json]))
        token = db.run(lambda s: tokens.create_admin_token(s, "tests")).token
        return cls(app, client, keys, tmp, token)

    @property
    def admin(self) -> dict[str, str]:
        return bearer(self.admin_token)

    # --- admin actions -----------------------------------------------------------------------

    def enrollment_token(self, device_class: str | None = None, ttl_s: float = 3600) -> str:
        body: dict[str, Any] = {"kind": "enroll", "ttl_s": ttl_s}
        if device_class:
            body["device_class"] = device_class
        r = self.client.post("/api/v1/tokens", json=body, headers=self.admin)
        assert r.status_code == 201, r.json
        return str(r.json["token"])

    def enroll(self, device_id: str, device_class: str = DEVICE_CLASS) -> SimDevice:
        device = SimDevice(device_id, device_class, SigningKey.generate())
        r = self.client.post(
            "/api/v1/enroll",
            json={
                "device_id": device_id,
                "device_class": device_class,
                "arch": "x86_64",
                "agent_version": "0.1.0",
                "public_key": device.key.public.to_pem().decode(),
            },
            headers=bearer(self.enrollment_token()),
        )
        assert r.status_code == 201, r.json
        device.token = r.json["token"]
        return device

    def bundle(
        self, version: str = "1.0.0", sequence: int = 1, name: str = "vision"
    ) -> BuiltBundle:
        """Build a bundle signed by the fleet's signing key and upload it."""
        built = build_test_bundle(
            self.tmp / f"{name}-{version}.satchel",
            keys=self.keys,
            name=name,
            version=version,
            sequence=sequence,
        )
        r = self.client.post(
            "/api/v1/bundles",
            data=built.data,
            headers=self.admin,
            content_type="application/octet-stream",
        )
        assert r.status_code == 201, r.json
        return built

    def deploy(self, bundle: str, **body: Any) -> dict[str, Any]:
        r = self.client.post(
            "/api/v1/deployments", json={"bundle": bundle, **body}, headers=self.admin
        )
        assert r.status_code == 201, r.json
        return dict(r.json)

    def status(self, deployment_id: int) -> dict[str, Any]:
        r = self.client.get(f"/api/v1/deployments/{deployment_id}", headers=self.admin)
        assert r.status_code == 200, r.json
        return dict(r.json)

    # --- device actions ----------------------------------------------------------------------

    def checkin(
        self,
        device: SimDevice,
        events: list[dict[str, Any]] | None = None,
        health: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        r = self.client.post(
            f"/api/v1/devices/{device.device_id}/checkin",
            json=device.body(events, health),
            headers=device.headers,
        )
        assert r.status_code == 200, r.json
        return dict(r.json)

    def install(
        self,
        device: SimDevice,
        version: str = "1.0.0",
        sequence: int = 1,
        channel: str = "vision",
        healthy: bool = True,
    ) -> dict[str, Any]:
        """Check in as a device that downloaded, verified, smoke-tested and activated a
        release, out of probation."""
        device.run(channel, version, sequence)
        events = [event(k, channel, sequence, version=version) for k in ("downloaded", "verified")]
        events.append(
            event(
                "smoke_test",
                channel,
                sequence,
                version=version,
                passed=True,
                figures={"max_abs_error": 0.01, "p95_ms": 1.2},
            )
        )
        events.append(event("activated", channel, sequence, version=version))
        health = {channel: {"count": 100, "errors": 0 if healthy else 50, "nan": 0, "p95_ms": 2.0}}
        return self.checkin(device, events, health)

    def fail(
        self,
        device: SimDevice,
        sequence: int = 1,
        channel: str = "vision",
        kind: str = "smoke_test",
        reason: str = "max abs error 0.9 > 0.1",
    ) -> dict[str, Any]:
        extra: dict[str, Any] = {"reason": reason}
        if kind == "smoke_test":
            extra["passed"] = False
        return self.checkin(device, [event(kind, channel, sequence, **extra)])
