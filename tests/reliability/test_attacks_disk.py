"""The manager's disk runs out, for real (root only: a tmpfs filled to its last byte, a file
size limit), under a real agent and the real `satchel` command.

- The database's filesystem full during check-ins: each is refused with a 503 naming the disk
  and saying when to come back; the agent keeps its events and, once there is room, delivers
  every one exactly once.
- The bundle store's filesystem full, or the store write past the process's file size limit:
  `satchel bundle add` says it cannot write to the store (not that it cannot read the
  bundle), in one line, and leaves no file in the store.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from satchel.agent.errors import ManagerUnreachableError
from satchel.agent.sync.credentials import require_credentials
from satchel.agent.sync.enroll import enroll_device
from tests.factory.keys import Keyring
from tests.manager.disks import fill, tmpfs
from tests.reliability.figures import Recorder
from tests.reliability.kit import CFG, Site
from tests.service.devices import Models
from tests.service.live_manager import Manager

AREA = "manager"
SATCHEL = Path(sys.executable).with_name("satchel")
EVENTS = 400  # events queued while the manager's disk is full


@pytest.fixture
def manager_on_tmpfs(tmp_path: Path, keys: Keyring, sqlite_template: Path) -> Iterator[Manager]:
    """A real manager (HTTP on 127.0.0.1, SQLite) whose data directory is a 16 MiB tmpfs."""
    with tmpfs(tmp_path / "manager", "16m") as data_dir:
        shutil.copyfile(sqlite_template, data_dir / "satchel.db")
        manager = Manager(data_dir, keys)
        try:
            yield manager
        finally:
            manager.close()


def _all_events(manager: Manager, device_id: str) -> list[dict[str, Any]]:
    return list(manager.call("GET", f"/api/v1/devices/{device_id}/events?limit=10000")["events"])


def test_a_full_disk_under_the_manager_refuses_check_ins_and_loses_no_event(
    site: Site, manager_on_tmpfs: Manager, measured: Recorder
) -> None:
    manager = manager_on_tmpfs
    enroll_device(site.state, manager.url, manager.enroll_token(), config=CFG)
    loop = site.loop()
    loop.once()  # settled: the state is known, the next check-ins may take the fast path
    queue = site.events()
    queued = [queue.append("heartbeat", channel="vision", sequence=i)["id"]
              for i in range(EVENTS)]
    filler = fill(manager.app.extensions["satchel"].config.data_dir)

    refused = 0
    for _ in range(3):
        with pytest.raises(ManagerUnreachableError, match="answered 503") as info:
            loop.once()
        assert "database is full" in str(info.value)
        refused += 1
    credentials = require_credentials(site.state)
    probe = {"id": "probe-1", "kind": "heartbeat", "time": "2026-01-01T00:00:00Z",
             "reason": "x" * 2000}
    body: dict[str, Any] = {"status": {"device_id": site.device_id, "channels": {}},
                            "events": [probe]}
    r = requests.post(manager.url + credentials.checkin_url, json=body, timeout=30,
                      headers={"Authorization": f"Bearer {credentials.token}"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "disk_full"
    assert int(r.headers["Retry-After"]) > 0
    assert {e["id"] for e in queue.pending()} >= set(queued)  # the device kept every one

    filler.unlink()
    for _ in range(10):  # one batch per check-in; a few are enough
        if not queue.pending():
            break
        loop.once()
    assert not queue.pending()
    delivered = Counter(e["id"] for e in _all_events(manager, site.device_id))
    lost = [i for i in queued if delivered[i] == 0]
    assert not lost and all(delivered[i] == 1 for i in queued)  # each exactly once
    assert delivered["probe-1"] == 0  # the refused request recorded nothing
    measured.row(AREA, "manager's database disk full (tmpfs filled) while a device checks "
                 f"in {EVENTS} queued events", refused + 1,
                 "refused: 503 disk_full with Retry-After; every event recorded exactly once "
                 "after space was freed", len(lost))


def _bundle_add(data_dir: Path, bundle: Path,
                file_size_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if file_size_limit is not None:  # a write past it fails with EFBIG, not a signal
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [str(SATCHEL), "--data-dir", str(data_dir), "bundle", "add", str(bundle)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")},
             "SATCHEL_CONFIG": "", "SATCHEL_DATABASE_URL": ""},
        preexec_fn=limit,
    )


def _store_files(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*") if p.is_file()) if store.is_dir() else []


def test_bundle_add_to_a_full_store_says_cannot_write_and_leaves_no_file(
    site: Site, real_manager: Manager, models: Models, measured: Recorder
) -> None:
    data_dir = real_manager.app.extensions["satchel"].config.data_dir
    bundle = site.bundle(models.good, "1.0.0", 10)
    with tmpfs(data_dir / "store", "1m") as store:
        filler = fill(store)
        done = _bundle_add(data_dir, bundle)
        assert done.returncode == 1, done.stderr
        assert done.stderr.splitlines() == [
            f"error: cannot write to the bundle store {store}: No space left on device"]
        assert _store_files(store) == [filler]
        assert real_manager.call("GET", "/api/v1/bundles")["bundles"] == []
        filler.unlink()
        again = _bundle_add(data_dir, bundle)
        assert again.returncode == 0, again.stderr
        assert [p.parent.parent.name for p in _store_files(store)] == ["sha256"]
    measured.row(AREA, "`satchel bundle add` to a bundle store whose disk is full (tmpfs)", 1,
                 "refused: cannot write to the bundle store (ENOSPC), one line, exit 1; no "
                 "file left, no row", 0)


def test_bundle_add_past_the_file_size_limit_says_cannot_write_and_leaves_no_file(
    site: Site, real_manager: Manager, models: Models, measured: Recorder
) -> None:
    data_dir = real_manager.app.extensions["satchel"].config.data_dir
    bundle = site.bundle(models.big, "1.0.0", 10)
    limit = 1024 * 1024  # bytes: more than the database writes, less than the bundle
    assert bundle.stat().st_size > limit and (data_dir / "satchel.db").stat().st_size < limit
    done = _bundle_add(data_dir, bundle, file_size_limit=limit)
    assert done.returncode == 1, done.stderr
    store = data_dir / "store"
    assert done.stderr.splitlines() == [
        f"error: cannot write to the bundle store {store}: File too large"]
    assert _store_files(store) == []
    assert real_manager.call("GET", "/api/v1/bundles")["bundles"] == []
    measured.row(AREA, "`satchel bundle add` whose store write passes RLIMIT_FSIZE", 1,
                 "refused: cannot write to the bundle store (EFBIG), one line, exit 1; no "
                 "file left, no row", 0)
