"""Bundles on the manager: verified on arrival (a refusal stores nothing), content-addressed,
downloads that resume (Range, If-Range) and revalidate (ETag, If-None-Match)."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
import requests

from satchel.bundles.keys import SigningKey
from satchel.manager.models import Bundle
from tests.factory.bundles import build_test_bundle
from tests.factory.keys import make_keys
from tests.manager.helpers import Fleet
from tests.manager.live_server import LiveServer


def _rows(fleet: Fleet) -> int:
    db = fleet.app.extensions["satchel"].db
    return db.run(lambda s: s.query(Bundle).count())


def _store_files(fleet: Fleet) -> list[Path]:
    store = fleet.app.extensions["satchel"].store.root
    return sorted(p for p in store.rglob("*") if p.is_file())


def _upload(fleet: Fleet, data: bytes) -> object:
    return fleet.client.post(
        "/api/v1/bundles", data=data, headers=fleet.admin, content_type="application/octet-stream"
    )


def test_upload_stores_the_bundle_by_sha256(fleet: Fleet) -> None:
    built = build_test_bundle(fleet.tmp / "b.satchel", keys=fleet.keys)
    r = _upload(fleet, built.data)
    sha = hashlib.sha256(built.data).hexdigest()
    assert r.status_code == 201
    assert r.json["sha256"] == sha and r.json["created"] is True
    assert r.json["manifest"]["name"] == "vision"
    assert [p.name for p in _store_files(fleet)] == [f"{sha}.satchel"]
    assert _store_files(fleet)[0].read_bytes() == built.data
    listed = fleet.client.get("/api/v1/bundles", headers=fleet.admin).json["bundles"]
    assert [(b["name"], b["version"], b["sequence"]) for b in listed] == [("vision", "1.0.0", 1)]


def test_same_upload_twice_is_idempotent(fleet: Fleet) -> None:
    built = build_test_bundle(fleet.tmp / "b.satchel", keys=fleet.keys)
    assert _upload(fleet, built.data).status_code == 201
    again = _upload(fleet, built.data)
    assert again.status_code == 200 and again.json["created"] is False
    assert _rows(fleet) == 1 and len(_store_files(fleet)) == 1


def test_multipart_upload_is_accepted(fleet: Fleet) -> None:
    import io

    built = build_test_bundle(fleet.tmp / "b.satchel", keys=fleet.keys)
    r = fleet.client.post(
        "/api/v1/bundles",
        headers=fleet.admin,
        data={"bundle": (io.BytesIO(built.data), "b.satchel")},
        content_type="multipart/form-data",
    )
    assert r.status_code == 201 and _rows(fleet) == 1


def _foreign_key_bundle(fleet: Fleet) -> bytes:
    stranger = make_keys(fleet.tmp / "stranger")
    return build_test_bundle(fleet.tmp / "x.satchel", keys=stranger).data


def _tampered_payload(fleet: Fleet) -> bytes:
    data = bytearray(build_test_bundle(fleet.tmp / "t.satchel", keys=fleet.keys).data)
    data[3000] ^= 0xFF  # inside the first compressed payload
    return bytes(data)


def _truncated(fleet: Fleet) -> bytes:
    return build_test_bundle(fleet.tmp / "t.satchel", keys=fleet.keys).data[:1500]


def _expired(fleet: Fleet) -> bytes:
    from datetime import datetime, timezone

    past = datetime(2026, 3, 1, 13, 0, 0, tzinfo=timezone.utc)
    return build_test_bundle(fleet.tmp / "e.satchel", keys=fleet.keys, expires=past).data


def _unsigned_key(fleet: Fleet) -> bytes:
    return build_test_bundle(
        fleet.tmp / "u.satchel", keys=fleet.keys, signers=[SigningKey.generate()]
    ).data


@pytest.mark.parametrize(
    "attack",
    [
        _foreign_key_bundle,
        _tampered_payload,
        _truncated,
        _expired,
        _unsigned_key,
        lambda fleet: b"\0" * 4096,
    ],
)
def test_refused_upload_leaves_no_row_and_no_file(fleet: Fleet, attack) -> None:
    r = _upload(fleet, attack(fleet))
    assert r.status_code == 422, r.json
    assert r.json["error"]["code"] == "bundle_refused"
    assert r.json["error"]["message"].startswith("bundle refused: ")
    assert "\n" not in r.json["error"]["message"]
    assert _rows(fleet) == 0
    assert _store_files(fleet) == []


def test_upload_without_trust_root_is_refused(app, client, keys, tmp_path) -> None:
    from satchel.manager.services import tokens

    db = app.extensions["satchel"].db
    token = db.run(lambda s: tokens.create_admin_token(s)).token
    built = build_test_bundle(tmp_path / "b.satchel", keys=keys)
    r = client.post(
        "/api/v1/bundles", data=built.data, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 409 and r.json["error"]["code"] == "no_trust_root"
    assert db.run(lambda s: s.query(Bundle).count()) == 0


def test_same_version_with_other_content_is_a_conflict(fleet: Fleet) -> None:
    fleet.bundle("1.0.0", 1)
    other = build_test_bundle(
        fleet.tmp / "o.satchel",
        keys=fleet.keys,
        version="1.0.0",
        sequence=2,
        payloads={"model.onnx": b"other model"},
    )
    r = _upload(fleet, other.data)
    assert r.status_code == 409
    same_seq = build_test_bundle(
        fleet.tmp / "s.satchel", keys=fleet.keys, version="1.1.0", sequence=1
    )
    assert _upload(fleet, same_seq.data).status_code == 409
    assert _rows(fleet) == 1 and len(_store_files(fleet)) == 1


def test_oversized_upload_is_refused_and_leaves_nothing(app, fleet: Fleet) -> None:
    import dataclasses

    st = app.extensions["satchel"]
    st.config = dataclasses.replace(st.config, max_bundle_bytes=1000)
    built = build_test_bundle(fleet.tmp / "b.satchel", keys=fleet.keys)
    r = _upload(fleet, built.data)
    assert r.status_code == 413
    assert _rows(fleet) == 0 and _store_files(fleet) == []


def test_download_resumes_with_range_and_revalidates_with_etag(
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
    # resume in three pieces, as an interrupted download would
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
    cached = requests.get(url, headers={**h, "If-None-Match": etag}, timeout=10)
    assert cached.status_code == 304 and cached.content == b""
    beyond = requests.get(url, headers={**h, "Range": f"bytes={size + 5}-"}, timeout=10)
    assert beyond.status_code == 416


def test_assigned_device_can_download_its_bundle(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    built = fleet.bundle()
    fleet.deploy("vision:1.0.0", devices=["cam-1"], waves="100%")
    sha = hashlib.sha256(built.data).hexdigest()
    r = fleet.client.get(f"/api/v1/bundles/{sha}/download", headers=device.headers)
    assert r.status_code == 200 and r.data == built.data
