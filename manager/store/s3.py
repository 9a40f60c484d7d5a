"""The object store: bundles in any S3-compatible store (AWS S3, MinIO, Ceph RGW, SeaweedFS)
under BUCKET/PREFIX/sha256/<ab>/<sha256>.satchel, so several manager hosts share them.

`store = "s3://BUCKET/PREFIX"` (SATCHEL_STORE) selects it; the endpoint and region come from
`store_endpoint` / `store_region`, else the standard AWS_ENDPOINT_URL and AWS_REGION; the
credentials only from boto3's standard chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,
AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, ...), never from the settings, so they
are in no config file, log line or error message of ours (errors name the operation and the
store's error code; botocore's own debug lines, which carry signed headers, are silenced).

An upload is spooled locally and verified first (`spool.py`, the caller's signature check);
`commit` then sends it as a multipart upload to its final key, hashing the parts as they
leave, and completes it only when that hash is still the sha256 the key names: until
CompleteMultipartUpload nothing is visible, and on any failure the upload is aborted. Memory
is one part (`store_part_bytes`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn
from urllib.parse import urlsplit

from satchel.bundles.offer import origin_of
from satchel.manager.errors import (
    NotFoundError,
    StoreUnavailableError,
    StoreWriteError,
    UsageError,
)
from satchel.manager.store import object_name, spool
from satchel.manager.store.spool import Spooled

if TYPE_CHECKING:
    from satchel.manager.config import ManagerConfig

try:
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
except ImportError:  # the [s3] extra is not installed; from_config says so
    boto3 = None

log = logging.getLogger(__name__)
CONTENT_TYPE = "application/vnd.satchel.bundle"
DEFAULT_REGION = "us-east-1"  # what S3-compatible stores answer to when none is given
_MISSING = ("404", "NoSuchKey", "NotFound")
# botocore's debug lines carry signed request headers: never let them reach our log
for _name in ("botocore", "boto3", "s3transfer"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://BUCKET/PREFIX`. Raises UsageError."""
    split = urlsplit(url)
    bucket = split.netloc
    if "@" in bucket:  # never echo it: what precedes the @ would be a credential
        raise UsageError("store: credentials do not belong in the store URL; use the AWS "
                         "variables or a credentials file")
    if split.scheme != "s3" or not bucket or split.query or split.fragment:
        raise UsageError(f"store {url[:200]!r} is not s3://BUCKET/PREFIX")
    return bucket, split.path.strip("/")


def endpoints(config: ManagerConfig, env: Mapping[str, str]) -> tuple[str, str, str]:
    """(endpoint, public URL, region) of the store: the settings, else the AWS variables,
    else AWS S3 itself (path-style, https://s3.REGION.amazonaws.com)."""
    region = (config.store_region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
              or DEFAULT_REGION)
    endpoint = (config.store_endpoint or env.get("AWS_ENDPOINT_URL")
                or f"https://s3.{region}.amazonaws.com")
    return endpoint, config.store_public_url or endpoint, region


class S3Store:
    """Bundles in an S3 bucket under a prefix."""

    def __init__(self, client: Any, presigner: Any, bucket: str, prefix: str, spool_dir: Path,
                 *, chunk_bytes: int, part_bytes: int) -> None:
        self.client = client
        self.presigner = presigner  # signs for the URL devices reach (store_public_url)
        self.bucket = bucket
        self.prefix = prefix
        self.spool_dir = spool_dir
        self.chunk_bytes = chunk_bytes
        self.part_bytes = part_bytes

    @classmethod
    def from_config(cls, config: ManagerConfig, environ: Mapping[str, str] | None = None
                    ) -> S3Store:
        """The store `config.store` names. Raises UsageError (a malformed URL, boto3 missing)."""
        if boto3 is None:
            raise UsageError("an S3 store needs boto3: pip install 'satchel[s3]'")
        bucket, prefix = parse_url(config.store)
        endpoint, public, region = endpoints(config, os.environ if environ is None else environ)
        for name, url in (("store_endpoint", endpoint), ("store_public_url", public)):
            if not origin_of(url) or "@" in urlsplit(url).netloc:
                raise UsageError(f"{name}: the object store's URL must be "
                                 f"http(s)://HOST[:PORT], with no credentials in it")
        boto_config = BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},  # what every S3-compatible store understands
            connect_timeout=config.store_timeout_s,
            read_timeout=config.store_timeout_s,
            retries={"max_attempts": config.store_retries, "mode": "standard"},
        )
        session = boto3.session.Session()
        client = session.client("s3", endpoint_url=endpoint, region_name=region,
                                config=boto_config)
        presigner = client if public == endpoint else session.client(
            "s3", endpoint_url=public, region_name=region, config=boto_config)
        return cls(client, presigner, bucket, prefix, config.data_dir / "spool",
                   chunk_bytes=config.upload_chunk_bytes, part_bytes=config.store_part_bytes)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, sha256: str) -> str:
        name = object_name(sha256)
        return f"{self.prefix}/{name}" if self.prefix else name

    # --- reading ------------------------------------------------------------------------

    def exists(self, sha256: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except (BotoCoreError, ClientError) as e:
            if _code(e) in _MISSING:
                return False
            self._unavailable("look up", sha256, e)
        return True

    def open(self, sha256: str) -> BinaryIO:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))
        except (BotoCoreError, ClientError) as e:
            self._unavailable("read", sha256, e)
        body: BinaryIO = answer["Body"]
        return body

    def read_range(self, sha256: str, start: int, stop: int) -> Iterator[bytes]:
        """The store is asked at once (a missing bundle raises here, before any byte is
        answered); the bytes follow as the iterator is read."""
        if stop <= start:
            return iter(())
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256),
                                            Range=f"bytes={start}-{stop - 1}")
        except (BotoCoreError, ClientError) as e:
            self._unavailable("read", sha256, e)
        return self._chunks(sha256, answer["Body"])

    def _chunks(self, sha256: str, body: Any) -> Iterator[bytes]:
        try:
            with contextlib.closing(body):
                yield from body.iter_chunks(self.chunk_bytes)
        except (BotoCoreError, ClientError) as e:
            self._unavailable("read", sha256, e)

    def local_path(self, sha256: str) -> Path | None:
        return None

    def presigned_url(self, sha256: str, ttl_s: int) -> str | None:
        try:
            url: str = self.presigner.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.key(sha256)},
                ExpiresIn=ttl_s)
        except (BotoCoreError, ClientError) as e:
            self._unavailable("sign a download of", sha256, e)
        return url

    def public_origins(self) -> tuple[str, ...]:
        return (origin_of(self.presigner.meta.endpoint_url),)

    # --- writing ------------------------------------------------------------------------

    def receive(self, source: BinaryIO, max_bytes: int) -> Spooled:
        return spool.receive(source, max_bytes, self.spool_dir, self.chunk_bytes,
                             self.spool_dir)

    def discard(self, spooled: Spooled) -> None:
        spool.discard(spooled)

    def commit(self, spooled: Spooled) -> bool:
        """Upload a verified bundle to its final key; False when it was already there. Raises
        StoreWriteError (the upload aborted: nothing visible). The spool is discarded."""
        try:
            if self.exists(spooled.sha256):
                return False
            self._upload(spooled)
            return True
        except StoreUnavailableError as e:
            raise StoreWriteError(str(e)) from e
        finally:
            self.discard(spooled)

    def _upload(self, spooled: Spooled) -> None:
        key = self.key(spooled.sha256)
        try:
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=CONTENT_TYPE)["UploadId"]
        except (BotoCoreError, ClientError) as e:
            self._unwritable("start the upload of", spooled.sha256, e)
        try:
            parts = self._send_parts(spooled, key, upload_id)
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts})
        except BaseException as e:
            with contextlib.suppress(BotoCoreError, ClientError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=upload_id)
            if isinstance(e, (BotoCoreError, ClientError)):
                self._unwritable("upload", spooled.sha256, e)
            raise

    def _send_parts(self, spooled: Spooled, key: str, upload_id: str) -> list[dict[str, Any]]:
        """Send the spooled file in parts, hashing what leaves. Raises StoreWriteError when
        it is not the bundle the key names, BotoCoreError, ClientError, OSError."""
        digest = hashlib.sha256()
        parts: list[dict[str, Any]] = []
        size = 0
        with open(spooled.path, "rb") as f:
            while (chunk := f.read(self.part_bytes)) or not parts:
                digest.update(chunk)
                size += len(chunk)
                number = len(parts) + 1
                answer = self.client.upload_part(Bucket=self.bucket, Key=key,
                                                 UploadId=upload_id, PartNumber=number,
                                                 Body=chunk)
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
        if digest.hexdigest() != spooled.sha256 or size != spooled.size:
            raise StoreWriteError(
                f"bundle {spooled.sha256[:12]} changed while it was sent to the store "
                f"(sha256 {digest.hexdigest()[:12]} of {size} bytes); nothing was stored"
            )
        return parts

    def delete(self, sha256: str) -> bool:
        if not self.exists(sha256):
            return False
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))
        except (BotoCoreError, ClientError) as e:
            self._unwritable("delete", sha256, e)
        return True

    # --- errors: the store's code, never its message (which may quote a request) ---------

    def _unavailable(self, what: str, sha256: str, e: Exception) -> NoReturn:
        if _code(e) in _MISSING:
            raise NotFoundError(f"bundle {sha256[:12]} is not in the store") from e
        raise StoreUnavailableError(
            f"cannot {what} bundle {sha256[:12]} in the bundle store {self.describe()}: "
            f"{_reason(e)}") from None

    def _unwritable(self, what: str, sha256: str, e: Exception) -> NoReturn:
        raise StoreWriteError(
            f"cannot {what} bundle {sha256[:12]} in the bundle store {self.describe()}: "
            f"{_reason(e)}") from None


def _code(e: Exception) -> str:
    if isinstance(e, ClientError):
        return str(e.response.get("Error", {}).get("Code", ""))
    return ""


def _reason(e: Exception) -> str:
    """One line for a store error that quotes no request, header or credential."""
    if isinstance(e, NoCredentialsError):
        return ("no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a "
                "credentials file)")
    if isinstance(e, ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        return f"the store answered {status} {_code(e)}".strip()
    return f"the store is unreachable ({type(e).__name__})"
