"""A real manager for the agent service tests: the Flask app over HTTP on 127.0.0.1 (SQLite),
driven through its REST API as an admin script would."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import requests
from werkzeug.serving import make_server

from satchel.manager.app import create_app
from satchel.manager.services import tokens, trust
from tests.factory.keys import Keyring


class Manager:
    """The manager app served over HTTP on 127.0.0.1, driven through its REST API."""

    def __init__(self, data_dir: Path, keys: Keyring) -> None:
        self.app = create_app({"data_dir": data_dir, "database_url": "",
                               "log_requests": False, "poll_interval_s": 0.2,
                               "poll_jitter": 0.0, "TESTING": True})
        db = self.app.extensions["satchel"].db
        db.run(lambda s: trust.import_roots(s, [keys.root_json]))
        self.admin = {"Authorization": "Bearer "
                      + db.run(lambda s: tokens.create_admin_token(s, "tests")).token}
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.http = requests.Session()
        self._thread = threading.Thread(
            target=lambda: self.server.serve_forever(poll_interval=0.05), daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self._thread.join(10)
        self.server.server_close()
        self.http.close()
        self.app.extensions["satchel"].db.dispose()

    def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        r = self.http.request(method, self.url + path, headers=self.admin, timeout=30,
                              **kwargs)
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def add_bundle(self, path: Path) -> str:
        return str(self.call("POST", "/api/v1/bundles", 201, data=path.read_bytes())["sha256"])

    def enroll_token(self) -> str:
        return str(self.call("POST", "/api/v1/tokens", 201, json={"kind": "enroll"})["token"])

    def deploy(self, bundle: str, devices: list[str], waves: str = "100%") -> int:
        body = {"bundle": bundle, "devices": devices, "waves": waves}
        return int(self.call("POST", "/api/v1/deployments", 201, json=body)["id"])

    def deployment(self, deployment_id: int) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/v1/deployments/{deployment_id}"))

    def events(self, device_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/api/v1/devices/{device_id}/events?limit=1000")["events"])

    def device(self, device_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/v1/devices/{device_id}"))

    def import_root(self, data: bytes) -> None:
        self.call("POST", "/api/v1/trust", data=data)
