"""`satchel serve` for real: a subprocess on 127.0.0.1 (waitress, one or several workers),
configured from a TOML file and the environment, driven over HTTP like a device would."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from satchel.bundles.keys import SigningKey
from satchel.manager.config import ManagerConfig
from satchel.manager.services import tokens, trust
from tests.factory.bundles import build_test_bundle
from tests.factory.keys import Keyring

SATCHEL = Path(sys.executable).with_name("satchel")
START_TIMEOUT_S = 60


class Served:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url


def _start(config: ManagerConfig, toml: Path, workers: int) -> Served:
    env = {
        **os.environ,
        "SATCHEL_DATABASE_URL": config.database_url,
        "SATCHEL_POLL_INTERVAL_S": "30",
    }
    proc = subprocess.Popen(
        [
            str(SATCHEL),
            "--data-dir",
            str(config.data_dir),
            "serve",
            "--port",
            "0",
            "--config",
            str(toml),
            "--workers",
            str(workers),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(
            f"serve did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        )
    return Served(proc, line.split("listening on ")[1].split()[0])


@pytest.fixture(params=[1, 2], ids=["1worker", "2workers"])
def served(
    request: pytest.FixtureRequest, config: ManagerConfig, tmp_path: Path
) -> Iterator[Served]:
    toml = tmp_path / "manager.toml"
    toml.write_text("[manager]\npoll_jitter = 0.0\nthreads = 4\nlog_requests = true\n")
    s = _start(config, toml, request.param)
    try:
        yield s
    finally:
        s.proc.send_signal(signal.SIGTERM)
        try:
            s.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()


def test_device_enrolls_checks_in_and_downloads_over_http(
    served: Served, app, keys: Keyring, tmp_path: Path
) -> None:
    db = app.extensions["satchel"].db
    db.run(lambda s: trust.import_roots(s, [keys.root_json]))
    admin = {"Authorization": "Bearer " + db.run(lambda s: tokens.create_admin_token(s).token)}
    http = requests.Session()
    built = build_test_bundle(tmp_path / "b.satchel", keys=keys)
    r = http.post(f"{served.url}/api/v1/bundles", data=built.data, headers=admin, timeout=30)
    assert r.status_code == 201, r.text
    enroll = http.post(
        f"{served.url}/api/v1/tokens", json={"kind": "enroll"}, headers=admin, timeout=30
    ).json()["token"]
    r = http.post(
        f"{served.url}/api/v1/enroll",
        headers={"Authorization": f"Bearer {enroll}"},
        json={
            "device_id": "cam-1",
            "device_class": "edge-box",
            "public_key": SigningKey.generate().public.raw.hex(),
        },
        timeout=30,
    )
    device = {"Authorization": f"Bearer {r.json()['token']}"}
    http.post(
        f"{served.url}/api/v1/deployments",
        headers=admin,
        timeout=30,
        json={"bundle": "vision:1.0.0", "devices": ["cam-1"], "waves": "100%"},
    )
    body = {"status": {"device_id": "cam-1", "channels": {}}, "events": []}
    answer = http.post(
        f"{served.url}/api/v1/devices/cam-1/checkin", json=body, headers=device, timeout=30
    ).json()
    assert answer["poll_interval_s"] == 30.0  # environment, jitter 0 from the TOML file
    (offer,) = answer["install"]
    got = http.get(served.url + offer["url"], headers=device, timeout=30)
    assert (
        got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == offer["bundle_sha256"]
    )
    metrics = http.get(f"{served.url}/metrics", timeout=30).text
    assert "satchel_devices 1" in metrics
    assert 'satchel_deployments{state="active"} 1' in metrics


def test_serve_logs_one_json_line_per_request(config: ManagerConfig, tmp_path: Path) -> None:
    import json

    toml = tmp_path / "manager.toml"
    toml.write_text('[manager]\nlog_requests = true\nlog_format = "json"\n')
    s = _start(config, toml, 1)
    try:
        requests.get(f"{s.url}/api/v1/devices", timeout=30)
    finally:
        s.proc.send_signal(signal.SIGTERM)
        _, err = s.proc.communicate(timeout=20)
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    (entry,) = [x for x in lines if x.get("path") == "/api/v1/devices"]
    assert entry["status"] == 401 and entry["method"] == "GET" and entry["duration_ms"] >= 0


def test_serve_refuses_an_unknown_setting(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("[manager]\npool = 3\n")
    r = subprocess.run(
        [str(SATCHEL), "--data-dir", str(tmp_path), "serve", "--config", str(toml)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.strip().endswith("unknown setting 'pool'")
