"""The object store backend against a real S3 (SeaweedFS on 127.0.0.1): bundles go in whole
or not at all, by their sha256, read back whole and by range, and its errors never quote a
credential."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path

import boto3
import pytest
import requests

from satchel.manager.config import load_config
from satchel.manager.errors import (
    NotFoundError,
    StoreUnavailableError,
    StoreWriteError,
    UsageError,
)
from satchel.manager.store import BundleStore, Spooled, download_origins, open_store
from satchel.manager.store.s3 import S3Store
from tests.objectstore import ObjectStore

MiB = 1024 * 1024


@pytest.fixture
def aws_env(object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """The standard AWS variables of the private store, as a manager host would set them."""
    for name, value in object_store.environ().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return object_store


def _store(tmp_path: Path, s3: ObjectStore, **settings: object) -> S3Store:
    config = load_config(environ={}, data_dir=tmp_path / "data",
                         store=f"s3://{s3.bucket}/t-{uuid.uuid4().hex[:8]}", **settings)
    store = open_store(config)
    assert isinstance(store, S3Store)
    return store


def _keys(s3: ObjectStore, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name=s3.region)
    listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def _pending_uploads(s3: ObjectStore, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name=s3.region)
    listed = client.list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix)
    return [u["Key"] for u in listed.get("Uploads", [])]


def test_store_url_in_the_environment_selects_the_object_store(
    tmp_path: Path, aws_env: ObjectStore
) -> None:
    config = load_config(environ=aws_env.environ("fleet-a"), data_dir=tmp_path)
    store = open_store(config)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == (aws_env.bucket, "fleet-a")
    assert store.describe() == f"s3://{aws_env.bucket}/fleet-a"
    assert isinstance(open_store(load_config(environ={}, data_dir=tmp_path)), BundleStore)


def test_a_bundle_goes_in_by_its_sha256_and_reads_back_whole_and_by_range(
    tmp_path: Path, aws_env: ObjectStore
) -> None:
    store = _store(tmp_path, aws_env, store_part_bytes=5 * MiB)
    data = os.urandom(11 * MiB + 123)  # three parts
    sha = hashlib.sha256(data).hexdigest()

    spooled = store.receive(io.BytesIO(data), max_bytes=64 * MiB)
    assert spooled.sha256 == sha and spooled.size == len(data)
    assert not store.exists(sha)  # received is not stored: nothing visible before commit
    assert store.commit(spooled) is True

    assert not spooled.path.exists()
    assert _keys(aws_env, store.prefix) == [store.key(sha)]
    assert store.key(sha) == f"{store.prefix}/sha256/{sha[:2]}/{sha}.satchel"
    with store.open(sha) as f:
        assert f.read() == data
    assert b"".join(store.read_range(sha, 5 * MiB - 7, 5 * MiB + 9)) == data[5 * MiB - 7:
                                                                           5 * MiB + 9]
    assert b"".join(store.read_range(sha, len(data) - 3, len(data))) == data[-3:]


def test_adding_the_same_bundle_again_changes_nothing(
    tmp_path: Path, aws_env: ObjectStore
) -> None:
    store = _store(tmp_path, aws_env)
    data = b"the same bundle" * 1000
    sha = hashlib.sha256(data).hexdigest()
    assert store.commit(store.receive(io.BytesIO(data), max_bytes=MiB)) is True
    again = store.receive(io.BytesIO(data), max_bytes=MiB)
    assert store.commit(again) is False
    assert not again.path.exists()
    assert _keys(aws_env, store.prefix) == [store.key(sha)]
    assert _pending_uploads(aws_env, store.prefix) == []


def test_an_upload_whose_hash_is_wrong_is_refused_and_leaves_nothing_visible(
    tmp_path: Path, aws_env: ObjectStore
) -> None:
    store = _store(tmp_path, aws_env)
    data = os.urandom(64 * 1024)
    spooled = store.receive(io.BytesIO(data), max_bytes=MiB)
    forged = Spooled(spooled.path, hashlib.sha256(b"another bundle").hexdigest(), spooled.size)

    with pytest.raises(StoreWriteError, match="changed while it was sent"):
        store.commit(forged)

    assert not store.exists(forged.sha256)
    assert not store.exists(spooled.sha256)
    assert _keys(aws_env, store.prefix) == []
    assert _pending_uploads(aws_env, store.prefix) == []  # the multipart upload was aborted
    assert not spooled.path.exists()


def test_a_missing_bundle_is_not_found(tmp_path: Path, aws_env: ObjectStore) -> None:
    store = _store(tmp_path, aws_env)
    sha = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(sha)
    with pytest.raises(NotFoundError):
        store.open(sha)
    with pytest.raises(NotFoundError):
        store.read_range(sha, 0, 10)
    assert store.delete(sha) is False


def test_a_deleted_bundle_is_gone(tmp_path: Path, aws_env: ObjectStore) -> None:
    store = _store(tmp_path, aws_env)
    data = b"short-lived" * 100
    sha = hashlib.sha256(data).hexdigest()
    store.commit(store.receive(io.BytesIO(data), max_bytes=MiB))
    assert store.delete(sha) is True
    assert not store.exists(sha) and _keys(aws_env, store.prefix) == []


def test_a_presigned_url_fetches_the_bundle_resumably_without_credentials(
    tmp_path: Path, aws_env: ObjectStore
) -> None:
    store = _store(tmp_path, aws_env)
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    store.commit(store.receive(io.BytesIO(data), max_bytes=MiB))

    url = store.presigned_url(sha, 60)
    assert url is not None and url.startswith(aws_env.endpoint + "/")
    assert aws_env.secret_key not in url
    whole = requests.get(url, timeout=10)
    assert whole.status_code == 200 and whole.content == data
    rest = requests.get(url, headers={"Range": "bytes=100000-"}, timeout=10)
    assert rest.status_code == 206 and rest.content == data[100_000:]
    tampered = url.replace(store.key(sha), store.key(hashlib.sha256(b"x").hexdigest()))
    assert requests.get(tampered, timeout=10).status_code == 403
    assert store.public_origins() == (aws_env.endpoint,)


def test_offers_name_the_store_origin_only_when_downloads_are_presigned(
    tmp_path: Path, aws_env: ObjectStore
) -> None:
    base = {"data_dir": tmp_path, "store": f"s3://{aws_env.bucket}/x"}
    assert download_origins(load_config(environ={}, **base)) == ()
    presigned = load_config(environ={}, store_presign=True, **base)
    assert download_origins(presigned) == (aws_env.endpoint,)  # from $AWS_ENDPOINT_URL
    public = load_config(environ={}, store_presign=True,
                         store_public_url="https://Bundles.Example.com:8443/", **base)
    assert download_origins(public) == ("https://bundles.example.com:8443",)
    assert download_origins(load_config(environ={}, data_dir=tmp_path,
                                        store_presign=True)) == ()


def test_store_errors_never_quote_the_credentials(
    tmp_path: Path, aws_env: ObjectStore, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong_secret = "WRONG" + aws_env.secret_key[5:]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    caplog.set_level("DEBUG")
    store = _store(tmp_path, aws_env, store_retries=1)
    data = b"refused" * 100
    with pytest.raises(StoreWriteError) as refused:
        store.commit(store.receive(io.BytesIO(data), max_bytes=MiB))
    assert "the store answered 403" in str(refused.value)

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_env.secret_key)
    down = _store(tmp_path, aws_env, store_endpoint="http://127.0.0.1:9", store_retries=1,
                  store_timeout_s=2)
    with pytest.raises(StoreUnavailableError) as unreachable:
        down.exists(hashlib.sha256(data).hexdigest())
    assert "unreachable" in str(unreachable.value)

    for text in (str(refused.value), str(unreachable.value), caplog.text):
        for secret in (aws_env.secret_key, wrong_secret, aws_env.access_key):
            assert secret not in text


@pytest.mark.parametrize("settings", [
    {"store": "s3://AKIAEXAMPLE:s3cr3t-in-url@bucket/prefix"},
    {"store": "s3://bucket/prefix", "store_endpoint": "http://AKIAEXAMPLE:s3cr3t-in-url@host:9000"},
    {"store": "s3://bucket/prefix", "store_public_url": "https://u:s3cr3t-in-url@cdn.example"},
])
def test_a_store_url_carrying_credentials_is_refused_without_echoing_them(
    tmp_path: Path, settings: dict[str, str]
) -> None:
    with pytest.raises(UsageError) as refused:
        open_store(load_config(environ={}, data_dir=tmp_path, **settings))
    assert "s3cr3t-in-url" not in str(refused.value)
    assert "AKIAEXAMPLE" not in str(refused.value)
