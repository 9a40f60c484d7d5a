"""The LAN client: enrollment, check-in, trust roots and resumable bundle downloads.

Every call has a connect and a read timeout. Failures are translated at this boundary into
`agent.errors`: `ManagerUnreachableError` for what a later try may fix (no route, timeout,
5xx, 429, a connection cut mid-answer), `CredentialRejectedError` for a 401,
`ManagerRefusedError` for other refusals, `DownloadError` for a file that does not match
what was announced. `with_retries` retries the first kind with exponential backoff and
jitter; the check-in loop keeps its own `Backoff`.

Downloads go to DIR/<sha256>.part and resume where they stopped with `Range` and
`If-Range: "<sha256>"` (the manager's strong ETag), so a changed file restarts from zero
instead of being spliced. The finished file's sha256 must equal the announced one before it
is renamed to DIR/<sha256>.satchel; the installer then checks its signature as for any bundle.
A manager with an object store may answer a download with a redirect to a pre-signed URL:
it is followed only to an origin the offer names (`Offer.origins`), without the device's
credential, and every resume asks the manager again (the URL expires).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from satchel.agent.config import DEFAULT_CONFIG, AgentConfig
from satchel.agent.errors import (
    CredentialRejectedError,
    DownloadError,
    ManagerRefusedError,
    ManagerUnreachableError,
)
from satchel.agent.sync.backoff import Backoff
from satchel.bundles.durable import fsync_dir
from satchel.bundles.errors import OfferError
from satchel.bundles.offer import Offer, origin_of

log = logging.getLogger(__name__)

T = TypeVar("T")
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_MiB = 1024 * 1024
_REDIRECTS = (302, 303, 307)  # the manager hands the download to its object store
_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


# --- what the manager says (its install offers are `bundles.offer.Offer`) -------------------


@dataclass(frozen=True)
class TrustInfo:
    """The manager's newest trust root version and where each version is fetched."""

    version: int | None
    version_url: str  # with "{version}" in it

    @classmethod
    def from_dict(cls, d: Any) -> TrustInfo | None:
        if not isinstance(d, dict):
            return None
        version = d.get("version")
        url = d.get("version_url")
        if not isinstance(url, str) or "{version}" not in url:
            return None
        return cls(version if isinstance(version, int) and version > 0 else None, url)


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    token: str
    checkin_url: str
    poll_interval_s: float | None
    trust: TrustInfo | None


@dataclass(frozen=True)
class CheckinAnswer:
    install: tuple[Offer, ...]
    trust: TrustInfo | None
    poll_interval_s: float | None  # seconds, already jittered by the manager
    recorded: int  # events the manager recorded now
    duplicate: int  # events it had already


@dataclass(frozen=True)
class Download:
    path: Path  # DIR/<sha256>.satchel, its hash checked
    size: int  # bytes
    seconds: float  # wall time of this download, retries included
    resumes: int  # times it resumed after an interrupted transfer


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return float(value)


# --- backoff ------------------------------------------------------------------------------


def with_retries(
    call: Callable[[], T],
    config: AgentConfig = DEFAULT_CONFIG,
    *,
    what: str = "request",
    stop: threading.Event | None = None,
) -> T:
    """`call()`, tried up to `config.retry_attempts` times while it raises
    ManagerUnreachableError, with backoff between tries. Raises the last error."""
    backoff = Backoff(config)
    for attempt in range(1, config.retry_attempts + 1):
        try:
            return call()
        except ManagerUnreachableError as e:
            if attempt == config.retry_attempts:
                raise
            delay = backoff.next_delay()
            log.warning("%s failed (%s); try %d of %d in %.1f s", what, e, attempt + 1,
                        config.retry_attempts, delay)
            if _sleep(delay, stop):
                raise
    raise AssertionError("unreachable")


def _sleep(seconds: float, stop: threading.Event | None) -> bool:
    """Sleep; True when `stop` was set meanwhile (the caller gives up)."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


# --- the client ---------------------------------------------------------------------------


class ManagerClient:
    """HTTP calls to one manager. `token` is the device credential (None to enroll)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        config: AgentConfig = DEFAULT_CONFIG,
        stop: threading.Event | None = None,
        session: requests.Session | None = None,
    ) -> None:
        split = urlsplit(base_url)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise ManagerRefusedError(f"manager URL {base_url!r} is not http(s)://HOST[:PORT]",
                                      0)
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.config = config
        self.stop = stop
        self.session = session or requests.Session()
        self.session.trust_env = False  # LAN only: never route through a proxy from the env

    def close(self) -> None:
        self.session.close()

    # --- calls --------------------------------------------------------------------------

    def enroll(self, enroll_token: str, body: dict[str, Any]) -> Enrollment:
        """Trade a one-time enrollment token for a device credential. Raises
        ManagerUnreachableError, ManagerRefusedError (401 unknown/used/expired token, 403
        wrong class, 409 already enrolled, 400 malformed)."""
        answer = self._json("POST", "/api/v1/enroll", json=body, token=enroll_token,
                            what="enrollment", credential_error=False)
        try:
            return Enrollment(
                device_id=str(answer["device_id"]),
                token=str(answer["token"]),
                checkin_url=str(answer["checkin_url"]),
                poll_interval_s=_number(answer.get("poll_interval_s")),
                trust=TrustInfo.from_dict(answer.get("trust")),
            )
        except (KeyError, TypeError) as e:
            raise ManagerRefusedError(f"enrollment answer is missing {e}", 201) from e

    def checkin(self, checkin_url: str, body: dict[str, Any]) -> CheckinAnswer:
        """Report state, health and events. Raises ManagerUnreachableError,
        CredentialRejectedError, ManagerRefusedError."""
        answer = self._json("POST", checkin_url, json=body, what="check-in")
        raw_install = answer.get("install") or []
        if not isinstance(raw_install, list):
            raise ManagerRefusedError("check-in answer: 'install' is not a list", 200)
        events = answer.get("events")
        if not isinstance(events, dict):
            events = {}
        try:
            install = tuple(Offer.from_dict(o) for o in raw_install)
        except OfferError as e:
            raise ManagerRefusedError(f"the manager sent {e}", 200) from e
        return CheckinAnswer(
            install=install,
            trust=TrustInfo.from_dict(answer.get("trust")),
            poll_interval_s=_number(answer.get("poll_interval_s")),
            recorded=int(events.get("recorded") or 0),
            duplicate=int(events.get("duplicate") or 0),
        )

    def upload_sample(self, device_id: str, data: bytes, sha256: str) -> int:
        """Send one kept field input (agent.captures); returns the status (201 stored, 200
        known already). Raises ManagerUnreachableError, CredentialRejectedError,
        ManagerRefusedError (its status: 400, 413 are for good)."""
        headers = {"Content-Type": "application/octet-stream",
                   "X-Satchel-Sample-SHA256": sha256}
        with self._send("POST", f"/api/v1/devices/{device_id}/samples", what="sample upload",
                        data=data, headers=headers) as response:
            return int(response.status_code)

    def fetch_document(self, path: str, what: str) -> bytes:
        """GET a small document (a trust root), bounded by `max_answer_bytes`. Raises
        ManagerUnreachableError, CredentialRejectedError, ManagerRefusedError."""
        with self._send("GET", path, what=what) as response:
            return self._body(response, what)

    def download(self, offer: Offer, directory: Path) -> Download:
        """Fetch the offered bundle into `directory`, resuming across interruptions, and
        check its size and sha256. Raises DownloadError (the file is not what was
        announced; the partial file is removed), ManagerUnreachableError (gave up after
        `download_stalls` tries in a row without progress, or past the time
        `download_grace_s` + size / `download_min_bytes_per_s`; the partial file is kept for
        the next try), CredentialRejectedError, ManagerRefusedError, OSError (disk)."""
        if not 0 < offer.size <= self.config.max_bundle_bytes:
            raise DownloadError(f"bundle {offer.channel} {offer.version} is announced as "
                                f"{offer.size} bytes; this device accepts 1 to "
                                f"{self.config.max_bundle_bytes}")
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"{offer.bundle_sha256}.satchel"
        part = directory / f"{offer.bundle_sha256}.part"
        started = time.monotonic()
        if final.is_file() and _sha256_of(final) == offer.bundle_sha256:
            return Download(final, final.stat().st_size, 0.0, 0)
        progress = _Progress(offer, self.config.progress_log_s)
        backoff = Backoff(self.config)
        stalls = resumes = 0
        deadline = started + self.config.download_grace_s + (
            offer.size / self.config.download_min_bytes_per_s)
        while (have := _size(part)) < offer.size:
            if time.monotonic() > deadline:
                raise ManagerUnreachableError(
                    f"download of {offer.channel} {offer.version} is too slow: {have} of "
                    f"{offer.size} bytes in {time.monotonic() - started:.0f} s (under "
                    f"{self.config.download_min_bytes_per_s} bytes/s); it resumes later"
                )
            if have:
                resumes += 1
                log.info("resuming %s %s at byte %d of %d", offer.channel, offer.version,
                         have, offer.size)
            received = progress.received
            try:
                self._fetch_part(offer, part, have, progress, deadline)
                break  # the answer ended cleanly: the manager has sent all it has
            except ManagerUnreachableError as e:
                error = e
            except DownloadError:
                part.unlink(missing_ok=True)  # more than announced: none of it is kept
                raise
            if progress.received > received:
                stalls = 0
                backoff.reset()
                continue
            stalls += 1
            if stalls >= self.config.download_stalls:
                raise ManagerUnreachableError(
                    f"download of {offer.channel} {offer.version} made no progress in "
                    f"{stalls} tries: {error}"
                )
            delay = backoff.next_delay()
            log.warning("download of %s %s failed (%s); try %d of %d in %.1f s", offer.channel,
                        offer.version, error, stalls + 1,
                        self.config.download_stalls, delay)
            if _sleep(delay, self.stop):
                raise ManagerUnreachableError("download interrupted: the agent is stopping")
        return self._finish(offer, part, final, started, resumes)

    # --- downloads ----------------------------------------------------------------------

    def _fetch_part(self, offer: Offer, part: Path, have: int, progress: _Progress,
                    deadline: float) -> None:
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            headers["If-Range"] = f'"{offer.bundle_sha256}"'
        with self._send("GET", offer.url, headers=headers, what="download",
                        ok=(200, 206, 416, *_REDIRECTS)) as response:
            if response.status_code in _REDIRECTS:
                location = response.headers.get("Location", "")
                with self._from_store(offer, location, have) as redirected:
                    self._take_body(redirected, part, have, offer, progress, deadline)
                return
            self._take_body(response, part, have, offer, progress, deadline)

    def _take_body(self, response: requests.Response, part: Path, have: int, offer: Offer,
                   progress: _Progress, deadline: float) -> None:
        if response.status_code == 416:  # nothing after `have`: the file is complete
            return
        start = 0
        if response.status_code == 206:
            start = _range_start(response.headers.get("Content-Range", ""))
            if start != have:
                raise ManagerUnreachableError(f"the server resumed at byte {start}, not {have}")
        self._write_body(response, part, start, offer, progress, deadline)

    @contextlib.contextmanager
    def _from_store(self, offer: Offer, location: str, have: int) -> Iterator[requests.Response]:
        """Follow the manager's redirect to its object store: only to an origin the offer
        names, without the device's credential, and without If-Range (the store's ETag is
        not the sha256; its key is, so the bytes cannot change under it, and the whole file
        is hashed at the end anyway). The URL is signed: only its origin is ever logged.
        Raises DownloadError (an origin the offer does not name), ManagerUnreachableError."""
        url = urljoin(self.base_url + "/", location)
        origin = origin_of(url)
        if not origin or origin not in offer.origins:
            raise DownloadError(
                f"the manager redirected the download of {offer.channel} {offer.version} to "
                f"{origin or 'a URL that is not http(s)'}, which its offer does not name; "
                f"not followed"
            )
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        log.info("fetching %s %s from the bundle store %s", offer.channel, offer.version, origin)
        timeout = (self.config.connect_timeout_s, self.config.read_timeout_s)
        try:
            response = self.session.get(url, headers=headers, timeout=timeout, stream=True,
                                        allow_redirects=False)
        except requests.RequestException as e:
            raise ManagerUnreachableError(f"download: the bundle store {origin} is "
                                          f"unreachable: {_no_url(e)}") from None
        with response:
            if response.status_code not in (200, 206, 416):
                # an expired URL (403) or a store hiccup: the next try asks the manager anew
                raise ManagerUnreachableError(
                    f"download: the bundle store {origin} answered {response.status_code}")
            yield response

    def _write_body(
        self, response: requests.Response, part: Path, start: int, offer: Offer,
        progress: _Progress, deadline: float,
    ) -> None:
        written = start
        with open(part, "r+b" if start else "wb") as out:
            out.truncate(start)
            out.seek(start)
            try:
                for chunk in _read_chunks(response, self.config.download_chunk_bytes,
                                          deadline, "download"):
                    written += len(chunk)
                    if written > offer.size:
                        raise DownloadError(
                            f"bundle {offer.channel} {offer.version} is larger than the "
                            f"{offer.size} bytes announced"
                        )
                    out.write(chunk)
                    progress.update(written, len(chunk))
            except _ReadError as e:
                raise ManagerUnreachableError(f"download cut at byte {written}: {e}") from e
            finally:
                out.flush()
                os.fsync(out.fileno())
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and written - start < int(length):
            raise ManagerUnreachableError(f"download cut at byte {written}")

    def _finish(
        self, offer: Offer, part: Path, final: Path, started: float, resumes: int
    ) -> Download:
        size = _size(part)
        digest = _sha256_of(part)
        if size != offer.size or digest != offer.bundle_sha256:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"downloaded {offer.channel} {offer.version} does not match the manager's "
                f"announcement (sha256 {digest[:12]}... of {size} bytes, expected "
                f"{offer.bundle_sha256[:12]}... of {offer.size}); discarded"
            )
        os.replace(part, final)
        fsync_dir(final.parent)
        seconds = time.monotonic() - started
        log.info("downloaded %s %s: %d bytes in %.1f s (%d resume(s)), sha256 %s... ok",
                 offer.channel, offer.version, size, seconds, resumes, digest[:12])
        return Download(final, size, seconds, resumes)

    # --- plumbing -----------------------------------------------------------------------

    def _url(self, path: str) -> str:
        url = urljoin(self.base_url + "/", path)
        if urlsplit(url).netloc != urlsplit(self.base_url).netloc:
            raise ManagerRefusedError(f"the manager pointed at another host: {url}", 0)
        return url

    @contextlib.contextmanager
    def _send(
        self,
        method: str,
        path: str,
        *,
        what: str,
        token: str | None = None,
        credential_error: bool = True,
        ok: tuple[int, ...] = (200, 201),
        **kwargs: Any,
    ) -> Any:
        """One HTTP call, streamed; yields the response when its status is in `ok`."""
        headers = dict(kwargs.pop("headers", {}))
        bearer = token or self.token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        timeout = (self.config.connect_timeout_s, self.config.read_timeout_s)
        try:
            response = self.session.request(method, self._url(path), headers=headers,
                                            timeout=timeout, stream=True,
                                            allow_redirects=False, **kwargs)
        except requests.RequestException as e:
            raise ManagerUnreachableError(f"{what}: {self.base_url} unreachable: "
                                          f"{_short(e)}") from e
        with response:
            if response.status_code not in ok:
                raise self._refusal(response, what, credential_error)
            yield response

    def _refusal(self, response: requests.Response, what: str,
                 credential_error: bool) -> Exception:
        status = response.status_code
        message = _error_message(response, self.config.max_answer_bytes,
                                 time.monotonic() + self.config.answer_deadline_s)
        text = f"{what}: the manager answered {status}: {message}"
        if status >= 500 or status in (408, 429):
            return ManagerUnreachableError(text)
        if status == 401 and credential_error:
            return CredentialRejectedError(
                f"{text}; this device's credential is no longer valid, enroll it again", status
            )
        return ManagerRefusedError(text, status)

    def _json(self, method: str, path: str, *, what: str, **kwargs: Any) -> dict[str, Any]:
        with self._send(method, path, what=what, **kwargs) as response:
            body = self._body(response, what)
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise ManagerUnreachableError(f"{what}: the manager's answer is not JSON") from e
        if not isinstance(doc, dict):
            raise ManagerUnreachableError(f"{what}: the manager's answer is not a JSON object")
        return doc

    def _body(self, response: requests.Response, what: str) -> bytes:
        limit = self.config.max_answer_bytes
        deadline = time.monotonic() + self.config.answer_deadline_s
        chunks, total = [], 0
        try:
            for chunk in _read_chunks(response, 64 * 1024, deadline, what):
                total += len(chunk)
                if total > limit:
                    raise ManagerRefusedError(f"{what}: answer larger than {limit} bytes",
                                              response.status_code)
                chunks.append(chunk)
        except _ReadError as e:
            raise ManagerUnreachableError(f"{what}: answer cut short: {e}") from e
        return b"".join(chunks)


class _Progress:
    """Logs a download's progress at most every `every_s` seconds."""

    def __init__(self, offer: Offer, every_s: float) -> None:
        self._offer = offer
        self._every_s = every_s
        self._last = time.monotonic()
        self.received = 0  # bytes received over every attempt

    def update(self, have: int, chunk: int) -> None:
        self.received += chunk
        now = time.monotonic()
        if now - self._last < self._every_s:
            return
        self._last = now
        total = self._offer.size or 1
        log.info("downloading %s %s: %.0f%% (%.1f of %.1f MiB)", self._offer.channel,
                 self._offer.version, 100 * have / total, have / _MiB, self._offer.size / _MiB)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _range_start(content_range: str) -> int:
    match = _CONTENT_RANGE_RE.fullmatch(content_range.strip())
    if not match:
        raise ManagerUnreachableError(f"the manager sent a bad Content-Range {content_range!r}")
    return int(match.group(1))


class _ReadError(Exception):
    """Reading an answer failed (cut, timed out, past its deadline); one line."""


def _read_chunks(response: requests.Response, size: int, deadline: float,
                 what: str) -> Iterator[bytes]:
    """The body of `response` in chunks of at most `size` bytes, until its end. Each chunk is
    one read of the connection (`read1`), so a server trickling bytes cannot keep one read
    from returning, and the whole answer must arrive before `deadline` (time.monotonic()).
    Raises _ReadError."""
    while True:
        if time.monotonic() > deadline:
            raise _ReadError(f"{what} too slow: not finished in time")
        try:
            chunk = response.raw.read1(size, decode_content=True)
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as e:
            raise _ReadError(_short(e)) from e
        if not chunk:
            return
        yield chunk


def _no_url(e: Exception) -> str:
    """One line for a failed request to a signed URL, quoting none of it."""
    if isinstance(e, (requests.Timeout, urllib3.exceptions.TimeoutError)):
        return "timed out"
    found = _ERRNO_RE.search(str(e))
    return found.group(1).strip() if found else type(e).__name__


def _error_message(response: requests.Response, limit: int, deadline: float) -> str:
    cap = min(limit, 64 * 1024)
    try:
        raw = b""
        for chunk in _read_chunks(response, cap, deadline, "error"):
            raw += chunk
            if len(raw) >= cap:
                break
        doc = json.loads(raw)
        return str(doc["error"]["message"])
    except Exception:  # noqa: BLE001 - the status alone still says what happened
        return response.reason or "no reason given"


def _short(e: Exception) -> str:
    """One line for a requests/urllib3 error (they nest their causes verbosely)."""
    if isinstance(e, (requests.Timeout, urllib3.exceptions.TimeoutError)):
        return "timed out"
    text = str(e)
    found = _ERRNO_RE.search(text)
    if found:
        return found.group(1).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:300]
