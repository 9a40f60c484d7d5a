"""A site whose bundles live in an S3-compatible object store (SeaweedFS on 127.0.0.1): the
admin adds a bundle with `satchel bundle add`, `satchel serve` hands devices pre-signed URLs,
and a real `satchel-agent` downloads from the store, verifies, installs and serves it; no
credential reaches a log."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import boto3
import numpy as np
import pytest

from tests.e2e.commands import wait_for
from tests.e2e.kit import Kit, expected_outputs, positive
from tests.e2e.sites import ManagerProcess, Site
from tests.objectstore import ObjectStore


@pytest.fixture
def s3_manager(kit: Kit, object_store: ObjectStore, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[ManagerProcess, dict[str, str]]]:
    """`satchel serve` with SATCHEL_STORE and the AWS variables, handing out pre-signed URLs."""
    env = {**object_store.environ(f"e2e-{uuid.uuid4().hex[:8]}"),
           "SATCHEL_STORE_PRESIGN": "true", "SATCHEL_STORE_PRESIGN_TTL_S": "60"}
    manager = ManagerProcess(tmp_path_factory.mktemp("e2e-s3-manager"), kit, env)
    yield manager, env
    manager.stop()


def test_an_agent_downloads_from_the_object_store_by_presigned_url_and_serves_the_release(
    site: Site, s3_manager: tuple[ManagerProcess, dict[str, str]], kit: Kit,
    object_store: ObjectStore,
) -> None:
    manager, env = s3_manager
    agent = site.device("s3-cam-1", manager)
    manager.add("big")
    sha = hashlib.sha256(kit.big_bundle.read_bytes()).hexdigest()
    prefix = env["SATCHEL_STORE"].split("/", 3)[3]
    client = boto3.client("s3", endpoint_url=object_store.endpoint,
                          aws_access_key_id=object_store.access_key,
                          aws_secret_access_key=object_store.secret_key,
                          region_name=object_store.region)
    listed = client.list_objects_v2(Bucket=object_store.bucket, Prefix=prefix)
    assert [o["Key"] for o in listed["Contents"]] == [f"{prefix}/sha256/{sha[:2]}/{sha}.satchel"]
    assert not (manager.data_dir / "store").exists()  # nothing of it on the manager's disk

    manager.deploy("vision:3.0.0", ["s3-cam-1"], "100%")
    wait_for(lambda: agent.serving_version("vision") == "3.0.0", 90, "the install")

    assert f"from the bundle store {object_store.endpoint}" in agent.log
    x = positive(3, seed=5)
    np.testing.assert_allclose(agent.infer("vision", x), expected_outputs(kit.big, x),
                               rtol=1e-4, atol=1e-5)
    (downloaded,) = wait_for(
        lambda: [e for e in manager.events("s3-cam-1") if e["kind"] == "downloaded"], 20,
        "the downloaded event")
    assert downloaded["bundle_sha256"] == sha
    logs = agent.log + (manager.data_dir / "serve.log").read_text()
    for secret in (object_store.secret_key, object_store.access_key, "X-Amz-Signature"):
        assert secret not in logs
