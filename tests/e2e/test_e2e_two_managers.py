"""Two managers, one fleet: `satchel serve` twice on separate data dirs, sharing one
PostgreSQL and one S3-compatible object store (SeaweedFS), with devices behind one address
(a round-robin TCP front that skips a manager that is down).

A bundle uploaded through manager A is downloaded by a real agent that only knows manager B;
a rollout over four devices starts, manager A is killed (SIGKILL) as its second wave is
released, and manager B finishes it: every device serves the release, and every event is
recorded once. Nothing of the bundle lies on either manager's disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.e2e.commands import wait_for
from tests.e2e.kit import Kit, expected_outputs, positive
from tests.e2e.sites import ManagerProcess, Site
from tests.manager.databases import drop_pg_database, fresh_pg_database
from tests.objectstore import ObjectStore

pytestmark = pytest.mark.postgres
VERSION = "1.0.0"  # kit.v1: vision 1.0.0, sequence 100, probation 1 s


class JoiningManager(ManagerProcess):
    """A second manager on a database another has set up: no upgrade, no trust import;
    an admin token of its own."""

    def __init__(self, data_dir: Path, kit: Kit, env: dict[str, str]) -> None:
        self.data_dir, self.kit, self.env = data_dir, kit, env
        self.port, self.proc, self.added = 0, None, set()
        self.admin = self.cli("token", "create", "--admin").stdout.strip().splitlines()[-1]
        self.start()


class Front:
    """One address for several managers: each connection goes to the next manager in turn
    that accepts it (what a load balancer with health checks does)."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self._turn = itertools.count()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        start = next(self._turn)
        for i in range(len(self.backends)):
            port = self.backends[(start + i) % len(self.backends)]
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                continue
            upstream.settimeout(None)
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
            _pipe(client, upstream)
            return
        client.close()

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


@pytest.fixture
def shared_env(pg_admin_url: str, object_store: ObjectStore) -> Iterator[dict[str, str]]:
    """The settings both managers share: one PostgreSQL database, one bucket prefix
    (downloads proxied by the managers, so manager B itself reads what A stored)."""
    name, url = fresh_pg_database(pg_admin_url)
    yield {**object_store.environ(f"two-{uuid.uuid4().hex[:8]}"), "SATCHEL_DATABASE_URL": url}
    drop_pg_database(pg_admin_url, name)


@pytest.fixture
def managers(kit: Kit, shared_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[tuple[ManagerProcess, ManagerProcess]]:
    a = ManagerProcess(tmp_path_factory.mktemp("manager-a"), kit, shared_env)
    b = JoiningManager(tmp_path_factory.mktemp("manager-b"), kit, shared_env)
    yield a, b
    for m in (a, b):
        m.stop()
        assert "Traceback" not in (m.data_dir / "serve.log").read_text()


def test_a_bundle_added_at_one_manager_rolls_out_through_the_other_after_the_first_is_killed(
    site: Site, kit: Kit, managers: tuple[ManagerProcess, ManagerProcess]
) -> None:
    a, b = managers
    front = Front([a.port, b.port])
    try:
        # uploaded through A's HTTP API
        data = kit.v1.read_bytes()
        r = requests.post(f"{a.url}/api/v1/bundles", data=data, timeout=60,
                          headers={"Authorization": f"Bearer {a.admin}",
                                   "Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        sha = hashlib.sha256(data).hexdigest()
        assert b.api(f"/api/v1/bundles/{sha}")["version"] == VERSION

        canary = site.device("cam-b", b)  # knows manager B only
        others = [site.device(f"cam-{i}", a, url=front.url) for i in range(1, 4)]
        devices = ["cam-b"] + [f"cam-{i}" for i in range(1, 4)]
        dep = a.deploy(f"vision:{VERSION}", devices, "1,100%")  # the first named is the canary

        wait_for(lambda: canary.serving_version("vision") == VERSION, 90,
                 "the canary (manager B only) serving the bundle added at manager A")
        wait_for(lambda: b.api(f"/api/v1/deployments/{dep}")["current_wave"] == 1, 60,
                 "the second wave released")
        a.proc.kill()  # mid-rollout: no goodbye  # type: ignore[union-attr]
        a.proc.wait()  # type: ignore[union-attr]
        a.proc = None

        wait_for(lambda: b.api(f"/api/v1/deployments/{dep}")["state"] == "completed", 120,
                 "manager B finishing the rollout")
        for agent in [canary, *others]:
            wait_for(lambda agent=agent: agent.serving_version("vision") == VERSION, 60,
                     "every device serving the release")
        x = positive(3, seed=7)
        np.testing.assert_allclose(others[-1].infer("vision", x), expected_outputs(kit.good, x),
                                   rtol=1e-4, atol=1e-5)
        for device_id in devices:
            events = b.events(device_id)
            ids = [e["id"] for e in events]
            assert len(ids) == len(set(ids)), f"{device_id}: an event recorded twice"
            kinds = [e["kind"] for e in events if e.get("sequence") == 100]
            assert kinds.count("activated") == 1, (device_id, kinds)
        for m in (a, b):
            assert not (m.data_dir / "store").exists()  # the bundle lives in the store only
    finally:
        front.close()
