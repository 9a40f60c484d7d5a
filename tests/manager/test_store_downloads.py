"""Downloads from a manager whose bundles are in an object store (SeaweedFS on 127.0.0.1):
proxied with the folder's Range, ETag and If-Range answers, or handed to the store with a
pre-signed redirect that the agent follows only to an origin its offer names, resuming."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import itertools
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask

from satchel.agent.config import AgentConfig
from satchel.agent.errors import DownloadError, ManagerUnreachableError
from satchel.agent.sync.client import ManagerClient
from satchel.bundles.offer import Offer
from satchel.bundles.plan import bundle_file
from satchel.manager.config import ManagerConfig, load_config
from satchel.manager.store.s3 import S3Store
from tests.manager.admin_cli import Cli
from tests.manager.helpers import Fleet
from tests.manager.live_server import LiveServer
from tests.objectstore import ObjectStore

AGENT_CONFIG = AgentConfig(backoff_base_s=0.05, backoff_max_s=0.2, download_stalls=2)


@pytest.fixture
def config(tmp_path: Path, sqlite_template: Path, object_store: ObjectStore,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[ManagerConfig]:
    """A manager on SQLite whose bundles are in the object store, under a prefix of its own;
    the credentials only in the standard AWS variables."""
    for name, value in object_store.environ().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copyfile(sqlite_template, data_dir / "satchel.db")
    yield load_config(environ={}, data_dir=data_dir, database_url="", log_requests=False,
                      store=f"s3://{object_store.bucket}/m-{uuid.uuid4().hex[:8]}")


def _presign(app: Flask, **changes: object) -> None:
    st = app.extensions["satchel"]
    st.config = dataclasses.replace(st.config, store_presign=True, **changes)


def _deployed(fleet: Fleet, device_id: str = "cam-1") -> tuple[str, bytes, dict[str, str],
                                                                  Offer]:
    """A bundle deployed to a new device: its sha256, bytes, the device's token and the
    offer of its first check-in."""
    device = fleet.enroll(device_id)
    built = fleet.bundle()
    fleet.deploy("vision:1.0.0", devices=[device_id], waves="100%")
    (offer,) = fleet.checkin(device)["install"]
    return hashlib.sha256(built.data).hexdigest(), built.data, device.headers, \
        Offer.from_dict(offer)


def test_an_uploaded_bundle_lands_in_the_object_store_not_on_the_manager(
    fleet: Fleet, config: ManagerConfig
) -> None:
    built = fleet.bundle()
    sha = hashlib.sha256(built.data).hexdigest()
    store = fleet.app.extensions["satchel"].store
    assert isinstance(store, S3Store) and store.exists(sha)
    assert not (config.data_dir / "store").exists()
    assert list((config.data_dir / "spool").iterdir()) == []  # the upload's spool is gone


def test_proxied_download_resumes_with_range_and_if_range_and_revalidates_with_etag(
    fleet: Fleet, live_server: LiveServer
) -> None:
    built = fleet.bundle()
    sha = hashlib.sha256(built.data).hexdigest()
    url = f"{live_server.url}/api/v1/bundles/{sha}/download"
    h = fleet.admin
    full = requests.get(url, headers=h, timeout=10)
    assert full.status_code == 200 and full.content == built.data
    etag = full.headers["ETag"]
    assert etag == f'"{sha}"' and full.headers["Accept-Ranges"] == "bytes"
    size = len(built.data)
    cuts = [0, size // 3, 2 * size // 3, size]
    pieces = []
    for start, end in itertools.pairwise(cuts):
        r = requests.get(
            url, headers={**h, "Range": f"bytes={start}-{end - 1}", "If-Range": etag}, timeout=10
        )
        assert r.status_code == 206
        assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
        pieces.append(r.content)
    assert b"".join(pieces) == built.data
    open_ended = requests.get(url, headers={**h, "Range": f"bytes={size - 10}-"}, timeout=10)
    assert open_ended.status_code == 206 and open_ended.content == built.data[-10:]
    stale = requests.get(
        url, headers={**h, "Range": "bytes=0-9", "If-Range": '"other"'}, timeout=10
    )
    assert stale.status_code == 200 and stale.content == built.data
    dated = requests.get(url, headers={**h, "Range": "bytes=0-9",
                                       "If-Range": "Tue, 01 Dec 2026 00:00:00 GMT"}, timeout=10)
    assert dated.status_code == 200 and dated.content == built.data
    cached = requests.get(url, headers={**h, "If-None-Match": etag}, timeout=10)
    assert cached.status_code == 304 and cached.content == b""
    beyond = requests.get(url, headers={**h, "Range": f"bytes={size + 5}-"}, timeout=10)
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{size}"


def test_without_presign_the_offer_names_no_origin_and_the_device_is_proxied(
    fleet: Fleet
) -> None:
    sha, data, headers, offer = _deployed(fleet)
    assert offer.origins == ()
    r = fleet.client.get(f"/api/v1/bundles/{sha}/download", headers=headers)
    assert r.status_code == 200 and r.data == data


def test_a_device_is_redirected_to_a_presigned_url_and_an_admin_is_not(
    fleet: Fleet, object_store: ObjectStore
) -> None:
    _presign(fleet.app)
    sha, data, headers, offer = _deployed(fleet)
    assert offer.origins == (object_store.endpoint,)

    r = fleet.client.get(f"/api/v1/bundles/{sha}/download", headers=headers)
    assert r.status_code == 302 and r.headers["Cache-Control"] == "no-store"
    location = r.headers["Location"]
    assert location.startswith(object_store.endpoint + "/") and "X-Amz-Signature" in location
    assert object_store.secret_key not in location
    assert requests.get(location, timeout=10).content == data
    # an admin's token must never follow a redirect to the store: admins are proxied
    admin = fleet.client.get(f"/api/v1/bundles/{sha}/download", headers=fleet.admin)
    assert admin.status_code == 200 and admin.data == data
    # the redirect is no way around the check that the bundle was released to the device
    other = fleet.enroll("cam-2")
    refused = fleet.client.get(f"/api/v1/bundles/{sha}/download", headers=other.headers)
    assert refused.status_code == 403 and "Location" not in refused.headers


def test_the_agent_follows_the_presigned_redirect_and_resumes_where_it_stopped(
    fleet: Fleet, live_server: LiveServer, tmp_path: Path
) -> None:
    _presign(fleet.app)
    sha, data, headers, offer = _deployed(fleet)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / f"{sha}.part").write_bytes(data[:1000])  # an earlier try was cut here
    client = ManagerClient(live_server.url, headers["Authorization"].split()[1],
                           config=AGENT_CONFIG)
    try:
        got = client.download(offer, downloads)
    finally:
        client.close()
    assert got.path.read_bytes() == data and got.resumes == 1


def test_the_agent_refuses_a_redirect_to_an_origin_its_offer_does_not_name(
    fleet: Fleet, live_server: LiveServer, tmp_path: Path
) -> None:
    _presign(fleet.app)
    sha, _data, headers, offer = _deployed(fleet)
    for origins in [(), ("http://127.0.0.1:1",), ("https://" + offer.origins[0][7:],)]:
        client = ManagerClient(live_server.url, headers["Authorization"].split()[1],
                               config=AGENT_CONFIG)
        try:
            with pytest.raises(DownloadError, match="which its offer does not name"):
                client.download(dataclasses.replace(offer, origins=origins), tmp_path)
        finally:
            client.close()
        assert list(tmp_path.glob(f"{sha}.*")) == []  # nothing fetched, nothing kept


def test_the_store_public_url_is_where_devices_are_sent(
    fleet: Fleet, object_store: ObjectStore
) -> None:
    """Behind a proxy or another name, the URL is signed for the name devices use."""
    public = object_store.endpoint.replace("127.0.0.1", "localhost")
    config = dataclasses.replace(fleet.app.extensions["satchel"].config, store_presign=True,
                                 store_public_url=public)
    store = S3Store.from_config(config)
    fleet.app.extensions["satchel"].store = store
    fleet.app.extensions["satchel"].config = config
    sha, data, headers, offer = _deployed(fleet)
    assert offer.origins == (public,)
    location = fleet.client.get(f"/api/v1/bundles/{sha}/download",
                                headers=headers).headers["Location"]
    assert location.startswith(public + "/")
    assert requests.get(location, timeout=10).content == data


def test_a_removed_bundle_leaves_the_object_store_and_a_deployed_one_stays(
    fleet: Fleet
) -> None:
    store = fleet.app.extensions["satchel"].store
    sha, _data, _headers, _offer = _deployed(fleet)
    kept = fleet.client.delete(f"/api/v1/bundles/{sha}", headers=fleet.admin)
    assert kept.status_code == 409 and store.exists(sha)

    spare = fleet.bundle("1.1.0", sequence=2)
    spare_sha = hashlib.sha256(spare.data).hexdigest()
    removed = fleet.client.delete(f"/api/v1/bundles/{spare_sha}", headers=fleet.admin)
    assert removed.status_code == 200 and not store.exists(spare_sha)


def test_a_usb_export_copies_the_bundle_out_of_the_object_store(
    fleet: Fleet, config: ManagerConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha, data, _headers, _offer = _deployed(fleet)
    monkeypatch.setenv("SATCHEL_STORE", config.store)  # the admin command's own settings
    stick = tmp_path / "stick"
    Cli(config).ok("usb", "export", str(stick), "--key",
                   str(fleet.keys.directory / "signing.key"))
    assert (stick / bundle_file(sha)).read_bytes() == data


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in for the store that records each request's headers and answers 503."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append(dict(self.headers.items()))
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_device_credential_never_follows_the_redirect_to_the_store(
    fleet: Fleet, live_server: LiveServer, tmp_path: Path
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        public = f"http://127.0.0.1:{server.server_address[1]}"
        config = dataclasses.replace(fleet.app.extensions["satchel"].config,
                                     store_presign=True, store_public_url=public)
        fleet.app.extensions["satchel"].store = S3Store.from_config(config)
        fleet.app.extensions["satchel"].config = config
        _sha, data, headers, offer = _deployed(fleet)
        assert offer.origins == (public,)
        (tmp_path / f"{offer.bundle_sha256}.part").write_bytes(data[:10])
        token = headers["Authorization"].split()[1]
        client = ManagerClient(live_server.url, token, config=AGENT_CONFIG)
        try:
            with pytest.raises(ManagerUnreachableError, match="bundle store .* answered 503"):
                client.download(offer, tmp_path)
        finally:
            client.close()
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Recorder.seen) == AGENT_CONFIG.download_stalls  # each try asked anew
    for seen in _Recorder.seen:
        assert "Authorization" not in seen and token not in str(seen)
        assert seen["Range"] == "bytes=10-" and "If-Range" not in seen
    assert (tmp_path / f"{offer.bundle_sha256}.part").read_bytes() == data[:10]  # kept
