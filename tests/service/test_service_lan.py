"""The LAN client against a real manager on 127.0.0.1: enrollment, check-ins that deliver
each event once, installs with their events, trust root rotation, and a network that
fails: cut downloads, silent or failing managers, revoked credentials."""

from __future__ import annotations

import hashlib
import socket
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from satchel.agent.config import AgentConfig
from satchel.agent.errors import (
    AlreadyEnrolledError,
    CredentialRejectedError,
    DownloadError,
    ManagerRefusedError,
    ManagerUnreachableError,
    StateCorruptError,
)
from satchel.agent.event_queue import EventQueue
from satchel.agent.health.stats import HealthStats
from satchel.agent.state import DeviceState
from satchel.agent.sync.checkin import CheckinLoop
from satchel.agent.sync.client import ManagerClient, Offer, with_retries
from satchel.agent.sync.credentials import credentials_path, load_credentials, require_credentials
from satchel.agent.sync.enroll import enroll_device
from satchel.agent.sync.trust_roots import accept_roots, trusted_root
from satchel.bundles.errors import RootRotationError
from satchel.bundles.keys import SigningKey
from tests.factory.keys import next_root
from tests.service.devices import FAST, Device, Models
from tests.service.drop_proxy import DropProxy
from tests.service.live_manager import Manager


def _no_health(_key: object) -> HealthStats:
    return HealthStats()


def _enrolled(device: Device, manager: Manager, url: str | None = None) -> CheckinLoop:
    enroll_device(device.state_dir, url or manager.url, manager.enroll_token(), config=FAST)
    return CheckinLoop(device.state_dir, EventQueue(device.state_dir, FAST), _no_health,
                       threading.Event(), config=FAST)


# --- enrollment ---------------------------------------------------------------------------


def test_enrollment_keeps_the_credential_readable_by_the_agent_only(
    device: Device, manager: Manager
) -> None:
    result = enroll_device(device.state_dir, manager.url, manager.enroll_token(), config=FAST)

    credentials = load_credentials(device.state_dir)
    assert credentials is not None and credentials.token.startswith("sat_dev_")
    assert stat.S_IMODE(credentials_path(device.state_dir).stat().st_mode) == 0o600
    assert result.device_id == "dev-1" and result.trust_root_version == 1
    shown = manager.device("dev-1")
    assert shown["device_class"] == "edge-box"


def test_enrolling_twice_is_refused_without_force(device: Device, manager: Manager) -> None:
    enroll_device(device.state_dir, manager.url, manager.enroll_token(), config=FAST)
    before = credentials_path(device.state_dir).read_bytes()

    with pytest.raises(AlreadyEnrolledError):
        enroll_device(device.state_dir, manager.url, manager.enroll_token(), config=FAST)

    assert credentials_path(device.state_dir).read_bytes() == before


def test_a_used_enrollment_token_is_refused_and_nothing_is_stored(
    tmp_path: Path, device: Device, manager: Manager
) -> None:
    token = manager.enroll_token()
    enroll_device(device.state_dir, manager.url, token, config=FAST)
    from tests.service.devices import make_device

    other = make_device(tmp_path, device.keys, "dev-2")

    with pytest.raises(ManagerRefusedError) as refused:
        enroll_device(other.state_dir, manager.url, token, config=FAST)

    assert refused.value.status == 401
    assert "\n" not in str(refused.value)
    assert load_credentials(other.state_dir) is None


def test_a_credential_readable_by_others_is_not_used(device: Device, manager: Manager) -> None:
    enroll_device(device.state_dir, manager.url, manager.enroll_token(), config=FAST)
    credentials_path(device.state_dir).chmod(0o644)

    with pytest.raises(StateCorruptError, match="readable by other users"):
        load_credentials(device.state_dir)


# --- check-ins ----------------------------------------------------------------------------


def test_checkin_delivers_queued_events_once_and_then_forgets_them(
    device: Device, manager: Manager
) -> None:
    loop = _enrolled(device, manager)
    sent = [loop.events.append("serving", channel="vision", sequence=i) for i in range(3)]

    loop.once()
    assert loop.events.pending() == []
    later = loop.events.append("serving", channel="vision", sequence=9)
    loop.once()

    on_manager = [e["id"] for e in manager.events("dev-1") if e["kind"] == "serving"]
    assert sorted(on_manager) == sorted([*(e["id"] for e in sent), later["id"]])
    assert loop.events.pending() == []


def test_a_resent_event_is_recorded_once(device: Device, manager: Manager) -> None:
    loop = _enrolled(device, manager)
    event = loop.events.append("activated", channel="vision", sequence=1)
    client = ManagerClient(manager.url, require_credentials(device.state_dir).token, config=FAST)
    body = {"status": DeviceState(device.state_dir).status(), "events": [event]}

    first = client.checkin("/api/v1/devices/dev-1/checkin", body)
    again = client.checkin("/api/v1/devices/dev-1/checkin", body)  # the answer was lost

    assert (first.recorded, again.recorded, again.duplicate) == (1, 0, 1)
    assert [e["id"] for e in manager.events("dev-1")] == [event["id"]]


def test_an_offer_is_downloaded_installed_and_reported_with_every_event(
    device: Device, manager: Manager, models: Models
) -> None:
    loop = _enrolled(device, manager)
    sha = manager.add_bundle(device.bundle(models.good, "1.0.0", 10))
    deployment = manager.deploy("vision:1.0.0", ["dev-1"])

    loop.once()  # offered: downloads, installs
    loop.once()  # reports

    active = DeviceState(device.state_dir).active_release("vision")
    assert active is not None and active.version == "1.0.0"
    kinds = [e["kind"] for e in sorted(manager.events("dev-1"), key=lambda e: e["id"])]
    assert kinds == ["downloaded", "verified", "smoke_test", "activated"]
    by_kind = {e["kind"]: e for e in manager.events("dev-1")}
    assert {"downloaded", "verified", "smoke_test", "activated"} <= set(by_kind)
    smoke = by_kind["smoke_test"]
    assert smoke["passed"] is True and smoke["bundle_sha256"] == sha
    assert smoke["deployment_id"] == deployment
    assert {"max_abs_error", "p50_ms", "p95_ms", "load_ms", "tests"} <= set(smoke["figures"])
    assert manager.deployment(deployment)["state"] == "completed"
    assert not (device.state_dir / "downloads" / f"{sha}.satchel").exists()


def test_a_failing_smoke_test_reports_its_figures_and_changes_nothing(
    device: Device, manager: Manager, models: Models
) -> None:
    loop = _enrolled(device, manager)
    manager.add_bundle(device.bundle(models.good, "1.0.0", 10, wrong_reference=True))
    deployment = manager.deploy("vision:1.0.0", ["dev-1"])

    loop.once()
    loop.once()

    assert DeviceState(device.state_dir).channels() == []
    by_kind = {e["kind"]: e for e in manager.events("dev-1")}
    assert by_kind["smoke_test"]["passed"] is False
    assert by_kind["smoke_test"]["figures"]["max_abs_error"] > 1
    assert "smoke test" in by_kind["install_failed"]["reason"]
    assert manager.deployment(deployment)["state"] == "halted"


def test_an_offer_not_above_the_active_sequence_is_skipped_silently(
    device: Device, manager: Manager, models: Models
) -> None:
    loop = _enrolled(device, manager)
    device.cli("install", str(device.bundle(models.good, "2.0.0", 20)))
    pending = len(loop.events)
    client = ManagerClient(manager.url, "unused", config=FAST)
    stale = Offer("vision", "1.0.0", 20, "a" * 64, 100, "/nowhere", 1)

    assert loop._apply(client, stale) is False  # noqa: SLF001 - the race the API describes

    assert len(loop.events) == pending


def test_a_revoked_credential_is_reported_as_such(device: Device, manager: Manager) -> None:
    loop = _enrolled(device, manager)
    manager.call("DELETE", "/api/v1/devices/dev-1", 204)

    with pytest.raises(CredentialRejectedError, match="enroll it again"):
        loop.once()


# --- trust roots --------------------------------------------------------------------------


def test_the_trust_root_walks_forward_one_version_at_a_time(
    device: Device, manager: Manager, models: Models
) -> None:
    keys = device.keys
    new_signing = SigningKey.generate()
    v2 = next_root(keys.root, root_keys=keys.root_keys, signing_keys=[new_signing],
                   signed_by=keys.root_keys)
    from satchel.bundles.trust import load_root

    v3 = next_root(load_root(v2), root_keys=keys.root_keys, signing_keys=[new_signing],
                   signed_by=keys.root_keys)
    manager.import_root(v2)
    manager.import_root(v3)
    loop = _enrolled(device, manager)  # enrollment already walks it

    assert trusted_root(device.state_dir).version == 3
    manager.add_bundle(device.bundle(models.good, "1.0.0", 10, signer=new_signing))
    manager.deploy("vision:1.0.0", ["dev-1"])
    loop.once()
    assert DeviceState(device.state_dir).active_release("vision") is not None


def test_a_root_not_signed_by_the_trusted_root_keys_is_refused(device: Device) -> None:
    keys = device.keys
    stranger = SigningKey.generate()
    forged = next_root(keys.root, root_keys=[stranger], signing_keys=[stranger],
                       signed_by=[stranger])
    before = DeviceState(device.state_dir).layout.trust.read_bytes()

    with pytest.raises(RootRotationError):
        accept_roots(device.state_dir, {2: forged})

    assert DeviceState(device.state_dir).layout.trust.read_bytes() == before


def test_a_gap_in_the_root_chain_is_refused(device: Device) -> None:
    keys = device.keys
    v2 = next_root(keys.root, root_keys=keys.root_keys, signing_keys=keys.signing_keys,
                   signed_by=keys.root_keys)
    from satchel.bundles.trust import load_root

    v3 = next_root(load_root(v2), root_keys=keys.root_keys, signing_keys=keys.signing_keys,
                   signed_by=keys.root_keys)

    with pytest.raises(RootRotationError, match="skips"):
        accept_roots(device.state_dir, {3: v3})

    assert trusted_root(device.state_dir).version == 1


# --- downloads on a bad network -----------------------------------------------------------


def test_a_download_cut_three_times_resumes_and_arrives_whole(
    device: Device, manager: Manager, models: Models
) -> None:
    path = device.bundle(models.big, "1.0.0", 10)
    sha = manager.add_bundle(path)
    proxy = DropProxy(int(manager.url.rsplit(":", 1)[1]), after_bytes=600_000, drops=3)
    try:
        loop = _enrolled(device, manager, url=proxy.url)
        manager.deploy("vision:1.0.0", ["dev-1"])
        (offer,) = loop._client_for(require_credentials(device.state_dir)).checkin(  # noqa: SLF001
            "/api/v1/devices/dev-1/checkin",
            {"status": DeviceState(device.state_dir).status()},
        ).install
        client = ManagerClient(proxy.url, require_credentials(device.state_dir).token,
                               config=FAST)

        got = client.download(offer, device.work / "dl")
    finally:
        proxy.close()

    assert proxy.cut == 3 and got.resumes == 3
    assert hashlib.sha256(got.path.read_bytes()).hexdigest() == sha == offer.bundle_sha256
    assert got.path.read_bytes() == path.read_bytes()


def test_a_partial_file_that_is_not_a_prefix_is_discarded_not_installed(
    device: Device, manager: Manager, models: Models
) -> None:
    loop = _enrolled(device, manager)
    path = device.bundle(models.good, "1.0.0", 10)
    sha = manager.add_bundle(path)
    manager.deploy("vision:1.0.0", ["dev-1"])
    downloads = device.state_dir / "downloads"
    downloads.mkdir()
    (downloads / f"{sha}.part").write_bytes(b"\0" * 1000)  # damaged by a disk fault

    loop.once()
    loop.once()

    failed = [e for e in manager.events("dev-1") if e["kind"] == "install_failed"]
    assert failed and "does not match" in failed[0]["reason"]
    assert DeviceState(device.state_dir).channels() == []
    assert not list(downloads.iterdir())


def test_a_file_other_than_announced_is_refused(
    device: Device, manager: Manager, models: Models
) -> None:
    _enrolled(device, manager)
    sha = manager.add_bundle(device.bundle(models.good, "1.0.0", 10))
    manager.deploy("vision:1.0.0", ["dev-1"])
    client = ManagerClient(manager.url, require_credentials(device.state_dir).token, config=FAST)
    lying = Offer("vision", "1.0.0", 10, "b" * 64, 9216,
                  f"/api/v1/bundles/{sha}/download", 1)

    with pytest.raises(DownloadError, match="does not match"):
        client.download(lying, device.work / "dl")

    assert list((device.work / "dl").iterdir()) == []


class _Failing(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        type(self).calls += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_failing_manager_is_retried_with_backoff_then_given_up(device: Device) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = ManagerClient(f"http://127.0.0.1:{server.server_port}", config=FAST)
    try:
        with pytest.raises(ManagerUnreachableError, match="503"):
            with_retries(lambda: client.enroll("sat_enroll_x", {}), FAST, what="enrollment")
    finally:
        server.shutdown()
        server.server_close()

    assert _Failing.calls == FAST.retry_attempts


def test_a_manager_that_never_answers_times_out() -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    config = AgentConfig(connect_timeout_s=1.0, read_timeout_s=0.3)
    client = ManagerClient(f"http://127.0.0.1:{silent.getsockname()[1]}", "t", config=config)
    try:
        with pytest.raises(ManagerUnreachableError, match="timed out"):
            client.checkin("/api/v1/devices/dev-1/checkin", {})
    finally:
        silent.close()


def test_the_loop_backs_off_while_the_manager_is_away_and_recovers(
    device: Device, manager: Manager
) -> None:
    loop = _enrolled(device, manager)
    event = loop.events.append("rolled_back", channel="vision", sequence=1, reason="health")
    loop.manager_url = "http://127.0.0.1:9"  # nothing listens there

    delays = [loop._round() for _ in range(3)]  # noqa: SLF001
    assert all(0 < d <= FAST.backoff_max_s * 1.5 for d in delays)
    assert [e["id"] for e in loop.events.pending()] == [event["id"]]

    loop.manager_url = None
    loop._round()  # noqa: SLF001
    assert [e["id"] for e in manager.events("dev-1")] == [event["id"]]
    assert loop.events.pending() == []


def test_backoff_doubles_up_to_its_cap_with_jitter_around_it() -> None:
    from satchel.agent.sync.client import Backoff

    exact = Backoff(AgentConfig(backoff_base_s=1, backoff_max_s=10, backoff_jitter=0))
    assert [exact.next_delay() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    spread = Backoff(AgentConfig(backoff_base_s=1, backoff_max_s=10, backoff_jitter=0.5))
    delays = [spread.next_delay() for _ in range(40)][5:]
    assert all(5 <= d <= 15 for d in delays) and len(set(delays)) > 1


def test_a_backlog_larger_than_one_check_in_is_sent_in_rounds_back_to_back(
    device: Device, manager: Manager
) -> None:
    from dataclasses import replace

    loop = _enrolled(device, manager)
    loop.config = replace(FAST, events_per_checkin=4)
    sent = [loop.events.append("serving", channel="vision", sequence=i) for i in range(10)]

    delays = [loop.once() for _ in range(3)]

    assert delays[:2] == [0.0, 0.0] and delays[2] > 0  # no waiting while a backlog remains
    got = sorted(e["id"] for e in manager.events("dev-1"))
    assert got == sorted(e["id"] for e in sent)
